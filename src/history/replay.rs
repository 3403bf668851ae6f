//! A read model as it was: `replay <projection> --to-position P | --to-time T --into S`
//! replays the projection's events up to that point into copies of its tables in schema
//! `S`, while the live read model serves on. An analyst then asks SQL what the dashboard
//! showed at that moment (`SELECT ... FROM S.buildings`). `--drop` removes the schema.
//!
//! The replay applies batches exactly as a rebuild does (`runner::apply_or_park`): an event
//! the projection cannot apply is parked, here in `S.replay_parked`, and the replay goes on.
//! `S.replay_info` records what the schema holds. Only a schema made by a replay (one with
//! `replay_info`) is ever replaced or dropped.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgPool};

use crate::progress::Progress;
use crate::projections::parked::Parked;
use crate::projections::runner::{apply_or_park, read_page, reads_of};
use crate::projections::Projection;
use crate::store::EventStore;

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// After the event at this position (inclusive).
    Position(i64),
    /// After the last event recorded at or before this time.
    Time(DateTime<Utc>),
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub schema: String,
    pub position: i64,
    pub events: u64,
    pub parked: usize,
    pub elapsed: std::time::Duration,
}

/// A schema name a replay may create: a plain lowercase SQL identifier that is not one of
/// the service's own schemas.
pub fn check_schema(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        anyhow::bail!("`{name}` is not a schema name: use lowercase letters, digits and `_`");
    }
    if name == "public"
        || name == "information_schema"
        || name.starts_with("pg_")
        || name.starts_with("rebuild_")
    {
        anyhow::bail!("`{name}` is reserved; choose another schema for the replay");
    }
    Ok(())
}

/// Whether `schema` exists, and whether a replay made it.
async fn existing(pool: &PgPool, schema: &str) -> Result<Option<bool>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(None);
    }
    let ours: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{schema}.replay_info"))
        .fetch_one(pool)
        .await?;
    Ok(Some(ours))
}

/// Drops a schema a replay made; returns whether there was one.
pub async fn drop_schema(pool: &PgPool, schema: &str) -> anyhow::Result<bool> {
    check_schema(schema)?;
    match existing(pool, schema).await? {
        None => Ok(false),
        Some(false) => anyhow::bail!("schema `{schema}` was not made by a replay; not dropping it"),
        Some(true) => {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(pool)
                .await?;
            Ok(true)
        }
    }
}

/// The position a replay stops at.
pub async fn resolve(pool: &PgPool, until: Until) -> Result<i64, sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    match until {
        Until::Position(p) => Ok(p.clamp(0, head)),
        Until::Time(t) => {
            sqlx::query_scalar(
                "SELECT coalesce(max(global_position), 0) FROM events WHERE recorded_at <= $1",
            )
            .bind(t)
            .fetch_one(pool)
            .await
        }
    }
}

/// Replays `projection` up to `until` into `schema` (replacing an earlier replay there).
pub async fn replay(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    until: Until,
    schema: &str,
    batch_size: i64,
    progress: &Progress,
) -> anyhow::Result<ReplayReport> {
    check_schema(schema)?;
    let started = std::time::Instant::now();
    if existing(pool, schema).await? == Some(false) {
        anyhow::bail!("schema `{schema}` exists and was not made by a replay");
    }
    let to = resolve(pool, until).await?;
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let mut tx = conn.begin().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *tx)
        .await?;
    for t in projection.tables() {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{t} (LIKE public.{t} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!(
        "CREATE TABLE {schema}.replay_info (projection text NOT NULL, to_position bigint NOT NULL, \
         to_time timestamptz, events bigint NOT NULL, parked integer NOT NULL, \
         finished_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "CREATE TABLE {schema}.replay_parked (position bigint PRIMARY KEY, event_id uuid NOT NULL, \
         stream_id text NOT NULL, event_type text NOT NULL, error text NOT NULL)"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let filter = reads_of(projection);
    let search_path = format!("SET LOCAL search_path = {schema}, public");
    let mut position = 0;
    let mut events = 0u64;
    let mut parked: Vec<Parked> = Vec::new();
    while position < to {
        let mut page = read_page(store, pool, &filter, position, to, batch_size).await?;
        let mut tx = conn.begin().await?;
        sqlx::query(&search_path).execute(&mut *tx).await?;
        let mut now_parked = apply_or_park(&mut tx, projection, &page.events).await?;
        now_parked.extend(page.unreadable.take());
        for p in &now_parked {
            sqlx::query(
                "INSERT INTO replay_parked (position, event_id, stream_id, event_type, error) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(p.position)
            .bind(p.event_id)
            .bind(&p.stream_id)
            .bind(&p.event_type)
            .bind(&p.error)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        parked.extend(now_parked);
        events += page.events.len() as u64;
        progress.inc((page.to - position) as u64);
        position = page.to;
    }
    let to_time = match until {
        Until::Time(t) => Some(t),
        Until::Position(_) => None,
    };
    sqlx::query(&format!(
        "INSERT INTO {schema}.replay_info (projection, to_position, to_time, events, parked) \
         VALUES ($1, $2, $3, $4, $5)"
    ))
    .bind(projection.name())
    .bind(to)
    .bind(to_time)
    .bind(events as i64)
    .bind(parked.len() as i32)
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(ReplayReport {
        schema: schema.to_owned(),
        position: to,
        events,
        parked: parked.len(),
        elapsed: started.elapsed(),
    })
}
