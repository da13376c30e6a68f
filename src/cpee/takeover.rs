//! Who delivers: the callbacks owed are durable records
//! (`crate::cpee::record`), and the node that delivers them takes them
//! over from those, the single node after recovery and a cluster's node
//! each time it starts to lead; a leader that steps down lets go of them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::deliver::Owed;
use super::dispatch::Waiter;
use super::waits::StateWait;
use super::{Cpee, Owes, Pending};
use crate::model::{OrderId, Seq, Stage};

impl Cpee {
    /// Takes over every callback owed and the orders waiting for an
    /// orderbot, as the broker's state holds them now:
    /// - a work callback that was being handed an order gets it, if the
    ///   order was claimed for it (still new, with its orderbot); otherwise
    ///   it waits for work again, oldest first;
    /// - a state wait is checked against the order as it is: reached, it
    ///   is answered; never to be reached (or gone), salvaged; with
    ///   `updates`, it is sent the order's current state;
    /// - the dispatch queue is built again from the orders that wait.
    ///
    /// What was in flight when the last deliverer died (an answer sent but
    /// not yet recorded as ended) is sent again: CPEE answers a callback it
    /// already got with 404, which ends it here.
    ///
    /// Registrations wait meanwhile (`handover`), and the delivery tasks of
    /// an earlier term stop (`term`).
    pub fn take_over(self: &Arc<Self>) {
        let handover = self.handover.lock();
        self.forget();
        let _pin = self.broker.pin();
        let records = self.broker.callbacks();
        // Each order waited on, checked once below (in order of first wait).
        let mut waited: Vec<OrderId> = Vec::new();
        let mut seen: HashSet<OrderId> = HashSet::new();
        // An order goes to one callback at most (the oldest that names it).
        let mut handed_out: HashSet<OrderId> = HashSet::new();
        for record in &records {
            let mut pending = Pending::of(record);
            let viewer = record.audience.viewer();
            match &record.owes {
                Owes::Work { orderbot, order } => {
                    let handed = order.and_then(|id| {
                        let order = self.broker.get(id)?;
                        let claimed = order.stage == Stage::New
                            && !handed_out.contains(&id)
                            && order
                                .orderbot_id
                                .is_some_and(|b| self.broker.symbols().text(b) == orderbot);
                        claimed.then_some((id, order))
                    });
                    handed_out.extend(handed.as_ref().map(|(id, _)| *id));
                    pending.order_id = handed.as_ref().map(|(id, _)| *id);
                    self.pending.insert(record.id, pending);
                    match handed {
                        Some((id, order)) => {
                            let body = crate::http::order_json(&self.broker, id, &order, viewer);
                            let owed = Owed {
                                body,
                                update: None,
                                status: None,
                                salvage: false,
                                order: Some((id, orderbot.clone(), viewer)),
                                again: true,
                            };
                            self.owe(record.id, owed);
                        }
                        None => self.dispatch.lock().waiters.push_back(Waiter::Callback {
                            id: record.id,
                            orderbot: orderbot.clone(),
                            viewer,
                        }),
                    }
                }
                Owes::State {
                    order,
                    target,
                    updates,
                } => {
                    self.pending.insert(record.id, pending);
                    let mut waits = self.waits.lock();
                    waits.entry(*order).or_default().push(StateWait {
                        callback: record.id,
                        target: target.clone(),
                        updates: *updates,
                        viewer,
                    });
                    self.wait_count.fetch_add(1, Ordering::AcqRel);
                    drop(waits);
                    if seen.insert(*order) {
                        waited.push(*order);
                    }
                }
            }
        }
        if !waited.is_empty() {
            // Changes from here on are checked by the feed task; the ones
            // before are in the state checked now.
            self.demand.want(Seq(self.broker.last_seq().0 + 1));
        }
        for id in waited {
            match self.broker.get(id) {
                Some(order) => self.changed(id, &order),
                None => self.removed(id, None),
            }
        }
        drop(handover);
        if !records.is_empty() {
            tracing::info!(
                callbacks = records.len(),
                "cpee: took over the callbacks owed"
            );
        }
        self.requeue_intake_afresh();
    }

    /// Stops delivering: a node that no longer leads forgets the callbacks
    /// (the new leader has them from the stream), the orderbots waiting,
    /// the queue and the answers kept for re-sent calls. Deliveries in
    /// flight find their callback gone and stop; long polls end with 204.
    pub fn let_go(&self) {
        let _handover = self.handover.lock();
        self.forget();
    }

    /// Ends the current term and drops every callback's live state.
    fn forget(&self) {
        self.term.fetch_add(1, Ordering::AcqRel);
        self.pending.clear();
        self.outbox.clear();
        {
            let mut waits = self.waits.lock();
            waits.clear();
            self.wait_count.store(0, Ordering::Release);
        }
        {
            let mut dispatch = self.dispatch.lock();
            dispatch.orders.clear();
            dispatch.waiters.clear();
        }
        self.resent.clear();
    }
}
