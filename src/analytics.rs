//! Analytics from maintained aggregates: a task folds every change event
//! into small tables (revenue per hour, spend per customer, delivery times
//! per partner, time in stage per orderbot, order and cancellation counts),
//! so a request reads those tables and never scans the orders. At start the
//! tables are rebuilt once from the recovered orders (their histories give
//! the times); time in stage is only known for changes seen since start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::broker::Broker;
use crate::catalog::CustomerId;
use crate::feed::{Change, Event};
use crate::model::{Millis, Order, OrderId, Seq, Stage};
use crate::money::Money;
use crate::symbols::SymbolsReader;

const HOUR_MS: u64 = 3_600_000;
/// How often the follower folds what has queued up.
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Durations in log-spaced buckets (5 % wide): percentiles within 5 %, in
/// constant memory however many are recorded.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    sum_ms: u64,
}

impl Histogram {
    fn bucket(ms: u64) -> u32 {
        ((ms.max(1) as f64).ln() / 1.05f64.ln()) as u32
    }

    pub fn record(&mut self, ms: u64) {
        *self.buckets.entry(Self::bucket(ms)).or_insert(0) += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    /// The `p`-th percentile (0..=1) in ms: the upper bound of its bucket.
    pub fn percentile(&self, p: f64) -> u64 {
        let rank = ((self.count as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return 1.05f64.powi(*bucket as i32 + 1).round() as u64;
            }
        }
        0
    }

    fn summary(&self) -> Durations {
        let secs = |ms: u64| ms as f64 / 1000.0;
        Durations {
            count: self.count,
            mean_secs: secs(self.sum_ms / self.count.max(1)),
            p50_secs: secs(self.percentile(0.5)),
            p90_secs: secs(self.percentile(0.9)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Durations {
    pub count: u64,
    pub mean_secs: f64,
    pub p50_secs: f64,
    pub p90_secs: f64,
}

/// Most orderbots or delivery partners the tables name one by one; the
/// rest are counted together under [`OTHERS`], so ever new ids cannot grow
/// them without bound.
pub const MAX_NAMED: usize = 10_000;

/// The name the orderbots and partners past [`MAX_NAMED`] share.
pub const OTHERS: &str = "(others)";

/// `name` if the table knows it or has room for it, else [`OTHERS`].
fn named<K: std::hash::Hash + Eq, V>(
    table: &HashMap<K, V>,
    key: impl Fn(String) -> K,
    name: String,
) -> K {
    let wanted = key(name);
    if table.len() < MAX_NAMED || table.contains_key(&wanted) {
        wanted
    } else {
        key(OTHERS.to_string())
    }
}

#[derive(Default)]
struct Tables {
    /// Money the ledgers moved, by the hour it moved in: charges (processing)
    /// minus give-backs (cancellations) and refunds.
    revenue: BTreeMap<u64, Money>,
    /// (spent, completed orders) per customer.
    customers: HashMap<CustomerId, (Money, u64)>,
    /// Confirmed → delivered, per partner.
    delivery: HashMap<String, Histogram>,
    /// Time in each stage, per orderbot (None: no orderbot).
    stages: HashMap<(Option<String>, Stage), Histogram>,
    created: u64,
    cancelled: u64,
    completed: u64,
    /// What each order's ledger had when last counted (charged, given back,
    /// refunded), so a change counts only what it moved.
    counted: HashMap<OrderId, [Money; 3]>,
    /// Times the fold fell behind the history and skipped events.
    missed: u64,
}

pub struct Analytics {
    tables: Mutex<Tables>,
}

impl Default for Analytics {
    fn default() -> Self {
        Analytics {
            tables: Mutex::new(Tables::default()),
        }
    }
}

impl Analytics {
    /// Rebuilds the tables from the broker's orders, once, at start, while
    /// nothing else writes (before the broker is ready); the seq to follow from.
    pub fn rebuild(&self, broker: &Broker) -> Seq {
        let last = broker.last_seq();
        let _pin = broker.pin();
        let orders = broker.all_orders();
        let symbols = broker.symbols();
        let mut tables = self.tables.lock();
        *tables = Tables::default();
        for (id, order) in &orders {
            tables.rebuild(*id, order, &symbols);
        }
        Seq(last.0 + 1)
    }

    /// Folds every change from `from` on. It takes what has queued up every
    /// `FOLD_EVERY` rather than waking for each change, so writers pay
    /// nothing for it; the tables trail the orders by about that much.
    pub async fn follow(self: Arc<Self>, broker: Broker, from: Seq) {
        let mut feed = broker.subscribe(from);
        loop {
            if !feed.ready().await {
                return;
            }
            let taken = {
                let pin = broker.pin();
                feed.take(&pin).map(|events| self.fold(&broker, &events))
            };
            if let Err(lagged) = taken {
                self.tables.lock().missed += 1;
                feed = broker.subscribe(lagged.oldest);
            }
            tokio::time::sleep(FOLD_EVERY).await;
        }
    }

    fn fold(&self, broker: &Broker, events: &[Event]) {
        let symbols = broker.symbols();
        let mut tables = self.tables.lock();
        for event in events {
            if let Change::Order {
                id,
                order,
                from,
                from_since,
            } = &event.change
            {
                tables.changed(*id, order, *from, from_since.get(), &symbols);
            }
        }
    }

    /// Revenue per bucket (hour or day) over [from, to), with its total.
    pub fn revenue(&self, from: Millis, to: Millis, bucket_ms: u64) -> (Vec<(u64, Money)>, Money) {
        let tables = self.tables.lock();
        let mut buckets: BTreeMap<u64, Money> = BTreeMap::new();
        let first = from.0 - from.0 % bucket_ms;
        let mut at = first;
        while at < to.0 {
            buckets.insert(at, Money::ZERO);
            at += bucket_ms;
        }
        let mut total = Money::ZERO;
        for (hour, amount) in tables.revenue.range(first..to.0) {
            if *hour + HOUR_MS <= from.0 {
                continue;
            }
            let slot = buckets
                .entry(hour - hour % bucket_ms)
                .or_insert(Money::ZERO);
            *slot = slot.checked_add(*amount).unwrap_or(*slot);
            total = total.checked_add(*amount).unwrap_or(total);
        }
        (buckets.into_iter().collect(), total)
    }

    /// Confirmed → delivered per partner, by partner.
    pub fn delivery(&self) -> Vec<(String, Durations)> {
        let tables = self.tables.lock();
        let mut out: Vec<(String, Durations)> = tables
            .delivery
            .iter()
            .map(|(p, h)| (p.clone(), h.summary()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Time in stage per orderbot and stage.
    pub fn stage_times(&self) -> Vec<(Option<String>, Stage, Durations)> {
        let tables = self.tables.lock();
        let mut out: Vec<(Option<String>, Stage, Durations)> = tables
            .stages
            .iter()
            .map(|((bot, stage), h)| (bot.clone(), *stage, h.summary()))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.index()).cmp(&(&b.0, b.1.index())));
        out
    }

    /// The customers who spent most: (customer, spent, completed orders).
    pub fn top_customers(&self, limit: usize) -> Vec<(CustomerId, Money, u64)> {
        let tables = self.tables.lock();
        let mut all: Vec<(CustomerId, Money, u64)> = tables
            .customers
            .iter()
            .map(|(c, (spent, n))| (*c, *spent, *n))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }

    /// (orders created, cancelled, completed, times events were missed).
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let t = self.tables.lock();
        (t.created, t.cancelled, t.completed, t.missed)
    }
}

impl Tables {
    /// Counts an order as it stands (rebuild at start).
    fn rebuild(&mut self, id: OrderId, order: &Order, symbols: &SymbolsReader<'_>) {
        self.created += 1;
        match order.stage {
            Stage::Cancelled => self.cancelled += 1,
            Stage::Completed => self.completed_order(order, order.stage_since.get(), symbols),
            _ => {}
        }
        self.ledger(id, order);
    }

    /// Folds one change.
    fn changed(
        &mut self,
        id: OrderId,
        order: &Order,
        from: Option<Stage>,
        from_since: Millis,
        symbols: &SymbolsReader<'_>,
    ) {
        let Some(from) = from else {
            self.created += 1;
            return;
        };
        if from != order.stage {
            let spent = order.updated.get().0.saturating_sub(from_since.0);
            let key = match order.orderbot_id {
                Some(b) => named(
                    &self.stages,
                    |n| (Some(n), from),
                    symbols.text(b).to_string(),
                ),
                None => (None, from),
            };
            self.stages.entry(key).or_default().record(spent);
            match order.stage {
                Stage::Cancelled => self.cancelled += 1,
                Stage::Completed => self.completed_order(order, order.updated.get(), symbols),
                _ => {}
            }
        }
        self.ledger(id, order);
    }

    fn completed_order(&mut self, order: &Order, at: Millis, symbols: &SymbolsReader<'_>) {
        self.completed += 1;
        let Some(shop) = &order.shop else {
            return;
        };
        if let Some(customer) = shop.customer_id {
            self.customers.entry(customer).or_insert((Money::ZERO, 0)).1 += 1;
        }
        let confirmed = shop.history.iter().find(|h| h.status == "Confirmed");
        if let (Some(confirmed), Some(partner)) = (confirmed, order.orderbot_id) {
            let key = named(&self.delivery, |n| n, symbols.text(partner).to_string());
            self.delivery
                .entry(key)
                .or_default()
                .record(at.0.saturating_sub(confirmed.at.0));
        }
    }

    /// Counts what the order's ledger moved since it was last counted, each
    /// movement in the hour the ledger says it happened: the same sums
    /// whether folded change by change or rebuilt from the orders at start.
    fn ledger(&mut self, id: OrderId, order: &Order) {
        let Some(shop) = &order.shop else {
            return;
        };
        let ledger = &shop.ledger;
        if ledger.is_empty() {
            return;
        }
        let now = [ledger.charged, ledger.given_back, ledger.refunded];
        let before = self.counted.insert(id, now).unwrap_or([Money::ZERO; 3]);
        let times = [ledger.charged_at, ledger.given_back_at, ledger.refunded_at];
        let signs = [1, -1, -1];
        for k in 0..3 {
            let moved = Money((now[k].0 - before[k].0) * signs[k]);
            if moved == Money::ZERO {
                continue;
            }
            self.add_revenue(times[k].unwrap_or(order.updated.get()), moved);
            if let Some(customer) = shop.customer_id {
                let entry = self.customers.entry(customer).or_insert((Money::ZERO, 0));
                entry.0 = entry.0.checked_add(moved).unwrap_or(entry.0);
            }
        }
    }

    fn add_revenue(&mut self, at: Millis, amount: Money) {
        let slot = self
            .revenue
            .entry(at.0 - at.0 % HOUR_MS)
            .or_insert(Money::ZERO);
        *slot = slot.checked_add(amount).unwrap_or(*slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_five_percent() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(ms * 10);
        }
        for (p, exact) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0)] {
            let got = h.percentile(p) as f64;
            assert!(
                (got - exact).abs() / exact <= 0.05,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(h.summary().count, 1000);
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }

    /// Ever new orderbot ids (which the table of words now lets in without
    /// end) cannot grow the per-orderbot tables past `MAX_NAMED` names.
    #[test]
    fn ever_new_orderbots_are_counted_together_past_the_cap() {
        let mut config = crate::Config::default();
        config.events.history_size = 16;
        let broker = Broker::new(&config);
        let analytics = Analytics::default();
        let from = analytics.rebuild(&broker);
        let mut feed = broker.subscribe(from);
        let id = OrderId(1);
        for n in 0..(MAX_NAMED + 50) {
            let bot = format!("bot-{n}");
            broker.update_status(id, "Mixing", Some(&bot)).unwrap();
            broker
                .update_status(id, "Order Served", Some(&bot))
                .unwrap();
            let pin = broker.pin();
            let events = feed.take(&pin).unwrap();
            analytics.fold(&broker, &events);
        }
        let times = analytics.stage_times();
        assert!(times.len() <= MAX_NAMED + Stage::COUNT, "{}", times.len());
        let others: u64 = times
            .iter()
            .filter(|(bot, _, _)| bot.as_deref() == Some(OTHERS))
            .map(|(_, _, d)| d.count)
            .sum();
        assert!(others >= 50, "the rest are counted together: {others}");
    }
}
