//! Collab mode: `--documents` FluxStudio documents with `--editors` editors each, every
//! editor typing `--keys-per-second` characters a second for `--typing-seconds` s, the editors of
//! each document spread over two server processes (the `universal-backend` binary next to
//! this one, started as child processes on one database). Editors speak the y-websocket
//! protocol with `yrs`, as y-websocket does: one message per binary frame.
//!
//! Prints the delivery latency of each keystroke from its editor to every other editor of
//! the document (p50, p99, max; same process and across processes), the events written per
//! second and the coalescing factor, the RSS of each server process, and the time to load a
//! document of `--load-updates` updates (from the log alone, and from a snapshot).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use universal_backend::config::Config;
use universal_backend::gateways::collab::content;
use universal_backend::store::{EventStore, ExpectedVersion, NewEvent, PgEventStore};
use yrs::block::ClientID;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

use super::{percentile, Args};

/// A server process of the benchmark.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
}

async fn start_server(
    database_url: &str,
    projections: bool,
    args: &Args,
) -> anyhow::Result<Server> {
    let binary = std::env::current_exe()?
        .parent()
        .map(|d| d.join("universal-backend"))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the server binary is not built: cargo build --release --bin universal-backend"
            )
        })?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(binary)
        .env("DATABASE_URL", database_url)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", "bench-secret-bench-secret-bench-secret")
        .env("PUSHER_SECRET", "bench-pusher-secret")
        .env("RUN_PROJECTIONS", projections.to_string())
        .env("RATE_LIMITING_ENABLED", "false")
        .env("WORKERS", args.workers.to_string())
        .env("LOG_LEVEL", "warn")
        .env("WS_MAX_CONNECTIONS", "10000")
        .env("COLLAB_RATE_LIMIT_PER_MINUTE", "0")
        .stdout(Stdio::null())
        .spawn()?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{}/health", server.base)).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("a server process did not answer /health")
}

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

/// An admin with FluxStudio on, a project, and `n` documents: the token and document ids.
async fn documents(base: &str, n: usize) -> anyhow::Result<(String, Vec<String>)> {
    let client = reqwest::Client::new();
    let post = reqwest::Method::POST;
    let email = format!("collab-{}@example.org", uuid::Uuid::new_v4().simple());
    let signed = call(
        &client,
        post.clone(),
        format!("{base}/api/v1/auth/signup"),
        None,
        json!({ "email": email, "password": "Bench-Password-42", "display_name": "Bench" }),
    )
    .await?;
    let token = signed["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let org = call(
        &client,
        post.clone(),
        format!("{base}/api/v1/organizations"),
        Some(&token),
        json!({ "name": "Collab bench" }),
    )
    .await?;
    let org_id = org["id"].as_str().unwrap_or_default().to_owned();
    client
        .put(format!("{base}/api/v1/organizations/{org_id}/frontends"))
        .bearer_auth(&token)
        .json(&json!({ "frontend": "fluxstudio", "enabled": true }))
        .send()
        .await?
        .error_for_status()?;
    let login = call(
        &client,
        post.clone(),
        format!("{base}/api/v1/auth/login"),
        None,
        json!({ "email": email, "password": "Bench-Password-42", "organization_id": org_id }),
    )
    .await?;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let project = call(
        &client,
        post.clone(),
        format!("{base}/api/v1/projects"),
        Some(&token),
        json!({ "name": "Bench" }),
    )
    .await?;
    let project = project["id"].as_str().unwrap_or_default().to_owned();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let doc = call(
            &client,
            post.clone(),
            format!("{base}/api/v1/projects/{project}/documents"),
            Some(&token),
            json!({ "name": format!("Doc {i}") }),
        )
        .await?;
        ids.push(doc["id"].as_str().unwrap_or_default().to_owned());
    }
    Ok((token, ids))
}

/// When each keystroke (client id, clock) was typed.
type Sent = Arc<Mutex<HashMap<(ClientID, u32), Instant>>>;

/// Latencies in microseconds: same process, other process.
#[derive(Default)]
struct Latencies {
    same: Vec<u32>,
    cross: Vec<u32>,
    missing: u64,
}

