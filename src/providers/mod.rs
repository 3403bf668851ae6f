//! AI model providers behind one small trait, reused by chat replies, agent executions and
//! task batches.
//!
//! - [`ModelProvider`]: `stream(request)` gives a [`ReplyStream`] of text deltas that ends
//!   with one [`Completion`] (finish reason, token usage), or with a classified
//!   [`ProviderError`].
//! - [`openai`]: any OpenAI-compatible chat-completions server (OpenAI, Groq, ...).
//! - [`anthropic`]: Anthropic's messages API.
//! - [`local_echo`]: a deterministic local stand-in for development, never in production.
//! - [`guard`]: wraps each provider in timeouts, retries before the first token and a
//!   circuit breaker whose state is readable and exported as metrics.
//! - [`registry`]: the [`Providers`] built from [`Config`](crate::Config), which picks the
//!   provider of a model id.
//! - [`sse`]: the incremental Server-Sent Events parser both HTTP providers read with.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

pub mod anthropic;
pub mod guard;
pub mod local_echo;
pub mod openai;
pub mod registry;
pub mod sse;

pub use guard::{BreakerSnapshot, BreakerState, GuardPolicy, Guarded};
pub use registry::{ModelInfo, Providers};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// What to ask a model. `None` settings take the provider's configured defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// Tokens a reply cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The server reported no usage and these are estimates (about four characters a token).
    pub estimated: bool,
}

/// How a reply ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The provider's reason (`stop`, `length`, `end_turn`, ...); `stop` when it gave none.
    pub finish_reason: String,
    pub usage: Usage,
}

/// One item of a reply stream: text pieces, then exactly one completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    Delta(String),
    Completed(Completion),
}

/// A streamed reply. After `Completed` or an `Err` the stream yields nothing more.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<ReplyEvent, ProviderError>> + Send>>;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    Connect,
    FirstToken,
    Total,
}

/// A provider failure, classified so that callers (retries, the breaker, the reply events)
/// can act on the class rather than on text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider is rate limiting")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the provider answered with status {0}")]
    Server(u16),
    #[error("the provider timed out ({0:?})")]
    Timeout(TimeoutKind),
    #[error("the provider could not be reached: {0}")]
    Network(String),
    #[error("the provider is unavailable (circuit breaker open)")]
    Unavailable,
    /// A 4xx other than 429: `status` tells whether the request's content was refused
    /// ([`ProviderError::caused_by_request`]) or this server's credentials or settings.
    #[error("the provider refused the request: {message}")]
    BadRequest { status: u16, message: String },
    #[error("the provider sent a malformed stream: {0}")]
    Protocol(String),
    /// The caller stopped the reply. Dropping a [`ReplyStream`] is how a caller cancels (the
    /// HTTP request is aborted with it); this class is for reporting that stop.
    #[error("the reply was cancelled")]
    Cancelled,
}

impl ProviderError {
    /// A stable lowercase name for metrics and reply-failed events.
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Server(_) => "server",
            ProviderError::Timeout(TimeoutKind::Connect) => "timeout_connect",
            ProviderError::Timeout(TimeoutKind::FirstToken) => "timeout_first_token",
            ProviderError::Timeout(TimeoutKind::Total) => "timeout_total",
            ProviderError::Network(_) => "network",
            ProviderError::Unavailable => "unavailable",
            ProviderError::BadRequest { .. } => "bad_request",
            ProviderError::Protocol(_) => "protocol",
            ProviderError::Cancelled => "cancelled",
        }
    }

    /// Worth another attempt before the first token: 429, 5xx and failed connections.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Server(_)
                | ProviderError::Network(_)
                | ProviderError::Timeout(TimeoutKind::Connect)
        )
    }

    /// Says something about the provider's health (counts towards opening the breaker).
    /// A refused request or a cancellation is the caller's doing.
    pub fn counts_against_provider(&self) -> bool {
        !matches!(
            self,
            ProviderError::BadRequest { .. }
                | ProviderError::Cancelled
                | ProviderError::Unavailable
        )
    }

    /// The provider refused what the request holds (400, 413, 422: a prompt too long, a
    /// refused content, a bad parameter): the caller's input, not a failure of the provider
    /// nor of this server. A 401, 403 or 404 is this server's credentials or settings.
    pub fn caused_by_request(&self) -> bool {
        matches!(
            self,
            ProviderError::BadRequest {
                status: 400 | 413 | 422,
                ..
            }
        )
    }

    /// Classifies a reqwest error (sending the request or reading the body).
    pub(crate) fn from_reqwest(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            if err.is_connect() {
                ProviderError::Timeout(TimeoutKind::Connect)
            } else {
                ProviderError::Timeout(TimeoutKind::Total)
            }
        } else if err.is_body() || err.is_decode() {
            ProviderError::Protocol(format!("reading the stream failed: {err}"))
        } else {
            ProviderError::Network(err.to_string())
        }
    }
}

/// A model provider: a name, its models, and streamed replies.
#[async_trait::async_trait]
pub trait ModelProvider: Send + Sync {
    /// Stable name (`openai`, `groq`, `anthropic`, `local-echo`), used in metrics and logs.
    fn name(&self) -> &str;
    /// The model ids this provider serves.
    fn models(&self) -> Vec<String>;
    /// Starts a reply. Errors before the stream exists are returned here; later ones come
    /// as the stream's last item.
    async fn stream(&self, request: ChatRequest) -> Result<ReplyStream, ProviderError>;
}

/// About four characters a token: the estimate used when a server reports no usage.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count() as u32;
    chars.div_ceil(4)
}

/// Estimated prompt tokens: the messages' text plus a few tokens of framing each.
pub fn estimate_prompt_tokens(messages: &[ChatMessage]) -> u32 {
    messages
        .iter()
        .map(|m| estimate_tokens(&m.content) + 4)
        .sum()
}

/// Maps a non-success HTTP status to its class; `body` is kept for refused requests.
pub(crate) fn classify_status(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> ProviderError {
    match status.as_u16() {
        429 => ProviderError::RateLimited { retry_after },
        // 529 is Anthropic's "overloaded"; any 5xx is the server's trouble.
        code @ 500..=599 => ProviderError::Server(code),
        code => {
            let mut text: String = body.chars().take(300).collect();
            if text.is_empty() {
                text = format!("status {code}");
            } else {
                text = format!("status {code}: {text}");
            }
            ProviderError::BadRequest {
                status: code,
                message: text,
            }
        }
    }
}

/// Reads a `Retry-After` header given in seconds (the form providers use).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// Settings shared by the HTTP providers' clients.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
}

pub(crate) fn http_client(settings: &HttpSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .build()
        .expect("a reqwest client with only a connect timeout always builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_the_requests_content_is_the_callers() {
        let refused = |code: u16| {
            classify_status(reqwest::StatusCode::from_u16(code).unwrap(), None, "no")
                .caused_by_request()
        };
        for code in [400, 413, 422] {
            assert!(refused(code), "{code}");
        }
        // Credentials, settings, rate limits and server trouble are not the caller's.
        for code in [401, 403, 404, 429, 500, 503] {
            assert!(!refused(code), "{code}");
        }
        assert!(!ProviderError::Unavailable.caused_by_request());
    }
}
