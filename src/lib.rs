//! universal-backend: one event-sourced actor system behind every frontend.
//!
//! - [`config`]: typed settings from the environment.
//! - [`access`]: who may do what now: memberships, roles, frontends and ended sessions,
//!   kept current from the log and checked on every request and open socket.
//! - [`auth`]: passwords (argon2id), access tokens (JWT) and refresh tokens.
//! - [`store`]: the event store (append with expected version, reads, subscriptions).
//! - [`actors`]: the per-entity actor runtime and the entity deciders.
//! - [`projections`]: the runner that builds Postgres read models, and the read models.
//! - [`http`]: the route table, handlers and the one error type.
//! - [`gateways`]: the connection core of the socket endpoints (limits, timeouts,
//!   authorization of live streams, revocation) and the Engine.IO transports.
//! - [`providers`]: AI model providers (OpenAI-compatible, Anthropic, local-echo) behind one
//!   trait, each wrapped in timeouts, retries before the first token and a circuit breaker.
//! - [`chat`]: FlowMind chat replies: the worker that streams a provider's reply into a chat
//!   session's events, coalesced, and stops it on request.
//! - [`google`]: verification of Google ID tokens against Google's published keys (JWKS).
//! - [`outbound`]: where user-supplied URLs may lead (allow-list, address checks, pinning).
//! - [`rt`]: dedicated threads for the serial hot spots (store writer, projections).
//! - [`swarm`]: the work of Quantum and Velocity swarm tasks (particle swarm runs, batches).
//! - [`tasks`]: the scheduler of long work (caps, one leader across processes, resume).
//! - [`startup`]: builds the whole application (used by `main`, the tests and the benchmark).

#![deny(unsafe_code)]

pub mod access;
pub mod actors;
pub mod agents;
pub mod auth;
pub mod chat;
pub mod config;
pub mod gateways;
pub mod google;
pub mod http;
pub mod outbound;
pub mod projections;
pub mod providers;
pub mod rt;
pub mod startup;
pub mod store;
pub mod swarm;
pub mod tasks;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
