//! The catalogue of event types: for every type its family, stream category, schema
//! versions with the upcaster between them, and a JSON Schema of each version generated
//! from the types of this crate (`schemars`), never written by hand.
//!
//! A family is one line of [`FAMILIES`]; an older schema version that an upcaster lifts is
//! one line of [`OLDER_VERSIONS`]. `events/tests/catalog.rs` fails when a type has no schema
//! or no sample.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::building::{BuildingRegisteredV1, EVENT_TYPES as BUILDING_EVENT_TYPES};
use crate::conversation::CONVERSATION_EVENT_TYPES;
use crate::document::{DocumentEvent, DOCUMENT_EVENT_TYPES};
use crate::file::{FileEvent, FILE_EVENT_TYPES};
use crate::flag::FLAG_EVENT_TYPES;
use crate::identity::{ORGANIZATION_EVENT_TYPES, USER_EVENT_TYPES};
use crate::import::{ImportEvent, IMPORT_EVENT_TYPES};
use crate::messaging::{InboxEvent, MessagePostedV1, MessagingEvent, MESSAGING_EVENT_TYPES};
use crate::project::PROJECT_EVENT_TYPES;
use crate::swarm::{ANALYSIS_EVENT_TYPES, SWARM_TASK_EVENT_TYPES};
use crate::team::TEAM_EVENT_TYPES;
use crate::{
    BuildingEvent, ConversationEvent, EmailEvent, EventFamily, FlagEvent, OrganizationEvent,
    ProjectEvent, SwarmTaskEvent, TeamEvent, UserEvent,
};

/// One enum of events: the stream category it is written to and its types.
pub struct Family {
    /// The enum's name in this crate.
    pub name: &'static str,
    /// The stream category (`building` for `building-<id>`).
    pub category: &'static str,
    pub types: &'static [&'static str],
    /// The JSON Schema of the whole enum (tagged `{type, data}`).
    schema: fn() -> Value,
    /// The schema version written today, per type.
    current: fn(&str) -> i32,
}

fn family<F: EventFamily + JsonSchema>(
    name: &'static str,
    category: &'static str,
    types: &'static [&'static str],
) -> Family {
    Family {
        name,
        category,
        types,
        schema: || {
            SchemaGenerator::default()
                .into_root_schema_for::<F>()
                .to_value()
        },
        current: F::schema_version,
    }
}

/// Every family of events. Adding an entity kind is one line here.
pub fn families() -> Vec<Family> {
    vec![
        family::<BuildingEvent>("BuildingEvent", "building", &BUILDING_EVENT_TYPES),
        family::<UserEvent>("UserEvent", "user", &USER_EVENT_TYPES),
        family::<EmailEvent>("EmailEvent", "email", &["EmailClaimed"]),
        family::<OrganizationEvent>(
            "OrganizationEvent",
            "organization",
            &ORGANIZATION_EVENT_TYPES,
        ),
        family::<ConversationEvent>(
            "ConversationEvent",
            "conversation",
            &CONVERSATION_EVENT_TYPES,
        ),
        family::<MessagingEvent>("MessagingEvent", "channel", &MESSAGING_EVENT_TYPES),
        family::<InboxEvent>("InboxEvent", "inbox", &["NotificationsRead"]),
        family::<TeamEvent>("TeamEvent", "team", &TEAM_EVENT_TYPES),
        family::<ProjectEvent>("ProjectEvent", "project", &PROJECT_EVENT_TYPES),
        family::<SwarmTaskEvent>("SwarmTaskEvent", "swarm_task", &SWARM_TASK_EVENT_TYPES),
        family::<SwarmTaskEvent>("SwarmTaskEvent", "swarm_task", &ANALYSIS_EVENT_TYPES),
        family::<FlagEvent>("FlagEvent", "flag", &FLAG_EVENT_TYPES),
        family::<ImportEvent>("ImportEvent", "import", &IMPORT_EVENT_TYPES),
        family::<DocumentEvent>("DocumentEvent", "document", &DOCUMENT_EVENT_TYPES),
        family::<FileEvent>("FileEvent", "file", &FILE_EVENT_TYPES),
    ]
}

/// A stored schema version older than the current one: its payload type and the upcaster
/// that lifts it to the next version.
pub struct OlderVersion {
    pub event_type: &'static str,
    pub version: i32,
    schema: fn() -> Value,
    /// What the upcaster to `version + 1` does.
    pub upcaster: &'static str,
}

