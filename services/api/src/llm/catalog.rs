//! The model catalog (`PR_MODELS_FILE`, TOML): which public model names exist, where each is
//! served, and its prices. Model names are the only client-chosen values that become metric
//! labels, and only after they matched this closed set.

use std::{collections::HashMap, path::Path, sync::Arc};

use anyhow::Context;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::{accounts::rate_limits::RateLimits, config::Secret};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    /// An OpenAI-compatible base URL...
    upstream: Option<String>,
    /// ...or a pool of registered GPU nodes (exactly one of the two).
    gpu_pool: Option<String>,
    upstream_model: Option<String>,
    api_key_env: Option<String>,
    input_usd_per_mtok: f64,
    /// Required unless the model serves embeddings only (they produce no output tokens).
    output_usd_per_mtok: Option<f64>,
    /// Anthropic prompt caching: tokens read from / written to the cache (required for
    /// `api = "anthropic"`, whose usage reports them apart from `input_tokens`).
    cache_read_usd_per_mtok: Option<f64>,
    cache_creation_usd_per_mtok: Option<f64>,
    /// Which endpoints the model serves (default: chat completions only).
    endpoints: Option<Vec<String>>,
    /// The upstream's API style: "openai" (default) or "anthropic".
    api: Option<String>,
    /// Most output tokens of one call (the request's max_tokens is capped by it, and the cap is
    /// sent upstream); the hold of a call's worst case is priced with it.
    max_output_tokens: Option<u64>,
    /// The default rate limits of each key on this model (`[models.limits]`).
    #[serde(default)]
    limits: RateLimits,
}

/// `max_output_tokens` of a model whose catalog entry sets none.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

#[derive(Debug)]
pub struct Model {
    /// Public name, also the `model` label value (leaked once: the catalog is a closed set).
    pub name: &'static str,
    pub target: Target,
    pub upstream_model: String,
    pub api_key: Option<Secret>,
    pub input_usd_per_mtok: Decimal,
    pub output_usd_per_mtok: Decimal,
    pub cache_read_usd_per_mtok: Decimal,
    pub cache_creation_usd_per_mtok: Decimal,
    pub max_output_tokens: u64,
    /// The endpoints it serves (a closed set, in catalog order).
    pub endpoints: Vec<CatalogEndpoint>,
    pub api: ApiStyle,
    /// The default rate limits of each key on this model (none: only the key's and the
    /// user's apply).
    pub limits: RateLimits,
}

/// The endpoints a catalog entry may list (`endpoints = [...]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogEndpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

impl CatalogEndpoint {
    pub const ALL: [Self; 5] =
        [Self::ChatCompletions, Self::Completions, Self::Embeddings, Self::Responses, Self::Messages];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
        }
    }

    /// The public route of the endpoint (named in the error for a model that does not serve it).
    pub fn route(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// How the upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiStyle {
    /// OpenAI-compatible (`Authorization: Bearer`; LiteLLM, vLLM, OpenAI).
    OpenAi,
    /// Anthropic-compatible (`x-api-key`, `anthropic-version`; serves `/v1/messages` only).
    Anthropic,
}

/// Tokens of one call as an upstream reports them. `input` excludes the cache counts (Anthropic
/// reports those apart; OpenAI counts cached tokens inside `input`, billed at the input price).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

impl Usage {
    pub fn new(input: u64, output: u64) -> Self {
        Self { input, output, ..Self::default() }
    }

    /// Every prompt token, cached or not: what the ledger's `input_tokens` records.
    pub fn all_input(&self) -> u64 {
        self.input.saturating_add(self.cache_read).saturating_add(self.cache_creation)
    }
}

impl Model {
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Decimal {
        self.usage_cost(&Usage::new(input_tokens, output_tokens))
    }

