//! Shapes of the JSON this API answers with, for the OpenAPI document only.
//!
//! Handlers build most answers with `json!`; these types describe those answers so that the
//! contract can be checked against the running server (schemathesis does, in `scripts/test`).
//! They are never constructed, hence the `dead_code` allowance.

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every 4xx and 5xx answer.
#[derive(ToSchema)]
#[schema(as = Error, example = json!({"error": {"code": "not_found", "message": "building not found", "details": null}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `validation_failed`, `version_conflict`, `not_found`, …
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// More about the failure (e.g. `{"field", "reason"}`), or null.
    #[schema(value_type = Value)]
    pub details: Value,
}

/// What a sensor measures.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum SensorKind {
    Electricity,
    Gas,
    Water,
    Temperature,
}

/// A role within an organization.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
    Viewer,
}

/// A frontend an organization may enable.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Frontend {
    Flowmind,
    Quantum,
    Velocity,
    Citypulse,
    Toolbox,
    Fluxstudio,
}

/// The answer of a command.
#[derive(ToSchema)]
pub struct CommandResult {
    /// The entity commanded.
    pub id: Uuid,
    /// Its version after the command (also the `ETag`).
    pub version: i64,
    /// The log position of the last event written; pass it as `min_position` to read it.
    pub position: i64,
}

#[derive(ToSchema)]
pub struct BuildingCreated {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    /// Where the new building is read.
    pub location: String,
}

#[derive(ToSchema)]
pub struct SensorCommandResult {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    pub sensor_id: Uuid,
}

#[derive(ToSchema)]
pub struct ReadingsRecorded {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    /// Alerts the readings raised.
    pub alerts_raised: i64,
}

#[derive(ToSchema)]
pub struct PasswordChanged {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    /// Sessions the change ended (all of them).
    pub sessions_ended: i64,
}

#[derive(ToSchema)]
pub struct TokenUser {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
}

/// Access and refresh token of a new or refreshed session.
#[derive(ToSchema)]
pub struct Tokens {
    /// JWT (HS256): send as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Opaque; rotates on every use.
    pub refresh_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Expiry of the access token, Unix seconds.
    pub expires_at: i64,
    /// Lifetime of the access token in seconds.
    pub expires_in: i64,
    pub user: TokenUser,
    pub organization_id: Option<Uuid>,
    pub role: Option<Role>,
    pub frontends: Vec<Frontend>,
    /// Sign-up only: the log position of the new account.
    #[schema(required = false)]
    pub position: Option<i64>,
}

#[derive(ToSchema)]
pub struct OrganizationRef {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
}

/// The caller's profile.
#[derive(ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub roles: Vec<Role>,
    pub active: bool,
    pub version: i64,
    /// The organization this session is logged in to.
    pub organization_id: Option<Uuid>,
    pub role: Option<Role>,
    pub frontends: Vec<Frontend>,
    pub organizations: Vec<OrganizationRef>,
}

#[derive(ToSchema)]
pub struct OrganizationSummary {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub frontends: Vec<Frontend>,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct OrganizationList {
    pub items: Vec<OrganizationSummary>,
}

#[derive(ToSchema)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub frontends: Vec<Frontend>,
    pub version: i64,
    /// The caller's role in it.
    pub role: Role,
}

#[derive(ToSchema)]
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: Role,
}

#[derive(ToSchema)]
pub struct MemberList {
    pub items: Vec<Member>,
}

#[derive(ToSchema)]
pub struct FrontendSetting {
    pub frontend: Frontend,
    pub enabled: bool,
}

#[derive(ToSchema)]
pub struct FrontendList {
    pub items: Vec<FrontendSetting>,
}

