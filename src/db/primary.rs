//! Which of the `DATABASE_URL` hosts this process talks to, and moving to another when that
//! one fails or stops being the kind of server the URL asks for (`target_session_attrs`).
//!
//! One place decides: [`select`] tries the hosts in order, each within a time limit, and
//! keeps the first that fits; the [`watch`] task of a pool checks its host every
//! `DB_PRIMARY_CHECK_MS` and at once when something reports a failed connection
//! ([`suspect`]). When it moves, it points the pool at the new host (sqlx's
//! `Pool::set_connect_options`): every connection opened afterwards, the pool's, the
//! store writer's, the listeners' and the lock holders', goes there. Connections still
//! open to the old host fail on their next use and are dropped.
//!
//! Advisory locks live on one server: whoever held one on the old primary has lost it. The
//! holders notice through their own connection failing, and through the [`epoch`], which
//! rises at every move, so that a holder stops its guarded work before it could overlap a
//! new holder on the new primary (which a failover promotes only after its detection
//! time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::Notify;

use super::url::{DatabaseUrl, Target};

/// Rises each time a pool of this process moves to another host.
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Wakes the watchers to check their host now.
static SUSPECT: LazyLock<Notify> = LazyLock::new(Notify::new);

/// How many times this process moved to another database host. A lock taken under one
/// epoch is not trusted under another.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// Whether an error says the connection is gone, the server is going away, or it has
/// become read-only (25006: a standby): the host should be checked again.
pub fn is_host_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(&*c, "25006" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Reports an error seen on a connection: when it is a host failure, the watchers check
/// their host now instead of at their next tick.
pub fn suspect(e: &sqlx::Error) {
    if is_host_failure(e) {
        SUSPECT.notify_waiters();
    }
}

/// A boxed future: queries on a borrowed connection, boxed so that the futures of their
/// callers stay `Send` for any lifetime (callers run them on other threads' runtimes).
pub type Boxed<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// The role of the server behind a connection: (in recovery, read only).
pub fn role(conn: &mut PgConnection) -> Boxed<'_, (bool, bool)> {
    Box::pin(async move {
        sqlx::query_as(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
        )
        .fetch_one(conn)
        .await
    })
}

/// Why no host was kept.
#[derive(Debug)]
pub struct NoHost(pub Vec<String>);

impl std::fmt::Display for NoHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no database host fits: {}", self.0.join("; "))
    }
}

impl std::error::Error for NoHost {}

/// Tries the hosts in order, each within `limit` (connecting and asking its role), and
/// returns the first that fits the URL's target with a connection to it. `session` turns a
/// host's options into those of a connection (the session settings).
pub async fn select(
    url: &DatabaseUrl,
    limit: Duration,
    session: &(dyn Fn(PgConnectOptions) -> PgConnectOptions + Sync),
) -> Result<(usize, PgConnection), NoHost> {
    let limit = url.connect_timeout().unwrap_or(limit);
    let mut reasons = Vec::new();
    let passes: &[bool] = if url.target() == Target::PreferStandby {
        &[true, false]
    } else {
        &[true]
    };
    for &strict in passes {
        for (i, host) in url.hosts().iter().enumerate() {
            let options = session(url.options(i));
            let attempt = async {
                let mut conn = options.connect().await?;
                let (in_recovery, read_only) = role(&mut conn).await?;
                Ok::<_, sqlx::Error>((conn, in_recovery, read_only))
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok((conn, in_recovery, read_only))) => {
                    if url.target().accepts(in_recovery, read_only, strict) {
                        return Ok((i, conn));
                    }
                    let what = if in_recovery {
                        "a standby"
                    } else {
                        "read-only"
                    };
                    reasons.push(format!("{host} is {what}"));
                    let _ = tokio::time::timeout(limit, sqlx::Connection::close(conn)).await;
                }
                Ok(Err(e)) => reasons.push(format!("{host}: {e}")),
                Err(_) => reasons.push(format!("{host}: no answer within {limit:?}")),
            }
        }
    }
    Err(NoHost(reasons))
}

/// Whether a new pool connection is on a server the URL accepts; a connection to a
/// standby (a former primary) is refused, and the watchers are woken.
pub async fn check_new_connection(
    target: Target,
    conn: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if target == Target::Any {
        return Ok(());
    }
    let (in_recovery, read_only) = role(conn).await?;
    if target.accepts(in_recovery, read_only, target != Target::PreferStandby) {
        return Ok(());
    }
    SUSPECT.notify_waiters();
    // An I/O error: to every caller this host is unusable, as if it had not answered.
    Err(sqlx::Error::Io(std::io::Error::other(format!(
        "the database host is {}, and DATABASE_URL asks for another kind of server",
        if in_recovery {
            "a standby"
        } else {
            "read-only"
        }
    ))))
}

/// Keeps `pool` on a host that fits `url`, starting from host `current`, until the pool is
/// closed. Every `every`, and whenever [`suspect`] is called, it asks the host's role on a
/// connection of its own; when that fails or the role no longer fits, it selects again
/// (round after round until a host fits) and moves the pool.
pub async fn watch(
    pool: PgPool,
    url: DatabaseUrl,
    mut current: usize,
    mut conn: Option<PgConnection>,
    every: Duration,
    limit: Duration,
    session: impl Fn(PgConnectOptions) -> PgConnectOptions + Sync,
) {
    let limit = url.connect_timeout().unwrap_or(limit);
    let hosts = url.hosts();
    while !pool.is_closed() {
        let notified = SUSPECT.notified();
        let healthy = match conn.as_mut() {
            Some(c) => matches!(
                tokio::time::timeout(limit, role(c)).await,
                Ok(Ok((r, ro))) if url.target().accepts(r, ro, url.target() != Target::PreferStandby)
            ),
            None => false,
        };
        if !healthy {
            if conn.take().is_some() {
                tracing::warn!(host = %hosts[current], "database host lost or no longer fits; selecting again");
            }
            let mut round = 0u32;
            loop {
                if pool.is_closed() {
                    return;
                }
                match select(&url, limit, &session).await {
                    Ok((i, c)) => {
                        conn = Some(c);
                        if i != current {
                            pool.set_connect_options(session(url.options(i)));
                            EPOCH.fetch_add(1, Ordering::SeqCst);
                            metrics::counter!("ub_db_host_moves_total").increment(1);
                            tracing::warn!(from = %hosts[current], to = %hosts[i], "database moved to another host");
                            current = i;
                        } else {
                            tracing::info!(host = %hosts[i], "database host answers again");
                        }
                        break;
                    }
                    Err(e) => {
                        if round % 20 == 0 {
                            tracing::warn!(error = %e, "no database host fits yet; retrying");
                        }
                        round += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = notified => {}
        }
    }
}
