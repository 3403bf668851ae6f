//! History for analysts over real HTTP against a real PostgreSQL: an entity at a version
//! or time, diffs, the NDJSON export (filters, resumption, compression, tenancy), the
//! catalogue, and the export → import round trip into a fresh database with equal
//! `/api/v1/events` and read models over a log that holds every event type.

mod common;

use std::time::Duration;

use common::{add_member, create_tenant, spawn_app, spawn_second_app, test_config, TestApp};
use serde_json::{json, Value};
use universal_backend::history::{export, import};
use universal_backend::progress::Progress;
use universal_backend::store::{
    EventStore, ExpectedVersion, NewEvent, PgEventStore, PgStoreConfig,
};
use uuid::Uuid;

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let res = client.get(url).send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A building with a sensor, a threshold and two batches of readings: versions 1 to 5.
async fn building(app: &TestApp) -> String {
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let res = app
        .client
        .put(app.url(&format!("/api/v1/citypulse/buildings/{id}/thresholds")))
        .json(&json!({ "kind": "electricity", "max": 10.0 }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    for value in [3.0, 42.0] {
        let res = app
            .post(
                &format!("/api/v1/citypulse/buildings/{id}/readings"),
                json!({ "readings": [{ "sensor_id": sensor, "value": value }] }),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    id
}

async fn become_operator(app: &TestApp) {
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let user = universal_backend::http::admin::set_operator(
        &app.pool,
        store.clone(),
        &app.tenant.email,
        true,
    )
    .await
    .unwrap();
    store.shutdown().await;
    for _ in 0..200 {
        let operator: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND 'admin' = ANY(roles))",
        )
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if operator {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the grant did not reach the users read model");
}

#[actix_web::test]
async fn an_entity_is_shown_at_any_version_or_time_to_its_tenant_only() {
    let app = spawn_app().await;
    let id = building(&app).await;
    let stream = format!("building-{id}");
    let url = |q: &str| app.url(&format!("/api/v1/streams/{stream}/state{q}"));

    let (status, first) = get(&app.client, url("?version=1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["version"], 1);
    assert_eq!(first["kind"], "building");
    assert_eq!(first["state"]["name"], "Town Library");
    assert_eq!(first["state"]["sensors"], json!([]));
    assert!(first["position"].as_i64().unwrap() > 0);
    let (_, second) = get(&app.client, url("?version=2")).await;
    assert_eq!(second["state"]["active_sensors"], 1);
    let (_, now) = get(&app.client, url("")).await;
    assert!(now["version"].as_i64().unwrap() >= 5, "{now}");
    assert_eq!(
        now["state"]["open_alerts"], 1,
        "the 42 kWh reading breached 10"
    );
    assert_eq!(now["state"]["thresholds"][0]["max_value"], 10.0);

    // By time: the last event at or before it.
    let at = second["recorded_at"].as_str().unwrap();
    let (status, by_time) = get(&app.client, url(&format!("?at={}", urlencode(at)))).await;
    assert_eq!(status, 200, "{by_time}");
    assert_eq!(by_time["version"], 2);
    let (status, _) = get(&app.client, url("?at=2000-01-01T00:00:00Z")).await;
    assert_eq!(status, 404, "nothing before the first event");

    // Another process on the same database answers the same (snapshots live in the database).
    let other = spawn_second_app(&app).await;
    let (status, there) = get(
        &app.client,
        other.url(&format!("/api/v1/streams/{stream}/state?version=2")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(there, second);

    // Bad input is a 4xx and changes nothing.
    for (q, code) in [
        ("?version=-1", 400),
        ("?version=99", 404),
        ("?version=1&at=2026-01-01T00:00:00Z", 400),
        ("?at=yesterday", 400),
        ("?colour=red", 400),
    ] {
        let (status, body) = get(&app.client, url(q)).await;
        assert_eq!(status, code, "{q}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let (status, body) = get(
        &app.client,
        app.url(&format!(
            "/api/v1/streams/building-{}/state",
            Uuid::new_v4()
        )),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // Another tenant's admin: 404, as if the stream did not exist; a member: 403.
    let stranger = create_tenant(&app.anonymous, &app.base, "stranger").await;
    let stranger = common::client_for(&stranger);
    let (status, _) = get(&stranger, url("?version=1")).await;
    assert_eq!(status, 404);
    let (status, _) = get(
        &stranger,
        app.url(&format!("/api/v1/streams/{stream}/diff?from=0&to=1")),
    )
    .await;
    assert_eq!(status, 404);
    let member = add_member(&app, "member").await;
    let (status, _) = get(&common::client_for(&member), url("?version=1")).await;
    assert_eq!(status, 403);
    other.handle.stop(true).await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[actix_web::test]
async fn a_diff_lists_the_events_between_two_versions_and_the_fields_that_changed() {
    let app = spawn_app().await;
    let id = building(&app).await;
    let (status, diff) = get(
        &app.client,
        app.url(&format!("/api/v1/streams/building-{id}/diff?from=1&to=3")),
    )
    .await;
    assert_eq!(status, 200, "{diff}");
    let types: Vec<_> = diff["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["SensorRegistered", "ThresholdSet"]);
    let fields: Vec<_> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["active_sensors", "sensors", "thresholds"]);
    assert_eq!(diff["changes"][0]["from"], 0);
    assert_eq!(diff["changes"][0]["to"], 1);
    for q in ["from=3&to=1", "from=0&to=5000", "from=1", "from=a&to=2"] {
        let (status, body) = get(
            &app.client,
            app.url(&format!("/api/v1/streams/building-{id}/diff?{q}")),
        )
        .await;
        assert_eq!(status, 400, "{q}: {body}");
    }
}

async fn export_text(client: &reqwest::Client, url: String) -> (u16, String) {
    let res = client.get(url).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[actix_web::test]
async fn the_export_streams_the_log_as_events_shows_it_with_filters_resumption_and_compression() {
    let app = spawn_app().await;
    let id = building(&app).await;
    let _ = building(&app).await;

    let (_, page) = get(&app.client, app.url("/api/v1/events?limit=1000")).await;
    let (status, all) = export_text(&app.client, app.url("/api/v1/events/export")).await;
    assert_eq!(status, 200, "{all}");
    let exported = lines(&all);
    assert_eq!(
        Value::Array(exported.clone()),
        page["events"],
        "the same events, shaped alike"
    );
    assert!(exported.len() >= 10);

    // Resume from a position: exactly the tail.
    let from = exported[4]["position"].as_i64().unwrap();
    let (_, tail) = export_text(
        &app.client,
        app.url(&format!("/api/v1/events/export?from_position={from}")),
    )
    .await;
    assert_eq!(lines(&tail), exported[4..].to_vec());

    // Filters: repeated types, a category, a stream, a time window, a position range.
    let (_, typed) = export_text(
        &app.client,
        app.url("/api/v1/events/export?type=SensorRegistered&type=ThresholdSet"),
    )
    .await;
    let typed = lines(&typed);
    assert_eq!(typed.len(), 4);
    assert!(typed
        .iter()
        .all(|e| e["event_type"] == "SensorRegistered" || e["event_type"] == "ThresholdSet"));
    let (_, one) = export_text(
        &app.client,
        app.url(&format!(
            "/api/v1/events/export?stream=building-{id}&category=building"
        )),
    )
    .await;
    assert_eq!(
        lines(&one).len(),
        6,
        "registered, sensor, threshold, 2 readings, alert"
    );
    let (_, none) = export_text(
        &app.client,
        app.url("/api/v1/events/export?until=2000-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(none, "");
    // (An organization's events are not the first positions: signing up came before it.)
    let (_, since) = export_text(
        &app.client,
        app.url(&format!(
            "/api/v1/events/export?since=2000-01-01T00:00:00Z&to_position={}",
            exported[2]["position"]
        )),
    )
    .await;
    assert_eq!(lines(&since), exported[..3].to_vec());

    // Compression when asked.
    let res = app
        .client
        .get(app.url("/api/v1/events/export"))
        .header("accept-encoding", "zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "zstd");
    let packed = res.bytes().await.unwrap();
    let unpacked = zstd::stream::decode_all(&packed[..]).unwrap();
    assert_eq!(String::from_utf8(unpacked).unwrap(), all);
    let res = app
        .client
        .get(app.url("/api/v1/events/export"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    assert_eq!(&res.bytes().await.unwrap()[..2], &[0x1f, 0x8b]);

    // Bad input: 400, with the error shape.
    for q in [
        "from_position=0",
        "since=yesterday",
        "colour=red",
        "to_position=x",
    ] {
        let (status, body) = get(&app.client, app.url(&format!("/api/v1/events/export?{q}"))).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body["error"]["message"].is_string());
    }

    // Tenancy: another organization's admin exports only its own events; an operator all.
    let stranger = create_tenant(&app.anonymous, &app.base, "stranger").await;
    let (_, theirs) = export_text(
        &common::client_for(&stranger),
        app.url("/api/v1/events/export"),
    )
    .await;
    let theirs = lines(&theirs);
    assert!(theirs
        .iter()
        .all(|e| e["metadata"]["organization_id"] == stranger.organization_id.as_str()));
    assert!(!theirs
        .iter()
        .any(|e| e["stream_id"] == format!("building-{id}")));
    become_operator(&app).await;
    let (_, everything) = export_text(&app.client, app.url("/api/v1/events/export")).await;
    let everything = lines(&everything);
    assert!(everything.len() > exported.len());
    assert!(
        everything
            .iter()
            .filter(|e| e["data"].get("password_hash").is_some())
            .all(|e| e["data"]["password_hash"] == "[redacted]"),
        "secrets never leave over HTTP"
    );
}

#[actix_web::test]
async fn the_catalogue_lists_every_type_with_schemas_samples_consumers_and_counts() {
    let app = spawn_app().await;
    let _ = building(&app).await;
    let (status, catalog) = get(&app.client, app.url("/api/v1/catalog")).await;
    assert_eq!(status, 200, "{catalog}");
    let types = catalog["event_types"].as_array().unwrap();
    let entry = |t: &str| {
        types
            .iter()
            .find(|e| e["event_type"] == t)
            .unwrap_or_else(|| panic!("{t} is catalogued"))
            .clone()
    };
    let registered = entry("BuildingRegistered");
    assert_eq!(registered["category"], "building");
    assert_eq!(registered["current_version"], 2);
    let versions = registered["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions[0]["upcaster_to_next"].is_string());
    assert!(versions[1]["schema"]["properties"]["organization_id"].is_object());
    assert!(versions[0]["schema"]["properties"]["organization_id"].is_null());
    assert_eq!(versions[1]["sample"]["name"], "City Hall");
    assert_eq!(registered["count"], 1);
    assert!(registered["projections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().contains("citypulse")));
    let readings = entry("ReadingsRecorded");
    assert_eq!(readings["count"], 2);
    assert!(readings["first_position"].as_i64() < readings["last_position"].as_i64());
    for t in types {
        for v in t["versions"].as_array().unwrap() {
            assert!(v["schema"].is_object(), "{}", t["event_type"]);
            assert!(!v["sample"].is_null(), "{}", t["event_type"]);
        }
    }
    let member = add_member(&app, "member").await;
    let (status, _) = get(&common::client_for(&member), app.url("/api/v1/catalog")).await;
    assert_eq!(status, 403);
}

/// Appends the sample of every event type (current versions, and older ones as stored
/// then) to fresh streams of its category, as the organization's events.
async fn append_every_sample(store: &dyn EventStore, org: &str) {
    for entry in universal_events::catalog::catalogue() {
        for v in &entry.versions {
            let data = universal_events::catalog::sample(entry.event_type, v.version).unwrap();
            let stream = format!("{}-{}", entry.category, Uuid::now_v7());
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![NewEvent {
                        event_id: Uuid::now_v7(),
                        event_type: entry.event_type.to_owned(),
                        schema_version: v.version,
                        data,
                        metadata: json!({ "organization_id": org, "source": "sample" }),
                    }],
                )
                .await
                .unwrap();
        }
    }
}

/// Every row of a table, as JSON, in a stable order.
async fn rows(pool: &sqlx::PgPool, table: &str) -> Vec<Value> {
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t) FROM {table} t ORDER BY to_jsonb(t)::text"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn all_events(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let (status, page) = get(
            client,
            format!("{base}/api/v1/events?from_position={from}&limit=1000"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        out.extend(events.iter().cloned());
        if events.is_empty() {
            return out;
        }
        from = page["next_position"].as_i64().unwrap();
    }
}

#[actix_web::test]
async fn export_then_import_into_a_fresh_database_gives_equal_events_and_read_models() {
    // The sample swarm tasks must stay as the samples left them: no scheduler runs them.
    let app = common::spawn_app_with(|c| c.run_swarm_scheduler = false).await;
    let _ = building(&app).await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    append_every_sample(store.as_ref(), &app.tenant.organization_id).await;
    store.shutdown().await;
    // Let the projections reach the head (bounded), so both sides hold the whole log.
    let head = app.head().await;
    let names: Vec<_> = universal_backend::projections::all()
        .iter()
        .map(|p| p.name())
        .collect();
    for _ in 0..400 {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[]) AS n(name) WHERE coalesce( \
             (SELECT position FROM checkpoints WHERE projection = n.name), 0) < $2",
        )
        .bind(&names)
        .bind(head)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Export the whole log (secrets included, as the command line does), zstd-compressed.
    let dir = std::env::temp_dir().join(format!("ub-history-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("log.ndjson.zst");
    let mut out = export::create_file(&file).unwrap();
    let report = export::write_to(
        &app.pool,
        &export::ExportFilter::default(),
        &mut out,
        &Progress::new("test", None),
    )
    .await
    .unwrap();
    drop(out);
    assert_eq!(report.events as i64, head);

    // Import into a fresh database, rebuild the projections, and serve it.
    let (fresh, fresh_url) = common::fresh_pool().await;
    let mut input = import::open_file(&file).unwrap();
    let imported = import::import(
        &fresh,
        &mut input,
        &import::ImportOptions::default(),
        &Progress::new("test", None),
    )
    .await
    .unwrap();
    assert_eq!(imported.written as i64, head);
    assert_eq!(imported.last_position, head);
    let mut config = test_config(fresh_url.clone());
    config.run_swarm_scheduler = false;
    universal_backend::history::cli::rebuild_all(&config, &fresh)
        .await
        .unwrap();

    // The events, as stored and as served.
    let (before, after) = (
        rows(&app.pool, "events").await,
        rows(&fresh, "events").await,
    );
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a);
    }
    let copy = universal_backend::Application::build(config).await.unwrap();
    let copy_base = format!("http://127.0.0.1:{}", copy.port());
    let copy_handle = copy.handle();
    actix_web::rt::spawn(copy.run_until_stopped());
    // Fresh clients: a connection pooled before the rebuilds may have been closed by now.
    let served = all_events(&common::client_for(&app.tenant), &app.base).await;
    assert!(served.len() > 80, "every event type is in the log");
    assert_eq!(
        served,
        all_events(&common::client_for(&app.tenant), &copy_base).await,
        "the same token works on the copy: its users and memberships came along"
    );

    // Every read model, and the parked events. The source's read models are rebuilt from
    // its log first, as the copy's were: the samples reuse entity ids across streams
    // (readings of a sensor that a later event registers elsewhere), which a batch of a
    // rebuild and the live runner's small batches apply differently in citypulse_directory.
    // (On a pool of its own, as the command line would: the server keeps its connections.)
    let source_config = test_config(app.database_url.clone());
    let source = universal_backend::startup::connect_and_migrate(&source_config)
        .await
        .unwrap();
    universal_backend::history::cli::rebuild_all(&source_config, &source)
        .await
        .unwrap();
    // Every read model, and the parked events.
    for p in universal_backend::projections::all() {
        for table in p.tables() {
            let (before, after) = (rows(&app.pool, table).await, rows(&fresh, table).await);
            assert_eq!(before.len(), after.len(), "rows of {table} ({})", p.name());
            for (b, a) in before.iter().zip(&after) {
                assert_eq!(b, a, "read model {table} of {}", p.name());
            }
        }
    }
    let parked = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, Value>(
            "SELECT coalesce(jsonb_agg(jsonb_build_array(projection, position, event_type, state) \
             ORDER BY projection, position), '[]') FROM parked_events",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(parked(app.pool.clone()).await, parked(fresh.clone()).await);

    // A second import needs --append, which skips every stored event.
    let mut input = import::open_file(&file).unwrap();
    let refused = import::import(
        &fresh,
        &mut input,
        &import::ImportOptions::default(),
        &Progress::new("test", None),
    )
    .await;
    assert!(matches!(refused, Err(import::ImportError::NotEmpty(_))));
    let mut input = import::open_file(&file).unwrap();
    let again = import::import(
        &fresh,
        &mut input,
        &import::ImportOptions {
            append: true,
            ..Default::default()
        },
        &Progress::new("test", None),
    )
    .await
    .unwrap();
    assert_eq!((again.written, again.skipped), (0, head as u64));

    // A malformed line stops an import with its line number, and nothing is written.
    let (empty, _) = common::fresh_pool().await;
    let bad = b"{\"stream_id\":\"building-x\",\"version\":1}\n".to_vec();
    let failed = import::import(
        &empty,
        &mut &bad[..],
        &import::ImportOptions::default(),
        &Progress::new("test", None),
    )
    .await;
    assert!(matches!(
        failed,
        Err(import::ImportError::Line { line: 1, .. })
    ));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&empty)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    copy_handle.stop(true).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_web::test]
async fn a_replay_rebuilds_a_read_model_as_it_was_into_its_own_schema() {
    use universal_backend::history::replay::{drop_schema, replay, Until};
    let app = spawn_app().await;
    let first = building(&app).await;
    let cut = app.head().await;
    let second = building(&app).await;
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let directory = universal_backend::projections::by_name("citypulse_directory").unwrap();
    let schema = format!("replay_{}", Uuid::new_v4().simple());
    let report = replay(
        &app.pool,
        store.as_ref(),
        directory.as_ref(),
        Until::Position(cut),
        &schema,
        1000,
        &Progress::new("test", None),
    )
    .await
    .unwrap();
    assert_eq!(report.position, cut);
    let then: Vec<Uuid> = sqlx::query_scalar(&format!("SELECT id FROM {schema}.buildings"))
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        then,
        [first.parse::<Uuid>().unwrap()],
        "only what existed at the cut"
    );
    // The live read model may still be applying the second building under load: its read
    // waits for the log's head before the table is counted.
    let (status, _) = get(
        &app.client,
        app.url(&format!(
            "/api/v1/citypulse/buildings/{second}?min_position={}",
            app.head().await
        )),
    )
    .await;
    assert_eq!(status, 200);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM buildings")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(live >= 2, "the live read model is untouched");

    // By time: everything so far; then replacing the replay, and dropping it.
    let now = chrono::Utc::now();
    let report = replay(
        &app.pool,
        store.as_ref(),
        directory.as_ref(),
        Until::Time(now),
        &schema,
        1000,
        &Progress::new("test", None),
    )
    .await
    .unwrap();
    assert_eq!(report.position, app.head().await);
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.buildings"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
    let info: (String, i64) = sqlx::query_as(&format!(
        "SELECT projection, to_position FROM {schema}.replay_info"
    ))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(info.0, "citypulse_directory");
    assert!(drop_schema(&app.pool, &schema).await.unwrap());
    assert!(!drop_schema(&app.pool, &schema).await.unwrap());

    // Never into a schema of the service, or one a replay did not make.
    for bad in ["public", "Robert'); DROP", "pg_catalog"] {
        assert!(replay(
            &app.pool,
            store.as_ref(),
            directory.as_ref(),
            Until::Position(1),
            bad,
            1000,
            &Progress::new("test", None)
        )
        .await
        .is_err());
    }
    sqlx::query("CREATE SCHEMA analyst_own")
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(drop_schema(&app.pool, "analyst_own").await.is_err());
    store.shutdown().await;
}
