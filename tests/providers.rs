//! The provider layer against stand-in providers on loopback: an OpenAI-compatible server
//! and an Anthropic one, both streaming real SSE over chunked HTTP, split mid-event, with
//! delays. Nothing here reaches the internet.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use universal_backend::providers::anthropic::{Anthropic, AnthropicSettings};
use universal_backend::providers::local_echo::LocalEcho;
use universal_backend::providers::openai::{OpenAiCompatible, OpenAiSettings};
use universal_backend::providers::{
    BreakerState, ChatMessage, ChatRequest, Completion, GuardPolicy, Guarded, HttpSettings,
    ModelProvider, ProviderError, ReplyEvent, Role, TimeoutKind, Usage,
};

use common::stand_in::{Reply, Script, StandIn};

mod common;

fn openai(stand_in: &StandIn) -> Arc<dyn ModelProvider> {
    Arc::new(OpenAiCompatible::new(OpenAiSettings {
        name: "openai".into(),
        base_url: stand_in.base_url.clone(),
        api_key: Some("sk-stand-in".into()),
        models: vec!["gpt-test".into()],
        temperature: Some(0.7),
        max_tokens: Some(256),
        http: HttpSettings {
            connect_timeout: Duration::from_secs(2),
        },
    }))
}

/// Small timeouts and backoffs so failures show quickly; no retries unless a test asks.
fn policy() -> GuardPolicy {
    GuardPolicy {
        first_token_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(20),
        max_retries: 2,
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(500),
        breaker_failures: 5,
        breaker_open_for: Duration::from_secs(30),
    }
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        model: "gpt-test".into(),
        messages: vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, text),
        ],
        temperature: None,
        max_tokens: None,
    }
}

/// Everything a reply stream yielded.
#[derive(Debug, Default)]
struct Collected {
    deltas: Vec<String>,
    completion: Option<Completion>,
    error: Option<ProviderError>,
}

impl Collected {
    fn text(&self) -> String {
        self.deltas.concat()
    }
}

async fn call(provider: &dyn ModelProvider, req: ChatRequest) -> Result<Collected, ProviderError> {
    let mut stream = provider.stream(req).await?;
    let mut out = Collected::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ReplyEvent::Delta(piece)) => out.deltas.push(piece),
            Ok(ReplyEvent::Completed(c)) => out.completion = Some(c),
            Err(e) => out.error = Some(e),
        }
    }
    Ok(out)
}

/// Polls `check` every 20 ms for at most 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_streamed_reply_is_assembled_with_the_reported_usage_and_the_prompt_is_sent() {
    let server = StandIn::start().await;
    let provider = Guarded::new(openai(&server), policy());
    let reply = call(&provider, request("Say hello")).await.unwrap();
    assert_eq!(reply.error, None);
    assert_eq!(reply.deltas, vec!["Hello", ", wor", "ld!"]);
    assert_eq!(
        reply.completion,
        Some(Completion {
            finish_reason: "stop".into(),
            usage: Usage {
                prompt_tokens: 11,
                completion_tokens: 3,
                estimated: false
            }
        })
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let got = &requests[0];
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.header("authorization"), Some("Bearer sk-stand-in"));
    assert_eq!(got.body["stream"], true);
    assert_eq!(got.body["model"], "gpt-test");
    assert_eq!(got.body["max_tokens"], 256);
    assert_eq!(got.body["messages"][0]["role"], "system");
    assert_eq!(got.body["messages"][1]["content"], "Say hello");
}

#[tokio::test]
async fn a_server_that_omits_fields_sends_an_empty_finish_reason_and_no_usage_is_understood() {
    let server = StandIn::start().await;
    server.then(Reply::Stream(Script {
        minimal: true,
        finish_reason: Some(String::new()),
        usage: None,
        ..Script::default()
    }));
    let provider = Guarded::new(openai(&server), policy());
    let reply = call(&provider, request("Say hello")).await.unwrap();
    assert_eq!(reply.error, None);
    assert_eq!(reply.text(), "Hello, world!");
    let completion = reply.completion.unwrap();
    assert_eq!(completion.finish_reason, "stop");
    assert!(completion.usage.estimated);
    assert_eq!(completion.usage.completion_tokens, 4); // 13 characters, about 4 a token
    assert!(completion.usage.prompt_tokens > 0);
}

