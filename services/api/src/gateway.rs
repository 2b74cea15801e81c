//! The LLM gateway core: calls an OpenAI-compatible upstream for a catalog model, meters the
//! call (tokens, cost, latency, time to first token, the gateway's own overhead), and bills it in
//! the ledger exactly once. Streams are forwarded chunk by chunk as they arrive; the upstream is
//! read by a task of its own, so a client that disconnects mid-stream does not stop the call
//! from being billed for what the upstream reported.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    auth::AuthUser,
    catalog::{Model, Target, chat_completions_url},
    error::ApiError,
    ledger::{self, fmt_usd},
    state::AppState,
    telemetry::metrics as m,
};

/// `endpoint` label values.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    ChatCompletions,
    ConversationMessage,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::ConversationMessage => "conversation_message",
        }
    }
}

/// `status` label values of `pr_llm_calls_total` (a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStatus {
    Success,
    UpstreamError,
    UpstreamUnavailable,
    Timeout,
    ClientDisconnect,
    InsufficientCredits,
    InvalidResponse,
    NoHealthyNode,
}

impl CallStatus {
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Timeout => "timeout",
            Self::ClientDisconnect => "client_disconnect",
            Self::InsufficientCredits => "insufficient_credits",
            Self::InvalidResponse => "invalid_response",
            Self::NoHealthyNode => "no_healthy_node",
        }
    }
}

fn count_call(model: &Model, endpoint: Endpoint, status: CallStatus) {
    metrics::counter!(m::LLM_CALLS_TOTAL, "model" => model.name, "endpoint" => endpoint.label(), "status" => status.label())
        .increment(1);
}

/// Timeouts of upstream calls.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTimeouts {
    /// Whole non-streaming call, or until a stream's response head.
    pub request: Duration,
    /// Longest silence between two chunks of a stream.
    pub stream_idle: Duration,
}

/// What a finished call reports.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub response: Value,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Decimal,
}

struct Call<'a> {
    state: &'a AppState,
    user: AuthUser,
    model: Arc<Model>,
    endpoint: Endpoint,
    request_id: String,
    started: Instant,
}

/// Refuses the call (402) when the balance is not positive. Concurrent calls may each pass this
/// check, so a user can overdraw by at most the cost of the calls already in flight.
async fn require_credit(state: &AppState, user: &AuthUser, model: &Model, endpoint: Endpoint) -> Result<(), ApiError> {
    if ledger::balance(&state.db, user.user_id).await? <= Decimal::ZERO {
        count_call(model, endpoint, CallStatus::InsufficientCredits);
        return Err(ApiError::InsufficientCredits);
    }
    Ok(())
}

fn send_error(e: &reqwest::Error) -> (ApiError, CallStatus) {
    if e.is_timeout() {
        (ApiError::UpstreamTimeout, CallStatus::Timeout)
    } else {
        (ApiError::UpstreamUnavailable(e.to_string()), CallStatus::UpstreamUnavailable)
    }
}

/// Turns an upstream error response into ours, keeping its status and its message.
async fn upstream_failure(response: reqwest::Response) -> ApiError {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(500).collect());
    ApiError::Upstream {
        status,
        message: if message.is_empty() { format!("upstream answered {status}") } else { message },
    }
}

fn tokens_from(usage: &Value) -> Option<(u64, u64)> {
    Some((usage.get("prompt_tokens")?.as_u64()?, usage.get("completion_tokens")?.as_u64()?))
}

/// Rough token count used only when an upstream reports no usage: about four characters per
/// token. Such rows are flagged `usage_estimated` in the ledger.
pub fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

fn prompt_chars(body: &Map<String, Value>) -> usize {
    body.get("messages").map_or(0, |m| m.to_string().len())
}

