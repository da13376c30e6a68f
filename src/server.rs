//! The server: accepts connections on an already-bound listener, serves each
//! on its own task with hyper's HTTP/1 (keep-alive, header read timeout), and
//! on shutdown stops accepting and lets requests in flight finish. With
//! `http.tls_cert_file` each connection first completes a TLS handshake
//! (within `limits.header_read_timeout_secs`) on its counted place.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::config::{Config, Limits, Persistence, PersistenceMode};
use crate::http::App;
use crate::http::live::EventStream;
use crate::journal::{Journal, JournalError};
use crate::model::Millis;

/// hyper's buffer per connection: of a response, what it takes before it
/// waits for the socket (one chunk more at most); of a request, the longest
/// head (431 past it). With hyper's default, about 400 KiB, every silent
/// event stream held that much of its backlog.
pub const WRITE_BUFFER: usize = 16 * 1024;

/// Serves a new broker built from `config` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let broker = Broker::new(&config);
    serve(listener, broker, &config, shutdown).await
}

/// Serves `broker` until `shutdown` resolves, then drains open connections
/// for up to `http.shutdown_grace_secs`.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = Arc::new(
        App::new(broker, config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
    );
    let tls = crate::tls::acceptor(&config.http)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // A client that opens a connection and never says hello holds a
    // place like one that never sends its headers: as long as that.
    let handshake_deadline = Duration::from_secs(config.limits.header_read_timeout_secs);
    // Recovery reads files: off the async threads. Until it is done the
    // server answers, but only `/healthz`, `/readyz` and `/metrics` (503 else).
    // In a cluster the stream is the journal: the node catches up with it
    // instead (`cluster::join`), and no local journal is written.
    let cluster = config
        .cluster
        .enabled()
        .then(|| crate::cluster::Cluster::new(&config.cluster, app.broker().clone()));
    if let Some(cluster) = &cluster {
        // Leader-only work moves with the lease: the new leader takes over
        // the callbacks owed and the orders waiting for an orderbot; one
        // that steps down lets go of them.
        let cpee = app.cpee.clone();
        cluster.on_leadership(move |leads| {
            if leads {
                cpee.take_over()
            } else {
                cpee.let_go()
            }
        });
    }
    // After the cluster is attached: the renderer shows what is in the stream.
    tokio::spawn(app.live.clone().render(app.broker().clone()));
    let mut recovery = match &cluster {
        Some(cluster) => {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                crate::cluster::join(cluster)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        None => {
            let app = app.clone();
            let persistence = config.persistence.clone();
            tokio::task::spawn_blocking(move || {
                recover(&app, &persistence).map_err(|e| e.to_string())
            })
        }
    };
    let mut recovering = cluster.is_some() || config.persistence.mode == PersistenceMode::Journal;
    let mut analytics = None;
    if !recovering {
        analytics = Some(open(&app));
    }
    let watcher = tokio::spawn(app.cpee.clone().watch());
    let prober = tokio::spawn(app.cpee.clone().probe());
    let housekeeping = tokio::spawn(housekeeping(app.clone(), config.limits.clone()));
    let reclaimer = tokio::spawn(reclaim_symbols(app.clone()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.limits.header_read_timeout_secs))
        .max_buf_size(WRITE_BUFFER)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let places = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    let write_stall = Duration::from_secs(config.limits.write_stall_secs);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            recovered = &mut recovery, if recovering => {
                recovering = false;
                match recovered {
                    Ok(Ok(())) => {
                        analytics = Some(open(&app));
                        continue;
                    }
                    Ok(Err(e)) => return Err(io::Error::other(e)),
                    Err(e) => return Err(io::Error::other(format!("recovery panicked: {e}"))),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(place) = places.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let app = app.clone();
        let counted = ConnectionCount::new(app.clone());
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        // Under TLS too: it is the socket that stops taking bytes.
        let stream = crate::stall::Stalling::new(stream, write_stall);
        let streaming = stream.streaming();
        let service = move |tls: bool| {
            let (app, streaming) = (app.clone(), streaming.clone());
            service_fn(move |req| {
                let (app, streaming) = (app.clone(), streaming.clone());
                async move {
                    let response = app.handle(req, peer, tls).await;
                    if response.extensions().get::<EventStream>().is_some() {
                        streaming.store(true, std::sync::atomic::Ordering::Release);
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let (watcher, http, tls) = (graceful.watcher(), http.clone(), tls.clone());
        tokio::spawn(async move {
            let _held = (counted, place);
            let served = match tls {
                None => {
                    let served = http.serve_connection(TokioIo::new(stream), service(false));
                    watcher.watch(served).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(handshake_deadline, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(?peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(?peer, "TLS handshake not done in time; closed");
                                return;
                            }
                        };
                    let served = http.serve_connection(TokioIo::new(stream), service(true));
                    watcher.watch(served).await
                }
            };
            if let Err(e) = served {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Event streams never end on their own: end them so connections drain.
    app.live.close();
    watcher.abort();
    if let Some(analytics) = analytics {
        analytics.abort();
    }
    housekeeping.abort();
    reclaimer.abort();
    prober.abort();
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    info!(
        open = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("connections still open after {grace:?}; closing them");
    }
    if let Some(journal) = app.broker().journal().cloned() {
        // Every change acknowledged so far is written and fsynced before exit.
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        info!("journal flushed and closed");
    }
    Ok(())
}

/// Once the state is in place: takes over the callbacks owed and what
/// waits for an orderbot (alone; in a cluster the leader does, see
/// `serve`), builds the analytics and starts following the feed for them, and opens
/// the doors. Nothing writes before this returns.
fn open(app: &Arc<App>) -> tokio::task::JoinHandle<()> {
    if app.broker().cluster().is_none() {
        app.cpee.take_over();
    }
    let from = app.analytics.rebuild(app.broker());
    let follower = tokio::spawn(app.analytics.clone().follow(app.broker().clone(), from));
    app.ready.store(true, std::sync::atomic::Ordering::Release);
    follower
}

/// Loads the state from the journal (if `persistence.mode` is `journal`) and
/// attaches the journal to the broker.
fn recover(app: &App, persistence: &Persistence) -> Result<(), JournalError> {
    if persistence.mode == PersistenceMode::Memory {
        return Ok(());
    }
    Journal::open(persistence, app.broker())?;
    Ok(())
}

/// Once a second: releases scheduled orders whose time has come (they join
/// the dispatch queue), and evicts finished orders past
/// `limits.max_orders_kept` or older than `limits.evict_finished_after_secs`
/// (off the async threads: it may scan every finished order).
async fn housekeeping(app: Arc<App>, limits: Limits) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let age = (limits.evict_finished_after_secs > 0)
        .then(|| limits.evict_finished_after_secs.saturating_mul(1000));
    loop {
        tick.tick().await;
        if !app.ready.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        // In a cluster only the leader changes orders on its own.
        if app.broker().cluster().is_some_and(|c| !c.may_commit()) {
            continue;
        }
        for id in app.broker().release_due(Millis::now()) {
            app.cpee.enqueue(id);
        }
        let broker = app.broker().clone();
        let max = limits.max_orders_kept;
        let older_than = age.map(|ms| Millis(Millis::now().0.saturating_sub(ms)));
        let evicted =
            tokio::task::spawn_blocking(move || broker.evict_finished(max, older_than)).await;
        if let Ok(n) = evicted
            && n > 0
        {
            app.metrics
                .evicted
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            info!(orders = n, "evicted finished orders from memory");
        }
    }
}

/// Frees interned words no order uses any more whenever the table is
/// half full and has grown since the last sweep, or refused a word (see
/// `crate::symbols`); off the async threads, at most one sweep at a time.
async fn reclaim_symbols(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = app.broker().symbols_due_changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let broker = app.broker().clone();
        if !app.ready.load(std::sync::atomic::Ordering::Acquire) || !broker.symbols_due() {
            continue;
        }
        let started = std::time::Instant::now();
        let Ok(freed) = tokio::task::spawn_blocking(move || broker.reclaim_symbols()).await else {
            continue;
        };
        app.metrics
            .symbols_reclaimed
            .fetch_add(freed as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(freed, took = ?started.elapsed(), "symbol sweep");
        // A sweep that found little to free is not repeated at once: the
        // words in use are what fills the table.
        if freed < app.broker().symbol_limit() / 16 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Counts a connection in `/metrics` while it lives.
struct ConnectionCount(Arc<App>);

impl ConnectionCount {
    fn new(app: Arc<App>) -> Self {
        app.metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnectionCount(app)
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0
            .metrics
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Answers a connection past `limits.max_connections` with 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = r#"{"error":"too many connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
    let _ = stream.shutdown().await;
}
