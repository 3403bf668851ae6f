//! `import fluxstudio`: an export directory of FluxStudio's file-based store
//! (`legacy/fluxstudio.md`): one JSON array per table, read one file at a time.
//!
//! Ids are strings; UUIDs stay, others (`"u_17"`) map to a UUID v5 ([`super::mapped_id`]).
//! Times are ISO 8601 or epoch milliseconds. Carried: users, organizations and their members,
//! teams and members, projects with members and milestones, conversations (channels and
//! direct conversations) with participants, messages (threads, deletions) and reactions,
//! and files: each row of `files.json` is one version, its bytes read from `uploads/` and
//! stored as an upload's are (content-addressed), with `file_permissions.json` as grants.
//! Tables this backend has no entity for (notifications, which it derives from mentions;
//! invoices, time entries, service packages, client requests, portfolios) are read,
//! counted and reported as `unsupported`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::Value;
use universal_events::file::{FileAccess, GranteeKind};
use universal_events::identity::Role;
use universal_events::messaging::ChannelKind;
use universal_events::project::ProjectStatus;
use universal_events::team::TeamRole;
use uuid::Uuid;

use super::{mapped_id, Ctx, Entry, Expectation, Origin, Reason, Writer};
use crate::actors::channel::{Caller, Channel, ChannelCommand, ScopedCommand as ChannelScoped};
use crate::actors::file::{Content, File, FileAction, FileCommand};
use crate::actors::organization::{OrgAction, OrgCommand, Organization};
use crate::actors::project::{Project, ProjectAction, ProjectCommand};
use crate::actors::team::{Team, TeamAction, TeamCommand};
use crate::files::Storage;

const SOURCE: &str = "fluxstudio";
/// Largest table file read (each is read whole, one at a time).
const MAX_FILE_BYTES: u64 = 2 << 30;

/// The tables this backend has no entity for.
const UNSUPPORTED: [(&str, &str); 7] = [
    (
        "notifications",
        "notifications here are derived from mentions, not stored",
    ),
    ("invoices", "this backend has no invoices"),
    ("time_entries", "this backend has no time entries"),
    ("service_packages", "this backend has no service packages"),
    ("client_requests", "this backend has no client requests"),
    ("portfolios", "this backend has no portfolios"),
    ("portfolio_items", "this backend has no portfolios"),
];

/// The UUID of a FluxStudio id of `kind` (`user`, `organization`, ...).
pub fn id_of(kind: &str, legacy: &str) -> Uuid {
    mapped_id(SOURCE, kind, legacy)
}

/// Reads `<dir>/<table>.json` (an array of objects; a missing file is an empty table).
fn load(dir: &Path, table: &str) -> anyhow::Result<Vec<Value>> {
    let path = dir.join(format!("{table}.json"));
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let size = file.metadata()?.len();
    anyhow::ensure!(
        size <= MAX_FILE_BYTES,
        "{}: {size} bytes is more than the {MAX_FILE_BYTES} read at once",
        path.display()
    );
    let rows: Value = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
    match rows {
        Value::Array(rows) => Ok(rows),
        _ => anyhow::bail!("{}: not a JSON array", path.display()),
    }
}

fn text(row: &Value, key: &str) -> Option<String> {
    match row.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A time as FluxStudio wrote it: ISO 8601, or epoch milliseconds in older rows.
pub fn time(row: &Value, key: &str) -> Option<DateTime<Utc>> {
    match row.get(key)? {
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            }),
        Value::Number(n) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        _ => None,
    }
}

fn date(row: &Value, key: &str) -> Option<NaiveDate> {
    let s = text(row, key)?;
    NaiveDate::parse_from_str(s.get(..10).unwrap_or(&s), "%Y-%m-%d")
        .ok()
        .or_else(|| time(row, key).map(|t| t.date_naive()))
}

/// A row's id, or a skip when it has none.
fn id_or_skip(ctx: &Ctx, table: &'static str, i: usize, row: &Value) -> Option<String> {
    match text(row, "id").filter(|s| !s.trim().is_empty()) {
        Some(id) => Some(id),
        None => {
            ctx.skip(
                table,
                &format!("#{i}"),
                Reason::Invalid,
                "id: missing".into(),
            );
            None
        }
    }
}

fn org_role(s: Option<&str>) -> Role {
    match s.map(str::trim) {
        Some("owner") | Some("admin") => Role::Admin,
        Some("viewer") => Role::Viewer,
        _ => Role::Member,
    }
}

/// An imported organization: its owner and its members' roles.
type Org = (Uuid, HashMap<Uuid, Role>);

/// A row of a membership table: its key (`parent/user`), the imported user, and the row.
type Membership = (String, Uuid, Value);

/// Groups the rows of a membership table by their parent's legacy id (field `parent`).
/// Rows without both ids, or whose user was not imported, are reported and left out.
fn members_by(
    ctx: &Ctx,
    table: &'static str,
    rows: Vec<Value>,
    parent: &str,
    users: &HashMap<String, Uuid>,
) -> HashMap<String, Vec<Membership>> {
    let mut out: HashMap<String, Vec<Membership>> = HashMap::new();
    for (i, row) in rows.into_iter().enumerate() {
        ctx.read(table, 1);
        let (Some(of), Some(user)) = (text(&row, parent), text(&row, "userId")) else {
            ctx.skip(
                table,
                &format!("#{i}"),
                Reason::Invalid,
                format!("{parent} and userId are required"),
            );
            continue;
        };
        let key = format!("{of}/{user}");
        match users.get(&user) {
            Some(uid) => out.entry(of).or_default().push((key, *uid, row)),
            None => ctx.skip(
                table,
                &key,
                Reason::Orphan,
                format!("user {user} was not imported"),
            ),
        }
    }
    out
}

