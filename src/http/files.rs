//! FluxStudio files: simple (multipart) uploads, metadata, versions, downloads with ranges,
//! rename and move, delete, restore, grants and share links. Resumable uploads (tus) are in
//! `crate::files::tus`, mounted here at `/uploads`.
//!
//! Served at `/api/v1/files`, `/api/v1/projects/{id}/files`, `/api/v1/uploads` and, for the
//! FluxStudio frontend, without `/v1`; every route belongs to the `fluxstudio` frontend. A
//! share link downloads at `/s/{token}` without an account. Who may do what is decided in
//! `crate::files::access`: no access at all answers 404, never 403.

use actix_multipart::Multipart;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use universal_events::file::{FileAccess, GranteeKind};
use universal_events::identity::Frontend;
use uuid::Uuid;

use super::command::{idempotent, parse_json, scoped_meta, Answer, Page};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::file::{Content, File, FileAction, FileCommand};
use crate::actors::{CommandMeta, CommandReply};
use crate::files::access::{self, require};
use crate::files::serve::{self, Ranged};
use crate::files::upload::{self, file_error};
use crate::state::AppState;

/// Longest text field of an upload form.
const MAX_FIELD: usize = 1024;
/// What a multipart body may carry besides the file (boundaries, headers, fields).
const FORM_OVERHEAD: u64 = 64 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/files")
            .route("", web::post().to(upload_file))
            .route("", web::get().to(list_files))
            .route("/{id}", web::get().to(get_file))
            .route("/{id}", web::patch().to(update_file))
            .route("/{id}", web::delete().to(delete_file))
            .route("/{id}/versions", web::get().to(list_versions))
            .route(
                "/{id}/versions/{version}/restore",
                web::post().to(restore_version),
            )
            .route("/{id}/content", web::get().to(download))
            .route("/{id}/permissions", web::get().to(list_permissions))
            .route("/{id}/permissions", web::post().to(grant))
            .route("/{id}/permissions/{grantee_id}", web::delete().to(revoke))
            .route("/{id}/links", web::post().to(create_link))
            .route("/{id}/links/{link_id}", web::delete().to(revoke_link)),
    )
    .configure(crate::files::tus::configure);
}

/// A project's files (`/projects/{id}/files`), inside the `/projects` scope of
/// [`super::fluxstudio`].
pub fn configure_projects(cfg: &mut web::ServiceConfig) {
    cfg.route("/{id}/files", web::post().to(upload_project_file))
        .route("/{id}/files", web::get().to(list_project_files));
}

/// The share-link route, outside `/api` (no account, no frontend).
pub fn configure_links(cfg: &mut web::ServiceConfig) {
    cfg.service(web::scope("/s").route("/{token}", web::get().to(shared)));
}

fn reader(who: &Principal, req: &HttpRequest) -> Result<Uuid, ApiError> {
    who.frontend(req, Frontend::Fluxstudio)
}

fn file_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("file not found"))
}

async fn run(
    state: &AppState,
    id: Uuid,
    cmd: FileCommand,
    expected: Option<i64>,
    meta: CommandMeta,
) -> Result<CommandReply<File>, ApiError> {
    state
        .registries
        .files
        .execute(id, cmd, expected, meta)
        .await
        .map_err(|e| command_error(e, file_error))
}

fn command(org: Uuid, who: &Principal, action: FileAction) -> FileCommand {
    FileCommand {
        organization_id: org,
        by: who.user_id,
        at: Utc::now(),
        action,
    }
}

// ---- views ----

/// A file's versions, oldest first.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VersionList {
    items: Vec<FileVersionView>,
}

/// A file's grants.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct GrantList {
    items: Vec<FileGrantView>,
}

/// One version of a file.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FileVersionView {
    pub version: i32,
    pub size: i64,
    pub sha256: String,
    pub mime_type: String,
    pub sniffed_mime_type: Option<String>,
    pub uploaded_by: Uuid,
    pub uploaded_at: DateTime<Utc>,
    /// The version this one restored.
    pub restored_from: Option<i32>,
}

/// A file with its current version and what the caller may do with it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FileView {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub created_by: Option<Uuid>,
    /// The current version.
    pub current: FileVersionView,
    pub version_count: usize,
    /// `view`, `comment`, `edit` or `admin`.
    pub access: String,
    /// The file stream's version (what `If-Match` takes).
    pub stream_version: i64,
}