/// One editor: a Yjs document behind a y-websocket connection. Types `keys` characters at
/// the given rate and records, for every keystroke of another editor it receives, the time
/// since it was typed.
#[allow(clippy::too_many_arguments)]
async fn editor(
    url: String,
    process: usize,
    processes: Arc<Mutex<HashMap<ClientID, usize>>>,
    sent: Sent,
    keys: usize,
    every: Duration,
    start_at: tokio::time::Instant,
    linger: Duration,
) -> anyhow::Result<(Latencies, u64)> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let doc = yrs::Doc::new();
    let me = doc.client_id();
    processes.lock().unwrap().insert(me, process);
    let text = doc.get_or_insert_text("content");
    let mut lat = Latencies::default();
    let step1 = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector()));
    tx.send(WsMessage::Binary(step1.encode_v1())).await?;
    let mut tick = tokio::time::interval_at(start_at, every);
    let stop_typing = start_at + every * keys as u32;
    let stop = stop_typing + linger;
    let mut typed = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick(), if typed < keys => {
                let update = {
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, "x");
                    txn.encode_update_v1()
                };
                let clock = doc.transact().state_vector().get(&me);
                sent.lock().unwrap().insert((me, clock), Instant::now());
                typed += 1;
                let msg = Message::Sync(SyncMessage::Update(update)).encode_v1();
                tx.send(WsMessage::Binary(msg)).await?;
            }
            _ = tokio::time::sleep_until(stop) => break,
            frame = rx.next() => {
                let Some(frame) = frame else { break };
                let WsMessage::Binary(bytes) = frame? else { continue };
                let Ok(message) = Message::decode_v1(&bytes) else { continue };
                match message {
                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                        let diff = doc.transact().encode_state_as_update_v1(&sv);
                        let msg = Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1();
                        tx.send(WsMessage::Binary(msg)).await?;
                    }
                    Message::Sync(SyncMessage::SyncStep2(u)) | Message::Sync(SyncMessage::Update(u)) => {
                        let now = Instant::now();
                        let Ok(update) = yrs::Update::decode_v1(&u) else { continue };
                        let before = doc.transact().state_vector();
                        let _ = doc.transact_mut().apply_update(update);
                        let after = doc.transact().state_vector();
                        let sent = sent.lock().unwrap();
                        let procs = processes.lock().unwrap();
                        for (client, end) in after.iter() {
                            if *client == me {
                                continue;
                            }
                            let from = before.get(client);
                            let same = procs.get(client) == Some(&process);
                            for clock in from + 1..=*end {
                                match sent.get(&(*client, clock)) {
                                    Some(at) => {
                                        let us = now.duration_since(*at).as_micros().min(u32::MAX as u128) as u32;
                                        if same { lat.same.push(us) } else { lat.cross.push(us) }
                                    }
                                    None => lat.missing += 1,
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = tx.send(WsMessage::Close(None)).await;
    Ok((lat, typed as u64))
}

pub async fn run(args: &Args, database_url: &str) -> anyhow::Result<()> {
    // The database, migrated once by this process; then the two servers.
    let config = Config {
        database_url: database_url.to_owned(),
        ..Config::default()
    };
    let pool = universal_backend::startup::connect_and_migrate(&config).await?;
    let servers = [
        start_server(database_url, true, args).await?,
        start_server(database_url, false, args).await?,
    ];
    println!(
        "bench collab: database {database_url}, servers {} and {} ({} workers each)",
        servers[0].base, servers[1].base, args.workers
    );
    let (token, docs) = documents(&servers[0].base, args.documents).await?;
    let rss_idle: Vec<f64> = servers.iter().map(Server::rss_mib).collect();

    let sent: Sent = Default::default();
    let processes: Arc<Mutex<HashMap<ClientID, usize>>> = Default::default();
    let keys = (args.keys_per_second * args.typing_seconds) as usize;
    let every = Duration::from_secs_f64(1.0 / args.keys_per_second.max(1) as f64);
    let start_at = tokio::time::Instant::now() + Duration::from_secs(3);
    let head_before: i64 = sqlx::query_scalar("SELECT last_position FROM event_head")
        .fetch_one(&pool)
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for doc in &docs {
        for e in 0..args.editors {
            let process = e % 2;
            let url = format!(
                "{}/collab/{doc}?token={token}",
                servers[process].base.replace("http", "ws")
            );
            tasks.spawn(editor(
                url,
                process,
                processes.clone(),
                sent.clone(),
                keys,
                every,
                // Editors start spread over one keystroke interval.
                start_at + every.mul_f64(e as f64 / args.editors as f64),
                Duration::from_secs(3),
            ));
        }
    }
    let started = Instant::now();
    let mut rss_peak = [0.0f64; 2];
    let mut all = Latencies::default();
    let mut typed = 0u64;
    let mut failed = 0;
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sampler.tick() => {
                for (i, s) in servers.iter().enumerate() {
                    rss_peak[i] = rss_peak[i].max(s.rss_mib());
                }
            }
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(Ok((lat, n)))) => {
                    all.same.extend(lat.same);
                    all.cross.extend(lat.cross);
                    all.missing += lat.missing;
                    typed += n;
                }
                Some(_) => failed += 1,
            }
        }
    }
    let wall = started.elapsed();
    // Let the last flushes land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (events, merged): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum((data->>'merged')::bigint)::bigint FROM events \
         WHERE event_type = 'DocumentUpdated' AND global_position > $1",
    )
    .bind(head_before)
    .fetch_one(&pool)
    .await?;
    let typing = args.typing_seconds as f64;
    let mut both: Vec<u32> = all.same.iter().chain(all.cross.iter()).copied().collect();
    both.sort_unstable();
    all.same.sort_unstable();
    all.cross.sort_unstable();
    let show = |name: &str, v: &[u32]| {
        println!(
            "collab delivery {name}: {} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(0) as f64 / 1000.0
        );
    };
    println!(
        "collab load: {} documents x {} editors over 2 processes, {} keys/s each for {} s \
         ({typed} keystrokes typed, {failed} editors failed, {:.1} s wall)",
        args.documents,
        args.editors,
        args.keys_per_second,
        args.typing_seconds,
        wall.as_secs_f64()
    );
    show("all", &both);
    show("same process", &all.same);
    show("across processes", &all.cross);
    println!(
        "collab deliveries missing a send time: {} (should be 0)",
        all.missing
    );
    println!(
        "collab events: {events} DocumentUpdated in ~{typing:.0} s = {:.1} events/s for {:.1} \
         keystrokes/s; {} client updates merged: coalescing factor {:.1}",
        events as f64 / typing,
        typed as f64 / typing,
        merged.unwrap_or(0),
        merged.unwrap_or(0) as f64 / events.max(1) as f64
    );
    for (i, s) in servers.iter().enumerate() {
        println!(
            "collab RSS process {}: {:.0} MiB idle (after set-up), {:.0} MiB peak under load",
            i + 1,
            rss_idle[i],
            rss_peak[i].max(s.rss_mib())
        );
    }
    drop(servers);
    load_time(&pool, args.load_updates).await?;
    pool.close().await;
    Ok(())
}

