use std::time::{Duration, Instant};

use futures_util::StreamExt;
use privaterouter_tests::{
    Gateway, random_hex, spawn_gateway, spawn_gateway_with,
    upstream::{COMPLETION_TOKENS, DONE_TEXT, PROMPT_TOKENS, STREAM_WORDS, UPSTREAM_KEY},
};
use serde_json::{Value, json};

/// Cost of one stand-in call: 12 input tokens at 1.5 $/Mtok + 34 output tokens at 6 $/Mtok.
const CALL_COST: &str = "0.000222";

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi there"}]})
}

async fn post(g: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    g.app.api.chat(key, body).await
}

/// Reads a call's whole answer: a served call's body is complete (a stream to its `[DONE]`, a
/// completion with its usage), a refused one is our JSON error. Returns the status.
async fn read_answer(response: reqwest::Response, stream: bool) -> u16 {
    let status = response.status().as_u16();
    let text = response.text().await.expect("the body is read to its end");
    match (status, stream) {
        (200, true) => assert!(text.trim_end().ends_with("data: [DONE]"), "a stream cut short: {text}"),
        (200, false) => {
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(body["usage"]["cost_usd"], CALL_COST, "{body}");
        }
        _ => {
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {e}: {text}"));
            assert!(body["error"]["code"].is_string(), "{status}: {body}");
        }
    }
    status
}

