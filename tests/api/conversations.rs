use privaterouter_tests::{
    TestApp,
    client::{expect_json, status_json},
    spawn_gateway, spawn_gateway_with,
};
use serde_json::{Value, json};

/// How many calls of a user were billed.
async fn usage_rows(app: &TestApp, user_id: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND kind = 'usage'")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn conversations_keep_history_bill_each_message_and_stay_private() {
    let g = spawn_gateway().await;
    let app = &g.app;
    let (user_id, key) = app.funded_user("1").await;
    let (_, stranger) = app.user(false).await;

    let unknown = expect_json(app.api.create_conversation(&key, &json!({"model": "gpt-9"})).await, 404).await;
    assert_eq!(unknown["error"]["code"], "model_not_found");

    let first = json!({"model": "echo", "title": "first", "system": "be brief"});
    let conversation = expect_json(app.api.create_conversation(&key, &first).await, 201).await;
    let id = conversation["id"].as_str().unwrap().to_owned();

    for (i, text) in ["hello", "and again"].iter().enumerate() {
        let sent = expect_json(app.api.send_message(&key, &id, &json!({"content": text})).await, 201).await;
        assert_eq!(sent["assistant_message"]["content"], format!("echo: {text}"));
        assert_eq!(sent["usage"]["cost_usd"], "0.000222");
        // The whole history went to the model: system + previous turns + this message.
        let request = &g.upstream.requests()[i];
        assert_eq!(request["messages"].as_array().unwrap().len(), 2 + 2 * i, "{request}");
        assert_eq!(request["messages"][0]["role"], "system");
    }

    let shown = expect_json(app.api.conversation(&key, &id).await, 200).await;
    let roles: Vec<&str> = shown["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);

    // Only the owner sees or writes to it.
    for response in [
        app.api.conversation(&stranger, &id).await,
        app.api.send_message(&stranger, &id, &json!({"content": "x"})).await,
    ] {
        assert_eq!(response.status(), 404);
    }
    let theirs = app.api.get_ok(&stranger, "/api/chat/conversations").await;
    assert!(theirs["data"].as_array().unwrap().is_empty());

    // Pagination: 4 more conversations, pages of 2, newest first.
    for n in 2..=5 {
        let body = json!({"model": "echo", "title": format!("c{n}")});
        expect_json(app.api.create_conversation(&key, &body).await, 201).await;
    }
    let mut titles = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/chat/conversations?limit=2&before={c}"),
            None => "/api/chat/conversations?limit=2".to_owned(),
        };
        let page = app.api.get_ok(&key, &path).await;
        titles.extend(page["data"].as_array().unwrap().iter().map(|c| c["title"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(titles, ["c5", "c4", "c3", "c2", "first"]);

    // The ledger rows are written by the billing batch after the answer went out.
    privaterouter_tests::eventually("both messages are billed", std::time::Duration::from_secs(10), || async {
        (usage_rows(app, user_id).await == 2).then_some(())
    })
    .await;
    let s = app.samples().await;
    assert_eq!(s.expect("pr_chat_conversations_created_total", &[]), 5.0);
    assert_eq!(
        s.expect(
            "pr_llm_calls_total",
            &[("model", "echo"), ("endpoint", "conversation_message"), ("status", "success")]
        ),
        2.0
    );
}

#[tokio::test]
async fn conversation_messages_send_only_documented_parameters_and_relay_upstream_errors_as_ours() {
    let g = spawn_gateway().await;
    let app = &g.app;
    let (user_id, key) = app.funded_user("1").await;
    let (api, key) = (&app.api, key.as_str());
    let conversation = |model: &'static str| async move {
        let created = expect_json(api.create_conversation(key, &json!({"model": model})).await, 201).await;
        created["id"].as_str().unwrap().to_owned()
    };
    let send = |id: String, body: Value| async move { api.send_message(key, &id, &body).await };

    let id = conversation("echo").await;
    for field in ["api_base", "mock_response", "metadata", "litellm_params"] {
        let mut body = json!({"content": "hi"});
        body[field] = json!("x");
        let response = send(id.clone(), body).await;
        assert_eq!(response.status(), 400, "{field}");
    }
    assert!(g.upstream.requests().is_empty(), "a refused message sends nothing upstream");
    assert_eq!(send(id.clone(), json!({"content": "hi"})).await.status(), 201);
    let forwarded = privaterouter_api::llm::request_fields::CHAT_COMPLETIONS.forwarded;
    let sent = g.upstream.requests();
    assert_eq!(sent.len(), 1);
    for k in sent[0].as_object().unwrap().keys() {
        assert!(forwarded.contains(&k.as_str()), "{k} reached the upstream");
    }

    // An upstream that refuses the gateway's key: a 502 of ours, nothing stored, nothing billed.
    let failing = conversation("fail401").await;
    let response = send(failing.clone(), json!({"content": "hi"})).await;
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("www-authenticate").is_none());
    let e: Value = response.json().await.unwrap();
    assert_eq!(e["error"]["code"], "upstream_auth_failed");
    assert!(e["error"]["request_id"].is_string());
    let shown = app.get_json(&format!("/api/chat/conversations/{failing}"), key).await;
    assert!(shown["messages"].as_array().unwrap().is_empty(), "{shown}");
    app.wait_for_metrics("the answered message is billed", |s| {
        s.value("pr_credit_transactions_total", &[("kind", "usage")]) == Some(1.0)
    })
    .await;
    assert_eq!(usage_rows(app, user_id).await, 1, "only the message that was answered");
}

async fn create(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    status_json(app.api.create_conversation(key, body).await).await
}

async fn send(app: &TestApp, key: &str, id: &str, content: &str) -> (u16, Value) {
    status_json(app.api.send_message(key, id, &json!({"content": content})).await).await
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(mentions), "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn creating_a_conversation_needs_available_credit() {
    let g = spawn_gateway().await;
    let (_, admin) = g.app.user(true).await;
    let (user_id, key) = g.app.user(false).await;
    let (status, body) = create(&g.app, &key, &json!({"model": "echo"})).await;
    assert_error(status, &body, 402, "insufficient_credits", "0.00 USD is available");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations").fetch_one(&g.app.pool).await.unwrap();
    assert_eq!(stored, 0);
    g.app.topup(&admin, user_id, "0.01").await;
    assert_eq!(create(&g.app, &key, &json!({"model": "echo"})).await.0, 201);
}

#[tokio::test]
async fn titles_system_prompts_and_messages_are_limited_in_characters() {
    let g = spawn_gateway_with(|c| {
        c.max_title_chars = 10;
        c.max_system_prompt_chars = 20;
        c.max_message_chars = 30;
    })
    .await;
    let (_, key) = g.app.funded_user("1").await;
    let (status, body) = create(&g.app, &key, &json!({"model": "echo", "title": "é".repeat(11)})).await;
    assert_error(status, &body, 400, "invalid_title", "PR_MAX_TITLE_CHARS");
    let (status, body) = create(&g.app, &key, &json!({"model": "echo", "system": "s".repeat(21)})).await;
    assert_error(status, &body, 400, "invalid_system", "PR_MAX_SYSTEM_PROMPT_CHARS");
    // At the limits (counted in characters, not bytes): accepted.
    let (status, body) =
        create(&g.app, &key, &json!({"model": "echo", "title": "é".repeat(10), "system": "s".repeat(20)})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap();
    let (status, body) = send(&g.app, &key, id, &"m".repeat(31)).await;
    assert_error(status, &body, 400, "invalid_content", "PR_MAX_MESSAGE_CHARS");
    assert!(g.upstream.requests().is_empty(), "refused before any call");
    assert_eq!(send(&g.app, &key, id, &"m".repeat(30)).await.0, 201);
}

#[tokio::test]
async fn a_conversation_holds_at_most_the_configured_messages_and_a_refused_send_is_not_billed() {
    let g = spawn_gateway_with(|c| c.max_messages_per_conversation = 5).await;
    let (user_id, key) = g.app.funded_user("1").await;
    let (_, body) = create(&g.app, &key, &json!({"model": "echo", "system": "be brief"})).await;
    let id = body["id"].as_str().unwrap();
    // system + 2 × (user, assistant) = 5 messages.
    for text in ["one", "two"] {
        assert_eq!(send(&g.app, &key, id, text).await.0, 201);
    }
    let (status, body) = send(&g.app, &key, id, "three").await;
    assert_error(status, &body, 409, "limit_exceeded", "PR_MAX_MESSAGES_PER_CONVERSATION");
    assert_eq!(g.upstream.requests().len(), 2, "the refused message never reached the model");
    let shown = g.app.get_json(&format!("/api/chat/conversations/{id}"), &key).await;
    assert_eq!(shown["messages"].as_array().unwrap().len(), 5);
    let usage = privaterouter_tests::eventually("two calls billed", std::time::Duration::from_secs(10), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND kind = 'usage'")
                .bind(user_id)
                .fetch_one(&g.app.pool)
                .await
                .unwrap();
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(usage, 2);
}

#[tokio::test]
async fn conversations_per_user_are_limited_exactly_under_concurrency() {
    let g = spawn_gateway_with(|c| {
        c.max_conversations_per_user = 3;
        // A session for each attempt (and the app's own), so that all ten wait at the user's lock at once.
        c.db_max_connections = 20;
    })
    .await;
    let (user_id, key) = g.app.funded_user("1").await;
    let (_, other) = g.app.funded_user("1").await;
    let bodies: Vec<Value> = (0..10).map(|i| json!({"model": "echo", "title": format!("c{i}")})).collect();
    let held = g.app.hold_user_row(user_id).await;
    let attempts = bodies.iter().map(|body| create(&g.app, &key, body));
    let (results, ()) = tokio::join!(futures_util::future::join_all(attempts), async {
        g.app.wait_for_lock_waiters(10).await;
        held.commit().await.unwrap();
    });
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 3, "{statuses:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 201) {
        assert_error(
            *status,
            body,
            409,
            "limit_exceeded",
            "The limit of 3 conversations is reached (PR_MAX_CONVERSATIONS_PER_USER)",
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&g.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 3);
    // The limit is per user.
    assert_eq!(create(&g.app, &other, &json!({"model": "echo"})).await.0, 201);
}
