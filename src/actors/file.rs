//! The FluxStudio file: versions of content (stored elsewhere, named by SHA-256), a name, an
//! organization and an optional project, grants to users and teams, and share links.
//!
//! Every command names the caller's organization; a file of another organization, or a
//! deleted one, answers "not found". Who may run a command (project members, grants) is
//! checked by the handler, which knows the caller; what a file allows is decided here.
//! Uploading to an existing file makes a new version; restoring an old version makes it
//! current again as a new version, so no history is lost.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use universal_events::file::{
    FileAccess, FileDeleted, FileEvent, FileMoved, FilePermissionGranted, FilePermissionRevoked,
    FileRenamed, FileUploaded, FileVersionRestored, GranteeKind, ShareLinkCreated,
    ShareLinkRevoked,
};
use uuid::Uuid;

use super::runtime::Entity;

/// Longest file name, in characters.
pub const MAX_NAME: usize = 255;
/// Longest MIME type, in characters.
pub const MAX_MIME: usize = 255;
/// Bound the state an actor holds.
pub const MAX_VERSIONS: usize = 10_000;
pub const MAX_GRANTS: usize = 1_000;
pub const MAX_LINKS: usize = 1_000;
/// A share link lives at most this long.
pub const MAX_LINK_DAYS: i64 = 30;

/// A command on one file, scoped to the caller's organization.
#[derive(Debug, Clone)]
pub struct FileCommand {
    pub organization_id: Uuid,
    pub by: Uuid,
    pub at: DateTime<Utc>,
    pub action: FileAction,
}

/// Content already committed to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub sha256: String,
    pub size: i64,
    pub mime_type: String,
    pub sniffed_mime_type: Option<String>,
}

#[derive(Debug, Clone)]
pub enum FileAction {
    /// Creates the file (version 1) or adds a version; `project_id` and `name` are used on
    /// creation only (`name` also renames when given for a new version).
    Upload {
        file_id: Uuid,
        project_id: Option<Uuid>,
        name: String,
        content: Content,
    },
    Rename {
        name: String,
    },
    Move {
        project_id: Option<Uuid>,
    },
    Restore {
        version: i32,
    },
    Delete,
    Grant {
        kind: GranteeKind,
        grantee: Uuid,
        access: FileAccess,
    },
    Revoke {
        kind: GranteeKind,
        grantee: Uuid,
    },
    CreateLink {
        link_id: Uuid,
        expires_at: DateTime<Utc>,
        max_downloads: Option<i64>,
    },
    RevokeLink {
        link_id: Uuid,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FileError {
    /// Also what another organization sees, and what a deleted file answers.
    #[error("file not found")]
    NotFound,
    #[error("version not found")]
    NoVersion,
    #[error("share link not found")]
    NoLink,
    #[error("grant not found")]
    NoGrant,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    pub content: Content,
    pub uploaded_by: Uuid,
    pub uploaded_at: DateTime<Utc>,
    /// The version this one restored, if it is a restore.
    pub restored_from: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Link {
    pub expires_at: DateTime<Utc>,
    pub max_downloads: Option<i64>,
    pub revoked: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct File {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub created_by: Option<Uuid>,
    /// Versions by number (1, 2, ...); the last one is current.
    pub versions: BTreeMap<i32, Version>,
    pub deleted: bool,
    /// Grants as `"user:<id>"` / `"team:<id>"` (string keys keep the state JSON-friendly).
    pub grants: BTreeMap<String, FileAccess>,
    pub links: BTreeMap<Uuid, Link>,
}

fn grant_key(kind: GranteeKind, id: Uuid) -> String {
    format!("{}:{id}", kind.as_str())
}

fn invalid(field: &'static str, message: impl Into<String>) -> FileError {
    FileError::Invalid {
        field,
        message: message.into(),
    }
}

/// The last segment of a name a client sent (`C:\a\b.png` and `../b.png` are `b.png`),
/// trimmed and checked like every name.
pub fn clean_name(raw: &str) -> Result<String, FileError> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or(raw).trim();
    if base == "." || base == ".." {
        return Err(invalid("name", "must name a file"));
    }
    super::validate::name(base, MAX_NAME).map_err(|m| invalid("name", m))?;
    Ok(base.to_owned())
}

fn check_content(c: &Content) -> Result<(), FileError> {
    let hex = c.sha256.len() == 64 && c.sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || c.sha256.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("sha256", "must be 64 lowercase hex digits"));
    }
    if c.size < 0 {
        return Err(invalid("size", "must not be negative"));
    }
    super::validate::name(&c.mime_type, MAX_MIME).map_err(|m| invalid("mime_type", m))?;
    Ok(())
}

impl File {
    pub fn current(&self) -> Option<(i32, &Version)> {
        self.versions.iter().next_back().map(|(n, v)| (*n, v))
    }

