//! Operations: health, metrics and service information.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use universal_events::identity::Frontend;

use crate::projections::{self, parked, runner};
use crate::state::AppState;
use crate::telemetry;

/// `GET /health`: 200 when the event store answers, 503 otherwise. Parked events (events a
/// projection could not apply) are a warning, not a failure: counted per projection and
/// named in `warnings`.
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
pub async fn health(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    let head = state.store.head_position().await;
    let mut projections_status = Vec::new();
    let mut warnings = Vec::new();
    if let Ok(head) = &head {
        let parked = parked::open_counts(&state.pool).await.ok();
        // Which process runs each projection (from the server's locks).
        let holders = runner::holders(&state.pool).await.ok();
        for p in projections::all() {
            let process = holders.as_ref().map(|h| {
                h.iter()
                    .find(|(name, _)| *name == p.name())
                    .and_then(|(_, owner)| owner.clone())
            });
            let checkpoint = runner::checkpoint(&state.pool, p.name()).await.ok();
            let parked_events = parked
                .as_ref()
                .map(|c| c.get(p.name()).copied().unwrap_or(0));
            if let Some(n @ 1..) = parked_events {
                warnings.push(format!(
                    "{} has {n} parked event(s): GET /api/v1/admin/parked-events",
                    p.name()
                ));
            }
            projections_status.push(json!({
                "name": p.name(),
                "checkpoint": checkpoint,
                "lag": checkpoint.map(|c| (head - c).max(0)),
                "parked_events": parked_events,
                "process": process.flatten(),
            }));
        }
    }
    let reachable = head.is_ok();
    let body = json!({
        "status": if reachable { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "memory": memory_report(),
        // The fields of FluxStudio's health check (see the README, "FluxStudio").
        "service": "universal-backend",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "services": services(&state),
        "port": req.app_config().local_addr().port(),
        "uptime": state.started.elapsed().as_secs(),
        "event_store": {
            "reachable": reachable,
            "head_position": head.as_ref().ok(),
            "error": head.as_ref().err().map(|e| e.to_string()),
        },
        "projections": projections_status,
        "warnings": warnings,
        "live_actors": { "building": state.registries.buildings.live() },
        "process": state.swarm.owner(),
        "worker_slots": {
            "total": state.swarm.slots(),
            "in_use": state.swarm.running_here(),
        },
        "scheduler_leader": state.swarm.is_leader(),
        "collab": {
            "connections": state.collab.open_connections(),
            "loaded_documents": state.collab.loaded_documents(),
        },
    });
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(body)
}

/// What this process serves now, for the `services` field of `/health`: every group of
/// routes and every live gateway, less those its settings turn off (`CITYPULSE_ENABLED`,
/// `AI_MODELS_ENABLED`, `QUANTUM_SWARM_ENABLED` / `VELOCITY_SWARM_ENABLED`,
/// `WEBSOCKET_ENABLED`, `PUSHER_ENABLED`).
pub fn services(state: &AppState) -> Vec<&'static str> {
    let c = &state.config;
    [
        ("auth", true),
        ("organizations", true),
        ("teams", true),
        ("projects", true),
        ("messaging", true),
        ("notifications", true),
        ("citypulse", c.citypulse_enabled),
        ("flowmind", c.ai_models_enabled),
        ("swarm", c.quantum_swarm_enabled || c.velocity_swarm_enabled),
        ("agents", true),
        ("analysis", true),
        ("events", true),
        ("socket.io", c.websocket_enabled),
        ("ws", c.websocket_enabled),
        ("pusher", state.pusher.settings.enabled),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

/// Memory of this process, from `/proc/self/status` (all `null` where there is none).
/// Rust has no garbage-collected heap, so the Node.js names are mapped to what the kernel
/// reports: `rss` = VmRSS (resident), `heapTotal` = VmData (the address space of heap and
/// private anonymous mappings the allocator has reserved), `heapUsed` = RssAnon (of those,
/// the pages resident now), `external` = RssFile + RssShmem (resident memory that is not
/// heap: the binary, shared libraries, mapped files). `rss_bytes` is the older name of `rss`.
fn memory_report() -> serde_json::Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    let rss = field("VmRSS:");
    let external = match (field("RssFile:"), field("RssShmem:")) {
        (Some(f), Some(s)) => Some(f + s),
        (f, s) => f.or(s),
    };
    json!({
        "rss": rss,
        "heapTotal": field("VmData:"),
        "heapUsed": field("RssAnon:"),
        "external": external,
        "rss_bytes": rss.or_else(telemetry::rss_bytes),
    })
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
        let _ = parked::refresh_gauges(&state.pool).await;
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
pub async fn info(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "universal-backend",
        "version": env!("CARGO_PKG_VERSION"),
        "description": env!("CARGO_PKG_DESCRIPTION"),
        "event_store": "postgres",
        "frontends": frontends(&state),
        "projections": projections::all().iter().map(|p| p.name()).collect::<Vec<_>>(),
        "history": { "streams": "/api/v1/streams/{stream}", "events": "/api/v1/events" },
        "operations": { "health": "/health", "metrics": "/metrics" },
        "live": {
            "socketio": { "path": "/socket.io/", "enabled": state.config.websocket_enabled },
            "ws": { "path": "/api/v1/ws", "enabled": state.config.websocket_enabled },
            "pusher": {
                "path": format!("/app/{}", state.pusher.settings.key),
                "auth": "/pusher/auth",
                "enabled": state.pusher.settings.enabled,
            },
        },
    }))
}

