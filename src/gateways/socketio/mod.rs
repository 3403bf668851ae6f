//! A Socket.IO-compatible gateway (Socket.IO v5 over Engine.IO v4), so that the existing
//! frontends' `socket.io-client` connects by changing only the URL, in its default
//! configuration: HTTP long-polling first, then the upgrade to WebSocket (the transports
//! are in `gateways::engineio`; limits, authorization and revocation in `gateways`).
//!
//! Supported: namespace connect with `auth: {token}` (`connect_error` on a bad token or a
//! frontend the organization has not enabled), events, acknowledgements, and rooms. When
//! the caller's rights go (logout, removal from the organization, the frontend disabled),
//! the server disconnects the namespace at once (`io server disconnect`). Binary packets
//! are not supported.
//!
//! **Every event sent with an ack id is answered**, whatever is wrong with it (see
//! `on_event`): a malformed packet, an argument of the wrong shape, an unknown event, a
//! namespace the socket has not connected. A refusal is `{ok: false, error: "<message>"}` on
//! the room namespaces and `{ok: false, error: {code, message, status, details}}` on
//! `/messaging` (as its HTTP twin); without an ack id it comes as an `error` event.
//!
//! A namespace is a declarative table ([`Namespace`]): the frontend it belongs to, the room
//! commands clients may send, and which stored event types become which Socket.IO events in
//! which room. Adding `/messaging` or `/swarm` is one more table.

pub mod engineio;
pub mod messaging;
pub mod recovery;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use universal_events::identity::Frontend;
use uuid::Uuid;

use crate::gateways::{self, authorize_frontend};
use crate::http::guard::{principal_from_token, Principal};
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::subscription::Gate;
use crate::store::{Direction, Filter, RecordedEvent, Subscription};
use engineio::{Control, EngineError, Handler, Outcome, Start};

/// Events waiting for a session, across its namespaces.
const QUEUE: usize = 256;

/// One Socket.IO namespace.
pub struct Namespace {
    pub path: &'static str,
    /// The frontend the organization must have enabled; `None`: any member of an
    /// organization (the analysis service, whose REST routes need no frontend either).
    pub frontend: Option<Frontend>,
    /// Stream category whose events feed the namespace.
    pub category: &'static str,
    /// Client events that join and leave a room: (join, leave).
    pub room_commands: (&'static str, &'static str),
    /// The payload field naming the room's entity (`building_id`, `session_id`, ...).
    pub room_key: &'static str,
    /// What a room is, for errors (`building`, `chat session`, ...).
    pub noun: &'static str,
    /// Who may join a room: members of the entity's organization, or its owner only.
    pub rooms: RoomAccess,
    /// Stored event type → Socket.IO event name. The room is the entity id of the stream.
    pub emits: &'static [(&'static str, &'static str)],
}

/// Who may join the room of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAccess {
    /// Any member of the organization the entity belongs to.
    Organization,
    /// Only the user who created the entity (its first event's `user_id`), in its
    /// organization.
    Owner,
    /// Whoever may read the channel now (its actor decides: every member of the
    /// organization for a public channel, its members for a private one or a DM).
    ChannelReaders,
}

/// What the session's tasks push to it: a stored event of a namespace's category, or an
/// ephemeral signal (typing, presence) from [`crate::gateways::signals`].
pub enum Push {
    Event(RecordedEvent),
    Signal(std::sync::Arc<Value>),
    /// `/messaging`: a `MessagePosted` with file attachments, and its attachments as this
    /// connection's user may see them now (see `crate::files::attachments`).
    Shown(RecordedEvent, Value),
    /// `/messaging`: a packet made for this connection (a file announcement).
    Packet(String),
}

/// Most rooms one connection may join in a namespace.
const MAX_ROOMS: usize = 1000;

