//! The PostgreSQL event store, with group commit.
//!
//! # Gapless positions in commit order
//!
//! A sequence-based position is handed out when a row is inserted, but transactions commit
//! in any order: a reader could see position 11 committed while 10 is still in flight, move
//! its cursor past 10 and lose it forever. We use the cure of *serializing position
//! assignment at commit*: every appending transaction first locks the single `event_head`
//! row (`SELECT … FOR UPDATE`), takes its positions from the counter stored there, and
//! releases the lock only by committing. Two appends can therefore never interleave, so
//! positions are gapless (a rollback also rolls back the counter) and become visible in
//! increasing order. This holds across processes as well, because the lock is in the
//! database.
//!
//! # Group commit
//!
//! A lock held for a whole transaction would cap us at one commit (one fsync) per append.
//! So appends are not written by their callers: they go through a bounded channel to one
//! writer task per process, which takes everything that is queued (up to `batch_max` events:
//! what arrived while the last batch committed; with a `linger` set, under load it also waits
//! that long for more) and writes it in one transaction. Expected versions and event-id idempotency are checked under the lock, in
//! memory, per append: a conflicting append is answered with its own error and left out of
//! the batch, and the others commit.
//!
//! The writer also remembers the stream versions it has seen and the head it last
//! committed. When the head is still there when it next takes the lock, nobody else
//! appended, so those versions are exact and need not be read; and repeated event ids are
//! left to the unique index, whose violation sends the batch round again with every id
//! checked. A batch on streams the writer knows is then one round trip: a single statement
//! moves the head row on from the head the writer knows (the update takes the row lock and,
//! after waiting for it, matches only if nobody appended since), inserts the rows only if it
//! did, announces the commit and commits on its own (`write_at_once`). When the head had
//! moved, nothing is written and the batch goes the careful way: BEGIN + lock, the versions
//! the cache lacks, INSERT, and UPDATE + NOTIFY + COMMIT.
//!
//! After each commit the writer keeps the rows it wrote in memory for a while
//! ([`super::recent`]), so that this process's projections read them without a query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::commits::{self, RecentCommits};
use super::recent::RecentEvents;
use super::{
    category_of, AppendError, AppendResult, Direction, EncodedEvent, EventStore, ExpectedVersion,
    Filter, RawEvent, RecordedEvent, Snapshot, StoreError,
};

/// Longest wait of the writer for the head lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest statement of the writer.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a whole batch may take from BEGIN to COMMIT, measured by the writer itself, so
/// that a server that stops answering (a network partition) is noticed too.
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The NOTIFY channel on which committed head positions are announced.
pub const NOTIFY_CHANNEL: &str = "ub_events";

const SELECT_EVENT: &str = "SELECT global_position AS position, stream_id, \
    stream_category AS category, version, event_id, event_type, schema_version, data, \
    metadata, recorded_at FROM events";

/// Tuning of the group-commit writer.
#[derive(Debug, Clone)]
pub struct PgStoreConfig {
    /// Most events written in one transaction.
    pub batch_max: usize,
    /// How long the writer waits for more appends once it holds at least one.
    pub linger: Duration,
    /// Appends that may wait in the queue before callers are slowed down.
    pub queue_capacity: usize,
}

impl Default for PgStoreConfig {
    fn default() -> Self {
        Self {
            batch_max: 2000,
            // Appends gather while the previous batch commits; waiting for more on top only
            // lengthens the writer's cycle (measured: docs/benchmarks.md).
            linger: Duration::ZERO,
            queue_capacity: 16_384,
        }
    }
}

