//! The Pusher Channels protocol (v7), so that `pusher-js` connects with only its host options
//! changed (`wsHost`, `wsPort`, `forceTLS: false`, `enabledTransports: ['ws']`), and Pusher's
//! server libraries publish through the HTTP API:
//!
//! - `GET /app/{key}?protocol=7`: the socket. `pusher:connection_established` with the socket
//!   id and `activity_timeout` (`WS_HEARTBEAT_INTERVAL`); `pusher:ping`/`pusher:pong` both
//!   ways; `pusher:subscribe`/`unsubscribe` for public, `private-` and `presence-` channels;
//!   client events (`client-*`) on private and presence channels the socket is subscribed
//!   to. A socket silent for `activity_timeout` is sent `pusher:ping`, and closed with 4201
//!   when nothing comes back within the same time again.
//! - `POST /pusher/auth`: signs a subscription for the bearer of an access token, for the
//!   channels `gateways::pusher::may_join` allows, and records the grant.
//! - `POST /apps/{app_id}/events`, `POST /apps/{app_id}/batch_events`,
//!   `GET /apps/{app_id}/channels[/{channel}[/users]]`: the HTTP API, signed as Pusher's
//!   (`auth_key`, `auth_timestamp` within 600 s, `auth_version=1.0`, `body_md5`,
//!   `auth_signature`).
//!
//! Errors on the socket are those of the protocol: `pusher:error` with the code, followed by
//! a close with the same code where the protocol closes (4001 unknown app key, 4007
//! unsupported protocol version, 4100 over capacity or too slow a reader, 4201 no pong);
//! 4301 (client messages over `WS_RATE_LIMIT_PER_MINUTE`) and 4009 (a subscription whose
//! authorization was revoked) leave the connection open. A refused or revoked subscription
//! gets `pusher:subscription_error` on its channel (`{type, error, status}`), which
//! pusher-js hands to the channel's `pusher:subscription_error` handlers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::gateways::pusher::{
    self as hub, may_join, valid_channel, valid_event, valid_socket_id, ChannelKind, Frame, Grant,
    Outlet, PresenceError, MAX_BATCH, MAX_CHANNELS_PER_EVENT, MAX_DATA,
};
use crate::gateways::{self, MessageLimit};
use crate::http::guard::Principal;
use crate::http::ApiError;
use crate::state::AppState;

/// Largest frame a client may send.
const MAX_FRAME: usize = 32 * 1024;
/// Frames waiting for one socket.
const QUEUE: usize = 256;
/// Most channels one socket may be subscribed to.
const MAX_SUBSCRIPTIONS: usize = 100;
/// A client that takes no frame for this long is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait to send a last error frame and the close frame to a closing socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Why a slow reader is closed.
const TOO_SLOW: &str = "client too slow: its queue of messages is full";
/// Longest wait for the hub while handling one client message.
const HUB_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers the Pusher routes (outside `/api/v1`: the paths are the protocol's).
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Static prefixes first, so that other requests skip these patterns cheaply.
    cfg.service(web::scope("/app").route("/{key}", web::get().to(connect)))
        .route("/pusher/auth", web::post().to(auth))
        .service(
            web::scope("/apps").service(
                web::scope("/{app_id}")
                    .route("/events", web::post().to(events))
                    .route("/batch_events", web::post().to(batch_events))
                    .route("/channels", web::get().to(channels))
                    .route("/channels/{channel}", web::get().to(channel))
                    .route("/channels/{channel}/users", web::get().to(channel_users)),
            ),
        );
}

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "feature_disabled",
        "the Pusher gateway is disabled on this server (PUSHER_ENABLED=false)",
    )
}

// ---------------------------------------------------------------------------------------
// The socket

