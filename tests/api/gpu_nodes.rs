use std::time::{Duration, Instant};

use privaterouter_tests::{
    TestApp,
    agent::{Agent, Behaviour},
    client::{expect_json, status_json},
    eventually,
    prom::Samples,
    spawn_app_with, spawn_gateway_with, upstream,
};
use serde_json::{Value, json};

async fn add_node(app: &TestApp, admin: &str, name: &str, agent: &str, inference: &str, pool: &str) -> String {
    let body = json!({"name": name, "agent_url": agent, "inference_url": inference, "pool": pool});
    let created = expect_json(app.api.add_gpu_node(admin, &body).await, 201).await;
    created["id"].as_str().unwrap().to_owned()
}

fn up(s: &Samples, id: &str, name: &str) -> Option<f64> {
    s.value("pr_gpu_node_up", &[("node_id", id), ("name", name)])
}

fn util(s: &Samples, id: &str, name: &str) -> Option<f64> {
    s.value("pr_gpu_node_utilization_pct", &[("node_id", id), ("name", name)])
}

#[tokio::test]
async fn the_poller_follows_each_node_and_a_slow_node_delays_no_one() {
    let app = spawn_app_with(|c| {
        c.gpu_poll_interval_secs = 1;
        c.gpu_poll_timeout_ms = 400;
    })
    .await;
    let (_, admin) = app.user(true).await;
    let mut agent_a = Agent::start(Behaviour::Healthy(30.0)).await;
    let agent_b = Agent::start(Behaviour::Healthy(70.0)).await;
    let a = add_node(&app, &admin, "node-a", &agent_a.url(), "http://127.0.0.1:9/v1", "p").await;
    let b = add_node(&app, &admin, "node-b", &agent_b.url(), "http://127.0.0.1:9/v1", "p").await;

    let s =
        app.wait_for_metrics("both up", |s| up(s, &a, "node-a") == Some(1.0) && up(s, &b, "node-b") == Some(1.0)).await;
    assert_eq!(util(&s, &a, "node-a"), Some(30.0), "mean over the node's GPUs");
    assert_eq!(util(&s, &b, "node-b"), Some(70.0));
    assert_eq!(s.types["pr_gpu_node_up"], "gauge");
    assert!(s.help.contains_key("pr_gpu_node_utilization_pct"));

    // 500 from the agent: down, and no utilization is reported for it.
    agent_a.set(Behaviour::Failing);
    let s = app.wait_for_metrics("a down after 500", |s| up(s, &a, "node-a") == Some(0.0)).await;
    assert_eq!(util(&s, &a, "node-a"), None, "no figures for a node that is down");
    assert_eq!(up(&s, &b, "node-b"), Some(1.0));

    // Hanging past the timeout: down; the other node keeps being polled on schedule.
    agent_a.set(Behaviour::Hanging);
    agent_b.set(Behaviour::Healthy(10.0));
    let started = Instant::now();
    app.wait_for_metrics("b polled while a hangs", |s| util(s, &b, "node-b") == Some(10.0)).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "a hanging node delayed the others: {:?}",
        started.elapsed()
    );
    let shown = expect_json(app.api.gpu_node(&admin, &a).await, 200).await;
    assert_eq!(shown["health"]["up"], false);
    assert!(shown["health"]["last_error"].as_str().unwrap().contains("timed out"), "{shown}");

    // Refusing connections: down. Coming back: up again, by itself.
    agent_a.stop().await;
    app.wait_for_metrics("a refused", |s| up(s, &a, "node-a") == Some(0.0)).await;
    agent_a.set(Behaviour::Healthy(55.0));
    agent_a.restart().await;
    app.wait_for_metrics("a back", |s| up(s, &a, "node-a") == Some(1.0) && util(s, &a, "node-a") == Some(55.0)).await;

    // Disabled: its series leave; enabled: back. Deleted: gone for good.
    let disabled = app.api.patch_gpu_node(&admin, &b, &json!({"enabled": false})).await;
    assert_eq!(disabled.status(), 200);
    let text = app.metrics_text().await;
    assert!(!text.contains(&b), "a disabled node has no series");
    let deleted = app.api.delete_gpu_node(&admin, &a).await;
    assert_eq!(deleted.status(), 204);
    let text = app.metrics_text().await;
    assert!(!text.contains(&a), "a deleted node's series are gone at once");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = app.metrics_text().await;
    assert!(!text.contains(&a) && !text.contains(&b), "and stay gone after the next poll");
    let list = expect_json(app.api.gpu_nodes(&admin).await, 200).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_registry_is_admin_only_validated_and_never_returns_a_token() {
    // SAFETY: set before the app starts; nothing else in this test process reads it concurrently.
    unsafe { std::env::set_var("PR_GPU_AGENT_TOKEN_TEST", "agent-secret-token-123") };
    let app = spawn_app_with(|c| c.gpu_poll_interval_secs = 1).await;
    let (_, admin) = app.user(true).await;
    let (_, user) = app.user(false).await;
    let agent = Agent::start(Behaviour::Healthy(5.0)).await;
    let body = json!({"name": "n1", "agent_url": agent.url(), "inference_url": "http://127.0.0.1:9/v1", "agent_token_env": "PR_GPU_AGENT_TOKEN_TEST"});

    assert_eq!(app.api.add_gpu_node(&user, &body).await.status(), 403);
    assert_eq!(app.api.gpu_nodes(&user).await.status(), 403);

    let created = app.api.add_gpu_node(&admin, &body).await;
    assert_eq!(created.status(), 201);
    let text = created.text().await.unwrap();
    assert!(!text.contains("agent-secret-token-123"), "the token is never returned: {text}");
    assert_eq!(app.api.add_gpu_node(&admin, &body).await.status(), 409, "names are unique");

    for (bad, why) in [
        (json!({"name": "bad name!", "agent_url": agent.url(), "inference_url": "http://x/v1"}), "name"),
        (json!({"name": "n2", "agent_url": "ftp://x", "inference_url": "http://x/v1"}), "agent url"),
        (
            json!({"name": "n3", "agent_url": agent.url(), "inference_url": "http://x/v1", "agent_token_env": "PR_GPU_AGENT_TOKEN_NOT_SET_42"}),
            "token variable unset",
        ),
        (json!({"name": "n4", "agent_url": agent.url()}), "missing inference_url"),
    ] {
        assert_eq!(app.api.add_gpu_node(&admin, &bad).await.status(), 400, "{why}");
    }
    let list = app.api.gpu_nodes(&admin).await.text().await.unwrap();
    assert!(list.contains("\"n1\"") && !list.contains("agent-secret-token-123"), "{list}");
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT row_to_json(g)::text FROM gpu_nodes g").fetch_all(&app.pool).await.unwrap();
    assert_eq!(rows.len(), 1, "the one node created: {rows:?}");
    assert!(rows.iter().all(|(r,)| !r.contains("agent-secret-token-123")), "the token is not stored");
    app.wait_for_metrics("node with token polled up", |s| s.series("pr_gpu_node_up").iter().any(|x| x.value == 1.0))
        .await;
}

