//! FluxStudio team messaging over HTTP (`/api/v1/channels`, `/api/v1/messages`, and the same
//! under `/api/`, the paths FluxStudio's frontend calls), and every frontend's notifications
//! (`/api/v1/shared/notifications`).
//!
//! Commands go to the channel's actor; the Socket.IO namespace `/messaging` calls the same
//! functions ([`post_message`], [`edit_message`], [`delete_message`], [`react`]), so both
//! paths share validation, permissions and idempotency. Reads come from the `messaging` read
//! models; pass a command's `position` as `min_position` to read your own write.

use std::collections::{BTreeSet, HashMap};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::identity::{Frontend, Role};
use universal_events::messaging::{Attachment, ChannelKind, MessagingEvent};
use uuid::Uuid;

use super::command::{idempotent, meta, parse_json, wait_for_projection as wait, Answer, Page};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::channel::{
    direct_id, Caller, Channel, ChannelCommand, ChannelError, InboxCommand, ScopedCommand,
};
use crate::actors::{CommandMeta, CommandReply};
use crate::files::attachments;
use crate::state::AppState;

const READ_MODEL: &str = "messaging";

/// Routes mounted under `/api/v1` and `/api`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/channels")
            .route("", web::post().to(create_channel))
            .route("", web::get().to(list_channels))
            .route("/direct", web::post().to(open_direct))
            .route("/{id}", web::get().to(get_channel))
            .route("/{id}", web::patch().to(update_channel))
            .route("/{id}/archive", web::post().to(archive_channel))
            .route("/{id}/members", web::post().to(add_member))
            .route("/{id}/members/{user_id}", web::delete().to(remove_member))
            .route("/{id}/messages", web::post().to(post_in_channel))
            .route("/{id}/messages", web::get().to(list_in_channel))
            .route("/{id}/read", web::post().to(mark_read)),
    )
    .service(
        web::scope("/messages")
            .route("", web::post().to(post_message_route))
            .route("", web::get().to(list_messages_route))
            .route("/{mid}", web::patch().to(edit_message_route))
            .route("/{mid}", web::delete().to(delete_message_route))
            .route("/{mid}/reactions/{emoji}", web::put().to(add_reaction))
            .route(
                "/{mid}/reactions/{emoji}",
                web::delete().to(remove_reaction),
            ),
    );
}

/// Notification routes, for every frontend.
pub fn configure_shared(cfg: &mut web::ServiceConfig) {
    cfg.route("/shared/notifications", web::get().to(list_notifications))
        .route(
            "/shared/notifications/read-all",
            web::post().to(read_all_notifications),
        )
        .route(
            "/shared/notifications/{id}/read",
            web::post().to(read_notification),
        );
}

pub fn channel_error(e: ChannelError) -> ApiError {
    match e {
        ChannelError::NotFound => ApiError::not_found("channel not found"),
        ChannelError::AlreadyExists => ApiError::conflict("channel already exists"),
        ChannelError::Invalid { field, message } => ApiError::validation(field, message),
        ChannelError::Forbidden(why) => ApiError::forbidden("forbidden", why),
        ChannelError::Archived => ApiError::new(
            StatusCode::CONFLICT,
            "channel_archived",
            "the channel is archived",
        ),
        ChannelError::UnknownMessage => ApiError::not_found("message not found"),
        ChannelError::DuplicateMessage(id) => {
            ApiError::conflict(format!("message id {id} is already used"))
        }
        ChannelError::Full(why) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "channel_full",
            format!("the channel is full: {why}"),
        ),
    }
}

/// The caller as the channel actor sees it: FluxStudio enabled, and a role now.
pub fn caller(who: &Principal, req: Option<&HttpRequest>) -> Result<Caller, ApiError> {
    let org = match req {
        Some(req) => who.frontend(req, Frontend::Fluxstudio)?,
        None => who
            .organization_id
            .ok_or_else(|| ApiError::forbidden("no_organization", "log in to an organization"))?,
    };
    Ok(Caller {
        organization_id: org,
        user_id: who.user_id,
        role: who.role.unwrap_or(Role::Viewer),
    })
}