/// The namespaces this gateway serves.
pub const NAMESPACES: &[Namespace] = &[
    Namespace {
        path: "/citypulse",
        frontend: Some(Frontend::Citypulse),
        category: "building",
        room_commands: ("join_building", "leave_building"),
        room_key: "building_id",
        noun: "building",
        rooms: RoomAccess::Organization,
        emits: &[
            ("ReadingsRecorded", "energy:update"),
            ("AlertRaised", "alert:raised"),
            ("AlertResolved", "alert:resolved"),
            ("SensorRegistered", "sensor:registered"),
            ("SensorDecommissioned", "building:updated"),
            ("ThresholdSet", "building:updated"),
        ],
    },
    Namespace {
        path: "/flowmind",
        frontend: Some(Frontend::Flowmind),
        category: "conversation",
        room_commands: ("join_session", "leave_session"),
        room_key: "session_id",
        noun: "chat session",
        rooms: RoomAccess::Owner,
        emits: &[
            ("UserMessagePosted", "message:created"),
            ("ReplyStarted", "ai:reply:started"),
            ("ReplyDeltaAppended", "ai:reply:delta"),
            ("ReplyCompleted", "ai:reply:completed"),
            ("ReplyFailed", "ai:reply:failed"),
            ("ReplyCancelled", "ai:reply:cancelled"),
        ],
    },
    Namespace {
        path: "/messaging",
        frontend: Some(Frontend::Fluxstudio),
        category: "channel",
        room_commands: ("channel:join", "channel:leave"),
        room_key: "channel_id",
        noun: "channel",
        rooms: RoomAccess::ChannelReaders,
        emits: &[
            ("MessagePosted", "message:new"),
            ("MessageEdited", "message:updated"),
            ("MessageDeleted", "message:deleted"),
            ("ReactionAdded", "reaction:updated"),
            ("ReactionRemoved", "reaction:updated"),
            ("ChannelMemberRemoved", "channel:member_removed"),
        ],
    },
    // FluxStudio's performance dashboard: no rooms and no stored events; once connected it
    // receives `metrics:update` every few seconds (see `dashboard_metrics`).
    Namespace {
        path: "/auth",
        frontend: Some(Frontend::Fluxstudio),
        category: "",
        room_commands: ("", ""),
        room_key: "",
        noun: "dashboard",
        rooms: RoomAccess::Organization,
        emits: &[],
    },
    Namespace {
        path: "/quantum",
        frontend: Some(Frontend::Quantum),
        category: "swarm_task",
        room_commands: ("join_task", "leave_task"),
        room_key: "task_id",
        noun: "swarm task",
        rooms: RoomAccess::Organization,
        emits: SWARM_EMITS,
    },
    Namespace {
        path: "/velocity",
        frontend: Some(Frontend::Velocity),
        category: "swarm_task",
        room_commands: ("join_task", "leave_task"),
        room_key: "task_id",
        noun: "swarm task",
        rooms: RoomAccess::Organization,
        emits: SWARM_EMITS,
    },
    // The analysis service: each step of an analysis (see `crate::tasks::analysis`).
    Namespace {
        path: "/analysis",
        frontend: None,
        category: "swarm_task",
        room_commands: ("join_analysis", "leave_analysis"),
        room_key: "analysis_id",
        noun: "analysis",
        rooms: RoomAccess::Organization,
        emits: &[
            ("SwarmTaskStarted", "analysis:started"),
            ("AnalysisProgressed", "analysis:progress"),
            ("AnalysisResultsRecorded", "analysis:results"),
            ("InsightRecorded", "analysis:insight"),
            ("SwarmTaskCompleted", "analysis:completed"),
            ("SwarmTaskFailed", "analysis:failed"),
            ("SwarmTaskCancelled", "analysis:cancelled"),
        ],
    },
];

/// The caller's organization, if it may use namespace `ns`.
fn admit(who: &Principal, ns: &Namespace) -> Result<Uuid, (&'static str, String)> {
    match ns.frontend {
        Some(frontend) => authorize_frontend(who, frontend),
        None => who.organization_id.ok_or((
            "frontend_access_denied",
            "the session belongs to no organization; log in to one".to_owned(),
        )),
    }
}

/// What the rooms of swarm tasks receive (`/quantum` and `/velocity` alike): coalesced
/// optimization progress, each chunk of a batch's subtask outcomes, and the task's end.
const SWARM_EMITS: &[(&str, &str)] = &[
    ("SwarmTaskStarted", "swarm:started"),
    ("OptimizationProgressed", "swarm:progress"),
    ("SubtasksRecorded", "swarm:subtask"),
    ("SwarmTaskCompleted", "swarm:completed"),
    ("SwarmTaskFailed", "swarm:failed"),
    ("SwarmTaskCancelled", "swarm:cancelled"),
];

/// How often `/auth` sends `metrics:update`.
const DASHBOARD_EVERY: Duration = Duration::from_secs(3);

/// The live figures of the performance dashboard: this process's HTTP traffic over the last
/// ten seconds, the sockets open on it, and how far each projection is behind the log.
async fn dashboard_metrics(state: &AppState) -> Value {
    let traffic = state.traffic.figures();
    let lag: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.projection, greatest(h.last_position - c.position, 0) FROM checkpoints c \
         CROSS JOIN event_head h ORDER BY c.projection",
    )
    .fetch_all(&state.pool)
    .await
    .unwrap_or_default();
    let lag: serde_json::Map<String, Value> = lag.into_iter().map(|(p, l)| (p, json!(l))).collect();
    json!({
        "type": "metrics",
        "requests_per_second": traffic.requests_per_second,
        "p95_latency_ms": traffic.p95_latency_ms,
        "server_errors": traffic.server_errors,
        "window_seconds": traffic.window_seconds,
        "open_sockets": state.gateways.open(),
        "projection_lag": lag,
        "at": chrono::Utc::now(),
    })
}

