//! Test harness: Postgres from the locally built image (testcontainers), the real API spawned
//! in-process on port 0 with its log output captured, a typed API client, `eventually` for
//! whatever settles a moment later, and a Prometheus text parser.
//!
//! Metrics use the process-wide recorder, so tests that assert metric values expect one app per
//! process: the suite runs under `cargo nextest` (one process per test).

pub mod agent;
pub mod client;
pub mod images;
pub mod prom;
pub mod redirect;
pub mod redis;
pub mod upstream;
pub mod upstream_endpoints;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

pub use client::ApiClient;
use privaterouter_api::{Application, Config, telemetry};
use serde_json::Value;
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{ContainerPort, WaitFor},
    runners::AsyncRunner,
};
use tokio::{sync::oneshot, task::JoinHandle};

pub const POSTGRES_IMAGE: &str = images::POSTGRES.name;
pub const POSTGRES_TAG: &str = images::POSTGRES.tag;
/// Label on every container the tests start, so `scripts/test` can remove leftovers of a killed run.
pub const TEST_LABEL: &str = "org.privaterouter.test";

pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

pub struct TestDb {
    /// None for a second app on another app's database.
    pub container: Option<ContainerAsync<GenericImage>>,
    pub url: String,
}

impl TestDb {
    pub fn container(&self) -> &ContainerAsync<GenericImage> {
        self.container.as_ref().expect("this app owns its database container")
    }

    /// The URL through the container's bridge address instead of the published port: no
    /// userland proxy in the path (benchmarks).
    pub async fn direct_url(&self) -> String {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", self.container().id()])
            .output()
            .expect("docker inspect");
        let ip = String::from_utf8(out.stdout).expect("ip is text").trim().to_owned();
        let (head, tail) = self.url.split_once('@').expect("url has credentials");
        let db = tail.split_once('/').map_or("", |(_, db)| db);
        format!("{head}@{ip}:5432/{db}")
    }
}

/// The API binary built by `scripts/test` (`cargo build -p privaterouter-api`).
pub fn api_binary() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/privaterouter-api");
    assert!(bin.exists(), "{} is missing: run `cargo build -p privaterouter-api` (scripts/test does)", bin.display());
    bin
}

/// A fresh Postgres with a random password, published on a fixed free loopback port so that a
/// stopped and restarted container comes back on the same address.
pub async fn postgres() -> TestDb {
    let password = random_hex(16);
    let port = free_port();
    let container = GenericImage::new(POSTGRES_IMAGE, POSTGRES_TAG)
        .with_wait_for(WaitFor::message_on_either_std("database system is ready to accept connections"))
        .with_env_var("POSTGRES_PASSWORD", &password)
        .with_env_var("POSTGRES_DB", "privaterouter")
        .with_mapped_port(port, ContainerPort::Tcp(5432))
        .with_label(TEST_LABEL, "1")
        .with_startup_timeout(Duration::from_secs(90))
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting {POSTGRES_IMAGE}:{POSTGRES_TAG} (run scripts/build-images): {e}"));
    let url = format!("postgres://postgres:{password}@127.0.0.1:{port}/privaterouter");
    TestDb { container: Some(container), url }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An in-memory log sink shared between the app's writer thread and the test.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .expect("log output is UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .collect()
    }
}

pub struct TestApp {
    pub public: SocketAddr,
    pub pool: sqlx::PgPool,
    pub metrics: SocketAddr,
    /// Follows no redirects (the redirect tests assert them).
    pub client: reqwest::Client,
    /// The typed client for the public listener, on `client`.
    pub api: ApiClient,
    pub logs: Capture,
    pub db: TestDb,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _logging: telemetry::Logging,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = postgres().await;
    spawn_app_on(db, configure).await
}

