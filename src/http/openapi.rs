//! The API contract: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations, served at `/api/v1/openapi.json`, and a docs page at `/api/v1/docs` that is
//! rendered on the server from the same document (it loads nothing, so it works offline).
//!
//! The document is also the route table that [`super::contract`] consults for 405 `Allow`
//! headers and for which routes take JSON bodies; a test holds it against the routes actix
//! actually serves, so a route without documentation fails the build's tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use actix_web::http::Method;
use actix_web::HttpResponse;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::{
    admin, agents, ai, analysis, chat, citypulse, documents, files, fluxstudio, history, identity,
    legacy, messaging, ops, schema, swarm,
};
use crate::gateways::pusher::socket as pusher;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "universal-backend",
        description = "One event-sourced backend for the FlowMind, Swarm, CityPulse, ToolboxAI \
            and FluxStudio frontends.\n\nErrors are always `{\"error\": {\"code\", \"message\", \
            \"details\"}}` with a 4xx/5xx status. Commands answer `{id, version, position}`; \
            queries accept `min_position` to read your own writes.\n\nFor \
            FluxStudio, the paths under `/api/v1/auth`, `/api/v1/users`, \
            `/api/v1/organizations`, `/api/v1/teams` and `/api/v1/projects` are also served \
            without `/v1` (`/api/auth/login`, ...), with the same behaviour and errors.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        ops::health,
        ops::metrics,
        ops::info,
        openapi_json,
        docs,
        websocket,
        socket_io,
        identity::signup,
        identity::login,
        identity::refresh,
        identity::logout,
        identity::me,
        users_me,
        identity::update_me,
        identity::deactivate_me,
        identity::change_password,
        identity::create_org,
        identity::list_orgs,
        identity::get_org,
        identity::rename_org,
        identity::list_members,
        identity::set_member,
        identity::remove_member,
        identity::get_frontends,
        identity::set_frontend,
        citypulse::create_building,
        citypulse::list_buildings,
        citypulse::get_building,
        citypulse::add_sensor,
        citypulse::list_sensors,
        citypulse::decommission_sensor,
        citypulse::post_readings,
        citypulse::set_threshold,
        citypulse::energy,
        citypulse::alerts,
        history::read_stream,
        history::read_log,
        crate::history::routes::get_state,
        crate::history::routes::get_diff,
        crate::history::routes::export_log,
        crate::history::routes::get_catalog,
        admin::list_parked,
        admin::get_parked,
        admin::retry_parked,
        admin::skip_parked,
        admin::list_imports,
        admin::import_id,
        socket_io_polling,
        ai::models,
        ai::providers,
        chat::create_session,
        chat::list_sessions,
        chat::get_session,
        chat::update_session,
        chat::delete_session,
        chat::archive_session,
        chat::post_message,
        chat::list_messages,
        chat::edit_message,
        chat::stream_reply,
        chat::regenerate,
        chat::cancel,
        chat::usage,
        messaging::create_channel,
        messaging::list_channels,
        messaging::open_direct,
        messaging::get_channel,
        messaging::update_channel,
        messaging::archive_channel,
        messaging::add_member,
        messaging::remove_member,
        messaging::post_in_channel,
        messaging::list_in_channel,
        messaging::mark_read,
        messaging::post_message_route,
        messaging::list_messages_route,
        messaging::edit_message_route,
        messaging::delete_message_route,
        messaging::add_reaction,
        messaging::remove_reaction,
        messaging::list_notifications,
        messaging::read_notification,
        messaging::read_all_notifications,
        pusher::connect,
        pusher::auth,
        pusher::events,
        pusher::batch_events,
        pusher::channels,
        pusher::channel,
        pusher::channel_users,
        identity::google,
        identity::update_org,
        fluxstudio::create_team,
        fluxstudio::list_teams,
        fluxstudio::get_team,
        fluxstudio::update_team,
        fluxstudio::add_team_member,
        fluxstudio::change_team_role,
        fluxstudio::remove_team_member,
        fluxstudio::archive_team,
        fluxstudio::create_project,
        fluxstudio::list_projects,
        fluxstudio::get_project,
        fluxstudio::update_project,
        fluxstudio::set_project_status,
        fluxstudio::add_project_member,
        fluxstudio::remove_project_member,
        fluxstudio::add_milestone,
        fluxstudio::complete_milestone,
        fluxstudio::remove_milestone,
        documents::create_document,
        documents::list_documents,
        documents::get_document,
        documents::list_versions,
        documents::restore,
        documents::grant,
        documents::revoke,
        collab_socket,
        collab_socket_v1,
        swarm::create_task,
        swarm::list_tasks,
        swarm::get_task,
        swarm::progress,
        swarm::result,
        swarm::subtasks,
        swarm::cancel_task,
        analysis::start,
        analysis::get_analysis,
        analysis::save_insight,
        analysis::report,
        legacy::list_flags,
        legacy::set_flag,
        legacy::start_analysis,
        legacy::process_updates,
        legacy::process_results,
        legacy::save_insights,
        legacy::get_analysis,
        legacy::openai,
        agents::execute,
        agents::list_executions,
        agents::get_execution,
        agents::list_agents,
        agents::metrics,
        agents::health,
        agents::breakers,
        agents::reset_breaker,
        files::upload_file,
        files::upload_project_file,
        files::list_files,
        files::list_project_files,
        files::get_file,
        files::list_versions,
        files::download,
        files::update_file,
        files::delete_file,
        files::restore_version,
        files::list_permissions,
        files::grant,
        files::revoke,
        files::create_link,
        files::revoke_link,
        files::shared,
        crate::files::tus::options,
        crate::files::tus::create,
        crate::files::tus::head,
        crate::files::tus::patch,
        crate::files::tus::terminate,
    ),
    components(schemas(schema::ErrorBody)),
    security(("bearer" = [])),
    modifiers(&Conventions),
    tags(
        (name = "identity", description = "Accounts, sessions, organizations, members and frontends"),
        (name = "citypulse", description = "Buildings, sensors, readings, thresholds, energy and alerts"),
        (name = "history", description = "The event log, for organization admins (their organization) and operators (every tenant): streams, the log, any entity at any version or time, diffs, the NDJSON export and the catalogue of event types"),
        (name = "ai", description = "FlowMind: chat sessions with streamed AI replies, the models of the configured providers, their circuit breakers, and token usage"),
        (name = "analysis", description = "The analysis service: analyses of documents with AI insights, their progress and Markdown reports"),
        (name = "legacy", description = "Parallel running with the legacy Next.js backend: flagged legacy routes, the proxy, and the flags"),
        (name = "swarm", description = "Quantum and Velocity Swarm: optimization runs and task batches, their progress and results"),
        (name = "agents", description = "ToolboxAI: agent executions (swarm tasks run through the provider layer), the agent registry and metrics, and the provider circuit breakers"),
        (name = "messaging", description = "FluxStudio: channels, direct conversations, messages, threads, reactions, read marks; every frontend's notifications"),
        (name = "fluxstudio", description = "FluxStudio teams (leads and members), projects (team, members, status, milestones) and collaborative documents (Yjs: versions, time travel, restore, grants)"),
        (name = "files", description = "FluxStudio files: uploads (multipart and tus 1.0.0 resumable), versions, downloads with ranges, grants and share links"),
        (name = "live", description = "Live event streams (WebSocket upgrades), and the Pusher Channels gateway and HTTP API"),
        (name = "operations", description = "Health, metrics, service information and this contract"),
    ),
)]
pub struct ApiDoc;