fn pooled() -> Value {
    json!({"model": "pooled", "messages": [{"role": "user", "content": "hi"}]})
}

async fn served_by(
    g: &privaterouter_tests::Gateway,
    key: &str,
    inference: &[&upstream::Upstream],
) -> (u16, Vec<usize>) {
    let before: Vec<usize> = inference.iter().map(|u| u.requests().len()).collect();
    let (status, body) = status_json(g.app.api.chat(key, &pooled()).await).await;
    if status == 200 {
        assert_eq!(body["model"], "pooled", "{body}");
    } else {
        assert!(body["error"]["code"].is_string(), "{status}: {body}");
    }
    let after: Vec<usize> = inference.iter().map(|u| u.requests().len()).collect();
    (status, after.iter().zip(before).map(|(a, b)| a - b).collect())
}

#[tokio::test]
async fn pools_route_to_healthy_nodes_least_utilized_first() {
    let g = spawn_gateway_with(|c| {
        c.gpu_poll_interval_secs = 1;
        c.gpu_poll_timeout_ms = 400;
    })
    .await;
    // Two inference servers (stand-ins) behind two agents, in pool "gpu".
    let inf_a = upstream::start().await;
    let inf_b = upstream::start().await;
    let agent_a = Agent::start(Behaviour::Healthy(80.0)).await;
    let agent_b = Agent::start(Behaviour::Healthy(20.0)).await;
    let (_, admin) = g.app.user(true).await;
    let (user_id, key) = g.app.user(false).await;
    g.app.topup(&admin, user_id, "1").await;
    let a = add_node(&g.app, &admin, "gpu-a", &agent_a.url(), &inf_a.base_url(), "gpu").await;
    let b = add_node(&g.app, &admin, "gpu-b", &agent_b.url(), &inf_b.base_url(), "gpu").await;
    g.app.wait_for_metrics("both up", |s| up(s, &a, "gpu-a") == Some(1.0) && up(s, &b, "gpu-b") == Some(1.0)).await;

    // Least utilized first.
    for _ in 0..4 {
        assert_eq!(served_by(&g, &key, &[&inf_a, &inf_b]).await, (200, vec![0, 1]));
    }
    // Ties alternate.
    agent_a.set(Behaviour::Healthy(50.0));
    agent_b.set(Behaviour::Healthy(50.0));
    g.app.wait_for_metrics("tie", |s| util(s, &a, "gpu-a") == Some(50.0) && util(s, &b, "gpu-b") == Some(50.0)).await;
    let mut counts = [0, 0];
    for _ in 0..6 {
        let (status, served) = served_by(&g, &key, &[&inf_a, &inf_b]).await;
        assert_eq!(status, 200);
        counts[0] += served[0];
        counts[1] += served[1];
    }
    assert_eq!(counts, [3, 3], "round-robin on ties");

    // b goes down: within one poll, calls skip it.
    agent_b.set(Behaviour::Failing);
    let went_down = Instant::now();
    g.app.wait_for_metrics("b down", |s| up(s, &b, "gpu-b") == Some(0.0)).await;
    assert!(went_down.elapsed() < Duration::from_millis(2500));
    for _ in 0..3 {
        assert_eq!(served_by(&g, &key, &[&inf_a, &inf_b]).await, (200, vec![1, 0]));
    }

    // Both down: 503 no_healthy_node, counted.
    agent_a.set(Behaviour::Failing);
    g.app.wait_for_metrics("a down", |s| up(s, &a, "gpu-a") == Some(0.0)).await;
    let refused = expect_json(g.app.api.chat(&key, &pooled()).await, 503).await;
    assert_eq!(refused["error"]["code"], "no_healthy_node");
    let s = g.app.samples().await;
    assert_eq!(
        s.expect(
            "pr_llm_calls_total",
            &[("model", "pooled"), ("endpoint", "chat_completions"), ("status", "no_healthy_node")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_node_that_fails_requests_is_marked_down_before_its_next_poll() {
    let g = spawn_gateway_with(|c| {
        // A long poll interval: only the failed request can take the node out of rotation.
        c.gpu_poll_interval_secs = 3600;
    })
    .await;
    let inf_ok = upstream::start().await;
    let agent_dead = Agent::start(Behaviour::Healthy(0.0)).await;
    let agent_ok = Agent::start(Behaviour::Healthy(90.0)).await;
    let (_, admin) = g.app.user(true).await;
    let (user_id, key) = g.app.user(false).await;
    g.app.topup(&admin, user_id, "1").await;
    // The least utilized node's inference server refuses connections.
    let dead_inference = format!("http://127.0.0.1:{}/v1", privaterouter_tests::free_port());
    let dead = add_node(&g.app, &admin, "dead", &agent_dead.url(), &dead_inference, "gpu").await;
    let ok = add_node(&g.app, &admin, "ok", &agent_ok.url(), &inf_ok.base_url(), "gpu").await;
    // Wait for the first (immediate) poll round to mark both up.
    g.app.wait_for_metrics("first poll", |s| up(s, &dead, "dead") == Some(1.0) && up(s, &ok, "ok") == Some(1.0)).await;

    let (status, _) = served_by(&g, &key, &[&inf_ok]).await;
    assert_eq!(status, 502, "the dead node was chosen (least utilized) and failed");
    let s = g.app.samples().await;
    assert_eq!(up(&s, &dead, "dead"), Some(0.0), "marked down by the failed request, long before its next poll");
    assert_eq!(served_by(&g, &key, &[&inf_ok]).await, (200, vec![1]), "the next call goes to the healthy node");
}

async fn post_node(app: &TestApp, admin: &str, body: &Value) -> (u16, Value) {
    status_json(app.api.add_gpu_node(admin, body).await).await
}

async fn patch_node(app: &TestApp, admin: &str, id: &str, body: &Value) -> (u16, Value) {
    status_json(app.api.patch_gpu_node(admin, id, body).await).await
}

/// A row written straight into the registry, as one registered before today's rules would be.
async fn insert_legacy_node(app: &TestApp, name: &str, agent_url: &str, token_env: Option<&str>) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO gpu_nodes (name, agent_url, inference_url, pool, agent_token_env) \
         VALUES ($1, $2, 'http://127.0.0.1:9/v1', 'p', $3) RETURNING id",
    )
    .bind(name)
    .bind(agent_url)
    .bind(token_env)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    id.to_string()
}

/// Waits until the node's health shows a `last_error` containing `needle`; returns the health.
async fn wait_for_error(app: &TestApp, admin: &str, id: &str, needle: &str) -> Value {
    eventually(&format!("node {id} fails with {needle:?}"), Duration::from_secs(10), || async {
        let node = app.get_json(&format!("/api/admin/gpu-nodes/{id}"), admin).await;
        let error = node["health"]["last_error"].as_str().unwrap_or_default();
        error.contains(needle).then(|| node["health"].clone())
    })
    .await
}

#[tokio::test]
async fn agent_token_env_must_be_a_pr_gpu_agent_token_variable_on_create_and_patch() {
    // SAFETY: set before the app starts; nothing else in this test process reads them concurrently.
    unsafe {
        std::env::set_var("PR_TEST_DB_PASSWORD", "database-secret-456");
        std::env::set_var("PR_GPU_AGENT_TOKEN_RULE", "agent-token-789");
    }
    let app = spawn_app_with(|_| {}).await;
    let (_, admin) = app.user(true).await;
    let agent = Agent::start(Behaviour::Healthy(5.0)).await;
    // Set in the API's environment but not meant for agents: refused, naming the rule.
    for var in ["PR_TEST_DB_PASSWORD", "DATABASE_URL", "PR_GPU_AGENT_TOKEN_", "PR_GPU_AGENT_TOKEN_lower"] {
        let body = json!({"name": "n", "agent_url": agent.url(), "inference_url": "http://127.0.0.1:9/v1", "agent_token_env": var});
        let (status, body) = post_node(&app, &admin, &body).await;
        assert_eq!(status, 422, "{var}: {body}");
        assert_eq!(body["error"]["code"], "agent_token_env_not_allowed");
        assert!(body["error"]["message"].as_str().unwrap().contains("PR_GPU_AGENT_TOKEN_"), "{body}");
        assert!(body["error"]["request_id"].is_string());
    }
    let nodes: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_nodes").fetch_one(&app.pool).await.unwrap();
    assert_eq!(nodes, 0);

    let body = json!({"name": "n", "agent_url": agent.url(), "inference_url": "http://127.0.0.1:9/v1", "agent_token_env": "PR_GPU_AGENT_TOKEN_RULE"});
    let (status, created) = post_node(&app, &admin, &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, refused) = patch_node(&app, &admin, id, &json!({"agent_token_env": "PR_TEST_DB_PASSWORD"})).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("agent_token_env_not_allowed")));
    let shown = app.get_json(&format!("/api/admin/gpu-nodes/{id}"), &admin).await;
    assert_eq!(shown["agent_token_env"], "PR_GPU_AGENT_TOKEN_RULE", "a refused PATCH changes nothing");
    eventually("the node is polled with its token", Duration::from_secs(10), || async {
        agent.authorizations().contains(&Some("Bearer agent-token-789".into())).then_some(())
    })
    .await;
    assert!(agent.authorizations().iter().all(|a| a.as_deref() == Some("Bearer agent-token-789")));
}

