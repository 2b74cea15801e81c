//! `/api/chat/conversations`: create, list, show, and post a message (sent to the model with the
//! stored history, billed like a completion). Only the owner sees a conversation (others get
//! 404). What a user may store is bounded (`PR_MAX_*`, `crate::accounts::limits`), and creating
//! one needs credit.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    ConversationsState,
    store::{self, Conversation},
};
use crate::{
    accounts::{auth::AuthUser, limits},
    billing::fmt_usd,
    http::RequestContext,
    http::error::{ApiError, ApiResult},
    http::extract::AppJson,
    llm::{self, Endpoint, LlmState},
    state::AppState,
    telemetry::metrics::CHAT_CONVERSATIONS_CREATED_TOTAL,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chat/conversations", get(list).post(create))
        .route("/api/chat/conversations/{id}", get(show))
}

/// Posting a message waits on the model: it gets the upstream timeout.
pub fn messages_router() -> Router<AppState> {
    Router::new().route("/api/chat/conversations/{id}/messages", post(send))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    model: String,
    #[serde(default)]
    title: String,
    /// Optional system prompt, stored as the first message.
    system: Option<String>,
}

async fn create(
    State(state): State<ConversationsState>,
    user: AuthUser,
    AppJson(req): AppJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    let model =
        state.catalog.get(&req.model).ok_or_else(|| ApiError::ModelNotFound(req.model.chars().take(128).collect()))?;
    let bounds = &state.limits;
    limits::check_chars(&req.title, bounds.max_title_chars, "title", "PR_MAX_TITLE_CHARS", "invalid_title")?;
    let system = req.system.filter(|s| !s.is_empty());
    if let Some(system) = &system {
        let max = bounds.max_system_prompt_chars;
        limits::check_chars(system, max, "system", "PR_MAX_SYSTEM_PROMPT_CHARS", "invalid_system")?;
    }
    // A conversation is stored for free; only a user who can pay for its messages may start one.
    let (_, _, available) = state.billing.balance(user.user_id).await?;
    if available <= rust_decimal::Decimal::ZERO {
        return Err(ApiError::CreditRequired { available });
    }
    let mut tx = state.db.begin().await?;
    limits::lock_user(&mut tx, user.user_id).await?;
    let count = store::count(&mut tx, user.user_id).await?;
    let max = bounds.max_conversations_per_user;
    let advice = "Conversations cannot be deleted yet; ask the operator to raise the limit.";
    limits::check(count, 1, max, "conversations", "PR_MAX_CONVERSATIONS_PER_USER", advice)?;
    let conversation = store::create(&mut tx, user.user_id, &req.title, model.name, system.as_deref()).await?;
    tx.commit().await?;
    metrics::counter!(CHAT_CONVERSATIONS_CREATED_TOTAL).increment(1);
    Ok((StatusCode::CREATED, Json(conversation)))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    /// Cursor: the `next_cursor` of the previous page (a conversation id).
    before: Option<Uuid>,
}

async fn list(
    State(state): State<ConversationsState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<Json<Value>> {
    let limit = page.limit.unwrap_or(20).clamp(1, 100);
    let rows = store::list(&state.db, user.user_id, page.before, limit).await?;
    let next_cursor = if rows.len() as i64 == limit { rows.last().map(|c| c.id) } else { None };
    Ok(Json(json!({ "data": rows, "next_cursor": next_cursor })))
}

async fn owned(state: &ConversationsState, user: &AuthUser, id: &str) -> ApiResult<Conversation> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("Conversation"))?;
    store::owned(&state.db, user.user_id, id).await?.ok_or(ApiError::NotFound("Conversation"))
}

async fn show(
    State(state): State<ConversationsState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conversation = owned(&state, &user, &id).await?;
    let messages = store::history(&state.db, conversation.id).await?;
    Ok(Json(json!({ "conversation": conversation, "messages": messages })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendMessage {
    content: String,
}

/// The model call goes through the LLM engine, which takes its own state (`engine`).
async fn send(
    State(state): State<ConversationsState>,
    State(engine): State<LlmState>,
    user: AuthUser,
    ctx: RequestContext,
    Path(id): Path<String>,
    AppJson(req): AppJson<SendMessage>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if req.content.is_empty() {
        return Err(ApiError::bad_request("invalid_content", "content must not be empty"));
    }
    let max = state.limits.max_message_chars;
    limits::check_chars(&req.content, max, "content", "PR_MAX_MESSAGE_CHARS", "invalid_content")?;
    let conversation = owned(&state, &user, &id).await?;
    let model = state
        .catalog
        .get(&conversation.model)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(conversation.model.clone()))?;
    let history = store::history(&state.db, conversation.id).await?;
    // Checked before the call, so a reply that could not be stored is never billed. Concurrent
    // sends to one conversation may pass together: the limit can be overshot by two messages per
    // extra concurrent send (holding a lock across a model call would be worse).
    let max = state.limits.max_messages_per_conversation;
    let advice = "Start a new conversation.";
    limits::check(
        history.len() as i64,
        2,
        max,
        "messages in a conversation",
        "PR_MAX_MESSAGES_PER_CONVERSATION",
        advice,
    )?;
    let mut messages: Vec<Value> =
        history.into_iter().map(|m| json!({ "role": m.role, "content": m.content })).collect();
    messages.push(json!({ "role": "user", "content": req.content }));
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));

    let result = llm::complete(&engine, user, model, body, Endpoint::ConversationMessage, &ctx).await?;
    let reply =
        result.response.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or_default().to_owned();

    let (user_message, assistant_message) =
        store::record_exchange(&state.db, conversation.id, &req.content, &reply).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "user_message": user_message,
            "assistant_message": assistant_message,
            "usage": {
                "prompt_tokens": result.input_tokens,
                "completion_tokens": result.output_tokens,
                "cost_usd": fmt_usd(result.cost),
            },
        })),
    ))
}
