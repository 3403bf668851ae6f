//! `import flowmind`: a FlowMind (Supabase) database of the shape in `legacy/flowmind.sql`.
//!
//! Tables in dependency order, each streamed with a cursor: `auth.users` (with their
//! `user_profiles` for names), `organizations` (with `features`, and their profiles as
//! members), `buildings` with `sensors`, `energy_readings` (ordered by building and time, in
//! batches of up to 1,000 per event), `old_chat_sessions` with `old_chat_messages`, and
//! `old_swarm_tasks`. Ids are UUIDs and stay as they are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures_util::stream::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use universal_events::building::SensorKind;
use universal_events::identity::{Frontend, Role};
use universal_events::swarm::{TaskResult, TaskType};
use uuid::Uuid;

use super::{mapped_id, Ctx, Entry, Expectation, Origin, Reason, Writer};
use crate::actors::building::{
    Building, BuildingCommand, ReadingInput, ScopedCommand as BuildingScoped, MAX_READINGS,
};
use crate::actors::conversation::{
    Conversation, ConversationCommand, ScopedCommand as ChatScoped, MAX_DELTA,
};
use crate::actors::organization::{OrgAction, OrgCommand, Organization};
use crate::actors::swarm_task::{ScopedCommand as TaskScoped, SwarmCommand, SwarmTask};
use crate::actors::validate;

/// Opens the legacy database (read only, a few connections).
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET default_transaction_read_only = on")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the legacy database: {e}"))
}

/// Counts a table's rows for the progress bar (none when the count fails).
pub async fn count(src: &PgPool, table: &str) -> Option<u64> {
    sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(src)
        .await
        .ok()
        .map(|n| n.max(0) as u64)
}

/// What the import knows of each imported user: the organization their data goes to.
#[derive(Default)]
pub struct Users {
    /// Imported (or already imported) users, with their organization once known.
    pub org_of: HashMap<Uuid, Option<Uuid>>,
    pub by_email: HashMap<String, Uuid>,
}

struct Profile {
    organization_id: Option<Uuid>,
    full_name: Option<String>,
    role: Role,
    created_at: DateTime<Utc>,
}

fn role_of(s: Option<&str>) -> Role {
    match s.map(str::trim) {
        Some("admin") | Some("owner") => Role::Admin,
        Some("viewer") => Role::Viewer,
        _ => Role::Member,
    }
}

pub async fn run(ctx: &Arc<Ctx>) -> anyhow::Result<()> {
    let src = connect(&ctx.args.from).await?;
    let profiles = load_profiles(&src).await?;
    let mut users = import_users(ctx, &src, &profiles).await?;
    import_organizations(ctx, &src, &profiles, &mut users).await?;
    let buildings = import_buildings(ctx, &src, &users).await?;
    import_readings(ctx, &src, buildings).await?;
    import_chats(ctx, &src, &users).await?;
    import_tasks(ctx, &src, &users).await?;
    Ok(())
}

async fn load_profiles(src: &PgPool) -> anyhow::Result<HashMap<Uuid, Profile>> {
    let mut out = HashMap::new();
    let mut rows = sqlx::query(
        "SELECT id, organization_id, full_name, role, created_at FROM user_profiles ORDER BY id",
    )
    .fetch(src);
    while let Some(r) = rows.try_next().await? {
        out.insert(
            r.try_get("id")?,
            Profile {
                organization_id: r.try_get("organization_id")?,
                full_name: r.try_get("full_name")?,
                role: role_of(r.try_get::<Option<String>, _>("role")?.as_deref()),
                created_at: r.try_get("created_at")?,
            },
        );
    }
    Ok(out)
}

/// Registers one user (their e-mail claim first, as a signup does), with a legacy password
/// hash as it is. Shared by the imports that bring users.
#[allow(clippy::too_many_arguments)]
pub async fn register_user(
    ctx: Arc<Ctx>,
    table: &'static str,
    legacy_id: String,
    id: Uuid,
    email: String,
    display_name: String,
    password_hash: String,
    at: DateTime<Utc>,
    active: bool,
) -> anyhow::Result<bool> {
    use crate::actors::user::{User, UserCommand};
    let origin = Origin::new(table, &legacy_id);
    let (email, lower) = match crate::identity::auth::normalize_email(&email) {
        Ok(e) => e,
        Err(why) => {
            ctx.skip(table, &legacy_id, Reason::Invalid, format!("email: {why}"));
            return Ok(false);
        }
    };
    let mut user = Entry::<User>::new(id, None, Some(id));
    let registered = user.apply(
        &ctx,
        &origin,
        "register",
        UserCommand::Register {
            user_id: id,
            email: email.clone(),
            display_name,
            password_hash,
            at,
        },
    );
    if let Err(why) = registered {
        ctx.skip(table, &legacy_id, Reason::Invalid, why);
        return Ok(false);
    }
    if !active {
        if let Err(why) = user.apply(&ctx, &origin, "deactivate", UserCommand::Deactivate { at }) {
            ctx.skip(table, &legacy_id, Reason::Invalid, why);
            return Ok(false);
        }
    }
    let claim = universal_events::identity::EmailEvent::EmailClaimed(
        universal_events::identity::EmailClaimed { user_id: id, email },
    );
    let command_id = Uuid::new_v5(
        &super::NAMESPACE,
        format!("{}/{table}/{legacy_id}/email", ctx.source.as_str()).as_bytes(),
    );
    let claim = crate::store::NewEvent {
        event_id: Uuid::new_v5(&command_id, &0u64.to_be_bytes()),
        event_type: "EmailClaimed".into(),
        schema_version: 1,
        data: universal_events::EventFamily::to_data(&claim),
        metadata: ctx.metadata(command_id, &origin, None, Some(id)),
    };
    let stream = crate::http::identity::email_stream(&lower);
    match ctx.commit(&stream, true, vec![claim]).await? {
        Ok(_) => {}
        Err(_) => {
            ctx.skip(
                table,
                &legacy_id,
                Reason::Conflict,
                "the e-mail address is registered here already; not overwritten".into(),
            );
            return Ok(false);
        }
    }
    Ok(ctx
        .commit_rows(&user.stream(), true, user.take(), &origin, 1)
        .await?
        .is_some())
}

