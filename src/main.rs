//! The `order-broker` binary: command line, config, logging, bind, serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use order_broker::{Config, server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// An in-memory, concurrent order-state broker.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: config/broker.toml if present, else the embedded default).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `listen` from the config and ORDER_BROKER_LISTEN.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("order-broker: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    // The PEM files the config names are part of it: a bad one is a config error.
    if let Err(e) = order_broker::tls::check(&config) {
        eprintln!("order-broker: config error: {e}");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr, coloured only on a terminal; stdout carries only
    // the "listening on" line.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let source = match &cli.config {
        Some(path) => path.display().to_string(),
        None if std::path::Path::new(order_broker::config::DEFAULT_PATH).exists() => {
            order_broker::config::DEFAULT_PATH.to_string()
        }
        None => "the embedded default (no config/broker.toml here)".to_string(),
    };
    if config.persistence.mode == order_broker::config::PersistenceMode::Journal {
        let dir = &config.persistence.dir;
        let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        tracing::info!(
            "config: {source}; state journaled in {} (fsync = {})",
            shown.display(),
            format!("{:?}", config.persistence.fsync).to_lowercase()
        );
        // A directory another broker holds, or one recovery would refuse
        // for what it can tell without replaying, stops the start before
        // it listens.
        if let Err(e) = order_broker::journal::preflight(dir) {
            eprintln!("order-broker: {e}");
            return ExitCode::from(2);
        }
    } else {
        tracing::info!("config: {source}; state in memory only (persistence.mode = \"memory\")");
    }
    config.limits.max_connections = raise_file_limit(config.limits.max_connections);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("order-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("order-broker: cannot listen on {}: {e}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(e) => {
                eprintln!("order-broker: cannot watch for signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map_or(config.listen, |a| a);
        let scheme = if config.http.serves_https() {
            "https"
        } else {
            "http"
        };
        println!("order-broker listening on {scheme}://{addr}");
        match server::run(listener, config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("order-broker: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Descriptors kept free of connections: the journal, snapshots, the
/// archive, outgoing callbacks, the listener and the runtime's own.
const RESERVED_FILES: u64 = 1024;

/// Every connection is a file descriptor: raise the soft limit (often 1024)
/// towards the hard one. Returns the connections that fit: past them a new
/// one gets the documented 503, never "too many open files" in accept.
fn raise_file_limit(max_connections: usize) -> usize {
    let wanted = max_connections as u64 + RESERVED_FILES;
    let got = match rlimit::increase_nofile_limit(wanted) {
        Ok(got) => got,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(wanted, |(soft, _)| soft)
        }
    };
    let fits = got.saturating_sub(RESERVED_FILES).max(16) as usize;
    if fits < max_connections {
        tracing::warn!(
            open_files = got,
            max_connections,
            serving = fits,
            "the open-file limit leaves room for fewer connections than limits.max_connections; \
             serving that many (raise the hard limit with ulimit -Hn)"
        );
        return fits;
    }
    max_connections
}

/// Registers for SIGINT and SIGTERM now (so a signal sent right after the
/// broker says it is listening is not missed) and resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            tracing::info!("shutdown signal received");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received");
        })
    }
}
