//! The Socket.IO gateway against the real `socket.io-client` from npm (tests/socketio), and
//! the Engine.IO polling transport by hand. `scripts/test` installs the client (`npm ci`);
//! Node must be on the PATH.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `node tests/socketio/e2e.mjs <base> <token> <mode>` and returns its JSON report.
async fn e2e(app: &common::TestApp, mode: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let args = [
        dir.join("e2e.mjs").display().to_string(),
        app.base.clone(),
        app.tenant.access_token.clone(),
        mode.to_owned(),
    ];
    let output = actix_web::rt::task::spawn_blocking(move || {
        Command::new("node").args(args).output().expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node e2e failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"))
}

#[actix_web::test]
async fn the_real_socket_io_client_in_its_default_configuration_polls_upgrades_and_receives_updates(
) {
    let app = common::spawn_app().await;
    let report = e2e(&app, "default").await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["first_transport"], "polling", "{report}");
    assert_eq!(report["upgraded"], true, "{report}");
    assert_eq!(report["transport"], "websocket", "{report}");
}

#[actix_web::test]
async fn the_real_socket_io_client_over_websocket_only_joins_a_building_and_receives_energy_updates(
) {
    // Without the CityPulse read models at all, a join can only succeed by seeing the
    // caller's own write in the log (the script joins right after creating the building).
    let app = common::spawn_app_with(|c| c.projections = "identity".into()).await;
    let report = e2e(&app, "websocket").await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["first_transport"], "websocket", "{report}");
}

#[actix_web::test]
async fn the_real_socket_io_client_over_long_polling_only_receives_updates_in_its_polls() {
    let app = common::spawn_app().await;
    let report = e2e(&app, "polling").await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["transport"], "polling", "{report}");
}

/// One GET of the polling transport: (status, body).
async fn poll(app: &common::TestApp, query: &str) -> (u16, String) {
    let res = app
        .anonymous
        .get(app.url(&format!("/socket.io/?EIO=4&transport=polling{query}")))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[actix_web::test]
async fn a_polling_session_that_connects_no_namespace_in_time_is_closed_and_its_id_forgotten() {
    let app = common::spawn_app_with(|c| c.ws_auth_timeout = 1).await;
    let (status, open) = poll(&app, "").await;
    assert_eq!(status, 200, "{open}");
    assert!(open.starts_with('0'), "{open}");
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    let sid = open["sid"].as_str().unwrap().to_owned();
    // Poll until the session ends: a close packet, or (once gone) Engine.IO's unknown-sid
    // error. Each poll is answered at the latest by the next ping; the loop is bounded.
    let mut ended = false;
    for _ in 0..10 {
        let (status, body) = poll(&app, &format!("&sid={sid}")).await;
        if status == 400 {
            let err: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(err["code"], 1, "{body}");
            ended = true;
            break;
        }
        assert_eq!(status, 200, "{body}");
        if body.split('\u{1e}').any(|p| p == "1") {
            ended = true;
            break;
        }
    }
    assert!(ended, "the session was not closed");
    let (status, body) = poll(&app, &format!("&sid={sid}")).await;
    assert_eq!(status, 400, "{body}");
}

#[actix_web::test]
async fn polling_packets_posted_to_an_unknown_session_get_the_engine_io_error() {
    let app = common::spawn_app().await;
    let res = app
        .anonymous
        .post(app.url("/socket.io/?EIO=4&transport=polling&sid=nope"))
        .body("40/citypulse,")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], 1);
    assert_eq!(body["message"], "Session ID unknown");
}

/// Posts Engine.IO packets to a polling session.
async fn post(app: &common::TestApp, sid: &str, packets: &str) {
    let res = app
        .anonymous
        .post(app.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")))
        .body(packets.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

#[actix_web::test]
async fn a_polling_session_lives_on_pongs_over_polling_and_ends_when_they_stop() {
    let app = common::spawn_app_with(|c| c.ws_heartbeat_interval = 1).await;
    let (status, open) = poll(&app, "").await;
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(open["pingInterval"], 1000);
    let sid = open["sid"].as_str().unwrap().to_owned();
    let token = &app.tenant.access_token;
    post(
        &app,
        &sid,
        &format!("40/citypulse,{{\"token\":\"{token}\"}}"),
    )
    .await;

    // Answer three pings over polling (each poll waits at most a ping interval).
    let mut connected = false;
    let mut pongs = 0;
    while pongs < 3 {
        let (status, body) = poll(&app, &format!("&sid={sid}")).await;
        assert_eq!(status, 200, "{body}");
        for packet in body.split('\u{1e}') {
            match packet {
                "2" => {
                    post(&app, &sid, "3").await;
                    pongs += 1;
                }
                p if p.starts_with("40/citypulse,") => connected = true,
                "6" => {}
                other => panic!("unexpected packet {other}"),
            }
        }
    }
    assert!(connected);
    // Stop answering: the session ends (a close packet, or the id is forgotten).
    let mut ended = false;
    for _ in 0..10 {
        let (status, body) = poll(&app, &format!("&sid={sid}")).await;
        if status == 400 || body.split('\u{1e}').any(|p| p == "1") {
            ended = true;
            break;
        }
    }
    assert!(ended, "a session without pongs was not closed");
}

#[actix_web::test]
async fn every_event_sent_with_an_ack_id_is_answered_however_malformed() {
    let app = common::spawn_app().await;
    let (status, open) = poll(&app, "").await;
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let token = &app.tenant.access_token;
    post(
        &app,
        &sid,
        &format!("40/citypulse,{{\"token\":\"{token}\"}}"),
    )
    .await;
    let events = [
        "42/citypulse,1[broken",
        "42/citypulse,2{\"not\":\"an array\"}",
        "42/citypulse,3[7,\"x\"]",
        "42/citypulse,4",
        "42/citypulse,5[\"join_building\",42]",
        "42/citypulse,6[\"no:such:event\"]",
        "42/flowmind,7[\"join_session\",\"x\"]",
        "42/nowhere,8[\"x\"]",
    ];
    post(&app, &sid, &events.join("\u{1e}")).await;

    // Collect the acks (`43<nsp>,<id>[answer]`); each poll returns once packets are queued.
    let mut acks = std::collections::BTreeMap::new();
    for _ in 0..20 {
        if acks.len() == events.len() {
            break;
        }
        let (status, body) = poll(&app, &format!("&sid={sid}")).await;
        assert_eq!(status, 200, "{body}");
        for packet in body.split('\u{1e}') {
            if packet == "2" {
                post(&app, &sid, "3").await;
            }
            let Some(rest) = packet.strip_prefix("43/") else {
                continue;
            };
            let (nsp, rest) = rest.split_once(',').unwrap();
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            let id: u64 = rest[..digits].parse().unwrap();
            let answer: Value = serde_json::from_str(&rest[digits..]).unwrap();
            acks.insert(id, (nsp.to_owned(), answer[0].clone()));
        }
    }
    assert_eq!(
        acks.keys().copied().collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>(),
        "{acks:?}"
    );
    for (id, (nsp, answer)) in &acks {
        assert_eq!(answer["ok"], false, "{id}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: {answer}"));
        let expected = match id {
            1 => "not JSON",
            2 | 4 => "an event is an array",
            3 => "name must be a string",
            5 => "a building id is required",
            6 => "unknown event `no:such:event`",
            7 => "not connected to /flowmind",
            _ => "Invalid namespace",
        };
        assert!(error.contains(expected), "{id}: {answer}");
        let want = match id {
            7 => "flowmind",
            8 => "nowhere",
            _ => "citypulse",
        };
        assert_eq!(nsp, want, "{id}");
    }
}
