//! FluxStudio files read models: `files` (one row per file with its current version),
//! `file_versions` (every version with its uploader and time), `file_grants` and
//! `file_links`. Lists, quotas and the retention sweep read these; authorization of a single
//! file reads the file's actor instead, which is never behind the log.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::file::{FileEvent, FILE_EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

/// The projection's name, for `min_position` waits.
pub const NAME: &str = "files";

pub struct Files;

#[async_trait]
impl Projection for Files {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        &FILE_EVENT_TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["files", "file_versions", "file_grants", "file_links"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            if e.category == "file" {
                apply_file(conn, e).await?;
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn add_version(
    conn: &mut PgConnection,
    id: Uuid,
    version: i32,
    sha256: &str,
    size: i64,
    mime: &str,
    sniffed: &Option<String>,
    by: Uuid,
    at: chrono::DateTime<chrono::Utc>,
    restored_from: Option<i32>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO file_versions (file_id, version, sha256, size, mime_type, \
         sniffed_mime_type, uploaded_by, uploaded_at, restored_from) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(version)
    .bind(sha256)
    .bind(size)
    .bind(mime)
    .bind(sniffed)
    .bind(by)
    .bind(at)
    .bind(restored_from)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE files SET current_version = $2, sha256 = $3, size = $4, mime_type = $5, \
         sniffed_mime_type = $6, updated_at = $7 WHERE id = $1",
    )
    .bind(id)
    .bind(version)
    .bind(sha256)
    .bind(size)
    .bind(mime)
    .bind(sniffed)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply_file(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = e
        .stream_id
        .strip_prefix("file-")
        .with_context(|| format!("{} is not a file stream", e.stream_id))?;
    let id = Uuid::parse_str(id)?;
    let event = e.decode::<FileEvent>()?;
    match &event {
        FileEvent::FileUploaded(u) => {
            sqlx::query(
                "INSERT INTO files (id, organization_id, project_id, name, current_version, \
                 sha256, size, mime_type, sniffed_mime_type, created_by, created_at, updated_at, \
                 created_position, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13) \
                 ON CONFLICT (id) DO UPDATE SET name = $4",
            )
            .bind(id)
            .bind(u.organization_id)
            .bind(u.project_id)
            .bind(&u.name)
            .bind(u.version)
            .bind(&u.sha256)
            .bind(u.size)
            .bind(&u.mime_type)
            .bind(&u.sniffed_mime_type)
            .bind(u.uploaded_by)
            .bind(u.uploaded_at)
            .bind(e.position)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
            add_version(
                conn,
                id,
                u.version,
                &u.sha256,
                u.size,
                &u.mime_type,
                &u.sniffed_mime_type,
                u.uploaded_by,
                u.uploaded_at,
                None,
            )
            .await?;
        }
        FileEvent::FileVersionRestored(r) => {
            add_version(
                conn,
                id,
                r.version,
                &r.sha256,
                r.size,
                &r.mime_type,
                &r.sniffed_mime_type,
                r.restored_by,
                r.restored_at,
                Some(r.restored_version),
            )
            .await?;
        }
        FileEvent::FileRenamed(r) => {
            sqlx::query("UPDATE files SET name = $2 WHERE id = $1")
                .bind(id)
                .bind(&r.name)
                .execute(&mut *conn)
                .await?;
        }
        FileEvent::FileMoved(m) => {
            sqlx::query("UPDATE files SET project_id = $2 WHERE id = $1")
                .bind(id)
                .bind(m.project_id)
                .execute(&mut *conn)
                .await?;
        }
        FileEvent::FileDeleted(d) => {
            sqlx::query("UPDATE files SET deleted_at = $2 WHERE id = $1")
                .bind(id)
                .bind(d.deleted_at)
                .execute(&mut *conn)
                .await?;
        }
        FileEvent::FilePermissionGranted(g) => {
            sqlx::query(
                "INSERT INTO file_grants (file_id, grantee_kind, grantee_id, access) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (file_id, grantee_kind, grantee_id) DO UPDATE SET access = $4",
            )
            .bind(id)
            .bind(g.grantee_kind.as_str())
            .bind(g.grantee_id)
            .bind(g.access.as_str())
            .execute(&mut *conn)
            .await?;
        }
        FileEvent::FilePermissionRevoked(r) => {
            sqlx::query(
                "DELETE FROM file_grants WHERE file_id = $1 AND grantee_kind = $2 \
                 AND grantee_id = $3",
            )
            .bind(id)
            .bind(r.grantee_kind.as_str())
            .bind(r.grantee_id)
            .execute(&mut *conn)
            .await?;
        }
        FileEvent::ShareLinkCreated(l) => {
            sqlx::query(
                "INSERT INTO file_links (id, file_id, expires_at, max_downloads, created_by, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(l.link_id)
            .bind(id)
            .bind(l.expires_at)
            .bind(l.max_downloads)
            .bind(l.created_by)
            .bind(l.created_at)
            .execute(&mut *conn)
            .await?;
        }
        FileEvent::ShareLinkRevoked(l) => {
            sqlx::query("UPDATE file_links SET revoked_at = $2 WHERE id = $1")
                .bind(l.link_id)
                .bind(l.revoked_at)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query("UPDATE files SET version = $2 WHERE id = $1")
        .bind(id)
        .bind(e.version)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
