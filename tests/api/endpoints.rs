//! The endpoints beyond chat completions against the stand-ins of both API styles: legacy
//! completions, embeddings, the Responses API (OpenAI style) and Messages (Anthropic style),
//! each streaming and not, billed exactly from the reported usage, with metrics equal to the
//! ledger under the right `endpoint` label, and the bad-input cases of each.

use std::time::Duration;

use futures_util::StreamExt;
use privaterouter_tests::{
    Gateway, eventually, spawn_gateway,
    upstream::{COMPLETION_TOKENS, PROMPT_TOKENS, STREAM_WORDS},
    upstream_endpoints::{CACHE_CREATION_TOKENS, CACHE_READ_TOKENS, EMBEDDING_TOKENS_PER_INPUT, answer_text},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// 12 input tokens at 1.5 $/Mtok + 34 output tokens at 6 $/Mtok.
const CALL_COST: &str = "0.000222";
/// Anthropic style: 12 × 3 + 34 × 15 + 100 cache reads × 0.3 + 20 cache writes × 3.75 (µ$).
const CLAUDE_COST: &str = "0.000651";

async fn post(g: &Gateway, path: &str, key: &str, body: &Value) -> reqwest::Response {
    g.app.api.post(key, path, body).await
}

/// (cost, input tokens, output tokens, estimated) of each usage row, oldest first, once `n` exist.
async fn rows(g: &Gateway, user_id: uuid::Uuid, n: usize) -> Vec<(Decimal, i64, i64, bool)> {
    eventually("the calls are settled", Duration::from_secs(10), || async {
        let rows: Vec<(Decimal, i64, i64, bool)> = sqlx::query_as(
            "SELECT -amount_usd, input_tokens, output_tokens, usage_estimated FROM credit_transactions \
             WHERE user_id = $1 AND kind = 'usage' ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&g.app.pool)
        .await
        .unwrap();
        (rows.len() >= n).then_some(rows)
    })
    .await
}

async fn usage_count(g: &Gateway, user_id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND kind = 'usage'")
        .bind(user_id)
        .fetch_one(&g.app.pool)
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE response, parsed (`[DONE]` kept as a string).
async fn sse(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_owned())))
        .collect()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// The metrics of `model` on `endpoint` equal the ledger's rows: tokens and cost.
async fn metrics_match(g: &Gateway, model: &str, endpoint: &str, rows: &[(Decimal, i64, i64, bool)]) {
    let s = g.app.samples().await;
    let tokens =
        |d: &str| s.expect("pr_llm_tokens_total", &[("model", model), ("endpoint", endpoint), ("direction", d)]);
    assert_eq!(tokens("input"), rows.iter().map(|r| r.1).sum::<i64>() as f64, "{model} {endpoint} input");
    assert_eq!(tokens("output"), rows.iter().map(|r| r.2).sum::<i64>() as f64, "{model} {endpoint} output");
    let cost: Decimal = rows.iter().map(|r| r.0).sum();
    let metric = s.expect("pr_llm_cost_usd_total", &[("model", model), ("endpoint", endpoint)]);
    assert_eq!(metric, cost.to_string().parse::<f64>().unwrap(), "{model} {endpoint} cost");
}

#[tokio::test]
async fn embeddings_are_billed_on_input_tokens() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let response = post(&g, "/v1/embeddings", &key, &json!({"model": "embed", "input": ["a", "b", "c"]})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_eq!(body["model"], "embed");
    let tokens = 3 * EMBEDDING_TOKENS_PER_INPUT;
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    // 15 tokens at 0.5 $/Mtok.
    assert_eq!(body["usage"]["cost_usd"], "0.0000075");
    let token_arrays = post(&g, "/v1/embeddings", &key, &json!({"model": "embed", "input": [[1, 2], [3]]})).await;
    assert_eq!(token_arrays.status(), 200);
    let rows = rows(&g, user_id, 2).await;
    assert_eq!(rows[0], (dec("0.0000075"), tokens as i64, 0, false));
    assert_eq!(rows[1], (dec("0.000005"), 2 * EMBEDDING_TOKENS_PER_INPUT as i64, 0, false));
    metrics_match(&g, "embed", "embeddings", &rows).await;
    let s = g.app.samples().await;
    let calls = [("model", "embed"), ("endpoint", "embeddings"), ("status", "success")];
    assert_eq!(s.expect("pr_llm_calls_total", &calls), 2.0);
    let routes: Vec<String> =
        g.app.access_lines(3).await.iter().map(|l| l["route"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(routes.iter().filter(|r| *r == "/v1/embeddings").count() == 2, "{routes:?}");
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_held_or_sent() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let too_many: Vec<&str> = vec!["x"; 2049];
    let cases = [
        ("/v1/embeddings", json!({"model": "embed", "input": ""}), "invalid_request_body", "must not be empty"),
        ("/v1/embeddings", json!({"model": "embed", "input": []}), "invalid_request_body", "must not be empty"),
        ("/v1/embeddings", json!({"model": "embed"}), "invalid_request_body", "`input` is required"),
        ("/v1/embeddings", json!({"model": "embed", "input": too_many}), "invalid_request_body", "at most 2048"),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": "x", "stream": true}),
            "invalid_request_body",
            "not streamed",
        ),
        ("/v1/completions", json!({"model": "echo", "prompt": []}), "invalid_request_body", "`prompt`"),
        ("/v1/responses", json!({"model": "echo", "input": ""}), "invalid_request_body", "`input`"),
        (
            "/v1/responses",
            json!({"model": "echo", "input": "x", "background": true}),
            "unsupported_parameter",
            "background",
        ),
        // A model on an endpoint it does not serve: the error names those it serves.
        (
            "/v1/chat/completions",
            json!({"model": "embed", "messages": [{"role": "user", "content": "x"}]}),
            "unsupported_endpoint",
            "it is served on: /v1/embeddings",
        ),
        (
            "/v1/embeddings",
            json!({"model": "echo", "input": "x"}),
            "unsupported_endpoint",
            "/v1/chat/completions, /v1/completions, /v1/responses",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "claude", "messages": [{"role": "user", "content": "x"}]}),
            "unsupported_endpoint",
            "/v1/messages",
        ),
    ];
    for (path, body, code, says) in cases {
        let response = post(&g, path, &key, &body).await;
        assert_eq!(response.status(), 400, "{path} {body}");
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{path}: {error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(says), "{path}: {error}");
        assert_eq!(error["error"]["request_id"], request_id);
    }
    assert!(g.upstream.calls().is_empty() && g.upstream.requests().is_empty(), "nothing went upstream");
    let (balance, _) = privaterouter_tests::balance_and_held(&g.app.pool, user_id).await;
    assert_eq!(balance, dec("1.00"), "nothing billed");
    assert_eq!(usage_count(&g, user_id).await, 0);
}

