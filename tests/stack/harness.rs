//! The stack under test: postgres, the API, nginx, Prometheus and Alertmanager from the local
//! images (`scripts/build-images`), configured as `compose/docker-compose.yml` configures them,
//! from the repository's own `nginx/` and `prometheus/` (or an edited copy), on one private
//! Docker network per stack with unique container names, so stacks run side by side.
//!
//! Differences from compose, all forced by testing several stacks on one machine:
//! - one network instead of six, so there is no fixed address: the API's metrics listener binds
//!   0.0.0.0:9100 inside its container (unpublished, like compose), and PR_TRUSTED_PROXIES is
//!   left empty (no audit item depends on forwarded addresses);
//! - the service names the configuration hard-codes (`api-metrics`, `prometheus`,
//!   `alertmanager`, `litellm`, `redis`) resolve through each container's hostname, which Docker
//!   adds as a network-scoped alias; container names stay unique. Every API replica
//!   (`Kit::api_replicas`) has the hostname `api-metrics`, so that name resolves to all of them,
//!   for Prometheus' DNS discovery and for nginx (`API_UPSTREAM=api-metrics:8000`), as the
//!   `api` and `api-metrics` names do in compose;
//! - nginx publishes 80 and 443 on random loopback ports, nothing else publishes anything
//!   (testcontainers would publish every EXPOSEd port); the audit reaches the three virtual hosts
//!   through `--connect-to` rules, like curl's;
//! - data directories are tmpfs (nothing to clean up), except the billing journal, which all API
//!   replicas share in a directory of the kit (compose's `api-journal` volume): a replica started
//!   again after a SIGKILL adopts what its predecessor left there; there is no LiteLLM or
//!   Grafana: neither runs offline.
//!
//! Containers go when the `Stack` is dropped, also when a test panics; the network goes with
//! the last of them. A killed run leaves containers labelled `org.privaterouter.test=1` and
//! networks named `prtest-*`, which `scripts/test` removes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use privaterouter_hardening::{
    ConnectTo, Report, Target, audit,
    net::{self, Endpoint, Request, Response, Scheme},
};
pub use privaterouter_tests::eventually;
use privaterouter_tests::{TEST_LABEL, free_port, images, random_hex, settle};
use testcontainers::{
    ContainerAsync, ContainerRequest, GenericImage, ImageExt,
    bollard::models::{HostConfig, PortBinding},
    core::{CmdWaitFor, ExecCommand, Mount, WaitFor},
    runners::AsyncRunner,
};

pub const DOMAIN: &str = "privaterouter.test";
/// Compose's default (`PROMETHEUS_RETENTION`).
pub const RETENTION: &str = "90d";
const STARTUP: Duration = Duration::from_secs(120);

/// The API image the stack tests run: the manifest's `OFFLINE_API` (scripts/build-images api), or
/// `PR_TEST_API_IMAGE` (`name:tag`) so that two checkouts on one machine can test their own builds.
pub fn api_image() -> (String, String) {
    let image = std::env::var("PR_TEST_API_IMAGE").unwrap_or_else(|_| images::API.reference());
    let (name, tag) = image.rsplit_once(':').expect("PR_TEST_API_IMAGE is name:tag");
    (name.to_owned(), tag.to_owned())
}

/// The Redis image the stack tests run: the manifest's `OFFLINE_REDIS` (scripts/build-images redis),
/// or `PR_TEST_REDIS_IMAGE` (`name:tag`).
pub fn redis_image() -> String {
    std::env::var("PR_TEST_REDIS_IMAGE").unwrap_or_else(|_| images::REDIS.reference())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .canonicalize()
        .expect("the repository root exists")
}

