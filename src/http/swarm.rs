//! Quantum Swarm and Velocity Swarm (`/api/v1/swarm`): swarm tasks, their progress and
//! results.
//!
//! Every route needs `X-Frontend-Source: quantum` or `velocity`, enabled for the caller's
//! organization. Quantum optimizations are created from `quantum`, Velocity batches from
//! `velocity`; both frontends read all of their organization's swarm tasks. With
//! `QUANTUM_SWARM_ENABLED=false` (or `VELOCITY_SWARM_ENABLED=false`) requests from that
//! frontend answer 404 `feature_disabled`. Another organization's task is 404.
//!
//! Commands go to the task's actor and the scheduler (`crate::tasks`) runs the task; queries
//! read the `swarm_tasks` read models and accept `min_position` for read-your-writes.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use universal_events::identity::Frontend;
use universal_events::swarm::{
    BatchMode, QuantumConfig, SubtaskSpec, TaskConfig, TaskType, VelocityConfig,
};
use uuid::Uuid;

use super::command::{idempotent, meta, parse_json, wait_for_projection as wait, Answer, Page};
use super::error::command_error;
use super::guard::Principal;
use super::ApiError;
use crate::actors::swarm_task::{
    ScopedCommand, SwarmCommand, SwarmError, TaskStatus, MAX_DIMENSIONS, MAX_SEED,
};
use crate::projections::swarm::NAME as PROJECTION;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let enabled = actix_web::guard::fn_guard(|ctx| {
        ctx.app_data::<web::Data<AppState>>()
            .is_none_or(|s| s.config.quantum_swarm_enabled || s.config.velocity_swarm_enabled)
    });
    cfg.service(
        web::scope("/swarm")
            .guard(enabled)
            .route("/tasks", web::post().to(create_task))
            .route("/tasks", web::get().to(list_tasks))
            .route("/tasks/{id}", web::get().to(get_task))
            .route("/tasks/{id}/progress", web::get().to(progress))
            .route("/tasks/{id}/result", web::get().to(result))
            .route("/tasks/{id}/subtasks", web::get().to(subtasks))
            .route("/tasks/{id}/cancel", web::post().to(cancel_task)),
    )
    .service(web::scope("/swarm").default_service(web::to(|| async {
        Err::<HttpResponse, _>(disabled("Quantum and Velocity Swarm are"))
    })));
}

fn disabled(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "feature_disabled",
        format!("{what} disabled on this server"),
    )
}

/// The caller's organization and the swarm frontend it speaks for.
fn caller(
    state: &AppState,
    who: &Principal,
    req: &HttpRequest,
) -> Result<(Uuid, TaskType), ApiError> {
    let named = req
        .headers()
        .get("x-frontend-source")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase());
    let (frontend, kind) = match named.as_deref() {
        Some("velocity") => (Frontend::Velocity, TaskType::Velocity),
        // Anything else is refused by the Quantum check with the usual 403 message.
        _ => (Frontend::Quantum, TaskType::Quantum),
    };
    let org = who.frontend(req, frontend)?;
    match kind {
        TaskType::Quantum if !state.config.quantum_swarm_enabled => {
            Err(disabled("Quantum Swarm is"))
        }
        TaskType::Velocity if !state.config.velocity_swarm_enabled => {
            Err(disabled("Velocity Swarm is"))
        }
        _ => Ok((org, kind)),
    }
}

fn swarm_error(e: SwarmError) -> ApiError {
    match e {
        SwarmError::NotFound => ApiError::not_found("swarm task not found"),
        SwarmError::AlreadyExists => ApiError::conflict("swarm task already exists"),
        SwarmError::Invalid { field, message } => ApiError::validation(&field, message),
        SwarmError::Finished(status) => ApiError::new(
            StatusCode::CONFLICT,
            "task_finished",
            format!("the task has already {status}"),
        )
        .with_details(json!({ "status": status })),
        e @ (SwarmError::NotStartable(_) | SwarmError::NotRunning(_)) => {
            ApiError::conflict(e.to_string())
        }
        SwarmError::NotAnalysis => ApiError::not_found("analysis not found"),
    }
}

