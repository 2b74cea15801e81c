//! The real binary killed with SIGKILL: the holds of calls in flight stay leased in the database
//! until the next start on the same journal volume releases them; usage that was journaled
//! (database away) but not written is written by the next start; SIGTERM lets calls finish,
//! settles them and leaves nothing held. `admin ledger check` agrees at every step.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use futures_util::StreamExt;
use privaterouter_api::{
    accounts::{auth::Role, users},
    billing::{CreditKind, ledger},
};
use privaterouter_tests::{
    ApiClient, api_binary, balance_and_held, client::status_json, eventually, free_port, ledger_violations, postgres,
    prom, upstream,
};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::process::{Child, Command};

const CALL_COST: &str = "0.000222";

struct Binary {
    db_url: String,
    catalog: PathBuf,
    journal: PathBuf,
}

struct Running {
    child: Child,
    api: ApiClient,
    metrics: String,
}

impl Binary {
    fn command(&self) -> Command {
        let mut c = Command::new(api_binary());
        c.env("DATABASE_URL", &self.db_url)
            .env("PR_MODELS_FILE", &self.catalog)
            .env("PR_BILLING_JOURNAL_DIR", &self.journal)
            .env("PR_TEST_UPSTREAM_KEY", upstream::UPSTREAM_KEY)
            .env("PR_SHUTDOWN_GRACE_SECS", "10")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn start(&self) -> Running {
        let (public, metrics) = (free_port(), free_port());
        let child = self
            .command()
            .env("PR_PUBLIC_ADDR", format!("127.0.0.1:{public}"))
            .env("PR_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
            .spawn()
            .unwrap();
        let running = Running {
            child,
            api: ApiClient::new(format!("http://127.0.0.1:{public}"), reqwest::Client::new()),
            metrics: format!("http://127.0.0.1:{metrics}"),
        };
        let url = running.api.url("/readyz");
        eventually("the binary is ready", Duration::from_secs(30), || async {
            reqwest::get(&url).await.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
        running
    }

    /// `privaterouter-api admin ledger check`: (exit success, stdout).
    async fn ledger_check(&self) -> (bool, serde_json::Value) {
        let out = self.command().args(["admin", "ledger", "check"]).stdout(Stdio::piped()).output().await.unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("report is JSON ({e}): {out:?}"));
        (out.status.success(), report)
    }
}

impl Running {
    async fn samples(&self) -> prom::Samples {
        prom::parse(&reqwest::get(format!("{}/metrics", self.metrics)).await.unwrap().text().await.unwrap())
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }
}

async fn leases(pool: &sqlx::PgPool) -> (i64, Decimal) {
    sqlx::query_as("SELECT count(*), coalesce(sum(amount_usd), 0) FROM credit_leases").fetch_one(pool).await.unwrap()
}

fn replica_dirs(journal: &Path) -> usize {
    std::fs::read_dir(journal).map_or(0, |d| d.count())
}

#[tokio::test]
async fn sigkill_leaves_holds_that_the_next_start_resolves_and_journaled_usage_is_written_after_a_crash() {
    let db = postgres().await;
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("models.toml");
    std::fs::write(&catalog, upstream::catalog_toml(&up, "PR_TEST_UPSTREAM_KEY")).unwrap();
    let bin = Binary { db_url: db.url.clone(), catalog, journal: dir.path().join("journal") };

    let first = bin.start().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (user_id, key) = users::create_user(&pool, "crash@example.test", Role::User).await.unwrap();
    ledger::admin_credit(&pool, user_id, CreditKind::Topup, "1".parse().unwrap(), "test", "t1").await.unwrap();
    let long_stream = json!({"model": "long", "stream": true, "messages": [{"role": "user", "content": "hi"}]});

    // 10 streams in flight (2 s each), each past its first chunk.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let r = first.api.chat(&key, &long_stream).await;
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        body.next().await.unwrap().unwrap();
        streams.push(body);
    }
    let (n, held) = leases(&pool).await;
    assert_eq!(n, 1, "one lease of this replica for this user");
    assert!(held > Decimal::ZERO);
    eventually("10 holds active", Duration::from_secs(5), || async {
        (first.samples().await.value("pr_credit_holds_active", &[]) == Some(10.0)).then_some(())
    })
    .await;

    first.signal("-KILL");
    let mut first = first;
    first.child.wait().await.unwrap();
    drop(streams);
    assert_eq!(leases(&pool).await, (n, held), "the holds stay in the database after SIGKILL");
    assert_eq!(ledger_violations(&pool).await, (0, 0, 0));

    // The next start on the same journal volume adopts the dead replica's folder and releases its leases.
    let second = bin.start().await;
    assert_eq!(leases(&pool).await, (0, Decimal::ZERO), "every hold resolved at start");
    assert_eq!(
        balance_and_held(&pool, user_id).await,
        ("1".parse().unwrap(), Decimal::ZERO),
        "calls cut by the crash are not billed"
    );
    assert_eq!(replica_dirs(&bin.journal), 1, "only the live replica's journal folder is left");
    let (ok, report) = bin.ledger_check().await;
    assert!(ok, "{report}");
    assert_eq!(report["ok"], true);

    // The check fails on a broken ledger (held credit that no lease accounts for).
    sqlx::query("UPDATE user_balances SET held_usd = held_usd + 0.5 WHERE user_id = $1")
        .bind(user_id)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, report) = bin.ledger_check().await;
    assert!(!ok, "a violation exits non-zero: {report}");
    assert_eq!(report["violations"], json!(["held_mismatch"]));
    sqlx::query("UPDATE user_balances SET held_usd = held_usd - 0.5 WHERE user_id = $1")
        .bind(user_id)
        .execute(&pool)
        .await
        .unwrap();

    // 3 calls finish while the database is away: served, journaled. Then SIGKILL before it returns.
    let mut calls = Vec::new();
    for _ in 0..3 {
        let (api, key) = (second.api.clone(), key.clone());
        let body = json!({"model": "twosec", "messages": [{"role": "user", "content": "hi"}]});
        calls.push(tokio::spawn(async move { status_json(api.chat(&key, &body).await).await.0 }));
    }
    let before = up.requests().len();
    eventually("3 calls upstream", Duration::from_secs(10), || async {
        (up.requests().len() == before + 3).then_some(())
    })
    .await;
    db.container().stop().await.unwrap();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    eventually("3 settlements journaled", Duration::from_secs(10), || async {
        (second.samples().await.value("pr_billing_journal_pending", &[]) == Some(3.0)).then_some(())
    })
    .await;
    second.signal("-KILL");
    let mut second = second;
    second.child.wait().await.unwrap();
    db.container().start().await.unwrap();

    let third = bin.start().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let usage: Vec<(Decimal,)> = sqlx::query_as("SELECT -amount_usd FROM credit_transactions WHERE kind = 'usage'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(usage.len(), 3, "the journal of the killed replica was written at start");
    let cost: Decimal = CALL_COST.parse().unwrap();
    assert_eq!(balance_and_held(&pool, user_id).await.0, Decimal::ONE - cost * Decimal::from(3));
    assert_eq!(leases(&pool).await, (0, Decimal::ZERO));
    let (ok, report) = bin.ledger_check().await;
    assert!(ok, "{report}");

    // SIGTERM with a stream in flight: it finishes, is billed, and nothing stays held or journaled.
    let r = third.api.chat(&key, &long_stream).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    third.signal("-TERM");
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"), "the stream ran to its end during the drain");
    let mut third = third;
    let status = tokio::time::timeout(Duration::from_secs(15), third.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    let usage: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE kind = 'usage'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(usage, 4);
    assert_eq!(leases(&pool).await, (0, Decimal::ZERO), "a clean stop returns its leases");
    assert_eq!(replica_dirs(&bin.journal), 0, "and removes its empty journal");
    let (ok, report) = bin.ledger_check().await;
    assert!(ok, "{report}");
}