async fn import_users(
    ctx: &Arc<Ctx>,
    src: &PgPool,
    profiles: &HashMap<Uuid, Profile>,
) -> anyhow::Result<Users> {
    const T: &str = "auth.users";
    ctx.begin(T, count(src, "auth.users").await);
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', email_lower, display_name, active::text) FROM users \
         WHERE id::text = ANY($1)",
    );
    let mut users = Users::default();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut writer = Writer::default();
    let now = Utc::now();
    let mut rows = sqlx::query(
        "SELECT id, email, encrypted_password, raw_user_meta_data, created_at, banned_until, \
         deleted_at FROM auth.users ORDER BY created_at, id",
    )
    .fetch(src);
    let pending: Arc<std::sync::Mutex<Vec<(Uuid, bool)>>> = Arc::default();
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let Some(super::UserRow { email, lower, hash }) = super::user_row(
            ctx,
            T,
            &legacy,
            r.try_get("email")?,
            r.try_get("encrypted_password")?,
            "encrypted_password",
            &mut seen,
        ) else {
            continue;
        };
        let meta: Option<Value> = r.try_get("raw_user_meta_data")?;
        let name = profiles
            .get(&id)
            .and_then(|p| p.full_name.clone())
            .or_else(|| {
                meta.as_ref()
                    .and_then(|m| m.get("full_name").or_else(|| m.get("name")))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| lower.split('@').next().unwrap_or("user").to_owned());
        let banned: Option<DateTime<Utc>> = r.try_get("banned_until")?;
        let deleted: Option<DateTime<Utc>> = r.try_get("deleted_at")?;
        let active = deleted.is_none() && banned.is_none_or(|b| b <= now);
        let at: DateTime<Utc> = r.try_get("created_at")?;
        exp.expect(&legacy, id, format!("{lower}|{}|{active}", name.trim()));
        let ctx2 = ctx.clone();
        let pending = pending.clone();
        writer
            .submit(format!("user-{id}"), async move {
                let ok = register_user(ctx2, T, legacy, id, email, name, hash, at, active).await?;
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, ok));
                Ok(())
            })
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    for (id, ok) in pending.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        if ok {
            users.org_of.insert(id, None);
        } else {
            exp.forget(&id.to_string());
        }
    }
    for (lower, legacy) in seen {
        if let Some(id) = Uuid::parse_str(&legacy)
            .ok()
            .filter(|id| users.org_of.contains_key(id))
        {
            users.by_email.insert(lower, id);
        }
    }
    ctx.expect(exp);
    Ok(users)
}

async fn import_organizations(
    ctx: &Arc<Ctx>,
    src: &PgPool,
    profiles: &HashMap<Uuid, Profile>,
    users: &mut Users,
) -> anyhow::Result<()> {
    const T: &str = "organizations";
    const P: &str = "user_profiles";
    ctx.begin(T, count(src, "organizations").await);
    let mut orgs_exp = Expectation::new(
        T,
        "SELECT id::text, name FROM organizations WHERE id::text = ANY($1)",
    );
    let mut members_exp = Expectation::new(P, super::MEMBERSHIPS_SQL);
    // The members of each organization, oldest first; admins lead.
    let mut members: HashMap<Uuid, Vec<(Uuid, &Profile)>> = HashMap::new();
    let mut homeless = Vec::new();
    for (user, p) in profiles {
        ctx.read(P, 1);
        if !users.org_of.contains_key(user) {
            ctx.skip(
                P,
                &user.to_string(),
                Reason::Orphan,
                "its user was not imported".into(),
            );
            continue;
        }
        match p.organization_id {
            Some(org) => members.entry(org).or_default().push((*user, p)),
            None => homeless.push((*user, p)),
        }
    }
    for list in members.values_mut() {
        list.sort_by_key(|(u, p)| (p.role != Role::Admin, p.created_at, *u));
    }
    let mut writer = Writer::default();
    let mut rows = sqlx::query(
        "SELECT id, name, features, created_at FROM organizations ORDER BY created_at, id",
    )
    .fetch(src);
    let mut seen_orgs = HashSet::new();
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        seen_orgs.insert(id);
        let name: String = r.try_get("name")?;
        let features: Value = r.try_get("features")?;
        let at: DateTime<Utc> = r.try_get("created_at")?;
        let origin = Origin::new(T, id);
        let list = members.remove(&id).unwrap_or_default();
        let Some(&(creator, _)) = list.first() else {
            ctx.skip(
                T,
                &id.to_string(),
                Reason::Orphan,
                "no imported member to own it".into(),
            );
            continue;
        };
        let mut org = Entry::<Organization>::new(id, Some(id), Some(creator));
        let created = org.apply(
            ctx,
            &origin,
            "create",
            OrgCommand {
                actor: creator,
                action: OrgAction::Create {
                    organization_id: id,
                    name: name.clone(),
                    at,
                },
            },
        );
        if let Err(why) = created {
            ctx.skip(T, &id.to_string(), Reason::Invalid, why);
            for (user, _) in &list {
                ctx.skip(
                    P,
                    &user.to_string(),
                    Reason::Orphan,
                    "its organization was not imported".into(),
                );
            }
            continue;
        }
        orgs_exp.expect(&id.to_string(), id, name.trim().to_owned());
        if let Value::Object(map) = &features {
            for (key, enabled) in map {
                let (Some(frontend), Some(enabled)) = (Frontend::parse(key), enabled.as_bool())
                else {
                    continue;
                };
                let _ = org.apply(
                    ctx,
                    &origin,
                    &format!("feature/{key}"),
                    OrgCommand {
                        actor: creator,
                        action: OrgAction::SetFrontend { frontend, enabled },
                    },
                );
            }
        }
        let mut joined = Vec::new();
        for (user, p) in &list {
            let legacy = user.to_string();
            let pr = Origin::new(P, &legacy);
            if *user == creator && p.role != Role::Admin {
                // The decider's rule: an organization has an admin. The oldest member is it.
                ctx.skip(
                    P,
                    &legacy,
                    Reason::Invalid,
                    format!(
                        "kept as admin, not {}: the organization had no admin",
                        p.role.as_str()
                    ),
                );
                joined.push(*user);
                continue;
            }
            if *user != creator {
                if let Err(why) = org.try_apply(
                    ctx,
                    &pr,
                    "member",
                    OrgCommand {
                        actor: creator,
                        action: OrgAction::SetMember {
                            user_id: *user,
                            role: p.role,
                        },
                    },
                ) {
                    ctx.skip(P, &legacy, Reason::Invalid, why);
                    continue;
                }
            }
            members_exp.expect(
                &legacy,
                format!("{id}/{user}"),
                format!("{id}|{}", p.role.as_str()),
            );
            joined.push(*user);
        }
        for user in &joined {
            users.org_of.insert(*user, Some(id));
        }
        let ctx2 = ctx.clone();
        let n = joined.len() as u64;
        let stream = org.stream();
        let events = org.take();
        writer
            .submit(stream.clone(), async move {
                let outcome = ctx2.commit_rows(&stream, true, events, &origin, 1).await?;
                ctx2.count_with(P, outcome, n);
                Ok(())
            })
            .await?;
    }
    writer.drain().await?;
    ctx.end(T);
    for (org, list) in members {
        for (user, _) in list {
            ctx.skip(
                P,
                &user.to_string(),
                Reason::Orphan,
                format!("organization {org} is missing"),
            );
            members_exp.forget(&user.to_string());
        }
    }
    // Users without an organization join `--organization`, when given.
    if !homeless.is_empty() {
        let first = homeless
            .iter()
            .min_by_key(|(u, p)| (p.created_at, *u))
            .map(|(u, _)| *u);
        match &ctx.args.organization {
            Some(target) => {
                let Some(org) = super::organization(ctx, target, first).await? else {
                    anyhow::bail!("--organization {target}: not found");
                };
                let rows: Vec<_> = homeless
                    .iter()
                    .map(|(u, p)| (u.to_string(), *u, p.role))
                    .collect();
                for user in join(ctx, P, org, &rows, &mut members_exp).await? {
                    users.org_of.insert(user, Some(org));
                }
            }
            None => {
                for (user, _) in &homeless {
                    ctx.skip(
                        P,
                        &user.to_string(),
                        Reason::Orphan,
                        "no organization (give --organization to place such users)".into(),
                    );
                }
            }
        }
    }
    let _ = seen_orgs;
    ctx.expect(orgs_exp);
    ctx.expect(members_exp);
    Ok(())
}

