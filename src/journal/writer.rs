//! The writer thread: takes committed events from the sequencer's channel,
//! writes them in batches (group commit, one `write` each, every frame
//! checked to read back), fsyncs by the policy, publishes how far the file
//! got, keeps the archive of evicted orders, and starts snapshots.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::watch;
use tracing::{error, info};

use super::record::{ARCHIVE_MAGIC, Record};
use super::*;
use crate::broker::Broker;
use crate::config::Fsync;
use crate::feed::Event;
use crate::model::{Millis, Seq};

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) broker: Broker,
    pub(super) dir: PathBuf,
    pub(super) fsync: Fsync,
    /// The newest segment, written unbuffered: each batch is one `write`.
    pub(super) file: File,
    /// Where evicted orders' final states go (`archive-<seq>.log`), once
    /// there is one.
    pub(super) archive: Option<File>,
    pub(super) buf: Vec<u8>,
    /// Newest seq written to `file`.
    pub(super) written: Seq,
    /// Written since the last fsync.
    pub(super) dirty: bool,
    pub(super) synced_at: Instant,
    pub(super) durable: watch::Sender<Durable>,
    pub(super) stats: Arc<Stats>,
    pub(super) every_events: u64,
    pub(super) every_bytes: u64,
    pub(super) since_events: u64,
    pub(super) since_bytes: u64,
    pub(super) snapshotting: Arc<AtomicBool>,
    /// The snapshot thread last started; joined before the writer stops.
    pub(super) snapshot: Option<JoinHandle<()>>,
    /// A write or fsync failed: nothing more is written.
    pub(super) failed: bool,
    /// Held (locked) while the writer runs.
    pub(super) _lock: File,
}

/// What the writer takes from the channel: one event, or a group that is
/// one frame.
enum Unit {
    One(Event),
    Group(Vec<Event>),
}

impl Unit {
    fn last_seq(&self) -> Seq {
        match self {
            Unit::One(event) => event.seq,
            Unit::Group(events) => events.last().map_or(Seq(0), |e| e.seq),
        }
    }

    fn events(&self) -> usize {
        match self {
            Unit::One(_) => 1,
            Unit::Group(events) => events.len(),
        }
    }

