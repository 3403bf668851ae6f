//! FlowMind chat sessions (`/api/v1/ai/sessions`): create, list, rename, archive, delete;
//! post a message (which starts the assistant's streamed reply), edit a message (a fork),
//! regenerate the last reply, stop a reply; read messages; follow one reply over
//! Server-Sent Events; and the organization's token usage per day.
//!
//! A session belongs to the user who created it: another member of the organization, like
//! another organization, gets 404. A second message while a reply streams is refused with
//! 409 `reply_in_progress` (not queued): stop the reply (`POST …/cancel`) or wait for it.
//! Without a provider for the session's model (in production with no provider key, say),
//! posting answers 503 `provider_unavailable` and writes nothing.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::conversation::ConversationEvent;
use universal_events::identity::Frontend;
use universal_events::EventFamily;
use uuid::Uuid;

use super::command::{
    idempotent, if_match, meta, parse_json, wait_for_projection as wait, Answer, Page,
};
use super::error::command_error;
use super::guard::{Principal, StreamCaller};
use super::ApiError;
use crate::actors::conversation::{
    Conversation, ConversationCommand, ConversationError, MessageKind, ReplyStatus, ScopedCommand,
};
use crate::actors::{CommandMeta, CommandReply};
use crate::providers::ModelProvider;
use crate::state::AppState;
use crate::store::{Filter, Subscription};
use crate::tasks::chat::ReplyJob;

const READ_MODEL: &str = "flowmind";
/// Title of a session created without one.
const DEFAULT_TITLE: &str = "New chat";
/// Seconds between keep-alive comments of an idle reply stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sessions", web::post().to(create_session))
        .route("/sessions", web::get().to(list_sessions))
        .route("/sessions/{id}", web::get().to(get_session))
        .route("/sessions/{id}", web::patch().to(update_session))
        .route("/sessions/{id}", web::delete().to(delete_session))
        .route("/sessions/{id}/archive", web::post().to(archive_session))
        .route("/sessions/{id}/messages", web::post().to(post_message))
        .route("/sessions/{id}/messages", web::get().to(list_messages))
        .route("/sessions/{id}/messages/{mid}", web::put().to(edit_message))
        .route(
            "/sessions/{id}/messages/{mid}/stream",
            web::get().to(stream_reply),
        )
        .route("/sessions/{id}/regenerate", web::post().to(regenerate))
        .route("/sessions/{id}/cancel", web::post().to(cancel))
        .route("/usage", web::get().to(usage));
}

fn conversation_error(e: ConversationError) -> ApiError {
    use ConversationError as E;
    match e {
        E::NotFound => ApiError::not_found("chat session not found"),
        E::AlreadyExists => ApiError::conflict("chat session already exists"),
        E::Invalid { field, message } => ApiError::validation(field, message),
        E::Archived => ApiError::new(
            StatusCode::CONFLICT,
            "session_archived",
            "the chat session is archived",
        ),
        E::ReplyInProgress => ApiError::new(
            StatusCode::CONFLICT,
            "reply_in_progress",
            "a reply is still streaming: stop it (POST …/cancel) or wait for it to end",
        ),
        E::UnknownMessage(id) => ApiError::not_found(format!(
            "message {id} is not a user message of this session"
        ))
        .with_details(json!({ "message_id": id })),
        E::DuplicateId(id) => ApiError::conflict(format!("id {id} is already used")),
        E::NothingToRegenerate => ApiError::new(
            StatusCode::CONFLICT,
            "nothing_to_regenerate",
            "there is no finished reply to regenerate",
        ),
        E::SessionFull(why) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "session_full",
            format!("the chat session is full: {why}"),
        ),
        e @ (E::ReplyNotActive(_) | E::OffsetMismatch { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "reply_not_active", e.to_string())
        }
    }
}

/// The caller's organization, for a command: FlowMind enabled, and a writer's role.
fn writer(who: &Principal, req: &HttpRequest) -> Result<Uuid, ApiError> {
    let org = who.frontend(req, Frontend::Flowmind)?;
    who.require_writer()?;
    Ok(org)
}

