//! Black-box tests of the CityPulse API: the real server on port 0, a real database,
//! a real HTTP client.

mod common;

use serde_json::{json, Value};

#[actix_web::test]
async fn a_posted_reading_shows_in_the_energy_read_model_when_asked_with_min_position() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let res = app
        .post(
            &format!("/api/v1/citypulse/buildings/{id}/readings"),
            json!({ "readings": [
                { "sensor_id": sensor, "value": 12.5, "timestamp": "2026-11-21T10:15:00Z" },
                { "sensor_id": sensor, "value": 7.5, "timestamp": "2026-11-21T10:45:00Z" },
                { "sensor_id": sensor, "value": 1.0, "timestamp": "2026-11-21T11:05:00Z" }
            ]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["version"], 3);
    assert_eq!(etag, "\"3\"");
    let position = body["position"].as_i64().unwrap();

    let (status, energy) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}/energy?bucket=hour&from=2026-11-21T00:00:00Z\
             &to=2026-11-22T00:00:00Z&min_position={position}"
        ))
        .await;
    assert_eq!(status, 200, "{energy}");
    let series = energy["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{energy}");
    assert_eq!(series[0]["bucket"], "2026-11-21T10:00:00Z");
    assert_eq!(series[0]["total"], 20.0);
    assert_eq!(series[0]["samples"], 2);
    assert_eq!(series[0]["max_value"], 12.5);
    assert_eq!(series[1]["total"], 1.0);

    let (_, daily) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}/energy?bucket=day&from=2026-11-01T00:00:00Z\
             &to=2026-11-30T00:00:00Z&min_position={position}"
        ))
        .await;
    assert_eq!(daily["series"][0]["total"], 21.0);
    assert_eq!(daily["series"][0]["unit"], "kWh");

    let (status, building) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}?min_position={position}"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(building["version"], 3);
    assert_eq!(building["sensors"][0]["last_value"], 1.0);
}

#[actix_web::test]
async fn readings_nobody_follows_live_cost_the_live_feed_no_read() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let read_before = app.state.live.events_read();
    let mut position = 0;
    for n in 0..20 {
        let res = app
            .post(
                &format!("/api/v1/citypulse/buildings/{id}/readings"),
                json!({ "readings": [{ "sensor_id": sensor, "value": n as f64 }] }),
            )
            .await;
        assert_eq!(res.status(), 201);
        position = res.json::<Value>().await.unwrap()["position"]
            .as_i64()
            .unwrap();
    }
    // The projections saw every reading ...
    let (status, building) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}?min_position={position}"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(building["sensors"][0]["last_value"], 19.0);
    // ... while the live feed, whose standing subscribers (the access view, the agent
    // publisher) want none of them, read none.
    assert_eq!(app.state.live.events_read(), read_before);
}

