//! Events of FluxStudio team messaging (stream category `channel`): an organization's
//! channels (public, or private with members) and direct conversations between two or more
//! users, with their messages, threads, edits, deletions, reactions and read marks.
//!
//! A deleted message keeps no text: [`MessageDeleted`] names the message only, and readers
//! drop the text they held. [`MessagePosted::notify`] records who the message notifies (the
//! mentioned users, the other members of a direct conversation, the author of the thread's
//! first message), as the decision made it, so that notifications are a plain projection.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// Who may read a channel.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Every member of the organization reads it; writers post.
    Public,
    /// Only its members.
    Private,
    /// A direct conversation: a fixed set of two or more users.
    Direct,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::Private => "private",
            ChannelKind::Direct => "direct",
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum MessagingEvent {
    ChannelCreated(ChannelCreated),
    ChannelUpdated(ChannelUpdated),
    ChannelArchived(ChannelArchived),
    ChannelMemberAdded(ChannelMemberAdded),
    ChannelMemberRemoved(ChannelMemberRemoved),
    MessagePosted(MessagePosted),
    MessageEdited(MessageEdited),
    MessageDeleted(MessageDeleted),
    ReactionAdded(ReactionChanged),
    ReactionRemoved(ReactionChanged),
    ReadMarkMoved(ReadMarkMoved),
}

/// A channel or direct conversation began. `name` is `None` for a direct conversation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChannelCreated {
    pub channel_id: Uuid,
    pub organization_id: Uuid,
    pub kind: ChannelKind,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: Uuid,
    /// The members of a private channel or direct conversation (the creator included); for
    /// a public channel, its creator.
    pub members: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChannelUpdated {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub updated_by: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChannelArchived {
    pub archived_by: Uuid,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChannelMemberAdded {
    pub user_id: Uuid,
    pub added_by: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ChannelMemberRemoved {
    pub user_id: Uuid,
    pub removed_by: Uuid,
}

/// What a message carries along (schema version 2 of [`MessagePosted`]): a file of the
/// organization's file store, named by its id, or a link to a file kept elsewhere.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Attachment {
    File(FileAttachment),
    Link(LinkAttachment),
}

/// A stored file, by id only: its name, type and size are the file's own, read when the
/// message is read, and shown only to readers who may read the file. Nothing of the file
/// is copied into the message.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileAttachment {
    pub file_id: Uuid,
}

/// A file kept elsewhere: what the sender said of it and its URL (the only kind of
/// attachment of schema version 1).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkAttachment {
    pub name: String,
    pub size: u64,
    pub content_type: String,
    pub url: String,
}

/// A message. `parent_id` makes it a reply in that message's thread. `client_message_id` is
/// the sender's own id for it (a socket's idempotency key).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MessagePosted {
    pub message_id: Uuid,
    pub author_id: Uuid,
    pub text: String,
    pub parent_id: Option<Uuid>,
    pub mentions: Vec<Uuid>,
    pub attachments: Vec<Attachment>,
    pub notify: Vec<Uuid>,
    pub client_message_id: Option<String>,
    pub posted_at: DateTime<Utc>,
}

/// `MessagePosted` as schema version 1 stored it, when every attachment was a link. Never
/// written any more; it documents the stored shape (the catalogue shows its schema). A
/// version 1 payload is a valid version 2 payload, so its upcaster changes nothing.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MessagePostedV1 {
    pub message_id: Uuid,
    pub author_id: Uuid,
    pub text: String,
    pub parent_id: Option<Uuid>,
    pub mentions: Vec<Uuid>,
    pub attachments: Vec<LinkAttachment>,
    pub notify: Vec<Uuid>,
    pub client_message_id: Option<String>,
    pub posted_at: DateTime<Utc>,
}

/// A new text for a message; earlier texts stay in the log as the edit history.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MessageEdited {
    pub message_id: Uuid,
    pub text: String,
    pub mentions: Vec<Uuid>,
    pub edited_by: Uuid,
    pub edited_at: DateTime<Utc>,
}

