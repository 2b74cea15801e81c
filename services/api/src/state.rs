//! The composition root: `AppState` builds and holds every shared part once (cheap to clone).
//! Handlers take their domain's narrow state from it through `FromRef` (`accounts::AccountsState`,
//! `gpu::GpuState`, `billing::routes::BillingState`, `conversations::ConversationsState`,
//! `http::health::HealthState`, `llm::LlmState`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;

use crate::{
    accounts::auth::KeyCache,
    accounts::{rate_limiter::RateLimiter, rate_limits, redis_link::RedisLink},
    billing::Billing,
    config::Config,
    gpu::fleet::Fleet,
    gpu::node_policy::AllowedNets,
    llm::{UpstreamTimeouts, catalog::Catalog},
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub catalog: Arc<Catalog>,
    pub keys: KeyCache,
    /// One pooled client for every outbound call (upstreams, GPU agents and inference servers).
    /// It never follows redirects: a redirect would carry the request (and its credentials or
    /// prompt) to a host nobody registered; a redirect answer is a failed call instead.
    pub http: reqwest::Client,
    pub upstream: UpstreamTimeouts,
    /// Holds, settlement, journal (exact prepaid billing).
    pub billing: Billing,
    pub fleet: Arc<Fleet>,
    /// Per-key, per-user and per-model call rate limits (shared through Redis when configured).
    pub limiter: RateLimiter,
    /// The Redis link, when `PR_REDIS_URL` is set (the limiter and the key cache use it).
    pub redis: Option<Arc<RedisLink>>,
    pub(crate) shutting_down: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(config: Config, db: PgPool, catalog: Catalog, billing: Billing) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(config.upstream_connect_timeout_secs))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let fleet = Arc::new(Fleet::new(AllowedNets::new(config.gpu_node_allowed_nets.0.clone())));
        let redis = match config.redis_url() {
            Some(url) => Some(RedisLink::new(url, Duration::from_millis(config.redis_timeout_ms.max(1)))?),
            None => None,
        };
        Ok(Self {
            keys: KeyCache::new(
                db.clone(),
                Duration::from_millis(config.key_cache_ttl_ms),
                rate_limits::user_defaults(
                    config.user_requests_per_minute,
                    config.user_tokens_per_minute,
                    config.user_max_concurrent,
                ),
                redis.clone(),
            ),
            limiter: RateLimiter::new(redis.clone(), config.api_replicas),
            redis,
            upstream: UpstreamTimeouts {
                request: Duration::from_secs(config.upstream_timeout_secs),
                stream_idle: Duration::from_secs(config.stream_idle_timeout_secs),
            },
            config: Arc::new(config),
            billing,
            fleet,
            db,
            catalog: Arc::new(catalog),
            http,
            shutting_down: Arc::default(),
        })
    }

    /// Once set, `/readyz` answers 503 (`http::health`) so load balancers stop sending new work
    /// while in-flight requests drain.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
