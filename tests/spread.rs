//! Work and projections spread over several processes on one database: the real server,
//! two (or three) `Application`s on one fresh database, driven over HTTP. Waits are
//! bounded loops (never a timed assertion): each gives up after a generous limit and fails
//! with what it saw.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{
    client_for, rastrigin, start_server as start, task_events, tenant_with_frontends, Tenant,
};
use serde_json::{json, Value};
use universal_backend::config::Config;

type App = common::Server;

impl App {
    fn owner(&self) -> String {
        self.state.swarm.owner().to_owned()
    }
}

async fn quantum_tenant(app: &App, name: &str) -> Tenant {
    tenant_with_frontends(app, name, &["quantum"]).await
}

/// Talks to one server as one tenant from Quantum.
struct Caller {
    base: String,
    client: reqwest::Client,
}

impl Caller {
    fn new(base: &str, tenant: &Tenant) -> Self {
        Self {
            base: base.to_owned(),
            client: client_for(tenant),
        }
    }

    async fn create(&self, body: Value) -> String {
        let res = self
            .client
            .post(format!("{}/api/v1/swarm/tasks", self.base))
            .header("x-frontend-source", "quantum")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let created: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}/api/v1/swarm/tasks/{id}", self.base))
            .header("x-frontend-source", "quantum")
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Polls the task until `done` says so (at most 120 s).
    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..1200 {
            let (status, task) = self.get(id).await;
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
async fn tasks_spread_over_two_processes_and_each_task_names_the_process_that_ran_it() {
    let tune = |c: &mut Config| {
        c.worker_slots = 1;
        c.swarm_max_concurrent_per_org = 3;
    };
    let first = start(None, tune).await;
    let second = start(Some(first.database_url.clone()), tune).await;
    let a = Caller::new(&first.base, &quantum_tenant(&first, "a").await);
    let b = Caller::new(&second.base, &quantum_tenant(&second, "b").await);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push((0, a.create(rastrigin(10, 60, 1500)).await));
        ids.push((1, b.create(rastrigin(10, 60, 1500)).await));
    }
    let mut workers = HashSet::new();
    for (caller, id) in &ids {
        let caller = if *caller == 0 { &a } else { &b };
        let done = caller.finished(id).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempt"], 1, "{done}");
        workers.insert(done["worker"].as_str().unwrap().to_owned());
    }
    let owners: HashSet<String> = [first.owner(), second.owner()].into();
    assert_eq!(workers, owners, "both processes ran tasks");
    // Each `SwarmTaskStarted` names its worker, and no lease is left.
    for (_, kind, data) in task_events(&first.pool).await {
        if kind == "SwarmTaskStarted" {
            assert!(owners.contains(data["worker"].as_str().unwrap()), "{data}");
        }
    }
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM task_leases")
        .fetch_one(&first.pool)
        .await
        .unwrap();
    assert_eq!(leases, 0);
    // `/health` shows each process's slots.
    let health: Value = first
        .anonymous
        .get(format!("{}/health", first.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["worker_slots"]["total"], 1, "{health}");
    assert_eq!(health["process"], first.owner());
}

#[actix_web::test]
async fn a_process_whose_worker_stops_heartbeating_has_its_task_rescued_and_completed_elsewhere() {
    rescued_after_its_scheduler_dies(2).await;
}

/// A lease far longer than any wait here: the task can only be rescued this soon because
/// the dead scheduler's heartbeat session is gone from the server.
#[actix_web::test]
async fn a_process_whose_heartbeat_session_is_gone_is_rescued_without_waiting_out_its_lease() {
    rescued_after_its_scheduler_dies(3_600).await;
}

async fn rescued_after_its_scheduler_dies(lease_secs: u64) {
    let tune = move |c: &mut Config| {
        c.worker_slots = 1;
        c.worker_lease_secs = lease_secs;
    };
    let first = start(None, tune).await;
    let tenant = quantum_tenant(&first, "rescue").await;
    let quantum = Caller::new(&first.base, &tenant);
    let id = quantum.create(rastrigin(20, 200, 100_000)).await;
    let running = quantum
        .wait_for(&id, "running on the first process", |t| {
            t["status"] == "running" && t["progress"]["iteration"].as_i64().unwrap_or(0) > 0
        })
        .await;
    assert_eq!(running["worker"], first.owner(), "{running}");
    // A second process comes up; the first one's scheduler dies without a word: it stops
    // leading, working and heartbeating, and records nothing.
    let second = start(Some(first.database_url.clone()), tune).await;
    first.state.swarm.stop();
    let quantum = Caller::new(&second.base, &tenant);
    let resumed = quantum
        .wait_for(&id, "running again on the second process", |t| {
            t["attempt"] == 2 && t["status"] == "running"
        })
        .await;
    assert_eq!(resumed["worker"], second.owner(), "{resumed}");
    // Cancel the long run: it was rescued, that is what this test is about.
    let res = quantum
        .client
        .post(format!("{}/api/v1/swarm/tasks/{id}/cancel", second.base))
        .header("x-frontend-source", "quantum")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = task_events(&second.pool).await;
    let interrupted: Vec<&Value> = events
        .iter()
        .filter(|(_, t, _)| t == "SwarmTaskInterrupted")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0]["attempt"], 1);
    assert!(
        interrupted[0].get("released").is_none(),
        "a death, not a release"
    );
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(_, t, _)| t == "SwarmTaskStarted")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["worker"], first.owner());
    assert_eq!(starts[1]["worker"], second.owner());
}