/// A Pusher client socket.
///
/// pusher-js connects with `new Pusher(key, { wsHost, wsPort, forceTLS: false,
/// enabledTransports: ['ws'], cluster, authEndpoint: '/pusher/auth', auth: { headers: {
/// Authorization: 'Bearer …' } } })`. Answers 101 Switching Protocols on a WebSocket
/// handshake; an unknown key or protocol version is refused on the socket itself
/// (`pusher:error` 4001 or 4007, then a close with that code), as the protocol does.
#[utoipa::path(
    get,
    path = "/app/{key}",
    tag = "live",
    security(()),
    params(
        ("key" = String, Path, description = "The app key (`PUSHER_KEY`)"),
        ("protocol" = Option<String>, Query, description = "Pusher protocol version: `7` (5 to 7 accepted)"),
        ("client" = Option<String>, Query, description = "Client library name, e.g. `js`"),
        ("version" = Option<String>, Query, description = "Client library version"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "Not a WebSocket handshake", body = crate::http::schema::ErrorBody),
        (status = 404, description = "The Pusher gateway is disabled on this server", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
    key: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    if !state.pusher.settings.enabled {
        return Err(disabled());
    }
    let (response, session, stream) = gateways::upgrade(&req, body, MAX_FRAME).await?;
    let protocol = query.get("protocol").and_then(|p| p.parse::<u32>().ok());
    let refusal = if *key != state.pusher.settings.key {
        Some((
            4001,
            format!("App key {} not in this cluster", key.as_str()),
        ))
    } else if !matches!(protocol, Some(5..=7)) {
        Some((4007, "Unsupported protocol version: use 7".to_owned()))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        actix_web::rt::spawn(refuse(session, code, message));
        return Ok(response);
    }
    let slot = match state.gateways.admit() {
        Ok(slot) => slot,
        Err(_) => {
            let message = format!(
                "Over capacity: the server holds its maximum of {} socket connections",
                state.gateways.max_connections
            );
            actix_web::rt::spawn(refuse(session, 4100, message));
            return Ok(response);
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let outlet = Outlet {
        tx,
        overflow: Arc::new(Notify::new()),
    };
    let conn = Connection {
        limit: state.gateways.message_limit(),
        state: state.clone(),
        session,
        socket_id: hub::new_socket_id(),
        outlet,
        subs: HashMap::new(),
    };
    actix_web::rt::spawn(async move {
        let _slot = slot;
        conn.run(stream, rx).await;
    });
    Ok(response)
}

fn pusher_error(code: Option<u16>, message: &str) -> String {
    json!({ "event": "pusher:error", "data": { "code": code, "message": message } }).to_string()
}

fn close_with(code: u16, message: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code: CloseCode::Other(code),
        description: Some(message.to_owned()),
    })
}

/// Sends `pusher:error` with `code` and closes with the same code.
async fn refuse(mut session: actix_ws::Session, code: u16, message: String) {
    let _ = session.text(pusher_error(Some(code), &message)).await;
    let _ = session.close(close_with(code, &message)).await;
}

fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": kind, "error": error, "status": status },
    })
    .to_string()
}

/// One subscription of a socket.
struct Sub {
    /// Who authorized it through `/pusher/auth`, for private and presence channels.
    grant: Option<Grant>,
    /// The member's user id, on presence channels.
    user_id: Option<String>,
}

struct Connection {
    state: web::Data<AppState>,
    session: actix_ws::Session,
    socket_id: String,
    outlet: Outlet,
    subs: HashMap<String, Sub>,
    limit: MessageLimit,
}

#[derive(Deserialize)]
struct Incoming {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    channel: Option<String>,
}

/// What handling a message asks of the connection.
enum Next {
    Go,
    Close(Option<CloseReason>),
}