/// A building as listed.
#[derive(ToSchema)]
pub struct Building {
    pub id: Uuid,
    pub name: String,
    pub address: Option<String>,
    pub floor_area_m2: Option<f64>,
    pub registered_at: DateTime<Utc>,
    /// Also the `ETag` of the building.
    pub version: i64,
    pub active_sensors: i32,
    pub open_alerts: i32,
    pub last_reading_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
pub struct BuildingPage {
    pub items: Vec<Building>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct Sensor {
    pub id: Uuid,
    pub kind: SensorKind,
    pub unit: String,
    pub name: Option<String>,
    /// `active` or `decommissioned`.
    pub status: String,
    pub last_value: Option<f64>,
    pub last_reading_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
pub struct SensorList {
    pub items: Vec<Sensor>,
}

#[derive(ToSchema)]
pub struct Threshold {
    pub kind: SensorKind,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
}

/// One building with its sensors and thresholds.
#[derive(ToSchema)]
pub struct BuildingDetail {
    #[serde(flatten)]
    pub building: Building,
    pub sensors: Vec<Sensor>,
    pub thresholds: Vec<Threshold>,
}

#[derive(ToSchema)]
pub struct EnergyPoint {
    /// Start of the hour or day.
    pub bucket: DateTime<Utc>,
    pub sensor_id: Uuid,
    pub kind: SensorKind,
    pub unit: String,
    pub total: f64,
    pub samples: i64,
    pub min_value: f64,
    pub max_value: f64,
    pub average: f64,
}

#[derive(ToSchema)]
pub struct EnergySeries {
    pub building_id: Uuid,
    /// `hour` or `day`.
    pub bucket: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub series: Vec<EnergyPoint>,
}

#[derive(ToSchema)]
pub struct Alert {
    pub id: Uuid,
    pub sensor_id: Uuid,
    pub kind: SensorKind,
    /// `min` or `max`.
    pub bound: String,
    pub limit_value: f64,
    pub value: f64,
    pub raised_at: DateTime<Utc>,
    pub position: i64,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_value: Option<f64>,
}

#[derive(ToSchema)]
pub struct AlertList {
    pub items: Vec<Alert>,
}

/// An event as stored (secrets blanked).
#[derive(ToSchema)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: String,
    pub category: String,
    pub version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    #[schema(value_type = Value)]
    pub data: Value,
    #[schema(value_type = Value)]
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct StreamPage {
    pub stream: String,
    pub events: Vec<RecordedEvent>,
    /// Continue from this version; null when the stream has no more.
    pub next_version: Option<i64>,
}

#[derive(ToSchema)]
pub struct LogPage {
    pub events: Vec<RecordedEvent>,
    /// Continue from this position.
    pub next_position: i64,
    pub head_position: i64,
}

#[derive(ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    pub checkpoint: Option<i64>,
    pub lag: Option<i64>,
    /// The process whose runner holds the projection now (`host:pid:id`); null when none.
    pub process: Option<String>,
}

#[derive(ToSchema)]
pub struct EventStoreStatus {
    pub reachable: bool,
    pub head_position: Option<i64>,
    pub error: Option<String>,
}

/// Health of this process and of what it depends on.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the event store is unreachable.
    pub status: String,
    pub version: String,
    pub uptime_seconds: i64,
    /// `rss`, `heapTotal`, `heapUsed`, `external` (bytes, see the README) and `rss_bytes`.
    #[schema(value_type = Object)]
    pub memory: Value,
    pub event_store: EventStoreStatus,
    pub projections: Vec<ProjectionStatus>,
    #[schema(value_type = Object)]
    pub live_actors: Value,
    /// FluxStudio's fields: `universal-backend`.
    pub service: String,
    /// Now, RFC 3339.
    pub timestamp: String,
    /// What this process serves now: `auth`, `organizations`, `teams`, `projects`,
    /// `messaging`, `notifications`, `citypulse`, `flowmind`, `swarm`, `agents`, `analysis`,
    /// `events`, `socket.io`, `ws`, `pusher`, less those its settings turn off.
    pub services: Vec<String>,
    /// The port this process listens on.
    pub port: u16,
    /// Seconds since start (the same as `uptime_seconds`).
    pub uptime: i64,
    /// This process's name in task leases, task views and projection locks
    /// (`host:pid:id`).
    pub process: String,
    /// This process's swarm workers: `total` slots (`WORKER_SLOTS`) and `in_use`.
    pub worker_slots: WorkerSlots,
    /// Whether this process leads the swarm scheduler (admits tasks) now.
    pub scheduler_leader: bool,
}

/// A process's swarm worker slots.
#[derive(ToSchema)]
pub struct WorkerSlots {
    pub total: usize,
    pub in_use: usize,
}

/// What this service is and offers.
#[derive(ToSchema)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    pub event_store: String,
    /// Every frontend served, keyed by its `X-Frontend-Source` name.
    pub frontends: InfoFrontends,
    pub projections: Vec<String>,
    #[schema(value_type = Object)]
    pub history: Value,
    #[schema(value_type = Object)]
    pub operations: Value,
    pub live: InfoLive,
}

