//! CPEE's side of the broker: work dispatch to waiting orderbots, waiting
//! for an order to reach a state, and delivery of asynchronous answers.
//!
//! CPEE calls a service; a reply with `CPEE-CALLBACK: true` and no body means
//! "I will answer later", and the answer is then a `PUT` to the URL CPEE gave
//! in its `CPEE-CALLBACK` header. Here:
//! - orders taken in by intake wait in a FIFO queue; orderbots asking for work
//!   wait in another, oldest first. Both sit under one lock, so each order
//!   goes to exactly one orderbot and no order waits while an orderbot does;
//!   only an order still new without an orderbot is handed out
//!   (`dispatch.rs`);
//! - state waits are kept per order and checked against every change in the
//!   feed by one task; one that can never be met is salvaged (`waits.rs`);
//! - answers are PUT by a retrying client (backoff on connection errors and
//!   other 5xx, stop on 404 and other 4xx); 503 means the instance is
//!   stopped: the callback is kept until it resumes (`deliver.rs`,
//!   `instances.rs`); a work answer that is not delivered puts its order
//!   back at the queue's head without its orderbot;
//! - each callback has at most one delivery task and one answer waiting
//!   behind it: a newer state replaces a waiting update, a final answer
//!   replaces it and ends the callback, so a writer changing an order fast
//!   costs each wait its newest state, at most once per
//!   `cpee.min_update_interval_ms`; the sockets they go out on are bounded
//!   in all (`pool`);
//! - a re-sent call (same instance UUID and callback id) gets the first
//!   call's answer and takes nothing twice;
//! - every callback owed is a record in the journal or the cluster's stream
//!   (`record.rs`), so the node that delivers after a restart or a failover
//!   takes them over (`takeover.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use hyper::Uri;
use hyper::header::HeaderMap;
use parking_lot::Mutex;
use serde::Serialize;

use crate::broker::Broker;
use crate::config::CpeeConfig;
use crate::feed::Demand;
use crate::model::{Millis, OrderId};

mod deliver;
mod dispatch;
mod instances;
mod pool;
pub mod record;
mod takeover;
mod waits;

use deliver::Outbox;
pub use dispatch::Taken;
use dispatch::{Dispatch, Waiter};
pub use record::{Audience, Callback, Owes, Target};
use waits::StateWait;
pub use waits::WaitAnswer;

/// The CPEE headers of a call.
#[derive(Debug, Clone, Default)]
pub struct CpeeCall {
    pub callback: Option<String>,
    pub callback_id: Option<String>,
    pub instance: Option<String>,
    /// `CPEE-INSTANCE-URL`: where the instance's state can be asked.
    pub instance_url: Option<String>,
    pub instance_uuid: Option<String>,
    pub label: Option<String>,
}

impl CpeeCall {
    pub fn from_headers(headers: &HeaderMap) -> CpeeCall {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        CpeeCall {
            callback: get("cpee-callback"),
            callback_id: get("cpee-callback-id"),
            instance: get("cpee-instance"),
            instance_url: get("cpee-instance-url"),
            instance_uuid: get("cpee-instance-uuid"),
            label: get("cpee-label"),
        }
    }

    /// What identifies a re-sent call, if CPEE said.
    pub fn resend_key(&self, route: &str) -> Option<String> {
        Some(format!(
            "{route} {} {}",
            self.instance_uuid.as_ref()?,
            self.callback_id.as_ref()?
        ))
    }
}

/// A callback the broker owes CPEE, as `GET /cpee/callbacks` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Pending {
    pub id: u64,
    /// `next-order` or `wait`.
    pub kind: &'static str,
    pub url: String,
    pub instance: Option<String>,
    pub instance_url: Option<String>,
    pub label: Option<String>,
    pub order_id: Option<OrderId>,
    pub orderbot_id: Option<String>,
    pub created: Millis,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Since when its instance is stopped (a PUT got 503); None while it
    /// is not known to be.
    pub stopped_since: Option<Millis>,
    /// The next pause while it is stopped: it backs off across attempts,
    /// and starts again once one is delivered.
    #[serde(skip)]
    pub stopped_pause: Option<Duration>,
    /// Why the last attempt that got no answer failed (a refused
    /// connection, a certificate that did not verify); null until one did,
    /// and again once one is delivered.
    pub last_error: Option<String>,
}

