//! Swarm task read models: `swarm_tasks` (one row per task, with its latest progress and
//! result), `swarm_progress` (the progress series) and `swarm_subtasks` (a batch's outcomes).
//!
//! Events are applied one at a time: a task writes a handful of events per second at most
//! (progress is coalesced, subtask outcomes come in chunks), so set-based folding would buy
//! little here. A chunk of subtask outcomes is written with one `UNNEST` statement.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::swarm::{SubtaskStatus, SwarmTaskEvent, TaskResult, SWARM_TASK_EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

/// The name of this projection (its checkpoint and lock key).
pub const NAME: &str = "swarm_tasks";

fn task_id(e: &RawEvent) -> anyhow::Result<Uuid> {
    let id = e
        .stream_id
        .strip_prefix("swarm_task-")
        .context("not a swarm task stream")?;
    Ok(Uuid::parse_str(id)?)
}

/// Tasks, their progress series and their subtasks.
pub struct SwarmTasks;

#[async_trait]
impl Projection for SwarmTasks {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        &SWARM_TASK_EVENT_TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["swarm_tasks", "swarm_progress", "swarm_subtasks"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            apply_one(conn, e).await?;
        }
        Ok(())
    }
}

async fn apply_one(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = task_id(e)?;
    let event = e
        .decode::<SwarmTaskEvent>()
        .with_context(|| format!("event at position {}", e.position))?;
    use SwarmTaskEvent as E;
    match &event {
        E::SwarmTaskCreated(c) => {
            let total = match &c.config {
                universal_events::swarm::TaskConfig::Velocity(v) => v.total() as i64,
                universal_events::swarm::TaskConfig::Quantum(_) => 0,
                universal_events::swarm::TaskConfig::Analysis(a) => a.documents.len() as i64,
                universal_events::swarm::TaskConfig::Agent(_) => 0,
            };
            sqlx::query(
                "INSERT INTO swarm_tasks (id, organization_id, user_id, type, objective, config, \
                 status, created_at, created_position, total, version, last_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $8) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(c.organization_id)
            .bind(c.user_id)
            .bind(c.task_type.as_str())
            .bind(&c.objective)
            .bind(serde_json::to_value(&c.config)?)
            .bind(c.created_at)
            .bind(e.position)
            .bind(total)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        E::SwarmTaskStarted(s) => {
            sqlx::query(
                "UPDATE swarm_tasks SET status = 'running', attempt = $2, \
                 started_at = COALESCE(started_at, $3), iteration = 0, worker = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(s.attempt as i32)
            .bind(s.started_at)
            .bind(&s.worker)
            .execute(&mut *conn)
            .await?;
        }
        E::OptimizationProgressed(p) => {
            sqlx::query(
                "UPDATE swarm_tasks SET iteration = $2, best_cost = $3, best_position = $4, \
                 evaluations = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(p.iteration as i64)
            .bind(p.best_cost)
            .bind(serde_json::to_value(&p.best_position)?)
            .bind(p.evaluations as i64)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO swarm_progress (task_id, position, attempt, iteration, best_cost, \
                 evaluations, at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(e.position)
            .bind(p.attempt as i32)
            .bind(p.iteration as i64)
            .bind(p.best_cost)
            .bind(p.evaluations as i64)
            .bind(p.at)
            .execute(&mut *conn)
            .await?;
        }
        E::SubtasksRecorded(r) => {
            let mut indexes = Vec::with_capacity(r.outcomes.len());
            let mut statuses = Vec::with_capacity(r.outcomes.len());
            let mut attempts = Vec::with_capacity(r.outcomes.len());
            let mut outputs = Vec::with_capacity(r.outcomes.len());
            let mut errors = Vec::with_capacity(r.outcomes.len());
            let mut durations = Vec::with_capacity(r.outcomes.len());
            for o in &r.outcomes {
                indexes.push(o.index as i32);
                statuses.push(match o.status {
                    SubtaskStatus::Done => "done",
                    SubtaskStatus::Failed => "failed",
                });
                attempts.push(o.attempts as i32);
                outputs.push(o.output.clone());
                errors.push(o.error.clone());
                durations.push(o.duration_ms as i64);
            }
            let inserted = sqlx::query(
                "INSERT INTO swarm_subtasks (task_id, index, status, attempts, output, error, \
                 duration_ms, position) \
                 SELECT $1, i, s, a, o, er, d, $8 \
                 FROM UNNEST($2::int[], $3::text[], $4::int[], $5::jsonb[], $6::text[], \
                 $7::bigint[]) AS t(i, s, a, o, er, d) ON CONFLICT DO NOTHING \
                 RETURNING status",
            )
            .bind(id)
            .bind(&indexes)
            .bind(&statuses)
            .bind(&attempts)
            .bind(&outputs)
            .bind(&errors)
            .bind(&durations)
            .bind(e.position)
            .fetch_all(&mut *conn)
            .await?;
            let done = inserted
                .iter()
                .filter(|row| sqlx::Row::get::<&str, _>(*row, 0) == "done")
                .count() as i64;
            let failed = inserted.len() as i64 - done;
            let (done, failed): (i64, i64) = sqlx::query_as(
                "UPDATE swarm_tasks SET done = done + $2, failed = failed + $3 WHERE id = $1 \
                 RETURNING done, failed",
            )
            .bind(id)
            .bind(done)
            .bind(failed)
            .fetch_one(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO swarm_progress (task_id, position, attempt, done, failed, at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(e.position)
            .bind(r.attempt as i32)
            .bind(done)
            .bind(failed)
            .bind(r.at)
            .execute(&mut *conn)
            .await?;
        }
        E::SwarmTaskCompleted(c) => {
            let (best_cost, best_position, iteration, evaluations) = match &c.result {
                TaskResult::Optimization {
                    best_position,
                    best_cost,
                    iterations,
                    evaluations,
                    ..
                } => (
                    Some(*best_cost),
                    Some(serde_json::to_value(best_position)?),
                    Some(*iterations as i64),
                    Some(*evaluations as i64),
                ),
                TaskResult::Batch { .. } | TaskResult::Analysis { .. } => (None, None, None, None),
                TaskResult::Agent { .. } => (None, None, None, None),
            };
            sqlx::query(
                "UPDATE swarm_tasks SET status = 'completed', result = $2, finished_at = $3, \
                 best_cost = COALESCE($4, best_cost), \
                 best_position = COALESCE($5, best_position), \
                 iteration = COALESCE($6, iteration), evaluations = COALESCE($7, evaluations) \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(serde_json::to_value(&c.result)?)
            .bind(c.completed_at)
            .bind(best_cost)
            .bind(best_position)
            .bind(iteration)
            .bind(evaluations)
            .execute(&mut *conn)
            .await?;
        }
        E::SwarmTaskFailed(f) => {
            sqlx::query(
                "UPDATE swarm_tasks SET status = 'failed', error = $2, finished_at = $3 \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(&f.error)
            .bind(f.failed_at)
            .execute(&mut *conn)
            .await?;
        }
        E::SwarmTaskCancelled(c) => {
            sqlx::query(
                "UPDATE swarm_tasks SET status = 'cancelled', finished_at = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(c.cancelled_at)
            .execute(&mut *conn)
            .await?;
        }
        E::SwarmTaskInterrupted(_) => {
            sqlx::query("UPDATE swarm_tasks SET status = 'interrupted' WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        // Not subscribed: the analysis projection (`super::analysis`) keeps what they say.
        E::AnalysisProgressed(_) | E::AnalysisResultsRecorded(_) | E::InsightRecorded(_) => {
            return Ok(());
        }
        // An agent's calls are read from `task_executions` (`projections::agents`).
        E::AgentCallRecorded(_) => {}
    }
    sqlx::query("UPDATE swarm_tasks SET version = $2, last_position = $3 WHERE id = $1")
        .bind(id)
        .bind(e.version)
        .bind(e.position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
