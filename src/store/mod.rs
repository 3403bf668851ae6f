//! The event store: an append-only log of streams with optimistic concurrency.
//!
//! [`EventStore`] is the contract every backend fulfils (the store tests in
//! `tests/store_contract.rs` run against each). Streams are named `<category>-<id>`; a stream's
//! version is the number of events in it (0 = no stream), and every event also gets a global
//! position in the `$all` log that is gapless and in commit order, so a reader that remembers
//! the last position it saw never skips an event.

pub mod commits;
pub mod postgres;
pub mod recent;
mod snapshots;
pub mod subscription;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use universal_events::{DecodeError, EventFamily};
use uuid::Uuid;

pub use postgres::{PgEventStore, PgStoreConfig, WRITER_APPLICATION_NAME};
pub use subscription::{LiveFeed, Subscription};

/// What the writer believes about a stream before appending to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's current version must be exactly this.
    Exact(i64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn admits(self, actual: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
}

/// An event about to be appended with its payloads as JSON text already: the form the actor
/// runtime makes straight from typed events ([`EventFamily::to_data_text`]), without a
/// [`Value`] tree on the way, and the form the writer binds. [`EventStore::append_encoded`]
/// checks the text as [`EventStore::append`] checks values ([`storable_text`]).
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: String,
    pub metadata: String,
}

impl From<NewEvent> for EncodedEvent {
    fn from(e: NewEvent) -> Self {
        Self {
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: json_text(&e.data),
            metadata: json_text(&e.metadata),
        }
    }
}

/// A value as JSON text, written straight into one buffer (`Value`'s `Display` goes through
/// the formatter a token at a time and grows its string from nothing).
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).expect("a JSON value always serializes")
}

/// An event as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: String,
    pub category: String,
    pub version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// An event as a projection reads it: where it stands in the log and its payload as the JSON
/// text stored, decoded only by the reader, straight into its typed event ([`RawEvent::decode`]).
/// Projections fold thousands of events a second; parsing every payload into a `Value` tree
/// first and then into the typed event cost them more than the reading itself.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawEvent {
    pub position: i64,
    pub stream_id: String,
    pub category: String,
    pub version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    /// The payload's JSON text.
    pub data: String,
}

impl RawEvent {
    /// The payload as its typed event, parsed once from the stored text. Payloads of an older
    /// schema version go through the family's upcaster, as [`EventFamily::decode`] does.
    pub fn decode<F: EventFamily>(&self) -> Result<F, DecodeError> {
        let (t, version) = (self.event_type.as_str(), self.schema_version);
        let shape = |source| DecodeError::Shape {
            event_type: t.to_owned(),
            source,
        };
        if version != F::schema_version(t) {
            let data = serde_json::from_str(&self.data).map_err(shape)?;
            return F::decode(t, version, data);
        }
        // A family is a serde enum tagged `{"type": ..., "data": ...}` (see `EventFamily`);
        // with the tag first, serde reads the payload straight into the variant's type.
        let tag = serde_json::to_string(t).map_err(shape)?;
        let mut tagged = String::with_capacity(tag.len() + self.data.len() + 18);
        tagged.push_str("{\"type\":");
        tagged.push_str(&tag);
        tagged.push_str(",\"data\":");
        tagged.push_str(&self.data);
        tagged.push('}');
        serde_json::from_str(&tagged).map_err(|source| {
            if source.to_string().contains("unknown variant") {
                DecodeError::UnknownType(t.to_owned())
            } else {
                shape(source)
            }
        })
    }
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    /// The stream's version after the append (the version of its last event).
    pub version: i64,
    /// The global position of the last event written (or found, for a repeated append).
    pub position: i64,
    /// `false` when every event id was already stored: the append was a repeat and wrote nothing.
    pub written: bool,
}

/// Why an append was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    WrongVersion {
        stream: String,
        expected: ExpectedVersion,
        actual: i64,
    },
    #[error("event {0} is already stored with other events or in another stream")]
    DuplicateEvent(Uuid),
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("the event store is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An infrastructure failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Which events of the `$all` log a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Stream categories (`building`, `user`, ...); `None` means every category.
    pub categories: Option<Vec<String>>,
    /// Event types; `None` means every type.
    pub event_types: Option<Vec<String>>,
    /// A single stream; `None` means every stream.
    pub stream: Option<String>,
    /// Only events whose metadata names this organization (the tenant of the command).
    pub organization: Option<Uuid>,
    /// Leave `metadata` empty in the results: readers that only fold payloads (projections)
    /// skip decoding it.
    pub skip_metadata: bool,
}

