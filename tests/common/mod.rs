//! Shared test helpers: a broker served on port 0 that shuts down on drop, and
//! a small HTTP/1 client over a real socket.
#![allow(dead_code)] // each test binary uses a different part

pub mod browser;
pub mod cluster;
pub mod engine;
pub mod process;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use order_broker::config::PersistenceMode;
use order_broker::{Broker, Config, server};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub broker: Broker,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The default config with state in memory only, so tests share no files.
pub fn config() -> Config {
    let mut config = Config::default();
    config.persistence.mode = PersistenceMode::Memory;
    config
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with_config(config()).await
    }

    pub async fn with_config(config: Config) -> TestServer {
        Self::at("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// A server on a given address (to restart one where clients expect it).
    pub async fn at(addr: SocketAddr, config: Config) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, config)
            .await
            .unwrap_or_else(|e| panic!("the server failed to start: {e}"))
    }

    /// Starts a server; its error if it fails to start (e.g. recovery refused).
    pub async fn try_start(config: Config) -> std::io::Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, config).await
    }

    /// Serves on `listener` and waits until the server is ready.
    async fn serve(listener: TcpListener, config: Config) -> std::io::Result<TestServer> {
        let addr = listener.local_addr().unwrap();
        let broker = Broker::new(&config);
        let (tx, rx) = oneshot::channel::<()>();
        let served = broker.clone();
        let task = tokio::spawn(async move {
            server::serve(listener, served, &config, async {
                let _ = rx.await;
            })
            .await
        });
        let mut server = TestServer {
            addr,
            broker,
            shutdown: Some(tx),
            task: Some(task),
        };
        for _ in 0..3000 {
            if server.task.as_ref().unwrap().is_finished() {
                server.task.take().unwrap().await.unwrap()?;
                panic!("the server stopped without an error");
            }
            if server.is_ready().await {
                return Ok(server);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the server was not ready within 30 s");
    }

    /// Whether `/readyz` answers 200; false if the server does not answer.
    async fn is_ready(&self) -> bool {
        let Ok(stream) = TcpStream::connect(self.addr).await else {
            return false;
        };
        let Ok((mut sender, connection)) = http1::handshake(TokioIo::new(stream)).await else {
            return false;
        };
        tokio::spawn(connection);
        let request = Request::get("/readyz")
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        matches!(sender.send_request(request).await, Ok(r) if r.status() == StatusCode::OK)
    }

    /// A new keep-alive connection to the server.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// One request on a fresh connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.client().await.send(method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], "").await
    }

    pub async fn put_json(&self, path: &str, body: &str) -> Reply {
        self.client().await.put_json(path, body).await
    }

    pub async fn post_form(&self, path: &str, body: &str) -> Reply {
        let ct = ("content-type", "application/x-www-form-urlencoded");
        self.send(Method::POST, path, &[ct], body).await
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub struct Client {
    sender: SendRequest<Full<Bytes>>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error` text of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Client { sender }
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("host", "test");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn put_json(&mut self, path: &str, body: &str) -> Reply {
        self.send(
            Method::PUT,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }
}

/// A Server-Sent Events stream read over a real connection.
pub struct Sse {
    body: hyper::body::Incoming,
    buf: String,
    _sender: SendRequest<Full<Bytes>>,
}

/// One block of a stream: an event, or a comment (`event` = ":").
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

impl Sse {
    /// Opens `path`; Err with the reply when the answer is not a stream.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Sse, Reply> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder().uri(path).header("host", "test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let is_stream = parts
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"text/event-stream");
        if parts.status != StatusCode::OK || !is_stream {
            let body = body.collect().await.unwrap().to_bytes();
            return Err(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
        Ok(Sse {
            body,
            buf: String::new(),
            _sender: sender,
        })
    }

    /// The next block (event, comment or retry hint), or None at the end of
    /// the stream or after `wait`.
    pub async fn next_block(&mut self, wait: std::time::Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        event.event = "retry".into();
                        event.data = v.to_string();
                    } else if line.starts_with(':') {
                        event.event = ":".into();
                        event.data = line.to_string();
                    }
                }
                return Some(event);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            if let Ok(data) = frame.unwrap().into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// The next event, skipping comments and the retry hint.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let block = self.next_block(std::time::Duration::from_secs(5)).await?;
            if block.event != ":" && block.event != "retry" {
                return Some(block);
            }
        }
    }

    /// True if nothing but comments arrives within `wait`.
    pub async fn quiet_for(&mut self, wait: std::time::Duration) -> bool {
        loop {
            match self.next_block(wait).await {
                None => return true,
                Some(b) if b.event == ":" || b.event == "retry" => continue,
                Some(_) => return false,
            }
        }
    }
}

/// One request with a JSON body (none for `Value::Null`) on a fresh
/// connection.
pub async fn send_json(
    server: &TestServer,
    method: Method,
    path: &str,
    body: serde_json::Value,
) -> Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    server
        .send(method, path, &[("content-type", "application/json")], &body)
        .await
}

/// The files in `dir` whose names start with `prefix` (`journal-`,
/// `snapshot-`, `archive-`), sorted (by seq).
pub fn files(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .collect();
    found.sort();
    found
}
