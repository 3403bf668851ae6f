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
//!   `standby_poll` (with jitter); when the holder's connection dies Postgres releases the
//!   lock and a standby takes over.
//! - **Spread over the processes** ([`Spread`]). Each runner's connection carries its
//!   process's name (`application_name` `ub/<host:pid:id>`), so every process sees, from
//!   `pg_stat_activity` and `pg_locks`, which processes are alive and how many projections
//!   each runs. A standby of one of the least loaded processes tries the lock at once;
//!   others try only every third poll, which leaves a free lock to the least loaded. A
//!   process that runs more than one over the least loaded one lets one of its projections
//!   go (at most one per poll, between batches). With N processes the projections end
//!   evenly spread; when a process dies its connections close, its locks are free and the
//!   others take them within a few polls.
//! - **Rebuild without downtime.** [`rebuild`] replays the whole log into copies of the
//!   projection's tables in a scratch schema while the live tables keep serving, then swaps
//!   them in within one short transaction that holds the checkpoint row, so the live runner
//!   pauses for the swap and continues on the new tables.
//! - **No event stops a projection.** A batch is applied under a savepoint. When it fails for
//!   any reason other than a transient infrastructure failure (see [`is_transient`]), it is
//!   rolled back to the savepoint and applied again event by event, each under its own
//!   savepoint, in the same transaction; an event that fails alone (or whose payload cannot
//!   even be read) is rolled back and *parked* (see [`super::parked`]) in the transaction that
//!   moves the checkpoint past it. Transient failures keep the old behaviour: the runner
//!   starts over from its checkpoint and tries again.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use super::parked::{self, Parked};
use crate::store::{EventStore, Filter, RawEvent, StoreError};

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
    ///
    /// Applying a batch must leave the read model exactly as applying its events one at a
    /// time would: the runner falls back to single events when a batch fails, and must not
    /// end up elsewhere than a run that never batched. In particular an error that only a
    /// single event would hit (an overflowing sum, say) must not be masked by folding the
    /// batch first.
    async fn apply(&self, conn: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()>;
}

/// Settings of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub batch_size: i64,
    /// How often a standby tries to take over, and the live poll fallback.
    pub standby_poll: Duration,
    /// Once live and under load (new events within this long of the last batch), how long
    /// they gather before the next batch: fewer, larger transactions. After a quiet spell
    /// longer than this, an event is applied at once.
    pub live_linger: Duration,
    /// Spread the projections over the processes (`None`: the first process takes all).
    pub spread: Option<Arc<Spread>>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            standby_poll: Duration::from_secs(1),
            live_linger: Duration::from_millis(10),
            spread: None,
        }
    }
}

/// Under load, a live projection lets events gather for at least `live_linger` and for
/// four times as long as its last step took, up to [`LINGER_CAP`] times `live_linger`: it
/// then spends at most a fifth of its time applying. A projection whose rows many events share
/// (a building's latest reading, an hour's energy) writes each row once per step, so longer
/// steps under load cost less per event; a cheap projection keeps the short linger and its
/// read model stays as fresh as before.
fn linger_after(live_linger: Duration, applying: Duration) -> Duration {
    live_linger
        .max(applying.saturating_mul(LINGER_PER_STEP))
        .min(live_linger.saturating_mul(LINGER_CAP))
}

/// The linger under load, in multiples of the last step's time.
const LINGER_PER_STEP: u32 = 4;
/// The longest linger under load, in multiples of `live_linger`.
const LINGER_CAP: u32 = 5;

/// The prefix of the `application_name` of runner connections.
const APP_PREFIX: &str = "ub/";
/// A standby of a process that is not among the least loaded tries the lock only once in
/// this many polls.
const BUSY_TRY_EVERY: u32 = 3;

/// How the runners of one process share the projections with the other processes.
#[derive(Debug)]
pub struct Spread {
    /// This process's name (see `crate::tasks::lease::owner_id`).
    owner: String,
    /// When a runner of this process last let its projection go.
    last_shed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What a runner sees of the processes: how many projections each runs.
#[derive(Debug, Default)]
struct Load {
    mine: i64,
    /// The fewest run by another live process (`None`: no other process).
    least_other: Option<i64>,
}

impl Spread {
    pub fn new(owner: &str) -> Arc<Self> {
        Arc::new(Self {
            owner: owner.to_owned(),
            last_shed: Default::default(),
        })
    }

