//! FluxStudio team messaging, black-box over HTTP: channels, direct conversations, threads,
//! edits, tombstones, reactions, read marks, notifications, and the permission matrix.

use std::time::Duration;

use serde_json::{json, Value};

mod common;

fn flux(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("x-frontend-source", "fluxstudio".parse().unwrap());
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

struct Team {
    app: common::TestApp,
    ann: reqwest::Client,
    bob: reqwest::Client,
    bob_id: String,
    bob_token: String,
    cy: reqwest::Client,
    cy_id: String,
    cy_token: String,
    viewer: reqwest::Client,
}

async fn team() -> Team {
    let app = common::spawn_app().await;
    let res = app
        .client
        .put(app.url(&format!(
            "/api/v1/organizations/{}/frontends",
            app.tenant.organization_id
        )))
        .json(&json!({ "frontend": "fluxstudio", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bob = common::add_member(&app, "member").await;
    let cy = common::add_member(&app, "member").await;
    let viewer = common::add_member(&app, "viewer").await;
    Team {
        ann: flux(&app.tenant.access_token),
        bob: flux(&bob.access_token),
        bob_id: bob.user_id,
        bob_token: bob.access_token,
        cy: flux(&cy.access_token),
        cy_id: cy.user_id,
        cy_token: cy.access_token,
        viewer: flux(&viewer.access_token),
        app,
    }
}

impl Team {
    fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    async fn fresh(&self, client: &reqwest::Client, path: &str) -> (u16, Value) {
        let head = self.app.head().await;
        let sep = if path.contains('?') { '&' } else { '?' };
        call(
            client,
            "GET",
            self.url(&format!("{path}{sep}min_position={head}")),
            None,
        )
        .await
    }
}

#[actix_web::test]
async fn a_conversation_in_a_public_channel_with_a_thread_reactions_edits_and_a_deletion() {
    let t = team().await;
    let (status, created) = call(
        &t.ann,
        "POST",
        t.url("/api/v1/channels"),
        Some(json!({ "name": "general", "topic": "Everything" })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let channel = created["id"].as_str().unwrap().to_owned();

    let mention = format!("Kick-off at ten, <@{}>", t.bob_id);
    let (status, sent) = call(
        &t.ann,
        "POST",
        t.url(&format!("/api/v1/channels/{channel}/messages")),
        Some(json!({ "text": mention, "client_message_id": "ann-1" })),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let root = sent["id"].as_str().unwrap().to_owned();
    assert_eq!(sent["message"]["mentions"], json!([t.bob_id]));
    // The same client message id again: the same message, not a second one.
    let (status, again) = call(
        &t.ann,
        "POST",
        t.url(&format!("/api/v1/channels/{channel}/messages")),
        Some(json!({ "text": mention, "client_message_id": "ann-1" })),
    )
    .await;
    assert_eq!((status, &again["id"]), (200, &sent["id"]));

    // Bob replies in the thread through the frontend's `/messages` path and reacts.
    let (status, reply) = call(
        &t.bob,
        "POST",
        t.url("/api/v1/messages"),
        Some(json!({ "channelId": channel, "content": "On it", "parentId": root })),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    let reply_id = reply["id"].as_str().unwrap().to_owned();
    for client in [&t.bob, &t.cy, &t.cy] {
        let (status, _) = call(
            client,
            "PUT",
            t.url(&format!("/api/v1/messages/{root}/reactions/%F0%9F%91%8D")),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = call(
        &t.ann,
        "PATCH",
        t.url(&format!("/api/v1/messages/{root}")),
        Some(json!({ "text": "Kick-off at eleven" })),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &t.bob,
        "PATCH",
        t.url(&format!("/api/v1/messages/{root}")),
        Some(json!({ "text": "not mine to edit" })),
    )
    .await;
    assert_eq!(status, 403, "only the author edits");

    let (_, page) = t
        .fresh(&t.cy, &format!("/api/v1/channels/{channel}/messages"))
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["text"], "Kick-off at eleven");
    assert!(items[0]["edited_at"].is_string());
    assert_eq!(items[0]["reply_count"], 1);
    assert_eq!(
        items[0]["reactions"],
        json!([{ "emoji": "👍", "count": 2, "me": true }]),
        "once per user"
    );
    assert_eq!(items[1]["parent_id"], root.as_str());
    let (_, thread) = t
        .fresh(
            &t.cy,
            &format!("/api/v1/messages?channel_id={channel}&thread={root}"),
        )
        .await;
    assert_eq!(thread["items"].as_array().unwrap().len(), 1);

    // Bob was mentioned; Ann gets a notification for the reply in her thread.
    let (_, bobs) = t.fresh(&t.bob, "/api/v1/shared/notifications").await;
    assert_eq!(bobs["items"][0]["kind"], "mention");
    assert_eq!(bobs["unread_count"], 1);
    let (_, anns) = t.fresh(&t.ann, "/api/v1/shared/notifications").await;
    assert_eq!(anns["items"][0]["kind"], "thread_reply");
    let id = bobs["items"][0]["id"].as_str().unwrap();
    let (status, _) = call(
        &t.bob,
        "POST",
        t.url(&format!("/api/v1/shared/notifications/{id}/read")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, bobs) = t
        .fresh(&t.bob, "/api/v1/shared/notifications?unread=true")
        .await;
    assert_eq!(
        (
            bobs["unread_count"].as_i64(),
            bobs["items"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );

    // The frontend's own paths, without `/v1`, serve the same.
    let (status, aliased) = t
        .fresh(&t.cy, &format!("/api/messages?channelId={channel}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(aliased["items"].as_array().unwrap().len(), 2);
    let (status, _) = call(
        &t.viewer,
        "POST",
        t.url("/api/messages"),
        Some(json!({ "channelId": channel, "content": "viewers cannot" })),
    )
    .await;
    assert_eq!(status, 403);

    // Unread counts follow read marks.
    let (_, channels) = t.fresh(&t.cy, "/api/v1/channels").await;
    assert_eq!(channels["items"][0]["unread_count"], 2);
    let (status, _) = call(
        &t.cy,
        "POST",
        t.url(&format!("/api/v1/channels/{channel}/read")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, channels) = t.fresh(&t.cy, "/api/v1/channels").await;
    assert_eq!(channels["items"][0]["unread_count"], 0);

    // Bob deletes his reply: the tombstone keeps its place without text.
    let (status, _) = call(
        &t.bob,
        "DELETE",
        t.url(&format!("/api/v1/messages/{reply_id}")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, page) = t
        .fresh(&t.ann, &format!("/api/v1/channels/{channel}/messages"))
        .await;
    assert_eq!(page["items"][1]["deleted"], true);
    assert_eq!(page["items"][1]["text"], Value::Null);
    assert_eq!(page["items"][0]["reply_count"], 0);
    let stored: Vec<Value> = sqlx::query_scalar(
        "SELECT data FROM events WHERE stream_id = $1 AND event_type = 'MessageDeleted'",
    )
    .bind(format!("channel-{channel}"))
    .fetch_all(&t.app.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].get("text").is_none(),
        "the tombstone keeps no text"
    );
}

#[actix_web::test]
async fn the_permission_matrix_private_channels_direct_messages_authors_admins_and_viewers() {
    let t = team().await;
    // A private channel of Ann and Bob.
    let (_, private) = call(
        &t.ann,
        "POST",
        t.url("/api/v1/channels"),
        Some(json!({ "name": "secret", "kind": "private", "members": [t.bob_id] })),
    )
    .await;
    let private = private["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &t.bob,
        "POST",
        t.url(&format!("/api/v1/channels/{private}/messages")),
        Some(json!({ "text": "members only" })),
    )
    .await;
    assert_eq!(status, 201);
    for path in [
        format!("/api/v1/channels/{private}"),
        format!("/api/v1/channels/{private}/messages"),
    ] {
        let (status, _) = t.fresh(&t.cy, &path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = call(
        &t.cy,
        "POST",
        t.url(&format!("/api/v1/channels/{private}/messages")),
        Some(json!({ "text": "let me in" })),
    )
    .await;
    assert_eq!(status, 404);
    let (_, listed) = t.fresh(&t.cy, "/api/v1/channels").await;
    assert!(!listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == private.as_str()));
    // Mentioning someone who cannot read the channel is refused.
    let (status, refused) = call(
        &t.bob,
        "POST",
        t.url(&format!("/api/v1/channels/{private}/messages")),
        Some(json!({ "text": "hey", "mentions": [t.cy_id] })),
    )
    .await;
    assert_eq!(status, 422, "{refused}");

    // A direct conversation: the same pair gets the same one; it notifies the other.
    let (status, dm) = call(
        &t.ann,
        "POST",
        t.url("/api/v1/channels/direct"),
        Some(json!({ "user_ids": [t.bob_id] })),
    )
    .await;
    assert_eq!(status, 201, "{dm}");
    let app_user = t.app.tenant.user_id.clone();
    let (status, same) = call(
        &t.bob,
        "POST",
        t.url("/api/v1/channels/direct"),
        Some(json!({ "user_ids": [app_user] })),
    )
    .await;
    assert_eq!((status, &same["id"]), (200, &dm["id"]));
    let dm = dm["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &t.ann,
        "POST",
        t.url(&format!("/api/v1/channels/{dm}/messages")),
        Some(json!({ "text": "just us" })),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = t
        .fresh(&t.cy, &format!("/api/v1/channels/{dm}/messages"))
        .await;
    assert_eq!(status, 404);
    let (_, bobs) = t.fresh(&t.bob, "/api/v1/shared/notifications").await;
    assert_eq!(bobs["items"][0]["kind"], "direct_message");

    // Public channel: the viewer reads but cannot post; an admin deletes another's message.
    let (_, general) = call(
        &t.ann,
        "POST",
        t.url("/api/v1/channels"),
        Some(json!({ "name": "general" })),
    )
    .await;
    let general = general["id"].as_str().unwrap().to_owned();
    let (_, cys) = call(
        &t.cy,
        "POST",
        t.url(&format!("/api/v1/channels/{general}/messages")),
        Some(json!({ "text": "hello all" })),
    )
    .await;
    let (status, _) = t
        .fresh(&t.viewer, &format!("/api/v1/channels/{general}/messages"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &t.viewer,
        "POST",
        t.url(&format!("/api/v1/channels/{general}/messages")),
        Some(json!({ "text": "can I?" })),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let cys = cys["id"].as_str().unwrap();
    let (status, _) = call(
        &t.bob,
        "DELETE",
        t.url(&format!("/api/v1/messages/{cys}")),
        None,
    )
    .await;
    assert_eq!(status, 403, "not the author, not an admin");
    let (status, _) = call(
        &t.ann,
        "DELETE",
        t.url(&format!("/api/v1/messages/{cys}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "an organization admin may delete");

    // Another organization sees none of it.
    let other = common::create_tenant(&t.app.anonymous, &t.app.base, "elsewhere").await;
    let res = common::client_for(&other)
        .put(t.url(&format!(
            "/api/v1/organizations/{}/frontends",
            other.organization_id
        )))
        .json(&json!({ "frontend": "fluxstudio", "enabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let outsider = flux(&other.access_token);
    let (status, _) = t
        .fresh(&outsider, &format!("/api/v1/channels/{general}"))
        .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &outsider,
        "POST",
        t.url(&format!("/api/v1/channels/{general}/messages")),
        Some(json!({ "text": "hi" })),
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn the_real_socket_io_client_on_messaging_across_two_processes() {
    let t = team().await;
    let other = common::spawn_second_app(&t.app).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run `npm ci` in tests/socketio (scripts/test does)"
    );
    let bob_token = t.bob_token.clone();
    let args = [
        dir.join("messaging.mjs").display().to_string(),
        t.app.base.clone(),
        other.base.clone(),
        t.app.tenant.access_token.clone(),
        bob_token,
        t.bob_id.clone(),
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
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    let ann = t.app.tenant.user_id.as_str();
    assert_eq!(r["bob_joined"]["ok"], true);
    assert_eq!(r["ann_joined"]["ok"], true);
    assert_eq!(
        r["online"]["user_id"], ann,
        "Ann came online on the other process"
    );
    let users = r["presence"]["users"].as_array().unwrap();
    assert!(
        users.contains(&json!(ann)) && users.contains(&json!(t.bob_id)),
        "{r}"
    );
    assert_eq!(r["typed"]["user_id"], ann);
    assert_eq!(r["typed"]["channel_id"], r["channel"]);
    assert_eq!(r["throttled"]["throttled"], true);
    assert_eq!(r["sent"]["ok"], true);
    assert_eq!(r["received"]["message_id"], r["sent"]["message"]["id"]);
    assert_eq!(r["received"]["text"], r["sent"]["message"]["text"]);
    assert_eq!(r["notification"]["kind"], "mention");
    assert_eq!(r["resent"]["message"]["id"], r["sent"]["message"]["id"]);
    assert_eq!(r["resent"]["message"]["replayed"], true);
    assert_eq!(r["reacted"]["ok"], true);
    assert_eq!(r["reaction"]["emoji"], "🚀");
    assert_eq!(
        r["foreign"]["error"]["status"], 403,
        "only the author edits"
    );
    assert_eq!(r["bad"]["error"]["status"], 422);
    for malformed in [
        "not_an_object",
        "missing_fields",
        "wrong_types",
        "no_argument",
        "two_arguments",
    ] {
        let ack = &r[malformed];
        assert_eq!(ack["ok"], false, "{malformed}: {ack}");
        assert_eq!(
            ack["error"]["code"], "validation_failed",
            "{malformed}: {ack}"
        );
        assert_eq!(ack["error"]["status"], 422, "{malformed}: {ack}");
        assert!(
            ack["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{malformed}: {ack}"
        );
    }
    assert_eq!(r["not_an_object"]["error"]["details"]["field"], "argument");
    assert_eq!(r["no_argument"]["error"]["details"]["field"], "argument");
    assert_eq!(r["unknown_event"]["ok"], false, "{r}");
    assert_eq!(r["unknown_event"]["error"]["status"], 400, "{r}");
    assert_eq!(r["typing_stopped"]["user_id"], ann, "leaving ends typing");
    assert_eq!(r["typing_stopped"]["channel_id"], r["channel"]);
    assert_eq!(r["gone"]["user_id"], ann);
    // One message was stored, however often it was sent.
    let posted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'MessagePosted'",
    )
    .bind(format!("channel-{}", r["channel"].as_str().unwrap()))
    .fetch_one(&t.app.pool)
    .await
    .unwrap();
    assert_eq!(posted, 1);
}

#[actix_web::test]
async fn a_dropped_socket_io_connection_is_recovered_with_the_messages_sent_meanwhile() {
    let t = team().await;
    let (_, created) = call(
        &t.ann,
        "POST",
        t.url("/api/v1/channels"),
        Some(json!({ "name": "recoverable" })),
    )
    .await;
    let channel = created["id"].as_str().unwrap().to_owned();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    let args = [
        dir.join("recovery.mjs").display().to_string(),
        t.app.base.clone(),
        t.app.tenant.access_token.clone(),
        t.bob_token.clone(),
        t.cy_token.clone(),
        channel,
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
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["same_pid"], true);
    assert_eq!(
        r["texts"],
        json!(["before the drop", "missed one", "missed two"]),
        "nothing lost, nothing doubled"
    );
    assert_eq!(r["cy_got_bobs_pid"], false, "a pid is bound to its user");
}

#[actix_web::test]
async fn the_auth_namespace_streams_live_server_metrics_to_the_dashboard() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let t = team().await;
    // Some traffic for the window (client errors count as requests, not server errors).
    for _ in 0..5 {
        t.fresh(&t.ann, "/api/v1/channels").await;
    }
    let url = t
        .url("/socket.io/?EIO=4&transport=websocket")
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("a frame in time")
        .unwrap()
        .unwrap();
    assert!(open.to_text().unwrap().starts_with('0'), "engine.io open");
    let connect = format!("40/auth,{}", json!({ "token": t.app.tenant.access_token }));
    ws.send(Message::Text(connect)).await.unwrap();
    let mut metrics = None;
    for _ in 0..10 {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        if let Some(rest) = text.strip_prefix("42/auth,") {
            let args: Value = serde_json::from_str(rest).unwrap();
            assert_eq!(args[0], "metrics:update");
            metrics = Some(args[1].clone());
            break;
        }
        if text.as_str() == "2" {
            ws.send(Message::Text("3".into())).await.unwrap();
        }
    }
    let m = metrics.expect("metrics:update arrived");
    assert!(m["requests_per_second"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["p95_latency_ms"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(m["server_errors"], 0);
    assert!(m["open_sockets"].as_u64().unwrap() >= 1);
    assert!(m["projection_lag"]["messaging"].is_i64(), "{m}");
}
