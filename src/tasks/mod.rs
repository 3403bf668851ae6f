//! The scheduler of long work: swarm tasks (Quantum optimizations, Velocity batches,
//! ToolboxAI agent executions, analyses), admitted in one place and run on every process.
//!
//! - **One leader admits.** A process leads while it holds a session-level advisory lock on
//!   a connection of its own (as the projection runners do). The leader *admits* tasks: it
//!   inserts a lease ([`lease`], table `task_leases`) for the next attempt of each task the
//!   caps allow, on the connection that holds its lock, so a leader that lost its lock
//!   cannot admit anything. The leader runs nothing itself unless its own workers claim it.
//! - **Every process works.** Each process has `WORKER_SLOTS` workers. An idle worker
//!   claims the oldest admitted lease with `FOR UPDATE SKIP LOCKED`, records the attempt's
//!   start naming itself (`SwarmTaskStarted.worker`, `host:pid:id`), heartbeats the lease
//!   every second while it runs, and deletes it when the task ends. Admission sends
//!   `NOTIFY`, so an idle worker on any process starts within milliseconds; a poll every
//!   second is the fallback.
//! - **Admission** ([`admission`]): a task is weighed before it is recorded (its memory
//!   against `WORKER_MEMORY_BUDGET_MB`, its organization's queue against
//!   `SWARM_MAX_QUEUED_PER_ORG`).
//! - **Fair order, exact caps.** The leader looks at the head of every organization's
//!   queue, not at the oldest tasks overall: each organization's first
//!   `SWARM_MAX_CONCURRENT_PER_ORG` waiting or running tasks, ranked round-robin (every
//!   organization's first before anyone's second), oldest first within a rank. It admits
//!   what the caps allow, counting the leases of every process: at most
//!   `MAX_CONCURRENT_GENERATIONS` in all, `SWARM_MAX_CONCURRENT_PER_ORG` per organization
//!   and `SWARM_MAX_CONCURRENT_PER_USER` per user (whatever organizations the user made). An
//!   organization whose oldest waiting task cannot be admitted gets none of its later ones,
//!   so queued tasks keep their order per organization; a flood from one tenant delays
//!   another's task by at most the time a slot takes to free.
//! - **Rescue.** A lease whose heartbeat is older than `WORKER_LEASE_SECS` belongs to a
//!   process that died (or lost its database): the leader records `SwarmTaskInterrupted`
//!   for that attempt, deletes the lease and admits the task again. A task that the log
//!   says is running but that has no lease (a leader before this one started it) is
//!   interrupted the same way. A batch resumes after the subtasks already recorded; an
//!   optimization starts over (its seed makes it the same run): a progress report holds the
//!   best point only, not the swarm's positions, velocities and random state, so resuming
//!   from it could not give the result of an uninterrupted run. Every worker report names
//!   its attempt, and the decider refuses reports of an attempt that is no longer current,
//!   so a worker of the old process, should it still be alive, can record nothing and stops.
//! - **A lost lease stops its worker.** A worker whose heartbeat fails (a connection error)
//!   or finds its lease gone stops without recording anything: the leader rescues it.
//! - **Poison work is parked.** A task whose attempts ended with the death of their process
//!   `TASK_MAX_ATTEMPTS` times is failed as `abandoned` with the reason, and never started
//!   again: work that kills its process cannot follow the lease from process to process. A
//!   graceful shutdown releases its tasks (`SwarmTaskInterrupted` with `released`), which
//!   does not count.
//! - **Workers never write events.** They run on the blocking pool (optimizations) or as
//!   tasks (batch subtasks) and report to the task's actor with commands; progress is
//!   coalesced to at most one report every [`REPORT_EVERY`].
//! - **Limits.** Each task has `MAX_CONTENT_GENERATION_TIME` of wall-clock time; a cancel
//!   (from the user, or from a lost lease) stops it after the current iteration or
//!   subtask try.

pub mod admission;
pub mod agent;
pub mod analysis;
pub mod batch;
pub mod chat;
pub mod lease;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::web;
use chrono::Utc;
use dashmap::DashMap;
use sqlx::postgres::PgListener;
use sqlx::PgConnection;
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
/// Longest wait for one statement of the leader, the workers or the heartbeat.
const STATEMENT_LIMIT: Duration = Duration::from_secs(5);

