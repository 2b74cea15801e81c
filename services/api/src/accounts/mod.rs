//! Accounts: users (`users`), their API keys (`key_store` holds every `api_keys` query, `keys`
//! the `/api/keys` router), the auth extractor and its key cache (`auth`), the per-user storage
//! limits (`limits`), rate limits and the admin routes that set them (`rate_limits`, `admin`),
//! the limiter that enforces them (`rate_limiter`, `rate_local`, `rate_headers`), and the Redis
//! link that shares limits and revocations between replicas (`redis_link`, `revocation`).

pub mod admin;
pub mod auth;
pub mod key_store;
pub mod keys;
pub mod limits;
pub mod rate_headers;
pub mod rate_limiter;
pub mod rate_limits;
mod rate_local;
pub mod redis_link;
pub mod revocation;
pub mod users;

use axum::extract::FromRef;
use sqlx::PgPool;

use self::auth::KeyCache;
use crate::state::AppState;

/// What the accounts routers use: the database, the key cache (to evict what they change) and
/// the one setting they enforce.
#[derive(Clone)]
pub struct AccountsState {
    pub db: PgPool,
    pub keys: KeyCache,
    /// `PR_MAX_API_KEYS_PER_USER`.
    pub max_api_keys_per_user: u32,
}

impl FromRef<AppState> for AccountsState {
    fn from_ref(app: &AppState) -> Self {
        Self { db: app.db.clone(), keys: app.keys.clone(), max_api_keys_per_user: app.config.max_api_keys_per_user }
    }
}

/// What the auth extractor takes from any router state.
impl FromRef<AppState> for KeyCache {
    fn from_ref(app: &AppState) -> Self {
        app.keys.clone()
    }
}
