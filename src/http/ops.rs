//! Operations: health, metrics and service information.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::projections::{self, runner};
use crate::startup::AppState;
use crate::telemetry;

/// `GET /health`: 200 when the event store answers, 503 otherwise.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The event store answers", body = super::schema::Health),
        (status = 503, description = "The event store is unreachable", body = super::schema::Health),
    ),
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let head = state.store.head_position().await;
    let mut projections_status = Vec::new();
    if let Ok(head) = &head {
        for p in projections::all() {
            let checkpoint = runner::checkpoint(&state.pool, p.name()).await.ok();
            projections_status.push(json!({
                "name": p.name(),
                "checkpoint": checkpoint,
                "lag": checkpoint.map(|c| (head - c).max(0)),
            }));
        }
    }
    let reachable = head.is_ok();
    let body = json!({
        "status": if reachable { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "memory": { "rss_bytes": telemetry::rss_bytes() },
        "event_store": {
            "reachable": reachable,
            "head_position": head.as_ref().ok(),
            "error": head.as_ref().err().map(|e| e.to_string()),
        },
        "projections": projections_status,
        "live_actors": { "building": state.buildings.live() },
    });
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(body)
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Ok(head) = state.store.head_position().await {
        metrics::gauge!("ub_event_head_position").set(head as f64);
        for p in projections::all() {
            if let Ok(c) = runner::checkpoint(&state.pool, p.name()).await {
                metrics::gauge!("ub_projection_lag", "projection" => p.name())
                    .set((head - c).max(0) as f64);
            }
        }
    }
    metrics::gauge!("ub_process_rss_bytes").set(telemetry::rss_bytes().unwrap_or(0) as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(telemetry::metrics_handle().render())
}

/// `GET /api/v1/info`: what this service is and offers.
#[utoipa::path(
    get,
    path = "/api/v1/info",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Name, version, frontends and projections", body = super::schema::Info)),
)]
pub async fn info() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "universal-backend",
        "version": env!("CARGO_PKG_VERSION"),
        "description": env!("CARGO_PKG_DESCRIPTION"),
        "event_store": "postgres",
        "frontends": {
            "citypulse": { "base": "/api/v1/citypulse", "available": true },
        },
        "projections": projections::all().iter().map(|p| p.name()).collect::<Vec<_>>(),
        "history": { "streams": "/api/v1/streams/{stream}", "events": "/api/v1/events" },
        "operations": { "health": "/health", "metrics": "/metrics" },
    }))
}
