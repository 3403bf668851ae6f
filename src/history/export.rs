//! The log out as NDJSON: one event per line, shaped as `GET /api/v1/events` shows it, in
//! position order, read page by page (keyset on the position) so that memory stays
//! constant whatever the size. PostgreSQL renders each line itself, so an event is never
//! parsed on its way out.
//!
//! An export is bounded by the head at its start: events committed later belong to the next
//! export, which continues with `from_position` = the last position written + 1 (an
//! interrupted download resumes the same way).

use std::io::Write;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::progress::Progress;

/// Which events an export holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// First position (inclusive; default 1).
    pub from_position: Option<i64>,
    /// Last position (inclusive; default the head at the start of the export).
    pub to_position: Option<i64>,
    pub categories: Option<Vec<String>>,
    pub types: Option<Vec<String>>,
    pub stream: Option<String>,
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Recorded at or before.
    pub until: Option<DateTime<Utc>>,
    /// Only the events whose metadata names this organization.
    pub organization: Option<Uuid>,
    /// Blank the payload fields that never leave the server over HTTP (password and
    /// refresh-token hashes). The HTTP route always redacts; the command line writes the
    /// whole log, for staging copies and disaster drills, unless asked to redact.
    pub redact: bool,
}

impl ExportFilter {
    /// Whether only a position range is asked for (the size is then known up front).
    fn unfiltered(&self) -> bool {
        self.categories.is_none()
            && self.types.is_none()
            && self.stream.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.organization.is_none()
    }
}

/// Events per page read from the database.
pub const PAGE: i64 = 5000;

/// One page of NDJSON.
pub struct Page {
    /// The lines, each ending with `\n`.
    pub bytes: Vec<u8>,
    pub events: u64,
    /// Where the next page starts (exclusive); `None` when the range is exhausted.
    pub next_after: Option<i64>,
}

/// The payload fields that are blanked when redacting (as `http::history::redact` does).
const SECRETS: [&str; 2] = ["password_hash", "refresh_hash"];

/// One page of the export: events with positions in `(after, up_to]` that pass `filter`.
pub async fn page(
    pool: &sqlx::PgPool,
    filter: &ExportFilter,
    after: i64,
    up_to: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    // `to_char` writes times as RFC 3339 in UTC with the sub-second digits that are not
    // zero (none, milliseconds or microseconds), as the JSON of `/api/v1/events` does.
    const SQL: &str = "SELECT global_position, json_build_object( \
        'position', global_position, 'stream_id', stream_id, 'category', stream_category, \
        'version', version, 'event_id', event_id, 'event_type', event_type, \
        'schema_version', schema_version, \
        'data', CASE WHEN $9 AND jsonb_typeof(data) = 'object' AND data ?| $10 THEN \
            (SELECT jsonb_object_agg(key, CASE WHEN key = ANY($10) THEN '\"[redacted]\"'::jsonb \
             ELSE value END) FROM jsonb_each(data)) ELSE data END, \
        'metadata', metadata, \
        'recorded_at', to_char(recorded_at AT TIME ZONE 'UTC', CASE \
            WHEN date_part('microseconds', recorded_at)::bigint % 1000000 = 0 \
                THEN 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"' \
            WHEN date_part('microseconds', recorded_at)::bigint % 1000 = 0 \
                THEN 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"' \
            ELSE 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"' END) \
        )::text FROM events \
        WHERE global_position > $1 AND global_position <= $2 \
        AND ($3::text[] IS NULL OR stream_category = ANY($3)) \
        AND ($4::text[] IS NULL OR event_type = ANY($4)) \
        AND ($5::text IS NULL OR stream_id = $5) \
        AND ($6::timestamptz IS NULL OR recorded_at >= $6) \
        AND ($7::timestamptz IS NULL OR recorded_at <= $7) \
        AND ($8::text IS NULL OR metadata->>'organization_id' = $8) \
        ORDER BY global_position LIMIT $11";
    let rows: Vec<(i64, String)> = sqlx::query_as(SQL)
        .bind(after)
        .bind(up_to)
        .bind(&filter.categories)
        .bind(&filter.types)
        .bind(&filter.stream)
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.organization.map(|o| o.to_string()))
        .bind(filter.redact)
        .bind(&SECRETS[..])
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let mut bytes = Vec::with_capacity(rows.iter().map(|(_, l)| l.len() + 1).sum());
    for (_, line) in &rows {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    let next_after = if (rows.len() as i64) < limit {
        None
    } else {
        rows.last().map(|(p, _)| *p).filter(|p| *p < up_to)
    };
    Ok(Page {
        bytes,
        events: rows.len() as u64,
        next_after,
    })
}

/// The position range `(after, up_to]` an export covers: from its filter, bounded by the
/// head now.
pub async fn bounds(pool: &sqlx::PgPool, filter: &ExportFilter) -> Result<(i64, i64), sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    let after = filter.from_position.unwrap_or(1).max(1) - 1;
    let up_to = filter.to_position.map_or(head, |t| t.min(head));
    Ok((after, up_to))
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub events: u64,
    /// Bytes of NDJSON (before compression).
    pub bytes: u64,
    /// The last position covered; the next export continues at `last_position + 1`.
    pub last_position: i64,
    pub elapsed: std::time::Duration,
}

/// Writes the export to `out` (the command line's `export --to FILE`), page by page.
pub async fn write_to(
    pool: &sqlx::PgPool,
    filter: &ExportFilter,
    out: &mut dyn Write,
    progress: &Progress,
) -> anyhow::Result<ExportReport> {
    let started = std::time::Instant::now();
    let (mut after, up_to) = bounds(pool, filter).await?;
    let mut report = ExportReport {
        events: 0,
        bytes: 0,
        last_position: up_to.max(after),
        elapsed: Default::default(),
    };
    loop {
        let p = page(pool, filter, after, up_to, PAGE).await?;
        out.write_all(&p.bytes)?;
        report.events += p.events;
        report.bytes += p.bytes.len() as u64;
        progress.inc(p.events);
        match p.next_after {
            Some(a) => after = a,
            None => break,
        }
    }
    out.flush()?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The total a progress bar can show for an export, when it is known without a count.
pub async fn expected_total(
    pool: &sqlx::PgPool,
    filter: &ExportFilter,
) -> Result<Option<u64>, sqlx::Error> {
    if !filter.unfiltered() {
        return Ok(None);
    }
    let (after, up_to) = bounds(pool, filter).await?;
    Ok(Some((up_to - after).max(0) as u64))
}

/// Opens `path` for writing, zstd-compressed when it ends in `.zst`.
pub fn create_file(path: &std::path::Path) -> anyhow::Result<Box<dyn Write + Send>> {
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    if path.extension().is_some_and(|e| e == "zst") {
        Ok(Box::new(
            zstd::stream::write::Encoder::new(file, 3)?.auto_finish(),
        ))
    } else {
        Ok(Box::new(file))
    }
}
