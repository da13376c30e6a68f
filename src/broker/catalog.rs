//! Products and customers: create, change, delete, each one an event in the
//! global sequence, committed while the record is locked.

use std::sync::Arc;

use super::{Broker, BrokerError};
use super::{NewItem, NewOrder};
use crate::catalog::{
    ClaimError, Customer, CustomerId, Product, ProductId, Record, Table, Template, TemplateId,
    TemplateItem,
};
use crate::feed::{Change, Event};
use crate::model::Version;
use crate::money::Money;

/// Fields of a product to set; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct ProductFields {
    pub name: Option<String>,
    pub price: Option<Money>,
    pub stock: Option<u64>,
}

/// Fields of a customer to set; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct CustomerFields {
    pub name: Option<String>,
    pub phone: Option<Option<String>>,
    pub balance: Option<Money>,
}

/// How a record type is published and versioned.
trait Published: Record {
    fn changed(record: Arc<Self>) -> Change;
    fn removed(id: Self::Id) -> Change;
    fn version_mut(&mut self) -> &mut u32;
    fn not_found(id: Self::Id) -> BrokerError;
    /// What the records are called, for errors.
    const KIND: &'static str;
}

impl Published for Product {
    const KIND: &'static str = "product";
    fn changed(record: Arc<Self>) -> Change {
        Change::Product(record)
    }
    fn removed(id: ProductId) -> Change {
        Change::ProductRemoved(id)
    }
    fn version_mut(&mut self) -> &mut u32 {
        &mut self.version
    }
    fn not_found(id: ProductId) -> BrokerError {
        BrokerError::ProductNotFound(id.0)
    }
}

impl Published for Customer {
    const KIND: &'static str = "customer";
    fn changed(record: Arc<Self>) -> Change {
        Change::Customer(record)
    }
    fn removed(id: CustomerId) -> Change {
        Change::CustomerRemoved(id)
    }
    fn version_mut(&mut self) -> &mut u32 {
        &mut self.version
    }
    fn not_found(id: CustomerId) -> BrokerError {
        BrokerError::CustomerNotFound(id.0)
    }
}

impl Published for Template {
    const KIND: &'static str = "template";
    fn changed(record: Arc<Self>) -> Change {
        Change::Template(record)
    }
    fn removed(id: TemplateId) -> Change {
        Change::TemplateRemoved(id)
    }
    fn version_mut(&mut self) -> &mut u32 {
        &mut self.version
    }
    fn not_found(_: TemplateId) -> BrokerError {
        BrokerError::TemplateNotFound
    }
}

impl Broker {
    /// Saves a customer's order to repeat: the customer and every product
    /// must exist now (items are checked like a new order's).
    pub fn create_template(
        &self,
        customer_id: CustomerId,
        name: String,
        items: Vec<NewItem>,
        notes: String,
    ) -> Result<Template, BrokerError> {
        check_name(&name)?;
        if notes.len() > 1000 {
            return Err(BrokerError::TextTooLong {
                field: "notes",
                limit: 1000,
            });
        }
        if items.is_empty() {
            return Err(BrokerError::Invalid("items must not be empty".into()));
        }
        if self.customer(customer_id).is_none() {
            return Err(BrokerError::CustomerNotFound(customer_id.0));
        }
        self.price_items(&items)?;
        let items = items
            .iter()
            .map(|i| TemplateItem {
                product_id: i.product_id,
                quantity: i.quantity,
            })
            .collect();
        self.insert(&self.inner.templates, None, |id| Template {
            id,
            customer_id,
            name,
            items,
            notes,
            version: 1,
        })
    }

    /// Every template, or one customer's; ascending by id.
    pub fn templates(&self, customer: Option<CustomerId>) -> Vec<Template> {
        let mut all = self.inner.templates.list();
        all.retain(|t| customer.is_none_or(|c| t.customer_id == c));
        all
    }

    pub fn template(&self, id: TemplateId) -> Option<Template> {
        self.inner.templates.get(id)
    }

    pub fn delete_template(&self, id: TemplateId) -> Result<Template, BrokerError> {
        self.remove(&self.inner.templates, id)
    }

    /// Orders a template again: current prices, stock checked, like any new
    /// order (a product deleted since → 422 naming the item).
    pub fn order_template(&self, id: TemplateId) -> Result<Event, BrokerError> {
        let template = self.template(id).ok_or(BrokerError::TemplateNotFound)?;
        self.create_order(NewOrder {
            customer_id: Some(template.customer_id),
            items: template
                .items
                .iter()
                .map(|i| NewItem {
                    product_id: i.product_id,
                    quantity: i.quantity,
                })
                .collect(),
            notes: template.notes,
            table_number: None,
            channel: "template".into(),
            check_stock: true,
            take_stock: false,
            number: None,
            scheduled_for: None,
            delivery: None,
        })
    }

    pub fn products(&self) -> Vec<Product> {
        self.inner.products.list()
    }

    pub fn product(&self, id: ProductId) -> Option<Product> {
        self.inner.products.get(id)
    }

    pub fn create_product(
        &self,
        id: Option<u64>,
        name: String,
        price: Money,
        stock: u64,
    ) -> Result<Product, BrokerError> {
        check_product(&name, price)?;
        self.check_amount("price", price, false)?;
        self.check_quantity("stock", stock, 0)?;
        self.insert(&self.inner.products, id, |id| Product {
            id,
            name,
            price,
            stock,
            version: 1,
        })
    }

