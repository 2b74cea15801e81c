//! The compose file itself, brought up the way an operator does: `scripts/up --offline --demo`
//! with the repository's `compose/docker-compose.yml`, then `scripts/down --volumes --yes`;
//! once under Compose v2 and once under docker-compose 1.29 (`PR_COMPOSE`).
//!
//! Everything the test generates stays in a temp dir: the env file (`PR_ENV_FILE`), the
//! certificates (`TLS_DIR`) and the ACME webroot; a unique `COMPOSE_PROJECT_NAME`
//! (`prtest-compose-*`), subnets picked not to overlap any Docker network or host route, and
//! nginx on free high loopback ports, so it runs next to any other stack. The image variables
//! are preset to the offline images (`scripts/test` builds them), as `scripts/up` records them
//! after its first offline run, so `up` never starts a cargo build here; Grafana has no offline
//! image and is left out, which `up` must say. The first completion (demo profile), its bill and
//! its metrics, and the spec's profile commands run from `compose/` are in `first_call.rs`. If the test fails, the guard's drop
//! runs `scripts/down --volumes --yes` and then removes whatever still carries the project label.
//!
//! While the project runs, the test also checks what compose confines: the API's database
//! session is its own role, no superuser, and the API never gets the superuser's password;
//! postgres keeps only the capabilities its entrypoint needs; nginx's TLS mount holds no CA
//! key; and the networks isolate what compose says they isolate (`isolation.rs`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use privaterouter_tests::{free_port, images, random_hex};

use crate::{
    first_call,
    harness::{TempDir, api_image, redis_image, repo_root},
    isolation,
};

const DOMAIN: &str = "privaterouter.test";
/// More than one, so that every check sees a scaled API (no fixed name or address).
const API_REPLICAS: usize = 2;

pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// IPv4 CIDR as (network, prefix length).
fn cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.trim().split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    (len <= 32).then(|| (u32::from(addr) & (u32::MAX.checked_shl(32 - len).unwrap_or(0)), len))
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    a.0 & mask == b.0 & mask
}

/// Every IPv4 network in use here: Docker networks' subnets and the host's routes.
fn used_networks() -> Vec<(u32, u32)> {
    let ids = docker(&["network", "ls", "-q"]);
    // One at a time: a network of another test may go between `ls` and `inspect`.
    let mut used: Vec<(u32, u32)> = ids
        .split_whitespace()
        .filter_map(|id| {
            Command::new("docker")
                .args(["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", id])
                .output()
                .ok()
        })
        .flat_map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(cidr).collect::<Vec<_>>())
        .collect();
    if let Ok(out) = Command::new("ip").args(["-4", "route"]).output() {
        used.extend(
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).filter_map(cidr),
        );
    }
    used
}

/// Two adjacent /24s (edge, metrics) in 10.200.0.0–10.250.255.0 that nothing here uses.
fn free_subnets() -> (String, String) {
    let used = used_networks();
    for _ in 0..50 {
        let a = 200 + rand::random::<u8>() % 51;
        let b = (rand::random::<u8>() / 2) * 2;
        let pair = cidr(&format!("10.{a}.{b}.0/23")).unwrap();
        if !used.iter().any(|u| overlaps(*u, pair)) {
            return (format!("10.{a}.{b}"), format!("10.{a}.{}", b + 1));
        }
    }
    panic!("no free 10.x /23 found among {used:?}");
}

/// The compose project under test; dropping it takes it down (also when the test panics).
pub(crate) struct Project {
    pub(crate) name: String,
    pub(crate) dir: TempDir,
    pub(crate) env_file: PathBuf,
    https_port: u16,
    /// The compose command the scripts use (`PR_COMPOSE`): "docker compose" or "docker-compose".
    pub(crate) compose: &'static str,
    down: bool,
}