#[actix_web::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_first_answer_and_appends_nothing() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("water", "L").await;
    let send = || {
        app.client
            .post(app.url(&format!("/api/v1/citypulse/buildings/{id}/readings")))
            .header("Idempotency-Key", "reading-batch-42")
            .json(&json!({ "readings": [{ "sensor_id": sensor, "value": 3.0 }] }))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let head = app.head().await;

    let retry = send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(app.head().await, head, "the retry appended nothing");

    // The same key with another body is a client error, and changes nothing either.
    let other = app
        .client
        .post(app.url(&format!("/api/v1/citypulse/buildings/{id}/readings")))
        .header("Idempotency-Key", "reading-batch-42")
        .json(&json!({ "readings": [{ "sensor_id": sensor, "value": 4.0 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(app.head().await, head);

    // Creating a building with a key twice names the same building once.
    let create = || {
        app.client
            .post(app.url("/api/v1/citypulse/buildings"))
            .header("Idempotency-Key", "create-city-hall")
            .json(&json!({ "name": "City Hall" }))
            .send()
    };
    let a: Value = create().await.unwrap().json().await.unwrap();
    let b: Value = create().await.unwrap().json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(app.head().await, head + 1);
}

#[actix_web::test]
async fn a_stale_if_match_is_a_conflict_and_a_current_one_is_accepted() {
    let app = common::spawn_app().await;
    let (id, _, _) = app.building_with_sensor("gas", "m3").await;
    let put = |etag: &'static str, max: f64| {
        app.client
            .put(app.url(&format!("/api/v1/citypulse/buildings/{id}/thresholds")))
            .header("If-Match", etag)
            .json(&json!({ "kind": "gas", "max": max }))
            .send()
    };
    let stale = put("\"1\"", 10.0).await.unwrap();
    assert_eq!(stale.status(), 409);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_conflict");
    assert_eq!(body["error"]["details"]["actual_version"], 2);

    let ok = put("\"2\"", 10.0).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["etag"], "\"3\"");
}

#[actix_web::test]
async fn bad_input_gets_a_json_4xx_and_appends_nothing() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let (_, temp_sensor_body) = {
        let res = app
            .post(
                &format!("/api/v1/citypulse/buildings/{id}/sensors"),
                json!({ "kind": "temperature", "unit": "C" }),
            )
            .await;
        (res.status(), res.json::<Value>().await.unwrap())
    };
    let temp = temp_sensor_body["sensor_id"].as_str().unwrap().to_owned();
    let gone = {
        let res = app
            .post(
                &format!("/api/v1/citypulse/buildings/{id}/sensors"),
                json!({ "kind": "water", "unit": "m3" }),
            )
            .await;
        let sid = res.json::<Value>().await.unwrap()["sensor_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = app
            .client
            .delete(app.url(&format!("/api/v1/citypulse/buildings/{id}/sensors/{sid}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        sid
    };
    let unknown = uuid::Uuid::new_v4();
    let readings = format!("/api/v1/citypulse/buildings/{id}/readings");
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({ "sensor_id": sensor, "value": 1.0 }))
        .collect();

    let cases: Vec<(&str, String, String, u16)> = vec![
        ("malformed JSON", readings.clone(), "{\"readings\": [".into(), 400),
        ("empty body", readings.clone(), "".into(), 400),
        ("wrong type", readings.clone(), json!({ "readings": "many" }).to_string(), 422),
        (
            "unknown field",
            readings.clone(),
            json!({ "readings": [], "extra": 1 }).to_string(),
            422,
        ),
        ("no readings", readings.clone(), json!({ "readings": [] }).to_string(), 422),
        (
            "out-of-range number",
            readings.clone(),
            format!("{{\"readings\": [{{\"sensor_id\": \"{sensor}\", \"value\": 1e999}}]}}"),
            400,
        ),
        (
            "negative consumption",
            readings.clone(),
            json!({ "readings": [{ "sensor_id": sensor, "value": -2.0 }] }).to_string(),
            422,
        ),
        (
            "more than 1000 readings",
            readings.clone(),
            json!({ "readings": too_many }).to_string(),
            422,
        ),
        (
            "unknown sensor",
            readings.clone(),
            json!({ "readings": [{ "sensor_id": unknown, "value": 1.0 }] }).to_string(),
            422,
        ),
        (
            "decommissioned sensor",
            readings.clone(),
            json!({ "readings": [{ "sensor_id": gone, "value": 1.0 }] }).to_string(),
            422,
        ),
        (
            "unknown building",
            format!("/api/v1/citypulse/buildings/{unknown}/readings"),
            json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] }).to_string(),
            404,
        ),
        (
            "building id that is no uuid",
            "/api/v1/citypulse/buildings/not-a-uuid/readings".into(),
            json!({ "readings": [] }).to_string(),
            404,
        ),
        (
            "empty building name",
            "/api/v1/citypulse/buildings".into(),
            json!({ "name": "  " }).to_string(),
            422,
        ),
        (
            "unit of another kind",
            format!("/api/v1/citypulse/buildings/{id}/sensors"),
            json!({ "kind": "gas", "unit": "kWhh" }).to_string(),
            422,
        ),
        (
            "unknown sensor kind",
            format!("/api/v1/citypulse/buildings/{id}/sensors"),
            json!({ "kind": "plutonium", "unit": "kg" }).to_string(),
            422,
        ),
        (
            "future timestamp",
            readings.clone(),
            json!({ "readings": [{ "sensor_id": sensor, "value": 1.0, "timestamp": "2999-01-01T00:00:00Z" }] })
                .to_string(),
            422,
        ),
    ];

    let head = app.head().await;
    for (what, path, body, status) in cases {
        let res = app
            .client
            .post(app.url(&path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{what}");
        let err: Value = res
            .json()
            .await
            .unwrap_or_else(|_| panic!("{what}: not JSON"));
        assert!(err["error"]["code"].is_string(), "{what}: {err}");
        assert!(err["error"]["message"].is_string(), "{what}: {err}");
        assert_eq!(app.head().await, head, "{what} appended something");
    }

    // A temperature may be negative.
    let res = app
        .post(
            &readings,
            json!({ "readings": [{ "sensor_id": temp, "value": -7.5 }] }),
        )
        .await;
    assert_eq!(res.status(), 201);

    // Oversized bodies, unknown routes and bad query parameters are JSON errors too.
    let huge = "x".repeat(2 * 1024 * 1024);
    let res = app
        .client
        .post(app.url(&readings))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let (status, body) = app.get_json("/api/v1/nothing-here").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}/energy?bucket=week"
        ))
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}/energy?from=yesterday"
        ))
        .await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn crossing_a_threshold_raises_an_alert_that_the_alerts_endpoint_lists() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let res = app
        .client
        .put(app.url(&format!("/api/v1/citypulse/buildings/{id}/thresholds")))
        .json(&json!({ "kind": "electricity", "max": 100.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .post(
            &format!("/api/v1/citypulse/buildings/{id}/readings"),
            json!({ "readings": [
                { "sensor_id": sensor, "value": 50.0 },
                { "sensor_id": sensor, "value": 180.0 }
            ]}),
        )
        .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["alerts_raised"], 1);
    let position = body["position"].as_i64().unwrap();
    let (status, alerts) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{id}/alerts?status=open&min_position={position}"
        ))
        .await;
    assert_eq!(status, 200);
    let items = alerts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["value"], 180.0);
    assert_eq!(items[0]["bound"], "max");
}

