//! Admin registry of GPU nodes: `/api/admin/gpu-nodes`. The agent's token is never stored or
//! returned: a node names the API's environment variable that holds it (`agent_token_env`),
//! which must be a `PR_GPU_AGENT_TOKEN_*` variable (`crate::gpu::node_policy`).

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
    accounts::auth::AdminUser,
    gpu::{
        GpuState,
        node_policy::{self, AGENT_TOKEN_ENV_RULE},
        node_store::{self, NewNode, NodeRow},
    },
    http::error::{ApiError, ApiResult},
    http::extract::AppJson,
    llm::catalog::validate_http_url,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/gpu-nodes", get(list).post(create))
        .route("/api/admin/gpu-nodes/{id}", get(show).patch(update).delete(remove))
}

fn is_label(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNode {
    name: String,
    agent_url: String,
    inference_url: String,
    #[serde(default = "default_pool")]
    pool: String,
    agent_token_env: Option<String>,
}

fn default_pool() -> String {
    "default".into()
}

fn view(state: &GpuState, row: &NodeRow) -> Value {
    let health = state.fleet.health(row.id).unwrap_or_default();
    json!({
        "id": row.id,
        "name": row.name,
        "agent_url": row.agent_url,
        "inference_url": row.inference_url,
        "pool": row.pool,
        "enabled": row.enabled,
        "agent_token_env": row.agent_token_env,
        "created_at": row.created_at,
        "health": health,
    })
}

async fn create(
    State(state): State<GpuState>,
    _admin: AdminUser,
    AppJson(req): AppJson<CreateNode>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !is_label(&req.name) || !is_label(&req.pool) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name and pool must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if !validate_http_url(&req.agent_url) || !validate_http_url(&req.inference_url) {
        return Err(ApiError::bad_request("invalid_url", "agent_url and inference_url must be http(s) URLs"));
    }
    for (field, url) in [("agent_url", &req.agent_url), ("inference_url", &req.inference_url)] {
        state
            .fleet
            .allowed_nets()
            .check(field, url)
            .map_err(|message| ApiError::NotAllowed { code: "gpu_node_address_not_allowed", message })?;
    }
    if let Some(var) = &req.agent_token_env {
        check_token_env(var)?;
    }
    let node = NewNode {
        name: &req.name,
        agent_url: req.agent_url.trim_end_matches('/'),
        inference_url: req.inference_url.trim_end_matches('/'),
        pool: &req.pool,
        agent_token_env: req.agent_token_env.as_deref(),
    };
    let row = match node_store::insert(&state.db, &node).await {
        Ok(row) => row,
        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
            return Err(ApiError::Conflict(format!("a GPU node named {} already exists", req.name)));
        }
        Err(e) => return Err(e.into()),
    };
    state.fleet.upsert(row.clone());
    poll_soon(&state, row.clone());
    Ok((StatusCode::CREATED, Json(view(&state, &row))))
}

/// A token variable must pass the prefix rule (422: a policy refusal) and be set (400).
fn check_token_env(var: &str) -> ApiResult<()> {
    if !node_policy::token_env_allowed(var) {
        return Err(ApiError::NotAllowed { code: "agent_token_env_not_allowed", message: AGENT_TOKEN_ENV_RULE.into() });
    }
    if std::env::var(var).map_or(true, |v| v.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_agent_token_env",
            format!("agent_token_env names {var}, which is not set in the API's environment"),
        ));
    }
    Ok(())
}

/// Polls a node right away instead of at the next round.
fn poll_soon(state: &GpuState, row: NodeRow) {
    let (fleet, http, timeout) = (state.fleet.clone(), state.http.clone(), state.poll_timeout);
    tokio::spawn(async move { fleet.poll_node(&http, &row, timeout).await });
}

async fn list(State(state): State<GpuState>, _admin: AdminUser) -> ApiResult<Json<Value>> {
    let rows = node_store::list(&state.db, false).await?;
    Ok(Json(json!({ "data": rows.iter().map(|r| view(&state, r)).collect::<Vec<_>>() })))
}

async fn find(state: &GpuState, id: &str) -> ApiResult<NodeRow> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("GPU node"))?;
    node_store::find(&state.db, id).await?.ok_or(ApiError::NotFound("GPU node"))
}

async fn show(State(state): State<GpuState>, _admin: AdminUser, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let row = find(&state, &id).await?;
    Ok(Json(view(&state, &row)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateNode {
    enabled: Option<bool>,
    /// A new token variable, under the same rule as at registration (how a node registered
    /// before the `PR_GPU_AGENT_TOKEN_*` rule is brought back).
    agent_token_env: Option<String>,
}

/// Enable or disable a node (a disabled node is neither polled nor routed to, and its series
/// leave `/metrics`), or change its token variable.
async fn update(
    State(state): State<GpuState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    AppJson(req): AppJson<UpdateNode>,
) -> ApiResult<Json<Value>> {
    let row = find(&state, &id).await?;
    if let Some(var) = &req.agent_token_env {
        check_token_env(var)?;
    }
    let row = node_store::update(&state.db, row.id, req.enabled, req.agent_token_env.as_deref()).await?;
    if row.enabled {
        state.fleet.upsert(row.clone());
        poll_soon(&state, row.clone());
    } else {
        state.fleet.remove(row.id);
    }
    Ok(Json(view(&state, &row)))
}

async fn remove(State(state): State<GpuState>, _admin: AdminUser, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let row = find(&state, &id).await?;
    node_store::delete(&state.db, row.id).await?;
    state.fleet.remove(row.id);
    Ok(StatusCode::NO_CONTENT)
}
