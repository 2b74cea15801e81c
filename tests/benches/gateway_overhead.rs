//! Gateway overhead: the same OpenAI-compatible upstream stand-in called directly and through
//! the gateway (the release binary as its own process: key auth, worst-case hold, journaled
//! durable billing, metrics, access log all on), at fixed request rates and at saturation with
//! 8 connections, side by side in one run. Two gateways run: the default (credit leases grow by
//! up to 16 worst cases at a time) and `PR_CREDIT_LEASE_CALLS=1` (by one worst case: many more
//! lease extensions in the database while the lease builds up). Also time to first token of streams,
//! direct vs through the gateway, and the gateway's memory.
//!
//!     cargo build --release -p privaterouter-api
//!     cargo bench -p privaterouter-tests --bench gateway_overhead
//!
//! Environment: BENCH_RATES (default "500,1000,2000" req/s), BENCH_SECS (per run, default 10),
//! BENCH_STREAMS (streams measured, default 200), BENCH_CONNS (saturation, default 8). Needs
//! Docker (Postgres from the local image).

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use privaterouter_tests::{free_port, postgres, upstream};
use serde_json::json;
use tokio::time::MissedTickBehavior;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Resident set size now and at its peak, in MiB (from /proc).
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Run {
    latencies: Vec<Duration>,
    errors: usize,
}

/// Open loop: one request is started every 1/rate seconds whatever the latency of the others.
async fn load(client: &reqwest::Client, url: &str, key: &str, model: &str, rate: u64, secs: u64) -> Run {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity((rate * secs) as usize);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let request = client.post(url).bearer_auth(key).json(&body);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let ok = match request.send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (started.elapsed(), ok)
        }));
    }
    let mut run = Run { latencies: Vec::new(), errors: 0 };
    for t in tasks {
        let (latency, ok) = t.await.unwrap();
        if ok {
            run.latencies.push(latency);
        } else {
            run.errors += 1;
        }
    }
    run.latencies.sort();
    run
}

/// Closed loop: `conns` workers each send the next request as soon as the previous one is
/// answered. Returns (successful completions per second, errors).
async fn saturate(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
    conns: usize,
    secs: u64,
) -> (f64, usize) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let request = client.post(url).bearer_auth(key).json(&body);
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0usize, 0usize);
                while Instant::now() < end {
                    let done = match request.try_clone().unwrap().send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if done {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let mut total = (0, 0);
    for w in workers {
        let (ok, errors) = w.await.unwrap();
        total.0 += ok;
        total.1 += errors;
    }
    (total.0 as f64 / started.elapsed().as_secs_f64(), total.1)
}

async fn first_token(client: &reqwest::Client, url: &str, key: &str, model: &str) -> Duration {
    use futures_util::StreamExt;
    let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    let started = Instant::now();
    let response = client.post(url).bearer_auth(key).json(&body).send().await.unwrap();
    assert!(response.status().is_success());
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    let mut ttft = None;
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if ttft.is_none() && seen.contains("\"content\"") {
            ttft = Some(started.elapsed());
        }
    }
    ttft.expect("a content chunk")
}