/// The payload a client receives: the event's data with the room entity and position.
fn payload(ns: &Namespace, room: Uuid, e: &RecordedEvent) -> Value {
    let mut body = json!({ ns.room_key: room, "position": e.position, "event_type": e.event_type, "recorded_at": e.recorded_at });
    if let (Value::Object(out), Value::Object(data)) = (&mut body, &e.data) {
        for (k, v) in data {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    body
}

/// Engine.IO's answer to a polling request it cannot serve.
fn engine_error(e: EngineError) -> HttpResponse {
    let (code, message) = match e {
        EngineError::UnknownSession => (
            "unknown_session",
            "Session ID unknown: polling sessions live in one server process; connect again",
        ),
        EngineError::BadRequest => ("bad_request", "Bad request"),
    };
    let mut body = e.body();
    body["error"] = json!({ "code": code, "message": message, "details": null });
    HttpResponse::BadRequest().json(body)
}

fn text(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=UTF-8")
        .body(body)
}

fn check_version(state: &AppState, query: &HashMap<String, String>) -> Result<(), ApiError> {
    if !state.config.websocket_enabled {
        return Err(ApiError::not_found(
            "WebSockets are disabled on this server",
        ));
    }
    if query.get("EIO").map(String::as_str) != Some("4") {
        return Err(ApiError::bad_request(
            "only Engine.IO protocol version 4 (EIO=4) is supported",
        ));
    }
    Ok(())
}

fn new_session(state: &web::Data<AppState>, slot: gateways::Slot, start: Start) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let handler = SocketIo {
        state: state.clone(),
        joined: HashMap::new(),
        tx,
    };
    engineio::spawn(
        &state.gateways.engine,
        slot,
        start,
        handler,
        rx,
        state.access.changes(),
        engineio::Limits {
            auth_timeout: state.gateways.auth_timeout,
            ping_interval: state.gateways.heartbeat,
            ping_timeout: state.gateways.heartbeat,
            messages_per_minute: state.gateways.messages_per_minute,
        },
        Uuid::new_v4().simple().to_string(),
    );
}

/// `GET /socket.io/?EIO=4&transport=polling|websocket[&sid=…]`: the polling handshake, a
/// poll, a WebSocket connection, or the WebSocket of an upgrade.
pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    check_version(&state, &query)?;
    let sid = query.get("sid");
    match (query.get("transport").map(String::as_str), sid) {
        (Some("polling"), None) => {
            let slot = state.gateways.admit()?;
            let (tx, rx) = oneshot::channel();
            new_session(&state, slot, Start::Polling(tx));
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(Ok(open))) => Ok(text(open)),
                _ => Err(ApiError::unavailable("the session could not start")),
            }
        }
        (Some("polling"), Some(sid)) => {
            let (tx, rx) = oneshot::channel();
            if let Err(e) = state.gateways.engine.send(sid, Control::Poll(tx)).await {
                return Ok(engine_error(e));
            }
            // The session answers at the latest with its next ping; the bound is a safety net.
            let wait = state.gateways.heartbeat * 2;
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(Ok(packets))) => Ok(text(packets)),
                Ok(Ok(Err(e))) => Ok(engine_error(e)),
                Ok(Err(_)) => Ok(engine_error(EngineError::UnknownSession)),
                Err(_) => Ok(text("6".into())),
            }
        }
        (Some("websocket"), None) => {
            let slot = state.gateways.admit()?;
            let (response, session, stream) =
                gateways::upgrade(&req, body, engineio::MAX_PAYLOAD).await?;
            new_session(&state, slot, Start::WebSocket(session, stream));
            Ok(response)
        }
        (Some("websocket"), Some(sid)) => {
            let Some(control) = state.gateways.engine.get(sid) else {
                return Ok(engine_error(EngineError::UnknownSession));
            };
            let (response, session, stream) =
                gateways::upgrade(&req, body, engineio::MAX_PAYLOAD).await?;
            let id = engineio::bridge_id();
            let out = engineio::bridge(id, control, session, stream);
            // Should the session have ended meanwhile, the bridge loses its queue and closes
            // the new socket; the client then carries on (or reconnects) as after any failed
            // probe.
            let _ = state
                .gateways
                .engine
                .send(sid, Control::Socket(id, out))
                .await;
            Ok(response)
        }
        _ => Err(ApiError::bad_request(
            "transport must be `polling` or `websocket`",
        )),
    }
}

/// `POST /socket.io/?EIO=4&transport=polling&sid=…`: packets from a polling client.
pub async fn post(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    check_version(&state, &query)?;
    let (Some("polling"), Some(sid)) =
        (query.get("transport").map(String::as_str), query.get("sid"))
    else {
        return Err(ApiError::bad_request(
            "POST is for the polling transport of an open session (transport=polling&sid=…)",
        ));
    };
    if body.len() > engineio::MAX_PAYLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("at most {} bytes per POST", engineio::MAX_PAYLOAD),
        ));
    }
    let Ok(packets) = String::from_utf8(body.to_vec()) else {
        return Ok(engine_error(EngineError::BadRequest));
    };
    let (tx, rx) = oneshot::channel();
    if let Err(e) = state
        .gateways
        .engine
        .send(sid, Control::Post(packets, tx))
        .await
    {
        return Ok(engine_error(e));
    }
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(()))) => Ok(text("ok".into())),
        Ok(Ok(Err(e))) => Ok(engine_error(e)),
        _ => Ok(engine_error(EngineError::UnknownSession)),
    }
}

