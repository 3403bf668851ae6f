//! A Velocity batch: its subtasks, at most `concurrency` at once, each try under a timeout,
//! failed tries retried with doubling backoff.
//!
//! Outcomes flow through a bounded channel to the batch's reporter, which records them in
//! chunks (every [`super::REPORT_EVERY`], or sooner when [`CHUNK`] have gathered): the log
//! grows with the number of subtasks, never with the number of ticks. A resumed attempt
//! skips the subtasks recorded before. Cancelling the batch (or losing the attempt) stops
//! the subtasks that run: their tries are dropped at the next await, and a running
//! optimization stops after its current iteration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use universal_events::swarm::{
    BatchMode, SubtaskOutcome, SubtaskSpec, SubtaskStatus, TaskResult, VelocityConfig,
};

use super::admission::{self, Lease};
use super::{Finish, Run};
use crate::actors::swarm_task::{storable, SwarmCommand, SwarmTask, MAX_CHUNK, MAX_ERROR};
use crate::providers::{ChatMessage, ChatRequest, ReplyEvent, Role};
use crate::swarm::objective::Objective;
use crate::swarm::pso::{self, Control};

/// Outcomes recorded in one event at most.
pub const CHUNK: usize = 500;
/// Longest text kept of a subtask's output.
pub const MAX_OUTPUT: usize = 4_000;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The subtask at `index` of the batch, with repetitions counted.
fn subtasks(config: &VelocityConfig) -> impl Iterator<Item = (u32, &SubtaskSpec)> {
    config
        .subtasks
        .iter()
        .flat_map(|spec| std::iter::repeat_n(spec, spec.count() as usize))
        .enumerate()
        .map(|(i, spec)| (i as u32, spec))
}

fn clean(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .take(max)
        .collect()
}

/// What the subtasks share.
struct Shared {
    state: actix_web::web::Data<crate::state::AppState>,
    config: VelocityConfig,
    /// One client per origin called, pinned to the address checked when it was first
    /// called (see `crate::outbound`).
    clients: Mutex<HashMap<String, reqwest::Client>>,
    stop: watch::Receiver<bool>,
}