/// An append on its way to the writer. Its payloads are JSON text already: the caller
/// encodes them, on its own thread, so that the one writer task neither copies nor encodes
/// payloads and the rows it binds borrow them.
struct AppendRequest {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<EncodedEvent>,
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

enum WriterMsg {
    Append(AppendRequest),
    /// Answered once every append queued before it has been committed.
    Flush(oneshot::Sender<()>),
}

/// The Postgres implementation of [`EventStore`].
pub struct PgEventStore {
    pool: PgPool,
    tx: mpsc::Sender<WriterMsg>,
    closed: AtomicBool,
    head: watch::Receiver<i64>,
    commits: Arc<RecentCommits>,
    recent: Arc<RecentEvents>,
    snapshots: mpsc::Sender<super::snapshots::Save>,
}

impl PgEventStore {
    /// Starts the writer and the NOTIFY listener on the current runtime.
    pub async fn start(pool: PgPool, config: PgStoreConfig) -> Result<Arc<Self>, StoreError> {
        let head_now: i64 = sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let (head_tx, head_rx) = watch::channel(head_now);
        let head_tx = Arc::new(head_tx);
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        // The writer gets a thread of its own: it is the one serial step of every command,
        // and must not queue behind HTTP handlers or projections.
        let writer_pool = pool.clone();
        let weak_head = Arc::downgrade(&head_tx);
        let commits = Arc::new(RecentCommits::default());
        let (writer_commits, listener_commits) = (commits.clone(), commits.clone());
        let recent = Arc::new(RecentEvents::default());
        let writer_recent = recent.clone();
        let (snapshots, saves) = mpsc::channel(super::snapshots::QUEUE);
        crate::rt::spawn_thread("ub-store-writer", move || async move {
            let commits = Recorded {
                commits: &writer_commits,
                events: &writer_recent,
            };
            let saver = async {
                super::snapshots::saver_loop(writer_pool.clone(), saves).await;
                // Only the writer ends this thread, once it has drained its queue.
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = writer_loop(writer_pool.clone(), rx, config, head_tx, commits) => {}
                _ = listen_loop(writer_pool.clone(), weak_head, listener_commits) => {}
                _ = saver => {}
            }
        })
        .detach();
        Ok(Arc::new(Self {
            pool,
            tx,
            closed: AtomicBool::new(false),
            head: head_rx,
            commits,
            recent,
            snapshots,
        }))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Events that [`EventStore::read_all_raw`] served from this process's recent commits
    /// instead of the database (see [`super::recent`]).
    pub fn events_read_from_memory(&self) -> u64 {
        self.recent.served()
    }
}

fn advance(head: &watch::Sender<i64>, position: i64) {
    head.send_if_modified(|h| {
        if position > *h {
            *h = position;
            true
        } else {
            false
        }
    });
}

/// Follows NOTIFYs from every process writing to this database (heads, and what their
/// commits held). Ends when the store is gone.
async fn listen_loop(
    pool: PgPool,
    head: std::sync::Weak<watch::Sender<i64>>,
    commits: Arc<RecentCommits>,
) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "event listener cannot connect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if head.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([commits::CHANNEL, NOTIFY_CHANNEL])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Notifications sent while the listener was away (a lost connection, a move to
        // another database host) are gone: the head is read once, now that it listens.
        if let Ok(p) =
            sqlx::query_scalar::<_, i64>("SELECT last_position FROM event_head WHERE id = 1")
                .fetch_one(&pool)
                .await
        {
            let Some(h) = head.upgrade() else { return };
            advance(&h, p);
        }
        loop {
            // Wake up now and then to notice that the store was dropped.
            match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
                Ok(Ok(n)) if n.channel() == commits::CHANNEL => commits.record_payload(n.payload()),
                Ok(Ok(n)) => {
                    let Some(h) = head.upgrade() else { return };
                    if let Ok(p) = n.payload().parse::<i64>() {
                        advance(&h, p);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event listener lost its connection");
                    break;
                }
                Err(_) => {
                    if head.strong_count() == 0 {
                        return;
                    }
                }
            }
        }
    }
}

/// How many lingers without an append make the writer idle: the next append is then
/// written without waiting for others.
const QUIET_LINGERS: u32 = 5;

