//! Orders with items: create, list, change status or items, delete, process
//! against stock and balance, and the lifecycle (confirm / paid / complete /
//! cancel). Processing locks the order, then its products by ascending id,
//! then its customer, and commits every change under one sequencer lock, so
//! stock and balances add up exactly under any concurrency.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;

use super::{Broker, BrokerError, LifecycleError, check_version};
use crate::catalog::{CustomerId, ProductId};
use crate::feed::{Change, Event};
use crate::model::{Arrival, Millis, Order, OrderId, Stage, Version};
use crate::shop::{
    Delivery, Fulfilment, HistoryEntry, Item, Lifecycle, PaymentStatus, ShopOrder, Strategy,
    Totals, allocate,
};

/// One line of a new order, as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewItem {
    pub product_id: ProductId,
    pub quantity: u64,
}

/// A new shop order.
#[derive(Debug, Clone, Default)]
pub struct NewOrder {
    pub customer_id: Option<CustomerId>,
    pub items: Vec<NewItem>,
    pub notes: String,
    pub table_number: Option<String>,
    pub channel: String,
    /// Refuse the order when an item asks for more than is in stock now.
    pub check_stock: bool,
    /// The order's number if the client chose one (unique: 409 when
    /// taken); None: the broker makes one.
    pub number: Option<String>,
    /// Take the items' stock as the order is placed (400 when short), as
    /// the Order Management API does; processing then takes no more.
    pub take_stock: bool,
    /// Hold the order as scheduled until then; it becomes new at that time.
    pub scheduled_for: Option<Millis>,
    /// Where it is delivered, for the delivery fee; None: no delivery.
    pub delivery: Option<NewDelivery>,
}

/// A new order's delivery: a distance or a zone (see `[delivery]`).
#[derive(Debug, Clone, Default)]
pub struct NewDelivery {
    pub distance_km: Option<f64>,
    pub zone: Option<String>,
}

/// Which orders a listing returns, and the page.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub customer_id: Option<CustomerId>,
    pub status: Option<String>,
    pub stage: Option<Stage>,
    /// Only orders created at or after this time…
    pub created_from: Option<Millis>,
    /// …and before this one.
    pub created_to: Option<Millis>,
    /// Cursor: only orders after this place.
    pub after: Option<Arrival>,
    pub limit: usize,
}

/// The Order Status API's transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Confirm,
    Paid,
    Complete,
    Cancel,
}

/// Order numbers use letters and digits that cannot be mistaken for each other.
const NUMBER_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Why an order leaves the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Removal {
    /// A client deleted it (with an optional `If-Match` version); a
    /// customer only while they may still cancel it (the flow words).
    Delete {
        expected: Option<Version>,
        customer: Option<Vec<(crate::symbols::Sym, crate::shop::Fulfilment)>>,
    },
    /// It is finished and old: it leaves memory for the archive.
    Evict,
}

/// The channel of orders taken in by intake.
const INTAKE_CHANNEL: &str = "cpee";

/// The longest order number a client may choose.
const MAX_NUMBER_BYTES: usize = 64;

