//! The Socket.IO namespace `/messaging` beyond its rooms (`channel:join`/`channel:leave`,
//! see `socketio`): commands sent over the socket, typing and presence, and notifications.
//!
//! - `message:send` (`{channel_id, text, parent_id?, mentions?, attachments?,
//!   client_message_id?}`), `message:edit` (`{message_id, text}`), `message:delete`
//!   (`{message_id}`) and `message:react` (`{message_id, emoji, add?}`) go through the same
//!   functions as HTTP (validation, permissions, idempotency by `client_message_id`); the
//!   ack is `{ok: true, message}` or `{ok: false, error: {code, message, status, details}}`;
//!   an argument that is not an object is refused as `validation_failed` (422) on the field
//!   `argument`, one with missing or mistyped fields as `validation_failed` too.
//! - `typing:start` / `typing:stop` (`{channel_id}`, a joined channel) reach the others in
//!   the channel's room on every process, never stored; a user's tabs on one process send
//!   at most one `typing:start` per channel every [`TYPING_EVERY`], receivers drop a typing
//!   state after `ttl_ms` unless it is refreshed, and a closing connection ends its typing.
//! - `presence:list` answers the organization's users connected now; `user:online` and
//!   `user:offline` announce changes (a user's first and last connection, over all tabs and
//!   processes).
//! - `notification:new` reaches a user's sockets whether or not they joined the room: a
//!   mention, a direct message, or a reply in their thread.
//! - `message:new` of a message naming files carries its attachments as the receiving user
//!   may see them at delivery (`crate::files::attachments`).
//! - `file:uploaded`, `file:updated` (`change`: `version`, `renamed`, `moved`, `restored`)
//!   and `file:deleted` reach every connection of the organization whose user may read the
//!   file at delivery, as the HTTP routes decide (see [`announce_files`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use universal_events::messaging::MessagingEvent;
use universal_events::EventFamily;
use uuid::Uuid;

use actix_web::web;
use tokio::sync::mpsc;
use universal_events::file::{FileAccess, FileEvent};

use crate::actors::CommandMeta;
use crate::files::access::user_access;
use crate::files::attachments::{content_url, show_or_hide, Reader};
use crate::gateways::socketio::{Namespace, Push};
use crate::http::guard::Principal;
use crate::http::messaging::{
    caller, channel_of, delete_message, edit_message, post_message, react, NewMessage,
};
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::{Filter, RecordedEvent, Subscription};

/// A connection's `typing:start` for one channel goes out at most this often.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);
/// How long receivers keep a typing state without a refresh.
pub const TYPING_TTL: Duration = Duration::from_secs(5);

pub fn failed(e: ApiError) -> Value {
    json!({ "ok": false, "error": { "code": e.code, "message": e.message, "status": e.status.as_u16(), "details": e.details } })
}