    fn app_name(&self) -> String {
        format!("{APP_PREFIX}{}", self.owner)
    }

    /// The projection locks held by each live process (any process with a runner
    /// connection, standing by or not), from the server's own view of its sessions.
    async fn load(&self, conn: &mut PgConnection) -> sqlx::Result<Load> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT a.application_name, count(l.pid) \
             FROM pg_stat_activity a \
             LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted \
             WHERE a.datname = current_database() AND a.application_name LIKE $1 \
             GROUP BY a.application_name",
        )
        .bind(format!("{APP_PREFIX}%"))
        .fetch_all(conn)
        .await?;
        let me = self.app_name();
        let mut load = Load::default();
        for (name, held) in rows {
            if name == me {
                load.mine = held;
            } else {
                load.least_other = Some(load.least_other.map_or(held, |l| l.min(held)));
            }
        }
        Ok(load)
    }

    /// Whether a runner of this process may let its projection go now: this process runs
    /// more than one over the least loaded one, and no runner of it let one go within
    /// `poll`.
    fn may_shed(&self, load: &Load, poll: Duration) -> bool {
        let Some(least) = load.least_other else {
            return false;
        };
        if load.mine <= least + 1 {
            return false;
        }
        let mut last = self.last_shed.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < poll) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}

/// Which process's runner holds each projection now (`None`: no one), read from the
/// server's locks: for `/health` and the `projections` command.
pub async fn holders(pool: &PgPool) -> sqlx::Result<Vec<(&'static str, Option<String>)>> {
    Ok(leads(pool)
        .await?
        .into_iter()
        .map(|(name, lead)| {
            let owner =
                lead.map(|(app, _)| app.strip_prefix(APP_PREFIX).unwrap_or(&app).to_owned());
            (name, owner)
        })
        .collect())
}

/// The backend of each projection's leading runner: its session's `application_name` and
/// pid (`None`: no runner leads it). The bench splits PostgreSQL's CPU by these.
pub async fn leads(pool: &PgPool) -> sqlx::Result<Vec<(&'static str, Option<(String, i32)>)>> {
    let rows: Vec<(i64, String, i32)> = sqlx::query_as(
        "SELECT (l.classid::bigint << 32) | l.objid::bigint, a.application_name, l.pid \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND a.datname = current_database()",
    )
    .fetch_all(pool)
    .await?;
    Ok(super::all()
        .iter()
        .map(|p| {
            let key = lock_key(p.name());
            let lead = rows
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, app, pid)| (app.clone(), *pid));
            (p.name(), lead)
        })
        .collect())
}

/// `base`, give or take half of it: standbys of several processes do not try in step.
fn jittered(base: Duration) -> Duration {
    let r = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    base / 2 + base * (r as u32) / 1000
}

pub fn lock_key(projection: &str) -> i64 {
    // A stable 63-bit key from the name; FNV-1a keeps it identical across builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"projection:".iter().chain(projection.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// What a projection reads of the log: its event types, payloads only.
pub(crate) fn reads_of(projection: &dyn Projection) -> Filter {
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
    /// Whether this runner holds its projection's lock now: then its progress is the
    /// projection's, and read-your-writes waits in this process need not ask the database.
    leading: Arc<AtomicBool>,
}

/// What a leading runner keeps between steps.
#[derive(Default)]
struct Live {
    /// The next page, read while the previous one was applied.
    prefetched: Option<Page>,
    /// The checkpoint as this runner last stored it.
    checkpoint: Option<i64>,
    /// Whether the next step follows a linger: events keep coming.
    under_load: bool,
}

/// Marks a runner as leading for as long as it lives.
struct Leading<'a>(&'a AtomicBool);

