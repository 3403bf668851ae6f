//! FlowMind chat replies: the worker that runs a provider call for a chat session, off the
//! session actor's mailbox, and reports what it gets back as commands that become events.
//!
//! - **Coalescing.** The first piece of text is written at once (the time to the first
//!   delta is what a user feels); after it, text is gathered and written as one
//!   `ReplyDeltaAppended` every `CHAT_DELTA_FLUSH_MS` (80 ms) or every
//!   `CHAT_DELTA_FLUSH_CHARS` characters, whichever comes first: a reply of a few hundred
//!   tokens is a few dozen events, not one per token.
//! - **Exactly once.** Each delta names its offset; the actor accepts it only if it continues
//!   the reply. A delta whose answer was lost is recognised on retry by the offset the actor
//!   reports.
//! - **Stop.** The user's cancel reaches a worker of this process at once: it writes what it
//!   has gathered, drops the provider stream (which closes the provider's HTTP request) and
//!   ends. A worker of another process learns it at its next write (the actor answers that
//!   the reply is no longer active) or, when the provider is silent, within
//!   [`STALL_CHECK`]; text it gathered but had not written is then dropped.
//! - **Crashed workers.** A reply whose process died stays `streaming` in the log. Each
//!   worker holds a row in `chat_reply_workers` that its process refreshes every
//!   [`WORKER_BEAT`]; every process sweeps every [`SWEEP_EVERY`] and fails (error class
//!   `interrupted`) the streaming replies whose worker row is missing or older than
//!   [`WORKER_STALE`] — within about 20 s of a `kill -9` — and, as a backstop, any reply
//!   streaming longer than the provider's total time limit plus a minute
//!   ([`sweep_interrupted`]). The user may also cancel it at once. The sweep runs under
//!   `crate::rt::supervise`; the registry it calls starts actors from any task.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::actors::conversation::{
    Conversation, ConversationCommand, ConversationError, ScopedCommand, MAX_DELTA,
};
use crate::actors::{CommandError, CommandMeta, Registry};
use crate::providers::{
    ChatRequest, Completion, Guarded, ModelProvider, ProviderError, Providers, ReplyEvent,
};

/// How often a worker whose provider is silent checks that its reply is still wanted.
pub const STALL_CHECK: Duration = Duration::from_secs(1);
/// How often a process refreshes the rows of the reply workers it runs.
pub const WORKER_BEAT: Duration = Duration::from_secs(2);
/// A worker row not refreshed for this long belongs to a process that is gone; a reply
/// younger than this is never swept (its worker may be registering).
pub const WORKER_STALE: Duration = Duration::from_secs(10);
/// How often every process looks for replies whose worker is gone.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Attempts to write one report when the store does not answer.
const WRITE_ATTEMPTS: u32 = 4;

/// Settings of the reply workers.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub prompt_budget_chars: usize,
    pub flush_every: Duration,
    pub flush_chars: usize,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// The provider's whole-call limit: a reply streaming for longer has lost its worker.
    pub total_timeout: Duration,
}

impl ChatSettings {
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            prompt_budget_chars: config.chat_prompt_budget_chars.max(1),
            flush_every: Duration::from_millis(config.chat_delta_flush_ms.max(1)),
            flush_chars: config.chat_delta_flush_chars.clamp(1, MAX_DELTA),
            temperature: None,
            max_tokens: None,
            total_timeout: Duration::from_secs(config.provider_total_timeout_secs.max(1)),
        }
    }
}

/// A reply the worker should run.
#[derive(Debug, Clone)]
pub struct ReplyJob {
    pub session_id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub reply_id: Uuid,
    pub model_id: String,
}

