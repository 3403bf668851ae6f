//! The projection runner: exactly-once effects when a runner dies mid-batch, rebuilds that
//! equal the live read model, and failover between runners of several processes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use universal_backend::projections::citypulse::{Directory, Energy};
use universal_backend::projections::runner::{checkpoint, rebuild};
use universal_backend::projections::{
    Progress, Projection, ProjectionRunner, RunnerConfig, WaitError,
};
use universal_backend::store::{
    EventStore, ExpectedVersion, NewEvent, PgEventStore, PgStoreConfig, RawEvent,
};

/// Wraps a projection; after `after` batches it applies one more and then hangs inside the
/// transaction, so the runner can be killed mid-batch.
struct StallAfter {
    inner: Arc<dyn Projection>,
    after: usize,
    batches: AtomicUsize,
    stalled: Arc<Notify>,
}

#[async_trait]
impl Projection for StallAfter {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn event_types(&self) -> &'static [&'static str] {
        self.inner.event_types()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        self.inner.apply(conn, events).await?;
        if self.batches.fetch_add(1, Ordering::SeqCst) == self.after {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Drives a realistic history through the HTTP API: buildings, sensors, readings, alerts.
async fn make_history(app: &common::TestApp, buildings: usize) {
    join_all((0..buildings).map(|b| async move {
        let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
        let res = app
            .client
            .put(app.url(&format!("/api/v1/citypulse/buildings/{id}/thresholds")))
            .json(&json!({ "kind": "electricity", "max": 50.0 }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        for round in 0..8 {
            let readings: Vec<Value> = (0..5)
                .map(|i| {
                    json!({
                        "sensor_id": sensor,
                        "value": ((b * 7 + round * 5 + i) % 80) as f64,
                        "timestamp": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + round % 3, (b + i) % 24, i * 7),
                    })
                })
                .collect();
            let res = app
                .post(
                    &format!("/api/v1/citypulse/buildings/{id}/readings"),
                    json!({ "readings": readings }),
                )
                .await;
            assert_eq!(res.status(), 201);
        }
    }))
    .await;
}

async fn dump(pool: &PgPool, tables: &[&str]) -> String {
    let mut out = String::new();
    for t in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {t} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push_str(&format!("== {t}\n{}\n", rows.unwrap_or_default()));
    }
    out
}

async fn wait_caught_up(pool: &PgPool, store: &dyn EventStore, name: &str) {
    for _ in 0..600 {
        let head = store.head_position().await.unwrap();
        if checkpoint(pool, name).await.unwrap() >= head {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} did not catch up");
}

fn fast() -> RunnerConfig {
    RunnerConfig {
        batch_size: 16,
        standby_poll: Duration::from_millis(100),
        live_linger: Duration::ZERO,
        spread: None,
    }
}

#[actix_web::test]
async fn a_runner_killed_mid_batch_leaves_no_trace_and_the_result_equals_a_rebuild() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    make_history(&app, 12).await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();

    let projections: [Arc<dyn Projection>; 2] = [Arc::new(Directory), Arc::new(Energy)];
    for projection in projections {
        let name = projection.name();
        let stalled = Arc::new(Notify::new());
        let stalling = Arc::new(StallAfter {
            inner: projection.clone(),
            after: 3,
            batches: AtomicUsize::new(0),
            stalled: stalled.clone(),
        });
        let runner = ProjectionRunner::new(app.pool.clone(), store.clone(), stalling, fast());
        let task = tokio::spawn(runner.run());
        tokio::time::timeout(Duration::from_secs(30), stalled.notified())
            .await
            .expect("the runner reaches the stall");
        let before_kill = checkpoint(&app.pool, name).await.unwrap();
        task.abort();
        let _ = task.await;
        assert!(before_kill < head, "{name}: killed before the end");

        // A fresh runner takes over from the last committed checkpoint.
        let runner =
            ProjectionRunner::new(app.pool.clone(), store.clone(), projection.clone(), fast());
        let task = tokio::spawn(runner.run());
        wait_caught_up(&app.pool, store.as_ref(), name).await;
        task.abort();
        let _ = task.await;
        let live = dump(&app.pool, projection.tables()).await;

        let report = rebuild(&app.pool, store.as_ref(), projection.as_ref(), 100)
            .await
            .unwrap();
        assert_eq!(report.position, head);
        let rebuilt = dump(&app.pool, projection.tables()).await;
        assert!(
            live.lines().count() > projection.tables().len() * 2,
            "{name} is not empty"
        );
        assert_eq!(
            live, rebuilt,
            "{name}: the live read model equals a fresh rebuild"
        );
    }

    // The sums in the energy read model match the events exactly once.
    let total: f64 = sqlx::query_scalar("SELECT sum(total) FROM energy_daily")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let expected: f64 = sqlx::query_scalar(
        "SELECT sum((r->>'value')::float8) FROM events, jsonb_array_elements(data->'readings') r \
         WHERE event_type = 'ReadingsRecorded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(total, expected);
}

#[actix_web::test]
async fn a_standby_runner_takes_over_when_the_leader_dies() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    make_history(&app, 3).await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let leader = tokio::spawn(
        ProjectionRunner::new(app.pool.clone(), store.clone(), Arc::new(Energy), fast()).run(),
    );
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    let standby_runner =
        ProjectionRunner::new(app.pool.clone(), store.clone(), Arc::new(Energy), fast());
    let standby_progress = standby_runner.progress();
    let standby = tokio::spawn(standby_runner.run());

    make_history(&app, 1).await;
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    assert_eq!(
        *standby_progress.borrow(),
        0,
        "the standby did not project while led"
    );

    leader.abort();
    let _ = leader.await;
    make_history(&app, 2).await;
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    // The head is read before the progress is borrowed: a `watch::Ref` held across an await
    // blocks the runner's next send, on this very thread.
    let head = store.head_position().await.unwrap();
    assert_eq!(*standby_progress.borrow(), head, "the standby took over");
    standby.abort();
}

#[actix_web::test]
async fn a_rebuild_swaps_tables_while_the_live_runner_keeps_going() {
    let app = common::spawn_app().await;
    make_history(&app, 4).await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let writer = make_history(&app, 4);
    let rebuilding = rebuild(&app.pool, store.as_ref(), &Energy, 10);
    let (_, report) = tokio::join!(writer, rebuilding);
    report.unwrap();
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    let live = dump(&app.pool, Energy.tables()).await;
    rebuild(&app.pool, store.as_ref(), &Energy, 1000)
        .await
        .unwrap();
    assert_eq!(live, dump(&app.pool, Energy.tables()).await);
}

/// An event of a type no CityPulse projection reads.
fn note() -> Vec<NewEvent> {
    vec![NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "BenchNoted".into(),
        schema_version: 1,
        data: json!({ "n": 1 }),
        metadata: json!({}),
    }]
}

#[actix_web::test]
async fn under_a_stream_of_events_it_does_not_read_a_runner_keeps_up_and_stores_its_checkpoint() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    // Appends 5 ms apart wake the runner again and again (under load, with this linger);
    // it moves past stretches without its events without a transaction.
    let config = RunnerConfig {
        batch_size: 100,
        standby_poll: Duration::from_millis(300),
        live_linger: Duration::from_millis(20),
        spread: None,
    };
    let runner = ProjectionRunner::new(app.pool.clone(), store.clone(), Arc::new(Energy), config);
    let progress = runner.progress();
    let task = tokio::spawn(runner.run());
    make_history(&app, 1).await;
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    let energy_before = dump(&app.pool, &["energy_daily"]).await;

