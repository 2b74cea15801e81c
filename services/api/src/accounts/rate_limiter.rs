//! Per-call rate limits (requests/min, tokens/min, concurrent calls) of a key, its user and the
//! key on a model, exact across replicas: one Redis script checks every bucket and records the
//! call in all of them or none (one round trip), another corrects the tokens to the usage and
//! ends the concurrency lease at settlement. Windows are sliding logs, so "30 per minute" means
//! at most 30 in any 60 s. Concurrency leases expire [`LEASE`] after their last renewal, so a
//! dead replica's calls free their slots. While Redis is away each replica limits alone, with
//! each limit divided by `PR_API_REPLICAS` (never above the limit in sum, at least 1).

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

pub use super::rate_headers::{RateStatus, Window};
use super::{rate_limits::RateLimits, rate_local::LocalWindows, redis_link::RedisLink};
use crate::telemetry::metrics as m;

pub const WINDOW: Duration = Duration::from_secs(60);
/// A concurrency lease not renewed for this long is dropped (its replica died).
pub const LEASE: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);

static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/admit.lua")));
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/settle.lua")));
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("lua/renew.lua")));

/// `kind` label values of `pr_rate_limited_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrent,
}

impl LimitKind {
    pub const ALL: [Self; 3] = [Self::Requests, Self::Tokens, Self::Concurrent];

    pub fn label(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Concurrent => "concurrent",
        }
    }
}

/// Whose limit a bucket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    Key,
    User,
    KeyModel,
}

/// One set of buckets: `id` names them in Redis (`pr:rl:<id>:...`).
#[derive(Clone, Debug)]
pub struct Scope {
    pub kind: ScopeKind,
    pub id: String,
    pub limits: RateLimits,
}

impl Scope {
    pub fn key(key_id: Uuid, limits: RateLimits) -> Self {
        Self { kind: ScopeKind::Key, id: format!("k:{key_id}"), limits }
    }
    pub fn user(user_id: Uuid, limits: RateLimits) -> Self {
        Self { kind: ScopeKind::User, id: format!("u:{user_id}"), limits }
    }
    pub fn key_model(key_id: Uuid, model: &str, limits: RateLimits) -> Self {
        Self { kind: ScopeKind::KeyModel, id: format!("km:{key_id}:{model}"), limits }
    }
    fn is_limited(&self) -> bool {
        self.limits != RateLimits::default()
    }
}

/// The first bucket that refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub kind: LimitKind,
    /// Index into the scopes checked.
    pub scope: usize,
    /// When the call would fit (None: never, it is larger than the whole limit).
    pub retry: Option<Duration>,
    pub limit: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    pub blocked: Option<Blocked>,
    pub status: RateStatus,
}

/// A refused call: what to tell the client.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub kind: LimitKind,
    pub scope: ScopeKind,
    pub limit: u64,
    pub retry: Option<Duration>,
    pub tokens: u64,
    pub status: RateStatus,
}

impl Refusal {
    pub fn message(&self) -> String {
        let whose = match self.scope {
            ScopeKind::Key => "this API key's",
            ScopeKind::User => "your account's",
            ScopeKind::KeyModel => "this API key's per-model",
        };
        match (self.kind, self.retry) {
            (LimitKind::Requests, _) => {
                format!("Rate limit reached: {whose} limit of {} requests per minute.", self.limit)
            }
            (LimitKind::Tokens, Some(_)) => format!(
                "Rate limit reached: {whose} limit of {} tokens per minute (this call counts up to {} tokens: its prompt bound plus max_tokens).",
                self.limit, self.tokens
            ),
            (LimitKind::Tokens, None) => format!(
                "This call counts up to {} tokens (its prompt bound plus max_tokens), more than {whose} limit of {} tokens per minute: lower max_tokens or shorten the prompt.",
                self.tokens, self.limit
            ),
            (LimitKind::Concurrent, _) => {
                format!("Rate limit reached: {whose} limit of {} concurrent requests.", self.limit)
            }
        }
    }

    /// `Retry-After` in whole seconds (at least 1; a call that never fits gets the window).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry.unwrap_or(WINDOW).as_millis().div_ceil(1000).max(1) as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Redis,
    Local,
}

/// The limiter shared by every call (cheap to clone).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    link: Option<Arc<RedisLink>>,
    local: LocalWindows,
    replicas: u32,
    /// Calls admitted through Redis with a concurrency limit: (lease set, call) to renew.
    leases: Mutex<HashMap<Uuid, Vec<String>>>,
}

