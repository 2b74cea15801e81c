//! The rate limits of a key, a user or a model (the contract the limiter checks against).

/// Per-minute and concurrency limits; `None` is "no limit".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
}
