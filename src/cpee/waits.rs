//! State waits: kept per order, checked against every change in the feed
//! by one task that sleeps while nobody waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::deliver::Owed;
use super::{Cpee, CpeeCall, CpeeError, Target};
use crate::http::access::Viewer;
use crate::model::{Order, OrderId};

pub(super) struct StateWait {
    callback: u64,
    target: Target,
    updates: bool,
    /// What the caller that registered it may see of the order.
    viewer: Viewer,
}

impl Cpee {
    /// Registers a state wait, or answers at once: Some(order) if the order is
    /// already there. The wait is registered before the check, so no change
    /// can slip between them. Refused past `cpee.max_waits_per_order`.
    pub fn wait_for_state(
        self: &Arc<Self>,
        call: &CpeeCall,
        order: OrderId,
        target: Target,
        updates: bool,
        viewer: Viewer,
    ) -> Result<Option<Order>, CpeeError> {
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
        let id = self.register("wait", call, Some(order), None);
        {
            let mut waits = self.waits.lock();
            // Checked again where it counts: two waits may race for the last place.
            if full(&waits) {
                drop(waits);
                self.pending.remove(&id);
                return Err(CpeeError::TooManyWaits { order, max });
            }
            waits.entry(order).or_default().push(StateWait {
                callback: id,
                target: target.clone(),
                updates,
                viewer,
            });
        }
        self.wait_count.fetch_add(1, Ordering::AcqRel);
        self.demand.want(from);
        let Some(current) = self.broker.get(order) else {
            return Ok(None);
        };
        if self.reached(&current, &target) && self.drop_wait(order, id) {
            self.pending.remove(&id);
            self.outbox.remove(&id);
            return Ok(Some(current));
        }
        Ok(None)
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
                        if let Some(order) = self.broker.get(id) {
                            self.changed(id, &order);
                        }
                    }
                    continue;
                };
                for event in &events {
                    if let Some((id, order)) = event.order() {
                        self.changed(id, order);
                    }
                }
            }
        }
    }

    fn changed(self: &Arc<Self>, id: OrderId, order: &Order) {
        type Due = Vec<(u64, Viewer)>;
        let (done, updates): (Due, Due) = {
            let mut waits = self.waits.lock();
            let Some(list) = waits.get_mut(&id) else {
                return;
            };
            let mut done = Vec::new();
            let mut updates = Vec::new();
            list.retain(|w| {
                if self.reached(order, &w.target) {
                    done.push((w.callback, w.viewer));
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
            (done, updates)
        };
        self.wait_count.fetch_sub(done.len(), Ordering::Relaxed);
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
            let update = Some(mark);
            self.owe(
                callback,
                Owed {
                    body,
                    update,
                    order: None,
                },
            );
        }
        for (callback, viewer) in done {
            let body = body_for(viewer);
            self.owe(
                callback,
                Owed {
                    body,
                    update: None,
                    order: None,
                },
            );
        }
    }
}
