//! Money as integer minor units (cents), and rates as parts per ten thousand.
//! Never binary floating point for sums: amounts parse from decimal text
//! exactly, and JSON numbers are read through their shortest decimal form.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An amount in minor units (1/100 of the currency unit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// Parses `12`, `12.5`, `12.50`, `-3.05`; more than two decimals is an error.
    pub fn parse(text: &str) -> Result<Money, String> {
        let cents = parse_fixed(text.trim(), 2)
            .ok_or_else(|| format!("{text:?} is not an amount with at most 2 decimals"))?;
        Ok(Money(cents))
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// `self × quantity`, None on overflow.
    pub fn times(self, quantity: u64) -> Option<Money> {
        i64::try_from(quantity)
            .ok()
            .and_then(|q| self.0.checked_mul(q))
            .map(Money)
    }

    /// `self × rate`, rounded half away from zero to whole minor units.
    pub fn at_rate(self, rate: Rate) -> Money {
        let product = i128::from(self.0) * i128::from(rate.0);
        let rounded = (product.abs() + 5_000) / 10_000 * product.signum();
        Money(i64::try_from(rounded).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// Written as a JSON number (`12.5`): clients of the seed services expect
/// numbers. Exact for every amount below 2^53 minor units.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0 as f64 / 100.0)
    }
}

/// Read from a JSON number or decimal text, exactly.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;
        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount with at most 2 decimals, as a number or text")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                v.checked_mul(100)
                    .map(Money)
                    .ok_or_else(|| E::custom("amount too large"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom("amount too large"))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                // `{}` prints the shortest text that reads back as `v`: 0.1 → "0.1".
                Money::parse(&format!("{v}")).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(MoneyVisitor)
    }
}

/// A rate in parts per ten thousand (basis points): `"0.10"` → 1000.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate(pub i64);

impl Rate {
    /// Parses a fraction such as `"0.1"` or `"0.0725"` (at most 4 decimals, 0 to 1).
    pub fn parse(text: &str) -> Result<Rate, String> {
        match parse_fixed(text.trim(), 4) {
            Some(bp) if (0..=10_000).contains(&bp) => Ok(Rate(bp)),
            _ => Err(format!(
                "{text:?} is not a rate between 0 and 1 with at most 4 decimals"
            )),
        }
    }
}

/// Decimal text → integer scaled by 10^`places`, refusing extra digits.
fn parse_fixed(text: &str, places: u32) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && frac.is_empty()
        || !all_digits(whole)
        || !all_digits(frac)
        || frac.len() > places as usize
    {
        return None;
    }
    let scale = 10i64.pow(places);
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(places - frac.len() as u32)
    };
    let value = whole.checked_mul(scale)?.checked_add(frac_value)?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(Money::parse("12"), Ok(Money(1200)));
        assert_eq!(Money::parse("12.5"), Ok(Money(1250)));
        assert_eq!(Money::parse("0.05"), Ok(Money(5)));
        assert_eq!(Money::parse("-3.10"), Ok(Money(-310)));
        assert_eq!(Money::parse(".5"), Ok(Money(50)));
        for bad in ["", "1.234", "abc", "1e3", "1.2.3", "--1", "-", "."] {
            assert!(Money::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_round_trip_is_exact() {
        for text in ["0.1", "0.2", "19.99", "1234567.89", "\"0.30\"", "7"] {
            let m: Money = serde_json::from_str(text).unwrap();
            let back = serde_json::to_string(&m).unwrap();
            let again: Money = serde_json::from_str(&back).unwrap();
            assert_eq!(m, again, "{text} -> {back}");
        }
        assert_eq!(serde_json::from_str::<Money>("0.1").unwrap(), Money(10));
        assert!(serde_json::from_str::<Money>("0.105").is_err());
        // Sums of cents never drift: 0.1 + 0.2 == 0.3 exactly.
        let sum = Money(10).checked_add(Money(20)).unwrap();
        assert_eq!(serde_json::to_string(&sum).unwrap(), "0.3");
    }

    #[test]
    fn rates_round_half_away_from_zero() {
        let ten_percent = Rate::parse("0.10").unwrap();
        assert_eq!(Money(1005).at_rate(ten_percent), Money(101)); // 100.5 → 101
        assert_eq!(Money(1004).at_rate(ten_percent), Money(100));
        assert_eq!(Money(-1005).at_rate(ten_percent), Money(-101));
        assert_eq!(
            Money(999).at_rate(Rate::parse("0.0725").unwrap()),
            Money(72)
        ); // 72.4275
        assert!(Rate::parse("1.5").is_err());
        assert!(Rate::parse("0.12345").is_err());
        assert_eq!(Money(123).to_string(), "1.23");
        assert_eq!(Money(-5).to_string(), "-0.05");
    }
}
