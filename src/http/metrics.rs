//! `GET /metrics` in Prometheus' text format, and the counters behind it.
//! Per request: one counter by route and status, one latency histogram
//! bucket by route — fixed arrays of atomics, no lock, no allocation. The
//! gauges (orders by stage, seq, streams, callbacks, connections) are read
//! when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::{App, Body, Route, full};
use crate::journal::{FSYNC_BUCKETS, Stats};
use crate::model::Stage;

/// Status codes counted by name; any other is counted as its class.
const STATUSES: [u16; 17] = [
    200, 201, 204, 400, 401, 403, 404, 405, 409, 412, 413, 415, 422, 500, 503, 0, 1,
];
/// Histogram upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];
/// Routes, plus one slot for paths that match none.
const SLOTS: usize = Route::ALL.len() + 1;

/// Counter sets; each thread writes to its own, so threads do not fight over
/// cache lines. A scrape sums them.
const SHARDS: usize = 8;

struct Shard {
    requests: [[AtomicU64; STATUSES.len()]; SLOTS],
    /// Per route: a count per bucket (cumulated when rendered), +Inf last.
    latency: [[AtomicU64; BUCKETS.len() + 1]; SLOTS],
    latency_sum_micros: [AtomicU64; SLOTS],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_micros: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

pub struct Metrics {
    started: Instant,
    shards: Box<[Shard]>,
    /// Connections open now (the server counts them).
    pub connections: AtomicUsize,
    /// Finished orders evicted from memory since start.
    pub evicted: AtomicU64,
    /// Interned words freed by sweeps since start.
    pub symbols_reclaimed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            connections: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            symbols_reclaimed: AtomicU64::new(0),
        }
    }
}

fn this_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

fn slot(route: Option<Route>) -> usize {
    route.map_or(Route::ALL.len(), |r| r as usize)
}

fn status_slot(status: StatusCode) -> usize {
    let code = status.as_u16();
    STATUSES
        .iter()
        .position(|s| *s == code)
        // Others: 0 stands for any other 4xx, 1 for anything else.
        .unwrap_or(if status.is_client_error() { 15 } else { 16 })
}

impl Metrics {
    pub(crate) fn record(&self, route: Option<Route>, status: StatusCode, took: Duration) {
        let shard = &self.shards[this_shard()];
        let slot = slot(route);
        shard.requests[slot][status_slot(status)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        shard.latency[slot][bucket].fetch_add(1, Ordering::Relaxed);
        shard.latency_sum_micros[slot].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn requests(&self, slot: usize, status: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.requests[slot][status].load(Ordering::Relaxed))
            .sum()
    }

    fn latency(&self, slot: usize, bucket: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.latency[slot][bucket].load(Ordering::Relaxed))
            .sum()
    }

    fn latency_sum(&self, slot: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.latency_sum_micros[slot].load(Ordering::Relaxed))
            .sum()
    }
}

fn route_name(slot: usize) -> &'static str {
    Route::ALL.get(slot).map_or("unmatched", |r| r.name())
}