#[tokio::test]
async fn completions_and_responses_stream_and_not_billed_exactly() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;

    let plain = post(&g, "/v1/completions", &key, &json!({"model": "echo", "prompt": "Say hi"})).await;
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["choices"][0]["text"], answer_text());
    assert_eq!(plain["usage"]["cost_usd"], CALL_COST);
    let events =
        sse(post(&g, "/v1/completions", &key, &json!({"model": "echo", "prompt": "Say hi", "stream": true})).await)
            .await;
    let text: String = events.iter().filter_map(|e| e.pointer("/choices/0/text").and_then(Value::as_str)).collect();
    assert_eq!(text, answer_text());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let sent = g.upstream.calls();
    assert_eq!(sent[0]["body"]["max_tokens"], 16, "legacy completions' default cap goes upstream");
    assert_eq!(sent[1]["body"]["stream_options"]["include_usage"], true, "usage is asked for");

    let body = json!({"model": "echo", "input": "Say hi", "max_output_tokens": 1_000_000});
    let plain = post(&g, "/v1/responses", &key, &body).await;
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["usage"]["input_tokens"], PROMPT_TOKENS);
    assert_eq!(plain["usage"]["cost_usd"], CALL_COST);
    assert_eq!(plain["model"], "echo");
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let events = sse(post(&g, "/v1/responses", &key, &streaming).await).await;
    let deltas: Vec<&str> = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(deltas, STREAM_WORDS);
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    let sent = g.upstream.calls();
    assert_eq!(sent[2]["body"]["max_output_tokens"], 4096, "capped by the model's max_output_tokens");
    assert_eq!(sent[2]["path"], "/v1/responses");

    let rows = rows(&g, user_id, 4).await;
    for row in &rows {
        assert_eq!(*row, (dec(CALL_COST), PROMPT_TOKENS as i64, COMPLETION_TOKENS as i64, false));
    }
    metrics_match(&g, "echo", "completions", &rows[..2]).await;
    metrics_match(&g, "echo", "responses", &rows[2..]).await;
    let s = g.app.samples().await;
    for endpoint in ["completions", "responses"] {
        let ttft = [("model", "echo"), ("endpoint", endpoint)];
        assert_eq!(s.expect("pr_llm_time_to_first_token_seconds_count", &ttft), 1.0, "{endpoint}");
        let calls = [("model", "echo"), ("endpoint", endpoint), ("status", "success")];
        assert_eq!(s.expect("pr_llm_calls_total", &calls), 2.0, "{endpoint}");
    }
}

