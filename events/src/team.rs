//! Events of a FluxStudio team: an organization's group of people, each a lead or a member.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// A member's role in a team.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    Lead,
    Member,
}

impl TeamRole {
    /// The stable lowercase name, as used in JSON and in the read models.
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Lead => "lead",
            TeamRole::Member => "member",
        }
    }
}

/// The team enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum TeamEvent {
    TeamCreated(TeamCreated),
    TeamUpdated(TeamUpdated),
    TeamMemberAdded(TeamMemberAdded),
    TeamMemberRoleChanged(TeamMemberRoleChanged),
    TeamMemberRemoved(TeamMemberRemoved),
    TeamArchived(TeamArchived),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TeamCreated {
    pub team_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

/// The name and the description as they are now (both, so that a reader needs no history).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TeamUpdated {
    pub name: String,
    pub description: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TeamMemberAdded {
    pub user_id: Uuid,
    pub role: TeamRole,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TeamMemberRoleChanged {
    pub user_id: Uuid,
    pub role: TeamRole,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TeamMemberRemoved {
    pub user_id: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct TeamArchived {
    pub archived_at: DateTime<Utc>,
}

impl EventFamily for TeamEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TeamEvent::TeamCreated(_) => "TeamCreated",
            TeamEvent::TeamUpdated(_) => "TeamUpdated",
            TeamEvent::TeamMemberAdded(_) => "TeamMemberAdded",
            TeamEvent::TeamMemberRoleChanged(_) => "TeamMemberRoleChanged",
            TeamEvent::TeamMemberRemoved(_) => "TeamMemberRemoved",
            TeamEvent::TeamArchived(_) => "TeamArchived",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        Ok(match t {
            "TeamCreated" => TeamEvent::TeamCreated(payload(t, data)?),
            "TeamUpdated" => TeamEvent::TeamUpdated(payload(t, data)?),
            "TeamMemberAdded" => TeamEvent::TeamMemberAdded(payload(t, data)?),
            "TeamMemberRoleChanged" => TeamEvent::TeamMemberRoleChanged(payload(t, data)?),
            "TeamMemberRemoved" => TeamEvent::TeamMemberRemoved(payload(t, data)?),
            "TeamArchived" => TeamEvent::TeamArchived(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every team event type, for filters and the sample tests.
pub const TEAM_EVENT_TYPES: [&str; 6] = [
    "TeamCreated",
    "TeamUpdated",
    "TeamMemberAdded",
    "TeamMemberRoleChanged",
    "TeamMemberRemoved",
    "TeamArchived",
];
