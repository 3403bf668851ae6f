//! ToolboxAI agents (`/api/v1/agents`), their executions, and the provider circuit breakers
//! (`/api/v1/system/circuit-breakers`), plus `GET /health/agents`.
//!
//! Agent routes need `X-Frontend-Source: toolbox`, enabled for the caller's organization;
//! another organization's execution is 404. An execution is a swarm task of type `agent`
//! (the scheduler in `crate::tasks` runs it under the same caps as every task); the reads
//! come from the `task_executions`, `agent_instances` and `agent_metrics` read models.
//!
//! **Input errors are 400** with `validation_failed` and the field (`task_data.grade_level`,
//! `agent_type`, ...), checked against the registry before anything is recorded.
//!
//! **Waiting.** `POST /agents/execute` answers 202 at once with the execution's id and
//! `status`. With `?wait=true` it waits up to `AGENT_EXECUTE_MAX_WAIT` seconds (default 60),
//! with `Prefer: wait=N` up to N seconds (at most that bound): 200 with the execution when
//! it finished in time, else 202 with its status then. `Preference-Applied` says how long
//! it was willing to wait.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::identity::Frontend;
use universal_events::swarm::{AgentConfig, TaskConfig, TaskType};
use uuid::Uuid;

use super::command::{idempotent, meta, parse_json, wait_for_projection as wait, Answer, Page};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::swarm_task::{check_agent, ScopedCommand, SwarmCommand, SwarmError};
use crate::projections::agents::NAME as PROJECTION;
use crate::state::AppState;

/// How often a waiting request looks at its execution.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Completed executions the duration percentiles are taken over (the newest).
const PERCENTILE_WINDOW: i64 = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/agents", web::get().to(list_agents))
        .route("/agents/execute", web::post().to(execute))
        .route("/agents/executions", web::get().to(list_executions))
        .route("/agents/executions/{id}", web::get().to(get_execution))
        .route("/agents/metrics", web::get().to(metrics))
        .route("/system/circuit-breakers", web::get().to(breakers))
        .route(
            "/system/circuit-breakers/{name}/reset",
            web::post().to(reset_breaker),
        );
}

/// A 400 naming the offending field, in the project's error shape.
fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "validation_failed",
        format!("{field}: {message}"),
    )
    .with_details(json!({ "field": field, "reason": message }))
}

fn swarm_error(e: SwarmError) -> ApiError {
    match e {
        SwarmError::NotFound => ApiError::not_found("execution not found"),
        SwarmError::AlreadyExists => ApiError::conflict("execution already exists"),
        SwarmError::Invalid { field, message } => invalid(&field, message),
        other => ApiError::conflict(other.to_string()),
    }
}

/// Sent with every agent request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct ToolboxHeaders {
    /// Must be `toolbox`, enabled for the caller's organization (otherwise 403
    /// `frontend_access_denied`).
    #[param(rename = "X-Frontend-Source", pattern = "^toolbox$")]
    x_frontend_source: String,
}

