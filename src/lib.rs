//! order-broker: an in-memory, concurrent order-state broker.
//!
//! Map of the crate — where each kind of change goes:
//!
//! - [`model`]: domain types (`OrderId`, `Seq`, `Version`, `Stage`) and the
//!   compact `Order` record the maps hold.
//! - [`symbols`]: the interned texts (status words, orderbot ids) that keep an
//!   order at 40 bytes.
//! - [`broker`]: the [`Broker`] handle: the sharded order map, the stage
//!   indexes (the views), the global sequence, and every write path.
//! - [`feed`]: change events, the bounded history ring, and subscriptions.
//! - [`config`]: the typed TOML config, its defaults, env overrides, validation.
//! - [`http`]: routing, body parsing, errors, and one module per API group
//!   (`order_store` is the seed robot-bar API, `ops` the health endpoint).
//! - [`server`]: accept loop, connections, graceful shutdown (`run`, `serve`).
//!
//! The binary (`main.rs`) only parses the command line, loads the config,
//! sets up logging, binds, and calls [`server::run`].

pub mod auth;
pub mod broker;
pub mod catalog;
pub mod config;
pub mod feed;
pub mod http;
pub mod model;
pub mod money;
pub mod server;
pub mod shop;
pub mod symbols;

pub use broker::{Broker, BrokerError};
pub use config::Config;
pub use model::{Order, OrderId, OrderView, Seq, Stage, Version};
