//! Bulk changes: one action on up to `limits.max_bulk_orders` orders, with
//! an error policy. While a bulk runs, every other order writer waits (see
//! `Broker::locked`), so its checks and its changes see the same orders:
//! with `reject_all`, either every order changes or none does. The bulk's
//! events have consecutive seqs; readers may see them land one by one,
//! within microseconds.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use super::fulfilment::{advance_check, assign_check};
use super::{Broker, BrokerError};
use crate::feed::Event;
use crate::model::OrderId;
use crate::shop::Fulfilment;

thread_local! {
    /// True on the thread running a bulk (its own writes pass the gate).
    static RUNNING_HERE: Cell<bool> = const { Cell::new(false) };
}

pub(super) fn is_running_here() -> bool {
    RUNNING_HERE.with(Cell::get)
}

/// What a bulk call does to each order.
#[derive(Debug, Clone, Copy)]
pub enum BulkAction<'a> {
    /// The next step of the delivery flow (`PUT /orders/{id}/status`).
    Status(Fulfilment),
    /// Assign a delivery partner.
    Assign(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// All or nothing: one refusal and no order changes.
    RejectAll,
    /// Change the orders that can change; report the others.
    SkipFailed,
}

/// One order's outcome.
#[derive(Debug)]
pub enum BulkResult {
    Applied(Event),
    Failed(BrokerError),
    /// Valid, but not applied because another order failed (`reject_all`).
    Skipped,
}

/// Clears the bulk flag however the bulk ends.
struct Running<'a>(&'a Broker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        RUNNING_HERE.with(|r| r.set(false));
        self.0.inner.bulk_active.store(false, Ordering::Release);
    }
}

impl Broker {
    /// Applies `action` to each of `ids` (distinct) under `policy`; one
    /// result per id, in order.
    pub fn bulk(
        &self,
        ids: &[OrderId],
        action: BulkAction<'_>,
        policy: ErrorPolicy,
    ) -> Vec<(OrderId, BulkResult)> {
        // Texts first: interning never happens under an order's lock.
        let _pin = self.pin();
        let interned = match action {
            BulkAction::Assign(p) => self
                .check_len("partner_id", p)
                .and_then(|()| Ok(self.inner.symbols.intern(p).map(drop)?)),
            BulkAction::Status(to) => {
                self.inner.symbols.reserve(to.word());
                Ok(())
            }
        };
        if let Err(e) = interned {
            return ids
                .iter()
                .map(|id| (*id, BulkResult::Failed(e.clone())))
                .collect();
        }
        let flow = self.flow_words();

        let serial = self.inner.bulk.lock();
        self.inner.bulk_active.store(true, Ordering::SeqCst);
        RUNNING_HERE.with(|r| r.set(true));
        let running = Running(self);
        // A writer that took one of these orders before the flag was set
        // finishes first; any later one sees the flag and waits.
        for id in ids {
            drop(self.inner.orders.get(id));
        }

        let checks: Vec<Result<(), BrokerError>> = ids
            .iter()
            .map(|id| {
                let order = self.get(*id).ok_or(BrokerError::OrderNotFound)?;
                match action {
                    BulkAction::Status(to) => advance_check(&flow, &order, to),
                    BulkAction::Assign(_) => assign_check(&order),
                }
            })
            .collect();
        let refuse_all = policy == ErrorPolicy::RejectAll && checks.iter().any(Result::is_err);
        let results = ids
            .iter()
            .zip(checks)
            .map(|(id, check)| {
                let result = match check {
                    Err(e) => BulkResult::Failed(e),
                    Ok(()) if refuse_all => BulkResult::Skipped,
                    Ok(()) => {
                        let applied = match action {
                            BulkAction::Status(to) => self.advance(*id, to, None, None),
                            BulkAction::Assign(p) => self.assign_delivery(*id, p, None),
                        };
                        // Nothing else writes meanwhile, so what passed
                        // the check applies.
                        match applied {
                            Ok(event) => BulkResult::Applied(event),
                            Err(e) => BulkResult::Failed(e),
                        }
                    }
                };
                (*id, result)
            })
            .collect();
        drop(running);
        drop(serial);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::feed::Change;
    use crate::model::{Seq, Stage};

    /// Writers race a bulk on the same orders: the bulk is all or nothing,
    /// its events are consecutive (no other order change in between), and
    /// each order still moves one step at a time.
    #[test]
    fn an_all_or_nothing_bulk_excludes_other_writers() {
        const ORDERS: u64 = 40;
        for round in 0..20 {
            let broker = Broker::new(&Config::default());
            for id in 0..ORDERS {
                broker
                    .update_status(OrderId(id), "Order Initiated", None)
                    .unwrap();
            }
            let ids: Vec<OrderId> = (0..ORDERS).map(OrderId).collect();
            let results = std::thread::scope(|s| {
                for t in 0..3u64 {
                    let broker = &broker;
                    s.spawn(move || {
                        for n in 0..200 {
                            let id = OrderId((n * 7 + t + round) % ORDERS);
                            let _ = broker.advance(id, Fulfilment::Confirmed, None, None);
                            // …and back to new, so the race goes on.
                            let _ = broker.update_status(id, "Order Initiated", None);
                        }
                    });
                }
                broker.bulk(
                    &ids,
                    BulkAction::Status(Fulfilment::Confirmed),
                    ErrorPolicy::RejectAll,
                )
            });
            let applied: Vec<Seq> = results
                .iter()
                .filter_map(|(_, r)| match r {
                    BulkResult::Applied(e) => Some(e.seq),
                    _ => None,
                })
                .collect();
            assert!(
                applied.is_empty() || applied.len() == ids.len(),
                "all or nothing: {} of {} applied",
                applied.len(),
                ids.len()
            );
            if applied.is_empty() {
                assert!(
                    results
                        .iter()
                        .any(|(_, r)| matches!(r, BulkResult::Failed(_)))
                );
            }
            assert!(
                applied.windows(2).all(|w| w[1].0 == w[0].0 + 1),
                "the bulk's events are consecutive: {applied:?}"
            );
            // Every order's versions still step by one through the feed.
            let mut last = std::collections::HashMap::new();
            for event in crate::broker::gapless_feed(&broker) {
                if let Change::Order { id, order, .. } = &event.change {
                    let v = last.insert(*id, order.version.0).unwrap_or(0);
                    assert_eq!(order.version.0, v + 1);
                    assert_ne!(order.stage, Stage::Cancelled);
                }
            }
        }
    }
}
