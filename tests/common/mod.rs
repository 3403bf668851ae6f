//! Shared test set-up: a fresh database per test on the real PostgreSQL, and the real server
//! on port 0.

#![allow(dead_code)]

pub mod stand_in;

use std::time::Duration;

use sqlx::PgPool;
use universal_backend::{config::Config, startup, Application};
use uuid::Uuid;

/// The server that holds the test databases (`TEST_DATABASE_URL`, without a database name).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The URL of a new, empty database (created on first connection, migrated by the caller).
pub fn fresh_database_url() -> String {
    format!("{}/ub_test_{}", server_url(), Uuid::new_v4().simple())
}

/// The Pusher secret of test servers, with which the tests sign Pusher API calls and
/// subscriptions (not the former public default, which production refuses).
pub const PUSHER_SECRET: &str = "test-pusher-secret";

pub fn test_config(database_url: String) -> Config {
    Config {
        port: 0,
        database_url,
        workers: 2,
        db_pool_size: 6,
        jwt_secret: Some("test-secret-test-secret-test-secret".into()),
        rate_limit_per_minute: 10_000,
        pusher_secret: Some(PUSHER_SECRET.into()),
        ..Config::default()
    }
}

/// A fresh, migrated database.
pub async fn fresh_pool() -> (PgPool, String) {
    let url = fresh_database_url();
    let pool = startup::connect_and_migrate(&test_config(url.clone()))
        .await
        .expect("test database");
    (pool, url)
}

/// A user with an organization that has CityPulse enabled, logged in to it.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub user_id: String,
    pub organization_id: String,
    pub email: String,
    pub password: String,
    pub access_token: String,
    pub refresh_token: String,
}

pub const PASSWORD: &str = "Correct-Horse-Battery-9";

pub struct TestApp {
    pub base: String,
    /// Sends the first tenant's token and `X-Frontend-Source: citypulse` with every request.
    pub client: reqwest::Client,
    /// Sends nothing on its own.
    pub anonymous: reqwest::Client,
    pub tenant: Tenant,
    pub pool: PgPool,
    pub database_url: String,
    pub handle: actix_web::dev::ServerHandle,
    /// The process's state, for what only the process itself can tell.
    pub state: actix_web::web::Data<universal_backend::state::AppState>,
}

/// Starts the real application on port 0 against a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tune: impl FnOnce(&mut Config)) -> TestApp {
    universal_backend::telemetry::init_tracing("warn");
    let url = fresh_database_url();
    let mut config = test_config(url.clone());
    tune(&mut config);
    let app = Application::build(config)
        .await
        .expect("application starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let pool = state.pool.clone();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let anonymous = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tenant = create_tenant(&anonymous, &base, "first").await;
    TestApp {
        client: client_for(&tenant),
        anonymous,
        tenant,
        base,
        pool,
        database_url: url,
        handle,
        state,
    }
}

