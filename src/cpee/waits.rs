//! State waits: kept per order, checked against every change in the feed
//! by one task that sleeps while nobody waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::deliver::Owed;
use super::{Audience, Cpee, CpeeCall, CpeeError, Owes, Target};
use crate::feed::Change;
use crate::http::access::Viewer;
use crate::model::{Order, OrderId, Stage};

pub(super) struct StateWait {
    pub(super) callback: u64,
    pub(super) target: Target,
    pub(super) updates: bool,
    /// What the caller that registered it may see of the order.
    pub(super) viewer: Viewer,
}

impl Cpee {
    /// Registers a state wait, or answers at once when the order is already
    /// there or can never get there. The wait is registered before the
    /// check, so no change can slip between them. Refused past
    /// `cpee.max_waits_per_order`. The caller holds a pin (it renders the
    /// order it gets back).
    pub fn wait_for_state(
        self: &Arc<Self>,
        call: &CpeeCall,
        order: OrderId,
        target: Target,
        updates: bool,
        audience: Audience,
    ) -> Result<WaitAnswer, CpeeError> {
        let viewer = audience.viewer();
        let max = self.config.max_waits_per_order;
        let full = |waits: &HashMap<OrderId, Vec<StateWait>>| {
            waits.get(&order).is_some_and(|list| list.len() >= max)
        };
        if full(&self.waits.lock()) {
            return Err(CpeeError::TooManyWaits { order, max });
        }
        // Every change from now on must be checked against this wait: note
        // where "now" is, count the wait, then wake the feed task from there.
        let from = crate::model::Seq(self.broker.last_seq().0 + 1);
        let owes = Owes::State {
            order,
            target: target.clone(),
            updates,
        };
        // Not while the callbacks are being taken over (see `take_over`).
        let handover = self.handover.lock();
        let id = self.register(call, owes, audience);
        {
            let mut waits = self.waits.lock();
            // Checked again where it counts: two waits may race for the last place.
            if full(&waits) {
                drop(waits);
                self.end(id);
                return Err(CpeeError::TooManyWaits { order, max });
            }
            waits.entry(order).or_default().push(StateWait {
                callback: id,
                target: target.clone(),
                updates,
                viewer,
            });
            // Counted under the lock, as every change to the waits is.
            self.wait_count.fetch_add(1, Ordering::AcqRel);
        }
        drop(handover);
        self.demand.want(from);
        let current = self.broker.get(order);
        let answer = match &current {
            Some(o) if self.reached(o, &target) => WaitAnswer::Reached(o.clone()),
            Some(o) if !self.reachable(o, &target) => WaitAnswer::Never(Some(o.clone())),
            Some(_) => return Ok(WaitAnswer::Later(id)),
            None => WaitAnswer::Never(None),
        };
        if self.drop_wait(order, id) {
            self.end(id);
            return Ok(answer);
        }
        // The feed task answered it meanwhile.
        Ok(WaitAnswer::Later(id))
    }

    /// Whether `order` can still reach `target` (when it has not yet): a
    /// cancelled order never can, nor can a completed shop order go back
    /// to new or in progress (the table of moves,
    /// [`crate::shop::check_move`]). Orders without shop details move
    /// freely, as the seed's do.
    pub fn reachable(&self, order: &Order, target: &Target) -> bool {
        let stage = match target {
            Target::Stage(stage) => *stage,
            Target::Status(word) => self.broker.stage_of_word(word),
        };
        // A refunded shop order is final too (the table of moves).
        let refunded = order.shop.as_ref().is_some_and(|s| {
            s.return_request
                .as_ref()
                .is_some_and(|r| r.status == crate::shop::ReturnStatus::Refunded)
        });
        match order.stage {
            Stage::Cancelled => false,
            Stage::Completed if refunded => false,
            Stage::Completed if order.shop.is_some() => stage == Stage::Cancelled,
            _ => true,
        }
    }

