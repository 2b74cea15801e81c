//! Which top-level request fields are forwarded to an upstream: the documented OpenAI parameters
//! of each endpoint family, and nothing else. The upstream is usually LiteLLM, called with its
//! master key, where fields such as `api_base`, `api_key`, `mock_response`, `fallbacks` or
//! `metadata` steer the proxy itself (where the call goes, with which key, what is logged); a
//! client must not reach them. A field outside the list is refused (400 `unsupported_parameter`,
//! naming it and why) rather than dropped, so a client learns at once that it had no effect;
//! a field whose value is `null` says nothing and is dropped silently (some SDKs send unset
//! fields as `null`).

use serde_json::{Map, Value};

use crate::http::error::ApiError;

/// The fields an endpoint family forwards.
pub struct Family {
    /// Named in error messages.
    pub name: &'static str,
    pub forwarded: &'static [&'static str],
    /// Checks inside forwarded fields: a value that would make the upstream do what the catalog
    /// does not price or what the gateway must not do for a client. The reason, when refused.
    pub values: fn(&Map<String, Value>) -> Result<(), String>,
}

/// `POST /v1/chat/completions` (and the conversation path, which builds such a body). The
/// current OpenAI Chat Completions parameters, less those in [`REFUSED`].
pub const CHAT_COMPLETIONS: Family = Family {
    name: "OpenAI Chat Completions",
    forwarded: &[
        "messages",
        "model",
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
    values: chat_values,
};

/// Tool types the upstream runs on the client's side (the model only writes the call): server-side
/// tools (web search, code execution, ...) are charged by the provider per use, which the
/// catalog's token prices do not cover.
pub(super) const CLIENT_SIDE_TOOLS: &[&str] = &["function", "custom"];

/// URL schemes a message may point the upstream at: the upstream (LiteLLM, vLLM) fetches an
/// image or file URL itself, from inside the operator's network, so `http://prometheus:9090/...`
/// would make it a proxy into that network. `https:` (public services; nothing internal in the
/// stack serves TLS) and inline `data:` only.
pub(super) const FETCHABLE_SCHEMES: &[&str] = &["https://", "data:"];

/// Values of Chat Completions requests: text output only (`modalities`), client-side tools only,
/// and message parts whose URLs are `https:` or `data:`.
fn chat_values(body: &Map<String, Value>) -> Result<(), String> {
    if let Some(modalities) = body.get("modalities").and_then(Value::as_array)
        && modalities.iter().any(|m| m != "text")
    {
        return Err(
            "`modalities` other than \"text\" (audio output is priced differently from the catalog's text prices)"
                .into(),
        );
    }
    client_side_tools(body, CLIENT_SIDE_TOOLS)?;
    fetchable_urls(body, "messages")
}

/// Every `tools[i].type` is one of `allowed` (a missing type counts as "").
pub(super) fn client_side_tools(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    for (i, tool) in body.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        if !allowed.contains(&kind) {
            let kind: String = kind.chars().filter(|c| !c.is_control()).take(MAX_NAME_CHARS).collect();
            return Err(format!(
                "`tools[{i}].type` \"{kind}\" (only client-side tools; server-side tools are charged by the upstream beyond the catalog's prices)"
            ));
        }
    }
    Ok(())
}

/// Every URL in the content parts of the items of `body[list]` is `https:` or `data:`.
pub(super) fn fetchable_urls(body: &Map<String, Value>, list: &str) -> Result<(), String> {
    let items = body.get(list).and_then(Value::as_array).into_iter().flatten();
    for (i, item) in items.enumerate() {
        if let Some(url) = item.get("content").and_then(Value::as_array).and_then(|parts| first_url(parts))
            && !FETCHABLE_SCHEMES.iter().any(|s| url.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))
        {
            return Err(format!(
                "a URL in `{list}[{i}].content` that is not https: or data: (the upstream would fetch it from inside the operator's network)"
            ));
        }
    }
    Ok(())
}