async fn writer_loop(
    pool: PgPool,
    mut rx: mpsc::Receiver<WriterMsg>,
    config: PgStoreConfig,
    head: Arc<watch::Sender<i64>>,
    commits: Recorded<'_>,
) {
    let mut flushes = Vec::new();
    let mut conn: Option<PgConnection> = None;
    let mut cache = WriterCache::default();
    // When the last batch ended: the linger gathers appends only under load. An append
    // that arrives after a quiet spell is written at once (waiting would only add the
    // linger, rounded up to the timer's millisecond, to its latency).
    let mut last_batch = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        let busy = last_batch.elapsed() < config.linger.saturating_mul(QUIET_LINGERS);
        let linger = if busy { config.linger } else { Duration::ZERO };
        let deadline = tokio::time::Instant::now() + linger;
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Append(req) => {
                    events += req.events.len();
                    batch.push(req);
                }
                WriterMsg::Flush(ack) => flushes.push(ack),
            }
            if events >= config.batch_max || !flushes.is_empty() {
                break;
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) if !linger.is_zero() => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
        }
        if !batch.is_empty() {
            metrics::histogram!("ub_append_batch_events").record(events as f64);
            metrics::histogram!("ub_append_batch_appends").record(batch.len() as f64);
            commit_batch(&pool, &mut conn, &mut cache, batch, &head, commits).await;
            last_batch = tokio::time::Instant::now();
        }
        for ack in flushes.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// What the writer records of each commit besides the head: the types it held (announced
/// to every process too) and its rows (for this process's own readers).
#[derive(Clone, Copy)]
struct Recorded<'a> {
    commits: &'a RecentCommits,
    events: &'a RecentEvents,
}

impl Recorded<'_> {
    /// Records a committed batch, positions `(start, head]`, and moves the cache's head there.
    fn record(self, start: i64, head: i64, types: Vec<&str>, rows: Rows, cache: &mut WriterCache) {
        self.commits.record(start, head, types);
        self.events.record(start, rows.into_events());
        cache.head = head;
    }
}

/// The `application_name` of the writer's session.
pub const WRITER_APPLICATION_NAME: &str = "ub-writer";

async fn open_writer_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    // The batch's statements are planned once: planning the one-statement batch at every
    // execution took a tenth of its backend's time. The lookups of the locked path plan
    // each execution instead (see [`write_batch`]).
    // A lock held elsewhere (another process stuck in its append, or a session that took
    // the head lock by hand) must not block this writer forever: the lock wait and every
    // statement are bounded, and the batch is answered with an error instead.
    // Its name tells its backend from the others, in `pg_stat_activity` and to the bench.
    sqlx::raw_sql(&format!(
        "SET plan_cache_mode = force_generic_plan; SET lock_timeout = {}; \
         SET statement_timeout = {}; SET application_name = '{WRITER_APPLICATION_NAME}'",
        LOCK_TIMEOUT.as_millis(),
        STATEMENT_TIMEOUT.as_millis()
    ))
    .execute(&mut conn)
    .await?;
    Ok(conn)
}

/// What the writer knows of stream versions without asking the database.
///
/// The cache is exact as long as nobody else appended since this writer's last commit,
/// which the writer sees under the head lock: if the head is where it left it, no other
/// process wrote. Otherwise, or after any failure, the cache is dropped.
#[derive(Default)]
struct WriterCache {
    /// The head this writer last committed or saw under the lock; -1 when unknown.
    head: i64,
    versions: HashMap<String, i64>,
}

impl WriterCache {
    /// Streams remembered at most; beyond this the cache starts over.
    const CAPACITY: usize = 200_000;

    fn invalidate(&mut self) {
        self.head = -1;
        self.versions.clear();
    }
}

/// Why a batch failed.
enum BatchError {
    /// A unique key was hit: the batch reused stored event ids (a retried command).
    /// The caller rolls back and runs the batch again with the id checks on.
    Duplicate,
    Sql(sqlx::Error),
    /// The batch did not finish within [`BATCH_TIMEOUT`]; its connection is dropped, which
    /// rolls it back unless the commit already happened.
    TimedOut,
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                BatchError::Duplicate
            }
            _ => BatchError::Sql(e),
        }
    }
}

