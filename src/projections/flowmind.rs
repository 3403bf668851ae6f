//! FlowMind chat read models: `chat_sessions` (message count, last activity, tokens used),
//! `chat_messages` (every message of every branch, with the full text of replies) and
//! `ai_usage_daily` (tokens per organization, day and model, for billing).
//!
//! A reply's text grows with each `ReplyDeltaAppended`; the update only applies when the
//! stored text has exactly `offset` characters, so the text is the log's text whatever
//! happens. A deleted session (a tombstone) leaves no row behind, nor any of its messages.
//! Usage counts completed replies: a failed or cancelled reply reports no usage.

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgConnection;
use universal_events::conversation::ConversationEvent;
use uuid::Uuid;

use super::runner::Projection;
use crate::store::RawEvent;

pub struct Flowmind;

const TYPES: [&str; 11] = universal_events::conversation::CONVERSATION_EVENT_TYPES;

#[async_trait]
impl Projection for Flowmind {
    fn name(&self) -> &'static str {
        "flowmind"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &TYPES
    }

    fn tables(&self) -> &'static [&'static str] {
        &["chat_sessions", "chat_messages", "ai_usage_daily"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        for e in events {
            if e.category == "conversation" {
                apply(conn, e).await?;
            }
        }
        Ok(())
    }
}

