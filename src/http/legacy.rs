//! Parallel running with the legacy Next.js backend: the old API routes of the analysis
//! service (`/api/start-analysis`, `/api/process-updates`, `/api/process-results`,
//! `/api/saveInsights`, `/api/getAnalysis`, `/api/openai`), each behind a feature flag.
//!
//! - **Mount.** The routes keep the paths the frontend called, so that moving the frontend
//!   over is a change of host only. They are six exact paths under `/api`, none of which
//!   is a group of the `/api` aliases (`openapi::ALIASED`: `auth`, `users`, ...), and they
//!   are registered before the alias scope.
//! - **Flags are events** (`crate::actors::flag`, one `flag` stream per route, its history).
//!   `legacy` (a flag that never changed): the request is proxied to `LEGACY_BACKEND_URL`;
//!   `new`: this backend serves it with the analysis handlers; `compare`: the legacy backend
//!   answers the caller, and for the read routes this backend answers the same request too;
//!   the two JSON answers are compared, counted in `ub_legacy_compare_total{route,outcome}`
//!   and told in the `X-Compare` header (`match` or `mismatch`). Every request reads the
//!   flag from the read model, so every process follows a change.
//! - **The proxy** is a real HTTP client with a time limit (`LEGACY_TIMEOUT_SECS`), no
//!   redirects, and a bound on the answer it passes on (`LEGACY_MAX_RESPONSE_BYTES`). The
//!   caller must be signed in here; the legacy backend receives the caller as
//!   `X-Forwarded-User` and `X-Forwarded-Organization`, never the bearer token. The target
//!   URL is built under the configured origin (`crate::outbound::Origin`): it keeps the
//!   scheme, host, port and path prefix of `LEGACY_BACKEND_URL` whatever the request holds.
//! - **Automatic rollback.** Each process measures the routes it serves in `new` mode over
//!   a sliding window (`FLAG_ROLLBACK_WINDOW_SECS`): with at least
//!   `FLAG_ROLLBACK_MIN_REQUESTS` requests, an error rate (5xx answers) above
//!   `FLAG_ROLLBACK_THRESHOLD` (5%), and failed requests from at least
//!   `FLAG_ROLLBACK_MIN_TENANTS` distinct organizations (3), it flips the flag back to
//!   `legacy` with a `Rollback`
//!   command (actor `system`, the measured rate in the event). The flag's decider records
//!   it only if the flag is still `new`, and appends with optimistic concurrency, so two
//!   processes that roll back at once record one flip. Only failures of this server count:
//!   a request the caller got wrong is a 4xx, and so is a prompt the AI provider refuses
//!   for its content (422 `provider_rejected`), so a tenant's bad input cannot move a route
//!   for everyone.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::flag::FlagMode;
use uuid::Uuid;

use super::analysis;
use super::command::parse_json;
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::flag::{flag_id, FlagCommand, FlagError};
use crate::actors::CommandMeta;
use crate::providers::{ChatMessage, ChatRequest, ReplyEvent, Role};
use crate::state::AppState;

/// The flagged routes of the legacy API: name, method, and whether it only reads (only
/// those are answered twice in `compare` mode).
pub const ROUTES: [(&str, &str, bool); 6] = [
    ("start-analysis", "POST", false),
    ("process-updates", "GET", true),
    ("process-results", "GET", true),
    ("saveInsights", "POST", false),
    ("getAnalysis", "GET", true),
    ("openai", "POST", false),
];

/// Outcomes kept per route at most, whatever the traffic.
const MAX_SAMPLES: usize = 10_000;
/// Longest text of an `openai` answer.
const MAX_COMPLETION: usize = 32_000;
/// Changes of each flag shown by `GET /api/v1/system/flags`.
const HISTORY: i64 = 20;

fn known(route: &str) -> Option<(&'static str, &'static str, bool)> {
    ROUTES.into_iter().find(|(name, _, _)| *name == route)
}

/// One answer served here in `new` mode: when, whether it failed, and whose it was.
struct Sample {
    at: Instant,
    error: bool,
    organization: Option<Uuid>,
}

/// A route's window as measured: requests, error rate, and the distinct organizations
/// among the failed requests.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Window {
    requests: u64,
    rate: f64,
    failing_organizations: u64,
}

