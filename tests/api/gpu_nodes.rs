use std::time::{Duration, Instant};

use privaterouter_tests::{
    TestApp,
    agent::{Agent, Behaviour},
    prom::Samples,
    spawn_app_with, spawn_gateway_with, upstream,
};
use serde_json::{Value, json};

async fn add_node(app: &TestApp, admin: &str, name: &str, agent: &str, inference: &str, pool: &str) -> String {
    let response = app
        .client
        .post(app.url("/api/admin/gpu-nodes"))
        .bearer_auth(admin)
        .json(&json!({"name": name, "agent_url": agent, "inference_url": inference, "pool": pool}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
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
    let shown: Value = app
        .client
        .get(app.url(&format!("/api/admin/gpu-nodes/{a}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["health"]["up"], false);
    assert!(shown["health"]["last_error"].as_str().unwrap().contains("timed out"), "{shown}");

    // Refusing connections: down. Coming back: up again, by itself.
    agent_a.stop().await;
    app.wait_for_metrics("a refused", |s| up(s, &a, "node-a") == Some(0.0)).await;
    agent_a.set(Behaviour::Healthy(55.0));
    agent_a.restart().await;
    app.wait_for_metrics("a back", |s| up(s, &a, "node-a") == Some(1.0) && util(s, &a, "node-a") == Some(55.0)).await;

    // Disabled: its series leave; enabled: back. Deleted: gone for good.
    let disabled = app
        .client
        .patch(app.url(&format!("/api/admin/gpu-nodes/{b}")))
        .bearer_auth(&admin)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 200);
    let text = app.metrics_text().await;
    assert!(!text.contains(&b), "a disabled node has no series");
    let deleted =
        app.client.delete(app.url(&format!("/api/admin/gpu-nodes/{a}"))).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let text = app.metrics_text().await;
    assert!(!text.contains(&a), "a deleted node's series are gone at once");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = app.metrics_text().await;
    assert!(!text.contains(&a) && !text.contains(&b), "and stay gone after the next poll");
    let list: Value =
        app.client.get(app.url("/api/admin/gpu-nodes")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_registry_is_admin_only_validated_and_never_returns_a_token() {
    // SAFETY: set before the app starts; nothing else in this test process reads it concurrently.
    unsafe { std::env::set_var("PR_TEST_AGENT_TOKEN", "agent-secret-token-123") };
    let app = spawn_app_with(|c| c.gpu_poll_interval_secs = 1).await;
    let (_, admin) = app.user(true).await;
    let (_, user) = app.user(false).await;
    let agent = Agent::start(Behaviour::Healthy(5.0)).await;
    let body = json!({"name": "n1", "agent_url": agent.url(), "inference_url": "http://127.0.0.1:9/v1", "agent_token_env": "PR_TEST_AGENT_TOKEN"});

    let forbidden =
        app.client.post(app.url("/api/admin/gpu-nodes")).bearer_auth(&user).json(&body).send().await.unwrap();
    assert_eq!(forbidden.status(), 403);
    assert_eq!(app.client.get(app.url("/api/admin/gpu-nodes")).bearer_auth(&user).send().await.unwrap().status(), 403);

    let created =
        app.client.post(app.url("/api/admin/gpu-nodes")).bearer_auth(&admin).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let text = created.text().await.unwrap();
    assert!(!text.contains("agent-secret-token-123"), "the token is never returned: {text}");
    let again = app.client.post(app.url("/api/admin/gpu-nodes")).bearer_auth(&admin).json(&body).send().await.unwrap();
    assert_eq!(again.status(), 409, "names are unique");

    for (bad, why) in [
        (json!({"name": "bad name!", "agent_url": agent.url(), "inference_url": "http://x/v1"}), "name"),
        (json!({"name": "n2", "agent_url": "ftp://x", "inference_url": "http://x/v1"}), "agent url"),
        (
            json!({"name": "n3", "agent_url": agent.url(), "inference_url": "http://x/v1", "agent_token_env": "NOT_SET_ANYWHERE_42"}),
            "token variable unset",
        ),
        (json!({"name": "n4", "agent_url": agent.url()}), "missing inference_url"),
    ] {
        let r = app.client.post(app.url("/api/admin/gpu-nodes")).bearer_auth(&admin).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{why}");
    }
    let list =
        app.client.get(app.url("/api/admin/gpu-nodes")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    assert!(!list.contains("agent-secret-token-123"));
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT row_to_json(g)::text FROM gpu_nodes g").fetch_all(&app.pool).await.unwrap();
    assert!(rows.iter().all(|(r,)| !r.contains("agent-secret-token-123")), "the token is not stored");
    app.wait_for_metrics("node with token polled up", |s| s.series("pr_gpu_node_up").iter().any(|x| x.value == 1.0))
        .await;
}

async fn served_by(
    g: &privaterouter_tests::Gateway,
    key: &str,
    inference: &[&upstream::Upstream],
) -> (u16, Vec<usize>) {
    let before: Vec<usize> = inference.iter().map(|u| u.requests().len()).collect();
    let r = g
        .app
        .client
        .post(g.app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "pooled", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let _ = r.bytes().await;
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
    let r = g
        .app
        .client
        .post(g.app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "pooled", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "no_healthy_node");
    let s = g.app.samples().await;
    assert_eq!(
        s.get(
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