fn main() {
    let rates: Vec<u64> =
        env_or("BENCH_RATES", "500,1000,2000").split(',').map(|r| r.trim().parse().unwrap()).collect();
    let secs: u64 = env_or("BENCH_SECS", "10").parse().unwrap();
    let streams: usize = env_or("BENCH_STREAMS", "200").parse().unwrap();
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/privaterouter-api");
    assert!(bin.exists(), "build the gateway first: cargo build --release -p privaterouter-api");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let db = postgres().await;
        let db_url = db.direct_url().await;
        let stand_in = upstream::start().await;
        let mut catalog = tempfile::NamedTempFile::new().unwrap();
        catalog.write_all(upstream::catalog_toml(&stand_in, "BENCH_UPSTREAM_KEY").as_bytes()).unwrap();
        let journal = tempfile::tempdir().unwrap();
        let start = |lease_calls: &str| {
            let port = free_port();
            let child = Command::new(&bin)
                .env("DATABASE_URL", &db_url)
                .env("PR_PUBLIC_ADDR", format!("127.0.0.1:{port}"))
                .env("PR_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
                .env("PR_MODELS_FILE", catalog.path())
                .env("PR_BILLING_JOURNAL_DIR", journal.path())
                .env("PR_CREDIT_LEASE_CALLS", lease_calls)
                .env("BENCH_UPSTREAM_KEY", upstream::UPSTREAM_KEY)
                .env("PR_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("starting the gateway");
            Gateway { child, url: format!("http://127.0.0.1:{port}") }
        };
        let gateway = start("16");
        let per_call = start("1");
        let client = reqwest::Client::builder().pool_max_idle_per_host(4096).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for g in [&gateway, &per_call] {
            while client.get(format!("{}/readyz", g.url)).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
                assert!(Instant::now() < deadline, "gateway did not become ready");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
        let funded_user = |email: &'static str| {
            let pool = pool.clone();
            async move {
                let (user_id, key) = privaterouter_api::accounts::users::create_user(
                    &pool,
                    email,
                    privaterouter_api::accounts::auth::Role::User,
                )
                .await
                .unwrap();
                privaterouter_api::billing::ledger::admin_credit(
                    &pool,
                    user_id,
                    privaterouter_api::billing::CreditKind::Topup,
                    "1000000".parse().unwrap(),
                    "bench",
                    email,
                )
                .await
                .unwrap();
                key
            }
        };
        let key = funded_user("bench@example.test").await;
        // The per-call variant bills another user, so the two never share a lease row.
        let key2 = funded_user("bench2@example.test").await;
        let per_call_url = format!("{}/v1/chat/completions", per_call.url);
        let conns: usize = env_or("BENCH_CONNS", "8").parse().unwrap();

        let direct_url = format!("{}/chat/completions", stand_in.base_url());
        let gateway_url = format!("{}/v1/chat/completions", gateway.url);
        // Warm up both paths (connections, caches).
        load(&client, &direct_url, upstream::UPSTREAM_KEY, "up-echo", 200, 2).await;
        load(&client, &gateway_url, &key, "echo", 200, 2).await;
        load(&client, &per_call_url, &key2, "echo", 200, 2).await;

        println!("saturation, closed loop, {conns} connections, {secs} s each (completions/s)");
        let (d, de) = saturate(&client, &direct_url, upstream::UPSTREAM_KEY, "up-echo", conns, secs).await;
        let (g, ge) = saturate(&client, &gateway_url, &key, "echo", conns, secs).await;
        let (p, pe) = saturate(&client, &per_call_url, &key2, "echo", conns, secs).await;
        println!("  direct upstream          {d:>9.0}  errors {de}");
        println!("  gateway (leases)         {g:>9.0}  errors {ge}  ratio to direct {:.3}", g / d);
        println!(
            "  gateway (lease step 1)   {p:>9.0}  errors {pe}  ratio to direct {:.3}  to leases {:.3}\n",
            p / d,
            p / g
        );

        // Settlement is written after the response: let the saturation runs' backlog drain, so
        // that the fixed-rate runs measure a writer that keeps up.
        let mut last = -1i64;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE kind = 'usage'")
                .fetch_one(&pool)
                .await
                .unwrap();
            if n == last {
                break;
            }
            last = n;
        }
        println!("non-streaming, open loop, {secs} s per run (latency in ms)");
        println!(
            "{:>6} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>14} {:>10}",
            "req/s", "path", "p50", "p90", "p99", "max", "errors", "added p50/p99", "RSS MiB"
        );
        for &rate in &rates {
            let direct = load(&client, &direct_url, upstream::UPSTREAM_KEY, "up-echo", rate, secs).await;
            let through = load(&client, &gateway_url, &key, "echo", rate, secs).await;
            let held = load(&client, &per_call_url, &key2, "echo", rate, secs).await;
            let (rss, peak) = gateway.rss_mib();
            for (name, run) in [("direct", &direct), ("gateway", &through), ("lease 1", &held)] {
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let added = if name == "direct" {
                    String::new()
                } else {
                    format!(
                        "{:.2} / {:.2}",
                        ms(percentile(&run.latencies, 0.5)) - ms(percentile(&direct.latencies, 0.5)),
                        ms(percentile(&run.latencies, 0.99)) - ms(percentile(&direct.latencies, 0.99))
                    )
                };
                let mem = if name == "gateway" { format!("{rss:.0} ({peak:.0} peak)") } else { String::new() };
                println!(
                    "{rate:>6} {name:>12} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {added:>14} {mem:>10}",
                    ms(percentile(&run.latencies, 0.5)),
                    ms(percentile(&run.latencies, 0.9)),
                    ms(percentile(&run.latencies, 0.99)),
                    ms(*run.latencies.last().unwrap_or(&Duration::ZERO)),
                    run.errors,
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // settlement is written after the response
        let billed: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE kind = 'usage'")
            .fetch_one(&pool)
            .await
            .unwrap();
        println!("usage rows written (durable billing, one per call): {billed}");

        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..streams {
            direct.push(first_token(&client, &direct_url, upstream::UPSTREAM_KEY, "up-echo").await);
            through.push(first_token(&client, &gateway_url, &key, "echo").await);
        }
        direct.sort();
        through.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("\nstreams: time to first token over {streams} sequential streams (ms)");
        println!("  direct   p50 {:.2}  p99 {:.2}", ms(percentile(&direct, 0.5)), ms(percentile(&direct, 0.99)));
        println!("  gateway  p50 {:.2}  p99 {:.2}", ms(percentile(&through, 0.5)), ms(percentile(&through, 0.99)));
        println!(
            "  added    p50 {:.2}  p99 {:.2}",
            ms(percentile(&through, 0.5)) - ms(percentile(&direct, 0.5)),
            ms(percentile(&through, 0.99)) - ms(percentile(&direct, 0.99))
        );
        let (rss, peak) = gateway.rss_mib();
        println!("\ngateway RSS at the end: {rss:.1} MiB (peak {peak:.1} MiB)");
        drop(gateway);
        drop(per_call);
        drop(db);
    });
}
