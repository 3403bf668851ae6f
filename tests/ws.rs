//! Black-box tests of the event-stream WebSocket with a real WebSocket client.

mod common;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{recv, Socket};

async fn connect(app: &common::TestApp, token: Option<&str>) -> Socket {
    let url = match token {
        Some(t) => format!("{}/api/v1/ws?token={t}", app.base.replace("http", "ws")),
        None => format!("{}/api/v1/ws", app.base.replace("http", "ws")),
    };
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Socket, msg: Value) {
    ws.send(Message::Text(msg.to_string())).await.unwrap();
}

async fn post_readings(app: &common::TestApp, id: &str, sensor: &str, n: usize) {
    for i in 0..n {
        let res = app
            .post(
                &format!("/api/v1/citypulse/buildings/{id}/readings"),
                json!({ "readings": [{ "sensor_id": sensor, "value": i as f64 }] }),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
}

/// Reads a subscription's events until `count` have arrived; returns them and whether
/// `caught_up` came in between.
async fn collect(ws: &mut Socket, count: usize) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut caught_up = 0;
    while events.len() < count {
        let m = recv(ws).await;
        match m["type"].as_str() {
            Some("event") => events.push(m),
            Some("caught_up") => caught_up += 1,
            Some("subscribed") => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    (events, caught_up)
}

fn assert_consecutive(events: &[Value], first_version: i64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["version"].as_i64().unwrap(),
            first_version + i as i64,
            "{e}"
        );
    }
    assert!(events
        .windows(2)
        .all(|w| w[0]["position"].as_i64() < w[1]["position"].as_i64()));
}

#[actix_web::test]
async fn a_subscription_catches_up_and_goes_live_without_gap_or_duplicate_while_writes_race() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    post_readings(&app, &id, &sensor, 20).await;

    let mut ws = connect(&app, Some(&app.tenant.access_token)).await;
    send(&mut ws, json!({ "type": "subscribe", "id": "b", "target": { "stream": format!("building-{id}") }, "from": 0 })).await;
    let writer = {
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/citypulse/buildings/{id}/readings"));
        let sensor = sensor.clone();
        actix_web::rt::spawn(async move {
            for i in 0..30 {
                let res = client
                    .post(&url)
                    .json(&json!({ "readings": [{ "sensor_id": sensor, "value": i as f64 }] }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
            }
        })
    };
    let (events, caught_up) = collect(&mut ws, 52).await;
    writer.await.unwrap();
    assert_consecutive(&events, 1);
    assert!(caught_up <= 1, "caught_up is said once");
    assert_eq!(events[0]["event_type"], "BuildingRegistered");
    assert_eq!(events[51]["event_type"], "ReadingsRecorded");
}

#[actix_web::test]
async fn a_client_that_reconnects_with_its_last_position_misses_nothing() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("gas", "m3").await;
    post_readings(&app, &id, &sensor, 8).await;
    let target = json!({ "stream": format!("building-{id}") });

    let mut ws = connect(&app, Some(&app.tenant.access_token)).await;
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "s", "target": target, "from": 0 }),
    )
    .await;
    let (first, _) = collect(&mut ws, 5).await;
    let last = first.last().unwrap()["position"].as_i64().unwrap();
    drop(ws);

    post_readings(&app, &id, &sensor, 4).await;
    let mut ws = connect(&app, Some(&app.tenant.access_token)).await;
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "s", "target": target, "from": last }),
    )
    .await;
    let (rest, _) = collect(&mut ws, 9).await;
    assert_consecutive(&rest, 6);
}

