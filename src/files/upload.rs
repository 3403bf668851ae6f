//! What every upload path shares (multipart, tus): where an upload may go, the size and
//! quota limits (413 with the limit in `details`), and recording the committed content as a
//! version of a file through its actor.

use actix_web::http::StatusCode;
use serde_json::json;
use universal_events::file::FileAccess;
use uuid::Uuid;

use super::access;
use super::storage::{Committed, WriteError};
use crate::actors::file::{Content, File, FileAction, FileCommand, FileError};
use crate::actors::{CommandMeta, CommandReply};
use crate::http::error::command_error;
use crate::http::guard::Principal;
use crate::http::ApiError;
use crate::state::AppState;

/// Where an upload goes: a new file (in a project or not) or a new version of a file.
#[derive(Debug, Clone)]
pub struct Target {
    pub file_id: Uuid,
    pub project_id: Option<Uuid>,
    /// The file exists: the upload is a new version.
    pub existing: bool,
}

/// Checks the caller may upload there: a new version needs `edit` on the file; a new file
/// in a project needs `edit` on the project's files; a new file outside projects needs a
/// writer's role. 404 where the caller may not see the file or project.
pub async fn authorize(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    project: Option<Uuid>,
    file: Option<Uuid>,
) -> Result<Target, ApiError> {
    if let Some(id) = file {
        let (_, f, _) = access::require(state, who, org, id, FileAccess::Edit).await?;
        return Ok(Target {
            file_id: id,
            project_id: f.project_id,
            existing: true,
        });
    }
    match project {
        Some(p) => match access::project_access(state, who, org, p).await? {
            None => return Err(ApiError::not_found("project not found")),
            Some(a) if a < FileAccess::Edit => {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "your role may only read this project's files",
                ))
            }
            Some(_) => {}
        },
        None => who.require_writer()?,
    }
    Ok(Target {
        file_id: Uuid::now_v7(),
        project_id: project,
        existing: false,
    })
}

/// Bytes the organization's files take: every version of every file not deleted.
pub async fn usage(state: &AppState, org: Uuid) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(v.size), 0)::bigint FROM file_versions v \
         JOIN files f ON f.id = v.file_id WHERE f.organization_id = $1 AND f.deleted_at IS NULL",
    )
    .bind(org)
    .fetch_one(&state.pool)
    .await?)
}

/// 413 `file_too_large` naming `FILE_MAX_BYTES`.
pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("a file may be at most {max} bytes"),
    )
    .with_details(json!({ "limit": max, "setting": "FILE_MAX_BYTES" }))
}

/// Refuses `size` more bytes for `org` when they are over the file size limit or would take
/// the organization over its quota (413 `quota_exceeded` with the quota and the usage).
pub async fn check_room(state: &AppState, org: Uuid, size: u64) -> Result<(), ApiError> {
    let settings = &state.files.settings;
    if size > settings.max_bytes {
        return Err(too_large(settings.max_bytes));
    }
    let used = usage(state, org).await?.max(0) as u64;
    if used.saturating_add(size) > settings.quota_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "quota_exceeded",
            format!(
                "the organization's files may take at most {} bytes",
                settings.quota_bytes
            ),
        )
        .with_details(json!({
            "limit": settings.quota_bytes,
            "used": used,
            "size": size,
            "setting": "FILE_QUOTA_BYTES",
        })));
    }
    Ok(())
}

/// Maps a failed write: over the limit is 413, the store failing is 503.
pub fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::TooLarge(max) => too_large(max),
        other => {
            tracing::warn!(error = %other, "file content could not be stored");
            ApiError::unavailable("the file store is unavailable; retry the upload")
        }
    }
}

pub fn file_error(e: FileError) -> ApiError {
    match e {
        FileError::NotFound => ApiError::not_found("file not found"),
        FileError::NoVersion => ApiError::not_found("version not found"),
        FileError::NoLink => ApiError::not_found("share link not found"),
        FileError::NoGrant => ApiError::not_found("grant not found"),
        FileError::Invalid { field, message } => ApiError::validation(field, message),
    }
}

/// Records committed content as the next version of the target file.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    target: &Target,
    name: &str,
    mime_type: &str,
    committed: Committed,
    meta: CommandMeta,
) -> Result<CommandReply<File>, ApiError> {
    let cmd = FileCommand {
        organization_id: org,
        by: who.user_id,
        at: chrono::Utc::now(),
        action: FileAction::Upload {
            file_id: target.file_id,
            project_id: target.project_id,
            name: name.to_owned(),
            content: Content {
                sha256: committed.sha256,
                size: committed.size,
                mime_type: mime_type.to_owned(),
                sniffed_mime_type: committed.sniffed_mime_type,
            },
        },
    };
    state
        .registries
        .files
        .execute(target.file_id, cmd, None, meta)
        .await
        .map_err(|e| command_error(e, file_error))
}

/// The declared type, checked: a well-formed MIME type, or `application/octet-stream`
/// when none was declared.
pub fn declared_type(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.map(str::trim).filter(|s| !s.is_empty());
    let Some(raw) = raw else {
        return Ok("application/octet-stream".to_owned());
    };
    if raw.len() > crate::actors::file::MAX_MIME {
        return Err(ApiError::validation("mime_type", "is too long"));
    }
    raw.parse::<mime::Mime>()
        .map(|m| m.essence_str().to_owned())
        .map_err(|_| ApiError::validation("mime_type", "is not a MIME type"))
}