/// Writes one batch and answers every request in it.
async fn commit_batch(
    pool: &PgPool,
    conn: &mut Option<PgConnection>,
    cache: &mut WriterCache,
    batch: Vec<AppendRequest>,
    head: &watch::Sender<i64>,
    commits: Recorded<'_>,
) {
    let mut outcome = Err(BatchError::Duplicate);
    // First optimistically, trusting the cache and the unique index on event ids; if that
    // hits a stored id, once more with every id checked.
    for verify_ids in [false, true] {
        if conn.is_none() {
            // A connection of the writer's own, opened on its thread: a pooled one may be
            // bound to another thread's reactor, adding a hop to every round trip.
            match open_writer_connection(pool).await {
                Ok(c) => {
                    // A new connection may reach a database that changed under the last one
                    // (a failover): what this process remembers of its commits starts over.
                    commits.events.clear();
                    *conn = Some(c);
                }
                Err(e) => {
                    outcome = Err(BatchError::Sql(e));
                    break;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        outcome = match tokio::time::timeout(
            BATCH_TIMEOUT,
            write_batch(c, cache, &batch, verify_ids, commits),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(BatchError::TimedOut),
        };
        match &outcome {
            Ok(_) => break,
            Err(BatchError::Duplicate) => {
                cache.invalidate();
                if sqlx::raw_sql("ROLLBACK").execute(&mut *c).await.is_err() {
                    *conn = None;
                }
            }
            Err(BatchError::Sql(_) | BatchError::TimedOut) => break,
        }
    }
    match outcome {
        Ok((outcomes, new_head)) => {
            if let Some(p) = new_head {
                advance(head, p);
            }
            let mut written = 0u64;
            for (req, outcome) in batch.into_iter().zip(outcomes) {
                if matches!(&outcome, Ok(r) if r.written) {
                    written += req.events.len() as u64;
                }
                let _ = req.reply.send(outcome);
            }
            metrics::counter!("ub_events_appended_total").increment(written);
        }
        Err(BatchError::Sql(e)) if batch.len() > 1 && rejects_data(&e) => {
            // The database refused something one append carries (a value it cannot hold):
            // that append must fail alone, so each one goes round again in a batch of its
            // own. Rare, and only on inputs the validation let through.
            *conn = None;
            cache.invalidate();
            tracing::warn!(error = %e, appends = batch.len(), "append batch refused; splitting it");
            for req in batch {
                Box::pin(commit_batch(pool, conn, cache, vec![req], head, commits)).await;
            }
        }
        Err(e) => {
            if let BatchError::Sql(e) = &e {
                crate::db::suspect(e);
            }
            // Closing the connection rolls back whatever the transaction had done.
            *conn = None;
            cache.invalidate();
            let msg = match e {
                BatchError::Sql(e) => e.to_string(),
                BatchError::Duplicate => "a unique key was violated twice".to_owned(),
                BatchError::TimedOut => format!("no answer within {BATCH_TIMEOUT:?}"),
            };
            tracing::error!(error = %msg, appends = batch.len(), "append batch failed");
            for req in batch {
                let _ = req
                    .reply
                    .send(Err(AppendError::Store(StoreError::Other(msg.clone()))));
            }
        }
    }
}

/// Whether an error is the database refusing the data of the batch (data exceptions,
/// integrity and program limits), as opposed to a lock, timeout or connection failure, which
/// would hit each part of the batch alike.
fn rejects_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// The columns of the rows a batch inserts, one vector per column (for `UNNEST`), borrowing
/// the batch's text.
#[derive(Default)]
struct Rows<'a> {
    positions: Vec<i64>,
    streams: Vec<&'a str>,
    categories: Vec<&'a str>,
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    data: Vec<&'a str>,
    metadata: Vec<&'a str>,
}

impl<'a> Rows<'a> {
    /// The event types of the rows, each once.
    fn distinct_types(&self) -> Vec<&'a str> {
        let mut types = self.types.clone();
        types.sort_unstable();
        types.dedup();
        types
    }

    /// The rows as the events a projection reads, once they are committed.
    fn into_events(self) -> Vec<RawEvent> {
        (0..self.positions.len())
            .map(|i| RawEvent {
                position: self.positions[i],
                stream_id: self.streams[i].to_owned(),
                category: self.categories[i].to_owned(),
                version: self.versions[i],
                event_id: self.event_ids[i],
                event_type: self.types[i].to_owned(),
                schema_version: self.schema_versions[i],
                data: self.data[i].to_owned(),
            })
            .collect()
    }
}

type Outcome = Result<AppendResult, AppendError>;

/// The insert of a batch's rows, bound as arrays `$1` to `$9` (see [`bind_rows`]).
macro_rules! insert_rows {
    () => {
        "INSERT INTO events (global_position, stream_id, stream_category, version, event_id, \
         event_type, schema_version, data, metadata) \
         SELECT p, s, c, v, i, t, sv, d::jsonb, m::jsonb FROM UNNEST($1::bigint[], $2::text[], \
         $3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::int4[], $8::text[], $9::text[]) \
         AS u(p, s, c, v, i, t, sv, d, m)"
    };
}

const INSERT_ROWS: &str = insert_rows!();

/// The insert in one statement with the head's move (`$10` the new head, `$11` the one the
/// writer knows), only if that matched, and the announcements (`$12`/`$13` the commit's
/// description, `$14` the head's channel); answers whether the head moved, and the notices
/// sent. The insert runs whether or not the answer names it (as every data-modifying part
/// of a statement does) and writes every row or fails the statement, so it returns nothing:
/// a `RETURNING` would only gather the rows in a store to be counted.
const AT_ONCE: &str = concat!(
    "WITH moved AS (UPDATE event_head SET last_position = $10 \
     WHERE id = 1 AND last_position = $11 RETURNING 1), written AS (",
    insert_rows!(),
    " WHERE EXISTS (SELECT 1 FROM moved)), \
     told AS (SELECT pg_notify($12, $13::text) FROM moved WHERE $13::text IS NOT NULL \
     UNION ALL SELECT pg_notify($14, $10::text) FROM moved) \
     SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM told)"
);

/// Binds the columns of [`Rows`] as `$1` to `$9` of [`INSERT_ROWS`].
macro_rules! bind_rows {
    ($query:expr, $rows:expr) => {
        $query
            .bind(&$rows.positions)
            .bind(&$rows.streams)
            .bind(&$rows.categories)
            .bind(&$rows.versions)
            .bind(&$rows.event_ids)
            .bind(&$rows.types)
            .bind(&$rows.schema_versions)
            .bind(&$rows.data)
            .bind(&$rows.metadata)
    };
}

/// One batch: in one round trip when the cache knows the head and every stream
/// ([`write_at_once`]); otherwise, or when the head had moved, in three: BEGIN + lock, the
/// insert, and head update + NOTIFY + COMMIT, with a fourth that reads versions the cache
/// lacks (and, with `verify_ids`, looks for stored event ids). On an error the caller rolls
/// back.
async fn write_batch(
    conn: &mut PgConnection,
    cache: &mut WriterCache,
    batch: &[AppendRequest],
    verify_ids: bool,
    commits: Recorded<'_>,
) -> Result<(Vec<Outcome>, Option<i64>), BatchError> {
    if !verify_ids
        && cache.head >= 0
        && cache.versions.len() <= WriterCache::CAPACITY
        && batch.iter().all(|r| cache.versions.contains_key(&r.stream))
    {
        if let Some(done) = write_at_once(conn, cache, batch, commits).await? {
            return Ok(done);
        }
        // Another process wrote since: what the cache knows is stale.
        cache.invalidate();
    }
    // The lookups below take arrays of ids; a cached generic plan may estimate them badly
    // and scan the whole log, so within this transaction each execution is planned for its
    // actual arguments.
    let locked = sqlx::raw_sql(
        "BEGIN; SET LOCAL plan_cache_mode = force_custom_plan; \
         SELECT last_position FROM event_head WHERE id = 1 FOR UPDATE",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut head: i64 = locked
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("event_head row is missing".into()))?
        .try_get(0)?;
    if head != cache.head || cache.versions.len() > WriterCache::CAPACITY {
        cache.versions.clear();
    }
    // From here until the commit succeeds the cache may run ahead of the database.
    cache.head = -1;
    let start = head;

    let mut missing: Vec<String> = batch
        .iter()
        .filter(|r| !cache.versions.contains_key(&r.stream))
        .map(|r| r.stream.clone())
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let ids: Vec<Uuid> = if verify_ids {
        batch
            .iter()
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect()
    } else {
        Vec::new()
    };
    let mut known: HashMap<Uuid, (String, i64, i64)> = HashMap::new();
    if !missing.is_empty() || !ids.is_empty() {
        // Current versions of unknown streams, and ids already stored.
        let rows: Vec<(Option<Uuid>, String, i64, i64)> = sqlx::query_as(
            "SELECT NULL::uuid, s.id, \
             COALESCE((SELECT max(e.version) FROM events e WHERE e.stream_id = s.id), 0), \
             0::bigint FROM unnest($1::text[]) AS s(id) \
             UNION ALL \
             SELECT event_id, stream_id, version, global_position FROM events \
             WHERE event_id = ANY($2)",
        )
        .bind(&missing)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for (id, stream, version, position) in rows {
            match id {
                None => {
                    cache.versions.insert(stream, version);
                }
                Some(id) => {
                    known.insert(id, (stream, version, position));
                }
            }
        }
    }

    let (outcomes, rows) = plan_batch(batch, cache, &mut known, &mut head, verify_ids)?;

    if rows.positions.is_empty() {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        cache.head = head;
        return Ok((outcomes, None));
    }
    bind_rows!(sqlx::query(INSERT_ROWS), rows)
        .execute(&mut *conn)
        .await?;
    let types = rows.distinct_types();
    // What the commit held, for the other processes: announced before the head, so that
    // their listeners know it by the time the head wakes their readers.
    let described = RecentCommits::payload(start, head, types.iter().copied())
        .map(|p| format!("SELECT pg_notify('{}', '{p}'); ", commits::CHANNEL))
        .unwrap_or_default();
    // `head` is an integer we computed and the description holds only digits, spaces and
    // the characters of type names (checked), so formatting them into the statement is
    // safe; the simple-query protocol lets the update, the NOTIFYs and the COMMIT share a
    // round trip.
    sqlx::raw_sql(&format!(
        "UPDATE event_head SET last_position = {head} WHERE id = 1; {described}\
         SELECT pg_notify('{NOTIFY_CHANNEL}', '{head}'); COMMIT"
    ))
    .execute(&mut *conn)
    .await?;
    commits.record(start, head, types, rows, cache);
    Ok((outcomes, Some(head)))
}

/// A batch in one round trip, when the cache knows the head and every stream of it: one
/// statement moves the head row on from the head the cache knows (the update takes the row's
/// lock, and after waiting for it matches only if no other process wrote since), inserts the
/// rows only if the head moved, announces the commit and commits on its own, durably, before
/// its answer arrives. Positions stay gapless and in commit order as with the explicit lock:
/// the head row stays locked from the moment the positions are known to be free until the
/// commit. `None`: the head was not where the cache said, and nothing was written.
async fn write_at_once(
    conn: &mut PgConnection,
    cache: &mut WriterCache,
    batch: &[AppendRequest],
    commits: Recorded<'_>,
) -> Result<Option<(Vec<Outcome>, Option<i64>)>, BatchError> {
    let start = cache.head;
    let mut head = start;
    // From here until the commit succeeds the cache may run ahead of the database.
    cache.head = -1;
    let (outcomes, rows) = plan_batch(batch, cache, &mut HashMap::new(), &mut head, false)?;
    if rows.positions.is_empty() {
        cache.head = start;
        return Ok(Some((outcomes, None)));
    }
    let types = rows.distinct_types();
    let described = RecentCommits::payload(start, head, types.iter().copied());
    let answers: Vec<(i64, i64)> = bind_rows!(sqlx::query_as(AT_ONCE), rows)
        .bind(head)
        .bind(start)
        .bind(commits::CHANNEL)
        .bind(described)
        .bind(NOTIFY_CHANNEL)
        // Read to the end: the statement's commit is acknowledged with the end of its answer.
        .fetch_all(&mut *conn)
        .await?;
    if answers.first().map_or(0, |a| a.0) == 0 {
        // Another process moved the head: nothing was written.
        return Ok(None);
    }
    commits.record(start, head, types, rows, cache);
    Ok(Some((outcomes, Some(head))))
}

/// Checks every append of the batch against what the cache knows (from `head` on) and
/// gathers the rows of those admitted. Without `verify_ids`, a version conflict may be a
/// retry of events stored before, so the batch goes round again with the ids looked up.
fn plan_batch<'a>(
    batch: &'a [AppendRequest],
    cache: &mut WriterCache,
    known: &mut HashMap<Uuid, (String, i64, i64)>,
    head: &mut i64,
    verify_ids: bool,
) -> Result<(Vec<Outcome>, Rows<'a>), BatchError> {
    let mut rows = Rows::default();
    let mut outcomes = Vec::with_capacity(batch.len());
    for req in batch {
        outcomes.push(plan_append(
            req,
            &mut cache.versions,
            known,
            head,
            &mut rows,
        ));
    }
    if !verify_ids
        && outcomes
            .iter()
            .any(|o| matches!(o, Err(AppendError::WrongVersion { .. })))
    {
        return Err(BatchError::Duplicate);
    }
    Ok((outcomes, rows))
}

