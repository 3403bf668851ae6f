//! The FluxStudio team: an organization's group of people, each a lead or a member.
//!
//! Every command names the caller's organization; a team of another organization answers
//! "not found", so ids of other tenants are never confirmed. The creator becomes the first
//! lead. An archived team keeps its history and refuses every change.
//! Whether a user may join (an organization member) is checked by the handler against the
//! organization's actor before the command is sent; the rules about the team itself live here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::team::{
    TeamArchived, TeamCreated, TeamEvent, TeamMemberAdded, TeamMemberRemoved,
    TeamMemberRoleChanged, TeamRole, TeamUpdated,
};
use uuid::Uuid;

use super::runtime::Entity;

pub const MAX_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 2000;
/// Bounds the state an actor holds and a team page carries.
pub const MAX_MEMBERS: usize = 1000;

/// A command on one team, scoped to the caller's organization.
#[derive(Debug, Clone)]
pub struct TeamCommand {
    pub organization_id: Uuid,
    pub action: TeamAction,
}

#[derive(Debug, Clone)]
pub enum TeamAction {
    Create {
        team_id: Uuid,
        name: String,
        description: Option<String>,
        created_by: Uuid,
        at: DateTime<Utc>,
    },
    /// Changes what is given; `description: Some(None)` clears it.
    Update {
        name: Option<String>,
        description: Option<Option<String>>,
    },
    AddMember {
        user_id: Uuid,
        role: TeamRole,
    },
    ChangeRole {
        user_id: Uuid,
        role: TeamRole,
    },
    RemoveMember {
        user_id: Uuid,
    },
    Archive {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TeamError {
    /// Also what another organization sees.
    #[error("team not found")]
    NotFound,
    #[error("team already exists")]
    AlreadyExists,
    #[error("the team is archived")]
    Archived,
    #[error("the user is already a member of the team")]
    AlreadyMember,
    #[error("the user is not a member of the team")]
    NotMember,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Team {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub members: BTreeMap<Uuid, TeamRole>,
    pub archived: bool,
}

fn check_name(name: &str) -> Result<String, TeamError> {
    super::validate::name(name, MAX_NAME).map_err(|message| TeamError::Invalid {
        field: "name",
        message,
    })?;
    Ok(name.trim().to_owned())
}

/// Blank text clears the description.
fn check_description(text: Option<&str>) -> Result<Option<String>, TeamError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    super::validate::text(text, MAX_DESCRIPTION).map_err(|message| TeamError::Invalid {
        field: "description",
        message,
    })?;
    Ok(Some(text.to_owned()))
}

impl Entity for Team {
    type Command = TeamCommand;
    type Event = TeamEvent;
    type Error = TeamError;

    const CATEGORY: &'static str = "team";

    fn decide(&self, cmd: &TeamCommand) -> Result<Vec<TeamEvent>, TeamError> {
        if let TeamAction::Create {
            team_id,
            name,
            description,
            created_by,
            at,
        } = &cmd.action
        {
            if self.id.is_some() {
                return Err(TeamError::AlreadyExists);
            }
            return Ok(vec![
                TeamEvent::TeamCreated(TeamCreated {
                    team_id: *team_id,
                    organization_id: cmd.organization_id,
                    name: check_name(name)?,
                    description: check_description(description.as_deref())?,
                    created_by: *created_by,
                    created_at: *at,
                }),
                TeamEvent::TeamMemberAdded(TeamMemberAdded {
                    user_id: *created_by,
                    role: TeamRole::Lead,
                }),
            ]);
        }
        if self.id.is_none() || self.organization_id != Some(cmd.organization_id) {
            return Err(TeamError::NotFound);
        }
        if self.archived {
            // Archiving again changes nothing; anything else is refused.
            return match cmd.action {
                TeamAction::Archive { .. } => Ok(vec![]),
                _ => Err(TeamError::Archived),
            };
        }
        match &cmd.action {
            TeamAction::Create { .. } => unreachable!("handled above"),
            TeamAction::Update { name, description } => {
                let name = match name {
                    Some(n) => check_name(n)?,
                    None => self.name.clone(),
                };
                let description = match description {
                    Some(d) => check_description(d.as_deref())?,
                    None => self.description.clone(),
                };
                if name == self.name && description == self.description {
                    return Ok(vec![]);
                }
                Ok(vec![TeamEvent::TeamUpdated(TeamUpdated {
                    name,
                    description,
                })])
            }
            TeamAction::AddMember { user_id, role } => {
                if self.members.contains_key(user_id) {
                    return Err(TeamError::AlreadyMember);
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(TeamError::Invalid {
                        field: "user_id",
                        message: format!("a team has at most {MAX_MEMBERS} members"),
                    });
                }
                Ok(vec![TeamEvent::TeamMemberAdded(TeamMemberAdded {
                    user_id: *user_id,
                    role: *role,
                })])
            }
            TeamAction::ChangeRole { user_id, role } => match self.members.get(user_id) {
                None => Err(TeamError::NotMember),
                Some(r) if r == role => Ok(vec![]),
                Some(_) => Ok(vec![TeamEvent::TeamMemberRoleChanged(
                    TeamMemberRoleChanged {
                        user_id: *user_id,
                        role: *role,
                    },
                )]),
            },
            TeamAction::RemoveMember { user_id } => {
                if !self.members.contains_key(user_id) {
                    return Err(TeamError::NotMember);
                }
                Ok(vec![TeamEvent::TeamMemberRemoved(TeamMemberRemoved {
                    user_id: *user_id,
                })])
            }
            TeamAction::Archive { at } => Ok(vec![TeamEvent::TeamArchived(TeamArchived {
                archived_at: *at,
            })]),
        }
    }

    fn evolve(&mut self, event: &TeamEvent) {
        match event {
            TeamEvent::TeamCreated(e) => {
                self.id = Some(e.team_id);
                self.organization_id = Some(e.organization_id);
                self.name = e.name.clone();
                self.description = e.description.clone();
            }
            TeamEvent::TeamUpdated(e) => {
                self.name = e.name.clone();
                self.description = e.description.clone();
            }
            TeamEvent::TeamMemberAdded(e) => {
                self.members.insert(e.user_id, e.role);
            }
            TeamEvent::TeamMemberRoleChanged(e) => {
                self.members.insert(e.user_id, e.role);
            }
            TeamEvent::TeamMemberRemoved(e) => {
                self.members.remove(&e.user_id);
            }
            TeamEvent::TeamArchived(_) => self.archived = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: Uuid = Uuid::from_u128(10);
    const OTHER_ORG: Uuid = Uuid::from_u128(11);
    const T: Uuid = Uuid::from_u128(20);
    const ADA: Uuid = Uuid::from_u128(1);
    const BOB: Uuid = Uuid::from_u128(2);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn given(events: &[TeamEvent]) -> Team {
        let mut t = Team::default();
        for e in events {
            t.evolve(e);
        }
        t
    }

    fn when(action: TeamAction) -> TeamCommand {
        TeamCommand {
            organization_id: ORG,
            action,
        }
    }

    fn created() -> Vec<TeamEvent> {
        given(&[])
            .decide(&when(TeamAction::Create {
                team_id: T,
                name: "  Design ".into(),
                description: Some("   ".into()),
                created_by: ADA,
                at: at("2026-11-21T10:00:00Z"),
            }))
            .unwrap()
    }

    fn bob_added() -> TeamEvent {
        TeamEvent::TeamMemberAdded(TeamMemberAdded {
            user_id: BOB,
            role: TeamRole::Member,
        })
    }

    #[test]
    fn creating_a_team_trims_its_name_and_makes_the_creator_its_lead() {
        let events = created();
        assert_eq!(
            events,
            vec![
                TeamEvent::TeamCreated(TeamCreated {
                    team_id: T,
                    organization_id: ORG,
                    name: "Design".into(),
                    description: None,
                    created_by: ADA,
                    created_at: at("2026-11-21T10:00:00Z"),
                }),
                TeamEvent::TeamMemberAdded(TeamMemberAdded {
                    user_id: ADA,
                    role: TeamRole::Lead
                }),
            ]
        );
        assert_eq!(
            given(&events).decide(&when(TeamAction::Create {
                team_id: T,
                name: "Again".into(),
                description: None,
                created_by: ADA,
                at: at("2026-11-21T10:00:00Z"),
            })),
            Err(TeamError::AlreadyExists)
        );
    }

    #[test]
    fn a_blank_or_overlong_name_is_refused_naming_the_field() {
        for name in ["   ", &"x".repeat(MAX_NAME + 1)] {
            let err = given(&[])
                .decide(&when(TeamAction::Create {
                    team_id: T,
                    name: name.to_owned(),
                    description: None,
                    created_by: ADA,
                    at: at("2026-11-21T10:00:00Z"),
                }))
                .unwrap_err();
            assert!(
                matches!(err, TeamError::Invalid { field: "name", .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn another_organization_sees_no_team() {
        let team = given(&created());
        let foreign = TeamCommand {
            organization_id: OTHER_ORG,
            action: TeamAction::Archive {
                at: at("2026-11-22T10:00:00Z"),
            },
        };
        assert_eq!(team.decide(&foreign), Err(TeamError::NotFound));
        assert_eq!(
            Team::default().decide(&when(TeamAction::RemoveMember { user_id: BOB })),
            Err(TeamError::NotFound)
        );
    }

    #[test]
    fn an_update_records_the_new_details_and_an_unchanged_one_records_nothing() {
        let team = given(&created());
        let events = team
            .decide(&when(TeamAction::Update {
                name: None,
                description: Some(Some("Product design".into())),
            }))
            .unwrap();
        assert_eq!(
            events,
            vec![TeamEvent::TeamUpdated(TeamUpdated {
                name: "Design".into(),
                description: Some("Product design".into()),
            })]
        );
        let same = team
            .decide(&when(TeamAction::Update {
                name: Some("Design".into()),
                description: None,
            }))
            .unwrap();
        assert!(same.is_empty());
    }

    #[test]
    fn members_are_added_once_change_role_and_leave() {
        let mut history = created();
        history.push(bob_added());
        let team = given(&history);
        assert_eq!(team.members.get(&BOB), Some(&TeamRole::Member));
        assert_eq!(
            team.decide(&when(TeamAction::AddMember {
                user_id: BOB,
                role: TeamRole::Lead
            })),
            Err(TeamError::AlreadyMember)
        );
        assert_eq!(
            team.decide(&when(TeamAction::ChangeRole {
                user_id: BOB,
                role: TeamRole::Lead
            }))
            .unwrap(),
            vec![TeamEvent::TeamMemberRoleChanged(TeamMemberRoleChanged {
                user_id: BOB,
                role: TeamRole::Lead
            })]
        );
        assert!(team
            .decide(&when(TeamAction::ChangeRole {
                user_id: BOB,
                role: TeamRole::Member
            }))
            .unwrap()
            .is_empty());
        let removed = team
            .decide(&when(TeamAction::RemoveMember { user_id: BOB }))
            .unwrap();
        history.extend(removed);
        let team = given(&history);
        assert!(!team.members.contains_key(&BOB));
        assert_eq!(
            team.decide(&when(TeamAction::RemoveMember { user_id: BOB })),
            Err(TeamError::NotMember)
        );
    }

    #[test]
    fn an_archived_team_refuses_changes_and_archiving_again_records_nothing() {
        let mut history = created();
        history.push(TeamEvent::TeamArchived(TeamArchived {
            archived_at: at("2026-11-22T10:00:00Z"),
        }));
        let team = given(&history);
        assert!(team.archived);
        assert_eq!(
            team.decide(&when(TeamAction::AddMember {
                user_id: BOB,
                role: TeamRole::Member
            })),
            Err(TeamError::Archived)
        );
        assert!(team
            .decide(&when(TeamAction::Archive {
                at: at("2026-11-23T10:00:00Z")
            }))
            .unwrap()
            .is_empty());
    }
}
