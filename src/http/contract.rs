//! Holds requests to the contract before and after routing, with answers in the JSON error
//! shape where actix would answer with an empty body:
//!
//! - a URI over [`MAX_URI`] bytes gets 414 (heads over actix's 128 KiB buffer never reach
//!   the application: actix answers those 431 itself);
//! - a body on a JSON route with another `Content-Type` gets 415 (a body without one is read
//!   as JSON, so clients that omit the header keep working);
//! - a documented path asked with an undocumented method gets 405 with `Allow`, where actix
//!   would answer 404 because each route is its own method-guarded resource.
//!
//! The routes and methods come from the OpenAPI document ([`super::openapi::routes`]), which a
//! test holds equal to the route table that actix serves.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use super::openapi;
use super::ApiError;

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_URI: usize = 8 * 1024;

/// The middleware function; see the module comment.
pub async fn enforce(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        let err = ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target may be at most {MAX_URI} bytes"),
        )
        .with_details(serde_json::json!({ "max_bytes": MAX_URI, "bytes": uri_len }));
        return Ok(refuse(req, err));
    }
    if has_body(&req) && !is_json(&req) {
        let json_route = openapi::route_for(req.path())
            .is_some_and(|r| r.methods.iter().any(|(m, json)| m == req.method() && *json));
        if json_route {
            let err = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            );
            return Ok(refuse(req, err));
        }
    }
    let res = next.call(req).await?;
    // Only actix's own "no resource" answer has no content type; ours are all JSON.
    if res.status() == StatusCode::NOT_FOUND && !res.headers().contains_key(header::CONTENT_TYPE) {
        let allowed = openapi::route_for(res.request().path())
            .map(|r| r.methods.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>())
            .filter(|methods| !methods.is_empty() && !methods.contains(res.request().method()));
        if let Some(methods) = allowed {
            let err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed here", res.request().method()),
            )
            .with_details(serde_json::json!({
                "allowed": methods.iter().map(Method::as_str).collect::<Vec<_>>()
            }));
            let (req, _) = res.into_parts();
            let mut response = err.error_response();
            response
                .headers_mut()
                .insert(header::ALLOW, allow_header(&methods));
            return Ok(ServiceResponse::new(req, response).map_into_right_body());
        }
    }
    Ok(res.map_into_left_body())
}

fn refuse<B>(req: ServiceRequest, err: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(err.error_response())
        .map_into_right_body()
}

fn allow_header(methods: &[Method]) -> header::HeaderValue {
    let list = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    header::HeaderValue::from_str(&list).expect("method names are valid header text")
}

fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// No `Content-Type` counts as JSON; otherwise `application/json` or a `+json` type.
fn is_json(req: &ServiceRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
