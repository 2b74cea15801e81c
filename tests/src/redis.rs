//! Redis from the locally built image (`scripts/build-images redis`), with a password, and
//! gateways that share it: the rate limits and revocations of several in-process replicas on
//! one Postgres and one Redis.

use std::time::Duration;

use privaterouter_api::{Config, config::Secret};
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{ContainerPort, WaitFor},
    runners::AsyncRunner,
};

use crate::{Gateway, TEST_LABEL, TestApp, TestDb, free_port, random_hex, spawn_app_on, spawn_gateway_with};

pub const REDIS_IMAGE: &str = crate::images::REDIS.name;
pub const REDIS_TAG: &str = crate::images::REDIS.tag;

pub struct TestRedis {
    pub container: ContainerAsync<GenericImage>,
    /// `redis://:PASSWORD@127.0.0.1:PORT/0`: the same after a stop and start.
    pub url: String,
}

/// A fresh Redis without persistence (as the stack runs it), on a fixed free loopback port so a
/// stopped and restarted container comes back on the same address.
pub async fn redis() -> TestRedis {
    let password = random_hex(16);
    let port = free_port();
    let container = GenericImage::new(REDIS_IMAGE, REDIS_TAG)
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(["redis-server", "--requirepass", &password, "--save", "", "--appendonly", "no"])
        .with_mapped_port(port, ContainerPort::Tcp(6379))
        .with_label(TEST_LABEL, "1")
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting {REDIS_IMAGE}:{REDIS_TAG} (run scripts/build-images redis): {e}"));
    TestRedis { container, url: format!("redis://:{password}@127.0.0.1:{port}/0") }
}

impl TestRedis {
    pub fn configure(&self, c: &mut Config) {
        c.redis_url = Some(Secret::new(self.url.clone()));
        // A loaded test machine can be slower than the production default (100 ms); a timeout
        // there would move a call to the local fallback and make exact counts flaky.
        c.redis_timeout_ms = 2000;
    }

    /// Stops the container (its data is gone: no persistence).
    pub async fn stop(&self) {
        self.container.stop().await.expect("redis stops");
    }

    /// Starts it again and waits until it answers PING.
    pub async fn start(&self) {
        self.container.start().await.expect("redis starts");
        crate::eventually("redis answers PING after its restart", Duration::from_secs(30), || async {
            let client = ::redis::Client::open(self.url.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            ::redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
        })
        .await;
    }
}

/// A gateway (stand-in upstream, catalog, fresh Postgres) using `redis`.
pub async fn spawn_gateway_with_redis(redis: &TestRedis, configure: impl FnOnce(&mut Config)) -> Gateway {
    spawn_gateway_with(|c| {
        redis.configure(c);
        configure(c);
    })
    .await
}

/// Another replica of `g`: the same database, catalog and Redis.
pub async fn spawn_replica(g: &Gateway, redis: &TestRedis, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(TestDb { container: None, url: g.app.db.url.clone() }, |c| {
        c.models_file = Some(g.catalog_path());
        redis.configure(c);
        configure(c);
    })
    .await
}
