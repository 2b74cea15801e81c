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
    output_usd_per_mtok: f64,
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
    pub max_output_tokens: u64,
    /// The default rate limits of each key on this model (none: only the key's and the
    /// user's apply).
    pub limits: RateLimits,
}

impl Model {
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Decimal {
        let per_token = Decimal::from(1_000_000u32);
        // The ledger keeps 12 decimals: round here, so that a row and the balance it changes
        // carry the same amount (away from zero: never below the exact cost).
        ((Decimal::from(input_tokens) * self.input_usd_per_mtok
            + Decimal::from(output_tokens) * self.output_usd_per_mtok)
            / per_token)
            .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::AwayFromZero)
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

pub fn chat_completions_url(base: &str) -> String {
    format!("{}/chat/completions", base.trim_end_matches('/'))
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
                output_usd_per_mtok: price(entry.output_usd_per_mtok, "output_usd_per_mtok")?,
                max_output_tokens,
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

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        [[models]]
        name = "gpt-4o-mini"
        upstream = "http://litellm:4000/v1/"
        upstream_model = "openai/gpt-4o-mini"
        api_key_env = "TEST_KEY"
        input_usd_per_mtok = 0.15
        output_usd_per_mtok = 0.60
    "#;

    #[test]
    fn parses_and_prices_exactly() {
        let c = Catalog::parse(SAMPLE, |_| Some("k".into())).unwrap();
        let m = c.get("gpt-4o-mini").unwrap();
        assert_eq!(m.target, Target::Url("http://litellm:4000/v1".into()));
        assert_eq!(chat_completions_url("http://litellm:4000/v1"), "http://litellm:4000/v1/chat/completions");
        assert_eq!(m.upstream_model, "openai/gpt-4o-mini");
        assert_eq!(m.api_key.as_ref().unwrap().expose(), "k");
        // 1,000 input and 500 output tokens: 0.00015 + 0.0003
        assert_eq!(m.cost(1000, 500), "0.00045".parse::<Decimal>().unwrap());
        assert_eq!(m.cost(1, 0), "0.00000015".parse::<Decimal>().unwrap());
        assert!(c.get("unknown").is_none());
    }

    #[test]
    fn rejects_bad_catalogs() {
        assert!(Catalog::parse(SAMPLE, |_| None).is_err(), "missing key variable");
        assert!(Catalog::parse(&SAMPLE.replace("http://", "ftp://"), |_| Some("k".into())).is_err());
        assert!(Catalog::parse(&format!("{SAMPLE}{SAMPLE}"), |_| Some("k".into())).is_err(), "duplicate");
        assert!(Catalog::parse(&SAMPLE.replace("0.15", "-1.0"), |_| Some("k".into())).is_err());
        assert!(Catalog::parse("[[models]]\nname = \"x\"\nbogus = 1\n", |_| None).is_err());
        let unpriced = SAMPLE.replace("output_usd_per_mtok = 0.60", "");
        let err = Catalog::parse(&unpriced, |_| Some("k".into())).unwrap_err();
        assert!(format!("{err:#}").contains("output_usd_per_mtok"), "a model with no price does not load: {err:#}");
        assert!(Catalog::parse(&format!("{SAMPLE}max_output_tokens = 0\n"), |_| Some("k".into())).is_err());
        let capped = Catalog::parse(&format!("{SAMPLE}max_output_tokens = 512\n"), |_| Some("k".into())).unwrap();
        assert_eq!(capped.get("gpt-4o-mini").unwrap().max_output_tokens, 512);
        let default = Catalog::parse(SAMPLE, |_| Some("k".into())).unwrap();
        assert_eq!(default.get("gpt-4o-mini").unwrap().max_output_tokens, DEFAULT_MAX_OUTPUT_TOKENS);
        let both = SAMPLE.replace("upstream_model", "gpu_pool = \"a\"\nupstream_model");
        assert!(Catalog::parse(&both, |_| Some("k".into())).is_err(), "upstream and gpu_pool");
        let limited =
            Catalog::parse(&format!("{SAMPLE}[models.limits]\nrequests_per_minute = 60\nmax_concurrent = 2\n"), |_| {
                Some("k".into())
            })
            .unwrap();
        let limits = limited.get("gpt-4o-mini").unwrap().limits;
        assert_eq!(
            (limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent),
            (Some(60), None, Some(2))
        );
        assert!(
            Catalog::parse(&format!("{SAMPLE}[models.limits]\nmax_concurrent = 0\n"), |_| Some("k".into())).is_err()
        );
        assert!(Catalog::parse(&format!("{SAMPLE}[models.limits]\nrpm = 1\n"), |_| Some("k".into())).is_err());
        let pool = SAMPLE.replace("upstream = \"http://litellm:4000/v1/\"", "gpu_pool = \"a100\"");
        let c = Catalog::parse(&pool, |_| Some("k".into())).unwrap();
        assert_eq!(c.get("gpt-4o-mini").unwrap().target, Target::Pool("a100".into()));
    }
}
