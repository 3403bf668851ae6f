//! Time travel is exact for every entity kind: the state the history fold builds for an
//! entity at version N (`history::state::state_at`, the table of kinds) equals the state of
//! a second entity of the same kind that received only the commands that led to version N,
//! as its own actor holds it. Runs against a real PostgreSQL, with the actor runtime's
//! snapshots and the history snapshots in play, and once more without any snapshot.

mod common;

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use universal_backend::actors::runtime::{stream_name, Entity};
use universal_backend::actors::{CommandMeta, Registry, RuntimeConfig};
use universal_backend::history::state::{state_at, FoldOptions, Point};
use universal_backend::history::views;
use universal_backend::store::{EventStore, PgEventStore, PgStoreConfig};
use universal_events::identity::{Frontend, Role};
use uuid::Uuid;

const ORG: Uuid = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001);
const USER: Uuid = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0002);
const OTHER: Uuid = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0003);
const THING: Uuid = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0004);
const ANOTHER: Uuid = Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0005);

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 9, minute, 0).unwrap()
}

fn meta() -> CommandMeta {
    CommandMeta {
        organization_id: Some(ORG),
        user_id: Some(USER),
        ..CommandMeta::new()
    }
}

/// Runs `commands(id)` on entity A, then for each N the first N commands on a fresh entity,
/// and holds the fold of A at the version after its Nth command against that entity.
async fn check<E: Entity + Sync>(
    store: &Arc<dyn EventStore>,
    pool: &sqlx::PgPool,
    commands: impl Fn(Uuid) -> Vec<E::Command>,
    view: fn(&E) -> Value,
) where
    E::Error: std::fmt::Debug,
{
    // Snapshots every 2 events: folds start from them whenever they can.
    let registry = Registry::<E>::new(
        store.clone(),
        RuntimeConfig {
            snapshot_every: 2,
            ..RuntimeConfig::default()
        },
    );
    let a = Uuid::now_v7();
    let mut versions = Vec::new();
    for cmd in commands(a) {
        let reply = registry
            .execute(a, cmd, None, meta())
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", E::CATEGORY));
        versions.push(reply.version);
    }
    assert!(versions.len() >= 3, "{}: a few commands", E::CATEGORY);
    let stream = stream_name::<E>(a);
    for (n, version) in versions.iter().enumerate() {
        let b = Uuid::now_v7();
        for cmd in commands(b).into_iter().take(n + 1) {
            registry.execute(b, cmd, None, meta()).await.unwrap();
        }
        let (_, state) = registry.inspect(b).await.unwrap();
        let expected: Value = serde_json::from_str(
            &serde_json::to_string(&view(&state))
                .unwrap()
                .replace(&b.to_string(), &a.to_string()),
        )
        .unwrap();
        for options in [
            FoldOptions {
                use_snapshots: true,
                snapshot_every: 2,
            },
            FoldOptions {
                use_snapshots: false,
                snapshot_every: 0,
            },
        ] {
            let folded = state_at(pool, &stream, Point::Version(*version), options)
                .await
                .unwrap();
            assert_eq!(folded.version, *version);
            assert_eq!(
                folded.state,
                expected,
                "{} after {} commands (version {version})",
                E::CATEGORY,
                n + 1
            );
        }
    }
}

