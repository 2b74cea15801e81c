//! The LLM gateway core: calls an OpenAI-compatible upstream for a catalog model, meters the
//! call (tokens, cost, latency, time to first token, the gateway's own overhead), and bills it
//! exactly once. Before anything is sent upstream the call's worst case (prompt bound × input
//! price + output cap × output price) is held against the user's credit (402 when it does not
//! fit); the call then settles at the reported usage. Every call runs in a task of its own
//! (streams and non-streaming calls alike), so a client that disconnects, or a handler timeout,
//! does not stop the call from being billed for what the upstream reported.

use std::{
    borrow::Cow,
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
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    accounts::rate_limiter::{Admission, Scope},
    auth::AuthUser,
    billing::{Hold, HoldError, Settlement, fmt_usd},
    catalog::{Model, Target, chat_completions_url},
    error::ApiError,
    llm::{request_fields, upstream_errors},
    state::AppState,
    telemetry::{RequestContext, metrics as m},
};

/// Reported token counts above this are clamped (and the row flagged `clamped`): no model has a
/// context this large, and the ledger's integer columns stay far from overflow.
pub const MAX_REPORTED_TOKENS: u64 = 100_000_000;
/// The largest `max_tokens` / `max_completion_tokens` accepted (above it: 400).
const MAX_REQUESTED_TOKENS: u64 = i32::MAX as u64;

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

    /// The request fields this endpoint forwards upstream.
    fn fields(self) -> &'static request_fields::Family {
        match self {
            Self::ChatCompletions | Self::ConversationMessage => &request_fields::CHAT_COMPLETIONS,
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

struct Call {
    state: AppState,
    user: AuthUser,
    model: Arc<Model>,
    endpoint: Endpoint,
    request_id: String,
    started: Instant,
    /// The held worst case, until the call settles (dropped unsettled: released).
    hold: Option<Hold>,
    /// The call's place in its rate-limit buckets, until it settles (dropped: released).
    admission: Option<Admission>,
    /// Most output tokens the upstream was allowed (sent to it).
    cap: u64,
    /// The request as sent upstream, serialised once (its length also bounds the prompt).
    request: Bytes,
}

/// The output cap of a call: the request's `max_completion_tokens` / `max_tokens` (400 when not
/// a positive integer), capped by the model's `max_output_tokens`, times `n` (choices). The
/// per-choice cap is written back into the body, so the upstream cannot exceed it.
pub fn output_cap(body: &mut Map<String, Value>, model: &Model) -> Result<u64, ApiError> {
    let mut requested: Option<u64> = None;
    let mut present = Vec::new();
    for field in ["max_completion_tokens", "max_tokens"] {
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
    let cap = requested.map_or(model.max_output_tokens, |r| r.min(model.max_output_tokens));
    // `n` choices each produce up to the cap.
    let choices = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => v.as_u64().filter(|n| (1..=MAX_CHOICES).contains(n)).ok_or_else(|| {
            ApiError::bad_request("invalid_n", format!("`n` must be an integer from 1 to {MAX_CHOICES}"))
        })?,
    };
    if present.is_empty() {
        present.push("max_tokens");
    }
    for field in present {
        body.insert(field.into(), cap.into());
    }
    Ok(cap * choices)
}

/// Most `n` (choices) of one call.
const MAX_CHOICES: u64 = 16;

/// An upper bound of the prompt's tokens for the hold: half the bytes of the request as sent
/// (`body` serialised, `request_bytes` long; a token is rarely shorter than two bytes of its JSON
/// text, usual text is about four per token), plus a bound per image or other non-text part.
pub fn prompt_token_bound(body: &Map<String, Value>, request_bytes: usize) -> u64 {
    request_bytes.div_ceil(2) as u64 + NON_TEXT_PART_TOKENS * non_text_parts(body)
}

/// Bound of one image (or audio, file) content part: a short URL can stand for an image that
/// a vision model bills as hundreds to a few thousand tokens.
pub const NON_TEXT_PART_TOKENS: u64 = 4096;

fn non_text_parts(body: &Map<String, Value>) -> u64 {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else { return 0 };
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str).is_some_and(|t| t != "text"))
        .count() as u64
}

fn send_error(e: &reqwest::Error) -> (ApiError, CallStatus) {
    if e.is_timeout() {
        (ApiError::UpstreamTimeout, CallStatus::Timeout)
    } else {
        (ApiError::UpstreamUnavailable(e.to_string()), CallStatus::UpstreamUnavailable)
    }
}