    for i in 0..60 {
        store
            .append(&format!("note-{i}"), ExpectedVersion::Any, note())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let head = store.head_position().await.unwrap();
    let mut local = progress.clone();
    tokio::time::timeout(Duration::from_secs(10), local.wait_for(|p| *p >= head))
        .await
        .expect("the runner's progress reached the head")
        .unwrap();
    // The stored checkpoint follows (at most a poll interval later), and nothing changed.
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    assert_eq!(dump(&app.pool, &["energy_daily"]).await, energy_before);

    // An event it reads after the stream is applied.
    make_history(&app, 1).await;
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    assert_ne!(dump(&app.pool, &["energy_daily"]).await, energy_before);
    task.abort();
}

#[actix_web::test]
async fn a_wait_passes_a_stored_checkpoint_behind_when_nothing_the_projection_reads_lies_between() {
    let (pool, _) = common::fresh_pool().await;
    let store = PgEventStore::start(pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    // No runner in this process: waits go by the stored checkpoint, which is at 0.
    let progress = Progress::default();
    let noted = store
        .append("note-1", ExpectedVersion::Any, note())
        .await
        .unwrap();
    progress
        .wait_for(
            &pool,
            "citypulse_energy",
            noted.position,
            Duration::from_secs(5),
        )
        .await
        .expect("nothing the projection reads lies before the position");

    // An event the projection reads: now the wait needs the checkpoint to move.
    let read = store
        .append(
            "building-1",
            ExpectedVersion::Any,
            vec![NewEvent {
                event_type: Energy.event_types()[0].into(),
                ..note().remove(0)
            }],
        )
        .await
        .unwrap();
    let waited = progress
        .wait_for(
            &pool,
            "citypulse_energy",
            read.position,
            Duration::from_millis(300),
        )
        .await;
    assert!(
        matches!(waited, Err(WaitError::Timeout { checkpoint: 0 })),
        "{waited:?}"
    );
    // And a position past the committed head is never taken as reached.
    let beyond = progress
        .wait_for(
            &pool,
            "flowmind",
            read.position + 10,
            Duration::from_millis(300),
        )
        .await;
    assert!(
        matches!(beyond, Err(WaitError::Timeout { .. })),
        "{beyond:?}"
    );
}

/// Reads `Probed` events and remembers the positions it was given, in order.
#[derive(Default)]
struct Probe {
    seen: std::sync::Mutex<Vec<i64>>,
}

#[async_trait]
impl Projection for Probe {
    fn name(&self) -> &'static str {
        "window_probe"
    }
    fn event_types(&self) -> &'static [&'static str] {
        &["Probed"]
    }
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
    async fn apply(&self, _: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        let mut seen = self.seen.lock().unwrap();
        for e in events {
            let data: Value = serde_json::from_str(&e.data)?;
            anyhow::ensure!(data["n"] == json!(e.position), "payload of {}", e.position);
            seen.push(e.position);
        }
        Ok(())
    }
}

