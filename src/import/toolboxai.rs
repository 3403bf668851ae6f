//! `import toolboxai`: a ToolboxAI database of the shape in `legacy/toolboxai.sql`.
//!
//! ToolboxAI had no organizations: its users join the organization of `--organization`
//! (default `ToolboxAI`, created with the first admin as its owner). Roles: `admin` stays
//! admin, `teacher` and `student` become members. A task execution becomes an agent execution
//! of the same agent and task type, checked against the agent registry; a piece of educational
//! content becomes the completed `content_generator` execution that generated it, its content
//! the output (checked against the task's output schema).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::stream::TryStreamExt;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use universal_events::identity::Role;
use universal_events::swarm::{AgentConfig, TaskConfig, TaskResult, TaskType};
use uuid::Uuid;

use super::flowmind::{connect, count, join, register_user, settle};
use super::{Ctx, Entry, Expectation, Origin, Reason, Writer};
use crate::actors::swarm_task::{ScopedCommand as TaskScoped, SwarmCommand, SwarmTask};

/// The organization ToolboxAI's users join when `--organization` is not given.
pub const DEFAULT_ORGANIZATION: &str = "ToolboxAI";
/// The model recorded for imported executions (the old backend did not keep it).
const LEGACY_MODEL: &str = "legacy";

fn role_of(s: &str) -> Role {
    match s.trim() {
        "admin" => Role::Admin,
        _ => Role::Member,
    }
}

pub async fn run(ctx: &Arc<Ctx>) -> anyhow::Result<()> {
    let src = connect(&ctx.args.from).await?;
    if let Some((org, members)) = users(ctx, &src).await? {
        executions(ctx, &src, org, &members).await?;
        content(ctx, &src, org, &members).await?;
    }
    Ok(())
}

/// Imports the users and places them in the organization; answers its id and its members.
async fn users(ctx: &Arc<Ctx>, src: &PgPool) -> anyhow::Result<Option<(Uuid, Vec<(Uuid, Role)>)>> {
    const T: &str = "users";
    ctx.begin(T, count(src, "users").await);
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', email_lower, display_name, active::text) FROM users \
         WHERE id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    let done: Arc<std::sync::Mutex<Vec<(Uuid, Role, bool)>>> = Arc::default();
    let mut seen = std::collections::HashMap::<String, String>::new();
    let mut rows = sqlx::query(
        "SELECT id, email, username, hashed_password, role, is_active, created_at FROM users \
         ORDER BY created_at, id",
    )
    .fetch(src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let Some(super::UserRow { email, lower, hash }) = super::user_row(
            ctx,
            T,
            &legacy,
            r.try_get("email")?,
            r.try_get("hashed_password")?,
            "hashed_password",
            &mut seen,
        ) else {
            continue;
        };
        let name: Option<String> = r.try_get("username")?;
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| lower.split('@').next().unwrap_or("user").to_owned());
        let active: bool = r.try_get("is_active")?;
        let role = role_of(&r.try_get::<String, _>("role")?);
        let at: DateTime<Utc> = r.try_get("created_at")?;
        exp.expect(&legacy, id, format!("{lower}|{}|{active}", name.trim()));
        let ctx2 = ctx.clone();
        let done = done.clone();
        writer
            .submit(format!("user-{id}"), async move {
                let ok = register_user(ctx2, T, legacy, id, email, name, hash, at, active).await?;
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, role, ok));
                Ok(())
            })
            .await?;
    }
    drop(rows);
    writer.drain().await?;
    ctx.end(T);
    let mut members: Vec<(Uuid, Role)> = Vec::new();
    for (id, role, ok) in done.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        if ok {
            members.push((id, role));
        } else {
            exp.forget(&id.to_string());
        }
    }
    ctx.expect(exp);
    // The first admin (else the first user) owns a new organization.
    let creator = members
        .iter()
        .find(|(_, r)| *r == Role::Admin)
        .or(members.first())
        .map(|(u, _)| *u);
    let name = ctx
        .args
        .organization
        .clone()
        .unwrap_or_else(|| DEFAULT_ORGANIZATION.into());
    let Some(org) = super::organization(ctx, &name, creator).await? else {
        return Ok(None);
    };
    let mut m_exp = Expectation::new("memberships", super::MEMBERSHIPS_SQL);
    let rows: Vec<_> = members
        .iter()
        .map(|(u, r)| (u.to_string(), *u, *r))
        .collect();
    let joined = join(ctx, "memberships", org, &rows, &mut m_exp).await?;
    ctx.expect(m_exp);
    let members = members
        .into_iter()
        .filter(|(u, _)| joined.contains(u))
        .collect();
    Ok(Some((org, members)))
}

/// Creates the execution's task and settles it as its status says.
#[allow(clippy::too_many_arguments)]
fn execution(
    ctx: &Ctx,
    origin: &Origin,
    id: Uuid,
    org: Uuid,
    user: Uuid,
    config: AgentConfig,
    status: &str,
    output: Option<Value>,
    error: Option<String>,
    at: DateTime<Utc>,
) -> Result<(Entry<SwarmTask>, &'static str), String> {
    let mut entry = Entry::<SwarmTask>::new(id, Some(org), Some(user));
    let objective = format!("{}/{}", config.agent_type, config.task_type);
    entry.apply(
        ctx,
        origin,
        "create",
        TaskScoped {
            organization_id: org,
            cmd: SwarmCommand::Create {
                task_id: id,
                user_id: user,
                task_type: TaskType::Agent,
                objective,
                config: TaskConfig::Agent(config),
                at,
            },
        },
    )?;
    let outcome = settle(ctx, &mut entry, origin, org, status, error, at, || {
        Ok(TaskResult::Agent {
            output: output.ok_or("result: missing for a completed execution")?,
            model: LEGACY_MODEL.into(),
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            elapsed_ms: 0,
        })
    })?;
    Ok((entry, outcome))
}

