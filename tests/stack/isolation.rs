//! What compose's networks isolate, probed from inside the running containers of a compose
//! project (the one `compose.rs` brings up with `scripts/up`): a TCP connection to an address
//! on a network the prober is not on must fail, and every probe that must fail has a twin
//! from a container on that network that must succeed, so no probe passes for want of a
//! listener or a working probe. Addresses, not names: a container cannot resolve the names of
//! a network it is not on, and a failed lookup would pass for isolation.

use std::{collections::BTreeMap, process::Command};

/// Each network's address of a container, by the network's compose name (`db`, `obs`, ...).
pub fn addresses(project: &str, service: &str) -> BTreeMap<String, String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{json .NetworkSettings.Networks}}", &format!("{project}-{service}")])
        .output()
        .expect("docker inspect runs");
    assert!(out.status.success(), "docker inspect {project}-{service}: {}", String::from_utf8_lossy(&out.stderr));
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

/// The image the probes run in (bash, timeout), from `scripts/build-images base`.
const PROBE_IMAGE: &str = "privaterouter/base:bookworm";

/// Whether `from`'s container opens a TCP connection to `ip:port`: bash's /dev/tcp, three
/// seconds (a dropped SYN never answers), run in a probe container that shares `from`'s network
/// namespace, so the probe does not depend on what `from`'s own image has. Anything but a
/// connection, a refusal or a timeout (the probe could not run) fails the test instead of
/// passing for isolation.
fn connects(project: &str, from: &str, ip: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", &format!("container:{project}-{from}"), "--label"])
        .arg(format!("{}=1", privaterouter_tests::TEST_LABEL))
        .args([PROBE_IMAGE, "timeout", "3", "bash", "-c", &script])
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

/// Compose's claims (compose/docker-compose.yml, "Networks"): the ingress reaches neither the
/// API's metrics listener nor the database; the API reaches nothing on `obs`.
const CLAIMS: &[Claim] = &[
    Claim { target: "api", network: "metrics", port: 9100, outsider: "nginx", member: "prometheus" },
    Claim { target: "postgres", network: "db", port: 5432, outsider: "nginx", member: "api" },
    Claim { target: "prometheus", network: "obs", port: 9090, outsider: "api", member: "nginx" },
    Claim { target: "alertmanager", network: "obs", port: 9093, outsider: "api", member: "nginx" },
];

/// Probes every claim against the running project; panics with all that do not hold.
pub fn assert_networks_isolate(project: &str) {
    let mut failures = Vec::new();
    for c in CLAIMS {
        let ip = addresses(project, c.target).remove(c.network).unwrap_or_else(|| {
            panic!("{} is not on the {} network: {:?}", c.target, c.network, addresses(project, c.target))
        });
        let what = format!("{}'s {} address {ip}:{}", c.target, c.network, c.port);
        if !connects(project, c.member, &ip, c.port) {
            failures.push(format!("positive control: {} (on {}) cannot reach {what}", c.member, c.network));
        }
        if connects(project, c.outsider, &ip, c.port) {
            failures.push(format!("{} reaches {what}", c.outsider));
        }
    }
    assert!(failures.is_empty(), "network isolation:\n{}", failures.join("\n"));
}
