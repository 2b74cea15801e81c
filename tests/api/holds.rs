//! Exact prepaid billing: the worst case is held before any upstream call, every served call is
//! billed exactly once whatever fails (client abort, database outage, bad rows), and the ledger
//! invariant holds for every user at every moment.

use std::time::Duration;

use privaterouter_tests::{
    ApiClient, Gateway, TestDb, balance_and_held,
    client::status_json,
    eventually, ledger_violations, spawn_app_on, spawn_gateway, spawn_gateway_with,
    upstream::{COMPLETION_TOKENS, PROMPT_TOKENS},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Cost of one stand-in call: 12 input tokens at 1.5 $/Mtok + 34 output tokens at 6 $/Mtok.
const CALL_COST: &str = "0.000222";

fn d(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
}

/// A 2 s call whose output cap is exactly what the stand-in answers, so that a settled call
/// costs most of its hold: once three such calls settle, what is left of three worst cases no
/// longer fits a fourth. Then "exactly three served" holds whenever the requests arrive (on a
/// loaded machine some arrive after the first calls settled), not only when all are in flight
/// at once.
fn tight_call() -> Value {
    let mut body = chat("twosec");
    body["max_tokens"] = json!(COMPLETION_TOKENS);
    body
}

async fn post(g: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    g.app.api.chat(key, body).await
}

async fn usage_rows(pool: &sqlx::PgPool, user_id: uuid::Uuid) -> Vec<(Decimal, i64, i64, bool, Vec<String>)> {
    sqlx::query_as(
        "SELECT -amount_usd, input_tokens, output_tokens, usage_estimated, usage_flags FROM credit_transactions \
         WHERE user_id = $1 AND kind = 'usage' ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The worst case of `body`, as the gateway states it in its 402 to a user without credit.
async fn worst_case(g: &Gateway, body: &Value) -> Decimal {
    let (_, broke) = g.app.user(false).await;
    let refused = post(g, &broke, body).await;
    assert_eq!(refused.status(), 402);
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "insufficient_credits");
    assert!(err["error"]["request_id"].is_string());
    let message = err["error"]["message"].as_str().unwrap();
    let needed = message.split("needs up to ").nth(1).and_then(|t| t.split(' ').next()).expect("amount in message");
    assert!(message.contains("0.00 USD is available"), "{message}");
    d(needed)
}

async fn funded(g: &Gateway, amount: Decimal) -> (uuid::Uuid, String) {
    g.app.funded_user(&amount.to_string()).await
}

/// Sends `n` calls at once, split over `targets`; returns their statuses (each answer read in
/// full: a served call's completion or our error, both JSON).
async fn burst(targets: &[&ApiClient], key: &str, body: &Value, n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (api, key, body) = (targets[i % targets.len()].clone(), key.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move { status_json(api.chat(&key, &body).await).await.0 }));
    }
    futures_util::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_calls_on_three_worst_cases_serve_exactly_three() {
    let g = spawn_gateway().await;
    let body = tight_call();
    let worst = worst_case(&g, &body).await;
    assert!(g.upstream.requests().is_empty(), "a refused call sends nothing upstream");
    let (user_id, key) = funded(&g, worst * Decimal::from(3)).await;

    let statuses = burst(&[&g.app.api], &key, &body, 50).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 47, "{statuses:?}");
    assert_eq!(g.upstream.requests().len(), 3, "only the held calls reached the upstream");

    let rows = eventually("3 calls settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g.app.pool, user_id).await;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r.0 == d(CALL_COST)), "settled at the reported usage, not the hold: {rows:?}");
    let (bal, _) = balance_and_held(&g.app.pool, user_id).await;
    assert_eq!(bal, worst * Decimal::from(3) - d(CALL_COST) * Decimal::from(3));
    assert!(bal >= Decimal::ZERO);
    assert!(bal < worst, "what is left fits no further call, however late it comes");
    assert_eq!(ledger_violations(&g.app.pool).await, (0, 0, 0));

    // What the user sees: balance, what is held now (nothing), and what is available.
    let shown = g.app.get_json("/api/billing/balance", &key).await;
    assert_eq!(d(shown["balance_usd"].as_str().unwrap()), bal);
    assert_eq!(d(shown["held_usd"].as_str().unwrap()), Decimal::ZERO);
    assert_eq!(d(shown["available_usd"].as_str().unwrap()), bal);

    let s = g.app.samples().await;
    assert_eq!(
        s.expect(
            "pr_llm_calls_total",
            &[("model", "twosec"), ("endpoint", "chat_completions"), ("status", "insufficient_credits")]
        ),
        48.0,
        "47 of the burst and the probe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_database_never_serve_more_than_the_balance_holds() {
    let g = spawn_gateway().await;
    let replica = spawn_app_on(TestDb { container: None, url: g.app.db.url.clone() }, |c| {
        c.models_file = Some(g.catalog_path());
    })
    .await;
    let body = tight_call();
    let worst = worst_case(&g, &body).await;
    let (user_id, key) = funded(&g, worst * Decimal::from(3)).await;

    let statuses = burst(&[&g.app.api, &replica.api], &key, &body, 50).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 47, "{statuses:?}");
    eventually("3 calls settled", Duration::from_secs(10), || async {
        (usage_rows(&g.app.pool, user_id).await.len() == 3).then_some(())
    })
    .await;
    let (bal, _) = balance_and_held(&g.app.pool, user_id).await;
    assert_eq!(bal, (worst - d(CALL_COST)) * Decimal::from(3));
    assert_eq!(ledger_violations(&g.app.pool).await, (0, 0, 0));
}

#[tokio::test]
async fn streams_always_ask_for_usage_whatever_the_client_sent() {
    let g = spawn_gateway().await;
    let (user_id, key) = funded(&g, d("1")).await;
    let variants = [
        json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "echo", "stream": true, "stream_options": null, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "echo", "stream": true, "stream_options": {"include_usage": false}, "messages": [{"role": "user", "content": "x"}]}),
    ];
    for body in &variants {
        let response = post(&g, &key, body).await;
        assert_eq!(response.status(), 200, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains("\"cost_usd\""), "the usage chunk reaches the client: {text}");
    }
    let sent = g.upstream.requests();
    assert_eq!(sent.len(), 3);
    for (body, request) in variants.iter().zip(&sent) {
        assert_eq!(request["stream_options"]["include_usage"], true, "sent for {body}: {request}");
    }
    let rows = eventually("3 streams settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g.app.pool, user_id).await;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| !r.3 && (r.1, r.2) == (PROMPT_TOKENS as i64, COMPLETION_TOKENS as i64)), "{rows:?}");

    for bad in [json!("yes"), json!(true), json!([1])] {
        let body = json!({"model": "echo", "stream": true, "stream_options": bad, "messages": [{"role": "user", "content": "x"}]});
        let response = post(&g, &key, &body).await;
        assert_eq!(response.status(), 400, "stream_options {bad}");
        let err: Value = response.json().await.unwrap();
        assert!(err["error"]["message"].as_str().unwrap().contains("stream_options"));
    }
    assert_eq!(g.upstream.requests().len(), 3, "refused requests send nothing upstream");
}

