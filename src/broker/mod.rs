//! The broker: every order's live state, the stage views derived from it,
//! the catalog and customers, and the change feed. One cheap-to-clone handle
//! shared by every connection.
//!
//! Locks, in the only order they are ever taken (so there is no deadlock):
//! 1. the order's `DashMap` shard (write) — serialises writers of one order;
//! 2. product locks, by ascending id; then the customer's lock;
//! 3. the `sequencer` mutex — gives each change its `seq`, moves an order
//!    between the stage indexes and appends to the history, in one step, so
//!    the indexes and the history always agree with `seq` order.
//!
//! A record stays locked until its event is committed, so each record's
//! events appear in version order. All are held for microseconds at most and
//! never across `.await`. Subscribers are woken after every lock is released.
//!
//! Write paths: `update_status` (the seed API) here; orders with items,
//! processing and the lifecycle in `shop.rs`; products and customers in
//! `catalog.rs`. Every change of one order but processing goes through
//! `apply`, which holds a shop order to the one table of moves and settles
//! its ledger (`settle`): a cancellation from any API gives back what the
//! ledger has outstanding, in the same step. Processing charges the ledger
//! on its own path, because it must read stock under the product locks.

mod bulk;
mod callbacks;
mod catalog;
mod evict;
mod fulfilment;
mod persist;
mod process;
mod reclaim;
mod replica;
mod returns;
mod schedule;
mod shop;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::catalog::{Customer, CustomerId, Product, Table};
use crate::config::Config;
use crate::feed::{Change, Event, History, Lagged, Notifier};
use crate::model::{Arrival, Millis, Order, OrderId, OrderView, Seq, Stage, Stamp, Version};
use crate::money::{Money, Rate};
use crate::shop::{Lifecycle, Shortage};
use crate::symbols::{Pin, Sym, Symbols, SymbolsFull, SymbolsReader};

pub use bulk::{BulkAction, BulkResult, ErrorPolicy};
pub use catalog::{CustomerFields, ProductFields};
pub use fulfilment::Canceller;
pub use shop::{NewDelivery, NewItem, NewOrder, OrderFilter, Transition};

/// Why the broker refused a change. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// A text field is longer than `limits.max_text_bytes`.
    TextTooLong {
        field: &'static str,
        limit: usize,
    },
    /// The text is new and the symbol table is full (`limits.max_symbols`).
    TooManySymbols {
        limit: usize,
    },
    /// The record has changed `u32::MAX` times.
    VersionExhausted,
    OrderNotFound,
    TemplateNotFound,
    ProductNotFound(u64),
    CustomerNotFound(u64),
    /// An id chosen by the client is taken.
    IdTaken(u64),
    /// No id is left to assign to a new record of this kind (409): one
    /// with id `u64::MAX` (or `u64::MAX - 1`) exists. Ids never wrap.
    IdsExhausted(&'static str),
    /// A quantity or amount is past its bound (422). `field` names it as
    /// the request does (`items[0].quantity`, `price`, `grand_total`);
    /// `allowed` says what is, and which config key sets it.
    OutOfRange {
        field: String,
        allowed: String,
    },
    /// The request is valid but the record's state forbids it (409).
    Conflict(String),
    /// An item of an order is invalid; `index` counts from 0 (422).
    InvalidItem {
        index: usize,
        reason: String,
    },
    /// A value is out of range, e.g. a sum that overflows (422).
    Invalid(String),
    /// The order asked for a stock check and these items are short (400).
    OutOfStock(Vec<Shortage>),
    /// Processing was refused; nothing changed (400).
    ProcessRefused(ProcessRefusal),
    /// A lifecycle transition is not allowed from the order's state (400).
    Lifecycle(LifecycleError),
    /// `If-Match` named another version than the current one (412).
    VersionMismatch {
        current: Version,
    },
    /// The caller is a delivery partner the order is not assigned to (403).
    NotAssigned,
}

/// Why processing an order was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessRefusal {
    AlreadyProcessed,
    /// The customer's balance is not above zero.
    Balance,
    NoCustomer,
    Cancelled,
    /// `reject` found items short.
    Rejected(Vec<Shortage>),
}