/// Tombstone: the message is gone for every reader. It carries no text on purpose.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MessageDeleted {
    pub message_id: Uuid,
    pub deleted_by: Uuid,
    pub deleted_at: DateTime<Utc>,
}

/// A user's reaction with one emoji, added or taken back.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReactionChanged {
    pub message_id: Uuid,
    pub user_id: Uuid,
    pub emoji: String,
}

/// A user has read the channel up to and including its message number `seq` (messages
/// are numbered from 1 in the order they were posted).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ReadMarkMoved {
    pub user_id: Uuid,
    pub seq: u64,
}

impl EventFamily for MessagingEvent {
    fn schema_version(event_type: &str) -> i32 {
        match event_type {
            "MessagePosted" => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, version: i32, data: Value) -> Result<Value, DecodeError> {
        match (event_type, version) {
            // v1 → v2: version 2 adds file attachments; a version 1 attachment is a link,
            // which version 2 reads as it is.
            ("MessagePosted", 1) => Ok(data),
            (t, v) if v == Self::schema_version(t) => Ok(data),
            (t, v) => Err(DecodeError::UnknownVersion {
                event_type: t.to_owned(),
                version: v,
            }),
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            MessagingEvent::ChannelCreated(_) => "ChannelCreated",
            MessagingEvent::ChannelUpdated(_) => "ChannelUpdated",
            MessagingEvent::ChannelArchived(_) => "ChannelArchived",
            MessagingEvent::ChannelMemberAdded(_) => "ChannelMemberAdded",
            MessagingEvent::ChannelMemberRemoved(_) => "ChannelMemberRemoved",
            MessagingEvent::MessagePosted(_) => "MessagePosted",
            MessagingEvent::MessageEdited(_) => "MessageEdited",
            MessagingEvent::MessageDeleted(_) => "MessageDeleted",
            MessagingEvent::ReactionAdded(_) => "ReactionAdded",
            MessagingEvent::ReactionRemoved(_) => "ReactionRemoved",
            MessagingEvent::ReadMarkMoved(_) => "ReadMarkMoved",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        use MessagingEvent as E;
        Ok(match t {
            "ChannelCreated" => E::ChannelCreated(payload(t, data)?),
            "ChannelUpdated" => E::ChannelUpdated(payload(t, data)?),
            "ChannelArchived" => E::ChannelArchived(payload(t, data)?),
            "ChannelMemberAdded" => E::ChannelMemberAdded(payload(t, data)?),
            "ChannelMemberRemoved" => E::ChannelMemberRemoved(payload(t, data)?),
            "MessagePosted" => E::MessagePosted(payload(t, data)?),
            "MessageEdited" => E::MessageEdited(payload(t, data)?),
            "MessageDeleted" => E::MessageDeleted(payload(t, data)?),
            "ReactionAdded" => E::ReactionAdded(payload(t, data)?),
            "ReactionRemoved" => E::ReactionRemoved(payload(t, data)?),
            "ReadMarkMoved" => E::ReadMarkMoved(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every messaging event type, for filters and the sample tests.
pub const MESSAGING_EVENT_TYPES: [&str; 11] = [
    "ChannelCreated",
    "ChannelUpdated",
    "ChannelArchived",
    "ChannelMemberAdded",
    "ChannelMemberRemoved",
    "MessagePosted",
    "MessageEdited",
    "MessageDeleted",
    "ReactionAdded",
    "ReactionRemoved",
    "ReadMarkMoved",
];

/// Events of a user's notification inbox (stream category `inbox`, one stream per user).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum InboxEvent {
    NotificationsRead(NotificationsRead),
}

/// The user read these notifications, or with `up_to`, every notification recorded at or
/// before that log position.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct NotificationsRead {
    pub notification_ids: Vec<Uuid>,
    pub up_to: Option<i64>,
    pub read_at: DateTime<Utc>,
}

impl EventFamily for InboxEvent {
    fn event_type(&self) -> &'static str {
        match self {
            InboxEvent::NotificationsRead(_) => "NotificationsRead",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        match event_type {
            "NotificationsRead" => Ok(InboxEvent::NotificationsRead(payload(event_type, data)?)),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}