/// One frontend in `/api/v1/info` (see `schema::FrontendInfo`).
struct Served {
    frontend: Frontend,
    /// Whether its routes are served, by its route-group setting.
    enabled: bool,
    /// The settings that turn its routes or its live updates off.
    settings: &'static [&'static str],
    base_paths: &'static [&'static str],
    socketio_namespaces: &'static [&'static str],
    pusher_channels: &'static [&'static str],
    event_streams: &'static [&'static str],
}

/// Every frontend this service serves, keyed by its `X-Frontend-Source` name.
fn frontends(state: &AppState) -> serde_json::Map<String, serde_json::Value> {
    let c = &state.config;
    let served = [
        Served {
            frontend: Frontend::Citypulse,
            enabled: c.citypulse_enabled,
            settings: &["CITYPULSE_ENABLED", "WEBSOCKET_ENABLED"],
            base_paths: &["/api/v1/citypulse"],
            socketio_namespaces: &["/citypulse"],
            pusher_channels: &[],
            event_streams: &[],
        },
        Served {
            frontend: Frontend::Flowmind,
            enabled: c.ai_models_enabled,
            settings: &["AI_MODELS_ENABLED", "WEBSOCKET_ENABLED"],
            base_paths: &["/api/v1/ai"],
            socketio_namespaces: &["/flowmind"],
            pusher_channels: &[],
            event_streams: &["/api/v1/ai/sessions/{id}/messages/{mid}/stream"],
        },
        Served {
            frontend: Frontend::Quantum,
            enabled: c.quantum_swarm_enabled,
            settings: &["QUANTUM_SWARM_ENABLED", "WEBSOCKET_ENABLED"],
            base_paths: &["/api/v1/swarm"],
            socketio_namespaces: &["/quantum"],
            pusher_channels: &[],
            event_streams: &[],
        },
        Served {
            frontend: Frontend::Velocity,
            enabled: c.velocity_swarm_enabled,
            settings: &["VELOCITY_SWARM_ENABLED", "WEBSOCKET_ENABLED"],
            base_paths: &["/api/v1/swarm"],
            socketio_namespaces: &["/velocity"],
            pusher_channels: &[],
            event_streams: &[],
        },
        Served {
            frontend: Frontend::Toolbox,
            enabled: true,
            settings: &["PUSHER_ENABLED"],
            base_paths: &["/api/v1/agents", "/api/v1/system/circuit-breakers"],
            socketio_namespaces: &[],
            pusher_channels: &[
                "content-generation",
                "private-org-{organization_id}",
                "private-user-{user_id}",
                "presence-org-{organization_id}",
            ],
            event_streams: &[],
        },
        Served {
            frontend: Frontend::Fluxstudio,
            enabled: true,
            settings: &["WEBSOCKET_ENABLED"],
            base_paths: &[
                "/api/v1/teams",
                "/api/v1/projects",
                "/api/v1/channels",
                "/api/v1/messages",
                "/api/auth",
                "/api/users",
                "/api/organizations",
                "/api/teams",
                "/api/projects",
                "/api/channels",
                "/api/messages",
            ],
            socketio_namespaces: &["/messaging", "/auth"],
            pusher_channels: &[],
            event_streams: &[],
        },
    ];
    served
        .into_iter()
        .map(|f| {
            let live_enabled = match (f.socketio_namespaces, f.pusher_channels) {
                ([], []) => false,
                ([], _) => state.pusher.settings.enabled,
                (_, []) => c.websocket_enabled,
                _ => c.websocket_enabled && state.pusher.settings.enabled,
            };
            let name = f.frontend.as_str();
            (
                name.to_owned(),
                json!({
                    "enabled": f.enabled,
                    "available": f.enabled,
                    "frontend_source": name,
                    "base": f.base_paths[0],
                    "base_paths": f.base_paths,
                    "socketio_namespaces": f.socketio_namespaces,
                    "pusher_channels": f.pusher_channels,
                    "event_streams": f.event_streams,
                    "live_enabled": live_enabled,
                    "settings": f.settings,
                }),
            )
        })
        .collect()
}
