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

    // A writer keeps updating while the snapshot is written: how long does
    // one update wait at worst (the snapshot copies one map shard at a time)?
    let done = std::sync::atomic::AtomicBool::new(false);
    let (seq, size, took, worst, updates) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut worst = std::time::Duration::ZERO;
            let mut n = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                broker
                    .update_status(OrderId(n % orders), "Mixing", None)
                    .unwrap();
                worst = worst.max(t.elapsed());
                n += 1;
            }
            (worst, n)
        });
        let started = Instant::now();
        let (seq, size) = journal::write_snapshot(&broker, dir.path()).unwrap();
        let took = started.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (worst, n) = writer.join().unwrap();
        (seq, size, took, worst, n)
    });
    println!(
        "  snapshot of seq {} written in {took:.2?} ({:.1} MB); meanwhile {updates} updates, the slowest {worst:.2?}",
        seq.0,
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
