//! Quantum and Velocity Swarm, black-box: the real server on port 0 against a fresh
//! database, driven over HTTP. Waits are bounded loops that poll the read models (never a
//! timed assertion): each gives up after a generous limit and fails with what it saw.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    client_for, rastrigin, start_server as start, task_events, tenant_with_frontends, Tenant,
    PASSWORD,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type App = common::Server;

async fn swarm_tenant(app: &App, name: &str) -> Tenant {
    tenant_with_frontends(app, name, &["quantum", "velocity"]).await
}

/// Talks to one server as one tenant from one swarm frontend.
struct Caller {
    base: String,
    client: reqwest::Client,
    frontend: &'static str,
}

impl Caller {
    fn new(base: &str, tenant: &Tenant, frontend: &'static str) -> Self {
        Self {
            base: base.to_owned(),
            client: client_for(tenant),
            frontend,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header("x-frontend-source", self.frontend)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header("x-frontend-source", self.frontend)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    async fn create(&self, body: Value) -> (String, i64) {
        let (status, created) = self.post("/api/v1/swarm/tasks", body).await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["position"].as_i64().unwrap(),
        )
    }

    /// Polls the task until `done` says so (at most 120 s).
    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..1200 {
            let (status, task) = self.get(&format!("/api/v1/swarm/tasks/{id}")).await;
            if status == 200 && done(&task) {
                return task;
            }
            last = task;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} never became {what}; last seen: {last}");
    }

