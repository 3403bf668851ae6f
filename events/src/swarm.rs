//! Events of a swarm task (entity kind `swarm_task`): a Quantum Swarm optimization run, a
//! Velocity Swarm batch of subtasks, or a ToolboxAI agent execution.
//!
//! The lifecycle is `queued → running → completed | failed | cancelled`, with `interrupted`
//! for a task that was running when its process died; the scheduler starts an interrupted
//! task again as a new *attempt*. Every report of a worker names its attempt, so a worker of
//! an older attempt can never record anything once a newer one started.
//!
//! The log stays proportional to the work, not to its speed: an optimization records its
//! progress at most every few hundred milliseconds ([`OptimizationProgressed`]), and a batch
//! records the outcomes of its subtasks in chunks ([`SubtasksRecorded`]), never one event per
//! subtask per tick. The field names of the legacy `swarm_tasks` table (`user_id`, `type`,
//! `objective`, `config`, `created_at`) are kept in [`SwarmTaskCreated`].

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// Which frontend's kind of work a task is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// A particle swarm optimization (Quantum Swarm).
    Quantum,
    /// A batch of subtasks (Velocity Swarm).
    Velocity,
    /// An analysis of documents with AI insights and a report (the analysis service).
    Analysis,
    /// A ToolboxAI agent execution (one registered agent, one of its task types).
    Agent,
}

impl TaskType {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Quantum => "quantum",
            TaskType::Velocity => "velocity",
            TaskType::Analysis => "analysis",
            TaskType::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<TaskType> {
        [
            TaskType::Quantum,
            TaskType::Velocity,
            TaskType::Analysis,
            TaskType::Agent,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// The settings of one particle swarm run. The objective is named next to it (the task's
/// `objective`, or a subtask's own).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct QuantumConfig {
    /// Number of variables, `x1` to `xn`.
    pub dimensions: u32,
    /// `[lower, upper]` for each dimension, in order.
    pub bounds: Vec<[f64; 2]>,
    pub particles: u32,
    pub iterations: u64,
    pub inertia: f64,
    pub cognitive: f64,
    pub social: f64,
    /// Seeds the swarm's random numbers: the same seed reproduces the run exactly.
    pub seed: u64,
}

/// How a batch treats a failed subtask.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// The first subtask that fails (after its retries) fails the batch; the rest stop.
    FailFast,
    /// Every subtask runs; the batch completes with the failures counted.
    BestEffort,
}

/// One kind of subtask, possibly repeated `count` times (so that a large batch of similar
/// subtasks stays a small event). Subtasks are numbered in the order they are listed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubtaskSpec {
    /// A prompt through the AI provider layer.
    Prompt {
        prompt: String,
        model: Option<String>,
        count: u32,
    },
    /// A particle swarm optimization.
    Optimize {
        objective: String,
        config: QuantumConfig,
        count: u32,
    },
    /// A call to a URL on the server's allow-list.
    Http {
        method: String,
        url: String,
        body: Option<Value>,
        count: u32,
    },
}

impl SubtaskSpec {
    pub fn count(&self) -> u32 {
        match self {
            SubtaskSpec::Prompt { count, .. }
            | SubtaskSpec::Optimize { count, .. }
            | SubtaskSpec::Http { count, .. } => *count,
        }
    }
}

/// The settings of a batch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct VelocityConfig {
    pub subtasks: Vec<SubtaskSpec>,
    /// Most subtasks of this batch running at once.
    pub concurrency: u32,
    /// Time limit of one try of a subtask.
    pub timeout_ms: u64,
    /// Tries after the first one, with doubling backoff from `backoff_ms`.
    pub retries: u32,
    pub backoff_ms: u64,
    pub mode: BatchMode,
}

impl VelocityConfig {
    /// Subtasks in the batch, repetitions counted.
    pub fn total(&self) -> u64 {
        self.subtasks.iter().map(|s| u64::from(s.count())).sum()
    }
}

/// The settings of an agent execution: which registered agent does which of its tasks,
/// on what input (checked against the task's input schema before it is recorded).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub agent_type: String,
    pub task_type: String,
    pub task_data: Value,
    /// The model the execution asks, fixed when it is submitted.
    pub model: String,
}

/// A task's settings, by type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum TaskConfig {
    Quantum(QuantumConfig),
    Velocity(VelocityConfig),
    Agent(AgentConfig),
    Analysis(AnalysisConfig),
}

/// One document of an analysis.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AnalysisDocument {
    pub name: String,
    pub text: String,
}

/// The settings of an analysis: its documents, the questions its AI step answers, and the
/// model of that step (the server's default when none is named).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AnalysisConfig {
    pub title: String,
    pub documents: Vec<AnalysisDocument>,
    pub questions: Vec<String>,
    pub model: Option<String>,
}