#[tokio::test]
async fn a_client_that_gives_up_on_a_non_streaming_call_is_billed_once() {
    let g = spawn_gateway().await;
    let (user_id, key) = funded(&g, d("1")).await;
    let aborted = g
        .app
        .api
        .request(reqwest::Method::POST, "/v1/chat/completions", &key)
        .json(&chat("twosec"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(aborted.is_err_and(|e| e.is_timeout()), "the client gave up after 0.5 s of a 2 s call");

    let s = g
        .app
        .wait_for_metrics("abandoned call counted", |s| {
            s.value(
                "pr_llm_calls_total",
                &[("model", "twosec"), ("endpoint", "chat_completions"), ("status", "client_disconnect")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        s.expect("pr_llm_calls_total", &[("model", "twosec"), ("endpoint", "chat_completions"), ("status", "success")]),
        0.0
    );
    let rows = eventually("the call settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g.app.pool, user_id).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(usage_rows(&g.app.pool, user_id).await.len(), 1, "billed exactly once");
    assert_eq!((rows[0].0, rows[0].1, rows[0].2, rows[0].3), (d(CALL_COST), 12, 34, false));
    assert_eq!(balance_and_held(&g.app.pool, user_id).await.0, d("1") - d(CALL_COST));
    // The request itself is finished too: logged and counted as 499 (client closed request),
    // and no longer in flight.
    let lines = g.app.access_lines(1).await;
    let aborted: Vec<_> = lines.iter().filter(|l| l["route"] == "/v1/chat/completions").collect();
    assert_eq!(aborted.len(), 1, "{lines:?}");
    assert_eq!(aborted[0]["status"], 499, "{lines:?}");
    let route = [("method", "POST"), ("route", "/v1/chat/completions")];
    let s = g.app.samples().await;
    assert_eq!(s.expect("pr_http_requests_in_flight", &route), 0.0);
    assert_eq!(s.expect("pr_http_requests_total", &[route[0], route[1], ("status", "499")]), 1.0);
}

#[tokio::test]
async fn calls_that_finish_during_a_database_outage_are_journaled_and_billed_when_it_returns() {
    let g = spawn_gateway_with(|c| c.db_max_connections = 4).await;
    let (user_id, key) = funded(&g, d("1")).await;
    // The lease is taken now; the outage starts while the 10 calls (2 s each) are upstream.
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (api, key) = (g.app.api.clone(), key.clone());
        calls.push(tokio::spawn(async move { status_json(api.chat(&key, &chat("twosec")).await).await.0 }));
    }
    eventually("10 calls upstream", Duration::from_secs(10), || async {
        (g.upstream.requests().len() == 10).then_some(())
    })
    .await;
    g.app.db.container().stop().await.expect("stop postgres");
    let statuses: Vec<u16> = futures_util::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses, [200; 10], "served while the database is away");

    let s = g
        .app
        .wait_for_metrics("10 settlements journaled", |s| s.value("pr_billing_journal_pending", &[]) == Some(10.0))
        .await;
    assert_eq!(s.expect("pr_credit_transactions_total", &[("kind", "usage")]), 0.0);
    // A call whose worst case needs more than the lease cannot be held without the database: 503.
    let big = json!({"model": "echo", "messages": [{"role": "user", "content": "x".repeat(900_000)}]});
    let refused = post(&g, &key, &big).await;
    assert_eq!(refused.status(), 503, "{}", refused.text().await.unwrap());
    assert_eq!(g.upstream.requests().len(), 10, "nothing sent upstream");

    tokio::time::sleep(Duration::from_secs(60)).await;
    g.app.db.container().start().await.expect("start postgres again");

    eventually("journal written", Duration::from_secs(60), || async {
        let s = g.app.samples().await;
        (s.value("pr_billing_journal_pending", &[]) == Some(0.0)
            && s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(10.0))
        .then_some(())
    })
    .await;
    let pool = sqlx::PgPool::connect(&g.app.db.url).await.unwrap();
    let rows = usage_rows(&pool, user_id).await;
    assert_eq!(rows.len(), 10, "exactly 10 usage rows");
    assert_eq!(balance_and_held(&pool, user_id).await.0, d("1") - d(CALL_COST) * Decimal::from(10), "balance exact");
    assert_eq!(ledger_violations(&pool).await, (0, 0, 0));
}

#[tokio::test]
async fn one_unwritable_row_in_a_batch_is_dead_lettered_and_the_others_are_written() {
    use privaterouter_api::billing::{Settlement, settle::write_batch};
    let g = spawn_gateway().await;
    let (user_id, _) = funded(&g, d("1")).await;
    let (gone, _) = g.app.user(false).await;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(gone).execute(&g.app.pool).await.unwrap();
    let row = |user: uuid::Uuid, n: i64| Settlement {
        call_id: uuid::Uuid::new_v4(),
        user_id: user,
        replica_id: uuid::Uuid::new_v4(),
        model: "echo".into(),
        input_tokens: n,
        output_tokens: 1,
        cost_usd: d("0.000001"),
        estimated: false,
        flags: vec![],
        request_id: format!("req-{n}"),
    };
    let mut rows: Vec<Settlement> = (0..19).map(|n| row(user_id, n)).collect();
    rows.insert(7, row(gone, 99)); // its user was deleted meanwhile
    let outcome = write_batch(&g.app.pool, &rows).await.expect("the batch is handled");
    assert_eq!((outcome.written.len(), outcome.dead.len()), (19, 1));
    assert_eq!(outcome.dead, [rows[7].call_id]);

    assert_eq!(usage_rows(&g.app.pool, user_id).await.len(), 19);
    let (call_id, reason, payload): (uuid::Uuid, String, Value) =
        sqlx::query_as("SELECT call_id, reason, payload FROM billing_dead_letters")
            .fetch_one(&g.app.pool)
            .await
            .unwrap();
    assert_eq!(call_id, rows[7].call_id);
    assert!(reason.contains("foreign key"), "{reason}");
    assert_eq!(payload["request_id"], "req-99");
    assert_eq!(balance_and_held(&g.app.pool, user_id).await.0, d("1") - d("0.000019"));
    assert_eq!(g.app.samples().await.expect("pr_billing_dead_letters_total", &[]), 1.0);

    // Written again (a replay): nothing changes, nothing is billed twice.
    let again = write_batch(&g.app.pool, &rows).await.unwrap();
    assert_eq!((again.written.len(), again.duplicates.len()), (0, 19));
    assert_eq!(usage_rows(&g.app.pool, user_id).await.len(), 19);
    assert_eq!(ledger_violations(&g.app.pool).await, (0, 0, 0));
}

#[tokio::test]
async fn bad_token_limits_are_refused_and_odd_usage_is_flagged_never_lost() {
    let g = spawn_gateway().await;
    let (user_id, key) = funded(&g, d("10")).await;
    for bad in [json!(-1), json!(0), json!("100"), json!(1.5), json!(1u64 << 40)] {
        for field in ["max_tokens", "max_completion_tokens"] {
            let mut body = chat("echo");
            body[field] = bad.clone();
            let response = post(&g, &key, &body).await;
            assert_eq!(response.status(), 400, "{field}: {bad}");
            let err: Value = response.json().await.unwrap();
            assert_eq!(err["error"]["code"], "invalid_max_tokens");
        }
    }
    assert!(g.upstream.requests().is_empty());

    // The cap is sent upstream: the catalog's when the request asks for more, the request's when less.
    let mut body = chat("capped");
    body["max_tokens"] = json!(100_000);
    assert_eq!(post(&g, &key, &body).await.status(), 200);
    assert_eq!(post(&g, &key, &chat("capped")).await.status(), 200);
    let mut body = chat("echo");
    body["max_completion_tokens"] = json!(10);
    assert_eq!(post(&g, &key, &body).await.status(), 200);
    let sent = g.upstream.requests();
    assert_eq!(sent[0]["max_tokens"], 64);
    assert_eq!(sent[1]["max_tokens"], 64);
    assert_eq!(sent[2]["max_completion_tokens"], 10);
    assert!(sent[2].get("max_tokens").is_none());

    // More output than the cap: billed as reported, flagged. Absurd counts: clamped, flagged.
    assert_eq!(post(&g, &key, &chat("overcap")).await.status(), 200);
    let absurd = post(&g, &key, &chat("absurd")).await;
    assert_eq!(absurd.status(), 200);
    let rows = eventually("5 calls settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g.app.pool, user_id).await;
        (rows.len() == 5).then_some(rows)
    })
    .await;
    assert_eq!((rows[3].2, rows[3].4.clone()), (5000, vec!["over_cap".to_owned()]));
    assert_eq!(rows[3].0, d("0.030018"), "12 × 1.5 + 5000 × 6 micro-dollars");
    assert_eq!((rows[4].1, rows[4].2), (100_000_000, 100_000_000));
    assert_eq!(rows[4].4, ["clamped", "over_cap"]);
    let s = g.app.samples().await;
    assert_eq!(rows[2].4, ["over_cap"], "34 output tokens reported for a cap of 10");
    assert_eq!(s.expect("pr_billing_flagged_total", &[("reason", "over_cap")]), 3.0);
    assert_eq!(s.expect("pr_billing_flagged_total", &[("reason", "clamped")]), 1.0);
    // The absurd call cost far more than the user had: the balance is negative, which the
    // ledger check reports only while something is held beyond it.
    assert_eq!(ledger_violations(&g.app.pool).await.0, 0);
}

#[tokio::test]
async fn the_periodic_ledger_check_counts_a_tampered_balance() {
    let g = spawn_gateway_with(|c| c.ledger_check_interval_secs = 1).await;
    let (user_id, _) = funded(&g, d("1")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = g.app.samples().await;
    assert_eq!(
        s.expect("pr_ledger_check_failures_total", &[("check", "balance_mismatch")]),
        0.0,
        "a clean ledger passes"
    );
    sqlx::query("UPDATE user_balances SET balance_usd = balance_usd + 1 WHERE user_id = $1")
        .bind(user_id)
        .execute(&g.app.pool)
        .await
        .unwrap();
    g.app
        .wait_for_metrics("tampering detected", |s| {
            s.value("pr_ledger_check_failures_total", &[("check", "balance_mismatch")]).is_some_and(|v| v >= 1.0)
        })
        .await;
}
