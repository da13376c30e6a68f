//! A cluster follower's write path: records the leader committed (read from
//! the JetStream stream, see `crate::cluster`) applied to this node's state
//! with the seqs the leader gave them, so views, the board, `/events` and
//! event ids are the same on every node.
//!
//! Only a node that does not commit changes of its own applies records
//! here (a follower, or a node catching up before it leads): the leader's
//! own sequencer issues seqs, and a record applied here takes its seq from
//! the leader. Each record replaces what it names, as recovery does
//! (`Broker::restore`), and then goes through the sequencer like a change
//! made here: the stage indexes, the history, subscribers, generations.

use std::sync::atomic::Ordering;

use super::{Broker, Sequencer};
use crate::feed::Change;
use crate::journal::record::Record;
use crate::model::{OrderId, Seq, Stamp};

impl Broker {
    /// Applies the records of one committed change (a group whole, under
    /// the sequencer lock, so no reader of the history sees half of it).
    /// Records at or below the newest seq here are skipped (already
    /// applied, e.g. the leader's own). Returns the newest seq the message
    /// holds (this node has everything up to it).
    pub(crate) fn apply_replicated(&self, record: Record) -> Seq {
        let records = match record {
            Record::Group { records } => records,
            other => vec![other],
        };
        let mut sequencer = self.sequencer();
        let mut newest = Seq(0);
        for record in records {
            let Some(seq) = record.seq() else {
                continue;
            };
            newest = newest.max(seq);
            if seq <= sequencer.last {
                continue;
            }
            self.apply_one(&mut sequencer, seq, record);
        }
        let last = sequencer.last;
        drop(sequencer);
        self.inner.notifier.publish(last);
        newest.min(last)
    }

    fn apply_one(&self, sequencer: &mut Sequencer, seq: Seq, record: Record) {
        let inner = &self.inner;
        let order_seen = |id: OrderId| self.order_seen(id);
        let change = match record {
            Record::Order { id, order, .. } => {
                order_seen(id);
                let order = self.restored(order);
                let before = inner.orders.insert(id, order.clone());
                if let Some(before) = &before {
                    self.unindex(id, before);
                }
                if let Some(shop) = &order.shop {
                    inner.numbers.insert(shop.number.clone(), id);
                    if let Some(customer) = shop.customer_id {
                        inner.by_customer.entry(customer).or_default().insert(id);
                    }
                }
                inner
                    .generations
                    .bump(before.as_ref().map(|b| b.stage), Some(order.stage));
                Change::Order {
                    id,
                    from: before.as_ref().map(|b| b.stage),
                    from_since: before.as_ref().map_or(Stamp::default(), |b| b.stage_since),
                    order,
                }
            }
            Record::OrderRemoved { id, evicted, .. } => {
                order_seen(id);
                let Some((_, before)) = inner.orders.remove(&id) else {
                    // Not here (it never was): only the seq moves on.
                    sequencer.last = seq;
                    return;
                };
                self.unindex(id, &before);
                inner.generations.bump(Some(before.stage), None);
                Change::OrderRemoved {
                    id,
                    from: before.stage,
                    created: before.created.get(),
                    evicted: evicted.map(|o| self.restored(o)),
                }
            }
            Record::Product { product, .. } => {
                inner.products.restore((*product).clone());
                Change::Product(product)
            }
            Record::ProductRemoved { id, .. } => {
                inner.products.restore_removed(id);
                Change::ProductRemoved(id)
            }
            Record::Customer { customer, .. } => {
                inner.customers.restore((*customer).clone());
                Change::Customer(customer)
            }
            Record::CustomerRemoved { id, .. } => {
                inner.customers.restore_removed(id);
                Change::CustomerRemoved(id)
            }
            Record::Template { template, .. } => {
                inner.templates.restore((*template).clone());
                Change::Template(template)
            }
            Record::TemplateRemoved { id, .. } => {
                inner.templates.restore_removed(id);
                Change::TemplateRemoved(id)
            }
            Record::Callback { callback, .. } => {
                inner.callbacks.put(callback.clone());
                Change::Callback(callback)
            }
            Record::CallbackEnded { id, .. } => {
                inner.callbacks.end(id);
                Change::CallbackEnded(id)
            }
            Record::Snapshot { .. } | Record::End { .. } | Record::Group { .. } => return,
        };
        // The leader gave this change `seq`: the sequencer issues it, and
        // it goes to no queue (it is in the stream already).
        sequencer.last = Seq(seq.0 - 1);
        let queue = sequencer.journal.take();
        sequencer.commit(change);
        sequencer.journal = queue;
    }

    /// Drops an order's shop number and customer link (before it is
    /// replaced or removed).
    fn unindex(&self, id: OrderId, order: &crate::model::Order) {
        if let Some(shop) = &order.shop {
            self.inner.numbers.remove(&shop.number);
            if let Some(cid) = shop.customer_id
                && let Some(mut ids) = self.inner.by_customer.get_mut(&cid)
            {
                ids.remove(&id);
            }
        }
    }

    /// Where this node's own commits go from now on: the cluster's
    /// publisher (leading) or a queue that tells the node its memory went
    /// ahead of the stream (not leading). Returns the newest seq committed
    /// before the switch, read under the same lock, so no commit falls
    /// between the two.
    pub(crate) fn set_replication(&self, queue: crate::journal::Queue) -> Seq {
        let mut sequencer = self.sequencer();
        sequencer.journal = Some(queue);
        sequencer.last
    }

    /// Event ids are `<epoch>-<seq>`: in a cluster the epoch names the
    /// stream, so an id means the same change on every node.
    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.inner.epoch.store(epoch, Ordering::Relaxed);
    }
}
