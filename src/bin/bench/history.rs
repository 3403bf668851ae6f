//! `bench --mode history`: the figures of history for analysts, on a fresh database without a
//! server (the work is the command line's and the store's):
//!
//! - export 1,000,000 events to NDJSON (events/s, MB/s), plain and zstd;
//! - import them into an empty store (events/s; the projections' rebuild that follows is
//!   the rebuild's own figure, see the `commands` mode);
//! - time travel on a stream of 100,000 events to its middle and to other versions, without
//!   snapshots and with the history snapshots that folds leave behind.
//!
//! The log is written by SQL in bulk (900 buildings of 1,000 events and one of 100,000),
//! shaped as the deciders write it: a registration, a sensor, then readings.

use std::time::{Duration, Instant};

use universal_backend::config::Config;
use universal_backend::history::export::{self, ExportFilter};
use universal_backend::history::import::{self, ImportOptions};
use universal_backend::history::state::{state_at, FoldOptions, Point};
use universal_backend::progress::Progress;
use universal_backend::startup::connect_and_migrate;

/// Events of the long stream that time travel is measured on.
const LONG: i64 = 100_000;
/// Events of each of the other streams.
const PER_STREAM: i64 = 1_000;
/// Events in all.
const TOTAL: i64 = 1_000_000;

