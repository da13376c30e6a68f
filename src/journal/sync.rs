//! The sync thread: fsyncs what the writer thread wrote while the writer
//! goes on writing the next changes (a pipelined group commit). With
//! `fsync = "always"` an fsync starts as soon as the previous one ended and
//! covers everything written before it started, so the disk is never idle
//! while changes wait, and no change waits for an fsync that began before
//! its write. With `everysec` it fsyncs at least once a second without
//! stopping the writes; with `no`, only when the writer asks (segment
//! switch, flush, stop).

use std::fs::File;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::durable::Progress;
use super::{Stats, journal_failed};
use crate::config::Fsync;
use crate::model::Seq;

/// The sync thread and what the writer tells it.
pub(super) struct Syncer {
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    target: Mutex<Target>,
    wake: Condvar,
}

/// What there is to fsync. Updated by the writer under the lock, so the
/// sync thread always takes a seq together with the files that hold it.
struct Target {
    journal: Arc<File>,
    /// The archive of evicted orders, once there is one: fsynced before the
    /// journal, whose removal records point to it.
    archive: Option<Arc<File>>,
    /// Newest seq written to these files.
    written: Seq,
    /// Fsync at least this far as soon as possible.
    requested: Seq,
    stop: bool,
}

impl Syncer {
    /// Starts the sync thread for `journal`, on disk up to `at`.
    pub(super) fn start(
        journal: Arc<File>,
        at: Seq,
        policy: Fsync,
        progress: Arc<Progress>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            target: Mutex::new(Target {
                journal,
                archive: None,
                written: at,
                requested: at,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            let progress = progress.clone();
            std::thread::Builder::new()
                .name("journal-sync".into())
                .spawn(move || run(&shared, at, policy, &progress, &stats))?
        };
        Ok(Syncer {
            shared,
            progress,
            thread: Some(thread),
        })
    }

    /// Everything up to `seq` is written; `now`: fsync it as soon as
    /// possible (`fsync = "always"`).
    pub(super) fn wrote(&self, seq: Seq, now: bool) {
        let mut target = self.shared.target.lock();
        target.written = seq;
        if now {
            target.requested = seq;
            drop(target);
            self.shared.wake.notify_one();
        }
    }

    /// Fsyncs everything written so far and waits for it (blocking); false
    /// if the journal failed first.
    pub(super) fn sync_all(&self) -> bool {
        let upto = {
            let mut target = self.shared.target.lock();
            target.requested = target.requested.max(target.written);
            target.written
        };
        self.shared.wake.notify_one();
        self.progress.wait_synced(upto)
    }

    /// The writer goes on in a new segment (after `sync_all`, so the old one
    /// is on disk whole before the new one gets a record).
    pub(super) fn switch_segment(&self, journal: Arc<File>) {
        self.shared.target.lock().journal = journal;
    }

    pub(super) fn set_archive(&self, archive: Arc<File>) {
        self.shared.target.lock().archive = Some(archive);
    }

    /// Stops the sync thread once what was asked for is fsynced.
    pub(super) fn stop(&mut self) {
        self.shared.target.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Shared, at: Seq, policy: Fsync, progress: &Progress, stats: &Stats) {
    let mut synced = at;
    let mut synced_at = Instant::now();
    loop {
        let (journal, archive, upto) = {
            let mut target = shared.target.lock();
            loop {
                if target.requested > synced {
                    break;
                }
                if target.stop {
                    return;
                }
                if policy == Fsync::Everysec && target.written > synced {
                    let due = synced_at + Duration::from_secs(1);
                    if Instant::now() >= due {
                        break;
                    }
                    shared.wake.wait_until(&mut target, due);
                    continue;
                }
                shared.wake.wait(&mut target);
            }
            (
                target.journal.clone(),
                target.archive.clone(),
                target.written,
            )
        };
        let started = Instant::now();
        let archived = archive.as_deref().map_or(Ok(()), File::sync_data);
        if let Err(e) = archived.and_then(|()| journal.sync_data()) {
            journal_failed("cannot fsync the journal", &e, stats, progress);
            return;
        }
        stats.fsynced(started.elapsed());
        synced = upto;
        synced_at = Instant::now();
        stats
            .durable_seq
            .store(upto.0, std::sync::atomic::Ordering::Relaxed);
        progress.synced(upto);
    }
}
