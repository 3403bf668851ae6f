//! FlowMind chat, black-box over HTTP against a stand-in OpenAI-compatible provider on
//! loopback: streamed replies into events and read models, SSE with resumption, retries
//! before the first token, failures mid-stream, the circuit breaker, cancel, fork and
//! regenerate, tenant isolation, production without a provider, and two processes.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use universal_backend::Config;

use common::stand_in::{Reply, Script, StandIn};

mod common;

struct Chat {
    app: common::TestApp,
    /// The tenant's token, `X-Frontend-Source: flowmind`.
    client: reqwest::Client,
    provider: StandIn,
}

async fn start(tune: impl FnOnce(&mut Config)) -> Chat {
    // Chats retry before the first token (twice), as FlowMind's settings do.
    let (app, client, provider) = common::spawn_with_stand_in("flowmind", |c| {
        c.provider_max_retries = 2;
        tune(c);
    })
    .await;
    Chat {
        app,
        client,
        provider,
    }
}

impl Chat {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        send(&self.client, &self.app.url(path), method, body).await
    }

    async fn session(&self, body: Value) -> String {
        let (status, created) = self
            .send(reqwest::Method::POST, "/api/v1/ai/sessions", Some(body))
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    async fn post(&self, session: &str, content: &str) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("/api/v1/ai/sessions/{session}/messages"),
            Some(json!({ "content": content })),
        )
        .await
    }

    async fn messages(&self, session: &str) -> Vec<Value> {
        let head = self.app.head().await;
        let (status, page) = self
            .send(
                reqwest::Method::GET,
                &format!("/api/v1/ai/sessions/{session}/messages?min_position={head}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().unwrap().clone()
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One Server-Sent Event: (event, id, data).
type Sse = (String, Option<u64>, Value);

/// Opens the reply's SSE stream and reads it until its ending (at most 20 s), or until
/// `stop_after` deltas when given.
async fn follow(
    client: &reqwest::Client,
    url: &str,
    last_event_id: Option<u64>,
    stop_after: Option<usize>,
) -> Vec<Sse> {
    let mut req = client.get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).ok();
                    }
                }
                let Some(name) = name else { continue };
                let ending = name != "delta";
                events.push((name, id, data.unwrap_or(Value::Null)));
                let deltas = events.iter().filter(|e| e.0 == "delta").count();
                if ending || stop_after == Some(deltas) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the reply stream ends in time");
    events
}

fn text_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.0 == "delta")
        .map(|e| e.2["text"].as_str().unwrap())
        .collect()
}

fn stream_url(app: &common::TestApp, posted: &Value) -> String {
    app.url(posted["stream_url"].as_str().unwrap())
}

/// Events of one type in a session's stream, as stored.
async fn stored(app: &common::TestApp, session: &str, event_type: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT data FROM events WHERE stream_id = $1 AND event_type = $2 ORDER BY global_position",
    )
    .bind(format!("conversation-{session}"))
    .bind(event_type)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[actix_web::test]
