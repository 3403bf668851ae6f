//! The Pusher Channels hub: signatures, channel rules, and the fan-out of published messages
//! to the sockets of every server process (the socket endpoint and the HTTP API are in
//! `pusher::socket`).
//!
//! **Across processes.** A deployment runs several processes on one database, and a client
//! may hold its socket on any of them. Every message, whether published through the HTTP
//! API, by a client event, or by server code ([`Hub::publish`]), goes through PostgreSQL
//! `NOTIFY` on one channel; every process `LISTEN`s and hands the message to its own
//! subscribers of the named channels. A message whose notification would exceed the 8000
//! byte payload limit of `NOTIFY` is stored in `pusher_messages` and the notification carries
//! only its id (rows are swept after a minute). Messages are ephemeral, as in Pusher: a
//! process whose listening connection drops loses what is published until it is back
//! (sqlx reconnects at once).
//!
//! **Subscriptions and presence** are recorded in `pusher_subscriptions` (socket, channel,
//! process, and for presence channels the member's `user_id` and `user_info`), so that the
//! channels API and the presence member lists see every process. Members are counted per
//! user, not per socket: `pusher_internal:member_added` goes out when a user's first socket
//! joins (on any process), `member_removed` when the last one leaves. Each process beats in
//! `pusher_nodes` every `WS_HEARTBEAT_INTERVAL`; a process silent for three beats is swept
//! with its subscriptions, and its members are announced gone.
//!
//! **Who may join what.** Private and presence channels need a signature from
//! `POST /pusher/auth`, which signs for a user only the channels of [`may_join`]:
//! `private-user-{user_id}` for that user, `private-org-{organization_id}` and
//! `presence-org-{organization_id}` for members of that organization (the organization of
//! the caller's session). The auth endpoint records the grant (socket, channel, user,
//! session, organization) in `pusher_grants`; the process holding the socket reads it when
//! the socket subscribes, keeps it, and checks it again on every change of the access view
//! (`crate::identity::access`), so that a logout or a removal from the organization, on any process,
//! cuts the subscription at once.

pub mod socket;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::config::Config;
use crate::http::guard::Principal;

type HmacSha256 = Hmac<Sha256>;

/// The `NOTIFY` channel all processes listen on.
pub const NOTIFY_CHANNEL: &str = "ub_pusher";
/// Largest notification sent inline; `NOTIFY` refuses payloads of 8000 bytes or more.
pub const MAX_NOTIFY: usize = 7900;
/// Largest `data` of one event, as Pusher's own limit (10 KB).
pub const MAX_DATA: usize = 10 * 1024;
/// Longest channel and event name.
pub const MAX_NAME: usize = 200;
/// Most channels one API event may name.
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// Most events of one batch request.
pub const MAX_BATCH: usize = 10;
/// How far `auth_timestamp` of an API request may be from the server's clock, in seconds.
pub const TIMESTAMP_WINDOW: i64 = 600;
/// Most distinct users of one presence channel (Pusher's limit).
pub const MAX_PRESENCE_MEMBERS: i64 = 100;
/// The former development default of `PUSHER_SECRET`, public in this source: never used
/// unless set explicitly (tests do), and refused in production. Without `PUSHER_SECRET`,
/// development uses a random secret of its database instead ([`Settings::load`]).
pub const DEV_SECRET: &str = "universal-backend-dev-secret";
/// Most rows the channels API lists.
pub const MAX_LISTED_CHANNELS: i64 = 10_000;
/// Longest database call of the hub.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// The app's identity and switch (`PUSHER_*`).
#[derive(Clone)]
pub struct Settings {
    pub enabled: bool,
    pub app_id: String,
    pub key: String,
    secret: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("enabled", &self.enabled)
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// From the configuration. Without `PUSHER_SECRET`, development signs with a random
    /// secret generated once for the database and shared by all its processes
    /// (`generated_secret`), so that no one can sign a private channel with a known default;
    /// in production the gateway needs a secret of its own, so without one it is off (or,
    /// when `PUSHER_ENABLED=true` asks for it, the server refuses to start).
    pub async fn load(config: &Config, pool: &PgPool) -> anyhow::Result<Self> {
        let (enabled, given) = Self::check_config(config)?;
        let secret = match given {
            Some(s) => s.to_owned(),
            None if enabled => generated_secret(pool).await?,
            // Off: nothing is signed or checked.
            None => random_secret(),
        };
        Ok(Self {
            enabled,
            app_id: config.pusher_app_id.clone(),
            key: config.pusher_key.clone(),
            secret,
        })
    }