impl Filter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.admits(&event.category, &event.event_type, &event.stream_id)
            && self.organization.is_none_or(|o| {
                event
                    .metadata
                    .get("organization_id")
                    .and_then(|v| v.as_str())
                    == Some(o.to_string().as_str())
            })
    }

    /// Whether an event of this category, type and stream passes the filter, leaving aside
    /// the organization (which only the metadata tells).
    pub fn admits(&self, category: &str, event_type: &str, stream: &str) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|c| c.iter().any(|c| c == category))
            && self
                .event_types
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == event_type))
            && self.stream.as_deref().is_none_or(|s| s == stream)
    }
}

/// A saved state of an entity at a stream version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: i64,
    pub schema_version: i32,
    pub state: Value,
}

/// The category of a stream: the part of its name before the first `-`.
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// Largest magnitude of a number in an event. PostgreSQL keeps jsonb numbers as exact
/// decimals and prints them in full, and numbers near `f64::MAX` do not read back as `f64`;
/// the bound also leaves room for projections that add numbers up.
pub const MAX_NUMBER: f64 = 1e300;

/// Whether a number can be stored and read back: zero, or a magnitude within
/// [`MAX_NUMBER`] and its inverse. The one rule of [`unstorable`] and [`storable_text`].
fn storable_number(x: f64) -> bool {
    x == 0.0 || (x.abs() <= MAX_NUMBER && x.abs() >= 1.0 / MAX_NUMBER)
}

/// Why a JSON document cannot be stored as it is, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unstorable {
    /// The JSON path of the offending value (`readings[0].name`); empty for the document.
    pub path: String,
    pub reason: String,
}

/// The first value of a JSON document that cannot be stored and read back unchanged: a NUL
/// character in a string or key (PostgreSQL text cannot hold one), or a number beyond
/// [`MAX_NUMBER`]. The store checks every append with it ([`storable`]); the HTTP edge uses
/// it to name the field of a request that holds such a value.
pub fn unstorable(value: &Value) -> Option<Unstorable> {
    /// One step of the path, collected innermost first while unwinding, so that a document
    /// without a problem (every append) costs no allocation.
    enum Step<'a> {
        Index(usize),
        Key(&'a str),
    }
    fn walk<'a>(value: &'a Value, steps: &mut Vec<Step<'a>>) -> Option<String> {
        match value {
            Value::String(s) if s.contains('\0') => Some("contains a NUL character".into()),
            Value::Number(n) => match n.as_f64() {
                Some(x) if storable_number(x) => None,
                _ if n.is_i64() || n.is_u64() => None,
                _ => Some(format!("the number {n} is out of range")),
            },
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let reason = walk(item, steps)?;
                steps.push(Step::Index(i));
                Some(reason)
            }),
            Value::Object(map) => map.iter().find_map(|(key, item)| {
                if key.contains('\0') {
                    return Some("a key contains a NUL character".into());
                }
                let reason = walk(item, steps)?;
                steps.push(Step::Key(key));
                Some(reason)
            }),
            _ => None,
        }
    }
    let mut steps = Vec::new();
    let reason = walk(value, &mut steps)?;
    let mut path = String::new();
    for step in steps.iter().rev() {
        match step {
            Step::Index(i) => path.push_str(&format!("[{i}]")),
            Step::Key(k) if path.is_empty() => path.push_str(k),
            Step::Key(k) => {
                path.push('.');
                path.push_str(k);
            }
        }
    }
    Some(Unstorable { path, reason })
}

/// Whether a JSON document can be stored and read back unchanged (see [`unstorable`]).
/// Checked for every append, so that an event the store cannot hold fails alone, before it
/// joins a group commit.
pub fn storable(value: &Value) -> Result<(), String> {
    match unstorable(value) {
        None => Ok(()),
        Some(u) if u.path.is_empty() => Err(u.reason),
        Some(u) => Err(format!("{}: {}", u.path, u.reason)),
    }
}

