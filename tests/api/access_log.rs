use std::collections::BTreeSet;

use privaterouter_tests::spawn_app;
use serde_json::Value;

const FIELDS: [&str; 11] =
    ["ts", "request_id", "method", "route", "raw_path", "status", "latency_ms", "user_id", "ip", "user_agent", "bytes"];

fn line_for<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    let matching: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == request_id).collect();
    assert_eq!(matching.len(), 1, "exactly one access-log line for {request_id}: {lines:?}");
    matching[0]
}

#[tokio::test]
async fn one_json_line_per_request_with_every_field() {
    let app = spawn_app().await;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();

    let ok = app
        .client
        .post(app.url("/__test/echo/abc-42"))
        .header("user-agent", "agent \"quoted\" \\ back")
        .header("x-request-id", "req-ok-1")
        .json(&serde_json::json!({"name": "n", "count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok_body = ok.bytes().await.unwrap();

    let missing =
        app.client.get(app.url("/nope/%22x%22?token=secret")).header("x-request-id", "req-404").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing_body = missing.bytes().await.unwrap();

    let lines = app.access_lines(2).await;
    for line in &lines {
        let keys: BTreeSet<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, FIELDS.into_iter().collect(), "exactly the spec's fields: {line}");
    }

    let ok_line = line_for(&lines, "req-ok-1");
    assert_eq!(ok_line["method"], "POST");
    assert_eq!(ok_line["route"], "/__test/echo/{id}");
    assert_eq!(ok_line["raw_path"], "/__test/echo/abc-42");
    assert_eq!(ok_line["status"], 200);
    assert_eq!(ok_line["user_id"], Value::Null);
    assert_eq!(ok_line["ip"], "127.0.0.1");
    assert_eq!(ok_line["user_agent"], "agent \"quoted\" \\ back");
    assert_eq!(ok_line["bytes"], ok_body.len() as u64);
    let ts = ok_line["ts"].as_f64().expect("ts is a float");
    assert!((started - 1.0..started + 30.0).contains(&ts), "ts {ts} near {started}");
    let latency = ok_line["latency_ms"].as_f64().expect("latency_ms is a number");
    assert!((0.0..5000.0).contains(&latency), "latency {latency}");

    let miss_line = line_for(&lines, "req-404");
    assert_eq!(miss_line["route"], "unmatched");
    assert_eq!(miss_line["raw_path"], "/nope/%22x%22", "query strings (which may hold secrets) are not logged");
    assert_eq!(miss_line["status"], 404);
    assert_eq!(miss_line["user_agent"], Value::Null);
    assert_eq!(miss_line["bytes"], missing_body.len() as u64);
}

#[tokio::test]
async fn application_logs_are_json_with_a_logger_name() {
    let app = spawn_app().await;
    assert_eq!(app.get("/__test/db-error").await.status(), 500);
    app.access_lines(1).await;
    let app_lines = app.app_lines();
    assert!(!app_lines.is_empty());
    for line in &app_lines {
        assert!(line["logger"].as_str().is_some_and(|l| !l.is_empty()), "{line}");
        assert!(line["level"].is_string() && line["ts"].is_f64(), "{line}");
    }
    let error = app_lines.iter().find(|l| l["logger"] == "pr.error").expect("the 500 is logged by pr.error");
    assert_eq!(error["exception_type"], "database");
    assert!(
        error["detail"].as_str().unwrap().contains("deliberate database failure"),
        "details go to the log: {error}"
    );
    let access = app.access_lines(1).await;
    assert_eq!(error["request_id"], access[0]["request_id"], "error log and access log share the request id");
}

#[tokio::test]
async fn panics_are_logged_as_json_and_answered() {
    let app = spawn_app().await;
    assert_eq!(app.get("/__test/panic").await.status(), 500);
    app.access_lines(1).await;
    let panic_line = app.app_lines().into_iter().find(|l| l["logger"] == "pr.panic");
    let panic_line = panic_line.expect("panic logged by pr.panic");
    assert!(panic_line["msg"].as_str().unwrap().contains("deliberate panic"));
    // The server keeps serving.
    assert_eq!(app.get("/healthz").await.status(), 200);
}
