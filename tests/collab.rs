//! FluxStudio's collaborative documents against the real `yjs` + `y-websocket` clients from
//! npm (tests/collab, installed by `npm ci` in scripts/test; Node must be on the PATH): two
//! processes converging, offline edits, viewers, revocation, time travel and restore,
//! malformed input, a document that does not load, and a server killed with SIGKILL.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{add_member, enable_frontend, frontend_client, spawn_app_with, TestApp};
use serde_json::{json, Value};

const MAX_FRAME: usize = 64 * 1024;

/// Runs `node tests/collab/e2e.mjs <mode> <config>` and returns its JSON report.
async fn e2e(mode: &str, config: Value) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/collab");
    assert!(
        dir.join("node_modules/y-websocket").exists(),
        "y-websocket is not installed: run `npm ci` in tests/collab (scripts/test does)"
    );
    let args = [
        dir.join("e2e.mjs").display().to_string(),
        mode.to_owned(),
        config.to_string(),
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
        "node {mode} failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{stdout}"))
}

/// A tenant with FluxStudio on, a project with its creator (an admin) and two more members
/// (a member and a viewer), a document, and an organization member outside the project.
struct Setup {
    app: TestApp,
    project: String,
    doc: String,
    tokens: Value,
    ids: Value,
}

async fn setup(tune: impl FnOnce(&mut universal_backend::config::Config)) -> Setup {
    let app = spawn_app_with(|c| {
        c.collab_max_frame_bytes = MAX_FRAME;
        tune(c);
    })
    .await;
    let org = app.tenant.organization_id.clone();
    enable_frontend(&app, &app.client, &org, "fluxstudio").await;
    let admin = frontend_client(&app.tenant.access_token, "fluxstudio");
    let res = admin
        .post(app.url("/api/v1/projects"))
        .json(&json!({ "name": "Launch" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let project = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tokens = json!({ "editor": app.tenant.access_token });
    let mut ids = json!({});
    for (name, role, in_project) in [
        ("editor2", "member", true),
        ("viewer", "viewer", true),
        ("outsider", "member", false),
        ("logout", "member", true),
        ("grantee", "viewer", false),
        ("removed", "member", true),
    ] {
        let t = add_member(&app, role).await;
        if in_project {
            let res = admin
                .post(app.url(&format!("/api/v1/projects/{project}/members")))
                .json(&json!({ "user_id": t.user_id }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "add {name} to the project");
        }
        tokens[name] = json!(t.access_token);
        ids[name] = json!(t.user_id);
    }
    let res = admin
        .post(app.url(&format!("/api/v1/projects/{project}/documents")))
        .json(&json!({ "name": "Brief" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let doc = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Setup {
        app,
        project,
        doc,
        tokens,
        ids,
    }
}

impl Setup {
    fn config(&self, bases: &[&str]) -> Value {
        json!({
            "bases": bases,
            "doc": self.doc,
            "project": self.project,
            "tokens": self.tokens,
            "grantee_id": self.ids["grantee"],
            "removed_id": self.ids["removed"],
            "max_frame": MAX_FRAME,
        })
    }

    fn admin(&self) -> reqwest::Client {
        frontend_client(&self.app.tenant.access_token, "fluxstudio")
    }

    async fn versions(&self) -> Vec<Value> {
        let res = self
            .admin()
            .get(
                self.app
                    .url(&format!("/api/v1/documents/{}/versions", self.doc)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["items"]
            .as_array()
            .unwrap()
            .clone()
    }
}

#[actix_web::test]
async fn documents_are_listed_per_project_and_bad_input_is_refused() {
    let s = setup(|_| {}).await;
    let admin = s.admin();
    let res = admin
        .get(s.app.url(&format!(
            "/api/v1/projects/{}/documents?min_position={}",
            s.project,
            s.app.head().await
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["items"][0]["id"], s.doc.as_str());
    assert_eq!(list["items"][0]["name"], "Brief");
    let res = admin
        .post(
            s.app
                .url(&format!("/api/v1/projects/{}/documents", s.project)),
        )
        .json(&json!({ "name": "" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let res = admin
        .post(s.app.url(&format!(
            "/api/v1/projects/{}/documents",
            uuid::Uuid::new_v4()
        )))
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let outsider = frontend_client(s.tokens["outsider"].as_str().unwrap(), "fluxstudio");
    let res = outsider
        .get(s.app.url(&format!("/api/v1/documents/{}", s.doc)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = admin
        .get(
            s.app
                .url(&format!("/api/v1/documents/{}?version=99", s.doc)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = admin
        .post(s.app.url(&format!("/api/v1/documents/{}/restore", s.doc)))
        .json(&json!({ "version": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    // Not a document id: no upgrade.
    let res = s
        .app
        .anonymous
        .get(s.app.url("/collab/not-a-document"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[actix_web::test]
async fn concurrent_edits_on_two_processes_converge_to_identical_text_and_are_stored() {
    let s = setup(|_| {}).await;
    let second = common::spawn_second_app(&s.app).await;
    let report = e2e("converge", s.config(&[&s.app.base, &second.base])).await;
    assert_eq!(report["text_a"], report["text_b"], "{report}");
    assert_eq!(report["awareness_across"], true, "{report}");
    let text = report["text_a"].as_str().unwrap();
    assert_eq!(text.matches('A').count(), 40, "{report}");
    assert_eq!(text.matches('B').count(), 40, "{report}");
    assert_eq!(report["stored_first"], report["text_a"], "{report}");
    // Coalesced: fewer events than the 80 keystrokes, each naming its authors.
    let versions = s.versions().await;
    assert!(!versions.is_empty() && versions.len() < 80, "{versions:?}");
    let merged: i64 = versions.iter().map(|v| v["merged"].as_i64().unwrap()).sum();
    assert!(merged >= 80, "{versions:?}");
    assert!(versions
        .iter()
        .all(|v| !v["authors"].as_array().unwrap().is_empty()));
}

#[actix_web::test]
async fn a_client_that_was_offline_merges_its_edits_on_reconnect() {
    let s = setup(|_| {}).await;
    let second = common::spawn_second_app(&s.app).await;
    let report = e2e("offline", s.config(&[&s.app.base, &second.base])).await;
    let text = report["text"].as_str().unwrap();
    assert!(text.starts_with("base."), "{report}");
    assert!(
        text.contains("offline-A") && text.contains("online-B"),
        "{report}"
    );
    assert!(
        !report["while_away"].as_str().unwrap().contains("online-B"),
        "{report}"
    );
}

#[actix_web::test]
async fn a_viewer_connects_read_only_and_anyone_else_is_refused() {
    let s = setup(|_| {}).await;
    let report = e2e("viewer", s.config(&[&s.app.base])).await;
    assert!(
        report["viewer_notice"]
            .as_str()
            .unwrap()
            .starts_with("read-only"),
        "{report}"
    );
    assert_eq!(report["viewer_access"], "read", "{report}");
    assert_eq!(report["editor_text"], "editor-text", "{report}");
    assert_eq!(report["stored"], "editor-text", "{report}");
    assert_eq!(report["viewer_closed"], 0, "{report}");
    assert_eq!(report["outsider_denied"], "permission denied", "{report}");
    assert_eq!(report["outsider_close"]["code"], 1008, "{report}");
}

#[actix_web::test]
async fn logout_a_revoked_grant_and_removal_from_the_project_close_sockets_on_another_process() {
    let s = setup(|_| {}).await;
    let admin = s.admin();
    let res = admin
        .post(s.app.url(&format!("/api/v1/documents/{}/grants", s.doc)))
        .json(&json!({ "user_id": s.ids["grantee"], "access": "view" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let second = common::spawn_second_app(&s.app).await;
    let report = e2e("revoke", s.config(&[&s.app.base, &second.base])).await;
    assert_eq!(report["statuses"], json!([204, 200, 200]), "{report}");
    for who in ["logout", "grant", "project"] {
        assert_eq!(report[who]["close"]["code"], 1008, "{who}: {report}");
        assert!(report[who]["denied"].is_string(), "{who}: {report}");
    }
}

#[actix_web::test]
async fn time_travel_returns_the_text_as_of_a_version_and_a_restore_is_a_new_update() {
    let s = setup(|_| {}).await;
    let report = e2e("timetravel", s.config(&[&s.app.base])).await;
    assert_eq!(report["text_then"], "hello", "{report}");
    assert_eq!(report["rebuilt"], "hello", "{report}");
    assert_eq!(report["bytes_type"], "application/octet-stream", "{report}");
    assert_eq!(report["restore_status"], 200, "{report}");
    assert_eq!(report["client_after_restore"], "hello", "{report}");
    assert_eq!(report["stored_after_restore"], "hello", "{report}");
    assert_eq!(
        report["last_version"]["restored_from"], report["first_version"],
        "{report}"
    );
    let versions = report["versions"].as_array().unwrap();
    assert!(versions.len() >= 2, "{report}");
    for v in versions {
        assert!(v["size"].as_i64().unwrap() > 0 && v["recorded_at"].is_string());
    }
}

#[actix_web::test]
async fn truncated_undecodable_and_oversized_messages_close_that_connection_only() {
    let s = setup(|_| {}).await;
    let report = e2e("malformed", s.config(&[&s.app.base])).await;
    assert_eq!(report["truncated"]["code"], 1003, "{report}");
    assert_eq!(report["undecodable"]["code"], 1003, "{report}");
    assert_eq!(report["oversized"]["code"], 1009, "{report}");
    assert_eq!(report["healthy_closes"], 0, "{report}");
    assert_eq!(report["stored"], "still-alive", "{report}");
}

#[actix_web::test]
async fn a_document_that_does_not_load_refuses_connections_instead_of_serving_it_empty() {
    let s = setup(|_| {}).await;
    // A snapshot that does not decode stands for any load failure.
    sqlx::query("INSERT INTO document_snapshots (document_id, version, state) VALUES ($1, 1, $2)")
        .bind(uuid::Uuid::parse_str(&s.doc).unwrap())
        .bind(vec![0xffu8, 0xff, 0xff])
        .execute(&s.app.pool)
        .await
        .unwrap();
    let report = e2e("failedload", s.config(&[&s.app.base])).await;
    assert!(
        report["denied"]
            .as_str()
            .unwrap()
            .starts_with("document unavailable"),
        "{report}"
    );
    assert_eq!(report["close"]["code"], 1011, "{report}");
    assert_eq!(report["synced"], false, "{report}");
    assert!(s.versions().await.is_empty(), "nothing was written");
}

#[actix_web::test]
async fn the_document_size_limit_refuses_updates_with_a_reason() {
    let s = setup(|c| c.collab_max_document_bytes = 2_000).await;
    let report = e2e(
        "toolarge",
        json!({ "bases": [s.app.base], "doc": s.doc, "tokens": s.tokens }),
    )
    .await;
    assert!(
        report["denied"]
            .as_str()
            .unwrap()
            .contains("COLLAB_MAX_DOCUMENT_BYTES"),
        "{report}"
    );
    assert!(report["stored_len"].as_u64().unwrap() < 2_000, "{report}");
}

#[actix_web::test]
async fn the_python_pycrdt_client_and_the_js_client_edit_one_document() {
    let s = setup(|_| {}).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-collab/bin/python");
    assert!(
        python.exists(),
        "pycrdt is not installed: scripts/test makes .venv-collab from tests/collab/requirements.txt"
    );
    let mut config = s.config(&[&s.app.base]);
    config["text"] = json!("from-js");
    e2e("write", config.clone()).await;
    let args = [
        root.join("tests/collab/pycrdt_client.py")
            .display()
            .to_string(),
        s.app.base.clone(),
        s.doc.clone(),
        s.tokens["editor2"].as_str().unwrap().to_owned(),
        "from-js".to_owned(),
        " and py".to_owned(),
    ];
    let output = actix_web::rt::task::spawn_blocking(move || {
        Command::new(python)
            .args(args)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pycrdt client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["seen"], "from-js", "{report}");
    assert_eq!(report["stored"], "from-js and py", "{report}");
    config["text"] = json!("from-js and py");
    let read = e2e("expect", config).await;
    assert_eq!(read["text"], "from-js and py", "{read}");
}

/// A `universal-backend` process on `database_url`, started from the built binary with
/// its settings in the environment, as an operator starts one.
struct Process {
    child: std::process::Child,
    base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_process(database_url: &str, env: &[(&str, &str)]) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_universal-backend"));
    cmd.env("DATABASE_URL", database_url)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("JWT_SECRET", "test-secret-test-secret-test-secret")
        .env("PUSHER_SECRET", common::PUSHER_SECRET)
        .env("RUN_PROJECTIONS", "false")
        .env("RUN_SWARM_SCHEDULER", "false")
        .env("LOG_LEVEL", "warn")
        .env("WORKERS", "2")
        .env("DB_POOL_SIZE", "6")
        .env("RATE_LIMIT_PER_MINUTE", "10000")
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the server binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    // Generous: on a loaded machine a fresh process may take a while to migrate and listen.
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server process exited at start: {status}");
        }
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the server process answers /health");
    Process { child, base }
}

#[actix_web::test]
async fn a_process_killed_with_sigkill_while_clients_edit_loses_nothing_once_they_reconnect() {
    let s = setup(|_| {}).await;
    // A long flush window: what the killed process holds is certainly not yet written.
    let doomed = start_process(&s.app.database_url, &[("COLLAB_FLUSH_MS", "2000")]).await;
    let mut config = s.config(&[&doomed.base, &s.app.base]);
    config["pid"] = json!(doomed.child.id());
    let report = e2e("kill", config).await;
    let text = report["text"].as_str().unwrap();
    for word in ["one", "two", "three", "bee"] {
        assert!(text.contains(word), "{word}: {report}");
    }
    assert_eq!(report["stored"], report["text"], "{report}");
    assert_eq!(
        report["b_saw_unflushed_before_kill"], false,
        "the edits were only in the killed process: {report}"
    );
}

#[actix_web::test]
async fn health_reports_collaboration_connections_and_loaded_documents() {
    let s = setup(|_| {}).await;
    let (status, health) = s.app.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["collab"]["connections"], 0);
    assert_eq!(health["collab"]["loaded_documents"], 0);
}
