//! Engine.IO v4, the transport layer under Socket.IO: HTTP long-polling, WebSocket, and the
//! upgrade from the first to the second, so that `socket.io-client` connects in its default
//! configuration (it starts with polling and upgrades when it can).
//!
//! Written here because no crate fits: socketioxide, the Rust Socket.IO server, runs on
//! tower/hyper only, not on actix-web.
//!
//! One Engine.IO session is one task ([`run`]) that owns everything of the session: the
//! layer above ([`Handler`], e.g. Socket.IO), the queue of packets waiting for the next poll,
//! the outbound queue of its WebSocket once there is one, and the timers (pings, and the
//! deadline to connect a namespace). HTTP requests of the polling transport and the frames
//! of a WebSocket reach it as [`Control`] messages through the session table
//! ([`Sessions`]), so no state is shared between tasks. A WebSocket stays on the worker
//! thread of its HTTP connection, which may not be the session's: a [`bridge`] task there
//! moves frames between the two.
//!
//! Protocol (<https://socket.io/docs/v4/engine-io-protocol/>): packets are a type digit and
//! data (`0` open, `1` close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop). Over
//! polling, one HTTP body carries several packets separated by `\x1e`; a GET waits for the
//! server's packets, a POST carries the client's. The server pings every `pingInterval` and
//! drops a client that does not answer within `pingTimeout`. To upgrade, the client opens a
//! WebSocket with the session id and sends `2probe`; the server answers `3probe` and ends the
//! pending poll with a noop, the client sends `5`, and from then on everything goes over the
//! WebSocket.
//!
//! Bounds: at most [`OUTBOX`] packets wait for a poll (a client that stops polling while
//! events keep coming is closed, not buffered without end), a poll answer carries at most
//! [`MAX_PAYLOAD`] bytes, a POST body at most [`MAX_PAYLOAD`] bytes, a WebSocket frame at
//! most [`MAX_PAYLOAD`] bytes; a GET waits at most one ping interval (the ping answers it);
//! a WebSocket send waits at most [`SEND_TIMEOUT`].
//!
//! Polling sessions live in the memory of the process that opened them: behind a load
//! balancer, polling needs sticky sessions. Another process answers an unknown session id
//! with Engine.IO's "Session ID unknown" (400), and the client then reconnects from scratch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Message};
use dashmap::DashMap;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::gateways::Slot;

/// Largest packet batch (poll answer, POST body) and WebSocket frame.
pub const MAX_PAYLOAD: usize = 1_000_000;
/// Most packets waiting for the client's next poll.
pub const OUTBOX: usize = 1024;
/// A WebSocket client that takes nothing for this long is disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most HTTP requests of one session waiting for the session task.
const CONTROL_QUEUE: usize = 8;
/// Longest wait to hand a request to its session.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

const SEPARATOR: char = '\u{1e}';

/// Why a request of the polling transport failed; Engine.IO's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineError {
    UnknownSession,
    BadRequest,
}

impl EngineError {
    /// The body Engine.IO servers answer with (status 400), which also carries this API's
    /// error shape under `error`, so that one contract covers every 4xx.
    pub fn body(self) -> serde_json::Value {
        let (code, message, ours) = match self {
            EngineError::UnknownSession => (1, "Session ID unknown", "session_unknown"),
            EngineError::BadRequest => (3, "Bad request", "bad_request"),
        };
        json!({
            "code": code,
            "message": message,
            "error": { "code": ours, "message": message, "details": null },
        })
    }
}

/// What the HTTP side hands to a session. Everything here is `Send`: a session runs on the
/// worker thread that opened it, while its requests may arrive on any worker thread.
pub enum Control {
    /// A GET of the polling transport: answered with the packets to deliver.
    Poll(oneshot::Sender<Result<String, EngineError>>),
    /// A POST of the polling transport with its body.
    Post(String, oneshot::Sender<Result<(), EngineError>>),
    /// A WebSocket was opened for this session (see [`bridge`]): its outbound queue.
    Socket(u64, mpsc::Sender<WsOut>),
    /// A text frame arrived on WebSocket `id`.
    Text(u64, String),
    /// WebSocket `id` is gone.
    Gone(u64),
}

/// What a session sends to its WebSocket bridge.
pub enum WsOut {
    Text(String),
    Close(Option<CloseReason>),
}

