//! Events of a FluxStudio file: its versions (content lives in the object store, addressed by
//! SHA-256; the log holds only what happened), its name and project, its grants and its share
//! links.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{payload, DecodeError, EventFamily};

/// How much a grant lets its holder do with one file, from least to most.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    View,
    Comment,
    Edit,
    Admin,
}

impl FileAccess {
    pub const ALL: [FileAccess; 4] = [
        FileAccess::View,
        FileAccess::Comment,
        FileAccess::Edit,
        FileAccess::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileAccess::View => "view",
            FileAccess::Comment => "comment",
            FileAccess::Edit => "edit",
            FileAccess::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<FileAccess> {
        FileAccess::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Who a grant is for.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum GranteeKind {
    User,
    Team,
}

impl GranteeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GranteeKind::User => "user",
            GranteeKind::Team => "team",
        }
    }
}

/// The file enum: one variant per event type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(tag = "type", content = "data")]
pub enum FileEvent {
    FileUploaded(FileUploaded),
    FileRenamed(FileRenamed),
    FileMoved(FileMoved),
    FileVersionRestored(FileVersionRestored),
    FileDeleted(FileDeleted),
    FilePermissionGranted(FilePermissionGranted),
    FilePermissionRevoked(FilePermissionRevoked),
    ShareLinkCreated(ShareLinkCreated),
    ShareLinkRevoked(ShareLinkRevoked),
}

/// A new version of the file (version 1 creates it). `sha256` names the content in the store.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FileUploaded {
    pub file_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub name: String,
    /// The MIME type the client declared.
    pub mime_type: String,
    /// The type the content's first bytes show (`infer`), when they show one.
    pub sniffed_mime_type: Option<String>,
    pub size: i64,
    pub sha256: String,
    pub version: i32,
    pub uploaded_by: Uuid,
    pub uploaded_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FileRenamed {
    pub name: String,
}

/// To another project of the same organization, or out of any project (`None`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FileMoved {
    pub project_id: Option<Uuid>,
}

/// An old version made current again as a new version (`version`), so history is kept.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FileVersionRestored {
    pub restored_version: i32,
    pub version: i32,
    pub sha256: String,
    pub size: i64,
    pub mime_type: String,
    pub sniffed_mime_type: Option<String>,
    pub restored_by: Uuid,
    pub restored_at: DateTime<Utc>,
}

/// A tombstone: the content stays in the store until the retention sweep.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FileDeleted {
    pub deleted_by: Uuid,
    pub deleted_at: DateTime<Utc>,
}

/// Grants (or changes) `access` for a user or a team of the organization.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FilePermissionGranted {
    pub grantee_kind: GranteeKind,
    pub grantee_id: Uuid,
    pub access: FileAccess,
    pub granted_by: Uuid,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct FilePermissionRevoked {
    pub grantee_kind: GranteeKind,
    pub grantee_id: Uuid,
    pub revoked_by: Uuid,
}

/// A link that downloads the current version without an account until `expires_at`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ShareLinkCreated {
    pub link_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub max_downloads: Option<i64>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct ShareLinkRevoked {
    pub link_id: Uuid,
    pub revoked_by: Uuid,
    pub revoked_at: DateTime<Utc>,
}

impl EventFamily for FileEvent {
    fn event_type(&self) -> &'static str {
        match self {
            FileEvent::FileUploaded(_) => "FileUploaded",
            FileEvent::FileRenamed(_) => "FileRenamed",
            FileEvent::FileMoved(_) => "FileMoved",
            FileEvent::FileVersionRestored(_) => "FileVersionRestored",
            FileEvent::FileDeleted(_) => "FileDeleted",
            FileEvent::FilePermissionGranted(_) => "FilePermissionGranted",
            FileEvent::FilePermissionRevoked(_) => "FilePermissionRevoked",
            FileEvent::ShareLinkCreated(_) => "ShareLinkCreated",
            FileEvent::ShareLinkRevoked(_) => "ShareLinkRevoked",
        }
    }

    fn decode_ref(event_type: &str, version: i32, data: &Value) -> Result<Self, DecodeError> {
        if version != Self::schema_version(event_type) {
            return Self::decode(event_type, version, data.clone());
        }
        let t = event_type;
        Ok(match t {
            "FileUploaded" => FileEvent::FileUploaded(payload(t, data)?),
            "FileRenamed" => FileEvent::FileRenamed(payload(t, data)?),
            "FileMoved" => FileEvent::FileMoved(payload(t, data)?),
            "FileVersionRestored" => FileEvent::FileVersionRestored(payload(t, data)?),
            "FileDeleted" => FileEvent::FileDeleted(payload(t, data)?),
            "FilePermissionGranted" => FileEvent::FilePermissionGranted(payload(t, data)?),
            "FilePermissionRevoked" => FileEvent::FilePermissionRevoked(payload(t, data)?),
            "ShareLinkCreated" => FileEvent::ShareLinkCreated(payload(t, data)?),
            "ShareLinkRevoked" => FileEvent::ShareLinkRevoked(payload(t, data)?),
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        })
    }
}

/// Every file event type, for filters and the sample tests.
pub const FILE_EVENT_TYPES: [&str; 9] = [
    "FileUploaded",
    "FileRenamed",
    "FileMoved",
    "FileVersionRestored",
    "FileDeleted",
    "FilePermissionGranted",
    "FilePermissionRevoked",
    "ShareLinkCreated",
    "ShareLinkRevoked",
];
