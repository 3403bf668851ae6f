//! The command-line side of history: `state`, `export`, `import-events`, `catalog` and
//! `replay`. `main` holds one enum variant and one match arm for each; the work is here.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::export::ExportFilter;
use super::import::ImportOptions;
use super::replay::Until;
use super::state::{FoldOptions, Point};
use crate::config::Config;
use crate::db::connect_and_migrate;
use crate::progress::Progress;
use crate::projections;
use crate::store::{EventStore, PgEventStore};

fn time(value: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| anyhow::anyhow!("`{value}` is not an RFC 3339 time (2026-12-04T09:00:00Z)"))
}

/// `state <stream> [--version N | --at TIME]`.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// A stream id, e.g. `building-<id>`.
    pub stream: String,
    /// The state after the event at this version (default: the last).
    #[arg(long, conflicts_with = "at")]
    pub version: Option<i64>,
    /// The state after the last event recorded at or before this RFC 3339 time.
    #[arg(long)]
    pub at: Option<String>,
}

/// Prints the entity's state at a version or time as JSON.
pub async fn state(config: &Config, args: StateArgs) -> anyhow::Result<()> {
    let pool = connect_and_migrate(config).await?;
    let point = match (args.version, args.at.as_deref()) {
        (Some(v), _) => Point::Version(v),
        (None, Some(at)) => Point::Time(time(at)?),
        (None, None) => Point::Version(
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1")
                .bind(&args.stream)
                .fetch_one(&pool)
                .await?,
        ),
    };
    let options = FoldOptions {
        use_snapshots: true,
        snapshot_every: config.history_snapshot_every,
    };
    let at = super::state::state_at(&pool, &args.stream, point, options).await?;
    println!("{}", serde_json::to_string_pretty(&at)?);
    Ok(())
}

/// `export --to FILE[.zst]` with the filters of `GET /api/v1/events/export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The NDJSON file to write; zstd-compressed when it ends in `.zst`.
    #[arg(long)]
    pub to: PathBuf,
    /// First position (inclusive); resume an interrupted export with the last one + 1.
    #[arg(long)]
    pub from_position: Option<i64>,
    /// Last position (inclusive; default the head at the start).
    #[arg(long)]
    pub to_position: Option<i64>,
    /// Stream categories (repeatable).
    #[arg(long)]
    pub category: Vec<String>,
    /// Event types (repeatable).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// One stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Recorded at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Recorded at or before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only the events of this organization.
    #[arg(long)]
    pub organization: Option<uuid::Uuid>,
    /// Blank password and refresh-token hashes (the HTTP export always does). Without it
    /// the file holds them, so that an import restores working accounts: keep it safe.
    #[arg(long)]
    pub redact: bool,
}

/// Writes the export file with a progress bar.
pub async fn export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let pool = connect_and_migrate(config).await?;
    let filter = ExportFilter {
        from_position: args.from_position,
        to_position: args.to_position,
        categories: (!args.category.is_empty()).then_some(args.category),
        types: (!args.event_type.is_empty()).then_some(args.event_type),
        stream: args.stream,
        since: args.since.as_deref().map(time).transpose()?,
        until: args.until.as_deref().map(time).transpose()?,
        organization: args.organization,
        redact: args.redact,
    };
    let total = super::export::expected_total(&pool, &filter).await?;
    let progress = Progress::new("export", total);
    let mut out = super::export::create_file(&args.to)?;
    let report = super::export::write_to(&pool, &filter, &mut out, &progress).await?;
    drop(out);
    progress.finish();
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "exported {} events ({:.1} MB of NDJSON) to {} in {:.2}s ({:.0} events/s); \
         continue with --from-position {}",
        report.events,
        report.bytes as f64 / 1e6,
        args.to.display(),
        secs,
        report.events as f64 / secs,
        report.last_position + 1
    );
    Ok(())
}

/// `import-events --from FILE[.zst] [--append]`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// An export file (NDJSON, zstd-compressed or not).
    #[arg(long)]
    pub from: PathBuf,
    /// Import into a store that holds events, skipping events whose ids are stored.
    #[arg(long)]
    pub append: bool,
    /// Leave the projections as they are (rebuild them later with `rebuild`).
    #[arg(long)]
    pub skip_rebuild: bool,
}

