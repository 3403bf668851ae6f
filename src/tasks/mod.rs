//! The scheduler of long work: swarm tasks (Quantum optimizations, Velocity batches,
//! ToolboxAI agent executions).
//!
//! - **One leader across processes.** A process leads while it holds a session-level
//!   advisory lock on a connection of its own (as the projection runners do). Only the leader
//!   starts tasks, so no task runs twice at once; when the leader's process dies, PostgreSQL
//!   releases the lock and a standby takes over within a second.
//! - **Admission** ([`admission`]): a task is weighed before it is recorded (its memory
//!   against `WORKER_MEMORY_BUDGET_MB`, its organization's queue against
//!   `SWARM_MAX_QUEUED_PER_ORG`).
//! - **Fair order.** The leader looks at the head of every organization's queue, not at the
//!   oldest tasks overall: each organization's first `SWARM_MAX_CONCURRENT_PER_ORG` waiting
//!   or running tasks, ranked round-robin (every organization's first before anyone's
//!   second), oldest first within a rank. It starts what the caps allow: at most
//!   `MAX_CONCURRENT_GENERATIONS` running in all, `SWARM_MAX_CONCURRENT_PER_ORG` per
//!   organization and `SWARM_MAX_CONCURRENT_PER_USER` per user (whatever organizations the
//!   user made). An organization whose oldest waiting task cannot start starts none of its
//!   later ones, so queued tasks keep their order per organization; a flood from one
//!   tenant delays another's task by at most the time a slot takes to free.
//! - **Interrupted tasks.** A task that the log says is running but that no local worker
//!   runs was started by a process that lost the lead (it died, or lost its database
//!   connection): the leader records `SwarmTaskInterrupted` for that attempt and starts the
//!   next one. A batch resumes after the subtasks already recorded; an optimization starts
//!   over (its seed makes it the same run). Every worker report names its attempt, and the
//!   decider refuses reports of an attempt that is no longer current, so a worker of the old
//!   process, should it still be alive, can record nothing and stops.
//! - **Poison work is parked.** A task whose attempts ended with the death of their process
//!   `TASK_MAX_ATTEMPTS` times is failed as `abandoned` with the reason, and never started
//!   again: work that kills its process cannot follow the lead from process to process. A
//!   graceful shutdown releases its tasks (`SwarmTaskInterrupted` with `released`), which
//!   does not count.
//! - **Workers never write events.** They run on the blocking pool (optimizations) or as
//!   tasks (batch subtasks) and report to the task's actor with commands; progress is
//!   coalesced to at most one report every [`REPORT_EVERY`].
//! - **Limits.** Each task has `MAX_CONTENT_GENERATION_TIME` of wall-clock time; a cancel
//!   (from the user, or from losing the lead) stops it after the current iteration or
//!   subtask try.

pub mod admission;
pub mod agent;
pub mod analysis;
pub mod batch;
pub mod chat;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web;
use chrono::Utc;
use dashmap::DashMap;
use tokio::sync::{watch, Notify};
use universal_events::swarm::{TaskConfig, TaskResult};
use uuid::Uuid;

use crate::actors::swarm_task::{ScopedCommand, SwarmCommand, SwarmError, SwarmTask, TaskStatus};
use crate::actors::{CommandError, CommandMeta};
use crate::state::AppState;
use crate::swarm::objective::Objective;
use crate::swarm::pso::{self, Control, RunError};

/// Workers report progress at most this often.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How often the leader looks for work when nothing wakes it.
const SCAN_EVERY: Duration = Duration::from_millis(250);
/// How often a standby tries to take the lead.
const STANDBY_POLL: Duration = Duration::from_millis(500);
/// Most queue heads looked at per scan (organizations × their per-organization cap).
const SCAN_LIMIT: i64 = 2_000;

