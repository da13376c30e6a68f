//! Connection handling: slow clients are cut off, shutdown drains cleanly.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let mut config = common::config();
    config.limits.header_read_timeout_secs = 1;
    let server = TestServer::with_config(config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /get_all HTTP/1.1\r\nhost: slow\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server kept a half-sent request open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // Other clients are served all along.
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_finishes() {
    let server = TestServer::start().await;
    let mut idle = server.client().await;
    assert_eq!(
        idle.put_json("/update_order", r#"{"id": 1, "status": "Mixing"}"#)
            .await
            .status,
        StatusCode::OK
    );
    let addr = server.addr;
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("an idle keep-alive connection held up shutdown");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn readyz_and_metrics() {
    let server = TestServer::start().await;
    let reply = server.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "ready");

    server
        .put_json("/update_order", r#"{"id": 1, "status": "Mixing"}"#)
        .await;
    server
        .put_json("/update_order", r#"{"id": 2, "status": "Order Served"}"#)
        .await;
    server
        .put_json("/update_order", r#"{"id": "x", "status": "Mixing"}"#)
        .await;
    server.get("/nowhere").await;
    let _open = server.client().await; // one more connection, held open
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    for line in [
        "order_broker_requests_total{route=\"update\",status=\"200\"} 2",
        "order_broker_requests_total{route=\"update\",status=\"400\"} 1",
        "order_broker_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "order_broker_request_duration_seconds_count{route=\"update\"} 3",
        "order_broker_orders{stage=\"in_progress\"} 1",
        "order_broker_orders{stage=\"completed\"} 1",
        "order_broker_event_seq 2",
        "order_broker_event_streams 0",
        "order_broker_cpee_pending_callbacks 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let connections: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("order_broker_connections "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        connections >= 2.0,
        "the held connection and the scrape: {connections}"
    );
    assert!(text.contains("le=\"+Inf\""));
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_header_timeout() {
    let mut config = common::config();
    config.limits.header_read_timeout_secs = 1;
    let server = TestServer::with_config(config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(stream.read(&mut buf).await.unwrap() > 0);
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection was closed: {closed:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn connections_past_the_limit_get_503() {
    let mut config = common::config();
    config.limits.max_connections = 3;
    let server = TestServer::with_config(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        assert_eq!(
            client
                .send(hyper::Method::GET, "/healthz", &[], "")
                .await
                .status,
            StatusCode::OK
        );
        held.push(client);
    }
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too many connections"), "{text}");
    drop(held);
    // Places free up when connections close.
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        if response.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
    }
    assert!(served);
}

/// `/metrics` passes Prometheus' own lint: every counter is named `_total`
/// (`order_broker_event_seq`, a position, is a gauge), and `promtool check
/// metrics` finds nothing when it is installed (CI installs it).
#[tokio::test]
async fn metrics_are_lint_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.persistence.mode = order_broker::config::PersistenceMode::Journal;
    config.persistence.dir = dir.path().to_path_buf();
    let server = TestServer::with_config(config).await;
    server
        .put_json("/update_order", r#"{"id": 1, "status": "Mixing"}"#)
        .await;
    let text = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} is not named _total"
                );
            } else {
                assert!(!name.ends_with("_total"), "{kind} {name} is named _total");
            }
        }
    }
    assert!(text.contains("# TYPE order_broker_event_seq gauge"));
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: only the naming rule was checked");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