async fn usage_rows(g: &Gateway, user_id: uuid::Uuid) -> Vec<(String, i64, i64, bool, String)> {
    sqlx::query_as(
        "SELECT (-amount_usd)::text, input_tokens, output_tokens, usage_estimated, model FROM credit_transactions \
         WHERE user_id = $1 AND kind = 'usage' ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(&g.app.pool)
    .await
    .unwrap()
}

fn dec(s: &str) -> f64 {
    s.parse().unwrap()
}

#[tokio::test]
async fn completion_is_proxied_metered_and_billed_once() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;

    let models = g.app.api.get_ok(&key, "/v1/models").await;
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "echo",
            "nousage",
            "long",
            "slow",
            "fail500",
            "fail400",
            "dead",
            "wait",
            "twosec",
            "overcap",
            "absurd",
            "fail401",
            "hugeerror",
            "internals",
            "ratelimited",
            "donetext",
            "gated",
            "capped",
            "pooled",
            "embed",
            "nostream",
            "claude",
            "claude-nousage",
            "claude-overloaded",
            "claude-nostream"
        ]
    );
    assert_eq!(models["object"], "list");

    let response = post(&g, &key, &chat("echo", false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi there");
    assert_eq!(body["model"], "echo", "clients see the public model name");
    assert_eq!(body["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(body["usage"]["completion_tokens"], COMPLETION_TOKENS);
    assert_eq!(body["usage"]["cost_usd"], CALL_COST);

    // The upstream saw its own model name and the catalog's key, never the client's key.
    let sent = g.upstream.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["model"], "up-echo");

    // Settlement is written after the response (the hold protected the balance meanwhile).
    let rows = privaterouter_tests::eventually("the call is settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g, user_id).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(dec(&rows[0].0), dec(CALL_COST));
    assert_eq!((rows[0].1, rows[0].2, rows[0].3, rows[0].4.as_str()), (12, 34, false, "echo"));
    let balance = g.app.get_json("/api/billing/balance", &key).await;
    assert_eq!(balance["balance_usd"], "0.999778");

    let s = g.app.samples().await;
    assert_eq!(
        s.expect("pr_llm_calls_total", &[("model", "echo"), ("endpoint", "chat_completions"), ("status", "success")]),
        1.0
    );
    assert_eq!(
        s.expect("pr_llm_tokens_total", &[("model", "echo"), ("endpoint", "chat_completions"), ("direction", "input")]),
        12.0
    );
    assert_eq!(
        s.expect(
            "pr_llm_tokens_total",
            &[("model", "echo"), ("endpoint", "chat_completions"), ("direction", "output")]
        ),
        34.0
    );
    assert_eq!(
        s.expect("pr_llm_cost_usd_total", &[("model", "echo"), ("endpoint", "chat_completions")]),
        dec(CALL_COST)
    );
    assert_eq!(s.types["pr_llm_cost_usd_total"], "counter");
    assert_eq!(s.expect("pr_credit_transactions_total", &[("kind", "usage")]), 1.0);
    assert_eq!(
        s.expect("pr_llm_upstream_duration_seconds_count", &[("model", "echo"), ("endpoint", "chat_completions")]),
        1.0
    );
    assert_eq!(s.expect("pr_llm_gateway_overhead_seconds_count", &[("endpoint", "chat_completions")]), 1.0);
    for name in [
        "pr_llm_calls_total",
        "pr_llm_tokens_total",
        "pr_llm_cost_usd_total",
        "pr_llm_upstream_duration_seconds",
        "pr_llm_gateway_overhead_seconds",
    ] {
        assert!(s.help.contains_key(name), "HELP for {name}");
    }
}

#[tokio::test]
async fn refusals_errors_and_unknown_models() {
    let g = spawn_gateway_with(|c| c.upstream_timeout_secs = 1).await;
    let (_, broke) = g.app.user(false).await;
    let refused = post(&g, &broke, &chat("echo", false)).await;
    assert_eq!(refused.status(), 402);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_credits");
    assert!(g.upstream.requests().is_empty(), "nothing reached the upstream");

    let (user_id, key) = g.app.funded_user("1.00").await;
    let cases = [
        ("nope-model", 404, "model_not_found"),
        ("fail500", 502, "upstream_error"),
        ("fail400", 400, "upstream_rejected"),
        ("dead", 502, "upstream_unavailable"),
        ("slow", 504, "upstream_timeout"),
    ];
    for (model, status, code) in cases {
        let response = post(&g, &key, &chat(model, false)).await;
        assert_eq!(response.status(), status, "{model}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{model}: {body}");
        assert!(body["error"]["request_id"].is_string());
    }
    let body: Value = post(&g, &key, &chat("fail500", false)).await.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "The model's upstream failed (it answered 500).",
        "an upstream failure is ours to describe"
    );
    let body: Value = post(&g, &key, &chat("fail400", false)).await.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "The model's upstream rejected the request: context length exceeded",
        "what the upstream found wrong with the request is passed on"
    );

    for (bad, why) in [
        (json!({"messages": [{"role": "user", "content": "x"}]}), "no model"),
        (json!({"model": "echo"}), "no messages"),
        (json!({"model": "echo", "messages": []}), "empty messages"),
        (json!({"model": 7, "messages": [{"role": "user", "content": "x"}]}), "model not a string"),
        (
            json!({"model": "echo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}),
            "stream not a bool",
        ),
    ] {
        assert_eq!(post(&g, &key, &bad).await.status(), 400, "{why}");
    }
    assert!(usage_rows(&g, user_id).await.is_empty(), "failed calls are not billed");

    let s = g.app.samples().await;
    let calls = |model: &str, status: &str| {
        s.expect("pr_llm_calls_total", &[("model", model), ("endpoint", "chat_completions"), ("status", status)])
    };
    assert_eq!(calls("echo", "insufficient_credits"), 1.0);
    assert_eq!(calls("fail500", "upstream_error"), 2.0);
    assert_eq!(calls("fail400", "upstream_error"), 2.0);
    assert_eq!(calls("dead", "upstream_unavailable"), 1.0);
    assert_eq!(calls("slow", "timeout"), 1.0);
    let ex = |kind: &str| {
        s.expect(
            "pr_http_exceptions_total",
            &[("method", "POST"), ("route", "/v1/chat/completions"), ("exception_type", kind)],
        )
    };
    assert_eq!(ex("upstream_error"), 2.0);
    assert_eq!(ex("upstream_unavailable"), 1.0);
    assert_eq!(ex("upstream_timeout"), 1.0);
}

#[tokio::test]
async fn unknown_models_never_become_labels() {
    let g = spawn_gateway().await;
    let (_, key) = g.app.funded_user("1.00").await;
    assert_eq!(post(&g, &key, &chat("echo", false)).await.status(), 200);
    assert_eq!(post(&g, &key, &chat("not-a-model", false)).await.status(), 404);
    let before = g
        .app
        .wait_for_metrics("warm-up counted and billed", |s| {
            s.value(
                "pr_http_requests_total",
                &[("method", "POST"), ("route", "/v1/chat/completions"), ("status", "404")],
            ) == Some(1.0)
                && s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(1.0)
        })
        .await;

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let api = g.app.api.clone();
        let key = key.clone();
        let model = format!("m-{}", random_hex(8));
        tasks.push(tokio::spawn(async move { api.chat(&key, &chat(&model, false)).await.status() }));
        if tasks.len() == 50 {
            for t in tasks.drain(..) {
                assert_eq!(t.await.unwrap(), 404);
            }
        }
    }
    let after = g
        .app
        .wait_for_metrics("all counted", |s| {
            s.value(
                "pr_http_requests_total",
                &[("method", "POST"), ("route", "/v1/chat/completions"), ("status", "404")],
            ) == Some(1001.0)
        })
        .await;
    assert_eq!(after.samples.len(), before.samples.len(), "no new series");
    let models: std::collections::BTreeSet<&str> =
        after.samples.iter().filter_map(|s| s.labels.get("model").map(String::as_str)).collect();
    let catalog = privaterouter_api::llm::catalog::Catalog::load(&g.catalog_path()).unwrap();
    let names: std::collections::BTreeSet<&str> = catalog.models().iter().map(|m| m.name).collect();
    assert_eq!(models, names, "catalog names only (each has its zero series from the start)");
}

/// Reads an SSE response, returning each event's data and when it arrived.
async fn read_sse(response: reqwest::Response) -> Vec<(Duration, String)> {
    let start = Instant::now();
    let mut stream = response.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.trim().strip_prefix("data: ") {
                events.push((start.elapsed(), data.to_owned()));
            }
        }
    }
    events
}

