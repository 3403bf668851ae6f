//! Anthropic's messages API with streaming (`POST {base}/messages`, `stream: true`).
//!
//! Events read: `message_start` (prompt tokens), `content_block_delta` with a `text_delta`,
//! `message_delta` (stop reason, completion tokens), `message_stop` (the end), `error`;
//! `ping`, `content_block_start`/`stop` and unknown events are skipped.

use serde::Deserialize;
use serde_json::json;

use super::sse::{reply_stream, Decoder, SseEvent};
use super::{
    classify_status, estimate_prompt_tokens, estimate_tokens, http_client, retry_after,
    ChatRequest, Completion, HttpSettings, ModelProvider, ProviderError, ReplyEvent, ReplyStream,
    Role, Usage,
};

/// The API version sent in `anthropic-version`.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone)]
pub struct AnthropicSettings {
    /// Without the trailing `/messages`, e.g. `https://api.anthropic.com/v1`.
    pub base_url: String,
    pub api_key: String,
    pub models: Vec<String>,
    pub temperature: Option<f32>,
    /// Required by the API, so always sent.
    pub max_tokens: u32,
    pub http: HttpSettings,
}

pub struct Anthropic {
    settings: AnthropicSettings,
    client: reqwest::Client,
}

impl Anthropic {
    pub fn new(settings: AnthropicSettings) -> Self {
        let client = http_client(&settings.http);
        Self { settings, client }
    }
}

#[async_trait::async_trait]
impl ModelProvider for Anthropic {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn models(&self) -> Vec<String> {
        self.settings.models.clone()
    }

    async fn stream(&self, request: ChatRequest) -> Result<ReplyStream, ProviderError> {
        // System messages go into the top-level `system`; the rest stay in order.
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let messages: Vec<_> = request
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let mut body = json!({
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens.unwrap_or(self.settings.max_tokens),
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = request.temperature.or(self.settings.temperature) {
            // Anthropic accepts 0..=1.
            body["temperature"] = json!(t.clamp(0.0, 1.0));
        }
        let url = format!("{}/messages", self.settings.base_url.trim_end_matches('/'));
        let response = self
            .client
            .post(url)
            .header("x-api-key", &self.settings.api_key)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(&e))?;
        let status = response.status();
        if !status.is_success() {
            let wait = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            return Err(classify_status(status, wait, &text));
        }
        let decoder = AnthropicDecoder {
            prompt_estimate: estimate_prompt_tokens(&request.messages),
            prompt_tokens: None,
            completion_tokens: None,
            text: String::new(),
            stop_reason: None,
        };
        Ok(reply_stream(response.bytes_stream(), decoder))
    }
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<MessageStart>,
    #[serde(default)]
    delta: Option<serde_json::Value>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    error: Option<ErrorJson>,
}

#[derive(Deserialize)]
struct MessageStart {
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ErrorJson {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

pub(crate) struct AnthropicDecoder {
    prompt_estimate: u32,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    text: String,
    stop_reason: Option<String>,
}

impl AnthropicDecoder {
    fn completion(&self) -> Completion {
        let usage = match (self.prompt_tokens, self.completion_tokens) {
            (Some(p), Some(c)) => Usage {
                prompt_tokens: p,
                completion_tokens: c,
                estimated: false,
            },
            (p, c) => Usage {
                prompt_tokens: p.unwrap_or(self.prompt_estimate),
                completion_tokens: c.unwrap_or_else(|| estimate_tokens(&self.text)),
                estimated: true,
            },
        };
        Completion {
            finish_reason: self
                .stop_reason
                .clone()
                .unwrap_or_else(|| "end_turn".to_owned()),
            usage,
        }
    }
}

impl Decoder for AnthropicDecoder {
    fn event(&mut self, event: SseEvent, out: &mut Vec<ReplyEvent>) -> Result<bool, ProviderError> {
        let parsed: Event = serde_json::from_str(&event.data)
            .map_err(|e| ProviderError::Protocol(format!("an event is not valid JSON: {e}")))?;
        // The `event:` line and the JSON `type` agree; either may be missing.
        let kind = event.event.or(parsed.kind).unwrap_or_default();
        match kind.as_str() {
            "message_start" => {
                if let Some(usage) = parsed.message.and_then(|m| m.usage) {
                    self.prompt_tokens = usage.input_tokens.or(self.prompt_tokens);
                    self.completion_tokens = usage.output_tokens.or(self.completion_tokens);
                }
            }
            "content_block_delta" => {
                let text = parsed
                    .delta
                    .as_ref()
                    .filter(|d| d.get("type").and_then(|t| t.as_str()) == Some("text_delta"))
                    .and_then(|d| d.get("text"))
                    .and_then(|t| t.as_str());
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    self.text.push_str(text);
                    out.push(ReplyEvent::Delta(text.to_owned()));
                }
            }
            "message_delta" => {
                if let Some(reason) = parsed
                    .delta
                    .as_ref()
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(|r| r.as_str())
                    .filter(|r| !r.is_empty())
                {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(usage) = parsed.usage {
                    self.completion_tokens = usage.output_tokens.or(self.completion_tokens);
                    self.prompt_tokens = usage.input_tokens.or(self.prompt_tokens);
                }
            }
            "message_stop" => {
                out.push(ReplyEvent::Completed(self.completion()));
                return Ok(true);
            }
            "error" => {
                let error = parsed.error.unwrap_or(ErrorJson {
                    kind: None,
                    message: None,
                });
                let message = error.message.unwrap_or_default();
                return Err(match error.kind.as_deref() {
                    Some("overloaded_error") => ProviderError::Server(529),
                    Some("api_error") => ProviderError::Server(500),
                    Some("rate_limit_error") => ProviderError::RateLimited { retry_after: None },
                    other => ProviderError::Protocol(format!(
                        "the server reported {} mid-stream: {message}",
                        other.unwrap_or("an error")
                    )),
                });
            }
            _ => {} // ping, content_block_start/stop, future events
        }
        Ok(false)
    }

    fn end(&mut self, _out: &mut Vec<ReplyEvent>) -> Result<(), ProviderError> {
        Err(ProviderError::Protocol(
            "the stream ended before message_stop".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseParser;

    #[test]
    fn a_recorded_stream_decodes_into_deltas_and_a_completion() {
        let wire = "event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
            event: ping\ndata: {\"type\":\"ping\"}\n\n\
            event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n\
            event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut decoder = AnthropicDecoder {
            prompt_estimate: 0,
            prompt_tokens: None,
            completion_tokens: None,
            text: String::new(),
            stop_reason: None,
        };
        let mut out = Vec::new();
        let mut done = false;
        for event in SseParser::new().push(wire.as_bytes()) {
            done = decoder.event(event, &mut out).unwrap();
        }
        assert!(done);
        assert_eq!(
            out,
            vec![
                ReplyEvent::Delta("Hi".into()),
                ReplyEvent::Delta(" there".into()),
                ReplyEvent::Completed(Completion {
                    finish_reason: "end_turn".into(),
                    usage: Usage {
                        prompt_tokens: 12,
                        completion_tokens: 5,
                        estimated: false
                    }
                })
            ]
        );
    }
}
