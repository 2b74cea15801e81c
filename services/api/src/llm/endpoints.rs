//! What differs between the LLM endpoints, in one type: which fields a request may carry and
//! must carry, its output cap (the hold's worst case), the upstream path, and where the usage
//! sits in the answer. The call engine (`llm::call`) is one path for all of them: hold, upstream
//! call, usage extraction by [`Endpoint`], settlement.

use serde_json::{Map, Value};

use super::{families, request_fields};
use crate::{
    http::error::ApiError,
    llm::catalog::{CatalogEndpoint, Model, Usage},
};

/// The largest output cap a request may ask for (above it: 400).
const MAX_REQUESTED_TOKENS: u64 = i32::MAX as u64;
/// Most `n` (choices) or `best_of` of one call.
const MAX_CHOICES: u64 = 16;
/// Most inputs of one embeddings call (OpenAI's own limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;
/// Legacy completions' `max_tokens` when the request sets none (OpenAI's default).
const COMPLETIONS_DEFAULT_MAX_TOKENS: u64 = 16;

/// An LLM endpoint; `label()` is the `endpoint` metric label (a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    ConversationMessage,
}

impl Endpoint {
    pub const ALL: [Self; 6] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Responses,
        Self::Messages,
        Self::ConversationMessage,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::ConversationMessage => "conversation_message",
            other => other.catalog().as_str(),
        }
    }

    /// The catalog endpoint a model must serve for this one (a conversation is a chat).
    pub fn catalog(self) -> CatalogEndpoint {
        match self {
            Self::ChatCompletions | Self::ConversationMessage => CatalogEndpoint::ChatCompletions,
            Self::Completions => CatalogEndpoint::Completions,
            Self::Embeddings => CatalogEndpoint::Embeddings,
            Self::Responses => CatalogEndpoint::Responses,
            Self::Messages => CatalogEndpoint::Messages,
        }
    }

    /// The path under the upstream's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::ConversationMessage => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
        }
    }

    /// The request fields this endpoint forwards upstream.
    pub fn fields(self) -> &'static request_fields::Family {
        match self {
            Self::ChatCompletions | Self::ConversationMessage => &request_fields::CHAT_COMPLETIONS,
            Self::Completions => &families::COMPLETIONS,
            Self::Embeddings => &families::EMBEDDINGS,
            Self::Responses => &families::RESPONSES,
            Self::Messages => &families::MESSAGES,
        }
    }

    /// Streams whose usage must be asked for (`stream_options.include_usage`); the others
    /// always report it.
    pub fn asks_for_stream_usage(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::ConversationMessage | Self::Completions)
    }

    /// The request's own fields, checked before anything is held: the allowlist, then what the
    /// endpoint requires.
    pub fn validate(self, body: &mut Map<String, Value>) -> Result<(), ApiError> {
        request_fields::check(self.fields(), body)?;
        let invalid = |message: String| Err(ApiError::bad_request("invalid_request_body", message));
        match self {
            Self::ChatCompletions | Self::ConversationMessage | Self::Messages => {
                if body.get("messages").and_then(Value::as_array).is_none_or(|a| a.is_empty()) {
                    return invalid("`messages` is required and must be a non-empty array".into());
                }
            }
            Self::Completions => prompt_like(body.get("prompt"), "prompt", usize::MAX)?,
            Self::Embeddings => prompt_like(body.get("input"), "input", MAX_EMBEDDING_INPUTS)?,
            Self::Responses => match body.get("input") {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::Array(a)) if !a.is_empty() => {}
                _ => return invalid("`input` is required: a non-empty string or a non-empty array of items".into()),
            },
        }
        if self == Self::Messages && body.get("max_tokens").is_none_or(Value::is_null) {
            return Err(ApiError::bad_request(
                "missing_max_tokens",
                "`max_tokens` is required (the Messages API has no default output limit)",
            ));
        }
        Ok(())
    }

    /// The most output tokens the call may produce (all choices together), for the hold. The
    /// per-choice cap is written into the body, so the upstream cannot exceed it.
    pub fn output_cap(self, body: &mut Map<String, Value>, model: &Model) -> Result<u64, ApiError> {
        let max = model.max_output_tokens;
        match self {
            Self::ChatCompletions | Self::ConversationMessage => {
                Ok(capped(body, &["max_completion_tokens", "max_tokens"], max, max)? * choices(body, &["n"])?)
            }
            Self::Completions => {
                let default = COMPLETIONS_DEFAULT_MAX_TOKENS.min(max);
                Ok(capped(body, &["max_tokens"], default, max)? * choices(body, &["n", "best_of"])?)
            }
            Self::Embeddings => Ok(0),
            Self::Responses => capped(body, &["max_output_tokens"], max, max),
            Self::Messages => capped(body, &["max_tokens"], max, max),
        }
    }

    /// The usage of a non-streaming answer, as reported.
    pub fn usage(self, answer: &Value) -> Option<Usage> {
        let u = answer.get("usage")?;
        let count = |k: &str| u.get(k).and_then(Value::as_u64);
        match self {
            Self::ChatCompletions | Self::ConversationMessage | Self::Completions => {
                Some(Usage::new(count("prompt_tokens")?, count("completion_tokens")?))
            }
            Self::Embeddings => Some(Usage::new(count("prompt_tokens")?, 0)),
            Self::Responses => Some(Usage::new(count("input_tokens")?, count("output_tokens")?)),
            Self::Messages => anthropic_usage(u),
        }
    }

    /// Characters of the prompt, for an estimate when the upstream reports no usage.
    pub fn prompt_chars(self, body: &Map<String, Value>) -> usize {
        let len = |k: &str| body.get(k).map_or(0, |v| v.to_string().len());
        match self {
            Self::ChatCompletions | Self::ConversationMessage => len("messages"),
            Self::Messages => len("messages") + len("system"),
            Self::Completions => len("prompt"),
            Self::Embeddings => len("input"),
            Self::Responses => len("input") + len("instructions"),
        }
    }

    /// Characters of a non-streaming answer's output, for an estimate.
    pub fn output_chars(self, answer: &Value) -> usize {
        let text = match self {
            Self::ChatCompletions | Self::ConversationMessage => answer.pointer("/choices/0/message/content"),
            Self::Completions => answer.pointer("/choices/0/text"),
            Self::Embeddings => None,
            Self::Responses => answer.get("output"),
            Self::Messages => answer.get("content"),
        };
        text.map_or(0, |t| t.as_str().map_or_else(|| t.to_string().len(), str::len))
    }
}