/// The content of a stream's chunks, in order.
fn streamed_text(events: &[(Duration, String)]) -> String {
    events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn streams_are_forwarded_as_they_arrive_and_billed_from_reported_usage() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;

    let response = post(&g, &key, &chat("echo", true)).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = read_sse(response).await;
    // Words, the usage chunk, [DONE].
    assert_eq!(events.len(), STREAM_WORDS.len() + 2, "{events:?}");
    assert_eq!(streamed_text(&events), STREAM_WORDS.concat());
    // Not buffered: the stand-in spaces chunks 30 ms apart.
    let first = events[0].0;
    let last = events.last().unwrap().0;
    assert!(last - first >= Duration::from_millis(100), "chunks arrived together: {first:?} .. {last:?}");
    let usage: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(usage["usage"]["cost_usd"], CALL_COST, "the final chunk carries the cost");
    assert_eq!(events.last().unwrap().1, "[DONE]");

    let sent = g.upstream.requests();
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["stream_options"]["include_usage"], true, "usage is requested from the upstream");

    let rows = g
        .app
        .wait_for_metrics("stream billed", |s| {
            s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(1.0)
        })
        .await;
    assert_eq!(
        rows.expect("pr_llm_time_to_first_token_seconds_count", &[("model", "echo"), ("endpoint", "chat_completions")]),
        1.0
    );
    let rows = usage_rows(&g, user_id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((dec(&rows[0].0), rows[0].1, rows[0].2, rows[0].3), (dec(CALL_COST), 12, 34, false));

    // An upstream that reports no usage: billed from an estimate, flagged as such.
    let events = read_sse(post(&g, &key, &chat("nousage", true)).await).await;
    assert_eq!(events.last().unwrap().1, "[DONE]");
    g.app
        .wait_for_metrics("estimate billed", |s| {
            s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(2.0)
        })
        .await;
    let rows = usage_rows(&g, user_id).await;
    assert_eq!(rows.len(), 2);
    let (_, input, output, estimated, _) = &rows[1];
    assert!(*estimated);
    assert_eq!(*output as usize, STREAM_WORDS.concat().len().div_ceil(4));
    assert!(*input > 0);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_still_billed() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let response = post(&g, &key, &chat("long", true)).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    drop(stream); // the client goes away after the first chunk of a 2 s stream

    let s = g
        .app
        .wait_for_metrics("disconnect billed", |s| {
            // The call is counted when its usage is handed to the billing writer; the row is
            // written after that.
            s.value(
                "pr_llm_calls_total",
                &[("model", "long"), ("endpoint", "chat_completions"), ("status", "client_disconnect")],
            ) == Some(1.0)
                && s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(1.0)
        })
        .await;
    let rows = usage_rows(&g, user_id).await;
    assert_eq!(rows.len(), 1, "billed exactly once");
    assert_eq!((rows[0].1, rows[0].2, rows[0].3), (12, 34, false), "billed from what the upstream reported");
    assert_eq!(
        s.expect("pr_llm_cost_usd_total", &[("model", "long"), ("endpoint", "chat_completions")]),
        dec(CALL_COST)
    );
}

