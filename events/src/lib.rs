//! The event catalogue of universal-backend.
//!
//! Every fact the system records is one of the enums in this crate. They are contracts with
//! analysts and with the stored log, so the rules are strict:
//!
//! - a type name (`event_type`) is stable and past tense; it is never renamed;
//! - a type's shape is never changed in place: a new `schema_version` is added together with
//!   an upcaster that lifts older stored payloads to the current shape;
//! - every type and version has a JSON sample in `events/samples/`, round-tripped by tests.
//!
//! Stored form: `event_type` and `schema_version` live in their own columns and `data` holds
//! the payload without a type tag, so the log stays readable from SQL.

#![deny(unsafe_code)]

pub mod building;
pub mod catalog;
pub mod conversation;
pub mod document;
pub mod file;
pub mod flag;
pub mod identity;
pub mod import;
pub mod messaging;
pub mod project;
pub mod swarm;
pub mod team;

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

pub use building::BuildingEvent;
pub use conversation::ConversationEvent;
pub use document::DocumentEvent;
pub use file::FileEvent;
pub use flag::FlagEvent;
pub use identity::{EmailEvent, OrganizationEvent, UserEvent};
pub use import::ImportEvent;
pub use project::ProjectEvent;
pub use swarm::SwarmTaskEvent;
pub use team::TeamEvent;

/// Deserializes one variant's payload from a borrowed JSON value.
pub fn payload<T: DeserializeOwned>(event_type: &str, data: &Value) -> Result<T, DecodeError> {
    T::deserialize(data).map_err(|source| DecodeError::Shape {
        event_type: event_type.to_owned(),
        source,
    })
}

/// An event payload could not be turned back into its typed form.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event type `{event_type}` has no schema version {version}")]
    UnknownVersion { event_type: String, version: i32 },
    #[error("event `{event_type}` does not match its schema: {source}")]
    Shape {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A family of events belonging to one entity kind.
///
/// Implementors are serde enums tagged as `{"type": ..., "data": ...}`; the provided methods
/// split and join that tag so that the store can keep type and payload in separate columns.
pub trait EventFamily: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The stable type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version that this code writes for `event_type`.
    fn schema_version(_event_type: &str) -> i32 {
        1
    }

    /// Lifts a stored payload of an older schema version to the current shape.
    /// The default knows only version 1 of every type.
    fn upcast(event_type: &str, version: i32, data: Value) -> Result<Value, DecodeError> {
        if version == Self::schema_version(event_type) {
            Ok(data)
        } else {
            Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            })
        }
    }

    /// The payload without its type tag.
    fn to_data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => map.remove("data").unwrap_or(Value::Null),
            // A tagged enum always serializes to an object; anything else is a bug in the
            // enum's serde attributes, caught by the sample tests.
            other => panic!("event enum must serialize to a tagged object, got {other:?}"),
        }
    }

    /// The payload without its type tag, as JSON text: what [`EventFamily::to_data`] gives,
    /// written straight from the typed event without building a tree on the way (the hot
    /// path of every append). A family serializes as `{"type":<tag>,"data":<payload>}`, so
    /// the payload is that text less its head and its closing brace.
    fn to_data_text(&self) -> String {
        let text = match serde_json::to_string(self) {
            Ok(text) => text,
            Err(e) => panic!("event enum must serialize: {e}"),
        };
        let rest = text
            .strip_prefix("{\"type\":\"")
            .and_then(|r| r.strip_prefix(self.event_type()))
            .and_then(|r| r.strip_prefix('"'));
        match rest {
            // A variant without payload: `{"type":<tag>}`.
            Some("}") => "null".to_owned(),
            Some(r) => match r
                .strip_prefix(",\"data\":")
                .and_then(|d| d.strip_suffix('}'))
            {
                Some(data) => data.to_owned(),
                None => self.to_data().to_string(),
            },
            // Some other shape: take the tree's way, which says what is wrong.
            None => self.to_data().to_string(),
        }
    }

    /// Like [`EventFamily::decode`] but borrowing the payload; families override it to skip
    /// the copy for current-version payloads (the hot path of replays and projections).
    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        Self::decode(event_type, version, data.clone())
    }

    /// Rebuilds a typed event from its stored parts, upcasting older versions first.
    fn decode(event_type: &str, version: i32, data: Value) -> Result<Self, DecodeError> {
        let data = Self::upcast(event_type, version, data)?;
        let tagged = serde_json::json!({ "type": event_type, "data": data });
        serde_json::from_value(tagged).map_err(|source| {
            if source.to_string().contains("unknown variant") {
                DecodeError::UnknownType(event_type.to_owned())
            } else {
                DecodeError::Shape {
                    event_type: event_type.to_owned(),
                    source,
                }
            }
        })
    }
}