/// The advisory-lock key of the scheduler's leader (FNV-1a of its name, like the
/// projections' keys).
pub fn lock_key() -> i64 {
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
    attempt: u32,
    /// When this process claimed it (a heartbeat that began before may not list it yet).
    claimed: Instant,
    /// Set to stop the worker without recording anything more.
    cancel: Arc<AtomicBool>,
    /// Set when the lease was lost: the worker leaves it to the leader's rescue.
    lost: Arc<AtomicBool>,
}

struct Inner {
    /// Wakes the leader.
    wake: Notify,
    /// Wakes the idle workers.
    claim: Notify,
    /// The log position of the newest task created in this process: before its next scan
    /// the leader waits (briefly) for the read model to have it.
    created: std::sync::atomic::AtomicI64,
    running: DashMap<Uuid, Running>,
    stopped: AtomicBool,
    stop: Notify,
    leading: AtomicBool,
    /// This process's name in leases and `SwarmTaskStarted.worker`.
    owner: String,
    /// Tasks this process runs at once.
    slots: usize,
    pool: OnceLock<sqlx::PgPool>,
}

/// A cheap handle to this process's scheduler.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
    budget: admission::WorkerBudget,
}

impl Scheduler {
    /// A scheduler whose workers run `slots` tasks at once (0: one per core), for the
    /// process named `owner` (see [`lease::owner_id`]).
    pub fn new(budget: admission::WorkerBudget, slots: usize, owner: String) -> Self {
        let slots = if slots == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            slots
        };
        Self {
            inner: Arc::new(Inner {
                wake: Notify::new(),
                claim: Notify::new(),
                created: Default::default(),
                running: DashMap::new(),
                stopped: AtomicBool::new(false),
                stop: Notify::new(),
                leading: AtomicBool::new(false),
                owner,
                slots,
                pool: OnceLock::new(),
            }),
            budget,
        }
    }

    /// The memory and CPU that this process's workers may use.
    pub fn budget(&self) -> &admission::WorkerBudget {
        &self.budget
    }

    /// This process's name in leases and task views (`host:pid:id`).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The tasks this process's workers may run at once.
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// A task was finished: look for work now rather than at the next scan.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// A task was created at log position `position`: look for work as soon as the read
    /// model has it (here, and on the leader's process).
    pub fn created(&self, position: i64) {
        self.inner.created.fetch_max(position, Ordering::Relaxed);
        self.inner.wake.notify_one();
        if !self.is_leader() {
            if let Some(pool) = self.inner.pool.get().cloned() {
                actix_web::rt::spawn(async move {
                    let _ = tokio::time::timeout(STATEMENT_LIMIT, lease::notify(&pool, "created"))
                        .await;
                });
            }
        }
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

    /// Leads or stands by, runs this process's workers, heartbeats their leases and
    /// listens for wake-ups, until [`Scheduler::stop`]. Must run on the actix system (the
    /// task actors live there); each loop is restarted with a log line should it panic.
    pub fn start(&self, state: web::Data<AppState>) {
        let _ = self.inner.pool.set(state.pool.clone());
        let inner = self.inner.clone();
        let st = state.clone();
        crate::rt::supervise_local("swarm-scheduler", move || {
            let (state, inner) = (st.clone(), inner.clone());
            async move { stand_or_lead(state, inner).await }
        });
        let inner = self.inner.clone();
        let st = state.clone();
        crate::rt::supervise_local("swarm-workers", move || {
            let (state, inner) = (st.clone(), inner.clone());
            async move { work(state, inner).await }
        });
        // These two hold connections of their own (a listener): on the tokio runtime, so
        // that they are dropped within it.
        let inner = self.inner.clone();
        let pool = state.pool.clone();
        crate::rt::supervise("swarm-heartbeat", move || {
            let (pool, inner) = (pool.clone(), inner.clone());
            async move { heartbeat(pool, inner).await }
        });
        let inner = self.inner.clone();
        let pool = state.pool.clone();
        crate::rt::supervise("swarm-listener", move || {
            let (pool, inner) = (pool.clone(), inner.clone());
            async move { listen(pool, inner).await }
        });
    }

    /// Records a graceful release of every task this process runs (it does not count as a
    /// death of their attempts), gives their leases back, then stops them; the leader
    /// admits them again at once.
    pub async fn release(&self, state: &AppState) {
        let held: Vec<(Uuid, Uuid, u32)> = self
            .inner
            .running
            .iter()
            .map(|r| (*r.key(), r.organization_id, r.attempt))
            .collect();
        // The workers stop first, so that none of them records past the release.
        self.stop();
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
                tracing::warn!(task = %id, "release not recorded; the leader counts a death");
                continue;
            }
            let given_back = tokio::time::timeout(
                Duration::from_secs(2),
                lease::release(&state.pool, id, attempt, &self.inner.owner),
            )
            .await;
            if !matches!(given_back, Ok(Ok(()))) {
                tracing::warn!(task = %id, "lease not given back; the leader rescues it");
            }
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(2), lease::notify(&state.pool, "freed")).await;
    }

    /// Stops leading and stops the local workers without recording anything: their leases
    /// are no longer heartbeaten, and the leader rescues them.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.stop.notify_waiters();
        for r in self.inner.running.iter() {
            r.lost.store(true, Ordering::Relaxed);
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
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = inner.stop.notified() => {}
        }
    }
}

