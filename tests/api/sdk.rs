//! The official `openai` and `anthropic` Python SDKs (from PyPI, pinned in
//! `tests/sdk/requirements.txt`, in a virtual environment `tests/sdk/venv.sh` creates) drive the
//! real binary, with the upstream stand-ins behind it: embeddings, legacy completions, the
//! Responses API and Anthropic Messages, streaming included (`tests/sdk/check.py`). The ledger
//! must then hold exactly one correctly priced row per served call.

use std::{path::Path, process::Stdio, time::Duration};

use privaterouter_api::{
    accounts::{auth::Role, users},
    billing::{CreditKind, ledger},
};
use privaterouter_tests::{api_binary, eventually, free_port, postgres, upstream};
use rust_decimal::Decimal;
use tokio::process::Command;

#[tokio::test]
async fn the_official_sdks_are_served_and_every_call_is_billed_once() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk");
    let venv = Command::new(sdk.join("venv.sh")).stderr(Stdio::inherit()).output().await.unwrap();
    assert!(venv.status.success(), "creating the SDK venv (needs python3 and PyPI): {venv:?}");
    let python = Path::new(String::from_utf8(venv.stdout).unwrap().trim()).join("bin/python");

    let db = postgres().await;
    let up = upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("models.toml");
    std::fs::write(&catalog, upstream::catalog_toml(&up, "PR_TEST_UPSTREAM_KEY")).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _api = Command::new(api_binary())
        .env("DATABASE_URL", &db.url)
        .env("PR_MODELS_FILE", &catalog)
        .env("PR_BILLING_JOURNAL_DIR", dir.path().join("journal"))
        .env("PR_TEST_UPSTREAM_KEY", upstream::UPSTREAM_KEY)
        .env("PR_PUBLIC_ADDR", format!("127.0.0.1:{port}"))
        .env("PR_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the binary is ready", Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/readyz")).await.ok().filter(|r| r.status() == 200).map(|_| ())
    })
    .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (user_id, key) = users::create_user(&pool, "sdk@example.test", Role::User).await.unwrap();
    ledger::admin_credit(&pool, user_id, CreditKind::Topup, "1".parse().unwrap(), "test", "sdk").await.unwrap();

    let out = Command::new(&python)
        .arg(sdk.join("check.py"))
        .env("PR_BASE_URL", &base)
        .env("PR_KEY", &key)
        .output()
        .await
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("sdk checks passed"), "the SDK script failed:\n{said}");

    // 1 embeddings call (10 tokens at 0.5 $/Mtok), 4 completions and responses calls (0.000222
    // each), 2 messages calls (0.000651 each, cache reads and writes included); the refused
    // calls bill nothing.
    let rows: Vec<(String, Decimal, bool)> = eventually("7 usage rows", Duration::from_secs(10), || async {
        let rows: Vec<(String, Decimal, bool)> = sqlx::query_as(
            "SELECT model, -amount_usd, usage_estimated FROM credit_transactions \
             WHERE user_id = $1 AND kind = 'usage' ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&pool)
        .await
        .unwrap();
        (rows.len() >= 7).then_some(rows)
    })
    .await;
    let models: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(models, ["embed", "echo", "echo", "echo", "echo", "claude", "claude"]);
    assert!(rows.iter().all(|r| !r.2), "every call reported its usage: {rows:?}");
    let total: Decimal = rows.iter().map(|r| r.1).sum();
    assert_eq!(total, "0.002195".parse::<Decimal>().unwrap(), "{rows:?}");
}