impl Window {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Self {
        let (mut requests, mut errors) = (0u64, 0u64);
        let mut organizations = std::collections::HashSet::new();
        for s in samples {
            requests += 1;
            if s.error {
                errors += 1;
                organizations.insert(s.organization);
            }
        }
        Self {
            requests,
            rate: errors as f64 / requests.max(1) as f64,
            failing_organizations: organizations.len() as u64,
        }
    }
}

/// This process's part of parallel running: the proxy's client, the legacy origin and the
/// error windows.
pub struct Legacy {
    client: reqwest::Client,
    origin: Option<crate::outbound::Origin>,
    windows: Mutex<HashMap<&'static str, VecDeque<Sample>>>,
}

impl Legacy {
    pub fn new(config: &crate::config::Config) -> anyhow::Result<Self> {
        let origin = config
            .legacy_backend_url
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(crate::outbound::Origin::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("LEGACY_BACKEND_URL: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.legacy_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(config.legacy_timeout_secs.clamp(1, 5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Ok(Self {
            client,
            origin,
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Records one answer of `route` served here for `organization`, and returns the
    /// window.
    fn record(
        &self,
        route: &'static str,
        error: bool,
        organization: Option<Uuid>,
        window: Duration,
    ) -> Window {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let samples = windows.entry(route).or_default();
        samples.push_back(Sample {
            at: now,
            error,
            organization,
        });
        while samples.len() > MAX_SAMPLES
            || samples
                .front()
                .is_some_and(|s| now.duration_since(s.at) > window)
        {
            samples.pop_front();
        }
        Window::of(samples.iter())
    }

    /// The window of `route` as this process measured it: (requests, error rate).
    fn measured(&self, route: &str, window: Duration) -> (u64, f64) {
        let now = Instant::now();
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let Some(samples) = windows.get(route) else {
            return (0, 0.0);
        };
        let w = Window::of(
            samples
                .iter()
                .filter(|s| now.duration_since(s.at) <= window),
        );
        (w.requests, w.rate)
    }

    /// Forgets the window of `route` (its flag changed: the new mode starts afresh).
    fn reset(&self, route: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.remove(route);
    }
}

pub fn configure_system(cfg: &mut web::ServiceConfig) {
    cfg.route("/system/flags", web::get().to(list_flags))
        .route("/system/flags/{route}", web::put().to(set_flag));
}

/// The legacy paths, mounted at the root (before the `/api` aliases).
pub fn configure_legacy(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/start-analysis", web::post().to(start_analysis))
        .route("/api/process-updates", web::get().to(process_updates))
        .route("/api/process-results", web::get().to(process_results))
        .route("/api/saveInsights", web::post().to(save_insights))
        .route("/api/getAnalysis", web::get().to(get_analysis))
        .route("/api/openai", web::post().to(openai));
}

/// The current mode of `route`'s flag, from the read model.
async fn mode_of(state: &AppState, route: &str) -> Result<FlagMode, ApiError> {
    let mode: Option<String> =
        sqlx::query_scalar("SELECT mode FROM feature_flags WHERE route = $1")
            .bind(route)
            .fetch_optional(&state.pool)
            .await?;
    Ok(mode
        .as_deref()
        .and_then(FlagMode::parse)
        .unwrap_or_default())
}

/// `?id=` of the legacy read routes.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct IdParams {
    /// The analysis.
    id: Uuid,
}

/// The body of the legacy `saveInsights`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SaveInsightsBody {
    /// The analysis.
    id: Uuid,
    #[schema(max_length = 8000)]
    text: String,
}

/// The body of the legacy `openai`: one prompt, answered whole.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OpenAiBody {
    #[schema(max_length = 32000)]
    prompt: String,
    model: Option<String>,
}

fn id_param(req: &HttpRequest) -> Result<Uuid, ApiError> {
    web::Query::<IdParams>::from_query(req.query_string())
        .map(|q| q.id)
        .map_err(|_| ApiError::validation("id", "must be the analysis's id (a UUID)"))
}

fn into_response(result: Result<HttpResponse, ApiError>) -> HttpResponse {
    result.unwrap_or_else(|e| e.error_response())
}

/// This backend's answer to a legacy route (the `new` mode).
async fn serve_new(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    who: &Principal,
    route: &str,
    body: &web::Bytes,
) -> Result<HttpResponse, ApiError> {
    match route {
        "start-analysis" => {
            analysis::start(state.clone(), req.clone(), who.clone(), body.clone()).await
        }
        "saveInsights" => {
            let input: SaveInsightsBody = parse_json(body)?;
            analysis::insight(state, req, who, input.id, input.text, body).await
        }
        "openai" => {
            let input: OpenAiBody = parse_json(body)?;
            Ok(HttpResponse::Ok().json(complete(state, input).await?))
        }
        _ => Ok(HttpResponse::Ok().json(read_new(state, req, who, route).await?)),
    }
}

