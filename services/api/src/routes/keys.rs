//! `/api/keys`: create (the key is shown once), list, show, revoke.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    auth::{self, AuthUser},
    error::{ApiError, ApiResult},
    extract::AppJson,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/keys", get(list).post(create)).route("/api/keys/{id}", get(show).delete(revoke))
}

#[derive(Serialize, sqlx::FromRow)]
struct KeyView {
    id: Uuid,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    name: String,
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    body: Option<AppJson<CreateKey>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = body.map(|AppJson(b)| b.name).unwrap_or_default();
    if name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "name must be at most 100 printable characters"));
    }
    let (id, key) = auth::create_key(&state.db, user.user_id, &name).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "name": name, "key": key, "prefix": auth::display_prefix(&key) }))))
}

async fn list(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let keys: Vec<KeyView> = sqlx::query_as(
        "SELECT id, name, prefix, created_at, revoked_at FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id",
    )
    .bind(user.user_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(json!({ "data": keys })))
}

async fn find(state: &AppState, user: &AuthUser, id: &str) -> ApiResult<KeyView> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("API key"))?;
    sqlx::query_as("SELECT id, name, prefix, created_at, revoked_at FROM api_keys WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound("API key"))
}

async fn show(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<Json<KeyView>> {
    Ok(Json(find(&state, &user, &id).await?))
}

async fn revoke(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let key = find(&state, &user, &id).await?;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(key.id)
        .execute(&state.db)
        .await?;
    state.keys.evict_key_id(key.id);
    Ok(StatusCode::NO_CONTENT)
}