/// A refused lifecycle transition, with the Order Status API's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleError {
    /// Confirm from a state other than New.
    InvalidStatus(Lifecycle),
    AlreadyPaid,
    AlreadyCompleted,
    AlreadyCanceled,
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::TextTooLong { field, limit } => {
                write!(f, "{field} is longer than {limit} bytes")
            }
            BrokerError::TooManySymbols { limit } => write!(
                f,
                "too many distinct status words and orderbot ids in use (limit {limit}); \
                 words no order uses any more are reclaimed within seconds, so retry \
                 then, reuse an existing one, or raise limits.max_symbols"
            ),
            BrokerError::VersionExhausted => f.write_str("this record cannot change any more"),
            BrokerError::OrderNotFound => f.write_str("Order not found"),
            BrokerError::TemplateNotFound => f.write_str("Template not found"),
            BrokerError::ProductNotFound(id) => write!(f, "product {id} not found"),
            BrokerError::CustomerNotFound(id) => write!(f, "customer {id} not found"),
            BrokerError::IdTaken(id) => write!(f, "id {id} is taken"),
            BrokerError::IdsExhausted(kind) => write!(
                f,
                "{kind} ids are exhausted: a {kind} has the highest id the broker \
                 can assign, so it cannot assign a new one"
            ),
            BrokerError::OutOfRange { field, allowed } => {
                write!(f, "{field} is out of range (allowed: {allowed})")
            }
            BrokerError::Conflict(why) | BrokerError::Invalid(why) => f.write_str(why),
            BrokerError::InvalidItem { index, reason } => write!(f, "items[{index}]: {reason}"),
            BrokerError::OutOfStock(short) => {
                write!(f, "insufficient stock for {}", list(short))
            }
            BrokerError::ProcessRefused(why) => match why {
                ProcessRefusal::AlreadyProcessed => f.write_str("order already processed"),
                ProcessRefusal::Balance => f.write_str("customer balance must be above zero"),
                ProcessRefusal::NoCustomer => f.write_str("order has no customer to charge"),
                ProcessRefusal::Cancelled => f.write_str("order is cancelled"),
                ProcessRefusal::Rejected(short) => {
                    write!(f, "order rejected, insufficient stock for {}", list(short))
                }
            },
            BrokerError::Lifecycle(e) => f.write_str(match e {
                LifecycleError::InvalidStatus(_) => {
                    "order cannot be confirmed in its current status"
                }
                LifecycleError::AlreadyPaid => "order is already paid",
                LifecycleError::AlreadyCompleted => "order is already completed",
                LifecycleError::AlreadyCanceled => "order is already canceled",
            }),
            BrokerError::VersionMismatch { current } => {
                write!(f, "version mismatch: the order is at version {}", current.0)
            }
            BrokerError::NotAssigned => f.write_str("the order is not assigned to you"),
        }
    }
}

fn list(short: &[Shortage]) -> String {
    short
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::error::Error for BrokerError {}

impl From<SymbolsFull> for BrokerError {
    fn from(e: SymbolsFull) -> Self {
        BrokerError::TooManySymbols { limit: e.limit }
    }
}

/// Shards of the order map (a power of two).
const ORDER_SHARDS: usize = 64;

/// Whether `apply` may create the order, change it, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only a new order: an existing id is `IdTaken`.
    Create,
    /// Only an existing order: a missing id is `OrderNotFound`.
    Update,
    Upsert,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every order. A shard's write lock is held only while one order changes.
    /// foldhash: several times cheaper than SipHash, and seeded at random per
    /// map, so client-chosen ids cannot be aimed at one bucket.
    orders: DashMap<OrderId, Order, foldhash::fast::RandomState>,
    /// Sequence counter, stage indexes and history; see the module docs.
    sequencer: Mutex<Sequencer>,
    /// Wakes feed subscribers with the newest `seq`; written after the locks drop.
    notifier: Notifier,
    /// Change counters for cached renderings of the views; see [`Generations`].
    generations: Generations,
    /// Interned status words and orderbot ids (its own lock).
    symbols: Symbols,
    /// Stage of each configured and lifecycle status word; any other word is
    /// in progress. Read-only after start.
    stage_words: HashMap<Sym, Stage, foldhash::fast::RandomState>,
    /// Products and customers, each record behind its own lock.
    products: Table<Product>,
    customers: Table<Customer>,
    /// Customers' saved orders.
    templates: Table<crate::catalog::Template>,
    /// Callbacks owed to CPEE (`callbacks.rs`).
    callbacks: callbacks::Callbacks,
    /// Shop order numbers → ids. Written while the order's shard is locked.
    numbers: DashMap<String, OrderId>,
    /// Each customer's orders. Written while the order's shard is locked.
    by_customer: DashMap<CustomerId, BTreeSet<OrderId>>,
    /// Above every order id ever used, for ids the broker assigns.
    next_order_id: AtomicU64,
    /// Keys the order-number generator; random per boot.
    number_seed: RandomState,
    tax_rate: Rate,
    service_charge_rate: Rate,
    history_size: usize,
    /// `[delivery]` fee rules.
    fees: crate::shop::FeeRules,
    /// `[returns]`: the window in ms, and whether refunds restock.
    return_window_ms: u64,
    restock_returns: bool,
    /// Serialises bulk changes; writers blocked by one wait on it.
    bulk: Mutex<()>,
    /// Set while a bulk change runs: order writers other than the bulk's
    /// own let go of their order and wait (see [`Broker::locked`]).
    bulk_active: std::sync::atomic::AtomicBool,
    /// The journal, once recovery attached it (`persistence.mode = "journal"`).
    journal: std::sync::OnceLock<Arc<crate::journal::Journal>>,
    /// Random per boot, so a client can tell a restart from a gap in `seq`
    /// (in a cluster: the stream's, see `replica.rs`).
    epoch: AtomicU64,
    /// The cluster this node is part of, once it joined (`cluster.nats_urls`).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    max_text_bytes: usize,
    /// `limits.max_quantity` and `limits.max_amount`: what a request may set.
    max_quantity: u64,
    max_amount: Money,
}

