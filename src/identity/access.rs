//! Who may do what right now: the in-memory access view, kept current from the log.
//!
//! An access token names its organization, role and frontends as they were when it was
//! issued, and lives for hours. Acting on those claims alone would let a removed member, a
//! demoted one, or the holder of a token for a frontend the organization has since disabled
//! go on for as long as the token lives. So every request and every open socket is checked
//! against this view instead: the members and roles of each organization, its enabled
//! frontends, and the sessions that have ended.
//!
//! The view is built by replaying the few identity event types it needs from the start of
//! the log, then follows the process's live feed, so a change made by any server process
//! reaches every process as soon as its feed delivers the event (the processes share only
//! the database; the log is the channel). Two consequences are handled explicitly:
//!
//! - *Lag*: a token may be fresher than this process's view (issued by another process just
//!   after a change this process has not applied yet). When the view would refuse what the
//!   token claims, [`Access::sync`] first waits until the view has applied the log up to its
//!   current head, and only then refuses. Refusals never rest on a stale view; the common
//!   case (view and claims agree) costs a map lookup.
//! - *Read-your-writes*: a command of this process changes the view only when the feed
//!   brings its events back, a few milliseconds later; the command handlers wait for that
//!   ([`Access::wait_applied`]) before answering, so the next request already sees it.
//!
//! Live sockets watch [`Access::changes`]: on every change that can take rights away they
//! check their caller again and close, or cut the subscriptions no longer allowed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use universal_events::identity::{Frontend, OrganizationEvent, Role, SessionEnded};
use universal_events::EventFamily;
use uuid::Uuid;

use crate::store::{EventStore, Filter, LiveFeed, RecordedEvent, StoreError, Subscription};

/// How long a refusal may wait for the view to catch up with the log.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// The event types the view is made of.
const TYPES: [&str; 5] = [
    "SessionEnded",
    "MemberAdded",
    "MemberRemoved",
    "FrontendEnabled",
    "FrontendDisabled",
];

#[derive(Debug, Default, Clone)]
struct OrgView {
    /// The organization stream's version this view has applied (events are applied once,
    /// in order).
    version: i64,
    members: HashMap<Uuid, Role>,
    frontends: Vec<Frontend>,
}

/// What a session may do in its organization now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    pub role: Role,
    pub frontends: Vec<Frontend>,
}

/// Why a session may no longer act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Logout, password change, deactivation or a reused refresh token.
    SessionEnded,
    /// The user is no longer a member of the token's organization.
    NotMember,
}

/// The access view. Cheap to share behind an `Arc`.
pub struct Access {
    ended: Arc<DashMap<Uuid, ()>>,
    orgs: DashMap<Uuid, OrgView>,
    /// The log position up to which the view has applied every event.
    applied: watch::Sender<i64>,
    /// Bumped whenever a change may take rights away; sockets watch it.
    changed: watch::Sender<u64>,
}

impl Access {
    /// An empty view sharing `ended` (the ended-session set the auth handlers also write to
    /// for their own commands).
    pub fn new(ended: Arc<DashMap<Uuid, ()>>) -> Arc<Self> {
        Arc::new(Self {
            ended,
            orgs: DashMap::new(),
            applied: watch::channel(0).0,
            changed: watch::channel(0).0,
        })
    }

