//! The broker's side of durability: writing every record out for a
//! snapshot, and putting recovered records back before serving.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Broker, Order};
use crate::feed::{Change, History};
use crate::journal::record::{Record, StoredOrder};
use crate::journal::{Journal, JournalFailed};
use crate::model::{Arrival, OrderId, Seq, Stage, Stamp, Version};

/// How often a snapshot starts over when the history ring no longer reaches
/// back to where its copy began (writes outran it); then it fails.
const CUT_ATTEMPTS: usize = 3;

/// Changes made while a snapshot copied the records, by record id: the
/// state after the cut (None: removed).
struct Overrides<K, V>(HashMap<K, Option<V>>);

impl<K: std::hash::Hash + Eq + Copy + Ord, V> Overrides<K, V> {
    /// `copied` with every override applied, ascending by id.
    fn apply(mut self, copied: Vec<(K, V)>) -> Vec<(K, V)> {
        let mut all: Vec<(K, V)> = copied
            .into_iter()
            .filter_map(|(k, v)| match self.0.remove(&k) {
                Some(newer) => newer.map(|n| (k, n)),
                None => Some((k, v)),
            })
            .collect();
        all.extend(self.0.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        all.sort_unstable_by_key(|(k, _)| *k);
        all
    }
}

impl Broker {
    /// Hands every record to `out` for a snapshot: a header, every order,
    /// product, customer and template, and an end record; returns the
    /// snapshot's seq.
    ///
    /// A snapshot is a consistent cut: exactly the state after its seq, no
    /// effect of a later change. With S0 the last seq, every record is
    /// copied under its own lock (orders a map shard at a time, so writers
    /// wait at most for one shard's copy); a copy holds every change up to
    /// S0 and maybe some later ones. Then, under the sequencer lock, S1 is
    /// the last seq and the history ring's events (S0, S1] are applied over
    /// the copy in seq order (events carry full records), which brings every
    /// record to its state at S1: nothing in the copy is newer than S1, since
    /// a record is replaced under its lock before its commit's seq is
    /// visible. An atomic group commits under one sequencer lock, so S1 never
    /// falls inside one. If the history no longer reaches S0, it starts over,
    /// and fails after [`CUT_ATTEMPTS`] (the journal is kept).
    pub(crate) fn dump(&self, mut out: impl FnMut(&Record) -> io::Result<()>) -> io::Result<Seq> {
        let inner = &self.inner;
        // The copy is resolved record by record below: no word it uses is
        // reclaimed until it is written out.
        let _pin = self.pin();
        let mut attempt = 0;
        let (seq, orders, products, customers, templates, callbacks) = loop {
            attempt += 1;
            let s0 = self.last_seq();
            // Sized up front: growing it while a shard is locked would copy
            // everything copied so far under that lock.
            let mut orders: Vec<(OrderId, Order)> = Vec::with_capacity(inner.orders.len() + 4096);
            orders.extend(inner.orders.iter().map(|e| (*e.key(), e.value().clone())));
            let products = inner.products.list();
            let customers = inner.customers.list();
            let templates = inner.templates.list();
            let callbacks = self.callbacks();
            // S1 is read under the sequencer lock, so it never falls inside
            // a group; the events up to it are read a chunk at a time, so
            // writers never wait for more than one chunk's copy.
            let s1 = self.last_seq();
            let mut events = Vec::new();
            let mut lagged = None;
            let mut next = Seq(s0.0 + 1);
            while next <= s1 {
                match self.events_since(next, 1024) {
                    Ok(chunk) if !chunk.is_empty() => {
                        next = Seq(chunk.last().expect("not empty").seq.0 + 1);
                        events.extend(chunk.into_iter().take_while(|e| e.seq <= s1));
                    }
                    Ok(_) => break,
                    Err(e) => {
                        lagged = Some(e);
                        break;
                    }
                }
            }
            match lagged {
                None => {}
                Some(lagged) if attempt < CUT_ATTEMPTS => {
                    tracing::warn!(
                        from = s0.0,
                        oldest = lagged.oldest.0,
                        "snapshot: the change history no longer reaches back to the copy's \
                         start; starting over"
                    );
                    continue;
                }
                Some(lagged) => {
                    return Err(io::Error::other(format!(
                        "the change history (events.history_size) no longer reaches back to \
                         seq {} (oldest {}) after {attempt} attempts: changes came faster than \
                         the snapshot could copy",
                        s0.0 + 1,
                        lagged.oldest.0
                    )));
                }
            }
            let mut o = Overrides(HashMap::new());
            let mut p = Overrides(HashMap::new());
            let mut c = Overrides(HashMap::new());
            let mut t = Overrides(HashMap::new());
            let mut b = Overrides(HashMap::new());
            for event in events {
                match event.change {
                    Change::Order { id, order, .. } => drop(o.0.insert(id, Some(order))),
                    Change::OrderRemoved { id, .. } => drop(o.0.insert(id, None)),
                    Change::Product(r) => drop(p.0.insert(r.id, Some(Arc::unwrap_or_clone(r)))),
                    Change::ProductRemoved(id) => drop(p.0.insert(id, None)),
                    Change::Customer(r) => drop(c.0.insert(r.id, Some(Arc::unwrap_or_clone(r)))),
                    Change::CustomerRemoved(id) => drop(c.0.insert(id, None)),
                    Change::Template(r) => drop(t.0.insert(r.id, Some(Arc::unwrap_or_clone(r)))),
                    Change::TemplateRemoved(id) => drop(t.0.insert(id, None)),
                    Change::Callback(r) => drop(b.0.insert(r.id, Some(r))),
                    Change::CallbackEnded(id) => drop(b.0.insert(id, None)),
                }
            }
            let products = p.apply(products.into_iter().map(|r| (r.id, r)).collect());
            let customers = c.apply(customers.into_iter().map(|r| (r.id, r)).collect());
            let templates = t.apply(templates.into_iter().map(|r| (r.id, r)).collect());
            let callbacks = b.apply(callbacks.into_iter().map(|r| (r.id, r)).collect());
            break (
                s1,
                o.apply(orders),
                products,
                customers,
                templates,
                callbacks,
            );
        };
        // Read after the cut: they only grow, and must be above every id in it.
        out(&Record::Snapshot {
            seq,
            next_order_id: inner.next_order_id.load(Ordering::Relaxed),
            next_product_id: inner.products.next_id(),
            next_customer_id: inner.customers.next_id(),
            next_template_id: inner.templates.next_id(),
            next_callback_id: inner.callbacks.next_id.load(Ordering::Relaxed),
            retired: crate::journal::record::Retired {
                products: inner.products.retired(),
                customers: inner.customers.retired(),
                templates: inner.templates.retired(),
            },
        })?;
        let mut records = 0u64;
        let mut batch = Vec::with_capacity(1024);
        for chunk in orders.chunks(1024) {
            // Resolve texts a chunk at a time: the symbol table stays free
            // for writers while the records are written out.
            let symbols = self.symbols();
            batch.extend(chunk.iter().map(|(id, order)| Record::Order {
                seq,
                id: *id,
                order: StoredOrder::of(order, &symbols),
            }));
            drop(symbols);
            for record in batch.drain(..) {
                out(&record)?;
                records += 1;
            }
        }
        drop(orders);
        for (_, product) in products {
            out(&Record::Product {
                seq,
                product: Arc::new(product),
            })?;
            records += 1;
        }
        for (_, customer) in customers {
            out(&Record::Customer {
                seq,
                customer: Arc::new(customer),
            })?;
            records += 1;
        }
        for (_, template) in templates {
            out(&Record::Template {
                seq,
                template: Arc::new(template),
            })?;
            records += 1;
        }
        for (_, callback) in callbacks {
            out(&Record::Callback { seq, callback })?;
            records += 1;
        }
        out(&Record::End { records })?;
        Ok(seq)
    }

