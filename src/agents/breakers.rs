//! The provider circuit breakers as the whole deployment sees them.
//!
//! A breaker lives in each process (`providers::guard`): it is that process's experience of
//! a provider, and two processes may well disagree for a while. So the breakers are not
//! events of the log; each process **upserts its own rows** in `circuit_breaker_state`
//! (one per provider) every [`BEAT`], and the views read the rows of live processes (those
//! refreshed within three beats): per breaker the worst state, the largest failure count,
//! the earliest next probe, and each process's own row.
//!
//! **A reset reaches every process** through `circuit_breaker_resets`: the admin's request
//! inserts a row (who, when: the history of resets) and resets the local breaker at once;
//! every process, on its next beat, resets each breaker named by a row it has not applied
//! yet and then writes its fresh state. A process that starts later does not replay older
//! resets (its breakers start closed anyway).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::providers::Providers;

/// How often a process writes its breakers and looks for resets.
pub const BEAT: Duration = Duration::from_secs(1);

/// This process's part: its id in `circuit_breaker_state` and the last reset it applied.
pub struct BreakerSync {
    pub process: Uuid,
    pool: PgPool,
    providers: Providers,
    applied: tokio::sync::Mutex<i64>,
}

impl BreakerSync {
    /// Starts beating on the current runtime.
    pub async fn start(pool: PgPool, providers: Providers) -> anyhow::Result<Arc<Self>> {
        let applied: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM circuit_breaker_resets")
                .fetch_one(&pool)
                .await?;
        let sync = Arc::new(Self {
            process: Uuid::new_v4(),
            pool,
            providers,
            applied: tokio::sync::Mutex::new(applied),
        });
        let weak = Arc::downgrade(&sync);
        crate::rt::supervise("breaker-sync", move || {
            let weak = weak.clone();
            async move {
                let mut every = tokio::time::interval(BEAT);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(sync) = weak.upgrade() else { return };
                    if let Err(e) = sync.beat().await {
                        tracing::debug!(error = %e, "circuit breaker beat failed");
                    }
                }
            }
        });
        Ok(sync)
    }

    /// Applies resets not applied yet, then writes this process's breakers.
    pub async fn beat(&self) -> anyhow::Result<()> {
        {
            let mut applied = self.applied.lock().await;
            let resets: Vec<(i64, String)> = sqlx::query_as(
                "SELECT id, name FROM circuit_breaker_resets WHERE id > $1 ORDER BY id LIMIT 1000",
            )
            .bind(*applied)
            .fetch_all(&self.pool)
            .await?;
            for (id, name) in resets {
                if let Some(p) = self.providers.by_name(&name) {
                    p.reset_breaker();
                }
                *applied = id;
            }
        }
        for s in self.providers.breaker_states() {
            sqlx::query(
                "INSERT INTO circuit_breaker_state (name, process, state, failure_count, \
                 opened_at, next_probe_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, now()) \
                 ON CONFLICT (name, process) DO UPDATE SET state = $3, failure_count = $4, \
                 opened_at = $5, next_probe_at = $6, updated_at = now()",
            )
            .bind(&s.provider)
            .bind(self.process)
            .bind(state_name(s.state))
            .bind(s.consecutive_failures as i32)
            .bind(s.opened_at)
            .bind(s.next_probe_at)
            .execute(&self.pool)
            .await?;
        }
        sqlx::query(
            "DELETE FROM circuit_breaker_state WHERE updated_at < now() - make_interval(secs => $1)",
        )
        .bind((BEAT * 30).as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a reset of breaker `name` for every process and applies it here now.
    /// `false` when no provider of this deployment has that name.
    pub async fn reset(&self, name: &str, by: Uuid, org: Option<Uuid>) -> anyhow::Result<bool> {
        let Some(provider) = self.providers.by_name(name) else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO circuit_breaker_resets (name, requested_by, organization_id) \
             VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(by)
        .bind(org)
        .execute(&self.pool)
        .await?;
        provider.reset_breaker();
        self.beat().await?;
        Ok(true)
    }
}

fn state_name(s: crate::providers::BreakerState) -> &'static str {
    match s {
        crate::providers::BreakerState::Closed => "closed",
        crate::providers::BreakerState::Open => "open",
        crate::providers::BreakerState::HalfOpen => "half_open",
    }
}

/// One process's view of one breaker.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProcessBreaker {
    pub process: Uuid,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub failure_count: i32,
    pub opened_at: Option<DateTime<Utc>>,
    pub next_probe_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A breaker across the live processes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BreakerView {
    /// The provider it guards.
    pub name: String,
    /// The worst state among the processes: `open`, then `half_open`, then `closed`.
    pub state: String,
    /// The largest count of consecutive failures among the processes.
    pub failure_count: i32,
    /// The earliest moment an open breaker lets a probe call through.
    pub next_probe_at: Option<DateTime<Utc>>,
    pub processes: Vec<ProcessBreaker>,
}

fn rank(state: &str) -> u8 {
    match state {
        "open" => 2,
        "half_open" => 1,
        _ => 0,
    }
}

/// Every breaker of the live processes, by name.
pub async fn views(pool: &PgPool) -> anyhow::Result<Vec<BreakerView>> {
    let rows: Vec<(String, ProcessBreaker)> = sqlx::query_as::<
        _,
        (
            String,
            Uuid,
            String,
            i32,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
        ),
    >(
        "SELECT name, process, state, failure_count, opened_at, next_probe_at, updated_at \
         FROM circuit_breaker_state \
         WHERE updated_at >= now() - make_interval(secs => $1) ORDER BY name, process",
    )
    .bind((BEAT * 3).as_secs_f64())
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(
        |(name, process, state, failure_count, opened_at, next_probe_at, updated_at)| {
            (
                name,
                ProcessBreaker {
                    process,
                    state,
                    failure_count,
                    opened_at,
                    next_probe_at,
                    updated_at,
                },
            )
        },
    )
    .collect();
    let mut out: Vec<BreakerView> = Vec::new();
    for (name, p) in rows {
        if out.last().is_none_or(|v| v.name != name) {
            out.push(BreakerView {
                name: name.clone(),
                state: "closed".into(),
                failure_count: 0,
                next_probe_at: None,
                processes: Vec::new(),
            });
        }
        let view = out.last_mut().expect("pushed above");
        if rank(&p.state) > rank(&view.state) {
            view.state = p.state.clone();
        }
        view.failure_count = view.failure_count.max(p.failure_count);
        if p.state == "open" {
            view.next_probe_at = match (view.next_probe_at, p.next_probe_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        view.processes.push(p);
    }
    Ok(out)
}