/// Anthropic's usage object: `input_tokens` excludes the cache reads and writes, reported apart.
pub fn anthropic_usage(u: &Value) -> Option<Usage> {
    let count = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage {
        input: u.get("input_tokens")?.as_u64()?,
        output: u.get("output_tokens")?.as_u64()?,
        cache_read: count("cache_read_input_tokens"),
        cache_creation: count("cache_creation_input_tokens"),
    })
}

/// A prompt or embeddings input: a non-empty string, or a non-empty array (of at most `max`
/// items) of non-empty strings, of token ids, or of non-empty arrays of token ids.
fn prompt_like(value: Option<&Value>, field: &str, max: usize) -> Result<(), ApiError> {
    let invalid = |why: String| Err(ApiError::bad_request("invalid_request_body", why));
    let items = match value {
        Some(Value::String(s)) if !s.is_empty() => return Ok(()),
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::String(_)) | Some(Value::Array(_)) => return invalid(format!("`{field}` must not be empty")),
        _ => {
            return invalid(format!(
                "`{field}` is required: a string, an array of strings, an array of token ids or an array of token-id arrays"
            ));
        }
    };
    if items.len() > max {
        return invalid(format!("`{field}` has {} items; at most {max} are accepted in one request", items.len()));
    }
    let token_ids = |a: &[Value]| !a.is_empty() && a.iter().all(|t| t.as_u64().is_some_and(|t| t <= u32::MAX as u64));
    let ok = items.iter().all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
        || token_ids(items)
        || items.iter().all(|i| i.as_array().is_some_and(|a| token_ids(a)));
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "`{field}` items must all be non-empty strings, all token ids, or all non-empty arrays of token ids"
        ))
    }
}