#[actix_web::test]
async fn buildings_are_listed_in_stable_pages() {
    let app = common::spawn_app().await;
    let mut ids = Vec::new();
    let mut position = 0;
    for n in 0..7 {
        let res = app
            .post(
                "/api/v1/citypulse/buildings",
                json!({ "name": format!("B{n}") }),
            )
            .await;
        let body: Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
        position = body["position"].as_i64().unwrap();
    }
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => {
                format!("/api/v1/citypulse/buildings?limit=3&cursor={c}&min_position={position}")
            }
            None => format!("/api/v1/citypulse/buildings?limit=3&min_position={position}"),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200);
        for item in page["items"].as_array().unwrap() {
            listed.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, ids);
    let (status, _) = app.get_json("/api/v1/citypulse/buildings?limit=0").await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn min_position_beyond_the_log_is_refused_and_a_stalled_read_model_answers_504() {
    let app = common::spawn_app().await;
    // No command was ever answered with a position past the head: refused at once.
    let (status, body) = app
        .get_json("/api/v1/citypulse/buildings?min_position=9223372036854775806")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "min_position_ahead");
    assert!(body["error"]["details"]["head"].is_i64());

    // A read model held back (its checkpoint row locked) answers 504 with its checkpoint.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query(
        "SELECT position FROM checkpoints WHERE projection = 'citypulse_directory' FOR UPDATE",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let res = app
        .post("/api/v1/citypulse/buildings", json!({ "name": "Annex" }))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let (status, body) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings?min_position={}",
            created["position"]
        ))
        .await;
    holder.rollback().await.unwrap();
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "projection_behind");
    assert!(body["error"]["details"]["checkpoint"].is_i64());
}