impl<'a> Leading<'a> {
    fn new(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
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
            leading: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether this runner leads now (holds its projection's lock).
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    /// Positions up to which this runner's read model is complete (its committed checkpoints,
    /// and heads past which it found none of its events), for read-your-writes waits in
    /// this process.
    pub fn progress(&self) -> watch::Receiver<i64> {
        self.progress.subscribe()
    }

    /// Leads or stands by, forever. Errors are logged and the runner starts over.
    pub async fn run(self) {
        let name = self.projection.name();
        loop {
            match self.lead().await {
                Ok(()) => {
                    // It let its projection go to a less loaded process: leave that one
                    // time to take it.
                    tokio::time::sleep(self.config.standby_poll * BUSY_TRY_EVERY).await;
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "projection runner restarts")
                }
            }
            tokio::time::sleep(jittered(self.config.standby_poll)).await;
        }
    }

    /// Takes the lock when it can and then projects until an error (or, spread, until it
    /// lets the projection go to a less loaded process: `Ok`).
    async fn lead(&self) -> anyhow::Result<()> {
        let name = self.projection.name();
        let poll = self.config.standby_poll;
        let mut conn = self.pool.acquire().await?.detach();
        if let Some(spread) = &self.config.spread {
            sqlx::query("SELECT set_config('application_name', $1, false)")
                .bind(spread.app_name())
                .execute(&mut conn)
                .await?;
        }
        let mut polls = 0u32;
        loop {
            let try_now = match &self.config.spread {
                None => true,
                Some(spread) => {
                    let load = spread.load(&mut conn).await?;
                    polls += 1;
                    load.least_other.is_none_or(|least| load.mine <= least)
                        || polls % BUSY_TRY_EVERY == 0
                }
            };
            if try_now {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(lock_key(name))
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    break;
                }
            }
            tokio::time::sleep(jittered(poll)).await;
        }
        tracing::info!(projection = name, "projection runner leads");
        let _leading = Leading::new(&self.leading);
        // The lock lives on the host this connection reached: once the pool moved to
        // another host, it is not trusted (see `db::primary`).
        let epoch = crate::db::epoch();
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
        let mut live = Live::default();
        let mut balanced = std::time::Instant::now();
        // Whether the head watch woke this runner, and when the checkpoint was last stored.
        let (mut woken, mut stored) = (false, tokio::time::Instant::now());
        loop {
            if crate::db::epoch() != epoch {
                anyhow::bail!("the database moved to another host: the lock stayed behind");
            }
            if let Some(spread) = &self.config.spread {
                if balanced.elapsed() >= poll {
                    balanced = std::time::Instant::now();
                    let load = spread.load(&mut conn).await?;
                    if spread.may_shed(&load, poll) {
                        sqlx::query("SELECT pg_advisory_unlock($1)")
                            .bind(lock_key(name))
                            .execute(&mut conn)
                            .await?;
                        tracing::info!(
                            projection = name,
                            held = load.mine,
                            least_other = load.least_other,
                            "projection runner lets its projection go to a less loaded process"
                        );
                        return Ok(());
                    }
                }
            }
            let head = *head_watch.borrow();
            let skipped = woken
                && stored.elapsed() < self.config.standby_poll
                && self.nothing_new(&filter, head).await;
            // Woken by the head watch, the runner reads up to the head it announced; after a
            // quiet spell (or a lost notification) it asks the database.
            let known_head = woken.then_some(head);
            let began = tokio::time::Instant::now();
            let done = skipped || self.step(&mut conn, &filter, &mut live, known_head).await?;
            let applying = began.elapsed();
            if !skipped {
                stored = tokio::time::Instant::now();
            }
            woken = false;
            live.under_load = false;
            if done {
                let caught_up = tokio::time::Instant::now();
                let after = *self.progress.borrow();
                woken = tokio::time::timeout(
                    self.config.standby_poll,
                    head_watch.wait_for(|h| *h > after),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                // The linger batches only under load: events that follow the last batch
                // closely (within `live_linger`) wait for more to gather; the first event
                // after a quiet spell is applied at once.
                if woken && caught_up.elapsed() < self.config.live_linger {
                    tokio::time::sleep(linger_after(self.config.live_linger, applying)).await;
                    live.under_load = true;
                }
            }
        }
    }

    /// Most projections find none of their events among the new ones (a reading concerns
    /// two of them), and such a step needs no transaction: when the log up to `head` holds no
    /// event this projection reads after its progress, the progress moves to `head` at once
    /// and the checkpoint is left for a later step (at most `standby_poll` later; waits of
    /// other processes look for the projection's events past the stored checkpoint, see
    /// `Progress::wait_for`).
    /// `false` when there is something to apply, or the log could not be read: then a full
    /// step follows.
    async fn nothing_new(&self, filter: &Filter, head: i64) -> bool {
        let from = *self.progress.borrow();
        if from <= 0 || head <= from {
            return false;
        }
        // Usually the commits of this or another process that brought the head here are
        // known: then not even the query is needed, whichever their answer.
        if let Some(types) = filter.event_types.as_deref() {
            match self.store.holds_any(from, head, types) {
                Some(false) => {
                    self.progress.send_replace(head);
                    return true;
                }
                Some(true) => return false,
                None => {}
            }
        }
        match self.store.read_all_raw(from, Some(head), filter, 1).await {
            Ok(events) if events.is_empty() => {
                self.progress.send_replace(head);
                true
            }
            _ => false,
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
        live: &mut Live,
        known_head: Option<i64>,
    ) -> anyhow::Result<bool> {
        let head = match known_head {
            Some(head) => head,
            None => self.store.head_position().await?,
        };
        if let Some(from) = live.checkpoint {
            if from >= head {
                self.progress.send_if_modified(|p| {
                    let moved = from > *p;
                    *p = (*p).max(from);
                    moved
                });
                return Ok(true);
            }
            if let Some(done) = self.quick_step(conn, filter, live, from, head).await? {
                return Ok(done);
            }
        }
        self.careful_step(conn, filter, live, head).await
    }

    /// The step of a runner that stored the checkpoint last, in the fewest round trips:
    /// BEGIN (while the page is read), the checkpoint moved on only if it is still where
    /// this runner left it (which also locks it, as the careful step does, so a rebuild's
    /// swap and this step wait for each other in the same order), the batch applied, COMMIT.
    /// `None` when the step must be taken carefully: the checkpoint moved, the page holds
    /// an unreadable event, or the batch failed (then events are applied one by one and
    /// parked).
    async fn quick_step(
        &self,
        conn: &mut PgConnection,
        filter: &Filter,
        live: &mut Live,
        from: i64,
        head: i64,
    ) -> anyhow::Result<Option<bool>> {
        let name = self.projection.name();
        let read = self.page_at(filter, live.prefetched.take(), from, head);
        let (tx, page) = tokio::join!(conn.begin(), read);
        let (mut tx, page) = (tx?, page?);
        if page.unreadable.is_some() {
            tx.rollback().await?;
            return Ok(None);
        }
        let to = page.to;
        let moved = sqlx::query(
            "UPDATE checkpoints SET position = $3, updated_at = now() \
             WHERE projection = $1 AND position = $2",
        )
        .bind(name)
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            tx.rollback().await?;
            live.checkpoint = None;
            return Ok(None);
        }
        let page_ref = &page;
        let under_load = live.under_load;
        let apply = async move {
            let applied = match page_ref.events.as_slice() {
                [] => Ok(()),
                events => {
                    let apply = apply_catching(&mut tx, self.projection.as_ref(), events);
                    super::step_under(under_load, apply).await
                }
            };
            match applied {
                Ok(()) => {
                    tx.commit().await?;
                    anyhow::Ok(true)
                }
                Err(e) if is_transient(&e) => Err(e),
                Err(_) => {
                    tx.rollback().await?;
                    Ok(false)
                }
            }
        };
        let read_next = self.next_page(filter, to, head);
        let (applied, next) = tokio::join!(apply, read_next);
        if !applied? {
            return Ok(None);
        }
        live.checkpoint = Some(to);
        live.prefetched = next.unwrap_or(None);
        Ok(Some(self.applied(page.events.len(), 0, to, head).await))
    }

    /// The step that locks the checkpoint first and applies the batch under a savepoint,
    /// one event at a time if the batch fails, parking what cannot be applied.
    async fn careful_step(
        &self,
        conn: &mut PgConnection,
        filter: &Filter,
        live: &mut Live,
        head: i64,
    ) -> anyhow::Result<bool> {
        let name = self.projection.name();
        let mut tx = conn.begin().await?;
        let from: i64 =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = $1 FOR UPDATE")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        metrics::gauge!("ub_projection_lag", "projection" => name).set((head - from).max(0) as f64);
        if from >= head {
            tx.commit().await?;
            live.prefetched = None;
            live.checkpoint = Some(from);
            self.progress.send_replace(from);
            return Ok(true);
        }
        let page = self
            .page_at(filter, live.prefetched.take(), from, head)
            .await?;
        let to = page.to;
        let page_ref = &page;
        let apply = async move {
            let mut parked =
                apply_or_park(&mut tx, self.projection.as_ref(), &page_ref.events).await?;
            parked.extend(page_ref.unreadable.clone());
            parked::park(&mut tx, name, &parked).await?;
            sqlx::query(
                "UPDATE checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
            )
            .bind(name)
            .bind(to)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            anyhow::Ok(parked.len())
        };
        let read_next = self.next_page(filter, to, head);
        let (applied, next) = tokio::join!(apply, read_next);
        let parked_now = applied?;
        live.checkpoint = Some(to);
        // A page that could not be read is read again, carefully, by the next step.
        live.prefetched = next.unwrap_or(None);
        Ok(self.applied(page.events.len(), parked_now, to, head).await)
    }

    /// The page after `from`: the prefetched one if it starts there, else read now.
    async fn page_at(
        &self,
        filter: &Filter,
        prefetched: Option<Page>,
        from: i64,
        head: i64,
    ) -> anyhow::Result<Page> {
        match prefetched {
            Some(page) if page.from == from => Ok(page),
            _ => {
                read_page(
                    self.store.as_ref(),
                    &self.pool,
                    filter,
                    from,
                    head,
                    self.config.batch_size,
                )
                .await
            }
        }
    }

    /// The page after `to`, read while the batch before it is applied (`None` at the head).
    async fn next_page(
        &self,
        filter: &Filter,
        to: i64,
        head: i64,
    ) -> Result<Option<Page>, StoreError> {
        if to >= head {
            return Ok(None);
        }
        read_windows(
            self.store.as_ref(),
            filter,
            to,
            head,
            self.config.batch_size,
        )
        .await
        .map(Some)
    }

    /// Counts a committed batch and moves the progress to `to`; whether that is the head.
    async fn applied(&self, events: usize, parked_now: usize, to: i64, head: i64) -> bool {
        let name = self.projection.name();
        metrics::counter!("ub_projection_events_total", "projection" => name)
            .increment(events as u64);
        if parked_now > 0 {
            metrics::counter!("ub_projection_events_parked_total", "projection" => name)
                .increment(parked_now as u64);
            if let Ok(counts) = parked::open_counts(&self.pool).await {
                let open = counts.get(name).copied().unwrap_or(0);
                metrics::gauge!("ub_projection_parked_events", "projection" => name)
                    .set(open as f64);
            }
        }
        metrics::gauge!("ub_projection_lag", "projection" => name).set((head - to).max(0) as f64);
        self.progress.send_replace(to);
        to >= head
    }
}

/// A page of events: the events of positions `(from, to]` that the projection reads.
pub(crate) struct Page {
    from: i64,
    /// Where the checkpoint goes once the page is applied.
    pub(crate) to: i64,
    pub(crate) events: Vec<RawEvent>,
    /// An event whose payload could not be read, to be parked; then `events` is empty and
    /// `to` is its position.
    pub(crate) unreadable: Option<Parked>,
}

/// The widest window of positions one query of a page reads, in pages.
const MAX_WINDOW_PAGES: i64 = 1024;

/// Reads the page after `from` quickly: on a store error, returns the events read before it,
/// or the error when there are none.
///
/// The log is read in windows of positions, never `(from, head]` at once. Without statistics
/// on `events` (a log just filled or restored, before `ANALYZE`) the planner may fetch every
/// event of the range, sort them all and keep the first page: each page then costs the whole
/// rest of the log, and a catch-up grows with the square of its length. A window bounds what
/// any plan reads. The first window is one page wide; while fewer than half a page has been
/// found the next is twice as wide, so a projection whose events are sparse crosses the log
/// in a few queries.
async fn read_windows(
    store: &dyn EventStore,
    filter: &Filter,
    from: i64,
    head: i64,
    batch_size: i64,
) -> Result<Page, StoreError> {
    let batch_size = batch_size.max(1);
    let mut events: Vec<RawEvent> = Vec::new();
    let (mut lo, mut window) = (from, batch_size);
    let to = loop {
        let hi = head.min(lo.saturating_add(window));
        let want = batch_size - events.len() as i64;
        let got = match store.read_all_raw(lo, Some(hi), filter, want).await {
            Ok(got) => got,
            Err(e) if lo == from => return Err(e),
            // The events before the window make a page; the next read meets the error.
            Err(_) => break lo,
        };
        let full = got.len() as i64 >= want;
        if events.is_empty() {
            events = got;
        } else {
            events.extend(got);
        }
        if full {
            break events.last().map_or(hi, |e| e.position);
        }
        lo = hi;
        if hi >= head || events.len() as i64 * 2 >= batch_size {
            break hi;
        }
        window = window
            .saturating_mul(2)
            .min(batch_size.saturating_mul(MAX_WINDOW_PAGES));
    };
    Ok(Page {
        from,
        to,
        events,
        unreadable: None,
    })
}

/// Reads the page after `from`. When the store cannot read it (an event whose payload does
/// not decode), finds the longest readable prefix by halving; when even the first event
/// cannot be read, the page is that event alone, to be parked, named by what the log says
/// of it without its payload.
pub(crate) async fn read_page(
    store: &dyn EventStore,
    pool: &PgPool,
    filter: &Filter,
    from: i64,
    head: i64,
    batch_size: i64,
) -> anyhow::Result<Page> {
    let failure = match read_windows(store, filter, from, head, batch_size).await {
        Ok(page) => return Ok(page),
        Err(e) => read_failure(e)?,
    };
    // The failure lies in the first window.
    let head = head.min(from.saturating_add(batch_size.max(1)));
    // Reading `bad` events fails; reading `good` succeeds (0 trivially).
    let (mut good, mut bad) = (0, batch_size);
    let mut prefix = Vec::new();
    let mut first_failure = failure;
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        match store.read_all_raw(from, Some(head), filter, mid).await {
            Ok(events) => {
                good = mid;
                prefix = events;
            }
            Err(e) => {
                first_failure = read_failure(e)?;
                bad = mid;
            }
        }
    }
    if let Some(last) = prefix.last() {
        let to = last.position;
        return Ok(Page {
            from,
            to,
            events: prefix,
            unreadable: None,
        });
    }
    // The same selection as the store's read, without the payload (runners never filter by
    // organization, the one criterion that needs the metadata).
    let header: Option<(i64, uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT global_position, event_id, stream_id, event_type FROM events \
         WHERE global_position > $1 AND global_position <= $2 \
         AND ($3::text[] IS NULL OR stream_category = ANY($3)) \
         AND ($4::text[] IS NULL OR event_type = ANY($4)) \
         AND ($5::text IS NULL OR stream_id = $5) \
         ORDER BY global_position LIMIT 1",
    )
    .bind(from)
    .bind(head)
    .bind(&filter.categories)
    .bind(&filter.event_types)
    .bind(&filter.stream)
    .fetch_optional(pool)
    .await?;
    let Some((position, event_id, stream_id, event_type)) = header else {
        return Err(first_failure.context("reading the log"));
    };
    tracing::error!(
        position,
        %event_id,
        event_type,
        error = %parked::error_text(&first_failure),
        "an event of the log cannot be read; it is parked"
    );
    Ok(Page {
        from,
        to: position,
        events: Vec::new(),
        unreadable: Some(Parked {
            position,
            event_id,
            stream_id,
            event_type,
            error: parked::error_text(&first_failure.context("the event cannot be read")),
        }),
    })
}

