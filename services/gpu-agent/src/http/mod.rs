//! The agent's HTTP API: one module per resource, each with `router()`, merged here with the
//! JSON fallbacks for unknown routes and wrong methods, over one cheap-to-clone [`AppState`].

mod auth;
mod error;
mod gpus;
mod health;

use std::sync::Arc;

use axum::Router;

pub use self::{auth::Authorized, error::AgentError};
use crate::{config::Secret, gpu::GpuSource};

#[derive(Clone)]
pub struct AppState {
    pub node_name: Arc<str>,
    /// `None`: `/v1/gpus` is open.
    pub token: Option<Arc<Secret>>,
    pub gpus: GpuSource,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(gpus::router())
        .merge(health::router())
        .fallback(|| async { AgentError::NotFound })
        .method_not_allowed_fallback(|| async { AgentError::MethodNotAllowed })
        .with_state(state)
}
