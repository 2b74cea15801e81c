//! The real binary over its real NVML code path, on a machine without a GPU: the NVML library is
//! a stand-in built from `tests/fake-nvml/fake_nvml.c` and loaded through `PR_AGENT_NVML_LIB`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::helpers::json;

const BIN: &str = env!("CARGO_BIN_EXE_privaterouter-gpu-agent");
const TOKEN: &str = "fake-nvml-token";

/// Compiles the stand-in library into a folder of this test process's own.
fn build_fake_nvml() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-nvml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libnvidia-ml.so.1");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-nvml/fake_nvml.c");
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) builds the fake NVML library");
    assert!(status.success(), "compiling {}", source.display());
    lib
}

fn command(lib: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("PR_AGENT_NVML_LIB", lib)
        .env("PR_AGENT_ADDR", "127.0.0.1:0")
        .env("PR_AGENT_NODE_NAME", "fake-node")
        .env("PR_AGENT_TOKEN", TOKEN)
        .env("PR_LOG", "info")
        .env_remove("FAKE_NVML_INIT")
        .env_remove("FAKE_NVML_STATE_FILE")
        .kill_on_drop(true);
    command
}

/// The next JSON log line with this `msg`, within 10 s.
async fn wait_for_log(lines: &mut Lines<BufReader<ChildStdout>>, msg: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("agent still running");
            let value: Value = serde_json::from_str(&line).expect("log lines are JSON");
            if value["msg"] == msg {
                return value;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {msg:?} log line within 10 s"))
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn serves_what_nvml_reports_fails_closed_and_stops_on_sigterm() {
    let lib = build_fake_nvml();
    let state_file = lib.with_file_name("gpu-lost");
    let mut child = command(&lib, &[]).env("FAKE_NVML_STATE_FILE", &state_file).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = wait_for_log(&mut lines, "NVML started").await;
    assert_eq!(started["driver_version"], "999.99.99");
    assert_eq!(started["cuda_version"], "12.4");
    assert_eq!(started["gpus"], 2);
    let listening = wait_for_log(&mut lines, "listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let gpus = || client.get(format!("http://{addr}/v1/gpus")).bearer_auth(TOKEN).send();

    assert_eq!(
        json(gpus().await.unwrap()).await,
        (
            200,
            json!({"node_name": "fake-node", "gpus": [
                {"index": 0, "uuid": "GPU-fake-0000", "name": "NVIDIA Fake H100",
                 "utilization_gpu_pct": 42, "memory_used_bytes": 1_073_741_824_u64,
                 "memory_total_bytes": 85_520_809_984_u64, "temperature_c": 55, "power_w": 123.456},
                {"index": 1, "uuid": "GPU-fake-0001", "name": "NVIDIA Fake T4",
                 "utilization_gpu_pct": null, "memory_used_bytes": 0,
                 "memory_total_bytes": 16_106_127_360_u64, "temperature_c": null, "power_w": null}
            ]})
        )
    );

    // GPU 0 falls off the bus: once the 1 s cache has expired, 503 with the reason, no figures.
    std::fs::write(&state_file, "lost").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lost = "GPU 0: reading memory failed: device fell off the bus or has otherwise become inacessible";
    assert_eq!(
        json(gpus().await.unwrap()).await,
        (503, json!({"error": {"message": format!("no GPU reading available: {lost}"), "code": "nvml_error"}}))
    );
    let health = client.get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(json(health).await, (503, json!({"status": "unavailable", "code": "nvml_error", "reason": lost})));
    let failed = wait_for_log(&mut lines, "GPU reading failed").await;
    assert_eq!(failed["level"], "WARN");

    std::fs::remove_file(&state_file).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gpus().await.unwrap().status(), 200);
    wait_for_log(&mut lines, "GPU readings recovered").await;

    sigterm(&child);
    wait_for_log(&mut lines, "stopped").await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn check_prints_what_nvml_reports() {
    let lib = build_fake_nvml();
    let output = command(&lib, &["--check"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(output.stderr.is_empty());
    for expected in [
        "node: fake-node",
        "driver 999.99.99, NVML 12.999.99, CUDA (driver) 12.4, 2 GPU(s)",
        "GPU 0: NVIDIA Fake H100 (GPU-fake-0000)",
        "  utilization 42 %, memory 1024 / 81559 MiB, temperature 55 °C, power 123.456 W",
        "  utilization not supported (null), memory 0 / 15360 MiB, temperature not supported (null), power not supported (null)",
        "read of all GPUs: first ",
        "GET /v1/gpus would answer:",
        "\"power_w\": 123.456",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn a_driver_that_is_not_loaded_is_one_clear_line() {
    let lib = build_fake_nvml();
    let output = command(&lib, &[]).env("FAKE_NVML_INIT", "driver_not_loaded").output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "privaterouter-gpu-agent: NVML is not available: the NVIDIA kernel driver is not loaded (check `nvidia-smi` and `lsmod | grep nvidia`)\n"
    );
}