    async fn finished(&self, id: &str) -> Value {
        self.wait_for(id, "finished", |t| {
            matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await
    }
}

#[actix_web::test]
async fn a_ten_dimensional_rastrigin_run_reports_coalesced_progress_and_its_result() {
    let app = start(None, |_| {}).await;
    let tenant = swarm_tenant(&app, "quantum").await;
    let quantum = Caller::new(&app.base, &tenant, "quantum");
    let (id, position) = quantum.create(rastrigin(10, 100, 1500)).await;

    let (status, task) = quantum
        .get(&format!("/api/v1/swarm/tasks/{id}?min_position={position}"))
        .await;
    assert_eq!(status, 200, "{task}");
    for field in [
        "id",
        "user_id",
        "type",
        "objective",
        "config",
        "status",
        "created_at",
    ] {
        assert!(!task[field].is_null(), "legacy field {field} in {task}");
    }
    assert_eq!(task["type"], "quantum");
    assert_eq!(task["user_id"], tenant.user_id.as_str());
    assert_eq!(task["config"]["bounds"].as_array().unwrap().len(), 10);

    let done = quantum.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, result) = quantum
        .get(&format!("/api/v1/swarm/tasks/{id}/result"))
        .await;
    let r = &result["result"];
    assert_eq!(r["kind"], "optimization");
    assert_eq!(r["iterations"], 1500);
    assert_eq!(r["evaluations"], 100 * 1501);
    assert_eq!(r["best_position"].as_array().unwrap().len(), 10);
    // 10-D rastrigin has a local minimum at every integer point; seed 1 with this budget
    // ends near the global one (0), within a few of those local minima.
    assert!(r["best_cost"].as_f64().unwrap() < 10.0, "{result}");

    // Progress is a series of coalesced points, not one event per iteration.
    let (_, series) = quantum
        .get(&format!("/api/v1/swarm/tasks/{id}/progress?limit=500"))
        .await;
    let points = series["items"].as_array().unwrap();
    let events = task_events(&app.pool).await;
    let progressed = events
        .iter()
        .filter(|(_, t, _)| t == "OptimizationProgressed")
        .count();
    assert_eq!(points.len(), progressed);
    assert!(
        progressed < 1500,
        "{progressed} progress events for 1500 iterations"
    );
    let iterations: Vec<i64> = points
        .iter()
        .map(|p| p["iteration"].as_i64().unwrap())
        .collect();
    assert!(iterations.windows(2).all(|w| w[0] < w[1]), "{iterations:?}");
    let costs: Vec<f64> = points
        .iter()
        .map(|p| p["best_cost"].as_f64().unwrap())
        .collect();
    assert!(
        costs.windows(2).all(|w| w[0] >= w[1]),
        "the best cost never rises"
    );
    let kinds: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"SwarmTaskCreated"));
    assert_eq!(kinds.get(1), Some(&"SwarmTaskStarted"));
    assert_eq!(kinds.last(), Some(&"SwarmTaskCompleted"));

    // The same seed reproduces the run exactly.
    let (again, _) = quantum.create(rastrigin(10, 100, 1500)).await;
    quantum.finished(&again).await;
    let (_, second) = quantum
        .get(&format!("/api/v1/swarm/tasks/{again}/result"))
        .await;
    assert_eq!(second["result"]["best_position"], r["best_position"]);
    assert_eq!(second["result"]["best_cost"], r["best_cost"]);

    let (status, list) = quantum
        .get("/api/v1/swarm/tasks?type=quantum&status=completed&limit=1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["id"], again.as_str(), "newest first");
    let cursor = list["next_cursor"].as_str().unwrap();
    let (_, rest) = quantum
        .get(&format!(
            "/api/v1/swarm/tasks?type=quantum&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["items"][0]["id"], id.as_str());
    assert!(rest["next_cursor"].is_null());
    let (_, none) = quantum.get("/api/v1/swarm/tasks?type=velocity").await;
    assert_eq!(none["items"], json!([]));
}

#[actix_web::test]
async fn bad_settings_are_refused_naming_the_field_and_write_nothing() {
    let app = start(None, |c| {
        c.swarm_http_allowlist = "http://127.0.0.1:9/".into();
    })
    .await;
    let tenant = swarm_tenant(&app, "strict").await;
    let quantum = Caller::new(&app.base, &tenant, "quantum");
    let velocity = Caller::new(&app.base, &tenant, "velocity");
    let before = task_events(&app.pool).await.len();
    let cases: Vec<(&Caller, Value, &str)> = vec![
        (
            &quantum,
            json!({"type": "quantum", "objective": "rastrigin", "config": {"dimensions": 0}}),
            "config.dimensions",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "rastrigin", "config": {"dimensions": 101}}),
            "config.dimensions",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "x1 + y", "config": {"dimensions": 2}}),
            "objective",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "x1 +", "config": {"dimensions": 2}}),
            "objective",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "sphere", "config": {"dimensions": 2, "bounds": [[1, 0], [0, 1]]}}),
            "config.bounds[0]",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "sphere", "config": {"dimensions": 2, "bounds": [[0, 1]], "particles": 5}}),
            "config.bounds",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "sphere", "config": {"dimensions": 2, "inertia": -1}}),
            "config.inertia",
        ),
        (
            &quantum,
            json!({"type": "quantum", "objective": "sphere", "config": {"dimensions": 2, "colour": 1}}),
            "config",
        ),
        (
            &quantum,
            json!({"type": "velocity", "objective": "b", "config": {"subtasks": [{"kind": "prompt", "prompt": "hi"}]}}),
            "type",
        ),
        (
            &velocity,
            json!({"type": "velocity", "objective": "b", "config": {"subtasks": []}}),
            "config.subtasks",
        ),
        (
            &velocity,
            json!({"type": "velocity", "objective": "b", "config": {"subtasks": [{"kind": "prompt", "prompt": "hi", "count": 10001}]}}),
            "config.subtasks",
        ),
        (
            &velocity,
            json!({"type": "velocity", "objective": "b", "config": {"subtasks": [{"kind": "http", "url": "http://10.1.2.3/"}]}}),
            "config.subtasks[0].url",
        ),
        (
            &velocity,
            json!({"type": "velocity", "objective": "b", "config": {"subtasks": [{"kind": "prompt", "prompt": "hi"}], "concurrency": 0}}),
            "config.concurrency",
        ),
    ];
    for (caller, body, field) in cases {
        let (status, answer) = caller.post("/api/v1/swarm/tasks", body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        let named = answer["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(named, field, "{body} → {answer}");
    }
    let (status, _) = quantum
        .post("/api/v1/swarm/tasks", json!({"type": "quantum"}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        task_events(&app.pool).await.len(),
        before,
        "nothing was written"
    );

    // Another frontend, or one not enabled, is refused.
    let citypulse = client_for(&tenant);
    let res = citypulse
        .get(format!("{}/api/v1/swarm/tasks", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[actix_web::test]
async fn another_organizations_task_is_not_found_anywhere() {
    let app = start(None, |_| {}).await;
    let owner = Caller::new(&app.base, &swarm_tenant(&app, "owner").await, "quantum");
    let stranger = Caller::new(&app.base, &swarm_tenant(&app, "stranger").await, "quantum");
    let (id, position) = owner.create(rastrigin(2, 10, 20)).await;
    for path in ["", "/progress", "/result", "/subtasks"] {
        let (status, answer) = stranger
            .get(&format!(
                "/api/v1/swarm/tasks/{id}{path}?min_position={position}"
            ))
            .await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, _) = stranger
        .post(&format!("/api/v1/swarm/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, list) = stranger
        .get(&format!("/api/v1/swarm/tasks?min_position={position}"))
        .await;
    assert_eq!(list["items"], json!([]));
    let done = owner.finished(&id).await;
    assert_eq!(done["status"], "completed");
}

#[actix_web::test]
async fn a_running_task_is_cancelled_and_records_nothing_after_the_cancel() {
    let app = start(None, |_| {}).await;
    let quantum = Caller::new(&app.base, &swarm_tenant(&app, "cancel").await, "quantum");
    let (id, _) = quantum.create(rastrigin(50, 200, 1_000_000)).await;
    quantum
        .wait_for(&id, "running with progress", |t| {
            t["status"] == "running" && t["progress"]["iteration"].as_i64().unwrap_or(0) > 0
        })
        .await;
    let (status, answer) = quantum
        .post(&format!("/api/v1/swarm/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let done = quantum.finished(&id).await;
    assert_eq!(done["status"], "cancelled");
    let (status, again) = quantum
        .post(&format!("/api/v1/swarm/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, &again["version"]),
        (200, &answer["version"]),
        "a second cancel changes nothing"
    );

    // A finished run cannot be cancelled.
    let (short, _) = quantum.create(rastrigin(2, 10, 10)).await;
    quantum.finished(&short).await;
    let (status, refused) = quantum
        .post(&format!("/api/v1/swarm/tasks/{short}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "task_finished");

    // The cancelled run's worker stops: once the scheduler has run the short task after
    // it, nothing of the cancelled one follows its cancel in the log.
    let events = task_events(&app.pool).await;
    let stream = format!("swarm_task-{id}");
    let mine: Vec<&str> = events
        .iter()
        .filter(|(s, _, _)| *s == stream)
        .map(|(_, t, _)| t.as_str())
        .collect();
    assert_eq!(mine.last(), Some(&"SwarmTaskCancelled"), "{mine:?}");
}

#[actix_web::test]
async fn caps_are_honoured_and_each_organization_keeps_its_order() {
    let app = start(None, |c| {
        c.max_concurrent_generations = 2;
        c.swarm_max_concurrent_per_org = 1;
    })
    .await;
    let a = Caller::new(&app.base, &swarm_tenant(&app, "a").await, "quantum");
    let b = Caller::new(&app.base, &swarm_tenant(&app, "b").await, "quantum");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(("a", a.create(rastrigin(5, 40, 300)).await.0));
        ids.push(("b", b.create(rastrigin(5, 40, 300)).await.0));
    }
    for (org, id) in &ids {
        let caller = if *org == "a" { &a } else { &b };
        assert_eq!(caller.finished(id).await["status"], "completed");
    }
    // Replay the log: count the tasks between their start and their end.
    let org_of = |stream: &str| {
        ids.iter()
            .find(|(_, id)| stream.ends_with(id.as_str()))
            .map(|(org, _)| *org)
            .unwrap()
    };
    let mut running: Vec<&str> = Vec::new();
    let mut most = 0;
    let mut started_order: Vec<String> = Vec::new();
    let events = task_events(&app.pool).await;
    for (stream, kind, _) in &events {
        match kind.as_str() {
            "SwarmTaskStarted" => {
                running.push(org_of(stream));
                started_order.push(stream.clone());
                most = most.max(running.len());
                for org in ["a", "b"] {
                    let n = running.iter().filter(|o| **o == org).count();
                    assert!(n <= 1, "organization {org} ran {n} at once");
                }
            }
            "SwarmTaskCompleted" | "SwarmTaskFailed" | "SwarmTaskCancelled" => {
                let org = org_of(stream);
                let at = running.iter().position(|o| *o == org).unwrap();
                running.remove(at);
            }
            _ => {}
        }
    }
    assert!((1..=2).contains(&most), "at most 2 ran at once, saw {most}");
    for org in ["a", "b"] {
        let created: Vec<String> = ids
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, id)| format!("swarm_task-{id}"))
            .collect();
        let started: Vec<String> = started_order
            .iter()
            .filter(|s| created.contains(s))
            .cloned()
            .collect();
        assert_eq!(started, created, "organization {org} kept its order");
    }
}

fn optimize_batch(count: u32, concurrency: u32) -> Value {
    json!({
        "type": "velocity",
        "objective": "many small optimizations",
        "config": {
            "subtasks": [{
                "kind": "optimize", "objective": "sphere", "count": count,
                "config": {"dimensions": 4, "particles": 30, "iterations": 400, "seed": 3}
            }],
            "concurrency": concurrency, "timeout_ms": 60000, "retries": 0
        }
    })
}

#[actix_web::test]
async fn a_batch_runs_prompts_records_outcomes_in_chunks_and_reports_aggregate_progress() {
    let app = start(None, |_| {}).await;
    let velocity = Caller::new(&app.base, &swarm_tenant(&app, "batch").await, "velocity");
    let (id, _) = velocity
        .create(json!({
            "type": "velocity",
            "objective": "greetings",
            "config": {
                "subtasks": [
                    {"kind": "prompt", "prompt": "Say hello", "count": 300},
                    {"kind": "prompt", "prompt": "Say bye", "model": "no-such-model"}
                ],
                "concurrency": 16, "retries": 1, "backoff_ms": 1
            }
        }))
        .await;
    let done = velocity.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["total"], 301);
    assert_eq!(done["progress"]["done"], 300);
    assert_eq!(done["progress"]["failed"], 1);
    assert!(done["progress"]["throughput"].as_f64().unwrap() > 0.0);
    let (_, result) = velocity
        .get(&format!("/api/v1/swarm/tasks/{id}/result"))
        .await;
    assert_eq!(result["result"]["kind"], "batch");
    assert_eq!(result["result"]["done"], 300);

    let (_, failed) = velocity
        .get(&format!("/api/v1/swarm/tasks/{id}/subtasks?status=failed"))
        .await;
    let failed = failed["items"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["index"], 300);
    assert_eq!(failed[0]["attempts"], 2, "one retry");
    let (_, first) = velocity
        .get(&format!("/api/v1/swarm/tasks/{id}/subtasks?limit=2"))
        .await;
    assert_eq!(first["items"][0]["index"], 0);
    assert!(!first["items"][0]["output"]["text"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(first["next_cursor"], "2");

    // 301 subtasks, a handful of events: the log grows with chunks, not subtasks.
    let events = task_events(&app.pool).await;
    let chunks = events
        .iter()
        .filter(|(_, t, _)| t == "SubtasksRecorded")
        .count();
    let recorded: usize = events
        .iter()
        .filter(|(_, t, _)| t == "SubtasksRecorded")
        .map(|(_, _, d)| d["outcomes"].as_array().unwrap().len())
        .sum();
    assert_eq!(recorded, 301, "each subtask recorded once");
    assert!(chunks < 301 / 2, "{chunks} chunks for 301 subtasks");
}

#[actix_web::test]
async fn cancelling_a_batch_halfway_stops_its_subtasks() {
    let app = start(None, |_| {}).await;
    let velocity = Caller::new(&app.base, &swarm_tenant(&app, "halfway").await, "velocity");
    let (id, _) = velocity.create(optimize_batch(1000, 2)).await;
    velocity
        .wait_for(&id, "partly done", |t| {
            t["progress"]["done"].as_i64().unwrap_or(0) >= 5
        })
        .await;
    let (status, answer) = velocity
        .post(&format!("/api/v1/swarm/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let done = velocity.finished(&id).await;
    assert_eq!(done["status"], "cancelled");
    let finished = done["progress"]["done"].as_i64().unwrap();
    assert!(finished < 1000, "{finished} of 1000 ran");
}

#[actix_web::test]
async fn an_interrupted_batch_is_resumed_by_a_second_process_after_the_first_stops() {
    let first = start(None, |_| {}).await;
    let tenant = swarm_tenant(&first, "resume").await;
    let velocity = Caller::new(&first.base, &tenant, "velocity");
    let (id, _) = velocity.create(optimize_batch(400, 1)).await;
    velocity
        .wait_for(&id, "partly done", |t| {
            t["progress"]["done"].as_i64().unwrap_or(0) >= 4
        })
        .await;
    // A second process on the same database stands by; the first one goes away.
    let second = start(Some(first.database_url.clone()), |_| {}).await;
    first.handle.stop(false).await;
    let velocity = Caller::new(&second.base, &tenant, "velocity");
    let done = velocity.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["progress"]["done"], 400);

    let events = task_events(&second.pool).await;
    let kinds: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert!(kinds.contains(&"SwarmTaskInterrupted"), "{kinds:?}");
    let resumed = events
        .iter()
        .filter(|(_, t, _)| t == "SwarmTaskStarted")
        .map(|(_, _, d)| d.clone())
        .collect::<Vec<_>>();
    assert_eq!(resumed.len(), 2);
    assert!(
        resumed[1]["resumed_from"].as_u64().unwrap() >= 4,
        "the second attempt resumed after the recorded subtasks: {resumed:?}"
    );
    let recorded: usize = events
        .iter()
        .filter(|(_, t, _)| t == "SubtasksRecorded")
        .map(|(_, _, d)| d["outcomes"].as_array().unwrap().len())
        .sum();
    assert_eq!(recorded, 400, "no subtask was recorded twice");
    let _ = first.pool;
}

#[actix_web::test]
async fn the_real_socket_io_client_follows_a_run_on_quantum_and_a_batch_on_velocity() {
    let app = start(None, |_| {}).await;
    let tenant = swarm_tenant(&app, "live").await;
    let stranger = swarm_tenant(&app, "stranger").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let args = [
        dir.join("swarm.mjs").display().to_string(),
        app.base.clone(),
        tenant.access_token.clone(),
        stranger.access_token.clone(),
    ];
    let output = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(args)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    let task = report["task_id"].as_str().unwrap();
    assert_eq!(report["joined"]["ok"], true, "{report}");
    assert_eq!(report["refused"]["ok"], false, "{report}");
    assert_eq!(report["refused"]["error"], "swarm task not found");
    let progress = report["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "{report}");
    assert!(progress.iter().all(|p| p["task_id"] == task));
    let iterations: Vec<i64> = progress
        .iter()
        .map(|p| p["iteration"].as_i64().unwrap())
        .collect();
    assert!(iterations.windows(2).all(|w| w[0] < w[1]), "{iterations:?}");
    assert!(
        progress.len() < 8000,
        "coalesced: {} progress events for 8000 iterations",
        progress.len()
    );
    assert_eq!(report["completed"]["task_id"], task);
    assert_eq!(report["completed"]["result"]["iterations"], 8000);

    let chunks: i64 = report["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .sum();
    assert_eq!(chunks, 40, "every subtask arrived in a chunk: {report}");
    assert_eq!(report["batch_completed"]["result"]["done"], 40);
}

#[actix_web::test]
async fn a_member_follows_a_task_stream_on_the_native_socket_until_it_ends() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let app = start(None, |_| {}).await;
    let admin = swarm_tenant(&app, "admin").await;
    // A plain member (not an admin) may follow one task's stream, as the swarm routes allow.
    let email = format!("member-{}@example.org", uuid::Uuid::new_v4().simple());
    let res = app
        .anonymous
        .post(format!("{}/api/v1/auth/signup", app.base))
        .json(&json!({ "email": email, "password": PASSWORD, "display_name": "member" }))
        .send()
        .await
        .unwrap();
    let user: Value = res.json().await.unwrap();
    let res = app
        .anonymous
        .post(format!(
            "{}/api/v1/organizations/{}/members",
            app.base, admin.organization_id
        ))
        .bearer_auth(&admin.access_token)
        .json(&json!({ "user_id": user["user"]["id"], "role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .anonymous
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({ "email": email, "password": PASSWORD, "organization_id": admin.organization_id }))
        .send()
        .await
        .unwrap();
    let login: Value = res.json().await.unwrap();
    let token = login["access_token"].as_str().unwrap();

    let quantum = Caller::new(&app.base, &admin, "quantum");
    let (id, _) = quantum.create(rastrigin(5, 30, 2000)).await;
    let url = format!("{}/api/v1/ws?token={token}", app.base.replace("http", "ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let subscribe = json!({
        "type": "subscribe", "id": "t", "target": { "stream": format!("swarm_task-{id}") }, "from": 0
    });
    ws.send(Message::Text(subscribe.to_string())).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("SwarmTaskCompleted") {
        let m = common::recv(&mut ws).await;
        match m["type"].as_str() {
            Some("event") => kinds.push(m["event_type"].as_str().unwrap().to_owned()),
            Some("subscribed" | "caught_up") => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert_eq!(kinds[0], "SwarmTaskCreated");
    assert_eq!(kinds[1], "SwarmTaskStarted");
    ws.close(None).await.unwrap();
}

#[actix_web::test]
async fn a_retried_create_with_the_same_idempotency_key_names_the_same_task_and_writes_once() {
    let app = start(None, |_| {}).await;
    let tenant = swarm_tenant(&app, "retry").await;
    let client = client_for(&tenant);
    let send = || {
        client
            .post(format!("{}/api/v1/swarm/tasks", app.base))
            .header("x-frontend-source", "quantum")
            .header("idempotency-key", "run-1")
            .json(&rastrigin(2, 10, 10))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let created = task_events(&app.pool)
        .await
        .iter()
        .filter(|(_, t, _)| t == "SwarmTaskCreated")
        .count();
    assert_eq!(created, 1);
}

#[actix_web::test]
async fn a_disabled_swarm_frontend_answers_feature_disabled_and_the_other_keeps_working() {
    let app = start(None, |c| c.quantum_swarm_enabled = false).await;
    let tenant = swarm_tenant(&app, "flags").await;
    let quantum = Caller::new(&app.base, &tenant, "quantum");
    let (status, answer) = quantum
        .post("/api/v1/swarm/tasks", rastrigin(2, 10, 10))
        .await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"]["code"], "feature_disabled");
    let velocity = Caller::new(&app.base, &tenant, "velocity");
    let (status, _) = velocity.get("/api/v1/swarm/tasks").await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn a_task_past_its_wall_clock_limit_fails_with_the_reason() {
    let app = start(None, |c| c.max_content_generation_time = 1).await;
    let quantum = Caller::new(&app.base, &swarm_tenant(&app, "slow").await, "quantum");
    let (id, _) = quantum.create(rastrigin(50, 200, 1_000_000)).await;
    let done = quantum.finished(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], "the task exceeded its time limit of 1 s");
}

/// The batch that exhausted memory on every process in turn: 10,000 optimizations of
/// 10,000 particles in 100 dimensions, 256 at once.
fn the_memory_bomb() -> Value {
    json!({"type":"velocity","objective":"o","config":{"subtasks":[{"kind":"optimize",
        "objective":"sphere","count":10000,
        "config":{"dimensions":100,"particles":10000,"iterations":1000000}}],
        "concurrency":256,"timeout_ms":600000,"retries":0}})
}

#[actix_web::test]
async fn a_batch_one_process_cannot_hold_is_refused_and_one_at_the_limits_runs_within_the_budget() {
    let app = start(None, |c| c.worker_memory_budget_mb = 16).await;
    let velocity = Caller::new(&app.base, &swarm_tenant(&app, "budget").await, "velocity");
    let (status, refused) = velocity
        .post("/api/v1/swarm/tasks", the_memory_bomb())
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["details"]["field"], "config.subtasks[0].config.particles",
        "{refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("16 MiB"), "{message}");
    assert!(task_events(&app.pool).await.is_empty(), "nothing written");

    // 3,000 particles in 100 dimensions: about 10 MiB each, so one at a time fits in the
    // 16 MiB budget, whatever the batch's concurrency of 64 asks.
    let (id, _) = velocity
        .create(
            json!({"type":"velocity","objective":"at the limits","config":{"subtasks":[
            {"kind":"optimize","objective":"sphere","count":6,
             "config":{"dimensions":100,"particles":3000,"iterations":3,"seed":1}}],
            "concurrency":64,"timeout_ms":60000,"retries":0}}),
        )
        .await;
    let done = velocity.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"]["done"], 6, "{done}");
    let budget = app.state.swarm.budget();
    assert!(budget.peak_mb() > 0, "the subtasks leased their memory");
    assert!(
        budget.peak_mb() <= 16,
        "leased {} MiB of a 16 MiB budget",
        budget.peak_mb()
    );
    assert_eq!(budget.leased_mb(), 0, "all of it given back");
}

#[actix_web::test]
async fn a_task_whose_attempts_killed_their_process_three_times_is_abandoned_not_resumed() {
    use universal_backend::actors::swarm_task::{ScopedCommand, SwarmCommand};
    use universal_backend::actors::CommandMeta;
    // The first process takes tasks but runs none (its scheduler is off).
    let first = start(None, |c| c.run_swarm_scheduler = false).await;
    let tenant = swarm_tenant(&first, "poison").await;
    let quantum = Caller::new(&first.base, &tenant, "quantum");
    let (id, _) = quantum.create(rastrigin(5, 40, 300)).await;
    let task: uuid::Uuid = id.parse().unwrap();
    let org: uuid::Uuid = tenant.organization_id.parse().unwrap();
    // Three attempts start, and the process of each dies under it: the first two are found
    // by a leader and fenced, the third is still `running` in the log, with no worker.
    let send = |cmd: SwarmCommand| {
        let state = first.state.clone();
        async move {
            state
                .registries
                .swarm_tasks
                .execute(
                    task,
                    ScopedCommand {
                        organization_id: org,
                        cmd,
                    },
                    None,
                    CommandMeta::new(),
                )
                .await
                .expect("recorded");
        }
    };
    let at = chrono::Utc::now();
    for attempt in 1..=3 {
        send(SwarmCommand::Start { attempt, at }).await;
        if attempt < 3 {
            send(SwarmCommand::Interrupt {
                attempt,
                released: false,
                at,
            })
            .await;
        }
    }
    // A process with a scheduler comes up and leads.
    let leader = start(Some(first.database_url.clone()), |_| {}).await;
    let quantum = Caller::new(&leader.base, &tenant, "quantum");
    let done = quantum.finished(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("abandoned: 3 of its attempts"), "{error}");
    let starts = task_events(&leader.pool)
        .await
        .into_iter()
        .filter(|(_, t, _)| t == "SwarmTaskStarted")
        .count();
    assert_eq!(starts, 3, "no fourth attempt");
}

#[actix_web::test]
async fn a_flood_from_one_tenant_delays_another_tenants_task_by_at_most_one_task() {
    let app = start(None, |c| {
        c.max_concurrent_generations = 2;
        c.swarm_max_concurrent_per_org = 1;
        c.swarm_max_queued_per_org = 10_000;
    })
    .await;
    let flood = Caller::new(&app.base, &swarm_tenant(&app, "flood").await, "quantum");
    let victim = Caller::new(&app.base, &swarm_tenant(&app, "victim").await, "quantum");
    // More waiting tasks than the old scan looked at (500), each long enough that only a
    // few finish while the rest are queued.
    let body = rastrigin(20, 200, 3000);
    for chunk in 0..(540 / 20) {
        let creates = (0..20).map(|_| flood.post("/api/v1/swarm/tasks", body.clone()));
        for (status, created) in futures_util::future::join_all(creates).await {
            assert_eq!(status, 201, "chunk {chunk}: {created}");
        }
    }
    let (id, created_at) = victim.create(rastrigin(2, 10, 10)).await;
    let done = victim.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    // Replay the log: how many of the flood's tasks started between the victim's task's
    // creation and its start.
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT stream_id, event_type, global_position FROM events \
         WHERE stream_category = 'swarm_task' AND event_type = 'SwarmTaskStarted' \
         ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let victim_started = rows
        .iter()
        .find(|(s, _, _)| s.ends_with(&id))
        .map(|(_, _, p)| *p)
        .unwrap();
    let flood_between = rows
        .iter()
        .filter(|(s, _, p)| !s.ends_with(&id) && *p > created_at && *p < victim_started)
        .count();
    assert!(
        flood_between <= 1,
        "{flood_between} of the flood's tasks started before the victim's"
    );
}

#[actix_web::test]
async fn an_organization_with_its_queue_full_gets_429_and_nothing_is_written() {
    let app = start(None, |c| {
        c.run_swarm_scheduler = false;
        c.swarm_max_queued_per_org = 3;
    })
    .await;
    let quantum = Caller::new(&app.base, &swarm_tenant(&app, "queue").await, "quantum");
    for _ in 0..3 {
        quantum.create(rastrigin(2, 10, 10)).await;
    }
    // The count comes from the read model: let it have the three.
    for _ in 0..200 {
        let (_, list) = quantum.get("/api/v1/swarm/tasks?status=queued").await;
        if list["items"].as_array().map_or(0, |i| i.len()) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, refused) = quantum
        .post("/api/v1/swarm/tasks", rastrigin(2, 10, 10))
        .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_queued");
    let created = task_events(&app.pool)
        .await
        .into_iter()
        .filter(|(_, t, _)| t == "SwarmTaskCreated")
        .count();
    assert_eq!(created, 3);
}

/// A loopback HTTP server that answers every request `200 pong`; counts the requests.
async fn pong_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
                    .await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (port, hits)
}

fn http_batch(urls: &[String]) -> Value {
    let subtasks: Vec<Value> = urls
        .iter()
        .map(|u| json!({"kind": "http", "url": u}))
        .collect();
    json!({
        "type": "velocity",
        "objective": "calls",
        "config": {"subtasks": subtasks, "retries": 0, "timeout_ms": 10000}
    })
}

#[actix_web::test]
async fn a_batch_url_that_smuggles_another_host_or_address_is_refused_and_a_listed_one_is_called() {
    let (pong, hits) = pong_server().await;
    let app = start(None, |c| {
        c.swarm_http_allowlist = format!("http://localhost:{pong}, http://127.0.0.1:{pong}/ping");
    })
    .await;
    let own = app.base.rsplit(':').next().unwrap().to_owned();
    let velocity = Caller::new(&app.base, &swarm_tenant(&app, "ssrf").await, "velocity");
    let before = task_events(&app.pool).await.len();
    for (url, why) in [
        (
            format!("http://localhost:{pong}@127.0.0.1:{own}/metrics"),
            "user name or password",
        ),
        (
            format!("http://localhost:{pong}:x@127.0.0.1:{own}/metrics"),
            "user name or password",
        ),
        (format!("http://127.0.0.1:{own}/metrics"), "allow-list"),
        (format!("http://2130706433:{own}/metrics"), "allow-list"),
        (format!("http://0x7f.1:{own}/metrics"), "allow-list"),
        (format!("http://[::1]:{pong}/ping"), "allow-list"),
        (format!("http://127.0.0.1:{pong}/pingx"), "allow-list"),
        (
            format!("http://127.0.0.1:{pong}/ping/..%2fmetrics"),
            "encoded slash",
        ),
        (
            format!("http://localhost:{}/", u32::from(pong) + 1),
            "allow-list",
        ),
    ] {
        let (status, answer) = velocity
            .post(
                "/api/v1/swarm/tasks",
                http_batch(std::slice::from_ref(&url)),
            )
            .await;
        assert_eq!(status, 422, "{url} → {answer}");
        assert_eq!(
            answer["error"]["details"]["field"], "config.subtasks[0].url",
            "{url} → {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{url} → {answer}");
    }
    assert_eq!(
        task_events(&app.pool).await.len(),
        before,
        "nothing written"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // The listed loopback stand-in is reachable, by the address and by `localhost`, each
    // of which the allow-list names explicitly.
    let (id, _) = velocity
        .create(http_batch(&[
            format!("http://127.0.0.1:{pong}/ping"),
            format!("http://127.1:{pong}/ping/deeper?x=1"),
            format!("http://localhost:{pong}/anything"),
        ]))
        .await;
    let done = velocity.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, subtasks) = velocity
        .get(&format!("/api/v1/swarm/tasks/{id}/subtasks"))
        .await;
    let items = subtasks["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{subtasks}");
    for item in items {
        assert_eq!(item["status"], "done", "{item}");
        assert_eq!(
            item["output"],
            json!({"status": 200, "body": "pong"}),
            "{item}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[actix_web::test]
async fn one_user_with_two_organizations_runs_no_more_than_the_per_user_cap() {
    let app = start(None, |c| {
        c.max_concurrent_generations = 4;
        c.swarm_max_concurrent_per_org = 2;
        c.swarm_max_concurrent_per_user = 1;
    })
    .await;
    let first = swarm_tenant(&app, "owner").await;
    // The same person makes a second organization, enables Quantum there and logs in to it.
    let res = app
        .anonymous
        .post(format!("{}/api/v1/organizations", app.base))
        .bearer_auth(&first.access_token)
        .json(&json!({ "name": "second city" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let second_org = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .anonymous
        .put(format!(
            "{}/api/v1/organizations/{second_org}/frontends",
            app.base
        ))
        .bearer_auth(&first.access_token)
        .json(&json!({ "frontend": "quantum", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .anonymous
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({ "email": first.email, "password": PASSWORD, "organization_id": second_org }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let second = Tenant {
        organization_id: second_org,
        access_token: res.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned(),
        ..first.clone()
    };
    let a = Caller::new(&app.base, &first, "quantum");
    let b = Caller::new(&app.base, &second, "quantum");
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(a.create(rastrigin(5, 40, 300)).await.0);
        ids.push(b.create(rastrigin(5, 40, 300)).await.0);
    }
    for (i, id) in ids.iter().enumerate() {
        let caller = if i % 2 == 0 { &a } else { &b };
        assert_eq!(caller.finished(id).await["status"], "completed");
    }
    // Replay the log: the user never had two tasks running at once, in either organization.
    let mut running = 0;
    let mut most = 0;
    for (_, kind, _) in task_events(&app.pool).await {
        match kind.as_str() {
            "SwarmTaskStarted" => {
                running += 1;
                most = most.max(running);
            }
            "SwarmTaskCompleted" | "SwarmTaskFailed" | "SwarmTaskCancelled" => running -= 1,
            _ => {}
        }
    }
    assert_eq!(most, 1, "the user ran {most} tasks at once");
}
