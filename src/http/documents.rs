//! FluxStudio's collaborative documents over HTTP: a project's documents, a document as of
//! any version (time travel), its versions, restore, and grants. The live editing is the
//! y-websocket gateway (`crate::gateways::collab`); the content is the stream
//! `document-{id}`.
//!
//! Every route belongs to the `fluxstudio` frontend (`X-Frontend-Source: fluxstudio`).
//! Reading a document needs what opening it on the socket needs (a member of its project,
//! or a grant, or an organization admin); restoring and granting need edit rights.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use universal_events::document::DocumentAccess;
use universal_events::identity::{Frontend, Role};
use uuid::Uuid;

use super::command::{idempotent, parse_json, scoped_meta, wait_for_projection, Answer, Page};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::document::{DocumentAction, DocumentCommand, DocumentError};
use crate::actors::project::Project;
use crate::actors::CommandMeta;
use crate::gateways::collab::{content, rights_of, Rights};
use crate::state::AppState;

const READ_MODEL: &str = "documents";

/// The document routes (`/api/v1/documents/...`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/documents")
            .route("/{id}", web::get().to(get_document))
            .route("/{id}/versions", web::get().to(list_versions))
            .route("/{id}/restore", web::post().to(restore))
            .route("/{id}/grants", web::post().to(grant))
            .route("/{id}/grants/{user_id}", web::delete().to(revoke)),
    );
}

/// A project's documents (`/projects/{id}/documents`), inside the `/projects` scope of
/// [`super::fluxstudio`], which is also served under `/api/projects`.
pub fn configure_projects(cfg: &mut web::ServiceConfig) {
    cfg.route("/{id}/documents", web::post().to(create_document))
        .route("/{id}/documents", web::get().to(list_documents));
}

fn document_error(e: DocumentError) -> ApiError {
    match e {
        DocumentError::NotFound => ApiError::not_found("document not found"),
        DocumentError::AlreadyExists => ApiError::conflict("document already exists"),
        DocumentError::NoGrant => ApiError::not_found("the user holds no grant on this document"),
        DocumentError::Invalid { field, message } => ApiError::validation(field, message),
    }
}

/// The project `id` of `org`, or 404.
async fn project_in(state: &AppState, org: Uuid, id: Uuid) -> Result<Project, ApiError> {
    let (_, project): (i64, Project) = state
        .registries
        .projects
        .inspect(id)
        .await
        .map_err(|e| command_error(e, |_| ApiError::not_found("project not found")))?;
    if project.id.is_none() || project.organization_id != Some(org) {
        return Err(ApiError::not_found("project not found"));
    }
    Ok(project)
}

async fn run(
    state: &AppState,
    id: Uuid,
    cmd: DocumentCommand,
    meta: CommandMeta,
) -> Result<crate::actors::CommandReply<crate::actors::document::Document>, ApiError> {
    state
        .registries
        .documents
        .execute(id, cmd, None, meta)
        .await
        .map_err(|e| command_error(e, document_error))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDocument {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: String,
}

/// Creates a collaborative document in a project; its id is the y-websocket room name.
/// Writers who are members of the project (or organization admins) create.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/documents",
    tag = "fluxstudio",
    request_body = CreateDocument,
    params(("id" = Uuid, Path, description = "The project"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 201, description = "Created", body = super::schema::CommandResult)),
)]
async fn create_document(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Fluxstudio)?;
    who.require_writer()?;
    let input: CreateDocument = parse_json(&body)?;
    let project_id = path.into_inner();
    let project = project_in(&state, org, project_id).await?;
    if who.role != Some(Role::Admin) && !project.members.contains(&who.user_id) {
        return Err(ApiError::forbidden(
            "forbidden",
            "only members of the project (or organization admins) create its documents",
        ));
    }
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    let id = Uuid::new_v5(&meta.command_id, b"document");
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = DocumentCommand {
            organization_id: org,
            action: DocumentAction::Create {
                document_id: id,
                project_id,
                name: input.name,
                created_by: who.user_id,
                at: Utc::now(),
            },
        };
        let reply = run(&state, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::CREATED, id, &reply))
    })
    .await
}

/// A document as the list has it.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DocumentSummary {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    #[schema(ignore)]
    pub created_position: i64,
}

