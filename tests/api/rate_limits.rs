//! Per-key rate limits shared through a real Redis by two in-process replicas on one Postgres,
//! the local fallback while Redis is stopped, and revocation published to every replica.

use std::time::Duration;

use privaterouter_tests::{
    Gateway, TestApp, balance_and_held,
    client::{expect_json, status_json},
    eventually, ledger_violations,
    redis::{TestRedis, redis, spawn_gateway_with_redis, spawn_replica},
    upstream::{COMPLETION_TOKENS, PROMPT_TOKENS},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
}

fn stream(model: &str) -> Value {
    json!({"model": model, "stream": true, "max_tokens": 100, "messages": [{"role": "user", "content": "hi there"}]})
}

/// `POST /api/keys` with `owner`: the new key's JSON (`id`, `key`, ...).
async fn new_key(app: &TestApp, owner: &str, body: Value) -> Value {
    app.api.create_key_ok(owner, &body).await
}

/// A user with credit and a key (a child of the user's first key) with these limits.
async fn limited_key(app: &TestApp, limits: Value) -> (uuid::Uuid, String) {
    let (_, admin) = app.user(true).await;
    let (user_id, first) = app.user(false).await;
    app.topup(&admin, user_id, "10").await;
    let created = new_key(app, &first, json!({"limits": limits})).await;
    (user_id, created["key"].as_str().unwrap().to_owned())
}

/// Resolves the key once on each replica: a burst then finds it in the key caches rather than
/// racing 45 lookups for a small test pool on a loaded machine.
async fn warm(apps: &[&TestApp], key: &str) {
    for app in apps {
        assert_eq!(app.api.models(key).await.status(), 200);
    }
}

async fn post(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.api.chat(key, body).await
}

/// Reads a served stream to its end: it must end with `[DONE]`.
async fn read_stream(response: reqwest::Response) {
    let text = response.text().await.expect("the stream is read to its end");
    assert!(text.trim_end().ends_with("data: [DONE]"), "a stream cut short: {text}");
}

/// Sends `n` calls at once, alternating between `apps`; the responses (status, headers, body).
async fn burst(apps: &[&TestApp], key: &str, body: &Value, n: usize) -> Vec<(u16, reqwest::header::HeaderMap, Value)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let request = post(apps[i % apps.len()], key, body);
        tasks.push(async move {
            let r = request.await;
            let headers = r.headers().clone();
            let (status, body) = status_json(r).await;
            (status, headers, body)
        });
    }
    futures_util::future::join_all(tasks).await
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap_or_else(|| panic!("{name} missing: {headers:?}")).to_str().unwrap()
}

