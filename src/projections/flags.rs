//! Migration feature flags: `feature_flags` (the current mode of each route whose flag ever
//! changed) and `feature_flag_changes` (every change: who, when, from what to what, and for
//! an automatic rollback the error rate measured).

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::flag::{FlagActor, FlagEvent, FLAG_EVENT_TYPES};

use super::runner::Projection;
use crate::store::RawEvent;

/// The name of this projection (its checkpoint and lock key).
pub const NAME: &str = "feature_flags";

pub struct Flags;

#[async_trait]
impl Projection for Flags {
    fn name(&self) -> &'static str {
        NAME
    }

    fn event_types(&self) -> &'static [&'static str] {
        &FLAG_EVENT_TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["feature_flags", "feature_flag_changes"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            let event = e
                .decode::<FlagEvent>()
                .with_context(|| format!("event at position {}", e.position))?;
            let FlagEvent::FlagChanged(c) = event;
            let actor = match c.actor {
                FlagActor::User => "user",
                FlagActor::System => "system",
            };
            sqlx::query(
                "INSERT INTO feature_flag_changes (position, route, from_mode, to_mode, actor, \
                 user_id, reason, error_rate, requests, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(e.position)
            .bind(&c.route)
            .bind(c.from.as_str())
            .bind(c.to.as_str())
            .bind(actor)
            .bind(c.user_id)
            .bind(&c.reason)
            .bind(c.error_rate)
            .bind(c.requests.map(|r| r as i64))
            .bind(c.at)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO feature_flags (route, mode, actor, user_id, changed_at, version, \
                 position) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (route) DO UPDATE SET mode = $2, actor = $3, user_id = $4, \
                 changed_at = $5, version = $6, position = $7",
            )
            .bind(&c.route)
            .bind(c.to.as_str())
            .bind(actor)
            .bind(c.user_id)
            .bind(c.at)
            .bind(e.version)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
