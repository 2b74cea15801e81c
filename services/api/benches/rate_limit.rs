//! Cost of the rate-limit check per call: the limiter's admission (and its settlement) with no
//! limit set, with the in-process limiter (no Redis configured), and with Redis (one Lua round
//! trip to admit, one to settle), in one run, with the ratios.
//!
//!     scripts/build-images redis && cargo bench -p privaterouter-api --bench rate_limit
//!
//! Starts `privaterouter/redis:7.0` with docker (removed at the end) and talks to it on its bridge
//! address.
//! Each variant admits and settles BENCH_CALLS calls (default 20000) one after another over
//! 1000 keys (key, user and key×model limits: three scopes, as a real call), reports the mean
//! and p50/p99 per check, then the same number with BENCH_CONCURRENCY (default 32) tasks at once
//! (checks per second).

use std::{
    net::TcpListener,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use privaterouter_api::accounts::{
    rate_limiter::{RateLimiter, Scope},
    rate_limits::RateLimits,
    redis_link::RedisLink,
};
use uuid::Uuid;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Variant {
    name: &'static str,
    limiter: RateLimiter,
    limits: RateLimits,
}

fn scopes(keys: &[(Uuid, Uuid)], i: usize, limits: RateLimits) -> [Scope; 3] {
    let (key, user) = keys[i % keys.len()];
    [Scope::key(key, limits), Scope::user(user, limits), Scope::key_model(key, "bench-model", limits)]
}

async fn sequential(v: &Variant, keys: &[(Uuid, Uuid)], calls: usize) -> (f64, Duration, Duration) {
    let mut times = Vec::with_capacity(calls);
    let start = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        let (admission, _) = v.limiter.admit(&scopes(keys, i, v.limits), 500).await.expect("never over the limit");
        if let Some(a) = admission {
            a.settle(100);
        }
        times.push(t.elapsed());
    }
    let mean = start.elapsed().as_secs_f64() / calls as f64;
    times.sort_unstable();
    (mean, times[calls / 2], times[calls * 99 / 100])
}

async fn concurrent(v: &Variant, keys: Arc<Vec<(Uuid, Uuid)>>, calls: usize, tasks: usize) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (limiter, limits, keys) = (v.limiter.clone(), v.limits, keys.clone());
        handles.push(tokio::spawn(async move {
            for i in (t..calls).step_by(tasks) {
                let (admission, _) = limiter.admit(&scopes(&keys, i, limits), 500).await.expect("never over the limit");
                if let Some(a) = admission {
                    a.settle(100);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let calls = env_or("BENCH_CALLS", 20_000);
    let tasks = env_or("BENCH_CONCURRENCY", 32);
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let name = format!("pr-bench-redis-{port}");
    let started = Command::new("docker")
        .args([
            "run",
            "-d",
            "--rm",
            "--name",
            &name,
            "-p",
            &format!("127.0.0.1:{port}:6379"),
            "privaterouter/redis:7.0",
        ])
        .args(["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"])
        .status()
        .expect("docker runs");
    assert!(started.success(), "docker run privaterouter/redis:7.0 failed (scripts/build-images redis)");
    let _container = Removed(name.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The container's bridge address, not the published port: no userland proxy in the path.
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &name])
            .output()
            .expect("docker inspect");
        let ip = String::from_utf8(out.stdout).expect("ip is text").trim().to_owned();
        let url = format!("redis://{ip}:6379/0");
        let link = RedisLink::new(&url, Duration::from_millis(1000)).unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(Instant::now() < deadline, "Redis did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let high = RateLimits {
            requests_per_minute: Some(u32::MAX),
            tokens_per_minute: Some(u64::MAX / 4),
            max_concurrent: Some(1_000_000),
        };
        let variants = [
            Variant { name: "none (no limit set)", limiter: RateLimiter::new(None, 1), limits: RateLimits::default() },
            Variant { name: "local (no Redis)", limiter: RateLimiter::new(None, 1), limits: high },
            Variant { name: "redis", limiter: RateLimiter::new(Some(link), 1), limits: high },
        ];
        let keys: Arc<Vec<(Uuid, Uuid)>> = Arc::new((0..1000).map(|_| (Uuid::new_v4(), Uuid::new_v4())).collect());
        println!("{calls} checks per variant (admit + settle, 3 scopes each), {tasks} tasks for the concurrent run");
        println!("{:<22} {:>12} {:>10} {:>10} {:>18}", "variant", "mean", "p50", "p99", "concurrent/s");
        let mut means = Vec::new();
        for v in &variants {
            // Warm-up: connection, script load.
            sequential(v, &keys, 200).await;
            let (mean, p50, p99) = sequential(v, &keys, calls).await;
            let rate = concurrent(v, keys.clone(), calls, tasks).await;
            println!(
                "{:<22} {:>9.2} µs {:>7.1} µs {:>7.1} µs {:>18.0}",
                v.name,
                mean * 1e6,
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                rate
            );
            means.push(mean);
        }
        println!(
            "ratio of means: local / none = {:.1}, redis / local = {:.1}",
            means[1] / means[0],
            means[2] / means[1]
        );
    });
}

/// Removes the container when the run ends, a failed one included.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}
