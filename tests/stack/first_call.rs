//! A newcomer's first completion, on the compose project `compose.rs` brought up with
//! `scripts/up --offline --demo`: `up` itself made the first admin, topped it up and ran one
//! completion on `demo-echo` (the demo profile's stand-in model server) through nginx, TLS, the
//! API and the offline LiteLLM image, and printed the first steps. Here, with the admin key it
//! printed: that call was billed, a streamed call (usage included) is billed exactly its
//! `cost_usd`, Prometheus shows the calls and scrapes LiteLLM; then the spec's profile commands,
//! run from `compose/` as written, stop and remove Prometheus with the base stack unaffected;
//! last, `scripts/up --no-demo` removes the stand-in and says how to point at a real model.

use std::{process::Command, str::FromStr, time::Duration};

use privaterouter_tests::eventually_blocking as eventually;
use rust_decimal::Decimal;

use crate::{
    compose::{Project, text},
    harness::repo_root,
};

fn balance(project: &Project, key: &str) -> Decimal {
    let (code, body) = project.curl("api", "/api/billing/balance", &["-H", &format!("Authorization: Bearer {key}")]);
    assert_eq!(code, "200", "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    Decimal::from_str(json["balance_usd"].as_str().expect("balance_usd is a decimal string")).unwrap()
}

/// The value of a one-series PromQL query through nginx (basic auth), if there is one.
fn prom_value(project: &Project, query: &str) -> Option<f64> {
    let auth = format!("prometheus:{}", project.env_get("PROMETHEUS_BASIC_AUTH_PASSWORD"));
    let q = format!("query={query}");
    let (code, body) = project.curl("prometheus", "/api/v1/query", &["-u", &auth, "--get", "--data-urlencode", &q]);
    assert_eq!(code, "200", "{query}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

pub fn assert_first_completion(project: &Project, up_text: &str) {
    assert!(
        up_text.contains("demo: completion through nginx -> api -> litellm -> demo-echo answered: [demo-echo:"),
        "scripts/up --demo ends with a working completion:\n{up_text}"
    );
    for step in [
        "admin create-user --email",
        "/api/admin/users/$USER_ID/credits",
        "/v1/chat/completions",
        "openai.OpenAI(base_url=",
    ] {
        assert!(up_text.contains(step), "up prints the first step {step:?}:\n{up_text}");
    }
    let key = up_text
        .lines()
        .find_map(|l| l.split_once("API key, shown once, keep it:"))
        .map(|(_, k)| k.trim().to_owned())
        .unwrap_or_else(|| panic!("up prints the demo admin's key:\n{up_text}"));
    let auth = format!("Authorization: Bearer {key}");

    // up's completion was billed: the 5.00 USD top-up less its cost, once it settled.
    let five = Decimal::new(500, 2);
    let after_first = eventually("up's demo completion is billed", Duration::from_secs(60), || {
        Some(balance(project, &key)).filter(|b| *b < five)
    });

    // A streamed completion with usage: the reply from demo-echo, the cost in the last chunk.
    let body = r#"{"model": "demo-echo", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "streamed hello"}]}"#;
    let (code, sse) = project.curl(
        "api",
        "/v1/chat/completions",
        &["-N", "-H", &auth, "-H", "Content-Type: application/json", "-d", body],
    );
    assert_eq!(code, "200", "{sse}");
    assert!(sse.contains("streamed") && sse.contains("demo-echo"), "the stand-in's reply: {sse}");
    let cost = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find_map(|c| c["usage"]["cost_usd"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("the final usage chunk carries cost_usd: {sse}"));
    let cost = Decimal::from_str(&cost).unwrap();
    assert!(cost > Decimal::ZERO, "{sse}");
    let expected = after_first - cost;
    eventually("the streamed call is billed exactly its cost_usd", Duration::from_secs(60), || {
        Some(balance(project, &key)).filter(|b| *b == expected)
    });

    // Prometheus scrapes both calls from the API and LiteLLM with its key.
    eventually("Prometheus shows the demo-echo calls", Duration::from_secs(120), || {
        prom_value(project, r#"sum(pr_llm_calls_total{model="demo-echo",status="success"})"#).filter(|v| *v >= 2.0)
    });
    eventually("Prometheus scrapes LiteLLM", Duration::from_secs(120), || {
        prom_value(project, r#"up{job="litellm"}"#).filter(|v| *v == 1.0)
    });
}

/// `docker compose --profile observability ARGS` from `compose/`, as the spec writes it, with
/// this project's env file (the scripts' `PR_ENV_FILE`).
fn compose_in_compose_dir(project: &Project, args: &[&str]) {
    let mut words = project.compose.split(' ');
    let out = Command::new(words.next().unwrap())
        .args(words)
        .arg("--env-file")
        .arg(&project.env_file)
        .args(["--profile", "observability"])
        .args(args)
        .current_dir(repo_root().join("compose"))
        .env("COMPOSE_PROJECT_NAME", &project.name)
        .env("TLS_DIR", project.dir.path().join("tls"))
        .env("ACME_WEBROOT", project.dir.path().join("acme"))
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .output()
        .expect("compose runs");
    assert!(out.status.success(), "{} --profile observability {args:?}: {}", project.compose, text(&out));
}

/// The state of each container of a service of the project (by compose labels: the API's
/// scaled replicas have no fixed name), "running" for a running one.
fn states(project: &Project, service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.State}}"])
        .args(["--filter", &format!("label=com.docker.compose.project={}", project.name)])
        .args(["--filter", &format!("label=com.docker.compose.service={service}")])
        .output()
        .expect("docker runs");
    assert!(out.status.success(), "docker ps: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// None: no container of the service; else whether it runs.
fn running(project: &Project, service: &str) -> Option<bool> {
    let states = states(project, service);
    (!states.is_empty()).then(|| states.iter().all(|s| s == "running"))
}

fn assert_base_stack_serves(project: &Project, replicas: usize, after: &str) {
    for service in ["postgres", "redis", "litellm", "nginx"] {
        assert_eq!(running(project, service), Some(true), "{service} runs after {after}");
    }
    assert_eq!(states(project, "api"), vec!["running"; replicas], "every API replica runs after {after}");
    let (code, body) = project.curl("api", "/readyz", &[]);
    assert_eq!(code, "200", "the API answers through nginx after {after}: {body}");
}

pub fn assert_spec_profile_commands(project: &Project, replicas: usize) {
    compose_in_compose_dir(project, &["stop", "prometheus", "grafana"]);
    assert_eq!(running(project, "prometheus"), Some(false), "stop prometheus grafana");
    assert_base_stack_serves(project, replicas, "stop prometheus grafana");

    compose_in_compose_dir(project, &["rm", "-sf", "prometheus", "grafana"]);
    assert_eq!(running(project, "prometheus"), None, "rm -sf prometheus grafana removes the container");
    assert_base_stack_serves(project, replicas, "rm -sf prometheus grafana");

    // `up -d` of the profile; Grafana has no offline image here, so the others by name.
    compose_in_compose_dir(project, &["up", "-d", "prometheus", "alertmanager"]);
    let auth = format!("prometheus:{}", project.env_get("PROMETHEUS_BASIC_AUTH_PASSWORD"));
    eventually("Prometheus is back behind nginx", Duration::from_secs(120), || {
        let (code, _) = project.curl("prometheus", "/-/ready", &["-u", &auth]);
        (code == "200").then_some(())
    });
    assert_base_stack_serves(project, replicas, "--profile observability up -d");
}

pub fn assert_no_demo_removes_the_stand_in(project: &Project, replicas: usize) {
    let up = project.script("up", &["--offline", "--no-demo", "--timeout", "240"]);
    let up_text = text(&up);
    assert!(up.status.success(), "scripts/up --offline --no-demo failed:\n{up_text}");
    assert_eq!(running(project, "demo-echo"), None, "--no-demo removes demo-echo");
    assert_eq!(project.env_get("DEMO_PROFILE"), "off");
    let hint = up_text
        .lines()
        .filter(|l| l.contains("LITELLM_UPSTREAM_MODEL") && l.contains("vLLM") && l.contains("Ollama"))
        .count();
    assert_eq!(hint, 1, "one line says how to point the catalog at a real model:\n{up_text}");
    assert!(up_text.contains("\"model\": \"default\""), "the first steps call model default:\n{up_text}");
    assert!(!up_text.contains("demo: completion"), "no demo call without --demo:\n{up_text}");
    assert_base_stack_serves(project, replicas, "scripts/up --no-demo");
}
