use std::time::Duration;

use privaterouter_tests::{spawn_app, spawn_app_with};

#[tokio::test]
async fn shutdown_drains_in_flight_requests_on_both_listeners() {
    let mut app = spawn_app().await;
    let slow = {
        let client = app.client.clone();
        let url = app.url("/__test/sleep?ms=1500");
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        })
    };
    // Let the request reach the handler, then ask for shutdown.
    app.wait_for_metrics("request in flight", |s| {
        s.get(
            "pr_http_requests_in_flight",
            &[("method", "GET"), ("route", "/__test/sleep")],
        ) == 1.0
    })
    .await;
    let stopped = app.trigger_shutdown();

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "in-flight request completed: {body}");
    assert!(body.contains("1500"));
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("stops after draining")
        .unwrap()
        .unwrap();

    // Both listeners are closed.
    assert!(reqwest::get(app.url("/healthz")).await.is_err());
    assert!(reqwest::get(app.metrics_url("/healthz")).await.is_err());
    // And the access log was flushed for the drained request.
    let lines = app.access_lines(1).await;
    assert!(
        lines
            .iter()
            .any(|l| l["route"] == "/__test/sleep" && l["status"] == 200)
    );
}

#[tokio::test]
async fn shutdown_wait_is_bounded() {
    let mut app = spawn_app_with(|c| {
        c.shutdown_grace_secs = 1;
        c.request_timeout_secs = 60;
    })
    .await;
    let client = app.client.clone();
    let url = app.url("/__test/sleep?ms=30000");
    let _stuck = tokio::spawn(async move { client.get(url).send().await });
    app.wait_for_metrics("request in flight", |s| {
        s.get(
            "pr_http_requests_in_flight",
            &[("method", "GET"), ("route", "/__test/sleep")],
        ) == 1.0
    })
    .await;
    let started = std::time::Instant::now();
    app.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "grace of 1 s respected: {:?}",
        started.elapsed()
    );
}
