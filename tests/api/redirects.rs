//! The API never follows a redirect: a GPU agent, an inference server or a catalog upstream that
//! answers one cannot bounce the API's request (its bearer token, its prompt) to another host.
//! Each redirect here points at a recorder, which must receive nothing.

use std::{io::Write, time::Duration};

use privaterouter_tests::{
    TestApp,
    agent::{Agent, Behaviour},
    client::expect_json,
    eventually,
    redirect::{Recorder, redirector},
    spawn_app_with, upstream,
};
use serde_json::{Value, json};

/// The app with a catalog of two models: `bounced` (its upstream redirects) and `pooled` (served
/// by GPU pool `gpu`).
async fn app_with_catalog(bounced_upstream: &str) -> (TestApp, tempfile::NamedTempFile) {
    // SAFETY: set before the app starts; nothing else in this test process reads it concurrently.
    unsafe { std::env::set_var("PR_TEST_UPSTREAM_KEY", upstream::UPSTREAM_KEY) };
    let mut catalog = tempfile::NamedTempFile::new().unwrap();
    let prices = "api_key_env = \"PR_TEST_UPSTREAM_KEY\"\ninput_usd_per_mtok = 1.5\noutput_usd_per_mtok = 6.0\n";
    write!(
        catalog,
        "[[models]]\nname = \"bounced\"\nupstream = \"{bounced_upstream}\"\nupstream_model = \"up-echo\"\n{prices}\n\
         [[models]]\nname = \"pooled\"\ngpu_pool = \"gpu\"\nupstream_model = \"up-echo\"\n{prices}"
    )
    .unwrap();
    let path = catalog.path().to_owned();
    let app = spawn_app_with(|c| {
        c.models_file = Some(path);
        // Only the poll at registration: a later one must not overwrite what a failed call recorded.
        c.gpu_poll_interval_secs = 3600;
    })
    .await;
    (app, catalog)
}

/// Registers a GPU node; returns its id.
async fn register(app: &TestApp, admin: &str, node: Value) -> String {
    let created = expect_json(app.api.add_gpu_node(admin, &node).await, 201).await;
    created["id"].as_str().unwrap().to_owned()
}

async fn node_health(app: &TestApp, admin: &str, id: &str) -> Value {
    app.get_json(&format!("/api/admin/gpu-nodes/{id}"), admin).await["health"].clone()
}

/// A completion of `model` by a user with 1 USD: answers 502 and leaves the balance untouched.
async fn call_is_a_502_and_not_billed(app: &TestApp, model: &str) {
    let (_, key) = app.funded_user("1").await;
    let call = json!({"model": model, "messages": [{"role": "user", "content": "secret prompt"}]});
    let body = expect_json(app.api.chat(&key, &call).await, 502).await;
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("redirect"), "{body}");
    let balance = app.get_json("/api/billing/balance", &key).await;
    assert_eq!((balance["balance_usd"].as_str(), balance["available_usd"].as_str()), (Some("1.00"), Some("1.00")));
    let usage: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE kind = 'usage'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(usage, 0, "a failed call is not billed");
}

#[tokio::test]
async fn an_agent_that_redirects_is_down_and_its_token_goes_nowhere() {
    // SAFETY: set before the app starts; nothing else in this test process reads it concurrently.
    unsafe { std::env::set_var("PR_GPU_AGENT_TOKEN_BOUNCE", "agent-token-bounce") };
    let (app, _catalog) = app_with_catalog("http://127.0.0.1:9/v1").await;
    let (_, admin) = app.user(true).await;
    let recorder = Recorder::start().await;
    let bouncer = redirector(302, format!("{}/v1/gpus", recorder.url())).await;
    let node = json!({"name": "bouncer", "agent_url": format!("http://{bouncer}"),
        "inference_url": "http://127.0.0.1:9/v1", "agent_token_env": "PR_GPU_AGENT_TOKEN_BOUNCE"});
    let id = register(&app, &admin, node).await;
    let health = eventually("the redirecting agent is polled", Duration::from_secs(10), || async {
        let health = node_health(&app, &admin, &id).await;
        health["last_error"].is_string().then_some(health)
    })
    .await;
    assert_eq!(health["up"], false);
    assert!(health["last_error"].as_str().unwrap().contains("redirect (302 Found)"), "{health}");
    assert!(recorder.received().is_empty(), "the redirect was followed: {:?}", recorder.received());
}

#[tokio::test]
async fn an_inference_server_that_redirects_is_a_502_not_billed_and_marked_down() {
    let recorder = Recorder::start().await;
    // 307 keeps the method and body: followed, it would resend the prompt.
    let bouncer = redirector(307, format!("{}/v1/chat/completions", recorder.url())).await;
    let (app, _catalog) = app_with_catalog("http://127.0.0.1:9/v1").await;
    let (_, admin) = app.user(true).await;
    let agent = Agent::start(Behaviour::Healthy(10.0)).await;
    let node = json!({"name": "bouncer", "agent_url": agent.url(), "inference_url": format!("http://{bouncer}/v1"),
        "pool": "gpu"});
    let id = register(&app, &admin, node).await;
    eventually("the node is up", Duration::from_secs(10), || async {
        (node_health(&app, &admin, &id).await["up"] == true).then_some(())
    })
    .await;

    call_is_a_502_and_not_billed(&app, "pooled").await;
    let health = node_health(&app, &admin, &id).await;
    assert!(health["last_error"].as_str().unwrap_or_default().contains("redirect"), "marked down: {health}");
    assert!(recorder.received().is_empty(), "the redirect was followed: {:?}", recorder.received());
}

#[tokio::test]
async fn a_catalog_upstream_that_redirects_is_a_502_and_not_billed() {
    let recorder = Recorder::start().await;
    let bouncer = redirector(308, format!("{}/v1/chat/completions", recorder.url())).await;
    let (app, _catalog) = app_with_catalog(&format!("http://{bouncer}/v1")).await;
    call_is_a_502_and_not_billed(&app, "bounced").await;
    assert!(recorder.received().is_empty(), "the redirect was followed: {:?}", recorder.received());
}