/// The frontends of `/api/v1/info`.
#[derive(ToSchema)]
pub struct InfoFrontends {
    pub citypulse: FrontendInfo,
    pub flowmind: FrontendInfo,
    pub quantum: FrontendInfo,
    pub velocity: FrontendInfo,
    pub toolbox: FrontendInfo,
    pub fluxstudio: FrontendInfo,
}

/// A frontend this service serves, and how.
#[derive(ToSchema)]
pub struct FrontendInfo {
    /// Whether its routes are served, by its route-group setting (`CITYPULSE_ENABLED`,
    /// `AI_MODELS_ENABLED`, `QUANTUM_SWARM_ENABLED`, `VELOCITY_SWARM_ENABLED`; ToolboxAI and
    /// FluxStudio have none: always).
    pub enabled: bool,
    /// The same as `enabled` (the older name).
    pub available: bool,
    /// What `X-Frontend-Source` (or an event stream's `frontend` parameter) must say.
    pub frontend_source: String,
    /// The first of `base_paths` (the older field).
    pub base: String,
    /// The path prefixes of its routes (FluxStudio's also without `/v1`).
    pub base_paths: Vec<String>,
    /// Its Socket.IO namespaces on `/socket.io/`.
    pub socketio_namespaces: Vec<String>,
    /// Its Pusher channels on `/app/{key}` (`{…}` stands for an id).
    pub pusher_channels: Vec<String>,
    /// Its Server-Sent-Events routes (`access_token` and `frontend` may be query parameters).
    pub event_streams: Vec<String>,
    /// Whether its namespaces (`WEBSOCKET_ENABLED`) and channels (`PUSHER_ENABLED`) are
    /// served; `false` when it has none.
    pub live_enabled: bool,
    /// The settings that turn its routes or its live updates off.
    pub settings: Vec<String>,
}

/// The live gateways of `/api/v1/info`.
#[derive(ToSchema)]
pub struct InfoLive {
    pub socketio: LiveGateway,
    pub ws: LiveGateway,
    pub pusher: PusherGateway,
}

/// A socket endpoint.
#[derive(ToSchema)]
pub struct LiveGateway {
    pub path: String,
    /// `WEBSOCKET_ENABLED`.
    pub enabled: bool,
}

/// The Pusher Channels gateway.
#[derive(ToSchema)]
pub struct PusherGateway {
    /// `/app/{PUSHER_KEY}`.
    pub path: String,
    /// Where pusher-js asks for subscription signatures.
    pub auth: String,
    /// `PUSHER_ENABLED` (off in production without `PUSHER_SECRET`).
    pub enabled: bool,
}

/// Which way a stream is read.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Backward,
}

/// Width of an energy bucket.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
}

/// Which alerts to list.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    All,
}

/// The frontend the CityPulse routes belong to.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum CityPulseSource {
    Citypulse,
}

/// Sent with every CityPulse request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CityPulseHeaders {
    /// Names the frontend: `citypulse`, which must be enabled for the caller's organization
    /// (otherwise 403 `frontend_access_denied`).
    #[param(rename = "X-Frontend-Source", value_type = CityPulseSource, inline)]
    pub x_frontend_source: String,
}

/// Optional headers of a command on one entity.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Run only if the entity is at this version (an `ETag` of this API, like `"3"`; `*`
    /// means any); otherwise 409 `version_conflict` with the actual version.
    #[param(rename = "If-Match", pattern = r#"^(\*|(W/)?"[0-9]{1,15}")$"#)]
    pub if_match: Option<String>,
    /// A retry with the same key and body returns the first answer
    /// (`Idempotent-Replayed: true`) and writes nothing; another body gets 422.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    pub idempotency_key: Option<String>,
}

