//! `/api/billing/*` for the caller's own balance and ledger, and the admin credit endpoint. The
//! queries are the ledger's (`billing::ledger`); the balance is the billing engine's, which
//! counts what is held for calls in flight.

use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    accounts::auth::{AdminUser, AuthUser},
    billing::{Billing, CreditKind, fmt_usd, ledger},
    http::error::{ApiError, ApiResult},
    http::extract::AppJson,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/billing/balance", get(balance))
        .route("/api/billing/transactions", get(transactions))
        .route("/api/admin/users/{id}/credits", post(admin_credit))
}

/// What the billing routes use: the ledger's database and the engine that knows the holds.
#[derive(Clone)]
pub struct BillingState {
    pub db: PgPool,
    pub billing: Billing,
}

impl FromRef<AppState> for BillingState {
    fn from_ref(app: &AppState) -> Self {
        Self { db: app.db.clone(), billing: app.billing.clone() }
    }
}

async fn balance(State(state): State<BillingState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let (balance, held, available) = state.billing.balance(user.user_id).await?;
    Ok(Json(json!({
        "balance_usd": fmt_usd(balance),
        "held_usd": fmt_usd(held),
        "available_usd": fmt_usd(available),
        "currency": "USD",
        "user_id": user.user_id,
    })))
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<i64>,
    /// Cursor: the `next_cursor` of the previous page.
    before: Option<i64>,
}

async fn transactions(
    State(state): State<BillingState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<Json<Value>> {
    let limit = page.limit.unwrap_or(50).clamp(1, 200);
    let rows = ledger::transactions(&state.db, user.user_id, limit, page.before).await?;
    let next_cursor = if rows.len() as i64 == limit { rows.last().map(|t| t.id) } else { None };
    Ok(Json(json!({ "data": rows, "next_cursor": next_cursor })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditRequest {
    kind: CreditKind,
    amount_usd: String,
    #[serde(default)]
    reason: String,
}

async fn admin_credit(
    State(state): State<BillingState>,
    AdminUser(_admin): AdminUser,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    AppJson(req): AppJson<CreditRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let user_id: Uuid = user_id.parse().map_err(|_| ApiError::NotFound("User"))?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| (1..=255).contains(&k.len()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "idempotency_key_required",
                "an Idempotency-Key header (1-255 characters) is required",
            )
        })?;
    if req.kind == CreditKind::Usage {
        return Err(ApiError::bad_request("invalid_kind", "kind must be one of topup, admin_adjust, refund"));
    }
    let amount: Decimal = req
        .amount_usd
        .trim()
        .parse()
        .ok()
        .filter(|d: &Decimal| d.scale() <= 12 && d.abs() < Decimal::from(1_000_000_000u64))
        .ok_or_else(|| {
            ApiError::bad_request("invalid_amount", "amount_usd must be a decimal string such as \"12.50\"")
        })?;
    let valid_sign = match req.kind {
        CreditKind::Topup | CreditKind::Refund => amount > Decimal::ZERO,
        CreditKind::AdminAdjust => !amount.is_zero(),
        CreditKind::Usage => false,
    };
    if !valid_sign {
        return Err(ApiError::bad_request(
            "invalid_amount",
            "topup and refund amounts must be positive; admin_adjust must not be zero",
        ));
    }
    if req.reason.len() > 500 {
        return Err(ApiError::bad_request("invalid_reason", "reason must be at most 500 characters"));
    }
    let (transaction, applied) = ledger::admin_credit(&state.db, user_id, req.kind, amount, &req.reason, key).await?;
    let (balance, _) = ledger::balance(&state.db, user_id).await?;
    let status = if applied { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "transaction": transaction, "applied": applied, "balance_usd": fmt_usd(balance) }))))
}
