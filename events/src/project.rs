//! Events of a FluxStudio project: its details, team, members, status and milestones.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// Where a project stands.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProjectStatus {
    Planning,
    Active,
    OnHold,
    Completed,
    Archived,
}

impl ProjectStatus {
    pub const ALL: [ProjectStatus; 5] = [
        ProjectStatus::Planning,
        ProjectStatus::Active,
        ProjectStatus::OnHold,
        ProjectStatus::Completed,
        ProjectStatus::Archived,
    ];

    /// The stable lowercase name, as used in JSON and in the read models.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectStatus::Planning => "planning",
            ProjectStatus::Active => "active",
            ProjectStatus::OnHold => "on_hold",
            ProjectStatus::Completed => "completed",
            ProjectStatus::Archived => "archived",
        }
    }

    pub fn parse(s: &str) -> Option<ProjectStatus> {
        ProjectStatus::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The project enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum ProjectEvent {
    ProjectCreated(ProjectCreated),
    ProjectUpdated(ProjectUpdated),
    ProjectStatusChanged(ProjectStatusChanged),
    ProjectMemberAdded(ProjectMemberAdded),
    ProjectMemberRemoved(ProjectMemberRemoved),
    MilestoneAdded(MilestoneAdded),
    MilestoneCompleted(MilestoneCompleted),
    MilestoneRemoved(MilestoneRemoved),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProjectCreated {
    pub project_id: Uuid,
    pub organization_id: Uuid,
    pub team_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub status: ProjectStatus,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

/// The details as they are now (all of them, so that a reader needs no history).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProjectUpdated {
    pub name: String,
    pub description: Option<String>,
    pub team_id: Option<Uuid>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProjectStatusChanged {
    pub status: ProjectStatus,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProjectMemberAdded {
    pub user_id: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ProjectMemberRemoved {
    pub user_id: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MilestoneAdded {
    pub milestone_id: Uuid,
    pub title: String,
    pub due_date: Option<NaiveDate>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MilestoneCompleted {
    pub milestone_id: Uuid,
    pub completed_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct MilestoneRemoved {
    pub milestone_id: Uuid,
}

impl EventFamily for ProjectEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ProjectEvent::ProjectCreated(_) => "ProjectCreated",
            ProjectEvent::ProjectUpdated(_) => "ProjectUpdated",
            ProjectEvent::ProjectStatusChanged(_) => "ProjectStatusChanged",
            ProjectEvent::ProjectMemberAdded(_) => "ProjectMemberAdded",
            ProjectEvent::ProjectMemberRemoved(_) => "ProjectMemberRemoved",
            ProjectEvent::MilestoneAdded(_) => "MilestoneAdded",
            ProjectEvent::MilestoneCompleted(_) => "MilestoneCompleted",
            ProjectEvent::MilestoneRemoved(_) => "MilestoneRemoved",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        Ok(match t {
            "ProjectCreated" => ProjectEvent::ProjectCreated(payload(t, data)?),
            "ProjectUpdated" => ProjectEvent::ProjectUpdated(payload(t, data)?),
            "ProjectStatusChanged" => ProjectEvent::ProjectStatusChanged(payload(t, data)?),
            "ProjectMemberAdded" => ProjectEvent::ProjectMemberAdded(payload(t, data)?),
            "ProjectMemberRemoved" => ProjectEvent::ProjectMemberRemoved(payload(t, data)?),
            "MilestoneAdded" => ProjectEvent::MilestoneAdded(payload(t, data)?),
            "MilestoneCompleted" => ProjectEvent::MilestoneCompleted(payload(t, data)?),
            "MilestoneRemoved" => ProjectEvent::MilestoneRemoved(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every project event type, for filters and the sample tests.
pub const PROJECT_EVENT_TYPES: [&str; 8] = [
    "ProjectCreated",
    "ProjectUpdated",
    "ProjectStatusChanged",
    "ProjectMemberAdded",
    "ProjectMemberRemoved",
    "MilestoneAdded",
    "MilestoneCompleted",
    "MilestoneRemoved",
];