/// `GET /metrics`.
pub fn render(app: &App) -> Response<Body> {
    let m = &app.metrics;
    let mut out = String::with_capacity(8 * 1024);
    let _ = writeln!(
        out,
        "# HELP order_broker_requests_total HTTP requests answered, by route and status."
    );
    let _ = writeln!(out, "# TYPE order_broker_requests_total counter");
    for slot in 0..SLOTS {
        for (i, code) in STATUSES.iter().enumerate() {
            let n = m.requests(slot, i);
            if n > 0 {
                let status = match code {
                    0 => "4xx".to_string(),
                    1 => "other".to_string(),
                    code => code.to_string(),
                };
                let _ = writeln!(
                    out,
                    "order_broker_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    route_name(slot)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP order_broker_request_duration_seconds Time to answer a request (to the response head)."
    );
    let _ = writeln!(
        out,
        "# TYPE order_broker_request_duration_seconds histogram"
    );
    for slot in 0..SLOTS {
        let counts: Vec<u64> = (0..=BUCKETS.len()).map(|b| m.latency(slot, b)).collect();
        if counts.iter().all(|c| *c == 0) {
            continue;
        }
        let route = route_name(slot);
        let mut cumulative = 0;
        for (i, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "order_broker_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = m.latency_sum(slot) as f64 / 1e6;
        let _ = writeln!(
            out,
            "order_broker_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "order_broker_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}"
        );
    }
    let broker = app.broker();
    let _ = writeln!(out, "# HELP order_broker_orders Live orders by stage.");
    let _ = writeln!(out, "# TYPE order_broker_orders gauge");
    let counts = broker.stage_counts();
    for stage in Stage::ALL {
        let _ = writeln!(
            out,
            "order_broker_orders{{stage=\"{stage}\"}} {}",
            counts[stage.index()]
        );
    }
    let gauges: [(&str, &str, &str, f64); 9] = [
        (
            "order_broker_symbols",
            "gauge",
            "Interned status words and orderbot ids that count against limits.max_symbols.",
            broker.symbol_count() as f64,
        ),
        (
            "order_broker_symbols_reclaimed_total",
            "counter",
            "Interned words freed because no order used them any more.",
            m.symbols_reclaimed.load(Ordering::Relaxed) as f64,
        ),
        (
            "order_broker_evicted_orders_total",
            "counter",
            "Finished orders evicted from memory (limits.max_orders_kept, evict_finished_after_secs).",
            m.evicted.load(Ordering::Relaxed) as f64,
        ),
        (
            // A position, not a count of anything since start: a gauge
            // (promtool's lint wants a counter named `_total`).
            "order_broker_event_seq",
            "gauge",
            "The newest event sequence number.",
            broker.last_seq().0 as f64,
        ),
        (
            "order_broker_event_streams",
            "gauge",
            "Open event streams (SSE).",
            app.open_streams() as f64,
        ),
        (
            "order_broker_cpee_pending_callbacks",
            "gauge",
            "CPEE callbacks not yet delivered.",
            app.cpee.pending().len() as f64,
        ),
        (
            "order_broker_connections",
            "gauge",
            "Open HTTP connections.",
            m.connections.load(Ordering::Relaxed) as f64,
        ),
        (
            "order_broker_products",
            "gauge",
            "Products in the catalog.",
            broker.products().len() as f64,
        ),
        (
            "order_broker_uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
            m.started.elapsed().as_secs_f64(),
        ),
    ];
    for (name, kind, help, value) in gauges {
        metric(&mut out, name, kind, help, value);
    }
    metric(
        &mut out,
        "order_broker_ready",
        "gauge",
        "1 once the state is recovered and the broker serves.",
        f64::from(u8::from(app.ready.load(Ordering::Acquire))),
    );
    if let Some(journal) = app.broker().journal() {
        render_journal(&mut out, &journal.stats);
        metric(
            &mut out,
            "order_broker_journal_queue",
            "gauge",
            "Changes waiting for the journal writer.",
            journal.queued() as f64,
        );
    }
    if let Some(cluster) = app.broker().cluster() {
        render_cluster(&mut out, cluster);
    }
    let mut response = Response::new(full(out));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The cluster's gauges and counters (only with `cluster.nats_urls`).
fn render_cluster(out: &mut String, cluster: &crate::cluster::Cluster) {
    use crate::cluster::Role;
    let role = cluster.role();
    let name = "order_broker_cluster_role";
    let _ = writeln!(
        out,
        "# HELP {name} 1 for this node's role in the cluster.\n# TYPE {name} gauge"
    );
    for (label, r) in [
        ("starting", Role::Starting),
        ("follower", Role::Follower),
        ("leader", Role::Leader),
    ] {
        let _ = writeln!(out, "{name}{{role=\"{label}\"}} {}", u8::from(role == r));
    }
    let status = cluster.status();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let c = &cluster.counters;
    let values: [(&str, &str, &str, f64); 6] = [
        (
            "order_broker_cluster_applied_seq",
            "gauge",
            "The newest stream sequence this node applied.",
            status.applied_seq as f64,
        ),
        (
            "order_broker_cluster_lag",
            "gauge",
            "Stream messages this node has yet to apply (as far as it knows).",
            cluster.lag() as f64,
        ),
        (
            "order_broker_cluster_lease_changes_total",
            "counter",
            "Times this node took or lost the lease.",
            get(&c.lease_changes),
        ),
        (
            "order_broker_cluster_forwarded_total",
            "counter",
            "Writes this node forwarded to the leader.",
            get(&c.forwarded),
        ),
        (
            "order_broker_cluster_publish_failures_total",
            "counter",
            "Changes the stream refused or did not acknowledge (each ends a leadership).",
            get(&c.publish_failures),
        ),
        (
            "order_broker_cluster_leader",
            "gauge",
            "1 while this node may commit (it leads and its lease is current).",
            f64::from(u8::from(cluster.may_commit())),
        ),
    ];
    for (name, kind, help, value) in values {
        metric(out, name, kind, help, value);
    }
}

/// The journal's counters (only in `persistence.mode = "journal"`).
fn render_journal(out: &mut String, stats: &Stats) {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let values: [(&str, &str, &str, f64); 12] = [
        (
            "order_broker_journal_bytes_total",
            "counter",
            "Bytes appended to the journal since start.",
            get(&stats.bytes),
        ),
        (
            "order_broker_journal_records_total",
            "counter",
            "Records appended to the journal since start.",
            get(&stats.records),
        ),
        (
            "order_broker_journal_durable_seq",
            "gauge",
            "The newest event seq known to be fsynced.",
            get(&stats.durable_seq),
        ),
        (
            "order_broker_journal_written_seq",
            "gauge",
            "The newest event seq written to the journal file (not yet fsynced, maybe).",
            get(&stats.written_seq),
        ),
        (
            "order_broker_journal_failed",
            "gauge",
            "1 if the journal could not be written (writes then fail).",
            f64::from(u8::from(stats.failed.load(Ordering::Relaxed))),
        ),
        (
            "order_broker_journal_recovered_records",
            "gauge",
            "Records read at start (snapshot and journal).",
            get(&stats.recovered_records),
        ),
        (
            "order_broker_journal_recovery_seconds",
            "gauge",
            "Time the recovery at start took.",
            get(&stats.recovery_micros) / 1e6,
        ),
        (
            "order_broker_snapshots_total",
            "counter",
            "Snapshots written since start.",
            get(&stats.snapshots),
        ),
        (
            "order_broker_snapshot_last_seq",
            "gauge",
            "The seq the newest snapshot covers.",
            get(&stats.last_snapshot_seq),
        ),
        (
            "order_broker_snapshot_last_timestamp_seconds",
            "gauge",
            "Unix time the last snapshot was complete (0: none since start).",
            get(&stats.last_snapshot_ms) / 1e3,
        ),
        (
            "order_broker_snapshot_last_duration_seconds",
            "gauge",
            "Time the last snapshot took.",
            get(&stats.last_snapshot_micros) / 1e6,
        ),
        (
            "order_broker_snapshot_last_bytes",
            "gauge",
            "Size of the last snapshot.",
            get(&stats.last_snapshot_bytes),
        ),
    ];
    for (name, kind, help, value) in values {
        metric(out, name, kind, help, value);
    }
    let name = "order_broker_journal_fsync_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time one journal fsync took.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (i, count) in stats.fsync_buckets.iter().enumerate() {
        cumulative += count.load(Ordering::Relaxed);
        let le = FSYNC_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", get(&stats.fsync_micros) / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_index_their_own_slot() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(*route as usize, i, "{}", route.name());
        }
    }

    #[test]
    fn statuses_and_buckets_land_where_expected() {
        let m = Metrics::default();
        m.record(
            Some(Route::GetAll),
            StatusCode::OK,
            Duration::from_micros(80),
        );
        m.record(
            Some(Route::GetAll),
            StatusCode::IM_A_TEAPOT,
            Duration::from_secs(9),
        );
        m.record(None, StatusCode::NOT_FOUND, Duration::from_millis(3));
        let all = Route::GetAll as usize;
        assert_eq!(m.requests(all, 0), 1);
        assert_eq!(m.requests(all, 15), 1, "another 4xx");
        assert_eq!(m.latency(all, 0), 1);
        assert_eq!(m.latency(all, BUCKETS.len()), 1, "+Inf");
        assert_eq!(m.requests(Route::ALL.len(), 6), 1, "unmatched 404");
        // Counts from many threads add up.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        m.record(
                            Some(Route::Update),
                            StatusCode::OK,
                            Duration::from_micros(5),
                        );
                    }
                });
            }
        });
        assert_eq!(m.requests(Route::Update as usize, 0), 8000);
    }
}
