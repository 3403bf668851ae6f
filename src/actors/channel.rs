//! FluxStudio team messaging (stream category `channel`): one actor per channel or direct
//! conversation, holding who may read and write it and, per message, what the rules need
//! (author, thread, deletion, reactions).
//!
//! The rules:
//! - **Reading.** A public channel is read by every member of its organization; a private
//!   channel or a direct conversation only by its members. Anyone else gets `NotFound`, for
//!   every command, as if it did not exist.
//! - **Writing.** Posting and reacting need a writer (an organization `member` or `admin`):
//!   viewers read public channels but cannot post. An archived channel takes nothing new.
//! - **Edits and deletions.** Only the author edits a message; the author or an organization
//!   admin deletes it. A deleted message takes no edit, reply or reaction.
//! - **Threads.** A reply names its parent; a reply to a reply joins the parent's thread (one
//!   level, as the messaging UI shows it).
//! - **Notifications** are decided here and recorded in the message: the mentioned users
//!   (who must be able to read the channel), the other members of a direct conversation,
//!   and the author of the thread's first message, never the author.
//! - **Reactions** count once per user per emoji: adding one twice, or removing one that is
//!   not there, records nothing.
//! - **Read marks** only move forward.
//! - **Bounded**: at most [`MAX_MEMBERS`] members, [`MAX_DIRECT`] users in a direct
//!   conversation, [`MAX_MESSAGES`] messages, [`MAX_EMOJIS`] emojis per message.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::identity::Role;
use universal_events::messaging::{
    Attachment, ChannelArchived, ChannelCreated, ChannelKind, ChannelMemberAdded,
    ChannelMemberRemoved, ChannelUpdated, MessageDeleted, MessageEdited, MessagePosted,
    MessagingEvent, ReactionChanged, ReadMarkMoved,
};
use uuid::Uuid;

use super::runtime::Entity;
use super::validate;

pub const MAX_NAME: usize = 80;
pub const MAX_TOPIC: usize = 500;
pub const MAX_TEXT: usize = 10_000;
pub const MAX_MEMBERS: usize = 1_000;
pub const MAX_DIRECT: usize = 9;
pub const MAX_MESSAGES: usize = 200_000;
pub const MAX_EMOJIS: usize = 50;
pub const MAX_EMOJI: usize = 64;
pub const MAX_ATTACHMENTS: usize = 10;
pub const MAX_MENTIONS: usize = 50;
/// Largest attachment size recorded (bytes): 100 GB.
pub const MAX_ATTACHMENT_SIZE: u64 = 100_000_000_000;

/// Who sends a command, with their role in the organization now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
}

impl Caller {
    fn writer(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Member)
    }
}

#[derive(Debug, Clone)]
pub enum ChannelCommand {
    Create {
        channel_id: Uuid,
        kind: ChannelKind,
        name: Option<String>,
        topic: Option<String>,
        /// Other members (private channel, direct conversation); the caller is added.
        members: Vec<Uuid>,
        at: DateTime<Utc>,
    },
    Update {
        name: Option<String>,
        topic: Option<String>,
    },
    Archive {
        at: DateTime<Utc>,
    },
    AddMember {
        user_id: Uuid,
    },
    RemoveMember {
        user_id: Uuid,
    },
    Post {
        message_id: Uuid,
        text: String,
        parent_id: Option<Uuid>,
        /// Users the text mentions; each must be able to read the channel (for a public
        /// channel, the caller checks organization membership before).
        mentions: Vec<Uuid>,
        attachments: Vec<Attachment>,
        client_message_id: Option<String>,
        at: DateTime<Utc>,
    },
    Edit {
        message_id: Uuid,
        text: String,
        mentions: Vec<Uuid>,
        at: DateTime<Utc>,
    },
    Delete {
        message_id: Uuid,
        at: DateTime<Utc>,
    },
    React {
        message_id: Uuid,
        emoji: String,
        add: bool,
    },
    MarkRead {
        seq: u64,
    },
}

