//! The writer thread: takes committed events from the sequencer's channel,
//! writes them in batches (group commit, one `write` each, every frame
//! checked to read back), publishes how far the file got, hands the fsyncs
//! to the sync thread (`sync.rs`, which runs them while the next batch is
//! written), keeps the archive of evicted orders, and starts snapshots.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use tracing::{error, info};

use super::durable::Progress;
use super::record::{ARCHIVE_MAGIC, Record};
use super::sync::Syncer;
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
    pub(super) file: Arc<File>,
    /// Where evicted orders' final states go (`archive-<seq>.log`), once
    /// there is one.
    pub(super) archive: Option<Arc<File>>,
    pub(super) buf: Vec<u8>,
    /// Newest seq written to `file`.
    pub(super) written: Seq,
    /// The batch being written (kept for its allocation).
    pub(super) batch: Vec<Unit>,
    /// Bytes of `file` in use (where the next batch goes).
    pub(super) position: u64,
    /// The file's length with its preallocated space (None: the file system
    /// cannot preallocate, so each batch extends the file).
    pub(super) allocated: Option<u64>,
    /// Fsyncs what is written (its own thread).
    pub(super) syncer: Syncer,
    pub(super) progress: Arc<Progress>,
    pub(super) stats: Arc<Stats>,
    pub(super) every_events: u64,
    pub(super) every_bytes: u64,
    pub(super) since_events: u64,
    pub(super) since_bytes: u64,
    pub(super) snapshotting: Arc<AtomicBool>,
    /// The snapshot thread last started; joined before the writer stops.
    pub(super) snapshot: Option<JoinHandle<()>>,
    /// A write or fsync failed, or the journal stopped: nothing more is
    /// written.
    pub(super) failed: bool,
    /// Held (locked) while the writer runs.
    /// (let go when the writer stops, so another broker may start on the
    /// directory while this one's `Journal` is still referenced).
    pub(super) lock: Option<File>,
}

