//! The `conversations` and `messages` tables: every query on them. Only the owner's rows are
//! ever returned, so another user's conversation cannot be told from a missing one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Serialize, sqlx::FromRow)]
pub struct Conversation {
    pub id: Uuid,
    pub title: String,
    pub model: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct Message {
    pub id: i64,
    pub role: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// How many conversations the user holds (for `PR_MAX_CONVERSATIONS_PER_USER`).
pub async fn count(db: &mut PgConnection, user_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM conversations WHERE user_id = $1").bind(user_id).fetch_one(db).await
}

/// Creates a conversation, with its system prompt as the first message when there is one.
pub async fn create(
    db: &mut PgConnection,
    user_id: Uuid,
    title: &str,
    model: &str,
    system: Option<&str>,
) -> Result<Conversation, sqlx::Error> {
    let conversation: Conversation = sqlx::query_as(
        "INSERT INTO conversations (user_id, title, model) VALUES ($1, $2, $3) RETURNING id, title, model, created_at, updated_at",
    )
    .bind(user_id)
    .bind(title)
    .bind(model)
    .fetch_one(&mut *db)
    .await?;
    if let Some(system) = system {
        sqlx::query("INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'system', $2)")
            .bind(conversation.id)
            .bind(system)
            .execute(&mut *db)
            .await?;
    }
    Ok(conversation)
}

/// The user's conversations, newest first, `limit` of them from after the cursor `before`.
pub async fn list(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Conversation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, title, model, created_at, updated_at FROM conversations c WHERE user_id = $1 \
           AND ($2::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM conversations WHERE id = $2 AND user_id = $1)) \
         ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The user's conversation `id` (None for another user's).
pub async fn owned(db: impl PgExecutor<'_>, user_id: Uuid, id: Uuid) -> Result<Option<Conversation>, sqlx::Error> {
    sqlx::query_as("SELECT id, title, model, created_at, updated_at FROM conversations WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .fetch_optional(db)
        .await
}

/// Every message of a conversation, oldest first.
pub async fn history(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, content, created_at FROM messages WHERE conversation_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(db)
        .await
}

/// Stores a user message and the model's reply together (both or neither), and marks the
/// conversation updated.
pub async fn record_exchange(
    db: &PgPool,
    id: Uuid,
    content: &str,
    reply: &str,
) -> Result<(Message, Message), sqlx::Error> {
    let mut tx = db.begin().await?;
    let user_message: Message = sqlx::query_as(
        "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'user', $2) RETURNING id, role, content, created_at",
    )
    .bind(id)
    .bind(content)
    .fetch_one(&mut *tx)
    .await?;
    let assistant_message: Message = sqlx::query_as(
        "INSERT INTO messages (conversation_id, role, content) VALUES ($1, 'assistant', $2) RETURNING id, role, content, created_at",
    )
    .bind(id)
    .bind(reply)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE conversations SET updated_at = now() WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok((user_message, assistant_message))
}
