//! Live views over real HTTP: the event stream, filters, resume without gap
//! or duplicate, resync, heartbeats, limits, slow readers, shutdown, /views.

mod common;

use std::time::Duration;

use common::{Sse, TestServer};
use hyper::StatusCode;
use serde_json::json;

async fn update(server: &TestServer, id: u64, status: &str) {
    let body = json!({"id": id, "status": status, "orderbot_id": "r1"}).to_string();
    assert_eq!(
        server.put_json("/update_order", &body).await.status,
        StatusCode::OK
    );
}

fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_in_order() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(server.addr, "/events", &[]).await.unwrap();
    let first = sse.next_block(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        ("retry", "3000")
    );
    for n in 0..60u64 {
        update(&server, n % 7, &format!("step {n}")).await;
    }
    let epoch = server.broker.epoch().to_string();
    for n in 0..60u64 {
        let event = sse.next().await.expect("event");
        assert_eq!(event.event, "order");
        assert_eq!(event.id, Some(format!("{epoch}-{}", n + 1)));
        let order = event.json();
        assert_eq!(order["id"], n % 7);
        assert_eq!(order["status"], format!("step {n}"));
        assert_eq!(order["orderbot_id"], "r1");
    }
    assert!(
        sse.quiet_for(Duration::from_millis(200)).await,
        "no duplicates"
    );
}

#[tokio::test]
async fn stage_filters_see_orders_enter_and_leave() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(server.addr, "/events?stage=new", &[])
        .await
        .unwrap();
    update(&server, 1, "Order Initiated").await;
    update(&server, 2, "Mixing").await; // never new: not sent
    update(&server, 1, "Mixing").await; // leaves new: sent
    update(&server, 1, "Order Served").await; // not about new: not sent
    update(&server, 3, "Order Initiated").await;
    let got: Vec<(u64, String)> = [
        sse.next().await.unwrap(),
        sse.next().await.unwrap(),
        sse.next().await.unwrap(),
    ]
    .iter()
    .map(|e| {
        (
            e.json()["id"].as_u64().unwrap(),
            e.json()["stage"].as_str().unwrap().to_string(),
        )
    })
    .collect();
    assert_eq!(
        got,
        [
            (1, "new".into()),
            (1, "in_progress".into()),
            (3, "new".into())
        ]
    );
    assert!(sse.quiet_for(Duration::from_millis(200)).await);

    let mut one = Sse::open(
        server.addr,
        "/events?order_id=2&stage=in_progress,completed",
        &[],
    )
    .await
    .unwrap();
    update(&server, 1, "Shaking").await;
    update(&server, 2, "Order Served").await;
    assert_eq!(one.next().await.unwrap().json()["status"], "Order Served");
    for bad in ["/events?stage=done", "/events?order_id=x"] {
        assert_eq!(
            Sse::open(server.addr, bad, &[]).await.err().unwrap().status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn tracking_stream_follows_one_order() {
    let server = TestServer::start().await;
    assert_eq!(
        Sse::open(server.addr, "/orders/5/tracking-stream", &[])
            .await
            .err()
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );
    update(&server, 5, "Order Initiated").await;
    let mut sse = Sse::open(server.addr, "/orders/5/tracking-stream", &[])
        .await
        .unwrap();
    update(&server, 6, "Mixing").await;
    update(&server, 5, "Mixing").await;
    let event = sse.next().await.unwrap();
    assert_eq!(
        (event.json()["id"].clone(), event.json()["version"].clone()),
        (json!(5), json!(2))
    );
}

#[tokio::test]
async fn resume_replays_the_missed_events_then_goes_live() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(server.addr, "/events", &[]).await.unwrap();
    for n in 0..3 {
        update(&server, n, "Mixing").await;
    }
    let mut last = None;
    for _ in 0..3 {
        last = sse.next().await.unwrap().id;
    }
    drop(sse);
    for n in 3..8 {
        update(&server, n, "Mixing").await;
    }
    let last = last.unwrap();
    for (path, header) in [
        ("/events".to_string(), Some(last.as_str())),
        (format!("/events?since={last}"), None),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("last-event-id", h)).into_iter().collect();
        let mut sse = Sse::open(server.addr, &path, &headers).await.unwrap();
        let missed: Vec<u64> = (4..=server.broker.last_seq().0).collect();
        let replayed: Vec<u64> = futures_collect(&mut sse, missed.len())
            .await
            .iter()
            .map(|e| seq_of(e.id.as_ref().unwrap()))
            .collect();
        assert_eq!(replayed, missed, "{path}: every missed event once");
        assert!(
            sse.quiet_for(Duration::from_millis(150)).await,
            "{path}: nothing twice"
        );
        update(&server, 99, "Mixing").await;
        let live = sse.next().await.unwrap();
        assert_eq!(live.json()["id"], 99);
    }
}

