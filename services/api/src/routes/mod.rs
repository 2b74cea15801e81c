//! Routers: the public API and the internal metrics listener. Each resource module exposes
//! `router()`; they are merged here, and the telemetry stack is applied once to all of them.

pub mod health;
pub mod internal;
#[cfg(feature = "test-routes")]
pub mod test_routes;

use axum::Router;

use crate::{
    config::Config,
    error::ApiError,
    state::AppState,
    telemetry::{AccessLog, RequestLimits, TelemetryLayer, client_ip::TrustedProxies},
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

/// Wraps every route (and the fallback) of `router` in the public HTTP middleware.
/// Public so the overhead benchmark measures exactly what production runs.
pub fn with_http_stack(router: Router, config: &Config, access_log: AccessLog) -> Router {
    router.layer(TelemetryLayer::new(
        access_log,
        TrustedProxies::new(config.trusted_proxies.clone()),
        RequestLimits {
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout(),
        },
        config.request_timeout(),
    ))
}

async fn fallback() -> ApiError {
    ApiError::NotFound("Route")
}
