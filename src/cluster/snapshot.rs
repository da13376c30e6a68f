//! Fast start: the leader stores a snapshot of the whole state in the
//! JetStream object store `<stream>_snapshots` (object `latest`) every
//! `cluster.snapshot_every_changes` changes, and purges the stream below the
//! snapshot before it, so the stream holds the tail of two snapshots at
//! most. A node that starts loads the newest snapshot and follows the
//! stream from the position it names.
//!
//! A snapshot is `Broker::dump`'s consistent cut at some seq S, one record
//! per line (the journal's JSON records), between a `Snapshot` record and
//! an `End` record that counts them. Its metadata `stream_seq` is a
//! position P such that every stream message before P is in the snapshot:
//! P is one past the newest message JetStream had acknowledged before the
//! dump began (all of them are at or below S). Messages from P on may be in
//! it too; they carry seqs at or below S and are skipped when applied.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream::Stream;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::{Cluster, ClusterError};
use crate::journal::record::Record;
use crate::model::Seq;

const OBJECT: &str = "latest";
const STREAM_SEQ: &str = "stream_seq";
/// The stream's identity (its creation time, the event ids' epoch): a
/// snapshot of a stream since replaced is not loaded.
const CREATED: &str = "stream_created";

pub(super) async fn store(js: &Context, cluster: &Cluster) -> ObjectStore {
    let bucket = format!("{}_snapshots", cluster.config.stream);
    loop {
        if let Ok(store) = js.get_object_store(&bucket).await {
            return store;
        }
        let created = js
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                num_replicas: cluster.config.replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => return store,
            Err(e) => {
                warn!(error = %e, "cluster: snapshot store not available yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The newest snapshot's stream position (0: there is none, or it is of
/// another stream by that name, created at another time); Err when the
/// store does not answer.
async fn position(store: &ObjectStore, created: &str) -> Result<u64, String> {
    use async_nats::jetstream::object_store::InfoErrorKind;
    match store.info(OBJECT).await {
        Ok(info)
            if !info.deleted && info.metadata.get(CREATED).map(String::as_str) == Some(created) =>
        {
            Ok(info
                .metadata
                .get(STREAM_SEQ)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0))
        }
        Ok(_) => Ok(0),
        Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Loads the newest snapshot into the (empty) broker, if the stream needs
/// it or it saves work; returns the stream position to follow from (1:
/// the stream's start).
pub(super) async fn load(
    cluster: &Cluster,
    store: &ObjectStore,
    first: u64,
) -> Result<u64, ClusterError> {
    loop {
        match try_load(cluster, store, first).await {
            Ok(at) => return Ok(at),
            Err(Load::Fatal(e)) => return Err(e),
            Err(Load::Again(e)) => {
                warn!(error = %e, "cluster: cannot load the snapshot yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

enum Load {
    Fatal(ClusterError),
    /// The store did not answer, or the snapshot changed while it was read.
    Again(String),
}

async fn try_load(cluster: &Cluster, store: &ObjectStore, first: u64) -> Result<u64, Load> {
    let created = &cluster.broker.epoch().to_string();
    let at = position(store, created).await.map_err(Load::Again)?;
    if at <= 1 {
        if first > 1 {
            return Err(Load::Fatal(ClusterError(format!(
                "the stream starts at {first} (older messages were purged) and there is no \
                 snapshot to start from"
            ))));
        }
        return Ok(1);
    }
    let mut object = store
        .get(OBJECT)
        .await
        .map_err(|e| Load::Again(e.to_string()))?;
    // The position of the object actually read (a newer one may have
    // replaced the one asked about).
    let at = object
        .info()
        .metadata
        .get(STREAM_SEQ)
        .and_then(|p| p.parse().ok())
        .unwrap_or(at);
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Load::Again(e.to_string()))?;
    // Checked before anything is restored, so a retry starts from empty.
    check(&bytes).map_err(Load::Again)?;
    let broker = cluster.broker.clone();
    let size = bytes.len();
    let seq = tokio::task::spawn_blocking(move || restore(&broker, &bytes))
        .await
        .map_err(|e| Load::Fatal(ClusterError(format!("loading the snapshot failed: {e}"))))?
        .map_err(Load::Fatal)?;
    info!(
        seq = seq.0,
        stream_seq = at,
        bytes = size,
        "cluster: loaded the snapshot"
    );
    Ok(at)
}

/// The snapshot decodes whole: a snapshot record first, an end record
/// that counts what came between.
fn check(bytes: &[u8]) -> Result<(), String> {
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    match lines.next().map(Record::decode) {
        Some(Ok(Record::Snapshot { .. })) => {}
        _ => return Err("it does not begin with a snapshot record".into()),
    }
    let mut records = 0;
    for line in lines {
        match Record::decode(line).map_err(|e| e.to_string())? {
            Record::End { records: counted } if counted == records => return Ok(()),
            Record::End { records: counted } => {
                return Err(format!(
                    "it holds {records} records, its end says {counted}"
                ));
            }
            _ => records += 1,
        }
    }
    Err("it has no end record (cut short)".into())
}

fn restore(broker: &crate::broker::Broker, bytes: &[u8]) -> Result<Seq, ClusterError> {
    let bad = |why: String| ClusterError(format!("the cluster's snapshot is damaged: {why}"));
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let first = lines.next().ok_or_else(|| bad("it is empty".into()))?;
    let seq = match Record::decode(first) {
        Ok(record @ Record::Snapshot { seq, .. }) => {
            broker.restore(record);
            seq
        }
        _ => return Err(bad("it does not begin with a snapshot record".into())),
    };
    let mut records = 0;
    for line in lines {
        match Record::decode(line).map_err(|e| bad(e.to_string()))? {
            Record::End { records: counted } if counted == records => {
                broker.finish_restore(seq);
                return Ok(seq);
            }
            Record::End { records: counted } => {
                return Err(bad(format!(
                    "it holds {records} records, its end says {counted}"
                )));
            }
            record => {
                broker.restore(record);
                records += 1;
            }
        }
    }
    Err(bad("it has no end record (cut short)".into()))
}

/// The leader's snapshots, for as long as the node runs: one whenever the
/// stream grew by `cluster.snapshot_every_changes` messages past the newest
/// snapshot (whoever led when it was taken).
pub(super) async fn run(cluster: Arc<Cluster>, store: ObjectStore, stream: Stream) {
    let every = cluster.config.snapshot_every_changes;
    let created = cluster.broker.epoch().to_string();
    let mut newest = position(&store, &created).await.unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !cluster.may_commit() {
            continue;
        }
        let acked = cluster.acked_stream.load(Ordering::Acquire);
        if acked.saturating_sub(newest.max(1)) < every {
            continue;
        }
        newest = position(&store, &created).await.unwrap_or(0).max(newest);
        if acked.saturating_sub(newest.max(1)) < every {
            continue;
        }
        match take(&cluster, &store, &stream).await {
            Ok(at) => newest = at,
            Err(e) => warn!(error = %e, "cluster: snapshot failed; the stream is kept whole"),
        }
    }
}

/// Stores a snapshot; returns its stream position. The cut's changes are
/// all acknowledged by this leadership before it is stored (a cut may end
/// in changes still in flight, which a deposed leader never gets into the
/// stream), and a snapshot older than the stored one is not stored.
async fn take(cluster: &Cluster, store: &ObjectStore, stream: &Stream) -> Result<u64, String> {
    let created = &cluster.broker.epoch().to_string();
    let before = position(store, created).await?;
    let at = cluster.acked_stream.load(Ordering::Acquire) + 1;
    let broker = cluster.broker.clone();
    let (bytes, seq) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let seq = broker.dump(|record| {
            serde_json::to_writer(&mut out, record).map_err(std::io::Error::other)?;
            out.push(b'\n');
            Ok(())
        })?;
        Ok::<_, std::io::Error>((out, seq))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let wait = Duration::from_millis(cluster.config.lease_ms);
    if !matches!(
        tokio::time::timeout(wait, cluster.durable(seq)).await,
        Ok(Ok(()))
    ) {
        return Err(format!(
            "the cut's changes (to seq {}) were not all acknowledged",
            seq.0
        ));
    }
    if !cluster.may_commit() {
        return Err("the leadership ended during the snapshot".into());
    }
    if position(store, created).await? >= at {
        return Err("a newer snapshot is stored already".into());
    }
    let size = bytes.len();
    let meta = ObjectMetadata {
        name: OBJECT.into(),
        description: Some(format!("order-broker state at seq {}", seq.0)),
        metadata: [
            (STREAM_SEQ.to_string(), at.to_string()),
            (CREATED.to_string(), created.clone()),
            ("seq".to_string(), seq.0.to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    store
        .put(meta, &mut bytes.as_slice())
        .await
        .map_err(|e| e.to_string())?;
    // The stream keeps what lies after the snapshot before this one, so a
    // node a little behind still finds its next message.
    if before > 1 {
        stream
            .purge()
            .sequence(before.min(at))
            .await
            .map_err(|e| format!("purge: {e}"))?;
    }
    info!(
        seq = seq.0,
        stream_seq = at,
        bytes = size,
        purged_below = before,
        "cluster: snapshot stored"
    );
    Ok(at)
}
