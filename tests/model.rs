//! A model-based test of shop orders, money and stock (issue 10, section 5).
//!
//! Random sequences of operations run over real HTTP against the real
//! binary (journal mode, `fsync = "always"`, its own data directory) and,
//! beside it, against a small reference model: plain maps of orders,
//! products and customers, and each shop order's ledger (charged, given
//! back, refunded, units taken, units returned). The model implements
//! `.worktrees/SEMANTICS.md`, not whatever the broker does today.
//!
//! After every step the touched records are read back and compared with
//! the model; every 25 steps, after every restart (SIGKILL and a new start
//! on the same directory) and at the end, everything is. These must hold:
//!
//! - per product: stock + taken − returned = initial + explicit stock edits;
//! - per customer: balance = initial − charged + given back + refunded +
//!   explicit balance edits;
//! - per order: given back + refunded ≤ charged, returned ≤ taken;
//! - a cancelled or refunded shop order never changes again;
//! - versions step by one per change (a touch that moves no unit and no
//!   cent may or may not count as a change: see `Versioned`).
//!
//! Where the broker's answer depends on state the model knows (refusals:
//! 400, 409, 422, the Order Status API's error codes), the model predicts
//! it; any other answer is a failure. A failure prints the seed, the step,
//! what was expected and what came, and the whole sequence so far.
//!
//! `MODEL_SEED=S` (decimal or 0x-hex) and `MODEL_STEPS=N` choose the run
//! (default: a fixed seed, 300 steps, a restart every 100 steps).
//!
//! The same sequence runs against a cluster too (three brokers on three
//! `nats-server`s, see tests/common/cluster.rs): each step goes to a node
//! picked at random (its read-back to the same node), a restart SIGKILLs
//! the leader and starts it again once another leads, and every full check
//! runs on every node once all applied the whole stream. Without
//! `nats-server` it says SKIPPED and passes.
//!
//! Readings of SEMANTICS.md where it leaves a choice open are marked
//! "Reading:" below: `Versioned` (zero-unit / zero-cent touches),
//! `flow_state` (free in-progress words in the delivery flow),
//! `final_refusal` (processing a final order: 400 or 409),
//! `free_word_rule` (what a free word may do to a shop order),
//! `lifecycle` (the error for a refunded order) and `request_return`
//! (a processed order charged 0.00).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::cluster::{self as cluster_harness, BrokerCluster, NatsCluster};

const DEFAULT_SEED: u64 = 0x1510_0005;
const DEFAULT_STEPS: usize = 300;
const RESTART_EVERY: usize = 100;
const CHECK_ALL_EVERY: usize = 25;
const TAX_BP: i64 = 1000; // shop.tax_rate = "0.10"
const SERVICE_BP: i64 = 500; // shop.service_charge_rate = "0.05"
const PRODUCTS: u64 = 5;
const CUSTOMERS: u64 = 4;

// ---------------------------------------------------------------------------
// A small deterministic PRNG (SplitMix64).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability percent/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// The real binary on a data directory, and a keep-alive HTTP/1.1 client.

struct Proc {
    child: Child,
    addr: String,
    log: PathBuf,
}

fn start_broker(dir: &Path, boot: usize) -> Proc {
    let config = dir.join("broker.toml");
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nlog_level = \"info\"\n\
             [limits]\nheader_read_timeout_secs = 3600\n\
             [shop]\ntax_rate = \"0.10\"\nservice_charge_rate = \"0.05\"\n\
             [persistence]\nmode = \"journal\"\ndir = {:?}\nfsync = \"always\"\n\
             snapshot_every_events = 60\n\
             [returns]\nrestock = true\nwindow_secs = 1209600\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let stdout_path = dir.join(format!("stdout-{boot}.log"));
    let log = dir.join(format!("stderr-{boot}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-broker"));
    // Nothing from the caller's environment may change the config.
    for (key, _) in std::env::vars() {
        if key.starts_with("ORDER_BROKER_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    let child = cmd
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut proc = Proc {
        child,
        addr: String::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if let Some(line) = out.lines().next()
            && let Some(addr) = line
                .trim()
                .strip_prefix("order-broker listening on http://")
        {
            proc.addr = addr.to_string();
            break;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "the broker exited ({status}) before listening (boot {boot}):\n{}",
                proc.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not listen within 30 s:\n{}",
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    loop {
        if let Ok(mut http) = Http::connect(&proc.addr)
            && let Ok(reply) = http.call("GET", "/readyz", None)
            && reply.status == 200
        {
            return proc;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "the broker exited ({status}) during recovery (boot {boot}):\n{}",
                proc.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the broker was not ready within 30 s:\n{}",
            proc.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Proc {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Reply {
    status: u16,
    body: Value,
    raw: String,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = self.raw.clone();
        if raw.len() > 600 {
            raw.truncate(600);
            raw.push('…');
        }
        write!(f, "{} {raw}", self.status)
    }
}

struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: &str) -> std::io::Result<Http> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Http {
            reader: BufReader::new(stream),
        })
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Reply> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: model\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let broken = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection broke");
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(broken());
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(broken)?;
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(broken());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().map_err(|_| broken())?;
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        let mut bytes = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|_| broken())?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                bytes.extend_from_slice(&chunk[..size]);
            }
        } else {
            bytes.resize(length, 0);
            self.reader.read_exact(&mut bytes)?;
        }
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        Ok(Reply { status, body, raw })
    }
}

// ---------------------------------------------------------------------------
// Money in cents, exactly.

fn fmt_cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        c.unsigned_abs() / 100,
        c.unsigned_abs() % 100
    )
}

/// A JSON amount (a number with at most two decimals, or decimal text) in cents.
fn cents(v: &Value) -> Option<i64> {
    let text = match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => return n.as_i64()?.checked_mul(100),
        Value::Number(n) => format!("{}", n.as_f64()?),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 2 || whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = format!("{frac:0<2}");
    let value = whole.parse::<i64>().ok()? * 100 + frac.parse::<i64>().ok()?;
    Some(if negative { -value } else { value })
}

fn at_rate(amount: i64, bp: i64) -> i64 {
    let product = i128::from(amount) * i128::from(bp);
    ((product.abs() + 5_000) / 10_000 * product.signum()) as i64
}

/// (total, grand_total) of lines (unit price in cents, quantity).
fn totals(lines: impl Iterator<Item = (i64, u64)>) -> (i64, i64) {
    let total: i64 = lines.map(|(price, q)| price * q as i64).sum();
    (
        total,
        total + at_rate(total, TAX_BP) + at_rate(total, SERVICE_BP),
    )
}

// ---------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Scheduled,
    New,
    InProgress,
    Completed,
    Cancelled,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Scheduled => "scheduled",
            Stage::New => "new",
            Stage::InProgress => "in_progress",
            Stage::Completed => "completed",
            Stage::Cancelled => "cancelled",
        }
    }
}

/// The stage of a status word: `[stages]` of the default config plus the
/// broker's reserved words; any other word is in progress.
fn stage_of(word: &str) -> Stage {
    match word {
        "Order Initiated" | "New" => Stage::New,
        "Order Served" | "Complete" | "Delivered" => Stage::Completed,
        "Order Cancelled" | "Cancelled" => Stage::Cancelled,
        "Scheduled" => Stage::Scheduled,
        _ => Stage::InProgress,
    }
}

/// Steps of the delivery flow (`PUT /orders/{id}/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    New,
    Confirmed,
    Preparing,
    OutForDelivery,
    Delivered,
    Cancelled,
}

impl Flow {
    const STEPS: [Flow; 4] = [
        Flow::Confirmed,
        Flow::Preparing,
        Flow::OutForDelivery,
        Flow::Delivered,
    ];

    fn name(self) -> &'static str {
        match self {
            Flow::New => "new",
            Flow::Confirmed => "confirmed",
            Flow::Preparing => "preparing",
            Flow::OutForDelivery => "out_for_delivery",
            Flow::Delivered => "delivered",
            Flow::Cancelled => "cancelled",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Flow::New => "New",
            Flow::Confirmed => "Confirmed",
            Flow::Preparing => "Preparing",
            Flow::OutForDelivery => "Out for delivery",
            Flow::Delivered => "Delivered",
            Flow::Cancelled => "Cancelled",
        }
    }

    fn next(self) -> Option<Flow> {
        match self {
            Flow::New => Some(Flow::Confirmed),
            Flow::Confirmed => Some(Flow::Preparing),
            Flow::Preparing => Some(Flow::OutForDelivery),
            Flow::OutForDelivery => Some(Flow::Delivered),
            Flow::Delivered | Flow::Cancelled => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ret {
    Requested,
    Approved,
    Rejected,
    Received,
    Refunded,
}

impl Ret {
    const TARGETS: [Ret; 4] = [Ret::Approved, Ret::Rejected, Ret::Received, Ret::Refunded];

    fn name(self) -> &'static str {
        match self {
            Ret::Requested => "requested",
            Ret::Approved => "approved",
            Ret::Rejected => "rejected",
            Ret::Received => "received",
            Ret::Refunded => "refunded",
        }
    }

    fn may_become(self, to: Ret) -> bool {
        matches!(
            (self, to),
            (Ret::Requested, Ret::Approved | Ret::Rejected)
                | (Ret::Approved, Ret::Received)
                | (Ret::Received, Ret::Refunded)
        )
    }

    fn natural_next(self) -> Option<Ret> {
        match self {
            Ret::Requested => Some(Ret::Approved),
            Ret::Approved => Some(Ret::Received),
            Ret::Received => Some(Ret::Refunded),
            Ret::Rejected | Ret::Refunded => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Adjust,
    Reject,
    Ignore,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Adjust => "adjust",
            Strategy::Reject => "reject",
            Strategy::Ignore => "ignore",
        }
    }
}

/// A version the model expects: `version`, or up to `slack` more. Reading:
/// SEMANTICS.md says versions step by one per change, but not whether
/// giving back zero units or zero cents (an order processed with every
/// item dropped, or charged 0.00) is a change of the product or customer;
/// today's broker bumps some such versions and not others. Such a touch
/// adds slack; the next read adopts the broker's version if it is within.
#[derive(Debug, Clone, Copy, Default)]
struct Versioned {
    version: u32,
    slack: u32,
}

impl Versioned {
    fn bump(&mut self, changed: bool) {
        if changed {
            self.version += 1;
        } else {
            self.slack += 1;
        }
    }
}

#[derive(Debug, Clone)]
struct MProduct {
    price: i64,
    /// Initial stock plus every explicit stock edit (as a delta).
    base: i64,
    v: Versioned,
}

#[derive(Debug, Clone)]
struct MCustomer {
    /// Initial balance plus every explicit balance edit (as a delta).
    base: i64,
    v: Versioned,
}

#[derive(Debug, Clone)]
struct MItem {
    product: u64,
    quantity: u64,
    unit_price: i64,
}

#[derive(Debug, Clone)]
struct MReturn {
    status: Ret,
    items: Vec<(u64, u64)>,
    amount: i64,
}

#[derive(Debug, Clone)]
struct MShop {
    number: String,
    customer: Option<u64>,
    items: Vec<MItem>,
    total: i64,
    grand_total: i64,
    processed: bool,
    paid: bool,
    ret: Option<MReturn>,
    // The ledger.
    charged: i64,
    given_back: i64,
    refunded: i64,
    taken: BTreeMap<u64, u64>,
    returned: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone)]
