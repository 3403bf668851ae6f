//! The file sweep, run by one process of the deployment at a time (the holder of an advisory
//! lock on a connection of its own, like the swarm scheduler; when that process dies,
//! PostgreSQL frees the lock and another takes over). Each run:
//!
//! - deletes tus uploads past their `Upload-Expires`, with their segments;
//! - deletes what dead uploads left under `tmp/` (older than the upload expiry);
//! - deletes content that no live file version names any more, once it has been unnamed
//!   (its file deleted, or never recorded) for `FILE_RETENTION_DAYS`.

use std::time::Duration;

use actix_web::web;
use chrono::Utc;
use uuid::Uuid;

use crate::state::AppState;

/// Items handled per kind and run, so that one run stays short.
const BATCH: i64 = 500;
/// How often a standby process tries to take the lead.
const STANDBY_POLL: Duration = Duration::from_secs(5);

fn lock_key() -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"sweep:files" {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// Starts taking part in the sweep (as the leader or a standby).
pub fn start(state: web::Data<AppState>) {
    crate::rt::supervise("file-sweep", move || {
        let state = state.clone();
        async move {
            loop {
                if let Err(e) = lead(&state).await {
                    tracing::warn!(error = %e, "file sweep stopped; retrying");
                }
                tokio::time::sleep(STANDBY_POLL).await;
            }
        }
    });
}

async fn lead(state: &AppState) -> anyhow::Result<()> {
    let mut conn = state.pool.acquire().await?.detach();
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key())
            .fetch_one(&mut conn)
            .await?;
        if got {
            break;
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }
    // The lock lives on the host this connection reached (see `db::primary`).
    let epoch = crate::db::epoch();
    loop {
        // The lock lives as long as this connection: make sure it still does.
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        if crate::db::epoch() != epoch {
            anyhow::bail!("the database moved to another host: the lock stayed behind");
        }
        if let Err(e) = run_once(state).await {
            tracing::warn!(error = %e, "file sweep run failed");
        }
        tokio::time::sleep(state.files.settings.sweep_every).await;
    }
}

/// One run of the sweep; public for the `files sweep` command and tests.
pub async fn run_once(state: &AppState) -> anyhow::Result<SweepReport> {
    let storage = &state.files.storage;
    let settings = &state.files.settings;
    let mut report = SweepReport::default();

    let expired: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM file_uploads WHERE expires_at < now() ORDER BY expires_at LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&state.pool)
    .await?;
    for id in expired {
        storage.delete_upload(id).await?;
        sqlx::query("DELETE FROM file_upload_segments WHERE upload_id = $1")
            .bind(id)
            .execute(&state.pool)
            .await?;
        sqlx::query("DELETE FROM file_uploads WHERE id = $1")
            .bind(id)
            .execute(&state.pool)
            .await?;
        report.uploads += 1;
    }

    let expiry = chrono::Duration::from_std(settings.upload_expiry)?;
    storage.sweep_tmp(Utc::now() - expiry).await?;

    let retention = format!("{} seconds", settings.retention.as_secs());
    let grace = format!("{} seconds", settings.sweep_grace.as_secs());
    // Content is taken when no live version names it, and either every version that named
    // it belongs to a file deleted longer than the retention ago, or none ever did and it
    // was committed longer than the retention ago. Never within the grace after a commit:
    // an upload counts its content before its version is recorded and projected.
    let unnamed: Vec<(String, chrono::DateTime<Utc>)> = sqlx::query_as(
        "SELECT b.sha256, b.committed_at FROM file_blobs b \
         WHERE b.committed_at <= now() - $2::interval \
           AND NOT EXISTS (SELECT 1 FROM file_versions v JOIN files f ON f.id = v.file_id \
                           WHERE v.sha256 = b.sha256 \
                             AND (f.deleted_at IS NULL OR f.deleted_at > now() - $1::interval)) \
           AND (EXISTS (SELECT 1 FROM file_versions v WHERE v.sha256 = b.sha256) \
                OR b.committed_at <= now() - $1::interval) \
         LIMIT $3",
    )
    .bind(&retention)
    .bind(&grace)
    .bind(BATCH)
    .fetch_all(&state.pool)
    .await?;
    for (sha, seen) in unnamed {
        // Only if no upload counted on the content since it was selected.
        let claimed = sqlx::query("DELETE FROM file_blobs WHERE sha256 = $1 AND committed_at = $2")
            .bind(&sha)
            .bind(seen)
            .execute(&state.pool)
            .await?
            .rows_affected();
        if claimed == 1 {
            storage.delete_content(&sha).await?;
            report.contents += 1;
        }
    }
    if report.uploads > 0 || report.contents > 0 {
        tracing::info!(
            uploads = report.uploads,
            contents = report.contents,
            "file sweep"
        );
    }
    Ok(report)
}

/// What one run deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub uploads: u64,
    pub contents: u64,
}