struct Joined {
    ns: &'static Namespace,
    principal: Principal,
    rooms: HashSet<Uuid>,
    /// What the feed task lets through: a superset of `rooms` (a room leaves it on
    /// `leave`; it may stay after a removal, which `rooms` still catches).
    gate: Arc<RwLock<HashSet<Uuid>>>,
    pump: tokio::task::JoinHandle<()>,
    /// `/messaging`: the task forwarding typing and presence signals.
    signals: Option<tokio::task::JoinHandle<()>>,
    /// `/messaging`: the task announcing files (`file:uploaded`, ...).
    files: Option<tokio::task::JoinHandle<()>>,
    /// `/messaging`: when this connection last said it types in each channel.
    typing: HashMap<Uuid, std::time::Instant>,
    /// `/messaging`: the connection's private id, for connection state recovery.
    pid: Option<Uuid>,
}

impl Joined {
    /// Stops the namespace's tasks; on `/messaging` the user's connection stops counting
    /// for presence.
    fn end(&mut self, state: &AppState) {
        self.pump.abort();
        if let Some(f) = self.files.take() {
            f.abort();
        }
        if let Some(pid) = self.pid {
            // The recovery window starts now.
            let (pool, who, rooms, path) = (
                state.pool.clone(),
                self.principal.clone(),
                self.rooms.iter().copied().collect(),
                self.ns.path,
            );
            tokio::spawn(async move {
                crate::gateways::socketio::recovery::save(&pool, path, &who, pid, rooms).await
            });
        }
        if let Some(s) = self.signals.take() {
            s.abort();
            if let Some(org) = self.principal.organization_id {
                let signals = state.signals.clone();
                let user = self.principal.user_id;
                // Whoever was typing here stops now, not when the receivers' state expires.
                let typing = crate::gateways::socketio::messaging::still_typing(&mut self.typing);
                tokio::spawn(async move {
                    for channel in typing {
                        signals
                            .publish(&crate::gateways::socketio::messaging::typing_signal(
                                org, channel, user, false,
                            ))
                            .await;
                    }
                    signals.disconnected(org, user).await
                });
            }
        }
    }
}

/// The data of a packet: none, JSON, or text that is not JSON (`Err`, why).
type Data = Result<Option<Value>, String>;

/// Splits a Socket.IO packet `<type>[<nsp>,][<ack id>][<json>]`. Data that is not JSON is
/// `Err`, so that the ack id of a malformed event is still known and can be answered.
fn parse(packet: &str) -> Option<(char, String, Option<u64>, Data)> {
    let mut chars = packet.chars();
    let kind = chars.next()?;
    let mut rest = chars.as_str();
    let nsp = if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        let nsp = rest[..end].to_owned();
        rest = rest.get(end + 1..).unwrap_or("");
        nsp
    } else {
        "/".to_owned()
    };
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let ack = if digits > 0 {
        rest[..digits].parse().ok()
    } else {
        None
    };
    rest = &rest[digits..];
    let data = if rest.is_empty() {
        Ok(None)
    } else {
        serde_json::from_str(rest)
            .map(Some)
            .map_err(|e| format!("the packet's data is not JSON: {e}"))
    };
    Some((kind, nsp, ack, data))
}

/// A Socket.IO packet (the data of an Engine.IO message packet).
fn packet(kind: char, nsp: &str, ack: Option<u64>, data: &Value) -> String {
    let nsp = if nsp == "/" {
        String::new()
    } else {
        format!("{nsp},")
    };
    let ack = ack.map(|a| a.to_string()).unwrap_or_default();
    format!("{kind}{nsp}{ack}{data}")
}