/// Runs `query` within [`STATEMENT_LIMIT`].
async fn limited<T, E>(query: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(STATEMENT_LIMIT, query).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("no answer from the database within {STATEMENT_LIMIT:?}"),
    }
}

/// Takes the lock when it can, then admits and rescues work until an error or a stop.
async fn lead(state: &web::Data<AppState>, inner: &Arc<Inner>) -> anyhow::Result<()> {
    let mut conn = limited(state.pool.acquire()).await?.detach();
    limited(
        sqlx::query("SELECT set_config('application_name', $1, false)")
            .bind(format!("ub-scheduler/{}", inner.owner))
            .execute(&mut conn),
    )
    .await?;
    loop {
        if inner.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        let got: bool = limited(
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(lock_key())
                .fetch_one(&mut conn),
        )
        .await?;
        if got {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = inner.stop.notified() => return Ok(()),
        }
    }
    tracing::info!(owner = %inner.owner, "swarm scheduler leads");
    // The lock lives on the host this connection reached (see `db::primary`).
    let epoch = crate::db::epoch();
    inner.leading.store(true, Ordering::Relaxed);
    loop {
        if inner.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The lock lives as long as this connection: make sure it still does.
        limited(sqlx::query("SELECT 1").execute(&mut conn)).await?;
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
        rescue(state, &mut conn).await?;
        if admit(state, &mut conn).await? > 0 {
            limited(lease::notify(&mut conn, "admitted")).await?;
            inner.claim.notify_one();
        }
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

/// Rescues the leases whose heartbeat stopped: records their attempt as interrupted (a
/// death) and deletes them, so that the next scan admits the task again.
async fn rescue(state: &web::Data<AppState>, conn: &mut PgConnection) -> anyhow::Result<()> {
    let secs = state.config.worker_lease_secs.max(1);
    for stale in limited(lease::stale(conn, secs)).await? {
        let id = stale.task_id;
        let (_, task) = match state.registries.swarm_tasks.inspect(id).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "swarm task could not be read");
                continue;
            }
        };
        if task.status == TaskStatus::Running && task.attempt == stale.attempt as u32 {
            let fence = SwarmCommand::Interrupt {
                attempt: task.attempt,
                released: false,
                at: Utc::now(),
            };
            if let Err(e) = command(state, id, stale.organization_id, fence).await {
                tracing::warn!(task = %id, error = %e, "interrupt not recorded");
                continue;
            }
            metrics::counter!("ub_swarm_leases_rescued_total").increment(1);
            tracing::warn!(
                task = %id,
                attempt = task.attempt,
                owner = stale.owner.as_deref().unwrap_or(""),
                "rescued a task whose worker stopped heartbeating"
            );
        }
        limited(lease::remove(
            conn,
            id,
            stale.attempt,
            stale.owner.as_deref(),
        ))
        .await?;
    }
    Ok(())
}