fn version_view(n: i32, v: &crate::actors::file::Version) -> FileVersionView {
    FileVersionView {
        version: n,
        size: v.content.size,
        sha256: v.content.sha256.clone(),
        mime_type: v.content.mime_type.clone(),
        sniffed_mime_type: v.content.sniffed_mime_type.clone(),
        uploaded_by: v.uploaded_by,
        uploaded_at: v.uploaded_at,
        restored_from: v.restored_from,
    }
}

fn file_view(
    id: Uuid,
    version: i64,
    file: &File,
    access: FileAccess,
) -> Result<FileView, ApiError> {
    let (n, current) = file
        .current()
        .ok_or_else(|| ApiError::not_found("file not found"))?;
    Ok(FileView {
        id,
        organization_id: file.organization_id.unwrap_or_default(),
        project_id: file.project_id,
        name: file.name.clone(),
        created_by: file.created_by,
        current: version_view(n, current),
        version_count: file.versions.len(),
        access: access.as_str().to_owned(),
        stream_version: version,
    })
}

// ---- uploads ----

/// The form of a simple upload: the text fields (when given) come before the file.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// A project of the organization (only on `POST /files`; the other route names it in
    /// its path).
    project_id: Option<Uuid>,
    /// Upload a new version of this file instead of a new file.
    file_id: Option<Uuid>,
    /// The file's name (default: the part's filename).
    name: Option<String>,
    /// The content.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// What an upload answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// The file.
    pub id: Uuid,
    /// The file stream's version.
    pub version: i64,
    /// Log position of the upload's event (for `min_position`).
    pub position: i64,
    /// The version of the file this upload became.
    pub file_version: i32,
    pub size: i64,
    pub sha256: String,
}

/// Uploads a file (multipart form data, streamed to storage).
#[utoipa::path(
    post,
    path = "/api/v1/files",
    tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(super::fluxstudio::FluxstudioHeaders),
    responses(
        (status = 201, description = "Stored", body = Uploaded),
        (status = 413, description = "Over `FILE_MAX_BYTES` or the organization's `FILE_QUOTA_BYTES`; `details.limit` says which limit", body = super::schema::ErrorBody),
        (status = 415, description = "Not `multipart/form-data`", body = super::schema::ErrorBody),
    ),
)]
async fn upload_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    receive(&state, &req, &who, org, None, payload).await
}

/// Uploads a file into a project (multipart form data, streamed to storage).
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/files",
    tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(("id" = Uuid, Path, description = "The project"), super::fluxstudio::FluxstudioHeaders),
    responses(
        (status = 201, description = "Stored", body = Uploaded),
        (status = 413, description = "Over `FILE_MAX_BYTES` or the organization's `FILE_QUOTA_BYTES`; `details.limit` says which limit", body = super::schema::ErrorBody),
        (status = 415, description = "Not `multipart/form-data`", body = super::schema::ErrorBody),
    ),
)]
async fn upload_project_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let project = Uuid::parse_str(&path).map_err(|_| ApiError::not_found("project not found"))?;
    receive(&state, &req, &who, org, Some(project), payload).await
}

fn multipart_error(e: actix_multipart::MultipartError) -> ApiError {
    use actix_multipart::MultipartError as M;
    match e {
        M::ContentTypeMissing | M::ContentTypeParse | M::ContentTypeIncompatible => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the upload as multipart/form-data",
        ),
        other => ApiError::bad_request(format!("the form is malformed: {other}")),
    }
}

