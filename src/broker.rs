//! The broker: every order's live state, the stage views derived from it, and
//! the change feed. One cheap-to-clone handle shared by every connection.
//!
//! Locking, in the only order it is ever taken:
//! 1. the order's `DashMap` shard (write) — serialises writers of one order;
//! 2. the `sequencer` mutex — gives the change its `seq`, moves the order
//!    between stage indexes and appends to the history, all in one step, so
//!    the indexes and the history always agree with `seq` order.
//!
//! Both are held for a few hundred nanoseconds and never across `.await`.
//! Subscribers are woken only after both are released.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::Config;
use crate::feed::{Event, History, Lagged, Notifier};
use crate::model::{Millis, Order, OrderId, OrderView, Seq, Stage, Version};
use crate::symbols::{Sym, Symbols, SymbolsFull, SymbolsReader};

/// Why the broker refused a change. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// A text field is longer than `limits.max_text_bytes`.
    TextTooLong { field: &'static str, limit: usize },
    /// The text is new and the symbol table is full (`limits.max_symbols`).
    TooManySymbols { limit: usize },
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::TextTooLong { field, limit } => {
                write!(f, "{field} is longer than {limit} bytes")
            }
            BrokerError::TooManySymbols { limit } => write!(
                f,
                "too many distinct status words and orderbot ids (limit {limit}); \
                 reuse an existing one or raise limits.max_symbols"
            ),
        }
    }
}

impl std::error::Error for BrokerError {}

impl From<SymbolsFull> for BrokerError {
    fn from(e: SymbolsFull) -> Self {
        BrokerError::TooManySymbols { limit: e.limit }
    }
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every order. A shard's write lock is held only while one order changes.
    orders: DashMap<OrderId, Order>,
    /// Sequence counter, stage indexes and history; see the module docs.
    sequencer: Mutex<Sequencer>,
    /// Wakes feed subscribers with the newest `seq`; written after the locks drop.
    notifier: Notifier,
    /// Change counters for cached renderings of the views; see [`Generations`].
    generations: Generations,
    /// Interned status words and orderbot ids (its own lock).
    symbols: Symbols,
    /// Stage of each configured status word; any other word is in progress.
    /// Read-only after start.
    stage_words: HashMap<Sym, Stage>,
    /// Random per boot, so a client can tell a restart from a gap in `seq`.
    epoch: u64,
    max_text_bytes: usize,
}

struct Sequencer {
    last: Seq,
    /// Ids by stage: the views. Kept in step with `orders` on every change.
    stages: [BTreeSet<OrderId>; 4],
    history: History,
}

/// Counters that let readers cache a rendering of a view: a rendering made
/// after reading generation `g` reflects at least every change up to `g`.
/// They are bumped after the change is in the map and the indexes, and
/// before the order's lock is released, so that holds without a lock.
#[derive(Default)]
struct Generations {
    /// Per stage: bumped by every change that touches an order in the stage.
    stages: [AtomicU64; 4],
    /// Bumped by every change.
    all: AtomicU64,
}

impl Generations {
    fn bump(&self, before: Option<Stage>, after: Stage) {
        if let Some(before) = before.filter(|b| *b != after) {
            self.stages[before.index()].fetch_add(1, Ordering::Release);
        }
        self.stages[after.index()].fetch_add(1, Ordering::Release);
        self.all.fetch_add(1, Ordering::Release);
    }
}

impl Sequencer {
    fn commit(&mut self, id: OrderId, before: Option<Stage>, order: Order) -> Event {
        self.last = Seq(self.last.0 + 1);
        if let Some(before) = before.filter(|b| *b != order.stage) {
            self.stages[before.index()].remove(&id);
        }
        self.stages[order.stage.index()].insert(id);
        let event = Event {
            seq: self.last,
            id,
            order,
        };
        self.history.push(event);
        event
    }
}