/// Adds users to organization `org` (one append on its stream), as its first admin. Rows
/// are `(legacy id, user, role)` of `table`; answers the users who joined.
pub async fn join(
    ctx: &Arc<Ctx>,
    table: &'static str,
    org: Uuid,
    members: &[(String, Uuid, Role)],
    exp: &mut Expectation,
) -> anyhow::Result<Vec<Uuid>> {
    // The organization's state, from the log, so that the decider sees its admins.
    let (_, state) =
        crate::actors::runtime::state_of::<Organization>(ctx.store.as_ref(), org).await?;
    if state.members.is_empty() && ctx.args.read_only() {
        // A dry run did not create the organization: every member would join it.
        ctx.count_with(table, Some(super::Commit::Written), members.len() as u64);
        return Ok(members.iter().map(|(_, u, _)| *u).collect());
    }
    let Some(admin) = state
        .members
        .iter()
        .filter(|(_, r)| **r == Role::Admin)
        .map(|(u, _)| *u)
        .min()
    else {
        anyhow::bail!("--organization: organization {org} has no admin");
    };
    let mut entry = Entry::<Organization>::new(org, Some(org), Some(admin));
    entry.state = state;
    let mut joined = Vec::new();
    for (legacy, user, role) in members {
        let o = Origin::new(table, legacy);
        if entry.state.members.get(user) == Some(role) {
            exp.expect(
                legacy,
                format!("{org}/{user}"),
                format!("{org}|{}", role.as_str()),
            );
            joined.push(*user);
            continue;
        }
        match entry.try_apply(
            ctx,
            &o,
            &format!("join/{org}"),
            OrgCommand {
                actor: admin,
                action: OrgAction::SetMember {
                    user_id: *user,
                    role: *role,
                },
            },
        ) {
            Ok(()) => {
                exp.expect(
                    legacy,
                    format!("{org}/{user}"),
                    format!("{org}|{}", role.as_str()),
                );
                joined.push(*user);
            }
            Err(why) => ctx.skip(table, legacy, Reason::Invalid, why),
        }
    }
    let events = entry.take();
    let outcome = if events.is_empty() {
        Ok(super::Commit::Unchanged)
    } else {
        ctx.commit(&entry.stream(), false, events).await?
    };
    let Ok(outcome) = outcome else {
        for user in &joined {
            ctx.skip(
                table,
                &user.to_string(),
                Reason::Conflict,
                "could not join --organization".into(),
            );
        }
        return Ok(Vec::new());
    };
    ctx.count_with(table, Some(outcome), joined.len() as u64);
    Ok(joined)
}

/// Reports the sensors of a building that was not imported.
fn orphan_sensors(ctx: &Ctx, sensors: &[LegacySensor]) {
    for s in sensors {
        ctx.read("sensors", 1);
        ctx.skip(
            "sensors",
            &s.0.to_string(),
            Reason::Orphan,
            "its building was not imported".into(),
        );
    }
}

/// A legacy sensor row: id, name, type, unit, status.
type LegacySensor = (Uuid, Option<String>, String, Option<String>, Option<String>);

fn sensor_kind(s: &str) -> Option<SensorKind> {
    SensorKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s.trim().to_ascii_lowercase())
}

/// An imported building: its decider state for the readings, and what is still to come.
pub struct Imported {
    entry: Entry<Building>,
    /// Sensors imported active, and those to decommission after their readings.
    sensors: HashSet<Uuid>,
    inactive: Vec<Uuid>,
}