#[tokio::test]
async fn the_ledger_holds_under_concurrency_and_matches_the_metrics() {
    let g = spawn_gateway().await;
    // One user with credit for about 20 worst cases (4,096 output tokens each) sends 200 at once.
    let (solo, solo_key) = g.app.funded_user("0.5").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let api = g.app.api.clone();
        let key = solo_key.clone();
        let stream = i % 4 == 0;
        tasks.push(tokio::spawn(async move { read_answer(api.chat(&key, &chat("echo", stream)).await, stream).await }));
    }
    let statuses: Vec<u16> = futures_util::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 402), "{statuses:?}");
    let ok = statuses.iter().filter(|s| **s == 200).count();

    // Many users at once: 20 users × 10 calls.
    let (_, admin) = g.app.user(true).await;
    let mut users = Vec::new();
    for _ in 0..20 {
        let (id, key) = g.app.user(false).await;
        g.app.topup(&admin, id, "5").await;
        users.push((id, key));
    }
    let mut tasks = Vec::new();
    for (_, key) in &users {
        for i in 0..10 {
            let api = g.app.api.clone();
            let key = key.clone();
            let stream = i % 2 == 0;
            tasks.push(tokio::spawn(
                async move { read_answer(api.chat(&key, &chat("echo", stream)).await, stream).await },
            ));
        }
    }
    let many: Vec<u16> = futures_util::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert!(many.iter().all(|s| *s == 200), "{many:?}");
    let total_calls = ok + many.len();

    let s = g
        .app
        .wait_for_metrics("every call billed", |s| {
            s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(total_calls as f64)
        })
        .await;

    // balance = sum of transactions, for every user; one usage row per completed call.
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_balances b WHERE b.balance_usd <> \
           (SELECT coalesce(sum(amount_usd), 0) FROM credit_transactions t WHERE t.user_id = b.user_id)",
    )
    .fetch_one(&g.app.pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0, "balance equals the sum of transactions for every user");
    let usage: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE kind = 'usage'")
        .fetch_one(&g.app.pool)
        .await
        .unwrap();
    assert_eq!(usage as usize, total_calls, "exactly one usage row per completed call");
    let dupes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT call_id FROM credit_transactions WHERE call_id IS NOT NULL GROUP BY call_id HAVING count(*) > 1) d")
            .fetch_one(&g.app.pool)
            .await
            .unwrap();
    assert_eq!(dupes, 0);

    // Every call held its worst case first: the balance never goes below zero.
    let solo_balance: String = sqlx::query_scalar("SELECT balance_usd::text FROM user_balances WHERE user_id = $1")
        .bind(solo)
        .fetch_one(&g.app.pool)
        .await
        .unwrap();
    assert!(dec(&solo_balance) >= 0.0, "no overdraft: {solo_balance}");
    assert!((10..200).contains(&ok), "the worst cases that fit were served, the rest refused: {ok}");

    // Metrics equal the ledger.
    let (cost, input, output): (String, i64, i64) = sqlx::query_as(
        "SELECT (-sum(amount_usd))::text, sum(input_tokens)::bigint, sum(output_tokens)::bigint FROM credit_transactions WHERE kind = 'usage'",
    )
    .fetch_one(&g.app.pool)
    .await
    .unwrap();
    assert!(
        (s.expect("pr_llm_cost_usd_total", &[("model", "echo"), ("endpoint", "chat_completions")]) - dec(&cost)).abs()
            < 1e-12,
        "cost {cost}"
    );
    assert_eq!(
        s.expect("pr_llm_tokens_total", &[("model", "echo"), ("endpoint", "chat_completions"), ("direction", "input")]),
        input as f64
    );
    assert_eq!(
        s.expect(
            "pr_llm_tokens_total",
            &[("model", "echo"), ("endpoint", "chat_completions"), ("direction", "output")]
        ),
        output as f64
    );
    let calls = |status| [("model", "echo"), ("endpoint", "chat_completions"), ("status", status)];
    // Every answer was read to its end, so no call should count as a disconnect; the series
    // exists only once one has (it has no zero series), so its absence reads as none.
    let disconnects = s.value("pr_llm_calls_total", &calls("client_disconnect")).unwrap_or(0.0);
    let successes = s.expect("pr_llm_calls_total", &calls("success")) + disconnects;
    assert_eq!(successes as usize, total_calls);
}