/// Writes a document of `n` one-keystroke updates to the log and loads it: from the log
/// alone, then from a snapshot of its last version.
async fn load_time(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<()> {
    let store = PgEventStore::start(pool.clone(), Default::default()).await?;
    let id = uuid::Uuid::new_v4();
    let stream = content::stream(id);
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("content");
    let written = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        let update = {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, if i % 60 == 59 { "\n" } else { "x" });
            txn.encode_update_v1()
        };
        batch.push(NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: "DocumentUpdated".into(),
            schema_version: 1,
            data: json!({
                "update": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, update),
                "authors": [],
                "merged": 1,
            }),
            metadata: json!({}),
        });
        if batch.len() == 1000 || i + 1 == n {
            store
                .append(&stream, ExpectedVersion::Any, std::mem::take(&mut batch))
                .await?;
        }
    }
    let write_s = written.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded = content::load(store.as_ref(), pool, id, None).await?;
    let from_log = t.elapsed();
    let chars = loaded
        .doc
        .get_or_insert_text("content")
        .get_string(&loaded.doc.transact())
        .chars()
        .count();
    content::snapshot(store.as_ref(), pool, id, loaded.version).await?;
    let t = Instant::now();
    let again = content::load(store.as_ref(), pool, id, None).await?;
    let from_snapshot = t.elapsed();
    println!(
        "collab load of a document with {n} updates ({chars} characters, written in {write_s:.1} s): \
         {:.0} ms from the log alone ({} updates replayed), {:.0} ms from a snapshot ({} updates after it)",
        from_log.as_secs_f64() * 1000.0,
        loaded.tail,
        from_snapshot.as_secs_f64() * 1000.0,
        again.tail
    );
    store.shutdown().await;
    Ok(())
}
