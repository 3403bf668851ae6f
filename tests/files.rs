//! FluxStudio files, black-box: real server on port 0, real PostgreSQL, uploads with `curl`
//! (multipart) and the real `tus-js-client` in Node, the S3 path against a real `moto_server`
//! on loopback. Each test has its own database and its own store directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{add_member, create_tenant, spawn_app_with, spawn_second_app_with, Tenant, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use universal_backend::config::Config;
use uuid::Uuid;

// ---- helpers ----

fn store_dir() -> PathBuf {
    std::env::temp_dir().join(format!("ub-files-{}", Uuid::new_v4().simple()))
}

/// A server storing files in a directory of its own, FluxStudio on for its first tenant.
async fn flux_app(tune: impl FnOnce(&mut Config)) -> (TestApp, PathBuf) {
    let dir = store_dir();
    let d = dir.display().to_string();
    let app = spawn_app_with(move |c| {
        c.file_store_url = d;
        tune(c);
    })
    .await;
    enable(&app, &app.tenant).await;
    (app, dir)
}

async fn enable(app: &TestApp, tenant: &Tenant) {
    let res = app
        .anonymous
        .put(app.url(&format!(
            "/api/v1/organizations/{}/frontends",
            tenant.organization_id
        )))
        .bearer_auth(&tenant.access_token)
        .json(&json!({ "frontend": "fluxstudio", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "enable fluxstudio");
}

fn flux(token: &str) -> reqwest::Client {
    common::frontend_client(token, "fluxstudio")
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

async fn project(app: &TestApp, client: &reqwest::Client) -> String {
    let (status, body) = send(
        client
            .post(app.url("/api/v1/projects"))
            .json(&json!({ "name": "Posters" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Bytes `i % 251`, the content the tus script uploads.
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Uploads `content` as `name` with curl's multipart form (`-F`); extra form fields first.
async fn curl_upload(
    base: &str,
    path: &str,
    token: &str,
    fields: &[(&str, &str)],
    (name, mime, content): (&str, &str, &[u8]),
) -> (u16, Value) {
    let dir = std::env::temp_dir().join(format!("ub-upload-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("content");
    std::fs::write(&file, content).unwrap();
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "60".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-H".into(),
        format!("Authorization: Bearer {token}"),
        "-H".into(),
        "X-Frontend-Source: fluxstudio".into(),
    ];
    for (k, v) in fields {
        args.push("-F".into());
        args.push(format!("{k}={v}"));
    }
    args.push("-F".into());
    args.push(format!(
        "file=@{};type={mime};filename=\"{name}\"",
        file.display()
    ));
    args.push(format!("{base}{path}"));
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(args).output())
        .await
        .unwrap()
        .expect("curl runs");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').expect("curl printed the status");
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status.trim().parse().unwrap(), body)
}

/// Objects stored under `blobs/` of a local store.
fn blobs(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("blobs"), &mut out);
    out
}

async fn wait_listed(app: &TestApp, client: &reqwest::Client, path: &str, n: usize) -> Value {
    let (status, body) = send(client.get(app.url(path))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), n, "{body}");
    body
}

// ---- multipart, downloads, ranges ----

#[actix_web::test]
async fn a_curl_upload_is_served_back_with_etag_ranges_and_conditional_requests() {
    let (app, dir) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let project = project(&app, &client).await;
    let content = pattern(100_000);
    let (status, body) = curl_upload(
        &app.base,
        &format!("/api/projects/{project}/files"),
        &token,
        &[],
        ("../../poster draft.png", "image/png", &content),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["file_version"], 1);
    assert_eq!(body["size"], 100_000);
    assert_eq!(body["sha256"], sha256_hex(&content));
    assert_eq!(blobs(&dir).len(), 1, "stored once, under its content key");

    let (status, file) = send(client.get(app.url(&format!("/api/v1/files/{id}")))).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(
        file["name"], "poster draft.png",
        "a path never reaches the name"
    );
    assert_eq!(file["project_id"], project);
    assert_eq!(file["current"]["mime_type"], "image/png");
    assert_eq!(file["current"]["sniffed_mime_type"], Value::Null);
    assert_eq!(file["access"], "admin");

    let url = app.url(&format!("/api/v1/files/{id}/content"));
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&content)));
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert_eq!(res.headers()["content-length"], "100000");
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("inline; filename=\"poster draft.png\"; filename*=UTF-8''poster%20draft.png"));
    assert_eq!(res.bytes().await.unwrap().as_ref(), content.as_slice());

    let res = client
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(res.bytes().await.unwrap().as_ref(), &content[10..20]);
    let res = client
        .get(&url)
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &content[99_995..]);

    let res = client
        .get(&url)
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 416);
    assert_eq!(res.headers()["content-range"], "bytes */100000");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "range_not_satisfiable");

    let res = client
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert!(res.bytes().await.unwrap().is_empty());

    // Identical content is stored once, even as another file.
    let (status, again) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[("project_id", &project)],
        ("copy.png", "image/png", &content),
    )
    .await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"], body_id(&id));
    assert_eq!(blobs(&dir).len(), 1);
    app.handle.stop(false).await;
}

fn body_id(id: &str) -> Value {
    Value::String(id.to_owned())
}

