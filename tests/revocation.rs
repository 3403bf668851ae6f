//! Rights taken away through one server process reach the others at once: open sockets
//! are closed or cut, and HTTP requests are refused, although the access token itself is
//! still valid. Two `Application`s share one database, as two processes would.

mod common;

use std::io::BufRead;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{recv, Socket};

async fn connect(base: &str, token: &str) -> Socket {
    let url = format!("{}/api/v1/ws?token={token}", base.replace("http", "ws"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Subscribes to the building's stream from now on and waits for the confirmation.
async fn follow_building(ws: &mut Socket, id: &str, sub: &str) {
    let msg = json!({ "type": "subscribe", "id": sub, "target": { "stream": format!("building-{id}") }, "from": "now" });
    ws.send(Message::Text(msg.to_string())).await.unwrap();
    let m = recv(ws).await;
    assert_eq!(m["type"], "subscribed", "{m}");
}

/// Skips events until a message that is not an event.
async fn next_non_event(ws: &mut Socket) -> Value {
    loop {
        let m = recv(ws).await;
        if m["type"] != "event" && m["type"] != "caught_up" {
            return m;
        }
    }
}

async fn write_reading(base: &str, token: &str, id: &str, sensor: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/citypulse/buildings/{id}/readings"))
        .bearer_auth(token)
        .header("x-frontend-source", "citypulse")
        .json(&json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] }))
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_logout_through_one_process_closes_the_socket_held_on_another_and_ends_the_token_there() {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let (id, sensor, _) = a.building_with_sensor("electricity", "kWh").await;
    let token = a.tenant.access_token.clone();
    let mut ws = connect(&b.base, &token).await;
    follow_building(&mut ws, &id, "b").await;
    assert_eq!(
        write_reading(&b.base, &token, &id, &sensor).await.status(),
        201
    );

    let res = a
        .client
        .post(a.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let closed = next_non_event(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .contains("session has ended"),
        "{closed}"
    );
    let res = write_reading(&b.base, &token, &id, &sensor).await;
    assert_eq!(res.status(), 401);
}

#[actix_web::test]
async fn a_member_removed_through_one_process_is_disconnected_and_refused_on_another() {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let (id, sensor, _) = a.building_with_sensor("electricity", "kWh").await;
    let member = common::add_member(&a, "member").await;
    let mut ws = connect(&b.base, &member.access_token).await;
    follow_building(&mut ws, &id, "b").await;
    let res = write_reading(&b.base, &member.access_token, &id, &sensor).await;
    assert_eq!(res.status(), 201);

    let org = &a.tenant.organization_id;
    let res = a
        .client
        .delete(a.url(&format!(
            "/api/v1/organizations/{org}/members/{}",
            member.user_id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let closed = next_non_event(&mut ws).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .contains("no longer a member"),
        "{closed}"
    );
    let res = write_reading(&b.base, &member.access_token, &id, &sensor).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "membership_revoked");
}

#[actix_web::test]
async fn disabling_citypulse_through_one_process_cuts_building_streams_and_refuses_writes_on_another(
) {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let (id, sensor, _) = a.building_with_sensor("electricity", "kWh").await;
    let token = a.tenant.access_token.clone();
    let mut ws = connect(&b.base, &token).await;
    follow_building(&mut ws, &id, "b").await;

    let org = &a.tenant.organization_id;
    let res = a
        .client
        .put(a.url(&format!("/api/v1/organizations/{org}/frontends")))
        .json(&json!({ "frontend": "citypulse", "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cut = next_non_event(&mut ws).await;
    assert_eq!(cut["type"], "error", "{cut}");
    assert_eq!(cut["code"], "access_revoked", "{cut}");
    assert_eq!(cut["subscription"], "b", "{cut}");
    let res = write_reading(&b.base, &token, &id, &sensor).await;
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "frontend_access_denied");
}

#[actix_web::test]
async fn the_process_that_changed_rights_refuses_the_very_next_request() {
    let app = common::spawn_app().await;
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let member = common::add_member(&app, "member").await;
    let org = &app.tenant.organization_id;
    let res = write_reading(&app.base, &member.access_token, &id, &sensor).await;
    assert_eq!(res.status(), 201);

    // Demoted to viewer: may read, may no longer write.
    let res = app
        .client
        .post(app.url(&format!("/api/v1/organizations/{org}/members")))
        .json(&json!({ "user_id": member.user_id, "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = write_reading(&app.base, &member.access_token, &id, &sensor).await;
    assert_eq!(res.status(), 403);

    // CityPulse disabled: the admin's own next request is refused.
    let res = app
        .client
        .put(app.url(&format!("/api/v1/organizations/{org}/frontends")))
        .json(&json!({ "frontend": "citypulse", "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = write_reading(&app.base, &app.tenant.access_token, &id, &sensor).await;
    assert_eq!(res.status(), 403);
    let (status, _) = app.get_json("/api/v1/citypulse/buildings").await;
    assert_eq!(status, 403);
}

/// Runs `node tests/socketio/<script> args…`; returns its stdout lines as they come and
/// the process, to wait on.
fn node(
    script: &str,
    args: &[String],
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    std::process::Child,
) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let mut child = std::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (rx, child)
}

async fn line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("node answers in time")
        .expect("node printed a line")
}

#[actix_web::test]
async fn a_socket_io_client_on_another_process_is_disconnected_when_citypulse_is_disabled_or_it_logs_out(
) {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let (id, _, _) = a.building_with_sensor("electricity", "kWh").await;
    let member = common::add_member(&a, "member").await;

    // Logout of the member through A.
    let (mut lines, mut first) = node(
        "revocation.mjs",
        &[b.base.clone(), member.access_token.clone(), id.clone()],
    );
    assert_eq!(line(&mut lines).await, "ready");
    let res = common::client_for(&member)
        .post(a.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let out: Value = serde_json::from_str(&line(&mut lines).await).unwrap();
    assert_eq!(out["reason"], "io server disconnect");
    assert!(first.wait().unwrap().success());

    // CityPulse disabled through A, for the admin's connection on B.
    let (mut lines, mut second) = node(
        "revocation.mjs",
        &[b.base.clone(), a.tenant.access_token.clone(), id.clone()],
    );
    assert_eq!(line(&mut lines).await, "ready");
    let org = &a.tenant.organization_id;
    let res = a
        .client
        .put(a.url(&format!("/api/v1/organizations/{org}/frontends")))
        .json(&json!({ "frontend": "citypulse", "enabled": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let out: Value = serde_json::from_str(&line(&mut lines).await).unwrap();
    assert_eq!(out["reason"], "io server disconnect");
    assert!(second.wait().unwrap().success());
}

#[actix_web::test]
async fn an_admin_demoted_through_one_process_loses_the_whole_log_on_another_but_keeps_building_streams(
) {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let (id, sensor, _) = a.building_with_sensor("electricity", "kWh").await;
    let second_admin = common::add_member(&a, "admin").await;
    let mut ws = connect(&b.base, &second_admin.access_token).await;
    follow_building(&mut ws, &id, "b").await;
    let all = json!({ "type": "subscribe", "id": "all", "target": { "all": true }, "from": "now" });
    ws.send(Message::Text(all.to_string())).await.unwrap();
    assert_eq!(next_non_event(&mut ws).await["type"], "subscribed");

    let org = &a.tenant.organization_id;
    let res = a
        .client
        .post(a.url(&format!("/api/v1/organizations/{org}/members")))
        .json(&json!({ "user_id": second_admin.user_id, "role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cut = next_non_event(&mut ws).await;
    assert_eq!(cut["code"], "access_revoked", "{cut}");
    assert_eq!(cut["subscription"], "all", "{cut}");

    // The building stream carries on: a member still reads it.
    let res = write_reading(&a.base, &a.tenant.access_token, &id, &sensor).await;
    assert_eq!(res.status(), 201);
    loop {
        let m = recv(&mut ws).await;
        if m["type"] == "event" && m["event_type"] == "ReadingsRecorded" {
            assert_eq!(m["subscription"], "b", "{m}");
            break;
        }
        assert!(m["type"] == "event" || m["type"] == "caught_up", "{m}");
    }
}
