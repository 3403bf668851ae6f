//! `bench --mode slices --slices N`: would splitting the hottest projection,
//! `citypulse_energy`, into slices make its catch-up faster over several processes?
//!
//! A slice applies only the streams whose hash falls in it (`hashtext(stream_id)` modulo N,
//! read as a filter of the log query), in a transaction of its own that moves its own
//! checkpoint. This mode measures that without building it into the runner:
//!
//! - it writes a log of building events by SQL in bulk (`--buildings`, one sensor each,
//!   `--slice-events` readings interleaved over the buildings as the live load writes them,
//!   one minute apart per building);
//! - it catches `citypulse_energy` up once unsliced and once as `--slices` slices, each
//!   slice in an OS process of its own (this program started again with `--slice K`), into
//!   scratch schemas, alternating the two `--rounds` times;
//! - each catch-up is the rebuild's loop (`runner::rebuild`): pages of `--slice-batch`
//!   events (default 5,000, as `PROJECTION_BATCH_SIZE`), the
//!   next page read on a second connection while the current one is applied through
//!   `Projection::apply`, one transaction per page with its checkpoint;
//! - with `--slice-index`, an index on (event type, slice, position) lets each slice read
//!   only its own rows, as a log that stores the slice would; without it, each slice
//!   visits every reading and keeps those of its hash;
//! - it prints events/s over the wall time from the start signal to the last slice done, and
//!   the CPU seconds of the slice processes and of their PostgreSQL backends (from
//!   `/proc/<pid>/stat`), then checks that the slices together hold the same totals as
//!   the unsliced run, and times `runner::rebuild` of the projection for reference.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use universal_backend::projections::citypulse::Energy;
use universal_backend::projections::{runner, Projection};
use universal_backend::startup::connect_and_migrate;
use universal_backend::store::{EventStore, PgEventStore, RawEvent};

/// The application name of the slices' connections (their backends are found by it).
const APP: &str = "ub-slice";

/// Writes the log: per building a registration and a sensor, then `readings` readings
/// spread round-robin over the buildings. Returns the head.
async fn generate(pool: &sqlx::PgPool, buildings: i64, readings: i64) -> anyhow::Result<i64> {
    sqlx::query(
        "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
         event_type, schema_version, data, metadata, recorded_at) \
         SELECT 2 * b + v, 'building-' || md5('b' || b)::uuid, 'building', v, gen_random_uuid(), \
           CASE v WHEN 1 THEN 'BuildingRegistered' ELSE 'SensorRegistered' END, \
           CASE v WHEN 1 THEN 2 ELSE 1 END, \
           CASE v \
             WHEN 1 THEN jsonb_build_object('building_id', md5('b' || b)::uuid, \
               'organization_id', md5('org')::uuid, 'name', 'Bench building ' || b, \
               'address', NULL, 'floor_area_m2', 1500.0, 'registered_at', '2026-01-01T00:00:00Z') \
             ELSE jsonb_build_object('sensor_id', md5('s' || b)::uuid, \
               'kind', 'electricity', 'unit', 'kWh', 'name', 'Main meter') END, \
           jsonb_build_object('organization_id', md5('org')::uuid), \
           timestamptz '2026-01-01 00:00:00+00' \
         FROM generate_series(0, $1 - 1) AS b, generate_series(1, 2) AS v",
    )
    .bind(buildings)
    .execute(pool)
    .await?;
    let first = 2 * buildings;
    let chunk = 200_000;
    let mut done = 0;
    while done < readings {
        let n = chunk.min(readings - done);
        sqlx::query(
            "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
             event_type, schema_version, data, metadata, recorded_at) \
             SELECT $1 + g, 'building-' || md5('b' || b)::uuid, 'building', 3 + k, \
               gen_random_uuid(), 'ReadingsRecorded', 1, \
               jsonb_build_object('readings', jsonb_build_array(jsonb_build_object( \
                 'sensor_id', md5('s' || b)::uuid, 'kind', 'electricity', 'unit', 'kWh', \
                 'value', (g % 97) * 0.5, \
                 'measured_at', to_char(timestamp '2026-01-01' + k * interval '1 minute', \
                   'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')))), \
               jsonb_build_object('organization_id', md5('org')::uuid), \
               timestamptz '2026-01-01 00:00:00+00' + g * interval '1 millisecond' \
             FROM (SELECT g, (g - 1) % $2 AS b, (g - 1) / $2 AS k \
                   FROM generate_series($3 + 1, $3 + $4) AS g) AS t",
        )
        .bind(first)
        .bind(buildings)
        .bind(done)
        .bind(n)
        .execute(pool)
        .await?;
        done += n;
    }
    let head = first + readings;
    sqlx::query("UPDATE event_head SET last_position = $1")
        .bind(head)
        .execute(pool)
        .await?;
    sqlx::query("ANALYZE events").execute(pool).await?;
    Ok(head)
}

