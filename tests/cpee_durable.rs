//! Callbacks the broker owes CPEE survive the broker's death: a state wait
//! and a waiting orderbot answered `CPEE-CALLBACK: true` are in the
//! journal before that answer, are delivered by the broker that starts
//! after a SIGKILL, and each is answered once (an ended callback is not
//! taken up again). Real broker processes on a journal directory, a
//! callback end on a real socket.

mod common;

use std::time::Duration;

use common::cluster::http;
use common::engine::{Delivery, Engine};
use common::process::{Broker, Start};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn start(dir: &std::path::Path) -> Broker {
    Start::new(dir)
        .env("ORDER_BROKER_CPEE_CALLBACK_BACKOFF_MS", 20)
        .env("ORDER_BROKER_CPEE_CALLBACK_TIMEOUT_MS", 300)
        .env("ORDER_BROKER_CPEE_CALLBACK_RETRIES", 1000)
        .env("ORDER_BROKER_CPEE_MIN_UPDATE_INTERVAL_MS", 0)
        .start()
        .unwrap()
}

/// A CPEE call with its headers: status and body.
fn call(broker: &Broker, path: &str, headers: &[(String, String)], body: &str) -> (u16, String) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    http(&broker.addr, "POST", path, &headers, body, WAIT).unwrap()
}

/// Registers a callback: the call must be answered "later" (200, no body).
fn register(broker: &Broker, path: &str, headers: &[(String, String)], body: &str) {
    let (status, answer) = call(broker, path, headers, body);
    assert_eq!((status, answer.as_str()), (200, ""), "{path} {body}");
}

fn pending(broker: &Broker) -> Vec<Value> {
    broker.json("/cpee/callbacks").as_array().unwrap().clone()
}

