//! The prepaid credit ledger. Every change of a balance is one `credit_transactions` row written
//! in the same database transaction as the `user_balances` update, so a balance always equals
//! the sum of its user's rows. Usage rows are keyed by the call id (never billed twice); admin
//! credits by the client's `Idempotency-Key` (never applied twice).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{error::ApiError, telemetry::metrics::CREDIT_TRANSACTIONS_TOTAL};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    Topup,
    Usage,
    AdminAdjust,
    Refund,
}

impl CreditKind {
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
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

fn ser_usd<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_usd(*d))
}

const TX_COLUMNS: &str =
    "id, kind, amount_usd, reason, model, input_tokens, output_tokens, usage_estimated, request_id, created_at";

pub async fn balance(db: &PgPool, user_id: Uuid) -> Result<Decimal, sqlx::Error> {
    let balance: Option<Decimal> = sqlx::query_scalar("SELECT balance_usd FROM user_balances WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db)
        .await?;
    Ok(balance.unwrap_or_default())
}

/// One completed LLM call to bill.
#[derive(Debug, Clone)]
pub struct Usage {
    pub call_id: Uuid,
    pub user_id: Uuid,
    pub model: &'static str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Decimal,
    pub estimated: bool,
    pub request_id: String,
}

/// Writes usage rows durably, in batches: calls hand their row to one writer task and wait for
/// the commit that contains it. While one batch commits, the next one collects, so under load
/// many calls share one round trip and one commit instead of each paying for its own.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::Sender<(Usage, oneshot::Sender<Result<bool, String>>)>,
}

/// Most rows written in one statement.
const MAX_BATCH: usize = 512;

impl UsageWriter {
    pub fn spawn(db: PgPool) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Usage, oneshot::Sender<Result<bool, String>>)>(MAX_BATCH * 8);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let rows: Vec<&Usage> = batch.iter().map(|(u, _)| u).collect();
                match write_usage_batch(&db, &rows).await {
                    Ok(written) => {
                        for (usage, reply) in batch.drain(..) {
                            let _ = reply.send(Ok(written.contains(&usage.call_id)));
                        }
                    }
                    Err(e) => {
                        let e = e.to_string();
                        for (_, reply) in batch.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Bills one call and returns once the row is committed: false when the call was already
    /// billed (same call id). Errors are the database's, as text.
    pub async fn record(&self, usage: Usage) -> Result<bool, String> {
        let (reply, done) = oneshot::channel();
        self.tx.send((usage, reply)).await.map_err(|_| "usage writer stopped".to_owned())?;
        done.await.map_err(|_| "usage writer stopped".to_owned())?
    }
}

/// Inserts the rows (each call id at most once, ever) and debits the balances, in one
/// statement: atomic, one round trip. Returns the call ids that were written now.
async fn write_usage_batch(db: &PgPool, rows: &[&Usage]) -> Result<Vec<Uuid>, sqlx::Error> {
    let written: Vec<Uuid> = sqlx::query_scalar(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::numeric[], $3::uuid[], $4::text[], $5::int8[], $6::int8[], $7::bool[], $8::text[]) \
             AS t(user_id, amount, call_id, model, input_tokens, output_tokens, estimated, request_id)), \
         inserted AS ( \
           INSERT INTO credit_transactions \
             (user_id, kind, amount_usd, reason, call_id, model, input_tokens, output_tokens, usage_estimated, request_id) \
           SELECT user_id, 'usage', amount, 'llm call', call_id, model, input_tokens, output_tokens, estimated, request_id FROM input \
           ON CONFLICT (call_id) DO NOTHING RETURNING user_id, amount_usd, call_id), \
         per_user AS (SELECT user_id, sum(amount_usd) AS total FROM inserted GROUP BY user_id), \
         debited AS ( \
           UPDATE user_balances b SET balance_usd = b.balance_usd + per_user.total, updated_at = now() \
           FROM per_user WHERE b.user_id = per_user.user_id RETURNING b.user_id) \
         SELECT call_id FROM inserted",
    )
    .bind(rows.iter().map(|u| u.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| -u.cost).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.call_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.model).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.input_tokens as i64).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.output_tokens as i64).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.estimated).collect::<Vec<_>>())
    .bind(rows.iter().map(|u| u.request_id.as_str()).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    metrics::counter!(CREDIT_TRANSACTIONS_TOTAL, "kind" => "usage").increment(written.len() as u64);
    Ok(written)
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