/// Moves frames between a WebSocket (which stays on the worker thread whose connection it
/// is) and its session: text frames go to the session as [`Control::Text`], the session's
/// packets come back through the returned queue. Protocol pings are answered here; a
/// binary or oversized frame closes the socket. Always drains the session's packets, also
/// while waiting to hand one over, so that neither side can block the other.
pub fn bridge(
    id: u64,
    control: mpsc::Sender<Control>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
) -> mpsc::Sender<WsOut> {
    let (tx, mut rx) = mpsc::channel::<WsOut>(64);
    actix_web::rt::spawn(async move {
        let mut inbound: Option<Control> = None;
        let reason = loop {
            tokio::select! {
                permit = control.reserve(), if inbound.is_some() => match permit {
                    Ok(p) => p.send(inbound.take().expect("checked")),
                    Err(_) => break None,
                },
                frame = stream.next(), if inbound.is_none() => match frame {
                    Some(Ok(Message::Text(t))) => inbound = Some(Control::Text(id, t.to_string())),
                    Some(Ok(Message::Ping(b))) => {
                        if session.pong(&b).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Some(CloseReason {
                        code: CloseCode::Unsupported,
                        description: Some("binary packets are not supported".into()),
                    }),
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(crate::gateways::close_for(&e, MAX_PAYLOAD)),
                },
                out = rx.recv() => match out {
                    Some(WsOut::Text(t)) => {
                        match tokio::time::timeout(SEND_TIMEOUT, session.text(t)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break None,
                            Err(_) => break Some(CloseReason {
                                code: CloseCode::Policy,
                                description: Some("client too slow: nothing read for 30 s".into()),
                            }),
                        }
                    }
                    Some(WsOut::Close(reason)) => break reason,
                    None => break None,
                },
            }
        };
        let _ = tokio::time::timeout(HANDOFF_TIMEOUT, control.send(Control::Gone(id))).await;
        let _ = session.close(reason).await;
    });
    tx
}

/// Open Engine.IO sessions of this process, by session id.
#[derive(Default, Clone)]
pub struct Sessions(Arc<DashMap<String, mpsc::Sender<Control>>>);

impl Sessions {
    /// The control queue of session `sid`.
    pub fn get(&self, sid: &str) -> Option<mpsc::Sender<Control>> {
        self.0.get(sid).map(|s| s.clone())
    }

    /// Hands `control` to session `sid`.
    pub async fn send(&self, sid: &str, control: Control) -> Result<(), EngineError> {
        let tx = self
            .0
            .get(sid)
            .map(|s| s.clone())
            .ok_or(EngineError::UnknownSession)?;
        // A session handles its requests one at a time; a request that cannot even be queued
        // within the bound is refused rather than left waiting.
        match tokio::time::timeout(HANDOFF_TIMEOUT, tx.send(control)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(EngineError::UnknownSession),
            Err(_) => Err(EngineError::BadRequest),
        }
    }
}

/// What happens after the layer above handled something.
pub enum Outcome {
    /// Send these message packets' data (each becomes `4<data>`).
    Send(Vec<String>),
    /// Close the session.
    Close(String),
}

/// The layer above Engine.IO.
#[allow(async_fn_in_trait)] // used by concrete types on one thread; no Send bound wanted
pub trait Handler: 'static {
    /// Items the layer's own tasks push (e.g. events of its subscriptions).
    type Push: 'static;
    /// A message packet arrived.
    async fn on_message(&mut self, data: &str) -> Outcome;
    /// An item pushed by the layer's tasks; returns the message data to send (often none).
    fn on_push(&mut self, item: Self::Push) -> Vec<String>;
    /// Rights may have been taken away (see `crate::identity::access`).
    fn on_access_change(&mut self) -> Outcome;
    /// Whether the client has authenticated (connected a namespace).
    fn authenticated(&self) -> bool;
    /// The session ends.
    fn close(&mut self);
}

/// How a session starts.
pub enum Start {
    /// A polling handshake: the open packet goes back as the body of this GET.
    Polling(oneshot::Sender<Result<String, EngineError>>),
    /// A WebSocket without session id: no upgrade, everything over this socket.
    WebSocket(actix_ws::Session, actix_ws::MessageStream),
}

