//! An analysis (the analysis service's `start-analysis` → `process-updates` →
//! `process-results` → insights → report), run by the swarm scheduler like any other task.
//!
//! 1. **Updates.** Each document is analysed in turn (words, sentences, most frequent terms)
//!    and reported as `AnalysisProgressed`: one event per document, never per tick.
//! 2. **Results.** The findings of all documents, recorded once (`AnalysisResultsRecorded`).
//! 3. **Insights.** The AI step: the results and the analysis's questions go to the model
//!    through the provider layer (its timeouts, retries and breaker), and the answer is
//!    recorded as an insight of source `ai` (`InsightRecorded`). Users add their own with
//!    `POST /api/v1/analysis/{id}/insights`.
//! 4. The task completes; the report is rendered from the read model on request.
//!
//! A resumed attempt starts the documents over (the analysis is deterministic), keeps the
//! results recorded before, and does not ask the AI again once its insight is recorded. Every report names the attempt, so a worker
//! that lost its attempt records nothing more.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chrono::Utc;
use futures_util::StreamExt;
use universal_events::swarm::{
    AnalysisConfig, AnalysisResults, DocumentFindings, InsightSource, TaskResult, TermCount,
};
use uuid::Uuid;

use super::{Finish, Run};
use crate::actors::swarm_task::{SwarmCommand, SwarmTask, MAX_INSIGHT};
use crate::providers::{ChatMessage, ChatRequest, ReplyEvent, Role};

/// Terms listed per document and over all documents.
pub const TOP_TERMS: usize = 10;

/// Words too common to say anything about a text.
const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "that", "this", "with", "are", "was", "were", "from", "have", "has",
    "had", "but", "not", "you", "your", "our", "their", "they", "them", "its", "into", "than",
    "then", "there", "here", "what", "when", "which", "who", "will", "would", "could", "should",
    "been", "being", "also", "about", "more", "most", "some", "such", "only", "very", "just",
    "can", "all", "any", "each", "one", "two", "over", "out", "how", "why", "did", "does",
];

fn terms(text: &str) -> HashMap<String, u64> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'') {
        let word = word.trim_matches('\'').to_lowercase();
        if word.chars().count() < 3
            || word.chars().all(|c| c.is_numeric())
            || STOP_WORDS.contains(&word.as_str())
        {
            continue;
        }
        *counts.entry(word).or_default() += 1;
    }
    counts
}

/// The most frequent terms, most frequent first, ties in alphabetical order (so that the
/// same documents always give the same results).
fn top(counts: &HashMap<String, u64>) -> Vec<TermCount> {
    let mut all: Vec<(&String, &u64)> = counts.iter().collect();
    all.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    all.into_iter()
        .take(TOP_TERMS)
        .map(|(term, count)| TermCount {
            term: term.clone(),
            count: *count,
        })
        .collect()
}

/// What one document says, by the numbers.
pub fn findings(name: &str, text: &str) -> (DocumentFindings, HashMap<String, u64>) {
    let words = text.split_whitespace().count() as u64;
    let sentences = text
        .split(['.', '!', '?'])
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .count() as u64;
    let counts = terms(text);
    (
        DocumentFindings {
            name: name.to_owned(),
            words,
            sentences,
            top_terms: top(&counts),
        },
        counts,
    )
}

/// The prompt of the AI step: the results and the questions.
pub fn prompt(config: &AnalysisConfig, results: &AnalysisResults) -> String {
    let mut p = format!(
        "You analyse documents for a report titled \"{}\". Findings:\n",
        config.title
    );
    for d in &results.documents {
        let terms: Vec<String> = d
            .top_terms
            .iter()
            .map(|t| format!("{} ({})", t.term, t.count))
            .collect();
        p.push_str(&format!(
            "- {}: {} words, {} sentences; frequent terms: {}\n",
            d.name,
            d.words,
            d.sentences,
            terms.join(", ")
        ));
    }
    if config.questions.is_empty() {
        p.push_str("Give the three most important insights, one per line.\n");
    } else {
        p.push_str("Answer these questions, one insight per answer:\n");
        for q in &config.questions {
            p.push_str(&format!("- {q}\n"));
        }
    }
    p
}