#[actix_web::test]
async fn analysts_read_a_stream_and_the_log_by_position() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("gas", "m3").await;
    app.post(
        &format!("/api/v1/citypulse/buildings/{id}/readings"),
        json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] }),
    )
    .await;
    let (status, stream) = app
        .get_json(&format!("/api/v1/streams/building-{id}?from_version=2"))
        .await;
    assert_eq!(status, 200);
    let types: Vec<_> = stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, vec!["SensorRegistered", "ReadingsRecorded"]);

    let (_, page1) = app
        .get_json("/api/v1/events?category=building&limit=2")
        .await;
    let page1_events = page1["events"].as_array().unwrap();
    assert_eq!(page1_events.len(), 2);
    assert_eq!(page1_events[0]["event_type"], "BuildingRegistered");
    let next = page1["next_position"].as_i64().unwrap();
    assert_eq!(next, page1_events[1]["position"].as_i64().unwrap() + 1);
    let (_, page2) = app
        .get_json(&format!(
            "/api/v1/events?from_position={next}&type=ReadingsRecorded,SensorRegistered"
        ))
        .await;
    let events = page2["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "ReadingsRecorded");
    assert!(events[0]["position"].as_i64().unwrap() >= next);

    // The organization's own identity events are there too, with secrets blanked.
    let (_, orgs) = app.get_json("/api/v1/events?category=organization").await;
    assert!(!orgs["events"].as_array().unwrap().is_empty());
    let (_, users) = app.get_json("/api/v1/events?category=user").await;
    for e in users["events"].as_array().unwrap() {
        for field in ["password_hash", "refresh_hash"] {
            if let Some(v) = e["data"].get(field) {
                assert_eq!(v, "[redacted]");
            }
        }
    }
    let (status, _) = app.get_json("/api/v1/streams/building-nope").await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn health_metrics_and_info_describe_the_running_service() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    app.post(
        &format!("/api/v1/citypulse/buildings/{id}/readings"),
        json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] }),
    )
    .await;
    let (status, health) = app.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["event_store"]["reachable"], true);
    assert!(health["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    let names: Vec<_> = health["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"citypulse_energy".to_owned()));

    universal_backend::telemetry::metrics_handle();
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "ub_commands_total",
        "ub_events_appended_total",
        "ub_append_batch_events",
        "ub_projection_lag",
        "ub_live_actors",
    ] {
        assert!(text.contains(metric), "{metric} missing from /metrics");
    }
    let (status, info) = app.get_json("/api/v1/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["name"], "universal-backend");
}

#[actix_web::test]
async fn a_graceful_shutdown_keeps_every_acknowledged_write() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let path = format!("/api/v1/citypulse/buildings/{id}/readings");
    let mut requests = Vec::new();
    for n in 0..200 {
        let client = app.client.clone();
        let url = app.url(&path);
        let body = json!({ "readings": [{ "sensor_id": sensor, "value": n as f64 }] });
        requests.push(actix_web::rt::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }));
    }
    // Stop while the requests are in flight; in-flight ones finish, new ones are refused.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.handle.stop(true).await;
    let mut acknowledged = 0;
    for r in requests {
        if r.await.unwrap() == Some(201) {
            acknowledged += 1;
        }
    }
    // A new connection: pooled ones may belong to the stopped workers' runtimes.
    let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'ReadingsRecorded'",
    )
    .bind(format!("building-{id}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        acknowledged > 0,
        "some requests were answered before the stop"
    );
    assert!(
        stored >= acknowledged,
        "{acknowledged} acknowledged, {stored} stored"
    );
}
