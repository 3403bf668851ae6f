//! Legacy imports: each frontend's old data, brought in as the events that would have produced
//! it.
//!
//! One module per source reads it as a stream (cursors on a PostgreSQL source, one JSON file
//! at a time for FluxStudio) and turns each row into commands of the entity deciders, so that
//! imported data obeys the same rules as data that came through the API. This module is the
//! shared runner:
//!
//! - **Ids.** A legacy UUID stays the entity's id; any other id maps to a UUID v5 of the source,
//!   the kind and the legacy id ([`mapped_id`]). Event ids derive from the source, the table,
//!   the legacy id and the step ([`Entry::apply`]), so a second run appends events the store
//!   already holds, which it answers as repeats: nothing is written twice, and a run killed
//!   at any moment completes on the next one.
//! - **Rows fail alone.** A row a decider refuses, an orphan, a duplicate or a conflict with
//!   data already here is skipped, reported and counted ([`Ctx::skip`]); the run goes on.
//! - **Writes in flight.** Streams are appended with up to [`IN_FLIGHT`] appends waiting, so
//!   the store's group commit batches them ([`Writer`]).
//! - **Verification.** The source module gives, per legacy table, a signature of each row's
//!   significant fields; after the projections have caught up, the same signature is read
//!   back from the read models and the two are compared row by row ([`verify`]).
//! - **The run is recorded** as `ImportStarted` and `ImportCompleted` in `import-<run id>`.

pub mod analysis;
pub mod flowmind;
pub mod fluxstudio;
pub mod toolboxai;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use universal_events::import::{ImportCompleted, ImportEvent, ImportStarted, TableFigures};
use universal_events::EventFamily;
use uuid::Uuid;

use crate::actors::runtime::{stream_name, Entity};
use crate::config::Config;
use crate::store::{AppendError, Direction, EventStore, ExpectedVersion, NewEvent};

/// The namespace of every id an import derives (v5).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_7a0e_3b8f_4e65_9a7d_0c2b_6f1e_8a43);
/// Appends waiting for the store at once.
pub const IN_FLIGHT: usize = 32;
/// Skipped rows listed by name in the report (all are counted).
const MAX_LISTED: usize = 10_000;
/// Differences listed by name in the report (all are counted).
const MAX_DIFFERENCES: usize = 1_000;
/// How long the verification waits for the projections to pass the import.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(600);

/// Memberships, keyed `organization/user`, signed `organization|role`.
pub const MEMBERSHIPS_SQL: &str = "SELECT organization_id::text || '/' || user_id::text, \
     concat_ws('|', organization_id::text, role) FROM memberships \
     WHERE organization_id::text || '/' || user_id::text = ANY($1)";

/// Which legacy backend the data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flowmind,
    Toolboxai,
    Analysis,
    Fluxstudio,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flowmind => "flowmind",
            Source::Toolboxai => "toolboxai",
            Source::Analysis => "analysis",
            Source::Fluxstudio => "fluxstudio",
        }
    }
}

/// `universal-backend import <source> --from ...`
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The legacy backend the data comes from.
    #[arg(value_enum)]
    pub source: Source,
    /// A PostgreSQL URL (flowmind, toolboxai, analysis) or an export directory (fluxstudio).
    #[arg(long)]
    pub from: String,
    /// Read and check everything, write no data event, and report what would be imported.
    #[arg(long)]
    pub dry_run: bool,
    /// Only compare the source with the read models (no data event is written).
    #[arg(long)]
    pub verify_only: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The organization (name or id) that users without one join; created when a name is
    /// given that does not exist yet. ToolboxAI and analysis data, which have no
    /// organizations of their own, go there.
    #[arg(long)]
    pub organization: Option<String>,
    /// FlowMind: the e-mail of the user whose organization receives buildings without owner.
    #[arg(long)]
    pub assign_orphans_to: Option<String>,
    /// Analysis: the import whose users the analyses belong to (`flowmind` or `toolboxai`).
    #[arg(long)]
    pub users_from: Option<String>,
}

impl ImportArgs {
    /// Whether the run writes no data events.
    pub fn read_only(&self) -> bool {
        self.dry_run || self.verify_only
    }
}