/// A client that authenticates as `tenant` from the CityPulse frontend.
pub fn client_for(tenant: &Tenant) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {}", tenant.access_token).parse().unwrap(),
    );
    headers.insert("x-frontend-source", "citypulse".parse().unwrap());
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Signs up a user, creates an organization with CityPulse enabled and logs in to it.
pub async fn create_tenant(client: &reqwest::Client, base: &str, name: &str) -> Tenant {
    let email = format!("{name}-{}@example.org", Uuid::new_v4().simple());
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD, "display_name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "signup");
    let signed: serde_json::Value = res.json().await.unwrap();
    let token = signed["access_token"].as_str().unwrap().to_owned();
    let res = client
        .post(format!("{base}/api/v1/organizations"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": format!("{name} city") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "create organization");
    let org: serde_json::Value = res.json().await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_owned();
    let res = client
        .put(format!("{base}/api/v1/organizations/{org_id}/frontends"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "frontend": "citypulse", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "enable citypulse");
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(
            &serde_json::json!({ "email": email, "password": PASSWORD, "organization_id": org_id }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "login");
    let login: serde_json::Value = res.json().await.unwrap();
    assert_eq!(login["frontends"], serde_json::json!(["citypulse"]));
    Tenant {
        user_id: signed["user"]["id"].as_str().unwrap().to_owned(),
        organization_id: org_id,
        email,
        password: PASSWORD.to_owned(),
        access_token: login["access_token"].as_str().unwrap().to_owned(),
        refresh_token: login["refresh_token"].as_str().unwrap().to_owned(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The event log's head position, read directly from the database.
    pub async fn head(&self) -> i64 {
        sqlx::query_scalar("SELECT last_position FROM event_head")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let res = self.client.get(self.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    /// Registers a building with one sensor; returns (building id, sensor id, position).
    pub async fn building_with_sensor(&self, kind: &str, unit: &str) -> (String, String, i64) {
        let res = self
            .post(
                "/api/v1/citypulse/buildings",
                serde_json::json!({ "name": "Town Library" }),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: serde_json::Value = res.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        let res = self
            .post(
                &format!("/api/v1/citypulse/buildings/{id}/sensors"),
                serde_json::json!({ "kind": kind, "unit": unit }),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: serde_json::Value = res.json().await.unwrap();
        (
            id,
            body["sensor_id"].as_str().unwrap().to_owned(),
            body["position"].as_i64().unwrap(),
        )
    }
}

/// A second server process on the same database as `app` (processes share only the
/// database). It runs no projections: the first one leads them.
pub struct OtherApp {
    pub base: String,
    pub handle: actix_web::dev::ServerHandle,
}

impl OtherApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

pub async fn spawn_second_app(app: &TestApp) -> OtherApp {
    spawn_second_app_with(app, |_| {}).await
}

/// A second process on `app`'s database, with its own settings.
pub async fn spawn_second_app_with(app: &TestApp, tune: impl FnOnce(&mut Config)) -> OtherApp {
    let mut config = test_config(app.database_url.clone());
    config.run_projections = false;
    tune(&mut config);
    let second = Application::build(config)
        .await
        .expect("second application starts");
    let base = format!("http://127.0.0.1:{}", second.port());
    let handle = second.handle();
    actix_web::rt::spawn(second.run_until_stopped());
    OtherApp { base, handle }
}

/// Signs up a user, makes them a member of `app`'s first organization with `role` (through
/// its admin), and logs them in to it.
pub async fn add_member(app: &TestApp, role: &str) -> Tenant {
    let base = &app.base;
    let email = format!("{role}-{}@example.org", Uuid::new_v4().simple());
    let res = app
        .anonymous
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD, "display_name": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "signup");
    let signed: serde_json::Value = res.json().await.unwrap();
    let user_id = signed["user"]["id"].as_str().unwrap().to_owned();
    let org = &app.tenant.organization_id;
    let res = app
        .client
        .post(format!("{base}/api/v1/organizations/{org}/members"))
        .json(&serde_json::json!({ "user_id": user_id, "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "add member");
    let res = app
        .anonymous
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD, "organization_id": org }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "login");
    let login: serde_json::Value = res.json().await.unwrap();
    assert_eq!(login["role"], role);
    Tenant {
        user_id,
        organization_id: org.clone(),
        email,
        password: PASSWORD.to_owned(),
        access_token: login["access_token"].as_str().unwrap().to_owned(),
        refresh_token: login["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// A client WebSocket, as the socket tests open them.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message of a socket, or `{"type":"closed", "reason", "code"}` for a close
/// frame (pings are answered by the client library on the way); waits at most 15 s.
pub async fn recv(ws: &mut Socket) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        match frame {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => {
                return serde_json::json!({
                    "type": "closed",
                    "reason": c.as_ref().map(|c| c.reason.to_string()),
                    "code": c.as_ref().map(|c| u16::from(c.code)),
                })
            }
            _ => {}
        }
    }
}

/// A client that calls as `frontend` does: the bearer `token` and `X-Frontend-Source`.
pub fn frontend_client(token: &str, frontend: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("x-frontend-source", frontend.parse().unwrap());
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The server's OpenAI-compatible provider is `provider` (model `gpt-test`), without
/// retries and with short time limits.
pub fn with_stand_in(c: &mut Config, provider: &stand_in::StandIn) {
    c.openai_api_key = Some("sk-stand-in".into());
    c.openai_base_url = provider.base_url.clone();
    c.openai_model = "gpt-test".into();
    c.provider_max_retries = 0;
    c.provider_retry_base_ms = 10;
    c.provider_first_token_timeout_ms = 5_000;
    c.provider_total_timeout_secs = 30;
}

/// Turns `frontend` on for organization `org`, as its admin (`client`).
pub async fn enable_frontend(app: &TestApp, client: &reqwest::Client, org: &str, frontend: &str) {
    let res = client
        .put(app.url(&format!("/api/v1/organizations/{org}/frontends")))
        .json(&serde_json::json!({ "frontend": frontend, "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "enable {frontend}");
}

/// A server whose provider is a fresh stand-in, with `frontend` on for its tenant: the
/// server, a client of the tenant calling as `frontend`, and the stand-in.
pub async fn spawn_with_stand_in(
    frontend: &str,
    tune: impl FnOnce(&mut Config),
) -> (TestApp, reqwest::Client, stand_in::StandIn) {
    let provider = stand_in::StandIn::start().await;
    let p = provider.clone();
    let app = spawn_app_with(move |c| {
        with_stand_in(c, &p);
        tune(c);
    })
    .await;
    enable_frontend(&app, &app.client, &app.tenant.organization_id, frontend).await;
    let client = frontend_client(&app.tenant.access_token, frontend);
    (app, client, provider)
}

/// A Quantum optimization of rastrigin with seed 1.
pub fn rastrigin(dimensions: u32, particles: u32, iterations: u64) -> serde_json::Value {
    serde_json::json!({
        "type": "quantum",
        "objective": "rastrigin",
        "config": {
            "dimensions": dimensions, "particles": particles, "iterations": iterations,
            "seed": 1
        }
    })
}

/// The task events of the log, in log order: (stream, type, data).
pub async fn task_events(pool: &sqlx::PgPool) -> Vec<(String, String, serde_json::Value)> {
    sqlx::query_as(
        "SELECT stream_id, event_type, data FROM events WHERE stream_category = 'swarm_task' \
         ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A server on a database of its own or a shared one, without a tenant: the tests of work
/// spread over processes start several on one database.
pub struct Server {
    pub base: String,
    pub state: actix_web::web::Data<universal_backend::state::AppState>,
    pub pool: PgPool,
    pub database_url: String,
    pub handle: actix_web::dev::ServerHandle,
    pub anonymous: reqwest::Client,
}

/// Starts a server; `url` is an existing database or `None` for a fresh one.
pub async fn start_server(url: Option<String>, tune: impl FnOnce(&mut Config)) -> Server {
    universal_backend::telemetry::init_tracing("warn");
    let url = url.unwrap_or_else(fresh_database_url);
    let mut config = test_config(url.clone());
    tune(&mut config);
    let app = Application::build(config)
        .await
        .expect("application starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let pool = app.state().pool.clone();
    let state = app.state();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    Server {
        base,
        state,
        pool,
        database_url: url,
        handle,
        anonymous: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    }
}

/// A new tenant of `server` whose organization has `frontends` enabled, logged in again so
/// that its token carries them.
pub async fn tenant_with_frontends(server: &Server, name: &str, frontends: &[&str]) -> Tenant {
    let t = create_tenant(&server.anonymous, &server.base, name).await;
    for frontend in frontends {
        let res = server
            .anonymous
            .put(format!(
                "{}/api/v1/organizations/{}/frontends",
                server.base, t.organization_id
            ))
            .bearer_auth(&t.access_token)
            .json(&serde_json::json!({ "frontend": frontend, "enabled": true }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "enable {frontend}");
    }
    let res = server
        .anonymous
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&serde_json::json!({
            "email": t.email, "password": PASSWORD, "organization_id": t.organization_id
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let login: serde_json::Value = res.json().await.unwrap();
    Tenant {
        access_token: login["access_token"].as_str().unwrap().to_owned(),
        ..t
    }
}
