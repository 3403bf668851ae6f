//! Events of a FlowMind chat session (entity kind `conversation`): the session itself, the
//! user's messages and the assistant's streamed replies.
//!
//! History is append-only. Editing a user message is a new [`UserMessagePosted`] whose
//! `parent_id` forks the conversation; regenerating a reply is a new [`ReplyStarted`] for the
//! same user message. A reply's text is the concatenation of its [`ReplyDeltaAppended`]
//! pieces, which the provider worker coalesces (every few tens of milliseconds or tokens,
//! never one event per token); `offset` lets a reader check it missed nothing. The field names of the legacy
//! `chat_sessions` table (`user_id`, `title`, `model_id`, `created_at`) are kept.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// The conversation enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum ConversationEvent {
    ChatSessionCreated(ChatSessionCreated),
    ChatSessionRenamed(ChatSessionRenamed),
    SystemPromptSet(SystemPromptSet),
    ChatSessionArchived(ChatSessionArchived),
    ChatSessionDeleted(ChatSessionDeleted),
    UserMessagePosted(UserMessagePosted),
    ReplyStarted(ReplyStarted),
    ReplyDeltaAppended(ReplyDeltaAppended),
    ReplyCompleted(ReplyCompleted),
    ReplyFailed(ReplyFailed),
    ReplyCancelled(ReplyCancelled),
}

/// A chat session was opened by `user_id` (its owner) in an organization.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChatSessionCreated {
    pub session_id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub model_id: String,
    pub system_prompt: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChatSessionRenamed {
    pub title: String,
}

/// The system prompt sent first with every reply; `None` removes it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SystemPromptSet {
    pub system_prompt: Option<String>,
}

/// The session is read-only from now on: no new messages or replies.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChatSessionArchived {
    pub at: DateTime<Utc>,
}

/// Tombstone: the session is gone for every reader. It carries no text on purpose.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChatSessionDeleted {
    pub at: DateTime<Utc>,
}

/// A user message. `parent_id` is the message it follows (`None` at the root); a message
/// whose parent already has a follower starts a new branch (an edit).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct UserMessagePosted {
    pub message_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub content: String,
    pub posted_at: DateTime<Utc>,
}

/// An assistant reply to the user message `in_reply_to` began streaming.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReplyStarted {
    pub reply_id: Uuid,
    pub in_reply_to: Uuid,
    pub model_id: String,
    pub provider: String,
    pub started_at: DateTime<Utc>,
}

/// A coalesced piece of a reply. `offset` counts the characters (Unicode scalar values) of
/// the reply before this piece.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReplyDeltaAppended {
    pub reply_id: Uuid,
    pub offset: u64,
    pub text: String,
}

/// A reply finished. `finish_reason` is the provider's word (`stop`, `length`, ...);
/// `estimated` is true when the provider reported no usage and the counts were estimated.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReplyCompleted {
    pub reply_id: Uuid,
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub estimated: bool,
    pub completed_at: DateTime<Utc>,
}

/// A reply stopped on a provider error; `error_class` is the provider layer's classification
/// (`timeout`, `rate_limited`, `server_error`, ...).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReplyFailed {
    pub reply_id: Uuid,
    pub error_class: String,
    pub message: String,
    pub failed_at: DateTime<Utc>,
}

/// The user stopped a reply. What was produced so far stays in its deltas.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReplyCancelled {
    pub reply_id: Uuid,
    pub at: DateTime<Utc>,
}

impl EventFamily for ConversationEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ConversationEvent::ChatSessionCreated(_) => "ChatSessionCreated",
            ConversationEvent::ChatSessionRenamed(_) => "ChatSessionRenamed",
            ConversationEvent::SystemPromptSet(_) => "SystemPromptSet",
            ConversationEvent::ChatSessionArchived(_) => "ChatSessionArchived",
            ConversationEvent::ChatSessionDeleted(_) => "ChatSessionDeleted",
            ConversationEvent::UserMessagePosted(_) => "UserMessagePosted",
            ConversationEvent::ReplyStarted(_) => "ReplyStarted",
            ConversationEvent::ReplyDeltaAppended(_) => "ReplyDeltaAppended",
            ConversationEvent::ReplyCompleted(_) => "ReplyCompleted",
            ConversationEvent::ReplyFailed(_) => "ReplyFailed",
            ConversationEvent::ReplyCancelled(_) => "ReplyCancelled",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        use ConversationEvent as E;
        Ok(match t {
            "ChatSessionCreated" => E::ChatSessionCreated(payload(t, data)?),
            "ChatSessionRenamed" => E::ChatSessionRenamed(payload(t, data)?),
            "SystemPromptSet" => E::SystemPromptSet(payload(t, data)?),
            "ChatSessionArchived" => E::ChatSessionArchived(payload(t, data)?),
            "ChatSessionDeleted" => E::ChatSessionDeleted(payload(t, data)?),
            "UserMessagePosted" => E::UserMessagePosted(payload(t, data)?),
            "ReplyStarted" => E::ReplyStarted(payload(t, data)?),
            "ReplyDeltaAppended" => E::ReplyDeltaAppended(payload(t, data)?),
            "ReplyCompleted" => E::ReplyCompleted(payload(t, data)?),
            "ReplyFailed" => E::ReplyFailed(payload(t, data)?),
            "ReplyCancelled" => E::ReplyCancelled(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every conversation event type, for filters and the sample tests.
pub const CONVERSATION_EVENT_TYPES: [&str; 11] = [
    "ChatSessionCreated",
    "ChatSessionRenamed",
    "SystemPromptSet",
    "ChatSessionArchived",
    "ChatSessionDeleted",
    "UserMessagePosted",
    "ReplyStarted",
    "ReplyDeltaAppended",
    "ReplyCompleted",
    "ReplyFailed",
    "ReplyCancelled",
];
