//! The actor runtime: one actix actor per entity instance, generic over the entity kind.
//!
//! An [`Entity`] is a pure decider (`decide` + `evolve`) with a stream category. The runtime
//! gives it a home:
//!
//! - a [`Registry`] spawns the actor of an id on first use and hands out its address;
//! - the actor loads its latest snapshot plus the tail of its stream the first time it is
//!   asked to do something;
//! - commands run one at a time (`AtomicResponse`): decide, append with the version the actor
//!   knows as the expected version, evolve;
//! - several processes may hold an actor for the same entity, so an actor's copy can be
//!   stale. It never answers from a stale copy: an append from it fails its expected
//!   version, and the actor reads the stream's tail and decides again; a rejection
//!   (`unknown_sensor`, an unknown session) is answered only after the tail has been read
//!   and the command decided again if anything was new; a read ([`Inspect`]) reads the tail
//!   first. Catching up on demand was chosen over invalidating actors from the live feed:
//!   it is exact (no window between another process's commit and the feed's delivery),
//!   needs no feed, and costs one indexed query only on rejections and reads, never on the
//!   accepted-command hot path;
//! - a command whose id comes from an idempotency key first looks for its own events in the
//!   log (their ids follow from the command id) and, when they are there, answers with
//!   them instead of deciding again;
//! - every `snapshot_every` events it saves a snapshot, off the mailbox;
//! - after `idle_timeout` without messages it removes itself from the registry, only if the
//!   registry still points at it, and stops. A sender that raced the stop gets a closed
//!   mailbox and the registry retries with a fresh actor, which loads everything the old one
//!   wrote: a command is never lost and never runs twice.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use serde::{de::DeserializeOwned, Serialize};
use universal_events::EventFamily;
use uuid::Uuid;

use crate::store::{
    AppendError, Direction, EncodedEvent, EventStore, ExpectedVersion, RecordedEvent, Snapshot,
    StoreError,
};

/// An entity kind: its stream category, state, commands, events and rules.
pub trait Entity: Default + Clone + Send + Serialize + DeserializeOwned + Unpin + 'static {
    type Command: Clone + Send + 'static;
    type Event: EventFamily;
    type Error: std::error::Error + Send + 'static;

    /// The stream category; streams are named `<CATEGORY>-<id>`.
    const CATEGORY: &'static str;
    /// Bumped whenever the serialized state changes shape: older snapshots are then ignored.
    const SNAPSHOT_VERSION: i32 = 1;

    /// The business rules: which events `cmd` produces in this state, or why it is refused.
    /// Pure: no I/O, no clock, no randomness (commands carry times and ids).
    fn decide(&self, cmd: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Never fails: events are facts.
    fn evolve(&mut self, event: &Self::Event);
}

/// The stream of an entity instance.
pub fn stream_name<E: Entity>(id: Uuid) -> String {
    format!("{}-{}", E::CATEGORY, id)
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// An actor that received no message for this long passivates.
    pub idle_timeout: Duration,
    /// A snapshot is saved each time the stream version crosses a multiple of this.
    pub snapshot_every: i64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            snapshot_every: 100,
        }
    }
}

/// Who sent a command and why; copied into the metadata of every event it produces.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandMeta {
    /// Identifies the command; event ids are derived from it, so a resent command with the
    /// same id produces the same event ids and the store writes it only once.
    pub command_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The tenant the command acts for; the history API filters on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// The command id comes from a client's idempotency key, so the command may have been
    /// stored before (a retry after a lost answer): before deciding, the actor looks for
    /// its events in the log and, when they are there, answers with them.
    #[serde(skip)]
    pub replayable: bool,
}

impl CommandMeta {
    pub fn new() -> Self {
        Self {
            command_id: Uuid::now_v7(),
            ..Self::default()
        }
    }
}

/// What a successful command returns.
#[derive(Debug, Clone)]
pub struct CommandReply<E: Entity> {
    /// The stream version after the command.
    pub version: i64,
    /// The global position of the last event of the stream (for `min_position` reads).
    pub position: i64,
    /// The events this command produced (empty when it changed nothing); for a command
    /// that was stored before, the stored events.
    pub events: Vec<E::Event>,
    /// The command had been stored before: this answer was read back from the log.
    pub replayed: bool,
}

