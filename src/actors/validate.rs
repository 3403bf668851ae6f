//! Limits every decider applies to what it records, so that no accepted command produces
//! an event the store or a projection cannot hold: text without control characters (a NUL
//! cannot be stored in PostgreSQL text at all), numbers within bounds that sums and
//! averages in read models can carry, and times that calendars and time buckets handle.
//!
//! Each check answers with a reason; the decider wraps it in its own error with the name of
//! the field.

use chrono::{DateTime, TimeZone, Utc};

/// Largest magnitude of a measured or configured quantity. Far beyond any real meter, and
/// small enough that millions of them add up without losing the sum.
pub const MAX_QUANTITY: f64 = 1e12;

/// The earliest time an event may carry.
pub fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid date")
}

/// Text of at most `max` characters, with no control characters other than tab and
/// newlines.
pub fn text(value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// Non-empty text (after trimming) of at most `max` characters.
pub fn name(value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    text(value, max)
}

/// A finite number no larger than [`MAX_QUANTITY`] in magnitude.
pub fn quantity(value: f64) -> Result<(), String> {
    if !value.is_finite() {
        return Err("must be a finite number".into());
    }
    if value.abs() > MAX_QUANTITY {
        return Err(format!("must be within ±{MAX_QUANTITY:e}"));
    }
    Ok(())
}

/// A time no earlier than 1970 and no later than `latest`.
pub fn time(at: DateTime<Utc>, latest: DateTime<Utc>) -> Result<(), String> {
    if at < earliest() {
        return Err("must not be before 1970-01-01T00:00:00Z".into());
    }
    if at > latest {
        return Err("lies in the future".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_nul_and_other_control_characters_but_keeps_newlines() {
        assert!(text("a\u{0}b", 10).is_err());
        assert!(text("a\u{7}b", 10).is_err());
        assert!(text("line\nnext\ttab", 20).is_ok());
        assert!(text("ééé", 3).is_ok());
        assert!(text("éééé", 3).is_err());
        assert!(name("   ", 3).is_err());
    }

    #[test]
    fn quantities_are_finite_and_bounded() {
        assert!(quantity(1.797_693_134_862_315_7e308).is_err());
        assert!(quantity(f64::NAN).is_err());
        assert!(quantity(-1e12).is_ok());
        assert!(quantity(1e12 + 1e3).is_err());
    }

    #[test]
    fn times_start_in_1970_and_stop_at_the_given_latest() {
        let now = Utc::now();
        let old = Utc.with_ymd_and_hms(1500, 1, 1, 0, 0, 0).single().unwrap();
        assert!(time(old, now).is_err());
        assert!(time(now, now).is_ok());
        assert!(time(now + chrono::Duration::seconds(1), now).is_err());
    }
}
