//! API keys and authentication. A key is `pr-` + 40 random base62 characters; only its SHA-256
//! is stored (keys are high-entropy, so a fast hash is the right tool). Lookups sit on the hot
//! path of every call, so resolved keys are cached for `PR_KEY_CACHE_TTL_MS` (1 s by default).
//! A revocation evicts the local entry at once and, with Redis (`PR_REDIS_URL`), is published to
//! every other replica, which evicts it as soon as the message arrives
//! (`accounts::revocation`); the TTL is the bound only while Redis is away.
//!
//! A key created with a key is its child (`parent_key_id`): revoking a key revokes all its
//! descendants, so a stolen key cannot outlive its revocation through keys it minted.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    accounts::{rate_limits::RateLimits, redis_link::RedisLink, revocation},
    error::ApiError,
    state::AppState,
    telemetry::RequestContext,
};

pub const KEY_PREFIX: &str = "pr-";
const KEY_RANDOM_CHARS: usize = 40;
/// Entries kept before expired ones are swept (and, if still full, the cache is cleared).
const CACHE_CAPACITY: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
    fn parse(s: &str) -> Self {
        if s == "admin" { Self::Admin } else { Self::User }
    }
}

/// The authenticated caller.
#[derive(Clone, Copy, Debug)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub role: Role,
    pub key_id: Uuid,
    /// The key's own rate limits (none: only the user's apply).
    pub key_limits: RateLimits,
    /// The user's rate limits, the `PR_USER_*` defaults filling what the user's row leaves out.
    pub user_limits: RateLimits,
}

/// A caller with the admin role (403 for others).
#[derive(Clone, Copy, Debug)]
pub struct AdminUser(pub AuthUser);

pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_RANDOM_CHARS);
    key.push_str(KEY_PREFIX);
    for _ in 0..KEY_RANDOM_CHARS {
        key.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    key
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The part of a key shown in listings: enough to recognise it, useless to an attacker.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 6).collect()
}

/// Creates a key for `user_id`, the child of `parent` (the key that asked for it, if any);
/// returns (key id, the key itself, shown once).
pub async fn create_key(
    db: impl sqlx::PgExecutor<'_>,
    user_id: Uuid,
    name: &str,
    parent: Option<Uuid>,
) -> Result<(Uuid, String), sqlx::Error> {
    let key = generate_key();
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash, parent_key_id) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(user_id)
    .bind(name)
    .bind(display_prefix(&key))
    .bind(&hash_key(&key)[..])
    .bind(parent)
    .fetch_one(db)
    .await?;
    Ok((id, key))
}

/// Revokes `key_id` and every active key descending from it; returns the ids it revoked, for
/// the cache to forget. The walk goes through active keys only: a revoked key's descendants were
/// revoked with it, and a revoked key cannot create keys, so a tree of revoked keys (however
/// large a user made it) is never walked again.
pub async fn revoke_tree(db: impl sqlx::PgExecutor<'_>, user_id: Uuid, key_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE tree AS ( \
             SELECT id FROM api_keys WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
             UNION SELECT k.id FROM api_keys k JOIN tree t ON k.parent_key_id = t.id \
              WHERE k.user_id = $2 AND k.revoked_at IS NULL) \
         UPDATE api_keys SET revoked_at = now() WHERE id IN (SELECT id FROM tree) RETURNING id",
    )
    .bind(key_id)
    .bind(user_id)
    .fetch_all(db)
    .await
}

#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<RwLock<HashMap<[u8; 32], CacheEntry>>>,
    ttl: Duration,
    /// The `PR_USER_*` rate-limit defaults.
    user_defaults: RateLimits,
    /// Where revocations are published to the other replicas.
    link: Option<Arc<RedisLink>>,
}

#[derive(Clone, Copy)]
struct CacheEntry {
    user: Option<AuthUser>,
    expires: Instant,
}

impl KeyCache {
    pub fn new(ttl: Duration, user_defaults: RateLimits, link: Option<Arc<RedisLink>>) -> Self {
        Self { inner: Arc::default(), ttl, user_defaults, link }
    }

