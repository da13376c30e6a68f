//! Interned texts. Status words and orderbot ids repeat across thousands of
//! orders, so each order stores a 4-byte [`Sym`] instead of a string: this is
//! what keeps an order at 40 bytes. The table has a hard cap
//! (`limits.max_symbols`); past it, new words are refused with a clear error.
//!
//! Words no order uses any more are reclaimed by a sweep
//! ([`crate::Broker::reclaim_symbols`]), so a client sending ever new
//! orderbot ids to a few orders cannot fill the table for good. Copies of
//! orders live outside the map (events, answers being rendered), so a
//! symbol is only freed once nobody can still resolve it. That is what a
//! [`Pin`] is for: **whoever reads a `Sym` (from the map, an event, or the
//! table) and resolves or stores it later holds a pin from before the read
//! until it is done**. `intern`, `lookup` and `reader` check (in debug
//! builds, so in every test) that the thread holds one; the rule "from
//! before the read" is by convention: every request handler that answers
//! at once runs under one (`http::App::handler`), and the feed's readers
//! take a batch only under one ([`crate::broker::Subscription::take`]).
//!
//! A sweep ([`Sweep`]):
//! 1. moves the epoch on and waits for every pin of the epoch before to be
//!    dropped: every writer that interned a word before the sweep began has
//!    committed it (or given up);
//! 2. the broker marks every symbol a live order, an event in the history,
//!    or a change the journal has not written yet uses;
//! 3. `unlink` takes the unmarked words that no pin touched since step 1
//!    out of the index, so nobody can get them again;
//! 4. `finish` moves the epoch on again, waits for the pins that might have
//!    read them before step 3, and frees their slots for new words.

use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard};

/// A handle to an interned text. `Option<Sym>` is 4 bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(NonZeroU32);

impl Sym {
    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// Interning failed because the table holds `limits.max_symbols` texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolsFull {
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A client's (or a recovered) word: counted, may be reclaimed.
    Counted,
    /// The broker's own word (stage and lifecycle words): kept for good.
    Reserved,
    /// Out of the index, waiting for the pins that might still read it.
    Doomed,
    Free,
}

struct Slot {
    text: Option<Arc<str>>,
    state: State,
    /// The epoch of the last pin that interned or looked the word up.
    touched: AtomicU64,
}

#[derive(Default)]
struct Table {
    /// foldhash: cheap, and seeded at random per table.
    ids: HashMap<Arc<str>, Sym, foldhash::fast::RandomState>,
    /// `slots[sym - 1]` is the slot of `sym`.
    slots: Vec<Slot>,
    /// Freed slots, reused before the table grows.
    free: Vec<u32>,
    /// Counted words (not reserved, not doomed or free): what the limit caps.
    counted: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client,
    Reserved,
    Restored,
}

/// Counters of pins per epoch parity, spread over cache lines so writers
/// on different threads do not share one.
const PIN_SHARDS: usize = 16;

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicUsize);

#[derive(Default)]
struct Pins {
    epoch: AtomicU64,
    counts: [[Padded; PIN_SHARDS]; 2],
}

thread_local! {
    static PIN_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Pins this thread holds (a pin never leaves its thread).
    static PINNED: Cell<usize> = const { Cell::new(0) };
}

/// Whether this thread holds a pin: checked (in debug builds, so in every
/// test) wherever a symbol is read, interned or looked up.
pub fn pinned() -> bool {
    PINNED.with(|p| p.get() > 0)
}

fn pin_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    PIN_SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % PIN_SHARDS);
        }
        s.get()
    })
}

impl Pins {
    fn count(&self, epoch: u64) -> usize {
        self.counts[(epoch & 1) as usize]
            .iter()
            .map(|c| c.0.load(Ordering::SeqCst))
            .sum()
    }

