//! Stock and balance taken for a shop order: processing (the store
//! tutorial's rules: stock per strategy, the total charged to the balance),
//! and stock taken when an order is placed (the Order Management API's
//! rule). Both lock the order, then its products by ascending id, then the
//! customer, and commit every change under one sequencer lock as one
//! atomic group, so stock and balances add up exactly under any
//! concurrency. Units an order holds are in its ledger: processing takes
//! only what it does not hold yet, and a cancellation or deletion gives
//! back what it holds.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use parking_lot::MutexGuard;

use super::{Broker, BrokerError, ProcessRefusal, check_version};
use crate::catalog::{Customer, Product, ProductId, Slot};
use crate::feed::{Change, Event};
use crate::model::{Millis, Order, OrderId, Stage, Stamp, Version};
use crate::shop::{Item, ShopOrder, Strategy, allocate};
use crate::symbols::Sym;

impl Broker {
    /// Places a new shop order under the next free id and takes its items'
    /// stock with it, all or nothing: `OutOfStock` (400) when an item asks
    /// for more than is in stock. The units are in the order's ledger as
    /// taken, so processing it later takes no more, and cancelling or
    /// deleting it puts them back.
    pub(super) fn place_taking_stock(
        &self,
        status: Sym,
        shop: ShopOrder,
    ) -> Result<Event, BrokerError> {
        let now = Millis::now();
        let wanted =
            super::fulfilment::units_of(shop.items.iter().map(|i| (i.product_id, i.quantity)))?;
        loop {
            let id = crate::catalog::assign_id(&self.inner.next_order_id)
                .map(OrderId)
                .ok_or(BrokerError::IdsExhausted("order"))?;
            let Entry::Vacant(vacant) = self.locked(|| self.inner.orders.entry(id)) else {
                // A seed client used this id meanwhile: take the next.
                continue;
            };
            // After the order, the products by ascending id (as processing).
            let slots = self.product_slots(wanted.keys())?;
            let mut products: Vec<MutexGuard<'_, Option<Product>>> =
                slots.iter().map(|s| s.lock()).collect();
            let mut stock = HashMap::new();
            for (pid, guard) in wanted.keys().zip(&products) {
                let product = guard.as_ref().ok_or(BrokerError::ProductNotFound(pid.0))?;
                stock.insert(*pid, product.stock);
            }
            allocate(&shop.items, &stock, Strategy::Reject).map_err(BrokerError::OutOfStock)?;
            let mut new_products = Vec::new();
            for guard in &products {
                let product = guard.as_ref().expect("checked above");
                new_products.push(Product {
                    stock: product.stock - wanted[&product.id],
                    version: Version(product.version)
                        .next()
                        .ok_or(BrokerError::VersionExhausted)?
                        .0,
                    ..product.clone()
                });
            }
            let mut shop = shop;
            shop.ledger.take(&wanted);
            shop.number = self.number_for(id, &shop.number)?;
            if let Some(cid) = shop.customer_id {
                self.inner.by_customer.entry(cid).or_default().insert(id);
            }
            let order = self.stamp(None, Order::new(status, None, Some(Arc::new(shop))), now)?;
            let stage = order.stage;
            let mut entry = vacant.insert(order.clone());
            let event = self.commit_together(
                id,
                None,
                &mut entry,
                order,
                &mut products,
                new_products,
                None,
            );
            drop(products);
            self.inner.generations.bump(None, Some(stage));
            drop(entry);
            self.published(Some(event.clone()));
            return Ok(event);
        }
    }

