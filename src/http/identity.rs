//! Identity: sign-up, login, token refresh and logout; the caller's profile; organizations,
//! their members and their frontends.
//!
//! E-mail uniqueness: an address is claimed by appending `EmailClaimed` to the stream
//! `email-<uuid v5 of the lowercase address>` with expected version "no stream". The store
//! serializes appends under one lock, so of two concurrent sign-ups — in any letter case, in
//! any number of server processes — exactly one claim is written and the other gets 409.
//! The same stream answers "which user has this address" at login, consistently, without
//! waiting for a read model. A claim whose user was never written (a crash between the two
//! appends) may be taken over after a minute.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use universal_events::identity::{EmailClaimed, EmailEvent, EndReason, Frontend, Role, UserEvent};
use universal_events::EventFamily;
use uuid::Uuid;

use super::command::{anonymous_meta, idempotent, meta, parse_json, wait_for_projection, Answer};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::organization::{OrgAction, OrgCommand, OrgError};
use crate::actors::user::{User, UserCommand, UserError};
use crate::actors::CommandMeta;
use crate::identity::auth;
use crate::state::AppState;
use crate::store::{AppendError, Direction, ExpectedVersion, NewEvent};

const NAMESPACE: Uuid = Uuid::from_u128(0x2d0e_8a51_7c43_4b8e_9f10_6a2b_c3d4_e5f6);
/// A claim without a user may be taken over after this long.
const ABANDONED_CLAIM_SECS: i64 = 60;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/auth")
            .route("/signup", web::post().to(signup))
            .route("/login", web::post().to(login))
            .route("/google", web::post().to(google))
            .route("/refresh", web::post().to(refresh))
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me)),
    )
    .route("/users/me", web::patch().to(update_me))
    .route("/users/me", web::get().to(me))
    .route("/users/me", web::delete().to(deactivate_me))
    .route("/users/me/password", web::put().to(change_password))
    .service(
        web::scope("/organizations")
            .route("", web::post().to(create_org))
            .route("", web::get().to(list_orgs))
            .route("/{id}", web::get().to(get_org))
            .route("/{id}", web::patch().to(rename_org))
            .route("/{id}", web::put().to(update_org))
            .route("/{id}/members", web::get().to(list_members))
            .route("/{id}/members", web::post().to(set_member))
            .route("/{id}/members/{user_id}", web::delete().to(remove_member))
            .route("/{id}/frontends", web::get().to(get_frontends))
            .route("/{id}/frontends", web::put().to(set_frontend)),
    );
}

pub fn email_stream(email_lower: &str) -> String {
    format!("email-{}", Uuid::new_v5(&NAMESPACE, email_lower.as_bytes()))
}

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::NotFound => ApiError::not_found("user not found"),
        UserError::AlreadyRegistered => ApiError::conflict("user already exists"),
        UserError::Deactivated => {
            ApiError::forbidden("account_deactivated", "the account is deactivated")
        }
        UserError::Invalid { field, message } => ApiError::validation(field, message),
        UserError::InvalidSession => {
            ApiError::unauthenticated("invalid_refresh_token", "the refresh token is not valid")
        }
    }
}

/// The current version and state of a user (version 0: no such user).
async fn load_user(state: &AppState, user_id: Uuid) -> Result<(i64, User), ApiError> {
    state
        .registries
        .users
        .inspect(user_id)
        .await
        .map_err(|e| command_error(e, user_error))
}

