//! Typed settings, read from the environment (the variable names the frontends' seeds use
//! where one exists) or from command-line flags. Every default works on a developer machine.

use std::time::Duration;

use clap::Args;

use crate::actors::RuntimeConfig;
use crate::projections::RunnerConfig;
use crate::store::PgStoreConfig;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/universal_backend"
    )]
    pub database_url: String,
    /// Log filter: error, warn, info, debug, trace, or a full tracing directive.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// HTTP worker threads (0 = one per CPU).
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Largest number of database connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Seconds an idle entity actor stays in memory.
    #[arg(long, env = "ACTOR_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub actor_idle_timeout_secs: u64,
    /// A snapshot is taken every this many events of a stream (0 = never).
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    pub snapshot_every: i64,
    /// Most events written by one group-commit transaction.
    #[arg(long, env = "APPEND_BATCH_MAX", default_value_t = 2000)]
    pub append_batch_max: usize,
    /// Milliseconds the group-commit writer waits for more appends (0 = take what is queued).
    #[arg(long, env = "APPEND_LINGER_MS", default_value_t = 1)]
    pub append_linger_ms: u64,
    /// Events per projection batch.
    #[arg(long, env = "PROJECTION_BATCH_SIZE", default_value_t = 1000)]
    pub projection_batch_size: i64,
    /// Milliseconds a live projection lets new events gather before applying them.
    #[arg(long, env = "PROJECTION_LINGER_MS", default_value_t = 10)]
    pub projection_linger_ms: u64,
    /// Run the projections in this process (another process may lead them instead).
    #[arg(long, env = "RUN_PROJECTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_projections: bool,
}

impl Default for Config {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        Defaults::parse_from(["universal-backend"]).config
    }
}

impl Config {
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            idle_timeout: Duration::from_secs(self.actor_idle_timeout_secs.max(1)),
            snapshot_every: self.snapshot_every,
        }
    }

    pub fn store(&self) -> PgStoreConfig {
        PgStoreConfig {
            batch_max: self.append_batch_max.max(1),
            linger: Duration::from_millis(self.append_linger_ms),
            ..PgStoreConfig::default()
        }
    }

    pub fn runner(&self) -> RunnerConfig {
        RunnerConfig {
            batch_size: self.projection_batch_size.max(1),
            live_linger: Duration::from_millis(self.projection_linger_ms),
            ..RunnerConfig::default()
        }
    }
}
