//! HTTP: the public router (each domain's `router()` merged here, the telemetry middleware
//! applied once to all of them, the JSON 404 fallback), the internal metrics listener's router,
//! health probes, the extractors, and the one error type with its outcome table.

pub mod error;
pub mod extract;
pub mod health;
pub mod internal;
pub mod middleware;
#[cfg(feature = "test-routes")]
pub mod test_routes;

pub use middleware::{RequestContext, RequestLimits, TelemetryLayer};

use axum::Router;

use crate::{
    accounts, billing,
    config::Config,
    conversations, gpu,
    http::error::ApiError,
    llm,
    state::AppState,
    telemetry::{AccessLog, client_ip::TrustedProxies},
};

pub fn public_router(state: AppState, access_log: AccessLog) -> Router {
    let config = state.config.clone();
    let api = Router::new()
        .merge(health::router())
        .merge(accounts::keys::router())
        .merge(accounts::admin::router())
        .merge(billing::routes::router())
        .merge(conversations::router())
        .merge(gpu::registry::router())
        .merge(llm::routes::models_router());
    #[cfg(feature = "test-routes")]
    let api = api.merge(test_routes::router());
    let api = api.fallback(fallback).with_state(state.clone());
    // Handlers that wait on a model get the upstream's time limit instead of the API's.
    let llm = Router::new().merge(llm::routes::router()).merge(conversations::messages_router()).with_state(state);
    let mut llm_config = (*config).clone();
    llm_config.request_timeout_secs = config.upstream_timeout_secs + 5;
    with_http_stack(api, &config, access_log.clone()).merge(with_http_stack(llm, &llm_config, access_log))
}

/// Wraps every route (and the fallback) of `router` in the public HTTP middleware.
/// Public so the overhead benchmark measures exactly what production runs.
pub fn with_http_stack(router: Router, config: &Config, access_log: AccessLog) -> Router {
    router.layer(TelemetryLayer::new(
        access_log,
        TrustedProxies::new(config.trusted_proxies.clone()),
        RequestLimits { max_body_bytes: config.max_body_bytes, body_read_timeout: config.body_read_timeout() },
        config.request_timeout(),
    ))
}

async fn fallback() -> ApiError {
    ApiError::NotFound("Route")
}