/// Checks one append against the state under the lock and, if it is admitted, adds its rows.
fn plan_append<'a>(
    req: &'a AppendRequest,
    versions: &mut HashMap<String, i64>,
    known: &mut HashMap<Uuid, (String, i64, i64)>,
    head: &mut i64,
    rows: &mut Rows<'a>,
) -> Outcome {
    let seen: Vec<_> = req
        .events
        .iter()
        .filter_map(|e| known.get(&e.event_id).map(|k| (e.event_id, k)))
        .collect();
    if !seen.is_empty() {
        let all_here =
            seen.len() == req.events.len() && seen.iter().all(|(_, k)| k.0 == req.stream);
        if !all_here {
            return Err(AppendError::DuplicateEvent(seen[0].0));
        }
        let (_, (_, version, position)) = seen
            .iter()
            .max_by_key(|(_, k)| k.2)
            .expect("seen is not empty");
        return Ok(AppendResult {
            version: *version,
            position: *position,
            written: false,
        });
    }
    let current = versions.get(&req.stream).copied().unwrap_or(0);
    if !req.expected.admits(current) {
        return Err(AppendError::WrongVersion {
            stream: req.stream.clone(),
            expected: req.expected,
            actual: current,
        });
    }
    let category = category_of(&req.stream);
    let mut version = current;
    for e in &req.events {
        version += 1;
        *head += 1;
        known.insert(e.event_id, (req.stream.clone(), version, *head));
        rows.positions.push(*head);
        rows.streams.push(&req.stream);
        rows.categories.push(category);
        rows.versions.push(version);
        rows.event_ids.push(e.event_id);
        rows.types.push(&e.event_type);
        rows.schema_versions.push(e.schema_version);
        rows.data.push(&e.data);
        rows.metadata.push(&e.metadata);
    }
    versions.insert(req.stream.clone(), version);
    Ok(AppendResult {
        version,
        position: *head,
        written: true,
    })
}