    /// Moves the epoch on and waits until no pin of the old one is held.
    fn advance(&self) -> u64 {
        let old = self.epoch.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let mut warned = false;
        while self.count(old) > 0 {
            if !warned && started.elapsed() > Duration::from_secs(5) {
                tracing::warn!("symbol sweep: a pin has been held for 5 s; still waiting");
                warned = true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        old + 1
    }
}

/// Proof that the holder may read symbols: while it lives, no symbol it
/// could have read is freed. Not `Send`, so it is never held across an
/// `.await` by accident (a pin held long only delays sweeps).
pub struct Pin<'a> {
    pins: &'a Pins,
    epoch: u64,
    shard: usize,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        PINNED.with(|p| p.set(p.get() - 1));
        self.pins.counts[(self.epoch & 1) as usize][self.shard]
            .0
            .fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Symbols {
    /// One lock for both directions; writers only take it for a word never seen
    /// before, which is rare once a system is warm.
    table: RwLock<Table>,
    pins: Pins,
    /// One sweep at a time (the epoch rule needs it).
    sweeping: parking_lot::Mutex<()>,
    limit: usize,
    /// Counted words past which a sweep is due ([`Symbols::due`]).
    threshold: AtomicUsize,
    /// Set when a word was refused because the table was full.
    refused: std::sync::atomic::AtomicBool,
    /// Wakes the task that sweeps when one is due.
    due: tokio::sync::Notify,
}

impl Symbols {
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(u32::MAX as usize - 1);
        Symbols {
            table: RwLock::new(Table::default()),
            pins: Pins::default(),
            sweeping: parking_lot::Mutex::new(()),
            limit,
            threshold: AtomicUsize::new(limit / 2),
            refused: std::sync::atomic::AtomicBool::new(false),
            due: tokio::sync::Notify::new(),
        }
    }

    /// Holds off the freeing of any symbol read from now until it drops. Take
    /// it before reading an order (map or event), keep it until done.
    pub fn pin(&self) -> Pin<'_> {
        let shard = pin_shard();
        loop {
            let epoch = self.pins.epoch.load(Ordering::SeqCst);
            let count = &self.pins.counts[(epoch & 1) as usize][shard].0;
            count.fetch_add(1, Ordering::SeqCst);
            // A sweep that moved the epoch on meanwhile may not have seen
            // the count: register under the new epoch instead.
            if self.pins.epoch.load(Ordering::SeqCst) == epoch {
                PINNED.with(|p| p.set(p.get() + 1));
                return Pin {
                    pins: &self.pins,
                    epoch,
                    shard,
                    _not_send: PhantomData,
                };
            }
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The symbol for `text`, adding it to the table if it is new. The
    /// caller holds a pin until it has committed the symbol (or dropped it).
    pub fn intern(&self, text: &str) -> Result<Sym, SymbolsFull> {
        debug_assert!(pinned(), "intern without a pin");
        self.add(text, Kind::Client)
    }

    /// Like `intern`, for the words the broker itself needs (configured stage
    /// words, lifecycle words): never refused, not counted against the
    /// limit, never reclaimed.
    pub fn reserve(&self, text: &str) -> Sym {
        self.add(text, Kind::Reserved)
            .expect("reserved words are never refused")
    }

    /// Like `intern`, for texts recovered from disk: they were accepted once,
    /// so they are counted but never refused (even if the limit was lowered).
    /// Recovery runs before anything sweeps, so it needs no pin.
    pub fn restore(&self, text: &str) -> Sym {
        self.add(text, Kind::Restored)
            .expect("restored words are never refused")
    }

    fn add(&self, text: &str, kind: Kind) -> Result<Sym, SymbolsFull> {
        // The epoch now is at least that of the pin protecting the word, so
        // a sweep that began after the pin keeps it (see `touch`).
        let epoch = self.pins.epoch.load(Ordering::SeqCst);
        {
            let table = self.table.read();
            if let Some(&sym) = table.ids.get(text) {
                let slot = &table.slots[sym.index()];
                if kind != Kind::Reserved || slot.state == State::Reserved {
                    touch(slot, epoch);
                    return Ok(sym);
                }
            }
        }
        let mut table = self.table.write();
        if let Some(&sym) = table.ids.get(text) {
            let slot = &mut table.slots[sym.index()];
            touch(slot, epoch);
            if kind == Kind::Reserved && slot.state == State::Counted {
                // A client used the word before the broker needed it.
                slot.state = State::Reserved;
                table.counted -= 1;
            }
            return Ok(sym);
        }
        if kind == Kind::Client && table.counted >= self.limit {
            self.refused.store(true, Ordering::Relaxed);
            self.due.notify_one();
            return Err(SymbolsFull { limit: self.limit });
        }
        let text: Arc<str> = Arc::from(text);
        let slot = Slot {
            text: Some(text.clone()),
            state: if kind == Kind::Reserved {
                State::Reserved
            } else {
                State::Counted
            },
            touched: AtomicU64::new(epoch),
        };
        let index = match table.free.pop() {
            Some(i) => {
                table.slots[i as usize] = slot;
                i as usize
            }
            None => {
                table.slots.push(slot);
                table.slots.len() - 1
            }
        };
        let n = u32::try_from(index + 1).expect("the limit keeps ids in u32");
        let sym = Sym(NonZeroU32::new(n).expect("n >= 1"));
        if kind != Kind::Reserved {
            table.counted += 1;
            if table.counted >= self.threshold.load(Ordering::Relaxed) {
                self.due.notify_one();
            }
        }
        table.ids.insert(text, sym);
        Ok(sym)
    }

    /// The symbol for `text` if it is in the table; never adds one.
    pub fn lookup(&self, text: &str) -> Option<Sym> {
        debug_assert!(pinned(), "lookup without a pin");
        let epoch = self.pins.epoch.load(Ordering::SeqCst);
        let table = self.table.read();
        let sym = table.ids.get(text).copied()?;
        touch(&table.slots[sym.index()], epoch);
        Some(sym)
    }

    /// A read view for resolving many symbols under one lock acquisition.
    /// Do not hold it across `.await`, nor take another lock while holding it.
    pub fn reader(&self) -> SymbolsReader<'_> {
        debug_assert!(pinned(), "symbols read without a pin");
        SymbolsReader(self.table.read())
    }

    /// Words in the table that count against the limit.
    pub fn len(&self) -> usize {
        self.table.read().counted
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a sweep is worth its scan: the table is half full and has
    /// grown by an eighth of the limit since the last sweep left it, or a
    /// word was refused since.
    pub fn due(&self) -> bool {
        self.refused.load(Ordering::Relaxed) || self.len() >= self.threshold.load(Ordering::Relaxed)
    }

    /// Resolves when a sweep may have become due (see [`Symbols::due`]).
    pub async fn due_changed(&self) {
        self.due.notified().await
    }

    /// Starts a sweep (step 1 in the module docs): blocks until every pin
    /// taken before it is dropped. Run it off the async threads.
    pub fn sweep(&self) -> Sweep<'_> {
        debug_assert!(!pinned(), "a sweep would wait for its own thread's pin");
        let one = self.sweeping.lock();
        let epoch = self.pins.advance();
        let slots = self.table.read().slots.len();
        Sweep {
            symbols: self,
            _one: one,
            epoch,
            marked: vec![0; slots.div_ceil(64)],
        }
    }
}

fn touch(slot: &Slot, epoch: u64) {
    // Only a sweep moves the epoch, so this rarely writes a shared line.
    if slot.touched.load(Ordering::Relaxed) < epoch {
        slot.touched.fetch_max(epoch, Ordering::Relaxed);
    }
}

/// One reclamation pass; see the module docs for its steps.
pub struct Sweep<'a> {
    symbols: &'a Symbols,
    _one: parking_lot::MutexGuard<'a, ()>,
    /// The epoch the sweep began: pins of it may hold anything they touch.
    epoch: u64,
    /// One bit per slot that existed when the sweep began.
    marked: Vec<u64>,
}

