//! Work dispatch: orders taken in by intake wait in a FIFO queue, orderbots
//! asking for work in another, oldest first; both under one lock, so each
//! order goes to exactly one orderbot and no order waits while one does.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::warn;

use super::deliver::Owed;
use super::{Audience, Cpee, CpeeCall, Owes};
use crate::broker::BrokerError;
use crate::http::access::Viewer;
use crate::model::OrderId;

pub(super) enum Waiter {
    Callback {
        id: u64,
        orderbot: String,
        viewer: Viewer,
    },
    Poll {
        orderbot: String,
        tx: oneshot::Sender<OrderId>,
    },
}

#[derive(Default)]
pub(super) struct Dispatch {
    /// Orders waiting for an orderbot, oldest first.
    pub(super) orders: VecDeque<OrderId>,
    /// Orderbots waiting for an order, oldest first.
    pub(super) waiters: VecDeque<Waiter>,
}

impl Cpee {
    /// Queues an order taken in by intake, handing it out if an orderbot waits.
    pub fn enqueue(self: &Arc<Self>, order: OrderId) {
        self.dispatch.lock().orders.push_back(order);
        self.dispatch_ready();
    }

    /// After recovery: queues again every order taken in by intake that no
    /// orderbot got, oldest first.
    /// In a cluster, when this node starts to lead: the queue it kept as a
    /// follower is stale (the old leader queued what came since), so it is
    /// built again from the orders that wait.
    pub fn requeue_intake_afresh(self: &Arc<Self>) {
        self.dispatch.lock().orders.clear();
        self.requeue_intake();
    }

    pub fn requeue_intake(self: &Arc<Self>) {
        let waiting = self.broker.undispatched_intake();
        if waiting.is_empty() {
            return;
        }
        self.dispatch.lock().orders.extend(waiting);
        self.dispatch_ready();
    }