/// The argument of a command: an object of the command's fields (a missing argument, a
/// number or a list is refused by name, not by the decoder's wording).
fn parse<T: for<'de> Deserialize<'de>>(input: Value) -> Result<T, ApiError> {
    let kind = match &input {
        Value::Object(_) => None,
        Value::Null => Some("nothing"),
        Value::Bool(_) => Some("a boolean"),
        Value::Number(_) => Some("a number"),
        Value::String(_) => Some("a string"),
        Value::Array(_) => Some("an array"),
    };
    if let Some(kind) = kind {
        return Err(ApiError::validation(
            "argument",
            format!("must be an object of the command's fields, not {kind}"),
        ));
    }
    serde_json::from_value(input).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.to_string(),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    #[serde(alias = "messageId")]
    message_id: Uuid,
    #[serde(alias = "content")]
    text: String,
    #[serde(default)]
    mentions: Vec<Uuid>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(alias = "messageId")]
    message_id: Uuid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct React {
    #[serde(alias = "messageId")]
    message_id: Uuid,
    emoji: String,
    #[serde(default = "yes")]
    add: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Typing {
    #[serde(alias = "channelId")]
    channel_id: Uuid,
}

/// Handles a client event of `/messaging`; returns the ack.
pub async fn on_event(
    state: &AppState,
    _ns: &Namespace,
    who: &Principal,
    rooms: &HashSet<Uuid>,
    typing: &mut HashMap<Uuid, Instant>,
    name: &str,
    input: Value,
) -> Value {
    match handle(state, who, rooms, typing, name, input).await {
        Ok(v) => v,
        Err(e) => failed(e),
    }
}

async fn handle(
    state: &AppState,
    who: &Principal,
    rooms: &HashSet<Uuid>,
    typing: &mut HashMap<Uuid, Instant>,
    name: &str,
    input: Value,
) -> Result<Value, ApiError> {
    let by = caller(who, None)?;
    let meta = || {
        let mut m = CommandMeta::new();
        m.correlation_id = Some(format!("socket:{name}"));
        m
    };
    match name {
        "message:send" => {
            let message: NewMessage = parse(input)?;
            let channel = message
                .channel_id
                .ok_or_else(|| ApiError::validation("channel_id", "name the channel"))?;
            let stored = post_message(state, by, channel, message, meta()).await?;
            Ok(json!({ "ok": true, "message": stored }))
        }
        "message:edit" => {
            let edit: Edit = parse(input)?;
            let channel = channel_of(state, by, edit.message_id).await?;
            let reply = edit_message(
                state,
                by,
                channel,
                edit.message_id,
                edit.text,
                edit.mentions,
                meta(),
            )
            .await?;
            Ok(
                json!({ "ok": true, "id": edit.message_id, "channel_id": channel, "position": reply.position }),
            )
        }
        "message:delete" => {
            let target: Target = parse(input)?;
            let channel = channel_of(state, by, target.message_id).await?;
            let reply = delete_message(state, by, channel, target.message_id, meta()).await?;
            Ok(
                json!({ "ok": true, "id": target.message_id, "channel_id": channel, "position": reply.position }),
            )
        }
        "message:react" => {
            let r: React = parse(input)?;
            let channel = channel_of(state, by, r.message_id).await?;
            let reply = react(state, by, channel, r.message_id, r.emoji, r.add, meta()).await?;
            Ok(
                json!({ "ok": true, "id": r.message_id, "channel_id": channel, "position": reply.position }),
            )
        }
        "typing:start" | "typing:stop" => {
            let t: Typing = parse(input)?;
            if !rooms.contains(&t.channel_id) {
                return Err(ApiError::validation(
                    "channel_id",
                    "join the channel (channel:join) first",
                ));
            }
            let start = name == "typing:start";
            if start {
                if !state
                    .signals
                    .typing_due(by.user_id, t.channel_id, TYPING_EVERY)
                {
                    return Ok(json!({ "ok": true, "throttled": true }));
                }
                if typing.len() >= 1000 {
                    typing.clear();
                }
                typing.insert(t.channel_id, Instant::now());
            } else {
                typing.remove(&t.channel_id);
            }
            let signal = typing_signal(by.organization_id, t.channel_id, by.user_id, start);
            state.signals.publish(&signal).await;
            Ok(json!({ "ok": true }))
        }
        "presence:list" => {
            let users = state
                .signals
                .online(by.organization_id)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            Ok(json!({ "ok": true, "users": users }))
        }
        other => Err(ApiError::bad_request(format!("unknown event `{other}`"))),
    }
}

/// Whether a channel event concerns `user` (a user id) outside the rooms they joined: a
/// message that notifies them, or their removal from the channel. Reads the event's JSON
/// without decoding it, as every connection of the organization asks this of every event.
pub fn concerns(event: &RecordedEvent, user: &str) -> bool {
    let named = |v: &Value| v.as_str() == Some(user);
    match event.event_type.as_str() {
        "MessagePosted" => event
            .data
            .get("notify")
            .and_then(Value::as_array)
            .is_some_and(|n| n.iter().any(named)),
        "ChannelMemberRemoved" => event.data.get("user_id").is_some_and(named),
        _ => false,
    }
}

/// The signal of `user` starting or stopping to type in `channel`.
pub fn typing_signal(org: Uuid, channel: Uuid, user: Uuid, typing: bool) -> Value {
    json!({
        "type": "typing", "organization_id": org, "channel_id": channel,
        "user_id": user, "typing": typing,
    })
}

/// The channels where a connection's last `typing:start` has not expired yet; empties
/// `typing`.
pub fn still_typing(typing: &mut HashMap<Uuid, Instant>) -> Vec<Uuid> {
    typing
        .drain()
        .filter(|(_, at)| at.elapsed() < TYPING_TTL)
        .map(|(channel, _)| channel)
        .collect()
}

fn packet(nsp: &str, name: &str, data: Value) -> String {
    format!("2{nsp},{}", json!([name, data]))
}

/// The packet of a typing or presence signal for this connection, if it concerns it.
pub fn signal(nsp: &str, who: &Principal, rooms: &HashSet<Uuid>, signal: &Value) -> Option<String> {
    let user = signal.get("user_id").and_then(Value::as_str)?;
    match signal.get("type").and_then(Value::as_str)? {
        "typing" => {
            let channel = signal
                .get("channel_id")
                .and_then(Value::as_str)
                .and_then(|c| Uuid::parse_str(c).ok())?;
            if !rooms.contains(&channel) || user == who.user_id.to_string() {
                return None;
            }
            let start = signal.get("typing").and_then(Value::as_bool) == Some(true);
            let name = if start { "typing:start" } else { "typing:stop" };
            Some(packet(
                nsp,
                name,
                json!({ "channel_id": channel, "user_id": user, "ttl_ms": TYPING_TTL.as_millis() as u64 }),
            ))
        }
        "presence" => {
            let online = signal.get("online").and_then(Value::as_bool) == Some(true);
            let name = if online {
                "user:online"
            } else {
                "user:offline"
            };
            Some(packet(nsp, name, json!({ "user_id": user })))
        }
        _ => None,
    }
}

/// For a stored event: `notification:new` when a message notifies this connection's user,
/// and leaving the room of a private channel the user was removed from.
pub fn notification(
    nsp: &str,
    who: &Principal,
    rooms: &mut HashSet<Uuid>,
    event: &RecordedEvent,
    with_offset: bool,
) -> Option<String> {
    let channel = event
        .stream_id
        .strip_prefix("channel-")
        .and_then(|c| Uuid::parse_str(c).ok())?;
    match MessagingEvent::decode_ref(&event.event_type, event.schema_version, &event.data).ok()? {
        MessagingEvent::MessagePosted(p) if p.notify.contains(&who.user_id) => {
            let kind = if p.mentions.contains(&who.user_id) {
                "mention"
            } else if p.parent_id.is_some() {
                "thread_reply"
            } else {
                "direct_message"
            };
            let data = json!({
                "kind": kind, "channel_id": channel, "message_id": p.message_id,
                "actor_id": p.author_id, "position": event.position,
            });
            Some(if with_offset {
                format!(
                    "2{nsp},{}",
                    json!(["notification:new", data, event.position.to_string()])
                )
            } else {
                packet(nsp, "notification:new", data)
            })
        }
        MessagingEvent::ChannelMemberRemoved(m) if m.user_id == who.user_id => {
            rooms.remove(&channel);
            None
        }
        _ => None,
    }
}

/// A stored event of `/messaging` as this connection's user receives it: a `MessagePosted`
/// naming files goes with its attachments as the user may see them now (see
/// `crate::files::attachments`); any other event as it is.
pub async fn with_attachments(state: &AppState, org: Uuid, user: Uuid, e: RecordedEvent) -> Push {
    let names_file = e.event_type == "MessagePosted"
        && e.data
            .get("attachments")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x.get("file_id").is_some()));
    if !names_file {
        return Push::Event(e);
    }
    let reader = Reader {
        organization_id: org,
        user_id: user,
        role: state.access.role_of(org, user),
    };
    let mut shown = e.data["attachments"].clone();
    show_or_hide(state, reader, &mut shown).await;
    Push::Shown(e, shown)
}