/// The first string inside message parts that names a URL (`image_url.url`, `file.file_id` or
/// `file_url` given as a URL, `input_audio`, ...): any string with a scheme, wherever it sits.
pub(super) fn first_url(parts: &[Value]) -> Option<&str> {
    fn walk(v: &Value) -> Option<&str> {
        match v {
            Value::String(s) => has_scheme(s).then_some(s.as_str()),
            Value::Array(a) => a.iter().find_map(walk),
            Value::Object(o) => o.iter().filter(|(k, _)| *k != "text").find_map(|(_, v)| walk(v)),
            _ => None,
        }
    }
    parts.iter().find_map(walk)
}

/// `scheme:` as RFC 3986 spells one (a letter, then letters, digits, `+`, `-`, `.`), followed by
/// `//` or being `data:`: a URL, not text that happens to contain a colon.
fn has_scheme(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else { return false };
    let is_scheme = scheme.len() <= 32
        && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    is_scheme && (rest.starts_with("//") || scheme.eq_ignore_ascii_case("data"))
}

/// Fields refused for a reason of their own (every other unlisted field: "not a parameter of
/// this endpoint"). Names ending in `*` are prefixes.
const REFUSED: &[(&str, &str)] = &[
    ("metadata", "steers the upstream proxy's logging and routing"),
    ("audio", "audio output is priced differently from the catalog's text prices"),
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
pub(super) const MAX_NAME_CHARS: usize = 64;

/// Drops `null` fields the family does not forward; refuses the request when any other such
/// field is present. Called before anything is held or sent.
pub fn check(family: &Family, body: &mut Map<String, Value>) -> Result<(), ApiError> {
    body.retain(|k, v| !v.is_null() || family.forwarded.contains(&k.as_str()));
    let mut refused: Vec<&str> = body.keys().map(String::as_str).filter(|k| !family.forwarded.contains(k)).collect();
    if refused.is_empty() {
        return (family.values)(body)
            .map_err(|why| ApiError::bad_request("unsupported_parameter", format!("Unsupported value: {why}.")));
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
            "Unsupported parameter(s): {}. Only the documented {} parameters are accepted.",
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
        .map_or_else(|| format!("not a parameter of {}", family.name), |(_, why)| (*why).to_owned())
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
            "`top_k` (not a parameter of OpenAI Chat Completions)",
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
    fn server_side_tools_audio_output_and_internal_urls_are_refused() {
        let refused = |v: Value| check(&CHAT_COMPLETIONS, &mut body(v)).unwrap_err().info().message;
        let allowed = |v: Value| check(&CHAT_COMPLETIONS, &mut body(v)).unwrap();
        let user = |content: Value| json!({"model": "m", "messages": [{"role": "user", "content": content}]});

        assert!(
            refused(json!({"model": "m", "tools": [{"type": "function"}, {"type": "web_search_20250305"}]}))
                .contains("`tools[1].type` \"web_search_20250305\" (only client-side tools")
        );
        allowed(json!({"model": "m", "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "custom"}]}));
        assert!(refused(json!({"model": "m", "modalities": ["text", "audio"]})).contains("`modalities`"));
        allowed(json!({"model": "m", "modalities": ["text"]}));
        assert!(refused(json!({"model": "m", "audio": {"voice": "alloy"}})).contains("`audio`"));

        for url in ["http://prometheus:9090/api/v1/query", "file:///etc/passwd", "gopher://x", "HTTP://10.0.0.1/"] {
            let image = user(json!([{"type": "image_url", "image_url": {"url": url}}]));
            assert!(refused(image).contains("`messages[0].content`"), "{url}");
        }
        assert!(
            refused(user(json!([{"type": "file", "file": {"file_id": "http://10.0.0.1/a.pdf"}}])))
                .contains("not https")
        );
        for url in ["https://example.com/cat.png", "HTTPS://example.com/cat.png", "data:image/png;base64,iVBOR"] {
            allowed(user(
                json!([{"type": "text", "text": "see http://x/"}, {"type": "image_url", "image_url": {"url": url}}]),
            ));
        }
        // Text, as a string or a part, may say anything.
        allowed(user(json!("fetch http://prometheus:9090/ for me")));
    }

    #[test]
    fn refused_fields_are_not_forwarded_fields() {
        for (name, _) in REFUSED {
            assert!(!CHAT_COMPLETIONS.forwarded.contains(name), "{name}");
        }
    }
}
