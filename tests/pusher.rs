//! The Pusher Channels gateway: the real `pusher-js` client (node build) and the `pusher`
//! server library from npm (tests/pusher, installed by `scripts/test` with `npm ci`) against
//! this server on loopback, often with two server processes on one database; and the
//! protocol's edges by hand over a raw WebSocket and raw HTTP.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use universal_backend::gateways::pusher::{toolbox, Settings, DEV_SECRET};
use universal_backend::Application;

use common::{recv, Socket};

const KEY: &str = "universal-backend-key";
const APP_ID: &str = "universal-backend";

fn settings() -> Settings {
    Settings::new(APP_ID, KEY, common::PUSHER_SECRET)
}

fn script_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pusher");
    assert!(
        dir.join("node_modules/pusher-js").exists() && dir.join("node_modules/pusher").exists(),
        "pusher-js and pusher are not installed: run `npm ci --prefix tests/pusher` (scripts/test does)"
    );
    dir
}

/// Starts `node tests/pusher/<script> <config>`; returns its stdout lines as they come.
fn node(
    script: &str,
    config: &Value,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    std::process::Child,
) {
    let mut child = std::process::Command::new("node")
        .arg(script_dir().join(script))
        .arg(config.to_string())
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

/// The next line the script prints (at most 60 s).
async fn line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("node answers in time")
        .expect("node printed a line (see its stderr above)")
}

/// Runs a script to its end and returns its JSON report.
async fn report(script: &str, config: Value) -> Value {
    let (mut lines, mut child) = node(script, &config);
    let out = line(&mut lines).await;
    let status = actix_web::rt::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{script} failed: {out}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!(report["ok"], true, "{report}");
    report
}

#[actix_web::test]
async fn pusher_js_on_one_process_receives_what_the_pusher_library_publishes_through_another() {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let member = common::add_member(&a, "member").await;
    let org = a.tenant.organization_id.clone();
    // The socket is on B; its subscriptions are signed by A, and events are published to A.
    let report = report(
        "e2e.mjs",
        json!({
            "socketBase": b.base, "authBase": a.base, "apiBase": a.base,
            "appId": APP_ID, "key": KEY, "secret": common::PUSHER_SECRET,
            "token": a.tenant.access_token, "otherToken": member.access_token,
            "orgId": org, "userId": a.tenant.user_id,
        }),
    )
    .await;
    let socket_id = report["socket_id"].as_str().unwrap();
    assert!(
        universal_backend::gateways::pusher::valid_socket_id(socket_id),
        "{report}"
    );
    assert_eq!(report["public"], json!({ "task_id": "t1", "progress": 0 }));
    assert_eq!(
        report["private"],
        json!({ "agent": "content_generator", "status": "busy" })
    );
    assert_eq!(report["presence"], json!({ "text": "hi" }));
    assert_eq!(report["presence_me"], a.tenant.user_id.as_str());
    assert_eq!(report["presence_count"], 1);
    assert_eq!(report["presence_name"], "first");
    assert_eq!(
        report["progress"],
        json!({ "task_id": "t1", "progress": 50 })
    );
    assert_eq!(
        report["generated_length"], 9000,
        "stored, not notified inline"
    );
    assert_eq!(report["failed"], json!({ "task_id": "t1" }));
    assert_eq!(report["excluded_socket_skipped"], true);
    assert_eq!(
        report["channels"],
        json!({ format!("presence-org-{org}"): { "user_count": 1 } })
    );
    assert_eq!(report["bad_signature_status"], 401);
    assert_eq!(report["other_org"]["type"], "AuthError", "{report}");
    assert_eq!(report["other_org"]["status"], 403, "{report}");
    assert_eq!(report["client_event"], json!({ "who": a.tenant.user_id }));
    assert_eq!(report["public_client_event"]["code"], Value::Null);
    assert!(report["public_client_event"]["message"]
        .as_str()
        .unwrap()
        .contains("private and presence channels only"));
}