/// What every operation shares, added once here instead of on each handler: the bearer
/// scheme, and the JSON error answers each kind of operation can give.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from signup, login or refresh"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The access token as a query parameter, on event streams (`text/event-stream`) \
                 only, for a browser's `EventSource`, which cannot send `Authorization`",
            ))),
        );
        for item in api.paths.paths.values_mut() {
            for (method, op) in [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PUT, &mut item.put),
                (Method::PATCH, &mut item.patch),
                (Method::DELETE, &mut item.delete),
            ] {
                if let Some(op) = op {
                    add_error_responses(&method, op);
                }
            }
        }
    }
}

fn add_error_responses(method: &Method, op: &mut Operation) {
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
    let has_body = op.request_body.is_some();
    let waits = op.parameters.iter().flatten().any(|p| match p {
        RefOr::T(p) => p.name == "min_position",
        RefOr::Ref(_) => false,
    });
    let mut codes: Vec<(&str, &str)> = vec![
        (
            "400",
            "Malformed request: a bad query parameter, header or JSON body",
        ),
        ("404", "No such resource, or another organization's"),
        ("429", "Rate limited; see `Retry-After`"),
        ("500", "Unexpected failure (details are in the server log)"),
        ("503", "A dependency is unavailable; retry"),
    ];
    if !public {
        codes.push((
            "401",
            "Missing, invalid or expired access token, or an ended session",
        ));
        codes.push((
            "403",
            "Not allowed: role, frontend access (`X-Frontend-Source`) or password",
        ));
    }
    if has_body {
        codes.push(("413", "The body is over 1 MiB"));
        codes.push(("415", "The body is not `application/json`"));
        codes.push((
            "422",
            "Well-formed input that breaks a rule; `details.field` names it",
        ));
    }
    if method != Method::GET {
        codes.push((
            "409",
            "Conflict: a stale `If-Match`, a duplicate, or a key in use",
        ));
        codes.push(("422", "Input that breaks a rule; `details.field` names it"));
    }
    if waits {
        codes.push((
            "504",
            "The read model did not reach `min_position` within 5 s",
        ));
    }
    for (code, description) in codes {
        op.responses
            .responses
            .entry(code.to_owned())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build(),
    )
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_json()
            .expect("the OpenAPI document serializes")
    })
}