/// Runs a channel command with `meta` (the organization and user are filled in).
pub async fn run(
    state: &AppState,
    by: Caller,
    channel: Uuid,
    cmd: ChannelCommand,
    mut meta: CommandMeta,
) -> Result<CommandReply<Channel>, ApiError> {
    meta.organization_id = Some(by.organization_id);
    meta.user_id = Some(by.user_id);
    meta.frontend = Some("fluxstudio".into());
    state
        .registries
        .channels
        .execute(channel, ScopedCommand { by, cmd }, None, meta)
        .await
        .map_err(|e| command_error(e, channel_error))
}

/// Users named in `text` as `<@uuid>`, with the explicit ones.
fn mentions_in(text: &str, explicit: &[Uuid]) -> Vec<Uuid> {
    let mut found: BTreeSet<Uuid> = explicit.iter().copied().collect();
    let mut rest = text;
    while let Some(i) = rest.find("<@") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find('>') {
            if let Ok(id) = Uuid::parse_str(&rest[..end]) {
                found.insert(id);
            }
        }
    }
    found.into_iter().collect()
}

/// Every user in `users` must be a member of the organization.
fn members_only(state: &AppState, org: Uuid, field: &str, users: &[Uuid]) -> Result<(), ApiError> {
    match users
        .iter()
        .find(|u| state.access.role_of(org, **u).is_none())
    {
        Some(u) => Err(ApiError::validation(
            field,
            format!("user {u} is not a member of this organization"),
        )),
        None => Ok(()),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateChannel {
    #[schema(min_length = 1, max_length = 80, pattern = r"^[^\u0000]*$")]
    name: String,
    /// `public` (default) or `private`.
    #[serde(default = "public")]
    #[schema(value_type = Option<String>, pattern = "^(public|private)$")]
    kind: String,
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    topic: Option<String>,
    /// Other members of a private channel (organization members).
    #[serde(default)]
    #[schema(max_items = 999)]
    members: Vec<Uuid>,
}

fn public() -> String {
    "public".into()
}

/// The answer to a channel command.
fn channel_answer(status: StatusCode, id: Uuid, reply: &CommandReply<Channel>) -> Answer {
    let mut answer = Answer::of(status, id, reply);
    answer.body["location"] = json!(format!("/api/v1/channels/{id}"));
    answer
}

/// Creates a public or private channel in the caller's organization.
#[utoipa::path(
    post,
    path = "/api/v1/channels",
    tag = "messaging",
    request_body = CreateChannel,
    params(super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 201, description = "Created", body = super::schema::ChannelCreated)),
)]
async fn create_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let input: CreateChannel = parse_json(&body)?;
    let kind = match input.kind.as_str() {
        "public" => ChannelKind::Public,
        "private" => ChannelKind::Private,
        _ => {
            return Err(ApiError::validation(
                "kind",
                "must be `public` or `private`",
            ))
        }
    };
    members_only(&state, by.organization_id, "members", &input.members)?;
    let meta = meta(&req, &who)?;
    let id = Uuid::new_v5(&meta.command_id, b"channel");
    let cmd = ChannelCommand::Create {
        channel_id: id,
        kind,
        name: Some(input.name),
        topic: input.topic,
        members: input.members,
        at: Utc::now(),
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        let reply = run(&state, by, id, cmd, meta.clone()).await?;
        Ok(channel_answer(StatusCode::CREATED, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OpenDirect {
    /// The other users (1 to 8 organization members); the caller is added.
    #[schema(min_items = 1, max_items = 8)]
    user_ids: Vec<Uuid>,
}

/// Opens the direct conversation of the caller and these users: the same set of users always
/// gets the same conversation (201 the first time, 200 after).
#[utoipa::path(
    post,
    path = "/api/v1/channels/direct",
    tag = "messaging",
    request_body = OpenDirect,
    params(super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Opened", body = super::schema::ChannelCreated),
        (status = 200, description = "It existed", body = super::schema::ChannelCreated),
    ),
)]
async fn open_direct(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let input: OpenDirect = parse_json(&body)?;
    members_only(&state, by.organization_id, "user_ids", &input.user_ids)?;
    let mut users: BTreeSet<Uuid> = input.user_ids.iter().copied().collect();
    users.insert(by.user_id);
    let id = direct_id(by.organization_id, &users);
    let meta = meta(&req, &who)?;
    let cmd = ChannelCommand::Create {
        channel_id: id,
        kind: ChannelKind::Direct,
        name: None,
        topic: None,
        members: input.user_ids,
        at: Utc::now(),
    };
    match run(&state, by, id, cmd, meta).await {
        Ok(reply) => Ok(channel_answer(StatusCode::CREATED, id, &reply).into_response()),
        Err(e) if e.code == "conflict" => {
            let (version, _) = state
                .registries
                .channels
                .inspect(id)
                .await
                .map_err(|e| command_error(e, channel_error))?;
            let head = state
                .store
                .head_position()
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            let body = json!({ "id": id, "version": version, "position": head, "location": format!("/api/v1/channels/{id}") });
            Ok(Answer::new(StatusCode::OK, body, version).into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct ChannelRow {
    id: Uuid,
    organization_id: Uuid,
    kind: String,
    name: Option<String>,
    topic: Option<String>,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
    message_count: i64,
    last_message_at: Option<DateTime<Utc>>,
    last_read_seq: i64,
    unread_count: i64,
    version: i64,
    #[serde(skip)]
    created_position: i64,
}

/// The channels a user reads in an organization: public ones and those they are a member
/// of, with their read mark and unread messages (others' messages, not deleted, after it).
const CHANNEL_SELECT: &str = "SELECT c.id, c.organization_id, c.kind, c.name, c.topic, \
    c.created_by, c.created_at, c.archived_at, c.message_count, c.last_message_at, \
    coalesce(r.seq, 0) AS last_read_seq, \
    (SELECT count(*) FROM channel_messages m WHERE m.channel_id = c.id \
       AND m.seq > coalesce(r.seq, 0) AND m.author_id <> $2 AND m.deleted_at IS NULL) AS unread_count, \
    c.version, c.created_position \
    FROM channels c LEFT JOIN channel_read_marks r ON r.channel_id = c.id AND r.user_id = $2 \
    WHERE c.organization_id = $1 AND (c.kind = 'public' OR EXISTS \
      (SELECT 1 FROM channel_members cm WHERE cm.channel_id = c.id AND cm.user_id = $2))";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListChannels {
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The channels and direct conversations the caller reads, oldest first, with unread counts.
#[utoipa::path(
    get,
    path = "/api/v1/channels",
    tag = "messaging",
    params(ListChannels, super::schema::FluxstudioHeaders),
    responses((status = 200, description = "A page of channels", body = super::schema::ChannelPage)),
)]
async fn list_channels(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ListChannels>,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let page = Page::parse(params.limit, (50, 200), &params.cursor, 0)?;
    let mut rows: Vec<ChannelRow> = sqlx::query_as(&format!(
        "{CHANNEL_SELECT} AND c.created_position > $3 ORDER BY c.created_position LIMIT $4"
    ))
    .bind(by.organization_id)
    .bind(by.user_id)
    .bind(page.cursor)
    .bind(page.fetch())
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

async fn find_channel(state: &AppState, by: Caller, id: Uuid) -> Result<ChannelRow, ApiError> {
    sqlx::query_as(&format!("{CHANNEL_SELECT} AND c.id = $3"))
        .bind(by.organization_id)
        .bind(by.user_id)
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("channel not found"))
}

/// A channel the caller reads, with its members (private channels and direct conversations).
#[utoipa::path(
    get,
    path = "/api/v1/channels/{id}",
    tag = "messaging",
    params(("id" = Uuid, Path, description = "The channel"), ReadParams, super::schema::FluxstudioHeaders),
    responses((status = 200, description = "The channel", body = super::schema::ChannelDetail)),
)]
async fn get_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let id = path.into_inner();
    let row = find_channel(&state, by, id).await?;
    let members: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM channel_members WHERE channel_id = $1 ORDER BY user_id",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let mut body = serde_json::to_value(&row).unwrap_or_default();
    body["members"] = json!(members);
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateChannel {
    #[schema(min_length = 1, max_length = 80, pattern = r"^[^\u0000]*$")]
    name: Option<String>,
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    topic: Option<String>,
}

/// Renames a channel or sets its topic (its creator or an organization admin).
#[utoipa::path(
    patch,
    path = "/api/v1/channels/{id}",
    tag = "messaging",
    request_body = UpdateChannel,
    params(("id" = Uuid, Path, description = "The channel"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Updated", body = super::schema::CommandResult)),
)]
async fn update_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let id = path.into_inner();
    let input: UpdateChannel = parse_json(&body)?;
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ChannelCommand::Update {
            name: input.name.clone(),
            topic: input.topic.clone(),
        };
        let reply = run(&state, by, id, cmd, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Archives a channel: it keeps its history and takes nothing new.
#[utoipa::path(
    post,
    path = "/api/v1/channels/{id}/archive",
    tag = "messaging",
    params(("id" = Uuid, Path, description = "The channel"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Archived", body = super::schema::CommandResult)),
)]
async fn archive_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let id = path.into_inner();
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ChannelCommand::Archive { at: Utc::now() };
        let reply = run(&state, by, id, cmd, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddMember {
    user_id: Uuid,
}

/// Adds an organization member to a private channel.
#[utoipa::path(
    post,
    path = "/api/v1/channels/{id}/members",
    tag = "messaging",
    request_body = AddMember,
    params(("id" = Uuid, Path, description = "The channel"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "A member (again)", body = super::schema::CommandResult)),
)]
async fn add_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let id = path.into_inner();
    let input: AddMember = parse_json(&body)?;
    members_only(&state, by.organization_id, "user_id", &[input.user_id])?;
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ChannelCommand::AddMember {
            user_id: input.user_id,
        };
        let reply = run(&state, by, id, cmd, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// Removes a member from a private channel (themselves, or anyone by the channel's creator
/// or an organization admin).
#[utoipa::path(
    delete,
    path = "/api/v1/channels/{id}/members/{user_id}",
    tag = "messaging",
    params(("id" = Uuid, Path, description = "The channel"), ("user_id" = Uuid, Path, description = "The member"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Not a member (any more)", body = super::schema::CommandResult)),
)]
async fn remove_member(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let (id, user_id) = path.into_inner();
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ChannelCommand::RemoveMember { user_id };
        let reply = run(&state, by, id, cmd, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

/// A message to post, from HTTP or a socket.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The channel (given in the path under `/channels/{id}/messages`).
    #[serde(alias = "channelId")]
    pub channel_id: Option<Uuid>,
    /// The text; `<@user-id>` mentions a user.
    #[serde(alias = "content")]
    #[schema(min_length = 1, max_length = 10000, pattern = r"^[^\u0000]*$")]
    pub text: String,
    /// The message replied to (its thread).
    #[serde(alias = "parentId")]
    pub parent_id: Option<Uuid>,
    /// Users mentioned, besides those named in the text.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub mentions: Vec<Uuid>,
    #[serde(default)]
    #[schema(value_type = Vec<super::schema::AttachmentBody>, max_items = 10)]
    pub attachments: Vec<Attachment>,
    /// The client's own id for the message: sending it again returns the same message.
    #[serde(alias = "clientMessageId")]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000]*$")]
    pub client_message_id: Option<String>,
}

/// The stored message as every answer shows it.
pub fn message_json(channel: Uuid, position: i64, e: &MessagingEvent) -> Value {
    match e {
        MessagingEvent::MessagePosted(p) => json!({
            "id": p.message_id, "channel_id": channel, "author_id": p.author_id,
            "text": p.text, "parent_id": p.parent_id, "mentions": p.mentions,
            "attachments": p.attachments, "client_message_id": p.client_message_id,
            "created_at": p.posted_at, "position": position,
        }),
        _ => Value::Null,
    }
}

/// The caller as a reader of attachments.
pub fn reader_of(by: Caller) -> attachments::Reader {
    attachments::Reader {
        organization_id: by.organization_id,
        user_id: by.user_id,
        role: Some(by.role),
    }
}

/// The command id of a message a client names with its own id: a resend finds the first.
fn client_command_id(by: &Caller, channel: Uuid, client_id: &str) -> Uuid {
    let scope = format!(
        "message:send\n{}\n{}\n{channel}\n{client_id}",
        by.organization_id, by.user_id
    );
    Uuid::new_v5(&CLIENT_IDS, scope.as_bytes())
}

const CLIENT_IDS: Uuid = Uuid::from_u128(0x51c3_0a77_d2e4_4f0b_8e1a_c6b9_72d0_4e15);

/// Posts a message (HTTP and socket alike). With a `client_message_id` the message id and
/// the command id follow from it, so a resend returns the first message.
pub async fn post_message(
    state: &AppState,
    by: Caller,
    channel: Uuid,
    input: NewMessage,
    mut meta: CommandMeta,
) -> Result<Value, ApiError> {
    if let Some(client_id) = &input.client_message_id {
        meta.command_id = client_command_id(&by, channel, client_id);
        meta.replayable = true;
    }
    let mentions = mentions_in(&input.text, &input.mentions);
    members_only(state, by.organization_id, "mentions", &mentions)?;
    let sender = reader_of(by);
    attachments::check_sender(state, sender, &input.attachments).await?;
    let message_id = Uuid::new_v5(&meta.command_id, b"message");
    let cmd = ChannelCommand::Post {
        message_id,
        text: input.text,
        parent_id: input.parent_id,
        mentions,
        attachments: input.attachments,
        client_message_id: input.client_message_id,
        at: Utc::now(),
    };
    let reply = run(state, by, channel, cmd, meta).await?;
    let event = reply
        .events
        .first()
        .ok_or_else(|| ApiError::conflict("the message was not recorded"))?;
    let mut body = message_json(channel, reply.position, event);
    attachments::show(state, sender, &mut body["attachments"], &mut HashMap::new()).await?;
    body["version"] = json!(reply.version);
    body["replayed"] = json!(reply.replayed);
    Ok(body)
}

/// Edits a message (its author only).
pub async fn edit_message(
    state: &AppState,
    by: Caller,
    channel: Uuid,
    message_id: Uuid,
    text: String,
    mentions: Vec<Uuid>,
    meta: CommandMeta,
) -> Result<CommandReply<Channel>, ApiError> {
    let mentions = mentions_in(&text, &mentions);
    members_only(state, by.organization_id, "mentions", &mentions)?;
    let cmd = ChannelCommand::Edit {
        message_id,
        text,
        mentions,
        at: Utc::now(),
    };
    run(state, by, channel, cmd, meta).await
}

/// Deletes a message (its author or an organization admin).
pub async fn delete_message(
    state: &AppState,
    by: Caller,
    channel: Uuid,
    message_id: Uuid,
    meta: CommandMeta,
) -> Result<CommandReply<Channel>, ApiError> {
    let cmd = ChannelCommand::Delete {
        message_id,
        at: Utc::now(),
    };
    run(state, by, channel, cmd, meta).await
}

/// Adds or removes the caller's reaction.
pub async fn react(
    state: &AppState,
    by: Caller,
    channel: Uuid,
    message_id: Uuid,
    emoji: String,
    add: bool,
    meta: CommandMeta,
) -> Result<CommandReply<Channel>, ApiError> {
    let cmd = ChannelCommand::React {
        message_id,
        emoji,
        add,
    };
    run(state, by, channel, cmd, meta).await
}

/// The channel of a message in the caller's organization, from the read model. A message
/// posted a moment ago may not be there yet: then the read model is given time (at most
/// 5 s) to reach the log's current end, so a client can react to or edit what it just sent.
/// Whether the caller may read the channel is the actor's decision.
pub async fn channel_of(state: &AppState, by: Caller, message_id: Uuid) -> Result<Uuid, ApiError> {
    let find = || async {
        sqlx::query_scalar::<_, Uuid>(
            "SELECT channel_id FROM channel_messages WHERE id = $1 AND organization_id = $2",
        )
        .bind(message_id)
        .bind(by.organization_id)
        .fetch_optional(&state.pool)
        .await
    };
    if let Some(channel) = find().await? {
        return Ok(channel);
    }
    let head = state
        .store
        .head_position()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    wait(state, READ_MODEL, Some(head)).await?;
    find()
        .await?
        .ok_or_else(|| ApiError::not_found("message not found"))
}

async fn post_and_answer(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    body: &web::Bytes,
    channel: Option<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let by = caller(who, Some(req))?;
    let mut input: NewMessage = parse_json(body)?;
    let channel = match (channel, input.channel_id) {
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => return Err(ApiError::validation("channel_id", "name the channel")),
    };
    input.channel_id = Some(channel);
    let meta = meta(req, who)?;
    idempotent(&state.pool, req, who, body, || async {
        let message = post_message(state, by, channel, input, meta.clone()).await?;
        let version = message["version"].as_i64().unwrap_or(0);
        let status = if message["replayed"] == json!(true) {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let position = message["position"].clone();
        Ok(Answer::new(
            status,
            json!({ "id": message["id"], "channel_id": channel, "version": version, "position": position, "message": message }),
            version,
        ))
    })
    .await
}

/// Posts a message in a channel the caller may write to.
#[utoipa::path(
    post,
    path = "/api/v1/channels/{id}/messages",
    tag = "messaging",
    request_body = NewMessage,
    params(("id" = Uuid, Path, description = "The channel"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Posted", body = super::schema::MessageSent),
        (status = 200, description = "Sent before with this `client_message_id`", body = super::schema::MessageSent),
    ),
)]
async fn post_in_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    post_and_answer(&state, &req, &who, &body, Some(path.into_inner())).await
}

/// Posts a message; the body names the channel (`channel_id`).
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messaging",
    request_body = NewMessage,
    params(super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Posted", body = super::schema::MessageSent),
        (status = 200, description = "Sent before with this `client_message_id`", body = super::schema::MessageSent),
    ),
)]
async fn post_message_route(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    post_and_answer(&state, &req, &who, &body, None).await
}

#[derive(Serialize, sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    channel_id: Uuid,
    seq: i64,
    author_id: Uuid,
    text: Option<String>,
    parent_id: Option<Uuid>,
    reply_count: i32,
    mentions: Vec<Uuid>,
    attachments: Value,
    client_message_id: Option<String>,
    created_at: DateTime<Utc>,
    edited_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    deleted: bool,
    position: i64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListMessages {
    /// The channel (under `/messages`; also `channelId`).
    #[serde(alias = "channelId")]
    channel_id: Option<Uuid>,
    /// Only the replies in this message's thread.
    #[serde(alias = "threadId")]
    thread: Option<Uuid>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page (messages after it).
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

async fn list(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    channel: Option<Uuid>,
    params: &ListMessages,
) -> Result<HttpResponse, ApiError> {
    let by = caller(who, Some(req))?;
    let channel = channel
        .or(params.channel_id)
        .ok_or_else(|| ApiError::bad_request("channel_id is required"))?;
    wait(state, READ_MODEL, params.min_position).await?;
    let page = Page::parse(params.limit, (100, 500), &params.cursor, 0)?;
    find_channel(state, by, channel).await?;
    let mut rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT id, channel_id, seq, author_id, text, parent_id, reply_count, mentions, \
         attachments, client_message_id, created_at, edited_at, deleted_at, \
         deleted_at IS NOT NULL AS deleted, position FROM channel_messages \
         WHERE channel_id = $1 AND seq > $2 AND ($4::uuid IS NULL OR parent_id = $4) \
         ORDER BY seq LIMIT $3",
    )
    .bind(channel)
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(params.thread)
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.seq);
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let reactions: Vec<(Uuid, String, i64, bool)> = sqlx::query_as(
        "SELECT message_id, emoji, count(*), bool_or(user_id = $2) FROM message_reactions \
         WHERE message_id = ANY($1) GROUP BY message_id, emoji ORDER BY message_id, emoji",
    )
    .bind(&ids)
    .bind(by.user_id)
    .fetch_all(&state.pool)
    .await?;
    let mut by_message: HashMap<Uuid, Vec<Value>> = HashMap::new();
    for (message, emoji, count, me) in reactions {
        by_message
            .entry(message)
            .or_default()
            .push(json!({ "emoji": emoji, "count": count, "me": me }));
    }
    let reader = reader_of(by);
    let mut files = HashMap::new();
    let mut items: Vec<Value> = Vec::with_capacity(rows.len());
    for r in rows {
        let id = r.id;
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["reactions"] = json!(by_message.remove(&id).unwrap_or_default());
        attachments::show(state, reader, &mut v["attachments"], &mut files).await?;
        items.push(v);
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// A channel's messages in order, with reply counts and reactions (per emoji: count and
/// whether the caller reacted); `?thread=` gives one thread's replies. Deleted messages keep
/// their place with no text.
#[utoipa::path(
    get,
    path = "/api/v1/channels/{id}/messages",
    tag = "messaging",
    params(("id" = Uuid, Path, description = "The channel"), ListMessages, super::schema::FluxstudioHeaders),
    responses((status = 200, description = "A page of messages", body = super::schema::ChannelMessagePage)),
)]
async fn list_in_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ListMessages>,
) -> Result<HttpResponse, ApiError> {
    list(&state, &req, &who, Some(path.into_inner()), &params).await
}

