//! Several brokers sharing one state through NATS JetStream
//! (`cluster.nats_urls`; see DESIGN, "Scale beyond one machine").
//!
//! - **The stream is the journal** (`publish.rs`): the leader sends each
//!   committed change (an atomic change whole, as the journal writes it) as
//!   one message, pipelined, each fenced by `Nats-Expected-Last-Sequence`;
//!   a change is acknowledged once JetStream stored it on a quorum.
//! - **Every node follows the stream** (`follow.rs`) and applies it with
//!   `Broker::apply_replicated`, so reads, views, the board and `/events`
//!   are served by every node, with the same seqs (event ids) everywhere.
//! - **One writer, fenced** (`lease.rs`): a key in the KV bucket
//!   `<stream>_lease` whose TTL is `cluster.lease_ms`, renewed by
//!   compare-and-set. A node that takes it applies the stream to its end,
//!   appends a fence message expecting exactly that end (so anything a
//!   deposed leader still sends is refused), and only then commits. A
//!   leader that loses the lease, or whose publish is refused, stops
//!   committing; if it holds changes the stream does not, it starts again
//!   in place (`exec`) and rebuilds its state from the stream.
//!   A publish that fails is read back from the stream; a leadership that
//!   ends settles its unacknowledged changes against the stream
//!   (`publish::settle`). A node that does not lead sends its own commits
//!   (there should be none) to a queue that restarts it (`stray_queue`).
//! - **Any node takes any request** (`forward.rs`): a follower forwards
//!   writes to the leader's `advertise_url` and answers once it applied
//!   the change itself (the leader says which seq in `Order-Broker-Seq`).
//! - **Readers see only what is in the stream**: `Broker::visible_seq`
//!   caps the feed at what JetStream acknowledged (leader) or what was
//!   applied (follower), so an event id never names two changes.
//! - **Fast start** (`snapshot.rs`): the leader stores snapshots in the
//!   object store `<stream>_snapshots` and purges the stream below the one
//!   before; a starting node loads the newest and follows from there.
//!
//! Leader-only work (scheduled release, eviction) runs on the leader only;
//! a new leader takes over CPEE's callbacks owed (they are records in the
//! stream) and queues the orders waiting for an orderbot again, and one
//! that steps down lets go of them (`on_leadership`).

mod follow;
mod forward;
mod lease;
mod publish;
mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::journal::JournalFailed;
use crate::model::Seq;

pub use forward::SEQ_HEADER;
/// Set on a forwarded request, so a node that is not the leader any more
/// answers 503 instead of forwarding it again.
pub const FORWARDED_HEADER: &str = "order-broker-forwarded";

/// This node's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Catching up with the stream; serves nothing but probes.
    Starting,
    Follower,
    Leader,
}

/// On a forwarded request: the address of the client the forwarding node
/// served, and the leader's token that vouches for it (see
/// [`Cluster::forwarded_peer`]). Set by the forwarding node only.
pub const CLIENT_HEADER: &str = "order-broker-client";
pub const TOKEN_HEADER: &str = "order-broker-token";
/// On a forwarded request: `1` if the client's request came over https.
pub const HTTPS_HEADER: &str = "order-broker-https";

/// What the forwarding node says of a request's client (see
/// [`Cluster::forwarded_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vouched {
    pub client: Option<std::net::IpAddr>,
    pub https: bool,
}

/// Who leads, as the lease names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LeaderInfo {
    pub node_id: String,
    pub url: String,
    /// Random per process: a request forwarded with it comes from a node
    /// that read the lease (never shown: `GET /cluster` leaves it out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

impl LeaderInfo {
    /// As `GET /cluster` shows it.
    fn shown(&self) -> LeaderInfo {
        LeaderInfo {
            token: String::new(),
            ..self.clone()
        }
    }
}

/// `GET /cluster`'s answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub node_id: String,
    #[schema(value_type = String, example = "leader")]
    pub role: Role,
    #[schema(value_type = Option<Object>)]
    pub leader: Option<LeaderInfo>,
    /// The newest stream sequence applied here.
    pub applied_seq: u64,
    /// The stream's newest sequence, as last seen.
    pub stream_seq: u64,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub lease_changes: AtomicU64,
    pub forwarded: AtomicU64,
    pub publish_failures: AtomicU64,
}

