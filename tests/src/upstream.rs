//! An OpenAI-compatible upstream stand-in (the one test double the standards allow: it replaces a
//! paid LLM service). It serves `/v1/chat/completions` on a loopback port (or, through the
//! `pr-stubs` binary, in a container on a stack's network); its behaviour is chosen by the
//! upstream model name, and it records what it received.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

pub const UPSTREAM_KEY: &str = "sk-upstream-test-key";
pub const PROMPT_TOKENS: u64 = 12;
pub const COMPLETION_TOKENS: u64 = 34;
/// Words streamed by the streaming behaviours.
pub const STREAM_WORDS: [&str; 5] = ["Hello", ", ", "world", "!", " Bye."];

#[derive(Clone)]
pub struct Upstream {
    pub addr: Option<SocketAddr>,
    pub received: Arc<Mutex<Vec<Value>>>,
    /// Calls to the other endpoints: `{"path", "body", "authorization", "x-api-key", "anthropic-version"}`.
    pub received_calls: Arc<Mutex<Vec<Value>>>,
    /// Each `up-gated` stream takes one permit before it ends (see [`Upstream::release`]).
    gate: Arc<tokio::sync::Semaphore>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            addr: None,
            received: Arc::default(),
            received_calls: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl Upstream {
    /// Lets `n` of the `up-gated` streams (waiting or still to come) finish.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr.expect("started"))
    }

    pub fn requests(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    pub fn calls(&self) -> Vec<Value> {
        self.received_calls.lock().unwrap().clone()
    }
}

/// The stand-in on an ephemeral loopback port, served by a task of the calling runtime.
pub async fn start() -> Upstream {
    start_on("127.0.0.1:0").await
}

/// The stand-in on `addr` (the `pr-stubs` container binds `0.0.0.0:8080`).
pub async fn start_on(addr: &str) -> Upstream {
    let mut upstream = Upstream::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    upstream.addr = Some(listener.local_addr().unwrap());
    let app = router(upstream.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    upstream
}

/// The stand-in's routes, recording into `upstream.received`.
pub fn router(upstream: Upstream) -> Router {
    use crate::upstream_endpoints as more;
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/completions", post(more::completions))
        .route("/v1/embeddings", post(more::embeddings))
        .route("/v1/responses", post(more::responses))
        .route("/v1/messages", post(more::messages))
        .with_state(upstream)
}

fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
    })
}

fn chunk(model: &str, content: &str) -> String {
    let c = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    format!("data: {c}\n\n")
}

fn usage_chunk(model: &str) -> String {
    let c = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}});
    format!("data: {c}\n\n")
}

fn sse(model: String, gap: Duration, with_usage: bool, words: usize) -> Response {
    let stream = async_stream(model, gap, with_usage, words);
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

fn async_stream(
    model: String,
    gap: Duration,
    with_usage: bool,
    words: usize,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> + Send {
    futures_util::stream::unfold(0usize, move |i| {
        let model = model.clone();
        async move {
            if i > words + 1 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let item = if i < words {
                chunk(&model, STREAM_WORDS[i % STREAM_WORDS.len()])
            } else if i == words {
                if with_usage { usage_chunk(&model) } else { String::new() }
            } else {
                "data: [DONE]\n\n".to_string()
            };
            Some((Ok(item), i + 1))
        }
    })
}

fn gated_stream(model: String, gate: Arc<tokio::sync::Semaphore>) -> Response {
    let first = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(chunk(&model, STREAM_WORDS[0]))));
    let rest = futures_util::stream::once(async move {
        gate.acquire().await.expect("the gate is never closed").forget();
        Ok::<_, std::io::Error>(format!("{}{}data: [DONE]\n\n", chunk(&model, STREAM_WORDS[1]), usage_chunk(&model)))
    });
    use futures_util::StreamExt;
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(first.chain(rest))).unwrap()
}

/// A LiteLLM-style 400 message: exception names, a URL, a key, the upstream model, a traceback.
pub const INTERNALS_MESSAGE: &str = "litellm.BadRequestError: OpenAIException - Error code: 400 - prompt too long \
    for up-internals at http://10.1.2.3:4000/v1 with sk-internal-0123456789\nReceived Model Group=up-internals\n\
    Traceback (most recent call last):\n  File \"/usr/lib/python3/litellm/main.py\", line 1, in completion";