/// One documented path: its segments (`None` for a `{parameter}`) and what each method takes.
pub struct Route {
    segments: Vec<Option<String>>,
    /// Documented methods, each with whether it takes a JSON body.
    pub methods: Vec<(Method, bool)>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        parts.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(parts)
                .all(|(want, got)| match want {
                    Some(literal) => literal == got,
                    None => !got.is_empty(),
                })
    }
}

/// The documented routes, as the contract middleware matches requests against them.
pub fn routes() -> &'static [Route] {
    static ROUTES: OnceLock<Vec<Route>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        document()
            .paths
            .paths
            .iter()
            .map(|(path, item)| Route {
                segments: path
                    .split('/')
                    .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_owned()))
                    .collect(),
                methods: operations(item)
                    .into_iter()
                    .map(|(m, op)| (m, takes_json(op)))
                    .collect(),
            })
            .collect()
    })
}

/// The route groups served twice: at `/api/v1/<group>` and at `/api/<group>`, the paths
/// FluxStudio's frontend calls. The document names only the `/api/v1` paths; an alias has
/// the same operations, so the contract middleware treats it as its `/api/v1` path.
pub const ALIASED: &[&str] = &[
    "auth",
    "users",
    "organizations",
    "teams",
    "projects",
    "channels",
    "messages",
    "files",
    "uploads",
];

/// The documented path an aliased path stands for (`/api/teams/1` → `/api/v1/teams/1`), or
/// the path itself.
pub fn canonical(path: &str) -> std::borrow::Cow<'_, str> {
    let aliased = path.strip_prefix("/api/").is_some_and(|rest| {
        let group = rest.split('/').next().unwrap_or("");
        ALIASED.contains(&group)
    });
    if aliased {
        std::borrow::Cow::Owned(format!("/api/v1/{}", &path["/api/".len()..]))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// The documented route a request path falls under, if any. Literal segments win over
/// parameters, as in actix's router for this API's paths. Aliases count as their `/api/v1`
/// path (see [`ALIASED`]).
pub fn route_for(path: &str) -> Option<&'static Route> {
    let path = canonical(path);
    let path = path.as_ref();
    routes()
        .iter()
        .filter(|r| r.matches(path))
        .max_by_key(|r| r.segments.iter().filter(|s| s.is_some()).count())
}

/// Whether an operation takes JSON bodies only (one that also takes a form, as
/// `/pusher/auth`, is not held to JSON).
fn takes_json(op: &Operation) -> bool {
    op.request_body.as_ref().is_some_and(|b| match b {
        RefOr::T(b) => !b.content.is_empty() && b.content.keys().all(|c| c == "application/json"),
        RefOr::Ref(_) => false,
    })
}

