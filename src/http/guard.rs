//! Who is calling: bearer tokens, frontend access, roles and rate limits.
//!
//! Every route except health, metrics, info and the auth endpoints needs a valid access
//! token. Tenant data additionally needs `X-Frontend-Source` naming the frontend of the
//! route group, enabled for the caller's organization; otherwise 403
//! `frontend_access_denied`. Data of another organization answers 404, never 403, so ids
//! do not leak.
//!
//! Server-Sent-Events routes take the caller through [`StreamCaller`] instead of
//! [`Principal`]: a browser's `EventSource` cannot send headers, so there (and only there)
//! the token may come as the `access_token` query parameter and the frontend as `frontend`.
//!
//! The token proves who is calling; what the caller may do is read per request from the
//! access view (`crate::identity::access`), so a removed member, a demoted one or a disabled frontend
//! is refused at once, although the token is still valid.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use dashmap::DashMap;
use futures_util::future::LocalBoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use universal_events::identity::{Frontend, Role};
use uuid::Uuid;

use super::ApiError;
use crate::identity::access::{Denied, Rights};
use crate::identity::auth::TokenKeys;
use crate::state::AppState;

/// Token keys, ended sessions and rate limiters.
pub struct AuthState {
    pub keys: TokenKeys,
    /// Sessions that ended (logout, reuse, password change): their access tokens are refused
    /// before they expire. Fed by this process's commands at once, and by the log through
    /// the access view (`crate::identity::access`), which shares this set.
    pub ended_sessions: Arc<DashMap<Uuid, ()>>,
    pub limits: Option<Limits>,
}

pub struct Limits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<Uuid>,
}

impl Limits {
    pub fn new(per_ip_per_minute: u32, per_user_per_minute: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("not zero"));
        Self {
            per_ip: RateLimiter::keyed(quota(per_ip_per_minute)),
            per_user: RateLimiter::keyed(quota(per_user_per_minute)),
        }
    }
}

fn wait_secs(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    not_until
        .wait_time_from(DefaultClock::default().now())
        .as_secs()
        .max(1)
}

impl AuthState {
    /// The per-IP limit of the auth endpoints.
    pub fn limit_ip(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let (Some(limits), Some(peer)) = (&self.limits, req.peer_addr()) else {
            return Ok(());
        };
        limits
            .per_ip
            .check_key(&peer.ip())
            .map_err(|n| ApiError::rate_limited(wait_secs(n)))
    }

    fn limit_user(&self, user: Uuid) -> Result<(), ApiError> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        limits
            .per_user
            .check_key(&user)
            .map_err(|n| ApiError::rate_limited(wait_secs(n)))
    }
}

/// An authenticated caller, with the rights it has *now* (see [`crate::identity::access`]): role and
/// frontends come from the access view, not from the token's claims.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub role: Option<Role>,
    pub roles: Vec<Role>,
    pub frontends: Vec<Frontend>,
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthenticated("unauthenticated", "a Bearer token is required")
        })?;
    bearer_of(header)
}

fn bearer_of(header: &actix_web::http::header::HeaderValue) -> Result<&str, ApiError> {
    header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated("unauthenticated", "Authorization must be `Bearer <token>`")
        })
}

fn session_ended() -> ApiError {
    ApiError::unauthenticated("session_ended", "this session has ended; log in again")
}

fn not_member() -> ApiError {
    ApiError::unauthenticated(
        "membership_revoked",
        "you are no longer a member of this token's organization; log in again",
    )
}

/// Validates an access token (signature, expiry, live session, user rate limit) and reads
/// the caller's current rights from the access view. The claims' role and frontends only
/// tell whether the view may be behind: when the view would grant less than the token says,
/// it first catches up with the log, so that a refusal never rests on a stale view.
pub async fn principal_from_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let claims = state.auth.keys.verify(token).map_err(|e| {
        let message = match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the access token has expired",
            _ => "the access token is not valid",
        };
        ApiError::unauthenticated("invalid_token", message)
    })?;
    if state.access.session_ended(claims.sid) {
        return Err(session_ended());
    }
    state.auth.limit_user(claims.sub)?;
    let mut principal = Principal {
        user_id: claims.sub,
        session_id: claims.sid,
        organization_id: claims.org,
        role: claims.role,
        roles: claims.roles,
        frontends: claims.frontends,
    };
    let Some(org) = claims.org else {
        return Ok(principal);
    };
    let narrower = |r: &Result<Rights, Denied>| match r {
        Ok(now) => {
            Some(now.role) != principal.role
                || principal
                    .frontends
                    .iter()
                    .any(|f| !now.frontends.contains(f))
        }
        Err(_) => true,
    };
    let mut rights = state
        .access
        .rights(principal.user_id, principal.session_id, org);
    if narrower(&rights) {
        state
            .access
            .sync(state.store.as_ref())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        rights = state
            .access
            .rights(principal.user_id, principal.session_id, org);
    }
    match rights {
        Ok(now) => {
            principal.role = Some(now.role);
            principal.frontends = now.frontends;
            Ok(principal)
        }
        Err(Denied::SessionEnded) => Err(session_ended()),
        Err(Denied::NotMember) => Err(not_member()),
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal("application state missing"))?;
            let token = bearer(&req)?;
            principal_from_token(state, token).await
        })
    }
}