fn org_error(e: OrgError) -> ApiError {
    match e {
        OrgError::NotFound => ApiError::not_found("organization not found"),
        OrgError::AlreadyExists => ApiError::conflict("organization already exists"),
        OrgError::NotAdmin => {
            ApiError::forbidden("forbidden", "only an organization admin may do this")
        }
        OrgError::LastAdmin => ApiError::conflict("the last admin cannot be removed or demoted"),
        OrgError::NotMember => ApiError::not_found("member not found"),
        OrgError::Invalid { field, message } => ApiError::validation(field, message),
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthenticated("invalid_credentials", "wrong e-mail or password")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    web::block(f).await.map_err(ApiError::internal)
}

/// The user that holds an e-mail address, read from its claim stream.
async fn user_of_email(
    state: &AppState,
    email_lower: &str,
) -> Result<Option<(Uuid, i64, chrono::DateTime<Utc>)>, ApiError> {
    let last = state
        .store
        .read_stream(&email_stream(email_lower), i64::MAX, Direction::Backward, 1)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let Some(e) = last.first() else {
        return Ok(None);
    };
    match EmailEvent::decode_ref(&e.event_type, e.schema_version, &e.data) {
        Ok(EmailEvent::EmailClaimed(c)) => Ok(Some((c.user_id, e.version, e.recorded_at))),
        Err(err) => Err(ApiError::internal(err)),
    }
}

/// Metadata of the unauthenticated auth routes, which ignore `Idempotency-Key` (see
/// [`anonymous_meta`]).
fn meta_for(req: &HttpRequest, user: Option<Uuid>, org: Option<Uuid>) -> CommandMeta {
    let mut m = anonymous_meta(req);
    m.user_id = user;
    m.organization_id = org;
    m
}

/// Claims, then registers. See the module comment.
async fn claim_email(
    state: &AppState,
    email: &str,
    email_lower: &str,
    user_id: Uuid,
) -> Result<(), ApiError> {
    let stream = email_stream(email_lower);
    let event = EmailEvent::EmailClaimed(EmailClaimed {
        user_id,
        email: email.to_owned(),
    });
    let new = || NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event.event_type().to_owned(),
        schema_version: 1,
        data: event.to_data(),
        metadata: json!({ "user_id": user_id }),
    };
    let taken = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "email_taken",
            "this e-mail address is already registered",
        )
    };
    match state
        .store
        .append(&stream, ExpectedVersion::NoStream, vec![new()])
        .await
    {
        Ok(_) => Ok(()),
        Err(AppendError::WrongVersion { .. }) => {
            let Some((holder, version, at)) = user_of_email(state, email_lower).await? else {
                return Err(taken());
            };
            let (user_version, _) = load_user(state, holder).await?;
            let abandoned =
                user_version == 0 && (Utc::now() - at).num_seconds() > ABANDONED_CLAIM_SECS;
            if !abandoned {
                return Err(taken());
            }
            state
                .store
                .append(&stream, ExpectedVersion::Exact(version), vec![new()])
                .await
                .map(|_| ())
                .map_err(|_| taken())
        }
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// Membership and enabled frontends, from the read models once they have caught up with
/// everything written before this call.
async fn membership(
    state: &AppState,
    user: Uuid,
    org: Option<Uuid>,
) -> Result<Option<(Uuid, Role, Vec<Frontend>)>, ApiError> {
    if let Ok(head) = state.store.head_position().await {
        let _ = state
            .progress
            .wait_for(&state.pool, "identity", head, Duration::from_secs(5))
            .await;
    }
    let row: Option<(Uuid, String, Vec<String>)> = sqlx::query_as(
        "SELECT m.organization_id, m.role, o.frontends FROM memberships m \
         JOIN organizations o ON o.id = m.organization_id \
         WHERE m.user_id = $1 AND ($2::uuid IS NULL OR m.organization_id = $2) \
         ORDER BY m.joined_position LIMIT 1",
    )
    .bind(user)
    .bind(org)
    .fetch_optional(&state.pool)
    .await?;
    Ok(row.map(|(id, role, frontends)| {
        let role = match role.as_str() {
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => Role::Viewer,
        };
        let frontends = frontends
            .iter()
            .filter_map(|f| Frontend::parse(f))
            .collect();
        (id, role, frontends)
    }))
}

/// Access + refresh token answer for a session.
async fn tokens(
    state: &AppState,
    user: &User,
    user_id: Uuid,
    session_id: Uuid,
    org: Option<Uuid>,
    refresh_token: String,
) -> Result<Value, ApiError> {
    let member = match org {
        Some(o) => membership(state, user_id, Some(o)).await?,
        None => None,
    };
    let claims = auth::Claims {
        sub: user_id,
        sid: session_id,
        org: member.as_ref().map(|m| m.0),
        role: member.as_ref().map(|m| m.1),
        roles: user.roles.iter().copied().collect(),
        frontends: member.as_ref().map(|m| m.2.clone()).unwrap_or_default(),
        iat: 0,
        exp: 0,
    };
    let (access, exp) = state
        .auth
        .keys
        .issue(claims.clone(), Utc::now())
        .map_err(ApiError::internal)?;
    Ok(json!({
        "access_token": access,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_at": exp,
        "expires_in": state.auth.keys.access_ttl.as_secs(),
        "user": { "id": user_id, "email": user.email, "display_name": user.display_name },
        "organization_id": claims.org,
        "role": claims.role,
        "frontends": claims.frontends,
    }))
}

async fn start_session(
    state: &AppState,
    req: &HttpRequest,
    user_id: Uuid,
    expected: i64,
    org: Option<Uuid>,
) -> Result<Value, ApiError> {
    let session_id = Uuid::new_v4();
    let (refresh_token, refresh_hash) = auth::new_refresh_token(user_id, session_id);
    let now = Utc::now();
    let refresh_ttl =
        chrono::Duration::from_std(state.auth.keys.refresh_ttl).map_err(ApiError::internal)?;
    state
        .registries
        .users
        .execute(
            user_id,
            UserCommand::StartSession {
                session_id,
                organization_id: org,
                refresh_hash,
                expires_at: now + refresh_ttl,
                at: now,
            },
            Some(expected),
            meta_for(req, Some(user_id), org),
        )
        .await
        .map_err(|e| command_error(e, user_error))?;
    let (_, user) = load_user(state, user_id).await?;
    tokens(state, &user, user_id, session_id, org, refresh_token).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Signup {
    #[schema(max_length = 254, example = "ada@example.org")]
    email: String,
    /// At least 10 characters mixing three of lowercase, uppercase, digits and symbols, not
    /// containing the e-mail's name.
    #[schema(min_length = 10, max_length = 128)]
    password: String,
    /// The person's name; required unless `name` gives it.
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000]*$")]
    display_name: Option<String>,
    /// The same as `display_name`, as FluxStudio's signup form sends it. When both are given
    /// they must be the same name (after trimming), otherwise 422 `validation_failed` on
    /// `name`.
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000]*$")]
    name: Option<String>,
}

