//! The Socket.IO gateway against the real `socket.io-client` from npm (tests/socketio).
//! `scripts/test` installs it (`npm ci`); Node must be on the PATH.

mod common;

use std::path::Path;
use std::process::Command;

#[actix_web::test]
async fn the_real_socket_io_client_joins_a_building_and_receives_energy_updates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let app = common::spawn_app().await;
    let (building, sensor, position) = app.building_with_sensor("electricity", "kWh").await;
    // The building must be in the read model before a client may join its room.
    let (status, _) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{building}?min_position={position}"
        ))
        .await;
    assert_eq!(status, 200);

    let args = [
        dir.join("e2e.mjs").display().to_string(),
        app.base.clone(),
        app.tenant.access_token.clone(),
        building,
        sensor,
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
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
}
