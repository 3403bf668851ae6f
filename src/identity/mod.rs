//! Identity: who the caller is and what they may do.
//!
//! - [`auth`]: passwords (argon2id), access tokens (JWT) and refresh tokens.
//! - [`access`]: who may do what now: memberships, roles, frontends and ended sessions, kept
//!   current from the log and checked on every request and open socket.
//! - [`google`]: verification of Google ID tokens against Google's published keys (JWKS).

pub mod access;
pub mod auth;
pub mod google;