impl Connection {
    async fn run(mut self, mut stream: actix_ws::MessageStream, mut rx: mpsc::Receiver<Frame>) {
        let activity = self.state.gateways.heartbeat;
        let established = json!({
            "event": "pusher:connection_established",
            "data": json!({ "socket_id": self.socket_id, "activity_timeout": activity.as_secs() }).to_string(),
        });
        if self.session.text(established.to_string()).await.is_err() {
            return;
        }
        let mut changes = self.state.access.changes();
        let overflow = self.outlet.overflow.clone();
        let timer = tokio::time::sleep(activity);
        tokio::pin!(timer);
        let mut pinged = false;
        let reason = loop {
            tokio::select! {
                incoming = stream.next() => {
                    timer.as_mut().reset(Instant::now() + activity);
                    pinged = false;
                    match incoming {
                        None => break None,
                        Some(Ok(Message::Text(text))) => {
                            if let Next::Close(reason) = self.on_text(&text).await {
                                break reason;
                            }
                        }
                        Some(Ok(Message::Ping(bytes))) => {
                            if self.session.pong(&bytes).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if self.send(pusher_error(None, "send JSON text frames")).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Close(reason))) => break reason,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Some(gateways::close_for(&e, MAX_FRAME)),
                    }
                }
                Some(frame) = rx.recv() => {
                    // While this send waits for a slow client, its queue may fill up: the
                    // overflow bell ends the wait (and the connection) at once.
                    let sent = tokio::select! {
                        sent = tokio::time::timeout(SEND_TIMEOUT, self.session.text(frame.to_string())) => sent,
                        _ = overflow.notified() => break close_with(4100, TOO_SLOW),
                    };
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => break close_with(4100, "client too slow: nothing read for 30 s"),
                    }
                }
                _ = overflow.notified() => {
                    let _ = self.send_within(pusher_error(Some(4100), TOO_SLOW), CLOSE_TIMEOUT).await;
                    break close_with(4100, TOO_SLOW);
                }
                Ok(()) = changes.changed() => {
                    if let Next::Close(reason) = self.recheck().await {
                        break reason;
                    }
                }
                _ = &mut timer => {
                    if pinged {
                        let why = "Pong reply not received";
                        let _ = self.send_within(pusher_error(Some(4201), why), CLOSE_TIMEOUT).await;
                        break close_with(4201, why);
                    }
                    pinged = true;
                    timer.as_mut().reset(Instant::now() + activity);
                    let ping = json!({ "event": "pusher:ping", "data": "{}" }).to_string();
                    if self.send(ping).await.is_err() {
                        break None;
                    }
                }
            }
        };
        // A client that reads nothing has a full pipe: the close frame gets a short bound.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.clone().close(reason)).await;
        let hub = self.state.pusher.clone();
        for (channel, sub) in self.subs.drain() {
            hub.leave(&self.socket_id, &channel, sub.user_id.as_deref())
                .await;
        }
        hub.forget_socket(&self.socket_id).await;
    }

    /// Sends one frame; a client that takes nothing for [`SEND_TIMEOUT`] counts as gone.
    async fn send(&mut self, text: String) -> Result<(), ()> {
        self.send_within(text, SEND_TIMEOUT).await
    }

    async fn send_within(&mut self, text: String, limit: Duration) -> Result<(), ()> {
        match tokio::time::timeout(limit, self.session.text(text)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Sends frames; a closed socket ends the connection.
    async fn send_all(&mut self, frames: Vec<String>) -> Next {
        for f in frames {
            if self.send(f).await.is_err() {
                return Next::Close(None);
            }
        }
        Next::Go
    }

    async fn on_text(&mut self, text: &str) -> Next {
        if !self.limit.allow() {
            let why = format!(
                "Client event rejected due to rate limit: at most {} messages per minute",
                self.limit.per_minute
            );
            return self.send_all(vec![pusher_error(Some(4301), &why)]).await;
        }
        let msg: Incoming = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                let why = format!("not a Pusher message: {e}");
                return self.send_all(vec![pusher_error(None, &why)]).await;
            }
        };
        let frames = match msg.event.as_str() {
            "pusher:ping" => vec![json!({ "event": "pusher:pong", "data": "{}" }).to_string()],
            "pusher:pong" => vec![],
            "pusher:subscribe" => self.subscribe(&msg.data).await,
            "pusher:unsubscribe" => {
                let channel = msg.data.get("channel").and_then(Value::as_str);
                if let Some(sub) = channel.and_then(|c| self.subs.remove(c)) {
                    let channel = channel.unwrap_or_default();
                    let hub = self.state.pusher.clone();
                    hub.leave(&self.socket_id, channel, sub.user_id.as_deref())
                        .await;
                }
                vec![]
            }
            e if e.starts_with("client-") => self.client_event(&msg).await,
            other => vec![pusher_error(None, &format!("unsupported event `{other}`"))],
        };
        self.send_all(frames).await
    }

    /// Handles `pusher:subscribe`; returns the frames to answer with.
    async fn subscribe(&mut self, data: &Value) -> Vec<String> {
        let Some(channel) = data.get("channel").and_then(Value::as_str) else {
            return vec![pusher_error(None, "pusher:subscribe needs data.channel")];
        };
        let channel = channel.to_owned();
        if !valid_channel(&channel) {
            return vec![subscription_error(
                &channel,
                "InvalidChannel",
                "channel names are 1 to 200 of A-Z a-z 0-9 _ - = @ , . ;",
                400,
            )];
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS && !self.subs.contains_key(&channel) {
            return vec![subscription_error(
                &channel,
                "LimitReached",
                &format!("at most {MAX_SUBSCRIPTIONS} channels per connection"),
                400,
            )];
        }
        let kind = ChannelKind::of(&channel);
        let hub = self.state.pusher.clone();
        let auth = data.get("auth").and_then(Value::as_str).unwrap_or("");
        let channel_data = data.get("channel_data").and_then(Value::as_str);
        let mut grant = None;
        let mut member = None;
        match kind {
            ChannelKind::Public => {}
            ChannelKind::Encrypted => {
                return vec![subscription_error(
                    &channel,
                    "UnsupportedChannel",
                    "encrypted channels are not supported by this server",
                    400,
                )]
            }
            ChannelKind::Private | ChannelKind::Presence => {
                let signed_data = if kind == ChannelKind::Presence {
                    let Some(d) = channel_data else {
                        return vec![subscription_error(
                            &channel,
                            "AuthError",
                            "presence subscriptions need channel_data",
                            401,
                        )];
                    };
                    Some(d)
                } else {
                    None
                };
                if !hub
                    .settings
                    .check_channel_auth(&self.socket_id, &channel, signed_data, auth)
                {
                    return vec![subscription_error(
                        &channel,
                        "AuthError",
                        "invalid signature: authorize through POST /pusher/auth",
                        401,
                    )];
                }
                if let Some(d) = signed_data {
                    let parsed: Value = serde_json::from_str(d).unwrap_or(Value::Null);
                    let user_id = match &parsed["user_id"] {
                        Value::String(s) if !s.is_empty() && s.len() <= 128 => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            return vec![subscription_error(
                                &channel,
                                "AuthError",
                                "channel_data needs a user_id",
                                400,
                            )]
                        }
                    };
                    let info = parsed.get("user_info").cloned().unwrap_or(Value::Null);
                    member = Some((user_id, info));
                }
                // A grant is there when our auth endpoint signed; a signature made by server
                // code with the secret (e.g. a Pusher library) has none and cannot be revoked.
                grant =
                    match tokio::time::timeout(HUB_TIMEOUT, hub.granted(&self.socket_id, &channel))
                        .await
                    {
                        Ok(Ok(g)) => g,
                        _ => {
                            return vec![subscription_error(
                                &channel,
                                "ServerError",
                                "temporarily unavailable; retry",
                                503,
                            )]
                        }
                    };
                if let Some(g) = &grant {
                    let check = |state: &AppState| {
                        g.principal()
                            .refreshed(state)
                            .map_err(|e| e.message)
                            .and_then(|p| may_join(&p, &channel))
                    };
                    let mut still = check(&self.state);
                    // A refusal never rests on a stale view: the grant may come from another
                    // process that has seen a change this one has not applied yet.
                    if still.is_err()
                        && self
                            .state
                            .access
                            .sync(self.state.store.as_ref())
                            .await
                            .is_ok()
                    {
                        still = check(&self.state);
                    }
                    if let Err(why) = still {
                        return vec![subscription_error(&channel, "AuthError", &why, 403)];
                    }
                }
            }
        }
        let already = self.subs.contains_key(&channel);
        hub.join_local(&channel, &self.socket_id, self.outlet.clone());
        let data = match &member {
            None => {
                if !already {
                    if let Err(e) = hub.record(&self.socket_id, &channel).await {
                        // Delivery does not depend on the record; the channels API does.
                        tracing::warn!(error = %e, channel, "subscription not recorded");
                    }
                }
                "{}".to_owned()
            }
            Some((user_id, info)) => {
                // Subscribing again changes nothing: the members as they are, no announcement.
                let joined = match already {
                    true => hub
                        .members(&channel)
                        .await
                        .map_err(|_| PresenceError::Unavailable),
                    false => {
                        hub.presence_join(&self.socket_id, &channel, user_id, info)
                            .await
                    }
                };
                match joined {
                    Ok(members) => json!({ "presence": members }).to_string(),
                    Err(e) => {
                        if !already {
                            hub.leave_local(&channel, &self.socket_id);
                        }
                        let (why, status) = match e {
                            PresenceError::Full => ("the presence channel is full", 400),
                            PresenceError::Unavailable => ("temporarily unavailable; retry", 503),
                        };
                        return vec![subscription_error(&channel, "LimitReached", why, status)];
                    }
                }
            }
        };
        // A repeated subscription keeps the member it joined as.
        let user_id = match self.subs.get(&channel) {
            Some(before) => before.user_id.clone(),
            None => member.map(|(u, _)| u),
        };
        self.subs.insert(channel.clone(), Sub { grant, user_id });
        vec![json!({
            "event": "pusher_internal:subscription_succeeded",
            "channel": channel,
            "data": data,
        })
        .to_string()]
    }

    /// A `client-*` event: to the other subscribers of a private or presence channel this
    /// socket is subscribed to.
    async fn client_event(&mut self, msg: &Incoming) -> Vec<String> {
        let Some(channel) = msg.channel.as_deref() else {
            return vec![pusher_error(None, "client events need a channel")];
        };
        let Some(sub) = self.subs.get(channel) else {
            return vec![pusher_error(
                None,
                &format!("client event on {channel}, which this connection is not subscribed to"),
            )];
        };
        if ChannelKind::of(channel) == ChannelKind::Public {
            return vec![pusher_error(
                None,
                "client events are allowed on private and presence channels only",
            )];
        }
        if !valid_event(&msg.event) {
            return vec![pusher_error(None, "event names are 1 to 200 bytes")];
        }
        let size = msg.data.to_string().len();
        if size > MAX_DATA {
            return vec![pusher_error(
                None,
                &format!("client event data is {size} bytes; at most {MAX_DATA}"),
            )];
        }
        let user = sub.user_id.clone();
        let hub = self.state.pusher.clone();
        let channels = [channel.to_owned()];
        let sent = hub.trigger(
            &channels,
            &msg.event,
            msg.data.clone(),
            Some(&self.socket_id),
            user.as_deref(),
        );
        match tokio::time::timeout(HUB_TIMEOUT, sent).await {
            Ok(Ok(())) => vec![],
            _ => vec![pusher_error(
                None,
                "the client event could not be sent; retry",
            )],
        }
    }

    /// Rights may have been taken away: cut the subscriptions whose authorizing session has
    /// ended or whose user may no longer join the channel.
    async fn recheck(&mut self) -> Next {
        let revoked: Vec<(String, String)> = self
            .subs
            .iter()
            .filter_map(|(channel, sub)| {
                let grant = sub.grant.as_ref()?;
                grant
                    .principal()
                    .refreshed(&self.state)
                    .map_err(|e| e.message)
                    .and_then(|p| may_join(&p, channel))
                    .err()
                    .map(|why| (channel.clone(), why))
            })
            .collect();
        let hub = self.state.pusher.clone();
        let mut frames = Vec::new();
        for (channel, why) in revoked {
            if let Some(sub) = self.subs.remove(&channel) {
                hub.leave(&self.socket_id, &channel, sub.user_id.as_deref())
                    .await;
            }
            frames.push(subscription_error(&channel, "AuthError", &why, 401));
            frames.push(pusher_error(
                Some(4009),
                &format!("Unauthorized: the subscription to {channel} has ended: {why}"),
            ));
        }
        self.send_all(frames).await
    }
}

