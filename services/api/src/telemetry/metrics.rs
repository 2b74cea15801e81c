//! The metric catalogue: every name, its HELP text and histogram buckets live here, and the
//! Prometheus recorder is installed here. Label values are always from closed sets (method
//! verbs, route templates, status codes, error kinds): never raw user input, never a user id.

use std::{sync::OnceLock, time::Duration};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "pr_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "pr_http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "pr_http_requests_in_flight";
pub const HTTP_EXCEPTIONS_TOTAL: &str = "pr_http_exceptions_total";
pub const LOG_LINES_DROPPED_TOTAL: &str = "pr_log_lines_dropped_total";

/// From 1 ms (cached reads) to 60 s (long non-streaming completions).
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide recorder once and returns its handle (later calls, as in tests that
/// build several apps in one process, get the same handle).
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
                    HTTP_DURATION_BUCKETS,
                )
                .expect("bucket list is non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

/// Histograms are drained into their buckets by upkeep; the exporter does not run it by itself.
pub async fn run_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered by the public API, by method, route template and status code."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from receiving a request to sending the last byte of its response, by method, route template and status code."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        Unit::Count,
        "Requests being processed (response body not yet finished), by method and route template."
    );
    describe_counter!(
        HTTP_EXCEPTIONS_TOTAL,
        Unit::Count,
        "Requests that ended in a server error (5xx) or a caught panic, by method, route template and exception type."
    );
    describe_counter!(
        LOG_LINES_DROPPED_TOTAL,
        Unit::Count,
        "Log lines dropped because the log writer fell behind (logging never blocks requests)."
    );
}
