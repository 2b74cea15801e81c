//! The one error type of the API. Handlers return `ApiError`; its `IntoResponse` only attaches an
//! [`ErrorInfo`] to an empty response. The telemetry middleware renders every error body (so each
//! carries the request id), logs internal details once with that id, and counts 5xx exceptions.
//! What each error is called where (status, body fields, metric labels) is one row of the
//! outcome table (`outcome`).

mod outcome;

use std::borrow::Cow;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

pub use outcome::{Outcome, Row, anthropic_type};

/// The route whose errors take Anthropic's shape.
pub const ANTHROPIC_ROUTE: &str = "/v1/messages";

/// What the telemetry middleware needs to render an error body and count it.
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub status: StatusCode,
    /// Shown to the client. Never contains internal details.
    pub message: Cow<'static, str>,
    /// OpenAI-style error type (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// Machine-readable code (`invalid_json`, `not_found`, ...).
    pub code: &'static str,
    /// Anthropic-style error type, for the body on [`ANTHROPIC_ROUTE`].
    pub anthropic: &'static str,
    /// Stable snake_case label for `pr_http_exceptions_total` when the status is 5xx.
    pub exception_type: Option<&'static str>,
    /// Logged (with the request id), never shown.
    pub detail: Option<String>,
}

impl ErrorInfo {
    /// The error for a bare error status produced outside our handlers (axum's 405, a timeout
    /// layer, the fallback), so that every error body has the same shape.
    pub fn for_status(status: StatusCode) -> Self {
        Self { status, anthropic: anthropic_type(status), ..Outcome::for_status(status).info() }
    }

    /// The error body for a route: Anthropic's shape on [`ANTHROPIC_ROUTE`] (its SDKs parse
    /// nothing else), OpenAI's everywhere else.
    pub fn body_for(&self, route: &str, request_id: &str) -> Vec<u8> {
        if route == ANTHROPIC_ROUTE { self.body_anthropic(request_id) } else { self.body_json(request_id) }
    }

    /// `{"type": "error", "error": {"type", "message"}, "request_id"}`.
    pub fn body_anthropic(&self, request_id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic, "message": self.message},
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
    /// The upstream's answer could not be read as JSON (shown to the client as unavailable).
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
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

