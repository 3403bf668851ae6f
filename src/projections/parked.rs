//! Parked events: events a projection could not apply, recorded so that it can go on.
//!
//! The runner (see [`super::runner`]) writes a row here in the same transaction that moves the
//! checkpoint past the event, so the event is neither lost nor able to stop the projection.
//! An operator then lists the rows, retries one (after fixing the cause) or skips it. A row is
//! never deleted: `state` says what became of it.
//!
//! - `parked`: open; the read model lacks this event.
//! - `skipped`: an operator chose to leave it out; kept for the record.
//! - `applied`: a retry, or a later rebuild, applied it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::runner::{self, Projection};
use crate::store::{EventStore, Filter, RawEvent};

/// Longest error text kept per row; a projection error may quote a whole payload.
const MAX_ERROR_CHARS: usize = 4000;

/// An event a projection could not apply, about to be recorded.
#[derive(Debug, Clone)]
pub struct Parked {
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub event_type: String,
    pub error: String,
}

impl Parked {
    /// `event` with the error that stopped it.
    pub fn new(event: &RawEvent, error: &anyhow::Error) -> Self {
        Self {
            position: event.position,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            event_type: event.event_type.clone(),
            error: error_text(error),
        }
    }
}

/// The whole cause chain on one line, cut to a size a row can hold. Causes already quoted by
/// the error above them are left out. PostgreSQL text cannot hold NUL, and an error may
/// quote an event's payload, so NUL is replaced.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    let text = text.replace('\0', "\u{fffd}");
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A row of `parked_events` (also its schema in the API contract).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ParkedEvent {
    pub projection: String,
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub event_type: String,
    pub error: String,
    /// How many times applying it failed (the first run, rebuilds and retries).
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
    /// `parked`, `skipped` or `applied`.
    pub state: String,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The operator who skipped or retried it (none when a rebuild resolved it).
    pub resolved_by: Option<Uuid>,
    pub note: Option<String>,
}

const COLUMNS: &str = "projection, position, event_id, stream_id, event_type, error, attempts, \
    parked_at, state, resolved_at, resolved_by, note";

/// Records `parked` for `projection` inside the caller's transaction.
///
/// An event parked again (by a rebuild, or after a checkpoint was reset) keeps its row: an
/// operator's `skipped` stays, anything else is open again with the new error.
pub async fn park(
    conn: &mut PgConnection,
    projection: &str,
    parked: &[Parked],
) -> Result<(), sqlx::Error> {
    if parked.is_empty() {
        return Ok(());
    }
    let positions: Vec<i64> = parked.iter().map(|p| p.position).collect();
    let ids: Vec<Uuid> = parked.iter().map(|p| p.event_id).collect();
    let streams: Vec<&str> = parked.iter().map(|p| p.stream_id.as_str()).collect();
    let types: Vec<&str> = parked.iter().map(|p| p.event_type.as_str()).collect();
    let errors: Vec<&str> = parked.iter().map(|p| p.error.as_str()).collect();
    sqlx::query(
        "INSERT INTO parked_events AS p (projection, position, event_id, stream_id, event_type, \
         error) SELECT $1, * FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::text[], \
         $6::text[]) \
         ON CONFLICT (projection, position) DO UPDATE SET error = EXCLUDED.error, \
         attempts = p.attempts + 1, \
         parked_at = CASE WHEN p.state = 'applied' THEN now() ELSE p.parked_at END, \
         state = CASE WHEN p.state = 'skipped' THEN 'skipped' ELSE 'parked' END, \
         resolved_at = CASE WHEN p.state = 'skipped' THEN p.resolved_at END, \
         resolved_by = CASE WHEN p.state = 'skipped' THEN p.resolved_by END, \
         note = CASE WHEN p.state = 'skipped' THEN p.note END",
    )
    .bind(projection)
    .bind(&positions)
    .bind(&ids)
    .bind(&streams)
    .bind(&types)
    .bind(&errors)
    .execute(conn)
    .await?;
    Ok(())
}

/// After a rebuild replayed the log up to `up_to` into the tables now swapped in: the rows of
/// `projection` become exactly what the rebuild parked. Rows of events it applied are
/// resolved as `applied`; the events it parked are parked (or stay skipped).
pub async fn reconcile_rebuild(
    conn: &mut PgConnection,
    projection: &str,
    up_to: i64,
    parked: &[Parked],
) -> Result<(), sqlx::Error> {
    let positions: Vec<i64> = parked.iter().map(|p| p.position).collect();
    sqlx::query(
        "UPDATE parked_events SET state = 'applied', resolved_at = now(), resolved_by = NULL, \
         note = 'applied by a rebuild' \
         WHERE projection = $1 AND position <= $2 AND state <> 'applied' \
         AND position <> ALL($3::bigint[])",
    )
    .bind(projection)
    .bind(up_to)
    .bind(&positions)
    .execute(&mut *conn)
    .await?;
    park(conn, projection, parked).await
}

/// Open (`parked`) rows per projection; projections without any are absent.
pub async fn open_counts(pool: &PgPool) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, count(*) FROM parked_events WHERE state = 'parked' \
         GROUP BY projection",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Sets the `ub_projection_parked_events` gauge of every projection from the table.
pub async fn refresh_gauges(pool: &PgPool) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let counts = open_counts(pool).await?;
    for p in super::all() {
        let open = counts.get(p.name()).copied().unwrap_or(0);
        metrics::gauge!("ub_projection_parked_events", "projection" => p.name()).set(open as f64);
    }
    Ok(counts)
}

