//! The leader's group commit to the stream. The sequencer queues each
//! committed change (an atomic change as one group) under its lock, in seq
//! order; a thread encodes them as the journal's records and hands them to
//! a task that publishes what is there as one batch, pipelined (every
//! message sent before the first acknowledgement is awaited), each
//! message expecting the stream position of the one before it; then it
//! moves the `acked` watermark requests wait on. A publish that fails is
//! read back from the stream, so a NATS server's death costs a pause, not
//! the leadership; a refusal (another node's fence) or a lease that ran out
//! ends the leadership (`Cluster::step_down`), and what was left is settled.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::Stream;
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
pub(super) fn start(
    cluster: Arc<Cluster>,
    js: Context,
    stream: Stream,
    subject: String,
    fence: u64,
) {
    let (changes, queued) = crossbeam_channel::unbounded::<Msg>();
    // Nothing rings: the encoding thread blocks on the queue itself.
    let (bell, _) = crossbeam_channel::bounded(1);
    let (encoded_tx, encoded_rx) = mpsc::unbounded_channel::<(Seq, bytes::Bytes)>();
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
        stream,
        subject,
        fence,
        encoded_rx,
    ));
    cluster.broker.set_replication(Queue::new(changes, bell));
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

/// Publishes each batch of encoded changes pipelined (every message sent
/// before the first acknowledgement is awaited), then takes the
/// acknowledgements in order. When one fails (a NATS server died, the
/// stream is electing a leader), the leader does not know whether the
/// stream stored it: it reads the stream at the positions it expected
/// (`read_back`) and goes on from what is there, publishing again what is
/// not; a message there that is not its own means another node leads.
/// Once the leadership ended, it settles what is left (`settle`).
async fn send(
    cluster: Arc<Cluster>,
    js: Context,
    stream: Stream,
    subject: String,
    mut last: u64,
    mut encoded: mpsc::UnboundedReceiver<(Seq, bytes::Bytes)>,
) {
    let mut batch: Vec<(Seq, bytes::Bytes)> = Vec::new();
    let give_up = std::time::Duration::from_millis(cluster.config.lease_ms * 2);
    let mut failing_since = None;
    let mut backoff = std::time::Duration::from_millis(20);
    loop {
        if batch.is_empty() {
            match encoded.recv().await {
                Some(first) => batch.push(first),
                None => return settle(&cluster, &stream, last, batch).await,
            }
        }
        while batch.len() < BATCH {
            match encoded.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if cluster.deposed.load(Ordering::Acquire) {
            // The queue is detached: what is still encoded comes, then none.
            while let Some(more) = encoded.recv().await {
                batch.push(more);
            }
            return settle(&cluster, &stream, last, batch).await;
        }
        let mut stored = publish(&js, &subject, last, &batch).await;
        if stored < batch.len() {
            cluster
                .counters
                .publish_failures
                .fetch_add(1, Ordering::Relaxed);
            // A change the stream keeps refusing (too large for the
            // servers' max_payload, storage full): give the leadership up
            // rather than hold every write.
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > give_up {
                warn!(
                    seq = batch[stored].0.0,
                    "cluster: the stream does not take this change"
                );
                cluster.step_down("a change could not be stored in the stream");
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
            if !cluster.may_commit() {
                cluster.step_down("the lease ran out while a change was being published");
                continue;
            }
            match read_back(&stream, last, &batch, stored).await {
                ReadBack::Stored(n) => stored = n,
                ReadBack::Foreign => {
                    cluster.step_down("another node wrote where this leader's change was to go");
                    continue;
                }
                ReadBack::Unreadable(e) => {
                    warn!(error = %e, "cluster: cannot read the stream back yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        if stored == batch.len() {
            failing_since = None;
            backoff = std::time::Duration::from_millis(20);
        }
        if stored > 0 {
            last += stored as u64;
            let (seq, _) = batch[stored - 1];
            cluster.stream_seq.fetch_max(last, Ordering::AcqRel);
            cluster.acked_stream.store(last, Ordering::Release);
            cluster.acked.send_replace(seq);
            cluster.in_stream(seq);
            batch.drain(..stored);
        }
    }
}

/// After the leadership ended with changes not known to be in the stream
/// (answered to nobody yet): reads the stream until it can tell. All of
/// them there: this node's state is the stream's, it follows on. Any
/// missing or another node's message in their place: its state is not
/// the stream's; it starts again in place and rebuilds from the stream.
async fn settle(cluster: &Cluster, stream: &Stream, last: u64, batch: Vec<(Seq, bytes::Bytes)>) {
    loop {
        match read_back(stream, last, &batch, 0).await {
            ReadBack::Stored(n) if n == batch.len() => {
                if let Some((seq, _)) = batch.last() {
                    cluster.acked.send_replace(*seq);
                    cluster.in_stream(*seq);
                    tracing::info!(
                        changes = n,
                        "cluster: every change of the ended leadership is in the stream; following"
                    );
                }
                cluster.settling.store(false, Ordering::Release);
                return;
            }
            ReadBack::Stored(_) | ReadBack::Foreign => break,
            ReadBack::Unreadable(e) => {
                warn!(error = %e, "cluster: cannot read the stream back yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    warn!(
        "cluster: this node holds changes the stream does not; \
         starting again to rebuild its state from the stream"
    );
    super::restart_in_place();
}

enum ReadBack {
    /// The stream holds this many of the batch, in order, after `last`.
    Stored(usize),
    /// Another node's message is where one of the batch was to go.
    Foreign,
    Unreadable(String),
}

/// How many of `batch` (at least `known`) the stream holds right after
/// `last`, read back from the stream.
async fn read_back(
    stream: &Stream,
    last: u64,
    batch: &[(Seq, bytes::Bytes)],
    known: usize,
) -> ReadBack {
    use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
    let mut stored = known;
    while let Some((_, ours)) = batch.get(stored) {
        match stream.get_raw_message(last + 1 + stored as u64).await {
            Ok(message) if message.payload == *ours => stored += 1,
            Ok(_) => return ReadBack::Foreign,
            Err(e) if matches!(e.kind(), Kind::NoMessageFound) => break,
            Err(e) => return ReadBack::Unreadable(e.to_string()),
        }
    }
    ReadBack::Stored(stored)
}

/// Sends `batch` after stream position `last`, each message expecting the
/// one before; how many of them JetStream acknowledged, in order.
async fn publish(js: &Context, subject: &str, last: u64, batch: &[(Seq, bytes::Bytes)]) -> usize {
    let mut acks = Vec::with_capacity(batch.len());
    for (i, (_, payload)) in batch.iter().enumerate() {
        let message = PublishMessage::build()
            .payload(payload.clone())
            .expected_last_sequence(last + i as u64);
        match js.send_publish(subject.to_string(), message).await {
            Ok(ack) => acks.push(ack),
            Err(_) => break,
        }
    }
    let mut stored = 0;
    for ack in acks {
        if ack.await.is_err() {
            break;
        }
        stored += 1;
    }
    stored
}