impl Project {
    fn new(compose: &'static str) -> Self {
        let name = format!("prtest-compose-{}", random_hex(4));
        let dir = TempDir::new(&name);
        let (edge, metrics) = free_subnets();
        let tls = dir.path().join("tls");
        let acme = dir.path().join("acme");
        let https_port = free_port();
        let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
        let overrides: BTreeMap<&str, String> = [
            ("COMPOSE_PROJECT_NAME", name.clone()),
            ("PR_DOMAIN", DOMAIN.into()),
            ("NGINX_BIND_ADDR", "127.0.0.1".into()),
            ("NGINX_HTTP_PORT", free_port().to_string()),
            ("NGINX_HTTPS_PORT", https_port.to_string()),
            ("TLS_DIR", path(&tls)),
            ("ACME_WEBROOT", path(&acme)),
            ("EDGE_SUBNET", format!("{edge}.0/24")),
            ("EDGE_DYNAMIC_RANGE", format!("{edge}.128/25")),
            ("EDGE_NGINX_IP", format!("{edge}.10")),
            ("METRICS_SUBNET", format!("{metrics}.0/24")),
            ("METRICS_DYNAMIC_RANGE", format!("{metrics}.128/25")),
            ("API_IMAGE", {
                let (name, tag) = api_image();
                format!("{name}:{tag}")
            }),
            ("REDIS_IMAGE", redis_image()),
            ("API_REPLICAS", API_REPLICAS.to_string()),
            // The rolling-restart load comes from one address: above nginx's per-address limit.
            ("API_RATE_LIMIT", "500r/s".into()),
            ("API_RATE_BURST", "500".into()),
            ("POSTGRES_IMAGE", images::POSTGRES.reference()),
            ("NGINX_IMAGE", images::NGINX.reference()),
            ("PROMETHEUS_IMAGE", images::PROMETHEUS.reference()),
            ("ALERTMANAGER_IMAGE", images::ALERTMANAGER.reference()),
            ("LITELLM_IMAGE", images::LITELLM.reference()),
            ("DEMO_ECHO_IMAGE", images::DEMO_ECHO.reference()),
        ]
        .into_iter()
        .collect();
        // .env.example with these values put in place (secrets stay empty: `up` generates them).
        let example = std::fs::read_to_string(repo_root().join("compose/.env.example")).unwrap();
        let mut seen = Vec::new();
        let mut env: String = example
            .lines()
            .map(|line| match line.split_once('=') {
                Some((key, _)) if overrides.contains_key(key) => {
                    seen.push(key.to_owned());
                    format!("{key}={}\n", overrides[key])
                }
                _ => format!("{line}\n"),
            })
            .collect();
        for (key, value) in &overrides {
            if !seen.iter().any(|k| k == key) {
                env.push_str(&format!("{key}={value}\n"));
            }
        }
        let env_file = dir.path().join("stack.env");
        std::fs::write(&env_file, env).unwrap();
        Self { name, dir, env_file, https_port, compose, down: false }
    }

    /// `scripts/<script> ARGS` for this project only.
    pub(crate) fn script(&self, script: &str, args: &[&str]) -> Output {
        Command::new(repo_root().join("scripts").join(script))
            .args(args)
            .env("PR_ENV_FILE", &self.env_file)
            .env("PR_COMPOSE", self.compose)
            // The shell's environment beats the env file in compose: pin what must not leak in.
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("TLS_DIR", self.dir.path().join("tls"))
            .env("ACME_WEBROOT", self.dir.path().join("acme"))
            .env_remove("DEV_CA_DIR")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROFILES")
            .output()
            .unwrap_or_else(|e| panic!("scripts/{script}: {e}"))
    }

    pub(crate) fn env_get(&self, key: &str) -> String {
        let env = std::fs::read_to_string(&self.env_file).unwrap();
        // The last assignment wins, as in scripts/lib/stack.sh's env_get.
        env.lines().rev().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or("").to_owned()
    }