/// A channel's messages; the query names the channel (`channel_id`).
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messaging",
    params(ListMessages, super::schema::FluxstudioHeaders),
    responses((status = 200, description = "A page of messages", body = super::schema::ChannelMessagePage)),
)]
async fn list_messages_route(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ListMessages>,
) -> Result<HttpResponse, ApiError> {
    list(&state, &req, &who, None, &params).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EditMessage {
    #[serde(alias = "content")]
    #[schema(min_length = 1, max_length = 10000, pattern = r"^[^\u0000]*$")]
    text: String,
    #[serde(default)]
    #[schema(max_items = 50)]
    mentions: Vec<Uuid>,
}

/// Edits a message (its author only); the earlier texts stay in the log.
#[utoipa::path(
    patch,
    path = "/api/v1/messages/{mid}",
    tag = "messaging",
    request_body = EditMessage,
    params(("mid" = Uuid, Path, description = "The message"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Edited", body = super::schema::CommandResult)),
)]
async fn edit_message_route(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let mid = path.into_inner();
    let input: EditMessage = parse_json(&body)?;
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let channel = channel_of(&state, by, mid).await?;
        let reply = edit_message(
            &state,
            by,
            channel,
            mid,
            input.text.clone(),
            input.mentions.clone(),
            meta.clone(),
        )
        .await?;
        Ok(Answer::of(StatusCode::OK, channel, &reply))
    })
    .await
}