    /// Removes a wait; true if this call removed it (so it owns the answer).
    pub(super) fn drop_wait(&self, order: OrderId, callback: u64) -> bool {
        let mut waits = self.waits.lock();
        let Some(list) = waits.get_mut(&order) else {
            return false;
        };
        let before = list.len();
        list.retain(|w| w.callback != callback);
        let removed = list.len() < before;
        if list.is_empty() {
            waits.remove(&order);
        }
        if removed {
            self.wait_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The caller holds a pin since it read `order`.
    pub fn reached(&self, order: &Order, target: &Target) -> bool {
        match target {
            Target::Stage(stage) => order.stage == *stage,
            Target::Status(status) => self.broker.symbols().text(order.status) == status,
        }
    }

    /// Follows the feed and answers state waits. Sleeps while nobody waits,
    /// so writers wake nobody then. Runs until aborted.
    pub async fn watch(self: Arc<Self>) {
        loop {
            let from = self.demand.wanted().await;
            let mut feed = self.broker.subscribe(from);
            while self.wait_count.load(Ordering::Acquire) > 0 {
                if !feed.ready().await {
                    return;
                }
                let pin = self.broker.pin();
                let Ok(events) = feed.take(&pin) else {
                    // Fell behind: re-check every wait against the current state.
                    feed = self
                        .broker
                        .subscribe(crate::model::Seq(self.broker.last_seq().0 + 1));
                    let orders: Vec<OrderId> = self.waits.lock().keys().copied().collect();
                    for id in orders {
                        match self.broker.get(id) {
                            Some(order) => self.changed(id, &order),
                            None => self.removed(id, None),
                        }
                    }
                    continue;
                };
                for event in &events {
                    match &event.change {
                        Change::Order { id, order, .. } => self.changed(*id, order),
                        Change::OrderRemoved { id, evicted, .. } => {
                            self.removed(*id, evicted.as_ref())
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    pub(super) fn changed(self: &Arc<Self>, id: OrderId, order: &Order) {
        type Due = Vec<(u64, Viewer)>;
        let (done, never, updates): (Due, Due, Due) = {
            let mut waits = self.waits.lock();
            let Some(list) = waits.get_mut(&id) else {
                return;
            };
            let mut done = Vec::new();
            let mut never = Vec::new();
            let mut updates = Vec::new();
            list.retain(|w| {
                if self.reached(order, &w.target) {
                    done.push((w.callback, w.viewer));
                    false
                } else if !self.reachable(order, &w.target) {
                    never.push((w.callback, w.viewer));
                    false
                } else {
                    if w.updates {
                        updates.push((w.callback, w.viewer));
                    }
                    true
                }
            });
            if list.is_empty() {
                waits.remove(&id);
            }
            self.wait_count
                .fetch_sub(done.len() + never.len(), Ordering::Relaxed);
            (done, never, updates)
        };
        let status = self.broker.symbols().text(order.status).to_string();
        // One rendering per kind of viewer among the callbacks.
        let mut bodies: Vec<(Viewer, Bytes)> = Vec::new();
        let mut body_for = |viewer: Viewer| -> Bytes {
            if let Some((_, body)) = bodies.iter().find(|(v, _)| *v == viewer) {
                return body.clone();
            }
            let body = crate::http::order_json(&self.broker, id, order, viewer);
            bodies.push((viewer, body.clone()));
            body
        };
        let mark = (order.created.get(), order.version);
        for (callback, viewer) in updates {
            let body = body_for(viewer);
            self.owe(
                callback,
                Owed {
                    body,
                    update: Some(mark),
                    status: Some(status.clone()),
                    salvage: false,
                    order: None,
                    again: false,
                },
            );
        }
        for (salvage, due) in [(false, done), (true, never)] {
            for (callback, viewer) in due {
                let body = body_for(viewer);
                let owed = Owed {
                    body,
                    update: None,
                    status: None,
                    salvage,
                    order: None,
                    again: false,
                };
                self.owe(callback, owed);
            }
        }
    }

    /// An order with waits left the broker (deleted, or evicted: then its
    /// final state comes along): no wait on it can be met any more, so each
    /// is answered with `CPEE-SALVAGE: true`.
    pub(super) fn removed(self: &Arc<Self>, id: OrderId, evicted: Option<&Order>) {
        let list = {
            let mut waits = self.waits.lock();
            let Some(list) = waits.remove(&id) else {
                return;
            };
            self.wait_count.fetch_sub(list.len(), Ordering::Relaxed);
            list
        };
        for wait in list {
            let body = match evicted {
                Some(order) => crate::http::order_json(&self.broker, id, order, wait.viewer),
                None => Bytes::from(serde_json::json!({"id": id, "removed": true}).to_string()),
            };
            let owed = Owed {
                body,
                update: None,
                status: None,
                salvage: true,
                order: None,
                again: false,
            };
            self.owe(wait.callback, owed);
        }
    }
}

/// How a state wait was answered when it was registered.
pub enum WaitAnswer {
    /// The order is there already.
    Reached(Order),
    /// The order can never get there (cancelled, finished, or gone: None).
    Never(Option<Order>),
    /// The callback with this id will say.
    Later(u64),
}
