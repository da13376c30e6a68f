//! The connections callbacks go out on: HTTP/1.1 keep-alive, and at most
//! `cpee.max_deliveries` sockets open at once in all — connecting, busy or
//! idle, whatever host they go to. (hyper-util's pool bounds idle sockets
//! per host only, so callbacks to many hosts kept one idle socket each.)
//!
//! Each socket holds a permit of `sockets` from before it connects until it
//! is closed: the permit lives in the task that drives the connection. A
//! request that finds no idle connection to its host and no free permit
//! closes the oldest idle one to another host and waits for its permit.
//!
//! `https://` callbacks go over rustls (`crate::tls::callback_connector`),
//! with the URL's host as the name verified and sent (SNI). Connections are
//! kept by scheme, host and port: an http and an https callback to one
//! `host:port` never share one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::debug;

/// How long an idle connection is kept for the next callback to its host.
const IDLE: Duration = Duration::from_secs(30);
/// Most of an answer's body read (and dropped) so its connection can be
/// used again; a longer one closes the connection.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a request got no answer.
#[derive(Debug)]
pub struct SendError {
    pub reason: String,
    /// The TLS handshake failed (e.g. the certificate did not verify).
    pub tls: bool,
}

impl SendError {
    fn new(reason: impl Into<String>) -> Self {
        SendError {
            reason: reason.into(),
            tls: false,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Where a connection goes: the scheme is part of the pool's key.
struct Target {
    https: bool,
    host: String,
    port: u16,
}

impl Target {
    fn key(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// An answer: its status and (up to `MAX_ANSWER_BYTES` of) its body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

pub struct Pool {
    /// One permit per open socket (`cpee.max_deliveries`).
    sockets: Arc<Semaphore>,
    /// Idle connections by `scheme://host:port`, oldest first; the lock is
    /// never held across `.await`.
    idle: Mutex<HashMap<String, VecDeque<Idle>>>,
    /// Whether a task closes idle connections past `IDLE`.
    reaping: AtomicBool,
    /// Bounds connecting, TLS handshake included.
    connect_timeout: Duration,
    /// For `https://` callbacks.
    tls: TlsConnector,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl Pool {
    pub fn new(max_sockets: usize, connect_timeout: Duration, tls: TlsConnector) -> Arc<Pool> {
        Arc::new(Pool {
            sockets: Arc::new(Semaphore::new(max_sockets)),
            idle: Mutex::default(),
            reaping: AtomicBool::new(false),
            connect_timeout,
            tls,
        })
    }

    /// Sends `request` (an absolute `http://` or `https://` URI) and reads
    /// its answer. The caller bounds the time it may take.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Reply, SendError> {
        let uri = request.uri().clone();
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(SendError::new("not an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| SendError::new("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = Target { https, host, port };
        let key = target.key();
        // As hyper's own client sends it: origin-form, and the host.
        let host_header = match (uri.host(), uri.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let host_header =
            HeaderValue::from_str(&host_header).map_err(|e| SendError::new(e.to_string()))?;
        request.headers_mut().insert(HOST, host_header);
        *request.uri_mut() = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .map_err(|e| SendError::new(e.to_string()))?;
        loop {
            let (mut sender, reused) = self.checkout(&key, &target).await?;
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => match e.take_message() {
                    // A kept connection the peer had closed; the request
                    // was not sent, so it goes out on another one.
                    Some(again) if reused => {
                        request = again;
                        continue;
                    }
                    _ => return Err(SendError::new(e.into_error().to_string())),
                },
            };
            let status = response.status();
            // Read the answer to its end, so the connection can be kept.
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES);
            let body = match body.collect().await {
                Ok(body) => {
                    self.put_idle(key, sender);
                    body.to_bytes()
                }
                Err(_) => Bytes::new(),
            };
            return Ok(Reply { status, body });
        }
    }

    /// An idle connection to `key`, or a new one once a socket is free.
    async fn checkout(
        self: &Arc<Self>,
        key: &str,
        target: &Target,
    ) -> Result<(SendRequest<Full<Bytes>>, bool), SendError> {
        loop {
            if let Some(mut sender) = self.take_idle(key) {
                if sender.ready().await.is_ok() {
                    return Ok((sender, true));
                }
                continue;
            }
            let permit = match self.sockets.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return Err(SendError::new("closed")),
                Err(TryAcquireError::NoPermits) => {
                    // Every socket is busy or idle to another host: close
                    // one of those and wait for its permit. Re-check now
                    // and then: one to our host may have come back.
                    self.close_idle_elsewhere(key);
                    let wait = self.sockets.clone().acquire_owned();
                    match tokio::time::timeout(Duration::from_millis(20), wait).await {
                        Ok(Ok(permit)) => permit,
                        Ok(Err(_)) => return Err(SendError::new("closed")),
                        Err(_) => continue,
                    }
                }
            };
            return self
                .connect(target, permit)
                .await
                .map(|sender| (sender, false));
        }
    }

    /// A new connection (TCP, then TLS for https) within `connect_timeout`.
    async fn connect(
        &self,
        target: &Target,
        permit: OwnedSemaphorePermit,
    ) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let connecting = async {
            let stream = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| SendError::new(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            if !target.https {
                return drive(stream, permit).await;
            }
            let name = ServerName::try_from(target.host.clone()).map_err(|e| SendError {
                reason: format!("{:?} is not a name TLS can verify: {e}", target.host),
                tls: true,
            })?;
            let stream = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| SendError {
                    reason: format!("TLS handshake with {} failed: {e}", target.host),
                    tls: true,
                })?;
            drive(stream, permit).await
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| SendError::new("connect timed out"))?
    }

    /// The newest idle connection to `key` that is still open.
    fn take_idle(&self, key: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some(conn) = list.pop_back() {
            if !conn.sender.is_closed() && conn.since.elapsed() < IDLE {
                found = Some(conn.sender);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    fn put_idle(self: &Arc<Self>, key: String, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        self.idle.lock().entry(key).or_default().push_back(Idle {
            sender,
            since: Instant::now(),
        });
        if !self.reaping.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().reap());
        }
    }

    /// Closes the oldest idle connection to a host other than `key`.
    fn close_idle_elsewhere(&self, key: &str) {
        let mut idle = self.idle.lock();
        let oldest = idle
            .iter()
            .filter(|(k, list)| k.as_str() != key && !list.is_empty())
            .min_by_key(|(_, list)| list.front().map(|c| c.since))
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            let list = idle.get_mut(&k).expect("found above");
            // Dropping the sender ends its connection, which frees the permit.
            drop(list.pop_front());
            if list.is_empty() {
                idle.remove(&k);
            }
        }
    }

    /// Closes idle connections past `IDLE` until none is left.
    async fn reap(self: Arc<Self>) {
        loop {
            tokio::time::sleep(IDLE / 2).await;
            let mut idle = self.idle.lock();
            for list in idle.values_mut() {
                list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE);
            }
            idle.retain(|_, list| !list.is_empty());
            if idle.is_empty() {
                self.reaping.store(false, Ordering::Release);
                return;
            }
        }
    }
}

/// Starts HTTP/1 on a connected socket, driven by a task of its own.
async fn drive<T>(
    io: T,
    permit: OwnedSemaphorePermit,
) -> Result<SendRequest<Full<Bytes>>, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::new(e.to_string()))?;
    tokio::spawn(async move {
        // The socket counts until the connection is over and closed.
        let _permit = permit;
        if let Err(e) = connection.await {
            debug!(error = %e, "callback connection ended");
        }
    });
    Ok(sender)
}