/// Runs a conversation command with the handler's `meta`, so that the ids the handler derived
/// from its command id (a session's, a message's, a reply's) and the events' ids follow from
/// one command id; `salt` gives a request's second command an id of its own.
async fn run(
    state: &AppState,
    req: &HttpRequest,
    (who, org): (&Principal, Uuid),
    meta: &CommandMeta,
    id: Uuid,
    cmd: ConversationCommand,
    salt: Option<&[u8]>,
) -> Result<CommandReply<Conversation>, ApiError> {
    let expected = if_match(req)?;
    let mut meta = meta.clone();
    if let Some(salt) = salt {
        // A second command of one request: its own command id, so its own event ids.
        meta.command_id = Uuid::new_v5(&meta.command_id, salt);
    }
    meta.organization_id = Some(org);
    meta.frontend = Some("flowmind".into());
    let cmd = ScopedCommand {
        organization_id: org,
        owner: Some(who.user_id),
        cmd,
    };
    state
        .chat
        .sessions
        .execute(id, cmd, expected, meta)
        .await
        .map_err(|e| command_error(e, conversation_error))
}

/// The session as its actor sees it now, if the caller owns it.
async fn owned_session(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    id: Uuid,
) -> Result<(i64, Conversation), ApiError> {
    let (version, session) = state
        .chat
        .sessions
        .inspect(id)
        .await
        .map_err(|e| command_error(e, conversation_error))?;
    if session.id.is_none()
        || session.deleted
        || session.organization_id != Some(org)
        || session.user_id != Some(who.user_id)
    {
        return Err(ApiError::not_found("chat session not found"));
    }
    Ok((version, session))
}

fn provider_unavailable(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "provider_unavailable",
        format!("no AI provider is configured for model `{model}`"),
    )
    .with_details(json!({ "model_id": model }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// `New chat` when absent.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    title: Option<String>,
    /// One of `GET /api/v1/ai/models`; the default model when absent.
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000]*$")]
    model_id: Option<String>,
    #[schema(max_length = 20000, pattern = r"^[^\u0000]*$")]
    system_prompt: Option<String>,
}

/// Opens a chat session owned by the caller; the body is optional.
#[utoipa::path(
    post,
    path = "/api/v1/ai/sessions",
    tag = "ai",
    request_body = Option<CreateSession>,
    params(super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 201, description = "Created", body = super::schema::ChatSessionCreated)),
)]
async fn create_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let input: CreateSession = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSession::default()
    } else {
        parse_json(&body)?
    };
    let model_id = match input.model_id {
        Some(m) => {
            let known = state.providers.models();
            if !known.is_empty() && !known.iter().any(|k| k.id == m) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_model",
                    format!("model `{m}` is not offered here; see GET /api/v1/ai/models"),
                )
                .with_details(json!({ "field": "model_id" })));
            }
            m
        }
        None => state.providers.default_model().unwrap_or_else(|| {
            state
                .config
                .openai_model
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }),
    };
    let meta = meta(&req, &who)?;
    let id = Uuid::new_v5(&meta.command_id, b"chat-session");
    let cmd = ConversationCommand::Create {
        session_id: id,
        user_id: who.user_id,
        title: input.title.unwrap_or_else(|| DEFAULT_TITLE.to_owned()),
        model_id,
        system_prompt: input.system_prompt,
        at: Utc::now(),
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        let mut answer = Answer::of(StatusCode::CREATED, id, &reply);
        if let Some(ConversationEvent::ChatSessionCreated(c)) = reply.events.first() {
            answer.body["session"] = json!({
                "id": id,
                "user_id": c.user_id,
                "organization_id": c.organization_id,
                "title": c.title,
                "model_id": c.model_id,
                "system_prompt": c.system_prompt,
                "created_at": c.created_at,
            });
        }
        answer.body["location"] = json!(format!("/api/v1/ai/sessions/{id}"));
        Ok(answer)
    })
    .await
}

