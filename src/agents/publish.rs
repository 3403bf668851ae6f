//! Agent executions on Pusher: `content-generation` and the organization's private channel.
//!
//! **From the log, in every process.** Each process follows the swarm task events of the
//! log (through its live feed) and hands the agent ones to *its own* Pusher subscribers
//! ([`Hub::publish_local`]). Whichever process ran the execution, every process's sockets
//! see every event once; nothing depends on the worker being alive to publish, and a
//! message is never multiplied by the number of processes (as re-publishing through
//! `NOTIFY` from each of them would).
//!
//! **What goes where.** `content-generation` is a public channel (the seed's dashboard
//! subscribes to it without auth), so it carries only ids, the agent and task type and the
//! status: `generation-started`, `generation-progress`, `content-generated`,
//! `generation-failed`. The organization's private channel (`private-org-{id}`) carries the
//! same four events with the details (the refusal of a refused output, the error, the
//! output itself when it fits a Pusher message), plus `agent-status-update` on each change
//! of an execution's status.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde_json::{json, Value};
use universal_events::swarm::{SwarmTaskEvent, TaskConfig, TaskResult, SWARM_TASK_EVENT_TYPES};
use universal_events::EventFamily;
use uuid::Uuid;

use crate::actors::swarm_task::MAX_AGENT_CALLS;
use crate::gateways::pusher::{org_channel, toolbox, Hub, MAX_DATA};
use crate::state::AppState;
use crate::store::{Filter, RecordedEvent, Subscription};

/// Most tasks whose kind is remembered; the memory is cleared beyond.
const MAX_KNOWN: usize = 10_000;

/// What the publisher needs to know of a task.
#[derive(Clone)]
struct Known {
    org: Uuid,
    agent_type: String,
    task_type: String,
}

