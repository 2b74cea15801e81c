//! The outcome table: every way a request or an LLM call can end has one name and one row, which
//! gives its HTTP status, its error body fields (OpenAI type and code, Anthropic type), its
//! `exception_type` (5xx) and its `status` label of `pr_llm_calls_total` (outcomes of a call).
//! `ApiError`, the middleware's bare statuses and the call engine all read it.

use axum::http::StatusCode;

use super::ErrorInfo;

/// One outcome. `ApiError::outcome` names the outcome of each error; the engine names the
/// outcomes of calls that end without one (`Success`, `ClientDisconnect`, a broken stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    Conflict,
    Unprocessable,
    LimitExceeded,
    NotAllowed,
    CreditRequired,
    InsufficientCredits,
    ModelNotFound,
    WrongEndpoint,
    RateLimited,
    TooManyRequests,
    OtherClientError,
    UpstreamRejected,
    UpstreamRateLimited,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamNotStreaming,
    UpstreamUnavailable,
    InvalidResponse,
    UpstreamTimeout,
    NoHealthyNode,
    ShuttingDown,
    DatabaseUnavailable,
    Database,
    Internal,
    HandlerTimeout,
    Panic,
    Success,
    ClientDisconnect,
}

/// One row of the table. Empty strings: the column does not apply (a success has no error type,
/// a 4xx no `exception_type`, an outcome that is never a call no call status).
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub outcome: Outcome,
    /// The outcome's one name (snake_case, unique).
    pub name: &'static str,
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    /// OpenAI's `error.code`.
    pub code: &'static str,
    /// Anthropic's `error.type` (its SDKs map it from the status: `anthropic_type`).
    pub anthropic: &'static str,
    /// `exception_type` label of `pr_http_exceptions_total` (5xx only).
    pub exception_type: &'static str,
    /// `status` label of `pr_llm_calls_total`, for the outcomes a call can have. Several
    /// outcomes share a label: every error answer of the upstream is one `upstream_error`.
    pub call_status: &'static str,
    /// What the client reads when the error carries no message of its own.
    pub message: &'static str,
}

#[allow(clippy::too_many_arguments)]
const fn row(
    outcome: Outcome,
    name: &'static str,
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    anthropic: &'static str,
    exception_type: &'static str,
    call_status: &'static str,
    message: &'static str,
) -> Row {
    Row { outcome, name, status, kind, code, anthropic, exception_type, call_status, message }
}

