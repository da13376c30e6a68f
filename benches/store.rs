//! Criterion benches of the store, by scenario: one writer (uncontended),
//! several threads writing the same few orders (contended), and view reads.
//! Fixtures are built outside the measured closures.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use order_broker::{Broker, Config, OrderId, Stage};

const STATUSES: [&str; 3] = ["Order Initiated", "Mixing", "Order Served"];

fn broker_with(orders: u64, status: &str) -> Broker {
    let broker = Broker::new(&Config::default());
    for id in 0..orders {
        broker
            .update_status(OrderId(id), status, Some("bot-1"))
            .unwrap();
    }
    broker
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    let broker = broker_with(10_000, "Mixing");
    let mut n = 0u64;
    group.bench_function("uncontended/10k orders", |b| {
        b.iter(|| {
            n += 1;
            let status = STATUSES[(n % 3) as usize];
            black_box(
                broker
                    .update_status(OrderId(n % 10_000), status, Some("bot-2"))
                    .unwrap(),
            );
        })
    });

    // Every thread hammers the same 4 orders: the worst case for the order
    // locks and the sequencer. Reported per update, summed over threads.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let broker = broker_with(4, "Mixing");
    group.bench_function(format!("contended/{threads} threads on 4 orders"), |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(threads as u64);
            let barrier = Barrier::new(threads);
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (broker, barrier) = (&broker, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        for n in 0..per_thread {
                            let status = STATUSES[((n + t as u64) % 3) as usize];
                            black_box(broker.update_status(OrderId(n % 4), status, None).unwrap());
                        }
                    });
                }
            });
            start.elapsed().div_f64(threads as f64)
        })
    });
    group.finish();
}

fn views(c: &mut Criterion) {
    let mut group = c.benchmark_group("view");
    let broker = broker_with(1_000, "Mixing");
    for id in 1_000..11_000 {
        broker
            .update_status(OrderId(id), "Order Served", None)
            .unwrap();
    }
    group.bench_function("in_progress orders/1k of 11k", |b| {
        b.iter(|| black_box(broker.stage_orders(Stage::InProgress)))
    });
    group.bench_function("completed ids/10k of 11k", |b| {
        b.iter(|| black_box(broker.stage_ids(Stage::Completed)))
    });
    group.bench_function("get one order", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(broker.view(OrderId(n % 11_000)))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = update, views
}
criterion_main!(benches);
