//! The public view of each entity kind, built from its decider's state: the fields of the
//! entity's GET route that the state holds, under the same names. Fields a GET route joins
//! in from other read models (display names, counters of other streams, timestamps the
//! state does not keep) are not part of the entity's own history and are left out; secrets
//! (password and refresh-token hashes) never appear.

use serde_json::{json, Value};

use crate::actors::building::Building;
use crate::actors::channel::{Channel, Inbox};
use crate::actors::conversation::Conversation;
use crate::actors::flag::Flag;
use crate::actors::organization::Organization;
use crate::actors::project::Project;
use crate::actors::swarm_task::SwarmTask;
use crate::actors::team::Team;
use crate::actors::user::User;

fn v<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `GET /api/v1/citypulse/buildings/{id}`.
pub fn building(b: &Building) -> Value {
    let mut sensors: Vec<_> = b
        .sensors
        .iter()
        .map(|(id, s)| {
            json!({
                "id": id, "kind": s.kind.as_str(), "unit": s.unit,
                "status": if s.active { "active" } else { "decommissioned" },
            })
        })
        .collect();
    sensors.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut thresholds: Vec<_> = b
        .thresholds
        .iter()
        .map(|(kind, l)| json!({ "kind": kind.as_str(), "min_value": l.min, "max_value": l.max }))
        .collect();
    thresholds.sort_by(|a, b| a["kind"].as_str().cmp(&b["kind"].as_str()));
    json!({
        "id": b.id,
        "organization_id": b.organization_id,
        "name": b.name,
        "active_sensors": b.sensors.values().filter(|s| s.active).count(),
        "open_alerts": b.open_alerts.len(),
        "sensors": sensors,
        "thresholds": thresholds,
    })
}

/// `GET /api/v1/users/me`, without secrets or sessions.
pub fn user(u: &User) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "display_name": u.display_name,
        "roles": v(&u.roles),
        "active": u.active,
    })
}

/// `GET /api/v1/organizations/{id}`, with its members (`GET .../members`).
pub fn organization(o: &Organization) -> Value {
    json!({
        "id": o.id,
        "name": o.name,
        "frontends": v(&o.frontends),
        "members": o.members.iter().map(|(id, role)| json!({ "user_id": id, "role": v(role) })).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/ai/sessions/{id}`.
pub fn conversation(c: &Conversation) -> Value {
    json!({
        "id": c.id,
        "user_id": c.user_id,
        "organization_id": c.organization_id,
        "title": c.title,
        "model_id": c.model_id,
        "system_prompt": c.system_prompt,
        "archived": c.archived,
        "deleted": c.deleted,
        "message_count": c.messages.len(),
        "head_message_id": c.head,
        "replying": c.active_reply.is_some(),
    })
}

/// `GET /api/v1/channels/{id}`.
pub fn channel(c: &Channel) -> Value {
    json!({
        "id": c.id,
        "organization_id": c.organization_id,
        "kind": v(&c.kind),
        "name": c.name,
        "topic": c.topic,
        "created_by": c.created_by,
        "archived": c.archived,
        "message_count": c.messages.values().filter(|m| !m.deleted).count(),
        "members": c.members,
    })
}

/// A user's notification inbox (no GET route of its own).
pub fn inbox(i: &Inbox) -> Value {
    json!({ "all_read_up_to": i.all_read_up_to })
}

/// `GET /api/v1/teams/{id}`.
pub fn team(t: &Team) -> Value {
    json!({
        "id": t.id,
        "organization_id": t.organization_id,
        "name": t.name,
        "description": t.description,
        "archived": t.archived,
        "member_count": t.members.len(),
        "members": t.members.iter().map(|(id, role)| json!({ "user_id": id, "role": v(role) })).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/projects/{id}`.
pub fn project(p: &Project) -> Value {
    json!({
        "id": p.id,
        "organization_id": p.organization_id,
        "team_id": p.team_id,
        "name": p.name,
        "description": p.description,
        "status": v(&p.status),
        "member_count": p.members.len(),
        "milestone_count": p.milestones.len(),
        "members": p.members.iter().map(|id| json!({ "user_id": id })).collect::<Vec<_>>(),
        "milestones": p.milestones.iter().map(|(id, m)| json!({
            "id": id, "title": m.title, "due_date": m.due_date, "completed": m.completed,
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/swarm/tasks/{id}`.
pub fn swarm_task(t: &SwarmTask) -> Value {
    json!({
        "id": t.id,
        "user_id": t.user_id,
        "type": v(&t.task_type),
        "objective": t.objective,
        "config": v(&t.config),
        "status": v(&t.status),
        "created_at": t.created_at,
        "organization_id": t.organization_id,
        "attempt": t.attempt,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "progress": {
            "iteration": t.iteration,
            "best_cost": t.best_cost,
            "best_position": if t.best_position.is_empty() { Value::Null } else { json!(t.best_position) },
            "evaluations": t.evaluations,
            "total": t.total,
            "done": t.done,
            "failed": t.failed,
        },
        "result": v(&t.result),
        "error": t.error,
    })
}

/// `GET /api/v1/system/flags` (one item).
pub fn flag(f: &Flag) -> Value {
    json!({
        "route": f.route,
        "mode": v(&f.mode),
        "changed_at": f.changed_at,
        "changes": f.changes,
    })
}

/// A collaborative document's metadata (its content is the Yjs state, served by
/// `GET /api/v1/documents/{id}?version=N`).
pub fn document(d: &crate::actors::document::Document) -> Value {
    let grants: serde_json::Map<String, Value> = d
        .grants
        .iter()
        .map(|(user, access)| (user.to_string(), json!(access.as_str())))
        .collect();
    json!({
        "id": d.id,
        "organization_id": d.organization_id,
        "project_id": d.project_id,
        "name": d.name,
        "created_by": d.created_by,
        "created_at": d.created_at,
        "grants": grants,
        "updates": d.updates,
    })
}

/// A file's metadata, versions, grants and share links (never its content, never a link's
/// token).
pub fn file(f: &crate::actors::file::File) -> Value {
    let versions: Vec<Value> = f
        .versions
        .iter()
        .map(|(n, v)| {
            json!({
                "version": n,
                "content": v.content,
                "uploaded_by": v.uploaded_by,
                "uploaded_at": v.uploaded_at,
                "restored_from": v.restored_from,
            })
        })
        .collect();
    let links: Vec<Value> = f
        .links
        .iter()
        .map(|(id, l)| {
            json!({
                "id": id,
                "expires_at": l.expires_at,
                "max_downloads": l.max_downloads,
                "revoked": l.revoked,
            })
        })
        .collect();
    json!({
        "id": f.id,
        "organization_id": f.organization_id,
        "project_id": f.project_id,
        "name": f.name,
        "created_by": f.created_by,
        "deleted": f.deleted,
        "versions": versions,
        "grants": f.grants,
        "links": links,
    })
}