/// Weighs a new task of `org` before it is recorded (see `crate::tasks::admission`): 422
/// naming the field when no process could run it, 429 when the organization has too many
/// tasks waiting. Every route that creates a swarm task (Quantum, Velocity, analyses,
/// agent executions) calls it.
pub(crate) async fn admit(state: &AppState, create: &ScopedCommand) -> Result<(), ApiError> {
    use crate::tasks::admission::{check_cost, check_queue, Refusal};
    let SwarmCommand::Create { config, .. } = &create.cmd else {
        return Ok(());
    };
    let org = create.organization_id;
    let refusal = match check_cost(config, state.config.worker_memory_budget_mb) {
        Ok(()) => check_queue(&state.pool, org, state.config.swarm_max_queued_per_org).await,
        Err(r) => Err(r),
    };
    match refusal {
        Ok(()) => Ok(()),
        Err(Refusal::TooCostly { field, message }) => Err(ApiError::validation(&field, message)),
        Err(Refusal::TooManyQueued { limit }) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_queued",
            format!(
                "the organization has {limit} tasks waiting to run (SWARM_MAX_QUEUED_PER_ORG); \
                 wait for some to finish or cancel some"
            ),
        )
        .with_details(json!({ "limit": limit }))
        .retry_after(5)),
    }
}

/// Which kind of work: `quantum` (an optimization) or `velocity` (a batch).
#[derive(Deserialize, utoipa::ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum TypeBody {
    Quantum,
    Velocity,
}

/// Bounds: one `[lower, upper]` pair for every dimension, or a pair per dimension.
#[derive(Deserialize, utoipa::ToSchema, Clone)]
#[serde(untagged)]
enum BoundsBody {
    Same([f64; 2]),
    PerDimension(Vec<[f64; 2]>),
}

/// Settings of a particle swarm run. Left out: bounds fit the test function (±5.12 for
/// rastrigin and sphere, ±5 for rosenbrock, ±32.768 for ackley, ±600 for griewank, ±10
/// for an expression), 40 particles, 500 iterations, argmin's factors (inertia 0.721,
/// cognitive and social 1.193), and a seed derived from the task id (given back in
/// `config.seed`).
#[derive(Deserialize, utoipa::ToSchema, Clone)]
#[serde(deny_unknown_fields)]
struct QuantumBody {
    #[schema(minimum = 1, maximum = 100)]
    dimensions: u32,
    bounds: Option<BoundsBody>,
    #[schema(minimum = 1, maximum = 10000)]
    particles: Option<u32>,
    #[schema(minimum = 1, maximum = 1000000)]
    iterations: Option<u64>,
    #[schema(minimum = 0.0, maximum = 10.0)]
    inertia: Option<f64>,
    #[schema(minimum = 0.0, maximum = 10.0)]
    cognitive: Option<f64>,
    #[schema(minimum = 0.0, maximum = 10.0)]
    social: Option<f64>,
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    seed: Option<u64>,
}

/// One kind of subtask, repeated `count` times (default 1).
#[derive(Deserialize, utoipa::ToSchema, Clone)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum SubtaskBody {
    /// A prompt to an AI model (the default model when none is named).
    Prompt {
        prompt: String,
        model: Option<String>,
        count: Option<u32>,
    },
    /// A particle swarm optimization.
    Optimize {
        objective: String,
        config: QuantumBody,
        count: Option<u32>,
    },
    /// A call to a URL on the server's allow-list (`SWARM_HTTP_ALLOWLIST`).
    Http {
        method: Option<String>,
        url: String,
        body: Option<Value>,
        count: Option<u32>,
    },
}

/// Settings of a batch: 1 to 10,000 subtasks (repetitions counted). Left out: 8 at once,
/// 30 s per try, 2 retries from 200 ms backoff, best effort.
#[derive(Deserialize, utoipa::ToSchema, Clone)]
#[serde(deny_unknown_fields)]
struct VelocityBody {
    subtasks: Vec<SubtaskBody>,
    #[schema(minimum = 1, maximum = 256)]
    concurrency: Option<u32>,
    #[schema(minimum = 1, maximum = 600000)]
    timeout_ms: Option<u64>,
    #[schema(minimum = 0, maximum = 10)]
    retries: Option<u32>,
    #[schema(minimum = 0, maximum = 60000)]
    backoff_ms: Option<u64>,
    #[schema(value_type = Option<String>, pattern = "^(fail_fast|best_effort)$")]
    mode: Option<BatchMode>,
}