#[actix_web::test]
async fn the_state_at_version_n_equals_an_entity_that_received_only_the_first_n_commands() {
    use universal_backend::actors::*;
    let (pool, _) = common::fresh_pool().await;
    let store: Arc<dyn EventStore> = PgEventStore::start(pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();

    // Buildings: registration, a sensor, a threshold, readings (one raises an alert).
    check::<building::Building>(
        &store,
        &pool,
        |id| {
            use building::{BuildingCommand as C, ReadingInput, ScopedCommand};
            use universal_events::building::SensorKind;
            let scoped = |cmd| ScopedCommand {
                organization_id: Some(ORG),
                cmd,
            };
            vec![
                scoped(C::Register {
                    name: "Town Hall".into(),
                    address: Some("1 Main Street".into()),
                    floor_area_m2: Some(1200.0),
                    at: at(0),
                    building_id: id,
                }),
                scoped(C::RegisterSensor {
                    sensor_id: THING,
                    kind: SensorKind::Electricity,
                    unit: "kWh".into(),
                    name: Some("Main meter".into()),
                }),
                scoped(C::SetThreshold {
                    kind: SensorKind::Electricity,
                    min: None,
                    max: Some(10.0),
                }),
                scoped(C::RecordReadings {
                    command_id: Uuid::new_v5(&id, b"r1"),
                    received_at: at(2),
                    readings: vec![ReadingInput {
                        sensor_id: THING,
                        value: 42.0,
                        measured_at: at(1),
                    }],
                }),
                scoped(C::DecommissionSensor {
                    sensor_id: THING,
                    reason: Some("replaced".into()),
                }),
            ]
        },
        views::building,
    )
    .await;

    check::<user::User>(
        &store,
        &pool,
        |id| {
            use user::UserCommand as C;
            vec![
                C::Register {
                    user_id: id,
                    email: "ada@example.org".into(),
                    display_name: "Ada".into(),
                    password_hash: "$argon2id$stand-in".into(),
                    at: at(0),
                },
                C::UpdateProfile {
                    display_name: "Ada L.".into(),
                },
                C::AssignRole { role: Role::Admin },
                C::Deactivate { at: at(5) },
            ]
        },
        views::user,
    )
    .await;

    check::<organization::Organization>(
        &store,
        &pool,
        |id| {
            use organization::{OrgAction as A, OrgCommand};
            let by = |action| OrgCommand {
                actor: USER,
                action,
            };
            vec![
                by(A::Create {
                    organization_id: id,
                    name: "Acme".into(),
                    at: at(0),
                }),
                by(A::Rename {
                    name: "Acme Energy".into(),
                }),
                by(A::SetMember {
                    user_id: OTHER,
                    role: Role::Viewer,
                }),
                by(A::SetFrontend {
                    frontend: Frontend::Fluxstudio,
                    enabled: true,
                }),
                by(A::RemoveMember { user_id: OTHER }),
            ]
        },
        views::organization,
    )
    .await;

    check::<team::Team>(
        &store,
        &pool,
        |id| {
            use team::{TeamAction as A, TeamCommand};
            use universal_events::team::TeamRole;
            let scoped = |action| TeamCommand {
                organization_id: ORG,
                action,
            };
            vec![
                scoped(A::Create {
                    team_id: id,
                    name: "Design".into(),
                    description: None,
                    created_by: USER,
                    at: at(0),
                }),
                scoped(A::Update {
                    name: Some("Design team".into()),
                    description: Some(Some("Shapes".into())),
                }),
                scoped(A::AddMember {
                    user_id: OTHER,
                    role: TeamRole::Member,
                }),
                scoped(A::ChangeRole {
                    user_id: OTHER,
                    role: TeamRole::Lead,
                }),
                scoped(A::Archive { at: at(9) }),
            ]
        },
        views::team,
    )
    .await;

    check::<project::Project>(
        &store,
        &pool,
        |id| {
            use project::{ProjectAction as A, ProjectCommand};
            use universal_events::project::ProjectStatus;
            let scoped = |action| ProjectCommand {
                organization_id: ORG,
                action,
            };
            vec![
                scoped(A::Create {
                    project_id: id,
                    name: "Launch".into(),
                    description: None,
                    team_id: None,
                    status: ProjectStatus::Planning,
                    created_by: USER,
                    at: at(0),
                }),
                scoped(A::SetStatus {
                    status: ProjectStatus::Active,
                }),
                scoped(A::AddMember { user_id: OTHER }),
                scoped(A::AddMilestone {
                    milestone_id: THING,
                    title: "Beta".into(),
                    due_date: None,
                }),
                scoped(A::CompleteMilestone {
                    milestone_id: THING,
                    at: at(7),
                }),
            ]
        },
        views::project,
    )
    .await;

    check::<flag::Flag>(
        &store,
        &pool,
        |_| {
            use flag::FlagCommand as C;
            use universal_events::flag::FlagMode;
            let set = |mode, minute| C::Set {
                route: "/api/getAnalysis".into(),
                mode,
                user_id: USER,
                reason: Some("trying".into()),
                at: at(minute),
            };
            vec![
                set(FlagMode::Compare, 0),
                set(FlagMode::New, 1),
                C::Rollback {
                    route: "/api/getAnalysis".into(),
                    measured_in: FlagMode::New,
                    error_rate: 0.5,
                    requests: 40,
                    reason: "errors".into(),
                    at: at(2),
                },
            ]
        },
        views::flag,
    )
    .await;

    check::<conversation::Conversation>(
        &store,
        &pool,
        |id| {
            use conversation::{ConversationCommand as C, ScopedCommand};
            let scoped = |cmd| ScopedCommand {
                organization_id: ORG,
                owner: Some(USER),
                cmd,
            };
            vec![
                scoped(C::Create {
                    session_id: id,
                    user_id: USER,
                    title: "New chat".into(),
                    model_id: "local-echo".into(),
                    system_prompt: None,
                    at: at(0),
                }),
                scoped(C::Rename {
                    title: "Fractions".into(),
                }),
                scoped(C::PostMessage {
                    message_id: THING,
                    reply_id: ANOTHER,
                    content: "What is a half?".into(),
                    provider: "local".into(),
                    at: at(1),
                }),
                scoped(C::AppendDelta {
                    reply_id: ANOTHER,
                    offset: 0,
                    text: "One of two".into(),
                }),
                scoped(C::CompleteReply {
                    reply_id: ANOTHER,
                    finish_reason: "stop".into(),
                    prompt_tokens: 5,
                    completion_tokens: 3,
                    estimated: false,
                    at: at(2),
                }),
                scoped(C::Archive { at: at(3) }),
            ]
        },
        views::conversation,
    )
    .await;

    check::<channel::Channel>(
        &store,
        &pool,
        |id| {
            use channel::{Caller, ChannelCommand as C, ScopedCommand};
            use universal_events::messaging::ChannelKind;
            let scoped = |cmd| ScopedCommand {
                by: Caller {
                    organization_id: ORG,
                    user_id: USER,
                    role: Role::Admin,
                },
                cmd,
            };
            vec![
                scoped(C::Create {
                    channel_id: id,
                    kind: ChannelKind::Public,
                    name: Some("general".into()),
                    topic: None,
                    members: vec![],
                    at: at(0),
                }),
                scoped(C::Update {
                    name: None,
                    topic: Some("Everything".into()),
                }),
                scoped(C::Post {
                    message_id: THING,
                    text: "Hello".into(),
                    parent_id: None,
                    mentions: vec![],
                    attachments: vec![],
                    client_message_id: None,
                    at: at(1),
                }),
                scoped(C::React {
                    message_id: THING,
                    emoji: "👍".into(),
                    add: true,
                }),
                scoped(C::Delete {
                    message_id: THING,
                    at: at(2),
                }),
            ]
        },
        views::channel,
    )
    .await;

    check::<channel::Inbox>(
        &store,
        &pool,
        |_| {
            use channel::InboxCommand as C;
            vec![
                C::ReadAll {
                    up_to: 5,
                    at: at(0),
                },
                C::Read {
                    notification_ids: vec![THING],
                    at: at(1),
                },
                C::ReadAll {
                    up_to: 9,
                    at: at(2),
                },
            ]
        },
        views::inbox,
    )
    .await;

    check::<swarm_task::SwarmTask>(
        &store,
        &pool,
        |id| {
            use swarm_task::{ScopedCommand, SwarmCommand as C};
            use universal_events::swarm::{QuantumConfig, TaskConfig, TaskType};
            let scoped = |cmd| ScopedCommand {
                organization_id: ORG,
                cmd,
            };
            vec![
                scoped(C::Create {
                    task_id: id,
                    user_id: USER,
                    task_type: TaskType::Quantum,
                    objective: "rastrigin".into(),
                    config: TaskConfig::Quantum(QuantumConfig {
                        dimensions: 2,
                        bounds: vec![[-5.12, 5.12]; 2],
                        particles: 20,
                        iterations: 100,
                        inertia: 0.72,
                        cognitive: 1.19,
                        social: 1.19,
                        seed: 42,
                    }),
                    at: at(0),
                }),
                scoped(C::Start {
                    attempt: 1,
                    at: at(1),
                }),
                scoped(C::RecordProgress {
                    attempt: 1,
                    iteration: 10,
                    best_cost: 1.5,
                    best_position: vec![0.5, -0.25],
                    evaluations: 200,
                    at: at(2),
                }),
                scoped(C::Cancel { at: at(3) }),
            ]
        },
        views::swarm_task,
    )
    .await;

    store.shutdown().await;
}