async fn a_posted_message_streams_a_reply_into_events_read_models_and_usage() {
    let chat = start(|_| {}).await;
    let session = chat
        .session(json!({ "title": "Trip plans", "system_prompt": "Be brief." }))
        .await;
    let (status, posted) = chat.post(&session, "Plan a day in Lyon").await;
    assert_eq!(status, 202, "{posted}");
    assert_eq!(posted["model_id"], "gpt-test");
    assert_eq!(posted["provider"], "openai");
    let events = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    assert_eq!(text_of(&events), "Hello, world!");
    let (ending, _, done) = events.last().unwrap();
    assert_eq!(ending, "completed");
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["prompt_tokens"], 11);
    assert_eq!(done["completion_tokens"], 3);

    // The provider got the system prompt, then the user's message.
    let sent = &chat.provider.requests()[0].body;
    assert_eq!(sent["model"], "gpt-test");
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["messages"],
        json!([
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Plan a day in Lyon" },
        ])
    );

    // Coalesced: fewer delta events than provider pieces, and the offsets line up.
    let deltas = stored(&chat.app, &session, "ReplyDeltaAppended").await;
    assert!(!deltas.is_empty() && deltas.len() <= 3, "{deltas:?}");
    assert_eq!(deltas[0]["offset"], 0);

    let messages = chat.messages(&session).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"], "Plan a day in Lyon");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["parent_id"], messages[0]["id"]);
    assert_eq!(messages[1]["content"], "Hello, world!");
    assert_eq!(messages[1]["status"], "completed");
    assert_eq!(messages[1]["completion_tokens"], 3);

    let (_, got) = chat
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/ai/sessions/{session}"),
            None,
        )
        .await;
    assert_eq!(got["title"], "Trip plans");
    assert_eq!(got["user_id"], chat.app.tenant.user_id.as_str());
    assert_eq!(got["model_id"], "gpt-test");
    assert_eq!(got["message_count"], 2);
    assert_eq!(got["tokens_used"], 14);
    assert!(got["created_at"].is_string());

    let (_, usage) = chat
        .send(reqwest::Method::GET, "/api/v1/ai/usage", None)
        .await;
    assert_eq!(usage["items"][0]["model_id"], "gpt-test");
    assert_eq!(usage["items"][0]["replies"], 1);
    assert_eq!(usage["totals"]["prompt_tokens"], 11);
    assert_eq!(usage["totals"]["completion_tokens"], 3);

    // A finished reply streams again from the log: all of it, then its ending.
    let again = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    assert_eq!(text_of(&again), "Hello, world!");
    assert_eq!(again.last().unwrap().0, "completed");

    // The list pages, newest first.
    let second = chat.session(json!({})).await;
    let (_, page) = chat
        .send(
            reqwest::Method::GET,
            &format!(
                "/api/v1/ai/sessions?limit=1&min_position={}",
                chat.app.head().await
            ),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["id"], second.as_str());
    assert_eq!(page["items"][0]["title"], "New chat");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = chat
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/ai/sessions?limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["id"], session.as_str());
    assert_eq!(page["next_cursor"], Value::Null);
}

#[actix_web::test]
async fn a_500_before_the_first_token_is_retried_and_a_failure_mid_stream_fails_the_reply_with_its_text(
) {
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    chat.provider.then(Reply::Status {
        code: 500,
        retry_after: None,
    });
    let (_, posted) = chat.post(&session, "first").await;
    let events = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    assert_eq!(events.last().unwrap().0, "completed");
    assert_eq!(text_of(&events), "Hello, world!");
    assert_eq!(chat.provider.requests().len(), 2, "one retry");

    chat.provider.then(Reply::Stream(Script {
        drop_after: Some(2),
        ..Script::default()
    }));
    let (_, posted) = chat.post(&session, "second").await;
    let events = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    let (ending, _, failed) = events.last().unwrap();
    assert_eq!(ending, "failed", "{events:?}");
    assert_eq!(text_of(&events), "Hello, wor");
    assert!(
        ["protocol", "network"].contains(&failed["error_class"].as_str().unwrap()),
        "{failed}"
    );
    assert_eq!(
        chat.provider.requests().len(),
        3,
        "no retry after the first token"
    );
    let messages = chat.messages(&session).await;
    assert_eq!(messages[3]["status"], "failed");
    assert_eq!(messages[3]["content"], "Hello, wor");
    assert_eq!(messages[3]["error_class"], failed["error_class"]);

    // A failed reply leaves the session open for the next message, whose prompt leaves the
    // failed reply out.
    let (status, posted) = chat.post(&session, "third").await;
    assert_eq!(status, 202);
    follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    let prompt = &chat.provider.requests()[3].body["messages"];
    assert_eq!(
        prompt,
        &json!([
            { "role": "user", "content": "first" },
            { "role": "assistant", "content": "Hello, world!" },
            { "role": "user", "content": "second" },
            { "role": "user", "content": "third" },
        ])
    );
}