    /// Whether the gateway is on, and the secret the configuration gives (`None`: none).
    fn check_config(config: &Config) -> anyhow::Result<(bool, Option<&str>)> {
        let given = config.pusher_secret.as_deref().filter(|s| !s.is_empty());
        let production = config.is_production();
        let enabled = match (config.pusher_enabled, production, given) {
            (Some(false), _, _) => false,
            (Some(true), true, None) => anyhow::bail!(
                "PUSHER_SECRET is required when NODE_ENV=production and PUSHER_ENABLED=true"
            ),
            (None, true, None) => {
                tracing::warn!(
                    "the Pusher gateway is off: NODE_ENV=production and PUSHER_SECRET is not set"
                );
                false
            }
            _ => true,
        };
        if production && enabled && given == Some(DEV_SECRET) {
            anyhow::bail!("PUSHER_SECRET must not be the development secret in production");
        }
        anyhow::ensure!(
            !config.pusher_key.is_empty() && !config.pusher_app_id.is_empty(),
            "PUSHER_KEY and PUSHER_APP_ID must not be empty"
        );
        Ok((enabled, given))
    }

    pub fn new(app_id: &str, key: &str, secret: &str) -> Self {
        Self {
            enabled: true,
            app_id: app_id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
        }
    }

    /// The `auth` of a subscription: `key:hex(HMAC-SHA256(secret, socket_id:channel[:data]))`.
    pub fn channel_auth(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
    ) -> String {
        format!(
            "{}:{}",
            self.key,
            sign(
                &self.secret,
                &channel_message(socket_id, channel, channel_data)
            )
        )
    }

    /// Whether `auth` is this app's signature of the subscription (compared in constant time).
    pub fn check_channel_auth(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
        auth: &str,
    ) -> bool {
        let Some((key, signature)) = auth.split_once(':') else {
            return false;
        };
        key == self.key
            && verify(
                &self.secret,
                &channel_message(socket_id, channel, channel_data),
                signature,
            )
    }

    /// Checks the signature of an HTTP API request (Pusher's `auth_*` query parameters and
    /// `body_md5`); `Err` says what is wrong. `now` is the Unix time in seconds.
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<(), String> {
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let key = get("auth_key").ok_or("auth_key is missing")?;
        if key != self.key {
            return Err("unknown auth_key".into());
        }
        if get("auth_version") != Some("1.0") {
            return Err("auth_version must be 1.0".into());
        }
        let timestamp: i64 = get("auth_timestamp")
            .ok_or("auth_timestamp is missing")?
            .parse()
            .map_err(|_| "auth_timestamp is not a number")?;
        if (now - timestamp).abs() > TIMESTAMP_WINDOW {
            return Err(format!(
                "auth_timestamp is more than {TIMESTAMP_WINDOW} s from the server's time ({now})"
            ));
        }
        if !body.is_empty() {
            let md5 = get("body_md5").ok_or("body_md5 is missing")?;
            if !md5.eq_ignore_ascii_case(&md5_hex(body)) {
                return Err("body_md5 does not match the body".into());
            }
        }
        let signature = get("auth_signature").ok_or("auth_signature is missing")?;
        if !verify(
            &self.secret,
            &request_message(method, path, query),
            signature,
        ) {
            return Err("invalid auth_signature".into());
        }
        Ok(())
    }

    /// Signs an API request as a Pusher server library does (for tests and for calling
    /// another deployment); returns the query string with `auth_signature`.
    pub fn sign_request(&self, method: &str, path: &str, body: &[u8], now: i64) -> String {
        let mut query = vec![
            ("auth_key".to_owned(), self.key.clone()),
            ("auth_timestamp".to_owned(), now.to_string()),
            ("auth_version".to_owned(), "1.0".to_owned()),
        ];
        if !body.is_empty() {
            query.push(("body_md5".to_owned(), md5_hex(body)));
        }
        let signature = sign(&self.secret, &request_message(method, path, &query));
        let mut out = canonical_query(&query);
        out.push_str("&auth_signature=");
        out.push_str(&signature);
        out
    }
}

fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// `key=value` pairs without `auth_signature`, keys lowercased, sorted by key, joined with
/// `&`, values as they are (not URL-encoded): what Pusher signs.
fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `METHOD\nPATH\nCANONICAL_QUERY`.
fn request_message(method: &str, path: &str, query: &[(String, String)]) -> String {
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        canonical_query(query)
    )
}

/// Lowercase hex of HMAC-SHA256(secret, message).
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// 32 random bytes from the operating system, in hex.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    argon2::password_hash::rand_core::RngCore::fill_bytes(
        &mut argon2::password_hash::rand_core::OsRng,
        &mut bytes,
    );
    hex::encode(bytes)
}