#[actix_web::test]
async fn presence_counts_users_not_tabs_even_when_the_tabs_are_on_two_processes() {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let member = common::add_member(&a, "member").await;
    let report = report(
        "presence.mjs",
        json!({
            "baseA": a.base, "baseB": b.base, "appId": APP_ID, "key": KEY, "secret": common::PUSHER_SECRET,
            "observerToken": a.tenant.access_token, "userToken": member.access_token,
            "userId": member.user_id, "orgId": a.tenant.organization_id,
        }),
    )
    .await;
    let user = json!([member.user_id]);
    assert_eq!(report["added_after_first_tab"], user, "{report}");
    assert_eq!(
        report["added_after_second_tab"], user,
        "the second tab is not a new member: {report}"
    );
    assert_eq!(report["tab_counts"], json!([2, 2]), "{report}");
    assert_eq!(report["observer_count_with_both"]["subscription_count"], 3);
    assert_eq!(report["observer_count_with_both"]["user_count"], 2);
    assert_eq!(report["observer_count_with_both"]["occupied"], true);
    let mut both = vec![a.tenant.user_id.clone(), member.user_id.clone()];
    both.sort();
    assert_eq!(report["users"], json!(both));
    assert_eq!(
        report["removed_after_first_tab_left"],
        json!([]),
        "{report}"
    );
    assert_eq!(report["removed_when_last_left"], member.user_id.as_str());
    assert_eq!(report["observer_members_at_end"], 1);
}

/// Runs revocation.mjs until it is ready, lets `revoke` take the rights away, and returns
/// the script's report.
async fn revoked_subscription(
    config: Value,
    revoke: impl std::future::Future<Output = ()>,
) -> Value {
    let (mut lines, mut child) = node("revocation.mjs", &config);
    assert_eq!(line(&mut lines).await, "ready");
    revoke.await;
    let out = line(&mut lines).await;
    let status = actix_web::rt::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "revocation.mjs failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"))
}

