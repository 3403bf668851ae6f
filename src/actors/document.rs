//! The FluxStudio collaborative document: a Yjs document that belongs to a project, kept as
//! its event stream `document-{id}`.
//!
//! The decider knows what a document is (its project, organization, name and grants) and
//! checks that every update it records is a Yjs update that decodes; it never holds the
//! Yjs content itself. The content is the fold of the `DocumentUpdated` events, which the
//! collaboration gateway (`crate::gateways::collab`) keeps loaded for the documents open on
//! this process, and which time travel rebuilds from a snapshot plus a tail.
//!
//! Every command names the caller's organization; a document of another organization
//! answers "not found".

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use universal_events::document::{
    DocumentAccess, DocumentCreated, DocumentEvent, DocumentGrantRevoked, DocumentGranted,
    DocumentUpdated,
};
use uuid::Uuid;
use yrs::updates::decoder::Decode;

use super::runtime::Entity;

pub const MAX_NAME: usize = 200;
/// Bound the state an actor holds.
pub const MAX_GRANTS: usize = 1000;
/// Most authors named on one update event.
pub const MAX_AUTHORS: usize = 1000;

#[derive(Debug, Clone)]
pub struct DocumentCommand {
    pub organization_id: Uuid,
    pub action: DocumentAction,
}

