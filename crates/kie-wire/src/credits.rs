//! Exact credit amounts: integer hundredths of a credit, never floats.
//!
//! On the wire a balance is a JSON number: `100` when whole, `0.98` otherwise.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// An amount of credits in hundredths (`Credits(250)` is 2.50 credits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Credits(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditsError {
    #[error("not a decimal number")]
    NotANumber,
    #[error("at most 2 decimal places are allowed")]
    TooPrecise,
    #[error("amount is too large")]
    TooLarge,
}

/// Largest amount accepted from input: keeps every sum far from i64 overflow and every
/// value exactly representable as an f64 on the wire.
pub const MAX_HUNDREDTHS: i64 = 1_000_000_000_000_000; // 10^13 credits

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub fn from_hundredths(h: i64) -> Self {
        Credits(h)
    }

    pub fn hundredths(self) -> i64 {
        self.0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The JSON number for this amount: an integer when whole, else a two-place decimal.
    pub fn to_json_number(self) -> serde_json::Number {
        if self.0 % 100 == 0 {
            serde_json::Number::from(self.0 / 100)
        } else {
            // |h| < 2^53, so h / 100 printed with the shortest round-trip repr is exact
            // to two places ("0.98", "10.5").
            serde_json::Number::from_f64(self.0 as f64 / 100.0).expect("finite")
        }
    }

    /// Parses a JSON number exactly, from its textual form (no float rounding).
    pub fn from_json_number(n: &serde_json::Number) -> Result<Self, CreditsError> {
        if let Some(i) = n.as_i64() {
            return i
                .checked_mul(100)
                .filter(|h| h.abs() <= MAX_HUNDREDTHS)
                .map(Credits)
                .ok_or(CreditsError::TooLarge);
        }
        // serde_json prints floats in their shortest round-trip form, which is what the
        // sender wrote for any number with few digits.
        let f = n.as_f64().ok_or(CreditsError::NotANumber)?;
        if !f.is_finite() {
            return Err(CreditsError::NotANumber);
        }
        let text = format!("{f}");
        text.parse()
    }
}

impl FromStr for Credits {
    type Err = CreditsError;

    /// Parses `"12"`, `"12.5"`, `"-0.25"`, `"+3.10"`; rejects a third decimal place,
    /// exponents, and anything that is not a plain decimal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (neg, digits) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return Err(CreditsError::NotANumber);
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CreditsError::NotANumber);
        }
        if digits.contains('.') && frac.is_empty() && whole.is_empty() {
            return Err(CreditsError::NotANumber);
        }
        let frac_trimmed = frac.trim_end_matches('0');
        if frac_trimmed.len() > 2 {
            return Err(CreditsError::TooPrecise);
        }
        let whole_v: i64 = if whole.is_empty() {
            0
        } else {
            let w = whole.trim_start_matches('0');
            if w.len() > 15 {
                return Err(CreditsError::TooLarge);
            }
            if w.is_empty() {
                0
            } else {
                w.parse().map_err(|_| CreditsError::TooLarge)?
            }
        };
        let mut frac_v: i64 = 0;
        for (i, b) in frac_trimmed.bytes().enumerate() {
            frac_v += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
        }
        let h = whole_v
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac_v))
            .filter(|h| *h <= MAX_HUNDREDTHS)
            .ok_or(CreditsError::TooLarge)?;
        Ok(Credits(if neg { -h } else { h }))
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        if a.is_multiple_of(100) {
            write!(f, "{sign}{}", a / 100)
        } else if a.is_multiple_of(10) {
            write!(f, "{sign}{}.{}", a / 100, (a % 100) / 10)
        } else {
            write!(f, "{sign}{}.{:02}", a / 100, a % 100)
        }
    }
}

impl Serialize for Credits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json_number().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Credits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        Credits::from_json_number(&n).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("100".parse::<Credits>(), Ok(Credits(10000)));
        assert_eq!("10.98".parse::<Credits>(), Ok(Credits(1098)));
        assert_eq!("0.5".parse::<Credits>(), Ok(Credits(50)));
        assert_eq!(".5".parse::<Credits>(), Ok(Credits(50)));
        assert_eq!("-1.25".parse::<Credits>(), Ok(Credits(-125)));
        assert_eq!("1.230".parse::<Credits>(), Ok(Credits(123)));
        assert_eq!("1.234".parse::<Credits>(), Err(CreditsError::TooPrecise));
        assert_eq!("1e3".parse::<Credits>(), Err(CreditsError::NotANumber));
        assert_eq!("".parse::<Credits>(), Err(CreditsError::NotANumber));
        assert_eq!(".".parse::<Credits>(), Err(CreditsError::NotANumber));
        assert_eq!("NaN".parse::<Credits>(), Err(CreditsError::NotANumber));
        assert_eq!(
            "99999999999999999999".parse::<Credits>(),
            Err(CreditsError::TooLarge)
        );
    }

    #[test]
    fn json_numbers_are_whole_or_two_places() {
        assert_eq!(serde_json::to_string(&Credits(10000)).unwrap(), "100");
        assert_eq!(serde_json::to_string(&Credits(98)).unwrap(), "0.98");
        assert_eq!(serde_json::to_string(&Credits(1098)).unwrap(), "10.98");
        assert_eq!(serde_json::to_string(&Credits(1050)).unwrap(), "10.5");
        assert_eq!(serde_json::to_string(&Credits(0)).unwrap(), "0");
        assert_eq!(
            serde_json::from_str::<Credits>("87.42").unwrap(),
            Credits(8742)
        );
        assert_eq!(serde_json::from_str::<Credits>("0.1").unwrap(), Credits(10));
        assert!(serde_json::from_str::<Credits>("0.001").is_err());
        assert_eq!(Credits(-5).to_string(), "-0.05");
        assert_eq!(Credits(1050).to_string(), "10.5");
    }
}
