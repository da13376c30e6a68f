//! Live views: `GET /events` and `GET /orders/{id}/tracking-stream` as
//! Server-Sent Events, and `GET /views`, the snapshot a board loads first.
//!
//! Each order change is rendered once, by one task that follows the broker's
//! feed, and fanned out as a ready SSE frame through a bounded broadcast
//! channel. A stream merges that channel with replay from the broker's
//! history by `seq`: frames below its cursor are skipped, a gap is filled
//! from the history, so a client that resumes gets every later event once.
//! A stream that falls behind the history gets `event: resync` (reload
//! `/views`) instead of a gap. Writers never wait for streams: a slow client
//! only moves its own cursor back. A replay of the last `live_buffer`
//! changes sends the frames rendered already (by the renderer, or the first
//! stream that needed them), not a rendering of its own. What a stream
//! holds beyond its cursor is one chunk (`MAX_CHUNK`), what hyper buffers
//! (`server::WRITE_BUFFER`) and its socket's send buffer
//! (`stall::STREAM_SEND_BUFFER`), whatever its backlog.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};

use super::access::Viewer;
use super::error::ApiError;
use super::orders::OrderBody;
use super::{App, Body, Req, json_response};
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::broker::Broker;
use crate::config::Events;
use crate::feed::{Change, Demand, Event};
use crate::model::{OrderId, Seq, Stage};

/// Most bytes of one chunk a stream hands hyper (plus at most one event
/// past it): a stream that is behind, or resumes, sends its backlog in
/// chunks this big, one at a time as its client takes them.
pub const MAX_CHUNK: usize = 16 * 1024;

/// Marks a response that is an event stream, so the connection under it
/// bounds what the kernel holds for it (`stall::STREAM_SEND_BUFFER`).
#[derive(Clone, Copy, Debug)]
pub struct EventStream;

/// One change, ready to send.
#[derive(Debug)]
pub struct Rendered {
    seq: Seq,
    /// Not an event: the renderer lost events (it fell behind the history);
    /// every stream must catch up from the history or resync.
    gap: bool,
    /// The order it is about, its stage and its stage before (None for
    /// changes that are not about orders: they only move the cursor).
    order: Option<(OrderId, Option<Stage>, Option<Stage>)>,
    /// The whole order, for viewers who may read it.
    frame: Bytes,
    /// The board's fields only, for everyone else (the same as `frame` for
    /// events with nothing private).
    board: Bytes,
    /// The order's customer, to tell a customer's own orders from others'.
    owner: Option<u64>,
    /// The [`super::access::partner_key`] of the delivery partner it is
    /// assigned to (shop orders only), for the partner's streams.
    assignee: Option<u64>,
}

/// Where the renderer hands the events of one order to a stream that
/// follows only that order, so other orders' changes cost it nothing.
struct Route {
    stream: u64,
    tx: mpsc::Sender<Arc<Rendered>>,
    /// Set when `tx` was full: the stream catches up from the history.
    lagged: Arc<AtomicBool>,
}

/// The shared side of the live streams.
pub struct Live {
    tx: broadcast::Sender<Arc<Rendered>>,
    /// Streams following one order, by order.
    routes: DashMap<OrderId, Vec<Route>>,
    next_stream: AtomicU64,
    /// Wakes the renderer when a stream opens.
    demand: Demand,
    live_buffer: usize,
    streams: Arc<Semaphore>,
    max_streams: usize,
    closing: watch::Sender<bool>,
    heartbeat: Duration,
    retry_ms: u64,
    /// The last `live_buffer` changes as rendered, by seq: a stream that
    /// replays them (it resumed, or catches up) sends these, so a storm of
    /// reconnecting boards costs copies, not a rendering per stream.
    recent: Box<[Mutex<Option<Arc<Rendered>>>]>,
}