async fn futures_collect(sse: &mut Sse, n: usize) -> Vec<common::SseEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sse.next().await.expect("event"));
    }
    out
}

#[tokio::test]
async fn resync_when_the_history_cannot_replay() {
    let mut config = common::config();
    config.events.history_size = 4;
    let server = TestServer::with_config(config).await;
    for n in 0..10 {
        update(&server, n, "Mixing").await;
    }
    let epoch = server.broker.epoch();
    for resume in [format!("{epoch}-1"), "123-5".to_string()] {
        let mut sse = Sse::open(server.addr, "/events", &[("last-event-id", &resume)])
            .await
            .unwrap();
        let event = sse.next().await.unwrap();
        let now = server.broker.last_seq().0;
        assert_eq!(event.event, "resync", "{resume}");
        assert_eq!(event.id, Some(format!("{epoch}-{now}")));
        assert_eq!(event.json()["seq"], now);
        update(&server, 50, "Mixing").await;
        assert_eq!(
            sse.next().await.unwrap().json()["id"],
            50,
            "live after the resync"
        );
    }
    // A resume point the history still holds replays normally.
    let now = server.broker.last_seq().0;
    let resume = format!("{epoch}-{}", now - 1);
    let mut sse = Sse::open(server.addr, "/events", &[("last-event-id", &resume)])
        .await
        .unwrap();
    assert_eq!(seq_of(&sse.next().await.unwrap().id.unwrap()), now);
}

#[tokio::test]
async fn views_then_since_loses_nothing() {
    let server = TestServer::start().await;
    update(&server, 1, "Order Initiated").await;
    update(&server, 2, "Mixing").await;
    update(&server, 3, "Order Served").await;
    update(&server, 4, "Order Cancelled").await;
    let views = server.get("/views").await.json();
    assert_eq!(views["new"][0]["id"], 1);
    assert_eq!(views["in_progress"][0]["id"], 2);
    assert_eq!(views["completed"][0]["id"], 3);
    assert_eq!(views["seq"], 4);
    let last = views["last_event_id"].as_str().unwrap().to_string();
    assert_eq!(last, format!("{}-4", views["epoch"].as_str().unwrap()));
    update(&server, 2, "Order Served").await; // after the snapshot, before the stream
    let mut sse = Sse::open(server.addr, &format!("/events?since={last}"), &[])
        .await
        .unwrap();
    let event = sse.next().await.unwrap();
    assert_eq!(
        (event.json()["id"].clone(), event.json()["stage"].clone()),
        (json!(2), json!("completed"))
    );
}

#[tokio::test]
async fn heartbeats_keep_idle_streams_alive() {
    let mut config = common::config();
    config.events.heartbeat_secs = 1;
    let server = TestServer::with_config(config).await;
    let mut sse = Sse::open(server.addr, "/events", &[]).await.unwrap();
    let mut saw = false;
    for _ in 0..3 {
        if let Some(block) = sse.next_block(Duration::from_millis(2500)).await
            && block.event == ":"
        {
            saw = true;
            break;
        }
    }
    assert!(saw, "a heartbeat comment within the interval");
}

#[tokio::test]
async fn stream_limit_says_come_back_and_frees_on_close() {
    let mut config = common::config();
    config.events.max_streams = 2;
    let server = TestServer::with_config(config).await;
    let a = Sse::open(server.addr, "/events", &[]).await.unwrap();
    let _b = Sse::open(server.addr, "/events", &[]).await.unwrap();
    // 200 with a retry hint and a `busy` event, then the end: an
    // EventSource reconnects (a 503 would end it for good).
    let mut refused = Sse::open(server.addr, "/events", &[]).await.unwrap();
    assert_eq!(refused.next().await.unwrap().event, "busy");
    assert_eq!(server.get("/healthz").await.json()["event_streams"], 2);
    drop(a);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if server.get("/healthz").await.json()["event_streams"] == 1 {
            freed = true;
            break;
        }
    }
    assert!(freed, "a closed stream frees its place");
    let mut reopened = Sse::open(server.addr, "/events", &[]).await.unwrap();
    assert!(
        reopened.quiet_for(Duration::from_millis(150)).await,
        "a real stream, not busy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_hold_writers_and_gets_resync() {
    let mut config = common::config();
    config.events.history_size = 200;
    config.events.live_buffer = 16;
    let server = TestServer::with_config(config).await;
    let mut stalled = Sse::open(server.addr, "/events", &[]).await.unwrap();
    // Far more changes than the history and the buffer hold, written while
    // the stream is not read at all.
    let started = std::time::Instant::now();
    for n in 0..3000u64 {
        server
            .broker
            .update_status(order_broker::OrderId(n % 50), &format!("s{}", n % 9), None)
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "writers were held up"
    );
    let mut saw_resync = false;
    while let Some(event) = stalled.next().await {
        if event.event == "resync" {
            saw_resync = true;
            break;
        }
    }
    assert!(
        saw_resync,
        "a reader that fell behind the history is told to resync"
    );
    // The reader may still be behind and be told to resync again; like a
    // board, it then reloads /views. Either way it learns of the change.
    update(&server, 7777, "Mixing").await;
    loop {
        let event = stalled.next().await.expect("live again after the resync");
        if event.event == "order" && event.json()["id"] == 7777 {
            break;
        }
        if event.event == "resync" {
            let views = server.get("/views").await.json();
            let ids: Vec<u64> = views["in_progress"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_u64().unwrap())
                .collect();
            assert!(
                ids.contains(&7777),
                "a resync points at a snapshot that has the change"
            );
            break;
        }
    }
}