/// The cluster as this node sees it; shared by the tasks and the handlers.
pub struct Cluster {
    config: ClusterConfig,
    /// This node's token in the lease while it leads (see `LeaderInfo`);
    /// a new one for each leadership.
    token: Mutex<String>,
    broker: Broker,
    role: AtomicU8,
    leader: Mutex<Option<LeaderInfo>>,
    /// Until when this node's lease is surely still its own (leader only):
    /// the time its last renewal was sent, plus `lease_ms`.
    lease_until: Mutex<Option<Instant>>,
    /// Newest stream sequence applied here.
    applied_stream: AtomicU64,
    /// The stream's newest sequence as last seen.
    stream_seq: AtomicU64,
    /// Newest broker seq applied here (followers wait on it for the
    /// changes they forwarded).
    applied: watch::Sender<Seq>,
    /// Newest broker seq JetStream acknowledged (the leader's acks).
    acked: watch::Sender<Seq>,
    /// Newest broker seq known to be in the stream (acknowledged or
    /// applied): what readers of the feed may see.
    visible: watch::Sender<Seq>,
    /// The stream position of the newest message JetStream acknowledged to
    /// this node as leader (the fence, then its changes).
    acked_stream: AtomicU64,
    /// This node's leadership ended; its unacknowledged changes fail.
    deposed: AtomicBool,
    /// It ended with changes not known to be in the stream: until the
    /// publisher settled them (`publish::settle`: in the stream, or the
    /// node starts again in place) the node takes no part in the lease.
    settling: AtomicBool,
    pub counters: Counters,
    client: forward::Client,
    /// Run with true each time this node starts to lead, with false when
    /// it stops (the server hands CPEE's callbacks and dispatch over).
    on_leadership: std::sync::OnceLock<Box<dyn Fn(bool) + Send + Sync>>,
}

impl Cluster {
    /// The cluster of `broker`, attached to it (it reports "starting"
    /// until [`join`] returns).
    pub fn new(config: &ClusterConfig, broker: Broker) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            token: Mutex::new(random_token()),
            broker,
            role: AtomicU8::new(Role::Starting as u8),
            leader: Mutex::new(None),
            lease_until: Mutex::new(None),
            applied_stream: AtomicU64::new(0),
            stream_seq: AtomicU64::new(0),
            applied: watch::Sender::new(Seq(0)),
            acked: watch::Sender::new(Seq(0)),
            visible: watch::Sender::new(Seq(0)),
            acked_stream: AtomicU64::new(0),
            deposed: AtomicBool::new(false),
            settling: AtomicBool::new(false),
            counters: Counters::default(),
            // The binary checked the CA file at start (`crate::tls::check`).
            client: forward::client(crate::tls::node_client_config(config).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cluster: TLS for forwarding");
                crate::tls::node_client_config(&ClusterConfig::default())
                    .expect("the system's CA certificates alone")
            })),
            on_leadership: std::sync::OnceLock::new(),
        });
        cluster.broker.attach_cluster(cluster.clone());
        cluster.broker.set_replication(stray_queue());
        cluster
    }

    /// Sets what runs each time this node starts (true) or stops (false)
    /// leading.
    pub fn on_leadership(&self, run: impl Fn(bool) + Send + Sync + 'static) {
        let _ = self.on_leadership.set(Box::new(run));
    }

    fn leadership(&self, leads: bool) {
        if let Some(run) = self.on_leadership.get() {
            run(leads);
        }
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            2 => Role::Leader,
            1 => Role::Follower,
            _ => Role::Starting,
        }
    }

    fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
    }

    /// True while this node may commit: it leads and its lease cannot have
    /// run out (a leader that was paused stops here before it learns that
    /// another node took over).
    pub fn may_commit(&self) -> bool {
        self.role() == Role::Leader
            && !self.deposed.load(Ordering::Acquire)
            && self.lease_until.lock().is_some_and(|t| Instant::now() < t)
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node_id: self.config.node_id.clone(),
            role: self.role(),
            leader: self.leader.lock().as_ref().map(LeaderInfo::shown),
            applied_seq: self.applied_stream.load(Ordering::Acquire),
            stream_seq: self
                .stream_seq
                .load(Ordering::Acquire)
                .max(self.applied_stream.load(Ordering::Acquire)),
        }
    }

    /// The newest broker seq known to be in the stream.
    pub fn visible(&self) -> Seq {
        *self.visible.borrow()
    }

    pub fn visible_watch(&self) -> watch::Receiver<Seq> {
        self.visible.subscribe()
    }

    /// Every change up to `seq` is in the stream.
    fn in_stream(&self, seq: Seq) {
        self.visible.send_if_modified(|v| {
            let moved = seq > *v;
            *v = (*v).max(seq);
            moved
        });
    }

    /// A request another node forwarded to this one while it leads, with
    /// the token of this leadership: the address of the client that node
    /// served and whether it came over https, which the access rules and
    /// `http.require_https` then judge as if the client had called here.
    /// None for any other request.
    pub fn forwarded_peer(&self, headers: &hyper::HeaderMap) -> Option<Vouched> {
        if self.role() != Role::Leader || !headers.contains_key(FORWARDED_HEADER) {
            return None;
        }
        let token = headers.get(TOKEN_HEADER)?.as_bytes();
        if !same_bytes(token, self.token.lock().as_bytes()) {
            return None;
        }
        Some(Vouched {
            client: headers
                .get(CLIENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            https: headers.get(HTTPS_HEADER).is_some_and(|v| v == "1"),
        })
    }

    /// Stream messages the node has yet to apply (as far as it knows).
    pub fn lag(&self) -> u64 {
        self.stream_seq
            .load(Ordering::Acquire)
            .saturating_sub(self.applied_stream.load(Ordering::Acquire))
    }

    /// Waits until JetStream acknowledged every change up to `seq` (the
    /// leader), or fails when this node may not commit (a follower never
    /// commits changes of its own; a deposed leader's are not in the stream).
    pub async fn durable(&self, seq: Seq) -> Result<(), JournalFailed> {
        let mut acked = self.acked.subscribe();
        loop {
            if *acked.borrow_and_update() >= seq {
                return Ok(());
            }
            if self.deposed.load(Ordering::Acquire) || self.role() != Role::Leader {
                return Err(JournalFailed);
            }
            if acked.changed().await.is_err() {
                return Err(JournalFailed);
            }
        }
    }

    /// Waits until this node applied `seq` (a change it forwarded), at
    /// most `wait`; false if it did not get there in time.
    async fn applied(&self, seq: Seq, wait: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let reached = applied.wait_for(|s| *s >= seq);
        matches!(tokio::time::timeout(wait, reached).await, Ok(Ok(_)))
    }

    /// Ends this node's leadership: no more commits, the changes not yet
    /// acknowledged fail (their requests get 503). Whether the stream holds
    /// them anyway the publisher finds out (`publish::settle`); if not, the
    /// node's state is not the stream's and it starts again in place.
    fn step_down(&self, why: &str) {
        if self.deposed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Settling first: the follow loop waits while it is set.
        self.settling.store(true, Ordering::Release);
        let last = self.broker.set_replication(stray_queue());
        let acked = *self.acked.borrow();
        self.set_role(Role::Follower);
        *self.lease_until.lock() = None;
        // Until the lease names the new leader, writes get 503.
        *self.leader.lock() = None;
        self.counters.lease_changes.fetch_add(1, Ordering::Relaxed);
        // Wake the waiters: they fail now.
        self.acked.send_modify(|_| {});
        self.leadership(false);
        warn!(
            why,
            seq = last.0,
            acked = acked.0,
            "cluster: stepping down as leader"
        );
    }
}

