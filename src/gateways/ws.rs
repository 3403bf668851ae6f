//! The native event-stream socket: `GET /api/v1/ws`.
//!
//! One connection carries many subscriptions. Each subscription is a catch-up subscription
//! of the event store (see `store::subscription`): it replays from the position the client
//! gives, says `caught_up`, and goes on live with the same cursor, so there is no gap and no
//! duplicate at the switch, and a client that reconnects with its last position misses
//! nothing. Only events of the caller's organization are delivered.
//!
//! Backpressure: subscriptions feed one bounded queue per connection, and the socket's own
//! send queue is bounded too. When a client reads slower than events arrive, the queues fill,
//! the subscriptions stop pulling, and they resume from the store where they stopped: a slow
//! client falls back to catch-up and loses nothing, and memory stays bounded (a queue of
//! `QUEUE` messages plus one store page per subscription). A client that accepts nothing for
//! `SEND_TIMEOUT` is disconnected with a reason.
//!
//! Authorization is that of HTTP (`gateways::authorize`): the whole log, a category or a
//! non-building stream needs an organization admin; a building stream needs CityPulse
//! enabled. The connection watches the access view: when the session ends or the caller
//! leaves the organization it is closed, and subscriptions no longer allowed are cut.
//! Limits (connection cap, frame size checked at each frame header, authentication
//! deadline) come from the shared connection core, `gateways`.
//!
//! Protocol (JSON text frames). Client: `{"type":"auth","token"}` (when the token was not in
//! the `token` query parameter), `{"type":"subscribe","id","target":{"stream"}|{"category"}|
//! {"all":true},"from":<last position seen>|"now"}`, `{"type":"unsubscribe","id"}`,
//! `{"type":"ping"}`. Server: `subscribed`, `event`, `caught_up`, `unsubscribed`, `pong`,
//! `error`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::gateways::{self, authorize, LiveTarget};
use crate::http::guard::{principal_from_token, Principal};
use crate::http::history::redact;
use crate::http::ApiError;
use crate::state::AppState;
use crate::store::{Filter, Subscription};

/// Messages waiting for a connection's socket, across its subscriptions.
const QUEUE: usize = 256;
/// Largest frame a client may send.
const MAX_FRAME: usize = 64 * 1024;
/// Most subscriptions on one connection.
const MAX_SUBSCRIPTIONS: usize = 100;
/// A client that takes no message for this long is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
pub struct Query {
    pub token: Option<String>,
}

/// Upgrades to a WebSocket, or refuses cleanly when the server is full.
pub async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<Query>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.websocket_enabled {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "feature_disabled",
            "WebSockets are disabled on this server",
        ));
    }
    let slot = state.gateways.admit()?;
    let (response, session, stream) = gateways::upgrade(&req, body, MAX_FRAME).await?;
    let principal = match query.token.as_deref() {
        Some(t) => Some(principal_from_token(&state, t).await),
        None => None,
    };
    actix_web::rt::spawn(async move {
        let _slot = slot;
        Connection {
            state: state.clone(),
            session,
            principal: None,
            subs: HashMap::new(),
            live: HashSet::new(),
            next_serial: 0,
        }
        .run(stream, principal)
        .await;
    });
    Ok(response)
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMsg {
    Auth {
        token: String,
    },
    Subscribe {
        id: String,
        target: Target,
        from: From,
    },
    Unsubscribe {
        id: String,
    },
    Ping,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Target {
    Stream(String),
    Category(String),
    All(bool),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum From {
    Position(i64),
    Now(String),
}

struct Connection {
    state: web::Data<AppState>,
    session: actix_ws::Session,
    principal: Option<Principal>,
    subs: HashMap<String, Sub>,
    /// Serials of the subscriptions open now: queued messages of ended ones are dropped.
    live: HashSet<u64>,
    next_serial: u64,
}

/// One open subscription of a connection.
struct Sub {
    target: LiveTarget,
    serial: u64,
    task: tokio::task::JoinHandle<()>,
}

fn close(code: CloseCode, description: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(description.to_owned()),
    })
}

fn error(code: &str, message: &str, subscription: Option<&str>) -> String {
    json!({ "type": "error", "code": code, "message": message, "subscription": subscription })
        .to_string()
}

