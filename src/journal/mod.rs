//! Durability: every change event is appended to a journal by one writer
//! thread, and the whole state is written to a snapshot now and then, so a
//! restart or a crash loses no acknowledged change (DESIGN invariant 5).
//!
//! Files in `persistence.dir`:
//! - `journal-<first seq>.log`: segments of the journal, each starting with
//!   the event of that seq. Only the newest is written to.
//! - `CURRENT`: the newest segment's name, replaced atomically (temp file,
//!   fsync, rename, directory fsync) whenever a segment is created and
//!   before any record goes into it, so a deleted newest segment is noticed.
//! - `snapshot-<seq>.snap`: every record exactly as of `seq`. Written to
//!   `snapshot.tmp` (removed if the snapshot fails), fsynced, renamed, and
//!   the directory fsynced; then the segments it covers and older snapshots
//!   are deleted.
//! - `archive-<seq>.log`: the final state of every order evicted from memory
//!   (`limits.max_orders_kept`), one file per run, never deleted by the
//!   broker. Same frames as the journal (`OBARCH01` magic).
//! - `LOCK`: held while a broker uses the directory.
//!
//! The sequencer sends each event down a crossbeam channel while it holds
//! its lock, so the writer receives events in `seq` order; the events of an
//! atomic change (`Sequencer::group`: processing, giving back) come as one
//! [`Msg::Group`] and become one frame ([`Record::Group`]). The writer takes
//! every event queued (group commit), encodes each frame and checks that it
//! decodes back to the same record (a frame that would not read back is
//! never written: the journal fails instead), writes them with one `write`
//! and publishes the *written* watermark; it fsyncs (at once with `always`,
//! at least once a second with `everysec`, only at segment switches and
//! shutdown with `no`) and publishes the *synced* one. A change is answered
//! once its seq is synced with `always`, written with `everysec` and `no`
//! ([`Journal::durable`], used by `http::App`), so a crash of the process
//! never loses an acknowledged change in any mode. After a write or fsync
//! error nothing more is written and every later change is refused (503).
//!
//! A snapshot runs on a thread of its own and is a consistent cut: it copies
//! every record, then applies the history's events up to a seq S read under
//! the sequencer lock, so it holds exactly the state after S (see
//! `Broker::dump`).
//!
//! Recovery (`Journal::open`) checks `CURRENT`, loads the newest snapshot,
//! replays every later record in seq order (a group whole), and refuses to
//! start on a gap, a missing segment, or damage anywhere but a torn tail of
//! the newest segment. A torn tail is an incomplete last write: cut off and
//! logged only if no well-formed frame follows it, the frame is not complete
//! (a damaged length field would hide that), and a frame the file holds
//! whole ends in zeros (unwritten pages after a power loss); see
//! `not_torn`.

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::config::{Fsync, Persistence};
use crate::feed::Event;
use crate::model::{Millis, Seq};
use record::{
    ARCHIVE_MAGIC, FRAME_HEADER, FrameError, Frames, JOURNAL_MAGIC, MAX_PAYLOAD, Record,
    SNAPSHOT_MAGIC,
};

const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// Names the newest journal segment, so a deleted one is noticed.
const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const LOCK_FILE: &str = "LOCK";
/// Most events the writer takes into one write (and one fsync).
const MAX_BATCH: usize = 8192;
/// Upper bounds of the fsync latency histogram, in seconds.
pub const FSYNC_BUCKETS: [f64; 9] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

/// What the sequencer and the server send the writer.
pub enum Msg {
    Event(Event),
    /// Events committed together under one sequencer lock (an atomic change,
    /// e.g. processing an order): written as one frame, so recovery applies
    /// all of them or none.
    Group(Vec<Event>),
    /// Write and fsync everything queued before it, then answer.
    Flush(Sender<bool>),
    /// Write and fsync everything queued before it, then stop.
    Stop,
}

/// Why the journal could not be opened; the broker must not start.
#[derive(Debug)]
pub struct JournalError(String);

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JournalError {}

fn io_error(what: &str, path: &Path, e: io::Error) -> JournalError {
    JournalError(format!("{what} {}: {e}", path.display()))
}