/// The per-choice cap: the smallest of the present `fields` (400 when one is not a positive
/// integer) or `default`, at most `max`; written back into each present field (into the first
/// field's last alternative, the classic `max_tokens`, when none was present).
fn capped(body: &mut Map<String, Value>, fields: &[&'static str], default: u64, max: u64) -> Result<u64, ApiError> {
    let mut requested: Option<u64> = None;
    let mut present = Vec::new();
    for &field in fields {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64().filter(|n| (1..=MAX_REQUESTED_TOKENS).contains(n)) {
                Some(n) => {
                    requested = Some(requested.map_or(n, |r| r.min(n)));
                    present.push(field);
                }
                None => {
                    return Err(ApiError::bad_request(
                        "invalid_max_tokens",
                        format!("`{field}` must be a positive integer (at most {MAX_REQUESTED_TOKENS})"),
                    ));
                }
            },
        }
    }
    let cap = requested.unwrap_or(default).min(max);
    if present.is_empty() {
        present.push(fields[fields.len() - 1]);
    }
    for field in present {
        body.insert(field.into(), cap.into());
    }
    Ok(cap)
}

/// How many outputs the call produces: the largest of `fields` (`n`, `best_of`), 1 by default.
fn choices(body: &Map<String, Value>, fields: &[&str]) -> Result<u64, ApiError> {
    let mut most = 1;
    for &field in fields {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v.as_u64().filter(|n| (1..=MAX_CHOICES).contains(n)).ok_or_else(|| {
                    ApiError::bad_request("invalid_n", format!("`{field}` must be an integer from 1 to {MAX_CHOICES}"))
                })?;
                most = most.max(n);
            }
        }
    }
    Ok(most)
}

/// An upper bound of the prompt's tokens for the hold: half the bytes of the request as sent
/// (`body` serialised, `request_bytes` long; a token is rarely shorter than two bytes of its JSON
/// text, usual text is about four per token), plus a bound per image or other non-text part.
pub fn prompt_token_bound(body: &Map<String, Value>, request_bytes: usize) -> u64 {
    request_bytes.div_ceil(2) as u64 + NON_TEXT_PART_TOKENS * non_text_parts(body)
}

/// Bound of one image (or audio, file) content part: a short URL can stand for an image that
/// a vision model bills as hundreds to a few thousand tokens.
pub const NON_TEXT_PART_TOKENS: u64 = 4096;

