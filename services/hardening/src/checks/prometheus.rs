//! Items 3 (Prometheus login), 4 (retention) and 5 (alert rules, scrape targets, scrape
//! credentials), read from Prometheus' HTTP API through the ingress, with credentials.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::Ctx;
use crate::{Item, net::Request};

pub const AUTH: &str = "prometheus-auth";
pub const RETENTION: &str = "retention";
pub const ALERT_RULES: &str = "alert-rules";
pub const SCRAPE_TARGETS: &str = "scrape-targets";
pub const SCRAPE_AUTH: &str = "scrape-auth";

/// Prometheus' default when no retention flag is given.
pub const DEFAULT_RETENTION_SECS: u64 = 15 * 86_400;

/// The job scraping the API's internal listener: it must be up.
pub const API_JOB: &str = "privaterouter-api";
/// LiteLLM's job: it must send the master key, but LiteLLM may be absent (offline
/// deployments), so its health is reported, not required.
pub const LITELLM_JOB: &str = "litellm";

pub fn auth(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(AUTH, "Prometheus demands credentials");
    let t = ctx.target;
    let host = t.prometheus_host();
    let path = "/api/v1/status/flags";
    let url = format!("https://{}{path}", ctx.https_endpoint(&host));
    // A password nobody has: random, so a lucky guess cannot be mistaken for a check.
    let mut bytes = [0u8; 12];
    let wrong: String = match openssl::rand::rand_bytes(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => format!("pr-hardening-{}", std::process::id()),
    };
    let attempts = [
        ("without credentials", Request::get(path)),
        ("with a wrong password", Request::get(path).basic_auth(&t.prometheus_user, &wrong)),
    ];
    for (what, req) in attempts {
        match ctx.https(&host, &req) {
            Ok(r) if r.status == 401 => {
                let challenge = r.header("www-authenticate").unwrap_or("no WWW-Authenticate");
                item.note(format!("{url} {what} → 401 ({challenge})"));
            }
            Ok(r) if r.status == 200 => {
                item.fail(format!("{url} {what} → 200: Prometheus is open to anyone who can reach it"))
            }
            Ok(r) => item.fail(format!("{url} {what} → {} (expected 401)", r.status)),
            Err(e) => item.fail(format!("{url} {what}: {e}")),
        }
    }
    match &t.prometheus_password {
        None => item.note("no password given: whether the right credentials work was not checked"),
        Some(_) => match ctx.https(&host, &ctx.prometheus_request(path)) {
            Ok(r) if r.status == 200 => {
                item.note(format!("{url} as {} → 200", t.prometheus_user));
            }
            Ok(r) => item.fail(format!(
                "{url} as {} → {}: the credentials given are refused, so the checks that read Prometheus cannot run",
                t.prometheus_user, r.status
            )),
            Err(e) => item.fail(format!("{url} as {}: {e}", t.prometheus_user)),
        },
    }
    item
}

pub fn retention(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(RETENTION, "TSDB retention above the 15-day default");
    let flags = match ctx.prometheus_api("/api/v1/status/flags") {
        Ok(f) => f,
        Err(e) => {
            item.fail(e);
            return item;
        }
    };
    let flag = |name: &str| flags[name].as_str().unwrap_or("").to_string();
    let (time, old, size) =
        (flag("storage.tsdb.retention.time"), flag("storage.tsdb.retention"), flag("storage.tsdb.retention.size"));
    let secs = |v: &str| parse_duration(v).unwrap_or(0);
    let size_set = !size.is_empty() && !size.starts_with('0');
    let (effective, source) = if secs(&time) > 0 {
        (Some(secs(&time)), format!("storage.tsdb.retention.time = {time}"))
    } else if secs(&old) > 0 {
        (Some(secs(&old)), format!("storage.tsdb.retention (deprecated) = {old}"))
    } else if size_set {
        (None, format!("no time limit, storage.tsdb.retention.size = {size}"))
    } else {
        (
            Some(DEFAULT_RETENTION_SECS),
            format!("storage.tsdb.retention.time = {:?}: not set, so Prometheus keeps its 15-day default", time),
        )
    };
    match effective {
        Some(s) if s > DEFAULT_RETENTION_SECS => {
            item.note(format!("{source} ({} days)", s / 86_400));
        }
        Some(s) => item.fail(format!("{source} ({} days, not above 15)", s / 86_400)),
        None => item.note(format!("{source}: data is kept until the size cap; make sure it holds more than 15 days")),
    }
    // Prometheus' own summary of what it applies, as corroboration.
    if let Ok(info) = ctx.prometheus_api("/api/v1/status/runtimeinfo")
        && let Some(r) = info["storageRetention"].as_str()
    {
        item.note(format!("runtimeinfo storageRetention = {r}"));
    }
    item
}

