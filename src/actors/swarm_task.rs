//! A swarm task (entity kind `swarm_task`): a Quantum Swarm optimization run or a Velocity
//! Swarm batch, from submission to its result.
//!
//! The work itself runs off the actor's mailbox (see `crate::tasks`); the scheduler and its
//! workers report with commands that the decider turns into events. The rules:
//!
//! - **Lifecycle.** `queued → running → completed | failed | cancelled`; `running →
//!   interrupted` when the process running it died, and `interrupted → running` again when
//!   the scheduler starts the next attempt. Nothing leaves a terminal state.
//! - **Attempts fence the workers.** `Start` numbers the attempt; every report names the
//!   attempt it belongs to and is refused with [`SwarmError::NotRunning`] unless it is the
//!   current attempt of a running task. A worker takes that refusal as "stop": after a
//!   cancel, or after another process took the task over, an old worker records nothing.
//! - **Progress is coalesced and monotone.** An optimization report older than (or as old
//!   as) the last one recorded is dropped without an event; a subtask chunk records only the
//!   subtasks not recorded before, so a resent chunk writes nothing.
//! - **Cancel** works on queued, running and interrupted tasks and records what was done so
//!   far; cancelling a finished task is refused ([`SwarmError::Finished`]), cancelling a
//!   cancelled one records nothing.
//! - **Config is validated here**, field by field ([`SwarmError::Invalid`] names the field),
//!   so that no recorded task can fail on a setting. Another organization's task answers as
//!   if it did not exist.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::swarm::{
    AgentCallRecorded, AgentConfig, AnalysisConfig, AnalysisProgressed, AnalysisResults,
    AnalysisResultsRecorded, InsightRecorded, InsightSource, OptimizationProgressed, QuantumConfig,
    SubtaskOutcome, SubtaskSpec, SubtaskStatus, SubtasksRecorded, SwarmTaskCancelled,
    SwarmTaskCompleted, SwarmTaskCreated, SwarmTaskEvent, SwarmTaskFailed, SwarmTaskInterrupted,
    SwarmTaskStarted, TaskConfig, TaskResult, TaskType, VelocityConfig,
};
use uuid::Uuid;

use super::runtime::Entity;
use super::validate;
use crate::swarm::objective::Objective;

/// Most variables of an optimization.
pub const MAX_DIMENSIONS: u32 = 100;
/// Most particles of a swarm.
pub const MAX_PARTICLES: u32 = 10_000;
/// Most iterations of a run.
pub const MAX_ITERATIONS: u64 = 1_000_000;
/// Largest inertia, cognitive or social factor.
pub const MAX_FACTOR: f64 = 10.0;
/// Largest seed: JSON numbers stay exact up to 2⁵³ − 1 in every client.
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Most subtasks of a batch.
pub const MAX_SUBTASKS: u64 = 10_000;
/// Most subtask kinds listed in a batch (each may repeat).
pub const MAX_SPECS: usize = 10_000;
/// Most subtasks of one batch running at once.
pub const MAX_BATCH_CONCURRENCY: u32 = 256;
/// Longest timeout of one try of a subtask.
pub const MAX_SUBTASK_TIMEOUT_MS: u64 = 600_000;
/// Most retries of a subtask.
pub const MAX_RETRIES: u32 = 10;
/// Longest first backoff between tries.
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// Longest objective label, prompt, model name or URL.
pub const MAX_OBJECTIVE: usize = 2_000;
pub const MAX_PROMPT: usize = 32_000;
pub const MAX_LABEL: usize = 200;
pub const MAX_URL: usize = 2_000;
/// Longest recorded error message.
pub const MAX_ERROR: usize = 2_000;
/// Most outcomes in one chunk.
pub const MAX_CHUNK: usize = 1_000;
/// Most documents of an analysis, characters of one, and of all of them.
pub const MAX_DOCUMENTS: usize = 50;
pub const MAX_DOCUMENT_TEXT: usize = 100_000;
pub const MAX_ANALYSIS_TEXT: usize = 400_000;
/// Most questions of an analysis, and characters of one.
pub const MAX_QUESTIONS: usize = 20;
pub const MAX_QUESTION: usize = 1_000;
/// Most insights on an analysis, and characters of one.
pub const MAX_INSIGHTS: u32 = 200;
pub const MAX_INSIGHT: usize = 8_000;
/// Largest `task_data` of an agent execution, as JSON.
pub const MAX_TASK_DATA: usize = 16 * 1024;
/// How the error of an abandoned task begins.
pub const ABANDONED: &str = "abandoned: ";
/// Most provider calls of one attempt of an agent execution (the first and one retry).
pub const MAX_AGENT_CALLS: u32 = 2;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    #[default]
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone)]
pub enum SwarmCommand {
    Create {
        task_id: Uuid,
        user_id: Uuid,
        task_type: TaskType,
        objective: String,
        config: TaskConfig,
        at: DateTime<Utc>,
    },
    /// From the scheduler: run the next attempt.
    Start { attempt: u32, at: DateTime<Utc> },
    /// From a worker that claimed the next attempt's lease: run it here, on `worker`.
    Claim {
        attempt: u32,
        worker: String,
        at: DateTime<Utc>,
    },
    /// From an optimization worker: the best point so far.
    RecordProgress {
        attempt: u32,
        iteration: u64,
        best_cost: f64,
        best_position: Vec<f64>,
        evaluations: u64,
        at: DateTime<Utc>,
    },
    /// From a batch worker: a chunk of finished subtasks.
    RecordSubtasks {
        attempt: u32,
        outcomes: Vec<SubtaskOutcome>,
        at: DateTime<Utc>,
    },
    Complete {
        attempt: u32,
        result: TaskResult,
        at: DateTime<Utc>,
    },
    Fail {
        attempt: u32,
        error: String,
        at: DateTime<Utc>,
    },
    /// From a user.
    Cancel { at: DateTime<Utc> },
    /// From the scheduler: the attempt's process died (or, `released`, let it go on a
    /// graceful shutdown).
    Interrupt {
        attempt: u32,
        released: bool,
        at: DateTime<Utc>,
    },
    /// From the scheduler: the task's attempts killed their process too often; it is failed
    /// and never started again.
    Abandon { reason: String, at: DateTime<Utc> },
    /// From an analysis worker: `done` of `total` documents are through.
    RecordAnalysisProgress {
        attempt: u32,
        done: u64,
        total: u64,
        document: String,
        at: DateTime<Utc>,
    },
    /// From an analysis worker: the results (recorded once per task).
    RecordAnalysisResults {
        attempt: u32,
        results: AnalysisResults,
        at: DateTime<Utc>,
    },
    /// An insight: from the analysis's AI step (`attempt` set) or from a user.
    RecordInsight {
        insight_id: Uuid,
        source: InsightSource,
        user_id: Option<Uuid>,
        attempt: Option<u32>,
        model: Option<String>,
        text: String,
        at: DateTime<Utc>,
    },
    /// From an agent worker: one provider call and, if its output was refused, why.
    RecordCall {
        attempt: u32,
        call: u32,
        model: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        duration_ms: u64,
        error: Option<String>,
        at: DateTime<Utc>,
    },
}