async fn import_buildings(
    ctx: &Arc<Ctx>,
    src: &PgPool,
    users: &Users,
) -> anyhow::Result<HashMap<Uuid, Imported>> {
    const T: &str = "buildings";
    const S: &str = "sensors";
    let orphan_org = match &ctx.args.assign_orphans_to {
        Some(email) => {
            let lower = email.trim().to_lowercase();
            let user = match users.by_email.get(&lower) {
                Some(u) => Some(*u),
                None => {
                    sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE email_lower = $1")
                        .bind(&lower)
                        .fetch_optional(&ctx.pool)
                        .await?
                }
            };
            let Some(user) = user else {
                anyhow::bail!("--assign-orphans-to {email}: no such user");
            };
            let org = match users.org_of.get(&user).copied().flatten() {
                Some(o) => Some(o),
                None => {
                    sqlx::query_scalar::<_, Uuid>(
                        "SELECT organization_id FROM memberships WHERE user_id = $1 \
                     ORDER BY joined_position LIMIT 1",
                    )
                    .bind(user)
                    .fetch_optional(&ctx.pool)
                    .await?
                }
            };
            let Some(org) = org else {
                anyhow::bail!("--assign-orphans-to {email}: the user has no organization");
            };
            Some((user, org))
        }
        None => None,
    };
    // Sensors of every building (small next to the readings).
    let mut sensors: HashMap<Uuid, Vec<LegacySensor>> = HashMap::new();
    let mut rows =
        sqlx::query("SELECT id, building_id, name, type, unit, status FROM sensors ORDER BY building_id, created_at, id")
            .fetch(src);
    while let Some(r) = rows.try_next().await? {
        sensors.entry(r.try_get("building_id")?).or_default().push((
            r.try_get("id")?,
            r.try_get("name")?,
            r.try_get("type")?,
            r.try_get("unit")?,
            r.try_get("status")?,
        ));
    }
    drop(rows);
    ctx.begin(T, count(src, "buildings").await);
    let mut b_exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', name, organization_id::text) FROM buildings \
         WHERE id::text = ANY($1)",
    );
    let mut s_exp = Expectation::new(
        S,
        "SELECT id::text, concat_ws('|', building_id::text, kind, unit, status) FROM sensors \
         WHERE id::text = ANY($1)",
    );
    let mut out = HashMap::new();
    let mut writer = Writer::default();
    let failed: Arc<std::sync::Mutex<Vec<Uuid>>> = Arc::default();
    let mut rows = sqlx::query(
        "SELECT id, user_id, name, address, floor_area::float8 AS floor_area, created_at \
         FROM buildings ORDER BY id",
    )
    .fetch(src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let owner: Option<Uuid> = r.try_get("user_id")?;
        let its_sensors = sensors.remove(&id).unwrap_or_default();
        let org = match owner {
            Some(u) => match users.org_of.get(&u) {
                Some(Some(org)) => Some(*org),
                Some(None) => None,
                None => None,
            },
            None => orphan_org.map(|(_, o)| o),
        };
        let Some(org) = org else {
            let why = match owner {
                Some(u) => format!("its owner {u} was not imported or has no organization"),
                None => "no owner (user_id is NULL); give --assign-orphans-to".into(),
            };
            ctx.skip(T, &legacy, Reason::Orphan, why);
            orphan_sensors(ctx, &its_sensors);
            continue;
        };
        let user = owner.or(orphan_org.map(|(u, _)| u));
        let name: String = r.try_get("name")?;
        let mut entry = Entry::<Building>::new(id, Some(org), user);
        let origin = Origin::new(T, &legacy);
        let registered = entry.apply(
            ctx,
            &origin,
            "register",
            BuildingScoped {
                organization_id: Some(org),
                cmd: BuildingCommand::Register {
                    name: name.clone(),
                    address: r.try_get("address")?,
                    floor_area_m2: r.try_get("floor_area")?,
                    at: r.try_get("created_at")?,
                    building_id: id,
                },
            },
        );
        if let Err(why) = registered {
            ctx.skip(T, &legacy, Reason::Invalid, why);
            orphan_sensors(ctx, &its_sensors);
            continue;
        }
        b_exp.expect(&legacy, id, format!("{}|{org}", name.trim()));
        let mut imported = Imported {
            entry,
            sensors: HashSet::new(),
            inactive: Vec::new(),
        };
        for (sid, sname, kind, unit, status) in its_sensors {
            ctx.read(S, 1);
            let so = Origin::new(S, sid);
            let Some(kind) = sensor_kind(&kind) else {
                ctx.skip(
                    S,
                    &sid.to_string(),
                    Reason::Invalid,
                    format!("type: unknown sensor type {kind:?}"),
                );
                continue;
            };
            let unit = unit
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| kind.units()[0].to_owned());
            let cmd = BuildingScoped {
                organization_id: Some(org),
                cmd: BuildingCommand::RegisterSensor {
                    sensor_id: sid,
                    kind,
                    unit: unit.clone(),
                    name: sname,
                },
            };
            match imported.entry.try_apply(ctx, &so, "register", cmd) {
                Ok(()) => {
                    let inactive = status.as_deref().map(str::trim) == Some("inactive");
                    if inactive {
                        imported.inactive.push(sid);
                    }
                    imported.sensors.insert(sid);
                    let status = if inactive { "decommissioned" } else { "active" };
                    s_exp.expect(
                        &sid.to_string(),
                        sid,
                        format!("{id}|{}|{unit}|{status}", kind.as_str()),
                    );
                }
                Err(why) => ctx.skip(S, &sid.to_string(), Reason::Invalid, why),
            }
        }
        let n_sensors = imported.sensors.len() as u64;
        let stream = imported.entry.stream();
        let events = imported.entry.take();
        imported.entry.started = true;
        out.insert(id, imported);
        let ctx2 = ctx.clone();
        let failed = failed.clone();
        writer
            .submit(stream.clone(), async move {
                let outcome = ctx2.commit_rows(&stream, true, events, &origin, 1).await?;
                ctx2.count_with(S, outcome, n_sensors);
                if outcome.is_none() {
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                }
                Ok(())
            })
            .await?;
    }
    drop(rows);
    writer.drain().await?;
    ctx.end(T);
    for id in failed.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        if let Some(b) = out.remove(&id) {
            b_exp.forget(&id.to_string());
            for s in b.sensors {
                s_exp.forget(&s.to_string());
            }
        }
    }
    for list in sensors.into_values() {
        for s in list {
            ctx.read(S, 1);
            ctx.skip(
                S,
                &s.0.to_string(),
                Reason::Orphan,
                "its building is missing".into(),
            );
        }
    }
    ctx.expect(b_exp);
    ctx.expect(s_exp);
    Ok(out)
}

/// Appends the batch of readings of one building.
async fn flush_readings(
    ctx: &Arc<Ctx>,
    writer: &mut Writer,
    b: &mut Imported,
    batch: &mut Vec<(i64, ReadingInput)>,
    sums: &mut BTreeMap<(Uuid, i64), (u64, f64)>,
) -> anyhow::Result<()> {
    const R: &str = "energy_readings";
    if batch.is_empty() {
        return Ok(());
    }
    let first = batch[0].0;
    let last = batch[batch.len() - 1].0;
    let origin = Origin::new(R, format!("{first}..{last}"));
    let received_at = batch
        .iter()
        .map(|(_, r)| r.measured_at)
        .max()
        .unwrap_or_else(Utc::now);
    let org = b.entry.organization;
    let readings: Vec<ReadingInput> = batch.iter().map(|(_, r)| r.clone()).collect();
    let command_id = Uuid::new_v5(
        &super::NAMESPACE,
        format!("readings/{}/{first}", b.entry.id).as_bytes(),
    );
    let whole = b.entry.try_apply(
        ctx,
        &origin,
        "batch",
        BuildingScoped {
            organization_id: org,
            cmd: BuildingCommand::RecordReadings {
                command_id,
                received_at,
                readings,
            },
        },
    );
    let mut taken: Vec<&(i64, ReadingInput)> = batch.iter().collect();
    if whole.is_err() {
        // One reading spoils the batch: each goes alone, and those refused are reported.
        taken.clear();
        for item in batch.iter() {
            let o = Origin::new(R, item.0);
            let one = b.entry.try_apply(
                ctx,
                &o,
                "reading",
                BuildingScoped {
                    organization_id: org,
                    cmd: BuildingCommand::RecordReadings {
                        command_id: Uuid::new_v5(&command_id, &item.0.to_be_bytes()),
                        received_at: item.1.measured_at,
                        readings: vec![item.1.clone()],
                    },
                },
            );
            match one {
                Ok(()) => taken.push(item),
                Err(why) => ctx.skip(R, &item.0.to_string(), Reason::Invalid, why),
            }
        }
    }
    for (_, r) in &taken {
        let day = r
            .measured_at
            .duration_trunc(TimeDelta::days(1))
            .map(|d| d.timestamp())
            .unwrap_or_default();
        let e = sums.entry((r.sensor_id, day)).or_default();
        e.0 += 1;
        e.1 += r.value;
    }
    let n = taken.len() as u64;
    batch.clear();
    let events = b.entry.take();
    if events.is_empty() {
        return Ok(());
    }
    let stream = b.entry.stream();
    let ctx2 = ctx.clone();
    writer
        .submit(stream.clone(), async move {
            ctx2.commit_rows(&stream, false, events, &origin, n).await?;
            Ok(())
        })
        .await
}

