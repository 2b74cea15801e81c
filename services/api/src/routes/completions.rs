//! The OpenAI-compatible surface: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Map, Value, json};

use crate::{
    auth::AuthUser,
    error::{ApiError, ApiResult},
    extract::AppJson,
    gateway::{self, Endpoint},
    state::AppState,
    telemetry::RequestContext,
};

/// Routes whose handlers wait on an upstream: they get the upstream timeout, not the API's.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/chat/completions", post(chat_completions))
}

pub fn models_router() -> Router<AppState> {
    Router::new().route("/v1/models", get(models))
}

async fn models(State(state): State<AppState>, _user: AuthUser) -> Json<Value> {
    let data: Vec<Value> = state
        .catalog
        .models()
        .iter()
        .map(|m| json!({ "id": m.name, "object": "model", "created": 0, "owned_by": "privaterouter" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn chat_completions(
    State(state): State<AppState>,
    user: AuthUser,
    ctx: RequestContext,
    AppJson(body): AppJson<Map<String, Value>>,
) -> ApiResult<Response> {
    let Some(Value::String(name)) = body.get("model") else {
        return Err(ApiError::bad_request("invalid_request_body", "`model` is required and must be a string"));
    };
    if body.get("messages").and_then(Value::as_array).is_none_or(|a| a.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_request_body",
            "`messages` is required and must be a non-empty array",
        ));
    }
    let streaming = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_request_body", "`stream` must be a boolean"));
        }
    };
    let model =
        state.catalog.get(name).cloned().ok_or_else(|| ApiError::ModelNotFound(name.chars().take(128).collect()))?;
    if streaming {
        gateway::stream(&state, user, model, body, Endpoint::ChatCompletions, &ctx).await
    } else {
        let result = gateway::complete(&state, user, model, body, Endpoint::ChatCompletions, &ctx).await?;
        Ok(Json(result.response).into_response())
    }
}
