//! CPEE callbacks under a hostile load, against the real binary with its
//! memory watched and a real (slow) callback server that records every PUT
//! and every connection: a writer changing one order thousands of times
//! under many `updates=true` waits, too many waits on one order, and
//! thousands of callbacks owed at once.
//!
//! Set `OB_TEST_BROKER_BIN` to run them against another build.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Client;
use common::process::{Broker, Start};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

fn start(dir: &std::path::Path, env: &[(&'static str, &str)]) -> Broker {
    let mut start = Start::new(dir).env("ORDER_BROKER_PERSISTENCE_MODE", "memory");
    for (k, v) in env {
        start = start.env(k, v);
    }
    start.start().unwrap()
}

async fn client(broker: &Broker) -> Client {
    Client::connect(broker.addr.parse().unwrap()).await
}

/// One PUT the callback server received.
#[derive(Debug, Clone)]
struct Put {
    path: String,
    update: bool,
    version: u64,
    status: String,
}

/// What the callback servers saw.
#[derive(Default)]
struct Seen {
    puts: Mutex<Vec<Put>>,
    /// A second handle on each connection the servers hold, by number, to
    /// ask the kernel whether the broker closed it.
    conns: Mutex<HashMap<usize, std::net::TcpStream>>,
    /// The most connections the broker held open at once, and how many it
    /// opened in all.
    max_open: AtomicUsize,
    accepted: AtomicUsize,
    /// PUTs being answered now, per path, and the most ever for one path.
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight_per_path: AtomicUsize,
}

impl Seen {
    fn count(&self) -> usize {
        self.puts.lock().len()
    }

    fn by_path(&self) -> HashMap<String, Vec<Put>> {
        let mut out: HashMap<String, Vec<Put>> = HashMap::new();
        for put in self.puts.lock().iter() {
            out.entry(put.path.clone()).or_default().push(put.clone());
        }
        out
    }

    /// Connections the broker has not closed: the kernel has no end of
    /// stream for them. (Our own count of served connections runs ahead of
    /// this for a moment when the broker closes one and opens the next
    /// before our task for the first reads its end.)
    fn open(&self) -> usize {
        self.conns
            .lock()
            .values()
            .filter(|s| match s.peek(&mut [0u8; 1]) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            })
            .count()
    }

    /// Counts a new connection, and what is open with it.
    fn accepted_one(&self, n: usize, probe: std::net::TcpStream) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.conns.lock().insert(n, probe);
        self.max_open.fetch_max(self.open(), Ordering::SeqCst);
    }
}

/// `servers` CPEEs (one port each) that take `delay` to answer each PUT
/// (200, empty body) and keep their connections open as long as the broker
/// does; they share one record.
async fn callback_servers(servers: usize, delay: Duration) -> (Vec<SocketAddr>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let mut addrs = Vec::new();
    for _ in 0..servers {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        addrs.push(addr);
        tokio::spawn(serve(listener, delay, seen.clone()));
    }
    (addrs, seen)
}

async fn callback_server(delay: Duration) -> (SocketAddr, Arc<Seen>) {
    let (addrs, seen) = callback_servers(1, delay).await;
    (addrs[0], seen)
}

async fn serve(listener: TcpListener, delay: Duration, seen: Arc<Seen>) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let stream = stream.into_std().unwrap();
        seen.accepted_one(n, stream.try_clone().unwrap());
        let stream = tokio::net::TcpStream::from_std(stream).unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(|req: Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let update = req
                        .headers()
                        .get("cpee-update")
                        .is_some_and(|v| v == "true");
                    {
                        let mut in_flight = seen.in_flight.lock();
                        let n = in_flight.entry(path.clone()).or_default();
                        *n += 1;
                        seen.max_in_flight_per_path.fetch_max(*n, Ordering::SeqCst);
                    }
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let body: Value = body
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or(Value::Null);
                    tokio::time::sleep(delay).await;
                    seen.puts.lock().push(Put {
                        path: path.clone(),
                        update,
                        version: body["version"].as_u64().unwrap_or(0),
                        status: body["status"].as_str().unwrap_or_default().to_string(),
                    });
                    *seen.in_flight.lock().get_mut(&path).unwrap() -= 1;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            seen.conns.lock().remove(&n);
        });
    }
}

