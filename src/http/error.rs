//! The one error type of the HTTP layer.
//!
//! Every failure leaves as `{"error": {"code", "message", "details"}}` with the fitting
//! status. Unexpected errors are logged with their whole cause chain and answered as an
//! opaque 500, so no internals leak to clients.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::{header, StatusCode};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Value};

use crate::actors::CommandError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }

    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// A malformed request: bad JSON, a bad query parameter or header.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Well-formed input that breaks a rule; `field` names the offending input.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{field}: {message}"),
        )
        .with_details(json!({ "field": field, "reason": message }))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Adds a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// An unexpected failure: logged in full, answered opaquely.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "unexpected error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "something went wrong on our side",
        )
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message, "details": self.details } })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(self.body())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        crate::db::suspect(&e);
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                ApiError::conflict("a record with the same key exists")
            }
            // A value the database cannot take (a NUL in a text parameter, a number out of
            // range): the request's fault, and nothing was written.
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
                ApiError::bad_request(format!("a parameter cannot be used: {}", db.message()))
            }
            // A statement or lock wait that ran out of time (see `db::connect_options`).
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("57014" | "55P03")) =>
            {
                tracing::warn!(error = %e, "database statement timed out");
                ApiError::unavailable("the database did not answer in time; try again")
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable; try again")
            }
            // The connection broke, the server is shutting down or has become a standby:
            // the process is moving to the primary (see `db::primary`).
            _ if crate::db::primary::is_host_failure(&e) => {
                tracing::warn!(error = %e, "database host failed");
                ApiError::unavailable("the database is unavailable; try again")
            }
            _ => ApiError::internal(e),
        }
    }
}

/// Maps the runtime's errors; the domain error is mapped by the caller-supplied function.
pub fn command_error<D: std::error::Error>(
    e: CommandError<D>,
    domain: impl FnOnce(D) -> ApiError,
) -> ApiError {
    match e {
        CommandError::Domain(d) => domain(d),
        CommandError::Conflict { expected, actual } => ApiError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            format!("the entity is at version {actual}, not {expected}"),
        )
        .with_details(json!({ "expected_version": expected, "actual_version": actual })),
        CommandError::Store(msg) => {
            tracing::warn!(error = %msg, "command failed in the store");
            ApiError::unavailable("the event store is unavailable; the command may be retried")
        }
        CommandError::Unavailable => ApiError::unavailable("the entity could not be reached"),
        CommandError::Contended { attempts } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "contended",
            "the entity is written by many clients at once; retry the command",
        )
        .with_details(json!({ "attempts": attempts }))
        .retry_after(1),
        CommandError::Invalid(why) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("the request holds a value that cannot be stored: {why}"),
        )
        .with_details(json!({ "reason": why })),
    }
}

/// Rewrites error responses produced outside our handlers (an unknown route, a wrong
/// method, a payload over the size limit) into the JSON error shape.
pub fn json_error_responses<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such resource".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here".into()),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload_too_large", "the request body is too large".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "send application/json".into())
        }
        s if s.is_server_error() => ("internal_error", "something went wrong on our side".into()),
        s => (
            "bad_request",
            s.canonical_reason().unwrap_or("bad request").to_owned(),
        ),
    };
    let err = ApiError::new(status, code, message);
    let (req, _) = res.into_parts();
    let res = HttpResponse::build(status).json(err.body());
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, res).map_into_right_body(),
    ))
}
