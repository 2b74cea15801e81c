//! Extractors whose rejections are [`ApiError`]s, so that malformed input gets the same JSON error
//! body (with the request id) as every other error.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{header, request::Parts},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::{
    http::error::ApiError,
    http::{RequestContext, RequestLimits},
};

/// `Json<T>` with OpenAI-style errors: 400 naming the problem for bad syntax or wrong field types,
/// 413 for bodies over `PR_MAX_BODY_BYTES`, 415 without a JSON content type, and 408 when the
/// body does not arrive within `PR_BODY_READ_TIMEOUT_SECS`.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limits = req.extensions().get::<RequestContext>().map_or(RequestLimits::DEFAULT, |c| c.limits);
        let body = Limited::new(req.into_body(), limits.max_body_bytes);
        let bytes = match tokio::time::timeout(limits.body_read_timeout, body.collect()).await {
            Err(_elapsed) => return Err(ApiError::RequestTimeout),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::PayloadTooLarge);
            }
            Ok(Err(e)) => {
                return Err(ApiError::bad_request("invalid_body", format!("Failed to read the request body: {e}")));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// An optional JSON body: absent when the request has neither a body nor a content type.
impl<T, S> axum::extract::OptionalFromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let no_type = !req.headers().contains_key(header::CONTENT_TYPE);
        let empty =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == "0");
        if no_type && empty {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state).await.map(Some)
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let code = match rejection {
        JsonRejection::JsonSyntaxError(_) => "invalid_json",
        JsonRejection::JsonDataError(_) => "invalid_request_body",
        _ => "bad_request",
    };
    ApiError::bad_request(code, rejection.body_text())
}

/// The request's context (request id, user slot, limits), set by the telemetry middleware.
impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("request context missing: telemetry layer not applied")))
    }
}

/// `application/json` or any `application/*+json`, parameters (charset) ignored.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}
