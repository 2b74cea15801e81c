//! nginx's connections to the API: kept alive and reused (a proxy_pass through a variable opened
//! one per request and left it in TIME_WAIT), and an API that is absent when nginx starts is
//! picked up once its name resolves (nginx/entrypoint.sh re-resolves and reloads).

use std::{collections::BTreeSet, time::Duration};

use privaterouter_hardening::net::Request;
use serde_json::Value;

use crate::harness::{Kit, Stack, eventually};

/// Below nginx's per-IP burst (API_RATE_BURST=40 in the harness), so none is refused with 429.
const REQUESTS: usize = 30;

/// nginx's TCP connections to the API's port 8000 (any state, TIME_WAIT included), by local
/// port, read from /proc/net/tcp in nginx's network namespace.
async fn api_connections(stack: &Stack) -> BTreeSet<String> {
    let (code, out) = stack.in_nginx("cat /proc/net/tcp").await;
    assert_eq!(code, 0, "{out}");
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (fields.get(1)?, fields.get(2)?);
            remote.ends_with(":1F40").then(|| local.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_reuses_its_connections_to_the_api() {
    let mut kit = Kit::new();
    // Each worker keeps its own idle connections: a fixed count makes the bound exact.
    kit.edit_nginx("nginx.conf", "worker_processes auto;", "worker_processes 2;");
    let stack = Stack::start(kit).await;

    let before = api_connections(&stack).await;
    for i in 0..REQUESTS {
        // A new client connection (and TLS handshake) each time; nginx's side must not follow.
        let r = stack.https("api", Request::get("/healthz")).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let after = api_connections(&stack).await;
    let opened: Vec<&String> = after.difference(&before).collect();
    assert!(
        opened.len() <= 2,
        "{REQUESTS} requests through nginx opened {} connections to the API (at most one per worker \
         expected): {opened:?}\n{}",
        opened.len(),
        stack.logs().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_starts_without_the_api_and_proxies_once_it_is_back() {
    let mut stack = Stack::start(Kit::new()).await;

    // nginx restarted while the API is away: its name does not resolve at start.
    stack.api.stop().await.expect("stop the API");
    stack.nginx.stop().await.expect("stop nginx");
    stack.nginx.start().await.expect("nginx starts again");
    stack.refresh_nginx_ports().await;

    let stack = &stack;
    let body: Value = eventually("nginx answers without the API", Duration::from_secs(30), || async move {
        let r = stack.https("api", Request::get("/healthz")).await?;
        if r.status != 502 {
            return Err(format!("{} {}", r.status, r.text()));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))
    })
    .await;
    assert_eq!(body["error"]["type"], "api_unreachable", "{body}");

    stack.api.start().await.expect("the API starts again");
    eventually("the API through nginx once it is back", Duration::from_secs(60), || async move {
        match stack.https("api", Request::get("/readyz")).await? {
            r if r.status == 200 => Ok(()),
            r => Err(format!("{} {}", r.status, r.text())),
        }
    })
    .await;
}