    /// Applies one recovered record. Only during recovery, before serving:
    /// the indexes are rebuilt by [`Broker::finish_restore`].
    pub(crate) fn restore(&self, record: Record) {
        let inner = &self.inner;
        let cap = crate::model::MAX_CHOSEN_ORDER_ID + 1;
        let order_seen = |id: OrderId| self.order_seen(id);
        match record {
            Record::Order { id, order, .. } => {
                order_seen(id);
                let order = self.restored(order);
                inner.orders.insert(id, order);
            }
            Record::OrderRemoved { id, .. } => {
                order_seen(id);
                inner.orders.remove(&id);
            }
            Record::Product { product, .. } => {
                inner.products.restore(Arc::unwrap_or_clone(product))
            }
            Record::ProductRemoved { id, .. } => inner.products.restore_removed(id),
            Record::Customer { customer, .. } => {
                inner.customers.restore(Arc::unwrap_or_clone(customer))
            }
            Record::CustomerRemoved { id, .. } => inner.customers.restore_removed(id),
            Record::Template { template, .. } => {
                inner.templates.restore(Arc::unwrap_or_clone(template))
            }
            Record::TemplateRemoved { id, .. } => inner.templates.restore_removed(id),
            Record::Callback { callback, .. } => inner.callbacks.put(callback),
            Record::CallbackEnded { id, .. } => drop(inner.callbacks.end(id)),
            Record::Snapshot {
                next_order_id,
                next_product_id,
                next_customer_id,
                next_template_id,
                next_callback_id,
                retired,
                ..
            } => {
                inner
                    .callbacks
                    .next_id
                    .fetch_max(next_callback_id, Ordering::Relaxed);
                inner.products.restore_retired(&retired.products);
                inner.customers.restore_retired(&retired.customers);
                inner.templates.restore_retired(&retired.templates);
                inner.templates.reserve_ids(next_template_id);
                inner
                    .next_order_id
                    .fetch_max(next_order_id.min(cap), Ordering::Relaxed);
                inner.products.reserve_ids(next_product_id);
                inner.customers.reserve_ids(next_customer_id);
            }
            Record::End { .. } => {}
            Record::Group { records } => {
                for record in records {
                    self.restore(record);
                }
            }
        }
    }