async fn usage_rows(pool: &sqlx::PgPool, user_id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND kind = 'usage'")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every served call is in the ledger exactly once, at the stand-in's usage, and the ledger holds.
async fn billed_exactly(g: &Gateway, user_id: uuid::Uuid, served: usize) {
    eventually("every served call is billed", Duration::from_secs(20), || async {
        (usage_rows(&g.app.pool, user_id).await == served as i64).then_some(())
    })
    .await;
    let per_call = (Decimal::from(PROMPT_TOKENS) * Decimal::new(15, 1)
        + Decimal::from(COMPLETION_TOKENS) * Decimal::from(6))
        / Decimal::from(1_000_000);
    let (balance, _) = balance_and_held(&g.app.pool, user_id).await;
    assert_eq!(balance, Decimal::from(10) - per_call * Decimal::from(served as u64));
    assert_eq!(ledger_violations(&g.app.pool).await, (0, 0, 0));
}

#[tokio::test]
async fn a_key_limited_to_30_a_minute_gets_exactly_30_of_45_calls_over_two_replicas() {
    let r = redis().await;
    let g = spawn_gateway_with_redis(&r, |_| {}).await;
    let b = spawn_replica(&g, &r, |_| {}).await;
    let (user_id, key) = limited_key(&g.app, json!({"requests_per_minute": 30})).await;
    warm(&[&g.app, &b], &key).await;

    let responses = burst(&[&g.app, &b], &key, &chat("echo"), 45).await;
    let served: Vec<_> = responses.iter().filter(|r| r.0 == 200).collect();
    let refused: Vec<_> = responses.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(
        (served.len(), refused.len()),
        (30, 15),
        "{:?}",
        responses.iter().map(|r| (r.0, &r.2)).collect::<Vec<_>>()
    );

    for (_, headers, _) in &served {
        assert_eq!(header(headers, "x-ratelimit-limit-requests"), "30", "on a 2xx too");
        let remaining: u32 = header(headers, "x-ratelimit-remaining-requests").parse().unwrap();
        assert!(remaining < 30);
        assert!(header(headers, "x-ratelimit-reset-requests").ends_with('s'));
    }
    let mut remaining: Vec<u32> =
        served.iter().map(|(_, h, _)| header(h, "x-ratelimit-remaining-requests").parse().unwrap()).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..30).collect::<Vec<_>>(), "each served call saw the count before it, across replicas");
    for (_, headers, body) in &refused {
        let error = &body["error"];
        assert_eq!(error["code"], "rate_limit_exceeded");
        assert_eq!(error["type"], "requests");
        assert!(error["message"].as_str().unwrap().contains("30 requests per minute"), "{error}");
        assert!(error["request_id"].as_str().is_some_and(|id| id == header(headers, "x-request-id")));
        let retry: u64 = header(headers, "retry-after").parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(header(headers, "x-ratelimit-limit-requests"), "30");
        assert_eq!(header(headers, "x-ratelimit-remaining-requests"), "0");
    }
    billed_exactly(&g, user_id, 30).await;
    assert_eq!(g.upstream.requests().len(), 30, "refused calls send nothing upstream");

    let samples = g.app.samples().await;
    assert_eq!(samples.expect("pr_rate_limited_total", &[("kind", "requests")]), 15.0);
    assert_eq!(samples.expect("pr_rate_limited_total", &[("kind", "tokens")]), 0.0);
    assert_eq!(samples.expect("pr_rate_limited_total", &[("kind", "concurrent")]), 0.0);
    let text = g.app.metrics_text().await;
    assert!(!text.contains(&user_id.to_string()), "no user id in any label");
    for s in samples.series("pr_rate_limited_total") {
        assert_eq!(s.labels.keys().collect::<Vec<_>>(), ["kind"], "only the closed kind label");
    }
}

/// The worst case the limiter charges for `body`, read from a 2xx's headers under a large limit.
async fn charged_tokens(g: &Gateway, body: &Value) -> u64 {
    const LARGE: u64 = 1_000_000_000;
    let (_, key) = limited_key(&g.app, json!({"tokens_per_minute": LARGE})).await;
    g.upstream.release(1);
    let response = post(&g.app, &key, body).await;
    assert_eq!(response.status(), 200);
    let remaining: u64 = header(response.headers(), "x-ratelimit-remaining-tokens").parse().unwrap();
    read_stream(response).await;
    LARGE - remaining
}

