use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use privaterouter_gpu_agent::{CacheSettings, ReadError, telemetry};
use serde_json::json;

use crate::helpers::{FAST, FixedReader, TestAgent, json, sample_gpus};

const TOKEN: &str = "0f3c9a7e-agent-token-5d1b";

#[tokio::test]
async fn gpus_body_has_exactly_the_agreed_shape_and_values() {
    let agent = TestAgent::spawn(FixedReader::new(Ok(sample_gpus())), None, FAST).await;
    let (status, body) = json(agent.get("/v1/gpus").await).await;
    assert_eq!(status, 200);
    // Value equality: no field more, none less, unsupported readings are null.
    assert_eq!(
        body,
        json!({
            "node_name": "test-node",
            "gpus": [
                {
                    "index": 0,
                    "uuid": "GPU-0b5c7f6e-1d2a-4c3b-9e8f-000000000001",
                    "name": "NVIDIA H100 80GB HBM3",
                    "utilization_gpu_pct": 87,
                    "memory_used_bytes": 61_203_283_968_u64,
                    "memory_total_bytes": 85_520_809_984_u64,
                    "temperature_c": 64,
                    "power_w": 512.345
                },
                {
                    "index": 1,
                    "uuid": "GPU-0b5c7f6e-1d2a-4c3b-9e8f-000000000002",
                    "name": "NVIDIA A100-SXM4-40GB",
                    "utilization_gpu_pct": null,
                    "memory_used_bytes": 0,
                    "memory_total_bytes": 42_949_672_960_u64,
                    "temperature_c": null,
                    "power_w": null
                }
            ]
        })
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn token_is_required_rejected_when_wrong_and_accepted_when_right() {
    let agent = TestAgent::spawn(FixedReader::new(Ok(sample_gpus())), Some(TOKEN), FAST).await;

    let missing = agent.get("/v1/gpus").await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"privaterouter-gpu-agent\"");
    assert_eq!(
        json(missing).await,
        (401, json!({"error": {"message": "a valid bearer token is required", "code": "unauthorized"}}))
    );

    for wrong in [
        "Bearer wrong".to_owned(),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Basic {TOKEN}"),
        TOKEN.to_owned(),
    ] {
        let response = agent.get_with_token("/v1/gpus", &wrong).await;
        assert_eq!(response.status(), 401, "{wrong}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer realm=\"privaterouter-gpu-agent\""),
            "{wrong}"
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains("GPU-"), "{wrong}: {body}");
    }
    let invalid = agent.get_with_token("/v1/gpus", "Bearer wrong").await;
    assert_eq!(
        invalid.headers()["www-authenticate"],
        "Bearer realm=\"privaterouter-gpu-agent\", error=\"invalid_token\""
    );

    for right in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}")] {
        let (status, body) = json(agent.get_with_token("/v1/gpus", &right).await).await;
        assert_eq!(status, 200, "{right}");
        assert_eq!(body["gpus"].as_array().unwrap().len(), 2);
    }

    // Health carries no figures and stays open, so a container health check needs no secret.
    let (status, _) = json(agent.get("/healthz").await).await;
    assert_eq!(status, 200);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_token_configured_gpus_are_open() {
    let agent = TestAgent::spawn(FixedReader::new(Ok(sample_gpus())), Some(""), FAST).await;
    assert_eq!(agent.get("/v1/gpus").await.status(), 200);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn the_token_is_never_logged() {
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    telemetry::init_logging("debug", Box::new(capture.clone()));

    let agent = TestAgent::spawn(FixedReader::new(Ok(sample_gpus())), Some(TOKEN), FAST).await;
    agent.get_with_token("/v1/gpus", &format!("Bearer {TOKEN}")).await;
    agent.get_with_token("/v1/gpus", &format!("Bearer {TOKEN}-wrong")).await;
    agent.get("/v1/gpus").await;
    agent.stop().await.unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).expect("every log line is JSON")).collect();
    assert!(lines.iter().any(|l| l["msg"] == "listening" && l["token_required"] == true), "{logs}");
    let rejected: Vec<_> =
        lines.iter().filter(|l| l["msg"] == "rejected a request without a valid bearer token").collect();
    // At least: under `cargo test` other tests of this process log their rejections here too.
    assert!(rejected.len() >= 2, "{logs}");
    assert!(rejected.iter().all(|l| l["level"] == "WARN" && l["peer"].is_string()));
    assert!(!logs.contains(TOKEN), "{logs}");
}