#[actix_web::test]
async fn events_of_another_organization_are_never_delivered() {
    let app = common::spawn_app().await;
    let other = common::create_tenant(&app.anonymous, &app.base, "other").await;
    let (id, sensor, _) = app.building_with_sensor("water", "L").await;

    let mut spy = connect(&app, Some(&other.access_token)).await;
    send(
        &mut spy,
        json!({ "type": "subscribe", "id": "all", "target": { "all": true }, "from": 0 }),
    )
    .await;
    send(&mut spy, json!({ "type": "subscribe", "id": "theirs", "target": { "stream": format!("building-{id}") }, "from": 0 })).await;
    post_readings(&app, &id, &sensor, 3).await;

    // The spy's own organization writes last; once that arrives, anything of the first
    // organization would have arrived before it.
    let own = common::client_for(&other)
        .post(app.url("/api/v1/citypulse/buildings"))
        .json(&json!({ "name": "Spy HQ" }))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 201);
    loop {
        let m = recv(&mut spy).await;
        if m["type"] == "event" {
            assert_ne!(m["stream"], format!("building-{id}"), "leaked: {m}");
            assert_eq!(
                m["metadata"]["organization_id"], other.organization_id,
                "{m}"
            );
            if m["event_type"] == "BuildingRegistered" {
                break;
            }
        }
    }
}

#[actix_web::test]
async fn a_bad_token_is_closed_with_a_reason_and_first_message_auth_works() {
    let app = common::spawn_app().await;
    let mut ws = connect(&app, Some("not-a-token")).await;
    let m = recv(&mut ws).await;
    assert_eq!(m["type"], "closed");
    assert!(m["reason"].as_str().unwrap().contains("not valid"), "{m}");

    let mut ws = connect(&app, None).await;
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "x", "target": { "all": true }, "from": "now" }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "unauthenticated");
    send(
        &mut ws,
        json!({ "type": "auth", "token": app.tenant.access_token }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "authenticated");
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "x", "target": { "all": true }, "from": "now" }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
}

#[actix_web::test]
async fn the_connection_after_the_limit_is_refused() {
    let app = common::spawn_app_with(|c| c.ws_max_connections = 2).await;
    let token = app.tenant.access_token.clone();
    let _a = connect(&app, Some(&token)).await;
    let _b = connect(&app, Some(&token)).await;
    let url = format!("{}/api/v1/ws?token={token}", app.base.replace("http", "ws"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[actix_web::test]
async fn malformed_frames_get_errors_and_oversized_ones_a_close_while_others_carry_on() {
    let app = common::spawn_app().await;
    let token = app.tenant.access_token.clone();
    let mut ws = connect(&app, Some(&token)).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "bad_message");
    send(&mut ws, json!({ "type": "launch_missiles" })).await;
    assert_eq!(recv(&mut ws).await["code"], "bad_message");
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "x", "target": { "planet": "mars" }, "from": 0 }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "bad_message");
    send(
        &mut ws,
        json!({ "type": "subscribe", "id": "x", "target": { "all": true }, "from": -4 }),
    )
    .await;
    assert_eq!(recv(&mut ws).await["code"], "bad_from");
    ws.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "unsupported_frame");
    send(&mut ws, json!({ "type": "ping" })).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");

    let mut other = connect(&app, Some(&token)).await;
    ws.send(Message::Text("x".repeat(200 * 1024)))
        .await
        .unwrap();
    let closed = recv(&mut ws).await;
    assert_eq!(closed["type"], "closed");
    assert_eq!(closed["code"], 1009, "{closed}");

    send(&mut other, json!({ "type": "subscribe", "id": "y", "target": { "category": "building" }, "from": "now" })).await;
    assert_eq!(recv(&mut other).await["type"], "subscribed");
}

#[actix_web::test]
async fn a_slow_reader_loses_nothing() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    // More events than the connection's queues hold.
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({ "sensor_id": sensor, "value": i as f64 }))
        .collect();
    let path = format!("/api/v1/citypulse/buildings/{id}/readings");
    futures_util::future::join_all((0..400).map(|_| app.post(&path, json!({ "readings": batch }))))
        .await;
    let mut ws = connect(&app, Some(&app.tenant.access_token)).await;
    send(&mut ws, json!({ "type": "subscribe", "id": "slow", "target": { "stream": format!("building-{id}") }, "from": 0 })).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (events, _) = collect(&mut ws, 402).await;
    assert_consecutive(&events, 1);
}