impl Signup {
    /// The display name, from `display_name` or its alias `name`.
    fn display_name(&self) -> Result<String, ApiError> {
        match (&self.display_name, &self.name) {
            (Some(d), Some(n)) if d.trim() != n.trim() => Err(ApiError::validation(
                "name",
                "`name` and `display_name` name the same thing and differ; send one of them",
            )),
            (Some(d), _) => Ok(d.trim().to_owned()),
            (None, Some(n)) => Ok(n.trim().to_owned()),
            (None, None) => Err(ApiError::validation(
                "display_name",
                "is required (or `name`, its alias)",
            )),
        }
    }
}

/// Creates an account (an e-mail is unique in any letter case: 409 `email_taken`) and logs in.
#[utoipa::path(
    post,
    path = "/api/v1/auth/signup",
    tag = "identity",
    security(()),
    request_body = Signup,
    responses(
        (status = 201, description = "Signed up and logged in", body = super::schema::Tokens),
    ),
)]
async fn signup(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    state.auth.limit_ip(&req)?;
    let input: Signup = parse_json(&body)?;
    let (email, email_lower) =
        auth::normalize_email(&input.email).map_err(|m| ApiError::validation("email", m))?;
    if let Some(why) = auth::password_weakness(&input.password, &email) {
        return Err(ApiError::validation("password", why));
    }
    let name = input.display_name()?;
    let field = match input.display_name {
        Some(_) => "display_name",
        None => "name",
    };
    // Checked before the address is claimed, so that a refused signup leaves it free.
    crate::actors::validate::name(&name, crate::actors::user::MAX_DISPLAY_NAME)
        .map_err(|m| ApiError::validation(field, m))?;
    let password = input.password;
    let password_hash = blocking(move || auth::hash_password(&password))
        .await?
        .map_err(ApiError::internal)?;
    let user_id = Uuid::new_v4();
    claim_email(&state, &email, &email_lower, user_id).await?;
    let reply = state
        .registries
        .users
        .execute(
            user_id,
            UserCommand::Register {
                user_id,
                email: email.clone(),
                display_name: name,
                password_hash,
                at: Utc::now(),
            },
            None,
            meta_for(&req, Some(user_id), None),
        )
        .await
        .map_err(|e| command_error(e, user_error))?;
    let mut body = start_session(&state, &req, user_id, reply.version, None).await?;
    body["position"] = json!(reply.position);
    Ok(HttpResponse::Created().json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
    /// The organization to log in to (default: the first one).
    organization_id: Option<Uuid>,
}

/// Logs in; a wrong e-mail or password answers 401 `invalid_credentials` either way.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "identity",
    security(()),
    request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = super::schema::Tokens),
        (status = 401, description = "`invalid_credentials`: wrong e-mail or password", body = super::schema::ErrorBody),
    ),
)]
async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    state.auth.limit_ip(&req)?;
    let input: Login = parse_json(&body)?;
    let found = match auth::normalize_email(&input.email) {
        Ok((_, lower)) => user_of_email(&state, &lower).await?,
        Err(_) => None,
    };
    let account = match found {
        Some((user_id, _, _)) => {
            let (version, user) = load_user(&state, user_id).await?;
            (version > 0).then_some((user_id, version, user))
        }
        None => None,
    };
    // The same argon2 work whether or not the account exists.
    let hash = account.as_ref().map_or_else(
        || auth::decoy_hash().to_owned(),
        |(_, _, u)| u.password_hash.clone(),
    );
    let password = input.password;
    let password_again = password.clone();
    let ok = blocking(move || auth::verify_password(&password, &hash)).await?;
    let Some((user_id, version, user)) = account.filter(|_| ok) else {
        return Err(invalid_credentials());
    };
    if !user.active {
        return Err(invalid_credentials());
    }
    let version = if auth::is_legacy_hash(&user.password_hash) {
        rehash(
            &state,
            &req,
            user_id,
            version,
            user.password_hash,
            password_again,
        )
        .await?
    } else {
        version
    };
    let org = match membership(&state, user_id, input.organization_id).await? {
        Some((org, _, _)) => Some(org),
        None if input.organization_id.is_some() => {
            return Err(ApiError::not_found("organization not found"))
        }
        None => None,
    };
    let body = start_session(&state, &req, user_id, version, org).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Replaces an imported bcrypt hash with argon2id of the password that just matched it, as a
