//! `GET /v1/gpus`: the node's current GPU reading, the body the API's poller reads.

use axum::{Json, Router, extract::State, routing::get};

use super::{AgentError, AppState, Authorized};
use crate::gpu::GpusResponse;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/gpus", get(list_gpus))
}

async fn list_gpus(_: Authorized, State(state): State<AppState>) -> Result<Json<GpusResponse>, AgentError> {
    let gpus = state.gpus.read().await?;
    Ok(Json(GpusResponse { node_name: state.node_name.to_string(), gpus: gpus.to_vec() }))
}