/// A read error that a careful re-read may get past; transient ones are returned as errors.
fn read_failure(e: StoreError) -> anyhow::Result<anyhow::Error> {
    let e = anyhow::Error::from(e);
    if is_transient(&e) {
        Err(e)
    } else {
        Ok(e)
    }
}

/// Whether `error` is a failure of the infrastructure rather than of the event: the
/// connection or the pool, the server shutting down or short of resources, a lock or
/// statement timeout, a serialization failure or deadlock. Such a batch is tried again as
/// it is; any other error makes the runner look for the events to park.
pub fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if cause.is::<std::io::Error>() {
            return true;
        }
        let Some(e) = cause.downcast_ref::<sqlx::Error>() else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 53: insufficient resources; 57P01-57P05:
                // shutdown, crash, cannot connect now, idle timeouts; 57014: a statement
                // timeout or cancel; 55P03: a lock timeout; 40001/40P01: serialization
                // failure, deadlock; 58: system error (I/O). 42 (undefined table or column,
                // missing privilege, ...) is a deployment fault that every event would hit:
                // parking them all would empty the read model, so the runner waits instead,
                // its lag showing in /health, until the schema is fixed.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code.starts_with("58")
                    || code.starts_with("42")
                    || matches!(code.as_ref(), "57014" | "55P03" | "40001" | "40P01")
                    // The server became a standby (read-only transaction): another host
                    // is the primary now; the batch is tried again there.
                    || code == "25006"
            }),
            _ => false,
        }
    })
}

