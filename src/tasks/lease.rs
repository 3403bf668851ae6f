//! Leases of swarm tasks (table `task_leases`): what the leader admitted, which process's
//! worker claimed it, and its heartbeat.
//!
//! - The leader inserts a lease (no owner) for each task it admits, on the connection that
//!   holds its lock: a leader that lost its lock cannot admit anything more.
//! - A worker claims the oldest unclaimed leases with `FOR UPDATE SKIP LOCKED`, so two
//!   processes never claim the same one, and records the attempt's start with its owner.
//! - Each process heartbeats all of its leases in one statement every [`HEARTBEAT_EVERY`].
//!   A failed heartbeat counts as a lost lease: the worker stops without recording.
//! - The leader rescues leases whose heartbeat is older than `WORKER_LEASE_SECS`.
//!
//! Wake-ups go over `NOTIFY` on [`CHANNEL`]: `admitted` wakes idle workers, `freed` and
//! `created` wake the leader. Every wait also has a poll as fallback.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The NOTIFY channel of the scheduler and its workers.
pub const CHANNEL: &str = "ub_tasks";
/// How often a process heartbeats the leases of its workers.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How often idle workers look for admitted tasks when no notification came.
pub const CLAIM_POLL: Duration = Duration::from_secs(1);

/// A name for this process, unique among the processes on one database: its host, its pid
/// and a random part (several applications may share one process in tests).
pub fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(32)
        .collect();
    let random = Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &random[..8])
}

/// A lease as the leader and the workers see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Lease {
    pub task_id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub attempt: i32,
    pub owner: Option<String>,
}

/// Every lease: admitted, claimed or not.
pub async fn all(conn: &mut PgConnection) -> sqlx::Result<Vec<Lease>> {
    sqlx::query_as(
        "SELECT task_id, organization_id, user_id, attempt, owner FROM task_leases \
         ORDER BY admitted_seq",
    )
    .fetch_all(conn)
    .await
}

/// Admits attempt `attempt` of a task: a lease no worker has claimed yet.
pub async fn admit(
    conn: &mut PgConnection,
    task: Uuid,
    org: Uuid,
    user: Uuid,
    attempt: u32,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO task_leases (task_id, organization_id, user_id, attempt) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING",
    )
    .bind(task)
    .bind(org)
    .bind(user)
    .bind(attempt as i32)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The `application_name` of the session on which a process heartbeats its leases.
pub fn presence_name(owner: &str) -> String {
    format!("{PRESENCE_PREFIX}{owner}")
}

const PRESENCE_PREFIX: &str = "ub-worker/";

/// A lease's heartbeat may be this old before a worker without a heartbeat session counts
/// as gone (a claim's first beat comes within [`HEARTBEAT_EVERY`]).
const PRESENCE_GRACE_SECS: f64 = 2.0;

/// Leases claimed by a worker that is gone: its heartbeat is older than `secs`, or its
/// process has no heartbeat session any more (PostgreSQL closes the sessions of a process
/// that died) and its heartbeat is older than a short grace. A killed process's tasks are
/// rescued within seconds; a process cut off by the network, whose sessions linger until
/// TCP keepalives end them, within `secs`.
pub async fn stale(conn: &mut PgConnection, secs: u64) -> sqlx::Result<Vec<Lease>> {
    sqlx::query_as(
        "SELECT task_id, organization_id, user_id, attempt, owner FROM task_leases l \
         WHERE owner IS NOT NULL AND ( \
           heartbeat_at < now() - make_interval(secs => $1) \
           OR (heartbeat_at < now() - make_interval(secs => $2) AND NOT EXISTS ( \
                 SELECT 1 FROM pg_stat_activity a \
                 WHERE a.datname = current_database() AND a.application_name = $3 || l.owner))) \
         ORDER BY admitted_seq",
    )
    .bind(secs as f64)
    .bind(PRESENCE_GRACE_SECS.min(secs as f64))
    .bind(PRESENCE_PREFIX)
    .fetch_all(conn)
    .await
}

/// Deletes the lease of `task` if it is still the one described (same attempt and owner).
pub async fn remove(
    conn: &mut PgConnection,
    task: Uuid,
    attempt: i32,
    owner: Option<&str>,
) -> sqlx::Result<bool> {
    let deleted = sqlx::query(
        "DELETE FROM task_leases WHERE task_id = $1 AND attempt = $2 \
         AND owner IS NOT DISTINCT FROM $3",
    )
    .bind(task)
    .bind(attempt)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Claims at most `limit` unclaimed leases, oldest admission first, for `owner`.
pub async fn claim(pool: &PgPool, owner: &str, limit: usize) -> sqlx::Result<Vec<Lease>> {
    sqlx::query_as(
        "UPDATE task_leases SET owner = $1, claimed_at = now(), heartbeat_at = now() \
         WHERE task_id IN ( \
           SELECT task_id FROM task_leases WHERE owner IS NULL \
           ORDER BY admitted_seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING task_id, organization_id, user_id, attempt, owner",
    )
    .bind(owner)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
}

/// Heartbeats the leases of `owner` on `tasks`; returns those it still holds.
pub async fn heartbeat(
    conn: &mut PgConnection,
    owner: &str,
    tasks: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "UPDATE task_leases SET heartbeat_at = now() WHERE owner = $1 AND task_id = ANY($2) \
         RETURNING task_id",
    )
    .bind(owner)
    .bind(tasks)
    .fetch_all(conn)
    .await
}

/// Ends the lease of a worker whose task ended (or that gave it back).
pub async fn release(pool: &PgPool, task: Uuid, attempt: u32, owner: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM task_leases WHERE task_id = $1 AND attempt = $2 AND owner = $3")
        .bind(task)
        .bind(attempt as i32)
        .bind(owner)
        .execute(pool)
        .await?;
    Ok(())
}

/// Tells every process something happened (`admitted`, `freed`, `created`).
pub async fn notify<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    what: &str,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(what)
        .execute(conn)
        .await?;
    Ok(())
}

/// Who runs what, for `/health` and the command line: every lease with its owner and the
/// seconds since its heartbeat.
pub async fn overview(
    pool: &PgPool,
) -> sqlx::Result<Vec<(Uuid, i32, Option<String>, Option<f64>)>> {
    sqlx::query_as(
        "SELECT task_id, attempt, owner, \
                EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 \
         FROM task_leases ORDER BY admitted_seq LIMIT 1000",
    )
    .fetch_all(pool)
    .await
}