async fn update(client: &mut Client, id: u64, status: &str) {
    let reply = client
        .put_json(
            "/update_order",
            &format!(r#"{{"id": {id}, "status": "{status}"}}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

/// Registers a wait for `Order Served` on `order` with callback `url`.
async fn wait(client: &mut Client, order: u64, url: &str, updates: bool) -> common::Reply {
    client
        .send(
            Method::POST,
            "/cpee/wait",
            &[FORM, ("cpee-callback", url)],
            &format!("order_id={order}&status=Order+Served&updates={updates}"),
        )
        .await
}

async fn version(client: &mut Client, order: u64) -> u64 {
    let reply = client
        .send(Method::GET, &format!("/get_status/{order}"), &[], "")
        .await;
    reply.json()["version"].as_u64().unwrap()
}

async fn pending(client: &mut Client) -> usize {
    let reply = client.send(Method::GET, "/cpee/callbacks", &[], "").await;
    reply.json().as_array().unwrap().len()
}

/// Polls `done` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// 64 `updates=true` waits on one order, 5,000 changes to it as fast as one
/// writer makes them, and a CPEE that takes 20 ms per PUT. Each callback has
/// at most one PUT in flight and gets only the newest state when it is
/// free, so deliveries stay far below waits × changes, memory stays flat,
/// versions only rise, each callback's last update is the order's last
/// state, and the final answer comes last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_writer_under_many_update_waits_gets_coalesced_deliveries() {
    const WAITS: usize = 64;
    const CHANGES: usize = 5_000;
    const DELAY: Duration = Duration::from_millis(20);
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]);
    let (cpee, seen) = callback_server(DELAY).await;
    let mut writer = client(&broker).await;
    update(&mut writer, 1, "Order Initiated").await;
    for i in 0..WAITS {
        let reply = wait(&mut writer, 1, &format!("http://{cpee}/cb/{i}"), true).await;
        assert_eq!(reply.header("cpee-callback"), Some("true"), "wait {i}");
    }
    let before = rss_mb(broker.pid);
    let mut peak = before;
    let started = Instant::now();
    for n in 0..CHANGES {
        update(&mut writer, 1, ["Mixing", "Pouring"][n % 2]).await;
        if n % 250 == 0 {
            peak = peak.max(rss_mb(broker.pid));
        }
    }
    let last = version(&mut writer, 1).await;
    // Every callback's newest update reaches the order's last state.
    let caught_up = eventually(Duration::from_secs(10), || {
        let by_path = seen.by_path();
        by_path.len() == WAITS
            && by_path
                .values()
                .all(|puts| puts.last().is_some_and(|p| p.version == last))
    })
    .await;
    let took = started.elapsed();
    peak = peak.max(rss_mb(broker.pid));
    let growth = peak - before;
    let delivered = seen.count();
    assert!(
        caught_up,
        "after {took:?} not every callback got version {last}: {delivered} PUTs so far, \
         RSS grew {growth:.1} MB"
    );
    // One PUT in flight per callback at a time: each gets at most one per
    // DELAY while the writer runs, however many changes there were.
    let per_callback = (took.as_millis() / DELAY.as_millis()) as usize + 2;
    for (path, puts) in seen.by_path() {
        assert!(puts.len() <= per_callback, "{path}: {} PUTs", puts.len());
        assert!(puts.iter().all(|p| p.update), "{path}: only updates so far");
        assert!(
            puts.windows(2).all(|w| w[0].version < w[1].version),
            "{path}: versions out of order: {:?}",
            puts.iter().map(|p| p.version).collect::<Vec<_>>()
        );
    }
    assert_eq!(seen.max_in_flight_per_path.load(Ordering::SeqCst), 1);
    assert!(
        delivered < WAITS * CHANGES / 10,
        "{delivered} PUTs for {WAITS} waits × {CHANGES} changes"
    );
    assert!(
        growth < 40.0,
        "RSS grew {growth:.1} MB over {CHANGES} changes under {WAITS} waits"
    );

    // The target state: each callback's final answer, last, once.
    update(&mut writer, 1, "Order Served").await;
    let finished = eventually(Duration::from_secs(5), || {
        seen.by_path()
            .values()
            .filter(|puts| puts.last().is_some_and(|p| !p.update))
            .count()
            == WAITS
    })
    .await;
    assert!(finished, "not every callback got its final answer");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (path, puts) in seen.by_path() {
        let finals: Vec<&Put> = puts.iter().filter(|p| !p.update).collect();
        assert_eq!(finals.len(), 1, "{path}");
        let end = puts.last().unwrap();
        assert!(!end.update, "{path}: an update after the final answer");
        assert_eq!(
            (end.status.as_str(), end.version),
            ("Order Served", last + 1)
        );
    }
    assert_eq!(pending(&mut writer).await, 0);
}

