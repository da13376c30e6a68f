//! Crashes at the worst moment, on the real binary: SIGKILL right after an
//! answer while the disk is slow (strace delays a syscall), and a client
//! that goes away while its keyed write waits for the fsync.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::process::Start;

/// With `everysec` and `no` an answer waits until the record is written to
/// the file (not fsynced): SIGKILL right after the answer loses nothing,
/// however slow the write is.
fn acknowledged_means_written(fsync: &str) {
    let data = tempfile::tempdir().unwrap();
    // Every write(2) of the broker waits 150 ms first (answers go out with
    // writev, so only the journal and the log are slowed).
    let broker = Start::new(data.path())
        .env("ORDER_BROKER_PERSISTENCE_FSYNC", fsync)
        .slow("write", 150_000)
        .start()
        .unwrap();
    broker.update_orders(1..=3);
    broker.kill();
    let restarted = Start::new(data.path()).start().unwrap();
    assert_eq!(
        restarted.order_ids(),
        [1, 2, 3],
        "{fsync}: an acknowledged write was lost"
    );
    restarted.stop();
}

#[test]
fn with_fsync_no_an_answer_waits_until_the_record_is_written() {
    acknowledged_means_written("no");
}

#[test]
fn with_fsync_everysec_an_answer_waits_until_the_record_is_written() {
    acknowledged_means_written("everysec");
}

/// With `always` an answer waits for an fsync that began after its record
/// was written. The fsyncs run on a thread of their own while the writer
/// writes on, so a write that arrives while one runs is written at once,
/// but must wait for the next fsync, not be answered by the running one.
/// Every fsync here takes at least 400 ms (strace), so no correct answer
/// comes sooner than 400 ms after its request; one answered by the fsync
/// already running when it came would be back in about 300 ms.
#[test]
fn with_fsync_always_an_answer_waits_for_an_fsync_that_began_after_its_write() {
    let data = tempfile::tempdir().unwrap();
    let broker = Start::new(data.path())
        .env("ORDER_BROKER_PERSISTENCE_FSYNC", "always")
        .slow("fdatasync", 400_000)
        .start()
        .unwrap();
    let addr = broker.addr.clone();
    let first = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        send(
            &mut stream,
            "PUT",
            "/update_order",
            "",
            r#"{"id": 1, "status": "Mixing"}"#,
        );
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).to_string()
    });
    // The first write's fsync is running now.
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let (status, _) = broker.request("PUT", "/update_order", r#"{"id": 2, "status": "Mixing"}"#);
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(first.join().unwrap().starts_with("HTTP/1.1 200"));
    assert!(
        took >= Duration::from_millis(400),
        "answered {took:?} after the request: before any fsync that began after its write \
         could have ended"
    );
    broker.kill();
    let restarted = Start::new(data.path()).start().unwrap();
    assert_eq!(restarted.order_ids(), [1, 2]);
    restarted.stop();
}