/// This backend's answer to a legacy read route, as JSON.
async fn read_new(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    route: &str,
) -> Result<Value, ApiError> {
    let id = id_param(req)?;
    let view = analysis::view(state, who, id, None).await?;
    Ok(match route {
        "process-updates" => {
            json!({ "id": id, "status": view["status"], "progress": view["progress"] })
        }
        "process-results" => json!({
            "id": id, "status": view["status"], "results": view["results"],
            "insights": view["insights"],
        }),
        _ => view,
    })
}

/// The legacy `openai`: one prompt through the provider layer, answered whole.
async fn complete(state: &AppState, input: OpenAiBody) -> Result<Value, ApiError> {
    crate::actors::validate::body(&input.prompt, MAX_COMPLETION)
        .map_err(|m| ApiError::validation("prompt", m))?;
    let providers = &state.providers;
    let model = input
        .model
        .or_else(|| providers.default_model())
        .ok_or_else(|| ApiError::unavailable("no AI provider is configured"))?;
    let provider = providers
        .for_model(&model)
        .ok_or_else(|| ApiError::validation("model", "no provider of this server serves it"))?;
    let request = ChatRequest {
        model: model.clone(),
        messages: vec![ChatMessage::new(Role::User, input.prompt)],
        temperature: None,
        max_tokens: None,
    };
    // A prompt the provider refuses for what it holds is the caller's to fix (422); any
    // other failure is the provider's or this server's (502).
    let failed = |e: crate::providers::ProviderError| {
        if e.caused_by_request() {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "provider_rejected",
                e.to_string(),
            )
        } else {
            ApiError::new(StatusCode::BAD_GATEWAY, "ai_provider_failed", e.to_string())
        }
    };
    let mut stream = crate::providers::ModelProvider::stream(provider.as_ref(), request)
        .await
        .map_err(failed)?;
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item.map_err(failed)? {
            ReplyEvent::Delta(d) => {
                if text.len() < MAX_COMPLETION {
                    text.push_str(&d);
                }
            }
            ReplyEvent::Completed(c) => {
                return Ok(json!({
                    "text": text.chars().take(MAX_COMPLETION).collect::<String>(),
                    "model": model,
                    "finish_reason": c.finish_reason,
                }))
            }
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "ai_provider_failed",
        "the provider's reply ended without completing",
    ))
}

/// A proxied answer: status, content type and body.
struct Proxied {
    status: StatusCode,
    content_type: Option<String>,
    body: web::Bytes,
}

impl Proxied {
    fn response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(ct) = &self.content_type {
            res.insert_header((header::CONTENT_TYPE, ct.as_str()));
        }
        res.insert_header(("X-Served-By", "legacy"));
        res.body(self.body.clone())
    }
}