/// `PasswordRehashed` event; answers the user's version after it.
async fn rehash(
    state: &AppState,
    req: &HttpRequest,
    user_id: Uuid,
    version: i64,
    replaces: String,
    password: String,
) -> Result<i64, ApiError> {
    let password_hash = blocking(move || auth::hash_password(&password))
        .await?
        .map_err(ApiError::internal)?;
    let reply = state
        .registries
        .users
        .execute(
            user_id,
            UserCommand::RehashPassword {
                replaces,
                password_hash,
                at: Utc::now(),
            },
            None,
            meta_for(req, Some(user_id), None),
        )
        .await
        .map_err(|e| command_error(e, user_error))?;
    Ok(reply.version.max(version))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

/// Rotates a refresh token; a reused one revokes the session (401 `refresh_token_reused`).
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "identity",
    security(()),
    request_body = RefreshBody,
    responses(
        (status = 200, description = "New tokens; the refresh token rotates", body = super::schema::Tokens),
        (status = 401, description = "`invalid_refresh_token`, or `refresh_token_reused` (the session is revoked)", body = super::schema::ErrorBody),
    ),
)]
async fn refresh(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    state.auth.limit_ip(&req)?;
    let input: RefreshBody = parse_json(&body)?;
    let invalid =
        || ApiError::unauthenticated("invalid_refresh_token", "the refresh token is not valid");
    let (user_id, session_id) =
        auth::parse_refresh_token(&input.refresh_token).ok_or_else(invalid)?;
    let (_, user) = load_user(&state, user_id).await?;
    let org = user
        .sessions
        .get(&session_id)
        .ok_or_else(invalid)?
        .organization_id;
    let (new_token, new_hash) = auth::new_refresh_token(user_id, session_id);
    let now = Utc::now();
    let refresh_ttl =
        chrono::Duration::from_std(state.auth.keys.refresh_ttl).map_err(ApiError::internal)?;
    let reply = state
        .registries
        .users
        .execute(
            user_id,
            UserCommand::Refresh {
                session_id,
                presented_hash: auth::hash_token(&input.refresh_token),
                new_hash,
                expires_at: now + refresh_ttl,
                at: now,
            },
            None,
            meta_for(&req, Some(user_id), org),
        )
        .await
        .map_err(|e| command_error(e, user_error))?;
    let reused = reply.events.iter().any(
        |e| matches!(e, UserEvent::SessionEnded(s) if s.reason == EndReason::RefreshTokenReuse),
    );
    if reused {
        state.auth.ended_sessions.insert(session_id, ());
        return Err(ApiError::unauthenticated(
            "refresh_token_reused",
            "this refresh token was already used; the session has been revoked",
        ));
    }
    let (_, user) = load_user(&state, user_id).await?;
    let body = tokens(&state, &user, user_id, session_id, org, new_token).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Ends the session of the bearer token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "identity",
    params(super::schema::IdempotencyHeader),
    responses(
        (status = 204, description = "The session has ended"),
    ),
)]
async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
) -> Result<HttpResponse, ApiError> {
    idempotent(&state.pool, &req, &who, b"", || async {
        let reply = state
            .registries
            .users
            .execute(
                who.user_id,
                UserCommand::EndSession {
                    session_id: who.session_id,
                    at: Utc::now(),
                },
                None,
                meta(&req, &who)?,
            )
            .await
            .map_err(|e| command_error(e, user_error))?;
        state.auth.ended_sessions.insert(who.session_id, ());
        Ok(Answer::of(StatusCode::NO_CONTENT, who.user_id, &reply))
    })
    .await
}

/// The caller's profile, organizations, role and frontends.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "identity",
    responses(
        (status = 200, description = "The caller; `ETag` is the account version", body = super::schema::Me),
    ),
)]
async fn me(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    let (version, user) = load_user(&state, who.user_id).await?;
    if version == 0 {
        return Err(ApiError::not_found("user not found"));
    }
    let orgs: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT o.id, o.name, m.role FROM memberships m JOIN organizations o \
         ON o.id = m.organization_id WHERE m.user_id = $1 ORDER BY m.joined_position",
    )
    .bind(who.user_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::ETAG, format!("\"{version}\"")))
        .json(json!({
            "id": who.user_id,
            "email": user.email,
            "display_name": user.display_name,
            "roles": user.roles,
            "active": user.active,
            "version": version,
            "organization_id": who.organization_id,
            "role": who.role,
            "frontends": who.frontends,
            "organizations": orgs.into_iter().map(|(id, name, role)| json!({"id": id, "name": name, "role": role})).collect::<Vec<_>>(),
        })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateMe {
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000]*$")]
    display_name: String,
}