/// A command on behalf of an organization: a task answers only to its own.
#[derive(Debug, Clone)]
pub struct ScopedCommand {
    pub organization_id: Uuid,
    pub cmd: SwarmCommand,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SwarmError {
    #[error("swarm task not found")]
    NotFound,
    #[error("swarm task already exists")]
    AlreadyExists,
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the task is {0}, not waiting to run")]
    NotStartable(&'static str),
    #[error("attempt {0} of the task is not running")]
    NotRunning(u32),
    #[error("the task has already {0}")]
    Finished(&'static str),
    #[error("the task is not an analysis")]
    NotAnalysis,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SwarmError {
    SwarmError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Which subtasks of a batch are recorded: one bit per subtask.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recorded(Vec<u64>);

impl Recorded {
    pub fn contains(&self, index: u32) -> bool {
        let (word, bit) = (index as usize / 64, index % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn insert(&mut self, index: u32) {
        let (word, bit) = (index as usize / 64, index % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SwarmTask {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub task_type: Option<TaskType>,
    pub objective: String,
    pub config: Option<TaskConfig>,
    pub status: TaskStatus,
    /// The current (or last) attempt; 0 before the first start.
    pub attempt: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Optimization progress: the last recorded iteration and best point.
    pub iteration: u64,
    pub best_cost: Option<f64>,
    pub best_position: Vec<f64>,
    pub evaluations: u64,
    /// Batch progress.
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub recorded: Recorded,
    pub result: Option<TaskResult>,
    pub error: Option<String>,
    /// Analysis progress: documents through in the current attempt.
    #[serde(default)]
    pub analysis_done: u64,
    #[serde(default)]
    pub analysis_results: Option<AnalysisResults>,
    #[serde(default)]
    pub insights: u32,
    #[serde(default)]
    pub insight_ids: Vec<Uuid>,
    /// Whether the AI step recorded its insight (a resumed attempt does not ask again).
    #[serde(default)]
    pub ai_insight: bool,
    /// Agent executions: provider calls recorded (all attempts), the last call of the
    /// current attempt, and the tokens spent.
    #[serde(default)]
    pub calls: u32,
    #[serde(default)]
    pub attempt_calls: u32,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    /// Attempts that ended with the death of their process (interruptions that were not a
    /// graceful release): the scheduler abandons the task at `TASK_MAX_ATTEMPTS`.
    #[serde(default)]
    pub deaths: u32,
    /// The process that runs (or ran) the current attempt, when a worker claimed it.
    #[serde(default)]
    pub worker: Option<String>,
}

impl SwarmTask {
    /// The event that starts attempt `attempt` (on `worker`, when a worker claimed it).
    fn start(
        &self,
        attempt: u32,
        worker: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SwarmTaskEvent>, SwarmError> {
        if !matches!(self.status, TaskStatus::Queued | TaskStatus::Interrupted) {
            return Err(SwarmError::NotStartable(self.status.as_str()));
        }
        if attempt != self.attempt + 1 {
            return Err(SwarmError::NotRunning(attempt));
        }
        Ok(vec![SwarmTaskEvent::SwarmTaskStarted(SwarmTaskStarted {
            attempt,
            resumed_from: self.recorded_count(),
            started_at: at,
            worker,
        })])
    }

    /// The running attempt, if `attempt` is it.
    fn running(&self, attempt: u32) -> Result<(), SwarmError> {
        if self.status == TaskStatus::Running && self.attempt == attempt {
            Ok(())
        } else {
            Err(SwarmError::NotRunning(attempt))
        }
    }

    /// The batch settings, for a Velocity task.
    pub fn batch(&self) -> Option<&VelocityConfig> {
        match &self.config {
            Some(TaskConfig::Velocity(v)) => Some(v),
            _ => None,
        }
    }

    /// The analysis settings, for an analysis.
    pub fn analysis_config(&self) -> Option<&AnalysisConfig> {
        match &self.config {
            Some(TaskConfig::Analysis(a)) => Some(a),
            _ => None,
        }
    }

    fn analysis(&self) -> Result<&AnalysisConfig, SwarmError> {
        self.analysis_config().ok_or(SwarmError::NotAnalysis)
    }

    /// Subtasks recorded so far (done or failed).
    pub fn recorded_count(&self) -> u64 {
        self.done + self.failed
    }
}

/// Checks the settings of one optimization; `prefix` names where they sit in the request.
pub fn check_quantum(
    prefix: &str,
    objective_field: &str,
    objective: &str,
    c: &QuantumConfig,
) -> Result<(), SwarmError> {
    let f = |name: &str| format!("{prefix}{name}");
    if c.dimensions == 0 || c.dimensions > MAX_DIMENSIONS {
        return Err(invalid(
            f("dimensions"),
            format!("must be 1 to {MAX_DIMENSIONS}"),
        ));
    }
    if c.bounds.len() != c.dimensions as usize {
        return Err(invalid(
            f("bounds"),
            format!(
                "must give [lower, upper] for each of the {} dimensions",
                c.dimensions
            ),
        ));
    }
    for (i, [lo, hi]) in c.bounds.iter().enumerate() {
        let field = f(&format!("bounds[{i}]"));
        validate::quantity(*lo).map_err(|m| invalid(&field, m))?;
        validate::quantity(*hi).map_err(|m| invalid(&field, m))?;
        if lo >= hi {
            return Err(invalid(field, "the lower bound must be below the upper"));
        }
    }
    if c.particles == 0 || c.particles > MAX_PARTICLES {
        return Err(invalid(
            f("particles"),
            format!("must be 1 to {MAX_PARTICLES}"),
        ));
    }
    if c.iterations == 0 || c.iterations > MAX_ITERATIONS {
        return Err(invalid(
            f("iterations"),
            format!("must be 1 to {MAX_ITERATIONS}"),
        ));
    }
    for (name, v) in [
        ("inertia", c.inertia),
        ("cognitive", c.cognitive),
        ("social", c.social),
    ] {
        if !v.is_finite() || !(0.0..=MAX_FACTOR).contains(&v) {
            return Err(invalid(f(name), format!("must be 0 to {MAX_FACTOR}")));
        }
    }
    if c.seed > MAX_SEED {
        return Err(invalid(f("seed"), format!("must be 0 to {MAX_SEED}")));
    }
    Objective::parse(objective, c.dimensions).map_err(|m| invalid(objective_field, m))?;
    Ok(())
}

/// Checks the settings of an analysis.
pub fn check_analysis(c: &AnalysisConfig) -> Result<(), SwarmError> {
    validate::name(&c.title, MAX_LABEL).map_err(|m| invalid("title", m))?;
    if c.documents.is_empty() || c.documents.len() > MAX_DOCUMENTS {
        return Err(invalid(
            "documents",
            format!("must list 1 to {MAX_DOCUMENTS} documents"),
        ));
    }
    let mut all = 0usize;
    for (i, d) in c.documents.iter().enumerate() {
        validate::name(&d.name, MAX_LABEL)
            .map_err(|m| invalid(format!("documents[{i}].name"), m))?;
        validate::body(&d.text, MAX_DOCUMENT_TEXT)
            .map_err(|m| invalid(format!("documents[{i}].text"), m))?;
        all += d.text.chars().count();
    }
    if all > MAX_ANALYSIS_TEXT {
        return Err(invalid(
            "documents",
            format!("must hold at most {MAX_ANALYSIS_TEXT} characters in all; these hold {all}"),
        ));
    }
    if c.questions.len() > MAX_QUESTIONS {
        return Err(invalid(
            "questions",
            format!("must list at most {MAX_QUESTIONS} questions"),
        ));
    }
    for (i, q) in c.questions.iter().enumerate() {
        validate::body(q, MAX_QUESTION).map_err(|m| invalid(format!("questions[{i}]"), m))?;
    }
    if let Some(model) = &c.model {
        validate::name(model, MAX_LABEL).map_err(|m| invalid("model", m))?;
    }
    Ok(())
}

/// Checks the settings of a batch.
pub fn check_velocity(c: &VelocityConfig) -> Result<(), SwarmError> {
    if c.subtasks.is_empty() || c.subtasks.len() > MAX_SPECS {
        return Err(invalid(
            "config.subtasks",
            format!("must list 1 to {MAX_SPECS} subtasks"),
        ));
    }
    let total = c.total();
    if total == 0 || total > MAX_SUBTASKS {
        return Err(invalid(
            "config.subtasks",
            format!(
                "must hold 1 to {MAX_SUBTASKS} subtasks, repetitions counted; this holds {total}"
            ),
        ));
    }
    for (i, spec) in c.subtasks.iter().enumerate() {
        let at = |name: &str| format!("config.subtasks[{i}].{name}");
        if spec.count() == 0 {
            return Err(invalid(at("count"), "must be at least 1"));
        }
        match spec {
            SubtaskSpec::Prompt { prompt, model, .. } => {
                validate::body(prompt, MAX_PROMPT).map_err(|m| invalid(at("prompt"), m))?;
                if let Some(model) = model {
                    validate::name(model, MAX_LABEL).map_err(|m| invalid(at("model"), m))?;
                }
            }
            SubtaskSpec::Optimize {
                objective, config, ..
            } => check_quantum(
                &format!("config.subtasks[{i}].config."),
                &at("objective"),
                objective,
                config,
            )?,
            SubtaskSpec::Http { method, url, .. } => {
                if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                    return Err(invalid(
                        at("method"),
                        "must be GET, POST, PUT, PATCH or DELETE",
                    ));
                }
                validate::name(url, MAX_URL).map_err(|m| invalid(at("url"), m))?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(at("url"), "must be an http or https URL"));
                }
            }
        }
    }
    if c.concurrency == 0 || c.concurrency > MAX_BATCH_CONCURRENCY {
        return Err(invalid(
            "config.concurrency",
            format!("must be 1 to {MAX_BATCH_CONCURRENCY}"),
        ));
    }
    if c.timeout_ms == 0 || c.timeout_ms > MAX_SUBTASK_TIMEOUT_MS {
        return Err(invalid(
            "config.timeout_ms",
            format!("must be 1 to {MAX_SUBTASK_TIMEOUT_MS}"),
        ));
    }
    if c.retries > MAX_RETRIES {
        return Err(invalid(
            "config.retries",
            format!("must be 0 to {MAX_RETRIES}"),
        ));
    }
    if c.backoff_ms > MAX_BACKOFF_MS {
        return Err(invalid(
            "config.backoff_ms",
            format!("must be 0 to {MAX_BACKOFF_MS}"),
        ));
    }
    Ok(())
}

/// Checks an agent execution against the registry: a known agent and task type, and
/// `task_data` valid against the task's input schema (the error names the field).
pub fn check_agent(c: &AgentConfig) -> Result<(), SwarmError> {
    let task = crate::agents::task(&c.agent_type, &c.task_type).map_err(|e| match e {
        crate::agents::LookupError::UnknownAgent { .. } => invalid("agent_type", e.to_string()),
        crate::agents::LookupError::UnknownTask { .. } => invalid("task_type", e.to_string()),
    })?;
    let size = serde_json::to_vec(&c.task_data).map_or(usize::MAX, |v| v.len());
    if size > MAX_TASK_DATA {
        return Err(invalid(
            "task_data",
            format!("must be at most {MAX_TASK_DATA} bytes of JSON"),
        ));
    }
    crate::agents::check_input(task, &c.task_data).map_err(|m| match m.split_once(": ") {
        Some((field, message)) => invalid(field, message),
        None => invalid("task_data", m),
    })?;
    validate::name(&c.model, MAX_LABEL).map_err(|m| invalid("model", m))?;
    Ok(())
}

fn check_time(field: &str, at: DateTime<Utc>) -> Result<(), SwarmError> {
    validate::time(at, at).map_err(|m| invalid(field, m))
}

impl Entity for SwarmTask {
    type Command = ScopedCommand;
    type Event = SwarmTaskEvent;
    type Error = SwarmError;

    const CATEGORY: &'static str = "swarm_task";

    fn decide(&self, scoped: &ScopedCommand) -> Result<Vec<SwarmTaskEvent>, SwarmError> {
        self.decide_in(scoped.organization_id, &scoped.cmd)
    }

    fn evolve(&mut self, event: &SwarmTaskEvent) {
        self.apply(event)
    }
}

impl SwarmTask {
    /// The rules, for a command sent on behalf of organization `org`.
    pub fn decide_in(
        &self,
        org: Uuid,
        cmd: &SwarmCommand,
    ) -> Result<Vec<SwarmTaskEvent>, SwarmError> {
        if self.id.is_some() && self.organization_id != Some(org) {
            return Err(SwarmError::NotFound);
        }
        use SwarmCommand as C;
        use SwarmTaskEvent as E;
        if self.id.is_none() && !matches!(cmd, C::Create { .. }) {
            return Err(SwarmError::NotFound);
        }
        match cmd {
            C::Create {
                task_id,
                user_id,
                task_type,
                objective,
                config,
                at,
            } => {
                if self.id.is_some() {
                    return Err(SwarmError::AlreadyExists);
                }
                check_time("created_at", *at)?;
                match (task_type, config) {
                    (TaskType::Quantum, TaskConfig::Quantum(c)) => {
                        check_quantum("config.", "objective", objective, c)?
                    }
                    (TaskType::Velocity, TaskConfig::Velocity(c)) => {
                        validate::text(objective, MAX_OBJECTIVE)
                            .map_err(|m| invalid("objective", m))?;
                        check_velocity(c)?
                    }
                    (TaskType::Analysis, TaskConfig::Analysis(c)) => {
                        validate::text(objective, MAX_OBJECTIVE)
                            .map_err(|m| invalid("objective", m))?;
                        check_analysis(c)?
                    }
                    (TaskType::Agent, TaskConfig::Agent(c)) => {
                        validate::text(objective, MAX_OBJECTIVE)
                            .map_err(|m| invalid("objective", m))?;
                        check_agent(c)?
                    }
                    _ => {
                        return Err(invalid(
                            "config",
                            format!("does not describe a {} task", task_type.as_str()),
                        ))
                    }
                }
                Ok(vec![E::SwarmTaskCreated(SwarmTaskCreated {
                    task_id: *task_id,
                    organization_id: org,
                    user_id: *user_id,
                    task_type: *task_type,
                    objective: objective.trim().to_owned(),
                    config: config.clone(),
                    created_at: *at,
                })])
            }
            C::Start { attempt, at } => self.start(*attempt, None, *at),
            C::Claim {
                attempt,
                worker,
                at,
            } => {
                validate::text(worker, MAX_LABEL).map_err(|message| SwarmError::Invalid {
                    field: "worker".into(),
                    message,
                })?;
                self.start(*attempt, Some(worker.clone()), *at)
            }
            C::RecordProgress {
                attempt,
                iteration,
                best_cost,
                best_position,
                evaluations,
                at,
            } => {
                self.running(*attempt)?;
                if *iteration <= self.iteration {
                    return Ok(vec![]);
                }
                Ok(vec![E::OptimizationProgressed(OptimizationProgressed {
                    attempt: *attempt,
                    iteration: *iteration,
                    best_cost: storable(*best_cost),
                    best_position: storable_all(best_position),
                    evaluations: *evaluations,
                    at: *at,
                })])
            }
            C::RecordSubtasks {
                attempt,
                outcomes,
                at,
            } => {
                self.running(*attempt)?;
                if outcomes.len() > MAX_CHUNK {
                    return Err(invalid(
                        "outcomes",
                        format!("at most {MAX_CHUNK} in one chunk"),
                    ));
                }
                let mut fresh: Vec<SubtaskOutcome> = Vec::with_capacity(outcomes.len());
                for o in outcomes {
                    if u64::from(o.index) >= self.total {
                        return Err(invalid(
                            "outcomes.index",
                            format!("subtask {} is not in this batch", o.index),
                        ));
                    }
                    if let Some(e) = &o.error {
                        validate::text(e, MAX_ERROR).map_err(|m| invalid("outcomes.error", m))?;
                    }
                    let seen =
                        self.recorded.contains(o.index) || fresh.iter().any(|f| f.index == o.index);
                    if !seen {
                        fresh.push(o.clone());
                    }
                }
                if fresh.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![E::SubtasksRecorded(SubtasksRecorded {
                    attempt: *attempt,
                    outcomes: fresh,
                    at: *at,
                })])
            }
            C::Complete {
                attempt,
                result,
                at,
            } => {
                self.running(*attempt)?;
                let result = match result {
                    TaskResult::Optimization {
                        best_position,
                        best_cost,
                        iterations,
                        evaluations,
                        elapsed_ms,
                    } => TaskResult::Optimization {
                        best_position: storable_all(best_position),
                        best_cost: storable(*best_cost),
                        iterations: *iterations,
                        evaluations: *evaluations,
                        elapsed_ms: *elapsed_ms,
                    },
                    // The counts of a batch come from what was recorded, not from the worker;
                    // its time runs from the start of its first attempt, so that a resumed
                    // batch counts every attempt, not only its last.
                    TaskResult::Batch { elapsed_ms, .. } => TaskResult::Batch {
                        total: self.total,
                        done: self.done,
                        failed: self.failed,
                        elapsed_ms: self
                            .started_at
                            .map(|first| (*at - first).num_milliseconds().max(0) as u64)
                            .unwrap_or(0)
                            .max(*elapsed_ms),
                    },
                    // So are an analysis's: from its recorded results and insights.
                    TaskResult::Analysis { elapsed_ms, .. } => TaskResult::Analysis {
                        documents: self.total,
                        words: self.analysis_results.as_ref().map_or(0, |r| r.words),
                        insights: u64::from(self.insights),
                        elapsed_ms: *elapsed_ms,
                    },
                    // So are the calls and tokens of an agent execution.
                    TaskResult::Agent {
                        output,
                        model,
                        elapsed_ms,
                        ..
                    } => TaskResult::Agent {
                        output: output.clone(),
                        model: model.clone(),
                        calls: self.calls,
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: self.completion_tokens,
                        elapsed_ms: *elapsed_ms,
                    },
                };
                Ok(vec![E::SwarmTaskCompleted(SwarmTaskCompleted {
                    attempt: *attempt,
                    result,
                    completed_at: *at,
                })])
            }
            C::Fail { attempt, error, at } => {
                self.running(*attempt)?;
                let error: String = error
                    .chars()
                    .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
                    .take(MAX_ERROR)
                    .collect();
                Ok(vec![E::SwarmTaskFailed(SwarmTaskFailed {
                    attempt: *attempt,
                    error,
                    failed_at: *at,
                })])
            }
            C::Cancel { at } => match self.status {
                TaskStatus::Cancelled => Ok(vec![]),
                TaskStatus::Completed | TaskStatus::Failed => {
                    Err(SwarmError::Finished(self.status.as_str()))
                }
                _ => Ok(vec![E::SwarmTaskCancelled(SwarmTaskCancelled {
                    cancelled_at: *at,
                })]),
            },
            C::Interrupt {
                attempt,
                released,
                at,
            } => {
                if self.status != TaskStatus::Running || self.attempt != *attempt {
                    return Ok(vec![]);
                }
                Ok(vec![E::SwarmTaskInterrupted(SwarmTaskInterrupted {
                    attempt: *attempt,
                    interrupted_at: *at,
                    released: *released,
                })])
            }
            C::Abandon { reason, at } => {
                if !matches!(self.status, TaskStatus::Queued | TaskStatus::Interrupted) {
                    return Err(SwarmError::NotStartable(self.status.as_str()));
                }
                let reason: String = reason
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_ERROR - ABANDONED.len())
                    .collect();
                Ok(vec![E::SwarmTaskFailed(SwarmTaskFailed {
                    attempt: self.attempt,
                    error: format!("{ABANDONED}{reason}"),
                    failed_at: *at,
                })])
            }
            C::RecordAnalysisProgress {
                attempt,
                done,
                total,
                document,
                at,
            } => {
                self.analysis()?;
                self.running(*attempt)?;
                if *done <= self.analysis_done || *done > *total {
                    return Ok(vec![]);
                }
                Ok(vec![E::AnalysisProgressed(AnalysisProgressed {
                    attempt: *attempt,
                    done: *done,
                    total: *total,
                    document: document.chars().take(MAX_LABEL).collect(),
                    at: *at,
                })])
            }
            C::RecordAnalysisResults {
                attempt,
                results,
                at,
            } => {
                self.analysis()?;
                self.running(*attempt)?;
                if self.analysis_results.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![E::AnalysisResultsRecorded(AnalysisResultsRecorded {
                    attempt: *attempt,
                    results: results.clone(),
                    at: *at,
                })])
            }
            C::RecordInsight {
                insight_id,
                source,
                user_id,
                attempt,
                model,
                text,
                at,
            } => {
                self.analysis()?;
                if self.insight_ids.contains(insight_id) {
                    return Ok(vec![]);
                }
                match (source, attempt) {
                    (InsightSource::Ai, Some(a)) => self.running(*a)?,
                    (InsightSource::User, None) if self.status != TaskStatus::Cancelled => {}
                    (InsightSource::User, None) => {
                        return Err(SwarmError::Finished(self.status.as_str()))
                    }
                    _ => return Err(invalid("source", "an AI insight names its attempt")),
                }
                if self.insights >= MAX_INSIGHTS {
                    return Err(invalid(
                        "text",
                        format!("an analysis holds at most {MAX_INSIGHTS} insights"),
                    ));
                }
                validate::body(text, MAX_INSIGHT).map_err(|m| invalid("text", m))?;
                check_time("at", *at)?;
                Ok(vec![E::InsightRecorded(InsightRecorded {
                    insight_id: *insight_id,
                    source: *source,
                    user_id: *user_id,
                    attempt: *attempt,
                    model: model.clone(),
                    text: text.trim().to_owned(),
                    at: *at,
                })])
            }
            C::RecordCall {
                attempt,
                call,
                model,
                prompt_tokens,
                completion_tokens,
                duration_ms,
                error,
                at,
            } => {
                self.running(*attempt)?;
                if self.task_type != Some(TaskType::Agent) {
                    return Err(invalid("call", "only agent executions record calls"));
                }
                if *call <= self.attempt_calls {
                    return Ok(vec![]);
                }
                if *call != self.attempt_calls + 1 || *call > MAX_AGENT_CALLS {
                    return Err(invalid(
                        "call",
                        format!("call {call} does not follow call {}", self.attempt_calls),
                    ));
                }
                let error = error.as_ref().map(|e| {
                    e.chars()
                        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
                        .take(MAX_ERROR)
                        .collect::<String>()
                });
                Ok(vec![E::AgentCallRecorded(AgentCallRecorded {
                    attempt: *attempt,
                    call: *call,
                    model: model.chars().take(MAX_LABEL).collect(),
                    prompt_tokens: *prompt_tokens,
                    completion_tokens: *completion_tokens,
                    duration_ms: *duration_ms,
                    error,
                    at: *at,
                })])
            }
        }
    }

    fn apply(&mut self, event: &SwarmTaskEvent) {
        use SwarmTaskEvent as E;
        match event {
            E::SwarmTaskCreated(c) => {
                self.id = Some(c.task_id);
                self.organization_id = Some(c.organization_id);
                self.user_id = Some(c.user_id);
                self.task_type = Some(c.task_type);
                self.objective = c.objective.clone();
                self.total = match &c.config {
                    TaskConfig::Velocity(v) => v.total(),
                    TaskConfig::Quantum(_) => 0,
                    TaskConfig::Analysis(a) => a.documents.len() as u64,
                    TaskConfig::Agent(_) => 0,
                };
                self.config = Some(c.config.clone());
                self.created_at = Some(c.created_at);
                self.status = TaskStatus::Queued;
            }
            E::SwarmTaskStarted(s) => {
                self.status = TaskStatus::Running;
                self.attempt = s.attempt;
                self.worker.clone_from(&s.worker);
                self.started_at.get_or_insert(s.started_at);
                // An optimization starts over (its seed makes it the same run again), and so
                // do the documents of an analysis.
                self.iteration = 0;
                self.analysis_done = 0;
                self.attempt_calls = 0;
            }
            E::OptimizationProgressed(p) => {
                self.iteration = p.iteration;
                self.best_cost = Some(p.best_cost);
                self.best_position = p.best_position.clone();
                self.evaluations = p.evaluations;
            }
            E::SubtasksRecorded(r) => {
                for o in &r.outcomes {
                    if self.recorded.contains(o.index) {
                        continue;
                    }
                    self.recorded.insert(o.index);
                    match o.status {
                        SubtaskStatus::Done => self.done += 1,
                        SubtaskStatus::Failed => self.failed += 1,
                    }
                }
            }
            E::SwarmTaskCompleted(c) => {
                self.status = TaskStatus::Completed;
                self.result = Some(c.result.clone());
                self.finished_at = Some(c.completed_at);
            }
            E::SwarmTaskFailed(f) => {
                self.status = TaskStatus::Failed;
                self.error = Some(f.error.clone());
                self.finished_at = Some(f.failed_at);
            }
            E::SwarmTaskCancelled(c) => {
                self.status = TaskStatus::Cancelled;
                self.finished_at = Some(c.cancelled_at);
            }
            E::SwarmTaskInterrupted(i) => {
                self.status = TaskStatus::Interrupted;
                if !i.released {
                    self.deaths += 1;
                }
            }
            E::AnalysisProgressed(p) => self.analysis_done = p.done,
            E::AnalysisResultsRecorded(r) => self.analysis_results = Some(r.results.clone()),
            E::InsightRecorded(i) => {
                self.insights += 1;
                self.insight_ids.push(i.insight_id);
                self.ai_insight |= i.source == InsightSource::Ai;
            }
            E::AgentCallRecorded(c) => {
                self.calls += 1;
                self.attempt_calls = c.call;
                self.prompt_tokens += c.prompt_tokens;
                self.completion_tokens += c.completion_tokens;
            }
        }
    }
}

/// A number the log can hold and read back unchanged (see `crate::store::MAX_NUMBER`): +∞
/// (a point where the objective fails) and anything beyond the store's range become its
/// largest magnitude, and magnitudes too small for it become 0.
pub fn storable(v: f64) -> f64 {
    use crate::store::MAX_NUMBER;
    if v.is_nan() {
        MAX_NUMBER
    } else if v.abs() > MAX_NUMBER {
        MAX_NUMBER.copysign(v)
    } else if v.abs() < 1.0 / MAX_NUMBER {
        0.0
    } else {
        v
    }
}

fn storable_all(xs: &[f64]) -> Vec<f64> {
    xs.iter().copied().map(storable).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use universal_events::swarm::BatchMode;

    const ORG: Uuid = Uuid::from_u128(1);
    const OTHER_ORG: Uuid = Uuid::from_u128(2);
    const TASK: Uuid = Uuid::from_u128(10);
    const OWNER: Uuid = Uuid::from_u128(11);

    fn now() -> DateTime<Utc> {
        "2026-11-21T09:00:00Z".parse().unwrap()
    }

    fn given(events: &[SwarmTaskEvent]) -> SwarmTask {
        let mut state = SwarmTask::default();
        for e in events {
            state.evolve(e);
        }
        state
    }

    fn when(state: &SwarmTask, cmd: SwarmCommand) -> Result<Vec<SwarmTaskEvent>, SwarmError> {
        state.decide(&ScopedCommand {
            organization_id: ORG,
            cmd,
        })
    }

    fn then_apply(mut state: SwarmTask, events: &[SwarmTaskEvent]) -> SwarmTask {
        for e in events {
            state.evolve(e);
        }
        state
    }

    fn quantum() -> QuantumConfig {
        QuantumConfig {
            dimensions: 2,
            bounds: vec![[-5.12, 5.12]; 2],
            particles: 20,
            iterations: 100,
            inertia: 0.72,
            cognitive: 1.19,
            social: 1.19,
            seed: 42,
        }
    }

    fn batch(count: u32) -> VelocityConfig {
        VelocityConfig {
            subtasks: vec![SubtaskSpec::Prompt {
                prompt: "Say hello".into(),
                model: None,
                count,
            }],
            concurrency: 4,
            timeout_ms: 1000,
            retries: 1,
            backoff_ms: 10,
            mode: BatchMode::BestEffort,
        }
    }

    fn create(objective: &str, config: TaskConfig) -> SwarmCommand {
        let task_type = match config {
            TaskConfig::Quantum(_) => TaskType::Quantum,
            TaskConfig::Velocity(_) => TaskType::Velocity,
            TaskConfig::Analysis(_) => TaskType::Analysis,
            TaskConfig::Agent(_) => TaskType::Agent,
        };
        SwarmCommand::Create {
            task_id: TASK,
            user_id: OWNER,
            task_type,
            objective: objective.into(),
            config,
            at: now(),
        }
    }

    fn created() -> SwarmTaskEvent {
        given(&[])
            .decide_in(ORG, &create("rastrigin", TaskConfig::Quantum(quantum())))
            .unwrap()
            .remove(0)
    }

    fn created_batch(count: u32) -> SwarmTaskEvent {
        given(&[])
            .decide_in(
                ORG,
                &create("greetings", TaskConfig::Velocity(batch(count))),
            )
            .unwrap()
            .remove(0)
    }

    fn started(attempt: u32) -> SwarmTaskEvent {
        SwarmTaskEvent::SwarmTaskStarted(SwarmTaskStarted {
            attempt,
            resumed_from: 0,
            worker: None,
            started_at: now(),
        })
    }

    fn progress(attempt: u32, iteration: u64, cost: f64) -> SwarmCommand {
        SwarmCommand::RecordProgress {
            attempt,
            iteration,
            best_cost: cost,
            best_position: vec![0.1, -0.1],
            evaluations: iteration * 20,
            at: now(),
        }
    }

    fn outcome(index: u32, status: SubtaskStatus) -> SubtaskOutcome {
        SubtaskOutcome {
            index,
            status,
            attempts: 1,
            output: None,
            error: None,
            duration_ms: 3,
        }
    }

    fn field_of(result: Result<Vec<SwarmTaskEvent>, SwarmError>) -> String {
        match result {
            Err(SwarmError::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_quantum_task_is_created_queued_with_the_legacy_fields() {
        let events = when(
            &given(&[]),
            create("rastrigin", TaskConfig::Quantum(quantum())),
        )
        .unwrap();
        let SwarmTaskEvent::SwarmTaskCreated(c) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (c.task_id, c.organization_id, c.user_id),
            (TASK, ORG, OWNER)
        );
        let data = universal_events::EventFamily::to_data(&events[0]);
        for field in ["user_id", "type", "objective", "config", "created_at"] {
            assert!(data.get(field).is_some(), "{field} missing in {data}");
        }
        let state = then_apply(given(&[]), &events);
        assert_eq!(state.status, TaskStatus::Queued);
        assert_eq!(state.attempt, 0);
    }

    #[test]
    fn a_task_cannot_be_created_twice_and_another_organization_sees_none() {
        let state = given(&[created()]);
        assert_eq!(
            when(&state, create("sphere", TaskConfig::Quantum(quantum()))),
            Err(SwarmError::AlreadyExists)
        );
        let foreign = state.decide_in(OTHER_ORG, &SwarmCommand::Cancel { at: now() });
        assert_eq!(foreign, Err(SwarmError::NotFound));
        assert_eq!(
            when(&given(&[]), SwarmCommand::Cancel { at: now() }),
            Err(SwarmError::NotFound)
        );
    }

    #[test]
    fn quantum_validation_errors_name_the_field() {
        let q = |f: fn(&mut QuantumConfig)| {
            let mut c = quantum();
            f(&mut c);
            field_of(when(
                &given(&[]),
                create("rastrigin", TaskConfig::Quantum(c)),
            ))
        };
        assert_eq!(q(|c| c.dimensions = 0), "config.dimensions");
        assert_eq!(q(|c| c.dimensions = 101), "config.dimensions");
        assert_eq!(q(|c| c.dimensions = 3), "config.bounds");
        assert_eq!(q(|c| c.bounds[1] = [2.0, 1.0]), "config.bounds[1]");
        assert_eq!(q(|c| c.bounds[0] = [f64::NAN, 1.0]), "config.bounds[0]");
        assert_eq!(q(|c| c.particles = 0), "config.particles");
        assert_eq!(q(|c| c.iterations = 0), "config.iterations");
        assert_eq!(q(|c| c.inertia = -0.1), "config.inertia");
        assert_eq!(q(|c| c.social = f64::INFINITY), "config.social");
        assert_eq!(q(|c| c.seed = u64::MAX), "config.seed");
        for objective in ["x1 + x3", "x1 +", "velocity", "random()"] {
            let result = when(
                &given(&[]),
                create(objective, TaskConfig::Quantum(quantum())),
            );
            assert_eq!(field_of(result), "objective", "{objective}");
        }
        let ok = when(
            &given(&[]),
            create("x1^2 + math::sin(x2)", TaskConfig::Quantum(quantum())),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn velocity_validation_errors_name_the_field() {
        let v = |f: fn(&mut VelocityConfig)| {
            let mut c = batch(3);
            f(&mut c);
            field_of(when(&given(&[]), create("batch", TaskConfig::Velocity(c))))
        };
        assert_eq!(v(|c| c.subtasks.clear()), "config.subtasks");
        assert_eq!(
            v(|c| c.subtasks = vec![SubtaskSpec::Prompt {
                prompt: "x".into(),
                model: None,
                count: 10_001
            }]),
            "config.subtasks"
        );
        assert_eq!(
            v(|c| c.subtasks = vec![SubtaskSpec::Prompt {
                prompt: " ".into(),
                model: None,
                count: 1
            }]),
            "config.subtasks[0].prompt"
        );
        assert_eq!(
            v(|c| c.subtasks = vec![SubtaskSpec::Http {
                method: "GET".into(),
                url: "ftp://x".into(),
                body: None,
                count: 1
            }]),
            "config.subtasks[0].url"
        );
        assert_eq!(
            v(|c| {
                let mut q = quantum();
                q.particles = 0;
                c.subtasks = vec![SubtaskSpec::Optimize {
                    objective: "sphere".into(),
                    config: q,
                    count: 1,
                }]
            }),
            "config.subtasks[0].config.particles"
        );
        assert_eq!(v(|c| c.concurrency = 0), "config.concurrency");
        assert_eq!(v(|c| c.timeout_ms = 0), "config.timeout_ms");
        assert_eq!(v(|c| c.retries = 11), "config.retries");
        assert_eq!(
            field_of(when(
                &given(&[]),
                SwarmCommand::Create {
                    task_id: TASK,
                    user_id: OWNER,
                    task_type: TaskType::Quantum,
                    objective: "x".into(),
                    config: TaskConfig::Velocity(batch(1)),
                    at: now(),
                }
            )),
            "config"
        );
    }

    #[test]
    fn a_queued_task_starts_its_first_attempt_and_cannot_start_twice() {
        let state = given(&[created()]);
        let events = when(
            &state,
            SwarmCommand::Start {
                attempt: 1,
                at: now(),
            },
        )
        .unwrap();
        assert_eq!(events, vec![started(1)]);
        let running = then_apply(state, &events);
        assert_eq!(running.status, TaskStatus::Running);
        assert_eq!(
            when(
                &running,
                SwarmCommand::Start {
                    attempt: 2,
                    at: now()
                }
            ),
            Err(SwarmError::NotStartable("running"))
        );
    }

    #[test]
    fn progress_is_recorded_only_when_it_moves_forward() {
        let state = given(&[created(), started(1)]);
        let events = when(&state, progress(1, 10, 3.5)).unwrap();
        assert_eq!(events.len(), 1);
        let state = then_apply(state, &events);
        assert_eq!((state.iteration, state.best_cost), (10, Some(3.5)));
        assert_eq!(when(&state, progress(1, 10, 3.0)), Ok(vec![]));
        assert_eq!(when(&state, progress(1, 4, 3.0)), Ok(vec![]));
    }

    #[test]
    fn an_infinite_or_tiny_cost_is_recorded_as_a_number_the_log_can_hold() {
        let state = given(&[created(), started(1)]);
        let events = when(&state, progress(1, 1, f64::INFINITY)).unwrap();
        let SwarmTaskEvent::OptimizationProgressed(p) = &events[0] else {
            panic!()
        };
        assert_eq!(p.best_cost, crate::store::MAX_NUMBER);
        assert_eq!(storable(1e-320), 0.0);
        assert_eq!(storable(-1e305), -crate::store::MAX_NUMBER);
    }

    #[test]
    fn reports_of_another_attempt_or_of_a_task_not_running_are_refused() {
        let queued = given(&[created()]);
        assert_eq!(
            when(&queued, progress(1, 1, 1.0)),
            Err(SwarmError::NotRunning(1))
        );
        let running = given(&[created(), started(1)]);
        assert_eq!(
            when(&running, progress(2, 1, 1.0)),
            Err(SwarmError::NotRunning(2))
        );
        let cancelled = then_apply(
            running.clone(),
            &when(&running, SwarmCommand::Cancel { at: now() }).unwrap(),
        );
        assert_eq!(cancelled.status, TaskStatus::Cancelled);
        assert_eq!(
            when(&cancelled, progress(1, 5, 1.0)),
            Err(SwarmError::NotRunning(1))
        );
        let fail = SwarmCommand::Fail {
            attempt: 1,
            error: "late".into(),
            at: now(),
        };
        assert_eq!(when(&cancelled, fail), Err(SwarmError::NotRunning(1)));
    }

    #[test]
    fn an_optimization_completes_with_its_result() {
        let state = given(&[created(), started(1)]);
        let result = TaskResult::Optimization {
            best_position: vec![0.0, 0.0],
            best_cost: 0.0,
            iterations: 100,
            evaluations: 2020,
            elapsed_ms: 12,
        };
        let events = when(
            &state,
            SwarmCommand::Complete {
                attempt: 1,
                result: result.clone(),
                at: now(),
            },
        )
        .unwrap();
        let done = then_apply(state, &events);
        assert_eq!(done.status, TaskStatus::Completed);
        assert_eq!(done.result, Some(result));
        assert_eq!(
            when(&done, SwarmCommand::Cancel { at: now() }),
            Err(SwarmError::Finished("completed"))
        );
    }

    #[test]
    fn cancel_works_while_queued_running_or_interrupted_and_twice_records_nothing() {
        let interrupted = SwarmTaskEvent::SwarmTaskInterrupted(SwarmTaskInterrupted {
            attempt: 1,
            interrupted_at: now(),
            released: false,
        });
        for history in [
            vec![created()],
            vec![created(), started(1)],
            vec![created(), started(1), interrupted],
        ] {
            let state = given(&history);
            let events = when(&state, SwarmCommand::Cancel { at: now() }).unwrap();
            assert_eq!(events.len(), 1, "{history:?}");
            let cancelled = then_apply(state, &events);
            assert_eq!(
                when(&cancelled, SwarmCommand::Cancel { at: now() }),
                Ok(vec![])
            );
        }
    }

    #[test]
    fn a_resumed_batch_counts_the_time_of_every_attempt_not_only_its_last() {
        let first = now();
        let state = given(&[
            created_batch(2),
            SwarmTaskEvent::SwarmTaskStarted(SwarmTaskStarted {
                attempt: 1,
                resumed_from: 0,
                worker: None,
                started_at: first,
            }),
            SwarmTaskEvent::SwarmTaskInterrupted(SwarmTaskInterrupted {
                attempt: 1,
                interrupted_at: first + chrono::Duration::seconds(8),
                released: false,
            }),
            SwarmTaskEvent::SwarmTaskStarted(SwarmTaskStarted {
                attempt: 2,
                resumed_from: 0,
                worker: None,
                started_at: first + chrono::Duration::seconds(10),
            }),
        ]);
        // The second attempt's worker measured its own 2 s only.
        let complete = SwarmCommand::Complete {
            attempt: 2,
            result: TaskResult::Batch {
                total: 0,
                done: 0,
                failed: 0,
                elapsed_ms: 2_000,
            },
            at: first + chrono::Duration::seconds(12),
        };
        let events = when(&state, complete).unwrap();
        match &events[..] {
            [SwarmTaskEvent::SwarmTaskCompleted(c)] => match &c.result {
                TaskResult::Batch { elapsed_ms, .. } => assert_eq!(*elapsed_ms, 12_000),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deaths_are_counted_releases_are_not_and_an_abandoned_task_is_failed_for_good() {
        let mut state = given(&[created()]);
        for (attempt, released) in [(1, true), (2, false), (3, false)] {
            let start = SwarmCommand::Start { attempt, at: now() };
            state = then_apply(state.clone(), &when(&state, start).unwrap());
            let interrupt = SwarmCommand::Interrupt {
                attempt,
                released,
                at: now(),
            };
            state = then_apply(state.clone(), &when(&state, interrupt).unwrap());
        }
        assert_eq!(state.deaths, 2);
        let abandon = SwarmCommand::Abandon {
            reason: "its process died twice".into(),
            at: now(),
        };
        let state = then_apply(state.clone(), &when(&state, abandon.clone()).unwrap());
        assert_eq!(state.status, TaskStatus::Failed);
        assert_eq!(
            state.error.as_deref(),
            Some("abandoned: its process died twice")
        );
        assert!(matches!(
            when(
                &state,
                SwarmCommand::Start {
                    attempt: 4,
                    at: now()
                }
            ),
            Err(SwarmError::NotStartable("failed"))
        ));
        assert!(matches!(
            when(&state, abandon),
            Err(SwarmError::NotStartable("failed"))
        ));
    }

    #[test]
    fn an_interrupted_task_is_started_again_as_the_next_attempt_and_fences_the_old_one() {
        let state = given(&[created(), started(1)]);
        let interrupt = SwarmCommand::Interrupt {
            attempt: 1,
            released: false,
            at: now(),
        };
        let events = when(&state, interrupt.clone()).unwrap();
        let state = then_apply(state, &events);
        assert_eq!(state.status, TaskStatus::Interrupted);
        assert_eq!(
            when(&state, interrupt),
            Ok(vec![]),
            "a second interrupt is a no-op"
        );
        assert_eq!(
            when(
                &state,
                SwarmCommand::Start {
                    attempt: 1,
                    at: now()
                }
            ),
            Err(SwarmError::NotRunning(1))
        );
        let events = when(
            &state,
            SwarmCommand::Start {
                attempt: 2,
                at: now(),
            },
        )
        .unwrap();
        let state = then_apply(state, &events);
        assert_eq!((state.status, state.attempt), (TaskStatus::Running, 2));
        assert_eq!(
            when(&state, progress(1, 3, 1.0)),
            Err(SwarmError::NotRunning(1))
        );
        assert_eq!(when(&state, progress(2, 3, 1.0)).unwrap().len(), 1);
    }

    #[test]
    fn subtask_chunks_record_each_subtask_once_and_the_batch_resumes_after_them() {
        let state = given(&[created_batch(5), started(1)]);
        let chunk = SwarmCommand::RecordSubtasks {
            attempt: 1,
            outcomes: vec![
                outcome(0, SubtaskStatus::Done),
                outcome(3, SubtaskStatus::Failed),
                outcome(0, SubtaskStatus::Done),
            ],
            at: now(),
        };
        let events = when(&state, chunk.clone()).unwrap();
        let SwarmTaskEvent::SubtasksRecorded(r) = &events[0] else {
            panic!()
        };
        assert_eq!(
            r.outcomes.len(),
            2,
            "a duplicate inside the chunk is dropped"
        );
        let state = then_apply(state, &events);
        assert_eq!((state.done, state.failed, state.total), (1, 1, 5));
        assert!(state.recorded.contains(3) && !state.recorded.contains(1));
        assert_eq!(
            when(&state, chunk),
            Ok(vec![]),
            "a resent chunk records nothing"
        );
        let out_of_range = SwarmCommand::RecordSubtasks {
            attempt: 1,
            outcomes: vec![outcome(5, SubtaskStatus::Done)],
            at: now(),
        };
        assert_eq!(field_of(when(&state, out_of_range)), "outcomes.index");

        let interrupted = then_apply(
            state.clone(),
            &when(
                &state,
                SwarmCommand::Interrupt {
                    attempt: 1,
                    released: false,
                    at: now(),
                },
            )
            .unwrap(),
        );
        let events = when(
            &interrupted,
            SwarmCommand::Start {
                attempt: 2,
                at: now(),
            },
        )
        .unwrap();
        let SwarmTaskEvent::SwarmTaskStarted(s) = &events[0] else {
            panic!()
        };
        assert_eq!(s.resumed_from, 2);
    }

    #[test]
    fn a_batch_result_counts_what_was_recorded_not_what_the_worker_claims() {
        let state = given(&[created_batch(2), started(1)]);
        let state = then_apply(
            state.clone(),
            &when(
                &state,
                SwarmCommand::RecordSubtasks {
                    attempt: 1,
                    outcomes: vec![
                        outcome(0, SubtaskStatus::Done),
                        outcome(1, SubtaskStatus::Failed),
                    ],
                    at: now(),
                },
            )
            .unwrap(),
        );
        let events = when(
            &state,
            SwarmCommand::Complete {
                attempt: 1,
                result: TaskResult::Batch {
                    total: 99,
                    done: 99,
                    failed: 0,
                    elapsed_ms: 5,
                },
                at: now(),
            },
        )
        .unwrap();
        let SwarmTaskEvent::SwarmTaskCompleted(c) = &events[0] else {
            panic!()
        };
        assert_eq!(
            c.result,
            TaskResult::Batch {
                total: 2,
                done: 1,
                failed: 1,
                elapsed_ms: 5
            }
        );
    }

    #[test]
    fn a_failure_message_loses_its_control_characters() {
        let state = given(&[created(), started(1)]);
        let events = when(
            &state,
            SwarmCommand::Fail {
                attempt: 1,
                error: "bad\u{0}news".into(),
                at: now(),
            },
        )
        .unwrap();
        let failed = then_apply(state, &events);
        assert_eq!(failed.status, TaskStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("badnews"));
    }

    #[test]
    fn the_state_survives_a_snapshot_round_trip() {
        let state = given(&[created_batch(70), started(1)]);
        let state = then_apply(
            state.clone(),
            &when(
                &state,
                SwarmCommand::RecordSubtasks {
                    attempt: 1,
                    outcomes: vec![outcome(65, SubtaskStatus::Done)],
                    at: now(),
                },
            )
            .unwrap(),
        );
        let json = serde_json::to_value(&state).unwrap();
        let back: SwarmTask = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
    }

    fn analysis_config() -> AnalysisConfig {
        AnalysisConfig {
            title: "Feedback".into(),
            documents: vec![universal_events::swarm::AnalysisDocument {
                name: "a.txt".into(),
                text: "Checkout is slow.".into(),
            }],
            questions: vec![],
            model: None,
        }
    }

    fn user_insight(id: u128, text: &str) -> SwarmCommand {
        SwarmCommand::RecordInsight {
            insight_id: Uuid::from_u128(id),
            source: InsightSource::User,
            user_id: Some(OWNER),
            attempt: None,
            model: None,
            text: text.into(),
            at: now(),
        }
    }

    fn agent(task_data: serde_json::Value) -> TaskConfig {
        TaskConfig::Agent(AgentConfig {
            agent_type: "content_generator".into(),
            task_type: "generate_content".into(),
            task_data,
            model: "gpt-test".into(),
        })
    }

    fn created_agent() -> SwarmTaskEvent {
        let data = serde_json::json!({"subject": "Mathematics", "grade_level": 5});
        given(&[])
            .decide_in(
                ORG,
                &create("content_generator.generate_content", agent(data)),
            )
            .unwrap()
            .remove(0)
    }

    fn call(attempt: u32, call: u32, error: Option<&str>) -> SwarmCommand {
        SwarmCommand::RecordCall {
            attempt,
            call,
            model: "gpt-test".into(),
            prompt_tokens: 100,
            completion_tokens: 40,
            duration_ms: 12,
            error: error.map(str::to_owned),
            at: now(),
        }
    }

    #[test]
    fn an_analysis_records_progress_results_once_and_insights_by_id() {
        let mut c = analysis_config();
        c.documents.clear();
        assert_eq!(
            field_of(when(
                &given(&[]),
                create("Feedback", TaskConfig::Analysis(c))
            )),
            "documents"
        );
        let created = given(&[])
            .decide_in(
                ORG,
                &create("Feedback", TaskConfig::Analysis(analysis_config())),
            )
            .unwrap();
        let state = then_apply(given(&created), &[started(1)]);
        assert_eq!(state.total, 1);
        let progress = |done| SwarmCommand::RecordAnalysisProgress {
            attempt: 1,
            done,
            total: 1,
            document: "a.txt".into(),
            at: now(),
        };
        let events = when(&state, progress(1)).unwrap();
        assert_eq!(events.len(), 1);
        let state = then_apply(state, &events);
        assert!(when(&state, progress(1)).unwrap().is_empty(), "not forward");
        let results = SwarmCommand::RecordAnalysisResults {
            attempt: 1,
            results: AnalysisResults {
                documents: vec![],
                words: 3,
                sentences: 1,
                top_terms: vec![],
            },
            at: now(),
        };
        let events = when(&state, results.clone()).unwrap();
        let state = then_apply(state, &events);
        assert!(
            when(&state, results).unwrap().is_empty(),
            "results are recorded once"
        );
        let events = when(&state, user_insight(7, "Speed it up")).unwrap();
        let state = then_apply(state, &events);
        assert!(when(&state, user_insight(7, "Speed it up"))
            .unwrap()
            .is_empty());
        assert_eq!(field_of(when(&state, user_insight(8, "  "))), "text");
        assert!(!state.ai_insight);
        let ai = SwarmCommand::RecordInsight {
            insight_id: Uuid::from_u128(10),
            source: InsightSource::Ai,
            user_id: None,
            attempt: Some(1),
            model: Some("m".into()),
            text: "Checkout first".into(),
            at: now(),
        };
        let events = when(&state, ai).unwrap();
        let state = then_apply(state, &events);
        assert!(state.ai_insight, "a resumed attempt skips the AI step");
        assert_eq!(state.insights, 2);
        // An optimization takes no insight.
        let quantum = given(&[created_quantum()]);
        assert_eq!(
            when(&quantum, user_insight(9, "hm")),
            Err(SwarmError::NotAnalysis)
        );
    }

    fn created_quantum() -> SwarmTaskEvent {
        created()
    }

    #[test]
    fn an_agent_execution_is_checked_against_the_registry_field_by_field() {
        let objective = "content_generator.generate_content";
        let cases = [
            (
                serde_json::json!({"subject": "Math"}),
                "task_data.grade_level",
            ),
            (
                serde_json::json!({"subject": "Math", "grade_level": 40}),
                "task_data.grade_level",
            ),
            (
                serde_json::json!({"subject": "Math", "grade_level": 4, "mood": "x"}),
                "task_data.mood",
            ),
        ];
        for (data, field) in cases {
            let result = given(&[]).decide_in(ORG, &create(objective, agent(data)));
            assert_eq!(field_of(result), field);
        }
        let TaskConfig::Agent(mut unknown) = agent(serde_json::json!({})) else {
            unreachable!()
        };
        unknown.agent_type = "poet".into();
        let result = given(&[]).decide_in(ORG, &create(objective, TaskConfig::Agent(unknown)));
        assert_eq!(field_of(result), "agent_type");
    }

    #[test]
    fn an_agent_records_each_call_once_and_its_result_counts_the_recorded_tokens() {
        let state = given(&[created_agent(), started(1)]);
        let first = when(&state, call(1, 1, Some("output.sections: is required"))).unwrap();
        assert_eq!(first.len(), 1);
        let state = then_apply(state, &first);
        assert_eq!(when(&state, call(1, 1, None)), Ok(vec![]), "a resent call");
        assert_eq!(field_of(when(&state, call(1, 3, None))), "call");
        let state = then_apply(state.clone(), &when(&state, call(1, 2, None)).unwrap());
        assert_eq!(
            field_of(when(&state, call(1, 3, None))),
            "call",
            "two calls at most"
        );
        let events = when(
            &state,
            SwarmCommand::Complete {
                attempt: 1,
                result: TaskResult::Agent {
                    output: serde_json::json!({"title": "Fractions"}),
                    model: "gpt-test".into(),
                    calls: 99,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    elapsed_ms: 30,
                },
                at: now(),
            },
        )
        .unwrap();
        let done = then_apply(state, &events);
        let Some(TaskResult::Agent {
            calls,
            prompt_tokens,
            completion_tokens,
            ..
        }) = done.result
        else {
            panic!("{:?}", done.result)
        };
        assert_eq!((calls, prompt_tokens, completion_tokens), (2, 200, 80));
    }

    #[test]
    fn a_call_of_an_old_attempt_or_of_another_kind_of_task_is_refused() {
        let interrupted = SwarmTaskEvent::SwarmTaskInterrupted(SwarmTaskInterrupted {
            attempt: 1,
            interrupted_at: now(),
            released: false,
        });
        let state = given(&[created_agent(), started(1), interrupted, started(2)]);
        assert_eq!(
            when(&state, call(1, 1, None)),
            Err(SwarmError::NotRunning(1))
        );
        assert_eq!(when(&state, call(2, 1, None)).unwrap().len(), 1);
        let optimization = given(&[created(), started(1)]);
        assert_eq!(field_of(when(&optimization, call(1, 1, None))), "call");
    }
}