impl<'a> Call<'a> {
    /// Starts a call: refuses it (402) without credit, and names the upstream's model.
    async fn begin(
        state: &'a AppState,
        user: AuthUser,
        model: Arc<Model>,
        endpoint: Endpoint,
        request_id: &str,
        body: &mut Map<String, Value>,
    ) -> Result<Self, ApiError> {
        let started = Instant::now();
        require_credit(state, &user, &model, endpoint).await?;
        body.insert("model".into(), Value::String(model.upstream_model.clone()));
        Ok(Self { state, user, model, endpoint, request_id: request_id.to_owned(), started })
    }

    /// Sends the call to the model's upstream, or to a healthy node of its GPU pool, and
    /// returns the successful response head. Failures are counted; a pool node that fails is
    /// marked down at once, before its next health poll.
    async fn send(&self, body: &Map<String, Value>, sent: Instant) -> Result<reqwest::Response, ApiError> {
        let (base, node) = match &self.model.target {
            Target::Url(url) => (url.clone(), None),
            Target::Pool(pool) => match self.state.fleet.pick(pool) {
                Some(pick) => (pick.inference_url, Some(pick.node_id)),
                None => {
                    count_call(&self.model, self.endpoint, CallStatus::NoHealthyNode);
                    return Err(ApiError::NoHealthyNode(pool.clone()));
                }
            },
        };
        let mut request = self.state.http.post(chat_completions_url(&base)).json(body);
        if let Some(key) = &self.model.api_key {
            request = request.bearer_auth(key.expose());
        }
        let failed = |error: ApiError, status: CallStatus, reason: &str| {
            if let Some(node) = node {
                self.state.fleet.mark_down(node, reason);
            }
            self.observe(sent.elapsed(), status);
            Err(error)
        };
        let response = match tokio::time::timeout(self.state.upstream.request, request.send()).await {
            Err(_) => return failed(ApiError::UpstreamTimeout, CallStatus::Timeout, "inference request timed out"),
            Ok(Err(e)) => {
                let (error, status) = send_error(&e);
                return failed(error, status, &format!("inference request failed: {e}"));
            }
            Ok(Ok(r)) => r,
        };
        if !response.status().is_success() {
            let server_error = response.status().is_server_error();
            let status = response.status();
            let error = upstream_failure(response).await;
            if server_error {
                return failed(error, CallStatus::UpstreamError, &format!("inference answered {status}"));
            }
            self.observe(sent.elapsed(), CallStatus::UpstreamError);
            return Err(error);
        }
        Ok(response)
    }

    /// Bills (once), records tokens and cost. Billing errors are logged, never lost silently.
    async fn settle(&self, call_id: Uuid, input: u64, output: u64, estimated: bool) -> Decimal {
        let cost = self.model.cost(input, output);
        let usage = ledger::Usage {
            call_id,
            user_id: self.user.user_id,
            model: self.model.name,
            input_tokens: input,
            output_tokens: output,
            cost,
            estimated,
            request_id: self.request_id.clone(),
        };
        // A transient database error must not lose revenue: retry a few times (the call id
        // makes a retry of a write that did commit a no-op).
        let mut attempt = 0;
        loop {
            match self.state.usage.record(usage.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(request_id = self.request_id.as_str(), error = %e, attempt, "billing write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(target: "pr.billing", request_id = self.request_id.as_str(), call_id = %call_id,
                        user_id = %self.user.user_id, model = self.model.name, input, output, cost = %cost, error = %e,
                        "usage could not be written to the ledger");
                    break;
                }
            }
        }
        metrics::counter!(m::LLM_TOKENS_TOTAL, "model" => self.model.name, "direction" => "input").increment(input);
        metrics::counter!(m::LLM_TOKENS_TOTAL, "model" => self.model.name, "direction" => "output").increment(output);
        m::LLM_COST.add(self.model.name, cost);
        cost
    }

    fn observe(&self, upstream_wait: Duration, status: CallStatus) {
        count_call(&self.model, self.endpoint, status);
        metrics::histogram!(m::LLM_UPSTREAM_DURATION_SECONDS, "model" => self.model.name)
            .record(upstream_wait.as_secs_f64());
        let overhead = self.started.elapsed().saturating_sub(upstream_wait);
        metrics::histogram!(m::LLM_GATEWAY_OVERHEAD_SECONDS, "endpoint" => self.endpoint.label())
            .record(overhead.as_secs_f64());
    }
}