/// Deletes a message (its author or an organization admin): a tombstone without text.
#[utoipa::path(
    delete,
    path = "/api/v1/messages/{mid}",
    tag = "messaging",
    params(("mid" = Uuid, Path, description = "The message"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Deleted", body = super::schema::CommandResult)),
)]
async fn delete_message_route(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let mid = path.into_inner();
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let channel = channel_of(&state, by, mid).await?;
        let reply = delete_message(&state, by, channel, mid, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, channel, &reply))
    })
    .await
}

async fn reaction(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    (mid, emoji): (Uuid, String),
    body: &web::Bytes,
    add: bool,
) -> Result<HttpResponse, ApiError> {
    let by = caller(who, Some(req))?;
    let meta = meta(req, who)?;
    idempotent(&state.pool, req, who, body, || async {
        let channel = channel_of(state, by, mid).await?;
        let reply = react(state, by, channel, mid, emoji.clone(), add, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, channel, &reply))
    })
    .await
}

/// Adds the caller's reaction (once per emoji; again changes nothing).
#[utoipa::path(
    put,
    path = "/api/v1/messages/{mid}/reactions/{emoji}",
    tag = "messaging",
    params(("mid" = Uuid, Path, description = "The message"), ("emoji" = String, Path, description = "The emoji (URL-encoded)"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Reacted", body = super::schema::CommandResult)),
)]
async fn add_reaction(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    reaction(&state, &req, &who, path.into_inner(), &body, true).await
}

