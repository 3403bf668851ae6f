//! Operator actions across tenants: the events projections have parked, and the runs of the
//! legacy import.
//!
//! **Who is an operator.** A user whose *account-wide* roles (`RoleAssigned` on the user's
//! stream, the `roles` claim of the access token, [`Principal::roles`]) include `admin`. This
//! is not the organization role (`Principal::role`): an organization admin manages one
//! tenant, an operator sees every tenant's parked events. No HTTP route grants the
//! account-wide role; it is granted and revoked only from the command line
//! (`universal-backend operator grant <email>`, see [`set_operator`]), by whoever can reach
//! the database. Each call checks the role against the `users` read model (built from the
//! log), not the token's claim alone, so a grant or a revocation takes effect without a new
//! login, and a token issued before a revocation is refused.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/parked-events?projection&state&limit&cursor` | rows, oldest position first |
//! | `GET /admin/parked-events/{projection}/{position}` | one row |
//! | `POST /admin/parked-events/{projection}/{position}/retry` | apply it now |
//! | `POST /admin/parked-events/{projection}/{position}/skip` | leave it out, `{reason?}` |
//! | `GET /admin/imports?limit&before` | legacy import runs, newest first, with their figures |
//! | `GET /admin/imports/ids?source&kind&legacy_id` | the id a legacy id became |

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use anyhow::Context;
use serde::Deserialize;
use serde_json::json;
use universal_events::identity::Role;
use uuid::Uuid;

use super::guard::Principal;
use super::ApiError;
use crate::actors::user::{User, UserCommand};
use crate::actors::{CommandMeta, Registry, RuntimeConfig};
use crate::projections::parked::{self, ListQuery, ParkedEvent, ResolveError};
use crate::projections::{self, Projection};
use crate::state::AppState;
use crate::store::EventStore;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("/parked-events", web::get().to(list_parked))
            .route(
                "/parked-events/{projection}/{position}",
                web::get().to(get_parked),
            )
            .route(
                "/parked-events/{projection}/{position}/retry",
                web::post().to(retry_parked),
            )
            .route(
                "/parked-events/{projection}/{position}/skip",
                web::post().to(skip_parked),
            )
            .route("/imports", web::get().to(list_imports))
            .route("/imports/ids", web::get().to(import_id)),
    );
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportListParams {
    /// Runs per page, 1 to 100 (default 20).
    limit: Option<i64>,
    /// `next_before` of the previous page.
    before: Option<i64>,
}

/// `GET /api/v1/admin/imports`: the legacy import runs, newest first, each with its
/// `ImportStarted` and, once it ended, its `ImportCompleted` figures.
#[utoipa::path(
    get,
    path = "/api/v1/admin/imports",
    tag = "operations",
    params(ImportListParams),
    responses((status = 200, description = "Import runs, newest first (operators only)", body = super::schema::ImportRunPage)),
)]
pub(crate) async fn list_imports(
    state: web::Data<AppState>,
    who: Principal,
    params: web::Query<ImportListParams>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&state, &who).await?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let before = params.before.unwrap_or(i64::MAX);
    let started: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(
        "SELECT global_position, stream_id, data FROM events \
         WHERE stream_category = 'import' AND event_type = 'ImportStarted' \
         AND global_position < $1 ORDER BY global_position DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    let more = started.len() as i64 > limit;
    let started = &started[..started.len().min(limit as usize)];
    let streams: Vec<String> = started.iter().map(|(_, s, _)| s.clone()).collect();
    let completed: std::collections::HashMap<String, serde_json::Value> = sqlx::query_as(
        "SELECT stream_id, data FROM events WHERE stream_id = ANY($1) \
         AND event_type = 'ImportCompleted'",
    )
    .bind(&streams)
    .fetch_all(&state.pool)
    .await
    .map_err(ApiError::internal)?
    .into_iter()
    .collect();
    let items: Vec<_> = started
        .iter()
        .map(|(position, stream, data)| {
            json!({
                "position": position,
                "started": data,
                "completed": completed.get(stream),
            })
        })
        .collect();
    let next_before = if more {
        started.last().map(|(p, ..)| *p)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_before": next_before })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportIdParams {
    /// `flowmind`, `toolboxai`, `analysis` or `fluxstudio`.
    source: String,
    /// `user`, `organization`, `team`, `project`, `milestone`, `conversation` or `message`.
    kind: String,
    /// The id as the legacy data wrote it (`u_17`).
    legacy_id: String,
}

/// The kinds of legacy ids, with the stream category of their entity where they have one.
const ID_KINDS: [(&str, Option<&str>); 7] = [
    ("user", Some("user")),
    ("organization", Some("organization")),
    ("team", Some("team")),
    ("project", Some("project")),
    ("conversation", Some("channel")),
    ("milestone", None),
    ("message", None),
];

/// `GET /api/v1/admin/imports/ids`: which id a legacy id became (a UUID stays itself; any
/// other id maps to the same UUID on every run), and whether that entity is here.
#[utoipa::path(
    get,
    path = "/api/v1/admin/imports/ids",
    tag = "operations",
    params(ImportIdParams),
    responses(
        (status = 200, description = "The id (operators only)", body = super::schema::ImportedId),
        (status = 422, description = "`validation_failed`: an unknown source or kind, or a legacy id that is empty or longer than 200 characters", body = super::schema::ErrorBody),
    ),
)]
pub(crate) async fn import_id(
    state: web::Data<AppState>,
    who: Principal,
    params: web::Query<ImportIdParams>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&state, &who).await?;
    let p = params.into_inner();
    if !["flowmind", "toolboxai", "analysis", "fluxstudio"].contains(&p.source.as_str()) {
        return Err(ApiError::validation(
            "source",
            "one of flowmind, toolboxai, analysis, fluxstudio",
        ));
    }
    let Some((_, category)) = ID_KINDS.iter().find(|(k, _)| *k == p.kind) else {
        return Err(ApiError::validation(
            "kind",
            "one of user, organization, team, project, milestone, conversation, message",
        ));
    };
    if p.legacy_id.is_empty() || p.legacy_id.len() > 200 {
        return Err(ApiError::validation("legacy_id", "1 to 200 characters"));
    }
    let id = crate::import::mapped_id(&p.source, &p.kind, &p.legacy_id);
    let stream = category.map(|c| format!("{c}-{id}"));
    let exists = match &stream {
        Some(s) => Some(
            !state
                .store
                .read_stream(s, 1, crate::store::Direction::Forward, 1)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?
                .is_empty(),
        ),
        None => None,
    };
    Ok(HttpResponse::Ok().json(json!({
        "source": p.source,
        "kind": p.kind,
        "legacy_id": p.legacy_id,
        "id": id,
        "stream": stream,
        "exists": exists,
    })))
}

