//! The catalogue of every event type (`GET /api/v1/catalog`, `universal-backend catalog`):
//! the static part from the `events` crate (family, category, schema versions with their
//! upcasters, a generated JSON Schema of each version, the sample of each version), joined
//! with what this service knows: the projections that consume each type, and how many
//! events of the type the log holds with their first and last positions.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use universal_events::catalog::{catalogue, sample, TypeEntry};
use uuid::Uuid;

/// One schema version of a type, with its sample.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub version: i32,
    /// JSON Schema (2020-12) of the payload (`data`).
    pub schema: Value,
    /// The sample of `events/samples/<Type>.v<N>.json`.
    pub sample: Value,
    /// What the upcaster to the next version does; null for the current version.
    pub upcaster_to_next: Option<&'static str>,
}

/// One event type of the catalogue.
#[derive(Debug, Clone, Serialize)]
pub struct TypeView {
    pub event_type: &'static str,
    pub category: &'static str,
    pub family: &'static str,
    pub current_version: i32,
    pub versions: Vec<VersionView>,
    /// Names of the projections (read models) that apply it.
    pub projections: Vec<&'static str>,
    /// Events of this type in the log (of the caller's organization, for its admins).
    pub count: i64,
    pub first_position: Option<i64>,
    pub last_position: Option<i64>,
}

/// The catalogue with counts over the events of `organization` (every event when `None`).
pub async fn build(
    pool: &sqlx::PgPool,
    organization: Option<Uuid>,
) -> Result<Vec<TypeView>, sqlx::Error> {
    let counts: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT event_type, count(*), min(global_position), max(global_position) FROM events \
         WHERE $1::text IS NULL OR metadata->>'organization_id' = $1 GROUP BY event_type",
    )
    .bind(organization.map(|o| o.to_string()))
    .fetch_all(pool)
    .await?;
    let counts: HashMap<String, (i64, i64, i64)> = counts
        .into_iter()
        .map(|(t, n, first, last)| (t, (n, first, last)))
        .collect();
    let projections = crate::projections::all();
    Ok(catalogue()
        .into_iter()
        .map(|entry: TypeEntry| {
            let (count, first, last) = counts
                .get(entry.event_type)
                .map_or((0, None, None), |(n, f, l)| (*n, Some(*f), Some(*l)));
            TypeView {
                event_type: entry.event_type,
                category: entry.category,
                family: entry.family,
                current_version: entry.current_version,
                versions: entry
                    .versions
                    .into_iter()
                    .map(|v| VersionView {
                        version: v.version,
                        sample: sample(entry.event_type, v.version).unwrap_or(Value::Null),
                        schema: v.schema,
                        upcaster_to_next: v.upcaster_to_next,
                    })
                    .collect(),
                projections: projections
                    .iter()
                    .filter(|p| p.event_types().contains(&entry.event_type))
                    .map(|p| p.name())
                    .collect(),
                count,
                first_position: first,
                last_position: last,
            }
        })
        .collect())
}
