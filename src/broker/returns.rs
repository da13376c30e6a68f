//! Returns and refunds: a customer asks to return some items of a completed
//! order within `returns.window_secs`; staff approve or reject, mark the
//! items received, and refund — which credits the amount to the customer's
//! balance and, with `returns.restock`, puts the items back in stock, in
//! one step. Every step is an entry in the order's history.

use std::sync::Arc;

use super::fulfilment::{completed_shop, units_of};
use super::{Broker, BrokerError};
use crate::model::{Millis, Order, OrderId};
use crate::shop::{Item, Return, ReturnItem, ReturnStatus, ShopOrder, Totals};

use super::NewItem;

impl Broker {
    /// Opens a return of `items` (each a product of the order, at most the
    /// quantity ordered) with a reason.
    pub fn request_return(
        &self,
        id: OrderId,
        items: &[NewItem],
        reason: &str,
    ) -> Result<super::Event, BrokerError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(BrokerError::Invalid(
                "reason must be 1 to 500 bytes of text".into(),
            ));
        }
        if items.is_empty() {
            return Err(BrokerError::Invalid("items must not be empty".into()));
        }
        for (index, item) in items.iter().enumerate() {
            self.check_quantity(&format!("items[{index}].quantity"), item.quantity, 1)?;
        }
        let now = Millis::now();
        self.apply(id, super::Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            let shop = completed_shop(current, "only a completed order can be returned")?;
            if !shop.ledger.was_charged() {
                return Err(BrokerError::Conflict(
                    "only a processed (charged) order can be returned".into(),
                ));
            }
            if now.0.saturating_sub(current.stage_since.get().0) > self.inner.return_window_ms {
                return Err(BrokerError::Conflict("the return window has closed".into()));
            }
            if shop.return_request.is_some() {
                return Err(BrokerError::Conflict(
                    "a return was already requested".into(),
                ));
            }
            let returned = returned_items(shop, items)?;
            let amount = Totals::of(
                &returned,
                self.inner.tax_rate,
                self.inner.service_charge_rate,
            )
            .ok_or_else(|| BrokerError::Invalid("the amount overflows".into()))?
            .grand_total;
            let request = Return {
                status: ReturnStatus::Requested,
                items: items
                    .iter()
                    .map(|i| ReturnItem {
                        product_id: i.product_id,
                        quantity: i.quantity,
                    })
                    .collect(),
                reason: reason.to_string(),
                amount,
                requested_at: now,
            };
            let shop = ShopOrder {
                return_request: Some(request),
                ..shop.with_entry(ReturnStatus::Requested.history_word(), Some(reason))
            };
            Ok(Order {
                shop: Some(Arc::new(shop)),
                ..current.clone()
            })
        })
    }

    /// Moves an order's return on (staff). Refunding credits the amount and
    /// restocks (if configured) with the change, in one step, bounded by what
    /// the order's ledger has outstanding; `apply` settles it like every
    /// other money movement.
    pub fn advance_return(
        &self,
        id: OrderId,
        to: ReturnStatus,
    ) -> Result<super::Event, BrokerError> {
        let now = Millis::now();
        self.apply(id, super::Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            let shop = current
                .shop
                .as_ref()
                .ok_or_else(|| BrokerError::Conflict("order has no return".into()))?;
            let request = shop
                .return_request
                .as_ref()
                .ok_or_else(|| BrokerError::Conflict("order has no return".into()))?;
            if !request.status.may_become(to) {
                return Err(BrokerError::Conflict(format!(
                    "the return is {}; it cannot become {}",
                    request.status.name(),
                    to.name()
                )));
            }
            let mut next = ShopOrder {
                return_request: Some(Return {
                    status: to,
                    ..request.clone()
                }),
                ..shop.with_entry(to.history_word(), None)
            };
            if to == ReturnStatus::Refunded {
                let units = if self.inner.restock_returns {
                    units_of(request.items.iter().map(|i| (i.product_id, i.quantity)))?
                } else {
                    Default::default()
                };
                next.ledger.refund(request.amount, &units, now);
            }
            Ok(Order {
                shop: Some(Arc::new(next)),
                ..current.clone()
            })
        })
    }
}

/// The order's lines for the returned quantities, at their captured prices.
fn returned_items(shop: &ShopOrder, items: &[NewItem]) -> Result<Vec<Item>, BrokerError> {
    let ordered = units_of(shop.items.iter().map(|i| (i.product_id, i.quantity)))?;
    let asked = units_of(items.iter().map(|i| (i.product_id, i.quantity)))?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let line = shop
                .items
                .iter()
                .find(|i| i.product_id == item.product_id)
                .ok_or_else(|| BrokerError::InvalidItem {
                    index,
                    reason: format!("product {} is not in the order", item.product_id.0),
                })?;
            let bought = ordered.get(&item.product_id).copied().unwrap_or(0);
            if asked.get(&item.product_id).copied().unwrap_or(0) > bought {
                return Err(BrokerError::InvalidItem {
                    index,
                    reason: format!(
                        "returns more of product {} than the {bought} ordered",
                        item.product_id.0
                    ),
                });
            }
            Ok(Item {
                quantity: item.quantity,
                ..line.clone()
            })
        })
        .collect()
}
