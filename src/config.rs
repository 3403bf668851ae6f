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
    /// Longest a database statement may run (statement_timeout of every connection).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_SECS", default_value_t = 30)]
    pub db_statement_timeout_secs: u64,
    /// Longest a statement waits for a row or table lock (lock_timeout).
    #[arg(long, env = "DB_LOCK_TIMEOUT_SECS", default_value_t = 5)]
    pub db_lock_timeout_secs: u64,
    /// Longest wait for one database host to connect and tell its role (libpq's
    /// `connect_timeout` in DATABASE_URL wins).
    #[arg(long, env = "DB_CONNECT_TIMEOUT_SECS", default_value_t = 3)]
    pub db_connect_timeout_secs: u64,
    /// How long a starting process keeps trying the hosts of DATABASE_URL.
    #[arg(long, env = "DB_CONNECT_WAIT_SECS", default_value_t = 30)]
    pub db_connect_wait_secs: u64,
    /// How often a process with several hosts in DATABASE_URL checks that its host still
    /// fits `target_session_attrs` (and at once after a connection error).
    #[arg(long, env = "DB_PRIMARY_CHECK_MS", default_value_t = 1000)]
    pub db_primary_check_ms: u64,
    /// Longest a client may take to send a request body, from the end of its headers.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,
    /// Seconds an idle entity actor stays in memory.
    #[arg(long, env = "ACTOR_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub actor_idle_timeout_secs: u64,
    /// A snapshot is taken every this many events of a stream (0 = never).
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    pub snapshot_every: i64,
    /// Most events written by one group-commit transaction.
    #[arg(long, env = "APPEND_BATCH_MAX", default_value_t = 2000)]
    pub append_batch_max: usize,
    /// Milliseconds the group-commit writer waits for more appends under load (0 = take what
    /// is queued: appends gather anyway while the previous batch commits).
    #[arg(long, env = "APPEND_LINGER_MS", default_value_t = 0)]
    pub append_linger_ms: u64,
    /// Events per projection batch.
    #[arg(long, env = "PROJECTION_BATCH_SIZE", default_value_t = 5000)]
    pub projection_batch_size: i64,
    /// Milliseconds a live projection under load lets new events gather after a batch before
    /// applying them, or four times as long as the batch took, up to five times this setting
    /// (after a quiet spell a new event is applied at once).
    #[arg(long, env = "PROJECTION_LINGER_MS", default_value_t = 10)]
    pub projection_linger_ms: u64,
    /// Secret for signing access tokens (HS256). Generated at start in development when
    /// unset; required when NODE_ENV=production.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of access tokens (s, m, h, d).
    #[arg(long, env = "JWT_EXPIRES_IN", default_value = "24h")]
    pub jwt_expires_in: String,
    /// Lifetime of refresh tokens.
    #[arg(long, env = "JWT_REFRESH_EXPIRES_IN", default_value = "7d")]
    pub jwt_refresh_expires_in: String,
    /// `production` makes missing secrets fatal.
    #[arg(long, env = "NODE_ENV", default_value = "development")]
    pub node_env: String,
    /// Rate limits on or off.
    #[arg(long, env = "RATE_LIMITING_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub rate_limiting_enabled: bool,
    /// Requests per minute per client IP on the auth endpoints.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 60)]
    pub rate_limit_per_minute: u32,
    /// Requests per minute per user on every other endpoint.
    #[arg(long, env = "RATE_LIMIT_USER_PER_MINUTE", default_value_t = 6000)]
    pub rate_limit_user_per_minute: u32,
    /// Origins allowed by CORS, comma-separated.
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        default_value = "http://localhost:3000,http://localhost:5173"
    )]
    pub allowed_origins: String,
    /// Route group switches.
    #[arg(long, env = "AI_MODELS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ai_models_enabled: bool,
    #[arg(long, env = "QUANTUM_SWARM_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub quantum_swarm_enabled: bool,
    #[arg(long, env = "VELOCITY_SWARM_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub velocity_swarm_enabled: bool,
    #[arg(long, env = "CITYPULSE_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub citypulse_enabled: bool,
    #[arg(long, env = "WEBSOCKET_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub websocket_enabled: bool,
    /// Most concurrent socket connections, of `/api/v1/ws` and `/socket.io/` (both
    /// transports) together; the next handshake is refused with 503.
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value_t = 1000)]
    pub ws_max_connections: usize,
    /// Seconds between server pings; a client silent for two intervals is dropped.
    #[arg(long, env = "WS_HEARTBEAT_INTERVAL", default_value_t = 30)]
    pub ws_heartbeat_interval: u64,
    /// Seconds a socket has to authenticate (`/api/v1/ws`) or to connect a namespace
    /// (`/socket.io/`) before it is closed.
    #[arg(long, env = "WS_AUTH_TIMEOUT", default_value_t = 10)]
    pub ws_auth_timeout: u64,
    /// Which projections this process runs: `all` or a comma-separated list of names.
    #[arg(long, env = "PROJECTIONS", default_value = "all")]
    pub projections: String,
    /// Run the projections in this process (another process may lead them instead).
    #[arg(long, env = "RUN_PROJECTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_projections: bool,
    /// OpenAI API key; also turns the OpenAI provider on.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// Base URL of the OpenAI-compatible API (without `/chat/completions`).
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,
    /// OpenAI model ids offered, comma-separated; the first is the default.
    #[arg(long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub openai_model: String,
    /// Sampling temperature when a request gives none (OpenAI-compatible and Anthropic).
    #[arg(long, env = "OPENAI_TEMPERATURE", default_value_t = 0.7)]
    pub openai_temperature: f32,
    /// Most tokens of a reply when a request gives none.
    #[arg(long, env = "MAX_TOKENS", default_value_t = 2048)]
    pub max_tokens: u32,
    /// Groq API key; turns the Groq provider (same client as OpenAI) on.
    #[arg(long, env = "GROQ_API_KEY", hide_env_values = true)]
    pub groq_api_key: Option<String>,
    #[arg(
        long,
        env = "GROQ_BASE_URL",
        default_value = "https://api.groq.com/openai/v1"
    )]
    pub groq_base_url: String,
    /// Groq model ids offered, comma-separated.
    #[arg(long, env = "GROQ_MODEL", default_value = "llama-3.3-70b-versatile")]
    pub groq_model: String,
    /// Anthropic API key; turns the Anthropic provider on.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<String>,
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com/v1"
    )]
    pub anthropic_base_url: String,
    /// Anthropic model ids offered, comma-separated.
    #[arg(long, env = "ANTHROPIC_MODEL", default_value = "claude-sonnet-4-5")]
    pub anthropic_model: String,
    /// Milliseconds to open a connection to a provider.
    #[arg(long, env = "PROVIDER_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub provider_connect_timeout_ms: u64,
    /// Milliseconds from sending a request to the first token of the reply.
    #[arg(long, env = "PROVIDER_FIRST_TOKEN_TIMEOUT_MS", default_value_t = 30000)]
    pub provider_first_token_timeout_ms: u64,
    /// Seconds a whole provider call may take, retries included.
    #[arg(long, env = "PROVIDER_TOTAL_TIMEOUT_SECS", default_value_t = 300)]
    pub provider_total_timeout_secs: u64,
    /// Retries on 429, 5xx or a failed connection, before the first token only.
    #[arg(long, env = "PROVIDER_MAX_RETRIES", default_value_t = 2)]
    pub provider_max_retries: u32,
    /// First retry backoff in milliseconds (doubling, at most 4 s; `Retry-After` honoured).
    #[arg(long, env = "PROVIDER_RETRY_BASE_MS", default_value_t = 250)]
    pub provider_retry_base_ms: u64,
    /// Consecutive failed calls that open a provider's circuit breaker.
    #[arg(long, env = "PROVIDER_BREAKER_FAILURES", default_value_t = 5)]
    pub provider_breaker_failures: u32,
    /// Seconds an open breaker fails calls at once before letting one probe through.
    #[arg(long, env = "PROVIDER_BREAKER_OPEN_SECS", default_value_t = 30)]
    pub provider_breaker_open_secs: u64,
    /// Characters of a chat session's history sent with each reply (system prompt
    /// included); the oldest messages are left out beyond it.
    #[arg(long, env = "CHAT_PROMPT_BUDGET_CHARS", default_value_t = 24_000)]
    pub chat_prompt_budget_chars: usize,
    /// Milliseconds a reply's text is gathered before it is written as one delta event.
    #[arg(long, env = "CHAT_DELTA_FLUSH_MS", default_value_t = 80)]
    pub chat_delta_flush_ms: u64,
    /// Characters that make a delta event without waiting for `CHAT_DELTA_FLUSH_MS`.
    #[arg(long, env = "CHAT_DELTA_FLUSH_CHARS", default_value_t = 1024)]
    pub chat_delta_flush_chars: usize,
    /// Serve the Pusher Channels protocol (`/app/{key}`, `/pusher/auth`, `/apps/{app_id}/…`).
    /// Unset: on, except in production without `PUSHER_SECRET` (off, with a warning);
    /// `true` in production without `PUSHER_SECRET` refuses to start.
    #[arg(long, env = "PUSHER_ENABLED", action = clap::ArgAction::Set)]
    pub pusher_enabled: Option<bool>,
    /// The Pusher app id of the HTTP API (`/apps/{app_id}/events`).
    #[arg(long, env = "PUSHER_APP_ID", default_value = "universal-backend")]
    pub pusher_app_id: String,
    /// The Pusher app key clients connect with (`/app/{key}`).
    #[arg(long, env = "PUSHER_KEY", default_value = "universal-backend-key")]
    pub pusher_key: String,
    /// The Pusher app secret (subscription and API signatures). Required when
    /// NODE_ENV=production. Unset in development: a random secret is generated once per
    /// database and shared by its processes (then other servers cannot sign HTTP API calls).
    #[arg(long, env = "PUSHER_SECRET", hide_env_values = true)]
    pub pusher_secret: Option<String>,
    /// Messages a client may send per minute on one socket connection, on every socket
    /// endpoint (0 = no limit).
    #[arg(long, env = "WS_RATE_LIMIT_PER_MINUTE", default_value_t = 100)]
    pub ws_rate_limit_per_minute: u32,
    /// Milliseconds during which the updates of a collaborative document are merged into one
    /// `DocumentUpdated` event (a process killed with `kill -9` loses at most this window,
    /// which its clients give back when they reconnect).
    #[arg(long, env = "COLLAB_FLUSH_MS", default_value_t = 100)]
    pub collab_flush_ms: u64,
    /// A snapshot of a collaborative document's state is saved every this many versions of
    /// its stream (0 = never).
    #[arg(long, env = "COLLAB_SNAPSHOT_EVERY", default_value_t = 100)]
    pub collab_snapshot_every: i64,
    /// Largest state of a collaborative document, in bytes; updates past it are refused.
    #[arg(long, env = "COLLAB_MAX_DOCUMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub collab_max_document_bytes: usize,
    /// Largest frame a collaboration client may send, in bytes (checked at the frame header).
    #[arg(long, env = "COLLAB_MAX_FRAME_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub collab_max_frame_bytes: usize,
    /// Most connections to one collaborative document on one process.
    #[arg(
        long,
        env = "COLLAB_MAX_CONNECTIONS_PER_DOCUMENT",
        default_value_t = 200
    )]
    pub collab_max_connections_per_document: usize,
    /// Messages a collaboration client may send per minute on one connection (keystrokes
    /// and cursor moves; 0 = no limit). Over it the connection is closed (1008) and the
    /// client reconnects and resyncs.
    #[arg(long, env = "COLLAB_RATE_LIMIT_PER_MINUTE", default_value_t = 3000)]
    pub collab_rate_limit_per_minute: u32,
    /// Signing algorithm of access tokens: only `HS256` is supported (the seed's setting).
    #[arg(long, env = "JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,
    /// The OAuth client id that Google ID tokens must be issued for (`aud`); without it,
    /// `POST /api/auth/google` answers 503.
    #[arg(long, env = "GOOGLE_CLIENT_ID")]
    pub google_client_id: Option<String>,
    /// Where Google's signing keys (a JWKS) are fetched from.
    #[arg(
        long,
        env = "GOOGLE_JWKS_URL",
        default_value = "https://www.googleapis.com/oauth2/v3/certs"
    )]
    pub google_jwks_url: String,
    /// Seconds fetched Google keys are used before they are fetched again.
    #[arg(long, env = "GOOGLE_JWKS_TTL_SECS", default_value_t = 3600)]
    pub google_jwks_ttl_secs: u64,
    /// Time limit of one JWKS fetch, in seconds.
    #[arg(long, env = "GOOGLE_JWKS_TIMEOUT_SECS", default_value_t = 5)]
    pub google_jwks_timeout_secs: u64,
    /// A token with an unknown key id makes the keys be fetched again, at most this often
    /// (seconds), so that made-up key ids cannot make this process hammer Google.
    #[arg(long, env = "GOOGLE_JWKS_REFETCH_SECS", default_value_t = 10)]
    pub google_jwks_refetch_secs: u64,
    /// Most swarm tasks (optimizations, batches) running at once across the deployment.
    #[arg(long, env = "MAX_CONCURRENT_GENERATIONS", default_value_t = 10)]
    pub max_concurrent_generations: usize,
    /// Most swarm tasks of one organization running at once.
    #[arg(long, env = "SWARM_MAX_CONCURRENT_PER_ORG", default_value_t = 3)]
    pub swarm_max_concurrent_per_org: usize,
    /// Longest wait of `POST /api/v1/agents/execute?wait=true` (or `Prefer: wait=N`), in
    /// seconds; the execution goes on after it.
    #[arg(long, env = "AGENT_EXECUTE_MAX_WAIT", default_value_t = 60)]
    pub agent_execute_max_wait: u64,
    /// Wall-clock limit of one swarm task, in seconds.
    #[arg(long, env = "MAX_CONTENT_GENERATION_TIME", default_value_t = 300)]
    pub max_content_generation_time: u64,
    /// URLs that batch HTTP subtasks may call, comma-separated (empty: none). Scheme, host
    /// and port must match an entry exactly, the path be the entry's or below it; a host
    /// must resolve to public addresses unless the entry names the address (or `localhost`).
    /// See `crate::outbound`.
    #[arg(long, env = "SWARM_HTTP_ALLOWLIST", default_value = "")]
    pub swarm_http_allowlist: String,
    /// Most swarm tasks of one user running at once, over all of their organizations.
    #[arg(long, env = "SWARM_MAX_CONCURRENT_PER_USER", default_value_t = 3)]
    pub swarm_max_concurrent_per_user: usize,
    /// Most swarm tasks (of every kind) one organization may have waiting; a task over it is
    /// refused with 429.
    #[arg(long, env = "SWARM_MAX_QUEUED_PER_ORG", default_value_t = 100)]
    pub swarm_max_queued_per_org: usize,
    /// Memory, in MiB, that the swarm workers of one process may use at once. A task whose
    /// smallest unit of work (one optimization) needs more is refused at admission (422);
    /// below it, a batch runs as many subtasks at once as fit, whatever its `concurrency`.
    #[arg(long, env = "WORKER_MEMORY_BUDGET_MB", default_value_t = 512)]
    pub worker_memory_budget_mb: u64,
    /// CPU-bound swarm work (optimizations) running at once in one process (0: one per core).
    #[arg(long, env = "WORKER_CPU_SLOTS", default_value_t = 0)]
    pub worker_cpu_slots: usize,
    /// Attempts of a swarm task that may end with the death of their process; at this many
    /// the task is failed as `abandoned` and never started again.
    #[arg(long, env = "TASK_MAX_ATTEMPTS", default_value_t = 3)]
    pub task_max_attempts: u32,
    /// Take part in leading the swarm task scheduler (one process leads at a time).
    #[arg(long, env = "RUN_SWARM_SCHEDULER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_swarm_scheduler: bool,
    /// Swarm tasks this process's workers run at once, claimed from what the leader admitted
    /// (0: one per core).
    #[arg(long, env = "WORKER_SLOTS", default_value_t = 0)]
    pub worker_slots: usize,
    /// Seconds without a heartbeat after which a worker's lease is rescued by the leader:
    /// its attempt is recorded as interrupted and the task runs again elsewhere.
    #[arg(long, env = "WORKER_LEASE_SECS", default_value_t = 10)]
    pub worker_lease_secs: u64,
    /// The legacy (Next.js) backend that flagged routes in `legacy` mode are proxied to, e.g.
    /// `http://legacy.internal:3000` (unset: those routes answer 503 `legacy_unavailable`).
    #[arg(long, env = "LEGACY_BACKEND_URL")]
    pub legacy_backend_url: Option<String>,
    /// Time limit of one proxied request, headers and body, in seconds.
    #[arg(long, env = "LEGACY_TIMEOUT_SECS", default_value_t = 15)]
    pub legacy_timeout_secs: u64,
    /// Largest legacy answer passed on, in bytes (a larger one is 502).
    #[arg(long, env = "LEGACY_MAX_RESPONSE_BYTES", default_value_t = 1_048_576)]
    pub legacy_max_response_bytes: usize,
    /// The sliding window over which a flagged route's error rate is measured, in seconds.
    #[arg(long, env = "FLAG_ROLLBACK_WINDOW_SECS", default_value_t = 60)]
    pub flag_rollback_window_secs: u64,
    /// Fewest requests in the window before the error rate may trigger a rollback.
    #[arg(long, env = "FLAG_ROLLBACK_MIN_REQUESTS", default_value_t = 20)]
    pub flag_rollback_min_requests: u64,
    /// Error rate (0 to 1) above which a route served here flips back to `legacy`.
    #[arg(long, env = "FLAG_ROLLBACK_THRESHOLD", default_value_t = 0.05)]
    pub flag_rollback_threshold: f64,
    /// Fewest distinct organizations with a failed request in the window before a rollback,
    /// so that one tenant's traffic cannot flip a route for every tenant.
    #[arg(long, env = "FLAG_ROLLBACK_MIN_TENANTS", default_value_t = 3)]
    pub flag_rollback_min_tenants: u64,
    /// History for analysts: a time-travel fold leaves a history snapshot every this many
    /// versions it passes, so that the next look at the same stream starts near its point
    /// (0 = none).
    #[arg(long, env = "HISTORY_SNAPSHOT_EVERY", default_value_t = 1000)]
    pub history_snapshot_every: i64,
    /// Where file content is stored: a directory (created if missing) or
    /// `s3://bucket[/prefix]` for an S3-compatible service (credentials and region from the
    /// usual `AWS_*` variables).
    #[arg(long, env = "FILE_STORE_URL", default_value = "data/files")]
    pub file_store_url: String,
    /// The S3-compatible service's URL for an `s3://` store (AWS itself when unset), e.g.
    /// `http://127.0.0.1:9000`; `http://` endpoints are allowed.
    #[arg(long, env = "FILE_STORE_ENDPOINT")]
    pub file_store_endpoint: Option<String>,
    /// Largest file, in bytes (default 5 GiB); a larger upload is refused with 413.
    #[arg(long, env = "FILE_MAX_BYTES", default_value_t = 5 * 1024 * 1024 * 1024)]
    pub file_max_bytes: u64,
    /// Bytes an organization's files may take, every version counted (default 50 GiB).
    #[arg(long, env = "FILE_QUOTA_BYTES", default_value_t = 50 * 1024 * 1024 * 1024)]
    pub file_quota_bytes: u64,
    /// Days content that no live file version names any more is kept before the sweep
    /// deletes it.
    #[arg(long, env = "FILE_RETENTION_DAYS", default_value_t = 30)]
    pub file_retention_days: u64,
    /// Seconds between two runs of the file sweep (one process of the deployment runs it).
    #[arg(long, env = "FILE_SWEEP_INTERVAL_SECS", default_value_t = 3600)]
    pub file_sweep_interval_secs: u64,
    /// Seconds after content was committed during which the sweep never deletes it (an
    /// upload records its version within this time).
    #[arg(long, env = "FILE_SWEEP_GRACE_SECS", default_value_t = 600)]
    pub file_sweep_grace_secs: u64,
    /// Hours an unfinished resumable (tus) upload is kept (its `Upload-Expires`).
    #[arg(long, env = "FILE_UPLOAD_EXPIRY_HOURS", default_value_t = 24)]
    pub file_upload_expiry_hours: u64,
    /// Secret that signs share links; unset, a random one is made once per database.
    #[arg(long, env = "FILE_LINK_SECRET", hide_env_values = true)]
    pub file_link_secret: Option<String>,
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

    /// Whether this process runs the projection `name`.
    pub fn runs_projection(&self, name: &str) -> bool {
        self.run_projections
            && (self.projections.trim() == "all"
                || self.projections.split(',').any(|p| p.trim() == name))
    }

    /// Applies the seed's names for settings this service calls otherwise, where ours are not
    /// set: `JWT_SECRET_KEY` (→ `JWT_SECRET`), `JWT_ACCESS_TOKEN_EXPIRE_MINUTES` (→
    /// `JWT_EXPIRES_IN`), `JWT_REFRESH_TOKEN_EXPIRE_DAYS` (→ `JWT_REFRESH_EXPIRES_IN`).
    /// `var` reads the environment.
    pub fn apply_seed_aliases(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let unset = |ours: &str| var(ours).is_none_or(|v| v.is_empty());
        if let Some(secret) = var("JWT_SECRET_KEY").filter(|_| unset("JWT_SECRET")) {
            self.jwt_secret = Some(secret);
        }
        let number = |name: &str, v: String| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow::anyhow!("{name} must be a positive whole number"))
        };
        if let Some(v) = var("JWT_ACCESS_TOKEN_EXPIRE_MINUTES").filter(|_| unset("JWT_EXPIRES_IN"))
        {
            self.jwt_expires_in = format!("{}m", number("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", v)?);
        }
        if let Some(v) =
            var("JWT_REFRESH_TOKEN_EXPIRE_DAYS").filter(|_| unset("JWT_REFRESH_EXPIRES_IN"))
        {
            self.jwt_refresh_expires_in =
                format!("{}d", number("JWT_REFRESH_TOKEN_EXPIRE_DAYS", v)?);
        }
        anyhow::ensure!(
            self.jwt_algorithm.eq_ignore_ascii_case("HS256"),
            "JWT_ALGORITHM {} is not supported: access tokens are signed with HS256",
            self.jwt_algorithm
        );
        Ok(())
    }

    pub fn is_production(&self) -> bool {
        self.node_env.eq_ignore_ascii_case("production")
    }

    pub fn runner(&self) -> RunnerConfig {
        RunnerConfig {
            batch_size: self.projection_batch_size.max(1),
            live_linger: Duration::from_millis(self.projection_linger_ms),
            ..RunnerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_seed_names_of_jwt_settings_apply_where_ours_are_not_set() {
        let mut c = Config::default();
        c.apply_seed_aliases(env(&[
            ("JWT_SECRET_KEY", "seed-secret"),
            ("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", "30"),
            ("JWT_REFRESH_TOKEN_EXPIRE_DAYS", "7"),
        ]))
        .unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("seed-secret"));
        assert_eq!(c.jwt_expires_in, "30m");
        assert_eq!(c.jwt_refresh_expires_in, "7d");

        // Our own names win.
        let mut c = Config {
            jwt_expires_in: "1h".into(),
            ..Config::default()
        };
        c.apply_seed_aliases(env(&[
            ("JWT_EXPIRES_IN", "1h"),
            ("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", "30"),
        ]))
        .unwrap();
        assert_eq!(c.jwt_expires_in, "1h");

        let mut c = Config::default();
        assert!(c
            .apply_seed_aliases(env(&[("JWT_ACCESS_TOKEN_EXPIRE_MINUTES", "soon")]))
            .is_err());
        let mut c = Config {
            jwt_algorithm: "RS256".into(),
            ..Config::default()
        };
        assert!(c.apply_seed_aliases(env(&[])).is_err());
    }
}