/// A Prometheus duration (`90d`, `1y2w`, `36h30m`, `0s`) in whole seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (mut total, mut num) = (0u64, String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0 // milliseconds: below a second
        } else {
            match c {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                'y' => 365 * 86_400,
                _ => return None,
            }
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    num.is_empty().then_some(total)
}

/// What the checklist asks alerts for, and words that identify such a rule (in its name or
/// its expression, lower-cased).
const ALERT_KINDS: [(&str, &[&str]); 3] = [
    ("error rate", &["error", "5xx", "status=~\"5"]),
    ("latency", &["latency", "duration"]),
    ("GPU node down", &["gpu_node_up", "gpunodedown"]),
];

pub fn alert_rules(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(ALERT_RULES, "Alert rules loaded for error rate, latency and GPU node down");
    let data = match ctx.prometheus_api("/api/v1/rules") {
        Ok(d) => d,
        Err(e) => {
            item.fail(e);
            return item;
        }
    };
    let mut alerts = Vec::new();
    let mut recorded = BTreeSet::new();
    let mut files = BTreeSet::new();
    for group in data["groups"].as_array().into_iter().flatten() {
        files.insert(group["file"].as_str().unwrap_or("?").to_string());
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["name"].as_str().unwrap_or("").to_string();
            match rule["type"].as_str() {
                Some("alerting") => alerts.push(rule.clone()),
                Some("recording") => {
                    recorded.insert(name);
                }
                _ => {}
            }
        }
    }
    item.note(format!(
        "{} alerting and {} recording rules loaded from {}",
        alerts.len(),
        recorded.len(),
        if files.is_empty() { "no file".to_string() } else { files.into_iter().collect::<Vec<_>>().join(", ") }
    ));
    for (kind, words) in ALERT_KINDS {
        let matching: Vec<&str> = alerts
            .iter()
            .filter(|r| {
                let text = format!("{} {}", r["name"], r["query"]).to_lowercase();
                words.iter().any(|w| text.contains(w))
            })
            .map(|r| r["name"].as_str().unwrap_or("?"))
            .collect();
        if matching.is_empty() {
            item.fail(format!("no alerting rule for {kind}"));
        } else {
            item.note(format!("{kind}: {}", matching.join(", ")));
        }
    }
    for rule in &alerts {
        let name = rule["name"].as_str().unwrap_or("?");
        if rule["health"] == "err" {
            item.fail(format!("{name} fails to evaluate: {}", rule["lastError"]));
        }
        // An alert on a recording rule that is not loaded is silently never firing.
        for series in recorded_names(rule["query"].as_str().unwrap_or("")) {
            if !recorded.contains(&series) {
                item.fail(format!("{name} uses {series}, which no loaded recording rule records"));
            }
        }
    }
    item
}

/// Metric names in a PromQL expression that follow the recording-rule convention
/// (`level:metric:operations`, i.e. containing a colon).
pub fn recorded_names(expr: &str) -> BTreeSet<String> {
    // Drop string literals (label values) and [...] ranges (`[5m:1m]` subqueries).
    let mut cleaned = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let mut escaped = false;
                for d in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            c => cleaned.push(c),
        }
    }
    cleaned
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains(':') && t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .map(str::to_string)
        .collect()
}

pub fn scrape_targets(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(SCRAPE_TARGETS, "Scrape targets healthy (the API's above all)");
    let data = match ctx.prometheus_api("/api/v1/targets?state=active") {
        Ok(d) => d,
        Err(e) => {
            item.fail(e);
            return item;
        }
    };
    let mut jobs: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for t in data["activeTargets"].as_array().into_iter().flatten() {
        let job = t["labels"]["job"].as_str().or(t["scrapePool"].as_str()).unwrap_or("?");
        jobs.entry(job.to_string()).or_default().push(t);
    }
    if !jobs.contains_key(API_JOB) {
        item.fail(format!("no active target in job {API_JOB}: the API is not scraped"));
    }
    for (job, targets) in &jobs {
        let up = targets.iter().filter(|t| t["health"] == "up").count();
        let line = format!("{job}: {up}/{} up", targets.len());
        let problems: Vec<String> = targets
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| {
                format!(
                    "{} is {} ({})",
                    t["scrapeUrl"].as_str().unwrap_or("?"),
                    t["health"].as_str().unwrap_or("?"),
                    t["lastError"].as_str().unwrap_or("")
                )
            })
            .collect();
        if problems.is_empty() {
            item.note(line);
        } else if job == LITELLM_JOB {
            item.note(format!(
                "{line}: {}; not required: LiteLLM may be absent (e.g. an offline stack), and no alert depends on it",
                problems.join("; ")
            ));
        } else {
            item.fail(format!("{line}: {}", problems.join("; ")));
        }
    }
    item
}

