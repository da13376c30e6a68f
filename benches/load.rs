//! Load bench (`cargo bench --bench load`): the broker against a bare hyper
//! server that answers a fixed body, on the same machine, driven by the same
//! keep-alive clients. Prints requests/s and p50/p99 latency for each, and the
//! broker's throughput as a ratio of the bare server's.
//!
//! Options (after `--`): `--seconds N` per run (5), `--rounds N` (3),
//! `--connections N` (32), `--only update|sse|view|journal`.
//!
//! `journal` compares `PUT /update_order` with the journal on (fsync
//! `everysec`, then `always`) against the same broker in memory mode, and
//! prints how many requests shared each fsync (group commit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use order_broker::config::{Fsync, PersistenceMode};
use order_broker::{Broker, Config, OrderId, server};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

struct Options {
    seconds: u64,
    rounds: usize,
    connections: usize,
    /// Run only the scenario whose name contains this (`update`, `view`).
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        rounds: 3,
        connections: 32,
        only: None,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = pair[1].parse().ok();
        match (pair[0].as_str(), value) {
            ("--seconds", Some(v)) => o.seconds = v,
            ("--rounds", Some(v)) => o.rounds = v as usize,
            ("--connections", Some(v)) => o.connections = v as usize,
            ("--only", _) => o.only = Some(pair[1].clone()),
            _ => {}
        }
    }
    o
}

/// Builds the n-th request of a connection.
type MakeRequest = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;

