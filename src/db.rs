//! The database of the service: how every connection talks to PostgreSQL, and opening it
//! (created and migrated when needed). The server, the command-line tools (import, history)
//! and the tests all open it this way.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::config::Config;

/// How every connection of this process talks to PostgreSQL: no statement runs and no lock
/// is awaited without a time limit, and the server probes an idle connection with TCP
/// keepalives, so that a process that vanished (a network partition, a killed host) loses
/// its locks within seconds instead of holding them until the kernel gives up.
pub fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let secs = |s: u64| format!("{}s", s.max(1));
    Ok(PgConnectOptions::from_str(&config.database_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?
        .options([
            ("statement_timeout", secs(config.db_statement_timeout_secs)),
            ("lock_timeout", secs(config.db_lock_timeout_secs)),
            // A transaction left open by a stalled client releases its locks.
            ("idle_in_transaction_session_timeout", "60s".to_owned()),
            ("tcp_keepalives_idle", "10".to_owned()),
            ("tcp_keepalives_interval", "5".to_owned()),
            ("tcp_keepalives_count", "3".to_owned()),
        ]))
}

/// Creates the database if it is missing, connects, and runs the migrations.
pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<PgPool> {
    let url = &config.database_url;
    PgConnectOptions::from_str(url).context("DATABASE_URL is not a PostgreSQL URL")?;
    if !Postgres::database_exists(url)
        .await
        .context("cannot reach PostgreSQL at DATABASE_URL")?
    {
        tracing::info!("creating the database");
        if let Err(e) = Postgres::create_database(url).await {
            // Another process may have created it at the same moment.
            if !Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("cannot create the database");
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.db_pool_size.max(4))
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(config)?)
        .await
        .context("cannot connect to the database")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("migrations failed")?;
    Ok(pool)
}