/// The journal cannot be written any more; nothing after the last durable
/// seq is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFailed;

/// The writer's watermarks: the newest seq handed to the OS (`write`
/// returned) and the newest fsynced; and whether writing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    written: Seq,
    synced: Seq,
    failed: bool,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Bytes appended to the journal since start.
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    /// Newest seq known to be on disk (fsynced).
    pub durable_seq: AtomicU64,
    /// Newest seq written to the file (in the OS's page cache at least).
    pub written_seq: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_micros: AtomicU64,
    /// One count per [`FSYNC_BUCKETS`] bound, +Inf last (not cumulated).
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    pub snapshots: AtomicU64,
    pub last_snapshot_seq: AtomicU64,
    /// Unix milliseconds when the last snapshot was complete.
    pub last_snapshot_ms: AtomicU64,
    pub last_snapshot_micros: AtomicU64,
    pub last_snapshot_bytes: AtomicU64,
    /// Records read at start (snapshot + journal) and how long it took.
    pub recovered_records: AtomicU64,
    pub recovery_micros: AtomicU64,
    pub failed: AtomicBool,
}

impl Stats {
    fn fsynced(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = FSYNC_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.fsync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// The open journal: the writer thread and what callers need of it.
pub struct Journal {
    tx: Sender<Msg>,
    durable: watch::Receiver<Durable>,
    fsync: Fsync,
    pub stats: Arc<Stats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub snapshot: Option<Seq>,
    pub snapshot_records: u64,
    /// Journal records applied after the snapshot.
    pub replayed: u64,
    /// Journal bytes after the snapshot (they count towards the next one).
    pub replayed_bytes: u64,
    pub last: Seq,
    /// A torn tail that was cut: file, offset, bytes cut.
    pub torn: Option<(PathBuf, u64, u64)>,
}

impl Journal {
    /// Recovers `broker`'s state from `config.dir` (blocking; run it off the
    /// async threads), then starts the writer and attaches it to the broker
    /// (`Broker::journal` returns it from then on).
    pub fn open(config: &Persistence, broker: &Broker) -> Result<Arc<Journal>, JournalError> {
        let dir = config.dir.as_path();
        fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            File::create(&lock_path).map_err(|e| io_error("cannot create", &lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(JournalError(format!(
                "{} is in use by another broker (it holds {})",
                dir.display(),
                lock_path.display()
            )));
        }
        let _ = fs::remove_file(dir.join(SNAPSHOT_TMP));
        let started = Instant::now();
        let recovery = recover(dir, broker)?;
        let stats = Arc::new(Stats::default());
        stats
            .recovery_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.durable_seq.store(recovery.last.0, Ordering::Relaxed);
        stats.written_seq.store(recovery.last.0, Ordering::Relaxed);
        stats.recovered_records.store(
            recovery.snapshot_records + recovery.replayed,
            Ordering::Relaxed,
        );
        if let Some(seq) = recovery.snapshot {
            stats.last_snapshot_seq.store(seq.0, Ordering::Relaxed);
        }
        info!(
            snapshot = recovery.snapshot.map(|s| s.0),
            replayed = recovery.replayed,
            last_seq = recovery.last.0,
            millis = started.elapsed().as_millis() as u64,
            "recovered state from {}",
            dir.display()
        );
        let file = new_segment(dir, Seq(recovery.last.0 + 1))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (durable_tx, durable) = watch::channel(Durable {
            written: recovery.last,
            synced: recovery.last,
            failed: false,
        });
        let writer = Writer {
            broker: broker.clone(),
            dir: dir.to_path_buf(),
            fsync: config.fsync,
            file,
            archive: None,
            buf: Vec::with_capacity(1 << 16),
            written: recovery.last,
            dirty: false,
            synced_at: Instant::now(),
            durable: durable_tx,
            stats: stats.clone(),
            every_events: config.snapshot_every_events,
            every_bytes: config.snapshot_every_bytes,
            since_events: recovery.replayed,
            since_bytes: recovery.replayed_bytes,
            snapshotting: Arc::new(AtomicBool::new(false)),
            snapshot: None,
            failed: false,
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| JournalError(format!("cannot start the journal thread: {e}")))?;
        let journal = Arc::new(Journal {
            tx: tx.clone(),
            durable,
            fsync: config.fsync,
            stats,
            writer: Mutex::new(Some(thread)),
        });
        broker.attach_journal(tx, journal.clone());
        Ok(journal)
    }

    /// Waits until every change up to `seq` may be acknowledged: fsynced
    /// with `fsync = "always"`, written to the file (handed to the OS, so a
    /// crash of the process cannot lose it) with `everysec` and `no`. Fails
    /// once the journal cannot be written and `seq` had not got that far.
    pub async fn durable(&self, seq: Seq) -> Result<(), JournalFailed> {
        let always = self.fsync == Fsync::Always;
        let reached = move |d: &Durable| if always { d.synced } else { d.written };
        let mut durable = self.durable.clone();
        match durable.wait_for(|d| d.failed || reached(d) >= seq).await {
            Ok(d) if reached(&d) >= seq => Ok(()),
            _ => Err(JournalFailed),
        }
    }

    /// Events sent to the writer and not yet written.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    pub fn failed(&self) -> bool {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Writes and fsyncs everything sent so far (blocking).
    pub fn sync(&self) -> Result<(), JournalFailed> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return Err(JournalFailed);
        }
        match rx.recv() {
            Ok(true) => Ok(()),
            _ => Err(JournalFailed),
        }
    }

    /// Writes and fsyncs everything sent so far and stops the writer
    /// (blocking). Changes made after this are not journaled.
    pub fn close(&self) {
        let Some(thread) = self.writer.lock().take() else {
            return;
        };
        let _ = self.tx.send(Msg::Stop);
        if thread.join().is_err() {
            error!("the journal thread panicked");
        }
    }
}

/// The writer thread's state.
struct Writer {
    broker: Broker,
    dir: PathBuf,
    fsync: Fsync,
    /// The newest segment, written unbuffered: each batch is one `write`.
    file: File,
    /// Where evicted orders' final states go (`archive-<seq>.log`), once
    /// there is one.
    archive: Option<File>,
    buf: Vec<u8>,
    /// Newest seq written to `file`.
    written: Seq,
    /// Written since the last fsync.
    dirty: bool,
    synced_at: Instant,
    durable: watch::Sender<Durable>,
    stats: Arc<Stats>,
    every_events: u64,
    every_bytes: u64,
    since_events: u64,
    since_bytes: u64,
    snapshotting: Arc<AtomicBool>,
    /// The snapshot thread last started; joined before the writer stops.
    snapshot: Option<JoinHandle<()>>,
    /// A write or fsync failed: nothing more is written.
    failed: bool,
    /// Held (locked) while the writer runs.
    _lock: File,
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
    fn run(mut self, rx: Receiver<Msg>) {
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

fn segment_name(first: Seq) -> String {
    format!("journal-{:020}.log", first.0)
}

fn snapshot_name(seq: Seq) -> String {
    format!("snapshot-{:020}.snap", seq.0)
}

/// Creates (or empties) the segment whose first record will be `first`, with
/// its magic on disk, and names it in `CURRENT` before any record goes in.
fn new_segment(dir: &Path, first: Seq) -> Result<File, JournalError> {
    let name = segment_name(first);
    let path = dir.join(&name);
    let created = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(JOURNAL_MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(file)
    })();
    let file = created.map_err(|e| io_error("cannot create journal segment", &path, e))?;
    write_current(dir, &name).map_err(|e| io_error("cannot write", &dir.join(CURRENT), e))?;
    Ok(file)
}

/// Replaces `CURRENT` atomically: a temp file, fsynced, renamed over it,
/// the directory fsynced.
fn write_current(dir: &Path, name: &str) -> io::Result<()> {
    let tmp = dir.join(CURRENT_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{name}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(CURRENT))?;
    sync_dir(dir)
}

/// The segment `CURRENT` names (None: no `CURRENT`, a data directory from
/// before it existed).
fn read_current(dir: &Path) -> Result<Option<(Seq, String)>, JournalError> {
    let path = dir.join(CURRENT);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot read", &path, e)),
    };
    let name = text.trim();
    let seq = name
        .strip_prefix("journal-")
        .and_then(|n| n.strip_suffix(".log"))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| text.ends_with('\n') && !name.contains('/'))
        .ok_or_else(|| {
            JournalError(format!(
                "{} is corrupt: it should name the newest journal segment, it holds {:?}. \
                 Refusing to start: restore the data directory from a backup",
                path.display(),
                text.chars().take(80).collect::<String>()
            ))
        })?;
    Ok(Some((Seq(seq), name.to_string())))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The snapshots and segments in a directory, each sorted by seq.
struct Files {
    snapshots: Vec<(Seq, PathBuf)>,
    segments: Vec<(Seq, PathBuf)>,
}

impl Files {
    fn scan(dir: &Path) -> io::Result<Files> {
        let mut files = Files {
            snapshots: Vec::new(),
            segments: Vec::new(),
        };
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let number = |prefix: &str, suffix: &str| {
                name.strip_prefix(prefix)?
                    .strip_suffix(suffix)?
                    .parse::<u64>()
                    .ok()
                    .map(Seq)
            };
            if let Some(seq) = number("snapshot-", ".snap") {
                files.snapshots.push((seq, path));
            } else if let Some(seq) = number("journal-", ".log") {
                files.segments.push((seq, path));
            }
        }
        files.snapshots.sort();
        files.segments.sort();
        Ok(files)
    }
}