/// The chat sessions' actors and this process's reply workers.
#[derive(Clone)]
pub struct Chat {
    pub sessions: Arc<Registry<Conversation>>,
    providers: Providers,
    settings: Arc<ChatSettings>,
    /// Replies streaming in this process → how to stop them (the sender answers once the
    /// worker has written what it gathered).
    running: Arc<DashMap<Uuid, oneshot::Sender<oneshot::Sender<()>>>>,
    pool: PgPool,
    /// This process, as named in `chat_reply_workers`.
    process: Uuid,
    stopped: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Chat {
    pub fn new(
        sessions: Registry<Conversation>,
        providers: Providers,
        settings: ChatSettings,
        pool: PgPool,
    ) -> Self {
        Self {
            sessions: Arc::new(sessions),
            providers,
            settings: Arc::new(settings),
            running: Arc::new(DashMap::new()),
            pool,
            process: Uuid::new_v4(),
            stopped: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Refreshes this process's worker rows every [`WORKER_BEAT`] and sweeps for replies
    /// whose worker is gone every [`SWEEP_EVERY`], until [`Chat::stop`]. Supervised: a panic
    /// is logged and the loop starts again.
    pub fn keep_watch(&self) {
        let chat = self.clone();
        crate::rt::supervise("chat-workers", move || {
            let chat = chat.clone();
            async move {
                let mut stopped = chat.stopped.subscribe();
                let mut beat = tokio::time::interval(WORKER_BEAT);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sweep = tokio::time::interval(SWEEP_EVERY);
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = async { stopped.wait_for(|s| *s).await.map(|_| ()) } => return,
                        _ = beat.tick() => {
                            if let Err(e) = chat.beat().await {
                                tracing::warn!(error = %e, "refreshing the reply workers failed");
                            }
                        }
                        _ = sweep.tick() => {
                            let margin = interrupted_after(&chat);
                            if let Err(e) = sweep_interrupted(&chat, &chat.pool, margin).await {
                                tracing::warn!(error = %e, "sweeping interrupted replies failed");
                            }
                        }
                    }
                }
            }
        });
    }

    /// Stops refreshing this process's worker rows (its workers end with the process; other
    /// processes then fail their replies as interrupted).
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    async fn beat(&self) -> Result<(), sqlx::Error> {
        if self.running.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(
            WORKER_BEAT * 2,
            sqlx::query("UPDATE chat_reply_workers SET seen_at = now() WHERE process = $1")
                .bind(self.process)
                .execute(&self.pool),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
        .map(|_| ())
    }

    /// Registers (or, with `claim` false, removes) the worker row of `reply_id`. A failure is
    /// only logged: at worst a live reply is failed as interrupted, never left streaming.
    async fn register(&self, reply_id: Uuid, claim: bool) {
        let query = if claim {
            sqlx::query(
                "INSERT INTO chat_reply_workers (reply_id, process) VALUES ($1, $2) \
                 ON CONFLICT (reply_id) DO UPDATE SET process = $2, seen_at = now()",
            )
            .bind(reply_id)
            .bind(self.process)
        } else {
            sqlx::query("DELETE FROM chat_reply_workers WHERE reply_id = $1").bind(reply_id)
        };
        let done = tokio::time::timeout(WORKER_BEAT * 2, query.execute(&self.pool)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!(reply = %reply_id, claim, "the reply's worker row was not written");
        }
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// The provider serving `model`, if one is configured.
    pub fn provider_for(&self, model: &str) -> Option<Arc<Guarded>> {
        self.providers.for_model(model)
    }

    /// Replies streaming in this process.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Starts the worker of `job`, which builds the prompt from the session as it is now.
    pub fn start(&self, job: ReplyJob, provider: Arc<Guarded>) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.running.insert(job.reply_id, stop_tx);
        let chat = self.clone();
        tokio::spawn(async move {
            let reply_id = job.reply_id;
            chat.register(reply_id, true).await;
            {
                // Removed from `running` however the task ends, also when its runtime stops.
                let _running = Running(chat.clone(), reply_id);
                Worker::new(&chat, job, provider).run(stop_rx).await;
            }
            chat.register(reply_id, false).await;
        });
        metrics::gauge!("ub_chat_replies_running").set(self.running.len() as f64);
    }

    /// Stops the worker of `reply_id` if it runs in this process, once it has written what
    /// it gathered (at most `limit`). Returns whether a local worker was stopped.
    pub async fn stop_local(&self, reply_id: Uuid, limit: Duration) -> bool {
        let Some((_, stop)) = self.running.remove(&reply_id) else {
            return false;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if stop.send(done_tx).is_err() {
            return false;
        }
        let _ = tokio::time::timeout(limit, done_rx).await;
        true
    }
}

/// A reply's place in [`Chat::running`], given up when its worker ends.
struct Running(Chat, Uuid);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.remove(&self.1);
        metrics::gauge!("ub_chat_replies_running").set(self.0.running.len() as f64);
    }
}

/// Removes control characters that the log does not take (all but tab and line breaks).
fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    if text.chars().any(bad) {
        text.chars().filter(|c| !bad(*c)).collect::<String>().into()
    } else {
        text.into()
    }
}