#[derive(Serialize, sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    organization_id: Uuid,
    title: String,
    model_id: String,
    system_prompt: Option<String>,
    archived: bool,
    archived_at: Option<DateTime<Utc>>,
    message_count: i32,
    prompt_tokens: i64,
    completion_tokens: i64,
    tokens_used: i64,
    last_activity_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    version: i64,
    #[serde(skip)]
    created_position: i64,
}

const SESSION_COLUMNS: &str = "id, user_id, organization_id, title, model_id, system_prompt, \
    archived_at IS NOT NULL AS archived, archived_at, message_count, prompt_tokens, \
    completion_tokens, prompt_tokens + completion_tokens AS tokens_used, last_activity_at, \
    created_at, version, created_position";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListSessions {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// `true`: archived sessions only; `false`: active ones only; absent: both.
    archived: Option<bool>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The caller's chat sessions, newest first, with message count, last activity and tokens.
#[utoipa::path(
    get,
    path = "/api/v1/ai/sessions",
    tag = "ai",
    params(ListSessions, super::schema::FlowmindHeaders),
    responses((status = 200, description = "A page of sessions", body = super::schema::ChatSessionPage)),
)]
async fn list_sessions(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ListSessions>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Flowmind)?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let page = Page::parse(params.limit, (50, 200), &params.cursor, i64::MAX)?;
    let mut rows: Vec<SessionRow> = sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE organization_id = $1 AND user_id = $2 \
         AND created_position < $3 AND ($5::boolean IS NULL OR (archived_at IS NOT NULL) = $5) \
         ORDER BY created_position DESC LIMIT $4"
    ))
    .bind(org)
    .bind(who.user_id)
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(params.archived)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

async fn find_session(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    id: Uuid,
) -> Result<SessionRow, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1 AND organization_id = $2 \
         AND user_id = $3"
    ))
    .bind(id)
    .bind(org)
    .bind(who.user_id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("chat session not found"))
}