/// A page of parked events.
#[derive(ToSchema)]
pub struct ParkedEventPage {
    pub items: Vec<crate::projections::parked::ParkedEvent>,
    pub next_cursor: Option<String>,
}

/// One legacy import run: its `ImportStarted` data and, once it ended, its `ImportCompleted`
/// data (figures per table, events written, verification).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ImportRun {
    pub position: i64,
    #[schema(value_type = Object)]
    pub started: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub completed: Option<serde_json::Value>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ImportRunPage {
    pub items: Vec<ImportRun>,
    /// Pass as `before` for the next page; absent on the last.
    pub next_before: Option<i64>,
}

/// The id a legacy id became.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ImportedId {
    pub source: String,
    pub kind: String,
    pub legacy_id: String,
    pub id: uuid::Uuid,
    /// The entity's stream, for kinds that have one.
    pub stream: Option<String>,
    /// Whether that stream holds events (absent for kinds without a stream).
    pub exists: Option<bool>,
}

/// The optional header of a command that takes no `If-Match`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// A retry with the same key and body returns the first answer
    /// (`Idempotent-Replayed: true`) and writes nothing; another body gets 422.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    pub idempotency_key: Option<String>,
}

/// The frontend the AI routes belong to.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum FlowmindSource {
    Flowmind,
}

/// Sent with every AI request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct FlowmindHeaders {
    /// Names the frontend: `flowmind`, which must be enabled for the caller's organization
    /// (otherwise 403 `frontend_access_denied`).
    #[param(rename = "X-Frontend-Source", value_type = FlowmindSource, inline)]
    pub x_frontend_source: String,
}

/// Sent with a FlowMind event stream, unless the `frontend` query parameter stands in.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct FlowmindStreamHeaders {
    /// Names the frontend: `flowmind`, which must be enabled for the caller's organization
    /// (otherwise 403 `frontend_access_denied`). Required unless `frontend` is given.
    #[param(rename = "X-Frontend-Source", value_type = Option<FlowmindSource>, inline)]
    pub x_frontend_source: Option<String>,
}

/// What stands in for headers on an event stream, for a browser's `EventSource`, which
/// cannot send any (the token's stand-in is the `access_token` security scheme).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlowmindStreamQuery {
    /// `flowmind`, when `X-Frontend-Source` is not sent (the header wins when both are).
    #[param(value_type = Option<FlowmindSource>, inline)]
    pub frontend: Option<String>,
}

/// A model a client may ask for.
#[derive(ToSchema)]
pub struct AiModel {
    /// The model id, e.g. `gpt-4o-mini` or `local-echo`.
    pub id: String,
    /// `openai`, `groq`, `anthropic` or `local-echo`.
    pub provider: String,
    /// Used when a request names no model.
    pub default: bool,
}

/// The models of the configured providers.
#[derive(ToSchema)]
pub struct AiModels {
    pub items: Vec<AiModel>,
    pub default_model: Option<String>,
}

/// A provider's circuit breaker.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum BreakerStateName {
    Closed,
    Open,
    HalfOpen,
}

/// One provider's circuit breaker at this moment.
#[derive(ToSchema)]
pub struct ProviderState {
    pub provider: String,
    pub state: BreakerStateName,
    /// Failed calls since the last success.
    pub consecutive_failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    /// When open: from when the next call is let through as a probe.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// A half-open probe is under way; other calls fail at once meanwhile.
    pub probe_in_flight: bool,
}

/// Every configured provider's breaker.
#[derive(ToSchema)]
pub struct ProviderStates {
    pub items: Vec<ProviderState>,
}

/// The session part of a creation answer (the legacy `chat_sessions` field names).
#[derive(ToSchema)]
pub struct ChatSessionSummary {
    pub id: Uuid,
    pub user_id: Uuid,
    pub organization_id: Uuid,
    pub title: String,
    pub model_id: String,
    pub system_prompt: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(ToSchema)]
