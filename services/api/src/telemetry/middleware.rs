//! The HTTP middleware of the public listener, applied to every route and to the fallback (so it
//! sees the matched route template). Per request it: picks the request id, resolves the client
//! address, counts the request in flight, refuses declared oversized bodies (413), bounds the
//! handler's time (504), catches panics (500), renders every error body in the OpenAI shape with
//! the request id, counts 5xx exceptions, and — when the response body has been sent or dropped —
//! records the counter and the duration histogram and writes the one access-log line.
//!
//! It is deliberately one layer rather than a stack of tower layers: each extra layer per route
//! costs a boxed clone per request, which showed up as several percent of throughput in
//! `benches/http_overhead.rs`.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, LazyLock, OnceLock, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, MatchedPath},
    http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header},
    response::IntoResponse,
};
use bytes::Bytes;
use futures_util::{FutureExt, future::BoxFuture};
use http_body::{Frame, SizeHint};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tower::{Layer, Service};

use super::{
    access_log::{self, AccessLine, AccessLog, UserSlot},
    client_ip::TrustedProxies,
    logging::unix_now,
    metrics::{
        EXCEPTION_TYPES, HTTP_EXCEPTIONS_TOTAL, HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT,
        HTTP_REQUESTS_TOTAL,
    },
    request_id::{RequestId, X_REQUEST_ID},
};
use crate::{
    accounts::rate_limiter::RateStatus,
    error::{ApiError, ErrorInfo},
};

pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone)]
pub struct TelemetryLayer {
    shared: &'static Shared,
}

struct Shared {
    access_log: AccessLog,
    proxies: TrustedProxies,
    limits: RequestLimits,
    request_timeout: Duration,
}

/// Limits applied where a handler reads its body (see `extract::AppJson`).
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

impl RequestLimits {
    pub const DEFAULT: Self = Self { max_body_bytes: 1024 * 1024, body_read_timeout: Duration::from_secs(15) };
}

/// Per-request context, inserted as one request extension: the request id (for error bodies and
/// logs), the slot the authentication extractor fills with the user id, and the body limits.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: RequestId,
    pub user: UserSlot,
    pub limits: RequestLimits,
    /// The rate-limit state of an LLM call, set by the gateway; the middleware writes it as the
    /// `x-ratelimit-*` headers of the response, whatever its status.
    pub rate_limit: RateSlot,
}

/// See [`RequestContext::rate_limit`].
#[derive(Clone, Debug, Default)]
pub struct RateSlot(Arc<OnceLock<RateStatus>>);

impl RateSlot {
    pub fn set(&self, status: RateStatus) {
        let _ = self.0.set(status);
    }
}

impl TelemetryLayer {
    pub fn new(
        access_log: AccessLog,
        proxies: TrustedProxies,
        limits: RequestLimits,
        request_timeout: Duration,
    ) -> Self {
        // Leaked on purpose: a layer lives as long as the server (two per process), and a
        // `&'static` reference costs no reference counting per request.
        Self { shared: Box::leak(Box::new(Shared { access_log, proxies, limits, request_timeout })) }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            per_route: Arc::new(PerRoute { shared: self.shared, route: OnceLock::new(), metrics: Default::default() }),
        }
    }
}

#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    per_route: Arc<PerRoute>,
}

