//! The broker against an engine that behaves as a real CPEE engine was seen
//! to behave (see the README's CPEE section):
//!
//! - every call carries a fresh random `CPEE-CALLBACK-ID`, and the callback
//!   URL is `<instance URL>callbacks/<id>/`;
//! - while an instance is stopped, a PUT to its callbacks answers 503 with
//!   an empty body, and a `GET` of a callback 404 (stopping unregisters
//!   them); on resume it sends no new call but registers the same callback
//!   ids again and waits on them;
//! - a callback answers 404 once its instance is gone; the instance URL's
//!   `properties/state/` tells `running`, `stopped`, `finished`, and 404
//!   once the instance was deleted;
//! - a PUT with `CPEE-UPDATE: true` keeps the activity open, one with
//!   `CPEE-SALVAGE: true` sends it to its rescue path, and `CPEE-STATUS`
//!   shows in the cockpit; a JSON body is decoded into a hash.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Reply, TestServer};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use order_broker::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// What an activity got through its callback.
#[derive(Debug, Clone)]
struct Delivery {
    instance: u32,
    callback: String,
    update: bool,
    salvage: bool,
    status: Option<String>,
    /// The body as CPEE decodes it: JSON into a hash.
    body: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    Finished,
    Deleted,
}

#[derive(Default)]
struct Engine {
    states: HashMap<u32, State>,
    /// Callbacks an instance waits on now.
    registered: HashMap<u32, HashSet<String>>,
    /// Callbacks a stopped instance registers again when it resumes.
    parked: HashMap<u32, HashSet<String>>,
    deliveries: Vec<Delivery>,
    /// PUTs refused with 503 because the instance was stopped.
    refused: usize,
    next_callback: u64,
}

#[derive(Clone)]
struct Cpee {
    addr: SocketAddr,
    engine: Arc<Mutex<Engine>>,
}

