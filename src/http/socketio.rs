//! A Socket.IO-compatible gateway (Engine.IO v4 / Socket.IO v5, WebSocket transport), so
//! that the existing frontends' `socket.io-client` connects by changing only the URL.
//!
//! Supported: the Engine.IO handshake and ping/pong, namespace connect with `auth: {token}`
//! (`connect_error` on a bad token), events, acknowledgements, and rooms. HTTP long-polling
//! is answered with a clear 400: clients must use `transports: ['websocket']`.
//!
//! A namespace is a declarative table ([`Namespace`]): the frontend it belongs to, the room
//! commands clients may send, and which stored event types become which Socket.IO events in
//! which room. Adding `/messaging` or `/swarm` is one more table.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use universal_events::identity::Frontend;
use uuid::Uuid;

use super::guard::{principal_from_token, Principal};
use super::ApiError;
use crate::startup::AppState;
use crate::store::{Filter, RecordedEvent, Subscription};

const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_PAYLOAD: usize = 1_000_000;

/// One Socket.IO namespace.
pub struct Namespace {
    pub path: &'static str,
    pub frontend: Frontend,
    /// Stream category whose events feed the namespace.
    pub category: &'static str,
    /// Client events that join and leave a room: (join, leave).
    pub room_commands: (&'static str, &'static str),
    /// Stored event type → Socket.IO event name. The room is the entity id of the stream.
    pub emits: &'static [(&'static str, &'static str)],
}

/// The namespaces this gateway serves.
pub const NAMESPACES: &[Namespace] = &[Namespace {
    path: "/citypulse",
    frontend: Frontend::Citypulse,
    category: "building",
    room_commands: ("join_building", "leave_building"),
    emits: &[
        ("ReadingsRecorded", "energy:update"),
        ("AlertRaised", "alert:raised"),
        ("AlertResolved", "alert:resolved"),
        ("SensorRegistered", "sensor:registered"),
        ("SensorDecommissioned", "building:updated"),
        ("ThresholdSet", "building:updated"),
    ],
}];

/// The payload a client receives: the event's data with the room entity and position.
fn payload(room: Uuid, e: &RecordedEvent) -> Value {
    let mut body = json!({ "building_id": room, "position": e.position, "event_type": e.event_type, "recorded_at": e.recorded_at });
    if let (Value::Object(out), Value::Object(data)) = (&mut body, &e.data) {
        for (k, v) in data {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    body
}

/// `GET /socket.io/?EIO=4&transport=websocket`
pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
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
    if query.get("transport").map(String::as_str) != Some("websocket") {
        return Err(ApiError::bad_request(
            "HTTP long-polling is not supported: connect with transports: ['websocket']",
        ));
    }
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    actix_web::rt::spawn(run(state, session, stream.max_frame_size(MAX_PAYLOAD)));
    Ok(response)
}

struct Joined {
    ns: &'static Namespace,
    principal: Principal,
    rooms: HashSet<Uuid>,
    pump: tokio::task::JoinHandle<()>,
}

/// Splits a Socket.IO packet `<type>[<nsp>,][<ack id>][<json>]`.
fn parse(packet: &str) -> Option<(char, String, Option<u64>, Option<Value>)> {
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
        None
    } else {
        Some(serde_json::from_str(rest).ok()?)
    };
    Some((kind, nsp, ack, data))
}

fn packet(kind: char, nsp: &str, ack: Option<u64>, data: &Value) -> String {
    let nsp = if nsp == "/" {
        String::new()
    } else {
        format!("{nsp},")
    };
    let ack = ack.map(|a| a.to_string()).unwrap_or_default();
    format!("4{kind}{nsp}{ack}{data}")
}

async fn run(
    state: web::Data<AppState>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
) {
    let sid = Uuid::new_v4().simple().to_string();
    let open = json!({
        "sid": sid, "upgrades": [], "pingInterval": PING_INTERVAL.as_millis() as u64,
        "pingTimeout": PING_TIMEOUT.as_millis() as u64, "maxPayload": MAX_PAYLOAD,
    });
    if session.text(format!("0{open}")).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<(&'static str, RecordedEvent)>(256);
    let mut joined: HashMap<&'static str, Joined> = HashMap::new();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_pong = Instant::now();

    let reason: Option<CloseReason> = loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(Message::Text(text))) => {
                    let text: &str = &text;
                    match text.chars().next() {
                        Some('3') => last_pong = Instant::now(),
                        Some('2') => {
                            // A client ping (Engine.IO v3 habit): answer it.
                            let answered = session.text("3").await;
                            if answered.is_err() { break None }
                        }
                        Some('1') => break None,
                        Some('4') => {
                            let replies = on_packet(&state, &text[1..], &mut joined, &tx).await;
                            let mut closed = false;
                            for r in replies {
                                if session.text(r).await.is_err() { closed = true; break; }
                            }
                            if closed { break None }
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(CloseReason { code: CloseCode::Protocol, description: Some(e.to_string()) }),
            },
            Some((nsp, event)) = rx.recv() => {
                let Some(j) = joined.get(nsp) else { continue };
                let Some(room) = event.stream_id.split_once('-').and_then(|(_, id)| Uuid::parse_str(id).ok()) else { continue };
                if !j.rooms.contains(&room) { continue }
                let Some((_, name)) = j.ns.emits.iter().find(|(t, _)| *t == event.event_type) else { continue };
                let msg = packet('2', nsp, None, &json!([name, payload(room, &event)]));
                if session.text(msg).await.is_err() { break None }
            }
            _ = ping.tick() => {
                if last_pong.elapsed() > PING_INTERVAL + PING_TIMEOUT {
                    break Some(CloseReason { code: CloseCode::Away, description: Some("ping timeout".into()) });
                }
                if session.text("2").await.is_err() { break None }
            }
        }
    };
    for (_, j) in joined.drain() {
        j.pump.abort();
    }
    let _ = session.close(reason).await;
}