/// `Router::layer` creates one service per route (and one for the fallback), so each instance
/// caches its route label and metric handles: no lock or hash lookup on the hot path. The
/// cache is keyed by the `MatchedPath` it was filled from, so a mismatch falls back to the
/// global tables instead of mislabelling.
struct PerRoute {
    shared: &'static Shared,
    route: OnceLock<(usize, &'static str)>,
    metrics: [OnceLock<&'static RouteMetrics>; METHODS.len()],
}

impl PerRoute {
    fn route(&self, matched: Option<&MatchedPath>) -> (&'static str, bool) {
        let key = matched.map_or(0, |p| p.as_str().as_ptr() as usize);
        if let Some((cached_key, route)) = self.route.get() {
            if *cached_key == key {
                return (route, true);
            }
            return (matched.map_or(UNMATCHED_ROUTE, |p| intern_route(p.as_str())), false);
        }
        let route = matched.map_or(UNMATCHED_ROUTE, |p| intern_route(p.as_str()));
        let _ = self.route.set((key, route));
        (route, true)
    }

    fn metrics(&self, method: usize, route: &'static str, cacheable: bool) -> &'static RouteMetrics {
        if cacheable {
            self.metrics[method].get_or_init(|| RouteMetrics::get(METHODS[method], route))
        } else {
            RouteMetrics::get(METHODS[method], route)
        }
    }
}

impl<S> Service<Request<Body>> for Telemetry<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
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
        let method_index = method_index(req.method());
        let method = METHODS[method_index];
        let (route, cacheable) = self.per_route.route(req.extensions().get::<MatchedPath>());
        let request_id = RequestId::from_headers(req.headers());
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let user = UserSlot::default();
        let rate_limit = RateSlot::default();
        let metrics = self.per_route.metrics(method_index, route, cacheable);
        metrics.in_flight.increment(1.0);

        let record = Record {
            shared: self.per_route.shared,
            start,
            ts,
            method,
            route,
            // Cheap clones (shared bytes): the strings are only materialised in the log line.
            raw_method: req.method().clone(),
            uri: req.uri().clone(),
            ip: self.per_route.shared.proxies.client_ip(peer, req.headers()),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            request_id: request_id.clone(),
            user: user.clone(),
            rate_limit: rate_limit.clone(),
            metrics,
        };
        let limits = self.per_route.shared.limits;
        req.extensions_mut().insert(RequestContext { request_id, user, limits, rate_limit });

        // A declared body over the limit is refused before any handler runs; bodies without a
        // length are cut by `DefaultBodyLimit` when a handler reads them.
        let too_large = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > limits.max_body_bytes as u64);
        let inner_fut = (!too_large).then(|| {
            let clone = self.inner.clone();
            std::mem::replace(&mut self.inner, clone).call(req)
        });

        let request_timeout = self.per_route.shared.request_timeout;
        Box::pin(async move {
            let response = match inner_fut {
                None => ApiError::PayloadTooLarge.into_response(),
                Some(fut) => match (LazyTimeout {
                    fut: AssertUnwindSafe(fut).catch_unwind(),
                    deadline: start + request_timeout,
                    sleep: None,
                })
                .await
                {
                    Ok(Ok(Ok(response))) => response,
                    // Time to the response head; a streaming body is not limited by this.
                    Err(Elapsed) => StatusCode::GATEWAY_TIMEOUT.into_response(),
                    Ok(Err(_panic)) => {
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

/// A timeout whose timer is only armed if the handler does not finish on its first poll: most
/// requests (health checks, cached reads, errors) complete synchronously and never touch the
/// timer wheel, which measurably costs throughput when done for every request.
#[pin_project::pin_project]
struct LazyTimeout<F> {
    #[pin]
    fut: F,
    deadline: Instant,
    #[pin]
    sleep: Option<tokio::time::Sleep>,
}

struct Elapsed;

impl<F: Future> Future for LazyTimeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.fut.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until((*this.deadline).into())));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

/// Everything needed to finish a request once its body is done.
struct Record {
    shared: &'static Shared,
    start: Instant,
    ts: f64,
    method: &'static str,
    route: &'static str,
    raw_method: Method,
    uri: Uri,
    ip: Option<std::net::IpAddr>,
    user_agent: Option<HeaderValue>,
    request_id: RequestId,
    user: UserSlot,
    rate_limit: RateSlot,
    metrics: &'static RouteMetrics,
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
                body = Body::from(info.body_for(self.route, self.request_id.as_str()));
                parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                parts.headers.remove(header::CONTENT_LENGTH);
                if status.is_server_error() {
                    let exception_type = info.exception_type.unwrap_or("internal");
                    // The zero series of a fresh process cover the closed set; a new type belongs there too.
                    debug_assert!(EXCEPTION_TYPES.contains(&exception_type), "{exception_type} not in EXCEPTION_TYPES");
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
        parts.headers.insert(X_REQUEST_ID.clone(), self.request_id.header_value());
        if let Some(status) = self.rate_limit.0.get() {
            status.write_headers(&mut parts.headers);
        }
        let body = Body::new(TelemetryBody { inner: body, bytes: 0, done: Some((self, status)) });
        Response::from_parts(parts, body)
    }

    fn finish(self, status: StatusCode, bytes: u64) {
        let elapsed = self.start.elapsed();
        self.metrics.record(status, elapsed.as_secs_f64());
        self.metrics.in_flight.decrement(1.0);
        self.shared.access_log.write(&AccessLine {
            ts: (self.ts * 1000.0).round() / 1000.0,
            request_id: self.request_id.as_str(),
            method: access_log::truncate(self.raw_method.as_str()),
            route: self.route,
            raw_path: access_log::truncate(self.uri.path()),
            status: status.as_u16(),
            latency_ms: (elapsed.as_secs_f64() * 100_000.0).round() / 100.0,
            user_id: self.user.get(),
            ip: self.ip,
            user_agent: self.user_agent.as_ref().and_then(|v| v.to_str().ok()).map(access_log::truncate),
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

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
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

/// Method label values: the standard verbs and `OTHER` for anything else.
pub const METHODS: [&str; 10] =
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

pub fn method_label(method: &Method) -> &'static str {
    METHODS[method_index(method)]
}

/// Metric handles of one (method, route) pair, registered once and reused: the recorder's own
/// lookup (building a label vector, hashing it) would otherwise run three times per request.
/// Entries are leaked on purpose: there is one per (method, route) pair, a small closed set, and
/// `&'static` references cost no reference counting on the hot path.
struct RouteMetrics {
    method: &'static str,
    route: &'static str,
    in_flight: Gauge,
    /// Handles per status code, filled once each and read without any lock or shared write.
    by_status: [OnceLock<(StatusCode, Counter, Histogram)>; STATUS_SLOTS],
}

/// Distinct statuses per (method, route) served from the lock-free slots; more fall back to the
/// recorder's own lookup.
const STATUS_SLOTS: usize = 12;

impl RouteMetrics {
    fn get(method: &'static str, route: &'static str) -> &'static Self {
        // Both labels are `&'static str` from closed sets, so their addresses identify them.
        type Table = HashMap<(usize, usize), &'static RouteMetrics>;
        static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(Default::default);
        let key = (method.as_ptr() as usize, route.as_ptr() as usize);
        if let Some(m) = TABLE.read().expect("metrics table lock").get(&key) {
            return m;
        }
        TABLE.write().expect("metrics table lock").entry(key).or_insert_with(|| {
            Box::leak(Box::new(Self {
                method,
                route,
                in_flight: gauge!(HTTP_REQUESTS_IN_FLIGHT, "method" => method, "route" => route),
                by_status: Default::default(),
            }))
        })
    }

    fn record(&self, status: StatusCode, seconds: f64) {
        for slot in &self.by_status {
            let (s, requests, duration) = match slot.get() {
                Some(entry) => entry,
                None => slot.get_or_init(|| {
                    let labels = [("method", self.method), ("route", self.route), ("status", status_label(status))];
                    (status, counter!(HTTP_REQUESTS_TOTAL, &labels), histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels))
                }),
            };
            if *s == status {
                requests.increment(1);
                duration.record(seconds);
                return;
            }
        }
        let labels = [("method", self.method), ("route", self.route), ("status", status_label(status))];
        counter!(HTTP_REQUESTS_TOTAL, &labels).increment(1);
        histogram!(HTTP_REQUEST_DURATION_SECONDS, &labels).record(seconds);
    }
}

/// Route templates come from the router's own definitions (a closed set), so interning them as
/// `&'static str` is bounded and keeps label construction allocation-free on the hot path.
fn intern_route(template: &str) -> &'static str {
    static ROUTES: LazyLock<RwLock<HashMap<Box<str>, &'static str>>> = LazyLock::new(Default::default);
    if let Some(route) = ROUTES.read().expect("route table lock").get(template) {
        return route;
    }
    let mut routes = ROUTES.write().expect("route table lock");
    routes.entry(template.into()).or_insert_with(|| Box::leak(template.into()))
}

fn status_label(status: StatusCode) -> &'static str {
    static LABELS: LazyLock<Vec<&'static str>> =
        LazyLock::new(|| (0..1000u16).map(|code| &*Box::leak(code.to_string().into_boxed_str())).collect());
    LABELS.get(status.as_u16() as usize).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_closed_sets() {
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT), "418");
        assert!(std::ptr::eq(intern_route("/a/{id}"), intern_route("/a/{id}")));
    }
}