/// One of the caller's chat sessions.
#[utoipa::path(
    get,
    path = "/api/v1/ai/sessions/{id}",
    tag = "ai",
    params(("id" = Uuid, Path, description = "The session"), ReadParams, super::schema::FlowmindHeaders),
    responses((status = 200, description = "The session", body = super::schema::ChatSession)),
)]
async fn get_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Flowmind)?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let row = find_session(&state, &who, org, path.into_inner()).await?;
    Ok(super::command::with_etag(row.version, &row))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateSession {
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    title: Option<String>,
    /// A new system prompt; `null` removes it; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 20000, pattern = r"^[^\u0000]*$")]
    system_prompt: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Renames a session and/or sets its system prompt.
#[utoipa::path(
    patch,
    path = "/api/v1/ai/sessions/{id}",
    tag = "ai",
    request_body = UpdateSession,
    params(("id" = Uuid, Path, description = "The session"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Updated", body = super::schema::CommandResult)),
)]
async fn update_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let meta = meta(&req, &who)?;
    let id = path.into_inner();
    let input: UpdateSession = parse_json(&body)?;
    if input.title.is_none() && input.system_prompt.is_none() {
        return Err(ApiError::validation(
            "body",
            "give `title`, `system_prompt` or both",
        ));
    }
    idempotent(&state.pool, &req, &who, &body, || async {
        let mut last = None;
        if let Some(title) = input.title.clone() {
            let cmd = ConversationCommand::Rename { title };
            last = Some(run(&state, &req, (&who, org), &meta, id, cmd, None).await?);
        }
        if let Some(system_prompt) = input.system_prompt.clone() {
            let cmd = ConversationCommand::SetSystemPrompt { system_prompt };
            last = Some(
                run(
                    &state,
                    &req,
                    (&who, org),
                    &meta,
                    id,
                    cmd,
                    Some(b"system-prompt"),
                )
                .await?,
            );
        }
        let reply = last.expect("one command ran");
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Archives a session: it keeps its history but takes no new messages.
#[utoipa::path(
    post,
    path = "/api/v1/ai/sessions/{id}/archive",
    tag = "ai",
    params(("id" = Uuid, Path, description = "The session"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Archived", body = super::schema::CommandResult)),
)]
async fn archive_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let meta = meta(&req, &who)?;
    let id = path.into_inner();
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ConversationCommand::Archive { at: Utc::now() };
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Deletes a session (a tombstone event: it and its messages leave every read model). A
/// reply still streaming is stopped first.
#[utoipa::path(
    delete,
    path = "/api/v1/ai/sessions/{id}",
    tag = "ai",
    params(("id" = Uuid, Path, description = "The session"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Deleted", body = super::schema::CommandResult)),
)]
async fn delete_session(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let meta = meta(&req, &who)?;
    let id = path.into_inner();
    idempotent(&state.pool, &req, &who, &body, || async {
        let (_, session) = owned_session(&state, &who, org, id).await?;
        if let Some(active) = session.active_reply {
            state.chat.stop_local(active, Duration::from_secs(2)).await;
            let cmd = ConversationCommand::CancelReply {
                reply_id: Some(active),
                at: Utc::now(),
            };
            run(&state, &req, (&who, org), &meta, id, cmd, Some(b"cancel")).await?;
        }
        let cmd = ConversationCommand::Delete { at: Utc::now() };
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    #[schema(min_length = 1, max_length = 32000, pattern = r"^[^\u0000]*$")]
    content: String,
}

/// Starts the worker of a reply the command just started (not on a replayed answer: that
/// reply's worker was started by the first attempt).
fn start_reply(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    session: Uuid,
    reply: &CommandReply<Conversation>,
    provider: std::sync::Arc<crate::providers::Guarded>,
) -> Value {
    let started = reply.events.iter().find_map(|e| match e {
        ConversationEvent::ReplyStarted(r) => Some(r.clone()),
        _ => None,
    });
    let message_id = reply.events.iter().find_map(|e| match e {
        ConversationEvent::UserMessagePosted(m) => Some(m.message_id),
        _ => None,
    });
    let Some(r) = started else {
        return json!({});
    };
    if !reply.replayed {
        state.chat.start(
            ReplyJob {
                session_id: session,
                organization_id: org,
                user_id: who.user_id,
                reply_id: r.reply_id,
                model_id: r.model_id.clone(),
            },
            provider,
        );
    }
    json!({
        "message_id": message_id,
        "reply_id": r.reply_id,
        "model_id": r.model_id,
        "provider": r.provider,
        "stream_url": format!("/api/v1/ai/sessions/{session}/messages/{}/stream", r.reply_id),
    })
}

fn merge(answer: &mut Answer, more: Value) {
    if let (Value::Object(map), Value::Object(more)) = (&mut answer.body, more) {
        map.extend(more);
    }
}

/// The session's provider, or 503 `provider_unavailable`.
async fn session_provider(
    state: &AppState,
    who: &Principal,
    org: Uuid,
    id: Uuid,
) -> Result<std::sync::Arc<crate::providers::Guarded>, ApiError> {
    let (_, session) = owned_session(state, who, org, id).await?;
    state
        .chat
        .provider_for(&session.model_id)
        .ok_or_else(|| provider_unavailable(&session.model_id))
}

/// Posts a user message; the assistant's reply starts streaming at once (202). Follow it
/// at `stream_url` (SSE), on Socket.IO `/flowmind` or on `/api/v1/ws`.
#[utoipa::path(
    post,
    path = "/api/v1/ai/sessions/{id}/messages",
    tag = "ai",
    request_body = PostMessage,
    params(("id" = Uuid, Path, description = "The session"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 202, description = "Posted; the reply is streaming", body = super::schema::MessagePosted)),
)]
async fn post_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let id = path.into_inner();
    let input: PostMessage = parse_json(&body)?;
    let meta = meta(&req, &who)?;
    let message_id = Uuid::new_v5(&meta.command_id, b"message");
    let reply_id = Uuid::new_v5(&meta.command_id, b"reply");
    idempotent(&state.pool, &req, &who, &body, || async {
        let provider = session_provider(&state, &who, org, id).await?;
        let cmd = ConversationCommand::PostMessage {
            message_id,
            reply_id,
            content: input.content.clone(),
            provider: provider.name().to_owned(),
            at: Utc::now(),
        };
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        let mut answer = Answer::of(StatusCode::ACCEPTED, id, &reply);
        merge(
            &mut answer,
            start_reply(&state, &who, org, id, &reply, provider),
        );
        Ok(answer)
    })
    .await
}

/// Edits a user message: a new message after the edited one's parent (a fork), with a new
/// reply. The original stays in history.
#[utoipa::path(
    put,
    path = "/api/v1/ai/sessions/{id}/messages/{mid}",
    tag = "ai",
    request_body = PostMessage,
    params(("id" = Uuid, Path, description = "The session"), ("mid" = Uuid, Path, description = "The user message edited"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 202, description = "Forked; the new reply is streaming", body = super::schema::MessagePosted)),
)]
async fn edit_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let (id, edited) = path.into_inner();
    let input: PostMessage = parse_json(&body)?;
    let meta = meta(&req, &who)?;
    let message_id = Uuid::new_v5(&meta.command_id, b"message");
    let reply_id = Uuid::new_v5(&meta.command_id, b"reply");
    idempotent(&state.pool, &req, &who, &body, || async {
        let provider = session_provider(&state, &who, org, id).await?;
        let cmd = ConversationCommand::EditMessage {
            edited,
            message_id,
            reply_id,
            content: input.content.clone(),
            provider: provider.name().to_owned(),
            at: Utc::now(),
        };
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        let mut answer = Answer::of(StatusCode::ACCEPTED, id, &reply);
        merge(
            &mut answer,
            start_reply(&state, &who, org, id, &reply, provider),
        );
        Ok(answer)
    })
    .await
}

