//! A shop order's ledger of money and stock moved, and the one table of
//! moves a shop order may make. `broker::settle` applies both to every
//! change of a shop order.

use serde::{Deserialize, Serialize};

use super::{ReturnStatus, ShopOrder};
use crate::catalog::ProductId;
use crate::model::{Millis, Stage};
use crate::money::Money;

/// Units per product, ascending by product id.
pub type Units = std::collections::BTreeMap<ProductId, u64>;

/// The money and stock an order moved, the one record every give-back and
/// refund is bounded by: what was charged and not yet given back or
/// refunded is all that can ever come back, and only units taken and not
/// yet put back can go back in stock. Processing fills `charged` and
/// `items_taken`; a cancellation (from any API) gives back everything
/// outstanding; a refund credits at most what is outstanding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ledger {
    /// Taken from the customer's balance when the order was processed.
    pub charged: Money,
    /// Credited back by the cancellation.
    pub given_back: Money,
    /// Credited by a refund of returned items.
    pub refunded: Money,
    /// Units taken from stock when the order was placed or processed.
    #[serde(default, skip_serializing_if = "Units::is_empty", with = "units_list")]
    #[schema(value_type = Vec<crate::shop::ReturnItem>)]
    pub items_taken: Units,
    /// Units put back in stock (by the cancellation or a restocking refund).
    #[serde(default, skip_serializing_if = "Units::is_empty", with = "units_list")]
    #[schema(value_type = Vec<crate::shop::ReturnItem>)]
    pub items_returned: Units,
    /// When each movement happened (revenue is reported by these times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_back_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<Millis>,
}

/// What a ledger change moves: units back to stock, money back to the customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GiveBack {
    pub units: Units,
    pub money: Money,
}

impl GiveBack {
    pub fn is_empty(&self) -> bool {
        self.money == Money::ZERO && self.units.values().all(|u| *u == 0)
    }
}

impl Ledger {
    pub fn is_empty(&self) -> bool {
        *self == Ledger::default()
    }

    /// Whether anything was ever charged or taken.
    pub fn was_charged(&self) -> bool {
        self.charged_at.is_some()
    }

    /// Money charged and not yet given back or refunded (never negative).
    pub fn outstanding(&self) -> Money {
        let back = self.given_back.0.saturating_add(self.refunded.0);
        Money(self.charged.0.saturating_sub(back).max(0))
    }

