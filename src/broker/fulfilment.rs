//! Fulfilment: assigning a delivery partner (shown as the order's
//! orderbot), the delivery flow one step at a time, the partner's location,
//! and cancellation with a reason, which puts back the stock and the money
//! a processed order took — atomically, like processing.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::{Broker, BrokerError};
use crate::catalog::{Customer, CustomerId, Product, ProductId, Slot};
use crate::feed::Event;
use crate::model::{Millis, Order, OrderId, Stage, Version};
use crate::money::Money;
use crate::shop::{Feedback, Fulfilment, GiveBack, Lifecycle, Location, ShopOrder};
use crate::symbols::Sym;

/// Who asks to cancel, which decides until when they may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canceller {
    /// The order's customer: only before preparation starts.
    Customer,
    /// Staff (or auth off): any time before delivery.
    Staff,
}

impl Broker {
    /// Assigns a delivery partner; the board shows them as the orderbot.
    pub fn assign_delivery(
        &self,
        id: OrderId,
        partner: &str,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        self.check_len("partner_id", partner)?;
        let _pin = self.pin();
        let partner = self.inner.symbols.intern(partner)?;
        self.apply(id, super::Mode::Update, expected, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            assign_check(current)?;
            Ok(Order {
                orderbot_id: Some(partner),
                ..current.clone()
            })
        })
    }

    /// Moves an order to the next step of the delivery flow. `partner`: the
    /// caller is this delivery partner, who must be the one assigned.
    pub fn advance(
        &self,
        id: OrderId,
        to: Fulfilment,
        partner: Option<&str>,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        // Symbols before the order's lock (never the other way round).
        let word = self.inner.symbols.reserve(to.word());
        let flow = self.flow_words();
        let _pin = self.pin();
        let partner = partner.map(|p| self.inner.symbols.lookup(p));
        self.apply(id, super::Mode::Update, expected, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            check_assignee(current, partner)?;
            advance_check(&flow, current, to)?;
            Ok(Order {
                status: word,
                shop: current
                    .shop
                    .as_ref()
                    .map(|s| Arc::new(s.with_entry(to.word(), None))),
                ..current.clone()
            })
        })
    }

    /// Records where the assigned partner is (`partner`: the caller, if a
    /// delivery partner). Only shop orders still under way have one.
    pub fn set_location(
        &self,
        id: OrderId,
        location: Location,
        partner: Option<&str>,
    ) -> Result<Event, BrokerError> {
        let _pin = self.pin();
        let partner = partner.map(|p| self.inner.symbols.lookup(p));
        self.apply(id, super::Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            check_assignee(current, partner)?;
            let shop = current.shop.as_ref().ok_or_else(|| {
                BrokerError::Conflict("order has no delivery (no shop details)".into())
            })?;
            if current.stage.is_finished() {
                return Err(BrokerError::Conflict(format!(
                    "order is {}; its delivery is over",
                    current.stage
                )));
            }
            Ok(Order {
                shop: Some(Arc::new(ShopOrder {
                    delivery_location: Some(location),
                    ..(**shop).clone()
                })),
                ..current.clone()
            })
        })
    }

    /// Records the customer's feedback: once, after completion.
    pub fn add_feedback(
        &self,
        id: OrderId,
        rating: u8,
        comment: &str,
    ) -> Result<Event, BrokerError> {
        if !(1..=5).contains(&rating) {
            return Err(BrokerError::Invalid("rating must be 1 to 5".into()));
        }
        if comment.len() > 1000 {
            return Err(BrokerError::TextTooLong {
                field: "comment",
                limit: 1000,
            });
        }
        self.apply(id, super::Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            let shop = completed_shop(current, "feedback is given after completion")?;
            if shop.feedback.is_some() {
                return Err(BrokerError::Conflict("feedback was already given".into()));
            }
            Ok(Order {
                shop: Some(Arc::new(ShopOrder {
                    feedback: Some(Feedback {
                        rating,
                        comment: comment.to_string(),
                        at: Millis::now(),
                    }),
                    ..(**shop).clone()
                })),
                ..current.clone()
            })
        })
    }

    /// Cancels an order with a reason. The change goes through `apply`, like
    /// every cancellation, so a processed order gives back what its ledger
    /// has outstanding (see `settle`) with the cancellation, in one step.
    pub fn cancel_order(
        &self,
        id: OrderId,
        reason: &str,
        by: Canceller,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(BrokerError::Invalid(
                "reason must be 1 to 500 bytes of text".into(),
            ));
        }
        let status = self.inner.symbols.reserve(Lifecycle::Cancelled.text());
        let flow = self.flow_words();
        self.apply(id, super::Mode::Update, expected, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            let state = flow_state(&flow, current);
            let allowed = match by {
                Canceller::Customer => customer_may_cancel(state),
                Canceller::Staff => !matches!(state, Fulfilment::Delivered | Fulfilment::Cancelled),
            };
            if !allowed {
                return Err(BrokerError::Conflict(match (by, state) {
                    (_, Fulfilment::Cancelled) => "order is already cancelled".into(),
                    (_, Fulfilment::Delivered) => "order is delivered; request a return".into(),
                    _ => too_late_for_a_customer(state),
                }));
            }
            Ok(Order {
                status,
                shop: current
                    .shop
                    .as_ref()
                    .map(|s| Arc::new(s.with_entry(Lifecycle::Cancelled.text(), Some(reason)))),
                ..current.clone()
            })
        })
    }

    /// Commits `next` for the locked order `entry` in one step with giving
    /// back: `back.units` per product go back in stock (products deleted
    /// since are skipped) and `back.money` onto `customer`'s balance (if
    /// they still exist). Products are locked by ascending id, then the
    /// customer. The caller bumps the generations and publishes.
    pub(super) fn commit_giving_back(
        &self,
        id: OrderId,
        entry: &mut Order,
        next: Order,
        back: &GiveBack,
        customer: Option<CustomerId>,
    ) -> Result<Event, BrokerError> {
        let product_slots: Vec<Slot<Product>> = back
            .units
            .keys()
            .filter_map(|pid| self.inner.products.slot(*pid))
            .collect();
        let customer_slot: Option<Slot<Customer>> = customer
            .filter(|_| back.money > Money::ZERO)
            .and_then(|cid| self.inner.customers.slot(cid));
        let mut products: Vec<MutexGuard<'_, Option<Product>>> =
            product_slots.iter().map(|s| s.lock()).collect();
        let mut customer = customer_slot.as_ref().map(|s| s.lock());

        let restocked = restocked(&products, &back.units)?;
        let credited = match customer.as_ref().and_then(|c| c.as_ref()) {
            Some(c) => Some(Customer {
                balance: c
                    .balance
                    .checked_add(back.money)
                    .ok_or_else(|| BrokerError::Invalid("balance would overflow".into()))?,
                version: next_version(c.version)?,
                ..c.clone()
            }),
            None => None,
        };
        let customer = match (customer.as_mut(), credited) {
            (Some(slot), Some(credited)) => Some((slot, credited)),
            _ => None,
        };
        let from = Some((entry.stage, entry.stage_since));
        Ok(self.commit_together(id, from, entry, next, &mut products, restocked, customer))
    }

    /// Where an order is in the delivery flow.
    pub fn fulfilment_of(&self, order: &Order) -> Fulfilment {
        flow_state(&self.flow_words(), order)
    }

    /// The status symbol of each flow word (all reserved at start).
    pub(super) fn flow_words(&self) -> Vec<(Sym, Fulfilment)> {
        [
            Fulfilment::Confirmed,
            Fulfilment::Preparing,
            Fulfilment::OutForDelivery,
        ]
        .into_iter()
        .map(|f| (self.inner.symbols.reserve(f.word()), f))
        .collect()
    }
}