/// Why a command did not produce events.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<D: std::error::Error> {
    #[error(transparent)]
    Domain(D),
    #[error("the entity is at version {actual}, not {expected}")]
    Conflict { expected: i64, actual: i64 },
    #[error("event store unavailable: {0}")]
    Store(String),
    #[error("the entity could not be reached")]
    Unavailable,
    /// Other writers kept winning the race for the stream until the runtime's deadline
    /// ([`CONTENTION_DEADLINE`]); nothing was written and the command may be retried.
    #[error("the entity is too busy: {attempts} appends were beaten by other writers")]
    Contended { attempts: u32 },
    /// The events cannot be stored as they are (the store's own limits); nothing was written.
    #[error("the command's events cannot be stored: {0}")]
    Invalid(String),
}

/// Runs one command on an entity actor.
pub struct Execute<E: Entity> {
    pub cmd: E::Command,
    /// `If-Match`: the version the caller believes the entity is at.
    pub expected: Option<i64>,
    pub meta: CommandMeta,
}

impl<E: Entity> Message for Execute<E> {
    type Result = Result<CommandReply<E>, CommandError<E::Error>>;
}

/// Reads the entity's current state (loading it if needed), between commands.
pub struct Inspect<E: Entity>(PhantomData<fn() -> E>);

impl<E: Entity> Message for Inspect<E> {
    type Result = Result<(i64, E), CommandError<E::Error>>;
}

/// What an actor knows about its entity.
struct Current<E: Entity> {
    state: E,
    version: i64,
    position: i64,
    loaded: bool,
}

impl<E: Entity> Default for Current<E> {
    fn default() -> Self {
        Self {
            state: E::default(),
            version: 0,
            position: 0,
            loaded: false,
        }
    }
}

struct Slot<E: Entity> {
    addr: Addr<EntityActor<E>>,
    generation: u64,
}

type Slots<E> = Arc<DashMap<Uuid, Slot<E>>>;

/// The actor of one entity instance.
pub struct EntityActor<E: Entity> {
    id: Uuid,
    stream: String,
    current: Current<E>,
    store: Arc<dyn EventStore>,
    slots: Slots<E>,
    generation: u64,
    config: RuntimeConfig,
    last_active: Instant,
}

impl<E: Entity> Actor for EntityActor<E> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("ub_live_actors", "kind" => E::CATEGORY).increment(1.0);
        let tick = (self.config.idle_timeout / 4).max(Duration::from_millis(10));
        ctx.run_interval(tick, |act, ctx| {
            if act.last_active.elapsed() >= act.config.idle_timeout {
                let generation = act.generation;
                act.slots
                    .remove_if(&act.id, |_, slot| slot.generation == generation);
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let generation = self.generation;
        self.slots
            .remove_if(&self.id, |_, slot| slot.generation == generation);
        metrics::gauge!("ub_live_actors", "kind" => E::CATEGORY).decrement(1.0);
    }
}

impl<E: Entity> Handler<Execute<E>> for EntityActor<E> {
    type Result = AtomicResponse<Self, Result<CommandReply<E>, CommandError<E::Error>>>;

    fn handle(&mut self, msg: Execute<E>, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let current = std::mem::take(&mut self.current);
        let work = run_command(
            self.store.clone(),
            self.stream.clone(),
            current,
            msg,
            self.config.snapshot_every,
        );
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(current, result), act, ctx| {
                act.current = current;
                act.last_active = Instant::now();
                if act.current.loaded && act.current.version == 0 {
                    // No such entity: do not keep an actor around for every id someone tried.
                    let generation = act.generation;
                    act.slots
                        .remove_if(&act.id, |_, slot| slot.generation == generation);
                    ctx.stop();
                }
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(CommandError::Domain(_)) => "rejected",
                    Err(CommandError::Conflict { .. }) => "conflict",
                    Err(_) => "error",
                };
                metrics::counter!("ub_commands_total", "kind" => E::CATEGORY, "outcome" => outcome)
                    .increment(1);
                result
            },
        )))
    }
}

impl<E: Entity> Handler<Inspect<E>> for EntityActor<E> {
    type Result = AtomicResponse<Self, Result<(i64, E), CommandError<E::Error>>>;

