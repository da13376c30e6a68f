//! The real `order-broker` binary as a child process, on a data directory
//! of the caller's: started (optionally under `strace` to slow a syscall),
//! asked over HTTP/1.1 (plain, or over TLS for a broker that serves https),
//! stopped with SIGTERM or SIGKILL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running broker process.
pub struct Broker {
    child: Child,
    /// The broker's own pid (not strace's, when it runs under strace).
    pub pid: u32,
    pub addr: String,
    stderr: Arc<Mutex<String>>,
    /// For a broker that serves https: what requests verify it with.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Copies what `pipe` says into `sink` on a thread of its own, until it
/// closes (so a chatty child never blocks on a full pipe).
pub fn drain_into(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// A connection, plain or TLS.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A connection to `addr` (an IP and port), every read and write bounded
/// by `timeout`; over TLS when `tls` is given (the server's certificate
/// must name that IP).
pub fn connect(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> std::io::Result<Box<dyn Stream>> {
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let tcp = TcpStream::connect_timeout(&sock, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    match tls {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(sock.ip().into());
            let conn = rustls::ClientConnection::new(config.clone(), name)
                .map_err(std::io::Error::other)?;
            Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
    }
}

/// Reads until the peer closes (a TLS peer that closes without
/// `close_notify` ends the answer too).
pub fn read_all(stream: &mut dyn Stream, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// How to start one: environment overrides and an optional slowed syscall.
pub struct Start<'a> {
    pub dir: &'a Path,
    pub env: Vec<(&'a str, String)>,
    /// `(syscall, microseconds)`: every call of it waits that long first
    /// (`strace -e inject=SYSCALL:delay_enter=US`).
    pub slow: Option<(&'a str, u64)>,
    /// `--listen` (default `127.0.0.1:0`): a fixed port, for brokers whose
    /// address others must know before they start (cluster tests).
    pub listen: Option<String>,
    /// The broker serves https (its env names the files): requests verify
    /// it with this.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl<'a> Start<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Start {
            dir,
            env: Vec::new(),
            slow: None,
            listen: None,
            tls: None,
        }
    }

    pub fn tls(mut self, client: Option<Arc<rustls::ClientConfig>>) -> Self {
        self.tls = client;
        self
    }

    pub fn listen(mut self, addr: impl ToString) -> Self {
        self.listen = Some(addr.to_string());
        self
    }

    pub fn env(mut self, key: &'a str, value: impl ToString) -> Self {
        self.env.push((key, value.to_string()));
        self
    }

    pub fn slow(mut self, syscall: &'a str, micros: u64) -> Self {
        self.slow = Some((syscall, micros));
        self
    }

    /// Starts the broker and waits until it serves; `Err(stderr)` if it
    /// exits instead (recovery refused).
    pub fn start(self) -> Result<Broker, String> {
        // OB_TEST_BROKER_BIN runs these tests against another build (to
        // check that a test fails without its fix).
        let binary = std::env::var("OB_TEST_BROKER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_order-broker").to_string());
        let mut cmd = match self.slow {
            None => Command::new(binary),
            Some((syscall, micros)) => {
                let mut cmd = Command::new("strace");
                cmd.args(["-f", "--seccomp-bpf", "-o", "/dev/null"])
                    .arg(format!("--trace={syscall}"))
                    .arg(format!("--inject={syscall}:delay_enter={micros}"))
                    .arg(&binary);
                cmd
            }
        };
        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:0");
        cmd.args(["--listen", listen])
            .env_remove("RUST_LOG")
            .env("ORDER_BROKER_PERSISTENCE_DIR", self.dir)
            .env("ORDER_BROKER_PERSISTENCE_MODE", "journal")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("the broker (or strace) starts");
        // Drain stderr, so a chatty broker never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        drain_into(child.stderr.take().unwrap(), stderr.clone());
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // Keep reading: a broker that prints again (one that re-executes
        // itself in place) must not meet a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let Some(addr) = line
            .trim()
            .strip_prefix("order-broker listening on http://")
            .or_else(|| {
                line.trim()
                    .strip_prefix("order-broker listening on https://")
            })
            .map(str::to_string)
        else {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(50));
            return Err(stderr.lock().unwrap().clone());
        };
        let pid = match self.slow {
            None => child.id(),
            Some(_) => traced_pid(child.id()),
        };
        let mut broker = Broker {
            child,
            pid,
            addr,
            stderr,
            tls: self.tls.clone(),
        };
        for _ in 0..1500 {
            if let Ok(Some(_)) = broker.child.try_wait() {
                // Let the drain thread catch the last words.
                std::thread::sleep(Duration::from_millis(50));
                return Err(broker.stderr());
            }
            if let Some((200, _)) = broker.try_request("GET", "/readyz", "") {
                return Ok(broker);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the broker did not become ready: {}", broker.stderr());
    }
}

/// The tracee strace started (its only child).
fn traced_pid(strace: u32) -> u32 {
    for _ in 0..500 {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("strace started no broker");
}

impl Broker {
    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// One request on a fresh connection: status and body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_request(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }

    pub fn try_request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut stream = connect(&self.addr, self.tls.as_ref(), Duration::from_secs(300)).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        stream.flush().ok()?;
        let mut bytes = Vec::new();
        read_all(&mut *stream, &mut bytes).ok()?;
        let response = String::from_utf8_lossy(&bytes).into_owned();
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)?
        } else {
            body.to_string()
        };
        Some((status, body))
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.request("GET", path, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `PUT /update_order` with status "Mixing" for each id, each answered
    /// 200 (acknowledged).
    pub fn update_orders(&self, ids: std::ops::RangeInclusive<u64>) {
        for id in ids {
            let body = format!(r#"{{"order_id": {id}, "status": "Mixing"}}"#);
            let (status, answer) = self.request("PUT", "/update_order", &body);
            assert_eq!(status, 200, "order {id}: {answer}");
        }
    }

    /// Every order id `/get_all` lists.
    pub fn order_ids(&self) -> Vec<u64> {
        let all = self.json("/get_all");
        let mut ids: Vec<u64> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// SIGTERM; asserts a clean exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}: {}", self.stderr());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A chunked body (`/orders` and exports stream) put back together.
pub fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}
