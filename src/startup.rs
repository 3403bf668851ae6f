//! Builds the application: database, event store, actor registries, projection runners and
//! the HTTP server. `main`, the black-box tests and the benchmark all start it this way.

use std::net::TcpListener;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::actors::building::Building;
use crate::actors::Registry;
use crate::config::Config;
use crate::http;
use crate::projections::{self, Progress, ProjectionRunner};
use crate::rt::ThreadTask;
use crate::store::{EventStore, PgEventStore};

/// What every handler can reach, behind cheap handles.
pub struct AppState {
    pub pool: PgPool,
    pub store: Arc<dyn EventStore>,
    pub buildings: Registry<Building>,
    pub progress: Progress,
    pub started: Instant,
    pub config: Config,
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
        .connect(url)
        .await
        .context("cannot connect to the database")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("migrations failed")?;
    Ok(pool)
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

        let mut progress = Progress::default();
        let mut runners = Vec::new();
        if config.run_projections {
            for projection in projections::all() {
                let runner = ProjectionRunner::new(
                    pool.clone(),
                    store.clone(),
                    projection.clone(),
                    config.runner(),
                );
                progress.insert(projection.name(), runner.progress());
                runners.push(runner.run());
            }
        }
        // Projections get a thread of their own, away from request handling.
        let runners = (!runners.is_empty()).then(|| {
            crate::rt::spawn_thread("ub-projections", move || async move {
                futures_util::future::join_all(runners).await;
            })
        });

        let state = web::Data::new(AppState {
            pool: pool.clone(),
            store: store.clone(),
            buildings: Registry::new(store.clone(), config.runtime()),
            progress,
            started: Instant::now(),
            config: config.clone(),
        });

        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        let data = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(http::json_errors())
                .app_data(data.clone())
                .configure(http::configure)
        })
        .shutdown_timeout(30)
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
        self.state.store.shutdown().await;
        if let Some(runners) = self.runners {
            runners.stop();
        }
        tracing::info!("stopped");
        Ok(result?)
    }
}
