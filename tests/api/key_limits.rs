//! Where rate limits come from: a key's own (set at creation, only ever tighter than the key
//! that creates it and its user's), a user's (the PR_USER_* defaults where the row sets none),
//! and what admins set. Enforcement is tested with the limiter.

use privaterouter_tests::{TestApp, client::status_json, spawn_app_with};
use serde_json::{Value, json};

async fn post_key(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    status_json(app.api.create_key(key, &body).await).await
}

async fn patch(app: &TestApp, key: &str, path: &str, body: Value) -> (u16, Value) {
    status_json(app.api.patch(key, path, &body).await).await
}

fn refused_as_invalid_limits(status: u16, body: &Value, mentions: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_limits", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(mentions), "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn a_new_key_inherits_the_creating_keys_limits_and_may_only_tighten_them() {
    // A user default of 100 requests per minute; no token or concurrency default.
    let app = spawn_app_with(|c| c.user_requests_per_minute = 100).await;
    let (_, root) = app.user(false).await;

    let (status, limited) =
        post_key(&app, &root, json!({"name": "ci", "limits": {"requests_per_minute": 30, "max_concurrent": 2}})).await;
    assert_eq!(status, 201, "{limited}");
    assert_eq!(limited["limits"], json!({"requests_per_minute": 30, "tokens_per_minute": null, "max_concurrent": 2}));
    let limited_key = limited["key"].as_str().unwrap().to_owned();

    // Above the user's default, or above the creating key's own limit: refused, nothing created.
    let before = app.get_json("/api/keys", &root).await["data"].as_array().unwrap().len();
    let (status, body) = post_key(&app, &root, json!({"limits": {"requests_per_minute": 101}})).await;
    refused_as_invalid_limits(status, &body, "your account");
    let (status, body) = post_key(&app, &limited_key, json!({"limits": {"max_concurrent": 3}})).await;
    refused_as_invalid_limits(status, &body, "the key that creates it");
    for bad in [json!({"requests_per_minute": 0}), json!({"tokens_per_minute": -1}), json!({"rpm": 5})] {
        let (status, body) = post_key(&app, &root, json!({"limits": bad})).await;
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
        assert!(body["error"]["code"].is_string() && body["error"]["request_id"].is_string(), "{bad}: {body}");
    }
    assert_eq!(app.get_json("/api/keys", &root).await["data"].as_array().unwrap().len(), before);

    // A child of the limited key: what it leaves out it inherits, what it sets is tighter.
    let (status, child) = post_key(&app, &limited_key, json!({"limits": {"requests_per_minute": 10}})).await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(child["limits"], json!({"requests_per_minute": 10, "tokens_per_minute": null, "max_concurrent": 2}));
    let (_, plain_child) = post_key(&app, &limited_key, json!({})).await;
    assert_eq!(plain_child["limits"], limited["limits"], "no limits asked: the parent's");

    // Listings show each key's own limits.
    let listed = app.get_json(&format!("/api/keys/{}", child["id"].as_str().unwrap()), &root).await;
    assert_eq!(listed["limits"], child["limits"]);
    let root_keys = app.get_json("/api/keys", &root).await;
    let unlimited = root_keys["data"].as_array().unwrap().iter().find(|k| k["parent_key_id"].is_null()).unwrap();
    assert_eq!(
        unlimited["limits"],
        json!({"requests_per_minute": null, "tokens_per_minute": null, "max_concurrent": null})
    );
}

#[tokio::test]
async fn admins_set_any_keys_and_users_limits_and_they_apply_at_once() {
    // A long key cache: only the eviction on change can explain limits taking effect at once.
    let app = spawn_app_with(|c| {
        c.key_cache_ttl_ms = 60_000;
        c.user_tokens_per_minute = 50_000;
    })
    .await;
    let (_, admin) = app.user(true).await;
    let (user_id, key) = app.user(false).await;
    let (_, created) = post_key(&app, &key, json!({"limits": {"requests_per_minute": 5}})).await;
    let key_id = created["id"].as_str().unwrap().to_owned();

    // Only admins; unknown ids are 404; bad values are refused.
    let (status, _) = patch(&app, &key, &format!("/api/admin/keys/{key_id}"), json!({"limits": {}})).await;
    assert_eq!(status, 403);
    let missing = uuid::Uuid::new_v4();
    let (status, _) = patch(&app, &admin, &format!("/api/admin/keys/{missing}"), json!({"limits": {}})).await;
    assert_eq!(status, 404);
    let (status, _) = patch(&app, &admin, &format!("/api/admin/users/{missing}"), json!({"limits": {}})).await;
    assert_eq!(status, 404);
    let (status, body) =
        patch(&app, &admin, &format!("/api/admin/keys/{key_id}"), json!({"limits": {"max_concurrent": 0}})).await;
    refused_as_invalid_limits(status, &body, "max_concurrent");

    // A field left out keeps its value; null removes it; an admin may loosen past the user's.
    let (status, body) = patch(
        &app,
        &admin,
        &format!("/api/admin/keys/{key_id}"),
        json!({"limits": {"tokens_per_minute": 90_000, "max_concurrent": 4}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"], json!({"requests_per_minute": 5, "tokens_per_minute": 90_000, "max_concurrent": 4}));
    let (_, body) =
        patch(&app, &admin, &format!("/api/admin/keys/{key_id}"), json!({"limits": {"requests_per_minute": null}}))
            .await;
    assert_eq!(body["limits"], json!({"requests_per_minute": null, "tokens_per_minute": 90_000, "max_concurrent": 4}));
    assert_eq!(app.get_json(&format!("/api/keys/{key_id}"), &key).await["limits"], body["limits"]);

    // The user's limits: what the row sets, the default elsewhere.
    let (status, body) =
        patch(&app, &admin, &format!("/api/admin/users/{user_id}"), json!({"limits": {"requests_per_minute": 20}}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits"], json!({"requests_per_minute": 20, "tokens_per_minute": null, "max_concurrent": null}));
    assert_eq!(
        body["effective_limits"],
        json!({"requests_per_minute": 20, "tokens_per_minute": 50_000, "max_concurrent": null})
    );
    // The user's key is cached (it has been used above); the new user limit binds it at once.
    let (status, body) = post_key(&app, &key, json!({"limits": {"requests_per_minute": 21}})).await;
    refused_as_invalid_limits(status, &body, "your account");
    let (status, _) = post_key(&app, &key, json!({"limits": {"requests_per_minute": 20}})).await;
    assert_eq!(status, 201);
}