/// Regenerates the newest reply: a new reply to the same user message.
#[utoipa::path(
    post,
    path = "/api/v1/ai/sessions/{id}/regenerate",
    tag = "ai",
    params(("id" = Uuid, Path, description = "The session"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 202, description = "The new reply is streaming", body = super::schema::MessagePosted)),
)]
async fn regenerate(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let id = path.into_inner();
    let meta = meta(&req, &who)?;
    let reply_id = Uuid::new_v5(&meta.command_id, b"reply");
    idempotent(&state.pool, &req, &who, &body, || async {
        let provider = session_provider(&state, &who, org, id).await?;
        let cmd = ConversationCommand::Regenerate {
            reply_id,
            provider: provider.name().to_owned(),
            at: Utc::now(),
        };
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        let mut answer = Answer::of(StatusCode::ACCEPTED, id, &reply);
        merge(
            &mut answer,
            start_reply(&state, &who, org, id, &reply, provider),
        );
        Ok(answer)
    })
    .await
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Cancel {
    /// Stop only this reply; absent stops whatever is streaming.
    reply_id: Option<Uuid>,
}

/// Stops the streaming reply ("stop generating"). What it produced so far is kept. With
/// nothing streaming it changes nothing and says `cancelled: false`. The body is optional.
#[utoipa::path(
    post,
    path = "/api/v1/ai/sessions/{id}/cancel",
    tag = "ai",
    request_body = Option<Cancel>,
    params(("id" = Uuid, Path, description = "The session"), super::schema::FlowmindHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Stopped, or nothing to stop", body = super::schema::ReplyCancelled)),
)]
async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = writer(&who, &req)?;
    let meta = meta(&req, &who)?;
    let id = path.into_inner();
    let input: Cancel = if body.iter().all(u8::is_ascii_whitespace) {
        Cancel::default()
    } else {
        parse_json(&body)?
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        let (_, session) = owned_session(&state, &who, org, id).await?;
        let target = match (session.active_reply, input.reply_id) {
            (Some(active), None) => Some(active),
            (Some(active), Some(wanted)) if active == wanted => Some(active),
            _ => None,
        };
        if let Some(active) = target {
            // A worker of this process writes what it gathered before the cancel is recorded.
            state.chat.stop_local(active, Duration::from_secs(2)).await;
        }
        let cmd = ConversationCommand::CancelReply {
            reply_id: target.or(input.reply_id),
            at: Utc::now(),
        };
        let reply = run(&state, &req, (&who, org), &meta, id, cmd, None).await?;
        let cancelled = reply.events.iter().find_map(|e| match e {
            ConversationEvent::ReplyCancelled(c) => Some(c.reply_id),
            _ => None,
        });
        let mut answer = Answer::of(StatusCode::OK, id, &reply);
        merge(
            &mut answer,
            json!({ "cancelled": cancelled.is_some(), "reply_id": cancelled }),
        );
        Ok(answer)
    })
    .await
}