/// Follows the log from its current head and publishes agent events to this process's
/// Pusher subscribers, until the state is dropped.
pub fn start(state: web::Data<AppState>) {
    if !state.pusher.settings.enabled {
        return;
    }
    let after = *state.store.head_watch().borrow();
    // Named by type as well, so that the live feed reads only these (see `LiveFeed`).
    let filter = Filter {
        categories: Some(vec!["swarm_task".into()]),
        event_types: Some(SWARM_TASK_EVENT_TYPES.map(String::from).to_vec()),
        ..Filter::default()
    };
    // A restarted publisher goes on after the last event it handled.
    let done = Arc::new(std::sync::atomic::AtomicI64::new(after));
    let known: Arc<DashMap<Uuid, Option<Known>>> = Arc::default();
    let weak = Arc::downgrade(&state.clone().into_inner());
    let (store, live) = (state.store.clone(), state.live.clone());
    crate::rt::supervise_local("agent-publisher", move || {
        let from = done.load(std::sync::atomic::Ordering::Relaxed);
        let mut sub =
            Subscription::new(store.clone(), from, filter.clone()).with_live_feed(live.clone());
        let (weak, known, done) = (weak.clone(), known.clone(), done.clone());
        async move {
            loop {
                let next = sub.next().await;
                let Some(state) = weak.upgrade() else { return };
                match next {
                    Ok(e) => {
                        done.store(e.position, std::sync::atomic::Ordering::Relaxed);
                        if let Err(err) = on_event(&state, &known, &e).await {
                            tracing::debug!(error = %err, position = e.position, "agent event not published");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "agent publisher read failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    });
}

async fn on_event(
    state: &AppState,
    known: &DashMap<Uuid, Option<Known>>,
    e: &RecordedEvent,
) -> anyhow::Result<()> {
    let Some(id) = e
        .stream_id
        .strip_prefix("swarm_task-")
        .and_then(|s| s.parse::<Uuid>().ok())
    else {
        return Ok(());
    };
    let event = SwarmTaskEvent::decode_ref(&e.event_type, e.schema_version, &e.data)?;
    if known.len() > MAX_KNOWN {
        known.clear();
    }
    if let SwarmTaskEvent::SwarmTaskCreated(c) = &event {
        let info = match &c.config {
            TaskConfig::Agent(a) => Some(Known {
                org: c.organization_id,
                agent_type: a.agent_type.clone(),
                task_type: a.task_type.clone(),
            }),
            _ => None,
        };
        known.insert(id, info);
        return Ok(());
    }
    let info = match known.get(&id).map(|k| k.clone()) {
        Some(info) => info,
        None => {
            // Created before this process started following: ask the task itself.
            let (_, task) = state.registries.swarm_tasks.inspect(id).await?;
            let info = match (&task.config, task.organization_id) {
                (Some(TaskConfig::Agent(a)), Some(org)) => Some(Known {
                    org,
                    agent_type: a.agent_type.clone(),
                    task_type: a.task_type.clone(),
                }),
                _ => None,
            };
            known.insert(id, info.clone());
            info
        }
    };
    let Some(info) = info else { return Ok(()) };
    let messages = messages(id, &info, &event);
    let private = org_channel(info.org);
    for m in messages {
        if let Some(public) = &m.public {
            publish(&state.pusher, toolbox::CONTENT_GENERATION, m.event, public);
        }
        publish(&state.pusher, &private, m.event, &m.private);
        if let Some(status) = &m.status {
            publish(
                &state.pusher,
                &private,
                toolbox::AGENT_STATUS_UPDATE,
                status,
            );
        }
    }
    Ok(())
}

fn publish(hub: &Hub, channel: &str, event: &str, data: &Value) {
    if let Err(e) = hub.publish_local(channel, event, data) {
        tracing::debug!(error = %e, channel, event, "agent event not published");
    }
}

/// One event's messages: the public one (if any), the private one, the status update.
struct Message {
    event: &'static str,
    public: Option<Value>,
    private: Value,
    status: Option<Value>,
}

fn status_update(id: Uuid, info: &Known, status: &str, at: DateTime<Utc>) -> Value {
    json!({
        "agent_type": info.agent_type,
        "task_id": id,
        "status": status,
        "at": at,
    })
}

fn messages(id: Uuid, info: &Known, event: &SwarmTaskEvent) -> Vec<Message> {
    let base = |status: &str| {
        json!({
            "task_id": id,
            "agent_type": info.agent_type,
            "task_type": info.task_type,
            "status": status,
        })
    };
    use SwarmTaskEvent as E;
    let (event, public, mut private, status) = match event {
        E::SwarmTaskStarted(s) => {
            let mut b = base("running");
            b["attempt"] = json!(s.attempt);
            b["at"] = json!(s.started_at);
            (
                toolbox::GENERATION_STARTED,
                Some(b.clone()),
                b,
                Some(status_update(id, info, "running", s.started_at)),
            )
        }
        E::AgentCallRecorded(c) => {
            let mut b = base("running");
            b["call"] = json!(c.call);
            b["max_calls"] = json!(MAX_AGENT_CALLS);
            b["accepted"] = json!(c.error.is_none());
            b["at"] = json!(c.at);
            let mut p = b.clone();
            p["error"] = json!(c.error);
            p["prompt_tokens"] = json!(c.prompt_tokens);
            p["completion_tokens"] = json!(c.completion_tokens);
            (toolbox::GENERATION_PROGRESS, Some(b), p, None)
        }
        E::SwarmTaskCompleted(c) => {
            let mut b = base("completed");
            b["at"] = json!(c.completed_at);
            let mut p = b.clone();
            if let TaskResult::Agent {
                output,
                calls,
                prompt_tokens,
                completion_tokens,
                elapsed_ms,
                ..
            } = &c.result
            {
                p["calls"] = json!(calls);
                p["prompt_tokens"] = json!(prompt_tokens);
                p["completion_tokens"] = json!(completion_tokens);
                p["elapsed_ms"] = json!(elapsed_ms);
                p["output"] = output.clone();
            }
            (
                toolbox::CONTENT_GENERATED,
                Some(b),
                p,
                Some(status_update(id, info, "completed", c.completed_at)),
            )
        }
        E::SwarmTaskFailed(f) => {
            let mut b = base("failed");
            b["at"] = json!(f.failed_at);
            let mut p = b.clone();
            p["error"] = json!(f.error);
            (
                toolbox::GENERATION_FAILED,
                Some(b),
                p,
                Some(status_update(id, info, "failed", f.failed_at)),
            )
        }
        E::SwarmTaskCancelled(c) => {
            let s = status_update(id, info, "cancelled", c.cancelled_at);
            (toolbox::AGENT_STATUS_UPDATE, None, s, None)
        }
        E::SwarmTaskInterrupted(i) => {
            let s = status_update(id, info, "interrupted", i.interrupted_at);
            (toolbox::AGENT_STATUS_UPDATE, None, s, None)
        }
        E::SwarmTaskCreated(_)
        | E::OptimizationProgressed(_)
        | E::SubtasksRecorded(_)
        | E::AnalysisProgressed(_)
        | E::AnalysisResultsRecorded(_)
        | E::InsightRecorded(_) => return vec![],
    };
    // An output too large for one Pusher message is left out; the execution has it.
    if private.to_string().len() > MAX_DATA {
        if let Some(o) = private.as_object_mut() {
            o.remove("output");
            o.insert("output_omitted".into(), json!(true));
        }
    }
    vec![Message {
        event,
        public,
        private,
        status,
    }]
}