impl Live {
    pub fn new(config: &Events) -> Live {
        Live {
            tx: broadcast::Sender::new(config.live_buffer.max(1)),
            routes: DashMap::new(),
            next_stream: AtomicU64::new(1),
            demand: Demand::default(),
            live_buffer: config.live_buffer.max(1),
            streams: Arc::new(Semaphore::new(config.max_streams)),
            max_streams: config.max_streams,
            closing: watch::Sender::new(false),
            heartbeat: Duration::from_secs(config.heartbeat_secs),
            retry_ms: config.retry_ms,
            recent: (0..config.live_buffer.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
        }
    }

    fn slot(&self, seq: Seq) -> &Mutex<Option<Arc<Rendered>>> {
        &self.recent[(seq.0 % self.recent.len() as u64) as usize]
    }

    /// Keeps a rendered change for the streams that replay it, unless its
    /// place holds a later one.
    fn keep(&self, rendered: &Arc<Rendered>) {
        let mut slot = self.slot(rendered.seq).lock();
        if slot.as_ref().is_none_or(|r| r.seq < rendered.seq) {
            *slot = Some(rendered.clone());
        }
    }

    /// The change `seq` as rendered, if it is still kept.
    fn rendered(&self, seq: Seq) -> Option<Arc<Rendered>> {
        self.slot(seq)
            .lock()
            .as_ref()
            .filter(|r| r.seq == seq)
            .cloned()
    }

    /// Renders every change once, for all streams, until `close`. Sleeps
    /// while no stream is open, so writers wake nobody then.
    pub async fn render(self: Arc<Self>, broker: Broker) {
        let mut closing = self.closing.subscribe();
        loop {
            let from = tokio::select! {
                from = self.demand.wanted() => from,
                _ = closing.wait_for(|c| *c) => return,
            };
            let mut feed = broker.subscribe(from);
            while self.open_streams() > 0 {
                let ready = tokio::select! {
                    ready = feed.ready() => ready,
                    _ = closing.wait_for(|c| *c) => return,
                };
                if !ready {
                    return;
                }
                let pin = broker.pin();
                let Ok(events) = feed.take(&pin) else {
                    // The renderer fell behind the history: go on from now and
                    // tell every stream, so each catches up or resyncs.
                    feed = broker.subscribe(Seq(broker.last_seq().0 + 1));
                    self.announce_gap(&broker);
                    continue;
                };
                for event in &events {
                    let rendered = Arc::new(render(&broker, event));
                    self.keep(&rendered);
                    if let Some((id, _, _)) = rendered.order
                        && let Some(routes) = self.routes.get(&id)
                    {
                        for route in routes.iter() {
                            if route.tx.try_send(rendered.clone()).is_err() {
                                route.lagged.store(true, Ordering::Release);
                            }
                        }
                    }
                    if self.tx.receiver_count() > 0 {
                        let _ = self.tx.send(rendered);
                    }
                }
            }
        }
    }

    fn announce_gap(&self, broker: &Broker) {
        let marker = Arc::new(Rendered {
            seq: broker.last_seq(),
            gap: true,
            order: None,
            frame: Bytes::new(),
            board: Bytes::new(),
            owner: None,
            assignee: None,
        });
        for routes in self.routes.iter() {
            for route in routes.iter() {
                route.lagged.store(true, Ordering::Release);
                let _ = route.tx.try_send(marker.clone());
            }
        }
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(marker);
        }
    }

    /// Ends every stream (at shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Open streams.
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// Routes one order's events to a new stream; dropping the guard
    /// removes the route.
    fn route(
        self: &Arc<Self>,
        order: OrderId,
    ) -> (RouteGuard, mpsc::Receiver<Arc<Rendered>>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(self.live_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.routes.entry(order).or_default().push(Route {
            stream,
            tx,
            lagged: lagged.clone(),
        });
        let guard = RouteGuard {
            live: self.clone(),
            order,
            stream,
        };
        (guard, rx, lagged)
    }
}

struct RouteGuard {
    live: Arc<Live>,
    order: OrderId,
    stream: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.live.routes.remove_if_mut(&self.order, |_, routes| {
            routes.retain(|r| r.stream != self.stream);
            routes.is_empty()
        });
    }
}

fn event_id(epoch: u64, seq: Seq) -> String {
    format!("{epoch}-{}", seq.0)
}

