//! Recovery bench (`cargo bench --bench recovery`): how long a broker takes
//! to start with 1,000,000 orders on disk, from a snapshot and from the
//! journal alone. Target: under 2 s from a snapshot.
//!
//! Option (after `--`): `--orders N` (1,000,000).

use std::time::Instant;

use order_broker::config::Fsync;
use order_broker::journal::{self, Journal};
use order_broker::{Broker, Config, OrderId};

fn main() {
    let orders: u64 = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--orders")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.persistence.dir = dir.path().to_path_buf();
    config.persistence.fsync = Fsync::No;
    // One snapshot, written below by hand, not in the background.
    config.persistence.snapshot_every_events = u64::MAX;
    config.persistence.snapshot_every_bytes = u64::MAX;

    // Fill a journaled broker the way the seed API does.
    let broker = Broker::new(&config);
    let journal = Journal::open(&config.persistence, &broker).unwrap();
    let words = ["Order Initiated", "Mixing", "Pouring", "Order Served"];
    let started = Instant::now();
    for id in 0..orders {
        let word = words[(id % 4) as usize];
        broker
            .update_status(OrderId(id), word, Some(&format!("bot-{}", id % 16)))
            .unwrap();
    }
    journal.close();
    let bytes = dir_bytes(dir.path());
    println!(
        "order-broker recovery bench: {orders} orders written in {:.2?} ({:.1} MB of journal)",
        started.elapsed(),
        bytes as f64 / 1e6
    );
    drop(journal);

    let recover = |label: &str| {
        let fresh = Broker::new(&config);
        let started = Instant::now();
        let journal = Journal::open(&config.persistence, &fresh).unwrap();
        let took = started.elapsed();
        assert_eq!(fresh.len() as u64, orders);
        println!(
            "  recovery from {label}: {took:.2?} ({} orders)",
            fresh.len()
        );
        journal.close();
    };
    recover("the journal alone");

    let started = Instant::now();
    let (seq, size) = journal::write_snapshot(&broker, dir.path()).unwrap();
    println!(
        "  snapshot of seq {} written in {:.2?} ({:.1} MB)",
        seq.0,
        started.elapsed(),
        size as f64 / 1e6
    );
    recover("the snapshot");
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}
