//! `import analysis`: the analysis service's database (`legacy/analysis.sql`).
//!
//! The service had no users of its own: an analysis's `user_id` is a user brought by the
//! FlowMind or ToolboxAI import (ids are kept), so that import runs first; `--users-from`
//! names it, and users that came from elsewhere are then reported as orphans. An analysis's
//! data goes to its user's organization (`--organization` picks one when they have several).
//! Each analysis becomes an analysis task: created with its documents and questions, its
//! results kept when they have this backend's shape, its `ai_insight` an AI insight, then
//! settled as its status says (`started`/`processing` ones as interrupted). Insights are the
//! users' insights on it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::stream::TryStreamExt;
use serde_json::Value;
use sqlx::Row;
use universal_events::swarm::{
    AnalysisConfig, AnalysisDocument, AnalysisResults, InsightSource, TaskConfig, TaskResult,
    TaskType,
};
use uuid::Uuid;

use super::flowmind::{connect, count, settle};
use super::{Ctx, Entry, Expectation, Origin, Reason, Writer};
use crate::actors::swarm_task::{ScopedCommand as TaskScoped, SwarmCommand, SwarmTask};

/// The organization of each user who is here (their oldest membership, or `--organization`).
async fn organizations(ctx: &Ctx) -> anyhow::Result<HashMap<Uuid, Uuid>> {
    let wanted = match &ctx.args.organization {
        Some(o) => super::organization(ctx, o, None).await?,
        None => None,
    };
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT DISTINCT ON (user_id) user_id, organization_id FROM memberships \
         WHERE $1::uuid IS NULL OR organization_id = $1 ORDER BY user_id, joined_position",
    )
    .bind(wanted)
    .fetch_all(&ctx.pool)
    .await?;
    let mut out: HashMap<Uuid, Uuid> = rows.into_iter().collect();
    if let Some(source) = &ctx.args.users_from {
        anyhow::ensure!(
            matches!(source.as_str(), "flowmind" | "toolboxai"),
            "--users-from: `flowmind` or `toolboxai`, not `{source}`"
        );
        let from: Vec<Uuid> = sqlx::query_scalar(
            "SELECT substr(stream_id, 6)::uuid FROM events WHERE stream_category = 'user' \
             AND version = 1 AND metadata -> 'imported_from' ->> 'source' = $1",
        )
        .bind(source)
        .fetch_all(&ctx.pool)
        .await?;
        let from: std::collections::HashSet<Uuid> = from.into_iter().collect();
        out.retain(|u, _| from.contains(u));
    }
    Ok(out)
}

/// A user's insight on an analysis: id, author, text, time.
type Insight = (Uuid, Uuid, String, DateTime<Utc>);

fn words(documents: &[AnalysisDocument]) -> u64 {
    documents
        .iter()
        .map(|d| d.text.split_whitespace().count() as u64)
        .sum()
}

pub async fn run(ctx: &Arc<Ctx>) -> anyhow::Result<()> {
    const T: &str = "analyses";
    const I: &str = "insights";
    let src = connect(&ctx.args.from).await?;
    let orgs = organizations(ctx).await?;
    ctx.begin(T, count(&src, "analyses").await);
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', user_id::text, type, status) FROM swarm_tasks \
         WHERE id::text = ANY($1)",
    );
    // Insights by analysis (they are few next to the analyses' documents).
    let mut insights: HashMap<Uuid, Vec<Insight>> = HashMap::new();
    let mut rows = sqlx::query(
        "SELECT id, analysis_id, user_id, text, created_at FROM insights ORDER BY created_at, id",
    )
    .fetch(&src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(I, 1);
        insights
            .entry(r.try_get("analysis_id")?)
            .or_default()
            .push((
                r.try_get("id")?,
                r.try_get("user_id")?,
                r.try_get("text")?,
                r.try_get("created_at")?,
            ));
    }
    drop(rows);
    let mut writer = Writer::default();
    let mut rows = sqlx::query(
        "SELECT id, user_id, title, status, documents, questions, results, ai_insight, \
         created_at, updated_at FROM analyses ORDER BY created_at, id",
    )
    .fetch(&src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let its_insights = insights.remove(&id).unwrap_or_default();
        let user: Uuid = r.try_get("user_id")?;
        let Some(org) = orgs.get(&user).copied() else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                format!("its user {user} is not here (import their source first)"),
            );
            for (iid, ..) in its_insights {
                ctx.skip(
                    I,
                    &iid.to_string(),
                    Reason::Orphan,
                    "its analysis was not imported".into(),
                );
            }
            continue;
        };
        match analysis(ctx, &r, id, org, user, &its_insights) {
            Ok((mut entry, status, n)) => {
                exp.expect(&legacy, id, format!("{user}|analysis|{status}"));
                for (iid, ..) in its_insights.iter().skip(n) {
                    ctx.skip(
                        I,
                        &iid.to_string(),
                        Reason::Invalid,
                        "refused with its analysis".into(),
                    );
                }
                let origin = Origin::new(T, &legacy);
                let stream = entry.stream();
                let events = entry.take();
                let ctx2 = ctx.clone();
                writer
                    .submit(stream.clone(), async move {
                        let outcome = ctx2.commit_rows(&stream, true, events, &origin, 1).await?;
                        ctx2.count_with(I, outcome, n as u64);
                        Ok(())
                    })
                    .await?;
            }
            Err(why) => {
                ctx.skip(T, &legacy, Reason::Invalid, why);
                for (iid, ..) in its_insights {
                    ctx.skip(
                        I,
                        &iid.to_string(),
                        Reason::Orphan,
                        "its analysis was not imported".into(),
                    );
                }
            }
        }
    }
    drop(rows);
    writer.drain().await?;
    ctx.end(T);
    for list in insights.into_values() {
        for (iid, ..) in list {
            ctx.skip(
                I,
                &iid.to_string(),
                Reason::Orphan,
                "its analysis is missing".into(),
            );
        }
    }
    ctx.expect(exp);
    Ok(())
}

