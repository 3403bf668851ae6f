//! The projection runner: turns the event log into read models, exactly once.
//!
//! - **Exactly-once effects.** Each batch is applied in one transaction that also moves the
//!   projection's checkpoint. A runner that dies mid-batch leaves neither the read-model
//!   change nor the checkpoint behind, and its successor re-applies the batch from the old
//!   checkpoint.
//! - **Catch-up, then live.** Batches of up to `batch_size` events are read after the
//!   checkpoint, bounded by the committed head; once the head is reached the runner waits for
//!   the store's head watch (woken by local commits and by NOTIFY) or the poll fallback.
//! - **One runner per projection across processes.** The runner holds a session-level
//!   advisory lock on its own connection. Others stand by, trying again every
//!   `standby_poll`; when the holder's connection dies Postgres releases the lock and a
//!   standby takes over.
//! - **Rebuild without downtime.** [`rebuild`] replays the whole log into copies of the
//!   projection's tables in a scratch schema while the live tables keep serving, then swaps
//!   them in within one short transaction that holds the checkpoint row, so the live runner
//!   pauses for the swap and continues on the new tables.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::store::{EventStore, Filter, RecordedEvent};

/// A read model fed from the event log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// A stable name: the checkpoint key and the advisory-lock key.
    fn name(&self) -> &'static str;
    /// The event types it reads; others are skipped without being fetched.
    fn event_types(&self) -> &'static [&'static str];
    /// The read-model tables it owns (rebuilt and swapped together).
    fn tables(&self) -> &'static [&'static str];
    /// Applies a batch of events inside the runner's transaction. Table names must be
    /// unqualified: a rebuild points `search_path` at its scratch schema.
    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()>;
}

/// Settings of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub batch_size: i64,
    /// How often a standby tries to take over, and the live poll fallback.
    pub standby_poll: Duration,
    /// Once live, how long to let new events gather before applying them: fewer, larger
    /// transactions for a little more read-your-writes latency.
    pub live_linger: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            standby_poll: Duration::from_secs(1),
            live_linger: Duration::from_millis(10),
        }
    }
}

fn lock_key(projection: &str) -> i64 {
    // A stable 63-bit key from the name; FNV-1a keeps it identical across builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"projection:".iter().chain(projection.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// What a projection reads of the log: its event types, payloads only.
fn reads_of(projection: &dyn Projection) -> Filter {
    Filter {
        event_types: Some(
            projection
                .event_types()
                .iter()
                .map(|t| t.to_string())
                .collect(),
        ),
        skip_metadata: true,
        ..Filter::default()
    }
}

/// The checkpoint of a projection, as stored (0 if it never ran).
pub async fn checkpoint(pool: &PgPool, projection: &str) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = $1")
            .bind(projection)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0),
    )
}

/// Runs one projection for as long as the returned task lives.
pub struct ProjectionRunner {
    pool: PgPool,
    store: Arc<dyn EventStore>,
    projection: Arc<dyn Projection>,
    config: RunnerConfig,
    progress: watch::Sender<i64>,
}

impl ProjectionRunner {
    pub fn new(
        pool: PgPool,
        store: Arc<dyn EventStore>,
        projection: Arc<dyn Projection>,
        config: RunnerConfig,
    ) -> Self {
        Self {
            pool,
            store,
            projection,
            config,
            progress: watch::channel(0).0,
        }
    }

    /// Checkpoints committed by this runner, for read-your-writes waits in this process.
    pub fn progress(&self) -> watch::Receiver<i64> {
        self.progress.subscribe()
    }

    /// Leads or stands by, forever. Errors are logged and the runner starts over.
    pub async fn run(self) {
        let name = self.projection.name();
        loop {
            match self.lead().await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "projection runner restarts")
                }
            }
            tokio::time::sleep(self.config.standby_poll).await;
        }
    }

    /// Takes the lock when it can and then projects until an error.
    async fn lead(&self) -> anyhow::Result<()> {
        let name = self.projection.name();
        let mut conn = self.pool.acquire().await?.detach();
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(lock_key(name))
                .fetch_one(&mut conn)
                .await?;
            if got {
                break;
            }
            tokio::time::sleep(self.config.standby_poll).await;
        }
        tracing::info!(projection = name, "projection runner leads");
        // A lost projection commit is re-applied from the older checkpoint (both are in the
        // same transaction), so these commits need not wait for the WAL flush.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        sqlx::query("INSERT INTO checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(name)
            .execute(&mut conn)
            .await?;
        let filter = reads_of(self.projection.as_ref());
        let mut head_watch = self.store.head_watch();
        let mut prefetched = None;
        loop {
            let done = self.step(&mut conn, &filter, &mut prefetched).await?;
            if done {
                let after = *self.progress.borrow();
                let woken = tokio::time::timeout(
                    self.config.standby_poll,
                    head_watch.wait_for(|h| *h > after),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                if woken && !self.config.live_linger.is_zero() {
                    tokio::time::sleep(self.config.live_linger).await;
                }
            }
        }
    }

    /// Applies one batch; returns whether the projection has reached the head.
    ///
    /// While a batch is applied the next page is already read on another connection; it is
    /// used only if the checkpoint is where this runner left it.
    async fn step(
        &self,
        conn: &mut PgConnection,
        filter: &Filter,
        prefetched: &mut Option<Page>,
    ) -> anyhow::Result<bool> {
        let name = self.projection.name();
        let batch_size = self.config.batch_size;
        let head = self.store.head_position().await?;
        let mut tx = conn.begin().await?;
        let from: i64 =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = $1 FOR UPDATE")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        metrics::gauge!("ub_projection_lag", "projection" => name).set((head - from).max(0) as f64);
        if from >= head {
            tx.commit().await?;
            *prefetched = None;
            self.progress.send_replace(from);
            return Ok(true);
        }
        let page = match prefetched.take() {
            Some(p) if p.from == from => p,
            _ => Page {
                from,
                head,
                events: self
                    .store
                    .read_all(from, Some(head), filter, batch_size)
                    .await?,
            },
        };
        let to = page_end(&page.events, page.head, batch_size);
        let events = &page.events;
        let apply = async move {
            if !events.is_empty() {
                self.projection.apply(&mut tx, events).await?;
            }
            sqlx::query(
                "UPDATE checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
            )
            .bind(name)
            .bind(to)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            anyhow::Ok(())
        };
        let read_next = async {
            if to < head {
                let events = self
                    .store
                    .read_all(to, Some(head), filter, batch_size)
                    .await?;
                anyhow::Ok(Some(Page {
                    from: to,
                    head,
                    events,
                }))
            } else {
                Ok(None)
            }
        };
        let (applied, next) = tokio::join!(apply, read_next);
        applied?;
        *prefetched = next.unwrap_or(None);
        metrics::counter!("ub_projection_events_total", "projection" => name)
            .increment(page.events.len() as u64);
        metrics::gauge!("ub_projection_lag", "projection" => name).set((head - to).max(0) as f64);
        self.progress.send_replace(to);
        Ok(to >= head)
    }
}

