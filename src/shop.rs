//! Shop orders: the details an order carries beyond the robot bar's status
//! word (items, customer, money, payment, history), and the pure rules of
//! pricing and processing. Locking and publishing live in `broker::shop`.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::{CustomerId, ProductId};
use crate::model::{Millis, Stage};
use crate::money::{Money, Rate};

mod ledger;

pub use ledger::{GiveBack, Ledger, Units, check_move};

/// The details of an order created through the shop APIs. Shared by `Arc`
/// between the map and the events; a change makes a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShopOrder {
    /// Unique human code, e.g. "FR9TL74P".
    pub number: String,
    pub customer_id: Option<CustomerId>,
    pub items: Vec<Item>,
    pub notes: String,
    pub table_number: Option<String>,
    pub channel: String,
    pub payment_status: PaymentStatus,
    pub payment_method: Option<String>,
    #[serde(flatten)]
    pub totals: Totals,
    /// When stock and balance were charged; null until then.
    pub processed: Option<Millis>,
    /// Every status the order had, with when it got it.
    pub history: Vec<HistoryEntry>,
    /// When a scheduled order becomes new (`POST /orders/scheduled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Millis>,
    /// Where and how the order is delivered, for its delivery fee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// A return the customer asked for after completion, and where it stands.
    #[serde(rename = "return", default, skip_serializing_if = "Option::is_none")]
    pub return_request: Option<Return>,
    /// The customer's rating after completion, given once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    /// Where the assigned delivery partner last was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_location: Option<Location>,
    /// What the order moved of money and stock (see [`Ledger`]).
    #[serde(default, skip_serializing_if = "Ledger::is_empty")]
    pub ledger: Ledger,
    /// Free-form details an intake call brought (drink, size, name…).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "as_map",
        deserialize_with = "from_map"
    )]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub details: Vec<(String, String)>,
}

impl ShopOrder {
    /// This order with one more history entry, stamped now.
    pub fn with_entry(&self, status: &str, reason: Option<&str>) -> ShopOrder {
        let mut next = self.clone();
        next.history.push(HistoryEntry {
            status: status.to_string(),
            at: Millis::now(),
            reason: reason.map(str::to_string),
        });
        next
    }
}

fn as_map<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// Reads `details` back in the order it was written (the journal uses it).
fn from_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of texts")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    d.deserialize_map(Pairs)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    pub product_id: ProductId,
    /// The product's name when the order was made.
    pub name: String,
    pub quantity: u64,
    /// The product's price when the order was made.
    pub unit_price: Money,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub total: Money,
    pub tax: Money,
    pub service_charge: Money,
    /// The delivery fee (0 without delivery); in `grand_total`, untaxed.
    #[serde(default)]
    pub delivery_fee: Money,
    pub grand_total: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub status: String,
    pub at: Millis,
    /// Why, when the change has a reason (a cancellation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The Order Status API's payment states: 1 unpaid, 2 paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Unpaid = 1,
    Paid = 2,
}

impl Serialize for PaymentStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl utoipa::PartialSchema for PaymentStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .enum_values(Some([1, 2]))
            .description(Some("1 unpaid, 2 paid."))
            .into()
    }
}

impl ToSchema for PaymentStatus {}

impl utoipa::PartialSchema for Location {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        LocationJson::schema()
    }
}

impl ToSchema for Location {}

impl<'de> Deserialize<'de> for PaymentStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            1 => Ok(PaymentStatus::Unpaid),
            2 => Ok(PaymentStatus::Paid),
            n => Err(serde::de::Error::custom(format!(
                "unknown payment status {n}"
            ))),
        }
    }
}

/// Status words the broker itself uses (lifecycle and delivery flow), with
/// their stage; the config may not put them in another stage.
pub fn reserved_words() -> impl Iterator<Item = (&'static str, Stage)> {
    Lifecycle::WORDS.into_iter().chain(Fulfilment::WORDS)
}

/// The delivery flow of `PUT /orders/{id}/status`: each step only to the
/// next. The names are the API's; the status words are what the order shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fulfilment {
    /// Waiting for its time; it becomes new then (nothing moves it before).
    Scheduled,
    New,
    Confirmed,
    Preparing,
    OutForDelivery,
    Delivered,
    Cancelled,
}

