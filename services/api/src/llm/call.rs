//! The LLM gateway core, one path for every LLM endpoint (what differs between them lives in
//! `llm::endpoints`): calls the catalog model's upstream (OpenAI- or Anthropic-style), meters the
//! call (tokens, cost, latency, time to first token, the gateway's own overhead), and bills it
//! exactly once. Before anything is sent upstream the call's worst case (prompt bound × input
//! price + output cap × output price) is held against the user's credit (402 when it does not
//! fit); the call then settles at the reported usage. Every call runs in a task of its own
//! (streams and non-streaming calls alike), so a client that disconnects, or a handler timeout,
//! does not stop the call from being billed for what the upstream reported.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
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
    error::ApiError,
    llm::catalog::{ApiStyle, Model, Target, Usage, endpoint_url},
    llm::{
        sse::{StreamMeter, find_event_end},
        upstream_errors,
    },
    state::AppState,
    telemetry::{RequestContext, metrics as m},
};

use super::endpoints::{Endpoint, prompt_token_bound};

/// Reported token counts above this are clamped (and the row flagged `clamped`): no model has a
/// context this large, and the ledger's integer columns stay far from overflow.
pub const MAX_REPORTED_TOKENS: u64 = 100_000_000;

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
    /// Headers passed to the upstream as the client sent them (`anthropic-version`).
    headers: HeaderMap,
    /// Characters of the prompt, for an estimate when no usage is reported.
    prompt_chars: usize,
}

/// Request headers an Anthropic-style upstream gets from the client (the API version and beta
/// features its request body is written for).
const ANTHROPIC_PASSED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];
/// `anthropic-version` when the client sent none.
const ANTHROPIC_DEFAULT_VERSION: &str = "2023-06-01";

/// The client's headers that go upstream for this model's API style.
pub fn upstream_headers(model: &Model, client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if model.api == ApiStyle::Anthropic {
        for name in ANTHROPIC_PASSED_HEADERS {
            if let Some(v) = client.get(name) {
                out.insert(name, v.clone());
            }
        }
        out.entry("anthropic-version").or_insert(HeaderValue::from_static(ANTHROPIC_DEFAULT_VERSION));
    }
    out
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

/// Rough token count used only when an upstream reports no usage: about four characters per
/// token. Such rows are flagged `usage_estimated` in the ledger.
pub fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

impl Call {
    /// Starts a call: checks that the model serves the endpoint and the request's fields,
    /// validates the output cap, admits it under the rate limits of the key, its user and the
    /// key on the model (429 when one is reached; the worst case counts as its tokens until it
    /// settles), holds the worst case (402 when it does not fit, 503 when the
    /// database cannot be asked), and names the upstream's model.
    async fn begin(
        state: &AppState,
        user: AuthUser,
        model: Arc<Model>,
        endpoint: Endpoint,
        ctx: &RequestContext,
        body: &mut Map<String, Value>,
        headers: HeaderMap,
    ) -> Result<Self, ApiError> {
        let request_id = ctx.request_id.as_str();
        let started = Instant::now();
        if !model.serves(endpoint.catalog()) {
            return Err(ApiError::WrongEndpoint {
                model: model.name,
                route: endpoint.catalog().route(),
                served: model.endpoints.iter().map(|e| e.route()).collect(),
            });
        }
        endpoint.validate(body)?;
        let cap = endpoint.output_cap(body, &model)?;
        body.insert("model".into(), Value::String(model.upstream_model.clone()));
        let request = Bytes::from(serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.into()))?);
        let prompt_bound = prompt_token_bound(body, request.len());
        let prompt_chars = endpoint.prompt_chars(body);
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
        let worst = model.worst_cost(prompt_bound, cap);
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
            headers,
            prompt_chars,
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
            .post(endpoint_url(&base, self.endpoint.upstream_path()))
            .header(header::CONTENT_TYPE, "application/json")
            .headers(self.headers.clone())
            .body(self.request.clone());
        if let Some(key) = &self.model.api_key {
            request = match self.model.api {
                ApiStyle::OpenAi => request.bearer_auth(key.expose()),
                ApiStyle::Anthropic => request.header("x-api-key", key.expose()),
            };
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
    fn settle(&mut self, reported: Usage, estimated: bool) -> (Usage, Decimal) {
        let mut flags: Vec<&'static str> = Vec::new();
        let counts = [reported.input, reported.output, reported.cache_read, reported.cache_creation];
        let usage = if counts.iter().any(|&c| c > MAX_REPORTED_TOKENS) {
            flags.push("clamped");
            let clamp = |c: u64| c.min(MAX_REPORTED_TOKENS);
            Usage {
                input: clamp(reported.input),
                output: clamp(reported.output),
                cache_read: clamp(reported.cache_read),
                cache_creation: clamp(reported.cache_creation),
            }
        } else {
            reported
        };
        let (input, output) = (usage.all_input(), usage.output);
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
        let cost = self.model.usage_cost(&usage);
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
        let (model, endpoint) = (self.model.name, self.endpoint.label());
        metrics::counter!(m::LLM_TOKENS_TOTAL, "model" => model, "endpoint" => endpoint, "direction" => "input")
            .increment(input);
        metrics::counter!(m::LLM_TOKENS_TOTAL, "model" => model, "endpoint" => endpoint, "direction" => "output")
            .increment(output);
        m::LLM_COST.add(model, endpoint, cost);
        (usage, cost)
    }

    fn observe(&self, upstream_wait: Duration, status: CallStatus) {
        count_call(&self.model, self.endpoint, status);
        metrics::histogram!(m::LLM_UPSTREAM_DURATION_SECONDS, "model" => self.model.name, "endpoint" => self.endpoint.label())
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
    body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
) -> Result<CallResult, ApiError> {
    complete_with(state, user, model, body, endpoint, ctx, HeaderMap::new()).await
}

async fn complete_with(
    state: &AppState,
    user: AuthUser,
    model: Arc<Model>,
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
    headers: HeaderMap,
) -> Result<CallResult, ApiError> {
    body.remove("stream");
    body.remove("stream_options");
    let call = Call::begin(state, user, model, endpoint, ctx, &mut body, headers).await?;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let result = call.run_complete(&tx).await;
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| Err(ApiError::Internal(anyhow::anyhow!("the call task ended without an answer"))))
}

/// Serves one call of `endpoint` for the request `body` (its `model` names the catalog model):
/// streaming when `stream` is true, else one JSON answer. `client_headers` are the request's
/// (an Anthropic-style upstream gets `anthropic-version` from them).
pub async fn serve(
    state: &AppState,
    user: AuthUser,
    body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
    client_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Some(Value::String(name)) = body.get("model") else {
        return Err(ApiError::bad_request("invalid_request_body", "`model` is required and must be a string"));
    };
    let streaming = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("invalid_request_body", "`stream` must be a boolean")),
    };
    let model =
        state.catalog.get(name).cloned().ok_or_else(|| ApiError::ModelNotFound(name.chars().take(128).collect()))?;
    let headers = upstream_headers(&model, client_headers);
    if streaming {
        stream(state, user, model, body, endpoint, ctx, headers).await
    } else {
        let result = complete_with(state, user, model, body, endpoint, ctx, headers).await?;
        Ok(axum::Json(result.response).into_response())
    }
}

