//! FluxStudio teams and projects read models: `teams` and `team_members`; `projects`,
//! `project_members` and `project_milestones`. Each row carries the stream version it has
//! seen; member and milestone counts are recounted from their tables, so they can never
//! drift from the rows they count.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::project::{ProjectEvent, PROJECT_EVENT_TYPES};
use universal_events::team::{TeamEvent, TEAM_EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

pub struct Fluxstudio;

const TYPES: [&str; 14] = [
    TEAM_EVENT_TYPES[0],
    TEAM_EVENT_TYPES[1],
    TEAM_EVENT_TYPES[2],
    TEAM_EVENT_TYPES[3],
    TEAM_EVENT_TYPES[4],
    TEAM_EVENT_TYPES[5],
    PROJECT_EVENT_TYPES[0],
    PROJECT_EVENT_TYPES[1],
    PROJECT_EVENT_TYPES[2],
    PROJECT_EVENT_TYPES[3],
    PROJECT_EVENT_TYPES[4],
    PROJECT_EVENT_TYPES[5],
    PROJECT_EVENT_TYPES[6],
    PROJECT_EVENT_TYPES[7],
];

#[async_trait]
impl Projection for Fluxstudio {
    fn name(&self) -> &'static str {
        "fluxstudio"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "teams",
            "team_members",
            "projects",
            "project_members",
            "project_milestones",
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            match e.category.as_str() {
                "team" => apply_team(conn, e).await?,
                "project" => apply_project(conn, e).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

fn entity_id(e: &RawEvent, prefix: &str) -> anyhow::Result<Uuid> {
    let id = e
        .stream_id
        .strip_prefix(prefix)
        .with_context(|| format!("{} is not a {prefix} stream", e.stream_id))?;
    Ok(Uuid::parse_str(id)?)
}

async fn apply_team(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = entity_id(e, "team-")?;
    let event = e.decode::<TeamEvent>()?;
    match &event {
        TeamEvent::TeamCreated(t) => {
            sqlx::query(
                "INSERT INTO teams (id, organization_id, name, description, created_by, \
                 created_at, created_position, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(t.organization_id)
            .bind(&t.name)
            .bind(&t.description)
            .bind(t.created_by)
            .bind(t.created_at)
            .bind(e.position)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
        }
        TeamEvent::TeamUpdated(t) => {
            sqlx::query("UPDATE teams SET name = $2, description = $3 WHERE id = $1")
                .bind(id)
                .bind(&t.name)
                .bind(&t.description)
                .execute(&mut *conn)
                .await?;
        }
        TeamEvent::TeamMemberAdded(m) => {
            sqlx::query(
                "INSERT INTO team_members (team_id, user_id, role, joined_position) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (team_id, user_id) DO UPDATE SET role = $3",
            )
            .bind(id)
            .bind(m.user_id)
            .bind(m.role.as_str())
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
        }
        TeamEvent::TeamMemberRoleChanged(m) => {
            sqlx::query("UPDATE team_members SET role = $3 WHERE team_id = $1 AND user_id = $2")
                .bind(id)
                .bind(m.user_id)
                .bind(m.role.as_str())
                .execute(&mut *conn)
                .await?;
        }
        TeamEvent::TeamMemberRemoved(m) => {
            sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
                .bind(id)
                .bind(m.user_id)
                .execute(&mut *conn)
                .await?;
        }
        TeamEvent::TeamArchived(a) => {
            sqlx::query("UPDATE teams SET archived_at = $2 WHERE id = $1")
                .bind(id)
                .bind(a.archived_at)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(
        "UPDATE teams SET version = $2, member_count = \
         (SELECT count(*) FROM team_members WHERE team_id = $1) WHERE id = $1",
    )
    .bind(id)
    .bind(e.version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply_project(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = entity_id(e, "project-")?;
    let event = e.decode::<ProjectEvent>()?;
    use ProjectEvent as P;
    match &event {
        P::ProjectCreated(p) => {
            sqlx::query(
                "INSERT INTO projects (id, organization_id, team_id, name, description, status, \
                 created_by, created_at, created_position, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(p.organization_id)
            .bind(p.team_id)
            .bind(&p.name)
            .bind(&p.description)
            .bind(p.status.as_str())
            .bind(p.created_by)
            .bind(p.created_at)
            .bind(e.position)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
        }
        P::ProjectUpdated(p) => {
            sqlx::query(
                "UPDATE projects SET name = $2, description = $3, team_id = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(&p.name)
            .bind(&p.description)
            .bind(p.team_id)
            .execute(&mut *conn)
            .await?;
        }
        P::ProjectStatusChanged(s) => {
            sqlx::query("UPDATE projects SET status = $2 WHERE id = $1")
                .bind(id)
                .bind(s.status.as_str())
                .execute(&mut *conn)
                .await?;
        }
        P::ProjectMemberAdded(m) => {
            sqlx::query(
                "INSERT INTO project_members (project_id, user_id, joined_position) \
                 VALUES ($1, $2, $3) ON CONFLICT (project_id, user_id) DO NOTHING",
            )
            .bind(id)
            .bind(m.user_id)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
        }
        P::ProjectMemberRemoved(m) => {
            sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
                .bind(id)
                .bind(m.user_id)
                .execute(&mut *conn)
                .await?;
        }
        P::MilestoneAdded(m) => {
            sqlx::query(
                "INSERT INTO project_milestones (id, project_id, title, due_date, added_position) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(m.milestone_id)
            .bind(id)
            .bind(&m.title)
            .bind(m.due_date)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
        }
        P::MilestoneCompleted(m) => {
            sqlx::query(
                "UPDATE project_milestones SET completed_at = $3 WHERE id = $1 AND project_id = $2",
            )
            .bind(m.milestone_id)
            .bind(id)
            .bind(m.completed_at)
            .execute(&mut *conn)
            .await?;
        }
        P::MilestoneRemoved(m) => {
            sqlx::query("DELETE FROM project_milestones WHERE id = $1 AND project_id = $2")
                .bind(m.milestone_id)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(
        "UPDATE projects SET version = $2, \
         member_count = (SELECT count(*) FROM project_members WHERE project_id = $1), \
         milestone_count = (SELECT count(*) FROM project_milestones WHERE project_id = $1) \
         WHERE id = $1",
    )
    .bind(id)
    .bind(e.version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