impl Principal {
    /// The caller's rights as they are now, for a socket that keeps a principal open: `Err`
    /// when the session has ended or the caller left the organization.
    pub fn refreshed(&self, state: &AppState) -> Result<Principal, ApiError> {
        let Some(org) = self.organization_id else {
            return match state.access.session_ended(self.session_id) {
                true => Err(session_ended()),
                false => Ok(self.clone()),
            };
        };
        match state.access.rights(self.user_id, self.session_id, org) {
            Ok(now) => Ok(Principal {
                role: Some(now.role),
                frontends: now.frontends,
                ..self.clone()
            }),
            Err(Denied::SessionEnded) => Err(session_ended()),
            Err(Denied::NotMember) => Err(not_member()),
        }
    }

    /// The caller's organization, if `X-Frontend-Source` names `frontend` and the
    /// organization has it enabled.
    pub fn frontend(&self, req: &HttpRequest, frontend: Frontend) -> Result<Uuid, ApiError> {
        self.frontend_named(frontend_header(req), frontend, "send X-Frontend-Source")
    }

    /// The caller's organization, if `source` (the frontend the client names) is `frontend`
    /// and the organization has it enabled; `missing` says what to send when it is `None`.
    fn frontend_named(
        &self,
        source: Option<&str>,
        frontend: Frontend,
        missing: &str,
    ) -> Result<Uuid, ApiError> {
        let denied = |why: String| {
            ApiError::forbidden(
                "frontend_access_denied",
                format!("Frontend access denied: {why}"),
            )
        };
        let source = source.ok_or_else(|| denied(missing.into()))?;
        let named = Frontend::parse(&source.to_ascii_lowercase())
            .ok_or_else(|| denied(format!("`{source}` is not a known frontend")))?;
        if named != frontend {
            return Err(denied(format!(
                "these routes belong to {}, not {}",
                frontend.as_str(),
                named.as_str()
            )));
        }
        let org = self.organization_id.ok_or_else(|| {
            denied("the session belongs to no organization; log in to one".into())
        })?;
        if !self.frontends.contains(&named) {
            return Err(denied(format!(
                "{} is not enabled for your organization",
                named.as_str()
            )));
        }
        Ok(org)
    }

    /// Viewers read; everyone else may also command.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self.role {
            Some(r) if r.can_write() => Ok(()),
            _ => Err(ApiError::forbidden(
                "forbidden",
                "your role in this organization may only read",
            )),
        }
    }

    /// Organization admins only.
    pub fn require_admin(&self) -> Result<Uuid, ApiError> {
        match (self.role, self.organization_id) {
            (Some(Role::Admin), Some(org)) => Ok(org),
            _ => Err(ApiError::forbidden(
                "forbidden",
                "only an organization admin may do this",
            )),
        }
    }
}

fn frontend_header(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("x-frontend-source")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// What stands in for the headers on a Server-Sent-Events route.
#[derive(Debug, Default, serde::Deserialize)]
struct StreamParams {
    access_token: Option<String>,
    frontend: Option<String>,
}

/// The caller of a Server-Sent-Events route (`text/event-stream`). A browser's
/// `EventSource` sends no headers of its own choosing, so here, and only on these routes,
/// the access token may come as the `access_token` query parameter instead of
/// `Authorization: Bearer`, and the frontend as `frontend` instead of `X-Frontend-Source`.
/// A header, when present, wins over its parameter (a malformed `Authorization` is refused,
/// not passed over). The token is checked exactly as a bearer token is; no middleware logs
/// the request target or labels a metric with it (see `traffic` and `contract`).
#[derive(Debug, Clone)]
pub struct StreamCaller {
    pub principal: Principal,
    /// The `frontend` query parameter, if given.
    frontend_param: Option<String>,
}

impl std::ops::Deref for StreamCaller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl FromRequest for StreamCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal("application state missing"))?;
            let params = web::Query::<StreamParams>::from_query(req.query_string())
                .map(web::Query::into_inner)
                .map_err(|_| {
                    ApiError::bad_request(
                        "the query parameters `access_token` and `frontend` may each be given once",
                    )
                })?;
            let token = match req.headers().get(actix_web::http::header::AUTHORIZATION) {
                Some(header) => bearer_of(header)?,
                None => params
                    .access_token
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        ApiError::unauthenticated(
                            "unauthenticated",
                            "a Bearer token (or the access_token query parameter) is required",
                        )
                    })?,
            };
            let principal = principal_from_token(state, token).await?;
            Ok(StreamCaller {
                principal,
                frontend_param: params.frontend,
            })
        })
    }
}

impl StreamCaller {
    /// [`Principal::frontend`], with the `frontend` query parameter standing in for a
    /// missing `X-Frontend-Source`.
    pub fn frontend(&self, req: &HttpRequest, frontend: Frontend) -> Result<Uuid, ApiError> {
        let source = frontend_header(req).or(self.frontend_param.as_deref().map(str::trim));
        self.principal.frontend_named(
            source,
            frontend,
            "send X-Frontend-Source (or the frontend query parameter)",
        )
    }
}