    /// Asks for work: the oldest order still waiting now, or None. Orders
    /// that left `new` (or got an orderbot) meanwhile are dropped; a claim
    /// refused for another reason (the orderbot id is too long, the table
    /// of words is full) leaves the order at the head and is the answer.
    pub fn take_now(&self, orderbot: &str) -> Result<Option<OrderId>, BrokerError> {
        loop {
            let Some(order) = self.dispatch.lock().orders.pop_front() else {
                return Ok(None);
            };
            match self.broker.claim_for(order, orderbot) {
                Ok(_) => return Ok(Some(order)),
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    self.dispatch.lock().orders.push_front(order);
                    return Err(e);
                }
            }
        }
    }

    /// Puts back an order that was claimed but not delivered to `orderbot`
    /// (its orderbot is cleared first), at the head: it waited longest.
    /// Whoever calls it outside `dispatch_ready` calls that next.
    pub(super) fn put_back(&self, order: OrderId, orderbot: &str) {
        // A node that stopped leading changes nothing (the new leader
        // queues what waits for an orderbot).
        if !self.delivers() {
            return;
        }
        if self.broker.unclaim(order, orderbot) {
            self.dispatch.lock().orders.push_front(order);
        }
    }

    /// An order taken for an answer given at once: put back (see
    /// `put_back`) unless [`Taken::keep`] is called once the answer is
    /// durable and about to be sent, so a journal failure or a caller that
    /// left never leaves it with an orderbot that did not get it.
    pub fn taken(self: &Arc<Self>, order: OrderId, orderbot: &str) -> Taken {
        Taken {
            cpee: self.clone(),
            order,
            orderbot: orderbot.to_string(),
            kept: false,
        }
    }

    /// `put_back`, then hands the order to a waiting orderbot if one waits.
    pub(super) fn put_back_and_dispatch(self: &Arc<Self>, order: OrderId, orderbot: &str) {
        self.put_back(order, orderbot);
        self.dispatch_ready();
    }

    /// Drops queued orders that can no longer be dispatched (served,
    /// cancelled, deleted, or taken by an orderbot some other way).
    pub(super) fn purge_queue(&self) {
        let queued: Vec<OrderId> = self.dispatch.lock().orders.iter().copied().collect();
        let gone: std::collections::HashSet<OrderId> = queued
            .into_iter()
            .filter(|id| !self.broker.dispatchable(*id))
            .collect();
        if !gone.is_empty() {
            self.dispatch.lock().orders.retain(|id| !gone.contains(id));
        }
    }

    /// Waits for work with a callback: the order is PUT when one comes.
    pub fn wait_for_work(
        self: &Arc<Self>,
        call: &CpeeCall,
        orderbot: &str,
        audience: Audience,
    ) -> u64 {
        let viewer = audience.viewer();
        let owes = Owes::Work {
            orderbot: orderbot.to_string(),
            order: None,
        };
        // Not while the callbacks are being taken over (see `take_over`).
        let handover = self.handover.lock();
        let id = self.register(call, owes, audience);
        self.dispatch.lock().waiters.push_back(Waiter::Callback {
            id,
            orderbot: orderbot.to_string(),
            viewer,
        });
        drop(handover);
        self.dispatch_ready();
        id
    }

    /// A work callback whose instance resumed waits for work again, ahead
    /// of every other orderbot: it has waited longest.
    pub(super) fn wait_again(self: &Arc<Self>, id: u64, orderbot: String, viewer: Viewer) {
        if !self.pending.contains_key(&id) {
            return;
        }
        self.dispatch.lock().waiters.push_front(Waiter::Callback {
            id,
            orderbot,
            viewer,
        });
        self.dispatch_ready();
    }

    /// Records that work callback `id` is being handed `order` (before the
    /// order is claimed for it), or no order any more (None, before the
    /// order is put back): after a restart or a failover the order is
    /// delivered to it if the claim happened (`Cpee::take_over`). Nothing
    /// for a callback that ended, nor where this node does not deliver.
    pub(super) fn handing(&self, id: u64, order: Option<OrderId>) {
        if !self.delivers() {
            return;
        }
        self.broker
            .change_callback(id, |record| match &record.owes {
                Owes::Work {
                    orderbot,
                    order: was,
                } if *was != order => Some(super::Callback {
                    owes: Owes::Work {
                        orderbot: orderbot.clone(),
                        order,
                    },
                    ..record.clone()
                }),
                _ => None,
            });
    }

    /// Waits for work by long poll; the receiver gets the order.
    pub fn poll_for_work(self: &Arc<Self>, orderbot: &str) -> oneshot::Receiver<OrderId> {
        let (tx, rx) = oneshot::channel();
        let mut dispatch = self.dispatch.lock();
        // Pollers that timed out or left are not waiting any more.
        dispatch
            .waiters
            .retain(|w| !matches!(w, Waiter::Poll { tx, .. } if tx.is_closed()));
        dispatch.waiters.push_back(Waiter::Poll {
            orderbot: orderbot.to_string(),
            tx,
        });
        drop(dispatch);
        self.dispatch_ready();
        rx
    }

    /// Pairs waiting orders with waiting orderbots, oldest with oldest.
    /// Only an order still new and without an orderbot is handed out
    /// (`Broker::claim_for`); any other is dropped from the queue.
    pub(super) fn dispatch_ready(self: &Arc<Self>) {
        loop {
            // The claimed order is rendered below: no word it uses may go.
            let _pin = self.broker.pin();
            let (order, waiter) = {
                let mut d = self.dispatch.lock();
                // A poller that timed out or left waits no more.
                while d
                    .waiters
                    .front()
                    .is_some_and(|w| matches!(w, Waiter::Poll { tx, .. } if tx.is_closed()))
                {
                    d.waiters.pop_front();
                }
                if d.orders.is_empty() || d.waiters.is_empty() {
                    return;
                }
                let order = d.orders.pop_front().expect("checked");
                let waiter = d.waiters.pop_front().expect("checked");
                (order, waiter)
            };
            let orderbot = match &waiter {
                Waiter::Poll { orderbot, .. } | Waiter::Callback { orderbot, .. } => orderbot,
            };
            if let Waiter::Callback { id, .. } = &waiter {
                self.handing(*id, Some(order));
            }
            let claimed = match self.broker.claim_for(order, orderbot) {
                Ok(claimed) => claimed,
                // Served, cancelled or taken meanwhile: never handed out.
                Err(e) if gone(&e) => {
                    self.dispatch.lock().waiters.push_front(waiter);
                    continue;
                }
                // Nothing wrong with the order: it stays at the head, and
                // this orderbot, which cannot be recorded, waits no more.
                Err(e) => {
                    warn!(%order, error = %e, "an orderbot could not be given work");
                    self.dispatch.lock().orders.push_front(order);
                    if let Waiter::Callback { id, .. } = waiter {
                        self.give_up(id, None);
                    }
                    continue;
                }
            };
            match waiter {
                Waiter::Poll { orderbot, tx } => {
                    if tx.send(order).is_err() {
                        // The poller left: the order goes back to the head.
                        self.put_back(order, &orderbot);
                    }
                }
                Waiter::Callback {
                    id,
                    orderbot,
                    viewer,
                } => {
                    if let Some(mut p) = self.pending.get_mut(&id) {
                        p.order_id = Some(order);
                    } else {
                        // Cancelled meanwhile.
                        self.put_back(order, &orderbot);
                        continue;
                    }
                    let (_, claimed) = claimed.order().expect("a claim changes the order");
                    let body = crate::http::order_json(&self.broker, order, claimed, viewer);
                    self.owe(
                        id,
                        Owed {
                            body,
                            update: None,
                            status: None,
                            salvage: false,
                            order: Some((order, orderbot, viewer)),
                            again: false,
                        },
                    );
                }
            }
        }
    }

    /// The order as `viewer` may see it (see [`crate::http::access::viewer`]).
    pub fn order_json(&self, id: OrderId, viewer: Viewer) -> Bytes {
        let _pin = self.broker.pin();
        match self.broker.get(id) {
            Some(order) => crate::http::order_json(&self.broker, id, &order, viewer),
            None => Bytes::from_static(b"null"),
        }
    }
}

/// A claim refused because the order is not waiting any more.
fn gone(e: &BrokerError) -> bool {
    matches!(e, BrokerError::Conflict(_) | BrokerError::OrderNotFound)
}

/// See [`Cpee::taken`].
pub struct Taken {
    cpee: Arc<Cpee>,
    order: OrderId,
    orderbot: String,
    kept: bool,
}

impl Taken {
    /// The answer goes out: the order stays with its orderbot.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.kept {
            self.cpee.put_back_and_dispatch(self.order, &self.orderbot);
        }
    }
}
