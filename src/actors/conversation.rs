//! A FlowMind chat session (entity kind `conversation`): its title, model and system prompt,
//! the user's messages and the assistant's streamed replies.
//!
//! The provider call runs off the actor's mailbox; the worker that runs it reports back with
//! [`ConversationCommand::AppendDelta`], `CompleteReply` or `FailReply`, and the decider turns
//! those reports into events. The rules:
//!
//! - **One reply at a time.** Posting a message, editing one or regenerating a reply while a
//!   reply is streaming is refused with [`ConversationError::ReplyInProgress`] (an HTTP 409):
//!   messages are not queued. The client stops the reply first (`CancelReply`) or waits for
//!   it to end. Refusing keeps the order of the history obvious and the state small.
//! - **Posting starts the reply.** A posted message records `UserMessagePosted` and the
//!   assistant's `ReplyStarted` in the same decision, with the session's model. Ids, times
//!   and the provider's name come in the command: the decider has no clock and no randomness.
//! - **Deltas exactly once, in order.** A delta is accepted only for the active reply and only
//!   when its `offset` equals the characters received so far; a duplicate or a gap is refused
//!   with [`ConversationError::OffsetMismatch`], which tells the worker where the reply is.
//!   Progress for a reply that is no longer active (cancelled by the user, say) is refused
//!   with [`ConversationError::ReplyNotActive`]: the worker takes it as "stop".
//! - **Cancel keeps what was produced.** `CancelReply` records `ReplyCancelled`; the text so
//!   far stays in the deltas and in the prompt of later replies. With nothing streaming it
//!   records nothing.
//! - **History is immutable.** Messages form a tree through `parent_id`. A new message
//!   follows the newest one; editing a message posts a new one with the edited message's
//!   parent (a fork); regenerating starts a new reply to the same user message. The current
//!   branch is the path from the root to the newest message, and it is what
//!   [`Conversation::prompt`] sends to the provider.
//! - **Archived** sessions can be renamed but take no new messages, edits, regenerations or
//!   system prompt; a reply streaming when the session was archived may still finish.
//!   **Deleted** sessions are tombstones: every command then answers `NotFound`.
//! - **Bounded.** A session holds at most [`MAX_MESSAGES`] messages (user messages and
//!   replies) and [`MAX_SESSION_CHARS`] characters of text; a reply at most
//!   [`MAX_REPLY_CHARS`]. A delta past a limit is refused with
//!   [`ConversationError::SessionFull`]; the worker then completes the reply with finish
//!   reason `length`.
//! - Every text goes through [`validate`]: no control characters other than tab and
//!   newlines. The worker strips other control characters from provider output (and from
//!   provider error messages) before it reports them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::conversation::{
    ChatSessionArchived, ChatSessionCreated, ChatSessionDeleted, ChatSessionRenamed,
    ConversationEvent, ReplyCancelled, ReplyCompleted, ReplyDeltaAppended, ReplyFailed,
    ReplyStarted, SystemPromptSet, UserMessagePosted,
};
use uuid::Uuid;

use super::runtime::Entity;
use super::validate;
use crate::providers::{ChatMessage, Role};

/// Longest session title.
pub const MAX_TITLE: usize = 200;
/// Longest model id.
pub const MAX_MODEL_ID: usize = 100;
/// Longest system prompt.
pub const MAX_SYSTEM_PROMPT: usize = 20_000;
/// Longest user message.
pub const MAX_CONTENT: usize = 32_000;
/// Longest provider name, error class or finish reason.
pub const MAX_LABEL: usize = 100;
/// Longest failure message.
pub const MAX_FAILURE_MESSAGE: usize = 2_000;
/// Longest piece of text in one delta.
pub const MAX_DELTA: usize = 32_000;
/// Longest reply.
pub const MAX_REPLY_CHARS: usize = 200_000;
/// Most messages (user messages and replies, every branch) in one session.
pub const MAX_MESSAGES: usize = 10_000;
/// Most characters of message and reply text in one session, every branch: keeps the state
/// (and its snapshot) within a few tens of megabytes.
pub const MAX_SESSION_CHARS: usize = 5_000_000;
/// Largest token count one reply may report.
pub const MAX_TOKENS: u64 = 100_000_000;

