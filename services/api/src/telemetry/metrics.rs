//! The metric catalogue: every name, its HELP text and histogram buckets live here, and the
//! Prometheus recorder is installed here. Label values are always from closed sets (method
//! verbs, route templates, status codes, error kinds): never raw user input, never a user id.

use std::{
    collections::BTreeMap,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use rust_decimal::Decimal;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "pr_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "pr_http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "pr_http_requests_in_flight";
pub const HTTP_EXCEPTIONS_TOTAL: &str = "pr_http_exceptions_total";
pub const LOG_LINES_DROPPED_TOTAL: &str = "pr_log_lines_dropped_total";

pub const LLM_CALLS_TOTAL: &str = "pr_llm_calls_total";
pub const LLM_TOKENS_TOTAL: &str = "pr_llm_tokens_total";
pub const LLM_COST_USD_TOTAL: &str = "pr_llm_cost_usd_total";
pub const LLM_UPSTREAM_DURATION_SECONDS: &str = "pr_llm_upstream_duration_seconds";
pub const LLM_TIME_TO_FIRST_TOKEN_SECONDS: &str = "pr_llm_time_to_first_token_seconds";
pub const LLM_GATEWAY_OVERHEAD_SECONDS: &str = "pr_llm_gateway_overhead_seconds";
pub const CHAT_CONVERSATIONS_CREATED_TOTAL: &str = "pr_chat_conversations_created_total";
pub const CREDIT_TRANSACTIONS_TOTAL: &str = "pr_credit_transactions_total";
pub const CREDIT_HOLDS_ACTIVE: &str = "pr_credit_holds_active";
pub const CREDIT_HELD_USD: &str = "pr_credit_held_usd";
pub const CREDIT_LEASED_USD: &str = "pr_credit_leased_usd";
pub const BILLING_JOURNAL_PENDING: &str = "pr_billing_journal_pending";
pub const BILLING_DEAD_LETTERS_TOTAL: &str = "pr_billing_dead_letters_total";
pub const BILLING_FLAGGED_TOTAL: &str = "pr_billing_flagged_total";
pub const RATE_LIMITED_TOTAL: &str = "pr_rate_limited_total";
pub const REDIS_ERRORS_TOTAL: &str = "pr_redis_errors_total";
pub const API_REPLICAS_EXPECTED: &str = "pr_api_replicas_expected";
pub const LEDGER_CHECK_FAILURES_TOTAL: &str = "pr_ledger_check_failures_total";
/// `check` label values of `pr_ledger_check_failures_total`.
pub const LEDGER_CHECKS: [&str; 4] = ["balance_mismatch", "held_mismatch", "negative_available", "expired_leases"];
/// `reason` label values of `pr_billing_flagged_total`.
pub const BILLING_FLAGS: [&str; 3] = ["over_cap", "clamped", "estimated"];

/// Billing gauges of this replica (the maintenance task refreshes them twice a second).
pub fn set_credit_gauges(holds: usize, held: Decimal, leased: Decimal) {
    use rust_decimal::prelude::ToPrimitive;
    metrics::gauge!(CREDIT_HOLDS_ACTIVE).set(holds as f64);
    metrics::gauge!(CREDIT_HELD_USD).set(held.to_f64().unwrap_or(0.0));
    metrics::gauge!(CREDIT_LEASED_USD).set(leased.to_f64().unwrap_or(0.0));
}

pub fn set_journal_pending(n: usize) {
    metrics::gauge!(BILLING_JOURNAL_PENDING).set(n as f64);
}

/// Every billing series exists from the start (at 0), so alerts on `increase()` see the first
/// failure and dashboards show a value rather than nothing.
pub fn zero_billing_series() {
    metrics::counter!(BILLING_DEAD_LETTERS_TOTAL).increment(0);
    for check in LEDGER_CHECKS {
        metrics::counter!(LEDGER_CHECK_FAILURES_TOTAL, "check" => check).increment(0);
    }
    for reason in BILLING_FLAGS {
        metrics::counter!(BILLING_FLAGGED_TOTAL, "reason" => reason).increment(0);
    }
    set_credit_gauges(0, Decimal::ZERO, Decimal::ZERO);
    set_journal_pending(0);
}

/// The Redis error counter exists from the start (at 0) when Redis is configured.
pub fn zero_redis_series() {
    metrics::counter!(REDIS_ERRORS_TOTAL).increment(0);
}

/// `exception_type` label values of `pr_http_exceptions_total`: the types of `http::error`'s
/// outcome table and the middleware's own (`panic`, `timeout`), a closed set.
pub const EXCEPTION_TYPES: [&str; 11] = [
    "panic",
    "timeout",
    "database",
    "database_unavailable",
    "shutting_down",
    "internal",
    "upstream_error",
    "upstream_auth_failed",
    "upstream_unavailable",
    "upstream_timeout",
    "no_healthy_node",
];

/// The (method, route) that carries the HTTP families' zero series: the gateway's route, which
/// every deployment serves and whose first real request increments these very series (so they
/// are never a label pair that cannot occur).
const ZERO_METHOD: &str = "POST";
const ZERO_ROUTE: &str = "/v1/chat/completions";

/// Puts every family the spec lists on the first scrape, so `rate()` and `sum()` answer 0 rather
/// than "no data" until traffic arrives (the exporter prints a family only once it has a series).
/// Only bounded sets get zero series: one (method, route, status 200) of the gateway route for the
/// HTTP families and one per exception type on it; per catalog model its successful
/// call on the first endpoint it serves, both token directions and its cost; every credit kind. GPU node series
/// exist only for registered nodes (a made-up node at 0 would fire the "all nodes down" alert):
/// their families are printed as HELP/TYPE lines alone until a node is registered.
pub fn zero_series(models: &[(&'static str, &'static str)]) {
    use crate::{billing::ledger::CreditKind, http::error::Outcome};
    let http = [("method", ZERO_METHOD), ("route", ZERO_ROUTE), ("status", "200")];
    metrics::counter!(HTTP_REQUESTS_TOTAL, &http).increment(0);
    // Registered without an observation: rendered with every bucket, `_sum` and `_count` at 0.
    let _ = metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, &http);
    metrics::gauge!(HTTP_REQUESTS_IN_FLIGHT, "method" => ZERO_METHOD, "route" => ZERO_ROUTE).increment(0.0);
    for exception_type in EXCEPTION_TYPES {
        metrics::counter!(HTTP_EXCEPTIONS_TOTAL, "method" => ZERO_METHOD, "route" => ZERO_ROUTE, "exception_type" => exception_type)
            .increment(0);
    }
    for &(model, endpoint) in models {
        let status = Outcome::Success.call_status();
        metrics::counter!(LLM_CALLS_TOTAL, "model" => model, "endpoint" => endpoint, "status" => status).increment(0);
        for direction in ["input", "output"] {
            metrics::counter!(LLM_TOKENS_TOTAL, "model" => model, "endpoint" => endpoint, "direction" => direction)
                .increment(0);
        }
        LLM_COST.add(model, endpoint, Decimal::ZERO);
    }
    metrics::counter!(CHAT_CONVERSATIONS_CREATED_TOTAL).increment(0);
    for kind in CreditKind::ALL {
        metrics::counter!(CREDIT_TRANSACTIONS_TOTAL, "kind" => kind.as_str()).increment(0);
    }
}