/// The longest wait for an upstream's error body once its status is known.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads at most `limit` bytes of a body within `within`; what arrived by then.
async fn read_bounded(response: reqwest::Response, limit: usize, within: Duration) -> Bytes {
    let mut buf = BytesMut::new();
    let mut body = response.bytes_stream();
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk[..chunk.len().min(limit - buf.len())]);
            if buf.len() >= limit {
                break;
            }
        }
    })
    .await;
    buf.freeze()
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

impl Call {
    /// Starts a call: validates the output cap, admits it under the rate limits of the key, its
    /// user and the key on the model (429 when one is reached; the worst case counts as its
    /// tokens until it settles), holds the worst case (402 when it does not fit, 503 when the
    /// database cannot be asked), and names the upstream's model.
    async fn begin(
        state: &AppState,
        user: AuthUser,
        model: Arc<Model>,
        endpoint: Endpoint,
        ctx: &RequestContext,
        body: &mut Map<String, Value>,
    ) -> Result<Self, ApiError> {
        let request_id = ctx.request_id.as_str();
        let started = Instant::now();
        request_fields::check(endpoint.fields(), body)?;
        let cap = output_cap(body, &model)?;
        body.insert("model".into(), Value::String(model.upstream_model.clone()));
        let request = Bytes::from(serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.into()))?);
        let prompt_bound = prompt_token_bound(body, request.len());
        let scopes = [
            Scope::key(user.key_id, user.key_limits),
            Scope::user(user.user_id, user.user_limits),
            Scope::key_model(user.key_id, model.name, model.limits),
        ];
        let admission = match state.limiter.admit(&scopes, prompt_bound.saturating_add(cap)).await {
            Ok((admission, status)) => {
                ctx.rate_limit.set(status);
                admission
            }
            Err(refusal) => {
                ctx.rate_limit.set(refusal.status);
                return Err(refusal.into());
            }
        };
        let worst = model.cost(prompt_bound, cap);
        let hold = match state.billing.hold(user.user_id, worst).await {
            Ok(hold) => hold,
            Err(HoldError::Insufficient { needed, available }) => {
                count_call(&model, endpoint, CallStatus::InsufficientCredits);
                return Err(ApiError::InsufficientCredits { needed, available, prompt_bound, cap });
            }
            Err(HoldError::Database(e)) => return Err(e.into()),
        };
        Ok(Self {
            state: state.clone(),
            user,
            model,
            endpoint,
            request_id: request_id.to_owned(),
            started,
            hold: Some(hold),
            admission,
            cap,
            request,
        })
    }

    /// Sends the call to the model's upstream, or to a healthy node of its GPU pool, and
    /// returns the successful response head. Failures are counted; a pool node that fails is
    /// marked down at once, before its next health poll.
    async fn send(&self, sent: Instant) -> Result<reqwest::Response, ApiError> {
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
        let mut request = self
            .state
            .http
            .post(chat_completions_url(&base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.request.clone());
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
        // Redirects are not followed (see `AppState::http`): one is a broken upstream, 502.
        if response.status().is_redirection() {
            let reason = format!("inference answered a redirect ({}); redirects are not followed", response.status());
            let error = ApiError::UpstreamError { upstream_status: response.status().as_u16() };
            return failed(error, CallStatus::UpstreamError, &reason);
        }
        if !response.status().is_success() {
            let status = response.status();
            let error = self.upstream_failure(response).await;
            if status.is_server_error() {
                return failed(error, CallStatus::UpstreamError, &format!("inference answered {status}"));
            }
            self.observe(sent.elapsed(), CallStatus::UpstreamError);
            return Err(error);
        }
        Ok(response)
    }

    /// Our error for an upstream's error answer (`llm::upstream_errors`); its body, bounded, is
    /// logged for the operator under the request id.
    async fn upstream_failure(&self, response: reqwest::Response) -> ApiError {
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        // An error body is short: an upstream that trickles one out does not get to hold the
        // call (and its credit hold) for another whole request timeout.
        let within = self.state.upstream.request.min(ERROR_BODY_TIMEOUT);
        let body = read_bounded(response, upstream_errors::MAX_BODY_BYTES, within).await;
        tracing::warn!(target: "pr.upstream", request_id = self.request_id.as_str(), model = self.model.name,
            status = status.as_u16(), body = upstream_errors::for_log(&body), "the upstream answered an error");
        upstream_errors::to_api_error(status, retry_after.as_ref(), &body, &self.model.upstream_model, self.model.name)
    }

    /// Bills the call (once) at the reported usage: absurd counts are clamped and an output
    /// above the cap is billed as reported; both are flagged on the row and counted. The row is
    /// written by the billing writer; the response does not wait for it.
    fn settle(&mut self, input: u64, output: u64, estimated: bool) -> (u64, u64, Decimal) {
        let mut flags: Vec<&'static str> = Vec::new();
        let (input, output) = if input > MAX_REPORTED_TOKENS || output > MAX_REPORTED_TOKENS {
            flags.push("clamped");
            (input.min(MAX_REPORTED_TOKENS), output.min(MAX_REPORTED_TOKENS))
        } else {
            (input, output)
        };
        if output > self.cap {
            flags.push("over_cap");
        }
        for &reason in &flags {
            tracing::warn!(target: "pr.billing", request_id = self.request_id.as_str(), model = self.model.name,
                input, output, cap = self.cap, flag = reason, "usage flagged");
        }
        // `estimated` has a column of its own; it is counted with the flags.
        for reason in flags.iter().copied().chain(estimated.then_some("estimated")) {
            metrics::counter!(m::BILLING_FLAGGED_TOTAL, "reason" => reason).increment(1);
        }
        let cost = self.model.cost(input, output);
        if let Some(admission) = self.admission.take() {
            admission.settle(input.saturating_add(output));
        }
        if let Some(hold) = self.hold.take() {
            hold.settle(Settlement {
                call_id: Uuid::new_v4(),
                user_id: self.user.user_id,
                replica_id: Uuid::nil(),
                model: self.model.name.to_owned(),
                input_tokens: input as i64,
                output_tokens: output as i64,
                cost_usd: cost,
                estimated,
                flags: flags.into_iter().map(str::to_owned).collect(),
                request_id: self.request_id.clone(),
            });
        }
        metrics::counter!(m::LLM_TOKENS_TOTAL, "model" => self.model.name, "direction" => "input").increment(input);
        metrics::counter!(m::LLM_TOKENS_TOTAL, "model" => self.model.name, "direction" => "output").increment(output);
        m::LLM_COST.add(self.model.name, cost);
        (input, output, cost)
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

/// A non-streaming completion. The call runs in a task of its own: if the client goes away or
/// the handler times out, the call still finishes and is billed (`client_disconnect`).
pub async fn complete(
    state: &AppState,
    user: AuthUser,
    model: Arc<Model>,
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
) -> Result<CallResult, ApiError> {
    body.remove("stream");
    body.remove("stream_options");
    let call = Call::begin(state, user, model, endpoint, ctx, &mut body).await?;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let result = call.run_complete(body, &tx).await;
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| Err(ApiError::Internal(anyhow::anyhow!("the call task ended without an answer"))))
}

impl Call {
    async fn run_complete(
        mut self,
        body: Map<String, Value>,
        answer: &oneshot::Sender<Result<CallResult, ApiError>>,
    ) -> Result<CallResult, ApiError> {
        let sent = Instant::now();
        let response = self.send(sent).await?;
        let remaining = self.state.upstream.request.saturating_sub(sent.elapsed());
        let mut json: Value = match tokio::time::timeout(remaining, response.json::<Value>()).await {
            Err(_) => {
                self.observe(sent.elapsed(), CallStatus::Timeout);
                return Err(ApiError::UpstreamTimeout);
            }
            Ok(Err(e)) => {
                self.observe(sent.elapsed(), CallStatus::InvalidResponse);
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
        let (input, output, cost) = self.settle(input, output, estimated);
        if let Some(obj) = json.as_object_mut() {
            obj.insert("model".into(), Value::String(self.model.name.to_owned()));
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
        let status = if answer.is_closed() { CallStatus::ClientDisconnect } else { CallStatus::Success };
        self.observe(upstream_wait, status);
        Ok(CallResult { response: json, input_tokens: input, output_tokens: output, cost })
    }
}

/// Makes a streaming body ask for usage whatever the client sent: `stream_options` missing,
/// `null` or with `include_usage: false` gets `include_usage: true`; a non-object is a 400.
pub fn require_stream_usage(body: &mut Map<String, Value>) -> Result<(), ApiError> {
    body.insert("stream".into(), Value::Bool(true));
    let options = body.entry("stream_options").or_insert(Value::Null);
    if options.is_null() {
        *options = json!({});
    }
    match options.as_object_mut() {
        Some(o) => {
            o.insert("include_usage".into(), Value::Bool(true));
            Ok(())
        }
        None => Err(ApiError::bad_request("invalid_request_body", "`stream_options` must be an object")),
    }
}

/// A streaming completion: answers with the upstream's SSE stream, chunk by chunk.
pub async fn stream(
    state: &AppState,
    user: AuthUser,
    model: Arc<Model>,
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
) -> Result<Response, ApiError> {
    require_stream_usage(&mut body)?;
    let call = Call::begin(state, user, model, endpoint, ctx, &mut body).await?;

    // From here the call runs in a task of its own: a client that leaves before the upstream's
    // response head does not stop it from being read to its end and billed.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let (head_tx, head_rx) = oneshot::channel::<Result<(), ApiError>>();
    let prompt = prompt_chars(&body);
    tokio::spawn(async move {
        let sent = Instant::now();
        match call.send(sent).await {
            Ok(response) => {
                let _ = head_tx.send(Ok(()));
                pump(call, response, tx, sent, prompt).await;
            }
            Err(e) => {
                let _ = head_tx.send(Err(e));
            }
        }
    });
    head_rx
        .await
        .unwrap_or_else(|_| Err(ApiError::Internal(anyhow::anyhow!("the call task ended without an answer"))))?;

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

/// Reads the upstream stream to its end, forwarding events to the client while it listens,
/// then bills what the upstream reported (or an estimate when it reported nothing).
async fn pump(
    mut call: Call,
    response: reqwest::Response,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    sent: Instant,
    prompt_chars: usize,
) {
    let idle = call.state.upstream.stream_idle;
    let deadline = sent + call.state.upstream.request.max(Duration::from_secs(1)) * 4;
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
            // A client that stops reading (but keeps the connection) is treated as gone after the
            // idle timeout, so it cannot pin the call and its hold.
            if !client_gone && !matches!(tokio::time::timeout(idle, tx.send(Ok(out))).await, Ok(Ok(()))) {
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
    call.settle(input, output, estimated);
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

/// The data of an SSE event: its `data:` lines (one optional space after the colon removed),
/// joined by newlines as the SSE spec says; `None` when it has none.
fn event_data(event: &str) -> Option<Cow<'_, str>> {
    let mut lines = event.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d));
    let first = lines.next()?;
    let Some(second) = lines.next() else { return Some(Cow::Borrowed(first)) };
    Some(Cow::Owned([first, second].into_iter().chain(lines).collect::<Vec<_>>().join("\n")))
}

/// The stream's terminator: an event whose data is exactly `[DONE]` (`data: [DONE]` or
/// `data:[DONE]`); the same text inside a chunk's content is not.
fn event_is_done(event: &[u8]) -> bool {
    std::str::from_utf8(event).ok().and_then(event_data).is_some_and(|d| d.trim_end() == "[DONE]")
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
    let Some(data) = event_data(text) else {
        return event.clone();
    };
    let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
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
    }

    #[test]
    fn only_a_whole_data_line_ends_the_stream() {
        assert!(event_is_done(b"data: [DONE]\n\n"));
        assert!(event_is_done(b"data:[DONE]\r\n\r\n"));
        assert!(event_is_done(b": keep-alive\ndata: [DONE]\n\n"));
        assert!(!event_is_done(br#"data: {"choices":[{"delta":{"content":"say data: [DONE]"}}]}"#));
        assert!(!event_is_done(b"data: x\ndata: [DONE]\n\n"), "the event's data is two lines");
        assert!(!event_is_done(b"data: [DONE] and more\n\n"));
    }

    #[test]
    fn the_worst_case_counts_every_choice_and_every_image() {
        let catalog = crate::catalog::Catalog::parse(
            "[[models]]\nname = \"m\"\nupstream = \"http://u/v1\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\nmax_output_tokens = 100\n",
            |_| None,
        )
        .unwrap();
        let model = catalog.get("m").unwrap();
        let mut body = json!({"messages": [], "n": 3, "max_tokens": 50}).as_object().unwrap().clone();
        assert_eq!(output_cap(&mut body, model).unwrap(), 150, "3 choices of at most 50 tokens");
        assert_eq!(body["max_tokens"], 50, "the per-choice cap goes upstream");
        for bad in [json!(0), json!(17), json!("2")] {
            let mut body = json!({"messages": [], "n": bad}).as_object().unwrap().clone();
            assert!(output_cap(&mut body, model).is_err(), "n = {bad}");
        }
        let text = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let image = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]});
        let bound = |v: &Value| prompt_token_bound(v.as_object().unwrap(), v.to_string().len());
        let (t, i) = (bound(&text), bound(&image));
        assert!(i >= t + NON_TEXT_PART_TOKENS, "an image part is bounded by {NON_TEXT_PART_TOKENS} tokens: {t} {i}");
    }

    #[test]
    fn estimates_tokens_from_characters() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }
}
