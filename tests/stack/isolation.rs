//! What compose's networks isolate, probed from inside the running containers of a compose
//! project (the one `compose.rs` brings up with `scripts/up`): a TCP connection to an address
//! on a network the prober is not on must fail, and every probe that must fail has a twin
//! from a container on that network that must succeed, so no probe passes for want of a
//! listener or a working probe. Addresses, not names: a container cannot resolve the names of
//! a network it is not on, and a failed lookup would pass for isolation.

use std::{collections::BTreeMap, process::Command};

use privaterouter_tests::images;

/// The running containers of a compose service (ids, sorted): one, or one per API replica.
/// By compose's labels, as scaled services have no fixed container name.
pub fn containers(project: &str, service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-q", "--no-trunc"])
        .args(["--filter", &format!("label=com.docker.compose.project={project}")])
        .args(["--filter", &format!("label=com.docker.compose.service={service}")])
        .output()
        .expect("docker ps runs");
    assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
    ids.sort();
    ids
}

/// The one running container of a service that does not scale.
pub fn container(project: &str, service: &str) -> String {
    let ids = containers(project, service);
    assert_eq!(ids.len(), 1, "{project}: expected one {service} container, found {ids:?}");
    ids[0].clone()
}

/// Each network's address of a container, by the network's compose name (`db`, `obs`, ...).
pub fn addresses(project: &str, container: &str) -> BTreeMap<String, String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{json .NetworkSettings.Networks}}", container])
        .output()
        .expect("docker inspect runs");
    assert!(out.status.success(), "docker inspect {container}: {}", String::from_utf8_lossy(&out.stderr));
    let networks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("docker inspect prints JSON");
    networks
        .as_object()
        .expect("a map of networks")
        .iter()
        .map(|(name, n)| {
            let short = name.strip_prefix(&format!("{project}_")).unwrap_or(name).to_owned();
            (short, n["IPAddress"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Whether `from`'s container (a service's, the first replica's for the api) opens a TCP connection to `ip:port`: bash's /dev/tcp, three
/// seconds (a dropped SYN never answers), run in a probe container that shares `from`'s network
/// namespace, so the probe does not depend on what `from`'s own image has. Anything but a
/// connection, a refusal or a timeout (the probe could not run) fails the test instead of
/// passing for isolation.
fn connects(project: &str, from: &str, ip: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", &format!("container:{}", containers(project, from)[0]), "--label"])
        .arg(format!("{}=1", privaterouter_tests::TEST_LABEL))
        // The probe runs in the base image (bash, timeout): `scripts/build-images base`.
        .arg(images::BASE.reference())
        .args(["timeout", "3", "bash", "-c", &script])
        .output()
        .expect("docker run runs");
    match out.status.code() {
        Some(0) => true,
        // bash: connection refused or no route; timeout: no answer.
        Some(1) | Some(124) => false,
        code => panic!(
            "the probe from {from} to {ip}:{port} did not run (exit {code:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// One isolation claim: `outsider` cannot reach `target` on `network` at `port`, while
/// `member` (on that network) can.
struct Claim {
    target: &'static str,
    network: &'static str,
    port: u16,
    outsider: &'static str,
    member: &'static str,
}

/// Compose's claims (compose/docker-compose.yml, "Networks"): the ingress reaches neither any
/// API replica's metrics listener, nor the database, nor Redis; Prometheus does not reach
/// Redis; the API reaches nothing on `obs`.
const CLAIMS: &[Claim] = &[
    Claim { target: "api", network: "metrics", port: 9100, outsider: "nginx", member: "prometheus" },
    Claim { target: "postgres", network: "db", port: 5432, outsider: "nginx", member: "api" },
    Claim { target: "redis", network: "cache", port: 6379, outsider: "nginx", member: "api" },
    Claim { target: "redis", network: "cache", port: 6379, outsider: "prometheus", member: "api" },
    Claim { target: "prometheus", network: "obs", port: 9090, outsider: "api", member: "nginx" },
    Claim { target: "alertmanager", network: "obs", port: 9093, outsider: "api", member: "nginx" },
];

/// Probes every claim against the running project; panics with all that do not hold.
pub fn assert_networks_isolate(project: &str) {
    let mut failures = Vec::new();
    for c in CLAIMS {
        let targets = containers(project, c.target);
        assert!(!targets.is_empty(), "{project}: no {} container runs", c.target);
        // Every replica of a scaled service.
        for target in &targets {
            let ip = addresses(project, target).remove(c.network).unwrap_or_else(|| {
                panic!("{} is not on the {} network: {:?}", c.target, c.network, addresses(project, target))
            });
            let what = format!("{}'s {} address {ip}:{}", c.target, c.network, c.port);
            if !connects(project, c.member, &ip, c.port) {
                failures.push(format!("positive control: {} (on {}) cannot reach {what}", c.member, c.network));
            }
            if connects(project, c.outsider, &ip, c.port) {
                failures.push(format!("{} reaches {what}", c.outsider));
            }
        }
    }
    failures.extend(metrics_listener_only_on_the_metrics_network(project));
    assert!(failures.is_empty(), "network isolation:\n{}", failures.join("\n"));
}

/// Each API replica's metrics listener is bound to its address on the metrics network
/// (PR_METRICS_INTERFACE_NET), not to a wildcard: nginx, on the edge network with the API,
/// reaches the replica's public port there but not its metrics port. The failures found.
fn metrics_listener_only_on_the_metrics_network(project: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for api in containers(project, "api") {
        let edge = addresses(project, &api).remove("edge").expect("every API replica is on the edge network");
        if !connects(project, "nginx", &edge, 8000) {
            failures.push(format!("positive control: nginx cannot reach the API's public port at {edge}:8000"));
        }
        if connects(project, "nginx", &edge, 9100) {
            failures.push(format!("nginx reaches an API replica's metrics port on the edge network ({edge}:9100)"));
        }
    }
    failures
}
