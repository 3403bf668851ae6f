//! `local-echo`: a deterministic local provider for development, so that a new user can try
//! the whole chat flow without any provider key. Its replies are labelled as such and are
//! derived only from the last user message. The registry never offers it in production.

use futures_util::stream;

use super::{
    estimate_prompt_tokens, estimate_tokens, ChatRequest, Completion, ModelProvider, ProviderError,
    ReplyEvent, ReplyStream, Role, Usage,
};

/// The provider's name and its one model id.
pub const LOCAL_ECHO: &str = "local-echo";

/// Streams `[local-echo] You said: <last user message>` in a few deltas.
#[derive(Debug, Default, Clone)]
pub struct LocalEcho;

impl LocalEcho {
    /// The full reply for a request, as the deltas will spell it.
    pub fn reply_text(request: &ChatRequest) -> String {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.trim())
            .unwrap_or("");
        if last.is_empty() {
            format!("[{LOCAL_ECHO}] No message to echo. This is a local development provider.")
        } else {
            format!("[{LOCAL_ECHO}] You said: {last}")
        }
    }
}

/// Splits after whitespace into at most `parts` pieces of about equal length (on char
/// boundaries), so a reply arrives as several deltas.
fn pieces(text: &str, parts: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let per = words.len().div_ceil(parts.max(1)).max(1);
    words.chunks(per).map(|c| c.concat()).collect()
}

#[async_trait::async_trait]
impl ModelProvider for LocalEcho {
    fn name(&self) -> &str {
        LOCAL_ECHO
    }

    fn models(&self) -> Vec<String> {
        vec![LOCAL_ECHO.to_owned()]
    }

    async fn stream(&self, request: ChatRequest) -> Result<ReplyStream, ProviderError> {
        let text = Self::reply_text(&request);
        let mut events: Vec<Result<ReplyEvent, ProviderError>> = pieces(&text, 4)
            .into_iter()
            .map(|p| Ok(ReplyEvent::Delta(p)))
            .collect();
        events.push(Ok(ReplyEvent::Completed(Completion {
            finish_reason: "stop".to_owned(),
            usage: Usage {
                prompt_tokens: estimate_prompt_tokens(&request.messages),
                completion_tokens: estimate_tokens(&text),
                estimated: true,
            },
        })));
        Ok(Box::pin(stream::iter(events)))
    }
}