    pub fn update_product(
        &self,
        id: ProductId,
        fields: ProductFields,
    ) -> Result<Product, BrokerError> {
        if let Some(price) = fields.price {
            self.check_amount("price", price, false)?;
        }
        if let Some(stock) = fields.stock {
            self.check_quantity("stock", stock, 0)?;
        }
        self.change(&self.inner.products, id, |p| {
            if let Some(name) = fields.name {
                p.name = name;
            }
            if let Some(price) = fields.price {
                p.price = price;
            }
            if let Some(stock) = fields.stock {
                p.stock = stock;
            }
            check_product(&p.name, p.price)
        })
    }

    pub fn delete_product(&self, id: ProductId) -> Result<Product, BrokerError> {
        self.remove(&self.inner.products, id)
    }

    pub fn customers(&self) -> Vec<Customer> {
        self.inner.customers.list()
    }

    pub fn customer(&self, id: CustomerId) -> Option<Customer> {
        self.inner.customers.get(id)
    }

    pub fn create_customer(
        &self,
        id: Option<u64>,
        name: String,
        phone: Option<String>,
        balance: Money,
    ) -> Result<Customer, BrokerError> {
        check_name(&name)?;
        self.check_amount("balance", balance, true)?;
        self.insert(&self.inner.customers, id, |id| Customer {
            id,
            name,
            phone,
            balance,
            version: 1,
        })
    }

    pub fn update_customer(
        &self,
        id: CustomerId,
        fields: CustomerFields,
    ) -> Result<Customer, BrokerError> {
        if let Some(balance) = fields.balance {
            self.check_amount("balance", balance, true)?;
        }
        self.change(&self.inner.customers, id, |c| {
            if let Some(name) = fields.name {
                c.name = name;
            }
            if let Some(phone) = fields.phone {
                c.phone = phone;
            }
            if let Some(balance) = fields.balance {
                c.balance = balance;
            }
            check_name(&c.name)
        })
    }

    pub fn delete_customer(&self, id: CustomerId) -> Result<Customer, BrokerError> {
        self.remove(&self.inner.customers, id)
    }

    fn insert<T: Published>(
        &self,
        table: &Table<T>,
        wanted: Option<u64>,
        make: impl FnOnce(T::Id) -> T,
    ) -> Result<T, BrokerError> {
        let taken = || BrokerError::IdTaken(wanted.unwrap_or_default());
        let id = table.claim_id(wanted).map_err(|e| match e {
            ClaimError::Taken => taken(),
            ClaimError::Retired => BrokerError::Conflict(format!(
                "id {} belonged to a deleted {}; ids are never reused, so what orders give \
                 back for it cannot reach a new record; leave out the id to get a fresh one",
                wanted.unwrap_or_default(),
                T::KIND
            )),
            ClaimError::Exhausted => BrokerError::IdsExhausted(T::KIND),
        })?;
        let record = make(id);
        let mut event = None;
        let inserted = table.insert_with(record.clone(), |r| {
            event = Some(self.sequencer().commit(T::changed(Arc::new(r.clone()))));
        });
        if !inserted {
            return Err(taken());
        }
        self.published(event);
        Ok(record)
    }

    /// Changes one record under its lock: `edit` works on a copy, which
    /// replaces the record only if `edit` accepts it.
    fn change<T: Published>(
        &self,
        table: &Table<T>,
        id: T::Id,
        edit: impl FnOnce(&mut T) -> Result<(), BrokerError>,
    ) -> Result<T, BrokerError> {
        let slot = table.slot(id).ok_or_else(|| T::not_found(id))?;
        let mut locked = slot.lock();
        let current = locked.as_ref().ok_or_else(|| T::not_found(id))?;
        let mut next = current.clone();
        edit(&mut next)?;
        let version = Version(*next.version_mut())
            .next()
            .ok_or(BrokerError::VersionExhausted)?;
        *next.version_mut() = version.0;
        let event = self.sequencer().commit(T::changed(Arc::new(next.clone())));
        *locked = Some(next.clone());
        drop(locked);
        self.published(Some(event));
        Ok(next)
    }

    fn remove<T: Published>(&self, table: &Table<T>, id: T::Id) -> Result<T, BrokerError> {
        let slot = table.slot(id).ok_or_else(|| T::not_found(id))?;
        let mut locked = slot.lock();
        let record = locked.take().ok_or_else(|| T::not_found(id))?;
        let event = self.sequencer().commit(T::removed(id));
        table.forget(id);
        drop(locked);
        self.published(Some(event));
        Ok(record)
    }

    /// Wakes subscribers once a change's locks are released.
    pub(super) fn published(&self, last: Option<Event>) {
        if let Some(event) = last {
            self.inner.notifier.publish(event.seq);
        }
    }
}

fn check_name(name: &str) -> Result<(), BrokerError> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(BrokerError::Invalid(
            "name must be 1 to 200 bytes of text".into(),
        ));
    }
    Ok(())
}

fn check_product(name: &str, price: Money) -> Result<(), BrokerError> {
    check_name(name)?;
    if price < Money::ZERO {
        return Err(BrokerError::Invalid("price must not be negative".into()));
    }
    Ok(())
}
