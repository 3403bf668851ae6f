//! The HTTP edge: one route table, one error type, one file per REST resource. The socket
//! protocols are mounted here but live in `crate::gateways`.

pub mod admin;
pub mod agents;
pub mod ai;
pub mod analysis;
pub mod chat;
pub mod citypulse;
pub mod command;
pub mod contract;
pub mod documents;
pub mod error;
pub mod files;
pub mod fluxstudio;
pub mod guard;
pub mod history;
pub mod identity;
pub mod legacy;
pub mod messaging;
pub mod openapi;
pub mod ops;
pub mod schema;
pub mod swarm;
pub mod traffic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlers, Next};
use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpMessage, HttpResponse};
use futures_util::StreamExt;

pub use error::ApiError;

/// Largest request body accepted (a full batch of 1,000 readings is about 120 KiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Registers every route; used by the server and by the tests alike.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY))
        .app_data(
            web::PathConfig::default()
                .error_handler(|_, _| ApiError::not_found("no such resource").into()),
        )
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::bad_request(format!("invalid query: {e}")).into()),
        )
        .route("/health", web::get().to(ops::health))
        .route("/health/agents", web::get().to(agents::health))
        .route("/metrics", web::get().to(ops::metrics))
        .route(
            "/socket.io/",
            web::get().to(crate::gateways::socketio::connect),
        )
        .route(
            "/socket.io/",
            web::post().to(crate::gateways::socketio::post),
        )
        .configure(crate::gateways::pusher::socket::configure)
        .service(web::scope("/collab").route(
            "/{document}",
            web::get().to(crate::gateways::collab::connect),
        ))
        .service(
            web::scope("/api/v1")
                // Routes are tried in order: the busiest (sensor readings) come first. Every
                // group below sits under a prefix of its own, so the order changes no match.
                .configure(citypulse::configure)
                .route("/info", web::get().to(ops::info))
                .route("/openapi.json", web::get().to(openapi::openapi_json))
                .route("/docs", web::get().to(openapi::docs))
                .configure(identity::configure)
                .route("/ws", web::get().to(crate::gateways::ws::connect))
                .service(web::scope("/collab").route(
                    "/{document}",
                    web::get().to(crate::gateways::collab::connect),
                ))
                .configure(documents::configure)
                .configure(ai::configure)
                .configure(messaging::configure)
                .configure(messaging::configure_shared)
                .configure(history::configure)
                .configure(crate::history::routes::configure)
                .configure(admin::configure)
                .configure(fluxstudio::configure)
                .configure(swarm::configure)
                .configure(analysis::configure)
                .configure(legacy::configure_system)
                .configure(agents::configure)
                .configure(files::configure),
        )
        // FluxStudio share links, without an account.
        .configure(files::configure_links)
        // The legacy Next.js paths of the analysis service, behind their flags (exact paths,
        // before the aliases' `/api` scope; see `legacy`).
        .configure(legacy::configure_legacy)
        // FluxStudio's frontend calls these paths without `/v1`: the same handlers, mounted
        // a second time (see `openapi::ALIASED`, which the contract middleware follows).
        .service(web::scope("/api").configure(aliases));
}

/// The route groups also served under `/api` without `/v1`; see [`openapi::ALIASED`].
fn aliases(cfg: &mut ServiceConfig) {
    cfg.configure(identity::configure)
        .configure(fluxstudio::configure)
        .configure(messaging::configure)
        .configure(files::configure);
}

/// CORS for the configured origins; other origins get no CORS headers at all.
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::IF_MATCH,
            actix_web::http::header::HeaderName::from_static("x-frontend-source"),
            actix_web::http::header::HeaderName::from_static("idempotency-key"),
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            // tus uploads (files) and ranged downloads.
            actix_web::http::header::HeaderName::from_static("tus-resumable"),
            actix_web::http::header::HeaderName::from_static("upload-length"),
            actix_web::http::header::HeaderName::from_static("upload-offset"),
            actix_web::http::header::HeaderName::from_static("upload-metadata"),
            actix_web::http::header::HeaderName::from_static("upload-checksum"),
            actix_web::http::header::RANGE,
            actix_web::http::header::IF_NONE_MATCH,
        ])
        .expose_headers([
            actix_web::http::header::ETAG,
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::LOCATION,
            actix_web::http::header::CONTENT_RANGE,
            actix_web::http::header::CONTENT_DISPOSITION,
            actix_web::http::header::HeaderName::from_static("tus-resumable"),
            actix_web::http::header::HeaderName::from_static("tus-version"),
            actix_web::http::header::HeaderName::from_static("tus-extension"),
            actix_web::http::header::HeaderName::from_static("tus-max-size"),
            actix_web::http::header::HeaderName::from_static("upload-offset"),
            actix_web::http::header::HeaderName::from_static("upload-length"),
            actix_web::http::header::HeaderName::from_static("upload-expires"),
            actix_web::http::header::HeaderName::from_static("x-file-id"),
        ])
        .supports_credentials()
        .block_on_origin_mismatch(false)
        .max_age(3600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// The middleware that turns framework-made errors (404 for unknown routes, 405, 413) into
/// the JSON error shape.
pub fn json_errors<B: actix_web::body::MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new()
        .default_handler_client(error::json_error_responses)
        .default_handler_server(error::json_error_responses)
}

/// Puts a time limit on receiving a request body: a client that sends its body slowly, or
/// stops halfway, is answered 408 `request_timeout` once `HTTP_BODY_TIMEOUT_SECS` have
/// passed since its headers arrived, instead of holding a worker's attention forever.
/// (Headers have their own limit, the server's client request timeout.) WebSocket upgrades
/// are left alone: their body is the connection itself.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, actix_web::Error> {
    let limit = req
        .app_data::<web::Data<crate::state::AppState>>()
        .map(|s| Duration::from_secs(s.config.http_body_timeout_secs.max(1)));
    let upgrade = req.headers().contains_key(actix_web::http::header::UPGRADE);
    let Some(limit) = limit.filter(|_| !upgrade) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + limit;
    // A file upload may rightly take longer than any fixed limit: there the limit is on the
    // wait for each next chunk instead.
    let per_chunk = crate::files::streams_body(req.method(), req.path());
    let flag = expired.clone();
    let body = req.take_payload();
    let limited = futures_util::stream::unfold(Some(body), move |body| {
        let flag = flag.clone();
        async move {
            let mut body = body?;
            let deadline = if per_chunk {
                tokio::time::Instant::now() + limit
            } else {
                deadline
            };
            match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(body))),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Release);
                    let timed_out = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    );
                    Some((Err(timed_out.into()), None))
                }
            }
        }
    });
    // Fused: a reader that polls again after the end (the multipart parser does) gets the
    // end again.
    req.set_payload(Payload::from(Box::pin(limited.fuse())
        as std::pin::Pin<
            Box<
                dyn futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>,
            >,
        >));
    let res = next.call(req).await?;
    if !expired.load(Ordering::Acquire) {
        return Ok(res.map_into_left_body());
    }
    let err = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} s",
            limit.as_secs()
        ),
    );
    let (req, _) = res.into_parts();
    let res = HttpResponse::build(StatusCode::REQUEST_TIMEOUT)
        .insert_header((actix_web::http::header::CONNECTION, "close"))
        .json(err.body());
    Ok(ServiceResponse::new(req, res).map_into_right_body())
}
