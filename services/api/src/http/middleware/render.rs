//! Error bodies: every 4xx and 5xx response leaves the middleware with a JSON body in its API
//! family's shape (Anthropic's on its route, OpenAI's elsewhere) that carries the request id;
//! each 5xx is counted by exception type and logged once with its internal detail.

use axum::{
    body::Body,
    http::{HeaderValue, header, response::Parts},
};
use metrics::counter;

use crate::{
    http::error::{ErrorInfo, anthropic_type},
    telemetry::{
        metrics::{EXCEPTION_TYPES, HTTP_EXCEPTIONS_TOTAL},
        request_id::RequestId,
    },
};

/// Renders the body of an error response, or returns `body` unchanged when it is a success or a
/// handler's own JSON error (a proxied upstream error, say) that carries no [`ErrorInfo`].
pub(super) fn error_body(
    parts: &mut Parts,
    body: Body,
    method: &'static str,
    route: &'static str,
    request_id: &RequestId,
) -> Body {
    let status = parts.status;
    if !status.is_client_error() && !status.is_server_error() {
        return body;
    }
    let info = parts.extensions.remove::<ErrorInfo>();
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if info.is_none() && is_json {
        if status.is_server_error() {
            counter!(HTTP_EXCEPTIONS_TOTAL, "method" => method, "route" => route, "exception_type" => "internal")
                .increment(1);
        }
        return body;
    }
    let mut info = info.unwrap_or_else(|| ErrorInfo::for_status(status));
    info.status = status;
    // The Anthropic type follows the status as sent, should a layer have changed it.
    info.anthropic = anthropic_type(status);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    if status.is_server_error() {
        let exception_type = info.exception_type.unwrap_or("internal");
        // The zero series of a fresh process cover the closed set; a new type belongs there too.
        debug_assert!(EXCEPTION_TYPES.contains(&exception_type), "{exception_type} not in EXCEPTION_TYPES");
        counter!(HTTP_EXCEPTIONS_TOTAL, "method" => method, "route" => route, "exception_type" => exception_type)
            .increment(1);
        tracing::error!(
            target: "pr.error",
            request_id = request_id.as_str(),
            route,
            status = status.as_u16(),
            exception_type,
            detail = info.detail.as_deref().unwrap_or(""),
            "request failed"
        );
    }
    Body::from(info.body_for(route, request_id.as_str()))
}
