//! Content storage through `object_store`: the local filesystem by default, or any
//! S3-compatible service (`FILE_STORE_URL=s3://bucket/prefix`, `FILE_STORE_ENDPOINT`).
//!
//! Content is addressed by its SHA-256 (`blobs/ab/abcd…`), so identical content is stored
//! once. An upload streams into a temporary key (`tmp/<uuid>`) while it is hashed, and only
//! a complete upload is moved under its content key: a dead upload leaves nothing under a
//! content key, and what it left under `tmp/` is swept. The bytes never sit in memory whole:
//! at most `MAX_IN_FLIGHT` parts of `PART_SIZE` are buffered per upload.

use std::ops::Range;
use std::sync::Arc;

use actix_web::web::Bytes;
use anyhow::Context;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Size of the parts an upload is written in (S3's minimum part is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once; with `PART_SIZE` this bounds an upload's buffers.
pub const MAX_IN_FLIGHT: usize = 2;
/// Bytes kept from the start of the content for sniffing its type.
const SNIFF_BYTES: usize = 8192;

/// Where file content lives.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Under which all keys live (the path part of an `s3://bucket/prefix` URL).
    prefix: String,
    /// A description without credentials, for logs and `/health`.
    pub describe: String,
}

/// Content moved under its content key.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub sha256: String,
    pub size: i64,
    pub sniffed_mime_type: Option<String>,
}

/// Why a write stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the content is over {0} bytes")]
    TooLarge(u64),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("database: {0}")]
    Database(sqlx::Error),
}

