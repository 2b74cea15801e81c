//! The internal listener: `GET /metrics` (optionally behind a bearer token) and `GET /healthz`,
//! nothing else. It is never proxied by nginx and binds to an internal address.

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;

use std::sync::Arc;

use super::health::healthz;
use crate::gpu::fleet::Fleet;
use crate::telemetry::{LogWriter, metrics::LOG_LINES_DROPPED_TOTAL};

#[derive(Clone)]
struct MetricsState {
    handle: PrometheusHandle,
    token: Option<String>,
    log_writer: LogWriter,
    fleet: Arc<Fleet>,
}

pub fn router(handle: PrometheusHandle, token: Option<String>, log_writer: LogWriter, fleet: Arc<Fleet>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(MetricsState {
        handle,
        token,
        log_writer,
        fleet,
    })
}

async fn metrics(State(state): State<MetricsState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                "unauthorized\n",
            )
                .into_response();
        }
    }
    metrics::counter!(LOG_LINES_DROPPED_TOTAL).absolute(state.log_writer.dropped_lines());
    let text = crate::telemetry::exposition::render(&state.handle, &state.fleet.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