/// Sends the request on to the legacy backend, within the time and size limits.
async fn proxy(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    route: &str,
    body: &web::Bytes,
) -> Result<Proxied, ApiError> {
    let origin = state.legacy.origin.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "legacy_unavailable",
            format!("`{route}` is served by the legacy backend, and LEGACY_BACKEND_URL is not set"),
        )
    })?;
    let url = origin
        .join(&format!("api/{route}"), req.query_string())
        .map_err(|r| ApiError::validation("path", format!("the proxied URL {r}")))?;
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(ApiError::internal)?;
    let mut out = state.legacy.client.request(method, url);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = req.headers().get(&name).and_then(|v| v.to_str().ok()) {
            out = out.header(name.as_str(), v);
        }
    }
    out = out.header("x-forwarded-user", who.user_id.to_string());
    if let Some(org) = who.organization_id {
        out = out.header("x-forwarded-organization", org.to_string());
    }
    if !body.is_empty() {
        out = out.body(body.clone());
    }
    let gateway =
        |code: &'static str, message: String| ApiError::new(StatusCode::BAD_GATEWAY, code, message);
    let res = out.send().await.map_err(|e| {
        if e.is_timeout() {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "legacy_timeout",
                format!(
                    "the legacy backend did not answer within {} s",
                    state.config.legacy_timeout_secs
                ),
            )
        } else {
            gateway(
                "legacy_unreachable",
                format!("the legacy backend failed: {e}"),
            )
        }
    })?;
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let max = state.config.legacy_max_response_bytes;
    let mut buf = web::BytesMut::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "legacy_timeout",
                    "the legacy backend's answer did not arrive in time",
                )
            } else {
                gateway(
                    "legacy_unreachable",
                    format!("the legacy backend failed: {e}"),
                )
            }
        })?;
        if buf.len() + chunk.len() > max {
            return Err(gateway(
                "legacy_too_large",
                format!("the legacy backend's answer exceeds {max} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Proxied {
        status,
        content_type,
        body: buf.freeze(),
    })
}

/// Serves one request of a flagged route by its flag.
async fn serve(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    route: &'static str,
    body: web::Bytes,
) -> HttpResponse {
    let result = async {
        analysis::organization(&who)?;
        let mode = mode_of(&state, route).await?;
        let read_only = known(route).is_some_and(|(_, _, r)| r);
        Ok::<_, ApiError>(match mode {
            FlagMode::Legacy => {
                let res = proxy(&state, &req, &who, route, &body).await;
                count(
                    route,
                    "legacy",
                    res.as_ref().map_or(true, |p| p.status.is_server_error()),
                );
                res?.response()
            }
            FlagMode::Compare if read_only => {
                let old = proxy(&state, &req, &who, route, &body).await;
                count(
                    route,
                    "legacy",
                    old.as_ref().map_or(true, |p| p.status.is_server_error()),
                );
                let old = old?;
                let new = read_new(&state, &req, &who, route).await;
                let outcome = compare(&old, &new);
                metrics::counter!("ub_legacy_compare_total", "route" => route, "outcome" => outcome)
                    .increment(1);
                if outcome == "mismatch" {
                    tracing::warn!(route, "the legacy and new answers differ");
                }
                let mut res = old.response();
                if let Ok(v) = header::HeaderValue::from_str(outcome) {
                    res.headers_mut()
                        .insert(header::HeaderName::from_static("x-compare"), v);
                }
                res
            }
            FlagMode::Compare => {
                let res = proxy(&state, &req, &who, route, &body).await;
                count(
                    route,
                    "legacy",
                    res.as_ref().map_or(true, |p| p.status.is_server_error()),
                );
                res?.response()
            }
            FlagMode::New => {
                let mut res = into_response(serve_new(&state, &req, &who, route, &body).await);
                let error = res.status().is_server_error();
                count(route, "new", error);
                res.headers_mut().insert(
                    header::HeaderName::from_static("x-served-by"),
                    header::HeaderValue::from_static("new"),
                );
                watch(&state, route, error, who.organization_id).await;
                res
            }
        })
    }
    .await;
    into_response(result)
}

fn count(route: &'static str, served_by: &'static str, error: bool) {
    let outcome = if error { "error" } else { "ok" };
    metrics::counter!("ub_legacy_requests_total", "route" => route, "served_by" => served_by, "outcome" => outcome)
        .increment(1);
}

/// Whether the two answers agree: the same status class, and for JSON the same document.
fn compare(old: &Proxied, new: &Result<Value, ApiError>) -> &'static str {
    let new_status = match new {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    if old.status.as_u16() / 100 != new_status.as_u16() / 100 {
        return "mismatch";
    }
    let Ok(new) = new else {
        return "match";
    };
    match serde_json::from_slice::<Value>(&old.body) {
        Ok(old) if old == *new => "match",
        _ => "mismatch",
    }
}

/// Measures an answer served in `new` mode for `organization` and rolls the flag back
/// when the window's error rate exceeds the threshold, with failures from enough distinct
/// organizations.
async fn watch(state: &AppState, route: &'static str, error: bool, organization: Option<Uuid>) {
    let config = &state.config;
    let window = Duration::from_secs(config.flag_rollback_window_secs.max(1));
    let Window {
        requests,
        rate,
        failing_organizations,
    } = state.legacy.record(route, error, organization, window);
    metrics::gauge!("ub_flag_error_rate", "route" => route).set(rate);
    if requests < config.flag_rollback_min_requests.max(1)
        || rate <= config.flag_rollback_threshold
        || failing_organizations < config.flag_rollback_min_tenants.max(1)
    {
        return;
    }
    let reason = format!(
        "error rate {:.1}% over {} requests from {} failing organizations in {} s exceeded {:.1}%",
        rate * 100.0,
        requests,
        failing_organizations,
        window.as_secs(),
        config.flag_rollback_threshold * 100.0
    );
    let cmd = FlagCommand::Rollback {
        route: route.to_owned(),
        measured_in: FlagMode::New,
        error_rate: rate,
        requests,
        reason: reason.clone(),
        at: Utc::now(),
    };
    let meta = CommandMeta {
        frontend: Some("system".into()),
        ..CommandMeta::new()
    };
    match state
        .registries
        .flags
        .execute(flag_id(route), cmd, None, meta)
        .await
    {
        Ok(reply) if !reply.events.is_empty() => {
            state.legacy.reset(route);
            metrics::counter!("ub_flag_rollbacks_total", "route" => route).increment(1);
            tracing::warn!(route, rate, requests, "flag rolled back to legacy");
            // Read-your-writes for the next request of this process.
            let _ = state
                .progress
                .wait_for(
                    &state.pool,
                    crate::projections::flags::NAME,
                    reply.position,
                    Duration::from_secs(2),
                )
                .await;
        }
        // Another process rolled it back first, or someone set it otherwise meanwhile.
        Ok(_) => state.legacy.reset(route),
        Err(e) => tracing::warn!(route, error = %e, "flag rollback not recorded"),
    }
}

macro_rules! legacy_route {
    ($name:ident, $route:literal, $method:ident, $path:literal, $doc:literal, $($extra:tt)*) => {
        #[doc = $doc]
        #[utoipa::path(
            $method,
            path = $path,
            tag = "legacy",
            $($extra)*
            responses(
                (status = 200, description = "The answer of whichever backend the flag names (`X-Served-By`)", body = Object),
                (status = 503, description = "Flag on `legacy` and no LEGACY_BACKEND_URL", body = super::schema::ErrorBody),
            ),
        )]
        async fn $name(
            state: web::Data<AppState>,
            req: HttpRequest,
            who: Principal,
            body: web::Bytes,
        ) -> HttpResponse {
            serve(state, req, who, $route, body).await
        }
    };
}

