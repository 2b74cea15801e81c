use std::time::{Duration, Instant};

use privaterouter_tests::{eventually, spawn_app, spawn_app_on, spawn_gateway};
use serde_json::{Value, json};

#[tokio::test]
async fn protected_routes_require_a_valid_key() {
    let app = spawn_app().await;
    let (_, key) = app.user(false).await;
    // With a valid key each route answers what it answers its owner: the key was accepted (a
    // body-less completion is then refused for its missing JSON body, not for its key).
    for (method, path, with_key) in [
        ("GET", "/api/keys", 200),
        ("POST", "/api/keys", 201),
        ("GET", "/api/billing/balance", 200),
        ("GET", "/api/billing/transactions", 200),
        ("GET", "/api/chat/conversations", 200),
        ("GET", "/v1/models", 200),
        ("POST", "/v1/chat/completions", 415),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for auth in
            [None, Some("Bearer pr-notarealkey0000000000000000000000000000"), Some("Basic abc"), Some("Bearer ")]
        {
            let mut request = app.client.request(method.clone(), app.url(path));
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"privaterouter\"");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "authentication_error");
        }
        let ok = app.api.request(method.clone(), path, &key).send().await.unwrap();
        let status = ok.status();
        assert_eq!(status, with_key, "{method} {path} with a valid key: {}", ok.text().await.unwrap());
    }
    // Health stays open.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_scoped_to_their_owner() {
    let app = spawn_app().await;
    let (user_id, key) = app.user(false).await;
    let (_, other_key) = app.user(false).await;

    let created = app.api.create_key_ok(&key, &json!({"name": "ci"})).await;
    let new_key = created["key"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("pr-") && new_key.len() >= 35);
    assert!(new_key[3..].bytes().all(|b| b.is_ascii_alphanumeric()), "base62: {new_key}");
    let id = created["id"].as_str().unwrap().to_owned();

    // The new key works; listings never show a key again.
    let list = app.api.keys(&new_key).await;
    assert_eq!(list.status(), 200);
    let text = list.text().await.unwrap();
    assert!(!text.contains(&new_key) && !text.contains(&key), "no key in listings");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let one = app.api.get_ok(&key, &format!("/api/keys/{id}")).await;
    assert_eq!(one["name"], "ci");
    assert_eq!(one["prefix"], &new_key[..9]);

    // Another user cannot see or revoke it.
    for response in [
        app.api.get(&other_key, &format!("/api/keys/{id}")).await,
        app.api.revoke_key(&other_key, &id).await,
        app.api.get(&key, "/api/keys/not-a-uuid").await,
    ] {
        assert_eq!(response.status(), 404);
    }

    // Only a hash is stored.
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT key_hash, prefix FROM api_keys WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (hash, prefix) in &rows {
        assert_eq!(hash.len(), 32);
        assert!(!String::from_utf8_lossy(hash).contains("pr-"));
        assert_eq!(prefix.len(), 9);
    }

    // The access log names the user of authenticated requests, and only those.
    let lines = app.access_lines(6).await;
    assert!(lines.iter().any(|l| l["route"] == "/api/keys" && l["user_id"] == user_id.to_string()));
    let refused: Vec<_> = lines.iter().filter(|l| l["status"] == 404 && l["route"] == "/api/keys/{id}").collect();
    assert_eq!(refused.len(), 3, "the three 404s above: {lines:?}");
    assert!(refused.iter().all(|l| l["user_id"].is_string()), "a refused but authenticated request names its user");
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_every_replica_within_a_second() {
    let gateway = spawn_gateway().await;
    let app = &gateway.app;
    let (_, key) = app.user(false).await;
    let (id, doomed) = app.api.new_key(&key).await;

    // A second replica on the same database, which has the key cached.
    let db2 = privaterouter_tests::TestDb { container: None, url: app.db.url.clone() };
    let replica = spawn_app_on(db2, |_| {}).await;
    assert_eq!(replica.api.models(&doomed).await.status(), 200);
    assert_eq!(app.api.models(&doomed).await.status(), 200);

    app.api.revoke_key_ok(&key, &id).await;
    let at = Instant::now();
    // At once on the replica that revoked it.
    assert_eq!(app.api.models(&doomed).await.status(), 401);
    // Within one second on the other.
    eventually("the replica refuses the revoked key", Duration::from_millis(1100), || async {
        let status = replica.api.models(&doomed).await.status();
        if status == 401 { Ok(()) } else { Err(format!("{status} after {:?}", at.elapsed())) }
    })
    .await;
    // The owner's other key is unaffected.
    assert_eq!(app.api.models(&key).await.status(), 200);
}