    /// Containers, networks and volumes carrying this project's compose label.
    fn leftovers(&self) -> BTreeMap<&'static str, Vec<String>> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let list = |args: &[&str]| -> Vec<String> { docker(args).lines().map(str::to_owned).collect() };
        BTreeMap::from([
            ("containers", list(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"])),
            ("networks", list(&["network", "ls", "--filter", &label, "--format", "{{.Name}}"])),
            ("volumes", list(&["volume", "ls", "--filter", &label, "--format", "{{.Name}}"])),
        ])
    }

    /// Each API replica's sessions (from its address on the `db` network) use its own role, which
    /// is no superuser, and its environment holds neither the superuser's password nor its variable.
    fn assert_api_is_no_superuser(&self) {
        let replicas = isolation::containers(&self.name, "api");
        assert_eq!(replicas.len(), API_REPLICAS, "API replicas running: {replicas:?}");
        for api in &replicas {
            self.assert_replica_is_no_superuser(api);
        }
    }

    fn assert_replica_is_no_superuser(&self, api: &str) {
        let api_ip = isolation::addresses(&self.name, api).remove("db").expect("the API is on the db network");
        let query = format!(
            "SELECT a.usename, r.rolsuper FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid \
             WHERE a.client_addr = '{api_ip}'"
        );
        let postgres = format!("{}-postgres", self.name);
        let sessions = docker(&[
            "exec",
            &postgres,
            "psql",
            "-U",
            "privaterouter",
            "-d",
            "privaterouter",
            "-AtF",
            " ",
            "-c",
            &query,
        ]);
        let sessions: Vec<&str> = sessions.lines().collect();
        assert!(!sessions.is_empty(), "the API has no session open (it answered /readyz)");
        assert!(
            sessions.iter().all(|s| *s == "privaterouter_api f"),
            "the API's sessions (role, superuser): {sessions:?}"
        );

        let env: Vec<String> = serde_json::from_str(&docker(&["inspect", "-f", "{{json .Config.Env}}", api])).unwrap();
        let superuser_password = self.env_get("POSTGRES_PASSWORD");
        assert!(
            !env.iter().any(|e| e.starts_with("POSTGRES_PASSWORD") || e.contains(&superuser_password)),
            "the API's environment holds the superuser password: {:?}",
            env.iter().map(|e| e.split('=').next().unwrap_or_default()).collect::<Vec<_>>()
        );
    }

    /// Redis demands its password, persists nothing, and its password is on no command line:
    /// not redis-server's (docker inspect, /proc/1/cmdline) nor the healthcheck's.
    fn assert_redis_confined(&self) {
        let redis = isolation::container(&self.name, "redis");
        let password = self.env_get("REDIS_PASSWORD");
        let cli = |auth: bool, args: &[&str]| -> String {
            let mut cmd = vec!["exec"];
            let env = format!("REDISCLI_AUTH={password}");
            if auth {
                cmd.extend(["-e", &env]);
            }
            cmd.extend([redis.as_str(), "redis-cli", "-h", "127.0.0.1"]);
            cmd.extend(args);
            let out = Command::new("docker").args(&cmd).output().expect("docker exec runs");
            text(&out)
        };
        let anonymous = cli(false, &["ping"]);
        assert!(anonymous.contains("NOAUTH"), "redis answers without its password: {anonymous}");
        assert_eq!(cli(true, &["ping"]).trim(), "PONG");
        assert_eq!(
            cli(true, &["config", "get", "save"]).lines().collect::<Vec<_>>(),
            ["save", ""],
            "RDB snapshots are off"
        );
        assert_eq!(cli(true, &["config", "get", "appendonly"]).lines().collect::<Vec<_>>(), ["appendonly", "no"]);

        let inspect = docker(&["inspect", "-f", "{{json .Path}} {{json .Args}} {{json .Config.Healthcheck}}", &redis]);
        assert!(!inspect.contains(&password), "the Redis password is on a command line: {inspect}");
        let cmdline = docker(&["exec", &redis, "cat", "/proc/1/cmdline"]);
        assert!(!cmdline.contains(&password), "redis-server's command line holds the password");
        assert!(cmdline.contains("redis-server"), "{cmdline}");
    }

    /// Prometheus has discovered every API replica through DNS and scrapes each (`up` is 1).
    fn assert_prometheus_scrapes_every_replica(&self) {
        let password = self.env_get("PROMETHEUS_BASIC_AUTH_PASSWORD");
        let auth = format!("prometheus:{password}");
        let query = "/api/v1/query?query=up%7Bjob%3D%22privaterouter-api%22%7D";
        // A poll: scrapes come every 15 s, a new replica's first one up to 15 s after discovery.
        let what = format!("Prometheus scrapes {API_REPLICAS} API targets, each up");
        privaterouter_tests::eventually_blocking(&what, std::time::Duration::from_secs(90), || {
            let (code, body) = self.curl("prometheus", query, &["-u", &auth]);
            assert_eq!(code, "200", "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let up: Vec<(String, String)> = v["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["metric"]["instance"].as_str().unwrap_or("").to_owned(), s["value"][1].to_string()))
                .collect();
            let all_up = up.len() == API_REPLICAS && up.iter().all(|(_, v)| v == "\"1\"");
            if all_up { Ok(()) } else { Err(format!("{up:?}")) }
        })
    }

