//! Import mode: a generated FlowMind legacy database (10,000 users, 1,000,000 energy
//! readings, 20,000 chats with 200,000 messages, 5,000 swarm tasks at `--import-scale 1`),
//! imported into a fresh database by the real `import` code, with its projections running in
//! this process. Prints rows/s per table, the total time, the projections' catch-up and the
//! process's peak RSS.

use std::time::Instant;

use universal_backend::config::Config;
use universal_backend::import::{self, flowmind::Scale, ImportArgs, Source};

/// Peak resident set size of this process, in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub async fn run(server: &str, database_url: &str, scale: f64, keep: bool) -> anyhow::Result<()> {
    use sqlx::migrate::MigrateDatabase;
    let s = Scale::BENCH;
    let part = |n: u32| ((n as f64 * scale).round() as u32).max(1);
    let scale = Scale {
        organizations: part(s.organizations),
        users: part(s.users),
        buildings: part(s.buildings),
        sensors_per_building: s.sensors_per_building,
        readings: part(s.readings),
        sessions: part(s.sessions),
        messages: part(s.messages),
        tasks: part(s.tasks),
    };
    let legacy_url = format!("{}_legacy", database_url);
    sqlx::Postgres::create_database(&legacy_url).await?;
    let legacy = sqlx::PgPool::connect(&legacy_url).await?;
    sqlx::raw_sql(include_str!("../../import/legacy/flowmind.sql"))
        .execute(&legacy)
        .await?;
    let started = Instant::now();
    import::flowmind::generate(&legacy, scale, "bench password 1").await?;
    println!(
        "import: generated {scale:?} in {:.1}s (server-side)",
        started.elapsed().as_secs_f64()
    );
    legacy.close().await;
    let config = Config {
        database_url: database_url.to_owned(),
        log_level: "warn".into(),
        ..Config::default()
    };
    let args = ImportArgs {
        source: Source::Flowmind,
        from: legacy_url.clone(),
        dry_run: false,
        verify_only: false,
        report: None,
        organization: None,
        assign_orphans_to: None,
        users_from: None,
    };
    let started = Instant::now();
    let report = import::run_with_report(&config, args).await?;
    let total = started.elapsed().as_secs_f64();
    println!("import: per table");
    for t in &report.tables {
        if t.seconds > 0.0 {
            println!(
                "  {:<22} {:>9} rows in {:>6.1}s = {:>8.0} rows/s",
                t.table,
                t.read,
                t.seconds,
                t.read as f64 / t.seconds
            );
        }
    }
    println!(
        "import: total {total:.1}s ({} events written), projections caught up {:.1}s after the \
         last write, verified: {}, peak RSS {:.0} MiB",
        report.events_written,
        report.catch_up_seconds.unwrap_or(0.0),
        report.verified,
        peak_rss_mib().unwrap_or(0.0)
    );
    let _ = server;
    if !keep {
        sqlx::Postgres::force_drop_database(&legacy_url).await?;
        sqlx::Postgres::force_drop_database(database_url).await?;
    }
    Ok(())
}