struct State {
    /// Imported users: legacy id -> id.
    users: HashMap<String, Uuid>,
    /// Imported organizations by id.
    orgs: HashMap<Uuid, Org>,
    teams: HashSet<Uuid>,
    projects: HashSet<Uuid>,
}

/// Imports the export in `--from`; file contents go to `storage` (the server's file store).
pub async fn run(ctx: &Arc<Ctx>, storage: &Storage) -> anyhow::Result<()> {
    let dir = Path::new(&ctx.args.from).to_path_buf();
    anyhow::ensure!(
        dir.is_dir(),
        "--from {}: not a directory (an export has one JSON file per table)",
        dir.display()
    );
    let mut st = State {
        users: HashMap::new(),
        orgs: HashMap::new(),
        teams: HashSet::new(),
        projects: HashSet::new(),
    };
    users(ctx, &dir, &mut st).await?;
    organizations(ctx, &dir, &mut st).await?;
    teams(ctx, &dir, &mut st).await?;
    projects(ctx, &dir, &mut st).await?;
    conversations(ctx, &dir, &st).await?;
    files(ctx, &dir, &st, storage).await?;
    for (table, why) in UNSUPPORTED {
        let rows = load(&dir, table)?;
        if rows.is_empty() {
            continue;
        }
        ctx.begin(table, Some(rows.len() as u64));
        for (i, row) in rows.iter().enumerate() {
            ctx.read(table, 1);
            let legacy = text(row, "id").unwrap_or_else(|| format!("#{i}"));
            ctx.skip(table, &legacy, Reason::Unsupported, why.into());
        }
        ctx.end(table);
    }
    Ok(())
}

async fn users(ctx: &Arc<Ctx>, dir: &Path, st: &mut State) -> anyhow::Result<()> {
    const T: &str = "users";
    let rows = load(dir, T)?;
    ctx.begin(T, Some(rows.len() as u64));
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', email_lower, display_name, active::text) FROM users \
         WHERE id::text = ANY($1)",
    );
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut writer = Writer::default();
    let done: Arc<std::sync::Mutex<Vec<(String, Uuid, bool)>>> = Arc::default();
    for (i, row) in rows.iter().enumerate() {
        ctx.read(T, 1);
        let Some(legacy) = id_or_skip(ctx, T, i, row) else {
            continue;
        };
        let Some(super::UserRow { email, lower, hash }) = super::user_row(
            ctx,
            T,
            &legacy,
            text(row, "email"),
            text(row, "password"),
            "password",
            &mut seen,
        ) else {
            continue;
        };
        let Some(at) = time(row, "createdAt") else {
            ctx.skip(T, &legacy, Reason::Invalid, "createdAt: not a time".into());
            continue;
        };
        let name = text(row, "name")
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| lower.split('@').next().unwrap_or("user").to_owned());
        let id = id_of("user", &legacy);
        exp.expect(&legacy, id, format!("{lower}|{}|true", name.trim()));
        let ctx2 = ctx.clone();
        let done = done.clone();
        writer
            .submit(format!("user-{id}"), async move {
                let ok = super::flowmind::register_user(
                    ctx2,
                    T,
                    legacy.clone(),
                    id,
                    email,
                    name,
                    hash,
                    at,
                    true,
                )
                .await?;
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((legacy, id, ok));
                Ok(())
            })
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    for (legacy, id, ok) in done.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        if ok {
            st.users.insert(legacy, id);
        } else {
            exp.forget(&legacy);
        }
    }
    ctx.expect(exp);
    Ok(())
}

