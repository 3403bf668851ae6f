//! Snapshots saved in batches.
//!
//! An actor saves a snapshot every `SNAPSHOT_EVERY` events of its stream; under load that is
//! hundreds of saves a second, each of which, alone, would take a pooled connection, a round
//! trip and a commit of its own. The saver takes what has queued up meanwhile and writes it
//! in one statement, as the writer does with events: one save waits for at most the batch
//! in flight. A stream that appears twice in a batch keeps its newest snapshot (the others
//! are answered with its outcome), and a snapshot never replaces a newer one. A batch the
//! database refuses is saved again one snapshot at a time, so that one bad state fails alone.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// Saves waiting for the saver at most; a caller beyond it waits for room.
pub(super) const QUEUE: usize = 1024;
/// Snapshots written by one statement at most.
const BATCH: usize = 256;
/// The longest a statement of the saver may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One save: the state is JSON text already (made on the caller's thread).
pub(super) struct Save {
    pub stream: String,
    pub version: i64,
    pub schema_version: i32,
    pub state: String,
    pub done: oneshot::Sender<Result<(), String>>,
}

const UPSERT: &str = "INSERT INTO snapshots (stream_id, version, schema_version, state) \
     SELECT s, v, sv, st::jsonb FROM UNNEST($1::text[], $2::bigint[], $3::int4[], $4::text[]) \
     AS u(s, v, sv, st) \
     ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, \
     schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, taken_at = now() \
     WHERE snapshots.version < EXCLUDED.version";

/// Saves what arrives until every sender is gone.
pub(super) async fn saver_loop(pool: PgPool, mut rx: mpsc::Receiver<Save>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        save_batch(&pool, std::mem::take(&mut batch)).await;
    }
}

async fn save_batch(pool: &PgPool, mut batch: Vec<Save>) {
    // Newest first within each stream, so that the first of a stream is the one written.
    batch.sort_unstable_by(|a, b| a.stream.cmp(&b.stream).then(b.version.cmp(&a.version)));
    let mut newest: Vec<&Save> = Vec::with_capacity(batch.len());
    for save in &batch {
        if newest.last().is_none_or(|n| n.stream != save.stream) {
            newest.push(save);
        }
    }
    let outcomes: Vec<Result<(), String>> = match upsert(pool, &newest).await {
        Ok(()) => vec![Ok(()); newest.len()],
        Err(_) if newest.len() > 1 => {
            let mut each = Vec::with_capacity(newest.len());
            for save in &newest {
                each.push(upsert(pool, std::slice::from_ref(save)).await);
            }
            each
        }
        Err(e) => vec![Err(e)],
    };
    // Every save is answered with the outcome of its stream's newest.
    let by_stream: HashMap<String, Result<(), String>> = newest
        .iter()
        .map(|s| s.stream.clone())
        .zip(outcomes)
        .collect();
    for save in batch {
        let outcome = by_stream.get(&save.stream).cloned().unwrap_or(Ok(()));
        let _ = save.done.send(outcome);
    }
}

async fn upsert(pool: &PgPool, saves: &[&Save]) -> Result<(), String> {
    let streams: Vec<&str> = saves.iter().map(|s| s.stream.as_str()).collect();
    let versions: Vec<i64> = saves.iter().map(|s| s.version).collect();
    let schema_versions: Vec<i32> = saves.iter().map(|s| s.schema_version).collect();
    let states: Vec<&str> = saves.iter().map(|s| s.state.as_str()).collect();
    let statement = sqlx::query(UPSERT)
        .bind(&streams)
        .bind(&versions)
        .bind(&schema_versions)
        .bind(&states)
        .execute(pool);
    match tokio::time::timeout(TIMEOUT, statement).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("database error: {e}")),
        Err(_) => Err(format!(
            "the snapshot batch took longer than {}s",
            TIMEOUT.as_secs()
        )),
    }
}