struct Sequencer {
    last: Seq,
    /// Orders by stage, in arrival order: the views. Kept in step with
    /// `orders` on every change.
    stages: [BTreeSet<Arrival>; Stage::COUNT],
    history: History,
    /// The journal writer, once recovery is done (`persistence.mode = "journal"`).
    /// Sent to under this lock, so it gets events in `seq` order.
    journal: Option<crate::journal::Queue>,
    /// While an atomic change commits (see [`Sequencer::group`]): its events
    /// so far, sent to the journal as one group when it ends.
    group: Option<Vec<Event>>,
    /// While a symbol sweep marks (see `broker/reclaim.rs`): the words of
    /// every order state committed meanwhile.
    marking: Option<Vec<(Sym, Option<Sym>)>>,
}

impl Sequencer {
    /// Gives `change` the next seq, moves an order between the stage
    /// indexes, and appends the event to the history.
    fn commit(&mut self, change: Change) -> Event {
        match &change {
            Change::Order {
                id, order, from, ..
            } => {
                // `created` never changes, so the place is the same in both.
                let place = Arrival::of(*id, order);
                if let Some(from) = from.filter(|f| *f != order.stage) {
                    self.stages[from.index()].remove(&place);
                }
                self.stages[order.stage.index()].insert(place);
            }
            Change::OrderRemoved {
                id, from, created, ..
            } => {
                self.stages[from.index()].remove(&Arrival {
                    created: *created,
                    id: *id,
                });
            }
            _ => {}
        }
        if let Some(marking) = &mut self.marking {
            match &change {
                Change::Order { order, .. }
                | Change::OrderRemoved {
                    evicted: Some(order),
                    ..
                } => marking.push((order.status, order.orderbot_id)),
                _ => {}
            }
        }
        self.last = Seq(self.last.0 + 1);
        let event = Event {
            seq: self.last,
            change,
        };
        self.history.push(event.clone());
        if let Some(group) = &mut self.group {
            group.push(event.clone());
        } else if let Some(journal) = &self.journal {
            journal.send(crate::journal::Msg::Event(event.clone()));
        }
        event
    }

    /// Commits several changes as one atomic change: `commits` calls
    /// [`Sequencer::commit`] for each, and the journal gets them as one group
    /// (one frame), so recovery shows all of them or none. The lock is held
    /// throughout, so no other change's seq falls inside the group and a
    /// snapshot's cut (taken under this lock) never splits it.
    fn group<T>(&mut self, commits: impl FnOnce(&mut Sequencer) -> T) -> T {
        /// Sends the group when it ends, even by a panic, so no later
        /// event is held back.
        struct Flush<'a>(&'a mut Sequencer);
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                let events = self.0.group.take().unwrap_or_default();
                if let Some(journal) = &self.0.journal
                    && !events.is_empty()
                {
                    journal.send(crate::journal::Msg::Group(events));
                }
            }
        }
        debug_assert!(self.group.is_none(), "groups do not nest");
        self.group = Some(Vec::new());
        let flush = Flush(self);
        commits(&mut *flush.0)
    }
}

/// Counters that let readers cache a rendering of a view: a rendering made
/// after reading generation `g` reflects at least every change up to `g`.
/// They are bumped after the change is in the map and the indexes, and
/// before the order's lock is released, so that holds without a lock.
#[derive(Default)]
struct Generations {
    /// Per stage: bumped by every change that touches an order in the stage.
    stages: [AtomicU64; Stage::COUNT],
    /// Bumped by every order change.
    all: AtomicU64,
}

impl Generations {
    fn bump(&self, before: Option<Stage>, after: Option<Stage>) {
        for stage in [before, after.filter(|a| Some(*a) != before)]
            .into_iter()
            .flatten()
        {
            self.stages[stage.index()].fetch_add(1, Ordering::Release);
        }
        self.all.fetch_add(1, Ordering::Release);
    }
    /// After the whole state was replaced (recovery).
    fn bump_all(&self) {
        for stage in &self.stages {
            stage.fetch_add(1, Ordering::Release);
        }
        self.all.fetch_add(1, Ordering::Release);
    }
}