// ---------------------------------------------------------------------------------------
// Subscription authorization

/// The body of `POST /pusher/auth`, as pusher-js sends it (form-encoded) or as JSON.
#[derive(Deserialize, ToSchema)]
pub struct AuthRequest {
    /// The socket id from `pusher:connection_established`, e.g. `123.456`.
    pub socket_id: String,
    /// A `private-` or `presence-` channel.
    pub channel_name: String,
}

/// A signed subscription.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuthAnswer {
    /// `<key>:<hex HMAC-SHA256 of socket_id:channel_name[:channel_data]>`.
    pub auth: String,
    /// Presence channels only: `{"user_id", "user_info": {"name", "role"}}` as a JSON string.
    pub channel_data: Option<String>,
}

/// Signs a subscription to a private or presence channel for the bearer of the token.
///
/// The user may join `private-user-{their user id}`, and `private-org-{organization id}` and
/// `presence-org-{organization id}` of the organization their session is logged in to;
/// anything else is 403. Presence members are the user's id, with their display name and
/// role as `user_info`. The grant is remembered: logging out or leaving the organization
/// ends the subscription on the socket at once. The body is form-encoded (what pusher-js
/// sends) or JSON.
#[utoipa::path(
    post,
    path = "/pusher/auth",
    tag = "live",
    request_body(content(
        (AuthRequest = "application/x-www-form-urlencoded"),
        (AuthRequest = "application/json"),
    )),
    responses(
        (status = 200, description = "The signature for the subscription", body = AuthAnswer),
        (status = 400, description = "A body that cannot be read", body = crate::http::schema::ErrorBody),
        (status = 403, description = "The user may not join this channel", body = crate::http::schema::ErrorBody),
        (status = 404, description = "The Pusher gateway is disabled on this server", body = crate::http::schema::ErrorBody),
        (status = 422, description = "A socket id or channel name that is not valid, or a public channel", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn auth(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let hub = &state.pusher;
    if !hub.settings.enabled {
        return Err(disabled());
    }
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let input: AuthRequest = if form {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("the form body is not UTF-8"))?;
        web::Query::<AuthRequest>::from_query(text)
            .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))?
            .into_inner()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if !valid_socket_id(&input.socket_id) {
        return Err(ApiError::validation(
            "socket_id",
            "a socket id from pusher:connection_established, e.g. 123.456",
        ));
    }
    let channel = input.channel_name;
    if !valid_channel(&channel) {
        return Err(ApiError::validation(
            "channel_name",
            "channel names are 1 to 200 of A-Z a-z 0-9 _ - = @ , . ;",
        ));
    }
    let kind = ChannelKind::of(&channel);
    if !matches!(kind, ChannelKind::Private | ChannelKind::Presence) {
        return Err(ApiError::validation(
            "channel_name",
            "only private- and presence- channels need authorization (encrypted ones are not supported)",
        ));
    }
    may_join(&who, &channel).map_err(|why| ApiError::forbidden("forbidden", why))?;
    let channel_data = if kind == ChannelKind::Presence {
        let name: Option<String> =
            sqlx::query_scalar("SELECT display_name FROM users WHERE id = $1")
                .bind(who.user_id)
                .fetch_optional(&state.pool)
                .await
                .unwrap_or(None);
        let info = json!({ "name": name, "role": who.role.map(|r| r.as_str()) });
        Some(json!({ "user_id": who.user_id.to_string(), "user_info": info }).to_string())
    } else {
        None
    };
    hub.grant(&input.socket_id, &channel, &who)
        .await
        .map_err(|e| ApiError::unavailable(format!("the grant could not be recorded: {e}")))?;
    let auth = hub
        .settings
        .channel_auth(&input.socket_id, &channel, channel_data.as_deref());
    let mut answer = json!({ "auth": auth });
    if let Some(d) = channel_data {
        answer["channel_data"] = json!(d);
    }
    Ok(HttpResponse::Ok().json(answer))
}

