//! `promtool check metrics` on what the API really serves on its metrics listener, fetched
//! from inside the stack's network (the listener is not published) after real traffic
//! through nginx, so the request histograms and counters have series.

use privaterouter_hardening::net::Request;

use crate::harness::{Kit, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_apis_metrics() {
    let stack = Stack::start(Kit::new()).await;
    for path in ["/healthz", "/readyz", "/no/such/route", "/healthz?x=1"] {
        let r = stack.https("api", Request::get(path)).await.unwrap();
        assert!(matches!(r.status, 200 | 404), "{path}: {}", r.status);
    }
    let (code, out) = stack
        .in_prometheus(
            "curl -fsS -H \"Authorization: Bearer $(cat /run/pr-secrets/api-metrics-token)\" \
             http://api-metrics:9100/metrics -o /tmp/api-metrics.txt \
             && promtool check metrics < /tmp/api-metrics.txt && echo promtool-ok \
             && cat /tmp/api-metrics.txt",
        )
        .await;
    assert_eq!(code, 0, "promtool check metrics failed:\n{out}");
    assert!(out.contains("promtool-ok"), "{out}");
    // The check ran on real request metrics, not on an empty page.
    for needle in [
        "# TYPE pr_http_requests_total counter",
        "pr_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}",
        "route=\"unmatched\",status=\"404\"",
        "pr_http_request_duration_seconds_bucket{",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    // And without the token, the listener refuses (what Prometheus' token is for).
    let (code, out) =
        stack.in_prometheus("curl -s -o /dev/null -w '%{http_code}' http://api-metrics:9100/metrics").await;
    assert_eq!((code, out.as_str()), (0, "401"));
}
