//! The `x-ratelimit-*` headers of an LLM response: the tightest requests and tokens buckets of
//! its call, in OpenAI's names and value formats.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// One limit's state for the `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the oldest call in the window leaves it (the next unit frees up).
    pub reset: Duration,
}

impl Window {
    /// The tighter of `current` and a new bucket (the one with less left).
    pub fn tighter(current: Option<Self>, limit: u64, remaining: u64, reset: Duration) -> Option<Self> {
        match current {
            Some(c) if c.remaining <= remaining => Some(c),
            _ => Some(Self { limit, remaining, reset }),
        }
    }
}

/// The tightest request and token buckets of a call, for the response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateStatus {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateStatus {
    /// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (name, window) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(w) = window else { continue };
            let set = |headers: &mut HeaderMap, what: &str, value: String| {
                let name = http::HeaderName::try_from(format!("x-ratelimit-{what}-{name}")).expect("valid header name");
                headers.insert(name, HeaderValue::try_from(value).expect("ASCII header value"));
            };
            set(headers, "limit", w.limit.to_string());
            set(headers, "remaining", w.remaining.to_string());
            set(headers, "reset", format_reset(w.reset));
        }
    }
}

/// OpenAI's duration format: `250ms`, `1s`, `17.5s`, `1m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, rest) = (ms / 60_000, ms % 60_000);
    let secs = if rest % 1000 == 0 { format!("{}", rest / 1000) } else { format!("{}", rest as f64 / 1000.0) };
    if minutes > 0 { format!("{minutes}m{secs}s") } else { format!("{secs}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openais() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_millis(17_500)), "17.5s");
        assert_eq!(format_reset(Duration::from_secs(60)), "1m0s");
        assert_eq!(format_reset(Duration::from_secs(366)), "6m6s");
    }
}