    /// Processes an order (the store tutorial's rules): never twice; the
    /// customer's balance must be above zero; short items follow `strategy`;
    /// then stock is taken, the items priced, the total charged to the
    /// balance and `processed` set — all or nothing.
    pub fn process(
        &self,
        id: OrderId,
        strategy: Strategy,
        expected: Option<Version>,
    ) -> Result<Event, BrokerError> {
        let now = Millis::now();
        let mut entry = self
            .locked(|| self.inner.orders.get_mut(&id))
            .ok_or(BrokerError::OrderNotFound)?;
        check_version(&entry, expected)?;
        let shop = entry
            .shop
            .clone()
            .ok_or_else(|| BrokerError::Conflict("order has no items to process".into()))?;
        let refuse = |why| Err(BrokerError::ProcessRefused(why));
        if shop.processed.is_some() {
            return refuse(ProcessRefusal::AlreadyProcessed);
        }
        if entry.stage == Stage::Cancelled {
            return refuse(ProcessRefusal::Cancelled);
        }
        crate::shop::check_move(&shop, entry.stage, entry.stage, false)
            .map_err(BrokerError::Conflict)?;
        let Some(customer_id) = shop.customer_id else {
            return refuse(ProcessRefusal::NoCustomer);
        };
        let customer_slot = self
            .inner
            .customers
            .slot(customer_id)
            .ok_or(BrokerError::CustomerNotFound(customer_id.0))?;

        // Lock the products by ascending id, then the customer.
        let product_ids: std::collections::BTreeSet<ProductId> =
            shop.items.iter().map(|i| i.product_id).collect();
        let slots = self.product_slots(product_ids.iter())?;
        let mut products: Vec<MutexGuard<'_, Option<Product>>> =
            slots.iter().map(|s| s.lock()).collect();
        let mut customer = customer_slot.lock();
        let balance = customer
            .as_ref()
            .ok_or(BrokerError::CustomerNotFound(customer_id.0))?
            .balance;
        if balance <= crate::money::Money::ZERO {
            return refuse(ProcessRefusal::Balance);
        }
        // Units taken when the order was placed are this order's already:
        // they count as in stock for it, and are not taken twice.
        let held = shop.ledger.units_out();
        let mut stock = HashMap::new();
        for (pid, guard) in product_ids.iter().zip(&products) {
            let product = guard.as_ref().ok_or(BrokerError::ProductNotFound(pid.0))?;
            let own = held.get(pid).copied().unwrap_or(0);
            let available = crate::money::add_units(product.stock, own).ok_or_else(|| {
                BrokerError::Invalid(format!("stock of product {} would overflow", pid.0))
            })?;
            stock.insert(*pid, available);
        }
        let quantities = allocate(&shop.items, &stock, strategy)
            .map_err(|short| BrokerError::ProcessRefused(ProcessRefusal::Rejected(short)))?;
        let items: Vec<Item> = shop
            .items
            .iter()
            .zip(&quantities)
            .map(|(item, &quantity)| Item {
                quantity,
                ..item.clone()
            })
            .collect();
        let totals = self.totals(&items, shop.delivery.as_ref())?;
        let new_balance = balance
            .checked_sub(totals.grand_total)
            .ok_or_else(|| BrokerError::Invalid("balance would overflow".into()))?;
        let taken = super::fulfilment::units_of(items.iter().map(|i| (i.product_id, i.quantity)))?;

        // Every check passed: build the new records, then commit them together.
        let mut new_products = Vec::new();
        for guard in &products {
            let product = guard.as_ref().expect("checked above");
            let units = taken.get(&product.id).copied().unwrap_or(0);
            let own = held.get(&product.id).copied().unwrap_or(0);
            if units != own {
                let version = Version(product.version)
                    .next()
                    .ok_or(BrokerError::VersionExhausted)?;
                // units <= stock + own: the allocation saw that much.
                new_products.push(Product {
                    stock: product.stock + own - units,
                    version: version.0,
                    ..product.clone()
                });
            }
        }
        let mut new_customer = customer.clone().expect("checked above");
        new_customer.balance = new_balance;
        new_customer.version = Version(new_customer.version)
            .next()
            .ok_or(BrokerError::VersionExhausted)?
            .0;
        let mut next_shop = ShopOrder {
            items,
            totals,
            processed: Some(now),
            ..(*shop).clone()
        };
        next_shop.ledger.charge(totals.grand_total, taken, now);
        let next = self.stamp(
            Some(&entry),
            Order {
                shop: Some(Arc::new(next_shop)),
                ..entry.clone()
            },
            now,
        )?;
        let before = entry.stage;
        let event = self.commit_together(
            id,
            Some((entry.stage, entry.stage_since)),
            &mut entry,
            next,
            &mut products,
            new_products,
            Some((&mut customer, new_customer)),
        );
        drop(customer);
        drop(products);
        self.inner.generations.bump(Some(before), Some(entry.stage));
        drop(entry);
        self.published(Some(event.clone()));
        Ok(event)
    }