/// Upstream calls last from tens of milliseconds to minutes (long non-streaming completions).
pub const LLM_DURATION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// The gateway's own share of a call: sub-millisecond when healthy.
pub const OVERHEAD_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// `pr_llm_cost_usd_total{model,endpoint}`: the `metrics` counter type is an integer, and a cost
/// counter must be a float that equals the ledger's sum. So the sums are kept here as exact
/// decimals per model and endpoint, and `exposition` prints them next to the recorder's output.
pub struct CostCounter {
    totals: Mutex<BTreeMap<(&'static str, &'static str), Decimal>>,
}

pub static LLM_COST: CostCounter = CostCounter { totals: Mutex::new(BTreeMap::new()) };

impl CostCounter {
    pub fn add(&self, model: &'static str, endpoint: &'static str, usd: Decimal) {
        *self.totals.lock().expect("cost counter lock").entry((model, endpoint)).or_default() += usd;
    }

    /// (model, endpoint, total) in label order.
    pub fn totals(&self) -> Vec<(&'static str, &'static str, Decimal)> {
        let totals = self.totals.lock().expect("cost counter lock");
        totals.iter().map(|(&(model, endpoint), &total)| (model, endpoint, total)).collect()
    }
}

pub const LLM_COST_USD_TOTAL_HELP: &str =
    "Running sum of the cost in USD of billed LLM calls (equals the usage rows of the ledger), by model and endpoint.";

/// GPU node gauges, rendered by `exposition` from the fleet's state rather than through the
/// recorder, so a deleted node's series disappear at once (the exporter cannot forget a series).
pub const GPU_NODE_UP: &str = "pr_gpu_node_up";
pub const GPU_NODE_UP_HELP: &str = "1 if the GPU node's agent answered its last health poll with GPU figures, else 0.";
pub const GPU_NODE_UTILIZATION_PCT: &str = "pr_gpu_node_utilization_pct";
pub const GPU_NODE_UTILIZATION_PCT_HELP: &str = "Mean GPU utilization of the node, 0-100, from its last poll.";