#[derive(Serialize, sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    session_id: Uuid,
    parent_id: Option<Uuid>,
    role: String,
    content: String,
    status: String,
    model_id: Option<String>,
    provider: Option<String>,
    finish_reason: Option<String>,
    error_class: Option<String>,
    error_message: Option<String>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    seq: i64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListMessages {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The session's messages, oldest first: every branch, each message naming its parent
/// (`parent_id`), replies with their full text, status and token usage.
#[utoipa::path(
    get,
    path = "/api/v1/ai/sessions/{id}/messages",
    tag = "ai",
    params(("id" = Uuid, Path, description = "The session"), ListMessages, super::schema::FlowmindHeaders),
    responses((status = 200, description = "A page of messages", body = super::schema::ChatMessagePage)),
)]
async fn list_messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ListMessages>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Flowmind)?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let id = path.into_inner();
    let page = Page::parse(params.limit, (100, 500), &params.cursor, 0)?;
    find_session(&state, &who, org, id).await?;
    let mut rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT id, session_id, parent_id, role, content, status, model_id, provider, \
         finish_reason, error_class, error_message, prompt_tokens, completion_tokens, \
         created_at, finished_at, seq FROM chat_messages \
         WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(page.cursor)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.seq);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

/// One Server-Sent Event.
fn sse(event: &str, id: Option<u64>, data: &Value) -> web::Bytes {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    web::Bytes::from(format!("event: {event}\n{id}data: {data}\n\n"))
}

/// The piece of `text` (which starts at character `offset`) that a client holding `sent`
/// characters has not seen, with its own offset.
fn unseen(text: &str, offset: u64, sent: u64) -> Option<(u64, String)> {
    let len = text.chars().count() as u64;
    if offset + len <= sent {
        return None;
    }
    let skip = sent.saturating_sub(offset) as usize;
    Some((offset.max(sent), text.chars().skip(skip).collect()))
}

/// The terminal SSE event of a reply.
fn ending(e: &ConversationEvent, reply: Uuid) -> Option<(&'static str, Value)> {
    match e {
        ConversationEvent::ReplyCompleted(c) if c.reply_id == reply => {
            Some(("completed", serde_json::to_value(c).unwrap_or_default()))
        }
        ConversationEvent::ReplyFailed(f) if f.reply_id == reply => {
            Some(("failed", serde_json::to_value(f).unwrap_or_default()))
        }
        ConversationEvent::ReplyCancelled(c) if c.reply_id == reply => {
            Some(("cancelled", serde_json::to_value(c).unwrap_or_default()))
        }
        _ => None,
    }
}