/// Applies `events`, a panic of the projection becoming an error that names it.
async fn apply_catching(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[RawEvent],
) -> anyhow::Result<()> {
    AssertUnwindSafe(projection.apply(conn, events))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(anyhow::anyhow!("the projection panicked: {message}"))
        })
}

/// Applies `events` under a savepoint of the caller's transaction.
///
/// `Ok(None)`: applied. `Ok(Some(error))`: the projection failed (or panicked) and the
/// savepoint was rolled back, leaving the transaction as it was. `Err`: a transient failure;
/// the caller's transaction is no longer usable.
pub(crate) async fn apply_guarded(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[RawEvent],
) -> anyhow::Result<Option<anyhow::Error>> {
    let mut savepoint = conn.begin().await?;
    match apply_catching(&mut savepoint, projection, events).await {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(None)
        }
        Err(e) if is_transient(&e) => Err(e),
        Err(e) => {
            savepoint.rollback().await?;
            Ok(Some(e))
        }
    }
}

/// Applies `events` inside the caller's transaction and returns those it had to park.
///
/// The batch goes first, in one piece; only if that fails is it applied again one event at a
/// time, each under its own savepoint, so a bad event costs one slow batch and nothing else.
/// Transient failures are returned as errors: the caller's transaction is then lost.
pub(crate) async fn apply_or_park(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[RawEvent],
) -> anyhow::Result<Vec<Parked>> {
    let name = projection.name();
    let Some(batch_error) = (match events {
        [] => None,
        _ => apply_guarded(conn, projection, events).await?,
    }) else {
        return Ok(Vec::new());
    };
    let mut parked = Vec::new();
    if let [event] = events {
        parked.push(Parked::new(event, &batch_error));
    } else {
        tracing::warn!(
            projection = name,
            first = events.first().map(|e| e.position),
            last = events.last().map(|e| e.position),
            error = %parked::error_text(&batch_error),
            "a batch failed; applying its events one by one"
        );
        for event in events {
            if let Some(error) =
                apply_guarded(conn, projection, std::slice::from_ref(event)).await?
            {
                parked.push(Parked::new(event, &error));
            }
        }
    }
    for p in &parked {
        tracing::error!(
            projection = name,
            position = p.position,
            event_id = %p.event_id,
            event_type = p.event_type,
            error = p.error,
            "event parked: the projection cannot apply it"
        );
    }
    Ok(parked)
}