#[tokio::test]
async fn a_node_registered_before_the_token_rule_is_down_and_never_sent_the_variable() {
    // SAFETY: set before the app starts; nothing else in this test process reads them concurrently.
    unsafe {
        std::env::set_var("PR_TEST_LEGACY_SECRET", "legacy-secret-321");
        std::env::set_var("PR_GPU_AGENT_TOKEN_FIXED", "fixed-token-654");
    }
    let app = spawn_app_with(|c| c.gpu_poll_interval_secs = 1).await;
    let (_, admin) = app.user(true).await;
    let agent = Agent::start(Behaviour::Healthy(5.0)).await;
    let id = insert_legacy_node(&app, "legacy", &agent.url(), Some("PR_TEST_LEGACY_SECRET")).await;

    let health = wait_for_error(&app, &admin, &id, "PR_GPU_AGENT_TOKEN_").await;
    assert_eq!(health["up"], false);
    assert!(health["last_error"].as_str().unwrap().contains("refused to send the value of PR_TEST_LEGACY_SECRET"));
    assert!(agent.authorizations().is_empty(), "nothing was sent: {:?}", agent.authorizations());

    // The operator gives it an allowed variable: it comes back, with that token only.
    let (status, _) = patch_node(&app, &admin, &id, &json!({"agent_token_env": "PR_GPU_AGENT_TOKEN_FIXED"})).await;
    assert_eq!(status, 200);
    app.wait_for_metrics("legacy node up", |s| up(s, &id, "legacy") == Some(1.0)).await;
    let sent = agent.authorizations();
    assert!(!sent.is_empty() && sent.iter().all(|a| a.as_deref() == Some("Bearer fixed-token-654")), "{sent:?}");
}