async fn organizations(ctx: &Arc<Ctx>, dir: &Path, st: &mut State) -> anyhow::Result<()> {
    const T: &str = "organizations";
    const M: &str = "organization_members";
    let rows = load(dir, T)?;
    let members = load(dir, M)?;
    ctx.begin(T, Some(rows.len() as u64));
    let mut by_org: HashMap<String, Vec<(String, Uuid, Role)>> =
        members_by(ctx, M, members, "organizationId", &st.users)
            .into_iter()
            .map(|(org, list)| {
                let list = list
                    .into_iter()
                    .map(|(key, user, row)| (key, user, org_role(text(&row, "role").as_deref())))
                    .collect();
                (org, list)
            })
            .collect();
    let mut o_exp = Expectation::new(
        T,
        "SELECT id::text, name FROM organizations WHERE id::text = ANY($1)",
    );
    let mut m_exp = Expectation::new(
        M,
        "SELECT organization_id::text || '/' || user_id::text, role FROM memberships \
         WHERE organization_id::text || '/' || user_id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    let failed: Arc<std::sync::Mutex<Vec<Uuid>>> = Arc::default();
    for (i, row) in rows.iter().enumerate() {
        ctx.read(T, 1);
        let Some(legacy) = id_or_skip(ctx, T, i, row) else {
            continue;
        };
        let list = by_org.remove(&legacy).unwrap_or_default();
        let owner = text(row, "ownerId").and_then(|o| st.users.get(&o).copied());
        let Some(owner) = owner.or_else(|| {
            list.iter()
                .find(|(_, _, r)| *r == Role::Admin)
                .map(|(_, u, _)| *u)
        }) else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                "its owner was not imported".into(),
            );
            for (key, ..) in &list {
                ctx.skip(
                    M,
                    key,
                    Reason::Orphan,
                    "its organization was not imported".into(),
                );
            }
            continue;
        };
        let id = id_of("organization", &legacy);
        let origin = Origin::new(T, &legacy);
        let name = text(row, "name").unwrap_or_default();
        let mut org = Entry::<Organization>::new(id, Some(id), Some(owner));
        let at = time(row, "createdAt").unwrap_or_else(Utc::now);
        if let Err(why) = org.apply(
            ctx,
            &origin,
            "create",
            OrgCommand {
                actor: owner,
                action: OrgAction::Create {
                    organization_id: id,
                    name: name.clone(),
                    at,
                },
            },
        ) {
            ctx.skip(T, &legacy, Reason::Invalid, why);
            for (key, ..) in &list {
                ctx.skip(
                    M,
                    key,
                    Reason::Orphan,
                    "its organization was not imported".into(),
                );
            }
            continue;
        }
        // FluxStudio's data lives under the FluxStudio frontend.
        let _ = org.apply(
            ctx,
            &origin,
            "frontend",
            OrgCommand {
                actor: owner,
                action: OrgAction::SetFrontend {
                    frontend: universal_events::identity::Frontend::Fluxstudio,
                    enabled: true,
                },
            },
        );
        o_exp.expect(&legacy, id, name.trim().to_owned());
        let mut roles = HashMap::from([(owner, Role::Admin)]);
        let (org_id, mut n) = (id, 0u64);
        for (key, user, role) in list {
            let o = Origin::new(M, &key);
            if user == owner {
                m_exp.expect(&key, format!("{org_id}/{user}"), "admin".into());
                n += 1;
                continue;
            }
            match org.try_apply(
                ctx,
                &o,
                "member",
                OrgCommand {
                    actor: owner,
                    action: OrgAction::SetMember {
                        user_id: user,
                        role,
                    },
                },
            ) {
                Ok(()) => {
                    roles.insert(user, role);
                    m_exp.expect(&key, format!("{org_id}/{user}"), role.as_str().into());
                    n += 1;
                }
                Err(why) => ctx.skip(M, &key, Reason::Invalid, why),
            }
        }
        st.orgs.insert(id, (owner, roles));
        let stream = org.stream();
        let events = org.take();
        let ctx2 = ctx.clone();
        let failed = failed.clone();
        writer
            .submit(stream.clone(), async move {
                let outcome = ctx2.commit_rows(&stream, true, events, &origin, 1).await?;
                ctx2.count_with(M, outcome, n);
                if outcome.is_none() {
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                }
                Ok(())
            })
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    for id in failed.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        st.orgs.remove(&id);
    }
    for list in by_org.into_values() {
        for (key, ..) in list {
            ctx.skip(
                M,
                &key,
                Reason::Orphan,
                "its organization is missing".into(),
            );
        }
    }
    ctx.expect(o_exp);
    ctx.expect(m_exp);
    Ok(())
}

/// The organization of a row (`organizationId`), when it was imported.
fn org_of<'a>(st: &'a State, row: &Value) -> Option<(Uuid, &'a Org)> {
    let id = id_of("organization", &text(row, "organizationId")?);
    st.orgs.get(&id).map(|o| (id, o))
}

async fn teams(ctx: &Arc<Ctx>, dir: &Path, st: &mut State) -> anyhow::Result<()> {
    const T: &str = "teams";
    const M: &str = "team_members";
    let rows = load(dir, T)?;
    let members = load(dir, M)?;
    ctx.begin(T, Some(rows.len() as u64));
    let mut by_team: HashMap<String, Vec<(String, Uuid, TeamRole)>> =
        members_by(ctx, M, members, "teamId", &st.users)
            .into_iter()
            .map(|(team, list)| {
                let list = list
                    .into_iter()
                    .map(|(key, user, row)| {
                        let role = match text(&row, "role").as_deref().map(str::trim) {
                            Some("lead") => TeamRole::Lead,
                            _ => TeamRole::Member,
                        };
                        (key, user, role)
                    })
                    .collect();
                (team, list)
            })
            .collect();
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', organization_id::text, name) FROM teams WHERE id::text = ANY($1)",
    );
    let mut m_exp = Expectation::new(
        M,
        "SELECT team_id::text || '/' || user_id::text, role FROM team_members \
         WHERE team_id::text || '/' || user_id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    for (i, row) in rows.iter().enumerate() {
        ctx.read(T, 1);
        let Some(legacy) = id_or_skip(ctx, T, i, row) else {
            continue;
        };
        let list = by_team.remove(&legacy).unwrap_or_default();
        let Some((org, (owner, _))) = org_of(st, row) else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                "its organization was not imported".into(),
            );
            for (key, ..) in list {
                ctx.skip(M, &key, Reason::Orphan, "its team was not imported".into());
            }
            continue;
        };
        let id = id_of("team", &legacy);
        let origin = Origin::new(T, &legacy);
        let name = text(row, "name").unwrap_or_default();
        let mut team = Entry::<Team>::new(id, Some(org), Some(*owner));
        let cmd = |action| TeamCommand {
            organization_id: org,
            action,
        };
        if let Err(why) = team.apply(
            ctx,
            &origin,
            "create",
            cmd(TeamAction::Create {
                team_id: id,
                name: name.clone(),
                description: text(row, "description"),
                created_by: *owner,
                at: time(row, "createdAt").unwrap_or_else(Utc::now),
            }),
        ) {
            ctx.skip(T, &legacy, Reason::Invalid, why);
            for (key, ..) in list {
                ctx.skip(M, &key, Reason::Orphan, "its team was not imported".into());
            }
            continue;
        }
        exp.expect(&legacy, id, format!("{org}|{}", name.trim()));
        let mut n = 0;
        for (key, user, role) in list {
            // The creator joined as the team's lead when it was created.
            let action = if user == *owner {
                if role == TeamRole::Lead {
                    m_exp.expect(&key, format!("{id}/{user}"), role.as_str().into());
                    n += 1;
                    continue;
                }
                TeamAction::ChangeRole {
                    user_id: user,
                    role,
                }
            } else {
                TeamAction::AddMember {
                    user_id: user,
                    role,
                }
            };
            match team.try_apply(ctx, &Origin::new(M, &key), "member", cmd(action)) {
                Ok(()) => {
                    m_exp.expect(&key, format!("{id}/{user}"), role.as_str().into());
                    n += 1;
                }
                Err(why) => ctx.skip(M, &key, Reason::Invalid, why),
            }
        }
        st.teams.insert(id);
        writer.start(ctx, &mut team, origin, vec![(M, n)]).await?;
    }
    writer.drain().await?;
    ctx.end(T);
    for list in by_team.into_values() {
        for (key, ..) in list {
            ctx.skip(M, &key, Reason::Orphan, "its team is missing".into());
        }
    }
    ctx.expect(exp);
    ctx.expect(m_exp);
    Ok(())
}