/// The Order Status API shows `channel`, `paymentMethod` and
/// `deliveryStatus` as numbers. A number a client sends is kept as it came
/// (as text: `"2"`); these words stand for numbers too (case does not
/// matter). Any other word shows as null there and as itself elsewhere.
pub const CHANNEL_CODES: [(&str, u64); 6] = [
    ("web", 1),
    ("app", 2),
    ("pos", 3),
    ("phone", 4),
    ("cpee", 5),
    ("template", 6),
];
pub const PAYMENT_METHOD_CODES: [(&str, u64); 3] = [("cash", 1), ("card", 2), ("online", 3)];

/// The number `text` stands for: itself if it is one, else its word's.
pub fn code_of(text: &str, words: &[(&str, u64)]) -> Option<u64> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    words
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(text))
        .map(|(_, code)| *code)
}

impl Fulfilment {
    /// `deliveryStatus` on the Order Status API: 1 pending (scheduled, new
    /// or confirmed), 2 preparing, 3 out for delivery, 4 delivered, 5
    /// cancelled.
    pub fn delivery_code(self) -> u8 {
        match self {
            Fulfilment::Scheduled | Fulfilment::New | Fulfilment::Confirmed => 1,
            Fulfilment::Preparing => 2,
            Fulfilment::OutForDelivery => 3,
            Fulfilment::Delivered => 4,
            Fulfilment::Cancelled => 5,
        }
    }

    /// (API name, status word) of each state.
    const NAMES: [(&'static str, &'static str); 7] = [
        ("scheduled", "Scheduled"),
        ("new", "New"),
        ("confirmed", "Confirmed"),
        ("preparing", "Preparing"),
        ("out_for_delivery", "Out for delivery"),
        ("delivered", "Delivered"),
        ("cancelled", "Cancelled"),
    ];

    /// Status words the flow owns beyond the lifecycle's, with their stage;
    /// reserved like the lifecycle words.
    pub const WORDS: [(&'static str, Stage); 4] = [
        ("Scheduled", Stage::Scheduled),
        ("Preparing", Stage::InProgress),
        ("Out for delivery", Stage::InProgress),
        ("Delivered", Stage::Completed),
    ];

    const ALL: [Fulfilment; 7] = [
        Fulfilment::Scheduled,
        Fulfilment::New,
        Fulfilment::Confirmed,
        Fulfilment::Preparing,
        Fulfilment::OutForDelivery,
        Fulfilment::Delivered,
        Fulfilment::Cancelled,
    ];

    pub fn parse(name: &str) -> Option<Fulfilment> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize].0
    }

    pub fn word(self) -> &'static str {
        Self::NAMES[self as usize].1
    }

    /// Where an order with this status word and stage stands in the flow.
    /// Another word of the in-progress stage counts as confirmed.
    pub fn of(status: &str, stage: Stage) -> Fulfilment {
        match stage {
            Stage::Scheduled => Fulfilment::Scheduled,
            Stage::New => Fulfilment::New,
            Stage::Completed => Fulfilment::Delivered,
            Stage::Cancelled => Fulfilment::Cancelled,
            Stage::InProgress => Self::ALL
                .into_iter()
                .find(|f| f.word() == status)
                .unwrap_or(Fulfilment::Confirmed),
        }
    }

    /// The one state this one may move to.
    pub fn next(self) -> Option<Fulfilment> {
        match self {
            Fulfilment::New => Some(Fulfilment::Confirmed),
            Fulfilment::Confirmed => Some(Fulfilment::Preparing),
            Fulfilment::Preparing => Some(Fulfilment::OutForDelivery),
            Fulfilment::OutForDelivery => Some(Fulfilment::Delivered),
            Fulfilment::Scheduled | Fulfilment::Delivered | Fulfilment::Cancelled => None,
        }
    }
}