impl Call {
    async fn run_complete(
        mut self,
        answer: &oneshot::Sender<Result<CallResult, ApiError>>,
    ) -> Result<CallResult, ApiError> {
        let sent = Instant::now();
        let response = self.send(sent).await?;
        let mut json = self.read_json(response, sent).await?;
        let upstream_wait = sent.elapsed();
        let (usage, cost) = self.bill_answer(&mut json);
        let status = if answer.is_closed() { CallStatus::ClientDisconnect } else { CallStatus::Success };
        self.observe(upstream_wait, status);
        Ok(CallResult { response: json, input_tokens: usage.all_input(), output_tokens: usage.output, cost })
    }

    /// The upstream's JSON answer, within what is left of the request timeout.
    async fn read_json(&self, response: reqwest::Response, sent: Instant) -> Result<Value, ApiError> {
        let remaining = self.state.upstream.request.saturating_sub(sent.elapsed());
        match tokio::time::timeout(remaining, response.json::<Value>()).await {
            Err(_) => {
                self.observe(sent.elapsed(), CallStatus::Timeout);
                Err(ApiError::UpstreamTimeout)
            }
            Ok(Err(e)) => {
                self.observe(sent.elapsed(), CallStatus::InvalidResponse);
                Err(ApiError::UpstreamUnavailable(format!("invalid upstream response: {e}")))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Settles a JSON answer at its reported usage (an estimate, flagged, when it has none) and
    /// writes the billed figures into it: the public model name, `usage.cost_usd`, and for the
    /// chat-style answers the billed (clamped) counts.
    fn bill_answer(&mut self, json: &mut Value) -> (Usage, Decimal) {
        let (reported, estimated) = match self.endpoint.usage(json) {
            Some(usage) => (usage, false),
            None => {
                let output = estimate_tokens(self.endpoint.output_chars(json));
                (Usage::new(estimate_tokens(self.prompt_chars), output), true)
            }
        };
        let (usage, cost) = self.settle(reported, estimated);
        if let Some(obj) = json.as_object_mut() {
            obj.insert("model".into(), Value::String(self.model.name.to_owned()));
            let entry = obj.entry("usage").or_insert_with(|| json!({}));
            if let Some(u) = entry.as_object_mut() {
                if matches!(
                    self.endpoint,
                    Endpoint::ChatCompletions | Endpoint::ConversationMessage | Endpoint::Completions
                ) {
                    let (input, output) = (usage.input, usage.output);
                    u.insert("prompt_tokens".into(), input.into());
                    u.insert("completion_tokens".into(), output.into());
                    u.insert("total_tokens".into(), (input + output).into());
                }
                u.insert("cost_usd".into(), Value::String(fmt_usd(cost)));
                if estimated {
                    u.insert("estimated".into(), Value::Bool(true));
                }
            }
        }
        (usage, cost)
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

/// A streaming call: answers with the upstream's SSE stream, event by event.
async fn stream(
    state: &AppState,
    user: AuthUser,
    model: Arc<Model>,
    mut body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if endpoint == Endpoint::Embeddings {
        return Err(ApiError::bad_request("invalid_request_body", "embeddings are not streamed"));
    }
    if endpoint.asks_for_stream_usage() {
        require_stream_usage(&mut body)?;
    } else {
        body.insert("stream".into(), Value::Bool(true));
    }
    let call = Call::begin(state, user, model, endpoint, ctx, &mut body, headers).await?;

    // From here the call runs in a task of its own: a client that leaves before the upstream's
    // response head does not stop it from being read to its end and billed.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let (head_tx, head_rx) = oneshot::channel::<Result<(), ApiError>>();
    tokio::spawn(async move {
        let sent = Instant::now();
        match call.send(sent).await {
            Ok(response) if is_event_stream(response.headers()) => {
                let _ = head_tx.send(Ok(()));
                pump(call, response, tx, sent).await;
            }
            Ok(response) => {
                let _ = head_tx.send(Err(call.not_streamed(response, sent).await));
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

fn is_event_stream(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

impl Call {
    /// A streaming request the upstream answered with one JSON body (an upstream or a proxy that
    /// ignores `stream`): the upstream did the work, so the call is billed at the usage the body
    /// reports (estimated and flagged without one), and the client, which expects events, gets a
    /// clear 502 saying so rather than a body its SDK cannot parse.
    async fn not_streamed(mut self, response: reqwest::Response, sent: Instant) -> ApiError {
        let mut json = match self.read_json(response, sent).await {
            Ok(json) => json,
            // Nothing usable: the hold is released when `self` drops, as for any failed call.
            Err(e) => return e,
        };
        let upstream_wait = sent.elapsed();
        let (_, cost) = self.bill_answer(&mut json);
        tracing::warn!(target: "pr.upstream", request_id = self.request_id.as_str(), model = self.model.name,
            "the upstream answered a streaming request without streaming");
        self.observe(upstream_wait, CallStatus::InvalidResponse);
        ApiError::UpstreamNotStreaming { cost }
    }
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
) {
    let idle = call.state.upstream.stream_idle;
    let deadline = sent + call.state.upstream.request.max(Duration::from_secs(1)) * 4;
    let mut upstream = response.bytes_stream();
    let mut buf = BytesMut::new();
    let mut client_gone = false;
    let mut meter = StreamMeter::default();
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
            let (out, done) = meter.inspect(call.endpoint, &event, &call.model, sent);
            // A client that stops reading (but keeps the connection) is treated as gone after the
            // idle timeout, so it cannot pin the call and its hold.
            if !client_gone && !matches!(tokio::time::timeout(idle, tx.send(Ok(out))).await, Ok(Ok(()))) {
                // Keep reading: the upstream still reports usage at the end, and the call is billed.
                client_gone = true;
            }
            if done {
                break 'read;
            }
        }
    }
    if !buf.is_empty() && !client_gone {
        let _ = tx.send(Ok(buf.freeze())).await;
    }
    drop(tx);

    let upstream_wait = sent.elapsed();
    if let Some(ttft) = meter.first_token {
        metrics::histogram!(m::LLM_TIME_TO_FIRST_TOKEN_SECONDS, "model" => call.model.name, "endpoint" => call.endpoint.label())
            .record(ttft.as_secs_f64());
    }
    let (usage, estimated) = match meter.usage {
        Some(usage) => (usage, false),
        None => {
            let output = estimate_tokens(meter.output_chars);
            // An Anthropic stream cut after `message_start` still said what its prompt was.
            let input = meter.partial_input().unwrap_or(Usage::new(estimate_tokens(call.prompt_chars), 0));
            (Usage { output, ..input }, true)
        }
    };
    call.settle(usage, estimated);
    if client_gone && status == CallStatus::Success {
        status = CallStatus::ClientDisconnect;
    }
    call.observe(upstream_wait, status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_tokens_from_characters() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }
}