    fn handle(&mut self, _msg: Inspect<E>, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let current = std::mem::take(&mut self.current);
        let store = self.store.clone();
        let stream = self.stream.clone();
        let work = async move {
            // Another process may have written since this actor last looked: a read never
            // answers from a stale copy, so the tail is read first (one indexed query).
            let current = match refresh::<E>(store.as_ref(), &stream, current).await {
                Ok(c) => c,
                Err(e) => return (Current::default(), Err(CommandError::Store(e.to_string()))),
            };
            let seen = (current.version, current.state.clone());
            (current, Ok(seen))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(current, result), act, _ctx| {
                act.current = current;
                result
            },
        )))
    }
}

/// The state and version of entity `id`, folded from its snapshot and log (for tools that
/// work beside the actors, such as the legacy import).
pub async fn state_of<E: Entity>(store: &dyn EventStore, id: Uuid) -> Result<(i64, E), StoreError> {
    let current = load::<E>(store, &stream_name::<E>(id)).await?;
    Ok((current.version, current.state))
}

/// Loads snapshot + tail of a stream into a fresh state.
async fn load<E: Entity>(store: &dyn EventStore, stream: &str) -> Result<Current<E>, StoreError> {
    let mut current = Current::<E>::default();
    if let Some(snap) = store.load_snapshot(stream).await? {
        if snap.schema_version == E::SNAPSHOT_VERSION {
            match serde_json::from_value::<E>(snap.state) {
                Ok(state) => {
                    current.state = state;
                    current.version = snap.version;
                }
                Err(e) => tracing::warn!(stream, error = %e, "ignoring unreadable snapshot"),
            }
        }
    }
    catch_up(store, stream, &mut current).await?;
    if current.position == 0 && current.version > 0 {
        // Everything came from the snapshot: look up the position of its last event.
        if let Some(last) = store
            .read_stream(stream, current.version, Direction::Backward, 1)
            .await?
            .first()
        {
            current.position = last.position;
        }
    }
    current.loaded = true;
    Ok(current)
}

/// Folds the events written after `current.version` into it; returns how many there were.
async fn catch_up<E: Entity>(
    store: &dyn EventStore,
    stream: &str,
    current: &mut Current<E>,
) -> Result<usize, StoreError> {
    const PAGE: i64 = 1000;
    let mut seen = 0;
    loop {
        let page = store
            .read_stream(stream, current.version + 1, Direction::Forward, PAGE)
            .await?;
        for recorded in &page {
            let event = decode::<E>(stream, recorded)?;
            current.state.evolve(&event);
            current.version = recorded.version;
            current.position = recorded.position;
        }
        seen += page.len();
        if (page.len() as i64) < PAGE {
            return Ok(seen);
        }
    }
}

/// The state brought up to date with the log: loaded if it never was, else its tail read.
async fn refresh<E: Entity>(
    store: &dyn EventStore,
    stream: &str,
    mut current: Current<E>,
) -> Result<Current<E>, StoreError> {
    if current.loaded {
        catch_up(store, stream, &mut current).await?;
        Ok(current)
    } else {
        load(store, stream).await
    }
}

fn decode<E: Entity>(stream: &str, recorded: &RecordedEvent) -> Result<E::Event, StoreError> {
    E::Event::decode_ref(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    )
    .map_err(|e| StoreError::Other(format!("{stream}@{}: {e}", recorded.version)))
}

/// The events a command with this id stored in `stream`, if it stored any: event ids are
/// derived from the command id and their index, so the first id finds the first event and
/// the following ones continue the stream.
async fn stored_command<E: Entity>(
    store: &dyn EventStore,
    stream: &str,
    command_id: Uuid,
) -> Result<Option<CommandReply<E>>, StoreError> {
    let Some(first) = store.read_event(event_id(command_id, 0)).await? else {
        return Ok(None);
    };
    if first.stream_id != stream {
        return Ok(None);
    }
    let mut recorded = vec![first];
    loop {
        let last = recorded.last().expect("one event at least");
        let next = store
            .read_stream(stream, last.version + 1, Direction::Forward, 100)
            .await?;
        let before = recorded.len();
        for e in next {
            if e.event_id != event_id(command_id, recorded.len()) {
                break;
            }
            recorded.push(e);
        }
        if recorded.len() - before < 100 {
            break;
        }
    }
    let last = recorded.last().expect("one event at least");
    let (version, position) = (last.version, last.position);
    let events = recorded
        .iter()
        .map(|r| decode::<E>(stream, r))
        .collect::<Result<_, _>>()?;
    Ok(Some(CommandReply {
        version,
        position,
        events,
        replayed: true,
    }))
}

