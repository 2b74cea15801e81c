use privaterouter_tests::{client::expect_json, spawn_app, spawn_app_with, spawn_gateway};
use serde_json::json;

const REQS: &str = "pr_http_requests_total";
const DURATION: &str = "pr_http_request_duration_seconds";
const IN_FLIGHT: &str = "pr_http_requests_in_flight";
const EXCEPTIONS: &str = "pr_http_exceptions_total";

#[tokio::test]
async fn every_request_is_counted_with_exact_labels() {
    let app = spawn_app_with(|c| {
        c.request_timeout_secs = 1;
        c.max_body_bytes = 1024;
    })
    .await;

    for _ in 0..3 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
    assert_eq!(app.get("/no/such/path-123").await.status(), 404);
    assert_eq!(app.client.post(app.url("/healthz")).send().await.unwrap().status(), 405);
    assert_eq!(app.get("/__test/unauthorized").await.status(), 401);
    let big = app
        .client
        .post(app.url("/__test/echo/7"))
        .header("content-type", "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(app.get("/__test/panic").await.status(), 500);
    assert_eq!(app.get("/__test/db-error").await.status(), 500);
    assert_eq!(app.get("/__test/sleep?ms=3000").await.status(), 504);
    let custom = reqwest::Method::from_bytes(b"BREW").unwrap();
    assert_eq!(app.client.request(custom, app.url("/healthz")).send().await.unwrap().status(), 405);

    let s = app
        .wait_for_metrics("ten requests counted", |s| s.series(REQS).iter().map(|x| x.value).sum::<f64>() >= 10.0)
        .await;

    let expect = [
        (("GET", "/healthz", "200"), 3.0),
        (("GET", "unmatched", "404"), 1.0),
        (("POST", "/healthz", "405"), 1.0),
        (("OTHER", "/healthz", "405"), 1.0),
        (("GET", "/__test/unauthorized", "401"), 1.0),
        (("POST", "/__test/echo/{id}", "413"), 1.0),
        (("GET", "/__test/panic", "500"), 1.0),
        (("GET", "/__test/db-error", "500"), 1.0),
        (("GET", "/__test/sleep", "504"), 1.0),
        // The zero series every process starts with (see `a_fresh_scrape_shows_every_spec_family`).
        (("POST", "/v1/chat/completions", "200"), 0.0),
    ];
    for ((method, route, status), n) in expect {
        let labels = [("method", method), ("route", route), ("status", status)];
        assert_eq!(s.expect(REQS, &labels), n, "{REQS} {labels:?}");
        assert_eq!(s.expect(&format!("{DURATION}_count"), &labels), n, "{DURATION}_count {labels:?}");
        let inf = [("method", method), ("route", route), ("status", status), ("le", "+Inf")];
        assert_eq!(s.expect(&format!("{DURATION}_bucket"), &inf), n, "+Inf bucket {labels:?}");
    }
    assert_eq!(s.series(REQS).len(), expect.len(), "no other series: {:?}", s.series(REQS));

    // A real histogram with API-sized buckets from 1 ms to 60 s, not a summary.
    assert_eq!(s.types[DURATION], "histogram");
    for le in ["0.001", "0.005", "0.1", "1", "10", "60"] {
        let labels = [("method", "GET"), ("route", "/healthz"), ("status", "200"), ("le", le)];
        assert!(s.value(&format!("{DURATION}_bucket"), &labels).is_some(), "bucket le={le}");
    }
    let slow = [("method", "GET"), ("route", "/__test/sleep"), ("status", "504"), ("le", "0.5")];
    assert_eq!(s.expect(&format!("{DURATION}_bucket"), &slow), 0.0, "the 1 s timeout is not under 0.5 s");
    let slow_sum =
        s.expect(&format!("{DURATION}_sum"), &[("method", "GET"), ("route", "/__test/sleep"), ("status", "504")]);
    assert!((0.9..3.0).contains(&slow_sum), "timeout duration {slow_sum}");

    let exceptions = [
        (("GET", "/__test/panic", "panic"), 1.0),
        (("GET", "/__test/db-error", "database"), 1.0),
        (("GET", "/__test/sleep", "timeout"), 1.0),
    ];
    for ((method, route, kind), n) in exceptions {
        let labels = [("method", method), ("route", route), ("exception_type", kind)];
        assert_eq!(s.expect(EXCEPTIONS, &labels), n, "{EXCEPTIONS} {labels:?}");
    }
    let counted: Vec<_> = s.series(EXCEPTIONS).into_iter().filter(|x| x.value > 0.0).collect();
    assert_eq!(counted.len(), exceptions.len(), "4xx are not exceptions: {counted:?}");

    for name in [REQS, DURATION, IN_FLIGHT, EXCEPTIONS] {
        assert!(s.help.get(name).is_some_and(|h| h.len() > 20), "HELP for {name}");
    }
    for series in s.series(IN_FLIGHT) {
        assert_eq!(series.value, 0.0, "nothing in flight at rest: {series:?}");
    }
}

#[tokio::test]
async fn user_and_key_ids_are_never_labels() {
    let g = spawn_gateway().await;
    let app = &g.app;
    let (user_id, first) = app.funded_user("1").await;
    // Authenticated traffic on every kind of route: keys, billing, a completion, an embedding, a
    // conversation message, and a refusal (which names the user in its log line).
    let (key_id, key) = app.api.new_key(&first).await;
    assert_eq!(app.api.keys(&key).await.status(), 200);
    app.api.balance(&key).await;
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(expect_json(app.api.chat(&key, &chat).await, 200).await["model"], "echo");
    let embed = json!({"model": "embed", "input": "hi"});
    assert_eq!(expect_json(app.api.embeddings(&key, &embed).await, 200).await["model"], "embed");
    let created = expect_json(app.api.create_conversation(&key, &json!({"model": "echo"})).await, 201).await;
    let id = created["id"].as_str().unwrap();
    expect_json(app.api.send_message(&key, id, &json!({"content": "hi"})).await, 201).await;
    assert_eq!(app.api.chat(&key, &json!({"model": "echo", "messages": []})).await.status(), 400);

    // Each of them is in the metrics (and in the access log, with the user id) before we look.
    let s = app
        .wait_for_metrics("the calls and their billing counted", |s| {
            s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(3.0)
                && s.value(REQS, &[("method", "POST"), ("route", "/api/keys"), ("status", "201")]) == Some(1.0)
                && s.value(REQS, &[("method", "POST"), ("route", "/v1/chat/completions"), ("status", "400")])
                    == Some(1.0)
        })
        .await;
    // The admin's top-up, then the user's eight requests.
    let lines = app.access_lines(9).await;
    let logged = lines.iter().filter(|l| l["user_id"] == user_id.to_string()).count();
    assert_eq!(logged, 8, "the requests above were authenticated as the user: {lines:?}");

    let ids = [user_id.to_string(), key_id.clone(), key.clone(), key[..9].to_owned(), first.clone()];
    let mut checked = 0;
    for sample in &s.samples {
        for (name, value) in &sample.labels {
            assert!(
                !["user_id", "user", "key", "key_id", "api_key", "email"].contains(&name.as_str()),
                "{name} is a label: {sample:?}"
            );
            assert!(!ids.iter().any(|id| value.contains(id.as_str())), "an id in label {name}: {sample:?}");
            checked += 1;
        }
    }
    assert!(checked > 100, "the labels of every series were read: {checked}");
    let text = app.metrics_text().await;
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{id} appears in the exposition");
    }
}

