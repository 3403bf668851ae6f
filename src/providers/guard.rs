//! Wraps one provider in what every outside call needs: a first-token and a total deadline
//! (the connect timeout lives in the provider's HTTP client), retries with exponential
//! backoff on 429, 5xx and failed connections **before the first token only**, and a
//! circuit breaker.
//!
//! The breaker is failsafe's `StateMachine` with a consecutive-failures policy and a
//! constant open period. failsafe rather than recloser because recloser keeps its state
//! private (nothing to show in a snapshot or a gauge), while failsafe reports every
//! transition through its `Instrument` hooks. Neither limits calls in half-open (both let
//! every call through until the outcome is known), so this module adds one flag: while
//! half-open, one probe call is let through and the others fail at once with
//! `Unavailable`.
//!
//! A call counts once towards the breaker, after its retries: success when the reply
//! completes (or the caller drops it after a first token), failure when it ends in an error
//! that [`ProviderError::counts_against_provider`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::StateMachine;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::{sleep, timeout_at, Instant};

use super::{ChatRequest, ModelProvider, ProviderError, ReplyEvent, ReplyStream, TimeoutKind};

/// Timeouts, retries and breaker settings of one wrapped provider.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    /// From sending the request to the first text delta (or the completion).
    pub first_token_timeout: Duration,
    /// The whole call, retries included, up to the completion.
    pub total_timeout: Duration,
    /// Attempts after the first one, before any token only.
    pub max_retries: u32,
    /// First backoff; doubles each retry up to `retry_max`. A `Retry-After` is honoured up to
    /// `retry_max` too.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Consecutive failed calls that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe call is let through.
    pub breaker_open_for: Duration,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        Self {
            first_token_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            max_retries: 2,
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(4),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, as the `ub_provider_breaker_state` gauge shows it (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// A point-in-time view of one provider's breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    pub provider: String,
    pub state: BreakerState,
    /// Failed calls since the last success.
    pub consecutive_failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    /// When open: the moment from which the next call is let through as a probe. The
    /// breaker moves to half-open lazily, on that call, so a past time here means "the next
    /// call probes".
    pub next_probe_at: Option<DateTime<Utc>>,
    /// When open: how long until then (zero once it has passed).
    #[serde(skip)]
    pub next_probe_in: Option<Duration>,
    /// A half-open probe call is under way (others fail at once meanwhile).
    pub probe_in_flight: bool,
}

#[derive(Debug)]
struct Mirror {
    state: BreakerState,
    opened: Option<(Instant, DateTime<Utc>)>,
    consecutive_failures: u32,
}

/// Receives failsafe's transitions; keeps the readable copy and the gauge current.
#[derive(Clone)]
struct Observer {
    provider: Arc<str>,
    mirror: Arc<Mutex<Mirror>>,
}

impl Observer {
    fn set(&self, state: BreakerState) {
        let mut m = self.mirror.lock().expect("breaker mirror poisoned");
        m.state = state;
        match state {
            BreakerState::Open => m.opened = Some((Instant::now(), Utc::now())),
            BreakerState::Closed => m.opened = None,
            BreakerState::HalfOpen => {}
        }
        drop(m);
        metrics::gauge!("ub_provider_breaker_state", "provider" => self.provider.to_string())
            .set(state.gauge_value());
        tracing::info!(provider = %self.provider, state = ?state, "provider breaker");
    }
}

impl failsafe::Instrument for Observer {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.set(BreakerState::Open);
    }
    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen);
    }
    fn on_closed(&self) {
        self.set(BreakerState::Closed);
    }
}

struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Constant>, Observer>,
    observer: Observer,
    open_for: Duration,
    probe_in_flight: AtomicBool,
}

impl Breaker {
    fn new(provider: &str, failures: u32, open_for: Duration) -> Self {
        let observer = Observer {
            provider: provider.into(),
            mirror: Arc::new(Mutex::new(Mirror {
                state: BreakerState::Closed,
                opened: None,
                consecutive_failures: 0,
            })),
        };
        let policy = consecutive_failures(failures.max(1), backoff::constant(open_for));
        Self {
            machine: StateMachine::new(policy, observer.clone()),
            observer,
            open_for,
            probe_in_flight: AtomicBool::new(false),
        }
    }