/// The settings of the task, by its type (documentation only: the body is parsed per
/// `type`, so that errors name the field).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ConfigBody {
    Quantum(QuantumBody),
    Velocity(VelocityBody),
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTask {
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    task_type: TypeBody,
    /// Quantum: `rastrigin`, `rosenbrock`, `sphere`, `ackley`, `griewank`, or an
    /// expression of `x1…xn` (e.g. `(x1 - 1)^2 + math::abs(x2)`); Velocity: a label.
    #[schema(max_length = 2000)]
    objective: String,
    #[schema(value_type = ConfigBody)]
    config: Value,
}

fn default_bound(objective: &str) -> f64 {
    match objective.trim().to_ascii_lowercase().as_str() {
        "rastrigin" | "sphere" => 5.12,
        "rosenbrock" => 5.0,
        "ackley" => 32.768,
        "griewank" => 600.0,
        _ => 10.0,
    }
}

fn quantum_config(objective: &str, body: QuantumBody, task_id: Uuid) -> QuantumConfig {
    let dimensions = body.dimensions;
    // Expanding a single pair is bounded by the dimension limit; past it the decider
    // refuses the dimensions first.
    let bounds = match body.bounds {
        _ if dimensions > MAX_DIMENSIONS => vec![],
        None => {
            let b = default_bound(objective);
            vec![[-b, b]; dimensions as usize]
        }
        Some(BoundsBody::Same(pair)) => vec![pair; dimensions as usize],
        Some(BoundsBody::PerDimension(list)) => list,
    };
    let seed = body.seed.unwrap_or_else(|| {
        let bytes: [u8; 8] = task_id.as_bytes()[8..16].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes) & MAX_SEED
    });
    QuantumConfig {
        dimensions,
        bounds,
        particles: body.particles.unwrap_or(40),
        iterations: body.iterations.unwrap_or(500),
        inertia: body.inertia.unwrap_or(1.0 / (2.0 * 2f64.ln())),
        cognitive: body.cognitive.unwrap_or(0.5 + 2f64.ln()),
        social: body.social.unwrap_or(0.5 + 2f64.ln()),
        seed,
    }
}

fn velocity_config(
    state: &AppState,
    body: VelocityBody,
    task_id: Uuid,
) -> Result<VelocityConfig, ApiError> {
    velocity_config_checked(body, task_id, |url| {
        state
            .outbound
            .check(url)
            .map(|_| ())
            .map_err(|r| r.to_string())
    })
}

/// The configuration of a task in the shape the Quantum and Velocity frontends send it
/// (defaults filled in as for a new task), for the legacy import. URLs are not checked: an
/// imported task is history and never runs.
pub fn legacy_config(
    task_type: TaskType,
    objective: &str,
    config: Value,
    task_id: Uuid,
) -> Result<TaskConfig, String> {
    match task_type {
        TaskType::Quantum => {
            let q: QuantumBody = serde_json::from_value(config).map_err(|e| e.to_string())?;
            Ok(TaskConfig::Quantum(quantum_config(objective, q, task_id)))
        }
        TaskType::Velocity => {
            let v: VelocityBody = serde_json::from_value(config).map_err(|e| e.to_string())?;
            velocity_config_checked(v, task_id, |_| Ok(()))
                .map(TaskConfig::Velocity)
                .map_err(|e| e.to_string())
        }
        other => Err(format!("{} tasks have no legacy form", other.as_str())),
    }
}