/// Whether an order's customer may still cancel it: only before
/// preparation starts, through any API.
pub(super) fn customer_may_cancel(state: Fulfilment) -> bool {
    matches!(
        state,
        Fulfilment::Scheduled | Fulfilment::New | Fulfilment::Confirmed
    )
}

pub(super) fn too_late_for_a_customer(state: Fulfilment) -> String {
    format!(
        "order is {}; a customer can cancel only before preparation",
        state.name()
    )
}

/// A completed order's shop details, for what only comes after completion
/// (feedback, returns); `early` says why not yet.
pub(super) fn completed_shop<'a>(
    order: &'a Order,
    early: &str,
) -> Result<&'a Arc<ShopOrder>, BrokerError> {
    let shop = order
        .shop
        .as_ref()
        .filter(|s| s.customer_id.is_some())
        .ok_or_else(|| BrokerError::Conflict("order has no customer".into()))?;
    if order.stage != Stage::Completed {
        return Err(BrokerError::Conflict(early.to_string()));
    }
    Ok(shop)
}

/// Whether an order may be assigned: not once it is finished.
pub(super) fn assign_check(order: &Order) -> Result<(), BrokerError> {
    if order.stage.is_finished() {
        return Err(BrokerError::Conflict(format!(
            "order is {}; it cannot be assigned",
            order.stage
        )));
    }
    Ok(())
}

