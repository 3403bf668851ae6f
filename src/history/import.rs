//! The log back in: `import-events --from FILE[.zst]` writes an export into a store, for a
//! staging copy or a disaster drill, then rebuilds every projection from it.
//!
//! - Event ids, streams, versions, types, schema versions, payloads, metadata and recording
//!   times are kept. Positions are assigned after the store's head in file order, so a
//!   whole-log export imported into an empty store gets its own positions back.
//! - An empty store is required, and the import is one transaction: it lands whole or not
//!   at all. With `append`, events whose ids are stored already are skipped, and each batch
//!   commits on its own (a failed run can simply be run again).
//! - Every batch takes the `event_head` row lock that the store's writers take, so appends
//!   of a running server wait for a batch instead of interleaving with it.
//! - The file is checked line by line: a malformed line, a stream without a category, an
//!   unstorable payload or a version already taken stops the import with its line number.

use std::io::{BufRead, Read};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::progress::Progress;
use crate::store::postgres::NOTIFY_CHANNEL;
use crate::store::{category_of, storable};

/// One line of an export. Unknown fields (`position`, `category`) are ignored: positions are
/// assigned anew and the category follows from the stream.
#[derive(Deserialize)]
struct Line {
    stream_id: String,
    version: i64,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    data: Value,
    #[serde(default)]
    metadata: Value,
    recorded_at: DateTime<Utc>,
}

/// Settings of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Allow a store that holds events; skip events whose ids are stored.
    pub append: bool,
    /// Events per insert.
    pub batch: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            append: false,
            batch: 5000,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub read: u64,
    pub written: u64,
    /// Events skipped because their ids were stored (with `append`).
    pub skipped: u64,
    pub last_position: i64,
    pub elapsed: std::time::Duration,
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the store holds {0} events: import-events needs an empty store, or --append")]
    NotEmpty(i64),
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Opens an export file, decompressing zstd when the file starts with its magic number.
pub fn open_file(path: &std::path::Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    let mut file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let zstd_magic = file.fill_buf()?.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if zstd_magic {
        let decoder = zstd::stream::read::Decoder::with_buffer(file)?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            decoder,
        )))
    } else {
        Ok(Box::new(file))
    }
}

