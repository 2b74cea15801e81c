//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers and
//! the process is not shutting down).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{FromRef, State},
    routing::get,
};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    db,
    http::error::{ApiError, ApiResult},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// What readiness depends on: the database and the shutdown flag (`AppState::begin_shutdown`).
#[derive(Clone)]
pub struct HealthState {
    pub db: PgPool,
    pub shutting_down: Arc<AtomicBool>,
}

impl FromRef<AppState> for HealthState {
    fn from_ref(app: &AppState) -> Self {
        Self { db: app.db.clone(), shutting_down: app.shutting_down.clone() }
    }
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<HealthState>) -> ApiResult<Json<Value>> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::ShuttingDown);
    }
    db::ping(&state.db, Duration::from_secs(2)).await.map_err(ApiError::DatabaseUnavailable)?;
    Ok(Json(json!({ "status": "ready" })))
}
