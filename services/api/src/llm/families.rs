//! The request-field allowlists of the endpoints other than Chat Completions (see
//! `request_fields` for the rules): legacy Completions, Embeddings, the Responses API and
//! Anthropic's Messages API.

use serde_json::{Map, Value};

use super::request_fields::{CLIENT_SIDE_TOOLS, Family, client_side_tools, fetchable_urls};

/// `POST /v1/completions` (legacy text completions).
pub const COMPLETIONS: Family = Family {
    name: "OpenAI Completions",
    forwarded: &[
        "model",
        "prompt",
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
    ],
    values: |_| Ok(()),
};

/// `POST /v1/embeddings`.
pub const EMBEDDINGS: Family = Family {
    name: "OpenAI Embeddings",
    forwarded: &["model", "input", "dimensions", "encoding_format", "user"],
    values: embedding_values,
};

fn embedding_values(body: &Map<String, Value>) -> Result<(), String> {
    match body.get("encoding_format") {
        None => Ok(()),
        Some(Value::String(f)) if f == "float" || f == "base64" => Ok(()),
        Some(_) => Err("`encoding_format` other than \"float\" or \"base64\"".into()),
    }
}

/// `POST /v1/responses`. `background` (the answer and its usage arrive later, outside this
/// call) and `conversation` are not forwarded; `store` and `previous_response_id` are: the
/// response state is the upstream's.
pub const RESPONSES: Family = Family {
    name: "OpenAI Responses",
    forwarded: &[
        "model",
        "input",
        "include",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt_cache_key",
        "reasoning",
        "safety_identifier",
        "store",
        "stream",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    ],
    values: responses_values,
};

fn responses_values(body: &Map<String, Value>) -> Result<(), String> {
    client_side_tools(body, CLIENT_SIDE_TOOLS)?;
    fetchable_urls(body, "input")
}

/// `POST /v1/messages` (Anthropic). `metadata` is Anthropic's `{"user_id"}` only (Claude Code
/// sends it); anything else in it could steer a proxy.
pub const MESSAGES: Family = Family {
    name: "Anthropic Messages",
    forwarded: &[
        "model",
        "messages",
        "max_tokens",
        "metadata",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    ],
    values: messages_values,
};

/// Anthropic tools the client runs: custom tools (no `type`, or `"custom"`).
const ANTHROPIC_CLIENT_TOOLS: &[&str] = &["", "custom"];

fn messages_values(body: &Map<String, Value>) -> Result<(), String> {
    if let Some(metadata) = body.get("metadata")
        && !metadata.as_object().is_some_and(|m| m.keys().all(|k| k == "user_id"))
    {
        return Err("`metadata` other than {\"user_id\": ...}".into());
    }
    client_side_tools(body, ANTHROPIC_CLIENT_TOOLS)?;
    fetchable_urls(body, "messages")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::request_fields::check;

    fn refused(family: &Family, v: Value) -> String {
        check(family, &mut v.as_object().unwrap().clone()).unwrap_err().info().message.into_owned()
    }

    #[test]
    fn each_family_refuses_what_it_does_not_forward() {
        assert!(refused(&EMBEDDINGS, json!({"input": "x", "stream": true})).contains("`stream`"));
        assert!(refused(&EMBEDDINGS, json!({"input": "x", "encoding_format": "int8"})).contains("encoding_format"));
        assert!(refused(&COMPLETIONS, json!({"prompt": "x", "api_base": "http://x"})).contains("steers"));
        assert!(refused(&RESPONSES, json!({"input": "x", "background": true})).contains("`background`"));
        assert!(refused(&RESPONSES, json!({"input": "x", "tools": [{"type": "web_search"}]})).contains("tools[0]"));
        let url = json!([{"role": "user", "content": [{"type": "input_image", "image_url": "http://10.0.0.1/a.png"}]}]);
        assert!(refused(&RESPONSES, json!({"input": url})).contains("`input[0].content`"));
        assert!(refused(&MESSAGES, json!({"metadata": {"user_id": "u", "tags": 1}})).contains("metadata"));
        assert!(refused(&MESSAGES, json!({"tools": [{"type": "web_search_20250305"}]})).contains("tools[0]"));
        assert!(refused(&MESSAGES, json!({"service_tier": "auto"})).contains("price"));
        let mut ok = json!({"model": "m", "messages": [], "max_tokens": 5, "metadata": {"user_id": "u"},
            "tools": [{"name": "f", "input_schema": {}}]});
        check(&MESSAGES, ok.as_object_mut().unwrap()).unwrap();
    }
}