/// Takes the caller's reaction back.
#[utoipa::path(
    delete,
    path = "/api/v1/messages/{mid}/reactions/{emoji}",
    tag = "messaging",
    params(("mid" = Uuid, Path, description = "The message"), ("emoji" = String, Path, description = "The emoji (URL-encoded)"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Not reacting", body = super::schema::CommandResult)),
)]
async fn remove_reaction(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<(Uuid, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    reaction(&state, &req, &who, path.into_inner(), &body, false).await
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MarkRead {
    /// Read up to this message number (`seq`); the newest when absent.
    #[schema(minimum = 0)]
    seq: Option<u64>,
}

/// Moves the caller's read mark forward (the body is optional).
#[utoipa::path(
    post,
    path = "/api/v1/channels/{id}/read",
    tag = "messaging",
    request_body = Option<MarkRead>,
    params(("id" = Uuid, Path, description = "The channel"), super::schema::FluxstudioHeaders, super::schema::CommandHeaders),
    responses((status = 200, description = "Marked", body = super::schema::CommandResult)),
)]
async fn mark_read(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let by = caller(&who, Some(&req))?;
    let id = path.into_inner();
    let input: MarkRead = if body.iter().all(u8::is_ascii_whitespace) {
        MarkRead::default()
    } else {
        parse_json(&body)?
    };
    let meta = meta(&req, &who)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let cmd = ChannelCommand::MarkRead {
            seq: input.seq.unwrap_or(u64::MAX),
        };
        let reply = run(&state, by, id, cmd, meta.clone()).await?;
        Ok(Answer::of(StatusCode::OK, id, &reply))
    })
    .await
}

