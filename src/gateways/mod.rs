//! Every socket protocol, one module each, and the connection core they share:
//!
//! - [`ws`]: the native event stream (`/api/v1/ws`);
//! - [`socketio`]: the Socket.IO gateway over the Engine.IO transports
//!   ([`socketio::engineio`]), with session recovery ([`socketio::recovery`]) and the
//!   `/messaging` commands ([`socketio::messaging`]);
//! - [`pusher`]: the Pusher Channels hub across processes, and its socket endpoint and HTTP
//!   API ([`pusher::socket`]);
//! - [`collab`]: FluxStudio's collaborative documents over the y-websocket protocol;
//! - [`signals`]: typing and presence, shared by every process (never persisted).
//!
//! What every endpoint gets from here, so that none has to get it right on its own:
//!
//! - **One connection cap** ([`Gateways::admit`]): every socket, of any protocol and any
//!   transport, holds a [`Slot`] for as long as it lives; at `WS_MAX_CONNECTIONS` the next
//!   handshake gets 503.
//! - **Frame limits enforced while receiving** ([`upgrade`]): the frame parser of actix-http
//!   checks a frame's size only once the whole frame has arrived, so a client declaring a
//!   256 MiB frame could make the server buffer it. [`FrameLimit`] reads each frame header
//!   as it arrives and fails the stream as soon as a header declares more than the limit.
//! - **An authentication deadline** (`WS_AUTH_TIMEOUT`): a socket that has not
//!   authenticated in time is closed.
//! - **The same authorization as HTTP** ([`authorize`]): the whole log and whole categories
//!   are for organization admins (as the history API), an entity's stream needs its
//!   frontend enabled (as its HTTP routes).
//! - **Revocation**: sockets watch `Access::changes` and check their caller again on every
//!   change (see `crate::identity::access`).
//! - **A message rate limit per connection** ([`Gateways::message_limit`],
//!   `WS_RATE_LIMIT_PER_MINUTE`): what a client may send, whatever the protocol.

pub mod collab;
pub mod pusher;
pub mod signals;
pub mod socketio;
pub mod ws;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, ProtocolError};
use futures_util::Stream;
use universal_events::identity::{Frontend, Role};
use uuid::Uuid;

use crate::config::Config;
use crate::http::guard::Principal;
use crate::http::ApiError;
use crate::store::category_of;

/// Limits and the open-connection count of all socket endpoints together.
pub struct Gateways {
    open: Arc<AtomicUsize>,
    /// `WS_MAX_CONNECTIONS`: sockets of every endpoint and transport, counted together.
    pub max_connections: usize,
    /// `WS_AUTH_TIMEOUT`: time a socket has to authenticate.
    pub auth_timeout: Duration,
    /// `WS_HEARTBEAT_INTERVAL`: time between server pings.
    pub heartbeat: Duration,
    /// Open Engine.IO sessions of this process (the Socket.IO gateway).
    pub engine: socketio::engineio::Sessions,
    /// `WS_RATE_LIMIT_PER_MINUTE`: client messages per minute on one connection (0 = no limit).
    pub messages_per_minute: u32,
}

impl Gateways {
    pub fn new(config: &Config) -> Self {
        Self {
            open: Default::default(),
            max_connections: config.ws_max_connections,
            auth_timeout: Duration::from_secs(config.ws_auth_timeout.max(1)),
            heartbeat: Duration::from_secs(config.ws_heartbeat_interval.max(1)),
            engine: Default::default(),
            messages_per_minute: config.ws_rate_limit_per_minute,
        }
    }

    /// A fresh message budget for one connection.
    pub fn message_limit(&self) -> MessageLimit {
        MessageLimit::per_minute(self.messages_per_minute)
    }

    /// Takes a connection slot, or refuses with 503 when every slot is taken.
    pub fn admit(&self) -> Result<Slot, ApiError> {
        let max = self.max_connections;
        let taken = self.open.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(format!(
                "the server holds its maximum of {max} socket connections; retry later"
            )));
        }
        metrics::gauge!("ub_ws_connections").increment(1.0);
        Ok(Slot(self.open.clone()))
    }

    /// Sockets open now, over every endpoint.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// The messages one connection may still send: `n` per minute, of which all `n` may come at
/// once (governor's quota: the budget refills one message every `60/n` s).
pub struct MessageLimit {
    limiter: Option<governor::DefaultDirectRateLimiter>,
    pub per_minute: u32,
}

impl MessageLimit {
    /// `n` messages per minute; 0 means no limit.
    pub fn per_minute(n: u32) -> Self {
        let limiter = std::num::NonZeroU32::new(n)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n)));
        Self {
            limiter,
            per_minute: n,
        }
    }

    /// Takes one message from the budget; `false` when it is spent (drop or refuse it).
    pub fn allow(&self) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }
}

/// A taken connection slot; dropping it frees the slot however the connection ends.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("ub_ws_connections").decrement(1.0);
    }
}