impl Broker {
    pub fn new(config: &Config) -> Broker {
        let symbols = Symbols::new(config.limits.max_symbols);
        let mut stage_words = HashMap::default();
        let words = &config.stages;
        let configured = [
            (&words.new, Stage::New),
            (&words.completed, Stage::Completed),
            (&words.cancelled, Stage::Cancelled),
        ];
        let lifecycle = crate::shop::reserved_words().map(|(w, stage)| (w.to_string(), stage));
        let all = configured
            .iter()
            .flat_map(|(list, stage)| list.iter().map(move |w| (w.clone(), *stage)))
            .chain(lifecycle);
        for (word, stage) in all {
            stage_words.insert(symbols.reserve(&word), stage);
        }
        let shop = &config.shop;
        Broker {
            inner: Arc::new(Inner {
                // Many small shards: a snapshot copies one at a time, so a
                // writer waits at most for one shard's copy.
                orders: DashMap::with_hasher_and_shard_amount(
                    foldhash::fast::RandomState::default(),
                    ORDER_SHARDS,
                ),
                sequencer: Mutex::new(Sequencer {
                    last: Seq(0),
                    stages: Default::default(),
                    history: History::new(config.events.history_size),
                    journal: None,
                    group: None,
                    marking: None,
                }),
                notifier: Notifier::new(Seq(0)),
                generations: Generations::default(),
                symbols,
                stage_words,
                products: Table::default(),
                customers: Table::default(),
                templates: Table::default(),
                callbacks: callbacks::Callbacks::default(),
                numbers: DashMap::new(),
                by_customer: DashMap::new(),
                next_order_id: AtomicU64::new(1),
                number_seed: RandomState::new(),
                // Validated with the config.
                tax_rate: Rate::parse(&shop.tax_rate).unwrap_or_default(),
                service_charge_rate: Rate::parse(&shop.service_charge_rate).unwrap_or_default(),
                history_size: config.events.history_size,
                // Validated with the config.
                fees: crate::shop::FeeRules::from_config(&config.delivery).unwrap_or_default(),
                return_window_ms: config.returns.window_secs.saturating_mul(1000),
                restock_returns: config.returns.restock,
                journal: std::sync::OnceLock::new(),
                bulk: Mutex::new(()),
                bulk_active: std::sync::atomic::AtomicBool::new(false),
                epoch: AtomicU64::new(random_epoch()),
                cluster: std::sync::OnceLock::new(),
                max_text_bytes: config.limits.max_text_bytes,
                // Validated with the config.
                max_quantity: config.limits.max_quantity.min(crate::money::MAX_UNITS),
                max_amount: config.limits.max_amount().unwrap_or(Money::MAX),
            }),
        }
    }

    /// Sets an order's status (and orderbot, when given), creating the order
    /// if it is new. This is the seed's `update_order`.
    pub fn update_status(
        &self,
        id: OrderId,
        status: &str,
        orderbot_id: Option<&str>,
    ) -> Result<Event, BrokerError> {
        self.update_status_if(id, status, orderbot_id, None)
    }

    /// `update_status` with an `If-Match` version: the order must exist at it.
    pub fn update_status_if(
        &self,
        id: OrderId,
        status: &str,
        orderbot_id: Option<&str>,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        // Check every text before interning any, so a refused change leaves
        // nothing behind in the symbol table.
        self.check_len("status", status)?;
        if let Some(bot) = orderbot_id {
            self.check_len("orderbot_id", bot)?;
        }
        if id.0 > crate::model::MAX_CHOSEN_ORDER_ID {
            return Err(BrokerError::OutOfRange {
                field: "id".into(),
                allowed: format!("0 to {}", crate::model::MAX_CHOSEN_ORDER_ID),
            });
        }
        let word = status;
        let _pin = self.pin();
        let status = self.inner.symbols.intern(status)?;
        let orderbot_id = orderbot_id
            .map(|b| self.inner.symbols.intern(b))
            .transpose()?;
        // Keep assigned ids above client-chosen ones; a read first, so the
        // common case does not write a cache line every writer shares.
        // After id u64::MAX it stays u64::MAX: none left to assign, never 0
        // (see `catalog::assign_id`).
        let next = id.0.saturating_add(1);
        if self.inner.next_order_id.load(Ordering::Relaxed) < next {
            self.inner.next_order_id.fetch_max(next, Ordering::Relaxed);
        }
        self.apply(id, Mode::Upsert, expected, |current| {
            Ok(match current {
                // A shop order's history records every status it got.
                Some(order) if order.shop.is_some() && order.status != status => Order {
                    status,
                    orderbot_id: orderbot_id.or(order.orderbot_id),
                    shop: order
                        .shop
                        .as_ref()
                        .map(|s| Arc::new(s.with_entry(word, None))),
                    ..order.clone()
                },
                Some(order) => Order {
                    status,
                    orderbot_id: orderbot_id.or(order.orderbot_id),
                    ..order.clone()
                },
                None => Order::new(status, orderbot_id, None),
            })
        })
    }

    /// Assigns an order to an orderbot, keeping its status.
    pub fn set_orderbot(&self, id: OrderId, orderbot_id: &str) -> Result<Event, BrokerError> {
        self.check_len("orderbot_id", orderbot_id)?;
        let _pin = self.pin();
        let bot = self.inner.symbols.intern(orderbot_id)?;
        self.apply(id, Mode::Update, None, |current| {
            let current = current.ok_or(BrokerError::OrderNotFound)?;
            Ok(Order {
                orderbot_id: Some(bot),
                ..current.clone()
            })
        })
    }

