//! The work of swarm tasks, free of actors and HTTP: objectives, the particle swarm run and
//! the subtasks of a batch. The scheduler (`crate::tasks`) runs it and reports to the task's
//! actor.

pub mod objective;
pub mod pso;