/// Writes a snapshot of `broker`, then deletes what it makes redundant.
/// Returns its seq and size.
/// A snapshot that fails leaves no `snapshot.tmp` behind.
pub fn write_snapshot(broker: &Broker, dir: &Path) -> io::Result<(Seq, u64)> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let written = (|| {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        out.write_all(SNAPSHOT_MAGIC)?;
        let mut bytes = SNAPSHOT_MAGIC.len() as u64;
        let mut frame = Vec::new();
        let seq = broker.dump(|record| {
            frame.clear();
            record.write_frame(&mut frame);
            bytes += frame.len() as u64;
            out.write_all(&frame)
        })?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(snapshot_name(seq)))?;
        Ok((seq, bytes))
    })();
    let (seq, bytes) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    sync_dir(dir)?;
    let files = Files::scan(dir)?;
    for (old, path) in &files.snapshots {
        if *old < seq {
            fs::remove_file(path)?;
        }
    }
    // A segment is covered when the next one starts at or before seq + 1.
    for pair in files.segments.windows(2) {
        if pair[1].0.0 <= seq.0 + 1 {
            fs::remove_file(&pair[0].1)?;
        }
    }
    sync_dir(dir)?;
    Ok((seq, bytes))
}

/// Loads the newest snapshot and replays the journal after it into `broker`.
fn recover(dir: &Path, broker: &Broker) -> Result<Recovery, JournalError> {
    let files = Files::scan(dir).map_err(|e| io_error("cannot read", dir, e))?;
    let mut recovery = Recovery::default();
    if let Some((seq, path)) = files.snapshots.last() {
        recovery.snapshot_records = load_snapshot(path, *seq, broker).map_err(|why| {
            JournalError(format!(
                "snapshot {} is corrupt: {why}. Refusing to start rather than lose \
                 the orders in it; restore the data directory from a backup",
                path.display()
            ))
        })?;
        recovery.snapshot = Some(*seq);
        recovery.last = *seq;
    }
    let current = read_current(dir)?;
    match &current {
        Some((seq, name)) if !files.segments.iter().any(|(s, _)| s == seq) => {
            return Err(JournalError(format!(
                "journal segment {} is missing: {} names it as the newest segment. A journal \
                 file was deleted or lost; refusing to start rather than silently drop the \
                 changes in it; restore the data directory from a backup",
                dir.join(name).display(),
                dir.join(CURRENT).display()
            )));
        }
        Some(_) => {}
        None if files.segments.is_empty() && files.snapshots.is_empty() => {}
        None => info!(
            "{} has no {CURRENT} file (written by an older version); it gets one now",
            dir.display()
        ),
    }
    let newest = files.segments.len().saturating_sub(1);
    for (i, (first, path)) in files.segments.iter().enumerate() {
        let named = current.as_ref().is_some_and(|(seq, _)| seq == first);
        replay_segment(path, i == newest, named, broker, &mut recovery)?;
    }
    broker.finish_restore(recovery.last);
    if let Some((path, at, cut)) = &recovery.torn {
        warn!(
            file = %path.display(),
            offset = at,
            bytes = cut,
            last_seq = recovery.last.0,
            "the journal ended in a torn write (a crash mid-write); cut it at the last good record"
        );
    }
    Ok(recovery)
}

