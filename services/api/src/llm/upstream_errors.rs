//! How an upstream's error answer becomes ours, in one place. The client gets a status that
//! describes our side and, for a request the upstream rejected, a bounded and sanitised copy of
//! the upstream's `error.message`; never the raw body (it can be any length, and a proxy such as
//! LiteLLM puts its internals in it: exception names, URLs, model groups, tracebacks). The
//! operator gets the body (bounded) in the log under the request id.
//!
//! | upstream | client |
//! |---|---|
//! | 400, 422 | 400 `upstream_rejected`, with the upstream's message (sanitised, bounded) |
//! | 413 | 413 `upstream_rejected`, likewise |
//! | 429 | 429 `upstream_rate_limited`, `Retry-After` passed on when it is a number of seconds |
//! | 429 `insufficient_quota` | 502 `upstream_error` (the operator's upstream account is out of credit) |
//! | 401, 403 | 502 `upstream_auth_failed` (the gateway's upstream key, not the client's) |
//! | anything else (404, other 4xx, 5xx) | 502 `upstream_error` |

use axum::http::{HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::ApiError;

/// At most this much of an error body is read (the rest is never downloaded).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// At most this much of it is logged.
pub const MAX_LOGGED_BYTES: usize = 2048;
/// At most this many characters of the upstream's message reach the client.
pub const MAX_RELAYED_CHARS: usize = 400;
/// A `Retry-After` above this many seconds is capped.
const MAX_RETRY_AFTER_SECS: u32 = 3600;

/// Our error for an upstream's error answer. `upstream_model` is replaced by `public_model` in a
/// relayed message (clients only know the public name).
pub fn to_api_error(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    body: &[u8],
    upstream_model: &str,
    public_model: &str,
) -> ApiError {
    let json = serde_json::from_slice::<Value>(body).ok();
    let error = json.as_ref().map(|v| v.get("error").unwrap_or(v));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
    // `{"error": {"message"}}` (OpenAI, LiteLLM), `{"message"}` (vLLM's older form), `{"error": "..."}`.
    let message = field("message").or_else(|| error.and_then(Value::as_str));
    let relayed = || message.and_then(|m| sanitise(m, upstream_model, public_model)).unwrap_or_default();
    match status.as_u16() {
        400 | 422 => ApiError::UpstreamRejected { status: StatusCode::BAD_REQUEST, message: relayed() },
        413 => ApiError::UpstreamRejected { status: StatusCode::PAYLOAD_TOO_LARGE, message: relayed() },
        429 if field("code") == Some("insufficient_quota") || field("type") == Some("insufficient_quota") => {
            ApiError::UpstreamError { upstream_status: status.as_u16() }
        }
        429 => ApiError::UpstreamRateLimited { retry_after: retry_after.and_then(retry_after_secs) },
        401 | 403 => ApiError::UpstreamAuthFailed { upstream_status: status.as_u16() },
        s => ApiError::UpstreamError { upstream_status: s },
    }
}

/// `Retry-After` in seconds; the HTTP-date form is not passed on.
fn retry_after_secs(value: &HeaderValue) -> Option<u32> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().map(|s| s.min(MAX_RETRY_AFTER_SECS))
}

/// The upstream's message as a client may see it: its first line only (what follows is
/// tracebacks and proxy details), LiteLLM's exception prefixes removed, URLs and key-like words
/// redacted, the upstream model named by its public name, control characters dropped, at most
/// [`MAX_RELAYED_CHARS`]. `None` when nothing is left.
pub fn sanitise(message: &str, upstream_model: &str, public_model: &str) -> Option<String> {
    let mut line = message.trim_start().split(['\n', '\r']).next().unwrap_or_default().trim();
    // `litellm.BadRequestError: OpenAIException - Error code: 400 - ...`
    if line.starts_with("litellm.") {
        line = line.split_once(": ").map_or("", |(_, rest)| rest);
    }
    if let Some((head, rest)) = line.split_once(" - ")
        && !head.contains(' ')
        && head.ends_with("Exception")
    {
        line = rest;
    }
    let words: Vec<String> = line
        .split_whitespace()
        .map(|word| {
            let bare = word.trim_matches(|c: char| !c.is_alphanumeric());
            if word.contains("://") {
                "[url]".to_owned()
            } else if bare.starts_with("sk-") || looks_like_a_secret(bare) {
                "[redacted]".to_owned()
            } else if bare.to_ascii_lowercase().contains("litellm") {
                "[upstream]".to_owned()
            } else if !upstream_model.is_empty() && upstream_model != public_model && word.contains(upstream_model) {
                word.replace(upstream_model, public_model)
            } else {
                word.to_owned()
            }
        })
        .collect();
    let clean: String = words.join(" ").chars().filter(|c| !c.is_control()).collect();
    let mut out: String = clean.chars().take(MAX_RELAYED_CHARS).collect();
    if out.len() < clean.len() {
        out.push('…');
    }
    (!out.is_empty()).then_some(out)
}