/// A page of events read ahead: positions `(from, head]`, or fewer if the page is full.
struct Page {
    from: i64,
    head: i64,
    events: Vec<RecordedEvent>,
}

/// Replays the whole log into fresh tables and swaps them in; returns the new checkpoint.
///
/// The live tables keep serving reads (and the live runner keeps writing them) until the
/// final swap, which takes one short transaction.
pub async fn rebuild(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    batch_size: i64,
) -> anyhow::Result<RebuildReport> {
    let name = projection.name();
    let scratch = format!("rebuild_{name}");
    let started = std::time::Instant::now();
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {scratch} CASCADE"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {scratch}"))
        .execute(&mut conn)
        .await?;
    for t in projection.tables() {
        sqlx::query(&format!(
            "CREATE TABLE {scratch}.{t} (LIKE public.{t} INCLUDING ALL)"
        ))
        .execute(&mut conn)
        .await?;
        // LIKE does not copy storage parameters (fillfactor): carry them over.
        let options: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass('public.' || $1)",
        )
        .bind(t)
        .fetch_one(&mut conn)
        .await?;
        if let Some(options) = options.filter(|o| !o.is_empty()) {
            sqlx::query(&format!(
                "ALTER TABLE {scratch}.{t} SET ({})",
                options.join(", ")
            ))
            .execute(&mut conn)
            .await?;
        }
    }
    let filter = reads_of(projection);
    let search_path = format!("SET LOCAL search_path = {scratch}, public");

    // Bulk replay while the live tables serve. The next page is read while the current one
    // is applied (on another connection), so reading and writing overlap.
    let mut position = 0;
    let mut events_applied = 0u64;
    let mut head = store.head_position().await?;
    let mut page = store.read_all(0, Some(head), &filter, batch_size).await?;
    while position < head {
        let to = page_end(&page, head, batch_size);
        let apply = async {
            let mut tx = conn.begin().await?;
            sqlx::query(&search_path).execute(&mut *tx).await?;
            if !page.is_empty() {
                projection.apply(&mut tx, &page).await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        };
        let read_next = async {
            if to < head {
                store.read_all(to, Some(head), &filter, batch_size).await
            } else {
                Ok(Vec::new())
            }
        };
        let (applied, next) = tokio::join!(apply, read_next);
        applied?;
        events_applied += page.len() as u64;
        position = to;
        page = next?;
        if position >= head {
            head = store.head_position().await?;
            if position < head {
                page = store
                    .read_all(position, Some(head), &filter, batch_size)
                    .await?;
            }
        }
    }

    // Swap: hold the checkpoint row so the live runner pauses, replay the last few events,
    // and move the new tables in.
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT position FROM checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&search_path).execute(&mut *tx).await?;
    loop {
        let head = store.head_position().await?;
        if position >= head {
            break;
        }
        let (to, n) = replay_batch(
            &mut tx, store, projection, &filter, position, head, batch_size,
        )
        .await?;
        position = to;
        events_applied += n;
    }
    for t in projection.tables() {
        sqlx::query(&format!("DROP TABLE public.{t}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {scratch}.{t} SET SCHEMA public"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE checkpoints SET position = $2, updated_at = now() WHERE projection = $1")
        .bind(name)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {scratch}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(RebuildReport {
        projection: name,
        position,
        events: events_applied,
        elapsed: started.elapsed(),
    })
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projection: &'static str,
    pub position: i64,
    pub events: u64,
    pub elapsed: Duration,
}

/// Where a page read up to `head` leaves the cursor: at the head when the page was not
/// full (everything up to it has been seen), else at the page's last event.
fn page_end(page: &[RecordedEvent], head: i64, batch_size: i64) -> i64 {
    if (page.len() as i64) < batch_size {
        head
    } else {
        page.last().map_or(head, |e| e.position)
    }
}

async fn replay_batch(
    conn: &mut PgConnection,
    store: &dyn EventStore,
    projection: &dyn Projection,
    filter: &Filter,
    from: i64,
    head: i64,
    batch_size: i64,
) -> anyhow::Result<(i64, u64)> {
    let events = store.read_all(from, Some(head), filter, batch_size).await?;
    let to = page_end(&events, head, batch_size);
    if !events.is_empty() {
        projection.apply(conn, &events).await?;
    }
    Ok((to, events.len() as u64))
}
