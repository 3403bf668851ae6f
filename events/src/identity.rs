//! Events of users, their e-mail claims, and organizations.
//!
//! Secrets never appear in clear: `password_hash` is an argon2id PHC string (or, for a user
//! brought by a legacy import until their first login, the old bcrypt hash), empty for a user
//! without a password, and
//! `refresh_hash` a SHA-256 of the refresh token. The history API redacts both.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// A role, within an organization (and on a user account).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may send commands (viewers only read).
    pub fn can_write(self) -> bool {
        !matches!(self, Role::Viewer)
    }
}

/// A frontend that an organization may enable.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum Frontend {
    Flowmind,
    Quantum,
    Velocity,
    Citypulse,
    Toolbox,
    Fluxstudio,
}

impl Frontend {
    pub const ALL: [Frontend; 6] = [
        Frontend::Flowmind,
        Frontend::Quantum,
        Frontend::Velocity,
        Frontend::Citypulse,
        Frontend::Toolbox,
        Frontend::Fluxstudio,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Flowmind => "flowmind",
            Frontend::Quantum => "quantum",
            Frontend::Velocity => "velocity",
            Frontend::Citypulse => "citypulse",
            Frontend::Toolbox => "toolbox",
            Frontend::Fluxstudio => "fluxstudio",
        }
    }

    pub fn parse(s: &str) -> Option<Frontend> {
        Frontend::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    UserRegistered(UserRegistered),
    PasswordChanged(PasswordChanged),
    /// A hash of an older scheme (bcrypt, from an import) was replaced by argon2id at a
    /// successful login. The password is the same, so no session ends.
    PasswordRehashed(PasswordRehashed),
    ProfileUpdated(ProfileUpdated),
    RoleAssigned(RoleChanged),
    RoleRevoked(RoleChanged),
    UserDeactivated(UserDeactivated),
    SessionStarted(SessionStarted),
    SessionRefreshed(SessionRefreshed),
    SessionEnded(SessionEnded),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct UserRegistered {
    pub user_id: Uuid,
    /// As typed (trimmed); uniqueness is on the lowercase form.
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub registered_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct PasswordChanged {
    pub password_hash: String,
    pub changed_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct PasswordRehashed {
    pub password_hash: String,
    pub rehashed_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProfileUpdated {
    pub display_name: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct RoleChanged {
    pub role: Role,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct UserDeactivated {
    pub deactivated_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SessionStarted {
    pub session_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub refresh_hash: String,
    pub expires_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

/// The refresh token was rotated: the previous one is now spent.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SessionRefreshed {
    pub session_id: Uuid,
    pub refresh_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// Why a session ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Logout,
    /// A spent refresh token was presented again: the family is revoked (theft signal).
    RefreshTokenReuse,
    PasswordChanged,
    Deactivated,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct SessionEnded {
    pub session_id: Uuid,
    pub reason: EndReason,
    pub ended_at: DateTime<Utc>,
}

impl EventFamily for UserEvent {
    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::UserRegistered(_) => "UserRegistered",
            UserEvent::PasswordChanged(_) => "PasswordChanged",
            UserEvent::PasswordRehashed(_) => "PasswordRehashed",
            UserEvent::ProfileUpdated(_) => "ProfileUpdated",
            UserEvent::RoleAssigned(_) => "RoleAssigned",
            UserEvent::RoleRevoked(_) => "RoleRevoked",
            UserEvent::UserDeactivated(_) => "UserDeactivated",
            UserEvent::SessionStarted(_) => "SessionStarted",
            UserEvent::SessionRefreshed(_) => "SessionRefreshed",
            UserEvent::SessionEnded(_) => "SessionEnded",
        }
    }

    fn decode_ref(t: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(t) {
            return Self::decode(t, version, data.clone());
        }
        Ok(match t {
            "UserRegistered" => UserEvent::UserRegistered(payload(t, data)?),
            "PasswordChanged" => UserEvent::PasswordChanged(payload(t, data)?),
            "PasswordRehashed" => UserEvent::PasswordRehashed(payload(t, data)?),
            "ProfileUpdated" => UserEvent::ProfileUpdated(payload(t, data)?),
            "RoleAssigned" => UserEvent::RoleAssigned(payload(t, data)?),
            "RoleRevoked" => UserEvent::RoleRevoked(payload(t, data)?),
            "UserDeactivated" => UserEvent::UserDeactivated(payload(t, data)?),
            "SessionStarted" => UserEvent::SessionStarted(payload(t, data)?),
            "SessionRefreshed" => UserEvent::SessionRefreshed(payload(t, data)?),
            "SessionEnded" => UserEvent::SessionEnded(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// The claim of an e-mail address, in the stream `email-<uuid v5 of the lowercase address>`.
/// Appended with expected version "no stream", so exactly one signup wins an address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum EmailEvent {
    EmailClaimed(EmailClaimed),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct EmailClaimed {
    pub user_id: Uuid,
    pub email: String,
}

impl EventFamily for EmailEvent {
    fn event_type(&self) -> &'static str {
        "EmailClaimed"
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum OrganizationEvent {
    OrganizationCreated(OrganizationCreated),
    OrganizationRenamed(OrganizationRenamed),
    MemberAdded(MemberAdded),
    MemberRemoved(MemberRemoved),
    FrontendEnabled(FrontendChanged),
    FrontendDisabled(FrontendChanged),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct OrganizationCreated {
    pub organization_id: Uuid,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct OrganizationRenamed {
    pub name: String,
}

/// A member joined, or an existing member's role changed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MemberAdded {
    pub user_id: Uuid,
    pub role: Role,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MemberRemoved {
    pub user_id: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FrontendChanged {
    pub frontend: Frontend,
}

impl EventFamily for OrganizationEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrganizationEvent::OrganizationCreated(_) => "OrganizationCreated",
            OrganizationEvent::OrganizationRenamed(_) => "OrganizationRenamed",
            OrganizationEvent::MemberAdded(_) => "MemberAdded",
            OrganizationEvent::MemberRemoved(_) => "MemberRemoved",
            OrganizationEvent::FrontendEnabled(_) => "FrontendEnabled",
            OrganizationEvent::FrontendDisabled(_) => "FrontendDisabled",
        }
    }
}

pub const USER_EVENT_TYPES: [&str; 10] = [
    "UserRegistered",
    "PasswordChanged",
    "PasswordRehashed",
    "ProfileUpdated",
    "RoleAssigned",
    "RoleRevoked",
    "UserDeactivated",
    "SessionStarted",
    "SessionRefreshed",
    "SessionEnded",
];

pub const ORGANIZATION_EVENT_TYPES: [&str; 6] = [
    "OrganizationCreated",
    "OrganizationRenamed",
    "MemberAdded",
    "MemberRemoved",
    "FrontendEnabled",
    "FrontendDisabled",
];