/// The UUID a legacy id becomes: itself when it is a UUID, otherwise a v5 of the source, the
/// entity kind and the legacy id (the same every run, and readable at
/// `GET /api/v1/admin/imports/ids`).
pub fn mapped_id(source: &str, kind: &str, legacy: &str) -> Uuid {
    Uuid::parse_str(legacy.trim()).unwrap_or_else(|_| {
        Uuid::new_v5(&NAMESPACE, format!("{source}/{kind}/{legacy}").as_bytes())
    })
}

/// Where a command of an import comes from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub table: &'static str,
    pub legacy_id: String,
}

impl Origin {
    pub fn new(table: &'static str, legacy_id: impl ToString) -> Self {
        Self {
            table,
            legacy_id: legacy_id.to_string(),
        }
    }
}

/// Why a row was not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A validator or a decider refused it.
    Invalid,
    /// What it belongs to is missing (or was skipped).
    Orphan,
    /// Another row of the source is the same thing (the first one wins).
    Duplicate,
    /// Data already here conflicts with it; it is never overwritten.
    Conflict,
    /// This backend has no entity for it.
    Unsupported,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Orphan => "orphan",
            Reason::Duplicate => "duplicate",
            Reason::Conflict => "conflict",
            Reason::Unsupported => "unsupported",
        }
    }
}

/// One skipped row, as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub table: String,
    pub legacy_id: String,
    pub reason: &'static str,
    pub detail: String,
}

/// One row whose read model does not say what the source says.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub table: String,
    pub legacy_id: String,
    pub problem: String,
}

/// The report of a run (the JSON of `--report`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: Uuid,
    pub source: Source,
    pub dry_run: bool,
    pub verify_only: bool,
    pub tables: Vec<TableFigures>,
    pub events_written: u64,
    pub skipped: Vec<Skipped>,
    pub skipped_not_listed: u64,
    pub verified: bool,
    pub differences: Vec<Difference>,
    pub differences_total: u64,
    /// Seconds the projections took to pass the import after its last write.
    pub catch_up_seconds: Option<f64>,
    pub seconds: f64,
}

/// What a source expects to find in the read models: per legacy table, each row's key (the
/// legacy id) and the signature of its significant fields, and the query that reads the
/// same from the read models.
pub struct Expectation {
    pub table: &'static str,
    /// `SELECT key, signature` over the read models; `$1` is the array of keys to look up.
    pub target_sql: &'static str,
    /// Legacy id -> (id in this backend, signature).
    pub rows: BTreeMap<String, (String, String)>,
    /// Signatures are `count|sum`: the counts must be equal and the sums equal up to
    /// rounding (they are added up in another order on each side).
    pub tolerant: bool,
}

impl Expectation {
    pub fn new(table: &'static str, target_sql: &'static str) -> Self {
        Self {
            table,
            target_sql,
            rows: BTreeMap::new(),
            tolerant: false,
        }
    }

    /// Expects the row `legacy_id`, stored under `id`, to read back as `signature`.
    pub fn expect(&mut self, legacy_id: &str, id: impl ToString, signature: String) {
        self.rows
            .insert(legacy_id.to_owned(), (id.to_string(), signature));
    }

    /// Forgets a row (it was skipped after all).
    pub fn forget(&mut self, legacy_id: &str) {
        self.rows.remove(legacy_id);
    }
}

/// The state of one run, shared by the source module, its appends in flight and the report.
pub struct Ctx {
    pub pool: PgPool,
    pub store: Arc<dyn EventStore>,
    pub source: Source,
    pub args: ImportArgs,
    figures: Mutex<Vec<TableFigures>>,
    skipped: Mutex<(Vec<Skipped>, u64)>,
    skipped_keys: Mutex<HashMap<&'static str, HashSet<String>>>,
    written: AtomicU64,
    expectations: Mutex<Vec<Expectation>>,
    progress: Mutex<HashMap<&'static str, (crate::progress::Progress, Instant)>>,
}