    /// An order id came from a record: assigned ids stay above it, never
    /// past the bound a client may choose (a journal from before the bound
    /// may hold a larger id: it keeps its order, and assignment skips taken
    /// ids).
    pub(super) fn order_seen(&self, id: OrderId) {
        let cap = crate::model::MAX_CHOSEN_ORDER_ID + 1;
        self.inner
            .next_order_id
            .fetch_max(id.0.saturating_add(1).min(cap), Ordering::Relaxed);
    }

    pub(super) fn restored(&self, stored: StoredOrder) -> Order {
        let symbols = &self.inner.symbols;
        let status = symbols.restore(&stored.status);
        let stage = self.stage_of(status);
        let mut shop = stored.shop;
        // Orders journaled before ledgers existed get the one they implied.
        if let Some(s) = shop
            .as_mut()
            .filter(|s| s.ledger.is_empty() && s.processed.is_some())
        {
            Arc::make_mut(s).ledger = crate::shop::Ledger::legacy(s, stage);
        }
        Order {
            status,
            orderbot_id: stored.orderbot_id.map(|b| symbols.restore(&b)),
            // Derived from the status under the current config.
            stage,
            version: Version(stored.version),
            created: Stamp::from(stored.created),
            updated: Stamp::from(stored.updated),
            stage_since: Stamp::from(stored.stage_since),
            shop,
        }
    }

    /// Rebuilds what derives from the records (stage views, order numbers,
    /// customers' orders) and continues the sequence after `last`.
    pub(crate) fn finish_restore(&self, last: Seq) {
        let inner = &self.inner;
        let mut stages: [BTreeSet<Arrival>; Stage::COUNT] = Default::default();
        for entry in inner.orders.iter() {
            let (id, order) = (*entry.key(), entry.value());
            stages[order.stage.index()].insert(Arrival::of(id, order));
            if let Some(shop) = &order.shop {
                inner.numbers.insert(shop.number.clone(), id);
                if let Some(customer) = shop.customer_id {
                    inner.by_customer.entry(customer).or_default().insert(id);
                }
            }
        }
        let mut seq = self.sequencer();
        seq.last = last;
        seq.stages = stages;
        seq.history = History::new(inner.history_size);
        drop(seq);
        inner.generations.bump_all();
        inner.notifier.publish(last);
    }

    /// From now on every committed event goes to the journal writer too.
    pub(crate) fn attach_journal(&self, writer: crate::journal::Queue, journal: Arc<Journal>) {
        self.sequencer().journal = Some(writer);
        let _ = self.inner.journal.set(journal);
    }

