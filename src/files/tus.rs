//! Resumable uploads, tus 1.0.0 (core, creation, termination, expiration, checksum with
//! sha1 and sha256), at `/api/v1/uploads` (and `/api/uploads`).
//!
//! No in-memory state: an upload's offset lives in `file_uploads` and its bytes in the
//! object store, one segment object per stretch of at most `SEGMENT` bytes, recorded in
//! `file_upload_segments` in the same transaction that moves the offset (conditional on the
//! offset the PATCH started from). So any process can take the next PATCH, and a PATCH cut
//! off by a dead client or a killed process keeps every segment it stored. With
//! `Upload-Checksum` the segments of a PATCH only count once the whole chunk matched; a
//! mismatch (460) discards them. The PATCH that reaches `Upload-Length` streams the segments
//! in order into content storage (hashing them) and records the file version; if its
//! process dies on the way, the next `HEAD` finishes the job (the version's command id
//! follows from the upload id, so it is recorded once).

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use universal_events::identity::Frontend;
use uuid::Uuid;

use super::upload::{self, Target};
use crate::actors::file::clean_name;
use crate::http::guard::{principal_from_token, Principal};
use crate::http::ApiError;
use crate::state::AppState;

pub const VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,termination,expiration,checksum";
pub const CHECKSUMS: &str = "sha1,sha256";
/// Bytes of one segment object (what one PATCH holds in memory at most).
pub const SEGMENT: usize = 8 * 1024 * 1024;
/// The status tus gives a checksum mismatch.
pub const CHECKSUM_MISMATCH: u16 = 460;
/// Longest `Upload-Metadata` header.
const MAX_METADATA: usize = 4096;

/// Registers the tus routes (under `/api/v1` and `/api`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/uploads", web::route().method(Method::OPTIONS).to(options))
        .route("/uploads", web::post().to(create))
        .route("/uploads/{id}", web::head().to(head))
        .route("/uploads/{id}", web::patch().to(patch))
        .route("/uploads/{id}", web::delete().to(terminate));
}

/// Every answer carries `Tus-Resumable`, errors included.
fn answer(result: Result<HttpResponse, ApiError>) -> HttpResponse {
    let mut res = match result {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.error_response();
            if e.status == StatusCode::PRECONDITION_FAILED {
                r.headers_mut().insert(
                    header::HeaderName::from_static("tus-version"),
                    header::HeaderValue::from_static(VERSION),
                );
            }
            r
        }
    };
    res.headers_mut().insert(
        header::HeaderName::from_static("tus-resumable"),
        header::HeaderValue::from_static(VERSION),
    );
    res
}

fn header_text<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// 412 unless the client speaks tus 1.0.0.
fn check_version(req: &HttpRequest) -> Result<(), ApiError> {
    if header_text(req, "tus-resumable") == Some(VERSION) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version_unsupported",
            format!("send Tus-Resumable: {VERSION}"),
        )
        .with_details(json!({ "supported": [VERSION] })))
    }
}

/// The caller (as any bearer route checks it) and its organization, with FluxStudio on.
async fn caller(state: &AppState, req: &HttpRequest) -> Result<(Principal, Uuid), ApiError> {
    let token = header_text(req, "authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated("unauthenticated", "a Bearer token is required")
        })?;
    let who = principal_from_token(state, token).await?;
    let org = who.frontend(req, Frontend::Fluxstudio)?;
    Ok((who, org))
}