/// Every older schema version that the upcasters still read.
pub const OLDER_VERSIONS: &[OlderVersion] = &[
    OlderVersion {
        event_type: "BuildingRegistered",
        version: 1,
        schema: || root_schema::<BuildingRegisteredV1>("BuildingRegistered"),
        upcaster: "v1 → v2: adds `organization_id: null` (buildings registered before \
                   organizations existed belong to none)",
    },
    OlderVersion {
        event_type: "MessagePosted",
        version: 1,
        schema: || root_schema::<MessagePostedV1>("MessagePosted"),
        upcaster: "v1 → v2: unchanged (version 2 adds file attachments `{file_id}`; a \
                   version 1 attachment is a link, read as it is)",
    },
];

fn root_schema<T: JsonSchema>(title: &str) -> Value {
    let mut schema = SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value();
    schema["title"] = json!(title);
    schema
}

/// One schema version of an event type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionEntry {
    pub version: i32,
    /// JSON Schema (2020-12) of the payload (`data`) of this version.
    pub schema: Value,
    /// The upcaster to the next version; `None` for the current version.
    pub upcaster_to_next: Option<&'static str>,
}

/// One event type of the catalogue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TypeEntry {
    pub event_type: &'static str,
    pub family: &'static str,
    pub category: &'static str,
    pub current_version: i32,
    /// Oldest first; the last one is the current version.
    pub versions: Vec<VersionEntry>,
}

/// Every event type with its schemas, sorted by type name.
pub fn catalogue() -> Vec<TypeEntry> {
    let mut out = Vec::new();
    for f in families() {
        let whole = (f.schema)();
        for t in f.types {
            let current = (f.current)(t);
            let mut versions: Vec<VersionEntry> = OLDER_VERSIONS
                .iter()
                .filter(|o| o.event_type == *t)
                .map(|o| VersionEntry {
                    version: o.version,
                    schema: (o.schema)(),
                    upcaster_to_next: Some(o.upcaster),
                })
                .collect();
            versions.sort_by_key(|v| v.version);
            versions.push(VersionEntry {
                version: current,
                schema: variant_schema(&whole, t).unwrap_or(Value::Null),
                upcaster_to_next: None,
            });
            out.push(TypeEntry {
                event_type: t,
                family: f.name,
                category: f.category,
                current_version: current,
                versions,
            });
        }
    }
    out.sort_by_key(|e| e.event_type);
    out
}

/// The schema of one variant's payload, cut out of the schema of its tagged enum: the
/// `data` property of the `oneOf` branch whose `type` is `event_type`, made standalone by
/// carrying the enum's `$defs` along.
pub fn variant_schema(whole: &Value, event_type: &str) -> Option<Value> {
    let branches = whole.get("oneOf")?.as_array()?;
    let branch = branches.iter().find(|b| {
        let tag = &b["properties"]["type"];
        tag.get("const").and_then(Value::as_str) == Some(event_type)
            || tag
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|e| e.len() == 1 && e[0] == event_type)
    })?;
    let mut data = branch.get("properties")?.get("data")?.clone();
    // The payload is usually a reference to its struct: inline it, keeping the `$defs`
    // for the references inside.
    if let Some(name) = data
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        if let Some(def) = whole.get("$defs").and_then(|d| d.get(name)) {
            data = def.clone();
        }
    }
    let mut schema = Map::new();
    schema.insert(
        "$schema".into(),
        whole
            .get("$schema")
            .cloned()
            .unwrap_or_else(|| json!("https://json-schema.org/draft/2020-12/schema")),
    );
    schema.insert("title".into(), json!(event_type));
    match data {
        Value::Object(map) => schema.extend(map),
        other => {
            schema.insert("allOf".into(), json!([other]));
        }
    }
    if let Some(defs) = whole.get("$defs") {
        schema.insert("$defs".into(), defs.clone());
    }
    Some(Value::Object(schema))
}

/// The samples of `events/samples/`, embedded: `(event_type, schema_version, JSON text)`.
pub const SAMPLES: &[(&str, i32, &str)] = include!(concat!(env!("OUT_DIR"), "/samples.rs"));

/// The sample of a type and version, parsed.
pub fn sample(event_type: &str, version: i32) -> Option<Value> {
    SAMPLES
        .iter()
        .find(|(t, v, _)| *t == event_type && *v == version)
        .and_then(|(_, _, text)| serde_json::from_str(text).ok())
}
