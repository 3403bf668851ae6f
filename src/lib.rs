//! universal-backend: one event-sourced actor system behind every frontend.
//!
//! - [`config`]: typed settings from the environment.
//! - [`db`]: opening the database (connection settings, creation, migrations).
//! - [`identity`]: passwords and tokens (`auth`), who may do what now (`access`: memberships,
//!   roles, frontends and ended sessions, kept current from the log and checked on every
//!   request and open socket), and Google sign-in (`google`).
//! - [`state`]: `AppState`, what every handler, gateway and worker reaches, with the actor
//!   registries of every entity kind.
//! - [`store`]: the event store (append with expected version, reads, subscriptions).
//! - [`actors`]: the per-entity actor runtime and the entity deciders.
//! - [`projections`]: the runner that builds Postgres read models, and the read models.
//! - [`http`]: the route table, the REST resources and the one error type.
//! - [`gateways`]: every socket protocol: the connection core (limits, timeouts,
//!   authorization of live streams, revocation), the native WebSocket (`ws`), Engine.IO and
//!   Socket.IO with its recovery and `/messaging` commands (`socketio`), the Pusher hub and
//!   socket endpoint (`pusher`), and the typing and presence signals.
//! - [`providers`]: AI model providers (OpenAI-compatible, Anthropic, local-echo) behind one
//!   trait, each wrapped in timeouts, retries before the first token and a circuit breaker.
//! - [`outbound`]: where user-supplied URLs may lead (allow-list, address checks, pinning).
//! - [`rt`]: dedicated threads for the serial hot spots (store writer, projections).
//! - [`swarm`]: the work of Quantum and Velocity swarm tasks (particle swarm runs, batches).
//! - [`tasks`]: every worker of long work: the scheduler of swarm tasks (admission, fair
//!   order, one leader across processes, resume) with its batch, agent and analysis workers,
//!   and the FlowMind chat reply workers (`tasks::chat`).
//! - [`history`]: history for analysts: any entity at any version or time, the log out as
//!   NDJSON and back in, the catalogue of event types, the replay of a read model to a moment.
//! - [`progress`]: progress bars of long command-line work (plain lines off a terminal).
//! - [`files`]: FluxStudio file content (object_store, content-addressed), tus uploads,
//!   share links, serving rules and the retention sweep.
//! - [`startup`]: the composition root: builds the whole application (used by `main`, the
//!   tests and the benchmark); nothing else imports it.

#![deny(unsafe_code)]

pub mod actors;
pub mod agents;
pub mod config;
pub mod db;
pub mod files;
pub mod gateways;
pub mod history;
pub mod http;
pub mod identity;
pub mod import;
pub mod outbound;
pub mod progress;
pub mod projections;
pub mod providers;
pub mod rt;
pub mod startup;
pub mod state;
pub mod store;
pub mod swarm;
pub mod tasks;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