impl RateLimiter {
    /// `link`: the shared Redis (None: this replica limits alone, with the whole limits).
    pub fn new(link: Option<Arc<RedisLink>>, replicas: u32) -> Self {
        for kind in LimitKind::ALL {
            metrics::counter!(m::RATE_LIMITED_TOTAL, "kind" => kind.label()).increment(0);
        }
        metrics::gauge!(m::API_REPLICAS_EXPECTED).set(f64::from(replicas));
        Self {
            inner: Arc::new(Inner {
                link,
                local: LocalWindows::default(),
                replicas: replicas.max(1),
                leases: Mutex::default(),
            }),
        }
    }

    /// Admits a call counting `tokens` (its worst case) against every limited scope. `Ok(None)`
    /// when no scope has a limit (nothing to record, no round trip).
    pub async fn admit(&self, scopes: &[Scope], tokens: u64) -> Result<(Option<Admission>, RateStatus), Refusal> {
        let scopes: Vec<&Scope> = scopes.iter().filter(|s| s.is_limited()).collect();
        if scopes.is_empty() {
            return Ok((None, RateStatus::default()));
        }
        let id = Uuid::new_v4();
        let shared = match &self.inner.link {
            Some(link) if link.available() => self.admit_shared(link, &scopes, id, tokens).await,
            _ => None,
        };
        let (verdict, backend) = match shared {
            Some(verdict) => (verdict, Backend::Redis),
            None => {
                let divided: Vec<(&str, RateLimits)> =
                    scopes.iter().map(|s| (s.id.as_str(), self.share(s.limits))).collect();
                (self.inner.local.admit(&divided, id, tokens, Instant::now()), Backend::Local)
            }
        };
        if let Some(b) = verdict.blocked {
            metrics::counter!(m::RATE_LIMITED_TOTAL, "kind" => b.kind.label()).increment(1);
            return Err(Refusal {
                kind: b.kind,
                scope: scopes[b.scope].kind,
                limit: b.limit,
                retry: b.retry,
                tokens,
                status: verdict.status,
            });
        }
        let ids: Vec<String> = scopes.iter().map(|s| s.id.clone()).collect();
        if backend == Backend::Redis {
            let running: Vec<String> =
                scopes.iter().filter(|s| s.limits.max_concurrent.is_some()).map(|s| key(&s.id, "c")).collect();
            if !running.is_empty() {
                self.inner.leases.lock().expect("lease lock").insert(id, running);
            }
        }
        let admission = Admission { limiter: self.clone(), id, scopes: ids, tokens, backend, done: false };
        Ok((Some(admission), verdict.status))
    }

    /// This replica's share of a limit while it limits alone.
    fn share(&self, limits: RateLimits) -> RateLimits {
        let n = self.inner.replicas;
        if self.inner.link.is_none() || n == 1 {
            return limits;
        }
        RateLimits {
            requests_per_minute: limits.requests_per_minute.map(|l| (l / n).max(1)),
            tokens_per_minute: limits.tokens_per_minute.map(|l| (l / u64::from(n)).max(1)),
            max_concurrent: limits.max_concurrent.map(|l| (l / n).max(1)),
        }
    }