/// A non-streaming completion.
pub async fn complete(
    state: &AppState,
    user: AuthUser,
    model: Arc<Model>,
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    request_id: &str,
) -> Result<CallResult, ApiError> {
    let call = Call::begin(state, user, model, endpoint, request_id, &mut body).await?;
    body.remove("stream");
    body.remove("stream_options");

    let sent = Instant::now();
    let response = call.send(&body, sent).await?;
    let remaining = state.upstream.request.saturating_sub(sent.elapsed());
    let mut json: Value = match tokio::time::timeout(remaining, response.json::<Value>()).await {
        Err(_) => {
            call.observe(sent.elapsed(), CallStatus::Timeout);
            return Err(ApiError::UpstreamTimeout);
        }
        Ok(Err(e)) => {
            call.observe(sent.elapsed(), CallStatus::InvalidResponse);
            return Err(ApiError::UpstreamUnavailable(format!("invalid upstream response: {e}")));
        }
        Ok(Ok(v)) => v,
    };
    let upstream_wait = sent.elapsed();
    let (input, output, estimated) = match json.get("usage").and_then(tokens_from) {
        Some((i, o)) => (i, o, false),
        None => {
            let text = json.pointer("/choices/0/message/content").and_then(Value::as_str).map_or(0, str::len);
            (estimate_tokens(prompt_chars(&body)), estimate_tokens(text), true)
        }
    };
    let cost = call.settle(Uuid::new_v4(), input, output, estimated).await;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("model".into(), Value::String(call.model.name.to_owned()));
        let usage = obj.entry("usage").or_insert_with(|| json!({}));
        if let Some(u) = usage.as_object_mut() {
            u.insert("prompt_tokens".into(), input.into());
            u.insert("completion_tokens".into(), output.into());
            u.insert("total_tokens".into(), (input + output).into());
            u.insert("cost_usd".into(), Value::String(fmt_usd(cost)));
            if estimated {
                u.insert("estimated".into(), Value::Bool(true));
            }
        }
    }
    call.observe(upstream_wait, CallStatus::Success);
    Ok(CallResult { response: json, input_tokens: input, output_tokens: output, cost })
}

/// A streaming completion: answers with the upstream's SSE stream, chunk by chunk.
pub async fn stream(
    state: &AppState,
    user: AuthUser,
    model: Arc<Model>,
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    request_id: &str,
) -> Result<Response, ApiError> {
    let call = Call::begin(state, user, model, endpoint, request_id, &mut body).await?;
    body.insert("stream".into(), Value::Bool(true));
    let options = body.entry("stream_options").or_insert_with(|| json!({}));
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), Value::Bool(true));
    }

    let sent = Instant::now();
    let response = call.send(&body, sent).await?;

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let prompt = prompt_chars(&body);
    let owned = OwnedCall {
        state: state.clone(),
        user,
        model: call.model.clone(),
        endpoint,
        request_id: call.request_id.clone(),
        started: call.started,
    };
    tokio::spawn(pump(owned, response, tx, sent, prompt));

    let body = Body::from_stream(tokio_stream_from(rx));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct OwnedCall {
    state: AppState,
    user: AuthUser,
    model: Arc<Model>,
    endpoint: Endpoint,
    request_id: String,
    started: Instant,
}

