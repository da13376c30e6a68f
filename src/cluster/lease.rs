//! The connection, the stream, and the lease: the KV key `leader` in the
//! bucket `<stream>_lease`, whose TTL (the bucket's `max_age`) is
//! `cluster.lease_ms`. The leader renews it every quarter lease by
//! compare-and-set on its revision; the others read it (to know where to
//! forward) and create it when it is gone. A node that created it takes
//! over (`take_over`): it applies the stream to its end and appends a
//! fence expecting exactly that end before it commits anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::stream::{self, Stream};
use tracing::{info, warn};

use super::{Cluster, ClusterError, LeaderInfo, Role, publish};
use crate::config::ClusterConfig;

const LEASE_KEY: &str = "leader";

pub(super) async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("order-broker {}", config.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .connection_timeout(Duration::from_secs(2));
    if !config.creds_file.is_empty() {
        options = options
            .credentials_file(&config.creds_file)
            .await
            .map_err(|e| ClusterError(format!("cluster.creds_file: {e}")))?;
    }
    if !config.user.is_empty() {
        options = options.user_and_password(config.user.clone(), config.password.clone());
    }
    if !config.token.is_empty() {
        options = options.token(config.token.clone());
    }
    if !config.ca_file.is_empty() {
        options = options.add_root_certificates(config.ca_file.clone().into());
    }
    let mut servers = Vec::new();
    for url in &config.nats_urls {
        let server: async_nats::ServerAddr = url
            .parse()
            .map_err(|e| ClusterError(format!("cluster.nats_urls: {url:?}: {e}")))?;
        servers.push(server);
    }
    let urls = config.nats_urls.join(", ");
    options
        .connect(servers)
        .await
        .map_err(|e| ClusterError(format!("cannot connect to NATS at {urls}: {e}")))
}

pub(super) fn subject(config: &ClusterConfig) -> String {
    format!("{}.changes", config.stream)
}