fn schema(slice: usize, slices: usize) -> String {
    format!("slice_{slice}_of_{slices}")
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One slice, in a process of its own: catches its part of the projection up into its
/// schema when told to on standard input, and reports on standard output.
pub async fn worker(url: &str, slice: usize, slices: usize, batch: i64) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(url)?;
    let mut apply = PgConnection::connect_with(
        &options
            .clone()
            .application_name(&format!("{APP}/apply/{slice}")),
    )
    .await?;
    let mut read =
        PgConnection::connect_with(&options.application_name(&format!("{APP}/read/{slice}")))
            .await?;
    let schema = schema(slice, slices);
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut apply)
        .await?;
    for t in Energy.tables() {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{t} (LIKE public.{t} INCLUDING ALL)"
        ))
        .execute(&mut apply)
        .await?;
    }
    sqlx::query(&format!(
        "CREATE TABLE {schema}.slice_checkpoint (position bigint NOT NULL)"
    ))
    .execute(&mut apply)
    .await?;
    sqlx::query(&format!("INSERT INTO {schema}.slice_checkpoint VALUES (0)"))
        .execute(&mut apply)
        .await?;
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut apply)
        .await?;
    let types: Vec<String> = Energy.event_types().iter().map(|t| t.to_string()).collect();
    let in_slice = if slices > 1 {
        format!(" AND (hashtext(stream_id) & 2147483647) % {slices} = {slice}")
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT global_position AS position, stream_id, stream_category AS category, version, \
         event_id, event_type, schema_version, data::text AS data \
         FROM events WHERE global_position > $1 AND global_position <= $2 \
         AND event_type = ANY($3){in_slice} ORDER BY global_position LIMIT $4"
    );
    let search_path = format!("SET LOCAL search_path = {schema}, public");
    let checkpoint = format!("UPDATE {schema}.slice_checkpoint SET position = $1");

    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;

    let cpu_before = cpu_secs("self").unwrap_or(0.0);
    let started = Instant::now();
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
        .fetch_one(&mut read)
        .await?;
    let page = |events: &[RawEvent]| {
        if (events.len() as i64) < batch {
            head
        } else {
            events.last().map_or(head, |e| e.position)
        }
    };
    let mut events: Vec<RawEvent> = sqlx::query_as(&sql)
        .bind(0_i64)
        .bind(head)
        .bind(&types)
        .bind(batch)
        .fetch_all(&mut read)
        .await?;
    let (mut position, mut applied) = (0, 0u64);
    while position < head {
        let to = page(&events);
        let step = async {
            let mut tx = apply.begin().await?;
            sqlx::query(&search_path).execute(&mut *tx).await?;
            Energy.apply(&mut tx, &events).await?;
            sqlx::query(&checkpoint).bind(to).execute(&mut *tx).await?;
            tx.commit().await?;
            anyhow::Ok(())
        };
        let next = async {
            if to < head {
                sqlx::query_as::<_, RawEvent>(&sql)
                    .bind(to)
                    .bind(head)
                    .bind(&types)
                    .bind(batch)
                    .fetch_all(&mut read)
                    .await
            } else {
                Ok(Vec::new())
            }
        };
        let (step, next) = tokio::join!(step, next);
        step?;
        applied += events.len() as u64;
        events = next?;
        position = to;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs("self").unwrap_or(0.0) - cpu_before;
    println!("done {applied} {secs:.3} {cpu:.2}");
    std::io::stdout().flush()?;
    // Stay (with the connections open) until the parent has read the backends' CPU.
    let _ = std::io::stdin().lock().read_line(&mut line);
    Ok(())
}