/// The operator's id, or 403.
pub(crate) async fn require_operator(state: &AppState, who: &Principal) -> Result<Uuid, ApiError> {
    let operator: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND active AND $2 = ANY(roles))",
    )
    .bind(who.user_id)
    .bind(Role::Admin.as_str())
    .fetch_one(&state.pool)
    .await?;
    if operator {
        Ok(who.user_id)
    } else {
        Err(ApiError::forbidden(
            "forbidden",
            "only an operator (account-wide admin role) may do this",
        ))
    }
}

/// Grants (or revokes) the account-wide `admin` role that makes `email`'s user an operator.
/// Returns the user's id. The user must have signed up and be in the `users` read model.
pub async fn set_operator(
    pool: &sqlx::PgPool,
    store: std::sync::Arc<dyn EventStore>,
    email: &str,
    grant: bool,
) -> anyhow::Result<Uuid> {
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE email_lower = $1")
        .bind(email.trim().to_lowercase())
        .fetch_optional(pool)
        .await?;
    let id = id.with_context(|| format!("no user with the e-mail address {email}"))?;
    let role = Role::Admin;
    let command = if grant {
        UserCommand::AssignRole { role }
    } else {
        UserCommand::RevokeRole { role }
    };
    Registry::<User>::new(store, RuntimeConfig::default())
        .execute(id, command, None, CommandMeta::new())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(id)
}

/// A production projection by name, or 404.
fn projection(name: &str) -> Result<std::sync::Arc<dyn Projection>, ApiError> {
    projections::by_name(name)
        .ok_or_else(|| ApiError::not_found(format!("no projection named `{name}`")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Only this projection's rows.
    projection: Option<String>,
    /// `parked` (default), `skipped`, `applied` or `all`.
    state: Option<String>,
    /// 1 to 500 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

const STATES: [&str; 3] = ["parked", "skipped", "applied"];

/// `GET /api/v1/admin/parked-events`: rows in position order; `next_cursor` continues.
#[utoipa::path(
    get,
    path = "/api/v1/admin/parked-events",
    tag = "operations",
    params(ListParams),
    responses((status = 200, description = "Parked events, oldest position first (operators only)", body = super::schema::ParkedEventPage)),
)]
pub(crate) async fn list_parked(
    state: web::Data<AppState>,
    who: Principal,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&state, &who).await?;
    let params = params.into_inner();
    if let Some(name) = &params.projection {
        projection(name)?;
    }
    let wanted = match params.state.as_deref().unwrap_or("parked") {
        "all" => None,
        s if STATES.contains(&s) => Some(s.to_owned()),
        other => {
            return Err(ApiError::bad_request(format!(
                "state must be parked, skipped, applied or all, not `{other}`"
            )))
        }
    };
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let after = match &params.cursor {
        None => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(p, n)| Some((p.parse::<i64>().ok()?, n.to_owned())))
                .ok_or_else(|| ApiError::bad_request("cursor is not one this API handed out"))?,
        ),
    };
    let mut rows = parked::list(
        &state.pool,
        &ListQuery {
            projection: params.projection,
            state: wanted,
            after,
            limit: limit + 1,
        },
    )
    .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|r| format!("{}:{}", r.position, r.projection))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

