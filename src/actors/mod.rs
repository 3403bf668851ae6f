//! Entity actors: the generic runtime and one module per entity kind.

pub mod building;
pub mod runtime;

pub use runtime::{CommandError, CommandMeta, CommandReply, Entity, Registry, RuntimeConfig};