async fn text_field(field: &mut actix_multipart::Field, name: &str) -> Result<String, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(multipart_error)?;
        if out.len() + chunk.len() > MAX_FIELD {
            return Err(ApiError::validation(
                name,
                format!("must be at most {MAX_FIELD} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).map_err(|_| ApiError::validation(name, "must be UTF-8 text"))
}

fn uuid_field(name: &'static str, text: &str) -> Result<Option<Uuid>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(text)
        .map(Some)
        .map_err(|_| ApiError::validation(name, "is not a UUID"))
}

/// Reads the form, streams the file part to storage and records the version.
async fn receive(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    org: Uuid,
    path_project: Option<Uuid>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let settings = state.files.settings.clone();
    let declared_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared_length {
        // Refused before a byte is read: a body larger than the largest file and its form.
        if len > settings.max_bytes.saturating_add(FORM_OVERHEAD) {
            return Err(upload::too_large(settings.max_bytes));
        }
    }
    let mut form = Multipart::new(req.headers(), payload);
    let mut project = path_project;
    let mut file = None;
    let mut name = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let field_name = field.name().unwrap_or("").to_owned();
        match field_name.as_str() {
            "project_id" if path_project.is_none() => {
                project = uuid_field("project_id", &text_field(&mut field, "project_id").await?)?;
            }
            "file_id" => file = uuid_field("file_id", &text_field(&mut field, "file_id").await?)?,
            "name" => name = Some(text_field(&mut field, "name").await?),
            "file" => {
                let part_name = field
                    .content_disposition()
                    .and_then(|d| d.get_filename())
                    .map(str::to_owned);
                let name = name.or(part_name).unwrap_or_default();
                let mime = upload::declared_type(field.content_type().map(|m| m.essence_str()))?;
                let target = upload::authorize(state, who, org, project, file).await?;
                let name = if name.is_empty() && target.existing {
                    String::new()
                } else {
                    crate::actors::file::clean_name(if name.is_empty() { "upload" } else { &name })
                        .map_err(file_error)?
                };
                if let Some(len) = declared_length {
                    upload::check_room(state, org, len.saturating_sub(FORM_OVERHEAD)).await?;
                }
                let mut writer = state
                    .files
                    .storage
                    .writer(settings.max_bytes)
                    .await
                    .map_err(upload::write_error)?;
                while let Some(chunk) = field.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            writer.abort().await;
                            return Err(multipart_error(e));
                        }
                    };
                    if let Err(e) = writer.write(chunk).await {
                        writer.abort().await;
                        return Err(upload::write_error(e));
                    }
                }
                if let Err(e) = upload::check_room(state, org, writer.size()).await {
                    writer.abort().await;
                    return Err(e);
                }
                let committed = writer
                    .commit(&state.pool)
                    .await
                    .map_err(upload::write_error)?;
                let (size, sha256) = (committed.size, committed.sha256.clone());
                let meta = scoped_meta(req, who, org, Some(Frontend::Fluxstudio))?;
                let reply =
                    upload::record(state, who, org, &target, &name, &mime, committed, meta).await?;
                let file_version = match reply.events.first() {
                    Some(universal_events::file::FileEvent::FileUploaded(u)) => u.version,
                    _ => 0,
                };
                // The rest of the form is not read: the file part ends what counts.
                return Ok(HttpResponse::Created()
                    .insert_header((header::ETAG, format!("\"{}\"", reply.version)))
                    .json(Uploaded {
                        id: target.file_id,
                        version: reply.version,
                        position: reply.position,
                        file_version,
                        size,
                        sha256,
                    }));
            }
            other => {
                return Err(ApiError::validation(
                    "form",
                    format!(
                        "`{other}` is not a field of this form (project_id, file_id, name, file)"
                    ),
                ))
            }
        }
    }
    Err(ApiError::validation("file", "the form has no `file` part"))
}

// ---- reading ----

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListFiles {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Only this project's files (on `GET /files`).
    project_id: Option<Uuid>,
    /// Only this MIME type (`image/png`) or family (`image/*`).
    #[param(max_length = 255)]
    mime_type: Option<String>,
    /// Only files whose current version this user uploaded.
    uploaded_by: Option<Uuid>,
    /// Only names starting with this (case-insensitive).
    #[param(max_length = 255)]
    name_prefix: Option<String>,
}

/// A file in a list.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FileSummary {
    pub id: Uuid,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub current_version: i32,
    pub size: i64,
    pub sha256: String,
    pub mime_type: String,
    pub sniffed_mime_type: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub created_position: i64,
}

/// A page of files.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FilePage {
    pub items: Vec<FileSummary>,
    pub next_cursor: Option<String>,
}

