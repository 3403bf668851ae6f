//! Team messaging read models: `channels`, `channel_members`, `channel_messages` (threads
//! with reply counts, `edited_at`, tombstones without text), `message_reactions`,
//! `channel_read_marks` and `notifications` (one row per user a message notifies, marked read
//! from the user's inbox stream).

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::messaging::{ChannelKind, InboxEvent, MessagingEvent, MESSAGING_EVENT_TYPES};
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

pub struct Messaging;

const TYPES: [&str; 12] = [
    MESSAGING_EVENT_TYPES[0],
    MESSAGING_EVENT_TYPES[1],
    MESSAGING_EVENT_TYPES[2],
    MESSAGING_EVENT_TYPES[3],
    MESSAGING_EVENT_TYPES[4],
    MESSAGING_EVENT_TYPES[5],
    MESSAGING_EVENT_TYPES[6],
    MESSAGING_EVENT_TYPES[7],
    MESSAGING_EVENT_TYPES[8],
    MESSAGING_EVENT_TYPES[9],
    MESSAGING_EVENT_TYPES[10],
    "NotificationsRead",
];

/// The id of the notification of the message recorded by event `event_id` for `user`.
pub fn notification_id(event_id: Uuid, user: Uuid) -> Uuid {
    Uuid::new_v5(&event_id, user.as_bytes())
}

#[async_trait]
impl Projection for Messaging {
    fn name(&self) -> &'static str {
        "messaging"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "channels",
            "channel_members",
            "channel_messages",
            "message_reactions",
            "channel_read_marks",
            "notifications",
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            match e.category.as_str() {
                "channel" => apply_channel(conn, e).await?,
                "inbox" => apply_inbox(conn, e).await?,
                _ => {}
            }
        }
        Ok(())
    }
}

fn entity(e: &RawEvent, prefix: &str) -> anyhow::Result<Uuid> {
    e.stream_id
        .strip_prefix(prefix)
        .and_then(|id| Uuid::parse_str(id).ok())
        .with_context(|| format!("{} is not a {prefix} stream", e.stream_id))
}

