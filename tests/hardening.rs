//! The core under pressure: several server processes on one database, retried commands,
//! input the store or the read models cannot hold, and stalled clients and locks.

mod common;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A second server process on the first one's database (with a tenant of its own).
async fn peer_of(app: &common::TestApp) -> common::TestApp {
    let url = app.database_url.clone();
    common::spawn_app_with(move |c| c.database_url = url).await
}

/// The same request as `client` would send, aimed at another process.
fn on(base: &str, path: &str) -> String {
    format!("{base}{path}")
}

async fn count_events(app: &common::TestApp, stream: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Forgets the stored answer of every idempotency key, as if the process had died between
/// the append and storing the answer.
async fn lose_stored_answers(app: &common::TestApp) {
    sqlx::query("UPDATE idempotency_keys SET status = NULL, response = NULL")
        .execute(&app.pool)
        .await
        .unwrap();
}

#[actix_web::test]
async fn readings_for_a_sensor_added_through_another_process_are_accepted() {
    let a = common::spawn_app().await;
    let b = peer_of(&a).await;
    let (building, first_sensor, _) = a.building_with_sensor("electricity", "kWh").await;
    let readings = format!("/api/v1/citypulse/buildings/{building}/readings");
    // B loads the building's actor.
    let res = a
        .client
        .post(on(&b.base, &readings))
        .json(&json!({ "readings": [{ "sensor_id": first_sensor, "value": 1.0 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // A adds a sensor; B's actor has not seen it.
    let res = a
        .post(
            &format!("/api/v1/citypulse/buildings/{building}/sensors"),
            json!({ "kind": "gas", "unit": "m3" }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let sensor: Value = res.json().await.unwrap();
    let res = a
        .client
        .post(on(&b.base, &readings))
        .json(&json!({ "readings": [{ "sensor_id": sensor["sensor_id"], "value": 2.0 }] }))
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_eq!(status, 201, "{}", res.text().await.unwrap());

    // A query that reads actor state through B sees a change made through A.
    let res = a
        .client
        .get(on(&b.base, "/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = a
        .client
        .patch(a.url("/api/v1/users/me"))
        .json(&json!({ "display_name": "Renamed in A" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me: Value = a
        .client
        .get(on(&b.base, "/api/v1/auth/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["display_name"], "Renamed in A", "{me}");
}

#[actix_web::test]
async fn a_login_through_one_process_refreshes_through_another_that_has_the_user_cached() {
    let a = common::spawn_app().await;
    let b = peer_of(&a).await;
    // B caches the user.
    let res = a
        .client
        .get(on(&b.base, "/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A starts a new session.
    let res = a
        .anonymous
        .post(a.url("/api/v1/auth/login"))
        .json(&json!({ "email": a.tenant.email, "password": common::PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let login: Value = res.json().await.unwrap();
    // B refreshes it.
    let res = b
        .anonymous
        .post(on(&b.base, "/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": login["refresh_token"] }))
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_eq!(status, 200, "{}", res.text().await.unwrap());
}

#[actix_web::test]
async fn one_tenants_idempotency_key_never_reaches_another_tenants_answer() {
    let app = common::spawn_app().await;
    let other = common::create_tenant(&app.anonymous, &app.base, "second").await;
    let other_client = common::client_for(&other);
    let send = |client: &reqwest::Client| {
        client
            .post(app.url("/api/v1/citypulse/buildings"))
            .header("Idempotency-Key", "shared-key")
            .json(&json!({ "name": "Depot" }))
            .send()
    };
    let mine: Value = send(&app.client).await.unwrap().json().await.unwrap();
    let res = send(&other_client).await.unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers().get("idempotent-replayed").is_none());
    let theirs: Value = res.json().await.unwrap();
    assert_ne!(mine["id"], theirs["id"]);
    // The second tenant's building exists and is theirs.
    let res = other_client
        .get(app.url(&format!(
            "/api/v1/citypulse/buildings/{}?min_position={}",
            theirs["id"].as_str().unwrap(),
            theirs["position"]
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn a_retry_after_a_lost_answer_returns_the_original_answer_from_the_log() {
    let app = common::spawn_app().await;
    let create = |body: Value| {
        app.client
            .post(app.url("/api/v1/citypulse/buildings"))
            .header("Idempotency-Key", "create-1")
            .json(&body)
            .send()
    };
    let res = create(json!({ "name": "Pool" })).await.unwrap();
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();

    let add = || {
        app.client
            .post(app.url(&format!("/api/v1/citypulse/buildings/{id}/sensors")))
            .header("Idempotency-Key", "sensor-1")
            .json(&json!({ "kind": "electricity", "unit": "kWh" }))
            .send()
    };
    let res = add().await.unwrap();
    assert_eq!(res.status(), 201);
    let sensor: Value = res.json().await.unwrap();
    let sensor_id = sensor["sensor_id"].as_str().unwrap().to_owned();

    // A threshold, then readings that raise an alert, sent with a key.
    let res = app
        .client
        .put(app.url(&format!("/api/v1/citypulse/buildings/{id}/thresholds")))
        .json(&json!({ "kind": "electricity", "max": 10.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let read = || {
        app.client
            .post(app.url(&format!("/api/v1/citypulse/buildings/{id}/readings")))
            .header("Idempotency-Key", "readings-1")
            .json(&json!({ "readings": [{ "sensor_id": sensor_id, "value": 50.0 }] }))
            .send()
    };
    let res = read().await.unwrap();
    assert_eq!(res.status(), 201);
    let readings: Value = res.json().await.unwrap();
    assert_eq!(readings["alerts_raised"], 1);

    let stream = format!("building-{id}");
    let events = count_events(&app, &stream).await;
    lose_stored_answers(&app).await;

    let res = create(json!({ "name": "Pool" })).await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(res.json::<Value>().await.unwrap(), first);

    let res = add().await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap(), sensor);

    // The replay answers from the stored events (the alert it raised), not from a new
    // decision (which would raise none: the sensor is already in breach).
    let res = read().await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap(), readings);

    assert_eq!(
        count_events(&app, &stream).await,
        events,
        "nothing written twice"
    );

    // Taking over a key whose answer was lost still refuses another body.
    let res = create(json!({ "name": "Another pool" })).await.unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
}

#[actix_web::test]
async fn identity_commands_honour_idempotency_keys() {
    let app = common::spawn_app().await;
    let org = &app.tenant.organization_id;
    let frontends = app.url(&format!("/api/v1/organizations/{org}/frontends"));
    let res = app
        .client
        .put(&frontends)
        .header("Idempotency-Key", "K")
        .json(&json!({ "frontend": "velocity", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let head = app.head().await;
    let res = app
        .client
        .put(&frontends)
        .header("Idempotency-Key", "K")
        .json(&json!({ "frontend": "velocity", "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(app.head().await, head, "nothing written");

    let create = || {
        app.client
            .post(app.url("/api/v1/organizations"))
            .header("Idempotency-Key", "new-org")
            .json(&json!({ "name": "Shelbyville" }))
            .send()
    };
    let res = create().await.unwrap();
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.unwrap();
    lose_stored_answers(&app).await;
    let res = create().await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap(), first);
    let orgs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'OrganizationCreated' AND stream_id = $1",
    )
    .bind(format!("organization-{}", first["id"].as_str().unwrap()))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(orgs, 1);
}

#[actix_web::test]
async fn values_the_store_or_the_read_models_cannot_hold_are_refused_with_the_field_named() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let readings = format!("/api/v1/citypulse/buildings/{id}/readings");
    let head = app.head().await;
    let cases = [
        (
            json!({ "readings": [{ "sensor_id": sensor, "value": 1.0, "timestamp": "1500-01-01T00:00:00Z" }] }),
            "timestamp",
        ),
        (
            json!({ "readings": [{ "sensor_id": sensor, "value": 1.797_693_134_862_315_7e308 }] }),
            "value",
        ),
    ];
    for (body, field) in cases {
        let res = app.post(&readings, body).await;
        assert_eq!(res.status(), 422);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
    let res = app
        .post(
            "/api/v1/citypulse/buildings",
            json!({ "name": "Nul\u{0}Hall" }),
        )
        .await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["details"]["field"], "name");
    assert_eq!(app.head().await, head, "nothing was written");

    // A signup with a NUL is refused and leaves the address free.
    let email = format!("nul-{}@example.org", uuid::Uuid::new_v4().simple());
    let res = app
        .anonymous
        .post(app.url("/api/v1/auth/signup"))
        .json(&json!({ "email": email, "password": common::PASSWORD, "display_name": "A\u{0}" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let res = app
        .anonymous
        .post(app.url("/api/v1/auth/signup"))
        .json(&json!({ "email": email, "password": common::PASSWORD, "display_name": "Ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // The read models still answer for everyone.
    let res = app
        .client
        .get(app.url(&format!(
            "/api/v1/citypulse/buildings/{id}/energy?min_position={}",
            app.head().await
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn an_append_the_database_refuses_fails_alone_and_its_batch_neighbours_commit() {
    use universal_backend::store::{ExpectedVersion, NewEvent};
    let app = common::spawn_app().await;
    let store = app_store(&app).await;
    let event = |data: Value| NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "Probe".into(),
        schema_version: 1,
        data,
        metadata: json!({}),
    };
    let mut appends = Vec::new();
    for i in 0..20 {
        let data = if i == 7 {
            json!({ "text": "nul\u{0}here" })
        } else {
            json!({ "n": i })
        };
        let store = store.clone();
        let e = event(data);
        appends.push(async move {
            store
                .append(&format!("probe-{i}"), ExpectedVersion::Any, vec![e])
                .await
        });
    }
    let results = futures_util::future::join_all(appends).await;
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert!(r.is_err(), "the bad append fails");
        } else {
            assert!(r.is_ok(), "append {i}: {r:?}");
        }
    }
}

#[actix_web::test]
async fn an_encoded_append_is_checked_as_a_valued_one_and_fails_alone() {
    use universal_backend::store::{AppendError, Direction, EncodedEvent, ExpectedVersion};
    let app = common::spawn_app().await;
    let store = app_store(&app).await;
    let bad = [
        (
            7,
            r#"{"text": "nul\u0000here"}"#,
            "text: contains a NUL character",
        ),
        (11, r#"{"n": 1"#, "is not one JSON document"),
        (13, r#"{"n": [1e-305]}"#, "n[0]: the number"),
        (17, r#"{"n": 1} {"n": 2}"#, "is not one JSON document"),
    ];
    let mut appends = Vec::new();
    for i in 0..20 {
        let data = bad.iter().find(|(at, _, _)| *at == i).map_or_else(
            || format!(r#"{{"n": {i}, "name": "probe \u00e9"}}"#),
            |b| b.1.to_owned(),
        );
        let store = store.clone();
        let e = EncodedEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: "Probe".into(),
            schema_version: 1,
            data,
            metadata: r#"{"user_id": "someone"}"#.into(),
        };
        appends.push(async move {
            store
                .append_encoded(&format!("probe-{i}"), ExpectedVersion::Any, vec![e])
                .await
        });
    }
    let results = futures_util::future::join_all(appends).await;
    for (i, r) in results.iter().enumerate() {
        match bad.iter().find(|(at, _, _)| *at == i) {
            Some((_, _, why)) => match r {
                Err(AppendError::Invalid(message)) => {
                    assert!(message.contains(why), "append {i}: {message}")
                }
                other => panic!("append {i} must be refused as invalid: {other:?}"),
            },
            None => assert!(r.is_ok(), "append {i}: {r:?}"),
        }
    }
    let stored = store
        .read_stream("probe-3", 1, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, json!({ "n": 3, "name": "probe é" }));
    assert_eq!(stored[0].metadata, json!({ "user_id": "someone" }));
    for (at, _, _) in bad {
        let none = store
            .read_stream(&format!("probe-{at}"), 1, Direction::Forward, 10)
            .await
            .unwrap();
        assert!(none.is_empty(), "the refused append {at} wrote nothing");
    }
}

async fn app_store(
    app: &common::TestApp,
) -> std::sync::Arc<dyn universal_backend::store::EventStore> {
    universal_backend::store::PgEventStore::start(app.pool.clone(), Default::default())
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_held_head_lock_makes_appends_fail_with_503_and_writes_resume_when_it_goes() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("water", "L").await;
    let readings = format!("/api/v1/citypulse/buildings/{id}/readings");
    let body = json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] });
    // Another session takes the head lock and sits on it, as `BEGIN; SELECT … FOR UPDATE`
    // from psql would.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT last_position FROM event_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let res = app.post(&readings, body.clone()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    blocker.rollback().await.unwrap();
    let res = app.post(&readings, body).await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn a_request_body_sent_too_slowly_is_answered_408() {
    let app = common::spawn_app_with(|c| c.http_body_timeout_secs = 1).await;
    let port = app.base.rsplit(':').next().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/citypulse/buildings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         X-Frontend-Source: citypulse\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"name\":",
        app.tenant.access_token
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut answer))
        .await
        .expect("the server answers instead of waiting for the rest")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}

#[actix_web::test]
async fn six_writers_on_one_building_through_three_processes_get_no_conflict_and_each_write_is_stored_once(
) {
    let app = common::spawn_app().await;
    let second = common::spawn_second_app(&app).await;
    let third = common::spawn_second_app(&app).await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let bases = [app.base.clone(), second.base.clone(), third.base.clone()];
    const PER_WRITER: usize = 40;
    let writers = (0..6).map(|w| {
        let client = app.client.clone();
        let url = on(
            &bases[w % 3],
            &format!("/api/v1/citypulse/buildings/{id}/readings"),
        );
        let sensor = sensor.clone();
        async move {
            let mut refused = Vec::new();
            for i in 0..PER_WRITER {
                // No If-Match: the writer asks for no expectation about the version. A 503
                // `contended` (the server gave up after retrying for seconds, as on a
                // loaded machine) is retried as a client would, with the same key.
                let value = (w * 1000 + i) as f64;
                let key = uuid::Uuid::new_v4().to_string();
                loop {
                    let res = client
                        .post(&url)
                        .header("idempotency-key", &key)
                        .json(&json!({ "readings": [{ "sensor_id": sensor, "value": value }] }))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status();
                    if status == StatusCode::CREATED {
                        break;
                    }
                    let body = res.text().await.unwrap_or_default();
                    if status == StatusCode::SERVICE_UNAVAILABLE && body.contains("contended") {
                        continue;
                    }
                    refused.push((status, body));
                    break;
                }
            }
            refused
        }
    });
    let refused: Vec<_> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(refused.is_empty(), "writes refused: {refused:?}");
    let stored: Vec<f64> = sqlx::query_scalar(
        "SELECT (r->>'value')::float8 FROM events, jsonb_array_elements(data->'readings') r \
         WHERE stream_id = $1 AND event_type = 'ReadingsRecorded'",
    )
    .bind(format!("building-{id}"))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut values = stored.clone();
    values.sort_by(f64::total_cmp);
    values.dedup();
    assert_eq!(stored.len(), 6 * PER_WRITER, "every write stored");
    assert_eq!(values.len(), 6 * PER_WRITER, "no write stored twice");
    let _ = (second.handle, third.handle);
}

#[actix_web::test]
async fn a_conflict_the_client_asked_for_names_the_versions_that_differed() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let res = app
        .client
        .post(app.url(&format!("/api/v1/citypulse/buildings/{id}/readings")))
        .header("if-match", "\"1\"")
        .json(&json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    let (expected, actual) = (
        body["error"]["details"]["expected_version"]
            .as_i64()
            .unwrap(),
        body["error"]["details"]["actual_version"].as_i64().unwrap(),
    );
    assert_eq!(expected, 1, "{body}");
    assert_ne!(expected, actual, "{body}");
}
