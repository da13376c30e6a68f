//! Following the stream: every message, in stream order, applied to this
//! node's state (`Broker::apply_replicated`). The leader follows too: its
//! own changes are skipped (their seqs are applied already), and it sees
//! a takeover's fence.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use tracing::{error, warn};

use super::Cluster;
use crate::journal::record::Record;

/// Header naming what a message is: `fence` (a new leader's first
/// message) or absent (a committed change).
pub(super) const KIND_HEADER: &str = "Order-Broker-Kind";
/// Header naming the node that sent a fence.
pub(super) const NODE_HEADER: &str = "Order-Broker-Node";

/// The first seq a message's record carries.
fn first_seq(record: &Record) -> crate::model::Seq {
    let first = match record {
        Record::Group { records } => records.first().and_then(Record::seq),
        other => other.seq(),
    };
    first.unwrap_or_default()
}

/// How long the consumer may stay quiet while the stream holds more.
const STALL: Duration = Duration::from_secs(1);

pub(super) async fn follow(cluster: Arc<Cluster>, stream: Stream) {
    loop {
        let from = cluster.applied_stream.load(Ordering::Acquire) + 1;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await,
            Err(e) => {
                warn!(error = %e, "cluster: cannot follow the stream; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "cluster: cannot read the stream; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            // A consumer whose server died may go quiet instead of failing:
            // when the stream is known to hold more, follow again.
            let message = match tokio::time::timeout(STALL, messages.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    let applied = cluster.applied_stream.load(Ordering::Acquire);
                    if cluster.stream_seq.load(Ordering::Acquire) > applied {
                        warn!(
                            applied,
                            "cluster: the stream holds more than arrives; following again"
                        );
                        break;
                    }
                    continue;
                }
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "cluster: reading the stream failed; following again");
                    break;
                }
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let at = info.stream_sequence;
            let applied = cluster.applied_stream.load(Ordering::Acquire);
            if at <= applied {
                continue;
            }
            if at != applied + 1 {
                // The stream was purged past what this node applied (it
                // fell more than a snapshot interval behind): only the
                // snapshot has what is missing.
                error!(
                    applied,
                    next = at,
                    "cluster: the stream no longer holds this node's next message; \
                     starting again from the newest snapshot"
                );
                super::restart_in_place();
            }
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            let fence = header(KIND_HEADER).is_some_and(|k| k == "fence");
            let record = if fence {
                None
            } else {
                match Record::decode(&message.payload) {
                    Ok(record) => Some(record),
                    Err(e) => {
                        // Nothing after it can be applied in order: this
                        // node stops following (and is not ready).
                        error!(stream_seq = at, error = %e,
                            "cluster: a stream message does not decode; this node stops following");
                        cluster.set_role(super::Role::Starting);
                        return;
                    }
                }
            };
            if cluster.role() == super::Role::Leader {
                // A leader's own changes are applied already; a fence or a
                // change it did not make is another leader's.
                if fence && header(NODE_HEADER).as_deref() != Some(&cluster.config.node_id) {
                    cluster.step_down("another node fenced the stream");
                }
                if record
                    .as_ref()
                    .is_some_and(|r| first_seq(r) > cluster.broker.last_seq())
                {
                    cluster.step_down("another node appended to the stream");
                }
            }
            // A leadership that ended may hold changes of its own with the
            // seqs the stream's next changes carry: apply nothing until the
            // publisher found out whether they are in the stream (if they
            // are not, the node starts again).
            while cluster.settling.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(record) = record {
                let last = cluster.broker.apply_replicated(record);
                cluster.in_stream(last);
                cluster.applied.send_replace(last);
            }
            cluster.applied_stream.store(at, Ordering::Release);
            cluster.stream_seq.fetch_max(at, Ordering::AcqRel);
            cluster.applied.send_modify(|_| {});
        }
    }
}