    /// The one way a single order changes: `change` gets the current order
    /// (None if new; see [`Mode`] for what happens when it exists or not)
    /// and returns its next state or refuses. `expected` is an `If-Match`
    /// version. The broker then derives the stage, bumps the version, stamps
    /// the times and commits the event, all while the order is locked.
    fn apply(
        &self,
        id: OrderId,
        mode: Mode,
        expected: Option<Version>,
        change: impl FnOnce(Option<&Order>) -> Result<Order, BrokerError>,
    ) -> Result<Event, BrokerError> {
        let now = Millis::now();
        let (event, before, after) = match self.locked(|| self.inner.orders.entry(id)) {
            Entry::Occupied(_) if mode == Mode::Create => return Err(BrokerError::IdTaken(id.0)),
            Entry::Occupied(mut entry) => {
                check_version(entry.get(), expected)?;
                let next = change(Some(entry.get()))?;
                let mut order = self.stamp(Some(entry.get()), next, now)?;
                let back = settle(entry.get(), &mut order, now)?;
                let before = entry.get().stage;
                let event = match back {
                    Some((back, customer)) => {
                        self.commit_giving_back(id, entry.get_mut(), order, &back, customer)?
                    }
                    None => {
                        let since = entry.get().stage_since;
                        *entry.get_mut() = order.clone();
                        self.commit_order(id, Some((before, since)), order)
                    }
                };
                (event, Some(before), entry.get().stage)
            }
            Entry::Vacant(entry) => {
                if mode == Mode::Update || expected.is_some() {
                    return Err(BrokerError::OrderNotFound);
                }
                let order = self.stamp(None, change(None)?, now)?;
                let stage = order.stage;
                // Keep the returned guard: the order must stay locked until
                // its event is committed, or a second writer could commit
                // version 2 before this commits version 1.
                let _locked = entry.insert(order.clone());
                (self.commit_order(id, None, order), None, stage)
            }
        };
        self.inner.generations.bump(before, Some(after));
        self.inner.notifier.publish(event.seq);
        Ok(event)
    }

    /// Locks an order (`lock` takes its map entry) for a change, unless a
    /// bulk change is running: then the writer lets go, waits for the bulk
    /// to finish, and tries again. The flag is read *after* the lock is
    /// taken, and the bulk takes each of its orders' locks once after
    /// setting it, so no writer of those orders overlaps the bulk.
    fn locked<T>(&self, lock: impl Fn() -> T) -> T {
        loop {
            let guard = lock();
            if !self.inner.bulk_active.load(Ordering::Acquire) || bulk::is_running_here() {
                return guard;
            }
            drop(guard);
            drop(self.inner.bulk.lock());
        }
    }

    /// Sets what the broker owns in a changed order: stage, version, times.
    fn stamp(
        &self,
        before: Option<&Order>,
        mut order: Order,
        now: Millis,
    ) -> Result<Order, BrokerError> {
        order.stage = self.stage_of(order.status);
        order.version = match before {
            None => Version(1),
            Some(b) => b.version.next().ok_or(BrokerError::VersionExhausted)?,
        };
        let now = Stamp::from(now);
        order.created = before.map_or(now, |b| b.created);
        order.updated = now;
        order.stage_since = match before {
            Some(b) if b.stage == order.stage => b.stage_since,
            _ => now,
        };
        Ok(order)
    }

    /// `before`: the order's stage and when it entered it (None: new).
    fn commit_order(&self, id: OrderId, before: Option<(Stage, Stamp)>, order: Order) -> Event {
        self.inner.sequencer.lock().commit(Change::Order {
            id,
            order,
            from: before.map(|(stage, _)| stage),
            from_since: before.map_or(Stamp::default(), |(_, since)| since),
        })
    }