struct Slice {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Slice {
    /// The next line of the protocol (`ready`, `done …`), skipping anything else printed.
    fn expect(&mut self, word: &str) -> anyhow::Result<String> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                anyhow::bail!("a slice process ended before saying {word}");
            }
            if line.starts_with(word) {
                return Ok(line.trim().to_owned());
            }
        }
    }
}

/// What one catch-up (all slices at once) measured.
struct Run {
    events: u64,
    wall: f64,
    slowest_slice: f64,
    slice_cpu: f64,
    /// CPU seconds of the backends that read the log, and of those that applied the pages.
    read_cpu: f64,
    apply_cpu: f64,
    /// CPU seconds the whole machine was busy (every process, ours included).
    machine_cpu: f64,
}

/// CPU seconds the machine has been busy since boot (all but idle and I/O wait), from
/// `/proc/stat`.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let all: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (all - idle) / 100.0
}

/// Runs `slices` slice processes at once and times them from the start signal to the last
/// one done.
async fn catch_up(
    pool: &sqlx::PgPool,
    url: &str,
    slices: usize,
    batch: i64,
) -> anyhow::Result<Run> {
    for k in 0..slices {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            schema(k, slices)
        ))
        .execute(pool)
        .await?;
    }
    let exe = std::env::current_exe()?;
    let mut procs = Vec::new();
    for k in 0..slices {
        let mut child = Command::new(&exe)
            .args(["--mode", "slices", "--database", url])
            .args(["--slice", &k.to_string(), "--slices", &slices.to_string()])
            .args(["--slice-batch", &batch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        procs.push(Slice {
            child,
            stdin,
            stdout,
        });
    }
    for p in &mut procs {
        p.expect("ready")?;
    }
    let backends = |role: &'static str| async move {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name LIKE $1",
        )
        .bind(format!("{APP}/{role}/%"))
        .fetch_all(pool)
        .await
    };
    let (readers, appliers) = (backends("read").await?, backends("apply").await?);
    let cpu_of = |pids: &[i32]| -> f64 {
        pids.iter()
            .filter_map(|pid| cpu_secs(&pid.to_string()))
            .sum()
    };
    let (read_before, apply_before) = (cpu_of(&readers), cpu_of(&appliers));
    let machine_before = machine_busy();
    let started = Instant::now();
    for p in &mut procs {
        p.stdin.write_all(b"go\n")?;
        p.stdin.flush()?;
    }
    let mut run = Run {
        events: 0,
        wall: 0.0,
        slowest_slice: 0.0,
        slice_cpu: 0.0,
        read_cpu: 0.0,
        apply_cpu: 0.0,
        machine_cpu: 0.0,
    };
    for p in &mut procs {
        let done = p.expect("done")?;
        let mut fields = done.split_whitespace().skip(1);
        let mut next =
            || -> anyhow::Result<f64> { Ok(fields.next().unwrap_or("0").parse::<f64>()?) };
        run.events += next()? as u64;
        run.slowest_slice = run.slowest_slice.max(next()?);
        run.slice_cpu += next()?;
    }
    run.wall = started.elapsed().as_secs_f64();
    run.machine_cpu = machine_busy() - machine_before;
    run.read_cpu = cpu_of(&readers) - read_before;
    run.apply_cpu = cpu_of(&appliers) - apply_before;
    for mut p in procs {
        let _ = p.stdin.write_all(b"exit\n");
        drop(p.stdin);
        let status = p.child.wait()?;
        anyhow::ensure!(status.success(), "a slice process failed: {status}");
    }
    Ok(run)
}

/// Rows, samples and the rounded sum of totals over the slices' tables.
async fn totals(pool: &sqlx::PgPool, slices: usize) -> anyhow::Result<(i64, i64, i64)> {
    let mut sum = (0, 0, 0);
    for k in 0..slices {
        let (rows, samples, total): (i64, i64, f64) = sqlx::query_as(&format!(
            "SELECT count(*), COALESCE(sum(samples), 0)::bigint, COALESCE(sum(total), 0) \
             FROM {}.energy_hourly",
            schema(k, slices)
        ))
        .fetch_one(pool)
        .await?;
        sum.0 += rows;
        sum.1 += samples;
        sum.2 += total.round() as i64;
    }
    Ok(sum)
}

