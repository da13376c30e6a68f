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
        while let Some(message) = messages.next().await {
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
            if at <= cluster.applied_stream.load(Ordering::Acquire) {
                continue;
            }
            let fence = message
                .headers
                .as_ref()
                .and_then(|h| h.get(KIND_HEADER))
                .is_some_and(|k| k.as_str() == "fence");
            if !fence {
                match Record::decode(&message.payload) {
                    Ok(record) => {
                        let last = cluster.broker.apply_replicated(record);
                        cluster.applied.send_replace(last);
                    }
                    Err(e) => {
                        // Nothing after it can be applied in order: this
                        // node stops following (and is not ready).
                        error!(stream_seq = at, error = %e,
                            "cluster: a stream message does not decode; this node stops following");
                        cluster.set_role(super::Role::Starting);
                        return;
                    }
                }
            }
            cluster.applied_stream.store(at, Ordering::Release);
            cluster.stream_seq.fetch_max(at, Ordering::AcqRel);
            cluster.applied.send_modify(|_| {});
        }
    }
}