legacy_route!(
    start_analysis,
    "start-analysis",
    post,
    "/api/start-analysis",
    "Legacy `start-analysis`: starts an analysis (new: as `POST /api/v1/analysis`).",
    request_body = analysis::StartAnalysis,
);
legacy_route!(
    process_updates,
    "process-updates",
    get,
    "/api/process-updates",
    "Legacy `process-updates`: an analysis's progress.",
    params(IdParams),
);
legacy_route!(
    process_results,
    "process-results",
    get,
    "/api/process-results",
    "Legacy `process-results`: an analysis's results and insights.",
    params(IdParams),
);
legacy_route!(
    save_insights,
    "saveInsights",
    post,
    "/api/saveInsights",
    "Legacy `saveInsights`: saves an insight on an analysis.",
    request_body = SaveInsightsBody,
);
legacy_route!(
    get_analysis,
    "getAnalysis",
    get,
    "/api/getAnalysis",
    "Legacy `getAnalysis`: an analysis (new: as `GET /api/v1/analysis/{id}`).",
    params(IdParams),
);
legacy_route!(
    openai,
    "openai",
    post,
    "/api/openai",
    "Legacy `openai`: one prompt through the AI provider layer, answered whole.",
    request_body = OpenAiBody,
);

#[derive(sqlx::FromRow, Serialize, utoipa::ToSchema)]
struct FlagChange {
    position: i64,
    from_mode: String,
    to_mode: String,
    /// `user` or `system` (an automatic rollback).
    actor: String,
    user_id: Option<Uuid>,
    reason: Option<String>,
    error_rate: Option<f64>,
    requests: Option<i64>,
    at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct FlagView {
    route: String,
    /// `legacy`, `new` or `compare`.
    mode: String,
    changed_at: Option<DateTime<Utc>>,
    /// The newest changes first (at most 20).
    history: Vec<FlagChange>,
    /// This process's window: requests served here in `new` mode and their error rate.
    requests_in_window: u64,
    error_rate: f64,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct FlagList {
    items: Vec<FlagView>,
    legacy_backend_configured: bool,
}

async fn flag_view(state: &AppState, route: &str) -> Result<FlagView, ApiError> {
    let current: Option<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT mode, changed_at FROM feature_flags WHERE route = $1")
            .bind(route)
            .fetch_optional(&state.pool)
            .await?;
    let history: Vec<FlagChange> = sqlx::query_as(
        "SELECT position, from_mode, to_mode, actor, user_id, reason, error_rate, requests, at \
         FROM feature_flag_changes WHERE route = $1 ORDER BY position DESC LIMIT $2",
    )
    .bind(route)
    .bind(HISTORY)
    .fetch_all(&state.pool)
    .await?;
    let window = Duration::from_secs(state.config.flag_rollback_window_secs.max(1));
    let (requests_in_window, error_rate) = state.legacy.measured(route, window);
    Ok(FlagView {
        route: route.to_owned(),
        mode: current
            .as_ref()
            .map_or(FlagMode::Legacy.as_str().to_owned(), |c| c.0.clone()),
        changed_at: current.map(|c| c.1),
        history,
        requests_in_window,
        error_rate,
    })
}

/// Every flagged legacy route: its mode, its recent history and this process's error
/// window. Operators only (the account-wide admin role): flags act on every tenant.
#[utoipa::path(
    get,
    path = "/api/v1/system/flags",
    tag = "legacy",
    responses((status = 200, description = "The flags", body = FlagList)),
)]
async fn list_flags(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    super::admin::require_operator(&state, &who).await?;
    let mut items = Vec::with_capacity(ROUTES.len());
    for (route, _, _) in ROUTES {
        items.push(flag_view(&state, route).await?);
    }
    Ok(HttpResponse::Ok().json(json!({
        "items": items,
        "legacy_backend_configured": state.legacy.origin.is_some(),
    })))
}