/// An execution to run.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "agent_type": "content_generator",
    "task_type": "generate_content",
    "task_data": {"subject": "Mathematics", "grade_level": 5, "objectives": ["Learn fractions"]}
}))]
struct ExecuteBody {
    /// A registered agent (`GET /api/v1/agents`), e.g. `content_generator`.
    agent_type: String,
    /// One of the agent's task types, e.g. `generate_content`.
    task_type: String,
    /// The task's input, valid against its input schema, e.g. `{"subject": "Mathematics",
    /// "grade_level": 5, "objectives": ["Learn fractions"]}`.
    #[schema(value_type = Object)]
    task_data: Value,
    /// A model of the configured providers; left out: the task's model, else the default.
    model: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ExecuteParams {
    /// Wait for the result, up to `AGENT_EXECUTE_MAX_WAIT` seconds.
    wait: Option<bool>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct PreferHeader {
    /// `wait=N`: wait up to N seconds for the result (at most `AGENT_EXECUTE_MAX_WAIT`).
    #[param(rename = "Prefer", pattern = "^wait=[0-9]{1,6}$")]
    prefer: Option<String>,
}

/// How long the request asks to wait, if at all (already bounded).
fn wait_for(
    state: &AppState,
    req: &HttpRequest,
    params: &ExecuteParams,
) -> Result<Option<Duration>, ApiError> {
    let max = Duration::from_secs(state.config.agent_execute_max_wait);
    let prefer = req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("wait="));
    let mut wait = None;
    if let Some(secs) = prefer {
        let secs: u64 = secs
            .trim()
            .parse()
            .map_err(|_| ApiError::bad_request("Prefer: wait=N takes a whole number of seconds"))?;
        wait = Some(Duration::from_secs(secs).min(max));
    }
    if params.wait == Some(true) && wait.is_none() {
        wait = Some(max);
    }
    Ok(wait)
}

/// Starts an agent execution. 202 with its id and `status` at once; with `?wait=true` or
/// `Prefer: wait=N`, 200 with the finished execution if it ends in time (else 202).
#[utoipa::path(
    post,
    path = "/api/v1/agents/execute",
    tag = "agents",
    request_body = ExecuteBody,
    params(ExecuteParams, PreferHeader, ToolboxHeaders, super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Finished while the request waited", body = ExecutionView),
        (status = 202, description = "Accepted; `status` says where it stands", body = ExecutionAccepted),
    ),
)]
async fn execute(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ExecuteParams>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Toolbox)?;
    who.require_writer()?;
    let waiting = wait_for(&state, &req, &params)?;
    let raw: Value = parse_json(&body)?;
    let input: ExecuteBody =
        serde_json::from_value(raw).map_err(|e| invalid("body", e.to_string()))?;
    let spec = crate::agents::task(&input.agent_type, &input.task_type).map_err(|e| match e {
        crate::agents::LookupError::UnknownAgent { .. } => invalid("agent_type", e.to_string()),
        crate::agents::LookupError::UnknownTask { .. } => invalid("task_type", e.to_string()),
    })?;
    let model = match input.model.clone().or_else(|| spec.model.clone()) {
        Some(m) => m,
        None => state.providers.default_model().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "no AI provider is configured",
            )
        })?,
    };
    if state.providers.for_model(&model).is_none() {
        return Err(invalid(
            "model",
            format!("no configured provider serves `{model}`"),
        ));
    }
    let config = AgentConfig {
        agent_type: input.agent_type.clone(),
        task_type: input.task_type.clone(),
        task_data: input.task_data,
        model,
    };
    check_agent(&config).map_err(swarm_error)?;
    let meta = meta(&req, &who)?;
    let id = Uuid::new_v5(&meta.command_id, b"agent_execution");
    let cmd = ScopedCommand {
        organization_id: org,
        cmd: SwarmCommand::Create {
            task_id: id,
            user_id: who.user_id,
            task_type: TaskType::Agent,
            objective: format!("{}.{}", config.agent_type, config.task_type),
            config: TaskConfig::Agent(config),
            at: Utc::now(),
        },
    };
    let created = idempotent(&state.pool, &req, &who, &body, || async {
        super::swarm::admit(&state, &cmd).await?;
        let mut meta = meta.clone();
        meta.organization_id = Some(org);
        let reply = state
            .registries
            .swarm_tasks
            .execute(id, cmd, None, meta)
            .await
            .map_err(|e| command_error(e, swarm_error))?;
        state.swarm.created(reply.position);
        let mut answer = Answer::of(StatusCode::ACCEPTED, id, &reply);
        answer.body["status"] = json!("queued");
        answer.body["location"] = json!(format!("/api/v1/agents/executions/{id}"));
        Ok(answer)
    })
    .await?;
    let Some(limit) = waiting else {
        return Ok(created);
    };
    let deadline = tokio::time::Instant::now() + limit;
    let applied = format!("wait={}", limit.as_secs());
    loop {
        let row = find(&state, org, id).await.ok();
        if let Some(row) = &row {
            if matches!(row.status.as_str(), "completed" | "failed" | "cancelled") {
                let row = row.clone();
                return Ok(HttpResponse::Ok()
                    .insert_header(("Preference-Applied", applied))
                    .json(row.view()));
            }
        }
        if tokio::time::Instant::now() + WAIT_POLL > deadline {
            let status = row.map_or_else(|| "queued".to_owned(), |r| r.status);
            return Ok(HttpResponse::Accepted()
                .insert_header(("Preference-Applied", applied))
                .json(json!({
                    "id": id,
                    "status": status,
                    "location": format!("/api/v1/agents/executions/{id}"),
                })));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The answer of an accepted execution.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ExecutionAccepted {
    id: Uuid,
    /// `queued`, or where it stood when the wait ended (`running`, ...).
    status: String,
    location: String,
    version: Option<i64>,
    position: Option<i64>,
}

#[derive(sqlx::FromRow, Clone)]
struct ExecutionRow {
    id: Uuid,
    organization_id: Uuid,
    user_id: Uuid,
    agent_type: String,
    task_type: String,
    model: String,
    task_data: Value,
    status: String,
    attempt: i32,
    calls: i32,
    refusals: i32,
    prompt_tokens: i64,
    completion_tokens: i64,
    output: Option<Value>,
    error: Option<String>,
    last_refusal: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    created_position: i64,
    worker: Option<String>,
}

const COLUMNS: &str = "id, organization_id, user_id, agent_type, task_type, model, task_data, \
    status, attempt, calls, refusals, prompt_tokens, completion_tokens, output, error, \
    last_refusal, created_at, started_at, finished_at, duration_ms, created_position, worker";

/// An agent execution.
#[derive(Serialize, utoipa::ToSchema)]
struct ExecutionView {
    id: Uuid,
    organization_id: Uuid,
    user_id: Uuid,
    agent_type: String,
    task_type: String,
    model: String,
    #[schema(value_type = Object)]
    task_data: Value,
    /// `queued`, `running`, `completed`, `failed`, `cancelled` or `interrupted`.
    status: String,
    /// The current (or last) run; above 1 after an interrupted run was resumed.
    attempt: i32,
    /// The process that runs (or ran) that attempt (`host:pid:id`); null before a worker
    /// claimed it.
    worker: Option<String>,
    /// Provider calls made; 2 when the first output was refused by its schema.
    calls: i32,
    /// Outputs refused by the schema.
    refusals: i32,
    prompt_tokens: i64,
    completion_tokens: i64,
    /// The result, valid against the task's output schema, once completed.
    #[schema(value_type = Option<Object>)]
    output: Option<Value>,
    error: Option<String>,
    /// Why the last refused output was refused.
    last_refusal: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
}

impl ExecutionRow {
    fn view(self) -> ExecutionView {
        ExecutionView {
            id: self.id,
            organization_id: self.organization_id,
            user_id: self.user_id,
            agent_type: self.agent_type,
            task_type: self.task_type,
            model: self.model,
            task_data: self.task_data,
            status: self.status,
            attempt: self.attempt,
            worker: self.worker,
            calls: self.calls,
            refusals: self.refusals,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            output: self.output,
            error: self.error,
            last_refusal: self.last_refusal,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
        }
    }
}

async fn find(state: &AppState, org: Uuid, id: Uuid) -> Result<ExecutionRow, ApiError> {
    super::command::find_in_org(
        &state.pool,
        ("task_executions", COLUMNS),
        org,
        id,
        "execution",
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReadParams {
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// One execution of the caller's organization; another organization's is "not found".
#[utoipa::path(
    get,
    path = "/api/v1/agents/executions/{id}",
    tag = "agents",
    params(("id" = Uuid, Path, description = "The execution"), ReadParams, ToolboxHeaders),
    responses((status = 200, description = "The execution", body = ExecutionView)),
)]
async fn get_execution(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Toolbox)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let row = find(&state, org, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(row.view()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only executions of this agent.
    #[param(max_length = 200)]
    agent_type: Option<String>,
    /// Only executions in this state.
    #[param(pattern = "^(queued|running|completed|failed|cancelled|interrupted)$")]
    status: Option<String>,
    /// Only executions created at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Only executions created before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// A page of executions.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ExecutionPage {
    items: Vec<ExecutionView>,
    next_cursor: Option<String>,
}

/// The organization's executions, newest first, filtered by agent, status and creation
/// time; `next_cursor` continues.
#[utoipa::path(
    get,
    path = "/api/v1/agents/executions",
    tag = "agents",
    params(ListParams, ToolboxHeaders),
    responses((status = 200, description = "Executions, newest first", body = ExecutionPage)),
)]
async fn list_executions(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Toolbox)?;
    if let Some(s) = &params.status {
        if crate::actors::swarm_task::TaskStatus::parse(s).is_none() {
            return Err(ApiError::bad_request(
                "status must be queued, running, completed, failed, cancelled or interrupted",
            ));
        }
    }
    if let Some(a) = &params.agent_type {
        if crate::agents::agent(a).is_none() {
            return Err(ApiError::bad_request(format!(
                "agent_type `{a}` is not a registered agent"
            )));
        }
    }
    if let (Some(since), Some(until)) = (params.since, params.until) {
        if since > until {
            return Err(ApiError::bad_request("since must not be after until"));
        }
    }
    let page = Page::parse(params.limit, (50, 200), &params.cursor, i64::MAX)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let mut rows: Vec<ExecutionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM task_executions WHERE organization_id = $1 \
         AND ($2::text IS NULL OR agent_type = $2) AND ($3::text IS NULL OR status = $3) \
         AND ($4::timestamptz IS NULL OR created_at >= $4) \
         AND ($5::timestamptz IS NULL OR created_at < $5) \
         AND created_position < $6 ORDER BY created_position DESC LIMIT $7"
    ))
    .bind(org)
    .bind(&params.agent_type)
    .bind(&params.status)
    .bind(params.since)
    .bind(params.until)
    .bind(page.cursor)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    let items: Vec<ExecutionView> = rows.into_iter().map(ExecutionRow::view).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// A registered agent and its task types (with their input and output schemas).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AgentList {
    #[schema(value_type = Vec<Object>)]
    agents: Vec<Value>,
}