/// The id of a command's `index`-th event, the same every time it is derived.
///
/// A command id made here is time-ordered (version 7): its events' ids keep its first eight
/// bytes (the millisecond and the version) and take the rest from a name-based hash of the
/// command id and the index. So new ids sort after older ones, and the log's unique index on
/// event ids grows at its right edge instead of taking each insert at a random leaf. Command
/// ids derived from an idempotency key (or by an import) are not time-ordered; their events
/// keep the plain name-based id, as they always had, so a retry finds what was stored before.
pub(crate) fn event_id(command_id: Uuid, index: usize) -> Uuid {
    let hashed = Uuid::new_v5(&command_id, &(index as u64).to_be_bytes());
    if command_id.get_version_num() != 7 {
        return hashed;
    }
    let mut bytes = *command_id.as_bytes();
    bytes[8..].copy_from_slice(&hashed.as_bytes()[8..]);
    // The RFC 9562 variant, as in every id this service makes.
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// A command's events as the store takes them: payloads written straight from the typed
/// events, and the command's metadata written once for all of them.
fn to_new_events<E: Entity>(events: &[E::Event], meta: &CommandMeta) -> Vec<EncodedEvent> {
    let metadata = serde_json::to_string(meta).unwrap_or_else(|_| "null".to_owned());
    events
        .iter()
        .enumerate()
        .map(|(i, e)| EncodedEvent {
            event_id: event_id(meta.command_id, i),
            event_type: e.event_type().to_owned(),
            schema_version: E::Event::schema_version(e.event_type()),
            data: e.to_data_text(),
            metadata: metadata.clone(),
        })
        .collect()
}

/// The body of one command, run while the actor's mailbox is held.
///
/// No answer rests on a stale copy of the state, even when other processes write the same
/// stream: an append from a stale copy fails its expected version and the actor catches up
/// and decides again; a rejection is only answered after the tail of the stream has been
/// read (one indexed query, paid on rejections only) and the command decided again if
/// anything was new.
async fn run_command<E: Entity>(
    store: Arc<dyn EventStore>,
    stream: String,
    current: Current<E>,
    msg: Execute<E>,
    snapshot_every: i64,
) -> (Current<E>, Result<CommandReply<E>, CommandError<E::Error>>) {
    let store_error = |e: &dyn std::fmt::Display| {
        // The outcome is unknown (a commit may have happened): start from the log next time.
        (Current::default(), Err(CommandError::Store(e.to_string())))
    };
    let mut current = if current.loaded {
        current
    } else {
        match load::<E>(store.as_ref(), &stream).await {
            Ok(c) => c,
            Err(e) => return store_error(&e),
        }
    };
    if msg.meta.replayable {
        match stored_command::<E>(store.as_ref(), &stream, msg.meta.command_id).await {
            Ok(Some(reply)) => return (current, Ok(reply)),
            Ok(None) => {}
            Err(e) => return store_error(&e),
        }
    }
    // A pass that finds the copy stale reads the tail and goes round again. A command that
    // named no version (no `If-Match`) asked for no expectation: a conflict with another
    // process's append is this runtime's business, retried after catching up (with a
    // jittered pause once it repeats) until it succeeds or [`CONTENTION_DEADLINE`] passes.
    // Only a command that named a version may end in `Conflict`.
    let deadline = Instant::now() + CONTENTION_DEADLINE;
    let mut refreshed = false;
    let mut clashes = 0u32;
    loop {
        if let Some(expected) = msg.expected {
            if expected != current.version {
                if !refreshed {
                    refreshed = true;
                    match catch_up(store.as_ref(), &stream, &mut current).await {
                        Ok(_) => continue,
                        Err(e) => return store_error(&e),
                    }
                }
                let actual = current.version;
                return (current, Err(CommandError::Conflict { expected, actual }));
            }
        }
        let events = match current.state.decide(&msg.cmd) {
            Ok(events) => events,
            Err(e) => {
                if !refreshed {
                    refreshed = true;
                    match catch_up(store.as_ref(), &stream, &mut current).await {
                        Ok(0) => {}
                        Ok(_) => continue,
                        Err(e) => return store_error(&e),
                    }
                }
                return (current, Err(CommandError::Domain(e)));
            }
        };
        if events.is_empty() {
            let reply = CommandReply {
                version: current.version,
                position: current.position,
                events,
                replayed: false,
            };
            return (current, Ok(reply));
        }
        let new_events = to_new_events::<E>(&events, &msg.meta);
        let before = current.version;
        match store
            .append_encoded(&stream, ExpectedVersion::Exact(before), new_events)
            .await
        {
            Ok(result) if result.written => {
                for e in &events {
                    current.state.evolve(e);
                }
                current.version = result.version;
                current.position = result.position;
                if snapshot_every > 0 && result.version / snapshot_every > before / snapshot_every {
                    save_snapshot_later(store.clone(), stream.clone(), &current);
                }
                if clashes > 0 {
                    metrics::histogram!("ub_command_contention_retries", "kind" => E::CATEGORY)
                        .record(f64::from(clashes));
                }
                let reply = CommandReply {
                    version: result.version,
                    position: result.position,
                    events,
                    replayed: false,
                };
                return (current, Ok(reply));
            }
            Ok(_) => {
                // The same command was stored before (a concurrent retry won the race):
                // answer with what was stored, and catch up before the next command.
                current.loaded = false;
                return match stored_command::<E>(store.as_ref(), &stream, msg.meta.command_id).await
                {
                    Ok(Some(reply)) => (current, Ok(reply)),
                    Ok(None) => (current, Err(CommandError::Unavailable)),
                    Err(e) => store_error(&e),
                };
            }
            Err(AppendError::WrongVersion { actual, .. }) => {
                // Another process wrote the stream: catch up and decide again.
                refreshed = true;
                clashes += 1;
                if let Err(e) = catch_up(store.as_ref(), &stream, &mut current).await {
                    return store_error(&e);
                }
                if msg.meta.replayable {
                    // The writer may have been a concurrent attempt of this very command.
                    match stored_command::<E>(store.as_ref(), &stream, msg.meta.command_id).await {
                        Ok(Some(reply)) => return (current, Ok(reply)),
                        Ok(None) => {}
                        Err(e) => return store_error(&e),
                    }
                }
                if let Some(expected) = msg.expected {
                    // The caller's version was current when checked, and is not any more.
                    let actual = actual.max(current.version);
                    return (current, Err(CommandError::Conflict { expected, actual }));
                }
                if Instant::now() >= deadline {
                    tracing::warn!(stream, clashes, "command gave up on a contended stream");
                    return (current, Err(CommandError::Contended { attempts: clashes }));
                }
                if current.version < actual || clashes > 1 {
                    // The competing commit is not visible yet, or writers keep colliding:
                    // step aside for a moment so that they stop meeting in lockstep.
                    tokio::time::sleep(contention_pause(clashes)).await;
                    if current.version < actual {
                        if let Err(e) = catch_up(store.as_ref(), &stream, &mut current).await {
                            return store_error(&e);
                        }
                    }
                }
            }
            Err(AppendError::Invalid(why)) => {
                return (current, Err(CommandError::Invalid(why)));
            }
            Err(e) => return store_error(&e),
        }
    }
}

/// How long a command without `If-Match` keeps retrying appends that other processes beat.
pub const CONTENTION_DEADLINE: Duration = Duration::from_secs(2);

/// A random pause of up to 2^clashes ms (at most 50 ms) before the next try.
fn contention_pause(clashes: u32) -> Duration {
    let ceiling = (1u64 << clashes.min(6)).min(50);
    let jitter = (Uuid::new_v4().as_u128() as u64) % (ceiling + 1);
    Duration::from_millis(jitter)
}

fn save_snapshot_later<E: Entity>(store: Arc<dyn EventStore>, stream: String, c: &Current<E>) {
    let state = match serde_json::to_value(&c.state) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(stream, error = %e, "state cannot be serialized for a snapshot");
            return;
        }
    };
    let snapshot = Snapshot {
        version: c.version,
        schema_version: E::SNAPSHOT_VERSION,
        state,
    };
    actix::spawn(async move {
        if let Err(e) = store.save_snapshot(&stream, snapshot).await {
            tracing::warn!(stream, error = %e, "snapshot not saved");
        }
    });
}