/// Waits (bounded) until the read models the lists use have applied the log as it is now, so
/// that a revoked grant or membership no longer lists anything.
async fn caught_up(state: &AppState) -> Result<(), ApiError> {
    let head = state
        .store
        .head_position()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    for projection in [crate::projections::files::NAME, "fluxstudio"] {
        super::command::wait_for_projection(state, projection, Some(head)).await?;
    }
    Ok(())
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

async fn list(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    project: Option<Uuid>,
    q: &ListFiles,
) -> Result<HttpResponse, ApiError> {
    let page = Page::parse(q.limit, (50, 200), &q.cursor, i64::MAX)?;
    for (field, value) in [("mime_type", &q.mime_type), ("name_prefix", &q.name_prefix)] {
        if value
            .as_ref()
            .is_some_and(|v| v.len() > 255 || v.contains('\0'))
        {
            return Err(ApiError::bad_request(format!("{field} is not valid")));
        }
    }
    caught_up(state).await?;
    let (mime_exact, mime_family) = match q.mime_type.as_deref() {
        Some(m) if m.ends_with("/*") => {
            (None, Some(format!("{}/%", escape_like(&m[..m.len() - 2]))))
        }
        Some(m) => (Some(m.to_ascii_lowercase()), None),
        None => (None, None),
    };
    let prefix = q
        .name_prefix
        .as_deref()
        .map(|p| format!("{}%", escape_like(&p.to_lowercase())));
    let admin = who.role == Some(universal_events::identity::Role::Admin);
    let mut rows: Vec<FileSummary> = sqlx::query_as(
        "SELECT f.id, f.project_id, f.name, f.current_version, f.size, f.sha256, f.mime_type, \
         f.sniffed_mime_type, f.created_by, f.created_at, f.updated_at, f.created_position \
         FROM files f WHERE f.organization_id = $1 AND f.deleted_at IS NULL \
         AND f.created_position < $2 \
         AND ($4::uuid IS NULL OR f.project_id = $4) \
         AND ($5::text IS NULL OR f.mime_type = $5) \
         AND ($6::text IS NULL OR f.mime_type LIKE $6) \
         AND ($7::uuid IS NULL OR EXISTS (SELECT 1 FROM file_versions v WHERE v.file_id = f.id \
              AND v.version = f.current_version AND v.uploaded_by = $7)) \
         AND ($8::text IS NULL OR lower(f.name) LIKE $8) \
         AND ($9 OR (f.project_id IS NULL AND f.created_by = $10) \
              OR EXISTS (SELECT 1 FROM project_members m JOIN projects p ON p.id = m.project_id \
                         WHERE m.project_id = f.project_id AND m.user_id = $10 \
                           AND p.organization_id = $1) \
              OR EXISTS (SELECT 1 FROM file_grants g WHERE g.file_id = f.id \
                         AND ((g.grantee_kind = 'user' AND g.grantee_id = $10) \
                           OR (g.grantee_kind = 'team' AND g.grantee_id IN \
                               (SELECT tm.team_id FROM team_members tm JOIN teams t ON t.id = tm.team_id \
                                WHERE tm.user_id = $10 AND t.archived_at IS NULL))))) \
         ORDER BY f.created_position DESC LIMIT $3",
    )
    .bind(org)
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(project.or(q.project_id))
    .bind(mime_exact)
    .bind(mime_family)
    .bind(q.uploaded_by)
    .bind(prefix)
    .bind(admin)
    .bind(who.user_id)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    Ok(HttpResponse::Ok().json(FilePage {
        items: rows,
        next_cursor,
    }))
}

/// The files of the organization the caller may see, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/files",
    tag = "files",
    params(ListFiles, super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "A page of files", body = FilePage)),
)]
async fn list_files(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    q: web::Query<ListFiles>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    list(&state, &who, org, None, &q).await
}

/// A project's files the caller may see, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/files",
    tag = "files",
    params(("id" = Uuid, Path, description = "The project"), ListFiles, super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "A page of files", body = FilePage)),
)]
async fn list_project_files(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    q: web::Query<ListFiles>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let project = Uuid::parse_str(&path).map_err(|_| ApiError::not_found("project not found"))?;
    if access::project_access(&state, &who, org, project)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("project not found"));
    }
    list(&state, &who, org, Some(project), &q).await
}

/// A file's metadata and current version.
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}",
    tag = "files",
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "The file; `ETag` is its stream version", body = FileView)),
)]
async fn get_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let (version, file, access) = require(&state, &who, org, id, FileAccess::View).await?;
    let view = file_view(id, version, &file, access)?;
    Ok(super::command::with_etag(version, &view))
}