/// Why a worker stopped writing.
enum Halt {
    /// The reply is no longer active (cancelled, or ended elsewhere).
    NotActive,
    /// The session cannot take more text: complete the reply as `length`.
    Full,
    /// The store did not take the write.
    Store,
}

struct Worker {
    chat: Chat,
    job: ReplyJob,
    provider: Arc<Guarded>,
    /// Characters of the reply written so far.
    offset: u64,
    pending: String,
    pending_chars: usize,
}

impl Worker {
    fn new(chat: &Chat, job: ReplyJob, provider: Arc<Guarded>) -> Self {
        Self {
            chat: chat.clone(),
            job,
            provider,
            offset: 0,
            pending: String::new(),
            pending_chars: 0,
        }
    }

    fn meta(&self) -> CommandMeta {
        let mut meta = CommandMeta::new();
        meta.organization_id = Some(self.job.organization_id);
        meta.user_id = Some(self.job.user_id);
        meta.causation_id = Some(self.job.reply_id.to_string());
        meta.frontend = Some("flowmind".to_owned());
        meta
    }

    async fn send(&self, cmd: ConversationCommand) -> Result<(), CommandError<ConversationError>> {
        let scoped = ScopedCommand {
            organization_id: self.job.organization_id,
            owner: None,
            cmd,
        };
        let mut attempt = 0;
        loop {
            match self
                .chat
                .sessions
                .execute(self.job.session_id, scoped.clone(), None, self.meta())
                .await
            {
                Err(CommandError::Store(_) | CommandError::Unavailable)
                    if attempt + 1 < WRITE_ATTEMPTS =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let request = match self.request().await {
            Some(r) => r,
            None => return,
        };
        let settings = self.chat.settings.clone();
        let started = std::time::Instant::now();
        let opened = tokio::select! {
            s = self.provider.stream(request) => s,
            done = &mut stop => {
                if let Ok(done) = done { let _ = done.send(()); }
                return;
            }
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => return self.fail(&e).await,
        };
        let mut tick = tokio::time::interval(settings.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            tokio::select! {
                done = &mut stop => {
                    drop(stream);
                    let _ = self.flush().await;
                    if let Ok(done) = done { let _ = done.send(()); }
                    return;
                }
                item = stream.next() => match item {
                    Some(Ok(ReplyEvent::Delta(text))) => {
                        let text = clean(&text);
                        self.pending_chars += text.chars().count();
                        self.pending.push_str(&text);
                        // The first piece goes out at once (it is what the user waits
                        // for); later ones are gathered.
                        if self.offset == 0 || self.pending_chars >= settings.flush_chars {
                            if let Err(halt) = self.flush().await {
                                return self.halted(halt).await;
                            }
                            quiet_since = tokio::time::Instant::now();
                        }
                    }
                    Some(Ok(ReplyEvent::Completed(c))) => {
                        drop(stream);
                        if let Err(halt) = self.flush().await {
                            return self.halted(halt).await;
                        }
                        metrics::histogram!("ub_chat_reply_seconds").record(started.elapsed().as_secs_f64());
                        return self.complete(c).await;
                    }
                    Some(Err(e)) => {
                        drop(stream);
                        if let Err(halt) = self.flush().await {
                            return self.halted(halt).await;
                        }
                        return self.fail(&e).await;
                    }
                    None => {
                        drop(stream);
                        if let Err(halt) = self.flush().await {
                            return self.halted(halt).await;
                        }
                        let e = ProviderError::Protocol("the stream ended without a completion".into());
                        return self.fail(&e).await;
                    }
                },
                _ = tick.tick() => {
                    if self.pending_chars > 0 {
                        if let Err(halt) = self.flush().await {
                            return self.halted(halt).await;
                        }
                        quiet_since = tokio::time::Instant::now();
                    } else if quiet_since.elapsed() >= STALL_CHECK {
                        quiet_since = tokio::time::Instant::now();
                        if !self.still_active().await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The provider request: the session's current branch, trimmed to the budget.
    async fn request(&self) -> Option<ChatRequest> {
        let (_, session) = self.chat.sessions.inspect(self.job.session_id).await.ok()?;
        if session.active_reply != Some(self.job.reply_id) {
            return None;
        }
        let settings = &self.chat.settings;
        Some(ChatRequest {
            model: self.job.model_id.clone(),
            messages: session.prompt(settings.prompt_budget_chars),
            temperature: settings.temperature,
            max_tokens: settings.max_tokens,
        })
    }

    async fn still_active(&self) -> bool {
        match self.chat.sessions.inspect(self.job.session_id).await {
            Ok((_, s)) => s.active_reply == Some(self.job.reply_id),
            // Cannot tell: keep going; the next write will.
            Err(_) => true,
        }
    }

    /// Writes the gathered text as deltas of at most [`MAX_DELTA`] characters.
    async fn flush(&mut self) -> Result<(), Halt> {
        while self.pending_chars > 0 {
            let (piece, chars) = if self.pending_chars <= MAX_DELTA {
                (std::mem::take(&mut self.pending), self.pending_chars)
            } else {
                let cut = self
                    .pending
                    .char_indices()
                    .nth(MAX_DELTA)
                    .map_or(self.pending.len(), |(i, _)| i);
                let rest = self.pending.split_off(cut);
                (std::mem::replace(&mut self.pending, rest), MAX_DELTA)
            };
            self.pending_chars -= chars;
            let cmd = ConversationCommand::AppendDelta {
                reply_id: self.job.reply_id,
                offset: self.offset,
                text: piece,
            };
            match self.send(cmd).await {
                Ok(()) => {}
                // The write went through before but its answer was lost.
                Err(CommandError::Domain(ConversationError::OffsetMismatch {
                    expected, ..
                })) if expected == self.offset + chars as u64 => {}
                Err(CommandError::Domain(ConversationError::SessionFull(_))) => {
                    return Err(Halt::Full)
                }
                Err(CommandError::Domain(_)) => return Err(Halt::NotActive),
                Err(e) => {
                    tracing::warn!(reply = %self.job.reply_id, error = %e, "writing a reply delta failed");
                    return Err(Halt::Store);
                }
            }
            self.offset += chars as u64;
            metrics::counter!("ub_chat_delta_events_total").increment(1);
        }
        Ok(())
    }

    async fn halted(&self, halt: Halt) {
        if let Halt::Full = halt {
            let c = Completion {
                finish_reason: "length".into(),
                usage: Default::default(),
            };
            self.complete(c).await;
        }
    }

    async fn complete(&self, c: Completion) {
        let usage = c.usage;
        let estimated =
            usage.estimated || (usage.prompt_tokens == 0 && usage.completion_tokens == 0);
        let (prompt_tokens, completion_tokens) =
            if usage.prompt_tokens == 0 && usage.completion_tokens == 0 {
                (0, self.offset.div_ceil(4))
            } else {
                (
                    u64::from(usage.prompt_tokens),
                    u64::from(usage.completion_tokens),
                )
            };
        let finish_reason = if c.finish_reason.trim().is_empty() {
            "stop".to_owned()
        } else {
            clean(&c.finish_reason).chars().take(100).collect()
        };
        let cmd = ConversationCommand::CompleteReply {
            reply_id: self.job.reply_id,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            estimated,
            at: Utc::now(),
        };
        if let Err(e) = self.send(cmd).await {
            tracing::debug!(reply = %self.job.reply_id, error = %e, "completing a reply was refused");
        }
        metrics::counter!("ub_chat_replies_total", "outcome" => "completed").increment(1);
    }

    async fn fail(&self, e: &ProviderError) {
        let message: String = clean(&e.to_string()).chars().take(2_000).collect();
        let cmd = ConversationCommand::FailReply {
            reply_id: self.job.reply_id,
            error_class: e.class().to_owned(),
            message,
            at: Utc::now(),
        };
        if let Err(e) = self.send(cmd).await {
            tracing::debug!(reply = %self.job.reply_id, error = %e, "failing a reply was refused");
        }
        metrics::counter!("ub_chat_replies_total", "outcome" => "failed").increment(1);
    }
}

/// How long a reply may stream before [`sweep_interrupted`] takes its worker for gone: the
/// provider's total time limit plus a minute for the last writes.
pub fn interrupted_after(chat: &Chat) -> Duration {
    chat.settings.total_timeout + Duration::from_secs(60)
}

/// Fails the streaming replies whose worker is gone: its row in `chat_reply_workers` is
/// missing or stale (older than [`WORKER_STALE`]), or the reply has been streaming for
/// longer than `margin` (see [`interrupted_after`]) whatever its row says. Replies with a
/// worker in this process are left alone. Runs in every process; a reply another process
/// already ended is simply refused. Returns how many replies it failed.
pub async fn sweep_interrupted(
    chat: &Chat,
    pool: &PgPool,
    margin: Duration,
) -> anyhow::Result<usize> {
    let grace = margin.min(WORKER_STALE);
    let rows: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "SELECT m.id, m.session_id, m.organization_id FROM chat_messages m \
         LEFT JOIN chat_reply_workers w ON w.reply_id = m.id \
         WHERE m.status = 'streaming' AND m.created_at < now() - make_interval(secs => $1) \
           AND (w.reply_id IS NULL OR w.seen_at < now() - make_interval(secs => $1) \
                OR m.created_at < now() - make_interval(secs => $2)) \
         ORDER BY m.created_at LIMIT 100",
    )
    .bind(grace.as_secs_f64())
    .bind(margin.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut failed = 0;
    for (reply_id, session_id, organization_id) in rows {
        if chat.running.contains_key(&reply_id) {
            continue;
        }
        let cmd = ScopedCommand {
            organization_id,
            owner: None,
            cmd: ConversationCommand::FailReply {
                reply_id,
                error_class: "interrupted".into(),
                message: "the reply's worker stopped before it finished".into(),
                at: Utc::now(),
            },
        };
        let mut meta = CommandMeta::new();
        meta.organization_id = Some(organization_id);
        match chat.sessions.execute(session_id, cmd, None, meta).await {
            Ok(_) => {
                failed += 1;
                tracing::info!(reply = %reply_id, "a reply whose worker is gone was failed as interrupted");
                let _ = sqlx::query("DELETE FROM chat_reply_workers WHERE reply_id = $1")
                    .bind(reply_id)
                    .execute(pool)
                    .await;
            }
            Err(e) => {
                tracing::debug!(reply = %reply_id, error = %e, "interrupted reply not failed")
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_removed_but_line_breaks_stay() {
        assert_eq!(clean("a\u{0}b\u{7}c\n\td\r"), "abc\n\td\r");
        assert!(matches!(clean("plain"), std::borrow::Cow::Borrowed(_)));
    }
}