/// [`storable`] for a document given as JSON text: the text must also be one JSON document.
/// Read once without building anything (strings are borrowed where they hold no escape);
/// only a document that fails is parsed into a tree, to name the offending value's path.
pub fn storable_text(json: &str) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Visits a document and fails at its first value that [`unstorable`] would name.
    struct Check;

    impl<'de> DeserializeSeed<'de> for Check {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    /// A key: its text only.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            if v.contains('\0') {
                return Err(E::custom("unstorable"));
            }
            Ok(())
        }
    }

    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<(), E> {
            if storable_number(x) {
                Ok(())
            } else {
                Err(E::custom("unstorable"))
            }
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            Key.visit_str(v)
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Check)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key_seed(Key)?.is_some() {
                map.next_value_seed(Check)?;
            }
            Ok(())
        }
    }

    let mut reader = serde_json::Deserializer::from_str(json);
    let checked = Check.deserialize(&mut reader).and_then(|()| reader.end());
    if checked.is_ok() {
        return Ok(());
    }
    // Not a document, or one with a value to name: the tree says which and where.
    match serde_json::from_str::<Value>(json) {
        Ok(value) => storable(&value).and(Err("cannot be stored".to_owned())),
        Err(e) => Err(format!("is not one JSON document: {e}")),
    }
}

