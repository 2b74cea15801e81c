//! One LLM call, whatever its endpoint (what differs between them lives in `endpoints`): begin
//! (the endpoint's checks, the rate limits, a hold of the call's worst case), send it to the
//! model's upstream or GPU pool, settle it exactly once at the reported usage, and observe its
//! outcome. `answer` and `stream` drive a call to its end, each in a task of its own.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    answer,
    catalog::{ApiStyle, Model, Target, Usage, endpoint_url},
    endpoints::{Endpoint, prompt_token_bound},
    state::{CreditHold, Ledger, LlmState},
    stream, upstream_errors,
};
use crate::{
    accounts::auth::AuthUser,
    accounts::rate_limiter::{Admission, Scope},
    billing::{HoldError, Settlement},
    http::RequestContext,
    http::error::{ApiError, Outcome},
    telemetry::metrics as m,
};

/// Reported token counts above this are clamped (and the row flagged `clamped`): no model has a
/// context this large, and the ledger's integer columns stay far from overflow.
pub const MAX_REPORTED_TOKENS: u64 = 100_000_000;

/// Counts a call in `pr_llm_calls_total` under its outcome's call-status label.
pub(super) fn count_call(model: &Model, endpoint: Endpoint, outcome: Outcome) {
    metrics::counter!(m::LLM_CALLS_TOTAL, "model" => model.name, "endpoint" => endpoint.label(), "status" => outcome.call_status())
        .increment(1);
}

/// What a finished call reports.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub response: Value,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Decimal,
}

pub(super) struct Call<L: Ledger> {
    pub(super) state: LlmState<L>,
    user: AuthUser,
    pub(super) model: Arc<Model>,
    pub(super) endpoint: Endpoint,
    pub(super) request_id: String,
    started: Instant,
    /// The held worst case, until the call settles (dropped unsettled: released).
    hold: Option<L::Hold>,
    /// The call's place in its rate-limit buckets, until it settles (dropped: released).
    admission: Option<Admission>,
    /// Most output tokens the upstream was allowed (sent to it).
    cap: u64,
    /// The request as sent upstream, serialised once (its length also bounds the prompt).
    request: Bytes,
    /// Headers passed to the upstream as the client sent them (`anthropic-version`).
    headers: HeaderMap,
    /// Characters of the prompt, for an estimate when no usage is reported.
    pub(super) prompt_chars: usize,
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

fn send_error(e: &reqwest::Error) -> ApiError {
    if e.is_timeout() { ApiError::UpstreamTimeout } else { ApiError::UpstreamUnavailable(e.to_string()) }
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

/// Serves one call of `endpoint` for the request `body` (its `model` names the catalog model):
/// streaming when `stream` is true, else one JSON answer. `client_headers` are the request's
/// (an Anthropic-style upstream gets `anthropic-version` from them).
pub async fn serve<L: Ledger>(
    state: &LlmState<L>,
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
        stream::stream(state, user, model, body, endpoint, ctx, headers).await
    } else {
        let result = answer::complete_with(state, user, model, body, endpoint, ctx, headers).await?;
        Ok(axum::Json(result.response).into_response())
    }
}

impl<L: Ledger> Call<L> {
    /// Starts a call: checks that the model serves the endpoint and the request's fields,
    /// validates the output cap, admits it under the rate limits of the key, its user and the
    /// key on the model (429 when one is reached; the worst case counts as its tokens until it
    /// settles), holds the worst case (402 when it does not fit, 503 when the
    /// database cannot be asked), and names the upstream's model.
    pub(super) async fn begin(
        state: &LlmState<L>,
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
        let hold = match state.ledger.hold(user.user_id, worst).await {
            Ok(hold) => hold,
            Err(HoldError::Insufficient { needed, available }) => {
                let error = ApiError::InsufficientCredits { needed, available, prompt_bound, cap };
                count_call(&model, endpoint, error.outcome());
                return Err(error);
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
    pub(super) async fn send(&self, sent: Instant) -> Result<reqwest::Response, ApiError> {
        let (base, node) = match &self.model.target {
            Target::Url(url) => (url.clone(), None),
            Target::Pool(pool) => match self.state.fleet.pick(pool) {
                Some(pick) => (pick.inference_url, Some(pick.node_id)),
                None => {
                    let error = ApiError::NoHealthyNode(pool.clone());
                    count_call(&self.model, self.endpoint, error.outcome());
                    return Err(error);
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
        let failed = |error: ApiError, reason: &str| {
            if let Some(node) = node {
                self.state.fleet.mark_down(node, reason);
            }
            self.observe(sent.elapsed(), error.outcome());
            Err(error)
        };
        let response = match tokio::time::timeout(self.state.upstream.request, request.send()).await {
            Err(_) => return failed(ApiError::UpstreamTimeout, "inference request timed out"),
            Ok(Err(e)) => return failed(send_error(&e), &format!("inference request failed: {e}")),
            Ok(Ok(r)) => r,
        };
        // Redirects are not followed (see `AppState::http`): one is a broken upstream, 502.
        if response.status().is_redirection() {
            let reason = format!("inference answered a redirect ({}); redirects are not followed", response.status());
            return failed(ApiError::UpstreamError { upstream_status: response.status().as_u16() }, &reason);
        }
        if !response.status().is_success() {
            let status = response.status();
            let error = self.upstream_failure(response).await;
            if status.is_server_error() {
                return failed(error, &format!("inference answered {status}"));
            }
            self.observe(sent.elapsed(), error.outcome());
            return Err(error);
        }
        Ok(response)
    }

    /// Our error for an upstream's error answer (`upstream_errors`); its body, bounded, is
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
    pub(super) fn settle(&mut self, reported: Usage, estimated: bool) -> (Usage, Decimal) {
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

    /// Counts the call under `outcome` and records its upstream wait and the gateway's overhead.
    pub(super) fn observe(&self, upstream_wait: Duration, outcome: Outcome) {
        count_call(&self.model, self.endpoint, outcome);
        metrics::histogram!(m::LLM_UPSTREAM_DURATION_SECONDS, "model" => self.model.name, "endpoint" => self.endpoint.label())
            .record(upstream_wait.as_secs_f64());
        let overhead = self.started.elapsed().saturating_sub(upstream_wait);
        metrics::histogram!(m::LLM_GATEWAY_OVERHEAD_SECONDS, "endpoint" => self.endpoint.label())
            .record(overhead.as_secs_f64());
    }
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
