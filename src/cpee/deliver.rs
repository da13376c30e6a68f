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

use super::instances::InstanceState;
use super::{Cpee, LOOP_HEADER, pool};
use crate::http::access::Viewer;
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
    /// The order's status word, for an update's `CPEE-STATUS`.
    pub(super) status: Option<String>,
    /// A wait that can never be met: `CPEE-SALVAGE: true` sends the
    /// activity to its rescue path.
    pub(super) salvage: bool,
    /// A work answer's order, with the orderbot and viewer it went to: put
    /// back in the queue (its orderbot cleared) if it is not delivered.
    pub(super) order: Option<(OrderId, String, Viewer)>,
    /// Sent again after a restart or a failover (`Cpee::take_over`): it
    /// may have been delivered already, and CPEE answers a callback it got
    /// with 404, so a 4xx does not put a work answer's order back while
    /// its instance lives.
    pub(super) again: bool,
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
            tokio::spawn(self.clone().deliver(callback, self.term()));
        }
    }

    /// A callback's delivery task: sends its answers one at a time, the
    /// newest each time, until none is left or the callback ends.
    /// It belongs to one `term` of this node's delivering (see
    /// [`Cpee::term`]): once that ended, it stops and touches nothing.
    async fn deliver(self: Arc<Self>, callback: u64, term: u64) {
        let interval = Duration::from_millis(self.config.min_update_interval_ms);
        loop {
            if self.term() != term {
                return;
            }
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
            if !self.send(callback, owed, term).await {
                return;
            }
        }
    }

    /// PUTs one answer until it is delivered or the callback ends; true if
    /// the callback stays open (an update was delivered).
    ///
    /// - 2xx: delivered. An update (`CPEE-UPDATE: true`, with the order's
    ///   status in `CPEE-STATUS`) keeps the callback; a final answer ends it.
    /// - 503: the instance is stopped (CPEE answers so until it resumes,
    ///   then waits on the same callback). The callback is kept: a work
    ///   answer's order goes back to the queue's head for other orderbots
    ///   and the callback waits for work again once the instance resumes;
    ///   any other answer is sent again then (see [`Cpee::until_resumed`]).
    /// - 404 (the instance is gone), 508 (a loop), any other 4xx: given up.
    /// - Connection errors and other 5xx: retried with backoff, up to
    ///   `cpee.callback_retries` failed attempts.
    ///
    /// A newer answer that comes while a retry waits is sent instead.
    async fn send(self: &Arc<Self>, callback: u64, mut owed: Owed, term: u64) -> bool {
        let mut delay = Duration::from_millis(self.config.callback_backoff_ms);
        let timeout = Duration::from_millis(self.config.callback_timeout_ms);
        let mut failed = 0;
        // This node stopped delivering (it no longer leads, or it took the
        // callbacks over again since): the task leaves everything as it is.
        let over = || self.term() != term || !self.delivers();
        loop {
            // What a callback reports (an order handed out, a state reached)
            // is on disk before CPEE hears of it.
            if self.broker.durable().await.is_err() {
                if over() {
                    return false; // the new leader delivers it
                }
                warn!(callback, "journal failed: the callback is not sent");
                self.give_up(callback, owed.order.take());
                return false;
            }
            let Some(url) = self.pending.get_mut(&callback).map(|mut p| {
                p.attempts += 1;
                p.url.clone()
            }) else {
                self.outbox.remove(&callback);
                if let Some((order, orderbot, _)) = owed.order.take() {
                    self.put_back_and_dispatch(order, &orderbot); // cancelled meanwhile
                }
                return false;
            };
            failed += 1;
            let Some(request) = owed.request(&url) else {
                self.give_up(callback, owed.order.take());
                return false;
            };
            let outcome = {
                // The semaphore is never closed; if it were, nothing is sent.
                let Ok(_slot) = self.deliveries.acquire().await else {
                    return false;
                };
                if over() {
                    return false;
                }
                tokio::time::timeout(timeout, self.pool.send(request)).await
            };
            if over() {
                return false;
            }
            let retry = match outcome {
                Ok(Ok(pool::Reply { status, .. })) if status.is_success() => {
                    if let Some(mut p) = self.pending.get_mut(&callback) {
                        p.stopped_since = None;
                        p.stopped_pause = None;
                        p.last_error = None;
                    }
                    if owed.update.is_none() {
                        self.end(callback);
                        return false;
                    }
                    return true;
                }
                Ok(Ok(pool::Reply { status, .. })) if status.as_u16() == 503 => {
                    debug!(callback, "the callback's instance is stopped");
                    if let Some((order, orderbot, viewer)) = owed.order.take() {
                        // Others get the order meanwhile; this instance
                        // waits for the next one once it resumes.
                        self.handing(callback, None);
                        self.put_back_and_dispatch(order, &orderbot);
                        if let Some(mut p) = self.pending.get_mut(&callback) {
                            p.order_id = None;
                        }
                        self.outbox.remove(&callback);
                        let resumed = self.until_resumed(callback).await;
                        if over() {
                            return false;
                        }
                        if resumed {
                            self.wait_again(callback, orderbot, viewer);
                        } else {
                            self.give_up(callback, None);
                        }
                        return false;
                    }
                    let resumed = self.until_resumed(callback).await;
                    if over() {
                        return false;
                    }
                    if !resumed {
                        self.give_up(callback, None);
                        return false;
                    }
                    failed = 0;
                    delay = Duration::from_millis(self.config.callback_backoff_ms);
                    self.take_newer(callback, &mut owed);
                    continue;
                }
                Ok(Ok(pool::Reply { status, body }))
                    if status.is_client_error() || status.as_u16() == 508 =>
                {
                    debug!(callback, %status, answer = %String::from_utf8_lossy(&body[..body.len().min(256)]), "callback closed by CPEE");
                    let mut order = owed.order.take();
                    if owed.again && order.is_some() && !self.instance_over(callback).await {
                        // Most likely delivered before the restart: the
                        // order stays with its orderbot.
                        order = None;
                    }
                    if over() {
                        return false;
                    }
                    self.give_up(callback, order);
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
                self.give_up(callback, owed.order.take());
                return false;
            }
            tokio::time::sleep(delay).await;
            if over() {
                return false;
            }
            delay = (delay * 2).min(Duration::from_secs(10));
            self.take_newer(callback, &mut owed);
        }
    }

    /// Replaces `owed` with a newer answer queued meanwhile, if any.
    fn take_newer(&self, callback: u64, owed: &mut Owed) {
        if let Some(mut outbox) = self.outbox.get_mut(&callback)
            && let Some(newer) = outbox.next.take()
        {
            if newer.update.is_some() {
                outbox.last_update = Some(tokio::time::Instant::now());
            }
            *owed = newer;
        }
    }

    /// Waits while the callback's instance is stopped; true once it may
    /// have resumed, false when the callback should be given up: its
    /// instance is gone or finished, or it has been stopped longer than
    /// `cpee.stopped_give_up_secs`, or the callback was cancelled.
    ///
    /// With the call's `CPEE-INSTANCE-URL`, its `properties/state/` is
    /// asked after each pause: `running` resumes, 404 (deleted),
    /// `finished` and `abandoned` give up, anything else (`stopped`,
    /// `stopping`, `ready`) waits on. Without it, each pause ends in another
    /// try. The pauses back off from `callback_backoff_ms` to
    /// `stopped_retry_max_secs`.
    pub(super) async fn until_resumed(self: &Arc<Self>, callback: u64) -> bool {
        let give_up_ms = self.config.stopped_give_up_secs.saturating_mul(1000);
        let max = Duration::from_secs(self.config.stopped_retry_max_secs);
        let first = Duration::from_millis(self.config.callback_backoff_ms).min(max);
        loop {
            // The pause lives with the callback, so it keeps backing off
            // across PUTs that find the instance stopped again.
            let (since, instance, pause) = match self.pending.get_mut(&callback) {
                None => return false,
                Some(mut p) => {
                    let since = *p.stopped_since.get_or_insert_with(Millis::now);
                    let pause = p.stopped_pause.unwrap_or(first);
                    p.stopped_pause = Some((pause * 2).min(max));
                    (since, p.instance_url.clone(), pause)
                }
            };
            if Millis::now().0.saturating_sub(since.0) >= give_up_ms {
                warn!(
                    callback,
                    "the callback's instance stayed stopped; giving up"
                );
                return false;
            }
            tokio::time::sleep(pause).await;
            let Some(instance) = instance else {
                return self.pending.contains_key(&callback);
            };
            match self.instance_state(&instance).await {
                InstanceState::Running => return self.pending.contains_key(&callback),
                InstanceState::Over => return false,
                InstanceState::Waiting => {}
            }
        }
    }

    /// Ends a callback that will not be delivered; a work answer's order
    /// goes back to the head of the queue for other orderbots.
    pub(super) fn give_up(
        self: &Arc<Self>,
        callback: u64,
        order: Option<(OrderId, String, Viewer)>,
    ) {
        if let Some(pending) = self.end(callback)
            && pending.kind == "wait"
            && let Some(order) = pending.order_id
        {
            self.drop_wait(order, callback);
        }
        if let Some((order, orderbot, _)) = order {
            self.put_back_and_dispatch(order, &orderbot);
        }
    }
}

impl Owed {
    /// The PUT that delivers it to `url`.
    fn request(&self, url: &str) -> Option<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(Method::PUT)
            .uri(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(LOOP_HEADER, HeaderValue::from_static("1"));
        if self.update.is_some() {
            request = request.header("cpee-update", "true");
            // The cockpit shows it as the activity's status; a word that
            // is no valid header value is left out.
            if let Some(status) = self
                .status
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                request = request.header("cpee-status", status);
            }
        }
        if self.salvage {
            request = request.header("cpee-salvage", "true");
        }
        request.body(Full::new(self.body.clone())).ok()
    }
}
