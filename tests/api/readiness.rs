use std::time::{Duration, Instant};

use privaterouter_tests::{eventually, spawn_app};

async fn wait_status(app: &privaterouter_tests::TestApp, path: &str, want: u16, within: Duration) {
    eventually(&format!("{path} answers {want}"), within, || async {
        let status =
            app.client.get(app.url(path)).timeout(Duration::from_secs(5)).send().await.map(|r| r.status().as_u16());
        match status {
            Ok(s) if s == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn readyz_follows_the_database_and_recovers_by_itself() {
    let app = spawn_app().await;
    wait_status(&app, "/readyz", 200, Duration::from_secs(5)).await;

    app.db.container().stop().await.expect("stop postgres");
    wait_status(&app, "/readyz", 503, Duration::from_secs(15)).await;
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    // Liveness is unaffected: the process neither exits nor wedges.
    assert_eq!(app.get("/healthz").await.status(), 200);

    app.db.container().start().await.expect("start postgres again");
    wait_status(&app, "/readyz", 200, Duration::from_secs(60)).await;

    let s = app.samples().await;
    assert!(
        s.expect(
            "pr_http_exceptions_total",
            &[("method", "GET"), ("route", "/readyz"), ("exception_type", "database_unavailable")]
        ) >= 1.0,
        "the outage is visible in the exceptions counter"
    );
}

#[tokio::test]
async fn readyz_fails_fast_while_the_database_hangs() {
    let app = spawn_app().await;
    wait_status(&app, "/readyz", 200, Duration::from_secs(5)).await;
    app.db.container().pause().await.expect("pause postgres");
    let started = Instant::now();
    let response = app.client.get(app.url("/readyz")).timeout(Duration::from_secs(10)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the ping timeout: {:?}", started.elapsed());
    app.db.container().unpause().await.expect("unpause postgres");
    wait_status(&app, "/readyz", 200, Duration::from_secs(30)).await;
}