    /// Postgres' bounding capability set (what any of its processes could ever hold) is the
    /// entrypoint's five: CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID.
    fn assert_postgres_capabilities(&self) {
        let status = docker(&["exec", &format!("{}-postgres", self.name), "cat", "/proc/1/status"]);
        let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).expect("CapBnd in /proc/1/status");
        let bits = u64::from_str_radix(bounding.trim(), 16).unwrap();
        let expected = [0, 1, 3, 6, 7].iter().fold(0u64, |m, cap| m | 1 << cap);
        assert_eq!(
            bits, expected,
            "postgres' capabilities: {bits:#x}, expected {expected:#x} (CHOWN DAC_OVERRIDE FOWNER SETGID SETUID)"
        );
    }

    /// Inside the running nginx, the mounted TLS directory holds one private key, the server's,
    /// and nothing of the development CA's key (which the generator kept in `tls-ca/`).
    fn assert_no_ca_key_in_nginx(&self) {
        let nginx = format!("{}-nginx", self.name);
        let keys = docker(&["exec", &nginx, "grep", "-rl", "PRIVATE KEY", "/etc/privaterouter/tls"]);
        assert_eq!(
            keys.lines().collect::<Vec<_>>(),
            ["/etc/privaterouter/tls/privkey.pem"],
            "private keys nginx can read"
        );
        let ca_key = std::fs::read_to_string(self.dir.path().join("tls-ca/dev-ca.key")).unwrap();
        let body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
        let mounted: String =
            docker(&["exec", &nginx, "find", "/etc/privaterouter/tls", "-type", "f", "-exec", "cat", "{}", "+"])
                .lines()
                .collect();
        assert!(!mounted.contains(&body), "the development CA's key is readable inside nginx");
    }

    /// `scripts/rolling-restart` while clients keep calling the API through nginx (an
    /// authenticated read that reaches the database, and readiness): every request is answered
    /// 200, and afterwards API_REPLICAS new replicas run and Prometheus scrapes each.
    fn assert_rolling_restart_loses_no_request(&self) {
        let before = isolation::containers(&self.name, "api");
        let created = docker(&[
            "exec",
            &before[0],
            "privaterouter-api",
            "admin",
            "create-user",
            "--email",
            "rolling@compose.test",
        ]);
        let created: serde_json::Value = serde_json::from_str(created.trim()).expect("create-user prints JSON");
        let key = created["api_key"].as_str().expect("an api_key").to_owned();

        let ca = std::fs::read(self.dir.path().join("tls/dev-ca.pem")).unwrap();
        let host = format!("api.{DOMAIN}");
        let builder = || {
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .resolve(&host, std::net::SocketAddr::from(([127, 0, 0, 1], self.https_port)))
                .timeout(std::time::Duration::from_secs(30))
        };
        let client = builder().build().unwrap();
        // For the retry: a new connection every time (every pooled idle connection may be the
        // one nginx is closing).
        let fresh = builder().pool_max_idle_per_host(0).build().unwrap();
        let base = format!("https://{host}:{}", self.https_port);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let retried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let (client, fresh, stop, key, retried) =
                    (client.clone(), fresh.clone(), stop.clone(), key.clone(), retried.clone());
                let url = if i % 2 == 0 { format!("{base}/v1/models") } else { format!("{base}/readyz") };
                rt.spawn(async move {
                    let mut statuses = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // A GET that got no answer at all is retried once on a new connection, as
                        // HTTP clients do: nginx closes idle client connections when it reloads
                        // for a changed replica set, and a request can cross that close on the
                        // wire (it never reached nginx, so nothing was lost or done twice).
                        let mut answer = client.get(&url).bearer_auth(&key).send().await;
                        if answer.is_err() {
                            retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            answer = fresh.get(&url).bearer_auth(&key).send().await;
                        }
                        match answer {
                            Ok(r) => statuses.push(r.status().as_u16().to_string()),
                            Err(e) => statuses.push(format!("no answer: {e:?}")),
                        }
                        // Paced well under the raised per-address limit (a 429 is not what this measures).
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    statuses
                })
            })
            .collect();

        let out = self.script("rolling-restart", &["--timeout", "120"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(out.status.success(), "scripts/rolling-restart failed:\n{}", text(&out));
        let statuses: Vec<String> = rt.block_on(async {
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.await.unwrap());
            }
            all
        });
        let failed: Vec<&String> = statuses.iter().filter(|s| *s != "200").collect();
        assert!(statuses.len() > 20, "too little load to mean anything: {statuses:?}");
        assert!(
            failed.is_empty(),
            "{} of {} requests failed during the rolling restart: {failed:?}",
            failed.len(),
            statuses.len()
        );
        eprintln!(
            "rolling restart: {} requests, all answered 200 ({} retried once after a closed connection)",
            statuses.len(),
            retried.load(std::sync::atomic::Ordering::Relaxed)
        );

        let after = isolation::containers(&self.name, "api");
        assert_eq!(after.len(), API_REPLICAS, "{after:?}");
        assert!(after.iter().all(|id| !before.contains(id)), "every replica was replaced: {before:?} -> {after:?}");
        self.assert_prometheus_scrapes_every_replica();
    }

    /// `curl` as an operator would: the dev CA, api./prometheus.<domain> resolved to loopback.
    pub(crate) fn curl(&self, host: &str, path: &str, extra: &[&str]) -> (String, String) {
        let name = format!("{host}.{DOMAIN}");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.dir.path().join("tls/dev-ca.pem"))
            .args(["--resolve", &format!("{name}:{}:127.0.0.1", self.https_port)])
            .args(extra)
            .arg(format!("https://{name}:{}{path}", self.https_port))
            .output()
            .expect("curl runs");
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
        assert!(out.status.success(), "curl https://{name}{path}: {}", text(&out));
        (code.to_owned(), body.to_owned())
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        let out = self.script("down", &["--volumes", "--yes"]);
        if !out.status.success() {
            eprintln!("cleanup: scripts/down failed: {}", text(&out));
        }
        // Whatever down could not remove (a half-started project).
        let label = format!("label=com.docker.compose.project={}", self.name);
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            let Ok(out) = Command::new("docker").args(&args).output() else { continue };
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                continue;
            }
            let rm: &[&str] = match kind {
                "container" => &["rm", "-fv"],
                other => &[other, "rm"],
            };
            let _ = Command::new("docker").args(rm).args(&ids).output();
        }
    }
}