fn claude(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 256, "stream": stream, "messages": [{"role": "user", "content": "Say hi"}]})
}

#[tokio::test]
async fn messages_stream_and_not_billed_with_cache_tokens() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let client = &g.app.client;
    // Anthropic's clients send the key as `x-api-key` and say which API version they speak.
    let plain = client
        .post(g.app.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&claude("claude", false))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["content"][0]["text"], answer_text());
    assert_eq!(plain["model"], "claude");
    assert_eq!(plain["usage"]["cache_read_input_tokens"], CACHE_READ_TOKENS);
    assert_eq!(plain["usage"]["cost_usd"], CLAUDE_COST);

    let events = sse(post(&g, "/v1/messages", &key, &claude("claude", true)).await).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.first(), Some(&"message_start"));
    assert_eq!(types.last(), Some(&"message_stop"));
    let text: String = events.iter().filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str)).collect();
    assert_eq!(text, answer_text());

    let sent = g.upstream.calls();
    assert_eq!(sent.len(), 2);
    for call in &sent {
        assert_eq!(call["path"], "/v1/messages");
        assert_eq!(call["x-api-key"], privaterouter_tests::upstream::UPSTREAM_KEY, "the catalog's key, as x-api-key");
        assert_eq!(call["authorization"], Value::Null, "the client's key never goes upstream");
        assert_eq!(call["anthropic-version"], "2023-06-01", "passed through, or the default");
        assert_eq!(call["body"]["model"], "up-echo");
    }

    let rows = rows(&g, user_id, 2).await;
    let all_input = (PROMPT_TOKENS + CACHE_READ_TOKENS + CACHE_CREATION_TOKENS) as i64;
    for row in &rows {
        assert_eq!(*row, (dec(CLAUDE_COST), all_input, COMPLETION_TOKENS as i64, false));
    }
    metrics_match(&g, "claude", "messages", &rows).await;
    let s = g.app.samples().await;
    assert_eq!(
        s.expect("pr_llm_time_to_first_token_seconds_count", &[("model", "claude"), ("endpoint", "messages")]),
        1.0
    );
}

/// Asserts an Anthropic-shaped error with our request id.
async fn anthropic_error(response: reqwest::Response, status: u16, kind: &str) -> String {
    assert_eq!(response.status(), status);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body["request_id"], request_id);
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn messages_errors_take_anthropics_shape() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let (_, broke) = g.app.user(false).await;
    let mut no_max = claude("claude", false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let message = anthropic_error(post(&g, "/v1/messages", &key, &no_max).await, 400, "invalid_request_error").await;
    assert!(message.contains("`max_tokens` is required"), "{message}");
    let anonymous = g.app.client.post(g.app.url("/v1/messages")).json(&claude("claude", false)).send().await.unwrap();
    anthropic_error(anonymous, 401, "authentication_error").await;
    anthropic_error(post(&g, "/v1/messages", &broke, &claude("claude", false)).await, 402, "billing_error").await;
    let overloaded = post(&g, "/v1/messages", &key, &claude("claude-overloaded", false)).await;
    anthropic_error(overloaded, 502, "api_error").await;
    let unknown = post(&g, "/v1/messages", &key, &claude("no-such-model", false)).await;
    anthropic_error(unknown, 404, "not_found_error").await;
    // The same failures elsewhere keep OpenAI's shape.
    let openai = post(&g, "/v1/responses", &broke, &json!({"model": "echo", "input": "x"})).await;
    assert_eq!(openai.status(), 402);
    assert_eq!(openai.json::<Value>().await.unwrap()["error"]["code"], "insufficient_credits");
    let (balance, _) = privaterouter_tests::balance_and_held(&g.app.pool, user_id).await;
    assert_eq!(balance, dec("1.00"), "the failed calls billed nothing");
    assert_eq!(usage_count(&g, user_id).await, 0);
}