async fn projects(ctx: &Arc<Ctx>, dir: &Path, st: &mut State) -> anyhow::Result<()> {
    const T: &str = "projects";
    const M: &str = "project_members";
    const S: &str = "project_milestones";
    let rows = load(dir, T)?;
    ctx.begin(T, Some(rows.len() as u64));
    let mut members: HashMap<String, Vec<(String, Uuid)>> =
        members_by(ctx, M, load(dir, M)?, "projectId", &st.users)
            .into_iter()
            .map(|(project, list)| (project, list.into_iter().map(|(k, u, _)| (k, u)).collect()))
            .collect();
    let mut milestones: HashMap<String, Vec<Value>> = HashMap::new();
    for (i, m) in load(dir, S)?.into_iter().enumerate() {
        ctx.read(S, 1);
        match (text(&m, "projectId"), text(&m, "id")) {
            (Some(p), Some(_)) => milestones.entry(p).or_default().push(m),
            _ => ctx.skip(
                S,
                &format!("#{i}"),
                Reason::Invalid,
                "id and projectId are required".into(),
            ),
        }
    }
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', organization_id::text, name, status) FROM projects \
         WHERE id::text = ANY($1)",
    );
    let mut s_exp = Expectation::new(
        S,
        "SELECT id::text, concat_ws('|', project_id::text, title, (completed_at IS NOT NULL)::text) \
         FROM project_milestones WHERE id::text = ANY($1)",
    );
    let mut imported = Vec::new();
    let mut writer = Writer::default();
    for (i, row) in rows.iter().enumerate() {
        ctx.read(T, 1);
        let Some(legacy) = id_or_skip(ctx, T, i, row) else {
            continue;
        };
        let its_members = members.remove(&legacy).unwrap_or_default();
        let its_milestones = milestones.remove(&legacy).unwrap_or_default();
        let orphans = |why: &str| {
            for (key, _) in &its_members {
                ctx.skip(M, key, Reason::Orphan, why.into());
            }
            for m in &its_milestones {
                ctx.skip(
                    S,
                    &text(m, "id").unwrap_or_default(),
                    Reason::Orphan,
                    why.into(),
                );
            }
        };
        let Some((org, (owner, roles))) = org_of(st, row) else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                "its organization was not imported".into(),
            );
            orphans("its project was not imported");
            continue;
        };
        let creator = text(row, "createdBy")
            .and_then(|c| st.users.get(&c).copied())
            .filter(|c| roles.contains_key(c))
            .unwrap_or(*owner);
        let status_text = text(row, "status").unwrap_or_else(|| "active".into());
        let Some(status) = ProjectStatus::parse(status_text.trim()) else {
            ctx.skip(
                T,
                &legacy,
                Reason::Invalid,
                format!("status: unknown status {status_text:?}"),
            );
            orphans("its project was not imported");
            continue;
        };
        let team = text(row, "teamId")
            .map(|t| id_of("team", &t))
            .filter(|t| st.teams.contains(t));
        let id = id_of("project", &legacy);
        let origin = Origin::new(T, &legacy);
        let name = text(row, "name").unwrap_or_default();
        let mut project = Entry::<Project>::new(id, Some(org), Some(creator));
        let cmd = |action| ProjectCommand {
            organization_id: org,
            action,
        };
        if let Err(why) = project.apply(
            ctx,
            &origin,
            "create",
            cmd(ProjectAction::Create {
                project_id: id,
                name: name.clone(),
                description: text(row, "description"),
                team_id: team,
                status,
                created_by: creator,
                at: time(row, "createdAt").unwrap_or_else(Utc::now),
            }),
        ) {
            ctx.skip(T, &legacy, Reason::Invalid, why);
            orphans("its project was not imported");
            continue;
        }
        exp.expect(
            &legacy,
            id,
            format!("{org}|{}|{}", name.trim(), status.as_str()),
        );
        let (mut n_members, mut n_milestones) = (0u64, 0u64);
        for (key, user) in its_members {
            if user == creator {
                n_members += 1;
                continue;
            }
            match project.try_apply(
                ctx,
                &Origin::new(M, &key),
                "member",
                cmd(ProjectAction::AddMember { user_id: user }),
            ) {
                Ok(()) => n_members += 1,
                Err(why) => ctx.skip(M, &key, Reason::Invalid, why),
            }
        }
        for m in its_milestones {
            let mlegacy = text(&m, "id").unwrap_or_default();
            let mid = id_of("milestone", &mlegacy);
            let mo = Origin::new(S, &mlegacy);
            let saved = project.checkpoint();
            let title = text(&m, "title").unwrap_or_default();
            let mut r = project.apply(
                ctx,
                &mo,
                "add",
                cmd(ProjectAction::AddMilestone {
                    milestone_id: mid,
                    title: title.clone(),
                    due_date: date(&m, "dueDate"),
                }),
            );
            let completed = time(&m, "completedAt");
            if let (Ok(()), Some(at)) = (&r, completed) {
                r = project.apply(
                    ctx,
                    &mo,
                    "complete",
                    cmd(ProjectAction::CompleteMilestone {
                        milestone_id: mid,
                        at,
                    }),
                );
            }
            match r {
                Ok(()) => {
                    s_exp.expect(
                        &mlegacy,
                        mid,
                        format!("{id}|{}|{}", title.trim(), completed.is_some()),
                    );
                    n_milestones += 1;
                }
                Err(why) => {
                    project.rollback(saved);
                    ctx.skip(S, &mlegacy, Reason::Invalid, why);
                }
            }
        }
        imported.push(id);
        writer
            .start(
                ctx,
                &mut project,
                origin,
                vec![(M, n_members), (S, n_milestones)],
            )
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    st.projects.extend(imported);
    for (project, list) in members {
        for (key, _) in list {
            ctx.skip(
                M,
                &key,
                Reason::Orphan,
                format!("project {project} is missing"),
            );
        }
    }
    for list in milestones.into_values() {
        for m in list {
            ctx.skip(
                S,
                &text(&m, "id").unwrap_or_default(),
                Reason::Orphan,
                "its project is missing".into(),
            );
        }
    }
    ctx.expect(exp);
    ctx.expect(s_exp);
    Ok(())
}

