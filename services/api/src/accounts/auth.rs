//! Authentication: the `AuthUser`/`AdminUser` extractors and the cache of resolved keys in front
//! of `accounts::key_store` (a key is `pr-` + 40 random base62 characters; only its SHA-256 is
//! stored). Lookups sit on the hot path of every call, so resolved keys are cached for
//! `PR_KEY_CACHE_TTL_MS` (1 s by default). A revocation evicts the local entry at once and, with
//! Redis (`PR_REDIS_URL`), is published to every other replica, which evicts it as soon as the
//! message arrives (`accounts::revocation`); the TTL is the bound only while Redis is away.
//! Concurrent misses of one key share one lookup, so a burst of calls with a fresh key (or at
//! the expiry of a busy one) costs the database one query, not one per call.
//!
//! A key created with a key is its child (`parent_key_id`): revoking a key revokes all its
//! descendants, so a stolen key cannot outlive its revocation through keys it minted.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    accounts::{
        key_store::{self, KEY_PREFIX},
        rate_limits::RateLimits,
        redis_link::RedisLink,
        revocation,
    },
    http::RequestContext,
    http::error::ApiError,
};

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

/// The read-through cache of resolved keys in front of `api_keys`; cloning it is one reference
/// count, since the auth extractor takes it from the router state on every request.
#[derive(Clone)]
pub struct KeyCache(Arc<Inner>);

struct Inner {
    entries: RwLock<HashMap<[u8; 32], CacheEntry>>,
    /// Lookups in flight, one per key hash, awaited by every concurrent miss of that key.
    flights: Mutex<HashMap<[u8; 32], Flight>>,
    /// Bumped by every eviction: a lookup that started before one does not cache its answer,
    /// which could be a key revoked meanwhile.
    generation: AtomicU64,
    db: PgPool,
    ttl: Duration,
    /// The `PR_USER_*` rate-limit defaults.
    user_defaults: RateLimits,
    /// Where revocations are published to the other replicas.
    link: Option<Arc<RedisLink>>,
}

/// One shared lookup: its answer, or whether its failure was transient (503) and its message.
type Flight = Arc<tokio::sync::OnceCell<Result<Option<AuthUser>, (bool, String)>>>;

#[derive(Clone, Copy)]
struct CacheEntry {
    user: Option<AuthUser>,
    expires: Instant,
}

impl KeyCache {
    pub fn new(db: PgPool, ttl: Duration, user_defaults: RateLimits, link: Option<Arc<RedisLink>>) -> Self {
        Self(Arc::new(Inner {
            entries: RwLock::default(),
            flights: Mutex::default(),
            generation: AtomicU64::new(0),
            db,
            ttl,
            user_defaults,
            link,
        }))
    }

    /// Resolves a presented key: from the cache when fresh, else from the database (valid and
    /// invalid answers are both cached, so guessing keys cannot hammer the database).
    pub async fn resolve(&self, key: &str) -> Result<Option<AuthUser>, ApiError> {
        let hash = key_store::hash_key(key);
        if let Some(entry) = self.0.entries.read().expect("key cache lock").get(&hash)
            && entry.expires > Instant::now()
        {
            return Ok(entry.user);
        }
        let flight = Boarded::new(&self.0, hash);
        let answer = flight.cell.get_or_init(|| self.look_up(hash)).await.clone();
        drop(flight);
        answer.map_err(|(transient, message)| {
            // The first caller's error, shared: as a 503 when a retry can succeed, else a 500.
            if transient {
                ApiError::DatabaseUnavailable(sqlx::Error::Io(std::io::Error::other(message)))
            } else {
                ApiError::Database(sqlx::Error::Protocol(message))
            }
        })
    }

