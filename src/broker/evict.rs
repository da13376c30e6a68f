//! Eviction: finished orders (completed or cancelled) leave memory once
//! there are more than `limits.max_orders_kept` orders, oldest finished
//! first, or once they have been finished for `evict_finished_after_secs`.
//! Each leaves with an `order_removed` event that carries its final state,
//! which the journal writer appends to the archive.

use super::Broker;
use super::shop::Removal;
use crate::model::{Millis, OrderId, Stage};

impl Broker {
    /// Evicts what the limits ask for; how many orders left. O(finished
    /// orders) when there is anything to do, O(1) when there is not.
    pub fn evict_finished(&self, max_orders: usize, older_than: Option<Millis>) -> usize {
        let excess = self.len().saturating_sub(max_orders);
        if excess == 0 && older_than.is_none() {
            return 0;
        }
        // (finished at, id) of every finished order, oldest first.
        let mut finished: Vec<(u64, OrderId)> = [Stage::Completed, Stage::Cancelled]
            .into_iter()
            .flat_map(|stage| self.stage_orders(stage))
            .map(|(id, order)| (order.stage_since.get().0, id))
            .collect();
        finished.sort_unstable();
        let aged = older_than.map_or(0, |cutoff| {
            finished.partition_point(|(at, _)| *at < cutoff.0)
        });
        let evict = excess.max(aged).min(finished.len());
        finished[..evict]
            .iter()
            // An order that moved on meanwhile is refused and stays.
            .filter(|(_, id)| self.remove_order(*id, Removal::Evict).is_ok())
            .count()
    }
}