#[actix_web::test]
async fn a_silent_client_is_dropped_after_two_missed_heartbeats() {
    let app = common::spawn_app_with(|c| c.ws_heartbeat_interval = 1).await;
    let mut ws = connect(&app, Some(&app.tenant.access_token)).await;
    // Read nothing (so no pong goes back) for longer than two intervals.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    loop {
        let m = recv(&mut ws).await;
        if m["type"] == "closed" {
            assert_eq!(m["reason"], "heartbeat timeout");
            break;
        }
    }
}

/// Opens a WebSocket by hand at `path` (client libraries will not declare a frame they do
/// not send), declares a 256 MiB text frame, and returns the code of the server's close
/// frame, skipping the server's other frames (`None` if the connection ends without one).
/// Waits at most 15 s.
pub async fn declare_huge_frame(base: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend((256u64 * 1024 * 1024).to_be_bytes());
    frame.extend([7, 7, 7, 7]);
    // Only the header: the server must act on it without waiting for any of the payload.
    // (Payload bytes the server never reads would make its close reset the connection and
    // could discard the close frame before this test reads it.)
    tcp.write_all(&frame).await.unwrap();
    let read = async {
        loop {
            let mut h = [0u8; 2];
            tcp.read_exact(&mut h).await.ok()?;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    tcp.read_exact(&mut l).await.ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    tcp.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.ok()?;
            if h[0] & 0x0f == 0x8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the server answers the oversized frame's header in time")
}

#[actix_web::test]
async fn a_frame_declared_over_the_limit_is_refused_at_its_header_before_authentication() {
    let app = common::spawn_app().await;
    assert_eq!(
        declare_huge_frame(&app.base, "/api/v1/ws").await,
        Some(1009)
    );
    // And on the Socket.IO gateway.
    let code = declare_huge_frame(&app.base, "/socket.io/?EIO=4&transport=websocket").await;
    assert_eq!(code, Some(1009));
}

#[actix_web::test]
async fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let app = common::spawn_app_with(|c| c.ws_auth_timeout = 1).await;
    let mut ws = connect(&app, None).await;
    let closed = recv(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["reason"], "no authentication received");
}

#[actix_web::test]
async fn a_viewer_follows_building_streams_but_not_the_whole_log_categories_or_other_streams() {
    let app = common::spawn_app().await;
    let viewer = common::add_member(&app, "viewer").await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let mut ws = connect(&app, Some(&viewer.access_token)).await;
    let forbidden = [
        json!({ "all": true }),
        json!({ "category": "building" }),
        json!({ "category": "user" }),
        json!({ "stream": format!("user-{}", app.tenant.user_id) }),
        json!({ "stream": format!("organization-{}", app.tenant.organization_id) }),
    ];
    for (i, target) in forbidden.iter().enumerate() {
        send(
            &mut ws,
            json!({ "type": "subscribe", "id": format!("f{i}"), "target": target, "from": 0 }),
        )
        .await;
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "error", "{target}: {m}");
        assert_eq!(m["code"], "forbidden", "{target}: {m}");
    }
    send(&mut ws, json!({ "type": "subscribe", "id": "b", "target": { "stream": format!("building-{id}") }, "from": 0 })).await;
    post_readings(&app, &id, &sensor, 1).await;
    let (events, _) = collect(&mut ws, 3).await;
    assert_consecutive(&events, 1);

    // The admin may follow the whole log.
    let mut admin = connect(&app, Some(&app.tenant.access_token)).await;
    send(
        &mut admin,
        json!({ "type": "subscribe", "id": "a", "target": { "all": true }, "from": 0 }),
    )
    .await;
    assert_eq!(recv(&mut admin).await["type"], "subscribed");
}

#[actix_web::test]
async fn websocket_and_socket_io_connections_count_against_one_limit() {
    let app = common::spawn_app_with(|c| c.ws_max_connections = 2).await;
    let token = app.tenant.access_token.clone();
    let _native = connect(&app, Some(&token)).await;
    let sio = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        app.base.replace("http", "ws")
    );
    let _gateway = tokio_tungstenite::connect_async(&sio).await.unwrap().0;
    let url = format!("{}/api/v1/ws?token={token}", app.base.replace("http", "ws"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    match tokio_tungstenite::connect_async(&sio).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let polling = app
        .anonymous
        .get(app.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(polling.status(), 503);
}
