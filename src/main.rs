//! The `universal-backend` binary: parses the command line and runs a subcommand.

use clap::{Parser, Subcommand};

/// mimalloc: the service allocates many short-lived buffers per request (JSON, events);
/// it measured faster than the system allocator under the benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use universal_backend::{
    config::Config, history, http, import, projections, startup, store, telemetry, Application,
};

#[derive(Parser)]
#[command(name = "universal-backend", version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Create the database if needed and run the migrations.
    Migrate,
    /// Replay a projection from position 0 into fresh tables and swap them in.
    Rebuild {
        /// The projection's name (see `projections`).
        projection: String,
    },
    /// List the projections with their checkpoints and parked events.
    Projections,
    /// Import a frontend's legacy data as events, then verify it against the read models
    /// (see docs/migration.md).
    Import(import::ImportArgs),
    /// Grant or revoke the account-wide admin role that lets a user call the operator
    /// endpoints (`/api/v1/admin/...`).
    Operator {
        #[command(subcommand)]
        action: OperatorAction,
    },
    /// Show an entity's state at a version or time (history for analysts).
    State(history::cli::StateArgs),
    /// Write the event log, or part of it, to an NDJSON file (`.zst`: compressed).
    Export(history::cli::ExportArgs),
    /// Import an export file into an empty store (or `--append`), then rebuild projections.
    ImportEvents(history::cli::ImportArgs),
    /// List every event type with its schema versions, consumers and counts.
    Catalog(history::cli::CatalogArgs),
    /// Replay a projection up to a position or time into a schema of its own.
    Replay(history::cli::ReplayArgs),
}

#[derive(Subcommand)]
enum OperatorAction {
    /// Make the user with this e-mail address an operator.
    Grant { email: String },
    /// Take the operator role away again.
    Revoke { email: String },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.config
        .apply_seed_aliases(|name| std::env::var(name).ok())?;
    telemetry::init_tracing(&cli.config.log_level);
    telemetry::metrics_handle();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            app.run_until_stopped().await
        }
        Command::Migrate => {
            startup::connect_and_migrate(&cli.config).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Rebuild { projection } => {
            let Some(p) = projections::by_name(&projection) else {
                let names: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
                anyhow::bail!(
                    "unknown projection `{projection}`; known: {}",
                    names.join(", ")
                );
            };
            let pool = startup::connect_and_migrate(&cli.config).await?;
            let store = store::PgEventStore::start(pool.clone(), cli.config.store()).await?;
            let head = store::EventStore::head_position(store.as_ref()).await?;
            let progress = universal_backend::progress::Progress::new(
                &format!("rebuild {projection}"),
                Some(head.max(0) as u64),
            );
            let report = projections::runner::rebuild_with_progress(
                &pool,
                store.as_ref(),
                p.as_ref(),
                cli.config.projection_batch_size,
                Some(&progress),
            )
            .await;
            progress.finish();
            let report = report?;
            let secs = report.elapsed.as_secs_f64();
            println!(
                "rebuilt {} up to position {}: {} events in {:.2}s ({:.0} events/s), {} parked",
                report.projection,
                report.position,
                report.events,
                secs,
                report.events as f64 / secs.max(1e-9),
                report.parked
            );
            Ok(())
        }
        Command::Projections => {
            let pool = startup::connect_and_migrate(&cli.config).await?;
            let parked = projections::parked::open_counts(&pool).await?;
            let holders = projections::runner::holders(&pool).await?;
            println!("projection\tcheckpoint\tparked\tprocess");
            for p in projections::all() {
                let c = projections::runner::checkpoint(&pool, p.name()).await?;
                let n = parked.get(p.name()).copied().unwrap_or(0);
                let process = holders
                    .iter()
                    .find(|(name, _)| *name == p.name())
                    .and_then(|(_, owner)| owner.clone())
                    .unwrap_or_else(|| "-".into());
                println!("{}\t{}\t{}\t{}", p.name(), c, n, process);
            }
            Ok(())
        }
        Command::Import(args) => {
            if !import::run(&cli.config, args).await? {
                // The report names the rows that differ.
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Operator { action } => {
            let (email, grant) = match &action {
                OperatorAction::Grant { email } => (email, true),
                OperatorAction::Revoke { email } => (email, false),
            };
            let pool = startup::connect_and_migrate(&cli.config).await?;
            let store = store::PgEventStore::start(pool.clone(), cli.config.store()).await?;
            let id = http::admin::set_operator(&pool, store.clone(), email, grant).await;
            store::EventStore::shutdown(store.as_ref()).await;
            let id = id?;
            println!(
                "{email} (user {id}) {} an operator",
                if grant { "is now" } else { "is no longer" }
            );
            Ok(())
        }
        Command::State(args) => history::cli::state(&cli.config, args).await,
        Command::Export(args) => history::cli::export(&cli.config, args).await,
        Command::ImportEvents(args) => history::cli::import_events(&cli.config, args).await,
        Command::Catalog(args) => history::cli::catalog(&cli.config, args).await,
        Command::Replay(args) => history::cli::replay(&cli.config, args).await,
    }
}