    fn acquire(self: &Arc<Self>) -> Option<Permit> {
        if !self.machine.is_call_permitted() {
            return None;
        }
        let half_open = self
            .observer
            .mirror
            .lock()
            .expect("breaker mirror poisoned")
            .state
            == BreakerState::HalfOpen;
        if half_open && self.probe_in_flight.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Permit {
            breaker: self.clone(),
            probe: half_open,
            resolved: false,
            saw_token: false,
        })
    }

    fn record(&self, success: bool) {
        {
            let mut m = self
                .observer
                .mirror
                .lock()
                .expect("breaker mirror poisoned");
            m.consecutive_failures = if success {
                0
            } else {
                m.consecutive_failures.saturating_add(1)
            };
            metrics::gauge!(
                "ub_provider_breaker_consecutive_failures",
                "provider" => self.observer.provider.to_string()
            )
            .set(m.consecutive_failures as f64);
        }
        if success {
            self.machine.on_success();
        } else {
            self.machine.on_error();
        }
    }

    /// Closes the breaker and forgets its failures (an operator's reset).
    fn reset(&self) {
        self.machine.reset();
        let mut m = self
            .observer
            .mirror
            .lock()
            .expect("breaker mirror poisoned");
        m.consecutive_failures = 0;
        m.state = BreakerState::Closed;
        m.opened = None;
        drop(m);
        metrics::gauge!(
            "ub_provider_breaker_consecutive_failures",
            "provider" => self.observer.provider.to_string()
        )
        .set(0.0);
    }

    fn snapshot(&self) -> BreakerSnapshot {
        let m = self
            .observer
            .mirror
            .lock()
            .expect("breaker mirror poisoned");
        let (next_probe_at, next_probe_in) = match (m.state, m.opened) {
            (BreakerState::Open, Some((at, wall))) => {
                let open_for =
                    chrono::Duration::from_std(self.open_for).unwrap_or(chrono::Duration::MAX);
                (
                    Some(wall + open_for),
                    Some((at + self.open_for).saturating_duration_since(Instant::now())),
                )
            }
            _ => (None, None),
        };
        BreakerSnapshot {
            provider: self.observer.provider.to_string(),
            state: m.state,
            consecutive_failures: m.consecutive_failures,
            opened_at: m.opened.map(|(_, wall)| wall),
            next_probe_at,
            next_probe_in,
            probe_in_flight: self.probe_in_flight.load(Ordering::Acquire),
        }
    }
}

/// The right to make one call; reports its outcome to the breaker exactly once.
struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    resolved: bool,
    saw_token: bool,
}

