//! The HTTP telemetry middleware, applied to every route and to the fallback of the public router
//! (so it sees the matched route template). Per request it: picks the request id, resolves the
//! client address, counts the request in flight, catches panics (500), renders every error body
//! in the OpenAI shape with the request id, counts 5xx exceptions, and — when the response body
//! has been sent or dropped — records the counter and the duration histogram and writes the one
//! access-log line.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, LazyLock, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, MatchedPath},
    http::{Method, Request, Response, StatusCode, header},
    response::IntoResponse,
};
use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};
use http_body::{Frame, SizeHint};
use metrics::{Gauge, counter, gauge, histogram};
use tower::{Layer, Service};

use super::{
    access_log::{self, AccessLine, AccessLog, UserSlot},
    client_ip::TrustedProxies,
    logging::unix_now,
    metrics::{
        HTTP_EXCEPTIONS_TOTAL, HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT,
        HTTP_REQUESTS_TOTAL,
    },
    request_id::{RequestId, X_REQUEST_ID},
};
use crate::error::{ApiError, ErrorInfo};

pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

struct Shared {
    access_log: AccessLog,
    proxies: TrustedProxies,
    max_body_bytes: u64,
}

impl TelemetryLayer {
    pub fn new(access_log: AccessLog, proxies: TrustedProxies, max_body_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                access_log,
                proxies,
                max_body_bytes: max_body_bytes as u64,
            }),
        }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Telemetry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let ts = unix_now();
        let method = method_label(req.method());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, |p| intern_route(p.as_str()));
        let request_id = RequestId::from_headers(req.headers());
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let user = UserSlot::default();
        let in_flight = gauge!(HTTP_REQUESTS_IN_FLIGHT, "method" => method, "route" => route);
        in_flight.increment(1.0);

        let record = Record {
            shared: self.shared.clone(),
            start,
            ts,
            method,
            route,
            raw_method: req.method().as_str().chars().take(32).collect(),
            raw_path: access_log::truncate(req.uri().path()).to_owned(),
            ip: self.shared.proxies.client_ip(peer, req.headers()),
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| access_log::truncate(v).to_owned()),
            request_id: request_id.clone(),
            user: user.clone(),
            in_flight,
        };
        req.extensions_mut().insert(request_id);
        req.extensions_mut().insert(user);

        // A declared body over the limit is refused before any handler runs; bodies without a
        // length are cut by `DefaultBodyLimit` when a handler reads them.
        let too_large = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > self.shared.max_body_bytes);
        let inner_fut = (!too_large).then(|| {
            let clone = self.inner.clone();
            std::mem::replace(&mut self.inner, clone).call(req)
        });

        Box::pin(async move {
            let response = match inner_fut {
                None => ApiError::PayloadTooLarge.into_response(),
                Some(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(Ok(response)) => response,
                    Err(_panic) => {
                        // The panic hook has already logged message and location.
                        let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
                        response.extensions_mut().insert(ErrorInfo {
                            exception_type: Some("panic"),
                            ..ErrorInfo::for_status(StatusCode::INTERNAL_SERVER_ERROR)
                        });
                        response
                    }
                },
            };
            Ok(record.respond(response))
        })
    }
}

/// Everything needed to finish a request once its body is done.
struct Record {
    shared: Arc<Shared>,
    start: Instant,
    ts: f64,
    method: &'static str,
    route: &'static str,
    raw_method: String,
    raw_path: String,
    ip: Option<std::net::IpAddr>,
    user_agent: Option<String>,
    request_id: RequestId,
    user: UserSlot,
    in_flight: Gauge,
}

impl Record {
    fn respond(self, response: Response<Body>) -> Response<Body> {
        let (mut parts, mut body) = response.into_parts();
        let status = parts.status;
        if status.is_client_error() || status.is_server_error() {
            let info = parts.extensions.remove::<ErrorInfo>();
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if info.is_some() || !is_json {
                let mut info = info.unwrap_or_else(|| ErrorInfo::for_status(status));
                info.status = status;
                body = Body::from(info.body_json(self.request_id.as_str()));
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                parts.headers.remove(header::CONTENT_LENGTH);
                if status.is_server_error() {
                    let exception_type = info.exception_type.unwrap_or("internal");
                    counter!(HTTP_EXCEPTIONS_TOTAL, "method" => self.method, "route" => self.route, "exception_type" => exception_type)
                        .increment(1);
                    tracing::error!(
                        target: "pr.error",
                        request_id = self.request_id.as_str(),
                        route = self.route,
                        status = status.as_u16(),
                        exception_type,
                        detail = info.detail.as_deref().unwrap_or(""),
                        "request failed"
                    );
                }
            } else if status.is_server_error() {
                counter!(HTTP_EXCEPTIONS_TOTAL, "method" => self.method, "route" => self.route, "exception_type" => "internal")
                    .increment(1);
            }
        }
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), self.request_id.header_value());
        let body = Body::new(TelemetryBody {
            inner: body,
            bytes: 0,
            done: Some((self, status)),
        });
        Response::from_parts(parts, body)
    }

    fn finish(self, status: StatusCode, bytes: u64) {
        let elapsed = self.start.elapsed();
        let status_label = status_label(status);
        let labels = [
            ("method", self.method),
            ("route", self.route),
            ("status", status_label),
        ];
        counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
        histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());
        self.in_flight.decrement(1.0);
        self.shared.access_log.write(&AccessLine {
            ts: (self.ts * 1000.0).round() / 1000.0,
            request_id: self.request_id.as_str(),
            method: &self.raw_method,
            route: self.route,
            raw_path: &self.raw_path,
            status: status.as_u16(),
            latency_ms: (elapsed.as_secs_f64() * 100_000.0).round() / 100.0,
            user_id: self.user.get(),
            ip: self.ip,
            user_agent: self.user_agent.as_deref(),
            bytes,
        });
    }
}

/// Counts the bytes of the response body and finishes the request when the body ends or is
/// dropped (sent, or abandoned by a disconnecting client).
struct TelemetryBody {
    inner: Body,
    bytes: u64,
    done: Option<(Record, StatusCode)>,
}

impl TelemetryBody {
    fn finish(&mut self) {
        if let Some((record, status)) = self.done.take() {
            record.finish(status, self.bytes);
        }
    }
}

impl http_body::Body for TelemetryBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TelemetryBody {
    fn drop(&mut self) {
        self.finish();
    }
}

pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Route templates come from the router's own definitions (a closed set), so interning them as
/// `&'static str` is bounded and keeps label construction allocation-free on the hot path.
fn intern_route(template: &str) -> &'static str {
    static ROUTES: LazyLock<RwLock<HashMap<Box<str>, &'static str>>> =
        LazyLock::new(Default::default);
    if let Some(route) = ROUTES.read().expect("route table lock").get(template) {
        return route;
    }
    let mut routes = ROUTES.write().expect("route table lock");
    routes
        .entry(template.into())
        .or_insert_with(|| Box::leak(template.into()))
}

fn status_label(status: StatusCode) -> &'static str {
    static LABELS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        (0..1000u16)
            .map(|code| &*Box::leak(code.to_string().into_boxed_str()))
            .collect()
    });
    LABELS
        .get(status.as_u16() as usize)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_closed_sets() {
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT), "418");
        assert!(std::ptr::eq(
            intern_route("/a/{id}"),
            intern_route("/a/{id}")
        ));
    }
}