    fn sequencer(&self) -> MutexGuard<'_, Sequencer> {
        self.inner.sequencer.lock()
    }

    fn check_len(&self, field: &'static str, text: &str) -> Result<(), BrokerError> {
        let limit = self.inner.max_text_bytes;
        if text.len() > limit {
            return Err(BrokerError::TextTooLong { field, limit });
        }
        Ok(())
    }

    /// Refuses a quantity a request sets past `limits.max_quantity` (or
    /// below `min`), naming its field.
    fn check_quantity(&self, field: &str, quantity: u64, min: u64) -> Result<(), BrokerError> {
        let max = self.inner.max_quantity;
        if (min..=max).contains(&quantity) {
            return Ok(());
        }
        Err(BrokerError::OutOfRange {
            field: field.to_string(),
            allowed: format!("{min} to {max}, limits.max_quantity"),
        })
    }

    /// Refuses an amount a request sets or makes past `limits.max_amount`,
    /// or below zero unless `negative` (then below −max), naming its field.
    fn check_amount(&self, field: &str, amount: Money, negative: bool) -> Result<(), BrokerError> {
        let max = self.inner.max_amount;
        let min = if negative { Money(-max.0) } else { Money::ZERO };
        if (min..=max).contains(&amount) {
            return Ok(());
        }
        Err(BrokerError::OutOfRange {
            field: field.to_string(),
            allowed: format!("{min} to {max}, limits.max_amount"),
        })
    }

    fn stage_of(&self, status: Sym) -> Stage {
        self.inner
            .stage_words
            .get(&status)
            .copied()
            .unwrap_or(Stage::InProgress)
    }

    pub fn get(&self, id: OrderId) -> Option<Order> {
        self.inner.orders.get(&id).map(|o| o.clone())
    }

    /// The order with its texts, or None if unknown.
    pub fn view(&self, id: OrderId) -> Option<OrderView> {
        let _pin = self.pin();
        let order = self.get(id)?;
        Some(self.resolve(id, &order, &self.symbols()))
    }

    /// Held from before reading an order (from the map or an event) until
    /// its texts are resolved: no symbol it uses is reclaimed meanwhile
    /// (see [`crate::symbols`]). Not across `.await`.
    pub fn pin(&self) -> Pin<'_> {
        self.inner.symbols.pin()
    }

    /// Texts for many orders: take the reader once, resolve each order with
    /// it; under a pin taken before the orders were read.
    pub fn symbols(&self) -> SymbolsReader<'_> {
        self.inner.symbols.reader()
    }

    pub fn resolve(&self, id: OrderId, order: &Order, symbols: &SymbolsReader<'_>) -> OrderView {
        OrderView {
            id,
            status: symbols.text(order.status).to_string(),
            orderbot_id: order.orderbot_id.map(|b| symbols.text(b).to_string()),
            stage: order.stage,
            version: order.version,
            created: order.created.get(),
            updated: order.updated.get(),
            stage_since: order.stage_since.get(),
        }
    }

    /// The ids in one stage, in arrival order.
    pub fn stage_ids(&self, stage: Stage) -> Vec<OrderId> {
        self.sequencer().stages[stage.index()]
            .iter()
            .map(|a| a.id)
            .collect()
    }

    /// Up to `limit` places after `after`, in arrival order, from the given
    /// stages.
    pub fn ids_after(
        &self,
        stages: &[Stage],
        after: Option<Arrival>,
        limit: usize,
    ) -> Vec<Arrival> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let seq = self.sequencer();
        let mut places: Vec<Arrival> = stages
            .iter()
            .flat_map(|s| {
                seq.stages[s.index()]
                    .range((from, Bound::Unbounded))
                    .take(limit)
            })
            .copied()
            .collect();
        drop(seq);
        places.sort_unstable();
        places.truncate(limit);
        places
    }

    /// The ids of some stages (in arrival order) and the seq they reflect,
    /// taken at one moment.
    pub fn snapshot(&self, stages: &[Stage]) -> (Seq, Vec<Vec<OrderId>>) {
        let seq = self.sequencer();
        let ids = stages
            .iter()
            .map(|s| seq.stages[s.index()].iter().map(|a| a.id).collect())
            .collect();
        (seq.last, ids)
    }

    /// The oldest seq the history can still replay.
    pub fn oldest_seq(&self) -> Seq {
        let seq = self.sequencer();
        match seq.history.since(Seq(0), seq.last, 1) {
            Ok(events) => events.first().map_or(Seq(seq.last.0 + 1), |e| e.seq),
            Err(lagged) => lagged.oldest,
        }
    }

    /// How many orders are in each stage, indexed by [`Stage::index`].
    pub fn stage_counts(&self) -> [usize; Stage::COUNT] {
        let seq = self.sequencer();
        Stage::ALL.map(|s| seq.stages[s.index()].len())
    }

    /// The change counter of one stage (`None`: of all orders). A rendering
    /// made after reading `g` is at least as new as `g` (see `Generations`).
    pub fn generation(&self, stage: Option<Stage>) -> u64 {
        let g = &self.inner.generations;
        match stage {
            Some(s) => g.stages[s.index()].load(Ordering::Acquire),
            None => g.all.load(Ordering::Acquire),
        }
    }

    /// The orders of one stage, in arrival order.
    pub fn stage_orders(&self, stage: Stage) -> Vec<(OrderId, Order)> {
        self.stage_ids(stage)
            .into_iter()
            .filter_map(|id| self.get(id).map(|o| (id, o)))
            // An order may have moved on since the ids were taken.
            .filter(|(_, o)| o.stage == stage)
            .collect()
    }

    /// Every order, in arrival order. Reads one map shard at a time.
    pub fn all_orders(&self) -> Vec<(OrderId, Order)> {
        let mut all: Vec<(OrderId, Order)> = self
            .inner
            .orders
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        all.sort_unstable_by_key(|(id, order)| Arrival::of(*id, order));
        all
    }

    pub fn len(&self) -> usize {
        self.inner.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.orders.is_empty()
    }

    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// The newest sequence number issued (0 before the first change).
    pub fn last_seq(&self) -> Seq {
        self.sequencer().last
    }

    /// The newest seq whose writer has returned (it may trail `last_seq`
    /// for a moment). Every change a caller saw succeed is at or below it.
    pub fn published_seq(&self) -> Seq {
        self.inner.notifier.current()
    }

    /// Up to `max` events with `seq >= from`, oldest first, or `Lagged` when
    /// the history no longer reaches back that far.
    pub fn events_since(&self, from: Seq, max: usize) -> Result<Vec<Event>, Lagged> {
        let seq = self.sequencer();
        seq.history.since(from, seq.last, max)
    }

    /// Follows the change feed from `from` (use `Seq(last_seq + 1)` for "from now").
    pub fn subscribe(&self, from: Seq) -> Subscription {
        Subscription {
            broker: self.clone(),
            next: from,
            watch: match self.cluster() {
                Some(cluster) => cluster.visible_watch(),
                None => self.inner.notifier.watch(),
            },
        }
    }

    /// The newest seq readers of the feed may see: every change
    /// published, or in a cluster only those in the stream (acknowledged
    /// by JetStream on the leader, applied on a follower), so an event id
    /// a stream sent is never given to another change after a failover.
    pub fn visible_seq(&self) -> Seq {
        match self.cluster() {
            Some(cluster) => cluster.visible(),
            None => self.published_seq(),
        }
    }

    /// [`Broker::events_since`], up to [`Broker::visible_seq`].
    pub fn visible_events_since(&self, from: Seq, max: usize) -> Result<Vec<Event>, Lagged> {
        let cap = self.visible_seq();
        let mut events = self.events_since(from, max)?;
        let shown = events.partition_point(|e| e.seq <= cap);
        events.truncate(shown);
        Ok(events)
    }
}

