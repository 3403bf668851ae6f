//! Analysis read models: `analyses` (one row per analysis, with its progress and results)
//! and `analysis_insights`. They follow the `swarm_task` streams whose task is an analysis:
//! the lifecycle events every task records, and the three only analyses record. Other
//! tasks' lifecycle events update no row; their progress events are not even read.

use anyhow::Context;
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgConnection;
use universal_events::swarm::{InsightSource, SwarmTaskEvent, TaskConfig};

use super::runner::Projection;
use crate::store::RawEvent;

/// The name of this projection (its checkpoint and lock key).
pub const NAME: &str = "analyses";

/// The event types read: the lifecycle of every swarm task and the analysis events.
pub const TYPES: [&str; 9] = [
    "SwarmTaskCreated",
    "SwarmTaskStarted",
    "SwarmTaskCompleted",
    "SwarmTaskFailed",
    "SwarmTaskCancelled",
    "SwarmTaskInterrupted",
    "AnalysisProgressed",
    "AnalysisResultsRecorded",
    "InsightRecorded",
];

pub struct Analyses;

#[async_trait]
impl Projection for Analyses {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        &TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["analyses", "analysis_insights"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            apply_one(conn, e).await?;
        }
        Ok(())
    }
}

async fn apply_one(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = e
        .stream_id
        .strip_prefix("swarm_task-")
        .context("not a swarm task stream")?;
    let id = uuid::Uuid::parse_str(id)?;
    let event = e
        .decode::<SwarmTaskEvent>()
        .with_context(|| format!("event at position {}", e.position))?;
    use SwarmTaskEvent as E;
    match &event {
        E::SwarmTaskCreated(c) => {
            let TaskConfig::Analysis(a) = &c.config else {
                return Ok(());
            };
            let documents: Vec<_> = a
                .documents
                .iter()
                .map(|d| json!({ "name": d.name, "characters": d.text.chars().count() }))
                .collect();
            sqlx::query(
                "INSERT INTO analyses (id, organization_id, user_id, title, questions, model, \
                 documents, status, created_at, created_position, total, version, last_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $9) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(c.organization_id)
            .bind(c.user_id)
            .bind(&a.title)
            .bind(json!(a.questions))
            .bind(&a.model)
            .bind(json!(documents))
            .bind(c.created_at)
            .bind(e.position)
            .bind(a.documents.len() as i64)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
            return Ok(());
        }
        E::SwarmTaskStarted(s) => {
            sqlx::query(
                "UPDATE analyses SET status = 'running', attempt = $2, \
                 started_at = COALESCE(started_at, $3), done = 0 WHERE id = $1",
            )
            .bind(id)
            .bind(s.attempt as i32)
            .bind(s.started_at)
            .execute(&mut *conn)
            .await?;
        }
        E::AnalysisProgressed(p) => {
            sqlx::query("UPDATE analyses SET done = $2, current_document = $3 WHERE id = $1")
                .bind(id)
                .bind(p.done as i64)
                .bind(&p.document)
                .execute(&mut *conn)
                .await?;
        }
        E::AnalysisResultsRecorded(r) => {
            sqlx::query("UPDATE analyses SET results = $2 WHERE id = $1")
                .bind(id)
                .bind(serde_json::to_value(&r.results)?)
                .execute(&mut *conn)
                .await?;
        }
        E::InsightRecorded(i) => {
            let inserted = sqlx::query(
                "INSERT INTO analysis_insights (analysis_id, insight_id, position, source, \
                 user_id, model, text, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(i.insight_id)
            .bind(e.position)
            .bind(match i.source {
                InsightSource::Ai => "ai",
                InsightSource::User => "user",
            })
            .bind(i.user_id)
            .bind(&i.model)
            .bind(&i.text)
            .bind(i.at)
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE analyses SET insights = insights + $2 WHERE id = $1")
                .bind(id)
                .bind(inserted.rows_affected() as i64)
                .execute(&mut *conn)
                .await?;
        }
        E::SwarmTaskCompleted(c) => {
            sqlx::query(
                "UPDATE analyses SET status = 'completed', finished_at = $2, done = total \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(c.completed_at)
            .execute(&mut *conn)
            .await?;
        }
        E::SwarmTaskFailed(f) => {
            sqlx::query(
                "UPDATE analyses SET status = 'failed', error = $2, finished_at = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(&f.error)
            .bind(f.failed_at)
            .execute(&mut *conn)
            .await?;
        }
        E::SwarmTaskCancelled(c) => {
            sqlx::query("UPDATE analyses SET status = 'cancelled', finished_at = $2 WHERE id = $1")
                .bind(id)
                .bind(c.cancelled_at)
                .execute(&mut *conn)
                .await?;
        }
        E::SwarmTaskInterrupted(_) => {
            sqlx::query("UPDATE analyses SET status = 'interrupted' WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        E::OptimizationProgressed(_) | E::SubtasksRecorded(_) | E::AgentCallRecorded(_) => {
            return Ok(())
        }
    }
    sqlx::query("UPDATE analyses SET version = $2, last_position = $3 WHERE id = $1")
        .bind(id)
        .bind(e.version)
        .bind(e.position)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