#[tokio::test]
async fn in_flight_gauge_follows_open_requests() {
    let app = spawn_app().await;
    let labels = [("method", "GET"), ("route", "/__test/sleep")];
    let slow = {
        let client = app.client.clone();
        let url = app.url("/__test/sleep?ms=1500");
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    let second = {
        let client = app.client.clone();
        let url = app.url("/__test/sleep?ms=1500");
        tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
    };
    app.wait_for_metrics("two in flight", |s| s.value(IN_FLIGHT, &labels) == Some(2.0)).await;
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    app.wait_for_metrics("none in flight", |s| s.value(IN_FLIGHT, &labels) == Some(0.0)).await;
}

#[tokio::test]
async fn random_paths_and_methods_do_not_grow_label_sets() {
    let app = spawn_app().await;
    app.get("/warm/up").await;
    app.client.request(reqwest::Method::from_bytes(b"WARMUP").unwrap(), app.url("/warm/up")).send().await.unwrap();
    let before = app
        .wait_for_metrics("warm-up counted", |s| {
            s.value(REQS, &[("method", "OTHER"), ("route", "unmatched"), ("status", "404")]) == Some(1.0)
        })
        .await;
    let series_before = before.samples.len();

    let mut tasks = Vec::new();
    for i in 0..1000 {
        let client = app.client.clone();
        let url =
            app.url(&format!("/{}/{}?q={}", privaterouter_tests::random_hex(8), i, privaterouter_tests::random_hex(4)));
        // Every tenth request uses a random extension method: it must land in `OTHER`.
        let method = if i % 10 == 0 {
            reqwest::Method::from_bytes(format!("X{}", privaterouter_tests::random_hex(3).to_uppercase()).as_bytes())
                .unwrap()
        } else {
            reqwest::Method::GET
        };
        tasks.push(tokio::spawn(async move { client.request(method, url).send().await.unwrap().status() }));
        if tasks.len() == 50 {
            for t in tasks.drain(..) {
                assert_eq!(t.await.unwrap(), 404);
            }
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 404);
    }
    let after = app
        .wait_for_metrics("all 1,000 counted", |s| {
            s.value(REQS, &[("method", "GET"), ("route", "unmatched"), ("status", "404")]) == Some(901.0)
                && s.value(REQS, &[("method", "OTHER"), ("route", "unmatched"), ("status", "404")]) == Some(101.0)
        })
        .await;
    assert_eq!(after.samples.len(), series_before, "series count unchanged by 1,000 random paths");
    for sample in &after.samples {
        if let Some(route) = sample.labels.get("route") {
            assert!(route == "unmatched" || route.starts_with('/'), "unexpected route label {route}");
            assert!(!route.contains("warm"), "raw path leaked into a label: {route}");
        }
    }
}

/// The metric families the spec lists, all on the first scrape of a fresh process: until then
/// dashboards and `rate()` would show "no data" instead of 0.
const SPEC_FAMILIES: [&str; 11] = [
    REQS,
    DURATION,
    IN_FLIGHT,
    EXCEPTIONS,
    "pr_llm_calls_total",
    "pr_llm_tokens_total",
    "pr_llm_cost_usd_total",
    "pr_chat_conversations_created_total",
    "pr_credit_transactions_total",
    "pr_gpu_node_up",
    "pr_gpu_node_utilization_pct",
];

#[tokio::test]
async fn a_fresh_scrape_shows_every_spec_family() {
    let g = spawn_gateway().await;
    // Scraped before any request has reached the app.
    let s = g.app.samples().await;

    for name in SPEC_FAMILIES {
        assert!(s.types.contains_key(name), "TYPE line for {name}");
        assert!(s.help.get(name).is_some_and(|h| h.len() > 20), "HELP line for {name}");
    }

    // HTTP families: zero series on the gateway route only (the series its first request increments).
    let gateway = [("method", "POST"), ("route", "/v1/chat/completions")];
    let ok = [gateway[0], gateway[1], ("status", "200")];
    assert_eq!(s.value(REQS, &ok), Some(0.0));
    assert_eq!(s.value(&format!("{DURATION}_count"), &ok), Some(0.0));
    assert_eq!(s.value(&format!("{DURATION}_bucket"), &[ok[0], ok[1], ok[2], ("le", "+Inf")]), Some(0.0));
    assert_eq!(s.value(IN_FLIGHT, &gateway), Some(0.0));
    for name in [REQS, IN_FLIGHT] {
        assert_eq!(s.series(name).len(), 1, "one zero series of {name}: {:?}", s.series(name));
    }
    // One per exception type, not their cross product with every route and method.
    let types = privaterouter_api::telemetry::metrics::EXCEPTION_TYPES;
    for kind in types {
        assert_eq!(s.value(EXCEPTIONS, &[gateway[0], gateway[1], ("exception_type", kind)]), Some(0.0), "{kind}");
    }
    assert_eq!(s.series(EXCEPTIONS).len(), types.len(), "{:?}", s.series(EXCEPTIONS));

    // LLM families: per catalog model, its successful call on the first endpoint it serves (one
    // that can occur), both token directions, its cost.
    let catalog = privaterouter_api::llm::catalog::Catalog::load(&g.catalog_path()).unwrap();
    let models: Vec<(&str, &str)> = catalog.models().iter().map(|m| (m.name, m.endpoints[0].as_str())).collect();
    assert!(models.len() > 10 && models.contains(&("echo", "chat_completions")));
    assert!(models.contains(&("embed", "embeddings")) && models.contains(&("claude", "messages")));
    for &(model, endpoint) in &models {
        let call = [("model", model), ("endpoint", endpoint), ("status", "success")];
        assert_eq!(s.value("pr_llm_calls_total", &call), Some(0.0), "{model}");
        for direction in ["input", "output"] {
            let labels = [("model", model), ("endpoint", endpoint), ("direction", direction)];
            assert_eq!(s.value("pr_llm_tokens_total", &labels), Some(0.0), "{model} {direction}");
        }
        let cost = [("model", model), ("endpoint", endpoint)];
        assert_eq!(s.value("pr_llm_cost_usd_total", &cost), Some(0.0), "{model}");
    }
    assert_eq!(s.series("pr_llm_calls_total").len(), models.len());
    assert_eq!(s.series("pr_llm_tokens_total").len(), 2 * models.len());
    assert_eq!(s.series("pr_llm_cost_usd_total").len(), models.len());
    assert_eq!(s.types["pr_llm_cost_usd_total"], "counter");

    assert_eq!(s.value("pr_chat_conversations_created_total", &[]), Some(0.0));
    for kind in ["topup", "usage", "admin_adjust", "refund"] {
        assert_eq!(s.value("pr_credit_transactions_total", &[("kind", kind)]), Some(0.0), "{kind}");
    }
    assert_eq!(s.series("pr_credit_transactions_total").len(), 4);

    // No GPU node is registered: the families are declared, with no series (an invented node at 0
    // would fire the "all GPU nodes down" alert).
    assert_eq!(s.types["pr_gpu_node_up"], "gauge");
    assert_eq!(s.types["pr_gpu_node_utilization_pct"], "gauge");
    assert!(s.series("pr_gpu_node_up").is_empty() && s.series("pr_gpu_node_utilization_pct").is_empty());
}
