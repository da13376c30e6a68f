//! How far the journal got, and the requests waiting for it.
//!
//! Two watermarks: `written` (the newest seq handed to the OS) and `synced`
//! (the newest fsynced). A request waits for the one its policy
//! acknowledges at (`synced` with `fsync = "always"`, `written` otherwise).
//! Waiters are kept by seq, so moving a watermark wakes exactly the
//! requests it satisfies: with 32 writers and about a dozen changes per
//! fsync, a broadcast would wake every waiter on every fsync, most of them
//! to go back to sleep.

use std::collections::BTreeMap;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::JournalFailed;
use crate::model::Seq;

pub(super) struct Progress {
    /// Requests are acknowledged at `synced` (`fsync = "always"`), else at
    /// `written`.
    ack_on_sync: bool,
    state: Mutex<State>,
    /// Signalled whenever `synced` moves or the journal fails (for the
    /// writer's blocking waits: flush, segment switch, stop).
    synced_moved: Condvar,
}

struct State {
    written: Seq,
    synced: Seq,
    failed: bool,
    /// Waiting requests by (seq, arrival): dropped senders tell a waiter the
    /// journal failed before it got that far.
    waiters: BTreeMap<(Seq, u64), oneshot::Sender<()>>,
    arrivals: u64,
}

impl State {
    fn ack(&self, on_sync: bool) -> Seq {
        if on_sync { self.synced } else { self.written }
    }
}

impl Progress {
    /// Everything up to `at` is on disk already (what recovery read).
    pub(super) fn new(at: Seq, ack_on_sync: bool) -> Progress {
        Progress {
            ack_on_sync,
            state: Mutex::new(State {
                written: at,
                synced: at,
                failed: false,
                waiters: BTreeMap::new(),
                arrivals: 0,
            }),
            synced_moved: Condvar::new(),
        }
    }

    /// Waits until every change up to `seq` may be acknowledged. Fails once
    /// the journal failed and `seq` had not got that far.
    pub(super) async fn reached(&self, seq: Seq) -> Result<(), JournalFailed> {
        let waiting = {
            let mut state = self.state.lock();
            if state.ack(self.ack_on_sync) >= seq {
                return Ok(());
            }
            if state.failed {
                return Err(JournalFailed);
            }
            let (tx, rx) = oneshot::channel();
            let arrival = state.arrivals;
            state.arrivals += 1;
            state.waiters.insert((seq, arrival), tx);
            rx
        };
        // A request that is dropped meanwhile leaves its sender behind; it
        // goes when the watermark passes it.
        waiting.await.map_err(|_| JournalFailed)
    }

    /// Whether everything up to `seq` was handed to the OS already.
    pub(super) fn written_reached(&self, seq: Seq) -> bool {
        self.state.lock().written >= seq
    }

    /// Everything up to `seq` was handed to the OS.
    pub(super) fn written(&self, seq: Seq) {
        self.advance(|state| state.written = state.written.max(seq));
    }

    /// Everything up to `seq` is fsynced.
    pub(super) fn synced(&self, seq: Seq) {
        self.advance(|state| {
            state.synced = state.synced.max(seq);
            state.written = state.written.max(seq);
        });
        self.synced_moved.notify_all();
    }

    fn advance(&self, mut move_on: impl FnMut(&mut State)) {
        let woken = {
            let mut state = self.state.lock();
            move_on(&mut state);
            let ack = state.ack(self.ack_on_sync);
            let later = state.waiters.split_off(&(Seq(ack.0 + 1), 0));
            std::mem::replace(&mut state.waiters, later)
        };
        // Woken outside the lock: a wake-up may run the waiter's task on
        // another thread at once.
        for (_, waiter) in woken {
            let _ = waiter.send(());
        }
    }

    /// Nothing more becomes durable: every waiter fails.
    pub(super) fn fail(&self) {
        let waiters = {
            let mut state = self.state.lock();
            state.failed = true;
            std::mem::take(&mut state.waiters)
        };
        drop(waiters);
        self.synced_moved.notify_all();
    }

    pub(super) fn failed(&self) -> bool {
        self.state.lock().failed
    }

    /// Blocks until everything up to `seq` is fsynced; false if the journal
    /// failed before it got there.
    pub(super) fn wait_synced(&self, seq: Seq) -> bool {
        let mut state = self.state.lock();
        while state.synced < seq && !state.failed {
            self.synced_moved.wait(&mut state);
        }
        state.synced >= seq
    }

    /// Requests waiting (for tests and metrics).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.state.lock().waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Lets the spawned tasks run.
    fn settle(runtime: &tokio::runtime::Runtime) {
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    }

    #[test]
    fn a_watermark_wakes_exactly_the_waiters_it_satisfies() {
        let runtime = runtime();
        let progress = Arc::new(Progress::new(Seq(0), true));
        let tasks: Vec<_> = (1..=10)
            .map(|n| {
                let progress = progress.clone();
                runtime.spawn(async move { progress.reached(Seq(n)).await })
            })
            .collect();
        settle(&runtime);
        assert_eq!(progress.waiting(), 10);
        // Written is not enough with fsync = always.
        progress.written(Seq(10));
        settle(&runtime);
        assert_eq!(progress.waiting(), 10);
        progress.synced(Seq(4));
        settle(&runtime);
        assert_eq!(progress.waiting(), 6, "seqs 1..=4 woken, 5..=10 still wait");
        for task in &tasks[..4] {
            assert!(task.is_finished());
        }
        for task in &tasks[4..] {
            assert!(!task.is_finished());
        }
        progress.fail();
        for (n, task) in tasks.into_iter().enumerate() {
            let answer = runtime.block_on(task).unwrap();
            let expected = if n < 4 { Ok(()) } else { Err(JournalFailed) };
            assert_eq!(answer, expected, "seq {}", n + 1);
        }
        assert_eq!(runtime.block_on(progress.reached(Seq(3))), Ok(()));
        assert_eq!(
            runtime.block_on(progress.reached(Seq(5))),
            Err(JournalFailed)
        );
        assert!(!progress.wait_synced(Seq(5)));
        assert!(progress.wait_synced(Seq(4)));
    }

    #[test]
    fn written_acknowledges_when_not_on_sync() {
        let runtime = runtime();
        let progress = Progress::new(Seq(7), false);
        assert_eq!(runtime.block_on(progress.reached(Seq(7))), Ok(()));
        progress.written(Seq(9));
        assert_eq!(runtime.block_on(progress.reached(Seq(9))), Ok(()));
        assert_eq!(progress.waiting(), 0);
    }
}
