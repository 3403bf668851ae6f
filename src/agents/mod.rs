//! The ToolboxAI agent registry: which agents exist, which tasks each does, and for each task
//! its input schema, prompt template, output schema, model and limits.
//!
//! The registry is declarative: `registry.json` next to this file, read once and checked at
//! first use (every schema within the subset [`schema`] checks, every template naming only
//! input fields). Adding an agent is adding an entry there. An execution is a swarm task
//! (`crate::tasks::agent` runs it); this module only answers questions about the entries:
//! is this input valid, what is the prompt, is this output valid.

pub mod breakers;
pub mod publish;
pub mod schema;

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One task type of an agent.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TaskSpec {
    pub name: String,
    pub description: String,
    /// The model to ask; `None` takes the providers' default model.
    pub model: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Wall-clock limit of one execution (never above `MAX_CONTENT_GENERATION_TIME`).
    pub time_limit_secs: u64,
    pub input_schema: Value,
    /// The user prompt; `{{field}}` is replaced by the input's field (text as is, other
    /// values as JSON, a missing field by its schema default or `(none)`).
    pub prompt: String,
    pub output_schema: Value,
}

/// One agent.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AgentSpec {
    pub name: String,
    pub description: String,
    pub tasks: Vec<TaskSpec>,
}

#[derive(Debug, Deserialize)]
struct File {
    agents: Vec<AgentSpec>,
}

static REGISTRY: LazyLock<Vec<AgentSpec>> = LazyLock::new(|| {
    let file: File = serde_json::from_str(include_str!("registry.json"))
        .expect("src/agents/registry.json is valid JSON of the registry's shape");
    for agent in &file.agents {
        for task in &agent.tasks {
            let at = format!("{}.{}", agent.name, task.name);
            check_task(task).unwrap_or_else(|e| panic!("registry entry {at}: {e}"));
        }
    }
    file.agents
});

fn check_task(task: &TaskSpec) -> Result<(), String> {
    schema::check_schema(&task.input_schema, "input_schema")?;
    schema::check_schema(&task.output_schema, "output_schema")?;
    let fields = task.input_schema["properties"]
        .as_object()
        .ok_or("input_schema has no properties")?;
    for name in placeholders(&task.prompt) {
        if !fields.contains_key(name) {
            return Err(format!(
                "the prompt names `{name}`, which is not an input field"
            ));
        }
    }
    Ok(())
}

/// Every registered agent, in registry order.
pub fn agents() -> &'static [AgentSpec] {
    &REGISTRY
}

/// The agent called `name`.
pub fn agent(name: &str) -> Option<&'static AgentSpec> {
    REGISTRY.iter().find(|a| a.name == name)
}

/// Task `task` of agent `agent`, or why not (a message for a 400 that lists what exists).
pub fn task(agent_name: &str, task: &str) -> Result<&'static TaskSpec, LookupError> {
    let a = agent(agent_name).ok_or_else(|| LookupError::UnknownAgent {
        known: REGISTRY.iter().map(|a| a.name.clone()).collect(),
    })?;
    a.tasks
        .iter()
        .find(|t| t.name == task)
        .ok_or_else(|| LookupError::UnknownTask {
            agent: a.name.clone(),
            known: a.tasks.iter().map(|t| t.name.clone()).collect(),
        })
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown agent; known agents: {}", known.join(", "))]
    UnknownAgent { known: Vec<String> },
    #[error("{agent} has no such task type; its task types: {}", known.join(", "))]
    UnknownTask { agent: String, known: Vec<String> },
}

/// Checks an execution's input against its task's input schema, and every string in it
/// (keys included, at any depth) against the text rule of every other field
/// ([`crate::actors::validate::text`]: no control characters but tab and line breaks).
/// `Err` names the field as `task_data.<field>`.
pub fn check_input(task: &TaskSpec, data: &Value) -> Result<(), String> {
    schema::validate(&task.input_schema, data, "task_data")?;
    crate::actors::validate::json_text(data, "task_data")
}

/// The `{{name}}` placeholders of a template, in order.
fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    out
}