#[actix_web::test]
async fn html_and_svg_uploads_are_served_as_attachments_with_nosniff() {
    let (app, _dir) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let html = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>";
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><circle r="4"/></svg>"#;
    // Declared as harmless types: what they are decides, not what the uploader says.
    for (name, mime, content) in [
        ("page.html", "text/plain", &html[..]),
        ("logo.svg", "image/png", &svg[..]),
        ("invite.txt", "text/html", &b"hello"[..]),
    ] {
        let (status, body) = curl_upload(
            &app.base,
            "/api/v1/files",
            &token,
            &[],
            (name, mime, content),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap();
        let res = client
            .get(app.url(&format!("/api/v1/files/{id}/content")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{name}");
        let disposition = res.headers()["content-disposition"].to_str().unwrap();
        assert!(
            disposition.starts_with("attachment;"),
            "{name}: {disposition}"
        );
        assert!(res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox"));
    }
    app.handle.stop(false).await;
}

// ---- versions ----

#[actix_web::test]
async fn uploading_again_makes_a_version_and_restoring_makes_an_old_one_current() {
    let (app, _dir) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let (status, first) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("notes.txt", "text/plain", b"one"),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    let (status, second) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[("file_id", &id)],
        ("ignored.txt", "text/plain", b"two"),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["id"], id);
    assert_eq!(second["file_version"], 2);

    let content = |v: Option<i32>| {
        let url = match v {
            Some(v) => app.url(&format!("/api/v1/files/{id}/content?version={v}")),
            None => app.url(&format!("/api/v1/files/{id}/content")),
        };
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(content(None).await, "two");
    assert_eq!(content(Some(1)).await, "one");

    let (status, restored) =
        send(client.post(app.url(&format!("/api/v1/files/{id}/versions/1/restore")))).await;
    assert_eq!(status, 201, "{restored}");
    assert_eq!(restored["file_version"], 3);
    assert_eq!(content(None).await, "one");

    let (status, versions) =
        send(client.get(app.url(&format!("/api/v1/files/{id}/versions")))).await;
    assert_eq!(status, 200);
    let items = versions["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "history is kept");
    assert_eq!(items[2]["restored_from"], 1);
    assert_eq!(items[0]["uploaded_by"], app.tenant.user_id);
    assert!(items[1]["uploaded_at"].is_string());

    let (status, _) =
        send(client.post(app.url(&format!("/api/v1/files/{id}/versions/9/restore")))).await;
    assert_eq!(status, 404);

    // Rename and delete; a deleted file is gone from every route.
    let (status, body) = send(
        client
            .patch(app.url(&format!("/api/files/{id}")))
            .json(&json!({ "name": "dir/final.txt" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, file) = send(client.get(app.url(&format!("/api/v1/files/{id}")))).await;
    assert_eq!(file["name"], "final.txt");
    let (status, _) = send(client.delete(app.url(&format!("/api/v1/files/{id}")))).await;
    assert_eq!(status, 200);
    let (status, _) = send(client.get(app.url(&format!("/api/v1/files/{id}/content")))).await;
    assert_eq!(status, 404);
    wait_listed(&app, &client, "/api/v1/files", 0).await;
    app.handle.stop(false).await;
}

// ---- permissions ----

#[actix_web::test]
async fn the_permission_matrix_holds_in_every_process() {
    let (app, dir) = flux_app(|_| {}).await;
    let d = dir.display().to_string();
    let other = spawn_second_app_with(&app, move |c| c.file_store_url = d).await;
    let admin_token = app.tenant.access_token.clone();
    let admin = flux(&admin_token);
    let project = project(&app, &admin).await;
    let (status, body) = curl_upload(
        &app.base,
        &format!("/api/v1/projects/{project}/files"),
        &admin_token,
        &[],
        ("plan.pdf", "application/pdf", b"%PDF-1.4 plan"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let file_url = |base: &str| format!("{base}/api/v1/files/{id}");

    // Another organization: 404 everywhere, never 403.
    let stranger = create_tenant(&app.anonymous, &app.base, "stranger").await;
    enable(&app, &stranger).await;
    let stranger = flux(&stranger.access_token);
    assert_eq!(send(stranger.get(file_url(&app.base))).await.0, 404);
    assert_eq!(
        send(stranger.get(format!("{}/content", file_url(&app.base))))
            .await
            .0,
        404
    );

    // A member of the organization outside the project, without a grant: 404.
    let member = add_member(&app, "member").await;
    let member_client = flux(&member.access_token);
    assert_eq!(send(member_client.get(file_url(&app.base))).await.0, 404);
    wait_listed(&app, &member_client, "/api/v1/files", 0).await;

    // A team grant (view) lets the team's members read, not write.
    let (status, team) = send(
        admin
            .post(app.url("/api/v1/teams"))
            .json(&json!({ "name": "Print" })),
    )
    .await;
    assert_eq!(status, 201, "{team}");
    let team_id = team["id"].as_str().unwrap().to_owned();
    let (status, body) = send(
        admin
            .post(app.url(&format!("/api/v1/teams/{team_id}/members")))
            .json(&json!({ "user_id": member.user_id })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        admin
            .post(format!("{}/permissions", file_url(&app.base)))
            .json(&json!({ "team_id": team_id, "access": "view" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for base in [&app.base, &other.base] {
        let (status, file) = send(member_client.get(file_url(base))).await;
        assert_eq!(status, 200, "{file}");
        assert_eq!(file["access"], "view");
    }
    assert_eq!(
        send(member_client.get(format!("{}/content", file_url(&other.base))))
            .await
            .0,
        200
    );
    let (status, body) = send(
        member_client
            .patch(file_url(&app.base))
            .json(&json!({ "name": "mine.pdf" })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    wait_listed(&app, &member_client, "/api/v1/files", 1).await;

    // A user grant, then revoked: gone on the next request, in the other process too.
    let (status, body) = send(
        admin
            .post(format!("{}/permissions", file_url(&app.base)))
            .json(&json!({ "user_id": member.user_id, "access": "edit" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, file) = send(member_client.get(file_url(&other.base))).await;
    assert_eq!(file["access"], "edit");
    for grantee in [&member.user_id, &team_id] {
        let (status, body) =
            send(admin.delete(format!("{}/permissions/{grantee}", file_url(&app.base)))).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(send(member_client.get(file_url(&other.base))).await.0, 404);
    assert_eq!(send(member_client.get(file_url(&app.base))).await.0, 404);
    wait_listed(&app, &member_client, "/api/v1/files", 0).await;

    // A viewer who is a member of the project reads its files but may not upload.
    let viewer = add_member(&app, "viewer").await;
    let (status, body) = send(
        admin
            .post(app.url(&format!("/api/v1/projects/{project}/members")))
            .json(&json!({ "user_id": viewer.user_id })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let viewer_client = flux(&viewer.access_token);
    let (status, file) = send(viewer_client.get(file_url(&other.base))).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["access"], "view");
    let (status, body) = curl_upload(
        &other.base,
        &format!("/api/v1/projects/{project}/files"),
        &viewer.access_token,
        &[],
        ("sneaky.txt", "text/plain", b"no"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Removed from the project: nothing, at once, in both processes.
    let (status, _) = send(admin.delete(app.url(&format!(
        "/api/v1/projects/{project}/members/{}",
        viewer.user_id
    ))))
    .await;
    assert_eq!(status, 200);
    assert_eq!(send(viewer_client.get(file_url(&other.base))).await.0, 404);
    // And an outsider cannot even learn the project exists by uploading to it.
    let (status, _) = curl_upload(
        &app.base,
        &format!("/api/v1/projects/{project}/files"),
        &member.access_token,
        &[],
        ("x.txt", "text/plain", b"x"),
    )
    .await;
    assert_eq!(status, 404);
    other.handle.stop(false).await;
    app.handle.stop(false).await;
}

// ---- share links ----

#[actix_web::test]
async fn share_links_work_without_an_account_until_revoked_expired_or_used_up() {
    let (app, dir) = flux_app(|_| {}).await;
    let d = dir.display().to_string();
    let other = spawn_second_app_with(&app, move |c| c.file_store_url = d).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let (_, body) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("brief.txt", "text/plain", b"the brief"),
    )
    .await;
    let id = body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let links = app.url(&format!("/api/v1/files/{id}/links"));
    let in_days = |d: i64| (chrono::Utc::now() + chrono::Duration::days(d)).to_rfc3339();

    let (status, body) = send(
        client
            .post(&links)
            .json(&json!({ "expires_at": in_days(31) })),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "expires_at");
    let (status, body) = send(client.post(&links).json(&json!({}))).await;
    assert_eq!(status, 422, "expiry is required: {body}");

    // Valid, on either process, without an account; limited to two downloads.
    let (status, link) = send(
        client
            .post(&links)
            .json(&json!({ "expires_at": in_days(7), "max_downloads": 2 })),
    )
    .await;
    assert_eq!(status, 201, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/s/"));
    let anonymous = reqwest::Client::new();
    let res = anonymous
        .get(format!("{}{url}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(res.text().await.unwrap(), "the brief");
    assert_eq!(
        anonymous
            .get(format!("{}{url}", other.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, body) = send(anonymous.get(format!("{}{url}", app.base))).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "download_limit_reached");

    // A made-up or altered token is not a link.
    let mut altered = url.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    assert_eq!(
        send(anonymous.get(format!("{}{altered}", app.base)))
            .await
            .0,
        404
    );

    // Revoked: 410 on the next request, in the other process too.
    let (_, link) = send(
        client
            .post(&links)
            .json(&json!({ "expires_at": in_days(1) })),
    )
    .await;
    let url = link["url"].as_str().unwrap().to_owned();
    assert_eq!(
        anonymous
            .get(format!("{}{url}", other.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) =
        send(client.delete(format!("{links}/{}", link["id"].as_str().unwrap()))).await;
    assert_eq!(status, 200);
    let (status, body) = send(anonymous.get(format!("{}{url}", other.base))).await;
    assert_eq!(status, 410);
    assert_eq!(body["error"]["code"], "link_revoked");

    // Expired: a link of two seconds, asked after they passed.
    let expires = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (status, link) = send(client.post(&links).json(&json!({ "expires_at": expires }))).await;
    assert_eq!(status, 201, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = send(anonymous.get(format!("{}{url}", app.base))).await;
    assert_eq!(status, 410);
    assert_eq!(body["error"]["code"], "link_expired");
    other.handle.stop(false).await;
    app.handle.stop(false).await;
}

// ---- limits ----

#[actix_web::test]
async fn uploads_over_the_size_limit_or_the_quota_are_refused_with_the_limit() {
    let (app, dir) = flux_app(|c| {
        c.file_max_bytes = 1000;
        c.file_quota_bytes = 2500;
    })
    .await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let (status, body) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("big.bin", "application/octet-stream", &pattern(1001)),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "file_too_large");
    assert_eq!(body["error"]["details"]["limit"], 1000);
    for _ in 0..2 {
        let (status, body) = curl_upload(
            &app.base,
            "/api/v1/files",
            &token,
            &[],
            ("part.bin", "application/octet-stream", &pattern(1000)),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    wait_listed(&app, &client, "/api/v1/files", 2).await;
    let (status, body) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("more.bin", "application/octet-stream", &[7u8; 600]),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["details"]["limit"], 2500);
    assert_eq!(body["error"]["details"]["used"], 2000);

    // tus refuses at creation.
    let (status, body) = send(
        client
            .post(app.url("/api/v1/uploads"))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "5000"),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["details"]["limit"], 1000);
    assert_eq!(blobs(&dir).len(), 1, "only the accepted content is stored");
    wait_listed(&app, &client, "/api/v1/files", 2).await;
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn an_upload_cut_off_midway_leaves_nothing_visible() {
    use tokio::io::AsyncWriteExt;
    let (app, dir) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let boundary = "XyZzY";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let total = 32 * 1024 * 1024;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /api/v1/files HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         X-Frontend-Source: fluxstudio\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n{head}",
        total + head.len() + boundary.len() + 8
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let chunk = vec![1u8; 1024 * 1024];
    for _ in 0..12 {
        stream.write_all(&chunk).await.unwrap();
    }
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);
    // The server notices the dead body and gives the upload up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_listed(&app, &client, "/api/v1/files", 0).await;
    assert!(blobs(&dir).is_empty(), "nothing under a content key");
    let tmp: Vec<_> = std::fs::read_dir(dir.join("tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "the temporary object was removed: {tmp:?}");
    app.handle.stop(false).await;
}

// ---- tus ----

fn node_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/files");
    assert!(
        dir.join("node_modules/tus-js-client").exists(),
        "tus-js-client is not installed: run `npm ci` in tests/files (scripts/test does)"
    );
    dir
}

#[actix_web::test]
async fn the_tus_protocol_answers_as_version_1_0_0_says() {
    let (app, _dir) = flux_app(|c| c.file_max_bytes = 1_000_000).await;
    let client = flux(&app.tenant.access_token);
    let uploads = app.url("/api/v1/uploads");
    let res = client
        .request(reqwest::Method::OPTIONS, &uploads)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["tus-resumable"], "1.0.0");
    assert_eq!(res.headers()["tus-version"], "1.0.0");
    assert_eq!(res.headers()["tus-max-size"], "1000000");
    let ext = res.headers()["tus-extension"].to_str().unwrap();
    for e in ["creation", "termination", "expiration", "checksum"] {
        assert!(ext.contains(e), "{ext}");
    }

    let res = client
        .post(&uploads)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 412);
    assert_eq!(res.headers()["tus-version"], "1.0.0");
    assert_eq!(res.headers()["tus-resumable"], "1.0.0");

    let tus = |r: reqwest::RequestBuilder| r.header("Tus-Resumable", "1.0.0");
    let meta = format!(
        "filename {},filetype {}",
        base64_of("hello.txt"),
        base64_of("text/plain")
    );
    let res = tus(client.post(&uploads))
        .header("Upload-Length", "10")
        .header("Upload-Metadata", &meta)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers().contains_key("upload-expires"));
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let url = app.url(&location);
    let head = tus(client.head(&url)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["upload-offset"], "0");
    assert_eq!(head.headers()["upload-length"], "10");

    let patch = |offset: &str, ct: &str, body: &'static [u8]| {
        tus(client.patch(&url))
            .header("Upload-Offset", offset)
            .header("Content-Type", ct)
            .body(body)
    };
    assert_eq!(
        patch("0", "application/json", b"hello")
            .send()
            .await
            .unwrap()
            .status(),
        415
    );
    assert_eq!(
        patch("3", "application/offset+octet-stream", b"hello")
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    // A checksum mismatch discards the chunk.
    let res = patch("0", "application/offset+octet-stream", b"hello")
        .header(
            "Upload-Checksum",
            format!("sha1 {}", base64_raw(&[0u8; 20])),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 460);
    assert_eq!(res.headers()["tus-resumable"], "1.0.0");
    let head = tus(client.head(&url)).send().await.unwrap();
    assert_eq!(head.headers()["upload-offset"], "0");
    // A matching checksum (sha1, then sha256) counts.
    let sha1 = {
        use sha1::Digest as _;
        sha1::Sha1::digest(b"hello").to_vec()
    };
    let res = patch("0", "application/offset+octet-stream", b"hello")
        .header("Upload-Checksum", format!("sha1 {}", base64_raw(&sha1)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["upload-offset"], "5");
    let res = patch("5", "application/offset+octet-stream", b"world")
        .header(
            "Upload-Checksum",
            format!("sha256 {}", base64_raw(&Sha256::digest(b"world"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(res.headers()["upload-offset"], "10");
    let file_id = res.headers()["x-file-id"].to_str().unwrap().to_owned();
    let text = client
        .get(app.url(&format!("/api/v1/files/{file_id}/content")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "helloworld");

    // Termination.
    let res = tus(client.post(&uploads))
        .header("Upload-Length", "4")
        .send()
        .await
        .unwrap();
    let url = app.url(res.headers()["location"].to_str().unwrap());
    let res = tus(client.patch(&url))
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body("ab")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(tus(client.delete(&url)).send().await.unwrap().status(), 204);
    assert_eq!(tus(client.head(&url)).send().await.unwrap().status(), 404);

    // Another user's upload is not found.
    let other = add_member(&app, "member").await;
    let res = tus(client.post(&uploads))
        .header("Upload-Length", "4")
        .send()
        .await
        .unwrap();
    let url = app.url(res.headers()["location"].to_str().unwrap());
    assert_eq!(
        tus(flux(&other.access_token).head(&url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.handle.stop(false).await;
}

fn base64_of(s: &str) -> String {
    base64_raw(s.as_bytes())
}

fn base64_raw(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[actix_web::test]
async fn tus_js_client_uploads_into_a_project() {
    let dir = node_dir();
    let (app, _store) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let project = project(&app, &client).await;
    let size = 3 * 1024 * 1024 + 17;
    let args = [
        dir.join("tus.mjs").display().to_string(),
        "simple".into(),
        app.base.clone(),
        token.clone(),
        size.to_string(),
        project.clone(),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new("node").args(args).output())
        .await
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let id = result["fileId"].as_str().expect("X-File-Id").to_owned();
    let (status, file) = send(client.get(app.url(&format!("/api/v1/files/{id}")))).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["project_id"], project);
    assert_eq!(file["name"], "resumable.bin");
    assert_eq!(file["current"]["size"], size);
    assert_eq!(file["current"]["sha256"], sha256_hex(&pattern(size)));
    app.handle.stop(false).await;
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[actix_web::test]
async fn a_tus_upload_resumes_on_another_process_after_the_first_is_killed() {
    let node = node_dir();
    let (app, store) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    // Process A: the real server binary, on the same database and store, killed mid-upload.
    let port = free_port();
    let mut a = Command::new(env!("CARGO_BIN_EXE_universal-backend"))
        .env("DATABASE_URL", &app.database_url)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env(
            "JWT_SECRET",
            common::test_config(String::new()).jwt_secret.unwrap(),
        )
        .env("PUSHER_SECRET", common::PUSHER_SECRET)
        .env("RUN_PROJECTIONS", "false")
        .env("WORKERS", "2")
        .env("LOG_LEVEL", "warn")
        .env("FILE_STORE_URL", store.display().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server binary starts");
    let base_a = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..150 {
        if reqwest::get(format!("{base_a}/health")).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "process A answers");

    let size = 40 * 1024 * 1024;
    let mut script = Command::new("node")
        .args([
            node.join("tus.mjs").display().to_string(),
            "resume".into(),
            base_a,
            app.base.clone(),
            token.clone(),
            size.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = script.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let half = tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await
        .expect("half the upload in time");
    assert_eq!(half.as_deref(), Some("HALF"));
    a.kill().expect("process A is killed");
    a.wait().unwrap();
    let last = tokio::time::timeout(Duration::from_secs(90), lines.recv())
        .await
        .expect("the resumed upload in time");
    let status = tokio::task::spawn_blocking(move || script.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let last = last.unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&status.stderr)));
    let result: Value = serde_json::from_str(&last).unwrap();
    assert!(
        result["resumedAt"].as_i64().unwrap() > 0,
        "what A stored before it died counts: {result}"
    );
    let id = result["fileId"].as_str().expect("X-File-Id");
    let (status, file) = send(client.get(app.url(&format!("/api/v1/files/{id}")))).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["current"]["size"], size);
    assert_eq!(file["current"]["sha256"], sha256_hex(&pattern(size)));
    app.handle.stop(false).await;
}

// ---- retention ----

#[actix_web::test]
async fn the_sweep_deletes_content_no_live_version_names_after_retention() {
    let (app, dir) = flux_app(|c| {
        c.file_retention_days = 0;
        c.file_sweep_interval_secs = 1;
        c.file_sweep_grace_secs = 2;
    })
    .await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    let (_, kept) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("keep.txt", "text/plain", b"keep me"),
    )
    .await;
    let (_, gone) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("gone.txt", "text/plain", b"delete me"),
    )
    .await;
    assert_eq!(blobs(&dir).len(), 2);
    let gone_id = gone["id"].as_str().unwrap();
    let (status, _) = send(client.delete(app.url(&format!("/api/v1/files/{gone_id}")))).await;
    assert_eq!(status, 200);
    let mut left = blobs(&dir).len();
    for _ in 0..100 {
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = blobs(&dir).len();
    }
    assert_eq!(left, 1, "the deleted file's content was swept");
    let kept_id = kept["id"].as_str().unwrap();
    let text = client
        .get(app.url(&format!("/api/v1/files/{kept_id}/content")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "keep me");
    app.handle.stop(false).await;
}

// ---- S3 ----

/// A moto_server on a free loopback port, stopped when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Moto {
    let bin = std::env::var("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-moto/bin/moto_server")
        });
    assert!(
        bin.exists(),
        "moto_server is not installed: scripts/test installs it into .venv-moto (or set MOTO_SERVER)"
    );
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let endpoint = format!("http://127.0.0.1:{port}");
    let moto = Moto { child, endpoint };
    for _ in 0..150 {
        if reqwest::get(format!("{}/", moto.endpoint)).await.is_ok() {
            return moto;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not answer");
}

#[actix_web::test]
async fn files_are_stored_in_an_s3_compatible_service() {
    let moto = start_moto().await;
    // A bucket, created the way any S3 client does (moto accepts any credentials).
    let res = reqwest::Client::new()
        .put(format!("{}/studio-files", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    let endpoint = moto.endpoint.clone();
    let app = spawn_app_with(move |c| {
        c.file_store_url = "s3://studio-files/tenant-a".into();
        c.file_store_endpoint = Some(endpoint);
        c.file_retention_days = 0;
        c.file_sweep_interval_secs = 1;
        c.file_sweep_grace_secs = 2;
    })
    .await;
    enable(&app, &app.tenant).await;
    let token = app.tenant.access_token.clone();
    let client = flux(&token);
    // Over one part (8 MiB), so the multipart path of S3 is taken.
    let content = pattern(9 * 1024 * 1024 + 5);
    let (status, body) = curl_upload(
        &app.base,
        "/api/v1/files",
        &token,
        &[],
        ("big.bin", "application/octet-stream", &content),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let url = app.url(&format!("/api/v1/files/{id}/content"));
    let got = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), content.len());
    assert_eq!(sha256_hex(&got), sha256_hex(&content));
    let res = client
        .get(&url)
        .header("Range", "bytes=8388600-8388615")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        &content[8_388_600..8_388_616]
    );

    // The object is in the bucket under its content key, and nothing under tmp/.
    let sha = sha256_hex(&content);
    let listing = reqwest::get(format!(
        "{}/studio-files?list-type=2&prefix=tenant-a/",
        moto.endpoint
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        listing.contains(&format!("tenant-a/blobs/{}/{sha}", &sha[..2])),
        "{listing}"
    );
    assert!(!listing.contains("tenant-a/tmp/"), "{listing}");

    // tus through S3 as well.
    let tus = |r: reqwest::RequestBuilder| r.header("Tus-Resumable", "1.0.0");
    let res = tus(client.post(app.url("/api/v1/uploads")))
        .header("Upload-Length", "6")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let upload = app.url(res.headers()["location"].to_str().unwrap());
    let res = tus(client.patch(&upload))
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body("s3 ok!")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let small = res.headers()["x-file-id"].to_str().unwrap().to_owned();
    let text = client
        .get(app.url(&format!("/api/v1/files/{small}/content")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "s3 ok!");

    // Deleted and swept: gone from the bucket.
    let (status, _) = send(client.delete(app.url(&format!("/api/v1/files/{id}")))).await;
    assert_eq!(status, 200);
    let key = format!("tenant-a/blobs/{}/{sha}", &sha[..2]);
    let mut present = true;
    for _ in 0..100 {
        let listing = reqwest::get(format!(
            "{}/studio-files?list-type=2&prefix=tenant-a/blobs/",
            moto.endpoint
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        present = listing.contains(&key);
        if !present {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!present, "the swept content left the bucket");
    app.handle.stop(false).await;
}

// ---- message attachments and live announcements ----

async fn channel(app: &TestApp, client: &reqwest::Client) -> String {
    let (status, body) = send(
        client
            .post(app.url("/api/v1/channels"))
            .json(&json!({ "name": "studio" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The messages of a channel as `client` reads them through `base`, once the read model
/// holds `position`.
async fn messages(client: &reqwest::Client, base: &str, channel: &str, position: i64) -> Value {
    let (status, body) = send(client.get(format!(
        "{base}/api/v1/channels/{channel}/messages?min_position={position}"
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    body["items"].clone()
}

#[actix_web::test]
async fn an_attachment_naming_a_file_shows_it_only_to_readers_who_may_read_the_file_now() {
    let (app, dir) = flux_app(|_| {}).await;
    let d = dir.display().to_string();
    let other = spawn_second_app_with(&app, move |c| c.file_store_url = d).await;
    let admin_token = app.tenant.access_token.clone();
    let admin = flux(&admin_token);
    let project = project(&app, &admin).await;
    let (status, body) = curl_upload(
        &app.base,
        &format!("/api/v1/projects/{project}/files"),
        &admin_token,
        &[],
        ("plan.pdf", "application/pdf", b"%PDF-1.4 plan"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let file = body["id"].as_str().unwrap().to_owned();
    let channel = channel(&app, &admin).await;
    let member = add_member(&app, "member").await;
    let member_client = flux(&member.access_token);

    // A member outside the project may not attach the file (nor a file that does not
    // exist): 422, and nothing is recorded.
    for (id, base) in [
        (file.clone(), &app.base),
        (Uuid::now_v7().to_string(), &other.base),
    ] {
        let (status, body) = send(
            member_client
                .post(format!("{base}/api/v1/channels/{channel}/messages"))
                .json(&json!({ "text": "look", "attachments": [{ "file_id": id }] })),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains("attachments.file_id"), "{body}");
    }
    // The admin attaches it: the answer shows the file as it is.
    let (status, sent) = send(
        admin
            .post(app.url(&format!("/api/v1/channels/{channel}/messages")))
            .json(&json!({ "text": "the plan", "attachments": [
                { "file_id": file },
                { "name": "ref.png", "size": 3, "content_type": "image/png", "url": "https://example.org/ref.png" }
            ] })),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let shown = &sent["message"]["attachments"];
    assert_eq!(shown[0]["name"], "plan.pdf", "{sent}");
    assert_eq!(shown[0]["content_type"], "application/pdf");
    assert_eq!(shown[0]["size"], 13);
    assert_eq!(shown[0]["url"], format!("/api/v1/files/{file}/content"));
    assert_eq!(shown[0]["unavailable"], false);
    assert_eq!(shown[1]["url"], "https://example.org/ref.png");
    let position = sent["position"].as_i64().unwrap();

    // Read through the other process: the member sees the id only, the admin the file.
    let seen = messages(&member_client, &other.base, &channel, position).await;
    assert_eq!(
        seen.as_array().unwrap().len(),
        1,
        "the refused ones were not recorded"
    );
    assert_eq!(
        seen[0]["attachments"][0],
        json!({ "file_id": file, "unavailable": true })
    );
    assert_eq!(seen[0]["attachments"][1]["name"], "ref.png");
    let seen = messages(&admin, &other.base, &channel, position).await;
    assert_eq!(seen[0]["attachments"][0]["name"], "plan.pdf", "{seen}");

    // A grant shows it to the member at once, in both processes; its revocation hides it.
    let (status, body) = send(
        admin
            .post(app.url(&format!("/api/v1/files/{file}/permissions")))
            .json(&json!({ "user_id": member.user_id, "access": "view" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for base in [&app.base, &other.base] {
        let seen = messages(&member_client, base, &channel, position).await;
        assert_eq!(seen[0]["attachments"][0]["name"], "plan.pdf", "{seen}");
    }
    // The file renamed: readers see its name now.
    let (status, body) = send(
        admin
            .patch(app.url(&format!("/api/v1/files/{file}")))
            .json(&json!({ "name": "plan-v2.pdf" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = messages(&member_client, &other.base, &channel, position).await;
    assert_eq!(seen[0]["attachments"][0]["name"], "plan-v2.pdf", "{seen}");
    let (status, body) = send(admin.delete(app.url(&format!(
        "/api/v1/files/{file}/permissions/{}",
        member.user_id
    ))))
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = messages(&member_client, &other.base, &channel, position).await;
    assert_eq!(
        seen[0]["attachments"][0],
        json!({ "file_id": file, "unavailable": true })
    );
    // A deleted file is unavailable to everyone.
    let (status, body) = send(admin.delete(app.url(&format!("/api/v1/files/{file}")))).await;
    assert_eq!(status, 200, "{body}");
    let seen = messages(&admin, &other.base, &channel, position).await;
    assert_eq!(seen[0]["attachments"][0]["unavailable"], true, "{seen}");
    other.handle.stop(false).await;
    app.handle.stop(false).await;
}

/// Starts `tests/socketio/files.mjs` for `token` in `channel` on `base`; answers its lines.
fn socket_client(
    base: &str,
    token: &str,
    channel: &str,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    std::process::Child,
) {
    use std::io::BufRead;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg(dir.join("files.mjs"))
        .args([base, token, channel])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (rx, child)
}

/// The next line the socket client printed (at most 30 s).
async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the socket client answers in time")
        .expect("the socket client printed a line");
    serde_json::from_str(&line).unwrap_or(Value::String(line))
}

#[actix_web::test]
async fn sockets_on_another_process_announce_files_to_those_who_may_read_them() {
    let (app, dir) = flux_app(|_| {}).await;
    let d = dir.display().to_string();
    let other = spawn_second_app_with(&app, move |c| c.file_store_url = d).await;
    let admin_token = app.tenant.access_token.clone();
    let admin = flux(&admin_token);
    let project = project(&app, &admin).await;
    let channel = channel(&app, &admin).await;
    let member = add_member(&app, "member").await;
    // Both listen on the other process; every change goes through the first.
    let (mut admin_rx, mut admin_node) = socket_client(&other.base, &admin_token, &channel);
    let (mut member_rx, mut member_node) =
        socket_client(&other.base, &member.access_token, &channel);
    assert_eq!(next_line(&mut admin_rx).await, "ready");
    assert_eq!(next_line(&mut member_rx).await, "ready");

    // Uploaded into the project: the admin hears of it, the member (outside it) not.
    let (status, body) = curl_upload(
        &app.base,
        &format!("/api/v1/projects/{project}/files"),
        &admin_token,
        &[],
        ("cover.png", "image/png", b"not really a png"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let file = body["id"].as_str().unwrap().to_owned();
    let heard = next_line(&mut admin_rx).await;
    assert_eq!(heard["event"], "file:uploaded", "{heard}");
    assert_eq!(heard["data"]["file_id"], file.as_str());
    assert_eq!(heard["data"]["name"], "cover.png");
    assert_eq!(heard["data"]["project_id"], project.as_str());

    // A message naming it: each receives it as they may see it.
    let (status, sent) = send(
        admin
            .post(app.url(&format!("/api/v1/channels/{channel}/messages")))
            .json(&json!({ "text": "cover", "attachments": [{ "file_id": file }] })),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let heard = next_line(&mut admin_rx).await;
    assert_eq!(heard["event"], "message:new", "{heard}");
    assert_eq!(
        heard["data"]["attachments"][0]["name"], "cover.png",
        "{heard}"
    );
    let heard = next_line(&mut member_rx).await;
    assert_eq!(heard["event"], "message:new", "{heard}");
    assert_eq!(
        heard["data"]["attachments"][0],
        json!({ "file_id": file, "unavailable": true }),
        "{heard}"
    );

    // Granted, the member hears of the rename too.
    let (status, body) = send(
        admin
            .post(app.url(&format!("/api/v1/files/{file}/permissions")))
            .json(&json!({ "user_id": member.user_id, "access": "view" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        admin
            .patch(app.url(&format!("/api/v1/files/{file}")))
            .json(&json!({ "name": "cover-final.png" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for rx in [&mut admin_rx, &mut member_rx] {
        let heard = next_line(rx).await;
        assert_eq!(heard["event"], "file:updated", "{heard}");
        assert_eq!(heard["data"]["change"], "renamed");
        assert_eq!(heard["data"]["name"], "cover-final.png");
    }

    // Revoked: a new version and the deletion reach the admin only.
    let (status, body) = send(admin.delete(app.url(&format!(
        "/api/v1/files/{file}/permissions/{}",
        member.user_id
    ))))
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl_upload(
        &app.base,
        "/api/v1/files",
        &admin_token,
        &[("file_id", file.as_str())],
        ("cover-final.png", "image/png", b"the second cover"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let heard = next_line(&mut admin_rx).await;
    assert_eq!(heard["event"], "file:updated", "{heard}");
    assert_eq!(heard["data"]["change"], "version");
    assert_eq!(heard["data"]["version"], 2);
    let (status, body) = send(admin.delete(app.url(&format!("/api/v1/files/{file}")))).await;
    assert_eq!(status, 200, "{body}");
    let heard = next_line(&mut admin_rx).await;
    assert_eq!(heard["event"], "file:deleted", "{heard}");
    assert_eq!(heard["data"]["file_id"], file.as_str());

    // The member's own upload (outside projects: theirs) comes next on the same feed, so
    // nothing came in between for them.
    let (status, body) = curl_upload(
        &app.base,
        "/api/v1/files",
        &member.access_token,
        &[],
        ("notes.txt", "text/plain", b"mine"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mine = body["id"].as_str().unwrap().to_owned();
    let heard = next_line(&mut member_rx).await;
    assert_eq!(heard["event"], "file:uploaded", "{heard}");
    assert_eq!(heard["data"]["file_id"], mine.as_str(), "{heard}");
    // The admin reads every file of the organization.
    let heard = next_line(&mut admin_rx).await;
    assert_eq!(heard["data"]["file_id"], mine.as_str(), "{heard}");
    for child in [&mut admin_node, &mut member_node] {
        let _ = child.kill();
        let _ = child.wait();
    }
    other.handle.stop(false).await;
    app.handle.stop(false).await;
}

#[actix_web::test]
async fn a_plain_curl_form_upload_without_an_idempotency_key_works_on_fluxstudios_path() {
    let (app, _dir) = flux_app(|_| {}).await;
    let token = app.tenant.access_token.clone();
    let dir = std::env::temp_dir().join(format!("ub-plain-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("moodboard.png");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\n not much of a picture").unwrap();
    // As a browser's FormData or `curl -F file=@…` sends it: no type or name given, no
    // Idempotency-Key. Twice: two files, not one answer replayed.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let args = vec![
            "-sS".to_owned(),
            "--max-time".into(),
            "60".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "-H".into(),
            format!("Authorization: Bearer {token}"),
            "-H".into(),
            "X-Frontend-Source: fluxstudio".into(),
            "-F".into(),
            format!("file=@{}", path.display()),
            app.url("/api/files"),
        ];
        let output = tokio::task::spawn_blocking(move || Command::new("curl").args(args).output())
            .await
            .unwrap()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').expect("curl printed the status");
        assert_eq!(status.trim(), "201", "{body}");
        let body: Value = serde_json::from_str(body).unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    let client = flux(&token);
    let (status, file) = send(client.get(app.url(&format!("/api/files/{}", ids[0])))).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["name"], "moodboard.png", "{file}");
    std::fs::remove_dir_all(dir).ok();
    app.handle.stop(false).await;
}
