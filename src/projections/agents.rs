//! ToolboxAI agent read models: `task_executions` (one row per execution), `agent_instances`
//! (each agent's running and waiting executions across the deployment) and `agent_metrics`
//! (per organization and agent: counts, calls, schema refusals and tokens). Durations are
//! not summed here: the p50/p95 are read from the finished rows of `task_executions`.
//!
//! An execution is a swarm task of type `agent`, so this projection reads the swarm task
//! events and skips those of other tasks (an event of a task it has no row for). Events are
//! applied one at a time, as in `projections::swarm`: an execution writes a handful.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::swarm::{SwarmTaskEvent, TaskConfig, TaskResult, SWARM_TASK_EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

/// The name of this projection (its checkpoint and lock key).
pub const NAME: &str = "agents";

/// Executions, agents and their metrics.
pub struct Agents;

#[async_trait]
impl Projection for Agents {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        &SWARM_TASK_EVENT_TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["task_executions", "agent_instances", "agent_metrics"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            apply_one(conn, e).await?;
        }
        Ok(())
    }
}

/// Which count of `agent_instances` a status belongs to.
fn bucket(status: &str) -> Option<&'static str> {
    match status {
        "running" => Some("running"),
        "queued" | "interrupted" => Some("queued"),
        _ => None,
    }
}

