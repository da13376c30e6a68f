//! Load bench (`cargo bench --bench load`): the broker against a bare hyper
//! server that answers a fixed body, on the same machine, driven by the same
//! keep-alive clients. Prints requests/s and p50/p99 latency for each, and the
//! broker's throughput as a ratio of the bare server's.
//!
//! Options (after `--`): `--seconds N` per run (5), `--rounds N` (3),
//! `--connections N` (32), `--only update|sse|view|journal`.
//!
//! `journal` compares `PUT /update_order` on a bare server, the broker in
//! memory mode, with the journal fsynced `everysec` and `always`, and Redis
//! HSET with `appendfsync always` and `everysec` (when `redis-server` and
//! `redis-benchmark` are installed), in alternating runs; it prints the
//! ratios, how many writes shared each fsync (group commit) and the fsync
//! time (mean, p99).

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

/// What one journal broker's fsyncs did during a run (from its counters).
#[derive(Clone, Copy)]
struct FsyncRun {
    records: u64,
    fsyncs: u64,
    mean: Duration,
    p99: Duration,
}

/// The journal's counters now: records, fsyncs, fsync time, histogram.
fn journal_counters(broker: &Broker) -> (u64, u64, u64, Vec<u64>) {
    let stats = &broker.journal().expect("journal mode").stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    (
        get(&stats.records),
        get(&stats.fsyncs),
        get(&stats.fsync_micros),
        stats.fsync_buckets.iter().map(get).collect(),
    )
}

