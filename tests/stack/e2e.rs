//! End to end through real Prometheus: the stack with three API replicas, the upstream stand-in
//! and two GPU nodes (the real agent over the stand-in NVML), a workload sent through nginx over
//! TLS (spread over the replicas), then
//! Prometheus' HTTP API (through nginx, with its password) must hold the exact values the
//! workload implies, `PrivateRouterGpuNodeDown` must fire for the node whose agent was stopped,
//! and every PromQL expression of the Grafana dashboard must return data. Prometheus discovers
//! the three replicas by DNS; every dashboard and recording-rule series is aggregated across
//! them (no `instance` label), so each returns what it would with one replica.
//!
//! TEST-ONLY configuration (in a copy of `prometheus/`, never in the repository): scrape and
//! rule evaluation every 1 s instead of 15 s, and `for: 3s` instead of `for: 2m` on
//! PrivateRouterGpuNodeDown, so the test takes seconds instead of minutes. The API polls its
//! GPU nodes every second (`PR_GPU_POLL_INTERVAL_SECS=1`, default 15). Everything else is the
//! committed kit.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use privaterouter_hardening::net::{Request, Response};
use privaterouter_tests::{Probe, random_hex, settle, upstream};
use serde_json::{Value, json};
use testcontainers::{ContainerAsync, GenericImage, runners::AsyncRunner};

use crate::{
    harness::{Kit, Stack, repo_root},
    standins,
};

/// One stand-in call: 12 input tokens at 1.5 $/Mtok + 34 output tokens at 6 $/Mtok.
const CALL_COST: f64 = 0.000222;
const AGENT_TOKEN_ENV: &str = "PR_GPU_AGENT_TOKEN_E2E";
const WAIT: Duration = Duration::from_secs(60);
const REPLICAS: usize = 3;

struct E2e {
    stack: Stack,
    _upstream: ContainerAsync<GenericImage>,
    gpu_a: ContainerAsync<GenericImage>,
    gpu_b: ContainerAsync<GenericImage>,
}