/// Hands out the actors of one entity kind, spawning them on first use.
pub struct Registry<E: Entity> {
    slots: Slots<E>,
    store: Arc<dyn EventStore>,
    config: RuntimeConfig,
    generations: AtomicU64,
    /// The arbiter of the thread that made the registry, for calls from threads without one.
    home: Option<actix::dev::ArbiterHandle>,
    _kind: PhantomData<fn() -> E>,
}

impl<E: Entity> Registry<E> {
    pub fn new(store: Arc<dyn EventStore>, config: RuntimeConfig) -> Self {
        Self {
            slots: Arc::new(DashMap::new()),
            store,
            config,
            generations: AtomicU64::new(1),
            home: actix::Arbiter::try_current(),
            _kind: PhantomData,
        }
    }

    /// Actors currently alive in this registry.
    pub fn live(&self) -> usize {
        self.slots.len()
    }

    fn actor(&self, id: Uuid) -> (Addr<EntityActor<E>>, u64) {
        if let Some(slot) = self.slots.get(&id) {
            return (slot.addr.clone(), slot.generation);
        }
        let slot = self.slots.entry(id).or_insert_with(|| {
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            let actor = EntityActor::<E> {
                id,
                stream: stream_name::<E>(id),
                current: Current::default(),
                store: self.store.clone(),
                slots: self.slots.clone(),
                generation,
                config: self.config.clone(),
                last_active: Instant::now(),
            };
            // Started through the arbiter of this thread (or, on a thread without one, of
            // the thread that made the registry): that works from any task, also one
            // spawned outside the actix system's local set, where `Actor::start` cannot
            // spawn. The actor runs on that arbiter; messages wait in its mailbox until it
            // does.
            let addr = match actix::Arbiter::try_current().or_else(|| self.home.clone()) {
                Some(arbiter) => EntityActor::start_in_arbiter(&arbiter, move |_| actor),
                None => actor.start(),
            };
            Slot { addr, generation }
        });
        (slot.addr.clone(), slot.generation)
    }