fn render(broker: &Broker, event: &Event) -> Rendered {
    let epoch = broker.epoch();
    let id = event_id(epoch, event.seq);
    match &event.change {
        Change::Order {
            id: order_id,
            order,
            from,
            ..
        } => {
            let (json, board, assignee) = {
                let symbols = broker.symbols();
                let full = OrderBody::new(*order_id, order, &symbols);
                let public = OrderBody::seen_by(Viewer::Board, *order_id, order, &symbols);
                let assignee = order
                    .orderbot_id
                    .filter(|_| order.shop.is_some())
                    .map(|b| super::access::partner_key(symbols.text(b)));
                (
                    serde_json::to_string(&full).unwrap_or_default(),
                    serde_json::to_string(&public).unwrap_or_default(),
                    assignee,
                )
            };
            let frame = Bytes::from(format!("id: {id}\nevent: order\ndata: {json}\n\n"));
            Rendered {
                seq: event.seq,
                gap: false,
                order: Some((*order_id, Some(order.stage), *from)),
                board: if order.shop.is_some() {
                    Bytes::from(format!("id: {id}\nevent: order\ndata: {board}\n\n"))
                } else {
                    frame.clone()
                },
                frame,
                owner: order.shop.as_ref().and_then(|s| s.customer_id).map(|c| c.0),
                assignee,
            }
        }
        Change::OrderRemoved {
            id: order_id, from, ..
        } => {
            let frame = Bytes::from(format!(
                "id: {id}\nevent: order_removed\ndata: {{\"id\":{order_id},\"stage\":\"{from}\"}}\n\n"
            ));
            Rendered {
                seq: event.seq,
                gap: false,
                order: Some((*order_id, None, Some(*from))),
                board: frame.clone(),
                frame,
                owner: None,
                assignee: None,
            }
        }
        _ => Rendered {
            seq: event.seq,
            gap: false,
            order: None,
            frame: Bytes::new(),
            board: Bytes::new(),
            owner: None,
            assignee: None,
        },
    }
}

/// Which events a stream wants.
#[derive(Clone, Default)]
struct Filter {
    stages: Option<HashSet<Stage>>,
    order: Option<OrderId>,
}

impl Filter {
    fn wants(&self, r: &Rendered) -> bool {
        let Some((id, stage, from)) = r.order else {
            return false;
        };
        self.order.is_none_or(|o| o == id)
            && self.stages.as_ref().is_none_or(|s| {
                stage.is_some_and(|x| s.contains(&x)) || from.is_some_and(|x| s.contains(&x))
            })
    }
}

/// `GET /events?stage=new,in_progress&order_id=7&since=<epoch>-<seq>`.
pub fn events(app: &App, req: &Req, viewer: Viewer) -> Result<Response<Body>, ApiError> {
    let mut filter = Filter::default();
    let mut since = None;
    for (key, value) in req.query()? {
        match key.as_str() {
            "stage" => {
                let stages = value
                    .split(',')
                    .map(|v| {
                        Stage::ALL
                            .into_iter()
                            .find(|s| s.as_str() == v.trim())
                            .ok_or_else(|| {
                                ApiError::bad_request(
                                    "stage must be new, in_progress, completed or cancelled",
                                )
                            })
                    })
                    .collect::<Result<HashSet<_>, _>>()?;
                filter.stages = Some(stages);
            }
            "order_id" => {
                let id = value.parse().map_err(|_| {
                    ApiError::bad_request("order_id must be a non-negative integer")
                })?;
                filter.order = Some(OrderId(id));
            }
            "since" => since = Some(value),
            _ => {}
        }
    }
    let last_event_id = req
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A reconnecting EventSource repeats the URL (with the old `since`) and
    // sends the newer Last-Event-ID: the header wins.
    stream(app, filter, last_event_id.or(since), viewer)
}

/// `GET /orders/{id}/tracking-stream`: the stream of one order.
pub fn tracking(app: &App, req: &Req, viewer: Viewer) -> Result<Response<Body>, ApiError> {
    let id = OrderId(req.id("Order not found")?);
    if app.broker().get(id).is_none() {
        return Err(ApiError::not_found("Order not found"));
    }
    let filter = Filter {
        order: Some(id),
        ..Filter::default()
    };
    let resume = req
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    stream(app, filter, resume, viewer)
}