#[actix_web::test]
async fn the_breaker_opens_after_n_failures_then_fails_at_once_until_a_half_open_probe_succeeds() {
    let chat = start(|c| {
        c.provider_max_retries = 0;
        c.provider_breaker_failures = 2;
        c.provider_breaker_open_secs = 1;
    })
    .await;
    let session = chat.session(json!({})).await;
    for _ in 0..2 {
        chat.provider.then(Reply::Status {
            code: 503,
            retry_after: None,
        });
        let (_, posted) = chat.post(&session, "hello?").await;
        let events = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
        assert_eq!(events.last().unwrap().2["error_class"], "server");
    }
    let (_, states) = chat
        .send(reqwest::Method::GET, "/api/v1/ai/providers", None)
        .await;
    assert_eq!(states["items"][0]["state"], "open");

    // Open: the reply fails at once, and the provider is not called.
    let (_, posted) = chat.post(&session, "still there?").await;
    let events = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    assert_eq!(events.last().unwrap().2["error_class"], "unavailable");
    assert_eq!(chat.provider.requests().len(), 2);

    // Once the open period is over, one probe goes through; its success closes the breaker.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, posted) = chat.post(&session, "and now?").await;
    let events = follow(&chat.client, &stream_url(&chat.app, &posted), None, None).await;
    assert_eq!(events.last().unwrap().0, "completed");
    assert_eq!(chat.provider.requests().len(), 3);
    let (_, states) = chat
        .send(reqwest::Method::GET, "/api/v1/ai/providers", None)
        .await;
    assert_eq!(states["items"][0]["state"], "closed");
}

fn slow_script() -> Script {
    Script {
        pieces: (0..200).map(|i| format!("w{i} ")).collect(),
        delay: Duration::from_millis(25),
        ..Script::default()
    }
}

#[actix_web::test]
async fn a_second_message_while_streaming_is_refused_and_cancel_keeps_what_was_produced() {
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    chat.provider.then(Reply::Stream(slow_script()));
    let (_, posted) = chat.post(&session, "Tell me a long story").await;
    let url = stream_url(&chat.app, &posted);
    let first = follow(&chat.client, &url, None, Some(1)).await;
    assert!(!text_of(&first).is_empty());

    let (status, refused) = chat.post(&session, "And another thing").await;
    assert_eq!(status, 409);
    assert_eq!(refused["error"]["code"], "reply_in_progress");

    let (status, cancelled) = chat
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/ai/sessions/{session}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["reply_id"], posted["reply_id"]);

    // The stream, followed from the start, ends with the cancel after the text so far.
    let events = follow(&chat.client, &url, None, None).await;
    assert_eq!(events.last().unwrap().0, "cancelled");
    let so_far = text_of(&events);
    let full: String = slow_script().pieces.concat();
    assert!(
        full.starts_with(&so_far) && so_far.len() < full.len(),
        "{so_far}"
    );
    let messages = chat.messages(&session).await;
    assert_eq!(messages[1]["status"], "cancelled");
    assert_eq!(messages[1]["content"], so_far.as_str());

    // Nothing streams now: cancelling again changes nothing, and a new message is taken.
    let (_, again) = chat
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/ai/sessions/{session}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(again["cancelled"], false);
    let (status, _) = chat.post(&session, "And another thing").await;
    assert_eq!(status, 202);
}

#[actix_web::test]
async fn a_client_that_reconnects_mid_reply_gets_the_rest_without_loss_or_doubling() {
    let chat = start(|c| c.chat_delta_flush_ms = 20).await;
    let session = chat.session(json!({})).await;
    let script = Script {
        pieces: (0..40).map(|i| format!("p{i}|")).collect(),
        delay: Duration::from_millis(15),
        ..Script::default()
    };
    let full: String = script.pieces.concat();
    chat.provider.then(Reply::Stream(script));
    let (_, posted) = chat.post(&session, "count").await;
    let url = stream_url(&chat.app, &posted);
    let first = follow(&chat.client, &url, None, Some(2)).await;
    let last_id = first.iter().filter_map(|e| e.1).next_back().unwrap();
    let have = text_of(&first);
    assert_eq!(have.chars().count() as u64, last_id);
    let rest = follow(&chat.client, &url, Some(last_id), None).await;
    assert_eq!(rest.last().unwrap().0, "completed");
    assert_eq!(format!("{have}{}", text_of(&rest)), full);
    // Every delta names where it starts; together they cover the text exactly once.
    let mut at = last_id;
    for (_, id, data) in rest.iter().filter(|e| e.0 == "delta") {
        assert_eq!(data["offset"], at);
        at = id.unwrap();
    }
}