fn velocity_config_checked(
    body: VelocityBody,
    task_id: Uuid,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<VelocityConfig, ApiError> {
    let mut subtasks = Vec::with_capacity(body.subtasks.len());
    for (i, s) in body.subtasks.into_iter().enumerate() {
        subtasks.push(match s {
            SubtaskBody::Prompt {
                prompt,
                model,
                count,
            } => SubtaskSpec::Prompt {
                prompt,
                model,
                count: count.unwrap_or(1),
            },
            SubtaskBody::Optimize {
                objective,
                config,
                count,
            } => SubtaskSpec::Optimize {
                config: quantum_config(&objective, config, task_id),
                objective,
                count: count.unwrap_or(1),
            },
            SubtaskBody::Http {
                method,
                url,
                body,
                count,
            } => {
                if let Err(refusal) = check(&url) {
                    return Err(ApiError::validation(
                        &format!("config.subtasks[{i}].url"),
                        refusal,
                    ));
                }
                SubtaskSpec::Http {
                    method: method.unwrap_or_else(|| "GET".into()).to_ascii_uppercase(),
                    url,
                    body,
                    count: count.unwrap_or(1),
                }
            }
        });
    }
    Ok(VelocityConfig {
        subtasks,
        concurrency: body.concurrency.unwrap_or(8),
        timeout_ms: body.timeout_ms.unwrap_or(30_000),
        retries: body.retries.unwrap_or(2),
        backoff_ms: body.backoff_ms.unwrap_or(200),
        mode: body.mode.unwrap_or(BatchMode::BestEffort),
    })
}

fn config_error(e: serde_json::Error) -> ApiError {
    ApiError::validation("config", e.to_string())
}

/// Submits a task; it waits in the organization's queue until the scheduler starts it.
#[utoipa::path(
    post,
    path = "/api/v1/swarm/tasks",
    tag = "swarm",
    request_body = CreateTask,
    params(SwarmHeaders, super::schema::CommandHeaders),
    responses(
        (status = 201, description = "Queued", body = TaskCreated),
    ),
)]
async fn create_task(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (org, frontend) = caller(&state, &who, &req)?;
    who.require_writer()?;
    let input: CreateTask = parse_json(&body)?;
    let meta = meta(&req, &who)?;
    // With an idempotency key the id follows from it, so a retry names the same task.
    let id = Uuid::new_v5(&meta.command_id, b"swarm_task");
    let (task_type, config) = match input.task_type {
        TypeBody::Quantum => {
            let q: QuantumBody = serde_json::from_value(input.config).map_err(config_error)?;
            (
                TaskType::Quantum,
                TaskConfig::Quantum(quantum_config(&input.objective, q, id)),
            )
        }
        TypeBody::Velocity => {
            let v: VelocityBody = serde_json::from_value(input.config).map_err(config_error)?;
            (
                TaskType::Velocity,
                TaskConfig::Velocity(velocity_config(&state, v, id)?),
            )
        }
    };
    if task_type != frontend {
        return Err(ApiError::validation(
            "type",
            format!(
                "the {} frontend creates {} tasks",
                frontend.as_str(),
                frontend.as_str()
            ),
        ));
    }
    let cmd = ScopedCommand {
        organization_id: org,
        cmd: SwarmCommand::Create {
            task_id: id,
            user_id: who.user_id,
            task_type,
            objective: input.objective,
            config,
            at: Utc::now(),
        },
    };
    idempotent(&state.pool, &req, &who, &body, || async {
        admit(&state, &cmd).await?;
        let mut meta = meta.clone();
        meta.organization_id = Some(org);
        let reply = state
            .registries
            .swarm_tasks
            .execute(id, cmd, None, meta)
            .await
            .map_err(|e| command_error(e, swarm_error))?;
        state.swarm.created(reply.position);
        let mut answer = Answer::of(StatusCode::CREATED, id, &reply);
        answer.body["status"] = json!("queued");
        answer.body["location"] = json!(format!("/api/v1/swarm/tasks/{id}"));
        Ok(answer)
    })
    .await
}

