use privaterouter_tests::{TestApp, spawn_gateway, spawn_gateway_with};
use serde_json::{Value, json};

/// A user with 1 USD of credit: (id, key).
async fn funded_user(app: &TestApp) -> (uuid::Uuid, String) {
    let (_, admin) = app.user(true).await;
    let (user_id, key) = app.user(false).await;
    app.topup(&admin, user_id, "1").await;
    (user_id, key)
}

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
    let (user_id, key) = funded_user(app).await;
    let (_, stranger) = app.user(false).await;

    let unknown = app
        .client
        .post(app.url("/api/chat/conversations"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");

    let created = app
        .client
        .post(app.url("/api/chat/conversations"))
        .bearer_auth(&key)
        .json(&json!({"model": "echo", "title": "first", "system": "be brief"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let conversation: Value = created.json().await.unwrap();
    let id = conversation["id"].as_str().unwrap().to_owned();

    for (i, text) in ["hello", "and again"].iter().enumerate() {
        let sent = app
            .client
            .post(app.url(&format!("/api/chat/conversations/{id}/messages")))
            .bearer_auth(&key)
            .json(&json!({"content": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201);
        let sent: Value = sent.json().await.unwrap();
        assert_eq!(sent["assistant_message"]["content"], format!("echo: {text}"));
        assert_eq!(sent["usage"]["cost_usd"], "0.000222");
        // The whole history went to the model: system + previous turns + this message.
        let request = &g.upstream.requests()[i];
        assert_eq!(request["messages"].as_array().unwrap().len(), 2 + 2 * i, "{request}");
        assert_eq!(request["messages"][0]["role"], "system");
    }

    let shown: Value = app
        .client
        .get(app.url(&format!("/api/chat/conversations/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roles: Vec<&str> = shown["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);

    // Only the owner sees or writes to it.
    for response in [
        app.client.get(app.url(&format!("/api/chat/conversations/{id}"))).bearer_auth(&stranger).send().await.unwrap(),
        app.client
            .post(app.url(&format!("/api/chat/conversations/{id}/messages")))
            .bearer_auth(&stranger)
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(response.status(), 404);
    }
    let theirs: Value = app
        .client
        .get(app.url("/api/chat/conversations"))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(theirs["data"].as_array().unwrap().is_empty());

    // Pagination: 4 more conversations, pages of 2, newest first.
    for n in 2..=5 {
        let r = app
            .client
            .post(app.url("/api/chat/conversations"))
            .bearer_auth(&key)
            .json(&json!({"model": "echo", "title": format!("c{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let mut titles = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => app.url(&format!("/api/chat/conversations?limit=2&before={c}")),
            None => app.url("/api/chat/conversations?limit=2"),
        };
        let page: Value = app.client.get(url).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
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
    assert_eq!(s.get("pr_chat_conversations_created_total", &[]), 5.0);
    assert_eq!(
        s.get("pr_llm_calls_total", &[("model", "echo"), ("endpoint", "conversation_message"), ("status", "success")]),
        2.0
    );
}

#[tokio::test]
async fn conversation_messages_send_only_documented_parameters_and_relay_upstream_errors_as_ours() {
    let g = spawn_gateway().await;
    let app = &g.app;
    let (user_id, key) = funded_user(app).await;
    let conversation = |model: &'static str| {
        let request = app.client.post(app.url("/api/chat/conversations")).bearer_auth(&key);
        async move {
            let created: Value = request.json(&json!({"model": model})).send().await.unwrap().json().await.unwrap();
            created["id"].as_str().unwrap().to_owned()
        }
    };
    let send = |id: String, body: Value| {
        let request =
            app.client.post(app.url(&format!("/api/chat/conversations/{id}/messages"))).bearer_auth(&key).json(&body);
        async move { request.send().await.unwrap() }
    };

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
    let shown = app.get_json(&format!("/api/chat/conversations/{failing}"), &key).await;
    assert!(shown["messages"].as_array().unwrap().is_empty(), "{shown}");
    app.wait_for_metrics("the answered message is billed", |s| {
        s.get("pr_credit_transactions_total", &[("kind", "usage")]) == 1.0
    })
    .await;
    assert_eq!(usage_rows(app, user_id).await, 1, "only the message that was answered");
}

async fn create(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    let r = app.client.post(app.url("/api/chat/conversations")).bearer_auth(key).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn send(app: &TestApp, key: &str, id: &str, content: &str) -> (u16, Value) {
    let url = app.url(&format!("/api/chat/conversations/{id}/messages"));
    let r = app.client.post(url).bearer_auth(key).json(&json!({"content": content})).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
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
    let (_, key) = funded_user(&g.app).await;
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
    let (user_id, key) = funded_user(&g.app).await;
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
    let (user_id, key) = funded_user(&g.app).await;
    let (_, other) = funded_user(&g.app).await;
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