    /// Commits, under one sequencer lock, new states of locked products and
    /// of a locked customer, then the order's; each record is replaced as
    /// its event is committed, so readers never see one without the other.
    /// The events are one atomic group: one journal frame, never split by a
    /// snapshot's cut.
    /// `from`: the order's stage and when it entered it; None for an order
    /// being placed (already in the map, locked, as `next`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_together(
        &self,
        id: OrderId,
        from: Option<(Stage, Stamp)>,
        entry: &mut Order,
        next: Order,
        locked: &mut [MutexGuard<'_, Option<Product>>],
        products: Vec<Product>,
        customer: Option<(&mut MutexGuard<'_, Option<Customer>>, Customer)>,
    ) -> Event {
        // One atomic group: the journal writes it as one frame.
        self.sequencer().group(|seq| {
            commit_products(seq, locked, products);
            if let Some((slot, customer)) = customer {
                seq.commit(Change::Customer(Arc::new(customer.clone())));
                **slot = Some(customer);
            }
            *entry = next.clone();
            seq.commit(Change::Order {
                id,
                order: next,
                from: from.map(|(stage, _)| stage),
                from_since: from.map_or(Stamp::default(), |(_, since)| since),
            })
        })
    }

    /// The slots of these products (ascending ids give the lock order), or
    /// `ProductNotFound` for the first that does not exist.
    fn product_slots<'a>(
        &self,
        ids: impl Iterator<Item = &'a ProductId>,
    ) -> Result<Vec<Slot<Product>>, BrokerError> {
        ids.map(|pid| {
            self.inner
                .products
                .slot(*pid)
                .ok_or(BrokerError::ProductNotFound(pid.0))
        })
        .collect()
    }

    /// Commits the removal of a locked order that holds `held` units (taken
    /// at its placement) with those units back in stock, as one atomic
    /// group; products deleted since are skipped.
    pub(super) fn commit_removal_restocking(
        &self,
        id: OrderId,
        order: &Order,
        held: &crate::shop::Units,
    ) -> Result<Event, BrokerError> {
        let slots: Vec<Slot<Product>> = held
            .keys()
            .filter_map(|pid| self.inner.products.slot(*pid))
            .collect();
        let mut products: Vec<MutexGuard<'_, Option<Product>>> =
            slots.iter().map(|s| s.lock()).collect();
        let restocked = super::fulfilment::restocked(&products, held)?;
        Ok(self.sequencer().group(|seq| {
            commit_products(seq, &mut products, restocked);
            seq.commit(Change::OrderRemoved {
                id,
                from: order.stage,
                created: order.created.get(),
                evicted: None,
            })
        }))
    }
}

/// Commits new states of locked products, replacing each as its event is
/// committed.
fn commit_products(
    seq: &mut super::Sequencer,
    locked: &mut [MutexGuard<'_, Option<Product>>],
    products: Vec<Product>,
) {
    for product in products {
        let slot = locked
            .iter_mut()
            .find(|g| g.as_ref().is_some_and(|p| p.id == product.id))
            .expect("the caller locked every product it changes");
        seq.commit(Change::Product(Arc::new(product.clone())));
        **slot = Some(product);
    }
}
