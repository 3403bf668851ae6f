//! Events of a legacy import run, in the stream `import-<run id>`.
//!
//! The data an import brings is recorded as the entities' own events (users, buildings,
//! chats, ...); these two record the run itself: what was asked, and the figures of what came
//! in, what was skipped and why, and whether the verification found differences.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::EventFamily;

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum ImportEvent {
    ImportStarted(ImportStarted),
    ImportCompleted(ImportCompleted),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ImportStarted {
    pub run_id: Uuid,
    /// `flowmind`, `toolboxai`, `analysis` or `fluxstudio`.
    pub source: String,
    /// Where the data came from, without credentials (a database name or a directory).
    pub from: String,
    pub dry_run: bool,
    pub verify_only: bool,
    /// The `--organization` option, as given.
    pub organization: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// The figures of one legacy table.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct TableFigures {
    pub table: String,
    /// Rows read from the source.
    pub read: u64,
    /// Rows whose events this run wrote.
    pub imported: u64,
    /// Rows already imported by an earlier run (their events were in the log).
    pub unchanged: u64,
    /// Rows skipped, by reason (`invalid`, `orphan`, `duplicate`, `conflict`, ...).
    pub skipped: BTreeMap<String, u64>,
    /// Rows whose checksum differs between the source and the read models.
    pub mismatched: u64,
    /// Time spent reading and writing the table.
    #[serde(default)]
    pub seconds: f64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ImportCompleted {
    pub run_id: Uuid,
    pub tables: Vec<TableFigures>,
    /// Events written by the run (0 for a repeat, a dry run or a verification).
    pub events_written: u64,
    /// Whether the verification ran, and found no difference.
    pub verified: bool,
    pub differences: u64,
    pub completed_at: DateTime<Utc>,
}

impl EventFamily for ImportEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ImportEvent::ImportStarted(_) => "ImportStarted",
            ImportEvent::ImportCompleted(_) => "ImportCompleted",
        }
    }
}

pub const IMPORT_EVENT_TYPES: [&str; 2] = ["ImportStarted", "ImportCompleted"];