#[actix_web::test]
async fn a_logout_ends_the_private_subscriptions_it_authorized_and_leaves_the_connection_open() {
    let app = common::spawn_app().await;
    let member = common::add_member(&app, "member").await;
    let config = json!({
        "socketBase": app.base, "authBase": app.base, "apiBase": app.base,
        "appId": APP_ID, "key": KEY, "secret": common::PUSHER_SECRET,
        "token": member.access_token, "orgId": app.tenant.organization_id,
    });
    let report = revoked_subscription(config, async {
        let res = common::client_for(&member)
            .post(app.url("/api/v1/auth/logout"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    })
    .await;
    assert_eq!(
        report["subscription_error"]["type"], "AuthError",
        "{report}"
    );
    assert_eq!(report["subscription_error"]["status"], 401, "{report}");
    assert!(report["subscription_error"]["error"]
        .as_str()
        .unwrap()
        .contains("session has ended"));
    assert_eq!(report["connection_error"]["code"], 4009, "{report}");
    assert_eq!(report["private_event_after_cut"], false);
    assert_eq!(report["state"], "connected");
}

#[actix_web::test]
async fn a_member_removed_through_one_process_loses_the_private_channel_on_another_at_once() {
    let a = common::spawn_app().await;
    let b = common::spawn_second_app(&a).await;
    let member = common::add_member(&a, "member").await;
    let org = a.tenant.organization_id.clone();
    let config = json!({
        "socketBase": b.base, "authBase": b.base, "apiBase": a.base,
        "appId": APP_ID, "key": KEY, "secret": common::PUSHER_SECRET,
        "token": member.access_token, "orgId": org,
    });
    let report = revoked_subscription(config, async {
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
    })
    .await;
    assert!(
        report["subscription_error"]["error"]
            .as_str()
            .unwrap()
            .contains("no longer a member"),
        "{report}"
    );
    assert_eq!(report["connection_error"]["code"], 4009, "{report}");
    assert_eq!(report["private_event_after_cut"], false);
}

// ---------------------------------------------------------------------------------------
// The protocol by hand

async fn raw(base: &str, key: &str, query: &str) -> Socket {
    let url = format!("{}/app/{key}?{query}", base.replace("http", "ws"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Socket, msg: Value) {
    ws.send(Message::Text(msg.to_string())).await.unwrap();
}

/// The data of a Pusher frame, decoded when it is a JSON string.
fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

async fn established(ws: &mut Socket) -> Value {
    let m = recv(ws).await;
    assert_eq!(m["event"], "pusher:connection_established", "{m}");
    data(&m)
}

#[actix_web::test]
async fn an_unknown_key_or_protocol_is_refused_with_the_protocols_error_and_close_codes() {
    let app = common::spawn_app().await;
    let mut ws = raw(
        &app.base,
        "not-our-key",
        "protocol=7&client=js&version=8.6.0",
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher:error");
    assert_eq!(m["data"]["code"], 4001);
    assert_eq!(recv(&mut ws).await["code"], 4001);

    let mut ws = raw(&app.base, KEY, "protocol=4").await;
    assert_eq!(recv(&mut ws).await["data"]["code"], 4007);
    assert_eq!(recv(&mut ws).await["code"], 4007);

    // Not a WebSocket handshake at all: the JSON error shape.
    let res = app
        .anonymous
        .get(app.url(&format!("/app/{KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[actix_web::test]
async fn pings_are_answered_and_a_silent_client_is_pinged_then_closed_with_4201() {
    let app = common::spawn_app_with(|c| c.ws_heartbeat_interval = 1).await;
    let mut ws = raw(&app.base, KEY, "protocol=7").await;
    let hello = established(&mut ws).await;
    assert_eq!(hello["activity_timeout"], 1);
    send(&mut ws, json!({ "event": "pusher:ping", "data": {} })).await;
    assert_eq!(recv(&mut ws).await["event"], "pusher:pong");
    // Now silent: the server pings once, then gives up.
    assert_eq!(recv(&mut ws).await["event"], "pusher:ping");
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher:error");
    assert_eq!(m["data"]["code"], 4201);
    assert_eq!(recv(&mut ws).await["code"], 4201);
}

#[actix_web::test]
async fn at_the_shared_connection_cap_a_pusher_client_is_told_4100_and_may_back_off() {
    let app = common::spawn_app_with(|c| c.ws_max_connections = 1).await;
    let mut first = raw(&app.base, KEY, "protocol=7").await;
    established(&mut first).await;
    let mut second = raw(&app.base, KEY, "protocol=7").await;
    assert_eq!(recv(&mut second).await["data"]["code"], 4100);
    assert_eq!(recv(&mut second).await["code"], 4100);
    // The native socket shares the cap.
    let res = app
        .anonymous
        .get(app.url("/api/v1/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

#[actix_web::test]
async fn client_messages_over_the_per_connection_rate_are_refused_on_every_socket_endpoint() {
    let app = common::spawn_app_with(|c| c.ws_rate_limit_per_minute = 3).await;

    // Pusher: 4301, and the connection stays.
    let mut ws = raw(&app.base, KEY, "protocol=7").await;
    established(&mut ws).await;
    for _ in 0..3 {
        send(&mut ws, json!({ "event": "pusher:ping", "data": {} })).await;
        assert_eq!(recv(&mut ws).await["event"], "pusher:pong");
    }
    send(&mut ws, json!({ "event": "pusher:ping", "data": {} })).await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher:error", "{m}");
    assert_eq!(m["data"]["code"], 4301, "{m}");

    // The native event stream: an error message, and the connection stays.
    let url = format!(
        "{}/api/v1/ws?token={}",
        app.base.replace("http", "ws"),
        app.tenant.access_token
    );
    let mut native = tokio_tungstenite::connect_async(url).await.unwrap().0;
    for _ in 0..3 {
        send(&mut native, json!({ "type": "ping" })).await;
        assert_eq!(recv(&mut native).await["type"], "pong");
    }
    send(&mut native, json!({ "type": "ping" })).await;
    assert_eq!(recv(&mut native).await["code"], "rate_limited");

    // Socket.IO over its WebSocket transport: the session is closed.
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        app.base.replace("http", "ws")
    );
    let mut sio = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let connect = format!(
        "40/citypulse,{}",
        json!({ "token": app.tenant.access_token })
    );
    sio.send(Message::Text(connect)).await.unwrap();
    for _ in 0..3 {
        sio.send(Message::Text("42/citypulse,[\"hello\"]".into()))
            .await
            .unwrap();
    }
    let reason = loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), sio.next())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(Message::Close(c))) => break c.map(|c| c.reason.to_string()),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .contains("too many messages"),
        "{reason:?}"
    );
}

#[actix_web::test]
async fn server_code_publishes_through_the_hub_and_the_subscriber_of_another_process_receives_it() {
    let first = common::spawn_app().await;
    // A second application on the same database, built here to reach its state.
    let second = Application::build(common::test_config(first.database_url.clone()))
        .await
        .unwrap();
    let state = second.state();
    actix_web::rt::spawn(second.run_until_stopped());

    let mut ws = raw(&first.base, KEY, "protocol=7").await;
    established(&mut ws).await;
    send(
        &mut ws,
        json!({ "event": "pusher:subscribe", "data": { "channel": "content-generation" } }),
    )
    .await;
    let ok = recv(&mut ws).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(ok["channel"], "content-generation");

    let progress = json!({ "task_id": "t9", "progress": 75 });
    state
        .pusher
        .publish(
            toolbox::CONTENT_GENERATION,
            toolbox::GENERATION_PROGRESS,
            &progress,
        )
        .await
        .unwrap();
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "generation-progress");
    assert_eq!(m["channel"], "content-generation");
    assert!(
        m["data"].is_string(),
        "data is a JSON string, as from Pusher: {m}"
    );
    assert_eq!(data(&m), progress);

    // Client events are refused on a public channel and the channel must be subscribed.
    send(
        &mut ws,
        json!({ "event": "client-x", "channel": "private-org-x", "data": {} }),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher:error", "{m}");
    // A private subscription without a valid signature is refused on its channel.
    send(
        &mut ws,
        json!({ "event": "pusher:subscribe", "data": { "channel": "private-org-x", "auth": format!("{KEY}:00") } }),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(m["channel"], "private-org-x");
    assert_eq!(m["data"]["status"], 401);
}

// ---------------------------------------------------------------------------------------
// The HTTP API and the auth endpoint by hand

async fn signed_post(app: &common::TestApp, path: &str, body: &Value) -> reqwest::Response {
    let body = body.to_string();
    let now = chrono::Utc::now().timestamp();
    let query = settings().sign_request("POST", path, body.as_bytes(), now);
    app.anonymous
        .post(app.url(&format!("{path}?{query}")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn the_events_api_checks_signature_timestamp_app_sizes_and_names() {
    let app = common::spawn_app().await;
    let events = format!("/apps/{APP_ID}/events");
    let good =
        json!({ "name": "generation-started", "channel": "content-generation", "data": "{}" });
    let res = signed_post(&app, &events, &good).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({}));

    // A tampered body no longer matches body_md5 and the signature.
    let body = good.to_string();
    let now = chrono::Utc::now().timestamp();
    let query = settings().sign_request("POST", &events, body.as_bytes(), now);
    let tampered = body.replace("started", "finished");
    let res = app
        .anonymous
        .post(app.url(&format!("{events}?{query}")))
        .header("content-type", "application/json")
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_signature"
    );
    // Signed with another secret.
    let forged = Settings::new(APP_ID, KEY, "another-secret").sign_request(
        "POST",
        &events,
        body.as_bytes(),
        now,
    );
    let res = app
        .anonymous
        .post(app.url(&format!("{events}?{forged}")))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Signed eleven minutes ago.
    let stale = settings().sign_request("POST", &events, body.as_bytes(), now - 660);
    let res = app
        .anonymous
        .post(app.url(&format!("{events}?{stale}")))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let msg = res.json::<Value>().await.unwrap()["error"]["message"].clone();
    assert!(msg.as_str().unwrap().contains("auth_timestamp"), "{msg}");
    // No signature at all.
    let res = app
        .anonymous
        .post(app.url(&events))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Another app.
    let res = signed_post(&app, "/apps/other/events", &good).await;
    assert_eq!(res.status(), 404);

    // Data over 10 KB, a bad channel name, too many channels, and an empty or oversized batch.
    let big = json!({ "name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1) });
    assert_eq!(signed_post(&app, &events, &big).await.status(), 413);
    let bad = json!({ "name": "e", "channel": "no spaces", "data": "" });
    let res = signed_post(&app, &events, &bad).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["details"]["field"],
        "channels"
    );
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let res = signed_post(
        &app,
        &events,
        &json!({ "name": "e", "channels": many, "data": "" }),
    )
    .await;
    assert_eq!(res.status(), 422);
    let reserved = json!({ "name": "pusher:subscribe", "channel": "c", "data": "" });
    assert_eq!(signed_post(&app, &events, &reserved).await.status(), 422);
    let not_json = app
        .anonymous
        .post(app.url(&format!(
            "{events}?{}",
            settings().sign_request("POST", &events, b"{", now)
        )))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);

    let batch_path = format!("/apps/{APP_ID}/batch_events");
    let eleven: Vec<Value> = (0..11)
        .map(|_| json!({ "name": "e", "channel": "c", "data": "" }))
        .collect();
    assert_eq!(
        signed_post(&app, &batch_path, &json!({ "batch": eleven }))
            .await
            .status(),
        422
    );
    let two = json!({ "batch": [
        { "name": "e", "channel": "c", "data": "1" },
        { "name": "e", "channel": "d", "data": "2", "info": "subscription_count" },
    ]});
    let res = signed_post(&app, &batch_path, &two).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({ "batch": [{}, { "subscription_count": 0 }] })
    );

    // Reading channels is signed too.
    let path = format!("/apps/{APP_ID}/channels");
    let query = settings().sign_request("GET", &path, b"", now);
    let res = app
        .anonymous
        .get(app.url(&format!("{path}?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({ "channels": {} })
    );
    let res = app.anonymous.get(app.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[actix_web::test]
async fn the_auth_endpoint_signs_only_the_callers_own_channels() {
    let app = common::spawn_app().await;
    let org = &app.tenant.organization_id;
    let user = &app.tenant.user_id;
    let socket = "1234.5678";
    let form = |channel: &str| format!("socket_id={socket}&channel_name={channel}");

    // pusher-js sends a form.
    let channel = format!("private-org-{org}");
    let res = app
        .client
        .post(app.url("/pusher/auth"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&channel))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["auth"],
        settings().channel_auth(socket, &channel, None)
    );
    assert!(body.get("channel_data").is_none());

    // JSON works too; presence answers the signed channel_data of the caller.
    let channel = format!("presence-org-{org}");
    let res = app
        .client
        .post(app.url("/pusher/auth"))
        .json(&json!({ "socket_id": socket, "channel_name": channel }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let channel_data = body["channel_data"].as_str().unwrap();
    assert_eq!(
        body["auth"],
        settings().channel_auth(socket, &channel, Some(channel_data))
    );
    let member: Value = serde_json::from_str(channel_data).unwrap();
    assert_eq!(member["user_id"], user.as_str());
    assert_eq!(member["user_info"]["role"], "admin");

    let own = format!("private-user-{user}");
    let res = app
        .client
        .post(app.url("/pusher/auth"))
        .json(&json!({ "socket_id": socket, "channel_name": own }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    for (channel, status) in [
        (format!("private-org-{}", uuid::Uuid::new_v4()), 403),
        (format!("private-user-{}", uuid::Uuid::new_v4()), 403),
        ("private-anything".to_owned(), 403),
        ("content-generation".to_owned(), 422),
        ("private-encrypted-x".to_owned(), 422),
        ("bad name".to_owned(), 422),
    ] {
        let res = app
            .client
            .post(app.url("/pusher/auth"))
            .json(&json!({ "socket_id": socket, "channel_name": channel }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{channel}");
    }
    let res = app
        .client
        .post(app.url("/pusher/auth"))
        .json(&json!({ "socket_id": "1234", "channel_name": format!("private-org-{org}") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let res = app
        .anonymous
        .post(app.url("/pusher/auth"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&format!("private-org-{org}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[actix_web::test]
async fn presence_members_of_a_process_that_stopped_beating_are_swept_and_announced_gone() {
    let app = common::spawn_app_with(|c| c.ws_heartbeat_interval = 1).await;
    let channel = "presence-org-sweep";
    let mut ws = raw(&app.base, KEY, "protocol=7").await;
    let socket_id = established(&mut ws).await["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Signed by server code with the secret (no grant from /pusher/auth).
    let member = json!({ "user_id": "observer", "user_info": { "name": "O" } }).to_string();
    let auth = settings().channel_auth(&socket_id, channel, Some(&member));
    send(
        &mut ws,
        json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": auth, "channel_data": member } }),
    )
    .await;
    let ok = recv(&mut ws).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(data(&ok)["presence"]["ids"], json!(["observer"]));

    // A process that died a minute ago left a member behind.
    let ghost_node = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pusher_nodes (node, seen_at) VALUES ($1, now() - interval '1 minute')",
    )
    .bind(ghost_node)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO pusher_subscriptions (socket_id, channel, node, user_id, user_info) \
         VALUES ('1.2', $1, $2, 'ghost', '{}')",
    )
    .bind(channel)
    .bind(ghost_node)
    .execute(&app.pool)
    .await
    .unwrap();
    // The next sweep (every heartbeat) removes it and tells the channel.
    loop {
        let m = recv(&mut ws).await;
        if m["event"] == "pusher:ping" {
            send(&mut ws, json!({ "event": "pusher:pong", "data": {} })).await;
            continue;
        }
        assert_eq!(m["event"], "pusher_internal:member_removed", "{m}");
        assert_eq!(data(&m), json!({ "user_id": "ghost" }));
        break;
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pusher_subscriptions WHERE node = $1")
        .bind(ghost_node)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[actix_web::test]
async fn a_client_that_reads_nothing_is_closed_when_its_queue_fills_instead_of_being_buffered() {
    let app = Application::build(common::test_config(common::fresh_database_url()))
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    actix_web::rt::spawn(app.run_until_stopped());
    let mut ws = raw(&base, KEY, "protocol=7").await;
    established(&mut ws).await;
    send(
        &mut ws,
        json!({ "event": "pusher:subscribe", "data": { "channel": "content-generation" } }),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // About 21 MB while the client reads nothing: far more than its queue (256 frames), the
    // socket's channel and the kernel's buffers hold.
    let pad = "x".repeat(7000);
    let total = 3000;
    for i in 0..total {
        state
            .pusher
            .publish(
                "content-generation",
                "generation-progress",
                &json!({ "i": i, "pad": pad }),
            )
            .await
            .unwrap();
    }
    let mut received = 0;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("frames or the end in time");
        match frame {
            Some(Ok(Message::Text(_))) => received += 1,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(
        received < total,
        "the server buffered {received} of {total} frames for a client that read nothing"
    );
}

#[actix_web::test]
async fn without_pusher_secret_the_public_default_signs_nothing_and_processes_share_a_generated_one(
) {
    let a = common::spawn_app_with(|c| c.pusher_secret = None).await;
    let b = common::spawn_second_app_with(&a, |c| c.pusher_secret = None).await;
    let org = &a.tenant.organization_id;
    let channel = format!("private-org-{org}");
    let mut ws = raw(&b.base, KEY, "protocol=7").await;
    let socket_id = established(&mut ws).await["socket_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Anyone could compute this signature: it is refused.
    let forged = Settings::new(APP_ID, KEY, DEV_SECRET).channel_auth(&socket_id, &channel, None);
    send(
        &mut ws,
        json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": forged } }),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(m["channel"], channel.as_str(), "{m}");
    assert_eq!(m["data"]["status"], 401, "{m}");

    // The auth endpoint of one process signs with the secret the other checks.
    let res = a
        .client
        .post(a.url("/pusher/auth"))
        .json(&json!({ "socket_id": socket_id, "channel_name": channel }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let signed: Value = res.json().await.unwrap();
    assert_ne!(signed["auth"], forged.as_str());
    send(
        &mut ws,
        json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": signed["auth"] } }),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
    assert_eq!(m["channel"], channel.as_str(), "{m}");
}