/// A return of some of a completed order's items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Return {
    pub status: ReturnStatus,
    pub items: Vec<ReturnItem>,
    pub reason: String,
    /// What the refund credits: the items at their captured prices, with
    /// tax and service charge at the configured rates.
    pub amount: Money,
    pub requested_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReturnItem {
    pub product_id: ProductId,
    pub quantity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReturnStatus {
    Requested,
    Approved,
    Rejected,
    Received,
    Refunded,
}

impl ReturnStatus {
    pub const ALL: [ReturnStatus; 5] = [
        ReturnStatus::Requested,
        ReturnStatus::Approved,
        ReturnStatus::Rejected,
        ReturnStatus::Received,
        ReturnStatus::Refunded,
    ];

    pub fn name(self) -> &'static str {
        ["requested", "approved", "rejected", "received", "refunded"][self as usize]
    }

    pub fn parse(name: &str) -> Option<ReturnStatus> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a return may go from `self` to `to`: requested → approved or
    /// rejected; approved → received; received → refunded.
    pub fn may_become(self, to: ReturnStatus) -> bool {
        matches!(
            (self, to),
            (
                ReturnStatus::Requested,
                ReturnStatus::Approved | ReturnStatus::Rejected
            ) | (ReturnStatus::Approved, ReturnStatus::Received)
                | (ReturnStatus::Received, ReturnStatus::Refunded)
        )
    }

    /// The order history's word for reaching this state.
    pub fn history_word(self) -> &'static str {
        match self {
            ReturnStatus::Requested => "Return requested",
            ReturnStatus::Approved => "Return approved",
            ReturnStatus::Rejected => "Return rejected",
            ReturnStatus::Received => "Return received",
            ReturnStatus::Refunded => "Refunded",
        }
    }
}

/// A customer's feedback on a completed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Feedback {
    /// 1 to 5.
    pub rating: u8,
    pub comment: String,
    pub at: Millis,
}

/// Where a delivery partner last was: micro-degrees, so the order stays `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "LocationJson", try_from = "LocationJson")]
pub struct Location {
    lat_e6: i32,
    lng_e6: i32,
    pub at: Millis,
}

/// A location as JSON: degrees, and when it was reported.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(as = Location)]
pub(crate) struct LocationJson {
    lat: f64,
    lng: f64,
    at: Millis,
}

impl Location {
    /// None unless -90 ≤ lat ≤ 90 and -180 ≤ lng ≤ 180.
    pub fn new(lat: f64, lng: f64, at: Millis) -> Option<Location> {
        let ok = |v: f64, max: f64| v.is_finite() && v.abs() <= max;
        (ok(lat, 90.0) && ok(lng, 180.0)).then(|| Location {
            lat_e6: (lat * 1e6).round() as i32,
            lng_e6: (lng * 1e6).round() as i32,
            at,
        })
    }

    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e6) / 1e6
    }

    pub fn lng(&self) -> f64 {
        f64::from(self.lng_e6) / 1e6
    }
}

impl From<Location> for LocationJson {
    fn from(l: Location) -> Self {
        LocationJson {
            lat: l.lat(),
            lng: l.lng(),
            at: l.at,
        }
    }
}

impl TryFrom<LocationJson> for Location {
    type Error = String;
    fn try_from(j: LocationJson) -> Result<Self, String> {
        Location::new(j.lat, j.lng, j.at).ok_or_else(|| "location out of range".into())
    }
}

/// The four lifecycle states of the Order Status API. They are the stages:
/// New ↔ new, Confirmed ↔ in_progress, Complete ↔ completed, Cancelled ↔ cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    New,
    Confirmed,
    Complete,
    Cancelled,
}

impl Lifecycle {
    /// The status words; they are reserved and always mean their stage.
    pub const WORDS: [(&'static str, Stage); 4] = [
        ("New", Stage::New),
        ("Confirmed", Stage::InProgress),
        ("Complete", Stage::Completed),
        ("Cancelled", Stage::Cancelled),
    ];

    pub fn of(stage: Stage) -> Lifecycle {
        match stage {
            Stage::New | Stage::Scheduled => Lifecycle::New,
            Stage::InProgress => Lifecycle::Confirmed,
            Stage::Completed => Lifecycle::Complete,
            Stage::Cancelled => Lifecycle::Cancelled,
        }
    }

    /// Numeric status code: 1, 10, 20, 30.
    pub fn code(self) -> u8 {
        match self {
            Lifecycle::New => 1,
            Lifecycle::Confirmed => 10,
            Lifecycle::Complete => 20,
            Lifecycle::Cancelled => 30,
        }
    }

    pub fn text(self) -> &'static str {
        Self::WORDS[self as usize].0
    }
}

