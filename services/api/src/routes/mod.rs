//! Routers: the public API and the internal metrics listener. Each resource module exposes
//! `router()`; they are merged here, and the telemetry stack is applied once to all of them.

pub mod health;
pub mod internal;
#[cfg(feature = "test-routes")]
pub mod test_routes;

use axum::{Router, extract::DefaultBodyLimit, http::StatusCode};
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::{
    config::Config,
    error::ApiError,
    state::AppState,
    telemetry::{AccessLog, TelemetryLayer, client_ip::TrustedProxies},
};

pub fn public_router(state: AppState, access_log: AccessLog) -> Router {
    let config = state.config.clone();
    let router = Router::new().merge(health::router());
    #[cfg(feature = "test-routes")]
    let router = router.merge(test_routes::router());
    with_http_stack(
        router.fallback(fallback).with_state(state),
        &config,
        access_log,
    )
}

/// Wraps every route (and the fallback) of `router` in the public HTTP stack: telemetry outermost
/// (so it sees timeouts, 413s and panics of everything inside), then body limit and timeouts.
/// Public so the overhead benchmark measures exactly what production runs.
pub fn with_http_stack(router: Router, config: &Config, access_log: AccessLog) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(TelemetryLayer::new(
                access_log,
                TrustedProxies::new(config.trusted_proxies.clone()),
                config.max_body_bytes,
            ))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                config.request_timeout(),
            ))
            .layer(RequestBodyTimeoutLayer::new(config.body_read_timeout())),
    )
}

async fn fallback() -> ApiError {
    ApiError::NotFound("Route")
}