/// Content of the `up-done-text` stream: the terminator's text inside a chunk.
pub const DONE_TEXT: [&str; 3] = ["A stream ends with ", "data: [DONE]", " on a line of its own."];

fn done_text_stream(model: String) -> Response {
    let mut writes: Vec<String> = Vec::new();
    for (i, word) in DONE_TEXT.iter().enumerate() {
        let event = chunk(&model, word);
        if i == 1 {
            // The event arrives in pieces, cut inside the terminator's text.
            let cut = event.find("[DO").unwrap() + 3;
            writes.push(event[..cut].to_owned());
            writes.push(event[cut..].to_owned());
        } else {
            writes.push(event);
        }
    }
    writes.push(usage_chunk(&model));
    writes.push("data: [DONE]\n\n".to_owned());
    let stream = futures_util::stream::unfold(writes.into_iter(), |mut rest| async move {
        let item = rest.next()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, std::io::Error>(item), rest))
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

async fn completions(State(up): State<Upstream>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    up.received.lock().unwrap().push(body.clone());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {UPSTREAM_KEY}")) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "bad upstream key"}}))).into_response();
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let streaming = body["stream"].as_bool().unwrap_or(false);
    let last =
        body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("").to_owned();
    match model.as_str() {
        "up-nostream" => Json(completion(&model, "not streamed")).into_response(),
        "up-echo" if streaming => sse(model, Duration::from_millis(30), true, STREAM_WORDS.len()),
        "up-echo" => Json(completion(&model, &format!("echo: {last}"))).into_response(),
        "up-nousage" if streaming => sse(model, Duration::from_millis(5), false, STREAM_WORDS.len()),
        "up-nousage" => {
            let mut c = completion(&model, "twelve chars");
            c.as_object_mut().unwrap().remove("usage");
            Json(c).into_response()
        }
        // Sends its first chunk, then waits for a permit (`Upstream::release`) before the rest:
        // a call that stays in flight exactly as long as a test wants.
        "up-gated" if streaming => gated_stream(model, up.gate.clone()),
        // A long stream: 40 chunks, 50 ms apart (2 s), for disconnect tests.
        "up-long" => sse(model, Duration::from_millis(50), true, 40),
        // Answers after 0.5 s / 2 s: calls that are in flight together, or that a client abandons.
        "up-wait" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Json(completion(&model, "waited")).into_response()
        }
        "up-2s" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Json(completion(&model, "two seconds")).into_response()
        }
        // Reports more output than any cap, or token counts no model can produce.
        "up-overcap" => {
            let mut c = completion(&model, "too long");
            c["usage"]["completion_tokens"] = json!(5000);
            Json(c).into_response()
        }
        "up-absurd" => {
            let mut c = completion(&model, "absurd");
            c["usage"]["prompt_tokens"] = json!(1_000_000_000_000u64);
            c["usage"]["completion_tokens"] = json!(u64::MAX);
            Json(c).into_response()
        }
        "up-slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(completion(&model, "late")).into_response()
        }
        "up-500" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "upstream exploded", "type": "server_error"}})),
        )
            .into_response(),
        "up-400" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "context length exceeded", "type": "invalid_request_error"}})),
        )
            .into_response(),
        // Error answers a client must not see as they are: the upstream refusing the gateway's own
        // key (with its own challenge), a 1 MB JSON error, LiteLLM's internals, a rate limit.
        "up-401" => (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer realm=\"litellm\"")],
            Json(json!({"error": {"message": format!("Invalid proxy server token passed. Received API Key = {UPSTREAM_KEY}")}})),
        )
            .into_response(),
        "up-huge-error" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": format!("too long: {}", "x".repeat(1 << 20))}})),
        )
            .into_response(),
        "up-internals" => (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": INTERNALS_MESSAGE}}))).into_response(),
        "up-429" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            Json(json!({"error": {"message": "Rate limit reached for up-429 in organization org-secret"}})),
        )
            .into_response(),
        // A model that writes the stream's terminator as text, split over several writes.
        "up-done-text" if streaming => done_text_stream(model),
        other => {
            (StatusCode::NOT_FOUND, Json(json!({"error": {"message": format!("no model {other}")}}))).into_response()
        }
    }
}