impl Pending {
    /// A callback's live state as it starts: no attempt yet.
    fn of(record: &Callback) -> Pending {
        let (order_id, orderbot_id) = match &record.owes {
            Owes::Work { orderbot, order } => (*order, Some(orderbot.clone())),
            Owes::State { order, .. } => (Some(*order), None),
        };
        Pending {
            id: record.id,
            kind: record.kind(),
            url: record.url.clone(),
            instance: record.instance.clone(),
            instance_url: record.instance_url.clone(),
            label: record.label.clone(),
            order_id,
            orderbot_id,
            created: record.created,
            attempts: 0,
            stopped_since: None,
            stopped_pause: None,
            last_error: None,
        }
    }
}

/// How a call was answered, remembered for re-sends.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Answered at once with this JSON.
    Now(Bytes),
    /// Answered `CPEE-CALLBACK: true`; the PUT comes later.
    Later,
}

pub struct Cpee {
    broker: Broker,
    config: CpeeConfig,
    /// The two dispatch queues, under one lock.
    dispatch: Mutex<Dispatch>,
    /// State waits by order; `wait_count` counts them, and `demand` wakes the
    /// feed task when the first one comes.
    waits: Mutex<HashMap<OrderId, Vec<StateWait>>>,
    wait_count: AtomicUsize,
    demand: Demand,
    /// Callbacks not yet delivered, by id.
    pending: DashMap<u64, Pending>,
    /// Answers owed to callbacks and whether a task delivers them, by id;
    /// an entry lives as long as its callback is pending.
    outbox: DashMap<u64, Outbox>,
    /// Answers of calls with a resend key, and when they were given.
    resent: DashMap<String, (Instant, Answer)>,
    /// Connections for deliveries: at most `cpee.max_deliveries` open.
    pool: Arc<pool::Pool>,
    /// Deliveries in flight at once (`cpee.max_deliveries`): they share
    /// the pool, so N pending callbacks never open N sockets.
    deliveries: Arc<tokio::sync::Semaphore>,
    /// Held while the callbacks are taken over or let go, and while one is
    /// registered, so a registration is wholly before or after it.
    handover: Mutex<()>,
    /// Counts the times this node took the callbacks over or let go of
    /// them: a delivery task of an earlier term stops (see `deliver`).
    term: std::sync::atomic::AtomicU64,
}

/// Marks every callback the broker sends; a request that carries it is a
/// callback that came back to a broker (a loop) and is refused.
pub const LOOP_HEADER: &str = "order-broker-callback";

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpeeError {
    CallbackNotAllowed(String),
    BadCallback(String),
    TooManyCallbacks,
    TooManyWaits { order: OrderId, max: usize },
}

impl std::fmt::Display for CpeeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpeeError::CallbackNotAllowed(host) => {
                write!(f, "callback host {host} is not in cpee.callback_allow")
            }
            CpeeError::BadCallback(url) => {
                write!(f, "CPEE-CALLBACK {url:?} is not an http:// or https:// URL")
            }
            CpeeError::TooManyCallbacks => {
                f.write_str("too many pending callbacks (cpee.max_pending); retry later")
            }
            CpeeError::TooManyWaits { order, max } => write!(
                f,
                "order {order} already has {max} callbacks waiting on it (cpee.max_waits_per_order); retry later"
            ),
        }
    }
}