/// Whether an order may move to `to`: only to the flow's next step.
pub(super) fn advance_check(
    flow: &[(Sym, Fulfilment)],
    order: &Order,
    to: Fulfilment,
) -> Result<(), BrokerError> {
    let now = flow_state(flow, order);
    if now.next() == Some(to) {
        return Ok(());
    }
    Err(BrokerError::Conflict(match now.next() {
        Some(next) => format!("order is {}; it can only go to {}", now.name(), next.name()),
        None => format!("order is {}; it cannot change", now.name()),
    }))
}

/// Where an order stands in the delivery flow (see [`Fulfilment::of`]).
pub(super) fn flow_state(flow: &[(Sym, Fulfilment)], order: &Order) -> Fulfilment {
    match order.stage {
        Stage::InProgress => flow
            .iter()
            .find(|(sym, _)| *sym == order.status)
            .map_or(Fulfilment::Confirmed, |(_, f)| *f),
        stage => Fulfilment::of("", stage),
    }
}

/// A delivery partner may act only on orders assigned to them. `partner`:
/// None when the caller is not a partner; Some(None) for a partner id the
/// broker has never seen (so no order is assigned to it).
fn check_assignee(order: &Order, partner: Option<Option<Sym>>) -> Result<(), BrokerError> {
    match partner {
        Some(p) if p.is_none() || order.orderbot_id != p => Err(BrokerError::NotAssigned),
        _ => Ok(()),
    }
}

/// Units per product, summed over lines that name a product twice; 422
/// past `MAX_UNITS`.
pub(super) fn units_of(
    items: impl Iterator<Item = (ProductId, u64)>,
) -> Result<BTreeMap<ProductId, u64>, BrokerError> {
    let mut units = BTreeMap::new();
    for (product, quantity) in items {
        let sum: &mut u64 = units.entry(product).or_insert(0);
        *sum = crate::money::add_units(*sum, quantity).ok_or_else(|| BrokerError::OutOfRange {
            field: "quantity".into(),
            allowed: format!(
                "at most {} units of product {} in all",
                crate::money::MAX_UNITS,
                product.0
            ),
        })?;
    }
    Ok(units)
}

/// The locked products with `units` back in their stock (a product not in
/// `units` is left out).
pub(super) fn restocked(
    products: &[MutexGuard<'_, Option<Product>>],
    units: &crate::shop::Units,
) -> Result<Vec<Product>, BrokerError> {
    let mut restocked = Vec::new();
    for product in products.iter().filter_map(|g| g.as_ref()) {
        let Some(&units) = units.get(&product.id) else {
            continue;
        };
        let stock = crate::money::add_units(product.stock, units).ok_or_else(|| {
            BrokerError::Invalid(format!("stock of product {} would overflow", product.id.0))
        })?;
        restocked.push(Product {
            stock,
            version: next_version(product.version)?,
            ..product.clone()
        });
    }
    Ok(restocked)
}

fn next_version(v: u32) -> Result<u32, BrokerError> {
    Version(v)
        .next()
        .map(|v| v.0)
        .ok_or(BrokerError::VersionExhausted)
}
