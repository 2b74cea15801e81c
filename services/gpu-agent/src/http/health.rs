//! `GET /healthz`: 200 when NVML answered within the cache window (a fresh read is made when the
//! last one is older), 503 with the reason otherwise. Open without a token: it carries no figures.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.gpus.read().await {
        Ok(gpus) => (StatusCode::OK, Json(json!({"status": "ok", "gpu_count": gpus.len()}))).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "code": e.code(), "reason": e.to_string()})),
        )
            .into_response(),
    }
}