fn http_date(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `OPTIONS /api/v1/uploads`: what this server supports (no authentication, as tus asks).
#[utoipa::path(
    options,
    path = "/api/v1/uploads",
    tag = "files",
    security(()),
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Max-Size` and `Tus-Checksum-Algorithm`")),
)]
pub async fn options(state: web::Data<AppState>) -> HttpResponse {
    answer(Ok(HttpResponse::NoContent()
        .insert_header(("Tus-Version", VERSION))
        .insert_header(("Tus-Extension", EXTENSIONS))
        .insert_header(("Tus-Checksum-Algorithm", CHECKSUMS))
        .insert_header(("Tus-Max-Size", state.files.settings.max_bytes.to_string()))
        .finish()))
}

/// The metadata a client sends: `key base64,key base64,…`.
fn metadata(req: &HttpRequest) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    let Some(raw) = header_text(req, "upload-metadata") else {
        return Ok(out);
    };
    if raw.len() > MAX_METADATA {
        return Err(ApiError::bad_request(format!(
            "Upload-Metadata may be at most {MAX_METADATA} bytes"
        )));
    }
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| ApiError::bad_request(format!("Upload-Metadata `{key}` is not base64")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ApiError::bad_request(format!("Upload-Metadata `{key}` is not UTF-8")))?;
        out.insert(key.to_owned(), text);
    }
    Ok(out)
}

fn uuid_meta(
    meta: &std::collections::HashMap<String, String>,
    keys: &[&'static str],
) -> Result<Option<Uuid>, ApiError> {
    for key in keys {
        if let Some(v) = meta.get(*key).filter(|v| !v.is_empty()) {
            return Uuid::parse_str(v)
                .map(Some)
                .map_err(|_| ApiError::validation(key, "is not a UUID"));
        }
    }
    Ok(None)
}

/// `POST /api/v1/uploads`: creates an upload of `Upload-Length` bytes.
#[utoipa::path(
    post,
    path = "/api/v1/uploads",
    tag = "files",
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = u64, Header, description = "The upload's size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "`filename`, `filetype`, `project` (a project id) and `file_id` (a new version of that file), each `key base64(value)`, comma-separated"),
        crate::http::fluxstudio::FluxstudioHeaders,
    ),
    responses(
        (status = 201, description = "Created; `Location` is the upload's URL, `Upload-Expires` its expiry"),
        (status = 412, description = "`Tus-Resumable` is not 1.0.0", body = crate::http::schema::ErrorBody),
        (status = 413, description = "Over `FILE_MAX_BYTES` or the quota", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn create(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    answer(create_inner(&state, &req).await)
}

async fn create_inner(state: &AppState, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let (who, org) = caller(state, req).await?;
    if header_text(req, "upload-defer-length").is_some() {
        return Err(ApiError::bad_request(
            "deferred lengths are not supported: send Upload-Length",
        ));
    }
    let length: u64 = header_text(req, "upload-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request("Upload-Length must be a non-negative integer"))?;
    let meta = metadata(req)?;
    let name = clean_name(
        meta.get("filename")
            .or_else(|| meta.get("name"))
            .map_or("upload", String::as_str),
    )
    .map_err(upload::file_error)?;
    let mime = upload::declared_type(
        meta.get("filetype")
            .or_else(|| meta.get("type"))
            .map(String::as_str),
    )?;
    let project = uuid_meta(&meta, &["project", "project_id", "projectId"])?;
    let file = uuid_meta(&meta, &["file_id", "fileId"])?;
    let target = upload::authorize(state, &who, org, project, file).await?;
    upload::check_room(state, org, length).await?;
    let id = Uuid::new_v4();
    let expires = chrono::Utc::now()
        + chrono::Duration::from_std(state.files.settings.upload_expiry)
            .map_err(ApiError::internal)?;
    sqlx::query(
        "INSERT INTO file_uploads (id, organization_id, user_id, project_id, file_id, existing, \
         filename, filetype, upload_length, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(org)
    .bind(who.user_id)
    .bind(target.project_id)
    .bind(target.file_id)
    .bind(target.existing)
    .bind(&name)
    .bind(&mime)
    .bind(length as i64)
    .bind(expires)
    .execute(&state.pool)
    .await?;
    let location = format!("{}/{id}", req.path().trim_end_matches('/'));
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header(("Upload-Expires", http_date(expires)))
        .finish())
}

#[derive(sqlx::FromRow)]
struct UploadRow {
    project_id: Option<Uuid>,
    file_id: Uuid,
    existing: bool,
    filename: String,
    filetype: String,
    upload_length: i64,
    upload_offset: i64,
    completed: bool,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// The caller's own upload (anyone else's, or an expired one, is not found).
async fn load(
    state: &AppState,
    id: &str,
    who: &Principal,
    org: Uuid,
) -> Result<(Uuid, UploadRow), ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("upload not found"))?;
    let row: Option<UploadRow> = sqlx::query_as(
        "SELECT project_id, file_id, existing, filename, filetype, upload_length, upload_offset, \
         completed, expires_at FROM file_uploads \
         WHERE id = $1 AND organization_id = $2 AND user_id = $3 AND expires_at > now()",
    )
    .bind(id)
    .bind(org)
    .bind(who.user_id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|r| (id, r))
        .ok_or_else(|| ApiError::not_found("upload not found"))
}

/// `HEAD /api/v1/uploads/{id}`: where the upload stands.
#[utoipa::path(
    head,
    path = "/api/v1/uploads/{id}",
    tag = "files",
    params(
        ("id" = Uuid, Path, description = "The upload"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        crate::http::fluxstudio::FluxstudioHeaders,
    ),
    responses(
        (status = 200, description = "`Upload-Offset` and `Upload-Length`; `X-File-Id` once complete"),
        (status = 412, description = "`Tus-Resumable` is not 1.0.0", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn head(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    answer(head_inner(&state, &req, &id).await)
}

async fn head_inner(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let (who, org) = caller(state, req).await?;
    let (id, row) = load(state, id, &who, org).await?;
    let mut res = HttpResponse::Ok();
    res.insert_header(("Upload-Offset", row.upload_offset.to_string()))
        .insert_header(("Upload-Length", row.upload_length.to_string()))
        .insert_header(("Upload-Expires", http_date(row.expires_at)))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    if row.upload_offset == row.upload_length {
        // Complete: finish the job if the process that took the last PATCH died doing it.
        if !row.completed {
            complete(state, req, &who, org, id, &row).await?;
        }
        res.insert_header(("X-File-Id", row.file_id.to_string()));
    }
    Ok(res.finish())
}

/// `DELETE /api/v1/uploads/{id}`: gives the upload up and deletes what it stored.
#[utoipa::path(
    delete,
    path = "/api/v1/uploads/{id}",
    tag = "files",
    params(
        ("id" = Uuid, Path, description = "The upload"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        crate::http::fluxstudio::FluxstudioHeaders,
    ),
    responses(
        (status = 204, description = "Terminated; what it stored is deleted"),
        (status = 412, description = "`Tus-Resumable` is not 1.0.0", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn terminate(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    answer(terminate_inner(&state, &req, &id).await)
}

async fn terminate_inner(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let (who, org) = caller(state, req).await?;
    let (id, _) = load(state, id, &who, org).await?;
    sqlx::query("DELETE FROM file_uploads WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?;
    sqlx::query("DELETE FROM file_upload_segments WHERE upload_id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?;
    state
        .files
        .storage
        .delete_upload(id)
        .await
        .map_err(|e| ApiError::unavailable(format!("the file store is unavailable: {e}")))?;
    Ok(HttpResponse::NoContent().finish())
}

enum Checksum {
    Sha1(Sha1, Vec<u8>),
    Sha256(Sha256, Vec<u8>),
}

impl Checksum {
    fn parse(req: &HttpRequest) -> Result<Option<Checksum>, ApiError> {
        let Some(raw) = header_text(req, "upload-checksum") else {
            return Ok(None);
        };
        let (algo, value) = raw
            .split_once(' ')
            .ok_or_else(|| ApiError::bad_request("Upload-Checksum is `<algorithm> <base64>`"))?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| ApiError::bad_request("the Upload-Checksum value is not base64"))?;
        match algo.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Some(Checksum::Sha1(Sha1::new(), digest))),
            "sha256" => Ok(Some(Checksum::Sha256(Sha256::new(), digest))),
            other => Err(ApiError::bad_request(format!(
                "checksum algorithm `{other}` is not supported (use {CHECKSUMS})"
            ))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Checksum::Sha1(h, _) => h.update(bytes),
            Checksum::Sha256(h, _) => h.update(bytes),
        }
    }

    fn matches(self) -> bool {
        match self {
            Checksum::Sha1(h, want) => h.finalize().as_slice() == want.as_slice(),
            Checksum::Sha256(h, want) => h.finalize().as_slice() == want.as_slice(),
        }
    }
}

/// Moves the offset from `from` over `segments` (start, size, key), if no other PATCH moved
/// it first.
async fn commit_segments(
    state: &AppState,
    id: Uuid,
    from: i64,
    segments: &[(i64, i64, String)],
) -> Result<(), ApiError> {
    let Some(to) = segments.last().map(|(s, n, _)| s + n) else {
        return Ok(());
    };
    let mut tx = state.pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE file_uploads SET upload_offset = $3 WHERE id = $1 AND upload_offset = $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved != 1 {
        return Err(offset_conflict("another request moved the upload's offset"));
    }
    for (start, size, key) in segments {
        sqlx::query(
            "INSERT INTO file_upload_segments (upload_id, start, size, key) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (upload_id, start) DO UPDATE SET size = $3, key = $4",
        )
        .bind(id)
        .bind(start)
        .bind(size)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn offset_conflict(message: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "offset_mismatch", message.to_owned())
}

fn store_error(e: object_store::Error) -> ApiError {
    tracing::warn!(error = %e, "tus segment could not be stored");
    ApiError::unavailable("the file store is unavailable; resume the upload")
}

/// `PATCH /api/v1/uploads/{id}`: appends the body at `Upload-Offset`.
#[utoipa::path(
    patch,
    path = "/api/v1/uploads/{id}",
    tag = "files",
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    params(
        ("id" = Uuid, Path, description = "The upload"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "Where this chunk starts: the upload's offset"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha1 <base64>` or `sha256 <base64>` of this chunk"),
        crate::http::fluxstudio::FluxstudioHeaders,
    ),
    responses(
        (status = 204, description = "Stored; `Upload-Offset` is the new offset, `X-File-Id` the file once complete"),
        (status = 409, description = "`Upload-Offset` is not the upload's offset", body = crate::http::schema::ErrorBody),
        (status = 412, description = "`Tus-Resumable` is not 1.0.0", body = crate::http::schema::ErrorBody),
        (status = 413, description = "The chunk goes past `Upload-Length`", body = crate::http::schema::ErrorBody),
        (status = 415, description = "Not `application/offset+octet-stream`", body = crate::http::schema::ErrorBody),
        (status = 460, description = "The chunk does not match `Upload-Checksum`; it was discarded", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    answer(patch_inner(&state, &req, &id, body).await)
}

async fn patch_inner(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    check_version(req)?;
    let (who, org) = caller(state, req).await?;
    let content_type = header_text(req, "content-type").unwrap_or("");
    if content_type != "application/offset+octet-stream" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the chunk as application/offset+octet-stream",
        ));
    }
    let offset: i64 = header_text(req, "upload-offset")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v >= 0)
        .ok_or_else(|| ApiError::bad_request("Upload-Offset must be a non-negative integer"))?;
    let mut checksum = Checksum::parse(req)?;
    let (id, row) = load(state, id, &who, org).await?;
    if offset != row.upload_offset {
        return Err(offset_conflict("Upload-Offset is not the upload's offset")
            .with_details(json!({ "offset": row.upload_offset })));
    }
    let storage = &state.files.storage;
    let remaining = row.upload_length - row.upload_offset;
    let mut buf = web::BytesMut::new();
    let mut received: i64 = 0;
    // Segments stored but not yet counted, and where the counted bytes end.
    let mut pending: Vec<(i64, i64, String)> = Vec::new();
    let mut counted = offset;
    let mut at = offset;
    let mut cut_off = None;
    loop {
        let chunk = match body.next().await {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                cut_off = Some(e);
                break;
            }
        };
        received += chunk.len() as i64;
        if received > remaining {
            discard(storage, &pending).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload_length_exceeded",
                "the chunk goes past Upload-Length",
            )
            .with_details(json!({ "limit": row.upload_length, "offset": counted })));
        }
        if let Some(c) = checksum.as_mut() {
            c.update(&chunk);
        }
        buf.extend_from_slice(&chunk);
        while buf.len() >= SEGMENT {
            let part = buf.split_to(SEGMENT).freeze();
            let size = part.len() as i64;
            let key = storage
                .put_segment(id, at, part)
                .await
                .map_err(store_error)?;
            pending.push((at, size, key));
            at += size;
            if checksum.is_none() {
                commit_segments(state, id, counted, &pending).await?;
                counted = at;
                pending.clear();
            }
        }
    }
    if cut_off.is_some() && checksum.is_some() {
        // A chunk that did not arrive whole cannot be checked: none of it counts.
        discard(storage, &pending).await;
        return Err(ApiError::bad_request("the chunk did not arrive whole"));
    }
    if !buf.is_empty() {
        let part = buf.split().freeze();
        let size = part.len() as i64;
        let key = storage
            .put_segment(id, at, part)
            .await
            .map_err(store_error)?;
        pending.push((at, size, key));
        at += size;
    }
    if let Some(c) = checksum {
        if !c.matches() {
            discard(storage, &pending).await;
            return Err(ApiError::new(
                StatusCode::from_u16(CHECKSUM_MISMATCH).expect("460 is a valid status"),
                "checksum_mismatch",
                "the chunk does not match Upload-Checksum; it was discarded",
            ));
        }
    }
    commit_segments(state, id, counted, &pending).await?;
    if let Some(e) = cut_off {
        // What arrived is kept; the client resumes from the new offset.
        return Err(ApiError::bad_request(format!("the chunk was cut off: {e}")));
    }
    let mut res = HttpResponse::NoContent();
    res.insert_header(("Upload-Offset", at.to_string()))
        .insert_header(("Upload-Expires", http_date(row.expires_at)));
    if at == row.upload_length {
        complete(state, req, &who, org, id, &row).await?;
        res.insert_header(("X-File-Id", row.file_id.to_string()));
    }
    Ok(res.finish())
}