/// Changes the caller's display name.
#[utoipa::path(
    patch,
    path = "/api/v1/users/me",
    tag = "identity",
    request_body = UpdateMe,
    params(super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Updated", body = super::schema::CommandResult),
    ),
)]
async fn update_me(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: UpdateMe = parse_json(&body)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let reply = state
            .registries
            .users
            .execute(
                who.user_id,
                UserCommand::UpdateProfile {
                    display_name: input.display_name,
                },
                super::command::if_match(&req)?,
                meta(&req, &who)?,
            )
            .await
            .map_err(|e| command_error(e, user_error))?;
        Ok(Answer::of(StatusCode::OK, who.user_id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: String,
    #[schema(min_length = 10, max_length = 128)]
    new_password: String,
}

/// Changes the password (403 `wrong_password` if the current one is wrong) and ends every session.
#[utoipa::path(
    put,
    path = "/api/v1/users/me/password",
    tag = "identity",
    request_body = ChangePassword,
    params(super::schema::IdempotencyHeader),
    responses(
        (status = 200, description = "Changed; every session has ended", body = super::schema::PasswordChanged),
    ),
)]
async fn change_password(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: ChangePassword = parse_json(&body)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let command_meta = meta(&req, &who)?;
        let (version, user) = load_user(&state, who.user_id).await?;
        if let Some(why) = auth::password_weakness(&input.new_password, &user.email) {
            return Err(ApiError::validation("new_password", why));
        }
        let (current, new, hash) = (
            input.current_password,
            input.new_password.clone(),
            user.password_hash.clone(),
        );
        let retry = command_meta.replayable;
        // A keyed retry of a change that went through finds the new password in place; it
        // then goes on, and the user's actor answers with the stored change.
        let confirmed = blocking(move || {
            auth::verify_password(&current, &hash) || (retry && auth::verify_password(&new, &hash))
        })
        .await?;
        if !confirmed {
            return Err(ApiError::forbidden(
                "wrong_password",
                "the current password is wrong",
            ));
        }
        let new = input.new_password;
        let new_hash = blocking(move || auth::hash_password(&new))
            .await?
            .map_err(ApiError::internal)?;
        let reply = state
            .registries
            .users
            .execute(
                who.user_id,
                UserCommand::ChangePassword {
                    password_hash: new_hash,
                    at: Utc::now(),
                },
                Some(version),
                command_meta,
            )
            .await
            .map_err(|e| command_error(e, user_error))?;
        note_ended_sessions(&state, &reply.events);
        let mut answer = Answer::of(StatusCode::OK, who.user_id, &reply);
        answer.body["sessions_ended"] = json!(reply.events.len().saturating_sub(1));
        Ok(answer)
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Deactivate {
    password: String,
}

/// Closes the caller's own account (the password confirms it); every session ends.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me",
    tag = "identity",
    request_body = Deactivate,
    params(super::schema::IdempotencyHeader),
    responses(
        (status = 204, description = "Deactivated"),
    ),
)]
async fn deactivate_me(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: Deactivate = parse_json(&body)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let (version, user) = load_user(&state, who.user_id).await?;
        let hash = user.password_hash.clone();
        if !blocking(move || auth::verify_password(&input.password, &hash)).await? {
            return Err(ApiError::forbidden(
                "wrong_password",
                "the password is wrong",
            ));
        }
        let reply = state
            .registries
            .users
            .execute(
                who.user_id,
                UserCommand::Deactivate { at: Utc::now() },
                Some(version),
                meta(&req, &who)?,
            )
            .await
            .map_err(|e| command_error(e, user_error))?;
        note_ended_sessions(&state, &reply.events);
        Ok(Answer::of(StatusCode::NO_CONTENT, who.user_id, &reply))
    })
    .await
}

/// Sessions a command ended stop working here at once (other processes learn it from the log).
fn note_ended_sessions(state: &AppState, events: &[UserEvent]) {
    for e in events {
        if let UserEvent::SessionEnded(s) = e {
            state.auth.ended_sessions.insert(s.session_id, ());
        }
    }
}

// ---- organizations ----