/// The operations of a path item, by method.
pub fn operations(item: &utoipa::openapi::PathItem) -> Vec<(Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::POST, &item.post),
        (Method::PUT, &item.put),
        (Method::PATCH, &item.patch),
        (Method::DELETE, &item.delete),
        (Method::HEAD, &item.head),
        (Method::OPTIONS, &item.options),
        (Method::TRACE, &item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

/// `GET /api/v1/openapi.json`: this API's contract.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json())
}

/// `GET /api/v1/docs`: the contract for people, rendered here from the same document.
#[utoipa::path(
    get,
    path = "/api/v1/docs",
    tag = "operations",
    security(()),
    responses((status = 200, description = "A self-contained HTML page", content_type = "text/html", body = String)),
)]
pub async fn docs() -> HttpResponse {
    static PAGE: OnceLock<String> = OnceLock::new();
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE.get_or_init(|| render_docs(document())).as_str())
}

/// The caller's profile, organizations, role and frontends (the same as `GET /api/v1/auth/me`,
/// whose handler serves both paths).
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "identity",
    responses((status = 200, description = "The caller; `ETag` is the account version", body = schema::Me)),
)]
#[allow(dead_code)]
async fn users_me() {}

/// Live events over a WebSocket (see the README for the message protocol).
///
/// Authenticate with `?token=<access token>` or a first message
/// `{"type":"auth","token":…}`; then subscribe to a stream, a category or the whole log of
/// your organization. Answers 101 Switching Protocols on a WebSocket handshake.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "live",
    security(()),
    params(("token" = Option<String>, Query, description = "An access token (or send it in the first message)")),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "Not a WebSocket handshake", body = schema::ErrorBody),
        (status = 404, description = "WebSockets are disabled on this server", body = schema::ErrorBody),
        (status = 503, description = "The server holds its maximum of connections", body = schema::ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn websocket() {}

/// FluxStudio's collaborative documents over the y-websocket protocol (Yjs), room name = a
/// document id: `new WebsocketProvider(url + '/collab', documentId, ydoc, { params: { token } })`.
///
/// Binary frames of y-protocols messages (sync, awareness, auth). A caller who may not open
/// the document gets `[2,0,"permission denied"]` and a close; see docs/fluxstudio.md.
#[utoipa::path(
    get,
    path = "/collab/{document}",
    tag = "live",
    security(()),
    params(
        ("document" = Uuid, Path, description = "The document (the y-websocket room name)"),
        ("token" = Option<String>, Query, description = "An access token (or a first text frame `{\"type\":\"auth\",\"token\"}`)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the y-websocket connection is open"),
        (status = 400, description = "Not a WebSocket handshake", body = schema::ErrorBody),
        (status = 404, description = "Not a document id, or WebSockets are disabled", body = schema::ErrorBody),
        (status = 503, description = "The server holds its maximum of connections", body = schema::ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn collab_socket() {}

/// The collaborative document socket under `/api/v1` (the same as `/collab/{document}`).
#[utoipa::path(
    get,
    path = "/api/v1/collab/{document}",
    tag = "live",
    security(()),
    params(
        ("document" = Uuid, Path, description = "The document (the y-websocket room name)"),
        ("token" = Option<String>, Query, description = "An access token (or a first text frame `{\"type\":\"auth\",\"token\"}`)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the y-websocket connection is open"),
        (status = 400, description = "Not a WebSocket handshake", body = schema::ErrorBody),
        (status = 404, description = "Not a document id, or WebSockets are disabled", body = schema::ErrorBody),
        (status = 503, description = "The server holds its maximum of connections", body = schema::ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn collab_socket_v1() {}

/// The Socket.IO gateway (Engine.IO v4, namespace `/citypulse`).
///
/// Existing frontends connect with `io(API_URL + '/citypulse', { auth: { token } })`.
#[utoipa::path(
    get,
    path = "/socket.io/",
    tag = "live",
    security(()),
    params(
        ("EIO" = String, Query, description = "Engine.IO protocol version: `4`"),
        ("transport" = String, Query, description = "`websocket` (or `polling`)"),
        ("sid" = Option<String>, Query, description = "Engine.IO session id, for a session that exists"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 200, description = "An Engine.IO long-polling payload", content_type = "text/plain", body = String),
        (status = 400, description = "Not a handshake this gateway supports", body = schema::ErrorBody),
        (status = 404, description = "WebSockets are disabled on this server", body = schema::ErrorBody),
        (status = 503, description = "The server holds its maximum of connections", body = schema::ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn socket_io() {}

/// Packets a long-polling Socket.IO client sends (Engine.IO v4 payload, packets separated
/// by `\x1e`).
#[utoipa::path(
    post,
    path = "/socket.io/",
    tag = "live",
    security(()),
    params(
        ("EIO" = String, Query, description = "Engine.IO protocol version: `4`"),
        ("transport" = String, Query, description = "`polling`"),
        ("sid" = String, Query, description = "Engine.IO session id from the handshake"),
    ),
    request_body(content = String, content_type = "text/plain", description = "An Engine.IO payload"),
    responses(
        (status = 200, description = "Accepted: `ok`", content_type = "text/plain", body = String),
        (status = 400, description = "Unknown session or a payload this gateway refuses: Engine.IO's `{code, message}` with this API's `error` beside it", body = schema::ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn socket_io_polling() {}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A schema as short text: a `$ref` becomes a link to the schema's section.
fn schema_html(schema: &Value) -> String {
    let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
    let mut out = String::new();
    for line in escape(&pretty).lines() {
        if let Some(name) = line
            .trim()
            .strip_prefix("&quot;$ref&quot;: &quot;#/components/schemas/")
            .and_then(|s| s.split("&quot;").next())
        {
            let indent = &line[..line.len() - line.trim_start().len()];
            let _ = writeln!(out, "{indent}<a href=\"#schema-{name}\">{name}</a>");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Escaped text in which `backticks` become `<code>`.
fn prose(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_owned()
            }
        })
        .collect()
}

fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| format!("<p>{}</p>", prose(p)))
        .collect()
}

/// The docs page: every operation with its parameters, body and answers, then the schemas.
pub fn render_docs(api: &utoipa::openapi::OpenApi) -> String {
    let doc = serde_json::to_value(api).unwrap_or_default();
    let mut html = String::new();
    let title = escape(doc["info"]["title"].as_str().unwrap_or("API"));
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} API</title><style>\
         body{{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#222}}\
         code,pre{{font:13px/1.4 ui-monospace,monospace}}pre{{background:#f6f6f4;padding:.6rem;overflow:auto}}\
         section.op{{border-top:1px solid #ddd;padding:.5rem 0}}\
         .m{{display:inline-block;min-width:4.5rem;font-weight:bold;text-transform:uppercase}}\
         .get{{color:#1769aa}}.post{{color:#2e7d32}}.put,.patch{{color:#b26a00}}.delete{{color:#c62828}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}}\
         nav a{{margin-right:1rem}}details summary{{cursor:pointer}}\
         </style></head><body><h1>{title} <small>{}</small></h1>{}\
         <p>OpenAPI {}: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a></p>",
        escape(doc["info"]["version"].as_str().unwrap_or("")),
        paragraphs(doc["info"]["description"].as_str().unwrap_or("")),
        escape(doc["openapi"].as_str().unwrap_or("")),
    );
    // Operations grouped by their first tag, in the order the tags are declared.
    let mut groups: BTreeMap<usize, (String, Vec<String>)> = BTreeMap::new();
    let tags: Vec<String> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let tag = op["tags"][0].as_str().unwrap_or("other").to_owned();
            let order = tags.iter().position(|t| *t == tag).unwrap_or(tags.len());
            let section = render_operation(method, path, op);
            groups
                .entry(order)
                .or_insert_with(|| (tag, Vec::new()))
                .1
                .push(section);
        }
    }
    html.push_str("<nav>");
    for (tag, _) in groups.values() {
        let _ = write!(html, "<a href=\"#tag-{0}\">{0}</a>", escape(tag));
    }
    html.push_str("<a href=\"#schemas\">schemas</a></nav>");
    for (tag, sections) in groups.values() {
        let _ = write!(html, "<h2 id=\"tag-{0}\">{0}</h2>", escape(tag));
        for s in sections {
            html.push_str(s);
        }
    }
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let _ = write!(
            html,
            "<h3 id=\"schema-{0}\">{0}</h3><pre>{1}</pre>",
            escape(name),
            schema_html(schema)
        );
    }
    html.push_str("</body></html>");
    html
}

fn render_operation(method: &str, path: &str, op: &Value) -> String {
    let mut html = String::new();
    let id = format!("{method}-{path}").replace(['/', '{', '}', '.'], "_");
    let _ = write!(
        html,
        "<section class=\"op\" id=\"{id}\"><h3><span class=\"m {method}\">{method}</span> \
         <code>{}</code></h3>",
        escape(path)
    );
    if let Some(summary) = op["summary"].as_str() {
        let _ = write!(html, "<p><strong>{}</strong></p>", prose(summary));
    }
    if let Some(description) = op["description"].as_str() {
        html.push_str(&paragraphs(description));
    }
    let public = op["security"].as_array().is_some_and(|s| {
        s.iter()
            .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
    });
    let by_query = op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("access_token").is_some()));
    if by_query {
        html.push_str(
            "<p>Needs <code>Authorization: Bearer &lt;access token&gt;</code>, or the \
             <code>access_token</code> query parameter.</p>",
        );
    } else if !public {
        html.push_str("<p>Needs <code>Authorization: Bearer &lt;access token&gt;</code>.</p>");
    }
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str(
            "<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th><th>meaning</th></tr>",
        );
        for p in params {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                escape(p["name"].as_str().unwrap_or("")),
                escape(p["in"].as_str().unwrap_or("")),
                if p["required"].as_bool() == Some(true) { "yes" } else { "no" },
                escape(&p["schema"].to_string()),
                prose(p["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    if let Some(body) = op["requestBody"].as_object() {
        for (content_type, content) in body
            .get("content")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let _ = write!(
                html,
                "<p>Body ({}{}):</p><pre>{}</pre>",
                escape(content_type),
                if body.get("required").and_then(Value::as_bool) == Some(true) {
                    ", required"
                } else {
                    ", optional"
                },
                schema_html(&content["schema"])
            );
        }
    }
    html.push_str("<details><summary>Answers</summary><table>");
    for (status, response) in op["responses"].as_object().into_iter().flatten() {
        let schema = response["content"]
            .as_object()
            .and_then(|c| c.values().next())
            .map(|c| schema_html(&c["schema"]))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            escape(status),
            prose(response["description"].as_str().unwrap_or("")),
            schema
        );
    }
    html.push_str("</table></details></section>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_a_bearer_scheme() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["Error"].is_object());
    }

    #[test]
    fn event_streams_alone_take_the_token_in_the_query() {
        let doc: Value = serde_json::from_str(document_json()).unwrap();
        let scheme = &doc["components"]["securitySchemes"]["access_token"];
        assert_eq!(scheme["type"], "apiKey");
        assert_eq!(scheme["in"], "query");
        assert_eq!(scheme["name"], "access_token");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let by_query = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get("access_token").is_some()));
                let streams = op["responses"]["200"]["content"]["text/event-stream"].is_object();
                assert_eq!(by_query, streams, "{method} {path}");
            }
        }
        let page = render_docs(document());
        assert!(page.contains("or the <code>access_token</code> query parameter"));
    }

    #[test]
    fn a_path_with_parameters_matches_its_route_and_literals_win() {
        let route = route_for("/api/v1/citypulse/buildings/abc/sensors").unwrap();
        assert!(route
            .methods
            .iter()
            .any(|(m, json)| *m == Method::POST && *json));
        assert!(route_for("/api/v1/citypulse/buildings/abc/nothing").is_none());
        let me = route_for("/api/v1/users/me").unwrap();
        assert!(me.methods.iter().any(|(m, _)| *m == Method::DELETE));
    }

    #[test]
    fn an_alias_without_v1_falls_under_its_documented_route() {
        let alias = route_for("/api/organizations/abc").unwrap();
        let documented = route_for("/api/v1/organizations/abc").unwrap();
        assert!(std::ptr::eq(alias, documented));
        assert!(alias.methods.iter().any(|(m, _)| *m == Method::PUT));
        assert_eq!(canonical("/api/teams"), "/api/v1/teams");
        assert_eq!(canonical("/api/v1/teams"), "/api/v1/teams");
        // Only the aliased groups: CityPulse has no path without `/v1`.
        assert!(route_for("/api/citypulse/buildings").is_none());
    }

    #[test]
    fn the_docs_page_loads_nothing_from_elsewhere() {
        let page = render_docs(document());
        assert!(page.contains("/api/v1/citypulse/buildings/{id}/readings"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