/// The random secret of a development deployment without `PUSHER_SECRET`: made by the first
/// process that asks (`INSERT ... ON CONFLICT DO NOTHING`, so that processes starting
/// together agree) and read back by every other, since a subscription is signed by the
/// process that answers `POST /pusher/auth` and checked by the one holding the socket. It
/// lasts as long as the database; other servers calling the HTTP API need `PUSHER_SECRET`.
async fn generated_secret(pool: &PgPool) -> anyhow::Result<String> {
    let made: Option<String> = sqlx::query_scalar(
        "INSERT INTO pusher_generated_secret (secret) VALUES ($1) \
         ON CONFLICT (only_row) DO NOTHING RETURNING secret",
    )
    .bind(random_secret())
    .fetch_optional(pool)
    .await
    .context("storing the generated Pusher secret")?;
    let secret = match made {
        Some(s) => {
            tracing::warn!(
                "PUSHER_SECRET is not set: generated a random Pusher secret for this database \
                 (its processes share it); set PUSHER_SECRET for other servers to use the HTTP API"
            );
            s
        }
        None => {
            tracing::warn!(
                "PUSHER_SECRET is not set: using the random Pusher secret generated earlier \
                 for this database"
            );
            sqlx::query_scalar("SELECT secret FROM pusher_generated_secret")
                .fetch_one(pool)
                .await
                .context("reading the generated Pusher secret")?
        }
    };
    Ok(secret)
}

/// Whether `signature` (hex) is HMAC-SHA256(secret, message), compared in constant time.
pub fn verify(secret: &str, message: &str, signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    mac.verify_slice(&bytes).is_ok()
}

/// Lowercase hex MD5 of a body.
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The kinds of channel, by name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    Presence,
    /// `private-encrypted-`: end-to-end encrypted channels, not supported here.
    Encrypted,
}

impl ChannelKind {
    pub fn of(channel: &str) -> Self {
        if channel.starts_with("private-encrypted-") {
            Self::Encrypted
        } else if channel.starts_with("private-") {
            Self::Private
        } else if channel.starts_with("presence-") {
            Self::Presence
        } else {
            Self::Public
        }
    }
}