/// From 1 ms (cached reads) to 60 s (long non-streaming completions).
pub const HTTP_DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the process-wide recorder once and returns its handle (later calls, as in tests that
/// build several apps in one process, get the same handle).
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()), HTTP_DURATION_BUCKETS)
                .expect("bucket list is non-empty")
                .set_buckets_for_metric(Matcher::Full(LLM_UPSTREAM_DURATION_SECONDS.into()), LLM_DURATION_BUCKETS)
                .expect("bucket list is non-empty")
                .set_buckets_for_metric(Matcher::Full(LLM_TIME_TO_FIRST_TOKEN_SECONDS.into()), LLM_DURATION_BUCKETS)
                .expect("bucket list is non-empty")
                .set_buckets_for_metric(Matcher::Full(LLM_GATEWAY_OVERHEAD_SECONDS.into()), OVERHEAD_BUCKETS)
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

/// Every metric's HELP text, in one place: long because it is a list, one call per metric.
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
        LLM_CALLS_TOTAL,
        Unit::Count,
        "LLM calls by catalog model, endpoint (chat_completions, completions, embeddings, responses, messages, conversation_message) and outcome (success, upstream_error, upstream_unavailable, timeout, client_disconnect, insufficient_credits, invalid_response, no_healthy_node)."
    );
    describe_counter!(
        LLM_TOKENS_TOTAL,
        Unit::Count,
        "Tokens billed, by catalog model, endpoint and direction (input: every prompt token, cached or not; output)."
    );
    describe_histogram!(
        LLM_UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Time spent waiting on the upstream per LLM call (whole stream for streaming calls), by model and endpoint."
    );
    describe_histogram!(
        LLM_TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "Time from sending a streaming call upstream to its first content token, by model and endpoint."
    );
    describe_histogram!(
        LLM_GATEWAY_OVERHEAD_SECONDS,
        Unit::Seconds,
        "The gateway's own time per LLM call (total minus time waiting on the upstream: auth, credit check, billing write), by endpoint."
    );
    describe_counter!(CHAT_CONVERSATIONS_CREATED_TOTAL, Unit::Count, "Chat conversations created.");
    describe_counter!(
        CREDIT_TRANSACTIONS_TOTAL,
        Unit::Count,
        "Credit ledger transactions written, by kind (topup, usage, admin_adjust, refund)."
    );
    describe_gauge!(
        CREDIT_HOLDS_ACTIVE,
        Unit::Count,
        "LLM calls in flight on this replica holding their worst-case cost."
    );
    describe_gauge!(CREDIT_HELD_USD, "USD held by the calls in flight on this replica (sum of their worst cases).");
    describe_gauge!(
        CREDIT_LEASED_USD,
        "USD of users' credit leased by this replica (calls are admitted against it without a database round trip)."
    );
    describe_gauge!(
        BILLING_JOURNAL_PENDING,
        Unit::Count,
        "Settlements in this replica's local journal that are not yet in the database (non-zero while the database is unreachable)."
    );
    describe_counter!(
        BILLING_DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Usage rows the ledger refused for good, set aside in billing_dead_letters with their reason."
    );
    describe_counter!(
        BILLING_FLAGGED_TOTAL,
        Unit::Count,
        "Usage rows written with a flag, by reason (over_cap: more output than the cap sent upstream; clamped: absurd token counts; estimated: no usage reported)."
    );
    describe_counter!(
        LEDGER_CHECK_FAILURES_TOTAL,
        Unit::Count,
        "Failed ledger self-checks, by check (balance_mismatch, held_mismatch, negative_available, expired_leases)."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "LLM calls refused with 429 by a per-key, per-user or per-model rate limit, by the limit that refused them (requests, tokens, concurrent)."
    );
    describe_counter!(
        REDIS_ERRORS_TOTAL,
        Unit::Count,
        "Redis commands that failed or timed out (rate limits then fall back to this replica's share; revocations to the key cache TTL)."
    );
    describe_gauge!(
        API_REPLICAS_EXPECTED,
        Unit::Count,
        "How many API replicas the operator runs (PR_API_REPLICAS): each limits to limit / replicas while Redis is away."
    );
    describe_counter!(
        LOG_LINES_DROPPED_TOTAL,
        Unit::Count,
        "Log lines dropped because the log writer fell behind (logging never blocks requests)."
    );
}