/// `GET /api/v1/admin/parked-events/{projection}/{position}`
#[utoipa::path(
    get,
    path = "/api/v1/admin/parked-events/{projection}/{position}",
    tag = "operations",
    params(
        ("projection" = String, Path, description = "A projection name"),
        ("position" = i64, Path, description = "The event's position in the log"),
    ),
    responses((status = 200, description = "One parked event (operators only)", body = ParkedEvent)),
)]
pub(crate) async fn get_parked(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    require_operator(&state, &who).await?;
    let (name, position) = path.into_inner();
    projection(&name)?;
    match parked::get(&state.pool, &name, position).await? {
        Some(row) => Ok(HttpResponse::Ok().json(row)),
        None => Err(ApiError::not_found("no parked event at this position")),
    }
}

/// `POST …/retry`: applies the event now. 200 with the resolved row; 409 `retry_failed` with
/// the new error when it fails again (the row stays parked).
#[utoipa::path(
    post,
    path = "/api/v1/admin/parked-events/{projection}/{position}/retry",
    tag = "operations",
    params(
        ("projection" = String, Path, description = "A projection name"),
        ("position" = i64, Path, description = "The event's position in the log"),
    ),
    responses(
        (status = 200, description = "Applied; the row is marked `applied`", body = ParkedEvent),
        (status = 409, description = "It failed again (`retry_failed`) or is not parked", body = super::schema::ErrorBody),
    ),
)]
pub(crate) async fn retry_parked(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    let operator = require_operator(&state, &who).await?;
    let (name, position) = path.into_inner();
    let p = projection(&name)?;
    let row = parked::retry(
        &state.pool,
        state.store.as_ref(),
        p.as_ref(),
        position,
        Some(operator),
    )
    .await
    .map_err(resolve_error)?;
    Ok(HttpResponse::Ok().json(row))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkipBody {
    /// Why it is left out (at most 500 characters).
    reason: Option<String>,
}

const MAX_REASON: usize = 500;

/// `POST …/skip` with an optional `{"reason": "…"}`: the event stays out of the read model,
/// and the row is kept as `skipped`.
#[utoipa::path(
    post,
    path = "/api/v1/admin/parked-events/{projection}/{position}/skip",
    tag = "operations",
    params(
        ("projection" = String, Path, description = "A projection name"),
        ("position" = i64, Path, description = "The event's position in the log"),
    ),
    request_body(content = Option<SkipBody>, description = "Optional `{reason}`"),
    responses(
        (status = 200, description = "Skipped; the row is kept as `skipped`", body = ParkedEvent),
        (status = 409, description = "The row is not parked (`not_parked`)", body = super::schema::ErrorBody),
    ),
)]
pub(crate) async fn skip_parked(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, i64)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let operator = require_operator(&state, &who).await?;
    let (name, position) = path.into_inner();
    projection(&name)?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<SkipBody>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .reason
    };
    if let Some(r) = &reason {
        if r.chars().count() > MAX_REASON || r.contains('\0') {
            return Err(ApiError::validation(
                "reason",
                format!("at most {MAX_REASON} characters, without NUL"),
            ));
        }
    }
    let row = parked::skip(
        &state.pool,
        &name,
        position,
        Some(operator),
        reason.as_deref(),
    )
    .await
    .map_err(resolve_error)?;
    tracing::info!(projection = name, position, %operator, "parked event skipped");
    Ok(HttpResponse::Ok().json(row))
}

fn resolve_error(e: ResolveError) -> ApiError {
    match e {
        ResolveError::NotFound => ApiError::not_found("no parked event at this position"),
        ResolveError::NotParked(row) => ApiError::new(
            StatusCode::CONFLICT,
            "not_parked",
            format!("the event is already {}", row.state),
        )
        .with_details(row_json(&row)),
        ResolveError::StillFailing { error, row } => ApiError::new(
            StatusCode::CONFLICT,
            "retry_failed",
            format!("applying the event failed again: {error}"),
        )
        .with_details(row_json(&row)),
        ResolveError::Other(e) => {
            if projections::runner::is_transient(&e) {
                tracing::warn!(error = %format!("{e:#}"), "retry of a parked event");
                ApiError::unavailable("the database is unavailable; try again")
            } else {
                ApiError::internal(format!("{e:#}"))
            }
        }
    }
}

fn row_json(row: &ParkedEvent) -> serde_json::Value {
    json!({ "parked_event": row })
}