/// The checks of every append, before it joins a group commit, so that an event the store
/// cannot hold fails alone.
fn validate_append(stream: &str, events: &[EncodedEvent]) -> Result<(), AppendError> {
    if events.is_empty() {
        return Err(AppendError::Invalid(
            "an append needs at least one event".into(),
        ));
    }
    if stream.is_empty() || stream.starts_with('$') {
        return Err(AppendError::Invalid(format!(
            "`{stream}` is not a writable stream"
        )));
    }
    for (i, e) in events.iter().enumerate() {
        super::storable_text(&e.data)
            .and_then(|()| super::storable_text(&e.metadata))
            .map_err(|why| AppendError::Invalid(format!("event {i} ({}): {why}", e.event_type)))?;
    }
    let mut ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != events.len() {
        return Err(AppendError::Invalid(
            "event ids repeat within one append".into(),
        ));
    }
    Ok(())
}

/// The rest of a query for a page of the log after `$1` up to `$2` that [`Filter`] chooses
/// (`$3` categories, `$4` types, `$5` stream, `$7` organization; `$6` the limit), bound by
/// [`bind_filter`].
macro_rules! filtered_page {
    () => {
        "FROM events WHERE global_position > $1 AND global_position <= $2 \
         AND ($3::text[] IS NULL OR stream_category = ANY($3)) \
         AND ($4::text[] IS NULL OR event_type = ANY($4)) \
         AND ($5::text IS NULL OR stream_id = $5) \
         AND ($7::text IS NULL OR metadata->>'organization_id' = $7) \
         ORDER BY global_position LIMIT $6"
    };
}