impl Ctx {
    pub fn new(pool: PgPool, store: Arc<dyn EventStore>, args: ImportArgs) -> Arc<Self> {
        Arc::new(Self {
            pool,
            store,
            source: args.source,
            args,
            figures: Mutex::default(),
            skipped: Mutex::default(),
            skipped_keys: Mutex::default(),
            written: AtomicU64::new(0),
            expectations: Mutex::default(),
            progress: Mutex::default(),
        })
    }

    fn with_table<T>(&self, table: &str, f: impl FnOnce(&mut TableFigures) -> T) -> T {
        let mut figures = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        let i = match figures.iter().position(|t| t.table == table) {
            Some(i) => i,
            None => {
                figures.push(TableFigures {
                    table: table.to_owned(),
                    ..TableFigures::default()
                });
                figures.len() - 1
            }
        };
        f(&mut figures[i])
    }

    /// Shows a progress bar for `table`; `total` rows when known.
    pub fn begin(&self, table: &'static str, total: Option<u64>) {
        self.with_table(table, |_| ());
        let label = format!("{} {table}", self.source.as_str());
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                table,
                (
                    crate::progress::Progress::new(&label, total),
                    Instant::now(),
                ),
            );
    }

    /// Ends the progress bar of `table`.
    pub fn end(&self, table: &'static str) {
        let ended = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(table);
        if let Some((p, started)) = ended {
            p.finish();
            self.with_table(table, |t| t.seconds += started.elapsed().as_secs_f64());
        }
    }

    /// Counts `n` rows read from `table`.
    pub fn read(&self, table: &'static str, n: u64) {
        self.with_table(table, |t| t.read += n);
        if let Some((p, _)) = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
        {
            p.inc(n);
        }
    }

    fn count(&self, table: &str, outcome: Commit, rows: u64) {
        self.with_table(table, |t| match outcome {
            Commit::Written => t.imported += rows,
            Commit::Unchanged => t.unchanged += rows,
        });
    }

    /// Records that a row was not imported, and why.
    pub fn skip(&self, table: &'static str, legacy_id: &str, reason: Reason, detail: String) {
        self.with_table(table, |t| {
            *t.skipped.entry(reason.as_str().to_owned()).or_default() += 1
        });
        self.skipped_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(table)
            .or_default()
            .insert(legacy_id.to_owned());
        let mut skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        if skipped.0.len() < MAX_LISTED {
            skipped.0.push(Skipped {
                table: table.to_owned(),
                legacy_id: legacy_id.to_owned(),
                reason: reason.as_str(),
                detail,
            });
        } else {
            skipped.1 += 1;
        }
    }

    /// Whether row `legacy_id` of `table` was skipped.
    pub fn was_skipped(&self, table: &'static str, legacy_id: &str) -> bool {
        self.skipped_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .is_some_and(|s| s.contains(legacy_id))
    }

    /// Hands the expected read-model rows of one table to the verification.
    pub fn expect(&self, expectation: Expectation) {
        self.expectations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(expectation);
    }

    /// The metadata of an imported event: the tenant, and where it came from.
    pub fn metadata(
        &self,
        command_id: Uuid,
        origin: &Origin,
        organization: Option<Uuid>,
        user: Option<Uuid>,
    ) -> Value {
        let mut meta = json!({
            "command_id": command_id,
            "imported_from": {
                "source": self.source.as_str(),
                "table": origin.table,
                "legacy_id": origin.legacy_id,
            },
        });
        if let Some(org) = organization {
            meta["organization_id"] = json!(org);
        }
        if let Some(user) = user {
            meta["user_id"] = json!(user);
        }
        meta
    }

    /// Appends one stream's events (`first`: they start the stream), or, on a read-only run,
    /// finds out what the append would do.
    pub async fn commit(
        &self,
        stream: &str,
        first: bool,
        events: Vec<NewEvent>,
    ) -> anyhow::Result<Result<Commit, String>> {
        if events.is_empty() {
            return Ok(Ok(Commit::Unchanged));
        }
        if self.args.read_only() {
            if self.store.read_event(events[0].event_id).await?.is_some() {
                return Ok(Ok(Commit::Unchanged));
            }
            if first
                && !self
                    .store
                    .read_stream(stream, 1, Direction::Forward, 1)
                    .await?
                    .is_empty()
            {
                return Ok(Err(format!("{stream} already holds other events")));
            }
            return Ok(Ok(Commit::Written));
        }
        let n = events.len() as u64;
        let expected = if first {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exists
        };
        match self.store.append(stream, expected, events).await {
            Ok(r) if r.written => {
                self.written.fetch_add(n, Ordering::Relaxed);
                Ok(Ok(Commit::Written))
            }
            Ok(_) => Ok(Ok(Commit::Unchanged)),
            Err(AppendError::WrongVersion { .. }) | Err(AppendError::DuplicateEvent(_)) => Ok(Err(
                format!("{stream} already holds other events; not overwritten"),
            )),
            Err(AppendError::Invalid(why)) => Ok(Err(format!("cannot be stored: {why}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends and counts the outcome for `rows` rows of `origin.table`: a conflict skips them.
    /// Answers the outcome (`None` for a conflict).
    pub async fn commit_rows(
        &self,
        stream: &str,
        first: bool,
        events: Vec<NewEvent>,
        origin: &Origin,
        rows: u64,
    ) -> anyhow::Result<Option<Commit>> {
        match self.commit(stream, first, events).await? {
            Ok(outcome) => {
                self.count(origin.table, outcome, rows);
                Ok(Some(outcome))
            }
            Err(why) => {
                self.skip(origin.table, &origin.legacy_id, Reason::Conflict, why);
                Ok(None)
            }
        }
    }

    /// Counts rows whose events went out with another row's append, as that append went.
    pub fn count_with(&self, table: &'static str, outcome: Option<Commit>, rows: u64) {
        if let Some(outcome) = outcome {
            self.count(table, outcome, rows);
        }
    }

    pub fn events_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// A user row as every source checks it before registering it.
pub struct UserRow {
    pub email: String,
    pub lower: String,
    /// The bcrypt hash as it is, or empty for a user without a password.
    pub hash: String,
}

/// The checks every source makes of a user row: an e-mail, not one that differs only in case
/// from an earlier row's (`seen` maps lowercase e-mails to the first row's legacy id), and a
/// password hash that is bcrypt or none (`hash_field` names it in the report). A row that
/// fails is reported and answers `None`.
pub fn user_row(
    ctx: &Ctx,
    table: &'static str,
    legacy: &str,
    email: Option<String>,
    hash: Option<String>,
    hash_field: &str,
    seen: &mut HashMap<String, String>,
) -> Option<UserRow> {
    let Some(email) = email.filter(|e| !e.trim().is_empty()) else {
        ctx.skip(table, legacy, Reason::Invalid, "email: missing".into());
        return None;
    };
    let lower = email.trim().to_lowercase();
    if let Some(first) = seen.get(&lower) {
        ctx.skip(
            table,
            legacy,
            Reason::Duplicate,
            format!("the e-mail address differs only in case from user {first}'s"),
        );
        return None;
    }
    seen.insert(lower.clone(), legacy.to_owned());
    let hash = hash.unwrap_or_default();
    if !hash.is_empty() && !crate::identity::auth::is_legacy_hash(&hash) {
        ctx.skip(
            table,
            legacy,
            Reason::Invalid,
            format!("{hash_field}: not a bcrypt hash"),
        );
        return None;
    }
    Some(UserRow { email, lower, hash })
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The events were written (or, on a read-only run, would be).
    Written,
    /// An earlier run wrote them.
    Unchanged,
}

/// One entity being built from legacy rows: its decider's state and the events not yet
/// appended.
pub struct Entry<E: Entity> {
    pub id: Uuid,
    pub state: E,
    pending: Vec<NewEvent>,
    /// Whether the stream's first events were appended (later appends extend it).
    pub started: bool,
    pub organization: Option<Uuid>,
    pub user: Option<Uuid>,
}

impl<E: Entity> Entry<E> {
    pub fn new(id: Uuid, organization: Option<Uuid>, user: Option<Uuid>) -> Self {
        Self {
            id,
            state: E::default(),
            pending: Vec::new(),
            started: false,
            organization,
            user,
        }
    }

    pub fn stream(&self) -> String {
        stream_name::<E>(self.id)
    }

    /// Runs `cmd` through the decider. Its events get ids derived from the source, the
    /// row's table and legacy id, and `step` (a row may give several commands). A refused
    /// command changes nothing and answers the decider's reason.
    pub fn apply(
        &mut self,
        ctx: &Ctx,
        origin: &Origin,
        step: &str,
        cmd: E::Command,
    ) -> Result<(), String> {
        let events = self.state.decide(&cmd).map_err(|e| e.to_string())?;
        let command_id = Uuid::new_v5(
            &NAMESPACE,
            format!(
                "{}/{}/{}/{step}",
                ctx.source.as_str(),
                origin.table,
                origin.legacy_id
            )
            .as_bytes(),
        );
        let metadata = ctx.metadata(command_id, origin, self.organization, self.user);
        for (i, e) in events.iter().enumerate() {
            // The store refuses values it cannot hold back unchanged (a NUL character, a
            // number past its range): the row is refused here instead, alone.
            let data = e.to_data();
            if let Some(bad) = crate::store::unstorable(&data) {
                return Err(format!("{}: {}", bad.path, bad.reason));
            }
            self.pending.push(NewEvent {
                event_id: Uuid::new_v5(&command_id, &(i as u64).to_be_bytes()),
                event_type: e.event_type().to_owned(),
                schema_version: E::Event::schema_version(e.event_type()),
                data,
                metadata: metadata.clone(),
            });
        }
        // Only now, so that a refused row leaves the state as it was.
        for e in &events {
            self.state.evolve(e);
        }
        Ok(())
    }

    /// Like [`Entry::apply`], but the command is tried on a copy first: for rows after the
    /// first of an entity, where a refusal must leave the state untouched.
    pub fn try_apply(
        &mut self,
        ctx: &Ctx,
        origin: &Origin,
        step: &str,
        cmd: E::Command,
    ) -> Result<(), String> {
        let before = self.pending.len();
        let saved = self.state.clone();
        let out = self.apply(ctx, origin, step, cmd);
        if out.is_err() {
            self.pending.truncate(before);
            self.state = saved;
        }
        out
    }

    /// The state and the events so far, to go back to with [`Entry::rollback`] when a row
    /// of several commands fails half-way.
    pub fn checkpoint(&self) -> (E, usize) {
        (self.state.clone(), self.pending.len())
    }

    pub fn rollback(&mut self, (state, pending): (E, usize)) {
        self.state = state;
        self.pending.truncate(pending);
    }

    /// The events decided since the last take.
    pub fn take(&mut self) -> Vec<NewEvent> {
        std::mem::take(&mut self.pending)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

type Pending = Pin<Box<dyn std::future::Future<Output = (String, anyhow::Result<()>)>>>;

/// Appends in flight, at most [`IN_FLIGHT`], and at most one per stream, so that a stream's
/// appends land in the order they were decided; an infrastructure error stops the run.
#[derive(Default)]
pub struct Writer {
    inflight: FuturesUnordered<Pending>,
    streams: HashSet<String>,
}

impl Writer {
    /// Queues one piece of work on `stream` (usually its append and the counting), waiting
    /// first while [`IN_FLIGHT`] are queued or an earlier append of the stream is.
    pub async fn submit(
        &mut self,
        stream: String,
        work: impl std::future::Future<Output = anyhow::Result<()>> + 'static,
    ) -> anyhow::Result<()> {
        while self.inflight.len() >= IN_FLIGHT || self.streams.contains(&stream) {
            self.next().await?;
        }
        self.streams.insert(stream.clone());
        self.inflight
            .push(Box::pin(async move { (stream, work.await) }));
        Ok(())
    }

    /// Queues the first append of an entity's stream: its own row (`origin`) counts as the
    /// append goes, and so do the rows of other tables that rode on it (`with`).
    pub async fn start<E: Entity>(
        &mut self,
        ctx: &Arc<Ctx>,
        entry: &mut Entry<E>,
        origin: Origin,
        with: Vec<(&'static str, u64)>,
    ) -> anyhow::Result<()> {
        let stream = entry.stream();
        let events = entry.take();
        entry.started = true;
        let ctx = ctx.clone();
        self.submit(stream.clone(), async move {
            let outcome = ctx.commit_rows(&stream, true, events, &origin, 1).await?;
            for (table, rows) in with {
                ctx.count_with(table, outcome, rows);
            }
            Ok(())
        })
        .await
    }

    async fn next(&mut self) -> anyhow::Result<()> {
        if let Some((stream, r)) = self.inflight.next().await {
            self.streams.remove(&stream);
            r?;
        }
        Ok(())
    }

    /// Waits for everything queued.
    pub async fn drain(&mut self) -> anyhow::Result<()> {
        while !self.inflight.is_empty() {
            self.next().await?;
        }
        Ok(())
    }
}

/// The SHA-256 of a signature, so that the comparison never holds or prints field values.
fn digest(signature: &str) -> [u8; 32] {
    Sha256::digest(signature.as_bytes()).into()
}

/// Whether two `count|sum` signatures agree: equal counts, sums equal up to rounding.
fn sums_agree(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (n, sum) = s.split_once('|')?;
        Some((n.parse::<u64>().ok()?, sum.parse::<f64>().ok()?))
    };
    match (parse(a), parse(b)) {
        (Some((n1, s1)), Some((n2, s2))) => {
            n1 == n2 && (s1 - s2).abs() <= 1e-9 * s1.abs().max(s2.abs()).max(1.0)
        }
        _ => false,
    }
}

/// Compares every expectation with the read models; answers the differences (the first
/// [`MAX_DIFFERENCES`]) and their count, and records mismatches in the figures.
pub async fn verify(ctx: &Ctx) -> anyhow::Result<(Vec<Difference>, u64)> {
    let expectations =
        std::mem::take(&mut *ctx.expectations.lock().unwrap_or_else(|e| e.into_inner()));
    let mut differences = Vec::new();
    let mut total = 0u64;
    for exp in expectations {
        let mut mismatched = 0u64;
        let rows: Vec<_> = exp.rows.into_iter().collect();
        for chunk in rows.chunks(5_000) {
            let ids: Vec<String> = chunk.iter().map(|(_, (id, _))| id.clone()).collect();
            let found: Vec<(String, String)> = sqlx::query_as(exp.target_sql)
                .bind(&ids)
                .fetch_all(&ctx.pool)
                .await?;
            let found: HashMap<String, String> = found.into_iter().collect();
            for (legacy_id, (id, signature)) in chunk {
                let problem = match found.get(id) {
                    None => Some("missing from the read model".to_owned()),
                    Some(s) if exp.tolerant && !sums_agree(s, signature) => Some(format!(
                        "the read model holds count|sum {s}, the source {signature}"
                    )),
                    Some(s) if !exp.tolerant && digest(s) != digest(signature) => {
                        Some("its fields differ between the source and the read model".to_owned())
                    }
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    mismatched += 1;
                    total += 1;
                    if differences.len() < MAX_DIFFERENCES {
                        differences.push(Difference {
                            table: exp.table.to_owned(),
                            legacy_id: legacy_id.clone(),
                            problem: format!("{problem} (id {id})"),
                        });
                    }
                }
            }
        }
        ctx.with_table(exp.table, |t| t.mismatched += mismatched);
    }
    Ok((differences, total))
}

/// Waits until every projection has passed `position`.
async fn catch_up(pool: &PgPool, position: i64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for p in crate::projections::all() {
            if crate::projections::runner::checkpoint(pool, p.name()).await? < position {
                behind.push(p.name());
            }
        }
        if behind.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > CATCH_UP_DEADLINE {
            anyhow::bail!(
                "the projections {} did not reach position {position} within {}s; is a \
                 server or this command running them?",
                behind.join(", "),
                CATCH_UP_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn record(ctx: &Ctx, run_id: Uuid, event: ImportEvent) -> anyhow::Result<()> {
    let i = match &event {
        ImportEvent::ImportStarted(_) => 0u64,
        ImportEvent::ImportCompleted(_) => 1,
    };
    let origin = Origin::new("import", run_id);
    let e = NewEvent {
        event_id: Uuid::new_v5(&run_id, &i.to_be_bytes()),
        event_type: event.event_type().to_owned(),
        schema_version: 1,
        data: event.to_data(),
        metadata: ctx.metadata(run_id, &origin, None, None),
    };
    let expected = if i == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(1)
    };
    ctx.store
        .append(&format!("import-{run_id}"), expected, vec![e])
        .await?;
    Ok(())
}

/// Where the data comes from, for the run record: a URL without its credentials.
fn describe_from(from: &str) -> String {
    match url::Url::parse(from) {
        Ok(mut u) if u.scheme().starts_with("postgres") => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        _ => from.to_owned(),
    }
}

/// Runs an import (or its dry run or verification) to the end and prints its report; answers
/// whether the verification found the read models equal to the source.
pub async fn run(config: &Config, args: ImportArgs) -> anyhow::Result<bool> {
    let dry_run = args.dry_run;
    let report = run_with_report(config, args).await?;
    Ok(dry_run || report.differences_total == 0)
}

/// Like [`run`], answering the whole report.
pub async fn run_with_report(config: &Config, args: ImportArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let pool = crate::db::connect_and_migrate(config).await?;
    let store = crate::store::PgEventStore::start(pool.clone(), config.store()).await?;
    // The projections run here too, so that an import on a machine without a server still
    // reaches the read models; beside a live server they stand by (one runner per lock).
    let runners: Vec<_> = crate::projections::all()
        .into_iter()
        .filter(|p| config.runs_projection(p.name()))
        .map(|p| {
            crate::projections::ProjectionRunner::new(
                pool.clone(),
                store.clone(),
                p.clone(),
                config.runner(),
            )
            .run()
        })
        .collect();
    let _projections = crate::rt::spawn_thread("ub-import-projections", move || async move {
        futures_util::future::join_all(runners).await;
    });

    let run_id = Uuid::now_v7();
    let ctx = Ctx::new(pool.clone(), store.clone(), args.clone());
    record(
        &ctx,
        run_id,
        ImportEvent::ImportStarted(ImportStarted {
            run_id,
            source: args.source.as_str().to_owned(),
            from: describe_from(&args.from),
            dry_run: args.dry_run,
            verify_only: args.verify_only,
            organization: args.organization.clone(),
            started_at: Utc::now(),
        }),
    )
    .await?;
    match args.source {
        Source::Flowmind => flowmind::run(&ctx).await?,
        Source::Toolboxai => toolboxai::run(&ctx).await?,
        Source::Analysis => analysis::run(&ctx).await?,
        Source::Fluxstudio => {
            // File contents go where the servers read them (`FILE_STORE_URL`).
            let storage = crate::files::Storage::open(
                &config.file_store_url,
                config.file_store_endpoint.as_deref(),
            )?;
            fluxstudio::run(&ctx, &storage).await?
        }
    }
    let mut catch_up_seconds = None;
    let (differences, total, verified) = if args.dry_run {
        (Vec::new(), 0, false)
    } else {
        let head = store.head_position().await?;
        let waited = catch_up(&pool, head).await?;
        catch_up_seconds = Some(waited.as_secs_f64());
        eprintln!(
            "projections caught up with position {head} in {:.1}s",
            waited.as_secs_f64()
        );
        let (d, n) = verify(&ctx).await?;
        (d, n, true)
    };
    let tables = ctx
        .figures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let written = ctx.events_written();
    record(
        &ctx,
        run_id,
        ImportEvent::ImportCompleted(ImportCompleted {
            run_id,
            tables: tables.clone(),
            events_written: written,
            verified: verified && total == 0,
            differences: total,
            completed_at: Utc::now(),
        }),
    )
    .await?;
    let (skipped, not_listed) = ctx
        .skipped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let report = Report {
        run_id,
        source: args.source,
        dry_run: args.dry_run,
        verify_only: args.verify_only,
        tables,
        events_written: written,
        skipped,
        skipped_not_listed: not_listed,
        verified: verified && total == 0,
        differences,
        differences_total: total,
        catch_up_seconds,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_report(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    store.shutdown().await;
    Ok(report)
}

fn print_report(r: &Report) {
    let mode = if r.dry_run {
        " (dry run: nothing written)"
    } else if r.verify_only {
        " (verification only)"
    } else {
        ""
    };
    println!("import {} run {}{mode}", r.source.as_str(), r.run_id);
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>8} {:>10} {:>9}  skipped by reason",
        "table", "read", "imported", "unchanged", "skipped", "mismatched", "rows/s"
    );
    for t in &r.tables {
        let skipped: u64 = t.skipped.values().sum();
        let reasons: Vec<_> = t.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let rate = if t.seconds > 0.0 {
            format!("{:.0}", t.read as f64 / t.seconds)
        } else {
            "-".into()
        };
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>8} {:>10} {:>9}  {}",
            t.table,
            t.read,
            t.imported,
            t.unchanged,
            skipped,
            t.mismatched,
            rate,
            reasons.join(", ")
        );
    }
    for s in r.skipped.iter().take(50) {
        println!(
            "skipped {} {} ({}): {}",
            s.table, s.legacy_id, s.reason, s.detail
        );
    }
    if r.skipped.len() > 50 {
        println!(
            "... and {} more skipped rows (see --report)",
            r.skipped.len() as u64 - 50 + r.skipped_not_listed
        );
    }
    for d in &r.differences {
        println!("DIFFERENT {} {}: {}", d.table, d.legacy_id, d.problem);
    }
    println!(
        "{} events written in {:.1}s; {}",
        r.events_written,
        r.seconds,
        if r.dry_run {
            "not verified (dry run)".to_owned()
        } else if r.differences_total == 0 {
            "verified: the read models match the source".to_owned()
        } else {
            format!("{} rows differ", r.differences_total)
        }
    );
}

/// Finds an organization by id or name, for `--organization`; creates one named so when
/// none exists (its first admin is `creator`), with the source's frontend enabled.
pub async fn organization(
    ctx: &Ctx,
    name_or_id: &str,
    creator: Option<Uuid>,
) -> anyhow::Result<Option<Uuid>> {
    if let Ok(id) = Uuid::parse_str(name_or_id) {
        let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(&ctx.pool)
            .await?;
        anyhow::ensure!(
            found.is_some(),
            "--organization: no organization has the id {id}"
        );
        return Ok(found);
    }
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM organizations WHERE name = $1 ORDER BY created_at LIMIT 1",
    )
    .bind(name_or_id)
    .fetch_optional(&ctx.pool)
    .await?;
    if found.is_some() {
        return Ok(found);
    }
    let Some(creator) = creator else {
        return Ok(None);
    };
    let id = mapped_id(ctx.source.as_str(), "organization", name_or_id);
    let origin = Origin::new("--organization", name_or_id);
    let mut org =
        Entry::<crate::actors::organization::Organization>::new(id, Some(id), Some(creator));
    org.apply(
        ctx,
        &origin,
        "create",
        crate::actors::organization::OrgCommand {
            actor: creator,
            action: crate::actors::organization::OrgAction::Create {
                organization_id: id,
                name: name_or_id.to_owned(),
                at: Utc::now(),
            },
        },
    )
    .map_err(|e| anyhow::anyhow!("--organization {name_or_id}: {e}"))?;
    // The frontend whose data comes in is enabled in the organization made for it.
    let frontend = match ctx.source {
        Source::Toolboxai => Some(universal_events::identity::Frontend::Toolbox),
        Source::Fluxstudio => Some(universal_events::identity::Frontend::Fluxstudio),
        Source::Flowmind | Source::Analysis => Some(universal_events::identity::Frontend::Flowmind),
    };
    if let Some(frontend) = frontend {
        org.apply(
            ctx,
            &origin,
            "frontend",
            crate::actors::organization::OrgCommand {
                actor: creator,
                action: crate::actors::organization::OrgAction::SetFrontend {
                    frontend,
                    enabled: true,
                },
            },
        )
        .map_err(|e| anyhow::anyhow!("--organization {name_or_id}: {e}"))?;
    }
    let events = org.take();
    if let Err(why) = ctx.commit(&org.stream(), true, events).await? {
        anyhow::bail!("--organization {name_or_id}: {why}");
    }
    Ok(Some(id))
}