async fn import_readings(
    ctx: &Arc<Ctx>,
    src: &PgPool,
    mut buildings: HashMap<Uuid, Imported>,
) -> anyhow::Result<()> {
    const R: &str = "energy_readings";
    ctx.begin(R, count(src, "energy_readings").await);
    let mut writer = Writer::default();
    let mut sums: BTreeMap<(Uuid, i64), (u64, f64)> = BTreeMap::new();
    let mut rows = sqlx::query(
        "SELECT r.id, s.building_id, r.sensor_id, r.\"timestamp\" AS at, r.value \
         FROM energy_readings r JOIN sensors s ON s.id = r.sensor_id \
         ORDER BY s.building_id, r.\"timestamp\", r.id",
    )
    .fetch(src);
    let mut current: Option<Uuid> = None;
    let mut batch: Vec<(i64, ReadingInput)> = Vec::with_capacity(MAX_READINGS);
    let now = Utc::now();
    while let Some(r) = rows.try_next().await? {
        ctx.read(R, 1);
        let id: i64 = r.try_get("id")?;
        let building: Uuid = r.try_get("building_id")?;
        let sensor: Uuid = r.try_get("sensor_id")?;
        let at: DateTime<Utc> = r.try_get("at")?;
        let value: f64 = r.try_get("value")?;
        if current != Some(building) || batch.len() >= MAX_READINGS {
            if let Some(b) = current.and_then(|c| buildings.get_mut(&c)) {
                flush_readings(ctx, &mut writer, b, &mut batch, &mut sums).await?;
            }
            batch.clear();
            current = Some(building);
        }
        let Some(b) = buildings.get(&building) else {
            ctx.skip(
                R,
                &id.to_string(),
                Reason::Orphan,
                "its building was not imported".into(),
            );
            continue;
        };
        if !b.sensors.contains(&sensor) {
            ctx.skip(
                R,
                &id.to_string(),
                Reason::Orphan,
                "its sensor was not imported".into(),
            );
            continue;
        }
        if let Err(why) = validate::quantity(value) {
            ctx.skip(R, &id.to_string(), Reason::Invalid, format!("value: {why}"));
            continue;
        }
        if let Err(why) = validate::time(at, now) {
            ctx.skip(
                R,
                &id.to_string(),
                Reason::Invalid,
                format!("timestamp: {why}"),
            );
            continue;
        }
        batch.push((
            id,
            ReadingInput {
                sensor_id: sensor,
                value,
                measured_at: at,
            },
        ));
    }
    drop(rows);
    if let Some(b) = current.and_then(|c| buildings.get_mut(&c)) {
        flush_readings(ctx, &mut writer, b, &mut batch, &mut sums).await?;
    }
    // Sensors that were inactive in the source are decommissioned after their readings.
    for b in buildings.values_mut() {
        for sid in std::mem::take(&mut b.inactive) {
            let o = Origin::new("sensors", sid);
            let cmd = BuildingScoped {
                organization_id: b.entry.organization,
                cmd: BuildingCommand::DecommissionSensor {
                    sensor_id: sid,
                    reason: Some("inactive in the legacy data".into()),
                },
            };
            if let Err(why) = b.entry.try_apply(ctx, &o, "decommission", cmd) {
                ctx.skip("sensors", &sid.to_string(), Reason::Invalid, why);
            }
        }
        let events = b.entry.take();
        if !events.is_empty() {
            let stream = b.entry.stream();
            let ctx2 = ctx.clone();
            writer
                .submit(stream.clone(), async move {
                    ctx2.commit(&stream, false, events).await?.ok();
                    Ok(())
                })
                .await?;
        }
    }
    writer.drain().await?;
    ctx.end(R);
    let mut exp = Expectation::new(
        R,
        "SELECT sensor_id::text || '@' || extract(epoch FROM bucket)::bigint::text, \
         samples::text || '|' || total::text FROM energy_daily \
         WHERE sensor_id::text || '@' || extract(epoch FROM bucket)::bigint::text = ANY($1)",
    );
    exp.tolerant = true;
    for ((sensor, day), (n, sum)) in sums {
        let key = format!("{sensor}@{day}");
        exp.expect(&key, &key, format!("{n}|{sum}"));
    }
    ctx.expect(exp);
    Ok(())
}

