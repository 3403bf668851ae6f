//! ToolboxAI agent executions, black-box over HTTP against a stand-in OpenAI-compatible
//! provider on loopback: execute and wait, the schema retry, validation at the edge, tenant
//! isolation, list filters, metrics, the circuit breakers across two processes, and
//! `/health/agents`.

use std::time::Duration;

use serde_json::{json, Value};
use universal_backend::http::admin::set_operator;
use universal_backend::store::{PgEventStore, PgStoreConfig};
use universal_backend::Config;

use common::stand_in::{Reply, Script, StandIn};

mod common;

struct Toolbox {
    app: common::TestApp,
    /// The tenant's token, `X-Frontend-Source: toolbox`.
    client: reqwest::Client,
    provider: StandIn,
}

async fn start(tune: impl FnOnce(&mut Config)) -> Toolbox {
    let (app, client, provider) = common::spawn_with_stand_in("toolbox", tune).await;
    Toolbox {
        app,
        client,
        provider,
    }
}

/// A model answer that streams `text` in three pieces.
fn answer(text: &str) -> Reply {
    let cut = text.len() / 3;
    Reply::Stream(Script {
        pieces: vec![
            text[..cut].to_owned(),
            text[cut..2 * cut].to_owned(),
            text[2 * cut..].to_owned(),
        ],
        usage: Some((120, 80)),
        ..Script::default()
    })
}

fn lesson() -> String {
    json!({
        "title": "Fractions",
        "summary": "What a fraction is and how to compare two.",
        "objectives": ["Learn fractions"],
        "sections": [
            {"heading": "Parts of a whole", "content": "A fraction names equal parts."},
            {"heading": "Comparing", "content": "Same denominator: compare numerators."}
        ],
        "vocabulary": [{"term": "denominator", "definition": "How many equal parts."}]
    })
    .to_string()
}

fn content_request() -> Value {
    json!({
        "agent_type": "content_generator",
        "task_type": "generate_content",
        "task_data": {"subject": "Mathematics", "grade_level": 5, "objectives": ["Learn fractions"]}
    })
}

impl Toolbox {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.client.post(self.app.url(path)).json(&body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        send(self.client.get(self.app.url(path))).await
    }