/// Loads a snapshot into `broker`; how many records it held.
fn load_snapshot(path: &Path, named: Seq, broker: &Broker) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if len < 8 || input.read_exact(&mut magic).is_err() || &magic != SNAPSHOT_MAGIC {
        return Err("it does not start like a snapshot".into());
    }
    let mut frames = Frames::new(input, 8, len);
    let mut records = 0u64;
    let mut started = false;
    loop {
        let at = frames.offset();
        let payload = match frames.next_payload().map_err(|e| e.to_string())? {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err("it ends before its end record".into()),
            Err(e) => return Err(format!("{e} at byte {at}")),
        };
        let record =
            Record::decode(payload).map_err(|e| format!("unreadable record at byte {at}: {e}"))?;
        match &record {
            Record::Snapshot { seq, .. } if !started && *seq == named => started = true,
            _ if !started => return Err("its first record is not its header".into()),
            Record::Snapshot { .. } => return Err(format!("a second header at byte {at}")),
            Record::End { records: n } if *n == records => break,
            Record::End { .. } => return Err(format!("its end record at byte {at} miscounts")),
            _ => records += 1,
        }
        broker.restore(record);
    }
    if frames.offset() != len {
        return Err(format!("bytes after its end record at {}", frames.offset()));
    }
    Ok(records)
}

