//! Products and customers: small tables of records, each behind its own
//! mutex (`DashMap<id, Arc<Mutex<T>>>`), so processing an order can lock
//! exactly the products and the customer it touches, in a fixed order.
//! Changes go through the broker, which gives each one its event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::money::Money;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct ProductId(pub u64);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct CustomerId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    /// Unit price.
    pub price: Money,
    /// Units in stock; processing never takes it below zero.
    pub stock: u64,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Customer {
    pub id: CustomerId,
    pub name: String,
    pub phone: Option<String>,
    /// What the customer can spend; processing needs it above zero.
    pub balance: Money,
    pub version: u32,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct TemplateId(pub u64);

/// A customer's saved order: what to order again with one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub id: TemplateId,
    pub customer_id: CustomerId,
    pub name: String,
    pub items: Vec<TemplateItem>,
    pub notes: String,
    pub version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateItem {
    pub product_id: ProductId,
    pub quantity: u64,
}

/// A record a [`Table`] can hold.
pub trait Record: Clone {
    type Id: Copy + Eq + Ord + std::hash::Hash;
    fn id(&self) -> Self::Id;
    fn from_raw(raw: u64) -> Self::Id;
    fn raw(id: Self::Id) -> u64;
}

impl Record for Product {
    type Id = ProductId;
    fn id(&self) -> ProductId {
        self.id
    }
    fn from_raw(raw: u64) -> ProductId {
        ProductId(raw)
    }
    fn raw(id: ProductId) -> u64 {
        id.0
    }
}

impl Record for Customer {
    type Id = CustomerId;
    fn id(&self) -> CustomerId {
        self.id
    }
    fn from_raw(raw: u64) -> CustomerId {
        CustomerId(raw)
    }
    fn raw(id: CustomerId) -> u64 {
        id.0
    }
}

impl Record for Template {
    type Id = TemplateId;
    fn id(&self) -> TemplateId {
        self.id
    }
    fn from_raw(raw: u64) -> TemplateId {
        TemplateId(raw)
    }
    fn raw(id: TemplateId) -> u64 {
        id.0
    }
}

/// One record's lock. `None` once the record is deleted, so a writer that
/// fetched the slot before the delete finds nothing to change.
pub type Slot<T> = Arc<Mutex<Option<T>>>;

/// Records by id, each behind its own lock. Ids are chosen by the caller or
/// assigned in increasing order.
pub struct Table<T: Record> {
    rows: DashMap<T::Id, Slot<T>>,
    /// Next id to hand out; always above every id in `rows`.
    next_id: AtomicU64,
    /// Ids of deleted records. Never given again: an order's ledger names
    /// its products and customer by id, so what it gives back must never
    /// reach a new record that took a deleted one's id.
    retired: parking_lot::Mutex<std::collections::BTreeSet<u64>>,
}

impl<T: Record> Default for Table<T> {
    fn default() -> Self {
        Table {
            rows: DashMap::new(),
            next_id: AtomicU64::new(1),
            retired: Default::default(),
        }
    }
}

/// Why [`Table::claim_id`] gave no id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// The id asked for is taken.
    Taken,
    /// The id asked for belonged to a deleted record (ids are never reused).
    Retired,
    /// No id is left to assign (see [`assign_id`]).
    Exhausted,
}

/// Hands out the id `next` holds and moves it on. `next` stays above every
/// id used, so the broker assigns ids up to `u64::MAX - 1` only: once an id
/// of `u64::MAX - 1` or `u64::MAX` is used, `next` is `u64::MAX` and no id
/// is left. None then, never a wrapped id.
pub fn assign_id(next: &AtomicU64) -> Option<u64> {
    next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
        .ok()
}

impl<T: Record> Table<T> {
    /// A fresh id, or `wanted` if it is free.
    pub fn claim_id(&self, wanted: Option<u64>) -> Result<T::Id, ClaimError> {
        match wanted {
            None => assign_id(&self.next_id)
                .map(T::from_raw)
                .ok_or(ClaimError::Exhausted),
            Some(raw) => {
                let id = T::from_raw(raw);
                if self.rows.contains_key(&id) {
                    return Err(ClaimError::Taken);
                }
                if self.retired.lock().contains(&raw) {
                    return Err(ClaimError::Retired);
                }
                // u64::MAX stays u64::MAX: none left to assign.
                self.next_id
                    .fetch_max(raw.saturating_add(1), Ordering::Relaxed);
                Ok(id)
            }
        }
    }