/// `cpee.max_waits_per_order` (64 by default) bounds the callbacks one order
/// holds: the next wait is refused like one past `cpee.max_pending` (503,
/// naming the key), other orders still take waits, and a wait that ends
/// makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_past_max_waits_per_order_are_refused() {
    const MAX: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &[]);
    let (cpee, _seen) = callback_server(Duration::ZERO).await;
    let mut c = client(&broker).await;
    update(&mut c, 1, "Order Initiated").await;
    update(&mut c, 2, "Order Initiated").await;
    for i in 0..MAX {
        let reply = wait(&mut c, 1, &format!("http://{cpee}/cb/{i}"), i % 2 == 0).await;
        assert_eq!(reply.header("cpee-callback"), Some("true"), "wait {i}");
    }
    let reply = wait(&mut c, 1, &format!("http://{cpee}/cb/extra"), true).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert!(
        reply.error().contains("cpee.max_waits_per_order"),
        "{:?}",
        reply.error()
    );
    assert_eq!(reply.header("cpee-callback"), None);
    assert_eq!(
        pending(&mut c).await,
        MAX,
        "the refused wait is not pending"
    );
    // Another order is not affected.
    let reply = wait(&mut c, 2, &format!("http://{cpee}/cb/other"), true).await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));
    // Cancelling one of order 1's waits makes room for one more.
    let callbacks = c.send(Method::GET, "/cpee/callbacks", &[], "").await.json();
    let first = callbacks[0]["id"].as_u64().unwrap();
    let reply = c
        .send(Method::DELETE, &format!("/cpee/callbacks/{first}"), &[], "")
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = wait(&mut c, 1, &format!("http://{cpee}/cb/again"), false).await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));
    let reply = wait(&mut c, 1, &format!("http://{cpee}/cb/again2"), false).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // Once the order gets there, its waits are answered and room is back.
    update(&mut c, 1, "Order Served").await;
    let mut answered = false;
    for _ in 0..250 {
        if pending(&mut c).await == 1 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "order 1's waits were answered");
    update(&mut c, 1, "Mixing").await;
    let reply = wait(&mut c, 1, &format!("http://{cpee}/cb/later"), false).await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));
}

/// 2,000 callbacks owed at once (50 waits on each of 40 orders, all
/// changed together) to 40 CPEE engines (one port each, 20 ms per PUT):
/// every one is delivered, and the broker never holds more than
/// `cpee.max_deliveries` connections open at once, in flight or idle,
/// whichever engines they go to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_callbacks_share_max_deliveries_connections() {
    const ORDERS: usize = 40;
    const WAITS: usize = 50;
    const MAX_DELIVERIES: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(
        dir.path(),
        &[(
            "ORDER_BROKER_CPEE_MAX_DELIVERIES",
            &MAX_DELIVERIES.to_string(),
        )],
    );
    let (engines, seen) = callback_servers(ORDERS, Duration::from_millis(20)).await;
    let mut c = client(&broker).await;
    for (order, engine) in (1..).zip(&engines) {
        update(&mut c, order, "Order Initiated").await;
        for i in 0..WAITS {
            let url = format!("http://{engine}/cb/{order}/{i}");
            let reply = wait(&mut c, order, &url, false).await;
            assert_eq!(reply.header("cpee-callback"), Some("true"));
        }
    }
    let total = ORDERS * WAITS;
    assert_eq!(pending(&mut c).await, total);
    // All orders get there together, from several writers at once.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = broker.addr.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr.parse().unwrap()).await;
                for order in (1..=ORDERS as u64).filter(|o| o % 4 == w) {
                    update(&mut c, order, "Order Served").await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let all = eventually(Duration::from_secs(20), || seen.count() >= total).await;
    assert!(all, "{} of {total} callbacks delivered", seen.count());
    // What stays open afterwards (idle, kept for the next change) counts too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = seen.open();
    let max_open = seen.max_open.load(Ordering::SeqCst).max(idle);
    assert!(
        max_open <= MAX_DELIVERIES,
        "{max_open} connections open at once ({idle} still open, {} accepted in all), \
         cpee.max_deliveries = {MAX_DELIVERIES}",
        seen.accepted.load(Ordering::SeqCst)
    );
    // Each got its final answer, once: the order, served.
    let puts = seen.puts.lock().clone();
    let callbacks: std::collections::HashSet<&str> = puts.iter().map(|p| p.path.as_str()).collect();
    assert_eq!((puts.len(), callbacks.len()), (total, total));
    assert!(
        puts.iter()
            .all(|p| !p.update && (p.status.as_str(), p.version) == ("Order Served", 2))
    );
    assert_eq!(pending(&mut c).await, 0);
}
