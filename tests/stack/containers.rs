//! The containers compose starts, as compose itself resolves the file (`config` with every
//! profile, `.env.example`'s settings): every service drops all capabilities, runs with
//! no-new-privileges, a memory limit, a process limit, sized tmpfs mounts, a read-only root
//! filesystem and a non-root user, except where a list below says why not. A weakened copy
//! of the file fails the check for exactly what was weakened.

use std::{path::Path, process::Command};

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::{TempDir, repo_root};
use privaterouter_tests::random_hex;

/// Services that start as root, and why.
const ROOT_USER: &[(&str, &str)] = &[
    ("postgres", "the entrypoint chowns the data directory, then runs PostgreSQL as postgres"),
    ("nginx", "the master process binds 80 and 443 and reads the TLS key; its workers run as www-data"),
];
/// Services with a writable root filesystem, and why (none).
const WRITABLE_ROOT: &[(&str, &str)] = &[];
/// Services whose tmpfs mounts have no size, and why (none).
const UNSIZED_TMPFS: &[(&str, &str)] = &[];

/// `docker compose` when the v2 plugin is there, else `docker-compose` (as scripts/lib/stack.sh).
fn compose() -> Command {
    let v2 = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

/// `compose config` of `file` with every profile, the settings of `.env.example` and a
/// placeholder for each secret it leaves empty; the parsed `services:` map.
fn services(file: &Path, dir: &TempDir) -> Vec<(String, Yaml)> {
    let example = std::fs::read_to_string(repo_root().join("compose/.env.example")).unwrap();
    let env: String = example
        .lines()
        .map(|l| {
            if l.ends_with('=') && !l.starts_with('#') {
                format!("{l}placeholder{}\n", random_hex(8))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let env_file = dir.path().join("config.env");
    std::fs::write(&env_file, env).unwrap();
    let out = compose()
        .arg("--env-file")
        .arg(&env_file)
        .arg("-f")
        .arg(file)
        .args(["--profile", "observability", "--profile", "demo", "config"])
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .output()
        .expect("docker compose or docker-compose runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "compose config of {file:?}: {}", String::from_utf8_lossy(&out.stderr));
    let doc = YamlLoader::load_from_str(&text).expect("compose config prints YAML").remove(0);
    let services = doc["services"].as_hash().expect("a services map");
    services.iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone())).collect()
}

/// Scalars as compose prints them (strings, numbers, booleans) in a comparable form.
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn list(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().filter_map(scalar).collect()).unwrap_or_default()
}

fn excepted(list: &[(&str, &str)], service: &str) -> bool {
    list.iter().any(|(s, _)| *s == service)
}

/// What a service's settings lack, as "service: what" lines.
fn problems(services: &[(String, Yaml)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, s) in services {
        let mut lack = |what: &str| out.push(format!("{name}: {what}"));
        if !list(&s["cap_drop"]).iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            lack("cap_drop ALL");
        }
        if !list(&s["security_opt"])
            .iter()
            .any(|o| matches!(o.as_str(), "no-new-privileges:true" | "no-new-privileges=true" | "no-new-privileges"))
        {
            lack("security_opt no-new-privileges");
        }
        let limits = &s["deploy"]["resources"]["limits"];
        let positive = |y: &Yaml| scalar(y).is_some_and(|v| !v.is_empty() && v != "0" && !v.starts_with('-'));
        if !positive(&s["mem_limit"]) && !positive(&limits["memory"]) {
            lack("mem_limit");
        }
        if !positive(&s["pids_limit"]) && !positive(&limits["pids"]) {
            lack("pids_limit");
        }
        if s["read_only"] != Yaml::Boolean(true) && !excepted(WRITABLE_ROOT, name) {
            lack("read_only root filesystem");
        }
        let user = scalar(&s["user"]).unwrap_or_default();
        let uid = user.split(':').next().unwrap_or("");
        if (uid.is_empty() || uid == "0" || uid == "root") && !excepted(ROOT_USER, name) {
            lack("a non-root user");
        }
        if !excepted(UNSIZED_TMPFS, name) {
            for mount in list(&s["tmpfs"]) {
                if !mount.split_once(':').is_some_and(|(_, opts)| opts.split(',').any(|o| o.starts_with("size="))) {
                    lack(&format!("a size on tmpfs {mount}"));
                }
            }
        }
    }
    out
}

#[test]
fn every_compose_service_is_confined() {
    let dir = TempDir::new(&format!("prtest-containers-{}", random_hex(4)));
    let services = services(&repo_root().join("compose/docker-compose.yml"), &dir);
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for expected in
        ["postgres", "api", "redis", "litellm", "demo-echo", "nginx", "prometheus", "alertmanager", "grafana"]
    {
        assert!(names.contains(&expected), "compose config lists {expected} (every profile): {names:?}");
    }
    for (service, why) in ROOT_USER.iter().chain(WRITABLE_ROOT).chain(UNSIZED_TMPFS) {
        assert!(names.contains(service), "exception for a service compose does not have: {service} ({why})");
    }
    let found = problems(&services);
    assert!(found.is_empty(), "compose/docker-compose.yml:\n{}", found.join("\n"));
}

/// Replaces `from` by `to` inside one service's block of a compose file (exactly once there):
/// from its `  name:` line to the next line indented less than its keys.
fn weaken(compose: &str, service: &str, from: &str, to: &str) -> String {
    let lines: Vec<&str> = compose.split_inclusive('\n').collect();
    let first =
        lines.iter().position(|l| *l == format!("  {service}:\n")).unwrap_or_else(|| panic!("no service {service}"));
    let last = lines[first + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && !l.starts_with("    "))
        .map_or(lines.len(), |n| first + 1 + n);
    let block = lines[first..last].concat();
    assert_eq!(block.matches(from).count(), 1, "service {service} should contain exactly once: {from:?}");
    format!("{}{}{}", lines[..first].concat(), block.replacen(from, to, 1), lines[last..].concat())
}

#[test]
fn a_weakened_compose_file_fails_the_container_check() {
    let dir = TempDir::new(&format!("prtest-containers-{}", random_hex(4)));
    let committed = std::fs::read_to_string(repo_root().join("compose/docker-compose.yml")).unwrap();
    let cases = [
        ("litellm", "    cap_drop:\n      - ALL\n", "", "litellm: cap_drop ALL"),
        (
            "litellm",
            "    <<: *defaults\n",
            "    <<: *defaults\n    security_opt: []\n",
            "litellm: security_opt no-new-privileges",
        ),
        ("alertmanager", "    mem_limit: ${ALERTMANAGER_MEM_LIMIT:-256m}\n", "", "alertmanager: mem_limit"),
        ("prometheus", "    pids_limit: 256\n", "", "prometheus: pids_limit"),
        ("demo-echo", "    mem_limit: ${DEMO_ECHO_MEM_LIMIT:-64m}\n", "", "demo-echo: mem_limit"),
        ("api", "    read_only: true\n", "", "api: read_only root filesystem"),
        ("grafana", "    user: \"472:0\"\n", "", "grafana: a non-root user"),
        ("litellm", "    user: \"65534:65534\"\n", "    user: \"0:0\"\n", "litellm: a non-root user"),
        ("api", "      - /tmp:size=16m\n", "      - /tmp\n", "api: a size on tmpfs /tmp"),
    ];
    for (service, from, to, expected) in cases {
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(&file, weaken(&committed, service, from, to)).unwrap();
        let found = problems(&services(&file, &dir));
        assert_eq!(found, vec![expected.to_owned()], "weakened {service} ({from:?} -> {to:?})");
    }
}