async fn submit(
    ctx: &Arc<Ctx>,
    writer: &mut Writer,
    mut entry: Entry<SwarmTask>,
    origin: Origin,
) -> anyhow::Result<()> {
    let stream = entry.stream();
    let events = entry.take();
    let ctx2 = ctx.clone();
    writer
        .submit(stream.clone(), async move {
            ctx2.commit_rows(&stream, true, events, &origin, 1).await?;
            Ok(())
        })
        .await
}

const EXECUTIONS_SQL: &str =
    "SELECT id::text, concat_ws('|', user_id::text, agent_type, task_type, \
     status) FROM task_executions WHERE id::text = ANY($1)";

async fn executions(
    ctx: &Arc<Ctx>,
    src: &PgPool,
    org: Uuid,
    members: &[(Uuid, Role)],
) -> anyhow::Result<()> {
    const T: &str = "task_executions";
    ctx.begin(T, count(src, "task_executions").await);
    let mut exp = Expectation::new(T, EXECUTIONS_SQL);
    let known: std::collections::HashSet<Uuid> = members.iter().map(|(u, _)| *u).collect();
    let mut writer = Writer::default();
    let mut rows = sqlx::query(
        "SELECT id, agent_type, task_type, task_data, status, result, error, user_id, \
         created_at FROM task_executions ORDER BY created_at, id",
    )
    .fetch(src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let user: Option<Uuid> = r.try_get("user_id")?;
        let Some(user) = user.filter(|u| known.contains(u)) else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                "its user was not imported".into(),
            );
            continue;
        };
        let config = AgentConfig {
            agent_type: r.try_get("agent_type")?,
            task_type: r.try_get("task_type")?,
            task_data: r.try_get("task_data")?,
            model: LEGACY_MODEL.into(),
        };
        let (agent, task) = (config.agent_type.clone(), config.task_type.clone());
        let status: String = r.try_get("status")?;
        let origin = Origin::new(T, &legacy);
        match execution(
            ctx,
            &origin,
            id,
            org,
            user,
            config,
            status.trim(),
            r.try_get("result")?,
            r.try_get("error")?,
            r.try_get("created_at")?,
        ) {
            Ok((entry, status)) => {
                exp.expect(&legacy, id, format!("{user}|{agent}|{task}|{status}"));
                submit(ctx, &mut writer, entry, origin).await?;
            }
            Err(why) => ctx.skip(T, &legacy, Reason::Invalid, why),
        }
    }
    drop(rows);
    writer.drain().await?;
    ctx.end(T);
    ctx.expect(exp);
    Ok(())
}

async fn content(
    ctx: &Arc<Ctx>,
    src: &PgPool,
    org: Uuid,
    members: &[(Uuid, Role)],
) -> anyhow::Result<()> {
    const T: &str = "educational_content";
    ctx.begin(T, count(src, "educational_content").await);
    let mut exp = Expectation::new(T, EXECUTIONS_SQL);
    let mut writer = Writer::default();
    let mut rows = sqlx::query(
        "SELECT id, title, subject, grade_level, content, created_by, created_at \
         FROM educational_content ORDER BY created_at, id",
    )
    .fetch(src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let by: Option<Uuid> = r.try_get("created_by")?;
        // Content without an author belongs to the organization's first admin.
        let user = match by {
            Some(u) if members.iter().any(|(m, _)| *m == u) => u,
            Some(_) => {
                ctx.skip(
                    T,
                    &legacy,
                    Reason::Orphan,
                    "its author was not imported".into(),
                );
                continue;
            }
            None => match members.iter().find(|(_, r)| *r == Role::Admin) {
                Some((u, _)) => *u,
                None => {
                    ctx.skip(T, &legacy, Reason::Orphan, "no author and no admin".into());
                    continue;
                }
            },
        };
        let title: String = r.try_get("title")?;
        let subject: Option<String> = r.try_get("subject")?;
        let grade: Option<i32> = r.try_get("grade_level")?;
        let config = AgentConfig {
            agent_type: "content_generator".into(),
            task_type: "generate_content".into(),
            task_data: json!({
                "subject": subject.filter(|s| !s.trim().is_empty()).unwrap_or_else(|| title.clone()),
                "grade_level": grade.unwrap_or(0),
            }),
            model: LEGACY_MODEL.into(),
        };
        let origin = Origin::new(T, &legacy);
        match execution(
            ctx,
            &origin,
            id,
            org,
            user,
            config,
            "completed",
            r.try_get("content")?,
            None,
            r.try_get("created_at")?,
        ) {
            Ok((entry, status)) => {
                exp.expect(
                    &legacy,
                    id,
                    format!("{user}|content_generator|generate_content|{status}"),
                );
                submit(ctx, &mut writer, entry, origin).await?;
            }
            Err(why) => ctx.skip(T, &legacy, Reason::Invalid, why),
        }
    }
    drop(rows);
    writer.drain().await?;
    ctx.end(T);
    ctx.expect(exp);
    Ok(())
}