    /// The journal, once recovery attached it (never in memory mode).
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.journal.get()
    }

    /// Waits until every change published so far may be acknowledged (see
    /// [`Journal::durable`]); at once in memory mode.
    pub async fn durable(&self) -> Result<(), JournalFailed> {
        if let Some(cluster) = self.cluster() {
            return cluster.durable(self.published_seq()).await;
        }
        match self.journal() {
            Some(journal) => journal.durable(self.published_seq()).await,
            None => Ok(()),
        }
    }

    /// The cluster this node is part of (`cluster.nats_urls`), once joined.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.inner.cluster.get()
    }

    pub(crate) fn attach_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{NewItem, NewOrder};
    use crate::catalog::CustomerId;
    use crate::config::Config;
    use crate::money::Money;
    use crate::shop::Strategy;

    const STOCK: u64 = 1000;
    const BALANCE: Money = Money(10_000_000);

    /// A broker with one product, one customer and `orders` unprocessed
    /// orders of 2 units each.
    fn shop(orders: usize) -> (Broker, Vec<OrderId>) {
        let broker = Broker::new(&Config::default());
        let product = broker
            .create_product(None, "tea".into(), Money(250), STOCK)
            .unwrap();
        let customer = broker
            .create_customer(None, "ann".into(), None, BALANCE)
            .unwrap();
        let ids = (0..orders)
            .map(|_| {
                let new = NewOrder {
                    customer_id: Some(customer.id),
                    items: vec![NewItem {
                        product_id: product.id,
                        quantity: 2,
                    }],
                    ..Default::default()
                };
                broker.create_order(new).unwrap().order().unwrap().0
            })
            .collect();
        (broker, ids)
    }

    /// Stock and money are conserved within one snapshot: what its orders
    /// say was taken and charged is what its product and customer lost.
    fn assert_consistent(records: &[Record]) {
        let (mut taken, mut charged) = (0u64, 0i64);
        let (mut stock, mut balance) = (None, None::<(CustomerId, Money)>);
        for record in records {
            match record {
                Record::Order { order, .. } => {
                    let shop = order.shop.as_ref().unwrap();
                    if shop.processed.is_some() {
                        taken += shop.items.iter().map(|i| i.quantity).sum::<u64>();
                        charged += shop.totals.grand_total.0;
                    }
                }
                Record::Product { product, .. } => stock = Some(product.stock),
                Record::Customer { customer, .. } => {
                    balance = Some((customer.id, customer.balance))
                }
                _ => {}
            }
        }
        let (stock, (_, balance)) = (stock.unwrap(), balance.unwrap());
        assert_eq!(stock + taken, STOCK, "stock {stock}, taken {taken}");
        assert_eq!(balance.0 + charged, BALANCE.0, "balance {balance:?}");
    }

    #[test]
    fn a_snapshot_holds_no_part_of_a_change_made_while_it_is_written() {
        let (broker, ids) = shop(3);
        let mut records = Vec::new();
        let mut processed = false;
        let seq = broker
            .dump(|record| {
                // Once the first order is out, process one: a snapshot that
                // reads records as it goes would see its stock and balance
                // change but not the order.
                if matches!(record, Record::Order { .. }) && !processed {
                    processed = true;
                    broker.process(ids[0], Strategy::Adjust, None).unwrap();
                }
                records.push(record.clone());
                Ok(())
            })
            .unwrap();
        assert!(processed);
        assert!(matches!(records[0], Record::Snapshot { seq: s, .. } if s == seq));
        assert_consistent(&records);
        assert!(broker.last_seq() > seq, "the processing is after the cut");
    }

    #[test]
    fn a_snapshot_taken_while_orders_are_processed_is_a_consistent_cut() {
        let (broker, ids) = shop(300);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for id in &ids {
                    broker.process(*id, Strategy::Adjust, None).unwrap();
                }
            });
            let mut cuts = 0;
            while !writer.is_finished() || cuts == 0 {
                let mut records = Vec::new();
                let seq = broker
                    .dump(|r| {
                        records.push(r.clone());
                        Ok(())
                    })
                    .unwrap();
                assert_consistent(&records);
                // Every change up to the cut is in it.
                assert!(records.iter().all(|r| r.seq().is_none_or(|s| s == seq)));
                cuts += 1;
            }
        });
    }
}
