//! The API contract: the OpenAPI document against the route table actix serves, and the
//! framework-made errors (405, 414, 415, 413, a broken body) in the JSON error shape.

mod common;

use std::collections::BTreeSet;

use actix_web::{test, web, App, HttpResponse};
use common::spawn_app;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every route this API serves. A new route must be added here and documented, or this
/// file's first two tests fail.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/socket.io/"),
    ("POST", "/socket.io/"),
    ("GET", "/app/{key}"),
    ("POST", "/pusher/auth"),
    ("POST", "/apps/{app_id}/events"),
    ("POST", "/apps/{app_id}/batch_events"),
    ("GET", "/apps/{app_id}/channels"),
    ("GET", "/apps/{app_id}/channels/{channel}"),
    ("GET", "/apps/{app_id}/channels/{channel}/users"),
    ("GET", "/api/v1/ai/models"),
    ("GET", "/api/v1/ai/providers"),
    ("POST", "/api/v1/ai/sessions"),
    ("GET", "/api/v1/ai/sessions"),
    ("GET", "/api/v1/ai/sessions/{id}"),
    ("PATCH", "/api/v1/ai/sessions/{id}"),
    ("DELETE", "/api/v1/ai/sessions/{id}"),
    ("POST", "/api/v1/ai/sessions/{id}/archive"),
    ("POST", "/api/v1/ai/sessions/{id}/messages"),
    ("GET", "/api/v1/ai/sessions/{id}/messages"),
    ("PUT", "/api/v1/ai/sessions/{id}/messages/{mid}"),
    ("GET", "/api/v1/ai/sessions/{id}/messages/{mid}/stream"),
    ("POST", "/api/v1/ai/sessions/{id}/regenerate"),
    ("POST", "/api/v1/ai/sessions/{id}/cancel"),
    ("GET", "/api/v1/ai/usage"),
    ("POST", "/api/v1/channels"),
    ("GET", "/api/v1/channels"),
    ("POST", "/api/v1/channels/direct"),
    ("GET", "/api/v1/channels/{id}"),
    ("PATCH", "/api/v1/channels/{id}"),
    ("POST", "/api/v1/channels/{id}/archive"),
    ("POST", "/api/v1/channels/{id}/members"),
    ("DELETE", "/api/v1/channels/{id}/members/{user_id}"),
    ("POST", "/api/v1/channels/{id}/messages"),
    ("GET", "/api/v1/channels/{id}/messages"),
    ("POST", "/api/v1/channels/{id}/read"),
    ("POST", "/api/v1/messages"),
    ("GET", "/api/v1/messages"),
    ("PATCH", "/api/v1/messages/{mid}"),
    ("DELETE", "/api/v1/messages/{mid}"),
    ("PUT", "/api/v1/messages/{mid}/reactions/{emoji}"),
    ("DELETE", "/api/v1/messages/{mid}/reactions/{emoji}"),
    ("GET", "/api/v1/shared/notifications"),
    ("POST", "/api/v1/shared/notifications/read-all"),
    ("POST", "/api/v1/shared/notifications/{id}/read"),
    ("GET", "/api/v1/admin/parked-events"),
    ("GET", "/api/v1/admin/parked-events/{projection}/{position}"),
    (
        "POST",
        "/api/v1/admin/parked-events/{projection}/{position}/retry",
    ),
    (
        "POST",
        "/api/v1/admin/parked-events/{projection}/{position}/skip",
    ),
    ("GET", "/api/v1/admin/imports"),
    ("GET", "/api/v1/admin/imports/ids"),
    ("GET", "/api/v1/info"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/docs"),
    ("GET", "/api/v1/ws"),
    ("POST", "/api/v1/auth/signup"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/logout"),
    ("GET", "/api/v1/auth/me"),
    ("GET", "/api/v1/users/me"),
    ("PATCH", "/api/v1/users/me"),
    ("DELETE", "/api/v1/users/me"),
    ("PUT", "/api/v1/users/me/password"),
    ("POST", "/api/v1/organizations"),
    ("GET", "/api/v1/organizations"),
    ("GET", "/api/v1/organizations/{id}"),
    ("PATCH", "/api/v1/organizations/{id}"),
    ("GET", "/api/v1/organizations/{id}/members"),
    ("POST", "/api/v1/organizations/{id}/members"),
    ("DELETE", "/api/v1/organizations/{id}/members/{user_id}"),
    ("GET", "/api/v1/organizations/{id}/frontends"),
    ("PUT", "/api/v1/organizations/{id}/frontends"),
    ("POST", "/api/v1/citypulse/buildings"),
    ("GET", "/api/v1/citypulse/buildings"),
    ("GET", "/api/v1/citypulse/buildings/{id}"),
    ("POST", "/api/v1/citypulse/buildings/{id}/sensors"),
    ("GET", "/api/v1/citypulse/buildings/{id}/sensors"),
    (
        "DELETE",
        "/api/v1/citypulse/buildings/{id}/sensors/{sensor_id}",
    ),
    ("POST", "/api/v1/citypulse/buildings/{id}/readings"),
    ("PUT", "/api/v1/citypulse/buildings/{id}/thresholds"),
    ("GET", "/api/v1/citypulse/buildings/{id}/energy"),
    ("GET", "/api/v1/citypulse/buildings/{id}/alerts"),
    ("GET", "/api/v1/streams/{stream}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/streams/{stream}/state"),
    ("GET", "/api/v1/streams/{stream}/diff"),
    ("GET", "/api/v1/events/export"),
    ("GET", "/api/v1/catalog"),
    ("POST", "/api/v1/auth/google"),
    ("PUT", "/api/v1/organizations/{id}"),
    ("POST", "/api/v1/teams"),
    ("GET", "/api/v1/teams"),
    ("GET", "/api/v1/teams/{id}"),
    ("PATCH", "/api/v1/teams/{id}"),
    ("POST", "/api/v1/teams/{id}/members"),
    ("PUT", "/api/v1/teams/{id}/members/{user_id}"),
    ("DELETE", "/api/v1/teams/{id}/members/{user_id}"),
    ("POST", "/api/v1/teams/{id}/archive"),
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/projects"),
    ("GET", "/api/v1/projects/{id}"),
    ("PATCH", "/api/v1/projects/{id}"),
    ("PUT", "/api/v1/projects/{id}/status"),
    ("POST", "/api/v1/projects/{id}/members"),
    ("DELETE", "/api/v1/projects/{id}/members/{user_id}"),
    ("POST", "/api/v1/projects/{id}/milestones"),
    ("DELETE", "/api/v1/projects/{id}/milestones/{milestone_id}"),
    (
        "POST",
        "/api/v1/projects/{id}/milestones/{milestone_id}/complete",
    ),
    ("POST", "/api/v1/projects/{id}/documents"),
    ("GET", "/api/v1/projects/{id}/documents"),
    ("GET", "/api/v1/documents/{id}"),
    ("GET", "/api/v1/documents/{id}/versions"),
    ("POST", "/api/v1/documents/{id}/restore"),
    ("POST", "/api/v1/documents/{id}/grants"),
    ("DELETE", "/api/v1/documents/{id}/grants/{user_id}"),
    ("GET", "/collab/{document}"),
    ("GET", "/api/v1/collab/{document}"),
    ("POST", "/api/v1/swarm/tasks"),
    ("GET", "/api/v1/swarm/tasks"),
    ("GET", "/api/v1/swarm/tasks/{id}"),
    ("GET", "/api/v1/swarm/tasks/{id}/progress"),
    ("GET", "/api/v1/swarm/tasks/{id}/result"),
    ("GET", "/api/v1/swarm/tasks/{id}/subtasks"),
    ("POST", "/api/v1/swarm/tasks/{id}/cancel"),
    ("POST", "/api/v1/analysis"),
    ("GET", "/api/v1/analysis/{id}"),
    ("POST", "/api/v1/analysis/{id}/insights"),
    ("GET", "/api/v1/analysis/{id}/report"),
    ("GET", "/api/v1/system/flags"),
    ("PUT", "/api/v1/system/flags/{route}"),
    ("POST", "/api/start-analysis"),
    ("GET", "/api/process-updates"),
    ("GET", "/api/process-results"),
    ("POST", "/api/saveInsights"),
    ("GET", "/api/getAnalysis"),
    ("POST", "/api/openai"),
    ("GET", "/health/agents"),
    ("GET", "/api/v1/agents"),
    ("POST", "/api/v1/agents/execute"),
    ("GET", "/api/v1/agents/executions"),
    ("GET", "/api/v1/agents/executions/{id}"),
    ("GET", "/api/v1/agents/metrics"),
    ("GET", "/api/v1/system/circuit-breakers"),
    ("POST", "/api/v1/system/circuit-breakers/{name}/reset"),
    ("POST", "/api/v1/files"),
    ("GET", "/api/v1/files"),
    ("GET", "/api/v1/files/{id}"),
    ("PATCH", "/api/v1/files/{id}"),
    ("DELETE", "/api/v1/files/{id}"),
    ("GET", "/api/v1/files/{id}/versions"),
    ("POST", "/api/v1/files/{id}/versions/{version}/restore"),
    ("GET", "/api/v1/files/{id}/content"),
    ("GET", "/api/v1/files/{id}/permissions"),
    ("POST", "/api/v1/files/{id}/permissions"),
    ("DELETE", "/api/v1/files/{id}/permissions/{grantee_id}"),
    ("POST", "/api/v1/files/{id}/links"),
    ("DELETE", "/api/v1/files/{id}/links/{link_id}"),
    ("POST", "/api/v1/projects/{id}/files"),
    ("GET", "/api/v1/projects/{id}/files"),
    ("OPTIONS", "/api/v1/uploads"),
    ("POST", "/api/v1/uploads"),
    ("HEAD", "/api/v1/uploads/{id}"),
    ("PATCH", "/api/v1/uploads/{id}"),
    ("DELETE", "/api/v1/uploads/{id}"),
    ("GET", "/s/{token}"),
];

fn expected() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[actix_web::test]
async fn the_openapi_document_is_served_as_3_1_and_documents_every_route() {
    let app = spawn_app().await;
    let res = app
        .anonymous
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = res.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(documented(&doc), expected());

    // Every 4xx/5xx answer is the error shape, and the headers of the contract are named.
    let text = doc.to_string();
    for header in ["X-Frontend-Source", "If-Match", "Idempotency-Key"] {
        assert!(text.contains(&format!("\"name\":\"{header}\"")), "{header}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                // `/health` answers 503 with the health report itself, by design.
                let health = path == "/health" && status == "503";
                if (status.starts_with('4') || status.starts_with('5')) && !health {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    let res = app
        .anonymous
        .get(app.url("/api/v1/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("/api/v1/citypulse/buildings/{id}/energy"));
    assert!(!page.contains("<script"), "the page loads nothing");
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn the_route_table_is_exactly_the_documented_routes() {
    // actix's introspection reports the routes as registered by `http::configure`.
    let app = test::init_service(
        App::new()
            .configure(universal_backend::http::configure)
            .route(
                "/__routes",
                web::get().to(
                    |tree: web::Data<actix_web::introspection::IntrospectionTree>| async move {
                        HttpResponse::Ok().body(tree.report_as_json())
                    },
                ),
            ),
    )
    .await;
    let req = test::TestRequest::get().uri("/__routes").to_request();
    let report: Value = test::call_and_read_body_json(&app, req).await;
    let mut served = BTreeSet::new();
    for item in report.as_array().unwrap() {
        let path = item["full_path"].as_str().unwrap();
        if path == "/__routes" {
            continue;
        }
        for method in item["methods"].as_array().unwrap() {
            served.insert((method.as_str().unwrap().to_owned(), path.to_owned()));
        }
    }
    // The documented routes, and the FluxStudio aliases without `/v1` of the aliased groups.
    let mut with_aliases = expected();
    for (method, path) in expected() {
        let canonical = path.replacen("/api/v1/", "/api/", 1);
        if universal_backend::http::openapi::canonical(&canonical) == path {
            with_aliases.insert((method, canonical));
        }
    }
    assert!(with_aliases.contains(&("PUT".to_owned(), "/api/organizations/{id}".to_owned())));
    assert!(with_aliases.contains(&("POST".to_owned(), "/api/auth/google".to_owned())));
    assert_eq!(served, with_aliases);
}

async fn error_of(res: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body: Value = res.json().await.expect("a JSON error body");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );
    (status, headers, body)
}

#[actix_web::test]
async fn a_wrong_method_answers_405_with_allow_in_the_error_shape() {
    let app = spawn_app().await;
    let res = app
        .client
        .put(app.url("/api/v1/citypulse/buildings"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = error_of(res).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let allow = headers["allow"].to_str().unwrap();
    assert_eq!(allow, "GET, POST");

    let res = app
        .client
        .post(app.url("/api/v1/users/me"))
        .send()
        .await
        .unwrap();
    let (status, headers, _) = error_of(res).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"].to_str().unwrap(), "GET, PATCH, DELETE");

    // A path with a parameter, and one that exists for no method at all.
    let res = app
        .client
        .patch(app.url("/api/v1/citypulse/buildings/7b0c4f7e-2a55-4c1e-9d0e-0a0a0a0a0a0a/readings"))
        .send()
        .await
        .unwrap();
    let (status, headers, _) = error_of(res).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"].to_str().unwrap(), "POST");
    let res = app
        .client
        .get(app.url("/api/v1/no/such/thing"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(res).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn a_body_that_is_not_json_on_a_json_route_answers_415_and_writes_nothing() {
    let app = spawn_app().await;
    let head = app.head().await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let res = app
            .client
            .post(app.url("/api/v1/citypulse/buildings"))
            .header("content-type", content_type)
            .body(r#"{"name":"Town Hall"}"#)
            .send()
            .await
            .unwrap();
        let (status, _, body) = error_of(res).await;
        assert_eq!(status, 415, "{content_type}");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    assert_eq!(app.head().await, head);
    // JSON with a charset, or a `+json` type, is JSON.
    let res = app
        .client
        .post(app.url("/api/v1/citypulse/buildings"))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"name":"Town Hall"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn a_uri_that_is_too_long_answers_414_in_the_error_shape() {
    let app = spawn_app().await;
    let long = "a".repeat(20_000);
    let res = app
        .client
        .get(app.url(&format!("/api/v1/citypulse/buildings?cursor={long}")))
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(res).await;
    assert_eq!(status, 414);
    assert_eq!(body["error"]["code"], "uri_too_long");
    app.handle.stop(false).await;
}

/// Sends raw bytes and reads the whole answer (the request asks to close the connection).
async fn raw(port_base: &str, request: &[u8]) -> (u16, String, String) {
    let addr = port_base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[actix_web::test]
async fn a_body_shorter_or_longer_than_its_content_length_answers_in_the_error_shape() {
    let app = spawn_app().await;
    // Declares more than the limit: refused before reading it.
    let (status, head, body) = raw(
        &app.base,
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 99999999999\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 413, "{head}");
    let json: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(json["error"]["code"], "payload_too_large");

    // Declares 100 bytes, sends 10 and closes: the body is incomplete.
    let (status, head, body) = raw(
        &app.base,
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\nConnection: close\r\n\r\n{\"email\":",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    let json: Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("{body}"));
    assert!(json["error"]["code"].is_string(), "{json}");
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn an_energy_range_beyond_the_calendar_is_refused_not_a_crash() {
    let app = spawn_app().await;
    let (building, _, position) = app.building_with_sensor("electricity", "kWh").await;
    for query in [
        "to=-262143-01-01T00:00:00Z",
        "from=-262143-01-01T00:00:00Z&to=-262142-12-31T00:00:00Z",
        "to=%2B262142-12-31T00:00:00Z",
        "bucket=day&to=0000-01-05T00:00:00Z",
    ] {
        let res = app
            .client
            .get(app.url(&format!(
                "/api/v1/citypulse/buildings/{building}/energy?{query}"
            )))
            .send()
            .await
            .unwrap();
        let (status, _, _) = error_of(res).await;
        assert_eq!(status, 400, "{query}");
    }
    // The worker is alive and well.
    let (status, _) = app
        .get_json(&format!(
            "/api/v1/citypulse/buildings/{building}/energy?min_position={position}"
        ))
        .await;
    assert_eq!(status, 200);
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn a_nul_character_in_a_history_filter_is_refused_not_a_database_error() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/events?type=%00",
        "/api/v1/events?category=building%00",
        "/api/v1/streams/building-%00",
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        let (status, _, body) = error_of(res).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn an_alias_without_v1_answers_405_and_415_like_its_documented_path() {
    let app = spawn_app().await;
    let res = app
        .client
        .put(app.url("/api/teams"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let (status, headers, _) = error_of(res).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"].to_str().unwrap(), "GET, POST");
    let res = app
        .client
        .post(app.url("/api/organizations"))
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(res).await;
    assert_eq!(status, 415);
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    app.handle.stop(false).await;
}

/// `schema` (a part of `doc`) resolved through `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// Whether `value` is what `schema` documents: its types, required properties, and the
/// properties and items within, as far as they are given.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            return match options.iter().any(|s| conforms(doc, s, value, at).is_ok()) {
                true => Ok(()),
                false => Err(format!("{at}: {value} is none of {key}")),
            };
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(doc, s, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind_ok = |t: &&str| match *t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if !types.is_empty() && !types.iter().any(kind_ok) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: `{name}` is missing"));
            }
        }
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            if let Some(v) = object.get(name) {
                conforms(doc, property, v, &format!("{at}.{name}"))?;
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

const FRONTENDS: [&str; 6] = [
    "citypulse",
    "flowmind",
    "quantum",
    "velocity",
    "toolbox",
    "fluxstudio",
];

#[actix_web::test]
async fn info_and_health_name_every_frontend_and_service_as_documented() {
    let app = spawn_app().await;
    let get = |path: &str| {
        let req = app.anonymous.get(app.url(path));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (_, doc) = get("/api/v1/openapi.json").await;
    let (status, info) = get("/api/v1/info").await;
    assert_eq!(status, 200);
    // The answers are held to the schemas the document gives them.
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("Info", "frontends"),
        ("InfoFrontends", "toolbox"),
        ("FrontendInfo", "base_paths"),
        ("Health", "services"),
    ] {
        let required = schemas[schema]["required"].as_array();
        assert!(
            required.is_some_and(|r| r.contains(&json!(field))),
            "{schema} documents {field}"
        );
    }
    let info_schema = json!({ "$ref": "#/components/schemas/Info" });
    conforms(&doc, &info_schema, &info, "info").unwrap();
    let frontends = info["frontends"].as_object().unwrap();
    assert_eq!(
        frontends
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        FRONTENDS.into_iter().collect::<BTreeSet<_>>()
    );
    let documented_paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for (name, f) in frontends {
        assert_eq!(f["enabled"], true, "{name}");
        assert_eq!(f["available"], true, "{name}");
        assert_eq!(f["frontend_source"], name.as_str());
        assert_eq!(f["live_enabled"], true, "{name}");
        let live = f["socketio_namespaces"].as_array().unwrap().len()
            + f["pusher_channels"].as_array().unwrap().len();
        assert!(live > 0, "{name} has no live updates: {f}");
        // Every base path leads to documented routes (those without `/v1` are aliases).
        for base in f["base_paths"].as_array().unwrap() {
            let base = base.as_str().unwrap();
            let canonical = match base.strip_prefix("/api/") {
                Some(rest) if !rest.starts_with("v1/") => format!("/api/v1/{rest}"),
                _ => base.to_owned(),
            };
            assert!(
                documented_paths
                    .iter()
                    .any(|p| p.starts_with(&format!("{canonical}/")) || **p == canonical),
                "{name}: {base} leads to no documented route"
            );
        }
        for stream in f["event_streams"].as_array().unwrap() {
            let op = &doc["paths"][stream.as_str().unwrap()]["get"];
            assert!(op["responses"]["200"]["content"]["text/event-stream"].is_object());
        }
    }
    assert_eq!(frontends["citypulse"]["base"], "/api/v1/citypulse");
    assert_eq!(
        frontends["flowmind"]["socketio_namespaces"],
        json!(["/flowmind"])
    );
    assert!(frontends["toolbox"]["pusher_channels"]
        .as_array()
        .unwrap()
        .contains(&json!("content-generation")));
    assert!(frontends["fluxstudio"]["socketio_namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("/messaging")));
    assert_eq!(info["live"]["pusher"]["path"], "/app/universal-backend-key");

    let (status, health) = get("/health").await;
    assert_eq!(status, 200);
    let health_schema = json!({ "$ref": "#/components/schemas/Health" });
    conforms(&doc, &health_schema, &health, "health").unwrap();
    let services = health["services"].as_array().unwrap();
    for service in [
        "auth",
        "teams",
        "projects",
        "messaging",
        "citypulse",
        "flowmind",
        "swarm",
        "agents",
        "analysis",
        "pusher",
        "socket.io",
    ] {
        assert!(
            services.contains(&json!(service)),
            "{service}: {services:?}"
        );
    }
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn info_and_health_follow_the_route_group_switches() {
    let app = common::spawn_app_with(|c| {
        c.citypulse_enabled = false;
        c.ai_models_enabled = false;
        c.quantum_swarm_enabled = false;
        c.websocket_enabled = false;
        c.pusher_enabled = Some(false);
    })
    .await;
    let info: Value = app
        .anonymous
        .get(app.url("/api/v1/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let f = &info["frontends"];
    for (name, enabled) in [
        ("citypulse", false),
        ("flowmind", false),
        ("quantum", false),
        ("velocity", true),
        ("toolbox", true),
        ("fluxstudio", true),
    ] {
        assert_eq!(f[name]["enabled"], enabled, "{name}");
        // Neither Socket.IO nor Pusher is served.
        assert_eq!(f[name]["live_enabled"], false, "{name}");
    }
    assert_eq!(info["live"]["socketio"]["enabled"], false);
    assert_eq!(info["live"]["pusher"]["enabled"], false);
    // What info says is what the routes do.
    let res = app
        .client
        .get(app.url("/api/v1/citypulse/buildings"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let health: Value = app
        .anonymous
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let services = health["services"].as_array().unwrap();
    for off in ["citypulse", "flowmind", "socket.io", "ws", "pusher"] {
        assert!(!services.contains(&json!(off)), "{off}: {services:?}");
    }
    // Velocity is still on, so the swarm routes are served.
    for on in ["swarm", "messaging", "agents", "analysis", "auth"] {
        assert!(services.contains(&json!(on)), "{on}: {services:?}");
    }
    app.handle.stop(false).await;
}
