//! What every command endpoint shares: strict JSON bodies, `If-Match`, `ETag`, and
//! `Idempotency-Key`.
//!
//! # Idempotency keys
//!
//! A command sent with `Idempotency-Key: K` is recorded in `idempotency_keys` under its
//! scope (method, path, organization and user of the caller) and K, with a hash of its body,
//! and its answer is stored after it. The command id, from which event ids and the ids of
//! created entities are derived, follows from the scope and K too. So a retry returns the
//! first answer whether it was stored or not: the entity actor finds the events of the first
//! attempt in the log by their ids, before deciding anything, and answers with them (see
//! [`idempotent`]).

use std::future::Future;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sqlx::PgPool;
use universal_events::identity::Frontend;
use uuid::Uuid;

use super::guard::Principal;
use super::ApiError;
use crate::actors::CommandMeta;
use crate::projections::WaitError;
use crate::state::AppState;

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
    // Every position a command answered with is committed, so one past the head was never
    // handed out: refuse it at once instead of holding the request for the whole wait. The
    // head this process last heard of is committed too, so a position within it needs no
    // query.
    let heard = *state.store.head_watch().borrow();
    let head = if position <= heard {
        heard
    } else {
        state
            .store
            .head_position()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
    };
    if position > head {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "min_position_ahead",
            format!("min_position {position} lies beyond the end of the log ({head})"),
        )
        .with_details(json!({ "head": head })));
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

/// Parses a JSON body into `T`, telling malformed JSON (400) from wrong content (422).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    if let Some(bad) = nul_in(body) {
        let field = if bad.path.is_empty() {
            "body"
        } else {
            &bad.path
        };
        return Err(ApiError::validation(field, bad.reason));
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

/// The field of a body that holds a value no text column can store (a NUL character), if
/// it has one. The scan for the escape is cheap; the body is walked only on a hit.
fn nul_in(body: &[u8]) -> Option<crate::store::Unstorable> {
    const ESCAPE: &[u8] = b"\\u0000";
    body.windows(ESCAPE.len()).find(|w| *w == ESCAPE)?;
    let value: Value = serde_json::from_slice(body).ok()?;
    crate::store::unstorable(&value)
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
    /// The command had been stored before and this answer was read back from the log.
    pub replayed: bool,
}

impl Answer {
    pub fn new(status: StatusCode, body: Value, version: i64) -> Self {
        Self {
            status,
            body,
            version,
            replayed: false,
        }
    }

    /// The usual answer of a command on one entity: `{id, version, position}`.
    pub fn of<E: crate::actors::Entity>(
        status: StatusCode,
        id: Uuid,
        reply: &crate::actors::CommandReply<E>,
    ) -> Self {
        Self {
            status,
            body: json!({ "id": id, "version": reply.version, "position": reply.position }),
            version: reply.version,
            replayed: reply.replayed,
        }
    }

    pub fn into_response(self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status);
        builder.insert_header((header::ETAG, format!("\"{}\"", self.version)));
        if self.replayed {
            builder.insert_header(("Idempotent-Replayed", "true"));
        }
        if self.status == StatusCode::NO_CONTENT {
            return builder.finish();
        }
        builder.json(self.body)
    }
}

fn correlated(req: &HttpRequest) -> CommandMeta {
    let mut meta = CommandMeta::new();
    let header_text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect::<String>())
    };
    meta.correlation_id = header_text("x-correlation-id").or_else(|| header_text("x-request-id"));
    meta.frontend = header_text("x-frontend-source");
    meta
}

/// Metadata of a command sent by an authenticated caller: correlation from
/// `X-Request-Id`/`X-Correlation-Id`, the caller, and, with an `Idempotency-Key`, a command
/// id derived from the key *and the caller*, so that event ids (and ids of created
/// entities) follow from it and two callers never share a key.
pub fn meta(req: &HttpRequest, who: &Principal) -> Result<CommandMeta, ApiError> {
    let mut meta = correlated(req);
    meta.user_id = Some(who.user_id);
    meta.organization_id = who.organization_id;
    if let Some(key) = idempotency_key(req)? {
        meta.command_id =
            Uuid::new_v5(&NAMESPACE, format!("{}\n{key}", scope(req, who)).as_bytes());
        meta.replayable = true;
    }
    Ok(meta)
}

/// [`meta`] for a command that acts for `org`, naming `frontend` when given (otherwise the
/// `X-Frontend-Source` the request sent).
pub fn scoped_meta(
    req: &HttpRequest,
    who: &Principal,
    org: Uuid,
    frontend: Option<Frontend>,
) -> Result<CommandMeta, ApiError> {
    let mut meta = meta(req, who)?;
    meta.organization_id = Some(org);
    if let Some(frontend) = frontend {
        meta.frontend = Some(frontend.as_str().to_owned());
    }
    Ok(meta)
}

