//! FluxStudio's collaborative documents: `documents`, one row per document (its project,
//! name, creator), for the project's document list. The content is not here: it is the
//! document's stream (see `crate::gateways::collab`).

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::document::DocumentEvent;

use super::runner::Projection;
use crate::store::RawEvent;

/// The name of this projection (its checkpoint and lock key).
pub const NAME: &str = "documents";

pub struct Documents;

#[async_trait]
impl Projection for Documents {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["DocumentCreated"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["documents"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            let event = e
                .decode::<DocumentEvent>()
                .with_context(|| format!("event at position {}", e.position))?;
            let DocumentEvent::DocumentCreated(c) = event else {
                continue;
            };
            sqlx::query(
                "INSERT INTO documents (id, organization_id, project_id, name, created_by, \
                 created_at, created_position) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(c.document_id)
            .bind(c.organization_id)
            .bind(c.project_id)
            .bind(&c.name)
            .bind(c.created_by)
            .bind(c.created_at)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