/// A directory under the system temp dir, removed on drop. World-readable (0755 under the usual
/// umask), so Prometheus and Alertmanager, which run as `nobody`, can read what is mounted.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// The deployment kit as the stack will use it: the repository's config folders, or edited
/// copies of them. Every edit must find its text exactly once, so a change in the repository
/// makes the test fail loudly instead of quietly testing an unweakened config.
pub struct Kit {
    pub name: String,
    pub dir: TempDir,
    pub nginx: PathBuf,
    pub prometheus: PathBuf,
    /// `--storage.tsdb.retention.time`; `None` leaves the flag out (Prometheus' 15-day default).
    pub retention: Option<String>,
    /// Publish the API's metrics port on loopback, as a careless compose file would.
    pub publish_metrics_port: bool,
    /// The token Prometheus sends to the API; `None`: the API's own (as compose does).
    pub prometheus_token: Option<String>,
    /// A model catalog for the API, mounted where compose mounts `compose/models.toml`.
    pub models_file: Option<PathBuf>,
    /// More environment for the API container (the catalog's upstream key, the GPU poll interval).
    pub api_env: Vec<(String, String)>,
    /// More environment for nginx, over compose's defaults (e.g. a small `CONN_LIMIT_PER_IP`).
    pub nginx_env: Vec<(String, String)>,
    /// How many API containers (replicas) to run; 1 by default.
    pub api_replicas: usize,
    /// Run Redis (compose's entrypoint and confinement) and give every replica `PR_REDIS_URL`.
    pub redis: bool,
}

impl Default for Kit {
    fn default() -> Self {
        Self::new()
    }
}

impl Kit {
    /// The kit exactly as committed, with compose's defaults.
    pub fn new() -> Self {
        let name = format!("prtest-{}", random_hex(4));
        let root = repo_root();
        Self {
            dir: TempDir::new(&name),
            name,
            nginx: root.join("nginx"),
            prometheus: root.join("prometheus"),
            retention: Some(RETENTION.to_string()),
            publish_metrics_port: false,
            prometheus_token: None,
            models_file: None,
            api_env: Vec::new(),
            nginx_env: Vec::new(),
            api_replicas: 1,
            redis: false,
        }
    }

    fn own_copy(&mut self, which: &str) -> PathBuf {
        let copy = self.dir.path().join(which);
        let current = if which == "nginx" { &mut self.nginx } else { &mut self.prometheus };
        if *current != copy {
            copy_dir(current, &copy);
            *current = copy.clone();
        }
        copy
    }

    fn edit(&mut self, which: &str, file: &str, from: &str, to: &str) -> &mut Self {
        let path = self.own_copy(which).join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(text.matches(from).count(), 1, "{which}/{file} should contain exactly once: {from:?}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
        self
    }

    /// Replaces `from` by `to` in a copy of `nginx/`.
    pub fn edit_nginx(&mut self, file: &str, from: &str, to: &str) -> &mut Self {
        self.edit("nginx", file, from, to)
    }

    /// Replaces `from` by `to` in a copy of `prometheus/`.
    pub fn edit_prometheus(&mut self, file: &str, from: &str, to: &str) -> &mut Self {
        self.edit("prometheus", file, from, to)
    }

    /// Deletes a file from a copy of `prometheus/`.
    pub fn remove_prometheus_file(&mut self, file: &str) -> &mut Self {
        let path = self.own_copy("prometheus").join(file);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        self
    }
}

pub struct Stack {
    pub kit: Kit,
    pub prometheus_password: String,
    /// The API replicas' `PR_METRICS_TOKEN` (their metrics listeners' bearer token).
    pub metrics_token: String,
    pub https_port: u16,
    pub http_port: u16,
    /// Where the audit looks for the metrics port: the API's published 9100 when
    /// `publish_metrics_port`, else a loopback port nothing listens on (nothing is published).
    pub metrics_port: u16,
    pub prometheus: ContainerAsync<GenericImage>,
    pub nginx: ContainerAsync<GenericImage>,
    /// The first API replica (`<kit>-api`).
    pub api: ContainerAsync<GenericImage>,
    /// The other replicas (`<kit>-api-2`, ...), `Kit::api_replicas` - 1 of them.
    pub more_apis: Vec<ContainerAsync<GenericImage>>,
    pub redis: Option<ContainerAsync<GenericImage>>,
    pub alertmanager: ContainerAsync<GenericImage>,
    pub postgres: ContainerAsync<GenericImage>,
}

/// Options every container of the stack shares: the private network, a unique name, the
/// cleanup label, compose's `no-new-privileges`, nothing published unless `ports` says so
/// (on loopback, random host ports). `tmpfs` is compose's `tmpfs:` list (path, options): data
/// directories are tmpfs too, owned by the image's user (65534, nobody) where it needs them.
pub fn common(
    image: GenericImage,
    kit: &Kit,
    service: &str,
    hostname: &str,
    ports: &'static [u16],
    tmpfs: &'static [(&'static str, &'static str)],
) -> ContainerRequest<GenericImage> {
    image
        .with_container_name(format!("{}-{service}", kit.name))
        .with_network(&kit.name)
        .with_hostname(hostname)
        .with_label(TEST_LABEL, "1")
        .with_security_opt("no-new-privileges:true")
        .with_startup_timeout(STARTUP)
        .with_host_config_modifier(move |hc: &mut HostConfig| {
            hc.publish_all_ports = Some(false);
            hc.port_bindings = Some(
                ports
                    .iter()
                    .map(|p| {
                        let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) };
                        (format!("{p}/tcp"), Some(vec![binding]))
                    })
                    .collect(),
            );
            hc.tmpfs = Some(tmpfs.iter().map(|(path, opts)| (path.to_string(), opts.to_string())).collect());
        })
}