/// Runs one organization command, honouring `Idempotency-Key` like every command route.
async fn org_command(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    body: &[u8],
    id: impl FnOnce(&CommandMeta) -> Uuid,
    action: impl FnOnce(Uuid) -> OrgAction,
    status: StatusCode,
) -> Result<HttpResponse, ApiError> {
    let mut command_meta = meta(req, who)?;
    let id = id(&command_meta);
    command_meta.organization_id = Some(id);
    idempotent(&state.pool, req, who, body, || async {
        let reply = state
            .registries
            .organizations
            .execute(
                id,
                OrgCommand {
                    actor: who.user_id,
                    action: action(id),
                },
                super::command::if_match(req)?,
                command_meta,
            )
            .await
            .map_err(|e| command_error(e, org_error))?;
        // Read-your-writes for rights: the next request must already see a removed member,
        // a changed role or a disabled frontend, so answer once the access view has it.
        if !state
            .access
            .wait_applied(reply.position, crate::identity::access::SYNC_TIMEOUT)
            .await
        {
            tracing::warn!(
                position = reply.position,
                "the access view did not catch up in time"
            );
        }
        Ok(Answer::of(status, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OrgName {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    name: String,
}

/// Creates an organization.
#[utoipa::path(
    post,
    path = "/api/v1/organizations",
    tag = "identity",
    request_body = OrgName,
    params(super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Created; the caller is its admin", body = super::schema::CommandResult),
    ),
)]
async fn create_org(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: OrgName = parse_json(&body)?;
    let at = Utc::now();
    org_command(
        &state,
        &req,
        &who,
        &body,
        // With an idempotency key the id follows from it, so a retry names the same
        // organization.
        |m| Uuid::new_v5(&m.command_id, b"organization"),
        |id| OrgAction::Create {
            organization_id: id,
            name: input.name,
            at,
        },
        StatusCode::CREATED,
    )
    .await
}

/// Renames an organization (admins).
#[utoipa::path(
    patch,
    path = "/api/v1/organizations/{id}",
    tag = "identity",
    request_body = OrgName,
    params(("id" = Uuid, Path, description = "The organization"), super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Renamed", body = super::schema::CommandResult),
    ),
)]
async fn rename_org(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: OrgName = parse_json(&body)?;
    let id = path.into_inner();
    org_command(
        &state,
        &req,
        &who,
        &body,
        |_| id,
        |_| OrgAction::Rename { name: input.name },
        StatusCode::OK,
    )
    .await
}

/// Updates an organization (admins): the same as `PATCH`, for FluxStudio, whose frontend
/// sends `PUT /api/organizations/:id`.
#[utoipa::path(
    put,
    path = "/api/v1/organizations/{id}",
    tag = "identity",
    request_body = OrgName,
    params(("id" = Uuid, Path, description = "The organization"), super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Updated", body = super::schema::CommandResult),
    ),
)]
async fn update_org(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    rename_org(state, req, who, path, body).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MinPosition {
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

async fn wait_identity(state: &AppState, min: Option<i64>) -> Result<(), ApiError> {
    wait_for_projection(state, "identity", min).await
}

/// The caller's role in `org`, or 404 when not a member.
async fn member_role(state: &AppState, who: &Principal, org: Uuid) -> Result<String, ApiError> {
    sqlx::query_scalar("SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(org)
        .bind(who.user_id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("organization not found"))
}

/// Lists the caller's organizations.
#[utoipa::path(
    get,
    path = "/api/v1/organizations",
    tag = "identity",
    params(MinPosition),
    responses(
        (status = 200, description = "The caller's organizations", body = super::schema::OrganizationList),
    ),
)]
async fn list_orgs(
    state: web::Data<AppState>,
    who: Principal,
    q: web::Query<MinPosition>,
) -> Result<HttpResponse, ApiError> {
    wait_identity(&state, q.min_position).await?;
    type Row = (Uuid, String, String, Vec<String>, chrono::DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT o.id, o.name, m.role, o.frontends, o.created_at FROM memberships m \
         JOIN organizations o ON o.id = m.organization_id WHERE m.user_id = $1 \
         ORDER BY m.joined_position",
    )
    .bind(who.user_id)
    .fetch_all(&state.pool)
    .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(id, name, role, frontends, created_at)| json!({"id": id, "name": name, "role": role, "frontends": frontends, "created_at": created_at}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// One organization of the caller.
#[utoipa::path(
    get,
    path = "/api/v1/organizations/{id}",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The organization"), MinPosition),
    responses(
        (status = 200, description = "The organization; `ETag` is its version", body = super::schema::Organization),
    ),
)]
async fn get_org(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<MinPosition>,
) -> Result<HttpResponse, ApiError> {
    wait_identity(&state, q.min_position).await?;
    let id = path.into_inner();
    let role = member_role(&state, &who, id).await?;
    let (name, created_by, created_at, frontends, version): (
        String,
        Uuid,
        chrono::DateTime<Utc>,
        Vec<String>,
        i64,
    ) = sqlx::query_as(
        "SELECT name, created_by, created_at, frontends, version FROM organizations WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await?;
    Ok(super::command::with_etag(
        version,
        &json!({ "id": id, "name": name, "created_by": created_by, "created_at": created_at, "frontends": frontends, "version": version, "role": role }),
    ))
}

/// The members of an organization of the caller.
#[utoipa::path(
    get,
    path = "/api/v1/organizations/{id}/members",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The organization"), MinPosition),
    responses(
        (status = 200, description = "Members", body = super::schema::MemberList),
    ),
)]
async fn list_members(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<MinPosition>,
) -> Result<HttpResponse, ApiError> {
    wait_identity(&state, q.min_position).await?;
    let id = path.into_inner();
    member_role(&state, &who, id).await?;
    let rows: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT u.id, u.email, u.display_name, m.role FROM memberships m JOIN users u \
         ON u.id = m.user_id WHERE m.organization_id = $1 ORDER BY m.joined_position",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(uid, email, name, role)| json!({"user_id": uid, "email": email, "display_name": name, "role": role}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// Exactly one of `user_id` and `email`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetMember {
    user_id: Option<Uuid>,
    email: Option<String>,
    #[schema(value_type = super::schema::Role)]
    role: Role,
}

