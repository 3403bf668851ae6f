//! The analysts' routes (mounted under `/api/v1` by `http::configure`):
//!
//! | route | what |
//! |---|---|
//! | `GET /streams/{stream}/state?version=N` or `?at=TIME` | the entity at that point |
//! | `GET /streams/{stream}/diff?from=N&to=M` | events between two versions, changed fields |
//! | `GET /events/export?...` | the log as NDJSON, streamed; gzip or zstd when asked |
//! | `GET /catalog` | every event type with schemas, samples, consumers and counts |
//!
//! Organization admins see their organization's history; operators see every tenant's.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::export::{self, ExportFilter};
use super::state::{self, FoldOptions, Point};
use super::{HistoryError, Scope};
use crate::http::guard::Principal;
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::{Filter, RecordedEvent};

/// Longest a state or diff may take to fold; a first look at a very long stream without
/// snapshots may need it, later looks start from the snapshots it leaves.
const FOLD_LIMIT: Duration = Duration::from_secs(30);
/// Longest one page of an export may take to read.
const PAGE_LIMIT: Duration = Duration::from_secs(30);
/// Most versions a diff spans (its events are listed in the answer).
pub const MAX_DIFF: i64 = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/streams/{stream}/state", web::get().to(get_state))
        .route("/streams/{stream}/diff", web::get().to(get_diff))
        .service(
            web::resource("/events/export")
                .wrap(actix_web::middleware::Compress::default())
                .route(web::get().to(export_log)),
        )
        .route("/catalog", web::get().to(get_catalog));
}

/// Operators (account-wide admin role, checked against the log's read model) see all;
/// organization admins their organization; anyone else is refused.
async fn scope(state: &AppState, who: &Principal) -> Result<Scope, ApiError> {
    // The read model, not the token's claims: a grant or a revocation counts at once.
    if crate::http::admin::require_operator(state, who)
        .await
        .is_ok()
    {
        return Ok(Scope::All);
    }
    Ok(Scope::Organization(who.require_admin()?))
}

fn history_error(e: HistoryError) -> ApiError {
    match e {
        HistoryError::NoKind(_) => ApiError::validation("stream", e.to_string()),
        HistoryError::NoPoint(m) => ApiError::not_found(m),
        HistoryError::Decode(m) => ApiError::internal(m),
        HistoryError::Database(e) => ApiError::unavailable(e.to_string()),
    }
}

fn stream_param(stream: &str) -> Result<(), ApiError> {
    if stream.is_empty() || stream.contains('\0') || stream.len() > 1000 {
        return Err(ApiError::bad_request(
            "stream must be 1 to 1,000 bytes without NUL characters",
        ));
    }
    Ok(())
}

fn time_param(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 time, e.g. 2026-12-04T09:00:00Z"
            ))
        })
}

/// 404 unless the caller may see `stream`.
async fn visible(state: &AppState, stream: &str, scope: Scope) -> Result<(), ApiError> {
    let seen = super::stream_visible(&state.pool, stream, scope).await?;
    if seen {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("stream `{stream}` not found")))
    }
}

async fn fold(state: &AppState, stream: &str, point: Point) -> Result<state::StateAt, ApiError> {
    let options = FoldOptions {
        use_snapshots: true,
        snapshot_every: state.config.history_snapshot_every,
    };
    tokio::time::timeout(
        FOLD_LIMIT,
        state::state_at(&state.pool, stream, point, options),
    )
    .await
    .map_err(|_| ApiError::unavailable("the state took too long to fold; try again"))?
    .map_err(history_error)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct StateParams {
    /// The state after the event at this version (0: before the first event).
    #[param(minimum = 0)]
    version: Option<i64>,
    /// The state after the last event recorded at or before this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    at: Option<String>,
}

/// An entity at a point of its history.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StateAnswer {
    stream: String,
    /// The entity kind (the stream category).
    kind: String,
    /// Version, position and time of the last event applied.
    version: i64,
    position: i64,
    recorded_at: Option<DateTime<Utc>>,
    /// The entity's public view, shaped as its GET route.
    #[schema(value_type = Object)]
    state: serde_json::Value,
}

