//! Admin routes that set rate limits: `PATCH /api/admin/keys/{id}` and
//! `PATCH /api/admin/users/{id}`, each `{"limits": {...}}` where a field left out keeps its value
//! and `null` removes that limit. Admins are not bound by the "a key may only tighten" rule.
//! The change reaches this replica's key cache at once and, published through Redis like a
//! revocation (`accounts::revocation`), every other replica's; without Redis, within the TTL.

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::patch,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    accounts::{
        AccountsState,
        auth::AdminUser,
        rate_limits::{self, Holder, LimitsPatch, RateLimits},
    },
    http::error::{ApiError, ApiResult},
    http::extract::AppJson,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/keys/{id}", patch(patch_key)).route("/api/admin/users/{id}", patch(patch_user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchLimits {
    limits: LimitsPatch,
}

async fn patch_key(
    State(state): State<AccountsState>,
    AdminUser(_admin): AdminUser,
    Path(id): Path<String>,
    AppJson(req): AppJson<PatchLimits>,
) -> ApiResult<Json<Value>> {
    let (key_id, limits) = patch_own(&state, Holder::Key, &id, &req.limits).await?;
    state.keys.revoked(&[key_id]).await;
    Ok(Json(json!({ "id": key_id, "limits": limits })))
}

async fn patch_user(
    State(state): State<AccountsState>,
    AdminUser(_admin): AdminUser,
    Path(id): Path<String>,
    AppJson(req): AppJson<PatchLimits>,
) -> ApiResult<Json<Value>> {
    let (user_id, limits) = patch_own(&state, Holder::User, &id, &req.limits).await?;
    state.keys.user_changed(user_id).await;
    // What applies: the user's own limits, the PR_USER_* defaults where they set none.
    let effective = limits.or(state.keys.user_defaults());
    Ok(Json(json!({ "id": user_id, "limits": limits, "effective_limits": effective })))
}

async fn patch_own(
    state: &AccountsState,
    holder: Holder,
    id: &str,
    patch: &LimitsPatch,
) -> ApiResult<(Uuid, RateLimits)> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound(holder.noun()))?;
    let limits = rate_limits::patch(&state.db, holder, id, patch).await?.ok_or(ApiError::NotFound(holder.noun()))?;
    Ok((id, limits))
}