fn stream(
    app: &App,
    filter: Filter,
    resume: Option<String>,
    viewer: Viewer,
) -> Result<Response<Body>, ApiError> {
    let live = &app.live;
    let Ok(permit) = live.streams.clone().try_acquire_owned() else {
        return Ok(live.come_back("too many event streams (events.max_streams)"));
    };
    let broker = app.broker().clone();
    let epoch = broker.epoch();
    // Subscribe before looking at the history, so nothing falls between.
    let source = match filter.order {
        Some(order) => {
            let (guard, rx, lagged) = live.route(order);
            Source::One {
                rx,
                lagged,
                _route: guard,
            }
        }
        None => Source::All(live.tx.subscribe()),
    };
    let now = Seq(broker.last_seq().0 + 1);
    let mut out = BytesMut::new();
    let _ = write!(out, "retry: {}\n\n", live.retry_ms);
    let next = match resume {
        None => now,
        Some(text) => {
            let parsed = text
                .trim()
                .split_once('-')
                .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)));
            match parsed {
                Some((e, s)) if e == epoch && s < now.0 && Seq(s + 1) >= broker.oldest_seq() => {
                    Seq(s + 1)
                }
                Some((e, s)) if e == epoch && s + 1 == now.0 => now,
                Some((e, _)) if e == epoch && text.trim() != "" && resume_ahead(&text, now) => {
                    resync(
                        &mut out,
                        epoch,
                        now,
                        "the event id is ahead of this broker's events",
                    )
                }
                Some((e, _)) if e == epoch => resync(
                    &mut out,
                    epoch,
                    now,
                    "the history no longer reaches back that far",
                ),
                Some(_) => resync(&mut out, epoch, now, "the broker restarted (another epoch)"),
                None => resync(
                    &mut out,
                    epoch,
                    now,
                    "the event id is not one this broker sends (<epoch>-<seq>)",
                ),
            }
        }
    };
    // The renderer must see every event this stream may still be owed live.
    live.demand.want(next);
    let mut heartbeat = tokio::time::interval(live.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Stream {
        live: live.clone(),
        broker,
        epoch,
        filter,
        viewer,
        source,
        replay: true,
        next,
        out,
        heartbeat,
        first_tick: true,
        closing: live.closing.subscribe(),
        _permit: permit,
    };
    let body = StreamBody::new(futures_util::stream::unfold(state, Stream::next_chunk));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    response.extensions_mut().insert(EventStream);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Whether `<epoch>-<seq>` names an event after `now`'s predecessor.
fn resume_ahead(text: &str, now: Seq) -> bool {
    text.trim()
        .split_once('-')
        .and_then(|(_, s)| s.parse::<u64>().ok())
        .is_some_and(|s| s >= now.0)
}

impl Live {
    /// What an event stream that cannot be served now answers: 200 with a
    /// `retry:` hint, a `busy` event saying why, and the end, so an
    /// EventSource reconnects (it gives up for good on any other status).
    pub fn come_back(&self, why: &str) -> Response<Body> {
        let data = serde_json::json!({ "reason": why }).to_string();
        let body = format!(
            "retry: {}
event: busy
data: {data}

",
            self.retry_ms
        );
        let mut response = Response::new(super::full(body));
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
        response
    }
}

/// Writes a `resync` event and returns the cursor to go on from (now).
fn resync(out: &mut BytesMut, epoch: u64, now: Seq, reason: &str) -> Seq {
    let last = Seq(now.0 - 1);
    let data = serde_json::json!({"reason": reason, "epoch": epoch.to_string(), "seq": last.0});
    let _ = write!(
        out,
        "id: {}\nevent: resync\ndata: {data}\n\n",
        event_id(epoch, last)
    );
    now
}

/// Where a stream's live events come from.
enum Source {
    /// Every change, for streams without an order filter.
    All(broadcast::Receiver<Arc<Rendered>>),
    /// Only one order's changes.
    One {
        rx: mpsc::Receiver<Arc<Rendered>>,
        lagged: Arc<AtomicBool>,
        _route: RouteGuard,
    },
}

enum Received {
    Event(Arc<Rendered>),
    /// Missed some: catch up from the history.
    Lagged,
    Closed,
}

impl Source {
    async fn recv(&mut self) -> Received {
        match self {
            Source::All(rx) => match rx.recv().await {
                Ok(r) => Received::Event(r),
                Err(broadcast::error::RecvError::Lagged(_)) => Received::Lagged,
                Err(broadcast::error::RecvError::Closed) => Received::Closed,
            },
            Source::One { rx, lagged, .. } => {
                if lagged.swap(false, Ordering::AcqRel) {
                    return Received::Lagged;
                }
                match rx.recv().await {
                    Some(r) => Received::Event(r),
                    None => Received::Closed,
                }
            }
        }
    }

    /// What arrived already, without waiting (None: nothing yet).
    fn try_recv(&mut self) -> Option<Received> {
        match self {
            Source::All(rx) => match rx.try_recv() {
                Ok(r) => Some(Received::Event(r)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Received::Lagged),
                Err(broadcast::error::TryRecvError::Closed) => Some(Received::Closed),
                Err(broadcast::error::TryRecvError::Empty) => None,
            },
            Source::One { rx, lagged, .. } => {
                if lagged.swap(false, Ordering::AcqRel) {
                    return Some(Received::Lagged);
                }
                match rx.try_recv() {
                    Ok(r) => Some(Received::Event(r)),
                    Err(mpsc::error::TryRecvError::Disconnected) => Some(Received::Closed),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                }
            }
        }
    }

    /// Whether consecutive events arrive for every seq (so a jump is a gap).
    fn sees_every_seq(&self) -> bool {
        matches!(self, Source::All(_))
    }
}

struct Stream {
    live: Arc<Live>,
    broker: Broker,
    epoch: u64,
    filter: Filter,
    /// What the client may see of each order (`access::viewer`).
    viewer: Viewer,
    source: Source,
    /// Replay from the history before going live (resume, or catching up).
    replay: bool,
    /// The seq of the next event this stream owes its client.
    next: Seq,
    /// Frames ready to send.
    out: BytesMut,
    heartbeat: Interval,
    first_tick: bool,
    closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    async fn next_chunk(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, Self)> {
        loop {
            let closing = *self.closing.borrow();
            if self.out.len() >= MAX_CHUNK || (closing && !self.out.is_empty()) {
                return Some(self.chunk());
            }
            if closing {
                return None;
            }
            // Replay what the history holds beyond the cursor first (resume).
            if self.replay {
                self.replay = false;
                if self.next <= self.broker.last_seq() {
                    self.fill(None);
                    continue;
                }
            }
            enum Wake {
                Received(Received),
                Tick,
                Closing,
            }
            // What is already there goes into this chunk (up to MAX_CHUNK):
            // a stream that is behind takes many events per wake, not one.
            let wake = match self.source.try_recv() {
                Some(received) => Wake::Received(received),
                None if !self.out.is_empty() => return Some(self.chunk()),
                None => tokio::select! {
                    received = self.source.recv() => Wake::Received(received),
                    _ = self.heartbeat.tick() => Wake::Tick,
                    _ = self.closing.wait_for(|c| *c) => Wake::Closing,
                },
            };
            match wake {
                Wake::Received(Received::Event(rendered)) if rendered.gap => {
                    self.fill(None);
                }
                Wake::Received(Received::Event(rendered)) => {
                    if rendered.seq < self.next {
                        continue; // already sent from the history
                    }
                    if rendered.seq > self.next
                        && self.source.sees_every_seq()
                        && !self.fill(Some(rendered.seq))
                    {
                        continue; // the history replays it after this chunk
                    }
                    if rendered.seq >= self.next {
                        self.push(&rendered);
                    }
                }
                // Fell behind the live buffer: catch up from the history.
                Wake::Received(Received::Lagged) => {
                    self.fill(None);
                }
                Wake::Received(Received::Closed) | Wake::Closing => return None,
                Wake::Tick => {
                    if !std::mem::take(&mut self.first_tick) {
                        self.out.extend_from_slice(b": keep-alive\n\n");
                    }
                }
            }
        }
    }

    fn chunk(mut self) -> (Result<Frame<Bytes>, Infallible>, Self) {
        let chunk = self.out.split().freeze();
        (Ok(Frame::data(chunk)), self)
    }

    fn push(&mut self, rendered: &Rendered) {
        if self.filter.wants(rendered) {
            let frame = if self
                .viewer
                .sees_all_of_one(rendered.owner, rendered.assignee)
            {
                &rendered.frame
            } else {
                &rendered.board
            };
            self.out.extend_from_slice(frame);
        }
        self.next = Seq(rendered.seq.0 + 1);
    }

    /// Sends events from the history from the cursor up to (not including)
    /// `until`, or all of them; resync if the history lost some. At most
    /// about [`MAX_CHUNK`] bytes at a time: past it, it stops, leaves the
    /// rest for after this chunk was taken (returns false), so a stream
    /// that catches up, or does not read, holds one chunk, never its backlog.
    fn fill(&mut self, until: Option<Seq>) -> bool {
        let broker = self.broker.clone();
        let _pin = broker.pin();
        loop {
            if self.out.len() >= MAX_CHUNK {
                self.replay = true;
                return false;
            }
            let want = until.map_or(128, |u| (u.0 - self.next.0).min(128) as usize);
            if want == 0 {
                return true;
            }
            if let Some(rendered) = self.live.rendered(self.next) {
                self.push(&rendered);
                continue;
            }
            match self.broker.visible_events_since(self.next, want) {
                Ok(events) if events.is_empty() => return true,
                Ok(events) => {
                    for event in &events {
                        if self.out.len() >= MAX_CHUNK {
                            break;
                        }
                        let rendered = Arc::new(render(&self.broker, event));
                        self.live.keep(&rendered);
                        self.push(&rendered);
                    }
                }
                Err(_) => {
                    let now = Seq(self.broker.last_seq().0 + 1);
                    self.next = resync(
                        &mut self.out,
                        self.epoch,
                        now,
                        "this stream fell too far behind",
                    );
                    return true;
                }
            }
        }
    }
}

/// `/views`' answer: each order as the caller may see it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Views<'a> {
    epoch: String,
    seq: Seq,
    /// `<epoch>-<seq>`: follow on with `/events?since=` this.
    last_event_id: String,
    #[schema(value_type = Vec<super::orders::OrderSchema>)]
    new: Vec<OrderBody<'a>>,
    #[schema(value_type = Vec<super::orders::OrderSchema>)]
    in_progress: Vec<OrderBody<'a>>,
    #[schema(value_type = Vec<super::orders::OrderSchema>)]
    completed: Vec<OrderBody<'a>>,
}

