//! The one error type of the API. Handlers return `ApiError`; its `IntoResponse` only attaches an
//! [`ErrorInfo`] to an empty response. The telemetry middleware renders every error body (so each
//! carries the request id), logs internal details once with that id, and counts 5xx exceptions.

use std::borrow::Cow;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// What the telemetry middleware needs to render an error body and count it.
/// The route whose errors take Anthropic's shape.
pub const ANTHROPIC_ROUTE: &str = "/v1/messages";

#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub status: StatusCode,
    /// Shown to the client. Never contains internal details.
    pub message: Cow<'static, str>,
    /// OpenAI-style error type (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// Machine-readable code (`invalid_json`, `not_found`, ...).
    pub code: &'static str,
    /// Stable snake_case label for `pr_http_exceptions_total` when the status is 5xx.
    pub exception_type: Option<&'static str>,
    /// Logged (with the request id), never shown.
    pub detail: Option<String>,
}

impl ErrorInfo {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self { status, message: message.into(), kind, code, exception_type: None, detail: None }
    }

    /// The error for a bare error status produced outside our handlers (axum's 405, a timeout
    /// layer, the fallback), so that every error body has the same shape.
    pub fn for_status(status: StatusCode) -> Self {
        let (kind, code, message): (&'static str, &'static str, &'static str) = match status.as_u16() {
            400 => ("invalid_request_error", "bad_request", "The request could not be understood."),
            401 => ("authentication_error", "unauthorized", "Authentication is required."),
            403 => ("permission_error", "forbidden", "You do not have access to this resource."),
            404 => ("invalid_request_error", "not_found", "No such route."),
            405 => ("invalid_request_error", "method_not_allowed", "Method not allowed for this route."),
            408 => ("invalid_request_error", "request_timeout", "The request body was not received in time."),
            413 => ("invalid_request_error", "payload_too_large", "The request body is too large."),
            415 => ("invalid_request_error", "unsupported_media_type", "Expected Content-Type: application/json."),
            429 => ("rate_limit_error", "rate_limited", "Too many requests."),
            504 => ("server_error", "timeout", "The request timed out."),
            s if s >= 500 => ("server_error", "internal_error", "Internal server error."),
            _ => ("invalid_request_error", "error", "The request failed."),
        };
        let mut info = Self::new(status, kind, code, message);
        if status.is_server_error() {
            info.exception_type = Some(if status == StatusCode::GATEWAY_TIMEOUT { "timeout" } else { "internal" });
        }
        info
    }

    /// The error body for a route: Anthropic's shape on [`ANTHROPIC_ROUTE`] (its SDKs parse
    /// nothing else), OpenAI's everywhere else.
    pub fn body_for(&self, route: &str, request_id: &str) -> Vec<u8> {
        if route == ANTHROPIC_ROUTE { self.body_anthropic(request_id) } else { self.body_json(request_id) }
    }

    /// `{"type": "error", "error": {"type", "message"}, "request_id"}`, the error type named as
    /// Anthropic names its statuses.
    pub fn body_anthropic(&self, request_id: &str) -> Vec<u8> {
        let kind = match self.status.as_u16() {
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
        };
        serde_json::to_vec(&serde_json::json!({
            "type": "error",
            "error": {"type": kind, "message": self.message},
            "request_id": request_id,
        }))
        .expect("error body serialises")
    }

    pub fn body_json(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "request_id": request_id,
            }
        }))
        .expect("error body serialises")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {message}")]
    BadRequest { code: &'static str, message: String },
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden")]
    Forbidden,
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("request body timeout")]
    RequestTimeout,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// A per-user limit (count of keys, conversations, messages) is reached.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// A value the configuration forbids (GPU node token variable or address).
    #[error("not allowed ({code}): {message}")]
    NotAllowed { code: &'static str, message: String },
    /// Something that needs available credit (creating a conversation) when there is none.
    #[error("no available credit: {available}")]
    CreditRequired { available: rust_decimal::Decimal },
    #[error("insufficient credits: needed {needed}, available {available}")]
    InsufficientCredits { needed: rust_decimal::Decimal, available: rust_decimal::Decimal, prompt_bound: u64, cap: u64 },
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// A catalog model called on an endpoint it does not serve.
    #[error("model {model} does not serve {route}")]
    WrongEndpoint { model: &'static str, route: &'static str, served: Vec<&'static str> },
    /// A streaming request the upstream answered without streaming (billed at its usage).
    #[error("the upstream did not stream")]
    UpstreamNotStreaming { cost: rust_decimal::Decimal },
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timeout")]
    UpstreamTimeout,
    #[error("no healthy GPU node in pool {0}")]
    NoHealthyNode(String),
    /// The upstream refused the request as invalid (its 400/413/422); `message` is its own,
    /// sanitised and bounded (empty when it gave none).
    #[error("upstream rejected the request: {message}")]
    UpstreamRejected { status: StatusCode, message: String },
    /// A rate limit of the key, its user or the key on the model refused the call.
    #[error("rate limited: {message}")]
    RateLimited { kind: &'static str, message: String, retry_after_secs: u64 },
    #[error("upstream rate limited")]
    UpstreamRateLimited { retry_after: Option<u32> },
    /// The upstream refused the gateway's own credentials (its 401/403).
    #[error("upstream refused the gateway's credentials ({upstream_status})")]
    UpstreamAuthFailed { upstream_status: u16 },
    #[error("upstream failed ({upstream_status})")]
    UpstreamError { upstream_status: u16 },
    #[error("shutting down")]
    ShuttingDown,
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<crate::accounts::rate_limiter::Refusal> for ApiError {
    fn from(r: crate::accounts::rate_limiter::Refusal) -> Self {
        use crate::accounts::rate_limiter::LimitKind;
        let kind = if r.kind == LimitKind::Tokens { "tokens" } else { "requests" };
        Self::RateLimited { kind, message: r.message(), retry_after_secs: r.retry_after_secs() }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => Self::DatabaseUnavailable(e),
            // Serialization failure or deadlock (40), operator intervention (57), connection (08):
            // a retry can succeed, so 503.
            sqlx::Error::Database(ref d)
                if d.code().is_some_and(|c| c.starts_with("40") || c.starts_with("57") || c.starts_with("08")) =>
            {
                Self::DatabaseUnavailable(e)
            }
            e => Self::Database(e),
        }
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) | Self::NotAllowed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::LimitExceeded(_) => StatusCode::CONFLICT,
            Self::CreditRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::WrongEndpoint { .. } => StatusCode::BAD_REQUEST,
            Self::UpstreamNotStreaming { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NoHealthyNode(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamRejected { status, .. } => *status,
            Self::UpstreamRateLimited { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamAuthFailed { .. } | Self::UpstreamError { .. } => StatusCode::BAD_GATEWAY,
            Self::ShuttingDown | Self::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn info(&self) -> ErrorInfo {
        let status = self.status_code();
        match self {
            Self::BadRequest { code, message } => {
                ErrorInfo::new(status, "invalid_request_error", code, message.clone())
            }
            Self::NotFound(what) => {
                ErrorInfo::new(status, "invalid_request_error", "not_found", format!("{what} not found."))
            }
            Self::Conflict(message) => ErrorInfo::new(status, "invalid_request_error", "conflict", message.clone()),
            Self::Unprocessable(message) => {
                ErrorInfo::new(status, "invalid_request_error", "unprocessable", message.clone())
            }
            Self::LimitExceeded(message) => {
                ErrorInfo::new(status, "invalid_request_error", "limit_exceeded", message.clone())
            }
            Self::NotAllowed { code, message } => {
                ErrorInfo::new(status, "invalid_request_error", code, message.clone())
            }
            Self::CreditRequired { available } => ErrorInfo::new(
                status,
                "insufficient_quota",
                "insufficient_credits",
                format!(
                    "This needs available credit; {} USD is available. Add credits first.",
                    crate::billing::fmt_usd(*available)
                ),
            ),
            Self::InsufficientCredits { needed, available, prompt_bound, cap } => ErrorInfo::new(
                status,
                "insufficient_quota",
                "insufficient_credits",
                format!(
                    "This call needs up to {} USD of credit (its worst case: about {prompt_bound} prompt tokens and at most \
                     {cap} output tokens); {} USD is available. Add credits, or lower max_tokens.",
                    crate::billing::fmt_usd(*needed),
                    crate::billing::fmt_usd(*available),
                ),
            ),
            Self::ModelNotFound(name) => ErrorInfo::new(
                status,
                "invalid_request_error",
                "model_not_found",
                format!("The model `{name}` does not exist or you do not have access to it."),
            ),
            Self::WrongEndpoint { model, route, served } => ErrorInfo::new(
                status,
                "invalid_request_error",
                "unsupported_endpoint",
                format!("The model `{model}` is not served on {route}; it is served on: {}.", served.join(", ")),
            ),
            Self::UpstreamNotStreaming { cost } => ErrorInfo {
                exception_type: Some("upstream_error"),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "upstream_not_streaming",
                    format!(
                        "The model's upstream answered this streaming request without streaming; it did the work, so \
                         the call was billed ({} USD) as the upstream reported it. Retry without `stream`.",
                        crate::billing::fmt_usd(*cost)
                    ),
                )
            },
            Self::UpstreamUnavailable(e) => ErrorInfo {
                exception_type: Some("upstream_unavailable"),
                detail: Some(e.clone()),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "upstream_unavailable",
                    "The model's upstream could not be reached.",
                )
            },
            Self::UpstreamTimeout => ErrorInfo {
                exception_type: Some("upstream_timeout"),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "upstream_timeout",
                    "The model's upstream did not answer in time.",
                )
            },
            Self::NoHealthyNode(pool) => ErrorInfo {
                exception_type: Some("no_healthy_node"),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "no_healthy_node",
                    format!("No healthy GPU node is available in pool `{pool}`. Try again shortly."),
                )
            },
            Self::UpstreamRejected { message, .. } => ErrorInfo::new(
                status,
                "invalid_request_error",
                "upstream_rejected",
                if message.is_empty() {
                    "The model's upstream rejected the request.".to_owned()
                } else {
                    format!("The model's upstream rejected the request: {message}")
                },
            ),
            // OpenAI's shape: the type names the limit (`requests`, `tokens`).
            Self::RateLimited { kind, message, .. } => {
                ErrorInfo::new(status, kind, "rate_limit_exceeded", message.clone())
            }
            Self::UpstreamRateLimited { .. } => ErrorInfo::new(
                status,
                "rate_limit_error",
                "upstream_rate_limited",
                "The model's upstream is rate limiting requests. Try again later.",
            ),
            Self::UpstreamAuthFailed { upstream_status } => ErrorInfo {
                exception_type: Some("upstream_auth_failed"),
                detail: Some(format!("the upstream answered {upstream_status}: check the model's upstream key")),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "upstream_auth_failed",
                    "The model's upstream refused this gateway's credentials (a server configuration problem, not your API key).",
                )
            },
            Self::UpstreamError { upstream_status } => ErrorInfo {
                exception_type: Some("upstream_error"),
                detail: Some(format!("the upstream answered {upstream_status}")),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "upstream_error",
                    if (300..400).contains(upstream_status) {
                        format!("The model's upstream answered a redirect ({upstream_status}), which is not followed.")
                    } else {
                        format!("The model's upstream failed (it answered {upstream_status}).")
                    },
                )
            },
            Self::DatabaseUnavailable(e) => ErrorInfo {
                exception_type: Some("database_unavailable"),
                detail: Some(e.to_string()),
                ..ErrorInfo::new(
                    status,
                    "server_error",
                    "service_unavailable",
                    "The service is temporarily unavailable.",
                )
            },
            Self::ShuttingDown => ErrorInfo {
                exception_type: Some("shutting_down"),
                ..ErrorInfo::new(status, "server_error", "shutting_down", "The server is shutting down.")
            },
            Self::Database(e) => ErrorInfo {
                exception_type: Some("database"),
                detail: Some(e.to_string()),
                ..ErrorInfo::for_status(status)
            },
            Self::Internal(e) => ErrorInfo {
                exception_type: Some("internal"),
                detail: Some(format!("{e:#}")),
                ..ErrorInfo::for_status(status)
            },
            Self::Unauthorized
            | Self::Forbidden
            | Self::PayloadTooLarge
            | Self::RequestTimeout
            | Self::UnsupportedMediaType => ErrorInfo::for_status(status),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let info = self.info();
        let mut response = info.status.into_response();
        // Only our own authentication failures ask for credentials; an upstream's never reach
        // the client as a 401 (see `llm::upstream_errors`).
        if info.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"privaterouter\""),
            );
        }
        if let Self::UpstreamRateLimited { retry_after: Some(secs) } = self {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if let Self::RateLimited { retry_after_secs, .. } = self {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(retry_after_secs));
        }
        response.extensions_mut().insert(info);
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