impl Connection {
    async fn run(
        mut self,
        mut stream: actix_ws::MessageStream,
        from_query: Option<Result<Principal, ApiError>>,
    ) {
        match from_query {
            Some(Ok(p)) => self.principal = Some(p),
            Some(Err(e)) => {
                let _ = self
                    .session
                    .close(close(CloseCode::Policy, &e.message))
                    .await;
                return;
            }
            None => {}
        }
        let (tx, mut rx) = mpsc::channel::<(u64, String)>(QUEUE);
        let interval = self.state.gateways.heartbeat;
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.tick().await;
        let auth_deadline = tokio::time::sleep(self.state.gateways.auth_timeout);
        tokio::pin!(auth_deadline);
        let mut changes = self.state.access.changes();
        let mut last_heard = Instant::now();
        let limit = self.state.gateways.message_limit();

        let reason = loop {
            tokio::select! {
                incoming = stream.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None => break None,
                        Some(Ok(Message::Text(_))) if !limit.allow() => {
                            let why = format!("at most {} messages per minute; this one was dropped", limit.per_minute);
                            if self.send(error("rate_limited", &why, None)).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            if let Some(reason) = self.on_text(&text, &tx).await {
                                break reason;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if self.send(error("unsupported_frame", "send JSON text frames", None)).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Ping(bytes))) => {
                            if self.session.pong(&bytes).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Close(reason))) => break reason,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Some(gateways::close_for(&e, MAX_FRAME)),
                    }
                }
                _ = &mut auth_deadline, if self.principal.is_none() => {
                    break close(CloseCode::Policy, "no authentication received");
                }
                Ok(()) = changes.changed() => {
                    if let Some(reason) = self.recheck().await {
                        break reason;
                    }
                }
                Some((serial, out)) = rx.recv() => {
                    // An unsubscribed or revoked subscription's queued messages go no further.
                    if !self.live.contains(&serial) {
                        continue;
                    }
                    match tokio::time::timeout(SEND_TIMEOUT, self.session.text(out)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break None,
                        Err(_) => break close(CloseCode::Policy, "client too slow: nothing read for 30 s"),
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        break close(CloseCode::Away, "heartbeat timeout");
                    }
                    if self.session.ping(b"").await.is_err() {
                        break None;
                    }
                }
            }
        };
        for (_, sub) in self.subs.drain() {
            sub.task.abort();
        }
        let _ = self.session.close(reason).await;
    }

    /// Rights may have been taken away: close when the caller may no longer be here at all,
    /// and cut the subscriptions it may no longer follow.
    async fn recheck(&mut self) -> Option<Option<CloseReason>> {
        let current = self.principal.as_ref()?;
        let now = match current.refreshed(&self.state) {
            Ok(p) => p,
            Err(e) => return Some(close(CloseCode::Policy, &e.message)),
        };
        let revoked: Vec<(String, String)> = self
            .subs
            .iter()
            .filter_map(|(id, sub)| {
                authorize(&now, &sub.target)
                    .err()
                    .map(|(_, why)| (id.clone(), why))
            })
            .collect();
        self.principal = Some(now);
        for (id, why) in revoked {
            if let Some(sub) = self.subs.remove(&id) {
                self.live.remove(&sub.serial);
                sub.task.abort();
            }
            let msg = error(
                "access_revoked",
                &format!("subscription ended: {why}"),
                Some(&id),
            );
            if self.send(msg).await.is_err() {
                return Some(None);
            }
        }
        None
    }

    async fn send(&mut self, text: String) -> Result<(), actix_ws::Closed> {
        self.session.text(text).await
    }

    /// Handles one client message; `Some(reason)` closes the connection.
    async fn on_text(
        &mut self,
        text: &str,
        tx: &mpsc::Sender<(u64, String)>,
    ) -> Option<Option<CloseReason>> {
        let msg: ClientMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                let reply = error(
                    "bad_message",
                    &format!("not a message of this API: {e}"),
                    None,
                );
                return self.send(reply).await.err().map(|_| None);
            }
        };
        let reply = match msg {
            ClientMsg::Auth { token } => match principal_from_token(&self.state, &token).await {
                Ok(p) => {
                    self.principal = Some(p);
                    json!({ "type": "authenticated" }).to_string()
                }
                Err(e) => return Some(close(CloseCode::Policy, &e.message)),
            },
            ClientMsg::Ping => json!({ "type": "pong" }).to_string(),
            ClientMsg::Unsubscribe { id } => match self.subs.remove(&id) {
                Some(sub) => {
                    self.live.remove(&sub.serial);
                    sub.task.abort();
                    json!({ "type": "unsubscribed", "subscription": id }).to_string()
                }
                None => error("unknown_subscription", "no such subscription", Some(&id)),
            },
            ClientMsg::Subscribe { id, target, from } => {
                let owned = match (&target, &self.principal) {
                    (Target::Stream(s), Some(p)) => {
                        crate::gateways::authorize_owned(&self.state, p, s).await
                    }
                    _ => Ok(()),
                };
                match owned.and_then(|()| self.subscribe(id.clone(), target, from, tx.clone())) {
                    Ok(after) => json!({ "type": "subscribed", "subscription": id, "from": after })
                        .to_string(),
                    Err((code, message)) => error(code, &message, Some(&id)),
                }
            }
        };
        self.send(reply).await.err().map(|_| None)
    }

    fn subscribe(
        &mut self,
        id: String,
        target: Target,
        from: From,
        tx: mpsc::Sender<(u64, String)>,
    ) -> Result<i64, (&'static str, String)> {
        let principal = self
            .principal
            .as_ref()
            .ok_or(("unauthenticated", "authenticate first".to_owned()))?;
        if self.subs.contains_key(&id) {
            return Err((
                "duplicate_subscription",
                "this id is already subscribed".into(),
            ));
        }
        if id.is_empty() || id.len() > 100 {
            return Err(("bad_message", "id must be 1 to 100 characters".into()));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err((
                "too_many_subscriptions",
                format!("at most {MAX_SUBSCRIPTIONS} per connection"),
            ));
        }
        let target = match target {
            Target::Stream(s) if !s.is_empty() => LiveTarget::Stream(s),
            Target::Category(c) if !c.is_empty() => LiveTarget::Category(c),
            Target::All(true) => LiveTarget::All,
            _ => {
                return Err((
                    "bad_target",
                    "target is {stream}, {category} or {all: true}".into(),
                ))
            }
        };
        let org = authorize(principal, &target)?;
        let mut filter = Filter {
            organization: Some(org),
            ..Filter::default()
        };
        match &target {
            LiveTarget::Stream(s) => filter.stream = Some(s.clone()),
            LiveTarget::Category(c) => filter.categories = Some(vec![c.clone()]),
            LiveTarget::All => {}
        }
        let after = match from {
            From::Position(p) if p >= 0 => p,
            From::Now(s) if s == "now" => *self.state.store.head_watch().borrow(),
            _ => {
                return Err((
                    "bad_from",
                    "from is a position (0 for everything) or \"now\"".into(),
                ))
            }
        };
        let sub = Subscription::new(self.state.store.clone(), after, filter)
            .with_live_feed(self.state.live.clone());
        let serial = self.next_serial;
        self.next_serial += 1;
        let task = actix_web::rt::spawn(pump(id.clone(), serial, sub, tx));
        self.live.insert(serial);
        self.subs.insert(
            id,
            Sub {
                target,
                serial,
                task,
            },
        );
        Ok(after)
    }
}