/// A fingerprint of what the test must never write: `compose/.env` and `tls/`.
fn repo_state() -> Vec<(PathBuf, Option<(u64, std::time::SystemTime)>)> {
    let root = repo_root();
    let mut paths = vec![root.join("compose/.env"), root.join("tls-ca")];
    if let Ok(entries) = std::fs::read_dir(root.join("tls")) {
        paths.extend(entries.flatten().map(|e| e.path()));
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok().map(|m| (m.len(), m.modified().unwrap()));
            (p, meta)
        })
        .collect()
}

/// Under Compose v2 (`docker compose`, what users run; scripts/test installs it).
#[test]
fn scripts_up_offline_demo_under_compose_v2() {
    let v2 = Command::new("docker").args(["compose", "version"]).output().expect("docker runs");
    assert!(v2.status.success(), "Compose v2 is not installed (scripts/test installs it): {}", text(&v2));
    scripts_up_offline_demo_serves_a_first_completion_and_down_leaves_nothing("docker compose");
}

/// Under Debian's docker-compose 1.29, while it is installed (Debian still ships it).
#[test]
fn scripts_up_offline_demo_under_compose_v1() {
    if Command::new("docker-compose").arg("version").output().is_err() {
        eprintln!("docker-compose (v1) is not installed here: nothing to check under v1");
        return;
    }
    scripts_up_offline_demo_serves_a_first_completion_and_down_leaves_nothing("docker-compose");
}