pub struct ChatSessionCreated {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    pub session: ChatSessionSummary,
    /// Where the new session is read.
    pub location: String,
}

/// A chat session with its activity (the legacy `chat_sessions` field names, and more).
#[derive(ToSchema)]
pub struct ChatSession {
    pub id: Uuid,
    /// The owner.
    pub user_id: Uuid,
    pub organization_id: Uuid,
    pub title: String,
    pub model_id: String,
    pub system_prompt: Option<String>,
    pub archived: bool,
    pub archived_at: Option<DateTime<Utc>>,
    /// User messages and replies, every branch.
    pub message_count: i32,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// `prompt_tokens + completion_tokens` of the completed replies.
    pub tokens_used: i64,
    pub last_activity_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(ToSchema)]
pub struct ChatSessionPage {
    pub items: Vec<ChatSession>,
    pub next_cursor: Option<String>,
}

/// A posted (or edited) message, or a regeneration: the reply now streaming.
#[derive(ToSchema)]
pub struct MessagePosted {
    /// The session.
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    /// The user message (absent for a regeneration).
    pub message_id: Option<Uuid>,
    pub reply_id: Uuid,
    pub model_id: String,
    /// The provider streaming the reply (`openai`, `groq`, `anthropic`, `local-echo`).
    pub provider: String,
    /// The reply as Server-Sent Events.
    pub stream_url: String,
}

#[derive(ToSchema)]
pub struct ReplyCancelled {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    /// Whether a streaming reply was stopped.
    pub cancelled: bool,
    pub reply_id: Option<Uuid>,
}

/// Where a message stands.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ChatMessageStatus {
    Streaming,
    Completed,
    Failed,
    Cancelled,
}

/// A message of a session: the user's (`role: user`) or a reply (`role: assistant`).
#[derive(ToSchema)]
pub struct ChatMessage {
    pub id: Uuid,
    pub session_id: Uuid,
    /// The message this one follows; a reply's parent is the user message it answers.
    pub parent_id: Option<Uuid>,
    /// `user` or `assistant`.
    pub role: String,
    /// The text; for a reply, all of it so far.
    pub content: String,
    pub status: ChatMessageStatus,
    pub model_id: Option<String>,
    pub provider: Option<String>,
    pub finish_reason: Option<String>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Order within the session (a log position).
    pub seq: i64,
}

#[derive(ToSchema)]
pub struct ChatMessagePage {
    pub items: Vec<ChatMessage>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct AiUsageDay {
    pub day: chrono::NaiveDate,
    pub model_id: String,
    pub replies: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(ToSchema)]
pub struct AiUsageTotals {
    pub replies: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(ToSchema)]
pub struct AiUsage {
    pub organization_id: Uuid,
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub items: Vec<AiUsageDay>,
    pub totals: AiUsageTotals,
}

/// The frontend the messaging routes belong to.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum FluxstudioSource {
    Fluxstudio,
}

/// Sent with every messaging request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct FluxstudioHeaders {
    /// Names the frontend: `fluxstudio`, which must be enabled for the caller's organization
    /// (otherwise 403 `frontend_access_denied`).
    #[param(rename = "X-Frontend-Source", value_type = FluxstudioSource, inline)]
    pub x_frontend_source: String,
}

#[derive(ToSchema)]
pub struct ChannelCreated {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    /// Where the channel is read.
    pub location: String,
}

/// A channel or direct conversation the caller reads.
#[derive(ToSchema)]
pub struct Channel {
    pub id: Uuid,
    pub organization_id: Uuid,
    /// `public`, `private` or `direct`.
    pub kind: String,
    /// None for a direct conversation.
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub message_count: i64,
    pub last_message_at: Option<DateTime<Utc>>,
    /// The caller's read mark (a message `seq`).
    pub last_read_seq: i64,
    /// Others' messages after the read mark, not deleted.
    pub unread_count: i64,
    pub version: i64,
}