    fn record(&self, symbols: &crate::symbols::SymbolsReader<'_>) -> Record {
        match self {
            Unit::One(event) => Record::of(event, symbols),
            Unit::Group(events) => Record::Group {
                records: events.iter().map(|e| Record::of(e, symbols)).collect(),
            },
        }
    }
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Unit> = Vec::with_capacity(MAX_BATCH);
        let mut flushes: Vec<Sender<bool>> = Vec::new();
        loop {
            let wait = match self.fsync {
                Fsync::Everysec if self.dirty => {
                    Duration::from_secs(1).saturating_sub(self.synced_at.elapsed())
                }
                _ => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.sync();
                    return;
                }
            };
            // Group commit: everything queued behind the first message.
            let mut stop = take(first, &mut batch, &mut flushes);
            while !stop && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => stop = take(msg, &mut batch, &mut flushes),
                    Err(_) => break,
                }
            }
            self.write(&batch);
            batch.clear();
            let due = match self.fsync {
                Fsync::Always => true,
                Fsync::Everysec => self.synced_at.elapsed() >= Duration::from_secs(1),
                Fsync::No => false,
            };
            if due || stop || !flushes.is_empty() {
                self.sync();
            } else {
                // `everysec` and `no`: what is written may be acknowledged
                // (a crash of the process cannot lose it any more).
                self.publish(false);
            }
            for reply in flushes.drain(..) {
                let _ = reply.send(!self.failed);
            }
            if stop {
                // A snapshot being written completes first, so the files
                // are settled when the broker exits.
                if let Some(snapshot) = self.snapshot.take() {
                    let _ = snapshot.join();
                }
                return;
            }
            self.maybe_snapshot();
        }
    }

    /// Encodes the batch (one frame per unit), checks that every frame
    /// decodes back to its record, and writes them with one `write`. A record
    /// that would not read back is never written: the frames before it are,
    /// then the journal fails (a frame recovery cannot read would stop every
    /// later start).
    fn write(&mut self, batch: &[Unit]) {
        if batch.is_empty() || self.failed {
            return;
        }
        self.buf.clear();
        // Resolve texts in chunks, so a writer interning a new word never
        // waits long for the symbol table.
        let mut evicted = Vec::new();
        let mut good = 0;
        let mut unreadable = None;
        'chunks: for chunk in batch.chunks(256) {
            // The events were read from the feed long ago; a sweep waits for
            // `written_seq` to pass them before it frees a word (the pin
            // only makes the reader's rule visible here).
            let _pin = self.broker.pin();
            let symbols = self.broker.symbols();
            for unit in chunk {
                let record = unit.record(&symbols);
                let start = self.buf.len();
                record.write_frame(&mut self.buf);
                #[cfg(test)]
                if unit.last_seq().0 == tests::GARBLE_SEQ.load(Ordering::Relaxed) {
                    // An encoder bug, for the test: the frame's JSON is cut short.
                    let last = self.buf.len() - 1;
                    self.buf[last] = b' ';
                }
                if let Err(why) = reads_back(&record, &self.buf[start + record::FRAME_HEADER..]) {
                    self.buf.truncate(start);
                    unreadable = Some((unit.last_seq(), why));
                    break 'chunks;
                }
                for r in record.changes() {
                    if matches!(
                        r,
                        Record::OrderRemoved {
                            evicted: Some(_),
                            ..
                        }
                    ) {
                        r.write_frame(&mut evicted);
                    }
                }
                good += 1;
            }
        }
        let batch = &batch[..good];
        if !batch.is_empty() {
            if let Err(e) = self.file.write_all(&self.buf) {
                self.fail("cannot write the journal", e);
                return;
            }
            if !evicted.is_empty() {
                let first = Seq(self.written.0 + 1);
                if let Err(e) = self.archive(first, &evicted) {
                    self.fail("cannot write the archive of evicted orders", e);
                    return;
                }
            }
            let bytes = self.buf.len() as u64;
            let events: usize = batch.iter().map(Unit::events).sum();
            self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.stats
                .records
                .fetch_add(events as u64, Ordering::Relaxed);
            self.since_events += events as u64;
            self.since_bytes += bytes;
            self.written = batch.last().expect("not empty").last_seq();
            self.stats
                .written_seq
                .store(self.written.0, Ordering::Release);
            self.dirty = true;
        }
        if self.buf.capacity() > 1 << 22 {
            self.buf = Vec::with_capacity(1 << 16);
        }
        if let Some((seq, why)) = unreadable {
            error!(
                seq = seq.0,
                "the journal record of the change with seq {} would not read back ({why}); \
                 it was not written",
                seq.0
            );
            self.fail(
                "refusing to journal a record that cannot be read back",
                io::Error::new(io::ErrorKind::InvalidData, why),
            );
        }
    }

    /// Tells waiting requests how far the file got (and how far it is
    /// fsynced, when `synced`).
    fn publish(&mut self, synced: bool) {
        let written = self.written;
        self.durable.send_if_modified(|d| {
            let before = *d;
            d.written = written;
            if synced {
                d.synced = written;
            }
            *d != before
        });
    }

    /// Appends evicted orders' final records to this run's archive file,
    /// created at the first eviction.
    fn archive(&mut self, first: Seq, frames: &[u8]) -> io::Result<()> {
        if self.archive.is_none() {
            let path = self.dir.join(format!("archive-{:020}.log", first.0));
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            if file.metadata()?.len() == 0 {
                file.write_all(ARCHIVE_MAGIC)?;
            }
            sync_dir(&self.dir)?;
            self.archive = Some(file);
        }
        self.archive
            .as_mut()
            .expect("opened above")
            .write_all(frames)
    }

    fn sync(&mut self) {
        if self.failed {
            return;
        }
        if !self.dirty {
            // Nothing new since the last fsync; what was written is synced.
            self.publish(true);
            return;
        }
        let started = Instant::now();
        let archived = self.archive.as_ref().map_or(Ok(()), File::sync_data);
        if let Err(e) = archived.and_then(|()| self.file.sync_data()) {
            self.fail("cannot fsync the journal", e);
            return;
        }
        self.stats.fsynced(started.elapsed());
        self.dirty = false;
        self.synced_at = Instant::now();
        self.stats
            .durable_seq
            .store(self.written.0, Ordering::Relaxed);
        self.publish(true);
    }

    fn fail(&mut self, what: &str, e: io::Error) {
        error!(error = %e, "{what}: changes after seq {} are not durable; \
               writes now fail until the broker is restarted", self.stats.durable_seq.load(Ordering::Relaxed));
        self.failed = true;
        self.stats.failed.store(true, Ordering::Relaxed);
        self.durable.send_modify(|d| d.failed = true);
    }

    /// Past the configured events or bytes, starts a new segment and writes
    /// a snapshot in the background (unless one is still being written).
    fn maybe_snapshot(&mut self) {
        let due = self.since_events >= self.every_events || self.since_bytes >= self.every_bytes;
        if !due || self.failed || self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        // The old segment is complete and on disk before the new one gets a
        // record, so only the newest segment can ever have a torn tail.
        self.sync();
        match new_segment(&self.dir, Seq(self.written.0 + 1)) {
            Ok(file) => self.file = file,
            Err(e) => {
                self.snapshotting.store(false, Ordering::Release);
                error!(error = %e, "cannot start a new journal segment; the current one grows on");
                return;
            }
        }
        self.since_events = 0;
        self.since_bytes = 0;
        let broker = self.broker.clone();
        let dir = self.dir.clone();
        let stats = self.stats.clone();
        let snapshotting = self.snapshotting.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                match write_snapshot(&broker, &dir) {
                    Ok((seq, bytes)) => {
                        let took = started.elapsed();
                        stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        stats.last_snapshot_seq.store(seq.0, Ordering::Relaxed);
                        stats
                            .last_snapshot_ms
                            .store(Millis::now().0, Ordering::Relaxed);
                        stats
                            .last_snapshot_micros
                            .store(took.as_micros() as u64, Ordering::Relaxed);
                        stats.last_snapshot_bytes.store(bytes, Ordering::Relaxed);
                        info!(
                            seq = seq.0,
                            bytes,
                            millis = took.as_millis() as u64,
                            "snapshot written"
                        );
                    }
                    Err(e) => error!(error = %e, "snapshot failed; the journal is kept"),
                }
                snapshotting.store(false, Ordering::Release);
            });
        match spawned {
            // The previous one is done (the flag was clear): join it.
            Ok(thread) => {
                if let Some(done) = self.snapshot.replace(thread) {
                    let _ = done.join();
                }
            }
            Err(e) => {
                self.snapshotting.store(false, Ordering::Release);
                error!(error = %e, "cannot start the snapshot thread");
            }
        }
    }
}

/// Whether a frame's payload decodes back to the record it was made from.
fn reads_back(record: &Record, payload: &[u8]) -> Result<(), String> {
    match Record::decode(payload) {
        Ok(decoded) if decoded == *record => Ok(()),
        Ok(_) => Err("it decodes to a different record".into()),
        Err(e) => Err(format!("it does not decode: {e}")),
    }
}

/// Files one message into the batch; true for `Stop`.
fn take(msg: Msg, batch: &mut Vec<Unit>, flushes: &mut Vec<Sender<bool>>) -> bool {
    match msg {
        Msg::Event(event) => batch.push(Unit::One(event)),
        Msg::Group(events) if events.len() == 1 => {
            batch.extend(events.into_iter().map(Unit::One));
        }
        Msg::Group(events) => batch.push(Unit::Group(events)),
        Msg::Flush(reply) => flushes.push(reply),
        Msg::Stop => return true,
    }
    false
}
