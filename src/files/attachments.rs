//! Message attachments that name a file of the store (`{file_id}`), on both sides of a
//! message:
//!
//! - **sending**: every file named must be one the sender may read now ([`check_sender`]),
//!   or the message is refused (422 on `attachments`) and nothing is recorded. A file the
//!   sender may not see gets the same answer as a file that does not exist;
//! - **reading** (HTTP lists, the answer to a send, the live `message:new` of a socket):
//!   [`show`] turns each `{file_id}` into what this reader may see *now*: the file's current
//!   name, MIME type, size and content URL, or `{file_id, unavailable: true}` and nothing
//!   else when the reader may not read the file (any more), or when the file was deleted.
//!
//! Permission comes from [`super::access::user_access`], whose actors read the tail of
//! their streams before answering: a grant revoked in another process hides the file from
//! the next read.

use std::collections::HashMap;

use serde_json::{json, Value};
use universal_events::file::FileAccess;
use universal_events::identity::Role;
use universal_events::messaging::Attachment;
use uuid::Uuid;

use super::access::user_access;
use crate::http::error::command_error;
use crate::http::ApiError;
use crate::state::AppState;

/// Who reads or sends: a user of an organization, with their role there now (`None`: no
/// longer a member).
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub role: Option<Role>,
}

/// The path of a file's current content.
pub fn content_url(file: Uuid) -> String {
    format!("/api/v1/files/{file}/content")
}

/// What `reader` may see of `file` now: its name, type, size and URL, or `None`.
async fn visible(state: &AppState, reader: Reader, file: Uuid) -> Result<Option<Value>, ApiError> {
    let (_, f) = state
        .registries
        .files
        .inspect(file)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("file not found")))?;
    let access = user_access(
        state,
        reader.user_id,
        reader.role,
        reader.organization_id,
        &f,
    )
    .await?;
    if access.is_none_or(|a| a < FileAccess::View) {
        return Ok(None);
    }
    let Some((version, current)) = f.current() else {
        return Ok(None);
    };
    Ok(Some(json!({
        "file_id": file,
        "name": f.name,
        "content_type": current.content.mime_type,
        "size": current.content.size,
        "version": version,
        "url": content_url(file),
        "unavailable": false,
    })))
}

/// Refuses the message when it names a file its sender may not read now (422 on
/// `attachments.file_id`, the same answer for a file that does not exist).
pub async fn check_sender(
    state: &AppState,
    sender: Reader,
    attachments: &[Attachment],
) -> Result<(), ApiError> {
    for a in attachments {
        let Attachment::File(f) = a else { continue };
        if visible(state, sender, f.file_id).await?.is_none() {
            return Err(ApiError::validation(
                "attachments.file_id",
                format!(
                    "no file {} that you may read: attach files you may read",
                    f.file_id
                ),
            ));
        }
    }
    Ok(())
}

/// Rewrites the attachments of a message (`attachments`, a JSON array as stored) for
/// `reader`: links stay as they are; a `{file_id}` becomes the file as the reader may see
/// it now, or `{file_id, unavailable: true}`. `seen` keeps what was found per file, so a
/// page of messages asks once per file.
pub async fn show(
    state: &AppState,
    reader: Reader,
    attachments: &mut Value,
    seen: &mut HashMap<Uuid, Option<Value>>,
) -> Result<(), ApiError> {
    let Value::Array(items) = attachments else {
        return Ok(());
    };
    for item in items.iter_mut() {
        let Some(file) = item
            .get("file_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            continue;
        };
        let shown = match seen.get(&file) {
            Some(v) => v.clone(),
            None => {
                let v = visible(state, reader, file).await?;
                seen.insert(file, v.clone());
                v
            }
        };
        *item = shown.unwrap_or_else(|| json!({ "file_id": file, "unavailable": true }));
    }
    Ok(())
}

/// Like [`show`], where an answer cannot wait for an error to be reported (a socket's live
/// feed): a file whose access cannot be decided now is shown as unavailable.
pub async fn show_or_hide(state: &AppState, reader: Reader, attachments: &mut Value) {
    let mut seen = HashMap::new();
    if let Err(e) = show(state, reader, attachments, &mut seen).await {
        tracing::warn!(error = %e.message, "attachment access could not be decided; hidden");
        if let Value::Array(items) = attachments {
            for item in items.iter_mut() {
                if let Some(file) = item.get("file_id").cloned() {
                    if item.get("unavailable") != Some(&Value::Bool(false)) {
                        *item = json!({ "file_id": file, "unavailable": true });
                    }
                }
            }
        }
    }
}