/// What the writer takes from the queue: one event, or a group that is
/// one frame.
pub(super) enum Unit {
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

/// The writer thread: writes what no request's thread wrote (see
/// [`Writer::drain`]): changes nobody waits for (background work) within
/// [`POLL_MAX`], at once when the bell rings (a backlog, or a request's
/// thread that stopped after one batch); it alone answers flushes,
/// switches segments and starts snapshots, and stops the journal.
pub(super) fn run(
    core: &Mutex<Writer>,
    queue: &Receiver<Msg>,
    bell: &Receiver<()>,
    control: &Receiver<Control>,
) {
    let mut poll = POLL_MIN;
    let mut again = false;
    loop {
        let command = if again {
            None
        } else {
            crossbeam_channel::select! {
                recv(bell) -> rung => match rung {
                    Ok(()) => None,
                    Err(_) => Some(Control::Stop),
                },
                recv(control) -> command => Some(command.unwrap_or(Control::Stop)),
                default(poll) => None,
            }
        };
        let mut writer = core.lock();
        let mut wrote = false;
        while writer.drain(queue) {
            wrote = true;
        }
        match command {
            None => {}
            Some(Control::Flush(reply)) => {
                let synced = writer.syncer.sync_all();
                let _ = reply.send(synced && !writer.failed);
            }
            Some(Control::Stop) => {
                writer.stop();
                return;
            }
        }
        writer.maybe_snapshot();
        drop(writer);
        // A request's thread that found the lock taken left its change to
        // whoever held it (see `Journal::help`).
        fence(Ordering::SeqCst);
        again = !queue.is_empty();
        // Poll often while changes come without waiters, rarely when idle.
        poll = if wrote {
            POLL_MIN
        } else {
            (poll * 2).min(POLL_MAX)
        };
    }
}

/// How soon the writer thread looks at the queue after it last wrote
/// something, and at most when idle.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(64);

impl Writer {
    /// Writes one batch of what is queued (group commit: everything queued,
    /// up to [`MAX_BATCH`] changes) and publishes how far the file got.
    /// Called with the writer's lock held, by the writer thread or by a
    /// request's thread that waits for its change ([`Journal::durable`]), so
    /// a change is usually written by the thread that waits for it, without
    /// waiting for the writer thread to be woken and scheduled. Only the
    /// lock holder takes from the queue, so the file gets changes in seq
    /// order. True if it wrote anything.
    pub(super) fn drain(&mut self, queue: &Receiver<Msg>) -> bool {
        let mut batch = std::mem::take(&mut self.batch);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Msg::Event(event)) => batch.push(Unit::One(event)),
                Ok(Msg::Group(events)) if events.len() == 1 => {
                    batch.extend(events.into_iter().map(Unit::One));
                }
                Ok(Msg::Group(events)) => batch.push(Unit::Group(events)),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            self.batch = batch;
            return false;
        }
        let before = self.written;
        self.write(&batch);
        batch.clear();
        self.batch = batch;
        if self.written > before {
            // `always`: the sync thread fsyncs it as soon as the fsync
            // running now (if any) is done. `everysec` and `no`: what is
            // written may be acknowledged (a crash of the process cannot
            // lose it any more).
            self.syncer.wrote(self.written, self.fsync == Fsync::Always);
            self.progress.written(self.written);
        }
        true
    }

    /// Fsyncs and seals what is written, stops the sync thread, and waits
    /// for a snapshot being written, so the files are settled when the
    /// broker exits.
    fn stop(&mut self) {
        if self.syncer.sync_all() && !self.failed {
            self.seal();
        }
        self.syncer.stop();
        if let Some(snapshot) = self.snapshot.take() {
            let _ = snapshot.join();
        }
        // Nothing more is written: a change made after this is never
        // acknowledged (its waiter fails).
        self.failed = true;
        self.progress.fail();
        self.lock = None;
    }

    /// Encodes the batch (one frame per unit), checks that every frame
    /// decodes back to its record, and writes them with one `write`. A record
    /// that would not read back is never written: the frames before it are,
    /// then the journal fails (a frame recovery cannot read would stop every
    /// later start).
    fn write(&mut self, batch: &[Unit]) {
        if self.progress.failed() {
            // A write or fsync failed: nothing more is written.
            self.failed = true;
        }
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
            self.make_room(self.buf.len() as u64);
            if let Err(e) = (&*self.file).write_all(&self.buf) {
                self.fail("cannot write the journal", e);
                return;
            }
            self.position += self.buf.len() as u64;
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
            let file = Arc::new(file);
            self.syncer.set_archive(file.clone());
            self.archive = Some(file);
        }
        let archive = self.archive.as_deref().expect("opened above");
        let mut archive = archive;
        archive.write_all(frames)
    }

    /// Writes go into `file` from its magic on, with space preallocated.
    pub(super) fn start_segment(&mut self, file: Arc<File>) {
        self.file = file;
        self.position = record::JOURNAL_MAGIC.len() as u64;
        self.allocated = preallocate(&self.file, 0, PREALLOCATE);
    }

    /// Makes sure `len` more bytes fit in the preallocated space, with half
    /// a chunk to spare, so an fsync rarely has a new file length to write.
    fn make_room(&mut self, len: u64) {
        let Some(end) = self.allocated else {
            return;
        };
        let need = self.position + len + PREALLOCATE / 2;
        if need > end {
            let grow = (need - end).next_multiple_of(PREALLOCATE);
            self.allocated = preallocate(&self.file, end, grow);
        }
    }

    /// Cuts the unused preallocated space off the segment and fsyncs it
    /// (before the next segment starts, and at a clean stop): only the
    /// newest segment may end in unwritten space. False if that failed
    /// (then the journal fails: a sealed segment with a zero tail would be
    /// refused at the next start).
    fn seal(&mut self) -> bool {
        if self.allocated.is_none() {
            return true;
        }
        match self
            .file
            .set_len(self.position)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => {
                self.allocated = None;
                true
            }
            Err(e) => {
                self.fail("cannot cut the journal segment's preallocated space", e);
                false
            }
        }
    }

    fn fail(&mut self, what: &str, e: io::Error) {
        self.failed = true;
        journal_failed(what, &e, &self.stats, &self.progress);
    }

    /// Whether the configured events or bytes were written since the last
    /// snapshot (a request's thread that wrote them rings the writer
    /// thread, which takes it).
    pub(super) fn snapshot_due(&self) -> bool {
        !self.failed
            && (self.since_events >= self.every_events || self.since_bytes >= self.every_bytes)
    }

    /// Past the configured events or bytes, starts a new segment and writes
    /// a snapshot in the background (unless one is still being written).
    fn maybe_snapshot(&mut self) {
        if !self.snapshot_due() || self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        // The old segment is complete and on disk before the new one gets a
        // record, so only the newest segment can ever have a torn tail.
        if !self.syncer.sync_all() || !self.seal() {
            self.snapshotting.store(false, Ordering::Release);
            return;
        }
        match new_segment(&self.dir, Seq(self.written.0 + 1)) {
            Ok(file) => {
                self.start_segment(Arc::new(file));
                self.syncer.switch_segment(self.file.clone());
            }
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

/// Preallocates `len` bytes of `file` from `from` (the file grows; the new
/// space reads as zeros): writes into it, then fdatasync, need no new
/// blocks and no new length in the file system's journal, which makes each
/// fsync of a small batch cheaper. Where the file system cannot
/// preallocate, None: the file grows with each write instead.
fn preallocate(file: &File, from: u64, len: u64) -> Option<u64> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, len) {
        Ok(()) => Some(from + len),
        Err(e) => {
            tracing::debug!(error = %e, "cannot preallocate journal space; the file grows per write");
            None
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