/// Every version of a file with its uploader and time, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}/versions",
    tag = "files",
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "The versions", body = VersionList)),
)]
async fn list_versions(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let (_, file, _) = require(&state, &who, org, id, FileAccess::View).await?;
    let versions: Vec<FileVersionView> = file
        .versions
        .iter()
        .map(|(n, v)| version_view(*n, v))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": versions })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ContentQuery {
    /// A version other than the current one.
    #[param(minimum = 1)]
    version: Option<i32>,
}

/// Downloads a file's content: `ETag` is the SHA-256; `If-None-Match` answers 304; one
/// `Range` answers 206 (416 when it cannot be served).
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}/content",
    tag = "files",
    params(
        ("id" = Uuid, Path, description = "The file"),
        ContentQuery,
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier download"),
        super::fluxstudio::FluxstudioHeaders,
    ),
    responses(
        (status = 200, description = "The content", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Unchanged since the `ETag` given"),
        (status = 416, description = "The range cannot be served", body = super::schema::ErrorBody),
    ),
)]
async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    q: web::Query<ContentQuery>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let (_, file, _) = require(&state, &who, org, id, FileAccess::View).await?;
    let version = match q.version {
        Some(n) => file
            .versions
            .get(&n)
            .ok_or_else(|| ApiError::not_found("version not found"))?,
        None => file
            .current()
            .map(|(_, v)| v)
            .ok_or_else(|| ApiError::not_found("file not found"))?,
    };
    send_content(&state, &req, &file.name, &version.content, || async {
        Ok(())
    })
    .await
}

/// Serves content with the headers of `crate::files::serve`; `count` runs just before bytes
/// are sent (not for a 304 or a 416), and may refuse.
async fn send_content<F, Fut>(
    state: &AppState,
    req: &HttpRequest,
    name: &str,
    content: &Content,
    count: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let etag = format!("\"{}\"", content.sha256);
    let header_text = |h: header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(tags) = header_text(header::IF_NONE_MATCH) {
        if tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        }) {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, etag))
                .finish());
        }
    }
    let size = content.size.max(0) as u64;
    // `If-Range` with another validator: the whole content, as RFC 9110 says.
    let range_header = match header_text(header::IF_RANGE) {
        Some(v) if v.trim() != etag => None,
        _ => header_text(header::RANGE),
    };
    let ranged = serve::parse_range(range_header.as_deref(), size);
    if ranged == Ranged::Unsatisfiable {
        let err = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("the content has {size} bytes"),
        )
        .with_details(json!({ "size": size }));
        let mut res = actix_web::ResponseError::error_response(&err);
        res.headers_mut().insert(
            header::CONTENT_RANGE,
            header::HeaderValue::from_str(&format!("bytes */{size}"))
                .expect("digits are header text"),
        );
        return Ok(res);
    }
    count().await?;
    let (status, range) = match ranged {
        Ranged::Part(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        _ => (StatusCode::OK, None),
    };
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    let stream = if length == 0 {
        futures_util::stream::empty().boxed()
    } else {
        state
            .files
            .storage
            .read(&content.sha256, range.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, sha256 = %content.sha256, "file content unreadable");
                ApiError::unavailable("the file store is unavailable")
            })?
    };
    let attach = serve::must_attach(
        name,
        &content.mime_type,
        content.sniffed_mime_type.as_deref(),
    );
    let mut res = HttpResponse::build(status);
    res.insert_header((
        header::CONTENT_TYPE,
        serve::content_type(&content.mime_type),
    ))
    .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
    .insert_header((
        header::CONTENT_DISPOSITION,
        serve::disposition(name, attach),
    ))
    .insert_header((
        header::CONTENT_SECURITY_POLICY,
        "sandbox; default-src 'none'",
    ))
    .insert_header((header::ETAG, etag))
    .insert_header((header::ACCEPT_RANGES, "bytes"))
    .insert_header((header::CACHE_CONTROL, "private, no-cache"));
    if let Some(r) = &range {
        res.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        ));
    }
    Ok(res
        .no_chunking(length)
        .streaming(stream.map(|r| r.map_err(std::io::Error::other))))
}