async fn conversations(ctx: &Arc<Ctx>, dir: &Path, st: &State) -> anyhow::Result<()> {
    const T: &str = "conversations";
    const P: &str = "conversation_participants";
    const M: &str = "messages";
    const R: &str = "message_reactions";
    let rows = load(dir, T)?;
    ctx.begin(T, Some(rows.len() as u64));
    let mut participants: HashMap<String, Vec<Uuid>> =
        members_by(ctx, P, load(dir, P)?, "conversationId", &st.users)
            .into_iter()
            .map(|(c, list)| (c, list.into_iter().map(|(_, u, _)| u).collect()))
            .collect();
    // Messages and reactions of each conversation, in time order.
    let mut messages: HashMap<String, Vec<Value>> = HashMap::new();
    for (i, m) in load(dir, M)?.into_iter().enumerate() {
        ctx.read(M, 1);
        match (text(&m, "conversationId"), text(&m, "id")) {
            (Some(c), Some(_)) => messages.entry(c).or_default().push(m),
            _ => ctx.skip(
                M,
                &format!("#{i}"),
                Reason::Invalid,
                "id and conversationId are required".into(),
            ),
        }
    }
    let mut reactions: HashMap<String, Vec<Value>> = HashMap::new();
    for r in load(dir, R)? {
        ctx.read(R, 1);
        if let Some(m) = text(&r, "messageId") {
            reactions.entry(m).or_default().push(r);
        }
    }
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', organization_id::text, kind, coalesce(name, '')) FROM channels \
         WHERE id::text = ANY($1)",
    );
    let mut m_exp = Expectation::new(
        M,
        "SELECT id::text, concat_ws('|', author_id::text, coalesce(text, ''), (deleted_at IS NOT NULL)::text) \
         FROM channel_messages WHERE id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    for (i, row) in rows.iter().enumerate() {
        ctx.read(T, 1);
        let Some(legacy) = id_or_skip(ctx, T, i, row) else {
            continue;
        };
        let mut its_messages = messages.remove(&legacy).unwrap_or_default();
        let people = participants.remove(&legacy).unwrap_or_default();
        let orphans = |msgs: &[Value], why: &str| {
            for m in msgs {
                ctx.skip(
                    M,
                    &text(m, "id").unwrap_or_default(),
                    Reason::Orphan,
                    why.into(),
                );
            }
        };
        let Some((org, (owner, roles))) = org_of(st, row) else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                "its organization was not imported".into(),
            );
            orphans(&its_messages, "its conversation was not imported");
            continue;
        };
        let creator = text(row, "createdBy")
            .and_then(|c| st.users.get(&c).copied())
            .filter(|c| roles.contains_key(c))
            .unwrap_or(*owner);
        let caller = |user: Uuid| Caller {
            organization_id: org,
            user_id: user,
            role: roles.get(&user).copied().unwrap_or(Role::Viewer),
        };
        let kind = match (
            text(row, "type").as_deref(),
            row.get("isPrivate").and_then(Value::as_bool),
        ) {
            (Some("direct"), _) => ChannelKind::Direct,
            (_, Some(true)) => ChannelKind::Private,
            _ => ChannelKind::Public,
        };
        let name = match kind {
            ChannelKind::Direct => None,
            _ => Some(text(row, "name").unwrap_or_else(|| "imported".into())),
        };
        let id = id_of("conversation", &legacy);
        let origin = Origin::new(T, &legacy);
        let mut channel = Entry::<Channel>::new(id, Some(org), Some(creator));
        // Everyone in the organization reads a public channel: it has no member list.
        let members: Vec<Uuid> = match kind {
            ChannelKind::Public => Vec::new(),
            _ => people
                .iter()
                .copied()
                .filter(|u| *u != creator && roles.contains_key(u))
                .collect(),
        };
        if let Err(why) = channel.apply(
            ctx,
            &origin,
            "create",
            ChannelScoped {
                by: caller(creator),
                cmd: ChannelCommand::Create {
                    channel_id: id,
                    kind,
                    name: name.clone(),
                    topic: None,
                    members,
                    at: time(row, "createdAt").unwrap_or_else(Utc::now),
                },
            },
        ) {
            ctx.skip(T, &legacy, Reason::Invalid, why);
            orphans(&its_messages, "its conversation was not imported");
            continue;
        }
        exp.expect(
            &legacy,
            id,
            format!(
                "{org}|{}|{}",
                kind.as_str(),
                name.as_deref().map(str::trim).unwrap_or("")
            ),
        );
        its_messages.sort_by_key(|m| time(m, "createdAt"));
        let mut imported: HashSet<String> = HashSet::new();
        let (mut n, mut n_reactions) = (0u64, 0u64);
        for m in &its_messages {
            let mlegacy = text(m, "id").unwrap_or_default();
            let mid = id_of("message", &mlegacy);
            let mo = Origin::new(M, &mlegacy);
            let Some(author) = text(m, "authorId").and_then(|a| st.users.get(&a).copied()) else {
                ctx.skip(
                    M,
                    &mlegacy,
                    Reason::Orphan,
                    "its author was not imported".into(),
                );
                continue;
            };
            let parent = match text(m, "parentId") {
                Some(p) if imported.contains(&p) => Some(id_of("message", &p)),
                Some(_) => {
                    ctx.skip(
                        M,
                        &mlegacy,
                        Reason::Orphan,
                        "its thread's first message was not imported".into(),
                    );
                    continue;
                }
                None => None,
            };
            let Some(at) = time(m, "createdAt") else {
                ctx.skip(M, &mlegacy, Reason::Invalid, "createdAt: not a time".into());
                continue;
            };
            let content = text(m, "content").unwrap_or_default();
            let saved = channel.checkpoint();
            let mut r = channel.apply(
                ctx,
                &mo,
                "post",
                ChannelScoped {
                    by: caller(author),
                    cmd: ChannelCommand::Post {
                        message_id: mid,
                        text: content.clone(),
                        parent_id: parent,
                        mentions: vec![],
                        attachments: vec![],
                        client_message_id: None,
                        at,
                    },
                },
            );
            let deleted = time(m, "deletedAt");
            if let (Ok(()), Some(when)) = (&r, deleted) {
                r = channel.apply(
                    ctx,
                    &mo,
                    "delete",
                    ChannelScoped {
                        by: caller(author),
                        cmd: ChannelCommand::Delete {
                            message_id: mid,
                            at: when,
                        },
                    },
                );
            }
            match r {
                Ok(()) => {
                    n += 1;
                    imported.insert(mlegacy.clone());
                    let shown = if deleted.is_some() {
                        String::new()
                    } else {
                        content.trim().to_owned()
                    };
                    m_exp.expect(
                        &mlegacy,
                        mid,
                        format!("{author}|{shown}|{}", deleted.is_some()),
                    );
                }
                Err(why) => {
                    channel.rollback(saved);
                    ctx.skip(M, &mlegacy, Reason::Invalid, why);
                    continue;
                }
            }
            for (k, r) in reactions
                .remove(&mlegacy)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let key = format!("{mlegacy}/{k}");
                let (Some(user), Some(emoji)) = (
                    text(r, "userId").and_then(|u| st.users.get(&u).copied()),
                    text(r, "emoji"),
                ) else {
                    ctx.skip(R, &key, Reason::Orphan, "its user was not imported".into());
                    continue;
                };
                match channel.try_apply(
                    ctx,
                    &Origin::new(R, &key),
                    "react",
                    ChannelScoped {
                        by: caller(user),
                        cmd: ChannelCommand::React {
                            message_id: mid,
                            emoji,
                            add: true,
                        },
                    },
                ) {
                    Ok(()) => n_reactions += 1,
                    Err(why) => ctx.skip(R, &key, Reason::Invalid, why),
                }
            }
        }
        let n_people = people.len() as u64;
        writer
            .start(
                ctx,
                &mut channel,
                origin,
                vec![(M, n), (R, n_reactions), (P, n_people)],
            )
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    for list in messages.into_values() {
        for m in list {
            ctx.skip(
                M,
                &text(&m, "id").unwrap_or_default(),
                Reason::Orphan,
                "its conversation is missing".into(),
            );
        }
    }
    for (m, list) in reactions {
        for (k, _) in list.iter().enumerate() {
            ctx.skip(
                R,
                &format!("{m}/{k}"),
                Reason::Orphan,
                "its message is missing".into(),
            );
        }
    }
    ctx.expect(exp);
    ctx.expect(m_exp);
    Ok(())
}

