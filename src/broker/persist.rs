//! The broker's side of durability: writing every record out for a
//! snapshot, and putting recovered records back before serving.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Broker, Order};
use crate::feed::History;
use crate::journal::record::{Record, StoredOrder};
use crate::journal::{Journal, JournalFailed, Msg};
use crate::model::{OrderId, Seq, Stage, Stamp, Version};

impl Broker {
    /// Hands every record to `out` for a snapshot: a header, every order,
    /// product and customer, and an end record; returns the snapshot's seq.
    ///
    /// The seq is read first, then each record under its own lock (orders a
    /// map shard at a time). Every change up to that seq was made while its
    /// record was locked, so the snapshot holds it; later changes may be in
    /// too, and replaying them again changes nothing. Writers wait at most
    /// for one shard to be copied.
    pub(crate) fn dump(&self, mut out: impl FnMut(&Record) -> io::Result<()>) -> io::Result<Seq> {
        let seq = self.last_seq();
        let inner = &self.inner;
        out(&Record::Snapshot {
            seq,
            next_order_id: inner.next_order_id.load(Ordering::Relaxed),
            next_product_id: inner.products.next_id(),
            next_customer_id: inner.customers.next_id(),
            next_template_id: inner.templates.next_id(),
        })?;
        let mut records = 0u64;
        // Sized up front: growing it while a shard is locked would copy
        // everything copied so far under that lock.
        let mut orders: Vec<(OrderId, Order)> = Vec::with_capacity(inner.orders.len() + 4096);
        orders.extend(inner.orders.iter().map(|e| (*e.key(), e.value().clone())));
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
        for product in inner.products.list() {
            out(&Record::Product {
                seq,
                product: Arc::new(product),
            })?;
            records += 1;
        }
        for customer in inner.customers.list() {
            out(&Record::Customer {
                seq,
                customer: Arc::new(customer),
            })?;
            records += 1;
        }
        for template in inner.templates.list() {
            out(&Record::Template {
                seq,
                template: Arc::new(template),
            })?;
            records += 1;
        }
        out(&Record::End { records })?;
        Ok(seq)
    }

    /// Applies one recovered record. Only during recovery, before serving:
    /// the indexes are rebuilt by [`Broker::finish_restore`].
    pub(crate) fn restore(&self, record: Record) {
        let inner = &self.inner;
        let order_seen = |id: OrderId| {
            inner
                .next_order_id
                .fetch_max(id.0.saturating_add(1), Ordering::Relaxed);
        };
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
            Record::Snapshot {
                next_order_id,
                next_product_id,
                next_customer_id,
                next_template_id,
                ..
            } => {
                inner.templates.reserve_ids(next_template_id);
                inner
                    .next_order_id
                    .fetch_max(next_order_id, Ordering::Relaxed);
                inner.products.reserve_ids(next_product_id);
                inner.customers.reserve_ids(next_customer_id);
            }
            Record::End { .. } => {}
        }
    }

    fn restored(&self, stored: StoredOrder) -> Order {
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
        let mut stages: [BTreeSet<OrderId>; Stage::COUNT] = Default::default();
        for entry in inner.orders.iter() {
            let (id, order) = (*entry.key(), entry.value());
            stages[order.stage.index()].insert(id);
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
    pub(crate) fn attach_journal(
        &self,
        writer: crossbeam_channel::Sender<Msg>,
        journal: Arc<Journal>,
    ) {
        self.sequencer().journal = Some(writer);
        let _ = self.inner.journal.set(journal);
    }

    /// The journal, once recovery attached it (never in memory mode).
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.inner.journal.get()
    }

    /// With `fsync = "always"`, waits until every change published so far
    /// is on disk; at once otherwise.
    pub async fn durable(&self) -> Result<(), JournalFailed> {
        match self.journal().filter(|j| j.waits()) {
            Some(journal) => journal.durable(self.published_seq()).await,
            None => Ok(()),
        }
    }
}
