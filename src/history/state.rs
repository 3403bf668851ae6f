//! Any entity as of any moment: the state after the event at a version, or after the last
//! event at or before a time, folded by the entity's own `evolve` and shown as its public
//! view (see [`super::views`]).
//!
//! The per-kind lookup is the table in [`kinds`]: adding an entity kind is one line there
//! (its decider type and its view function).
//!
//! **Snapshots.** A fold starts from the newest snapshot at or before the point: the actor
//! runtime's latest snapshot when it is old enough, or one of the history snapshots that
//! folds leave behind (`history_snapshots`, one every `history_snapshot_every` versions, a
//! bounded number per fold). A snapshot is a cache of a fold: a snapshot of an older
//! `SNAPSHOT_VERSION` is ignored, and dropping the table changes no answer.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use universal_events::EventFamily;

use super::views;
use super::HistoryError;
use crate::actors::runtime::Entity;
use crate::store::category_of;

/// The point of a stream's history to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// After the event of this version (0: before the first event).
    Version(i64),
    /// After the last event recorded at or before this time.
    Time(DateTime<Utc>),
}

/// How a fold may use and leave snapshots.
#[derive(Debug, Clone, Copy)]
pub struct FoldOptions {
    /// Start from a snapshot at or before the point when there is one.
    pub use_snapshots: bool,
    /// Leave a history snapshot every this many versions passed (0: none).
    pub snapshot_every: i64,
}