// ---------------------------------------------------------------------------------------
// The HTTP API

/// Pusher's signature parameters of every API request.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Signed {
    /// The app key.
    auth_key: String,
    /// Unix time of the request; at most 600 s from the server's clock.
    auth_timestamp: String,
    /// `1.0`.
    auth_version: String,
    /// Hex MD5 of the body (requests with a body).
    body_md5: Option<String>,
    /// Hex HMAC-SHA256 of `METHOD\nPATH\nsorted query without auth_signature`.
    auth_signature: String,
}

/// Checks the app id and the request's signature.
fn verify(state: &AppState, app_id: &str, req: &HttpRequest, body: &[u8]) -> Result<(), ApiError> {
    let hub = &state.pusher;
    if !hub.settings.enabled {
        return Err(disabled());
    }
    if app_id != hub.settings.app_id {
        return Err(ApiError::not_found(format!(
            "no app {app_id} on this server"
        )));
    }
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let now = chrono::Utc::now().timestamp();
    hub.settings
        .check_request(req.method().as_str(), req.path(), &query, body, now)
        .map_err(|why| ApiError::unauthenticated("invalid_signature", why))
}

/// One event of the API.
#[derive(Deserialize, ToSchema)]
pub struct EventIn {
    /// Event name, 1 to 200 bytes.
    pub name: String,
    /// The event's data: a string (Pusher's libraries send JSON text), at most 10 KB.
    pub data: String,
    /// One channel (or give `channels`).
    pub channel: Option<String>,
    /// Up to 100 channels (or give `channel`).
    pub channels: Option<Vec<String>>,
    /// A socket not to send the event to (the publisher's own).
    pub socket_id: Option<String>,
    /// `subscription_count` and/or `user_count` (comma-separated): answer them per channel.
    pub info: Option<String>,
}