/// `GET /api/v1/streams/{stream}/state?version=N|at=TIME`: the entity after the event at
/// that version or time, folded by its own decider (organization admins: streams of their
/// organization; operators: every stream). Neither parameter: the current state.
#[utoipa::path(
    get,
    path = "/api/v1/streams/{stream}/state",
    tag = "history",
    params(("stream" = String, Path, description = "A stream id, e.g. `building-<id>`"), StateParams),
    responses((status = 200, description = "The entity's state at that point", body = StateAnswer)),
)]
pub(crate) async fn get_state(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    params: web::Query<StateParams>,
) -> Result<HttpResponse, ApiError> {
    let scope = scope(&state, &who).await?;
    let stream = path.into_inner();
    stream_param(&stream)?;
    let point = match (params.version, params.at.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either version or at, not both"))
        }
        (Some(v), None) if v < 0 => {
            return Err(ApiError::bad_request("version must not be negative"))
        }
        (Some(v), None) => Some(Point::Version(v)),
        (None, Some(at)) => Some(Point::Time(time_param("at", at)?)),
        (None, None) => None,
    };
    visible(&state, &stream, scope).await?;
    let point = match point {
        Some(p) => p,
        None => Point::Version(head_version(&state, &stream).await?),
    };
    let at = fold(&state, &stream, point).await?;
    Ok(HttpResponse::Ok().json(StateAnswer {
        stream: at.stream,
        kind: at.kind.to_owned(),
        version: at.version,
        position: at.position,
        recorded_at: at.recorded_at,
        state: at.state,
    }))
}

async fn head_version(state: &AppState, stream: &str) -> Result<i64, ApiError> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(&state.pool)
            .await?,
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DiffParams {
    /// The earlier version (0: before the first event).
    #[param(minimum = 0)]
    from: i64,
    /// The later version, at most 1,000 after `from`.
    #[param(minimum = 0)]
    to: i64,
}

/// One field of the view that changed.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FieldChange {
    /// The field's path in the view, e.g. `name` or `progress.done`.
    field: String,
    #[schema(value_type = Object)]
    from: serde_json::Value,
    #[schema(value_type = Object)]
    to: serde_json::Value,
}

/// What happened to an entity between two versions.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DiffAnswer {
    stream: String,
    kind: String,
    from: i64,
    to: i64,
    /// The events of versions `from + 1 ..= to` (secrets redacted; organization admins see
    /// their organization's events).
    #[schema(value_type = Vec<crate::http::schema::RecordedEvent>)]
    events: Vec<RecordedEvent>,
    /// The fields of the view that differ between the two versions.
    changes: Vec<FieldChange>,
}

/// `GET /api/v1/streams/{stream}/diff?from=N&to=M`: the events between two versions of an
/// entity and the fields of its view that changed.
#[utoipa::path(
    get,
    path = "/api/v1/streams/{stream}/diff",
    tag = "history",
    params(("stream" = String, Path, description = "A stream id, e.g. `building-<id>`"), DiffParams),
    responses((status = 200, description = "Events and changed fields between two versions", body = DiffAnswer)),
)]
pub(crate) async fn get_diff(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    params: web::Query<DiffParams>,
) -> Result<HttpResponse, ApiError> {
    let scope = scope(&state, &who).await?;
    let stream = path.into_inner();
    stream_param(&stream)?;
    let (from, to) = (params.from, params.to);
    if from < 0 || to < from {
        return Err(ApiError::bad_request("0 <= from <= to is required"));
    }
    if to - from > MAX_DIFF {
        return Err(ApiError::bad_request(format!(
            "a diff spans at most {MAX_DIFF} versions"
        )));
    }
    visible(&state, &stream, scope).await?;
    let before = fold(&state, &stream, Point::Version(from)).await?;
    let after = fold(&state, &stream, Point::Version(to)).await?;
    let sql = "SELECT global_position AS position, stream_id, stream_category AS category, \
        version, event_id, event_type, schema_version, data, metadata, recorded_at FROM events \
        WHERE stream_id = $1 AND version > $2 AND version <= $3 ORDER BY version";
    let events: Vec<RecordedEvent> = sqlx::query_as(sql)
        .bind(&stream)
        .bind(from)
        .bind(to)
        .fetch_all(&state.pool)
        .await?;
    let filter = Filter {
        organization: scope.organization(),
        ..Filter::default()
    };
    let events = events
        .into_iter()
        .filter(|e| filter.matches(e))
        .map(|mut e| {
            crate::http::history::redact(&mut e);
            e
        })
        .collect();
    let changes = state::changes(&before.state, &after.state)
        .into_iter()
        .map(|c| FieldChange {
            field: c.field,
            from: c.from,
            to: c.to,
        })
        .collect();
    Ok(HttpResponse::Ok().json(DiffAnswer {
        stream,
        kind: after.kind.to_owned(),
        from,
        to,
        events,
        changes,
    }))
}