/// The stream URL with query parameters added.
fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    reqwest::Url::parse_with_params(url, params)
        .unwrap()
        .to_string()
}

#[actix_web::test]
async fn an_event_source_without_headers_reads_the_stream_with_the_token_and_frontend_in_the_query()
{
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    let script = Script {
        pieces: (0..20).map(|i| format!("q{i} ")).collect(),
        delay: Duration::from_millis(10),
        ..Script::default()
    };
    let full: String = script.pieces.concat();
    chat.provider.then(Reply::Stream(script));
    let (status, posted) = chat.post(&session, "count for me").await;
    assert_eq!(status, 202, "{posted}");
    let url = stream_url(&chat.app, &posted);
    let token = chat.app.tenant.access_token.clone();
    // As a browser's EventSource: no Authorization, no X-Frontend-Source, no other header of
    // its own.
    let bare = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let good = with_query(&url, &[("access_token", &token), ("frontend", "flowmind")]);
    let events = follow(&bare, &good, None, None).await;
    assert_eq!(events.last().unwrap().0, "completed");
    assert_eq!(text_of(&events), full);

    let refused = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    };
    let get = |u: String| {
        let bare = bare.clone();
        async move { bare.get(u).send().await.unwrap() }
    };
    // A bad token, an empty one, or none: 401.
    let bad = with_query(
        &url,
        &[("access_token", "not-a-token"), ("frontend", "flowmind")],
    );
    assert_eq!(refused(get(bad).await).await, (401, "invalid_token".into()));
    let mut forged = token.clone();
    forged.push('x');
    let bad = with_query(&url, &[("access_token", &forged), ("frontend", "flowmind")]);
    assert_eq!(refused(get(bad).await).await, (401, "invalid_token".into()));
    let none = with_query(&url, &[("access_token", ""), ("frontend", "flowmind")]);
    assert_eq!(
        refused(get(none).await).await,
        (401, "unauthenticated".into())
    );
    // The token without the frontend, or with another one: 403.
    let no_frontend = with_query(&url, &[("access_token", &token)]);
    assert_eq!(
        refused(get(no_frontend).await).await,
        (403, "frontend_access_denied".into())
    );
    let other = with_query(&url, &[("access_token", &token), ("frontend", "citypulse")]);
    assert_eq!(
        refused(get(other).await).await,
        (403, "frontend_access_denied".into())
    );
    // A header, when sent, wins over its parameter.
    let res = bare
        .get(&good)
        .header("authorization", "Bearer not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused(res).await, (401, "invalid_token".into()));
    // Only event streams take the token from the query.
    let elsewhere = with_query(
        &chat.app.url(&format!("/api/v1/ai/sessions/{session}")),
        &[("access_token", &token), ("frontend", "flowmind")],
    );
    assert_eq!(
        refused(get(elsewhere).await).await,
        (401, "unauthenticated".into())
    );
    // The token is no metric label.
    universal_backend::telemetry::metrics_handle();
    let metrics = get(chat.app.url("/metrics")).await.text().await.unwrap();
    assert!(!metrics.contains(&token));
}