/// Redis as compose runs it: the committed entrypoint (password into a config file on a tmpfs),
/// a fixed unprivileged user, read-only root, no capabilities.
fn redis_request(kit: &Kit, password: &str) -> ContainerRequest<GenericImage> {
    let image = redis_image();
    let (name, tag) = image.rsplit_once(':').expect("PR_TEST_REDIS_IMAGE is name:tag");
    common(
        GenericImage::new(name, tag)
            .with_entrypoint("/bin/sh")
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections")),
        kit,
        "redis",
        "redis",
        &[],
        &[("/run/redis", "size=1m,uid=999,gid=999,mode=0700"), ("/tmp", "size=1m")],
    )
    .with_cmd(["/etc/privaterouter/redis-entrypoint.sh"])
    .with_env_var("REDIS_PASSWORD", password)
    .with_mount(read_only(&repo_root().join("compose/redis/entrypoint.sh"), "/etc/privaterouter/redis-entrypoint.sh"))
    .with_user("999:999")
    .with_readonly_rootfs(true)
    .with_cap_drop("ALL")
}

pub fn read_only(host: &Path, container: &str) -> Mount {
    Mount::bind_mount(host.to_str().expect("UTF-8 path"), container)
        .with_access_mode(testcontainers::core::AccessMode::ReadOnly)
}

