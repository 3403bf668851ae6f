//! Read models built from the event log, and the read-your-writes wait used by queries.

pub mod agents;
pub mod analysis;
pub mod citypulse;
pub mod documents;
pub mod files;
pub mod flags;
pub mod flowmind;
pub mod fluxstudio;
pub mod identity;
pub mod messaging;
pub mod parked;
pub mod runner;
pub mod swarm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

pub use runner::{Projection, ProjectionRunner, RunnerConfig};

/// Every projection this service runs.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(citypulse::Directory),
        Arc::new(citypulse::Energy),
        Arc::new(identity::Identity),
        Arc::new(flowmind::Flowmind),
        Arc::new(messaging::Messaging),
        Arc::new(fluxstudio::Fluxstudio),
        Arc::new(swarm::SwarmTasks),
        Arc::new(analysis::Analyses),
        Arc::new(flags::Flags),
        Arc::new(agents::Agents),
        Arc::new(documents::Documents),
        Arc::new(files::Files),
    ]
}

/// The most rows one statement of a projection's step writes. A step's rows are written by
/// several statements of this size, all in the step's one transaction. A statement runs
/// without a pause in its backend: a step's worth of buckets in one statement (700 and more
/// rows under load) kept one of a small machine's cores for milliseconds, while the store's
/// writer and the HTTP answers waited for it. Between two statements the backend waits for
/// the next one, so the others get their turn. What a step writes, and when it commits, is
/// unchanged. Each statement also costs its backend a share that does not depend on its rows
/// (and, under load, a rest): statements of 100 rows took the readings projections about
/// 2 µs more of PostgreSQL per command than statements of 200, while statements of 400 made
/// the longest waits of commands longer again (docs/benchmarks.md).
pub const ROWS_PER_STATEMENT: usize = 200;

/// The ranges of `0..rows` that a step's statements write, [`ROWS_PER_STATEMENT`] at most
/// each, in order.
fn statement_chunks(rows: usize) -> Chunks {
    Chunks { rows, start: 0 }
}

/// See [`statement_chunks`].
struct Chunks {
    rows: usize,
    start: usize,
}

impl Iterator for Chunks {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.start;
        if start >= self.rows {
            return None;
        }
        self.start = self.rows.min(start + ROWS_PER_STATEMENT);
        Some(start..self.start)
    }
}

tokio::task_local! {
    /// Whether the step being applied was taken under load (see [`Statements`]).
    static UNDER_LOAD: bool;
}

/// Applies a step; `under_load` when the runner lingered before it because events kept
/// coming (see `runner::linger_after`).
pub(crate) async fn step_under<F: std::future::Future>(under_load: bool, step: F) -> F::Output {
    UNDER_LOAD.scope(under_load, step).await
}

/// The longest rest after one statement.
const LONGEST_REST: Duration = Duration::from_millis(10);

/// The statements of a step that writes `rows` rows: the rows of each in turn
/// ([`ROWS_PER_STATEMENT`] at most), and a rest after each under load.
///
/// Under load a step rests after each statement as long as the statement took, so that
/// its backend keeps at most about half of a core. A step's statements otherwise follow
/// each other without a pause, and on a small machine two projections' backends busy at
/// once left the store's writer and the HTTP workers one core for milliseconds: commands
/// then waited in bursts, every linger. A step under load follows a linger of up to four
/// times its own duration (`runner::linger_after`), so resting adds little to what its read
/// model lags by. Steps of a catch-up, careful steps and the first step after a quiet spell
/// do not rest.
pub struct Statements {
    chunks: Chunks,
    /// When the statement last handed out began.
    began: Option<tokio::time::Instant>,
}

impl Statements {
    pub fn new(rows: usize) -> Self {
        Self {
            chunks: statement_chunks(rows),
            began: None,
        }
    }

    /// The rows of the next statement, once the one before has rested; `None` after the
    /// last (which rests too).
    pub async fn next(&mut self) -> Option<std::ops::Range<usize>> {
        if let Some(began) = self.began.take() {
            if UNDER_LOAD.try_with(|u| *u).unwrap_or(false) {
                tokio::time::sleep(began.elapsed().min(LONGEST_REST)).await;
            }
        }
        let rows = self.chunks.next()?;
        self.began = Some(tokio::time::Instant::now());
        Some(rows)
    }
}

/// Looks a projection up by name.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}

/// The projections of this process with their local progress, for `min_position` waits.
#[derive(Clone, Default)]
pub struct Progress {
    local: HashMap<&'static str, Local>,
}

#[derive(Clone)]
struct Local {
    position: watch::Receiver<i64>,
    /// Set while the local runner holds the projection's lock.
    leading: Arc<AtomicBool>,
}

