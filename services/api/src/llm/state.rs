//! The engine's narrow state: only what a call needs (catalog, outbound client, upstream
//! timeouts, ledger, limiter, GPU fleet), taken from `AppState` by `FromRef`, so the engine runs
//! without a database behind a fake ledger in its unit tests.

use std::{future::Future, sync::Arc, time::Duration};

use axum::extract::FromRef;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::catalog::Catalog;
use crate::{
    accounts::rate_limiter::RateLimiter,
    billing::{Billing, Hold, HoldError, Settlement},
    gpu::fleet::Fleet,
    state::AppState,
};

/// Timeouts of upstream calls.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTimeouts {
    /// Whole non-streaming call, or until a stream's response head.
    pub request: Duration,
    /// Longest silence between two chunks of a stream.
    pub stream_idle: Duration,
}

/// Holds a call's worst case and bills it. Production uses [`Billing`]; the seam exists so the
/// engine's tests can count holds and settlements in memory. The engine is generic over it (not
/// a trait object), so a call pays no extra allocation or dynamic dispatch for it.
pub trait Ledger: Clone + Send + Sync + 'static {
    type Hold: CreditHold;
    /// Holds `amount` of the user's credit (`HoldError::Insufficient` when it does not fit).
    fn hold(&self, user_id: Uuid, amount: Decimal) -> impl Future<Output = Result<Self::Hold, HoldError>> + Send;
}

/// One call's hold: `settle` bills the call; dropping it unsettled releases the hold.
pub trait CreditHold: Send + Sync + 'static {
    fn settle(self, settlement: Settlement);
}

impl Ledger for Billing {
    type Hold = Hold;

    fn hold(&self, user_id: Uuid, amount: Decimal) -> impl Future<Output = Result<Hold, HoldError>> + Send {
        Billing::hold(self, user_id, amount)
    }
}

impl CreditHold for Hold {
    fn settle(self, settlement: Settlement) {
        Hold::settle(self, settlement)
    }
}

/// What the engine reads, cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct LlmState<L = Billing> {
    pub catalog: Arc<Catalog>,
    /// The pooled outbound client (it follows no redirects; see `AppState::http`).
    pub http: reqwest::Client,
    pub upstream: UpstreamTimeouts,
    pub ledger: L,
    pub limiter: RateLimiter,
    pub fleet: Arc<Fleet>,
}

impl FromRef<AppState> for LlmState {
    fn from_ref(state: &AppState) -> Self {
        Self {
            catalog: state.catalog.clone(),
            http: state.http.clone(),
            upstream: state.upstream,
            ledger: state.billing.clone(),
            limiter: state.limiter.clone(),
            fleet: state.fleet.clone(),
        }
    }
}