#[tokio::test]
async fn shutdown_ends_streams() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(server.addr, "/events", &[]).await.unwrap();
    sse.next_block(Duration::from_secs(2)).await; // the retry hint
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("an open stream held up shutdown");
    assert!(
        sse.next_block(Duration::from_secs(2)).await.is_none(),
        "the stream ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_order_stream_that_lags_catches_up_from_the_history() {
    let mut config = common::config();
    config.events.live_buffer = 4;
    let server = TestServer::with_config(config).await;
    update(&server, 1, "Order Initiated").await;
    let mut sse = Sse::open(server.addr, "/orders/1/tracking-stream", &[])
        .await
        .unwrap();
    // Many changes to order 1 (and others) while the stream is not read:
    // more than its route buffers.
    for n in 0..400u64 {
        server
            .broker
            .update_status(order_broker::OrderId(1), &format!("step {n}"), None)
            .unwrap();
        server
            .broker
            .update_status(order_broker::OrderId(2), "Mixing", None)
            .unwrap();
    }
    let mut versions = Vec::new();
    while versions.len() < 400 {
        let event = sse
            .next()
            .await
            .expect("every change, caught up from the history");
        assert_eq!(event.event, "order");
        assert_eq!(event.json()["id"], 1, "only order 1");
        versions.push(event.json()["version"].as_u64().unwrap());
    }
    assert_eq!(
        versions,
        (2..=401).collect::<Vec<u64>>(),
        "no gap and no duplicate"
    );
    assert!(sse.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_after_an_idle_spell_still_get_every_event() {
    let server = TestServer::start().await;
    for round in 0..3u64 {
        let mut sse = Sse::open(server.addr, "/events", &[]).await.unwrap();
        let missing = Sse::open(
            server.addr,
            &format!("/orders/{round}/tracking-stream"),
            &[],
        )
        .await;
        assert!(missing.is_err(), "order {round} does not exist yet");
        update(&server, round, "Mixing").await;
        assert_eq!(sse.next().await.unwrap().json()["id"], round);
        let mut tracking = Sse::open(
            server.addr,
            &format!("/orders/{round}/tracking-stream"),
            &[],
        )
        .await
        .unwrap();
        update(&server, round, "Order Served").await;
        assert_eq!(tracking.next().await.unwrap().json()["stage"], "completed");
        drop((sse, tracking));
        // Nobody watches for a while: the renderer sleeps; writes go on.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in 0..50 {
            server
                .broker
                .update_status(order_broker::OrderId(1000 + n), "Mixing", None)
                .unwrap();
        }
    }
}

/// EventSource (and the `eventsource` npm client) gives up for good on any
/// answer but 200: a bad or future resume point is a resync, a full broker
/// says "come back" with a 200.
#[tokio::test]
async fn event_streams_never_answer_what_ends_an_event_source() {
    let mut config = common::config();
    config.events.max_streams = 1;
    let server = TestServer::with_config(config).await;
    for n in 0..3 {
        update(&server, n, "Mixing").await;
    }
    let epoch = server.broker.epoch();
    for (resume, reason) in [
        ("", "not one this broker sends"),
        ("garbage", "not one this broker sends"),
        (&*format!("{epoch}-999"), "ahead"),
    ] {
        let mut sse = Sse::open(server.addr, "/events", &[("last-event-id", resume)])
            .await
            .unwrap_or_else(|r| panic!("{resume:?}: {}", r.status));
        let event = sse.next().await.unwrap();
        assert_eq!(event.event, "resync", "{resume:?}");
        assert!(event.data.contains(reason), "{resume:?}: {}", event.data);
        drop(sse);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _held = Sse::open(server.addr, "/events", &[]).await.unwrap();
    let mut busy = Sse::open(server.addr, "/events", &[])
        .await
        .unwrap_or_else(|r| panic!("past max_streams: {}", r.status));
    let event = busy.next().await.unwrap();
    assert_eq!(event.event, "busy");
    assert!(event.data.contains("events.max_streams"), "{}", event.data);
}