/// Indexed by `Outcome as usize` (the tests check that each row sits at its outcome's index).
/// The call-status labels and exception types are bound by the dashboards and alert rules
/// (`prometheus/rules`): an upstream timeout is `timeout` as a call and `upstream_timeout` as an
/// exception, as it always was.
#[rustfmt::skip]
static ROWS: [Row; 36] = {
    use Outcome as O;
    use StatusCode as S;
    const IRE: &str = "invalid_request_error";
    [
        //  outcome                  name                      status                       OpenAI type   OpenAI code               Anthropic type          exception_type          call status             message
        row(O::BadRequest,           "bad_request",            S::BAD_REQUEST,              IRE,          "bad_request",            IRE,                    "",                     "",                     "The request could not be understood."),
        row(O::Unauthorized,         "unauthorized",           S::UNAUTHORIZED,             "authentication_error", "unauthorized", "authentication_error", "",                     "",                     "Authentication is required."),
        row(O::Forbidden,            "forbidden",              S::FORBIDDEN,                "permission_error", "forbidden",        "permission_error",     "",                     "",                     "You do not have access to this resource."),
        row(O::NotFound,             "not_found",              S::NOT_FOUND,                IRE,          "not_found",              "not_found_error",      "",                     "",                     "No such route."),
        row(O::MethodNotAllowed,     "method_not_allowed",     S::METHOD_NOT_ALLOWED,       IRE,          "method_not_allowed",     IRE,                    "",                     "",                     "Method not allowed for this route."),
        row(O::RequestTimeout,       "request_timeout",        S::REQUEST_TIMEOUT,          IRE,          "request_timeout",        IRE,                    "",                     "",                     "The request body was not received in time."),
        row(O::PayloadTooLarge,      "payload_too_large",      S::PAYLOAD_TOO_LARGE,        IRE,          "payload_too_large",      "request_too_large",    "",                     "",                     "The request body is too large."),
        row(O::UnsupportedMediaType, "unsupported_media_type", S::UNSUPPORTED_MEDIA_TYPE,   IRE,          "unsupported_media_type", IRE,                    "",                     "",                     "Expected Content-Type: application/json."),
        row(O::Conflict,             "conflict",               S::CONFLICT,                 IRE,          "conflict",               "api_error",            "",                     "",                     "The request conflicts with the current state."),
        row(O::Unprocessable,        "unprocessable",          S::UNPROCESSABLE_ENTITY,     IRE,          "unprocessable",          "api_error",            "",                     "",                     "The request could not be processed."),
        row(O::LimitExceeded,        "limit_exceeded",         S::CONFLICT,                 IRE,          "limit_exceeded",         "api_error",            "",                     "",                     "A limit is reached."),
        row(O::NotAllowed,           "not_allowed",            S::UNPROCESSABLE_ENTITY,     IRE,          "not_allowed",            "api_error",            "",                     "",                     "The configuration does not allow this value."),
        row(O::CreditRequired,       "credit_required",        S::PAYMENT_REQUIRED,         "insufficient_quota", "insufficient_credits", "billing_error",  "",                     "",                     "This needs available credit."),
        row(O::InsufficientCredits,  "insufficient_credits",   S::PAYMENT_REQUIRED,         "insufficient_quota", "insufficient_credits", "billing_error",  "",                     "insufficient_credits", "Not enough credit for this call."),
        row(O::ModelNotFound,        "model_not_found",        S::NOT_FOUND,                IRE,          "model_not_found",        "not_found_error",      "",                     "",                     "No such model."),
        row(O::WrongEndpoint,        "wrong_endpoint",         S::BAD_REQUEST,              IRE,          "unsupported_endpoint",   IRE,                    "",                     "",                     "The model is not served on this endpoint."),
        row(O::RateLimited,          "rate_limited",           S::TOO_MANY_REQUESTS,        "requests",   "rate_limit_exceeded",    "rate_limit_error",     "",                     "",                     "A rate limit is reached."),
        row(O::TooManyRequests,      "too_many_requests",      S::TOO_MANY_REQUESTS,        "rate_limit_error", "rate_limited",     "rate_limit_error",     "",                     "",                     "Too many requests."),
        row(O::OtherClientError,     "request_failed",         S::BAD_REQUEST,              IRE,          "error",                  IRE,                    "",                     "",                     "The request failed."),
        row(O::UpstreamRejected,     "upstream_rejected",      S::BAD_REQUEST,              IRE,          "upstream_rejected",      IRE,                    "",                     "upstream_error",       "The model's upstream rejected the request."),
        row(O::UpstreamRateLimited,  "upstream_rate_limited",  S::TOO_MANY_REQUESTS,        "rate_limit_error", "upstream_rate_limited", "rate_limit_error", "",                    "upstream_error",       "The model's upstream is rate limiting requests. Try again later."),
        row(O::UpstreamAuthFailed,   "upstream_auth_failed",   S::BAD_GATEWAY,              "server_error", "upstream_auth_failed", "api_error",            "upstream_auth_failed", "upstream_error",       "The model's upstream refused this gateway's credentials (a server configuration problem, not your API key)."),
        row(O::UpstreamError,        "upstream_error",         S::BAD_GATEWAY,              "server_error", "upstream_error",       "api_error",            "upstream_error",       "upstream_error",       "The model's upstream failed."),
        row(O::UpstreamNotStreaming, "upstream_not_streaming", S::BAD_GATEWAY,              "server_error", "upstream_not_streaming", "api_error",          "upstream_error",       "invalid_response",     "The model's upstream answered this streaming request without streaming."),
        row(O::UpstreamUnavailable,  "upstream_unavailable",   S::BAD_GATEWAY,              "server_error", "upstream_unavailable", "api_error",            "upstream_unavailable", "upstream_unavailable", "The model's upstream could not be reached."),
        row(O::InvalidResponse,      "invalid_response",       S::BAD_GATEWAY,              "server_error", "upstream_unavailable", "api_error",            "upstream_unavailable", "invalid_response",     "The model's upstream could not be reached."),
        row(O::UpstreamTimeout,      "upstream_timeout",       S::GATEWAY_TIMEOUT,          "server_error", "upstream_timeout",     "timeout_error",        "upstream_timeout",     "timeout",              "The model's upstream did not answer in time."),
        row(O::NoHealthyNode,        "no_healthy_node",        S::SERVICE_UNAVAILABLE,      "server_error", "no_healthy_node",      "overloaded_error",     "no_healthy_node",      "no_healthy_node",      "No healthy GPU node is available. Try again shortly."),
        row(O::ShuttingDown,         "shutting_down",          S::SERVICE_UNAVAILABLE,      "server_error", "shutting_down",        "overloaded_error",     "shutting_down",        "",                     "The server is shutting down."),
        row(O::DatabaseUnavailable,  "database_unavailable",   S::SERVICE_UNAVAILABLE,      "server_error", "service_unavailable",  "overloaded_error",     "database_unavailable", "",                     "The service is temporarily unavailable."),
        row(O::Database,             "database",               S::INTERNAL_SERVER_ERROR,    "server_error", "internal_error",       "api_error",            "database",             "",                     "Internal server error."),
        row(O::Internal,             "internal",               S::INTERNAL_SERVER_ERROR,    "server_error", "internal_error",       "api_error",            "internal",             "",                     "Internal server error."),
        row(O::HandlerTimeout,       "timeout",                S::GATEWAY_TIMEOUT,          "server_error", "timeout",              "timeout_error",        "timeout",              "",                     "The request timed out."),
        row(O::Panic,                "panic",                  S::INTERNAL_SERVER_ERROR,    "server_error", "internal_error",       "api_error",            "panic",                "",                     "Internal server error."),
        row(O::Success,              "success",                S::OK,                       "",           "",                       "",                     "",                     "success",              ""),
        row(O::ClientDisconnect,     "client_disconnect",      S::OK,                       "",           "",                       "",                     "",                     "client_disconnect",    ""),
    ]
};