pub(crate) async fn run(run: &Run, task: &SwarmTask) -> Result<TaskResult, Finish> {
    let started = Instant::now();
    let Some(config) = task.analysis_config().cloned() else {
        return Err(Finish::Fail("not an analysis".into()));
    };
    let total = config.documents.len() as u64;
    let mut documents = Vec::with_capacity(config.documents.len());
    let mut all: HashMap<String, u64> = HashMap::new();
    for (i, doc) in config.documents.iter().enumerate() {
        if run.cancel.load(Ordering::Relaxed) {
            return Err(Finish::Stopped);
        }
        if Instant::now() >= run.deadline {
            return Err(Finish::Fail(run.time_limit()));
        }
        let (name, text) = (doc.name.clone(), doc.text.clone());
        // Up to 100,000 characters each: counted off the async workers.
        let (found, counts) = tokio::task::spawn_blocking(move || findings(&name, &text))
            .await
            .map_err(|e| Finish::Fail(format!("the analysis stopped: {e}")))?;
        for (term, n) in counts {
            *all.entry(term).or_default() += n;
        }
        documents.push(found);
        let cmd = SwarmCommand::RecordAnalysisProgress {
            attempt: run.attempt,
            done: i as u64 + 1,
            total,
            document: doc.name.clone(),
            at: Utc::now(),
        };
        if run.report(cmd).await.is_err() && run.cancel.load(Ordering::Relaxed) {
            return Err(Finish::Stopped);
        }
    }
    let results = AnalysisResults {
        words: documents.iter().map(|d| d.words).sum(),
        sentences: documents.iter().map(|d| d.sentences).sum(),
        top_terms: top(&all),
        documents,
    };
    let cmd = SwarmCommand::RecordAnalysisResults {
        attempt: run.attempt,
        results: task.analysis_results.clone().unwrap_or(results.clone()),
        at: Utc::now(),
    };
    if let Err(e) = run.report(cmd).await {
        if run.cancel.load(Ordering::Relaxed) {
            return Err(Finish::Stopped);
        }
        return Err(Finish::Fail(format!("the results were not recorded: {e}")));
    }
    if task.ai_insight {
        // An earlier attempt got as far as the AI's answer: it is not asked twice.
        return Ok(TaskResult::Analysis {
            documents: 0,
            words: 0,
            insights: 0,
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
    }
    let (text, model) = insight(run, &config, &results).await?;
    let cmd = SwarmCommand::RecordInsight {
        // One AI insight per attempt: a resent report names the same insight.
        insight_id: Uuid::new_v5(&run.id, format!("ai-insight:{}", run.attempt).as_bytes()),
        source: InsightSource::Ai,
        user_id: None,
        attempt: Some(run.attempt),
        model: Some(model),
        text,
        at: Utc::now(),
    };
    if let Err(e) = run.report(cmd).await {
        if run.cancel.load(Ordering::Relaxed) {
            return Err(Finish::Stopped);
        }
        return Err(Finish::Fail(format!("the insight was not recorded: {e}")));
    }
    Ok(TaskResult::Analysis {
        // The decider fills the counts in from what was recorded.
        documents: 0,
        words: 0,
        insights: 0,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// The AI step, within the task's time limit.
async fn insight(
    run: &Run,
    config: &AnalysisConfig,
    results: &AnalysisResults,
) -> Result<(String, String), Finish> {
    let providers = &run.state.providers;
    let model = config
        .model
        .clone()
        .or_else(|| providers.default_model())
        .ok_or_else(|| Finish::Fail("no AI provider is configured".into()))?;
    let provider = providers
        .for_model(&model)
        .ok_or_else(|| Finish::Fail(format!("no provider serves the model `{model}`")))?;
    let request = ChatRequest {
        model: model.clone(),
        messages: vec![ChatMessage::new(Role::User, prompt(config, results))],
        temperature: None,
        max_tokens: None,
    };
    let deadline = tokio::time::Instant::from_std(run.deadline);
    let answer = async {
        let mut stream = crate::providers::ModelProvider::stream(provider.as_ref(), request)
            .await
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item.map_err(|e| e.to_string())? {
                ReplyEvent::Delta(d) => {
                    if text.len() < 4 * MAX_INSIGHT {
                        text.push_str(&d);
                    }
                }
                ReplyEvent::Completed(_) => return Ok(text),
            }
        }
        Err("the provider's reply ended without completing".to_owned())
    };
    let text = tokio::select! {
        r = tokio::time::timeout_at(deadline, answer) => match r {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => return Err(Finish::Fail(format!("the AI step failed: {e}"))),
            Err(_) => return Err(Finish::Fail(run.time_limit())),
        },
        _ = stopped(run) => return Err(Finish::Stopped),
    };
    let text: String = text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .take(MAX_INSIGHT)
        .collect();
    if text.trim().is_empty() {
        return Err(Finish::Fail("the AI step answered nothing".into()));
    }
    Ok((text, model))
}

/// Resolves once the attempt is cancelled (checked every report interval).
async fn stopped(run: &Run) {
    loop {
        tokio::time::sleep(super::REPORT_EVERY).await;
        if !run.still_current().await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_count_words_sentences_and_frequent_terms() {
        let (f, _) = findings(
            "a",
            "Checkout is slow. The checkout page froze! Support was kind; checkout again?",
        );
        assert_eq!(f.words, 12);
        assert_eq!(f.sentences, 3);
        assert_eq!(f.top_terms[0].term, "checkout");
        assert_eq!(f.top_terms[0].count, 3);
        // Stop words and short words are not terms.
        assert!(f
            .top_terms
            .iter()
            .all(|t| t.term != "the" && t.term != "is"));
    }
}
