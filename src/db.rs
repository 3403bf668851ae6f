//! The database of the service: how every connection talks to PostgreSQL, and opening it
//! (created and migrated when needed). The server, the command-line tools (import, history)
//! and the tests all open it this way.
//!
//! `DATABASE_URL` may name several hosts, as libpq's do (`postgres://h1:5432,h2:5433/db?
//! target_session_attrs=read-write`): [`primary`] picks the one that fits and moves the
//! pool when that changes (see docs/operations.md, "High availability").

pub mod primary;
pub mod url;

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::Config;
pub use primary::{epoch, suspect};
pub use url::{DatabaseUrl, Target};

/// How every connection of this process talks to PostgreSQL: no statement runs and no lock
/// is awaited without a time limit, and the server probes an idle connection with TCP
/// keepalives, so that a process that vanished (a network partition, a killed host) loses
/// its locks within seconds instead of holding them until the kernel gives up.
pub fn session_options(options: PgConnectOptions, config: &Config) -> PgConnectOptions {
    let secs = |s: u64| format!("{}s", s.max(1));
    options.options([
        ("statement_timeout", secs(config.db_statement_timeout_secs)),
        ("lock_timeout", secs(config.db_lock_timeout_secs)),
        // A transaction left open by a stalled client releases its locks.
        ("idle_in_transaction_session_timeout", "60s".to_owned()),
        ("tcp_keepalives_idle", "10".to_owned()),
        ("tcp_keepalives_interval", "5".to_owned()),
        ("tcp_keepalives_count", "3".to_owned()),
    ])
}

/// The connect options of `DATABASE_URL`'s first host with the session settings of
/// [`session_options`]. A URL with several hosts is opened with [`connect_and_migrate`],
/// which picks among them.
pub fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let url = DatabaseUrl::parse(&config.database_url)?;
    Ok(session_options(url.options(0), config))
}

/// Pool connections that a process holds for as long as it runs: the `LISTEN`ers of the
/// event log's live feed, the signals (typing, presence), the Pusher gateway and the task
/// scheduler. They come on top of `DB_POOL_SIZE`, which is left for requests and work.
const HELD_BY_LISTENERS: u32 = 4;

/// The time limit of one host: connecting and asking its role.
fn host_limit(config: &Config) -> Duration {
    Duration::from_secs(config.db_connect_timeout_secs.max(1))
}

/// Selects a host that fits the URL, round after round for at most `DB_CONNECT_WAIT_SECS`
/// (a process started during a failover waits for the new primary).
async fn select_patiently(
    url: &DatabaseUrl,
    config: &Config,
) -> anyhow::Result<(usize, PgConnection)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.db_connect_wait_secs);
    let session = |o: PgConnectOptions| session_options(o, config);
    loop {
        match primary::select(url, host_limit(config), &session).await {
            Ok(found) => return Ok(found),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context("cannot reach PostgreSQL at DATABASE_URL"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no database host fits yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn database_exists<'a>(conn: &'a mut PgConnection, name: &'a str) -> primary::Boxed<'a, bool> {
    Box::pin(async move {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(conn)
            .await
    })
}

fn create_database<'a>(conn: &'a mut PgConnection, name: &'a str) -> primary::Boxed<'a, ()> {
    Box::pin(async move {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        sqlx::query(&create).execute(conn).await.map(|_| ())
    })
}

/// Creates the database if it is missing, connects, and runs the migrations. With several
/// hosts in `DATABASE_URL`, a watcher keeps the pool on the host that fits.
pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<PgPool> {
    let url = DatabaseUrl::parse(&config.database_url)?;
    let name = url
        .database()
        .context("DATABASE_URL names no database")?
        .to_owned();
    // The database is created on the server that fits, through its maintenance database.
    let maintenance = url.with_database("postgres");
    let (at, mut conn) = select_patiently(&maintenance, config).await?;
    if !database_exists(&mut conn, &name)
        .await
        .context("cannot reach PostgreSQL at DATABASE_URL")?
    {
        tracing::info!("creating the database");
        if let Err(e) = create_database(&mut conn, &name).await {
            // Another process may have created it at the same moment.
            if !database_exists(&mut conn, &name).await.unwrap_or(false) {
                return Err(e).context("cannot create the database");
            }
        }
    }
    let _ = conn.close().await;
    let target = url.target();
    let session = {
        let config = config.clone();
        move |o: PgConnectOptions| session_options(o, &config)
    };
    let pool = PgPoolOptions::new()
        .max_connections(config.db_pool_size.max(4) + HELD_BY_LISTENERS)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move { primary::check_new_connection(target, conn).await })
        })
        .connect_with(session(url.options(at)))
        .await
        .context("cannot connect to the database")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("migrations failed")?;
    if url.hosts().len() > 1 {
        let (pool, every) = (
            pool.clone(),
            Duration::from_millis(config.db_primary_check_ms.max(100)),
        );
        let limit = host_limit(config);
        crate::rt::spawn_thread("ub-db-primary", move || async move {
            primary::watch(pool, url, at, None, every, limit, session).await
        })
        .detach();
    }
    Ok(pool)
}
