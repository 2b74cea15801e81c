//! The Postgres pool and the embedded migrations. The pool connects lazily and re-establishes
//! connections by itself, so a database outage degrades `/readyz` without killing the process.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Config;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Builds the pool and applies migrations, retrying while the database is not reachable yet
/// (containers start in any order) for at most `PR_DB_STARTUP_TIMEOUT_SECS`.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions =
        config.database_url.expose().parse().context("DATABASE_URL is not a valid Postgres URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options);

    let deadline = Instant::now() + Duration::from_secs(config.db_startup_timeout_secs);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match MIGRATOR.run(&pool).await {
            Ok(()) => {
                tracing::info!(attempt, "database migrations applied");
                return Ok(pool);
            }
            Err(e) if Instant::now() < deadline && is_transient(&e) => {
                tracing::warn!(attempt, error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("applying database migrations"),
        }
    }
}

fn is_transient(e: &sqlx::migrate::MigrateError) -> bool {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => {
            matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_))
                || e.as_database_error().is_some_and(|d| d.code().as_deref() == Some("57P03")) // cannot_connect_now
        }
        _ => false,
    }
}

/// One cheap round trip, bounded in time: used by `/readyz`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> Result<(), sqlx::Error> {
    match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}
