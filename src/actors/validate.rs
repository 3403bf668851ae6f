//! Limits every decider applies to what it records, so that no accepted command produces
//! an event the store or a projection cannot hold: text without control characters (a NUL
//! cannot be stored in PostgreSQL text at all), numbers within bounds that sums and
//! averages in read models can carry, and times that calendars and time buckets handle.
//!
//! Two rules for text, one for what people write and one for what names things:
//!
//! - [`text`] and [`body`]: free text (messages, descriptions, prompts, documents, the
//!   strings inside an agent's `task_data`): no control characters other than tab and line
//!   breaks.
//! - [`name`]: names, titles, labels and reaction emoji: the same, non-empty, and also
//!   without the invisible characters that reorder or break the text around them
//!   ([`is_layout_control`]: bidirectional embeddings, overrides, isolates and marks, line
//!   and paragraph separators, the byte order mark), so that no name can display as
//!   something other than what it is (the "trojan source" spoof: `invoice\u{202E}fdp.exe`
//!   shows as `invoiceexe.pdf`).
//!
//! Each check answers with a reason; the decider wraps it in its own error with the name of
//! the field.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

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
///
/// Bidirectional marks, embeddings, overrides and isolates are allowed here, unlike in
/// [`name`]: right-to-left writing (Arabic, Hebrew, Persian, Urdu) needs them to show mixed
/// text right (a Hebrew sentence ending in a Latin word or a number, a quoted English phrase
/// in Arabic), and keyboards and editors insert them. Refusing them would refuse real
/// messages, while the spoofing they allow matters where a short string is trusted to say
/// what it is (a name, a title, a file name), not in a paragraph read as a whole. Clients
/// show free text isolated (`dir="auto"`, `<bdi>`), so it cannot reorder what is around it.
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

/// Non-empty free text (after trimming) of at most `max` characters, by the rule of [`text`]:
/// message bodies, prompts, documents, questions.
pub fn body(value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    text(value, max)
}

/// Whether `c` is an invisible character that changes the order or the lines of the text
/// around it: the bidirectional embeddings and overrides (U+202A–U+202E), isolates
/// (U+2066–U+2069) and marks (U+200E, U+200F, U+061C), the line and paragraph separators
/// (U+2028, U+2029) and the byte order mark (U+FEFF).
pub fn is_layout_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{FEFF}'
    )
}

/// A name, title, label or reaction: non-empty text (after trimming) of at most `max`
/// characters, by the rule of [`text`], and without the characters of
/// [`is_layout_control`], which would let it display as another name.
pub fn name(value: &str, max: usize) -> Result<(), String> {
    body(value, max)?;
    if let Some(c) = value.chars().find(|c| is_layout_control(*c)) {
        return Err(format!(
            "must not contain bidirectional or other invisible layout characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// Every string of a JSON value, object keys included, by the rule of [`text`] (the size of
/// the whole is bounded elsewhere). `Err` is `"<path>: <reason>"`, the path extended from
/// `path` as `path.key` and `path[index]`.
pub fn json_text(value: &Value, path: &str) -> Result<(), String> {
    match value {
        Value::String(s) => text(s, usize::MAX).map_err(|m| format!("{path}: {m}")),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| json_text(item, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().try_for_each(|(key, field)| {
            text(key, usize::MAX).map_err(|m| format!("{path}: a field name {m}"))?;
            json_text(field, &format!("{path}.{key}"))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
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
        assert!(body("  ", 3).is_err());
    }

    #[test]
    fn names_refuse_bidirectional_controls_separators_and_the_byte_order_mark() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{2028}', '\u{2029}',
            '\u{FEFF}',
        ] {
            let spoof = format!("invoice{c}fdp.exe");
            let err = name(&spoof, 50).unwrap_err();
            assert!(err.contains(&format!("U+{:04X}", c as u32)), "{err}");
            // Free text keeps them: right-to-left writing needs them.
            assert_eq!(text(&spoof, 50), Ok(()));
            assert_eq!(body(&spoof, 50), Ok(()));
        }
        assert_eq!(name("שלום world 🚀", 50), Ok(()));
        assert_eq!(name("مرحبا", 50), Ok(()));
        assert_eq!(
            name("👍🏽", 50),
            Ok(()),
            "emoji sequences are not layout characters"
        );
        assert_eq!(
            name("👨\u{200D}👩\u{200D}👧", 50),
            Ok(()),
            "nor is the zero width joiner"
        );
        assert!(
            name("a\u{1B}b", 10).is_err(),
            "and the control characters stay out"
        );
    }

    #[test]
    fn every_string_of_a_json_value_follows_the_text_rule() {
        use serde_json::json;
        let fine = json!({"subject": "Math", "n": 5, "tags": ["a\tb", "עברית\u{200F}"], "x": null});
        assert_eq!(json_text(&fine, "task_data"), Ok(()));
        for (value, error) in [
            (json!({"subject": "a\u{7}"}), "task_data.subject: "),
            (
                json!({"o": [{"deep": "x\u{1B}[31m"}]}),
                "task_data.o[0].deep: ",
            ),
            (json!(["ok", "\u{7F}"]), "task_data[1]: "),
            (json!({"k\u{0}": 1}), "task_data: a field name "),
        ] {
            let err = json_text(&value, "task_data").unwrap_err();
            assert!(err.starts_with(error), "{err}");
            assert!(err.contains("control characters"), "{err}");
        }
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