impl Progress {
    /// The progress of a local runner, which says when it leads.
    pub fn insert(&mut self, name: &'static str, runner: &ProjectionRunner) {
        self.local.insert(
            name,
            Local {
                position: runner.progress(),
                leading: runner.leading(),
            },
        );
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.local.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Waits until `projection` has passed `position`, at most `limit`.
    ///
    /// A projection may be led by another process, so the stored checkpoint is what counts;
    /// the local runner's progress only wakes the wait early. While the local runner leads,
    /// its progress is the projection's: the wait then asks the database only if that
    /// progress stands still for [`LOCAL_NAP`].
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        projection: &'static str,
        position: i64,
        limit: Duration,
    ) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut local = self.local.get(projection).cloned();
        let mut trust_local = local
            .as_ref()
            .is_some_and(|l| l.leading.load(Ordering::Acquire));
        loop {
            let local_now = local.as_ref().map_or(0, |l| *l.position.borrow());
            if local_now >= position {
                return Ok(());
            }
            let mut checkpoint = local_now;
            if !trust_local {
                let stored = runner::checkpoint(pool, projection)
                    .await
                    .map_err(|e| WaitError::Store(e.to_string()))?;
                if stored >= position || nothing_between(pool, projection, stored, position).await?
                {
                    return Ok(());
                }
                checkpoint = stored;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitError::Timeout { checkpoint });
            }
            let nap =
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + LOCAL_NAP));
            match local.as_mut() {
                Some(l) => {
                    let runner_gone = tokio::select! {
                        moved = l.position.wait_for(|p| *p >= position) => moved.is_err(),
                        _ = nap => {
                            trust_local = false;
                            false
                        }
                    };
                    if runner_gone {
                        trust_local = false;
                        local = None;
                    }
                }
                None => nap.await,
            }
        }
    }
}

/// How long a read-your-writes wait sleeps between looks at the stored checkpoint.
const LOCAL_NAP: Duration = Duration::from_millis(50);

/// Whether the log is committed up to `up_to` and holds no event `projection` reads in
/// `(after, up_to]`: then its read
/// model at checkpoint `after` is already what it will be at `up_to`. (A runner under load
/// moves past such stretches without storing its checkpoint each time.)
async fn nothing_between(
    pool: &PgPool,
    projection: &str,
    after: i64,
    up_to: i64,
) -> Result<bool, WaitError> {
    let Some(p) = by_name(projection) else {
        return Ok(false);
    };
    let types: Vec<&str> = p.event_types().to_vec();
    sqlx::query_scalar(
        "SELECT $2 <= (SELECT last_position FROM event_head WHERE id = 1) \
         AND NOT EXISTS (SELECT 1 FROM events WHERE global_position > $1 \
         AND global_position <= $2 AND event_type = ANY($3))",
    )
    .bind(after)
    .bind(up_to)
    .bind(&types)
    .fetch_one(pool)
    .await
    .map_err(|e| WaitError::Store(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("projection has not reached the position yet; it is at {checkpoint}")]
    Timeout { checkpoint: i64 },
    #[error("{0}")]
    Store(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_s_rows_go_in_statements_of_at_most_the_limit_each_once_in_order() {
        let n = ROWS_PER_STATEMENT;
        for rows in [0, 1, n - 1, n, n + 1, 745] {
            let chunks: Vec<_> = statement_chunks(rows).collect();
            assert!(chunks
                .iter()
                .all(|r| !r.is_empty() && r.len() <= ROWS_PER_STATEMENT));
            let covered: Vec<usize> = chunks.into_iter().flatten().collect();
            assert_eq!(covered, (0..rows).collect::<Vec<_>>(), "{rows} rows");
        }
        assert_eq!(statement_chunks(745).count(), 745_usize.div_ceil(n));
        assert_eq!(statement_chunks(n).count(), 1);
        assert_eq!(statement_chunks(n + 1).count(), 2);
    }

    /// The time a statement's rest takes on a paused clock: `took` into the statement.
    async fn rest_after(took: Duration) -> Duration {
        let mut statements = Statements::new(2 * ROWS_PER_STATEMENT);
        statements.next().await;
        tokio::time::advance(took).await;
        let done = tokio::time::Instant::now();
        statements.next().await;
        done.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn statements_rest_only_in_steps_under_load() {
        let ms = Duration::from_millis;
        assert_eq!(rest_after(ms(3)).await, ms(0), "outside any step");
        assert_eq!(step_under(false, rest_after(ms(3))).await, ms(0));
        assert_eq!(step_under(true, rest_after(ms(3))).await, ms(3));
        assert_eq!(
            step_under(true, rest_after(ms(250))).await,
            LONGEST_REST,
            "a slow statement rests at most LONGEST_REST"
        );
    }
}