/// Imports the file, then rebuilds every projection.
pub async fn import_events(config: &Config, args: ImportArgs) -> anyhow::Result<()> {
    let pool = connect_and_migrate(config).await?;
    let mut input = super::import::open_file(&args.from)?;
    let progress = Progress::new("import-events", None);
    let options = ImportOptions {
        append: args.append,
        ..ImportOptions::default()
    };
    let report = super::import::import(&pool, &mut input, &options, &progress).await?;
    progress.finish();
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "imported {} events ({} skipped as stored) in {:.2}s ({:.0} events/s); head at {}",
        report.written,
        report.skipped,
        secs,
        report.read as f64 / secs,
        report.last_position
    );
    if !args.skip_rebuild {
        rebuild_all(config, &pool).await?;
    }
    Ok(())
}

/// Rebuilds every projection from the log (after an import).
pub async fn rebuild_all(config: &Config, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let store = PgEventStore::start(pool.clone(), config.store()).await?;
    let head = store.head_position().await?;
    for p in projections::all() {
        let progress = Progress::new(&format!("rebuild {}", p.name()), Some(head.max(0) as u64));
        let report = projections::runner::rebuild_with_progress(
            pool,
            store.as_ref(),
            p.as_ref(),
            config.projection_batch_size,
            Some(&progress),
        )
        .await;
        progress.finish();
        let report = report?;
        println!(
            "rebuilt {} up to position {}: {} events in {:.2}s, {} parked",
            report.projection,
            report.position,
            report.events,
            report.elapsed.as_secs_f64(),
            report.parked
        );
    }
    store.shutdown().await;
    Ok(())
}

/// `catalog [--json]`.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    /// Print the whole catalogue (schemas and samples) as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Prints the catalogue of event types with their counts in this store.
pub async fn catalog(config: &Config, args: CatalogArgs) -> anyhow::Result<()> {
    let pool = connect_and_migrate(config).await?;
    let types = super::catalog::build(&pool, None).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "event_types": types }))?
        );
        return Ok(());
    }
    println!("type\tcategory\tversion\tcount\tfirst\tlast\tprojections");
    for t in types {
        let pos = |p: Option<i64>| p.map_or("-".to_owned(), |p| p.to_string());
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.event_type,
            t.category,
            t.versions
                .iter()
                .map(|v| format!("v{}", v.version))
                .collect::<Vec<_>>()
                .join(","),
            t.count,
            pos(t.first_position),
            pos(t.last_position),
            t.projections.join(",")
        );
    }
    Ok(())
}

/// `replay <projection> (--to-position P | --to-time T) --into SCHEMA`, or
/// `replay <projection> --into SCHEMA --drop`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The projection's name (see `projections`).
    pub projection: String,
    /// Stop after the event at this position.
    #[arg(long, conflicts_with = "to_time")]
    pub to_position: Option<i64>,
    /// Stop after the last event recorded at or before this RFC 3339 time.
    #[arg(long)]
    pub to_time: Option<String>,
    /// The schema to replay into (made anew; never `public`).
    #[arg(long)]
    pub into: String,
    /// Remove the schema of an earlier replay instead.
    #[arg(long, conflicts_with_all = ["to_position", "to_time"])]
    pub drop: bool,
}

/// Replays a projection to a point into its own schema, or drops such a schema.
pub async fn replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let Some(projection) = projections::by_name(&args.projection) else {
        let names: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
        anyhow::bail!(
            "unknown projection `{}`; known: {}",
            args.projection,
            names.join(", ")
        );
    };
    super::replay::check_schema(&args.into)?;
    let pool = connect_and_migrate(config).await?;
    if args.drop {
        if super::replay::drop_schema(&pool, &args.into).await? {
            println!("dropped schema {}", args.into);
        } else {
            println!("there is no schema {}", args.into);
        }
        return Ok(());
    }
    let until = match (args.to_position, args.to_time.as_deref()) {
        (Some(p), _) => Until::Position(p),
        (None, Some(t)) => Until::Time(time(t)?),
        (None, None) => anyhow::bail!("give --to-position or --to-time (or --drop)"),
    };
    let to = super::replay::resolve(&pool, until).await?;
    let store = PgEventStore::start(pool.clone(), config.store()).await?;
    let progress = Progress::new("replay", Some(to.max(0) as u64));
    let report = super::replay::replay(
        &pool,
        store.as_ref(),
        projection.as_ref(),
        until,
        &args.into,
        config.projection_batch_size,
        &progress,
    )
    .await;
    progress.finish();
    store.shutdown().await;
    let report = report?;
    println!(
        "replayed {} into schema {} up to position {}: {} events in {:.2}s, {} parked \
         (see {}.replay_parked)",
        projection.name(),
        report.schema,
        report.position,
        report.events,
        report.elapsed.as_secs_f64(),
        report.parked,
        report.schema
    );
    Ok(())
}