/// Binds `$1` to `$7` of a [`filtered_page!`] query.
fn bind_filter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    after: i64,
    up_to: Option<i64>,
    filter: &'q Filter,
    limit: i64,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(after)
        .bind(up_to.unwrap_or(i64::MAX))
        .bind(&filter.categories)
        .bind(&filter.event_types)
        .bind(&filter.stream)
        .bind(limit)
        .bind(filter.organization.map(|o| o.to_string()))
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append_encoded(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EncodedEvent>,
    ) -> Result<AppendResult, AppendError> {
        validate_append(stream, &events)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(AppendError::ShuttingDown);
        }
        let (reply, answer) = oneshot::channel();
        let req = AppendRequest {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        self.tx
            .send(WriterMsg::Append(req))
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        answer.await.map_err(|_| AppendError::ShuttingDown)?
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: i64,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match direction {
            Direction::Forward => format!(
                "{SELECT_EVENT} WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            Direction::Backward => format!(
                "{SELECT_EVENT} WHERE stream_id = $1 AND version <= $2 ORDER BY version DESC LIMIT $3"
            ),
        };
        Ok(sqlx::query_as(&sql)
            .bind(stream)
            .bind(from)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn read_all(
        &self,
        after: i64,
        up_to: Option<i64>,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = concat!(
            "SELECT global_position AS position, stream_id, stream_category AS category, \
             version, event_id, event_type, schema_version, data, \
             CASE WHEN $8 THEN '{}'::jsonb ELSE metadata END AS metadata, recorded_at ",
            filtered_page!()
        );
        Ok(
            bind_filter(sqlx::query_as(sql), after, up_to, filter, limit)
                .bind(filter.skip_metadata)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn read_all_raw(
        &self,
        after: i64,
        up_to: Option<i64>,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<RawEvent>, StoreError> {
        if let Some(events) = up_to.and_then(|to| self.recent.read(after, to, filter, limit)) {
            return Ok(events);
        }
        let sql = concat!(
            "SELECT global_position AS position, stream_id, stream_category AS category, \
             version, event_id, event_type, schema_version, data::text AS data ",
            filtered_page!()
        );
        Ok(
            bind_filter(sqlx::query_as(sql), after, up_to, filter, limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(
            sqlx::query_as(&format!("{SELECT_EVENT} WHERE event_id = $1"))
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT last_position FROM event_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn head_watch(&self) -> watch::Receiver<i64> {
        self.head.clone()
    }

    fn holds_any(&self, from: i64, to: i64, types: &[String]) -> Option<bool> {
        self.commits.holds_any(from, to, types)
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        let row: Option<(i64, i32, serde_json::Value)> = sqlx::query_as(
            "SELECT version, schema_version, state FROM snapshots WHERE stream_id = $1",
        )
        .bind(stream)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(version, schema_version, state)| Snapshot {
            version,
            schema_version,
            state,
        }))
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        // Written in batches by the saver (see `super::snapshots`); a snapshot never moves
        // backwards there: a slow, older save does not replace a newer one.
        let state = serde_json::to_string(&snapshot.state)
            .map_err(|e| StoreError::Other(format!("state cannot be written: {e}")))?;
        let (done, outcome) = oneshot::channel();
        let save = super::snapshots::Save {
            stream: stream.to_owned(),
            version: snapshot.version,
            schema_version: snapshot.schema_version,
            state,
            done,
        };
        let gone = || StoreError::Other("the snapshot saver has stopped".into());
        self.snapshots.send(save).await.map_err(|_| gone())?;
        outcome
            .await
            .map_err(|_| gone())?
            .map_err(StoreError::Other)
    }

    async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let (ack, done) = oneshot::channel();
        if self.tx.send(WriterMsg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}