#[tokio::test]
async fn the_cli_creates_the_first_admin_without_any_default_credential() {
    let app = spawn_app().await;
    let bin = privaterouter_tests::api_binary();
    let output = tokio::process::Command::new(&bin)
        .args(["admin", "create-user", "--email", "root@example.test", "--admin"])
        .env("DATABASE_URL", &app.db.url)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "exactly one line on stdout: {stdout}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let key = created["api_key"].as_str().unwrap();
    let user_id = created["user_id"].as_str().unwrap();
    assert!(key.starts_with("pr-"));
    assert!(!String::from_utf8_lossy(&output.stderr).contains(key), "the key is not logged");

    // It is an admin: it may credit itself.
    let topup = json!({"kind": "topup", "amount_usd": "1.00", "reason": "bootstrap"});
    let user_id = user_id.parse().unwrap();
    let response = app.api.credit(key, user_id, Some("first"), &topup).await;
    assert_eq!(response.status(), 201);

    // The same email twice is refused with a clear error and a non-zero exit.
    let again = tokio::process::Command::new(&bin)
        .args(["admin", "create-user", "--email", "ROOT@example.test"])
        .env("DATABASE_URL", &app.db.url)
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(users, 1, "no default users exist besides the one created");
}

async fn create_key_with(app: &privaterouter_tests::TestApp, key: &str) -> (String, String) {
    app.api.new_key(key).await
}

async fn status_with(app: &privaterouter_tests::TestApp, key: &str) -> u16 {
    app.api.keys(key).await.status().as_u16()
}

async fn revoke_with(app: &privaterouter_tests::TestApp, key: &str, id: &str) {
    app.api.revoke_key_ok(key, id).await;
}

#[tokio::test]
async fn revoking_a_key_revokes_every_key_created_with_it() {
    let app = spawn_app().await;
    let (_, root) = app.user(false).await;
    // root → a → b → c
    let (a_id, a) = create_key_with(&app, &root).await;
    let (b_id, b) = create_key_with(&app, &a).await;
    let (_, c) = create_key_with(&app, &b).await;
    let listed = app.get_json(&format!("/api/keys/{b_id}"), &root).await;
    assert_eq!(listed["parent_key_id"], a_id.as_str(), "a key shows the key it was created with");

    // Revoking b takes c with it; its ancestors keep working.
    revoke_with(&app, &root, &b_id).await;
    assert_eq!([status_with(&app, &root).await, status_with(&app, &a).await], [200, 200]);
    assert_eq!([status_with(&app, &b).await, status_with(&app, &c).await], [401, 401]);

    // a → b2 → c2; c2 revokes its ancestor a (any key of a user may revoke any of its keys):
    // a's whole tree goes, c2 included, and root stays.
    let (_, b2) = create_key_with(&app, &a).await;
    let (_, c2) = create_key_with(&app, &b2).await;
    revoke_with(&app, &c2, &a_id).await;
    for key in [&a, &b2, &c2] {
        assert_eq!(status_with(&app, key).await, 401);
    }
    assert_eq!(status_with(&app, &root).await, 200);
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(active, 1, "only the root is left");
}

