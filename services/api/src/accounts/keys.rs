//! `/api/keys`: create (the key is shown once), list, show, revoke. A key created here is the
//! child of the key that created it; revoking a key revokes its descendants too. Any active key
//! of a user may revoke any key of that user (an ancestor included).

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
    accounts::{
        limits,
        rate_limits::{self, RateLimits},
    },
    accounts::auth::{self, AuthUser},
    error::{ApiError, ApiResult},
    http::extract::AppJson,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/keys", get(list).post(create)).route("/api/keys/{id}", get(show).delete(revoke))
}

#[derive(Serialize, sqlx::FromRow)]
pub(crate) struct KeyView {
    id: Uuid,
    name: String,
    prefix: String,
    /// The key this one was created with (None: created from the command line).
    parent_key_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    /// The key's own rate limits (null: none of that kind beyond its user's).
    #[sqlx(flatten)]
    limits: KeyLimitColumns,
}

#[derive(sqlx::FromRow)]
struct KeyLimitColumns {
    requests_per_minute: Option<i32>,
    tokens_per_minute: Option<i64>,
    max_concurrent: Option<i32>,
}

impl Serialize for KeyLimitColumns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RateLimits::from_columns(self.requests_per_minute, self.tokens_per_minute, self.max_concurrent).serialize(s)
    }
}

pub(crate) const KEY_COLUMNS: &str =
    "id, name, prefix, parent_key_id, created_at, revoked_at, requests_per_minute, tokens_per_minute, max_concurrent";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    name: String,
    /// The new key's rate limits: each at most the creating key's and the user's; left out, the
    /// creating key's.
    #[serde(default)]
    limits: Option<RateLimits>,
}

async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    body: Option<AppJson<CreateKey>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let CreateKey { name, limits: asked } = body.map(|AppJson(b)| b).unwrap_or_default();
    let limits = RateLimits::for_child(asked, user.key_limits, user.user_limits)?;
    if name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "name must be at most 100 printable characters"));
    }
    let mut tx = state.db.begin().await?;
    // Under the user's lock: a revocation of this key (or an ancestor) either committed before,
    // and the check below sees it, or waits for this key to exist and revokes it as well.
    limits::lock_user(&mut tx, user.user_id).await?;
    let (parent_active, active): (bool, i64) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $2 AND revoked_at IS NULL), \
                (SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL)",
    )
    .bind(user.user_id)
    .bind(user.key_id)
    .fetch_one(&mut *tx)
    .await?;
    // The key was revoked on another replica and is still in this one's cache.
    if !parent_active {
        return Err(ApiError::Unauthorized);
    }
    let max = state.config.max_api_keys_per_user;
    limits::check(active, 1, max, "active API keys", "PR_MAX_API_KEYS_PER_USER", "Revoke a key first.")?;
    let (id, key) = auth::create_key(&mut *tx, user.user_id, &name, Some(user.key_id)).await?;
    rate_limits::set(&mut *tx, rate_limits::Holder::Key, id, limits).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "key": key, "prefix": auth::display_prefix(&key), "limits": limits })),
    ))
}

async fn list(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let keys: Vec<KeyView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id"
    )))
    .bind(user.user_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(json!({ "data": keys })))
}

async fn find(state: &AppState, user: &AuthUser, id: &str) -> ApiResult<KeyView> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("API key"))?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2")))
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
    let mut tx = state.db.begin().await?;
    // Under the user's lock, so no child of the tree is being created meanwhile (see `create`).
    limits::lock_user(&mut tx, user.user_id).await?;
    // The caller's own key may have been revoked on another replica, where this one's cache has
    // not heard of it yet: a revoked key revokes nothing (as it creates nothing).
    let caller_active: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL)")
            .bind(user.key_id)
            .fetch_one(&mut *tx)
            .await?;
    if !caller_active {
        state.keys.evict_key_ids(&[user.key_id]);
        return Err(ApiError::Unauthorized);
    }
    let tree = auth::revoke_tree(&mut *tx, user.user_id, key.id).await?;
    tx.commit().await?;
    // At once here and, through Redis, on every other replica (else within the cache TTL).
    state.keys.revoked(&tree).await;
    Ok(StatusCode::NO_CONTENT)
}