/// `GET /views`: the three board views and the event id they reflect, so a
/// client loads this and then streams `/events?since=<last_event_id>`.
pub fn views(app: &App, viewer: Viewer) -> Response<Body> {
    let broker = app.broker();
    let _pin = broker.pin();
    let stages = [Stage::New, Stage::InProgress, Stage::Completed];
    let (seq, ids) = broker.snapshot(&stages);
    let orders: Vec<Vec<_>> = ids
        .into_iter()
        .map(|ids| {
            ids.into_iter()
                .filter_map(|id| broker.get(id).map(|o| (id, o)))
                .collect()
        })
        .collect();
    let symbols = broker.symbols();
    let bodies = |k: usize| -> Vec<OrderBody<'_>> {
        orders[k]
            .iter()
            .map(|(id, o)| OrderBody::seen_by(viewer, *id, o, &symbols))
            .collect()
    };
    let views = Views {
        epoch: broker.epoch().to_string(),
        seq,
        last_event_id: event_id(broker.epoch(), seq),
        new: bodies(0),
        in_progress: bodies(1),
        completed: bodies(2),
    };
    json_response(StatusCode::OK, &views)
}

/// The board page, with the config's title, linger time and "waiting
/// long" threshold filled in.
pub fn board_page(config: &crate::config::Board) -> Bytes {
    let title = config
        .title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let page = include_str!("../../assets/board.html")
        .replace("{{TITLE}}", &title)
        .replace(
            "{{LINGER_MS}}",
            &(config.completed_linger_secs.saturating_mul(1000)).to_string(),
        )
        .replace(
            "{{WAITING_LONG_MS}}",
            &(config.waiting_long_secs.saturating_mul(1000)).to_string(),
        );
    Bytes::from(page)
}

/// `GET /`: the order board.
pub fn board(app: &App) -> Response<Body> {
    let mut response = Response::new(super::full(app.board.clone()));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