/// The stream, created if missing (retried until JetStream answers: at
/// first start the servers may still be electing their meta leader).
pub(super) async fn stream(js: &Context, config: &ClusterConfig) -> Result<Stream, ClusterError> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![subject(config)],
        num_replicas: config.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    // Until it answers: a node without a quorum of NATS servers stays
    // "starting" (503 on /readyz) rather than exiting.
    let mut said = Instant::now() - Duration::from_secs(10);
    loop {
        match js.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::CreateStreamErrorKind::InvalidStreamName =>
            {
                return Err(ClusterError(format!(
                    "cannot open the JetStream stream {}: {e}",
                    config.stream
                )));
            }
            Err(e) => {
                if said.elapsed() >= Duration::from_secs(5) {
                    said = Instant::now();
                    warn!(error = %e, stream = %config.stream, "cluster: stream not available yet; retrying");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn bucket(js: &Context, config: &ClusterConfig) -> Store {
    let name = format!("{}_lease", config.stream);
    loop {
        if let Ok(store) = js.get_key_value(name.clone()).await {
            return store;
        }
        let created = js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                history: 1,
                max_age: Duration::from_millis(config.lease_ms),
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => return store,
            Err(e) => {
                warn!(error = %e, "cluster: lease bucket not available yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Takes part in the lease for as long as the node runs.
pub(super) async fn run(cluster: Arc<Cluster>, js: Context, stream: Stream) {
    let config = cluster.config.clone();
    let lease = Duration::from_millis(config.lease_ms);
    let store = bucket(&js, &config).await;
    let mut me = LeaderInfo {
        node_id: config.node_id.clone(),
        url: config.advertise_url.trim_end_matches('/').to_string(),
        token: cluster.token.lock().clone(),
    };
    let mut value: bytes::Bytes = serde_json::to_vec(&me).expect("plain JSON").into();
    if let Ok(status) = store.status().await
        && status.max_age() != lease
    {
        // The key's TTL is the bucket's: a lease that lasts longer on the
        // leader than on the server would let two nodes commit.
        tracing::error!(
            bucket_ms = status.max_age().as_millis() as u64,
            lease_ms = config.lease_ms,
            "cluster: the lease bucket was made with another lease_ms; every node must use \
             the bucket's (or delete the bucket <stream>_lease while no node runs); this node \
             only follows"
        );
        return;
    }
    // The stream's end, for the lag and the stall check, on its own task so
    // a slow answer never delays a renewal.
    {
        let (cluster, stream) = (cluster.clone(), stream.clone());
        tokio::spawn(async move {
            loop {
                let mut stream = stream.clone();
                if let Ok(info) = stream.info().await {
                    cluster
                        .stream_seq
                        .fetch_max(info.state.last_sequence, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let mut revision = 0;
    let mut tick = tokio::time::interval(lease / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cluster.role() == Role::Leader && !cluster.deposed.load(Ordering::Acquire) {
            let sent = Instant::now();
            match store.update(LEASE_KEY, value.clone(), revision).await {
                Ok(next) => {
                    revision = next;
                    *cluster.lease_until.lock() = Some(sent + lease);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    cluster.step_down("another node holds the lease");
                }
                Err(e) => {
                    // NATS unreachable or no quorum: the lease runs out
                    // on its own; `may_commit` stops commits before that.
                    let until = *cluster.lease_until.lock();
                    if until.is_none_or(|t| Instant::now() >= t) {
                        warn!(error = %e, "cluster: cannot renew the lease");
                        cluster.step_down("the lease could not be renewed in time");
                    }
                }
            }
            continue;
        }
        if cluster.settling.load(Ordering::Acquire) {
            // The old leadership's last changes are not settled yet (see
            // `publish::settle`): take no part.
            continue;
        }
        match store.entry(LEASE_KEY).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                if let Ok(leader) = serde_json::from_slice::<LeaderInfo>(&entry.value) {
                    *cluster.leader.lock() = Some(leader);
                }
                continue;
            }
            Ok(_) => {}
            Err(_) => continue,
        }
        *cluster.leader.lock() = None;
        // Only a node that could lead at once competes: one still
        // catching up (or stopped by a record it cannot read) would hold
        // the lease without committing.
        if cluster.role() != Role::Follower || cluster.lag() > 0 {
            continue;
        }
        // Each leadership vouches for forwarded requests with a token of
        // its own (`Cluster::forwarded_peer`).
        me.token = super::random_token();
        *cluster.token.lock() = me.token.clone();
        value = serde_json::to_vec(&me).expect("plain JSON").into();
        let sent = Instant::now();
        let Ok(next) = store.create(LEASE_KEY, value.clone()).await else {
            continue;
        };
        revision = next;
        info!(node = %me.node_id, "cluster: took the lease");
        if take_over(&cluster, &js, &stream, sent + lease).await {
            *cluster.leader.lock() = Some(me.clone());
        } else {
            // Give it up (only if it is still this node's); another node
            // (or this one) tries again.
            let _ = store
                .delete_expect_revision(LEASE_KEY, Some(revision))
                .await;
        }
    }
}

/// Becomes the writer: applies the stream to its end, appends a fence
/// that expects exactly that end (any message a deposed leader still
/// sends now expects an older end and is refused), and starts publishing
/// this node's commits. False if it could not within the lease.
async fn take_over(cluster: &Arc<Cluster>, js: &Context, stream: &Stream, until: Instant) -> bool {
    let subject = subject(&cluster.config);
    while Instant::now() < until {
        let mut stream = stream.clone();
        let Ok(info) = stream.info().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let end = info.state.last_sequence;
        let mut applied = cluster.applied.subscribe();
        while cluster.applied_stream.load(Ordering::Acquire) < end && Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(50), applied.changed()).await;
        }
        if cluster.applied_stream.load(Ordering::Acquire) < end {
            break;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(super::follow::KIND_HEADER, "fence");
        headers.insert(super::follow::NODE_HEADER, cluster.config.node_id.as_str());
        let fence = async_nats::jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(bytes::Bytes::new())
            .expected_last_sequence(end);
        let acked = match js.send_publish(subject.clone(), fence).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let at = match acked {
            Ok(ack) => ack.sequence,
            Err(e) => {
                warn!(error = %e, "cluster: the fence was refused; catching up again");
                continue;
            }
        };
        // Everything up to `end` is applied and nothing but the fence came
        // after it: this node's state is the stream's.
        cluster.deposed.store(false, Ordering::Release);
        cluster.acked.send_replace(cluster.broker.last_seq());
        cluster.in_stream(cluster.broker.last_seq());
        cluster.acked_stream.store(at, Ordering::Release);
        *cluster.lease_until.lock() = Some(until);
        publish::start(
            cluster.clone(),
            js.clone(),
            stream.clone(),
            subject.clone(),
            at,
        );
        cluster.set_role(Role::Leader);
        cluster
            .counters
            .lease_changes
            .fetch_add(1, Ordering::Relaxed);
        cluster.leadership(true);
        info!(
            fence = at,
            seq = cluster.broker.last_seq().0,
            "cluster: leading"
        );
        return true;
    }
    false
}
