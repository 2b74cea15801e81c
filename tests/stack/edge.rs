//! nginx's own rules at the edge, through the real nginx of the stack: which Host spellings
//! count as one of the three hosts, the per-address limit on requests in progress, and the
//! request body limit. (Unknown hosts getting nothing is the `unknown-host` audit item.)

use std::{
    io::{Read, Write},
    time::Duration,
};

use privaterouter_hardening::{
    Target,
    net::{self, Endpoint, Request, Response},
};

use crate::harness::{DOMAIN, Kit, Stack, eventually};

/// A TLS connection to api.<domain> through nginx, certificate verified (blocking).
fn api_connection(target: &Target) -> impl Read + Write + Send + 'static {
    let host = format!("api.{DOMAIN}");
    let (tcp, _) = net::connect(target, &Endpoint::new(&host, 443)).expect("connect to nginx");
    let tls = net::verifying_connector(target).unwrap();
    tls.connect(&host, tcp).expect("TLS handshake with nginx")
}

/// Sends `request` as it is on a new connection to api.<domain>; the parsed response.
async fn raw_api_request(stack: &Stack, request: String) -> Response {
    let target = stack.target();
    tokio::task::spawn_blocking(move || {
        let stream = api_connection(&target);
        let (raw, end) = net::send_bytes(stream, request.as_bytes()).expect("send");
        net::parse_response(&raw).unwrap_or_else(|e| panic!("{e} (read ended with {end:?})"))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_spellings_of_the_api_reach_it_and_others_get_421() {
    let stack = Stack::start(Kit::new()).await;
    // Upper case, a port, a trailing dot: the same host (RFC 9110 §4.2.3, RFC 1034), served.
    for host in [
        "API.privaterouter.test",
        "api.privaterouter.test:443",
        "api.privaterouter.test.",
        "Api.Privaterouter.Test.:443",
    ] {
        let r = raw_api_request(&stack, format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
            .await;
        assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#), "Host: {host}");
    }
    // Another host's name over api's handshake, in Host or in an absolute URI: 421, no body.
    for request in [
        format!("GET /healthz HTTP/1.1\r\nHost: prometheus.{DOMAIN}\r\nConnection: close\r\n\r\n"),
        format!("GET https://prometheus.{DOMAIN}/healthz HTTP/1.1\r\nHost: api.{DOMAIN}\r\nConnection: close\r\n\r\n"),
        format!("GET /healthz HTTP/1.1\r\nHost: www.{DOMAIN}\r\nConnection: close\r\n\r\n"),
    ] {
        let r = raw_api_request(&stack, request.clone()).await;
        assert_eq!((r.status, r.body.len()), (421, 0), "{request:?}: {} {}", r.status, r.text());
    }
}

/// One IP, `LIMIT` requests held in progress (headers sent, body announced but not sent):
/// the next request is refused with 429 by `limit_conn`, and served once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_progress_per_address_are_limited() {
    const LIMIT: usize = 4;
    let mut kit = Kit::new();
    kit.nginx_env.push(("CONN_LIMIT_PER_IP".into(), LIMIT.to_string()));
    let stack = Stack::start(kit).await;
    let stack = &stack;

    let target = stack.target();
    let held: Vec<_> = (0..LIMIT)
        .map(|_| {
            let mut s = api_connection(&target);
            let head = format!(
                "POST /api/keys HTTP/1.1\r\nHost: api.{DOMAIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    // nginx counts a request once it has read its headers; until it has read all four, the
    // extra one may still get through.
    let refused = eventually("the request over the limit is refused", Duration::from_secs(20), || async move {
        match stack.https("api", Request::get("/healthz")).await? {
            r if r.status == 429 => Ok(r),
            r => Err(format!("{} {}", r.status, r.text())),
        }
    })
    .await;
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["error"]["type"], "rate_limited", "{body}");
    // limit_conn's, not the rate limit's (whose burst of 40 this never reaches).
    let errors = String::from_utf8_lossy(&stack.nginx.stderr_to_vec().await.unwrap()).into_owned();
    assert!(errors.contains(r#"limiting connections by zone "pr_conn""#), "{errors}");

    drop(held);
    eventually("served again once the held requests are gone", Duration::from_secs(20), || async move {
        match stack.https("api", Request::get("/healthz")).await? {
            r if r.status == 200 => Ok(()),
            r => Err(format!("{} {}", r.status, r.text())),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_a_mebibyte_are_refused_by_nginx() {
    let mut kit = Kit::new();
    // The API would take 4 MiB: a 413 can only be nginx's.
    kit.api_env.push(("PR_MAX_BODY_BYTES".into(), (4 << 20).to_string()));
    let stack = Stack::start(kit).await;

    // Announced over the limit: refused on the headers alone, in the API's error shape.
    for path in ["/v1/chat/completions", "/api/keys"] {
        let over = format!(
            "POST {path} HTTP/1.1\r\nHost: api.{DOMAIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            (1 << 20) + 1
        );
        let r = raw_api_request(&stack, over).await;
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
        assert_eq!(body["error"]["request_id"].as_str(), r.header("x-request-id"), "{body}");
    }

    // Exactly 1 MiB passes nginx: buffered (past client_body_buffer_size, into a temporary
    // file on the tmpfs) and handed to the API, which reads it all (a valid key, so the body is
    // read) and finds no JSON in it. (With no key the API would answer 401 before reading, and
    // nginx, still sending, may see the connection close and answer 502.)
    let key = user_key(&stack).await;
    let mut at_limit = Request::post_json("/api/keys", &serde_json::json!({}));
    at_limit.body = vec![b' '; 1 << 20];
    at_limit.headers.push(("Authorization".into(), format!("Bearer {key}")));
    let r = stack.https("api", at_limit).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
}

/// A user's API key, made by the CLI in the API container.
async fn user_key(stack: &Stack) -> String {
    let created = stack.api_cli(&["admin", "create-user", "--email", "edge@stack.test"]).await;
    created["api_key"].as_str().expect("an api_key").to_owned()
}