/// Anthropic's error type for a status, as its SDKs map statuses to error classes.
pub fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 415 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

impl Outcome {
    pub fn row(self) -> &'static Row {
        &ROWS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// The `status` label of `pr_llm_calls_total`. Only call outcomes are counted as calls; any
    /// other falls back to its own name (still a closed set).
    pub fn call_status(self) -> &'static str {
        let row = self.row();
        debug_assert!(!row.call_status.is_empty(), "{} is not an outcome of a call", row.name);
        if row.call_status.is_empty() { row.name } else { row.call_status }
    }

    /// The row as an error body and its counting: the row's generic message, no detail.
    pub fn info(self) -> ErrorInfo {
        let row = self.row();
        ErrorInfo {
            status: row.status,
            message: row.message.into(),
            kind: row.kind,
            code: row.code,
            anthropic: row.anthropic,
            exception_type: (!row.exception_type.is_empty()).then_some(row.exception_type),
            detail: None,
        }
    }

    /// The outcome of a bare error status produced outside our handlers (axum's 405, a timeout
    /// layer, the fallback).
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::BadRequest,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            408 => Self::RequestTimeout,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            429 => Self::TooManyRequests,
            504 => Self::HandlerTimeout,
            s if s >= 500 => Self::Internal,
            _ => Self::OtherClientError,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::telemetry::metrics::EXCEPTION_TYPES;

    /// The labels `pr_llm_calls_total{status}` had before the table, which the dashboards and
    /// alert rules select on.
    const CALL_STATUSES: [&str; 8] = [
        "success",
        "upstream_error",
        "upstream_unavailable",
        "timeout",
        "client_disconnect",
        "insufficient_credits",
        "invalid_response",
        "no_healthy_node",
    ];

    #[test]
    fn every_outcome_has_its_own_row_and_name() {
        let mut names = HashSet::new();
        for (i, row) in ROWS.iter().enumerate() {
            assert_eq!(row.outcome as usize, i, "{} is not at its outcome's index", row.name);
            assert!(names.insert(row.name), "{} is named twice", row.name);
            assert!(row.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{} is not snake_case", row.name);
        }
        assert_eq!(ROWS.len(), Outcome::ClientDisconnect as usize + 1, "an outcome has no row");
    }

    #[test]
    fn errors_have_error_statuses_and_both_body_shapes() {
        for row in ROWS.iter().filter(|r| !matches!(r.outcome, Outcome::Success | Outcome::ClientDisconnect)) {
            let status = row.status;
            assert!(status.is_client_error() || status.is_server_error(), "{}: {status}", row.name);
            assert!(!row.kind.is_empty() && !row.code.is_empty() && !row.message.is_empty(), "{}", row.name);
            assert_eq!(row.anthropic, anthropic_type(status), "{}: Anthropic's SDKs read the status", row.name);
        }
        for outcome in [Outcome::Success, Outcome::ClientDisconnect] {
            assert!(outcome.row().status.is_success());
            assert!(outcome.row().kind.is_empty() && outcome.row().exception_type.is_empty());
        }
    }

    #[test]
    fn server_errors_and_only_they_have_a_counted_exception_type() {
        let listed: HashSet<&str> = EXCEPTION_TYPES.into_iter().collect();
        let mut used = HashSet::new();
        for row in &ROWS {
            assert_eq!(row.status.is_server_error(), !row.exception_type.is_empty(), "{}", row.name);
            if row.status.is_server_error() {
                assert!(
                    listed.contains(row.exception_type),
                    "{}: {} is not a metric label",
                    row.name,
                    row.exception_type
                );
                used.insert(row.exception_type);
            }
        }
        assert_eq!(used, listed, "every exception type of the metric catalogue is some outcome's");
    }

    #[test]
    fn call_statuses_are_the_labels_the_rules_select_on() {
        let used: HashSet<&str> = ROWS.iter().map(|r| r.call_status).filter(|s| !s.is_empty()).collect();
        assert_eq!(used, CALL_STATUSES.into_iter().collect());
        assert_eq!(Outcome::UpstreamTimeout.call_status(), "timeout");
        assert_eq!(Outcome::UpstreamTimeout.info().exception_type, Some("upstream_timeout"));
        // Each call outcome's label, as the engine counted it before the table (a wrong row
        // would keep the set above intact).
        let calls = ROWS.iter().filter(|r| !r.call_status.is_empty()).map(|r| (r.outcome, r.call_status));
        assert_eq!(
            calls.collect::<Vec<_>>(),
            [
                (Outcome::InsufficientCredits, "insufficient_credits"),
                (Outcome::UpstreamRejected, "upstream_error"),
                (Outcome::UpstreamRateLimited, "upstream_error"),
                (Outcome::UpstreamAuthFailed, "upstream_error"),
                (Outcome::UpstreamError, "upstream_error"),
                (Outcome::UpstreamNotStreaming, "invalid_response"),
                (Outcome::UpstreamUnavailable, "upstream_unavailable"),
                (Outcome::InvalidResponse, "invalid_response"),
                (Outcome::UpstreamTimeout, "timeout"),
                (Outcome::NoHealthyNode, "no_healthy_node"),
                (Outcome::Success, "success"),
                (Outcome::ClientDisconnect, "client_disconnect"),
            ]
        );
    }

    #[test]
    fn bare_statuses_keep_their_bodies() {
        let info = Outcome::for_status(StatusCode::METHOD_NOT_ALLOWED).info();
        assert_eq!((info.kind, info.code), ("invalid_request_error", "method_not_allowed"));
        let info = Outcome::for_status(StatusCode::GATEWAY_TIMEOUT).info();
        assert_eq!((info.code, info.exception_type), ("timeout", Some("timeout")));
        assert_eq!(Outcome::for_status(StatusCode::BAD_GATEWAY), Outcome::Internal);
        assert_eq!(Outcome::for_status(StatusCode::CONFLICT).info().code, "error");
    }
}