impl Storage {
    /// `url` is `s3://bucket[/prefix]` or a directory path (`file://` allowed); `endpoint`
    /// is the S3-compatible service's URL (AWS when unset). Credentials and region come from
    /// the usual `AWS_*` variables.
    pub fn open(url: &str, endpoint: Option<&str>) -> anyhow::Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            anyhow::ensure!(!bucket.is_empty(), "FILE_STORE_URL names no bucket");
            // object_store's HTTP client takes the process's provider (see Cargo.toml);
            // already installed is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) {
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            let store = builder.build().context("FILE_STORE_URL: S3 settings")?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: prefix.trim_matches('/').to_owned(),
                describe: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir)
            .with_context(|| format!("FILE_STORE_URL: cannot create the directory {dir}"))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("FILE_STORE_URL: {dir}"))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: String::new(),
            describe: format!("file://{dir}"),
        })
    }

    fn key(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The key of content with this SHA-256 (hex, checked by the caller).
    fn content_key(&self, sha256: &str) -> Path {
        self.key(&format!("blobs/{}/{sha256}", &sha256[..2]))
    }

    fn segment_key(&self, upload: Uuid, start: i64, nonce: Uuid) -> Path {
        self.key(&format!("uploads/{upload}/{start:020}-{nonce}"))
    }

    /// Starts writing new content under a temporary key.
    pub async fn writer(&self, max_bytes: u64) -> Result<ContentWriter, WriteError> {
        let tmp = self.key(&format!("tmp/{}", Uuid::new_v4()));
        let upload = self.store.put_multipart(&tmp).await?;
        Ok(ContentWriter {
            storage: self.clone(),
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
            tmp,
            hasher: Sha256::new(),
            size: 0,
            head: Vec::with_capacity(SNIFF_BYTES),
            max_bytes,
        })
    }

    /// The content's bytes in `range` (all of them when `None`), as a stream.
    pub async fn read(
        &self,
        sha256: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.content_key(sha256), options)
            .await?;
        Ok(got.into_stream())
    }

    /// Whether content with this SHA-256 is stored.
    pub async fn exists(&self, sha256: &str) -> Result<bool, object_store::Error> {
        match self.store.head(&self.content_key(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes content (the retention sweep); content already gone is not an error.
    pub async fn delete_content(&self, sha256: &str) -> Result<(), object_store::Error> {
        ignore_missing(self.store.delete(&self.content_key(sha256)).await)
    }

    /// Stores one stretch of a resumable upload's bytes under a key of its own; the caller
    /// records it (start, size, key) when it counts.
    pub async fn put_segment(
        &self,
        upload: Uuid,
        start: i64,
        bytes: Bytes,
    ) -> Result<String, object_store::Error> {
        let key = self.segment_key(upload, start, Uuid::new_v4());
        self.store.put(&key, bytes.into()).await?;
        Ok(key.to_string())
    }

    /// The bytes of a segment recorded by [`Storage::put_segment`].
    pub async fn read_segment(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        Ok(self.store.get(&Path::from(key)).await?.into_stream())
    }

    /// Deletes one object named by a key this storage handed out.
    pub async fn delete_key(&self, key: &str) -> Result<(), object_store::Error> {
        ignore_missing(self.store.delete(&Path::from(key)).await)
    }

    /// Deletes every segment of an upload.
    pub async fn delete_upload(&self, upload: Uuid) -> Result<(), object_store::Error> {
        self.delete_under(&format!("uploads/{upload}"), None).await
    }

    /// Deletes the objects under `rel` (older than `before`, when given).
    async fn delete_under(
        &self,
        rel: &str,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), object_store::Error> {
        let prefix = self.key(rel);
        let mut listed = self.store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            if before.is_none_or(|b| meta.last_modified < b) {
                ignore_missing(self.store.delete(&meta.location).await)?;
            }
        }
        Ok(())
    }

    /// Deletes what dead uploads left under `tmp/` before `before`.
    pub async fn sweep_tmp(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), object_store::Error> {
        self.delete_under("tmp", Some(before)).await
    }
}

fn ignore_missing(r: Result<(), object_store::Error>) -> Result<(), object_store::Error> {
    match r {
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// New content being written: hashed as it goes, visible only once [`ContentWriter::commit`]
/// moved it under its content key.
pub struct ContentWriter {
    storage: Storage,
    upload: Option<WriteMultipart>,
    tmp: Path,
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
    max_bytes: u64,
}

impl ContentWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `bytes`, waiting while `MAX_IN_FLIGHT` parts are being stored (backpressure
    /// on the client instead of memory on the server).
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), WriteError> {
        self.size += bytes.len() as u64;
        if self.size > self.max_bytes {
            return Err(WriteError::TooLarge(self.max_bytes));
        }
        if self.head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.hasher.update(&bytes);
        let upload = self
            .upload
            .as_mut()
            .expect("a writer is used until it ends");
        upload.wait_for_capacity(MAX_IN_FLIGHT).await?;
        upload.put(bytes);
        Ok(())
    }

    /// Finishes the upload and moves it under its content key (or drops it when that
    /// content is already stored). The content is counted in `file_blobs` first (or its
    /// count refreshed), so that nothing in the store escapes the retention sweep and the
    /// sweep never takes content that an upload has just counted on.
    pub async fn commit(mut self, pool: &sqlx::PgPool) -> Result<Committed, WriteError> {
        let upload = self.upload.take().expect("a writer is committed once");
        if let Err(e) = upload.finish().await {
            let _ = self.storage.store.delete(&self.tmp).await;
            return Err(e.into());
        }
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let counted = sqlx::query(
            "INSERT INTO file_blobs (sha256, size) VALUES ($1, $2) \
             ON CONFLICT (sha256) DO UPDATE SET committed_at = now()",
        )
        .bind(&sha256)
        .bind(self.size as i64)
        .execute(pool)
        .await;
        if let Err(e) = counted {
            let _ = self.storage.store.delete(&self.tmp).await;
            return Err(WriteError::Database(e));
        }
        let key = self.storage.content_key(&sha256);
        let moved = if self.storage.exists(&sha256).await? {
            ignore_missing(self.storage.store.delete(&self.tmp).await)
        } else {
            // A copy on S3 and a rename on a filesystem: either way the content key
            // appears whole or not at all.
            self.storage.store.rename(&self.tmp, &key).await
        };
        if let Err(e) = moved {
            let _ = self.storage.store.delete(&self.tmp).await;
            return Err(e.into());
        }
        Ok(Committed {
            sha256,
            size: self.size as i64,
            sniffed_mime_type: infer::get(&self.head).map(|t| t.mime_type().to_owned()),
        })
    }

    /// Gives the upload up: nothing becomes visible.
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = upload.abort().await;
        }
        let _ = self.storage.store.delete(&self.tmp).await;
    }
}

impl Drop for ContentWriter {
    fn drop(&mut self) {
        // Dropped mid-way (a handler whose client went away): abort in the background, so
        // that no temporary object or multipart upload is left behind longer than needed.
        if let Some(upload) = self.upload.take() {
            let store = self.storage.store.clone();
            let tmp = self.tmp.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = upload.abort().await;
                    let _ = store.delete(&tmp).await;
                });
            }
        }
    }
}