/// The advisory-lock key of the scheduler's leader (FNV-1a of its name, like the
/// projections' keys).
fn lock_key() -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"scheduler:swarm_tasks" {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// A task this process runs.
struct Running {
    organization_id: Uuid,
    user_id: Uuid,
    attempt: u32,
    /// Set to stop the worker without recording anything more.
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    wake: Notify,
    /// The log position of the newest task created in this process: before its next scan
    /// the leader waits (briefly) for the read model to have it.
    created: std::sync::atomic::AtomicI64,
    running: DashMap<Uuid, Running>,
    stopped: AtomicBool,
    stop: Notify,
    leading: AtomicBool,
}

/// A cheap handle to this process's scheduler.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
    budget: admission::WorkerBudget,
}

impl Scheduler {
    pub fn new(budget: admission::WorkerBudget) -> Self {
        Self {
            inner: Arc::default(),
            budget,
        }
    }

    /// The memory and CPU that this process's workers may use.
    pub fn budget(&self) -> &admission::WorkerBudget {
        &self.budget
    }

    /// A task was finished: look for work now rather than at the next scan.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// A task was created at log position `position`: look for work as soon as the read
    /// model has it.
    pub fn created(&self, position: i64) {
        self.inner.created.fetch_max(position, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    /// Stops the local worker of `id`, if this process runs it. The cancel itself is an
    /// event recorded before; this only spares the worker its next report.
    pub fn cancel_local(&self, id: Uuid) -> bool {
        match self.inner.running.get(&id) {
            Some(r) => {
                r.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Tasks running in this process now.
    pub fn running_here(&self) -> usize {
        self.inner.running.len()
    }

    /// Whether this process leads the scheduler now.
    pub fn is_leader(&self) -> bool {
        self.inner.leading.load(Ordering::Relaxed)
    }

    /// Leads or stands by until [`Scheduler::stop`]. Must run on the actix system (the
    /// task actors live there); restarted with a log line should it ever panic.
    pub fn start(&self, state: web::Data<AppState>) {
        let inner = self.inner.clone();
        crate::rt::supervise_local("swarm-scheduler", move || {
            let (state, inner) = (state.clone(), inner.clone());
            async move { stand_or_lead(state, inner).await }
        });
    }

    /// Records a graceful release of every task this process runs (it does not count as a
    /// death of their attempts), then stops them; the next leader resumes them.
    pub async fn release(&self, state: &AppState) {
        let held: Vec<(Uuid, Uuid, u32)> = self
            .inner
            .running
            .iter()
            .map(|r| (*r.key(), r.organization_id, r.attempt))
            .collect();
        for (id, org, attempt) in held {
            let release = SwarmCommand::Interrupt {
                attempt,
                released: true,
                at: Utc::now(),
            };
            let released =
                tokio::time::timeout(Duration::from_secs(2), command(state, id, org, release))
                    .await;
            if !matches!(released, Ok(Ok(()))) {
                tracing::warn!(task = %id, "release not recorded; the next leader counts a death");
            }
        }
        self.stop();
    }

    /// Stops leading and stops the local workers without recording anything: the tasks stay
    /// `running` in the log and the next leader resumes them.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.stop.notify_waiters();
        for r in self.inner.running.iter() {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// Leads when it can, stands by otherwise, until the scheduler is stopped.
async fn stand_or_lead(state: web::Data<AppState>, inner: Arc<Inner>) {
    while !inner.stopped.load(Ordering::Relaxed) {
        if let Err(e) = lead(&state, &inner).await {
            tracing::warn!(error = %e, "swarm scheduler lost the lead");
        }
        inner.leading.store(false, Ordering::Relaxed);
        // Whatever runs here now runs without the lead: stop it, without recording
        // anything, so that the next leader resumes it.
        for r in inner.running.iter() {
            r.cancel.store(true, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = inner.stop.notified() => {}
        }
    }
}

/// Takes the lock when it can, then admits work until an error or a stop.
async fn lead(state: &web::Data<AppState>, inner: &Arc<Inner>) -> anyhow::Result<()> {
    let mut conn = state.pool.acquire().await?.detach();
    loop {
        if inner.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key())
            .fetch_one(&mut conn)
            .await?;
        if got {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = inner.stop.notified() => return Ok(()),
        }
    }
    tracing::info!("swarm scheduler leads");
    // The lock lives on the host this connection reached (see `db::primary`).
    let epoch = crate::db::epoch();
    inner.leading.store(true, Ordering::Relaxed);
    loop {
        if inner.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The lock lives as long as this connection: make sure it still does.
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        if crate::db::epoch() != epoch {
            anyhow::bail!("the database moved to another host: the lock stayed behind");
        }
        let created = inner.created.swap(0, Ordering::Relaxed);
        if created > 0 {
            // Read-your-writes for the scan; on a timeout the next scan finds it anyway.
            let _ = state
                .progress
                .wait_for(
                    &state.pool,
                    crate::projections::swarm::NAME,
                    created,
                    Duration::from_secs(1),
                )
                .await;
        }
        admit(state, inner).await?;
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = inner.stop.notified() => return Ok(()),
        }
    }
}

/// Metadata of the scheduler's and workers' reports: the task's organization (the history
/// API and live subscriptions filter on it) and `scheduler` as the source.
fn meta(org: Uuid) -> CommandMeta {
    CommandMeta {
        frontend: Some("scheduler".into()),
        organization_id: Some(org),
        ..CommandMeta::new()
    }
}

async fn command(
    state: &AppState,
    id: Uuid,
    org: Uuid,
    cmd: SwarmCommand,
) -> Result<(), CommandError<SwarmError>> {
    state
        .registries
        .swarm_tasks
        .execute(
            id,
            ScopedCommand {
                organization_id: org,
                cmd,
            },
            None,
            meta(org),
        )
        .await
        .map(|_| ())
}

/// Starts what the caps allow, the heads of every organization's queue in turn.
async fn admit(state: &web::Data<AppState>, inner: &Arc<Inner>) -> anyhow::Result<()> {
    let config = &state.config;
    let global = config.max_concurrent_generations.max(1);
    let per_org = config.swarm_max_concurrent_per_org.max(1);
    let per_user = config.swarm_max_concurrent_per_user.max(1);
    let max_deaths = config.task_max_attempts.max(1);
    if inner.running.len() >= global {
        return Ok(());
    }
    // Each organization's first `per_org` tasks that wait or run, ranked so that every
    // organization's first comes before anyone's second: one tenant's flood of waiting
    // tasks never hides another tenant's task from the scan.
    let rows: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, organization_id, user_id FROM ( \
           SELECT id, organization_id, user_id, created_position, \
                  row_number() OVER (PARTITION BY organization_id ORDER BY created_position) AS rank \
           FROM swarm_tasks WHERE status IN ('queued', 'running', 'interrupted') \
         ) heads WHERE rank <= $1 ORDER BY rank, created_position LIMIT $2",
    )
    .bind(per_org as i64)
    .bind(SCAN_LIMIT)
    .fetch_all(&state.pool)
    .await?;
    let mut orgs: HashMap<Uuid, usize> = HashMap::new();
    let mut users: HashMap<Uuid, usize> = HashMap::new();
    for r in inner.running.iter() {
        *orgs.entry(r.organization_id).or_default() += 1;
        *users.entry(r.user_id).or_default() += 1;
    }
    let mut blocked: HashSet<Uuid> = HashSet::new();
    for (id, org, user) in rows {
        if inner.running.len() >= global {
            break;
        }
        if inner.running.contains_key(&id) || blocked.contains(&org) {
            continue;
        }
        if orgs.get(&org).copied().unwrap_or(0) >= per_org
            || users.get(&user).copied().unwrap_or(0) >= per_user
        {
            blocked.insert(org);
            continue;
        }
        // The read model may lag: the task's own actor has the last word.
        let (_, task) = match state.registries.swarm_tasks.inspect(id).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "swarm task could not be read");
                continue;
            }
        };
        let deaths = match task.status {
            TaskStatus::Queued | TaskStatus::Interrupted => task.deaths,
            TaskStatus::Running => {
                // Running, but not here, and this process leads: its process lost the lead.
                let fence = SwarmCommand::Interrupt {
                    attempt: task.attempt,
                    released: false,
                    at: Utc::now(),
                };
                if let Err(e) = command(state, id, org, fence).await {
                    tracing::warn!(task = %id, error = %e, "interrupt not recorded");
                    continue;
                }
                tracing::info!(task = %id, attempt = task.attempt, "found an interrupted task");
                task.deaths + 1
            }
            _ => continue,
        };
        if deaths >= max_deaths {
            let reason = format!(
                "{deaths} of its attempts ended with the death of the process running them \
                 (TASK_MAX_ATTEMPTS is {max_deaths}); it is not started again"
            );
            let abandon = SwarmCommand::Abandon {
                reason,
                at: Utc::now(),
            };
            match command(state, id, org, abandon).await {
                Ok(()) => {
                    metrics::counter!("ub_swarm_tasks_abandoned_total").increment(1);
                    tracing::error!(task = %id, deaths, "swarm task abandoned: it keeps killing its process");
                }
                Err(e) => tracing::warn!(task = %id, error = %e, "abandon not recorded"),
            }
            continue;
        }
        let attempt = task.attempt + 1;
        if attempt > 1 {
            tracing::info!(task = %id, attempt, "resuming an interrupted task");
        }
        let start = SwarmCommand::Start {
            attempt,
            at: Utc::now(),
        };
        match command(state, id, org, start).await {
            Ok(()) => {}
            Err(CommandError::Domain(_)) => continue,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "start not recorded");
                continue;
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        inner.running.insert(
            id,
            Running {
                organization_id: org,
                user_id: user,
                attempt,
                cancel: cancel.clone(),
            },
        );
        *orgs.entry(org).or_default() += 1;
        *users.entry(user).or_default() += 1;
        let run = Run {
            state: state.clone(),
            id,
            org,
            attempt,
            cancel,
            deadline: Instant::now()
                + Duration::from_secs(config.max_content_generation_time.max(1)),
        };
        let inner = inner.clone();
        actix_web::rt::spawn(async move {
            run.execute(task).await;
            inner.running.remove(&id);
            inner.wake.notify_one();
        });
    }
    Ok(())
}

/// One attempt of one task, as this process runs it.
pub(crate) struct Run {
    pub state: web::Data<AppState>,
    pub id: Uuid,
    pub org: Uuid,
    pub attempt: u32,
    /// Stop without recording anything more (a user cancel, a lost lead, a fenced attempt).
    pub cancel: Arc<AtomicBool>,
    pub deadline: Instant,
}

impl Run {
    async fn execute(&self, task: SwarmTask) {
        let started = Instant::now();
        let outcome = match &task.config {
            Some(TaskConfig::Quantum(_)) => self.optimize(&task).await,
            Some(TaskConfig::Velocity(_)) => batch::run(self, &task).await,
            Some(TaskConfig::Analysis(_)) => analysis::run(self, &task).await,
            Some(TaskConfig::Agent(_)) => agent::run(self, &task).await,
            None => Err(Finish::Fail("the task has no settings".into())),
        };
        let cmd = match outcome {
            Ok(result) => SwarmCommand::Complete {
                attempt: self.attempt,
                result,
                at: Utc::now(),
            },
            Err(Finish::Fail(error)) => SwarmCommand::Fail {
                attempt: self.attempt,
                error,
                at: Utc::now(),
            },
            Err(Finish::Stopped) => return,
        };
        match self.report(cmd).await {
            Ok(()) => {
                tracing::info!(task = %self.id, elapsed = ?started.elapsed(), "swarm task finished")
            }
            Err(e) => tracing::warn!(task = %self.id, error = %e, "swarm task end not recorded"),
        }
    }

    /// Sends a report to the task's actor. A refusal means the attempt is over (cancelled,
    /// or taken over): the worker is told to stop.
    pub(crate) async fn report(&self, cmd: SwarmCommand) -> Result<(), CommandError<SwarmError>> {
        let result = command(&self.state, self.id, self.org, cmd).await;
        if let Err(CommandError::Domain(_)) = &result {
            self.cancel.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Whether the attempt should stop: cancelled here, or no longer current in the log
    /// (checked on idle ticks, since a report would have found it out otherwise).
    pub(crate) async fn still_current(&self) -> bool {
        if self.cancel.load(Ordering::Relaxed) {
            return false;
        }
        match self.state.registries.swarm_tasks.inspect(self.id).await {
            Ok((_, t)) if t.status == TaskStatus::Running && t.attempt == self.attempt => true,
            Ok(_) => {
                self.cancel.store(true, Ordering::Relaxed);
                false
            }
            Err(_) => true,
        }
    }

    pub(crate) fn time_limit(&self) -> String {
        format!(
            "the task exceeded its time limit of {} s",
            self.state.config.max_content_generation_time
        )
    }

    async fn optimize(&self, task: &SwarmTask) -> Result<TaskResult, Finish> {
        let Some(TaskConfig::Quantum(config)) = task.config.clone() else {
            return Err(Finish::Fail("not an optimization".into()));
        };
        let objective = Objective::parse(&task.objective, config.dimensions)
            .map_err(|e| Finish::Fail(format!("objective {e}")))?;
        let (tx, mut rx) = watch::channel(None);
        let control = Control {
            cancel: self.cancel.clone(),
            deadline: Some(self.deadline),
            progress: Some(tx),
        };
        // The run's memory and a CPU slot, held by the thread until the run really ends.
        let cancel = self.cancel.clone();
        let lease = self
            .state
            .swarm
            .budget()
            .lease(
                admission::optimize_bytes(&config),
                true,
                self.deadline,
                || cancel.load(Ordering::Relaxed),
            )
            .await;
        let Some(lease) = lease else {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Finish::Stopped);
            }
            return Err(Finish::Fail(self.time_limit()));
        };
        let job = tokio::task::spawn_blocking(move || {
            let _lease = lease;
            pso::optimize(&objective, &config, control)
        });
        tokio::pin!(job);
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle = 0u32;
        loop {
            tokio::select! {
                done = &mut job => {
                    return match done {
                        Ok(Ok(out)) => Ok(TaskResult::Optimization {
                            best_position: out.best_position,
                            best_cost: out.best_cost,
                            iterations: out.iterations,
                            evaluations: out.evaluations,
                            elapsed_ms: out.elapsed.as_millis() as u64,
                        }),
                        Ok(Err(RunError::Cancelled)) => Err(Finish::Stopped),
                        Ok(Err(RunError::TimedOut(_))) => Err(Finish::Fail(self.time_limit())),
                        Ok(Err(e)) => Err(Finish::Fail(e.to_string())),
                        Err(e) => Err(Finish::Fail(format!("the optimization stopped: {e}"))),
                    };
                }
                _ = tick.tick() => {
                    if rx.has_changed().unwrap_or(false) {
                        idle = 0;
                        let Some(p) = rx.borrow_and_update().clone() else { continue };
                        let cmd = SwarmCommand::RecordProgress {
                            attempt: self.attempt,
                            iteration: p.iteration,
                            best_cost: p.best_cost,
                            best_position: p.best_position,
                            evaluations: p.evaluations,
                            at: Utc::now(),
                        };
                        if let Err(e) = self.report(cmd).await {
                            tracing::debug!(task = %self.id, error = %e, "progress not recorded");
                        }
                    } else {
                        idle += 1;
                        if idle % 4 == 0 {
                            self.still_current().await;
                        }
                    }
                }
            }
        }
    }
}

/// Why a task ended without a result.
pub(crate) enum Finish {
    /// Record the task as failed with this message.
    Fail(String),
    /// Record nothing: the attempt was cancelled or taken over.
    Stopped,
}
