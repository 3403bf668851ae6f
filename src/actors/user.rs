//! The user: account, password, profile, roles and sessions.
//!
//! Sessions live on the user's stream. A session holds the hash of its current refresh token
//! and the hashes of every token it has rotated away; presenting a rotated token again is the
//! classic theft signal, and the decider answers it by ending the whole session (family).
//! Password checks are slow by design (argon2id), so they run outside the actor: the handler
//! verifies against the hash it read and sends the command with that version as expected
//! version, so a password changed in between makes the command conflict instead of passing.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::identity::{
    EndReason, PasswordChanged, PasswordRehashed, ProfileUpdated, Role, RoleChanged, SessionEnded,
    SessionRefreshed, SessionStarted, UserDeactivated, UserEvent, UserRegistered,
};
use uuid::Uuid;

use super::runtime::Entity;

pub const MAX_DISPLAY_NAME: usize = 100;
/// Rotated refresh tokens remembered per session for reuse detection; older ones are
/// forgotten (presenting one is then simply refused), so a session that is refreshed for
/// years does not grow without bound.
const MAX_SPENT: usize = 64;

#[derive(Debug, Clone)]
pub enum UserCommand {
    Register {
        user_id: Uuid,
        email: String,
        display_name: String,
        password_hash: String,
        at: DateTime<Utc>,
    },
    /// The handler has verified the current password against `Session::password_hash`.
    ChangePassword {
        password_hash: String,
        at: DateTime<Utc>,
    },
    /// At a successful login, after the handler verified the password against a hash of an
    /// older scheme (`replaces`): the same password, hashed with argon2id. Nothing happens when
    /// the hash is no longer `replaces` (a concurrent login upgraded it first).
    RehashPassword {
        replaces: String,
        password_hash: String,
        at: DateTime<Utc>,
    },
    UpdateProfile {
        display_name: String,
    },
    AssignRole {
        role: Role,
    },
    RevokeRole {
        role: Role,
    },
    Deactivate {
        at: DateTime<Utc>,
    },
    /// Login, after the handler verified the password.
    StartSession {
        session_id: Uuid,
        organization_id: Option<Uuid>,
        refresh_hash: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    Refresh {
        session_id: Uuid,
        presented_hash: String,
        new_hash: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    EndSession {
        session_id: Uuid,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserError {
    #[error("user not found")]
    NotFound,
    #[error("user already exists")]
    AlreadyRegistered,
    #[error("the account is deactivated")]
    Deactivated,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Unknown, ended or expired session, or a refresh token that is not its current one.
    #[error("the session is not valid")]
    InvalidSession,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub organization_id: Option<Uuid>,
    pub refresh_hash: String,
    /// Hashes of refresh tokens already rotated away.
    pub spent: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub ended: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: Option<Uuid>,
    pub email: String,
    pub display_name: String,
    pub password_hash: String,
    pub roles: BTreeSet<Role>,
    pub active: bool,
    pub sessions: HashMap<Uuid, Session>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> UserError {
    UserError::Invalid {
        field,
        message: message.into(),
    }
}

fn check_display_name(name: &str) -> Result<(), UserError> {
    super::validate::name(name.trim(), MAX_DISPLAY_NAME).map_err(|m| invalid("display_name", m))
}

impl User {
    fn active(&self) -> Result<(), UserError> {
        match (self.id, self.active) {
            (None, _) => Err(UserError::NotFound),
            (Some(_), false) => Err(UserError::Deactivated),
            _ => Ok(()),
        }
    }

    fn end_all(&self, reason: EndReason, at: DateTime<Utc>) -> Vec<UserEvent> {
        let mut ids: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.ended)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|session_id| {
                UserEvent::SessionEnded(SessionEnded {
                    session_id,
                    reason,
                    ended_at: at,
                })
            })
            .collect()
    }
}

impl Entity for User {
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;

    const CATEGORY: &'static str = "user";

    fn decide(&self, cmd: &UserCommand) -> Result<Vec<UserEvent>, UserError> {
        use UserCommand as C;
        match cmd {
            C::Register {
                user_id,
                email,
                display_name,
                password_hash,
                at,
            } => {
                if self.id.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                check_display_name(display_name)?;
                Ok(vec![UserEvent::UserRegistered(UserRegistered {
                    user_id: *user_id,
                    email: email.clone(),
                    display_name: display_name.trim().to_owned(),
                    password_hash: password_hash.clone(),
                    registered_at: *at,
                })])
            }
            C::ChangePassword { password_hash, at } => {
                self.active()?;
                // Every session ends: whoever knew the old password is logged out.
                let mut events = vec![UserEvent::PasswordChanged(PasswordChanged {
                    password_hash: password_hash.clone(),
                    changed_at: *at,
                })];
                events.extend(self.end_all(EndReason::PasswordChanged, *at));
                Ok(events)
            }
            C::RehashPassword {
                replaces,
                password_hash,
                at,
            } => {
                self.active()?;
                if *replaces != self.password_hash {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::PasswordRehashed(PasswordRehashed {
                    password_hash: password_hash.clone(),
                    rehashed_at: *at,
                })])
            }
            C::UpdateProfile { display_name } => {
                self.active()?;
                check_display_name(display_name)?;
                if display_name.trim() == self.display_name {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileUpdated(ProfileUpdated {
                    display_name: display_name.trim().to_owned(),
                })])
            }
            C::AssignRole { role } => {
                self.active()?;
                if self.roles.contains(role) {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::RoleAssigned(RoleChanged { role: *role })])
            }
            C::RevokeRole { role } => {
                self.active()?;
                if !self.roles.contains(role) {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::RoleRevoked(RoleChanged { role: *role })])
            }
            C::Deactivate { at } => {
                self.active()?;
                let mut events = vec![UserEvent::UserDeactivated(UserDeactivated {
                    deactivated_at: *at,
                })];
                events.extend(self.end_all(EndReason::Deactivated, *at));
                Ok(events)
            }
            C::StartSession {
                session_id,
                organization_id,
                refresh_hash,
                expires_at,
                at,
            } => {
                self.active()?;
                if self.sessions.contains_key(session_id) {
                    return Err(UserError::InvalidSession);
                }
                Ok(vec![UserEvent::SessionStarted(SessionStarted {
                    session_id: *session_id,
                    organization_id: *organization_id,
                    refresh_hash: refresh_hash.clone(),
                    expires_at: *expires_at,
                    started_at: *at,
                })])
            }
            C::Refresh {
                session_id,
                presented_hash,
                new_hash,
                expires_at,
                at,
            } => {
                self.active()?;
                let session = self
                    .sessions
                    .get(session_id)
                    .ok_or(UserError::InvalidSession)?;
                if session.ended {
                    return Err(UserError::InvalidSession);
                }
                if session.spent.contains(presented_hash) {
                    // A rotated token came back: someone else holds a copy. End the family.
                    return Ok(vec![UserEvent::SessionEnded(SessionEnded {
                        session_id: *session_id,
                        reason: EndReason::RefreshTokenReuse,
                        ended_at: *at,
                    })]);
                }
                if session.refresh_hash != *presented_hash || session.expires_at <= *at {
                    return Err(UserError::InvalidSession);
                }
                Ok(vec![UserEvent::SessionRefreshed(SessionRefreshed {
                    session_id: *session_id,
                    refresh_hash: new_hash.clone(),
                    expires_at: *expires_at,
                })])
            }
            C::EndSession { session_id, at } => {
                if self.id.is_none() {
                    return Err(UserError::NotFound);
                }
                match self.sessions.get(session_id) {
                    Some(s) if !s.ended => Ok(vec![UserEvent::SessionEnded(SessionEnded {
                        session_id: *session_id,
                        reason: EndReason::Logout,
                        ended_at: *at,
                    })]),
                    Some(_) => Ok(vec![]),
                    None => Err(UserError::InvalidSession),
                }
            }
        }
    }

    fn evolve(&mut self, event: &UserEvent) {
        match event {
            UserEvent::UserRegistered(e) => {
                self.id = Some(e.user_id);
                self.email = e.email.clone();
                self.display_name = e.display_name.clone();
                self.password_hash = e.password_hash.clone();
                self.active = true;
            }
            UserEvent::PasswordChanged(e) => self.password_hash = e.password_hash.clone(),
            UserEvent::PasswordRehashed(e) => self.password_hash = e.password_hash.clone(),
            UserEvent::ProfileUpdated(e) => self.display_name = e.display_name.clone(),
            UserEvent::RoleAssigned(e) => {
                self.roles.insert(e.role);
            }
            UserEvent::RoleRevoked(e) => {
                self.roles.remove(&e.role);
            }
            UserEvent::UserDeactivated(_) => self.active = false,
            UserEvent::SessionStarted(e) => {
                // Ended and expired sessions answer nothing any more (their access tokens are
                // refused at the edge, their refresh tokens by `decide`): keep the state from
                // growing with every login.
                self.sessions
                    .retain(|_, s| !s.ended && s.expires_at > e.started_at);
                self.sessions.insert(
                    e.session_id,
                    Session {
                        organization_id: e.organization_id,
                        refresh_hash: e.refresh_hash.clone(),
                        spent: Vec::new(),
                        expires_at: e.expires_at,
                        ended: false,
                    },
                );
            }
            UserEvent::SessionRefreshed(e) => {
                if let Some(s) = self.sessions.get_mut(&e.session_id) {
                    let old = std::mem::replace(&mut s.refresh_hash, e.refresh_hash.clone());
                    if s.spent.len() >= MAX_SPENT {
                        s.spent.remove(0);
                    }
                    s.spent.push(old);
                    s.expires_at = e.expires_at;
                }
            }
            UserEvent::SessionEnded(e) => {
                if let Some(s) = self.sessions.get_mut(&e.session_id) {
                    s.ended = true;
                    s.spent = Vec::new();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: Uuid = Uuid::from_u128(1);
    const S: Uuid = Uuid::from_u128(2);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn given(events: &[UserEvent]) -> User {
        let mut u = User::default();
        for e in events {
            u.evolve(e);
        }
        u
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered(UserRegistered {
            user_id: U,
            email: "ada@example.org".into(),
            display_name: "Ada".into(),
            password_hash: "h1".into(),
            registered_at: at("2026-11-21T10:00:00Z"),
        })
    }

    fn started() -> UserEvent {
        UserEvent::SessionStarted(SessionStarted {
            session_id: S,
            organization_id: None,
            refresh_hash: "r1".into(),
            expires_at: at("2026-11-28T10:00:00Z"),
            started_at: at("2026-11-21T10:00:00Z"),
        })
    }

    fn refreshed(hash: &str) -> UserEvent {
        UserEvent::SessionRefreshed(SessionRefreshed {
            session_id: S,
            refresh_hash: hash.into(),
            expires_at: at("2026-11-28T11:00:00Z"),
        })
    }

    fn refresh(presented: &str, now: &str) -> UserCommand {
        UserCommand::Refresh {
            session_id: S,
            presented_hash: presented.into(),
            new_hash: "next".into(),
            expires_at: at("2026-11-29T00:00:00Z"),
            at: at(now),
        }
    }

    #[test]
    fn a_long_lived_session_and_many_logins_keep_the_state_bounded() {
        let mut events = vec![registered(), started()];
        for i in 0..(MAX_SPENT + 10) {
            events.push(refreshed(&format!("r{}", i + 2)));
        }
        let state = given(&events);
        assert_eq!(state.sessions[&S].spent.len(), MAX_SPENT);
        // The newest rotated-away token is still recognised as reused.
        let last_spent = format!("r{}", MAX_SPENT + 10);
        assert!(matches!(
            state
                .decide(&refresh(&last_spent, "2026-11-21T12:00:00Z"))
                .unwrap()[..],
            [UserEvent::SessionEnded(_)]
        ));
        // Once ended, a session is dropped at the next login.
        events.push(UserEvent::SessionEnded(SessionEnded {
            session_id: S,
            reason: EndReason::Logout,
            ended_at: at("2026-11-21T12:00:00Z"),
        }));
        events.push(UserEvent::SessionStarted(SessionStarted {
            session_id: Uuid::from_u128(3),
            organization_id: None,
            refresh_hash: "x".into(),
            expires_at: at("2026-11-28T13:00:00Z"),
            started_at: at("2026-11-21T13:00:00Z"),
        }));
        let state = given(&events);
        assert_eq!(state.sessions.len(), 1);
        assert!(state.sessions.contains_key(&Uuid::from_u128(3)));
    }

    #[test]
    fn a_user_registers_once() {
        let cmd = UserCommand::Register {
            user_id: U,
            email: "ada@example.org".into(),
            display_name: " Ada ".into(),
            password_hash: "h1".into(),
            at: at("2026-11-21T10:00:00Z"),
        };
        assert_eq!(given(&[]).decide(&cmd).unwrap(), vec![registered()]);
        assert_eq!(
            given(&[registered()]).decide(&cmd),
            Err(UserError::AlreadyRegistered)
        );
    }

    #[test]
    fn the_current_refresh_token_rotates() {
        let events = given(&[registered(), started()])
            .decide(&refresh("r1", "2026-11-22T00:00:00Z"))
            .unwrap();
        assert!(
            matches!(&events[..], [UserEvent::SessionRefreshed(r)] if r.refresh_hash == "next")
        );
    }

    #[test]
    fn reusing_a_rotated_refresh_token_ends_the_session_family() {
        let state = given(&[registered(), started(), refreshed("r2")]);
        let events = state
            .decide(&refresh("r1", "2026-11-22T00:00:00Z"))
            .unwrap();
        assert!(matches!(
            &events[..],
            [UserEvent::SessionEnded(e)] if e.reason == EndReason::RefreshTokenReuse
        ));
        // After that even the newest token is refused.
        let mut ended = state.clone();
        ended.evolve(&events[0]);
        assert_eq!(
            ended.decide(&refresh("r2", "2026-11-22T00:00:00Z")),
            Err(UserError::InvalidSession)
        );
    }

    #[test]
    fn unknown_or_expired_refresh_tokens_are_refused() {
        let state = given(&[registered(), started()]);
        assert_eq!(
            state.decide(&refresh("nope", "2026-11-22T00:00:00Z")),
            Err(UserError::InvalidSession)
        );
        assert_eq!(
            state.decide(&refresh("r1", "2026-12-30T00:00:00Z")),
            Err(UserError::InvalidSession)
        );
    }

    #[test]
    fn logout_ends_a_session_and_repeating_it_changes_nothing() {
        let state = given(&[registered(), started()]);
        let cmd = UserCommand::EndSession {
            session_id: S,
            at: at("2026-11-22T00:00:00Z"),
        };
        let events = state.decide(&cmd).unwrap();
        assert_eq!(events.len(), 1);
        let mut after = state.clone();
        after.evolve(&events[0]);
        assert_eq!(after.decide(&cmd), Ok(vec![]));
    }

    #[test]
    fn a_password_change_ends_every_open_session() {
        let state = given(&[registered(), started()]);
        let events = state
            .decide(&UserCommand::ChangePassword {
                password_hash: "h2".into(),
                at: at("2026-11-22T00:00:00Z"),
            })
            .unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[1], UserEvent::SessionEnded(e) if e.reason == EndReason::PasswordChanged)
        );
    }

    #[test]
    fn a_deactivated_user_cannot_log_in_or_change_anything() {
        let state = given(&[
            registered(),
            UserEvent::UserDeactivated(UserDeactivated {
                deactivated_at: at("2026-11-21T12:00:00Z"),
            }),
        ]);
        let login = UserCommand::StartSession {
            session_id: S,
            organization_id: None,
            refresh_hash: "r".into(),
            expires_at: at("2026-11-28T00:00:00Z"),
            at: at("2026-11-21T13:00:00Z"),
        };
        assert_eq!(state.decide(&login), Err(UserError::Deactivated));
        assert_eq!(
            state.decide(&UserCommand::UpdateProfile {
                display_name: "X".into()
            }),
            Err(UserError::Deactivated)
        );
    }

    #[test]
    fn roles_are_assigned_and_revoked_idempotently() {
        let state = given(&[registered()]);
        let assign = UserCommand::AssignRole { role: Role::Admin };
        let events = state.decide(&assign).unwrap();
        assert_eq!(events.len(), 1);
        let mut after = state.clone();
        after.evolve(&events[0]);
        assert_eq!(after.decide(&assign), Ok(vec![]));
        assert_eq!(
            after
                .decide(&UserCommand::RevokeRole { role: Role::Admin })
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            state.decide(&UserCommand::UpdateProfile {
                display_name: " ".into()
            }),
            Err(UserError::Invalid { .. })
        ));
    }
}