// ---- managing ----

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateFile {
    /// A new name (a path keeps only its last segment).
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001f]*$")]
    name: Option<String>,
    /// Another project of the organization; `null` takes the file out of any project.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    project_id: Option<Option<Uuid>>,
}

/// Renames a file or moves it to another project of the organization.
#[utoipa::path(
    patch,
    path = "/api/v1/files/{id}",
    tag = "files",
    request_body = UpdateFile,
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Updated", body = super::schema::CommandResult)),
)]
async fn update_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let input: UpdateFile = parse_json(&body)?;
    require(&state, &who, org, id, FileAccess::Edit).await?;
    if let Some(Some(project)) = input.project_id {
        match access::project_access(&state, &who, org, project).await? {
            None => {
                return Err(ApiError::validation(
                    "project_id",
                    "is not a project you can see",
                ))
            }
            Some(a) if a < FileAccess::Edit => {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "your role may only read that project's files",
                ))
            }
            Some(_) => {}
        }
    }
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let expected = super::command::if_match(&req)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let mut last = None;
        if let Some(name) = input.name {
            let mut m = meta.clone();
            m.command_id = Uuid::new_v5(&meta.command_id, b"rename");
            last = Some(
                run(
                    &state,
                    id,
                    command(org, &who, FileAction::Rename { name }),
                    expected,
                    m,
                )
                .await?,
            );
        }
        if let Some(project_id) = input.project_id {
            let mut m = meta.clone();
            m.command_id = Uuid::new_v5(&meta.command_id, b"move");
            let expected = if last.is_some() { None } else { expected };
            last = Some(
                run(
                    &state,
                    id,
                    command(org, &who, FileAction::Move { project_id }),
                    expected,
                    m,
                )
                .await?,
            );
        }
        let Some(reply) = last else {
            return Err(ApiError::validation(
                "body",
                "name or project_id is required",
            ));
        };
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Deletes a file (a tombstone: the content is kept until the retention sweep).
#[utoipa::path(
    delete,
    path = "/api/v1/files/{id}",
    tag = "files",
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Deleted", body = super::schema::CommandResult)),
)]
async fn delete_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    require(&state, &who, org, id, FileAccess::Edit).await?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let expected = super::command::if_match(&req)?;
    idempotent(&state.pool, &req, &who, b"", || async {
        let reply = run(
            &state,
            id,
            command(org, &who, FileAction::Delete),
            expected,
            meta,
        )
        .await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Makes an old version current again, as a new version.
#[utoipa::path(
    post,
    path = "/api/v1/files/{id}/versions/{version}/restore",
    tag = "files",
    params(
        ("id" = Uuid, Path, description = "The file"),
        ("version" = i32, Path, description = "The version to restore", minimum = 1),
        super::fluxstudio::FluxstudioHeaders,
        super::schema::CommandHeaders,
    ),
    responses((status = 201, description = "Restored as a new version", body = super::schema::CommandResult)),
)]
async fn restore_version(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path.0)?;
    let version: i32 = path
        .1
        .parse()
        .map_err(|_| ApiError::not_found("version not found"))?;
    require(&state, &who, org, id, FileAccess::Edit).await?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let expected = super::command::if_match(&req)?;
    idempotent(&state.pool, &req, &who, b"", || async {
        let reply = run(
            &state,
            id,
            command(org, &who, FileAction::Restore { version }),
            expected,
            meta,
        )
        .await?;
        let mut answer = Answer::of(StatusCode::CREATED, id, &reply);
        if let Some(universal_events::file::FileEvent::FileVersionRestored(r)) =
            reply.events.first()
        {
            answer.body["file_version"] = json!(r.version);
        }
        Ok(answer)
    })
    .await
}

// ---- permissions ----

/// A grant on a file.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FileGrantView {
    /// `user` or `team`.
    pub grantee_kind: String,
    pub grantee_id: Uuid,
    /// `view`, `comment`, `edit` or `admin`.
    pub access: String,
}