/// Admits what the caps allow, the heads of every organization's queue in turn; returns
/// how many it admitted.
async fn admit(state: &web::Data<AppState>, conn: &mut PgConnection) -> anyhow::Result<usize> {
    let config = &state.config;
    let global = config.max_concurrent_generations.max(1);
    let per_org = config.swarm_max_concurrent_per_org.max(1);
    let per_user = config.swarm_max_concurrent_per_user.max(1);
    let max_deaths = config.task_max_attempts.max(1);
    // Every lease counts, whichever process runs it or will.
    let leases = limited(lease::all(conn)).await?;
    let mut leased: HashSet<Uuid> = HashSet::new();
    let mut orgs: HashMap<Uuid, usize> = HashMap::new();
    let mut users: HashMap<Uuid, usize> = HashMap::new();
    for l in &leases {
        leased.insert(l.task_id);
        *orgs.entry(l.organization_id).or_default() += 1;
        *users.entry(l.user_id).or_default() += 1;
    }
    if leased.len() >= global {
        return Ok(0);
    }
    // Each organization's first `per_org` tasks that wait or run, ranked so that every
    // organization's first comes before anyone's second: one tenant's flood of waiting
    // tasks never hides another tenant's task from the scan.
    let rows: Vec<(Uuid, Uuid, Uuid)> = limited(
        sqlx::query_as(
            "SELECT id, organization_id, user_id FROM ( \
               SELECT id, organization_id, user_id, created_position, \
                      row_number() OVER (PARTITION BY organization_id ORDER BY created_position) AS rank \
               FROM swarm_tasks WHERE status IN ('queued', 'running', 'interrupted') \
             ) heads WHERE rank <= $1 ORDER BY rank, created_position LIMIT $2",
        )
        .bind(per_org as i64)
        .bind(SCAN_LIMIT)
        .fetch_all(&state.pool),
    )
    .await?;
    let mut blocked: HashSet<Uuid> = HashSet::new();
    let mut admitted = 0;
    for (id, org, user) in rows {
        if leased.len() >= global {
            break;
        }
        if leased.contains(&id) || blocked.contains(&org) {
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
                // Running, but without a lease (only this leader makes them): its worker
                // was started by an earlier leader and its process is gone.
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
            tracing::info!(task = %id, attempt, "admitting an interrupted task again");
        }
        if !limited(lease::admit(conn, id, org, user, attempt)).await? {
            continue;
        }
        admitted += 1;
        leased.insert(id);
        *orgs.entry(org).or_default() += 1;
        *users.entry(user).or_default() += 1;
    }
    Ok(admitted)
}

