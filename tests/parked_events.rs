//! Parked events: an event a projection cannot apply is parked and the projection goes on;
//! operators list, skip and retry parked events; a rebuild parks the same way and completes.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use universal_backend::http::admin::set_operator;
use universal_backend::projections::citypulse::{Directory, Energy};
use universal_backend::projections::parked::{self, ResolveError};
use universal_backend::projections::runner::{checkpoint, rebuild};
use universal_backend::projections::{Projection, ProjectionRunner, RunnerConfig};
use universal_backend::store::{EventStore, PgEventStore, PgStoreConfig, RawEvent};
use uuid::Uuid;

/// The energy projection, with failures the test controls: events at `poisoned` positions
/// fail as a bad event would; those at `flaky` positions fail once as a lost connection;
/// those at `panicking` positions panic.
#[derive(Default)]
struct Controlled {
    poisoned: Mutex<HashSet<i64>>,
    flaky: Mutex<HashSet<i64>>,
    panicking: Mutex<HashSet<i64>>,
}

#[async_trait]
impl Projection for Controlled {
    fn name(&self) -> &'static str {
        Energy.name()
    }
    fn event_types(&self) -> &'static [&'static str] {
        Energy.event_types()
    }
    fn tables(&self) -> &'static [&'static str] {
        Energy.tables()
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            if self.poisoned.lock().unwrap().contains(&e.position) {
                anyhow::bail!("the test poisoned position {}", e.position);
            }
            if self.panicking.lock().unwrap().contains(&e.position) {
                panic!("the test panics at position {}", e.position);
            }
            if self.flaky.lock().unwrap().remove(&e.position) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                )
                .into());
            }
        }
        Energy.apply(conn, events).await
    }
}

fn fast() -> RunnerConfig {
    RunnerConfig {
        batch_size: 16,
        standby_poll: Duration::from_millis(100),
        live_linger: Duration::ZERO,
        spread: None,
    }
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

/// Writes an event straight into the log, as the store does (under the `event_head` lock),
/// bypassing every validation: `data` is JSON text, cast to jsonb by PostgreSQL.
async fn insert_raw(pool: &PgPool, stream: &str, event_type: &str, data: &str) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let position: i64 = sqlx::query_scalar(
        "UPDATE event_head SET last_position = last_position + 1 WHERE id = 1 \
         RETURNING last_position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
         event_type, schema_version, data) \
         SELECT $1, $2, split_part($2, '-', 1), coalesce(max(version), 0) + 1, $3, $4, 1, \
         $5::jsonb FROM events WHERE stream_id = $2",
    )
    .bind(position)
    .bind(stream)
    .bind(Uuid::new_v4())
    .bind(event_type)
    .bind(data)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    position
}

/// A `ReadingsRecorded` payload with one reading; `value` is JSON text, so it may be a
/// number no `f64` holds.
fn reading(sensor: Uuid, value: &str, at: &str) -> String {
    format!(
        r#"{{"readings":[{{"sensor_id":"{sensor}","kind":"electricity","unit":"kWh","value":{value},"measured_at":"{at}"}}]}}"#
    )
}

/// Posts one reading; returns its position.
async fn post_reading(app: &common::TestApp, building: &str, sensor: &str, value: f64) -> i64 {
    let res = app
        .post(
            &format!("/api/v1/citypulse/buildings/{building}/readings"),
            json!({ "readings": [{ "sensor_id": sensor, "value": value,
                "timestamp": "2026-11-02T10:00:00Z" }] }),
        )
        .await;
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["position"]
        .as_i64()
        .unwrap()
}

async fn energy_total(pool: &PgPool, building: &str) -> f64 {
    sqlx::query_scalar::<_, Option<f64>>(
        "SELECT sum(total) FROM energy_daily WHERE building_id = $1::uuid",
    )
    .bind(building)
    .fetch_one(pool)
    .await
    .unwrap()
    .unwrap_or(0.0)
}

