//! The composition root: builds the application (database, event store, actor registries,
//! projection runners, background tasks and the HTTP server) into an [`AppState`]. `main`,
//! the black-box tests and the benchmark all start it this way; nothing else imports it.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::actors::Registry;
use crate::config::Config;
use crate::gateways::Gateways;
use crate::http;
use crate::http::guard::{AuthState, Limits};
use crate::identity::access::Access;
use crate::identity::auth::{parse_duration, TokenKeys};
use crate::projections::runner::RunnerConfig;
use crate::projections::{self, Progress, ProjectionRunner};
use crate::rt::ThreadTask;
use crate::state::{AppState, Registries};
use crate::store::{EventStore, PgEventStore};

pub use crate::db::{connect_and_migrate, connect_options};

/// Token keys from the configuration. Without `JWT_SECRET` a random secret is generated in
/// development (tokens then die with the process); production refuses to start.
fn auth_state(config: &Config) -> anyhow::Result<AuthState> {
    let secret = match config.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
        Some(s) if config.is_production() && s.len() < 32 => {
            anyhow::bail!("JWT_SECRET must be at least 32 characters in production")
        }
        Some(s) => s.as_bytes().to_vec(),
        None if config.is_production() => {
            anyhow::bail!("JWT_SECRET is required when NODE_ENV=production")
        }
        None => {
            tracing::warn!(
                "JWT_SECRET is not set: using a random secret; tokens will not survive a restart"
            );
            let mut bytes = vec![0u8; 32];
            argon2::password_hash::rand_core::RngCore::fill_bytes(
                &mut argon2::password_hash::rand_core::OsRng,
                &mut bytes,
            );
            bytes
        }
    };
    let access = parse_duration(&config.jwt_expires_in)
        .map_err(|e| anyhow::anyhow!("JWT_EXPIRES_IN: {e}"))?;
    let refresh = parse_duration(&config.jwt_refresh_expires_in)
        .map_err(|e| anyhow::anyhow!("JWT_REFRESH_EXPIRES_IN: {e}"))?;
    Ok(AuthState {
        keys: TokenKeys::new(&secret, access, refresh),
        ended_sessions: Default::default(),
        limits: config.rate_limiting_enabled.then(|| {
            Limits::new(
                config.rate_limit_per_minute,
                config.rate_limit_user_per_minute,
            )
        }),
    })
}

/// A built, listening application.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    runners: Option<ThreadTask>,
}

impl Application {
    /// Connects, starts the store and the projections, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::telemetry::metrics_handle();
        let pool = connect_and_migrate(&config).await?;
        let store: Arc<dyn EventStore> = PgEventStore::start(pool.clone(), config.store()).await?;

        // This process's name in task leases and projection locks.
        let owner = crate::tasks::lease::owner_id();
        let spread = projections::runner::Spread::new(&owner);
        let mut progress = Progress::default();
        let mut runners = Vec::new();
        for projection in projections::all() {
            if config.runs_projection(projection.name()) {
                let runner = ProjectionRunner::new(
                    pool.clone(),
                    store.clone(),
                    projection.clone(),
                    RunnerConfig {
                        spread: Some(spread.clone()),
                        ..config.runner()
                    },
                );
                progress.insert(projection.name(), &runner);
                runners.push(runner.run());
            }
        }
        // Projections get a thread of their own, away from request handling.
        let runners = (!runners.is_empty()).then(|| {
            crate::rt::spawn_thread("ub-projections", move || async move {
                futures_util::future::join_all(runners).await;
            })
        });

        let auth = auth_state(&config)?;
        let live = crate::store::LiveFeed::start(store.clone());
        let access = Access::new(auth.ended_sessions.clone());
        access.follow(store.clone(), live.clone());

        let providers = crate::providers::Providers::from_config(&config);
        let chat = crate::tasks::chat::Chat::new(
            Registry::new(store.clone(), config.runtime()),
            providers.clone(),
            crate::tasks::chat::ChatSettings::from_config(&config),
            pool.clone(),
        );
        // Replies whose worker's process died are failed as interrupted by any process.
        chat.keep_watch();
        let pusher = crate::gateways::pusher::Hub::start(
            &config,
            pool.clone(),
            Duration::from_secs(config.ws_heartbeat_interval.max(1)),
        )
        .await?;

        let breakers =
            crate::agents::breakers::BreakerSync::start(pool.clone(), providers.clone()).await?;
        let files = crate::files::Files::start(&config, &pool).await?;
        let state = web::Data::new(AppState {
            registries: Registries::new(&store, &config.runtime()),
            breakers,
            pool: pool.clone(),
            store: store.clone(),
            auth,
            access,
            live,
            providers,
            chat,
            gateways: Gateways::new(&config),
            pusher,
            signals: crate::gateways::signals::Signals::start(pool.clone()),
            traffic: Default::default(),
            progress,
            started: Instant::now(),
            config: config.clone(),
            google: Arc::new(crate::identity::google::GoogleVerifier::from_config(
                &config,
            )),
            swarm: crate::tasks::Scheduler::new(
                crate::tasks::admission::WorkerBudget::from_config(&config),
                config.worker_slots,
                owner.clone(),
            ),
            legacy: Arc::new(crate::http::legacy::Legacy::new(&config)?),
            outbound: Arc::new(
                crate::outbound::AllowList::parse(&config.swarm_http_allowlist)
                    .map_err(|e| anyhow::anyhow!("SWARM_HTTP_ALLOWLIST: {e}"))?,
            ),
            collab: crate::gateways::collab::Collab::new(&config),
            files,
        });
        if config.run_swarm_scheduler {
            state.swarm.start(state.clone());
        }
        crate::agents::publish::start(state.clone());
        crate::files::sweep::start(state.clone());

        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        let data = state.clone();
        let origins: Vec<String> = config
            .allowed_origins
            .split(',')
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(http::contract::enforce))
                .wrap(http::cors(&origins))
                .wrap(http::json_errors())
                .wrap(actix_web::middleware::from_fn(http::body_deadline))
                .wrap(actix_web::middleware::from_fn(http::traffic::record))
                .app_data(data.clone())
                .configure(http::configure)
        })
        .shutdown_timeout(30)
        // Streams (SSE, WebSocket, Engine.IO, Pusher) write small messages one after another:
        // with Nagle's algorithm a message would wait for the client to acknowledge the one
        // before, which a client may delay by up to 40 ms.
        .tcp_nodelay(true)
        // The request head must arrive within this; the body has `HTTP_BODY_TIMEOUT_SECS`.
        .client_request_timeout(Duration::from_secs(10))
        .backlog(4096)
        .max_connection_rate(2048);
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(port, "listening");
        Ok(Self {
            port,
            server,
            state,
            runners,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGINT/SIGTERM or the handle), then finishes in-flight requests,
    /// flushes pending appends and stops the projections.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let result = self.server.await;
        self.state.swarm.release(&self.state).await;
        self.state.chat.stop();
        self.state.collab.flush_all(&self.state).await;
        self.state.store.shutdown().await;
        if let Some(runners) = self.runners {
            runners.stop();
        }
        tracing::info!("stopped");
        Ok(result?)
    }
}