#[actix_web::test]
async fn sparse_and_dense_stretches_of_the_log_are_read_once_each_in_order_in_small_pages() {
    let (pool, _) = common::fresh_pool().await;
    let store = PgEventStore::start(pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    // 400 events: a dense run, a long stretch where one in 37 is read, a dense run again,
    // then a tail without any; pages are 4 events, so windows of positions grow and shrink.
    let mut expected = Vec::new();
    for position in 1..=400i64 {
        let read = position <= 20 || (position <= 300 && position % 37 == 0) || {
            (300..360).contains(&position)
        };
        let event_type = if read { "Probed" } else { "Other" };
        store
            .append(
                &format!("probe-{position}"),
                ExpectedVersion::Any,
                vec![NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: event_type.into(),
                    schema_version: 1,
                    data: json!({ "n": position }),
                    metadata: json!({}),
                }],
            )
            .await
            .unwrap();
        if read {
            expected.push(position);
        }
    }
    let probe = Arc::new(Probe::default());
    let report = rebuild(&pool, store.as_ref(), probe.as_ref(), 4)
        .await
        .unwrap();
    assert_eq!(report.position, 400);
    assert_eq!(report.events, expected.len() as u64);
    assert_eq!(*probe.seen.lock().unwrap(), expected);

    // The live runner reads the same, from its own checkpoint.
    sqlx::query("UPDATE checkpoints SET position = 0 WHERE projection = 'window_probe'")
        .execute(&pool)
        .await
        .unwrap();
    let live = Arc::new(Probe::default());
    let config = RunnerConfig {
        batch_size: 4,
        ..fast()
    };
    let task = tokio::spawn(
        ProjectionRunner::new(pool.clone(), store.clone(), live.clone(), config).run(),
    );
    wait_caught_up(&pool, store.as_ref(), "window_probe").await;
    task.abort();
    assert_eq!(*live.seen.lock().unwrap(), expected);
}