    /// Each count at its own price: input, output, cache reads, cache writes.
    pub fn usage_cost(&self, usage: &Usage) -> Decimal {
        let per_token = Decimal::from(1_000_000u32);
        // The ledger keeps 12 decimals: round here, so that a row and the balance it changes
        // carry the same amount (away from zero: never below the exact cost).
        ((Decimal::from(usage.input) * self.input_usd_per_mtok
            + Decimal::from(usage.output) * self.output_usd_per_mtok
            + Decimal::from(usage.cache_read) * self.cache_read_usd_per_mtok
            + Decimal::from(usage.cache_creation) * self.cache_creation_usd_per_mtok)
            / per_token)
            .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::AwayFromZero)
    }

    /// The worst case of `prompt` input tokens and `output` output tokens: every prompt token at
    /// the dearest of the input prices (an Anthropic cache write costs more than plain input).
    pub fn worst_cost(&self, prompt: u64, output: u64) -> Decimal {
        let dearest = self.input_usd_per_mtok.max(self.cache_read_usd_per_mtok).max(self.cache_creation_usd_per_mtok);
        let usage = if dearest == self.input_usd_per_mtok {
            Usage::new(prompt, output)
        } else if dearest == self.cache_creation_usd_per_mtok {
            Usage { cache_creation: prompt, output, ..Usage::default() }
        } else {
            Usage { cache_read: prompt, output, ..Usage::default() }
        };
        self.usage_cost(&usage)
    }

    pub fn serves(&self, endpoint: CatalogEndpoint) -> bool {
        self.endpoints.contains(&endpoint)
    }
}

/// Where a model is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// OpenAI-compatible base URL, without a trailing slash (`http://litellm:4000/v1`).
    Url(String),
    /// The healthy nodes of a GPU pool (least utilized first, ties round-robin).
    Pool(String),
}

/// `path` (`/chat/completions`, `/messages`, ...) under an upstream's base URL.
pub fn endpoint_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

pub fn validate_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2048
        && !url.chars().any(char::is_whitespace)
}

#[derive(Debug, Default)]
pub struct Catalog {
    models: Vec<Arc<Model>>,
    by_name: HashMap<String, Arc<Model>>,
}

impl Catalog {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the model catalog {}", path.display()))?;
        Self::parse(&text, |var| std::env::var(var).ok())
            .with_context(|| format!("in the model catalog {}", path.display()))
    }

    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let file: CatalogFile = toml::from_str(text)?;
        let mut catalog = Self::default();
        for entry in file.models {
            anyhow::ensure!(
                !entry.name.is_empty() && entry.name.len() <= 128 && entry.name.chars().all(|c| c.is_ascii_graphic()),
                "model name {:?} must be 1-128 printable ASCII characters",
                entry.name
            );
            anyhow::ensure!(!catalog.by_name.contains_key(&entry.name), "model {:?} is listed twice", entry.name);
            let target = match (&entry.upstream, &entry.gpu_pool) {
                (Some(url), None) => {
                    anyhow::ensure!(validate_http_url(url), "model {:?}: upstream must be an http(s) URL", entry.name);
                    Target::Url(url.trim_end_matches('/').to_owned())
                }
                (None, Some(pool)) => {
                    anyhow::ensure!(!pool.is_empty(), "model {:?}: gpu_pool must not be empty", entry.name);
                    Target::Pool(pool.clone())
                }
                _ => anyhow::bail!("model {:?}: set exactly one of `upstream` and `gpu_pool`", entry.name),
            };
            let api_key =
                match &entry.api_key_env {
                    Some(var) => Some(Secret::new(env(var).filter(|v| !v.is_empty()).with_context(|| {
                        format!("model {:?}: api_key_env names {var}, which is not set", entry.name)
                    })?)),
                    None => None,
                };
            let price = |v: f64, what: &str| -> anyhow::Result<Decimal> {
                anyhow::ensure!(
                    v.is_finite() && v >= 0.0,
                    "model {:?}: {what} must be a non-negative number",
                    entry.name
                );
                // Via the shortest decimal text of the float, so 0.15 is exactly 0.15.
                Ok(v.to_string().parse::<Decimal>()?)
            };
            let (endpoints, api) = endpoints_and_api(&entry)?;
            let optional = |v: Option<f64>, what: &str, needed: bool| -> anyhow::Result<Decimal> {
                match v {
                    Some(v) => price(v, what),
                    None if needed => anyhow::bail!("model {:?}: {what} is required", entry.name),
                    None => Ok(Decimal::ZERO),
                }
            };
            let embeddings_only = endpoints == [CatalogEndpoint::Embeddings];
            let anthropic = api == ApiStyle::Anthropic;
            let max_output_tokens = entry.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
            anyhow::ensure!(
                (1..=10_000_000).contains(&max_output_tokens),
                "model {:?}: max_output_tokens must be between 1 and 10000000",
                entry.name
            );
            entry.limits.validate().map_err(|e| anyhow::anyhow!("model {:?}: {e}", entry.name))?;
            let model = Arc::new(Model {
                name: Box::leak(entry.name.clone().into_boxed_str()),
                target,
                upstream_model: entry.upstream_model.unwrap_or_else(|| entry.name.clone()),
                api_key,
                input_usd_per_mtok: price(entry.input_usd_per_mtok, "input_usd_per_mtok")?,
                output_usd_per_mtok: optional(entry.output_usd_per_mtok, "output_usd_per_mtok", !embeddings_only)?,
                cache_read_usd_per_mtok: optional(entry.cache_read_usd_per_mtok, "cache_read_usd_per_mtok", anthropic)?,
                cache_creation_usd_per_mtok: optional(
                    entry.cache_creation_usd_per_mtok,
                    "cache_creation_usd_per_mtok",
                    anthropic,
                )?,
                max_output_tokens,
                endpoints,
                api,
                limits: entry.limits,
            });
            catalog.by_name.insert(entry.name, model.clone());
            catalog.models.push(model);
        }
        Ok(catalog)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name)
    }

    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }
}