impl Broker {
    pub fn new(config: &Config) -> Broker {
        let symbols = Symbols::new(config.limits.max_symbols);
        let mut stage_words = HashMap::new();
        let words = &config.stages;
        for (list, stage) in [
            (&words.new, Stage::New),
            (&words.completed, Stage::Completed),
            (&words.cancelled, Stage::Cancelled),
        ] {
            for word in list {
                // Config words come first, so the table cannot be full yet.
                if let Ok(sym) = symbols.intern(word) {
                    stage_words.insert(sym, stage);
                }
            }
        }
        Broker {
            inner: Arc::new(Inner {
                orders: DashMap::new(),
                sequencer: Mutex::new(Sequencer {
                    last: Seq(0),
                    stages: Default::default(),
                    history: History::new(config.events.history_size),
                }),
                notifier: Notifier::new(Seq(0)),
                generations: Generations::default(),
                symbols,
                stage_words,
                epoch: random_epoch(),
                max_text_bytes: config.limits.max_text_bytes,
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
        // Check every text before interning any, so a refused change leaves
        // nothing behind in the symbol table.
        self.check_len("status", status)?;
        if let Some(bot) = orderbot_id {
            self.check_len("orderbot_id", bot)?;
        }
        let status = self.inner.symbols.intern(status)?;
        let orderbot_id = orderbot_id
            .map(|b| self.inner.symbols.intern(b))
            .transpose()?;
        Ok(self.apply(id, |current| match current {
            Some(order) => Order {
                status,
                orderbot_id: orderbot_id.or(order.orderbot_id),
                ..*order
            },
            None => Order::new(status, orderbot_id),
        }))
    }

    /// The one way an order changes: `change` gets the current order (None if
    /// new) and returns its next state. The broker then derives the stage,
    /// bumps the version, stamps the times and publishes the event, all while
    /// the order is locked, so concurrent changes to one order never interleave.
    fn apply(&self, id: OrderId, change: impl FnOnce(Option<&Order>) -> Order) -> Event {
        let now = Millis::now();
        let event = match self.inner.orders.entry(id) {
            Entry::Occupied(mut entry) => {
                let before = *entry.get();
                let mut order = change(Some(&before));
                order.stage = self.stage_of(order.status);
                order.version = Version(before.version.0 + 1);
                order.created = before.created;
                order.updated = now;
                *entry.get_mut() = order;
                let event = self
                    .inner
                    .sequencer
                    .lock()
                    .commit(id, Some(before.stage), order);
                self.inner.generations.bump(Some(before.stage), order.stage);
                event
            }
            Entry::Vacant(entry) => {
                let mut order = change(None);
                order.stage = self.stage_of(order.status);
                order.version = Version(1);
                order.created = now;
                order.updated = now;
                // Keep the returned guard: the order must stay locked until
                // its event is committed, or a second writer could commit
                // version 2 before this commits version 1.
                let _locked = entry.insert(order);
                let event = self.inner.sequencer.lock().commit(id, None, order);
                self.inner.generations.bump(None, order.stage);
                event
            }
        };
        self.inner.notifier.publish(event.seq);
        event
    }

    fn check_len(&self, field: &'static str, text: &str) -> Result<(), BrokerError> {
        let limit = self.inner.max_text_bytes;
        if text.len() > limit {
            return Err(BrokerError::TextTooLong { field, limit });
        }
        Ok(())
    }

    fn stage_of(&self, status: Sym) -> Stage {
        self.inner
            .stage_words
            .get(&status)
            .copied()
            .unwrap_or(Stage::InProgress)
    }

    pub fn get(&self, id: OrderId) -> Option<Order> {
        self.inner.orders.get(&id).map(|o| *o)
    }

    /// The order with its texts, or None if unknown.
    pub fn view(&self, id: OrderId) -> Option<OrderView> {
        let order = self.get(id)?;
        Some(self.resolve(id, &order, &self.symbols()))
    }

    /// Texts for many orders: take the reader once, resolve each order with it.
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
            created: order.created,
            updated: order.updated,
        }
    }

    /// The ids in one stage, ascending.
    pub fn stage_ids(&self, stage: Stage) -> Vec<OrderId> {
        self.inner.sequencer.lock().stages[stage.index()]
            .iter()
            .copied()
            .collect()
    }

    /// How many orders are in each stage, indexed by [`Stage::index`].
    pub fn stage_counts(&self) -> [usize; 4] {
        let seq = self.inner.sequencer.lock();
        Stage::ALL.map(|s| seq.stages[s.index()].len())
    }

    /// The change counter of one stage (`None`: of all orders). A rendering
    /// made after reading `g` is at least as new as `g`; see [`Generations`].
    pub fn generation(&self, stage: Option<Stage>) -> u64 {
        let g = &self.inner.generations;
        match stage {
            Some(s) => g.stages[s.index()].load(Ordering::Acquire),
            None => g.all.load(Ordering::Acquire),
        }
    }

    /// The orders of one stage, ascending by id.
    pub fn stage_orders(&self, stage: Stage) -> Vec<(OrderId, Order)> {
        self.stage_ids(stage)
            .into_iter()
            .filter_map(|id| self.get(id).map(|o| (id, o)))
            // An order may have moved on since the ids were taken.
            .filter(|(_, o)| o.stage == stage)
            .collect()
    }

    /// Every order, ascending by id. Reads one map shard at a time.
    pub fn all_orders(&self) -> Vec<(OrderId, Order)> {
        let mut all: Vec<(OrderId, Order)> = self
            .inner
            .orders
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    pub fn len(&self) -> usize {
        self.inner.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.orders.is_empty()
    }

    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The newest sequence number issued (0 before the first change).
    pub fn last_seq(&self) -> Seq {
        self.inner.sequencer.lock().last
    }

    /// Up to `max` events with `seq >= from`, oldest first, or `Lagged` when
    /// the history no longer reaches back that far.
    pub fn events_since(&self, from: Seq, max: usize) -> Result<Vec<Event>, Lagged> {
        let seq = self.inner.sequencer.lock();
        seq.history.since(from, seq.last, max)
    }

    /// Follows the change feed from `from` (use `Seq(last_seq + 1)` for "from now").
    pub fn subscribe(&self, from: Seq) -> Subscription {
        Subscription {
            broker: self.clone(),
            next: from,
            watch: self.inner.notifier.watch(),
        }
    }
}

impl Order {
    /// A new order's fields; `apply` stamps stage, version and times.
    fn new(status: Sym, orderbot_id: Option<Sym>) -> Order {
        Order {
            status,
            orderbot_id,
            stage: Stage::New,
            version: Version(0),
            created: Millis(0),
            updated: Millis(0),
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
    /// The next batch of events (at most 1024), waiting if there is none yet.
    pub async fn recv(&mut self) -> Result<Vec<Event>, Lagged> {
        loop {
            // Mark the current value seen before reading, so a publish that
            // lands after the read wakes the wait below.
            self.watch.borrow_and_update();
            let batch = self.broker.events_since(self.next, 1024)?;
            if let Some(last) = batch.last() {
                self.next = Seq(last.seq.0 + 1);
                return Ok(batch);
            }
            if self.watch.changed().await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

fn random_epoch() -> u64 {
    // RandomState is seeded from the OS per process; mix in the time for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Millis::now().0);
    h.finish()
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
        let events = broker.events_since(Seq(1), usize::MAX).unwrap();
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == Seq(i as u64 + 1))
        );

        let mut versions: HashMap<OrderId, u64> = HashMap::new();
        let mut last: HashMap<OrderId, Order> = HashMap::new();
        for e in &events {
            let v = versions.entry(e.id).or_default();
            *v += 1;
            assert_eq!(e.order.version, Version(*v));
            last.insert(e.id, e.order);
        }
        assert_eq!(versions.values().sum::<u64>(), total);
        let mut by_stage: [BTreeSet<OrderId>; 4] = Default::default();
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
        assert_eq!((e.order.stage, e.order.version), (Stage::New, Version(1)));
        assert!(broker.generation(Some(Stage::New)) > g_new);
        let g_done = broker.generation(Some(Stage::Completed));
        let e = broker.update_status(id, "Order Served", None).unwrap();
        assert_eq!(e.order.stage, Stage::Completed);
        assert_eq!(e.order.orderbot_id, broker.get(id).unwrap().orderbot_id);
        assert!(broker.generation(Some(Stage::Completed)) > g_done);
        assert_eq!(broker.stage_ids(Stage::New), []);
        assert_eq!(broker.stage_ids(Stage::Completed), [id]);
        let view = broker.view(id).unwrap();
        assert_eq!(view.orderbot_id.as_deref(), Some("r1"));
        assert!(view.updated >= view.created);
    }
}