/// The batch of `batch_events`.
#[derive(Deserialize, ToSchema)]
pub struct BatchIn {
    /// 1 to 10 events, each with `channel`.
    pub batch: Vec<EventIn>,
}

/// What `events` answers: `{}`, or the channels' counts when `info` asked for them.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventsAnswer {
    /// Per channel: `subscription_count` and/or `user_count`, as asked by `info`.
    #[schema(value_type = Option<Object>)]
    pub channels: Option<Value>,
}

/// What `batch_events` answers: `{}`, or per event the counts `info` asked for.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchAnswer {
    #[schema(value_type = Option<Vec<Object>>)]
    pub batch: Option<Vec<Value>>,
}

/// One channel as the channels API describes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChannelAnswer {
    pub occupied: bool,
    pub subscription_count: Option<i64>,
    pub user_count: Option<i64>,
}

/// The occupied channels.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChannelsAnswer {
    /// Channel name → `{}` or `{"user_count"}`.
    #[schema(value_type = Object)]
    pub channels: Value,
}

/// The users of a presence channel.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UsersAnswer {
    /// `[{"id"}]`, one per user.
    #[schema(value_type = Vec<Object>)]
    pub users: Vec<Value>,
}

/// Parsed `info`: (subscription_count, user_count).
fn info_fields(info: Option<&str>) -> Result<(bool, bool), ApiError> {
    let mut out = (false, false);
    for field in info
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        match field {
            "subscription_count" => out.0 = true,
            "user_count" => out.1 = true,
            other => {
                return Err(ApiError::validation(
                    "info",
                    format!("unknown attribute `{other}`: subscription_count, user_count"),
                ))
            }
        }
    }
    Ok(out)
}

/// Validates one event; returns its channels.
fn check_event(e: &EventIn, field: &str) -> Result<Vec<String>, ApiError> {
    let channels = match (&e.channel, &e.channels) {
        (Some(c), None) => vec![c.clone()],
        (None, Some(cs)) => cs.clone(),
        _ => {
            return Err(ApiError::validation(
                &format!("{field}channels"),
                "give either `channel` or `channels`",
            ))
        }
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_EVENT {
        return Err(ApiError::validation(
            &format!("{field}channels"),
            format!("1 to {MAX_CHANNELS_PER_EVENT} channels"),
        ));
    }
    if let Some(bad) = channels.iter().find(|c| !valid_channel(c)) {
        return Err(ApiError::validation(
            &format!("{field}channels"),
            format!("`{bad}` is not a channel name (1 to 200 of A-Z a-z 0-9 _ - = @ , . ;)"),
        ));
    }
    if !valid_event(&e.name)
        || e.name.starts_with("pusher:")
        || e.name.starts_with("pusher_internal:")
    {
        return Err(ApiError::validation(
            &format!("{field}name"),
            "event names are 1 to 200 bytes and do not start with pusher: or pusher_internal:",
        ));
    }
    if e.data.len() > MAX_DATA {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("{field}data is {} bytes; at most {MAX_DATA}", e.data.len()),
        )
        .with_details(json!({ "field": format!("{field}data"), "max_bytes": MAX_DATA })));
    }
    if let Some(s) = &e.socket_id {
        if !valid_socket_id(s) {
            return Err(ApiError::validation(
                &format!("{field}socket_id"),
                "a socket id such as 123.456",
            ));
        }
    }
    Ok(channels)
}