/// Which rows a listing wants.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub projection: Option<String>,
    /// `None`: every state.
    pub state: Option<String>,
    /// Rows after this `(position, projection)`, in that order.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

/// Rows in `(position, projection)` order.
pub async fn list(pool: &PgPool, query: &ListQuery) -> Result<Vec<ParkedEvent>, sqlx::Error> {
    let (after_position, after_projection) = query
        .after
        .clone()
        .map_or((None, None), |(p, n)| (Some(p), Some(n)));
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM parked_events \
         WHERE ($1::text IS NULL OR projection = $1) AND ($2::text IS NULL OR state = $2) \
         AND ($3::bigint IS NULL OR (position, projection) > ($3, $4::text)) \
         ORDER BY position, projection LIMIT $5"
    ))
    .bind(&query.projection)
    .bind(&query.state)
    .bind(after_position)
    .bind(after_projection)
    .bind(query.limit)
    .fetch_all(pool)
    .await
}

/// One row.
pub async fn get(
    pool: &PgPool,
    projection: &str,
    position: i64,
) -> Result<Option<ParkedEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM parked_events WHERE projection = $1 AND position = $2"
    ))
    .bind(projection)
    .bind(position)
    .fetch_optional(pool)
    .await
}

/// Why a skip or a retry did not resolve a row.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no parked event at this position")]
    NotFound,
    #[error("the event is not parked: it is {}", .0.state)]
    NotParked(Box<ParkedEvent>),
    /// The retry failed again; the row stays parked with the new error.
    #[error("applying the event failed again: {error}")]
    StillFailing {
        error: String,
        row: Box<ParkedEvent>,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ResolveError {
    fn from(e: sqlx::Error) -> Self {
        ResolveError::Other(e.into())
    }
}

/// Marks a parked event as skipped: the read model goes on without it.
pub async fn skip(
    pool: &PgPool,
    projection: &str,
    position: i64,
    by: Option<Uuid>,
    note: Option<&str>,
) -> Result<ParkedEvent, ResolveError> {
    let row: Option<ParkedEvent> = sqlx::query_as(&format!(
        "UPDATE parked_events SET state = 'skipped', resolved_at = now(), resolved_by = $3, \
         note = $4 WHERE projection = $1 AND position = $2 AND state = 'parked' \
         RETURNING {COLUMNS}"
    ))
    .bind(projection)
    .bind(position)
    .bind(by)
    .bind(note)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => {
            refresh_gauges(pool).await?;
            Ok(row)
        }
        None => match get(pool, projection, position).await? {
            Some(row) => Err(ResolveError::NotParked(Box::new(row))),
            None => Err(ResolveError::NotFound),
        },
    }
}

/// Applies a parked event to the live read model now, in one transaction that holds the
/// projection's checkpoint row (so the runner and a rebuild's swap wait for it). On success
/// the row is resolved as `applied`; on failure it stays parked with the new error and the
/// read model is untouched.
///
/// The event is applied out of order, after the events that followed it: right for read
/// models that add up (energy), for others the operator's call.
pub async fn retry(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    position: i64,
    by: Option<Uuid>,
) -> Result<ParkedEvent, ResolveError> {
    let name = projection.name();
    let mut conn = pool.acquire().await.map_err(anyhow::Error::from)?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT position FROM checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let row: Option<ParkedEvent> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM parked_events WHERE projection = $1 AND position = $2 FOR UPDATE"
    ))
    .bind(name)
    .bind(position)
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or(ResolveError::NotFound)?;
    if row.state != "parked" {
        return Err(ResolveError::NotParked(Box::new(row)));
    }
    let filter = Filter {
        skip_metadata: true,
        ..Filter::default()
    };
    let outcome = match store
        .read_all_raw(position - 1, Some(position), &filter, 1)
        .await
    {
        Ok(events) => match events.into_iter().next() {
            Some(event) if event.event_id == row.event_id => {
                runner::apply_guarded(&mut tx, projection, std::slice::from_ref(&event)).await?
            }
            _ => Some(anyhow::anyhow!(
                "event {} is no longer at position {position} of the log",
                row.event_id
            )),
        },
        Err(e) => {
            let e = anyhow::Error::from(e);
            if runner::is_transient(&e) {
                return Err(ResolveError::Other(e));
            }
            Some(e)
        }
    };
    let resolved: ParkedEvent = match &outcome {
        None => {
            sqlx::query_as(&format!(
            "UPDATE parked_events SET state = 'applied', resolved_at = now(), resolved_by = $3, \
             note = 'applied by a retry' WHERE projection = $1 AND position = $2 \
             RETURNING {COLUMNS}"
        ))
            .bind(name)
            .bind(position)
            .bind(by)
            .fetch_one(&mut *tx)
            .await?
        }
        Some(e) => {
            sqlx::query_as(&format!(
                "UPDATE parked_events SET error = $3, attempts = attempts + 1 \
             WHERE projection = $1 AND position = $2 RETURNING {COLUMNS}"
            ))
            .bind(name)
            .bind(position)
            .bind(error_text(e))
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    refresh_gauges(pool).await?;
    match outcome {
        None => {
            tracing::info!(
                projection = name,
                position,
                "parked event applied by a retry"
            );
            Ok(resolved)
        }
        Some(e) => Err(ResolveError::StillFailing {
            error: error_text(&e),
            row: Box::new(resolved),
        }),
    }
}
