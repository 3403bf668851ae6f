//! The worker of a ToolboxAI agent execution (a swarm task of type `agent`).
//!
//! One attempt asks the task's model through the provider layer (its guard adds timeouts,
//! retries before the first token and the circuit breaker) with the registry's prompt, reads
//! the answer as JSON and checks it against the task's output schema. Every provider call
//! is reported ([`SwarmCommand::RecordCall`]) with what it cost and, when its output was
//! refused, why: those reports are what `generation-progress` and the token metrics come
//! from. A refused output is asked for once more with the refusal in the prompt; a second
//! refusal fails the execution.
//!
//! The limits are the scheduler's (`MAX_CONCURRENT_GENERATIONS`,
//! `MAX_CONTENT_GENERATION_TIME`) and the task's own `time_limit_secs`, whichever ends
//! first. A cancel, a lost lead or a fenced attempt stops the worker within
//! [`CANCEL_POLL`] without recording anything more.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use universal_events::swarm::{TaskConfig, TaskResult};

use super::{Finish, Run};
use crate::actors::swarm_task::{SwarmCommand, SwarmTask, MAX_AGENT_CALLS};
use crate::actors::CommandError;
use crate::agents::{self, TaskSpec};
use crate::providers::{ChatMessage, ChatRequest, ModelProvider, ProviderError, ReplyEvent, Role};

/// How often a running call looks at its cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(200);
/// Longest answer kept (and shown back to the model on its retry).
const MAX_ANSWER: usize = 64 * 1024;

/// Runs one attempt of an agent execution.
pub(crate) async fn run(run: &Run, task: &SwarmTask) -> Result<TaskResult, Finish> {
    let Some(TaskConfig::Agent(config)) = &task.config else {
        return Err(Finish::Fail("not an agent execution".into()));
    };
    let spec = agents::task(&config.agent_type, &config.task_type)
        .map_err(|e| Finish::Fail(format!("{}: {e}", config.agent_type)))?;
    let started = Instant::now();
    let own_limit = Duration::from_secs(spec.time_limit_secs.max(1));
    let deadline = run.deadline.min(started + own_limit);
    let provider = run
        .state
        .providers
        .for_model(&config.model)
        .ok_or_else(|| Finish::Fail(format!("no provider serves the model {}", config.model)))?;
    let mut messages = vec![
        ChatMessage::new(Role::System, agents::system_prompt(spec)),
        ChatMessage::new(Role::User, agents::render(spec, &config.task_data)),
    ];
    let mut last_error = String::new();
    for call in 1..=MAX_AGENT_CALLS {
        let request = ChatRequest {
            model: config.model.clone(),
            messages: messages.clone(),
            temperature: Some(spec.temperature),
            max_tokens: Some(spec.max_tokens),
        };
        let begun = Instant::now();
        let answer = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), ask(provider.as_ref(), request)) => r,
            _ = stopped(run) => return Err(Finish::Stopped),
        };
        let (text, prompt_tokens, completion_tokens) = match answer {
            Err(_) => {
                let limit = own_limit.min(Duration::from_secs(
                    run.state.config.max_content_generation_time.max(1),
                ));
                return Err(Finish::Fail(format!(
                    "the execution exceeded its time limit of {} s",
                    limit.as_secs()
                )));
            }
            Ok(Err(e)) => return Err(Finish::Fail(format!("the model call failed: {e}"))),
            Ok(Ok(reply)) => reply,
        };
        let verdict = agents::parse_output(spec, &text);
        let report = SwarmCommand::RecordCall {
            attempt: run.attempt,
            call,
            model: config.model.clone(),
            prompt_tokens,
            completion_tokens,
            duration_ms: begun.elapsed().as_millis() as u64,
            error: verdict.as_ref().err().cloned(),
            at: Utc::now(),
        };
        match run.report(report).await {
            Ok(()) => {}
            Err(CommandError::Domain(_)) => return Err(Finish::Stopped),
            Err(e) => tracing::warn!(task = %run.id, error = %e, "agent call not recorded"),
        }
        match verdict {
            Ok(output) => {
                // The decider fills in the recorded calls and tokens.
                return Ok(TaskResult::Agent {
                    output,
                    model: config.model.clone(),
                    calls: call,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                });
            }
            Err(error) => {
                tracing::info!(task = %run.id, call, %error, "agent output refused");
                messages.push(ChatMessage::new(Role::Assistant, text));
                messages.push(ChatMessage::new(Role::User, agents::retry_prompt(&error)));
                last_error = error;
            }
        }
    }
    Err(Finish::Fail(refused(spec, &last_error)))
}

fn refused(spec: &TaskSpec, error: &str) -> String {
    format!(
        "the output of {} failed its schema {MAX_AGENT_CALLS} times; last: {error}",
        spec.name
    )
}

/// Resolves when the attempt should stop (cancelled here, or no longer current in the log).
async fn stopped(run: &Run) {
    let mut ticks = 0u32;
    loop {
        tokio::time::sleep(CANCEL_POLL).await;
        if run.cancel.load(Ordering::Relaxed) {
            return;
        }
        ticks += 1;
        if ticks % 5 == 0 && !run.still_current().await {
            return;
        }
    }
}

/// One model call: the whole answer (at most [`MAX_ANSWER`] bytes) and its token counts.
async fn ask(
    provider: &dyn ModelProvider,
    request: ChatRequest,
) -> Result<(String, u64, u64), ProviderError> {
    let mut stream = provider.stream(request).await?;
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item? {
            ReplyEvent::Delta(d) => {
                if text.len() + d.len() > MAX_ANSWER {
                    return Err(ProviderError::Protocol(format!(
                        "the answer exceeded {MAX_ANSWER} bytes"
                    )));
                }
                text.push_str(&d);
            }
            ReplyEvent::Completed(c) => {
                return Ok((
                    text,
                    u64::from(c.usage.prompt_tokens),
                    u64::from(c.usage.completion_tokens),
                ))
            }
        }
    }
    Err(ProviderError::Protocol(
        "the stream ended before the reply was complete".into(),
    ))
}