    /// Executes and waits for the result (the stand-in answers at once).
    async fn execute_and_wait(&self, body: Value) -> Value {
        let (status, done) = self.post("/api/v1/agents/execute?wait=true", body).await;
        assert_eq!(status, 200, "{done}");
        done
    }
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls `path` until `done` holds (at most 20 s: a bound, not a timing claim).
async fn until(client: &reqwest::Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = send(client.get(url)).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn an_execution_answers_at_once_then_completes_with_output_valid_against_its_schema() {
    let t = start(|_| {}).await;
    t.provider.then(answer(&lesson()));
    let (status, accepted) = t.post("/api/v1/agents/execute", content_request()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(
        accepted["location"],
        format!("/api/v1/agents/executions/{id}")
    );
    let url = t.app.url(&format!("/api/v1/agents/executions/{id}"));
    let done = until(&t.client, &url, |e| e["status"] == "completed").await;
    assert_eq!(done["agent_type"], "content_generator");
    assert_eq!(done["task_type"], "generate_content");
    assert_eq!(done["model"], "gpt-test");
    assert_eq!(done["output"]["title"], "Fractions");
    assert_eq!(done["output"]["sections"].as_array().unwrap().len(), 2);
    assert_eq!(
        (done["calls"].as_i64(), done["refusals"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (
            done["prompt_tokens"].as_i64(),
            done["completion_tokens"].as_i64()
        ),
        (Some(120), Some(80))
    );
    assert_eq!(done["task_data"]["subject"], "Mathematics");
    // The prompt came from the registry: the system message holds the output schema, the
    // user message the filled-in template.
    let sent = &t.provider.requests()[0].body;
    let system = sent["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("\"sections\""), "{system}");
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("Write a lesson on Mathematics for grade 5."),
        "{user}"
    );
    assert!(
        user.contains("Learning objectives: Learn fractions"),
        "{user}"
    );
    // The execution is a swarm task of type agent.
    let (kind,): (String,) = sqlx::query_as("SELECT type FROM swarm_tasks WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(kind, "agent");
}

#[actix_web::test]
async fn waiting_answers_200_with_the_result_or_202_with_the_status_when_the_wait_ends() {
    let t = start(|_| {}).await;
    t.provider.then(answer(&lesson()));
    let done = t.execute_and_wait(content_request()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"]["title"], "Fractions");

    // A slow model and `Prefer: wait=1`: the wait ends first.
    t.provider.then(Reply::Stream(Script {
        stall: Duration::from_secs(4),
        pieces: vec![lesson()],
        ..Script::default()
    }));
    let res = t
        .client
        .post(t.app.url("/api/v1/agents/execute"))
        .header("prefer", "wait=1")
        .json(&content_request())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["preference-applied"], "wait=1");
    let body: Value = res.json().await.unwrap();
    assert!(
        ["queued", "running"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    let url = t.app.url(body["location"].as_str().unwrap());
    let done = until(&t.client, &url, |e| e["status"] == "completed").await;
    assert_eq!(done["output"]["title"], "Fractions");
}

#[actix_web::test]
async fn an_output_refused_by_its_schema_is_retried_once_with_the_error_and_then_succeeds() {
    let t = start(|_| {}).await;
    t.provider
        .then(answer(r#"{"title": "Fractions", "summary": "Parts"}"#))
        .then(answer(&format!("```json\n{}\n```", lesson())));
    let done = t.execute_and_wait(content_request()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (done["calls"].as_i64(), done["refusals"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(done["last_refusal"], "output.sections: is required");
    assert_eq!(done["prompt_tokens"], 240);
    let requests = t.provider.requests();
    assert_eq!(requests.len(), 2);
    let retry = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(
        retry.len(),
        4,
        "system, user, the refused answer, the refusal"
    );
    assert_eq!(retry[2]["role"], "assistant");
    let refusal = retry[3]["content"].as_str().unwrap();
    assert!(
        refusal.contains("output.sections: is required"),
        "{refusal}"
    );
}

#[actix_web::test]
async fn an_output_refused_twice_fails_the_execution_with_the_reason() {
    let t = start(|_| {}).await;
    t.provider
        .then(answer("Here is your lesson: fractions are fun."))
        .then(answer(r#"{"title": "", "summary": "s", "sections": []}"#));
    let done = t.execute_and_wait(content_request()).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("failed its schema 2 times")
            && error.contains("output.sections: must hold at least 1 items"),
        "{error}"
    );
    assert_eq!(
        (done["calls"].as_i64(), done["refusals"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(done["output"].is_null());
    assert_eq!(t.provider.requests().len(), 2, "no third call");
}

#[actix_web::test]
async fn bad_input_is_refused_with_400_naming_the_field_and_records_nothing() {
    let t = start(|_| {}).await;
    let head = t.app.head().await;
    let cases = [
        (
            json!({"agent_type": "poet", "task_type": "generate_content", "task_data": {}}),
            "agent_type",
            "unknown agent; known agents: content_generator, quiz_generator",
        ),
        (
            json!({"agent_type": "content_generator", "task_type": "write_poem", "task_data": {}}),
            "task_type",
            "content_generator has no such task type; its task types: generate_content",
        ),
        (
            json!({"agent_type": "content_generator", "task_type": "generate_content",
                   "task_data": {"subject": "Math"}}),
            "task_data.grade_level",
            "is required",
        ),
        (
            json!({"agent_type": "content_generator", "task_type": "generate_content",
                   "task_data": {"subject": "Math", "grade_level": "five"}}),
            "task_data.grade_level",
            "must be an integer, not a string",
        ),
        (
            json!({"agent_type": "quiz_generator", "task_type": "generate_quiz",
                   "task_data": {"subject": "Math", "grade_level": 5, "difficulty": "extreme"}}),
            "task_data.difficulty",
            "must be one of \"easy\", \"medium\", \"hard\"",
        ),
        // The text rule of every other field holds inside task_data, at any depth.
        (
            json!({"agent_type": "content_generator", "task_type": "generate_content",
                   "task_data": {"subject": "Math\u{7}", "grade_level": 5}}),
            "task_data.subject",
            "must not contain control characters (found U+0007)",
        ),
        (
            json!({"agent_type": "content_generator", "task_type": "generate_content",
                   "task_data": {"subject": "Math", "grade_level": 5,
                                 "objectives": ["ok", "\u{1b}[31mred"]}}),
            "task_data.objectives[1]",
            "must not contain control characters (found U+001B)",
        ),
        (
            json!({"agent_type": "content_generator", "task_type": "generate_content",
                   "task_data": {"subject": "Math", "grade_level": 5, "notes": "del\u{7f}"}}),
            "task_data.notes",
            "must not contain control characters (found U+007F)",
        ),
        (
            json!({"agent_type": "content_generator", "task_type": "generate_content",
                   "task_data": {"subject": "Math", "grade_level": 5}, "model": "gpt-nope"}),
            "model",
            "no configured provider serves `gpt-nope`",
        ),
    ];
    for (body, field, reason) in cases {
        let (status, error) = t.post("/api/v1/agents/execute", body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["code"], "validation_failed");
        assert_eq!(error["error"]["details"]["field"], field, "{error}");
        assert_eq!(error["error"]["details"]["reason"], reason, "{error}");
    }
    let (status, error) = t
        .post(
            "/api/v1/agents/execute",
            json!({"agent_type": "content_generator"}),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("task_type"));
    assert_eq!(t.app.head().await, head, "nothing was recorded");
    assert!(t.provider.requests().is_empty());
}

#[actix_web::test]
async fn another_organizations_execution_is_not_found_and_its_list_is_its_own() {
    let t = start(|_| {}).await;
    t.provider.then(answer(&lesson()));
    let done = t.execute_and_wait(content_request()).await;
    let id = done["id"].as_str().unwrap();
    let other = common::create_tenant(&t.app.anonymous, &t.app.base, "other").await;
    let other_client = common::client_for(&other);
    common::enable_frontend(&t.app, &other_client, &other.organization_id, "toolbox").await;
    let other_client = common::frontend_client(&other.access_token, "toolbox");
    let (status, _) =
        send(other_client.get(t.app.url(&format!("/api/v1/agents/executions/{id}")))).await;
    assert_eq!(status, 404);
    let (status, list) = send(other_client.get(t.app.url("/api/v1/agents/executions"))).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"], json!([]));
    // Without the toolbox frontend named, the routes are refused.
    let (status, _) = send(
        t.app
            .client
            .get(t.app.url(&format!("/api/v1/agents/executions/{id}"))),
    )
    .await;
    assert_eq!(status, 403);
}

#[actix_web::test]
async fn the_list_filters_by_agent_status_and_time_and_pages_with_a_cursor() {
    let t = start(|_| {}).await;
    let quiz = json!({
        "title": "Fractions quiz",
        "questions": [{"question": "1/2 + 1/2?", "options": ["1", "2"], "answer_index": 0}]
    })
    .to_string();
    t.provider
        .then(answer(&lesson()))
        .then(answer("no JSON"))
        .then(answer("still no JSON"))
        .then(answer(&quiz));
    let first = t.execute_and_wait(content_request()).await;
    let failed = t.execute_and_wait(content_request()).await;
    assert_eq!(failed["status"], "failed");
    let between = chrono::Utc::now();
    let quiz_done = t
        .execute_and_wait(json!({
            "agent_type": "quiz_generator", "task_type": "generate_quiz",
            "task_data": {"subject": "Mathematics", "grade_level": 5, "num_questions": 1}
        }))
        .await;
    assert_eq!(quiz_done["status"], "completed", "{quiz_done}");
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = t.get("/api/v1/agents/executions").await;
    assert_eq!(
        ids(&all),
        [&quiz_done["id"], &failed["id"], &first["id"]].map(|v| v.as_str().unwrap().to_owned())
    );
    let (_, content) = t
        .get("/api/v1/agents/executions?agent_type=content_generator")
        .await;
    assert_eq!(ids(&content).len(), 2);
    let (_, only_failed) = t.get("/api/v1/agents/executions?status=failed").await;
    assert_eq!(ids(&only_failed), [failed["id"].as_str().unwrap()]);
    let since = between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (_, recent) = t
        .get(&format!(
            "/api/v1/agents/executions?since={}",
            since.replace('+', "%2B")
        ))
        .await;
    assert_eq!(ids(&recent), [quiz_done["id"].as_str().unwrap()]);
    let (_, earlier) = t
        .get(&format!(
            "/api/v1/agents/executions?until={}",
            since.replace('+', "%2B")
        ))
        .await;
    assert_eq!(ids(&earlier).len(), 2);
    let (_, page1) = t.get("/api/v1/agents/executions?limit=2").await;
    assert_eq!(ids(&page1).len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = t
        .get(&format!(
            "/api/v1/agents/executions?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(ids(&page2), [first["id"].as_str().unwrap()]);
    assert!(page2["next_cursor"].is_null());
    for bad in ["status=done", "agent_type=poet", "limit=0", "cursor=abc"] {
        let (status, _) = t.get(&format!("/api/v1/agents/executions?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[actix_web::test]
async fn metrics_count_executions_tokens_and_refusals_per_agent_with_duration_percentiles() {
    let t = start(|_| {}).await;
    t.provider
        .then(answer(&lesson()))
        .then(answer("{}"))
        .then(answer(&lesson()))
        .then(answer("nope"))
        .then(answer("nope"));
    for _ in 0..3 {
        t.execute_and_wait(content_request()).await;
    }
    let (status, metrics) = t.get("/api/v1/agents/metrics").await;
    assert_eq!(status, 200);
    let content = &metrics["agents"][0];
    assert_eq!(content["agent_type"], "content_generator");
    assert_eq!(
        [
            &content["executions"],
            &content["completed"],
            &content["failed"]
        ],
        [&json!(3), &json!(2), &json!(1)]
    );
    assert_eq!(content["calls"], 5);
    assert_eq!(content["refusals"], 3);
    assert_eq!(content["prompt_tokens"], 600);
    assert_eq!(content["completion_tokens"], 400);
    let rate = content["success_rate"].as_f64().unwrap();
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    let (p50, p95) = (
        content["p50_duration_ms"].as_f64().unwrap(),
        content["p95_duration_ms"].as_f64().unwrap(),
    );
    assert!(p50 >= 0.0 && p95 >= p50, "{content}");
    let quiz = &metrics["agents"][1];
    assert_eq!(quiz["agent_type"], "quiz_generator");
    assert_eq!(quiz["executions"], 0);
    assert!(quiz["success_rate"].is_null() && quiz["p50_duration_ms"].is_null());
}

#[actix_web::test]
async fn a_breaker_opened_in_one_process_is_shown_and_reset_everywhere_by_an_operator_only() {
    let t = start(|c| {
        c.provider_breaker_failures = 1;
        c.provider_breaker_open_secs = 600;
    })
    .await;
    let second = common::spawn_second_app_with(&t.app, |c| {
        common::with_stand_in(c, &t.provider);
        c.provider_breaker_failures = 1;
        c.provider_breaker_open_secs = 600;
        c.run_swarm_scheduler = false;
    })
    .await;
    t.provider.then(Reply::Status {
        code: 500,
        retry_after: None,
    });
    let failed = t.execute_and_wait(content_request()).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("status 500"),
        "{failed}"
    );
    // Any process shows the breaker that opened in the process that ran the execution.
    let on_second = second.url("/api/v1/system/circuit-breakers");
    let open = until(&t.client, &on_second, |b| {
        b["breakers"][0]["state"] == "open"
    })
    .await;
    let breaker = &open["breakers"][0];
    assert_eq!(breaker["name"], "openai");
    assert_eq!(breaker["failure_count"], 1);
    assert!(breaker["next_probe_at"].is_string(), "{breaker}");
    assert_eq!(breaker["processes"].as_array().unwrap().len(), 2);
    let (_, health) = send(t.app.anonymous.get(t.app.url("/health/agents"))).await;
    assert_eq!(health["status"], "degraded");

    // While open, an execution fails at once without calling the provider.
    let calls = t.provider.requests().len();
    let refused = t.execute_and_wait(content_request()).await;
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{refused}"
    );
    assert_eq!(t.provider.requests().len(), calls);

    // A member may not reset, nor an organization's admin; an operator may, through the
    // other process.
    let member = common::add_member(&t.app, "member").await;
    let member_client = common::frontend_client(&member.access_token, "toolbox");
    let (status, error) =
        send(member_client.post(second.url("/api/v1/system/circuit-breakers/openai/reset"))).await;
    assert_eq!(status, 403, "{error}");
    let (status, error) = send(
        t.client
            .post(second.url("/api/v1/system/circuit-breakers/openai/reset")),
    )
    .await;
    assert_eq!(status, 403, "{error}");
    become_operator(&t).await;
    let (status, _) = send(
        t.client
            .post(second.url("/api/v1/system/circuit-breakers/nothing/reset")),
    )
    .await;
    assert_eq!(status, 404);
    let (status, reset) = send(
        t.client
            .post(second.url("/api/v1/system/circuit-breakers/openai/reset")),
    )
    .await;
    assert_eq!(status, 200, "{reset}");
    assert_eq!(reset["state"], "closed");
    // The first process, which runs executions, gets the reset too.
    let url = t.app.url("/api/v1/system/circuit-breakers");
    until(&t.client, &url, |b| {
        b["breakers"][0]["state"] == "closed"
            && b["breakers"][0]["processes"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["state"] == "closed"))
    })
    .await;
    t.provider.then(answer(&lesson()));
    let done = t.execute_and_wait(content_request()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let resets: i64 = sqlx::query_scalar("SELECT count(*) FROM circuit_breaker_resets")
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(resets, 1);
    second.handle.stop(true).await;
}

/// Makes the tenant an operator (the account-wide admin role) and waits (bounded) until
/// the read model that the operator check reads has it.
async fn become_operator(t: &Toolbox) {
    let store = PgEventStore::start(t.app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let user = set_operator(&t.app.pool, store, &t.app.tenant.email, true)
        .await
        .unwrap();
    for _ in 0..200 {
        let operator: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND 'admin' = ANY(roles))",
        )
        .bind(user)
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
        if operator {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the grant did not reach the users read model");
}

#[actix_web::test]
async fn an_organization_admin_may_read_the_breakers_but_not_reset_them() {
    let t = start(|_| {}).await;
    // The tenant created its organization: it is that organization's admin.
    let (status, members) = send(t.app.client.get(t.app.url(&format!(
        "/api/v1/organizations/{}/members",
        t.app.tenant.organization_id
    ))))
    .await;
    assert_eq!(status, 200, "{members}");
    assert_eq!(members["items"][0]["role"], "admin", "{members}");
    let (status, list) = t.get("/api/v1/system/circuit-breakers").await;
    assert_eq!(status, 200, "{list}");
    assert!(list["breakers"].is_array(), "{list}");
    let (status, error) = send(
        t.client
            .post(t.app.url("/api/v1/system/circuit-breakers/openai/reset")),
    )
    .await;
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "forbidden", "{error}");
    let resets: i64 = sqlx::query_scalar("SELECT count(*) FROM circuit_breaker_resets")
        .fetch_one(&t.app.pool)
        .await
        .unwrap();
    assert_eq!(resets, 0, "nothing recorded");
}

#[actix_web::test]
async fn health_shows_each_agent_its_task_types_and_load() {
    let t = start(|_| {}).await;
    let (status, health) = send(t.app.anonymous.get(t.app.url("/health/agents"))).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let agents = health["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["name"], "content_generator");
    assert_eq!(agents[0]["task_types"], json!(["generate_content"]));
    assert_eq!(agents[0]["status"], "idle");
    assert_eq!(
        (agents[0]["running"].as_i64(), agents[0]["queued"].as_i64()),
        (Some(0), Some(0))
    );
    // A slow execution shows as load while it runs, and is gone from it after.
    t.provider.then(Reply::Stream(Script {
        stall: Duration::from_secs(2),
        pieces: vec![lesson()],
        ..Script::default()
    }));
    let (status, accepted) = t.post("/api/v1/agents/execute", content_request()).await;
    assert_eq!(status, 202);
    let url = t.app.url("/health/agents");
    let busy = until(&t.app.anonymous, &url, |h| {
        h["agents"][0]["status"] == "busy"
    })
    .await;
    assert_eq!(busy["agents"][0]["running"], 1);
    let id = accepted["id"].as_str().unwrap();
    let exec_url = t.app.url(&format!("/api/v1/agents/executions/{id}"));
    until(&t.client, &exec_url, |e| e["status"] == "completed").await;
    let idle = until(&t.app.anonymous, &url, |h| {
        h["agents"][0]["status"] == "idle"
    })
    .await;
    assert_eq!(idle["agents"][0]["running"], 0);
    assert!(idle["agents"][0]["last_active_at"].is_string());
    let (status, registry) = t.get("/api/v1/agents").await;
    assert_eq!(status, 200);
    assert_eq!(registry["agents"][1]["name"], "quiz_generator");
    assert!(registry["agents"][0]["tasks"][0]["output_schema"]["required"].is_array());
}

/// Runs `node tests/pusher/<script> <config>` to its end and returns its JSON report.
async fn node_report(script: &str, config: Value) -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pusher");
    assert!(
        dir.join("node_modules/pusher-js").exists(),
        "pusher-js is not installed: run `npm ci --prefix tests/pusher` (scripts/test does)"
    );
    let script = dir.join(script);
    let out = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .arg(config.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "the script failed: {text}");
    let report: Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text}"));
    assert_eq!(report["ok"], true, "{report}");
    report
}

#[actix_web::test]
async fn pusher_js_watches_an_execution_from_started_to_content_generated_on_another_process() {
    let t = start(|_| {}).await;
    let second = common::spawn_second_app_with(&t.app, |c| {
        common::with_stand_in(c, &t.provider);
        c.run_swarm_scheduler = false;
    })
    .await;
    t.provider
        .then(answer(r#"{"title": "Fractions"}"#))
        .then(answer(&lesson()));
    let org = t.app.tenant.organization_id.clone();
    // The socket is on the second process; the first one runs the execution.
    let report = node_report(
        "agents.mjs",
        json!({
            "socketBase": second.base, "authBase": second.base, "apiBase": t.app.base,
            "key": "universal-backend-key", "token": t.app.tenant.access_token, "orgId": org,
        }),
    )
    .await;
    let id = report["id"].as_str().unwrap();
    let events = |list: &str| -> Vec<String> {
        report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        events("public"),
        [
            "generation-started",
            "generation-progress",
            "generation-progress",
            "content-generated"
        ]
    );
    let public = report["public"].as_array().unwrap();
    for e in public {
        assert_eq!(e["data"]["task_id"], id);
        assert_eq!(e["data"]["agent_type"], "content_generator");
        assert!(
            e["data"].get("output").is_none(),
            "no content on the public channel"
        );
        assert!(
            e["data"].get("error").is_none(),
            "no details on the public channel"
        );
    }
    assert_eq!(public[1]["data"]["accepted"], false);
    assert_eq!(public[2]["data"]["accepted"], true);
    assert_eq!(public[3]["data"]["status"], "completed");
    assert_eq!(
        events("private"),
        [
            "generation-started",
            "agent-status-update",
            "generation-progress",
            "generation-progress",
            "content-generated",
            "agent-status-update"
        ]
    );
    let private = report["private"].as_array().unwrap();
    assert_eq!(private[1]["data"]["status"], "running");
    assert_eq!(private[2]["data"]["error"], "output.summary: is required");
    assert_eq!(private[4]["data"]["output"]["title"], "Fractions");
    assert_eq!(private[4]["data"]["calls"], 2);
    assert_eq!(private[5]["data"]["status"], "completed");
    second.handle.stop(true).await;
}