pub async fn spawn_app_on(db: TestDb, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::for_tests(&db.url);
    configure(&mut config);
    let logs = Capture::default();
    let logging = telemetry::init_logging("info", Box::new(logs.clone()));
    // The app's panic hook logs panics as JSON into the captured log; keep the default hook too,
    // so a failing assertion still shows on the test's stderr.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let app_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            app_hook(info);
            eprintln!("{info}");
        }));
    });
    let app = Application::build(config, logging.writer.clone()).await.expect("app builds");
    let (public, metrics) = (app.public_addr(), app.metrics_addr());
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(5).connect(&db.url).await.expect("test pool");
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    TestApp {
        public,
        pool,
        metrics,
        api: ApiClient::new(format!("http://{public}"), client.clone()),
        client,
        logs,
        db,
        shutdown: Some(tx),
        task: Some(task),
        _logging: logging,
    }
}

/// The gateway under test: the app with a model catalog pointing at the upstream stand-in.
pub struct Gateway {
    pub app: TestApp,
    pub upstream: upstream::Upstream,
    _catalog: tempfile::NamedTempFile,
}

impl Gateway {
    /// The catalog file the app was started with (for a second replica).
    pub fn catalog_path(&self) -> std::path::PathBuf {
        self._catalog.path().to_owned()
    }
}

pub async fn spawn_gateway() -> Gateway {
    spawn_gateway_with(|_| {}).await
}

pub async fn spawn_gateway_with(configure: impl FnOnce(&mut Config)) -> Gateway {
    let upstream = upstream::start().await;
    // SAFETY: set before the app (or any other thread of this test process) reads it.
    unsafe { std::env::set_var("PR_TEST_UPSTREAM_KEY", upstream::UPSTREAM_KEY) };
    let mut catalog = tempfile::NamedTempFile::new().unwrap();
    catalog.write_all(upstream::catalog_toml(&upstream, "PR_TEST_UPSTREAM_KEY").as_bytes()).unwrap();
    let path = catalog.path().to_owned();
    let app = spawn_app_with(|c| {
        c.models_file = Some(path);
        configure(c);
    })
    .await;
    Gateway { app, upstream, _catalog: catalog }
}

impl TestApp {
    /// Creates a user with a first API key.
    pub async fn user(&self, admin: bool) -> (uuid::Uuid, String) {
        let role = if admin {
            privaterouter_api::accounts::auth::Role::Admin
        } else {
            privaterouter_api::accounts::auth::Role::User
        };
        let email = format!("{}@example.test", random_hex(6));
        privaterouter_api::accounts::users::create_user(&self.pool, &email, role).await.expect("user created")
    }

    /// Credits a user through the admin endpoint.
    pub async fn topup(&self, admin_key: &str, user_id: uuid::Uuid, amount: &str) {
        self.api.topup(admin_key, user_id, amount).await;
    }

    /// A user with `amount` USD of credit, topped up by a new admin: (id, key).
    pub async fn funded_user(&self, amount: &str) -> (uuid::Uuid, String) {
        let (_, admin) = self.user(true).await;
        let (user_id, key) = self.user(false).await;
        self.topup(&admin, user_id, amount).await;
        (user_id, key)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{}", self.metrics, path)
    }