/// The fsyncs between two readings of [`journal_counters`]; the p99 is
/// interpolated inside its histogram bucket.
fn fsync_run(before: &(u64, u64, u64, Vec<u64>), after: &(u64, u64, u64, Vec<u64>)) -> FsyncRun {
    let fsyncs = after.1 - before.1;
    let counts: Vec<u64> = after.3.iter().zip(&before.3).map(|(a, b)| a - b).collect();
    let target = (fsyncs as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    let mut p99 = 0.0;
    for (i, count) in counts.iter().enumerate() {
        if *count > 0 && seen + count >= target {
            let low = if i == 0 {
                0.0
            } else {
                order_broker::journal::FSYNC_BUCKETS[i - 1]
            };
            let high = order_broker::journal::FSYNC_BUCKETS
                .get(i)
                .copied()
                .unwrap_or(low * 2.0);
            p99 = low + (high - low) * (target - seen) as f64 / *count as f64;
            break;
        }
        seen += count;
    }
    FsyncRun {
        records: after.0 - before.0,
        fsyncs,
        mean: Duration::from_micros((after.2 - before.2) / fsyncs.max(1)),
        p99: Duration::from_secs_f64(p99),
    }
}

/// A `redis-server` on a free port in a temporary directory, with the
/// append-only file fsynced `always` or `everysec`; stopped on drop.
struct Redis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(appendfsync: &str) -> Option<Redis> {
        let dir = tempfile::tempdir().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                appendfsync,
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// `redis-benchmark` HSET over 10,000 keys with `connections` clients:
    /// `requests` in all.
    fn hset(&self, connections: usize, requests: u64) -> Stats {
        let out = std::process::Command::new("redis-benchmark")
            .args(["-p", &self.port.to_string(), "-c", &connections.to_string()])
            .args(["-n", &requests.to_string(), "-r", "10000", "--csv"])
            .args(["HSET", "order:__rand_int__", "status", "Mixing"])
            .output()
            .expect("redis-benchmark runs");
        let text = String::from_utf8_lossy(&out.stdout);
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let line = text.lines().last().unwrap_or_default();
        let field = |i: usize| {
            line.split(',')
                .nth(i)
                .and_then(|f| f.trim_matches('"').parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Stats {
            rps: field(1),
            server_cpu: Duration::ZERO,
            p50: Duration::from_secs_f64(field(4) / 1e3),
            p99: Duration::from_secs_f64(field(6) / 1e3),
            errors: u64::from(!out.status.success()),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One system the journal scenario drives.
enum System {
    Http {
        addr: SocketAddr,
        /// The broker, when it journals (for its fsync counters).
        journal: Option<Broker>,
    },
    Redis {
        redis: Redis,
        /// Requests per run, from the warm-up's rate.
        requests: u64,
    },
}

/// `PUT /update_order` over 10,000 orders: a bare hyper server, the broker
/// in memory mode, with the journal fsynced `everysec` and `always`, and
/// (when `redis-server` and `redis-benchmark` are installed) Redis HSET with
/// `appendfsync always` and `everysec` on the same machine, in alternating
/// runs. Prints each run, then each system's median with the spread and its
/// ratios to memory mode and to Redis `always` in the same rounds.
fn journal_scenario(opts: &Options, servers: &Runtime, client: &Runtime) {
    let ok = Bytes::from_static(br#"{"message":"Order updated"}"#);
    let mut systems: Vec<(String, System)> = vec![
        (
            "bare".into(),
            System::Http {
                addr: servers.block_on(bare_server(ok)),
                journal: None,
            },
        ),
        (
            "memory".into(),
            System::Http {
                addr: servers.block_on(broker_server(Broker::new(&memory_config()))),
                journal: None,
            },
        ),
    ];
    let mut dirs = Vec::new();
    for fsync in [Fsync::Everysec, Fsync::Always] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.persistence.dir = dir.path().to_path_buf();
        config.persistence.fsync = fsync;
        let broker = Broker::new(&config);
        let addr = servers.block_on(serve_with(broker.clone(), config));
        dirs.push(dir);
        let label = format!("{fsync:?}").to_lowercase();
        systems.push((
            label,
            System::Http {
                addr,
                journal: Some(broker),
            },
        ));
    }
    for appendfsync in ["always", "everysec"] {
        match Redis::start(appendfsync) {
            Some(redis) => {
                // Warm up, and size the runs to about `seconds` each.
                let warm = redis.hset(opts.connections, 20_000);
                let requests = (warm.rps * opts.seconds as f64) as u64;
                systems.push((
                    format!("redis-{appendfsync}"),
                    System::Redis {
                        redis,
                        requests: requests.max(10_000),
                    },
                ));
            }
            None => println!(
                "\n(redis-server or redis-benchmark not found: Redis {appendfsync} left out)"
            ),
        }
    }
    println!(
        "\nPUT /update_order over 10,000 orders, journal vs memory vs Redis HSET  \
         ({} connections, {} s per run, {} rounds)",
        opts.connections, opts.seconds, opts.rounds
    );
    println!(
        "  {:<15} {:>9} {:>9} {:>9} {:>9}  fsyncs",
        "system", "req/s", "p50", "p99", "CPU/req"
    );
    for (_, system) in &systems {
        if let System::Http { addr, .. } = system {
            client.block_on(drive(*addr, opts.connections, 1, update_requests()));
        }
    }
    let mut runs: Vec<Vec<Stats>> = systems.iter().map(|_| Vec::new()).collect();
    let mut fsyncs: Vec<Vec<FsyncRun>> = systems.iter().map(|_| Vec::new()).collect();
    for _ in 0..opts.rounds {
        for (i, (label, system)) in systems.iter().enumerate() {
            let (stats, fsync) = match system {
                System::Http { addr, journal } => {
                    let before = journal.as_ref().map(journal_counters);
                    let stats = client.block_on(drive(
                        *addr,
                        opts.connections,
                        opts.seconds,
                        update_requests(),
                    ));
                    let fsync = journal
                        .as_ref()
                        .zip(before)
                        .map(|(broker, before)| fsync_run(&before, &journal_counters(broker)));
                    (stats, fsync)
                }
                System::Redis { redis, requests } => {
                    (redis.hset(opts.connections, *requests), None)
                }
            };
            let cpu = if stats.server_cpu.is_zero() {
                "-".to_string()
            } else {
                format!("{:.1?}", stats.server_cpu)
            };
            let fsync_text = fsync.map_or(String::new(), |f| {
                format!(
                    "{:.1} writes/fsync, mean {:.0?}, p99 {:.0?}",
                    f.records as f64 / f.fsyncs.max(1) as f64,
                    f.mean,
                    f.p99
                )
            });
            println!(
                "  {label:<15} {:>9.0} {:>9.1?} {:>9.1?} {cpu:>9}  {fsync_text}{}",
                stats.rps,
                stats.p50,
                stats.p99,
                if stats.errors > 0 {
                    format!("  ({} errors)", stats.errors)
                } else {
                    String::new()
                }
            );
            runs[i].push(stats);
            if let Some(f) = fsync {
                fsyncs[i].push(f);
            }
        }
    }
    let index = |name: &str| systems.iter().position(|(l, _)| l == name);
    // Ratios are taken round by round (runs next to each other in time).
    let ratio = |i: usize, base: usize| -> String {
        let mut r: Vec<f64> = runs[i]
            .iter()
            .zip(&runs[base])
            .map(|(a, b)| a.rps / b.rps)
            .collect();
        r.sort_by(f64::total_cmp);
        format!("{:.2}x ({:.2}-{:.2})", r[r.len() / 2], r[0], r[r.len() - 1])
    };
    println!("\n  median of {} runs (spread):", opts.rounds);
    println!(
        "  {:<15} {:>22} {:>9} {:>9} {:>18} {:>18} {:>18}",
        "system", "req/s", "p50", "p99", "vs bare", "vs memory", "vs redis-always"
    );
    for (i, (label, _)) in systems.iter().enumerate() {
        let mut rps: Vec<f64> = runs[i].iter().map(|s| s.rps).collect();
        rps.sort_by(f64::total_cmp);
        let mut p50: Vec<Duration> = runs[i].iter().map(|s| s.p50).collect();
        let mut p99: Vec<Duration> = runs[i].iter().map(|s| s.p99).collect();
        p50.sort();
        p99.sort();
        let versus = |base: Option<usize>| {
            base.filter(|b| *b != i)
                .map_or("-".to_string(), |b| ratio(i, b))
        };
        println!(
            "  {label:<15} {:>22} {:>9.1?} {:>9.1?} {:>18} {:>18} {:>18}",
            format!(
                "{:.0} ({:.0}-{:.0})",
                rps[rps.len() / 2],
                rps[0],
                rps[rps.len() - 1]
            ),
            p50[p50.len() / 2],
            p99[p99.len() / 2],
            versus(index("bare")),
            versus(index("memory")),
            versus(index("redis-always")),
        );
        if !fsyncs[i].is_empty() {
            let mut per: Vec<f64> = fsyncs[i]
                .iter()
                .map(|f| f.records as f64 / f.fsyncs.max(1) as f64)
                .collect();
            per.sort_by(f64::total_cmp);
            let mut mean: Vec<Duration> = fsyncs[i].iter().map(|f| f.mean).collect();
            let mut p99: Vec<Duration> = fsyncs[i].iter().map(|f| f.p99).collect();
            mean.sort();
            p99.sort();
            println!(
                "  {:<15} writes per fsync {:.1} ({:.1}-{:.1}), fsync mean {:.0?}, p99 {:.0?}",
                "",
                per[per.len() / 2],
                per[0],
                per[per.len() - 1],
                mean[mean.len() / 2],
                p99[p99.len() / 2]
            );
        }
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