async fn discard(storage: &super::Storage, pending: &[(i64, i64, String)]) {
    for (_, _, key) in pending {
        // Best effort: whatever is left is deleted with the upload.
        let _ = storage.delete_key(key).await;
    }
}

/// Streams the segments into content storage and records the version (at most once).
async fn complete(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    org: Uuid,
    id: Uuid,
    row: &UploadRow,
) -> Result<(), ApiError> {
    let segments: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT start, size, key FROM file_upload_segments WHERE upload_id = $1 ORDER BY start",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let mut next = 0;
    for (start, size, _) in &segments {
        if *start != next {
            return Err(ApiError::internal(format!(
                "upload {id}: a gap at byte {next}"
            )));
        }
        next += size;
    }
    if next != row.upload_length {
        return Err(ApiError::internal(format!(
            "upload {id}: segments end at {next}"
        )));
    }
    // The caller may have lost access since the upload began.
    let mut target = if row.existing {
        upload::authorize(state, who, org, None, Some(row.file_id)).await?
    } else {
        upload::authorize(state, who, org, row.project_id, None).await?
    };
    target = Target {
        file_id: row.file_id,
        ..target
    };
    upload::check_room(state, org, row.upload_length as u64).await?;
    let storage = &state.files.storage;
    let mut writer = storage
        .writer(state.files.settings.max_bytes)
        .await
        .map_err(upload::write_error)?;
    for (_, _, key) in &segments {
        let mut stream = storage.read_segment(key).await.map_err(store_error)?;
        while let Some(chunk) = stream.next().await {
            writer
                .write(chunk.map_err(store_error)?)
                .await
                .map_err(upload::write_error)?;
        }
    }
    let committed = writer
        .commit(&state.pool)
        .await
        .map_err(upload::write_error)?;
    let mut meta = crate::http::command::meta(req, who)?;
    meta.command_id = Uuid::new_v5(&id, b"complete");
    meta.replayable = true;
    meta.organization_id = Some(org);
    meta.frontend = Some(Frontend::Fluxstudio.as_str().to_owned());
    upload::record(
        state,
        who,
        org,
        &target,
        &row.filename,
        &row.filetype,
        committed,
        meta,
    )
    .await?;
    sqlx::query("UPDATE file_uploads SET completed = true WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?;
    sqlx::query("DELETE FROM file_upload_segments WHERE upload_id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?;
    if let Err(e) = storage.delete_upload(id).await {
        tracing::warn!(error = %e, upload = %id, "segments left for the sweep");
    }
    Ok(())
}