#[derive(Debug, Clone)]
pub struct ScopedCommand {
    pub by: Caller,
    pub cmd: ChannelCommand,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChannelError {
    #[error("channel not found")]
    NotFound,
    #[error("channel already exists")]
    AlreadyExists,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the channel is archived")]
    Archived,
    #[error("message not found")]
    UnknownMessage,
    #[error("message id {0} is already used")]
    DuplicateMessage(Uuid),
    #[error("the channel is full: {0}")]
    Full(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ChannelError {
    ChannelError::Invalid {
        field,
        message: message.into(),
    }
}

/// What the rules keep of a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub author: Uuid,
    pub seq: u64,
    pub parent: Option<Uuid>,
    pub deleted: bool,
    pub reactions: BTreeMap<String, BTreeSet<Uuid>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub kind: Option<ChannelKind>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: Option<Uuid>,
    pub archived: bool,
    pub members: BTreeSet<Uuid>,
    pub messages: HashMap<Uuid, Msg>,
    /// Messages posted so far (the `seq` of the newest).
    pub seq: u64,
    pub read: HashMap<Uuid, u64>,
}

impl Channel {
    /// Whether `user` (a member of the channel's organization) may read it.
    pub fn readable_by(&self, user: Uuid) -> bool {
        match self.kind {
            Some(ChannelKind::Public) => true,
            Some(_) => self.members.contains(&user),
            None => false,
        }
    }

    fn message(&self, id: Uuid) -> Result<&Msg, ChannelError> {
        match self.messages.get(&id) {
            Some(m) if !m.deleted => Ok(m),
            _ => Err(ChannelError::UnknownMessage),
        }
    }

    fn open(&self) -> Result<(), ChannelError> {
        if self.archived {
            return Err(ChannelError::Archived);
        }
        Ok(())
    }

    fn may_manage(&self, by: &Caller) -> bool {
        by.role == Role::Admin || self.created_by == Some(by.user_id)
    }

    fn check_text(&self, text: &str) -> Result<(), ChannelError> {
        validate::body(text, MAX_TEXT).map_err(|m| invalid("text", m))
    }

    fn check_mentions(&self, mentions: &[Uuid]) -> Result<Vec<Uuid>, ChannelError> {
        if mentions.len() > MAX_MENTIONS {
            return Err(invalid("mentions", format!("at most {MAX_MENTIONS} users")));
        }
        let unique: BTreeSet<Uuid> = mentions.iter().copied().collect();
        if let Some(outsider) = unique.iter().find(|u| !self.readable_by(**u)) {
            return Err(invalid(
                "mentions",
                format!("user {outsider} cannot read this channel"),
            ));
        }
        Ok(unique.into_iter().collect())
    }
}

fn check_name(name: &Option<String>, required: bool) -> Result<(), ChannelError> {
    match name {
        Some(n) => validate::name(n, MAX_NAME).map_err(|m| invalid("name", m)),
        None if required => Err(invalid("name", "a channel needs a name")),
        None => Ok(()),
    }
}

fn check_topic(topic: &Option<String>) -> Result<(), ChannelError> {
    match topic {
        Some(t) => validate::text(t, MAX_TOPIC).map_err(|m| invalid("topic", m)),
        None => Ok(()),
    }
}

fn check_attachments(attachments: &[Attachment]) -> Result<(), ChannelError> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(invalid("attachments", format!("at most {MAX_ATTACHMENTS}")));
    }
    let mut files = std::collections::HashSet::new();
    for a in attachments {
        let a = match a {
            // Whether the sender may read the file is checked before the command (see
            // `crate::files::attachments`): the decision has no I/O.
            Attachment::File(f) => {
                if !files.insert(f.file_id) {
                    return Err(invalid(
                        "attachments.file_id",
                        format!("file {} is attached twice", f.file_id),
                    ));
                }
                continue;
            }
            Attachment::Link(link) => link,
        };
        validate::name(&a.name, 255).map_err(|m| invalid("attachments.name", m))?;
        validate::name(&a.content_type, 100).map_err(|m| invalid("attachments.content_type", m))?;
        validate::name(&a.url, 2_000).map_err(|m| invalid("attachments.url", m))?;
        if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
            return Err(invalid("attachments.url", "must be an http(s) URL"));
        }
        if a.size > MAX_ATTACHMENT_SIZE {
            return Err(invalid(
                "attachments.size",
                format!("must be at most {MAX_ATTACHMENT_SIZE} bytes"),
            ));
        }
    }
    Ok(())
}

fn check_time(field: &'static str, at: DateTime<Utc>) -> Result<(), ChannelError> {
    validate::time(at, at).map_err(|m| invalid(field, m))
}

/// The id of the direct conversation of exactly these users in `org`: the same set of
/// users always gets the same conversation.
pub fn direct_id(org: Uuid, users: &BTreeSet<Uuid>) -> Uuid {
    let mut key = Vec::with_capacity(16 * (users.len() + 1));
    key.extend_from_slice(org.as_bytes());
    for u in users {
        key.extend_from_slice(u.as_bytes());
    }
    Uuid::new_v5(&DIRECT, &key)
}