#[tokio::test]
async fn gpu_node_urls_must_be_literal_ips_inside_the_allowed_networks() {
    let app = spawn_app_with(|c| {
        c.gpu_poll_interval_secs = 1;
        c.gpu_node_allowed_nets = "127.0.0.1/32".parse().unwrap();
    })
    .await;
    let (_, admin) = app.user(true).await;
    let agent = Agent::start(Behaviour::Healthy(5.0)).await;
    let port = agent.addr.port();
    for (agent_url, inference_url, why) in [
        (format!("http://localhost:{port}"), "http://127.0.0.1:9/v1".to_owned(), "not an IP address"),
        (
            agent.url(),
            "http://10.0.0.5:8000/v1".to_owned(),
            "10.0.0.5 is outside PR_GPU_NODE_ALLOWED_NETS (127.0.0.1/32)",
        ),
        (format!("http://[::1]:{port}"), "http://127.0.0.1:9/v1".to_owned(), "::1 is outside"),
        // 2130706434 is how a URL may spell 127.0.0.2.
        (format!("http://2130706434:{port}"), "http://127.0.0.1:9/v1".to_owned(), "127.0.0.2 is outside"),
    ] {
        let body = json!({"name": "n", "agent_url": agent_url, "inference_url": inference_url});
        let (status, body) = post_node(&app, &admin, &body).await;
        assert_eq!(status, 422, "{agent_url} {inference_url}: {body}");
        assert_eq!(body["error"]["code"], "gpu_node_address_not_allowed");
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{body}");
    }
    let ok = add_node(&app, &admin, "inside", &agent.url(), "http://127.0.0.1:9/v1", "p").await;
    app.wait_for_metrics("the node inside is up", |s| up(s, &ok, "inside") == Some(1.0)).await;

    // A row from before the setting, by host name: down, never polled.
    let outside = Agent::start(Behaviour::Healthy(5.0)).await;
    let legacy = insert_legacy_node(&app, "legacy", &format!("http://localhost:{}", outside.addr.port()), None).await;
    let health = wait_for_error(&app, &admin, &legacy, "PR_GPU_NODE_ALLOWED_NETS").await;
    assert_eq!(health["up"], false);
    assert!(outside.authorizations().is_empty(), "a node outside the allowed networks is never contacted");
}