struct Stats {
    rps: f64,
    /// CPU time the server runtime's threads spent per request.
    server_cpu: Duration,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// CPU time used so far by this process's threads named `name` (Linux).
fn thread_cpu(name: &str) -> Duration {
    let ticks_per_sec = 100; // USER_HZ on Linux
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        // Fields after the name: state is field 3; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    }
    Duration::from_millis(ticks * 1000 / ticks_per_sec)
}

async fn drive(addr: SocketAddr, connections: usize, seconds: u64, make: MakeRequest) -> Stats {
    let cpu_before = thread_cpu("server");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = client_http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut n = c as u64 * 1_000_003;
            while Instant::now() < deadline {
                n += 1;
                let request = make(n);
                let t0 = Instant::now();
                let response = sender.send_request(request).await.unwrap();
                let ok = response.status().is_success();
                response.into_body().collect().await.unwrap();
                latencies.push(t0.elapsed().as_micros() as u32);
                errors += u64::from(!ok);
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (latencies, e) = t.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    let elapsed = start.elapsed();
    let server_cpu = (thread_cpu("server") - cpu_before).div_f64(all.len().max(1) as f64);
    all.sort_unstable();
    let pct = |p: f64| Duration::from_micros(all[((all.len() - 1) as f64 * p) as usize] as u64);
    Stats {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        server_cpu,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

/// A bare hyper server: reads the request body, answers `body`.
async fn bare_server(body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let body = body.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    req.into_body().collect().await.ok();
                    let mut response = Response::new(Full::new(body));
                    response
                        .headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = server_http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The default config, state in memory only.
fn memory_config() -> Config {
    let mut config = Config::default();
    config.persistence.mode = PersistenceMode::Memory;
    config
}

async fn broker_server(broker: Broker) -> SocketAddr {
    serve_with(broker, memory_config()).await
}

/// Serves `broker` with `config` and waits until it is ready (recovered).
async fn serve_with(broker: Broker, config: Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        server::serve(listener, broker, &config, std::future::pending())
            .await
            .unwrap();
    });
    while !get(addr, "/readyz")
        .await
        .starts_with(b"{\"status\":\"ready")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    addr
}

fn compare(
    name: &str,
    opts: &Options,
    client: &Runtime,
    bare: SocketAddr,
    broker: SocketAddr,
    make: MakeRequest,
) {
    compare_labelled(name, opts, client, ("bare", bare), ("broker", broker), make);
}

/// Throughput of `candidate` as a ratio of `baseline`'s, in alternating runs.
fn compare_labelled(
    name: &str,
    opts: &Options,
    client: &Runtime,
    (base_label, bare): (&str, SocketAddr),
    (label, broker): (&str, SocketAddr),
    make: MakeRequest,
) {
    println!(
        "\n{name}  ({} connections, {} s per run)",
        opts.connections, opts.seconds
    );
    println!(
        "  {:<8} {:>10} {:>9} {:>9} {:>13} {:>7}",
        "server", "req/s", "p50", "p99", "server CPU/req", "errors"
    );
    // Warm up both (connections, caches, allocator) before measuring.
    client.block_on(drive(bare, opts.connections, 1, make.clone()));
    client.block_on(drive(broker, opts.connections, 1, make.clone()));
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for _ in 0..opts.rounds {
        let b = client.block_on(drive(bare, opts.connections, opts.seconds, make.clone()));
        let o = client.block_on(drive(broker, opts.connections, opts.seconds, make.clone()));
        for (label, s) in [(base_label, &b), (label, &o)] {
            println!(
                "  {label:<8} {:>10.0} {:>9.1?} {:>9.1?} {:>13.1?} {:>7}",
                s.rps, s.p50, s.p99, s.server_cpu, s.errors
            );
        }
        ratios.push(o.rps / b.rps);
        cpu_ratios.push(o.server_cpu.as_secs_f64() / b.server_cpu.as_secs_f64().max(1e-9));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let listed: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
        format!(
            "median {:.2}x (runs: {})",
            v[v.len() / 2],
            listed.join(", ")
        )
    };
    println!("  {label}/{base_label} throughput: {}", median(&mut ratios));
    println!(
        "  {label}/{base_label} server CPU per request: {}",
        median(&mut cpu_ratios)
    );
}

/// One GET on a fresh connection; the body.
async fn get(addr: SocketAddr, path: &str) -> Bytes {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = client_http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "bench")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// A broker holding `n` orders in progress.
fn broker_with_orders(n: u64) -> Broker {
    let broker = Broker::new(&memory_config());
    for id in 0..n {
        broker
            .update_status(OrderId(id), "Mixing", Some(&format!("bot-{}", id % 5)))
            .unwrap();
    }
    broker
}

/// `PUT /update_order` requests spread over 10,000 orders and four statuses.
fn update_requests() -> MakeRequest {
    let statuses = ["Order Initiated", "Mixing", "Pouring", "Order Served"];
    Arc::new(move |n| {
        let body = format!(
            r#"{{"id": {}, "orderbot_id": "bot-{}", "status": "{}"}}"#,
            n % 10_000,
            n % 5,
            statuses[(n % 4) as usize]
        );
        Request::builder()
            .method(Method::PUT)
            .uri("/update_order")
            .header("host", "bench")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    })
}

/// Milliseconds since the Unix epoch, as the broker stamps `updated`.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// 1,000 SSE subscribers, each following one order (a customer tracking an
/// order), connected while `PUT /update_order` runs over 10,000 orders.
/// Reports update throughput against the bare server and the time from an
/// update's commit (its `updated` stamp, taken before the acknowledgement)
/// to its arrival at the subscriber.
fn sse_scenario(opts: &Options, servers: &Runtime, client: &Runtime) {
    const SUBSCRIBERS: u64 = 1_000;
    let broker = Broker::new(&memory_config());
    for id in 0..10_000 {
        broker
            .update_status(OrderId(id), "Mixing", Some("bot-1"))
            .unwrap();
    }
    let ok = Bytes::from_static(br#"{"message":"Order updated"}"#);
    let (bare, addr) =
        servers.block_on(async { (bare_server(ok).await, broker_server(broker).await) });
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let (latencies, stop) = (latencies.clone(), stop.clone());
            client.spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut sender, conn) =
                    client_http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let request = Request::get(format!("/events?order_id={i}"))
                    .header("host", "bench")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let mut body = sender.send_request(request).await.unwrap().into_body();
                let mut mine = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(Some(Ok(frame))) =
                        tokio::time::timeout(Duration::from_millis(200), body.frame()).await
                    else {
                        continue;
                    };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let arrived = now_ms();
                    let text = String::from_utf8_lossy(&data);
                    for part in text.split("\"updated\":").skip(1) {
                        let digits: String =
                            part.chars().take_while(|c| c.is_ascii_digit()).collect();
                        if let Ok(updated) = digits.parse::<u64>() {
                            mine.push(arrived.saturating_sub(updated));
                        }
                    }
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    // Let every subscriber connect before measuring.
    client.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let body = get(addr, "/healthz").await;
            let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if health["event_streams"].as_u64() >= Some(SUBSCRIBERS) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let make = update_requests();
    compare(
        &format!("PUT /update_order with {SUBSCRIBERS} SSE subscribers (one order each)"),
        opts,
        client,
        bare,
        addr,
        make,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.block_on(async {
        for reader in readers {
            let _ = reader.await;
        }
    });
    let mut all = std::mem::take(&mut *latencies.lock().unwrap());
    all.sort_unstable();
    if all.is_empty() {
        println!("  no events reached the subscribers");
        return;
    }
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    println!(
        "  delivery to subscribers (commit -> arrival): {} events, p50 {} ms, p99 {} ms, max {} ms",
        all.len(),
        pct(0.5),
        pct(0.99),
        all[all.len() - 1]
    );
}

/// `PUT /update_order` with the journal on, against memory mode.
fn journal_scenario(opts: &Options, servers: &Runtime, client: &Runtime) {
    let memory = servers.block_on(broker_server(Broker::new(&memory_config())));
    for fsync in [Fsync::Everysec, Fsync::Always] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.persistence.dir = dir.path().to_path_buf();
        config.persistence.fsync = fsync;
        let broker = Broker::new(&config);
        let addr = servers.block_on(serve_with(broker, config));
        let label = format!("{fsync:?}").to_lowercase();
        compare_labelled(
            &format!("PUT /update_order, journal fsync = {label} vs memory mode"),
            opts,
            client,
            ("memory", memory),
            (&label, addr),
            update_requests(),
        );
        let metrics = client.block_on(get(addr, "/metrics"));
        let metrics = String::from_utf8_lossy(&metrics);
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let records = value("order_broker_journal_records_total");
        let fsyncs = value("order_broker_journal_fsync_seconds_count");
        let fsync_time = value("order_broker_journal_fsync_seconds_sum");
        println!(
            "  journal: {records:.0} records, {fsyncs:.0} fsyncs ({:.1} records per fsync, mean fsync {:.2} ms), {:.1} MB written",
            records / fsyncs.max(1.0),
            fsync_time * 1e3 / fsyncs.max(1.0),
            value("order_broker_journal_bytes_total") / 1e6
        );
    }
}

fn main() {
    let opts = options();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let build = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    };
    let servers = build("server");
    let client = build("client");
    println!("order-broker load bench: {threads} cores; servers and clients share them");

    let wanted = |name: &str| opts.only.as_deref().is_none_or(|o| name.contains(o));

    // PUT /update_order over 10,000 live orders.
    if wanted("update") {
        let ok = Bytes::from_static(br#"{"message":"Order updated"}"#);
        let broker = broker_with_orders(10_000);
        let (bare, addr) =
            servers.block_on(async { (bare_server(ok).await, broker_server(broker).await) });
        let name = "PUT /update_order, 10,000 live orders";
        compare(name, &opts, &client, bare, addr, update_requests());
    }
    if wanted("journal") {
        journal_scenario(&opts, &servers, &client);
    }
    if wanted("sse") {
        sse_scenario(&opts, &servers, &client);
    }
    if !wanted("view") {
        return;
    }

    // GET /get_current_order with 1,000 live orders in progress.
    let broker = broker_with_orders(1_000);
    let addr = servers.block_on(broker_server(broker));
    let view = client.block_on(get(addr, "/get_current_order"));
    let bare = servers.block_on(bare_server(Bytes::from(vec![b' '; view.len()])));
    let make: MakeRequest = Arc::new(|_| {
        Request::get("/get_current_order")
            .header("host", "bench")
            .body(Full::new(Bytes::new()))
            .unwrap()
    });
    compare(
        &format!(
            "GET /get_current_order, 1,000 live orders ({} byte body)",
            view.len()
        ),
        &opts,
        &client,
        bare,
        addr,
        make,
    );
}