/// Sends a request on `stream` without reading the answer.
fn send(stream: &mut TcpStream, method: &str, path: &str, headers: &str, body: &str) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         {headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

#[test]
fn a_keyed_write_whose_client_went_away_during_the_fsync_is_not_run_twice() {
    let data = tempfile::tempdir().unwrap();
    // Every fdatasync takes 300 ms: a write waits that long for its answer.
    let broker = Start::new(data.path())
        .env("ORDER_BROKER_PERSISTENCE_FSYNC", "always")
        .slow("fdatasync", 300_000)
        .start()
        .unwrap();
    let product = r#"{"id": 1, "name": "tea", "price": 2, "stock": 10}"#;
    assert_eq!(broker.request("POST", "/products", product).0, 201);
    let order = r#"{"items": [{"product_id": 1, "quantity": 1}]}"#;
    let key = "idempotency-key: order-1\r\n";

    // The client sends its order and hangs up while it waits for the fsync.
    let mut stream = TcpStream::connect(&broker.addr).unwrap();
    send(&mut stream, "POST", "/orders", key, order);
    std::thread::sleep(Duration::from_millis(100));
    stream.shutdown(Shutdown::Both).unwrap();
    drop(stream);

    // Its retry gets the first answer (409 while that still runs), never a
    // second order.
    let mut answer = None;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(&broker.addr).unwrap();
        send(
            &mut stream,
            "POST",
            "/orders",
            &format!("{key}connection: close\r\n"),
            order,
        );
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        if !response.starts_with("HTTP/1.1 409") {
            answer = Some(response);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = answer.expect("the first request finished");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "the retry ran again: {answer}"
    );
    let orders = broker.json("/orders");
    let count = orders
        .as_array()
        .or_else(|| orders["orders"].as_array())
        .map(Vec::len);
    assert_eq!(count, Some(1), "{orders}");
    broker.stop();
}

#[test]
fn an_orderbot_that_left_while_its_work_was_made_durable_does_not_keep_it() {
    let data = tempfile::tempdir().unwrap();
    let broker = Start::new(data.path())
        .env("ORDER_BROKER_PERSISTENCE_FSYNC", "always")
        .slow("fdatasync", 300_000)
        .start()
        .unwrap();
    let (status, body) = broker.request("POST", "/orders/intake", r#"{"drink": "Mojito"}"#);
    assert_eq!(status, 200, "{body}");
    let order: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = order["order_id"].as_u64().unwrap();

    // An orderbot asks for work and hangs up while the claim is fsynced.
    let mut stream = TcpStream::connect(&broker.addr).unwrap();
    send(
        &mut stream,
        "POST",
        "/cpee/next-order",
        "",
        r#"{"orderbot_id": "gone"}"#,
    );
    std::thread::sleep(Duration::from_millis(100));
    stream.shutdown(Shutdown::Both).unwrap();
    drop(stream);

    // The order goes back to the queue, without that orderbot: the next
    // one to ask gets it.
    let mut got = None;
    for _ in 0..30 {
        let (status, body) =
            broker.request("POST", "/cpee/next-order", r#"{"orderbot_id": "kept"}"#);
        if status == 200 {
            got = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got: serde_json::Value = serde_json::from_str(&got.expect("the order came back")).unwrap();
    assert_eq!(
        (got["id"].as_u64(), got["orderbot_id"].as_str()),
        (Some(id), Some("kept"))
    );
    broker.stop();
}

/// The journal preallocates its segment, so a broker killed mid-run leaves
/// zeros after its last record. The next start keeps every acknowledged
/// change, cuts the unused space without calling it a torn write, and a
/// clean stop leaves every segment ending at its last record.
#[test]
fn a_killed_brokers_unused_preallocated_space_is_cut_and_nothing_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let newest = |dir: &std::path::Path| common::files(dir, "journal-").pop().unwrap();
    let broker = Start::new(data.path()).start().unwrap();
    broker.update_orders(1..=20);
    let segment = newest(data.path());
    let bytes = std::fs::read(&segment).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert!(
        bytes.len() >= 1 << 20 && used < 20 * 200,
        "the segment is preallocated: {} bytes, {used} in use",
        bytes.len()
    );
    broker.kill();

    let restarted = Start::new(data.path()).start().unwrap();
    assert_eq!(restarted.order_ids(), (1..=20).collect::<Vec<_>>());
    let log = restarted.stderr();
    assert!(log.contains("unused preallocated space"), "{log}");
    assert!(
        !log.contains("torn"),
        "unused space is no torn write: {log}"
    );
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len() as usize,
        used,
        "cut at its last record"
    );
    restarted.update_orders(21..=25);
    let segment = newest(data.path());
    restarted.stop();
    let bytes = std::fs::read(&segment).unwrap();
    assert_ne!(bytes.last(), Some(&0), "a clean stop seals the segment");
    let again = Start::new(data.path()).start().unwrap();
    assert_eq!(again.order_ids(), (1..=25).collect::<Vec<_>>());
    assert!(
        !again.stderr().contains("preallocated"),
        "{}",
        again.stderr()
    );
    again.stop();
}

/// A segment is cut to its records (sealed) before the next one starts,
/// so a crash after a segment switch, before the snapshot deletes the old
/// segment, leaves no preallocated zeros in a segment that is no longer
/// the newest (recovery refuses any bad frame there). Every rename waits
/// 1.5 s, so the snapshot that follows the switch is still unfinished when
/// the broker is killed.
#[test]
fn a_crash_between_a_segment_switch_and_its_snapshot_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let broker = Start::new(data.path())
        .env("ORDER_BROKER_PERSISTENCE_SNAPSHOT_EVERY_EVENTS", 20)
        .slow("rename", 1_500_000)
        .start()
        .unwrap();
    broker.update_orders(1..=25);
    let segments = common::files(data.path(), "journal-");
    assert!(
        segments.len() >= 2 && common::files(data.path(), "snapshot-").is_empty(),
        "the switch happened and the snapshot is not written yet: {segments:?}"
    );
    let older = &segments[segments.len() - 2];
    let bytes = std::fs::read(older).unwrap();
    assert_ne!(bytes.last(), Some(&0), "{} was sealed", older.display());
    broker.kill();

    let restarted = Start::new(data.path())
        .start()
        .unwrap_or_else(|e| panic!("the broker starts again: {e}"));
    assert_eq!(restarted.order_ids(), (1..=25).collect::<Vec<_>>());
    restarted.stop();
}

/// Many writers at once: the requests that wait write their own changes
/// when the writer is free and leave them to whoever holds it otherwise.
/// Every acknowledged change survives a SIGKILL, and the journal is in seq
/// order (recovery refuses a gap), in each fsync mode.
#[test]
fn concurrent_writers_lose_nothing_acknowledged_at_a_sigkill() {
    for fsync in ["always", "everysec", "no"] {
        let data = tempfile::tempdir().unwrap();
        let broker = Start::new(data.path())
            .env("ORDER_BROKER_PERSISTENCE_FSYNC", fsync)
            .start()
            .unwrap();
        let acked: Vec<u64> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..16u64)
                .map(|w| {
                    let broker = &broker;
                    scope.spawn(move || {
                        (0..40u64)
                            .map(|n| w * 1000 + n + 1)
                            .filter(|id| {
                                let body =
                                    format!(r#"{{"order_id": {id}, "status": "step {id}"}}"#);
                                broker.request("PUT", "/update_order", &body).0 == 200
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            writers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert_eq!(acked.len(), 16 * 40, "{fsync}: every write answered");
        broker.kill();
        let restarted = Start::new(data.path())
            .start()
            .unwrap_or_else(|e| panic!("{fsync}: the broker starts again: {e}"));
        let mut acked = acked;
        acked.sort_unstable();
        assert_eq!(restarted.order_ids(), acked, "{fsync}");
        restarted.stop();
    }
}