/// The agent registry: each agent, its task types, their schemas, models and limits.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    params(ToolboxHeaders),
    responses((status = 200, description = "The registered agents", body = AgentList)),
)]
async fn list_agents(req: HttpRequest, who: Principal) -> Result<HttpResponse, ApiError> {
    who.frontend(&req, Frontend::Toolbox)?;
    Ok(HttpResponse::Ok().json(json!({ "agents": crate::agents::agents() })))
}

/// One agent's metrics in the caller's organization.
#[derive(Serialize, utoipa::ToSchema)]
struct AgentMetrics {
    agent_type: String,
    executions: i64,
    completed: i64,
    failed: i64,
    cancelled: i64,
    /// Completed over finished (completed or failed); null before any finished.
    success_rate: Option<f64>,
    calls: i64,
    /// Outputs refused by their schema.
    refusals: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    /// Median and 95th percentile of the newest 1,000 completed executions, in ms.
    p50_duration_ms: Option<f64>,
    p95_duration_ms: Option<f64>,
}

/// A row of `agent_metrics`.
#[derive(sqlx::FromRow, Default)]
struct Counts {
    executions: i64,
    completed: i64,
    failed: i64,
    cancelled: i64,
    calls: i64,
    refusals: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
}

/// Metrics of every agent.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct MetricsPage {
    agents: Vec<AgentMetrics>,
}

