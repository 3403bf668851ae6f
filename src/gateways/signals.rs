//! Ephemeral signals of the messaging sockets — typing and presence — shared by every server
//! process through PostgreSQL `LISTEN/NOTIFY` (channel `ub_signals`).
//!
//! Why PostgreSQL and not NATS: every process already holds connections to it, so nothing
//! more has to run, be configured or be watched for a deployment to work; the signals are
//! small, lossy by nature (a missed "typing" matters for two seconds) and far below what
//! NOTIFY carries. They are never written to the event log.
//!
//! Presence counts connections per user in `messaging_presence`, one row per process and
//! user, so that several tabs (on any processes) are one user: `user:online` goes out when
//! a user's first connection appears, `user:offline` when their last one goes. Each process
//! refreshes its rows every [`BEAT`]; rows older than three beats belong to a process that
//! died and are not counted (and are removed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

const CHANNEL: &str = "ub_signals";
/// How often a process refreshes its presence rows.
pub const BEAT: Duration = Duration::from_secs(10);
/// Signals waiting for a slow socket; it skips the oldest beyond this.
const BUFFER: usize = 1024;
/// Largest NOTIFY payload PostgreSQL takes, with room to spare.
const MAX_PAYLOAD: usize = 7_900;

pub struct Signals {
    pool: PgPool,
    process: Uuid,
    tx: broadcast::Sender<Arc<Value>>,
    /// When each user last sent `typing:start` in each channel from this process.
    typing: Mutex<HashMap<(Uuid, Uuid), Instant>>,
}

/// Most (user, channel) typing times a process keeps; older ones are forgotten beyond it.
const TYPING_KEPT: usize = 10_000;

impl Signals {
    /// Starts listening (and beating) on the actix system, supervised.
    pub fn start(pool: PgPool) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BUFFER);
        let signals = Arc::new(Self {
            pool,
            process: Uuid::new_v4(),
            tx,
            typing: Mutex::new(HashMap::new()),
        });
        let listening = Arc::downgrade(&signals);
        crate::rt::supervise("signal-listener", move || {
            let listening = listening.clone();
            async move {
                loop {
                    let Some(s) = listening.upgrade() else { return };
                    let pool = s.pool.clone();
                    let tx = s.tx.clone();
                    drop(s);
                    if let Err(e) = listen(&pool, &tx).await {
                        tracing::warn!(error = %e, "signal listener lost its connection; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        let beating = Arc::downgrade(&signals);
        crate::rt::supervise("presence-heartbeat", move || {
            let beating = beating.clone();
            async move {
                let mut every = tokio::time::interval(BEAT);
                loop {
                    every.tick().await;
                    let Some(s) = beating.upgrade() else { return };
                    let _ = sqlx::query(
                        "UPDATE messaging_presence SET seen_at = now() WHERE process = $1",
                    )
                    .bind(s.process)
                    .execute(&s.pool)
                    .await;
                    let _ = sqlx::query(
                        "DELETE FROM messaging_presence \
                         WHERE seen_at < now() - make_interval(secs => $1)",
                    )
                    .bind((BEAT * 3).as_secs_f64())
                    .execute(&s.pool)
                    .await;
                }
            }
        });
        signals
    }

    /// Whether `user`'s `typing:start` in `channel` should go out now: at most one every
    /// `every` per user, whatever the number of their tabs on this process.
    pub fn typing_due(&self, user: Uuid, channel: Uuid, every: Duration) -> bool {
        let Ok(mut last) = self.typing.lock() else {
            return true;
        };
        let now = Instant::now();
        if last
            .get(&(user, channel))
            .is_some_and(|at| now.duration_since(*at) < every)
        {
            return false;
        }
        if last.len() >= TYPING_KEPT {
            last.retain(|_, at| now.duration_since(*at) < every);
            if last.len() >= TYPING_KEPT {
                last.clear();
            }
        }
        last.insert((user, channel), now);
        true
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.tx.subscribe()
    }

    /// Sends a signal to every process (this one included, through the database).
    pub async fn publish(&self, signal: &Value) {
        let payload = signal.to_string();
        if payload.len() > MAX_PAYLOAD {
            tracing::warn!(bytes = payload.len(), "signal too large; dropped");
            return;
        }
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "publishing a signal failed");
        }
    }

    async fn connections(&self, org: Uuid, user: Uuid) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT coalesce(sum(connections), 0)::bigint FROM messaging_presence \
             WHERE organization_id = $1 AND user_id = $2 \
             AND seen_at > now() - make_interval(secs => $3)",
        )
        .bind(org)
        .bind(user)
        .bind((BEAT * 3).as_secs_f64())
        .fetch_one(&self.pool)
        .await
    }

    /// A connection of `user` opened; announces them online if it is their first.
    pub async fn connected(&self, org: Uuid, user: Uuid) {
        let counted = sqlx::query(
            "INSERT INTO messaging_presence (process, user_id, organization_id, connections) \
             VALUES ($1, $2, $3, 1) ON CONFLICT (process, user_id, organization_id) \
             DO UPDATE SET connections = messaging_presence.connections + 1, seen_at = now()",
        )
        .bind(self.process)
        .bind(user)
        .bind(org)
        .execute(&self.pool)
        .await;
        if counted.is_ok() && self.connections(org, user).await.ok() == Some(1) {
            self.publish(&json!({ "type": "presence", "organization_id": org, "user_id": user, "online": true }))
                .await;
        }
    }

    /// A connection of `user` closed; announces them offline if it was their last.
    pub async fn disconnected(&self, org: Uuid, user: Uuid) {
        let _ = sqlx::query(
            "UPDATE messaging_presence SET connections = connections - 1 \
             WHERE process = $1 AND user_id = $2 AND organization_id = $3",
        )
        .bind(self.process)
        .bind(user)
        .bind(org)
        .execute(&self.pool)
        .await;
        let _ =
            sqlx::query("DELETE FROM messaging_presence WHERE connections <= 0 AND process = $1")
                .bind(self.process)
                .execute(&self.pool)
                .await;
        if self.connections(org, user).await.ok() == Some(0) {
            self.publish(&json!({ "type": "presence", "organization_id": org, "user_id": user, "online": false }))
                .await;
        }
    }

    /// The users of `org` connected now, on any process.
    pub async fn online(&self, org: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM messaging_presence WHERE organization_id = $1 \
             AND connections > 0 AND seen_at > now() - make_interval(secs => $2) ORDER BY user_id",
        )
        .bind(org)
        .bind((BEAT * 3).as_secs_f64())
        .fetch_all(&self.pool)
        .await
    }
}

async fn listen(pool: &PgPool, tx: &broadcast::Sender<Arc<Value>>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        let n = listener.recv().await?;
        if let Ok(v) = serde_json::from_str::<Value>(n.payload()) {
            let _ = tx.send(Arc::new(v));
        }
    }
}
