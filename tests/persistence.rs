//! The journal and snapshots over real files: a restart keeps everything, a
//! torn tail is cut, corruption refuses to start, acknowledged writes are on
//! disk before their answer.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{Reply, TestServer, files};
use hyper::{Method, StatusCode};
use order_broker::Config;
use order_broker::config::{Fsync, PersistenceMode};
use order_broker::journal::record::{FrameError, Frames, Record};
use serde_json::{Value, json};

fn durable_config(dir: &Path) -> Config {
    let mut config = common::config();
    config.persistence.mode = PersistenceMode::Journal;
    config.persistence.dir = dir.to_path_buf();
    config.persistence.fsync = Fsync::Always;
    config
}

async fn send(server: &TestServer, method: Method, path: &str, body: Value) -> Reply {
    let ct = ("content-type", "application/json");
    server.send(method, path, &[ct], &body.to_string()).await
}

/// Sets the status of every order in `ids` through the seed API.
async fn update_all(server: &TestServer, ids: std::ops::RangeInclusive<u64>, status: &str) {
    for id in ids {
        let body = json!({"order_id": id, "status": status});
        let reply = server.put_json("/update_order", &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
}

/// Waits (up to 5 s) until a background snapshot has been written.
async fn wait_for_snapshot(dir: &Path) {
    for _ in 0..500 {
        if !files(dir, "snapshot-").is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Every record in a journal segment, with the offset each starts at, and
/// where the records end (a segment being written ends in preallocated
/// zeros: a zero length is its end).
fn records_to_end(path: &Path) -> (Vec<(u64, Record)>, u64) {
    let len = fs::metadata(path).unwrap().len();
    let mut input = std::io::BufReader::new(File::open(path).unwrap());
    let mut magic = [0u8; 8];
    std::io::Read::read_exact(&mut input, &mut magic).unwrap();
    let mut frames = Frames::new(input, 8, len);
    let mut out = Vec::new();
    loop {
        let at = frames.offset();
        match frames.next_payload().unwrap() {
            Ok(Some(payload)) => out.push((at, Record::decode(payload).unwrap())),
            Ok(None) | Err(FrameError::BadLength(0)) => return (out, at),
            Err(e) => panic!("{} at byte {at}: {e}", path.display()),
        }
    }
}

fn records(path: &Path) -> Vec<(u64, Record)> {
    records_to_end(path).0
}

/// Everything a client can read back, to compare before and after a restart.
async fn state(server: &TestServer) -> Value {
    let mut all = json!({
        "get_all": server.get("/get_all").await.json(),
        "current": server.get("/get_current_order").await.json(),
        "new": server.get("/get_new_orders").await.json(),
        "completed": server.get("/get_completed_orders").await.json(),
        "products": server.get("/products").await.json(),
        "customers": server.get("/customers").await.json(),
        "templates": server.get("/templates").await.json(),
        "orders": server.get("/orders?limit=1000").await.json(),
    });
    let ids: Vec<u64> = all["get_all"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect();
    for id in ids {
        all[format!("status_{id}")] = server.get(&format!("/get_status/{id}")).await.json();
    }
    all
}

/// Seed updates, products, customers, shop orders (processed, confirmed,
/// deleted), so every kind of record is in the journal.
async fn fill(server: &TestServer) {
    for n in 0..30u64 {
        let status = [
            "Order Initiated",
            "Mixing",
            "Order Served",
            "Order Cancelled",
        ][n as usize % 4];
        let body =
            json!({"order_id": n % 12, "status": status, "orderbot_id": format!("bot-{}", n % 3)});
        assert_eq!(
            server
                .put_json("/update_order", &body.to_string())
                .await
                .status,
            StatusCode::OK
        );
    }
    for body in [
        json!({"id": 1, "name": "tea", "price": "2.50", "stock": 10}),
        json!({"id": 2, "name": "cake", "price": 4, "stock": 3}),
        json!({"id": 3, "name": "gone", "price": 1, "stock": 1}),
    ] {
        assert_eq!(
            send(server, Method::POST, "/products", body).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        send(server, Method::DELETE, "/products/3", Value::Null)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(
            server,
            Method::POST,
            "/customers",
            json!({"id": 1, "name": "Ann", "balance": 100})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = send(
            server,
            Method::POST,
            "/orders",
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}, {"product_id": 2, "quantity": 1}], "notes": "hot"}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        ids.push(reply.json());
    }
    let processed = format!("/api/orders/{}", ids[0]["id"]);
    assert_eq!(
        send(server, Method::PUT, &processed, json!({"process": true}))
            .await
            .status,
        StatusCode::OK
    );
    let confirm = json!({"number": ids[1]["number"]});
    assert_eq!(
        send(server, Method::POST, "/api/store/orders/confirm", confirm)
            .await
            .status,
        StatusCode::OK
    );
    let template =
        json!({"customer_id": 1, "name": "usual", "items": [{"product_id": 1, "quantity": 1}]});
    assert_eq!(
        send(server, Method::POST, "/templates", template)
            .await
            .status,
        StatusCode::CREATED
    );
    let deleted = format!("/orders/{}", ids[2]["id"]);
    assert_eq!(
        send(server, Method::DELETE, &deleted, Value::Null)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_restart_keeps_every_record_and_version_and_continues_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    fill(&server).await;
    let before = state(&server).await;
    let seq = server.get("/healthz").await.json()["seq"].clone();
    let epoch = server.get("/views").await.json()["last_event_id"].clone();
    server.stop().await;

    let server = TestServer::with_config(durable_config(dir.path())).await;
    assert_eq!(state(&server).await, before);
    assert_eq!(server.get("/healthz").await.json()["seq"], seq);
    let views = server.get("/views").await.json();
    let (old_epoch, old_seq) = epoch.as_str().unwrap().split_once('-').unwrap();
    let (new_epoch, new_seq) = views["last_event_id"]
        .as_str()
        .unwrap()
        .split_once('-')
        .unwrap();
    assert_ne!(old_epoch, new_epoch, "a new epoch at every start");
    assert_eq!(old_seq, new_seq, "the sequence continues");

    // New writes continue versions, ids and the sequence.
    update_all(&server, 0..=0, "Mixing").await;
    let order = server.broker.get(order_broker::OrderId(0)).unwrap();
    let old_version = before["status_0"]["version"].as_u64().unwrap();
    assert_eq!(u64::from(order.version.0), old_version + 1);
    let seq_now = server.get("/healthz").await.json()["seq"].as_u64().unwrap();
    assert_eq!(seq_now, seq.as_u64().unwrap() + 1);
    let product = send(
        &server,
        Method::POST,
        "/products",
        json!({"name": "new", "price": 1}),
    )
    .await;
    assert_eq!(
        product.json()["id"],
        4,
        "ids are never reused, even of deleted records"
    );
    let order = send(
        &server,
        Method::POST,
        "/orders",
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    let max_before = before["get_all"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(order.json()["id"].as_u64().unwrap() > max_before);
}

#[tokio::test]
async fn snapshots_replace_the_journal_and_recovery_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = durable_config(dir.path());
    config.persistence.snapshot_every_events = 7;
    let server = TestServer::with_config(config.clone()).await;
    fill(&server).await;
    // Snapshots run in the background; wait until one has covered most of it.
    wait_for_snapshot(dir.path()).await;
    let before = state(&server).await;
    server.stop().await;

    let snapshots = files(dir.path(), "snapshot-");
    assert_eq!(
        snapshots.len(),
        1,
        "older snapshots are deleted: {snapshots:?}"
    );
    let segments = files(dir.path(), "journal-");
    // Only segments the snapshot does not cover are kept.
    let snapshot_seq: u64 = name_number(&snapshots[0]);
    for pair in segments.windows(2) {
        assert!(
            name_number(&pair[1]) > snapshot_seq + 1,
            "{segments:?} kept next to {snapshots:?}"
        );
    }
    assert!(files(dir.path(), "snapshot.tmp").is_empty());
    let metrics = TestServer::with_config(config.clone()).await;
    assert_eq!(state(&metrics).await, before);
    let text = String::from_utf8(metrics.get("/metrics").await.body.to_vec()).unwrap();
    assert!(text.contains("order_broker_journal_queue 0"), "{text}");
    assert!(
        text.contains("order_broker_journal_recovered_records"),
        "{text}"
    );
}

fn name_number(path: &Path) -> u64 {
    let name = path.file_stem().unwrap().to_str().unwrap();
    name.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_acknowledged_write_is_in_the_journal_file_before_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    for n in 1..=20u64 {
        let body = json!({"order_id": n, "status": format!("step {n}")});
        assert_eq!(
            server
                .put_json("/update_order", &body.to_string())
                .await
                .status,
            StatusCode::OK
        );
        // The server is still running: what the file holds now was written
        // before the answer came.
        let metrics = server.get("/metrics").await.body;
        let metrics = String::from_utf8_lossy(&metrics);
        let durable = metrics
            .lines()
            .find_map(|l| l.strip_prefix("order_broker_journal_durable_seq "))
            .unwrap();
        assert!(
            durable.parse::<u64>().unwrap() >= n,
            "fsynced up to {durable}, acked {n}"
        );
        let segment = files(dir.path(), "journal-").pop().unwrap();
        let last = records(&segment).pop().unwrap().1;
        match last {
            Record::Order { id, order, .. } => {
                assert_eq!(id.0, n);
                assert_eq!(order.status, format!("step {n}"));
            }
            other => panic!("unexpected record {other:?}"),
        }
    }
}

/// A data directory whose journal holds orders 1 to 5; its newest segment.
async fn five_orders_journaled() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    update_all(&server, 1..=5, "Mixing").await;
    server.stop().await;
    let segment = files(dir.path(), "journal-").pop().unwrap();
    (dir, segment)
}

#[tokio::test]
async fn a_torn_tail_is_cut_at_the_last_good_record() {
    let (dir, segment) = five_orders_journaled().await;
    let good_len = fs::metadata(&segment).unwrap().len();

    // A write the crash cut short: a frame that claims more bytes than follow.
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&200u32.to_le_bytes()).unwrap();
    file.write_all(&[7, 7, 7, 7]).unwrap();
    file.write_all(b"{\"order\":{\"seq\":6").unwrap();
    drop(file);
    let server = TestServer::with_config(durable_config(dir.path())).await;
    assert_eq!(order_ids(&server).await.len(), 5);
    assert_eq!(server.get("/healthz").await.json()["seq"], 5);
    server.stop().await;
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        good_len,
        "the tail was cut"
    );

    // The last record's bytes landed only in part (a power loss: its last
    // page reads as zeros): its checksum fails. (A bit flip in a complete
    // last record is damage, not a torn write: refused, see tests/damage.rs.)
    let server = TestServer::with_config(durable_config(dir.path())).await;
    update_all(&server, 6..=6, "Mixing").await;
    server.stop().await;
    let newest = files(dir.path(), "journal-").pop().unwrap();
    zero_last_bytes(&newest, 10);
    // Zeros after the last good record (a file system's extended, unwritten pages).
    let server = TestServer::with_config(durable_config(dir.path())).await;
    assert_eq!(
        server.get("/healthz").await.json()["seq"],
        5,
        "the damaged record is cut"
    );
    assert!(server.get("/get_status/6").await.status == StatusCode::NOT_FOUND);
    server.stop().await;
    let newest = files(dir.path(), "journal-").pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(&newest).unwrap();
    file.write_all(&[0u8; 4096]).unwrap();
    drop(file);
    let server = TestServer::with_config(durable_config(dir.path())).await;
    assert_eq!(server.get("/healthz").await.json()["seq"], 5);
    let body = json!({"order_id": 6, "status": "Mixing"});
    assert_eq!(
        server
            .put_json("/update_order", &body.to_string())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(server.get("/healthz").await.json()["seq"], 6);
}

fn zero_last_bytes(path: &Path, n: usize) {
    let mut bytes = fs::read(path).unwrap();
    let len = bytes.len();
    bytes[len - n..].fill(0);
    fs::write(path, bytes).unwrap();
}

fn flip_byte_at(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn corruption_before_the_tail_refuses_to_start() {
    let (dir, segment) = five_orders_journaled().await;
    let third = records(&segment)[2].0;
    let pristine = fs::read(&segment).unwrap();
    flip_byte_at(&segment, third + 20);
    let err = TestServer::try_start(durable_config(dir.path()))
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("corrupt") && message.contains(&format!("byte {third}")),
        "{message}"
    );
    assert_eq!(
        fs::read(&segment).unwrap().len(),
        pristine.len(),
        "nothing was cut"
    );

    // A missing segment is a gap in the sequence: refused too.
    fs::write(&segment, &pristine).unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    update_all(&server, 9..=9, "Mixing").await;
    server.stop().await;
    fs::remove_file(&segment).unwrap();
    let err = TestServer::try_start(durable_config(dir.path()))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("expected the change with seq 1, found 6"),
        "{err}"
    );
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = durable_config(dir.path());
    config.persistence.snapshot_every_events = 3;
    let server = TestServer::with_config(config.clone()).await;
    update_all(&server, 1..=10, "Mixing").await;
    wait_for_snapshot(dir.path()).await;
    server.stop().await;
    let snapshot = files(dir.path(), "snapshot-")
        .pop()
        .expect("a snapshot was written");
    let len = fs::metadata(&snapshot).unwrap().len();
    flip_byte_at(&snapshot, len / 2);
    let err = TestServer::try_start(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("snapshot") && err.to_string().contains("corrupt"),
        "{err}"
    );

    // A snapshot cut short is refused as well (it has no end record).
    flip_byte_at(&snapshot, len / 2);
    let bytes = fs::read(&snapshot).unwrap();
    fs::write(&snapshot, &bytes[..bytes.len() - 10]).unwrap();
    assert!(TestServer::try_start(config.clone()).await.is_err());
    fs::write(&snapshot, &bytes).unwrap();
    let server = TestServer::with_config(config).await;
    assert_eq!(order_ids(&server).await.len(), 10);
}

#[tokio::test]
async fn a_data_directory_is_used_by_one_broker_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _first = TestServer::with_config(durable_config(dir.path())).await;
    let err = TestServer::try_start(durable_config(dir.path()))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test]
async fn memory_mode_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = durable_config(dir.path());
    config.persistence.mode = PersistenceMode::Memory;
    let server = TestServer::with_config(config.clone()).await;
    update_all(&server, 1..=1, "Mixing").await;
    server.stop().await;
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Ids of every order the broker still holds.
async fn order_ids(server: &TestServer) -> Vec<u64> {
    let all = server.get("/get_all").await.json();
    all.as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_u64().unwrap())
        .collect()
}

/// Polls until `done` holds for the broker's ids (or 10 s pass).
async fn wait_for_ids(server: &TestServer, done: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    for _ in 0..1000 {
        let ids = order_ids(server).await;
        if done(&ids) {
            return ids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    order_ids(server).await
}

#[tokio::test]
async fn finished_orders_past_the_limit_leave_memory_for_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = durable_config(dir.path());
    config.limits.max_orders_kept = 10;
    let server = TestServer::with_config(config.clone()).await;
    for id in 1..=5u64 {
        let body = json!({"order_id": id, "status": "Mixing"});
        server.put_json("/update_order", &body.to_string()).await;
    }
    for id in 6..=20u64 {
        let body = json!({"order_id": id, "status": "Order Served"});
        server.put_json("/update_order", &body.to_string()).await;
        // Distinct finishing times: the oldest finished leave first.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let kept: Vec<u64> = (1..=5).chain(16..=20).collect();
    assert_eq!(wait_for_ids(&server, |ids| ids.len() <= 10).await, kept);
    assert_eq!(
        server.get("/get_status/6").await.status,
        StatusCode::NOT_FOUND
    );
    let metrics = server.get("/metrics").await.body;
    assert!(String::from_utf8_lossy(&metrics).contains("order_broker_evicted_orders_total 10"));
    let completed = server.get("/get_completed_orders").await.json();
    assert_eq!(completed["completed_orders"], json!([16, 17, 18, 19, 20]));
    server.stop().await;

    // The evicted orders' final states are in the archive, in order.
    let archive = files(dir.path(), "archive-");
    assert_eq!(archive.len(), 1);
    let archived: Vec<(u64, String)> = records(&archive[0])
        .into_iter()
        .map(|(_, r)| match r {
            Record::OrderRemoved {
                id,
                evicted: Some(order),
                ..
            } => (id.0, order.status),
            other => panic!("unexpected archive record {other:?}"),
        })
        .collect();
    let expected: Vec<(u64, String)> = (6..=15).map(|id| (id, "Order Served".into())).collect();
    assert_eq!(archived, expected);

    // A restart does not bring them back.
    let server = TestServer::with_config(config).await;
    assert_eq!(order_ids(&server).await, kept);
}

#[tokio::test]
async fn finished_orders_leave_memory_after_the_configured_age() {
    let mut config = common::config();
    config.limits.evict_finished_after_secs = 1;
    let server = TestServer::with_config(config).await;
    for (id, status) in [
        (1, "Order Served"),
        (2, "Mixing"),
        (3, "Order Cancelled"),
        (4, "Order Initiated"),
    ] {
        let body = json!({"order_id": id, "status": status});
        server.put_json("/update_order", &body.to_string()).await;
    }
    assert_eq!(order_ids(&server).await, [1, 2, 3, 4]);
    // Not before the age: still there after half of it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(order_ids(&server).await.len(), 4);
    assert_eq!(wait_for_ids(&server, |ids| ids.len() == 2).await, [2, 4]);
}

#[tokio::test]
async fn nothing_but_health_is_served_until_recovery_is_done() {
    let dir = tempfile::tempdir().unwrap();
    // A named pipe as the journal: opening it blocks until a writer comes,
    // so recovery is held exactly as long as the test wants.
    let fifo = dir.path().join("journal-00000000000000000001.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = durable_config(dir.path());
    let broker = order_broker::Broker::new(&config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        order_broker::server::serve(listener, broker, &config, async {
            let _ = stopped.await;
        })
        .await
    });
    let get = |path: &'static str| async move {
        common::Client::connect(addr)
            .await
            .send(Method::GET, path, &[], "")
            .await
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let refused = get("/get_all").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.error().contains("recovered"), "{}", refused.error());
    assert_eq!(get("/healthz").await.status, StatusCode::OK);
    let metrics = get("/metrics").await.body;
    assert!(String::from_utf8_lossy(&metrics).contains("order_broker_ready 0"));

    // Let recovery read the (empty) pipe: then the broker serves.
    tokio::task::spawn_blocking(move || drop(OpenOptions::new().write(true).open(fifo).unwrap()))
        .await
        .unwrap();
    let mut ready = false;
    for _ in 0..500 {
        if get("/readyz").await.status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(ready);
    assert_eq!(get("/get_all").await.status, StatusCode::OK);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_scheduled_order_survives_a_restart_and_is_released_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    let product = json!({"id": 1, "name": "tea", "price": 2, "stock": 5});
    send(&server, Method::POST, "/products", product).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut ids = Vec::new();
    for at in [now + 1500, now + 3_600_000] {
        let body = json!({"items": [{"product_id": 1, "quantity": 1}], "scheduled_for": at});
        let reply = send(&server, Method::POST, "/orders/scheduled", body).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        ids.push(reply.json()["id"].as_u64().unwrap());
    }
    server.stop().await;

    let server = TestServer::with_config(durable_config(dir.path())).await;
    let stage = |id: u64| {
        let server = &server;
        async move { server.get(&format!("/orders/{id}")).await.json()["stage"].clone() }
    };
    assert_eq!(stage(ids[1]).await, "scheduled");
    let mut released = false;
    for _ in 0..400 {
        if stage(ids[0]).await == "new" {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(released, "released after the restart");
    assert_eq!(stage(ids[1]).await, "scheduled");
    let work = server
        .send(Method::POST, "/cpee/next-order", &[], "orderbot_id=robot-1")
        .await;
    assert_eq!(work.json()["id"], ids[0], "it entered the dispatch queue");
}

/// Product 1 (stock 10), customer 1 (balance 100) and one order of 2 units;
/// returns the order's id.
async fn one_shop_order(server: &TestServer) -> u64 {
    let product = json!({"id": 1, "name": "tea", "price": "2.50", "stock": 10});
    let customer = json!({"id": 1, "name": "Ann", "balance": 100});
    for (path, body) in [("/products", product), ("/customers", customer)] {
        assert_eq!(
            send(server, Method::POST, path, body).await.status,
            StatusCode::CREATED
        );
    }
    let order = json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}]});
    let reply = send(server, Method::POST, "/orders", order).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.json()["id"].as_u64().unwrap()
}

#[tokio::test]
async fn processing_is_one_frame_and_a_torn_tail_never_shows_half_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    let id = one_shop_order(&server).await;
    let segment = files(dir.path(), "journal-").pop().unwrap();
    let before = records_to_end(&segment).1;
    let process = format!("/api/orders/{id}");
    let reply = send(&server, Method::PUT, &process, json!({"process": true})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    server.stop().await;

    // Stock, balance and order changed under one lock: one frame.
    let after: Vec<_> = records(&segment)
        .into_iter()
        .filter(|(at, _)| *at >= before)
        .collect();
    assert_eq!(after.len(), 1, "one frame for the processing: {after:?}");
    match &after[0].1 {
        Record::Group { records } => assert_eq!(records.len(), 3, "{records:?}"),
        other => panic!("not a group: {other:?}"),
    }

    // A crash cut the write in the middle: nothing of it is there.
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(before + (len - before) / 2)
        .unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    let product = server.get("/products/1").await.json();
    let customer = server.get("/customers/1").await.json();
    let order = server.get(&format!("/orders/{id}")).await.json();
    assert_eq!(product["stock"], 10, "{product}");
    assert_eq!(customer["balance"].as_f64(), Some(100.0), "{customer}");
    assert!(order["processed"].is_null(), "{order}");
}

#[tokio::test]
async fn current_names_the_newest_segment_and_its_loss_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    update_all(&server, 1..=5, "Mixing").await;
    server.stop().await;
    let current = dir.path().join("CURRENT");
    let newest = files(dir.path(), "journal-").pop().unwrap();
    assert_eq!(
        fs::read_to_string(&current).unwrap().trim(),
        newest.file_name().unwrap().to_str().unwrap()
    );

    // A data directory from before CURRENT: starts, and gets one.
    fs::remove_file(&current).unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    assert_eq!(order_ids(&server).await.len(), 5);
    update_all(&server, 6..=8, "Mixing").await;
    server.stop().await;
    assert!(current.exists());

    // The newest segment deleted: refused, naming it.
    let newest = files(dir.path(), "journal-").pop().unwrap();
    assert_eq!(records(&newest).len(), 3);
    fs::remove_file(&newest).unwrap();
    let err = TestServer::try_start(durable_config(dir.path()))
        .await
        .err()
        .expect("refused");
    let name = newest.file_name().unwrap().to_str().unwrap();
    assert!(
        err.to_string().contains(name) && err.to_string().contains("missing"),
        "{err}"
    );
}

/// A small tmpfs mounted on a temporary directory, unmounted when dropped.
/// Tests and CI run as root.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs (the full-disk tests need root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_in_every_mode_and_loses_nothing_acknowledged() {
    for fsync in [Fsync::Everysec, Fsync::No, Fsync::Always] {
        let disk = Tmpfs::mount("192k");
        let mut config = durable_config(disk.path());
        config.persistence.fsync = fsync;
        config.persistence.snapshot_every_events = 200;
        let server = TestServer::with_config(config.clone()).await;
        let status = "x".repeat(200);
        let mut acked = Vec::new();
        let mut refused = 0;
        for id in 1..=3000u64 {
            let body = json!({"order_id": id, "status": format!("{status}{id}")});
            let reply = server.put_json("/update_order", &body.to_string()).await;
            match reply.status {
                StatusCode::OK => {
                    assert_eq!(refused, 0, "{fsync:?}: order {id} acknowledged after a 503");
                    acked.push(id);
                }
                StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("{fsync:?}: {other}"),
            }
            if refused == 20 {
                break;
            }
        }
        assert_eq!(refused, 20, "{fsync:?}: the disk never filled");
        assert!(!acked.is_empty());
        assert_eq!(
            server.get("/readyz").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        server.stop().await;
        assert!(
            !disk.path().join("snapshot.tmp").exists(),
            "{fsync:?}: a failed snapshot left its temp file"
        );

        // Room again: every acknowledged write is there.
        disk.resize("8m");
        let server = TestServer::with_config(config).await;
        let ids = order_ids(&server).await;
        for id in &acked {
            assert!(ids.contains(id), "{fsync:?}: acknowledged order {id} lost");
        }
        server.stop().await;
    }
}