static NUMBER_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Broker {
    /// Creates a shop order with a fresh id and number, status "New".
    pub fn create_order(&self, new: NewOrder) -> Result<Event, BrokerError> {
        if new.items.is_empty() {
            return Err(BrokerError::Invalid("items must not be empty".into()));
        }
        for (field, text) in [
            ("notes", Some(&new.notes)),
            ("table_number", new.table_number.as_ref()),
            ("channel", Some(&new.channel)),
        ] {
            if text.is_some_and(|t| t.len() > 1000) {
                return Err(BrokerError::TextTooLong { field, limit: 1000 });
            }
        }
        if let Some(cid) = new.customer_id
            && self.customer(cid).is_none()
        {
            return Err(BrokerError::CustomerNotFound(cid.0));
        }
        if let Some(number) = &new.number
            && (number.is_empty()
                || number.len() > MAX_NUMBER_BYTES
                || !number.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(BrokerError::Invalid(format!(
                "number must be 1 to {MAX_NUMBER_BYTES} visible ASCII characters"
            )));
        }
        let items = self.price_items(&new.items)?;
        if new.check_stock {
            self.check_stock(&items)?;
        }
        let now = Millis::now();
        let delivery = new
            .delivery
            .as_ref()
            .map(|d| {
                self.inner
                    .fees
                    .delivery(d.distance_km, d.zone.as_deref(), now)
            })
            .transpose()
            .map_err(BrokerError::Invalid)?;
        let totals = self.totals(&items, delivery.as_ref())?;
        let word = match new.scheduled_for {
            Some(_) => Fulfilment::Scheduled.word(),
            None => Lifecycle::New.text(),
        };
        let status = self.inner.symbols.reserve(word);
        let shop = ShopOrder {
            // Empty: the broker makes one (see `number_for`).
            number: new.number.unwrap_or_default(),
            customer_id: new.customer_id,
            items,
            notes: new.notes,
            table_number: new.table_number,
            channel: new.channel,
            payment_status: PaymentStatus::Unpaid,
            payment_method: None,
            totals,
            processed: None,
            delivery_location: None,
            feedback: None,
            return_request: None,
            history: vec![HistoryEntry {
                status: word.into(),
                at: now,
                reason: None,
            }],
            scheduled_for: new.scheduled_for,
            delivery,
            ledger: Default::default(),
            details: Vec::new(),
        };
        if new.take_stock {
            return self.place_taking_stock(status, shop);
        }
        self.insert_new(status, shop)
    }

    /// Orders taken in by intake or released from a schedule that are still
    /// new and have no orderbot, in arrival order: the dispatch queue,
    /// rebuilt after a restart.
    pub fn undispatched_intake(&self) -> Vec<OrderId> {
        self.stage_orders(Stage::New)
            .into_iter()
            .filter(|(_, o)| {
                o.orderbot_id.is_none()
                    && o.shop
                        .as_ref()
                        .is_some_and(|s| s.channel == INTAKE_CHANNEL || s.scheduled_for.is_some())
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// Hands an order in the dispatch queue to `orderbot`, only while it is
    /// still new and nobody has it: the one check, under the order's lock,
    /// so an order served or cancelled meanwhile is never handed out.
    /// `Conflict` or `OrderNotFound`: it is not (or no longer) to be
    /// dispatched; any other error says nothing of the order.
    pub fn claim_for(&self, id: OrderId, orderbot: &str) -> Result<Event, BrokerError> {
        self.check_len("orderbot_id", orderbot)?;
        let _pin = self.pin();
        let bot = self.inner.symbols.intern(orderbot)?;
        self.apply(id, super::Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            if current.stage != Stage::New || current.orderbot_id.is_some() {
                return Err(BrokerError::Conflict("not waiting for an orderbot".into()));
            }
            Ok(Order {
                orderbot_id: Some(bot),
                ..current.clone()
            })
        })
    }

    /// Undoes `claim_for` when the order was not delivered to `orderbot`:
    /// it has no orderbot again, if it is still new and still theirs.
    /// Whether it may go back in the queue.
    pub fn unclaim(&self, id: OrderId, orderbot: &str) -> bool {
        let _pin = self.pin();
        let Some(bot) = self.inner.symbols.lookup(orderbot) else {
            return false;
        };
        self.apply(id, super::Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            if current.stage != Stage::New || current.orderbot_id != Some(bot) {
                return Err(BrokerError::Conflict("no longer this orderbot's".into()));
            }
            Ok(Order {
                orderbot_id: None,
                ..current.clone()
            })
        })
        .is_ok()
    }

    /// Whether the order is still waiting to be dispatched.
    pub fn dispatchable(&self, id: OrderId) -> bool {
        self.get(id)
            .is_some_and(|o| o.stage == Stage::New && o.orderbot_id.is_none())
    }

    /// The stage a status word puts an order in (in progress unless it is
    /// a configured or lifecycle word).
    pub fn stage_of_word(&self, word: &str) -> Stage {
        let _pin = self.pin();
        self.inner
            .symbols
            .lookup(word)
            .map_or(Stage::InProgress, |sym| self.stage_of(sym))
    }

    /// Takes an order from a process engine's intake call: a fresh id and
    /// number, `status`, and the call's fields as free-form details.
    pub fn intake(
        &self,
        status: &str,
        details: Vec<(String, String)>,
    ) -> Result<Event, BrokerError> {
        self.check_len("status", status)?;
        for (k, v) in &details {
            if k.len() + v.len() > 4096 {
                return Err(BrokerError::TextTooLong {
                    field: "details",
                    limit: 4096,
                });
            }
        }
        let _pin = self.pin();
        let status_sym = self.inner.symbols.intern(status)?;
        let now = Millis::now();
        let shop = ShopOrder {
            number: String::new(),
            customer_id: None,
            items: Vec::new(),
            notes: String::new(),
            table_number: None,
            channel: INTAKE_CHANNEL.into(),
            payment_status: PaymentStatus::Unpaid,
            payment_method: None,
            totals: Totals::default(),
            processed: None,
            delivery_location: None,
            feedback: None,
            return_request: None,
            scheduled_for: None,
            delivery: None,
            history: vec![HistoryEntry {
                status: status.to_string(),
                at: now,
                reason: None,
            }],
            ledger: Default::default(),
            details,
        };
        self.insert_new(status_sym, shop)
    }

    /// Inserts a new shop order under the next free id.
    fn insert_new(
        &self,
        status: crate::symbols::Sym,
        shop: ShopOrder,
    ) -> Result<Event, BrokerError> {
        loop {
            let id = crate::catalog::assign_id(&self.inner.next_order_id)
                .map(OrderId)
                .ok_or(BrokerError::IdsExhausted("order"))?;
            let result = self.apply(id, super::Mode::Create, None, |_| {
                let mut shop = shop.clone();
                shop.number = self.number_for(id, &shop.number)?;
                if let Some(cid) = shop.customer_id {
                    self.inner.by_customer.entry(cid).or_default().insert(id);
                }
                Ok(Order::new(status, None, Some(Arc::new(shop))))
            });
            match result {
                // A seed client used this id meanwhile: take the next.
                Err(BrokerError::IdTaken(_)) => continue,
                other => return other,
            }
        }
    }

    /// Registers `chosen` to `id` (409 when another order has it), or,
    /// when it is empty, a fresh number.
    pub(super) fn number_for(&self, id: OrderId, chosen: &str) -> Result<String, BrokerError> {
        if chosen.is_empty() {
            return Ok(self.claim_number(id));
        }
        match self.inner.numbers.entry(chosen.to_string()) {
            Entry::Vacant(v) => {
                v.insert(id);
                Ok(chosen.to_string())
            }
            Entry::Occupied(_) => Err(BrokerError::Conflict(format!(
                "order number {chosen} is taken by another order"
            ))),
        }
    }

    /// A fresh unique order number, registered to `id`.
    fn claim_number(&self, id: OrderId) -> String {
        loop {
            let n = NUMBER_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut bits = self.inner.number_seed.hash_one(n);
            let number: String = (0..8)
                .map(|_| {
                    let c = NUMBER_ALPHABET[(bits & 31) as usize] as char;
                    bits >>= 5;
                    c
                })
                .collect();
            if let dashmap::mapref::entry::Entry::Vacant(v) =
                self.inner.numbers.entry(number.clone())
            {
                v.insert(id);
                return number;
            }
        }
    }

    /// Checks the items and captures each product's name and price.
    pub(super) fn price_items(&self, items: &[NewItem]) -> Result<Vec<Item>, BrokerError> {
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                if item.quantity == 0 {
                    return Err(BrokerError::InvalidItem {
                        index,
                        reason: "quantity must be a positive integer".into(),
                    });
                }
                self.check_quantity(&format!("items[{index}].quantity"), item.quantity, 1)?;
                let product =
                    self.product(item.product_id)
                        .ok_or_else(|| BrokerError::InvalidItem {
                            index,
                            reason: format!("product {} not found", item.product_id.0),
                        })?;
                Ok(Item {
                    product_id: product.id,
                    name: product.name,
                    quantity: item.quantity,
                    unit_price: product.price,
                })
            })
            .collect()
    }

    /// Refuses items that ask for more than is in stock right now.
    fn check_stock(&self, items: &[Item]) -> Result<(), BrokerError> {
        let stock: HashMap<ProductId, u64> = items
            .iter()
            .filter_map(|i| self.product(i.product_id).map(|p| (p.id, p.stock)))
            .collect();
        allocate(items, &stock, Strategy::Reject)
            .map(|_| ())
            .map_err(BrokerError::OutOfStock)
    }

    /// The items' totals, with the delivery's fee when there is one; the
    /// total and the grand total at most `limits.max_amount`.
    pub(super) fn totals(
        &self,
        items: &[Item],
        delivery: Option<&Delivery>,
    ) -> Result<Totals, BrokerError> {
        let max = self.inner.max_amount;
        let too_large = |field: &str| BrokerError::OutOfRange {
            field: field.into(),
            allowed: format!("at most {max}, limits.max_amount"),
        };
        Totals::items_total(items)
            .filter(|t| *t <= max)
            .ok_or_else(|| too_large("total"))?;
        let totals = Totals::of(items, self.inner.tax_rate, self.inner.service_charge_rate)
            .ok_or_else(|| too_large("grand_total"))?;
        let fee = match delivery {
            Some(d) => self
                .inner
                .fees
                .fee(d, totals.total)
                .ok_or_else(|| too_large("delivery_fee"))?,
            None => crate::money::Money::ZERO,
        };
        totals
            .with_fee(fee)
            .filter(|t| t.grand_total <= max)
            .ok_or_else(|| too_large("grand_total"))
    }

    pub fn order_by_number(&self, number: &str) -> Option<(OrderId, Order)> {
        let id = *self.inner.numbers.get(number)?;
        self.get(id).map(|o| (id, o))
    }

    /// A customer's orders, in arrival order.
    pub fn customer_orders(&self, customer: CustomerId) -> Vec<(OrderId, Order)> {
        let ids: Vec<OrderId> = self
            .inner
            .by_customer
            .get(&customer)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        let mut orders: Vec<(OrderId, Order)> = ids
            .into_iter()
            .filter_map(|id| self.get(id).map(|o| (id, o)))
            .collect();
        orders.sort_unstable_by_key(|(id, order)| Arrival::of(*id, order));
        orders
    }

    /// One page of orders matching `filter`, in arrival order, and the
    /// cursor for the next page (None when this page is the last).
    /// The caller holds a pin (it resolves the orders).
    pub fn list_orders(&self, filter: &OrderFilter) -> (Vec<(OrderId, Order)>, Option<Arrival>) {
        let limit = filter.limit.max(1);
        let status = match &filter.status {
            Some(text) => match self.inner.symbols.lookup(text) {
                Some(sym) => Some(sym),
                None => return (Vec::new(), None), // no order ever had it
            },
            None => None,
        };
        let stages: Vec<Stage> = filter.stage.map_or(Stage::ALL.to_vec(), |s| vec![s]);
        let matches = |order: &Order| {
            let created = order.created.get();
            status.is_none_or(|s| s == order.status)
                && stages.contains(&order.stage)
                && filter.created_from.is_none_or(|from| created >= from)
                && filter.created_to.is_none_or(|to| created < to)
        };
        if let Some(customer) = filter.customer_id {
            // A customer's orders are few: read them all, page in memory.
            let mut page: Vec<(OrderId, Order)> = self
                .customer_orders(customer)
                .into_iter()
                .filter(|(id, order)| {
                    filter.after.is_none_or(|a| Arrival::of(*id, order) > a) && matches(order)
                })
                .take(limit + 1)
                .collect();
            let next = (page.len() > limit).then(|| {
                page.truncate(limit);
                page.last().map(|(id, o)| Arrival::of(*id, o))
            });
            return (page, next.flatten());
        }
        let mut page = Vec::new();
        let mut after = filter.after;
        loop {
            let batch = self.ids_after(&stages, after, limit);
            let Some(&last) = batch.last() else {
                return (page, None);
            };
            for place in batch {
                let Some(order) = self.get(place.id) else {
                    continue;
                };
                // Moved on, or removed and made anew, since the batch.
                if Arrival::of(place.id, &order) != place {
                    continue;
                }
                if matches(&order) {
                    page.push((place.id, order));
                    if page.len() == limit {
                        return (page, Some(place));
                    }
                }
            }
            after = Some(last);
        }
    }

    /// Sets the status of an existing order, as far as the table of moves
    /// allows (a cancelled shop order is final).
    pub fn set_status(
        &self,
        id: OrderId,
        status: &str,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        self.check_len("status", status)?;
        let _pin = self.pin();
        let sym = self.inner.symbols.intern(status)?;
        self.apply(id, super::Mode::Update, expected, |current| {
            // Which moves a shop order may make is `apply`'s (one table).
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            Ok(Order {
                status: sym,
                shop: current
                    .shop
                    .as_ref()
                    .map(|s| Arc::new(s.with_entry(status, None))),
                ..current.clone()
            })
        })
    }

    /// Replaces the items of a shop order that is neither processed nor confirmed.
    pub fn replace_items(
        &self,
        id: OrderId,
        items: &[NewItem],
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        if items.is_empty() {
            return Err(BrokerError::Invalid("items must not be empty".into()));
        }
        let priced = self.price_items(items)?;
        self.apply(id, super::Mode::Update, expected, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            let shop = current
                .shop
                .as_ref()
                .ok_or_else(|| BrokerError::Conflict("order has no items to replace".into()))?;
            if shop.processed.is_some() || current.stage != Stage::New {
                return Err(BrokerError::Conflict(
                    "items can only change before the order is processed or confirmed".into(),
                ));
            }
            if !shop.ledger.units_out().is_empty() {
                return Err(BrokerError::Conflict(
                    "the order's stock was taken when it was placed, so its items stay; \
                     cancel it (the stock goes back) and place a new one"
                        .into(),
                ));
            }
            let shop = ShopOrder {
                totals: self.totals(&priced, shop.delivery.as_ref())?,
                items: priced,
                ..(**shop).clone()
            };
            Ok(Order {
                shop: Some(Arc::new(shop)),
                ..current.clone()
            })
        })
    }

    /// Deletes an order unless it has been processed.
    /// Deletes an order that was never processed; `customer`: the caller
    /// is its customer, who may delete it only while they may still cancel
    /// it (before preparation: the one rule, `customer_may_cancel`).
    pub fn delete_order(
        &self,
        id: OrderId,
        expected: Option<Version>,
        customer: bool,
    ) -> Result<Order, BrokerError> {
        // Symbols before the order's lock.
        let customer = customer.then(|| self.flow_words());
        self.remove_order(id, Removal::Delete { expected, customer })
    }

    /// Takes an order out of the map and its indexes, committing its
    /// removal while it is locked.
    pub(super) fn remove_order(&self, id: OrderId, how: Removal) -> Result<Order, BrokerError> {
        let Entry::Occupied(entry) = self.locked(|| self.inner.orders.entry(id)) else {
            return Err(BrokerError::OrderNotFound);
        };
        let order = entry.get();
        match &how {
            Removal::Delete { expected, customer } => {
                check_version(order, *expected)?;
                if let Some(flow) = customer {
                    // Before preparation, as for a cancel; or once cancelled.
                    let state = super::fulfilment::flow_state(flow, order);
                    if !super::fulfilment::customer_may_cancel(state)
                        && order.stage != Stage::Cancelled
                    {
                        return Err(BrokerError::Conflict(
                            super::fulfilment::too_late_for_a_customer(state),
                        ));
                    }
                }
                if order.shop.as_ref().is_some_and(|s| s.processed.is_some()) {
                    return Err(BrokerError::Conflict(
                        "order is processed and cannot be deleted".into(),
                    ));
                }
            }
            Removal::Evict if !order.stage.is_finished() => {
                return Err(BrokerError::Conflict("order is not finished".into()));
            }
            Removal::Evict => {}
        }
        let stage = order.stage;
        // Stock taken at placement goes back with a deleted order; a
        // finished order keeps what it took (sold, or given back already).
        let held = match (&how, &order.shop) {
            (Removal::Delete { .. }, Some(shop)) => shop.ledger.units_out(),
            _ => Default::default(),
        };
        let event = if held.is_empty() {
            let evicted = (how == Removal::Evict).then(|| order.clone());
            self.sequencer().commit(Change::OrderRemoved {
                id,
                from: stage,
                created: order.created.get(),
                evicted,
            })
        } else {
            self.commit_removal_restocking(id, order, &held)?
        };
        if let Some(shop) = &order.shop {
            self.inner.numbers.remove(&shop.number);
            if let Some(cid) = shop.customer_id
                && let Some(mut ids) = self.inner.by_customer.get_mut(&cid)
            {
                ids.remove(&id);
            }
        }
        let order = entry.remove();
        self.inner.generations.bump(Some(stage), None);
        self.published(Some(event));
        Ok(order)
    }

    /// A lifecycle transition on the order with this number.
    pub fn transition(
        &self,
        number: &str,
        transition: Transition,
        payment_method: Option<String>,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        self.transition_by(
            number,
            transition,
            payment_method,
            expected,
            super::Canceller::Staff,
        )
    }

    /// A lifecycle transition asked for by `by`: a customer's cancel follows
    /// the same rule as on every other API (only before preparation).
    pub fn transition_by(
        &self,
        number: &str,
        transition: Transition,
        payment_method: Option<String>,
        expected: Option<Version>,
        by: super::Canceller,
    ) -> Result<Event, BrokerError> {
        let flow = self.flow_words();
        let id = *self
            .inner
            .numbers
            .get(number)
            .ok_or(BrokerError::OrderNotFound)?;
        let words = Lifecycle::WORDS.map(|(w, _)| Some(self.inner.symbols.reserve(w)));
        self.apply(id, super::Mode::Update, expected, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            let shop = current.shop.as_ref().ok_or(BrokerError::OrderNotFound)?;
            let state = Lifecycle::of(current.stage);
            let paid = shop.payment_status == PaymentStatus::Paid;
            let refuse = |e| Err(BrokerError::Lifecycle(e));
            let (next_state, pay) = match transition {
                // Only a New order is confirmed; the seed says which state
                // it is in instead, a cancelled one too.
                Transition::Confirm if state != Lifecycle::New => {
                    return refuse(LifecycleError::InvalidStatus(state));
                }
                // Cancelled is final: every other call says so first.
                _ if state == Lifecycle::Cancelled => {
                    return refuse(LifecycleError::AlreadyCanceled);
                }
                Transition::Confirm if state != Lifecycle::New => {
                    return refuse(LifecycleError::InvalidStatus(state));
                }
                Transition::Confirm => (Lifecycle::Confirmed, false),
                Transition::Paid if paid => return refuse(LifecycleError::AlreadyPaid),
                Transition::Paid => (state, true),
                Transition::Complete if state == Lifecycle::Complete => {
                    return refuse(LifecycleError::AlreadyCompleted);
                }
                Transition::Complete => (Lifecycle::Complete, true),
                Transition::Cancel if by == super::Canceller::Customer => {
                    let state = super::fulfilment::flow_state(&flow, current);
                    if !super::fulfilment::customer_may_cancel(state) {
                        return Err(BrokerError::Conflict(
                            super::fulfilment::too_late_for_a_customer(state),
                        ));
                    }
                    (Lifecycle::Cancelled, false)
                }
                Transition::Cancel => (Lifecycle::Cancelled, false),
            };
            let mut next_shop = if next_state == state {
                (**shop).clone()
            } else {
                shop.with_entry(next_state.text(), None)
            };
            if pay {
                next_shop.payment_status = PaymentStatus::Paid;
                if payment_method.is_some() {
                    next_shop.payment_method = payment_method;
                }
            }
            let status = if next_state == state {
                current.status
            } else {
                words[next_state as usize].expect("lifecycle words are interned at start")
            };
            Ok(Order {
                status,
                shop: Some(Arc::new(next_shop)),
                ..current.clone()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::broker::ProcessRefusal;
    use crate::catalog::Customer;
    use crate::config::Config;
    use crate::feed::Change;
    use crate::money::Money;

    fn broker() -> Broker {
        let mut config = Config::default();
        config.events.history_size = 1 << 20;
        Broker::new(&config)
    }

    fn order(broker: &Broker, customer: u64, items: &[(u64, u64)]) -> OrderId {
        let new = NewOrder {
            customer_id: (customer != 0).then_some(CustomerId(customer)),
            items: items
                .iter()
                .map(|&(p, q)| NewItem {
                    product_id: ProductId(p),
                    quantity: q,
                })
                .collect(),
            ..NewOrder::default()
        };
        broker.create_order(new).unwrap().order().unwrap().0
    }

    #[test]
    fn concurrent_processing_never_oversells_and_sums_add_up() {
        const PRODUCTS: u64 = 5;
        const CUSTOMERS: u64 = 12;
        const ORDERS: u64 = 300;
        const THREADS: usize = 8;
        let broker = broker();
        for p in 1..=PRODUCTS {
            broker
                .create_product(Some(p), format!("p{p}"), Money(100 * p as i64 + 5), 60)
                .unwrap();
        }
        for c in 1..=CUSTOMERS {
            broker
                .create_customer(Some(c), format!("c{c}"), None, Money(20_000))
                .unwrap();
        }
        let ids: Vec<OrderId> = (0..ORDERS)
            .map(|n| {
                let a = 1 + n % PRODUCTS;
                let b = 1 + (n * 3 + 1) % PRODUCTS;
                order(
                    &broker,
                    1 + n % CUSTOMERS,
                    &[(a, 1 + n % 4), (b, 1 + n % 3), (a, 1)],
                )
            })
            .collect();
        let strategies = [Strategy::Adjust, Strategy::Reject, Strategy::Ignore];
        // Every thread tries every order, in its own order: each must be
        // processed at most once, whoever wins.
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (broker, ids) = (&broker, &ids);
                s.spawn(move || {
                    for k in 0..ids.len() {
                        let id = ids[(k * 7 + t * 31) % ids.len()];
                        let strategy = strategies[(id.0 % 3) as usize];
                        match broker.process(id, strategy, None) {
                            Ok(_)
                            | Err(BrokerError::ProcessRefused(
                                ProcessRefusal::AlreadyProcessed
                                | ProcessRefusal::Balance
                                | ProcessRefusal::Rejected(_),
                            )) => {}
                            Err(e) => panic!("unexpected refusal: {e}"),
                        }
                    }
                });
            }
        });

        let mut sold: HashMap<ProductId, u64> = HashMap::new();
        let mut spent: HashMap<CustomerId, i64> = HashMap::new();
        let mut processed = 0;
        for id in &ids {
            let order = broker.get(*id).unwrap();
            let shop = order.shop.as_ref().unwrap();
            if shop.processed.is_none() {
                continue;
            }
            processed += 1;
            for item in &shop.items {
                *sold.entry(item.product_id).or_default() += item.quantity;
            }
            *spent.entry(shop.customer_id.unwrap()).or_default() += shop.totals.grand_total.0;
            let priced = Totals::of(&shop.items, Default::default(), Default::default()).unwrap();
            assert_eq!(
                priced, shop.totals,
                "order {id} is priced from its final items"
            );
        }
        assert!(processed > 0);
        for p in 1..=PRODUCTS {
            let product = broker.product(ProductId(p)).unwrap();
            let units = sold.get(&ProductId(p)).copied().unwrap_or(0);
            assert_eq!(
                product.stock + units,
                60,
                "product {p}: no unit sold twice or lost"
            );
        }
        for c in 1..=CUSTOMERS {
            let customer: Customer = broker.customer(CustomerId(c)).unwrap();
            let paid = spent.get(&CustomerId(c)).copied().unwrap_or(0);
            assert_eq!(
                customer.balance.0 + paid,
                20_000,
                "customer {c}: balance adds up"
            );
        }

        // The feed saw every record's versions in order, with no gap in seq.
        let events = crate::broker::gapless_feed(&broker);
        let mut last_version: HashMap<String, u32> = HashMap::new();
        for e in &events {
            let (key, version) = match &e.change {
                Change::Order { id, order, .. } => (format!("o{id}"), order.version.0),
                Change::Product(p) => (format!("p{}", p.id.0), p.version),
                Change::Customer(c) => (format!("c{}", c.id.0), c.version),
                other => panic!("unexpected {other:?}"),
            };
            let last = last_version.insert(key.clone(), version).unwrap_or(0);
            assert_eq!(version, last + 1, "{key} versions step by one in seq order");
        }
    }

    /// Threads race every money path on shared orders — processing with
    /// each strategy, the three ways to cancel, completion and returns
    /// with refunds — and the ledgers must account for every cent and unit.
    #[test]
    fn racing_money_paths_conserve_stock_and_balances() {
        use crate::shop::{ReturnStatus, Units};
        const THREADS: usize = 6;
        const ORDERS: u64 = 120;
        let broker = broker();
        for p in 1..=3 {
            broker
                .create_product(Some(p), format!("p{p}"), Money(111 * p as i64), 500)
                .unwrap();
        }
        for c in 1..=4 {
            broker
                .create_customer(Some(c), format!("c{c}"), None, Money(1_000_000))
                .unwrap();
        }
        let ids: Vec<OrderId> = (0..ORDERS)
            .map(|n| {
                order(
                    &broker,
                    1 + n % 4,
                    &[(1 + n % 3, 1 + n % 5), (1 + (n + 1) % 3, 2)],
                )
            })
            .collect();
        let numbers: Vec<String> = ids
            .iter()
            .map(|id| broker.get(*id).unwrap().shop.unwrap().number.clone())
            .collect();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (broker, ids, numbers) = (&broker, &ids, &numbers);
                s.spawn(move || {
                    for k in 0..ids.len() * 5 {
                        let i = (k * 7 + t * 13) % ids.len();
                        let (id, number) = (ids[i], numbers[i].as_str());
                        let strategies = [Strategy::Adjust, Strategy::Reject, Strategy::Ignore];
                        // Refusals are expected; only the sums matter here.
                        // Phases, so some orders live long enough to be
                        // refunded: charge and complete, then return, then
                        // anything; cancels race throughout.
                        let op = match (k / ids.len(), (k + t) % 12) {
                            (_, 11) => 2,
                            (_, 10) => 3,
                            (_, 9) => 4,
                            (0, n) if n % 2 == 0 => 0,
                            (0, _) => 5,
                            (phase @ 1..=3, _) => 5 + phase,
                            (_, n) => n % 9,
                        };
                        let _ = match op {
                            0 | 1 => broker.process(id, strategies[k % 3], None),
                            2 => broker.transition(number, Transition::Cancel, None, None),
                            3 => broker.cancel_order(
                                id,
                                "race",
                                super::super::Canceller::Staff,
                                None,
                            ),
                            4 => broker.update_status(id, "Order Cancelled", None),
                            5 => broker.transition(number, Transition::Complete, None, None),
                            6 => broker.request_return(
                                id,
                                &[NewItem {
                                    product_id: ProductId(1 + i as u64 % 3),
                                    quantity: 1,
                                }],
                                "race",
                            ),
                            7 => broker
                                .advance_return(id, ReturnStatus::Approved)
                                .and_then(|_| broker.advance_return(id, ReturnStatus::Received)),
                            _ => broker.advance_return(id, ReturnStatus::Refunded),
                        };
                    }
                });
            }
        });
        let mut out: Units = Units::new();
        let mut spent: HashMap<CustomerId, i64> = HashMap::new();
        for id in &ids {
            let shop = broker.get(*id).unwrap().shop.unwrap();
            let l = &shop.ledger;
            assert!(
                l.given_back.0 + l.refunded.0 <= l.charged.0,
                "order {id}: {l:?}"
            );
            if l.given_back.0 > 0 {
                assert_eq!(
                    l.refunded,
                    Money::ZERO,
                    "order {id}: refunded and given back"
                );
            }
            for (p, n) in l.units_out() {
                *out.entry(p).or_default() += n;
            }
            *spent.entry(shop.customer_id.unwrap()).or_default() += l.outstanding().0;
        }
        let ledgers: Vec<_> = ids
            .iter()
            .map(|id| broker.get(*id).unwrap().shop.unwrap().ledger.clone())
            .collect();
        assert!(
            ledgers.iter().any(|l| l.given_back > Money::ZERO),
            "some gave back"
        );
        assert!(
            ledgers.iter().any(|l| l.refunded > Money::ZERO),
            "some refunded"
        );
        assert!(
            ledgers.iter().any(|l| l.outstanding() > Money::ZERO),
            "some kept"
        );
        for p in 1..=3 {
            let stock = broker.product(ProductId(p)).unwrap().stock;
            assert_eq!(
                stock + out.get(&ProductId(p)).copied().unwrap_or(0),
                500,
                "product {p}"
            );
        }
        for c in 1..=4 {
            let balance = broker.customer(CustomerId(c)).unwrap().balance.0;
            assert_eq!(
                balance + spent.get(&CustomerId(c)).copied().unwrap_or(0),
                1_000_000,
                "customer {c}"
            );
        }
    }

    #[test]
    fn processing_rules_and_refusals() {
        let broker = broker();
        broker
            .create_product(Some(1), "tea".into(), Money(250), 3)
            .unwrap();
        broker
            .create_product(Some(2), "cake".into(), Money(400), 10)
            .unwrap();
        broker
            .create_customer(Some(1), "Ann".into(), None, Money(1_000))
            .unwrap();
        broker
            .create_customer(Some(2), "Bob".into(), None, Money(0))
            .unwrap();

        // reject: nothing changes, the reason names the short item.
        let id = order(&broker, 1, &[(1, 5), (2, 1)]);
        let err = broker.process(id, Strategy::Reject, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "order rejected, insufficient stock for product 1 (requested 5, in stock 3)"
        );
        assert_eq!(broker.product(ProductId(1)).unwrap().stock, 3);
        assert_eq!(
            broker.customer(CustomerId(1)).unwrap().balance,
            Money(1_000)
        );

        // adjust: lowered to what is in stock, charged for what is sold.
        broker.process(id, Strategy::Adjust, None).unwrap();
        let shop = broker.get(id).unwrap().shop.unwrap();
        assert_eq!(
            shop.items.iter().map(|i| i.quantity).collect::<Vec<_>>(),
            [3, 1]
        );
        assert_eq!(shop.totals.grand_total, Money(3 * 250 + 400));
        assert!(shop.processed.is_some());
        assert_eq!(broker.product(ProductId(1)).unwrap().stock, 0);
        assert_eq!(
            broker.customer(CustomerId(1)).unwrap().balance,
            Money(1_000 - 1_150)
        );

        // never twice; balance must be above zero.
        let again = broker.process(id, Strategy::Adjust, None).unwrap_err();
        assert_eq!(
            again,
            BrokerError::ProcessRefused(ProcessRefusal::AlreadyProcessed)
        );
        let broke = order(&broker, 2, &[(2, 1)]);
        let err = broker.process(broke, Strategy::Adjust, None).unwrap_err();
        assert_eq!(err, BrokerError::ProcessRefused(ProcessRefusal::Balance));
        // Ann's balance is now negative too.
        let second = order(&broker, 1, &[(2, 1)]);
        assert_eq!(
            broker.process(second, Strategy::Adjust, None).unwrap_err(),
            BrokerError::ProcessRefused(ProcessRefusal::Balance)
        );

        // ignore: a short item drops to 0.
        broker
            .update_customer(
                CustomerId(2),
                crate::broker::CustomerFields {
                    balance: Some(Money(5_000)),
                    ..Default::default()
                },
            )
            .unwrap();
        let id = order(&broker, 2, &[(1, 2), (2, 2)]);
        broker.process(id, Strategy::Ignore, None).unwrap();
        let shop = broker.get(id).unwrap().shop.unwrap();
        assert_eq!(
            shop.items.iter().map(|i| i.quantity).collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(
            broker.customer(CustomerId(2)).unwrap().balance,
            Money(5_000 - 800)
        );

        // A processed order cannot be deleted; an unprocessed one can.
        assert!(matches!(
            broker.delete_order(id, None, false),
            Err(BrokerError::Conflict(_))
        ));
        let fresh = order(&broker, 2, &[(2, 1)]);
        let number = broker.get(fresh).unwrap().shop.unwrap().number.clone();
        broker.delete_order(fresh, None, false).unwrap();
        assert!(broker.get(fresh).is_none());
        assert!(broker.order_by_number(&number).is_none());
        assert!(
            broker
                .customer_orders(CustomerId(2))
                .iter()
                .all(|(id, _)| *id != fresh)
        );
    }

    #[test]
    fn lifecycle_follows_the_order_status_api() {
        let broker = broker();
        broker
            .create_product(Some(1), "tea".into(), Money(250), 3)
            .unwrap();
        let id = order(&broker, 0, &[(1, 1)]);
        let number = broker.get(id).unwrap().shop.unwrap().number.clone();
        assert_eq!(number.len(), 8);
        let stage = |b: &Broker| b.get(id).unwrap().stage;
        let err = |t| broker.transition(&number, t, None, None).unwrap_err();

        assert_eq!(stage(&broker), Stage::New);
        broker
            .transition(&number, Transition::Confirm, None, None)
            .unwrap();
        assert_eq!(stage(&broker), Stage::InProgress);
        assert_eq!(
            err(Transition::Confirm),
            BrokerError::Lifecycle(LifecycleError::InvalidStatus(Lifecycle::Confirmed))
        );
        broker
            .transition(&number, Transition::Paid, Some("card".into()), None)
            .unwrap();
        assert_eq!(
            err(Transition::Paid),
            BrokerError::Lifecycle(LifecycleError::AlreadyPaid)
        );
        broker
            .transition(&number, Transition::Complete, None, None)
            .unwrap();
        assert_eq!(stage(&broker), Stage::Completed);
        assert_eq!(
            err(Transition::Complete),
            BrokerError::Lifecycle(LifecycleError::AlreadyCompleted)
        );
        broker
            .transition(&number, Transition::Cancel, None, None)
            .unwrap();
        assert_eq!(stage(&broker), Stage::Cancelled);
        for t in [
            Transition::Confirm,
            Transition::Paid,
            Transition::Complete,
            Transition::Cancel,
        ] {
            let e = err(t);
            assert!(
                matches!(
                    e,
                    BrokerError::Lifecycle(
                        LifecycleError::AlreadyCanceled | LifecycleError::InvalidStatus(_)
                    )
                ),
                "{t:?}: {e:?}"
            );
        }
        assert!(matches!(
            broker.set_status(id, "Mixing", None),
            Err(BrokerError::Conflict(_))
        ));
        let shop = broker.get(id).unwrap().shop.unwrap();
        let history: Vec<&str> = shop.history.iter().map(|h| h.status.as_str()).collect();
        assert_eq!(history, ["New", "Confirmed", "Complete", "Cancelled"]);
        assert_eq!(shop.payment_method.as_deref(), Some("card"));
        assert_eq!(
            broker.transition("NOPE", Transition::Confirm, None, None),
            Err(BrokerError::OrderNotFound)
        );
    }
}
