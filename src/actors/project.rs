//! The FluxStudio project: name, description, an optional team, members, a status and
//! milestones with due dates.
//!
//! Every command names the caller's organization; a project of another organization answers
//! "not found". The creator becomes the first member. An archived project refuses every
//! change except a new status (which brings it back). Whether a team or a user may be named
//! (the organization's own) is checked by the handler against their actors; the rules about
//! the project itself live here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use universal_events::project::{
    MilestoneAdded, MilestoneCompleted, MilestoneRemoved, ProjectCreated, ProjectEvent,
    ProjectMemberAdded, ProjectMemberRemoved, ProjectStatus, ProjectStatusChanged, ProjectUpdated,
};
use uuid::Uuid;

use super::runtime::Entity;

pub const MAX_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 5000;
pub const MAX_TITLE: usize = 200;
/// Bound the state an actor holds and a project page carries.
pub const MAX_MEMBERS: usize = 1000;
pub const MAX_MILESTONES: usize = 500;

/// A command on one project, scoped to the caller's organization.
#[derive(Debug, Clone)]
pub struct ProjectCommand {
    pub organization_id: Uuid,
    pub action: ProjectAction,
}

#[derive(Debug, Clone)]
pub enum ProjectAction {
    Create {
        project_id: Uuid,
        name: String,
        description: Option<String>,
        team_id: Option<Uuid>,
        status: ProjectStatus,
        created_by: Uuid,
        at: DateTime<Utc>,
    },
    /// Changes what is given; `Some(None)` clears the description or the team.
    Update {
        name: Option<String>,
        description: Option<Option<String>>,
        team_id: Option<Option<Uuid>>,
    },
    SetStatus {
        status: ProjectStatus,
    },
    AddMember {
        user_id: Uuid,
    },
    RemoveMember {
        user_id: Uuid,
    },
    AddMilestone {
        milestone_id: Uuid,
        title: String,
        due_date: Option<NaiveDate>,
    },
    CompleteMilestone {
        milestone_id: Uuid,
        at: DateTime<Utc>,
    },
    RemoveMilestone {
        milestone_id: Uuid,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProjectError {
    /// Also what another organization sees.
    #[error("project not found")]
    NotFound,
    #[error("project already exists")]
    AlreadyExists,
    #[error("the project is archived")]
    Archived,
    #[error("the user is already a member of the project")]
    AlreadyMember,
    #[error("the user is not a member of the project")]
    NotMember,
    #[error("milestone not found")]
    NoMilestone,
    #[error("milestone id already used")]
    DuplicateMilestone,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Milestone {
    pub title: String,
    pub due_date: Option<NaiveDate>,
    pub completed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Project {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub status: Option<ProjectStatus>,
    pub members: BTreeSet<Uuid>,
    pub milestones: BTreeMap<Uuid, Milestone>,
}

fn invalid(field: &'static str) -> impl Fn(String) -> ProjectError {
    move |message| ProjectError::Invalid { field, message }
}

fn check_name(field: &'static str, name: &str, max: usize) -> Result<String, ProjectError> {
    super::validate::name(name, max).map_err(invalid(field))?;
    Ok(name.trim().to_owned())
}

/// Blank text clears the description.
fn check_description(text: Option<&str>) -> Result<Option<String>, ProjectError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    super::validate::text(text, MAX_DESCRIPTION).map_err(invalid("description"))?;
    Ok(Some(text.to_owned()))
}

impl Project {
    fn is_archived(&self) -> bool {
        self.status == Some(ProjectStatus::Archived)
    }
}

impl Entity for Project {
    type Command = ProjectCommand;
    type Event = ProjectEvent;
    type Error = ProjectError;

    const CATEGORY: &'static str = "project";

    fn decide(&self, cmd: &ProjectCommand) -> Result<Vec<ProjectEvent>, ProjectError> {
        use ProjectAction as A;
        if let A::Create {
            project_id,
            name,
            description,
            team_id,
            status,
            created_by,
            at,
        } = &cmd.action
        {
            if self.id.is_some() {
                return Err(ProjectError::AlreadyExists);
            }
            return Ok(vec![
                ProjectEvent::ProjectCreated(ProjectCreated {
                    project_id: *project_id,
                    organization_id: cmd.organization_id,
                    team_id: *team_id,
                    name: check_name("name", name, MAX_NAME)?,
                    description: check_description(description.as_deref())?,
                    status: *status,
                    created_by: *created_by,
                    created_at: *at,
                }),
                ProjectEvent::ProjectMemberAdded(ProjectMemberAdded {
                    user_id: *created_by,
                }),
            ]);
        }
        if self.id.is_none() || self.organization_id != Some(cmd.organization_id) {
            return Err(ProjectError::NotFound);
        }
        if self.is_archived() && !matches!(cmd.action, A::SetStatus { .. }) {
            return Err(ProjectError::Archived);
        }
        match &cmd.action {
            A::Create { .. } => unreachable!("handled above"),
            A::Update {
                name,
                description,
                team_id,
            } => {
                let name = match name {
                    Some(n) => check_name("name", n, MAX_NAME)?,
                    None => self.name.clone(),
                };
                let description = match description {
                    Some(d) => check_description(d.as_deref())?,
                    None => self.description.clone(),
                };
                let team_id = team_id.unwrap_or(self.team_id);
                if name == self.name && description == self.description && team_id == self.team_id {
                    return Ok(vec![]);
                }
                Ok(vec![ProjectEvent::ProjectUpdated(ProjectUpdated {
                    name,
                    description,
                    team_id,
                })])
            }
            A::SetStatus { status } => {
                if self.status == Some(*status) {
                    return Ok(vec![]);
                }
                Ok(vec![ProjectEvent::ProjectStatusChanged(
                    ProjectStatusChanged { status: *status },
                )])
            }
            A::AddMember { user_id } => {
                if self.members.contains(user_id) {
                    return Err(ProjectError::AlreadyMember);
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(ProjectError::Invalid {
                        field: "user_id",
                        message: format!("a project has at most {MAX_MEMBERS} members"),
                    });
                }
                Ok(vec![ProjectEvent::ProjectMemberAdded(ProjectMemberAdded {
                    user_id: *user_id,
                })])
            }
            A::RemoveMember { user_id } => {
                if !self.members.contains(user_id) {
                    return Err(ProjectError::NotMember);
                }
                Ok(vec![ProjectEvent::ProjectMemberRemoved(
                    ProjectMemberRemoved { user_id: *user_id },
                )])
            }
            A::AddMilestone {
                milestone_id,
                title,
                due_date,
            } => {
                if self.milestones.contains_key(milestone_id) {
                    return Err(ProjectError::DuplicateMilestone);
                }
                if self.milestones.len() >= MAX_MILESTONES {
                    return Err(ProjectError::Invalid {
                        field: "title",
                        message: format!("a project has at most {MAX_MILESTONES} milestones"),
                    });
                }
                Ok(vec![ProjectEvent::MilestoneAdded(MilestoneAdded {
                    milestone_id: *milestone_id,
                    title: check_name("title", title, MAX_TITLE)?,
                    due_date: *due_date,
                })])
            }
            A::CompleteMilestone { milestone_id, at } => match self.milestones.get(milestone_id) {
                None => Err(ProjectError::NoMilestone),
                Some(m) if m.completed => Ok(vec![]),
                Some(_) => Ok(vec![ProjectEvent::MilestoneCompleted(MilestoneCompleted {
                    milestone_id: *milestone_id,
                    completed_at: *at,
                })]),
            },
            A::RemoveMilestone { milestone_id } => {
                if !self.milestones.contains_key(milestone_id) {
                    return Err(ProjectError::NoMilestone);
                }
                Ok(vec![ProjectEvent::MilestoneRemoved(MilestoneRemoved {
                    milestone_id: *milestone_id,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &ProjectEvent) {
        match event {
            ProjectEvent::ProjectCreated(e) => {
                self.id = Some(e.project_id);
                self.organization_id = Some(e.organization_id);
                self.team_id = e.team_id;
                self.name = e.name.clone();
                self.description = e.description.clone();
                self.status = Some(e.status);
            }
            ProjectEvent::ProjectUpdated(e) => {
                self.name = e.name.clone();
                self.description = e.description.clone();
                self.team_id = e.team_id;
            }
            ProjectEvent::ProjectStatusChanged(e) => self.status = Some(e.status),
            ProjectEvent::ProjectMemberAdded(e) => {
                self.members.insert(e.user_id);
            }
            ProjectEvent::ProjectMemberRemoved(e) => {
                self.members.remove(&e.user_id);
            }
            ProjectEvent::MilestoneAdded(e) => {
                self.milestones.insert(
                    e.milestone_id,
                    Milestone {
                        title: e.title.clone(),
                        due_date: e.due_date,
                        completed: false,
                    },
                );
            }
            ProjectEvent::MilestoneCompleted(e) => {
                if let Some(m) = self.milestones.get_mut(&e.milestone_id) {
                    m.completed = true;
                }
            }
            ProjectEvent::MilestoneRemoved(e) => {
                self.milestones.remove(&e.milestone_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: Uuid = Uuid::from_u128(10);
    const P: Uuid = Uuid::from_u128(30);
    const TEAM: Uuid = Uuid::from_u128(20);
    const M: Uuid = Uuid::from_u128(40);
    const ADA: Uuid = Uuid::from_u128(1);
    const BOB: Uuid = Uuid::from_u128(2);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn given(events: &[ProjectEvent]) -> Project {
        let mut p = Project::default();
        for e in events {
            p.evolve(e);
        }
        p
    }

    fn when(action: ProjectAction) -> ProjectCommand {
        ProjectCommand {
            organization_id: ORG,
            action,
        }
    }

    fn created() -> Vec<ProjectEvent> {
        given(&[])
            .decide(&when(ProjectAction::Create {
                project_id: P,
                name: "Spring campaign".into(),
                description: None,
                team_id: Some(TEAM),
                status: ProjectStatus::Planning,
                created_by: ADA,
                at: at("2026-11-21T10:00:00Z"),
            }))
            .unwrap()
    }

    fn milestone() -> ProjectEvent {
        ProjectEvent::MilestoneAdded(MilestoneAdded {
            milestone_id: M,
            title: "Drafts".into(),
            due_date: Some(NaiveDate::from_ymd_opt(2027, 2, 1).unwrap()),
        })
    }

    #[test]
    fn creating_a_project_makes_the_creator_its_first_member() {
        let events = created();
        assert!(matches!(&events[0], ProjectEvent::ProjectCreated(c)
            if c.organization_id == ORG && c.team_id == Some(TEAM) && c.status == ProjectStatus::Planning));
        assert_eq!(
            events[1],
            ProjectEvent::ProjectMemberAdded(ProjectMemberAdded { user_id: ADA })
        );
        let project = given(&events);
        assert!(project.members.contains(&ADA));
    }

    #[test]
    fn another_organization_sees_no_project() {
        let project = given(&created());
        let foreign = ProjectCommand {
            organization_id: Uuid::from_u128(11),
            action: ProjectAction::SetStatus {
                status: ProjectStatus::Active,
            },
        };
        assert_eq!(project.decide(&foreign), Err(ProjectError::NotFound));
    }

    #[test]
    fn an_update_can_clear_the_team_and_keeps_what_is_not_given() {
        let project = given(&created());
        let events = project
            .decide(&when(ProjectAction::Update {
                name: None,
                description: Some(Some("Posters".into())),
                team_id: Some(None),
            }))
            .unwrap();
        assert_eq!(
            events,
            vec![ProjectEvent::ProjectUpdated(ProjectUpdated {
                name: "Spring campaign".into(),
                description: Some("Posters".into()),
                team_id: None,
            })]
        );
        let err = project
            .decide(&when(ProjectAction::Update {
                name: Some(" ".into()),
                description: None,
                team_id: None,
            }))
            .unwrap_err();
        assert!(matches!(err, ProjectError::Invalid { field: "name", .. }));
    }

    #[test]
    fn milestones_are_added_completed_once_and_removed() {
        let mut history = created();
        history.push(milestone());
        let project = given(&history);
        assert_eq!(
            project.decide(&when(ProjectAction::AddMilestone {
                milestone_id: M,
                title: "Again".into(),
                due_date: None
            })),
            Err(ProjectError::DuplicateMilestone)
        );
        let done = project
            .decide(&when(ProjectAction::CompleteMilestone {
                milestone_id: M,
                at: at("2027-01-30T10:00:00Z"),
            }))
            .unwrap();
        assert_eq!(done.len(), 1);
        history.extend(done);
        let project = given(&history);
        assert!(project.milestones[&M].completed);
        assert!(project
            .decide(&when(ProjectAction::CompleteMilestone {
                milestone_id: M,
                at: at("2027-01-31T10:00:00Z"),
            }))
            .unwrap()
            .is_empty());
        let removed = project
            .decide(&when(ProjectAction::RemoveMilestone { milestone_id: M }))
            .unwrap();
        history.extend(removed);
        assert_eq!(
            given(&history).decide(&when(ProjectAction::RemoveMilestone { milestone_id: M })),
            Err(ProjectError::NoMilestone)
        );
    }

    #[test]
    fn a_blank_milestone_title_is_refused_naming_the_field() {
        let err = given(&created())
            .decide(&when(ProjectAction::AddMilestone {
                milestone_id: M,
                title: "".into(),
                due_date: None,
            }))
            .unwrap_err();
        assert!(matches!(err, ProjectError::Invalid { field: "title", .. }));
    }

    #[test]
    fn members_join_once_and_leave() {
        let project = given(&created());
        assert_eq!(
            project.decide(&when(ProjectAction::AddMember { user_id: ADA })),
            Err(ProjectError::AlreadyMember)
        );
        assert_eq!(
            project.decide(&when(ProjectAction::RemoveMember { user_id: BOB })),
            Err(ProjectError::NotMember)
        );
        assert_eq!(
            project
                .decide(&when(ProjectAction::AddMember { user_id: BOB }))
                .unwrap(),
            vec![ProjectEvent::ProjectMemberAdded(ProjectMemberAdded {
                user_id: BOB
            })]
        );
    }

    #[test]
    fn an_archived_project_only_takes_a_new_status() {
        let mut history = created();
        history.push(ProjectEvent::ProjectStatusChanged(ProjectStatusChanged {
            status: ProjectStatus::Archived,
        }));
        let project = given(&history);
        assert_eq!(
            project.decide(&when(ProjectAction::AddMember { user_id: BOB })),
            Err(ProjectError::Archived)
        );
        assert_eq!(
            project
                .decide(&when(ProjectAction::SetStatus {
                    status: ProjectStatus::Active
                }))
                .unwrap(),
            vec![ProjectEvent::ProjectStatusChanged(ProjectStatusChanged {
                status: ProjectStatus::Active
            })]
        );
    }
}
