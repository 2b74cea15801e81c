use privaterouter_tests::{random_hex, spawn_app};
use serde_json::{Value, json};

#[tokio::test]
async fn admin_credits_are_idempotent_validated_and_admin_only() {
    let app = spawn_app().await;
    let (_, admin) = app.user(true).await;
    let (user_id, user) = app.user(false).await;
    let balance = || async { app.api.balance(&user).await["balance_usd"].as_str().unwrap().to_owned() };
    assert_eq!(balance().await, "0.00");

    let topup = json!({"kind": "topup", "amount_usd": "12.50", "reason": "invoice 7"});
    assert_eq!(app.api.credit(&user, user_id, Some("k1"), &topup).await.status(), 403, "users cannot credit");
    assert_eq!(app.api.credit(&admin, user_id, None, &topup).await.status(), 400, "Idempotency-Key is required");

    let first = app.api.credit(&admin, user_id, Some("k1"), &topup).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["applied"], true);
    assert_eq!(first["balance_usd"], "12.50");
    for _ in 0..3 {
        let retry = app.api.credit(&admin, user_id, Some("k1"), &topup).await;
        assert_eq!(retry.status(), 200, "a retry is answered, not applied");
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(retry["applied"], false);
        assert_eq!(retry["transaction"]["id"], first["transaction"]["id"]);
    }
    assert_eq!(balance().await, "12.50");
    let reuse = app
        .api
        .credit(&admin, user_id, Some("k1"), &json!({"kind": "topup", "amount_usd": "99", "reason": "invoice 7"}))
        .await;
    assert_eq!(reuse.status(), 422, "same key, different request");

    // Concurrent retries of one key apply once.
    let refund = json!({"kind": "refund", "amount_usd": "0.000001", "reason": "r"});
    let tasks = (0..20).map(|_| app.api.credit(&admin, user_id, Some("k2"), &refund));
    let statuses: Vec<u16> =
        futures_util::future::join_all(tasks).await.into_iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 19, "the others are answered as retries: {statuses:?}");
    assert_eq!(balance().await, "12.500001");

    assert_eq!(
        app.api
            .credit(
                &admin,
                user_id,
                Some("k3"),
                &json!({"kind": "admin_adjust", "amount_usd": "-2.5", "reason": "correction"})
            )
            .await
            .status(),
        201
    );
    assert_eq!(balance().await, "10.000001");

    for (body, why) in [
        (json!({"kind": "usage", "amount_usd": "1", "reason": ""}), "usage is not an admin kind"),
        (json!({"kind": "bonus", "amount_usd": "1", "reason": ""}), "unknown kind"),
        (json!({"kind": "topup", "amount_usd": "-1", "reason": ""}), "negative topup"),
        (json!({"kind": "topup", "amount_usd": "ten", "reason": ""}), "not a number"),
        (json!({"kind": "topup", "amount_usd": 10, "reason": ""}), "a JSON number, not a decimal string"),
        (json!({"kind": "topup", "amount_usd": "1.0000000000001", "reason": ""}), "beyond 12 decimals"),
        (json!({"kind": "admin_adjust", "amount_usd": "0", "reason": ""}), "zero adjustment"),
    ] {
        let response = app.api.credit(&admin, user_id, Some(&random_hex(8)), &body).await;
        assert_eq!(response.status(), 400, "{why}");
    }
    let missing = app.api.credit(&admin, uuid::Uuid::new_v4(), Some("x"), &topup).await;
    assert_eq!(missing.status(), 404);

    // The ledger invariant, in SQL.
    let (sum, stored): (String, String) = sqlx::query_as(
        "SELECT (SELECT sum(amount_usd) FROM credit_transactions WHERE user_id = $1)::text, \
                (SELECT balance_usd FROM user_balances WHERE user_id = $1)::text",
    )
    .bind(user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(sum, stored);

    // Counted by kind.
    let s = app.samples().await;
    assert_eq!(s.expect("pr_credit_transactions_total", &[("kind", "topup")]), 1.0);
    assert_eq!(s.expect("pr_credit_transactions_total", &[("kind", "refund")]), 1.0);
    assert_eq!(s.expect("pr_credit_transactions_total", &[("kind", "admin_adjust")]), 1.0);
}

#[tokio::test]
async fn transactions_are_paginated_newest_first() {
    let app = spawn_app().await;
    let (_, admin) = app.user(true).await;
    let (user_id, user) = app.user(false).await;
    for i in 1..=7 {
        app.topup(&admin, user_id, &format!("{i}.00")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let mut path = "/api/billing/transactions?limit=3".to_owned();
        if let Some(c) = cursor {
            path.push_str(&format!("&before={c}"));
        }
        let page = app.api.get_ok(&user, &path).await;
        for t in page["data"].as_array().unwrap() {
            assert_eq!(t["kind"], "topup");
            seen.push(t["amount_usd"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["7.00", "6.00", "5.00", "4.00", "3.00", "2.00", "1.00"]);
    // Another user's ledger is separate.
    let other = app.api.get_ok(&admin, "/api/billing/transactions").await;
    assert!(other["data"].as_array().unwrap().is_empty());
}
