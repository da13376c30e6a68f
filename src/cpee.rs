//! CPEE's side of the broker: work dispatch to waiting orderbots, waiting
//! for an order to reach a state, and delivery of asynchronous answers.
//!
//! CPEE calls a service; a reply with `CPEE-CALLBACK: true` and no body means
//! "I will answer later", and the answer is then a `PUT` to the URL CPEE gave
//! in its `CPEE-CALLBACK` header. Here:
//! - orders taken in by intake wait in a FIFO queue; orderbots asking for work
//!   wait in another, oldest first. Both sit under one lock, so each order
//!   goes to exactly one orderbot and no order waits while an orderbot does;
//! - state waits are kept per order and checked against every change in the
//!   feed by one task;
//! - answers are PUT by a retrying client (backoff on connection errors and
//!   5xx, stop on 404/503, which CPEE answers for a closed callback); a work
//!   answer that cannot be delivered puts its order back at the queue's head;
//! - each callback has at most one delivery task and one answer waiting
//!   behind it: a newer state replaces a waiting update, a final answer
//!   replaces it and ends the callback, so a writer changing an order fast
//!   costs each wait its newest state, at most once per
//!   `cpee.min_update_interval_ms`; the sockets they go out on are bounded
//!   in all (`pool`);
//! - a re-sent call (same instance UUID and callback id) gets the first
//!   call's answer and takes nothing twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::config::CpeeConfig;
use crate::feed::Demand;
use crate::http::access::Viewer;
use crate::model::{Millis, Order, OrderId, Stage, Version};

mod pool;

/// The CPEE headers of a call.
#[derive(Debug, Clone, Default)]
pub struct CpeeCall {
    pub callback: Option<String>,
    pub callback_id: Option<String>,
    pub instance: Option<String>,
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

/// What an order must reach for a state wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Status(String),
    Stage(Stage),
}

/// A callback the broker owes CPEE, as `GET /cpee/callbacks` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub id: u64,
    /// `next-order` or `wait`.
    pub kind: &'static str,
    pub url: String,
    pub instance: Option<String>,
    pub label: Option<String>,
    pub order_id: Option<OrderId>,
    pub orderbot_id: Option<String>,
    pub created: Millis,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// How a call was answered, remembered for re-sends.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Answered at once with this JSON.
    Now(Bytes),
    /// Answered `CPEE-CALLBACK: true`; the PUT comes later.
    Later,
}

enum Waiter {
    Callback {
        id: u64,
        orderbot: String,
        viewer: Viewer,
    },
    Poll {
        orderbot: String,
        tx: oneshot::Sender<OrderId>,
    },
}

#[derive(Default)]
struct Dispatch {
    /// Orders waiting for an orderbot, oldest first.
    orders: VecDeque<OrderId>,
    /// Orderbots waiting for an order, oldest first.
    waiters: VecDeque<Waiter>,
}

struct StateWait {
    callback: u64,
    target: Target,
    updates: bool,
    /// What the caller that registered it may see of the order.
    viewer: Viewer,
}

/// Which state of an order an update shows, oldest first: an order made
/// again under its id starts later.
type Mark = (Millis, Version);

/// An answer owed to a callback.
struct Owed {
    body: Bytes,
    /// An intermediate state (`CPEE-UPDATE: true`) with its mark; None for
    /// the final answer, which ends the callback.
    update: Option<Mark>,
    /// A work answer's order, put back in the queue if it is not delivered.
    order: Option<OrderId>,
}

