//! The prepaid credit ledger. Every change of a balance is one `credit_transactions` row written
//! in the same database transaction as the `user_balances` update, so a balance always equals
//! the sum of its user's rows. Usage rows are keyed by the call id (never billed twice); admin
//! credits by the client's `Idempotency-Key` (never applied twice). Usage rows are written by
//! [`super::settle`].

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{http::error::ApiError, telemetry::metrics::CREDIT_TRANSACTIONS_TOTAL};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    Topup,
    Usage,
    AdminAdjust,
    Refund,
}

impl CreditKind {
    pub const ALL: [Self; 4] = [Self::Topup, Self::Usage, Self::AdminAdjust, Self::Refund];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topup => "topup",
            Self::Usage => "usage",
            Self::AdminAdjust => "admin_adjust",
            Self::Refund => "refund",
        }
    }
}

/// Renders an amount for clients: exact, trailing zeros trimmed, at least cents.
pub fn fmt_usd(amount: Decimal) -> String {
    let mut d = amount.normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    d.to_string()
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Transaction {
    pub id: i64,
    pub kind: String,
    #[serde(serialize_with = "ser_usd")]
    pub amount_usd: Decimal,
    pub reason: String,
    pub model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub usage_estimated: bool,
    pub usage_flags: Vec<String>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn ser_usd<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_usd(*d))
}

const TX_COLUMNS: &str = "id, kind, amount_usd, reason, model, input_tokens, output_tokens, usage_estimated, usage_flags, request_id, created_at";

/// (balance, held by leases) of a user.
pub async fn balance(db: &PgPool, user_id: Uuid) -> Result<(Decimal, Decimal), sqlx::Error> {
    let row: Option<(Decimal, Decimal)> =
        sqlx::query_as("SELECT balance_usd, held_usd FROM user_balances WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(db)
            .await?;
    Ok(row.unwrap_or_default())
}

/// Applies an admin credit once per (user, idempotency key). Returns the transaction and whether
/// this call applied it (false: a retry of an earlier call, nothing changed).
pub async fn admin_credit(
    db: &PgPool,
    user_id: Uuid,
    kind: CreditKind,
    amount: Decimal,
    reason: &str,
    idempotency_key: &str,
) -> Result<(Transaction, bool), ApiError> {
    let mut tx = db.begin().await?;
    let exists: Option<Uuid> = sqlx::query_scalar("SELECT user_id FROM user_balances WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(ApiError::NotFound("User"));
    }
    let inserted: Option<Transaction> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO credit_transactions (user_id, kind, amount_usd, reason, idempotency_key) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING {TX_COLUMNS}"
    )))
    .bind(user_id)
    .bind(kind.as_str())
    .bind(amount)
    .bind(reason)
    .bind(idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    match inserted {
        Some(row) => {
            sqlx::query(
                "UPDATE user_balances SET balance_usd = balance_usd + $2, updated_at = now() WHERE user_id = $1",
            )
            .bind(user_id)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            metrics::counter!(CREDIT_TRANSACTIONS_TOTAL, "kind" => kind.as_str()).increment(1);
            Ok((row, true))
        }
        None => {
            let existing: Transaction = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {TX_COLUMNS} FROM credit_transactions WHERE user_id = $1 AND idempotency_key = $2"
            )))
            .bind(user_id)
            .bind(idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            if existing.kind != kind.as_str() || existing.amount_usd != amount || existing.reason != reason {
                return Err(ApiError::Unprocessable(
                    "this Idempotency-Key was already used for a different request".into(),
                ));
            }
            Ok((existing, false))
        }
    }
}

/// Newest first; `before` is the id of the last row of the previous page.
pub async fn transactions(
    db: &PgPool,
    user_id: Uuid,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Transaction>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TX_COLUMNS} FROM credit_transactions WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    )))
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}