async fn import_chats(ctx: &Arc<Ctx>, src: &PgPool, users: &Users) -> anyhow::Result<()> {
    const C: &str = "old_chat_sessions";
    const M: &str = "old_chat_messages";
    ctx.begin(C, count(src, "old_chat_sessions").await);
    let mut s_exp = Expectation::new(
        C,
        "SELECT id::text, concat_ws('|', user_id::text, title, model_id) FROM chat_sessions \
         WHERE id::text = ANY($1)",
    );
    let mut m_exp = Expectation::new(
        M,
        "SELECT id::text, concat_ws('|', role, content) FROM chat_messages WHERE id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    let mut sessions = sqlx::query(
        "SELECT id, user_id, title, model_id, created_at FROM old_chat_sessions ORDER BY id",
    )
    .fetch(src);
    let mut messages = sqlx::query(
        "SELECT id, session_id, role, content, created_at FROM old_chat_messages \
         ORDER BY session_id, created_at, id",
    )
    .fetch(src);
    let mut next_message = messages.try_next().await?;
    while let Some(r) = sessions.try_next().await? {
        ctx.read(C, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        // This session's messages (and any of sessions that do not exist, as orphans).
        let mut own = Vec::new();
        while let Some(m) = &next_message {
            let sid: Uuid = m.try_get("session_id")?;
            if sid > id {
                break;
            }
            ctx.read(M, 1);
            let mid: Uuid = m.try_get("id")?;
            if sid < id {
                ctx.skip(
                    M,
                    &mid.to_string(),
                    Reason::Orphan,
                    "its session is missing".into(),
                );
            } else {
                own.push((
                    mid,
                    m.try_get::<String, _>("role")?,
                    m.try_get::<String, _>("content")?,
                    m.try_get::<DateTime<Utc>, _>("created_at")?,
                ));
            }
            next_message = messages.try_next().await?;
        }
        let owner: Uuid = r.try_get("user_id")?;
        let Some(Some(org)) = users.org_of.get(&owner).copied() else {
            ctx.skip(
                C,
                &legacy,
                Reason::Orphan,
                format!("its user {owner} was not imported or has no organization"),
            );
            for (mid, ..) in own {
                ctx.skip(
                    M,
                    &mid.to_string(),
                    Reason::Orphan,
                    "its session was not imported".into(),
                );
            }
            continue;
        };
        let title: Option<String> = r.try_get("title")?;
        let title = title
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "Imported chat".into());
        let model: Option<String> = r.try_get("model_id")?;
        let model = model
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| "legacy".into());
        let at: DateTime<Utc> = r.try_get("created_at")?;
        let mut chat = Entry::<Conversation>::new(id, Some(org), Some(owner));
        let origin = Origin::new(C, &legacy);
        let scoped = |cmd| ChatScoped {
            organization_id: org,
            owner: Some(owner),
            cmd,
        };
        if let Err(why) = chat.apply(
            ctx,
            &origin,
            "create",
            scoped(ConversationCommand::Create {
                session_id: id,
                user_id: owner,
                title: title.clone(),
                model_id: model.clone(),
                system_prompt: None,
                at,
            }),
        ) {
            ctx.skip(C, &legacy, Reason::Invalid, why);
            for (mid, ..) in own {
                ctx.skip(
                    M,
                    &mid.to_string(),
                    Reason::Orphan,
                    "its session was not imported".into(),
                );
            }
            continue;
        }
        s_exp.expect(
            &legacy,
            id,
            format!("{owner}|{}|{}", title.trim(), model.trim()),
        );
        let mut n = 0u64;
        let mut i = 0;
        while i < own.len() {
            let (mid, role, content, mat) = &own[i];
            let o = Origin::new(M, mid);
            match role.trim() {
                "system" => {
                    match chat.try_apply(
                        ctx,
                        &o,
                        "system",
                        scoped(ConversationCommand::SetSystemPrompt {
                            system_prompt: Some(content.clone()),
                        }),
                    ) {
                        Ok(()) => n += 1,
                        Err(why) => ctx.skip(M, &mid.to_string(), Reason::Invalid, why),
                    }
                    i += 1;
                }
                "user" => {
                    let reply = own
                        .get(i + 1)
                        .filter(|(_, r, ..)| r.trim() == "assistant")
                        .cloned();
                    let reply_id = reply
                        .as_ref()
                        .map_or_else(|| Uuid::new_v5(mid, b"reply"), |(rid, ..)| *rid);
                    let saved = chat.checkpoint();
                    let mut steps = vec![(
                        o.clone(),
                        "post",
                        ConversationCommand::PostMessage {
                            message_id: *mid,
                            reply_id,
                            content: content.clone(),
                            provider: "imported".into(),
                            at: *mat,
                        },
                    )];
                    match &reply {
                        Some((rid, _, text, rat)) => {
                            let ro = Origin::new(M, rid);
                            let mut offset = 0u64;
                            let chars: Vec<char> = text.chars().collect();
                            for (k, piece) in chars.chunks(MAX_DELTA).enumerate() {
                                let piece: String = piece.iter().collect();
                                let len = piece.chars().count() as u64;
                                steps.push((
                                    ro.clone(),
                                    if k == 0 { "delta" } else { "delta+" },
                                    ConversationCommand::AppendDelta {
                                        reply_id,
                                        offset,
                                        text: piece,
                                    },
                                ));
                                offset += len;
                            }
                            steps.push((
                                ro.clone(),
                                "complete",
                                ConversationCommand::CompleteReply {
                                    reply_id,
                                    finish_reason: "stop".into(),
                                    prompt_tokens: 0,
                                    completion_tokens: 0,
                                    estimated: true,
                                    at: *rat,
                                },
                            ));
                        }
                        None => steps.push((
                            o.clone(),
                            "no-reply",
                            ConversationCommand::CancelReply {
                                reply_id: Some(reply_id),
                                at: *mat,
                            },
                        )),
                    }
                    let mut failed = None;
                    for (so, step, cmd) in steps {
                        // Delta pieces after the first are told apart by their offset.
                        let step = match &cmd {
                            ConversationCommand::AppendDelta { offset, .. } => {
                                format!("{step}{offset}")
                            }
                            _ => step.to_owned(),
                        };
                        if let Err(why) = chat.apply(ctx, &so, &step, scoped(cmd)) {
                            failed = Some(why);
                            break;
                        }
                    }
                    match failed {
                        None => {
                            m_exp.expect(&mid.to_string(), mid, format!("user|{content}"));
                            n += 1;
                            if let Some((rid, _, text, _)) = &reply {
                                m_exp.expect(&rid.to_string(), rid, format!("assistant|{text}"));
                                n += 1;
                            }
                        }
                        Some(why) => {
                            chat.rollback(saved);
                            ctx.skip(M, &mid.to_string(), Reason::Invalid, why.clone());
                            if let Some((rid, ..)) = &reply {
                                ctx.skip(
                                    M,
                                    &rid.to_string(),
                                    Reason::Orphan,
                                    "its user message was not imported".into(),
                                );
                            }
                        }
                    }
                    i += if reply.is_some() { 2 } else { 1 };
                }
                "assistant" => {
                    ctx.skip(
                        M,
                        &mid.to_string(),
                        Reason::Unsupported,
                        "an assistant message without a user message before it".into(),
                    );
                    i += 1;
                }
                other => {
                    ctx.skip(
                        M,
                        &mid.to_string(),
                        Reason::Invalid,
                        format!("role: unknown role {other:?}"),
                    );
                    i += 1;
                }
            }
        }
        writer.start(ctx, &mut chat, origin, vec![(M, n)]).await?;
    }
    while let Some(m) = next_message {
        ctx.read(M, 1);
        let mid: Uuid = m.try_get("id")?;
        ctx.skip(
            M,
            &mid.to_string(),
            Reason::Orphan,
            "its session is missing".into(),
        );
        next_message = messages.try_next().await?;
    }
    drop(sessions);
    drop(messages);
    writer.drain().await?;
    ctx.end(C);
    ctx.expect(s_exp);
    ctx.expect(m_exp);
    Ok(())
}

