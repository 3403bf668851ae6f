//! FluxStudio on this backend, black-box over HTTP: the paths without `/v1` answer like
//! their `/api/v1` twins, `/health` carries the seed's fields, Google sign-in is checked
//! against a JWKS the test serves on loopback with keys it made, and teams and projects
//! work through both path families, with validation, roles and tenant isolation.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use common::{add_member, create_tenant, spawn_app, spawn_app_with, Tenant, TestApp, PASSWORD};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

// ---- helpers ----

/// Enables FluxStudio for the first tenant's organization.
async fn enable_fluxstudio(app: &TestApp, tenant: &Tenant, token: &str) {
    let res = app
        .anonymous
        .put(app.url(&format!(
            "/api/organizations/{}/frontends",
            tenant.organization_id
        )))
        .bearer_auth(token)
        .json(&json!({ "frontend": "fluxstudio", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "enable fluxstudio");
}

/// A client that authenticates as `token` from the FluxStudio frontend.
fn flux_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("x-frontend-source", "fluxstudio".parse().unwrap());
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

fn assert_field(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], field, "{body}");
}

// ---- path aliases ----

#[actix_web::test]
async fn auth_users_and_organizations_answer_the_same_with_and_without_v1() {
    let app = spawn_app().await;
    let http = &app.anonymous;
    let email = format!("flux-{}@example.org", Uuid::new_v4().simple());

    let (status, signed) = send(
        http.post(app.url("/api/auth/signup"))
            .json(&json!({ "email": email, "password": PASSWORD, "display_name": "Flux" })),
    )
    .await;
    assert_eq!(status, 201, "{signed}");
    let user_id = signed["user"]["id"].as_str().unwrap().to_owned();
    // The same address again is refused the same way on both paths.
    for path in ["/api/auth/signup", "/api/v1/auth/signup"] {
        let (status, body) = send(http.post(app.url(path)).json(
            &json!({ "email": email.to_uppercase(), "password": PASSWORD, "display_name": "X" }),
        ))
        .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (409, json!("email_taken"))
        );
    }
    for path in ["/api/auth/login", "/api/v1/auth/login"] {
        let (status, body) = send(
            http.post(app.url(path))
                .json(&json!({ "email": email, "password": "Wrong-Password-123" })),
        )
        .await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "invalid_credentials");
    }
    let (status, login) = send(
        http.post(app.url("/api/auth/login"))
            .json(&json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap().to_owned();
    for path in ["/api/auth/me", "/api/v1/auth/me", "/api/users/me"] {
        let (status, me) = send(http.get(app.url(path)).bearer_auth(&token)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(me["id"], user_id.as_str());
        assert_eq!(me["email"], email.as_str());
    }
    let (status, _) = send(http.get(app.url("/api/auth/me"))).await;
    assert_eq!(status, 401);

    // Organizations: create without /v1, rename with PUT on both paths, list on both.
    let (status, created) = send(
        http.post(app.url("/api/organizations"))
            .bearer_auth(&token)
            .json(&json!({ "name": "Flux studio" })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let org = created["id"].as_str().unwrap().to_owned();
    for (path, name) in [
        (format!("/api/organizations/{org}"), "Flux studio one"),
        (format!("/api/v1/organizations/{org}"), "Flux studio two"),
    ] {
        let (status, body) = send(
            http.put(app.url(&path))
                .bearer_auth(&token)
                .json(&json!({ "name": name })),
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
        let (status, got) = send(
            http.get(app.url(&format!(
                "{path}?min_position={}",
                body["position"].as_i64().unwrap()
            )))
            .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(got["name"], name);
    }
    for path in ["/api/organizations", "/api/v1/organizations"] {
        let (status, body) = send(
            http.put(app.url(&format!("{path}/{org}")))
                .bearer_auth(&token)
                .json(&json!({ "name": "   " })),
        )
        .await;
        assert_field(status, &body, "name");
        let (status, list) = send(http.get(app.url(path)).bearer_auth(&token)).await;
        assert_eq!(status, 200);
        assert_eq!(list["items"][0]["name"], "Flux studio two");
    }
    // Another caller's organization is 404 under both paths.
    let stranger = create_tenant(http, &app.base, "stranger").await;
    for path in ["/api/organizations", "/api/v1/organizations"] {
        let (status, _) = send(
            http.put(app.url(&format!("{path}/{org}")))
                .bearer_auth(&stranger.access_token)
                .json(&json!({ "name": "Mine now" })),
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }

    let (status, _) = send(http.post(app.url("/api/auth/logout")).bearer_auth(&token)).await;
    assert_eq!(status, 204);
    let (status, body) = send(http.get(app.url("/api/auth/me")).bearer_auth(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "session_ended");
    app.handle.stop(false).await;
}

// ---- signup ----

#[actix_web::test]
async fn signup_takes_the_name_as_name_or_display_name_and_refuses_two_different_ones() {
    let app = spawn_app().await;
    let email = |who: &str| format!("{who}-{}@example.org", Uuid::new_v4().simple());
    // FluxStudio's form: `name`, on both path families.
    for path in ["/api/auth/signup", "/api/v1/auth/signup"] {
        let (status, body) = send(app.anonymous.post(app.url(path)).json(
            &json!({ "email": email("ann"), "password": PASSWORD, "name": "  Ann Lovelace " }),
        ))
        .await;
        assert_eq!(status, 201, "{path}: {body}");
        assert_eq!(body["user"]["display_name"], "Ann Lovelace", "{path}");
        let token = body["access_token"].as_str().unwrap();
        let (status, me) = send(
            app.anonymous
                .get(app.url("/api/auth/me"))
                .bearer_auth(token),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(me["display_name"], "Ann Lovelace", "{me}");
    }
    // Both, naming the same person: accepted.
    let (status, body) = send(
        app.anonymous
            .post(app.url("/api/auth/signup"))
            .json(&json!({
                "email": email("bea"), "password": PASSWORD, "name": "Bea", "display_name": "Bea"
            })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["display_name"], "Bea");
    // Both, differing: refused, naming `name`, and the address stays free.
    let taken = email("cy");
    let (status, body) = send(
        app.anonymous
            .post(app.url("/api/auth/signup"))
            .json(&json!({
                "email": taken, "password": PASSWORD, "name": "Cy", "display_name": "Cyrus"
            })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["details"]["field"], "name");
    // Neither: refused, naming `display_name`.
    let (status, body) = send(
        app.anonymous
            .post(app.url("/api/auth/signup"))
            .json(&json!({ "email": taken, "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "display_name");
    // A blank `name` is refused like a blank `display_name`, naming the field sent.
    let (status, body) = send(
        app.anonymous
            .post(app.url("/api/auth/signup"))
            .json(&json!({ "email": taken, "password": PASSWORD, "name": "  " })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "name");
    let (status, _) = send(
        app.anonymous
            .post(app.url("/api/auth/signup"))
            .json(&json!({
                "email": taken, "password": PASSWORD, "name": "Cy"
            })),
    )
    .await;
    assert_eq!(status, 201, "the refused signups left the address free");
    app.handle.stop(false).await;
}

// ---- health ----

#[actix_web::test]
async fn health_carries_the_seed_fields_next_to_the_existing_ones() {
    let app = spawn_app().await;
    let (status, health) = send(app.anonymous.get(app.url("/health"))).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["service"], "universal-backend");
    assert!(chrono::DateTime::parse_from_rfc3339(health["timestamp"].as_str().unwrap()).is_ok());
    let services = health["services"].as_array().unwrap();
    assert!(services.iter().any(|s| s == "auth") && services.iter().any(|s| s == "teams"));
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(health["port"], port);
    assert!(health["uptime"].is_u64());
    let memory = &health["memory"];
    for field in ["rss", "heapTotal", "heapUsed", "external", "rss_bytes"] {
        assert!(memory[field].as_u64().is_some(), "{field}: {memory}");
    }
    assert!(memory["rss"].as_u64().unwrap() > 0);
    assert!(memory["heapUsed"].as_u64().unwrap() <= memory["rss"].as_u64().unwrap());
    // The fields that were there before stay.
    assert!(health["uptime_seconds"].is_u64());
    assert!(health["event_store"]["reachable"].as_bool().unwrap());
    assert!(health["projections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "fluxstudio"));

    // Without GOOGLE_CLIENT_ID, Google sign-in says so instead of pretending.
    let (status, body) = send(
        app.anonymous
            .post(app.url("/api/auth/google"))
            .json(&json!({ "credential": "a.b.c" })),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "google_sign_in_unavailable");
    app.handle.stop(false).await;
}

// ---- Google sign-in ----

const CLIENT_ID: &str = "fluxstudio-test.apps.googleusercontent.com";

struct Key {
    kid: String,
    private_der: Vec<u8>,
    jwk: Value,
}

fn make_key(kid: &str) -> Key {
    let mut rng = rsa::rand_core::OsRng;
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("an RSA key");
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": b64(private.n().to_bytes_be()),
        "e": b64(private.e().to_bytes_be()),
    });
    Key {
        kid: kid.to_owned(),
        private_der: private.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        jwk,
    }
}

/// Two keys, made once per test binary.
fn keys() -> &'static (Key, Key) {
    static KEYS: OnceLock<(Key, Key)> = OnceLock::new();
    KEYS.get_or_init(|| (make_key("key-one"), make_key("key-two")))
}

/// Signs `claims` with `key`, naming `kid` in the header.
fn sign(key: &Key, kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_der(&key.private_der),
    )
    .unwrap()
}

fn claims(email: &str, lifetime_secs: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": "https://accounts.google.com",
        "aud": CLIENT_ID,
        "sub": format!("google-{email}"),
        "email": email,
        "email_verified": true,
        "name": "Grace Hopper",
        "iat": now - 10,
        "exp": now + lifetime_secs,
    })
}

/// A loopback HTTP server that answers every request with the JWKS currently set, and
/// counts the requests.
struct Jwks {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<Mutex<u32>>,
}

impl Jwks {
    async fn start(keys: &[&Key]) -> Jwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth2/v3/certs", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(String::new()));
        let hits = Arc::new(Mutex::new(0));
        let jwks = Jwks { url, body, hits };
        jwks.publish(keys);
        let (body, hits) = (jwks.body.clone(), jwks.hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (body, hits) = (body.clone(), hits.clone());
                tokio::spawn(async move {
                    // A GET has no body: read until the end of the head, bounded.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    *hits.lock().unwrap() += 1;
                    let body = body.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        jwks
    }

    fn publish(&self, keys: &[&Key]) {
        let set = json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        *self.body.lock().unwrap() = set.to_string();
    }

    fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }
}

async fn google(app: &TestApp, token: &str) -> (u16, Value) {
    send(
        app.anonymous
            .post(app.url("/api/auth/google"))
            .json(&json!({ "credential": token })),
    )
    .await
}

#[actix_web::test]
async fn google_sign_in_makes_an_account_once_and_logs_known_addresses_in() {
    let (one, two) = keys();
    let jwks = Jwks::start(&[one]).await;
    let url = jwks.url.clone();
    let app = spawn_app_with(move |c| {
        c.google_client_id = Some(CLIENT_ID.to_owned());
        c.google_jwks_url = url;
        c.google_jwks_refetch_secs = 0;
    })
    .await;
    let email = format!("grace-{}@example.org", Uuid::new_v4().simple());

    // A new address makes an account without a password, and logs in.
    let (status, first) = google(&app, &sign(one, &one.kid, &claims(&email, 600))).await;
    assert_eq!(status, 201, "{first}");
    assert!(first["position"].as_i64().unwrap() > 0);
    assert_eq!(first["user"]["email"], email.as_str());
    assert_eq!(first["user"]["display_name"], "Grace Hopper");
    let user_id = first["user"]["id"].as_str().unwrap().to_owned();
    let (status, me) = send(
        app.anonymous
            .get(app.url("/api/auth/me"))
            .bearer_auth(first["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(me["id"], user_id.as_str());
    // No password logs in to it.
    let (status, _) = send(
        app.anonymous
            .post(app.url("/api/auth/login"))
            .json(&json!({ "email": email, "password": "" })),
    )
    .await;
    assert_eq!(status, 401);

    // The same address again (any case, the /v1 path, `id_token`) logs in to the same account.
    let (status, again) =
        send(app.anonymous.post(app.url("/api/v1/auth/google")).json(
            &json!({ "id_token": sign(one, &one.kid, &claims(&email.to_uppercase(), 600)) }),
        ))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user"]["id"], user_id.as_str());
    assert!(again.get("position").is_none());

    // An account made with a password is logged in to by a Google token of its address,
    // and into its organization when asked.
    let tenant = &app.tenant;
    let (status, known) = send(
        app.anonymous
            .post(app.url("/api/auth/google"))
            .json(&json!({
                "credential": sign(one, &one.kid, &claims(&tenant.email, 600)),
                "organization_id": tenant.organization_id,
            })),
    )
    .await;
    assert_eq!(status, 200, "{known}");
    assert_eq!(known["user"]["id"], tenant.user_id.as_str());
    assert_eq!(known["organization_id"], tenant.organization_id.as_str());
    assert_eq!(known["role"], "admin");
    let fetched = jwks.hits();
    assert!(fetched >= 1);

    // Refusals: each is 401 and writes nothing.
    let head = app.head().await;
    let stranger = format!("eve-{}@example.org", Uuid::new_v4().simple());
    let mut wrong_audience = claims(&stranger, 600);
    wrong_audience["aud"] = json!("someone-else.apps.googleusercontent.com");
    let mut wrong_issuer = claims(&stranger, 600);
    wrong_issuer["iss"] = json!("https://accounts.example.org");
    let mut unverified = claims(&stranger, 600);
    unverified["email_verified"] = json!(false);
    let cases = [
        ("wrong audience", sign(one, &one.kid, &wrong_audience)),
        ("wrong issuer", sign(one, &one.kid, &wrong_issuer)),
        ("expired", sign(one, &one.kid, &claims(&stranger, -3600))),
        ("unverified e-mail", sign(one, &one.kid, &unverified)),
        // Signed with a key Google never published, under the published key's id.
        (
            "bad signature",
            sign(two, &one.kid, &claims(&stranger, 600)),
        ),
        ("unknown kid", sign(two, &two.kid, &claims(&stranger, 600))),
        ("not a JWT", "not-a-token".to_owned()),
    ];
    for (case, token) in cases {
        let (status, body) = google(&app, &token).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["error"]["code"], "invalid_google_token", "{case}");
    }
    assert_eq!(app.head().await, head, "refused sign-ins write nothing");
    // The unknown key id made the keys be fetched again.
    assert!(jwks.hits() > fetched);

    // Malformed input is 4xx too.
    let (status, body) = send(
        app.anonymous
            .post(app.url("/api/auth/google"))
            .json(&json!({ "credential": "a", "id_token": "b" })),
    )
    .await;
    assert_field(status, &body, "credential");

    // Google rotates its keys: once the new key is published, tokens signed with it work.
    jwks.publish(&[one, two]);
    let (status, rotated) = google(&app, &sign(two, &two.kid, &claims(&stranger, 600))).await;
    assert_eq!(status, 201, "{rotated}");
    app.handle.stop(false).await;
}

// ---- teams and projects ----

struct Flux {
    app: TestApp,
    /// The first tenant, an admin, from the FluxStudio frontend.
    admin: reqwest::Client,
}

async fn flux_app() -> Flux {
    let app = spawn_app().await;
    enable_fluxstudio(&app, &app.tenant, &app.tenant.access_token).await;
    let admin = flux_client(&app.tenant.access_token);
    Flux { app, admin }
}

impl Flux {
    fn url(&self, path: &str) -> String {
        self.app.url(path)
    }
}

#[actix_web::test]
async fn teams_are_made_and_managed_through_both_path_families() {
    let f = flux_app().await;
    let member = add_member(&f.app, "member").await;
    let (status, team) = send(
        f.admin
            .post(f.url("/api/teams"))
            .json(&json!({ "name": "  Design ", "description": "Product design" })),
    )
    .await;
    assert_eq!(status, 201, "{team}");
    let id = team["id"].as_str().unwrap().to_owned();
    let (status, added) = send(
        f.admin
            .post(f.url(&format!("/api/v1/teams/{id}/members")))
            .json(&json!({ "user_id": member.user_id })),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    let (status, again) = send(
        f.admin
            .post(f.url(&format!("/api/teams/{id}/members")))
            .json(&json!({ "user_id": member.user_id })),
    )
    .await;
    assert_eq!(
        (status, again["error"]["code"].clone()),
        (409, json!("already_member"))
    );
    let (status, role) = send(
        f.admin
            .put(f.url(&format!("/api/teams/{id}/members/{}", member.user_id)))
            .json(&json!({ "role": "lead" })),
    )
    .await;
    assert_eq!(status, 200, "{role}");
    let (status, renamed) = send(
        f.admin
            .patch(f.url(&format!("/api/v1/teams/{id}")))
            .json(&json!({ "name": "Design & Research", "description": null })),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    let at = renamed["position"].as_i64().unwrap();
    for path in [format!("/api/teams/{id}"), format!("/api/v1/teams/{id}")] {
        let (status, got) = send(f.admin.get(f.url(&format!("{path}?min_position={at}")))).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["name"], "Design & Research");
        assert_eq!(got["description"], Value::Null);
        assert_eq!(got["member_count"], 2);
        assert_eq!(
            got["organization_id"],
            f.app.tenant.organization_id.as_str()
        );
        let members = got["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert!(members.iter().all(|m| m["role"] == "lead"));
        assert!(members
            .iter()
            .any(|m| m["user_id"] == member.user_id.as_str() && m["display_name"] == "member"));
    }
    let (status, removed) = send(
        f.admin
            .delete(f.url(&format!("/api/teams/{id}/members/{}", member.user_id))),
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    let (status, _) = send(
        f.admin
            .delete(f.url(&format!("/api/teams/{id}/members/{}", member.user_id))),
    )
    .await;
    assert_eq!(status, 404);

    // A list is paged by cursor, newest first, and filters archived teams.
    let (_, second) = send(
        f.admin
            .post(f.url("/api/v1/teams"))
            .json(&json!({ "name": "Ops" })),
    )
    .await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let (status, archived) = send(f.admin.post(f.url(&format!("/api/teams/{id}/archive")))).await;
    assert_eq!(status, 200);
    let at = archived["position"].as_i64().unwrap();
    let (status, page) = send(
        f.admin
            .get(f.url(&format!("/api/teams?limit=1&min_position={at}"))),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], second_id.as_str());
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = send(
        f.admin
            .get(f.url(&format!("/api/v1/teams?limit=1&cursor={cursor}"))),
    )
    .await;
    assert_eq!(next["items"][0]["id"], id.as_str());
    assert!(next["items"][0]["archived_at"].is_string());
    assert_eq!(next["next_cursor"], Value::Null);
    let (_, active) = send(f.admin.get(f.url("/api/teams?archived=false"))).await;
    let ids: Vec<&str> = active["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![second_id.as_str()]);
    // An archived team takes no changes.
    let (status, body) = send(
        f.admin
            .patch(f.url(&format!("/api/teams/{id}")))
            .json(&json!({ "name": "Back" })),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("team_archived"))
    );
    f.app.handle.stop(false).await;
}

#[actix_web::test]
async fn projects_carry_a_team_members_a_status_and_milestones() {
    let f = flux_app().await;
    let member = add_member(&f.app, "member").await;
    let (_, team) = send(
        f.admin
            .post(f.url("/api/teams"))
            .json(&json!({ "name": "Design" })),
    )
    .await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    let (status, project) = send(f.admin.post(f.url("/api/projects")).json(&json!({
        "name": "Spring campaign", "description": "Posters", "team_id": team_id,
    })))
    .await;
    assert_eq!(status, 201, "{project}");
    let id = project["id"].as_str().unwrap().to_owned();
    let base = format!("/api/projects/{id}");
    let v1 = format!("/api/v1/projects/{id}");

    let (status, _) = send(
        f.admin
            .post(f.url(&format!("{v1}/members")))
            .json(&json!({ "user_id": member.user_id })),
    )
    .await;
    assert_eq!(status, 200);
    let (status, milestone) = send(
        f.admin
            .post(f.url(&format!("{base}/milestones")))
            .json(&json!({ "title": "First drafts", "due_date": "2027-02-01" })),
    )
    .await;
    assert_eq!(status, 200, "{milestone}");
    let first = milestone["milestone_id"].as_str().unwrap().to_owned();
    let (_, second) = send(
        f.admin
            .post(f.url(&format!("{v1}/milestones")))
            .json(&json!({ "title": "Print" })),
    )
    .await;
    let second = second["milestone_id"].as_str().unwrap().to_owned();
    let (status, _) = send(
        f.admin
            .post(f.url(&format!("{base}/milestones/{first}/complete"))),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(f.admin.delete(f.url(&format!("{v1}/milestones/{second}")))).await;
    assert_eq!(status, 200);
    let (status, _) = send(f.admin.delete(f.url(&format!("{v1}/milestones/{second}")))).await;
    assert_eq!(status, 404);
    let (status, _) = send(
        f.admin
            .put(f.url(&format!("{base}/status")))
            .json(&json!({ "status": "on_hold" })),
    )
    .await;
    assert_eq!(status, 200);
    let (status, updated) = send(
        f.admin
            .patch(f.url(&base))
            .json(&json!({ "name": "Spring campaign 2027", "team_id": null })),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    let at = updated["position"].as_i64().unwrap();

    for path in [&base, &v1] {
        let (status, got) = send(f.admin.get(f.url(&format!("{path}?min_position={at}")))).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["name"], "Spring campaign 2027");
        assert_eq!(got["description"], "Posters");
        assert_eq!(got["team_id"], Value::Null);
        assert_eq!(got["status"], "on_hold");
        assert_eq!(got["member_count"], 2);
        assert_eq!(got["milestone_count"], 1);
        let milestones = got["milestones"].as_array().unwrap();
        assert_eq!(milestones.len(), 1);
        assert_eq!(milestones[0]["id"], first.as_str());
        assert_eq!(milestones[0]["due_date"], "2027-02-01");
        assert_eq!(milestones[0]["completed"], true);
        let members = got["members"].as_array().unwrap();
        assert!(members
            .iter()
            .any(|m| m["user_id"] == member.user_id.as_str()));
    }
    let (_, by_status) = send(f.admin.get(f.url("/api/projects?status=on_hold"))).await;
    assert_eq!(by_status["items"].as_array().unwrap().len(), 1);
    let (_, by_member) = send(
        f.admin
            .get(f.url(&format!("/api/v1/projects?member={}", member.user_id))),
    )
    .await;
    assert_eq!(by_member["items"][0]["id"], id.as_str());
    let (_, none) = send(f.admin.get(f.url("/api/projects?status=completed"))).await;
    assert_eq!(none["items"], json!([]));

    // Archived: frozen until another status is set.
    send(
        f.admin
            .put(f.url(&format!("{base}/status")))
            .json(&json!({ "status": "archived" })),
    )
    .await;
    let (status, body) = send(
        f.admin
            .post(f.url(&format!("{base}/milestones")))
            .json(&json!({ "title": "Late" })),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("project_archived"))
    );
    let (status, _) = send(
        f.admin
            .put(f.url(&format!("{v1}/status")))
            .json(&json!({ "status": "active" })),
    )
    .await;
    assert_eq!(status, 200);
    f.app.handle.stop(false).await;
}

/// A team "Design" and a project "P" made by the admin: their ids and the project's answer.
async fn team_and_project(f: &Flux) -> (String, String, Value) {
    let (_, team) = send(
        f.admin
            .post(f.url("/api/teams"))
            .json(&json!({ "name": "Design" })),
    )
    .await;
    let (_, project) = send(
        f.admin
            .post(f.url("/api/projects"))
            .json(&json!({ "name": "P" })),
    )
    .await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    let project_id = project["id"].as_str().unwrap().to_owned();
    (team_id, project_id, project)
}

#[actix_web::test]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let f = flux_app().await;
    let (team_id, project_id, _) = team_and_project(&f).await;
    let outsider = create_tenant(&f.app.anonymous, &f.app.base, "outsider").await;
    let head = f.app.head().await;

    let (status, body) = send(
        f.admin
            .post(f.url("/api/teams"))
            .json(&json!({ "name": "  " })),
    )
    .await;
    assert_field(status, &body, "name");
    let (status, body) = send(
        f.admin
            .post(f.url("/api/v1/teams"))
            .json(&json!({ "name": "x".repeat(201) })),
    )
    .await;
    assert_field(status, &body, "name");
    let (status, body) = send(
        f.admin
            .post(f.url(&format!("/api/teams/{team_id}/members")))
            .json(&json!({ "user_id": outsider.user_id })),
    )
    .await;
    assert_field(status, &body, "user_id");
    let (status, body) = send(
        f.admin
            .put(f.url(&format!(
                "/api/teams/{team_id}/members/{}",
                f.app.tenant.user_id
            )))
            .json(&json!({ "role": "owner" })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = send(
        f.admin
            .post(f.url("/api/projects"))
            .json(&json!({ "name": "P2", "team_id": Uuid::new_v4() })),
    )
    .await;
    assert_field(status, &body, "team_id");
    let (status, body) = send(
        f.admin
            .post(f.url(&format!("/api/projects/{project_id}/milestones")))
            .json(&json!({ "title": "T", "due_date": "2027-02-30" })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = send(
        f.admin
            .post(f.url(&format!("/api/projects/{project_id}/milestones")))
            .json(&json!({ "title": "" })),
    )
    .await;
    assert_field(status, &body, "title");
    let (status, _) = send(
        f.admin
            .put(f.url(&format!("/api/projects/{project_id}/status")))
            .json(&json!({ "status": "done" })),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = send(
        f.admin
            .post(f.url("/api/projects"))
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(f.admin.get(f.url("/api/teams?limit=0"))).await;
    assert_eq!(status, 400);
    let (status, _) = send(f.admin.get(f.url("/api/projects?cursor=abc"))).await;
    assert_eq!(status, 400);
    assert_eq!(f.app.head().await, head, "nothing was written");
    f.app.handle.stop(false).await;
}

#[actix_web::test]
async fn another_organization_sees_no_team_or_project_and_viewers_only_read() {
    let f = flux_app().await;
    let (team_id, project_id, project) = team_and_project(&f).await;
    let at = project["position"].as_i64().unwrap();

    // Another organization with FluxStudio enabled.
    let other = create_tenant(&f.app.anonymous, &f.app.base, "other").await;
    enable_fluxstudio(&f.app, &other, &other.access_token).await;
    let theirs = flux_client(&other.access_token);
    let head = f.app.head().await;
    for prefix in ["/api", "/api/v1"] {
        let (status, _) =
            send(theirs.get(f.url(&format!("{prefix}/teams/{team_id}?min_position={at}")))).await;
        assert_eq!(status, 404);
        let (status, _) = send(theirs.get(f.url(&format!("{prefix}/projects/{project_id}")))).await;
        assert_eq!(status, 404);
        let (status, _) = send(
            theirs
                .patch(f.url(&format!("{prefix}/teams/{team_id}")))
                .json(&json!({ "name": "Taken" })),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) =
            send(theirs.post(f.url(&format!("{prefix}/teams/{team_id}/archive")))).await;
        assert_eq!(status, 404);
        let (status, _) = send(
            theirs
                .put(f.url(&format!("{prefix}/projects/{project_id}/status")))
                .json(&json!({ "status": "completed" })),
        )
        .await;
        assert_eq!(status, 404);
        let (status, list) = send(theirs.get(f.url(&format!("{prefix}/teams")))).await;
        assert_eq!(status, 200);
        assert_eq!(list["items"], json!([]));
        let (_, list) = send(theirs.get(f.url(&format!("{prefix}/projects")))).await;
        assert_eq!(list["items"], json!([]));
    }
    // Naming the other organization's team in one's own project is refused too.
    let (status, body) = send(
        theirs
            .post(f.url("/api/projects"))
            .json(&json!({ "name": "Mine", "team_id": team_id })),
    )
    .await;
    assert_field(status, &body, "team_id");
    assert_eq!(f.app.head().await, head, "nothing was written");

    // A viewer reads and cannot write; the routes belong to the FluxStudio frontend.
    let viewer = add_member(&f.app, "viewer").await;
    let viewing = flux_client(&viewer.access_token);
    let (status, got) = send(viewing.get(f.url(&format!("/api/teams/{team_id}")))).await;
    assert_eq!(status, 200, "{got}");
    let (status, body) = send(
        viewing
            .post(f.url("/api/teams"))
            .json(&json!({ "name": "V" })),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let (status, _) = send(
        viewing
            .post(f.url(&format!("/api/v1/projects/{project_id}/milestones")))
            .json(&json!({ "title": "V" })),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = send(
        f.app
            .anonymous
            .get(f.url("/api/teams"))
            .bearer_auth(&f.app.tenant.access_token),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("frontend_access_denied"))
    );
    let (status, _) = send(f.app.anonymous.get(f.url("/api/projects"))).await;
    assert_eq!(status, 401);
    f.app.handle.stop(false).await;
}

/// Every row of `tables`, in a stable order.
async fn dump(pool: &sqlx::PgPool, tables: &[&str]) -> String {
    let mut out = String::new();
    for t in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(t::text, E'\\n' ORDER BY t::text) FROM {t} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push_str(&format!("== {t}\n{}\n", rows.unwrap_or_default()));
    }
    out
}

#[actix_web::test]
async fn the_teams_and_projects_read_models_equal_a_rebuild_from_the_log() {
    use universal_backend::projections::fluxstudio::Fluxstudio;
    use universal_backend::projections::runner::rebuild;
    use universal_backend::projections::Projection;
    use universal_backend::store::{EventStore, PgEventStore, PgStoreConfig};

    let f = flux_app().await;
    let member = add_member(&f.app, "member").await;
    let (_, team) = send(
        f.admin
            .post(f.url("/api/teams"))
            .json(&json!({ "name": "Design" })),
    )
    .await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    for (path, body) in [
        (
            format!("/api/teams/{team_id}/members"),
            json!({ "user_id": member.user_id }),
        ),
        (
            "/api/projects".to_owned(),
            json!({ "name": "P1", "team_id": team_id }),
        ),
        ("/api/projects".to_owned(), json!({ "name": "P2" })),
    ] {
        let (status, body) = send(f.admin.post(f.url(&path)).json(&body)).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let head = f.app.head().await;
    let (_, page) = send(
        f.admin
            .get(f.url(&format!("/api/projects?min_position={head}"))),
    )
    .await;
    let project = page["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, m) = send(
        f.admin
            .post(f.url(&format!("/api/projects/{project}/milestones")))
            .json(&json!({ "title": "M", "due_date": "2027-01-01" })),
    )
    .await;
    let mid = m["milestone_id"].as_str().unwrap();
    send(f.admin.post(f.url(&format!(
        "/api/projects/{project}/milestones/{mid}/complete"
    ))))
    .await;
    send(
        f.admin
            .delete(f.url(&format!("/api/teams/{team_id}/members/{}", member.user_id))),
    )
    .await;
    let (_, last) = send(
        f.admin
            .post(f.url(&format!("/api/teams/{team_id}/archive"))),
    )
    .await;
    let at = last["position"].as_i64().unwrap();
    let (status, _) = send(f.admin.get(f.url(&format!("/api/teams?min_position={at}")))).await;
    assert_eq!(status, 200);

    let live = dump(&f.app.pool, Fluxstudio.tables()).await;
    let store = PgEventStore::start(f.app.pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let report = rebuild(&f.app.pool, store.as_ref(), &Fluxstudio, 3)
        .await
        .unwrap();
    assert_eq!(report.position, head);
    let rebuilt = dump(&f.app.pool, Fluxstudio.tables()).await;
    assert!(live.contains("Design") && live.contains("P2"), "{live}");
    assert_eq!(live, rebuilt, "the live read model equals a fresh rebuild");
    f.app.handle.stop(false).await;
}
