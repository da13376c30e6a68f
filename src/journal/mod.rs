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
//! The sequencer queues each event ([`Queue`], a crossbeam channel) while it
//! holds its lock, so the queue is in `seq` order; the events of an atomic
//! change (`Sequencer::group`: processing, giving back) come as one
//! [`Msg::Group`] and become one frame ([`Record::Group`]). Whoever holds
//! the writer's lock takes from the queue: usually the request waiting for
//! its change ([`Journal::durable`]), else the writer thread, which polls
//! for changes nobody waits for and alone switches segments, snapshots,
//! flushes and stops (`writer.rs`). It takes every event queued (group
//! commit), encodes each frame and checks that it
//! decodes back to the same record (a frame that would not read back is
//! never written: the journal fails instead), writes them with one `write`
//! into space preallocated 8 MiB at a time (cut off when a segment is done,
//! and by recovery after a crash) and publishes the *written* watermark. A sync thread (`sync.rs`) fsyncs
//! while the writer goes on writing (at once after the previous fsync with
//! `always`, at least once a second with `everysec`, only at segment
//! switches, flushes and shutdown with `no`) and publishes the *synced* one;
//! each fsync covers what was written before it began. A change is answered
//! once its seq is synced with `always`, written with `everysec` and `no`
//! ([`Journal::durable`], used by `http::App`; `durable.rs` wakes exactly
//! the requests a watermark satisfies), so a crash of the process never
//! loses an acknowledged change in any mode. After a write or fsync error
//! nothing more is written and every later change is refused (503).
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
//! `not_torn`. What of that reads no record (`CURRENT`, the magics, a
//! missing first segment) the binary checks before it listens
//! ([`preflight`]), so such a directory stops the start before "listening".

mod durable;
pub mod record;
mod recovery;
mod sync;
mod writer;

use durable::Progress;
pub use recovery::Recovery;
use recovery::{Files, recover};
use sync::Syncer;
use writer::Writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use tracing::{error, info};

use crate::broker::Broker;
use crate::config::{Fsync, Persistence};
use crate::feed::Event;
use crate::model::Seq;
use record::{JOURNAL_MAGIC, SNAPSHOT_MAGIC};

const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// Names the newest journal segment, so a deleted one is noticed.
const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const LOCK_FILE: &str = "LOCK";
/// Most events the writer takes into one write (and one fsync).
const MAX_BATCH: usize = 8192;
/// Journal space preallocated at a time (see `writer::preallocate`).
const PREALLOCATE: u64 = 8 << 20;
/// Upper bounds of the fsync latency histogram, in seconds.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

/// What the sequencer queues for the journal.
pub enum Msg {
    Event(Event),
    /// Events committed together under one sequencer lock (an atomic change,
    /// e.g. processing an order): written as one frame, so recovery applies
    /// all of them or none.
    Group(Vec<Event>),
}

/// What the server tells the writer thread.
enum Control {
    /// Write and fsync everything queued before it, then answer.
    Flush(Sender<bool>),
    /// Write and fsync everything queued before it, then stop.
    Stop,
}

/// Where the sequencer queues committed changes (under its lock, so in seq
/// order), and a bell that wakes the writer thread.
#[derive(Clone)]
pub struct Queue {
    changes: Sender<Msg>,
    bell: Sender<()>,
}

/// Queued changes past which the sequencer rings the writer thread's bell
/// (below it, the request waiting for a change writes it, or the writer
/// thread's poll finds it).
const BELL_AT: usize = 1024;

impl Queue {
    /// A queue read by something other than the journal writer (a
    /// cluster's publisher): changes go to `changes`, rings to `bell`.
    pub(crate) fn new(changes: Sender<Msg>, bell: Sender<()>) -> Queue {
        Queue { changes, bell }
    }