    /// The access a grant gives `user` directly, or through one of `teams`.
    pub fn granted(&self, user: Uuid, teams: &[Uuid]) -> Option<FileAccess> {
        let direct = self
            .grants
            .get(&grant_key(GranteeKind::User, user))
            .copied();
        let via_team = teams
            .iter()
            .filter_map(|t| self.grants.get(&grant_key(GranteeKind::Team, *t)).copied())
            .max();
        direct.max(via_team)
    }

    /// The teams that hold a grant on this file.
    pub fn granted_teams(&self) -> Vec<Uuid> {
        self.grants
            .keys()
            .filter_map(|k| k.strip_prefix("team:"))
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect()
    }

    fn next_version(&self) -> i32 {
        self.current().map_or(1, |(n, _)| n + 1)
    }
}

impl Entity for File {
    type Command = FileCommand;
    type Event = FileEvent;
    type Error = FileError;

    const CATEGORY: &'static str = "file";

    fn decide(&self, cmd: &FileCommand) -> Result<Vec<FileEvent>, FileError> {
        use FileAction as A;
        let exists = self.id.is_some();
        if exists && (self.organization_id != Some(cmd.organization_id) || self.deleted) {
            return Err(FileError::NotFound);
        }
        if let A::Upload {
            file_id,
            project_id,
            name,
            content,
        } = &cmd.action
        {
            check_content(content)?;
            if self.versions.len() >= MAX_VERSIONS {
                return Err(invalid(
                    "file",
                    format!("a file has at most {MAX_VERSIONS} versions"),
                ));
            }
            let name = if exists && name.is_empty() {
                self.name.clone()
            } else {
                clean_name(name)?
            };
            return Ok(vec![FileEvent::FileUploaded(FileUploaded {
                file_id: *file_id,
                organization_id: cmd.organization_id,
                project_id: if exists { self.project_id } else { *project_id },
                name,
                mime_type: content.mime_type.clone(),
                sniffed_mime_type: content.sniffed_mime_type.clone(),
                size: content.size,
                sha256: content.sha256.clone(),
                version: self.next_version(),
                uploaded_by: cmd.by,
                uploaded_at: cmd.at,
            })]);
        }
        if !exists {
            return Err(FileError::NotFound);
        }
        match &cmd.action {
            A::Upload { .. } => unreachable!("handled above"),
            A::Rename { name } => {
                let name = clean_name(name)?;
                if name == self.name {
                    return Ok(vec![]);
                }
                Ok(vec![FileEvent::FileRenamed(FileRenamed { name })])
            }
            A::Move { project_id } => {
                if *project_id == self.project_id {
                    return Ok(vec![]);
                }
                Ok(vec![FileEvent::FileMoved(FileMoved {
                    project_id: *project_id,
                })])
            }
            A::Restore { version } => {
                let old = self.versions.get(version).ok_or(FileError::NoVersion)?;
                if self.versions.len() >= MAX_VERSIONS {
                    return Err(invalid(
                        "version",
                        format!("a file has at most {MAX_VERSIONS} versions"),
                    ));
                }
                Ok(vec![FileEvent::FileVersionRestored(FileVersionRestored {
                    restored_version: *version,
                    version: self.next_version(),
                    sha256: old.content.sha256.clone(),
                    size: old.content.size,
                    mime_type: old.content.mime_type.clone(),
                    sniffed_mime_type: old.content.sniffed_mime_type.clone(),
                    restored_by: cmd.by,
                    restored_at: cmd.at,
                })])
            }
            A::Delete => Ok(vec![FileEvent::FileDeleted(FileDeleted {
                deleted_by: cmd.by,
                deleted_at: cmd.at,
            })]),
            A::Grant {
                kind,
                grantee,
                access,
            } => {
                let key = grant_key(*kind, *grantee);
                match self.grants.get(&key) {
                    Some(a) if a == access => return Ok(vec![]),
                    None if self.grants.len() >= MAX_GRANTS => {
                        return Err(invalid(
                            "access",
                            format!("a file has at most {MAX_GRANTS} grants"),
                        ))
                    }
                    _ => {}
                }
                Ok(vec![FileEvent::FilePermissionGranted(
                    FilePermissionGranted {
                        grantee_kind: *kind,
                        grantee_id: *grantee,
                        access: *access,
                        granted_by: cmd.by,
                    },
                )])
            }
            A::Revoke { kind, grantee } => {
                if !self.grants.contains_key(&grant_key(*kind, *grantee)) {
                    return Err(FileError::NoGrant);
                }
                Ok(vec![FileEvent::FilePermissionRevoked(
                    FilePermissionRevoked {
                        grantee_kind: *kind,
                        grantee_id: *grantee,
                        revoked_by: cmd.by,
                    },
                )])
            }
            A::CreateLink {
                link_id,
                expires_at,
                max_downloads,
            } => {
                if *expires_at <= cmd.at {
                    return Err(invalid("expires_at", "must be in the future"));
                }
                if *expires_at > cmd.at + Duration::days(MAX_LINK_DAYS) {
                    return Err(invalid(
                        "expires_at",
                        format!("must be at most {MAX_LINK_DAYS} days ahead"),
                    ));
                }
                if max_downloads.is_some_and(|n| !(1..=1_000_000).contains(&n)) {
                    return Err(invalid("max_downloads", "must be 1 to 1000000"));
                }
                if self.links.contains_key(link_id) {
                    return Ok(vec![]);
                }
                if self.links.len() >= MAX_LINKS {
                    return Err(invalid(
                        "expires_at",
                        format!("a file has at most {MAX_LINKS} share links"),
                    ));
                }
                Ok(vec![FileEvent::ShareLinkCreated(ShareLinkCreated {
                    link_id: *link_id,
                    expires_at: *expires_at,
                    max_downloads: *max_downloads,
                    created_by: cmd.by,
                    created_at: cmd.at,
                })])
            }
            A::RevokeLink { link_id } => match self.links.get(link_id) {
                None => Err(FileError::NoLink),
                Some(l) if l.revoked => Ok(vec![]),
                Some(_) => Ok(vec![FileEvent::ShareLinkRevoked(ShareLinkRevoked {
                    link_id: *link_id,
                    revoked_by: cmd.by,
                    revoked_at: cmd.at,
                })]),
            },
        }
    }

