//! The change feed: every change to an order becomes one [`Event`] with the
//! next global sequence number. Events are kept in a bounded history ring
//! (owned by the broker's sequencer lock, so it is always in `seq` order) and
//! subscribers are woken through a `watch` channel after that lock is dropped.
//! Later parts (event streams, CPEE waiters, the journal) all read from here.

use std::collections::VecDeque;

use tokio::sync::watch;

use std::sync::Arc;

use crate::catalog::{Customer, CustomerId, Product, ProductId, Template, TemplateId};
use crate::model::{Millis, Order, OrderId, Seq, Stage, Stamp};

/// One change, with its place in the global sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: Seq,
    pub change: Change,
}

/// What changed: the record's full state right after the change, so a late
/// or repeated event is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `from` is the order's stage before the change (None: it is new), so a
    /// reader filtering by stage sees an order leave the stage too.
    Order {
        id: OrderId,
        order: Order,
        from: Option<Stage>,
        /// When the order entered the stage it came `from` (for time in stage).
        from_since: Stamp,
    },
    /// `evicted`: the order's final state when it left because it was
    /// finished and old (`limits.max_orders_kept`), not by a delete.
    OrderRemoved {
        id: OrderId,
        from: Stage,
        /// When it was created: its place in the stage's index.
        created: Millis,
        evicted: Option<Order>,
    },
    Product(Arc<Product>),
    ProductRemoved(ProductId),
    Customer(Arc<Customer>),
    CustomerRemoved(CustomerId),
    Template(Arc<Template>),
    TemplateRemoved(TemplateId),
    /// A callback owed to CPEE was registered or given an order (never in
    /// an event stream: only the journal, the cluster and `crate::cpee`
    /// read it).
    Callback(Arc<crate::cpee::Callback>),
    /// A callback is owed no more, by id.
    CallbackEnded(u64),
}

impl Event {
    /// The order this event carries, if it is an order change.
    pub fn order(&self) -> Option<(OrderId, &Order)> {
        match &self.change {
            Change::Order { id, order, .. } => Some((*id, order)),
            _ => None,
        }
    }
}

/// A reader asked for events older than the history still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged {
    /// The oldest sequence number the history can still replay.
    pub oldest: Seq,
}

/// The bounded ring of recent events. Lives inside the broker's sequencer lock.
pub(crate) struct History {
    events: VecDeque<Event>,
    capacity: usize,
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        History {
            events: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
        }
    }

    pub(crate) fn push(&mut self, event: Event) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Every event held, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Up to `max` events with `seq >= from`. `last` is the newest seq issued.
    pub(crate) fn since(&self, from: Seq, last: Seq, max: usize) -> Result<Vec<Event>, Lagged> {
        if from > last {
            return Ok(Vec::new());
        }
        let oldest = self.events.front().map_or(Seq(last.0 + 1), |e| e.seq);
        if from < oldest {
            return Err(Lagged { oldest });
        }
        // The ring holds consecutive seqs, so the offset is direct.
        let start = (from.0 - oldest.0) as usize;
        Ok(self.events.range(start..).take(max).cloned().collect())
    }
}

/// Wakes subscribers when the newest sequence number grows.
pub(crate) struct Notifier(watch::Sender<Seq>);

impl Notifier {
    pub(crate) fn new(start: Seq) -> Self {
        Notifier(watch::Sender::new(start))
    }

    /// Called after the sequencer lock is released; writers may finish out of
    /// order, so the value only ever moves forward.
    pub(crate) fn publish(&self, seq: Seq) {
        self.0.send_if_modified(|current| {
            if seq > *current {
                *current = seq;
                true
            } else {
                false
            }
        });
    }

    pub(crate) fn current(&self) -> Seq {
        *self.0.borrow()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Seq> {
        self.0.subscribe()
    }
}

/// Lets a task that follows the feed sleep while nobody needs it: whoever
/// needs it calls `want` with the first seq it must see, and the task
/// follows from the earliest such seq. While it sleeps, writers wake nobody.
#[derive(Default)]
pub struct Demand {
    from: parking_lot::Mutex<Option<Seq>>,
    notify: tokio::sync::Notify,
}

impl Demand {
    /// Asks the follower to see every event from `from` on.
    pub fn want(&self, from: Seq) {
        let mut wanted = self.from.lock();
        *wanted = Some(wanted.map_or(from, |w| w.min(from)));
        drop(wanted);
        self.notify.notify_one();
    }

    /// Waits until someone wants the feed; the seq to follow from.
    pub async fn wanted(&self) -> Seq {
        loop {
            if let Some(from) = self.from.lock().take() {
                return from;
            }
            self.notify.notified().await;
        }
    }
}
