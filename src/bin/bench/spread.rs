//! Swarm mode with `--processes N`: the throughput of long work over N server processes on
//! one database (the first one is the bench's own; N − 1 more are started here, each with
//! its own workers), and how one tenant's flood delays another tenant's single task.
//!
//! - Throughput: `--tasks` optimizations (default 300) of about one second each (the
//!   iterations are calibrated on this machine and build first), submitted by ten tenants
//!   at once; tasks per second from the first submission to the last completion, and how
//!   many each process ran (from `SwarmTaskStarted.worker`).
//! - Flood: one tenant submits 60 tasks, then another tenant one; the second one's wait from
//!   creation to start, and its whole time, against the calibrated time of one task.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use universal_backend::{config::Config, Application};

fn body(iterations: u64) -> Value {
    json!({
        "type": "quantum", "objective": "rastrigin",
        "config": { "dimensions": 10, "particles": 50, "iterations": iterations, "seed": 7 }
    })
}

async fn create(client: &reqwest::Client, base: &str, body: &Value) -> anyhow::Result<String> {
    let created: Value = client
        .post(format!("{base}/api/v1/swarm/tasks"))
        .json(body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(created["id"].as_str().unwrap_or_default().to_owned())
}

/// Waits (at most `limit`) until every task in `ids` has ended.
async fn all_ended(pool: &sqlx::PgPool, ids: &[uuid::Uuid], limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        // Counted from the read model: a task not in it yet is not ended.
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM swarm_tasks WHERE id = ANY($1) \
             AND status IN ('completed', 'failed', 'cancelled')",
        )
        .bind(ids)
        .fetch_one(pool)
        .await?;
        let open = ids.len() as i64 - ended;
        if open == 0 {
            return Ok(());
        }
        if started.elapsed() > limit {
            anyhow::bail!("{open} tasks still open after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(
    config: &Config,
    base: &str,
    pool: &sqlx::PgPool,
    processes: usize,
    tasks: usize,
    fixed_iterations: u64,
) -> anyhow::Result<()> {
    // The other processes, on the same database.
    let mut others = Vec::new();
    for _ in 1..processes.max(1) {
        let app = Application::build(config.clone()).await?;
        let handle = app.handle();
        actix_web::rt::spawn(app.run_until_stopped());
        others.push(handle);
    }
    let slots = universal_backend::tasks::Scheduler::new(
        universal_backend::tasks::admission::WorkerBudget::from_config(config),
        config.worker_slots,
        String::new(),
    )
    .slots();
    println!(
        "swarm spread: {} process(es), {slots} worker slot(s) each, {} core(s), caps: {} in all, \
         {} per organization",
        processes.max(1),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        config.max_concurrent_generations,
        config.swarm_max_concurrent_per_org,
    );

    // Calibrate: iterations for about one second of work on this machine and build, unless
    // fixed (runs to compare need the same tasks: calibration moves with the machine's load).
    let (calibrate, _) = crate::tenant(base, usize::MAX, &["quantum"], "quantum").await?;
    let iterations = if fixed_iterations > 0 {
        fixed_iterations
    } else {
        let probe_iterations = 400;
        let id = create(&calibrate, base, &body(probe_iterations)).await?;
        all_ended(pool, &[id.parse()?], Duration::from_secs(300)).await?;
        let ms: i64 = sqlx::query_scalar(
            "SELECT COALESCE((result->>'elapsed_ms')::bigint, 1) FROM swarm_tasks WHERE id = $1",
        )
        .bind(id.parse::<uuid::Uuid>()?)
        .fetch_one(pool)
        .await?;
        (probe_iterations * 1000 / ms.max(1) as u64).clamp(10, 1_000_000)
    };
    let one = {
        let id = create(&calibrate, base, &body(iterations)).await?;
        all_ended(pool, &[id.parse()?], Duration::from_secs(300)).await?;
        let ms: i64 = sqlx::query_scalar(
            "SELECT COALESCE((result->>'elapsed_ms')::bigint, 0) FROM swarm_tasks WHERE id = $1",
        )
        .bind(id.parse::<uuid::Uuid>()?)
        .fetch_one(pool)
        .await?;
        ms as f64 / 1000.0
    };
    println!("swarm spread: one task = rastrigin 10-D, 50 particles, {iterations} iterations, {one:.2} s alone");

    // Throughput: `tasks` tasks from ten tenants at once.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(
            crate::tenant(base, usize::MAX, &["quantum"], "quantum")
                .await?
                .0,
        );
    }
    let started = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..tasks {
        let client = clients[i % clients.len()].clone();
        let (base, body) = (base.to_owned(), body(iterations));
        creates.spawn(async move { create(&client, &base, &body).await });
    }
    let mut ids = Vec::new();
    while let Some(id) = creates.join_next().await {
        ids.push(id??.parse::<uuid::Uuid>()?);
    }
    all_ended(pool, &ids, Duration::from_secs(3600)).await?;
    let wall = started.elapsed().as_secs_f64();
    let per_worker: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT worker, count(*) FROM swarm_tasks WHERE id = ANY($1) GROUP BY worker ORDER BY 1",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM swarm_tasks WHERE id = ANY($1) AND status = 'completed'",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    // How busy the slots were, and how long a slot stayed idle between two tasks.
    let (busy, gap_ms, gap_max_ms): (f64, Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH t AS (SELECT worker, started_at, finished_at, \
           EXTRACT(EPOCH FROM started_at - lag(finished_at) OVER \
             (PARTITION BY worker ORDER BY started_at))::float8 * 1000 AS gap \
           FROM swarm_tasks WHERE id = ANY($1)) \
         SELECT COALESCE(sum(EXTRACT(EPOCH FROM finished_at - started_at)), 0)::float8, \
                avg(gap), max(gap) FROM t",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    println!(
        "swarm spread: slots busy {:.0}% of the time ({busy:.1} task-seconds over {} slot(s)); \
         {}",
        100.0 * busy / (wall * (slots * processes.max(1)) as f64),
        slots * processes.max(1),
        match (slots, gap_ms, gap_max_ms) {
            (1, Some(mean), Some(max)) => format!(
                "a slot's next task started {mean:.0} ms (mean), {max:.0} ms (max) after its \
                 previous one finished"
            ),
            _ => String::new(),
        }
    );
    println!(
        "swarm spread: {tasks} tasks ({completed} completed) in {wall:.1} s = {:.2} tasks/s over {} process(es); \
         per process: {}",
        tasks as f64 / wall,
        processes.max(1),
        per_worker
            .iter()
            .map(|(w, n)| format!("{}={n}", w.as_deref().unwrap_or("-")))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Flood: 60 tasks of one tenant, then one of another.
    let (flood, _) = crate::tenant(base, usize::MAX, &["quantum"], "quantum").await?;
    let (victim, _) = crate::tenant(base, usize::MAX, &["quantum"], "quantum").await?;
    let mut flood_ids = Vec::new();
    for _ in 0..60 {
        flood_ids.push(
            create(&flood, base, &body(iterations))
                .await?
                .parse::<uuid::Uuid>()?,
        );
    }
    let submitted = Instant::now();
    let id: uuid::Uuid = create(&victim, base, &body(iterations)).await?.parse()?;
    all_ended(pool, &[id], Duration::from_secs(3600)).await?;
    let whole = submitted.elapsed().as_secs_f64();
    let (wait_ms, ran_ms): (f64, f64) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000, \
                COALESCE((result->>'elapsed_ms')::float8, 0) FROM swarm_tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    let mut by_status: HashMap<String, i64> = HashMap::new();
    for (s, n) in sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM swarm_tasks WHERE id = ANY($1) GROUP BY status",
    )
    .bind(&flood_ids)
    .fetch_all(pool)
    .await?
    {
        by_status.insert(s, n);
    }
    println!(
        "swarm spread: flood of 60 tasks from one tenant; another tenant's single task waited \
         {:.2} s from creation to start, ran {:.2} s, {whole:.2} s from submission to completion \
         seen ({:.1} times one task alone); the flood meanwhile: {by_status:?}",
        wait_ms / 1000.0,
        ran_ms / 1000.0,
        whole / one.max(1e-3),
    );
    // The flood is not part of any figure: cancel what is left of it.
    for id in &flood_ids {
        let _ = flood
            .post(format!("{base}/api/v1/swarm/tasks/{id}/cancel"))
            .json(&json!({}))
            .send()
            .await;
    }
    for handle in others {
        handle.stop(false).await;
    }
    Ok(())
}