/// Upgrades to a WebSocket whose incoming frames may be at most `max_frame` bytes, checked
/// as each frame header arrives.
pub async fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    max_frame: usize,
) -> Result<(HttpResponse, actix_ws::Session, actix_ws::MessageStream), ApiError> {
    let limited: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(FrameLimit::new(body.into_inner(), max_frame));
    let mut payload = Payload::Stream { payload: limited };
    let body = web::Payload::from_request(req, &mut payload)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (response, session, stream) = actix_ws::handle(req, body)
        .map_err(|e| ApiError::bad_request(format!("not a WebSocket upgrade: {e}")))?;
    Ok((response, session, stream.max_frame_size(max_frame)))
}

/// The close frame for a protocol error of the incoming stream: 1009 for a frame over the
/// limit (whether found by [`FrameLimit`] or by the parser), 1002 otherwise.
pub fn close_for(e: &ProtocolError, max_frame: usize) -> CloseReason {
    let overflow = match e {
        ProtocolError::Overflow => true,
        ProtocolError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<PayloadError>())
            .is_some_and(|p| matches!(p, PayloadError::Overflow)),
        _ => false,
    };
    if overflow {
        CloseReason {
            code: CloseCode::Size,
            description: Some(format!("frames are limited to {max_frame} bytes")),
        }
    } else {
        CloseReason {
            code: CloseCode::Protocol,
            description: Some(e.to_string()),
        }
    }
}

/// Follows the WebSocket frame boundaries of a raw incoming byte stream, and fails it with
/// `PayloadError::Overflow` as soon as a frame header declares a payload over the limit, so
/// that such a frame is never buffered.
pub struct FrameLimit<S> {
    inner: S,
    max: u64,
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    failed: bool,
}

impl<S> FrameLimit<S> {
    pub fn new(inner: S, max: usize) -> Self {
        Self {
            inner,
            max: max as u64,
            header: [0; 14],
            have: 0,
            remaining: 0,
            failed: false,
        }
    }

    /// The payload length, once the header collected so far has it, and whether the header
    /// is complete.
    fn header_state(&self) -> (Option<u64>, bool) {
        if self.have < 2 {
            return (None, false);
        }
        let masked = self.header[1] & 0x80 != 0;
        let short = u64::from(self.header[1] & 0x7f);
        let ext = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if self.have < 2 + ext {
            return (None, false);
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            8 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            _ => short,
        };
        (Some(len), self.have == 2 + ext + if masked { 4 } else { 0 })
    }

    /// Walks one chunk; `false` when a frame over the limit begins in it.
    fn admit(&mut self, chunk: &[u8]) -> bool {
        let mut i = 0;
        while i < chunk.len() {
            if self.remaining > 0 {
                let take = self.remaining.min((chunk.len() - i) as u64);
                self.remaining -= take;
                i += take as usize;
                continue;
            }
            self.header[self.have] = chunk[i];
            self.have += 1;
            i += 1;
            match self.header_state() {
                (Some(len), _) if len > self.max => return false,
                (Some(len), true) => {
                    self.remaining = len;
                    self.have = 0;
                }
                _ => {}
            }
        }
        true
    }
}

impl<S> Stream for FrameLimit<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if this.admit(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    this.failed = true;
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            }
            other => other,
        }
    }
}

/// What a live subscription asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveTarget {
    /// One stream, e.g. `building-<id>`.
    Stream(String),
    /// Every stream of a category.
    Category(String),
    /// The whole log.
    All,
}

/// Stream categories whose entities belong to a frontend: a single stream of one of them
/// is readable by every member of an organization with that frontend enabled, as the
/// frontend's HTTP routes are.
/// A category listed more than once belongs to each of those frontends (swarm tasks are
/// shared by Quantum and Velocity Swarm): any one of them enabled is enough.
const FRONTEND_OF_CATEGORY: &[(&str, Frontend)] = &[
    ("building", Frontend::Citypulse),
    ("conversation", Frontend::Flowmind),
    ("swarm_task", Frontend::Quantum),
    ("swarm_task", Frontend::Velocity),
];

