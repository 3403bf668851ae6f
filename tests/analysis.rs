//! The analysis service end to end (start → progress → results → insights → report), and
//! parallel running with a legacy backend: a small HTTP server on loopback stands in for
//! the old Next.js API.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::stand_in::{Reply, Script, StandIn};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use universal_backend::http::admin::set_operator;
use universal_backend::store::{PgEventStore, PgStoreConfig};

/// One request as the legacy server received it.
#[derive(Clone, Debug)]
struct LegacyRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl LegacyRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct LegacyInner {
    /// Scripted answers per path (without the query), in order; then the default.
    answers: HashMap<String, VecDeque<(u16, Value)>>,
    requests: Vec<LegacyRequest>,
}

/// The legacy backend: answers JSON, scripted per path, and records what it was sent.
#[derive(Clone)]
struct LegacyServer {
    url: String,
    inner: Arc<Mutex<LegacyInner>>,
}

impl LegacyServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let this = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            inner: Arc::default(),
        };
        let server = this.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(socket).await });
            }
        });
        this
    }

    fn answer(&self, path: &str, status: u16, body: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .answers
            .entry(path.to_owned())
            .or_default()
            .push_back((status, body));
    }

    fn requests(&self) -> Vec<LegacyRequest> {
        self.inner.lock().unwrap().requests.clone()
    }

    async fn serve(&self, mut socket: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_owned();
        let target = first.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        let path = target.split('?').next().unwrap_or("").to_owned();
        let (status, answer) = {
            let mut inner = self.inner.lock().unwrap();
            inner.requests.push(LegacyRequest {
                method: method.clone(),
                path: target.clone(),
                headers,
                body,
            });
            inner
                .answers
                .get_mut(&path)
                .and_then(VecDeque::pop_front)
                .unwrap_or((200, json!({ "served_by": "legacy", "path": target })))
        };
        let text = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    }
}

fn insight_script(text: &str) -> Reply {
    Reply::Stream(Script {
        pieces: text
            .split_inclusive(' ')
            .map(String::from)
            .collect::<Vec<_>>(),
        ..Script::default()
    })
}

