//! The LLM endpoints: OpenAI's `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/responses`, Anthropic's `POST /v1/messages` (streaming and not,
//! each through the one call engine in `llm`), and `GET /v1/models`. The handlers read the
//! engine's narrow state, [`LlmState`], taken from `AppState`.

use axum::{
    Json, Router,
    extract::State,
    http::HeaderMap,
    response::Response,
    routing::{get, post},
};
use serde_json::{Map, Value, json};

use crate::{
    accounts::auth::AuthUser,
    http::RequestContext,
    http::error::ApiResult,
    http::extract::AppJson,
    llm::{self, Endpoint, LlmState},
    state::AppState,
};

/// Routes whose handlers wait on an upstream: they get the upstream timeout, not the API's.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(|s, u, c, h, b| call(Endpoint::ChatCompletions, s, u, c, h, b)))
        .route("/v1/completions", post(|s, u, c, h, b| call(Endpoint::Completions, s, u, c, h, b)))
        .route("/v1/embeddings", post(|s, u, c, h, b| call(Endpoint::Embeddings, s, u, c, h, b)))
        .route("/v1/responses", post(|s, u, c, h, b| call(Endpoint::Responses, s, u, c, h, b)))
        .route("/v1/messages", post(|s, u, c, h, b| call(Endpoint::Messages, s, u, c, h, b)))
}

pub fn models_router() -> Router<AppState> {
    Router::new().route("/v1/models", get(models))
}

async fn models(State(state): State<LlmState>, _user: AuthUser) -> Json<Value> {
    let data: Vec<Value> = state
        .catalog
        .models()
        .iter()
        .map(|m| json!({ "id": m.name, "object": "model", "created": 0, "owned_by": "privaterouter" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn call(
    endpoint: Endpoint,
    State(state): State<LlmState>,
    user: AuthUser,
    ctx: RequestContext,
    headers: HeaderMap,
    AppJson(body): AppJson<Map<String, Value>>,
) -> ApiResult<Response> {
    llm::serve(&state, user, body, endpoint, &ctx, &headers).await
}