impl Cpee {
    /// `tls` is what `https://` callbacks connect with
    /// (`crate::tls::callback_connector`).
    pub fn new(broker: Broker, config: CpeeConfig, tls: tokio_rustls::TlsConnector) -> Arc<Cpee> {
        let pool = pool::Pool::new(
            config.max_deliveries,
            Duration::from_millis(config.callback_timeout_ms),
            tls,
        );
        let deliveries = Arc::new(tokio::sync::Semaphore::new(config.max_deliveries));
        Arc::new(Cpee {
            broker,
            config,
            dispatch: Mutex::default(),
            waits: Mutex::default(),
            wait_count: AtomicUsize::new(0),
            demand: Demand::default(),
            pending: DashMap::new(),
            outbox: DashMap::new(),
            resent: DashMap::new(),
            pool,
            deliveries,
            handover: Mutex::new(()),
            term: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The answer a re-sent call already got.
    pub fn resent(&self, key: &str) -> Option<Answer> {
        let ttl = Duration::from_secs(self.config.resend_memory_secs);
        let entry = self.resent.get(key)?;
        (entry.0.elapsed() < ttl).then(|| entry.1.clone())
    }

    /// Remembers a call's answer for re-sends (bounded: old ones go first).
    pub fn remember(&self, key: Option<String>, answer: Answer) {
        let Some(key) = key else { return };
        if self.resent.len() >= self.config.max_pending {
            let ttl = Duration::from_secs(self.config.resend_memory_secs);
            self.resent.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if self.resent.len() < self.config.max_pending {
            self.resent.insert(key, (Instant::now(), answer));
        }
    }

    /// Checks a callback URL against the config before anything is promised.
    pub fn check_callback(&self, url: &str) -> Result<(), CpeeError> {
        self.check_url(url)?;
        if self.pending.len() >= self.config.max_pending {
            return Err(CpeeError::TooManyCallbacks);
        }
        Ok(())
    }

    /// An `http://` or `https://` URL whose host `cpee.callback_allow`
    /// lets the broker call: callbacks, and the instances it asks for their
    /// state.
    fn check_url(&self, url: &str) -> Result<(), CpeeError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| CpeeError::BadCallback(url.into()))?;
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Err(CpeeError::BadCallback(url.into())),
        };
        if uri.host().is_none() {
            return Err(CpeeError::BadCallback(url.into()));
        }
        let host = uri.host().unwrap_or_default().to_string();
        let host_port = format!("{host}:{}", uri.port_u16().unwrap_or(default_port));
        let allow = &self.config.callback_allow;
        if !allow.is_empty() && !allow.iter().any(|a| *a == host || *a == host_port) {
            return Err(CpeeError::CallbackNotAllowed(host_port));
        }
        Ok(())
    }

    /// Registers a callback: owed from now on, in the journal or the
    /// cluster's stream as well as here (the caller answers
    /// `CPEE-CALLBACK: true` only once that is durable).
    fn register(&self, call: &CpeeCall, owes: Owes, audience: Audience) -> u64 {
        let id = self.broker.next_callback_id();
        let record = Callback {
            id,
            url: call.callback.clone().unwrap_or_default(),
            instance: call.instance.clone(),
            // Asked for its state only where a callback may go too.
            instance_url: call
                .instance_url
                .clone()
                .filter(|u| self.check_url(u).is_ok()),
            label: call.label.clone(),
            created: Millis::now(),
            audience,
            owes,
        };
        self.pending.insert(id, Pending::of(&record));
        self.broker.put_callback(record);
        id
    }

    /// A callback is owed no more (answered, given up, cancelled): gone
    /// here, and ended in the journal or the stream, so a restart or a new
    /// leader does not answer it again. Nothing is recorded where this
    /// node does not deliver (a follower; a leader that stepped down).
    fn end(&self, id: u64) -> Option<Pending> {
        self.outbox.remove(&id);
        let pending = self.pending.remove(&id).map(|(_, p)| p);
        if self.delivers() {
            self.broker.end_callback(id);
        }
        pending
    }

    /// The current term of delivering (see `Cpee::term`'s field).
    pub(super) fn term(&self) -> u64 {
        self.term.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this node delivers callbacks and hands out work: always
    /// alone, only while it may commit in a cluster.
    pub(super) fn delivers(&self) -> bool {
        self.broker.cluster().is_none_or(|c| c.may_commit())
    }

    /// Records why an attempt at a callback got no answer. A TLS failure
    /// (a certificate that does not verify) is a setup problem the
    /// operator must see: it is logged as a warning, the others (an engine
    /// restarting) at debug; either is retried.
    fn send_failed(&self, callback: u64, e: &pool::SendError) {
        let url = self.pending.get_mut(&callback).map(|mut p| {
            p.last_error = Some(e.reason.clone());
            p.url.clone()
        });
        let url = url.unwrap_or_default();
        if e.tls {
            tracing::warn!(callback, url, error = %e, "callback not delivered: TLS failed");
        } else {
            tracing::debug!(callback, url, error = %e, "callback not delivered");
        }
    }

    pub fn pending(&self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self.pending.iter().map(|p| p.value().clone()).collect();
        all.sort_by_key(|p| p.id);
        all
    }

    /// Cancels a pending callback; false if there is none by that id. An
    /// order on its way to it goes back to the queue when its delivery
    /// task sees the callback gone (not here: the PUT may be landing).
    pub fn cancel(&self, id: u64) -> bool {
        let Some(pending) = self.end(id) else {
            return false;
        };
        match pending.kind {
            "next-order" => self
                .dispatch
                .lock()
                .waiters
                .retain(|w| !matches!(w, Waiter::Callback { id: i, .. } if *i == id)),
            _ => {
                if let Some(order) = pending.order_id {
                    self.drop_wait(order, id);
                }
            }
        }
        true
    }
}