/// A callback's deliveries: at most one task sends them, one at a time.
#[derive(Default)]
struct Outbox {
    /// The answer to send next; a newer one replaces it.
    next: Option<Owed>,
    /// The newest state queued so far: an older one is never sent after it.
    newest: Option<Mark>,
    /// A final answer was queued: nothing comes after it.
    finished: bool,
    /// A task is delivering this callback's answers.
    running: bool,
    /// When the last update went out (for `min_update_interval_ms`).
    last_update: Option<tokio::time::Instant>,
    /// Wakes the task out of that pause when a final answer comes.
    wake: Arc<Notify>,
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
    next_id: AtomicU64,
    /// Answers of calls with a resend key, and when they were given.
    resent: DashMap<String, (Instant, Answer)>,
    /// Connections for deliveries: at most `cpee.max_deliveries` open.
    pool: Arc<pool::Pool>,
    /// Deliveries in flight at once (`cpee.max_deliveries`): they share
    /// the pool, so N pending callbacks never open N sockets.
    deliveries: Arc<tokio::sync::Semaphore>,
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
            CpeeError::BadCallback(url) => write!(f, "CPEE-CALLBACK {url:?} is not an http:// URL"),
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
    pub fn new(broker: Broker, config: CpeeConfig) -> Arc<Cpee> {
        let pool = pool::Pool::new(
            config.max_deliveries,
            Duration::from_millis(config.callback_timeout_ms),
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
            next_id: AtomicU64::new(1),
            resent: DashMap::new(),
            pool,
            deliveries,
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
        let uri: Uri = url
            .parse()
            .map_err(|_| CpeeError::BadCallback(url.into()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(CpeeError::BadCallback(url.into()));
        }
        let host = uri.host().unwrap_or_default().to_string();
        let host_port = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let allow = &self.config.callback_allow;
        if !allow.is_empty() && !allow.iter().any(|a| *a == host || *a == host_port) {
            return Err(CpeeError::CallbackNotAllowed(host_port));
        }
        if self.pending.len() >= self.config.max_pending {
            return Err(CpeeError::TooManyCallbacks);
        }
        Ok(())
    }

    fn register(
        &self,
        kind: &'static str,
        call: &CpeeCall,
        order_id: Option<OrderId>,
        orderbot: Option<&str>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(
            id,
            Pending {
                id,
                kind,
                url: call.callback.clone().unwrap_or_default(),
                instance: call.instance.clone(),
                label: call.label.clone(),
                order_id,
                orderbot_id: orderbot.map(str::to_string),
                created: Millis::now(),
                attempts: 0,
            },
        );
        id
    }

    pub fn pending(&self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self.pending.iter().map(|p| p.value().clone()).collect();
        all.sort_by_key(|p| p.id);
        all
    }

    /// Cancels a pending callback; false if there is none by that id.
    pub fn cancel(&self, id: u64) -> bool {
        let Some((_, pending)) = self.pending.remove(&id) else {
            return false;
        };
        self.outbox.remove(&id);
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

    /// Queues an order taken in by intake, handing it out if an orderbot waits.
    pub fn enqueue(self: &Arc<Self>, order: OrderId) {
        self.dispatch.lock().orders.push_back(order);
        self.dispatch_ready();
    }

    /// After recovery: queues again every order taken in by intake that no
    /// orderbot got, oldest first.
    pub fn requeue_intake(self: &Arc<Self>) {
        let waiting = self.broker.undispatched_intake();
        if waiting.is_empty() {
            return;
        }
        self.dispatch.lock().orders.extend(waiting);
        self.dispatch_ready();
    }

    /// Asks for work: the oldest waiting order now, or None.
    pub fn take_now(&self, orderbot: &str) -> Option<OrderId> {
        let order = self.dispatch.lock().orders.pop_front()?;
        self.assign(order, orderbot);
        Some(order)
    }

    /// Waits for work with a callback: the order is PUT when one comes.
    pub fn wait_for_work(self: &Arc<Self>, call: &CpeeCall, orderbot: &str, viewer: Viewer) -> u64 {
        let id = self.register("next-order", call, None, Some(orderbot));
        self.dispatch.lock().waiters.push_back(Waiter::Callback {
            id,
            orderbot: orderbot.to_string(),
            viewer,
        });
        self.dispatch_ready();
        id
    }

    /// Waits for work by long poll; the receiver gets the order.
    pub fn poll_for_work(self: &Arc<Self>, orderbot: &str) -> oneshot::Receiver<OrderId> {
        let (tx, rx) = oneshot::channel();
        self.dispatch.lock().waiters.push_back(Waiter::Poll {
            orderbot: orderbot.to_string(),
            tx,
        });
        self.dispatch_ready();
        rx
    }

    /// Pairs waiting orders with waiting orderbots, oldest with oldest.
    fn dispatch_ready(self: &Arc<Self>) {
        loop {
            let (order, waiter) = {
                let mut d = self.dispatch.lock();
                if d.orders.is_empty() || d.waiters.is_empty() {
                    return;
                }
                let order = d.orders.pop_front().expect("checked");
                let waiter = d.waiters.pop_front().expect("checked");
                (order, waiter)
            };
            match waiter {
                Waiter::Poll { orderbot, tx } => {
                    self.assign(order, &orderbot);
                    if tx.send(order).is_err() {
                        // The poller left: the order goes back to the head.
                        self.dispatch.lock().orders.push_front(order);
                    }
                }
                Waiter::Callback {
                    id,
                    orderbot,
                    viewer,
                } => {
                    self.assign(order, &orderbot);
                    if let Some(mut p) = self.pending.get_mut(&id) {
                        p.order_id = Some(order);
                    }
                    let body = self.order_json(order, viewer);
                    self.owe(
                        id,
                        Owed {
                            body,
                            update: None,
                            order: Some(order),
                        },
                    );
                }
            }
        }
    }

    fn assign(&self, order: OrderId, orderbot: &str) {
        if let Err(e) = self.broker.set_orderbot(order, orderbot) {
            warn!(%order, error = %e, "could not record the orderbot of a dispatched order");
        }
    }

    /// The order as `viewer` may see it (see [`crate::http::access::viewer`]).
    pub fn order_json(&self, id: OrderId, viewer: Viewer) -> Bytes {
        let _pin = self.broker.pin();
        match self.broker.get(id) {
            Some(order) => crate::http::order_json(&self.broker, id, &order, viewer),
            None => Bytes::from_static(b"null"),
        }
    }

    /// Registers a state wait, or answers at once: Some(order) if the order is
    /// already there. The wait is registered before the check, so no change
    /// can slip between them. Refused past `cpee.max_waits_per_order`.
    pub fn wait_for_state(
        self: &Arc<Self>,
        call: &CpeeCall,
        order: OrderId,
        target: Target,
        updates: bool,
        viewer: Viewer,
    ) -> Result<Option<Order>, CpeeError> {
        let max = self.config.max_waits_per_order;
        let full = |waits: &HashMap<OrderId, Vec<StateWait>>| {
            waits.get(&order).is_some_and(|list| list.len() >= max)
        };
        if full(&self.waits.lock()) {
            return Err(CpeeError::TooManyWaits { order, max });
        }
        // Every change from now on must be checked against this wait: note
        // where "now" is, count the wait, then wake the feed task from there.
        let from = crate::model::Seq(self.broker.last_seq().0 + 1);
        let id = self.register("wait", call, Some(order), None);
        {
            let mut waits = self.waits.lock();
            // Checked again where it counts: two waits may race for the last place.
            if full(&waits) {
                drop(waits);
                self.pending.remove(&id);
                return Err(CpeeError::TooManyWaits { order, max });
            }
            waits.entry(order).or_default().push(StateWait {
                callback: id,
                target: target.clone(),
                updates,
                viewer,
            });
        }
        self.wait_count.fetch_add(1, Ordering::AcqRel);
        self.demand.want(from);
        let Some(current) = self.broker.get(order) else {
            return Ok(None);
        };
        if self.reached(&current, &target) && self.drop_wait(order, id) {
            self.pending.remove(&id);
            self.outbox.remove(&id);
            return Ok(Some(current));
        }
        Ok(None)
    }

    /// Removes a wait; true if this call removed it (so it owns the answer).
    fn drop_wait(&self, order: OrderId, callback: u64) -> bool {
        let mut waits = self.waits.lock();
        let Some(list) = waits.get_mut(&order) else {
            return false;
        };
        let before = list.len();
        list.retain(|w| w.callback != callback);
        let removed = list.len() < before;
        if list.is_empty() {
            waits.remove(&order);
        }
        if removed {
            self.wait_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The caller holds a pin since it read `order`.
    pub fn reached(&self, order: &Order, target: &Target) -> bool {
        match target {
            Target::Stage(stage) => order.stage == *stage,
            Target::Status(status) => self.broker.symbols().text(order.status) == status,
        }
    }

    /// Follows the feed and answers state waits. Sleeps while nobody waits,
    /// so writers wake nobody then. Runs until aborted.
    pub async fn watch(self: Arc<Self>) {
        loop {
            let from = self.demand.wanted().await;
            let mut feed = self.broker.subscribe(from);
            while self.wait_count.load(Ordering::Acquire) > 0 {
                if !feed.ready().await {
                    return;
                }
                let pin = self.broker.pin();
                let Ok(events) = feed.take(&pin) else {
                    // Fell behind: re-check every wait against the current state.
                    feed = self
                        .broker
                        .subscribe(crate::model::Seq(self.broker.last_seq().0 + 1));
                    let orders: Vec<OrderId> = self.waits.lock().keys().copied().collect();
                    for id in orders {
                        if let Some(order) = self.broker.get(id) {
                            self.changed(id, &order);
                        }
                    }
                    continue;
                };
                for event in &events {
                    if let Some((id, order)) = event.order() {
                        self.changed(id, order);
                    }
                }
            }
        }
    }

    fn changed(self: &Arc<Self>, id: OrderId, order: &Order) {
        type Due = Vec<(u64, Viewer)>;
        let (done, updates): (Due, Due) = {
            let mut waits = self.waits.lock();
            let Some(list) = waits.get_mut(&id) else {
                return;
            };
            let mut done = Vec::new();
            let mut updates = Vec::new();
            list.retain(|w| {
                if self.reached(order, &w.target) {
                    done.push((w.callback, w.viewer));
                    false
                } else {
                    if w.updates {
                        updates.push((w.callback, w.viewer));
                    }
                    true
                }
            });
            if list.is_empty() {
                waits.remove(&id);
            }
            (done, updates)
        };
        self.wait_count.fetch_sub(done.len(), Ordering::Relaxed);
        // One rendering per kind of viewer among the callbacks.
        let mut bodies: Vec<(Viewer, Bytes)> = Vec::new();
        let mut body_for = |viewer: Viewer| -> Bytes {
            if let Some((_, body)) = bodies.iter().find(|(v, _)| *v == viewer) {
                return body.clone();
            }
            let body = crate::http::order_json(&self.broker, id, order, viewer);
            bodies.push((viewer, body.clone()));
            body
        };
        let mark = (order.created.get(), order.version);
        for (callback, viewer) in updates {
            let body = body_for(viewer);
            let update = Some(mark);
            self.owe(
                callback,
                Owed {
                    body,
                    update,
                    order: None,
                },
            );
        }
        for (callback, viewer) in done {
            let body = body_for(viewer);
            self.owe(
                callback,
                Owed {
                    body,
                    update: None,
                    order: None,
                },
            );
        }
    }

    /// Queues an answer for a callback, behind the one in flight: a newer
    /// update replaces a waiting one, a final answer replaces any update,
    /// and nothing follows a final answer. Starts the callback's delivery
    /// task if none runs.
    fn owe(self: &Arc<Self>, callback: u64, owed: Owed) {
        let start = {
            let mut outbox = self.outbox.entry(callback).or_default();
            if outbox.finished {
                return;
            }
            match owed.update {
                Some(mark) => {
                    if outbox.newest.is_some_and(|newest| newest >= mark) {
                        return; // this state or a newer one is on its way
                    }
                    outbox.newest = Some(mark);
                }
                None => {
                    outbox.finished = true;
                    outbox.wake.notify_one();
                }
            }
            outbox.next = Some(owed);
            let idle = !outbox.running;
            outbox.running = true;
            idle
        };
        if start {
            tokio::spawn(self.clone().deliver(callback));
        }
    }

    /// A callback's delivery task: sends its answers one at a time, the
    /// newest each time, until none is left or the callback ends.
    async fn deliver(self: Arc<Self>, callback: u64) {
        let interval = Duration::from_millis(self.config.min_update_interval_ms);
        loop {
            // An update waits out the interval since the last one (a newer
            // one may replace it meanwhile); a final answer does not.
            let pause = {
                let Some(mut outbox) = self.outbox.get_mut(&callback) else {
                    return; // the callback ended
                };
                match &outbox.next {
                    None => {
                        outbox.running = false;
                        return;
                    }
                    Some(owed) if owed.update.is_some() => outbox
                        .last_update
                        .map(|at| at + interval)
                        .filter(|until| *until > tokio::time::Instant::now())
                        .map(|until| (until, outbox.wake.clone())),
                    Some(_) => None,
                }
            };
            if let Some((until, wake)) = pause {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = wake.notified() => {}
                }
                continue;
            }
            let owed = {
                let Some(mut outbox) = self.outbox.get_mut(&callback) else {
                    return;
                };
                let Some(owed) = outbox.next.take() else {
                    outbox.running = false;
                    return;
                };
                if owed.update.is_some() {
                    outbox.last_update = Some(tokio::time::Instant::now());
                }
                owed
            };
            if !self.send(callback, owed).await {
                return;
            }
        }
    }

    /// PUTs one answer, retrying with backoff; true if the callback stays
    /// open (an update was delivered). An update marks itself with
    /// `CPEE-UPDATE: true`. A work answer (`order`) that cannot be
    /// delivered puts the order back at the head of the queue. A newer
    /// answer that comes while a retry waits is sent instead.
    async fn send(self: &Arc<Self>, callback: u64, mut owed: Owed) -> bool {
        let mut delay = Duration::from_millis(self.config.callback_backoff_ms);
        let timeout = Duration::from_millis(self.config.callback_timeout_ms);
        let mut failed = 0;
        loop {
            // What a callback reports (an order handed out, a state reached)
            // is on disk before CPEE hears of it.
            if self.broker.durable().await.is_err() {
                warn!(callback, "journal failed: the callback is not sent");
                self.give_up(callback, owed.order);
                return false;
            }
            let Some(url) = self.pending.get_mut(&callback).map(|mut p| {
                p.attempts += 1;
                p.url.clone()
            }) else {
                self.outbox.remove(&callback);
                return false; // cancelled
            };
            failed += 1;
            let mut request = Request::builder()
                .method(Method::PUT)
                .uri(&url)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header(LOOP_HEADER, HeaderValue::from_static("1"));
            if owed.update.is_some() {
                request = request.header("cpee-update", "true");
            }
            let Ok(request) = request.body(Full::new(owed.body.clone())) else {
                self.give_up(callback, owed.order);
                return false;
            };
            let outcome = {
                // Closed only at shutdown; then the callback is not sent.
                let Ok(_slot) = self.deliveries.acquire().await else {
                    return false;
                };
                tokio::time::timeout(timeout, self.pool.send(request)).await
            };
            let retry = match outcome {
                Ok(Ok(status)) if status.is_success() => {
                    if owed.update.is_none() {
                        self.pending.remove(&callback);
                        self.outbox.remove(&callback);
                        return false;
                    }
                    return true;
                }
                Ok(Ok(status)) if matches!(status.as_u16(), 404 | 503 | 508) => {
                    debug!(callback, %status, "callback closed by CPEE");
                    self.give_up(callback, owed.order);
                    return false;
                }
                Ok(Ok(status)) => status.is_server_error(),
                Ok(Err(e)) => {
                    debug!(callback, error = %e.0, "callback not delivered");
                    true
                }
                Err(_) => true,
            };
            if !retry || failed >= self.config.callback_retries {
                warn!(callback, attempts = failed, "giving up on a callback");
                self.give_up(callback, owed.order);
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            if let Some(mut outbox) = self.outbox.get_mut(&callback)
                && let Some(newer) = outbox.next.take()
            {
                if newer.update.is_some() {
                    outbox.last_update = Some(tokio::time::Instant::now());
                }
                owed = newer;
            }
        }
    }

    fn give_up(self: &Arc<Self>, callback: u64, order: Option<OrderId>) {
        self.outbox.remove(&callback);
        if let Some((_, pending)) = self.pending.remove(&callback)
            && pending.kind == "wait"
            && let Some(order) = pending.order_id
        {
            self.drop_wait(order, callback);
        }
        if let Some(order) = order {
            self.dispatch.lock().orders.push_front(order);
            self.dispatch_ready();
        }
    }
}
