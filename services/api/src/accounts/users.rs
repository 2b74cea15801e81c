//! Users. The first admin is created from the command line
//! (`privaterouter-api admin create-user --email ... --admin`): there is no default credential.

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    accounts::{auth::Role, key_store},
    http::error::ApiError,
};

/// Creates a user with a zero balance and a first API key; returns (user id, key).
pub async fn create_user(db: &PgPool, email: &str, role: Role) -> Result<(Uuid, String), ApiError> {
    let email = email.trim();
    if email.is_empty() || email.len() > 254 || !email.contains('@') || email.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_email", "email must look like an email address"));
    }
    let mut tx = db.begin().await?;
    let user_id: Uuid = match sqlx::query_scalar("INSERT INTO users (email, role) VALUES ($1, $2) RETURNING id")
        .bind(email)
        .bind(role.as_str())
        .fetch_one(&mut *tx)
        .await
    {
        Ok(id) => id,
        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => {
            return Err(ApiError::Conflict(format!("a user with email {email} already exists")));
        }
        Err(e) => return Err(e.into()),
    };
    sqlx::query("INSERT INTO user_balances (user_id) VALUES ($1)").bind(user_id).execute(&mut *tx).await?;
    tx.commit().await?;
    let (_, key) = key_store::create(db, user_id, "default", None).await?;
    Ok((user_id, key))
}