/// The grants of a file (file admins only).
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}/permissions",
    tag = "files",
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "The grants", body = GrantList)),
)]
async fn list_permissions(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let (_, file, _) = require(&state, &who, org, id, FileAccess::Admin).await?;
    let items: Vec<FileGrantView> = file
        .grants
        .iter()
        .filter_map(|(key, access)| {
            let (kind, grantee) = key.split_once(':')?;
            Some(FileGrantView {
                grantee_kind: kind.to_owned(),
                grantee_id: Uuid::parse_str(grantee).ok()?,
                access: access.as_str().to_owned(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// The level of a grant.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum AccessSchema {
    View,
    Comment,
    Edit,
    Admin,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Grant {
    /// A member of the organization (or give `team_id`).
    user_id: Option<Uuid>,
    /// A team of the organization (or give `user_id`).
    team_id: Option<Uuid>,
    #[schema(value_type = AccessSchema)]
    access: String,
}

/// Grants (or changes) access to a file for a user or a team (file admins only).
#[utoipa::path(
    post,
    path = "/api/v1/files/{id}/permissions",
    tag = "files",
    request_body = Grant,
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Granted", body = super::schema::CommandResult)),
)]
async fn grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let input: Grant = parse_json(&body)?;
    let access = FileAccess::parse(&input.access)
        .ok_or_else(|| ApiError::validation("access", "must be view, comment, edit or admin"))?;
    let (kind, grantee) = match (input.user_id, input.team_id) {
        (Some(u), None) => (GranteeKind::User, u),
        (None, Some(t)) => (GranteeKind::Team, t),
        _ => {
            return Err(ApiError::validation(
                "user_id",
                "give exactly one of user_id and team_id",
            ))
        }
    };
    require(&state, &who, org, id, FileAccess::Admin).await?;
    match kind {
        GranteeKind::User => {
            if state.access.role_of(org, grantee).is_none() {
                return Err(ApiError::validation(
                    "user_id",
                    "is not a member of your organization",
                ));
            }
        }
        GranteeKind::Team => {
            let (_, team) = state
                .registries
                .teams
                .inspect(grantee)
                .await
                .map_err(|e| command_error(e, |_| ApiError::not_found("team not found")))?;
            if team.id.is_none() || team.organization_id != Some(org) || team.archived {
                return Err(ApiError::validation(
                    "team_id",
                    "is not a team of your organization",
                ));
            }
        }
    }
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let expected = super::command::if_match(&req)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let action = FileAction::Grant {
            kind,
            grantee,
            access,
        };
        let reply = run(&state, id, command(org, &who, action), expected, meta).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Revokes the grant of a user or team; it takes effect on the next request everywhere.
#[utoipa::path(
    delete,
    path = "/api/v1/files/{id}/permissions/{grantee_id}",
    tag = "files",
    params(
        ("id" = Uuid, Path, description = "The file"),
        ("grantee_id" = Uuid, Path, description = "The user or team"),
        super::fluxstudio::FluxstudioHeaders,
        super::schema::CommandHeaders,
    ),
    responses((status = 200, description = "Revoked", body = super::schema::CommandResult)),
)]
async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path.0)?;
    let grantee = Uuid::parse_str(&path.1).map_err(|_| ApiError::not_found("grant not found"))?;
    let (_, file, _) = require(&state, &who, org, id, FileAccess::Admin).await?;
    let kind = if file.grants.contains_key(&format!("user:{grantee}")) {
        GranteeKind::User
    } else if file.grants.contains_key(&format!("team:{grantee}")) {
        GranteeKind::Team
    } else {
        return Err(ApiError::not_found("grant not found"));
    };
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let expected = super::command::if_match(&req)?;
    idempotent(&state.pool, &req, &who, b"", || async {
        let action = FileAction::Revoke { kind, grantee };
        let reply = run(&state, id, command(org, &who, action), expected, meta).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

// ---- share links ----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewLink {
    /// When the link stops working: in the future, at most 30 days ahead.
    expires_at: DateTime<Utc>,
    /// Downloads allowed (unlimited when absent), 1 to 1000000.
    #[schema(minimum = 1, maximum = 1000000)]
    max_downloads: Option<i64>,
}

/// A share link.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LinkCreated {
    /// The link.
    pub id: Uuid,
    /// `/s/{token}` on this server; works without an account.
    pub url: String,
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub max_downloads: Option<i64>,
    /// The file stream's version.
    pub version: i64,
    pub position: i64,
}

/// Creates a share link to the file's current version (file editors).
#[utoipa::path(
    post,
    path = "/api/v1/files/{id}/links",
    tag = "files",
    request_body = NewLink,
    params(("id" = Uuid, Path, description = "The file"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 201, description = "Created", body = LinkCreated)),
)]
async fn create_link(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path)?;
    let input: NewLink = parse_json(&body)?;
    require(&state, &who, org, id, FileAccess::Edit).await?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let link_id = Uuid::new_v5(&meta.command_id, b"share-link");
    idempotent(&state.pool, &req, &who, &body, || async {
        let action = FileAction::CreateLink {
            link_id,
            expires_at: input.expires_at,
            max_downloads: input.max_downloads,
        };
        let reply = run(&state, id, command(org, &who, action), None, meta).await?;
        let token = state.files.links.token(id, link_id);
        let body = serde_json::to_value(LinkCreated {
            id: link_id,
            url: format!("/s/{token}"),
            token,
            expires_at: input.expires_at,
            max_downloads: input.max_downloads,
            version: reply.version,
            position: reply.position,
        })
        .map_err(ApiError::internal)?;
        Ok(Answer {
            status: StatusCode::CREATED,
            body,
            version: reply.version,
            replayed: reply.replayed,
        })
    })
    .await
}

