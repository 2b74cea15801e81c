//! The command line contract: exit status 0/1/2, `--json`, honest failures when nothing answers.

use std::{net::TcpListener, process::Command};

fn pr_hardening() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pr-hardening"));
    for var in ["PR_DOMAIN", "PROMETHEUS_BASIC_AUTH_USER", "PROMETHEUS_BASIC_AUTH_PASSWORD", "GRAFANA_ADMIN_USER"] {
        cmd.env_remove(var);
    }
    cmd
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_unreachable_deployment_fails_every_check_it_cannot_verify() {
    let port = closed_port();
    let out = pr_hardening()
        .args(["--domain", "example.test", "--json", "--timeout-secs", "2"])
        .args(["--connect-to", &format!("::127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["domain"], "example.test");
    assert_eq!(report["passed"], false);
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 13);
    let status = |id: &str| {
        items.iter().find(|i| i["id"] == id).unwrap_or_else(|| panic!("no item {id}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Nothing answers: nothing can be shown to be hardened...
    for id in [
        "metrics-not-public",
        "tls-protocols",
        "tls-ciphers",
        "hsts",
        "http-redirect",
        "unknown-host",
        "prometheus-auth",
        "retention",
        "alert-rules",
        "scrape-targets",
        "scrape-auth",
    ] {
        assert_eq!(status(id), "fail", "{id}");
    }
    // ...except that the metrics port is indeed closed, and Grafana was not asked about.
    assert_eq!(status("metrics-port-closed"), "pass");
    assert_eq!(status("grafana-default-password"), "skipped");
}

#[test]
fn text_report_and_usage_errors() {
    let port = closed_port();
    let out = pr_hardening()
        .args(["--domain", "example.test", "--timeout-secs", "1"])
        .args(["--connect-to", &format!("::127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("PrivateRouter hardening audit of example.test"), "{text}");
    assert!(text.contains("[PASS] metrics-port-closed"), "{text}");
    assert!(text.contains("[SKIP] grafana-default-password"), "{text}");
    assert!(text.contains("Result: NOT HARDENED"), "{text}");

    let bad =
        pr_hardening().args(["--domain", "example.test", "--connect-to", "api.example.test:443"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("HOST:PORT:CONNECT_HOST:CONNECT_PORT"));

    let missing = pr_hardening().output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "--domain is required");
}