/// Replays the whole log into fresh tables and swaps them in; returns the new checkpoint.
///
/// The live tables keep serving reads (and the live runner keeps writing them) until the
/// final swap, which takes one short transaction. Events that cannot be applied are parked
/// as the live runner parks them; at the swap the projection's parked rows become exactly
/// those of this replay.
pub async fn rebuild(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    batch_size: i64,
) -> anyhow::Result<RebuildReport> {
    rebuild_with_progress(pool, store, projection, batch_size, None).await
}

/// [`rebuild`], counting the positions it passes into `progress` (the command line's bar).
pub async fn rebuild_with_progress(
    pool: &PgPool,
    store: &dyn EventStore,
    projection: &dyn Projection,
    batch_size: i64,
    progress: Option<&crate::progress::Progress>,
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
    let mut events_read = 0u64;
    let mut parked: Vec<Parked> = Vec::new();
    let mut head = store.head_position().await?;
    let mut page = read_page(store, pool, &filter, 0, head, batch_size).await?;
    while position < head {
        let to = page.to;
        let apply = async {
            let mut tx = conn.begin().await?;
            sqlx::query(&search_path).execute(&mut *tx).await?;
            let parked = apply_or_park(&mut tx, projection, &page.events).await?;
            tx.commit().await?;
            anyhow::Ok(parked)
        };
        let read_next = async {
            if to < head {
                read_page(store, pool, &filter, to, head, batch_size)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            }
        };
        let (applied, next) = tokio::join!(apply, read_next);
        parked.extend(applied?);
        parked.extend(page.unreadable.take());
        events_read += page.events.len() as u64;
        if let Some(p) = progress {
            p.inc((to - position).max(0) as u64);
        }
        position = to;
        match next? {
            Some(next) => page = next,
            None => {
                head = store.head_position().await?;
                if position < head {
                    page = read_page(store, pool, &filter, position, head, batch_size).await?;
                }
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
        let mut page = read_page(store, pool, &filter, position, head, batch_size).await?;
        parked.extend(apply_or_park(&mut tx, projection, &page.events).await?);
        parked.extend(page.unreadable.take());
        position = page.to;
        events_read += page.events.len() as u64;
    }
    for t in projection.tables() {
        sqlx::query(&format!("DROP TABLE public.{t}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {scratch}.{t} SET SCHEMA public"))
            .execute(&mut *tx)
            .await?;
    }
    parked::reconcile_rebuild(&mut tx, name, position, &parked).await?;
    sqlx::query("UPDATE checkpoints SET position = $2, updated_at = now() WHERE projection = $1")
        .bind(name)
        .bind(position)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {scratch}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if !parked.is_empty() {
        metrics::counter!("ub_projection_events_parked_total", "projection" => name)
            .increment(parked.len() as u64);
    }
    if let Ok(counts) = parked::open_counts(pool).await {
        let open = counts.get(name).copied().unwrap_or(0);
        metrics::gauge!("ub_projection_parked_events", "projection" => name).set(open as f64);
    }
    Ok(RebuildReport {
        projection: name,
        position,
        events: events_read,
        parked: parked.len(),
        elapsed: started.elapsed(),
    })
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projection: &'static str,
    pub position: i64,
    /// Events read and applied or parked.
    pub events: u64,
    /// Events that could not be applied and are parked.
    pub parked: usize,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_under_load_grows_with_the_last_step_up_to_its_cap() {
        let ms = Duration::from_millis;
        // A cheap step keeps the configured linger.
        assert_eq!(linger_after(ms(10), ms(1)), ms(10));
        // A step of 10 ms lets events gather for 40 ms: a fifth of the time applying.
        assert_eq!(linger_after(ms(10), ms(10)), ms(40));
        // A slow step waits at most five lingers.
        assert_eq!(linger_after(ms(10), Duration::from_secs(3)), ms(50));
        // No linger configured: none under load either.
        assert_eq!(linger_after(Duration::ZERO, ms(50)), Duration::ZERO);
    }

    #[test]
    fn infrastructure_failures_are_transient_and_event_failures_are_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_transient(&anyhow::Error::from(io)));
        assert!(is_transient(&sqlx::Error::PoolTimedOut.into()));
        assert!(is_transient(
            &anyhow::Error::from(StoreError::Database(sqlx::Error::PoolClosed)).context("reading")
        ));
        assert!(!is_transient(&anyhow::anyhow!(
            "timestamp exceeds num_nanoseconds limit"
        )));
        assert!(!is_transient(&sqlx::Error::RowNotFound.into()));
        let decode = sqlx::Error::ColumnDecode {
            index: "data".into(),
            source: "number out of range".into(),
        };
        assert!(!is_transient(&StoreError::Database(decode).into()));
    }

    #[test]
    fn an_error_text_names_each_cause_once_and_holds_no_nul() {
        let decode = sqlx::Error::ColumnDecode {
            index: "data".into(),
            source: "number out of range".into(),
        };
        let e = anyhow::Error::from(StoreError::Database(decode)).context("bad\0event");
        let text = parked::error_text(&e);
        assert_eq!(text.matches("number out of range").count(), 1, "{text}");
        assert!(!text.contains('\0'));
        let long = parked::error_text(&anyhow::anyhow!("x".repeat(10_000)));
        assert!(long.chars().count() <= 4001);
    }
}
