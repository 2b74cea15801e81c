use privaterouter_tests::spawn_app_with;
use serde_json::Value;

async fn error_of(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    let error = body["error"].clone();
    for field in ["message", "type", "code", "request_id"] {
        assert!(error[field].is_string(), "error.{field} in {body}");
    }
    assert_eq!(error["request_id"], id);
    (status, id, error)
}

#[tokio::test]
async fn bad_input_gets_openai_style_errors() {
    let app = spawn_app_with(|c| {
        c.max_body_bytes = 2048;
        c.request_timeout_secs = 1;
    })
    .await;
    let echo = app.url("/__test/echo/1");
    let json = |body: &str| app.client.post(&echo).header("content-type", "application/json").body(body.to_owned());

    let (status, _, e) = error_of(json("{\"name\": \"x\", ").send().await.unwrap()).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (400, "invalid_json"));
    assert!(e["message"].as_str().unwrap().to_lowercase().contains("eof"), "{e}");

    let (status, _, e) = error_of(json("{\"name\": \"x\", \"count\": \"many\"}").send().await.unwrap()).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (400, "invalid_request_body"));
    assert!(e["message"].as_str().unwrap().contains("count"), "names the field: {e}");

    let (status, _, e) = error_of(json("{\"name\": \"x\"}").send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(e["message"].as_str().unwrap().contains("count"), "names the missing field: {e}");

    let (status, _, e) = error_of(app.client.post(&echo).body("{}").send().await.unwrap()).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (415, "unsupported_media_type"));

    // Declared too large: refused up front. Undeclared (chunked) too large: cut while reading.
    let big = format!("{{\"name\": \"{}\", \"count\": 1}}", "x".repeat(4096));
    let (status, _, e) = error_of(json(&big).send().await.unwrap()).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (413, "payload_too_large"));
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.clone().into_bytes())]);
    let streamed = app
        .client
        .post(&echo)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let (status, _, _) = error_of(streamed).await;
    assert_eq!(status, 413);

    let (status, _, e) = error_of(app.get("/definitely/not/here").await).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (404, "not_found"));

    let (status, _, e) = error_of(app.client.delete(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (405, "method_not_allowed"));

    let (status, _, e) = error_of(app.get("/__test/sleep?ms=2500").await).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (504, "timeout"));

    let (status, _, e) = error_of(app.get("/__test/unauthorized").await).await;
    assert_eq!((status, e["type"].as_str().unwrap()), (401, "authentication_error"));

    // Internal details never reach the client.
    let (status, _, e) = error_of(app.get("/__test/panic").await).await;
    assert_eq!((status, e["type"].as_str().unwrap()), (500, "server_error"));
    assert!(!e["message"].as_str().unwrap().contains("deliberate"), "{e}");
    let (status, _, e) = error_of(app.get("/__test/db-error").await).await;
    assert_eq!(status, 500);
    assert!(!e["message"].as_str().unwrap().contains("deliberate"), "{e}");

    // Nothing was lost: the server still answers.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn slow_request_bodies_get_408() {
    let app = spawn_app_with(|c| c.body_read_timeout_secs = 1).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{\"name\":".to_vec())).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let response = app
        .client
        .post(app.url("/__test/echo/1"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, _, e) = error_of(response).await;
    assert_eq!((status, e["code"].as_str().unwrap()), (408, "request_timeout"));
    drop(tx);
}