async fn apply(conn: &mut PgConnection, e: &RawEvent) -> anyhow::Result<()> {
    let session = e
        .stream_id
        .strip_prefix("conversation-")
        .and_then(|id| Uuid::parse_str(id).ok())
        .with_context(|| format!("{} is not a conversation stream", e.stream_id))?;
    let event = e.decode::<ConversationEvent>()?;
    use ConversationEvent as E;
    match &event {
        E::ChatSessionCreated(c) => {
            sqlx::query(
                "INSERT INTO chat_sessions (id, organization_id, user_id, title, model_id, \
                 system_prompt, last_activity_at, created_at, version, created_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
            )
            .bind(session)
            .bind(c.organization_id)
            .bind(c.user_id)
            .bind(&c.title)
            .bind(&c.model_id)
            .bind(&c.system_prompt)
            .bind(c.created_at)
            .bind(e.version)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
        }
        E::ChatSessionRenamed(r) => {
            sqlx::query("UPDATE chat_sessions SET title = $2, version = $3 WHERE id = $1")
                .bind(session)
                .bind(&r.title)
                .bind(e.version)
                .execute(&mut *conn)
                .await?;
        }
        E::SystemPromptSet(p) => {
            sqlx::query("UPDATE chat_sessions SET system_prompt = $2, version = $3 WHERE id = $1")
                .bind(session)
                .bind(&p.system_prompt)
                .bind(e.version)
                .execute(&mut *conn)
                .await?;
        }
        E::ChatSessionArchived(a) => {
            sqlx::query("UPDATE chat_sessions SET archived_at = $2, version = $3 WHERE id = $1")
                .bind(session)
                .bind(a.at)
                .bind(e.version)
                .execute(&mut *conn)
                .await?;
        }
        E::ChatSessionDeleted(_) => {
            sqlx::query("DELETE FROM chat_messages WHERE session_id = $1")
                .bind(session)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM chat_sessions WHERE id = $1")
                .bind(session)
                .execute(&mut *conn)
                .await?;
        }
        E::UserMessagePosted(m) => {
            sqlx::query(
                "INSERT INTO chat_messages (id, session_id, organization_id, parent_id, role, \
                 content, status, created_at, seq) \
                 SELECT $1, $2, s.organization_id, $3, 'user', $4, 'completed', $5, $6 \
                 FROM chat_sessions s WHERE s.id = $2 ON CONFLICT (id) DO NOTHING",
            )
            .bind(m.message_id)
            .bind(session)
            .bind(m.parent_id)
            .bind(&m.content)
            .bind(m.posted_at)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
            touch(conn, session, m.posted_at, e.version, 1).await?;
        }
        E::ReplyStarted(r) => {
            sqlx::query(
                "INSERT INTO chat_messages (id, session_id, organization_id, parent_id, role, \
                 status, model_id, provider, created_at, seq) \
                 SELECT $1, $2, s.organization_id, $3, 'assistant', 'streaming', $4, $5, $6, $7 \
                 FROM chat_sessions s WHERE s.id = $2 ON CONFLICT (id) DO NOTHING",
            )
            .bind(r.reply_id)
            .bind(session)
            .bind(r.in_reply_to)
            .bind(&r.model_id)
            .bind(&r.provider)
            .bind(r.started_at)
            .bind(e.position)
            .execute(&mut *conn)
            .await?;
            touch(conn, session, r.started_at, e.version, 1).await?;
        }
        E::ReplyDeltaAppended(d) => {
            sqlx::query(
                "UPDATE chat_messages SET content = content || $2 \
                 WHERE id = $1 AND char_length(content) = $3",
            )
            .bind(d.reply_id)
            .bind(&d.text)
            .bind(d.offset as i64)
            .execute(&mut *conn)
            .await?;
        }
        E::ReplyCompleted(c) => {
            let model: Option<(Uuid, String)> = sqlx::query_as(
                "UPDATE chat_messages SET status = 'completed', finish_reason = $2, \
                 prompt_tokens = $3, completion_tokens = $4, finished_at = $5 \
                 WHERE id = $1 RETURNING organization_id, coalesce(model_id, '')",
            )
            .bind(c.reply_id)
            .bind(&c.finish_reason)
            .bind(c.prompt_tokens as i64)
            .bind(c.completion_tokens as i64)
            .bind(c.completed_at)
            .fetch_optional(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE chat_sessions SET prompt_tokens = prompt_tokens + $2, \
                 completion_tokens = completion_tokens + $3, \
                 last_activity_at = greatest(last_activity_at, $4), version = $5 WHERE id = $1",
            )
            .bind(session)
            .bind(c.prompt_tokens as i64)
            .bind(c.completion_tokens as i64)
            .bind(c.completed_at)
            .bind(e.version)
            .execute(&mut *conn)
            .await?;
            if let Some((org, model)) = model {
                sqlx::query(
                    "INSERT INTO ai_usage_daily (organization_id, day, model_id, replies, \
                     prompt_tokens, completion_tokens) \
                     VALUES ($1, ($2 AT TIME ZONE 'UTC')::date, $3, 1, $4, $5) \
                     ON CONFLICT (organization_id, day, model_id) DO UPDATE SET \
                     replies = ai_usage_daily.replies + 1, \
                     prompt_tokens = ai_usage_daily.prompt_tokens + EXCLUDED.prompt_tokens, \
                     completion_tokens = ai_usage_daily.completion_tokens + EXCLUDED.completion_tokens",
                )
                .bind(org)
                .bind(c.completed_at)
                .bind(model)
                .bind(c.prompt_tokens as i64)
                .bind(c.completion_tokens as i64)
                .execute(&mut *conn)
                .await?;
            }
        }
        E::ReplyFailed(f) => {
            sqlx::query(
                "UPDATE chat_messages SET status = 'failed', error_class = $2, \
                 error_message = $3, finished_at = $4 WHERE id = $1",
            )
            .bind(f.reply_id)
            .bind(&f.error_class)
            .bind(&f.message)
            .bind(f.failed_at)
            .execute(&mut *conn)
            .await?;
            touch(conn, session, f.failed_at, e.version, 0).await?;
        }
        E::ReplyCancelled(c) => {
            sqlx::query(
                "UPDATE chat_messages SET status = 'cancelled', finished_at = $2 \
                 WHERE id = $1 AND status = 'streaming'",
            )
            .bind(c.reply_id)
            .bind(c.at)
            .execute(&mut *conn)
            .await?;
            touch(conn, session, c.at, e.version, 0).await?;
        }
    }
    Ok(())
}

/// Counts a new message (or the end of one) as activity on its session.
async fn touch(
    conn: &mut PgConnection,
    session: Uuid,
    at: chrono::DateTime<chrono::Utc>,
    version: i64,
    added: i32,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE chat_sessions SET message_count = message_count + $4, \
         last_activity_at = greatest(last_activity_at, $2), version = $3 WHERE id = $1",
    )
    .bind(session)
    .bind(at)
    .bind(version)
    .bind(added)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
