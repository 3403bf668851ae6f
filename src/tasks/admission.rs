//! What a swarm task costs, and whether it may be admitted: the one place where every kind
//! of long work (optimizations, batches, analyses, agent executions) is weighed before it
//! is recorded and budgeted while it runs.
//!
//! - **Cost model.** The memory of an optimization follows from its swarm: argmin keeps,
//!   for each particle, its position, velocity and best position, and the population is
//!   copied once per iteration, so about four vectors of `dimensions` floats per particle
//!   (measured: 10,000 particles × 100 dimensions took 27 MB; the model says 32 MB). A
//!   prompt or HTTP subtask keeps at most a few bounded buffers.
//! - **Admission.** A task whose smallest unit of work (one optimization) needs more than
//!   the process's whole budget can never run: it is refused with 422 naming the field and
//!   the limit. An organization with `SWARM_MAX_QUEUED_PER_ORG` tasks waiting gets 429.
//! - **Run time.** Every unit of work leases its memory from the process's
//!   [`WorkerBudget`] before it starts, and CPU-bound work a CPU slot as well; the lease
//!   lives as long as the thread that does the work, so the budget is freed when the work
//!   really ends (a cancelled optimization holds it until its current iteration ends). A
//!   batch with `concurrency` 256 therefore runs as many subtasks at once as the budget
//!   holds, and several tasks on one process share the same budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use universal_events::swarm::{QuantumConfig, SubtaskSpec, TaskConfig};
use uuid::Uuid;

/// What every unit of work costs besides its own data (its task, buffers, channels).
const BASE_BYTES: u64 = 256 * 1024;
/// A prompt or HTTP subtask: its bounded output and the head of an answer.
const IO_SUBTASK_BYTES: u64 = 64 * 1024;
/// How often a waiting lease looks at its stop condition.
const LEASE_POLL: Duration = Duration::from_millis(250);

/// Bytes one optimization with these settings needs.
pub fn optimize_bytes(c: &QuantumConfig) -> u64 {
    let floats = u64::from(c.dimensions) * 8;
    u64::from(c.particles) * (4 * floats + 64) + 4 * floats + BASE_BYTES
}

/// Bytes one subtask of a batch needs, and whether it is CPU-bound.
pub fn subtask_cost(spec: &SubtaskSpec) -> (u64, bool) {
    match spec {
        SubtaskSpec::Optimize { config, .. } => (optimize_bytes(config), true),
        SubtaskSpec::Prompt { .. } | SubtaskSpec::Http { .. } => {
            (IO_SUBTASK_BYTES + BASE_BYTES, false)
        }
    }
}

/// Why a task is not admitted.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// The task can never run here: `field` asks for more than `limit`.
    TooCostly { field: String, message: String },
    /// The organization has `limit` tasks waiting already.
    TooManyQueued { limit: usize },
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

/// Refuses a task that no process could run within `budget_mb` MiB of worker memory.
pub fn check_cost(config: &TaskConfig, budget_mb: u64) -> Result<(), Refusal> {
    let budget = budget_mb.max(1) * 1024 * 1024;
    let too_costly = |field: String, bytes: u64| Refusal::TooCostly {
        field,
        message: format!(
            "one optimization with these settings needs about {} MiB, more than the {} MiB \
             a process gives its workers (WORKER_MEMORY_BUDGET_MB); use fewer particles or \
             dimensions",
            mib(bytes),
            budget_mb
        ),
    };
    match config {
        TaskConfig::Quantum(q) => {
            let bytes = optimize_bytes(q);
            if bytes > budget {
                return Err(too_costly("config.particles".into(), bytes));
            }
        }
        TaskConfig::Velocity(v) => {
            for (i, spec) in v.subtasks.iter().enumerate() {
                let (bytes, _) = subtask_cost(spec);
                if bytes > budget {
                    return Err(too_costly(
                        format!("config.subtasks[{i}].config.particles"),
                        bytes,
                    ));
                }
            }
        }
        TaskConfig::Analysis(_) | TaskConfig::Agent(_) => {}
    }
    Ok(())
}

/// Refuses a new task of `org` when it has `limit` tasks waiting already (read from the
/// read model: a burst of creations on several processes may pass it by a few).
pub async fn check_queue(pool: &PgPool, org: Uuid, limit: usize) -> Result<(), Refusal> {
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM swarm_tasks WHERE organization_id = $1 AND status = 'queued'",
    )
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| {
        // The creation itself needs the database: it fails there if this was not a blip.
        tracing::warn!(error = %e, "waiting tasks could not be counted");
        0
    });
    if waiting >= limit.max(1) as i64 {
        return Err(Refusal::TooManyQueued { limit });
    }
    Ok(())
}

/// The memory and CPU that this process's swarm workers may use at once.
#[derive(Clone)]
pub struct WorkerBudget {
    memory: Arc<Semaphore>,
    /// The whole budget, in KiB (the unit of the memory permits).
    total_kib: u32,
    cpu: Arc<Semaphore>,
    cpu_slots: usize,
    /// The most MiB leased at once since the start.
    peak_mb: Arc<std::sync::atomic::AtomicU64>,
}

/// A unit of work's share of the budget; returned when dropped.
pub struct Lease {
    _memory: OwnedSemaphorePermit,
    _cpu: Option<OwnedSemaphorePermit>,
}