/// A stream that belongs to one user (a FlowMind chat session, whose first event names its
/// owner): besides [`authorize`], a member who is not an organization admin may follow only
/// their own, as with the chat routes. Another member's session answers `not_found`.
pub async fn authorize_owned(
    state: &crate::state::AppState,
    who: &Principal,
    stream: &str,
) -> Result<(), (&'static str, String)> {
    if category_of(stream) != "conversation" || who.role == Some(Role::Admin) {
        return Ok(());
    }
    let first = state
        .store
        .read_stream(stream, 1, crate::store::Direction::Forward, 1)
        .await
        .map_err(|_| ("unavailable", "the event store is unavailable".to_owned()))?;
    let owner = first
        .first()
        .filter(|e| e.event_type == "ChatSessionCreated")
        .and_then(|e| e.data.get("user_id"))
        .and_then(|u| u.as_str())
        .and_then(|u| Uuid::parse_str(u).ok());
    match owner {
        Some(owner) if owner != who.user_id => Err((
            "not_found",
            "no such stream in your organization".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Whether `who` may follow `target` live; `Ok` carries the organization whose events the
/// subscription is limited to. The rules are those of HTTP: the history API (the whole log,
/// a category, or any stream) is for organization admins, and an entity's stream also needs
/// its frontend enabled, as the frontend's routes do.
pub fn authorize(who: &Principal, target: &LiveTarget) -> Result<Uuid, (&'static str, String)> {
    let org = who.organization_id.ok_or((
        "no_organization",
        "the session belongs to no organization".to_owned(),
    ))?;
    let admin = who.role == Some(Role::Admin);
    let stream_frontends: Vec<Frontend> = match target {
        LiveTarget::Stream(s) => FRONTEND_OF_CATEGORY
            .iter()
            .filter(|(c, _)| *c == category_of(s))
            .map(|(_, f)| *f)
            .collect(),
        _ => vec![],
    };
    if let Some(&frontend) = stream_frontends.first() {
        if !stream_frontends.iter().any(|f| who.frontends.contains(f)) {
            return Err((
                "frontend_access_denied",
                format!("{} is not enabled for your organization", frontend.as_str()),
            ));
        }
        return Ok(org);
    }
    if !admin {
        return Err((
            "forbidden",
            "only an organization admin may follow the whole log, a category, or this \
             stream (as with the history API)"
                .to_owned(),
        ));
    }
    Ok(org)
}

/// Whether `who` may use a namespace of `frontend` (e.g. Socket.IO `/citypulse`).
pub fn authorize_frontend(
    who: &Principal,
    frontend: Frontend,
) -> Result<Uuid, (&'static str, String)> {
    match who.organization_id {
        Some(org) if who.frontends.contains(&frontend) => Ok(org),
        _ => Err((
            "frontend_access_denied",
            format!(
                "Frontend access denied: {} is not enabled for your organization",
                frontend.as_str()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn principal(role: Role, frontends: Vec<Frontend>) -> Principal {
        Principal {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            organization_id: Some(Uuid::new_v4()),
            role: Some(role),
            roles: vec![],
            frontends,
        }
    }

    #[test]
    fn a_connection_may_send_its_budget_at_once_and_then_nothing_until_it_refills() {
        let limit = MessageLimit::per_minute(3);
        assert!(limit.allow() && limit.allow() && limit.allow());
        assert!(!limit.allow());
        let unlimited = MessageLimit::per_minute(0);
        assert!((0..10_000).all(|_| unlimited.allow()));
    }

    #[test]
    fn the_whole_log_and_categories_are_for_admins_and_building_streams_need_citypulse() {
        let viewer = principal(Role::Viewer, vec![Frontend::Citypulse]);
        let admin = principal(Role::Admin, vec![]);
        let building = LiveTarget::Stream(format!("building-{}", Uuid::new_v4()));
        let user = LiveTarget::Stream(format!("user-{}", Uuid::new_v4()));
        assert_eq!(
            authorize(&viewer, &LiveTarget::All).unwrap_err().0,
            "forbidden"
        );
        assert_eq!(
            authorize(&viewer, &LiveTarget::Category("building".into()))
                .unwrap_err()
                .0,
            "forbidden"
        );
        assert_eq!(authorize(&viewer, &user).unwrap_err().0, "forbidden");
        assert!(authorize(&viewer, &building).is_ok());
        assert!(authorize(&admin, &LiveTarget::All).is_ok());
        assert!(authorize(&admin, &user).is_ok());
        assert_eq!(
            authorize(&admin, &building).unwrap_err().0,
            "frontend_access_denied"
        );
    }

    fn frame_header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=65535 => {
                h.push(0x80 | 126);
                h.extend((len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend(len.to_be_bytes());
            }
        }
        h.extend([1, 2, 3, 4]);
        h
    }

    #[actix_web::test]
    async fn a_frame_over_the_limit_fails_the_stream_at_its_header_whatever_the_chunking() {
        let mut ok = frame_header(300);
        ok.extend(vec![0u8; 300]);
        let mut bytes = ok.clone();
        bytes.extend(frame_header(100));
        bytes.extend(vec![0u8; 100]);
        bytes.extend(frame_header(256 * 1024 * 1024));
        bytes.extend(vec![0u8; 10]);
        // Fed one byte at a time, the limit still trips exactly at the big frame's header.
        let chunks: Vec<Result<Bytes, PayloadError>> = bytes
            .iter()
            .map(|b| Ok(Bytes::copy_from_slice(&[*b])))
            .collect();
        let mut limited = FrameLimit::new(futures_util::stream::iter(chunks), 1024);
        let mut passed = 0;
        let mut failed = false;
        while let Some(item) = limited.next().await {
            match item {
                Ok(b) => passed += b.len(),
                Err(PayloadError::Overflow) => {
                    failed = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(failed);
        assert_eq!(passed, ok.len() + frame_header(100).len() + 100 + 9);
    }
}