/// Adds a member or changes a member's role (admins); the last admin stays.
#[utoipa::path(
    post,
    path = "/api/v1/organizations/{id}/members",
    tag = "identity",
    request_body = SetMember,
    params(("id" = Uuid, Path, description = "The organization"), super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Added or given the role", body = super::schema::CommandResult),
    ),
)]
async fn set_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: SetMember = parse_json(&body)?;
    let user_id = match (input.user_id, input.email) {
        (Some(id), None) => id,
        (None, Some(email)) => {
            let (_, lower) =
                auth::normalize_email(&email).map_err(|m| ApiError::validation("email", m))?;
            user_of_email(&state, &lower)
                .await?
                .map(|(id, _, _)| id)
                .ok_or_else(|| ApiError::not_found("no user has this e-mail address"))?
        }
        _ => {
            return Err(ApiError::validation(
                "user_id",
                "give exactly one of user_id and email",
            ))
        }
    };
    let (version, _) = load_user(&state, user_id).await?;
    if version == 0 {
        return Err(ApiError::not_found("user not found"));
    }
    let id = path.into_inner();
    org_command(
        &state,
        &req,
        &who,
        &body,
        |_| id,
        |_| OrgAction::SetMember {
            user_id,
            role: input.role,
        },
        StatusCode::OK,
    )
    .await
}

/// Removes a member (admins); the last admin stays.
#[utoipa::path(
    delete,
    path = "/api/v1/organizations/{id}/members/{user_id}",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The organization"), ("user_id" = Uuid, Path, description = "The member"), super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Removed", body = super::schema::CommandResult),
    ),
)]
async fn remove_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (id, user_id) = path.into_inner();
    org_command(
        &state,
        &req,
        &who,
        b"",
        |_| id,
        |_| OrgAction::RemoveMember { user_id },
        StatusCode::OK,
    )
    .await
}

/// Which frontends an organization has enabled.
#[utoipa::path(
    get,
    path = "/api/v1/organizations/{id}/frontends",
    tag = "identity",
    params(("id" = Uuid, Path, description = "The organization"), MinPosition),
    responses(
        (status = 200, description = "Every frontend and whether it is enabled", body = super::schema::FrontendList),
    ),
)]
async fn get_frontends(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<Uuid>,
    q: web::Query<MinPosition>,
) -> Result<HttpResponse, ApiError> {
    wait_identity(&state, q.min_position).await?;
    let id = path.into_inner();
    member_role(&state, &who, id).await?;
    let frontends: Vec<String> =
        sqlx::query_scalar("SELECT frontends FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_one(&state.pool)
            .await?;
    let all: Vec<Value> = Frontend::ALL
        .iter()
        .map(|f| json!({ "frontend": f.as_str(), "enabled": frontends.iter().any(|e| e == f.as_str()) }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": all })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetFrontend {
    #[schema(value_type = super::schema::Frontend)]
    frontend: Frontend,
    enabled: bool,
}

/// Enables or disables a frontend for an organization (admins).
#[utoipa::path(
    put,
    path = "/api/v1/organizations/{id}/frontends",
    tag = "identity",
    request_body = SetFrontend,
    params(("id" = Uuid, Path, description = "The organization"), super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Set", body = super::schema::CommandResult),
    ),
)]
async fn set_frontend(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input: SetFrontend = parse_json(&body)?;
    let id = path.into_inner();
    org_command(
        &state,
        &req,
        &who,
        &body,
        |_| id,
        |_| OrgAction::SetFrontend {
            frontend: input.frontend,
            enabled: input.enabled,
        },
        StatusCode::OK,
    )
    .await
}

// ---- Google sign-in ----

/// Longest ID token accepted (Google's are about 1 KiB).
const MAX_ID_TOKEN: usize = 16 * 1024;

/// Exactly one of `credential` (what Google Identity Services hands the page) and `id_token`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GoogleSignIn {
    /// A Google ID token (a JWT).
    #[schema(max_length = 16384)]
    credential: Option<String>,
    /// The same, under the name other clients use.
    #[schema(max_length = 16384)]
    id_token: Option<String>,
    /// The organization to log in to (default: the first one).
    organization_id: Option<Uuid>,
}

fn google_error(e: crate::identity::google::GoogleError) -> ApiError {
    use crate::identity::google::GoogleError as G;
    match e {
        G::NotConfigured => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "google_sign_in_unavailable",
            e.to_string(),
        ),
        G::Invalid(why) => ApiError::unauthenticated("invalid_google_token", why),
        G::Unavailable(_) => {
            tracing::warn!(error = %e, "Google sign-in could not check a token");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "google_unavailable",
                "Google's signing keys could not be fetched; retry",
            )
        }
    }
}

