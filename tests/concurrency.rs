//! Many clients updating overlapping orders at once, over real HTTP. Afterwards
//! the final states, versions, views and the change feed must all agree.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::TestServer;
use hyper::StatusCode;
use order_broker::{OrderId, Seq, Stage};
use serde_json::json;

const TASKS: u64 = 16;
const WRITES_PER_TASK: u64 = 150;
const ORDERS: u64 = 24;
const STATUSES: [&str; 4] = [
    "Order Initiated",
    "Mixing",
    "Order Served",
    "Order Cancelled",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_writers_lose_nothing() {
    let server = TestServer::start().await;

    // Phase 1: every task writes to every order, interleaved with the others.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0..WRITES_PER_TASK {
                let id = (n * 7 + t * 5) % ORDERS;
                let status = format!("t{t}-n{n}");
                let body = json!({"id": id, "status": status, "orderbot_id": format!("bot{t}")});
                let reply = client.put_json("/update_order", &body.to_string()).await;
                assert_eq!(reply.status, StatusCode::OK);
                sent.push((id, status));
            }
            sent
        }));
    }
    let mut writes: HashMap<u64, Vec<String>> = HashMap::new();
    for task in tasks {
        for (id, status) in task.await.unwrap() {
            writes.entry(id).or_default().push(status);
        }
    }
    let phase1 = TASKS * WRITES_PER_TASK;
    let feed = server.broker.events_since(Seq(1), usize::MAX).unwrap();
    assert_eq!(feed.len() as u64, phase1);

    // The feed is gapless and in order, and per order it matches the map.
    for (i, event) in feed.iter().enumerate() {
        assert_eq!(event.seq, Seq(i as u64 + 1));
    }
    let last_event = {
        let _pin = server.broker.pin();
        let symbols = server.broker.symbols();
        let mut last_event: HashMap<u64, String> = HashMap::new();
        let mut seen_versions: HashMap<u64, u32> = HashMap::new();
        for event in &feed {
            let (id, order) = event.order().unwrap();
            let v = seen_versions.entry(id.0).or_default();
            *v += 1;
            assert_eq!(order.version.0, *v, "versions step by one in seq order");
            last_event.insert(id.0, symbols.text(order.status).to_string());
        }
        last_event
    };
    for (id, statuses) in &writes {
        let order = server.broker.view(OrderId(*id)).unwrap();
        assert_eq!(
            order.version.0,
            statuses.len() as u32,
            "order {id}: versions count every write"
        );
        assert_eq!(
            &order.status, &last_event[id],
            "order {id}: final state is the last write"
        );
        assert!(statuses.contains(&order.status));
    }
    // Each task's writes to one order appear in the order the task made them.
    for t in 0..TASKS {
        let prefix = format!("t{t}-n");
        let ns: Vec<u64> = server
            .broker
            .events_since(Seq(1), usize::MAX)
            .unwrap()
            .iter()
            .filter_map(|e| {
                let _pin = server.broker.pin();
                let s = server
                    .broker
                    .symbols()
                    .text(e.order().unwrap().1.status)
                    .to_string();
                s.strip_prefix(&prefix).map(|n| n.parse().unwrap())
            })
            .collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "task {t}'s writes reordered"
        );
    }

    // Phase 2: one final write per order, from many tasks at once, so the
    // final state of every order is known exactly.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for id in (0..ORDERS).filter(|id| id % TASKS == t) {
                let body = json!({"id": id, "status": STATUSES[(id % 4) as usize]});
                let reply = client.put_json("/update_order", &body.to_string()).await;
                assert_eq!(reply.status, StatusCode::OK);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The views list in arrival order (tests/order_store.rs); here only
    // which orders they hold matters.
    let ids_with = |k: u64| -> Vec<u64> { (0..ORDERS).filter(|id| id % 4 == k).collect() };
    let sorted = |view: &serde_json::Value, pick: &dyn Fn(&serde_json::Value) -> u64| {
        let mut ids: Vec<u64> = view.as_array().unwrap().iter().map(pick).collect();
        ids.sort_unstable();
        ids
    };
    let id = |v: &serde_json::Value| v.as_u64().unwrap();
    let new = server.get("/get_new_orders").await.json();
    assert_eq!(sorted(&new["new_orders"], &id), ids_with(0));
    let completed = server.get("/get_completed_orders").await.json();
    assert_eq!(sorted(&completed["completed_orders"], &id), ids_with(2));
    let current = server.get("/get_current_order").await.json();
    let current = sorted(&current["incomplete_orders"], &|o| {
        o["id"].as_u64().unwrap()
    });
    assert_eq!(current, ids_with(1));
    let all = server.get("/get_all").await.json();
    assert_eq!(all.as_array().unwrap().len() as u64, ORDERS);
    for row in all.as_array().unwrap() {
        let id = row["order_id"].as_u64().unwrap();
        assert_eq!(row["status"], STATUSES[(id % 4) as usize]);
        let order = server.broker.view(OrderId(id)).unwrap();
        assert_eq!(order.version.0 as usize, writes[&id].len() + 1);
    }
    let counts = server.broker.stage_counts();
    assert_eq!(counts[Stage::Cancelled.index()] as u64, ORDERS / 4);
    let feed = server.broker.events_since(Seq(1), usize::MAX).unwrap();
    assert_eq!(feed.len() as u64, phase1 + ORDERS);
    let seqs: BTreeSet<u64> = feed.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, (1..=phase1 + ORDERS).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_change_live_in_order() {
    let server = TestServer::start().await;
    let mut subscription = server.broker.subscribe(Seq(1));
    let broker = server.broker.clone();
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 400 {
            assert!(subscription.ready().await);
            let batch = {
                let pin = broker.pin();
                subscription.take(&pin).unwrap()
            };
            seqs.extend(batch.iter().map(|e| e.seq.0));
        }
        seqs
    });
    let mut writers = Vec::new();
    for t in 0..4u64 {
        let mut client = server.client().await;
        writers.push(tokio::spawn(async move {
            for n in 0..100u64 {
                let body = json!({"id": (t + n) % 10, "status": format!("s{n}")});
                client.put_json("/update_order", &body.to_string()).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let seqs = reader.await.unwrap();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
}
