//! The organization: members with roles and the frontends it has enabled.
//!
//! The creator becomes its first admin. Only admins manage members and frontends (the
//! command carries who asks), and the last admin can be neither removed nor demoted, so an
//! organization is never left without one.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::identity::{
    Frontend, FrontendChanged, MemberAdded, MemberRemoved, OrganizationCreated, OrganizationEvent,
    OrganizationRenamed, Role,
};
use uuid::Uuid;

use super::runtime::Entity;

pub const MAX_NAME: usize = 200;

#[derive(Debug, Clone)]
pub struct OrgCommand {
    /// The user asking; checked against the members' roles.
    pub actor: Uuid,
    pub action: OrgAction,
}

#[derive(Debug, Clone)]
pub enum OrgAction {
    Create {
        organization_id: Uuid,
        name: String,
        at: DateTime<Utc>,
    },
    Rename {
        name: String,
    },
    SetMember {
        user_id: Uuid,
        role: Role,
    },
    RemoveMember {
        user_id: Uuid,
    },
    SetFrontend {
        frontend: Frontend,
        enabled: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OrgError {
    /// Also what a non-member sees, so that ids do not leak.
    #[error("organization not found")]
    NotFound,
    #[error("organization already exists")]
    AlreadyExists,
    #[error("only an admin of the organization may do this")]
    NotAdmin,
    #[error("the last admin cannot be removed or demoted")]
    LastAdmin,
    #[error("user is not a member")]
    NotMember,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Organization {
    pub id: Option<Uuid>,
    pub name: String,
    pub members: BTreeMap<Uuid, Role>,
    pub frontends: BTreeSet<Frontend>,
}

fn check_name(name: &str) -> Result<(), OrgError> {
    super::validate::name(name.trim(), MAX_NAME).map_err(|message| OrgError::Invalid {
        field: "name",
        message,
    })
}

impl Organization {
    fn admins(&self) -> usize {
        self.members.values().filter(|r| **r == Role::Admin).count()
    }

    fn require_admin(&self, actor: Uuid) -> Result<(), OrgError> {
        match self.members.get(&actor) {
            None => Err(OrgError::NotFound),
            Some(Role::Admin) => Ok(()),
            Some(_) => Err(OrgError::NotAdmin),
        }
    }
}

impl Entity for Organization {
    type Command = OrgCommand;
    type Event = OrganizationEvent;
    type Error = OrgError;

    const CATEGORY: &'static str = "organization";

    fn decide(&self, cmd: &OrgCommand) -> Result<Vec<OrganizationEvent>, OrgError> {
        if let OrgAction::Create {
            organization_id,
            name,
            at,
        } = &cmd.action
        {
            if self.id.is_some() {
                return Err(OrgError::AlreadyExists);
            }
            check_name(name)?;
            return Ok(vec![
                OrganizationEvent::OrganizationCreated(OrganizationCreated {
                    organization_id: *organization_id,
                    name: name.trim().to_owned(),
                    created_by: cmd.actor,
                    created_at: *at,
                }),
                OrganizationEvent::MemberAdded(MemberAdded {
                    user_id: cmd.actor,
                    role: Role::Admin,
                }),
            ]);
        }
        if self.id.is_none() {
            return Err(OrgError::NotFound);
        }
        self.require_admin(cmd.actor)?;
        match &cmd.action {
            OrgAction::Create { .. } => unreachable!("handled above"),
            OrgAction::Rename { name } => {
                check_name(name)?;
                if name.trim() == self.name {
                    return Ok(vec![]);
                }
                Ok(vec![OrganizationEvent::OrganizationRenamed(
                    OrganizationRenamed {
                        name: name.trim().to_owned(),
                    },
                )])
            }
            OrgAction::SetMember { user_id, role } => {
                let current = self.members.get(user_id);
                if current == Some(role) {
                    return Ok(vec![]);
                }
                if current == Some(&Role::Admin) && self.admins() == 1 {
                    return Err(OrgError::LastAdmin);
                }
                Ok(vec![OrganizationEvent::MemberAdded(MemberAdded {
                    user_id: *user_id,
                    role: *role,
                })])
            }
            OrgAction::RemoveMember { user_id } => match self.members.get(user_id) {
                None => Err(OrgError::NotMember),
                Some(Role::Admin) if self.admins() == 1 => Err(OrgError::LastAdmin),
                Some(_) => Ok(vec![OrganizationEvent::MemberRemoved(MemberRemoved {
                    user_id: *user_id,
                })]),
            },
            OrgAction::SetFrontend { frontend, enabled } => {
                if self.frontends.contains(frontend) == *enabled {
                    return Ok(vec![]);
                }
                let change = FrontendChanged {
                    frontend: *frontend,
                };
                Ok(vec![if *enabled {
                    OrganizationEvent::FrontendEnabled(change)
                } else {
                    OrganizationEvent::FrontendDisabled(change)
                }])
            }
        }
    }

    fn evolve(&mut self, event: &OrganizationEvent) {
        match event {
            OrganizationEvent::OrganizationCreated(e) => {
                self.id = Some(e.organization_id);
                self.name = e.name.clone();
            }
            OrganizationEvent::OrganizationRenamed(e) => self.name = e.name.clone(),
            OrganizationEvent::MemberAdded(e) => {
                self.members.insert(e.user_id, e.role);
            }
            OrganizationEvent::MemberRemoved(e) => {
                self.members.remove(&e.user_id);
            }
            OrganizationEvent::FrontendEnabled(e) => {
                self.frontends.insert(e.frontend);
            }
            OrganizationEvent::FrontendDisabled(e) => {
                self.frontends.remove(&e.frontend);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Uuid = Uuid::from_u128(10);
    const ADA: Uuid = Uuid::from_u128(1);
    const BOB: Uuid = Uuid::from_u128(2);

    fn given(events: &[OrganizationEvent]) -> Organization {
        let mut o = Organization::default();
        for e in events {
            o.evolve(e);
        }
        o
    }

    fn cmd(actor: Uuid, action: OrgAction) -> OrgCommand {
        OrgCommand { actor, action }
    }

    fn created() -> Vec<OrganizationEvent> {
        given(&[])
            .decide(&cmd(
                ADA,
                OrgAction::Create {
                    organization_id: O,
                    name: "Springfield".into(),
                    at: "2026-11-21T10:00:00Z".parse().unwrap(),
                },
            ))
            .unwrap()
    }

    #[test]
    fn the_creator_becomes_the_admin() {
        let events = created();
        assert_eq!(
            events[1],
            OrganizationEvent::MemberAdded(MemberAdded {
                user_id: ADA,
                role: Role::Admin
            })
        );
    }

    #[test]
    fn only_admins_manage_members_and_frontends() {
        let mut events = created();
        events.push(OrganizationEvent::MemberAdded(MemberAdded {
            user_id: BOB,
            role: Role::Viewer,
        }));
        let org = given(&events);
        let enable = OrgAction::SetFrontend {
            frontend: Frontend::Citypulse,
            enabled: true,
        };
        assert_eq!(
            org.decide(&cmd(BOB, enable.clone())),
            Err(OrgError::NotAdmin)
        );
        assert_eq!(
            org.decide(&cmd(Uuid::from_u128(99), enable.clone())),
            Err(OrgError::NotFound),
            "a stranger learns nothing"
        );
        let out = org.decide(&cmd(ADA, enable.clone())).unwrap();
        assert_eq!(out.len(), 1);
        let mut after = org.clone();
        after.evolve(&out[0]);
        assert_eq!(
            after.decide(&cmd(ADA, enable)),
            Ok(vec![]),
            "already enabled"
        );
    }

    #[test]
    fn the_last_admin_cannot_leave_or_be_demoted() {
        let org = given(&created());
        assert_eq!(
            org.decide(&cmd(ADA, OrgAction::RemoveMember { user_id: ADA })),
            Err(OrgError::LastAdmin)
        );
        assert_eq!(
            org.decide(&cmd(
                ADA,
                OrgAction::SetMember {
                    user_id: ADA,
                    role: Role::Member
                }
            )),
            Err(OrgError::LastAdmin)
        );
        assert_eq!(
            org.decide(&cmd(ADA, OrgAction::RemoveMember { user_id: BOB })),
            Err(OrgError::NotMember)
        );
    }

    #[test]
    fn commands_to_a_missing_organization_are_not_found() {
        assert_eq!(
            given(&[]).decide(&cmd(ADA, OrgAction::Rename { name: "X".into() })),
            Err(OrgError::NotFound)
        );
    }
}
