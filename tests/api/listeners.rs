use privaterouter_tests::{spawn_app, spawn_app_with};
use serde_json::Value;

#[tokio::test]
async fn public_listener_serves_health_and_never_metrics() {
    let app = spawn_app().await;

    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");

    for path in ["/metrics", "/metrics/", "/METRICS", "/metrics?x=1", "//metrics"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path} on the public listener");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn internal_listener_serves_only_metrics_and_healthz() {
    let app = spawn_app().await;
    // Produce at least one sample so the text is not empty.
    app.get("/healthz").await;

    let metrics = app.client.get(app.metrics_url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let content_type = metrics.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    assert!(metrics.text().await.unwrap().contains("pr_http_requests_total"));

    let health = app.client.get(app.metrics_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    for path in ["/readyz", "/", "/v1/models", "/api/keys", "/__test/panic"] {
        let response = app.client.get(app.metrics_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path} on the internal listener");
    }
    let post = app.client.post(app.metrics_url("/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn metrics_token_is_required_when_configured() {
    let token = "s3cret-metrics-token-0123456789";
    let app = spawn_app_with(|c| c.metrics_token = Some(privaterouter_api::config::Secret::new(token))).await;

    let bare = app.client.get(app.metrics_url("/metrics")).send().await.unwrap();
    assert_eq!(bare.status(), 401);
    assert!(bare.headers().contains_key("www-authenticate"));
    assert!(!bare.text().await.unwrap().contains("pr_"), "no metrics leak on 401");

    for wrong in ["Bearer nope", "Bearer s3cret-metrics-token-012345678", "Basic czNjcmV0", token] {
        let response = app.client.get(app.metrics_url("/metrics")).header("authorization", wrong).send().await.unwrap();
        assert_eq!(response.status(), 401, "{wrong}");
    }

    let ok = app.client.get(app.metrics_url("/metrics")).bearer_auth(token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // Liveness of the internal listener stays open for container health checks.
    let health = app.client.get(app.metrics_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn empty_metrics_token_means_no_token() {
    let app = spawn_app_with(|c| c.metrics_token = Some(privaterouter_api::config::Secret::new(""))).await;
    let response = app.client.get(app.metrics_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn metrics_listener_binds_the_hosts_address_inside_the_metrics_network() {
    // A wildcard address with a network: the listener takes the one loopback address, never 0.0.0.0.
    let app = spawn_app_with(|c| {
        c.metrics_addr = "0.0.0.0:0".parse().unwrap();
        c.metrics_interface_net = Some("127.0.0.0/8".parse().unwrap());
    })
    .await;
    assert_eq!(app.metrics.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(app.metrics.port(), 0);
    let health = app.client.get(app.metrics_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn start_fails_clearly_when_no_interface_is_in_the_metrics_network() {
    let mut config = privaterouter_api::Config::for_tests("postgres://unused@127.0.0.1:1/none");
    // TEST-NET-3 (RFC 5737), for documentation only (some CI hosts do use TEST-NET-1).
    config.metrics_interface_net = Some("203.0.113.0/24".parse().unwrap());
    let logging = privaterouter_api::telemetry::init_logging("info", Box::new(std::io::sink()));
    let Err(err) = privaterouter_api::Application::build(config, logging.writer.clone()).await else {
        panic!("the app started without an address in the metrics network");
    };
    let err = format!("{err:#}");
    assert!(err.contains("PR_METRICS_INTERFACE_NET=203.0.113.0/24"), "{err}");
    assert!(err.contains("no interface address is in this network"), "{err}");
    assert!(err.contains("127.0.0.1"), "names the addresses the host has: {err}");
}
