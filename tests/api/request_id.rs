use privaterouter_tests::spawn_app;
use serde_json::Value;

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn valid_ids_are_echoed_and_hostile_ones_replaced() {
    let app = spawn_app().await;

    let plain = app.get("/healthz").await;
    let generated = plain.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(is_generated(&generated), "{generated}");

    let max = "a".repeat(128);
    for valid in ["abc", "trace:1.2_3-4", max.as_str()] {
        let response = app.client.get(app.url("/healthz")).header("x-request-id", valid).send().await.unwrap();
        assert_eq!(response.headers()["x-request-id"], valid);
    }

    let too_long = "b".repeat(129);
    let hostile: Vec<Vec<u8>> = vec![
        too_long.into_bytes(),
        b"with space".to_vec(),
        b"quote\"brace{}".to_vec(),
        b"tab\tinside".to_vec(),
        b"\",\"status\":200,\"x\":\"".to_vec(),
        b"".to_vec(),
        "\u{e9}t\u{e9}".as_bytes().to_vec(),
    ];
    let mut seen = Vec::new();
    for value in &hostile {
        let response = app
            .client
            .get(app.url("/nope"))
            .header("x-request-id", reqwest::header::HeaderValue::from_bytes(value).unwrap())
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(is_generated(&id), "{:?} → {id}", String::from_utf8_lossy(value));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["request_id"], id, "error body carries the same id");
        seen.push(id);
    }

    // Two X-Request-ID headers are ambiguous: replaced as well.
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(is_generated(&id));
    seen.push(id);

    let lines = app.access_lines(4 + hostile.len() + 1).await;
    for id in &seen {
        assert_eq!(lines.iter().filter(|l| l["request_id"] == id.as_str()).count(), 1, "access log has {id}");
    }
    for line in &lines {
        let id = line["request_id"].as_str().unwrap();
        assert!(!id.contains('"') && !id.contains(' '), "no forged id in the log: {id}");
    }
}
