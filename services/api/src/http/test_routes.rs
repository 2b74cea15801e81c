//! Routes compiled only with the `test-routes` feature, so integration tests can provoke a panic,
//! a slow handler, an internal error and JSON validation. Never built into release images.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::Query,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    http::error::{ApiError, ApiResult},
    http::extract::AppJson,
};

/// Stateless, so it merges into any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/__test/panic", get(panic))
        .route("/__test/sleep", get(sleep))
        .route("/__test/db-error", get(db_error))
        .route("/__test/echo/{id}", post(echo))
        .route("/__test/unauthorized", get(unauthorized))
}

async fn panic() -> &'static str {
    panic!("deliberate panic from /__test/panic")
}

#[derive(Deserialize)]
struct SleepQuery {
    ms: u64,
}

async fn sleep(Query(q): Query<SleepQuery>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(q.ms)).await;
    Json(json!({ "slept_ms": q.ms }))
}

async fn db_error() -> ApiResult<()> {
    Err(ApiError::Database(sqlx::Error::Protocol("deliberate database failure".into())))
}

#[derive(Deserialize)]
struct EchoBody {
    name: String,
    count: u32,
}

async fn echo(axum::extract::Path(id): axum::extract::Path<String>, AppJson(body): AppJson<EchoBody>) -> Json<Value> {
    Json(json!({ "id": id, "name": body.name, "count": body.count }))
}

async fn unauthorized() -> ApiResult<()> {
    Err(ApiError::Unauthorized)
}