/// An `event` message as sent to the client.
#[derive(serde::Serialize)]
struct EventMsg<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    subscription: &'a str,
    position: i64,
    stream: &'a str,
    version: i64,
    event_type: &'a str,
    schema_version: i32,
    data: &'a Value,
    metadata: &'a Value,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

/// Moves one subscription's events into the connection's queue, waiting when it is full.
async fn pump(id: String, serial: u64, mut sub: Subscription, tx: mpsc::Sender<(u64, String)>) {
    let mut caught_up = false;
    loop {
        match sub.try_next().await {
            Ok(Some(mut e)) => {
                redact(&mut e);
                // Serialized straight from the event, without building a JSON tree per
                // subscriber: with many subscribers this is the hot loop.
                let msg = EventMsg {
                    kind: "event",
                    subscription: &id,
                    position: e.position,
                    stream: &e.stream_id,
                    version: e.version,
                    event_type: &e.event_type,
                    schema_version: e.schema_version,
                    data: &e.data,
                    metadata: &e.metadata,
                    recorded_at: e.recorded_at,
                };
                let Ok(text) = serde_json::to_string(&msg) else {
                    continue;
                };
                if tx.send((serial, text)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                if !caught_up {
                    caught_up = true;
                    let msg = json!({ "type": "caught_up", "subscription": id, "position": sub.position() });
                    if tx.send((serial, msg.to_string())).await.is_err() {
                        return;
                    }
                }
                sub.wait().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "subscription read failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
