//! History for analysts: one stream from a version, and the whole log by position.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::guard::Principal;
use super::ApiError;
use crate::state::AppState;
use crate::store::{Direction, Filter, RecordedEvent};

/// Payload fields that never leave the server, even to an organization's admins.
const SECRET_FIELDS: [&str; 2] = ["password_hash", "refresh_hash"];

/// Blanks the secrets of an event's payload.
pub fn redact(e: &mut RecordedEvent) {
    if let serde_json::Value::Object(map) = &mut e.data {
        for field in SECRET_FIELDS {
            if let Some(v) = map.get_mut(field) {
                *v = serde_json::Value::String("[redacted]".into());
            }
        }
    }
}

/// Keeps only the events of `org` and blanks secrets in what is left.
fn visible(events: Vec<RecordedEvent>, org: uuid::Uuid) -> Vec<RecordedEvent> {
    let filter = Filter {
        organization: Some(org),
        ..Filter::default()
    };
    events
        .into_iter()
        .filter(|e| filter.matches(e))
        .map(|mut e| {
            redact(&mut e);
            e
        })
        .collect()
}

const MAX_LIMIT: i64 = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/streams/{stream}", web::get().to(read_stream))
        .route("/events", web::get().to(read_log));
}

fn limit(value: Option<i64>) -> Result<i64, ApiError> {
    let limit = value.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(limit)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamParams {
    /// First version to read (default: 1 forward, the last backward).
    #[param(minimum = 0)]
    from_version: Option<i64>,
    /// `forward` (default) or `backward`.
    #[param(value_type = Option<super::schema::Direction>, inline)]
    direction: Option<String>,
    /// Most events per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /api/v1/streams/{stream}?from_version&direction=forward|backward&limit`
/// (organization admins; only their organization's events, secrets redacted).
#[utoipa::path(
    get,
    path = "/api/v1/streams/{stream}",
    tag = "history",
    params(("stream" = String, Path, description = "A stream id, e.g. `building-<id>`"), StreamParams),
    responses((status = 200, description = "A page of the stream's events", body = super::schema::StreamPage)),
)]
async fn read_stream(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    params: web::Query<StreamParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.require_admin()?;
    let stream = path.into_inner();
    text_param("stream", &stream)?;
    let limit = limit(params.limit)?;
    let direction = match params.direction.as_deref().unwrap_or("forward") {
        "forward" => Direction::Forward,
        "backward" => Direction::Backward,
        other => {
            return Err(ApiError::bad_request(format!(
                "direction must be `forward` or `backward`, not `{other}`"
            )))
        }
    };
    let from = match (params.from_version, direction) {
        (Some(v), _) if v < 0 => {
            return Err(ApiError::bad_request("from_version must not be negative"))
        }
        (Some(v), _) => v,
        (None, Direction::Forward) => 1,
        (None, Direction::Backward) => i64::MAX,
    };
    let events = state
        .store
        .read_stream(&stream, from, direction, limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let scanned = events.len() as i64;
    let last_version = events.last().map(|e| e.version);
    let events = visible(events, org);
    if events.is_empty() && scanned > 0 {
        return Err(ApiError::not_found(format!("stream `{stream}` not found")));
    }
    if events.is_empty() && from <= 1 {
        let exists = !state
            .store
            .read_stream(&stream, i64::MAX, Direction::Backward, 1)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .is_empty();
        if !exists {
            return Err(ApiError::not_found(format!("stream `{stream}` not found")));
        }
    }
    let next_version = if scanned == limit {
        last_version.map(|v| match direction {
            Direction::Forward => v + 1,
            Direction::Backward => v - 1,
        })
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({
        "stream": stream,
        "events": events,
        "next_version": next_version,
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// First position to read (default 1).
    #[param(minimum = 1)]
    from_position: Option<i64>,
    /// Stream categories, comma-separated (e.g. `building,user`).
    category: Option<String>,
    /// Event types, comma-separated.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Most events per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Names are text PostgreSQL can compare: no NUL character, and of a sane length.
fn text_param(name: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') || value.len() > 1000 {
        return Err(ApiError::bad_request(format!(
            "{name} must be at most 1,000 bytes without NUL characters"
        )));
    }
    Ok(())
}

fn list(value: &Option<String>) -> Option<Vec<String>> {
    value.as_ref().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// `GET /api/v1/events?from_position&category&type&limit` — the `$all` log, oldest first
/// (organization admins; only their organization's events, secrets redacted).
/// `category` and `type` take comma-separated lists; `next_position` continues the page.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "history",
    params(LogParams),
    responses((status = 200, description = "A page of the organization's events, oldest first", body = super::schema::LogPage)),
)]
async fn read_log(
    state: web::Data<AppState>,
    who: Principal,
    params: web::Query<LogParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.require_admin()?;
    let limit = limit(params.limit)?;
    let from = params.from_position.unwrap_or(1);
    if from < 1 {
        return Err(ApiError::bad_request("from_position starts at 1"));
    }
    for (name, value) in [("category", &params.category), ("type", &params.event_type)] {
        text_param(name, value.as_deref().unwrap_or_default())?;
    }
    let filter = Filter {
        categories: list(&params.category),
        event_types: list(&params.event_type),
        stream: None,
        organization: Some(org),
        skip_metadata: false,
    };
    let head = state
        .store
        .head_position()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let events = state
        .store
        .read_all(from - 1, Some(head), &filter, limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    // Up to the head everything has been scanned unless the page is full.
    let next_position = if events.len() as i64 == limit {
        events.last().map_or(head + 1, |e| e.position + 1)
    } else {
        head.max(from - 1) + 1
    };
    let events = visible(events, org);
    Ok(HttpResponse::Ok().json(json!({
        "events": events,
        "next_position": next_position,
        "head_position": head,
    })))
}
