//! Memory bench (`cargo bench --bench memory`): resident memory per order with
//! 1,000,000 orders of the robot bar's shape (short status words, small
//! orderbot ids), measured from /proc/self/statm around the inserts.

use order_broker::{Broker, Config, OrderId};

const ORDERS: u64 = 1_000_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let config = Config::default();
    let before = rss_bytes();
    let broker = Broker::new(&config);
    let statuses = [
        "Order Initiated",
        "Mixing",
        "Shaking",
        "Pouring",
        "Order Served",
    ];
    for id in 0..ORDERS {
        let status = statuses[(id % 5) as usize];
        broker
            .update_status(OrderId(id), status, Some(&format!("{}", id % 8)))
            .unwrap();
    }
    let after = rss_bytes();
    let per_order = (after - before) as f64 / ORDERS as f64;
    println!(
        "{ORDERS} orders: RSS grew {:.1} MiB, {per_order:.1} bytes per order \
         (includes the stage indexes and a {}-event history)",
        (after - before) as f64 / (1 << 20) as f64,
        config.events.history_size
    );
    assert_eq!(broker.len() as u64, ORDERS);
}