/// How much of a file's bytes is read at once.
const READ_CHUNK: usize = 1 << 20;
/// Longest chain of versions followed (`previousVersionId`), against loops.
const MAX_CHAIN: usize = 10_000;

/// Where a row's bytes are: `uploads/<path>`, a relative path that stays inside `uploads/`.
fn upload_path(dir: &Path, raw: &str) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("path: missing".into());
    }
    let rel = Path::new(raw);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("path: {raw:?} leaves uploads/"));
    }
    Ok(dir.join("uploads").join(rel))
}

/// Streams the bytes at `path` into `storage` through the same writer as an upload
/// (content-addressed, committed whole), or on a read-only run only hashes them.
/// `Ok(Err(why))`: the bytes are missing or unreadable, the row's fault; `Err`: the store
/// failed, which stops the run.
async fn store_bytes(
    ctx: &Ctx,
    storage: &Storage,
    path: std::path::PathBuf,
) -> anyhow::Result<Result<crate::files::storage::Committed, String>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let shown = path.display().to_string();
    let file = match std::fs::File::open(&path) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        Ok(_) => return Ok(Err(format!("{shown} is not a file"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("its bytes are missing: no {shown}")))
        }
        Err(e) => return Ok(Err(format!("{shown}: {e}"))),
    };
    // A reading thread hands chunks over a short queue: at most a few chunks in memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(2);
    let reader = actix_web::rt::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    if ctx.args.read_only() {
        let (mut hasher, mut size) = (Sha256::new(), 0i64);
        while let Some(chunk) = rx.recv().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(Err(format!("{shown}: {e}"))),
            };
            size += chunk.len() as i64;
            hasher.update(&chunk);
        }
        let _ = reader.await;
        return Ok(Ok(crate::files::storage::Committed {
            sha256: hex::encode(hasher.finalize()),
            size,
            sniffed_mime_type: None,
        }));
    }
    let mut writer = storage.writer(u64::MAX).await?;
    while let Some(chunk) = rx.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                writer.abort().await;
                return Ok(Err(format!("{shown}: {e}")));
            }
        };
        if let Err(e) = writer.write(chunk.into()).await {
            writer.abort().await;
            return Err(e.into());
        }
    }
    let _ = reader.await;
    Ok(Ok(writer.commit(&ctx.pool).await?))
}

