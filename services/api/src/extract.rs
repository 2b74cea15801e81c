//! Extractors whose rejections are [`ApiError`]s, so that malformed input gets the same JSON error
//! body (with the request id) as every other error.

use axum::{
    extract::{FromRequest, Request, rejection::JsonRejection},
    http::StatusCode,
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` with OpenAI-style errors: 400 naming the problem for bad syntax or wrong field types,
/// 413 for oversized bodies, 415 without a JSON content type, 408 when the body is too slow.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if caused_by_body_timeout(&rejection) {
        return ApiError::RequestTimeout;
    }
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        _ => {
            let code = match rejection {
                JsonRejection::JsonSyntaxError(_) => "invalid_json",
                JsonRejection::JsonDataError(_) => "invalid_request_body",
                _ => "bad_request",
            };
            ApiError::bad_request(code, rejection.body_text())
        }
    }
}

fn caused_by_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = e.source();
    }
    false
}