impl Sweep<'_> {
    /// Marks a symbol as in use (step 2).
    pub fn mark(&mut self, sym: Sym) {
        let i = sym.index();
        if let Some(word) = self.marked.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    fn marked(&self, i: usize) -> bool {
        self.marked
            .get(i / 64)
            .is_none_or(|w| w & (1 << (i % 64)) != 0)
    }

    /// Takes every unmarked, untouched counted word out of the index
    /// (step 3), then waits for the pins that may have read one and frees
    /// their slots (step 4). Returns how many words were freed.
    pub fn finish(self) -> usize {
        let symbols = self.symbols;
        let doomed: Vec<usize> = {
            let mut table = symbols.table.write();
            let table = &mut *table;
            let mut doomed = Vec::new();
            for (i, slot) in table.slots.iter_mut().enumerate() {
                if slot.state != State::Counted
                    || self.marked(i)
                    || slot.touched.load(Ordering::Relaxed) >= self.epoch
                {
                    continue;
                }
                if let Some(text) = &slot.text {
                    table.ids.remove(text);
                }
                slot.state = State::Doomed;
                table.counted -= 1;
                doomed.push(i);
            }
            doomed
        };
        let left = symbols.table.read().counted;
        symbols.threshold.store(
            (symbols.limit / 2).max(left + symbols.limit / 8),
            Ordering::Relaxed,
        );
        symbols.refused.store(false, Ordering::Relaxed);
        if doomed.is_empty() {
            return 0;
        }
        symbols.pins.advance();
        let mut table = symbols.table.write();
        for &i in &doomed {
            let slot = &mut table.slots[i];
            slot.text = None;
            slot.state = State::Free;
            table.free.push(i as u32);
        }
        let keep = table.counted * 2;
        table.ids.shrink_to(keep);
        doomed.len()
    }
}

pub struct SymbolsReader<'a>(RwLockReadGuard<'a, Table>);