/// Holds a change of a shop order to the one table of moves
/// ([`crate::shop::check_move`]) and settles its ledger, whichever API made
/// the change: entering the cancelled stage gives back everything the
/// ledger has outstanding; a change that refunded (its ledger credits or
/// restocks more than before) moves exactly that. Returns what must go back
/// to stock and to whom the money goes, or None when nothing moves.
/// Orders without shop details (the seed's) move freely.
fn settle(
    current: &Order,
    next: &mut Order,
    now: Millis,
) -> Result<Option<(crate::shop::GiveBack, Option<CustomerId>)>, BrokerError> {
    let Some(shop) = &current.shop else {
        return Ok(None);
    };
    let reworded = next.status != current.status;
    crate::shop::check_move(shop, current.stage, next.stage, reworded)
        .map_err(BrokerError::Conflict)?;
    let Some(next_shop) = next.shop.as_mut() else {
        return Err(BrokerError::Conflict(
            "an order keeps its shop details".into(),
        ));
    };
    let was = &shop.ledger;
    if next_shop.ledger.charged != was.charged || next_shop.ledger.items_taken != was.items_taken {
        // Only processing charges, and it commits on its own path.
        return Err(BrokerError::Conflict(
            "only processing charges an order".into(),
        ));
    }
    let back = if next.stage == Stage::Cancelled {
        // The table let it in, so it was not cancelled before.
        Arc::make_mut(next_shop).ledger.give_back_all(now)
    } else {
        let now_back = &next_shop.ledger;
        let credited = |l: &crate::shop::Ledger| l.given_back.0 + l.refunded.0;
        let mut units = crate::shop::Units::new();
        for (product, n) in &now_back.items_returned {
            let before = was.items_returned.get(product).copied().unwrap_or(0);
            if *n > before {
                units.insert(*product, n - before);
            }
        }
        crate::shop::GiveBack {
            units,
            money: crate::money::Money(credited(now_back) - credited(was)),
        }
    };
    let ledger = &next_shop.ledger;
    if ledger.given_back.0 + ledger.refunded.0 > ledger.charged.0 || back.money.0 < 0 {
        return Err(BrokerError::Conflict(
            "an order gives back at most what it was charged".into(),
        ));
    }
    Ok((!back.is_empty()).then(|| (back, shop.customer_id)))
}

fn check_version(order: &Order, expected: Option<Version>) -> Result<(), BrokerError> {
    match expected {
        Some(v) if v != order.version => Err(BrokerError::VersionMismatch {
            current: order.version,
        }),
        _ => Ok(()),
    }
}

impl Order {
    /// A new order's fields; `stamp` sets stage, version and times.
    fn new(
        status: Sym,
        orderbot_id: Option<Sym>,
        shop: Option<Arc<crate::shop::ShopOrder>>,
    ) -> Order {
        Order {
            status,
            orderbot_id,
            stage: Stage::New,
            version: Version(0),
            created: Stamp::default(),
            updated: Stamp::default(),
            stage_since: Stamp::default(),
            shop,
        }
    }
}

/// A reader of the change feed that waits for new events.
pub struct Subscription {
    broker: Broker,
    next: Seq,
    watch: watch::Receiver<Seq>,
}

impl Subscription {
    /// Waits until the feed has changes past the cursor; false once the
    /// broker is gone. Then [`Subscription::take`] them under a pin.
    pub async fn ready(&mut self) -> bool {
        loop {
            // Mark the current value seen before comparing, so a publish
            // that lands after the check wakes the wait below.
            if *self.watch.borrow_and_update() >= self.next {
                return true;
            }
            if self.watch.changed().await.is_err() {
                return false;
            }
        }
    }

    /// The next batch of events (at most 1024; empty if there is none
    /// yet), read under `pin`: resolve their texts before it drops.
    pub fn take(&mut self, _pin: &Pin<'_>) -> Result<Vec<Event>, Lagged> {
        let batch = self.broker.visible_events_since(self.next, 1024)?;
        if let Some(last) = batch.last() {
            self.next = Seq(last.seq.0 + 1);
        }
        Ok(batch)
    }
}