#[derive(Debug, Clone)]
pub enum DocumentAction {
    Create {
        document_id: Uuid,
        project_id: Uuid,
        name: String,
        created_by: Uuid,
        at: DateTime<Utc>,
    },
    /// Records one Yjs update (lib0 v1), the merge of `merged` client updates.
    Update {
        update: Vec<u8>,
        authors: Vec<Uuid>,
        merged: u32,
        restored_from: Option<i64>,
    },
    Grant {
        user_id: Uuid,
        access: DocumentAccess,
    },
    Revoke {
        user_id: Uuid,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DocumentError {
    /// Also what another organization sees.
    #[error("document not found")]
    NotFound,
    #[error("document already exists")]
    AlreadyExists,
    #[error("the user holds no grant on this document")]
    NoGrant,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Document {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub created_by: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub grants: BTreeMap<Uuid, DocumentAccess>,
    /// `DocumentUpdated` events so far.
    pub updates: i64,
}

impl Entity for Document {
    type Command = DocumentCommand;
    type Event = DocumentEvent;
    type Error = DocumentError;

    const CATEGORY: &'static str = "document";

    fn decide(&self, cmd: &DocumentCommand) -> Result<Vec<DocumentEvent>, DocumentError> {
        use DocumentAction as A;
        if let A::Create {
            document_id,
            project_id,
            name,
            created_by,
            at,
        } = &cmd.action
        {
            if self.id.is_some() {
                return Err(DocumentError::AlreadyExists);
            }
            super::validate::name(name, MAX_NAME).map_err(|message| DocumentError::Invalid {
                field: "name",
                message,
            })?;
            return Ok(vec![DocumentEvent::DocumentCreated(DocumentCreated {
                document_id: *document_id,
                project_id: *project_id,
                organization_id: cmd.organization_id,
                name: name.trim().to_owned(),
                created_by: *created_by,
                created_at: *at,
            })]);
        }
        if self.id.is_none() || self.organization_id != Some(cmd.organization_id) {
            return Err(DocumentError::NotFound);
        }
        match &cmd.action {
            A::Create { .. } => unreachable!("handled above"),
            A::Update {
                update,
                authors,
                merged,
                restored_from,
            } => {
                yrs::Update::decode_v1(update).map_err(|e| DocumentError::Invalid {
                    field: "update",
                    message: format!("not a Yjs update: {e}"),
                })?;
                if let Some(v) = restored_from {
                    if *v < 0 {
                        return Err(DocumentError::Invalid {
                            field: "version",
                            message: "must be 0 or more".into(),
                        });
                    }
                }
                let mut authors = authors.clone();
                authors.sort_unstable();
                authors.dedup();
                authors.truncate(MAX_AUTHORS);
                Ok(vec![DocumentEvent::DocumentUpdated(DocumentUpdated {
                    update: base64::engine::general_purpose::STANDARD.encode(update),
                    authors,
                    merged: *merged,
                    restored_from: *restored_from,
                })])
            }
            A::Grant { user_id, access } => {
                if self.grants.get(user_id) == Some(access) {
                    return Ok(vec![]);
                }
                if !self.grants.contains_key(user_id) && self.grants.len() >= MAX_GRANTS {
                    return Err(DocumentError::Invalid {
                        field: "user_id",
                        message: format!("a document has at most {MAX_GRANTS} grants"),
                    });
                }
                Ok(vec![DocumentEvent::DocumentGranted(DocumentGranted {
                    user_id: *user_id,
                    access: *access,
                })])
            }
            A::Revoke { user_id } => {
                if !self.grants.contains_key(user_id) {
                    return Err(DocumentError::NoGrant);
                }
                Ok(vec![DocumentEvent::DocumentGrantRevoked(
                    DocumentGrantRevoked { user_id: *user_id },
                )])
            }
        }
    }

    fn evolve(&mut self, event: &DocumentEvent) {
        match event {
            DocumentEvent::DocumentCreated(e) => {
                self.id = Some(e.document_id);
                self.organization_id = Some(e.organization_id);
                self.project_id = Some(e.project_id);
                self.name = e.name.clone();
                self.created_by = Some(e.created_by);
                self.created_at = Some(e.created_at);
            }
            DocumentEvent::DocumentUpdated(_) => self.updates += 1,
            DocumentEvent::DocumentGranted(e) => {
                self.grants.insert(e.user_id, e.access);
            }
            DocumentEvent::DocumentGrantRevoked(e) => {
                self.grants.remove(&e.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Text, Transact};

    const ORG: Uuid = Uuid::from_u128(10);
    const DOC: Uuid = Uuid::from_u128(30);
    const PROJECT: Uuid = Uuid::from_u128(20);
    const ADA: Uuid = Uuid::from_u128(1);

    fn cmd(action: DocumentAction) -> DocumentCommand {
        DocumentCommand {
            organization_id: ORG,
            action,
        }
    }

    fn created() -> Document {
        let mut d = Document::default();
        for e in d
            .decide(&cmd(DocumentAction::Create {
                document_id: DOC,
                project_id: PROJECT,
                name: " Brief ".into(),
                created_by: ADA,
                at: "2026-01-01T00:00:00Z".parse().unwrap(),
            }))
            .unwrap()
        {
            d.evolve(&e);
        }
        d
    }

    fn an_update() -> Vec<u8> {
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hi");
        txn.encode_update_v1()
    }

    #[test]
    fn a_document_records_updates_that_decode_and_refuses_others() {
        let d = created();
        assert_eq!(d.name, "Brief");
        let ok = d.decide(&cmd(DocumentAction::Update {
            update: an_update(),
            authors: vec![ADA, ADA],
            merged: 2,
            restored_from: None,
        }));
        match ok.unwrap().as_slice() {
            [DocumentEvent::DocumentUpdated(u)] => assert_eq!(u.authors, vec![ADA]),
            other => panic!("{other:?}"),
        }
        let bad = d.decide(&cmd(DocumentAction::Update {
            update: vec![0xff, 0xff, 0xff],
            authors: vec![ADA],
            merged: 1,
            restored_from: None,
        }));
        assert!(matches!(
            bad,
            Err(DocumentError::Invalid {
                field: "update",
                ..
            })
        ));
    }

    #[test]
    fn another_organization_sees_no_document_and_grants_come_and_go() {
        let mut d = created();
        let other = DocumentCommand {
            organization_id: Uuid::from_u128(99),
            action: DocumentAction::Revoke { user_id: ADA },
        };
        assert_eq!(d.decide(&other), Err(DocumentError::NotFound));
        let granted = d
            .decide(&cmd(DocumentAction::Grant {
                user_id: ADA,
                access: DocumentAccess::View,
            }))
            .unwrap();
        d.evolve(&granted[0]);
        assert_eq!(d.grants.get(&ADA), Some(&DocumentAccess::View));
        let again = d.decide(&cmd(DocumentAction::Grant {
            user_id: ADA,
            access: DocumentAccess::View,
        }));
        assert_eq!(again, Ok(vec![]));
        let revoked = d
            .decide(&cmd(DocumentAction::Revoke { user_id: ADA }))
            .unwrap();
        d.evolve(&revoked[0]);
        assert_eq!(
            d.decide(&cmd(DocumentAction::Revoke { user_id: ADA })),
            Err(DocumentError::NoGrant)
        );
    }
}