fn analysis_body() -> Value {
    json!({
        "title": "Q3 customer feedback",
        "documents": [
            { "name": "survey.txt", "text": "Checkout is slow. The checkout page froze twice! Support was kind." },
            { "name": "tickets.txt", "text": "Refund requests doubled. Checkout errors drive refunds." }
        ],
        "questions": ["What hurts customers most?"]
    })
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Waits (bounded) until the analysis reaches a final state; returns its view.
async fn finished(app: &common::TestApp, id: &str) -> Value {
    for _ in 0..600 {
        let (status, body) = send(
            &app.client,
            reqwest::Method::GET,
            app.url(&format!("/api/v1/analysis/{id}")),
            None,
        )
        .await;
        if status == 200
            && ["completed", "failed", "cancelled"].contains(&body["status"].as_str().unwrap_or(""))
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("analysis {id} did not finish");
}

/// A server proxying to a fresh legacy backend, with one analysis of its tenant finished:
/// the legacy backend, the stand-in provider (kept alive), the server and the analysis id.
async fn finished_beside_legacy() -> (LegacyServer, StandIn, common::TestApp, String) {
    let legacy = LegacyServer::start().await;
    let provider = StandIn::start().await;
    let (p, url) = (provider.clone(), legacy.url.clone());
    let app = common::spawn_app_with(move |c| {
        common::with_stand_in(c, &p);
        c.legacy_backend_url = Some(url);
    })
    .await;
    let id = start_analysis(&app).await;
    finished(&app, &id).await;
    (legacy, provider, app, id)
}

async fn start_analysis(app: &common::TestApp) -> String {
    let (status, body) = send(
        &app.client,
        reqwest::Method::POST,
        app.url("/api/v1/analysis"),
        Some(analysis_body()),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    body["id"].as_str().unwrap().to_owned()
}

/// Makes the app's first tenant an operator and waits (bounded) until the flags route
/// lets it in.
async fn become_operator(app: &common::TestApp) {
    let store = PgEventStore::start(app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    set_operator(&app.pool, store, &app.tenant.email, true)
        .await
        .unwrap();
    for _ in 0..200 {
        let res = app
            .client
            .get(app.url("/api/v1/system/flags"))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            return;
        }
        assert_eq!(res.status(), 403);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the grant did not reach the users read model");
}

async fn set_flag(app: &common::TestApp, route: &str, mode: &str) -> Value {
    let (status, body) = send(
        &app.client,
        reqwest::Method::PUT,
        app.url(&format!("/api/v1/system/flags/{route}")),
        Some(json!({ "mode": mode, "reason": format!("move {route} to {mode}") })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], mode);
    body
}

async fn metrics(app: &common::TestApp) -> String {
    app.anonymous
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[actix_web::test]
async fn an_analysis_goes_from_start_to_a_report_with_results_and_insights() {
    let provider = StandIn::start().await;
    provider.then(insight_script("Checkout speed hurts customers most."));
    let p = provider.clone();
    let app = common::spawn_app_with(move |c| common::with_stand_in(c, &p)).await;
    let id = start_analysis(&app).await;

    let view = finished(&app, &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["title"], "Q3 customer feedback");
    assert_eq!(view["progress"]["done"], 2);
    assert_eq!(view["progress"]["total"], 2);
    assert_eq!(view["results"]["documents"][0]["name"], "survey.txt");
    assert_eq!(view["results"]["words"], 18);
    assert_eq!(view["results"]["top_terms"][0]["term"], "checkout");
    assert_eq!(view["results"]["top_terms"][0]["count"], 3);
    let insights = view["insights"].as_array().unwrap();
    assert_eq!(insights.len(), 1, "{view}");
    assert_eq!(insights[0]["source"], "ai");
    assert_eq!(insights[0]["model"], "gpt-test");
    assert_eq!(insights[0]["text"], "Checkout speed hurts customers most.");
    // The AI step went through the provider with the results and the question.
    let sent = provider.requests();
    assert_eq!(sent.len(), 1);
    let prompt = sent[0].body["messages"][0]["content"].as_str().unwrap();
    assert!(prompt.contains("What hurts customers most?"), "{prompt}");
    assert!(prompt.contains("checkout (2)"), "{prompt}");

    // A user's insight joins the analysis.
    let (status, saved) = send(
        &app.client,
        reqwest::Method::POST,
        app.url(&format!("/api/v1/analysis/{id}/insights")),
        Some(json!({ "text": "Fix the checkout page before the holidays." })),
    )
    .await;
    assert_eq!(status, 201, "{saved}");
    let position = saved["position"].as_i64().unwrap();

    let res = app
        .client
        .get(app.url(&format!(
            "/api/v1/analysis/{id}/report?min_position={position}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/markdown"));
    let report = res.text().await.unwrap();
    assert!(report.starts_with("# Q3 customer feedback\n"), "{report}");
    assert!(report.contains("- Status: completed"), "{report}");
    assert!(report.contains("| survey.txt | 11 | 3 |"), "{report}");
    assert!(report.contains("| tickets.txt | 7 | 2 |"), "{report}");
    assert!(
        report.contains("> Checkout speed hurts customers most."),
        "{report}"
    );
    assert!(report.contains("AI (gpt-test)"), "{report}");
    assert!(
        report.contains("> Fix the checkout page before the holidays."),
        "{report}"
    );
    assert!(
        report.contains(&format!("user {}", app.tenant.user_id)),
        "{report}"
    );

    // The same report as an HTML page, by query or by Accept.
    for (query, accept) in [("?format=html", "*/*"), ("", "text/html")] {
        let res = app
            .client
            .get(app.url(&format!("/api/v1/analysis/{id}/report{query}")))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let page = res.text().await.unwrap();
        assert!(page.contains("<h1>Q3 customer feedback</h1>"), "{page}");
        assert!(page.contains("<td>survey.txt</td>"), "{page}");
        assert!(
            page.contains("Fix the checkout page before the holidays."),
            "{page}"
        );
    }

    // Every step is an event of the task's own stream.
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE stream_id = $1 ORDER BY version")
            .bind(format!("swarm_task-{id}"))
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        types,
        [
            "SwarmTaskCreated",
            "SwarmTaskStarted",
            "AnalysisProgressed",
            "AnalysisProgressed",
            "AnalysisResultsRecorded",
            "InsightRecorded",
            "SwarmTaskCompleted",
            "InsightRecorded",
        ]
    );
}

#[actix_web::test]
async fn bad_input_is_refused_and_another_organization_sees_no_analysis() {
    let app = common::spawn_app().await;
    let url = app.url("/api/v1/analysis");
    let post = |body: Value| send(&app.client, reqwest::Method::POST, url.clone(), Some(body));
    let mut no_docs = analysis_body();
    no_docs["documents"] = json!([]);
    let (status, body) = post(no_docs).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "documents", "{body}");
    let mut blank = analysis_body();
    blank["documents"][1]["text"] = json!("   ");
    let (status, body) = post(blank).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["details"]["field"], "documents[1].text",
        "{body}"
    );
    let mut extra = analysis_body();
    extra["colour"] = json!("blue");
    assert_eq!(post(extra).await.0, 422);
    let mut unknown_model = analysis_body();
    unknown_model["model"] = json!("no-such-model");
    let (status, body) = post(unknown_model).await;
    assert_eq!(status, 422, "{body}");
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Nothing was recorded by any of them.
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SwarmTaskCreated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(created, 0);
    assert_eq!(
        app.anonymous
            .post(&url)
            .json(&analysis_body())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Another organization's analysis does not exist for this one.
    let id = start_analysis(&app).await;
    let other = common::create_tenant(&app.anonymous, &app.base, "other").await;
    let other = common::client_for(&other);
    for path in [
        format!("/api/v1/analysis/{id}"),
        format!("/api/v1/analysis/{id}/report"),
    ] {
        let (status, body) = send(&other, reqwest::Method::GET, app.url(&path), None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = send(
        &other,
        reqwest::Method::POST,
        app.url(&format!("/api/v1/analysis/{id}/insights")),
        Some(json!({ "text": "not mine" })),
    )
    .await;
    assert_eq!(status, 404);
    // A viewer reads but does not write.
    let viewer = common::add_member(&app, "viewer").await;
    let viewer = common::client_for(&viewer);
    let (status, body) = send(
        &viewer,
        reqwest::Method::POST,
        app.url(&format!("/api/v1/analysis/{id}/insights")),
        Some(json!({ "text": "a viewer's thought" })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = send(
        &app.client,
        reqwest::Method::GET,
        app.url(&format!("/api/v1/analysis/{id}/report?format=pdf")),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Without LEGACY_BACKEND_URL, a route on `legacy` says so.
    let (status, body) = send(
        &app.client,
        reqwest::Method::GET,
        app.url(&format!("/api/getAnalysis?id={id}")),
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "legacy_unavailable", "{body}");

    // A LEGACY_BACKEND_URL that leads back to this backend cannot loop: the proxied request
    // carries no bearer token, so the second hop refuses it.
    let base = app.base.clone();
    let looping =
        common::spawn_second_app_with(&app, move |c| c.legacy_backend_url = Some(base)).await;
    let (status, body) = send(
        &app.client,
        reqwest::Method::GET,
        looping.url(&format!("/api/getAnalysis?id={id}")),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
}

#[actix_web::test]
async fn legacy_routes_are_proxied_until_their_flag_moves_them_here() {
    let (legacy, _provider, app, id) = finished_beside_legacy().await;

    // On `legacy` (a flag never set), the old backend answers, without our token.
    let res = app
        .client
        .get(app.url(&format!("/api/getAnalysis?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-served-by"], "legacy");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["served_by"], "legacy");
    legacy.answer(
        "/api/saveInsights",
        418,
        json!({ "error": "legacy says no" }),
    );
    let (status, body) = send(
        &app.client,
        reqwest::Method::POST,
        app.url("/api/saveInsights"),
        Some(json!({ "id": id, "text": "through the old API" })),
    )
    .await;
    assert_eq!((status, body), (418, json!({ "error": "legacy says no" })));
    let sent = legacy.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].method, "GET");
    assert_eq!(sent[0].path, format!("/api/getAnalysis?id={id}"));
    assert_eq!(
        sent[0].header("x-forwarded-user"),
        Some(app.tenant.user_id.as_str())
    );
    assert_eq!(
        sent[0].header("x-forwarded-organization"),
        Some(app.tenant.organization_id.as_str())
    );
    assert_eq!(sent[0].header("authorization"), None);
    assert_eq!(
        sent[1].body,
        json!({ "id": id, "text": "through the old API" })
    );
    // Signed-in callers only, in every mode.
    let res = app
        .anonymous
        .get(app.url(&format!("/api/getAnalysis?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Only operators see and set flags.
    let member = common::add_member(&app, "admin").await;
    let member = common::client_for(&member);
    let (status, _) = send(
        &member,
        reqwest::Method::PUT,
        app.url("/api/v1/system/flags/getAnalysis"),
        Some(json!({ "mode": "new" })),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &member,
        reqwest::Method::GET,
        app.url("/api/v1/system/flags"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    become_operator(&app).await;
    let (status, _) = send(
        &app.client,
        reqwest::Method::PUT,
        app.url("/api/v1/system/flags/nope"),
        Some(json!({ "mode": "new" })),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        &app.client,
        reqwest::Method::PUT,
        app.url("/api/v1/system/flags/getAnalysis"),
        Some(json!({ "mode": "sideways" })),
    )
    .await;
    assert_eq!(status, 422);

    // On `new`, this backend answers with the analysis handlers.
    set_flag(&app, "getAnalysis", "new").await;
    set_flag(&app, "saveInsights", "new").await;
    let res = app
        .client
        .get(app.url(&format!("/api/getAnalysis?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-served-by"], "new");
    let served: Value = res.json().await.unwrap();
    let (_, direct) = send(
        &app.client,
        reqwest::Method::GET,
        app.url(&format!("/api/v1/analysis/{id}")),
        None,
    )
    .await;
    assert_eq!(served, direct);
    let (status, body) = send(
        &app.client,
        reqwest::Method::POST,
        app.url("/api/saveInsights"),
        Some(json!({ "id": id, "text": "through the new API" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        legacy.requests().len(),
        2,
        "nothing more reached the old backend"
    );
    let (status, _) = send(
        &app.client,
        reqwest::Method::GET,
        app.url("/api/getAnalysis?id=nope"),
        None,
    )
    .await;
    assert_eq!(status, 422);

    // The history: who changed what and when, newest first.
    set_flag(&app, "getAnalysis", "legacy").await;
    let (status, flags) = send(
        &app.client,
        reqwest::Method::GET,
        app.url("/api/v1/system/flags"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let flag = flags["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["route"] == "getAnalysis")
        .unwrap()
        .clone();
    assert_eq!(flag["mode"], "legacy");
    let history = flag["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{flag}");
    assert_eq!(
        (
            history[0]["from_mode"].as_str(),
            history[0]["to_mode"].as_str()
        ),
        (Some("new"), Some("legacy"))
    );
    assert_eq!(
        (
            history[1]["from_mode"].as_str(),
            history[1]["to_mode"].as_str()
        ),
        (Some("legacy"), Some("new"))
    );
    assert_eq!(history[1]["actor"], "user");
    assert_eq!(history[1]["user_id"], app.tenant.user_id.as_str());
    assert_eq!(history[1]["reason"], "move getAnalysis to new");
    // Setting the mode a flag has records nothing.
    set_flag(&app, "getAnalysis", "legacy").await;
    let changes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'FlagChanged'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(changes, 3);
}

#[actix_web::test]
async fn a_route_failing_here_rolls_back_to_legacy_by_itself() {
    let legacy = LegacyServer::start().await;
    let provider = StandIn::start().await;
    for _ in 0..100 {
        provider.then(Reply::Status {
            code: 500,
            retry_after: None,
        });
    }
    let (p, url) = (provider.clone(), legacy.url.clone());
    let app = common::spawn_app_with(move |c| {
        common::with_stand_in(c, &p);
        c.legacy_backend_url = Some(url);
        c.flag_rollback_min_requests = 4;
        c.flag_rollback_threshold = 0.05;
        // One tenant's failures are enough here (see the test of several tenants).
        c.flag_rollback_min_tenants = 1;
    })
    .await;
    become_operator(&app).await;
    set_flag(&app, "openai", "new").await;
    let prompt = json!({ "prompt": "Summarise the feedback" });
    for i in 0..4 {
        let res = app
            .client
            .post(app.url("/api/openai"))
            .json(&prompt)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 502, "request {i}");
        assert_eq!(res.headers()["x-served-by"], "new");
    }
    // The fourth failure crossed the threshold: the flag is back on legacy.
    let res = app
        .client
        .post(app.url("/api/openai"))
        .json(&prompt)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-served-by"], "legacy");
    assert_eq!(legacy.requests().len(), 1);

    let (_, flags) = send(
        &app.client,
        reqwest::Method::GET,
        app.url("/api/v1/system/flags"),
        None,
    )
    .await;
    let flag = flags["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["route"] == "openai")
        .unwrap()
        .clone();
    assert_eq!(flag["mode"], "legacy", "{flag}");
    let last = &flag["history"][0];
    assert_eq!(last["actor"], "system", "{flag}");
    assert_eq!(last["user_id"], Value::Null);
    assert_eq!(last["from_mode"], "new");
    assert_eq!(last["error_rate"], 1.0);
    assert_eq!(last["requests"], 4);
    let text = metrics(&app).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("ub_flag_rollbacks_total{route=\"openai\"}")),
        "{text}"
    );
    assert!(
        text.contains("ub_flag_error_rate{route=\"openai\"}"),
        "{text}"
    );

    // A second process that measured the same failure records no second flip.
    let (p, url) = (provider.clone(), legacy.url.clone());
    let second = common::spawn_second_app_with(&app, move |c| {
        common::with_stand_in(c, &p);
        c.legacy_backend_url = Some(url);
        c.flag_rollback_min_requests = 4;
        c.flag_rollback_min_tenants = 1;
    })
    .await;
    let (status, _) = send(
        &app.client,
        reqwest::Method::PUT,
        second.url("/api/v1/system/flags/openai"),
        Some(json!({ "mode": "new" })),
    )
    .await;
    assert_eq!(status, 200);
    // Three failures each: below the minimum of requests in either window.
    for base in [&app.base, &second.base] {
        for _ in 0..3 {
            let res = app
                .client
                .post(format!("{base}/api/openai"))
                .json(&prompt)
                .send()
                .await
                .unwrap();
            let served = res.headers().get("x-served-by").cloned();
            assert_eq!(
                res.status(),
                502,
                "{served:?} {}",
                res.text().await.unwrap()
            );
        }
    }
    let rollbacks = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE event_type = 'FlagChanged' \
             AND data->>'actor' = 'system'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(rollbacks().await, 1);
    // The fourth failure in both processes at once: each window crosses the threshold.
    let (a, b) = tokio::join!(
        app.client.post(app.url("/api/openai")).json(&prompt).send(),
        app.client
            .post(second.url("/api/openai"))
            .json(&prompt)
            .send(),
    );
    // One of them may already find the flag rolled back by the other and go to legacy.
    let statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 502].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(
        rollbacks().await,
        2,
        "one flip, however many processes measured the failure"
    );
}

/// The mode of `route`'s flag, as the flags route shows it.
async fn flag_mode(app: &common::TestApp, route: &str) -> Value {
    let (status, flags) = send(
        &app.client,
        reqwest::Method::GET,
        app.url("/api/v1/system/flags"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{flags}");
    flags["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["route"] == route)
        .unwrap()["mode"]
        .clone()
}

#[actix_web::test]
async fn one_tenants_refused_or_failing_prompts_do_not_flip_a_flag_and_failures_of_several_do() {
    let legacy = LegacyServer::start().await;
    let provider = StandIn::start().await;
    let (p, url) = (provider.clone(), legacy.url.clone());
    let app = common::spawn_app_with(move |c| {
        common::with_stand_in(c, &p);
        c.legacy_backend_url = Some(url);
        c.flag_rollback_min_requests = 4;
        c.flag_rollback_threshold = 0.05;
        // The default: failures from three organizations.
        assert_eq!(c.flag_rollback_min_tenants, 3);
        c.provider_breaker_failures = 1_000;
    })
    .await;
    become_operator(&app).await;
    set_flag(&app, "openai", "new").await;
    let prompt = json!({ "prompt": "Summarise the feedback" });
    let ask = |client: reqwest::Client| {
        let url = app.url("/api/openai");
        let prompt = prompt.clone();
        async move {
            let res = client.post(url).json(&prompt).send().await.unwrap();
            let served = res
                .headers()
                .get("x-served-by")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, served, body)
        }
    };

    // Twenty prompts the provider refuses (400) are the caller's to fix: 422, not failures.
    for _ in 0..20 {
        provider.then(Reply::Status {
            code: 400,
            retry_after: None,
        });
    }
    for i in 0..20 {
        let (status, served, body) = ask(app.client.clone()).await;
        assert_eq!(status, 422, "request {i}: {body}");
        assert_eq!(body["error"]["code"], "provider_rejected", "{body}");
        assert_eq!(served.as_deref(), Some("new"));
    }
    assert_eq!(flag_mode(&app, "openai").await, "new");

    // One tenant's server-side failures (500) alone do not flip the route for everyone.
    for _ in 0..10 {
        provider.then(Reply::Status {
            code: 500,
            retry_after: None,
        });
    }
    for i in 0..10 {
        let (status, served, body) = ask(app.client.clone()).await;
        assert_eq!(status, 502, "request {i}: {body}");
        assert_eq!(served.as_deref(), Some("new"));
    }
    assert_eq!(flag_mode(&app, "openai").await, "new");

    // A second organization failing too: still two of three.
    let second =
        common::client_for(&common::create_tenant(&app.anonymous, &app.base, "second").await);
    provider.then(Reply::Status {
        code: 500,
        retry_after: None,
    });
    let (status, _, body) = ask(second).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(flag_mode(&app, "openai").await, "new");
    assert!(legacy.requests().is_empty());

    // The third organization's failure makes the failure broad: the flag rolls back.
    let third =
        common::client_for(&common::create_tenant(&app.anonymous, &app.base, "third").await);
    provider.then(Reply::Status {
        code: 500,
        retry_after: None,
    });
    let (status, _, body) = ask(third.clone()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(flag_mode(&app, "openai").await, "legacy");
    let (status, served, _) = ask(third).await;
    assert_eq!(status, 200);
    assert_eq!(served.as_deref(), Some("legacy"));
    assert_eq!(legacy.requests().len(), 1);
    let (_, flags) = send(
        &app.client,
        reqwest::Method::GET,
        app.url("/api/v1/system/flags"),
        None,
    )
    .await;
    let flag = flags["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["route"] == "openai")
        .unwrap()
        .clone();
    let last = &flag["history"][0];
    assert_eq!(last["actor"], "system", "{flag}");
    assert_eq!(last["requests"], 32, "{flag}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("3 failing organizations"),
        "{flag}"
    );
}

#[actix_web::test]
async fn compare_mode_tells_matching_answers_from_differing_ones() {
    let (legacy, _provider, app, id) = finished_beside_legacy().await;
    become_operator(&app).await;
    set_flag(&app, "process-results", "compare").await;

    let (_, view) = send(
        &app.client,
        reqwest::Method::GET,
        app.url(&format!("/api/v1/analysis/{id}")),
        None,
    )
    .await;
    let same = json!({ "id": id, "status": view["status"], "results": view["results"], "insights": view["insights"] });
    let mut differing = same.clone();
    differing["results"]["words"] = json!(99);
    legacy.answer("/api/process-results", 200, same.clone());
    legacy.answer("/api/process-results", 200, differing.clone());

    let path = app.url(&format!("/api/process-results?id={id}"));
    let res = app.client.get(&path).send().await.unwrap();
    assert_eq!(res.headers()["x-compare"], "match");
    assert_eq!(res.headers()["x-served-by"], "legacy");
    assert_eq!(res.json::<Value>().await.unwrap(), same);
    let res = app.client.get(&path).send().await.unwrap();
    assert_eq!(res.headers()["x-compare"], "mismatch");
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        differing,
        "the caller gets the legacy answer"
    );
    let text = metrics(&app).await;
    assert!(
        text.contains("ub_legacy_compare_total{route=\"process-results\",outcome=\"match\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ub_legacy_compare_total{route=\"process-results\",outcome=\"mismatch\"} 1"),
        "{text}"
    );
}

#[actix_web::test]
async fn the_real_socket_io_client_follows_an_analysis_on_its_namespace() {
    let provider = StandIn::start().await;
    // The AI step waits long enough for the client to join the room first.
    provider.then(Reply::Stream(Script {
        stall: Duration::from_millis(1500),
        pieces: vec!["Checkout ".into(), "hurts most.".into()],
        ..Script::default()
    }));
    let p = provider.clone();
    let app = common::spawn_app_with(move |c| common::with_stand_in(c, &p)).await;
    let stranger = common::create_tenant(&app.anonymous, &app.base, "stranger").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let args = [
        dir.join("analysis.mjs").display().to_string(),
        app.base.clone(),
        app.tenant.access_token.clone(),
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
    let id = report["id"].as_str().unwrap();
    assert_eq!(report["joined"]["ok"], true, "{report}");
    assert_eq!(report["refused"]["ok"], false, "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["analysis_id"] == id), "{report}");
    let names: Vec<&str> = steps.iter().map(|s| s["event"].as_str().unwrap()).collect();
    // The join may come after the first steps; from the AI step on, every step arrives.
    let ai = names
        .iter()
        .position(|n| *n == "analysis:insight")
        .expect("the AI insight arrives");
    assert_eq!(steps[ai]["source"], "ai", "{report}");
    assert_eq!(
        &names[ai..],
        ["analysis:insight", "analysis:completed", "analysis:insight"],
        "{report}"
    );
    assert_eq!(report["user_insight"]["text"], "Seen live.");
    assert_eq!(report["user_insight"]["source"], "user");
}