/// The prompt of one execution: the template filled in from `data`.
pub fn render(task: &TaskSpec, data: &Value) -> String {
    let mut out = String::with_capacity(task.prompt.len() + 256);
    let mut rest = task.prompt.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        let value = data
            .get(name)
            .or_else(|| task.input_schema["properties"][name].get("default"));
        match value {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                if texts.is_empty() {
                    out.push_str("(none)");
                } else {
                    out.push_str(&texts.join("; "));
                }
            }
            Some(Value::Null) | None => out.push_str("(none)"),
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The system instruction of every execution: answer with JSON of the output schema.
pub fn system_prompt(task: &TaskSpec) -> String {
    format!(
        "Answer with one JSON object and nothing else (no prose, no code fence). It must be \
         valid against this JSON Schema:\n{}",
        task.output_schema
    )
}

/// What the model is told after an output was refused.
pub fn retry_prompt(error: &str) -> String {
    format!(
        "That answer was refused: {error}. Answer again with one JSON object only, valid \
         against the schema."
    )
}

/// Reads a model's answer as the task's output: the JSON object in it (a surrounding code
/// fence or prose is tolerated), valid against the output schema. `Err` is the refusal, in
/// words the model is shown on its retry.
pub fn parse_output(task: &TaskSpec, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let candidate = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(start), Some(end)) if start < end => &trimmed[start..=end],
        _ => return Err("the answer holds no JSON object".into()),
    };
    let value: Value = serde_json::from_str(candidate)
        .map_err(|e| format!("the answer is not valid JSON ({e})"))?;
    schema::validate(&task.output_schema, &value, "output")?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shipped_registry_is_valid_and_has_both_agents() {
        let names: Vec<&str> = agents().iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["content_generator", "quiz_generator"]);
        assert!(task("content_generator", "generate_content").is_ok());
        assert!(task("quiz_generator", "generate_quiz").is_ok());
    }

    #[test]
    fn lookups_name_what_exists() {
        let e = task("poet", "generate_content").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown agent; known agents: content_generator, quiz_generator"
        );
        let e = task("content_generator", "write_poem").unwrap_err();
        assert_eq!(
            e.to_string(),
            "content_generator has no such task type; its task types: generate_content"
        );
    }

    #[test]
    fn the_prompt_is_filled_from_the_input_and_the_defaults() {
        let t = task("quiz_generator", "generate_quiz").unwrap();
        let prompt = render(t, &json!({"subject": "Mathematics", "grade_level": 5}));
        assert!(prompt.contains("Write 5 multiple-choice questions on Mathematics for grade 5."));
        assert!(prompt.contains("Topic: (none)"));
        assert!(prompt.contains("Difficulty: medium"));
        let t = task("content_generator", "generate_content").unwrap();
        let prompt = render(
            t,
            &json!({"subject": "Math", "grade_level": 5, "objectives": ["Fractions", "Halves"]}),
        );
        assert!(prompt.contains("Learning objectives: Fractions; Halves"));
    }

    #[test]
    fn an_output_is_read_from_a_fenced_answer_and_checked_against_the_schema() {
        let t = task("content_generator", "generate_content").unwrap();
        let good = "```json\n{\"title\":\"Fractions\",\"summary\":\"Parts of a whole\",\
                    \"sections\":[{\"heading\":\"Halves\",\"content\":\"Cut in two.\"}]}\n```";
        assert_eq!(parse_output(t, good).unwrap()["title"], "Fractions");
        assert_eq!(
            parse_output(t, "{\"title\":\"Fractions\",\"summary\":\"s\"}"),
            Err("output.sections: is required".into())
        );
        assert_eq!(
            parse_output(t, "Sorry, I cannot."),
            Err("the answer holds no JSON object".into())
        );
    }

    #[test]
    fn input_errors_name_the_task_data_field() {
        let t = task("content_generator", "generate_content").unwrap();
        assert_eq!(
            check_input(t, &json!({"subject": "Math"})),
            Err("task_data.grade_level: is required".into())
        );
        assert_eq!(
            check_input(t, &json!({"subject": "Math", "grade_level": "five"})),
            Err("task_data.grade_level: must be an integer, not a string".into())
        );
        assert_eq!(
            check_input(t, &json!({"subject": "Test", "grade_level": 5})),
            Ok(())
        );
    }

    #[test]
    fn task_data_strings_follow_the_text_rule_of_every_other_field() {
        let t = task("content_generator", "generate_content").unwrap();
        for c in ['\u{7}', '\u{1B}', '\u{7F}'] {
            let subject = json!({"subject": format!("Math{c}"), "grade_level": 5});
            assert_eq!(
                check_input(t, &subject),
                Err(format!(
                    "task_data.subject: must not contain control characters (found U+{:04X})",
                    c as u32
                ))
            );
            let nested =
                json!({"subject": "Math", "grade_level": 5, "objectives": ["ok", format!("x{c}")]});
            assert!(
                check_input(t, &nested)
                    .unwrap_err()
                    .starts_with("task_data.objectives[1]: "),
                "{nested}"
            );
        }
        let rtl =
            json!({"subject": "חשבון\u{200F} 5", "grade_level": 5, "notes": "line\nnext\ttab"});
        assert_eq!(check_input(t, &rtl), Ok(()));
    }
}
