//! Money as integer minor units (cents), and rates as parts per ten thousand.
//! Never binary floating point: amounts are read from their decimal text
//! (JSON numbers too: serde_json's `arbitrary_precision` keeps a number's
//! text) and written back as exact decimal text.
//!
//! Reading and writing are exact for every `i64` of cents. What the broker
//! holds stays within ±[`Money::MAX`] and [`MAX_UNITS`]: at most 15
//! significant digits, so each amount and quantity is exact even for a
//! client that reads JSON numbers as IEEE doubles (2^53 > 10^15).
//! Arithmetic past them fails; nothing wraps or saturates. The configured
//! `limits.max_amount` and `limits.max_quantity` bound what a request may
//! set, at or below these.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An amount in minor units (1/100 of the currency unit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

/// Most units of a quantity (an item, a return, stock): 15 digits, like
/// amounts, so a quantity is exact for every client.
pub const MAX_UNITS: u64 = 999_999_999_999_999;

/// `a + b` for quantities, None past [`MAX_UNITS`].
pub fn add_units(a: u64, b: u64) -> Option<u64> {
    a.checked_add(b).filter(|n| *n <= MAX_UNITS)
}

/// What serde_json's `arbitrary_precision` calls a number it hands over as
/// its text (a map of this one key to the text).
const JSON_NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl Money {
    pub const ZERO: Money = Money(0);
    /// The largest amount: 9 999 999 999 999.99 (15 significant digits).
    pub const MAX: Money = Money(999_999_999_999_999);
    /// The smallest amount: −[`Money::MAX`].
    pub const MIN: Money = Money(-999_999_999_999_999);

    /// `cents` as an amount, None past ±[`Money::MAX`].
    pub fn bounded(cents: i64) -> Option<Money> {
        (cents.unsigned_abs() <= Money::MAX.0.unsigned_abs()).then_some(Money(cents))
    }

    /// Parses `12`, `12.5`, `12.50`, `-3.05`; more than two decimals is an error.
    pub fn parse(text: &str) -> Result<Money, String> {
        let cents = parse_fixed(text.trim(), 2)
            .ok_or_else(|| format!("{text:?} is not an amount with at most 2 decimals"))?;
        Ok(Money(cents))
    }

    /// Reads a JSON number's text exactly (`7.5`, `750e-2`, `12.500`): its
    /// value must be a whole number of cents that fits an `i64`.
    pub fn from_json_number(text: &str) -> Result<Money, String> {
        match json_cents(text) {
            Some(Ok(cents)) => Ok(cents),
            Some(Err(())) => Err(too_large(text)),
            None => Err(format!("{text} is not an amount with at most 2 decimals")),
        }
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).and_then(Money::bounded)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).and_then(Money::bounded)
    }

    /// `self × quantity`, None past ±[`Money::MAX`].
    pub fn times(self, quantity: u64) -> Option<Money> {
        i64::try_from(quantity)
            .ok()
            .and_then(|q| self.0.checked_mul(q))
            .and_then(Money::bounded)
    }

    /// `self × rate`, rounded half away from zero to whole minor units.
    /// A rate is at most 1, so the result is never larger than `self`.
    pub fn at_rate(self, rate: Rate) -> Money {
        let product = i128::from(self.0) * i128::from(rate.0.clamp(0, 10_000));
        let rounded = (product.abs() + 5_000) / 10_000 * product.signum();
        Money(i64::try_from(rounded).expect("|self × rate| ≤ |self|"))
    }

    /// The amount as JSON shows it, the way it always has: the shortest
    /// decimal with at least one decimal place (`7.5`, `12.0`, `-0.05`).
    pub fn json_text(self) -> String {
        self.write_json_text(&mut [0; 24]).to_string()
    }

    /// [`Money::json_text`] into `buf`, without allocating.
    fn write_json_text(self, buf: &mut [u8; 24]) -> &str {
        use std::io::Write;
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (whole, cents) = (abs / 100, abs % 100);
        let mut out = &mut buf[..];
        // At most 1 + 18 + 1 + 2 bytes: always fits.
        let written = if cents % 10 == 0 {
            write!(out, "{sign}{whole}.{}", cents / 10)
        } else {
            write!(out, "{sign}{whole}.{cents:02}")
        };
        written.expect("24 bytes hold any amount");
        let len = 24 - out.len();
        std::str::from_utf8(&buf[..len]).expect("ASCII")
    }
}