fn scripts_up_offline_demo_serves_a_first_completion_and_down_leaves_nothing(compose: &'static str) {
    let started = std::time::Instant::now();
    let repo_before = repo_state();
    let mut project = Project::new(compose);

    let up = project.script("up", &["--offline", "--demo", "--timeout", "240"]);
    let up_text = text(&up);
    assert!(up.status.success(), "scripts/up --offline --demo ({compose}) failed:\n{up_text}");
    assert!(up_text.contains("all started services are healthy"), "{up_text}");
    assert!(up_text.contains("Not started: grafana"), "up names the service it has no offline image for:\n{up_text}");
    eprintln!("scripts/up took {:.1} s", started.elapsed().as_secs_f64());

    // Secrets generated into the temp env file, certificates into the temp TLS dir.
    for key in [
        "POSTGRES_PASSWORD",
        "API_DB_PASSWORD",
        "PR_METRICS_TOKEN",
        "PROMETHEUS_BASIC_AUTH_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "REDIS_PASSWORD",
    ] {
        assert!(project.env_get(key).len() >= 32, "{key} was not generated into the env file");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&project.env_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the env file holds secrets");
    for file in ["tls/dev-ca.pem", "tls/fullchain.pem", "tls/privkey.pem", "tls-ca/dev-ca.key"] {
        assert!(project.dir.path().join(file).exists(), "{file} not in the temp dir");
    }

    // Six services of the project run, the API as API_REPLICAS replicas, the others each on its
    // project-named container.
    let running = docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={}", project.name),
        "--format",
        "{{.Label \"com.docker.compose.service\"}} {{.Names}}",
    ]);
    let mut running: Vec<(&str, &str)> = running.lines().filter_map(|l| l.split_once(' ')).collect();
    running.sort();
    let services: Vec<&str> = running.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        services,
        ["alertmanager", "api", "api", "demo-echo", "litellm", "nginx", "postgres", "prometheus", "redis"],
        "{running:?}"
    );
    for (service, name) in running.iter().filter(|(s, _)| *s != "api") {
        assert_eq!(*name, format!("{}-{service}", project.name));
    }

    // Through nginx over TLS, the certificate verified against the generated dev CA.
    let (code, body) = project.curl("api", "/readyz", &[]);
    assert_eq!(code, "200", "{body}");
    let (code, body) = project.curl("api", "/v1/models", &[]);
    assert_eq!(code, "401", "the API itself answered (auth required): {body}");
    assert!(body.contains("\"error\""), "an OpenAI-style error from the API: {body}");
    let (code, _) = project.curl("api", "/metrics", &[]);
    assert_eq!(code, "404", "/metrics is never public");
    let password = project.env_get("PROMETHEUS_BASIC_AUTH_PASSWORD");
    let (code, _) = project.curl("prometheus", "/-/ready", &["-u", &format!("prometheus:{password}")]);
    assert_eq!(code, "200");
    let (code, _) = project.curl("prometheus", "/-/ready", &[]);
    assert_eq!(code, "401");

    project.assert_api_is_no_superuser();
    project.assert_redis_confined();
    project.assert_prometheus_scrapes_every_replica();
    project.assert_postgres_capabilities();
    project.assert_no_ca_key_in_nginx();
    isolation::assert_networks_isolate(&project.name);
    first_call::assert_first_completion(&project, &up_text);
    project.assert_rolling_restart_loses_no_request();
    first_call::assert_spec_profile_commands(&project, API_REPLICAS);
    first_call::assert_no_demo_removes_the_stand_in(&project, API_REPLICAS);

    // Down, volumes included: nothing of the project is left (demo-echo is gone already).
    let before = project.leftovers();
    assert_eq!(before["containers"].len(), 6 + API_REPLICAS, "{before:?}");
    assert!(!before["networks"].is_empty() && !before["volumes"].is_empty(), "{before:?}");
    let down = project.script("down", &["--volumes", "--yes"]);
    assert!(down.status.success(), "scripts/down failed:\n{}", text(&down));
    project.down = true;
    let after = project.leftovers();
    assert!(after.values().all(Vec::is_empty), "left behind by scripts/down: {after:?}");

    assert_eq!(repo_state(), repo_before, "the test wrote into compose/.env or tls/ of the repository");
    eprintln!("compose up, checks and down in {:.1} s", started.elapsed().as_secs_f64());
}