    /// Inserts `record` under its id and runs `then` while it is still
    /// locked (to commit its event first). False if the id is taken.
    pub fn insert_with(&self, record: T, then: impl FnOnce(&T)) -> bool {
        use dashmap::mapref::entry::Entry;
        let slot: Slot<T> = Arc::new(Mutex::new(None));
        let mut locked = slot.lock();
        match self.rows.entry(record.id()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(slot.clone());
                then(&record);
                *locked = Some(record);
                true
            }
        }
    }

    pub fn slot(&self, id: T::Id) -> Option<Slot<T>> {
        self.rows.get(&id).map(|r| r.value().clone())
    }

    pub fn get(&self, id: T::Id) -> Option<T> {
        self.slot(id).and_then(|s| s.lock().clone())
    }

    /// Forgets the slot; callers first empty it under its lock.
    pub fn forget(&self, id: T::Id) {
        self.retired.lock().insert(T::raw(id));
        self.rows.remove(&id);
    }

    /// The ids of deleted records, ascending (for a snapshot).
    pub fn retired(&self) -> Vec<u64> {
        self.retired.lock().iter().copied().collect()
    }

    /// Retires ids again at recovery.
    pub fn restore_retired(&self, ids: &[u64]) {
        self.retired.lock().extend(ids.iter().copied());
    }

    /// Every record, ascending by id.
    pub fn list(&self) -> Vec<T> {
        // Take the slots first: no record lock is taken under a map shard lock.
        let slots: Vec<Slot<T>> = self.rows.iter().map(|r| r.value().clone()).collect();
        let mut all: Vec<T> = slots.iter().filter_map(|s| s.lock().clone()).collect();
        all.sort_unstable_by_key(|r| r.id());
        all
    }

    /// Above every id used so far (`u64::MAX`: none left to assign).
    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Keeps assigned ids at or above `next` (recovery).
    pub fn reserve_ids(&self, next: u64) {
        self.next_id.fetch_max(next, Ordering::Relaxed);
    }

    /// Puts a recovered record in place, replacing any with its id.
    pub fn restore(&self, record: T) {
        self.reserve_ids(T::raw(record.id()).saturating_add(1));
        self.rows
            .insert(record.id(), Arc::new(Mutex::new(Some(record))));
    }

    /// Drops a record whose deletion was recovered.
    pub fn restore_removed(&self, id: T::Id) {
        self.reserve_ids(T::raw(id).saturating_add(1));
        self.retired.lock().insert(T::raw(id));
        self.rows.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(id: u64) -> Template {
        Template {
            id: TemplateId(id),
            customer_id: CustomerId(1),
            name: "t".into(),
            items: Vec::new(),
            notes: String::new(),
            version: 1,
        }
    }

    #[test]
    fn assigned_ids_never_wrap() {
        for last in [u64::MAX, u64::MAX - 1] {
            let table: Table<Template> = Table::default();
            table.restore(template(last));
            for _ in 0..3 {
                assert_eq!(table.claim_id(None), Err(ClaimError::Exhausted));
            }
            let table: Table<Product> = Table::default();
            assert_eq!(table.claim_id(Some(last)), Ok(ProductId(last)));
            assert_eq!(table.claim_id(None), Err(ClaimError::Exhausted));
            // A free id can still be chosen.
            assert_eq!(table.claim_id(Some(7)), Ok(ProductId(7)));
        }
        let table: Table<Customer> = Table::default();
        table.reserve_ids(u64::MAX - 2);
        assert_eq!(table.claim_id(None), Ok(CustomerId(u64::MAX - 2)));
        assert_eq!(table.claim_id(None), Ok(CustomerId(u64::MAX - 1)));
        assert_eq!(table.claim_id(None), Err(ClaimError::Exhausted));
        assert_eq!(table.next_id(), u64::MAX);
    }
}
