//! Events of a migration feature flag (entity kind `flag`, one stream per legacy route):
//! which backend serves a route of the old Next.js API while both run side by side.
//!
//! A flag changes only through [`FlagChanged`]: who changed it (a user, or `system` for an
//! automatic rollback), from what to what, why, and for a rollback the error rate measured.
//! The stream is the flag's history.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// Who serves a flagged route.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlagMode {
    /// The route is proxied to the legacy backend (the state of a flag never changed).
    #[default]
    Legacy,
    /// This backend serves the route.
    New,
    /// The legacy backend answers, and this backend answers the same request alongside:
    /// the two answers are compared and mismatches counted (read routes only).
    Compare,
}

impl FlagMode {
    pub const ALL: [FlagMode; 3] = [FlagMode::Legacy, FlagMode::New, FlagMode::Compare];

    pub fn as_str(self) -> &'static str {
        match self {
            FlagMode::Legacy => "legacy",
            FlagMode::New => "new",
            FlagMode::Compare => "compare",
        }
    }

    pub fn parse(s: &str) -> Option<FlagMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Who changed a flag.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlagActor {
    /// An organization admin (`user_id` set).
    User,
    /// The automatic rollback.
    System,
}

/// A flag changed mode.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FlagChanged {
    pub route: String,
    pub from: FlagMode,
    pub to: FlagMode,
    pub actor: FlagActor,
    pub user_id: Option<Uuid>,
    pub reason: Option<String>,
    /// For an automatic rollback: the error rate measured over the window, and its sample.
    pub error_rate: Option<f64>,
    pub requests: Option<u64>,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum FlagEvent {
    FlagChanged(FlagChanged),
}

impl EventFamily for FlagEvent {
    fn event_type(&self) -> &'static str {
        match self {
            FlagEvent::FlagChanged(_) => "FlagChanged",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        match event_type {
            "FlagChanged" => Ok(FlagEvent::FlagChanged(payload(event_type, data)?)),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

/// Every flag event type.
pub const FLAG_EVENT_TYPES: [&str; 1] = ["FlagChanged"];
