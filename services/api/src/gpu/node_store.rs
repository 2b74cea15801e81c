//! The `gpu_nodes` table, the registry of GPU nodes: every query on it, for the admin router
//! (`gpu::registry`) and the poller (`gpu::fleet`) alike.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct NodeRow {
    pub id: Uuid,
    pub name: String,
    pub agent_url: String,
    pub inference_url: String,
    pub pool: String,
    pub agent_token_env: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

const NODE_COLUMNS: &str = "id, name, agent_url, inference_url, pool, agent_token_env, enabled, created_at";

/// A node as registered (URLs without a trailing slash).
pub struct NewNode<'a> {
    pub name: &'a str,
    pub agent_url: &'a str,
    pub inference_url: &'a str,
    pub pool: &'a str,
    pub agent_token_env: Option<&'a str>,
}

/// Registers a node; a name already taken is a unique violation, for the caller to answer.
pub async fn insert(db: impl PgExecutor<'_>, node: &NewNode<'_>) -> Result<NodeRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO gpu_nodes (name, agent_url, inference_url, pool, agent_token_env) VALUES ($1, $2, $3, $4, $5) \
         RETURNING {NODE_COLUMNS}"
    )))
    .bind(node.name)
    .bind(node.agent_url)
    .bind(node.inference_url)
    .bind(node.pool)
    .bind(node.agent_token_env)
    .fetch_one(db)
    .await
}

/// Every node, by name; `enabled_only` for the poller (a disabled node is never polled).
pub async fn list(db: impl PgExecutor<'_>, enabled_only: bool) -> Result<Vec<NodeRow>, sqlx::Error> {
    let filter = if enabled_only { "WHERE enabled" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {NODE_COLUMNS} FROM gpu_nodes {filter} ORDER BY name")))
        .fetch_all(db)
        .await
}

pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<NodeRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {NODE_COLUMNS} FROM gpu_nodes WHERE id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Sets what is given (`None` keeps the stored value) and returns the node as it now is.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    enabled: Option<bool>,
    agent_token_env: Option<&str>,
) -> Result<NodeRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE gpu_nodes SET enabled = COALESCE($2, enabled), agent_token_env = COALESCE($3, agent_token_env) \
         WHERE id = $1 RETURNING {NODE_COLUMNS}"
    )))
    .bind(id)
    .bind(enabled)
    .bind(agent_token_env)
    .fetch_one(db)
    .await
}

pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM gpu_nodes WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}
