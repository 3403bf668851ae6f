//! Identity read models: `users` (never with secrets), `organizations`, `memberships`.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::identity::{OrganizationEvent, UserEvent, ORGANIZATION_EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

fn entity_id(e: &RawEvent, prefix: &str) -> anyhow::Result<Uuid> {
    let id = e
        .stream_id
        .strip_prefix(prefix)
        .with_context(|| format!("{} is not a {prefix} stream", e.stream_id))?;
    Ok(Uuid::parse_str(id)?)
}

pub struct Identity;

/// The user events this projection needs (sessions are not projected).
const TYPES: [&str; 11] = [
    "UserRegistered",
    "ProfileUpdated",
    "RoleAssigned",
    "RoleRevoked",
    "UserDeactivated",
    ORGANIZATION_EVENT_TYPES[0],
    ORGANIZATION_EVENT_TYPES[1],
    ORGANIZATION_EVENT_TYPES[2],
    ORGANIZATION_EVENT_TYPES[3],
    ORGANIZATION_EVENT_TYPES[4],
    ORGANIZATION_EVENT_TYPES[5],
];

#[async_trait]
impl Projection for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users", "organizations", "memberships"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            match e.category.as_str() {
                "user" => apply_user(conn, e).await?,
                "organization" => apply_org(conn, e).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

async fn apply_user(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = entity_id(e, "user-")?;
    let event = e.decode::<UserEvent>()?;
    let q = match &event {
        UserEvent::UserRegistered(u) => sqlx::query(
            "INSERT INTO users (id, email, email_lower, display_name, registered_at, version) \
             VALUES ($1, $2, lower($2), $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(&u.email)
        .bind(&u.display_name)
        .bind(u.registered_at)
        .bind(e.version),
        UserEvent::ProfileUpdated(p) => {
            sqlx::query("UPDATE users SET display_name = $2, version = $3 WHERE id = $1")
                .bind(id)
                .bind(&p.display_name)
                .bind(e.version)
        }
        UserEvent::RoleAssigned(r) => sqlx::query(
            "UPDATE users SET roles = array_append(array_remove(roles, $2), $2), version = $3 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(r.role.as_str())
        .bind(e.version),
        UserEvent::RoleRevoked(r) => sqlx::query(
            "UPDATE users SET roles = array_remove(roles, $2), version = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(r.role.as_str())
        .bind(e.version),
        UserEvent::UserDeactivated(_) => {
            sqlx::query("UPDATE users SET active = false, version = $2 WHERE id = $1")
                .bind(id)
                .bind(e.version)
        }
        _ => return Ok(()),
    };
    q.execute(&mut *conn).await?;
    Ok(())
}

async fn apply_org(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let id = entity_id(e, "organization-")?;
    let event = e.decode::<OrganizationEvent>()?;
    let q = match &event {
        OrganizationEvent::OrganizationCreated(o) => sqlx::query(
            "INSERT INTO organizations (id, name, created_by, created_at, version) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(&o.name)
        .bind(o.created_by)
        .bind(o.created_at)
        .bind(e.version),
        OrganizationEvent::OrganizationRenamed(o) => {
            sqlx::query("UPDATE organizations SET name = $2, version = $3 WHERE id = $1")
                .bind(id)
                .bind(&o.name)
                .bind(e.version)
        }
        OrganizationEvent::MemberAdded(m) => sqlx::query(
            "INSERT INTO memberships (organization_id, user_id, role, joined_position) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (organization_id, user_id) \
             DO UPDATE SET role = EXCLUDED.role",
        )
        .bind(id)
        .bind(m.user_id)
        .bind(m.role.as_str())
        .bind(e.position),
        OrganizationEvent::MemberRemoved(m) => {
            sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
                .bind(id)
                .bind(m.user_id)
        }
        OrganizationEvent::FrontendEnabled(f) => sqlx::query(
            "UPDATE organizations SET frontends = \
             array_append(array_remove(frontends, $2), $2), version = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(f.frontend.as_str())
        .bind(e.version),
        OrganizationEvent::FrontendDisabled(f) => sqlx::query(
            "UPDATE organizations SET frontends = array_remove(frontends, $2), version = $3 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(f.frontend.as_str())
        .bind(e.version),
    };
    q.execute(&mut *conn).await?;
    Ok(())
}