/// Revokes a share link: it answers 410 from the next request on.
#[utoipa::path(
    delete,
    path = "/api/v1/files/{id}/links/{link_id}",
    tag = "files",
    params(
        ("id" = Uuid, Path, description = "The file"),
        ("link_id" = Uuid, Path, description = "The link"),
        super::fluxstudio::FluxstudioHeaders,
        super::schema::CommandHeaders,
    ),
    responses((status = 200, description = "Revoked", body = super::schema::CommandResult)),
)]
async fn revoke_link(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = reader(&who, &req)?;
    let id = file_id(&path.0)?;
    let link_id =
        Uuid::parse_str(&path.1).map_err(|_| ApiError::not_found("share link not found"))?;
    require(&state, &who, org, id, FileAccess::Edit).await?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    idempotent(&state.pool, &req, &who, b"", || async {
        let reply = run(
            &state,
            id,
            command(org, &who, FileAction::RevokeLink { link_id }),
            None,
            meta,
        )
        .await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

fn gone(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::GONE, code, message.to_owned())
}

/// Downloads through a share link, without an account: 410 once it is revoked, expired or
/// out of downloads (or its file deleted).
#[utoipa::path(
    get,
    path = "/s/{token}",
    tag = "files",
    security(()),
    params(
        ("token" = String, Path, description = "The link's token"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The content", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Unchanged since the `ETag` given"),
        (status = 410, description = "The link was revoked, has expired or has no downloads left", body = super::schema::ErrorBody),
        (status = 416, description = "The range cannot be served", body = super::schema::ErrorBody),
    ),
)]
async fn shared(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.limit_ip(&req)?;
    let (id, link_id) = state
        .files
        .links
        .verify(&path)
        .ok_or_else(|| ApiError::not_found("no such link"))?;
    let (_, file) = state
        .registries
        .files
        .inspect(id)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("no such link")))?;
    let link = file
        .links
        .get(&link_id)
        .ok_or_else(|| ApiError::not_found("no such link"))?;
    if link.revoked {
        return Err(gone("link_revoked", "this link was revoked"));
    }
    if link.expires_at <= Utc::now() {
        return Err(gone("link_expired", "this link has expired"));
    }
    if file.deleted {
        return Err(gone("file_deleted", "the file was deleted"));
    }
    let (_, version) = file
        .current()
        .ok_or_else(|| ApiError::not_found("no such link"))?;
    let max = link.max_downloads;
    let pool = state.pool.clone();
    send_content(&state, &req, &file.name, &version.content, || async move {
        let Some(max) = max else { return Ok(()) };
        // Counted atomically, so that two processes never both serve the last download.
        let counted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO file_link_downloads (link_id, downloads) VALUES ($1, 1) \
             ON CONFLICT (link_id) DO UPDATE SET downloads = file_link_downloads.downloads + 1 \
             WHERE file_link_downloads.downloads < $2 RETURNING downloads",
        )
        .bind(link_id)
        .bind(max)
        .fetch_optional(&pool)
        .await?;
        match counted {
            Some(n) if n <= max => Ok(()),
            _ => Err(gone(
                "download_limit_reached",
                "this link has no downloads left",
            )),
        }
    })
    .await
}