/// Reads the upstream stream to its end, forwarding events to the client while it listens,
/// then bills what the upstream reported (or an estimate when it reported nothing).
async fn pump(
    owned: OwnedCall,
    response: reqwest::Response,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    sent: Instant,
    prompt_chars: usize,
) {
    let call = Call {
        state: &owned.state,
        user: owned.user,
        model: owned.model.clone(),
        endpoint: owned.endpoint,
        request_id: owned.request_id.clone(),
        started: owned.started,
    };
    let idle = owned.state.upstream.stream_idle;
    let deadline = sent + owned.state.upstream.request.max(Duration::from_secs(1)) * 4;
    let mut upstream = response.bytes_stream();
    let mut buf = BytesMut::new();
    let mut client_gone = false;
    let mut usage: Option<(u64, u64)> = None;
    let mut output_chars = 0usize;
    let mut first_token: Option<Duration> = None;
    let mut status = CallStatus::Success;

    'read: loop {
        let next =
            match tokio::time::timeout(idle.min(deadline.saturating_duration_since(Instant::now())), upstream.next())
                .await
            {
                Err(_) => {
                    status = CallStatus::Timeout;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    status = CallStatus::UpstreamError;
                    break;
                }
                Ok(Some(Ok(bytes))) => bytes,
            };
        buf.extend_from_slice(&next);
        // SSE events end with a blank line; forward whole events only.
        while let Some(end) = find_event_end(&buf) {
            let event = buf.split_to(end.0 + end.1).freeze();
            let out = inspect_event(&event, &call.model, &mut usage, &mut output_chars, &mut first_token, sent);
            if !client_gone && tx.send(Ok(out)).await.is_err() {
                // Keep reading: the upstream still reports usage at the end, and the call is billed.
                client_gone = true;
            }
            if event_is_done(&event) {
                break 'read;
            }
        }
    }
    if !buf.is_empty() && !client_gone {
        let _ = tx.send(Ok(buf.freeze())).await;
    }
    drop(tx);

    let upstream_wait = sent.elapsed();
    if let Some(ttft) = first_token {
        metrics::histogram!(m::LLM_TIME_TO_FIRST_TOKEN_SECONDS, "model" => call.model.name).record(ttft.as_secs_f64());
    }
    let (input, output, estimated) = match usage {
        Some((i, o)) => (i, o, false),
        None => (estimate_tokens(prompt_chars), estimate_tokens(output_chars), true),
    };
    call.settle(Uuid::new_v4(), input, output, estimated).await;
    if client_gone && status == CallStatus::Success {
        status = CallStatus::ClientDisconnect;
    }
    call.observe(upstream_wait, status);
}

/// Position and length of the first event terminator (`\n\n` or `\r\n\r\n`).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn event_is_done(event: &[u8]) -> bool {
    event.windows(12).any(|w| w == b"data: [DONE]")
}

/// Records usage, output size and the first token of one event; the event that carries usage is
/// re-written with the cost added (`usage.cost_usd`), every other event passes unchanged.
fn inspect_event(
    event: &Bytes,
    model: &Model,
    usage: &mut Option<(u64, u64)>,
    output_chars: &mut usize,
    first_token: &mut Option<Duration>,
    sent: Instant,
) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return event.clone();
    };
    let Some(data) = text.lines().find_map(|l| l.strip_prefix("data:")).map(str::trim) else {
        return event.clone();
    };
    if data == "[DONE]" {
        return event.clone();
    }
    let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
        return event.clone();
    };
    if let Some(content) = chunk.pointer("/choices/0/delta/content").and_then(Value::as_str) {
        if !content.is_empty() && first_token.is_none() {
            *first_token = Some(sent.elapsed());
        }
        *output_chars += content.len();
    }
    let Some(reported) = chunk.get("usage").and_then(tokens_from) else {
        return event.clone();
    };
    *usage = Some(reported);
    let cost = model.cost(reported.0, reported.1);
    if let Some(u) = chunk.get_mut("usage").and_then(Value::as_object_mut) {
        u.insert("cost_usd".into(), Value::String(fmt_usd(cost)));
    }
    Bytes::from(format!("data: {chunk}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_boundaries() {
        assert_eq!(find_event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: a\n"), None);
        assert!(event_is_done(b"data: [DONE]\n\n"));
    }

    #[test]
    fn estimates_tokens_from_characters() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }
}