impl WorkerBudget {
    pub fn new(memory_mb: u64, cpu_slots: usize) -> Self {
        let total_kib = (memory_mb.max(1) * 1024).min(u64::from(u32::MAX)) as u32;
        let cpu_slots = if cpu_slots == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cpu_slots
        };
        Self {
            memory: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            cpu: Arc::new(Semaphore::new(cpu_slots)),
            cpu_slots,
            peak_mb: Arc::default(),
        }
    }

    pub fn from_config(config: &crate::Config) -> Self {
        Self::new(config.worker_memory_budget_mb, config.worker_cpu_slots)
    }

    /// MiB of the budget leased now.
    pub fn leased_mb(&self) -> u64 {
        u64::from(self.total_kib - self.memory.available_permits() as u32) / 1024
    }

    /// The most MiB leased at once since the process started.
    pub fn peak_mb(&self) -> u64 {
        self.peak_mb.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The whole budget, in MiB.
    pub fn total_mb(&self) -> u64 {
        u64::from(self.total_kib) / 1024
    }

    /// CPU slots in use now.
    pub fn cpu_in_use(&self) -> usize {
        self.cpu_slots - self.cpu.available_permits()
    }

    /// Waits, first come first served, for `bytes` of memory (and a CPU slot when `cpu`).
    /// Gives up with `None` once `stop()` says so (checked every quarter second) or at
    /// `deadline`.
    pub async fn lease(
        &self,
        bytes: u64,
        cpu: bool,
        deadline: Instant,
        stop: impl Fn() -> bool,
    ) -> Option<Lease> {
        let kib = (bytes.div_ceil(1024)).clamp(1, u64::from(self.total_kib)) as u32;
        let memory = wait(self.memory.clone().acquire_many_owned(kib), deadline, &stop).await?;
        let cpu = if cpu {
            Some(wait(self.cpu.clone().acquire_owned(), deadline, &stop).await?)
        } else {
            None
        };
        let leased = self.leased_mb();
        self.peak_mb
            .fetch_max(leased, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("ub_worker_memory_leased_mb").set(leased as f64);
        Some(Lease {
            _memory: memory,
            _cpu: cpu,
        })
    }
}

/// Waits for `acquire` (one future for the whole wait keeps the caller's place in the
/// queue), giving up once `stop()` says so (checked every [`LEASE_POLL`]) or at `deadline`.
async fn wait(
    acquire: impl std::future::Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>,
    deadline: Instant,
    stop: &impl Fn() -> bool,
) -> Option<OwnedSemaphorePermit> {
    tokio::pin!(acquire);
    loop {
        if stop() || Instant::now() >= deadline {
            return None;
        }
        tokio::select! {
            permit = &mut acquire => return permit.ok(),
            _ = tokio::time::sleep(LEASE_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use universal_events::swarm::VelocityConfig;

    fn quantum(particles: u32, dimensions: u32) -> QuantumConfig {
        QuantumConfig {
            dimensions,
            bounds: vec![[-1.0, 1.0]; dimensions as usize],
            particles,
            iterations: 10,
            inertia: 0.7,
            cognitive: 1.5,
            social: 1.5,
            seed: 1,
        }
    }

    #[test]
    fn the_model_is_near_what_the_largest_swarm_was_measured_to_take() {
        let mb = optimize_bytes(&quantum(10_000, 100)) / 1_000_000;
        assert!((27..=40).contains(&mb), "{mb} MB");
    }

    #[test]
    fn a_subtask_over_the_whole_budget_is_refused_naming_its_field() {
        let batch = TaskConfig::Velocity(VelocityConfig {
            subtasks: vec![
                SubtaskSpec::Prompt {
                    prompt: "p".into(),
                    model: None,
                    count: 1,
                },
                SubtaskSpec::Optimize {
                    objective: "sphere".into(),
                    config: quantum(10_000, 100),
                    count: 10_000,
                },
            ],
            concurrency: 256,
            timeout_ms: 1_000,
            retries: 0,
            backoff_ms: 10,
            mode: universal_events::swarm::BatchMode::BestEffort,
        });
        match check_cost(&batch, 16) {
            Err(Refusal::TooCostly { field, message }) => {
                assert_eq!(field, "config.subtasks[1].config.particles");
                assert!(message.contains("16 MiB"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(check_cost(&batch, 512), Ok(()));
    }

    #[actix_web::test]
    async fn leases_beyond_the_budget_wait_for_one_to_end_and_a_stop_ends_the_wait() {
        let budget = WorkerBudget::new(10, 4);
        let far = Instant::now() + Duration::from_secs(3600);
        let first = budget.lease(6 << 20, true, far, || false).await.unwrap();
        assert_eq!(budget.leased_mb(), 6);
        assert_eq!(budget.cpu_in_use(), 1);
        // 6 + 6 MiB do not fit in 10: the second waits until the first is dropped.
        let second = budget.lease(6 << 20, false, far, || false);
        tokio::pin!(second);
        tokio::select! {
            _ = &mut second => panic!("leased beyond the budget"),
            _ = tokio::task::yield_now() => {}
        }
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(budget.leased_mb(), 6);
        // A stopped wait gives up instead of waiting for ever.
        assert!(budget.lease(6 << 20, false, far, || true).await.is_none());
        drop(second);
        assert_eq!(budget.leased_mb(), 0);
    }
}
