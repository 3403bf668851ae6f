//! Who may do what with a file, now. The caller's role comes from the access view (see
//! `crate::identity::access`); the file, its project and the teams it is granted to are read
//! from their actors, which read the tail of their streams before answering, so a revoked
//! grant or a removed member loses access on the next request in every process.
//!
//! - organization admins: everything;
//! - members of the file's project: `edit` (their organization role a writer) or `view`;
//! - a file outside any project: its uploader, `admin`;
//! - grants to the user, or to a team the user belongs to, add their level.
//!
//! No access at all is "not found", so a file's existence is not revealed.

use universal_events::file::FileAccess;
use universal_events::identity::Role;
use uuid::Uuid;

use crate::actors::file::File;
use crate::http::error::command_error;
use crate::http::guard::Principal;
use crate::http::ApiError;
use crate::state::AppState;

/// Whether `user` is a member of `project` of `org` (false for another organization's).
pub async fn project_member(
    state: &AppState,
    org: Uuid,
    project: Uuid,
    user: Uuid,
) -> Result<bool, ApiError> {
    let (_, p) = state
        .registries
        .projects
        .inspect(project)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("project not found")))?;
    Ok(p.id.is_some() && p.organization_id == Some(org) && p.members.contains(&user))
}

/// What the caller may do with `project`'s files: `None` when it may not see the project.
pub async fn project_access(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    project: Uuid,
) -> Result<Option<FileAccess>, ApiError> {
    let (_, p) = state
        .registries
        .projects
        .inspect(project)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("project not found")))?;
    if p.id.is_none() || p.organization_id != Some(org) {
        return Ok(None);
    }
    if who.role == Some(Role::Admin) {
        return Ok(Some(FileAccess::Admin));
    }
    if !p.members.contains(&who.user_id) {
        return Ok(None);
    }
    Ok(Some(writer_or_viewer(who)))
}

fn writer_or_viewer(who: &Principal) -> FileAccess {
    role_access(who.role)
}

fn role_access(role: Option<Role>) -> FileAccess {
    if role.is_some_and(Role::can_write) {
        FileAccess::Edit
    } else {
        FileAccess::View
    }
}

/// The caller's access to `file` (its current state), or `None`.
pub async fn file_access(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    file: &File,
) -> Result<Option<FileAccess>, ApiError> {
    user_access(state, who.user_id, who.role, org, file).await
}

/// The access of `user`, whose role in `org` is `role` now, to `file` (its current state),
/// or `None`. What [`file_access`] answers for a request, for readers that are not one (a
/// socket's live feed, the check of a message's attachments).
pub async fn user_access(
    state: &AppState,
    user: Uuid,
    role: Option<Role>,
    org: Uuid,
    file: &File,
) -> Result<Option<FileAccess>, ApiError> {
    if file.id.is_none() || file.organization_id != Some(org) || file.deleted {
        return Ok(None);
    }
    if role.is_none() {
        // Not a member of the organization (any more).
        return Ok(None);
    }
    if role == Some(Role::Admin) {
        return Ok(Some(FileAccess::Admin));
    }
    let mut best: Option<FileAccess> = None;
    match file.project_id {
        Some(project) => {
            if project_member(state, org, project, user).await? {
                best = Some(role_access(role));
            }
        }
        None => {
            if file.created_by == Some(user) {
                best = Some(FileAccess::Admin);
            }
        }
    }
    let mut teams = Vec::new();
    for team in file.granted_teams() {
        let (_, t) = state
            .registries
            .teams
            .inspect(team)
            .await
            .map_err(|e| command_error(e, |_| ApiError::not_found("team not found")))?;
        if t.organization_id == Some(org) && !t.archived && t.members.contains_key(&user) {
            teams.push(team);
        }
    }
    Ok(best.max(file.granted(user, &teams)))
}

/// The file as the caller may see it with at least `need`: 404 when it may not see it at
/// all, 403 when it sees it but may not do this.
pub async fn require(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    id: Uuid,
    need: FileAccess,
) -> Result<(i64, File, FileAccess), ApiError> {
    let (version, file) = state
        .registries
        .files
        .inspect(id)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("file not found")))?;
    match file_access(state, who, org, &file).await? {
        None => Err(ApiError::not_found("file not found")),
        Some(a) if a < need => Err(ApiError::forbidden(
            "forbidden",
            format!("this needs `{}` access to the file", need.as_str()),
        )),
        Some(a) => Ok((version, file, a)),
    }
}
