//! History for analysts: any entity as of any version or time ([`state`]), the log out as
//! NDJSON and back into an empty store ([`export`], [`import`]), the catalogue of every event
//! type ([`catalog`]) and the replay of a read model to a moment into a schema of its own
//! ([`replay`]). [`routes`] serves them over HTTP; `main` calls the same functions from the
//! command line (`state`, `export`, `import-events`, `catalog`, `replay`).
//!
//! **Tenancy.** Exactly as the older history routes (`GET /api/v1/streams/{stream}`,
//! `GET /api/v1/events`): an organization admin sees the events whose metadata names the
//! organization, an operator (account-wide admin role) sees everything, and a stream with
//! none of the caller's events is answered 404, as if it did not exist.

pub mod catalog;
pub mod cli;
pub mod export;
pub mod import;
pub mod replay;
pub mod routes;
pub mod state;
pub mod views;

use uuid::Uuid;

/// Whose history a caller may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Operators: every tenant.
    All,
    /// Organization admins: the events of their organization.
    Organization(Uuid),
}

impl Scope {
    pub fn organization(self) -> Option<Uuid> {
        match self {
            Scope::All => None,
            Scope::Organization(o) => Some(o),
        }
    }
}

/// Why a history request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The stream's category belongs to no entity kind with a decider.
    #[error("streams of category `{0}` hold no entity state")]
    NoKind(String),
    /// The stream has no such version, or nothing at or before the time.
    #[error("{0}")]
    NoPoint(String),
    #[error("stored event cannot be read: {0}")]
    Decode(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Whether `stream` has events visible in `scope` (any event at all for operators).
pub async fn stream_visible(
    pool: &sqlx::PgPool,
    stream: &str,
    scope: Scope,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1 \
         AND ($2::text IS NULL OR metadata->>'organization_id' = $2))",
    )
    .bind(stream)
    .bind(scope.organization().map(|o| o.to_string()))
    .fetch_one(pool)
    .await
}