/// `named`: `CURRENT` names this segment, so its magic was on disk before
/// any record could go in (a bad header there is damage, not a torn creation).
fn replay_segment(
    path: &Path,
    newest: bool,
    named: bool,
    broker: &Broker,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
    let corrupt = |at: u64, why: String| {
        JournalError(format!(
            "journal {} is corrupt at byte {at}: {why}. Refusing to start rather than \
             silently drop the changes after it; restore the data directory from a backup",
            path.display()
        ))
    };
    let read = |e: io::Error| io_error("cannot read", path, e);
    let file = File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    let header_ok = len >= 8 && input.read_exact(&mut magic).is_ok() && &magic == JOURNAL_MAGIC;
    if !header_ok {
        // A segment is created with its magic fsynced before `CURRENT` names
        // it and before any record, so a bad header is only a torn creation
        // in a newest segment `CURRENT` does not name yet, holding nothing.
        if newest && !named && (len <= 8 || zero_from(path, 0).map_err(read)?) {
            fs::remove_file(path).map_err(|e| io_error("cannot remove", path, e))?;
            recovery.torn = Some((path.to_path_buf(), 0, len));
            return Ok(());
        }
        return Err(corrupt(
            0,
            "it does not start like a journal segment".into(),
        ));
    }
    let mut frames = Frames::new(input, 8, len);
    let snapshot = recovery.snapshot.unwrap_or(Seq(0));
    loop {
        let at = frames.offset();
        let bad = match frames.next_payload().map_err(read)? {
            Ok(None) => return Ok(()),
            Ok(Some(payload)) => {
                let record =
                    Record::decode(payload).map_err(|e| corrupt(at, format!("unreadable: {e}")))?;
                let changes = record.changes();
                // Check every member's seq first: a group is applied whole.
                let mut next = recovery.last.0 + 1;
                for change in changes {
                    let seq = match change {
                        Record::Snapshot { .. } | Record::End { .. } => {
                            return Err(corrupt(at, "a snapshot record in the journal".into()));
                        }
                        Record::Group { .. } => {
                            return Err(corrupt(at, "a group inside a group".into()));
                        }
                        r => r.seq().expect("change records have a seq"),
                    };
                    if seq <= snapshot {
                        continue; // the snapshot holds it already
                    }
                    if seq.0 != next {
                        return Err(corrupt(
                            at,
                            format!(
                                "expected the change with seq {next}, found {} \
                                 (a journal file is missing)",
                                seq.0
                            ),
                        ));
                    }
                    next += 1;
                }
                if changes.is_empty() {
                    return Err(corrupt(at, "an empty group".into()));
                }
                let applied = next - (recovery.last.0 + 1);
                if applied > 0 {
                    for change in changes {
                        if change.seq().is_some_and(|s| s > snapshot) {
                            broker.restore(change.clone());
                        }
                    }
                    recovery.last = Seq(next - 1);
                    recovery.replayed += applied;
                    recovery.replayed_bytes += frames.offset() - at;
                }
                continue;
            }
            Err(bad) => bad,
        };
        // Only the newest segment is written to, so only its tail can be
        // torn, and only by its last write; anything else is damage.
        if !newest {
            return Err(corrupt(at, bad.to_string()));
        }
        if let Some(why) = not_torn(path, at, bad).map_err(read)? {
            return Err(corrupt(at, format!("{bad}, and {why}")));
        }
        return cut(path, at, len, recovery);
    }
}