impl Stack {
    /// Starts the stack and waits until the API answers through nginx over TLS and
    /// Prometheus has scraped every target once.
    pub async fn start(kit: Kit) -> Stack {
        let started = Instant::now();
        let tls = kit.dir.path().join("tls");
        let acme = kit.dir.path().join("acme");
        std::fs::create_dir_all(&acme).unwrap();
        let status = tokio::process::Command::new(repo_root().join("scripts/gen-dev-certs"))
            .arg(DOMAIN)
            .env("TLS_DIR", &tls)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("scripts/gen-dev-certs runs");
        assert!(status.success(), "scripts/gen-dev-certs failed");

        let pg_password = random_hex(16);
        let api_db_password = random_hex(16);
        let metrics_token = random_hex(16);
        let prometheus_password = random_hex(16);
        let name = &kit.name;

        let postgres = common(
            GenericImage::new(images::POSTGRES.name, images::POSTGRES.tag)
                .with_wait_for(WaitFor::message_on_either_std("database system is ready to accept connections")),
            &kit,
            "postgres",
            "postgres",
            &[],
            &[("/var/lib/postgresql/data", ""), ("/var/run/postgresql", "size=1m"), ("/tmp", "size=16m")],
        )
        .with_env_var("POSTGRES_USER", "privaterouter")
        .with_env_var("POSTGRES_PASSWORD", &pg_password)
        .with_env_var("POSTGRES_DB", "privaterouter")
        // As compose: the API's own role from the init script, the entrypoint's capabilities only.
        .with_env_var("API_DB_USER", "privaterouter_api")
        .with_env_var("API_DB_PASSWORD", &api_db_password)
        .with_mount(read_only(
            &repo_root().join("compose/postgres/10-api-role.sh"),
            "/docker-entrypoint-initdb.d/10-api-role.sh",
        ))
        .with_readonly_rootfs(true)
        .with_cap_drop("ALL");
        let postgres = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
            .into_iter()
            .fold(postgres, |p, cap| p.with_cap_add(cap));

        let redis_password = random_hex(16);
        // The shared billing journal, owned by the image's user (app, 10001).
        let journal = kit.dir.path().join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        std::os::unix::fs::chown(&journal, Some(10001), Some(10001))
            .expect("chown the journal dir (tests run as root)");
        let api_request = |replica: usize| {
            let api_ports: &'static [u16] = if kit.publish_metrics_port && replica == 1 { &[9100] } else { &[] };
            let service = if replica == 1 { "api".to_string() } else { format!("api-{replica}") };
            let mut api = common(
                {
                    let (name, tag) = api_image();
                    GenericImage::new(name, tag)
                }
                .with_wait_for(WaitFor::message_on_stdout("listening")),
                &kit,
                &service,
                "api-metrics",
                api_ports,
                &[("/tmp", "")],
            )
            .with_mount(Mount::bind_mount(journal.to_str().expect("UTF-8 path"), "/var/lib/privaterouter/journal"))
            .with_env_var(
                "DATABASE_URL",
                format!("postgres://privaterouter_api:{api_db_password}@{name}-postgres:5432/privaterouter"),
            )
            .with_env_var("PR_PUBLIC_ADDR", "0.0.0.0:8000")
            .with_env_var("PR_METRICS_ADDR", "0.0.0.0:9100")
            .with_env_var("PR_METRICS_TOKEN", &metrics_token)
            .with_env_var("PR_LOG", "info")
            .with_env_var("PR_API_REPLICAS", kit.api_replicas.to_string())
            .with_readonly_rootfs(true)
            .with_cap_drop("ALL");
            if kit.redis {
                api = api.with_env_var("PR_REDIS_URL", format!("redis://:{redis_password}@redis:6379/0"));
            }
            if let Some(models) = &kit.models_file {
                api = api
                    .with_env_var("PR_MODELS_FILE", "/etc/privaterouter/models.toml")
                    .with_mount(read_only(models, "/etc/privaterouter/models.toml"));
            }
            for (key, value) in &kit.api_env {
                api = api.with_env_var(key, value);
            }
            api
        };
        assert!(kit.api_replicas >= 1, "a stack has at least one API replica");
        let api = api_request(1);
        let more_apis: Vec<_> = (2..=kit.api_replicas).map(api_request).collect();
        let redis = kit.redis.then(|| redis_request(&kit, &redis_password));

        let alertmanager = common(
            GenericImage::new(images::ALERTMANAGER.name, images::ALERTMANAGER.tag)
                .with_wait_for(WaitFor::message_on_either_std("Listening on")),
            &kit,
            "alertmanager",
            "alertmanager",
            &[],
            &[("/alertmanager", "uid=65534,gid=65534")],
        )
        .with_cmd([
            "--config.file=/etc/alertmanager/alertmanager.yml",
            "--storage.path=/alertmanager",
            "--cluster.listen-address=",
        ])
        .with_mount(read_only(&kit.prometheus.join("alertmanager"), "/etc/alertmanager"))
        .with_cap_drop("ALL");

        let mut prometheus_args = vec![
            "/etc/prometheus/entrypoint.sh".to_string(),
            "--config.file=/etc/prometheus/prometheus.yml".into(),
            "--storage.tsdb.path=/prometheus".into(),
        ];
        if let Some(r) = &kit.retention {
            prometheus_args.push(format!("--storage.tsdb.retention.time={r}"));
        }
        prometheus_args.push(format!("--web.external-url=https://prometheus.{DOMAIN}/"));
        prometheus_args.push("--web.route-prefix=/".into());
        let prometheus = common(
            GenericImage::new(images::PROMETHEUS.name, images::PROMETHEUS.tag)
                .with_entrypoint("/bin/sh")
                .with_wait_for(WaitFor::message_on_either_std("Server is ready to receive web requests")),
            &kit,
            "prometheus",
            "prometheus",
            &[],
            &[("/run/pr-secrets", "size=64k"), ("/prometheus", "uid=65534,gid=65534")],
        )
        .with_cmd(prometheus_args)
        .with_env_var("PR_METRICS_TOKEN", kit.prometheus_token.as_deref().unwrap_or(&metrics_token))
        .with_env_var("LITELLM_MASTER_KEY", random_hex(16))
        .with_mount(read_only(&kit.prometheus, "/etc/prometheus"))
        .with_cap_drop("ALL");

        let mut nginx = common(
            GenericImage::new(images::NGINX.name, images::NGINX.tag).with_entrypoint("/bin/sh"),
            &kit,
            "nginx",
            "nginx",
            &[80, 443],
            // Compose's sizes.
            &[
                ("/run", "size=16m"),
                ("/tmp", "size=16m"),
                ("/var/cache/nginx", "size=64m"),
                ("/var/lib/nginx", "size=64m"),
                ("/var/log/nginx", "size=16m"),
            ],
        )
        .with_cmd(["/etc/nginx/entrypoint.sh", "nginx", "-e", "stderr", "-g", "daemon off;"])
        .with_env_var("PR_DOMAIN", DOMAIN)
        .with_env_var("PROMETHEUS_BASIC_AUTH_USER", "prometheus")
        .with_env_var("PROMETHEUS_BASIC_AUTH_PASSWORD", &prometheus_password)
        .with_env_var("API_MAX_BODY_SIZE", "1m")
        .with_env_var("API_RATE_LIMIT", "20r/s")
        .with_env_var("API_RATE_BURST", "40")
        .with_env_var("API_STREAM_TIMEOUT", "600s")
        .with_env_var("CONN_LIMIT_PER_IP", "64")
        .with_env_var("NGINX_RESOLVER", "127.0.0.11")
        .with_env_var("API_UPSTREAM", "api-metrics:8000")
        .with_mount(read_only(&kit.nginx, "/etc/nginx"))
        .with_mount(read_only(&tls, "/etc/privaterouter/tls"))
        .with_mount(read_only(&acme, "/var/www/acme"))
        .with_readonly_rootfs(true)
        .with_cap_drop("ALL");
        for cap in ["CHOWN", "DAC_OVERRIDE", "SETGID", "SETUID", "NET_BIND_SERVICE"] {
            nginx = nginx.with_cap_add(cap);
        }
        for (key, value) in &kit.nginx_env {
            nginx = nginx.with_env_var(key, value);
        }

        // All at once: the API retries the database, Prometheus resolves per scrape, nginx starts
        // without the API and picks it up when its name resolves (nginx/entrypoint.sh).
        let (postgres, api, more_apis, redis, alertmanager, prometheus, nginx) = tokio::join!(
            postgres.start(),
            api.start(),
            futures_util::future::join_all(more_apis.into_iter().map(|a| a.start())),
            async {
                match redis {
                    Some(r) => Some(r.start().await),
                    None => None,
                }
            },
            alertmanager.start(),
            prometheus.start(),
            nginx.start()
        );
        let start_err = |what: &str, e: testcontainers::TestcontainersError| -> ! {
            panic!(
                "starting {what} failed (are the images built? scripts/build-images postgres nginx prometheus alertmanager api): {e}"
            )
        };
        let postgres = postgres.unwrap_or_else(|e| start_err("postgres", e));
        let api = api.unwrap_or_else(|e| start_err("the API", e));
        let more_apis: Vec<_> =
            more_apis.into_iter().map(|a| a.unwrap_or_else(|e| start_err("an API replica", e))).collect();
        let redis = redis.map(|r| r.unwrap_or_else(|e| start_err("redis (scripts/build-images redis)", e)));
        let alertmanager = alertmanager.unwrap_or_else(|e| start_err("alertmanager", e));
        let prometheus = prometheus.unwrap_or_else(|e| start_err("prometheus", e));
        let nginx = nginx.unwrap_or_else(|e| start_err("nginx", e));

        let https_port = nginx.get_host_port_ipv4(443).await.unwrap();
        let http_port = nginx.get_host_port_ipv4(80).await.unwrap();
        let metrics_port =
            if kit.publish_metrics_port { api.get_host_port_ipv4(9100).await.unwrap() } else { free_port() };
        let stack = Stack {
            kit,
            prometheus_password,
            metrics_token,
            https_port,
            http_port,
            metrics_port,
            prometheus,
            nginx,
            api,
            more_apis,
            redis,
            alertmanager,
            postgres,
        };
        stack.wait_until_ready().await;
        eprintln!("stack {} ready in {:.1} s", stack.kit.name, started.elapsed().as_secs_f64());
        stack
    }

