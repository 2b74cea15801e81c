//! The `api_keys` table: how a key is minted and stored (only its SHA-256), found, counted and
//! revoked. Every key query of the crate is here, for the auth extractor and the keys router
//! alike; the key's rate-limit columns are written by `accounts::rate_limits`.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::accounts::rate_limits::RateLimits;

pub const KEY_PREFIX: &str = "pr-";
const KEY_RANDOM_CHARS: usize = 40;

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

/// Keys are high-entropy, so a fast hash is the right tool (no salt, no stretching).
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The part of a key shown in listings: enough to recognise it, useless to an attacker.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 6).collect()
}

/// An active key with its owner, as the auth extractor needs it.
pub struct ActiveKey {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
    pub key_limits: RateLimits,
    /// The user's row as stored (the `PR_USER_*` defaults are the caller's to apply).
    pub user_limits: RateLimits,
}

/// The active key whose hash is `hash`, if any.
pub async fn find_active(db: impl PgExecutor<'_>, hash: &[u8; 32]) -> Result<Option<ActiveKey>, sqlx::Error> {
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
    Ok(row.map(|(key_id, user_id, role, k_rpm, k_tpm, k_conc, u_rpm, u_tpm, u_conc)| ActiveKey {
        key_id,
        user_id,
        role,
        key_limits: RateLimits::from_columns(k_rpm, k_tpm, k_conc),
        user_limits: RateLimits::from_columns(u_rpm, u_tpm, u_conc),
    }))
}

/// Creates a key for `user_id`, the child of `parent` (the key that asked for it, if any);
/// returns (key id, the key itself, shown once).
pub async fn create(
    db: impl PgExecutor<'_>,
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
pub async fn revoke_tree(db: impl PgExecutor<'_>, user_id: Uuid, key_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
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

/// Whether `key_id` is still active: the cache of this replica may not have heard of a
/// revocation made on another one yet.
pub async fn is_active(db: &mut PgConnection, key_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND revoked_at IS NULL)")
        .bind(key_id)
        .fetch_one(db)
        .await
}

/// How many active keys the user holds (for `PR_MAX_API_KEYS_PER_USER`).
pub async fn count_active(db: &mut PgConnection, user_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .fetch_one(db)
        .await
}

/// A key as listed to its owner (never its hash).
#[derive(Serialize, sqlx::FromRow)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    /// The key this one was created with (None: created from the command line).
    pub parent_key_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key's own rate limits (null: none of that kind beyond its user's).
    #[sqlx(flatten)]
    limits: KeyLimitColumns,
}

#[derive(sqlx::FromRow)]
struct KeyLimitColumns {
    requests_per_minute: Option<i32>,
    tokens_per_minute: Option<i64>,
    max_concurrent: Option<i32>,
}

impl Serialize for KeyLimitColumns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RateLimits::from_columns(self.requests_per_minute, self.tokens_per_minute, self.max_concurrent).serialize(s)
    }
}

const KEY_COLUMNS: &str =
    "id, name, prefix, parent_key_id, created_at, revoked_at, requests_per_minute, tokens_per_minute, max_concurrent";

/// Every key of the user, revoked ones included, newest first.
pub async fn list(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<Vec<KeyView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id"
    )))
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// The user's key `id` (None for another user's key, so it cannot be told from a missing one).
pub async fn find(db: impl PgExecutor<'_>, user_id: Uuid, id: Uuid) -> Result<Option<KeyView>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2")))
        .bind(id)
        .bind(user_id)
        .fetch_optional(db)
        .await
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