impl E2e {
    async fn start() -> Self {
        let mut kit = Kit::new();
        kit.edit_prometheus(
            "prometheus.yml",
            "  scrape_interval: 15s\n  scrape_timeout: 10s\n  evaluation_interval: 15s\n",
            "  # TEST-ONLY (tests/stack/e2e.rs): 1 s instead of 15 s.\n  \
             scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        )
        .edit_prometheus(
            "rules/alerts.yml",
            "expr: max without (instance) (pr_gpu_node_up) == 0\n        for: 2m\n",
            "expr: max without (instance) (pr_gpu_node_up) == 0\n        for: 3s # TEST-ONLY (tests/stack/e2e.rs): 2m in the kit\n",
        );
        let catalog = kit.dir.path().join("models.toml");
        let dead = format!("http://{}-upstream:9/v1", kit.name);
        std::fs::write(
            &catalog,
            upstream::catalog_toml_for(&standins::upstream_url(&kit), &dead, "PR_TEST_UPSTREAM_KEY"),
        )
        .unwrap();
        kit.models_file = Some(catalog);
        kit.api_replicas = REPLICAS;
        let agent_token = random_hex(16);
        kit.api_env = vec![
            ("PR_TEST_UPSTREAM_KEY".into(), upstream::UPSTREAM_KEY.into()),
            ("PR_GPU_POLL_INTERVAL_SECS".into(), "1".into()),
            ("PR_GPU_POLL_TIMEOUT_MS".into(), "800".into()),
            (AGENT_TOKEN_ENV.into(), agent_token.clone()),
        ];
        let nvml = standins::build_fake_nvml(kit.dir.path());

        // The stand-ins first: they create the stack's network, which the stack then joins.
        let (up, a, b) = tokio::join!(
            standins::upstream(&kit).start(),
            standins::gpu_agent(&kit, "gpu-a", &nvml, &agent_token).start(),
            standins::gpu_agent(&kit, "gpu-b", &nvml, &agent_token).start(),
        );
        let up = up.expect("the upstream stand-in starts (privaterouter/base:bookworm)");
        let gpu_a = a.expect("GPU agent gpu-a starts");
        let gpu_b = b.expect("GPU agent gpu-b starts");
        let stack = Stack::start(kit).await;
        Self { stack, _upstream: up, gpu_a, gpu_b }
    }

    async fn logs(&self) -> String {
        let mut out = self.stack.logs().await;
        out.push_str(&standins::tail("gpu-a", &self.gpu_a).await);
        out.push_str(&standins::tail("gpu-b", &self.gpu_b).await);
        out
    }

    /// `eventually`, within `WAIT`, with every container's last lines in the failure.
    async fn eventually<P, F, Fut>(&self, what: &str, probe: F) -> P::Value
    where
        P: Probe,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = P>,
    {
        match settle(WAIT, probe).await {
            Ok(value) => value,
            Err(last) => panic!("not within {WAIT:?}: {what}\n(last: {last})\n{}", self.logs().await),
        }
    }

    async fn api_cli(&self, args: &[&str]) -> Value {
        self.stack.api_cli(args).await
    }

    async fn api(&self, req: Request) -> Response {
        let what = format!("{} {}", req.method, req.path);
        self.stack.https("api", req).await.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// An instant query through nginx; the `data.result` vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let req = Request::get(format!("/api/v1/query?query={}", urlencode(promql)))
            .basic_auth("prometheus", &self.stack.prometheus_password);
        let r = self.stack.https("prometheus", req).await.unwrap_or_else(|e| panic!("{promql}: {e}"));
        assert_eq!(r.status, 200, "{promql}: {}", r.text());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        // An instant query's result is always a vector: a missing one is a failure, not "no data".
        body["data"]["result"].as_array().cloned().unwrap_or_else(|| panic!("{promql}: no result vector: {body}"))
    }

    /// The value of a query that returns one series, `None` when it returns none.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        assert!(result.len() <= 1, "{promql} returned several series: {result:?}");
        result.first().map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// Waits (bounded) until every query has its expected value; then asserts them all at once,
    /// so a failure shows every difference.
    async fn expect_values(&self, expected: &[(&str, f64)]) {
        self.eventually("Prometheus holds the expected values", || async {
            let mut diff = Vec::new();
            for (q, want) in expected {
                let got = self.value(q).await;
                if !got.is_some_and(|v| (v - want).abs() < 1e-12) {
                    diff.push(format!("  {q}\n    expected {want}, Prometheus has {got:?}"));
                }
            }
            if diff.is_empty() { Ok(()) } else { Err(diff.join("\n")) }
        })
        .await
    }

    /// Prometheus' alerts named `name`, as (state, labels.name).
    async fn alerts(&self, name: &str) -> Vec<(String, String)> {
        let req = Request::get("/api/v1/alerts").basic_auth("prometheus", &self.stack.prometheus_password);
        let r = self.stack.https("prometheus", req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        body["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| (a["state"].as_str().unwrap().to_owned(), a["labels"]["name"].as_str().unwrap_or("").to_owned()))
            .collect()
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn bearer(req: Request, key: &str) -> Request {
    req.header("Authorization", format!("Bearer {key}"))
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
}

/// Every PromQL `expr` anywhere in the committed dashboards (panel targets, rows, annotations),
/// with Grafana's interval variables replaced as Grafana would (at the test's 1 s scrape). The
/// Overview keeps the spec's 12 panels; other dashboards add to it.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child.as_str()) {
                        ("expr", Some(e)) => out.push(
                            e.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m"),
                        ),
                        _ => walk(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let dir = repo_root().join("grafana/dashboards");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    let mut out = Vec::new();
    for path in &paths {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        if path.ends_with("privaterouter-overview.json") {
            assert_eq!(dashboard["panels"].as_array().unwrap().len(), 12, "the spec's Overview has 12 panels");
        }
        walk(&dashboard, &mut out);
    }
    assert!(paths.len() >= 2 && out.len() >= 16, "every dashboard was read: {paths:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_metrics_gpu_alert_and_dashboard_through_real_prometheus() {
    let started = Instant::now();
    let e = E2e::start().await;

    // Prometheus found every replica through DNS and scrapes each with the token.
    let up = e.query(r#"up{job="privaterouter-api"} == 1"#).await;
    let instances: BTreeSet<&str> = up.iter().filter_map(|s| s["metric"]["instance"].as_str()).collect();
    assert_eq!(instances.len(), REPLICAS, "API targets up: {up:?}");

    // Accounts through the CLI in the API container, credit through the admin API.
    let admin = e.api_cli(&["admin", "create-user", "--email", "admin@e2e.test", "--admin"]).await;
    let admin_key = admin["api_key"].as_str().unwrap().to_owned();
    let user = e.api_cli(&["admin", "create-user", "--email", "user@e2e.test"]).await;
    let (user_id, key) = (user["user_id"].as_str().unwrap(), user["api_key"].as_str().unwrap().to_owned());
    let credit = json!({"kind": "topup", "amount_usd": "5", "reason": "e2e"});
    let r = e
        .api(
            bearer(Request::post_json(format!("/api/admin/users/{user_id}/credits"), &credit), &admin_key)
                .header("Idempotency-Key", random_hex(8)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // GPU nodes of pool "gpu" (the catalog's `pooled` model), registered through the admin API;
    // the agents' token is in the API's environment. Their inference server is the stand-in.
    for node in ["gpu-a", "gpu-b"] {
        let body = json!({
            "name": node,
            "agent_url": standins::agent_url(&e.stack.kit, node),
            "inference_url": standins::upstream_url(&e.stack.kit),
            "pool": "gpu",
            "agent_token_env": AGENT_TOKEN_ENV,
        });
        let r = e.api(bearer(Request::post_json("/api/admin/gpu-nodes", &body), &admin_key)).await;
        assert_eq!(r.status, 201, "registering {node}: {}", r.text());
    }
    // The poller has reached both agents (the registry's own view, before Prometheus').
    let nodes = e
        .eventually("the GPU nodes come up", || async {
            let r = e.api(bearer(Request::get("/api/admin/gpu-nodes"), &admin_key)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let nodes = body["data"].as_array().cloned().unwrap();
            if nodes.len() == 2 && nodes.iter().all(|n| n["health"]["up"] == true) { Ok(nodes) } else { Err(body) }
        })
        .await;
    assert!(nodes.iter().all(|n| n["health"]["gpus"] == 2), "the fake NVML has two GPUs: {nodes:?}");

    // Every replica polls the nodes itself and routes only to those it has seen healthy: wait
    // until each replica's own view (its gauges, through Prometheus) has both nodes up.
    let both_up_everywhere = (2 * REPLICAS) as f64;
    e.expect_values(&[(r#"count(pr_gpu_node_up{job="privaterouter-api"} == 1)"#, both_up_everywhere)]).await;

    // The workload, in two halves a few scrapes apart so rates over it are not zero.
    for half in 0..2 {
        for _ in 0..2 {
            let r = e.api(bearer(Request::get("/v1/models"), &key)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let r = e.api(Request::get(format!("/no/such/route/{}", random_hex(2)))).await;
            assert_eq!(r.status, 404, "{}", r.text());
            let r = e.api(bearer(Request::post_json("/v1/chat/completions", &chat("fail500")), &key)).await;
            assert_eq!(r.status, 502, "a failing upstream is a 502 of ours: {}", r.text());
        }
        if half == 0 {
            let r = e.api(bearer(Request::post_json("/v1/chat/completions", &chat("echo")), &key)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["choices"][0]["message"]["content"], "echo: hi there");
            assert_eq!(body["usage"]["cost_usd"], "0.000222");
            // Routed to a healthy node of pool "gpu", whose inference server is the stand-in.
            let r = e.api(bearer(Request::post_json("/v1/chat/completions", &chat("pooled")), &key)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let r = e.api(bearer(Request::post_json("/v1/chat/completions", &chat("not-in-catalog")), &key)).await;
            assert_eq!(r.status, 404, "{}", r.text());
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    let api = r#"job="privaterouter-api""#;
    let http = |route: &str, method: &str, status: &str| {
        format!(r#"sum(pr_http_requests_total{{{api},route="{route}",method="{method}",status="{status}"}})"#)
    };
    e.expect_values(&[
        (&http("/v1/models", "GET", "200"), 4.0),
        (&http("unmatched", "GET", "404"), 4.0),
        (&http("/v1/chat/completions", "POST", "200"), 2.0),
        (&http("/v1/chat/completions", "POST", "404"), 1.0),
        (&http("/v1/chat/completions", "POST", "502"), 4.0),
        (&http("/api/admin/users/{id}/credits", "POST", "201"), 1.0),
        (&http("/api/admin/gpu-nodes", "POST", "201"), 2.0),
        // No other 5xx anywhere: the readiness polls and the rest were all answered.
        (&format!(r#"sum(pr_http_requests_total{{{api},status=~"5.."}})"#), 4.0),
        (
            &format!(r#"sum(pr_llm_calls_total{{{api},model="echo",endpoint="chat_completions",status="success"}})"#),
            1.0,
        ),
        (
            &format!(
                r#"sum(pr_llm_calls_total{{{api},model="fail500",endpoint="chat_completions",status="upstream_error"}})"#
            ),
            4.0,
        ),
        (&format!(r#"sum(pr_llm_tokens_total{{{api},model="echo",direction="input"}})"#), 12.0),
        (&format!(r#"sum(pr_llm_tokens_total{{{api},model="echo",direction="output"}})"#), 34.0),
        (&format!(r#"sum(pr_llm_cost_usd_total{{{api},model="echo"}})"#), CALL_COST),
        (
            &format!(r#"sum(pr_llm_calls_total{{{api},model="pooled",endpoint="chat_completions",status="success"}})"#),
            1.0,
        ),
        (&format!(r#"sum(pr_llm_cost_usd_total{{{api},model="pooled"}})"#), CALL_COST),
        (&format!(r#"sum(pr_credit_transactions_total{{{api},kind="topup"}})"#), 1.0),
        (&format!(r#"sum(pr_credit_transactions_total{{{api},kind="usage"}})"#), 2.0),
        // Both nodes polled through their agents: up, and the fake NVML's mean utilization
        // (42 % on GPU 0; GPU 1 reports none and is left out of the mean).
        (&format!(r#"min(pr_gpu_node_up{{{api},name="gpu-a"}})"#), 1.0),
        (&format!(r#"min(pr_gpu_node_up{{{api},name="gpu-b"}})"#), 1.0),
        (&format!(r#"max(pr_gpu_node_utilization_pct{{{api},name="gpu-a"}})"#), 42.0),
        (&format!(r#"max(pr_gpu_node_utilization_pct{{{api},name="gpu-b"}})"#), 42.0),
    ])
    .await;
    // The model label is the catalog's name, and only for catalog models: every catalog model
    // has its zero series from the start, the ones called have more.
    let e = &e;
    let models = |promql: &'static str| async move {
        e.query(promql).await.iter().map(|s| s["metric"]["model"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>()
    };
    let called = models(r#"count by (model) (pr_llm_calls_total{job="privaterouter-api"} > 0)"#).await;
    assert_eq!(called, BTreeSet::from(["echo", "fail500", "pooled"].map(String::from)));
    let catalog = upstream::catalog_toml_for("http://unused", "http://unused", "PR_TEST_UPSTREAM_KEY");
    let labelled = models(r#"count by (model) (pr_llm_calls_total{job="privaterouter-api"})"#).await;
    for model in &labelled {
        assert!(catalog.contains(&format!("name = \"{model}\"")), "{model} is not a catalog model");
    }
    assert!(!labelled.contains("not-in-catalog"));
    assert!(
        e.alerts("PrivateRouterGpuNodeDown").await.iter().all(|(state, _)| state != "firing"),
        "no GPU node is down yet"
    );
    eprintln!("workload metrics verified after {:.1} s", started.elapsed().as_secs_f64());

    // gpu-b goes down: its agent container stops. The poller sees it, the gauge drops to 0,
    // and the alert fires for gpu-b only.
    e.gpu_b.stop().await.expect("stopping gpu-b's agent");
    e.expect_values(&[
        (&format!(r#"max(pr_gpu_node_up{{{api},name="gpu-b"}})"#), 0.0),
        (&format!(r#"min(pr_gpu_node_up{{{api},name="gpu-a"}})"#), 1.0),
        (&format!(r#"count(max by (name) (pr_gpu_node_utilization_pct{{{api}}}))"#), 1.0),
    ])
    .await;
    let alerts = e
        .eventually("PrivateRouterGpuNodeDown fires for gpu-b", || async {
            let alerts = e.alerts("PrivateRouterGpuNodeDown").await;
            let firing = alerts.contains(&("firing".to_owned(), "gpu-b".to_owned()));
            if firing { Ok(alerts) } else { Err(format!("{alerts:?}")) }
        })
        .await;
    assert!(alerts.iter().all(|(_, node)| node == "gpu-b"), "only gpu-b is down: {alerts:?}");
    assert!(e.alerts("PrivateRouterNoHealthyGpuNode").await.is_empty(), "gpu-a is still up");
    // Prometheus handed the alert to Alertmanager (the kit's alerting wiring).
    let (code, out) = e.stack.in_prometheus("curl -fsS http://alertmanager:9093/api/v2/alerts").await;
    assert_eq!(code, 0, "{out}");
    let am: Value = serde_json::from_str(&out).unwrap_or_else(|err| panic!("{err}: {out}"));
    assert!(
        am.as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "PrivateRouterGpuNodeDown" && a["labels"]["name"] == "gpu-b"),
        "Alertmanager has no PrivateRouterGpuNodeDown for gpu-b: {out}"
    );
    eprintln!("GPU node down alert verified after {:.1} s", started.elapsed().as_secs_f64());

    // Every panel of the dashboard has data.
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "the dashboard's queries were not found: {exprs:?}");
    e.eventually("every dashboard query has data", || async {
        let mut empty = Vec::new();
        for q in &exprs {
            if e.query(q).await.is_empty() {
                empty.push(q.as_str());
            }
        }
        if empty.is_empty() { Ok(()) } else { Err(format!("without data:\n  {}", empty.join("\n  "))) }
    })
    .await;
    // One series per label set whatever the number of replicas: no dashboard query and no
    // recording rule keeps `instance`.
    for q in &exprs {
        let result = e.query(q).await;
        let with_instance: Vec<&Value> = result.iter().filter(|s| s["metric"].get("instance").is_some()).collect();
        assert!(with_instance.is_empty(), "{q} keeps the instance label: {with_instance:?}");
    }
    let recorded = e.query(r#"{__name__=~".+:.+"}"#).await;
    assert!(recorded.len() >= 10, "recording rules have not produced series: {recorded:?}");
    let with_instance: Vec<&Value> = recorded.iter().filter(|s| s["metric"].get("instance").is_some()).collect();
    assert!(with_instance.is_empty(), "recorded series with an instance label: {with_instance:?}");
    eprintln!("{} dashboard queries return data; total {:.1} s", exprs.len(), started.elapsed().as_secs_f64());
}