/// Cancels a queued, running or interrupted task; what was recorded so far stays.
/// Cancelling a cancelled task changes nothing; a completed or failed one is 409.
#[utoipa::path(
    post,
    path = "/api/v1/swarm/tasks/{id}/cancel",
    tag = "swarm",
    params(("id" = Uuid, Path, description = "The task"), SwarmHeaders, super::schema::CommandHeaders),
    responses(
        (status = 200, description = "Cancelled", body = TaskCreated),
    ),
)]
async fn cancel_task(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (org, _) = caller(&state, &who, &req)?;
    who.require_writer()?;
    let id = path.into_inner();
    let meta = meta(&req, &who)?;
    let expected = super::command::if_match(&req)?;
    idempotent(&state.pool, &req, &who, &body, || async {
        let mut meta = meta.clone();
        meta.organization_id = Some(org);
        let cmd = ScopedCommand {
            organization_id: org,
            cmd: SwarmCommand::Cancel { at: Utc::now() },
        };
        let reply = state
            .registries
            .swarm_tasks
            .execute(id, cmd, expected, meta)
            .await
            .map_err(|e| command_error(e, swarm_error))?;
        state.swarm.cancel_local(id);
        let mut answer = Answer::of(StatusCode::OK, id, &reply);
        answer.body["status"] = json!("cancelled");
        Ok(answer)
    })
    .await
}

/// The frontends of the swarm routes.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum SwarmSource {
    Quantum,
    Velocity,
}

/// Sent with every swarm request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct SwarmHeaders {
    /// Names the frontend: `quantum` or `velocity`, which must be enabled for the caller's
    /// organization (otherwise 403 `frontend_access_denied`).
    #[param(rename = "X-Frontend-Source", value_type = SwarmSource, inline)]
    x_frontend_source: String,
}

/// A command's answer.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TaskCreated {
    id: Uuid,
    version: i64,
    position: i64,
    #[schema(value_type = String)]
    status: String,
    location: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    organization_id: Uuid,
    user_id: Uuid,
    r#type: String,
    objective: String,
    config: Value,
    status: String,
    created_at: DateTime<Utc>,
    created_position: i64,
    attempt: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    iteration: i64,
    best_cost: Option<f64>,
    best_position: Option<Value>,
    evaluations: i64,
    total: i64,
    done: i64,
    failed: i64,
    result: Option<Value>,
    error: Option<String>,
    version: i64,
    worker: Option<String>,
}

const TASK_COLUMNS: &str = "id, organization_id, user_id, type, objective, config, status, \
    created_at, created_position, attempt, started_at, finished_at, iteration, best_cost, \
    best_position, evaluations, total, done, failed, result, error, version, worker";

/// A swarm task: the legacy fields (`id`, `user_id`, `type`, `objective`, `config`,
/// `status`, `created_at`) and where it stands.
#[derive(Serialize, utoipa::ToSchema)]
struct TaskView {
    id: Uuid,
    user_id: Uuid,
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    task_type: String,
    objective: String,
    #[schema(value_type = Object)]
    config: Value,
    /// `queued`, `running`, `completed`, `failed`, `cancelled` or `interrupted`.
    status: String,
    created_at: DateTime<Utc>,
    organization_id: Uuid,
    /// The current (or last) run; above 1 after an interrupted run was resumed.
    attempt: i32,
    /// The process that runs (or ran) that attempt (`host:pid:id`); null before a worker
    /// claimed it.
    worker: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    version: i64,
    progress: ProgressView,
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    error: Option<String>,
}

/// Progress: an optimization's best point so far, or a batch's counts with its
/// throughput (subtasks per second since it started) and estimated seconds left.
/// Named apart from the analysis service's `ProgressView`, which would take its place in the
/// document.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SwarmProgress)]
struct ProgressView {
    iteration: i64,
    best_cost: Option<f64>,
    #[schema(value_type = Option<Vec<f64>>)]
    best_position: Option<Value>,
    evaluations: i64,
    total: i64,
    done: i64,
    failed: i64,
    throughput: Option<f64>,
    eta_seconds: Option<f64>,
}