impl SymbolsReader<'_> {
    pub fn text(&self, sym: Sym) -> &str {
        // Syms are only made by this table, and a pinned reader's are never
        // freed while it reads (the module docs).
        let text = self.0.slots[sym.index()].text.as_deref();
        debug_assert!(text.is_some(), "a freed symbol was read without a pin");
        text.unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_bounded() {
        let symbols = Symbols::new(2);
        let _pin = symbols.pin();
        let reserved = symbols.reserve("Order Initiated");
        let a = symbols.intern("Mixing").unwrap();
        assert_eq!(symbols.intern("Mixing").unwrap(), a);
        let b = symbols.intern("Order Served").unwrap();
        assert_ne!(a, b);
        assert_eq!(symbols.intern("third"), Err(SymbolsFull { limit: 2 }));
        assert_eq!(symbols.lookup("third"), None);
        let reader = symbols.reader();
        assert_eq!(reader.text(a), "Mixing");
        assert_eq!(reader.text(b), "Order Served");
        assert_eq!(reader.text(reserved), "Order Initiated");
    }

    #[test]
    fn concurrent_interning_gives_one_symbol_per_text() {
        let symbols = Arc::new(Symbols::new(1000));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let symbols = symbols.clone();
                std::thread::spawn(move || {
                    let _pin = symbols.pin();
                    (0..200)
                        .map(|i| symbols.intern(&format!("w{}", i % 50)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(symbols.len(), 50);
    }

    #[test]
    fn a_sweep_frees_unmarked_words_and_their_slots_are_reused() {
        let symbols = Symbols::new(3);
        let kept = symbols.reserve("Order Served");
        let (a, b, c) = {
            let _pin = symbols.pin();
            let a = symbols.intern("a").unwrap();
            let b = symbols.intern("b").unwrap();
            let c = symbols.intern("c").unwrap();
            assert!(symbols.intern("d").is_err());
            (a, b, c)
        };
        let mut sweep = symbols.sweep();
        sweep.mark(b);
        assert_eq!(sweep.finish(), 2, "a and c are freed");
        assert_eq!(symbols.len(), 1);
        let _pin = symbols.pin();
        assert_eq!(symbols.lookup("a"), None);
        let d = symbols.intern("d").unwrap();
        assert!(d == a || d == c, "a freed slot is reused");
        let reader = symbols.reader();
        assert_eq!(reader.text(d), "d");
        assert_eq!(reader.text(b), "b");
        assert_eq!(reader.text(kept), "Order Served");
        drop(reader);
        drop(_pin);
        // Reserved words are never reclaimed.
        assert_eq!(symbols.sweep().finish(), 2);
        let _pin = symbols.pin();
        assert_eq!(symbols.lookup("Order Served"), Some(kept));
    }

    #[test]
    fn a_word_touched_while_a_sweep_runs_is_kept() {
        let symbols = Arc::new(Symbols::new(10));
        let a = {
            let _pin = symbols.pin();
            symbols.intern("a").unwrap()
        };
        let sweep = symbols.sweep();
        // A writer interns "a" again after the sweep began, to store it.
        let _pin = symbols.pin();
        assert_eq!(symbols.intern("a").unwrap(), a);
        assert_eq!(sweep.finish(), 0, "touched since the sweep began");
        assert_eq!(symbols.reader().text(a), "a");
    }

    #[test]
    fn a_sweep_waits_for_the_pins_taken_before_it() {
        let symbols = Arc::new(Symbols::new(10));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let symbols = symbols.clone();
            std::thread::spawn(move || {
                let _pin = symbols.pin();
                let a = symbols.intern("a").unwrap();
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                symbols.reader().text(a).to_string()
            })
        };
        held_rx.recv().unwrap();
        let sweeper = {
            let symbols = symbols.clone();
            std::thread::spawn(move || symbols.sweep().finish())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !sweeper.is_finished(),
            "the sweep waits for the writer's pin"
        );
        go_tx.send(()).unwrap();
        assert_eq!(writer.join().unwrap(), "a");
        // The writer stored nothing, so the word is freed once its pin is gone.
        assert_eq!(sweeper.join().unwrap(), 1);
    }

    #[test]
    fn a_reserved_word_a_client_used_first_is_kept_for_good() {
        let symbols = Symbols::new(10);
        let a = {
            let _pin = symbols.pin();
            symbols.intern("Out for delivery").unwrap()
        };
        assert_eq!(symbols.reserve("Out for delivery"), a);
        assert_eq!(symbols.len(), 0, "reserved words do not count");
        assert_eq!(symbols.sweep().finish(), 0);
    }
}