/// The legacy id of the first version of `id`'s file, following `previousVersionId`.
fn first_version(rows: &HashMap<String, Value>, id: &str) -> Result<String, String> {
    let mut at = id.to_owned();
    for _ in 0..MAX_CHAIN {
        let row = rows
            .get(&at)
            .ok_or_else(|| format!("its earlier version {at} is missing"))?;
        match text(row, "previousVersionId").filter(|p| !p.trim().is_empty()) {
            Some(previous) => at = previous,
            None => return Ok(at),
        }
    }
    Err("its versions go round in a loop".into())
}

/// `files.json` and `file_permissions.json`: a file is the chain of its versions (rows
/// linked by `previousVersionId`), imported in version order as uploads of one file whose
/// id comes from its first version's; each version's bytes are read from `uploads/` into
/// the file store as an upload's are. A version whose bytes are missing is reported
/// (`orphan`) and the file's other versions still come in; a stated `sha256` must match
/// the bytes (`invalid` otherwise). Permissions become grants to imported users and teams.
async fn files(ctx: &Arc<Ctx>, dir: &Path, st: &State, storage: &Storage) -> anyhow::Result<()> {
    const T: &str = "files";
    const P: &str = "file_permissions";
    let rows = load(dir, T)?;
    let grants = load(dir, P)?;
    if rows.is_empty() && grants.is_empty() {
        return Ok(());
    }
    ctx.begin(T, Some(rows.len() as u64));
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        ctx.read(T, 1);
        let Some(legacy) = id_or_skip(ctx, T, i, &row) else {
            continue;
        };
        if by_id.contains_key(&legacy) {
            ctx.skip(T, &legacy, Reason::Duplicate, "the id is used twice".into());
            continue;
        }
        order.push(legacy.clone());
        by_id.insert(legacy, row);
    }
    // The versions of each file, by its first version's legacy id, in the rows' order.
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut chain_of: HashMap<String, usize> = HashMap::new();
    let mut root_of: HashMap<String, String> = HashMap::new();
    for legacy in order {
        match first_version(&by_id, &legacy) {
            Ok(root) => {
                let i = *chain_of.entry(root.clone()).or_insert_with(|| {
                    chains.push((root.clone(), Vec::new()));
                    chains.len() - 1
                });
                chains[i].1.push(legacy.clone());
                root_of.insert(legacy, root);
            }
            Err(why) => ctx.skip(T, &legacy, Reason::Orphan, why),
        }
    }
    // Grants by the file they name (any of its versions' ids).
    let mut grants_of: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for (i, g) in grants.into_iter().enumerate() {
        ctx.read(P, 1);
        let grantee = text(&g, "userId").or_else(|| text(&g, "teamId"));
        let (Some(file), Some(grantee)) = (text(&g, "fileId"), grantee) else {
            ctx.skip(
                P,
                &format!("#{i}"),
                Reason::Invalid,
                "fileId and userId or teamId are required".into(),
            );
            continue;
        };
        let key = format!("{file}/{grantee}");
        match root_of.get(&file) {
            Some(root) => grants_of.entry(root.clone()).or_default().push((key, g)),
            None => ctx.skip(P, &key, Reason::Orphan, "its file was not imported".into()),
        }
    }
    let mut exp = Expectation::new(
        T,
        "SELECT file_id::text || '/' || version::text, \
         concat_ws('|', sha256, size::text, uploaded_by::text) \
         FROM file_versions WHERE file_id::text || '/' || version::text = ANY($1)",
    );
    let mut g_exp = Expectation::new(
        P,
        "SELECT file_id::text || '/' || grantee_kind || '/' || grantee_id::text, access \
         FROM file_grants WHERE file_id::text || '/' || grantee_kind || '/' || grantee_id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    for (root, mut versions) in chains {
        let its_grants = grants_of.remove(&root).unwrap_or_default();
        let first = &by_id[&versions[0]];
        let orphans = |versions: &[String], why: &str| {
            for v in versions {
                ctx.skip(T, v, Reason::Orphan, why.into());
            }
            for (key, _) in &its_grants {
                ctx.skip(P, key, Reason::Orphan, "its file was not imported".into());
            }
        };
        let Some((org, (owner, roles))) = org_of(st, first) else {
            orphans(&versions, "its organization was not imported");
            continue;
        };
        let project = match text(first, "projectId").filter(|p| !p.trim().is_empty()) {
            Some(p) => {
                let id = id_of("project", &p);
                if !st.projects.contains(&id) {
                    orphans(&versions, "its project was not imported");
                    continue;
                }
                Some(id)
            }
            None => None,
        };
        versions.sort_by_key(|v| {
            let row = &by_id[v];
            (
                row.get("version").and_then(Value::as_i64).unwrap_or(0),
                time(row, "createdAt"),
            )
        });
        let id = id_of("file", &root);
        let uploader = |row: &Value| {
            text(row, "uploadedBy")
                .and_then(|u| st.users.get(&u).copied())
                .filter(|u| roles.contains_key(u))
                .unwrap_or(*owner)
        };
        let mut file = Entry::<File>::new(id, Some(org), Some(uploader(first)));
        let mut origin = None;
        let mut n = 0u64;
        for legacy in &versions {
            let row = &by_id[legacy];
            let o = Origin::new(T, legacy);
            let Some(at) = time(row, "createdAt") else {
                ctx.skip(T, legacy, Reason::Invalid, "createdAt: not a time".into());
                continue;
            };
            let mime = match crate::files::upload::declared_type(text(row, "mimeType").as_deref()) {
                Ok(m) => m,
                Err(e) => {
                    ctx.skip(T, legacy, Reason::Invalid, e.message);
                    continue;
                }
            };
            let path = match upload_path(dir, &text(row, "path").unwrap_or_default()) {
                Ok(p) => p,
                Err(why) => {
                    ctx.skip(T, legacy, Reason::Invalid, why);
                    continue;
                }
            };
            let committed = match store_bytes(ctx, storage, path).await? {
                Ok(c) => c,
                Err(why) => {
                    ctx.skip(T, legacy, Reason::Orphan, why);
                    continue;
                }
            };
            if let Some(stated) = text(row, "sha256").filter(|h| !h.trim().is_empty()) {
                if !stated.trim().eq_ignore_ascii_case(&committed.sha256) {
                    ctx.skip(
                        T,
                        legacy,
                        Reason::Invalid,
                        "sha256: does not match the bytes in uploads/".into(),
                    );
                    continue;
                }
            }
            let by = uploader(row);
            let cmd = FileCommand {
                organization_id: org,
                by,
                at,
                action: FileAction::Upload {
                    file_id: id,
                    project_id: project,
                    name: text(row, "name").unwrap_or_default(),
                    content: Content {
                        sha256: committed.sha256.clone(),
                        size: committed.size,
                        mime_type: mime,
                        sniffed_mime_type: committed.sniffed_mime_type,
                    },
                },
            };
            match file.try_apply(ctx, &o, "upload", cmd) {
                Ok(()) => {
                    let version = file.state.current().map_or(0, |(v, _)| v);
                    exp.expect(
                        legacy,
                        format!("{id}/{version}"),
                        format!("{}|{}|{by}", committed.sha256, committed.size),
                    );
                    n += 1;
                    origin.get_or_insert(o);
                }
                Err(why) => ctx.skip(T, legacy, Reason::Invalid, why),
            }
        }
        let Some(origin) = origin else {
            for (key, _) in &its_grants {
                ctx.skip(P, key, Reason::Orphan, "its file was not imported".into());
            }
            continue;
        };
        let mut n_grants = 0u64;
        for (key, g) in its_grants {
            let Some(access) = text(&g, "permission").and_then(|p| FileAccess::parse(p.trim()))
            else {
                ctx.skip(
                    P,
                    &key,
                    Reason::Invalid,
                    "permission: must be view, comment, edit or admin".into(),
                );
                continue;
            };
            let grantee = match (text(&g, "userId"), text(&g, "teamId")) {
                (Some(u), _) => st
                    .users
                    .get(&u)
                    .copied()
                    .filter(|u| roles.contains_key(u))
                    .map(|u| (GranteeKind::User, u)),
                (None, Some(t)) => Some(id_of("team", &t))
                    .filter(|t| st.teams.contains(t))
                    .map(|t| (GranteeKind::Team, t)),
                (None, None) => None,
            };
            let Some((kind, grantee)) = grantee else {
                ctx.skip(
                    P,
                    &key,
                    Reason::Orphan,
                    "its user or team was not imported into the file's organization".into(),
                );
                continue;
            };
            let cmd = FileCommand {
                organization_id: org,
                by: *owner,
                at: Utc::now(),
                action: FileAction::Grant {
                    kind,
                    grantee,
                    access,
                },
            };
            match file.try_apply(ctx, &Origin::new(P, &key), "grant", cmd) {
                Ok(()) => {
                    g_exp.expect(
                        &key,
                        format!("{id}/{}/{grantee}", kind.as_str()),
                        access.as_str().into(),
                    );
                    n_grants += 1;
                }
                Err(why) => ctx.skip(P, &key, Reason::Invalid, why),
            }
        }
        writer
            .start(ctx, &mut file, origin, vec![(T, n - 1), (P, n_grants)])
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    ctx.expect(exp);
    ctx.expect(g_exp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_come_as_iso_strings_or_epoch_milliseconds() {
        let iso = json!({"t": "2023-05-01T10:00:00Z"});
        let ms = json!({"t": 1_682_935_200_000i64});
        let ms_text = json!({"t": "1682935200000"});
        assert_eq!(time(&iso, "t"), time(&ms, "t"));
        assert_eq!(time(&ms, "t"), time(&ms_text, "t"));
        assert_eq!(time(&json!({"t": "yesterday"}), "t"), None);
    }

    #[test]
    fn legacy_ids_map_to_the_same_uuid_every_time_and_uuids_stay() {
        assert_eq!(id_of("user", "u_17"), id_of("user", "u_17"));
        assert_ne!(id_of("user", "u_17"), id_of("user", "u_18"));
        assert_ne!(id_of("user", "u_17"), id_of("team", "u_17"));
        let u = Uuid::new_v4();
        assert_eq!(id_of("user", &u.to_string()), u);
    }
}