#[tokio::test]
async fn a_key_revoked_elsewhere_cannot_create_or_revoke_keys_while_still_cached_here() {
    let app = spawn_app().await;
    let (_, root) = app.user(false).await;
    let (doomed_id, doomed) = create_key_with(&app, &root).await;
    let (sibling_id, sibling) = create_key_with(&app, &root).await;
    // A replica that caches keys for ten minutes, and has this one cached.
    let db2 = privaterouter_tests::TestDb { container: None, url: app.db.url.clone() };
    let replica = spawn_app_on(db2, |c| c.key_cache_ttl_ms = 600_000).await;
    assert_eq!(status_with(&replica, &doomed).await, 200);

    revoke_with(&app, &root, &doomed_id).await;
    // Minting first: a refused revocation evicts the caller's key from the replica's cache, after
    // which any request with it is refused by authentication alone and this check would test
    // nothing.
    let minted = replica.api.create_key(&doomed, &json!({})).await;
    assert_eq!(minted.status(), 401, "a revoked key mints no key that would outlive it");
    // A thief whose key the owner revoked cannot revoke the owner's other keys in return.
    let revenge = replica.api.revoke_key(&doomed, &sibling_id).await;
    assert_eq!(revenge.status(), 401, "a revoked key revokes nothing");
    assert_eq!(status_with(&app, &sibling).await, 200, "the sibling is still active");
    let children: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE parent_key_id = $1")
        .bind(doomed_id.parse::<uuid::Uuid>().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(children, 0);
}

#[tokio::test]
async fn active_keys_per_user_are_limited_exactly_under_concurrency() {
    let app = privaterouter_tests::spawn_app_with(|c| {
        c.max_api_keys_per_user = 5;
        // A session for each attempt (and the app's own), so that all ten wait at the user's lock at once.
        c.db_max_connections = 20;
    })
    .await;
    let (user_id, key) = app.user(false).await;
    let none = json!({});
    let held = app.hold_user_row(user_id).await;
    let attempts = (0..10).map(|_| app.api.create_key(&key, &none));
    let (responses, ()) = tokio::join!(futures_util::future::join_all(attempts), async {
        app.wait_for_lock_waiters(10).await;
        held.commit().await.unwrap();
    });
    let mut statuses = Vec::new();
    for response in responses {
        statuses.push(response.status().as_u16());
        if response.status() == 409 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "limit_exceeded");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("5 active API keys") && message.contains("PR_MAX_API_KEYS_PER_USER"), "{message}");
            assert!(body["error"]["request_id"].is_string());
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 4, "4 more than the first key: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 6, "{statuses:?}");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(active, 5);

    // Revoked keys do not count.
    let list = app.get_json("/api/keys", &key).await;
    let other = list["data"].as_array().unwrap().iter().find(|k| k["prefix"] != key[..9]).unwrap()["id"].clone();
    revoke_with(&app, &key, other.as_str().unwrap()).await;
    create_key_with(&app, &key).await;
}

/// Scans of `api_keys` since the server started, as Postgres' statistics show them once the
/// API's sessions have flushed theirs (at most 10 s after they go idle).
async fn api_key_scans(pool: &sqlx::PgPool) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *conn).await.unwrap();
    sqlx::query_scalar(
        "SELECT (coalesce(seq_scan, 0) + coalesce(idx_scan, 0))::bigint FROM pg_stat_user_tables WHERE relname = 'api_keys'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_burst_of_calls_with_a_fresh_key_looks_it_up_once() {
    let app = privaterouter_tests::spawn_app_with(|c| c.key_cache_ttl_ms = 120_000).await;
    let (_, key) = app.user(false).await;
    // Settle the statistics of the set-up (user and key creation scan nothing, but wait for
    // whatever the start-up did to be counted).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = api_key_scans(&app.pool).await;
    let calls = (0..50).map(|_| app.api.models(&key));
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    eventually("the lookup counted", Duration::from_secs(30), || async {
        (api_key_scans(&app.pool).await > before).then_some(())
    })
    .await;
    // Every session the lookups could have used flushes its statistics within 10 s of idling.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(api_key_scans(&app.pool).await - before, 1, "50 concurrent misses of one key share one lookup");
}