/// One analysis as a task: answers it, its final status and how many insights it took.
fn analysis(
    ctx: &Ctx,
    r: &sqlx::postgres::PgRow,
    id: Uuid,
    org: Uuid,
    user: Uuid,
    insights: &[Insight],
) -> Result<(Entry<SwarmTask>, &'static str, usize), String> {
    let get = |e: sqlx::Error| e.to_string();
    let title: Option<String> = r.try_get("title").map_err(get)?;
    let documents: Value = r.try_get("documents").map_err(get)?;
    let documents: Vec<AnalysisDocument> =
        serde_json::from_value(documents).map_err(|e| format!("documents: {e}"))?;
    let questions: Value = r.try_get("questions").map_err(get)?;
    let questions: Vec<String> =
        serde_json::from_value(questions).map_err(|e| format!("questions: {e}"))?;
    let status: String = r.try_get("status").map_err(get)?;
    let results: Option<Value> = r.try_get("results").map_err(get)?;
    let ai_insight: Option<String> = r.try_get("ai_insight").map_err(get)?;
    let at: DateTime<Utc> = r.try_get("created_at").map_err(get)?;
    let done_at: Option<DateTime<Utc>> = r.try_get("updated_at").map_err(get)?;
    let done_at = done_at.unwrap_or(at);
    let origin = Origin::new("analyses", id);
    let title = title
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "Imported analysis".into());
    let n_documents = documents.len() as u64;
    let n_words = words(&documents);
    let mut entry = Entry::<SwarmTask>::new(id, Some(org), Some(user));
    let scoped = |cmd| TaskScoped {
        organization_id: org,
        cmd,
    };
    entry.apply(
        ctx,
        &origin,
        "create",
        scoped(SwarmCommand::Create {
            task_id: id,
            user_id: user,
            task_type: TaskType::Analysis,
            objective: title.clone(),
            config: TaskConfig::Analysis(AnalysisConfig {
                title,
                documents,
                questions,
                model: None,
            }),
            at,
        }),
    )?;
    // Insights saved by users, before the task is settled (a settled task takes them too).
    let mut n = 0;
    for (iid, by, text, when) in insights {
        let o = Origin::new("insights", iid);
        entry.try_apply(
            ctx,
            &o,
            "insight",
            scoped(SwarmCommand::RecordInsight {
                insight_id: *iid,
                source: InsightSource::User,
                user_id: Some(*by),
                attempt: None,
                model: None,
                text: text.clone(),
                at: *when,
            }),
        )?;
        n += 1;
    }
    let status = status.trim();
    let n_insights = n as u64 + u64::from(ai_insight.is_some());
    let result = TaskResult::Analysis {
        documents: n_documents,
        words: n_words,
        insights: n_insights,
        elapsed_ms: (done_at - at).num_milliseconds().max(0) as u64,
    };
    if status != "completed" {
        let outcome = settle(ctx, &mut entry, &origin, org, status, None, done_at, || {
            Ok(result)
        })?;
        return Ok((entry, outcome, n));
    }
    // A completed analysis keeps, within its attempt, its results (when they have this
    // backend's shape) and the AI's insight.
    entry.apply(
        ctx,
        &origin,
        "start",
        scoped(SwarmCommand::Start { attempt: 1, at }),
    )?;
    if let Some(results) = results.and_then(|r| serde_json::from_value::<AnalysisResults>(r).ok()) {
        entry.apply(
            ctx,
            &origin,
            "results",
            scoped(SwarmCommand::RecordAnalysisResults {
                attempt: 1,
                results,
                at: done_at,
            }),
        )?;
    }
    if let Some(text) = ai_insight.filter(|t| !t.trim().is_empty()) {
        entry.apply(
            ctx,
            &origin,
            "ai-insight",
            scoped(SwarmCommand::RecordInsight {
                insight_id: Uuid::new_v5(&id, b"ai_insight"),
                source: InsightSource::Ai,
                user_id: None,
                attempt: Some(1),
                model: Some("legacy".into()),
                text,
                at: done_at,
            }),
        )?;
    }
    entry.apply(
        ctx,
        &origin,
        "complete",
        scoped(SwarmCommand::Complete {
            attempt: 1,
            result,
            at: done_at,
        }),
    )?;
    let outcome = "completed";
    Ok((entry, outcome, n))
}