/// The Socket.IO layer of one Engine.IO session.
struct SocketIo {
    state: web::Data<AppState>,
    joined: HashMap<&'static str, Joined>,
    tx: mpsc::Sender<(&'static str, Push)>,
}

impl SocketIo {
    /// The packet of a stored event for the room it belongs to, if the client joined it;
    /// `shown`: the message's attachments as this connection may see them.
    fn room_packet(
        &self,
        nsp: &str,
        event: &RecordedEvent,
        shown: Option<Value>,
    ) -> Option<String> {
        let j = self.joined.get(nsp)?;
        let room = event
            .stream_id
            .split_once('-')
            .and_then(|(_, id)| Uuid::parse_str(id).ok())?;
        if !j.rooms.contains(&room) {
            return None;
        }
        let (_, name) = j.ns.emits.iter().find(|(t, _)| *t == event.event_type)?;
        let mut body = payload(j.ns, room, event);
        if let Some(attachments) = shown {
            body["attachments"] = attachments;
        }
        let args = if j.pid.is_some() {
            // The offset (the event's log position) for connection state recovery.
            json!([name, body, event.position.to_string()])
        } else {
            json!([name, body])
        };
        Some(packet('2', nsp, None, &args))
    }
}

impl Handler for SocketIo {
    type Push = (&'static str, Push);

    async fn on_message(&mut self, data: &str) -> Outcome {
        Outcome::Send(on_packet(&self.state, data, &mut self.joined, &self.tx).await)
    }

    fn on_push(&mut self, (nsp, push): Self::Push) -> Vec<String> {
        let Some(j) = self.joined.get_mut(nsp) else {
            return vec![];
        };
        let (event, shown) = match push {
            Push::Event(e) => (e, None),
            Push::Shown(e, attachments) => (e, Some(attachments)),
            Push::Packet(p) => return vec![p],
            Push::Signal(signal) if nsp == "/auth" => {
                return vec![packet('2', nsp, None, &json!(["metrics:update", *signal]))];
            }
            Push::Signal(signal) => {
                return crate::gateways::socketio::messaging::signal(
                    nsp,
                    &j.principal,
                    &j.rooms,
                    &signal,
                )
                .into_iter()
                .collect();
            }
        };
        let mut out = Vec::new();
        if nsp == "/messaging" {
            let with_offset = j.pid.is_some();
            out.extend(crate::gateways::socketio::messaging::notification(
                nsp,
                &j.principal,
                &mut j.rooms,
                &event,
                with_offset,
            ));
        }
        out.extend(self.room_packet(nsp, &event, shown));
        out
    }

    fn on_access_change(&mut self) -> Outcome {
        let mut out = Vec::new();
        let state = &self.state;
        self.joined.retain(|path, j| {
            let allowed = j
                .principal
                .refreshed(state)
                .ok()
                .filter(|p| admit(p, j.ns).is_ok());
            match allowed {
                Some(p) => {
                    j.principal = p;
                    true
                }
                None => {
                    j.end(state);
                    // A server-side disconnect: the client does not reconnect by itself.
                    out.push(format!("1{path},"));
                    false
                }
            }
        });
        Outcome::Send(out)
    }

    fn authenticated(&self) -> bool {
        !self.joined.is_empty()
    }

    fn close(&mut self) {
        for (_, mut j) in self.joined.drain() {
            j.end(&self.state);
        }
    }
}

/// The events a connection's feed task passes on: those of the rooms in `rooms` and, on
/// `/messaging`, those that concern the user wherever they happen (see
/// `messaging_socket::concerns`). The connection checks its rooms again; the gate only saves
/// every connection from copying and decoding every event of its organization.
fn room_gate(ns: &Namespace, who: &Principal, rooms: Arc<RwLock<HashSet<Uuid>>>) -> Gate {
    let messaging = ns.path == "/messaging";
    let user = who.user_id.to_string();
    Arc::new(move |e: &RecordedEvent| {
        let in_room = e
            .stream_id
            .split_once('-')
            .and_then(|(_, id)| Uuid::parse_str(id).ok())
            .is_some_and(|room| rooms.read().map_or(true, |r| r.contains(&room)));
        in_room || (messaging && crate::gateways::socketio::messaging::concerns(e, &user))
    })
}

/// Whether `who` may join the room of entity `id`, read from the log (the entity's first
/// event), so that a client joining right after creating the entity sees its own write,
/// which the read model may not have yet.
async fn may_join(state: &AppState, ns: &Namespace, who: &Principal, id: Uuid) -> Result<bool, ()> {
    if ns.rooms == RoomAccess::ChannelReaders {
        let (_, channel) = state
            .registries
            .channels
            .inspect(id)
            .await
            .map_err(|_| ())?;
        return Ok(channel.id.is_some()
            && channel.organization_id == who.organization_id
            && channel.readable_by(who.user_id));
    }
    let first = state
        .store
        .read_stream(&format!("{}-{id}", ns.category), 1, Direction::Forward, 1)
        .await
        .map_err(|_| ())?;
    let Some(e) = first.first() else {
        return Ok(false);
    };
    let Some(org) = who.organization_id.map(|o| o.to_string()) else {
        return Ok(false);
    };
    let named = |v: &Value, key: &str, want: &str| v.get(key).and_then(Value::as_str) == Some(want);
    let in_org =
        named(&e.data, "organization_id", &org) || named(&e.metadata, "organization_id", &org);
    Ok(in_org
        && match ns.rooms {
            RoomAccess::Organization => true,
            RoomAccess::Owner => {
                let user = who.user_id.to_string();
                named(&e.data, "user_id", &user)
            }
            RoomAccess::ChannelReaders => false,
        })
}

/// For a chat session's room: the reply streaming now with its text so far (or null), so
/// that a client joining or re-joining mid-reply shows it at once, then applies only the
/// `ai:reply:delta` events that go beyond `chars` (each names its `offset`).
async fn streaming_reply(state: &AppState, id: Uuid) -> Value {
    let Ok((_, session)) = state.chat.sessions.inspect(id).await else {
        return Value::Null;
    };
    session
        .active_reply
        .and_then(|r| session.index.get(&r).map(|&i| &session.messages[i]))
        .map_or(
            Value::Null,
            |m| json!({ "reply_id": m.id, "text": m.text, "chars": m.chars }),
        )
}

/// Handles one Socket.IO packet; returns the packets to send back.
async fn on_packet(
    state: &web::Data<AppState>,
    text: &str,
    joined: &mut HashMap<&'static str, Joined>,
    tx: &mpsc::Sender<(&'static str, Push)>,
) -> Vec<String> {
    let Some((kind, nsp, ack, data)) = parse(text) else {
        return vec![];
    };
    if kind == '2' {
        return on_event(state, &nsp, ack, data, joined).await;
    }
    let data = data.ok().flatten();
    let Some(ns) = NAMESPACES.iter().find(|n| n.path == nsp) else {
        if kind == '0' {
            return vec![packet(
                '4',
                &nsp,
                None,
                &json!({ "message": "Invalid namespace" }),
            )];
        }
        return vec![];
    };
    match kind {
        '0' => {
            let token = data
                .as_ref()
                .and_then(|d| d.get("token"))
                .and_then(Value::as_str);
            let principal = match token {
                Some(t) => match principal_from_token(state, t).await {
                    Ok(p) => p,
                    Err(e) => {
                        return vec![packet(
                            '4',
                            ns.path,
                            None,
                            &json!({ "message": e.message, "data": { "code": e.code } }),
                        )]
                    }
                },
                None => {
                    return vec![packet(
                        '4',
                        ns.path,
                        None,
                        &json!({ "message": "auth.token is required", "data": { "code": "unauthenticated" } }),
                    )]
                }
            };
            let org = match admit(&principal, ns) {
                Ok(org) => org,
                Err((code, message)) => {
                    return vec![packet(
                        '4',
                        ns.path,
                        None,
                        &json!({ "message": message, "data": { "code": code } }),
                    )];
                }
            };
            if let Some(mut old) = joined.remove(ns.path) {
                old.end(state);
            }
            let filter = Filter {
                categories: Some(vec![ns.category.to_owned()]),
                event_types: Some(ns.emits.iter().map(|(t, _)| t.to_string()).collect()),
                organization: Some(org),
                ..Filter::default()
            };
            let head = *state.store.head_watch().borrow();
            let mut after = head;
            // `/messaging`: connection state recovery (see `socketio_recovery`).
            let mut pid = None;
            let mut rooms = HashSet::new();
            if ns.path == "/messaging" {
                let asked = data
                    .as_ref()
                    .and_then(|d| d.get("pid"))
                    .and_then(Value::as_str)
                    .and_then(|p| Uuid::parse_str(p).ok());
                let offset = data
                    .as_ref()
                    .and_then(|d| d.get("offset"))
                    .and_then(Value::as_str)
                    .and_then(|o| o.parse::<i64>().ok())
                    .filter(|o| (0..=head).contains(o));
                let resumed = match (asked, offset) {
                    (Some(p), Some(o)) => {
                        crate::gateways::socketio::recovery::resume(state, ns.path, &principal, p)
                            .await
                            .map(|r| (p, o, r))
                    }
                    _ => None,
                };
                match resumed {
                    Some((p, o, saved)) => {
                        for room in saved {
                            if let Ok(true) = may_join(state, ns, &principal, room).await {
                                rooms.insert(room);
                            }
                        }
                        after = o;
                        pid = Some(p);
                    }
                    None => pid = Some(Uuid::new_v4()),
                }
                if let Some(p) = pid {
                    let list = rooms.iter().copied().collect();
                    crate::gateways::socketio::recovery::save(
                        &state.pool,
                        ns.path,
                        &principal,
                        p,
                        list,
                    )
                    .await;
                }
            }
            let gate = Arc::new(RwLock::new(rooms.clone()));
            let feed_tx = tx.clone();
            let path = ns.path;
            let pump = if ns.path == "/auth" {
                let state = state.clone();
                actix_web::rt::spawn(async move {
                    let tx = feed_tx;
                    let mut every = tokio::time::interval(DASHBOARD_EVERY);
                    loop {
                        every.tick().await;
                        let figures = std::sync::Arc::new(dashboard_metrics(&state).await);
                        if tx.send((path, Push::Signal(figures))).await.is_err() {
                            return;
                        }
                    }
                })
            } else {
                let mut sub = Subscription::new(state.store.clone(), after, filter)
                    .with_live_feed(state.live.clone())
                    .with_gate(room_gate(ns, &principal, gate.clone()));
                let (state, user) = (state.clone(), principal.user_id);
                actix_web::rt::spawn(async move {
                    let tx = feed_tx;
                    loop {
                        match sub.next().await {
                            Ok(e) => {
                                let push = if path == "/messaging" {
                                    messaging::with_attachments(&state, org, user, e).await
                                } else {
                                    Push::Event(e)
                                };
                                if tx.send((path, push)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "socket.io feed read failed; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                })
            };
            // `/messaging`: typing and presence of the organization, from every process.
            let signals = (ns.path == "/messaging").then(|| {
                let mut rx = state.signals.subscribe();
                let tx = tx.clone();
                let org_id = org;
                actix_web::rt::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(v) => {
                                let ours = v.get("organization_id").and_then(Value::as_str)
                                    == Some(org_id.to_string().as_str());
                                if ours && tx.send((path, Push::Signal(v))).await.is_err() {
                                    return;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => return,
                        }
                    }
                })
            });
            if signals.is_some() {
                state.signals.connected(org, principal.user_id).await;
            }
            // `/messaging`: files announced from the log's live feed (every process).
            let files = (ns.path == "/messaging").then(|| {
                messaging::announce_files(state.clone(), org, principal.user_id, path, tx.clone())
            });
            joined.insert(
                ns.path,
                Joined {
                    ns,
                    principal,
                    rooms,
                    gate,
                    pump,
                    signals,
                    files,
                    typing: HashMap::new(),
                    pid,
                },
            );
            let mut connected = json!({ "sid": Uuid::new_v4().simple().to_string() });
            if let Some(p) = pid {
                connected["pid"] = json!(p.simple().to_string());
            }
            vec![packet('0', ns.path, None, &connected)]
        }
        '1' => {
            if let Some(mut j) = joined.remove(ns.path) {
                j.end(state);
            }
            vec![]
        }
        _ => vec![],
    }
}

/// Answers an event packet (`2`). Every event the client sent with an ack id gets an
/// answer, whatever is wrong with it (an unknown or unconnected namespace, data that is not
/// JSON or not `[name, ...arguments]`, an argument of the wrong shape, an unknown event):
/// the answer goes back as the ack, or, without an ack id, a refusal goes back as an `error`
/// event of the namespace. Commands answer `{ok: true, ...}` or a refusal (see [`refusal`]).
async fn on_event(
    state: &web::Data<AppState>,
    nsp: &str,
    ack: Option<u64>,
    data: Data,
    joined: &mut HashMap<&'static str, Joined>,
) -> Vec<String> {
    let answer = match NAMESPACES.iter().find(|n| n.path == nsp) {
        None => json!({ "ok": false, "error": "Invalid namespace" }),
        Some(ns) => match joined.get_mut(ns.path) {
            None => refusal(
                ns,
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not_connected",
                    format!("not connected to {}", ns.path),
                ),
            ),
            Some(j) => match event_args(data) {
                Err(why) => refusal(
                    ns,
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", why),
                ),
                Ok(args) => command(state, ns, j, &args).await,
            },
        },
    };
    match ack {
        Some(id) => vec![packet('3', nsp, Some(id), &json!([answer]))],
        None if answer["ok"] == false && joined.contains_key(nsp) => {
            vec![packet('2', nsp, None, &json!(["error", answer]))]
        }
        None => vec![],
    }
}

/// The arguments of an event, `[name, ...arguments]` with a string name.
fn event_args(data: Data) -> Result<Vec<Value>, String> {
    match data? {
        Some(Value::Array(args)) if args.first().is_some_and(Value::is_string) => Ok(args),
        Some(Value::Array(_)) => Err("the event name must be a string".into()),
        _ => Err("an event is an array: [name, ...arguments]".into()),
    }
}

/// A refusal in the ack shape of the namespace: `/messaging` answers as its HTTP twin does
/// (`{ok: false, error: {code, message, status, details}}`), the room namespaces
/// `{ok: false, error: "<message>"}`.
fn refusal(ns: &Namespace, error: ApiError) -> Value {
    if ns.path == "/messaging" {
        crate::gateways::socketio::messaging::failed(error)
    } else {
        json!({ "ok": false, "error": error.message })
    }
}

/// A client event of a connected namespace: its room commands, or (`/messaging`) the
/// commands of [`crate::gateways::socketio::messaging`]; `args` is `[name, ...arguments]`.
/// Keeps a recoverable session's rooms for its recovery window (see `recovery`).
async fn save_rooms(state: &AppState, ns: &Namespace, j: &Joined) {
    if let Some(pid) = j.pid {
        let rooms = j.rooms.iter().copied().collect();
        recovery::save(&state.pool, ns.path, &j.principal, pid, rooms).await;
    }
}

async fn command(state: &AppState, ns: &Namespace, j: &mut Joined, args: &[Value]) -> Value {
    let name = args.first().and_then(Value::as_str).unwrap_or("");
    // The entity id, as a string or as `{"<room_key>": id}` (also camelCase).
    let room = args
        .get(1)
        .and_then(|v| {
            v.as_str().or_else(|| {
                v.get(ns.room_key)
                    .or_else(|| v.get("channelId"))
                    .or_else(|| v.get("sessionId"))
                    .and_then(Value::as_str)
            })
        })
        .and_then(|s| Uuid::parse_str(s).ok());
    if name == ns.room_commands.0 || name == ns.room_commands.1 {
        match room {
            None => {
                json!({ "ok": false, "error": format!("a {} id is required", ns.noun) })
            }
            Some(id) if name == ns.room_commands.1 => {
                j.rooms.remove(&id);
                if let Ok(mut g) = j.gate.write() {
                    g.remove(&id);
                }
                save_rooms(state, ns, j).await;
                json!({ "ok": true })
            }
            Some(id) => match may_join(state, ns, &j.principal, id).await {
                Ok(true) if j.rooms.len() >= MAX_ROOMS => json!({
                    "ok": false,
                    "error": format!("at most {MAX_ROOMS} rooms per connection"),
                }),
                Ok(true) => {
                    // The gate first, so that no event of the room is turned away
                    // once the room counts as joined.
                    if let Ok(mut g) = j.gate.write() {
                        g.insert(id);
                    }
                    j.rooms.insert(id);
                    save_rooms(state, ns, j).await;
                    let mut ok = json!({ "ok": true, "room": id });
                    if ns.category == "conversation" {
                        ok["streaming"] = streaming_reply(state, id).await;
                    }
                    ok
                }
                Ok(false) => {
                    json!({ "ok": false, "error": format!("{} not found", ns.noun) })
                }
                Err(()) => json!({ "ok": false, "error": "temporarily unavailable" }),
            },
        }
    } else if ns.path == "/messaging" {
        let input = args.get(1).cloned().unwrap_or(Value::Null);
        crate::gateways::socketio::messaging::on_event(
            state,
            j.ns,
            &j.principal,
            &j.rooms,
            &mut j.typing,
            name,
            input,
        )
        .await
    } else {
        json!({ "ok": false, "error": format!("unknown event `{name}`") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_parse_with_and_without_namespace_and_ack() {
        let (k, n, a, d) = parse("2/citypulse,7[\"join_building\",\"x\"]").unwrap();
        assert_eq!((k, n.as_str(), a), ('2', "/citypulse", Some(7)));
        assert_eq!(d.unwrap().unwrap()[0], "join_building");
        let (k, n, a, d) = parse("0/citypulse,{\"token\":\"t\"}").unwrap();
        assert_eq!((k, n.as_str(), a), ('0', "/citypulse", None));
        assert_eq!(d.unwrap().unwrap()["token"], "t");
        let (k, n, _, d) = parse("0").unwrap();
        assert_eq!((k, n.as_str(), d), ('0', "/", Ok(None)));
        // Data that is not JSON keeps its ack id, so that the event can be answered.
        let (k, n, a, d) = parse("2/citypulse,[broken").unwrap();
        assert_eq!((k, n.as_str(), a), ('2', "/citypulse", None));
        assert!(d.is_err());
        let (_, _, a, d) = parse("2/messaging,12{broken").unwrap();
        assert_eq!(a, Some(12));
        assert!(d.unwrap_err().contains("not JSON"));
        assert_eq!(
            packet('3', "/citypulse", Some(7), &json!([1])),
            "3/citypulse,7[1]"
        );
        assert_eq!(packet('0', "/", None, &json!({})), "0{}");
    }

    #[test]
    fn an_event_is_an_array_with_a_string_name() {
        assert_eq!(
            event_args(Ok(Some(json!(["message:send", 42])))),
            Ok(vec![json!("message:send"), json!(42)])
        );
        assert!(event_args(Ok(Some(json!([42, {}])))).is_err());
        assert!(event_args(Ok(Some(json!([])))).is_err());
        assert!(event_args(Ok(Some(json!({"name": "x"})))).is_err());
        assert!(event_args(Ok(None)).is_err());
        assert!(event_args(Err("not JSON".into())).is_err());
    }

    #[test]
    fn refusals_take_the_ack_shape_of_their_namespace() {
        let ns = |path: &str| NAMESPACES.iter().find(|n| n.path == path).unwrap();
        let error = || ApiError::validation("argument", "must be an object");
        let messaging = refusal(ns("/messaging"), error());
        assert_eq!(messaging["ok"], false);
        assert_eq!(messaging["error"]["code"], "validation_failed");
        assert_eq!(messaging["error"]["status"], 422);
        let rooms = refusal(ns("/citypulse"), error());
        assert_eq!(
            rooms,
            json!({ "ok": false, "error": "argument: must be an object" })
        );
    }
}
