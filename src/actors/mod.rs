//! Entity actors: the generic runtime and one module per entity kind.

pub mod building;
pub mod channel;
pub mod conversation;
pub mod document;
pub mod file;
pub mod flag;
pub mod organization;
pub mod project;
pub mod runtime;
pub mod swarm_task;
pub mod team;
pub mod user;
pub mod validate;

pub use runtime::{CommandError, CommandMeta, CommandReply, Entity, Registry, RuntimeConfig};