impl TaskRow {
    fn view(self) -> TaskView {
        let end = self.finished_at.unwrap_or_else(Utc::now);
        let recorded = self.done + self.failed;
        let throughput = self
            .started_at
            .filter(|_| self.r#type == "velocity")
            .map(|s| (end - s).num_milliseconds().max(1) as f64 / 1000.0)
            .map(|secs| recorded as f64 / secs);
        let eta_seconds = throughput
            .filter(|t| *t > 0.0 && self.finished_at.is_none())
            .map(|t| (self.total - recorded).max(0) as f64 / t);
        TaskView {
            id: self.id,
            user_id: self.user_id,
            task_type: self.r#type,
            objective: self.objective,
            config: self.config,
            status: self.status,
            created_at: self.created_at,
            organization_id: self.organization_id,
            attempt: self.attempt,
            worker: self.worker,
            started_at: self.started_at,
            finished_at: self.finished_at,
            version: self.version,
            progress: ProgressView {
                iteration: self.iteration,
                best_cost: self.best_cost,
                best_position: self.best_position,
                evaluations: self.evaluations,
                total: self.total,
                done: self.done,
                failed: self.failed,
                throughput,
                eta_seconds,
            },
            result: self.result,
            error: self.error,
        }
    }
}

/// A page of tasks.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TaskPage {
    items: Vec<TaskView>,
    next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only tasks of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", pattern = "^(quantum|velocity|analysis|agent)$")]
    task_type: Option<String>,
    /// Only tasks in this state.
    #[param(pattern = "^(queued|running|completed|failed|cancelled|interrupted)$")]
    status: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// Lists the organization's swarm tasks, newest first; `next_cursor` continues.
#[utoipa::path(
    get,
    path = "/api/v1/swarm/tasks",
    tag = "swarm",
    params(ListParams, SwarmHeaders),
    responses((status = 200, description = "Tasks, newest first", body = TaskPage)),
)]
async fn list_tasks(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let (org, _) = caller(&state, &who, &req)?;
    if let Some(t) = &params.task_type {
        TaskType::parse(t).ok_or_else(|| {
            ApiError::bad_request("type must be quantum, velocity, analysis or agent")
        })?;
    }
    if let Some(s) = &params.status {
        TaskStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "status must be queued, running, completed, failed, cancelled or interrupted",
            )
        })?;
    }
    let page = Page::parse(params.limit, (50, 500), &params.cursor, i64::MAX)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let mut rows: Vec<TaskRow> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM swarm_tasks WHERE organization_id = $1 \
         AND ($2::text IS NULL OR type = $2) AND ($3::text IS NULL OR status = $3) \
         AND created_position < $4 ORDER BY created_position DESC LIMIT $5"
    ))
    .bind(org)
    .bind(&params.task_type)
    .bind(&params.status)
    .bind(page.cursor)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.created_position);
    let items: Vec<TaskView> = rows.into_iter().map(TaskRow::view).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReadParams {
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

async fn find_task(state: &AppState, org: Uuid, id: Uuid) -> Result<TaskRow, ApiError> {
    super::command::find_in_org(
        &state.pool,
        ("swarm_tasks", TASK_COLUMNS),
        org,
        id,
        "swarm task",
    )
    .await
}

/// One task of the caller's organization; another organization's is "not found".
#[utoipa::path(
    get,
    path = "/api/v1/swarm/tasks/{id}",
    tag = "swarm",
    params(("id" = Uuid, Path, description = "The task"), ReadParams, SwarmHeaders),
    responses((status = 200, description = "The task", body = TaskView)),
)]
async fn get_task(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (org, _) = caller(&state, &who, &req)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let row = find_task(&state, org, path.into_inner()).await?;
    let version = row.version;
    Ok(super::command::with_etag(version, &row.view()))
}

/// What a finished task produced: for an optimization the best position, its cost, the
/// iterations, function evaluations and time; for a batch its counts. `result` is null
/// until the task has completed; a failed task has its `error`.
#[utoipa::path(
    get,
    path = "/api/v1/swarm/tasks/{id}/result",
    tag = "swarm",
    params(("id" = Uuid, Path, description = "The task"), ReadParams, SwarmHeaders),
    responses((status = 200, description = "The task's result", body = TaskResultView)),
)]
async fn result(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (org, _) = caller(&state, &who, &req)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let row = find_task(&state, org, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": row.id,
        "status": row.status,
        "result": row.result,
        "error": row.error,
    })))
}