const DIRECT: Uuid = Uuid::from_u128(0x2d1f_8c0e_4b7a_4e21_9c55_7a0f_3e61_d2b4);

impl Entity for Channel {
    type Command = ScopedCommand;
    type Event = MessagingEvent;
    type Error = ChannelError;

    const CATEGORY: &'static str = "channel";

    fn decide(&self, scoped: &ScopedCommand) -> Result<Vec<MessagingEvent>, ChannelError> {
        let by = scoped.by;
        use ChannelCommand as C;
        use MessagingEvent as E;
        if let C::Create {
            channel_id,
            kind,
            name,
            topic,
            members,
            at,
        } = &scoped.cmd
        {
            if self.id.is_some() {
                return if self.organization_id == Some(by.organization_id)
                    && self.readable_by(by.user_id)
                {
                    Err(ChannelError::AlreadyExists)
                } else {
                    Err(ChannelError::NotFound)
                };
            }
            if !by.writer() {
                return Err(ChannelError::Forbidden("viewers cannot create channels"));
            }
            check_time("created_at", *at)?;
            check_topic(topic)?;
            let mut all: BTreeSet<Uuid> = members.iter().copied().collect();
            all.insert(by.user_id);
            match kind {
                ChannelKind::Direct => {
                    if name.is_some() {
                        return Err(invalid("name", "a direct conversation has no name"));
                    }
                    if all.len() < 2 || all.len() > MAX_DIRECT {
                        return Err(invalid(
                            "members",
                            format!("a direct conversation has 2 to {MAX_DIRECT} users"),
                        ));
                    }
                }
                ChannelKind::Private | ChannelKind::Public => {
                    check_name(name, true)?;
                    if all.len() > MAX_MEMBERS {
                        return Err(invalid("members", format!("at most {MAX_MEMBERS} members")));
                    }
                    if *kind == ChannelKind::Public && all.len() > 1 {
                        return Err(invalid(
                            "members",
                            "a public channel has no member list: every member of the organization reads it",
                        ));
                    }
                }
            }
            return Ok(vec![E::ChannelCreated(ChannelCreated {
                channel_id: *channel_id,
                organization_id: by.organization_id,
                kind: *kind,
                name: name.clone(),
                topic: topic.clone(),
                created_by: by.user_id,
                members: all.into_iter().collect(),
                created_at: *at,
            })]);
        }

        if self.id.is_none()
            || self.organization_id != Some(by.organization_id)
            || !self.readable_by(by.user_id)
        {
            return Err(ChannelError::NotFound);
        }
        let kind = self.kind.unwrap_or(ChannelKind::Public);
        match &scoped.cmd {
            C::Create { .. } => unreachable!("handled above"),
            C::Update { name, topic } => {
                self.open()?;
                if !self.may_manage(&by) {
                    return Err(ChannelError::Forbidden(
                        "only the channel's creator or an organization admin changes it",
                    ));
                }
                if kind == ChannelKind::Direct && name.is_some() {
                    return Err(invalid("name", "a direct conversation has no name"));
                }
                check_name(name, false)?;
                check_topic(topic)?;
                Ok(vec![E::ChannelUpdated(ChannelUpdated {
                    name: name.clone().or_else(|| self.name.clone()),
                    topic: topic.clone(),
                    updated_by: by.user_id,
                })])
            }
            C::Archive { at } => {
                if self.archived {
                    return Ok(vec![]);
                }
                if !self.may_manage(&by) {
                    return Err(ChannelError::Forbidden(
                        "only the channel's creator or an organization admin archives it",
                    ));
                }
                check_time("at", *at)?;
                Ok(vec![E::ChannelArchived(ChannelArchived {
                    archived_by: by.user_id,
                    at: *at,
                })])
            }
            C::AddMember { user_id } | C::RemoveMember { user_id } => {
                self.open()?;
                if kind != ChannelKind::Private {
                    return Err(invalid(
                        "user_id",
                        "only a private channel has members to change",
                    ));
                }
                if !by.writer() {
                    return Err(ChannelError::Forbidden("viewers cannot change members"));
                }
                let adding = matches!(scoped.cmd, C::AddMember { .. });
                let present = self.members.contains(user_id);
                if adding && present || !adding && !present {
                    return Ok(vec![]);
                }
                if adding {
                    if self.members.len() >= MAX_MEMBERS {
                        return Err(ChannelError::Full(format!("at most {MAX_MEMBERS} members")));
                    }
                    Ok(vec![E::ChannelMemberAdded(ChannelMemberAdded {
                        user_id: *user_id,
                        added_by: by.user_id,
                    })])
                } else {
                    if *user_id != by.user_id && !self.may_manage(&by) {
                        return Err(ChannelError::Forbidden(
                            "members leave by themselves; the creator or an admin removes others",
                        ));
                    }
                    Ok(vec![E::ChannelMemberRemoved(ChannelMemberRemoved {
                        user_id: *user_id,
                        removed_by: by.user_id,
                    })])
                }
            }
            C::Post {
                message_id,
                text,
                parent_id,
                mentions,
                attachments,
                client_message_id,
                at,
            } => {
                if !by.writer() {
                    return Err(ChannelError::Forbidden("viewers cannot post"));
                }
                self.open()?;
                self.check_text(text)?;
                check_attachments(attachments)?;
                check_time("posted_at", *at)?;
                if let Some(c) = client_message_id {
                    validate::name(c, 200).map_err(|m| invalid("client_message_id", m))?;
                }
                if self.messages.contains_key(message_id) {
                    return Err(ChannelError::DuplicateMessage(*message_id));
                }
                if self.messages.len() >= MAX_MESSAGES {
                    return Err(ChannelError::Full(format!(
                        "at most {MAX_MESSAGES} messages; start a new channel"
                    )));
                }
                let mentions = self.check_mentions(mentions)?;
                // A reply to a reply joins the first message's thread.
                let parent = match parent_id {
                    None => None,
                    Some(p) => {
                        let m = self.message(*p)?;
                        Some(m.parent.unwrap_or(*p))
                    }
                };
                let mut notify: BTreeSet<Uuid> = mentions.iter().copied().collect();
                if kind == ChannelKind::Direct {
                    notify.extend(self.members.iter().copied());
                }
                if let Some(root) = parent.and_then(|p| self.messages.get(&p)) {
                    notify.insert(root.author);
                }
                notify.remove(&by.user_id);
                Ok(vec![E::MessagePosted(MessagePosted {
                    message_id: *message_id,
                    author_id: by.user_id,
                    text: text.clone(),
                    parent_id: parent,
                    mentions,
                    attachments: attachments.clone(),
                    notify: notify.into_iter().collect(),
                    client_message_id: client_message_id.clone(),
                    posted_at: *at,
                })])
            }
            C::Edit {
                message_id,
                text,
                mentions,
                at,
            } => {
                self.open()?;
                let m = self.message(*message_id)?;
                if m.author != by.user_id {
                    return Err(ChannelError::Forbidden("only the author edits a message"));
                }
                self.check_text(text)?;
                check_time("edited_at", *at)?;
                let mentions = self.check_mentions(mentions)?;
                Ok(vec![E::MessageEdited(MessageEdited {
                    message_id: *message_id,
                    text: text.clone(),
                    mentions,
                    edited_by: by.user_id,
                    edited_at: *at,
                })])
            }
            C::Delete { message_id, at } => {
                let m = match self.messages.get(message_id) {
                    Some(m) if m.deleted => return Ok(vec![]),
                    Some(m) => m,
                    None => return Err(ChannelError::UnknownMessage),
                };
                if m.author != by.user_id && by.role != Role::Admin {
                    return Err(ChannelError::Forbidden(
                        "only the author or an organization admin deletes a message",
                    ));
                }
                check_time("deleted_at", *at)?;
                Ok(vec![E::MessageDeleted(MessageDeleted {
                    message_id: *message_id,
                    deleted_by: by.user_id,
                    deleted_at: *at,
                })])
            }
            C::React {
                message_id,
                emoji,
                add,
            } => {
                if !by.writer() {
                    return Err(ChannelError::Forbidden("viewers cannot react"));
                }
                self.open()?;
                validate::name(emoji, MAX_EMOJI).map_err(|m| invalid("emoji", m))?;
                if emoji.chars().any(char::is_whitespace) {
                    return Err(invalid("emoji", "must not contain spaces"));
                }
                let m = self.message(*message_id)?;
                let mine = m
                    .reactions
                    .get(emoji)
                    .is_some_and(|users| users.contains(&by.user_id));
                let change = ReactionChanged {
                    message_id: *message_id,
                    user_id: by.user_id,
                    emoji: emoji.clone(),
                };
                match (add, mine) {
                    (true, true) | (false, false) => Ok(vec![]),
                    (true, false) => {
                        if !m.reactions.contains_key(emoji) && m.reactions.len() >= MAX_EMOJIS {
                            return Err(ChannelError::Full(format!(
                                "at most {MAX_EMOJIS} different emojis on a message"
                            )));
                        }
                        Ok(vec![E::ReactionAdded(change)])
                    }
                    (false, true) => Ok(vec![E::ReactionRemoved(change)]),
                }
            }
            C::MarkRead { seq } => {
                let seq = (*seq).min(self.seq);
                if seq <= self.read.get(&by.user_id).copied().unwrap_or(0) {
                    return Ok(vec![]);
                }
                Ok(vec![E::ReadMarkMoved(ReadMarkMoved {
                    user_id: by.user_id,
                    seq,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &MessagingEvent) {
        use MessagingEvent as E;
        match event {
            E::ChannelCreated(c) => {
                self.id = Some(c.channel_id);
                self.organization_id = Some(c.organization_id);
                self.kind = Some(c.kind);
                self.name = c.name.clone();
                self.topic = c.topic.clone();
                self.created_by = Some(c.created_by);
                self.members = c.members.iter().copied().collect();
            }
            E::ChannelUpdated(u) => {
                self.name = u.name.clone();
                self.topic = u.topic.clone();
            }
            E::ChannelArchived(_) => self.archived = true,
            E::ChannelMemberAdded(m) => {
                self.members.insert(m.user_id);
            }
            E::ChannelMemberRemoved(m) => {
                self.members.remove(&m.user_id);
            }
            E::MessagePosted(p) => {
                self.seq += 1;
                self.messages.insert(
                    p.message_id,
                    Msg {
                        author: p.author_id,
                        seq: self.seq,
                        parent: p.parent_id,
                        deleted: false,
                        reactions: BTreeMap::new(),
                    },
                );
            }
            E::MessageEdited(_) => {}
            E::MessageDeleted(d) => {
                if let Some(m) = self.messages.get_mut(&d.message_id) {
                    m.deleted = true;
                    m.reactions.clear();
                }
            }
            E::ReactionAdded(r) => {
                if let Some(m) = self.messages.get_mut(&r.message_id) {
                    m.reactions
                        .entry(r.emoji.clone())
                        .or_default()
                        .insert(r.user_id);
                }
            }
            E::ReactionRemoved(r) => {
                if let Some(m) = self.messages.get_mut(&r.message_id) {
                    if let Some(users) = m.reactions.get_mut(&r.emoji) {
                        users.remove(&r.user_id);
                        if users.is_empty() {
                            m.reactions.remove(&r.emoji);
                        }
                    }
                }
            }
            E::ReadMarkMoved(r) => {
                self.read.insert(r.user_id, r.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use universal_events::messaging::LinkAttachment;

    const ORG: Uuid = Uuid::from_u128(1);
    const OTHER_ORG: Uuid = Uuid::from_u128(2);
    const ANN: Uuid = Uuid::from_u128(11);
    const BOB: Uuid = Uuid::from_u128(12);
    const CY: Uuid = Uuid::from_u128(13);
    const CH: Uuid = Uuid::from_u128(21);
    const M1: Uuid = Uuid::from_u128(31);
    const M2: Uuid = Uuid::from_u128(32);
    const M3: Uuid = Uuid::from_u128(33);

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn by(user: Uuid, role: Role) -> Caller {
        Caller {
            organization_id: ORG,
            user_id: user,
            role,
        }
    }

    fn given(events: &[MessagingEvent]) -> Channel {
        let mut c = Channel::default();
        for e in events {
            c.evolve(e);
        }
        c
    }

    fn when(
        state: &Channel,
        caller: Caller,
        cmd: ChannelCommand,
    ) -> Result<Vec<MessagingEvent>, ChannelError> {
        state.decide(&ScopedCommand { by: caller, cmd })
    }

    fn created(kind: ChannelKind, members: &[Uuid]) -> MessagingEvent {
        MessagingEvent::ChannelCreated(ChannelCreated {
            channel_id: CH,
            organization_id: ORG,
            kind,
            name: (kind != ChannelKind::Direct).then(|| "design".to_owned()),
            topic: None,
            created_by: ANN,
            members: members.to_vec(),
            created_at: now(),
        })
    }

    fn post(id: Uuid, text: &str, parent: Option<Uuid>, mentions: &[Uuid]) -> ChannelCommand {
        ChannelCommand::Post {
            message_id: id,
            text: text.into(),
            parent_id: parent,
            mentions: mentions.to_vec(),
            attachments: vec![],
            client_message_id: None,
            at: now(),
        }
    }

    fn posted(state: &Channel, caller: Caller, cmd: ChannelCommand) -> (Channel, MessagePosted) {
        let events = when(state, caller, cmd).unwrap();
        let mut next = state.clone();
        for e in &events {
            next.evolve(e);
        }
        match events.into_iter().next() {
            Some(MessagingEvent::MessagePosted(p)) => (next, p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_private_channel_is_read_only_by_its_members_and_others_see_nothing() {
        let state = given(&[created(ChannelKind::Private, &[ANN, BOB])]);
        assert!(when(&state, by(BOB, Role::Member), post(M1, "hi", None, &[])).is_ok());
        for outsider in [by(CY, Role::Member), by(CY, Role::Admin)] {
            assert_eq!(
                when(&state, outsider, post(M1, "hi", None, &[])),
                Err(ChannelError::NotFound)
            );
        }
        let other_org = Caller {
            organization_id: OTHER_ORG,
            ..by(ANN, Role::Admin)
        };
        assert_eq!(
            when(&state, other_org, ChannelCommand::MarkRead { seq: 1 }),
            Err(ChannelError::NotFound)
        );
    }

    #[test]
    fn viewers_read_public_channels_but_cannot_post_or_react() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        let (state, _) = posted(&state, by(ANN, Role::Member), post(M1, "hello", None, &[]));
        assert!(matches!(
            when(&state, by(CY, Role::Viewer), post(M2, "me too", None, &[])),
            Err(ChannelError::Forbidden(_))
        ));
        assert!(matches!(
            when(
                &state,
                by(CY, Role::Viewer),
                ChannelCommand::React {
                    message_id: M1,
                    emoji: "👍".into(),
                    add: true
                }
            ),
            Err(ChannelError::Forbidden(_))
        ));
        // Reading is allowed: a viewer moves their read mark.
        assert_eq!(
            when(
                &state,
                by(CY, Role::Viewer),
                ChannelCommand::MarkRead { seq: 5 }
            )
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn only_the_author_edits_and_the_author_or_an_admin_deletes() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        let (state, _) = posted(&state, by(BOB, Role::Member), post(M1, "draft", None, &[]));
        let edit = |text: &str| ChannelCommand::Edit {
            message_id: M1,
            text: text.into(),
            mentions: vec![],
            at: now(),
        };
        assert!(matches!(
            when(&state, by(ANN, Role::Admin), edit("hijack")),
            Err(ChannelError::Forbidden(_))
        ));
        assert_eq!(
            when(&state, by(BOB, Role::Member), edit("final"))
                .unwrap()
                .len(),
            1
        );
        let delete = ChannelCommand::Delete {
            message_id: M1,
            at: now(),
        };
        assert!(matches!(
            when(&state, by(CY, Role::Member), delete.clone()),
            Err(ChannelError::Forbidden(_))
        ));
        let events = when(&state, by(ANN, Role::Admin), delete.clone()).unwrap();
        let mut state = state;
        state.evolve(&events[0]);
        // Deleted: no edit, no reaction, no reply; deleting again records nothing.
        assert_eq!(
            when(&state, by(BOB, Role::Member), edit("again")),
            Err(ChannelError::UnknownMessage)
        );
        assert_eq!(
            when(&state, by(BOB, Role::Member), post(M2, "re", Some(M1), &[])),
            Err(ChannelError::UnknownMessage)
        );
        assert_eq!(when(&state, by(BOB, Role::Member), delete), Ok(vec![]));
    }

    #[test]
    fn a_reply_joins_the_first_messages_thread_and_notifies_its_author() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        let (state, _) = posted(&state, by(ANN, Role::Member), post(M1, "root", None, &[]));
        let (state, reply) = posted(&state, by(BOB, Role::Member), post(M2, "re", Some(M1), &[]));
        assert_eq!(reply.parent_id, Some(M1));
        assert_eq!(reply.notify, vec![ANN]);
        let (_, nested) = posted(
            &state,
            by(CY, Role::Member),
            post(M3, "re re", Some(M2), &[BOB]),
        );
        assert_eq!(nested.parent_id, Some(M1), "one level of threads");
        assert_eq!(nested.notify, vec![ANN, BOB]);
    }

    #[test]
    fn a_direct_message_notifies_the_other_members_and_mentions_must_read_the_channel() {
        let state = given(&[created(ChannelKind::Direct, &[ANN, BOB])]);
        let (_, dm) = posted(&state, by(ANN, Role::Member), post(M1, "psst", None, &[]));
        assert_eq!(dm.notify, vec![BOB]);
        assert!(matches!(
            when(
                &state,
                by(ANN, Role::Member),
                post(M1, "hey <@cy>", None, &[CY])
            ),
            Err(ChannelError::Invalid {
                field: "mentions",
                ..
            })
        ));
        // The members of a direct conversation are fixed.
        assert!(matches!(
            when(
                &state,
                by(ANN, Role::Member),
                ChannelCommand::AddMember { user_id: CY }
            ),
            Err(ChannelError::Invalid { .. })
        ));
    }

    #[test]
    fn the_same_users_get_the_same_direct_conversation() {
        let a: BTreeSet<Uuid> = [ANN, BOB].into_iter().collect();
        let b: BTreeSet<Uuid> = [BOB, ANN].into_iter().collect();
        assert_eq!(direct_id(ORG, &a), direct_id(ORG, &b));
        assert_ne!(direct_id(ORG, &a), direct_id(OTHER_ORG, &a));
        let state = given(&[created(ChannelKind::Direct, &[ANN, BOB])]);
        let again = ChannelCommand::Create {
            channel_id: CH,
            kind: ChannelKind::Direct,
            name: None,
            topic: None,
            members: vec![ANN],
            at: now(),
        };
        assert_eq!(
            when(&state, by(BOB, Role::Member), again.clone()),
            Err(ChannelError::AlreadyExists)
        );
        assert_eq!(
            when(&state, by(CY, Role::Member), again),
            Err(ChannelError::NotFound)
        );
    }

    #[test]
    fn bidirectional_controls_are_refused_in_reactions_and_kept_in_message_bodies() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        // A Hebrew sentence ending in a number needs its right-to-left mark.
        let rtl = "המחיר הוא 5\u{200F}!";
        let (state, p) = posted(&state, by(ANN, Role::Member), post(M1, rtl, None, &[]));
        assert_eq!(p.text, rtl);
        for emoji in ["\u{202E}🚀", "👍\u{2066}", "\u{FEFF}", "🚀\u{2028}"] {
            let react = ChannelCommand::React {
                message_id: M1,
                emoji: emoji.into(),
                add: true,
            };
            assert!(
                matches!(
                    when(&state, by(BOB, Role::Member), react),
                    Err(ChannelError::Invalid { field: "emoji", .. })
                ),
                "{emoji:?}"
            );
        }
    }

    #[test]
    fn reactions_count_once_per_user_and_emoji() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        let (state, _) = posted(
            &state,
            by(ANN, Role::Member),
            post(M1, "ship it", None, &[]),
        );
        let react = |add| ChannelCommand::React {
            message_id: M1,
            emoji: "🚀".into(),
            add,
        };
        assert_eq!(
            when(&state, by(BOB, Role::Member), react(false)),
            Ok(vec![])
        );
        let added = when(&state, by(BOB, Role::Member), react(true)).unwrap();
        let mut state = state;
        state.evolve(&added[0]);
        assert_eq!(when(&state, by(BOB, Role::Member), react(true)), Ok(vec![]));
        assert_eq!(state.messages[&M1].reactions["🚀"].len(), 1);
        assert_eq!(
            when(&state, by(BOB, Role::Member), react(false))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn read_marks_only_move_forward_and_not_past_the_newest_message() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        let (state, _) = posted(&state, by(ANN, Role::Member), post(M1, "one", None, &[]));
        let (mut state, _) = posted(&state, by(ANN, Role::Member), post(M2, "two", None, &[]));
        let moved = when(
            &state,
            by(BOB, Role::Member),
            ChannelCommand::MarkRead { seq: 99 },
        )
        .unwrap();
        assert_eq!(
            moved,
            vec![MessagingEvent::ReadMarkMoved(ReadMarkMoved {
                user_id: BOB,
                seq: 2
            })]
        );
        state.evolve(&moved[0]);
        assert_eq!(
            when(
                &state,
                by(BOB, Role::Member),
                ChannelCommand::MarkRead { seq: 1 }
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn bad_input_is_refused_with_the_field() {
        let state = given(&[created(ChannelKind::Public, &[ANN])]);
        assert!(matches!(
            when(&state, by(ANN, Role::Member), post(M1, "  ", None, &[])),
            Err(ChannelError::Invalid { field: "text", .. })
        ));
        assert!(matches!(
            when(
                &state,
                by(ANN, Role::Member),
                post(M1, "a\u{0}b", None, &[])
            ),
            Err(ChannelError::Invalid { field: "text", .. })
        ));
        let huge = "x".repeat(MAX_TEXT + 1);
        assert!(matches!(
            when(&state, by(ANN, Role::Member), post(M1, &huge, None, &[])),
            Err(ChannelError::Invalid { field: "text", .. })
        ));
        let with_file = ChannelCommand::Post {
            message_id: M1,
            text: "file".into(),
            parent_id: None,
            mentions: vec![],
            attachments: vec![Attachment::Link(LinkAttachment {
                name: "a.txt".into(),
                size: 3,
                content_type: "text/plain".into(),
                url: "javascript:alert(1)".into(),
            })],
            client_message_id: None,
            at: now(),
        };
        assert!(matches!(
            when(&state, by(ANN, Role::Member), with_file),
            Err(ChannelError::Invalid {
                field: "attachments.url",
                ..
            })
        ));
        let file = Attachment::File(universal_events::messaging::FileAttachment {
            file_id: Uuid::from_u128(77),
        });
        let twice = ChannelCommand::Post {
            message_id: M1,
            text: "file".into(),
            parent_id: None,
            mentions: vec![],
            attachments: vec![file.clone(), file],
            client_message_id: None,
            at: now(),
        };
        assert!(matches!(
            when(&state, by(ANN, Role::Member), twice),
            Err(ChannelError::Invalid {
                field: "attachments.file_id",
                ..
            })
        ));
        let fresh = Channel::default();
        let nameless = ChannelCommand::Create {
            channel_id: CH,
            kind: ChannelKind::Private,
            name: None,
            topic: None,
            members: vec![],
            at: now(),
        };
        assert!(matches!(
            when(&fresh, by(ANN, Role::Member), nameless),
            Err(ChannelError::Invalid { field: "name", .. })
        ));
    }
}

/// A user's notification inbox (stream `inbox-<user id>`): which notifications they read.
/// The notifications themselves are a read model made from [`MessagePosted::notify`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inbox {
    /// The newest `up_to` of a "mark all read".
    pub all_read_up_to: Option<i64>,
}

/// Most notifications one command marks read.
pub const MAX_MARK: usize = 500;

#[derive(Debug, Clone)]
pub enum InboxCommand {
    Read {
        notification_ids: Vec<Uuid>,
        at: DateTime<Utc>,
    },
    ReadAll {
        up_to: i64,
        at: DateTime<Utc>,
    },
}

impl Entity for Inbox {
    type Command = InboxCommand;
    type Event = universal_events::messaging::InboxEvent;
    type Error = ChannelError;

    const CATEGORY: &'static str = "inbox";

    fn decide(&self, cmd: &InboxCommand) -> Result<Vec<Self::Event>, ChannelError> {
        use universal_events::messaging::{InboxEvent, NotificationsRead};
        match cmd {
            InboxCommand::Read {
                notification_ids,
                at,
            } => {
                if notification_ids.is_empty() || notification_ids.len() > MAX_MARK {
                    return Err(invalid(
                        "notification_ids",
                        format!("give 1 to {MAX_MARK} ids"),
                    ));
                }
                check_time("read_at", *at)?;
                let ids: BTreeSet<Uuid> = notification_ids.iter().copied().collect();
                Ok(vec![InboxEvent::NotificationsRead(NotificationsRead {
                    notification_ids: ids.into_iter().collect(),
                    up_to: None,
                    read_at: *at,
                })])
            }
            InboxCommand::ReadAll { up_to, at } => {
                if self.all_read_up_to.is_some_and(|p| p >= *up_to) {
                    return Ok(vec![]);
                }
                check_time("read_at", *at)?;
                Ok(vec![InboxEvent::NotificationsRead(NotificationsRead {
                    notification_ids: vec![],
                    up_to: Some(*up_to),
                    read_at: *at,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &Self::Event) {
        let universal_events::messaging::InboxEvent::NotificationsRead(r) = event;
        if let Some(p) = r.up_to {
            self.all_read_up_to = Some(self.all_read_up_to.map_or(p, |q| q.max(p)));
        }
    }
}
