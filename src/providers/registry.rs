//! The configured providers, each wrapped in a [`Guarded`], and the choice of provider for
//! a model id.
//!
//! Which providers exist:
//! - `openai` when `OPENAI_API_KEY` is set (non-empty), `groq` when `GROQ_API_KEY` is,
//!   `anthropic` when `ANTHROPIC_API_KEY` is;
//! - `local-echo` exactly when `NODE_ENV` is not `production` **and** none of those three
//!   keys is set. In production with no key the registry is empty, and callers answer 503
//!   `provider_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::anthropic::{Anthropic, AnthropicSettings};
use super::guard::{BreakerSnapshot, GuardPolicy, Guarded};
use super::local_echo::LocalEcho;
use super::openai::{OpenAiCompatible, OpenAiSettings};
use super::{HttpSettings, ModelProvider};
use crate::Config;

/// One model a client may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub provider: String,
}

/// The providers of this process, in order of preference.
#[derive(Clone, Default)]
pub struct Providers {
    providers: Vec<Arc<Guarded>>,
}

fn key(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

fn model_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Providers {
    /// Builds the providers `config` turns on (see the module docs for the rule).
    pub fn from_config(config: &Config) -> Self {
        let policy = GuardPolicy {
            first_token_timeout: Duration::from_millis(config.provider_first_token_timeout_ms),
            total_timeout: Duration::from_secs(config.provider_total_timeout_secs.max(1)),
            max_retries: config.provider_max_retries,
            retry_base: Duration::from_millis(config.provider_retry_base_ms),
            breaker_failures: config.provider_breaker_failures.max(1),
            breaker_open_for: Duration::from_secs(config.provider_breaker_open_secs),
            ..GuardPolicy::default()
        };
        let http = HttpSettings {
            connect_timeout: Duration::from_millis(config.provider_connect_timeout_ms),
        };
        let mut list: Vec<Arc<dyn ModelProvider>> = Vec::new();
        let openai_like = [
            (
                "openai",
                &config.openai_api_key,
                &config.openai_base_url,
                &config.openai_model,
            ),
            (
                "groq",
                &config.groq_api_key,
                &config.groq_base_url,
                &config.groq_model,
            ),
        ];
        for (name, api_key, base_url, models) in openai_like {
            if let Some(api_key) = key(api_key) {
                list.push(Arc::new(OpenAiCompatible::new(OpenAiSettings {
                    name: name.to_owned(),
                    base_url: base_url.clone(),
                    api_key: Some(api_key),
                    models: model_list(models),
                    temperature: Some(config.openai_temperature),
                    max_tokens: Some(config.max_tokens),
                    http: http.clone(),
                })));
            }
        }
        if let Some(api_key) = key(&config.anthropic_api_key) {
            list.push(Arc::new(Anthropic::new(AnthropicSettings {
                base_url: config.anthropic_base_url.clone(),
                api_key,
                models: model_list(&config.anthropic_model),
                temperature: Some(config.openai_temperature),
                max_tokens: config.max_tokens,
                http: http.clone(),
            })));
        }
        if list.is_empty() && !config.is_production() {
            tracing::warn!(
                "no AI provider key is set: offering the local development provider `local-echo`"
            );
            list.push(Arc::new(LocalEcho));
        }
        Self::new(list, policy)
    }

    /// Wraps each provider with `policy`.
    pub fn new(providers: Vec<Arc<dyn ModelProvider>>, policy: GuardPolicy) -> Self {
        Self {
            providers: providers
                .into_iter()
                .map(|p| Arc::new(Guarded::new(p, policy.clone())))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The providers' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.providers.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Every model of every provider, in order; the first is the default.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.providers
            .iter()
            .flat_map(|p| {
                p.models().into_iter().map(|id| ModelInfo {
                    id,
                    provider: p.name().to_owned(),
                })
            })
            .collect()
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> Option<String> {
        self.models().into_iter().next().map(|m| m.id)
    }

    /// The (guarded) provider serving `model`: the first that lists it.
    pub fn for_model(&self, model: &str) -> Option<Arc<Guarded>> {
        self.providers
            .iter()
            .find(|p| p.models().iter().any(|m| m == model))
            .cloned()
    }

    /// The (guarded) provider called `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Guarded>> {
        self.providers.iter().find(|p| p.name() == name).cloned()
    }

    /// Every provider's breaker, for `/metrics` and the HTTP views to come.
    pub fn breaker_states(&self) -> Vec<BreakerSnapshot> {
        self.providers.iter().map(|p| p.breaker_state()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_env: &str, openai: Option<&str>) -> Config {
        Config {
            node_env: node_env.into(),
            openai_api_key: openai.map(str::to_owned),
            groq_api_key: None,
            anthropic_api_key: None,
            ..Config::default()
        }
    }

    #[test]
    fn development_without_keys_offers_only_local_echo() {
        let providers = Providers::from_config(&config("development", None));
        assert_eq!(providers.names(), vec!["local-echo"]);
        assert!(providers.for_model("local-echo").is_some());
    }

    #[test]
    fn production_without_keys_offers_nothing() {
        let providers = Providers::from_config(&config("production", None));
        assert!(providers.is_empty());
        assert_eq!(providers.default_model(), None);
    }

    #[test]
    fn a_real_key_replaces_local_echo_and_routes_its_models() {
        let mut cfg = config("development", Some("sk-test"));
        cfg.openai_model = "gpt-a, gpt-b".into();
        let providers = Providers::from_config(&cfg);
        assert_eq!(providers.names(), vec!["openai"]);
        assert_eq!(providers.default_model().as_deref(), Some("gpt-a"));
        assert_eq!(providers.for_model("gpt-b").unwrap().name(), "openai");
        assert!(providers.for_model("local-echo").is_none());
    }

    #[test]
    fn a_blank_key_counts_as_unset() {
        let providers = Providers::from_config(&config("development", Some("  ")));
        assert_eq!(providers.names(), vec!["local-echo"]);
    }
}