/// A page of documents.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DocumentPage {
    pub items: Vec<DocumentSummary>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListDocuments {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The documents of a project of the caller's organization, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/documents",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The project"), ListDocuments, super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "A page of documents", body = DocumentPage)),
)]
async fn list_documents(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<ListDocuments>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Fluxstudio)?;
    let project_id = path.into_inner();
    project_in(&state, org, project_id).await?;
    let page = Page::parse(q.limit, (50, 200), &q.cursor, i64::MAX)?;
    wait_for_projection(&state, READ_MODEL, q.min_position).await?;
    let mut rows: Vec<DocumentSummary> = sqlx::query_as(
        "SELECT id, project_id, name, created_by, created_at, created_position FROM documents \
         WHERE organization_id = $1 AND project_id = $2 AND created_position < $3 \
         ORDER BY created_position DESC LIMIT $4",
    )
    .bind(org)
    .bind(project_id)
    .bind(page.cursor)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AsOf {
    /// The document as of this version of its stream (1 is its creation).
    #[param(minimum = 1)]
    version: Option<i64>,
    /// The document as of this time (RFC 3339); not with `version`.
    at: Option<DateTime<Utc>>,
}

/// A document as of a version.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    /// The stream version this state includes.
    pub version: i64,
    /// What the caller may do: `edit` or `read` (read-only on the socket).
    pub access: String,
    /// The plain text of each top-level `Y.Text` or `Y.XmlFragment`, by name.
    #[schema(value_type = Object)]
    pub text: serde_json::Map<String, serde_json::Value>,
    /// The Yjs update (lib0 v1, base64) that rebuilds the document as of `version`.
    pub update: String,
}

/// The document now, or as of `?version=N` or `?at=<time>`: JSON with its plain text and the
/// Yjs update that rebuilds it, or with `Accept: application/octet-stream` the update alone.
#[utoipa::path(
    get,
    path = "/api/v1/documents/{id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The document"), AsOf, super::fluxstudio::FluxstudioHeaders),
    responses(
        (status = 200, description = "The document as of then (JSON, or the Yjs update alone with `Accept: application/octet-stream`)", content(
            (DocumentView = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )),
    ),
)]
async fn get_document(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<AsOf>,
) -> Result<HttpResponse, ApiError> {
    who.frontend(&req, Frontend::Fluxstudio)?;
    let id = path.into_inner();
    let (version_now, document, rights) = rights_of(&state, &who, id).await?;
    let up_to = match (q.version, q.at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give `version` or `at`, not both"));
        }
        (Some(v), None) if v < 1 => {
            return Err(ApiError::validation("version", "must be 1 or more"));
        }
        (Some(v), None) if v > version_now => {
            return Err(ApiError::not_found(format!(
                "the document has no version {v} (it is at version {version_now})"
            )));
        }
        (Some(v), None) => Some(v),
        (None, Some(at)) => {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT max(version) FROM events WHERE stream_id = $1 AND recorded_at <= $2",
            )
            .bind(content::stream(id))
            .bind(at)
            .fetch_one(&state.pool)
            .await?;
            Some(v.ok_or_else(|| ApiError::not_found("the document did not exist at that time"))?)
        }
        (None, None) => None,
    };
    let loaded = content::load(state.store.as_ref(), &state.pool, id, up_to)
        .await
        .map_err(|e| match e {
            content::LoadError::Store(_) => ApiError::unavailable(e.to_string()),
            content::LoadError::Corrupt { .. } => ApiError::internal(e.to_string()),
        })?;
    let update = content::encode(&loaded.doc);
    let wants_bytes = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/octet-stream") && !a.contains("json"));
    if wants_bytes {
        return Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header(("X-Document-Version", loaded.version.to_string()))
            .body(update));
    }
    let text = content::texts(&update).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(DocumentView {
        id,
        project_id: document.project_id.unwrap_or_default(),
        name: document.name,
        version: loaded.version,
        access: rights.as_str().to_owned(),
        text,
        update: base64::engine::general_purpose::STANDARD.encode(update),
    }))
}

/// One update of a document.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct VersionView {
    /// The stream version (pass as `?version=` to see the document as of it).
    pub version: i64,
    /// The global log position.
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Vec<Uuid>)]
    pub authors: sqlx::types::Json<Vec<Uuid>>,
    /// Bytes of the Yjs update.
    pub size: i32,
    /// Client updates merged into it.
    pub merged: i64,
    /// Set when this update restored an earlier version.
    pub restored_from: Option<i64>,
}

/// A page of versions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionPage {
    pub items: Vec<VersionView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListVersions {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// The updates of a document, oldest first: version, position, time, authors and size.
#[utoipa::path(
    get,
    path = "/api/v1/documents/{id}/versions",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The document"), ListVersions, super::fluxstudio::FluxstudioHeaders),
    responses((status = 200, description = "A page of updates", body = VersionPage)),
)]
async fn list_versions(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<ListVersions>,
) -> Result<HttpResponse, ApiError> {
    who.frontend(&req, Frontend::Fluxstudio)?;
    let id = path.into_inner();
    rights_of(&state, &who, id).await?;
    let page = Page::parse(q.limit, (100, 1000), &q.cursor, 0)?;
    let mut rows: Vec<VersionView> = sqlx::query_as(
        "SELECT version, global_position AS position, recorded_at, \
         coalesce(data->'authors', '[]'::jsonb) AS authors, \
         octet_length(decode(data->>'update', 'base64')) AS size, \
         coalesce((data->>'merged')::bigint, 1) AS merged, \
         (data->>'restored_from')::bigint AS restored_from \
         FROM events WHERE stream_id = $1 AND event_type = 'DocumentUpdated' AND version > $2 \
         ORDER BY version LIMIT $3",
    )
    .bind(content::stream(id))
    .bind(page.cursor)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.version);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