#[derive(Serialize, sqlx::FromRow)]
struct NotificationRow {
    id: Uuid,
    kind: String,
    channel_id: Uuid,
    message_id: Uuid,
    actor_id: Uuid,
    created_at: DateTime<Utc>,
    read_at: Option<DateTime<Utc>>,
    position: i64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListNotifications {
    /// Only unread ones.
    unread: Option<bool>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page (older ones).
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Answer only once the read model has reached this log position.
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

fn org_of(who: &Principal) -> Result<Uuid, ApiError> {
    who.organization_id
        .ok_or_else(|| ApiError::forbidden("no_organization", "log in to an organization"))
}

/// The caller's notifications in their organization, newest first (`kind`: `mention`,
/// `direct_message` or `thread_reply`), with the unread count. Any frontend.
#[utoipa::path(
    get,
    path = "/api/v1/shared/notifications",
    tag = "messaging",
    params(ListNotifications),
    responses((status = 200, description = "A page of notifications", body = super::schema::NotificationPage)),
)]
async fn list_notifications(
    state: web::Data<AppState>,
    who: Principal,
    params: web::Query<ListNotifications>,
) -> Result<HttpResponse, ApiError> {
    let org = org_of(&who)?;
    wait(&state, READ_MODEL, params.min_position).await?;
    let page = Page::parse(params.limit, (50, 200), &params.cursor, i64::MAX)?;
    let mut rows: Vec<NotificationRow> = sqlx::query_as(
        "SELECT id, kind, channel_id, message_id, actor_id, created_at, read_at, position \
         FROM notifications WHERE user_id = $1 AND organization_id = $2 AND position < $3 \
         AND (NOT coalesce($5, false) OR read_at IS NULL) ORDER BY position DESC, id LIMIT $4",
    )
    .bind(who.user_id)
    .bind(org)
    .bind(page.cursor)
    .bind(page.fetch())
    .bind(params.unread)
    .fetch_all(&state.pool)
    .await?;
    let unread: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND organization_id = $2 \
         AND read_at IS NULL",
    )
    .bind(who.user_id)
    .bind(org)
    .fetch_one(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.position);
    Ok(HttpResponse::Ok()
        .json(json!({ "items": rows, "unread_count": unread, "next_cursor": next_cursor })))
}