/// Per agent, the caller's organization's executions: counts, success rate, p50/p95
/// duration, calls, schema refusals and tokens.
#[utoipa::path(
    get,
    path = "/api/v1/agents/metrics",
    tag = "agents",
    params(ReadParams, ToolboxHeaders),
    responses((status = 200, description = "Metrics per agent", body = MetricsPage)),
)]
async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let org = who.frontend(&req, Frontend::Toolbox)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let mut out = Vec::new();
    for agent in crate::agents::agents() {
        let c: Counts = sqlx::query_as(
            "SELECT executions, completed, failed, cancelled, calls, refusals, prompt_tokens, \
             completion_tokens FROM agent_metrics WHERE organization_id = $1 AND agent_type = $2",
        )
        .bind(org)
        .bind(&agent.name)
        .fetch_optional(&state.pool)
        .await?
        .unwrap_or_default();
        let (p50, p95): (Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), \
             percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM ( \
             SELECT duration_ms FROM task_executions WHERE organization_id = $1 \
             AND agent_type = $2 AND status = 'completed' AND duration_ms IS NOT NULL \
             ORDER BY finished_at DESC LIMIT $3) AS recent",
        )
        .bind(org)
        .bind(&agent.name)
        .bind(PERCENTILE_WINDOW)
        .fetch_one(&state.pool)
        .await?;
        let finished = c.completed + c.failed;
        out.push(AgentMetrics {
            agent_type: agent.name.clone(),
            executions: c.executions,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
            success_rate: (finished > 0).then(|| c.completed as f64 / finished as f64),
            calls: c.calls,
            refusals: c.refusals,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            p50_duration_ms: p50,
            p95_duration_ms: p95,
        });
    }
    Ok(HttpResponse::Ok().json(json!({ "agents": out })))
}

