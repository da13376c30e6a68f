//! Typed configuration: one TOML file (`config/broker.toml`, embedded in the
//! binary as the default), overridden key by key by `ORDER_BROKER_<KEY>`
//! environment variables, then by the command line. Defaults live in the
//! `Default` impls below and nowhere else; `config/broker.toml` spells every
//! key out with the same values (a test keeps the two in step).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file `cargo run` uses, compiled in so the binary runs anywhere.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/broker.toml");
/// Where the broker looks for its config file when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/broker.toml";
/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "ORDER_BROKER_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (`--listen` and `ORDER_BROKER_LISTEN` override it).
    pub listen: SocketAddr,
    /// Log filter in `tracing` syntax (`info`, `order_broker=debug`); `RUST_LOG` wins when set.
    pub log_level: String,
    /// The seed order_store's URLs (its `conf_order_store`).
    pub order_store: OrderStoreUrls,
    /// Which status words put an order in which stage; any other word means in progress.
    pub stages: StageWords,
    /// Limits that protect the broker from oversized or abusive input.
    pub limits: Limits,
    /// HTTP behaviour shared by every route.
    pub http: HttpConfig,
    /// The change feed.
    pub events: Events,
    /// Money rules of shop orders.
    pub shop: Shop,
    /// Who may call; with no tokens and no JWT secret the broker is open.
    pub auth: AuthConfig,
    /// The order board page served at `/`.
    pub board: Board,
    /// Process engines (CPEE): dispatch, waits and callback delivery.
    pub cpee: CpeeConfig,
    /// Journal and snapshots: how state survives a restart or a crash.
    pub persistence: Persistence,
    /// Returns and refunds of completed orders.
    pub returns: Returns,
    /// Delivery fees of orders delivered to a distance or a zone.
    pub delivery: DeliveryFees,
    /// Several brokers sharing one state through NATS JetStream (off by
    /// default: `nats_urls` empty).
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:port`); empty: a single
    /// node with its own journal.
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// This node's base URL as the other nodes reach it (they forward
    /// writes to the leader there).
    pub advertise_url: String,
    /// The JetStream stream that is the journal; its lease bucket is
    /// `<stream>_lease`.
    pub stream: String,
    /// Replicas of the stream and the lease bucket.
    pub replicas: usize,
    /// How long a leader's lease lasts without renewal.
    pub lease_ms: u64,
    /// The leader stores a snapshot after the stream grew by this many
    /// messages, and purges the stream below the snapshot before it.
    pub snapshot_every_changes: u64,
    /// NATS credentials: a `.creds` file, or a user and password, or a token.
    pub creds_file: String,
    pub user: String,
    pub password: String,
    pub token: String,
    /// CA certificate (PEM) for `tls://` NATS servers with a private CA.
    pub ca_file: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_urls: Vec::new(),
            node_id: String::new(),
            advertise_url: String::new(),
            stream: "ORDER_BROKER".into(),
            replicas: 3,
            lease_ms: 3000,
            snapshot_every_changes: 100_000,
            creds_file: String::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            ca_file: String::new(),
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let bad = |why: &str| Err(ConfigError(format!("cluster: {why}")));
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return bad("node_id must be 1 to 64 bytes when nats_urls is set");
        }
        let url_ok = ["http://", "https://"].iter().any(|scheme| {
            self.advertise_url
                .strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !url_ok {
            return bad("advertise_url must be this node's http:// or https:// base URL");
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !name_ok(&self.stream) {
            return bad("stream must be 1 to 64 letters, digits, '_' or '-'");
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("replicas must be 1 to 5 (JetStream's limit)");
        }
        if !(500..=600_000).contains(&self.lease_ms) {
            return bad("lease_ms must be 500 to 600000");
        }
        if self.snapshot_every_changes == 0 {
            return bad("snapshot_every_changes must be greater than 0");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryFees {
    /// Fee of every delivery, before distance ("2.00").
    pub base_fee: String,
    /// Added per kilometre of `delivery.distance_km`.
    pub per_km: String,
    /// Longest distance delivered to, in km (422 past it).
    pub max_distance_km: u32,
    /// Zones with a flat fee instead of base + distance: `[{ name, fee }]`.
    pub zones: Vec<Zone>,
    /// An order whose total reaches this has no base/distance/zone fee
    /// ("0": never free).
    pub free_above: String,
    /// Added to the fee of orders placed in a window of the day (UTC,
    /// "HH:MM", `to` exclusive; a window may pass midnight): `[{ from, to, amount }]`.
    pub surcharges: Vec<Surcharge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    pub fee: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Surcharge {
    pub from: String,
    pub to: String,
    pub amount: String,
}

impl Default for DeliveryFees {
    fn default() -> Self {
        DeliveryFees {
            base_fee: "0".into(),
            per_km: "0".into(),
            max_distance_km: 50,
            zones: Vec::new(),
            free_above: "0".into(),
            surcharges: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Returns {
    /// Seconds after completion a customer may ask for a return.
    pub window_secs: u64,
    /// Whether refunded items go back in stock.
    pub restock: bool,
}

impl Default for Returns {
    fn default() -> Self {
        Returns {
            window_secs: 14 * 24 * 3600,
            restock: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Persistence {
    /// `journal`: every change is appended to a journal under `dir` and the
    /// state is recovered at start; `memory`: nothing is written to disk.
    pub mode: PersistenceMode,
    /// Directory of the journal and snapshots, created if missing.
    pub dir: PathBuf,
    /// When the journal is fsynced, as in Redis's AOF: `always` (a write is
    /// acknowledged only once it is on disk), `everysec`, or `no` (the OS decides).
    pub fsync: Fsync,
    /// A snapshot is written after this many journal records…
    pub snapshot_every_events: u64,
    /// …or this many journal bytes, whichever comes first.
    pub snapshot_every_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistenceMode {
    Journal,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    Everysec,
    No,
}

impl Default for Persistence {
    fn default() -> Self {
        Persistence {
            mode: PersistenceMode::Journal,
            dir: PathBuf::from("data"),
            fsync: Fsync::Always,
            snapshot_every_events: 1_000_000,
            snapshot_every_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderStoreUrls {
    /// Create or update an order (PUT or POST).
    pub url_update: String,
    /// More paths that behave exactly like `url_update`.
    pub url_update_aliases: Vec<String>,
    /// Every order: `[{"order_id", "status", "orderbot_id"}]`.
    pub url_get_all: String,
    /// Orders in progress: `{"incomplete_orders": [...]}`.
    pub url_get_current_order: String,
    /// Ids of completed orders: `{"completed_orders": [...]}`.
    pub url_get_completed_orders: String,
    /// Ids of new orders: `{"new_orders": [...]}`.
    pub url_get_new_orders: String,
    /// One order; must contain the `{id}` segment.
    pub url_get_status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageWords {
    /// Status words of new orders.
    pub new: Vec<String>,
    /// Status words of completed orders.
    pub completed: Vec<String>,
    /// Status words of cancelled orders (readable, but on no board view).
    pub cancelled: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest status word or orderbot id accepted, in bytes.
    pub max_text_bytes: usize,
    /// Most distinct status words and orderbot ids kept (each order stores a
    /// 4-byte handle to its texts); a new text past this is refused with 422.
    pub max_symbols: usize,
    /// Seconds a client may take to send a request's headers (slowloris
    /// guard); also how long a keep-alive connection may sit idle.
    pub header_read_timeout_secs: u64,
    /// Seconds a client may take to send a request's body once its headers
    /// are in; past it the request gets 408 and the connection is closed.
    pub body_read_timeout_secs: u64,
    /// Seconds a connection may go without taking any of what the broker
    /// writes (a client that stopped reading, e.g. a silent event stream);
    /// past it the connection is closed.
    pub write_stall_secs: u64,
    /// Most connections open at once; past it a new one gets 503 and is closed.
    pub max_connections: usize,
    /// Most `Idempotency-Key` answers kept at once; past it (after dropping
    /// expired ones) a new key gets 503.
    pub max_idempotency_keys: usize,
    /// Most `Idempotency-Key`s one caller (a token, or an address without
    /// one) holds within `http.idempotency_ttl_secs`; past it a new key of
    /// theirs gets 429, and nobody else is affected.
    pub max_idempotency_keys_per_caller: usize,
    /// Most orders kept in memory; past it the orders that finished
    /// (completed or cancelled) longest ago leave memory for the archive.
    pub max_orders_kept: usize,
    /// Seconds after which a finished order leaves memory for the archive;
    /// 0: never by age.
    pub evict_finished_after_secs: u64,
    /// Most orders one bulk call may name.
    pub max_bulk_orders: usize,
    /// Most units of one item of an order, template or return, and of a
    /// product's stock, as a request sets them (422 past it). At most
    /// 999999999999999 (15 digits).
    pub max_quantity: u64,
    /// Largest amount a request may set or make (decimal text): a price,
    /// a balance (either sign), an order's total and grand total (422 past
    /// it). At most "9999999999999.99" (15 digits).
    pub max_amount: String,
}

impl Limits {
    /// `max_amount` parsed: 0.01 to `Money::MAX`.
    pub fn max_amount(&self) -> Result<crate::money::Money, ConfigError> {
        use crate::money::Money;
        Money::parse(&self.max_amount)
            .ok()
            .filter(|m| (Money(1)..=Money::MAX).contains(m))
            .ok_or_else(|| {
                ConfigError(format!(
                    "limits.max_amount must be an amount from 0.01 to {} (got {:?})",
                    Money::MAX,
                    self.max_amount
                ))
            })
    }
}

impl HttpConfig {
    /// Whether the listener serves https (`tls_cert_file` is set).
    pub fn serves_https(&self) -> bool {
        !self.tls_cert_file.as_os_str().is_empty()
    }
}

/// `http.cors_allow_origin`: one origin (or `"*"`), or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Origins {
    One(String),
    Many(Vec<String>),
}

impl Origins {
    /// Every origin named (empty texts dropped).
    pub fn list(&self) -> Vec<&str> {
        match self {
            Origins::One(o) => vec![o.as_str()],
            Origins::Many(all) => all.iter().map(String::as_str).collect(),
        }
        .into_iter()
        .filter(|o| !o.trim().is_empty())
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins whose pages may read the answers (CORS): `"*"` for any, one
    /// origin, or a list (the request's `Origin` is echoed when listed);
    /// empty sends no CORS headers.
    pub cors_allow_origin: Origins,
    /// Seconds to let requests in flight finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Seconds an `Idempotency-Key`'s first answer is kept for replays.
    pub idempotency_ttl_secs: u64,
    /// PEM certificate chain (the server's certificate first) to serve https
    /// with; set together with `tls_key_file`. Empty: plain http.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`'s certificate.
    pub tls_key_file: PathBuf,
    /// Whether only requests that came over TLS are answered (403 else, but
    /// `/healthz` and `/readyz`); a trusted proxy's `X-Forwarded-Proto` counts.
    pub require_https: bool,
    /// Networks (CIDR) of the proxies whose `X-Forwarded-Proto` is believed.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// Recent changes kept in memory for subscribers that resume or fall behind.
    pub history_size: usize,
    /// Seconds between heartbeat comments on an idle event stream.
    pub heartbeat_secs: u64,
    /// `retry:` hint sent to EventSource clients, in milliseconds.
    pub retry_ms: u64,
    /// Most event streams open at once; past it a new one gets 503.
    pub max_streams: usize,
    /// Rendered events buffered for live streams; a stream that falls this far
    /// behind catches up from the history, or gets `resync`.
    pub live_buffer: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shop {
    /// Tax on an order's total, as a fraction with up to 4 decimals ("0.10" = 10 %).
    pub tax_rate: String,
    /// Service charge on an order's total, as a fraction ("0.05" = 5 %).
    pub service_charge_rate: String,
    /// `storeName` in the Order Status API's answers.
    pub store_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static tokens, each `{ token = "...", role = "staff", subject = "..." }`;
    /// a customer's subject is their customer id.
    pub tokens: Vec<crate::auth::StaticToken>,
    /// HS256 secret for JWTs with claims `sub`, `role` and `exp`; empty: none.
    pub jwt_secret: crate::auth::Secret,
    /// Whether the board views (the seed's GET endpoints) need a token too;
    /// true takes `views` out of `open`.
    pub protect_views: bool,
    /// API groups that need no token even when auth is on: an anonymous
    /// caller gets the whole group, as with auth off.
    pub open: Vec<crate::auth::ApiGroup>,
    /// Networks (CIDR) an anonymous caller of an open `seed_writes` or
    /// `cpee` group must come from; empty: any.
    pub cpee_networks: Vec<String>,
    /// JWT `role` claim values and the roles they stand for, besides the
    /// roles' own names: `{ user = "customer", courier = "delivery" }`.
    pub jwt_roles: std::collections::BTreeMap<String, crate::auth::Role>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens: Vec::new(),
            jwt_secret: Default::default(),
            protect_views: false,
            open: vec![crate::auth::ApiGroup::Views, crate::auth::ApiGroup::Ops],
            cpee_networks: Vec::new(),
            jwt_roles: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Board {
    /// The page's heading and title.
    pub title: String,
    /// Seconds a completed order stays on the board.
    pub completed_linger_secs: u64,
    /// Seconds in New or In progress after which a card is marked "waiting
    /// long" (0: never); the page's `?waiting_long=<secs>` overrides it.
    pub waiting_long_secs: u64,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            title: "Orders".into(),
            completed_linger_secs: 120,
            waiting_long_secs: 600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpeeConfig {
    /// Hosts (`host` or `host:port`) callbacks may go to; empty: any (then
    /// whoever may call `/cpee/wait` makes the broker PUT to any address).
    pub callback_allow: Vec<String>,
    /// PEM file of CA certificates trusted for `https://` callbacks, besides
    /// the system's; empty: the system's only.
    pub callback_ca_file: PathBuf,
    /// Callback deliveries in flight at once, and the connections open for
    /// them (in flight or idle, to every host together).
    pub max_deliveries: usize,
    /// Milliseconds one callback PUT may take.
    pub callback_timeout_ms: u64,
    /// Failed attempts at one answer before its callback is given up.
    pub callback_retries: u32,
    /// Milliseconds before the first retry; doubles each time, up to 10 s.
    pub callback_backoff_ms: u64,
    /// Longest `?wait=` a work request may long-poll, in seconds.
    pub max_wait_secs: u64,
    /// Most callbacks pending (and re-send answers kept) at once.
    pub max_pending: usize,
    /// Most state waits (`/cpee/wait` callbacks) pending on one order.
    pub max_waits_per_order: usize,
    /// Least milliseconds between two `CPEE-UPDATE` PUTs to one callback;
    /// changes meanwhile are coalesced into the newest. 0: no pause.
    pub min_update_interval_ms: u64,
    /// Seconds a callback whose CPEE instance is stopped (its PUT answered
    /// 503) is kept for delivery after the instance resumes.
    pub stopped_give_up_secs: u64,
    /// Longest pause, in seconds, between two checks whether a stopped
    /// instance resumed (they back off from `callback_backoff_ms`).
    pub stopped_retry_max_secs: u64,
    /// Seconds between two checks of every pending callback's instance
    /// (`<CPEE-INSTANCE-URL>properties/state/`): a callback whose instance
    /// is gone, finished or abandoned is dropped. 0: never.
    pub probe_interval_secs: u64,
    /// Seconds a call's answer is kept to answer a re-sent call the same.
    pub resend_memory_secs: u64,
    /// Status of an order taken in by `POST /orders/intake`.
    pub intake_status: String,
}

impl Default for CpeeConfig {
    fn default() -> Self {
        CpeeConfig {
            callback_allow: Vec::new(),
            callback_ca_file: PathBuf::new(),
            max_deliveries: 64,
            callback_timeout_ms: 5000,
            callback_retries: 8,
            callback_backoff_ms: 200,
            max_wait_secs: 60,
            max_pending: 10_000,
            max_waits_per_order: 64,
            min_update_interval_ms: 50,
            stopped_give_up_secs: 86_400,
            stopped_retry_max_secs: 60,
            probe_interval_secs: 60,
            resend_memory_secs: 3600,
            intake_status: "Order Initiated".into(),
        }
    }
}

impl Default for Shop {
    fn default() -> Self {
        Shop {
            tax_rate: "0".into(),
            service_charge_rate: "0".into(),
            store_name: "order-broker".into(),
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Events {
            history_size: 65536,
            heartbeat_secs: 15,
            retry_ms: 3000,
            max_streams: 10_000,
            live_buffer: 4096,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8129)),
            log_level: "info".into(),
            order_store: OrderStoreUrls::default(),
            stages: StageWords::default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            events: Events::default(),
            shop: Shop::default(),
            auth: AuthConfig::default(),
            board: Board::default(),
            cpee: CpeeConfig::default(),
            persistence: Persistence::default(),
            returns: Returns::default(),
            delivery: DeliveryFees::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for OrderStoreUrls {
    fn default() -> Self {
        OrderStoreUrls {
            url_update: "/update_order".into(),
            url_update_aliases: vec!["/update-order".into()],
            url_get_all: "/get_all".into(),
            url_get_current_order: "/get_current_order".into(),
            url_get_completed_orders: "/get_completed_orders".into(),
            url_get_new_orders: "/get_new_orders".into(),
            url_get_status: "/get_status/{id}".into(),
        }
    }
}

impl Default for StageWords {
    fn default() -> Self {
        StageWords {
            new: vec!["Order Initiated".into()],
            completed: vec!["Order Served".into()],
            cancelled: vec!["Order Cancelled".into()],
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_text_bytes: 256,
            max_symbols: 1 << 20,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 10,
            write_stall_secs: 30,
            max_connections: 20_000,
            max_idempotency_keys: 100_000,
            max_idempotency_keys_per_caller: 1_000,
            max_orders_kept: 5_000_000,
            evict_finished_after_secs: 0,
            max_bulk_orders: 100,
            max_quantity: 1_000_000,
            max_amount: "1000000000".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_allow_origin: Origins::One("*".into()),
            shutdown_grace_secs: 10,
            idempotency_ttl_secs: 600,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            require_https: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Why a configuration could not be loaded. The message names the file and
/// the offending key; it never prints values, which may be secrets.
#[derive(Debug)]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the config the way the binary does: `path` if given (it must
    /// exist), else `config/broker.toml` if present, else the embedded
    /// default; then applies `ORDER_BROKER_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (source, text) = match path {
            Some(p) => (p.to_path_buf(), read(p)?),
            None if Path::new(DEFAULT_PATH).exists() => {
                (PathBuf::from(DEFAULT_PATH), read(Path::new(DEFAULT_PATH))?)
            }
            None => (PathBuf::from("<embedded default>"), EMBEDDED_DEFAULT.into()),
        };
        let config = Self::from_toml(&text)
            .map_err(|e| ConfigError(format!("{}: {e}", source.display())))?;
        config.with_env(env)
    }

    /// Parses and validates one TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `ORDER_BROKER_<KEY>` overrides, where `<KEY>` is the key's path
    /// joined by `_` in upper case (`ORDER_BROKER_LIMITS_MAX_BODY_BYTES`). A
    /// value is read as TOML (`1024`, `["a", "b"]`) unless the key holds text.
    /// An `ORDER_BROKER_` variable that names no key is an error.
    ///
    /// Then the FastAPI seed's settings are read where the broker's own
    /// keys are unset (see [`Config::with_seed_settings`]).
    pub fn with_env(
        self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config = self.with_overrides(&env)?;
        let config = config.with_seed_settings(&env)?;
        config.validate()?;
        Ok(config)
    }

    /// The FastAPI seed's settings, as aliases of the broker's keys where
    /// those are unset (neither the file nor `ORDER_BROKER_*` set them):
    /// `JWT_SECRET_KEY` (`auth.jwt_secret`; so a deployment that sets only
    /// it runs with auth on), `CORS_ORIGINS` (`http.cors_allow_origin`: a
    /// JSON list or comma-separated origins). `JWT_ALGORITHM` may only say
    /// `HS256`, the one algorithm the broker verifies.
    fn with_seed_settings(mut self, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if let Some(algorithm) = get("JWT_ALGORITHM")
            && !algorithm.trim().eq_ignore_ascii_case("HS256")
        {
            return Err(ConfigError(format!(
                "JWT_ALGORITHM={algorithm:?}: the broker verifies HS256 JWTs only; \
                 issue HS256 tokens or unset JWT_ALGORITHM"
            )));
        }
        if let Some(secret) = get("JWT_SECRET_KEY")
            && self.auth.jwt_secret.0.is_empty()
            && get("ORDER_BROKER_AUTH_JWT_SECRET").is_none()
        {
            // A deployment that means auth on must not run open.
            if secret.trim().is_empty() {
                return Err(ConfigError(
                    "JWT_SECRET_KEY is set but empty: a FastAPI deployment with it signs \
                     its tokens, so the broker would run with auth off; set the secret, \
                     or unset JWT_SECRET_KEY to run open"
                        .into(),
                ));
            }
            self.auth.jwt_secret = crate::auth::Secret(secret.to_string());
        }
        if let Some(origins) = get("CORS_ORIGINS")
            && self.http.cors_allow_origin == HttpConfig::default().cors_allow_origin
            && get("ORDER_BROKER_HTTP_CORS_ALLOW_ORIGIN").is_none()
        {
            let list: Vec<String> = if origins.trim_start().starts_with('[') {
                serde_json::from_str(origins).map_err(|e| {
                    ConfigError(format!("CORS_ORIGINS: not a JSON list of origins: {e}"))
                })?
            } else {
                origins.split(',').map(|o| o.trim().to_string()).collect()
            };
            self.http.cors_allow_origin = Origins::Many(list);
        }
        Ok(self)
    }

    /// The `ORDER_BROKER_<KEY>` variables of `env`, applied.
    fn with_overrides(self, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let overrides: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .cloned()
            .collect();
        if overrides.is_empty() {
            return Ok(self);
        }
        let mut table = toml::Table::try_from(&self).map_err(|e| ConfigError(e.to_string()))?;
        let keys = env_keys();
        for (name, raw) in overrides {
            let Some(path) = keys.iter().find(|(n, _)| *n == name).map(|(_, p)| p) else {
                return Err(ConfigError(format!(
                    "unknown environment variable {name}: no config key by that name \
                     (known: {})",
                    keys.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            // NATS's own tools take a comma-separated server list: so may this.
            let raw =
                if name == "ORDER_BROKER_CLUSTER_NATS_URLS" && !raw.trim_start().starts_with('[') {
                    let urls: Vec<String> = raw
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(|u| format!("{u:?}"))
                        .collect();
                    format!("[{}]", urls.join(", "))
                } else {
                    raw
                };
            set_path(&mut table, path, &raw).map_err(|e| ConfigError(format!("{name}: {e}")))?;
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("environment: {e}")))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = &self.order_store;
        let all_urls = [
            ("order_store.url_update", &urls.url_update),
            ("order_store.url_get_all", &urls.url_get_all),
            (
                "order_store.url_get_current_order",
                &urls.url_get_current_order,
            ),
            (
                "order_store.url_get_completed_orders",
                &urls.url_get_completed_orders,
            ),
            ("order_store.url_get_new_orders", &urls.url_get_new_orders),
            ("order_store.url_get_status", &urls.url_get_status),
        ]
        .into_iter()
        .chain(
            urls.url_update_aliases
                .iter()
                .map(|u| ("order_store.url_update_aliases", u)),
        );
        for (key, url) in all_urls {
            if !url.starts_with('/') {
                return Err(ConfigError(format!(
                    "{key} must start with '/' (got {url:?})"
                )));
            }
        }
        if !urls.url_get_status.contains("{id}") {
            return Err(ConfigError(
                "order_store.url_get_status must contain the segment {id}".into(),
            ));
        }
        let s = &self.stages;
        for (a_name, a, b_name, b) in [
            ("new", &s.new, "completed", &s.completed),
            ("new", &s.new, "cancelled", &s.cancelled),
            ("completed", &s.completed, "cancelled", &s.cancelled),
        ] {
            if let Some(w) = a.iter().find(|w| b.contains(w)) {
                return Err(ConfigError(format!(
                    "status word {w:?} is in both stages.{a_name} and stages.{b_name}"
                )));
            }
        }
        for (w, stage) in crate::shop::reserved_words() {
            for (name, list, listed) in [
                ("new", &s.new, crate::model::Stage::New),
                ("completed", &s.completed, crate::model::Stage::Completed),
                ("cancelled", &s.cancelled, crate::model::Stage::Cancelled),
            ] {
                if listed != stage && list.iter().any(|x| x == w) {
                    return Err(ConfigError(format!(
                        "stages.{name} lists {w:?}, a reserved word (lifecycle, delivery) that always means stage {stage}"
                    )));
                }
            }
        }
        for (key, rate) in [
            ("shop.tax_rate", &self.shop.tax_rate),
            ("shop.service_charge_rate", &self.shop.service_charge_rate),
        ] {
            crate::money::Rate::parse(rate).map_err(|e| ConfigError(format!("{key}: {e}")))?;
        }
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.0.trim().is_empty() {
                return Err(ConfigError(format!(
                    "auth.tokens[{i}].token must not be empty"
                )));
            }
            if let Some(problem) = crate::auth::subject_problem(t.role, t.subject.as_deref()) {
                return Err(ConfigError(format!(
                    "auth.tokens[{i}] has role {}, so {problem}",
                    serde_json::to_value(t.role)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )));
            }
        }
        for (i, net) in self.auth.cpee_networks.iter().enumerate() {
            net.parse::<ipnet::IpNet>().map_err(|_| {
                ConfigError(format!(
                    "auth.cpee_networks[{i}]: {net:?} is not a network like \"10.0.0.0/8\" or \"::1/128\""
                ))
            })?;
        }
        let http = &self.http;
        for (i, net) in http.trusted_proxies.iter().enumerate() {
            net.parse::<ipnet::IpNet>().map_err(|_| {
                ConfigError(format!(
                    "http.trusted_proxies[{i}]: {net:?} is not a network like \"10.0.0.0/8\" or \"::1/128\""
                ))
            })?;
        }
        let tls = http.serves_https();
        let key = !http.tls_key_file.as_os_str().is_empty();
        if tls != key {
            return Err(ConfigError(
                "http.tls_cert_file and http.tls_key_file go together: set both to serve https, \
                 or neither"
                    .into(),
            ));
        }
        if http.require_https && !tls && http.trusted_proxies.is_empty() {
            return Err(ConfigError(
                "http.require_https needs http.tls_cert_file and http.tls_key_file, or \
                 http.trusted_proxies (a proxy that terminates TLS): else no request could \
                 be answered"
                    .into(),
            ));
        }
        crate::shop::FeeRules::from_config(&self.delivery).map_err(ConfigError)?;
        let l = &self.limits;
        l.max_amount()?;
        if !(1..=crate::money::MAX_UNITS).contains(&l.max_quantity) {
            return Err(ConfigError(format!(
                "limits.max_quantity must be 1 to {}",
                crate::money::MAX_UNITS
            )));
        }
        for (key, value) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_text_bytes", l.max_text_bytes),
            ("limits.max_symbols", l.max_symbols),
            (
                "limits.header_read_timeout_secs",
                l.header_read_timeout_secs as usize,
            ),
            (
                "limits.body_read_timeout_secs",
                l.body_read_timeout_secs as usize,
            ),
            ("limits.write_stall_secs", l.write_stall_secs as usize),
            ("events.history_size", self.events.history_size),
            ("events.heartbeat_secs", self.events.heartbeat_secs as usize),
            ("events.max_streams", self.events.max_streams),
            ("events.live_buffer", self.events.live_buffer),
            ("limits.max_idempotency_keys", l.max_idempotency_keys),
            (
                "limits.max_idempotency_keys_per_caller",
                l.max_idempotency_keys_per_caller,
            ),
            ("limits.max_connections", l.max_connections),
            ("limits.max_orders_kept", l.max_orders_kept),
            ("limits.max_bulk_orders", l.max_bulk_orders),
            (
                "cpee.callback_timeout_ms",
                self.cpee.callback_timeout_ms as usize,
            ),
            ("cpee.callback_retries", self.cpee.callback_retries as usize),
            (
                "cpee.callback_backoff_ms",
                self.cpee.callback_backoff_ms as usize,
            ),
            ("cpee.max_deliveries", self.cpee.max_deliveries),
            ("cpee.max_pending", self.cpee.max_pending),
            ("cpee.max_waits_per_order", self.cpee.max_waits_per_order),
            (
                "cpee.stopped_retry_max_secs",
                self.cpee.stopped_retry_max_secs as usize,
            ),
            (
                "http.idempotency_ttl_secs",
                self.http.idempotency_ttl_secs as usize,
            ),
            (
                "persistence.snapshot_every_events",
                self.persistence.snapshot_every_events as usize,
            ),
            (
                "persistence.snapshot_every_bytes",
                self.persistence.snapshot_every_bytes as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be greater than 0")));
            }
        }
        self.cluster.validate()
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))
}

/// Every leaf key of the config as (`ORDER_BROKER_...` name, key path).
pub fn env_keys() -> Vec<(String, Vec<String>)> {
    fn walk(table: &toml::Table, prefix: &[String], out: &mut Vec<(String, Vec<String>)>) {
        for (key, value) in table {
            let mut path = prefix.to_vec();
            path.push(key.clone());
            match value {
                toml::Value::Table(inner) => walk(inner, &path, out),
                _ => out.push((
                    format!("{ENV_PREFIX}{}", path.join("_").to_uppercase()),
                    path,
                )),
            }
        }
    }
    let defaults = toml::Table::try_from(Config::default()).expect("config serializes");
    let mut out = Vec::new();
    walk(&defaults, &[], &mut out);
    out
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("paths are non-empty");
    let mut node = table;
    for key in parents {
        node = node
            .get_mut(key)
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| format!("no table {key}"))?;
    }
    let value = match node.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        _ => toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| {
                "value is not valid TOML (quote text, e.g. [\"a\", \"b\"])".to_string()
            })?,
    };
    node.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default_matches_default_impl() {
        assert_eq!(
            Config::from_toml(EMBEDDED_DEFAULT).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn env_overrides_each_kind_of_key() {
        let config = Config::default()
            .with_env(env(&[
                ("ORDER_BROKER_LISTEN", "127.0.0.1:9000"),
                ("ORDER_BROKER_LIMITS_MAX_BODY_BYTES", "1000"),
                (
                    "ORDER_BROKER_STAGES_NEW",
                    r#"["Order Initiated", "Queued"]"#,
                ),
                ("ORDER_BROKER_ORDER_STORE_URL_GET_ALL", "/all"),
                ("ORDER_BROKER_CPEE_MAX_WAITS_PER_ORDER", "8"),
                ("ORDER_BROKER_CPEE_MIN_UPDATE_INTERVAL_MS", "0"),
                ("PATH", "/usr/bin"),
            ]))
            .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.max_body_bytes, 1000);
        assert_eq!(config.stages.new, ["Order Initiated", "Queued"]);
        assert_eq!(config.order_store.url_get_all, "/all");
        assert_eq!(config.cpee.max_waits_per_order, 8);
        assert_eq!(config.cpee.min_update_interval_ms, 0);
    }

    #[test]
    fn unknown_or_bad_env_is_refused() {
        let err = Config::default()
            .with_env(env(&[("ORDER_BROKER_NOPE", "1")]))
            .unwrap_err();
        assert!(err.to_string().contains("ORDER_BROKER_NOPE"), "{err}");
        let err = Config::default()
            .with_env(env(&[("ORDER_BROKER_LIMITS_MAX_BODY_BYTES", "lots")]))
            .unwrap_err();
        assert!(err.to_string().contains("MAX_BODY_BYTES"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_body_byte = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        for (text, needle) in [
            ("[order_store]\nurl_get_status = \"/status\"\n", "{id}"),
            ("[order_store]\nurl_get_all = \"all\"\n", "url_get_all"),
            (
                "[stages]\ncompleted = [\"Order Initiated\"]\n",
                "Order Initiated",
            ),
            ("[limits]\nmax_body_bytes = 0\n", "max_body_bytes"),
            (
                "[cpee]\nmax_waits_per_order = 0\n",
                "cpee.max_waits_per_order",
            ),
            ("[limits]\nmax_quantity = 0\n", "max_quantity"),
            (
                "[limits]\nmax_quantity = 1000000000000000\n",
                "max_quantity",
            ),
            ("[limits]\nmax_amount = \"0\"\n", "max_amount"),
            ("[limits]\nmax_amount = \"-5\"\n", "max_amount"),
            ("[limits]\nmax_amount = \"1.005\"\n", "max_amount"),
            ("[limits]\nmax_amount = \"10000000000000\"\n", "max_amount"),
            ("listen = \"nowhere\"\n", "listen"),
            (
                "[http]\ntls_cert_file = \"cert.pem\"\n",
                "http.tls_key_file",
            ),
            ("[http]\ntls_key_file = \"key.pem\"\n", "http.tls_cert_file"),
            ("[http]\nrequire_https = true\n", "http.require_https"),
            (
                "[http]\ntrusted_proxies = [\"10.0.0.1\"]\n",
                "http.trusted_proxies[0]",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn auth_tokens_load_and_are_checked() {
        let config = Config::from_toml(
            "[auth]\ntokens = [{ token = \"t1\", role = \"staff\" }, \
             { token = \"t2\", role = \"customer\", subject = \"4\" }]\n",
        )
        .unwrap();
        assert_eq!(config.auth.tokens.len(), 2);
        assert!(!format!("{config:?}").contains("t1"), "secrets never print");
        let err = Config::from_toml("[auth]\ntokens = [{ token = \"t\", role = \"customer\" }]\n")
            .unwrap_err();
        assert!(err.to_string().contains("customer id"), "{err}");
        let err = Config::from_toml("[auth]\ntokens = [{ token = \"t\", role = \"king\" }]\n")
            .unwrap_err();
        assert!(err.to_string().contains("king"), "{err}");
        let config = Config::default()
            .with_env(env(&[(
                "ORDER_BROKER_AUTH_TOKENS",
                r#"[{token = "x", role = "admin"}]"#,
            )]))
            .unwrap();
        assert_eq!(config.auth.tokens[0].role, crate::auth::Role::Admin);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/broker.toml")), env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/broker.toml"),
            "{err}"
        );
    }
}