/// Why the bad frame at `at`, in the newest segment, is not a torn tail (an
/// incomplete last write, which may be cut); None if it is one.
///
/// A write the crash cut short leaves a prefix of its frames, or (after a
/// power loss) a file whose last pages read as zeros. So the tail is torn
/// only if no well-formed frame starts anywhere after `at` (else the cut
/// would drop records that were written after the damage), the frame at
/// `at` is not complete (its checksum does not match the bytes to the end of
/// the file, which a damaged length field would hide), and, if the file
/// holds the whole frame, it ends in zeros from inside that frame on.
fn not_torn(path: &Path, at: u64, bad: FrameError) -> io::Result<Option<String>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(at))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let header = FRAME_HEADER;
    if tail.len() > header {
        let crc = u32::from_le_bytes(tail[4..8].try_into().expect("4 bytes"));
        if crc32fast::hash(&tail[header..]) == crc {
            return Ok(Some(
                "the record is complete (its checksum matches the bytes to the end of the \
                 file): its length field is damaged"
                    .into(),
            ));
        }
    }
    if let Some(p) = next_valid_frame(&tail, 1) {
        return Ok(Some(format!(
            "a valid record follows at byte {}, so this is damage, not a torn last write",
            at + p as u64
        )));
    }
    // Where the run of zeros that ends the file begins.
    let zeros = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let torn = match bad {
        FrameError::Truncated => true,
        FrameError::BadLength(_) => zeros == 0,
        FrameError::Checksum { end } => zeros < (end - at) as usize,
    };
    Ok((!torn)
        .then(|| "the file holds the whole record, so it is damaged, not a write cut short".into()))
}

/// The offset in `bytes` (at or after `from`) of the first well-formed frame:
/// a plausible length, a payload that looks like JSON, a matching checksum
/// and a record that decodes. Linear but for the rare plausible candidate.
fn next_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let header = FRAME_HEADER;
    let mut p = from;
    while p + header < bytes.len() {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes")) as usize;
        let end = p + header + len;
        if len > 0
            && len <= MAX_PAYLOAD
            && end <= bytes.len()
            && matches!(bytes[p + header], b'{' | b'[')
        {
            let crc = u32::from_le_bytes(bytes[p + 4..p + 8].try_into().expect("4 bytes"));
            let payload = &bytes[p + header..end];
            if crc32fast::hash(payload) == crc && Record::decode(payload).is_ok() {
                return Some(p);
            }
        }
        p += 1;
    }
    None
}

