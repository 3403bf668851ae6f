//! The actor runtime against a real store: passivation, snapshots, and conflicts between
//! two registries standing in for two server processes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use universal_backend::actors::building::{Building, BuildingCommand, ScopedCommand};
use universal_backend::actors::{CommandError, CommandMeta, Registry, RuntimeConfig};
use universal_backend::store::{EventStore, PgEventStore, PgStoreConfig};
use universal_events::building::SensorKind;
use uuid::Uuid;

async fn store() -> Arc<dyn EventStore> {
    let (pool, _) = common::fresh_pool().await;
    PgEventStore::start(pool, PgStoreConfig::default())
        .await
        .unwrap()
}

fn scoped(cmd: BuildingCommand) -> ScopedCommand {
    ScopedCommand {
        organization_id: None,
        cmd,
    }
}

fn register(id: Uuid) -> ScopedCommand {
    scoped(BuildingCommand::Register {
        name: "Depot".into(),
        address: None,
        floor_area_m2: None,
        at: Utc::now(),
        building_id: id,
    })
}

fn threshold(max: f64) -> ScopedCommand {
    scoped(BuildingCommand::SetThreshold {
        kind: SensorKind::Gas,
        min: None,
        max: Some(max),
    })
}

#[actix_web::test]
async fn an_idle_actor_passivates_and_a_later_command_finds_its_state_again() {
    let store = store().await;
    let registry: Registry<Building> = Registry::new(
        store.clone(),
        RuntimeConfig {
            idle_timeout: Duration::from_millis(100),
            snapshot_every: 0,
        },
    );
    let id = Uuid::new_v4();
    registry
        .execute(id, register(id), None, CommandMeta::new())
        .await
        .unwrap();
    assert_eq!(registry.live(), 1);
    for _ in 0..50 {
        if registry.live() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(registry.live(), 0, "the idle actor left the registry");
    let reply = registry
        .execute(id, threshold(5.0), None, CommandMeta::new())
        .await
        .unwrap();
    assert_eq!(reply.version, 2, "the new actor loaded the first event");
    // Registering again is refused: the reloaded state knows the building.
    assert!(matches!(
        registry
            .execute(id, register(id), None, CommandMeta::new())
            .await,
        Err(CommandError::Domain(_))
    ));
}

#[actix_web::test]
async fn commands_racing_passivation_are_neither_lost_nor_doubled() {
    let store = store().await;
    let registry: Arc<Registry<Building>> = Arc::new(Registry::new(
        store.clone(),
        RuntimeConfig {
            idle_timeout: Duration::from_millis(5),
            snapshot_every: 0,
        },
    ));
    let id = Uuid::new_v4();
    registry
        .execute(id, register(id), None, CommandMeta::new())
        .await
        .unwrap();
    for n in 0..60 {
        // Pauses around the idle timeout make stops and new messages cross.
        tokio::time::sleep(Duration::from_millis(n % 9)).await;
        registry
            .execute(id, threshold(n as f64 + 1.0), None, CommandMeta::new())
            .await
            .unwrap();
    }
    let events = store
        .read_stream(
            &format!("building-{id}"),
            1,
            universal_backend::store::Direction::Forward,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 61);
}

#[actix_web::test]
async fn a_stale_actor_reloads_and_retries_once_after_a_conflict() {
    let store = store().await;
    let config = RuntimeConfig::default();
    let node_a: Registry<Building> = Registry::new(store.clone(), config.clone());
    let node_b: Registry<Building> = Registry::new(store.clone(), config);
    let id = Uuid::new_v4();
    node_a
        .execute(id, register(id), None, CommandMeta::new())
        .await
        .unwrap();
    // Node B loads the building at version 1.
    node_b
        .execute(id, threshold(1.0), None, CommandMeta::new())
        .await
        .unwrap();
    // Node A still believes version 1; its append conflicts, it reloads and succeeds.
    let reply = node_a
        .execute(id, threshold(2.0), None, CommandMeta::new())
        .await
        .unwrap();
    assert_eq!(reply.version, 3);
    // An explicit expected version that is stale is a conflict even after reloading.
    match node_b
        .execute(id, threshold(3.0), Some(2), CommandMeta::new())
        .await
    {
        Err(CommandError::Conflict { expected, actual }) => assert_eq!((expected, actual), (2, 3)),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[actix_web::test]
async fn snapshots_are_taken_every_n_events_and_used_on_load() {
    let (pool, _) = common::fresh_pool().await;
    let store: Arc<dyn EventStore> = PgEventStore::start(pool.clone(), PgStoreConfig::default())
        .await
        .unwrap();
    let config = RuntimeConfig {
        idle_timeout: Duration::from_secs(60),
        snapshot_every: 4,
    };
    let registry: Registry<Building> = Registry::new(store.clone(), config.clone());
    let id = Uuid::new_v4();
    registry
        .execute(id, register(id), None, CommandMeta::new())
        .await
        .unwrap();
    for n in 0..9 {
        registry
            .execute(id, threshold(n as f64 + 1.0), None, CommandMeta::new())
            .await
            .unwrap();
    }
    let mut version = 0i64;
    for _ in 0..100 {
        version = sqlx::query_scalar("SELECT version FROM snapshots WHERE stream_id = $1")
            .bind(format!("building-{id}"))
            .fetch_optional(&pool)
            .await
            .unwrap()
            .unwrap_or(0);
        if version == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version, 8, "snapshots at versions 4 and 8, the newest kept");

    // A new process loads snapshot + tail and continues at the right version.
    let other: Registry<Building> = Registry::new(store, config);
    let reply = other
        .execute(id, threshold(100.0), None, CommandMeta::new())
        .await
        .unwrap();
    assert_eq!(reply.version, 11);
    let setting_same_again = other
        .execute(id, threshold(100.0), None, CommandMeta::new())
        .await
        .unwrap();
    assert_eq!(
        setting_same_again.version, 11,
        "the loaded state knows the threshold"
    );
}

#[actix_web::test]
async fn a_registry_starts_actors_for_tasks_spawned_outside_the_actix_system_and_on_other_threads()
{
    let store = store().await;
    let registry: Arc<Registry<Building>> =
        Arc::new(Registry::new(store.clone(), RuntimeConfig::default()));
    // A task of the tokio runtime, outside the actix system's local set: `Actor::start`
    // would panic there ("spawn_local called from outside of a task::LocalSet").
    let id = Uuid::new_v4();
    let from_task = {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry
                .execute(id, register(id), None, CommandMeta::new())
                .await
                .map(|r| r.version)
        })
    };
    assert_eq!(from_task.await.unwrap().unwrap(), 1);
    // A thread with a runtime of its own and no arbiter: the registry's home arbiter runs it.
    let other = Uuid::new_v4();
    let from_thread = {
        let registry = registry.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    registry
                        .execute(other, register(other), None, CommandMeta::new())
                        .await
                        .map(|r| r.version)
                })
        })
    };
    let version = loop {
        if from_thread.is_finished() {
            break from_thread.join().unwrap().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(version, 1);
    let (version, state) = registry.inspect(other).await.unwrap();
    assert_eq!((version, state.name.as_str()), (1, "Depot"));
}