/// The counts `info` asks for, for each channel.
async fn channel_info(
    state: &AppState,
    channels: &[String],
    (subs, users): (bool, bool),
) -> Result<Value, ApiError> {
    let mut out = serde_json::Map::new();
    for c in channels {
        let (s, u) = state
            .pusher
            .channel(c)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let mut entry = serde_json::Map::new();
        if subs {
            entry.insert("subscription_count".into(), json!(s));
        }
        if users && ChannelKind::of(c) == ChannelKind::Presence {
            entry.insert("user_count".into(), json!(u));
        }
        out.insert(c.clone(), Value::Object(entry));
    }
    Ok(Value::Object(out))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Publishes an event on one or more channels (what a Pusher server library's `trigger`
/// sends), to the subscribers of every server process.
#[utoipa::path(
    post,
    path = "/apps/{app_id}/events",
    tag = "live",
    security(()),
    params(("app_id" = String, Path, description = "`PUSHER_APP_ID`"), Signed),
    request_body(content = EventIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Published: `{}`, or the counts `info` asked for", body = EventsAnswer),
        (status = 401, description = "A missing or wrong signature, key or `body_md5`, or a timestamp out of the window", body = crate::http::schema::ErrorBody),
        (status = 404, description = "Another app id, or the gateway is disabled", body = crate::http::schema::ErrorBody),
        (status = 413, description = "The event's data is over 10 KB (or the body over 1 MiB)", body = crate::http::schema::ErrorBody),
        (status = 422, description = "A bad channel or event name, too many channels, or a bad socket id", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn events(
    state: web::Data<AppState>,
    app_id: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    verify(&state, &app_id, &req, &body)?;
    let event: EventIn = parse_json(&body)?;
    let channels = check_event(&event, "")?;
    let info = info_fields(event.info.as_deref())?;
    state
        .pusher
        .trigger(
            &channels,
            &event.name,
            Value::String(event.data),
            event.socket_id.as_deref(),
            None,
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("the event could not be published: {e}")))?;
    if info == (false, false) {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let channels = channel_info(&state, &channels, info).await?;
    Ok(HttpResponse::Ok().json(json!({ "channels": channels })))
}

/// Publishes up to 10 events, each on one channel.
#[utoipa::path(
    post,
    path = "/apps/{app_id}/batch_events",
    tag = "live",
    security(()),
    params(("app_id" = String, Path, description = "`PUSHER_APP_ID`"), Signed),
    request_body(content = BatchIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Published: `{}`, or per event the counts `info` asked for", body = BatchAnswer),
        (status = 401, description = "A missing or wrong signature, key or `body_md5`, or a timestamp out of the window", body = crate::http::schema::ErrorBody),
        (status = 404, description = "Another app id, or the gateway is disabled", body = crate::http::schema::ErrorBody),
        (status = 413, description = "An event's data is over 10 KB (or the body over 1 MiB)", body = crate::http::schema::ErrorBody),
        (status = 422, description = "Not 1 to 10 events, or a bad channel or event name", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn batch_events(
    state: web::Data<AppState>,
    app_id: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    verify(&state, &app_id, &req, &body)?;
    let batch: BatchIn = parse_json(&body)?;
    if batch.batch.is_empty() || batch.batch.len() > MAX_BATCH {
        return Err(ApiError::validation(
            "batch",
            format!("1 to {MAX_BATCH} events"),
        ));
    }
    let mut checked = Vec::with_capacity(batch.batch.len());
    for (i, e) in batch.batch.iter().enumerate() {
        let channels = check_event(e, &format!("batch[{i}]."))?;
        if channels.len() != 1 {
            return Err(ApiError::validation(
                &format!("batch[{i}].channel"),
                "each event of a batch names one channel",
            ));
        }
        checked.push((channels, info_fields(e.info.as_deref())?));
    }
    let mut infos = Vec::new();
    let mut any_info = false;
    for (e, (channels, info)) in batch.batch.into_iter().zip(checked) {
        state
            .pusher
            .trigger(
                &channels,
                &e.name,
                Value::String(e.data),
                e.socket_id.as_deref(),
                None,
            )
            .await
            .map_err(|e| ApiError::unavailable(format!("the event could not be published: {e}")))?;
        if info == (false, false) {
            infos.push(json!({}));
        } else {
            any_info = true;
            let c = channel_info(&state, &channels, info).await?;
            infos.push(c[&channels[0]].clone());
        }
    }
    if any_info {
        return Ok(HttpResponse::Ok().json(json!({ "batch": infos })));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelsQuery {
    /// Only channels starting with this, e.g. `presence-`.
    filter_by_prefix: Option<String>,
    /// `user_count` (with `filter_by_prefix=presence-` only).
    info: Option<String>,
}

/// The occupied channels of every server process (at most 10,000).
#[utoipa::path(
    get,
    path = "/apps/{app_id}/channels",
    tag = "live",
    security(()),
    params(("app_id" = String, Path, description = "`PUSHER_APP_ID`"), ChannelsQuery, Signed),
    responses(
        (status = 200, description = "Channel name → attributes", body = ChannelsAnswer),
        (status = 401, description = "A missing or wrong signature or key, or a timestamp out of the window", body = crate::http::schema::ErrorBody),
        (status = 404, description = "Another app id, or the gateway is disabled", body = crate::http::schema::ErrorBody),
        (status = 422, description = "`info=user_count` without the `presence-` prefix, or an unknown attribute", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn channels(
    state: web::Data<AppState>,
    app_id: web::Path<String>,
    req: HttpRequest,
    query: web::Query<ChannelsQuery>,
) -> Result<HttpResponse, ApiError> {
    verify(&state, &app_id, &req, &[])?;
    let prefix = query.filter_by_prefix.clone().unwrap_or_default();
    let (subs, users) = info_fields(query.info.as_deref())?;
    if subs {
        return Err(ApiError::validation(
            "info",
            "the channel list offers user_count only",
        ));
    }
    if users && !prefix.starts_with("presence-") {
        return Err(ApiError::validation(
            "info",
            "user_count needs filter_by_prefix=presence-",
        ));
    }
    let rows = state
        .pusher
        .channels(&prefix)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let mut out = serde_json::Map::new();
    for (name, _, user_count) in rows {
        let entry = match users {
            true => json!({ "user_count": user_count }),
            false => json!({}),
        };
        out.insert(name, entry);
    }
    Ok(HttpResponse::Ok().json(json!({ "channels": out })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelQuery {
    /// `subscription_count` and/or `user_count` (presence channels), comma-separated.
    info: Option<String>,
}

/// One channel: whether it is occupied, and the counts `info` asks for.
#[utoipa::path(
    get,
    path = "/apps/{app_id}/channels/{channel}",
    tag = "live",
    security(()),
    params(
        ("app_id" = String, Path, description = "`PUSHER_APP_ID`"),
        ("channel" = String, Path, description = "A channel name"),
        ChannelQuery,
        Signed,
    ),
    responses(
        (status = 200, description = "The channel", body = ChannelAnswer),
        (status = 401, description = "A missing or wrong signature or key, or a timestamp out of the window", body = crate::http::schema::ErrorBody),
        (status = 404, description = "Another app id, or the gateway is disabled", body = crate::http::schema::ErrorBody),
        (status = 422, description = "Not a channel name, `user_count` of a channel that is not presence, or an unknown attribute", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn channel(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    query: web::Query<ChannelQuery>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, channel) = path.into_inner();
    verify(&state, &app_id, &req, &[])?;
    if !valid_channel(&channel) {
        return Err(ApiError::validation("channel", "not a channel name"));
    }
    let (subs, users) = info_fields(query.info.as_deref())?;
    if users && ChannelKind::of(&channel) != ChannelKind::Presence {
        return Err(ApiError::validation(
            "info",
            "user_count is for presence channels only",
        ));
    }
    let (s, u) = state
        .pusher
        .channel(&channel)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let mut out = json!({ "occupied": s > 0 });
    if subs {
        out["subscription_count"] = json!(s);
    }
    if users {
        out["user_count"] = json!(u);
    }
    Ok(HttpResponse::Ok().json(out))
}

/// The users of a presence channel (one entry per user, at most 100).
#[utoipa::path(
    get,
    path = "/apps/{app_id}/channels/{channel}/users",
    tag = "live",
    security(()),
    params(
        ("app_id" = String, Path, description = "`PUSHER_APP_ID`"),
        ("channel" = String, Path, description = "A `presence-` channel"),
        Signed,
    ),
    responses(
        (status = 200, description = "The users", body = UsersAnswer),
        (status = 401, description = "A missing or wrong signature or key, or a timestamp out of the window", body = crate::http::schema::ErrorBody),
        (status = 404, description = "Another app id, or the gateway is disabled", body = crate::http::schema::ErrorBody),
        (status = 422, description = "Not a presence channel", body = crate::http::schema::ErrorBody),
    ),
)]
pub async fn channel_users(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (app_id, channel) = path.into_inner();
    verify(&state, &app_id, &req, &[])?;
    if !valid_channel(&channel) || ChannelKind::of(&channel) != ChannelKind::Presence {
        return Err(ApiError::validation("channel", "not a presence channel"));
    }
    let members = state
        .pusher
        .members(&channel)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let users: Vec<Value> = members.ids.iter().map(|id| json!({ "id": id })).collect();
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}