async fn import_tasks(ctx: &Arc<Ctx>, src: &PgPool, users: &Users) -> anyhow::Result<()> {
    const T: &str = "old_swarm_tasks";
    ctx.begin(T, count(src, "old_swarm_tasks").await);
    let mut exp = Expectation::new(
        T,
        "SELECT id::text, concat_ws('|', user_id::text, type, status) FROM swarm_tasks \
         WHERE id::text = ANY($1)",
    );
    let mut writer = Writer::default();
    let mut rows = sqlx::query(
        "SELECT id, user_id, type, objective, config, status, result, created_at \
         FROM old_swarm_tasks ORDER BY created_at, id",
    )
    .fetch(src);
    while let Some(r) = rows.try_next().await? {
        ctx.read(T, 1);
        let id: Uuid = r.try_get("id")?;
        let legacy = id.to_string();
        let owner: Uuid = r.try_get("user_id")?;
        let Some(Some(org)) = users.org_of.get(&owner).copied() else {
            ctx.skip(
                T,
                &legacy,
                Reason::Orphan,
                format!("its user {owner} was not imported or has no organization"),
            );
            continue;
        };
        let kind: String = r.try_get("type")?;
        let Some(task_type) = TaskType::parse(kind.trim())
            .filter(|t| matches!(t, TaskType::Quantum | TaskType::Velocity))
        else {
            ctx.skip(
                T,
                &legacy,
                Reason::Invalid,
                format!("type: unknown task type {kind:?}"),
            );
            continue;
        };
        let objective: Option<String> = r.try_get("objective")?;
        let objective = objective.unwrap_or_default();
        let config: Option<Value> = r.try_get("config")?;
        let status: Option<String> = r.try_get("status")?;
        let result: Option<Value> = r.try_get("result")?;
        let at: DateTime<Utc> = r.try_get("created_at")?;
        match task(
            ctx, id, org, owner, task_type, objective, config, status, result, at,
        ) {
            Ok((entry, status)) => {
                exp.expect(
                    &legacy,
                    id,
                    format!("{owner}|{}|{status}", task_type.as_str()),
                );
                let mut entry = entry;
                let stream = entry.stream();
                let events = entry.take();
                let origin = Origin::new(T, &legacy);
                let ctx2 = ctx.clone();
                writer
                    .submit(stream.clone(), async move {
                        ctx2.commit_rows(&stream, true, events, &origin, 1).await?;
                        Ok(())
                    })
                    .await?;
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

/// A legacy task as history: created, then completed with its result, failed, cancelled, or
/// (pending or running when the old backend stopped) failed as interrupted, never run again.
#[allow(clippy::too_many_arguments)]
fn task(
    ctx: &Ctx,
    id: Uuid,
    org: Uuid,
    owner: Uuid,
    task_type: TaskType,
    objective: String,
    config: Option<Value>,
    status: Option<String>,
    result: Option<Value>,
    at: DateTime<Utc>,
) -> Result<(Entry<SwarmTask>, &'static str), String> {
    let origin = Origin::new("old_swarm_tasks", id);
    let config = crate::http::swarm::legacy_config(
        task_type,
        &objective,
        config.unwrap_or_else(|| Value::Object(Default::default())),
        id,
    )
    .map_err(|e| format!("config: {e}"))?;
    let mut entry = Entry::<SwarmTask>::new(id, Some(org), Some(owner));
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
            user_id: owner,
            task_type,
            objective,
            config,
            at,
        }),
    )?;
    let status = status
        .as_deref()
        .map(str::trim)
        .unwrap_or("pending")
        .to_owned();
    let error = result
        .as_ref()
        .and_then(|r| r.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let outcome = settle(ctx, &mut entry, &origin, org, &status, error, at, || {
        legacy_result(task_type, result.as_ref())
    })?;
    Ok((entry, outcome))
}

/// Ends an imported task's history as its legacy status says: completed with its result,
/// failed with its error, cancelled, or, when it was pending or running when the old backend
/// stopped, failed as interrupted (never run again). Answers the status it ends in.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    ctx: &Ctx,
    entry: &mut Entry<SwarmTask>,
    origin: &Origin,
    org: Uuid,
    status: &str,
    error: Option<String>,
    at: DateTime<Utc>,
    result: impl FnOnce() -> Result<TaskResult, String>,
) -> Result<&'static str, String> {
    let scoped = |cmd| TaskScoped {
        organization_id: org,
        cmd,
    };
    let start = |entry: &mut Entry<SwarmTask>| {
        entry.apply(
            ctx,
            origin,
            "start",
            scoped(SwarmCommand::Start { attempt: 1, at }),
        )
    };
    Ok(match status {
        "completed" => {
            start(entry)?;
            let result = result()?;
            entry.apply(
                ctx,
                origin,
                "complete",
                scoped(SwarmCommand::Complete {
                    attempt: 1,
                    result,
                    at,
                }),
            )?;
            "completed"
        }
        "failed" => {
            start(entry)?;
            let error = error.unwrap_or_else(|| "failed in the legacy backend".into());
            entry.apply(
                ctx,
                origin,
                "fail",
                scoped(SwarmCommand::Fail {
                    attempt: 1,
                    error,
                    at,
                }),
            )?;
            "failed"
        }
        "cancelled" => {
            entry.apply(ctx, origin, "cancel", scoped(SwarmCommand::Cancel { at }))?;
            "cancelled"
        }
        "pending" | "running" | "started" | "processing" => {
            entry.apply(
                ctx,
                origin,
                "interrupt",
                scoped(SwarmCommand::Abandon {
                    reason: format!(
                        "interrupted: {status} in the legacy backend when it was imported; \
                         not run again"
                    ),
                    at,
                }),
            )?;
            "failed"
        }
        other => return Err(format!("status: unknown status {other:?}")),
    })
}