async fn parked_rows(pool: &PgPool) -> Vec<(String, i64, String)> {
    sqlx::query_as("SELECT projection, position, state FROM parked_events ORDER BY 2, 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn parked_of(health: &Value, projection: &str) -> i64 {
    health["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == projection)
        .unwrap()["parked_events"]
        .as_i64()
        .unwrap()
}

#[actix_web::test]
async fn an_event_that_cannot_be_applied_is_parked_and_the_projections_go_on() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    for v in [1.0, 2.0, 3.0] {
        post_reading(&app, &building, &sensor, v).await;
    }
    // A reading the energy projection cannot put in an hour (year 1500), and one whose
    // payload cannot even be decoded (a number beyond f64), between good events.
    let bad_stream = format!("building-{}", Uuid::new_v4());
    let year_1500 = insert_raw(
        &app.pool,
        &bad_stream,
        "ReadingsRecorded",
        &reading(Uuid::new_v4(), "7.0", "1500-01-01T00:00:00Z"),
    )
    .await;
    let undecodable = insert_raw(
        &app.pool,
        &bad_stream,
        "ReadingsRecorded",
        &reading(Uuid::new_v4(), "1e400", "2026-11-02T10:00:00Z"),
    )
    .await;
    for v in [4.0, 5.0, 6.0] {
        post_reading(&app, &building, &sensor, v).await;
    }

    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let runners: Vec<_> = [Arc::new(Energy) as Arc<dyn Projection>, Arc::new(Directory)]
        .into_iter()
        .map(|p| {
            tokio::spawn(ProjectionRunner::new(app.pool.clone(), store.clone(), p, fast()).run())
        })
        .collect();
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_directory").await;

    // Both projections passed the bad events, parked them, and applied everything after.
    assert_eq!(
        parked_rows(&app.pool).await,
        vec![
            ("citypulse_energy".into(), year_1500, "parked".into()),
            ("citypulse_directory".into(), undecodable, "parked".into()),
            ("citypulse_energy".into(), undecodable, "parked".into()),
        ]
    );
    assert_eq!(energy_total(&app.pool, &building).await, 21.0);
    let head = app.head().await;
    let (status, energy) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{building}/energy?bucket=day&min_position={head}"
        ))
        .await;
    assert_eq!(status, 200, "{energy}");
    let (status, _) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{building}?min_position={head}"
        ))
        .await;
    assert_eq!(status, 200);

    // /health warns, and stays 200.
    let res = app.anonymous.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let health: Value = res.json().await.unwrap();
    assert_eq!(parked_of(&health, "citypulse_energy"), 2);
    assert_eq!(parked_of(&health, "citypulse_directory"), 1);
    assert_eq!(parked_of(&health, "identity"), 0);
    assert_eq!(health["warnings"].as_array().unwrap().len(), 2, "{health}");

    // Only an operator may see parked events.
    let admin = |path: &str| app.url(&format!("/api/v1/admin/parked-events{path}"));
    let res = app.client.get(admin("")).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let res = app.anonymous.get(admin("")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    set_operator(&app.pool, store.clone(), &app.tenant.email, true)
        .await
        .unwrap();
    let mut listed = None;
    for _ in 0..200 {
        let res = app.client.get(admin("")).send().await.unwrap();
        if res.status() == 200 {
            listed = Some(res.json::<Value>().await.unwrap());
            break;
        }
        assert_eq!(res.status(), 403);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = listed.expect("the grant reaches the users read model");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{listed}");
    assert_eq!(items[0]["projection"], "citypulse_energy");
    assert_eq!(items[0]["position"], year_1500);
    assert_eq!(items[0]["stream_id"], bad_stream.as_str());
    assert_eq!(items[0]["event_type"], "ReadingsRecorded");
    assert_eq!(items[0]["state"], "parked");
    assert!(!items[0]["error"].as_str().unwrap().is_empty());
    assert!(
        items[2]["error"]
            .as_str()
            .unwrap()
            .contains("number out of range"),
        "{listed}"
    );
    assert!(listed["next_cursor"].is_null());

    // Filtered by projection, one page at a time.
    let res = app
        .client
        .get(admin("?projection=citypulse_energy&limit=1"))
        .send()
        .await
        .unwrap();
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["position"], year_1500);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let res = app
        .client
        .get(admin(&format!(
            "?projection=citypulse_energy&limit=1&cursor={cursor}"
        )))
        .send()
        .await
        .unwrap();
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["position"], undecodable);
    assert!(page["next_cursor"].is_null());
    let res = app
        .client
        .get(admin("?projection=nothing_like_it"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let res = app
        .client
        .get(admin(&format!("/citypulse_directory/{undecodable}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let one: Value = res.json().await.unwrap();
    assert_eq!(
        (one["position"].as_i64(), one["attempts"].as_i64()),
        (Some(undecodable), Some(1))
    );

    // Skip resolves the row and keeps it.
    let res = app
        .client
        .post(admin(&format!("/citypulse_energy/{year_1500}/skip")))
        .json(&json!({ "reason": "a meter clock reset" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let skipped: Value = res.json().await.unwrap();
    assert_eq!(skipped["state"], "skipped");
    assert_eq!(skipped["note"], "a meter clock reset");
    assert_eq!(skipped["resolved_by"], app.tenant.user_id.as_str());
    let res = app
        .client
        .post(admin(&format!("/citypulse_energy/{year_1500}/skip")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "not_parked"
    );

    // A retry that fails again answers the error and keeps the row parked.
    let res = app
        .client
        .post(admin(&format!("/citypulse_energy/{undecodable}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let failed: Value = res.json().await.unwrap();
    assert_eq!(failed["error"]["code"], "retry_failed");
    assert_eq!(failed["error"]["details"]["parked_event"]["attempts"], 2);
    assert_eq!(
        failed["error"]["details"]["parked_event"]["state"],
        "parked"
    );
    let res = app
        .client
        .post(admin(&format!("/citypulse_energy/{}/retry", head + 1000)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let res = app.client.get(admin("?state=all")).send().await.unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let res = app
        .client
        .get(admin("?state=skipped"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let health: Value = app
        .anonymous
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(parked_of(&health, "citypulse_energy"), 1);
    let metrics = app
        .anonymous
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ub_projection_parked_events{projection=\"citypulse_energy\"} 1"),
        "{metrics}"
    );

    // A revoked operator is refused at once, whatever the token says.
    set_operator(&app.pool, store.clone(), &app.tenant.email, false)
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..200 {
        if app.client.get(admin("")).send().await.unwrap().status() == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the revocation reaches the users read model");
    for r in runners {
        r.abort();
    }
}

#[actix_web::test]
async fn a_parked_event_is_applied_by_a_retry_once_its_cause_is_fixed() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut positions = Vec::new();
    for v in 1..=6 {
        positions.push(post_reading(&app, &building, &sensor, f64::from(v)).await);
    }
    let poisoned = positions[2];
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let projection = Arc::new(Controlled::default());
    projection.poisoned.lock().unwrap().insert(poisoned);
    let runner = tokio::spawn(
        ProjectionRunner::new(app.pool.clone(), store.clone(), projection.clone(), fast()).run(),
    );
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    assert_eq!(
        parked_rows(&app.pool).await,
        vec![("citypulse_energy".into(), poisoned, "parked".into())]
    );
    assert_eq!(energy_total(&app.pool, &building).await, 21.0 - 3.0);

    // Still broken: the retry fails, changes nothing, and counts the attempt.
    let err = parked::retry(
        &app.pool,
        store.as_ref(),
        projection.as_ref(),
        poisoned,
        None,
    )
    .await
    .unwrap_err();
    let ResolveError::StillFailing { error, row } = err else {
        panic!("expected the retry to fail again, got {err:?}");
    };
    assert!(error.contains("poisoned"), "{error}");
    assert_eq!((row.state.as_str(), row.attempts), ("parked", 2));
    assert_eq!(energy_total(&app.pool, &building).await, 21.0 - 3.0);

    // Fixed: the retry applies it to the live read model and resolves the row.
    projection.poisoned.lock().unwrap().clear();
    let row = parked::retry(
        &app.pool,
        store.as_ref(),
        projection.as_ref(),
        poisoned,
        None,
    )
    .await
    .unwrap();
    assert_eq!(row.state, "applied");
    assert!(row.resolved_at.is_some());
    assert_eq!(energy_total(&app.pool, &building).await, 21.0);
    assert!(matches!(
        parked::retry(
            &app.pool,
            store.as_ref(),
            projection.as_ref(),
            poisoned,
            None
        )
        .await,
        Err(ResolveError::NotParked(_))
    ));
    assert!(parked::open_counts(&app.pool).await.unwrap().is_empty());

    // The live read model is the one a rebuild makes.
    runner.abort();
    let _ = runner.await;
    let live = dump(&app.pool, Energy.tables()).await;
    let report = rebuild(&app.pool, store.as_ref(), &Energy, 100)
        .await
        .unwrap();
    assert_eq!(report.parked, 0);
    assert_eq!(live, dump(&app.pool, Energy.tables()).await);
    assert_eq!(
        parked_rows(&app.pool).await,
        vec![("citypulse_energy".into(), poisoned, "applied".into())]
    );
}

#[actix_web::test]
async fn a_transient_failure_is_tried_again_and_parks_nothing() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut positions = Vec::new();
    for v in 1..=6 {
        positions.push(post_reading(&app, &building, &sensor, f64::from(v)).await);
    }
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let projection = Arc::new(Controlled::default());
    projection.flaky.lock().unwrap().insert(positions[3]);
    let runner = tokio::spawn(
        ProjectionRunner::new(app.pool.clone(), store.clone(), projection.clone(), fast()).run(),
    );
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    runner.abort();
    assert!(
        projection.flaky.lock().unwrap().is_empty(),
        "the failure was hit"
    );
    assert!(parked_rows(&app.pool).await.is_empty());
    assert_eq!(energy_total(&app.pool, &building).await, 21.0);
}

#[actix_web::test]
async fn a_projection_that_panics_on_an_event_parks_it_and_goes_on() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut positions = Vec::new();
    for v in 1..=6 {
        positions.push(post_reading(&app, &building, &sensor, f64::from(v)).await);
    }
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let projection = Arc::new(Controlled::default());
    projection.panicking.lock().unwrap().insert(positions[1]);
    let runner = tokio::spawn(
        ProjectionRunner::new(app.pool.clone(), store.clone(), projection.clone(), fast()).run(),
    );
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    runner.abort();
    assert_eq!(
        parked_rows(&app.pool).await,
        vec![("citypulse_energy".into(), positions[1], "parked".into())]
    );
    let row = parked::get(&app.pool, "citypulse_energy", positions[1])
        .await
        .unwrap()
        .unwrap();
    assert!(row.error.contains("panicked"), "{}", row.error);
    assert_eq!(energy_total(&app.pool, &building).await, 21.0 - 2.0);
}

/// A runner that is live takes its quick step (no savepoint, the checkpoint moved by a
/// conditional update): a batch that fails there is taken again carefully, so the bad
/// events are parked exactly as before, a transient failure parks nothing, and every other
/// event is applied once.
#[actix_web::test]
async fn a_live_runner_parks_a_failing_event_and_applies_the_rest_once() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let projection = Arc::new(Controlled::default());
    let runner = tokio::spawn(
        ProjectionRunner::new(app.pool.clone(), store.clone(), projection.clone(), fast()).run(),
    );
    post_reading(&app, &building, &sensor, 100.0).await;
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;

    // The next readings take the next positions: nothing else writes to this log now.
    let head = app.head().await;
    projection.panicking.lock().unwrap().insert(head + 2);
    projection.poisoned.lock().unwrap().insert(head + 4);
    projection.flaky.lock().unwrap().insert(head + 5);
    let mut positions = Vec::new();
    for v in 1..=6 {
        positions.push(post_reading(&app, &building, &sensor, f64::from(v)).await);
    }
    assert_eq!(positions, (head + 1..=head + 6).collect::<Vec<_>>());
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    runner.abort();

    assert!(
        projection.flaky.lock().unwrap().is_empty(),
        "the failure was hit"
    );
    assert_eq!(
        parked_rows(&app.pool).await,
        vec![
            ("citypulse_energy".into(), head + 2, "parked".into()),
            ("citypulse_energy".into(), head + 4, "parked".into()),
        ]
    );
    // 100 + 1 + 3 + 5 + 6: the parked readings 2 and 4 are left out, the others counted once.
    assert_eq!(energy_total(&app.pool, &building).await, 115.0);
}

#[actix_web::test]
async fn a_rebuild_parks_what_it_cannot_apply_completes_and_matches_the_live_model() {
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let (building, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut good = Vec::new();
    for v in [1.0, 2.0, 3.0] {
        good.push(post_reading(&app, &building, &sensor, v).await);
    }
    let bad_stream = format!("building-{}", Uuid::new_v4());
    let bad_sensor = Uuid::new_v4();
    let year_1500 = insert_raw(
        &app.pool,
        &bad_stream,
        "ReadingsRecorded",
        &reading(bad_sensor, "7.0", "1500-01-01T00:00:00Z"),
    )
    .await;
    let undecodable = insert_raw(
        &app.pool,
        &bad_stream,
        "ReadingsRecorded",
        &reading(bad_sensor, "1e400", "2026-11-02T10:00:00Z"),
    )
    .await;
    // Two readings that each fit but whose sum overflows: folded in one batch or added one
    // event at a time, the second one is parked either way.
    let first_half = insert_raw(
        &app.pool,
        &bad_stream,
        "ReadingsRecorded",
        &reading(bad_sensor, "1e308", "2026-11-03T10:00:00Z"),
    )
    .await;
    let overflowing = insert_raw(
        &app.pool,
        &bad_stream,
        "ReadingsRecorded",
        &reading(bad_sensor, "1e308", "2026-11-03T10:30:00Z"),
    )
    .await;
    for v in [4.0, 5.0, 6.0] {
        good.push(post_reading(&app, &building, &sensor, v).await);
    }
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let runner = tokio::spawn(
        ProjectionRunner::new(app.pool.clone(), store.clone(), Arc::new(Energy), fast()).run(),
    );
    wait_caught_up(&app.pool, store.as_ref(), "citypulse_energy").await;
    runner.abort();
    let _ = runner.await;
    let expected = vec![
        ("citypulse_energy".into(), year_1500, "parked".into()),
        ("citypulse_energy".into(), undecodable, "parked".into()),
        ("citypulse_energy".into(), overflowing, "parked".into()),
    ];
    assert_eq!(parked_rows(&app.pool).await, expected);
    assert_ne!(first_half, overflowing);
    let live = dump(&app.pool, Energy.tables()).await;
    assert_eq!(energy_total(&app.pool, &building).await, 21.0);

    // An operator skipped one; a good event carries a row from an older failure since fixed.
    parked::skip(
        &app.pool,
        "citypulse_energy",
        year_1500,
        None,
        Some("bad clock"),
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO parked_events (projection, position, event_id, stream_id, event_type, \
         error) SELECT 'citypulse_energy', global_position, event_id, stream_id, event_type, \
         'an old failure' FROM events WHERE global_position = $1",
    )
    .bind(good[1])
    .execute(&app.pool)
    .await
    .unwrap();

    // Whatever the batch size, the rebuild completes, parks the same events and builds the
    // same read model as the live runner did.
    for batch_size in [1000, 1, 3] {
        let report = rebuild(&app.pool, store.as_ref(), &Energy, batch_size)
            .await
            .unwrap();
        assert_eq!(report.position, app.head().await);
        assert_eq!(report.parked, 3, "batch size {batch_size}");
        assert_eq!(
            dump(&app.pool, Energy.tables()).await,
            live,
            "batch size {batch_size}"
        );
        assert_eq!(
            parked_rows(&app.pool).await,
            vec![
                ("citypulse_energy".into(), good[1], "applied".into()),
                ("citypulse_energy".into(), year_1500, "skipped".into()),
                ("citypulse_energy".into(), undecodable, "parked".into()),
                ("citypulse_energy".into(), overflowing, "parked".into()),
            ],
            "batch size {batch_size}"
        );
    }
    assert_eq!(
        parked::open_counts(&app.pool).await.unwrap()["citypulse_energy"],
        2
    );

    // The directory cannot read the undecodable event either; its rebuild completes.
    let report = rebuild(&app.pool, store.as_ref(), &Directory, 16)
        .await
        .unwrap();
    assert_eq!(report.parked, 1);
    assert!(parked_rows(&app.pool).await.contains(&(
        "citypulse_directory".into(),
        undecodable,
        "parked".into()
    )));
}