/// The columns of a batch, one vector per column (for `UNNEST`).
#[derive(Default)]
struct Batch {
    first_line: u64,
    streams: Vec<String>,
    categories: Vec<String>,
    versions: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<String>,
    schema_versions: Vec<i32>,
    data: Vec<Value>,
    metadata: Vec<Value>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl Batch {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn push(&mut self, number: u64, line: Line) -> Result<(), ImportError> {
        let bad = |message: String| ImportError::Line {
            line: number,
            message,
        };
        if line.stream_id.is_empty()
            || line.stream_id.starts_with('$')
            || line.stream_id.contains('\0')
            || line.stream_id.len() > 1000
        {
            return Err(bad(format!("`{}` is not a stream name", line.stream_id)));
        }
        if line.version < 1 {
            return Err(bad(format!("version {} is not positive", line.version)));
        }
        if line.event_type.is_empty() || line.event_type.contains('\0') {
            return Err(bad("the event type is empty or holds a NUL".into()));
        }
        storable(&line.data).map_err(|w| bad(format!("data: {w}")))?;
        storable(&line.metadata).map_err(|w| bad(format!("metadata: {w}")))?;
        if self.ids.is_empty() {
            self.first_line = number;
        }
        self.categories
            .push(category_of(&line.stream_id).to_owned());
        self.streams.push(line.stream_id);
        self.versions.push(line.version);
        self.ids.push(line.event_id);
        self.types.push(line.event_type);
        self.schema_versions.push(line.schema_version);
        self.data.push(line.data);
        self.metadata.push(if line.metadata.is_null() {
            Value::Object(Default::default())
        } else {
            line.metadata
        });
        self.recorded_at.push(line.recorded_at);
        Ok(())
    }
}

/// Imports the NDJSON events of `input` into the store of `pool`.
pub async fn import(
    pool: &PgPool,
    input: &mut dyn BufRead,
    options: &ImportOptions,
    progress: &Progress,
) -> Result<ImportReport, ImportError> {
    let started = std::time::Instant::now();
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let stored: i64 = sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
        .fetch_one(&mut conn)
        .await?;
    if stored > 0 && !options.append {
        return Err(ImportError::NotEmpty(stored));
    }
    let mut report = ImportReport::default();
    let mut batch = Batch::default();
    let mut number = 0u64;
    let mut text = String::new();
    // Without `append`, everything happens in this one transaction.
    let mut whole = if options.append {
        None
    } else {
        Some(conn.begin().await?)
    };
    loop {
        text.clear();
        let n = read_line(input, &mut text)?;
        if n > 0 {
            number += 1;
            let trimmed = text.trim();
            if !trimmed.is_empty() {
                let line: Line = serde_json::from_str(trimmed).map_err(|e| ImportError::Line {
                    line: number,
                    message: e.to_string(),
                })?;
                batch.push(number, line)?;
                report.read += 1;
            }
        }
        if batch.len() >= options.batch.max(1) || (n == 0 && batch.len() > 0) {
            let taken = std::mem::take(&mut batch);
            let count = taken.len() as u64;
            let (written, last) = match whole.as_mut() {
                Some(tx) => write_batch(tx, taken, false).await?,
                None => {
                    // With `append` each batch commits on its own, on any connection.
                    let mut tx = pool.begin().await?;
                    let done = write_batch(&mut tx, taken, true).await?;
                    notify(&mut tx, done.1).await?;
                    tx.commit().await?;
                    done
                }
            };
            report.written += written;
            report.skipped += count - written;
            if last > 0 {
                report.last_position = last;
            }
            progress.inc(count);
        }
        if n == 0 {
            break;
        }
    }
    if let Some(mut tx) = whole {
        notify(&mut tx, report.last_position).await?;
        tx.commit().await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Reads one line, refusing lines longer than an event can be.
fn read_line(input: &mut dyn BufRead, text: &mut String) -> Result<usize, ImportError> {
    /// Longer than any event the store accepts (a request body is at most 1 MiB).
    const MAX_LINE: u64 = 64 * 1024 * 1024;
    let n = input.take(MAX_LINE).read_line(text)?;
    if n as u64 == MAX_LINE && !text.ends_with('\n') {
        return Err(ImportError::Line {
            line: 0,
            message: format!("a line is longer than {MAX_LINE} bytes"),
        });
    }
    Ok(n)
}

/// Writes one batch under the head lock; returns the events written and the new head.
async fn write_batch(
    tx: &mut PgConnection,
    mut b: Batch,
    append: bool,
) -> Result<(u64, i64), ImportError> {
    let head: i64 =
        sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    if append {
        let stored: Vec<Uuid> =
            sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1)")
                .bind(&b.ids)
                .fetch_all(&mut *tx)
                .await?;
        if !stored.is_empty() {
            let stored: std::collections::HashSet<Uuid> = stored.into_iter().collect();
            let keep: Vec<bool> = b.ids.iter().map(|id| !stored.contains(id)).collect();
            fn retain<T>(v: &mut Vec<T>, keep: &[bool]) {
                let mut i = 0;
                v.retain(|_| {
                    i += 1;
                    keep[i - 1]
                });
            }
            retain(&mut b.streams, &keep);
            retain(&mut b.categories, &keep);
            retain(&mut b.versions, &keep);
            retain(&mut b.ids, &keep);
            retain(&mut b.types, &keep);
            retain(&mut b.schema_versions, &keep);
            retain(&mut b.data, &keep);
            retain(&mut b.metadata, &keep);
            retain(&mut b.recorded_at, &keep);
        }
    }
    let n = b.len() as i64;
    if n == 0 {
        return Ok((0, head));
    }
    let positions: Vec<i64> = (head + 1..=head + n).collect();
    let inserted = sqlx::query(
        "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
         event_type, schema_version, data, metadata, recorded_at) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::uuid[], \
         $6::text[], $7::int4[], $8::jsonb[], $9::jsonb[], $10::timestamptz[])",
    )
    .bind(&positions)
    .bind(&b.streams)
    .bind(&b.categories)
    .bind(&b.versions)
    .bind(&b.ids)
    .bind(&b.types)
    .bind(&b.schema_versions)
    .bind(&b.data)
    .bind(&b.metadata)
    .bind(&b.recorded_at)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(db)) = &inserted {
        if db.code().as_deref() == Some("23505") {
            let what = match db.constraint() {
                Some(c) if c.contains("event_id") => "an event id that is stored already",
                _ => "a stream version that is taken already",
            };
            return Err(ImportError::Line {
                line: b.first_line,
                message: format!("the batch starting here holds {what} ({})", db.message()),
            });
        }
    }
    inserted?;
    let last = head + n;
    sqlx::query("UPDATE event_head SET last_position = $1 WHERE id = 1")
        .bind(last)
        .execute(&mut *tx)
        .await?;
    Ok((n as u64, last))
}

/// Wakes the subscribers of every process (see `store::postgres`).
async fn notify(tx: &mut PgConnection, head: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(head.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
