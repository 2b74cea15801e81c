//! The non-streaming path: one JSON answer, billed at the usage it reports (an estimate, flagged,
//! when it reports none) with the billed figures written into it. The call runs in a task of its
//! own: if the client goes away or the handler times out, it still finishes and is billed.

use std::{sync::Arc, time::Instant};

use axum::http::HeaderMap;
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::{
    call::{Call, CallResult, estimate_tokens},
    catalog::{Model, Usage},
    endpoints::Endpoint,
    state::{Ledger, LlmState},
};
use crate::{
    accounts::auth::AuthUser,
    billing::fmt_usd,
    http::RequestContext,
    http::error::{ApiError, Outcome},
};

/// A non-streaming completion (`client_disconnect` when the client left before the answer).
pub async fn complete<L: Ledger>(
    state: &LlmState<L>,
    user: AuthUser,
    model: Arc<Model>,
    body: Map<String, Value>,
    endpoint: Endpoint,
    ctx: &RequestContext,
) -> Result<CallResult, ApiError> {
    complete_with(state, user, model, body, endpoint, ctx, HeaderMap::new()).await
}

pub(super) async fn complete_with<L: Ledger>(
    state: &LlmState<L>,
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

impl<L: Ledger> Call<L> {
    async fn run_complete(
        mut self,
        answer: &oneshot::Sender<Result<CallResult, ApiError>>,
    ) -> Result<CallResult, ApiError> {
        let sent = Instant::now();
        let response = self.send(sent).await?;
        let mut json = self.read_json(response, sent).await?;
        let upstream_wait = sent.elapsed();
        let (usage, cost) = self.bill_answer(&mut json);
        let outcome = if answer.is_closed() { Outcome::ClientDisconnect } else { Outcome::Success };
        self.observe(upstream_wait, outcome);
        Ok(CallResult { response: json, input_tokens: usage.all_input(), output_tokens: usage.output, cost })
    }

    /// The upstream's JSON answer, within what is left of the request timeout.
    pub(super) async fn read_json(&self, response: reqwest::Response, sent: Instant) -> Result<Value, ApiError> {
        let remaining = self.state.upstream.request.saturating_sub(sent.elapsed());
        let error = match tokio::time::timeout(remaining, response.json::<Value>()).await {
            Ok(Ok(v)) => return Ok(v),
            Err(_) => ApiError::UpstreamTimeout,
            Ok(Err(e)) => ApiError::InvalidResponse(format!("invalid upstream response: {e}")),
        };
        self.observe(sent.elapsed(), error.outcome());
        Err(error)
    }

    /// Settles a JSON answer at its reported usage (an estimate, flagged, when it has none) and
    /// writes the billed figures into it: the public model name, `usage.cost_usd`, and for the
    /// chat-style answers the billed (clamped) counts.
    pub(super) fn bill_answer(&mut self, json: &mut Value) -> (Usage, Decimal) {
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