/// A long opaque token (a key, a signed URL's signature): 32 or more letters, digits, `-` or
/// `_`, with both letters and digits.
fn looks_like_a_secret(word: &str) -> bool {
    word.len() >= 32
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && word.bytes().any(|b| b.is_ascii_digit())
        && word.bytes().any(|b| b.is_ascii_alphabetic())
}

/// The start of an error body for the operator's log (lossy UTF-8, bounded).
pub fn for_log(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_LOGGED_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(status: u16, body: Value) -> crate::error::ErrorInfo {
        let body = serde_json::to_vec(&body).unwrap();
        to_api_error(StatusCode::from_u16(status).unwrap(), None, &body, "up-secret", "public").info()
    }

    #[test]
    fn maps_each_upstream_status_to_ours() {
        let e = json!({"error": {"message": "context length exceeded"}});
        for (upstream, ours, code) in [
            (400, 400, "upstream_rejected"),
            (422, 400, "upstream_rejected"),
            (413, 413, "upstream_rejected"),
            (429, 429, "upstream_rate_limited"),
            (401, 502, "upstream_auth_failed"),
            (403, 502, "upstream_auth_failed"),
            (404, 502, "upstream_error"),
            (409, 502, "upstream_error"),
            (500, 502, "upstream_error"),
            (503, 502, "upstream_error"),
        ] {
            let info = error(upstream, e.clone());
            assert_eq!((info.status.as_u16(), info.code), (ours, code), "{upstream}");
            let relayed = info.message.contains("context length exceeded");
            assert_eq!(relayed, ours == 400 || ours == 413, "{upstream}: {}", info.message);
        }
        for body in [json!({"message": "bad n"}), json!({"error": "bad n"})] {
            assert!(error(400, body.clone()).message.ends_with(": bad n"), "{body}");
        }
        let quota = error(429, json!({"error": {"message": "out of money", "code": "insufficient_quota"}}));
        assert_eq!((quota.status.as_u16(), quota.code), (502, "upstream_error"));
    }

    #[test]
    fn retry_after_passes_only_as_seconds() {
        assert_eq!(retry_after_secs(&HeaderValue::from_static("12")), Some(12));
        assert_eq!(retry_after_secs(&HeaderValue::from_static("999999")), Some(MAX_RETRY_AFTER_SECS));
        assert_eq!(retry_after_secs(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after_secs(&HeaderValue::from_static("-1")), None);
    }

    #[test]
    fn relayed_messages_lose_proxy_internals() {
        let m = "litellm.BadRequestError: OpenAIException - Error code: 400 - prompt too long for up-secret at \
                 http://10.0.0.5:4000/v1 with key sk-abcdef123456\nReceived Model Group=up-secret\nTraceback (most \
                 recent call last):";
        let out = sanitise(m, "up-secret", "public").unwrap();
        assert_eq!(out, "Error code: 400 - prompt too long for public at [url] with key [redacted]");
        let long = sanitise(&"é\u{7}".repeat(10_000), "x", "y").unwrap();
        assert_eq!(long.chars().count(), MAX_RELAYED_CHARS + 1);
        assert!(!long.contains('\u{7}'));
        assert_eq!(sanitise("\n\nsecond line", "x", "y"), Some("second line".into()));
        assert_eq!(sanitise("   ", "x", "y"), None);
        assert_eq!(
            sanitise("token 0123456789abcdef0123456789abcdef0 refused", "x", "y").unwrap(),
            "token [redacted] refused"
        );
    }
}