fn random_epoch() -> u64 {
    // RandomState is seeded from the OS per process; mix in the time for good measure.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(Millis::now().0);
    h.finish()
}

/// For tests: every event from the start, checked to be gapless.
#[cfg(test)]
pub(crate) fn gapless_feed(broker: &Broker) -> Vec<Event> {
    let events = broker.events_since(Seq(1), usize::MAX).unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1), "the feed has a gap");
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_with_history(history_size: usize) -> Broker {
        let mut config = Config::default();
        config.events.history_size = history_size;
        Broker::new(&config)
    }

    #[test]
    fn many_threads_on_overlapping_orders_keep_every_invariant() {
        const THREADS: u64 = 8;
        const WRITES: u64 = 2000;
        const ORDERS: u64 = 50;
        let broker = broker_with_history(1 << 16);
        let words = [
            "Order Initiated",
            "Mixing",
            "Order Served",
            "Order Cancelled",
            "Pouring",
        ];
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let broker = broker.clone();
                s.spawn(move || {
                    for n in 0..WRITES {
                        let id = OrderId((n * 13 + t) % ORDERS);
                        let word = words[((n + t) % 5) as usize];
                        broker
                            .update_status(id, word, Some(&format!("b{t}")))
                            .unwrap();
                    }
                });
            }
        });
        let total = THREADS * WRITES;
        assert_eq!(broker.last_seq(), Seq(total));
        let events = gapless_feed(&broker);

        let mut versions: HashMap<OrderId, u32> = HashMap::new();
        let mut last: HashMap<OrderId, Order> = HashMap::new();
        for e in &events {
            let (id, order) = e.order().unwrap();
            let v = versions.entry(id).or_default();
            *v += 1;
            assert_eq!(order.version, Version(*v));
            last.insert(id, order.clone());
        }
        assert_eq!(versions.values().map(|v| u64::from(*v)).sum::<u64>(), total);
        let mut by_stage: [BTreeSet<OrderId>; Stage::COUNT] = Default::default();
        for (id, order) in broker.all_orders() {
            assert_eq!(Some(&order), last.get(&id), "map and feed agree on {id}");
            by_stage[order.stage.index()].insert(id);
        }
        for stage in Stage::ALL {
            let ids: BTreeSet<OrderId> = broker.stage_ids(stage).into_iter().collect();
            assert_eq!(ids, by_stage[stage.index()], "{stage} view");
        }
    }

    #[test]
    fn history_is_bounded_and_reports_lag() {
        let broker = broker_with_history(4);
        for n in 0..10 {
            broker.update_status(OrderId(n), "Mixing", None).unwrap();
        }
        assert_eq!(
            broker.events_since(Seq(1), 100),
            Err(Lagged { oldest: Seq(7) })
        );
        let tail = broker.events_since(Seq(8), 100).unwrap();
        assert_eq!(tail.iter().map(|e| e.seq.0).collect::<Vec<_>>(), [8, 9, 10]);
        assert_eq!(broker.events_since(Seq(11), 100).unwrap(), []);
        assert_eq!(broker.events_since(Seq(7), 2).unwrap().len(), 2);
    }

    #[test]
    fn stage_follows_status_and_generations_move() {
        let broker = broker_with_history(16);
        let id = OrderId(1);
        let g_new = broker.generation(Some(Stage::New));
        let e = broker
            .update_status(id, "Order Initiated", Some("r1"))
            .unwrap();
        let order = e.order().unwrap().1;
        assert_eq!((order.stage, order.version), (Stage::New, Version(1)));
        assert!(broker.generation(Some(Stage::New)) > g_new);
        let g_done = broker.generation(Some(Stage::Completed));
        let e = broker.update_status(id, "Order Served", None).unwrap();
        let order = e.order().unwrap().1;
        assert_eq!(order.stage, Stage::Completed);
        assert_eq!(order.orderbot_id, broker.get(id).unwrap().orderbot_id);
        assert!(broker.generation(Some(Stage::Completed)) > g_done);
        assert_eq!(broker.stage_ids(Stage::New), []);
        assert_eq!(broker.stage_ids(Stage::Completed), [id]);
        let view = broker.view(id).unwrap();
        assert_eq!(view.orderbot_id.as_deref(), Some("r1"));
        assert!(view.updated >= view.created);

        // Time in stage: kept across statuses within a stage, reset on a move.
        let other = OrderId(2);
        broker.update_status(other, "Mixing", None).unwrap();
        let entered = broker.get(other).unwrap().stage_since;
        std::thread::sleep(std::time::Duration::from_millis(5));
        broker.update_status(other, "Pouring", None).unwrap();
        assert_eq!(broker.get(other).unwrap().stage_since, entered);
        broker.update_status(other, "Order Served", None).unwrap();
        let served = broker.get(other).unwrap();
        assert!(served.stage_since.get() > entered.get());
        assert_eq!(served.stage_since, served.updated);
    }
}