/// Inserts `count` events of `streams` building streams starting at position `first`.
async fn generate(
    pool: &sqlx::PgPool,
    first: i64,
    streams_from: i64,
    per_stream: i64,
    count: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
         event_type, schema_version, data, metadata, recorded_at) \
         SELECT $1 + g, 'building-' || md5('b' || s)::uuid, 'building', v, gen_random_uuid(), \
           CASE v WHEN 1 THEN 'BuildingRegistered' WHEN 2 THEN 'SensorRegistered' \
             ELSE 'ReadingsRecorded' END, \
           CASE v WHEN 1 THEN 2 ELSE 1 END, \
           CASE v \
             WHEN 1 THEN jsonb_build_object('building_id', md5('b' || s)::uuid, \
               'organization_id', md5('org')::uuid, 'name', 'Bench building ' || s, \
               'address', NULL, 'floor_area_m2', 1500.0, 'registered_at', '2026-01-01T00:00:00Z') \
             WHEN 2 THEN jsonb_build_object('sensor_id', md5('s' || s)::uuid, \
               'kind', 'electricity', 'unit', 'kWh', 'name', 'Main meter') \
             ELSE jsonb_build_object('readings', jsonb_build_array(jsonb_build_object( \
               'sensor_id', md5('s' || s)::uuid, 'kind', 'electricity', 'unit', 'kWh', \
               'value', (g % 97) * 0.5, \
               'measured_at', to_char(timestamp '2026-01-01' + g * interval '1 second', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')))) END, \
           jsonb_build_object('organization_id', md5('org')::uuid, 'command_id', gen_random_uuid()), \
           timestamptz '2026-01-01 00:00:00+00' + ($1 + g) * interval '1 millisecond' \
         FROM (SELECT g, $2 + (g - 1) / $3 AS s, (g - 1) % $3 + 1 AS v \
               FROM generate_series(1, $4) AS g) AS t",
    )
    .bind(first - 1)
    .bind(streams_from)
    .bind(per_stream)
    .bind(count)
    .execute(pool)
    .await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the history benchmark on fresh databases under `server`.
pub async fn run(server: &str, database_url: &str, keep: bool) -> anyhow::Result<()> {
    let config = crate::bulk_config(database_url);
    let pool = connect_and_migrate(&config).await?;
    println!("history: generating {TOTAL} events ({LONG} in one stream) in {database_url}");
    let started = Instant::now();
    generate(&pool, 1, 0, LONG, LONG).await?;
    generate(&pool, LONG + 1, 1, PER_STREAM, TOTAL - LONG).await?;
    sqlx::query("UPDATE event_head SET last_position = $1")
        .bind(TOTAL)
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE events").execute(&pool).await?;
    println!("  generated in {:.1}s", started.elapsed().as_secs_f64());

    // Export, plain and compressed.
    let dir = std::env::temp_dir();
    let plain = dir.join(format!("ub-bench-history-{}.ndjson", std::process::id()));
    let packed = dir.join(format!(
        "ub-bench-history-{}.ndjson.zst",
        std::process::id()
    ));
    for file in [&plain, &packed] {
        let mut out = export::create_file(file)?;
        let report = export::write_to(
            &pool,
            &ExportFilter::default(),
            &mut out,
            &Progress::new("bench", None),
        )
        .await?;
        drop(out);
        let secs = report.elapsed.as_secs_f64();
        let size = std::fs::metadata(file)?.len();
        println!(
            "export {}: {} events, {:.1} MB NDJSON ({:.1} MB on disk) in {:.2}s: \
             {:.0} events/s, {:.1} MB/s",
            file.extension().and_then(|e| e.to_str()).unwrap_or(""),
            report.events,
            report.bytes as f64 / 1e6,
            size as f64 / 1e6,
            secs,
            report.events as f64 / secs,
            report.bytes as f64 / 1e6 / secs
        );
    }

    // Import into an empty store, then rebuild the projections there.
    let import_url = format!("{database_url}_import");
    let import_config = Config {
        database_url: import_url.clone(),
        ..config.clone()
    };
    let target = connect_and_migrate(&import_config).await?;
    let mut input = import::open_file(&packed)?;
    let report = import::import(
        &target,
        &mut input,
        &ImportOptions::default(),
        &Progress::new("bench", None),
    )
    .await?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "import-events (from .zst, one transaction): {} events in {:.2}s: {:.0} events/s",
        report.written,
        secs,
        report.written as f64 / secs
    );
    // The projections' rebuild that `import-events` runs afterwards is the rebuild's own
    // figure (the `commands` mode measures catch-up throughput): not timed here.
    // Time travel on the long stream.
    let stream: String = sqlx::query_scalar("SELECT 'building-' || md5('b0')::uuid")
        .fetch_one(&pool)
        .await?;
    let cold = FoldOptions {
        use_snapshots: false,
        snapshot_every: 0,
    };
    let mut without = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let at = state_at(&pool, &stream, Point::Version(LONG / 2), cold).await?;
        without.push(ms(t.elapsed()));
        assert_eq!(at.version, LONG / 2);
    }
    let t = Instant::now();
    state_at(&pool, &stream, Point::Version(LONG), cold).await?;
    let whole = ms(t.elapsed());
    // Two folds leave history snapshots every 1,000 versions over the whole stream.
    let warm = FoldOptions::default();
    let t = Instant::now();
    state_at(&pool, &stream, Point::Version(LONG), warm).await?;
    state_at(&pool, &stream, Point::Version(LONG), warm).await?;
    let warming = ms(t.elapsed());
    let mut with = Vec::new();
    for i in 0..20 {
        let version = 1 + (i * 4_999 + LONG / 2) % LONG;
        let t = Instant::now();
        let at = state_at(&pool, &stream, Point::Version(version), warm).await?;
        with.push(ms(t.elapsed()));
        assert_eq!(at.version, version);
    }
    let t = Instant::now();
    let by_time = state_at(
        &pool,
        &stream,
        Point::Time(chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:50Z")?.into()),
        warm,
    )
    .await?;
    let time_ms = ms(t.elapsed());
    with.sort_by(f64::total_cmp);
    println!(
        "time travel, {LONG}-event stream: to version {} without snapshots {:.0} ms \
         (runs: {}), to its end {:.0} ms",
        LONG / 2,
        without.iter().cloned().fold(f64::INFINITY, f64::min),
        without
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        whole
    );
    println!(
        "time travel with history snapshots every 1,000 versions (left by two folds in \
         {warming:.0} ms): 20 versions across the stream, median {:.1} ms, max {:.1} ms; \
         by time (version {}) {:.1} ms",
        with[with.len() / 2],
        with[with.len() - 1],
        by_time.version,
        time_ms
    );

    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&packed);
    pool.close().await;
    target.close().await;
    if !keep {
        use sqlx::migrate::MigrateDatabase;
        sqlx::Postgres::force_drop_database(database_url).await?;
        sqlx::Postgres::force_drop_database(&import_url).await?;
    }
    let _ = server;
    Ok(())
}