/// Pusher's channel names: 1 to 200 of `A-Z a-z 0-9 _ - = @ , . ;`.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// Event names: 1 to 200 bytes.
pub fn valid_event(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

/// Socket ids as this server issues them: `<digits>.<digits>`.
pub fn valid_socket_id(id: &str) -> bool {
    id.len() <= 40
        && id.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// A new socket id, unique across processes with overwhelming probability.
pub fn new_socket_id() -> String {
    let r = Uuid::new_v4().as_u128();
    format!(
        "{}.{}",
        (r >> 64) as u64 % 1_000_000_000_000,
        r as u64 % 1_000_000_000_000
    )
}

/// The channel and event names the ToolboxAI dashboard listens to (the seed's kebab-case),
/// for the code that publishes agent executions.
pub mod toolbox {
    /// The public channel of content generation.
    pub const CONTENT_GENERATION: &str = "content-generation";
    pub const GENERATION_STARTED: &str = "generation-started";
    pub const GENERATION_PROGRESS: &str = "generation-progress";
    pub const CONTENT_GENERATED: &str = "content-generated";
    pub const GENERATION_FAILED: &str = "generation-failed";
    /// On the organization's private channel, [`super::org_channel`].
    pub const AGENT_STATUS_UPDATE: &str = "agent-status-update";
}

/// The private channel of one organization (e.g. for `agent-status-update`).
pub fn org_channel(org: Uuid) -> String {
    format!("private-org-{org}")
}

/// Which private and presence channels `who` may join: `private-user-{user_id}` its own,
/// `private-org-{id}` and `presence-org-{id}` those of its session's organization. `Err`
/// carries the reason.
pub fn may_join(who: &Principal, channel: &str) -> Result<(), String> {
    let id = |rest: &str| Uuid::parse_str(rest).ok();
    if let Some(user) = channel.strip_prefix("private-user-").and_then(id) {
        return match user == who.user_id {
            true => Ok(()),
            false => Err(format!("{channel} is another user's channel")),
        };
    }
    let org = channel
        .strip_prefix("private-org-")
        .or_else(|| channel.strip_prefix("presence-org-"))
        .and_then(id);
    match (org, who.organization_id) {
        (Some(org), Some(mine)) if org == mine => Ok(()),
        (Some(_), _) => Err(format!(
            "{channel} belongs to an organization this session is not logged in to"
        )),
        (None, _) => Err(format!(
            "no user may join {channel}: private channels are private-user-{{user_id}} and \
             private-org-{{organization_id}}, presence channels presence-org-{{organization_id}}"
        )),
    }
}

/// A frame ready to send to a socket.
pub type Frame = Arc<str>;

/// How the hub reaches one local socket: its bounded queue, and a bell rung when the queue
/// is full (the socket is then closed as too slow rather than buffered without end).
#[derive(Clone)]
pub struct Outlet {
    pub tx: mpsc::Sender<Frame>,
    pub overflow: Arc<Notify>,
}

/// Who authorized a subscription through `POST /pusher/auth`.
#[derive(Debug, Clone)]
pub struct Grant {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub organization_id: Option<Uuid>,
}

impl Grant {
    /// The grant as a principal whose rights can be read again (see `Principal::refreshed`).
    pub fn principal(&self) -> Principal {
        Principal {
            user_id: self.user_id,
            session_id: self.session_id,
            organization_id: self.organization_id,
            role: None,
            roles: vec![],
            frontends: vec![],
        }
    }
}

/// A presence channel's members: Pusher's `{ids, hash, count}`.
#[derive(Debug, Clone, Serialize)]
pub struct Members {
    pub ids: Vec<String>,
    pub hash: serde_json::Map<String, Value>,
    pub count: usize,
}

/// One message between processes.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// Channels.
    c: Vec<String>,
    /// Event name.
    e: String,
    /// Data (a string from the API; any JSON from client events).
    d: Value,
    /// Socket not to deliver to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    /// Sender's presence user id (client events on presence channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
}

/// The hub of this process.
pub struct Hub {
    pub settings: Settings,
    /// This process, in `pusher_nodes`.
    pub node: Uuid,
    pool: PgPool,
    /// Channel → socket id → outlet, for this process's sockets.
    local: DashMap<String, HashMap<String, Outlet>>,
}

impl Hub {
    /// The hub, listening and beating (when enabled) on the current runtime before it
    /// returns, so that nothing published after start-up is missed.
    pub async fn start(
        config: &Config,
        pool: PgPool,
        heartbeat: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let hub = Arc::new(Self {
            settings: Settings::load(config, &pool).await?,
            node: Uuid::new_v4(),
            pool,
            local: DashMap::new(),
        });
        if !hub.settings.enabled {
            return Ok(hub);
        }
        hub.beat().await.context("registering the Pusher node")?;
        let mut listener = PgListener::connect_with(&hub.pool)
            .await
            .context("the Pusher listener cannot connect")?;
        listener
            .listen(NOTIFY_CHANNEL)
            .await
            .context("LISTEN for Pusher messages failed")?;
        let first = std::sync::Mutex::new(Some(listener));
        let weak = Arc::downgrade(&hub);
        crate::rt::supervise("pusher-listener", move || {
            let ready = first.lock().ok().and_then(|mut l| l.take());
            let weak = weak.clone();
            async move {
                let listener = match ready {
                    Some(l) => l,
                    // After a panic: a fresh connection (notifications meanwhile are lost,
                    // as on any reconnect).
                    None => loop {
                        let Some(hub) = weak.upgrade() else { return };
                        let pool = hub.pool.clone();
                        drop(hub);
                        if let Ok(mut l) = PgListener::connect_with(&pool).await {
                            if l.listen(NOTIFY_CHANNEL).await.is_ok() {
                                break l;
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    },
                };
                listen(weak, listener).await
            }
        });
        let weak = Arc::downgrade(&hub);
        let every = heartbeat.max(Duration::from_secs(1));
        crate::rt::supervise("pusher-heartbeat", move || beat(weak.clone(), every));
        Ok(hub)
    }

    /// Publishes `data` (serialized to a JSON string, as Pusher's server libraries do) as
    /// `event` on `channel`, to subscribers on every process. For server code, e.g. agent
    /// executions: `generation-progress` on `content-generation`.
    pub async fn publish(
        &self,
        channel: &str,
        event: &str,
        data: &impl Serialize,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(valid_channel(channel), "invalid channel name {channel:?}");
        anyhow::ensure!(valid_event(event), "invalid event name {event:?}");
        let data = serde_json::to_string(data)?;
        anyhow::ensure!(data.len() <= MAX_DATA, "event data over {MAX_DATA} bytes");
        self.trigger(
            &[channel.to_owned()],
            event,
            Value::String(data),
            None,
            None,
        )
        .await
    }

    /// Delivers `data` (serialized to a JSON string) as `event` on `channel` to this
    /// process's subscribers only, without `NOTIFY`: for publishers that run in every process
    /// and read the same source (the agent events follow the log in each process), where
    /// [`Hub::publish`] would deliver each message once per process.
    pub fn publish_local(
        &self,
        channel: &str,
        event: &str,
        data: &impl Serialize,
    ) -> anyhow::Result<()> {
        if !self.settings.enabled {
            return Ok(());
        }
        anyhow::ensure!(valid_channel(channel), "invalid channel name {channel:?}");
        anyhow::ensure!(valid_event(event), "invalid event name {event:?}");
        let data = serde_json::to_string(data)?;
        anyhow::ensure!(data.len() <= MAX_DATA, "event data over {MAX_DATA} bytes");
        self.deliver(&Wire {
            c: vec![channel.to_owned()],
            e: event.to_owned(),
            d: Value::String(data),
            x: None,
            u: None,
        });
        Ok(())
    }

    /// Sends one event to the subscribers of `channels` on every process, except socket
    /// `except`. No-op when the gateway is disabled.
    pub async fn trigger(
        &self,
        channels: &[String],
        event: &str,
        data: Value,
        except: Option<&str>,
        user_id: Option<&str>,
    ) -> anyhow::Result<()> {
        if !self.settings.enabled {
            return Ok(());
        }
        let wire = Wire {
            c: channels.to_vec(),
            e: event.to_owned(),
            d: data,
            x: except.map(str::to_owned),
            u: user_id.map(str::to_owned),
        };
        let body = serde_json::to_string(&wire)?;
        let payload = if body.len() <= MAX_NOTIFY {
            body
        } else {
            let id: i64 = tokio::time::timeout(
                DB_TIMEOUT,
                sqlx::query_scalar("INSERT INTO pusher_messages (body) VALUES ($1) RETURNING id")
                    .bind(&body)
                    .fetch_one(&self.pool),
            )
            .await
            .context("storing a large Pusher message timed out")??;
            json!({ "ref": id }).to_string()
        };
        tokio::time::timeout(
            DB_TIMEOUT,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(&payload)
                .execute(&self.pool),
        )
        .await
        .context("NOTIFY of a Pusher message timed out")??;
        metrics::counter!("ub_pusher_published_total").increment(1);
        Ok(())
    }

    /// A notification arrived: fetch it if stored, then deliver it here.
    async fn on_notification(&self, payload: &str) {
        let body = match serde_json::from_str::<Value>(payload) {
            Ok(v) if v.get("ref").is_some() => {
                let Some(id) = v["ref"].as_i64() else { return };
                let row = sqlx::query_scalar::<_, String>(
                    "SELECT body FROM pusher_messages WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool);
                match tokio::time::timeout(DB_TIMEOUT, row).await {
                    Ok(Ok(Some(body))) => body,
                    other => {
                        tracing::warn!(id, ?other, "a stored Pusher message could not be read");
                        return;
                    }
                }
            }
            _ => payload.to_owned(),
        };
        match serde_json::from_str::<Wire>(&body) {
            Ok(wire) => self.deliver(&wire),
            Err(e) => tracing::warn!(error = %e, "an unreadable Pusher notification"),
        }
    }

    /// Hands a message to this process's subscribers; a full socket queue rings its bell.
    fn deliver(&self, wire: &Wire) {
        for channel in &wire.c {
            let Some(subs) = self.local.get(channel) else {
                continue;
            };
            let mut frame = json!({ "event": wire.e, "channel": channel, "data": wire.d });
            if let Some(u) = &wire.u {
                frame["user_id"] = json!(u);
            }
            let frame: Frame = frame.to_string().into();
            for (socket, outlet) in subs.iter() {
                if wire.x.as_deref() == Some(socket.as_str()) {
                    continue;
                }
                match outlet.tx.try_send(frame.clone()) {
                    Ok(()) => metrics::counter!("ub_pusher_delivered_total").increment(1),
                    Err(mpsc::error::TrySendError::Full(_)) => outlet.overflow.notify_one(),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }

    /// Delivers this process's messages for `channel` to `socket` from now on.
    pub fn join_local(&self, channel: &str, socket: &str, outlet: Outlet) {
        self.local
            .entry(channel.to_owned())
            .or_default()
            .insert(socket.to_owned(), outlet);
    }

    /// Stops delivering `channel` to `socket`.
    pub fn leave_local(&self, channel: &str, socket: &str) {
        if let Some(mut subs) = self.local.get_mut(channel) {
            subs.remove(socket);
        }
        self.local.remove_if(channel, |_, subs| subs.is_empty());
    }

    /// Records a subscription to a public or private channel (for the channels API).
    pub async fn record(&self, socket: &str, channel: &str) -> anyhow::Result<()> {
        let q = sqlx::query(
            "INSERT INTO pusher_subscriptions (socket_id, channel, node) VALUES ($1, $2, $3) \
             ON CONFLICT (socket_id, channel) DO NOTHING",
        )
        .bind(socket)
        .bind(channel)
        .bind(self.node)
        .execute(&self.pool);
        tokio::time::timeout(DB_TIMEOUT, q).await??;
        Ok(())
    }

    /// Joins `socket` to presence `channel` as `user_id`: records it, announces the user
    /// to the others if this is the user's first socket there, and answers the members.
    pub async fn presence_join(
        &self,
        socket: &str,
        channel: &str,
        user_id: &str,
        user_info: &Value,
    ) -> Result<Members, PresenceError> {
        let work = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                .bind(channel)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            let (users, mine): (i64, i64) = sqlx::query_as(
                "SELECT count(DISTINCT user_id), count(*) FILTER (WHERE user_id = $2) \
                 FROM pusher_subscriptions WHERE channel = $1",
            )
            .bind(channel)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            if mine == 0 && users >= MAX_PRESENCE_MEMBERS {
                return Ok(Err(PresenceError::Full));
            }
            sqlx::query(
                "INSERT INTO pusher_subscriptions (socket_id, channel, node, user_id, user_info) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (socket_id, channel) \
                 DO UPDATE SET user_id = EXCLUDED.user_id, user_info = EXCLUDED.user_info",
            )
            .bind(socket)
            .bind(channel)
            .bind(self.node)
            .bind(user_id)
            .bind(user_info)
            .execute(&mut *tx)
            .await?;
            let first: bool = sqlx::query_scalar(
                "SELECT count(*) = 1 FROM pusher_subscriptions WHERE channel = $1 AND user_id = $2",
            )
            .bind(channel)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Ok(first))
        };
        let first = tokio::time::timeout(DB_TIMEOUT, work)
            .await
            .map_err(|_| PresenceError::Unavailable)?
            .map_err(|e| {
                tracing::warn!(error = %e, "presence join failed");
                PresenceError::Unavailable
            })??;
        if first {
            let data = json!({ "user_id": user_id, "user_info": user_info }).to_string();
            self.trigger(
                &[channel.to_owned()],
                "pusher_internal:member_added",
                Value::String(data),
                Some(socket),
                None,
            )
            .await
            .map_err(|_| PresenceError::Unavailable)?;
        }
        self.members(channel)
            .await
            .map_err(|_| PresenceError::Unavailable)
    }

    /// The members of a presence channel, one entry per user.
    pub async fn members(&self, channel: &str) -> anyhow::Result<Members> {
        let q = sqlx::query(
            "SELECT DISTINCT ON (user_id) user_id, user_info FROM pusher_subscriptions \
             WHERE channel = $1 AND user_id IS NOT NULL ORDER BY user_id, socket_id LIMIT $2",
        )
        .bind(channel)
        .bind(MAX_PRESENCE_MEMBERS)
        .fetch_all(&self.pool);
        let rows = tokio::time::timeout(DB_TIMEOUT, q).await??;
        let mut members = Members {
            ids: vec![],
            hash: Default::default(),
            count: rows.len(),
        };
        for row in rows {
            let id: String = row.try_get("user_id")?;
            let info: Option<Value> = row.try_get("user_info")?;
            members.hash.insert(id.clone(), info.unwrap_or(Value::Null));
            members.ids.push(id);
        }
        Ok(members)
    }

    /// Ends `socket`'s subscription to `channel` everywhere (locally and in the table);
    /// announces `member_removed` when it was a presence user's last socket there.
    pub async fn leave(&self, socket: &str, channel: &str, presence_user: Option<&str>) {
        self.leave_local(channel, socket);
        let work = async {
            let mut tx = self.pool.begin().await?;
            if let Some(user) = presence_user {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                    .bind(channel)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM pusher_subscriptions WHERE socket_id = $1 AND channel = $2")
                .bind(socket)
                .bind(channel)
                .execute(&mut *tx)
                .await?;
            let gone = match presence_user {
                Some(user) => {
                    sqlx::query_scalar::<_, bool>(
                        "SELECT NOT EXISTS (SELECT 1 FROM pusher_subscriptions \
                         WHERE channel = $1 AND user_id = $2)",
                    )
                    .bind(channel)
                    .bind(user)
                    .fetch_one(&mut *tx)
                    .await?
                }
                None => false,
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(gone)
        };
        match tokio::time::timeout(DB_TIMEOUT, work).await {
            Ok(Ok(true)) => {
                let user = presence_user.unwrap_or_default();
                self.member_removed(channel, user).await;
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, channel, "Pusher unsubscribe not recorded"),
            Err(_) => tracing::warn!(channel, "Pusher unsubscribe timed out"),
        }
    }

    async fn member_removed(&self, channel: &str, user: &str) {
        let data = json!({ "user_id": user }).to_string();
        if let Err(e) = self
            .trigger(
                &[channel.to_owned()],
                "pusher_internal:member_removed",
                Value::String(data),
                None,
                None,
            )
            .await
        {
            tracing::warn!(error = %e, channel, "member_removed not published");
        }
    }

    /// Records that `who` authorized `socket` for `channel` (see the module comment).
    pub async fn grant(&self, socket: &str, channel: &str, who: &Principal) -> anyhow::Result<()> {
        let q = sqlx::query(
            "INSERT INTO pusher_grants (socket_id, channel, user_id, session_id, organization_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (socket_id, channel) DO UPDATE SET \
             user_id = EXCLUDED.user_id, session_id = EXCLUDED.session_id, \
             organization_id = EXCLUDED.organization_id, created_at = now()",
        )
        .bind(socket)
        .bind(channel)
        .bind(who.user_id)
        .bind(who.session_id)
        .bind(who.organization_id)
        .execute(&self.pool);
        tokio::time::timeout(DB_TIMEOUT, q).await??;
        Ok(())
    }

    /// The grant recorded for (socket, channel), if any.
    pub async fn granted(&self, socket: &str, channel: &str) -> anyhow::Result<Option<Grant>> {
        let q = sqlx::query_as::<_, (Uuid, Uuid, Option<Uuid>)>(
            "SELECT user_id, session_id, organization_id FROM pusher_grants \
             WHERE socket_id = $1 AND channel = $2",
        )
        .bind(socket)
        .bind(channel)
        .fetch_optional(&self.pool);
        let row = tokio::time::timeout(DB_TIMEOUT, q).await??;
        Ok(row.map(|(user_id, session_id, organization_id)| Grant {
            user_id,
            session_id,
            organization_id,
        }))
    }

    /// Forgets the grants of a socket that has gone.
    pub async fn forget_socket(&self, socket: &str) {
        let q = sqlx::query("DELETE FROM pusher_grants WHERE socket_id = $1")
            .bind(socket)
            .execute(&self.pool);
        let _ = tokio::time::timeout(DB_TIMEOUT, q).await;
    }

    /// Occupied channels (of every process) starting with `prefix`: (name, subscriptions,
    /// distinct presence users).
    pub async fn channels(&self, prefix: &str) -> anyhow::Result<Vec<(String, i64, i64)>> {
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let q = sqlx::query_as(
            "SELECT channel, count(*), count(DISTINCT user_id) FROM pusher_subscriptions \
             WHERE channel LIKE $1 GROUP BY channel ORDER BY channel LIMIT $2",
        )
        .bind(pattern)
        .bind(MAX_LISTED_CHANNELS)
        .fetch_all(&self.pool);
        Ok(tokio::time::timeout(DB_TIMEOUT, q).await??)
    }

    /// (subscriptions, distinct presence users) of one channel, over every process.
    pub async fn channel(&self, channel: &str) -> anyhow::Result<(i64, i64)> {
        let q = sqlx::query_as(
            "SELECT count(*), count(DISTINCT user_id) FROM pusher_subscriptions WHERE channel = $1",
        )
        .bind(channel)
        .fetch_one(&self.pool);
        Ok(tokio::time::timeout(DB_TIMEOUT, q).await??)
    }

    /// Beats for this process and sweeps what silent processes and old messages left.
    async fn beat(&self) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO pusher_nodes (node, seen_at) VALUES ($1, now()) \
             ON CONFLICT (node) DO UPDATE SET seen_at = now()",
        )
        .bind(self.node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sweep(&self, heartbeat: Duration) -> anyhow::Result<()> {
        let stale = (heartbeat * 3).as_secs_f64();
        let gone: Vec<(String, String)> = sqlx::query_as(
            "DELETE FROM pusher_subscriptions s USING pusher_nodes n \
             WHERE s.node = n.node AND n.seen_at < now() - make_interval(secs => $1) \
             AND s.user_id IS NOT NULL RETURNING s.channel, s.user_id",
        )
        .bind(stale)
        .fetch_all(&self.pool)
        .await?;
        sqlx::query("DELETE FROM pusher_nodes WHERE seen_at < now() - make_interval(secs => $1)")
            .bind(stale)
            .execute(&self.pool)
            .await?;
        let mut seen = std::collections::HashSet::new();
        for (channel, user) in gone {
            if !seen.insert((channel.clone(), user.clone())) {
                continue;
            }
            let left: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (SELECT 1 FROM pusher_subscriptions \
                 WHERE channel = $1 AND user_id = $2)",
            )
            .bind(&channel)
            .bind(&user)
            .fetch_one(&self.pool)
            .await?;
            if left {
                self.member_removed(&channel, &user).await;
            }
        }
        sqlx::query("DELETE FROM pusher_messages WHERE created_at < now() - interval '1 minute'")
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM pusher_grants WHERE created_at < now() - interval '10 minutes'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Why a presence join failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceError {
    Full,
    Unavailable,
}

async fn listen(hub: Weak<Hub>, mut listener: PgListener) {
    loop {
        // `recv` reconnects by itself; notifications sent while it was away are lost.
        match listener.recv().await {
            Ok(n) => {
                let Some(hub) = hub.upgrade() else { return };
                hub.on_notification(n.payload()).await;
            }
            Err(e) => {
                if hub.strong_count() == 0 {
                    return;
                }
                tracing::warn!(error = %e, "the Pusher listener lost its connection; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn beat(hub: Weak<Hub>, heartbeat: Duration) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let work = async {
            hub.beat().await?;
            hub.sweep(heartbeat).await
        };
        match tokio::time::timeout(DB_TIMEOUT * 2, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Pusher heartbeat failed"),
            Err(_) => tracing::warn!("Pusher heartbeat timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        // The example app of Pusher's own documentation.
        Settings::new("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    #[test]
    fn a_private_channel_signature_matches_pusher_documentation() {
        // From Pusher's "Authenticating users" documentation.
        let auth = settings().channel_auth("1234.1234", "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(settings().check_channel_auth("1234.1234", "private-foobar", None, &auth));
        assert!(!settings().check_channel_auth("1234.1235", "private-foobar", None, &auth));
        assert!(!settings().check_channel_auth("1234.1234", "private-foobaz", None, &auth));
        assert!(!settings().check_channel_auth("1234.1234", "private-foobar", None, "nokey"));
    }

    #[test]
    fn a_presence_signature_covers_the_channel_data() {
        let s = settings();
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let auth = s.channel_auth("1234.1234", "presence-foobar", Some(data));
        assert_eq!(
            auth,
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert!(s.check_channel_auth("1234.1234", "presence-foobar", Some(data), &auth));
        let forged = data.replace("10", "11");
        assert!(!s.check_channel_auth("1234.1234", "presence-foobar", Some(&forged), &auth));
    }

    #[test]
    fn an_api_request_signature_matches_pusher_documentation_and_is_checked_whole() {
        // From Pusher's "HTTP API reference", "Generating authentication signatures".
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let query: Vec<(String, String)> = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let message = request_message("post", "/apps/3/events", &query);
        assert_eq!(
            message,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign("7ad3773142a6692b25b8", &message),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );

        let s = settings();
        let now = 1353088179;
        let signed = s.sign_request("POST", "/apps/3/events", body, now);
        let parse = |q: &str| -> Vec<(String, String)> {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        };
        let q = parse(&signed);
        assert_eq!(
            s.check_request("POST", "/apps/3/events", &q, body, now),
            Ok(())
        );
        // Any change is refused: body, path, method, a parameter, or the clock.
        assert!(s
            .check_request("POST", "/apps/3/events", &q, b"{}", now)
            .is_err());
        assert!(s
            .check_request("POST", "/apps/4/events", &q, body, now)
            .is_err());
        assert!(s
            .check_request("GET", "/apps/3/events", &q, body, now)
            .is_err());
        let mut extra = q.clone();
        extra.push(("info".into(), "user_count".into()));
        assert!(s
            .check_request("POST", "/apps/3/events", &extra, body, now)
            .is_err());
        let late = now + TIMESTAMP_WINDOW + 1;
        let err = s
            .check_request("POST", "/apps/3/events", &q, body, late)
            .unwrap_err();
        assert!(err.contains("auth_timestamp"), "{err}");
        let other = Settings::new("3", "278d425bdf160c739803", "another-secret");
        assert_eq!(
            other.check_request("POST", "/apps/3/events", &q, body, now),
            Err("invalid auth_signature".into())
        );
    }

    #[test]
    fn production_needs_a_secret_of_its_own_and_is_off_without_one_unless_asked_for() {
        let dev = Config::default();
        // Development without a secret: on, with none given (a generated one is used).
        assert_eq!(Settings::check_config(&dev).unwrap(), (true, None));
        let prod = Config {
            node_env: "production".into(),
            ..Config::default()
        };
        assert_eq!(Settings::check_config(&prod).unwrap(), (false, None));
        let asked = Config {
            pusher_enabled: Some(true),
            ..prod.clone()
        };
        assert!(Settings::check_config(&asked).is_err());
        let dev_secret = Config {
            pusher_secret: Some(DEV_SECRET.into()),
            ..prod.clone()
        };
        assert!(Settings::check_config(&dev_secret).is_err());
        let own = Config {
            pusher_secret: Some("a-real-secret".into()),
            ..prod
        };
        assert_eq!(
            Settings::check_config(&own).unwrap(),
            (true, Some("a-real-secret"))
        );
    }

    #[test]
    fn random_secrets_are_long_and_differ() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(a, DEV_SECRET);
    }

    #[test]
    fn channel_and_socket_names_follow_the_protocol() {
        assert!(valid_channel("private-org-1;a=b@c,d.e_f-g"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("has space"));
        assert!(!valid_channel("ümlaut"));
        assert!(!valid_channel(&"a".repeat(201)));
        assert_eq!(ChannelKind::of("content-generation"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("private-org-x"), ChannelKind::Private);
        assert_eq!(ChannelKind::of("presence-org-x"), ChannelKind::Presence);
        assert_eq!(
            ChannelKind::of("private-encrypted-x"),
            ChannelKind::Encrypted
        );
        let id = new_socket_id();
        assert!(valid_socket_id(&id), "{id}");
        assert!(!valid_socket_id("1234"));
        assert!(!valid_socket_id("12.34:private-x"));
        assert!(!valid_socket_id(".1"));
    }

    #[test]
    fn users_join_their_own_channel_and_their_organizations_only() {
        let who = Grant {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            organization_id: Some(Uuid::new_v4()),
        }
        .principal();
        let org = who.organization_id.unwrap();
        assert!(may_join(&who, &format!("private-user-{}", who.user_id)).is_ok());
        assert!(may_join(&who, &format!("private-org-{org}")).is_ok());
        assert!(may_join(&who, &format!("presence-org-{org}")).is_ok());
        assert!(may_join(&who, &format!("private-user-{}", Uuid::new_v4())).is_err());
        assert!(may_join(&who, &format!("private-org-{}", Uuid::new_v4())).is_err());
        assert!(may_join(&who, "private-anything").is_err());
        assert!(may_join(&who, "presence-room").is_err());
        let no_org = Principal {
            organization_id: None,
            ..who.clone()
        };
        assert!(may_join(&no_org, &format!("private-org-{org}")).is_err());
    }
}
