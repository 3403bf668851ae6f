//! FlowMind's AI routes (`/api/v1/ai`): the models of the configured providers and the state
//! of each provider's circuit breaker. Like every tenant route group they need a token and
//! `X-Frontend-Source: flowmind` with FlowMind enabled for the caller's organization; with
//! `AI_MODELS_ENABLED=false` the group answers 404 `feature_disabled`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use universal_events::identity::Frontend;

use super::guard::Principal;
use super::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let enabled = actix_web::guard::fn_guard(|ctx| {
        ctx.app_data::<web::Data<AppState>>()
            .is_none_or(|s| s.config.ai_models_enabled)
    });
    cfg.service(
        web::scope("/ai")
            .guard(enabled)
            .route("/models", web::get().to(models))
            .route("/providers", web::get().to(providers))
            .configure(super::chat::configure),
    )
    .service(web::scope("/ai").default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::new(
            StatusCode::NOT_FOUND,
            "feature_disabled",
            "AI models are disabled on this server",
        ))
    })));
}

/// The models clients may ask for, from every configured provider; `default_model` is the
/// one used when a request names none.
#[utoipa::path(
    get,
    path = "/api/v1/ai/models",
    tag = "ai",
    params(super::schema::FlowmindHeaders),
    responses((status = 200, description = "The models of the configured providers", body = super::schema::AiModels)),
)]
pub(crate) async fn models(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
) -> Result<HttpResponse, ApiError> {
    who.frontend(&req, Frontend::Flowmind)?;
    let default = state.providers.default_model();
    let items: Vec<_> = state
        .providers
        .models()
        .into_iter()
        .map(|m| {
            let is_default = default.as_deref() == Some(m.id.as_str());
            json!({ "id": m.id, "provider": m.provider, "default": is_default })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "default_model": default })))
}

/// Each provider's circuit breaker: closed, open or half-open, the failures since the last
/// success, and when an open breaker lets the next probe through.
#[utoipa::path(
    get,
    path = "/api/v1/ai/providers",
    tag = "ai",
    params(super::schema::FlowmindHeaders),
    responses((status = 200, description = "The breaker of each configured provider", body = super::schema::ProviderStates)),
)]
pub(crate) async fn providers(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
) -> Result<HttpResponse, ApiError> {
    who.frontend(&req, Frontend::Flowmind)?;
    Ok(HttpResponse::Ok().json(json!({ "items": state.providers.breaker_states() })))
}