/// The whole mode: generate, alternate unsliced and sliced catch-ups, check, report.
pub async fn run(database_url: &str, args: &crate::Args) -> anyhow::Result<()> {
    let (buildings, readings, rounds) = (args.buildings, args.slice_events, args.rounds);
    let (batch, index, keep) = (args.slice_batch, args.slice_index, args.keep);
    let slices = args.slices.max(2);
    let config = crate::bulk_config(database_url);
    let pool = connect_and_migrate(&config).await?;
    let started = Instant::now();
    let head = generate(&pool, buildings as i64, readings).await?;
    if index {
        // What a sliced log would have: each slice's events in order, found without
        // visiting the other slices' rows.
        sqlx::query(&format!(
            "CREATE INDEX events_slices ON events \
             (event_type, ((hashtext(stream_id) & 2147483647) % {slices}), global_position)"
        ))
        .execute(&pool)
        .await?;
        sqlx::query("ANALYZE events").execute(&pool).await?;
    }
    println!(
        "slices: {head} events ({readings} readings over {buildings} buildings) written in \
         {:.1}s; {} core(s); batches of {batch}; slices read {}",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if index {
            "through an index on (event type, slice, position)"
        } else {
            "through the event-type index, filtering by the hash"
        },
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rates: Vec<(usize, f64)> = Vec::new();
    for round in 1..=rounds.max(1) {
        for n in [1, slices] {
            let run = catch_up(&pool, database_url, n, batch).await?;
            let rate = run.events as f64 / run.wall.max(1e-9);
            rates.push((n, rate));
            let ours = run.slice_cpu + run.read_cpu + run.apply_cpu;
            println!(
                "slices: round {round}, {n} slice(s) in {n} process(es): {} events in {:.2}s \
                 = {rate:.0} events/s (slowest slice {:.2}s); CPU s: slice processes {:.1}, \
                 backends reading {:.1}, backends applying {:.1} = {ours:.1} ({:.2} cores); \
                 everything else on the machine {:.1} of {:.1} core-seconds",
                run.events,
                run.wall,
                run.slowest_slice,
                run.slice_cpu,
                run.read_cpu,
                run.apply_cpu,
                ours / run.wall.max(1e-9),
                (run.machine_cpu - ours).max(0.0),
                run.wall * cores as f64,
            );
        }
    }
    let one = totals(&pool, 1).await?;
    let many = totals(&pool, slices).await?;
    println!(
        "slices: check: unsliced {one:?}, {slices} slices together {many:?} (hourly rows, \
         samples, rounded sum): {}",
        if one == many { "same" } else { "DIFFERENT" }
    );
    anyhow::ensure!(
        one == many,
        "the slices do not add up to the unsliced projection"
    );
    let mean = |n: usize| {
        let r: Vec<f64> = rates
            .iter()
            .filter(|(k, _)| *k == n)
            .map(|(_, r)| *r)
            .collect();
        r.iter().sum::<f64>() / r.len().max(1) as f64
    };
    println!(
        "slices: mean {:.0} events/s unsliced, {:.0} events/s as {slices} slices: x{:.2}",
        mean(1),
        mean(slices),
        mean(slices) / mean(1).max(1e-9)
    );
    // The runner's own replay, for reference (in this process).
    let store: Arc<dyn EventStore> = PgEventStore::start(pool.clone(), config.store()).await?;
    let report = runner::rebuild(&pool, store.as_ref(), &Energy, batch).await?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "slices: reference, runner::rebuild of citypulse_energy: {} events in {secs:.2}s = \
         {:.0} events/s",
        report.events,
        report.events as f64 / secs.max(1e-9)
    );
    store.shutdown().await;
    pool.close().await;
    if !keep {
        use sqlx::migrate::MigrateDatabase;
        sqlx::Postgres::force_drop_database(database_url).await?;
    }
    Ok(())
}