    /// `GET path` with `key`, expecting 200 and a JSON body.
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        self.api.get_ok(key, path).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request is answered")
    }

    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.metrics_url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    pub async fn samples(&self) -> prom::Samples {
        prom::parse(&self.metrics_text().await)
    }

    /// Waits (bounded) until `check` holds on the scraped samples: metrics are recorded when a
    /// response body has been sent, a moment after the client has read it.
    pub async fn wait_for_metrics(&self, what: &str, check: impl Fn(&prom::Samples) -> bool) -> prom::Samples {
        eventually(&format!("metrics: {what}"), SETTLE, || async {
            let text = self.metrics_text().await;
            let samples = prom::parse(&text);
            if check(&samples) { Ok(samples) } else { Err(text) }
        })
        .await
    }

    /// Access-log lines (those without a `logger` field), waiting until `n` are written.
    pub async fn access_lines(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} access-log lines"), SETTLE, || async {
            let lines: Vec<Value> = self.logs.lines().into_iter().filter(|l| l.get("logger").is_none()).collect();
            if lines.len() >= n { Ok(lines) } else { Err(format!("{:?}", self.logs.lines())) }
        })
        .await
    }

    pub fn app_lines(&self) -> Vec<Value> {
        self.logs.lines().into_iter().filter(|l| l.get("logger").is_some()).collect()
    }

    /// Triggers graceful shutdown and waits for `run_until` to return.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }

    pub fn trigger_shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("not shut down yet")
    }

    /// Holds the user's row `FOR UPDATE` until the returned transaction ends. Every request that
    /// locks the user (the per-user limits) or inserts a row that references it (its foreign-key
    /// check) waits behind it; with [`Self::wait_for_lock_waiters`], concurrent requests are lined
    /// up at one point and released together, so a limit checked without the user's lock is
    /// overshot every time, not only when the scheduler happens to interleave the requests.
    pub async fn hold_user_row(&self, user_id: uuid::Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE").bind(user_id).execute(&mut *tx).await.unwrap();
        tx
    }

    /// Waits until `n` database sessions wait for a lock (the app's pool must allow `n`).
    pub async fn wait_for_lock_waiters(&self, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if waiting >= n {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let sessions: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT state, wait_event_type || ':' || wait_event, left(query, 80) FROM pg_stat_activity \
                     WHERE datname = current_database()",
                )
                .fetch_all(&self.pool)
                .await
                .unwrap();
                panic!("{waiting} database sessions wait for a lock, not {n}: {sessions:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How long metrics and log lines may take to appear after the response that caused them (they
/// are recorded once the body is sent, and written by a thread of their own).
const SETTLE: Duration = Duration::from_secs(10);

/// What an `eventually` probe answers: `Some`/`Ok` when the condition holds, `None` or an `Err`
/// saying what it saw (named in the failure) when not yet.
pub trait Probe {
    type Value;
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Probe for Result<T, E> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// Runs `probe` every 100 ms until it settles, for at most `within`: the one way tests wait for
/// what happens a moment later, instead of hand-written poll loops. Panics naming `what` and the
/// last thing the probe saw.
pub async fn eventually<P, F, Fut>(what: &str, within: Duration, probe: F) -> P::Value
where
    P: Probe,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = P>,
{
    settle(within, probe).await.unwrap_or_else(|last| panic!("not within {within:?}: {what} (last: {last})"))
}

/// `eventually` for blocking code and probes (the compose tests drive `docker compose` and curl
/// from plain `#[test]`s); not for use inside a Tokio runtime.
pub fn eventually_blocking<P: Probe>(what: &str, within: Duration, mut probe: impl FnMut() -> P) -> P::Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime to wait on");
    rt.block_on(eventually(what, within, || std::future::ready(probe())))
}

/// `eventually` that returns what the probe last saw instead of panicking, for a caller that
/// adds more to the failure (a stack's container logs).
pub async fn settle<P, F, Fut>(within: Duration, mut probe: F) -> Result<P::Value, String>
where
    P: Probe,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = P>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match probe().await.settled() {
            Ok(value) => return Ok(value),
            Err(last) if std::time::Instant::now() >= deadline => return Err(last.unwrap_or_else(|| "not yet".into())),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// (balance, held) of a user, from the database.
pub async fn balance_and_held(
    pool: &sqlx::PgPool,
    user_id: uuid::Uuid,
) -> (rust_decimal::Decimal, rust_decimal::Decimal) {
    sqlx::query_as("SELECT balance_usd, held_usd FROM user_balances WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .expect("the user has a balance row")
}

/// The ledger's invariant for every user, read from the database: (users whose balance differs
/// from the sum of their rows, users whose held credit differs from their leases, users whose
/// held credit exceeds their balance).
pub async fn ledger_violations(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    let report = privaterouter_api::billing::check::run(pool).await.expect("ledger check runs");
    (report.balance_mismatch, report.held_mismatch, report.negative_available)
}