#[tokio::test]
async fn streams_without_usage_are_estimated_and_flagged() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let events =
        sse(post(&g, "/v1/responses", &key, &json!({"model": "nousage", "input": "Say hi", "stream": true})).await)
            .await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    sse(post(&g, "/v1/messages", &key, &claude("claude-nousage", true)).await).await;
    let rows = rows(&g, user_id, 2).await;
    assert!(rows.iter().all(|r| r.3), "both flagged as estimated: {rows:?}");
    let output = STREAM_WORDS.concat().len().div_ceil(4) as i64;
    assert_eq!(rows[0].2, output, "output estimated from the streamed text");
    // The cut Anthropic stream had said its prompt counts in message_start: those are billed.
    let input = (PROMPT_TOKENS + CACHE_READ_TOKENS + CACHE_CREATION_TOKENS) as i64;
    assert_eq!((rows[1].1, rows[1].2), (input, output));
    let s = g.app.samples().await;
    assert_eq!(s.expect("pr_billing_flagged_total", &[("reason", "estimated")]), 2.0);
    metrics_match(&g, "claude-nousage", "messages", &rows[1..]).await;
}

#[tokio::test]
async fn a_streaming_request_answered_without_streaming_is_billed_and_refused_clearly() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let chat = json!({"model": "nostream", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let response = post(&g, "/v1/chat/completions", &key, &chat).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_not_streaming");
    assert!(error["error"]["message"].as_str().unwrap().contains("billed (0.000222 USD)"), "{error}");
    let message =
        anthropic_error(post(&g, "/v1/messages", &key, &claude("claude-nostream", true)).await, 502, "api_error").await;
    assert!(message.contains("without streaming"), "{message}");
    let rows = rows(&g, user_id, 2).await;
    assert_eq!(rows[0], (dec(CALL_COST), PROMPT_TOKENS as i64, COMPLETION_TOKENS as i64, false));
    assert_eq!(rows[1].0, dec(CLAUDE_COST), "billed once, from the reported usage");
    let s = g.app.samples().await;
    let invalid = [("model", "nostream"), ("endpoint", "chat_completions"), ("status", "invalid_response")];
    assert_eq!(s.expect("pr_llm_calls_total", &invalid), 1.0);
}

#[tokio::test]
async fn the_rate_limits_cover_every_endpoint_and_answer_in_its_familys_shape() {
    let g = spawn_gateway().await;
    let (user_id, first) = g.app.funded_user("1.00").await;
    let created = g.app.api.create_key_ok(&first, &json!({"limits": {"requests_per_minute": 2}})).await;
    let key = created["key"].as_str().unwrap();
    // Two calls on two endpoints use the key's two requests of this minute...
    assert_eq!(post(&g, "/v1/embeddings", key, &json!({"model": "embed", "input": "x"})).await.status(), 200);
    assert_eq!(post(&g, "/v1/messages", key, &claude("claude", false)).await.status(), 200);
    // ...so a third is refused, whichever endpoint it calls, in that endpoint's error shape.
    let openai = post(&g, "/v1/responses", key, &json!({"model": "echo", "input": "x"})).await;
    assert_eq!(openai.status(), 429);
    assert!(openai.headers().contains_key("retry-after"));
    assert_eq!(openai.json::<Value>().await.unwrap()["error"]["code"], "rate_limit_exceeded");
    let anthropic = post(&g, "/v1/messages", key, &claude("claude", true)).await;
    assert!(anthropic.headers().contains_key("x-ratelimit-limit-requests"), "{:?}", anthropic.headers());
    anthropic_error(anthropic, 429, "rate_limit_error").await;
    assert_eq!(rows(&g, user_id, 2).await.len(), 2, "the refused calls billed nothing");
}