    /// The outcome this error is: its row in the outcome table names everything else.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::BadRequest { .. } => Outcome::BadRequest,
            Self::Unauthorized => Outcome::Unauthorized,
            Self::Forbidden => Outcome::Forbidden,
            Self::NotFound(_) => Outcome::NotFound,
            Self::PayloadTooLarge => Outcome::PayloadTooLarge,
            Self::RequestTimeout => Outcome::RequestTimeout,
            Self::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            Self::Conflict(_) => Outcome::Conflict,
            Self::Unprocessable(_) => Outcome::Unprocessable,
            Self::LimitExceeded(_) => Outcome::LimitExceeded,
            Self::NotAllowed { .. } => Outcome::NotAllowed,
            Self::CreditRequired { .. } => Outcome::CreditRequired,
            Self::InsufficientCredits { .. } => Outcome::InsufficientCredits,
            Self::ModelNotFound(_) => Outcome::ModelNotFound,
            Self::WrongEndpoint { .. } => Outcome::WrongEndpoint,
            Self::UpstreamNotStreaming { .. } => Outcome::UpstreamNotStreaming,
            Self::UpstreamUnavailable(_) => Outcome::UpstreamUnavailable,
            Self::InvalidResponse(_) => Outcome::InvalidResponse,
            Self::UpstreamTimeout => Outcome::UpstreamTimeout,
            Self::NoHealthyNode(_) => Outcome::NoHealthyNode,
            Self::UpstreamRejected { .. } => Outcome::UpstreamRejected,
            Self::RateLimited { .. } => Outcome::RateLimited,
            Self::UpstreamRateLimited { .. } => Outcome::UpstreamRateLimited,
            Self::UpstreamAuthFailed { .. } => Outcome::UpstreamAuthFailed,
            Self::UpstreamError { .. } => Outcome::UpstreamError,
            Self::ShuttingDown => Outcome::ShuttingDown,
            Self::DatabaseUnavailable(_) => Outcome::DatabaseUnavailable,
            Self::Database(_) => Outcome::Database,
            Self::Internal(_) => Outcome::Internal,
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            // The upstream's own refusal keeps its status (400 or 413).
            Self::UpstreamRejected { status, .. } => *status,
            other => other.outcome().row().status,
        }
    }

    /// The outcome's row, with what this error carries: its message, a dynamic code, type or
    /// status, and the detail that is logged but never shown.
    pub fn info(&self) -> ErrorInfo {
        let mut info = self.outcome().info();
        if let Some(message) = self.message() {
            info.message = message.into();
        }
        info.detail = self.detail();
        match self {
            Self::BadRequest { code, .. } | Self::NotAllowed { code, .. } => info.code = code,
            // OpenAI's shape: the type names the limit (`requests`, `tokens`).
            Self::RateLimited { kind, .. } => info.kind = kind,
            Self::UpstreamRejected { status, .. } => {
                info.status = *status;
                info.anthropic = anthropic_type(*status);
            }
            _ => {}
        }
        info
    }

    /// The client's message when it says more than the row's generic one.
    fn message(&self) -> Option<String> {
        let usd = crate::billing::fmt_usd;
        Some(match self {
            Self::BadRequest { message, .. }
            | Self::NotAllowed { message, .. }
            | Self::Conflict(message)
            | Self::Unprocessable(message)
            | Self::LimitExceeded(message)
            | Self::RateLimited { message, .. } => message.clone(),
            Self::NotFound(what) => format!("{what} not found."),
            Self::CreditRequired { available } => {
                format!("This needs available credit; {} USD is available. Add credits first.", usd(*available))
            }
            Self::InsufficientCredits { needed, available, prompt_bound, cap } => format!(
                "This call needs up to {} USD of credit (its worst case: about {prompt_bound} prompt tokens and at most \
                 {cap} output tokens); {} USD is available. Add credits, or lower max_tokens.",
                usd(*needed),
                usd(*available),
            ),
            Self::ModelNotFound(name) => format!("The model `{name}` does not exist or you do not have access to it."),
            Self::WrongEndpoint { model, route, served } => {
                format!("The model `{model}` is not served on {route}; it is served on: {}.", served.join(", "))
            }
            Self::UpstreamNotStreaming { cost } => format!(
                "The model's upstream answered this streaming request without streaming; it did the work, so \
                 the call was billed ({} USD) as the upstream reported it. Retry without `stream`.",
                usd(*cost)
            ),
            Self::NoHealthyNode(pool) => {
                format!("No healthy GPU node is available in pool `{pool}`. Try again shortly.")
            }
            Self::UpstreamRejected { message, .. } if !message.is_empty() => {
                format!("The model's upstream rejected the request: {message}")
            }
            Self::UpstreamError { upstream_status } if (300..400).contains(upstream_status) => {
                format!("The model's upstream answered a redirect ({upstream_status}), which is not followed.")
            }
            Self::UpstreamError { upstream_status } => {
                format!("The model's upstream failed (it answered {upstream_status}).")
            }
            _ => return None,
        })
    }

    /// What the operator reads in the log under the request id.
    fn detail(&self) -> Option<String> {
        match self {
            Self::UpstreamUnavailable(detail) | Self::InvalidResponse(detail) => Some(detail.clone()),
            Self::UpstreamAuthFailed { upstream_status } => {
                Some(format!("the upstream answered {upstream_status}: check the model's upstream key"))
            }
            Self::UpstreamError { upstream_status } => Some(format!("the upstream answered {upstream_status}")),
            Self::DatabaseUnavailable(e) | Self::Database(e) => Some(e.to_string()),
            Self::Internal(e) => Some(format!("{e:#}")),
            _ => None,
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
