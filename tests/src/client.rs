//! A typed client for the API's routes (zero2prod's `TestApp::post_subscriptions`): a test says
//! which route it calls and with which key, the client builds the request. It takes its base URL
//! and `reqwest::Client`, so the stack tests use it through nginx with their own TLS client.
//!
//! Methods return the `reqwest::Response` for the test to assert on; the `*_ok` forms assert the
//! one status a setup step needs and return the JSON body. A request that gets no answer panics.

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct ApiClient {
    /// `scheme://host:port`, without a trailing slash.
    pub base: String,
    pub http: reqwest::Client,
}

/// The answer's status and JSON body, read in full (a body that is not JSON fails the test).
pub async fn status_json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("the body is read in full");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: the body is not JSON ({e}): {text}"));
    (status, body)
}

/// Asserts the status, naming the body when it differs; returns the JSON body.
pub async fn expect_json(response: Response, status: u16) -> Value {
    let (got, body) = status_json(response).await;
    assert_eq!(got, status, "{body}");
    body
}

impl ApiClient {
    pub fn new(base: impl Into<String>, http: reqwest::Client) -> Self {
        Self { base: base.into().trim_end_matches('/').to_owned(), http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the key as bearer token, for what the typed methods do not cover (extra
    /// headers, a client-side timeout).
    pub fn request(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(key)
    }

    async fn send(request: RequestBuilder) -> Response {
        request.send().await.expect("the request is answered")
    }

    pub async fn get(&self, key: &str, path: &str) -> Response {
        Self::send(self.request(Method::GET, path, key)).await
    }

    /// `GET path` with `key`, expecting 200; the JSON body.
    pub async fn get_ok(&self, key: &str, path: &str) -> Value {
        expect_json(self.get(key, path).await, 200).await
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Response {
        Self::send(self.request(Method::POST, path, key).json(body)).await
    }

    pub async fn patch(&self, key: &str, path: &str, body: &Value) -> Response {
        Self::send(self.request(Method::PATCH, path, key).json(body)).await
    }

    pub async fn delete(&self, key: &str, path: &str) -> Response {
        Self::send(self.request(Method::DELETE, path, key)).await
    }

    // --- accounts: keys

    pub async fn create_key(&self, key: &str, body: &Value) -> Response {
        self.post(key, "/api/keys", body).await
    }

    /// Creates a key with `key` (201 expected): the new key's JSON (`id`, `key`, ...).
    pub async fn create_key_ok(&self, key: &str, body: &Value) -> Value {
        expect_json(self.create_key(key, body).await, 201).await
    }

    /// Creates a key with `key`: (its id, the key).
    pub async fn new_key(&self, key: &str) -> (String, String) {
        let created = self.create_key_ok(key, &json!({})).await;
        (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned())
    }

    pub async fn keys(&self, key: &str) -> Response {
        self.get(key, "/api/keys").await
    }

    pub async fn revoke_key(&self, key: &str, id: &str) -> Response {
        self.delete(key, &format!("/api/keys/{id}")).await
    }

    /// Revokes key `id` with `key`, expecting 204.
    pub async fn revoke_key_ok(&self, key: &str, id: &str) {
        let response = self.revoke_key(key, id).await;
        let status = response.status();
        assert_eq!(status, 204, "{}", response.text().await.unwrap());
    }

    // --- billing

    /// `POST /api/admin/users/{user_id}/credits`, with an Idempotency-Key when given.
    pub async fn credit(&self, admin: &str, user_id: Uuid, idempotency: Option<&str>, body: &Value) -> Response {
        let mut request = self.request(Method::POST, &format!("/api/admin/users/{user_id}/credits"), admin).json(body);
        if let Some(k) = idempotency {
            request = request.header("idempotency-key", k);
        }
        Self::send(request).await
    }

    /// Credits a user `amount` USD as a top-up (201 expected).
    pub async fn topup(&self, admin: &str, user_id: Uuid, amount: &str) {
        let body = json!({"kind": "topup", "amount_usd": amount, "reason": "test"});
        expect_json(self.credit(admin, user_id, Some(&crate::random_hex(8)), &body).await, 201).await;
    }

    /// The user's balance (200 expected).
    pub async fn balance(&self, key: &str) -> Value {
        self.get_ok(key, "/api/billing/balance").await
    }

    // --- conversations

    pub async fn create_conversation(&self, key: &str, body: &Value) -> Response {
        self.post(key, "/api/chat/conversations", body).await
    }

    pub async fn conversation(&self, key: &str, id: &str) -> Response {
        self.get(key, &format!("/api/chat/conversations/{id}")).await
    }

    pub async fn send_message(&self, key: &str, id: &str, body: &Value) -> Response {
        self.post(key, &format!("/api/chat/conversations/{id}/messages"), body).await
    }

    // --- GPU nodes (admin)

    pub async fn add_gpu_node(&self, admin: &str, body: &Value) -> Response {
        self.post(admin, "/api/admin/gpu-nodes", body).await
    }

    pub async fn gpu_nodes(&self, admin: &str) -> Response {
        self.get(admin, "/api/admin/gpu-nodes").await
    }

    pub async fn gpu_node(&self, admin: &str, id: &str) -> Response {
        self.get(admin, &format!("/api/admin/gpu-nodes/{id}")).await
    }

    pub async fn patch_gpu_node(&self, admin: &str, id: &str, body: &Value) -> Response {
        self.patch(admin, &format!("/api/admin/gpu-nodes/{id}"), body).await
    }

    pub async fn delete_gpu_node(&self, admin: &str, id: &str) -> Response {
        self.delete(admin, &format!("/api/admin/gpu-nodes/{id}")).await
    }

    // --- the LLM endpoints

    pub async fn models(&self, key: &str) -> Response {
        self.get(key, "/v1/models").await
    }

    pub async fn chat(&self, key: &str, body: &Value) -> Response {
        self.post(key, "/v1/chat/completions", body).await
    }

    pub async fn embeddings(&self, key: &str, body: &Value) -> Response {
        self.post(key, "/v1/embeddings", body).await
    }
}
