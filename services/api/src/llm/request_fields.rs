//! Which top-level request fields are forwarded to an upstream: the documented OpenAI parameters
//! of each endpoint family, and nothing else. The upstream is usually LiteLLM, called with its
//! master key, where fields such as `api_base`, `api_key`, `mock_response`, `fallbacks` or
//! `metadata` steer the proxy itself (where the call goes, with which key, what is logged); a
//! client must not reach them. A field outside the list is refused (400 `unsupported_parameter`,
//! naming it and why) rather than dropped, so a client learns at once that it had no effect;
//! a field whose value is `null` says nothing and is dropped silently (some SDKs send unset
//! fields as `null`).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The fields an endpoint family forwards.
pub struct Family {
    /// Named in error messages.
    pub name: &'static str,
    pub forwarded: &'static [&'static str],
}

/// `POST /v1/chat/completions` (and the conversation path, which builds such a body). The
/// current OpenAI Chat Completions parameters, less those in [`REFUSED`].
pub const CHAT_COMPLETIONS: Family = Family {
    name: "Chat Completions",
    forwarded: &[
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
    ],
};

/// Fields refused for a reason of their own (every other unlisted field: "not a parameter of
/// this endpoint"). Names ending in `*` are prefixes.
const REFUSED: &[(&str, &str)] = &[
    ("metadata", "steers the upstream proxy's logging and routing"),
    ("store", "would store the conversation in the operator's upstream account"),
    ("service_tier", "changes the upstream's price, which the catalog fixes"),
    ("web_search_options", "adds upstream charges the catalog does not price"),
    ("api_base", STEERS),
    ("api_key", STEERS),
    ("api_version", STEERS),
    ("base_url", STEERS),
    ("custom_llm_provider", STEERS),
    ("extra_headers", STEERS),
    ("fallbacks", STEERS),
    ("mock_response", STEERS),
    ("num_retries", STEERS),
    ("timeout", STEERS),
    ("litellm_*", STEERS),
];

const STEERS: &str = "steers the upstream proxy";

/// Most refused fields named in one error (the rest are counted).
const MAX_NAMED: usize = 10;
/// A client's field name is shown at most this long.
const MAX_NAME_CHARS: usize = 64;

/// Drops `null` fields the family does not forward; refuses the request when any other such
/// field is present. Called before anything is held or sent.
pub fn check(family: &Family, body: &mut Map<String, Value>) -> Result<(), ApiError> {
    body.retain(|k, v| !v.is_null() || family.forwarded.contains(&k.as_str()));
    let mut refused: Vec<&str> = body.keys().map(String::as_str).filter(|k| !family.forwarded.contains(k)).collect();
    if refused.is_empty() {
        return Ok(());
    }
    refused.sort_unstable();
    let mut named: Vec<String> = refused
        .iter()
        .take(MAX_NAMED)
        .map(|k| {
            let name: String = k.chars().filter(|c| !c.is_control()).take(MAX_NAME_CHARS).collect();
            format!("`{name}` ({})", reason(family, k))
        })
        .collect();
    if refused.len() > MAX_NAMED {
        named.push(format!("and {} more", refused.len() - MAX_NAMED));
    }
    Err(ApiError::bad_request(
        "unsupported_parameter",
        format!(
            "Unsupported parameter(s): {}. Only the documented OpenAI {} parameters are accepted.",
            named.join(", "),
            family.name
        ),
    ))
}

fn reason(family: &Family, field: &str) -> String {
    REFUSED
        .iter()
        .find(|(name, _)| match name.strip_suffix('*') {
            Some(prefix) => field.starts_with(prefix),
            None => field == *name,
        })
        .map_or_else(|| format!("not a {} parameter", family.name), |(_, why)| (*why).to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn forwards_listed_fields_and_drops_null_others() {
        let mut b = body(json!({"model": "m", "messages": [], "temperature": 0.2, "user": "u", "metadata": null}));
        check(&CHAT_COMPLETIONS, &mut b).unwrap();
        assert_eq!(b.len(), 4, "{b:?}");
        assert!(!b.contains_key("metadata"));
    }

    #[test]
    fn refuses_steering_and_unknown_fields_naming_each_with_its_reason() {
        let mut b = body(json!({"model": "m", "api_base": "http://x", "litellm_logging": 1, "top_k": 5,
            "service_tier": "priority"}));
        let e = check(&CHAT_COMPLETIONS, &mut b).unwrap_err().info();
        assert_eq!(e.code, "unsupported_parameter");
        for part in [
            "`api_base` (steers the upstream proxy)",
            "`litellm_logging` (steers the upstream proxy)",
            "`top_k` (not a Chat Completions parameter)",
            "`service_tier` (changes the upstream's price",
        ] {
            assert!(e.message.contains(part), "{part}: {}", e.message);
        }
    }

    #[test]
    fn a_flood_of_fields_gives_a_bounded_message() {
        let mut b = Map::new();
        for i in 0..1000 {
            b.insert(format!("{}{i}", "x".repeat(500)), json!(1));
        }
        let e = check(&CHAT_COMPLETIONS, &mut b).unwrap_err().info();
        assert!(e.message.len() < 2000, "{}", e.message.len());
        assert!(e.message.contains("and 990 more"));
    }

    #[test]
    fn refused_fields_are_not_forwarded_fields() {
        for (name, _) in REFUSED {
            assert!(!CHAT_COMPLETIONS.forwarded.contains(name), "{name}");
        }
    }
}
