//! Scheduled orders: created with status "Scheduled" (stage `scheduled`,
//! on no board view) and a `scheduled_for` time; the housekeeping task
//! releases them at that time: they become "New" like any new order.

use std::sync::Arc;

use super::{Broker, BrokerError};
use crate::model::{Millis, Order, OrderId, Stage};
use crate::shop::Lifecycle;

impl Broker {
    /// Makes every scheduled order whose time has come new; their ids,
    /// ascending. An order cancelled meanwhile stays cancelled.
    pub fn release_due(&self, now: Millis) -> Vec<OrderId> {
        let new = self.inner.symbols.reserve(Lifecycle::New.text());
        self.stage_orders(Stage::Scheduled)
            .into_iter()
            .filter(|(_, o)| {
                o.shop
                    .as_ref()
                    .and_then(|s| s.scheduled_for)
                    .is_none_or(|at| at <= now)
            })
            .filter(|(id, _)| {
                self.apply(*id, super::Mode::Update, None, |current| {
                    let current = current.ok_or(BrokerError::OrderNotFound)?;
                    if current.stage != Stage::Scheduled {
                        return Err(BrokerError::Conflict("no longer scheduled".into()));
                    }
                    Ok(Order {
                        status: new,
                        shop: current
                            .shop
                            .as_ref()
                            .map(|s| Arc::new(s.with_entry(Lifecycle::New.text(), None))),
                        ..current.clone()
                    })
                })
                .is_ok()
            })
            .map(|(id, _)| id)
            .collect()
    }
}