/// The entry's endpoints (closed set, no duplicates, default chat completions) and API style;
/// an Anthropic-style upstream serves `/v1/messages` only, and only it serves that route (the
/// gateway does not translate between the two families).
fn endpoints_and_api(entry: &ModelEntry) -> anyhow::Result<(Vec<CatalogEndpoint>, ApiStyle)> {
    let name = &entry.name;
    let api = match entry.api.as_deref() {
        None | Some("openai") => ApiStyle::OpenAi,
        Some("anthropic") => ApiStyle::Anthropic,
        Some(other) => anyhow::bail!("model {name:?}: api {other:?} is not \"openai\" or \"anthropic\""),
    };
    let default = match api {
        ApiStyle::OpenAi => vec!["chat_completions".to_owned()],
        ApiStyle::Anthropic => vec!["messages".to_owned()],
    };
    let mut endpoints = Vec::new();
    for value in entry.endpoints.as_ref().unwrap_or(&default) {
        let endpoint = CatalogEndpoint::parse(value).with_context(|| {
            let known: Vec<&str> = CatalogEndpoint::ALL.iter().map(|e| e.as_str()).collect();
            format!("model {name:?}: endpoint {value:?} is not one of {}", known.join(", "))
        })?;
        anyhow::ensure!(!endpoints.contains(&endpoint), "model {name:?}: endpoint {value:?} is listed twice");
        endpoints.push(endpoint);
    }
    anyhow::ensure!(!endpoints.is_empty(), "model {name:?}: endpoints must not be empty");
    let messages_only = endpoints == [CatalogEndpoint::Messages];
    match api {
        ApiStyle::Anthropic => anyhow::ensure!(
            messages_only,
            "model {name:?}: an api = \"anthropic\" upstream serves endpoints = [\"messages\"] only"
        ),
        ApiStyle::OpenAi => anyhow::ensure!(
            !endpoints.contains(&CatalogEndpoint::Messages),
            "model {name:?}: the messages endpoint needs api = \"anthropic\""
        ),
    }
    Ok((endpoints, api))
}

#[cfg(test)]
mod tests;