/// The OpenAI-style endpoints the stand-in's models serve.
const OPENAI_ENDPOINTS: &str = "endpoints = [\"chat_completions\", \"completions\", \"responses\"]\n";

/// A catalog for the stand-in: every behaviour as a public model, plus one whose upstream
/// refuses connections. Prices: 1.5 $/Mtok input, 6 $/Mtok output; `embed` 0.5 $/Mtok input;
/// the `claude*` models (Anthropic style) 3 input, 15 output, 0.3 cache read, 3.75 cache write.
pub fn catalog_toml(upstream: &Upstream, key_env: &str) -> String {
    let dead = format!("http://127.0.0.1:{}/v1", crate::free_port());
    catalog_toml_for(&upstream.base_url(), &dead, key_env)
}

/// The same catalog for a stand-in at `base` (an OpenAI base URL ending in `/v1`, for example
/// the `pr-stubs` container's) and a `dead` URL where nothing listens.
pub fn catalog_toml_for(base: &str, dead: &str, key_env: &str) -> String {
    let mut out = String::new();
    for (name, up_model, base) in [
        ("echo", "up-echo", base),
        ("nousage", "up-nousage", base),
        ("long", "up-long", base),
        ("slow", "up-slow", base),
        ("fail500", "up-500", base),
        ("fail400", "up-400", base),
        ("dead", "up-dead", dead),
        ("wait", "up-wait", base),
        ("twosec", "up-2s", base),
        ("overcap", "up-overcap", base),
        ("absurd", "up-absurd", base),
        ("fail401", "up-401", base),
        ("hugeerror", "up-huge-error", base),
        ("internals", "up-internals", base),
        ("ratelimited", "up-429", base),
        ("donetext", "up-done-text", base),
        ("gated", "up-gated", base),
    ] {
        out.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nupstream = \"{base}\"\nupstream_model = \"{up_model}\"\napi_key_env = \"{key_env}\"\ninput_usd_per_mtok = 1.5\noutput_usd_per_mtok = 6.0\n{OPENAI_ENDPOINTS}\n"
        ));
    }
    // A small output cap (the default is 4096).
    out.push_str(&format!(
        "[[models]]\nname = \"capped\"\nupstream = \"{base}\"\nupstream_model = \"up-echo\"\napi_key_env = \"{key_env}\"\ninput_usd_per_mtok = 1.5\noutput_usd_per_mtok = 6.0\nmax_output_tokens = 64\n\n"
    ));
    // Served by the healthy nodes of GPU pool "gpu" (tests register the nodes).
    out.push_str(&format!(
        "[[models]]\nname = \"pooled\"\ngpu_pool = \"gpu\"\nupstream_model = \"up-echo\"\napi_key_env = \"{key_env}\"\ninput_usd_per_mtok = 1.5\noutput_usd_per_mtok = 6.0\n\n"
    ));
    // Embeddings (input price only), an upstream that never streams, and Anthropic-style models.
    out.push_str(&format!(
        "[[models]]\nname = \"embed\"\nupstream = \"{base}\"\nupstream_model = \"up-embed\"\napi_key_env = \"{key_env}\"\ninput_usd_per_mtok = 0.5\nendpoints = [\"embeddings\"]\n\n"
    ));
    out.push_str(&format!(
        "[[models]]\nname = \"nostream\"\nupstream = \"{base}\"\nupstream_model = \"up-nostream\"\napi_key_env = \"{key_env}\"\ninput_usd_per_mtok = 1.5\noutput_usd_per_mtok = 6.0\n{OPENAI_ENDPOINTS}\n"
    ));
    for (name, up_model) in [
        ("claude", "up-echo"),
        ("claude-nousage", "up-nousage"),
        ("claude-overloaded", "up-overloaded"),
        ("claude-nostream", "up-nostream"),
    ] {
        out.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nupstream = \"{base}\"\nupstream_model = \"{up_model}\"\napi_key_env = \"{key_env}\"\napi = \"anthropic\"\nendpoints = [\"messages\"]\ninput_usd_per_mtok = 3\noutput_usd_per_mtok = 15\ncache_read_usd_per_mtok = 0.3\ncache_creation_usd_per_mtok = 3.75\n\n"
        ));
    }
    out
}
