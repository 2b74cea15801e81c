use privaterouter_tests::{TestApp, spawn_gateway};
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

    assert_eq!(usage_rows(app, user_id).await, 2);
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
