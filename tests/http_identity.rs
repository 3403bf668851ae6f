//! Black-box tests of identity: sign-up, login, tokens, sessions, organizations, tenant
//! isolation, frontend access, roles, rate limits and CORS.

mod common;

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{json, Value};
use universal_backend::identity::auth::{Claims, TokenKeys};

const SECRET: &str = "test-secret-test-secret-test-secret";

async fn json_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn signup(app: &common::TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    json_of(
        app.anonymous
            .post(app.url("/api/v1/auth/signup"))
            .json(&json!({ "email": email, "password": password, "display_name": "Someone" }))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn login(app: &common::TestApp, body: Value) -> (StatusCode, Value) {
    json_of(
        app.anonymous
            .post(app.url("/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[actix_web::test]
async fn a_new_user_signs_up_creates_an_organization_posts_readings_refreshes_and_logs_out() {
    let app = common::spawn_app().await;
    // spawn_app already signed up, created an organization, enabled CityPulse, logged in.
    let t = app.tenant.clone();
    let (id, sensor, _) = app.building_with_sensor("electricity", "kWh").await;
    let res = app
        .post(
            &format!("/api/v1/citypulse/buildings/{id}/readings"),
            json!({ "readings": [{ "sensor_id": sensor, "value": 2.0 }] }),
        )
        .await;
    assert_eq!(res.status(), 201);

    let (status, me) = json_of(
        app.anonymous
            .get(app.url("/api/v1/auth/me"))
            .header("authorization", bearer(&t.access_token))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(me["email"], t.email);
    assert_eq!(me["organization_id"], t.organization_id);
    assert_eq!(me["role"], "admin");
    assert!(me.get("password_hash").is_none());

    let (status, refreshed) = json_of(
        app.anonymous
            .post(app.url("/api/v1/auth/refresh"))
            .json(&json!({ "refresh_token": t.refresh_token }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_ne!(refreshed["refresh_token"], t.refresh_token);
    assert_eq!(refreshed["frontends"], json!(["citypulse"]));

    let res = app
        .anonymous
        .post(app.url("/api/v1/auth/logout"))
        .header("authorization", bearer(&access))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    // The session is over: its access tokens and its refresh token are refused.
    let (status, body) = json_of(
        app.anonymous
            .get(app.url("/api/v1/citypulse/buildings"))
            .header("authorization", bearer(&access))
            .header("x-frontend-source", "citypulse")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "session_ended");
    let (status, _) = json_of(
        app.anonymous
            .post(app.url("/api/v1/auth/refresh"))
            .json(&json!({ "refresh_token": refreshed["refresh_token"] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn concurrent_signups_with_one_email_in_any_case_across_two_processes_have_one_winner() {
    let first = common::spawn_app().await;
    let url = first.database_url.clone();
    let second = common::spawn_app_with(move |c| c.database_url = url).await;
    let email = format!("race-{}@example.org", uuid::Uuid::new_v4().simple());
    let variants = [
        email.clone(),
        email.to_uppercase(),
        format!(" {email} "),
        email.replacen("race", "RaCe", 1),
    ];
    let mut tasks = Vec::new();
    for (i, e) in variants.iter().cycle().take(12).enumerate() {
        let app = if i % 2 == 0 { &first } else { &second };
        tasks.push(signup(app, e, common::PASSWORD));
    }
    let results = futures_util::future::join_all(tasks).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let conflicts = results
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "email_taken")
        .count();
    assert_eq!(created, 1, "{results:?}");
    assert_eq!(conflicts, 11);
}

#[actix_web::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_session() {
    let app = common::spawn_app().await;
    let t = app.tenant.clone();
    let refresh = |token: String| {
        app.anonymous
            .post(app.url("/api/v1/auth/refresh"))
            .json(&json!({ "refresh_token": token }))
            .send()
    };
    let (status, second) = json_of(refresh(t.refresh_token.clone()).await.unwrap()).await;
    assert_eq!(status, 200);
    // The first token is replayed: the theft signal.
    let (status, body) = json_of(refresh(t.refresh_token.clone()).await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    // The legitimate newest token and the session's access tokens are dead too.
    let (status, _) = json_of(
        refresh(second["refresh_token"].as_str().unwrap().to_owned())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let res = app
        .anonymous
        .get(app.url("/api/v1/auth/me"))
        .header(
            "authorization",
            bearer(second["access_token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Garbage and unknown tokens are plain 401s.
    for token in ["garbage", "", &"A".repeat(86)] {
        let (status, _) = json_of(refresh(token.to_owned()).await.unwrap()).await;
        assert_eq!(status, 401, "{token}");
    }
}

#[actix_web::test]
async fn one_organization_never_sees_or_changes_another_organizations_buildings() {
    let app = common::spawn_app().await;
    let (id, sensor, position) = app.building_with_sensor("water", "L").await;
    let other = common::create_tenant(&app.anonymous, &app.base, "other").await;
    let intruder = common::client_for(&other);
    let head = app.head().await;

    for path in [
        format!("/api/v1/citypulse/buildings/{id}"),
        format!("/api/v1/citypulse/buildings/{id}/sensors"),
        format!("/api/v1/citypulse/buildings/{id}/energy"),
        format!("/api/v1/citypulse/buildings/{id}/alerts"),
    ] {
        let res = intruder
            .get(app.url(&format!("{path}?min_position={position}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    let res = intruder
        .post(app.url(&format!("/api/v1/citypulse/buildings/{id}/readings")))
        .json(&json!({ "readings": [{ "sensor_id": sensor, "value": 1.0 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = intruder
        .put(app.url(&format!("/api/v1/citypulse/buildings/{id}/thresholds")))
        .json(&json!({ "kind": "water", "max": 1.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(app.head().await, head, "the intruder changed nothing");

    let (_, list) = json_of(
        intruder
            .get(app.url(&format!(
                "/api/v1/citypulse/buildings?min_position={position}"
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["items"], json!([]));
    let res = intruder
        .get(app.url(&format!("/api/v1/streams/building-{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let (_, log) = json_of(
        intruder
            .get(app.url("/api/v1/events?category=building"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(log["events"], json!([]));
    let res = intruder
        .get(app.url(&format!(
            "/api/v1/organizations/{}",
            app.tenant.organization_id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[actix_web::test]
async fn a_viewer_reads_but_cannot_command() {
    let app = common::spawn_app().await;
    let (id, _, position) = app.building_with_sensor("gas", "m3").await;
    let email = format!("viewer-{}@example.org", uuid::Uuid::new_v4().simple());
    let (status, _) = signup(&app, &email, common::PASSWORD).await;
    assert_eq!(status, 201);
    let res = app
        .client
        .post(app.url(&format!(
            "/api/v1/organizations/{}/members",
            app.tenant.organization_id
        )))
        .json(&json!({ "email": email, "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, session) = login(
        &app,
        json!({ "email": email, "password": common::PASSWORD, "organization_id": app.tenant.organization_id }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(session["role"], "viewer");
    let token = session["access_token"].as_str().unwrap();
    let res = app
        .anonymous
        .get(app.url(&format!(
            "/api/v1/citypulse/buildings/{id}?min_position={position}"
        )))
        .header("authorization", bearer(token))
        .header("x-frontend-source", "citypulse")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let head = app.head().await;
    let (status, body) = json_of(
        app.anonymous
            .post(app.url("/api/v1/citypulse/buildings"))
            .header("authorization", bearer(token))
            .header("x-frontend-source", "citypulse")
            .json(&json!({ "name": "Not allowed" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(app.head().await, head);
}

#[actix_web::test]
async fn forged_expired_and_unsigned_tokens_are_refused() {
    let app = common::spawn_app().await;
    let good = app.tenant.access_token.clone();
    let keys = TokenKeys::new(
        SECRET.as_bytes(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let claims: Claims = keys.verify(&good).unwrap();
    let (expired, _) = keys
        .issue(claims.clone(), Utc::now() - chrono::Duration::hours(3))
        .unwrap();
    let other_key = TokenKeys::new(
        b"another-secret",
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let (foreign, _) = other_key.issue(claims, Utc::now()).unwrap();
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let header_none = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header_none}.{}.", parts[1]);
    // Flip a character of the payload: the signature no longer matches.
    let mut payload = parts[1].clone().into_bytes();
    payload[10] = if payload[10] == b'A' { b'B' } else { b'A' };
    parts[1] = String::from_utf8(payload).unwrap();
    let tampered = parts.join(".");

    for (what, token) in [
        ("expired", expired),
        ("other key", foreign),
        ("alg none", unsigned),
        ("tampered", tampered),
        ("garbage", "abc.def".to_owned()),
    ] {
        let (status, body) = json_of(
            app.anonymous
                .get(app.url("/api/v1/citypulse/buildings"))
                .header("authorization", bearer(&token))
                .header("x-frontend-source", "citypulse")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"]["code"], "invalid_token", "{what}");
    }
    let res = app
        .anonymous
        .get(app.url("/api/v1/citypulse/buildings"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[actix_web::test]
async fn the_frontend_source_must_be_enabled_for_the_organization() {
    let app = common::spawn_app().await;
    let token = bearer(&app.tenant.access_token);
    for source in [None, Some("myspace"), Some("quantum")] {
        let mut req = app
            .anonymous
            .get(app.url("/api/v1/citypulse/buildings"))
            .header("authorization", &token);
        if let Some(s) = source {
            req = req.header("x-frontend-source", s);
        }
        let (status, body) = json_of(req.send().await.unwrap()).await;
        assert_eq!(status, 403, "{source:?}");
        assert_eq!(body["error"]["code"], "frontend_access_denied");
    }
}

#[actix_web::test]
async fn bad_credentials_and_weak_passwords_are_refused_without_revealing_accounts() {
    let app = common::spawn_app().await;
    let (status, body) = signup(&app, "not-an-email", common::PASSWORD).await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("email"))
    );
    let (status, body) = signup(&app, "weak@example.org", "password").await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("password"))
    );

    let (s1, wrong_password) = login(
        &app,
        json!({ "email": app.tenant.email, "password": "Wrong-Password-1" }),
    )
    .await;
    let (s2, unknown_user) = login(
        &app,
        json!({ "email": "nobody@example.org", "password": "Wrong-Password-1" }),
    )
    .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        wrong_password, unknown_user,
        "the answers do not tell the cases apart"
    );

    // Changing the password needs the current one and ends every session.
    let res = app
        .client
        .put(app.url("/api/v1/users/me/password"))
        .json(&json!({ "current_password": "Wrong-Password-1", "new_password": "Brand-New-Secret-7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = app
        .client
        .put(app.url("/api/v1/users/me/password"))
        .json(
            &json!({ "current_password": common::PASSWORD, "new_password": "Brand-New-Secret-7" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, _) = login(
        &app,
        json!({ "email": app.tenant.email, "password": common::PASSWORD }),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = login(
        &app,
        json!({ "email": app.tenant.email, "password": "Brand-New-Secret-7" }),
    )
    .await;
    assert_eq!(status, 200);
    let res = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        401,
        "the old session ended with the password change"
    );
}

#[actix_web::test]
async fn auth_endpoints_are_rate_limited_per_client_with_retry_after() {
    let app = common::spawn_app_with(|c| c.rate_limit_per_minute = 6).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let res = app
            .anonymous
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({ "email": "nobody@example.org", "password": "Wrong-Password-1" }))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            retry_after = res.headers().get("retry-after").cloned();
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some(), "429 carries Retry-After");
}

#[actix_web::test]
async fn cors_answers_listed_origins_only() {
    let app = common::spawn_app_with(|c| c.allowed_origins = "https://citypulse.app".into()).await;
    let preflight = |origin: &str| {
        app.anonymous
            .request(
                reqwest::Method::OPTIONS,
                app.url("/api/v1/citypulse/buildings"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,x-frontend-source",
            )
            .send()
    };
    let ok = preflight("https://citypulse.app").await.unwrap();
    assert_eq!(
        ok.headers().get("access-control-allow-origin").unwrap(),
        "https://citypulse.app"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[actix_web::test]
async fn a_disabled_route_group_answers_feature_disabled() {
    let app = common::spawn_app_with(|c| c.citypulse_enabled = false).await;
    let (status, body) = app.get_json("/api/v1/citypulse/buildings").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "feature_disabled");
}

#[actix_web::test]
async fn production_refuses_to_start_without_a_jwt_secret() {
    let config = universal_backend::Config {
        node_env: "production".into(),
        jwt_secret: None,
        ..common::test_config(common::fresh_database_url())
    };
    let err = universal_backend::Application::build(config)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
}

#[actix_web::test]
async fn organization_admins_manage_members_and_the_last_admin_stays() {
    let app = common::spawn_app().await;
    let org = app.tenant.organization_id.clone();
    let (status, members) = app
        .get_json(&format!(
            "/api/v1/organizations/{org}/members?min_position={}",
            app.head().await
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(members["items"][0]["role"], "admin");
    let res = app
        .client
        .delete(app.url(&format!(
            "/api/v1/organizations/{org}/members/{}",
            app.tenant.user_id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let (status, orgs) = app.get_json("/api/v1/organizations").await;
    assert_eq!(status, 200);
    assert_eq!(orgs["items"][0]["id"], org);
    let res = app
        .client
        .put(app.url(&format!("/api/v1/organizations/{org}/frontends")))
        .json(&json!({ "frontend": "myspace", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
}

#[actix_web::test]
async fn a_deactivated_account_can_no_longer_log_in() {
    let app = common::spawn_app().await;
    let res = app
        .client
        .delete(app.url("/api/v1/users/me"))
        .json(&json!({ "password": common::PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let (status, _) = login(
        &app,
        json!({ "email": app.tenant.email, "password": common::PASSWORD }),
    )
    .await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn a_name_with_a_bidirectional_override_is_refused_and_changes_nothing() {
    let app = common::spawn_app().await;
    let org = app.tenant.organization_id.clone();
    let url = app.url(&format!("/api/v1/organizations/{org}"));
    let (status, before) = json_of(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200, "{before}");
    let head = app.head().await;
    // Would display as "Acme Corpexe.pdf" while being another name.
    for name in [
        "Acme Corp\u{202E}fdp.exe",
        "Acme\u{2066} Corp",
        "\u{FEFF}Acme",
    ] {
        let (status, body) = json_of(
            app.client
                .patch(&url)
                .json(&json!({ "name": name }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(status.is_client_error(), "{status} {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        assert_eq!(body["error"]["details"]["field"], "name", "{body}");
    }
    assert_eq!(app.head().await, head, "nothing was recorded");
    let (status, after) = json_of(app.client.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(after["name"], before["name"], "{after}");
}