    /// Resolves a presented key: from the cache when fresh, else from the database (valid and
    /// invalid answers are both cached, so guessing keys cannot hammer the database).
    pub async fn resolve(&self, db: &PgPool, key: &str) -> Result<Option<AuthUser>, ApiError> {
        let hash = hash_key(key);
        let now = Instant::now();
        if let Some(entry) = self.inner.read().expect("key cache lock").get(&hash)
            && entry.expires > now
        {
            return Ok(entry.user);
        }
        type Row = (Uuid, Uuid, String, Option<i32>, Option<i64>, Option<i32>, Option<i32>, Option<i64>, Option<i32>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT k.id, k.user_id, u.role, \
                    k.requests_per_minute, k.tokens_per_minute, k.max_concurrent, \
                    u.requests_per_minute, u.tokens_per_minute, u.max_concurrent \
             FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(db)
        .await?;
        let user = row.map(|(key_id, user_id, role, k_rpm, k_tpm, k_conc, u_rpm, u_tpm, u_conc)| AuthUser {
            user_id,
            role: Role::parse(&role),
            key_id,
            key_limits: RateLimits::from_columns(k_rpm, k_tpm, k_conc),
            user_limits: RateLimits::from_columns(u_rpm, u_tpm, u_conc).or(self.user_defaults),
        });
        let mut map = self.inner.write().expect("key cache lock");
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, e| e.expires > now);
            if map.len() >= CACHE_CAPACITY {
                map.clear();
            }
        }
        map.insert(hash, CacheEntry { user, expires: now + self.ttl });
        Ok(user)
    }

    /// A revocation, or a change of these keys' limits: drops the keys here and publishes them
    /// to every other replica (best effort: without Redis they expire from the other caches
    /// within the TTL).
    pub async fn revoked(&self, key_ids: &[Uuid]) {
        self.evict_key_ids(key_ids);
        let items: Vec<_> = key_ids.iter().copied().map(revocation::Evict::Key).collect();
        self.publish(&items).await;
    }

    /// A user's limits changed: drops their keys here and on every other replica.
    pub async fn user_changed(&self, user_id: Uuid) {
        self.evict_user(user_id);
        self.publish(&[revocation::Evict::User(user_id)]).await;
    }

    async fn publish(&self, items: &[revocation::Evict]) {
        if let Some(link) = &self.link
            && link.available()
            && !revocation::publish(link, items).await
        {
            tracing::warn!(target: "pr.redis", entries = items.len(), "key cache eviction not published; other replicas drop the keys within PR_KEY_CACHE_TTL_MS");
        }
    }

    /// Forgets everything (after missing revocations while Redis was away).
    pub fn clear(&self) {
        self.inner.write().expect("key cache lock").clear();
    }

    /// Drops every cached entry of these keys on this replica.
    pub fn evict_key_ids(&self, key_ids: &[Uuid]) {
        if key_ids.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<&Uuid> = key_ids.iter().collect();
        self.inner.write().expect("key cache lock").retain(|_, e| e.user.is_none_or(|u| !gone.contains(&u.key_id)));
    }

    /// Drops every cached key of a user (their limits changed).
    pub fn evict_user(&self, user_id: Uuid) {
        self.inner.write().expect("key cache lock").retain(|_, e| e.user.is_none_or(|u| u.user_id != user_id));
    }

    pub fn user_defaults(&self) -> RateLimits {
        self.user_defaults
    }
}

/// The presented key: `Authorization: Bearer <key>`, or `x-api-key: <key>` as Anthropic's
/// clients send it (the first when both are present).
fn bearer(parts: &Parts) -> Option<&str> {
    let from_bearer = || {
        let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    };
    let from_x_api_key = || parts.headers.get("x-api-key")?.to_str().ok().map(str::trim);
    from_bearer().or_else(from_x_api_key).filter(|t| t.starts_with(KEY_PREFIX) && t.len() <= 128)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let user = state.keys.resolve(&state.db, key).await?.ok_or(ApiError::Unauthorized)?;
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            ctx.user.set(user.user_id.to_string());
        }
        Ok(user)
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(Self(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_base62_and_unique() {
        let a = generate_key();
        assert!(a.starts_with("pr-") && a.len() == 43);
        assert!(a[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, generate_key());
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_eq!(display_prefix(&a).len(), 9);
    }
}
