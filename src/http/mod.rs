//! The HTTP edge: one route table, one error type, one file per resource.

pub mod citypulse;
pub mod command;
pub mod contract;
pub mod error;
pub mod guard;
pub mod history;
pub mod identity;
pub mod openapi;
pub mod ops;
pub mod schema;
pub mod socketio;
pub mod ws;

use actix_web::middleware::ErrorHandlers;
use actix_web::web::{self, ServiceConfig};

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
        .route("/metrics", web::get().to(ops::metrics))
        .route("/socket.io/", web::get().to(socketio::connect))
        .service(
            web::scope("/api/v1")
                .route("/info", web::get().to(ops::info))
                .route("/openapi.json", web::get().to(openapi::openapi_json))
                .route("/docs", web::get().to(openapi::docs))
                .configure(identity::configure)
                .route("/ws", web::get().to(ws::connect))
                .configure(citypulse::configure)
                .configure(history::configure),
        );
}

/// CORS for the configured origins; other origins get no CORS headers at all.
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::IF_MATCH,
            actix_web::http::header::HeaderName::from_static("x-frontend-source"),
            actix_web::http::header::HeaderName::from_static("idempotency-key"),
            actix_web::http::header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            actix_web::http::header::ETAG,
            actix_web::http::header::RETRY_AFTER,
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