/// Streams one reply as Server-Sent Events: first what exists, then the rest live, then one
/// ending event. `delta` events carry `{reply_id, offset, text}` and an `id` equal to the
/// characters received so far, so a client that reconnects with `Last-Event-ID` gets only
/// what it missed; the ending is `completed`, `failed` or `cancelled`. `mid` may also name
/// a user message: its newest reply is streamed.
///
/// A browser's `EventSource` cannot send headers: it may give the access token as the
/// `access_token` query parameter and the frontend as `frontend` instead (see
/// [`StreamCaller`]); the headers win when both are sent.
#[utoipa::path(
    get,
    path = "/api/v1/ai/sessions/{id}/messages/{mid}/stream",
    tag = "ai",
    security(("bearer" = []), ("access_token" = [])),
    params(
        ("id" = Uuid, Path, description = "The session"),
        ("mid" = Uuid, Path, description = "The reply (or the user message it answers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Characters already received (the last event's id)", pattern = "^[0-9]{1,12}$"),
        super::schema::FlowmindStreamHeaders,
        super::schema::FlowmindStreamQuery,
    ),
    responses((status = 200, description = "An event stream (`text/event-stream`)", content_type = "text/event-stream", body = super::schema::ReplySseEvent)),
)]
async fn stream_reply(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: StreamCaller,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Flowmind)?;
    let (id, mid) = path.into_inner();
    let sent: u64 = match req.headers().get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a count of characters"))?,
    };
    // Everything up to `after` is in the state read next; the subscription brings the rest.
    let after = *state.store.head_watch().borrow();
    let (version, session) = owned_session(&state, &who, org, id).await?;
    let reply = session
        .messages
        .iter()
        .rev()
        .find(|m| {
            matches!(m.kind, MessageKind::Reply(_)) && (m.id == mid || m.parent_id == Some(mid))
        })
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such reply in this session"))?;
    let reply_id = reply.id;
    let mut first = Vec::new();
    if let Some((offset, text)) = unseen(&reply.text, 0, sent) {
        first.push(sse(
            "delta",
            Some(reply.chars),
            &json!({ "reply_id": reply_id, "offset": offset, "text": text }),
        ));
    }
    let sent = sent.max(reply.chars);
    let status = match reply.kind {
        MessageKind::Reply(s) => s,
        MessageKind::User => ReplyStatus::Streaming,
    };
    let response = HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .take();
    let mut response = response;
    if status != ReplyStatus::Streaming {
        // Ended: the ending comes from the log, for the same fields as live.
        let ending_event = ending_of(&state, id, version, reply_id, status).await;
        first.push(ending_event);
        let body = futures_util::stream::iter(first.into_iter().map(Ok::<_, actix_web::Error>));
        return Ok(response.streaming(body));
    }
    let filter = Filter {
        stream: Some(format!("conversation-{id}")),
        event_types: Some(vec![
            "ReplyDeltaAppended".into(),
            "ReplyCompleted".into(),
            "ReplyFailed".into(),
            "ReplyCancelled".into(),
            "ChatSessionDeleted".into(),
        ]),
        ..Filter::default()
    };
    let sub =
        Subscription::new(state.store.clone(), after, filter).with_live_feed(state.live.clone());
    // No reply streams longer than the provider's limit; the stream ends after it anyway.
    let deadline =
        tokio::time::Instant::now() + state.chat.settings().total_timeout + Duration::from_secs(30);
    struct Follow {
        sub: Subscription,
        sent: u64,
        done: bool,
    }
    let live = futures_util::stream::unfold(
        Follow {
            sub,
            sent,
            done: false,
        },
        move |mut f| async move {
            if f.done {
                return None;
            }
            loop {
                let wait =
                    KEEP_ALIVE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                if wait.is_zero() {
                    f.done = true;
                    let e = sse("timeout", None, &json!({ "reply_id": reply_id }));
                    return Some((Ok::<_, actix_web::Error>(e), f));
                }
                let event = match tokio::time::timeout(wait, f.sub.next()).await {
                    Err(_) => return Some((Ok(web::Bytes::from_static(b": keep-alive\n\n")), f)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "reply stream read failed");
                        f.done = true;
                        let e = sse(
                            "error",
                            None,
                            &json!({ "message": "the event store is unavailable; reconnect" }),
                        );
                        return Some((Ok(e), f));
                    }
                    Ok(Ok(e)) => e,
                };
                let Ok(decoded) = ConversationEvent::decode_ref(
                    &event.event_type,
                    event.schema_version,
                    &event.data,
                ) else {
                    continue;
                };
                match &decoded {
                    ConversationEvent::ReplyDeltaAppended(d) if d.reply_id == reply_id => {
                        if let Some((offset, text)) = unseen(&d.text, d.offset, f.sent) {
                            f.sent = d.offset + d.text.chars().count() as u64;
                            let e = sse(
                                "delta",
                                Some(f.sent),
                                &json!({ "reply_id": reply_id, "offset": offset, "text": text }),
                            );
                            return Some((Ok(e), f));
                        }
                    }
                    ConversationEvent::ChatSessionDeleted(_) => {
                        f.done = true;
                        let e = sse(
                            "cancelled",
                            None,
                            &json!({ "reply_id": reply_id, "reason": "session deleted" }),
                        );
                        return Some((Ok(e), f));
                    }
                    other => {
                        if let Some((name, data)) = ending(other, reply_id) {
                            f.done = true;
                            return Some((Ok(sse(name, None, &data)), f));
                        }
                    }
                }
            }
        },
    );
    let body = futures_util::StreamExt::chain(
        futures_util::stream::iter(first.into_iter().map(Ok::<_, actix_web::Error>)),
        live,
    );
    Ok(response.streaming(body))
}