#[actix_web::test]
async fn a_rescued_task_completes_on_the_other_process() {
    let tune = |c: &mut Config| {
        c.worker_slots = 1;
        c.worker_lease_secs = 2;
    };
    let first = start(None, tune).await;
    let tenant = quantum_tenant(&first, "complete").await;
    let quantum = Caller::new(&first.base, &tenant);
    let id = quantum.create(rastrigin(10, 100, 3000)).await;
    quantum
        .wait_for(&id, "running", |t| t["status"] == "running")
        .await;
    let second = start(Some(first.database_url.clone()), tune).await;
    first.state.swarm.stop();
    let quantum = Caller::new(&second.base, &tenant);
    let done = quantum.finished(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["worker"], second.owner(), "{done}");
    // The same seed gives the same result as an uninterrupted run.
    let other = quantum.create(rastrigin(10, 100, 3000)).await;
    let again = quantum.finished(&other).await;
    assert_eq!(again["result"]["best_cost"], done["result"]["best_cost"]);
}

#[actix_web::test]
async fn caps_hold_over_three_processes() {
    let tune = |c: &mut Config| {
        c.worker_slots = 2;
        c.max_concurrent_generations = 3;
        c.swarm_max_concurrent_per_org = 1;
    };
    let first = start(None, tune).await;
    let second = start(Some(first.database_url.clone()), tune).await;
    let third = start(Some(first.database_url.clone()), tune).await;
    let bases = [&first.base, &second.base, &third.base];
    let mut callers = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let app = [&first, &second, &third][i % 3];
        callers.push(Caller::new(bases[i % 3], &quantum_tenant(app, name).await));
    }
    let mut ids: Vec<(usize, String)> = Vec::new();
    for _ in 0..3 {
        for (org, caller) in callers.iter().enumerate() {
            ids.push((org, caller.create(rastrigin(5, 40, 400)).await));
        }
    }
    let mut workers = HashSet::new();
    for (org, id) in &ids {
        let done = callers[*org].finished(id).await;
        assert_eq!(done["status"], "completed", "{done}");
        workers.insert(done["worker"].as_str().unwrap().to_owned());
    }
    assert!(workers.len() >= 2, "the work spread: {workers:?}");
    // Replay the log: never more than 3 running at once, nor 2 of one organization, and
    // each organization's tasks started in their order.
    let org_of = |stream: &str| {
        ids.iter()
            .find(|(_, id)| stream.ends_with(id.as_str()))
            .map(|(org, _)| *org)
            .unwrap()
    };
    let mut running: Vec<usize> = Vec::new();
    let mut most = 0;
    let mut started: HashMap<usize, Vec<String>> = HashMap::new();
    for (stream, kind, _) in task_events(&first.pool).await {
        match kind.as_str() {
            "SwarmTaskStarted" => {
                let org = org_of(&stream);
                running.push(org);
                started.entry(org).or_default().push(stream.clone());
                most = most.max(running.len());
                let n = running.iter().filter(|o| **o == org).count();
                assert!(n <= 1, "organization {org} ran {n} at once");
            }
            "SwarmTaskCompleted" | "SwarmTaskFailed" | "SwarmTaskCancelled" => {
                let org = org_of(&stream);
                let at = running.iter().position(|o| *o == org).unwrap();
                running.remove(at);
            }
            _ => {}
        }
    }
    assert!((1..=3).contains(&most), "at most 3 ran at once, saw {most}");
    for (org, _) in callers.iter().enumerate() {
        let created: Vec<String> = ids
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, id)| format!("swarm_task-{id}"))
            .collect();
        assert_eq!(started[&org], created, "organization {org} kept its order");
    }
}

/// Which process holds each projection, as `/health` shows it.
async fn holders(app: &App) -> Vec<(String, Option<String>)> {
    let health: Value = app
        .anonymous
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["process"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[actix_web::test]
async fn projections_split_between_two_processes_and_move_when_one_stops() {
    let first = start(None, |_| {}).await;
    let second = start(Some(first.database_url.clone()), |_| {}).await;
    let (one, two) = (first.owner(), second.owner());
    // Both end up with about half of them.
    let mut last = Vec::new();
    let mut split = false;
    for _ in 0..600 {
        last = holders(&first).await;
        let count = |o: &str| last.iter().filter(|(_, h)| h.as_deref() == Some(o)).count();
        let all_held = last.iter().all(|(_, h)| h.is_some());
        if all_held && count(&one).abs_diff(count(&two)) <= 1 {
            split = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(split, "never split evenly: {last:?}");
    // The second process stops: its projections move to the first.
    second.handle.stop(false).await;
    let mut moved = false;
    for _ in 0..600 {
        last = holders(&first).await;
        if last.iter().all(|(_, h)| h.as_deref() == Some(one.as_str())) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "never moved: {last:?}");
    // And they keep projecting: a new tenant is readable through the first process.
    let tenant = quantum_tenant(&first, "after").await;
    let quantum = Caller::new(&first.base, &tenant);
    let id = quantum.create(rastrigin(2, 10, 10)).await;
    assert_eq!(quantum.finished(&id).await["status"], "completed");
}