/// Cuts the newest segment's torn tail at `at`.
fn cut(path: &Path, at: u64, len: u64, recovery: &mut Recovery) -> Result<(), JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error("cannot open", path, e))?;
    file.set_len(at)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("cannot cut the torn tail of", path, e))?;
    recovery.torn = Some((path.to_path_buf(), at, len - at));
    Ok(())
}

/// Whether every byte of the file from `from` on is zero.
fn zero_from(path: &Path, from: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::OrderId;

    /// The writer garbles the frame of the change with this seq (0: none).
    pub(super) static GARBLE_SEQ: AtomicU64 = AtomicU64::new(0);

    fn persistence(dir: &Path, fsync: Fsync) -> Persistence {
        Persistence {
            dir: dir.to_path_buf(),
            fsync,
            ..Config::default().persistence
        }
    }

    /// Every change record in a segment, in order.
    fn seqs_in(path: &Path) -> Vec<u64> {
        let len = fs::metadata(path).unwrap().len();
        let mut input = BufReader::new(File::open(path).unwrap());
        input.seek(SeekFrom::Start(8)).unwrap();
        let mut frames = Frames::new(input, 8, len);
        let mut seqs = Vec::new();
        while let Some(payload) = frames.next_payload().unwrap().unwrap() {
            let record = Record::decode(payload).unwrap();
            seqs.extend(record.changes().iter().filter_map(|r| r.seq()).map(|s| s.0));
        }
        seqs
    }

    #[test]
    fn a_record_that_would_not_read_back_is_never_written_nor_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let broker = Broker::new(&Config::default());
        let journal = Journal::open(&persistence(dir.path(), Fsync::No), &broker).unwrap();
        broker.update_status(OrderId(1), "Mixing", None).unwrap();
        assert_eq!(runtime.block_on(journal.durable(Seq(1))), Ok(()));
        GARBLE_SEQ.store(2, Ordering::Relaxed);
        broker.update_status(OrderId(2), "Mixing", None).unwrap();
        broker.update_status(OrderId(3), "Mixing", None).unwrap();
        assert_eq!(
            runtime.block_on(journal.durable(Seq(2))),
            Err(JournalFailed),
            "the change whose record would not read back is not acknowledged"
        );
        assert_eq!(
            runtime.block_on(journal.durable(Seq(3))),
            Err(JournalFailed)
        );
        assert!(journal.failed());
        journal.close();
        GARBLE_SEQ.store(0, Ordering::Relaxed);
        let segment = Files::scan(dir.path()).unwrap().segments.pop().unwrap().1;
        assert_eq!(seqs_in(&segment), [1], "nothing after the bad record");

        // The next start reads the journal (no bricked data directory).
        let restarted = Broker::new(&Config::default());
        let journal = Journal::open(&persistence(dir.path(), Fsync::No), &restarted).unwrap();
        assert_eq!(restarted.last_seq(), Seq(1));
        assert!(restarted.get(OrderId(1)).is_some());
        journal.close();
    }

    #[test]
    fn a_failed_snapshot_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::new(&Config::default());
        for n in 0..50 {
            broker.update_status(OrderId(n), "Mixing", None).unwrap();
        }
        // The snapshot's final name is taken by a directory: the rename fails
        // after the whole snapshot was written to the temp file.
        let blocker = dir.path().join(snapshot_name(broker.last_seq()));
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), b"x").unwrap();
        assert!(write_snapshot(&broker, dir.path()).is_err());
        assert!(
            !dir.path().join(SNAPSHOT_TMP).exists(),
            "snapshot.tmp was left behind"
        );
    }

    #[test]
    fn a_valid_frame_is_found_anywhere_after_damage() {
        let mut bytes = vec![0x41u8; 300];
        let at = bytes.len();
        Record::End { records: 3 }.write_frame(&mut bytes);
        bytes.extend_from_slice(&[0; 20]);
        assert_eq!(next_valid_frame(&bytes, 1), Some(at));
        assert_eq!(next_valid_frame(&bytes, at + 1), None);
        // A flipped payload byte: its checksum fails, so it is no frame.
        bytes[at + 12] ^= 0x01;
        assert_eq!(next_valid_frame(&bytes, 1), None);
    }
}