/// The file events `/messaging` announces.
pub const FILE_EVENTS: [&str; 5] = [
    "FileUploaded",
    "FileRenamed",
    "FileMoved",
    "FileVersionRestored",
    "FileDeleted",
];

/// Starts the task announcing the organization's files to one connection of `/messaging`
/// (`file:uploaded`, `file:updated`, `file:deleted`), from the log's live feed, so that a
/// change made through any process reaches the sockets of every process. Each event is
/// checked against the user's access to the file when it is delivered (see
/// [`file_packet`]).
pub fn announce_files(
    state: web::Data<AppState>,
    org: Uuid,
    user: Uuid,
    path: &'static str,
    tx: mpsc::Sender<(&'static str, Push)>,
) -> tokio::task::JoinHandle<()> {
    let head = *state.store.head_watch().borrow();
    let filter = Filter {
        categories: Some(vec!["file".to_owned()]),
        event_types: Some(FILE_EVENTS.iter().map(|t| t.to_string()).collect()),
        organization: Some(org),
        ..Filter::default()
    };
    let mut sub =
        Subscription::new(state.store.clone(), head, filter).with_live_feed(state.live.clone());
    actix_web::rt::spawn(async move {
        loop {
            match sub.next().await {
                Ok(e) => {
                    let Some(p) = file_packet(&state, org, user, path, &e).await else {
                        continue;
                    };
                    if tx.send((path, Push::Packet(p))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "socket.io file feed read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    })
}

/// The announcement of a file event for `user`, if the user may read the file now (as the
/// HTTP routes decide; a deleted file: if they could read it before it was deleted).
/// Nothing when they may not, or when access cannot be decided now.
pub async fn file_packet(
    state: &AppState,
    org: Uuid,
    user: Uuid,
    nsp: &str,
    e: &RecordedEvent,
) -> Option<String> {
    let id = e
        .stream_id
        .strip_prefix("file-")
        .and_then(|id| Uuid::parse_str(id).ok())?;
    let event = FileEvent::decode_ref(&e.event_type, e.schema_version, &e.data).ok()?;
    let (_, mut file) = state.registries.files.inspect(id).await.ok()?;
    let deleted = matches!(event, FileEvent::FileDeleted(_));
    if deleted {
        file.deleted = false;
    }
    let role = state.access.role_of(org, user);
    let access = user_access(state, user, role, org, &file).await.ok()??;
    if access < FileAccess::View {
        return None;
    }
    let current = file.current();
    let mut data = json!({
        "file_id": id,
        "project_id": file.project_id,
        "name": file.name,
        "version": current.map(|(v, _)| v),
        "size": current.map(|(_, v)| v.content.size),
        "content_type": current.map(|(_, v)| v.content.mime_type.clone()),
        "url": content_url(id),
        "by": e.metadata.get("user_id"),
        "position": e.position,
        "event_type": e.event_type,
        "recorded_at": e.recorded_at,
    });
    let (name, change) = match &event {
        FileEvent::FileUploaded(u) if u.version == 1 => ("file:uploaded", None),
        FileEvent::FileUploaded(_) => ("file:updated", Some("version")),
        FileEvent::FileRenamed(_) => ("file:updated", Some("renamed")),
        FileEvent::FileMoved(_) => ("file:updated", Some("moved")),
        FileEvent::FileVersionRestored(_) => ("file:updated", Some("restored")),
        FileEvent::FileDeleted(_) => ("file:deleted", None),
        _ => return None,
    };
    if let Some(change) = change {
        data["change"] = json!(change);
    }
    if deleted {
        // Its content is no longer served.
        data["url"] = Value::Null;
    }
    Some(packet(nsp, name, data))
}
