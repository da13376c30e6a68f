//! The leader's group commit to the stream. The sequencer queues each
//! committed change (an atomic change as one group) under its lock, in seq
//! order; a thread encodes them as the journal's records and hands them to
//! a task that publishes them one after another without waiting for each
//! acknowledgement (pipelined: many in flight), each expecting the stream
//! sequence the one before it got. A third task takes the acknowledgements
//! in order and moves the `acked` watermark requests wait on. Any refusal
//! (another node appended: the fence of a takeover) or failure ends the
//! leadership (`Cluster::step_down`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::context::{Context, PublishAckFuture};
use async_nats::jetstream::message::PublishMessage;
use tokio::sync::mpsc;
use tracing::warn;

use super::Cluster;
use crate::journal::record::Record;
use crate::journal::{Msg, Queue};
use crate::model::Seq;

/// Changes taken into one hand-off from the encoding thread.
const BATCH: usize = 256;

/// Starts publishing this node's commits after the fence at stream
/// sequence `fence`.
pub(super) fn start(cluster: Arc<Cluster>, js: Context, subject: String, fence: u64) {
    let (changes, queued) = crossbeam_channel::unbounded::<Msg>();
    // Nothing rings: the encoding thread blocks on the queue itself.
    let (bell, _) = crossbeam_channel::bounded(1);
    let (encoded_tx, encoded_rx) = mpsc::unbounded_channel::<(Seq, bytes::Bytes)>();
    let (acks_tx, acks_rx) = mpsc::unbounded_channel::<(Seq, PublishAckFuture)>();
    {
        let broker = cluster.broker.clone();
        std::thread::Builder::new()
            .name("cluster-encode".into())
            .spawn(move || encode(&broker, &queued, &encoded_tx))
            .expect("a thread starts");
    }
    tokio::spawn(send(
        cluster.clone(),
        js,
        subject,
        fence,
        encoded_rx,
        acks_tx,
    ));
    tokio::spawn(acknowledged(cluster.clone(), acks_rx));
    cluster
        .broker
        .set_replication(Some(Queue::new(changes, bell)));
}

/// Encodes what the sequencer queues, as the journal would write it. Ends
/// when the queue is dropped (the leadership ended).
fn encode(
    broker: &crate::broker::Broker,
    queued: &crossbeam_channel::Receiver<Msg>,
    out: &mpsc::UnboundedSender<(Seq, bytes::Bytes)>,
) {
    while let Ok(first) = queued.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queued.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let _pin = broker.pin();
        let symbols = broker.symbols();
        for msg in batch {
            let (seq, record) = match &msg {
                Msg::Event(event) => (event.seq, Record::of(event, &symbols)),
                Msg::Group(events) => (
                    events.last().map_or(Seq(0), |e| e.seq),
                    Record::Group {
                        records: events.iter().map(|e| Record::of(e, &symbols)).collect(),
                    },
                ),
            };
            let bytes = serde_json::to_vec(&record).expect("records encode");
            if out.send((seq, bytes.into())).is_err() {
                return;
            }
        }
    }
}

async fn send(
    cluster: Arc<Cluster>,
    js: Context,
    subject: String,
    mut last: u64,
    mut encoded: mpsc::UnboundedReceiver<(Seq, bytes::Bytes)>,
    acks: mpsc::UnboundedSender<(Seq, PublishAckFuture)>,
) {
    while let Some((seq, payload)) = encoded.recv().await {
        if cluster.deposed.load(Ordering::Acquire) {
            return;
        }
        let message = PublishMessage::build()
            .payload(payload)
            .expected_last_sequence(last);
        match js.send_publish(subject.clone(), message).await {
            Ok(ack) => {
                last += 1;
                if acks.send((seq, ack)).is_err() {
                    return;
                }
            }
            Err(e) => {
                cluster
                    .counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(seq = seq.0, error = %e, "cluster: publishing a change failed");
                cluster.step_down("a change could not be published");
                return;
            }
        }
    }
}

async fn acknowledged(
    cluster: Arc<Cluster>,
    mut acks: mpsc::UnboundedReceiver<(Seq, PublishAckFuture)>,
) {
    while let Some((seq, ack)) = acks.recv().await {
        match ack.await {
            Ok(ack) => {
                cluster.stream_seq.fetch_max(ack.sequence, Ordering::AcqRel);
                cluster.acked_stream.store(ack.sequence, Ordering::Release);
                cluster.acked.send_replace(seq);
                cluster.in_stream(seq);
            }
            Err(e) => {
                cluster
                    .counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(seq = seq.0, error = %e, "cluster: a change was not acknowledged");
                cluster.step_down("a change was not acknowledged by JetStream");
                return;
            }
        }
    }
}