#[tokio::test]
async fn tokens_are_charged_at_the_worst_case_and_corrected_to_the_usage_at_settlement() {
    let r = redis().await;
    let g = spawn_gateway_with_redis(&r, |_| {}).await;
    let b = spawn_replica(&g, &r, |_| {}).await;
    let body = stream("gated");
    let worst = charged_tokens(&g, &body).await;
    let used = PROMPT_TOKENS + COMPLETION_TOKENS;
    assert!(worst > used + 100, "the worst case ({worst}) is the prompt bound plus max_tokens");
    // One worst case fits; two do not; a settled call's usage plus one worst case does.
    let limit = worst + used;
    let (user_id, key) = limited_key(&g.app, json!({"tokens_per_minute": limit})).await;

    let first = post(&g.app, &key, &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(first.headers(), "x-ratelimit-remaining-tokens"), used.to_string());
    let second = post(&b, &key, &body).await;
    assert_eq!(second.status(), 429, "the first call counts its worst case while it runs");
    let retry: u64 = header(second.headers(), "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry));
    let err: Value = second.json().await.unwrap();
    assert_eq!(
        (err["error"]["code"].as_str(), err["error"]["type"].as_str()),
        (Some("rate_limit_exceeded"), Some("tokens"))
    );
    assert!(err["error"]["message"].as_str().unwrap().contains(&format!("{limit} tokens per minute")), "{err}");

    g.upstream.release(1);
    read_stream(first).await;
    let third = eventually("the settled call counts only its usage", Duration::from_secs(10), || async {
        g.upstream.release(1);
        let r = post(&b, &key, &body).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(header(third.headers(), "x-ratelimit-remaining-tokens"), "0", "usage + worst case = the limit");
    read_stream(third).await;

    let huge = json!({"model": "echo", "max_tokens": limit + 1, "messages": [{"role": "user", "content": "x"}]});
    let refused = post(&g.app, &key, &huge).await;
    assert_eq!(refused.status(), 429);
    let err: Value = refused.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("lower max_tokens"), "{err}");
    assert_eq!(g.app.samples().await.expect("pr_rate_limited_total", &[("kind", "tokens")]), 2.0);
    billed_exactly(&g, user_id, 2).await;
}

#[tokio::test]
async fn a_third_concurrent_stream_is_refused_while_two_run_on_the_other_replica() {
    let r = redis().await;
    let g = spawn_gateway_with_redis(&r, |_| {}).await;
    let b = spawn_replica(&g, &r, |_| {}).await;
    let (user_id, key) = limited_key(&g.app, json!({"max_concurrent": 2, "requests_per_minute": 1000})).await;
    let body = stream("gated");

    let one = post(&b, &key, &body).await;
    let two = post(&b, &key, &body).await;
    assert_eq!((one.status().as_u16(), two.status().as_u16()), (200, 200));
    assert_eq!(header(one.headers(), "x-ratelimit-limit-requests"), "1000", "a stream's head carries the headers");
    let third = post(&g.app, &key, &body).await;
    assert_eq!(third.status(), 429);
    let err: Value = third.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("2 concurrent requests"), "{err}");

    // A stream that ends frees its slot.
    g.upstream.release(1);
    read_stream(one).await;
    let four = eventually("a finished stream frees its slot", Duration::from_secs(10), || async {
        let r = post(&g.app, &key, &body).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    // A client that leaves: the call still runs to its end upstream, is billed, and frees its slot.
    drop(four);
    drop(two);
    g.upstream.release(2);
    let mut again = Vec::new();
    for n in 1..=2 {
        again.push(
            eventually(
                &format!("abandoned streams free slot {n} when they settle"),
                Duration::from_secs(10),
                || async {
                    let r = post(&b, &key, &body).await;
                    (r.status() == 200).then_some(r)
                },
            )
            .await,
        );
    }
    g.upstream.release(2);
    for r in again {
        read_stream(r).await;
    }
    assert!(g.app.samples().await.expect("pr_rate_limited_total", &[("kind", "concurrent")]) >= 1.0);
    billed_exactly(&g, user_id, 5).await;
}

/// Both replicas' subscriptions are up (a message published before would be missed).
async fn both_subscribed(g: &Gateway) {
    eventually("both replicas subscribed", Duration::from_secs(10), || async {
        // One process: both replicas log into the first app's capture.
        let subscribed = g.app.app_lines().iter().filter(|l| l["msg"] == "subscribed to key revocations").count();
        (subscribed >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_key_revoked_on_one_replica_is_refused_by_the_other_at_once() {
    let r = redis().await;
    // A minute of cache: only the published revocation can explain a refusal within the poll.
    let g = spawn_gateway_with_redis(&r, |c| c.key_cache_ttl_ms = 60_000).await;
    let b = spawn_replica(&g, &r, |c| c.key_cache_ttl_ms = 60_000).await;
    let (_, owner) = g.app.user(false).await;
    let created = new_key(&g.app, &owner, json!({})).await;
    let (id, key) = (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned());
    assert_eq!(b.api.models(&key).await.status(), 200, "cached on B");
    both_subscribed(&g).await;

    g.app.api.revoke_key_ok(&owner, &id).await;
    eventually("B refuses the revoked key", Duration::from_secs(5), || async {
        (b.api.models(&key).await.status() == 401).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_redis_stopped_each_replica_limits_to_its_share_and_shared_limits_resume_after() {
    let r: TestRedis = redis().await;
    let g = spawn_gateway_with_redis(&r, |c| c.api_replicas = 2).await;
    let b = spawn_replica(&g, &r, |c| c.api_replicas = 2).await;
    let (user_id, key) = limited_key(&g.app, json!({"requests_per_minute": 10})).await;
    warm(&[&g.app, &b], &key).await;
    assert_eq!(g.app.samples().await.expect("pr_api_replicas_expected", &[]), 2.0);

    r.stop().await;
    // Each replica alone: 10 / 2 = 5 a minute.
    let on_a = burst(&[&g.app], &key, &chat("echo"), 8).await;
    assert_eq!(on_a.iter().filter(|r| r.0 == 200).count(), 5, "{:?}", on_a.iter().map(|r| r.0).collect::<Vec<_>>());
    let refused: Vec<_> = on_a.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(refused.len(), 3, "the rest of the 8 are refused");
    assert!(refused.iter().all(|r| header(&r.1, "x-ratelimit-limit-requests") == "5"));
    let on_b = burst(&[&b], &key, &chat("echo"), 8).await;
    assert_eq!(on_b.iter().filter(|r| r.0 == 200).count(), 5);
    assert!(g.app.samples().await.expect("pr_redis_errors_total", &[]) > 0.0);
    let warned = g
        .app
        .app_lines()
        .iter()
        .filter(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("Redis is unreachable")))
        .count();
    assert_eq!(warned, 2, "logged once by each replica when it goes, not per call");
    billed_exactly(&g, user_id, 10).await;

    // Redis back (empty): A's own share is spent for this minute, so a call served on A now was
    // admitted by the shared limit; it resumes with its whole 10.
    r.start().await;
    for (name, app) in [("A", &g.app), ("B", &b)] {
        eventually(&format!("{name} uses the shared limit again"), Duration::from_secs(20), || async {
            (post(app, &key, &chat("echo")).await.status() == 200).then_some(())
        })
        .await;
    }
    let after = burst(&[&g.app, &b], &key, &chat("echo"), 12).await;
    assert_eq!(after.iter().filter(|r| r.0 == 200).count(), 8, "{:?}", after.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(after.iter().all(|r| header(&r.1, "x-ratelimit-limit-requests") == "10"));
    assert!(g.app.app_lines().iter().any(|l| l["msg"].as_str().is_some_and(|m| m.starts_with("Redis answers again"))));
    billed_exactly(&g, user_id, 20).await;
}

/// An admin's limit change on replica A binds replica B at once, for a key (its id published)
/// and for a user (`user:<id>` published: B drops every cached key of the user).
#[tokio::test]
async fn an_admins_limit_change_on_one_replica_binds_the_other_at_once() {
    let r = redis().await;
    // A minute of cache: only the published change can explain B seeing it within the poll.
    let g = spawn_gateway_with_redis(&r, |c| c.key_cache_ttl_ms = 60_000).await;
    let b = spawn_replica(&g, &r, |c| c.key_cache_ttl_ms = 60_000).await;
    let (_, admin) = g.app.user(true).await;
    let (user_id, owner) = g.app.user(false).await;
    g.app.topup(&admin, user_id, "10").await;
    let created = new_key(&g.app, &owner, json!({})).await;
    let (id, key) = (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned());
    // Both keys cached on B without limits: no x-ratelimit headers yet.
    for k in [&key, &owner] {
        let r = post(&b, k, &chat("echo")).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-ratelimit-limit-requests").is_none(), "{:?}", r.headers());
    }
    both_subscribed(&g).await;
    let limit_on_b = |k: String| {
        let b = &b;
        move || {
            let k = k.clone();
            async move {
                let r = post(b, &k, &chat("echo")).await;
                r.headers().get("x-ratelimit-limit-requests").map(|v| v.to_str().unwrap().to_owned())
            }
        }
    };
    let (api, admin) = (&g.app.api, admin.as_str());
    let patch = |path: String, limits: Value| async move {
        expect_json(api.patch(admin, &path, &json!({"limits": limits})).await, 200).await
    };

    patch(format!("/api/admin/keys/{id}"), json!({"requests_per_minute": 1})).await;
    let seen = eventually("B applies the key's new limit", Duration::from_secs(5), limit_on_b(key.clone())).await;
    assert_eq!(seen, "1");

    patch(format!("/api/admin/users/{user_id}"), json!({"requests_per_minute": 3})).await;
    let seen = eventually("B applies the user's new limit", Duration::from_secs(5), limit_on_b(owner.clone())).await;
    assert_eq!(seen, "3");
}
