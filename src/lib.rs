//! order-broker: an in-memory, concurrent order-state broker.
//!
//! Map of the crate — where each kind of change goes:
//!
//! - [`model`]: domain types (`OrderId`, `Seq`, `Version`, `Stage`,
//!   `Arrival`: an order's place in every list) and the compact `Order`
//!   record the maps hold.
//! - [`symbols`]: the interned texts (status words, orderbot ids) that keep an
//!   order at 40 bytes, the pins every reader of an order holds, and the
//!   sweep that frees words nothing uses (the broker's marking is in
//!   `broker/reclaim.rs`, the task that runs it in `server.rs`).
//! - [`money`]: integer-cent amounts and rates, read and written exactly,
//!   with their hard bounds.
//! - [`catalog`]: products, customers and templates, each record behind its
//!   own lock.
//! - [`shop`]: shop order details (items, totals, history, payment, delivery,
//!   return, feedback) and the pure rules: pricing, stock allocation per
//!   strategy, lifecycle states, the delivery flow, delivery fees, returns,
//!   and in `shop/ledger.rs` the one table of moves a shop order may make
//!   (`check_move`) and its `Ledger` of money and stock moved.
//! - [`broker`]: the [`Broker`] handle and every write path, with the lock
//!   order that keeps them consistent: the seed status update, views, and
//!   `apply`, the one path an order changes by, which holds shop orders to
//!   the table of moves and settles their ledgers (`broker/mod.rs`), orders
//!   with items, their numbers, lists in arrival order and the lifecycle
//!   (`broker/shop.rs`), stock and balance taken by processing or at
//!   placement (`broker/process.rs`), products and customers (`broker/catalog.rs`,
//!   templates too), fulfilment: assignment, the delivery flow, location,
//!   cancellation with its give-back, feedback (`broker/fulfilment.rs`),
//!   bulk changes and the gate that makes them atomic (`broker/bulk.rs`),
//!   scheduled orders (`broker/schedule.rs`), returns (`broker/returns.rs`),
//!   the callbacks owed to CPEE as records (`broker/callbacks.rs`),
//!   snapshot dumps and recovery (`broker/persist.rs`), eviction of finished
//!   orders (`broker/evict.rs`), reclaiming unused words
//!   (`broker/reclaim.rs`).
//! - [`journal`]: durability: the handle requests wait on, segments,
//!   `CURRENT` and snapshots (a consistent cut) in `journal/mod.rs`;
//!   writing batches (group commit, read-back check, preallocation, the
//!   archive of evicted orders; by the waiting request or the writer
//!   thread) in `journal/writer.rs`; the fsyncs, pipelined, in
//!   `journal/sync.rs`; the watermarks and the requests waiting on them in
//!   `journal/durable.rs`; recovery at start
//!   (torn tails, damage) and the checks of it that read no record, which
//!   the binary runs before it listens (`preflight`), in
//!   `journal/recovery.rs`; the file format in
//!   `journal/record.rs`.
//! - [`cluster`]: several brokers on one NATS JetStream stream: the
//!   stream as the journal, the lease and its fence, following the stream,
//!   forwarding writes to the leader (`cluster/`, its module docs first).
//! - [`feed`]: change events (orders, products, customers), the bounded
//!   history ring, and subscriptions.
//! - [`cpee`]: CPEE's protocol: calls, pending callbacks and their checks
//!   (`cpee/mod.rs`), the dispatch queue that hands only still-new orders
//!   to waiting orderbots (`dispatch.rs`), waits for a state and salvage of
//!   those that can never be met (`waits.rs`), one delivery task per
//!   callback with stop/resume handling (`deliver.rs`), instance state
//!   probes (`instances.rs`), the bounded connection pool (`pool.rs`),
//!   answers kept for re-sent calls, a callback as the journal keeps it
//!   (`record.rs`), and taking the callbacks over after a restart or a
//!   failover (`takeover.rs`).
//! - [`analytics`]: aggregates kept from the change feed (revenue, spend,
//!   delivery and stage times, cancellations) for `/analytics`.
//! - [`auth`]: who is calling (static tokens, JWTs), their role, the strict
//!   rule for their subject, and the API groups auth is decided for.
//! - [`config`]: the typed TOML config, its defaults, env overrides, validation.
//! - [`http`]: routing, body parsing (with its deadline), errors, access
//!   rules and what each caller may see of an order (`access`),
//!   `Idempotency-Key` (`idempotency`), and one module per API group:
//!   `order_store` (the seed robot-bar API), `catalog`, `orders` (incl.
//!   processing), `fulfilment` (delivery, cancel, bulk, returns, feedback),
//!   `export`, `templates`, `analytics`, `lifecycle` (the Order Status API),
//!   `live` (event streams, `/views`, the board page from
//!   `assets/board.html`), `store` (the Flask store tutorial's `/api/...`
//!   blueprints, served by the `catalog` and `orders` handlers, and its page
//!   `/store` from `assets/store.html`), `cpee` (the CPEE endpoints),
//!   `openapi` (`/openapi.json`: schemas derived with `utoipa` from the
//!   handlers' types, security from the auth policy; the table of
//!   operations and their texts in `openapi/ops.rs`), `docs` (`/docs`,
//!   Swagger UI served from the binary), `metrics` (`/metrics`), `ops`
//!   (`/healthz`, `/readyz`).
//! - [`stall`]: cuts a connection whose peer stops reading what it is sent,
//!   and bounds what the kernel holds of an event stream's unsent bytes.
//! - [`tls`]: the PEM files of the config, read and checked at start, and
//!   the rustls configs built from them: the listener's https
//!   (`http.tls_cert_file`) and the one https callbacks go out with (the
//!   system's CA certificates plus `cpee.callback_ca_file`).
//! - [`server`]: accept loop, connections (TLS handshakes with their
//!   deadline when serving https), recovery before ready, the
//!   housekeeping task (scheduled orders, eviction), graceful shutdown with
//!   a journal flush (`run`, `serve`).
//!
//! The binary (`main.rs`) only parses the command line, loads the config,
//! sets up logging, binds, and calls [`server::run`].

pub mod analytics;
pub mod auth;
pub mod broker;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod cpee;
pub mod feed;
pub mod http;
pub mod journal;
pub mod model;
pub mod money;
pub mod server;
pub mod shop;
pub mod stall;
pub mod symbols;
pub mod tls;

pub use broker::{Broker, BrokerError};
pub use config::Config;
pub use model::{Order, OrderId, OrderView, Seq, Stage, Version};
