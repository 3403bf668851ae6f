//! What every command endpoint shares: strict JSON bodies, `If-Match`, `ETag`, and
//! `Idempotency-Key`.
//!
//! # Idempotency keys
//!
//! A command sent with `Idempotency-Key: K` is recorded in `idempotency_keys` under
//! (method + path, K) before it runs and its answer is stored after it. A retry with the same
//! key and body gets the stored answer (with `Idempotent-Replayed: true`) and appends
//! nothing; the same key with another body is refused with 422; a retry while the first is
//! still running gets 409. The command id, from which event ids are derived, is also derived
//! from the key, so even a retry after a crash between append and answer cannot write the
//! events twice: the store recognises their ids.

use std::future::Future;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::ApiError;
use crate::actors::CommandMeta;
use crate::projections::WaitError;
use crate::startup::AppState;

/// The longest a query waits for `min_position`.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Read-your-writes: with `min_position=P`, waits until `projection` has passed P (at most
/// [`MAX_WAIT`], then 504 `projection_behind` with the current checkpoint).
pub async fn wait_for_projection(
    state: &AppState,
    projection: &'static str,
    min: Option<i64>,
) -> Result<(), ApiError> {
    let Some(position) = min else { return Ok(()) };
    if position < 0 {
        return Err(ApiError::bad_request("min_position must not be negative"));
    }
    state
        .progress
        .wait_for(&state.pool, projection, position, MAX_WAIT)
        .await
        .map_err(|e| match e {
            WaitError::Timeout { checkpoint } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "projection_behind",
                format!("the read model has not reached position {position} yet"),
            )
            .with_details(json!({ "projection": projection, "checkpoint": checkpoint })),
            WaitError::Store(msg) => ApiError::unavailable(msg),
        })
}

/// Namespace of ids derived from request data.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_93b1_4c5d_a7e2_0b8d_51f3_c9a0);
/// Longest accepted idempotency key.
const MAX_KEY: usize = 255;
/// A key whose first attempt has been running this long is considered abandoned.
const ABANDONED_AFTER_SECS: i64 = 60;

/// Parses a JSON body into `T`, telling malformed JSON (400) from wrong content (422).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let details = json!({ "line": e.line(), "column": e.column() });
        match e.classify() {
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                e.to_string(),
            )
            .with_details(details),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )
            .with_details(details),
        }
    })
}

/// The expected version from `If-Match` (`"3"`, `3` or `W/"3"`); `*` means no expectation.
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not readable text"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("If-Match must be an ETag of this API, like \"3\""))
}

/// A command's answer: status, JSON body and the entity version for the `ETag`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub version: i64,
}

impl Answer {
    pub fn into_response(self, replayed: bool) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status);
        builder.insert_header((header::ETAG, format!("\"{}\"", self.version)));
        if replayed {
            builder.insert_header(("Idempotent-Replayed", "true"));
        }
        builder.json(self.body)
    }
}

/// Command metadata for a request: correlation from `X-Request-Id`/`X-Correlation-Id`, and
/// a command id derived from the idempotency key when there is one.
pub fn meta(req: &HttpRequest) -> Result<CommandMeta, ApiError> {
    let mut meta = CommandMeta::new();
    let header_text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect::<String>())
    };
    meta.correlation_id = header_text("x-correlation-id").or_else(|| header_text("x-request-id"));
    meta.frontend = header_text("x-frontend-source");
    if let Some(key) = idempotency_key(req)? {
        meta.command_id = Uuid::new_v5(&NAMESPACE, scoped(req, &key).as_bytes());
    }
    Ok(meta)
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_KEY} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

fn scoped(req: &HttpRequest, key: &str) -> String {
    format!("{} {}\n{key}", req.method(), req.path())
}

/// Runs `command` at most once per idempotency key (or simply runs it without one).
pub async fn idempotent<F, Fut>(
    pool: &PgPool,
    req: &HttpRequest,
    body: &[u8],
    command: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>>,
{
    let Some(key) = idempotency_key(req)? else {
        return Ok(command().await?.into_response(false));
    };
    let scope = format!("{} {}", req.method(), req.path());
    let hash = Uuid::new_v5(&NAMESPACE, body).to_string();

    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, key) DO UPDATE SET created_at = now(), request_hash = EXCLUDED.request_hash \
         WHERE idempotency_keys.status IS NULL \
         AND idempotency_keys.created_at < now() - make_interval(secs => $4)",
    )
    .bind(&scope)
    .bind(&key)
    .bind(&hash)
    .bind(ABANDONED_AFTER_SECS as f64)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;

    if !claimed {
        let (stored_hash, status, response): (String, Option<i16>, Option<Value>) = sqlx::query_as(
            "SELECT request_hash, status, response FROM idempotency_keys \
                 WHERE scope = $1 AND key = $2",
        )
        .bind(&scope)
        .bind(&key)
        .fetch_one(pool)
        .await?;
        if stored_hash != hash {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        return match (status, response) {
            (Some(status), Some(stored)) => {
                let answer = Answer {
                    status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
                    version: stored["version"].as_i64().unwrap_or(0),
                    body: stored["body"].clone(),
                };
                Ok(answer.into_response(true))
            }
            _ => Err(ApiError::conflict(
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )),
        };
    }

    match command().await {
        Ok(answer) => {
            sqlx::query(
                "UPDATE idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
            )
            .bind(&scope)
            .bind(&key)
            .bind(answer.status.as_u16() as i16)
            .bind(json!({ "version": answer.version, "body": answer.body }))
            .execute(pool)
            .await?;
            Ok(answer.into_response(false))
        }
        Err(e) => {
            // A refused command changed nothing: free the key so that a corrected retry runs.
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
                .bind(&scope)
                .bind(&key)
                .execute(pool)
                .await?;
            Err(e)
        }
    }
}