    /// Builds the view from the log and keeps following it (on the current runtime) for as
    /// long as the view is alive.
    pub fn follow(self: &Arc<Self>, store: Arc<dyn EventStore>, live: Arc<LiveFeed>) {
        let filter = Filter {
            categories: Some(vec!["user".into(), "organization".into()]),
            event_types: Some(TYPES.iter().map(|t| t.to_string()).collect()),
            ..Filter::default()
        };
        let weak = Arc::downgrade(self);
        crate::rt::supervise("access-view", move || {
            // A restarted follower goes on from what the view has applied.
            let from = weak.upgrade().map_or(0, |a| *a.applied.borrow());
            let mut sub =
                Subscription::new(store.clone(), from, filter.clone()).with_live_feed(live.clone());
            let weak = weak.clone();
            async move {
                loop {
                    let next = sub.try_next().await;
                    let Some(access) = weak.upgrade() else { return };
                    match next {
                        Ok(Some(e)) => access.apply(&e),
                        Ok(None) => {
                            access.applied.send_if_modified(|p| {
                                let moved = sub.position() > *p;
                                *p = (*p).max(sub.position());
                                moved
                            });
                            drop(access);
                            sub.wait().await;
                        }
                        Err(err) => {
                            drop(access);
                            tracing::warn!(error = %err, "following the access view; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        });
    }

    /// Applies one event of the log (in position order).
    fn apply(&self, e: &RecordedEvent) {
        let mut revoking = false;
        match e.category.as_str() {
            "user" if e.event_type == "SessionEnded" => {
                if let Ok(s) = serde_json::from_value::<SessionEnded>(e.data.clone()) {
                    // Announced even when this process's own logout handler has already
                    // put the session in the set: its sockets learn it here.
                    self.ended.insert(s.session_id, ());
                    revoking = true;
                }
            }
            "organization" => {
                let id = e
                    .stream_id
                    .split_once('-')
                    .and_then(|(_, id)| Uuid::parse_str(id).ok());
                let decoded =
                    OrganizationEvent::decode_ref(&e.event_type, e.schema_version, &e.data);
                if let (Some(id), Ok(event)) = (id, decoded) {
                    let mut org = self.orgs.entry(id).or_default();
                    if e.version > org.version {
                        org.version = e.version;
                        revoking = match event {
                            OrganizationEvent::MemberAdded(m) => {
                                let before = org.members.insert(m.user_id, m.role);
                                before.is_some_and(|r| r != m.role)
                            }
                            OrganizationEvent::MemberRemoved(m) => {
                                org.members.remove(&m.user_id).is_some()
                            }
                            OrganizationEvent::FrontendEnabled(f) => {
                                if !org.frontends.contains(&f.frontend) {
                                    org.frontends.push(f.frontend);
                                }
                                false
                            }
                            OrganizationEvent::FrontendDisabled(f) => {
                                let before = org.frontends.len();
                                org.frontends.retain(|x| *x != f.frontend);
                                org.frontends.len() != before
                            }
                            _ => false,
                        };
                    }
                }
            }
            _ => {}
        }
        self.applied.send_modify(|p| *p = (*p).max(e.position));
        if revoking {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Whether the session has ended.
    pub fn session_ended(&self, session: Uuid) -> bool {
        self.ended.contains_key(&session)
    }

    /// The current rights of `user`'s `session` in `org`, as far as the view knows.
    pub fn rights(&self, user: Uuid, session: Uuid, org: Uuid) -> Result<Rights, Denied> {
        if self.session_ended(session) {
            return Err(Denied::SessionEnded);
        }
        let org = self.orgs.get(&org).ok_or(Denied::NotMember)?;
        let role = *org.members.get(&user).ok_or(Denied::NotMember)?;
        Ok(Rights {
            role,
            frontends: org.frontends.clone(),
        })
    }

    /// `user`'s role in `org` now, if they are a member (as far as the view knows).
    pub fn role_of(&self, org: Uuid, user: Uuid) -> Option<Role> {
        self.orgs.get(&org)?.members.get(&user).copied()
    }

    /// The log position the view has applied.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits (at most `timeout`) until the view has applied the log up to `position`;
    /// `false` when it has not in time.
    pub async fn wait_applied(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Waits until the view has applied everything committed so far (at most
    /// [`SYNC_TIMEOUT`]): what it answers afterwards is no older than this call.
    pub async fn sync(&self, store: &dyn EventStore) -> Result<(), StoreError> {
        let head = store.head_position().await?;
        if !self.wait_applied(head, SYNC_TIMEOUT).await {
            return Err(StoreError::Other(
                "the access view is behind the log; retry".into(),
            ));
        }
        Ok(())
    }

    /// A watch that changes whenever rights may have been taken away somewhere.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(
        position: i64,
        stream: &str,
        version: i64,
        kind: &str,
        data: serde_json::Value,
    ) -> RecordedEvent {
        RecordedEvent {
            position,
            stream_id: stream.to_owned(),
            category: crate::store::category_of(stream).to_owned(),
            version,
            event_id: Uuid::new_v4(),
            event_type: kind.to_owned(),
            schema_version: 1,
            data,
            metadata: json!({}),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn removal_demotion_disabling_and_logout_take_rights_away_and_are_announced() {
        let access = Access::new(Default::default());
        let (org, user, session) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let stream = format!("organization-{org}");
        let changes = access.changes();
        access.apply(&event(
            1,
            &stream,
            1,
            "MemberAdded",
            json!({ "user_id": user, "role": "member" }),
        ));
        access.apply(&event(
            2,
            &stream,
            2,
            "FrontendEnabled",
            json!({ "frontend": "citypulse" }),
        ));
        assert_eq!(
            access.rights(user, session, org),
            Ok(Rights {
                role: Role::Member,
                frontends: vec![Frontend::Citypulse]
            })
        );
        assert!(
            !changes.has_changed().unwrap(),
            "granting rights revokes nothing"
        );

        access.apply(&event(
            3,
            &stream,
            3,
            "MemberAdded",
            json!({ "user_id": user, "role": "viewer" }),
        ));
        assert_eq!(
            access.rights(user, session, org).unwrap().role,
            Role::Viewer
        );
        access.apply(&event(
            4,
            &stream,
            4,
            "FrontendDisabled",
            json!({ "frontend": "citypulse" }),
        ));
        assert!(access
            .rights(user, session, org)
            .unwrap()
            .frontends
            .is_empty());
        // Applying an event again (e.g. replayed) changes nothing.
        access.apply(&event(
            2,
            &stream,
            2,
            "FrontendEnabled",
            json!({ "frontend": "citypulse" }),
        ));
        assert!(access
            .rights(user, session, org)
            .unwrap()
            .frontends
            .is_empty());
        access.apply(&event(
            5,
            &stream,
            5,
            "MemberRemoved",
            json!({ "user_id": user }),
        ));
        assert_eq!(access.rights(user, session, org), Err(Denied::NotMember));
        assert_eq!(*access.changes().borrow(), 3);

        access.apply(&event(
            6,
            &format!("user-{user}"),
            9,
            "SessionEnded",
            json!({ "session_id": session, "reason": "logout", "ended_at": chrono::Utc::now() }),
        ));
        assert_eq!(access.rights(user, session, org), Err(Denied::SessionEnded));
        assert_eq!(access.applied(), 6);
    }
}