/// One agent's state across the deployment.
#[derive(Serialize, utoipa::ToSchema)]
struct AgentHealth {
    name: String,
    description: String,
    task_types: Vec<String>,
    /// `busy` while an execution runs, `idle` otherwise; `unavailable` when no provider is
    /// configured.
    status: String,
    /// Executions running now, and waiting (queued or interrupted).
    running: i32,
    queued: i32,
    last_active_at: Option<DateTime<Utc>>,
}

/// The agents' health.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct AgentsHealth {
    /// `ok`, or `degraded` when no provider is configured or a breaker is open.
    status: String,
    agents: Vec<AgentHealth>,
}

/// Each agent's state and load (executions running and waiting, all organizations).
#[utoipa::path(
    get,
    path = "/health/agents",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The agents", body = AgentsHealth)),
)]
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows: Vec<(String, i32, i32, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT agent_type, running, queued, last_active_at FROM agent_instances")
            .fetch_all(&state.pool)
            .await?;
    let available = !state.providers.is_empty();
    let open = crate::agents::breakers::views(&state.pool)
        .await
        .map_err(ApiError::internal)?
        .iter()
        .any(|b| b.state != "closed");
    let agents: Vec<AgentHealth> = crate::agents::agents()
        .iter()
        .map(|a| {
            let (running, queued, last) = rows
                .iter()
                .find(|r| r.0 == a.name)
                .map_or((0, 0, None), |r| (r.1, r.2, r.3));
            let status = match (available, running > 0) {
                (false, _) => "unavailable",
                (true, true) => "busy",
                (true, false) => "idle",
            };
            AgentHealth {
                name: a.name.clone(),
                description: a.description.clone(),
                task_types: a.tasks.iter().map(|t| t.name.clone()).collect(),
                status: status.into(),
                running,
                queued,
                last_active_at: last,
            }
        })
        .collect();
    let status = if available && !open { "ok" } else { "degraded" };
    Ok(HttpResponse::Ok().json(json!({ "status": status, "agents": agents })))
}

/// The breakers of every live process.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct BreakerList {
    breakers: Vec<crate::agents::breakers::BreakerView>,
}

/// Each provider breaker across the live processes: state, failure count, next probe, and
/// each process's own view.
#[utoipa::path(
    get,
    path = "/api/v1/system/circuit-breakers",
    tag = "agents",
    responses((status = 200, description = "The breakers", body = BreakerList)),
)]
async fn breakers(state: web::Data<AppState>, _who: Principal) -> Result<HttpResponse, ApiError> {
    let views = crate::agents::breakers::views(&state.pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(json!({ "breakers": views })))
}

/// The answer of a reset.
#[derive(Serialize, utoipa::ToSchema)]
struct ResetDone {
    name: String,
    /// `closed`: every process resets it within a second.
    state: String,
}

/// Closes breaker `name` (a provider's name) in every process. Operators only (the
/// account-wide admin role, 403 otherwise): a breaker is shared by every tenant, so an
/// organization's admin may read the breakers but not reset them.
#[utoipa::path(
    post,
    path = "/api/v1/system/circuit-breakers/{name}/reset",
    tag = "agents",
    params(("name" = String, Path, description = "The breaker (its provider's name)")),
    responses((status = 200, description = "Reset", body = ResetDone)),
)]
async fn reset_breaker(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    super::admin::require_operator(&state, &who).await?;
    let name = path.into_inner();
    let done = state
        .breakers
        .reset(&name, who.user_id, who.organization_id)
        .await
        .map_err(ApiError::internal)?;
    if !done {
        return Err(ApiError::not_found(format!(
            "no circuit breaker named `{name}`"
        )));
    }
    Ok(HttpResponse::Ok().json(ResetDone {
        name,
        state: "closed".into(),
    }))
}
