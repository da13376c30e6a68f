//! The callbacks owed to CPEE as durable state (`crate::cpee::record`):
//! each registration and each end is a change in the global sequence, so
//! the journal keeps them across a restart and the cluster's stream hands
//! them to every node; whoever delivers (the single node after recovery, a
//! new leader) takes them over (`Cpee::take_over`).
//!
//! The table is changed only under the sequencer lock, together with the
//! commit of its change, so a snapshot's cut holds exactly the callbacks
//! owed at its seq (see [`Broker::dump`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Broker;
use crate::cpee::Callback;
use crate::feed::{Change, Event};

/// The callbacks owed, by id, and the next id to give one.
#[derive(Default)]
pub(super) struct Callbacks {
    pub(super) owed: parking_lot::Mutex<BTreeMap<u64, Arc<Callback>>>,
    /// Above every id ever given (ended callbacks' too): an id names one
    /// callback, also after a restart or a failover.
    pub(super) next_id: std::sync::atomic::AtomicU64,
}

impl Callbacks {
    /// A callback's record was committed or recovered.
    pub(super) fn put(&self, callback: Arc<Callback>) {
        self.seen(callback.id);
        self.owed.lock().insert(callback.id, callback);
    }

    pub(super) fn end(&self, id: u64) -> bool {
        self.seen(id);
        self.owed.lock().remove(&id).is_some()
    }

    pub(super) fn seen(&self, id: u64) {
        self.next_id
            .fetch_max(id.saturating_add(1), Ordering::Relaxed);
    }
}

impl Broker {
    /// A fresh callback id (the first is 1).
    pub fn next_callback_id(&self) -> u64 {
        let callbacks = &self.inner.callbacks;
        callbacks.next_id.fetch_max(1, Ordering::Relaxed);
        callbacks.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a callback as owed (registered, or given an order).
    pub fn put_callback(&self, callback: Callback) -> Event {
        let callback = Arc::new(callback);
        let event = {
            let mut sequencer = self.sequencer();
            self.inner.callbacks.put(callback.clone());
            sequencer.commit(Change::Callback(callback))
        };
        self.published(Some(event.clone()));
        event
    }

    /// Changes a callback's record if it is still owed (`change` says the
    /// new record, or None to leave it): read and written under the
    /// sequencer lock, so an end committed meanwhile is never undone.
    pub fn change_callback(
        &self,
        id: u64,
        change: impl FnOnce(&Callback) -> Option<Callback>,
    ) -> Option<Event> {
        let event = {
            let mut sequencer = self.sequencer();
            let current = self.inner.callbacks.owed.lock().get(&id).cloned()?;
            let next = Arc::new(change(&current)?);
            self.inner.callbacks.put(next.clone());
            sequencer.commit(Change::Callback(next))
        };
        self.published(Some(event.clone()));
        Some(event)
    }

    /// Records that a callback is owed no more; None if it was not.
    pub fn end_callback(&self, id: u64) -> Option<Event> {
        let event = {
            let mut sequencer = self.sequencer();
            if !self.inner.callbacks.end(id) {
                return None;
            }
            sequencer.commit(Change::CallbackEnded(id))
        };
        self.published(Some(event.clone()));
        Some(event)
    }

    pub fn callback(&self, id: u64) -> Option<Arc<Callback>> {
        self.inner.callbacks.owed.lock().get(&id).cloned()
    }

    /// Every callback owed, oldest first.
    pub fn callbacks(&self) -> Vec<Arc<Callback>> {
        self.inner.callbacks.owed.lock().values().cloned().collect()
    }
}