impl Permit {
    fn resolve(&mut self, outcome: Result<(), &ProviderError>) {
        if self.resolved {
            return;
        }
        self.resolved = true;
        match outcome {
            Ok(()) => self.breaker.record(true),
            Err(e) if e.counts_against_provider() => self.breaker.record(false),
            // The caller's doing: a provider that answered was healthy.
            Err(_) if self.saw_token => self.breaker.record(true),
            Err(_) => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Dropped by the caller (a cancelled reply): only a first token says anything.
        if !self.resolved && self.saw_token {
            self.resolve(Ok(()));
        }
        if self.probe {
            self.breaker.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

/// A provider wrapped in timeouts, retries and a breaker; itself a [`ModelProvider`].
pub struct Guarded {
    inner: Arc<dyn ModelProvider>,
    policy: GuardPolicy,
    breaker: Arc<Breaker>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn ModelProvider>, policy: GuardPolicy) -> Self {
        let breaker = Arc::new(Breaker::new(
            inner.name(),
            policy.breaker_failures,
            policy.breaker_open_for,
        ));
        Self {
            inner,
            policy,
            breaker,
        }
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerSnapshot {
        self.breaker.snapshot()
    }

    /// Closes the breaker now, as if the provider had just answered (see
    /// `agents::breakers` for how a reset reaches every process).
    pub fn reset_breaker(&self) {
        self.breaker.reset();
        tracing::info!(provider = %self.inner.name(), "provider breaker reset");
    }

    pub fn policy(&self) -> &GuardPolicy {
        &self.policy
    }

    fn count_failure(&self, err: &ProviderError) {
        metrics::counter!(
            "ub_provider_failures_total",
            "provider" => self.inner.name().to_owned(),
            "class" => err.class()
        )
        .increment(1);
    }

    /// The wait before retry number `retry` (0-based). Written out rather than taken from a
    /// retry crate: the loop in `stream` must stop retrying the moment a first token has
    /// arrived and must keep one breaker permit across attempts, which the retry wrappers
    /// (backon, tokio-retry) cannot express; what remains is this one line of doubling.
    fn backoff(&self, retry: u32, err: &ProviderError) -> Duration {
        let exponential = self
            .policy
            .retry_base
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.policy.retry_max);
        match err {
            ProviderError::RateLimited {
                retry_after: Some(wait),
            } => (*wait).min(self.policy.retry_max).max(exponential),
            _ => exponential,
        }
    }

    /// One attempt: open the stream and wait for its first event.
    async fn attempt(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<(ReplyEvent, ReplyStream), ProviderError> {
        let first_token_at = Instant::now() + self.policy.first_token_timeout;
        let until = first_token_at.min(deadline);
        let kind = if first_token_at <= deadline {
            TimeoutKind::FirstToken
        } else {
            TimeoutKind::Total
        };
        let opening = async {
            let mut stream = self.inner.stream(request.clone()).await?;
            match stream.next().await {
                Some(Ok(event)) => Ok((event, stream)),
                Some(Err(e)) => Err(e),
                None => Err(ProviderError::Protocol(
                    "the stream ended before anything was sent".to_owned(),
                )),
            }
        };
        timeout_at(until, opening)
            .await
            .unwrap_or(Err(ProviderError::Timeout(kind)))
    }
}

struct Live {
    first: Option<ReplyEvent>,
    rest: ReplyStream,
    permit: Permit,
    deadline: Instant,
    provider: String,
    done: bool,
}

#[async_trait::async_trait]
impl ModelProvider for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    async fn stream(&self, request: ChatRequest) -> Result<ReplyStream, ProviderError> {
        let Some(mut permit) = self.breaker.acquire() else {
            self.count_failure(&ProviderError::Unavailable);
            return Err(ProviderError::Unavailable);
        };
        let deadline = Instant::now() + self.policy.total_timeout;
        let mut retry = 0;
        let (first, rest) = loop {
            match self.attempt(&request, deadline).await {
                Ok(opened) => break opened,
                Err(err) => {
                    self.count_failure(&err);
                    let wait = self.backoff(retry, &err);
                    if err.is_retryable()
                        && retry < self.policy.max_retries
                        && Instant::now() + wait < deadline
                    {
                        tracing::warn!(
                            provider = self.name(),
                            error = %err,
                            retry,
                            ?wait,
                            "provider call retried"
                        );
                        sleep(wait).await;
                        retry += 1;
                        continue;
                    }
                    permit.resolve(Err(&err));
                    return Err(err);
                }
            }
        };
        permit.saw_token = true;
        let live = Live {
            first: Some(first),
            rest,
            permit,
            deadline,
            provider: self.name().to_owned(),
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            live,
            |mut live| async move {
                if live.done {
                    return None;
                }
                let item = match live.first.take() {
                    Some(event) => Ok(event),
                    None => match timeout_at(live.deadline, live.rest.next()).await {
                        Err(_) => Err(ProviderError::Timeout(TimeoutKind::Total)),
                        Ok(None) => Err(ProviderError::Protocol(
                            "the stream ended before the reply was complete".to_owned(),
                        )),
                        Ok(Some(item)) => item,
                    },
                };
                match &item {
                    Ok(ReplyEvent::Delta(_)) => {}
                    Ok(ReplyEvent::Completed(_)) => {
                        live.done = true;
                        live.permit.resolve(Ok(()));
                    }
                    Err(err) => {
                        live.done = true;
                        metrics::counter!(
                            "ub_provider_failures_total",
                            "provider" => live.provider.clone(),
                            "class" => err.class()
                        )
                        .increment(1);
                        live.permit.resolve(Err(err));
                    }
                }
                Some((item, live))
            },
        )))
    }
}