/// The contract of an event store backend.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version admits `expected`.
    ///
    /// Appending events whose ids are all stored already, in this stream, is a no-op that
    /// returns the original version and position with `written: false`.
    /// The payloads are written to JSON text and appended as [`EventStore::append_encoded`]
    /// appends them, with the same checks ([`storable_text`] refuses what [`storable`]
    /// refuses, and names the same path).
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        let events = events.into_iter().map(EncodedEvent::from).collect();
        self.append_encoded(stream, expected, events).await
    }

    /// [`EventStore::append`] for events whose payloads are JSON text already (the actor
    /// runtime's path, which writes them straight from typed events).
    async fn append_encoded(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EncodedEvent>,
    ) -> Result<AppendResult, AppendError>;

    /// Reads up to `limit` events of one stream starting at version `from` (inclusive),
    /// forwards or backwards.
    async fn read_stream(
        &self,
        stream: &str,
        from: i64,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `limit` events of the `$all` log with positions in `(after, up_to]`
    /// that pass `filter`, in position order.
    async fn read_all(
        &self,
        after: i64,
        up_to: Option<i64>,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// [`EventStore::read_all`] for projections: the events with their payloads undecoded
    /// and without metadata or recording time.
    async fn read_all_raw(
        &self,
        after: i64,
        up_to: Option<i64>,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<RawEvent>, StoreError>;

    /// The event with this id, if it is stored.
    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError>;

    /// The position of the last committed event (0 for an empty log).
    async fn head_position(&self) -> Result<i64, StoreError>;

    /// A watch of the committed head position, woken by local commits and by other processes.
    fn head_watch(&self) -> watch::Receiver<i64>;

    /// What is known, without reading the log, of whether positions `(from, to]` hold an
    /// event of `types` (see [`commits`]): `Some(true)` it does, `Some(false)` it does not,
    /// `None` unknown.
    fn holds_any(&self, _from: i64, _to: i64, _types: &[String]) -> Option<bool> {
        None
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError>;

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), StoreError>;

    /// Stops taking appends and waits until every accepted one is committed.
    async fn shutdown(&self);
}

#[cfg(test)]
mod unstorable_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_value_that_cannot_be_stored_is_named_by_its_path() {
        assert_eq!(
            unstorable(&json!({ "a": [1, { "b": "ok" }], "n": 1e12 })),
            None
        );
        let nul = unstorable(&json!({ "readings": [{ "v": 1 }, { "name": "a\u{0}b" }] }));
        assert_eq!(nul.unwrap().path, "readings[1].name");
        let big: Value = serde_json::from_str(r#"{"x": {"y": 1e301}}"#).unwrap();
        let big = unstorable(&big).unwrap();
        assert_eq!(big.path, "x.y");
        assert!(big.reason.contains("out of range"));
        assert_eq!(
            storable(&json!("\u{0}")),
            Err("contains a NUL character".into())
        );
    }

    #[test]
    fn text_is_storable_exactly_when_its_value_is() {
        let documents = [
            r#"{"a": [1, {"b": "ok"}], "n": 1e12, "t": true, "z": null}"#,
            r#"{"readings": [{"v": 1}, {"name": "a\u0000b"}]}"#,
            r#"{"a\u0000": 1}"#,
            r#"{"x": {"y": 1e301}}"#,
            r#"{"x": -1e-301}"#,
            r#"{"x": 0.0, "y": -0, "z": 18446744073709551615, "w": -9223372036854775808}"#,
            r#"["\\u0000", "\n", "\u00e9"]"#,
            r#""plain""#,
        ];
        for text in documents {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(storable_text(text), storable(&value), "{text}");
        }
        // The path of the offending value is named as for a tree.
        assert_eq!(
            storable_text(r#"{"readings": [{"v": 1}, {"name": "a\u0000b"}]}"#),
            Err("readings[1].name: contains a NUL character".into())
        );
        for broken in ["", "{", r#"{"a": 1} {"b": 2}"#, "[1,]", "nul", "1e400"] {
            let why = storable_text(broken).unwrap_err();
            assert!(
                why.starts_with("is not one JSON document"),
                "{broken}: {why}"
            );
        }
    }
}

#[cfg(test)]
mod raw_event_tests {
    use super::*;
    use universal_events::catalog::SAMPLES;
    use universal_events::messaging::{InboxEvent, MessagingEvent};
    use universal_events::{
        BuildingEvent, ConversationEvent, DocumentEvent, EmailEvent, FileEvent, FlagEvent,
        ImportEvent, OrganizationEvent, ProjectEvent, SwarmTaskEvent, TeamEvent, UserEvent,
    };

    /// Decoding `text` as `F` from the stored text and from a `Value` agree: the same event,
    /// or the same kind of error.
    fn agree<F: EventFamily>(event_type: &str, version: i32, text: &str) {
        let value: Value = serde_json::from_str(text).unwrap();
        let raw = RawEvent {
            position: 1,
            stream_id: "any-1".into(),
            category: "any".into(),
            version: 1,
            event_id: Uuid::nil(),
            event_type: event_type.into(),
            schema_version: version,
            data: text.into(),
        };
        match (
            F::decode_ref(event_type, version, &value),
            raw.decode::<F>(),
        ) {
            (Ok(a), Ok(b)) => assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::to_value(b).unwrap(),
                "{event_type} v{version}"
            ),
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{event_type} v{version}: {a} / {b}"
            ),
            (a, b) => panic!(
                "{event_type} v{version}: {:?} / {:?}",
                a.map(|_| ()),
                b.map(|_| ())
            ),
        }
    }

    #[test]
    fn a_payload_decoded_from_its_text_equals_the_payload_decoded_from_a_value() {
        for &(t, v, text) in SAMPLES {
            agree::<BuildingEvent>(t, v, text);
            agree::<ConversationEvent>(t, v, text);
            agree::<DocumentEvent>(t, v, text);
            agree::<EmailEvent>(t, v, text);
            agree::<FileEvent>(t, v, text);
            agree::<FlagEvent>(t, v, text);
            agree::<ImportEvent>(t, v, text);
            agree::<InboxEvent>(t, v, text);
            agree::<MessagingEvent>(t, v, text);
            agree::<OrganizationEvent>(t, v, text);
            agree::<ProjectEvent>(t, v, text);
            agree::<SwarmTaskEvent>(t, v, text);
            agree::<TeamEvent>(t, v, text);
            agree::<UserEvent>(t, v, text);
        }
    }

    #[test]
    fn a_number_no_f64_holds_fails_to_decode_and_is_named() {
        let raw = RawEvent {
            position: 1,
            stream_id: "building-1".into(),
            category: "building".into(),
            version: 1,
            event_id: Uuid::nil(),
            event_type: "ReadingsRecorded".into(),
            schema_version: 1,
            data: r#"{"readings":[{"sensor_id":"0193a1b2-0000-7000-8000-000000000002",
                "kind":"gas","unit":"m3","value":1e400,"measured_at":"2026-11-21T10:30:00Z"}]}"#
                .into(),
        };
        let error = raw.decode::<BuildingEvent>().unwrap_err();
        assert!(matches!(error, DecodeError::Shape { .. }), "{error:?}");
        assert!(error.to_string().contains("number out of range"), "{error}");
    }
}