async fn inbox(
    state: &AppState,
    req: &HttpRequest,
    who: &Principal,
    cmd: InboxCommand,
) -> Result<Answer, ApiError> {
    let meta = meta(req, who)?;
    let reply = state
        .registries
        .inboxes
        .execute(who.user_id, cmd, None, meta)
        .await
        .map_err(|e| command_error(e, channel_error))?;
    Ok(Answer::of(StatusCode::OK, who.user_id, &reply))
}

/// Marks one notification read.
#[utoipa::path(
    post,
    path = "/api/v1/shared/notifications/{id}/read",
    tag = "messaging",
    params(("id" = Uuid, Path, description = "The notification"), super::schema::CommandHeaders),
    responses((status = 200, description = "Read", body = super::schema::CommandResult)),
)]
async fn read_notification(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = org_of(&who)?;
    let id = path.into_inner();
    let mine: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM notifications WHERE id = $1 AND user_id = $2 AND organization_id = $3",
    )
    .bind(id)
    .bind(who.user_id)
    .bind(org)
    .fetch_optional(&state.pool)
    .await?;
    if mine.is_none() {
        return Err(ApiError::not_found("notification not found"));
    }
    idempotent(&state.pool, &req, &who, &body, || {
        inbox(
            &state,
            &req,
            &who,
            InboxCommand::Read {
                notification_ids: vec![id],
                at: Utc::now(),
            },
        )
    })
    .await
}

/// Marks every notification recorded so far read.
#[utoipa::path(
    post,
    path = "/api/v1/shared/notifications/read-all",
    tag = "messaging",
    params(super::schema::CommandHeaders),
    responses((status = 200, description = "All read", body = super::schema::CommandResult)),
)]
async fn read_all_notifications(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    org_of(&who)?;
    let head = state
        .store
        .head_position()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    idempotent(&state.pool, &req, &who, &body, || {
        inbox(
            &state,
            &req,
            &who,
            InboxCommand::ReadAll {
                up_to: head,
                at: Utc::now(),
            },
        )
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_come_from_the_text_and_the_list_once_each() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let text = format!("hi <@{a}> and <@{b}>, <@{a}> again, <@nobody> <@");
        assert_eq!(mentions_in(&text, &[b]), vec![a, b]);
    }
}
