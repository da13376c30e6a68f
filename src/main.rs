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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the "listening on" line.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    raise_file_limit(config.limits.max_connections);

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
        println!("order-broker listening on http://{addr}");
        match server::run(listener, config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("order-broker: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Every connection is a file descriptor: raise the soft limit (often 1024)
/// towards the hard one, so `limits.max_connections` can be reached.
fn raise_file_limit(max_connections: usize) {
    // Room for the journal, snapshots and outgoing callbacks as well.
    let wanted = max_connections as u64 + 1024;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < max_connections as u64 => tracing::warn!(
            open_files = got,
            max_connections,
            "the open-file limit is below limits.max_connections; raise the hard limit (ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
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