    pub fn send(&self, msg: Msg) {
        // The writer lives as long as the broker serves; after shutdown
        // stopped it, nothing is acknowledged any more.
        if self.changes.send(msg).is_ok() && self.changes.len() >= BELL_AT {
            // A ring already waiting covers this change too: the writer
            // takes everything queued after it hears one.
            let _ = self.bell.try_send(());
        }
    }
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
    queue: crossbeam_channel::Receiver<Msg>,
    bell: Sender<()>,
    control: Sender<Control>,
    core: Arc<Mutex<Writer>>,
    progress: Arc<Progress>,
    pub stats: Arc<Stats>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Recovers `broker`'s state from `config.dir` (blocking; run it off the
    /// async threads), then starts the writer and attaches it to the broker
    /// (`Broker::journal` returns it from then on).
    pub fn open(config: &Persistence, broker: &Broker) -> Result<Arc<Journal>, JournalError> {
        let dir = config.dir.as_path();
        let lock = lock(dir)?;
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
        let file = Arc::new(new_segment(dir, Seq(recovery.last.0 + 1))?);
        let (changes, queue) = crossbeam_channel::unbounded();
        let (bell, rung) = crossbeam_channel::bounded(1);
        let (control, commands) = crossbeam_channel::unbounded();
        let progress = Arc::new(Progress::new(recovery.last, config.fsync == Fsync::Always));
        let syncer = Syncer::start(
            file.clone(),
            recovery.last,
            config.fsync,
            progress.clone(),
            stats.clone(),
        )
        .map_err(|e| JournalError(format!("cannot start the journal's sync thread: {e}")))?;
        let mut writer = Writer {
            broker: broker.clone(),
            dir: dir.to_path_buf(),
            fsync: config.fsync,
            file: file.clone(),
            archive: None,
            buf: Vec::with_capacity(1 << 16),
            written: recovery.last,
            batch: Vec::with_capacity(MAX_BATCH),
            position: 0,
            allocated: None,
            syncer,
            progress: progress.clone(),
            stats: stats.clone(),
            every_events: config.snapshot_every_events,
            every_bytes: config.snapshot_every_bytes,
            since_events: recovery.replayed,
            since_bytes: recovery.replayed_bytes,
            snapshotting: Arc::new(AtomicBool::new(false)),
            snapshot: None,
            failed: false,
            lock: Some(lock),
        };
        writer.start_segment(file);
        let core = Arc::new(Mutex::new(writer));
        let thread = {
            let (core, queue) = (core.clone(), queue.clone());
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || writer::run(&core, &queue, &rung, &commands))
                .map_err(|e| JournalError(format!("cannot start the journal thread: {e}")))?
        };
        let journal = Arc::new(Journal {
            queue,
            bell: bell.clone(),
            control,
            core,
            progress,
            stats,
            writer: Mutex::new(Some(thread)),
        });
        broker.attach_journal(Queue { changes, bell }, journal.clone());
        Ok(journal)
    }

    /// Waits until every change up to `seq` may be acknowledged: fsynced
    /// with `fsync = "always"`, written to the file (handed to the OS, so a
    /// crash of the process cannot lose it) with `everysec` and `no`. Fails
    /// once the journal cannot be written and `seq` had not got that far.
    ///
    /// A caller whose change is not written yet writes what is queued
    /// itself when no other thread is writing (one `write` into the page
    /// cache; fsyncs stay on the sync thread), so the change goes out at
    /// once instead of after the writer thread was woken and scheduled.
    pub async fn durable(&self, seq: Seq) -> Result<(), JournalFailed> {
        if !self.progress.written_reached(seq) {
            self.help();
        }
        self.progress.reached(seq).await
    }

    /// Writes one batch of what is queued on this thread, unless another
    /// thread is writing. Then that one sees this caller's change when it
    /// looks at the queue after it let go of the lock: the change was
    /// queued before the fence here and the holder looks after a fence of
    /// its own, so either this `try_lock` succeeds or the holder sees the
    /// change (the store-buffering case SeqCst fences rule out). What is
    /// still queued after one batch, and a snapshot that is due, are left to
    /// the writer thread, rung.
    fn help(&self) {
        fence(Ordering::SeqCst);
        let Some(mut writer) = self.core.try_lock() else {
            return;
        };
        writer.drain(&self.queue);
        let snapshot_due = writer.snapshot_due();
        drop(writer);
        fence(Ordering::SeqCst);
        if snapshot_due || !self.queue.is_empty() {
            let _ = self.bell.try_send(());
        }
    }

    /// Changes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn failed(&self) -> bool {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Writes and fsyncs everything sent so far (blocking).
    pub fn sync(&self) -> Result<(), JournalFailed> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.control.send(Control::Flush(tx)).is_err() {
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
        let _ = self.control.send(Control::Stop);
        if thread.join().is_err() {
            error!("the journal thread panicked");
        }
    }
}

/// A write or fsync failed: logged once per failure, every waiting request
/// and every later change fails (503) until the broker is restarted.
fn journal_failed(what: &str, e: &io::Error, stats: &Stats, progress: &Progress) {
    error!(error = %e, "{what}: changes after seq {} are not durable; \
           writes now fail until the broker is restarted", stats.durable_seq.load(Ordering::Relaxed));
    stats.failed.store(true, Ordering::Relaxed);
    progress.fail();
}

/// Takes the data directory's lock (creating the directory): one broker at
/// a time. Held as long as the returned file is open.
fn lock(dir: &Path) -> Result<File, JournalError> {
    fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::create(&lock_path).map_err(|e| io_error("cannot create", &lock_path, e))?;
    if lock.try_lock().is_err() {
        return Err(JournalError(format!(
            "{} is in use by another broker (it holds {})",
            dir.display(),
            lock_path.display()
        )));
    }
    Ok(lock)
}

/// What the binary checks before it listens, so a directory recovery would
/// refuse stops the start with its reason before "listening": that the
/// directory can be locked now (taken, and let go at once: the journal
/// takes it for good when it opens), and, under the lock, the checks of
/// recovery that read no record (`CURRENT`, magics, a missing first
/// segment; see `recovery::preflight`). Damage inside records is found
/// only by the replay, after the server listens.
pub fn preflight(dir: &Path) -> Result<(), JournalError> {
    let _lock = lock(dir)?;
    recovery::preflight(dir)
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Seek, SeekFrom};

    use super::record::{Frames, Record};
    use super::recovery::next_valid_frame;
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
        // A segment being written ends in preallocated zeros.
        while let Ok(Some(payload)) = frames.next_payload().unwrap() {
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
