//! Per-key rate limits and revocation across three API replicas of the real stack (the API
//! image, Redis, Postgres, nginx over TLS, Prometheus), on one stack:
//! 1. 45 calls through nginx with a key limited (by an admin) to 30 requests per minute: exactly
//!    30 are served, spread over all three replicas (each replica's own metrics), and the 429s
//!    carry `Retry-After` and the `x-ratelimit-*` headers;
//! 2. `max_concurrent: 2`: with two calls running on two replicas, a third on the third replica
//!    is refused;
//! 3. a key revoked on one replica is refused by the other two long before their key cache
//!    expires (TTL 60 s here, so only the Redis publish explains it); the delay is printed;
//! 4. Redis stopped: calls are still served under each replica's local share (limit ÷ 3) and
//!    the `PrivateRouterRedisErrors` alert's expression is true in Prometheus; Redis started
//!    again: the shared limit is exact again.
//!
//! The replicas are also reached directly (their container addresses on the stack's network,
//! port 8000 for calls, 9100 with the metrics token for their own metrics), to place calls on a
//! given replica and to see where nginx sent them.

use std::time::{Duration, Instant};

use privaterouter_hardening::net::{Request, Response};
use privaterouter_tests::{ApiClient, client::expect_json, eventually, prom, random_hex};
use serde_json::{Value, json};
use testcontainers::{ContainerAsync, GenericImage, runners::AsyncRunner};

use crate::{
    e2e::{bearer, urlencode},
    harness::{Kit, Stack, repo_root},
    standins,
};

const REPLICAS: usize = 3;
const PER_MINUTE: usize = 30;
const SENT: usize = 45;

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
}

/// One replica, reached directly on the stack's network.
struct Replica {
    name: String,
    ip: String,
    /// The replica's public listener (port 8000), not through nginx.
    api: ApiClient,
}

impl Replica {
    fn of(c: &ContainerAsync<GenericImage>, name: String, http: &reqwest::Client) -> Self {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c.id()])
            .output()
            .expect("docker inspect");
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!ip.is_empty(), "no address for {name}");
        let api = ApiClient::new(format!("http://{ip}:8000"), http.clone());
        Self { name, ip, api }
    }

    /// The sum over all label sets of these counters, from this replica's own metrics listener.
    /// The sum over all label sets of a counter family, which must have series.
    async fn counter(&self, token: &str, name: &str) -> f64 {
        let url = format!("http://{}:9100/metrics", self.ip);
        let response = self.api.http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}'s metrics", self.name);
        let samples = prom::parse(&response.text().await.unwrap());
        let series = samples.series(name);
        assert!(!series.is_empty(), "{} has no series of {name}", self.name);
        series.iter().map(|s| s.value).sum()
    }

    /// Calls this replica has answered: served (`pr_llm_calls_total`) and refused (`pr_rate_limited_total`).
    async fn answered(&self, token: &str) -> (f64, f64) {
        (self.counter(token, "pr_llm_calls_total").await, self.counter(token, "pr_rate_limited_total").await)
    }
}

/// A request with a JSON body and any method (the harness' `Request` has POST and GET helpers).
fn json_request(method: &'static str, path: String, body: &Value) -> Request {
    Request { method, ..Request::post_json(path, body) }
}