/// A display name from Google's `name`, else the e-mail's local part: control characters
/// and the invisible layout characters names may not hold (bidirectional marks, which a
/// right-to-left name from Google may carry, see `validate::name`) dropped, cut to the
/// longest name an account may have.
fn google_display_name(name: Option<&str>, email: &str) -> String {
    let pick = |text: &str| -> String {
        text.chars()
            .filter(|c| !c.is_control() && !crate::actors::validate::is_layout_control(*c))
            .take(crate::actors::user::MAX_DISPLAY_NAME)
            .collect::<String>()
            .trim()
            .to_owned()
    };
    [name.unwrap_or(""), email.split('@').next().unwrap_or("")]
        .into_iter()
        .map(pick)
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| "Google user".to_owned())
}

/// Signs in with a Google ID token: a new e-mail address makes an account (without a
/// password), a known one logs in. Answers like login (201 with `position` when the account
/// was made). 401 `invalid_google_token` for a token that is not Google's, not for this
/// client, expired, or with an unverified e-mail; 503 when Google sign-in is not configured
/// or Google's keys cannot be fetched.
#[utoipa::path(
    post,
    path = "/api/v1/auth/google",
    tag = "identity",
    security(()),
    request_body = GoogleSignIn,
    responses(
        (status = 200, description = "Logged in", body = super::schema::Tokens),
        (status = 201, description = "Account made and logged in", body = super::schema::Tokens),
        (status = 401, description = "`invalid_google_token`, or `invalid_credentials` for a deactivated account", body = super::schema::ErrorBody),
    ),
)]
async fn google(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    state.auth.limit_ip(&req)?;
    let input: GoogleSignIn = parse_json(&body)?;
    let token = match (input.credential, input.id_token) {
        (Some(t), None) | (None, Some(t)) => t,
        _ => {
            return Err(ApiError::validation(
                "credential",
                "give exactly one of credential and id_token",
            ))
        }
    };
    if token.len() > MAX_ID_TOKEN {
        return Err(ApiError::validation(
            "credential",
            format!("must be at most {MAX_ID_TOKEN} bytes"),
        ));
    }
    let identity = state.google.verify(&token).await.map_err(google_error)?;
    let (email, email_lower) = auth::normalize_email(&identity.email).map_err(|_| {
        ApiError::unauthenticated(
            "invalid_google_token",
            "the ID token's e-mail address is not usable here",
        )
    })?;
    let mut made = None;
    let mut found = user_of_email(&state, &email_lower).await?;
    if found.is_none() {
        let user_id = Uuid::new_v4();
        match claim_email(&state, &email, &email_lower, user_id).await {
            Ok(()) => {
                let reply = state
                    .registries
                    .users
                    .execute(
                        user_id,
                        UserCommand::Register {
                            user_id,
                            email: email.clone(),
                            display_name: google_display_name(identity.name.as_deref(), &email),
                            // An empty hash never verifies: the account has no password.
                            password_hash: String::new(),
                            at: Utc::now(),
                        },
                        None,
                        meta_for(&req, Some(user_id), None),
                    )
                    .await
                    .map_err(|e| command_error(e, user_error))?;
                made = Some(reply.position);
                found = Some((user_id, 0, Utc::now()));
            }
            // Someone claimed the address at the same moment: log in to that account.
            Err(e) if e.status == StatusCode::CONFLICT => {
                found = user_of_email(&state, &email_lower).await?;
                if found.is_none() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let Some((user_id, _, _)) = found else {
        return Err(ApiError::internal("an e-mail claim vanished"));
    };
    let (version, user) = load_user(&state, user_id).await?;
    if version == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "email_taken",
            "this e-mail address is being registered; retry",
        ));
    }
    if !user.active {
        return Err(invalid_credentials());
    }
    let org = match membership(&state, user_id, input.organization_id).await? {
        Some((org, _, _)) => Some(org),
        None if input.organization_id.is_some() => {
            return Err(ApiError::not_found("organization not found"))
        }
        None => None,
    };
    let mut body = start_session(&state, &req, user_id, version, org).await?;
    Ok(match made {
        Some(position) => {
            body["position"] = json!(position);
            HttpResponse::Created().json(body)
        }
        None => HttpResponse::Ok().json(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_google_name_loses_what_a_display_name_may_not_hold() {
        let name = google_display_name(Some("\u{200F}דנה\u{202B} כהן\u{7}"), "d@example.com");
        assert_eq!(name, "דנה כהן");
        assert_eq!(
            crate::actors::validate::name(&name, crate::actors::user::MAX_DISPLAY_NAME),
            Ok(())
        );
        assert_eq!(
            google_display_name(Some("\u{202E}\u{FEFF}"), "dana@example.com"),
            "dana"
        );
    }
}
