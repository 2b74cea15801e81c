//! The streaming path: the upstream's SSE stream is forwarded to the client event by event while
//! it listens, read to its end whether or not it does, and billed from its final usage event (an
//! estimate, flagged, when it reported none).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{
    call::{Call, estimate_tokens},
    catalog::{Model, Usage},
    endpoints::Endpoint,
    sse::{StreamMeter, find_event_end},
    state::{Ledger, LlmState},
};
use crate::{
    accounts::auth::AuthUser,
    http::RequestContext,
    http::error::{ApiError, Outcome},
    telemetry::metrics as m,
};

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
pub(super) async fn stream<L: Ledger>(
    state: &LlmState<L>,
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

impl<L: Ledger> Call<L> {
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
        let error = ApiError::UpstreamNotStreaming { cost };
        self.observe(upstream_wait, error.outcome());
        error
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Reads the upstream stream to its end, forwarding events to the client while it listens,
/// then bills what the upstream reported (or an estimate when it reported nothing).
async fn pump<L: Ledger>(
    mut call: Call<L>,
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
    let mut outcome = Outcome::Success;

    'read: loop {
        let next =
            match tokio::time::timeout(idle.min(deadline.saturating_duration_since(Instant::now())), upstream.next())
                .await
            {
                Err(_) => {
                    outcome = Outcome::UpstreamTimeout;
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    outcome = Outcome::UpstreamError;
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
    if client_gone && outcome == Outcome::Success {
        outcome = Outcome::ClientDisconnect;
    }
    call.observe(upstream_wait, outcome);
}
