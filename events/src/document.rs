//! Events of a FluxStudio collaborative document (Yjs over y-websocket): its creation in a
//! project, its updates (Yjs updates, coalesced), and who besides the project's members may
//! open it.
//!
//! A document's content is the sequence of its `DocumentUpdated` events: each holds a Yjs
//! update (lib0 v1 encoding, base64) that merges the updates that arrived within one flush
//! interval, with the users who wrote them. A restore is one more update, naming the version
//! whose state it brings back.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// What a grant lets its holder do with one document.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DocumentAccess {
    /// Read only.
    View,
    /// Read only on the socket (comments are not part of the Yjs document).
    Comment,
    /// Edit, if the holder's organization role is a writer's.
    Edit,
}

impl DocumentAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentAccess::View => "view",
            DocumentAccess::Comment => "comment",
            DocumentAccess::Edit => "edit",
        }
    }
}

/// The document enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum DocumentEvent {
    DocumentCreated(DocumentCreated),
    DocumentUpdated(DocumentUpdated),
    DocumentGranted(DocumentGranted),
    DocumentGrantRevoked(DocumentGrantRevoked),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DocumentCreated {
    pub document_id: Uuid,
    pub project_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

/// One or more Yjs updates, merged.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DocumentUpdated {
    /// The Yjs update, lib0 v1 encoding, base64 (standard alphabet, padded).
    pub update: String,
    /// The users whose edits it holds.
    pub authors: Vec<Uuid>,
    /// How many client updates were merged into it.
    pub merged: u32,
    /// Set when the update restores the state of this earlier version of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<i64>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DocumentGranted {
    pub user_id: Uuid,
    pub access: DocumentAccess,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DocumentGrantRevoked {
    pub user_id: Uuid,
}

impl EventFamily for DocumentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            DocumentEvent::DocumentCreated(_) => "DocumentCreated",
            DocumentEvent::DocumentUpdated(_) => "DocumentUpdated",
            DocumentEvent::DocumentGranted(_) => "DocumentGranted",
            DocumentEvent::DocumentGrantRevoked(_) => "DocumentGrantRevoked",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        Ok(match t {
            "DocumentCreated" => DocumentEvent::DocumentCreated(payload(t, data)?),
            "DocumentUpdated" => DocumentEvent::DocumentUpdated(payload(t, data)?),
            "DocumentGranted" => DocumentEvent::DocumentGranted(payload(t, data)?),
            "DocumentGrantRevoked" => DocumentEvent::DocumentGrantRevoked(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every document event type, for filters and the sample tests.
pub const DOCUMENT_EVENT_TYPES: [&str; 4] = [
    "DocumentCreated",
    "DocumentUpdated",
    "DocumentGranted",
    "DocumentGrantRevoked",
];
