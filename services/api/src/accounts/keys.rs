//! `/api/keys`: create (the key is shown once), list, show, revoke. A key created here is the
//! child of the key that created it; revoking a key revokes its descendants too. Any active key
//! of a user may revoke any key of that user (an ancestor included).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    accounts::{
        AccountsState,
        auth::AuthUser,
        key_store::{self, KeyView},
        limits,
        rate_limits::{self, RateLimits},
    },
    http::error::{ApiError, ApiResult},
    http::extract::AppJson,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/keys", get(list).post(create)).route("/api/keys/{id}", get(show).delete(revoke))
}

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
    State(state): State<AccountsState>,
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
    // The key was revoked on another replica and is still in this one's cache.
    if !key_store::is_active(&mut tx, user.key_id).await? {
        return Err(ApiError::Unauthorized);
    }
    let active = key_store::count_active(&mut tx, user.user_id).await?;
    let max = state.max_api_keys_per_user;
    limits::check(active, 1, max, "active API keys", "PR_MAX_API_KEYS_PER_USER", "Revoke a key first.")?;
    let (id, key) = key_store::create(&mut *tx, user.user_id, &name, Some(user.key_id)).await?;
    rate_limits::set(&mut *tx, rate_limits::Holder::Key, id, limits).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": id, "name": name, "key": key, "prefix": key_store::display_prefix(&key), "limits": limits }),
        ),
    ))
}

async fn list(State(state): State<AccountsState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let keys = key_store::list(&state.db, user.user_id).await?;
    Ok(Json(json!({ "data": keys })))
}

async fn find(state: &AccountsState, user: &AuthUser, id: &str) -> ApiResult<KeyView> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("API key"))?;
    key_store::find(&state.db, user.user_id, id).await?.ok_or(ApiError::NotFound("API key"))
}

async fn show(State(state): State<AccountsState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<Json<KeyView>> {
    Ok(Json(find(&state, &user, &id).await?))
}

async fn revoke(State(state): State<AccountsState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let key = find(&state, &user, &id).await?;
    let mut tx = state.db.begin().await?;
    // Under the user's lock, so no child of the tree is being created meanwhile (see `create`).
    limits::lock_user(&mut tx, user.user_id).await?;
    // The caller's own key may have been revoked on another replica, where this one's cache has
    // not heard of it yet: a revoked key revokes nothing (as it creates nothing).
    if !key_store::is_active(&mut tx, user.key_id).await? {
        state.keys.evict_key_ids(&[user.key_id]);
        return Err(ApiError::Unauthorized);
    }
    let tree = key_store::revoke_tree(&mut *tx, user.user_id, key.id).await?;
    tx.commit().await?;
    // At once here and, through Redis, on every other replica (else within the cache TTL).
    state.keys.revoked(&tree).await;
    Ok(StatusCode::NO_CONTENT)
}
