//! Reclaiming interned words no order uses any more (see
//! [`crate::symbols`] for the rule that makes it safe): the broker's part
//! of a sweep is to mark every word that something may still resolve.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Broker;
use crate::feed::{Change, Event};
use crate::model::{Order, Seq};
use crate::symbols::Sweep;

/// How long a sweep waits for the journal writer to catch up before it
/// gives up (and leaves every word for the next one).
const JOURNAL_CATCH_UP: Duration = Duration::from_secs(5);

impl Broker {
    /// Frees the interned words that no live order, no event in the
    /// history and no change the journal has still to write uses; returns
    /// how many. Blocking (it waits for pins and scans every order): run it
    /// off the async threads. Changes go on meanwhile.
    pub fn reclaim_symbols(&self) -> usize {
        // The map scan below is not one instant: every order state committed
        // from now until it ends is recorded, so each order's words at its
        // end are in the map as scanned or in the record.
        self.sequencer().marking = Some(Vec::new());
        /// Stops the record even if the sweep ends early (or panics).
        struct Stop<'a>(&'a Broker);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.sequencer().marking = None;
            }
        }
        let stop = Stop(self);
        // Every writer that interned a word before the sweep began has
        // committed it once this returns.
        let mut sweep = self.inner.symbols.sweep();
        for entry in self.inner.orders.iter() {
            mark_order(&mut sweep, entry.value());
        }
        let last = {
            let mut seq = self.sequencer();
            for (status, bot) in seq.marking.take().unwrap_or_default() {
                sweep.mark(status);
                if let Some(bot) = bot {
                    sweep.mark(bot);
                }
            }
            // The history may be replayed to a stream: its words stay too.
            for event in seq.history.iter() {
                mark_event(&mut sweep, event);
            }
            seq.last
        };
        drop(stop);
        // Changes handed to the journal writer are resolved when it writes
        // them; the oldest of them may have left the history already.
        if let Some(journal) = self.journal() {
            let started = Instant::now();
            while Seq(journal.stats.written_seq.load(Ordering::Acquire)) < last {
                if journal.failed() || started.elapsed() > JOURNAL_CATCH_UP {
                    tracing::debug!("symbol sweep: the journal is behind; skipped");
                    return 0;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sweep.finish()
    }

    /// Whether a sweep is due (see [`crate::symbols::Symbols::due`]).
    pub fn symbols_due(&self) -> bool {
        self.inner.symbols.due()
    }

    /// Resolves when a sweep may have become due.
    pub async fn symbols_due_changed(&self) {
        self.inner.symbols.due_changed().await
    }

    /// Interned words that count against `limits.max_symbols`.
    pub fn symbol_count(&self) -> usize {
        self.inner.symbols.len()
    }

    /// `limits.max_symbols`.
    pub fn symbol_limit(&self) -> usize {
        self.inner.symbols.limit()
    }
}

fn mark_order(sweep: &mut Sweep<'_>, order: &Order) {
    sweep.mark(order.status);
    if let Some(bot) = order.orderbot_id {
        sweep.mark(bot);
    }
}

fn mark_event(sweep: &mut Sweep<'_>, event: &Event) {
    match &event.change {
        Change::Order { order, .. }
        | Change::OrderRemoved {
            evicted: Some(order),
            ..
        } => mark_order(sweep, order),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::OrderId;
    use std::sync::atomic::AtomicBool;

    const ORDERS: u64 = 50;

    fn broker(max_symbols: usize) -> Broker {
        let mut config = Config::default();
        config.limits.max_symbols = max_symbols;
        config.events.history_size = 64;
        Broker::new(&config)
    }

    /// Writers give each order ever new orderbot ids naming the order;
    /// readers resolve orders from the map and from the history while a
    /// sweeper frees what is unused. Every text a reader resolves must be
    /// one its order was given, and the writers never stay refused.
    #[test]
    fn churning_words_are_reclaimed_and_never_misread() {
        let broker = broker(400);
        let stop = AtomicBool::new(false);
        let misread = AtomicBool::new(false);
        let check = |id: OrderId, bot: Option<&str>| {
            if let Some(bot) = bot
                && !bot.starts_with(&format!("o{}-", id.0))
            {
                misread.store(true, Ordering::Relaxed);
            }
        };
        let (written, swept) = std::thread::scope(|s| {
            let writers: Vec<_> = (0..2u64)
                .map(|t| {
                    let broker = &broker;
                    s.spawn(move || {
                        let mut refused_since = None::<Instant>;
                        for n in 0..6_000u64 {
                            let id = OrderId((n * 7 + t) % ORDERS);
                            let bot = format!("o{}-t{t}-{n}", id.0);
                            loop {
                                match broker.update_status(id, "Mixing", Some(&bot)) {
                                    Ok(_) => break,
                                    Err(crate::BrokerError::TooManySymbols { .. }) => {
                                        let since = *refused_since.get_or_insert_with(Instant::now);
                                        assert!(
                                            since.elapsed() < Duration::from_secs(5),
                                            "refused for 5 s: nothing was reclaimed"
                                        );
                                        std::thread::sleep(Duration::from_millis(1));
                                    }
                                    Err(e) => panic!("{e}"),
                                }
                            }
                            refused_since = None;
                        }
                        6_000u64
                    })
                })
                .collect();
            let sweeper = s.spawn(|| {
                let mut freed = 0;
                while !stop.load(Ordering::Relaxed) {
                    freed += broker.reclaim_symbols();
                }
                freed
            });
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        for n in 0..ORDERS {
                            if let Some(view) = broker.view(OrderId(n)) {
                                check(view.id, view.orderbot_id.as_deref());
                            }
                        }
                        let pin = broker.pin();
                        let from = Seq(broker.last_seq().0.saturating_sub(32));
                        let Ok(events) = broker.events_since(from, 64) else {
                            continue;
                        };
                        let symbols = broker.symbols();
                        for event in &events {
                            if let Some((id, order)) = event.order() {
                                check(id, order.orderbot_id.map(|b| symbols.text(b)));
                            }
                        }
                        drop(symbols);
                        drop(pin);
                    }
                });
            }
            let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
            stop.store(true, Ordering::Relaxed);
            (written, sweeper.join().unwrap())
        });
        assert_eq!(written, 12_000);
        assert!(
            !misread.load(Ordering::Relaxed),
            "a reader resolved another order's word"
        );
        assert!(swept > 10_000, "only {swept} words were reclaimed");
        // What is left: the orders' own words, the history's, and not more.
        broker.reclaim_symbols();
        assert!(broker.symbol_count() <= (ORDERS + 64) as usize + 1);
        for n in 0..ORDERS {
            let view = broker.view(OrderId(n)).unwrap();
            check(view.id, view.orderbot_id.as_deref());
        }
        assert!(!misread.load(Ordering::Relaxed));
    }

    /// Writes that go on during the map scan, far more than the history
    /// holds, do not make the sweep give up (it used to, every time).
    #[test]
    fn a_sweep_under_writes_faster_than_the_history_still_frees() {
        let mut config = Config::default();
        config.limits.max_symbols = 1 << 20;
        config.events.history_size = 1;
        let broker = Broker::new(&config);
        for n in 0..20_000u64 {
            broker
                .update_status(OrderId(n), "Mixing", Some(&format!("old-{n}")))
                .unwrap();
            broker
                .update_status(OrderId(n), "Mixing", Some("bot"))
                .unwrap();
        }
        let stop = AtomicBool::new(false);
        let freed = std::thread::scope(|s| {
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    broker
                        .update_status(OrderId(n % 100), "Mixing", Some("bot"))
                        .unwrap();
                }
            });
            let freed = broker.reclaim_symbols();
            stop.store(true, Ordering::Relaxed);
            freed
        });
        assert_eq!(freed, 20_000, "every old-N is free");
        for n in [0, 99, 19_999] {
            assert_eq!(
                broker.view(OrderId(n)).unwrap().orderbot_id.as_deref(),
                Some("bot")
            );
        }
    }

    #[test]
    fn words_of_live_orders_and_of_the_history_are_kept() {
        let broker = broker(1000);
        for n in 0..10 {
            broker
                .update_status(OrderId(n), &format!("s{n}"), Some(&format!("b{n}")))
                .unwrap();
        }
        // Order 0 moves on: its old words are only in the history now.
        broker
            .update_status(OrderId(0), "Mixing", Some("b-new"))
            .unwrap();
        assert_eq!(
            broker.reclaim_symbols(),
            0,
            "the history still holds s0 and b0"
        );
        // Push the history past them.
        for _ in 0..64 {
            broker.update_status(OrderId(1), "s1", None).unwrap();
        }
        assert_eq!(broker.reclaim_symbols(), 2, "s0 and b0 are freed");
        for n in 1..10 {
            let view = broker.view(OrderId(n)).unwrap();
            assert_eq!(view.status, format!("s{n}"));
            assert_eq!(view.orderbot_id, Some(format!("b{n}")));
        }
        let zero = broker.view(OrderId(0)).unwrap();
        assert_eq!(
            (zero.status.as_str(), zero.orderbot_id.as_deref()),
            ("Mixing", Some("b-new"))
        );
    }
}