/// What the analysis found in one document.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct DocumentFindings {
    pub name: String,
    pub words: u64,
    pub sentences: u64,
    /// The most frequent terms, most frequent first.
    pub top_terms: Vec<TermCount>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TermCount {
    pub term: String,
    pub count: u64,
}

/// The results of an analysis: per document and over all of them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AnalysisResults {
    pub documents: Vec<DocumentFindings>,
    pub words: u64,
    pub sentences: u64,
    pub top_terms: Vec<TermCount>,
}

/// Who wrote an insight.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InsightSource {
    /// The analysis's AI step.
    Ai,
    /// A user saved it.
    User,
}

/// A task was submitted; it waits in its organization's queue.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SwarmTaskCreated {
    pub task_id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Quantum: a test function's name or an expression of `x1…xn`; Velocity: a label.
    pub objective: String,
    pub config: TaskConfig,
    pub created_at: DateTime<Utc>,
}

/// The scheduler started attempt `attempt` (1 for the first run). `resumed_from` is what
/// the attempt starts from: for a batch, the subtasks already recorded. `worker` names the
/// process that claimed the attempt (`host:pid:id`); absent in events recorded before work
/// was spread over processes, and in imported ones.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SwarmTaskStarted {
    pub attempt: u32,
    pub resumed_from: u64,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The best point an optimization has found so far (coalesced: at most one every few
/// hundred milliseconds, whatever the iteration rate).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct OptimizationProgressed {
    pub attempt: u32,
    pub iteration: u64,
    pub best_cost: f64,
    pub best_position: Vec<f64>,
    pub evaluations: u64,
    pub at: DateTime<Utc>,
}

/// How a subtask ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubtaskStatus {
    Done,
    Failed,
}

/// The outcome of one subtask, after its retries.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SubtaskOutcome {
    pub index: u32,
    pub status: SubtaskStatus,
    /// Tries made, the first included.
    pub attempts: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// A chunk of subtask outcomes of a batch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SubtasksRecorded {
    pub attempt: u32,
    pub outcomes: Vec<SubtaskOutcome>,
    pub at: DateTime<Utc>,
}

/// One provider call of an agent execution: what it cost, and why its output was refused
/// (`error`), if it was. A refused output is retried once with the error in the prompt.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AgentCallRecorded {
    pub attempt: u32,
    /// 1 for the first call of the attempt.
    pub call: u32,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a finished task produced.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskResult {
    Optimization {
        best_position: Vec<f64>,
        best_cost: f64,
        iterations: u64,
        evaluations: u64,
        elapsed_ms: u64,
    },
    Batch {
        total: u64,
        done: u64,
        failed: u64,
        elapsed_ms: u64,
    },
    Analysis {
        documents: u64,
        words: u64,
        insights: u64,
        elapsed_ms: u64,
    },
    /// An agent's output, valid against its task's output schema.
    Agent {
        output: Value,
        model: String,
        /// Provider calls made, the schema retry included.
        calls: u32,
        prompt_tokens: u64,
        completion_tokens: u64,
        elapsed_ms: u64,
    },
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SwarmTaskCompleted {
    pub attempt: u32,
    pub result: TaskResult,
    pub completed_at: DateTime<Utc>,
}

/// The task stopped on an error (a failing subtask in fail-fast mode, the time limit, an
/// objective that cannot be evaluated).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SwarmTaskFailed {
    pub attempt: u32,
    pub error: String,
    pub failed_at: DateTime<Utc>,
}

/// The task was cancelled by a user; what was recorded so far stays.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SwarmTaskCancelled {
    pub cancelled_at: DateTime<Utc>,
}

/// Attempt `attempt` was running when the process that ran it died, or (`released`) when
/// that process let it go on a graceful shutdown; the scheduler starts it again. Deaths
/// count towards the task's attempt limit, releases do not.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SwarmTaskInterrupted {
    pub attempt: u32,
    pub interrupted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

/// An analysis went through `done` of its `total` documents (its `updates`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AnalysisProgressed {
    pub attempt: u32,
    pub done: u64,
    pub total: u64,
    /// The document just analysed.
    pub document: String,
    pub at: DateTime<Utc>,
}

/// An analysis recorded its results (once per task, whatever the attempts).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AnalysisResultsRecorded {
    pub attempt: u32,
    pub results: AnalysisResults,
    pub at: DateTime<Utc>,
}

/// An insight on an analysis: produced by its AI step (`attempt` and `model` set) or saved
/// by a user (`user_id` set).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct InsightRecorded {
    pub insight_id: Uuid,
    pub source: InsightSource,
    pub user_id: Option<Uuid>,
    pub attempt: Option<u32>,
    pub model: Option<String>,
    pub text: String,
    pub at: DateTime<Utc>,
}