/// Ids of WebSocket bridges, unique in the process.
static BRIDGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new bridge id.
pub fn bridge_id() -> u64 {
    BRIDGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Settings of a session.
pub struct Limits {
    /// Time to connect a namespace (authenticate).
    pub auth_timeout: Duration,
    /// Time between the server's pings (`pingInterval`).
    pub ping_interval: Duration,
    /// Time the client has to answer a ping (`pingTimeout`).
    pub ping_timeout: Duration,
    /// Message packets the client may send per minute (`WS_RATE_LIMIT_PER_MINUTE`); a
    /// session that sends more is closed.
    pub messages_per_minute: u32,
}

/// A WebSocket of the session, through its bridge.
struct Socket {
    id: u64,
    out: mpsc::Sender<WsOut>,
}

impl Socket {
    async fn close(self, reason: Option<CloseReason>) {
        let _ = self.out.send(WsOut::Close(reason)).await;
    }
}

/// Polling side of a session.
#[derive(Default)]
struct Polling {
    outbox: VecDeque<String>,
    pending: Option<oneshot::Sender<Result<String, EngineError>>>,
    upgrading: bool,
}

impl Polling {
    /// Answers the pending GET with as many queued packets as fit, or with a noop when
    /// `noop` and nothing is queued.
    fn flush(&mut self, noop: bool) {
        self.drop_abandoned();
        if self.pending.is_none() || (self.outbox.is_empty() && !noop) {
            return;
        }
        let mut body = String::new();
        while let Some(p) = self.outbox.front() {
            if !body.is_empty() && body.len() + p.len() + 1 > MAX_PAYLOAD {
                break;
            }
            if !body.is_empty() {
                body.push(SEPARATOR);
            }
            body.push_str(p);
            self.outbox.pop_front();
        }
        if body.is_empty() {
            body.push('6');
        }
        if let Some(tx) = self.pending.take() {
            if let Err(Ok(body)) = tx.send(Ok(body)) {
                // The poll went away meanwhile: its packets wait for the next one.
                for p in body.split(SEPARATOR).rev().filter(|p| *p != "6") {
                    self.outbox.push_front(p.to_owned());
                }
            }
        }
    }

    /// Forgets a pending poll whose HTTP request has gone (client gone, or the request's
    /// own time limit), so that the next poll is not taken for a second concurrent one.
    fn drop_abandoned(&mut self) {
        if self.pending.as_ref().is_some_and(|p| p.is_closed()) {
            self.pending = None;
        }
    }
}

/// A session in progress.
struct Engine<H: Handler> {
    sid: String,
    handler: H,
    /// The WebSocket carrying the session, once there is one.
    ws: Option<Socket>,
    /// A WebSocket probing for an upgrade.
    probe: Option<Socket>,
    polling: Polling,
    last_pong: Instant,
    limit: crate::gateways::MessageLimit,
}

enum Flow {
    Go,
    End(Option<CloseReason>),
}

fn policy(why: &str) -> Flow {
    Flow::End(Some(CloseReason {
        code: CloseCode::Policy,
        description: Some(why.to_owned()),
    }))
}

impl<H: Handler> Engine<H> {
    /// Sends one packet over the current transport.
    async fn send(&mut self, packet: String) -> Flow {
        if let Some(ws) = self.ws.as_ref() {
            return match tokio::time::timeout(SEND_TIMEOUT, ws.out.send(WsOut::Text(packet))).await
            {
                Ok(Ok(())) => Flow::Go,
                Ok(Err(_)) => Flow::End(None),
                Err(_) => policy("client too slow: nothing read for 30 s"),
            };
        }
        if self.polling.outbox.len() >= OUTBOX {
            return policy("client too slow: the poll buffer is full");
        }
        self.polling.outbox.push_back(packet);
        self.polling.flush(false);
        Flow::Go
    }

    async fn outcome(&mut self, outcome: Outcome) -> Flow {
        match outcome {
            Outcome::Send(messages) => {
                for m in messages {
                    if let Flow::End(r) = self.send(format!("4{m}")).await {
                        return Flow::End(r);
                    }
                }
                Flow::Go
            }
            Outcome::Close(why) => policy(&why),
        }
    }

    /// One packet from the client, over either transport.
    async fn on_packet(&mut self, packet: &str) -> Flow {
        match packet.chars().next() {
            Some('3') => {
                self.last_pong = Instant::now();
                Flow::Go
            }
            // A client ping (an Engine.IO v3 habit): answer it.
            Some('2') => self.send("3".into()).await,
            Some('1') => Flow::End(None),
            Some('4') if !self.limit.allow() => policy(&format!(
                "too many messages: at most {} per minute",
                self.limit.per_minute
            )),
            Some('4') => {
                let outcome = self.handler.on_message(&packet[1..]).await;
                self.outcome(outcome).await
            }
            Some('6') => Flow::Go,
            _ => Flow::End(Some(CloseReason {
                code: CloseCode::Unsupported,
                description: Some("not an Engine.IO v4 text packet".into()),
            })),
        }
    }

    async fn on_control(&mut self, control: Control) -> Flow {
        match control {
            Control::Poll(tx) => {
                if self.ws.is_some() {
                    let _ = tx.send(Err(EngineError::BadRequest));
                    return Flow::Go;
                }
                self.polling.drop_abandoned();
                if self.polling.pending.is_some() {
                    // Two GETs at once: the protocol says the session is broken.
                    let _ = tx.send(Err(EngineError::BadRequest));
                    return Flow::End(None);
                }
                self.polling.pending = Some(tx);
                let upgrading = self.polling.upgrading;
                self.polling.flush(upgrading);
                Flow::Go
            }
            Control::Post(body, tx) => {
                if self.ws.is_some() {
                    let _ = tx.send(Err(EngineError::BadRequest));
                    return Flow::Go;
                }
                let _ = tx.send(Ok(()));
                for packet in body.split(SEPARATOR) {
                    if let Flow::End(r) = self.on_packet(packet).await {
                        return Flow::End(r);
                    }
                }
                Flow::Go
            }
            Control::Socket(id, out) => {
                let socket = Socket { id, out };
                if self.ws.is_none() && self.probe.is_none() {
                    self.probe = Some(socket);
                } else {
                    socket
                        .close(Some(CloseReason {
                            code: CloseCode::Policy,
                            description: Some("this session has a WebSocket already".into()),
                        }))
                        .await;
                }
                Flow::Go
            }
            Control::Text(id, text) => {
                if self.ws.as_ref().is_some_and(|w| w.id == id) {
                    self.on_packet(&text).await
                } else if self.probe.as_ref().is_some_and(|p| p.id == id) {
                    self.on_probe(&text).await
                } else {
                    Flow::Go
                }
            }
            Control::Gone(id) => {
                if self.ws.as_ref().is_some_and(|w| w.id == id) {
                    self.ws = None;
                    return Flow::End(None);
                }
                if self.probe.as_ref().is_some_and(|p| p.id == id) {
                    // The probe failed: the client goes on polling.
                    self.probe = None;
                    self.polling.upgrading = false;
                }
                Flow::Go
            }
        }
    }

    /// A packet on the upgrade probe's WebSocket.
    async fn on_probe(&mut self, text: &str) -> Flow {
        match text {
            "2probe" => {
                let answered = match self.probe.as_ref() {
                    Some(p) => p.out.send(WsOut::Text("3probe".into())).await.is_ok(),
                    None => false,
                };
                if !answered {
                    self.probe = None;
                    return Flow::Go;
                }
                // The client pauses polling once its pending GET returns: end it now.
                self.polling.upgrading = true;
                self.polling.flush(true);
                Flow::Go
            }
            "5" => {
                self.ws = self.probe.take();
                self.polling.upgrading = false;
                self.polling.flush(true);
                let queued: Vec<String> = self.polling.outbox.drain(..).collect();
                for packet in queued {
                    if let Flow::End(r) = self.send(packet).await {
                        return Flow::End(r);
                    }
                }
                Flow::Go
            }
            _ => {
                if let Some(p) = self.probe.take() {
                    p.close(Some(CloseReason {
                        code: CloseCode::Protocol,
                        description: Some("expected 2probe or 5 while upgrading".into()),
                    }))
                    .await;
                }
                self.polling.upgrading = false;
                Flow::Go
            }
        }
    }
}

/// Starts a session on the current thread; it lives until the client leaves, times out or
/// loses its rights, and holds `slot` until then.
#[allow(clippy::too_many_arguments)]
pub fn spawn<H: Handler>(
    sessions: &Sessions,
    slot: Slot,
    start: Start,
    handler: H,
    pushes: mpsc::Receiver<H::Push>,
    changes: watch::Receiver<u64>,
    limits: Limits,
    sid: String,
) {
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let (upgrades, ws, first) = match start {
        Start::Polling(first) => {
            sessions.0.insert(sid.clone(), tx);
            (json!(["websocket"]), None, Some(first))
        }
        Start::WebSocket(session, stream) => {
            let id = bridge_id();
            let out = bridge(id, tx, session, stream);
            (json!([]), Some(Socket { id, out }), None)
        }
    };
    let open = format!(
        "0{}",
        json!({
            "sid": sid, "upgrades": upgrades,
            "pingInterval": limits.ping_interval.as_millis() as u64,
            "pingTimeout": limits.ping_timeout.as_millis() as u64,
            "maxPayload": MAX_PAYLOAD,
        })
    );
    let sessions = sessions.clone();
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let mut engine = Engine {
            sid,
            handler,
            ws,
            probe: None,
            polling: Polling::default(),
            last_pong: Instant::now(),
            limit: crate::gateways::MessageLimit::per_minute(limits.messages_per_minute),
        };
        let ready = match first {
            Some(first) => first.send(Ok(open)).is_ok(),
            None => matches!(engine.send(open).await, Flow::Go),
        };
        let reason = if ready {
            run(&mut engine, rx, pushes, changes, &limits).await
        } else {
            None
        };
        sessions.0.remove(&engine.sid);
        engine.handler.close();
        if let Some(tx) = engine.polling.pending.take() {
            let _ = tx.send(Ok("1".into()));
        }
        if let Some(p) = engine.probe.take() {
            p.close(reason.clone()).await;
        }
        if let Some(ws) = engine.ws.take() {
            ws.close(reason).await;
        }
    });
}