fn until_no_pending(broker: &Broker) {
    let deadline = std::time::Instant::now() + WAIT;
    while !pending(broker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still pending: {:?}",
            pending(broker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `PUT /update_order`, acknowledged.
fn set_status(broker: &Broker, id: u64, status: &str) {
    let body = serde_json::json!({"id": id, "status": status}).to_string();
    let (code, answer) = broker.request("PUT", "/update_order", &body);
    assert_eq!(code, 200, "{answer}");
}

fn intake(broker: &Broker) -> u64 {
    let (status, body) = http(
        &broker.addr,
        "POST",
        "/orders/intake",
        &[("content-type", "application/x-www-form-urlencoded")],
        "drink=tea",
        WAIT,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["order_id"]
        .as_u64()
        .unwrap()
}

fn finals<'a>(all: &'a [Delivery], path: &str) -> Vec<&'a Delivery> {
    all.iter().filter(|d| d.path == path && !d.update).collect()
}

#[test]
fn callbacks_owed_survive_a_sigkill_and_each_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start();
    let broker = start(dir.path());
    set_status(&broker, 1, "Mixing");
    register(
        &broker,
        "/cpee/wait",
        &engine.call(1, "w1"),
        "order_id=1&status=Done&updates=true",
    );
    register(
        &broker,
        "/cpee/next-order",
        &engine.call(2, "n1"),
        "orderbot_id=bot-2",
    );
    let before = pending(&broker);
    assert_eq!(before.len(), 2, "{before:?}");
    broker.kill();

    let broker = start(dir.path());
    let after = pending(&broker);
    let shape = |all: &[Value]| -> Vec<(Value, Value, Value)> {
        all.iter()
            .map(|p| (p["id"].clone(), p["kind"].clone(), p["url"].clone()))
            .collect()
    };
    assert_eq!(
        shape(&after),
        shape(&before),
        "the same callbacks, same ids"
    );

    // The wait with updates hears the state the order is in, then the one
    // it waited for.
    set_status(&broker, 1, "Done");
    let w1 = Engine::path(1, "w1");
    let all = engine.until("the wait is answered", WAIT, |all| {
        !finals(all, &w1).is_empty()
    });
    let answer = finals(&all, &w1)[0];
    assert_eq!(answer.body["status"], "Done", "{answer:?}");
    assert!(!answer.salvage);

    // The waiting orderbot gets the next order taken in.
    let order = intake(&broker);
    let n1 = Engine::path(2, "n1");
    let all = engine.until("the orderbot gets work", WAIT, |all| {
        !finals(all, &n1).is_empty()
    });
    assert_eq!(finals(&all, &n1)[0].body["id"], order);
    let got = broker.json(&format!("/orders/{order}"));
    assert_eq!(got["orderbot_id"], "bot-2");
    until_no_pending(&broker);
    // An acknowledged write after the ends: they are on disk before it.
    set_status(&broker, 9, "Mixing");
    broker.kill();

    // Answered callbacks are ended in the journal: nothing is sent again.
    let broker = start(dir.path());
    std::thread::sleep(Duration::from_millis(500));
    assert!(pending(&broker).is_empty(), "{:?}", pending(&broker));
    assert!(engine.repeated().is_empty(), "{:?}", engine.repeated());
    assert_eq!(finals(&engine.deliveries(), &w1).len(), 1);
    assert_eq!(finals(&engine.deliveries(), &n1).len(), 1);
}

#[test]
fn an_order_being_handed_out_when_the_broker_dies_reaches_its_orderbot_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start();
    let broker = start(dir.path());
    register(
        &broker,
        "/cpee/next-order",
        &engine.call(7, "n7"),
        "orderbot_id=bot-7",
    );
    // The engine takes the PUT and never answers: the broker dies while
    // the order is on its way.
    engine.hold(true);
    let order = intake(&broker);
    let deadline = std::time::Instant::now() + WAIT;
    while engine.held() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was sent");
        std::thread::sleep(Duration::from_millis(10));
    }
    broker.kill();
    engine.hold(false);

    let broker = start(dir.path());
    let n7 = Engine::path(7, "n7");
    let all = engine.until("the order reaches its orderbot", WAIT, |all| {
        !finals(all, &n7).is_empty()
    });
    assert_eq!(finals(&all, &n7)[0].body["id"], order, "{all:?}");
    assert_eq!(
        broker.json(&format!("/orders/{order}"))["orderbot_id"],
        "bot-7"
    );
    until_no_pending(&broker);
    // It is not in the queue for anyone else.
    let (status, body) = call(
        &broker,
        "/cpee/next-order",
        &[(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        "orderbot_id=bot-8",
    );
    assert_eq!(status, 204, "{body}");
}

/// The engine got the order but the broker died before the answer: the
/// broker that starts again sends it again, CPEE answers 404 (it has it),
/// and the order stays with its orderbot, handed out to nobody else.
#[test]
fn an_order_delivered_just_before_the_broker_died_is_not_handed_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start();
    let broker = start(dir.path());
    let mut headers = engine.call(5, "n5");
    headers.push((
        "cpee-instance-url".into(),
        format!("http://{}/5/", engine.addr),
    ));
    register(&broker, "/cpee/next-order", &headers, "orderbot_id=bot-5");
    engine.late(true);
    let order = intake(&broker);
    let n5 = Engine::path(5, "n5");
    engine.until("the order arrives", WAIT, |all| {
        !finals(all, &n5).is_empty()
    });
    broker.kill();
    engine.late(false);

    let broker = start(dir.path());
    let deadline = std::time::Instant::now() + WAIT;
    while engine.repeated().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing sent again");
        std::thread::sleep(Duration::from_millis(10));
    }
    until_no_pending(&broker);
    assert_eq!(
        broker.json(&format!("/orders/{order}"))["orderbot_id"],
        "bot-5"
    );
    let (status, body) = call(
        &broker,
        "/cpee/next-order",
        &[(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        "orderbot_id=bot-6",
    );
    assert_eq!(status, 204, "the order was handed out again: {body}");
    assert_eq!(finals(&engine.deliveries(), &n5).len(), 1);
}

#[test]
fn a_snapshot_keeps_the_callbacks_owed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start();
    let snapshotting = |dir: &std::path::Path| {
        Start::new(dir)
            .env("ORDER_BROKER_PERSISTENCE_SNAPSHOT_EVERY_EVENTS", 50)
            .env("ORDER_BROKER_CPEE_CALLBACK_BACKOFF_MS", 20)
            .start()
            .unwrap()
    };
    let broker = snapshotting(dir.path());
    set_status(&broker, 1, "Mixing");
    register(
        &broker,
        "/cpee/wait",
        &engine.call(3, "w3"),
        "order_id=1&status=Done",
    );
    // Enough changes for snapshots to replace the journal the callback
    // was registered in.
    broker.update_orders(2..=400);
    let snapshots = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("snapshot"))
            })
            .count()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while snapshots() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot was taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill();

    let broker = snapshotting(dir.path());
    assert_eq!(pending(&broker).len(), 1, "{:?}", pending(&broker));
    set_status(&broker, 1, "Done");
    let w3 = Engine::path(3, "w3");
    engine.until("the wait is answered", WAIT, |all| {
        !finals(all, &w3).is_empty()
    });
    // A new callback gets an id no earlier one had.
    register(
        &broker,
        "/cpee/wait",
        &engine.call(3, "w4"),
        "order_id=1&status=Gone",
    );
    let ids: Vec<u64> = pending(&broker)
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id > 1), "{ids:?}");
}