/// The stand-in's error answers, as the client sees them: (model, status, code).
const UPSTREAM_ERRORS: [(&str, u16, &str); 4] = [
    ("fail401", 502, "upstream_auth_failed"),
    ("hugeerror", 400, "upstream_rejected"),
    ("internals", 400, "upstream_rejected"),
    ("ratelimited", 429, "upstream_rate_limited"),
];

#[tokio::test]
async fn upstream_errors_reach_the_client_bounded_sanitised_and_as_our_status() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let mut ids = Vec::new();
    for (model, status, code) in UPSTREAM_ERRORS {
        let response = post(&g, &key, &chat(model, false)).await;
        assert_eq!(response.status(), status, "{model}");
        assert!(
            response.headers().get("www-authenticate").is_none(),
            "{model}: an upstream's challenge is not the client's"
        );
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(retry_after.as_deref(), (model == "ratelimited").then_some("7"), "{model}");
        let text = response.text().await.unwrap();
        assert!(text.len() < 1024, "{model}: a bounded body, not the upstream's ({} bytes)", text.len());
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], code, "{model}: {body}");
        assert_eq!(body["error"]["request_id"], request_id.as_str());
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.chars().count() <= 512, "{model}: {}", message.len());
        for secret in [UPSTREAM_KEY, "litellm", "http", "sk-", "Traceback", "Model Group", "up-", "10.1.2.3", "org-"] {
            assert!(!message.contains(secret), "{model}: `{secret}` reached the client: {message}");
        }
        ids.push((model, request_id));
    }
    let body: Value = post(&g, &key, &chat("internals", false)).await.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "The model's upstream rejected the request: Error code: 400 - prompt too long for internals at [url] with \
         [redacted]",
        "the upstream's own words, less its internals, with the public model name"
    );

    // The operator gets the upstream's answer, bounded, under the request id.
    for (model, request_id) in &ids {
        // Log lines are written by a thread of their own.
        let line =
            privaterouter_tests::eventually(&format!("{model}: the answer is logged"), Duration::from_secs(10), || {
                let line = g
                    .app
                    .app_lines()
                    .into_iter()
                    .find(|l| l["logger"] == "pr.upstream" && l["request_id"] == request_id.as_str());
                async move { line }
            })
            .await;
        let logged = line["body"].as_str().unwrap();
        assert!(!logged.is_empty() && logged.len() <= 2048, "{model}: {}", logged.len());
    }

    assert!(usage_rows(&g, user_id).await.is_empty(), "failed calls are not billed");
    let balance = g.app.get_json("/api/billing/balance", &key).await;
    assert_eq!((dec(balance["balance_usd"].as_str().unwrap()), dec(balance["held_usd"].as_str().unwrap())), (1.0, 0.0));
    let s = g.app.samples().await;
    for (model, ..) in UPSTREAM_ERRORS {
        let calls = s.expect(
            "pr_llm_calls_total",
            &[("model", model), ("endpoint", "chat_completions"), ("status", "upstream_error")],
        );
        assert_eq!(calls, if model == "internals" { 2.0 } else { 1.0 }, "{model}");
    }
    let auth = s.expect(
        "pr_http_exceptions_total",
        &[("method", "POST"), ("route", "/v1/chat/completions"), ("exception_type", "upstream_auth_failed")],
    );
    assert_eq!(auth, 1.0);
}

/// Fields that steer LiteLLM (or the upstream's price) rather than the model.
const STEERING: [&str; 10] = [
    "api_base",
    "api_key",
    "base_url",
    "mock_response",
    "fallbacks",
    "num_retries",
    "timeout",
    "metadata",
    "litellm_logging_obj",
    "service_tier",
];

