//! The benchmark: starts the real server against a fresh database and drives it over
//! loopback HTTP with concurrent clients, then replays the log through the projections.
//!
//! ```text
//! cargo run --release --bin bench -- [--clients 64] [--buildings 1000] [--seconds 10]
//! cargo run --release --bin bench -- --server-process      # the server in a process of its own
//! cargo run --release --bin bench -- --url http://host:port # a server started apart
//! ```
//!
//! Prints commands/s, events/s, latency percentiles, projection lag at the end of the load,
//! and projection catch-up throughput (a full rebuild of each read model).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[path = "bench/cpu.rs"]
mod cpu;
#[path = "bench/history.rs"]
mod history;
#[path = "bench/import.rs"]
mod import_bench;
#[path = "bench/lean.rs"]
mod lean;
#[path = "bench/slices.rs"]
mod slices;
#[path = "bench/spread.rs"]
mod spread;
#[path = "bench/wal.rs"]
mod wal;

/// mimalloc: the service allocates many short-lived buffers per request (JSON, events);
/// it measured faster than the system allocator under the benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{json, Value};
use universal_backend::projections::{self, runner};
use universal_backend::store::{EventStore, PgEventStore};
use universal_backend::{config::Config, telemetry, Application};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load the CityPulse readings endpoint and measure it")]
struct Args {
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Buildings the readings are spread over.
    #[arg(long, default_value_t = 1000)]
    buildings: usize,
    /// Length of the load phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// PostgreSQL server for the fresh benchmark database (no database name).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    server: String,
    /// Keep the benchmark database afterwards (it is dropped by default).
    #[arg(long)]
    keep: bool,
    /// Size of the generated legacy database in import mode (1 = 1,000,000 readings).
    #[arg(long, default_value_t = 1.0)]
    import_scale: f64,
    /// Measure live delivery instead: `ws` runs 1,000 socket subscribers on one building,
    /// then 1,000 spread over 100 buildings; `chat` runs concurrent FlowMind chats against a
    /// stand-in provider that streams at a fixed rate; `pusher` runs 1,000 Pusher subscribers on
    /// `content-generation` while events are published through the signed HTTP API;
    /// `messaging` runs `--users` Socket.IO users in `--channels` channels, sending
    /// `--rate` messages per second in all; `swarm` measures swarm tasks: a particle swarm
    /// run through the whole stack against argmin alone, and a 10,000-subtask batch; `agents`
    /// runs `--subscribers` Pusher subscribers on `content-generation` while `--rate` agent
    /// executions per second (against a stand-in provider) publish from the log; `import`
    /// generates a FlowMind legacy database and imports it (`--import-scale`); `history`
    /// exports 1,000,000 events, imports them into an empty store and times time travel on
    /// a 100,000-event stream (see src/bin/bench/history.rs); `collab`
    /// runs `--documents` Yjs documents with `--editors` y-websocket editors each over two
    /// server processes (see `bench/collab.rs`); `files`
    /// uploads a `--file-mib` file as multipart and as tus, downloads it, then runs
    /// `--uploads` concurrent uploads, printing MB/s and peak RSS growth.
    /// `slices` times catch-up of `citypulse_energy` unsliced against `--slices` slices in
    /// as many processes (see `bench/slices.rs`).
    /// `visible` posts one reading at a time on an idle server and reads the building with
    /// `min_position`, printing the time from the command to the read model showing it.
    /// `catchup` only replays the log of a database kept by an earlier run (`--keep`), named
    /// by `--database`, through the projections (see `--catch-up-page`, `--projections`); the
    /// database is kept.
    #[arg(long, default_value = "commands")]
    mode: String,
    /// Size of the large file, in MiB (files mode).
    #[arg(long, default_value_t = 1024)]
    file_mib: u64,
    /// Concurrent uploads (files mode).
    #[arg(long, default_value_t = 50)]
    uploads: usize,
    /// Size of each concurrent upload, in MiB (files mode).
    #[arg(long, default_value_t = 20)]
    upload_mib: u64,
    /// Socket subscribers (ws mode).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Readings posted per second (ws mode).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Concurrent chats (chat mode).
    #[arg(long, default_value_t = 50)]
    chats: usize,
    /// Replies each chat asks for, one after another (chat mode).
    #[arg(long, default_value_t = 4)]
    replies: usize,
    /// Tokens the stand-in provider streams per reply (chat mode).
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Tokens per second the stand-in provider streams each reply at (chat mode).
    #[arg(long, default_value_t = 100)]
    token_rate: u64,
    /// Users, each with one Socket.IO connection (messaging mode).
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// Channels the users are spread over (messaging mode).
    #[arg(long, default_value_t = 50)]
    channels: usize,
    /// HTTP worker threads of the server under test.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Swarm mode: server processes on one database (0: the PSO and batch figures instead).
    /// Runs `--tasks` optimizations of about one second each, then a flood from one tenant
    /// against another tenant's single task (see `bench/spread.rs`).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Optimizations of the `--processes` run.
    #[arg(long, default_value_t = 300)]
    tasks: usize,
    /// Iterations of each optimization of the `--processes` run (0: calibrated to about one
    /// second on this machine).
    #[arg(long, default_value_t = 0)]
    iterations: u64,
    /// `WORKER_SLOTS` of each server process (0: one per core).
    #[arg(long, default_value_t = 0)]
    worker_slots: usize,
    /// Slices mode: how many slices (and processes) the sliced catch-up uses.
    #[arg(long, default_value_t = 2)]
    slices: usize,
    /// Slices mode: readings in the generated log.
    #[arg(long, default_value_t = 500_000)]
    slice_events: i64,
    /// Slices mode: how many times the unsliced and the sliced catch-up alternate.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Slices mode: events per page and transaction of each slice.
    #[arg(long, default_value_t = 5000)]
    slice_batch: i64,
    /// Slices mode: index the log by (event type, slice, position), so that each slice reads
    /// only its own events.
    #[arg(long)]
    slice_index: bool,
    /// Slices mode: run this one slice against `--database` (the parent starts these).
    #[arg(long, hide = true)]
    slice: Option<usize>,
    /// Documents (collab mode).
    #[arg(long, default_value_t = 50)]
    documents: usize,
    /// Editors of each document, spread over two server processes (collab mode).
    #[arg(long, default_value_t = 10)]
    editors: usize,
    /// Characters each editor types per second (collab mode).
    #[arg(long, default_value_t = 5)]
    keys_per_second: u64,
    /// Seconds the editors type (collab mode).
    #[arg(long, default_value_t = 30)]
    typing_seconds: u64,
    /// Updates of the document whose load time is measured (collab mode).
    #[arg(long, default_value_t = 100_000)]
    load_updates: usize,
    /// Commands mode: drive a server started apart, at this base URL (`http://host:port`),
    /// instead of one in this process. Only the client's figures are printed then.
    #[arg(long)]
    url: Option<String>,
    /// Commands mode: run the server as a process of its own (this program with `--serve`)
    /// against the fresh database, so that the client does not share the server's process.
    #[arg(long)]
    server_process: bool,
    /// Commands mode: the load client. `lean` writes each request from one buffer over its
    /// own keep-alive connection and costs the shared machine little; `reqwest` is the
    /// client of earlier rounds, for figures comparable with theirs.
    #[arg(long, default_value = "lean", value_parser = ["lean", "reqwest"])]
    client: String,
    /// The store writer's linger under load, in ms (the server's `APPEND_LINGER_MS`).
    #[arg(long)]
    append_linger_ms: Option<u64>,
    /// Serve only: the server of `--server-process`, on `--port` against `--database`,
    /// until its standard input closes.
    #[arg(long, hide = true)]
    serve: bool,
    /// The whole database URL the `--serve` server uses, or the kept database that
    /// `--mode catchup` replays.
    #[arg(long)]
    database: Option<String>,
    /// Events per page of the catch-up replay.
    #[arg(long, default_value_t = 5000)]
    catch_up_page: i64,
    /// Catch-up replays only these projections (comma-separated names; all by default).
    #[arg(long, value_delimiter = ',')]
    projections: Vec<String>,
    /// The port the `--serve` server listens on (0: any free port).
    #[arg(long, hide = true, default_value_t = 0)]
    port: u16,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Target {
    building: String,
    sensor: String,
}

/// Signs up, creates an organization with the `enable` frontends on and logs in; returns a
/// client that sends the token and `X-Frontend-Source: frontend` with every request, and the
/// organization's id.
async fn tenant(
    base: &str,
    idle: usize,
    enable: &[&str],
    frontend: &str,
) -> anyhow::Result<(reqwest::Client, String)> {
    let anon = reqwest::Client::new();
    let email = format!("bench-{}@example.org", uuid::Uuid::new_v4().simple());
    let password = "Bench-Password-42";
    let signed: Value = anon
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({ "email": email, "password": password, "display_name": "Bench" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = signed["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let org: Value = anon
        .post(format!("{base}/api/v1/organizations"))
        .bearer_auth(&token)
        .json(&json!({ "name": "Bench" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let org_id = org["id"].as_str().unwrap_or_default().to_owned();
    for f in enable {
        anon.put(format!("{base}/api/v1/organizations/{org_id}/frontends"))
            .bearer_auth(&token)
            .json(&json!({ "frontend": f, "enabled": true }))
            .send()
            .await?
            .error_for_status()?;
    }
    let login: Value = anon
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password, "organization_id": org_id }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let access = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let _ = BENCH_TOKEN.set(access.clone());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {access}").parse()?);
    headers.insert("x-frontend-source", frontend.parse()?);
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(idle)
        .build()?;
    Ok((client, org_id))
}

/// A client of a fresh tenant with `frontend` on, calling as `frontend`.
async fn tenant_client(base: &str, idle: usize, frontend: &str) -> anyhow::Result<reqwest::Client> {
    Ok(tenant(base, idle, &[frontend], frontend).await?.0)
}

/// Registers the buildings and their sensors.
async fn setup(client: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let per = n.div_ceil(16);
    for chunk in 0..16 {
        let client = client.clone();
        let base = base.to_owned();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in (chunk * per)..((chunk + 1) * per).min(n) {
                let b: Value = client
                    .post(format!("{base}/api/v1/citypulse/buildings"))
                    .json(&json!({ "name": format!("Building {i}") }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let building = b["id"].as_str().unwrap_or_default().to_owned();
                let s: Value = client
                    .post(format!(
                        "{base}/api/v1/citypulse/buildings/{building}/sensors"
                    ))
                    .json(&json!({ "kind": "electricity", "unit": "kWh" }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let sensor = s["sensor_id"].as_str().unwrap_or_default().to_owned();
                out.push(Target { building, sensor });
            }
            anyhow::Ok(out)
        });
    }
    while let Some(r) = tasks.join_next().await {
        targets.extend(r??);
    }
    Ok(targets)
}

struct LoadResult {
    latencies_us: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    /// CPU seconds the whole machine and the server spent during the load.
    cpu: cpu::Spent,
    /// PostgreSQL's log written during the load, when the bench could read it.
    wal: Option<wal::Spent>,
}

/// How one load client posts its readings: `--client lean` (the default) or `reqwest`.
enum Sender {
    Reqwest(reqwest::Client, Arc<Vec<reqwest::Url>>),
    Lean(Box<lean::Connection>, Arc<Vec<String>>),
}

impl Sender {
    /// Posts `body` to the readings of target `at`; true if it was accepted (201).
    async fn post(&mut self, at: usize, body: String) -> bool {
        match self {
            Sender::Reqwest(client, urls) => {
                let res = client
                    .post(urls[at].clone())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match res {
                    Ok(r) => r.status().as_u16() == 201 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
            Sender::Lean(conn, paths) => {
                matches!(conn.post_json(&paths[at], &body).await, Ok(201))
            }
        }
    }
}

/// Drives the readings load for `--seconds` and measures it. With `database_url` (the
/// server's database, when this bench started the server) it also splits PostgreSQL's CPU by
/// the server's sessions and reads the log PostgreSQL wrote.
async fn load(
    args: &Args,
    base: &str,
    client: reqwest::Client,
    targets: Arc<Vec<Target>>,
    server: cpu::Server,
    database_url: Option<&str>,
) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let paths: Vec<String> = targets
        .iter()
        .map(|t| format!("/api/v1/citypulse/buildings/{}/readings", t.building))
        .collect();
    // The URLs are parsed once: parsing one per request cost the client several per cent
    // of the machine (`url::parser`, `idna`), taken from the server it shares cores with.
    let urls: Arc<Vec<reqwest::Url>> = Arc::new(
        paths
            .iter()
            .map(|p| reqwest::Url::parse(&format!("{base}{p}")).expect("a valid URL"))
            .collect(),
    );
    let paths = Arc::new(paths);
    let headers = format!(
        "authorization: Bearer {}\r\nx-frontend-source: citypulse\r\n",
        BENCH_TOKEN.get().map(String::as_str).unwrap_or_default()
    );
    // A connection to the server's database, to tell its sessions apart and read its log.
    let observer = match database_url {
        Some(url) => sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .ok(),
        None => None,
    };
    let (roles, wal_before) = match &observer {
        Some(pool) => (cpu::Roles::read(pool).await, wal::Mark::take(pool).await),
        None => (cpu::Roles::default(), None),
    };
    let started = Instant::now();
    let cpu_before = cpu::Sample::take(server);
    for c in 0..args.clients {
        let mut sender = match args.client.as_str() {
            "reqwest" => Sender::Reqwest(client.clone(), urls.clone()),
            _ => match lean::Connection::new(base, headers.clone()).await {
                Ok(conn) => Sender::Lean(Box::new(conn), paths.clone()),
                Err(e) => {
                    eprintln!("bench: {e:#}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let targets = targets.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let at = i % targets.len();
                i += 7919; // a prime stride spreads clients over the buildings
                let body = format!(
                    "{{\"readings\":[{{\"sensor_id\":\"{}\",\"value\":{}}}]}}",
                    targets[at].sensor,
                    (i % 100) as f64 / 10.0
                );
                let sent = Instant::now();
                if sender.post(at, body).await {
                    lat.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        });
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let cpu = cpu::Sample::take(server).since(&cpu_before, roles);
    let wal = match (&observer, wal_before) {
        (Some(pool), Some(before)) => wal::Mark::take(pool).await.map(|m| m.since(before)),
        _ => None,
    };
    if let Some(pool) = observer {
        pool.close().await;
    }
    let mut latencies_us = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies_us.extend(r.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    LoadResult {
        latencies_us,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        cpu,
        wal,
    }
}

/// Write to visible on an idle server: one reading at a time, each followed at once by a
/// read of the building with `min_position` set to the command's position, so the read is
/// answered only once the read model shows the reading. Prints the command's latency and
/// the time from sending the command to the read's answer.
async fn visible_bench(args: &Args, base: &str) -> anyhow::Result<()> {
    let client = tenant_client(base, 4, "citypulse").await?;
    let targets = setup(&client, base, 1).await?;
    let t = &targets[0];
    let samples = (args.seconds * 50).max(10) as usize;
    let (mut command, mut visible) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // Idle between samples: the projections have nothing else to do.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        let reply: Value = client
            .post(format!(
                "{base}/api/v1/citypulse/buildings/{}/readings",
                t.building
            ))
            .json(&json!({ "readings": [{ "sensor_id": t.sensor, "value": (i % 100) as f64 }] }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        command.push(sent.elapsed().as_micros() as u32);
        let position = reply["position"].as_i64().unwrap_or_default();
        client
            .get(format!(
                "{base}/api/v1/citypulse/buildings/{}?min_position={position}",
                t.building
            ))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        visible.push(sent.elapsed().as_micros() as u32);
    }
    command.sort_unstable();
    visible.sort_unstable();
    println!("visible: {samples} readings, one at a time, 20 ms apart");
    for (what, lat) in [("command", &command), ("write to visible", &visible)] {
        println!(
            "{what} ms: p50 {:.2}  p99 {:.2}  max {:.2}",
            percentile(lat, 0.50),
            percentile(lat, 0.99),
            percentile(lat, 1.0)
        );
    }
    Ok(())
}

/// Live delivery: subscribers on sockets, readings posted at a steady rate, latency from
/// each command's HTTP reply to each subscriber's receipt of its event.
async fn ws_bench(args: &Args, base: &str) -> anyhow::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let client = tenant_client(base, 64, "citypulse").await?;
    let targets = setup(&client, base, 100).await?;
    let access = BENCH_TOKEN.get().cloned().unwrap_or_default();
    for (scenario, spread) in [("1 building", 1usize), ("100 buildings", 100usize)] {
        let replies: Arc<dashmap::DashMap<i64, Instant>> = Arc::new(dashmap::DashMap::new());
        let ws_url = format!("{}/api/v1/ws?token={access}", base.replace("http", "ws"));
        let mut sockets = Vec::with_capacity(args.subscribers);
        for i in 0..args.subscribers {
            let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
            let building = &targets[i % spread].building;
            let sub = json!({ "type": "subscribe", "id": "b", "target": { "stream": format!("building-{building}") }, "from": "now" });
            ws.send(Message::Text(sub.to_string())).await?;
            sockets.push(ws);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = tokio::task::JoinSet::new();
        for mut ws in sockets {
            let stop = stop.clone();
            readers.spawn(async move {
                let mut got: Vec<(i64, Instant)> = Vec::new();
                loop {
                    let next = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
                    match next {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let now = Instant::now();
                            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                                if v["type"] == "event" {
                                    got.push((v["position"].as_i64().unwrap_or(0), now));
                                }
                            }
                        }
                        Ok(Some(Ok(Message::Close(reason)))) => {
                            eprintln!("socket closed by the server: {reason:?}");
                            break;
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(_) => break,
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                got
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let period = Duration::from_micros(1_000_000 / args.rate.max(1));
        let mut ticker = tokio::time::interval(period);
        let mut posted = 0u64;
        while started.elapsed() < Duration::from_secs(args.seconds) {
            ticker.tick().await;
            let t = &targets[(posted as usize) % spread];
            let body = json!({ "readings": [{ "sensor_id": t.sensor, "value": 1.5 }] });
            let res: Value = client
                .post(format!(
                    "{base}/api/v1/citypulse/buildings/{}/readings",
                    t.building
                ))
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            if let Some(p) = res["position"].as_i64() {
                replies.insert(p, Instant::now());
            }
            posted += 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        let mut delivered = 0u64;
        while let Some(r) = readers.join_next().await {
            for (position, at) in r.unwrap_or_default() {
                delivered += 1;
                if let Some(sent) = replies.get(&position) {
                    let us = at.saturating_duration_since(*sent).as_micros();
                    lat.push(us.min(u32::MAX as u128) as u32);
                }
            }
        }
        lat.sort_unstable();
        // Subscriber i watches building i % spread; post k goes to building k % spread.
        let watching = |b: usize| {
            (args.subscribers / spread + usize::from(b < args.subscribers % spread)) as u64
        };
        let expected: u64 = (0..posted as usize).map(|k| watching(k % spread)).sum();
        println!(
            "ws {scenario}: {} subscribers, {posted} commands at {}/s, {delivered} deliveries (expected {expected}), {:.0} deliveries/s",
            args.subscribers,
            args.rate,
            delivered as f64 / elapsed
        );
        println!(
            "ws {scenario}: reply-to-receipt latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0)
        );
        println!(
            "ws {scenario}: process RSS (server and all clients) {:.1} MiB",
            telemetry::rss_bytes().unwrap_or(0) as f64 / 1048576.0
        );
    }
    Ok(())
}

/// Pusher delivery: subscribers on `content-generation` through the Pusher socket, events
/// published at a steady rate through the signed HTTP API (as agent executions publish
/// `generation-progress`), latency from sending each publish request to each receipt.
async fn pusher_bench(args: &Args, base: &str) -> anyhow::Result<()> {
    use universal_backend::gateways::pusher::{Settings, DEV_SECRET};

    let defaults = Config::default();
    let signer = Settings::new(&defaults.pusher_app_id, &defaults.pusher_key, DEV_SECRET);
    let sockets = pusher_subscribers(args, base).await?;
    let sent: Arc<dashmap::DashMap<u64, Instant>> = Arc::new(dashmap::DashMap::new());
    let stop = Arc::new(AtomicBool::new(false));
    let by_seq = sent.clone();
    let readers = pusher_readers(
        sockets,
        stop.clone(),
        Arc::new(move |event: &str, data: &Value, now: Instant| {
            if event != "generation-progress" {
                return None;
            }
            let t = by_seq.get(&data["seq"].as_u64()?)?;
            Some(
                now.saturating_duration_since(*t)
                    .as_micros()
                    .min(u32::MAX as u128) as u32,
            )
        }),
    );
    let client = reqwest::Client::new();
    let path = format!("/apps/{}/events", defaults.pusher_app_id);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    let mut published = 0u64;
    let mut errors = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        let data = json!({ "task_id": "bench", "seq": published, "progress": published % 100 });
        let body = json!({ "name": "generation-progress", "channel": "content-generation", "data": data.to_string() })
            .to_string();
        let query = signer.sign_request(
            "POST",
            &path,
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
        );
        sent.insert(published, Instant::now());
        let res = client
            .post(format!("{base}{path}?{query}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        if !matches!(res, Ok(r) if r.status().is_success()) {
            errors += 1;
        }
        published += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (delivered, lat) = collect(readers).await;
    println!(
        "pusher: {} subscribers on content-generation, {published} events (asked {}/s, sent {:.0}/s, {errors} failed), {delivered} deliveries (expected {}), {:.0} deliveries/s",
        args.subscribers,
        args.rate,
        published as f64 / args.seconds.max(1) as f64,
        (published - errors) * args.subscribers as u64,
        delivered as f64 / elapsed
    );
    println!(
        "pusher: publish-to-receipt latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    Ok(())
}

type PusherSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Maps one received event (name, decoded data, time of receipt) to its delivery latency in
/// µs, or `None` for an event the benchmark does not count.
type Measure = Arc<dyn Fn(&str, &Value, Instant) -> Option<u32> + Send + Sync>;

/// `--subscribers` Pusher sockets, each subscribed to `content-generation` and ready.
async fn pusher_subscribers(args: &Args, base: &str) -> anyhow::Result<Vec<PusherSocket>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let defaults = Config::default();
    let url = format!(
        "{}/app/{}?protocol=7&client=bench",
        base.replace("http", "ws"),
        defaults.pusher_key
    );
    let mut sockets = Vec::with_capacity(args.subscribers);
    for _ in 0..args.subscribers {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
        let sub =
            json!({ "event": "pusher:subscribe", "data": { "channel": "content-generation" } });
        ws.send(Message::Text(sub.to_string())).await?;
        // Established, then subscribed: the socket is ready before the load starts.
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
        }
        sockets.push(ws);
    }
    Ok(sockets)
}

/// One reader per socket until `stop`; each returns the latencies `measure` gave it (µs)
/// and how many events it counted.
fn pusher_readers(
    sockets: Vec<PusherSocket>,
    stop: Arc<AtomicBool>,
    measure: Measure,
) -> tokio::task::JoinSet<(u64, Vec<u32>)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut readers = tokio::task::JoinSet::new();
    for mut ws in sockets {
        let stop = stop.clone();
        let measure = measure.clone();
        readers.spawn(async move {
            let mut got = Vec::new();
            let mut counted = 0u64;
            loop {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let now = Instant::now();
                        let Ok(v) = serde_json::from_str::<Value>(&t) else {
                            continue;
                        };
                        let event = v["event"].as_str().unwrap_or_default();
                        let data: Value = v["data"]
                            .as_str()
                            .and_then(|d| serde_json::from_str(d).ok())
                            .unwrap_or_default();
                        if let Some(us) = measure(event, &data, now) {
                            counted += 1;
                            got.push(us);
                        }
                    }
                    Ok(Some(Ok(Message::Close(reason)))) => {
                        eprintln!("socket closed by the server: {reason:?}");
                        break;
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => break,
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            (counted, got)
        });
    }
    readers
}

/// Joins the readers: deliveries counted, and their latencies sorted.
async fn collect(mut readers: tokio::task::JoinSet<(u64, Vec<u32>)>) -> (u64, Vec<u32>) {
    let mut lat = Vec::new();
    let mut delivered = 0u64;
    while let Some(r) = readers.join_next().await {
        let (n, mut l) = r.unwrap_or_default();
        delivered += n;
        lat.append(&mut l);
    }
    lat.sort_unstable();
    (delivered, lat)
}

/// Agents mode: `--subscribers` Pusher sockets on `content-generation` while agent
/// executions run against a stand-in provider and publish from the log. Latency is from the
/// moment an event says it happened (its `at`, stamped by the worker or the scheduler) to
/// its receipt, so it covers the append, the log follower and the fan-out.
async fn agents_bench(args: &Args, base: &str) -> anyhow::Result<()> {
    let sockets = pusher_subscribers(args, base).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<dashmap::DashMap<String, u64>> = Arc::default();
    let seen = counts.clone();
    let readers = pusher_readers(
        sockets,
        stop.clone(),
        Arc::new(move |event: &str, data: &Value, _now: Instant| {
            if !event.starts_with("generation-") && event != "content-generated" {
                return None;
            }
            let at = data["at"]
                .as_str()
                .and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok())?;
            *seen.entry(event.to_owned()).or_default() += 1;
            let us = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0)
                .max(0);
            Some(us.min(u32::MAX as i64) as u32)
        }),
    );
    let client = tenant_client(base, 16, "toolbox").await?;
    let request = json!({
        "agent_type": "content_generator",
        "task_type": "generate_content",
        "task_data": {"subject": "Mathematics", "grade_level": 5, "objectives": ["Learn fractions"]}
    });
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    // Each submission on a task of its own, so that a slow answer does not lower the rate.
    let mut submissions = tokio::task::JoinSet::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        let (client, request, url) = (
            client.clone(),
            request.clone(),
            format!("{base}/api/v1/agents/execute"),
        );
        submissions.spawn(async move {
            match client.post(url).json(&request).send().await {
                Ok(r) if r.status().as_u16() == 202 => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|b| b["id"].as_str().map(str::to_owned)),
                _ => None,
            }
        });
    }
    let (mut submitted, mut refused) = (0u64, 0u64);
    let mut ids = Vec::new();
    while let Some(r) = submissions.join_next().await {
        submitted += 1;
        match r.ok().flatten() {
            Some(id) => ids.push(id),
            None => refused += 1,
        }
    }
    // Let the queue drain (bounded), then stop the readers.
    let drain = Instant::now();
    let mut finished = 0usize;
    while drain.elapsed() < Duration::from_secs(60) {
        let page: Value = client
            .get(format!(
                "{base}/api/v1/agents/executions?limit=200&status=completed"
            ))
            .send()
            .await?
            .json()
            .await?;
        let failed: Value = client
            .get(format!(
                "{base}/api/v1/agents/executions?limit=200&status=failed"
            ))
            .send()
            .await?
            .json()
            .await?;
        finished = page["items"].as_array().map_or(0, Vec::len)
            + failed["items"].as_array().map_or(0, Vec::len);
        if finished >= ids.len().min(200) && finished > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (delivered, lat) = collect(readers).await;
    let mut by_event: Vec<String> = counts
        .iter()
        .map(|e| format!("{} {}", e.key(), e.value()))
        .collect();
    by_event.sort();
    println!(
        "agents: {} subscribers on content-generation, {submitted} executions submitted ({} accepted, {refused} refused), {finished} seen finished (first 200 counted)",
        args.subscribers,
        ids.len()
    );
    println!(
        "agents: {delivered} deliveries in {elapsed:.1}s = {:.0} deliveries/s ({})",
        delivered as f64 / elapsed,
        by_event.join(", ")
    );
    println!(
        "agents: event-to-receipt latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    Ok(())
}

/// Runs the clients on two threads of their own, so that they do not share the server's,
/// and waits for them without blocking this thread (the store writer and projections live
/// here).
async fn on_client_threads<T, F>(work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    actix_web::rt::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-client")
            .enable_all()
            .build()?
            .block_on(work)
    })
    .await
    .map_err(|_| anyhow::anyhow!("client threads panicked"))?
}

/// Closes the server's pool. Background tasks (the store's writer, the listeners) hold
/// connections until the process ends, so the wait is bounded: the database is dropped
/// with `FORCE` afterwards anyway.
async fn close_pool(pool: &sqlx::PgPool) {
    let _ = tokio::time::timeout(Duration::from_secs(3), pool.close()).await;
}

/// Stops the server and drops the benchmark database unless it is to be kept.
async fn finish(
    handle: actix_web::dev::ServerHandle,
    server: actix_web::rt::task::JoinHandle<anyhow::Result<()>>,
    state: actix_web::web::Data<universal_backend::state::AppState>,
    keep: bool,
    database_url: &str,
) -> anyhow::Result<()> {
    handle.stop(true).await;
    let _ = server.await;
    close_pool(&state.pool).await;
    drop(state);
    if !keep {
        use sqlx::migrate::MigrateDatabase;
        // Other applications of this process (swarm mode) may still be closing their
        // connections: try again for a few seconds.
        let mut tries = 0;
        while let Err(e) = sqlx::Postgres::force_drop_database(database_url).await {
            tries += 1;
            if tries >= 10 {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// The bench tenant's access token, for the sockets' query parameter.
static BENCH_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_tracing("warn");
    let database_url = format!(
        "{}/ub_bench_{}",
        args.server.trim_end_matches('/'),
        chrono::Utc::now().format("%Y%m%d%H%M%S")
    );
    if args.mode == "slices" {
        if let Some(slice) = args.slice {
            let url = args.database.as_deref().unwrap_or(&database_url);
            return slices::worker(url, slice, args.slices, args.slice_batch).await;
        }
        return slices::run(&database_url, &args).await;
    }
    if args.mode == "import" {
        return import_bench::run(&args.server, &database_url, args.import_scale, args.keep).await;
    }
    // Collab mode: two server processes of their own (see `collab`).
    if args.mode == "collab" {
        let (c_args, c_url) = (args.clone(), database_url.clone());
        let result = on_client_threads(async move { collab::run(&c_args, &c_url).await }).await;
        if !args.keep {
            use sqlx::migrate::MigrateDatabase;
            let _ = sqlx::Postgres::force_drop_database(&database_url).await;
        }
        return result;
    }
    // Chat mode: a stand-in OpenAI-compatible provider on a thread of its own.
    let provider_url = if args.mode == "chat" {
        Some(chat::start_provider(args.tokens, args.token_rate, None)?)
    } else if args.mode == "agents" {
        // A lesson valid against the content generator's schema, in one piece.
        let lesson = json!({
            "title": "Fractions",
            "summary": "What a fraction is and how to compare two.",
            "sections": [{"heading": "Parts of a whole", "content": "A fraction names equal parts."}]
        });
        Some(chat::start_provider(1, 1000, Some(lesson.to_string()))?)
    } else {
        None
    };
    let mut config = Config {
        openai_api_key: provider_url.as_ref().map(|_| "sk-bench".to_owned()),
        openai_base_url: provider_url
            .clone()
            .unwrap_or_else(|| Config::default().openai_base_url),
        openai_model: if provider_url.is_some() {
            "bench-model".into()
        } else {
            Config::default().openai_model
        },
        port: 0,
        database_url: database_url.clone(),
        workers: args.workers,
        log_level: "warn".into(),
        // One user drives the whole load: per-user limits would measure the limiter.
        rate_limiting_enabled: false,
        ws_max_connections: args.subscribers * 2 + 10,
        // Agents mode: one organization submits everything; the global cap still holds.
        swarm_max_concurrent_per_org: Config::default().max_concurrent_generations,
        worker_slots: args.worker_slots,
        append_linger_ms: args
            .append_linger_ms
            .unwrap_or(Config::default().append_linger_ms),
        // The Pusher benchmark signs its API calls with it.
        pusher_secret: Some(universal_backend::gateways::pusher::DEV_SECRET.into()),
        ..Config::default()
    };
    // History mode: no server, the command line's work on fresh databases.
    if args.mode == "history" {
        return history::run(&args.server, &database_url, args.keep).await;
    }
    if args.mode == "files" {
        config.file_store_url = files::store_dir();
        config.file_quota_bytes = u64::MAX;
    }
    if args.mode == "catchup" {
        config.database_url = args
            .database
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--mode catchup needs --database"))?;
        return catch_up(&config, &args, true).await;
    }
    if args.serve {
        if let Some(url) = &args.database {
            config.database_url = url.clone();
        }
        config.port = args.port;
        return separate::serve(config).await;
    }
    if args.mode == "commands" && (args.url.is_some() || args.server_process) {
        return separate::drive(&args, config, &database_url).await;
    }
    let app = Application::build(config.clone()).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let handle = app.handle();
    let server = actix_web::rt::spawn(app.run_until_stopped());
    println!(
        "bench: database {database_url}, server {base}, {} workers",
        args.workers
    );

    if args.mode == "files" {
        let store = config.file_store_url.clone();
        let result = files::run(&base, args.file_mib, args.uploads, args.upload_mib).await;
        let _ = std::fs::remove_dir_all(&store);
        result?;
        return finish(handle, server, state, args.keep, &database_url).await;
    }

    if args.mode == "swarm" && args.processes > 0 {
        spread::run(
            &config,
            &base,
            &state.pool,
            args.processes,
            args.tasks,
            args.iterations,
        )
        .await?;
        return finish(handle, server, state, args.keep, &database_url).await;
    }
    if args.mode == "swarm" {
        swarm_bench(&base, &state.pool).await?;
        return finish(handle, server, state, args.keep, &database_url).await;
    }

    if args.mode == "chat" {
        let chat_args = args.clone();
        let chat_base = base.clone();
        let (cpu_before, _) = cpu::this_process();
        let report =
            on_client_threads(async move { chat::run(&chat_args, &chat_base).await }).await?;
        let cpu = cpu::this_process().0 - cpu_before;
        let events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, count(*) FROM events WHERE stream_category = 'conversation' \
             GROUP BY event_type ORDER BY event_type",
        )
        .fetch_all(&state.pool)
        .await?;
        chat::print(&args, &report, &events, cpu);
        return finish(handle, server, state, args.keep, &database_url).await;
    }

    if args.mode == "messaging" {
        let m_args = args.clone();
        let m_base = base.clone();
        on_client_threads(async move { messaging::run(&m_args, &m_base).await }).await?;
        return finish(handle, server, state, args.keep, &database_url).await;
    }

    if args.mode == "visible" {
        let v_args = args.clone();
        let v_base = base.clone();
        on_client_threads(async move { visible_bench(&v_args, &v_base).await }).await?;
        return finish(handle, server, state, args.keep, &database_url).await;
    }

    if args.mode == "ws" || args.mode == "pusher" || args.mode == "agents" {
        let ws_args = args.clone();
        let ws_base = base.clone();
        if args.mode == "pusher" {
            on_client_threads(async move { pusher_bench(&ws_args, &ws_base).await }).await?;
        } else if args.mode == "agents" {
            on_client_threads(async move { agents_bench(&ws_args, &ws_base).await }).await?;
        } else {
            on_client_threads(async move { ws_bench(&ws_args, &ws_base).await }).await?;
        }
        return finish(handle, server, state, args.keep, &database_url).await;
    }

    let client_args = args.clone();
    let client_base = base.clone();
    let observer_url = database_url.clone();
    let (setup_took, result) = on_client_threads(async move {
        let client = tenant_client(&client_base, client_args.clients, "citypulse").await?;
        let t = Instant::now();
        let targets = setup(&client, &client_base, client_args.buildings).await?;
        let setup_took = t.elapsed();
        let result = load(
            &client_args,
            &client_base,
            client,
            Arc::new(targets),
            cpu::Server::ThisProcess,
            Some(&observer_url),
        )
        .await;
        anyhow::Ok((setup_took, result))
    })
    .await?;

    let head = state.store.head_position().await?;
    let lags = lags(&state.pool, head).await?;
    print_load(&args, setup_took, &result, &lags);

    // Catch-up: let the live projections finish, then replay the whole log through each.
    handle.stop(true).await;
    let _ = server.await;
    close_pool(&state.pool).await;
    drop(state);
    catch_up(&config, &args, args.keep).await
}

/// How far each projection is behind `head`, as `name=events`.
async fn lags(pool: &sqlx::PgPool, head: i64) -> anyhow::Result<Vec<String>> {
    let mut lags = Vec::new();
    for p in projections::all() {
        let c = runner::checkpoint(pool, p.name()).await?;
        lags.push(format!("{}={}", p.name(), head - c));
    }
    Ok(lags)
}

/// The settings of a mode that fills a log by bulk inserts, which run longer than a request
/// may.
fn bulk_config(database_url: &str) -> Config {
    Config {
        database_url: database_url.to_owned(),
        log_level: "warn".into(),
        db_statement_timeout_secs: 600,
        ..Config::default()
    }
}

/// Prints the figures of the load phase of commands mode.
fn print_load(args: &Args, setup_took: Duration, result: &LoadResult, lags: &[String]) {
    let n = result.latencies_us.len();
    let secs = result.elapsed.as_secs_f64();
    println!(
        "setup: {} buildings with one sensor each in {:.1}s",
        args.buildings,
        setup_took.as_secs_f64()
    );
    println!(
        "load: {} {} clients, {:.1}s, {} commands ok, {} errors",
        args.clients, args.client, secs, n, result.errors
    );
    println!("commands/s: {:.0}", n as f64 / secs);
    println!("events/s (appended): {:.0}", n as f64 / secs);
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&result.latencies_us, 0.50),
        percentile(&result.latencies_us, 0.99),
        percentile(&result.latencies_us, 1.0)
    );
    println!(
        "latency ms: p90 {:.2}  p95 {:.2}  p99.9 {:.2}",
        percentile(&result.latencies_us, 0.90),
        percentile(&result.latencies_us, 0.95),
        percentile(&result.latencies_us, 0.999)
    );
    result.cpu.print(n);
    if let Some(wal) = &result.wal {
        println!("{}", wal.line(n));
    }
    if !lags.is_empty() {
        println!(
            "projection lag at end of load (events): {}",
            lags.join(", ")
        );
    }
}

/// Replays the whole log through each projection (or those of `--projections`) in pages of
/// `--catch-up-page` events and prints the rate; then drops the benchmark database unless it
/// is to be kept. The server must be stopped.
async fn catch_up(config: &Config, args: &Args, keep: bool) -> anyhow::Result<()> {
    let pool = universal_backend::startup::connect_and_migrate(config).await?;
    let store: Arc<dyn EventStore> = PgEventStore::start(pool.clone(), config.store()).await?;
    for p in projections::all() {
        if !args.projections.is_empty() && !args.projections.iter().any(|n| n == p.name()) {
            continue;
        }
        let report = runner::rebuild(&pool, store.as_ref(), p.as_ref(), args.catch_up_page).await?;
        let secs = report.elapsed.as_secs_f64();
        println!(
            "catch-up {}: {} events in {:.2}s = {:.0} events/s",
            report.projection,
            report.events,
            secs,
            report.events as f64 / secs.max(1e-9)
        );
    }
    store.shutdown().await;
    pool.close().await;
    if !keep {
        use sqlx::migrate::MigrateDatabase;
        sqlx::Postgres::force_drop_database(&config.database_url).await?;
    }
    Ok(())
}

/// Commands mode with the client and the server in separate processes: either a server
/// started apart (`--url`), or this program started again as the server (`--serve`).
mod separate {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use universal_backend::{config::Config, Application};

    use super::{catch_up, lags, load, on_client_threads, print_load, setup, tenant_client, Args};

    /// What the `--serve` server prints once it listens, before its base URL.
    const READY: &str = "bench-server: ";
    /// The longest the server may take to start (migrations included).
    const START_TIMEOUT: Duration = Duration::from_secs(120);
    /// The longest the server may take to stop once told to.
    const STOP_TIMEOUT: Duration = Duration::from_secs(30);

    /// The server alone, until standard input closes (the driving process ends it so, and
    /// its death does too).
    pub async fn serve(config: Config) -> anyhow::Result<()> {
        let app = Application::build(config).await?;
        let (handle, state) = (app.handle(), app.state());
        println!("{READY}http://127.0.0.1:{}", app.port());
        std::io::stdout().flush()?;
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let _ = actix_web::rt::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        })
        .await;
        handle.stop(true).await;
        let _ = server.await;
        super::close_pool(&state.pool).await;
        Ok(())
    }

    /// Starts this program as the server on `database_url`; returns it with its base URL.
    fn spawn_server(args: &Args, database_url: &str) -> anyhow::Result<(Child, String)> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--serve", "--database", database_url])
            .args(["--workers", &args.workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(base) = line.strip_prefix(READY) {
                    let _ = tx.send(base.trim().to_owned());
                    break;
                }
            }
            // Keep reading so that the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => Ok((child, base)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the server process did not start within {START_TIMEOUT:?}")
            }
        }
    }

    /// Closes the server's standard input and waits for it to stop (killed after
    /// [`STOP_TIMEOUT`]).
    fn stop_server(mut child: Child) -> anyhow::Result<()> {
        drop(child.stdin.take());
        let until = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < until {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("the server process did not stop in time; killing it");
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    pub async fn drive(args: &Args, config: Config, database_url: &str) -> anyhow::Result<()> {
        let (child, base) = match &args.url {
            Some(url) => (None, url.trim_end_matches('/').to_owned()),
            None => {
                let (child, base) = spawn_server(args, database_url)?;
                (Some(child), base)
            }
        };
        println!(
            "bench: server {base} in a separate process ({}), client in this one",
            if child.is_some() {
                format!("database {database_url}, {} workers", args.workers)
            } else {
                "started apart".to_owned()
            }
        );
        let server = match &child {
            Some(child) => crate::cpu::Server::Process(child.id()),
            None => crate::cpu::Server::Elsewhere,
        };
        let client_args = args.clone();
        let client_base = base.clone();
        // PostgreSQL is observed (its time split by the server's sessions, its log read) only
        // when this bench started the server on its own database.
        let observer_url = child.is_some().then(|| database_url.to_owned());
        let outcome = on_client_threads(async move {
            let client = tenant_client(&client_base, client_args.clients, "citypulse").await?;
            let t = Instant::now();
            let targets = setup(&client, &client_base, client_args.buildings).await?;
            let setup_took = t.elapsed();
            let result = load(
                &client_args,
                &client_base,
                client,
                Arc::new(targets),
                server,
                observer_url.as_deref(),
            )
            .await;
            anyhow::Ok((setup_took, result))
        })
        .await;
        let Some(child) = child else {
            let (setup_took, result) = outcome?;
            print_load(args, setup_took, &result, &[]);
            return Ok(());
        };
        let measured = async {
            let (setup_took, result) = outcome?;
            let pool = sqlx::PgPool::connect(database_url).await?;
            let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
                .fetch_one(&pool)
                .await?;
            let lags = lags(&pool, head).await?;
            pool.close().await;
            print_load(args, setup_took, &result, &lags);
            anyhow::Ok(())
        }
        .await;
        let stopped = stop_server(child);
        measured?;
        stopped?;
        catch_up(&config, args, args.keep).await
    }
}

#[path = "bench/collab.rs"]
mod collab;

/// Chat mode: N concurrent FlowMind chats against a stand-in provider that streams T tokens
/// at a fixed rate; measures the time to the first delta at the client (over SSE), the
/// events written per reply and the server's CPU per reply.
#[path = "bench/files.rs"]
mod files;

mod chat {
    use super::*;

    /// Starts the stand-in provider on a thread of its own; returns its base URL.
    /// `answer`: every reply is this text in one piece (else `tokens` made-up tokens).
    pub fn start_provider(
        tokens: usize,
        rate: u64,
        answer: Option<String>,
    ) -> anyhow::Result<String> {
        let answer: Option<std::sync::Arc<str>> = answer.map(Into::into);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        std::thread::Builder::new()
            .name("bench-provider".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = actix_web::HttpServer::new(move || {
                        actix_web::App::new().route(
                            "/v1/chat/completions",
                            actix_web::web::post().to({
                                let answer = answer.clone();
                                move || reply(tokens, rate, answer.clone())
                            }),
                        )
                    })
                    .workers(1)
                    .listen(listener)
                    .expect("the stand-in provider listens")
                    .run();
                    let _ = server.await;
                })
            })?;
        Ok(url)
    }

    async fn reply(
        tokens: usize,
        rate: u64,
        answer: Option<std::sync::Arc<str>>,
    ) -> actix_web::HttpResponse {
        let period = Duration::from_micros(1_000_000 / rate.max(1));
        let body = futures_util::stream::unfold(0usize, move |i| {
            let answer = answer.clone();
            async move {
                if i > tokens + 1 {
                    return None;
                }
                let event = if i < tokens {
                    tokio::time::sleep(period).await;
                    let content = answer
                        .as_deref()
                        .map_or_else(|| format!("t{i} "), str::to_owned);
                    let chunk = json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
                    format!("data: {chunk}\n\n")
                } else if i == tokens {
                    let done = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 20, "completion_tokens": tokens}});
                    format!("data: {done}\n\n")
                } else {
                    "data: [DONE]\n\n".to_owned()
                };
                Some((
                    Ok::<_, actix_web::Error>(actix_web::web::Bytes::from(event)),
                    i + 1,
                ))
            }
        });
        actix_web::HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(body)
    }

    pub struct Report {
        pub ttfd_us: Vec<u32>,
        pub completed: usize,
        pub failed: usize,
        pub elapsed: Duration,
    }

    /// One chat: a session, then `replies` messages one after another, each followed over
    /// SSE to its end. Returns the time to the first delta of each reply.
    async fn one_chat(
        client: reqwest::Client,
        base: String,
        replies: usize,
    ) -> anyhow::Result<(Vec<u32>, usize)> {
        use futures_util::StreamExt;
        let session: Value = client
            .post(format!("{base}/api/v1/ai/sessions"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = session["id"].as_str().unwrap_or_default().to_owned();
        let mut firsts = Vec::new();
        let mut failed = 0;
        for n in 0..replies {
            let sent = Instant::now();
            let posted: Value = client
                .post(format!("{base}/api/v1/ai/sessions/{id}/messages"))
                .json(&json!({ "content": format!("question {n}") }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let url = format!(
                "{base}{}",
                posted["stream_url"].as_str().unwrap_or_default()
            );
            let mut body = client
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .bytes_stream();
            let mut buf = String::new();
            let mut first = None;
            'read: while let Some(chunk) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk?));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if block.starts_with("event: delta") && first.is_none() {
                        first = Some(sent.elapsed());
                    } else if block.starts_with("event: completed") {
                        break 'read;
                    } else if block.starts_with("event: ") && !block.starts_with("event: delta") {
                        failed += 1;
                        break 'read;
                    }
                }
            }
            if let Some(f) = first {
                firsts.push(f.as_micros().min(u32::MAX as u128) as u32);
            }
        }
        Ok((firsts, failed))
    }

    pub async fn run(args: &Args, base: &str) -> anyhow::Result<Report> {
        let client = tenant_client(base, args.chats, "flowmind").await?;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.chats {
            tasks.spawn(one_chat(client.clone(), base.to_owned(), args.replies));
        }
        let mut report = Report {
            ttfd_us: Vec::new(),
            completed: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        };
        while let Some(done) = tasks.join_next().await {
            match done? {
                Ok((firsts, failed)) => {
                    report.completed += args.replies - failed;
                    report.failed += failed;
                    report.ttfd_us.extend(firsts);
                }
                Err(e) => {
                    eprintln!("a chat failed: {e}");
                    report.failed += args.replies;
                }
            }
        }
        report.elapsed = started.elapsed();
        report.ttfd_us.sort_unstable();
        Ok(report)
    }

    pub fn print(args: &Args, r: &Report, events: &[(String, i64)], cpu: f64) {
        let replies = r.completed.max(1) as f64;
        println!(
            "chat: {} chats x {} replies, {} tokens at {}/s each (a reply streams for {:.1}s)",
            args.chats,
            args.replies,
            args.tokens,
            args.token_rate,
            args.tokens as f64 / args.token_rate.max(1) as f64
        );
        println!(
            "replies: {} completed, {} failed in {:.1}s",
            r.completed,
            r.failed,
            r.elapsed.as_secs_f64()
        );
        println!(
            "time to first delta at the client ms: p50 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&r.ttfd_us, 0.50),
            percentile(&r.ttfd_us, 0.99),
            percentile(&r.ttfd_us, 1.0)
        );
        let total: i64 = events.iter().map(|(_, n)| n).sum();
        let per: Vec<String> = events
            .iter()
            .map(|(t, n)| format!("{t} {:.1}", *n as f64 / replies))
            .collect();
        println!(
            "events per reply: {:.1} ({})",
            total as f64 / replies,
            per.join(", ")
        );
        println!(
            "server CPU per reply (this process, without PostgreSQL): {:.2} ms",
            cpu * 1000.0 / replies
        );
    }
}

/// Messaging mode: users on Socket.IO `/messaging` (Engine.IO v4 over WebSocket, spoken
/// here directly), spread over public channels, each sending messages at a fixed rate; every
/// receiver in the channel's room measures the time from the send to its receipt.
mod messaging {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    const PASSWORD: &str = "Bench-Password-42";

    async fn call(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut req = client.request(method, url).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t).header("x-frontend-source", "fluxstudio");
        }
        Ok(req.send().await?.error_for_status()?.json().await?)
    }

    /// The admin's token and organization, with FluxStudio enabled.
    async fn admin(client: &reqwest::Client, base: &str) -> anyhow::Result<(String, String)> {
        let email = format!("admin-{}@example.org", uuid::Uuid::new_v4().simple());
        let post = reqwest::Method::POST;
        let signed = call(
            client,
            post.clone(),
            format!("{base}/api/v1/auth/signup"),
            None,
            json!({ "email": email, "password": PASSWORD, "display_name": "Admin" }),
        )
        .await?;
        let token = signed["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let org = call(
            client,
            post.clone(),
            format!("{base}/api/v1/organizations"),
            Some(&token),
            json!({ "name": "Bench Studio" }),
        )
        .await?;
        let org = org["id"].as_str().unwrap_or_default().to_owned();
        call(
            client,
            reqwest::Method::PUT,
            format!("{base}/api/v1/organizations/{org}/frontends"),
            Some(&token),
            json!({ "frontend": "fluxstudio", "enabled": true }),
        )
        .await?;
        let login = call(
            client,
            post,
            format!("{base}/api/v1/auth/login"),
            None,
            json!({ "email": email, "password": PASSWORD, "organization_id": org }),
        )
        .await?;
        Ok((
            login["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            org,
        ))
    }

    /// A member of `org`: signed up, added by the admin, logged in.
    async fn member(
        client: reqwest::Client,
        base: String,
        admin: String,
        org: String,
        i: usize,
    ) -> anyhow::Result<String> {
        let email = format!("user{i}-{}@example.org", uuid::Uuid::new_v4().simple());
        let post = reqwest::Method::POST;
        let signed = call(
            &client,
            post.clone(),
            format!("{base}/api/v1/auth/signup"),
            None,
            json!({ "email": email, "password": PASSWORD, "display_name": format!("User {i}") }),
        )
        .await?;
        let user = signed["user"]["id"].as_str().unwrap_or_default().to_owned();
        call(
            &client,
            post.clone(),
            format!("{base}/api/v1/organizations/{org}/members"),
            Some(&admin),
            json!({ "user_id": user, "role": "member" }),
        )
        .await?;
        let login = call(
            &client,
            post,
            format!("{base}/api/v1/auth/login"),
            None,
            json!({ "email": email, "password": PASSWORD, "organization_id": org }),
        )
        .await?;
        Ok(login["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// The next text frame that starts with `prefix` (answering pings on the way).
    async fn expect(ws: &mut Ws, prefix: &str) -> anyhow::Result<String> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("socket closed"))??;
            if let Message::Text(t) = frame {
                if t.as_str() == "2" {
                    ws.send(Message::Text("3".into())).await?;
                } else if t.starts_with(prefix) {
                    return Ok(t.to_string());
                }
            }
        }
    }

    /// A connected `/messaging` socket in the room of `channel`.
    async fn connect(base: &str, token: &str, channel: &str) -> anyhow::Result<Ws> {
        let url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            base.replace("http", "ws")
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        expect(&mut ws, "0").await?;
        ws.send(Message::Text(format!(
            "40/messaging,{}",
            json!({ "token": token })
        )))
        .await?;
        expect(&mut ws, "40/messaging,").await?;
        ws.send(Message::Text(format!(
            "42/messaging,1{}",
            json!(["channel:join", channel])
        )))
        .await?;
        let ack = expect(&mut ws, "43/messaging,1").await?;
        anyhow::ensure!(ack.contains("\"ok\":true"), "join refused: {ack}");
        Ok(ws)
    }

    pub async fn run(args: &Args, base: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let t = Instant::now();
        let (admin, org) = admin(&client, base).await?;
        let mut channels = Vec::new();
        for c in 0..args.channels.max(1) {
            let ch = call(
                &client,
                reqwest::Method::POST,
                format!("{base}/api/v1/channels"),
                Some(&admin),
                json!({ "name": format!("channel-{c}") }),
            )
            .await?;
            channels.push(ch["id"].as_str().unwrap_or_default().to_owned());
        }
        let mut tokens = Vec::with_capacity(args.users);
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..args.users {
            pending.spawn(member(
                client.clone(),
                base.to_owned(),
                admin.clone(),
                org.clone(),
                i,
            ));
            if pending.len() >= 8 {
                if let Some(done) = pending.join_next().await {
                    tokens.push(done??);
                }
            }
        }
        while let Some(done) = pending.join_next().await {
            tokens.push(done??);
        }
        let mut sockets = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            sockets.push(connect(base, token, &channels[i % channels.len()]).await?);
        }
        println!(
            "messaging: {} users in {} channels connected and joined in {:.1}s",
            sockets.len(),
            channels.len(),
            t.elapsed().as_secs_f64()
        );

        let epoch = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        // Each user sends every `period`, offset so that sends spread evenly, until
        // `sending_ends`. It keeps reading until its socket has been quiet for `QUIET` (at
        // most until `reading_ends`) so that late messages are counted too, then hands back
        // what it measured. No task is aborted: an aborted task's figures would be lost.
        const QUIET: Duration = Duration::from_secs(5);
        let per_user = args.rate.max(1) as f64 / sockets.len().max(1) as f64;
        let period = Duration::from_secs_f64(1.0 / per_user);
        let sending_ends = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
        let reading_ends = sending_ends + Duration::from_secs(30);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, ws) in sockets.into_iter().enumerate() {
            let (sent, refused) = (sent.clone(), refused.clone());
            let channel = channels[i % channels.len()].clone();
            let offset = period.mul_f64(i as f64 / args.users.max(1) as f64);
            tasks.spawn(async move {
                let (mut tx, mut rx) = ws.split();
                let mut latencies: Vec<u32> = Vec::new();
                let mut closed = false;
                let mut next = tokio::time::Instant::now() + offset;
                let mut quiet_from = sending_ends;
                let mut last_at = 0u64;
                loop {
                    let sending = next < sending_ends;
                    let done_at = (quiet_from + QUIET).min(reading_ends);
                    tokio::select! {
                        _ = tokio::time::sleep_until(next), if sending => {
                            next += period;
                            let at = epoch.elapsed().as_micros() as u64;
                            let msg = json!(["message:send", { "channel_id": channel, "text": format!("t={at}") }]);
                            if tx.send(Message::Text(format!("42/messaging,{msg}"))).await.is_err() { break; }
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        _ = tokio::time::sleep_until(done_at), if !sending => break,
                        frame = rx.next() => match frame {
                            Some(Ok(Message::Text(t))) => {
                                quiet_from = quiet_from.max(tokio::time::Instant::now());
                                if t.as_str() == "2" {
                                    let _ = tx.send(Message::Text("3".into())).await;
                                } else if t.starts_with("42/messaging,[\"error\"") {
                                    if refused.fetch_add(1, Ordering::Relaxed) < 3 {
                                        eprintln!("refused: {t}");
                                    }
                                } else if t.starts_with("42/messaging,[\"message:new\"") {
                                    if let Some(at) = t.split("t=").nth(1).and_then(|r| r.split('"').next()).and_then(|v| v.parse::<u64>().ok()) {
                                        let now = epoch.elapsed().as_micros() as u64;
                                        last_at = last_at.max(now);
                                        latencies.push(now.saturating_sub(at).min(u32::MAX as u64) as u32);
                                    }
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => {
                                closed = true;
                                break;
                            }
                        },
                    }
                }
                (latencies, closed, last_at)
            });
        }
        let mut all = Vec::new();
        let mut closed = 0;
        // Deliveries per second over the time from the first send to the last receipt.
        let mut last_at = 0u64;
        while let Some(done) = tasks.join_next().await {
            let (l, c, at) = done?;
            all.extend(l);
            closed += usize::from(c);
            last_at = last_at.max(at);
        }
        let elapsed = (last_at as f64 / 1e6).max(1e-3);
        all.sort_unstable();
        let sent = sent.load(Ordering::Relaxed);
        println!(
            "sends the server refused: {}",
            refused.load(Ordering::Relaxed)
        );
        let per_channel = args.users as f64 / channels.len() as f64;
        println!(
            "sent {} messages in {:.1}s ({:.0}/s); {} deliveries of {:.0} expected ({:.0}/s)",
            sent,
            args.seconds,
            sent as f64 / args.seconds as f64,
            all.len(),
            sent as f64 * per_channel,
            all.len() as f64 / elapsed
        );
        println!(
            "sockets the server closed during the run (slow readers, or timeouts): {closed} of {}",
            args.users
        );
        println!(
            "send-to-receipt latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            percentile(&all, 1.0)
        );
        println!(
            "RSS (server and clients): {:.0} MiB",
            telemetry::rss_bytes().unwrap_or(0) as f64 / 1048576.0
        );
        Ok(())
    }
}
/// A client of a fresh tenant with Quantum and Velocity Swarm enabled.
async fn swarm_client(base: &str, frontend: &str) -> anyhow::Result<(reqwest::Client, String)> {
    tenant(base, usize::MAX, &["quantum", "velocity"], frontend).await
}

/// Submits a task and polls it (every 10 ms) until it ends; returns the task and the
/// wall-clock time from the submission to the answer that showed the end.
async fn submit_and_wait(
    client: &reqwest::Client,
    base: &str,
    body: Value,
) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let created: Value = client
        .post(format!("{base}/api/v1/swarm/tasks"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    loop {
        let task: Value = client
            .get(format!("{base}/api/v1/swarm/tasks/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if matches!(
            task["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return Ok((task, started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("task {id} did not end in 10 minutes: {task}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PSO function evaluations per second through HTTP, the scheduler, the actor and the
/// events, against argmin alone on the same problem; then a batch of 10,000 trivial
/// subtasks (prompts to the local development provider): subtasks/s and events written per
/// subtask.
async fn swarm_bench(base: &str, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    use universal_backend::swarm::{objective::Objective, pso};
    use universal_events::swarm::QuantumConfig;

    let (dimensions, particles, iterations) = (30u32, 200u32, 20_000u64);
    let config = QuantumConfig {
        dimensions,
        bounds: vec![[-5.12, 5.12]; dimensions as usize],
        particles,
        iterations,
        inertia: 1.0 / (2.0 * 2f64.ln()),
        cognitive: 0.5 + 2f64.ln(),
        social: 0.5 + 2f64.ln(),
        seed: 1,
    };
    // The machine's speed drifts (other work shares its cores): alternate the two, three
    // pairs, and report each pair's ratio and the median.
    let (quantum, _) = swarm_client(base, "quantum").await?;
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let bare_config = config.clone();
        let bare = actix_web::rt::task::spawn_blocking(move || {
            let objective = Objective::parse("rastrigin", dimensions).expect("a test function");
            pso::optimize_bare(&objective, &bare_config)
        })
        .await??;
        let bare_rate = bare.evaluations as f64 / bare.elapsed.as_secs_f64();
        let body = json!({
            "type": "quantum", "objective": "rastrigin",
            "config": { "dimensions": dimensions, "particles": particles, "iterations": iterations, "seed": 1 }
        });
        let (task, wall) = submit_and_wait(&quantum, base, body).await?;
        let evaluations = task["result"]["evaluations"].as_u64().unwrap_or(0);
        let worker_ms = task["result"]["elapsed_ms"].as_u64().unwrap_or(0);
        let stack_rate = evaluations as f64 / wall.as_secs_f64();
        let progress_events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE stream_id = $1 \
             AND event_type = 'OptimizationProgressed'",
        )
        .bind(format!(
            "swarm_task-{}",
            task["id"].as_str().unwrap_or_default()
        ))
        .fetch_one(pool)
        .await?;
        println!(
            "pso round {round}: rastrigin {dimensions}-D, {particles} particles, {iterations} \
             iterations; argmin alone {:.0} evaluations/s ({:.3} s); whole stack (HTTP submit \
             to completed seen) {:.0} evaluations/s ({:.3} s, worker {:.3} s, \
             {progress_events} progress events); stack/argmin = {:.3}; same result: {}",
            bare_rate,
            bare.elapsed.as_secs_f64(),
            stack_rate,
            wall.as_secs_f64(),
            worker_ms as f64 / 1000.0,
            stack_rate / bare_rate,
            task["result"]["best_cost"].as_f64() == Some(bare.best_cost)
        );
        ratios.push(stack_rate / bare_rate);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "pso: median stack/argmin = {:.3} (overhead {:.1}%)",
        ratios[1],
        (1.0 - ratios[1]) * 100.0
    );

    let (velocity, _) = swarm_client(base, "velocity").await?;
    let body = json!({
        "type": "velocity", "objective": "bench",
        "config": {
            "subtasks": [{ "kind": "prompt", "prompt": "ping", "model": "local-echo", "count": 10000 }],
            "concurrency": 64, "retries": 0
        }
    });
    let (task, wall) = submit_and_wait(&velocity, base, body).await?;
    let done = task["progress"]["done"].as_i64().unwrap_or(0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(format!(
            "swarm_task-{}",
            task["id"].as_str().unwrap_or_default()
        ))
        .fetch_one(pool)
        .await?;
    println!(
        "batch: {done} of 10000 subtasks done ({}) in {:.3} s = {:.0} subtasks/s; \
         {events} events for the batch = {:.4} events per subtask",
        task["status"].as_str().unwrap_or("?"),
        wall.as_secs_f64(),
        done as f64 / wall.as_secs_f64(),
        events as f64 / 10000.0
    );
    Ok(())
}