#[derive(ToSchema)]
pub struct ChannelPage {
    pub items: Vec<Channel>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct ChannelDetail {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub kind: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub message_count: i64,
    pub last_message_at: Option<DateTime<Utc>>,
    pub last_read_seq: i64,
    pub unread_count: i64,
    pub version: i64,
    /// Members of a private channel or direct conversation (empty for a public channel).
    pub members: Vec<Uuid>,
}

/// An attachment to send: a file of the store, by id (one the sender may read), or a link
/// to a file kept elsewhere.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub enum AttachmentBody {
    File(FileAttachmentBody),
    Link(LinkAttachmentBody),
}

/// A file of the organization's store.
#[derive(ToSchema, serde::Serialize)]
pub struct FileAttachmentBody {
    pub file_id: Uuid,
}

/// An attachment as a reader sees it: a link as sent, a file the reader may read (its
/// current name, type, size and content URL), or only the id of a file the reader may not
/// read (`unavailable: true`).
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub enum ShownAttachment {
    File(ShownFile),
    Unavailable(UnavailableFile),
    Link(LinkAttachmentBody),
}

/// A file attachment the reader may read, as the file is now.
#[derive(ToSchema, serde::Serialize)]
pub struct ShownFile {
    pub file_id: Uuid,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    /// The file's current version.
    pub version: i32,
    /// Its content (`GET`, with the reader's credentials).
    pub url: String,
    /// Always `false` here.
    pub unavailable: bool,
}

/// A file attachment the reader may not read (or a deleted file): its id only.
#[derive(ToSchema, serde::Serialize)]
pub struct UnavailableFile {
    pub file_id: Uuid,
    /// Always `true`.
    pub unavailable: bool,
}

/// A link attachment: what the sender said of a file kept elsewhere.
#[derive(ToSchema, serde::Serialize)]
pub struct LinkAttachmentBody {
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\u0000]*$")]
    pub name: String,
    #[schema(minimum = 0, maximum = 100000000000_u64)]
    pub size: u64,
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000]*$")]
    pub content_type: String,
    /// An http(s) URL.
    #[schema(min_length = 1, max_length = 2000, pattern = r"^https?://[^\u0000]*$")]
    pub url: String,
}

/// A stored message.
#[derive(ToSchema)]
pub struct StoredMessage {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub author_id: Uuid,
    pub text: String,
    pub parent_id: Option<Uuid>,
    pub mentions: Vec<Uuid>,
    pub attachments: Vec<ShownAttachment>,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The log position of the message.
    pub position: i64,
    pub version: i64,
    /// Sent before with the same `client_message_id`.
    pub replayed: bool,
}

#[derive(ToSchema)]
pub struct MessageSent {
    /// The message.
    pub id: Uuid,
    pub channel_id: Uuid,
    pub version: i64,
    pub position: i64,
    pub message: StoredMessage,
}

#[derive(ToSchema)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: i64,
    /// The caller reacted with it.
    pub me: bool,
}

/// A message as listed; a deleted one has no text.
#[derive(ToSchema)]
pub struct ChannelMessage {
    pub id: Uuid,
    pub channel_id: Uuid,
    /// Its number in the channel, from 1.
    pub seq: i64,
    pub author_id: Uuid,
    pub text: Option<String>,
    pub parent_id: Option<Uuid>,
    pub reply_count: i32,
    pub mentions: Vec<Uuid>,
    pub attachments: Vec<ShownAttachment>,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub position: i64,
    pub reactions: Vec<ReactionCount>,
}

#[derive(ToSchema)]
pub struct ChannelMessagePage {
    pub items: Vec<ChannelMessage>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct Notification {
    pub id: Uuid,
    /// `mention`, `direct_message` or `thread_reply`.
    pub kind: String,
    pub channel_id: Uuid,
    pub message_id: Uuid,
    /// Who wrote the message.
    pub actor_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
    pub position: i64,
}

#[derive(ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    pub unread_count: i64,
    pub next_cursor: Option<String>,
}

/// One Server-Sent Event of a reply stream: `event` is `delta` (its `data` is
/// `{reply_id, offset, text}` and its `id` the characters received so far), then one of
/// `completed`, `failed`, `cancelled` (or `timeout`, `error`); `data` is JSON text.
#[derive(ToSchema)]
pub struct ReplySseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}
