//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers and
//! the process is not shutting down).

use std::time::Duration;

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use crate::{db, error::ApiResult, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    if state.is_shutting_down() {
        return Err(crate::error::ApiError::ShuttingDown);
    }
    db::ping(&state.db, Duration::from_secs(2)).await.map_err(crate::error::ApiError::DatabaseUnavailable)?;
    Ok(Json(json!({ "status": "ready" })))
}