impl Default for FoldOptions {
    fn default() -> Self {
        Self {
            use_snapshots: true,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

/// Default of `history_snapshot_every`.
pub const DEFAULT_SNAPSHOT_EVERY: i64 = 1000;
/// Most history snapshots one fold writes, so that a first look at a long stream stays
/// bounded in writes; the next looks continue where it stopped.
const MAX_SNAPSHOTS_PER_FOLD: usize = 64;

/// An entity's state at a point of its stream.
#[derive(Debug, Clone, Serialize)]
pub struct StateAt {
    pub stream: String,
    /// The entity kind (the stream category).
    pub kind: &'static str,
    /// Version, position and time of the last event applied (0, 0 and null before the first).
    pub version: i64,
    pub position: i64,
    pub recorded_at: Option<DateTime<Utc>>,
    /// The public view of the entity at that point.
    pub state: Value,
    /// Events folded for this answer, and the snapshot version it started from (0: none).
    #[serde(skip)]
    pub folded: u64,
    #[serde(skip)]
    pub from_snapshot: i64,
}

/// One entity kind's fold and view, behind a trait object so that the table of kinds can
/// hold every decider type.
#[async_trait]
pub trait Kind: Send + Sync {
    fn category(&self) -> &'static str;
    /// The view of the state after folding versions `1..=version` of `stream`;
    /// returns the view, the events folded and the snapshot version used.
    async fn fold(
        &self,
        pool: &PgPool,
        stream: &str,
        version: i64,
        options: FoldOptions,
    ) -> Result<(Value, u64, i64), HistoryError>;
}

struct Typed<E: Entity> {
    view: fn(&E) -> Value,
}

fn kind<E: Entity + Sync>(view: fn(&E) -> Value) -> Box<dyn Kind> {
    Box::new(Typed { view })
}

/// Every entity kind whose state can be looked at. One line per kind.
pub fn kinds() -> Vec<Box<dyn Kind>> {
    use crate::actors::*;
    vec![
        kind::<building::Building>(views::building),
        kind::<user::User>(views::user),
        kind::<organization::Organization>(views::organization),
        kind::<conversation::Conversation>(views::conversation),
        kind::<channel::Channel>(views::channel),
        kind::<channel::Inbox>(views::inbox),
        kind::<team::Team>(views::team),
        kind::<project::Project>(views::project),
        kind::<swarm_task::SwarmTask>(views::swarm_task),
        kind::<flag::Flag>(views::flag),
        kind::<document::Document>(views::document),
        kind::<file::File>(views::file),
    ]
}

/// The kind of a stream, by its category.
pub fn kind_of(stream: &str) -> Result<Box<dyn Kind>, HistoryError> {
    let category = category_of(stream);
    kinds()
        .into_iter()
        .find(|k| k.category() == category)
        .ok_or_else(|| HistoryError::NoKind(category.to_owned()))
}

#[async_trait]
impl<E: Entity + Sync> Kind for Typed<E> {
    fn category(&self) -> &'static str {
        E::CATEGORY
    }

    async fn fold(
        &self,
        pool: &PgPool,
        stream: &str,
        version: i64,
        options: FoldOptions,
    ) -> Result<(Value, u64, i64), HistoryError> {
        let mut state = E::default();
        let mut from = 0;
        if options.use_snapshots && version > 0 {
            // The newest usable snapshot at or before the point, of either table.
            let snapshot: Option<(i64, Value)> = sqlx::query_as(
                "SELECT version, state FROM ( \
                   (SELECT version, state FROM history_snapshots WHERE stream_id = $1 \
                    AND version <= $2 AND schema_version = $3 ORDER BY version DESC LIMIT 1) \
                   UNION ALL \
                   (SELECT version, state FROM snapshots WHERE stream_id = $1 \
                    AND version <= $2 AND schema_version = $3) \
                 ) s ORDER BY version DESC LIMIT 1",
            )
            .bind(stream)
            .bind(version)
            .bind(E::SNAPSHOT_VERSION)
            .fetch_optional(pool)
            .await?;
            if let Some((v, json)) = snapshot {
                match serde_json::from_value::<E>(json) {
                    Ok(s) => {
                        state = s;
                        from = v;
                    }
                    Err(e) => tracing::warn!(stream, error = %e, "ignoring unreadable snapshot"),
                }
            }
        }
        let mut rows = sqlx::query_as::<_, (i64, String, i32, Value)>(
            "SELECT version, event_type, schema_version, data FROM events \
             WHERE stream_id = $1 AND version > $2 AND version <= $3 ORDER BY version",
        )
        .bind(stream)
        .bind(from)
        .bind(version)
        .fetch(pool);
        let mut folded = 0u64;
        let mut keep: Vec<(i64, Value)> = Vec::new();
        while let Some((v, event_type, schema_version, data)) = rows.try_next().await? {
            let event = E::Event::decode_ref(&event_type, schema_version, &data)
                .map_err(|e| HistoryError::Decode(format!("{stream}@{v}: {e}")))?;
            state.evolve(&event);
            folded += 1;
            if options.snapshot_every > 0
                && v % options.snapshot_every == 0
                && v < version
                && keep.len() < MAX_SNAPSHOTS_PER_FOLD
            {
                if let Ok(json) = serde_json::to_value(&state) {
                    keep.push((v, json));
                }
            }
        }
        drop(rows);
        if !keep.is_empty() {
            let (versions, states): (Vec<i64>, Vec<Value>) = keep.into_iter().unzip();
            // A cache: a failure to save costs the next fold time, never an answer.
            if let Err(e) = sqlx::query(
                "INSERT INTO history_snapshots (stream_id, version, schema_version, state) \
                 SELECT $1, v, $3, s FROM UNNEST($2::bigint[], $4::jsonb[]) AS t(v, s) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(stream)
            .bind(&versions)
            .bind(E::SNAPSHOT_VERSION)
            .bind(&states)
            .execute(pool)
            .await
            {
                tracing::warn!(stream, error = %e, "history snapshots not saved");
            }
        }
        Ok(((self.view)(&state), folded, from))
    }
}

/// The version, position and time of the event a point names, if the stream has one.
/// `Version(0)` names the empty state before the first event.
async fn resolve(
    pool: &PgPool,
    stream: &str,
    point: Point,
) -> Result<Option<(i64, i64, Option<DateTime<Utc>>)>, HistoryError> {
    let row: Option<(i64, i64, DateTime<Utc>)> = match point {
        Point::Version(0) => return Ok(Some((0, 0, None))),
        Point::Version(v) => {
            sqlx::query_as(
                "SELECT version, global_position, recorded_at FROM events \
                 WHERE stream_id = $1 AND version = $2",
            )
            .bind(stream)
            .bind(v)
            .fetch_optional(pool)
            .await?
        }
        Point::Time(t) => {
            sqlx::query_as(
                "SELECT version, global_position, recorded_at FROM events \
                 WHERE stream_id = $1 AND recorded_at <= $2 ORDER BY version DESC LIMIT 1",
            )
            .bind(stream)
            .bind(t)
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(row.map(|(v, p, t)| (v, p, Some(t))))
}

/// The state of `stream` at `point`. Errors name a missing kind or point; the caller checks
/// access first.
pub async fn state_at(
    pool: &PgPool,
    stream: &str,
    point: Point,
    options: FoldOptions,
) -> Result<StateAt, HistoryError> {
    let kind = kind_of(stream)?;
    let (version, position, recorded_at) = resolve(pool, stream, point)
        .await?
        .ok_or_else(|| HistoryError::NoPoint(describe(stream, point)))?;
    let (state, folded, from_snapshot) = kind.fold(pool, stream, version, options).await?;
    Ok(StateAt {
        stream: stream.to_owned(),
        kind: kind.category(),
        version,
        position,
        recorded_at,
        state,
        folded,
        from_snapshot,
    })
}

fn describe(stream: &str, point: Point) -> String {
    match point {
        Point::Version(v) => format!("stream `{stream}` has no version {v}"),
        Point::Time(t) => format!("stream `{stream}` has no event at or before {t}"),
    }
}

/// One field of a view that differs between two states, by its JSON path.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    /// `name`, `progress.done`, `members` (arrays are compared whole).
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// The fields that differ between two views, in path order.
pub fn changes(from: &Value, to: &Value) -> Vec<Change> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(Change {
                field: path.to_owned(),
                from: a.clone(),
                to: b.clone(),
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", from, to, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_name_each_differing_field_by_its_path() {
        let a = json!({"name": "A", "progress": {"done": 1, "total": 5}, "members": [1]});
        let b =
            json!({"name": "A", "progress": {"done": 3, "total": 5}, "members": [1, 2], "x": true});
        let c = changes(&a, &b);
        let fields: Vec<_> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["members", "progress.done", "x"]);
        assert_eq!(c[1].from, json!(1));
        assert_eq!(c[1].to, json!(3));
        assert!(changes(&a, &a).is_empty());
    }

    #[test]
    fn every_kind_has_its_own_category() {
        let mut categories: Vec<_> = kinds().iter().map(|k| k.category()).collect();
        let n = categories.len();
        categories.sort_unstable();
        categories.dedup();
        assert_eq!(categories.len(), n);
    }
}