/// Handles one Socket.IO packet; returns the packets to send back.
async fn on_packet(
    state: &AppState,
    text: &str,
    joined: &mut HashMap<&'static str, Joined>,
    tx: &mpsc::Sender<(&'static str, RecordedEvent)>,
) -> Vec<String> {
    let Some((kind, nsp, ack, data)) = parse(text) else {
        return vec![];
    };
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
            let principal = match token.map(|t| principal_from_token(state, t)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    return vec![packet(
                        '4',
                        ns.path,
                        None,
                        &json!({ "message": e.message, "data": { "code": e.code } }),
                    )]
                }
                None => {
                    return vec![packet(
                        '4',
                        ns.path,
                        None,
                        &json!({ "message": "auth.token is required", "data": { "code": "unauthenticated" } }),
                    )]
                }
            };
            let Some(org) = principal
                .organization_id
                .filter(|_| principal.frontends.contains(&ns.frontend))
            else {
                let message = format!(
                    "Frontend access denied: {} is not enabled for your organization",
                    ns.frontend.as_str()
                );
                return vec![packet(
                    '4',
                    ns.path,
                    None,
                    &json!({ "message": message, "data": { "code": "frontend_access_denied" } }),
                )];
            };
            if let Some(old) = joined.remove(ns.path) {
                old.pump.abort();
            }
            let filter = Filter {
                categories: Some(vec![ns.category.to_owned()]),
                event_types: Some(ns.emits.iter().map(|(t, _)| t.to_string()).collect()),
                organization: Some(org),
                ..Filter::default()
            };
            let after = *state.store.head_watch().borrow();
            let mut sub = Subscription::new(state.store.clone(), after, filter)
                .with_live_feed(state.live.clone());
            let tx = tx.clone();
            let path = ns.path;
            let pump = actix_web::rt::spawn(async move {
                loop {
                    match sub.next().await {
                        Ok(e) => {
                            if tx.send((path, e)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "socket.io feed read failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            });
            joined.insert(
                ns.path,
                Joined {
                    ns,
                    principal,
                    rooms: HashSet::new(),
                    pump,
                },
            );
            vec![packet(
                '0',
                ns.path,
                None,
                &json!({ "sid": Uuid::new_v4().simple().to_string() }),
            )]
        }
        '1' => {
            if let Some(j) = joined.remove(ns.path) {
                j.pump.abort();
            }
            vec![]
        }
        '2' => {
            let Some(j) = joined.get_mut(ns.path) else {
                return vec![];
            };
            let args = data
                .as_ref()
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let name = args.first().and_then(Value::as_str).unwrap_or("");
            let room = args
                .get(1)
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            let answer = if name == ns.room_commands.0 || name == ns.room_commands.1 {
                match room {
                    None => json!({ "ok": false, "error": "a building id is required" }),
                    Some(id) if name == ns.room_commands.1 => {
                        j.rooms.remove(&id);
                        json!({ "ok": true })
                    }
                    Some(id) => {
                        let org = j.principal.organization_id;
                        let found: Result<Option<i32>, _> = sqlx::query_scalar(
                            "SELECT 1 FROM buildings WHERE id = $1 AND organization_id = $2",
                        )
                        .bind(id)
                        .bind(org)
                        .fetch_optional(&state.pool)
                        .await;
                        match found {
                            Ok(Some(_)) => {
                                j.rooms.insert(id);
                                json!({ "ok": true, "room": id })
                            }
                            Ok(None) => json!({ "ok": false, "error": "building not found" }),
                            Err(_) => json!({ "ok": false, "error": "temporarily unavailable" }),
                        }
                    }
                }
            } else {
                json!({ "ok": false, "error": format!("unknown event `{name}`") })
            };
            match ack {
                Some(id) => vec![packet('3', ns.path, Some(id), &json!([answer]))],
                None if answer["ok"] == false => {
                    vec![packet('2', ns.path, None, &json!(["error", answer]))]
                }
                None => vec![],
            }
        }
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_parse_with_and_without_namespace_and_ack() {
        let (k, n, a, d) = parse("2/citypulse,7[\"join_building\",\"x\"]").unwrap();
        assert_eq!((k, n.as_str(), a), ('2', "/citypulse", Some(7)));
        assert_eq!(d.unwrap()[0], "join_building");
        let (k, n, a, d) = parse("0/citypulse,{\"token\":\"t\"}").unwrap();
        assert_eq!((k, n.as_str(), a), ('0', "/citypulse", None));
        assert_eq!(d.unwrap()["token"], "t");
        let (k, n, _, d) = parse("0").unwrap();
        assert_eq!((k, n.as_str(), d), ('0', "/", None));
        assert!(parse("2/citypulse,[broken").is_none());
        assert_eq!(
            packet('3', "/citypulse", Some(7), &json!([1])),
            "43/citypulse,7[1]"
        );
        assert_eq!(packet('0', "/", None, &json!({})), "40{}");
    }
}