struct MOrder {
    status: String,
    stage: Stage,
    version: u32,
    orderbot: Option<String>,
    shop: Option<MShop>,
    /// Set when a shop order became final (cancelled, or its return
    /// refunded): the version it must keep for ever.
    final_at: Option<u32>,
}

impl MOrder {
    fn is_shop(&self) -> bool {
        self.shop.is_some()
    }

    fn cancelled(&self) -> bool {
        self.shop.is_some() && self.stage == Stage::Cancelled
    }

    fn refunded(&self) -> bool {
        self.shop
            .as_ref()
            .and_then(|s| s.ret.as_ref())
            .is_some_and(|r| r.status == Ret::Refunded)
    }

    fn is_final(&self) -> bool {
        self.cancelled() || self.refunded()
    }

    fn processed(&self) -> bool {
        self.shop.as_ref().is_some_and(|s| s.processed)
    }
}

impl MShop {
    /// Units the order holds: taken and not yet returned.
    fn held(&self) -> BTreeMap<u64, u64> {
        self.taken
            .iter()
            .map(|(p, n)| (*p, n - self.returned.get(p).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The state of an order in the delivery flow. Reading: an order in
/// progress under a word that is not one of the flow's counts as
/// confirmed (the broker's rule today; SEMANTICS.md keeps the flow as is).
fn flow_state(o: &MOrder) -> Flow {
    match o.stage {
        Stage::Scheduled | Stage::New => Flow::New,
        Stage::Completed => Flow::Delivered,
        Stage::Cancelled => Flow::Cancelled,
        Stage::InProgress => match o.status.as_str() {
            "Preparing" => Flow::Preparing,
            "Out for delivery" => Flow::OutForDelivery,
            _ => Flow::Confirmed,
        },
    }
}

#[derive(Default)]
struct Model {
    products: BTreeMap<u64, MProduct>,
    customers: BTreeMap<u64, MCustomer>,
    orders: BTreeMap<u64, MOrder>,
}

/// What one operation touched: read back and compared right after it.
#[derive(Default)]
struct Touched {
    orders: BTreeSet<u64>,
    products: BTreeSet<u64>,
    customers: BTreeSet<u64>,
}

impl Model {
    /// (taken, returned) of a product over every order's ledger.
    fn units(&self, product: u64) -> (u64, u64) {
        let mut taken = 0;
        let mut returned = 0;
        for shop in self.orders.values().filter_map(|o| o.shop.as_ref()) {
            taken += shop.taken.get(&product).copied().unwrap_or(0);
            returned += shop.returned.get(&product).copied().unwrap_or(0);
        }
        (taken, returned)
    }

    fn stock(&self, product: u64) -> i64 {
        let (taken, returned) = self.units(product);
        self.products[&product].base - taken as i64 + returned as i64
    }

    /// (charged, given back, refunded) of a customer over every order.
    fn money(&self, customer: u64) -> (i64, i64, i64) {
        let mut sums = (0, 0, 0);
        for shop in self.orders.values().filter_map(|o| o.shop.as_ref()) {
            if shop.customer == Some(customer) {
                sums.0 += shop.charged;
                sums.1 += shop.given_back;
                sums.2 += shop.refunded;
            }
        }
        sums
    }

    fn balance(&self, customer: u64) -> i64 {
        let (charged, given_back, refunded) = self.money(customer);
        self.customers[&customer].base - charged + given_back + refunded
    }

    /// The store tutorial's allocation: item by item, against what is left.
    fn allocate(&self, items: &[MItem], strategy: Strategy) -> Result<Vec<u64>, ()> {
        self.allocate_holding(items, strategy, &BTreeMap::new())
    }

    /// `allocate` for an order that holds `held` units already (taken at
    /// its placement): they count as in stock for it.
    fn allocate_holding(
        &self,
        items: &[MItem],
        strategy: Strategy,
        held: &BTreeMap<u64, u64>,
    ) -> Result<Vec<u64>, ()> {
        let mut left: HashMap<u64, i64> = items
            .iter()
            .map(|i| {
                let own = held.get(&i.product).copied().unwrap_or(0) as i64;
                (i.product, self.stock(i.product) + own)
            })
            .collect();
        let mut short = false;
        let mut quantities = Vec::new();
        for item in items {
            let available = left[&item.product].max(0) as u64;
            let quantity = if item.quantity <= available {
                item.quantity
            } else {
                short = true;
                match strategy {
                    Strategy::Adjust => available,
                    Strategy::Reject | Strategy::Ignore => 0,
                }
            };
            *left.get_mut(&item.product).unwrap() -= quantity as i64;
            quantities.push(quantity);
        }
        if short && strategy == Strategy::Reject {
            return Err(());
        }
        Ok(quantities)
    }

    /// The one give-back of every cancel: stock += taken − returned,
    /// balance += charged − given back − refunded. Nothing for an order
    /// never processed that holds no stock from its placement.
    fn give_back(&mut self, id: u64, touched: &mut Touched) {
        let shop = self.orders.get_mut(&id).unwrap().shop.as_mut().unwrap();
        if !shop.processed && shop.held().is_empty() {
            return;
        }
        let mut products = Vec::new();
        for (product, taken) in &shop.taken {
            let returned = shop.returned.entry(*product).or_insert(0);
            let back = taken - *returned;
            *returned += back;
            products.push((*product, back > 0));
        }
        let amount = shop.charged - shop.given_back - shop.refunded;
        shop.given_back += amount;
        let customer = shop.customer;
        for (product, changed) in products {
            self.products.get_mut(&product).unwrap().v.bump(changed);
            touched.products.insert(product);
        }
        if let Some(c) = customer {
            self.customers.get_mut(&c).unwrap().v.bump(amount > 0);
            touched.customers.insert(c);
        }
    }

    /// Moves an order to a new status (and stage), one version up.
    fn set_status(&mut self, id: u64, status: &str) {
        let o = self.orders.get_mut(&id).unwrap();
        o.status = status.to_string();
        o.stage = stage_of(status);
        o.version += 1;
    }

    fn mark_final_if(&mut self, id: u64) {
        let o = self.orders.get_mut(&id).unwrap();
        if o.is_final() && o.final_at.is_none() {
            o.final_at = Some(o.version);
        }
    }

    fn shop_ids(&self) -> Vec<u64> {
        self.orders
            .iter()
            .filter(|(_, o)| o.is_shop())
            .map(|(id, _)| *id)
            .collect()
    }

    fn seed_ids(&self) -> Vec<u64> {
        self.orders
            .iter()
            .filter(|(_, o)| !o.is_shop())
            .map(|(id, _)| *id)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum Op {
    EditProduct {
        id: u64,
        stock: Option<u64>,
        price: Option<i64>,
    },
    EditCustomer {
        id: u64,
        balance: i64,
    },
    /// `PUT /update_order` (or, with `put`, `PUT /orders/{id}`).
    SeedUpdate {
        id: u64,
        status: &'static str,
        orderbot: Option<&'static str>,
        put: bool,
    },
    /// `POST /orders`, or with `take_stock` the Order Management API's
    /// `POST /orders/{customer}`, which takes the items' stock at once.
    CreateOrder {
        customer: Option<u64>,
        items: Vec<(u64, u64)>,
        check_stock: bool,
        take_stock: bool,
    },
    ReplaceItems {
        id: u64,
        items: Vec<(u64, u64)>,
    },
    Process {
        id: u64,
        strategy: Strategy,
    },
    Confirm {
        id: u64,
    },
    Paid {
        id: u64,
    },
    Complete {
        id: u64,
    },
    /// `POST /api/store/orders/cancel` by number.
    StoreCancel {
        id: u64,
    },
    /// `POST /orders/{id}/cancel` with a reason (staff: auth is off).
    Cancel {
        id: u64,
    },
    Step {
        id: u64,
        to: Flow,
    },
    Bulk {
        ids: Vec<u64>,
        to: Flow,
        skip_failed: bool,
    },
    RequestReturn {
        id: u64,
        items: Vec<(u64, u64)>,
    },
    ReturnStep {
        id: u64,
        to: Ret,
    },
    Restart,
}

/// What the model predicts for a write: success, or one of these refusals.
#[derive(Debug, Clone)]
enum Expect {
    /// Success with this status.
    Ok(u16),
    /// Refused with one of these statuses, and why.
    No(Vec<u16>, String),
    /// SEMANTICS.md leaves it open: success or one of these refusals.
    Either(u16, Vec<u16>, String),
}

type Check = Result<(), String>;

/// What the operations run against.
enum Backend {
    /// One broker with its journal.
    Single { dir: tempfile::TempDir, proc: Proc },
    /// Three brokers on three NATS servers; `node` is the one spoken to.
    Cluster {
        brokers: BrokerCluster,
        node: usize,
        // Dropped after the brokers: they stop first.
        _nats: NatsCluster,
    },
}

/// The config of the model's brokers, as environment for cluster nodes
/// (a single broker gets it in its file, see `start_broker`).
const CLUSTER_ENV: [(&str, &str); 6] = [
    ("ORDER_BROKER_SHOP_TAX_RATE", "0.10"),
    ("ORDER_BROKER_SHOP_SERVICE_CHARGE_RATE", "0.05"),
    ("ORDER_BROKER_RETURNS_RESTOCK", "true"),
    ("ORDER_BROKER_RETURNS_WINDOW_SECS", "1209600"),
    ("ORDER_BROKER_LIMITS_HEADER_READ_TIMEOUT_SECS", "3600"),
    // Snapshots and purges happen within a run.
    ("ORDER_BROKER_CLUSTER_SNAPSHOT_EVERY_CHANGES", "60"),
];

struct Harness {
    seed: u64,
    rng: Rng,
    model: Model,
    backend: Backend,
    http: Http,
    boots: usize,
    log: Vec<String>,
    counts: BTreeMap<String, usize>,
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

const WORDS: [&str; 11] = [
    "Order Initiated",
    "Mixing",
    "Pouring",
    "Order Served",
    "Order Cancelled",
    "New",
    "Confirmed",
    "Complete",
    "Cancelled",
    "Preparing",
    "Delivered",
];

impl Harness {
    fn new(seed: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let proc = start_broker(dir.path(), 0);
        let http = Http::connect(&proc.addr).unwrap();
        Harness::with(seed, Backend::Single { dir, proc }, http)
    }

    fn on_cluster(seed: u64) -> Harness {
        let nats = NatsCluster::start(3);
        let brokers = BrokerCluster::start_with(&nats, 3, &CLUSTER_ENV);
        let node = brokers.wait_leader(Duration::from_secs(30));
        let http = Http::connect(&brokers.node(node).addr).unwrap();
        let backend = Backend::Cluster {
            brokers,
            node,
            _nats: nats,
        };
        Harness::with(seed, backend, http)
    }

    fn with(seed: u64, backend: Backend, http: Http) -> Harness {
        Harness {
            seed,
            rng: Rng(seed),
            model: Model::default(),
            backend,
            http,
            boots: 1,
            log: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<Reply, String> {
        self.http
            .call(method, path, body.as_ref())
            .map_err(|e| format!("{method} {path}: no answer ({e})"))
    }

    fn get(&mut self, path: &str) -> Result<Reply, String> {
        let reply = self.call("GET", path, None)?;
        if reply.status != 200 {
            return Err(format!("GET {path} answered {reply}"));
        }
        Ok(reply)
    }

    /// Products and customers to start with, over HTTP.
    fn setup(&mut self) -> Check {
        for id in 1..=PRODUCTS {
            let price = self.rng.range(100, 999) as i64;
            let stock = self.rng.range(3, 25);
            let body = json!({"id": id, "name": format!("p{id}"), "price": fmt_cents(price), "stock": stock});
            let reply = self.call("POST", "/products", Some(body))?;
            if reply.status != 201 {
                return Err(format!("creating product {id}: {reply}"));
            }
            self.model.products.insert(
                id,
                MProduct {
                    price,
                    base: stock as i64,
                    v: Versioned {
                        version: 1,
                        slack: 0,
                    },
                },
            );
            self.log.push(format!(
                "setup: product {id} price {} stock {stock}",
                fmt_cents(price)
            ));
        }
        for id in 1..=CUSTOMERS {
            // The last customer starts with nothing: processing is refused.
            let balance = if id == CUSTOMERS {
                0
            } else {
                self.rng.range(3_000, 15_000) as i64
            };
            let body = json!({"id": id, "name": format!("c{id}"), "balance": fmt_cents(balance)});
            let reply = self.call("POST", "/customers", Some(body))?;
            if reply.status != 201 {
                return Err(format!("creating customer {id}: {reply}"));
            }
            self.model.customers.insert(
                id,
                MCustomer {
                    base: balance,
                    v: Versioned {
                        version: 1,
                        slack: 0,
                    },
                },
            );
            self.log.push(format!(
                "setup: customer {id} balance {}",
                fmt_cents(balance)
            ));
        }
        Ok(())
    }

    // -- generating operations -------------------------------------------

    /// A shop order id: usually one that `fits`, sometimes any.
    fn pick_shop(&mut self, fits: impl Fn(&MOrder) -> bool) -> Option<u64> {
        let all = self.model.shop_ids();
        if all.is_empty() {
            return None;
        }
        let fitting: Vec<u64> = all
            .iter()
            .copied()
            .filter(|id| fits(&self.model.orders[id]))
            .collect();
        if !fitting.is_empty() && self.rng.chance(80) {
            // Recent orders more often: they are the ones on the move.
            let recent = &fitting[fitting.len().saturating_sub(8)..];
            if self.rng.chance(60) {
                return Some(self.rng.pick(recent));
            }
            return Some(self.rng.pick(&fitting));
        }
        Some(self.rng.pick(&all))
    }

    fn random_items(&mut self) -> Vec<(u64, u64)> {
        let lines = self.rng.range(1, 4);
        (0..lines)
            .map(|_| (self.rng.range(1, PRODUCTS), self.rng.range(1, 4)))
            .collect()
    }

    fn generate(&mut self) -> Op {
        loop {
            if let Some(op) = self.try_generate() {
                return op;
            }
        }
    }

    fn try_generate(&mut self) -> Option<Op> {
        let roll = self.rng.below(100);
        let op = match roll {
            0..12 => {
                let customer = if self.rng.chance(8) {
                    None
                } else {
                    Some(self.rng.range(1, CUSTOMERS))
                };
                Op::CreateOrder {
                    customer,
                    items: self.random_items(),
                    check_stock: self.rng.chance(15),
                    take_stock: customer.is_some() && self.rng.chance(35),
                }
            }
            12..22 => {
                let id = self.pick_shop(|o| !o.processed() && !o.is_final())?;
                let strategy =
                    self.rng
                        .pick(&[Strategy::Adjust, Strategy::Reject, Strategy::Ignore]);
                // Now and then the wrong kind of order: a seed order has no items.
                let seeds = self.model.seed_ids();
                let id = if !seeds.is_empty() && self.rng.chance(3) {
                    self.rng.pick(&seeds)
                } else {
                    id
                };
                Op::Process { id, strategy }
            }
            22..34 => {
                let id = self.pick_shop(|o| !o.is_final() && flow_state(o).next().is_some())?;
                let natural = flow_state(&self.model.orders[&id]).next();
                let to = match natural {
                    Some(next) if self.rng.chance(80) => next,
                    _ => self.rng.pick(&Flow::STEPS),
                };
                Op::Step { id, to }
            }
            34..38 => {
                let first = self.pick_shop(|o| !o.is_final() && flow_state(o).next().is_some())?;
                let to = flow_state(&self.model.orders[&first])
                    .next()
                    .unwrap_or(Flow::Confirmed);
                let mut ids = vec![first];
                for _ in 0..self.rng.below(4) {
                    let id = self.pick_shop(|o| flow_state(o).next() == Some(to))?;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                if self.rng.chance(10) {
                    let unknown = self.model.orders.keys().last().copied().unwrap_or(0) + 1000;
                    ids.push(unknown);
                }
                Op::Bulk {
                    ids,
                    to,
                    skip_failed: self.rng.chance(50),
                }
            }
            38..42 => Op::Confirm {
                id: self.pick_shop(|o| o.stage == Stage::New)?,
            },
            42..45 => Op::Paid {
                id: self.pick_shop(|o| !o.shop.as_ref().unwrap().paid)?,
            },
            45..50 => Op::Complete {
                id: self.pick_shop(|o| matches!(o.stage, Stage::New | Stage::InProgress))?,
            },
            50..54 => Op::StoreCancel {
                id: self.pick_shop(|o| o.processed() && !o.is_final())?,
            },
            54..58 => Op::Cancel {
                id: self.pick_shop(|o| o.processed() && !o.is_final())?,
            },
            58..65 => {
                // Seed orders: an existing one or a new id above every id.
                let seeds = self.model.seed_ids();
                let id = if seeds.is_empty() || self.rng.chance(30) {
                    self.model.orders.keys().last().copied().unwrap_or(0) + self.rng.range(1, 3)
                } else {
                    self.rng.pick(&seeds)
                };
                let orderbot = if self.rng.chance(40) {
                    Some(self.rng.pick(&["bot-1", "bot-2", "3"]))
                } else {
                    None
                };
                Op::SeedUpdate {
                    id,
                    status: self.rng.pick(&WORDS),
                    orderbot,
                    put: false,
                }
            }
            65..73 => {
                // Free words on shop orders, cancel-stage words included.
                let id = self.pick_shop(|o| o.processed())?;
                let status = if self.rng.chance(3) {
                    "Scheduled"
                } else if self.rng.chance(25) {
                    self.rng.pick(&["Order Cancelled", "Cancelled"])
                } else {
                    self.rng.pick(&WORDS)
                };
                let put = self.rng.chance(35);
                let id = match self.model.seed_ids() {
                    // Never "Scheduled" on a seed order: the broker's housekeeping
                    // releases scheduled orders on its own clock.
                    seeds
                        if put
                            && status != "Scheduled"
                            && !seeds.is_empty()
                            && self.rng.chance(15) =>
                    {
                        self.rng.pick(&seeds)
                    }
                    _ => id,
                };
                Op::SeedUpdate {
                    id,
                    status,
                    orderbot: None,
                    put,
                }
            }
            73..80 => {
                let id = self.pick_shop(|o| {
                    o.stage == Stage::Completed
                        && o.processed()
                        && o.shop.as_ref().unwrap().ret.is_none()
                })?;
                let shop = self.model.orders[&id].shop.clone().unwrap();
                let mut bought: BTreeMap<u64, u64> = BTreeMap::new();
                for item in &shop.items {
                    *bought.entry(item.product).or_default() += item.quantity;
                }
                let held: Vec<(u64, u64)> = bought.into_iter().filter(|(_, q)| *q > 0).collect();
                let mut items = Vec::new();
                if held.is_empty() || self.rng.chance(8) {
                    items.push((self.rng.range(1, PRODUCTS), self.rng.range(1, 3)));
                } else {
                    let (product, quantity) = self.rng.pick(&held);
                    let asked = if self.rng.chance(8) {
                        quantity + 1
                    } else {
                        self.rng.range(1, quantity)
                    };
                    items.push((product, asked));
                    if held.len() > 1 && self.rng.chance(40) {
                        let (other, q) = self.rng.pick(&held);
                        if other != product {
                            items.push((other, self.rng.range(1, q)));
                        }
                    }
                }
                Op::RequestReturn { id, items }
            }
            80..89 => {
                let id = self.pick_shop(|o| {
                    o.shop
                        .as_ref()
                        .unwrap()
                        .ret
                        .as_ref()
                        .is_some_and(|r| r.status.natural_next().is_some())
                })?;
                let natural = self.model.orders[&id]
                    .shop
                    .as_ref()
                    .unwrap()
                    .ret
                    .as_ref()
                    .and_then(|r| r.status.natural_next());
                let to = match natural {
                    Some(Ret::Approved) if self.rng.chance(15) => Ret::Rejected,
                    Some(next) if self.rng.chance(85) => next,
                    _ => self.rng.pick(&Ret::TARGETS),
                };
                Op::ReturnStep { id, to }
            }
            89..91 => Op::ReplaceItems {
                id: self.pick_shop(|o| o.stage == Stage::New && !o.processed())?,
                items: self.random_items(),
            },
            91..96 => Op::EditProduct {
                id: self.rng.range(1, PRODUCTS),
                stock: self.rng.chance(80).then(|| self.rng.range(0, 40)),
                price: self.rng.chance(40).then(|| self.rng.range(50, 1200) as i64),
            },
            _ => Op::EditCustomer {
                id: self.rng.range(1, CUSTOMERS),
                balance: if self.rng.chance(15) {
                    0
                } else {
                    self.rng.range(0, 20_000) as i64
                },
            },
        };
        Some(op)
    }

    // -- applying operations ---------------------------------------------

    fn op_name(op: &Op) -> &'static str {
        match op {
            Op::EditProduct { .. } => "edit product",
            Op::EditCustomer { .. } => "edit customer",
            Op::SeedUpdate { put: false, .. } => "update_order",
            Op::SeedUpdate { put: true, .. } => "PUT /orders/{id}",
            Op::CreateOrder { .. } => "create order",
            Op::ReplaceItems { .. } => "replace items",
            Op::Process { .. } => "process",
            Op::Confirm { .. } => "confirm",
            Op::Paid { .. } => "paid",
            Op::Complete { .. } => "complete",
            Op::StoreCancel { .. } => "store cancel",
            Op::Cancel { .. } => "cancel with reason",
            Op::Step { .. } => "delivery step",
            Op::Bulk { .. } => "bulk status",
            Op::RequestReturn { .. } => "request return",
            Op::ReturnStep {
                to: Ret::Refunded, ..
            } => "return step refunded",
            Op::ReturnStep { .. } => "return step",
            Op::Restart => "restart",
        }
    }

    /// Checks the answer against the prediction; Ok(true) if the change
    /// was applied (and the model must follow).
    fn judge(&self, what: &str, expect: &Expect, reply: &Reply) -> Result<bool, String> {
        let ok = |s: u16| reply.status == s;
        let refused = |list: &[u16]| list.contains(&reply.status);
        match expect {
            Expect::Ok(s) if ok(*s) => Ok(true),
            Expect::Ok(s) => Err(format!(
                "{what}: the model predicted success ({s}); the broker answered {reply}"
            )),
            Expect::No(list, _) if refused(list) => Ok(false),
            Expect::No(list, why) => Err(format!(
                "{what}: the model predicted a refusal {list:?} ({why}); the broker answered {reply}"
            )),
            Expect::Either(s, _, _) if ok(*s) => Ok(true),
            Expect::Either(_, list, _) if refused(list) => Ok(false),
            Expect::Either(s, list, why) => Err(format!(
                "{what}: the model accepts {s} or a refusal {list:?} ({why}); the broker answered {reply}"
            )),
        }
    }

    /// Reading: SEMANTICS.md makes a cancelled or refunded shop order final
    /// with 409 for writes other than the lifecycle, and says processing is
    /// "refused" on a cancelled order (400 with reason `cancelled` today):
    /// for processing either refusal is accepted.
    fn final_refusal(o: &MOrder) -> Option<String> {
        if o.cancelled() {
            Some("a cancelled shop order is final".into())
        } else if o.refunded() {
            Some("a shop order whose return was refunded is final".into())
        } else {
            None
        }
    }

    /// The rule for free status words on a shop order (`update_order`,
    /// `PUT /orders/{id}`). Reading: "while the order is new or in progress"
    /// covers every in-progress word, the delivery flow's included; a word
    /// of the same stage (new → new) is a move too; a word of the
    /// `scheduled` stage is none of the allowed moves, so 409. The status
    /// becomes the word given, also for a cancel-stage word (which gives
    /// back like every cancel), and no free word marks the order paid. A
    /// completed order takes its own word again (a process engine's retry).
    fn free_word_rule(o: &MOrder, target: Stage, word: &str) -> Result<(), String> {
        if let Some(why) = Self::final_refusal(o) {
            return Err(why);
        }
        match (o.stage, target) {
            (Stage::Scheduled, _) => Err("a scheduled order takes no free word".into()),
            (_, Stage::Scheduled) => Err("a free word cannot schedule a shop order".into()),
            (Stage::New | Stage::InProgress, _) => Ok(()),
            (Stage::Completed, Stage::Cancelled) => Ok(()),
            // The same word again (an engine's retry) changes nothing that matters.
            (Stage::Completed, Stage::Completed) if o.status == word => Ok(()),
            (Stage::Completed, _) => Err("from completed only a move to cancelled".into()),
            (Stage::Cancelled, _) => Err("cancelled is final".into()),
        }
    }

    fn apply(&mut self, op: &Op, t: &mut Touched) -> Result<String, String> {
        let what = format!("{op:?}");
        match op.clone() {
            Op::Restart => {
                self.restart()?;
                Ok("restarted".into())
            }
            Op::EditProduct { id, stock, price } => {
                let mut body = json!({});
                if let Some(s) = stock {
                    body["stock"] = json!(s);
                }
                if let Some(p) = price {
                    body["price"] = json!(fmt_cents(p));
                }
                let reply = self.call("PUT", &format!("/products/{id}"), Some(body))?;
                if self.judge(&what, &Expect::Ok(200), &reply)? {
                    let current = self.model.stock(id);
                    let p = self.model.products.get_mut(&id).unwrap();
                    if let Some(s) = stock {
                        p.base += s as i64 - current;
                    }
                    if let Some(price) = price {
                        p.price = price;
                    }
                    p.v.version += 1;
                }
                t.products.insert(id);
                Ok(reply.status.to_string())
            }
            Op::EditCustomer { id, balance } => {
                let body = json!({"balance": fmt_cents(balance)});
                let reply = self.call("PUT", &format!("/customers/{id}"), Some(body))?;
                if self.judge(&what, &Expect::Ok(200), &reply)? {
                    let current = self.model.balance(id);
                    let c = self.model.customers.get_mut(&id).unwrap();
                    c.base += balance - current;
                    c.v.version += 1;
                }
                t.customers.insert(id);
                Ok(reply.status.to_string())
            }
            Op::SeedUpdate {
                id,
                status,
                orderbot,
                put,
            } => {
                let target = stage_of(status);
                let expect = match self.model.orders.get(&id) {
                    None if put => Expect::No(vec![404], "no such order".into()),
                    None => Expect::Ok(200),
                    Some(o) if !o.is_shop() => Expect::Ok(200),
                    Some(o) => match Self::free_word_rule(o, target, status) {
                        Ok(()) => Expect::Ok(200),
                        Err(why) => Expect::No(vec![409], why),
                    },
                };
                let reply = if put {
                    self.call(
                        "PUT",
                        &format!("/orders/{id}"),
                        Some(json!({"status": status})),
                    )?
                } else {
                    let mut body = json!({"id": id, "status": status});
                    if let Some(bot) = orderbot {
                        body["orderbot_id"] = json!(bot);
                    }
                    self.call("PUT", "/update_order", Some(body))?
                };
                if self.judge(&what, &expect, &reply)? {
                    match self.model.orders.get(&id) {
                        None => {
                            self.model.orders.insert(
                                id,
                                MOrder {
                                    status: status.into(),
                                    stage: target,
                                    version: 1,
                                    orderbot: orderbot.map(str::to_string),
                                    shop: None,
                                    final_at: None,
                                },
                            );
                        }
                        Some(o) => {
                            let was_cancelled = o.stage == Stage::Cancelled;
                            self.model.set_status(id, status);
                            let o = self.model.orders.get_mut(&id).unwrap();
                            if let Some(bot) = orderbot {
                                o.orderbot = Some(bot.into());
                            }
                            if o.is_shop() && target == Stage::Cancelled && !was_cancelled {
                                self.model.give_back(id, t);
                            }
                            self.model.mark_final_if(id);
                        }
                    }
                }
                t.orders.insert(id);
                Ok(reply.status.to_string())
            }
            Op::CreateOrder {
                customer,
                items,
                check_stock,
                take_stock,
            } => {
                let lines: Vec<MItem> = items
                    .iter()
                    .map(|&(product, quantity)| MItem {
                        product,
                        quantity,
                        unit_price: self.model.products[&product].price,
                    })
                    .collect();
                let short = self.model.allocate(&lines, Strategy::Reject).is_err();
                let expect = if (check_stock || take_stock) && short {
                    Expect::No(vec![400], "an item is short".into())
                } else {
                    Expect::Ok(201)
                };
                let mut body = json!({
                    "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
                    "check_stock": check_stock,
                });
                if let Some(c) = customer {
                    body["customer_id"] = json!(c);
                }
                let path = match customer.filter(|_| take_stock) {
                    Some(c) => {
                        body.as_object_mut().unwrap().remove("customer_id");
                        format!("/orders/{c}")
                    }
                    None => "/orders".to_string(),
                };
                let reply = self.call("POST", &path, Some(body))?;
                if !self.judge(&what, &expect, &reply)? {
                    return Ok(reply.status.to_string());
                }
                let id = reply.body["id"]
                    .as_u64()
                    .ok_or_else(|| format!("{what}: no id in {reply}"))?;
                if self.model.orders.contains_key(&id) {
                    return Err(format!(
                        "{what}: the broker assigned id {id}, which an order already has"
                    ));
                }
                let number = reply.body["number"]
                    .as_str()
                    .ok_or_else(|| format!("{what}: no number in {reply}"))?
                    .to_string();
                let (total, grand_total) = totals(lines.iter().map(|i| (i.unit_price, i.quantity)));
                let mut taken = BTreeMap::new();
                let mut returned = BTreeMap::new();
                for line in &lines {
                    // Taken at placement on the Order Management route.
                    let units = if take_stock { line.quantity } else { 0 };
                    *taken.entry(line.product).or_insert(0) += units;
                    returned.insert(line.product, 0);
                }
                if take_stock {
                    for product in taken.keys() {
                        self.model.products.get_mut(product).unwrap().v.bump(true);
                        t.products.insert(*product);
                    }
                }
                self.model.orders.insert(
                    id,
                    MOrder {
                        status: "New".into(),
                        stage: Stage::New,
                        version: 1,
                        orderbot: None,
                        shop: Some(MShop {
                            number,
                            customer,
                            items: lines,
                            total,
                            grand_total,
                            processed: false,
                            paid: false,
                            ret: None,
                            charged: 0,
                            given_back: 0,
                            refunded: 0,
                            returned,
                            taken,
                        }),
                        final_at: None,
                    },
                );
                t.orders.insert(id);
                self.compare_order(id, &reply.body, &what)?;
                Ok(format!("201 id {id}"))
            }
            Op::ReplaceItems { id, items } => {
                let o = &self.model.orders[&id];
                let expect = if let Some(why) = Self::final_refusal(o) {
                    Expect::No(vec![409], why)
                } else if o.processed() || o.stage != Stage::New {
                    Expect::No(
                        vec![409],
                        "items change only before processing or confirming".into(),
                    )
                } else if o.shop.as_ref().is_some_and(|s| !s.held().is_empty()) {
                    Expect::No(vec![409], "its stock was taken at placement".into())
                } else {
                    Expect::Ok(200)
                };
                let body = json!({"items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>()});
                let reply = self.call("PUT", &format!("/orders/{id}/items"), Some(body))?;
                if self.judge(&what, &expect, &reply)? {
                    let lines: Vec<MItem> = items
                        .iter()
                        .map(|&(product, quantity)| MItem {
                            product,
                            quantity,
                            unit_price: self.model.products[&product].price,
                        })
                        .collect();
                    let (total, grand_total) =
                        totals(lines.iter().map(|i| (i.unit_price, i.quantity)));
                    let o = self.model.orders.get_mut(&id).unwrap();
                    o.version += 1;
                    let shop = o.shop.as_mut().unwrap();
                    shop.taken = lines.iter().map(|l| (l.product, 0)).collect();
                    shop.returned = shop.taken.clone();
                    shop.items = lines;
                    shop.total = total;
                    shop.grand_total = grand_total;
                }
                t.orders.insert(id);
                Ok(reply.status.to_string())
            }
            Op::Process { id, strategy } => self.process(id, strategy, &what, t),
            Op::Confirm { id } | Op::Paid { id } | Op::Complete { id } | Op::StoreCancel { id } => {
                self.lifecycle(op, id, &what, t)
            }
            Op::Cancel { id } => {
                let o = &self.model.orders[&id];
                let expect = if let Some(why) = Self::final_refusal(o) {
                    Expect::No(vec![409], why)
                } else if flow_state(o) == Flow::Delivered {
                    Expect::No(vec![409], "delivered: request a return".into())
                } else {
                    Expect::Ok(200)
                };
                let reply = self.call(
                    "POST",
                    &format!("/orders/{id}/cancel"),
                    Some(json!({"reason": "model test"})),
                )?;
                if self.judge(&what, &expect, &reply)? {
                    self.model.set_status(id, "Cancelled");
                    self.model.give_back(id, t);
                    self.model.mark_final_if(id);
                }
                t.orders.insert(id);
                Ok(reply.status.to_string())
            }
            Op::Step { id, to } => {
                let expect = self.step_rule(id, to);
                let reply = self.call(
                    "PUT",
                    &format!("/orders/{id}/status"),
                    Some(json!({"status": to.name()})),
                )?;
                if self.judge(&what, &expect, &reply)? {
                    self.model.set_status(id, to.word());
                }
                t.orders.insert(id);
                Ok(reply.status.to_string())
            }
            Op::Bulk {
                ids,
                to,
                skip_failed,
            } => self.bulk(&ids, to, skip_failed, &what, t),
            Op::RequestReturn { id, items } => self.request_return(id, &items, &what, t),
            Op::ReturnStep { id, to } => self.return_step(id, to, &what, t),
        }
    }

    fn step_rule(&self, id: u64, to: Flow) -> Expect {
        let Some(o) = self.model.orders.get(&id) else {
            return Expect::No(vec![404], "no such order".into());
        };
        if let Some(why) = Self::final_refusal(o) {
            return Expect::No(vec![409], why);
        }
        let now = flow_state(o);
        if now.next() == Some(to) {
            Expect::Ok(200)
        } else {
            Expect::No(
                vec![409],
                format!(
                    "the order is {}; the flow goes one step at a time",
                    now.name()
                ),
            )
        }
    }

    fn process(
        &mut self,
        id: u64,
        strategy: Strategy,
        what: &str,
        t: &mut Touched,
    ) -> Result<String, String> {
        let o = &self.model.orders[&id];
        let mut reason = None;
        let mut allocation = None;
        let expect = if !o.is_shop() {
            Expect::No(vec![409], "a seed order has no items to process".into())
        } else if let Some(why) = Self::final_refusal(o) {
            Expect::No(vec![400, 409], why)
        } else {
            let shop = o.shop.as_ref().unwrap();
            let no = |r: &'static str, why: &str| (Expect::No(vec![400], why.into()), Some(r));
            let (expect, r) = if shop.processed {
                no("already_processed", "never twice")
            } else if shop.customer.is_none() {
                no("no_customer", "no customer to charge")
            } else if self.model.balance(shop.customer.unwrap()) <= 0 {
                no("insufficient_balance", "balance must be above zero")
            } else {
                match self
                    .model
                    .allocate_holding(&shop.items, strategy, &shop.held())
                {
                    Err(()) => no("rejected", "reject: an item is short"),
                    Ok(quantities) => {
                        allocation = Some(quantities);
                        (Expect::Ok(200), None)
                    }
                }
            };
            reason = r;
            expect
        };
        let body = json!({"process": true, "strategy": strategy.name()});
        let reply = self.call("PUT", &format!("/api/orders/{id}"), Some(body))?;
        t.orders.insert(id);
        if !self.judge(what, &expect, &reply)? {
            if let Some(r) = reason
                && reply.body["reason"] != r
            {
                return Err(format!(
                    "{what}: the model predicted the refusal reason {r:?}; the broker answered {reply}"
                ));
            }
            return Ok(reply.status.to_string());
        }
        let quantities = allocation.unwrap();
        let o = self.model.orders.get_mut(&id).unwrap();
        o.version += 1;
        let shop = o.shop.as_mut().unwrap();
        for (item, q) in shop.items.iter_mut().zip(&quantities) {
            item.quantity = *q;
        }
        let (total, grand_total) = totals(shop.items.iter().map(|i| (i.unit_price, i.quantity)));
        shop.total = total;
        shop.grand_total = grand_total;
        shop.processed = true;
        shop.charged = grand_total;
        let held = shop.held();
        let mut taken: BTreeMap<u64, u64> = BTreeMap::new();
        for item in &shop.items {
            *taken.entry(item.product).or_default() += item.quantity;
        }
        shop.taken = taken.clone();
        let customer = shop.customer.unwrap();
        for (product, units) in taken {
            // Only what it did not hold yet moves.
            let own = held.get(&product).copied().unwrap_or(0);
            self.model
                .products
                .get_mut(&product)
                .unwrap()
                .v
                .bump(units != own);
            t.products.insert(product);
        }
        self.model
            .customers
            .get_mut(&customer)
            .unwrap()
            .v
            .bump(grand_total > 0);
        t.customers.insert(customer);
        self.compare_order(id, &reply.body, what)?;
        Ok(format!("200 charged {}", fmt_cents(grand_total)))
    }

    fn lifecycle(
        &mut self,
        op: &Op,
        id: u64,
        what: &str,
        t: &mut Touched,
    ) -> Result<String, String> {
        let o = &self.model.orders[&id];
        let shop = o.shop.as_ref().unwrap();
        let state = match o.stage {
            Stage::Scheduled | Stage::New => "New",
            Stage::InProgress => "Confirmed",
            Stage::Completed => "Complete",
            Stage::Cancelled => "Cancelled",
        };
        let action = match op {
            Op::Confirm { .. } => "confirm",
            Op::Paid { .. } => "paid",
            Op::Complete { .. } => "complete",
            _ => "cancel",
        };
        // The expectation, and the Order Status API error code predicted.
        let no = |code: &'static str, why: &str| (Expect::No(vec![400], why.into()), Some(code));
        let (expect, code) = if o.cancelled() && action == "confirm" {
            // The seed says which state a confirm meets: "Order has been
            // cancelled".
            no("invalid_status", "only New orders can be confirmed")
        } else if o.cancelled() {
            no("order_already_canceled", "a cancelled order is final")
        } else if o.refunded() {
            // Reading: SEMANTICS.md makes a refunded order final ("cancel
            // refused, 409 / lifecycle error") without naming the code:
            // any 400 in the lifecycle shape, or 409.
            (
                Expect::No(vec![400, 409], "a refunded order is final".into()),
                None,
            )
        } else {
            match action {
                "confirm" if state != "New" => {
                    no("invalid_status", "only New orders can be confirmed")
                }
                "paid" if shop.paid => no("already_paid", "already paid"),
                "complete" if state == "Complete" => {
                    no("order_already_completed", "already completed")
                }
                _ => (Expect::Ok(200), None),
            }
        };
        let number = shop.number.clone();
        let body = if action == "confirm" {
            json!({"number": number})
        } else {
            json!({"order": number})
        };
        let reply = self.call("POST", &format!("/api/store/orders/{action}"), Some(body))?;
        t.orders.insert(id);
        if !self.judge(what, &expect, &reply)? {
            match code {
                Some(code) if reply.body["error_code"] != code => {
                    return Err(format!(
                        "{what}: the model predicted the Order Status API error {code:?}; the broker answered {reply}"
                    ));
                }
                None if reply.status == 400 && reply.body["error_code"].as_str().is_none() => {
                    return Err(format!(
                        "{what}: a 400 of the Order Status API has its error shape; the broker answered {reply}"
                    ));
                }
                _ => {}
            }
            return Ok(reply.status.to_string());
        }
        match action {
            "confirm" => self.model.set_status(id, "Confirmed"),
            "complete" => {
                self.model.set_status(id, "Complete");
                self.model
                    .orders
                    .get_mut(&id)
                    .unwrap()
                    .shop
                    .as_mut()
                    .unwrap()
                    .paid = true;
            }
            "paid" => {
                let o = self.model.orders.get_mut(&id).unwrap();
                o.version += 1;
                o.shop.as_mut().unwrap().paid = true;
            }
            _ => {
                self.model.set_status(id, "Cancelled");
                self.model.give_back(id, t);
                self.model.mark_final_if(id);
            }
        }
        // The Order Status API's answer shows the new state.
        let o = &self.model.orders[&id];
        let shop = o.shop.as_ref().unwrap();
        let (code, text) = match o.stage {
            Stage::Scheduled | Stage::New => (1, "New"),
            Stage::InProgress => (10, "Confirmed"),
            Stage::Completed => (20, "Complete"),
            Stage::Cancelled => (30, "Cancelled"),
        };
        let got = (
            reply.body["status"].as_u64(),
            reply.body["statusText"].as_str(),
            reply.body["paymentStatus"].as_u64(),
            reply.body["version"].as_u64(),
        );
        let want = (
            Some(code),
            Some(text),
            Some(if shop.paid { 2 } else { 1 }),
            Some(u64::from(o.version)),
        );
        if got != want {
            return Err(format!(
                "{what}: the answer shows (status, statusText, paymentStatus, version) {got:?}; the model has {want:?}: {reply}"
            ));
        }
        Ok(reply.status.to_string())
    }

    fn bulk(
        &mut self,
        ids: &[u64],
        to: Flow,
        skip_failed: bool,
        what: &str,
        t: &mut Touched,
    ) -> Result<String, String> {
        let rules: Vec<Expect> = ids.iter().map(|id| self.step_rule(*id, to)).collect();
        let failing = rules.iter().filter(|r| !matches!(r, Expect::Ok(_))).count();
        let all_or_nothing_fails = !skip_failed && failing > 0;
        let expect = if all_or_nothing_fails {
            Expect::No(
                vec![409],
                format!("reject_all: {failing} order(s) cannot move"),
            )
        } else {
            Expect::Ok(200)
        };
        let body = json!({
            "order_ids": ids,
            "status": to.name(),
            "error_policy": if skip_failed { "skip_failed" } else { "reject_all" },
        });
        let reply = self.call("PUT", "/orders/bulk-status-update", Some(body))?;
        for id in ids {
            if self.model.orders.contains_key(id) {
                t.orders.insert(*id);
            }
        }
        self.judge(what, &expect, &reply)?;
        let results = reply.body["results"]
            .as_array()
            .ok_or_else(|| format!("{what}: no results in {reply}"))?
            .clone();
        if results.len() != ids.len() {
            return Err(format!(
                "{what}: {} results for {} ids: {reply}",
                results.len(),
                ids.len()
            ));
        }
        let mut applied = 0;
        for ((id, rule), result) in ids.iter().zip(&rules).zip(&results) {
            let (want_result, want_status) = match rule {
                Expect::Ok(_) if all_or_nothing_fails => ("skipped", None),
                Expect::Ok(_) => ("applied", None),
                Expect::No(list, _) => ("failed", Some(list[0])),
                Expect::Either(..) => unreachable!("the flow has no open question"),
            };
            let got_result = result["result"].as_str().unwrap_or("");
            let got_status = result["status"].as_u64().map(|s| s as u16);
            if got_result != want_result || (want_status.is_some() && got_status != want_status) {
                return Err(format!(
                    "{what}: order {id}: the model predicted {want_result} {want_status:?} ({rule:?}); the broker's result is {result}"
                ));
            }
            if want_result == "applied" {
                applied += 1;
                self.model.set_status(*id, to.word());
            }
        }
        Ok(format!("{} applied {applied}", reply.status))
    }

    /// Reading: returns are "only for a completed order that was processed
    /// (charged)". A processed order charged 0.00 (every item dropped or
    /// priced 0) may be refused too; either answer is accepted for it.
    fn request_return(
        &mut self,
        id: u64,
        items: &[(u64, u64)],
        what: &str,
        t: &mut Touched,
    ) -> Result<String, String> {
        let o = &self.model.orders[&id];
        let shop = o.shop.as_ref().unwrap();
        let mut bought: BTreeMap<u64, u64> = BTreeMap::new();
        for item in &shop.items {
            *bought.entry(item.product).or_default() += item.quantity;
        }
        let mut asked: BTreeMap<u64, u64> = BTreeMap::new();
        for (p, q) in items {
            *asked.entry(*p).or_default() += q;
        }
        let items_ok = asked
            .iter()
            .all(|(p, q)| bought.get(p).is_some_and(|b| q <= b));
        let state_refusal = if let Some(why) = Self::final_refusal(o) {
            Some(why)
        } else if shop.customer.is_none() {
            Some("the order has no customer".into())
        } else if o.stage != Stage::Completed {
            Some("only a completed order can be returned".into())
        } else if !shop.processed {
            Some("only a processed (charged) order can be returned".into())
        } else if shop.ret.is_some() {
            Some("a return was already requested".into())
        } else {
            None
        };
        let expect = match (state_refusal, items_ok) {
            (Some(why), false) => Expect::No(vec![409, 422], format!("{why}; items invalid too")),
            (Some(why), true) => Expect::No(vec![409], why),
            (None, false) => Expect::No(vec![422], "items not the order's or too many".into()),
            (None, true) if shop.charged == 0 => {
                Expect::Either(201, vec![409], "processed but charged 0.00".into())
            }
            (None, true) => Expect::Ok(201),
        };
        let amount = totals(items.iter().map(|(p, q)| {
            let price = shop
                .items
                .iter()
                .find(|i| i.product == *p)
                .map_or(0, |i| i.unit_price);
            (price, *q)
        }))
        .1;
        let body = json!({
            "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
            "reason": "model test",
        });
        let reply = self.call("POST", &format!("/orders/{id}/request-return"), Some(body))?;
        t.orders.insert(id);
        if self.judge(what, &expect, &reply)? {
            let got = cents(&reply.body["amount"]);
            if got != Some(amount) || reply.body["status"] != "requested" {
                return Err(format!(
                    "{what}: the model's return is requested, amount {}; the broker answered {reply}",
                    fmt_cents(amount)
                ));
            }
            let o = self.model.orders.get_mut(&id).unwrap();
            o.version += 1;
            o.shop.as_mut().unwrap().ret = Some(MReturn {
                status: Ret::Requested,
                items: items.to_vec(),
                amount,
            });
        }
        Ok(reply.status.to_string())
    }

    fn return_step(
        &mut self,
        id: u64,
        to: Ret,
        what: &str,
        t: &mut Touched,
    ) -> Result<String, String> {
        let o = &self.model.orders[&id];
        let shop = o.shop.as_ref().unwrap();
        let expect = if let Some(why) = Self::final_refusal(o) {
            Expect::No(vec![409], why)
        } else {
            match &shop.ret {
                None => Expect::No(vec![409], "the order has no return".into()),
                Some(r) if !r.status.may_become(to) => {
                    Expect::No(vec![409], format!("the return is {}", r.status.name()))
                }
                Some(_) => Expect::Ok(200),
            }
        };
        let reply = self.call(
            "PUT",
            &format!("/orders/{id}/return"),
            Some(json!({"status": to.name()})),
        )?;
        t.orders.insert(id);
        if !self.judge(what, &expect, &reply)? {
            return Ok(reply.status.to_string());
        }
        let o = self.model.orders.get_mut(&id).unwrap();
        o.version += 1;
        let shop = o.shop.as_mut().unwrap();
        let ret = shop.ret.as_mut().unwrap();
        ret.status = to;
        if to != Ret::Refunded {
            return Ok(reply.status.to_string());
        }
        // The refund: never more than is outstanding; restock bounded by
        // what was taken and not yet returned.
        let credit = ret
            .amount
            .min(shop.charged - shop.given_back - shop.refunded);
        shop.refunded += credit;
        let mut products = Vec::new();
        for (product, q) in ret.items.clone() {
            let taken = shop.taken.get(&product).copied().unwrap_or(0);
            let returned = shop.returned.entry(product).or_insert(0);
            let back = q.min(taken - *returned);
            *returned += back;
            products.push((product, back > 0));
        }
        let customer = shop.customer;
        for (product, changed) in products {
            self.model
                .products
                .get_mut(&product)
                .unwrap()
                .v
                .bump(changed);
            t.products.insert(product);
        }
        if let Some(c) = customer {
            self.model.customers.get_mut(&c).unwrap().v.bump(credit > 0);
            t.customers.insert(c);
        }
        self.model.mark_final_if(id);
        Ok(format!("200 refunded {}", fmt_cents(credit)))
    }

    fn restart(&mut self) -> Check {
        let boots = self.boots;
        self.boots += 1;
        match &mut self.backend {
            Backend::Single { dir, proc } => {
                proc.kill();
                *proc = start_broker(dir.path(), boots);
                self.http = Http::connect(&proc.addr).map_err(|e| format!("reconnect: {e}"))?;
                self.check_all("after SIGKILL and restart")
            }
            Backend::Cluster { brokers, node, .. } => {
                // The leader dies; another takes over; the dead one starts
                // again (from the stream) and follows.
                let leader = brokers.wait_leader(Duration::from_secs(30));
                brokers.kill(leader);
                let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
                let new = brokers.wait_leader_among(&others, Duration::from_secs(30));
                brokers.restart(leader);
                brokers.wait_leader_among(&[0, 1, 2], Duration::from_secs(30));
                *node = new;
                self.http = Http::connect(&brokers.node(new).addr)
                    .map_err(|e| format!("reconnect: {e}"))?;
                self.check_all("after SIGKILL of the leader and its restart")
            }
        }
    }

    /// On a cluster: the next step talks to a node picked at random.
    fn pick_node(&mut self) -> Check {
        if let Backend::Cluster { brokers, node, .. } = &mut self.backend {
            *node = self.rng.below(3) as usize;
            self.http = Http::connect(&brokers.node(*node).addr)
                .map_err(|e| format!("connect to node {node}: {e}"))?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        match &self.backend {
            Backend::Single { proc, .. } => proc.log_tail(),
            Backend::Cluster { brokers, .. } => brokers.diagnostics(),
        }
    }

    // -- comparing ---------------------------------------------------------

    fn compare_order(&self, id: u64, body: &Value, context: &str) -> Check {
        let o = &self.model.orders[&id];
        let mut diffs = Vec::new();
        let mut eq = |field: &str, got: Value, want: Value| {
            if got != want {
                diffs.push(format!("{field}: broker {got}, model {want}"));
            }
        };
        eq("status", body["status"].clone(), json!(o.status));
        eq("stage", body["stage"].clone(), json!(o.stage.name()));
        eq("version", body["version"].clone(), json!(o.version));
        eq(
            "orderbot_id",
            body["orderbot_id"].clone(),
            json!(o.orderbot),
        );
        if let Some(shop) = &o.shop {
            eq("number", body["number"].clone(), json!(shop.number));
            eq(
                "customer_id",
                body["customer_id"].clone(),
                json!(shop.customer),
            );
            eq(
                "processed",
                json!(!body["processed"].is_null()),
                json!(shop.processed),
            );
            eq(
                "payment_status",
                body["payment_status"].clone(),
                json!(if shop.paid { 2 } else { 1 }),
            );
            let items: Vec<Value> = body["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| json!([i["product_id"], i["quantity"], cents(&i["unit_price"])]))
                        .collect()
                })
                .unwrap_or_default();
            let want: Vec<Value> = shop
                .items
                .iter()
                .map(|i| json!([i.product, i.quantity, i.unit_price]))
                .collect();
            eq(
                "items [product, quantity, unit price in cents]",
                json!(items),
                json!(want),
            );
            eq(
                "total (cents)",
                json!(cents(&body["total"])),
                json!(shop.total),
            );
            eq(
                "grand_total (cents)",
                json!(cents(&body["grand_total"])),
                json!(shop.grand_total),
            );
            let ret = &body["return"];
            match &shop.ret {
                None => eq("return", ret.clone(), Value::Null),
                Some(r) => {
                    eq(
                        "return.status",
                        ret["status"].clone(),
                        json!(r.status.name()),
                    );
                    eq(
                        "return.amount (cents)",
                        json!(cents(&ret["amount"])),
                        json!(r.amount),
                    );
                }
            }
        } else {
            eq(
                "number (a seed order has none)",
                body["number"].clone(),
                Value::Null,
            );
        }
        if diffs.is_empty() {
            return Ok(());
        }
        let headline = match o.final_at {
            Some(v) => format!(
                "invariant \"a cancelled or refunded order never changes again\" broken: order {id} became final at version {v}"
            ),
            None => format!("order {id} differs from the model"),
        };
        Err(format!(
            "{context}: {headline}:\n  {}\n  model ledger: {}",
            diffs.join("\n  "),
            self.ledger_text(id)
        ))
    }

    fn ledger_text(&self, id: u64) -> String {
        match &self.model.orders[&id].shop {
            None => "(seed order, no ledger)".into(),
            Some(s) => format!(
                "charged {}, given back {}, refunded {}, taken {:?}, returned {:?}",
                fmt_cents(s.charged),
                fmt_cents(s.given_back),
                fmt_cents(s.refunded),
                s.taken,
                s.returned
            ),
        }
    }

    fn check_order(&mut self, id: u64, context: &str) -> Check {
        let reply = self.call("GET", &format!("/orders/{id}"), None)?;
        if reply.status != 200 {
            return Err(format!(
                "{context}: order {id} (acknowledged, version {}) reads back as {reply}",
                self.model.orders[&id].version
            ));
        }
        self.compare_order(id, &reply.body, context)
    }

    fn compare_product(&mut self, id: u64, body: &Value, context: &str) -> Check {
        let expected = self.model.stock(id);
        let (taken, returned) = self.model.units(id);
        let p = self.model.products.get_mut(&id).unwrap();
        let stock = body["stock"].as_i64();
        if stock != Some(expected) {
            return Err(format!(
                "{context}: invariant \"stock + taken − returned = initial + stock edits\" broken for product {id}: \
                 broker stock {stock:?}; the model has initial + edits {} − taken {taken} + returned {returned} = {expected}",
                p.base
            ));
        }
        if cents(&body["price"]) != Some(p.price) {
            return Err(format!(
                "{context}: product {id}: broker price {}, model {}",
                body["price"],
                fmt_cents(p.price)
            ));
        }
        let version = body["version"].as_u64().unwrap_or(0) as u32;
        if version < p.v.version || version > p.v.version + p.v.slack {
            return Err(format!(
                "{context}: invariant \"versions step by one per change\" broken for product {id}: \
                 broker version {version}, model expects {}{}",
                p.v.version,
                if p.v.slack > 0 {
                    format!(" to {}", p.v.version + p.v.slack)
                } else {
                    String::new()
                }
            ));
        }
        p.v = Versioned { version, slack: 0 };
        Ok(())
    }

    fn compare_customer(&mut self, id: u64, body: &Value, context: &str) -> Check {
        let expected = self.model.balance(id);
        let (charged, given_back, refunded) = self.model.money(id);
        let c = self.model.customers.get_mut(&id).unwrap();
        let balance = cents(&body["balance"]);
        if balance != Some(expected) {
            let orders: Vec<String> = self
                .model
                .orders
                .iter()
                .filter_map(|(oid, o)| {
                    let s = o.shop.as_ref()?;
                    (s.customer == Some(id) && s.charged > 0).then(|| {
                        format!(
                            "order {oid}: charged {} given back {} refunded {}",
                            fmt_cents(s.charged),
                            fmt_cents(s.given_back),
                            fmt_cents(s.refunded)
                        )
                    })
                })
                .collect();
            return Err(format!(
                "{context}: invariant \"balance = initial − charged + given back + refunded + edits\" broken for customer {id}: \
                 broker balance {}; the model has initial + edits {} − charged {} + given back {} + refunded {} = {}\n  {}",
                balance.map_or("none".into(), fmt_cents),
                fmt_cents(c.base),
                fmt_cents(charged),
                fmt_cents(given_back),
                fmt_cents(refunded),
                fmt_cents(expected),
                orders.join("\n  ")
            ));
        }
        let version = body["version"].as_u64().unwrap_or(0) as u32;
        if version < c.v.version || version > c.v.version + c.v.slack {
            return Err(format!(
                "{context}: invariant \"versions step by one per change\" broken for customer {id}: \
                 broker version {version}, model expects {}{}",
                c.v.version,
                if c.v.slack > 0 {
                    format!(" to {}", c.v.version + c.v.slack)
                } else {
                    String::new()
                }
            ));
        }
        c.v = Versioned { version, slack: 0 };
        Ok(())
    }

    /// The model's own ledger invariants.
    fn check_ledgers(&self, context: &str) -> Check {
        for (id, o) in &self.model.orders {
            let Some(s) = &o.shop else { continue };
            if s.given_back + s.refunded > s.charged || s.given_back < 0 || s.refunded < 0 {
                return Err(format!(
                    "{context}: invariant \"given back + refunded ≤ charged\" broken for order {id}: {}",
                    self.ledger_text(*id)
                ));
            }
            for (p, r) in &s.returned {
                if *r > s.taken.get(p).copied().unwrap_or(0) {
                    return Err(format!(
                        "{context}: invariant \"returned ≤ taken\" broken for order {id}: {}",
                        self.ledger_text(*id)
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_touched(&mut self, t: &Touched, context: &str) -> Check {
        for id in &t.orders {
            self.check_order(*id, context)?;
        }
        for id in &t.products {
            let reply = self.get(&format!("/products/{id}"))?;
            self.compare_product(*id, &reply.body, context)?;
        }
        for id in &t.customers {
            let reply = self.get(&format!("/customers/{id}"))?;
            self.compare_customer(*id, &reply.body, context)?;
        }
        self.check_ledgers(context)
    }

    /// Everything: every order (and no other), product and customer, and
    /// the board views.
    /// Everything against the model: on the one broker, or on every node
    /// of the cluster once all applied the whole stream.
    fn check_all(&mut self, context: &str) -> Check {
        let Backend::Cluster { brokers, node, .. } = &self.backend else {
            return self.check_all_here(context);
        };
        brokers.wait_caught_up(&[0, 1, 2], Duration::from_secs(30));
        let addrs: Vec<String> = (0..3).map(|i| brokers.node(i).addr.clone()).collect();
        let back = *node;
        for (i, addr) in addrs.iter().enumerate() {
            self.http = Http::connect(addr).map_err(|e| format!("connect to node {i}: {e}"))?;
            self.check_all_here(&format!("{context}, node {i}"))?;
        }
        self.http = Http::connect(&addrs[back]).map_err(|e| format!("reconnect: {e}"))?;
        Ok(())
    }

    fn check_all_here(&mut self, context: &str) -> Check {
        let mut seen = Vec::new();
        let mut path = "/orders?limit=1000".to_string();
        loop {
            let reply = self.get(&path)?;
            let page = reply.body.as_array().cloned().unwrap_or_default();
            for body in &page {
                let id = body["id"].as_u64().unwrap_or(u64::MAX);
                if !self.model.orders.contains_key(&id) {
                    return Err(format!(
                        "{context}: the broker has order {id}, which no acknowledged change made: {body}"
                    ));
                }
                self.compare_order(id, body, context)?;
                seen.push(id);
            }
            match page.last() {
                Some(last) if page.len() == 1000 => {
                    path = format!("/orders?limit=1000&after={}", last["id"]);
                }
                _ => break,
            }
        }
        let missing: Vec<u64> = self
            .model
            .orders
            .keys()
            .copied()
            .filter(|id| !seen.contains(id))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{context}: acknowledged orders are missing from the broker: {missing:?}"
            ));
        }
        let products = self.get("/products")?.body;
        let list = products.as_array().cloned().unwrap_or_default();
        if list.len() != self.model.products.len() {
            return Err(format!(
                "{context}: {} products, the model has {}",
                list.len(),
                self.model.products.len()
            ));
        }
        for body in &list {
            let id = body["id"].as_u64().unwrap_or(0);
            self.compare_product(id, body, context)?;
        }
        let customers = self.get("/customers")?.body;
        let list = customers.as_array().cloned().unwrap_or_default();
        if list.len() != self.model.customers.len() {
            return Err(format!(
                "{context}: {} customers, the model has {}",
                list.len(),
                self.model.customers.len()
            ));
        }
        for body in &list {
            let id = body["id"].as_u64().unwrap_or(0);
            self.compare_customer(id, body, context)?;
        }
        // The views are the stages of the map.
        let ids_in = |stage: Stage| -> Vec<u64> {
            self.model
                .orders
                .iter()
                .filter(|(_, o)| o.stage == stage)
                .map(|(id, _)| *id)
                .collect()
        };
        let want_new = ids_in(Stage::New);
        let want_done = ids_in(Stage::Completed);
        let want_current = ids_in(Stage::InProgress);
        let new = self.get("/get_new_orders")?.body["new_orders"].clone();
        let done = self.get("/get_completed_orders")?.body["completed_orders"].clone();
        let current: Vec<Value> = self.get("/get_current_order")?.body["incomplete_orders"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|o| o["id"].clone())
            .collect();
        for (view, got, want) in [
            ("new", new, json!(want_new)),
            ("completed", done, json!(want_done)),
            ("current", json!(current), json!(want_current)),
        ] {
            if got != want {
                return Err(format!(
                    "{context}: invariant \"views = stages of the map\" broken: view {view} is {got}, the model's stage is {want}"
                ));
            }
        }
        self.check_ledgers(context)
    }

    fn fail(&self, step: usize, steps: usize, message: &str) -> ! {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nmodel test FAILED at step {step} (seed {:#x}, MODEL_STEPS={steps}):\n{message}\n",
            self.seed
        );
        let _ = writeln!(
            out,
            "replay: MODEL_SEED={:#x} MODEL_STEPS={} cargo test --test model -- --nocapture\n",
            self.seed,
            step + 1
        );
        let _ = writeln!(out, "the sequence so far ({} lines):", self.log.len());
        for line in &self.log {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "\nthe broker's log (last lines):\n{}", self.log_tail());
        panic!("{out}");
    }
}

#[test]
fn random_operations_agree_with_the_reference_model() {
    let seed = env_number("MODEL_SEED").unwrap_or(DEFAULT_SEED);
    run(Harness::new(seed));
}

#[test]
fn random_operations_agree_with_the_reference_model_on_a_cluster() {
    let Some(_alone) = cluster_harness::alone() else {
        return;
    };
    let seed = env_number("MODEL_SEED").unwrap_or(DEFAULT_SEED);
    run(Harness::on_cluster(seed));
}

fn run(mut h: Harness) {
    let seed = h.seed;
    let steps = env_number("MODEL_STEPS").map_or(DEFAULT_STEPS, |n| n as usize);
    let started = Instant::now();
    if let Err(e) = h.setup() {
        h.fail(0, steps, &e);
    }
    for step in 0..steps {
        let op = if step % RESTART_EVERY == RESTART_EVERY - 1 && step + 1 < steps {
            Op::Restart
        } else {
            h.generate()
        };
        if let Err(e) = h.pick_node() {
            h.fail(step, steps, &e);
        }
        let mut touched = Touched::default();
        let context = format!("step {step}");
        let outcome = h.apply(&op, &mut touched);
        if let Ok(answer) = &outcome {
            // "200 charged 4.10" counts as "process 200".
            let status = answer.split(' ').next().unwrap_or("");
            let key = format!("{} {status}", Harness::op_name(&op));
            *h.counts.entry(key).or_default() += 1;
        }
        let line = match &outcome {
            Ok(answer) => format!("step {step}: {op:?} → {answer}"),
            Err(_) => format!("step {step}: {op:?} → FAILED"),
        };
        h.log.push(line);
        let checked = outcome.and_then(|_| h.check_touched(&touched, &context));
        let checked = checked.and_then(|()| {
            if step % CHECK_ALL_EVERY == CHECK_ALL_EVERY - 1 {
                h.check_all(&format!("{context} (full check)"))
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            h.fail(step, steps, &e);
        }
    }
    if let Err(e) = h.check_all("at the end") {
        h.fail(steps, steps, &e);
    }
    println!(
        "model test: seed {seed:#x}, {steps} steps, {} boots, {} orders, {:.1} s; operations: {:?}",
        h.boots,
        h.model.orders.len(),
        started.elapsed().as_secs_f64(),
        h.counts
    );
}