#[tokio::test]
async fn healthz_reports_ok_unavailable_and_no_gpus() {
    let reader = FixedReader::new(Ok(sample_gpus()));
    let agent = TestAgent::spawn(reader.clone(), Some(TOKEN), FAST).await;
    assert_eq!(json(agent.get("/healthz").await).await, (200, json!({"status": "ok", "gpu_count": 2})));

    reader.set(Err(ReadError::Nvml(
        "GPU 1: reading memory failed: device fell off the bus or has otherwise become inacessible".into(),
    )));
    tokio::time::sleep(FAST.max_age + Duration::from_millis(50)).await;
    assert_eq!(
        json(agent.get("/healthz").await).await,
        (
            503,
            json!({"status": "unavailable", "code": "nvml_error", "reason": "GPU 1: reading memory failed: device fell off the bus or has otherwise become inacessible"})
        )
    );

    reader.set(Ok(Vec::new()));
    tokio::time::sleep(FAST.max_age + Duration::from_millis(50)).await;
    assert_eq!(
        json(agent.get("/healthz").await).await,
        (503, json!({"status": "unavailable", "code": "no_gpus", "reason": "NVML reports no GPUs on this node"}))
    );
    let (status, body) = json(agent.get_with_token("/v1/gpus", &format!("Bearer {TOKEN}")).await).await;
    assert_eq!((status, &body["error"]["code"]), (503, &json!("no_gpus")));

    reader.set(Ok(sample_gpus()));
    tokio::time::sleep(FAST.max_age + Duration::from_millis(50)).await;
    assert_eq!(json(agent.get("/healthz").await).await.0, 200);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_reader_error_gives_503_never_the_last_good_figures() {
    let reader = FixedReader::new(Ok(sample_gpus()));
    let agent = TestAgent::spawn(reader.clone(), None, FAST).await;
    let (status, before) = json(agent.get("/v1/gpus").await).await;
    assert_eq!(status, 200);
    assert_eq!(before["gpus"][0]["utilization_gpu_pct"], 87);

    reader.set(Err(ReadError::Nvml("GPU 0: reading utilization failed: an internal driver error occurred".into())));
    tokio::time::sleep(FAST.max_age + Duration::from_millis(50)).await;
    let response = agent.get("/v1/gpus").await;
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({"error": {
            "message": "no GPU reading available: GPU 0: reading utilization failed: an internal driver error occurred",
            "code": "nvml_error"
        }})
    );
    for stale in ["GPU-0b5c", "61203283968", "512.345", "test-node"] {
        assert!(!text.contains(stale), "{text}");
    }

    reader.set(Ok(sample_gpus()));
    tokio::time::sleep(FAST.max_age + Duration::from_millis(50)).await;
    assert_eq!(agent.get("/v1/gpus").await.status(), 200);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_burst_of_requests_reads_nvml_once_and_readings_expire() {
    let reader = FixedReader::new(Ok(sample_gpus()));
    reader.set_delay(Duration::from_millis(50));
    let settings = CacheSettings { max_age: Duration::from_secs(1), read_timeout: Duration::from_secs(5) };
    let agent = TestAgent::spawn(reader.clone(), None, settings).await;

    let burst: Vec<_> = (0..20)
        .map(|i| {
            let client = agent.client.clone();
            let url = agent.url(if i % 2 == 0 { "/v1/gpus" } else { "/healthz" });
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(reader.calls(), 1, "one NVML read serves the whole burst");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(agent.get("/v1/gpus").await.status(), 200);
    assert_eq!(reader.calls(), 2, "an expired reading is read again");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_stuck_driver_gives_503_and_is_not_called_again_while_stuck() {
    let reader = FixedReader::new(Ok(sample_gpus()));
    reader.set_delay(Duration::from_millis(1500));
    let settings = CacheSettings { max_age: Duration::from_millis(50), read_timeout: Duration::from_millis(200) };
    let agent = TestAgent::spawn(reader.clone(), None, settings).await;

    let (status, body) = json(agent.get("/v1/gpus").await).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": {"message": "no GPU reading available: NVML did not answer within 200 ms", "code": "nvml_timeout"}})
    );
    // Later requests wait for the same stuck call instead of piling up blocking threads.
    reader.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = json(agent.get("/healthz").await).await;
    assert_eq!((status, &body["code"]), (503, &json!("nvml_timeout")));
    assert_eq!(reader.calls(), 1);

    // Once the stuck call has returned, its (old) answer is dropped and a fresh read is made.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(agent.get("/v1/gpus").await.status(), 200);
    assert_eq!(reader.calls(), 2);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_json_errors() {
    let agent = TestAgent::spawn(FixedReader::new(Ok(sample_gpus())), Some(TOKEN), FAST).await;
    assert_eq!(
        json(agent.get("/v1/nope").await).await,
        (404, json!({"error": {"message": "no such route", "code": "not_found"}}))
    );
    assert_eq!(json(agent.get("/metrics").await).await.0, 404);
    let post = agent.client.post(agent.url("/v1/gpus")).send().await.unwrap();
    assert_eq!(
        json(post).await,
        (405, json!({"error": {"message": "method not allowed for this route", "code": "method_not_allowed"}}))
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_then_stops_serving() {
    let reader = FixedReader::new(Ok(sample_gpus()));
    let agent = TestAgent::spawn(reader.clone(), None, FAST).await;
    let client = agent.client.clone();
    let url = agent.url("/healthz");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    reader.set_delay(Duration::from_millis(500));
    tokio::time::sleep(FAST.max_age + Duration::from_millis(50)).await;
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = agent.url("/v1/gpus");
        async move { client.get(url).send().await.unwrap().status() }
    });
    // Stop once the request is inside the handler (its NVML read has started).
    while reader.calls() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.stop().await.expect("run_until returns Ok");
    assert_eq!(in_flight.await.unwrap(), 200, "the in-flight request was answered");

    let after = reqwest::Client::builder().no_proxy().build().unwrap().get(&url).send().await;
    assert!(after.is_err(), "listener closed after shutdown");
}