fn too_large(text: &str) -> String {
    format!("{} is too large an amount", text.trim())
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// Written as a JSON number (`12.5`, `12.0`): clients of the seed services
/// expect numbers. The number is the exact decimal text (serde_json's
/// `arbitrary_precision` writes a `Number` as its text), never an `f64`.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::Number::from_str(self.write_json_text(&mut [0; 24]))
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

/// A JSON number with at most two decimals (read also from decimal text).
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .description(Some(
                "An amount with at most 2 decimals (also accepted as decimal text, \"7.50\").",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Money {}

/// Read from a JSON number or decimal text, exactly.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;
        impl<'de> Visitor<'de> for MoneyVisitor {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount with at most 2 decimals, as a number or text")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                v.checked_mul(100)
                    .map(Money)
                    .ok_or_else(|| E::custom(too_large(&v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom(too_large(&v.to_string())))
                    .and_then(|v| self.visit_i64(v))
            }
            /// Only from a `serde_json::Value` whose number's text is the
            /// shortest text of this `f64` (serde_json hands over the text
            /// otherwise), so reading that text back is exact.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                Money::from_json_number(&format!("{v}")).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v).map_err(E::custom)
            }
            /// A JSON number with a fraction or an exponent, as its text.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Money, A::Error> {
                let key: Option<String> = map.next_key()?;
                if key.as_deref() != Some(JSON_NUMBER_TOKEN) {
                    return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
                }
                let text: String = map.next_value()?;
                Money::from_json_number(&text).map_err(de::Error::custom)
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

/// A JSON number's text as cents, exactly. None: not a number, or not a
/// whole number of cents; `Some(Err)`: too large for an `i64`.
fn json_cents(text: &str) -> Option<Result<Money, ()>> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (whole, frac) = match mantissa.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
        return None;
    }
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(Ok(Money::ZERO));
    }
    // value = digits × 10^(exponent − |frac|); cents = value × 100.
    let frac_len = i64::try_from(frac.len()).ok()?;
    let shift = exponent.checked_sub(frac_len)?.checked_add(2)?;
    let significant = if shift >= 0 {
        digits
    } else {
        // The last -shift digits are below a cent: they must all be zero.
        let cut = usize::try_from(-shift).ok()?;
        if cut >= digits.len() {
            return None;
        }
        let (keep, below) = digits.split_at(digits.len() - cut);
        if !below.bytes().all(|b| b == b'0') {
            return None;
        }
        keep
    };
    let zeros = shift.max(0);
    // i64 has 19 digits: more never fits (and keeps the i128 below exact).
    if i64::try_from(significant.len()).ok()? + zeros > 19 {
        return Some(Err(()));
    }
    let mut cents: i128 = significant.parse().ok()?;
    for _ in 0..zeros {
        cents *= 10;
    }
    Some(
        i64::try_from(if negative { -cents } else { cents })
            .map(Money)
            .map_err(|_| ()),
    )
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
        assert_eq!(Money::parse("9999999999999.99"), Ok(Money::MAX));
        assert_eq!(Money::parse("-9999999999999.99"), Ok(Money::MIN));
        assert_eq!(
            Money::parse("90071992547409.93"),
            Ok(Money(9_007_199_254_740_993))
        );
        for bad in [
            "",
            "1.234",
            "abc",
            "1e3",
            "1.2.3",
            "--1",
            "-",
            ".",
            "92233720368547758.08",
        ] {
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

    /// Clients see what they always saw (`serialize_f64` of the amount),
    /// now written from the integer, never through an `f64`.
    #[test]
    fn json_looks_as_it_did_with_f64() {
        let mut cents = vec![
            0,
            1,
            -1,
            5,
            -5,
            10,
            50,
            99,
            100,
            750,
            1200,
            -305,
            123_456,
            Money::MAX.0,
            Money::MIN.0,
            Money::MAX.0 - 1,
            100_000_000_000_000,
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = 1 + x % 15;
            let c = (x >> 8) % 10u64.pow(digits as u32);
            cents.push(if x & 1 == 0 { c as i64 } else { -(c as i64) });
        }
        for c in cents {
            let old = serde_json::to_string(&(c as f64 / 100.0)).unwrap();
            let old = if old == "-0.0" {
                "0.0".to_string()
            } else {
                old
            };
            assert_eq!(serde_json::to_string(&Money(c)).unwrap(), old, "{c} cents");
        }
        assert_eq!(serde_json::to_string(&Money(750)).unwrap(), "7.5");
        assert_eq!(serde_json::to_string(&Money(1200)).unwrap(), "12.0");
        assert_eq!(serde_json::to_string(&Money(0)).unwrap(), "0.0");
        assert_eq!(serde_json::to_string(&Money(-305)).unwrap(), "-3.05");
    }

    #[test]
    fn json_numbers_are_read_from_their_text() {
        for (text, cents) in [
            ("9999999999999.99", Money::MAX.0),
            ("-9999999999999.99", Money::MIN.0),
            ("9999999999999.98", Money::MAX.0 - 1),
            ("0.10", 10),
            ("12.500", 1250),
            ("750e-2", 750),
            ("7.5E0", 750),
            ("1e3", 100_000),
            ("1.5e+1", 1500),
            ("-0", 0),
            ("-0.0", 0),
            ("0e5", 0),
            ("90071992547409.93", 9_007_199_254_740_993),
            ("1e13", 1_000_000_000_000_000),
            ("92233720368547758.07", i64::MAX),
            ("-92233720368547758.08", i64::MIN),
        ] {
            let read = serde_json::from_str::<Money>(text);
            assert_eq!(read.unwrap(), Money(cents), "{text}");
        }
        for bad in [
            "92233720368547758.08",
            "-92233720368547758.09",
            "92233720368547759",
            "1e17",
            "0.001",
            "1e-3",
            "12.345",
            "1e999999999999999999999",
            "18446744073709551616",
        ] {
            assert!(serde_json::from_str::<Money>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<Money>("1e17").unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        // Written and read back exactly, whatever the amount.
        for cents in [i64::MAX, i64::MIN, 9_007_199_254_740_993, -1, 0] {
            let text = serde_json::to_string(&Money(cents)).unwrap();
            assert_eq!(serde_json::from_str::<Money>(&text).unwrap(), Money(cents));
        }
        assert_eq!(
            serde_json::to_string(&Money(9_007_199_254_740_993)).unwrap(),
            "90071992547409.93"
        );
    }

    /// Through a `Value` and through a flattened struct (serde's buffer),
    /// where serde_json hands numbers over as maps of their text.
    #[test]
    fn exact_through_value_and_flatten() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Inner {
            a: Money,
            b: Money,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Outer {
            name: String,
            #[serde(flatten)]
            inner: Inner,
        }
        let outer = Outer {
            name: "x".into(),
            inner: Inner {
                a: Money::MAX,
                b: Money(-5),
            },
        };
        let text = serde_json::to_string(&outer).unwrap();
        assert_eq!(text, r#"{"name":"x","a":9999999999999.99,"b":-0.05}"#);
        assert_eq!(serde_json::from_str::<Outer>(&text).unwrap(), outer);
        let value = serde_json::to_value(&outer).unwrap();
        assert_eq!(value["a"].to_string(), "9999999999999.99");
        assert_eq!(serde_json::from_value::<Outer>(value).unwrap(), outer);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::to_value(&outer).unwrap());
        assert_eq!(serde_json::from_value::<Outer>(parsed).unwrap(), outer);
        assert_eq!(
            serde_json::from_value::<Money>(serde_json::json!(7.5)).unwrap(),
            Money(750)
        );
    }

    #[test]
    fn arithmetic_stays_within_the_bounds() {
        assert_eq!(Money::MAX.checked_add(Money(1)), None);
        assert_eq!(Money::MIN.checked_sub(Money(1)), None);
        assert_eq!(
            Money(1).checked_sub(Money::MAX),
            Some(Money(1 - Money::MAX.0))
        );
        assert_eq!(Money(750).times(12_297_829_382_473_034), None);
        assert_eq!(Money(1).times(u64::MAX), None);
        assert_eq!(
            Money(100).times(9_999_999_999_999),
            Some(Money(999_999_999_999_900))
        );
        assert_eq!(Money::MAX.at_rate(Rate(10_000)), Money::MAX);
        assert_eq!(add_units(MAX_UNITS, 1), None);
        assert_eq!(add_units(MAX_UNITS - 1, 1), Some(MAX_UNITS));
        assert_eq!(add_units(u64::MAX, 1), None);
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