impl Totals {
    /// Prices the items: total, then tax and service charge on the total.
    /// None if the sums overflow.
    pub fn of(items: &[Item], tax: Rate, service: Rate) -> Option<Totals> {
        let total = Self::items_total(items)?;
        let tax = total.at_rate(tax);
        let service_charge = total.at_rate(service);
        let grand_total = total.checked_add(tax)?.checked_add(service_charge)?;
        Some(Totals {
            total,
            tax,
            service_charge,
            delivery_fee: Money::ZERO,
            grand_total,
        })
    }

    /// What the items cost: the sum of quantity × unit price. None past
    /// `Money::MAX`.
    pub fn items_total(items: &[Item]) -> Option<Money> {
        let mut total = Money::ZERO;
        for item in items {
            total = total.checked_add(item.unit_price.times(item.quantity)?)?;
        }
        Some(total)
    }

    /// These totals with a delivery fee added to the grand total.
    pub fn with_fee(self, fee: Money) -> Option<Totals> {
        Some(Totals {
            delivery_fee: fee,
            grand_total: self.grand_total.checked_add(fee)?,
            ..self
        })
    }
}

/// Where an order is delivered, as the order was created with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Distance in metres, for per-km fees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The surcharges of the time the order was placed.
    pub surcharge: Money,
}

/// The delivery fee rules of `[delivery]`, parsed.
#[derive(Debug, Clone, Default)]
pub struct FeeRules {
    base: Money,
    per_km: Money,
    max_distance_m: u32,
    zones: Vec<(String, Money)>,
    free_above: Option<Money>,
    /// (from, to, amount), minutes of the UTC day.
    surcharges: Vec<(u32, u32, Money)>,
}

impl FeeRules {
    pub fn from_config(c: &crate::config::DeliveryFees) -> Result<FeeRules, String> {
        let money = |key: &str, text: &str| {
            Money::parse(text)
                .ok()
                .filter(|m| *m >= Money::ZERO)
                .ok_or_else(|| {
                    format!("delivery.{key} must be an amount like \"2.50\" (got {text:?})")
                })
        };
        let minutes = |text: &str| -> Result<u32, String> {
            let bad = || format!("delivery.surcharges: {text:?} is not a time HH:MM");
            let (h, m) = text.split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 || text.len() != 5 {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let mut zones = Vec::new();
        for zone in &c.zones {
            if zone.name.trim().is_empty() || zones.iter().any(|(n, _)| *n == zone.name) {
                return Err(format!(
                    "delivery.zones: zone names must be unique and not empty ({:?})",
                    zone.name
                ));
            }
            zones.push((zone.name.clone(), money("zones.fee", &zone.fee)?));
        }
        let mut surcharges = Vec::new();
        for s in &c.surcharges {
            let (from, to) = (minutes(&s.from)?, minutes(&s.to)?);
            if from == to {
                return Err(format!(
                    "delivery.surcharges: the window {} to {} is empty",
                    s.from, s.to
                ));
            }
            surcharges.push((from, to, money("surcharges.amount", &s.amount)?));
        }
        let free_above = money("free_above", &c.free_above)?;
        Ok(FeeRules {
            base: money("base_fee", &c.base_fee)?,
            per_km: money("per_km", &c.per_km)?,
            max_distance_m: c.max_distance_km.saturating_mul(1000),
            zones,
            free_above: (free_above > Money::ZERO).then_some(free_above),
            surcharges,
        })
    }

    /// The delivery of an order placed at `at`, to a distance or a zone.
    pub fn delivery(
        &self,
        distance_km: Option<f64>,
        zone: Option<&str>,
        at: Millis,
    ) -> Result<Delivery, String> {
        let distance_m = match (distance_km, zone) {
            (Some(_), Some(_)) => return Err("delivery takes distance_km or zone, not both".into()),
            (None, None) => return Err("delivery needs distance_km or zone".into()),
            (Some(km), None) => {
                let m = km * 1000.0;
                if !(m.is_finite() && m >= 0.0 && m <= f64::from(self.max_distance_m)) {
                    return Err(format!(
                        "distance_km must be 0 to {} km",
                        self.max_distance_m / 1000
                    ));
                }
                Some(m.round() as u32)
            }
            (None, Some(zone)) => {
                if !self.zones.iter().any(|(n, _)| n == zone) {
                    let known: Vec<&str> = self.zones.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(format!(
                        "unknown zone {zone:?} (zones: {})",
                        known.join(", ")
                    ));
                }
                None
            }
        };
        let minute = ((at.0 / 60_000) % (24 * 60)) as u32;
        let mut surcharge = Money::ZERO;
        for (from, to, amount) in &self.surcharges {
            let inside = if from < to {
                (*from..*to).contains(&minute)
            } else {
                minute >= *from || minute < *to
            };
            if inside {
                surcharge = surcharge
                    .checked_add(*amount)
                    .ok_or("surcharges overflow")?;
            }
        }
        Ok(Delivery {
            distance_m,
            zone: zone.map(str::to_string),
            surcharge,
        })
    }

    /// The fee of a delivery for an order whose items total `total`.
    pub fn fee(&self, delivery: &Delivery, total: Money) -> Option<Money> {
        let free = self.free_above.is_some_and(|f| total >= f);
        let fee = if free {
            Money::ZERO
        } else if let Some(zone) = &delivery.zone {
            // A zone that left the config since: no zone fee.
            self.zones
                .iter()
                .find(|(n, _)| n == zone)
                .map_or(Money::ZERO, |(_, f)| *f)
        } else {
            let metres = u64::from(delivery.distance_m.unwrap_or(0));
            // per_km × metres / 1000, rounded half up to the cent.
            let cents = (i128::from(self.per_km.0) * i128::from(metres) + 500) / 1000;
            self.base.checked_add(Money(i64::try_from(cents).ok()?))?
        };
        fee.checked_add(delivery.surcharge)
    }
}

/// What to do with an item that asks for more than is in stock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Lower the quantity to what is in stock.
    #[default]
    Adjust,
    /// Refuse the whole order; nothing changes.
    Reject,
    /// Set the item's quantity to 0.
    Ignore,
}

/// An item that asked for more than was in stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Shortage {
    pub product_id: ProductId,
    pub requested: u64,
    pub available: u64,
}