/// Compares in time independent of where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 bits from the operating system's secure random source, as hex.
pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a node that does not lead sends its own commits: there should be
/// none (writes are forwarded, leader-only work runs on the leader), but a
/// request or task that passed its check just before the leadership ended
/// can still commit. Such a change is in this node's memory and never in
/// the stream, and the stream's next change will carry its seq: the node
/// starts again in place and rebuilds from the stream.
fn stray_queue() -> crate::journal::Queue {
    let (changes, strays) = crossbeam_channel::unbounded::<crate::journal::Msg>();
    let (bell, _) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("cluster-strays".into())
        .spawn(move || {
            if strays.recv().is_ok() {
                tracing::error!(
                    "cluster: a change was committed here while this node does not lead; \
                     starting again to rebuild its state from the stream"
                );
                restart_in_place();
            }
        })
        .expect("a thread starts");
    crate::journal::Queue::new(changes, bell)
}

/// Replaces this process with a fresh start of the same binary and
/// arguments (same pid): the way a node whose memory is ahead of the stream
/// gets back to the stream's state.
fn restart_in_place() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        std::process::exit(75);
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    tracing::error!(error = %err, "cluster: cannot start again; exiting");
    std::process::exit(75);
}

/// Why the node cannot join the cluster.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Joins the cluster: connects to NATS, makes sure the stream and the lease
/// bucket exist, starts following the stream and taking part in the lease,
/// and returns once this node applied the stream up to where it ended when
/// the node started (then it may serve).
pub async fn join(cluster: Arc<Cluster>) -> Result<(), ClusterError> {
    let nats = lease::connect(&cluster.config).await?;
    // Short request and ack timeouts: while NATS fails over, a leader
    // learns soon that its publishes are lost, and a starting node asks again.
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .ack_timeout(Duration::from_secs(2))
        .build(nats);
    let stream = lease::stream(&js, &cluster.config).await?;
    let info = stream.cached_info().clone();
    // Event ids name the stream: the same change has the same id on
    // every node, and a replaced stream (new creation time) is told apart.
    let created = info.created.unix_timestamp_nanos() / 1_000;
    cluster.broker.set_epoch(created.unsigned_abs() as u64);
    let end = info.state.last_sequence;
    cluster.stream_seq.store(end, Ordering::Release);
    let snapshots = snapshot::store(&js, &cluster).await;
    let from = snapshot::load(&cluster, &snapshots, info.state.first_sequence).await?;
    cluster
        .applied_stream
        .store(from.saturating_sub(1), Ordering::Release);
    cluster.applied.send_replace(cluster.broker.last_seq());
    cluster.in_stream(cluster.broker.last_seq());
    tokio::spawn(follow::follow(cluster.clone(), stream.clone()));
    // Caught up with what was there when we came.
    let mut applied = cluster.applied.subscribe();
    while cluster.applied_stream.load(Ordering::Acquire) < end {
        let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
    }
    info!(applied = end, "cluster: caught up with the stream");
    cluster.set_role(Role::Follower);
    tokio::spawn(snapshot::run(cluster.clone(), snapshots, stream.clone()));
    tokio::spawn(lease::run(cluster.clone(), js, stream));
    Ok(())
}