/// A task's result.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TaskResultView {
    id: Uuid,
    status: String,
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    error: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SeriesParams {
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// One point of a progress series: an optimization's best cost at an iteration, or a
/// batch's counts after a chunk.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct ProgressPoint {
    position: i64,
    attempt: i32,
    iteration: Option<i64>,
    best_cost: Option<f64>,
    evaluations: Option<i64>,
    done: Option<i64>,
    failed: Option<i64>,
    at: DateTime<Utc>,
}

/// A page of progress points.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ProgressPage {
    items: Vec<ProgressPoint>,
    next_cursor: Option<String>,
}

/// A task's progress series, oldest first (one point per recorded report, at most a few
/// per second); `next_cursor` continues.
#[utoipa::path(
    get,
    path = "/api/v1/swarm/tasks/{id}/progress",
    tag = "swarm",
    params(("id" = Uuid, Path, description = "The task"), SeriesParams, SwarmHeaders),
    responses((status = 200, description = "Progress, oldest first", body = ProgressPage)),
)]
async fn progress(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<SeriesParams>,
) -> Result<HttpResponse, ApiError> {
    let (org, _) = caller(&state, &who, &req)?;
    let page = Page::parse(params.limit, (100, 500), &params.cursor, 0)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let id = path.into_inner();
    find_task(&state, org, id).await?;
    let mut rows: Vec<ProgressPoint> = sqlx::query_as(
        "SELECT position, attempt, iteration, best_cost, evaluations, done, failed, at \
         FROM swarm_progress WHERE task_id = $1 AND position > $2 ORDER BY position LIMIT $3",
    )
    .bind(id)
    .bind(page.cursor)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = page.finish(&mut rows, |r| r.position);
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SubtaskParams {
    /// Only subtasks that ended so.
    #[param(pattern = "^(done|failed)$")]
    status: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Answer once the read model has reached this log position (at most 5 s, then 504).
    #[param(minimum = 0)]
    min_position: Option<i64>,
}

/// The recorded outcome of one subtask of a batch.
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct SubtaskRow {
    index: i32,
    status: String,
    attempts: i32,
    #[schema(value_type = Option<Object>)]
    output: Option<Value>,
    error: Option<String>,
    duration_ms: i64,
}

/// A page of subtasks.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct SubtaskPage {
    items: Vec<SubtaskRow>,
    next_cursor: Option<String>,
}

/// The finished subtasks of a batch, by index; `next_cursor` continues.
#[utoipa::path(
    get,
    path = "/api/v1/swarm/tasks/{id}/subtasks",
    tag = "swarm",
    params(("id" = Uuid, Path, description = "The task"), SubtaskParams, SwarmHeaders),
    responses((status = 200, description = "Subtasks by index", body = SubtaskPage)),
)]
async fn subtasks(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    path: web::Path<Uuid>,
    params: web::Query<SubtaskParams>,
) -> Result<HttpResponse, ApiError> {
    let (org, _) = caller(&state, &who, &req)?;
    if let Some(s) = &params.status {
        if s != "done" && s != "failed" {
            return Err(ApiError::bad_request("status must be done or failed"));
        }
    }
    let page = Page::parse(params.limit, (100, 500), &params.cursor, 0)?;
    wait(&state, PROJECTION, params.min_position).await?;
    let id = path.into_inner();
    find_task(&state, org, id).await?;
    let mut rows: Vec<SubtaskRow> = sqlx::query_as(
        "SELECT index, status, attempts, output, error, duration_ms FROM swarm_subtasks \
         WHERE task_id = $1 AND index >= $2 AND ($3::text IS NULL OR status = $3) \
         ORDER BY index LIMIT $4",
    )
    .bind(id)
    .bind(page.cursor.min(i64::from(i32::MAX)) as i32)
    .bind(&params.status)
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    // Subtask cursors name the first index of the next page (inclusive).
    let next_cursor = if rows.len() as i64 > page.limit {
        let next = rows.pop().map(|r| r.index.to_string());
        rows.truncate(page.limit as usize);
        next
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": next_cursor })))
}
