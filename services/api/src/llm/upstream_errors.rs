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

use crate::http::error::ApiError;

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
        429 if out_of_quota(field("code"), field("type"), message) => {
            ApiError::UpstreamError { upstream_status: status.as_u16() }
        }
        429 => ApiError::UpstreamRateLimited { retry_after: retry_after.and_then(retry_after_secs) },
        401 | 403 => ApiError::UpstreamAuthFailed { upstream_status: status.as_u16() },
        s => ApiError::UpstreamError { upstream_status: s },
    }
}

/// The operator's upstream account is out of credit: OpenAI says so in `code`/`type`; LiteLLM
/// puts its own status in `code` and the provider's words in the message.
fn out_of_quota(code: Option<&str>, kind: Option<&str>, message: Option<&str>) -> bool {
    code == Some("insufficient_quota")
        || kind == Some("insufficient_quota")
        || message.is_some_and(|m| m.contains("insufficient_quota") || m.contains("exceeded your current quota"))
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
    // Unicode's line and paragraph separators and NEL end a line too.
    let mut line =
        message.trim_start().split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).next().unwrap_or_default().trim();
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
            if word.contains("://") {
                "[url]".to_owned()
            } else if holds_a_secret(word) {
                "[redacted]".to_owned()
            } else if is_an_address(word) {
                "[address]".to_owned()
            } else if word.to_ascii_lowercase().contains("litellm") {
                "[upstream]".to_owned()
            } else if let Some(named) = rename(word, upstream_model, public_model) {
                named
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

/// A word that carries a key anywhere in it (`api_key=sk-…`, `'sk-…'`, a JWT) or is one: an
/// `sk-` fragment (OpenAI-style keys), a fragment starting `eyJ` (a JWT's encoded header) or a
/// long opaque token (see [`looks_like_a_secret`]).
fn holds_a_secret(word: &str) -> bool {
    let key_fragments = word.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    let base64_fragments = word.split(|c: char| !(c.is_ascii_alphanumeric() || "-_+/=".contains(c)));
    key_fragments.into_iter().any(|f| f.starts_with("sk-") || f.starts_with("eyJ"))
        || base64_fragments.into_iter().any(looks_like_a_secret)
}

/// A long opaque token (a key, a signed URL's signature, a base64 secret): 32 or more letters,
/// digits, `-`, `_`, `+`, `/` or `=`, with both letters and digits.
fn looks_like_a_secret(word: &str) -> bool {
    word.len() >= 32
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_+/=".contains(&b))
        && word.bytes().any(|b| b.is_ascii_digit())
        && word.bytes().any(|b| b.is_ascii_alphabetic())
}

/// An internal address without a scheme: an IPv4 address or `host:port` (`10.0.0.5:4000`,
/// `model-server:8000`), with or without punctuation around it; a bare `12:30` is a time.
fn is_an_address(word: &str) -> bool {
    let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let ipv4 =
        bare.split(['.', ':']).take(4).filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).count() == 4;
    let host_port = bare.rsplit_once(':').is_some_and(|(host, port)| {
        host.bytes().any(|b| b.is_ascii_alphabetic())
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
    });
    ipv4 || host_port
}

/// `word` with the upstream model's name (in any letter case) replaced by the public one.
fn rename(word: &str, upstream_model: &str, public_model: &str) -> Option<String> {
    if upstream_model.is_empty() || upstream_model.eq_ignore_ascii_case(public_model) {
        return None;
    }
    let at = word.to_ascii_lowercase().find(&upstream_model.to_ascii_lowercase())?;
    Some(format!("{}{public_model}{}", &word[..at], &word[at + upstream_model.len()..]))
}

/// The start of an error body for the operator's log (lossy UTF-8, bounded).
pub fn for_log(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_LOGGED_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(status: u16, body: Value) -> crate::http::error::ErrorInfo {
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
        // LiteLLM's shape: its own status as the code, the provider's words in the message.
        let quota = error(
            429,
            json!({"error": {"message": "litellm.RateLimitError: OpenAIException - You exceeded your current quota", "code": "429"}}),
        );
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
        // Keys inside a word, JWTs, base64 secrets; addresses without a scheme; other line ends.
        let m = "bad api_key=sk-proj-abc1 key:'sk-x' jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx.c2ln \
                 aws wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1 at 10.0.0.5 or model-server:8000, for UP-SECRET\u{2028}Traceback";
        assert_eq!(
            sanitise(m, "up-secret", "public").unwrap(),
            "bad [redacted] [redacted] jwt [redacted] aws [redacted] at [address] or [address] for public"
        );
        // Ordinary words stay: a task id, a ratio, a time.
        assert_eq!(sanitise("task-12 took 1:2 of 12:30", "x", "y").unwrap(), "task-12 took 1:2 of 12:30");
    }
}