    /// The one database lookup of a flight; caches its answer unless an eviction came meanwhile.
    async fn look_up(&self, hash: [u8; 32]) -> Result<Option<AuthUser>, (bool, String)> {
        let generation = self.0.generation.load(Ordering::Acquire);
        // A flight that ended between this caller's cache miss and its boarding has cached the
        // answer already.
        if let Some(entry) = self.0.entries.read().expect("key cache lock").get(&hash)
            && entry.expires > Instant::now()
        {
            return Ok(entry.user);
        }
        let found = key_store::find_active(&self.0.db, &hash).await.map_err(|e| {
            let message = e.to_string();
            (matches!(ApiError::from(e), ApiError::DatabaseUnavailable(_)), message)
        })?;
        let user = found.map(|k| AuthUser {
            user_id: k.user_id,
            role: Role::parse(&k.role),
            key_id: k.key_id,
            key_limits: k.key_limits,
            user_limits: k.user_limits.or(self.0.user_defaults),
        });
        let now = Instant::now();
        let mut map = self.0.entries.write().expect("key cache lock");
        if self.0.generation.load(Ordering::Acquire) != generation {
            return Ok(user);
        }
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, e| e.expires > now);
            if map.len() >= CACHE_CAPACITY {
                map.clear();
            }
        }
        map.insert(hash, CacheEntry { user, expires: now + self.0.ttl });
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
        if let Some(link) = &self.0.link
            && link.available()
            && !revocation::publish(link, items).await
        {
            tracing::warn!(target: "pr.redis", entries = items.len(), "key cache eviction not published; other replicas drop the keys within PR_KEY_CACHE_TTL_MS");
        }
    }

    /// Forgets everything (after missing revocations while Redis was away).
    pub fn clear(&self) {
        self.evicting();
        self.0.entries.write().expect("key cache lock").clear();
    }

    /// Drops every cached entry of these keys on this replica.
    pub fn evict_key_ids(&self, key_ids: &[Uuid]) {
        if key_ids.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<&Uuid> = key_ids.iter().collect();
        self.evicting();
        self.0.entries.write().expect("key cache lock").retain(|_, e| e.user.is_none_or(|u| !gone.contains(&u.key_id)));
    }

    /// Drops every cached key of a user (their limits changed).
    pub fn evict_user(&self, user_id: Uuid) {
        self.evicting();
        self.0.entries.write().expect("key cache lock").retain(|_, e| e.user.is_none_or(|u| u.user_id != user_id));
    }

    /// Lookups in flight may have read what is being evicted: they do not cache it, and calls
    /// from now on start a lookup of their own.
    fn evicting(&self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        self.0.flights.lock().expect("key flights lock").clear();
    }

    pub fn user_defaults(&self) -> RateLimits {
        self.0.user_defaults
    }
}

/// A caller's place on the flight of its key. Leaving it (answered, or dropped with a cancelled
/// request) removes the flight from the map once it is answered or nobody else is on it, so
/// clients that hang up mid-lookup leave nothing behind.
struct Boarded<'a> {
    inner: &'a Inner,
    hash: [u8; 32],
    cell: Flight,
}

impl<'a> Boarded<'a> {
    fn new(inner: &'a Inner, hash: [u8; 32]) -> Self {
        let cell = inner.flights.lock().expect("key flights lock").entry(hash).or_default().clone();
        Self { inner, hash, cell }
    }
}

impl Drop for Boarded<'_> {
    fn drop(&mut self) {
        let mut flights = self.inner.flights.lock().expect("key flights lock");
        // Under the lock nobody can board meanwhile: the map's reference and ours are the last
        // two when no one else waits.
        if flights.get(&self.hash).is_some_and(|f| Arc::ptr_eq(f, &self.cell))
            && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
        {
            flights.remove(&self.hash);
        }
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

/// Any router state that holds the key cache can authenticate (the extractor needs nothing else).
impl<S> FromRequestParts<S> for AuthUser
where
    KeyCache: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let user = KeyCache::from_ref(state).resolve(key).await?.ok_or(ApiError::Unauthorized)?;
        if let Some(ctx) = parts.extensions.get::<RequestContext>() {
            ctx.user.set(user.user_id.to_string());
        }
        Ok(user)
    }
}

impl<S> FromRequestParts<S> for AdminUser
where
    KeyCache: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(Self(user))
    }
}