#[tokio::test]
async fn a_500_before_the_first_token_is_retried_and_the_reply_succeeds() {
    let server = StandIn::start().await;
    server.then(Reply::Status {
        code: 500,
        retry_after: None,
    });
    let provider = Guarded::new(openai(&server), policy());
    let reply = call(&provider, request("Say hello")).await.unwrap();
    assert_eq!(reply.text(), "Hello, world!");
    assert!(reply.completion.is_some());
    assert_eq!(server.requests().len(), 2);
    assert_eq!(provider.breaker_state().consecutive_failures, 0);
}

#[tokio::test]
async fn a_429_is_retried_after_a_growing_backoff() {
    let server = StandIn::start().await;
    for _ in 0..2 {
        server.then(Reply::Status {
            code: 429,
            retry_after: None,
        });
    }
    let provider = Guarded::new(
        openai(&server),
        GuardPolicy {
            retry_base: Duration::from_millis(60),
            ..policy()
        },
    );
    let reply = call(&provider, request("Say hello")).await.unwrap();
    assert_eq!(reply.text(), "Hello, world!");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Lower bounds only: the client waited at least the backoff, doubling.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(60));
    assert!(requests[2].at - requests[1].at >= Duration::from_millis(120));
}

#[tokio::test]
async fn a_429_that_outlasts_the_retries_is_reported_as_rate_limited() {
    let server = StandIn::start().await;
    for _ in 0..3 {
        server.then(Reply::Status {
            code: 429,
            retry_after: Some("0".into()),
        });
    }
    let provider = Guarded::new(openai(&server), policy());
    let err = call(&provider, request("Say hello")).await.unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn a_stall_before_the_first_token_hits_the_first_token_timeout() {
    let server = StandIn::start().await;
    server.then(Reply::Stream(Script {
        stall: Duration::from_secs(30),
        ..Script::default()
    }));
    let provider = Guarded::new(
        openai(&server),
        GuardPolicy {
            first_token_timeout: Duration::from_millis(200),
            ..policy()
        },
    );
    let err = call(&provider, request("Say hello")).await.unwrap_err();
    assert_eq!(err, ProviderError::Timeout(TimeoutKind::FirstToken));
    assert_eq!(server.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn a_failure_mid_stream_is_reported_after_the_deltas_so_far_and_not_retried() {
    let server = StandIn::start().await;
    server.then(Reply::Stream(Script {
        drop_after: Some(2),
        ..Script::default()
    }));
    let provider = Guarded::new(openai(&server), policy());
    let reply = call(&provider, request("Say hello")).await.unwrap();
    assert_eq!(reply.deltas, vec!["Hello", ", wor"]);
    assert_eq!(reply.completion, None);
    let err = reply.error.expect("the drop is reported");
    assert!(matches!(err, ProviderError::Protocol(_)), "{err:?}");
    assert_eq!(server.requests().len(), 1);
    assert_eq!(provider.breaker_state().consecutive_failures, 1);
}

#[tokio::test]
async fn the_breaker_opens_after_n_failures_fails_at_once_then_probes_once_and_closes() {
    let server = StandIn::start().await;
    for _ in 0..3 {
        server.then(Reply::Status {
            code: 503,
            retry_after: None,
        });
    }
    let provider = Arc::new(Guarded::new(
        openai(&server),
        GuardPolicy {
            max_retries: 0,
            breaker_failures: 3,
            // Long enough that the checks below run while it is still open, even on a
            // loaded machine.
            breaker_open_for: Duration::from_millis(1500),
            ..policy()
        },
    ));
    for i in 1..=3 {
        let err = call(&*provider, request("x")).await.unwrap_err();
        assert_eq!(err, ProviderError::Server(503));
        assert_eq!(provider.breaker_state().consecutive_failures, i);
    }
    let open = provider.breaker_state();
    assert_eq!(open.state, BreakerState::Open);
    assert!(open.next_probe_at.is_some());

    // Open: fails at once, without calling the server.
    let err = call(&*provider, request("x")).await.unwrap_err();
    assert_eq!(err, ProviderError::Unavailable);
    assert_eq!(server.requests().len(), 3);

    // After the open period one probe goes through; while it runs, others fail at once.
    eventually("the next probe is due", || {
        provider.breaker_state().next_probe_in == Some(Duration::ZERO)
    })
    .await;
    server.then(Reply::Stream(Script {
        // The probe is held open long enough to be seen in flight.
        stall: Duration::from_secs(2),
        ..Script::default()
    }));
    let probe = tokio::spawn({
        let provider = provider.clone();
        async move { call(&*provider, request("probe")).await }
    });
    eventually("the probe is in flight", || {
        let s = provider.breaker_state();
        s.state == BreakerState::HalfOpen && s.probe_in_flight
    })
    .await;
    let err = call(&*provider, request("meanwhile")).await.unwrap_err();
    assert_eq!(err, ProviderError::Unavailable);

    let reply = probe.await.unwrap().unwrap();
    assert_eq!(reply.text(), "Hello, world!");
    let closed = provider.breaker_state();
    assert_eq!(closed.state, BreakerState::Closed);
    assert_eq!(closed.consecutive_failures, 0);
    assert_eq!(server.requests().len(), 4);

    let again = call(&*provider, request("again")).await.unwrap();
    assert!(again.completion.is_some());
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let server = StandIn::start().await;
    for _ in 0..2 {
        server.then(Reply::Status {
            code: 500,
            retry_after: None,
        });
    }
    let provider = Guarded::new(
        openai(&server),
        GuardPolicy {
            max_retries: 0,
            breaker_failures: 1,
            breaker_open_for: Duration::from_millis(100),
            ..policy()
        },
    );
    assert!(call(&provider, request("x")).await.is_err());
    assert_eq!(provider.breaker_state().state, BreakerState::Open);
    eventually("the next probe is due", || {
        provider.breaker_state().next_probe_in == Some(Duration::ZERO)
    })
    .await;
    let err = call(&provider, request("probe")).await.unwrap_err();
    assert_eq!(err, ProviderError::Server(500));
    let state = provider.breaker_state();
    assert_eq!(state.state, BreakerState::Open);
    assert!(!state.probe_in_flight);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn local_echo_streams_the_same_labelled_reply_every_time() {
    let provider = Guarded::new(Arc::new(LocalEcho), policy());
    let mut req = request("What is the weather like today?");
    req.model = "local-echo".into();
    let first = call(&provider, req.clone()).await.unwrap();
    let second = call(&provider, req).await.unwrap();
    assert_eq!(
        first.text(),
        "[local-echo] You said: What is the weather like today?"
    );
    assert!(first.deltas.len() > 1, "several deltas: {:?}", first.deltas);
    assert_eq!(first.deltas, second.deltas);
    assert_eq!(first.completion, second.completion);
    assert_eq!(first.completion.unwrap().finish_reason, "stop");
}

#[tokio::test]
async fn an_anthropic_stream_is_parsed_with_its_usage_and_headers() {
    let server = StandIn::start().await;
    let provider = Guarded::new(
        Arc::new(Anthropic::new(AnthropicSettings {
            base_url: server.base_url.clone(),
            api_key: "ak-stand-in".into(),
            models: vec!["claude-test".into()],
            temperature: Some(0.7),
            max_tokens: 300,
            http: HttpSettings {
                connect_timeout: Duration::from_secs(2),
            },
        })),
        policy(),
    );
    let mut req = request("Greet me");
    req.model = "claude-test".into();
    let reply = call(&provider, req).await.unwrap();
    assert_eq!(reply.error, None);
    assert_eq!(reply.text(), "Hi there");
    assert_eq!(
        reply.completion,
        Some(Completion {
            finish_reason: "end_turn".into(),
            usage: Usage {
                prompt_tokens: 21,
                completion_tokens: 7,
                estimated: false
            }
        })
    );
    let got = &server.requests()[0];
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some("ak-stand-in"));
    assert!(got.header("anthropic-version").is_some());
    assert_eq!(got.body["system"], "Be brief.");
    assert_eq!(got.body["max_tokens"], 300);
    assert_eq!(got.body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(got.body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported_as_a_network_failure() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let provider = Guarded::new(
        Arc::new(OpenAiCompatible::new(OpenAiSettings {
            name: "refused".into(),
            base_url,
            api_key: None,
            models: vec!["gpt-test".into()],
            temperature: None,
            max_tokens: None,
            http: HttpSettings {
                connect_timeout: Duration::from_secs(2),
            },
        })),
        policy(),
    );
    let err = call(&provider, request("x")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Network(_)), "{err:?}");
    assert_eq!(provider.breaker_state().consecutive_failures, 1);
}

#[tokio::test]
async fn the_breaker_state_and_failures_are_exported_as_metrics() {
    let metrics = universal_backend::telemetry::metrics_handle();
    let server = StandIn::start().await;
    server.then(Reply::Status {
        code: 502,
        retry_after: None,
    });
    let provider = Guarded::new(
        Arc::new(OpenAiCompatible::new(OpenAiSettings {
            name: "metered".into(),
            base_url: server.base_url.clone(),
            api_key: None,
            models: vec!["gpt-test".into()],
            temperature: None,
            max_tokens: None,
            http: HttpSettings {
                connect_timeout: Duration::from_secs(2),
            },
        })),
        GuardPolicy {
            max_retries: 0,
            breaker_failures: 1,
            ..policy()
        },
    );
    let before = metrics.render();
    assert!(
        before.contains(r#"ub_provider_breaker_state{provider="metered"} 0"#),
        "{before}"
    );
    assert!(call(&provider, request("x")).await.is_err());
    assert_eq!(
        call(&provider, request("x")).await.unwrap_err(),
        ProviderError::Unavailable
    );
    let after = metrics.render();
    for line in [
        r#"ub_provider_breaker_state{provider="metered"} 1"#,
        r#"ub_provider_breaker_consecutive_failures{provider="metered"} 1"#,
        r#"ub_provider_failures_total{provider="metered",class="server"} 1"#,
        r#"ub_provider_failures_total{provider="metered",class="unavailable"} 1"#,
    ] {
        assert!(after.contains(line), "missing {line} in\n{after}");
    }
}

#[tokio::test]
async fn a_retry_after_from_the_server_is_honoured() {
    let server = StandIn::start().await;
    server.then(Reply::Status {
        code: 429,
        retry_after: Some("0.2".into()),
    });
    let provider = Guarded::new(
        openai(&server),
        GuardPolicy {
            retry_base: Duration::from_millis(1),
            ..policy()
        },
    );
    let reply = call(&provider, request("x")).await.unwrap();
    assert!(reply.completion.is_some());
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_reply_slower_than_the_total_timeout_ends_with_a_total_timeout_after_its_deltas() {
    let server = StandIn::start().await;
    server.then(Reply::Stream(Script {
        delay: Duration::from_secs(30),
        ..Script::default()
    }));
    let provider = Guarded::new(
        openai(&server),
        GuardPolicy {
            total_timeout: Duration::from_millis(300),
            ..policy()
        },
    );
    let reply = call(&provider, request("x")).await.unwrap();
    assert_eq!(reply.deltas, vec!["Hello"]);
    assert_eq!(
        reply.error,
        Some(ProviderError::Timeout(TimeoutKind::Total))
    );
    assert_eq!(server.requests().len(), 1);
}

#[actix_web::test]
async fn flowmind_reads_the_models_of_the_configured_providers_and_their_breakers() {
    let app = common::spawn_app().await;
    let get = |path: &str| {
        app.client
            .get(app.url(path))
            .header("x-frontend-source", "flowmind")
            .send()
    };
    // FlowMind is not enabled for the organization yet.
    let res = get("/api/v1/ai/models").await.unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .client
        .put(app.url(&format!(
            "/api/v1/organizations/{}/frontends",
            app.tenant.organization_id
        )))
        .json(&serde_json::json!({ "frontend": "flowmind", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // In development with no key, the local provider is there, and says so.
    let models: serde_json::Value = get("/api/v1/ai/models")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["items"],
        serde_json::json!([{ "id": "local-echo", "provider": "local-echo", "default": true }])
    );
    assert_eq!(models["default_model"], "local-echo");
    let states: serde_json::Value = get("/api/v1/ai/providers")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(states["items"][0]["provider"], "local-echo");
    assert_eq!(states["items"][0]["state"], "closed");
    assert_eq!(states["items"][0]["consecutive_failures"], 0);

    // In production with an OpenAI key, only the configured provider is listed.
    let url = app.database_url.clone();
    let prod = common::spawn_app_with(move |c| {
        c.database_url = url;
        c.node_env = "production".into();
        c.openai_api_key = Some("sk-test".into());
        c.openai_base_url = "http://127.0.0.1:9/v1".into();
        c.openai_model = "gpt-4o-mini".into();
    })
    .await;
    let models: serde_json::Value = app
        .client
        .get(prod.url("/api/v1/ai/models"))
        .header("x-frontend-source", "flowmind")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["items"],
        serde_json::json!([{ "id": "gpt-4o-mini", "provider": "openai", "default": true }])
    );
}