/// Moves one execution of `agent` from the count of `from` to that of `to`.
async fn move_load(
    conn: &mut PgConnection,
    agent: &str,
    from: Option<&str>,
    to: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let (from, to) = (from.and_then(bucket), to.and_then(bucket));
    if from == to {
        return Ok(());
    }
    let delta = |b: &str| -> i32 { i32::from(to == Some(b)) - i32::from(from == Some(b)) };
    sqlx::query(
        "INSERT INTO agent_instances (agent_type, status, running, queued, last_active_at) \
         VALUES ($1, CASE WHEN $2 > 0 THEN 'busy' ELSE 'idle' END, GREATEST($2, 0), \
         GREATEST($3, 0), $4) \
         ON CONFLICT (agent_type) DO UPDATE SET \
         running = GREATEST(agent_instances.running + $2, 0), \
         queued = GREATEST(agent_instances.queued + $3, 0), \
         status = CASE WHEN agent_instances.running + $2 > 0 THEN 'busy' ELSE 'idle' END, \
         last_active_at = GREATEST(agent_instances.last_active_at, $4)",
    )
    .bind(agent)
    .bind(delta("running"))
    .bind(delta("queued"))
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds to the metrics of `org`'s `agent`: `column` must be one of the counters.
async fn count(
    conn: &mut PgConnection,
    org: Uuid,
    agent: &str,
    column: &'static str,
    by: i64,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agent_metrics (organization_id, agent_type, {column}) VALUES ($1, $2, $3) \
         ON CONFLICT (organization_id, agent_type) DO UPDATE SET \
         {column} = agent_metrics.{column} + $3"
    ))
    .bind(org)
    .bind(agent)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply_one(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id: Uuid = e
        .stream_id
        .strip_prefix("swarm_task-")
        .context("not a swarm task stream")?
        .parse()?;
    let event = e
        .decode::<SwarmTaskEvent>()
        .with_context(|| format!("event at position {}", e.position))?;
    use SwarmTaskEvent as E;
    if let E::SwarmTaskCreated(c) = &event {
        let TaskConfig::Agent(a) = &c.config else {
            return Ok(());
        };
        let inserted = sqlx::query(
            "INSERT INTO task_executions (id, organization_id, user_id, agent_type, task_type, \
             model, task_data, status, created_at, created_position, last_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $9) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(c.organization_id)
        .bind(c.user_id)
        .bind(&a.agent_type)
        .bind(&a.task_type)
        .bind(&a.model)
        .bind(&a.task_data)
        .bind(c.created_at)
        .bind(e.position)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            move_load(conn, &a.agent_type, None, Some("queued"), c.created_at).await?;
            count(conn, c.organization_id, &a.agent_type, "executions", 1).await?;
        }
        return Ok(());
    }
    let row: Option<(Uuid, String, String, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as(
            "SELECT organization_id, agent_type, status, started_at FROM task_executions \
             WHERE id = $1 AND last_position < $2",
        )
        .bind(id)
        .bind(e.position)
        .fetch_optional(&mut *conn)
        .await?;
    // Another kind of task, or an event already applied.
    let Some((org, agent, old, started_at)) = row else {
        return Ok(());
    };
    let finished =
        |at: chrono::DateTime<chrono::Utc>| started_at.map(|s| (at - s).num_milliseconds().max(0));
    let new_status: Option<(&str, chrono::DateTime<chrono::Utc>)> = match &event {
        E::SwarmTaskCreated(_) => None,
        E::SwarmTaskStarted(s) => {
            sqlx::query(
                "UPDATE task_executions SET status = 'running', attempt = $2, \
                 started_at = COALESCE(started_at, $3), worker = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(s.attempt as i32)
            .bind(s.started_at)
            .bind(&s.worker)
            .execute(&mut *conn)
            .await?;
            Some(("running", s.started_at))
        }
        E::AgentCallRecorded(c) => {
            sqlx::query(
                "UPDATE task_executions SET calls = calls + 1, \
                 refusals = refusals + $2, prompt_tokens = prompt_tokens + $3, \
                 completion_tokens = completion_tokens + $4, \
                 last_refusal = COALESCE($5, last_refusal) WHERE id = $1",
            )
            .bind(id)
            .bind(i32::from(c.error.is_some()))
            .bind(c.prompt_tokens as i64)
            .bind(c.completion_tokens as i64)
            .bind(&c.error)
            .execute(&mut *conn)
            .await?;
            count(conn, org, &agent, "calls", 1).await?;
            if c.error.is_some() {
                count(conn, org, &agent, "refusals", 1).await?;
            }
            count(conn, org, &agent, "prompt_tokens", c.prompt_tokens as i64).await?;
            count(
                conn,
                org,
                &agent,
                "completion_tokens",
                c.completion_tokens as i64,
            )
            .await?;
            None
        }
        E::SwarmTaskCompleted(c) => {
            let output = match &c.result {
                TaskResult::Agent { output, .. } => Some(output.clone()),
                _ => None,
            };
            sqlx::query(
                "UPDATE task_executions SET status = 'completed', output = $2, \
                 finished_at = $3, duration_ms = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(output)
            .bind(c.completed_at)
            .bind(finished(c.completed_at))
            .execute(&mut *conn)
            .await?;
            count(conn, org, &agent, "completed", 1).await?;
            Some(("completed", c.completed_at))
        }
        E::SwarmTaskFailed(f) => {
            sqlx::query(
                "UPDATE task_executions SET status = 'failed', error = $2, finished_at = $3, \
                 duration_ms = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(&f.error)
            .bind(f.failed_at)
            .bind(finished(f.failed_at))
            .execute(&mut *conn)
            .await?;
            count(conn, org, &agent, "failed", 1).await?;
            Some(("failed", f.failed_at))
        }
        E::SwarmTaskCancelled(c) => {
            sqlx::query(
                "UPDATE task_executions SET status = 'cancelled', finished_at = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(c.cancelled_at)
            .execute(&mut *conn)
            .await?;
            count(conn, org, &agent, "cancelled", 1).await?;
            Some(("cancelled", c.cancelled_at))
        }
        E::SwarmTaskInterrupted(i) => {
            sqlx::query("UPDATE task_executions SET status = 'interrupted' WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Some(("interrupted", i.interrupted_at))
        }
        // Not part of an agent execution.
        E::OptimizationProgressed(_)
        | E::SubtasksRecorded(_)
        | E::AnalysisProgressed(_)
        | E::AnalysisResultsRecorded(_)
        | E::InsightRecorded(_) => None,
    };
    if let Some((status, at)) = new_status {
        move_load(conn, &agent, Some(&old), Some(status), at).await?;
    }
    sqlx::query("UPDATE task_executions SET last_position = $2 WHERE id = $1")
        .bind(id)
        .bind(e.position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
