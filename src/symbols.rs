//! Interned texts. Status words and orderbot ids repeat across thousands of
//! orders, so each order stores a 4-byte [`Sym`] instead of a string: this is
//! what keeps an order at 40 bytes. The table only grows, so it has a hard cap
//! (`limits.max_symbols`); past it, new words are refused with a clear error.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

/// A handle to an interned text. `Option<Sym>` is 4 bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(NonZeroU32);

/// Interning failed because the table holds `limits.max_symbols` texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolsFull {
    pub limit: usize,
}

#[derive(Default)]
struct Table {
    /// foldhash: cheap, and seeded at random per table.
    ids: HashMap<Arc<str>, Sym, foldhash::fast::RandomState>,
    /// `texts[sym - 1]` is the text of `sym`.
    texts: Vec<Arc<str>>,
    /// How many texts came from `reserve` and do not count against the limit.
    reserved: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client,
    Reserved,
    Restored,
}

pub struct Symbols {
    /// One lock for both directions; writers only take it for a word never seen
    /// before, which is rare once a system is warm.
    table: RwLock<Table>,
    limit: usize,
}

impl Symbols {
    pub fn new(limit: usize) -> Self {
        let limit = limit.min(u32::MAX as usize - 1);
        Symbols {
            table: RwLock::new(Table::default()),
            limit,
        }
    }

    /// The symbol for `text`, adding it to the table if it is new.
    pub fn intern(&self, text: &str) -> Result<Sym, SymbolsFull> {
        self.add(text, Kind::Client)
    }

    /// Like `intern`, for the words the broker itself needs (configured stage
    /// words, lifecycle words): never refused, not counted against the limit.
    pub fn reserve(&self, text: &str) -> Sym {
        self.add(text, Kind::Reserved)
            .expect("reserved words are never refused")
    }

    /// Like `intern`, for texts recovered from disk: they were accepted once,
    /// so they are counted but never refused (even if the limit was lowered).
    pub fn restore(&self, text: &str) -> Sym {
        self.add(text, Kind::Restored)
            .expect("restored words are never refused")
    }

    fn add(&self, text: &str, kind: Kind) -> Result<Sym, SymbolsFull> {
        if let Some(&sym) = self.table.read().ids.get(text) {
            return Ok(sym);
        }
        let mut table = self.table.write();
        if let Some(&sym) = table.ids.get(text) {
            return Ok(sym);
        }
        if kind == Kind::Reserved {
            table.reserved += 1;
        } else if kind == Kind::Client && table.texts.len() - table.reserved >= self.limit {
            return Err(SymbolsFull { limit: self.limit });
        }
        let n = u32::try_from(table.texts.len() + 1).expect("limit keeps ids in u32");
        let sym = Sym(NonZeroU32::new(n).expect("n >= 1"));
        let text: Arc<str> = Arc::from(text);
        table.texts.push(text.clone());
        table.ids.insert(text, sym);
        Ok(sym)
    }

    /// The symbol for `text` if it was ever interned; never adds one.
    pub fn lookup(&self, text: &str) -> Option<Sym> {
        self.table.read().ids.get(text).copied()
    }

    /// A read view for resolving many symbols under one lock acquisition.
    /// Do not hold it across `.await`.
    pub fn reader(&self) -> SymbolsReader<'_> {
        SymbolsReader(self.table.read())
    }

    pub fn len(&self) -> usize {
        self.table.read().texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct SymbolsReader<'a>(RwLockReadGuard<'a, Table>);

impl SymbolsReader<'_> {
    pub fn text(&self, sym: Sym) -> &str {
        // Syms are only made by `intern` on this table, and texts never shrink.
        &self.0.texts[sym.0.get() as usize - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_bounded() {
        let symbols = Symbols::new(2);
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
}