fn legacy_result(task_type: TaskType, result: Option<&Value>) -> Result<TaskResult, String> {
    let get_u = |k: &str| {
        result
            .and_then(|r| r.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    match task_type {
        TaskType::Quantum => {
            let best_position: Vec<f64> = result
                .and_then(|r| r.get("best_position").or_else(|| r.get("bestPosition")))
                .map(|v| {
                    serde_json::from_value(v.clone())
                        .map_err(|e| format!("result.best_position: {e}"))
                })
                .transpose()?
                .unwrap_or_default();
            let best_cost = result
                .and_then(|r| r.get("best_cost").or_else(|| r.get("bestCost")))
                .and_then(Value::as_f64)
                .ok_or("result.best_cost: missing for a completed optimization")?;
            Ok(TaskResult::Optimization {
                best_position,
                best_cost,
                iterations: get_u("iterations"),
                evaluations: get_u("evaluations"),
                elapsed_ms: get_u("elapsed_ms"),
            })
        }
        _ => Ok(TaskResult::Batch {
            total: get_u("total"),
            done: get_u("done"),
            failed: get_u("failed"),
            elapsed_ms: get_u("elapsed_ms"),
        }),
    }
}

/// The id a FlowMind legacy id keeps (they are all UUIDs).
pub fn id_of(kind: &str, legacy: &str) -> Uuid {
    mapped_id("flowmind", kind, legacy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_sensor_kinds_of_the_legacy_schema_map() {
        assert_eq!(role_of(Some("admin")), Role::Admin);
        assert_eq!(role_of(Some("viewer")), Role::Viewer);
        assert_eq!(role_of(None), Role::Member);
        assert_eq!(sensor_kind("Electricity"), Some(SensorKind::Electricity));
        assert_eq!(sensor_kind("steam"), None);
    }

    #[test]
    fn a_completed_optimization_keeps_its_result_and_one_without_a_cost_is_refused() {
        let r =
            serde_json::json!({"best_position": [0.5, 1.0], "best_cost": 0.25, "iterations": 10});
        match legacy_result(TaskType::Quantum, Some(&r)).unwrap() {
            TaskResult::Optimization {
                best_cost,
                iterations,
                ..
            } => {
                assert_eq!(best_cost, 0.25);
                assert_eq!(iterations, 10);
            }
            other => panic!("{other:?}"),
        }
        assert!(legacy_result(TaskType::Quantum, Some(&serde_json::json!({}))).is_err());
    }
}

/// The size of a generated FlowMind database ([`generate`]).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub organizations: u32,
    pub users: u32,
    pub buildings: u32,
    pub sensors_per_building: u32,
    pub readings: u32,
    pub sessions: u32,
    pub messages: u32,
    pub tasks: u32,
}

impl Scale {
    /// The benchmark's size: 10,000 users, 1,000,000 readings, 20,000 chats with 200,000
    /// messages and 5,000 swarm tasks.
    pub const BENCH: Scale = Scale {
        organizations: 100,
        users: 10_000,
        buildings: 1_000,
        sensors_per_building: 4,
        readings: 1_000_000,
        sessions: 20_000,
        messages: 200_000,
        tasks: 5_000,
    };
}

/// Fills an empty database of the FlowMind legacy shape with generated rows, server-side
/// (for the benchmark and the tests that need volume). Every user's password is `password`.
pub async fn generate(pool: &PgPool, scale: Scale, password: &str) -> anyhow::Result<()> {
    let hash = bcrypt::hash(password, 4)?;
    let s = scale;
    let statements = [
        format!(
            "INSERT INTO organizations (id, name, features, created_at) \
             SELECT md5('org' || i)::uuid, 'Organization ' || i, \
                    '{{\"citypulse\": true, \"flowmind\": true, \"quantum\": true}}', \
                    '2024-01-01'::timestamptz + i * interval '1 minute' \
             FROM generate_series(1, {}) i",
            s.organizations
        ),
        format!(
            "INSERT INTO auth.users (id, email, encrypted_password, raw_user_meta_data, created_at) \
             SELECT md5('user' || i)::uuid, 'user' || i || '@example.org', $1, \
                    jsonb_build_object('full_name', 'User ' || i), \
                    '2024-01-01'::timestamptz + i * interval '1 second' \
             FROM generate_series(1, {}) i",
            s.users
        ),
        format!(
            "INSERT INTO user_profiles (id, organization_id, role, created_at) \
             SELECT md5('user' || i)::uuid, md5('org' || (1 + i % {orgs}))::uuid, \
                    CASE WHEN i <= {orgs} THEN 'admin' ELSE 'member' END, \
                    '2024-01-01'::timestamptz + i * interval '1 second' \
             FROM generate_series(1, {users}) i",
            orgs = s.organizations,
            users = s.users
        ),
        format!(
            "INSERT INTO buildings (id, user_id, name, address, floor_area, created_at) \
             SELECT md5('building' || i)::uuid, md5('user' || (1 + i % {})::text)::uuid, \
                    'Building ' || i, 'Street ' || i, 100 + i, '2024-01-01' \
             FROM generate_series(1, {}) i",
            s.organizations.max(1),
            s.buildings
        ),
        format!(
            "INSERT INTO sensors (id, building_id, name, type, unit, status) \
             SELECT md5('sensor' || b || '/' || k)::uuid, md5('building' || b)::uuid, \
                    'Meter ' || k, 'electricity', 'kWh', 'active' \
             FROM generate_series(1, {}) b, generate_series(1, {}) k",
            s.buildings, s.sensors_per_building
        ),
        format!(
            "INSERT INTO energy_readings (sensor_id, \"timestamp\", value) \
             SELECT md5('sensor' || (1 + i % {b}) || '/' || (1 + (i / {b}) % {k}))::uuid, \
                    '2025-01-01'::timestamptz + (i / ({b} * {k})) * interval '15 minutes', \
                    (i % 1000) / 10.0 \
             FROM generate_series(0, {} - 1) i",
            s.readings,
            b = s.buildings,
            k = s.sensors_per_building
        ),
        format!(
            "INSERT INTO old_chat_sessions (id, user_id, title, model_id, created_at) \
             SELECT md5('session' || i)::uuid, md5('user' || (1 + i % {}))::uuid, \
                    'Chat ' || i, 'gpt-4o-mini', '2024-06-01'::timestamptz + i * interval '1 second' \
             FROM generate_series(1, {}) i",
            s.users, s.sessions
        ),
        format!(
            "INSERT INTO old_chat_messages (id, session_id, role, content, created_at) \
             SELECT md5('message' || i)::uuid, md5('session' || (1 + i % {sessions}))::uuid, \
                    CASE WHEN (i / {sessions}) % 2 = 0 THEN 'user' ELSE 'assistant' END, \
                    'Message ' || i || ' about energy use in the building', \
                    '2024-06-01'::timestamptz + (i / {sessions}) * interval '1 minute' \
             FROM generate_series(0, {} - 1) i",
            s.messages,
            sessions = s.sessions.max(1)
        ),
        format!(
            "INSERT INTO old_swarm_tasks (id, user_id, type, objective, config, status, result, created_at) \
             SELECT md5('task' || i)::uuid, md5('user' || (1 + i % {}))::uuid, 'quantum', 'sphere', \
                    '{{\"dimensions\": 2, \"particles\": 20, \"iterations\": 50}}', \
                    CASE WHEN i % 10 = 0 THEN 'running' ELSE 'completed' END, \
                    '{{\"best_position\": [0.0, 0.0], \"best_cost\": 0.001, \"iterations\": 50}}', \
                    '2024-07-01'::timestamptz + i * interval '1 minute' \
             FROM generate_series(1, {}) i",
            s.users, s.tasks
        ),
    ];
    for (i, sql) in statements.iter().enumerate() {
        let q = sqlx::query(sql);
        let q = if i == 1 { q.bind(&hash) } else { q };
        q.execute(pool).await?;
    }
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}