    fn evolve(&mut self, event: &FileEvent) {
        match event {
            FileEvent::FileUploaded(e) => {
                if self.id.is_none() {
                    self.id = Some(e.file_id);
                    self.organization_id = Some(e.organization_id);
                    self.project_id = e.project_id;
                    self.created_by = Some(e.uploaded_by);
                }
                self.name = e.name.clone();
                self.versions.insert(
                    e.version,
                    Version {
                        content: Content {
                            sha256: e.sha256.clone(),
                            size: e.size,
                            mime_type: e.mime_type.clone(),
                            sniffed_mime_type: e.sniffed_mime_type.clone(),
                        },
                        uploaded_by: e.uploaded_by,
                        uploaded_at: e.uploaded_at,
                        restored_from: None,
                    },
                );
            }
            FileEvent::FileRenamed(e) => self.name = e.name.clone(),
            FileEvent::FileMoved(e) => self.project_id = e.project_id,
            FileEvent::FileVersionRestored(e) => {
                self.versions.insert(
                    e.version,
                    Version {
                        content: Content {
                            sha256: e.sha256.clone(),
                            size: e.size,
                            mime_type: e.mime_type.clone(),
                            sniffed_mime_type: e.sniffed_mime_type.clone(),
                        },
                        uploaded_by: e.restored_by,
                        uploaded_at: e.restored_at,
                        restored_from: Some(e.restored_version),
                    },
                );
            }
            FileEvent::FileDeleted(_) => self.deleted = true,
            FileEvent::FilePermissionGranted(e) => {
                self.grants
                    .insert(grant_key(e.grantee_kind, e.grantee_id), e.access);
            }
            FileEvent::FilePermissionRevoked(e) => {
                self.grants.remove(&grant_key(e.grantee_kind, e.grantee_id));
            }
            FileEvent::ShareLinkCreated(e) => {
                self.links.insert(
                    e.link_id,
                    Link {
                        expires_at: e.expires_at,
                        max_downloads: e.max_downloads,
                        revoked: false,
                    },
                );
            }
            FileEvent::ShareLinkRevoked(e) => {
                if let Some(l) = self.links.get_mut(&e.link_id) {
                    l.revoked = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: Uuid = Uuid::from_u128(10);
    const F: Uuid = Uuid::from_u128(50);
    const P: Uuid = Uuid::from_u128(30);
    const ADA: Uuid = Uuid::from_u128(1);
    const TEAM: Uuid = Uuid::from_u128(20);

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn given(events: &[FileEvent]) -> File {
        let mut f = File::default();
        for e in events {
            f.evolve(e);
        }
        f
    }

    fn when(action: FileAction) -> FileCommand {
        FileCommand {
            organization_id: ORG,
            by: ADA,
            at: at("2026-12-04T10:00:00Z"),
            action,
        }
    }

    fn content(byte: char) -> Content {
        Content {
            sha256: byte.to_string().repeat(64),
            size: 4,
            mime_type: "image/png".into(),
            sniffed_mime_type: Some("image/png".into()),
        }
    }

    fn upload(name: &str, byte: char) -> FileAction {
        FileAction::Upload {
            file_id: F,
            project_id: Some(P),
            name: name.into(),
            content: content(byte),
        }
    }

    #[test]
    fn the_first_upload_creates_version_one_and_the_next_one_version_two() {
        let first = given(&[]).decide(&when(upload("a.png", 'a'))).unwrap();
        assert!(matches!(&first[0], FileEvent::FileUploaded(u)
            if u.version == 1 && u.project_id == Some(P) && u.organization_id == ORG));
        let file = given(&first);
        let second = file.decide(&when(upload("", 'b'))).unwrap();
        assert!(matches!(&second[0], FileEvent::FileUploaded(u)
            if u.version == 2 && u.name == "a.png" && u.sha256 == "b".repeat(64)));
    }

    #[test]
    fn a_path_in_a_name_keeps_only_its_last_segment() {
        let events = given(&[])
            .decide(&when(upload("../../etc/passwd", 'a')))
            .unwrap();
        assert!(matches!(&events[0], FileEvent::FileUploaded(u) if u.name == "passwd"));
        let events = given(&[])
            .decide(&when(upload("C:\\Users\\ada\\plan.pdf", 'a')))
            .unwrap();
        assert!(matches!(&events[0], FileEvent::FileUploaded(u) if u.name == "plan.pdf"));
        let err = given(&[]).decide(&when(upload("dir/..", 'a'))).unwrap_err();
        assert!(matches!(err, FileError::Invalid { field: "name", .. }));
    }

    #[test]
    fn restoring_makes_an_old_version_current_as_a_new_version() {
        let mut history = given(&[]).decide(&when(upload("a.png", 'a'))).unwrap();
        history.extend(given(&history).decide(&when(upload("", 'b'))).unwrap());
        let file = given(&history);
        let restored = file
            .decide(&when(FileAction::Restore { version: 1 }))
            .unwrap();
        history.extend(restored);
        let file = given(&history);
        let (n, current) = file.current().unwrap();
        assert_eq!(n, 3);
        assert_eq!(current.content.sha256, "a".repeat(64));
        assert_eq!(current.restored_from, Some(1));
        assert_eq!(
            file.decide(&when(FileAction::Restore { version: 9 })),
            Err(FileError::NoVersion)
        );
    }

    #[test]
    fn a_deleted_file_or_another_organizations_is_not_found() {
        let mut history = given(&[]).decide(&when(upload("a.png", 'a'))).unwrap();
        let file = given(&history);
        let foreign = FileCommand {
            organization_id: Uuid::from_u128(11),
            ..when(FileAction::Delete)
        };
        assert_eq!(file.decide(&foreign), Err(FileError::NotFound));
        history.extend(file.decide(&when(FileAction::Delete)).unwrap());
        assert_eq!(
            given(&history).decide(&when(FileAction::Rename { name: "b".into() })),
            Err(FileError::NotFound)
        );
    }

    #[test]
    fn grants_reach_users_directly_and_through_teams_and_can_be_revoked() {
        let mut history = given(&[]).decide(&when(upload("a.png", 'a'))).unwrap();
        history.extend(
            given(&history)
                .decide(&when(FileAction::Grant {
                    kind: GranteeKind::Team,
                    grantee: TEAM,
                    access: FileAccess::Comment,
                }))
                .unwrap(),
        );
        let bob = Uuid::from_u128(2);
        let file = given(&history);
        assert_eq!(file.granted(bob, &[TEAM]), Some(FileAccess::Comment));
        assert_eq!(file.granted(bob, &[]), None);
        history.extend(
            file.decide(&when(FileAction::Revoke {
                kind: GranteeKind::Team,
                grantee: TEAM,
            }))
            .unwrap(),
        );
        assert_eq!(given(&history).granted(bob, &[TEAM]), None);
        assert_eq!(
            given(&history).decide(&when(FileAction::Revoke {
                kind: GranteeKind::Team,
                grantee: TEAM
            })),
            Err(FileError::NoGrant)
        );
    }

    #[test]
    fn a_share_link_must_expire_within_thirty_days() {
        let history = given(&[]).decide(&when(upload("a.png", 'a'))).unwrap();
        let file = given(&history);
        let link = |days: i64| FileAction::CreateLink {
            link_id: Uuid::from_u128(70),
            expires_at: at("2026-12-04T10:00:00Z") + Duration::days(days),
            max_downloads: Some(3),
        };
        assert_eq!(file.decide(&when(link(7))).unwrap().len(), 1);
        assert!(matches!(
            file.decide(&when(link(31))),
            Err(FileError::Invalid {
                field: "expires_at",
                ..
            })
        ));
        assert!(matches!(
            file.decide(&when(link(0))),
            Err(FileError::Invalid {
                field: "expires_at",
                ..
            })
        ));
    }
}