pub(crate) async fn run(run: &Run, task: &SwarmTask) -> Result<TaskResult, Finish> {
    let started = Instant::now();
    let Some(config) = task.batch().cloned() else {
        return Err(Finish::Fail("not a batch".into()));
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        state: run.state.clone(),
        config,
        clients: Mutex::new(HashMap::new()),
        stop: stop_rx,
    });
    let pending: Vec<u32> = subtasks(&shared.config)
        .map(|(i, _)| i)
        .filter(|i| !task.recorded.contains(*i))
        .collect();
    let (tx, mut rx) = mpsc::channel::<SubtaskOutcome>(1024);
    let permits = Arc::new(Semaphore::new(shared.config.concurrency as usize));
    let producer = {
        let shared = shared.clone();
        actix_web::rt::spawn(async move {
            for index in pending {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if *shared.stop.borrow() {
                    break;
                }
                let shared = shared.clone();
                let tx = tx.clone();
                actix_web::rt::spawn(async move {
                    if let Some(outcome) = subtask(&shared, index).await {
                        let _ = tx.send(outcome).await;
                    }
                    drop(permit);
                });
            }
        })
    };

    let mut buffer: Vec<SubtaskOutcome> = Vec::new();
    let mut first_failure: Option<String> = None;
    let mut tick = tokio::time::interval(super::REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = 0u32;
    let mut late = false;
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some(outcome) = next else { break };
                if outcome.status == SubtaskStatus::Failed
                    && shared.config.mode == BatchMode::FailFast
                    && first_failure.is_none()
                {
                    first_failure = Some(format!(
                        "subtask {} failed: {}",
                        outcome.index,
                        outcome.error.as_deref().unwrap_or("unknown error")
                    ));
                    let _ = stop_tx.send(true);
                }
                buffer.push(outcome);
                if buffer.len() >= CHUNK {
                    flush(run, &mut buffer).await;
                }
            }
            _ = tick.tick() => {
                if !buffer.is_empty() {
                    idle = 0;
                    flush(run, &mut buffer).await;
                } else {
                    idle += 1;
                    if idle % 4 == 0 {
                        run.still_current().await;
                    }
                }
                if Instant::now() >= run.deadline && !late {
                    late = true;
                    let _ = stop_tx.send(true);
                }
            }
        }
        if run.cancel.load(Ordering::Relaxed) && !*stop_tx.borrow() {
            let _ = stop_tx.send(true);
        }
    }
    let _ = producer.await;
    if run.cancel.load(Ordering::Relaxed) {
        return Err(Finish::Stopped);
    }
    flush(run, &mut buffer).await;
    if run.cancel.load(Ordering::Relaxed) {
        return Err(Finish::Stopped);
    }
    if let Some(failure) = first_failure {
        return Err(Finish::Fail(failure));
    }
    if late {
        return Err(Finish::Fail(run.time_limit()));
    }
    Ok(TaskResult::Batch {
        // The decider fills the counts in from what was recorded.
        total: 0,
        done: 0,
        failed: 0,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Records the buffered outcomes, in chunks the decider accepts. A refusal (the attempt is
/// over) sets the run's cancel flag through `report`.
async fn flush(run: &Run, buffer: &mut Vec<SubtaskOutcome>) {
    while !buffer.is_empty() {
        let take = buffer.len().min(MAX_CHUNK);
        let chunk: Vec<SubtaskOutcome> = buffer.drain(..take).collect();
        let cmd = SwarmCommand::RecordSubtasks {
            attempt: run.attempt,
            outcomes: chunk,
            at: Utc::now(),
        };
        if let Err(e) = run.report(cmd).await {
            tracing::warn!(task = %run.id, error = %e, "subtask outcomes not recorded");
            buffer.clear();
        }
    }
}

/// The spec of subtask `index`, walking the specs rather than every repetition.
fn spec_at(config: &VelocityConfig, index: u32) -> Option<&SubtaskSpec> {
    let mut left = index;
    for spec in &config.subtasks {
        if left < spec.count() {
            return Some(spec);
        }
        left -= spec.count();
    }
    None
}

/// Runs subtask `index` with its retries; `None` when the batch stopped first.
async fn subtask(shared: &Shared, index: u32) -> Option<SubtaskOutcome> {
    let spec = spec_at(&shared.config, index)?.clone();
    // Its share of the process's worker budget, before its first try: a batch runs as many
    // subtasks at once as the budget holds, whatever its `concurrency`. The time spent
    // waiting here is not part of a try's timeout (the batch's own time limit still runs).
    let (bytes, cpu) = admission::subtask_cost(&spec);
    let lease = {
        let stop = shared.stop.clone();
        let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let budget = shared.state.swarm.budget();
        Arc::new(
            budget
                .lease(bytes, cpu, never, move || *stop.borrow())
                .await?,
        )
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(shared.config.timeout_ms);
    let mut stop = shared.stop.clone();
    let mut last_error = String::new();
    let tries = shared.config.retries + 1;
    for attempt in 1..=tries {
        if *stop.borrow() {
            return None;
        }
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, once(shared, &spec, timeout, &lease)) => r,
            _ = stop.wait_for(|s| *s) => return None,
        };
        match result {
            Ok(Ok(output)) => {
                return Some(SubtaskOutcome {
                    index,
                    status: SubtaskStatus::Done,
                    attempts: attempt,
                    output: Some(output),
                    error: None,
                    duration_ms: started.elapsed().as_millis() as u64,
                })
            }
            Ok(Err(e)) => last_error = clean(&e, MAX_ERROR),
            Err(_) => last_error = format!("timed out after {} ms", timeout.as_millis()),
        }
        if attempt < tries {
            let backoff = Duration::from_millis(shared.config.backoff_ms)
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }
    Some(SubtaskOutcome {
        index,
        status: SubtaskStatus::Failed,
        attempts: tries,
        output: None,
        error: Some(last_error),
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// The checked URL and the client of its origin: the allow-list is checked on every call,
/// the host resolved and its addresses checked on the first call to the origin, and every
/// call goes to the address checked then (a changed DNS answer changes nothing).
async fn client_for(
    shared: &Shared,
    url: &str,
    timeout: Duration,
) -> Result<(reqwest::Url, reqwest::Client), String> {
    let outbound = &shared.state.outbound;
    let refused = |r: crate::outbound::Refusal| format!("{url} {r}");
    let checked = outbound.check(url).map_err(refused)?;
    let origin = checked.origin().ascii_serialization();
    let cached = {
        let clients = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get(&origin).cloned()
    };
    if let Some(client) = cached {
        return Ok((checked, client));
    }
    let target = outbound.resolve(url).await.map_err(refused)?;
    let client = crate::outbound::pinned_client(&target, timeout)
        .map_err(|e| format!("no HTTP client: {e}"))?;
    let mut clients = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
    clients.insert(origin, client.clone());
    Ok((target.url, client))
}

/// One try of a subtask.
async fn once(
    shared: &Shared,
    spec: &SubtaskSpec,
    timeout: Duration,
    lease: &Arc<Lease>,
) -> Result<Value, String> {
    match spec {
        SubtaskSpec::Prompt { prompt, model, .. } => {
            let providers = &shared.state.providers;
            let model = model
                .clone()
                .or_else(|| providers.default_model())
                .ok_or("no AI provider is configured")?;
            let provider = providers
                .for_model(&model)
                .ok_or_else(|| format!("no provider serves the model `{model}`"))?;
            let request = ChatRequest {
                model: model.clone(),
                messages: vec![ChatMessage::new(Role::User, prompt.clone())],
                temperature: None,
                max_tokens: None,
            };
            let mut stream = crate::providers::ModelProvider::stream(provider.as_ref(), request)
                .await
                .map_err(|e| e.to_string())?;
            let mut text = String::new();
            while let Some(item) = stream.next().await {
                match item.map_err(|e| e.to_string())? {
                    ReplyEvent::Delta(d) => {
                        if text.chars().count() < MAX_OUTPUT {
                            text.push_str(&d);
                        }
                    }
                    ReplyEvent::Completed(c) => {
                        return Ok(json!({
                            "text": clean(&text, MAX_OUTPUT),
                            "model": model,
                            "finish_reason": clean(&c.finish_reason, 100),
                        }))
                    }
                }
            }
            Err("the provider's reply ended without completing".into())
        }
        SubtaskSpec::Optimize {
            objective, config, ..
        } => {
            let objective = Objective::parse(objective, config.dimensions)?;
            let config = config.clone();
            let cancel = Arc::new(AtomicBool::new(false));
            let control = Control {
                cancel: cancel.clone(),
                deadline: Some(Instant::now() + timeout),
                progress: None,
            };
            // A dropped try (batch stopped) must stop its thread too.
            struct CancelOnDrop(Arc<AtomicBool>);
            impl Drop for CancelOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _guard = CancelOnDrop(cancel);
            // The thread holds the lease too: the memory is the budget's again only when
            // the run has really ended, not when a dropped try stops waiting for it.
            let lease = lease.clone();
            let out = tokio::task::spawn_blocking(move || {
                let _lease = lease;
                pso::optimize(&objective, &config, control)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            let position: Vec<f64> = out.best_position.into_iter().map(storable).collect();
            Ok(json!({
                "best_cost": storable(out.best_cost),
                "best_position": position,
                "iterations": out.iterations,
                "evaluations": out.evaluations,
            }))
        }
        SubtaskSpec::Http {
            method, url, body, ..
        } => {
            let (url, client) = client_for(shared, url, timeout).await?;
            let method =
                reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
            let mut request = client.request(method, url);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Keep the head of the body only: a large answer must not fill the memory.
            let mut body = Vec::new();
            let mut chunks = response.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                body.extend_from_slice(
                    &chunk[..chunk
                        .len()
                        .min(4 * MAX_OUTPUT - body.len().min(4 * MAX_OUTPUT))],
                );
                if body.len() >= 4 * MAX_OUTPUT {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&body);
            if !status.is_success() {
                return Err(format!("HTTP {}", status.as_u16()));
            }
            Ok(json!({ "status": status.as_u16(), "body": clean(&text, MAX_OUTPUT) }))
        }
    }
}
