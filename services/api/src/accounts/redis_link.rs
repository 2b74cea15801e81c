//! The optional Redis connection shared by the rate limiter and key revocation (`PR_REDIS_URL`).
//! Every command is bounded by `PR_REDIS_TIMEOUT_MS`. A failed command opens a breaker: for
//! [`RETRY_AFTER`] callers do not wait on Redis at all (they use their local fallback), then one
//! call probes it again. The change of state is logged once each way and every failure is
//! counted in `pr_redis_errors_total`.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::telemetry::metrics as m;

/// How long a failed Redis is left alone before one call tries it again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

pub struct RedisLink {
    client: redis::Client,
    conn: ConnectionManager,
    timeout: Duration,
    epoch: Instant,
    /// While down: the time (ms since `epoch`) from which one call may probe Redis again.
    retry_at_ms: AtomicU64,
    down: AtomicBool,
}

impl RedisLink {
    /// Connects lazily: a Redis that is down at start-up is a fallback like any other outage.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("PR_REDIS_URL is not a Redis URL ({:?})", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_AFTER);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        m::zero_redis_series();
        Ok(Arc::new(Self {
            client,
            conn,
            timeout,
            epoch: Instant::now(),
            retry_at_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }))
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// False while the breaker is open, except for the one call that probes Redis again.
    pub fn available(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let at = self.retry_at_ms.load(Ordering::Relaxed);
        now >= at
            && self
                .retry_at_ms
                .compare_exchange(at, now + RETRY_AFTER.as_millis() as u64, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Runs one command (or script) within the timeout; `None` when Redis failed (counted,
    /// breaker opened). `what` names the use in the log line.
    pub async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, "timed out");
                None
            }
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(target: "pr.redis", "Redis answers again; shared rate limits and revocation resume");
        }
    }

    /// Counts the failure, opens the breaker, and logs only the transition.
    pub fn failed(&self, what: &'static str, error: &str) {
        metrics::counter!(m::REDIS_ERRORS_TOTAL).increment(1);
        self.retry_at_ms.store(self.now_ms() + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(target: "pr.redis", during = what, error,
                "Redis is unreachable; rate limits fall back to this replica's share (limit / PR_API_REPLICAS), revocations reach other replicas within PR_KEY_CACHE_TTL_MS");
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