/// A flag's new mode.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetFlag {
    /// `legacy`, `new` or `compare`.
    #[schema(pattern = "^(legacy|new|compare)$")]
    mode: String,
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// Sets a flag's mode (recorded as an event with the operator and the reason; setting the
/// current mode records nothing). Operators only.
#[utoipa::path(
    put,
    path = "/api/v1/system/flags/{route}",
    tag = "legacy",
    request_body = SetFlag,
    params(("route" = String, Path, description = "The legacy route, e.g. `getAnalysis`")),
    responses((status = 200, description = "The flag", body = FlagView)),
)]
async fn set_flag(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let operator = super::admin::require_operator(&state, &who).await?;
    let (route, _, _) = known(&path).ok_or_else(|| {
        ApiError::not_found(format!("`{}` is not a flagged legacy route", path.as_str()))
    })?;
    let input: SetFlag = parse_json(&body)?;
    let mode = FlagMode::parse(&input.mode)
        .ok_or_else(|| ApiError::validation("mode", "must be legacy, new or compare"))?;
    let meta = super::command::meta(&req, &who)?;
    let cmd = FlagCommand::Set {
        route: route.to_owned(),
        mode,
        user_id: operator,
        reason: input.reason,
        at: Utc::now(),
    };
    let reply = state
        .registries
        .flags
        .execute(flag_id(route), cmd, None, meta)
        .await
        .map_err(|e| {
            command_error(e, |FlagError::Invalid { field, message }| {
                ApiError::validation(&field, message)
            })
        })?;
    if !reply.events.is_empty() {
        state.legacy.reset(route);
    }
    super::command::wait_for_projection(
        &state,
        crate::projections::flags::NAME,
        Some(reply.position),
    )
    .await?;
    Ok(HttpResponse::Ok().json(flag_view(&state, route).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_the_distinct_organizations_of_failed_requests() {
        let legacy = Legacy::new(&crate::config::Config::default()).unwrap();
        let window = Duration::from_secs(60);
        let (a, b) = (Some(Uuid::new_v4()), Some(Uuid::new_v4()));
        for _ in 0..10 {
            legacy.record("openai", true, a, window);
        }
        let w = legacy.record("openai", false, b, window);
        assert_eq!(w.requests, 11);
        assert_eq!(w.failing_organizations, 1, "b's request succeeded");
        let w = legacy.record("openai", true, b, window);
        assert_eq!(w.failing_organizations, 2);
        assert!((w.rate - 11.0 / 12.0).abs() < 1e-9);
        // Another route has its own window.
        let w = legacy.record("getAnalysis", true, a, window);
        assert_eq!((w.requests, w.failing_organizations), (1, 1));
        legacy.reset("openai");
        assert_eq!(legacy.measured("openai", window), (0, 0.0));
    }
}