impl Cpee {
    async fn start() -> Cpee {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Arc::new(Mutex::new(Engine::default()));
        let shared = engine.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let engine = shared.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let engine = engine.clone();
                    async move { Ok::<_, Infallible>(answer(&engine, req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Cpee { addr, engine }
    }

    fn instance_url(&self, instance: u32) -> String {
        format!("http://{}/{instance}/", self.addr)
    }

    fn new_instance(&self, instance: u32) {
        let mut e = self.engine.lock().unwrap();
        e.states.insert(instance, State::Running);
        e.registered.entry(instance).or_default();
    }

    /// The cockpit's stop button: callbacks are unregistered until resume.
    fn stop(&self, instance: u32) {
        let mut e = self.engine.lock().unwrap();
        e.states.insert(instance, State::Stopped);
        let callbacks = e.registered.remove(&instance).unwrap_or_default();
        e.parked.insert(instance, callbacks);
    }

    /// Resume: no new call, the same callbacks registered again.
    fn resume(&self, instance: u32) {
        let mut e = self.engine.lock().unwrap();
        e.states.insert(instance, State::Running);
        let callbacks = e.parked.remove(&instance).unwrap_or_default();
        e.registered.insert(instance, callbacks);
    }

    fn set_state(&self, instance: u32, state: State) {
        let mut e = self.engine.lock().unwrap();
        e.states.insert(instance, state);
        e.registered.remove(&instance);
        e.parked.remove(&instance);
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.engine.lock().unwrap().deliveries.clone()
    }

    fn refused(&self) -> usize {
        self.engine.lock().unwrap().refused
    }

    /// The headers an activity of `instance` sends with its call, and the
    /// callback id it waits on (registered at once, as CPEE does).
    fn call(&self, instance: u32, label: &str) -> (Vec<(String, String)>, String) {
        let mut e = self.engine.lock().unwrap();
        e.next_callback += 1;
        let id = format!(
            "{:016x}",
            e.next_callback.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        );
        e.registered.entry(instance).or_default().insert(id.clone());
        let base = self.instance_url(instance);
        let headers = vec![
            ("cpee-base".into(), format!("http://{}/", self.addr)),
            ("cpee-instance".into(), instance.to_string()),
            ("cpee-instance-url".into(), base.clone()),
            ("cpee-instance-uuid".into(), format!("uuid-{instance}")),
            ("cpee-callback".into(), format!("{base}callbacks/{id}/")),
            ("cpee-callback-id".into(), id.clone()),
            ("cpee-activity".into(), "a1".into()),
            ("cpee-label".into(), label.into()),
        ];
        (headers, id)
    }

    /// Waits until `pred` holds of the deliveries, or panics after 5 s.
    async fn until(&self, what: &str, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let all = self.deliveries();
            if pred(&all) {
                return all;
            }
            assert!(Instant::now() < deadline, "{what}: got {all:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn answer(
    engine: &Mutex<Engine>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (update, salvage, status) = (
        header("cpee-update").is_some_and(|v| v == "true"),
        header("cpee-salvage").is_some_and(|v| v == "true"),
        header("cpee-status"),
    );
    let json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let reply = |status: u16, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    let mut e = engine.lock().unwrap();
    let Some(instance) = parts.first().and_then(|p| p.parse::<u32>().ok()) else {
        return reply(404, "");
    };
    let state = e.states.get(&instance).copied();
    match (method, &parts[1..]) {
        (Method::GET, ["properties", "state"]) => match state {
            None | Some(State::Deleted) => reply(404, ""),
            Some(State::Running) => reply(200, "running"),
            Some(State::Stopped) => reply(200, "stopped"),
            Some(State::Finished) => reply(200, "finished"),
        },
        (Method::GET, ["callbacks", id]) => {
            if e.registered.get(&instance).is_some_and(|c| c.contains(*id)) {
                reply(
                    200,
                    r#"{"uuid":"u","type":"callback","position":"a1","label":"x"}"#,
                )
            } else {
                reply(404, "")
            }
        }
        (Method::PUT, ["callbacks", id]) => {
            match state {
                None | Some(State::Deleted) | Some(State::Finished) => return reply(404, ""),
                Some(State::Stopped) => {
                    e.refused += 1;
                    return reply(503, "");
                }
                Some(State::Running) => {}
            }
            let registered = e.registered.entry(instance).or_default();
            if !registered.contains(*id) {
                return reply(404, "");
            }
            if !update {
                registered.remove(*id);
            }
            let body = if json {
                serde_json::from_slice(&body).expect("a JSON callback body CPEE can decode")
            } else {
                Value::String(String::from_utf8_lossy(&body).into())
            };
            e.deliveries.push(Delivery {
                instance,
                callback: id.to_string(),
                update,
                salvage,
                status,
                body,
            });
            reply(200, "")
        }
        _ => reply(404, ""),
    }
}

fn config() -> Config {
    let mut config = common::config();
    config.cpee.callback_backoff_ms = 10;
    config.cpee.callback_timeout_ms = 1000;
    config.cpee.stopped_retry_max_secs = 1;
    config.cpee.min_update_interval_ms = 0;
    config
}

async fn call(server: &TestServer, path: &str, headers: &[(String, String)], body: &str) -> Reply {
    let mut all: Vec<(&str, &str)> = vec![FORM];
    all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    server.send(Method::POST, path, &all, body).await
}

async fn intake(server: &TestServer, drink: &str) -> u64 {
    let reply = call(server, "/orders/intake", &[], &format!("drink={drink}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()["order_id"].as_u64().unwrap()
}

async fn update(server: &TestServer, id: u64, status: &str) {
    let body = json!({"id": id, "status": status}).to_string();
    let reply = server.put_json("/update_order", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

/// Asks for work asynchronously, as a CPEE activity does: the callback id.
async fn ask_for_work(server: &TestServer, cpee: &Cpee, instance: u32, bot: &str) -> String {
    let (headers, id) = cpee.call(instance, "next order");
    let reply = call(
        server,
        "/cpee/next-order",
        &headers,
        &format!("orderbot_id={bot}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("cpee-callback"), Some("true"));
    id
}

async fn orderbot_of(server: &TestServer, id: u64) -> Value {
    server.get(&format!("/orders/{id}")).await.json()["orderbot_id"].clone()
}

async fn pending(server: &TestServer) -> Vec<Value> {
    server
        .get("/cpee/callbacks")
        .await
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until a PUT was refused because its instance is stopped.
async fn until_refused(cpee: &Cpee) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cpee.refused() == 0 {
        assert!(Instant::now() < deadline, "no delivery was tried");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_no_pending(server: &TestServer, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pending(server).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            pending(server).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_order_for_a_stopped_instance_goes_to_others_and_the_next_one_after_resume() {
    let server = TestServer::with_config(config()).await;
    let cpee = Cpee::start().await;
    cpee.new_instance(1);
    let callback = ask_for_work(&server, &cpee, 1, "bot-1").await;
    cpee.stop(1);
    let first = intake(&server, "Mojito").await;
    // The broker tried, got 503, and put the order back for others.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cpee.refused() == 0 || orderbot_of(&server, first).await != Value::Null {
        assert!(Instant::now() < deadline, "the order was not put back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = call(&server, "/cpee/next-order", &[], "orderbot_id=bot-2").await;
    assert_eq!(reply.json()["id"], first, "another orderbot gets it");
    assert_eq!(orderbot_of(&server, first).await, "bot-2");
    // The stopped instance's callback is kept, and gets the next order once
    // it resumes.
    assert_eq!(pending(&server).await.len(), 1);
    let second = intake(&server, "Negroni").await;
    cpee.resume(1);
    let got = cpee
        .until("the next order after resume", |d| !d.is_empty())
        .await;
    assert_eq!(
        (
            got[0].instance,
            got[0].callback.as_str(),
            &got[0].body["id"]
        ),
        (1, callback.as_str(), &json!(second))
    );
    assert_eq!(got[0].body["orderbot_id"], "bot-1");
    assert_eq!(orderbot_of(&server, second).await, "bot-1");
    assert_eq!(orderbot_of(&server, first).await, "bot-2", "never bot-1's");
    until_no_pending(&server, "delivered").await;
}

#[tokio::test]
async fn a_state_reached_while_stopped_is_delivered_after_resume() {
    let server = TestServer::with_config(config()).await;
    let cpee = Cpee::start().await;
    cpee.new_instance(2);
    let order = intake(&server, "Daiquiri").await;
    let (headers, callback) = cpee.call(2, "wait for served");
    let body = format!("order_id={order}&status=Order+Served");
    let reply = call(&server, "/cpee/wait", &headers, &body).await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));
    cpee.stop(2);
    update(&server, order, "Order Served").await;
    until_refused(&cpee).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cpee.deliveries().is_empty());
    let kept = pending(&server).await;
    assert_eq!(kept.len(), 1, "kept while stopped");
    assert!(kept[0]["stopped_since"].is_u64(), "{kept:?}");
    cpee.resume(2);
    let got = cpee
        .until("delivered after resume", |d| !d.is_empty())
        .await;
    assert_eq!(got[0].callback, callback);
    assert!(!got[0].update && !got[0].salvage);
    assert_eq!(got[0].body["status"], "Order Served");
    // Every status change is in the payload's history.
    let history: Vec<&str> = got[0].body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["Order Initiated", "Order Served"]);
    until_no_pending(&server, "delivered").await;
}

/// An activity of a new instance waits for an order to complete; the
/// instance is stopped, the order completes, and the broker's PUT has been
/// refused (503).
async fn reached_while_stopped(server: &TestServer, cpee: &Cpee, instance: u32) {
    cpee.new_instance(instance);
    let order = intake(server, "Sour").await;
    let (headers, _) = cpee.call(instance, "wait");
    let body = format!("order_id={order}&stage=completed");
    call(server, "/cpee/wait", &headers, &body).await;
    cpee.stop(instance);
    update(server, order, "Order Served").await;
    until_refused(cpee).await;
}

#[tokio::test]
async fn a_callback_stopped_longer_than_the_give_up_time_is_dropped() {
    let mut config = config();
    config.cpee.stopped_give_up_secs = 1;
    let server = TestServer::with_config(config).await;
    let cpee = Cpee::start().await;
    reached_while_stopped(&server, &cpee, 3).await;
    let stopped = Instant::now();
    assert_eq!(pending(&server).await.len(), 1, "kept while stopped");
    until_no_pending(&server, "given up after stopped_give_up_secs").await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(500),
        "given up too soon"
    );
    cpee.resume(3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cpee.deliveries().is_empty());
}

#[tokio::test]
async fn a_stopped_instance_that_is_deleted_is_given_up() {
    let server = TestServer::with_config(config()).await;
    let cpee = Cpee::start().await;
    reached_while_stopped(&server, &cpee, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pending(&server).await.len(), 1, "kept while stopped");
    cpee.set_state(4, State::Deleted);
    until_no_pending(&server, "given up once the instance is gone").await;
}

#[tokio::test]
async fn a_wait_that_can_never_be_met_is_salvaged() {
    let server = TestServer::with_config(config()).await;
    let cpee = Cpee::start().await;
    cpee.new_instance(5);
    // Cancelled while waited on.
    let cancelled = intake(&server, "Julep").await;
    let (headers, callback) = cpee.call(5, "wait");
    let body = format!("order_id={cancelled}&status=Order+Served&updates=true");
    call(&server, "/cpee/wait", &headers, &body).await;
    update(&server, cancelled, "Mixing").await;
    update(&server, cancelled, "Order Cancelled").await;
    let got = cpee
        .until("salvaged", |d| d.iter().any(|d| d.salvage))
        .await;
    let last = got.last().unwrap();
    assert_eq!(
        (last.callback.as_str(), last.salvage, last.update),
        (callback.as_str(), true, false)
    );
    assert_eq!(last.body["status"], "Order Cancelled");
    // The update before it named the status for the cockpit.
    let mixing = got.iter().find(|d| d.update).unwrap();
    assert_eq!(mixing.status.as_deref(), Some("Mixing"));

    // Deleted while waited on.
    let deleted = intake(&server, "Smash").await;
    let (headers, callback) = cpee.call(5, "wait");
    call(
        &server,
        "/cpee/wait",
        &headers,
        &format!("order_id={deleted}&stage=completed"),
    )
    .await;
    let reply = server
        .send(Method::DELETE, &format!("/orders/{deleted}"), &[], "")
        .await;
    assert!(reply.status.is_success(), "{:?}", reply.body);
    let got = cpee
        .until("salvaged after delete", |d| {
            d.iter().any(|d| d.callback == callback)
        })
        .await;
    let last = got.iter().find(|d| d.callback == callback).unwrap();
    assert!(last.salvage);
    assert_eq!(last.body["id"], deleted);

    // Asked for when it is already cancelled: a failed call (409) that CPEE
    // sends to the rescue path, not a wait for ever.
    let (headers, _) = cpee.call(5, "wait");
    let reply = call(
        &server,
        "/cpee/wait",
        &headers,
        &format!("order_id={cancelled}&stage=completed"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{:?}", reply.body);
    assert_eq!(reply.json()["order"]["status"], "Order Cancelled");
    until_no_pending(&server, "nothing waits").await;
}

#[tokio::test]
async fn an_order_served_in_the_queue_is_never_dispatched() {
    let server = TestServer::with_config(config()).await;
    let served = intake(&server, "Gimlet").await;
    let cancelled = intake(&server, "Collins").await;
    let waiting = intake(&server, "Spritz").await;
    update(&server, served, "Order Served").await;
    update(&server, cancelled, "Order Cancelled").await;
    let reply = call(&server, "/cpee/next-order", &[], "orderbot_id=bot").await;
    assert_eq!(
        reply.json()["id"],
        waiting,
        "the served and cancelled are skipped"
    );
    let reply = call(&server, "/cpee/next-order", &[], "orderbot_id=bot").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(orderbot_of(&server, served).await, Value::Null);
    assert_eq!(orderbot_of(&server, cancelled).await, Value::Null);
}

#[tokio::test]
async fn callbacks_of_finished_instances_are_dropped_but_stopped_ones_kept() {
    let mut config = config();
    config.cpee.probe_interval_secs = 1;
    let server = TestServer::with_config(config).await;
    let cpee = Cpee::start().await;
    for instance in [6, 7] {
        cpee.new_instance(instance);
        ask_for_work(&server, &cpee, instance, &format!("bot-{instance}")).await;
    }
    cpee.stop(6);
    cpee.set_state(7, State::Finished);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = pending(&server)
            .await
            .iter()
            .map(|p| p["instance"].as_str().unwrap().to_string())
            .collect();
        if left == ["6"] {
            break;
        }
        assert!(Instant::now() < deadline, "left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A stopped instance's callback is not dropped although its GET is 404.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pending(&server).await.len(), 1);
    cpee.resume(6);
    let order = intake(&server, "Bramble").await;
    let got = cpee
        .until("the resumed instance gets work", |d| !d.is_empty())
        .await;
    assert_eq!((got[0].instance, &got[0].body["id"]), (6, &json!(order)));
}

#[tokio::test]
async fn long_polls_that_timed_out_take_nothing_when_work_comes() {
    let server = TestServer::with_config(config()).await;
    let polls: Vec<_> = (0..50)
        .map(|n| {
            let server = &server;
            async move {
                let body = format!("orderbot_id=idle-{n}");
                call(server, "/cpee/next-order?wait=1", &[], &body)
                    .await
                    .status
            }
        })
        .collect();
    for status in futures_util::future::join_all(polls).await {
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let live = async { call(&server, "/cpee/next-order?wait=5", &[], "orderbot_id=live").await };
    let order = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        intake(&server, "Aviation").await
    };
    let (got, order) = tokio::join!(live, order);
    assert_eq!(got.json()["id"], order, "the live poller gets it");
    let now = server.get(&format!("/orders/{order}")).await.json();
    assert_eq!(now["orderbot_id"], "live");
    assert_eq!(now["version"], 2, "taken once, not by 50 pollers that left");
}

#[tokio::test]
async fn an_orderbot_that_cannot_be_recorded_does_not_drain_the_queue() {
    let mut config = config();
    config.limits.max_text_bytes = 20;
    let server = TestServer::with_config(config).await;
    let first = intake(&server, "One").await;
    intake(&server, "Two").await;
    let long = "orderbot_id=a-name-longer-than-twenty";
    let reply = call(&server, "/cpee/next-order", &[], long).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        reply.body
    );
    let reply = call(&server, "/cpee/next-order", &[], "orderbot_id=short").await;
    assert_eq!(reply.json()["id"], first, "the queue is intact");
}