async fn apply_channel(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let channel = entity(e, "channel-")?;
    let event = e.decode::<MessagingEvent>()?;
    use MessagingEvent as E;
    match &event {
        E::ChannelCreated(c) => {
            sqlx::query(
                "INSERT INTO channels (id, organization_id, kind, name, topic, created_by, \
                 created_at, created_position, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(channel)
            .bind(c.organization_id)
            .bind(c.kind.as_str())
            .bind(&c.name)
            .bind(&c.topic)
            .bind(c.created_by)
            .bind(c.created_at)
            .bind(e.position)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
            if c.kind != ChannelKind::Public {
                sqlx::query(
                    "INSERT INTO channel_members (channel_id, user_id) \
                     SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
                )
                .bind(channel)
                .bind(&c.members)
                .execute(&mut *conn)
                .await?;
            }
        }
        E::ChannelUpdated(u) => {
            sqlx::query("UPDATE channels SET name = $2, topic = $3, version = $4 WHERE id = $1")
                .bind(channel)
                .bind(&u.name)
                .bind(&u.topic)
                .bind(e.version)
                .execute(&mut *conn)
                .await?;
        }
        E::ChannelArchived(a) => {
            sqlx::query("UPDATE channels SET archived_at = $2, version = $3 WHERE id = $1")
                .bind(channel)
                .bind(a.at)
                .bind(e.version)
                .execute(&mut *conn)
                .await?;
        }
        E::ChannelMemberAdded(m) => {
            sqlx::query(
                "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(channel)
            .bind(m.user_id)
            .execute(&mut *conn)
            .await?;
        }
        E::ChannelMemberRemoved(m) => {
            sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                .bind(channel)
                .bind(m.user_id)
                .execute(&mut *conn)
                .await?;
        }
        E::MessagePosted(p) => {
            let row: Option<(Uuid, String, i64)> = sqlx::query_as(
                "UPDATE channels SET message_count = message_count + 1, \
                 last_message_at = $2, version = $3 WHERE id = $1 \
                 RETURNING organization_id, kind, message_count",
            )
            .bind(channel)
            .bind(p.posted_at)
            .bind(e.version)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((org, _kind, seq)) = row else {
                return Ok(());
            };
            sqlx::query(
                "INSERT INTO channel_messages (id, channel_id, organization_id, seq, author_id, \
                 text, parent_id, mentions, attachments, client_message_id, created_at, position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(p.message_id)
            .bind(channel)
            .bind(org)
            .bind(seq)
            .bind(p.author_id)
            .bind(&p.text)
            .bind(p.parent_id)
            .bind(&p.mentions)
            .bind(serde_json::to_value(&p.attachments)?)
            .bind(&p.client_message_id)
            .bind(p.posted_at)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
            if let Some(parent) = p.parent_id {
                sqlx::query(
                    "UPDATE channel_messages SET reply_count = reply_count + 1 WHERE id = $1",
                )
                .bind(parent)
                .execute(&mut *conn)
                .await?;
            }
            for user in &p.notify {
                // A user notified for several reasons gets the most specific one.
                let kind = if p.mentions.contains(user) {
                    "mention"
                } else if p.parent_id.is_some() {
                    "thread_reply"
                } else {
                    "direct_message"
                };
                sqlx::query(
                    "INSERT INTO notifications (id, user_id, organization_id, kind, channel_id, \
                     message_id, actor_id, created_at, position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                )
                .bind(notification_id(e.event_id, *user))
                .bind(user)
                .bind(org)
                .bind(kind)
                .bind(channel)
                .bind(p.message_id)
                .bind(p.author_id)
                .bind(p.posted_at)
                .bind(e.position)
                .execute(&mut *conn)
                .await?;
            }
        }
        E::MessageEdited(m) => {
            sqlx::query(
                "UPDATE channel_messages SET text = $2, mentions = $3, edited_at = $4 \
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(m.message_id)
            .bind(&m.text)
            .bind(&m.mentions)
            .bind(m.edited_at)
            .execute(&mut *conn)
            .await?;
        }
        E::MessageDeleted(d) => {
            let parent: Option<Option<Uuid>> = sqlx::query_scalar(
                "UPDATE channel_messages SET text = NULL, mentions = '{}', attachments = '[]', \
                 deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING parent_id",
            )
            .bind(d.message_id)
            .bind(d.deleted_at)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(Some(parent)) = parent {
                sqlx::query(
                    "UPDATE channel_messages SET reply_count = greatest(reply_count - 1, 0) \
                     WHERE id = $1",
                )
                .bind(parent)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query("DELETE FROM message_reactions WHERE message_id = $1")
                .bind(d.message_id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM notifications WHERE message_id = $1")
                .bind(d.message_id)
                .execute(&mut *conn)
                .await?;
        }
        E::ReactionAdded(r) => {
            sqlx::query(
                "INSERT INTO message_reactions (message_id, emoji, user_id) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(r.message_id)
            .bind(&r.emoji)
            .bind(r.user_id)
            .execute(&mut *conn)
            .await?;
        }
        E::ReactionRemoved(r) => {
            sqlx::query(
                "DELETE FROM message_reactions WHERE message_id = $1 AND emoji = $2 \
                 AND user_id = $3",
            )
            .bind(r.message_id)
            .bind(&r.emoji)
            .bind(r.user_id)
            .execute(&mut *conn)
            .await?;
        }
        E::ReadMarkMoved(r) => {
            sqlx::query(
                "INSERT INTO channel_read_marks (channel_id, user_id, seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (channel_id, user_id) DO UPDATE \
                 SET seq = greatest(channel_read_marks.seq, EXCLUDED.seq)",
            )
            .bind(channel)
            .bind(r.user_id)
            .bind(r.seq as i64)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn apply_inbox(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let user = entity(e, "inbox-")?;
    let InboxEvent::NotificationsRead(r) = e.decode::<InboxEvent>()?;
    if !r.notification_ids.is_empty() {
        sqlx::query(
            "UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND id = ANY($2) \
             AND read_at IS NULL",
        )
        .bind(user)
        .bind(&r.notification_ids)
        .bind(r.read_at)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(up_to) = r.up_to {
        sqlx::query(
            "UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND position <= $2 \
             AND read_at IS NULL",
        )
        .bind(user)
        .bind(up_to)
        .bind(r.read_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