/// Content part types that stand for more tokens than their JSON text (every family's names).
const NON_TEXT_TYPES: &[&str] =
    &["image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "document"];

fn non_text_parts(body: &Map<String, Value>) -> u64 {
    let items = ["messages", "input"].into_iter().filter_map(|k| body.get(k).and_then(Value::as_array)).flatten();
    items
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str).is_some_and(|t| NON_TEXT_TYPES.contains(&t)))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn model(max: u64) -> std::sync::Arc<Model> {
        let toml = format!(
            "[[models]]\nname = \"m\"\nupstream = \"http://u/v1\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\nmax_output_tokens = {max}\n"
        );
        crate::llm::catalog::Catalog::parse(&toml, |_| None).unwrap().get("m").unwrap().clone()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_worst_case_counts_every_choice_and_every_image() {
        let model = model(100);
        let mut body = obj(json!({"messages": [], "n": 3, "max_tokens": 50}));
        assert_eq!(Endpoint::ChatCompletions.output_cap(&mut body, &model).unwrap(), 150, "3 choices of 50");
        assert_eq!(body["max_tokens"], 50, "the per-choice cap goes upstream");
        for bad in [json!(0), json!(17), json!("2")] {
            let mut body = obj(json!({"messages": [], "n": bad}));
            assert!(Endpoint::ChatCompletions.output_cap(&mut body, &model).is_err(), "n = {bad}");
        }
        let text = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let image = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]});
        let bound = |v: &Value| prompt_token_bound(v.as_object().unwrap(), v.to_string().len());
        let (t, i) = (bound(&text), bound(&image));
        assert!(i >= t + NON_TEXT_PART_TOKENS, "an image part is bounded by {NON_TEXT_PART_TOKENS} tokens: {t} {i}");
    }

    #[test]
    fn each_endpoint_caps_its_own_field() {
        let model = model(100);
        let mut b = obj(json!({"prompt": "x", "best_of": 4, "n": 2}));
        assert_eq!(Endpoint::Completions.output_cap(&mut b, &model).unwrap(), 16 * 4, "OpenAI's default 16");
        assert_eq!(b["max_tokens"], 16);
        let mut b = obj(json!({"input": "x", "max_output_tokens": 500}));
        assert_eq!(Endpoint::Responses.output_cap(&mut b, &model).unwrap(), 100);
        assert_eq!(b["max_output_tokens"], 100);
        let mut b = obj(json!({"input": "x"}));
        assert_eq!(Endpoint::Embeddings.output_cap(&mut b, &model).unwrap(), 0);
        assert!(!b.contains_key("max_tokens"));
    }

    #[test]
    fn inputs_are_checked_before_anything_is_held() {
        let code = |e: Endpoint, v: Value| e.validate(&mut obj(v)).err().map(|e| e.info().code);
        assert_eq!(code(Endpoint::Embeddings, json!({"input": ""})), Some("invalid_request_body"));
        assert_eq!(code(Endpoint::Embeddings, json!({"input": []})), Some("invalid_request_body"));
        assert_eq!(code(Endpoint::Embeddings, json!({"input": ["a", 1]})), Some("invalid_request_body"));
        assert_eq!(
            code(Endpoint::Embeddings, json!({"input": vec!["a"; MAX_EMBEDDING_INPUTS + 1]})),
            Some("invalid_request_body")
        );
        assert_eq!(code(Endpoint::Embeddings, json!({"input": vec!["a"; MAX_EMBEDDING_INPUTS]})), None);
        assert_eq!(code(Endpoint::Embeddings, json!({"input": [[1, 2], [3]]})), None);
        assert_eq!(code(Endpoint::Completions, json!({"prompt": [1, 2, 3]})), None);
        assert_eq!(code(Endpoint::Completions, json!({})), Some("invalid_request_body"));
        assert_eq!(code(Endpoint::Responses, json!({"input": ""})), Some("invalid_request_body"));
        assert_eq!(
            code(Endpoint::Messages, json!({"messages": [{"role": "user", "content": "x"}]})),
            Some("missing_max_tokens")
        );
    }

    #[test]
    fn usage_is_read_where_each_endpoint_reports_it() {
        let u = |e: Endpoint, v: Value| e.usage(&v);
        assert_eq!(
            u(Endpoint::Embeddings, json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}})),
            Some(Usage::new(8, 0))
        );
        assert_eq!(
            u(Endpoint::Responses, json!({"usage": {"input_tokens": 3, "output_tokens": 4}})),
            Some(Usage::new(3, 4))
        );
        let anthropic = json!({"usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}});
        assert_eq!(
            u(Endpoint::Messages, anthropic),
            Some(Usage { input: 3, output: 4, cache_read: 100, cache_creation: 7 })
        );
        assert_eq!(u(Endpoint::Completions, json!({"usage": {"prompt_tokens": 3}})), None);
        let labels: Vec<&str> = Endpoint::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(
            labels,
            ["chat_completions", "completions", "embeddings", "responses", "messages", "conversation_message"]
        );
    }
}