    /// Units taken and not yet put back, per product.
    pub fn units_out(&self) -> Units {
        self.items_taken
            .iter()
            .map(|(p, taken)| {
                let back = self.items_returned.get(p).copied().unwrap_or(0);
                (*p, taken.saturating_sub(back))
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Records units taken from stock when the order was placed (the
    /// Order Management API): nothing is charged until processing.
    pub fn take(&mut self, units: &Units) {
        merge_units(&mut self.items_taken, units);
        self.items_taken.retain(|_, n| *n > 0);
    }

    /// Records the charge of processing: `money`, and `units` the order
    /// holds from now on (those taken at placement included), at `at`.
    pub fn charge(&mut self, money: Money, units: Units, at: Millis) {
        self.charged = money;
        self.items_taken = units.into_iter().filter(|(_, n)| *n > 0).collect();
        self.charged_at = Some(at);
    }

    /// Gives back everything outstanding (a cancellation) and returns it.
    pub fn give_back_all(&mut self, at: Millis) -> GiveBack {
        let back = GiveBack {
            units: self.units_out(),
            money: self.outstanding(),
        };
        self.given_back = Money(self.given_back.0 + back.money.0);
        merge_units(&mut self.items_returned, &back.units);
        if !back.is_empty() {
            self.given_back_at = Some(at);
        }
        back
    }

    /// Refunds up to `amount` and puts back up to `units`, each bounded by
    /// what is outstanding; returns what it actually moves.
    pub fn refund(&mut self, amount: Money, units: &Units, at: Millis) -> GiveBack {
        let out = self.units_out();
        let units: Units = units
            .iter()
            .map(|(p, n)| (*p, (*n).min(out.get(p).copied().unwrap_or(0))))
            .filter(|(_, n)| *n > 0)
            .collect();
        let money = Money(amount.0.clamp(0, self.outstanding().0));
        self.refunded = Money(self.refunded.0 + money.0);
        merge_units(&mut self.items_returned, &units);
        self.refunded_at = Some(at);
        GiveBack { units, money }
    }

    /// For orders journaled before ledgers existed: a processed order was
    /// charged its grand total and took its items; a cancelled one got
    /// them back.
    pub fn legacy(shop: &ShopOrder, stage: Stage) -> Ledger {
        let mut ledger = Ledger::default();
        if let Some(at) = shop.processed {
            let mut units = Units::new();
            for item in &shop.items {
                *units.entry(item.product_id).or_default() += item.quantity;
            }
            ledger.charge(shop.totals.grand_total, units, at);
            if stage == Stage::Cancelled {
                ledger.give_back_all(at);
            }
        }
        ledger
    }
}

fn merge_units(to: &mut Units, units: &Units) {
    for (p, n) in units {
        let slot = to.entry(*p).or_default();
        *slot = slot.saturating_add(*n);
    }
}

/// Units as a list of `{product_id, quantity}` (JSON maps have text keys).
mod units_list {
    use super::{ProductId, Units};
    use crate::shop::ReturnItem;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(units: &Units, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<ReturnItem> = units
            .iter()
            .map(|(p, q)| ReturnItem {
                product_id: *p,
                quantity: *q,
            })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Units, D::Error> {
        let list = Vec::<ReturnItem>::deserialize(d)?;
        let mut units = Units::new();
        for item in list {
            let slot: &mut u64 = units.entry(ProductId(item.product_id.0)).or_default();
            *slot = slot.saturating_add(item.quantity);
        }
        Ok(units)
    }
}

/// The one table of moves a shop order may make, whichever API asks: the
/// stage it is in, to the stage a change would give it (`reworded`: the
/// change gives it another status word). A cancelled order and a refunded
/// one are final; a completed order keeps its status and may only be
/// cancelled (which gives back what it was charged) — feedback and returns
/// change it without a new word; a scheduled one only becomes new at its
/// time or is cancelled; nothing goes back to scheduled.
pub fn check_move(shop: &ShopOrder, from: Stage, to: Stage, reworded: bool) -> Result<(), String> {
    if from == Stage::Cancelled {
        return Err("order is cancelled; it is final".into());
    }
    if shop
        .return_request
        .as_ref()
        .is_some_and(|r| r.status == ReturnStatus::Refunded)
    {
        return Err("order was refunded; it is final".into());
    }
    let allowed = match from {
        Stage::Scheduled => matches!(to, Stage::Scheduled | Stage::New | Stage::Cancelled),
        Stage::New | Stage::InProgress => to != Stage::Scheduled,
        Stage::Completed => to == Stage::Cancelled || (to == Stage::Completed && !reworded),
        Stage::Cancelled => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(format!("order is {from}; it cannot become {to}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charged() -> Ledger {
        let mut l = Ledger::default();
        l.charge(
            Money(2200),
            [(ProductId(1), 2), (ProductId(2), 0)].into(),
            Millis(1),
        );
        l
    }

    #[test]
    fn give_backs_and_refunds_never_pass_what_was_charged() {
        let mut l = charged();
        assert_eq!(
            l.items_taken,
            Units::from([(ProductId(1), 2)]),
            "no zero lines"
        );
        let refund = l.refund(Money(500), &[(ProductId(1), 5)].into(), Millis(2));
        assert_eq!(refund.money, Money(500));
        assert_eq!(
            refund.units,
            Units::from([(ProductId(1), 2)]),
            "at most what was taken"
        );
        let back = l.give_back_all(Millis(3));
        assert_eq!(back.money, Money(1700));
        assert!(back.units.is_empty());
        assert!(l.give_back_all(Millis(4)).is_empty(), "nothing twice");
        assert_eq!(
            l.refund(Money(1), &Units::new(), Millis(5)).money,
            Money::ZERO
        );
        assert_eq!(l.outstanding(), Money::ZERO);
        assert!(
            Ledger::default().give_back_all(Millis(1)).is_empty(),
            "never charged"
        );
    }

    #[test]
    fn the_table_of_moves() {
        let mut shop = crate::shop::tests::empty_shop();
        use Stage::*;
        for (from, to, reworded, ok) in [
            (New, InProgress, true, true),
            (InProgress, New, true, true),
            (InProgress, Completed, true, true),
            (New, Scheduled, true, false),
            (Scheduled, New, true, true),
            (Scheduled, InProgress, true, false),
            (Completed, Completed, false, true),
            (Completed, Completed, true, false),
            (Completed, InProgress, true, false),
            (Completed, Cancelled, true, true),
            (Cancelled, Cancelled, false, false),
            (Cancelled, New, true, false),
        ] {
            assert_eq!(
                check_move(&shop, from, to, reworded).is_ok(),
                ok,
                "{from} → {to}"
            );
        }
        shop.return_request = Some(crate::shop::Return {
            status: ReturnStatus::Refunded,
            items: Vec::new(),
            reason: String::new(),
            amount: Money::ZERO,
            requested_at: Millis(0),
        });
        assert!(
            check_move(&shop, Completed, Cancelled, true).is_err(),
            "refunded is final"
        );
    }
}