/// This process's workers: claim admitted leases while slots are free, until stopped.
async fn work(state: web::Data<AppState>, inner: Arc<Inner>) {
    loop {
        if inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        let free = inner.slots.saturating_sub(inner.running.len());
        if free > 0 {
            match limited(lease::claim(&state.pool, &inner.owner, free)).await {
                Ok(claimed) => {
                    for l in claimed {
                        spawn_run(&state, &inner, l);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "admitted tasks could not be claimed"),
            }
        }
        tokio::select! {
            _ = inner.claim.notified() => {}
            _ = tokio::time::sleep(lease::CLAIM_POLL) => {}
            _ = inner.stop.notified() => return,
        }
    }
}

/// Runs a claimed lease: records the attempt's start here, runs it, and gives the lease
/// back when the task ended (not when the lease was lost: the leader rescues that one).
fn spawn_run(state: &web::Data<AppState>, inner: &Arc<Inner>, l: lease::Lease) {
    let id = l.task_id;
    let attempt = l.attempt as u32;
    let cancel = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    inner.running.insert(
        id,
        Running {
            organization_id: l.organization_id,
            attempt,
            claimed: Instant::now(),
            cancel: cancel.clone(),
            lost: lost.clone(),
        },
    );
    let run = Run {
        state: state.clone(),
        id,
        org: l.organization_id,
        attempt,
        cancel,
        deadline: Instant::now()
            + Duration::from_secs(state.config.max_content_generation_time.max(1)),
    };
    let inner = inner.clone();
    actix_web::rt::spawn(async move {
        let give_back = match run.claim(&inner.owner).await {
            Ok(Some(task)) => {
                run.execute(task).await;
                true
            }
            // The task cannot start (cancelled meanwhile): the lease is void.
            Ok(None) => true,
            // Not known whether the start was recorded: the leader sorts it out.
            Err(()) => false,
        };
        if give_back && !lost.load(Ordering::Relaxed) {
            let freed = limited(lease::release(&run.state.pool, id, attempt, &inner.owner)).await;
            if let Err(e) = freed {
                tracing::warn!(task = %id, error = %e, "lease not given back; the leader rescues it");
            }
            let _ = limited(lease::notify(&run.state.pool, "freed")).await;
        }
        inner.running.remove(&id);
        inner.wake.notify_one();
        inner.claim.notify_one();
    });
}

/// Heartbeats this process's leases every [`lease::HEARTBEAT_EVERY`]; stops the workers
/// whose lease is gone, and all of them when the heartbeat fails.
///
/// The heartbeat runs on a connection of its own named after the process
/// ([`lease::presence_name`]): while this process lives, PostgreSQL lists that session; when
/// the process dies, the server closes it, and the leader rescues the process's leases
/// without waiting out `WORKER_LEASE_SECS` (see [`lease::stale`]).
async fn heartbeat(pool: sqlx::PgPool, inner: Arc<Inner>) {
    let mut presence: Option<PgConnection> = None;
    loop {
        if presence.is_none() {
            presence = open_presence(&pool, &inner.owner).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(lease::HEARTBEAT_EVERY) => {}
            _ = inner.stop.notified() => return,
        }
        if inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        if inner.running.is_empty() {
            continue;
        }
        let began = Instant::now();
        let mine: Vec<Uuid> = inner.running.iter().map(|r| *r.key()).collect();
        let beat = match presence.as_mut() {
            Some(conn) => limited(lease::heartbeat(conn, &inner.owner, &mine)).await,
            None => Err(anyhow::anyhow!("no connection for the heartbeat")),
        };
        match beat {
            Ok(held) => {
                let held: HashSet<Uuid> = held.into_iter().collect();
                for r in inner.running.iter() {
                    if r.claimed < began && !held.contains(r.key()) {
                        tracing::warn!(task = %r.key(), "lease lost; the worker stops");
                        r.lost.store(true, Ordering::Relaxed);
                        r.cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                // Whether the leases are still ours cannot be told: they are lost.
                tracing::warn!(error = %e, "lease heartbeat failed; the workers stop");
                presence = None;
                for r in inner.running.iter() {
                    r.lost.store(true, Ordering::Relaxed);
                    r.cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The heartbeat's connection, named after this process (`None` when the database cannot
/// be reached now; the next beat tries again).
async fn open_presence(pool: &sqlx::PgPool, owner: &str) -> Option<PgConnection> {
    let opened = async {
        let mut conn = limited(pool.acquire()).await?.detach();
        limited(
            sqlx::query("SELECT set_config('application_name', $1, false)")
                .bind(lease::presence_name(owner))
                .execute(&mut conn),
        )
        .await?;
        Ok::<_, anyhow::Error>(conn)
    };
    match opened.await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(error = %e, "the lease heartbeat has no connection yet");
            None
        }
    }
}

/// Listens for admissions (wakes the workers) and freed or created tasks (wakes the
/// leader). Every wait has its poll besides, so a lost listener only costs latency.
async fn listen(pool: sqlx::PgPool, inner: Arc<Inner>) {
    while !inner.stopped.load(Ordering::Relaxed) {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(lease::CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match limited(connected).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "task listener cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = inner.stop.notified() => return,
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(n) => match n.payload() {
                        "admitted" => inner.claim.notify_one(),
                        _ => inner.wake.notify_one(),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "task listener lost its connection");
                        break;
                    }
                },
                _ = inner.stop.notified() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    if inner.stopped.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
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
    /// Records the start of this attempt on `worker`. `Ok(None)`: the task cannot start (it
    /// was cancelled, or the attempt is not the next one); `Err`: not known whether it was
    /// recorded.
    async fn claim(&self, worker: &str) -> Result<Option<SwarmTask>, ()> {
        let start = SwarmCommand::Claim {
            attempt: self.attempt,
            worker: worker.to_owned(),
            at: Utc::now(),
        };
        match command(&self.state, self.id, self.org, start).await {
            Ok(()) => {}
            Err(CommandError::Domain(e)) => {
                tracing::info!(task = %self.id, error = %e, "an admitted task cannot start");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(task = %self.id, error = %e, "start not recorded");
                return Err(());
            }
        }
        if self.attempt > 1 {
            tracing::info!(task = %self.id, attempt = self.attempt, "resuming an interrupted task");
        }
        match self.state.registries.swarm_tasks.inspect(self.id).await {
            Ok((_, task)) => Ok(Some(task)),
            Err(e) => {
                tracing::warn!(task = %self.id, error = %e, "swarm task could not be read");
                Err(())
            }
        }
    }

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