/// The export's filters, as documented; the handler reads the query itself because
/// `category` and `type` may repeat.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ExportParams {
    /// First position (inclusive, default 1); resume an interrupted download with the last
    /// position received + 1.
    #[param(minimum = 1)]
    from_position: Option<i64>,
    /// Last position (inclusive; default the head when the export starts).
    #[param(minimum = 0)]
    to_position: Option<i64>,
    /// Stream categories (repeat the parameter, or separate with commas).
    category: Option<Vec<String>>,
    /// Event types (repeat the parameter, or separate with commas).
    #[param(rename = "type")]
    r#type: Option<Vec<String>>,
    /// One stream.
    stream: Option<String>,
    /// Recorded at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Recorded at or before this RFC 3339 time.
    #[param(format = DateTime)]
    until: Option<String>,
}

/// Most names one filter may list.
const MAX_NAMES: usize = 100;

/// Reads the export filters from a query string.
pub fn export_filter(query: &str) -> Result<ExportFilter, ApiError> {
    let mut f = ExportFilter::default();
    let int = |name: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("{name} must be an integer")))
    };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if value.contains('\0') || value.len() > 1000 {
            return Err(ApiError::bad_request(format!(
                "{key} must be at most 1,000 bytes without NUL characters"
            )));
        }
        match key.as_ref() {
            "from_position" => {
                let p = int("from_position", &value)?;
                if p < 1 {
                    return Err(ApiError::bad_request("from_position starts at 1"));
                }
                f.from_position = Some(p);
            }
            "to_position" => {
                let p = int("to_position", &value)?;
                if p < 0 {
                    return Err(ApiError::bad_request("to_position must not be negative"));
                }
                f.to_position = Some(p);
            }
            "category" | "type" => {
                let names = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                let list = if key == "category" {
                    f.categories.get_or_insert_with(Vec::new)
                } else {
                    f.types.get_or_insert_with(Vec::new)
                };
                list.extend(names);
                if list.len() > MAX_NAMES {
                    return Err(ApiError::bad_request(format!(
                        "{key} lists at most {MAX_NAMES} names"
                    )));
                }
            }
            "stream" => f.stream = Some(value.into_owned()),
            "since" => f.since = Some(time_param("since", &value)?),
            "until" => f.until = Some(time_param("until", &value)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "invalid query: unknown parameter `{other}`"
                )))
            }
        }
    }
    Ok(f)
}

/// `GET /api/v1/events/export`: the log as NDJSON, one event per line as `/api/v1/events`
/// shows it, in position order, up to the head when the export started (organization
/// admins: their organization's events; operators: all). Streamed page by page in constant
/// memory; `Accept-Encoding: zstd` or `gzip` compresses it. `X-Export-To-Position` names the
/// last position covered.
#[utoipa::path(
    get,
    path = "/api/v1/events/export",
    tag = "history",
    params(ExportParams),
    responses((status = 200, description = "One event per line (`application/x-ndjson`)", content_type = "application/x-ndjson", body = String)),
)]
pub(crate) async fn export_log(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let scope = scope(&state, &who).await?;
    let mut filter = export_filter(req.query_string())?;
    filter.organization = scope.organization();
    filter.redact = true;
    let (after, up_to) = export::bounds(&state.pool, &filter).await?;
    let pool = state.pool.clone();
    let body = futures_util::stream::try_unfold(
        (Some(after), pool, filter),
        move |(cursor, pool, filter)| async move {
            let Some(after) = cursor else {
                return Ok(None);
            };
            if after >= up_to {
                return Ok(None);
            }
            let page = tokio::time::timeout(
                PAGE_LIMIT,
                export::page(&pool, &filter, after, up_to, export::PAGE),
            )
            .await
            .map_err(|_| std::io::Error::other("an export page took too long"))?
            .map_err(|e| {
                tracing::warn!(error = %e, after, "export interrupted");
                std::io::Error::other(e)
            })?;
            let next = page.next_after;
            Ok::<_, std::io::Error>(Some((web::Bytes::from(page.bytes), (next, pool, filter))))
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("X-Export-To-Position", up_to.max(after).to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .streaming(body))
}

/// The catalogue of event types.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CatalogAnswer {
    /// Every event type, by name.
    #[schema(value_type = Vec<Object>)]
    event_types: Vec<super::catalog::TypeView>,
}

/// `GET /api/v1/catalog`: every event type with its category, schema versions and
/// upcasters, a JSON Schema and a sample of each version, the projections that consume it,
/// and how many the log holds with the first and last position (organization admins:
/// counts over their organization's events; operators: over all).
#[utoipa::path(
    get,
    path = "/api/v1/catalog",
    tag = "history",
    responses((status = 200, description = "The catalogue of event types", body = CatalogAnswer)),
)]
pub(crate) async fn get_catalog(
    state: web::Data<AppState>,
    who: Principal,
) -> Result<HttpResponse, ApiError> {
    let scope = scope(&state, &who).await?;
    let event_types = super::catalog::build(&state.pool, scope.organization()).await?;
    Ok(HttpResponse::Ok().json(CatalogAnswer { event_types }))
}