    /// The audit's view: the three hosts under DOMAIN, led to nginx's loopback ports.
    pub fn target(&self) -> Target {
        let mut t = Target::new(DOMAIN);
        for host in t.hosts() {
            t.connect_to.extend([
                ConnectTo::new(&host, 443, "127.0.0.1", self.https_port),
                ConnectTo::new(&host, 80, "127.0.0.1", self.http_port),
                ConnectTo::new(&host, 9100, "127.0.0.1", self.metrics_port),
            ]);
        }
        t.ca_file = Some(self.kit.dir.path().join("tls/dev-ca.pem"));
        t.prometheus_password = Some(self.prometheus_password.clone());
        t.timeout = Duration::from_secs(5);
        t
    }

    pub async fn audit(&self) -> Report {
        let target = self.target();
        tokio::task::spawn_blocking(move || audit(&target)).await.expect("the audit does not panic")
    }

    /// One HTTPS request to a virtual host, through nginx.
    pub async fn https(&self, host: &str, req: Request) -> Result<Response, String> {
        let target = self.target();
        let ep = Endpoint::new(format!("{host}.{DOMAIN}"), 443);
        tokio::task::spawn_blocking(move || {
            let tls = net::verifying_connector(&target)?;
            net::send(&target, &tls, Scheme::Https, &ep, &req)
        })
        .await
        .unwrap()
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        // The API, through nginx, over TLS, with its database.
        let ready = settle(Duration::from_secs(90), || async {
            match self.https("api", Request::get("/readyz")).await {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.text())),
                Err(e) => Err(e),
            }
        })
        .await;
        if let Err(last) = ready {
            panic!("https://api.{DOMAIN}/readyz never answered 200 (last: {last})\n{}", self.logs().await);
        }
        // Prometheus has scraped each target since the API became ready. A target's health is
        // "unknown" until its first scrape, and a scrape that came before the API listened says
        // "down" until the next one (15 s later): a target counts once it is up, or once its
        // last scrape is newer than the one seen when the API became ready.
        let scraped_before_ready: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
        let scraped = settle(deadline.saturating_duration_since(Instant::now()), || async {
            let req = Request::get("/api/v1/targets?state=active").basic_auth("prometheus", &self.prometheus_password);
            let r = self.https("prometheus", req).await?;
            if r.status != 200 {
                return Err(format!("{} {}", r.status, r.text()));
            }
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let targets = body["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            let last_scrape = |t: &serde_json::Value| (t["scrapeUrl"].to_string(), t["lastScrape"].to_string());
            let before = scraped_before_ready.get_or_init(|| targets.iter().map(last_scrape).collect());
            let settled = |t: &serde_json::Value| {
                let (url, scraped) = last_scrape(t);
                t["health"] == "up" || (t["health"] != "unknown" && before.get(&url) != Some(&scraped))
            };
            let api_targets = targets.iter().filter(|t| t["labels"]["job"] == "privaterouter-api").count();
            if api_targets == self.kit.api_replicas && targets.iter().all(settled) {
                Ok(())
            } else {
                Err(format!("targets: {targets:?}"))
            }
        })
        .await;
        if let Err(last) = scraped {
            panic!("Prometheus never scraped every target (last: {last})\n{}", self.logs().await);
        }
    }

    /// The last lines of every container's output, for failure messages.
    pub async fn logs(&self) -> String {
        let mut out = String::new();
        let mut containers = vec![("nginx".to_string(), &self.nginx), ("api".into(), &self.api)];
        containers.extend(self.more_apis.iter().enumerate().map(|(i, c)| (format!("api-{}", i + 2), c)));
        containers.extend(self.redis.iter().map(|c| ("redis".to_string(), c)));
        containers.extend([
            ("prometheus".to_string(), &self.prometheus),
            ("alertmanager".into(), &self.alertmanager),
            ("postgres".into(), &self.postgres),
        ]);
        for (name, c) in containers {
            let mut text = String::from_utf8_lossy(&c.stdout_to_vec().await.unwrap_or_default()).to_string();
            text.push_str(&String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap_or_default()));
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name} (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `privaterouter-api ARGS` inside the first API container (its DATABASE_URL); the JSON it prints.
    pub async fn api_cli(&self, args: &[&str]) -> serde_json::Value {
        let mut cmd = vec!["privaterouter-api"];
        cmd.extend_from_slice(args);
        let mut result = self
            .api
            .exec(ExecCommand::new(cmd).with_cmd_ready_condition(CmdWaitFor::exit()))
            .await
            .expect("exec in the API container");
        let stdout = String::from_utf8_lossy(&result.stdout_to_vec().await.unwrap()).to_string();
        let stderr = String::from_utf8_lossy(&result.stderr_to_vec().await.unwrap()).to_string();
        let code = result.exit_code().await.unwrap();
        assert_eq!(code, Some(0), "privaterouter-api {args:?} failed:\n{stdout}\n{stderr}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"))
    }

    /// One SQL query through psql in the postgres container, as the superuser; its unaligned
    /// output (`-At`, fields separated by `|`).
    pub async fn sql(&self, query: &str) -> String {
        let mut result = self
            .postgres
            .exec(
                ExecCommand::new(["psql", "-U", "privaterouter", "-d", "privaterouter", "-At", "-c", query])
                    .with_cmd_ready_condition(CmdWaitFor::exit()),
            )
            .await
            .expect("exec in the postgres container");
        let stdout = String::from_utf8_lossy(&result.stdout_to_vec().await.unwrap()).to_string();
        let stderr = String::from_utf8_lossy(&result.stderr_to_vec().await.unwrap()).to_string();
        assert_eq!(result.exit_code().await.unwrap(), Some(0), "psql {query}: {stderr}");
        stdout.trim().to_owned()
    }

    /// Runs `sh -c script` in the Prometheus container (on the stack's network, with curl and
    /// promtool); returns the exit code and the combined output.
    pub async fn in_prometheus(&self, script: &str) -> (i64, String) {
        exec_sh(&self.prometheus, script).await
    }

    /// Runs `sh -c script` in the nginx container (its network namespace: `/proc/net/tcp` lists
    /// nginx's own sockets); returns the exit code and the combined output.
    pub async fn in_nginx(&self, script: &str) -> (i64, String) {
        exec_sh(&self.nginx, script).await
    }

    /// Reads nginx's published ports again (they change when its container restarts).
    pub async fn refresh_nginx_ports(&mut self) {
        self.https_port = self.nginx.get_host_port_ipv4(443).await.unwrap();
        self.http_port = self.nginx.get_host_port_ipv4(80).await.unwrap();
    }
}

async fn exec_sh(container: &ContainerAsync<GenericImage>, script: &str) -> (i64, String) {
    let mut result = container
        .exec(ExecCommand::new(["sh", "-c", script]).with_cmd_ready_condition(CmdWaitFor::exit()))
        .await
        .expect("exec in a stack container");
    let mut out = String::from_utf8_lossy(&result.stdout_to_vec().await.unwrap()).to_string();
    out.push_str(&String::from_utf8_lossy(&result.stderr_to_vec().await.unwrap()));
    let code = result.exit_code().await.unwrap().expect("the command exited");
    (code, out)
}