#[actix_web::test]
async fn regenerate_and_edit_add_new_events_and_the_prompt_follows_the_current_branch() {
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    let (_, first) = chat.post(&session, "Name a colour").await;
    follow(&chat.client, &stream_url(&chat.app, &first), None, None).await;

    chat.provider.then(Reply::Stream(Script {
        pieces: vec!["Blue".into()],
        ..Script::default()
    }));
    let (status, again) = chat
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/ai/sessions/{session}/regenerate"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_ne!(again["reply_id"], first["reply_id"]);
    let events = follow(&chat.client, &stream_url(&chat.app, &again), None, None).await;
    assert_eq!(text_of(&events), "Blue");
    // The regenerated reply answers the same message, without the old reply in its prompt.
    assert_eq!(
        chat.provider.requests()[1].body["messages"],
        json!([{ "role": "user", "content": "Name a colour" }])
    );

    // Editing the first message forks from its parent (the root).
    chat.provider.then(Reply::Stream(Script {
        pieces: vec!["Seven".into()],
        ..Script::default()
    }));
    let (status, edited) = chat
        .send(
            reqwest::Method::PUT,
            &format!(
                "/api/v1/ai/sessions/{session}/messages/{}",
                first["message_id"].as_str().unwrap()
            ),
            Some(json!({ "content": "Name a number" })),
        )
        .await;
    assert_eq!(status, 202, "{edited}");
    follow(&chat.client, &stream_url(&chat.app, &edited), None, None).await;
    assert_eq!(
        chat.provider.requests()[2].body["messages"],
        json!([{ "role": "user", "content": "Name a number" }])
    );
    let messages = chat.messages(&session).await;
    assert_eq!(messages.len(), 5, "history is kept: {messages:?}");
    assert_eq!(messages[0]["content"], "Name a colour");
    assert_eq!(messages[3]["content"], "Name a number");
    assert_eq!(messages[3]["parent_id"], Value::Null);
    assert_eq!(messages[4]["content"], "Seven");
    assert_eq!(
        stored(&chat.app, &session, "UserMessagePosted").await.len(),
        2
    );

    // Editing a reply (not a user message) is refused and writes nothing.
    let (status, _) = chat
        .send(
            reqwest::Method::PUT,
            &format!(
                "/api/v1/ai/sessions/{session}/messages/{}",
                first["reply_id"].as_str().unwrap()
            ),
            Some(json!({ "content": "x" })),
        )
        .await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn another_organizations_or_another_members_session_answers_404() {
    let chat = start(|_| {}).await;
    let session = chat.session(json!({ "title": "Private" })).await;

    let outsider = common::create_tenant(&chat.app.anonymous, &chat.app.base, "outsider").await;
    let admin = common::frontend_client(&outsider.access_token, "flowmind");
    common::enable_frontend(
        &chat.app,
        &common::client_for(&outsider),
        &outsider.organization_id,
        "flowmind",
    )
    .await;
    let member = common::add_member(&chat.app, "member").await;
    let colleague = common::frontend_client(&member.access_token, "flowmind");
    for client in [&admin, &colleague] {
        let base = chat.app.url(&format!("/api/v1/ai/sessions/{session}"));
        let (status, body) = send(client, &base, reqwest::Method::GET, None).await;
        assert_eq!(status, 404, "{body}");
        let (status, _) = send(
            client,
            &format!("{base}/messages"),
            reqwest::Method::POST,
            Some(json!({ "content": "let me in" })),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = send(
            client,
            &format!("{base}/messages"),
            reqwest::Method::GET,
            None,
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = send(client, &base, reqwest::Method::DELETE, None).await;
        assert_eq!(status, 404);
        let (_, list) = send(
            client,
            &chat.app.url("/api/v1/ai/sessions"),
            reqwest::Method::GET,
            None,
        )
        .await;
        assert_eq!(list["items"], json!([]));
    }
    assert_eq!(
        stored(&chat.app, &session, "UserMessagePosted").await.len(),
        0
    );

    // The owner renames, archives, then deletes it: a tombstone, gone from the read models.
    let path = format!("/api/v1/ai/sessions/{session}");
    let (status, _) = chat
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "title": "Renamed", "system_prompt": null })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = chat
        .send(reqwest::Method::POST, &format!("{path}/archive"), None)
        .await;
    assert_eq!(status, 200);
    let (status, refused) = chat.post(&session, "after archive").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("session_archived"))
    );
    let (_, got) = chat
        .send(
            reqwest::Method::GET,
            &format!("{path}?min_position={}", chat.app.head().await),
            None,
        )
        .await;
    assert_eq!(
        (got["title"].as_str(), got["archived"].as_bool()),
        (Some("Renamed"), Some(true))
    );
    let (status, _) = chat.send(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200);
    let (status, _) = chat
        .send(
            reqwest::Method::GET,
            &format!("{path}?min_position={}", chat.app.head().await),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let deleted = stored(&chat.app, &session, "ChatSessionDeleted").await;
    assert_eq!(deleted.len(), 1);
}

