//! Socket.IO connection state recovery (socket.io-client's `connectionStateRecovery`) for
//! `/messaging`: the server hands each connection a private id (`pid`) in its CONNECT
//! answer and appends each event's log position as its last argument (the `offset`). A
//! client that reconnects within [`WINDOW`] sends both back; the server then restores the
//! connection's rooms (checking each again), replays from the log every event after the
//! offset, and answers with the same `pid`, which the client reports as `recovered`.
//!
//! A `pid` is bound to the user and organization that opened it: another user presenting
//! it gets a fresh connection and nothing replayed. The rooms live in `socket_recovery`, so
//! a client may come back through any server process.

use std::time::Duration;

use uuid::Uuid;

use crate::http::guard::Principal;
use crate::state::AppState;

/// How long after its last change a connection's state can be recovered.
pub const WINDOW: Duration = Duration::from_secs(120);

/// The rooms of connection `pid` if `who` may recover it now.
pub async fn resume(
    state: &AppState,
    namespace: &str,
    who: &Principal,
    pid: Uuid,
) -> Option<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT rooms FROM socket_recovery WHERE pid = $1 AND user_id = $2 \
         AND organization_id = $3 AND namespace = $4 \
         AND updated_at > now() - make_interval(secs => $5)",
    )
    .bind(pid)
    .bind(who.user_id)
    .bind(who.organization_id?)
    .bind(namespace)
    .bind(WINDOW.as_secs_f64())
    .fetch_optional(&state.pool)
    .await
    .ok()
    .flatten()
}

/// Records the rooms of connection `pid` (on connect, join, leave and disconnect).
pub async fn save(
    pool: &sqlx::PgPool,
    namespace: &str,
    who: &Principal,
    pid: Uuid,
    rooms: Vec<Uuid>,
) {
    let Some(org) = who.organization_id else {
        return;
    };
    let saved = sqlx::query(
        "INSERT INTO socket_recovery (pid, user_id, organization_id, namespace, rooms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pid) DO UPDATE \
         SET rooms = EXCLUDED.rooms, updated_at = now() \
         WHERE socket_recovery.user_id = EXCLUDED.user_id",
    )
    .bind(pid)
    .bind(who.user_id)
    .bind(org)
    .bind(namespace)
    .bind(rooms)
    .execute(pool)
    .await;
    if let Err(e) = saved {
        tracing::debug!(error = %e, "saving a socket's recovery state failed");
    }
    // Forget what can no longer be recovered (cheap: an index-less scan of a small table).
    if rand_percent() < 2 {
        let _ = sqlx::query(
            "DELETE FROM socket_recovery WHERE updated_at < now() - make_interval(secs => $1)",
        )
        .bind((WINDOW * 2).as_secs_f64())
        .execute(pool)
        .await;
    }
}

fn rand_percent() -> u8 {
    Uuid::new_v4().as_bytes()[0] % 100
}