/// Applies `strategy` to `items` against `stock` (units per product),
/// consuming stock item by item so two items of one product share it.
/// Returns the new quantities, or the shortages when `Reject` refuses.
pub fn allocate(
    items: &[Item],
    stock: &HashMap<ProductId, u64>,
    strategy: Strategy,
) -> Result<Vec<u64>, Vec<Shortage>> {
    let mut left = stock.clone();
    let mut quantities = Vec::with_capacity(items.len());
    let mut short = Vec::new();
    for item in items {
        let available = left.get(&item.product_id).copied().unwrap_or(0);
        let quantity = if item.quantity <= available {
            item.quantity
        } else {
            short.push(Shortage {
                product_id: item.product_id,
                requested: item.quantity,
                available,
            });
            match strategy {
                Strategy::Adjust => available,
                Strategy::Reject | Strategy::Ignore => 0,
            }
        };
        left.insert(item.product_id, available - quantity);
        quantities.push(quantity);
    }
    if strategy == Strategy::Reject && !short.is_empty() {
        return Err(short);
    }
    Ok(quantities)
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "product {} (requested {}, in stock {})",
            self.product_id.0, self.requested, self.available
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A shop order with nothing in it, for rules that look at its state.
    pub(crate) fn empty_shop() -> ShopOrder {
        ShopOrder {
            number: String::new(),
            customer_id: None,
            items: Vec::new(),
            notes: String::new(),
            table_number: None,
            channel: String::new(),
            payment_status: PaymentStatus::Unpaid,
            payment_method: None,
            totals: Totals::default(),
            processed: None,
            history: Vec::new(),
            scheduled_for: None,
            delivery: None,
            return_request: None,
            feedback: None,
            delivery_location: None,
            ledger: Ledger::default(),
            details: Vec::new(),
        }
    }

    fn item(product: u64, quantity: u64, cents: i64) -> Item {
        Item {
            product_id: ProductId(product),
            name: format!("p{product}"),
            quantity,
            unit_price: Money(cents),
        }
    }

    #[test]
    fn totals_price_items_then_rates() {
        let items = [item(1, 3, 250), item(2, 1, 1999)];
        let t = Totals::of(
            &items,
            Rate::parse("0.1").unwrap(),
            Rate::parse("0.05").unwrap(),
        )
        .unwrap();
        assert_eq!(t.total, Money(2749));
        assert_eq!(t.tax, Money(275)); // 274.9
        assert_eq!(t.service_charge, Money(137)); // 137.45
        assert_eq!(t.grand_total, Money(2749 + 275 + 137));
        assert_eq!(Totals::of(&[item(1, u64::MAX, 2)], Rate(0), Rate(0)), None);
    }

    #[test]
    fn strategies_against_shared_stock() {
        let items = [item(1, 4, 100), item(2, 2, 100), item(1, 3, 100)];
        let stock = HashMap::from([(ProductId(1), 5), (ProductId(2), 9)]);
        assert_eq!(
            allocate(&items, &stock, Strategy::Adjust),
            Ok(vec![4, 2, 1])
        );
        assert_eq!(
            allocate(&items, &stock, Strategy::Ignore),
            Ok(vec![4, 2, 0])
        );
        assert_eq!(
            allocate(&items, &stock, Strategy::Reject),
            Err(vec![Shortage {
                product_id: ProductId(1),
                requested: 3,
                available: 1
            }])
        );
        let enough = HashMap::from([(ProductId(1), 7), (ProductId(2), 2)]);
        assert_eq!(
            allocate(&items, &enough, Strategy::Reject),
            Ok(vec![4, 2, 3])
        );
    }
}

