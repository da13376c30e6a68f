//! Delivery of answers to callbacks: each callback has at most one task
//! and one answer waiting behind it (a newer state replaces a waiting
//! update, a final answer replaces it and ends the callback), PUT by a
//! retrying client over the bounded pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request};
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{Cpee, LOOP_HEADER, pool};
use crate::model::{Millis, OrderId, Version};

/// Which state of an order an update shows, oldest first: an order made
/// again under its id starts later.
pub(super) type Mark = (Millis, Version);

/// An answer owed to a callback.
pub(super) struct Owed {
    pub(super) body: Bytes,
    /// An intermediate state (`CPEE-UPDATE: true`) with its mark; None for
    /// the final answer, which ends the callback.
    pub(super) update: Option<Mark>,
    /// A work answer's order, put back in the queue if it is not delivered.
    pub(super) order: Option<OrderId>,
}

/// A callback's deliveries: at most one task sends them, one at a time.
#[derive(Default)]
pub(super) struct Outbox {
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

impl Cpee {
    /// Queues an answer for a callback, behind the one in flight: a newer
    /// update replaces a waiting one, a final answer replaces any update,
    /// and nothing follows a final answer. Starts the callback's delivery
    /// task if none runs.
    pub(super) fn owe(self: &Arc<Self>, callback: u64, owed: Owed) {
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
                Ok(Ok(pool::Reply { status, .. })) if status.is_success() => {
                    if owed.update.is_none() {
                        self.pending.remove(&callback);
                        self.outbox.remove(&callback);
                        return false;
                    }
                    return true;
                }
                Ok(Ok(pool::Reply { status, .. }))
                    if matches!(status.as_u16(), 404 | 503 | 508) =>
                {
                    debug!(callback, %status, "callback closed by CPEE");
                    self.give_up(callback, owed.order);
                    return false;
                }
                Ok(Ok(pool::Reply { status, body })) => {
                    debug!(callback, %status, answer = %String::from_utf8_lossy(&body[..body.len().min(256)]), "callback refused");
                    status.is_server_error()
                }
                Ok(Err(e)) => {
                    self.send_failed(callback, &e);
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

    pub(super) fn give_up(self: &Arc<Self>, callback: u64, order: Option<OrderId>) {
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
