//! OpenAI-compatible chat completions with streaming (`POST {base}/chat/completions`,
//! `stream: true`), used for OpenAI itself and for Groq.
//!
//! A plain reqwest reader rather than async-openai: compatible servers omit `id`, `object`
//! or `created`, send `finish_reason: ""` or `null`, and often report no usage, which strict
//! types reject. Every field read here is optional.

use serde::Deserialize;
use serde_json::json;

use super::sse::{reply_stream, Decoder, SseEvent};
use super::{
    classify_status, estimate_prompt_tokens, estimate_tokens, http_client, retry_after,
    ChatRequest, Completion, HttpSettings, ModelProvider, ProviderError, ReplyEvent, ReplyStream,
    Usage,
};

/// Settings of one OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// `openai`, `groq`, ...: the provider's name in metrics and the model list.
    pub name: String,
    /// Without the trailing `/chat/completions`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub models: Vec<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub http: HttpSettings,
}

/// A client of one OpenAI-compatible endpoint.
pub struct OpenAiCompatible {
    settings: OpenAiSettings,
    client: reqwest::Client,
}

impl OpenAiCompatible {
    pub fn new(settings: OpenAiSettings) -> Self {
        let client = http_client(&settings.http);
        Self { settings, client }
    }
}

#[async_trait::async_trait]
impl ModelProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn models(&self) -> Vec<String> {
        self.settings.models.clone()
    }

    async fn stream(&self, request: ChatRequest) -> Result<ReplyStream, ProviderError> {
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = request.temperature.or(self.settings.temperature) {
            body["temperature"] = json!(t);
        }
        if let Some(m) = request.max_tokens.or(self.settings.max_tokens) {
            body["max_tokens"] = json!(m);
        }
        let url = format!(
            "{}/chat/completions",
            self.settings.base_url.trim_end_matches('/')
        );
        let mut call = self
            .client
            .post(url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.settings.api_key {
            call = call.bearer_auth(key);
        }
        let response = call
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(&e))?;
        let status = response.status();
        if !status.is_success() {
            let wait = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            return Err(classify_status(status, wait, &text));
        }
        let decoder = OpenAiDecoder {
            prompt_tokens: estimate_prompt_tokens(&request.messages),
            text: String::new(),
            finish_reason: None,
            usage: None,
        };
        Ok(reply_stream(response.bytes_stream(), decoder))
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<UsageJson>,
    /// Groq reports usage here instead of in `usage`.
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<UsageJson>,
}

/// Reads `chat.completion.chunk` events up to `[DONE]`.
pub(crate) struct OpenAiDecoder {
    prompt_tokens: u32,
    text: String,
    finish_reason: Option<String>,
    usage: Option<UsageJson>,
}

impl OpenAiDecoder {
    fn completion(&self) -> Completion {
        let usage = match self.usage {
            Some(UsageJson {
                prompt_tokens: Some(p),
                completion_tokens: Some(c),
            }) => Usage {
                prompt_tokens: p,
                completion_tokens: c,
                estimated: false,
            },
            _ => Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: estimate_tokens(&self.text),
                estimated: true,
            },
        };
        Completion {
            finish_reason: self
                .finish_reason
                .clone()
                .unwrap_or_else(|| "stop".to_owned()),
            usage,
        }
    }
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, event: SseEvent, out: &mut Vec<ReplyEvent>) -> Result<bool, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.push(ReplyEvent::Completed(self.completion()));
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| ProviderError::Protocol(format!("a chunk is not valid JSON: {e}")))?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("no message");
            return Err(ProviderError::Protocol(format!(
                "the server reported an error mid-stream: {message}"
            )));
        }
        if let Some(usage) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
            self.usage = Some(usage);
        }
        // Only the first choice is asked for (no `n`); others are ignored.
        for choice in chunk
            .choices
            .into_iter()
            .filter(|c| c.index.unwrap_or(0) == 0)
        {
            if let Some(piece) = choice.delta.and_then(|d| d.content) {
                if !piece.is_empty() {
                    self.text.push_str(&piece);
                    out.push(ReplyEvent::Delta(piece));
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        Ok(false)
    }

    fn end(&mut self, out: &mut Vec<ReplyEvent>) -> Result<(), ProviderError> {
        // Some servers close without `[DONE]`: a finish reason says the reply was whole.
        if self.finish_reason.is_some() {
            out.push(ReplyEvent::Completed(self.completion()));
            Ok(())
        } else {
            Err(ProviderError::Protocol(
                "the stream ended before the reply was complete".to_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseParser;

    fn decoder() -> OpenAiDecoder {
        OpenAiDecoder {
            prompt_tokens: 9,
            text: String::new(),
            finish_reason: None,
            usage: None,
        }
    }

    fn feed(decoder: &mut OpenAiDecoder, wire: &str) -> (Vec<ReplyEvent>, bool) {
        let mut out = Vec::new();
        let mut done = false;
        for event in SseParser::new().push(wire.as_bytes()) {
            done = decoder.event(event, &mut out).unwrap();
        }
        (out, done)
    }

    #[test]
    fn groq_usage_in_x_groq_is_read() {
        let mut d = decoder();
        let (out, done) = feed(
            &mut d,
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
             data: {\"choices\":[{\"delta\":{\"content\":\"Hey\"},\"finish_reason\":null}]}\n\n\
             data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"x_groq\":{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}}\n\n\
             data: [DONE]\n\n",
        );
        assert!(done);
        assert_eq!(
            out,
            vec![
                ReplyEvent::Delta("Hey".into()),
                ReplyEvent::Completed(Completion {
                    finish_reason: "length".into(),
                    usage: Usage {
                        prompt_tokens: 5,
                        completion_tokens: 1,
                        estimated: false
                    }
                })
            ]
        );
    }

    #[test]
    fn a_body_that_ends_after_a_finish_reason_but_without_done_is_complete() {
        let mut d = decoder();
        let (_, done) = feed(
            &mut d,
            "data: {\"choices\":[{\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\n",
        );
        assert!(!done);
        let mut out = Vec::new();
        d.end(&mut out).unwrap();
        assert!(matches!(&out[..], [ReplyEvent::Completed(c)] if c.usage.estimated));
    }

    #[test]
    fn a_body_that_ends_without_any_end_marker_is_a_protocol_error() {
        let mut d = decoder();
        feed(
            &mut d,
            "data: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\n",
        );
        let err = d.end(&mut Vec::new()).unwrap_err();
        assert!(matches!(err, ProviderError::Protocol(_)));
    }

    #[test]
    fn an_error_object_or_invalid_json_mid_stream_is_a_protocol_error() {
        let mut d = decoder();
        let event = SseEvent {
            event: None,
            data: "{\"error\":{\"message\":\"boom\"}}".into(),
        };
        assert!(matches!(
            d.event(event, &mut Vec::new()),
            Err(ProviderError::Protocol(m)) if m.contains("boom")
        ));
        let event = SseEvent {
            event: None,
            data: "{not json".into(),
        };
        assert!(matches!(
            d.event(event, &mut Vec::new()),
            Err(ProviderError::Protocol(_))
        ));
    }
}