/// The swarm task enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum SwarmTaskEvent {
    SwarmTaskCreated(SwarmTaskCreated),
    SwarmTaskStarted(SwarmTaskStarted),
    OptimizationProgressed(OptimizationProgressed),
    SubtasksRecorded(SubtasksRecorded),
    SwarmTaskCompleted(SwarmTaskCompleted),
    SwarmTaskFailed(SwarmTaskFailed),
    SwarmTaskCancelled(SwarmTaskCancelled),
    SwarmTaskInterrupted(SwarmTaskInterrupted),
    AnalysisProgressed(AnalysisProgressed),
    AnalysisResultsRecorded(AnalysisResultsRecorded),
    InsightRecorded(InsightRecorded),
    AgentCallRecorded(AgentCallRecorded),
}

impl EventFamily for SwarmTaskEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SwarmTaskEvent::SwarmTaskCreated(_) => "SwarmTaskCreated",
            SwarmTaskEvent::SwarmTaskStarted(_) => "SwarmTaskStarted",
            SwarmTaskEvent::OptimizationProgressed(_) => "OptimizationProgressed",
            SwarmTaskEvent::SubtasksRecorded(_) => "SubtasksRecorded",
            SwarmTaskEvent::SwarmTaskCompleted(_) => "SwarmTaskCompleted",
            SwarmTaskEvent::SwarmTaskFailed(_) => "SwarmTaskFailed",
            SwarmTaskEvent::SwarmTaskCancelled(_) => "SwarmTaskCancelled",
            SwarmTaskEvent::SwarmTaskInterrupted(_) => "SwarmTaskInterrupted",
            SwarmTaskEvent::AnalysisProgressed(_) => "AnalysisProgressed",
            SwarmTaskEvent::AnalysisResultsRecorded(_) => "AnalysisResultsRecorded",
            SwarmTaskEvent::InsightRecorded(_) => "InsightRecorded",
            SwarmTaskEvent::AgentCallRecorded(_) => "AgentCallRecorded",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        use SwarmTaskEvent as E;
        Ok(match t {
            "SwarmTaskCreated" => E::SwarmTaskCreated(payload(t, data)?),
            "SwarmTaskStarted" => E::SwarmTaskStarted(payload(t, data)?),
            "OptimizationProgressed" => E::OptimizationProgressed(payload(t, data)?),
            "SubtasksRecorded" => E::SubtasksRecorded(payload(t, data)?),
            "SwarmTaskCompleted" => E::SwarmTaskCompleted(payload(t, data)?),
            "SwarmTaskFailed" => E::SwarmTaskFailed(payload(t, data)?),
            "SwarmTaskCancelled" => E::SwarmTaskCancelled(payload(t, data)?),
            "SwarmTaskInterrupted" => E::SwarmTaskInterrupted(payload(t, data)?),
            "AnalysisProgressed" => E::AnalysisProgressed(payload(t, data)?),
            "AnalysisResultsRecorded" => E::AnalysisResultsRecorded(payload(t, data)?),
            "InsightRecorded" => E::InsightRecorded(payload(t, data)?),
            "AgentCallRecorded" => E::AgentCallRecorded(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every swarm task event type, for filters and the sample tests.
pub const SWARM_TASK_EVENT_TYPES: [&str; 9] = [
    "SwarmTaskCreated",
    "SwarmTaskStarted",
    "OptimizationProgressed",
    "SubtasksRecorded",
    "SwarmTaskCompleted",
    "SwarmTaskFailed",
    "SwarmTaskCancelled",
    "SwarmTaskInterrupted",
    "AgentCallRecorded",
];

/// The event types only analyses record (in the same `swarm_task` streams).
pub const ANALYSIS_EVENT_TYPES: [&str; 3] = [
    "AnalysisProgressed",
    "AnalysisResultsRecorded",
    "InsightRecorded",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_config_round_trips_and_is_told_apart_from_an_optimization() {
        let data = serde_json::json!({
            "task_id": "0193a1b2-0000-7000-8000-0000000000f2",
            "organization_id": "0193a1b2-0000-7000-8000-0000000000a1",
            "user_id": "0193a1b2-0000-7000-8000-0000000000b1",
            "type": "velocity",
            "objective": "nightly checks",
            "config": {
                "subtasks": [
                    {"kind": "prompt", "prompt": "Say hi", "model": null, "count": 3},
                    {"kind": "http", "method": "GET", "url": "http://127.0.0.1:9/ok", "body": null, "count": 1}
                ],
                "concurrency": 8, "timeout_ms": 1000, "retries": 2, "backoff_ms": 50,
                "mode": "fail_fast"
            },
            "created_at": "2026-11-21T09:00:00Z"
        });
        let event = SwarmTaskEvent::decode("SwarmTaskCreated", 1, data.clone()).unwrap();
        let SwarmTaskEvent::SwarmTaskCreated(c) = &event else {
            panic!("{event:?}")
        };
        let TaskConfig::Velocity(v) = &c.config else {
            panic!("{:?}", c.config)
        };
        assert_eq!(v.total(), 4);
        assert_eq!(event.to_data(), data);
    }
}