async fn run<H: Handler>(
    engine: &mut Engine<H>,
    mut control: mpsc::Receiver<Control>,
    mut pushes: mpsc::Receiver<H::Push>,
    mut changes: watch::Receiver<u64>,
    limits: &Limits,
) -> Option<CloseReason> {
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.tick().await;
    let auth_deadline = tokio::time::sleep(limits.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut deadline_armed = true;
    loop {
        let flow = tokio::select! {
            c = control.recv() => match c {
                Some(c) => engine.on_control(c).await,
                None => Flow::End(None),
            },
            Some(item) = pushes.recv() => {
                let messages = engine.handler.on_push(item);
                engine.outcome(Outcome::Send(messages)).await
            }
            Ok(()) = changes.changed() => {
                let outcome = engine.handler.on_access_change();
                engine.outcome(outcome).await
            }
            _ = &mut auth_deadline, if deadline_armed => {
                deadline_armed = false;
                if engine.handler.authenticated() {
                    Flow::Go
                } else {
                    policy("no namespace connected in time")
                }
            }
            _ = ping.tick() => {
                if engine.last_pong.elapsed() > limits.ping_interval + limits.ping_timeout {
                    Flow::End(Some(CloseReason {
                        code: CloseCode::Away,
                        description: Some("ping timeout".into()),
                    }))
                } else {
                    engine.send("2".into()).await
                }
            }
        };
        if let Flow::End(reason) = flow {
            return reason;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_answer_joins_packets_with_the_record_separator_and_stays_under_the_payload_limit() {
        let mut p = Polling::default();
        let (tx, mut rx) = oneshot::channel();
        p.pending = Some(tx);
        p.outbox.push_back("2".into());
        p.outbox.push_back("42[\"a\"]".into());
        p.flush(false);
        assert_eq!(rx.try_recv().unwrap().unwrap(), "2\u{1e}42[\"a\"]");

        let big = "4".to_owned() + &"x".repeat(MAX_PAYLOAD - 10);
        p.outbox.push_back(big.clone());
        p.outbox.push_back(big.clone());
        let (tx, mut rx) = oneshot::channel();
        p.pending = Some(tx);
        p.flush(false);
        assert_eq!(rx.try_recv().unwrap().unwrap(), big);
        assert_eq!(p.outbox.len(), 1, "the rest waits for the next poll");

        let (tx, mut rx) = oneshot::channel();
        p.outbox.clear();
        p.pending = Some(tx);
        p.flush(false);
        assert!(p.pending.is_some(), "an empty poll waits");
        p.flush(true);
        assert_eq!(rx.try_recv().unwrap().unwrap(), "6");

        // A poll whose request went away loses nothing: the packets wait for the next one.
        let (tx, rx) = oneshot::channel();
        p.pending = Some(tx);
        drop(rx);
        p.outbox.push_back("42[\"b\"]".into());
        p.flush(false);
        assert!(p.pending.is_none());
        assert_eq!(p.outbox.len(), 1);
    }
}