/// Editors only: the caller's organization and a document they may edit.
async fn editor(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    id: Uuid,
) -> Result<(Uuid, crate::actors::document::Document), ApiError> {
    let org = who.frontend(req, Frontend::Fluxstudio)?;
    let (_, document, rights) = rights_of(state, who, id).await?;
    if rights != Rights::Edit {
        return Err(ApiError::forbidden(
            "forbidden",
            "you may read this document but not change it",
        ));
    }
    Ok((org, document))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Restore {
    /// The version whose state is brought back.
    #[schema(minimum = 1)]
    version: i64,
}

/// Brings back the text of an earlier version by writing it as a new update (the restore
/// is itself history). Documents whose top-level types are `Y.Text` can be restored; 422
/// for others.
#[utoipa::path(
    post,
    path = "/api/v1/documents/{id}/restore",
    tag = "fluxstudio",
    request_body = Restore,
    params(("id" = Uuid, Path, description = "The document"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Restored", body = super::schema::CommandResult)),
)]
async fn restore(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let (org, _) = editor(&state, &req, &who, id).await?;
    let input: Restore = parse_json(&body)?;
    let load = |up_to| {
        let state = state.clone();
        async move {
            content::load(state.store.as_ref(), &state.pool, id, up_to)
                .await
                .map_err(|e| match e {
                    content::LoadError::Store(_) => ApiError::unavailable(e.to_string()),
                    content::LoadError::Corrupt { .. } => ApiError::internal(e.to_string()),
                })
        }
    };
    let now = load(None).await?;
    if input.version < 1 || input.version > now.version {
        return Err(ApiError::validation(
            "version",
            format!("must be between 1 and {}", now.version),
        ));
    }
    let old = load(Some(input.version)).await?;
    let update = content::restore(&now.doc, &content::encode(&old.doc))
        .map_err(|why| ApiError::validation("version", why))?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = DocumentCommand {
            organization_id: org,
            action: DocumentAction::Update {
                update,
                authors: vec![who.user_id],
                merged: 1,
                restored_from: Some(input.version),
            },
        };
        let reply = run(&state, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// What a grant allows.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum DocumentAccessSchema {
    View,
    Comment,
    Edit,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Grant {
    /// A member of the caller's organization.
    user_id: Uuid,
    /// `view` and `comment` open the document read-only; `edit` lets a writer edit.
    #[schema(value_type = DocumentAccessSchema)]
    access: DocumentAccess,
}

/// Lets a member of the organization who is not in the project open the document.
#[utoipa::path(
    post,
    path = "/api/v1/documents/{id}/grants",
    tag = "fluxstudio",
    request_body = Grant,
    params(("id" = Uuid, Path, description = "The document"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Granted", body = super::schema::CommandResult)),
)]
async fn grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let (org, _) = editor(&state, &req, &who, id).await?;
    let input: Grant = parse_json(&body)?;
    if state.access.role_of(org, input.user_id).is_none() {
        return Err(ApiError::validation(
            "user_id",
            "is not a member of your organization",
        ));
    }
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = DocumentCommand {
            organization_id: org,
            action: DocumentAction::Grant {
                user_id: input.user_id,
                access: input.access,
            },
        };
        let reply = run(&state, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Takes a grant back; the holder's open sockets on the document close at once.
#[utoipa::path(
    delete,
    path = "/api/v1/documents/{id}/grants/{user_id}",
    tag = "fluxstudio",
    params(("id" = Uuid, Path, description = "The document"), ("user_id" = Uuid, Path, description = "The grant's holder"), super::fluxstudio::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Revoked", body = super::schema::CommandResult)),
)]
async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, user_id) = path.into_inner();
    let (org, _) = editor(&state, &req, &who, id).await?;
    let meta = scoped_meta(&req, &who, org, Some(Frontend::Fluxstudio))?;
    idempotent(&state.pool, &req, &who, b"", || async {
        let cmd = DocumentCommand {
            organization_id: org,
            action: DocumentAction::Revoke { user_id },
        };
        let reply = run(&state, id, cmd, meta).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}