/// The ending event of a reply that has ended, read back from the end of the session's log
/// (the newest 500 events; an older reply gets an ending without the provider's details).
async fn ending_of(
    state: &AppState,
    session: Uuid,
    version: i64,
    reply: Uuid,
    status: ReplyStatus,
) -> web::Bytes {
    let found = state
        .store
        .read_stream(
            &format!("conversation-{session}"),
            version,
            crate::store::Direction::Backward,
            500,
        )
        .await
        .ok()
        .and_then(|events| {
            events.iter().find_map(|e| {
                let d =
                    ConversationEvent::decode_ref(&e.event_type, e.schema_version, &e.data).ok()?;
                ending(&d, reply)
            })
        });
    let (name, data) = found.unwrap_or_else(|| {
        let name = match status {
            ReplyStatus::Completed => "completed",
            ReplyStatus::Failed => "failed",
            _ => "cancelled",
        };
        (name, json!({ "reply_id": reply }))
    });
    sse(name, None, &data)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    /// First day (UTC, `YYYY-MM-DD`); 30 days before `to` when absent.
    from: Option<NaiveDate>,
    /// Last day (UTC), today when absent. At most 366 days after `from`.
    to: Option<NaiveDate>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// Tokens used by the organization's completed replies, per day and model (for billing
/// dashboards). Organization admins only.
#[utoipa::path(
    get,
    path = "/api/v1/ai/usage",
    tag = "ai",
    params(UsageParams, super::schema::FlowmindHeaders),
    responses((status = 200, description = "Usage per day and model", body = super::schema::AiUsage)),
)]
async fn usage(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<UsageParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Flowmind)?;
    who.require_admin()?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let to = params.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = params.from.unwrap_or(to - chrono::Days::new(30));
    if from > to || (to - from).num_days() > 366 {
        return Err(ApiError::bad_request(
            "`from` must not be after `to`, and at most 366 days before it",
        ));
    }
    #[derive(Serialize, sqlx::FromRow)]
    struct UsageRow {
        day: NaiveDate,
        model_id: String,
        replies: i64,
        prompt_tokens: i64,
        completion_tokens: i64,
    }
    let rows: Vec<UsageRow> = sqlx::query_as(
        "SELECT day, model_id, replies, prompt_tokens, completion_tokens FROM ai_usage_daily \
         WHERE organization_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day, model_id",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .fetch_all(&state.pool)
    .await?;
    let total = |f: fn(&UsageRow) -> i64| rows.iter().map(f).sum::<i64>();
    let totals = json!({
        "replies": total(|r| r.replies),
        "prompt_tokens": total(|r| r.prompt_tokens),
        "completion_tokens": total(|r| r.completion_tokens),
    });
    Ok(HttpResponse::Ok().json(json!({
        "organization_id": org, "from": from, "to": to, "items": rows, "totals": totals,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnecting_client_gets_only_the_characters_it_lacks() {
        assert_eq!(unseen("hello", 0, 0), Some((0, "hello".into())));
        assert_eq!(unseen("hello", 0, 3), Some((3, "lo".into())));
        assert_eq!(unseen("hello", 0, 5), None);
        assert_eq!(unseen("wörld", 5, 7), Some((7, "rld".into())));
        assert_eq!(unseen("x", 9, 2), Some((9, "x".into())));
    }
}