#[actix_web::test]
async fn in_production_without_a_provider_key_posting_answers_503_and_writes_nothing() {
    let app = common::spawn_app_with(|c| c.node_env = "production".into()).await;
    common::enable_frontend(&app, &app.client, &app.tenant.organization_id, "flowmind").await;
    let client = common::frontend_client(&app.tenant.access_token, "flowmind");
    let (_, models) = send(
        &client,
        &app.url("/api/v1/ai/models"),
        reqwest::Method::GET,
        None,
    )
    .await;
    assert_eq!(models["items"], json!([]));
    let (status, created) = send(
        &client,
        &app.url("/api/v1/ai/sessions"),
        reqwest::Method::POST,
        Some(json!({ "title": "No AI here" })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session = created["id"].as_str().unwrap();
    let before = app.head().await;
    let (status, refused) = send(
        &client,
        &app.url(&format!("/api/v1/ai/sessions/{session}/messages")),
        reqwest::Method::POST,
        Some(json!({ "content": "hello" })),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(refused["error"]["code"], "provider_unavailable");
    assert_eq!(app.head().await, before);
}

#[actix_web::test]
async fn development_without_keys_chats_with_the_labelled_local_echo_provider() {
    let app = common::spawn_app().await;
    common::enable_frontend(&app, &app.client, &app.tenant.organization_id, "flowmind").await;
    let client = common::frontend_client(&app.tenant.access_token, "flowmind");
    let (_, created) = send(
        &client,
        &app.url("/api/v1/ai/sessions"),
        reqwest::Method::POST,
        None,
    )
    .await;
    assert_eq!(created["session"]["model_id"], "local-echo");
    let session = created["id"].as_str().unwrap();
    let (status, posted) = send(
        &client,
        &app.url(&format!("/api/v1/ai/sessions/{session}/messages")),
        reqwest::Method::POST,
        Some(json!({ "content": "ping" })),
    )
    .await;
    assert_eq!(status, 202, "{posted}");
    assert_eq!(posted["provider"], "local-echo");
    let events = follow(&client, &stream_url(&app, &posted), None, None).await;
    assert_eq!(events.last().unwrap().0, "completed");
    assert!(text_of(&events).contains("ping"), "{events:?}");
}

#[actix_web::test]
async fn a_reply_started_through_one_process_streams_through_another_and_an_idempotent_retry_runs_once(
) {
    let chat = start(|_| {}).await;
    let provider = chat.provider.clone();
    let other =
        common::spawn_second_app_with(&chat.app, move |c| common::with_stand_in(c, &provider))
            .await;
    let session = chat.session(json!({})).await;
    chat.provider.then(Reply::Stream(slow_script()));
    let key = uuid::Uuid::new_v4().to_string();
    let post = || {
        chat.client
            .post(
                chat.app
                    .url(&format!("/api/v1/ai/sessions/{session}/messages")),
            )
            .header("idempotency-key", &key)
            .json(&json!({ "content": "once" }))
            .send()
    };
    let first: Value = post().await.unwrap().json().await.unwrap();
    let retry = post().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["reply_id"], first["reply_id"]);

    // Followed through the second process, which runs no worker for it.
    let url = other.url(first["stream_url"].as_str().unwrap());
    let first_part = follow(&chat.client, &url, None, Some(1)).await;
    assert!(!text_of(&first_part).is_empty());
    // Cancelled through the second process: the worker in the first one stops.
    let (status, cancelled) = send(
        &chat.client,
        &other.url(&format!("/api/v1/ai/sessions/{session}/cancel")),
        reqwest::Method::POST,
        None,
    )
    .await;
    assert_eq!(
        (status, cancelled["cancelled"].as_bool()),
        (200, Some(true))
    );
    let events = follow(&chat.client, &url, None, None).await;
    assert_eq!(events.last().unwrap().0, "cancelled");
    // The worker stops writing: the reply's text in the log stays what it was at the cancel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_cancel = stored(&chat.app, &session, "ReplyDeltaAppended")
        .await
        .len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored(&chat.app, &session, "ReplyDeltaAppended")
            .await
            .len(),
        after_cancel
    );
    assert_eq!(
        chat.provider.requests().len(),
        1,
        "one provider call for the retried post"
    );
    assert_eq!(stored(&chat.app, &session, "ReplyStarted").await.len(), 1);
}

#[actix_web::test]
async fn the_real_socket_io_client_follows_replies_on_flowmind_and_rejoins_mid_reply() {
    let chat = start(|_| {}).await;
    let member = common::add_member(&chat.app, "member").await;
    common::enable_frontend(
        &chat.app,
        &chat.app.client,
        &chat.app.tenant.organization_id,
        "flowmind",
    )
    .await;
    // The first reply is the default one; the second streams slowly.
    chat.provider.then(Reply::Stream(Script::default()));
    chat.provider.then(Reply::Stream(slow_script()));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let args = [
        dir.join("flowmind.mjs").display().to_string(),
        chat.app.base.clone(),
        chat.app.tenant.access_token.clone(),
        member.access_token.clone(),
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
    assert_eq!(report["joined"]["ok"], true);
    assert_eq!(report["joined"]["streaming"], Value::Null);
    assert_eq!(report["refused"]["ok"], false, "{report}");
    assert_eq!(report["refused"]["error"], "chat session not found");
    let seen = report["seen"].as_array().unwrap();
    assert_eq!(seen[0], json!(["message:created", "Hello there"]));
    assert_eq!(seen[1], json!(["ai:reply:started", report["reply_id"]]));
    assert_eq!(seen.last().unwrap(), &json!(["ai:reply:completed", "stop"]));
    assert_eq!(report["text"], "Hello, world!");
    // The late socket got the text so far in its join ack, then exactly the rest.
    let full: String = slow_script().pieces.concat();
    assert!(report["ack_chars"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["streaming_in_ack"]["reply_id"],
        report["second_reply_id"]
    );
    assert_eq!(report["late_text"], full.as_str());
}

#[actix_web::test]
async fn native_websocket_subscribers_of_a_session_stream_get_the_reply_and_others_are_refused() {
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    let member = common::add_member(&chat.app, "member").await;
    let ws_url = chat.app.url("/api/v1/ws").replace("http://", "ws://");
    use futures_util::SinkExt;
    let subscribe = |session: &str| {
        json!({ "type": "subscribe", "id": "s", "target": { "stream": format!("conversation-{session}") }, "from": "now" })
            .to_string()
    };
    common::enable_frontend(
        &chat.app,
        &chat.app.client,
        &chat.app.tenant.organization_id,
        "flowmind",
    )
    .await;
    let (mut theirs, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    theirs
        .send(
            json!({ "type": "auth", "token": member.access_token })
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(common::recv(&mut theirs).await["type"], "authenticated");
    theirs.send(subscribe(&session).into()).await.unwrap();
    let refused = common::recv(&mut theirs).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "not_found");

    let (mut mine, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    mine.send(
        json!({ "type": "auth", "token": chat.app.tenant.access_token })
            .to_string()
            .into(),
    )
    .await
    .unwrap();
    assert_eq!(common::recv(&mut mine).await["type"], "authenticated");
    mine.send(subscribe(&session).into()).await.unwrap();
    assert_eq!(common::recv(&mut mine).await["type"], "subscribed");
    let (_, posted) = chat.post(&session, "over the socket").await;
    let mut types = Vec::new();
    let mut text = String::new();
    loop {
        let event = common::recv(&mut mine).await;
        if event["type"] != "event" {
            continue;
        }
        let t = event["event_type"].as_str().unwrap_or_default().to_owned();
        if t == "ReplyDeltaAppended" {
            assert_eq!(event["data"]["reply_id"], posted["reply_id"]);
            text.push_str(event["data"]["text"].as_str().unwrap());
        }
        types.push(t.clone());
        if t == "ReplyCompleted" {
            break;
        }
    }
    assert_eq!(types[0], "UserMessagePosted");
    assert_eq!(types[1], "ReplyStarted");
    assert_eq!(text, "Hello, world!");
}

#[actix_web::test]
async fn a_reply_whose_process_stopped_is_failed_as_interrupted_and_the_session_takes_messages_again(
) {
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    chat.provider.then(Reply::Stream(Script {
        stall: Duration::from_secs(60),
        ..Script::default()
    }));
    let (_, posted) = chat.post(&session, "are you there?").await;
    for _ in 0..100 {
        if !chat.provider.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        chat.provider.requests().len(),
        1,
        "the worker called the provider"
    );
    // The process stops with its worker mid-reply.
    chat.app.handle.stop(false).await;

    // Another process finds the reply streaming with no worker, and fails it.
    let provider = chat.provider.clone();
    let mut config = common::test_config(chat.app.database_url.clone());
    common::with_stand_in(&mut config, &provider);
    config.provider_max_retries = 2;
    let other = universal_backend::Application::build(config).await.unwrap();
    let state = other.state();
    let base = format!("http://127.0.0.1:{}", other.port());
    actix_web::rt::spawn(other.run_until_stopped());
    let reply_id = posted["reply_id"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    for _ in 0..100 {
        let projected: Option<String> =
            sqlx::query_scalar("SELECT status FROM chat_messages WHERE id = $1")
                .bind(reply_id)
                .fetch_optional(&state.pool)
                .await
                .unwrap();
        if projected.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed =
        universal_backend::tasks::chat::sweep_interrupted(&state.chat, &state.pool, Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(failed, 1);
    let events = follow(
        &chat.client,
        &format!("{base}{}", posted["stream_url"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    let (ending, _, data) = events.last().unwrap();
    assert_eq!(
        (ending.as_str(), &data["error_class"]),
        ("failed", &json!("interrupted"))
    );
    let (status, _) = send(
        &chat.client,
        &format!("{base}/api/v1/ai/sessions/{session}/messages"),
        reqwest::Method::POST,
        Some(json!({ "content": "again" })),
    )
    .await;
    assert_eq!(status, 202);
}

#[actix_web::test]
async fn a_reply_whose_process_died_is_failed_as_interrupted_by_a_surviving_process_on_its_own() {
    // Default time limits: the provider's whole-call limit is five minutes, yet the reply
    // is ended as soon as its worker's process is known to be gone.
    let chat = start(|_| {}).await;
    let session = chat.session(json!({})).await;
    chat.provider.then(Reply::Stream(Script {
        stall: Duration::from_secs(600),
        ..Script::default()
    }));
    // The surviving process runs beside the first from the start.
    let provider = chat.provider.clone();
    let mut config = common::test_config(chat.app.database_url.clone());
    common::with_stand_in(&mut config, &provider);
    let survivor = universal_backend::Application::build(config).await.unwrap();
    let base = format!("http://127.0.0.1:{}", survivor.port());
    actix_web::rt::spawn(survivor.run_until_stopped());

    let (_, posted) = chat.post(&session, "are you there?").await;
    for _ in 0..100 {
        if !chat.provider.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        chat.provider.requests().len(),
        1,
        "the worker called the provider"
    );
    // The first process goes away with its worker mid-reply: it stops vouching for it.
    chat.app.handle.stop(false).await;

    // Nobody calls the sweep: the survivor's own watch fails the reply.
    let events = follow(
        &chat.client,
        &format!("{base}{}", posted["stream_url"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    let (ending, _, data) = events.last().unwrap();
    assert_eq!(
        (ending.as_str(), &data["error_class"]),
        ("failed", &json!("interrupted")),
        "{events:?}"
    );
}