#[derive(Debug, Clone)]
pub enum ConversationCommand {
    Create {
        session_id: Uuid,
        /// The owner.
        user_id: Uuid,
        title: String,
        model_id: String,
        system_prompt: Option<String>,
        at: DateTime<Utc>,
    },
    Rename {
        title: String,
    },
    SetSystemPrompt {
        system_prompt: Option<String>,
    },
    Archive {
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
    /// A user message after the newest one; starts the assistant's reply `reply_id`.
    PostMessage {
        message_id: Uuid,
        reply_id: Uuid,
        content: String,
        provider: String,
        at: DateTime<Utc>,
    },
    /// A new version of user message `edited`: a fork from its parent, with a new reply.
    EditMessage {
        edited: Uuid,
        message_id: Uuid,
        reply_id: Uuid,
        content: String,
        provider: String,
        at: DateTime<Utc>,
    },
    /// A new reply to the user message of the newest reply; the old reply stays in history.
    Regenerate {
        reply_id: Uuid,
        provider: String,
        at: DateTime<Utc>,
    },
    /// From the worker: the next coalesced piece of the active reply.
    AppendDelta {
        reply_id: Uuid,
        offset: u64,
        text: String,
    },
    /// From the worker: the active reply ended normally.
    CompleteReply {
        reply_id: Uuid,
        finish_reason: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        estimated: bool,
        at: DateTime<Utc>,
    },
    /// From the worker: the provider failed.
    FailReply {
        reply_id: Uuid,
        error_class: String,
        message: String,
        at: DateTime<Utc>,
    },
    /// From the user: stop generating. With `reply_id`, only that reply is stopped.
    CancelReply {
        reply_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
}

/// A command on behalf of an organization, and of a user when `owner` is set: a session
/// answers only to its own organization and, for a user's command, only to its owner.
/// (The reply worker's reports carry no owner.)
#[derive(Debug, Clone)]
pub struct ScopedCommand {
    pub organization_id: Uuid,
    pub owner: Option<Uuid>,
    pub cmd: ConversationCommand,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConversationError {
    #[error("chat session not found")]
    NotFound,
    #[error("chat session already exists")]
    AlreadyExists,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("chat session is archived")]
    Archived,
    #[error("a reply is still streaming: stop it or wait for it to end")]
    ReplyInProgress,
    #[error("reply {0} is not streaming")]
    ReplyNotActive(Uuid),
    #[error("delta at offset {got} does not continue the reply, which has {expected} characters")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("message {0} is not a user message of this session")]
    UnknownMessage(Uuid),
    #[error("message id {0} is already used in this session")]
    DuplicateId(Uuid),
    #[error("there is no finished reply to regenerate")]
    NothingToRegenerate,
    #[error("chat session is full: {0}")]
    SessionFull(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConversationError {
    ConversationError::Invalid {
        field,
        message: message.into(),
    }
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), ConversationError> {
    validate::name(value, max).map_err(|m| invalid(field, m))
}

fn check_body(field: &'static str, value: &str, max: usize) -> Result<(), ConversationError> {
    validate::body(value, max).map_err(|m| invalid(field, m))
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ConversationError> {
    validate::text(value, max).map_err(|m| invalid(field, m))
}

fn check_time(field: &'static str, at: DateTime<Utc>) -> Result<(), ConversationError> {
    validate::time(at, at).map_err(|m| invalid(field, m))
}

/// Where a reply stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    Streaming,
    Completed,
    Failed,
    Cancelled,
}

/// What a message is: the user's, or a reply with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "status")]
pub enum MessageKind {
    User,
    Reply(ReplyStatus),
}

/// One node of the message tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: Uuid,
    /// The message this one follows; a reply's parent is the user message it answers.
    pub parent_id: Option<Uuid>,
    pub kind: MessageKind,
    pub text: String,
    /// Characters in `text`, kept so that offsets are checked without counting again.
    pub chars: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Conversation {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    /// The owner.
    pub user_id: Option<Uuid>,
    pub title: String,
    pub model_id: String,
    pub system_prompt: Option<String>,
    pub archived: bool,
    pub deleted: bool,
    /// Every message of every branch, in the order it was recorded.
    pub messages: Vec<Message>,
    /// Position of each message in `messages`.
    pub index: HashMap<Uuid, usize>,
    /// The newest message: the current branch runs from the root to it.
    pub head: Option<Uuid>,
    /// The reply streaming now, if any.
    pub active_reply: Option<Uuid>,
    /// Characters of text over all messages.
    pub total_chars: u64,
}

impl Conversation {
    fn message(&self, id: Uuid) -> Option<&Message> {
        self.index.get(&id).map(|&i| &self.messages[i])
    }

    /// The session exists and is not deleted.
    fn live(&self) -> Result<(), ConversationError> {
        if self.id.is_none() || self.deleted {
            return Err(ConversationError::NotFound);
        }
        Ok(())
    }

    /// The session takes new content: not archived, nothing streaming.
    fn open_for_messages(&self) -> Result<(), ConversationError> {
        if self.archived {
            return Err(ConversationError::Archived);
        }
        if self.active_reply.is_some() {
            return Err(ConversationError::ReplyInProgress);
        }
        Ok(())
    }

    fn room_for(&self, messages: usize, chars: usize) -> Result<(), ConversationError> {
        if self.messages.len() + messages > MAX_MESSAGES {
            return Err(ConversationError::SessionFull(format!(
                "at most {MAX_MESSAGES} messages"
            )));
        }
        if self.total_chars as usize + chars > MAX_SESSION_CHARS {
            return Err(ConversationError::SessionFull(format!(
                "at most {MAX_SESSION_CHARS} characters of text"
            )));
        }
        Ok(())
    }

    fn fresh_id(&self, id: Uuid) -> Result<(), ConversationError> {
        if self.index.contains_key(&id) || self.id == Some(id) {
            return Err(ConversationError::DuplicateId(id));
        }
        Ok(())
    }

    /// The active reply, if `reply_id` is it.
    fn active(&self, reply_id: Uuid) -> Result<&Message, ConversationError> {
        match self.active_reply {
            Some(id) if id == reply_id => self
                .message(id)
                .ok_or(ConversationError::ReplyNotActive(reply_id)),
            _ => Err(ConversationError::ReplyNotActive(reply_id)),
        }
    }

    /// A user message and the start of its reply, after `parent_id`.
    fn post(
        &self,
        parent_id: Option<Uuid>,
        message_id: Uuid,
        reply_id: Uuid,
        content: &str,
        provider: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        check_body("content", content, MAX_CONTENT)?;
        check_name("provider", provider, MAX_LABEL)?;
        check_time("posted_at", at)?;
        self.fresh_id(message_id)?;
        self.fresh_id(reply_id)?;
        if message_id == reply_id {
            return Err(ConversationError::DuplicateId(reply_id));
        }
        self.room_for(2, content.chars().count())?;
        Ok(vec![
            ConversationEvent::UserMessagePosted(UserMessagePosted {
                message_id,
                parent_id,
                content: content.to_owned(),
                posted_at: at,
            }),
            self.start_reply(reply_id, message_id, provider, at),
        ])
    }

    fn start_reply(
        &self,
        reply_id: Uuid,
        in_reply_to: Uuid,
        provider: &str,
        at: DateTime<Utc>,
    ) -> ConversationEvent {
        ConversationEvent::ReplyStarted(ReplyStarted {
            reply_id,
            in_reply_to,
            model_id: self.model_id.clone(),
            provider: provider.to_owned(),
            started_at: at,
        })
    }

    /// The current branch, from the root to the newest message.
    pub fn branch(&self) -> Vec<&Message> {
        let mut path = Vec::new();
        let mut next = self.head;
        // Parents are always recorded before their children, so the walk ends; the bound
        // guards against a corrupt log all the same.
        while let Some(id) = next {
            let Some(m) = self.message(id) else { break };
            path.push(m);
            if path.len() > self.messages.len() {
                break;
            }
            next = m.parent_id;
        }
        path.reverse();
        path
    }

    /// The messages to send the provider for the next reply: the system prompt first, then
    /// the user messages and the completed or cancelled replies of the current branch,
    /// oldest first. Failed and streaming replies are left out.
    ///
    /// The oldest messages are dropped until the text fits in `budget_chars`. The system
    /// prompt counts against the budget but is always kept, and so is the newest message
    /// (the provider needs something to answer). After trimming, the list starts with a
    /// user message, as some providers require.
    pub fn prompt(&self, budget_chars: usize) -> Vec<ChatMessage> {
        let mut turns: Vec<ChatMessage> = self
            .branch()
            .into_iter()
            .filter_map(|m| match m.kind {
                MessageKind::User => Some(ChatMessage::new(Role::User, m.text.clone())),
                MessageKind::Reply(ReplyStatus::Completed | ReplyStatus::Cancelled)
                    if !m.text.is_empty() =>
                {
                    Some(ChatMessage::new(Role::Assistant, m.text.clone()))
                }
                MessageKind::Reply(_) => None,
            })
            .collect();
        let system = self
            .system_prompt
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| ChatMessage::new(Role::System, s.clone()));

        let size = |m: &ChatMessage| m.content.chars().count();
        let mut used: usize =
            system.as_ref().map_or(0, size) + turns.iter().map(size).sum::<usize>();
        let mut drop = 0;
        while used > budget_chars && drop + 1 < turns.len() {
            used -= size(&turns[drop]);
            drop += 1;
        }
        while drop + 1 < turns.len() && turns[drop].role != Role::User {
            drop += 1;
        }
        turns.drain(..drop);
        system.into_iter().chain(turns).collect()
    }
}

impl Entity for Conversation {
    type Command = ScopedCommand;
    type Event = ConversationEvent;
    type Error = ConversationError;

    const CATEGORY: &'static str = "conversation";

    fn decide(&self, scoped: &ScopedCommand) -> Result<Vec<ConversationEvent>, ConversationError> {
        if let (Some(owner), Some(user)) = (scoped.owner, self.user_id) {
            if owner != user {
                return Err(ConversationError::NotFound);
            }
        }
        self.decide_in(scoped.organization_id, &scoped.cmd)
    }

    fn evolve(&mut self, event: &ConversationEvent) {
        self.apply(event)
    }
}

impl Conversation {
    /// The rules, for a command sent on behalf of organization `org`. Another
    /// organization's session, and a deleted one, answer as if they did not exist.
    pub fn decide_in(
        &self,
        org: Uuid,
        cmd: &ConversationCommand,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        if self.id.is_some() && (self.organization_id != Some(org) || self.deleted) {
            return Err(ConversationError::NotFound);
        }
        use ConversationCommand as C;
        use ConversationEvent as E;
        match cmd {
            C::Create {
                session_id,
                user_id,
                title,
                model_id,
                system_prompt,
                at,
            } => {
                if self.id.is_some() {
                    return Err(ConversationError::AlreadyExists);
                }
                check_name("title", title, MAX_TITLE)?;
                check_name("model_id", model_id, MAX_MODEL_ID)?;
                if let Some(p) = system_prompt {
                    check_text("system_prompt", p, MAX_SYSTEM_PROMPT)?;
                }
                check_time("created_at", *at)?;
                Ok(vec![E::ChatSessionCreated(ChatSessionCreated {
                    session_id: *session_id,
                    organization_id: org,
                    user_id: *user_id,
                    title: title.trim().to_owned(),
                    model_id: model_id.trim().to_owned(),
                    system_prompt: system_prompt.clone(),
                    created_at: *at,
                })])
            }
            C::Rename { title } => {
                self.live()?;
                check_name("title", title, MAX_TITLE)?;
                let title = title.trim();
                if title == self.title {
                    return Ok(vec![]);
                }
                Ok(vec![E::ChatSessionRenamed(ChatSessionRenamed {
                    title: title.to_owned(),
                })])
            }
            C::SetSystemPrompt { system_prompt } => {
                self.live()?;
                if self.archived {
                    return Err(ConversationError::Archived);
                }
                if let Some(p) = system_prompt {
                    check_text("system_prompt", p, MAX_SYSTEM_PROMPT)?;
                }
                if *system_prompt == self.system_prompt {
                    return Ok(vec![]);
                }
                Ok(vec![E::SystemPromptSet(SystemPromptSet {
                    system_prompt: system_prompt.clone(),
                })])
            }
            C::Archive { at } => {
                self.live()?;
                check_time("at", *at)?;
                if self.archived {
                    return Ok(vec![]);
                }
                Ok(vec![E::ChatSessionArchived(ChatSessionArchived {
                    at: *at,
                })])
            }
            C::Delete { at } => {
                self.live()?;
                check_time("at", *at)?;
                Ok(vec![E::ChatSessionDeleted(ChatSessionDeleted { at: *at })])
            }
            C::PostMessage {
                message_id,
                reply_id,
                content,
                provider,
                at,
            } => {
                self.live()?;
                self.open_for_messages()?;
                self.post(self.head, *message_id, *reply_id, content, provider, *at)
            }
            C::EditMessage {
                edited,
                message_id,
                reply_id,
                content,
                provider,
                at,
            } => {
                self.live()?;
                let original = self
                    .message(*edited)
                    .filter(|m| m.kind == MessageKind::User)
                    .ok_or(ConversationError::UnknownMessage(*edited))?;
                self.open_for_messages()?;
                self.post(
                    original.parent_id,
                    *message_id,
                    *reply_id,
                    content,
                    provider,
                    *at,
                )
            }
            C::Regenerate {
                reply_id,
                provider,
                at,
            } => {
                self.live()?;
                self.open_for_messages()?;
                check_name("provider", provider, MAX_LABEL)?;
                check_time("started_at", *at)?;
                let last = self
                    .head
                    .and_then(|id| self.message(id))
                    .filter(|m| matches!(m.kind, MessageKind::Reply(_)))
                    .ok_or(ConversationError::NothingToRegenerate)?;
                let in_reply_to = last
                    .parent_id
                    .ok_or(ConversationError::NothingToRegenerate)?;
                self.fresh_id(*reply_id)?;
                self.room_for(1, 0)?;
                Ok(vec![self.start_reply(
                    *reply_id,
                    in_reply_to,
                    provider,
                    *at,
                )])
            }
            C::AppendDelta {
                reply_id,
                offset,
                text,
            } => {
                self.live()?;
                let reply = self.active(*reply_id)?;
                if *offset != reply.chars {
                    return Err(ConversationError::OffsetMismatch {
                        expected: reply.chars,
                        got: *offset,
                    });
                }
                if text.is_empty() {
                    return Err(invalid("text", "must not be empty"));
                }
                check_text("text", text, MAX_DELTA)?;
                let chars = text.chars().count();
                if reply.chars as usize + chars > MAX_REPLY_CHARS {
                    return Err(ConversationError::SessionFull(format!(
                        "a reply holds at most {MAX_REPLY_CHARS} characters"
                    )));
                }
                self.room_for(0, chars)?;
                Ok(vec![E::ReplyDeltaAppended(ReplyDeltaAppended {
                    reply_id: *reply_id,
                    offset: *offset,
                    text: text.clone(),
                })])
            }
            C::CompleteReply {
                reply_id,
                finish_reason,
                prompt_tokens,
                completion_tokens,
                estimated,
                at,
            } => {
                self.live()?;
                self.active(*reply_id)?;
                check_text("finish_reason", finish_reason, MAX_LABEL)?;
                for (field, n) in [
                    ("prompt_tokens", prompt_tokens),
                    ("completion_tokens", completion_tokens),
                ] {
                    if *n > MAX_TOKENS {
                        return Err(invalid(field, format!("must be at most {MAX_TOKENS}")));
                    }
                }
                check_time("completed_at", *at)?;
                // OpenAI-compatible servers may send an empty reason; record a word anyway.
                let finish_reason = match finish_reason.trim() {
                    "" => "unknown",
                    r => r,
                };
                Ok(vec![E::ReplyCompleted(ReplyCompleted {
                    reply_id: *reply_id,
                    finish_reason: finish_reason.to_owned(),
                    prompt_tokens: *prompt_tokens,
                    completion_tokens: *completion_tokens,
                    estimated: *estimated,
                    completed_at: *at,
                })])
            }
            C::FailReply {
                reply_id,
                error_class,
                message,
                at,
            } => {
                self.live()?;
                self.active(*reply_id)?;
                check_name("error_class", error_class, MAX_LABEL)?;
                check_text("message", message, MAX_FAILURE_MESSAGE)?;
                check_time("failed_at", *at)?;
                Ok(vec![E::ReplyFailed(ReplyFailed {
                    reply_id: *reply_id,
                    error_class: error_class.trim().to_owned(),
                    message: message.clone(),
                    failed_at: *at,
                })])
            }
            C::CancelReply { reply_id, at } => {
                self.live()?;
                check_time("at", *at)?;
                match (self.active_reply, reply_id) {
                    (Some(active), None) => Ok(vec![E::ReplyCancelled(ReplyCancelled {
                        reply_id: active,
                        at: *at,
                    })]),
                    (Some(active), Some(wanted)) if active == *wanted => {
                        Ok(vec![E::ReplyCancelled(ReplyCancelled {
                            reply_id: active,
                            at: *at,
                        })])
                    }
                    // Nothing streaming, or another reply: stopping is already done.
                    _ => Ok(vec![]),
                }
            }
        }
    }

    fn push(&mut self, message: Message) {
        self.total_chars += message.chars;
        self.index.insert(message.id, self.messages.len());
        self.head = Some(message.id);
        self.messages.push(message);
    }

    fn end_reply(&mut self, reply_id: Uuid, status: ReplyStatus) {
        if let Some(&i) = self.index.get(&reply_id) {
            self.messages[i].kind = MessageKind::Reply(status);
        }
        if self.active_reply == Some(reply_id) {
            self.active_reply = None;
        }
    }

    fn apply(&mut self, event: &ConversationEvent) {
        use ConversationEvent as E;
        match event {
            E::ChatSessionCreated(e) => {
                self.id = Some(e.session_id);
                self.organization_id = Some(e.organization_id);
                self.user_id = Some(e.user_id);
                self.title = e.title.clone();
                self.model_id = e.model_id.clone();
                self.system_prompt = e.system_prompt.clone();
            }
            E::ChatSessionRenamed(e) => self.title = e.title.clone(),
            E::SystemPromptSet(e) => self.system_prompt = e.system_prompt.clone(),
            E::ChatSessionArchived(_) => self.archived = true,
            E::ChatSessionDeleted(_) => {
                // A tombstone: keep only what answers NotFound to the organization.
                let (id, org) = (self.id, self.organization_id);
                *self = Conversation {
                    id,
                    organization_id: org,
                    deleted: true,
                    ..Conversation::default()
                };
            }
            E::UserMessagePosted(e) => {
                let chars = e.content.chars().count() as u64;
                self.push(Message {
                    id: e.message_id,
                    parent_id: e.parent_id,
                    kind: MessageKind::User,
                    text: e.content.clone(),
                    chars,
                });
            }
            E::ReplyStarted(e) => {
                self.push(Message {
                    id: e.reply_id,
                    parent_id: Some(e.in_reply_to),
                    kind: MessageKind::Reply(ReplyStatus::Streaming),
                    text: String::new(),
                    chars: 0,
                });
                self.active_reply = Some(e.reply_id);
            }
            E::ReplyDeltaAppended(e) => {
                if let Some(&i) = self.index.get(&e.reply_id) {
                    let chars = e.text.chars().count() as u64;
                    let m = &mut self.messages[i];
                    m.text.push_str(&e.text);
                    m.chars += chars;
                    self.total_chars += chars;
                }
            }
            E::ReplyCompleted(e) => self.end_reply(e.reply_id, ReplyStatus::Completed),
            E::ReplyFailed(e) => self.end_reply(e.reply_id, ReplyStatus::Failed),
            E::ReplyCancelled(e) => self.end_reply(e.reply_id, ReplyStatus::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: Uuid = Uuid::from_u128(1);
    const OTHER_ORG: Uuid = Uuid::from_u128(2);
    const SESSION: Uuid = Uuid::from_u128(10);
    const OWNER: Uuid = Uuid::from_u128(11);
    const M1: Uuid = Uuid::from_u128(21);
    const R1: Uuid = Uuid::from_u128(22);
    const M2: Uuid = Uuid::from_u128(23);
    const R2: Uuid = Uuid::from_u128(24);
    const M3: Uuid = Uuid::from_u128(25);
    const R3: Uuid = Uuid::from_u128(26);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        at("2026-11-21T09:00:00Z")
    }

    fn given(events: &[ConversationEvent]) -> Conversation {
        let mut state = Conversation::default();
        for e in events {
            state.evolve(e);
        }
        state
    }

    fn when(
        state: &Conversation,
        cmd: ConversationCommand,
    ) -> Result<Vec<ConversationEvent>, ConversationError> {
        state.decide(&ScopedCommand {
            organization_id: ORG,
            owner: Some(OWNER),
            cmd,
        })
    }

    fn created(system_prompt: Option<&str>) -> ConversationEvent {
        ConversationEvent::ChatSessionCreated(ChatSessionCreated {
            session_id: SESSION,
            organization_id: ORG,
            user_id: OWNER,
            title: "Trip to Lisbon".into(),
            model_id: "gpt-4o-mini".into(),
            system_prompt: system_prompt.map(str::to_owned),
            created_at: now(),
        })
    }

    fn posted(id: Uuid, parent_id: Option<Uuid>, content: &str) -> ConversationEvent {
        ConversationEvent::UserMessagePosted(UserMessagePosted {
            message_id: id,
            parent_id,
            content: content.into(),
            posted_at: now(),
        })
    }

    fn started(reply_id: Uuid, in_reply_to: Uuid) -> ConversationEvent {
        ConversationEvent::ReplyStarted(ReplyStarted {
            reply_id,
            in_reply_to,
            model_id: "gpt-4o-mini".into(),
            provider: "openai".into(),
            started_at: now(),
        })
    }

    fn delta(reply_id: Uuid, offset: u64, text: &str) -> ConversationEvent {
        ConversationEvent::ReplyDeltaAppended(ReplyDeltaAppended {
            reply_id,
            offset,
            text: text.into(),
        })
    }

    fn completed(reply_id: Uuid) -> ConversationEvent {
        ConversationEvent::ReplyCompleted(ReplyCompleted {
            reply_id,
            finish_reason: "stop".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            estimated: false,
            completed_at: now(),
        })
    }

    /// A session with one exchange: "Hi" answered "Hello!".
    fn one_exchange() -> Vec<ConversationEvent> {
        vec![
            created(None),
            posted(M1, None, "Hi"),
            started(R1, M1),
            delta(R1, 0, "Hello!"),
            completed(R1),
        ]
    }

    fn post(message_id: Uuid, reply_id: Uuid, content: &str) -> ConversationCommand {
        ConversationCommand::PostMessage {
            message_id,
            reply_id,
            content: content.into(),
            provider: "openai".into(),
            at: now(),
        }
    }

    fn append(reply_id: Uuid, offset: u64, text: &str) -> ConversationCommand {
        ConversationCommand::AppendDelta {
            reply_id,
            offset,
            text: text.into(),
        }
    }

    fn create(title: &str, model_id: &str, system_prompt: Option<String>) -> ConversationCommand {
        ConversationCommand::Create {
            session_id: SESSION,
            user_id: OWNER,
            title: title.into(),
            model_id: model_id.into(),
            system_prompt,
            at: now(),
        }
    }

    fn field_of(result: Result<Vec<ConversationEvent>, ConversationError>) -> &'static str {
        match result {
            Err(ConversationError::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    /// Applies the events a command produced, for multi-step scenarios.
    fn then_apply(mut state: Conversation, events: &[ConversationEvent]) -> Conversation {
        for e in events {
            state.evolve(e);
        }
        state
    }

    #[test]
    fn a_new_session_is_created_with_a_trimmed_title_in_the_callers_organization() {
        let events = when(
            &given(&[]),
            create("  Trip to Lisbon ", "gpt-4o-mini", Some("Be brief.".into())),
        )
        .unwrap();
        assert_eq!(events, vec![created(Some("Be brief."))]);
    }

    #[test]
    fn a_session_cannot_be_created_twice() {
        assert_eq!(
            when(&given(&[created(None)]), create("Again", "m", None)),
            Err(ConversationError::AlreadyExists)
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let empty = given(&[]);
        assert_eq!(field_of(when(&empty, create("  ", "m", None))), "title");
        assert_eq!(
            field_of(when(&empty, create(&"t".repeat(201), "m", None))),
            "title"
        );
        assert_eq!(field_of(when(&empty, create("t", "", None))), "model_id");
        assert_eq!(
            field_of(when(&empty, create("t", &"m".repeat(101), None))),
            "model_id"
        );
        assert_eq!(
            field_of(when(
                &empty,
                create("t", "m", Some("p".repeat(MAX_SYSTEM_PROMPT + 1)))
            )),
            "system_prompt"
        );
        let session = given(&[created(None)]);
        assert_eq!(field_of(when(&session, post(M1, R1, ""))), "content");
        assert_eq!(
            field_of(when(&session, post(M1, R1, &"x".repeat(MAX_CONTENT + 1)))),
            "content"
        );
        assert_eq!(field_of(when(&session, post(M1, R1, "a\u{0}b"))), "content");
        assert!(when(&session, post(M1, R1, &"x".repeat(MAX_CONTENT))).is_ok());
    }

    #[test]
    fn a_session_is_renamed_and_the_same_title_records_nothing() {
        let state = given(&[created(None)]);
        assert_eq!(
            when(
                &state,
                ConversationCommand::Rename {
                    title: " Lisbon ".into()
                }
            ),
            Ok(vec![ConversationEvent::ChatSessionRenamed(
                ChatSessionRenamed {
                    title: "Lisbon".into()
                }
            )])
        );
        assert_eq!(
            when(
                &state,
                ConversationCommand::Rename {
                    title: "Trip to Lisbon".into()
                }
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn an_archived_session_takes_no_new_messages_but_can_be_renamed() {
        let state = given(&[
            created(None),
            ConversationEvent::ChatSessionArchived(ChatSessionArchived { at: now() }),
        ]);
        assert_eq!(
            when(&state, post(M1, R1, "Hi")),
            Err(ConversationError::Archived)
        );
        assert_eq!(
            when(&state, ConversationCommand::Archive { at: now() }),
            Ok(vec![])
        );
        assert!(when(
            &state,
            ConversationCommand::Rename {
                title: "Old trip".into()
            }
        )
        .is_ok());
    }

    #[test]
    fn after_deletion_everything_is_not_found() {
        let mut events = one_exchange();
        let delete = when(&given(&events), ConversationCommand::Delete { at: now() }).unwrap();
        assert_eq!(
            delete,
            vec![ConversationEvent::ChatSessionDeleted(ChatSessionDeleted {
                at: now()
            })]
        );
        events.extend(delete);
        let state = given(&events);
        assert!(state.messages.is_empty(), "the tombstone keeps no text");
        for cmd in [
            post(M2, R2, "Hello?"),
            ConversationCommand::Rename { title: "x".into() },
            ConversationCommand::Delete { at: now() },
            create("Again", "m", None),
        ] {
            assert_eq!(when(&state, cmd), Err(ConversationError::NotFound));
        }
    }

    #[test]
    fn another_organizations_session_is_not_found() {
        let state = given(&one_exchange());
        assert_eq!(
            state.decide(&ScopedCommand {
                organization_id: OTHER_ORG,
                owner: Some(OWNER),
                cmd: post(M2, R2, "Let me in"),
            }),
            Err(ConversationError::NotFound)
        );
        assert_eq!(
            state.decide(&ScopedCommand {
                organization_id: OTHER_ORG,
                owner: None,
                cmd: ConversationCommand::Rename { title: "x".into() },
            }),
            Err(ConversationError::NotFound)
        );
    }

    #[test]
    fn another_members_command_on_a_session_is_not_found_but_the_workers_report_is_taken() {
        let mut state = given(&one_exchange());
        let other_member = Uuid::from_u128(0x99);
        assert_eq!(
            state.decide(&ScopedCommand {
                organization_id: ORG,
                owner: Some(other_member),
                cmd: ConversationCommand::Rename {
                    title: "mine".into()
                },
            }),
            Err(ConversationError::NotFound)
        );
        let started = when(&state, post(M2, R2, "Next")).unwrap();
        for e in &started {
            state.evolve(e);
        }
        let report = state.decide(&ScopedCommand {
            organization_id: ORG,
            owner: None,
            cmd: ConversationCommand::AppendDelta {
                reply_id: R2,
                offset: 0,
                text: "ok".into(),
            },
        });
        assert_eq!(report.map(|e| e.len()), Ok(1));
    }

    #[test]
    fn posting_a_message_records_it_and_starts_the_reply_with_the_sessions_model() {
        let state = given(&[created(None)]);
        assert_eq!(
            when(&state, post(M1, R1, "Hi")),
            Ok(vec![posted(M1, None, "Hi"), started(R1, M1)])
        );
        let state = given(&one_exchange());
        assert_eq!(
            when(&state, post(M2, R2, "And tomorrow?")),
            Ok(vec![posted(M2, Some(R1), "And tomorrow?"), started(R2, M2)]),
            "a new message follows the newest reply"
        );
    }

    #[test]
    fn a_second_message_while_a_reply_is_streaming_is_refused() {
        let state = given(&[created(None), posted(M1, None, "Hi"), started(R1, M1)]);
        assert_eq!(
            when(&state, post(M2, R2, "Are you there?")),
            Err(ConversationError::ReplyInProgress)
        );
    }

    #[test]
    fn deltas_are_accepted_in_order_and_offsets_count_characters() {
        let state = given(&[created(None), posted(M1, None, "Hi"), started(R1, M1)]);
        let first = when(&state, append(R1, 0, "Olá, ")).unwrap();
        assert_eq!(first, vec![delta(R1, 0, "Olá, ")]);
        let state = then_apply(state, &first);
        let second = when(&state, append(R1, 5, "mundo")).unwrap();
        let state = then_apply(state, &second);
        assert_eq!(state.message(R1).unwrap().text, "Olá, mundo");
    }

    #[test]
    fn a_duplicate_or_out_of_order_delta_is_refused() {
        let state = given(&[
            created(None),
            posted(M1, None, "Hi"),
            started(R1, M1),
            delta(R1, 0, "Hello"),
        ]);
        assert_eq!(
            when(&state, append(R1, 0, "Hello")),
            Err(ConversationError::OffsetMismatch {
                expected: 5,
                got: 0
            })
        );
        assert_eq!(
            when(&state, append(R1, 9, "later")),
            Err(ConversationError::OffsetMismatch {
                expected: 5,
                got: 9
            })
        );
        assert_eq!(
            when(&state, append(R2, 5, "!")),
            Err(ConversationError::ReplyNotActive(R2))
        );
    }

    #[test]
    fn a_completed_reply_frees_the_session_for_the_next_message() {
        let state = given(&[
            created(None),
            posted(M1, None, "Hi"),
            started(R1, M1),
            delta(R1, 0, "Hello!"),
        ]);
        let events = when(
            &state,
            ConversationCommand::CompleteReply {
                reply_id: R1,
                finish_reason: "".into(),
                prompt_tokens: 10,
                completion_tokens: 5,
                estimated: true,
                at: now(),
            },
        )
        .unwrap();
        assert!(matches!(
            &events[..],
            [ConversationEvent::ReplyCompleted(ReplyCompleted { finish_reason, estimated: true, .. })]
                if finish_reason == "unknown"
        ));
        let state = then_apply(state, &events);
        assert_eq!(state.active_reply, None);
        assert!(when(&state, post(M2, R2, "Thanks")).is_ok());
        assert_eq!(
            when(&state, append(R1, 6, "more")),
            Err(ConversationError::ReplyNotActive(R1)),
            "a finished reply takes no more deltas"
        );
    }

    #[test]
    fn a_failed_reply_records_the_error_class_and_is_left_out_of_the_prompt() {
        let state = given(&[created(None), posted(M1, None, "Hi"), started(R1, M1)]);
        let events = when(
            &state,
            ConversationCommand::FailReply {
                reply_id: R1,
                error_class: "server_error".into(),
                message: "provider answered 502".into(),
                at: now(),
            },
        )
        .unwrap();
        assert_eq!(
            events,
            vec![ConversationEvent::ReplyFailed(ReplyFailed {
                reply_id: R1,
                error_class: "server_error".into(),
                message: "provider answered 502".into(),
                failed_at: now(),
            })]
        );
        let state = then_apply(state, &events);
        assert_eq!(state.active_reply, None);
        assert_eq!(state.prompt(1000), vec![ChatMessage::new(Role::User, "Hi")]);
    }

    #[test]
    fn cancelling_mid_reply_keeps_the_partial_text() {
        let state = given(&[
            created(None),
            posted(M1, None, "Tell me a story"),
            started(R1, M1),
            delta(R1, 0, "Once upon"),
        ]);
        let events = when(
            &state,
            ConversationCommand::CancelReply {
                reply_id: None,
                at: now(),
            },
        )
        .unwrap();
        assert_eq!(
            events,
            vec![ConversationEvent::ReplyCancelled(ReplyCancelled {
                reply_id: R1,
                at: now()
            })]
        );
        let state = then_apply(state, &events);
        let reply = state.message(R1).unwrap();
        assert_eq!(reply.kind, MessageKind::Reply(ReplyStatus::Cancelled));
        assert_eq!(reply.text, "Once upon");
        assert_eq!(
            state.prompt(1000),
            vec![
                ChatMessage::new(Role::User, "Tell me a story"),
                ChatMessage::new(Role::Assistant, "Once upon"),
            ]
        );
        assert_eq!(
            when(&state, append(R1, 9, " a time")),
            Err(ConversationError::ReplyNotActive(R1)),
            "the worker learns to stop"
        );
    }

    #[test]
    fn cancelling_with_nothing_streaming_records_nothing() {
        let state = given(&one_exchange());
        for reply_id in [None, Some(R1)] {
            assert_eq!(
                when(
                    &state,
                    ConversationCommand::CancelReply {
                        reply_id,
                        at: now()
                    }
                ),
                Ok(vec![])
            );
        }
    }

    #[test]
    fn regenerating_starts_a_new_reply_to_the_same_message_and_keeps_the_old_one() {
        let state = given(&one_exchange());
        let events = when(
            &state,
            ConversationCommand::Regenerate {
                reply_id: R2,
                provider: "openai".into(),
                at: now(),
            },
        )
        .unwrap();
        assert_eq!(events, vec![started(R2, M1)]);
        let state = then_apply(state, &events);
        assert_eq!(state.message(R1).unwrap().text, "Hello!", "history stays");
        assert_eq!(
            state.prompt(1000),
            vec![ChatMessage::new(Role::User, "Hi")],
            "the new reply's prompt leaves the old reply out"
        );
        assert_eq!(
            when(
                &state,
                ConversationCommand::Regenerate {
                    reply_id: R3,
                    provider: "openai".into(),
                    at: now(),
                }
            ),
            Err(ConversationError::ReplyInProgress)
        );
    }

    #[test]
    fn regenerating_an_empty_session_is_refused() {
        assert_eq!(
            when(
                &given(&[created(None)]),
                ConversationCommand::Regenerate {
                    reply_id: R1,
                    provider: "openai".into(),
                    at: now(),
                }
            ),
            Err(ConversationError::NothingToRegenerate)
        );
    }

    #[test]
    fn editing_a_message_forks_from_its_parent_and_the_prompt_follows_the_new_branch() {
        let mut history = one_exchange();
        history.extend([
            posted(M2, Some(R1), "Plan day two"),
            started(R2, M2),
            delta(R2, 0, "Sintra."),
            completed(R2),
        ]);
        let state = given(&history);
        let events = when(
            &state,
            ConversationCommand::EditMessage {
                edited: M2,
                message_id: M3,
                reply_id: R3,
                content: "Plan day three".into(),
                provider: "openai".into(),
                at: now(),
            },
        )
        .unwrap();
        assert_eq!(
            events,
            vec![posted(M3, Some(R1), "Plan day three"), started(R3, M3)]
        );
        let state = then_apply(state, &events);
        assert_eq!(
            state.messages.len(),
            6,
            "the edited message stays in history"
        );
        assert_eq!(
            state.prompt(1000),
            vec![
                ChatMessage::new(Role::User, "Hi"),
                ChatMessage::new(Role::Assistant, "Hello!"),
                ChatMessage::new(Role::User, "Plan day three"),
            ]
        );
    }

    #[test]
    fn editing_a_reply_or_an_unknown_message_is_refused() {
        let state = given(&one_exchange());
        for edited in [R1, Uuid::from_u128(999)] {
            assert_eq!(
                when(
                    &state,
                    ConversationCommand::EditMessage {
                        edited,
                        message_id: M2,
                        reply_id: R2,
                        content: "x".into(),
                        provider: "openai".into(),
                        at: now(),
                    }
                ),
                Err(ConversationError::UnknownMessage(edited))
            );
        }
    }

    #[test]
    fn a_reused_message_id_is_refused() {
        let state = given(&one_exchange());
        assert_eq!(
            when(&state, post(M1, R2, "again")),
            Err(ConversationError::DuplicateId(M1))
        );
    }

    #[test]
    fn the_prompt_drops_the_oldest_messages_to_fit_the_budget_and_keeps_the_system_prompt() {
        let mut history = vec![created(Some("Be brief."))];
        history.extend([
            posted(M1, None, "first question"),
            started(R1, M1),
            delta(R1, 0, "first answer"),
            completed(R1),
            posted(M2, Some(R1), "second"),
            started(R2, M2),
            delta(R2, 0, "reply"),
            completed(R2),
            posted(M3, Some(R2), "third"),
            started(R3, M3),
        ]);
        let state = given(&history);
        let full = state.prompt(usize::MAX);
        assert_eq!(full.len(), 6, "system, four turns and the newest message");
        assert_eq!(full[0], ChatMessage::new(Role::System, "Be brief."));

        // "Be brief." (9) + "second" (6) + "reply" (5) + "third" (5) = 25.
        let trimmed = state.prompt(25);
        assert_eq!(
            trimmed,
            vec![
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "second"),
                ChatMessage::new(Role::Assistant, "reply"),
                ChatMessage::new(Role::User, "third"),
            ]
        );
        // One character less drops "second"; the orphaned reply goes too, so that the
        // prompt starts with a user turn.
        assert_eq!(
            state.prompt(24),
            vec![
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "third"),
            ]
        );
        assert_eq!(
            state.prompt(0),
            vec![
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "third"),
            ],
            "the system prompt and the newest message always stay"
        );
        assert_eq!(state, given(&history), "building a prompt changes nothing");
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_messages() {
        let mut state = given(&[created(None)]);
        let mut parent = None;
        for i in 0..(MAX_MESSAGES as u128 / 2) {
            let (m, r) = (Uuid::from_u128(1000 + 2 * i), Uuid::from_u128(1001 + 2 * i));
            state.evolve(&posted(m, parent, "x"));
            state.evolve(&started(r, m));
            state.evolve(&completed(r));
            parent = Some(r);
        }
        assert!(matches!(
            when(&state, post(M1, R1, "one more")),
            Err(ConversationError::SessionFull(_))
        ));
    }

    #[test]
    fn a_reply_past_its_length_limit_is_refused() {
        let state = given(&[
            created(None),
            posted(M1, None, "Hi"),
            started(R1, M1),
            delta(R1, 0, &"a".repeat(MAX_REPLY_CHARS - 1)),
        ]);
        assert!(matches!(
            when(&state, append(R1, MAX_REPLY_CHARS as u64 - 1, "bc")),
            Err(ConversationError::SessionFull(_))
        ));
        assert!(when(&state, append(R1, MAX_REPLY_CHARS as u64 - 1, "b")).is_ok());
    }

    #[test]
    fn the_state_survives_a_snapshot_round_trip() {
        let mut history = one_exchange();
        history.extend([posted(M2, Some(R1), "More"), started(R2, M2)]);
        let state = given(&history);
        let json = serde_json::to_value(&state).unwrap();
        let back: Conversation = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            when(&back, post(M3, R3, "x")),
            Err(ConversationError::ReplyInProgress)
        );
    }

    #[test]
    fn a_delta_with_control_characters_is_refused() {
        let state = given(&[created(None), posted(M1, None, "Hi"), started(R1, M1)]);
        assert_eq!(field_of(when(&state, append(R1, 0, "a\u{1b}[0m"))), "text");
        assert_eq!(field_of(when(&state, append(R1, 0, ""))), "text");
    }
}
