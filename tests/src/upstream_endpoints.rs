//! The stand-in's other endpoints: OpenAI legacy completions, embeddings and the Responses API,
//! and an Anthropic-compatible `/v1/messages` (checks `x-api-key` and `anthropic-version` as
//! Anthropic does). Behaviour by upstream model name, as in [`crate::upstream`]: `up-echo`
//! answers with usage, `up-nousage` without, `up-nostream` answers a streaming request with one
//! JSON body.

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::upstream::{COMPLETION_TOKENS, PROMPT_TOKENS, STREAM_WORDS, UPSTREAM_KEY, Upstream};

/// Tokens the embeddings stand-in reports per input.
pub const EMBEDDING_TOKENS_PER_INPUT: u64 = 5;
/// The Anthropic stand-in's cache counts (reported apart from `input_tokens`).
pub const CACHE_READ_TOKENS: u64 = 100;
pub const CACHE_CREATION_TOKENS: u64 = 20;
/// The output text of every endpoint's answers (the stream words, joined).
pub fn answer_text() -> String {
    STREAM_WORDS.concat()
}

fn record(up: &Upstream, path: &str, headers: &HeaderMap, body: &Value) {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    up.received_calls.lock().unwrap().push(json!({
        "path": path,
        "body": body,
        "authorization": header("authorization"),
        "x-api-key": header("x-api-key"),
        "anthropic-version": header("anthropic-version"),
    }));
}

fn openai_auth(headers: &HeaderMap) -> Option<Response> {
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {UPSTREAM_KEY}"));
    (!ok).then(|| (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "bad upstream key"}}))).into_response())
}

fn events(items: Vec<(Option<&'static str>, Value)>, done: bool) -> Response {
    let mut writes: Vec<String> = items
        .into_iter()
        .map(|(name, data)| match name {
            Some(name) => format!("event: {name}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        })
        .collect();
    if done {
        writes.push("data: [DONE]\n\n".into());
    }
    let stream = futures_util::stream::unfold(writes.into_iter(), |mut rest| async move {
        let item = rest.next()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Some((Ok::<_, std::io::Error>(item), rest))
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

fn usage_openai() -> Value {
    json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS})
}

pub async fn completions(State(up): State<Upstream>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&up, "/v1/completions", &headers, &body);
    if let Some(denied) = openai_auth(&headers) {
        return denied;
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let with_usage = model != "up-nousage";
    if body["stream"] == true && model != "up-nostream" {
        let chunk = |text: &str| {
            json!({"id": "cmpl-test", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": null}]})
        };
        let mut items: Vec<(Option<&str>, Value)> = STREAM_WORDS.iter().map(|w| (None, chunk(w))).collect();
        if with_usage {
            items.push((
                None,
                json!({"id": "cmpl-test", "object": "text_completion", "created": 1, "model": model,
                "choices": [], "usage": usage_openai()}),
            ));
        }
        return events(items, true);
    }
    let mut answer = json!({"id": "cmpl-test", "object": "text_completion", "created": 1, "model": model,
        "choices": [{"index": 0, "text": answer_text(), "logprobs": null, "finish_reason": "stop"}], "usage": usage_openai()});
    if !with_usage {
        answer.as_object_mut().unwrap().remove("usage");
    }
    Json(answer).into_response()
}

pub async fn embeddings(State(up): State<Upstream>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&up, "/v1/embeddings", &headers, &body);
    if let Some(denied) = openai_auth(&headers) {
        return denied;
    }
    let inputs = match &body["input"] {
        Value::Array(a) if a.iter().all(Value::is_u64) => 1,
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let vector = [0.25f32, -0.5, 1.0];
    // The official SDK asks for base64 (little-endian f32s) and decodes it itself.
    let embedding = if body["encoding_format"] == "base64" {
        json!(base64(&vector.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>()))
    } else {
        json!(vector)
    };
    let data: Vec<Value> =
        (0..inputs).map(|i| json!({"object": "embedding", "index": i, "embedding": embedding})).collect();
    let tokens = EMBEDDING_TOKENS_PER_INPUT * inputs as u64;
    Json(json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() { A[(n >> shift) as usize & 63] as char } else { '=' });
        }
    }
    out
}

fn response_object(model: &str, status: &str, with_usage: bool) -> Value {
    let mut r = json!({"id": "resp_test", "object": "response", "created_at": 1, "status": status, "model": model,
        "output": [{"type": "message", "id": "msg_test", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": if status == "completed" { answer_text() } else { String::new() }, "annotations": []}]}],
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "error": null, "incomplete_details": null,
        "instructions": null, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}});
    if !with_usage {
        r["usage"] = Value::Null;
    }
    r
}

pub async fn responses(State(up): State<Upstream>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&up, "/v1/responses", &headers, &body);
    if let Some(denied) = openai_auth(&headers) {
        return denied;
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let with_usage = model != "up-nousage";
    if body["stream"] == true && model != "up-nostream" {
        let mut items = vec![(
            Some("response.created"),
            json!({"type": "response.created", "sequence_number": 0,
            "response": response_object(&model, "in_progress", false)}),
        )];
        for (i, w) in STREAM_WORDS.iter().enumerate() {
            items.push((
                Some("response.output_text.delta"),
                json!({"type": "response.output_text.delta",
                "sequence_number": i + 1, "item_id": "msg_test", "output_index": 0, "content_index": 0, "delta": w}),
            ));
        }
        items.push((
            Some("response.completed"),
            json!({"type": "response.completed", "sequence_number": 99,
            "response": response_object(&model, "completed", with_usage)}),
        ));
        return events(items, false);
    }
    Json(response_object(&model, "completed", with_usage)).into_response()
}

fn message_object(model: &str, text: &str, output_tokens: u64) -> Value {
    json!({"id": "msg_test", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": output_tokens,
            "cache_read_input_tokens": CACHE_READ_TOKENS, "cache_creation_input_tokens": CACHE_CREATION_TOKENS}})
}

pub async fn messages(State(up): State<Upstream>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&up, "/v1/messages", &headers, &body);
    let error = |status: StatusCode, kind: &str, message: &str| {
        (status, Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
    };
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(UPSTREAM_KEY) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key");
    }
    if !headers.contains_key("anthropic-version") {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version header is required");
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match model.as_str() {
        "up-overloaded" => return error(StatusCode::from_u16(529).unwrap(), "overloaded_error", "Overloaded"),
        "up-400" => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "prompt is too long"),
        _ => {}
    }
    if body["stream"] != true || model == "up-nostream" {
        return Json(message_object(&model, &answer_text(), COMPLETION_TOKENS)).into_response();
    }
    let mut items = vec![
        (Some("message_start"), json!({"type": "message_start", "message": message_object(&model, "", 1)})),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (Some("ping"), json!({"type": "ping"})),
    ];
    items[0].1["message"]["content"] = json!([]);
    for w in STREAM_WORDS {
        items.push((
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    items.push((Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})));
    // `up-nousage` ends without its message_delta (the final output count): a cut stream.
    if model != "up-nousage" {
        items.push((Some("message_delta"), json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": COMPLETION_TOKENS}})));
        items.push((Some("message_stop"), json!({"type": "message_stop"})));
    }
    events(items, false)
}
