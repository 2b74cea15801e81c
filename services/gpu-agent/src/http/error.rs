//! The one error type of the HTTP layer: every error is a JSON body
//! `{"error": {"message": "...", "code": "..."}}` with a status from [`AgentError::status_code`].

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::gpu::ReadError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No or wrong bearer token; `invalid_token` when one was presented.
    #[error("a valid bearer token is required")]
    Unauthorized { invalid_token: bool },
    #[error("no such route")]
    NotFound,
    #[error("method not allowed for this route")]
    MethodNotAllowed,
    /// No current GPU reading: answered as unavailable, never with older figures.
    #[error("no GPU reading available: {0}")]
    Gpu(#[from] ReadError),
}

impl AgentError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Gpu(ReadError::Panicked) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Gpu(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Gpu(e) => e.code(),
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.to_string(), "code": self.code()}});
        let mut response = (self.status_code(), Json(body)).into_response();
        if let Self::Unauthorized { invalid_token } = self {
            let challenge = if invalid_token {
                "Bearer realm=\"privaterouter-gpu-agent\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"privaterouter-gpu-agent\""
            };
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