pub fn scrape_auth(ctx: &Ctx<'_>) -> Item {
    let mut item = Item::new(SCRAPE_AUTH, "The API and LiteLLM scrape jobs send a bearer token");
    let data = match ctx.prometheus_api("/api/v1/status/config") {
        Ok(d) => d,
        Err(e) => {
            item.fail(e);
            return item;
        }
    };
    let docs = match YamlLoader::load_from_str(data["yaml"].as_str().unwrap_or("")) {
        Ok(d) => d,
        Err(e) => {
            item.fail(format!("the loaded configuration is not YAML: {e}"));
            return item;
        }
    };
    let configs = docs.first().and_then(|d| d["scrape_configs"].as_vec()).cloned().unwrap_or_default();
    for job in [API_JOB, LITELLM_JOB] {
        let Some(cfg) = configs.iter().find(|c| c["job_name"].as_str() == Some(job)) else {
            item.fail(format!("no scrape job named {job}"));
            continue;
        };
        match bearer(cfg) {
            Ok(how) => item.note(format!("{job}: {how}")),
            Err(why) => item.fail(format!("{job}: {why}")),
        }
    }
    item
}

/// How a scrape config sends a bearer token, or why it does not.
fn bearer(cfg: &Yaml) -> Result<String, String> {
    let auth = &cfg["authorization"];
    if !auth.is_badvalue() && !auth.is_null() {
        let kind = auth["type"].as_str().unwrap_or("Bearer");
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!("authorization type {kind}, not Bearer"));
        }
        if let Some(file) = auth["credentials_file"].as_str() {
            return Ok(format!("authorization Bearer, credentials_file {file}"));
        }
        if auth["credentials"].as_str().is_some() {
            return Ok("authorization Bearer, inline credentials (shown as <secret>)".to_string());
        }
        return Err("authorization without credentials or credentials_file".to_string());
    }
    if let Some(file) = cfg["bearer_token_file"].as_str() {
        return Ok(format!("bearer_token_file {file}"));
    }
    if cfg["bearer_token"].as_str().is_some() {
        return Ok("bearer_token (shown as <secret>)".to_string());
    }
    if !cfg["basic_auth"].is_badvalue() {
        return Err("basic_auth instead of a bearer token".to_string());
    }
    Err("no authorization: the scrape sends no token".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_durations() {
        assert_eq!(parse_duration("90d"), Some(90 * 86_400));
        assert_eq!(parse_duration("1y2w"), Some(365 * 86_400 + 14 * 86_400));
        assert_eq!(parse_duration("36h30m"), Some(36 * 3_600 + 30 * 60));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("1500ms"), Some(0));
        assert_eq!(parse_duration("15"), None);
        assert_eq!(parse_duration("15x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn finds_recording_rule_names_in_expressions() {
        let names = recorded_names(
            r#"job:pr_http_requests_5xx:ratio_rate5m{job="a:b"} > 0.05 and max_over_time(up[5m:1m]) or rate(x_total[5m])"#,
        );
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["job:pr_http_requests_5xx:ratio_rate5m"]);
    }

    #[test]
    fn recognises_bearer_configurations() {
        let load = |s: &str| YamlLoader::load_from_str(s).unwrap().remove(0);
        let file = load("job_name: x\nauthorization:\n  type: Bearer\n  credentials_file: /run/k\n");
        assert!(bearer(&file).unwrap().contains("/run/k"));
        let inline = load("job_name: x\nauthorization:\n  credentials: <secret>\n");
        assert!(bearer(&inline).is_ok());
        let legacy = load("job_name: x\nbearer_token_file: /run/k\n");
        assert!(bearer(&legacy).is_ok());
        let none = load("job_name: x\nmetrics_path: /metrics\n");
        assert!(bearer(&none).unwrap_err().contains("no authorization"));
        let basic = load("job_name: x\nbasic_auth:\n  username: u\n");
        assert!(bearer(&basic).unwrap_err().contains("basic_auth"));
    }
}
