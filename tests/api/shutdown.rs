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
        s.value("pr_http_requests_in_flight", &[("method", "GET"), ("route", "/__test/sleep")]) == Some(1.0)
    })
    .await;
    let stopped = app.trigger_shutdown();

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "in-flight request completed: {body}");
    assert!(body.contains("1500"));
    tokio::time::timeout(Duration::from_secs(10), stopped).await.expect("stops after draining").unwrap().unwrap();

    // Both listeners are closed.
    assert!(reqwest::get(app.url("/healthz")).await.is_err());
    assert!(reqwest::get(app.metrics_url("/healthz")).await.is_err());
    // And the access log was flushed for the drained request.
    let lines = app.access_lines(1).await;
    assert!(lines.iter().any(|l| l["route"] == "/__test/sleep" && l["status"] == 200));
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
        s.value("pr_http_requests_in_flight", &[("method", "GET"), ("route", "/__test/sleep")]) == Some(1.0)
    })
    .await;
    let started = std::time::Instant::now();
    app.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "grace of 1 s respected: {:?}", started.elapsed());
}

/// The real binary: JSON lines on stdout, SIGTERM drains and exits 0 with the access log flushed.
#[tokio::test]
async fn the_binary_logs_json_to_stdout_and_exits_cleanly_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let db = privaterouter_tests::postgres().await;
    let port = privaterouter_tests::free_port();
    let mut child = tokio::process::Command::new(privaterouter_tests::api_binary())
        .env("DATABASE_URL", &db.url)
        .env("PR_BILLING_JOURNAL_DIR", tempfile::tempdir().unwrap().keep())
        .env("PR_PUBLIC_ADDR", format!("127.0.0.1:{port}"))
        .env("PR_METRICS_ADDR", format!("127.0.0.1:{}", privaterouter_tests::free_port()))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    privaterouter_tests::eventually("the binary listens", Duration::from_secs(30), || client.get(&url).send()).await;
    let response = client.get(&url).header("x-request-id", "sigterm-check").send().await.unwrap();
    assert_eq!(response.status(), 200);

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status =
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits after SIGTERM").unwrap();
    assert!(status.success(), "exit status {status:?}");

    let mut all = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        all.push(value);
    }
    assert!(
        all.iter().any(|l| l["request_id"] == "sigterm-check" && l["route"] == "/healthz"),
        "access line flushed: {all:?}"
    );
    assert!(all.iter().any(|l| l["logger"].is_string() && l["msg"] == "stopped"), "shutdown logged: {all:?}");
}