#[cfg(test)]
mod fee_tests {
    use super::*;
    use crate::config::{DeliveryFees, Surcharge, Zone};

    fn rules(edit: impl FnOnce(&mut DeliveryFees)) -> Result<FeeRules, String> {
        let mut c = DeliveryFees {
            base_fee: "2.00".into(),
            per_km: "0.50".into(),
            zones: vec![Zone {
                name: "center".into(),
                fee: "1.50".into(),
            }],
            free_above: "20".into(),
            surcharges: vec![Surcharge {
                from: "22:00".into(),
                to: "06:00".into(),
                amount: "1.00".into(),
            }],
            ..DeliveryFees::default()
        };
        edit(&mut c);
        FeeRules::from_config(&c)
    }

    const MIN: u64 = 60_000;

    #[test]
    fn base_distance_zone_free_and_night_surcharge() {
        let r = rules(|_| {}).unwrap();
        let noon = Millis(12 * 60 * MIN);
        let night = Millis(23 * 60 * MIN);
        let early = Millis(24 * 60 * MIN + 5 * 60 * MIN + 59 * MIN);
        let far = r.delivery(Some(3.2), None, noon).unwrap();
        assert_eq!(r.fee(&far, Money(500)), Some(Money(360)));
        let zone = r.delivery(None, Some("center"), noon).unwrap();
        assert_eq!(r.fee(&zone, Money(500)), Some(Money(150)));
        assert_eq!(
            r.fee(&far, Money(2000)),
            Some(Money::ZERO),
            "free from 20.00"
        );
        let late = r.delivery(Some(1.0), None, night).unwrap();
        assert_eq!(late.surcharge, Money(100));
        assert_eq!(
            r.fee(&late, Money(2500)),
            Some(Money(100)),
            "the surcharge stays"
        );
        assert_eq!(
            r.delivery(Some(0.0), None, early).unwrap().surcharge,
            Money(100)
        );
        assert_eq!(
            r.delivery(Some(0.0), None, Millis(6 * 60 * MIN))
                .unwrap()
                .surcharge,
            Money::ZERO
        );
        assert!(r.delivery(Some(1.0), Some("center"), noon).is_err());
        assert!(r.delivery(None, None, noon).is_err());
        assert!(r.delivery(None, Some("moon"), noon).is_err());
        assert!(r.delivery(Some(51.0), None, noon).is_err());
        assert!(r.delivery(Some(-1.0), None, noon).is_err());
        assert!(r.delivery(Some(f64::NAN), None, noon).is_err());
    }

    #[test]
    fn bad_rules_are_refused_by_key() {
        let err = |edit: fn(&mut DeliveryFees)| rules(edit).unwrap_err();
        assert!(err(|c| c.base_fee = "two".into()).contains("delivery.base_fee"));
        assert!(err(|c| c.per_km = "-1".into()).contains("delivery.per_km"));
        assert!(err(|c| c.free_above = "1.234".into()).contains("delivery.free_above"));
        assert!(err(|c| c.surcharges[0].from = "25:00".into()).contains("HH:MM"));
        assert!(err(|c| c.surcharges[0].to = "22:00".into()).contains("empty"));
        assert!(err(|c| c.zones.push(c.zones[0].clone())).contains("unique"));
    }
}