async fn https_ok(stack: &Stack, req: Request, want: u16) -> Value {
    let r = stack.https("api", req).await.unwrap();
    assert_eq!(r.status, want, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{want} without a JSON body ({e}): {}", r.text()))
}

/// `SENT` calls through nginx, one after another; the answers.
async fn through_nginx(stack: &Stack, key: &str) -> Vec<Response> {
    let mut out = Vec::new();
    for _ in 0..SENT {
        let req = bearer(Request::post_json("/v1/chat/completions", &chat("echo")), key);
        out.push(stack.https("api", req).await.unwrap_or_else(|e| panic!("a call got no answer: {e}")));
    }
    out
}

/// Each replica's (served, refused) counts since `before`.
async fn answered_since(replicas: &[Replica], token: &str, before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for (r, b) in replicas.iter().zip(before) {
        let now = r.answered(token).await;
        out.push((now.0 - b.0, now.1 - b.1));
    }
    out
}

async fn answered_now(replicas: &[Replica], token: &str) -> Vec<(f64, f64)> {
    answered_since(replicas, token, &vec![(0.0, 0.0); replicas.len()]).await
}

/// The `expr:` of an alert in the committed `prometheus/rules/alerts.yml`.
fn alert_expr(alert: &str) -> String {
    let rules = std::fs::read_to_string(repo_root().join("prometheus/rules/alerts.yml")).unwrap();
    let mut lines = rules.lines().skip_while(|l| l.trim() != format!("- alert: {alert}"));
    lines.next().unwrap_or_else(|| panic!("no alert {alert}"));
    let expr = lines.find_map(|l| l.trim().strip_prefix("expr:")).expect("the alert's expr");
    expr.trim().to_owned()
}

/// A user with credit; their first key and their id.
async fn funded_user(stack: &Stack, admin_key: &str, email: &str) -> (String, String) {
    let user = stack.api_cli(&["admin", "create-user", "--email", email]).await;
    let user_id = user["user_id"].as_str().unwrap().to_owned();
    let credit = json!({"kind": "topup", "amount_usd": "5", "reason": "rate limits"});
    let req = bearer(Request::post_json(format!("/api/admin/users/{user_id}/credits"), &credit), admin_key)
        .header("Idempotency-Key", random_hex(8));
    https_ok(stack, req, 201).await;
    (user["api_key"].as_str().unwrap().to_owned(), user_id)
}

/// A new key of `owner`'s user with these limits: (id, key).
async fn new_key(stack: &Stack, owner: &str, limits: Value) -> (String, String) {
    let created =
        https_ok(stack, bearer(Request::post_json("/api/keys", &json!({"limits": limits})), owner), 201).await;
    (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned())
}

fn served(answers: &[Response]) -> usize {
    answers.iter().filter(|r| r.status == 200).count()
}

fn assert_refusals_carry_headers(answers: &[Response]) {
    for r in answers {
        assert!(matches!(r.status, 200 | 429), "only 200 and 429 expected: {} {}", r.status, r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("30"), "{:?}", r.headers);
        assert!(
            r.header("x-ratelimit-remaining-requests").is_some() && r.header("x-ratelimit-reset-requests").is_some()
        );
        if r.status == 429 {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            assert!(body["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
            assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
            let retry: u64 = r.header("retry-after").expect("Retry-After on a 429").parse().unwrap();
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
        }
    }
}

/// Polls `GET /v1/models` with `key` on a replica until it is refused (401); the time since `from`.
async fn refused_after(replica: &Replica, key: &str, from: Instant) -> Duration {
    let deadline = from + Duration::from_secs(30);
    // Not `eventually`: its 100 ms pause would be most of the delay this measures.
    loop {
        let status = replica.api.models(key).await.status();
        if status == 401 {
            return from.elapsed();
        }
        assert_eq!(status, 200, "{}", replica.name);
        assert!(Instant::now() < deadline, "{} still accepts the revoked key after 30 s", replica.name);
        // A tight poll: the delay is what this measures.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_and_revocations_hold_across_three_replicas_and_a_redis_outage() {
    let mut kit = Kit::new();
    kit.api_replicas = REPLICAS;
    kit.redis = true;
    standins::serve_through_upstream(&mut kit);
    kit.api_env.extend([
        // Long enough that only the published revocation explains a quick refusal.
        ("PR_KEY_CACHE_TTL_MS".into(), "60000".into()),
        // A loaded test machine can be slower than the default 100 ms; a timeout would move a
        // call to the local fallback and make the exact counts flaky.
        ("PR_REDIS_TIMEOUT_MS".into(), "2000".into()),
    ]);
    let _upstream = standins::upstream(&kit).start().await.expect("the upstream stand-in starts");
    let stack = Stack::start(kit).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let token = stack.metrics_token.clone();
    let mut replicas = vec![Replica::of(&stack.api, "api".into(), &http)];
    replicas.extend(stack.more_apis.iter().enumerate().map(|(i, c)| Replica::of(c, format!("api-{}", i + 2), &http)));

    let admin = stack.api_cli(&["admin", "create-user", "--email", "admin@limits.test", "--admin"]).await;
    let admin_key = admin["api_key"].as_str().unwrap().to_owned();
    let (owner, _) = funded_user(&stack, &admin_key, "user@limits.test").await;

    // 1. 30 per minute, set by an admin, 45 calls through nginx.
    let (key_id, key) = new_key(&stack, &owner, json!({})).await;
    let patch =
        json_request("PATCH", format!("/api/admin/keys/{key_id}"), &json!({"limits": {"requests_per_minute": 30}}));
    https_ok(&stack, bearer(patch, &admin_key), 200).await;
    let before = answered_now(&replicas, &token).await;
    let answers = through_nginx(&stack, &key).await;
    assert_refusals_carry_headers(&answers);
    assert_eq!(served(&answers), PER_MINUTE, "statuses: {:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    let spread = answered_since(&replicas, &token, &before).await;
    eprintln!("30/min through nginx: (served, refused) per replica {spread:?}");
    assert_eq!(spread.iter().map(|(s, r)| s + r).sum::<f64>(), SENT as f64, "{spread:?}");
    assert_eq!(spread.iter().map(|(s, _)| s).sum::<f64>(), PER_MINUTE as f64, "{spread:?}");
    assert!(spread.iter().all(|(s, r)| s + r > 0.0), "nginx sent calls to every replica: {spread:?}");

    // 2. Two streams running on api-2 and api-3 (a stream's headers come after its admission;
    // the stand-in's "long" model streams for 2 s): the third call, on api, is refused.
    let (_, key) = new_key(&stack, &owner, json!({"max_concurrent": 2})).await;
    let long = json!({"model": "long", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let streams = futures_util::future::join_all(replicas[1..].iter().map(|r| r.api.chat(&key, &long))).await;
    let third = replicas[0].api.chat(&key, &chat("echo")).await;
    let (status, retry_after) = (third.status(), third.headers().get("retry-after").cloned());
    let body: Value = third.json().await.unwrap();
    for s in streams {
        assert_eq!(s.status(), 200, "both streams are admitted");
        assert!(s.text().await.unwrap().contains("[DONE]"), "the streams run to their end");
    }
    assert_eq!(status, 429, "the third call while two stream: {body}");
    assert_eq!(retry_after.as_ref().and_then(|v| v.to_str().ok()), Some("1"), "Retry-After of a concurrency refusal");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let again = expect_json(replicas[0].api.chat(&key, &chat("echo")).await, 200).await;
    assert_eq!(again["model"], "echo", "the slots are free again");

    // 3. Revoked on api: api-2 and api-3 refuse it although their caches hold it for 60 s.
    let (key_id, key) = new_key(&stack, &owner, json!({})).await;
    for r in &replicas {
        assert_eq!(r.api.models(&key).await.status(), 200, "{} knows the key", r.name);
    }
    replicas[0].api.revoke_key_ok(&owner, &key_id).await;
    let revoked_at = Instant::now();
    let delays = futures_util::future::join_all(replicas[1..].iter().map(|r| refused_after(r, &key, revoked_at))).await;
    eprintln!("revocation: refused by api-2, api-3 after {delays:?} (cache TTL 60 s)");
    assert!(delays.iter().all(|d| *d < Duration::from_secs(10)), "well under the 60 s TTL: {delays:?}");

    // 4. Redis stopped: each replica admits its share (30 / 3 = 10), calls keep being served.
    let redis = stack.redis.as_ref().expect("the stack runs Redis");
    redis.stop().await.expect("redis stops");
    let (_, key) = new_key(&stack, &owner, json!({"requests_per_minute": 30})).await;
    let before = answered_now(&replicas, &token).await;
    let answers = through_nginx(&stack, &key).await;
    assert!(
        answers.iter().all(|r| matches!(r.status, 200 | 429)),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let spread = answered_since(&replicas, &token, &before).await;
    eprintln!("Redis down, 30/min: {} served; (served, refused) per replica {spread:?}", served(&answers));
    assert!(served(&answers) > 0, "calls are served without Redis");
    assert!(spread.iter().all(|(s, _)| *s <= 10.0), "no replica admits more than its share of 10: {spread:?}");
    let expr = alert_expr("PrivateRouterRedisErrors");
    let query = format!("/api/v1/query?query={}", urlencode(&expr));
    eventually("the PrivateRouterRedisErrors expression is true", Duration::from_secs(120), || async {
        let req = Request::get(query.clone()).basic_auth("prometheus", &stack.prometheus_password);
        let r = stack.https("prometheus", req).await?;
        let body: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        if result.is_empty() { Err(format!("{body}")) } else { Ok(()) }
    })
    .await;

    // Redis back (empty: no persistence). A replica's first command after the restart may still
    // fail on its old connection and be limited locally; a probe key (1000 a minute, a local
    // share of 333) shows when each replica counts in Redis again.
    redis.start().await.expect("redis starts again");
    let (_, probe) = new_key(&stack, &owner, json!({"requests_per_minute": 1000})).await;
    for r in &replicas {
        eventually(&format!("{} limits through Redis again", r.name), Duration::from_secs(60), || async {
            let res = r.api.request(reqwest::Method::POST, "/v1/chat/completions", &probe).json(&chat("echo")).send();
            let res = res.await.map_err(|e| e.to_string())?;
            let limit = res.headers().get("x-ratelimit-limit-requests").map(|v| v.to_str().unwrap_or("").to_owned());
            if limit.as_deref() == Some("1000") { Ok(()) } else { Err(format!("{} {limit:?}", res.status())) }
        })
        .await;
    }
    let (_, key) = new_key(&stack, &owner, json!({"requests_per_minute": 30})).await;
    let answers = through_nginx(&stack, &key).await;
    assert_refusals_carry_headers(&answers);
    assert_eq!(served(&answers), PER_MINUTE, "shared again after Redis returned");
}