    async fn admit_shared(&self, link: &RedisLink, scopes: &[&Scope], id: Uuid, tokens: u64) -> Option<Verdict> {
        let mut invocation = ADMIT.prepare_invoke();
        invocation.arg(id.to_string()).arg(tokens).arg(LEASE.as_millis() as u64);
        for s in scopes {
            for part in ["r", "t", "s", "c"] {
                invocation.key(key(&s.id, part));
            }
            let l = s.limits;
            invocation
                .arg(l.requests_per_minute.unwrap_or(0))
                .arg(l.tokens_per_minute.unwrap_or(0))
                .arg(l.max_concurrent.unwrap_or(0));
        }
        let reply: Vec<i64> =
            link.run("rate limit check", |mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        parse_verdict(&reply).or_else(|| {
            link.failed("rate limit check", "unexpected script reply");
            None
        })
    }

    fn finish(&self, id: Uuid, scopes: Vec<String>, worst: u64, actual: u64, backend: Backend) {
        match backend {
            Backend::Local => self.inner.local.settle(&scopes, id, actual),
            Backend::Redis => {
                self.inner.leases.lock().expect("lease lock").remove(&id);
                let Some(link) = self.inner.link.clone() else { return };
                tokio::spawn(async move {
                    // While Redis is away the lease expires and the worst case leaves the window.
                    if !link.available() {
                        return;
                    }
                    let mut invocation = SETTLE.prepare_invoke();
                    invocation.arg(id.to_string()).arg(worst).arg(actual);
                    for s in &scopes {
                        for part in ["t", "s", "c"] {
                            invocation.key(key(s, part));
                        }
                    }
                    let _: Option<i64> =
                        link.run("rate limit settlement", |mut conn| async move {
                            invocation.invoke_async(&mut conn).await
                        })
                        .await;
                });
            }
        }
    }

    /// Renews the concurrency leases of this replica's running calls and forgets idle local
    /// buckets; runs until the process ends.
    pub async fn maintain(self) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.inner.local.sweep(Instant::now());
            let Some(link) = &self.inner.link else { continue };
            let leases: Vec<(String, Uuid)> = {
                let map = self.inner.leases.lock().expect("lease lock");
                map.iter().flat_map(|(id, keys)| keys.iter().map(move |k| (k.clone(), *id))).collect()
            };
            if leases.is_empty() || !link.available() {
                continue;
            }
            let mut invocation = RENEW.prepare_invoke();
            invocation.arg(LEASE.as_millis() as u64);
            for (k, id) in &leases {
                invocation.key(k).arg(id.to_string());
            }
            let _: Option<i64> = link
                .run("rate limit lease renewal", |mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await;
        }
    }
}

fn key(scope: &str, part: &str) -> String {
    format!("pr:rl:{scope}:{part}")
}

fn parse_verdict(r: &[i64]) -> Option<Verdict> {
    let [admitted, kind, scope, retry, limit, rq_limit, rq_rem, rq_reset, tk_limit, tk_rem, tk_reset] = *r else {
        return None;
    };
    let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
    let window = |limit: i64, remaining: i64, reset: i64| {
        (limit >= 0).then(|| Window { limit: limit as u64, remaining: remaining.max(0) as u64, reset: ms(reset) })
    };
    let status =
        RateStatus { requests: window(rq_limit, rq_rem, rq_reset), tokens: window(tk_limit, tk_rem, tk_reset) };
    let blocked = if admitted == 1 {
        None
    } else {
        let kind = match kind {
            1 => LimitKind::Requests,
            2 => LimitKind::Tokens,
            _ => LimitKind::Concurrent,
        };
        Some(Blocked { kind, scope: scope as usize, retry: (retry >= 0).then(|| ms(retry)), limit: limit as u64 })
    };
    Some(Verdict { blocked, status })
}

/// An admitted call's place in its buckets. `settle` corrects its tokens to the usage and ends
/// its concurrency lease; dropped unsettled (a failed call), it counts no tokens.
pub struct Admission {
    limiter: RateLimiter,
    id: Uuid,
    scopes: Vec<String>,
    tokens: u64,
    backend: Backend,
    done: bool,
}

impl Admission {
    pub fn settle(mut self, actual_tokens: u64) {
        self.finish(actual_tokens);
    }

    fn finish(&mut self, actual: u64) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let scopes = std::mem::take(&mut self.scopes);
        self.limiter.finish(self.id, scopes, self.tokens, actual, self.backend);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.finish(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_alone_takes_its_share_and_never_more_in_sum() {
        let limiter = RateLimiter {
            inner: Arc::new(Inner {
                link: None,
                local: LocalWindows::default(),
                replicas: 3,
                leases: Mutex::default(),
            }),
        };
        let l = RateLimits { requests_per_minute: Some(30), tokens_per_minute: Some(1000), max_concurrent: Some(2) };
        assert_eq!(limiter.share(l), l, "without Redis the one replica has the whole limit");
        let with_link = |n| {
            let link = RedisLink::new("redis://127.0.0.1:1", Duration::from_millis(50)).unwrap();
            RateLimiter {
                inner: Arc::new(Inner {
                    link: Some(link),
                    local: LocalWindows::default(),
                    replicas: n,
                    leases: Mutex::default(),
                }),
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = with_link(3).share(l);
            assert_eq!(
                s,
                RateLimits { requests_per_minute: Some(10), tokens_per_minute: Some(333), max_concurrent: Some(1) }
            );
        });
    }
}