fn steering_value(field: &str) -> Value {
    match field {
        "api_base" | "base_url" => json!("http://attacker.invalid/v1"),
        "api_key" => json!("sk-attacker"),
        "mock_response" => json!("free answer"),
        "fallbacks" => json!(["expensive-model"]),
        "num_retries" => json!(50),
        "timeout" => json!(3600),
        "metadata" => json!({"tags": ["x"]}),
        "service_tier" => json!("priority"),
        _ => json!(true),
    }
}

#[tokio::test]
async fn only_documented_openai_parameters_reach_the_upstream() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    for field in STEERING {
        for stream in [false, true] {
            let mut body = chat("echo", stream);
            body[field] = steering_value(field);
            let response = post(&g, &key, &body).await;
            assert_eq!(response.status(), 400, "{field}");
            let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
            let e: Value = response.json().await.unwrap();
            assert_eq!(e["error"]["code"], "unsupported_parameter", "{field}: {e}");
            assert_eq!(e["error"]["request_id"], request_id.as_str());
            assert!(e["error"]["message"].as_str().unwrap().contains(&format!("`{field}`")), "{field}: {e}");
        }
    }
    // Inside documented fields: a server-side tool, audio output, a URL into the operator's
    // network for the upstream to fetch.
    for (field, value, named) in [
        ("tools", json!([{"type": "web_search_20250305", "name": "web_search"}]), "`tools[0].type`"),
        ("modalities", json!(["text", "audio"]), "`modalities`"),
        (
            "messages",
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://prometheus:9090/"}}]}]),
            "`messages[0].content`",
        ),
    ] {
        let mut body = chat("echo", false);
        body[field] = value;
        let response = post(&g, &key, &body).await;
        assert_eq!(response.status(), 400, "{field}");
        let e: Value = response.json().await.unwrap();
        assert_eq!(e["error"]["code"], "unsupported_parameter", "{field}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(named), "{field}: {e}");
        assert!(e["error"]["request_id"].is_string(), "{e}");
    }
    assert!(g.upstream.requests().is_empty(), "a refused call sends nothing upstream");
    let balance = g.app.get_json("/api/billing/balance", &key).await;
    assert_eq!(dec(balance["held_usd"].as_str().unwrap()), 0.0, "a refused call holds nothing");

    // The documented parameters pass unchanged; a steering field set to null is dropped.
    let allowed = json!({"temperature": 0.25, "top_p": 0.5, "user": "end-user-7", "seed": 42, "stop": ["\n\n"],
        "presence_penalty": 0.1, "response_format": {"type": "text"}, "max_completion_tokens": 100});
    let mut body = chat("echo", false);
    for (k, v) in allowed.as_object().unwrap() {
        body[k] = v.clone();
    }
    body["metadata"] = Value::Null;
    assert_eq!(post(&g, &key, &body).await.status(), 200);
    let sent = g.upstream.requests();
    assert_eq!(sent.len(), 1);
    for (k, v) in allowed.as_object().unwrap() {
        assert_eq!(&sent[0][k], v, "{k} reaches the upstream unchanged");
    }
    let forwarded = privaterouter_api::llm::request_fields::CHAT_COMPLETIONS.forwarded;
    for k in sent[0].as_object().unwrap().keys() {
        assert!(forwarded.contains(&k.as_str()), "{k} reached the upstream");
    }
    assert!(sent[0].get("metadata").is_none());

    let rows = privaterouter_tests::eventually("the call is settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g, user_id).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1, "only the call that was served is billed");
}

#[tokio::test]
async fn a_model_that_writes_the_terminator_as_text_is_streamed_to_its_end_and_billed_as_reported() {
    let g = spawn_gateway().await;
    let (user_id, key) = g.app.funded_user("1.00").await;
    let events = read_sse(post(&g, &key, &chat("donetext", true)).await).await;
    // The content chunks, the usage chunk, [DONE].
    assert_eq!(events.len(), DONE_TEXT.len() + 2, "{events:?}");
    assert_eq!(streamed_text(&events), DONE_TEXT.concat());
    let usage: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(usage["usage"]["cost_usd"], CALL_COST);
    assert_eq!(events.last().unwrap().1, "[DONE]");

    let rows = privaterouter_tests::eventually("the stream is settled", Duration::from_secs(10), || async {
        let rows = usage_rows(&g, user_id).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!((dec(&rows[0].0), rows[0].1, rows[0].2, rows[0].3), (dec(CALL_COST), 12, 34, false), "not estimated");
}