    /// The current version and state of `id` (version 0: it does not exist).
    pub async fn inspect(&self, id: Uuid) -> Result<(i64, E), CommandError<E::Error>> {
        for _ in 0..3 {
            let (addr, generation) = self.actor(id);
            match addr.send(Inspect::<E>(PhantomData)).await {
                Ok(result) => return result,
                Err(_) => {
                    self.slots
                        .remove_if(&id, |_, slot| slot.generation == generation);
                }
            }
        }
        Err(CommandError::Unavailable)
    }

    /// Runs `cmd` on the actor of `id`.
    pub async fn execute(
        &self,
        id: Uuid,
        cmd: E::Command,
        expected: Option<i64>,
        meta: CommandMeta,
    ) -> Result<CommandReply<E>, CommandError<E::Error>> {
        for _ in 0..3 {
            let (addr, generation) = self.actor(id);
            let msg = Execute {
                cmd: cmd.clone(),
                expected,
                meta: meta.clone(),
            };
            match addr.send(msg).await {
                Ok(result) => return result,
                Err(_) => {
                    // The actor stopped (passivated) before taking the message: forget it and
                    // try a fresh one.
                    self.slots
                        .remove_if(&id, |_, slot| slot.generation == generation);
                }
            }
        }
        Err(CommandError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_of_fresh_commands_sort_by_time_and_keyed_ones_keep_their_old_form() {
        let earlier = Uuid::now_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = Uuid::now_v7();
        let ids: Vec<Uuid> = (0..4).map(|i| event_id(later, i)).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(*id, event_id(later, i), "derived the same every time");
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.as_bytes()[..6], later.as_bytes()[..6]);
            assert!(
                event_id(earlier, i) < *id,
                "a later command's events sort after"
            );
        }
        let mut distinct = ids.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 4);

        // A command id from an idempotency key: the plain name-based ids stored so far.
        let keyed = Uuid::new_v5(&Uuid::nil(), b"scope\nkey");
        assert_eq!(
            event_id(keyed, 1),
            Uuid::new_v5(&keyed, &1u64.to_be_bytes())
        );
    }
}