/// Metadata of a command of the unauthenticated auth routes (signup, login, refresh). These
/// ignore `Idempotency-Key`: their answers carry fresh tokens, which must never be handed
/// to whoever presents the same key again, and each of them is safe to repeat as it is.
pub fn anonymous_meta(req: &HttpRequest) -> CommandMeta {
    correlated(req)
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

/// What a key is scoped to: the route (method and path) and the caller (organization and
/// user), so one tenant's key can never reach another tenant's answer.
fn scope(req: &HttpRequest, who: &Principal) -> String {
    let org = who
        .organization_id
        .map_or_else(|| "-".to_owned(), |o| o.to_string());
    format!("{} {}\n{org}/{}", req.method(), req.path(), who.user_id)
}

/// Runs `command` at most once per idempotency key of this caller (or simply runs it
/// without a key).
///
/// The first request with a key records it with a hash of its body; its answer is stored
/// once the command has run. A repeat with another body is refused with 422, always. A
/// repeat after a stored answer gets that answer. A repeat whose first attempt left no
/// answer (it is still running, or its process died, or the database went away between
/// the append and the answer) runs the command again: the command id derived from the key
/// lets the entity find the first attempt's events in the log and answer with them, so
/// nothing is written twice and the answer is the original one. A key is freed only when
/// the command was refused (4xx), which guarantees nothing was written; after a 5xx the
/// outcome is unknown and the key stays.
pub async fn idempotent<F, Fut>(
    pool: &PgPool,
    req: &HttpRequest,
    who: &Principal,
    body: &[u8],
    command: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>>,
{
    let Some(key) = idempotency_key(req)? else {
        return Ok(command().await?.into_response());
    };
    let scope = scope(req, who);
    let hash = Uuid::new_v5(&NAMESPACE, body).to_string();

    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(&scope)
    .bind(&key)
    .bind(&hash)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;

    if !claimed {
        let stored: Option<(String, Option<i16>, Option<Value>)> = sqlx::query_as(
            "SELECT request_hash, status, response FROM idempotency_keys \
                 WHERE scope = $1 AND key = $2",
        )
        .bind(&scope)
        .bind(&key)
        .fetch_optional(pool)
        .await?;
        if let Some((stored_hash, status, response)) = stored {
            if stored_hash != hash {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request body",
                ));
            }
            if let (Some(status), Some(stored)) = (status, response) {
                let answer = Answer {
                    status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
                    version: stored["version"].as_i64().unwrap_or(0),
                    body: stored["body"].clone(),
                    replayed: true,
                };
                return Ok(answer.into_response());
            }
        }
        // No answer stored: the command runs again and finds its own events, if any.
    }

    match command().await {
        Ok(answer) => {
            sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, status, response) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO UPDATE \
                 SET status = EXCLUDED.status, response = EXCLUDED.response \
                 WHERE idempotency_keys.status IS NULL",
            )
            .bind(&scope)
            .bind(&key)
            .bind(&hash)
            .bind(answer.status.as_u16() as i16)
            .bind(json!({ "version": answer.version, "body": answer.body }))
            .execute(pool)
            .await?;
            Ok(answer.into_response())
        }
        Err(e) if e.status.is_client_error() => {
            // A refused command wrote nothing: free the key so that a corrected retry runs.
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL",
            )
            .bind(&scope)
            .bind(&key)
            .execute(pool)
            .await?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Keyset pagination of the list routes: a page size within bounds, a cursor this API handed
/// out, and the cursor of the next page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    /// Where the page starts (exclusive), or `start` when the request names no cursor.
    pub cursor: i64,
}

impl Page {
    /// `limit` (`default` when absent, 1 to `max`) and `cursor` (`start` when absent).
    pub fn parse(
        limit: Option<i64>,
        (default, max): (i64, i64),
        cursor: &Option<String>,
        start: i64,
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {max}"
            )));
        }
        let cursor =
            match cursor {
                None => start,
                Some(c) => c.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| {
                    ApiError::bad_request("cursor is not one this API handed out")
                })?,
            };
        Ok(Self { limit, cursor })
    }

    /// Rows to fetch: one more than the page, to tell whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Trims the extra row and names the cursor of the next page (`key` of the last row).
    pub fn finish<T>(&self, rows: &mut Vec<T>, key: impl Fn(&T) -> i64) -> Option<String> {
        if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last().map(|r| key(r).to_string())
        } else {
            None
        }
    }
}

/// The read-model row `id` of `table` (selecting `columns`) when it belongs to organization
/// `org`; another organization's row, like a missing one, is 404 `<what> not found`. The one
/// tenant check of every get-by-id.
pub async fn find_in_org<T>(
    pool: &PgPool,
    (table, columns): (&str, &str),
    org: Uuid,
    id: Uuid,
    what: &str,
) -> Result<T, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!(
        "SELECT {columns} FROM {table} WHERE id = $1 AND organization_id = $2"
    ))
    .bind(id)
    .bind(org)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("{what} not found")))
}

/// 200 with `body` and the entity's `version` as its `ETag` (what `If-Match` takes back).
pub fn with_etag(version: i64, body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(body)
}

#[cfg(test)]
mod page_tests {
    use super::Page;

    #[test]
    fn a_page_checks_its_bounds_and_names_the_next_cursor_only_when_more_follow() {
        assert!(Page::parse(Some(0), (50, 200), &None, 0).is_err());
        assert!(Page::parse(Some(201), (50, 200), &None, 0).is_err());
        assert!(Page::parse(None, (50, 200), &Some("abc".into()), 0).is_err());
        assert!(Page::parse(None, (50, 200), &Some("-1".into()), 0).is_err());
        let page = Page::parse(Some(2), (50, 200), &None, 7).unwrap();
        assert_eq!((page.limit, page.cursor, page.fetch()), (2, 7, 3));
        let mut more = vec![10, 11, 12];
        assert_eq!(page.finish(&mut more, |r| *r), Some("11".into()));
        assert_eq!(more, vec![10, 11]);
        let mut last = vec![10, 11];
        assert_eq!(page.finish(&mut last, |r| *r), None);
    }
}
