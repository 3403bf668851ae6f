//! FluxStudio files: content storage (`storage`: object_store, content-addressed), resumable
//! uploads (`tus`: the tus 1.0.0 protocol), share links (`links`: signed tokens), what is
//! served and how (`serve`: ranges, dispositions), who may do what with a file (`access`),
//! and the retention sweep (`sweep`). The routes are in `crate::http::files`; the rules of a
//! file in `crate::actors::file`.

pub mod access;
pub mod attachments;
pub mod links;
pub mod serve;
pub mod storage;
pub mod sweep;
pub mod tus;
pub mod upload;

use std::time::Duration;

use sqlx::PgPool;

use crate::config::Config;

pub use storage::Storage;

/// Whether a request streams a file's bytes (a multipart upload or a tus `PATCH`): its body
/// may take as long as it takes, as long as it keeps coming.
pub fn streams_body(method: &actix_web::http::Method, path: &str) -> bool {
    use actix_web::http::Method;
    let path = crate::http::openapi::canonical(path);
    let path = path.as_ref();
    match *method {
        Method::POST => {
            path == "/api/v1/files"
                || (path.starts_with("/api/v1/projects/") && path.ends_with("/files"))
        }
        Method::PATCH => path.starts_with("/api/v1/uploads/"),
        _ => false,
    }
}

/// What the file routes share in one process.
#[derive(Clone)]
pub struct Files {
    pub storage: Storage,
    pub links: links::LinkKey,
    pub settings: Settings,
}

/// The file settings, from `Config`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_bytes: u64,
    pub quota_bytes: u64,
    pub retention: Duration,
    pub sweep_every: Duration,
    pub sweep_grace: Duration,
    pub upload_expiry: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_bytes: config.file_max_bytes,
            quota_bytes: config.file_quota_bytes,
            retention: Duration::from_secs(config.file_retention_days * 86_400),
            sweep_every: Duration::from_secs(config.file_sweep_interval_secs.max(1)),
            sweep_grace: Duration::from_secs(config.file_sweep_grace_secs),
            upload_expiry: Duration::from_secs(config.file_upload_expiry_hours.max(1) * 3600),
        }
    }
}

impl Files {
    /// Opens the store (creating the local directory if needed) and loads the link key.
    pub async fn start(config: &Config, pool: &PgPool) -> anyhow::Result<Self> {
        let storage = Storage::open(
            &config.file_store_url,
            config.file_store_endpoint.as_deref(),
        )?;
        let links = links::LinkKey::load(config.file_link_secret.as_deref(), pool).await?;
        Ok(Self {
            storage,
            links,
            settings: Settings::from_config(config),
        })
    }
}
