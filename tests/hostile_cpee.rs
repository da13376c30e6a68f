//! CPEE callbacks under a hostile load, against the real binary and a real
//! (slow) callback server that records every PUT and every connection:
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
