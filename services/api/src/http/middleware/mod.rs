//! The HTTP middleware of the public listener, applied to every route and to the fallback (so it
//! sees the matched route template). Per request it: picks the request id, resolves the client
//! address, counts the request in flight, refuses declared oversized bodies (413), bounds the
//! handler's time (504), catches panics (500), renders every error body in its API family's shape
//! with the request id, counts 5xx exceptions, and — when the response body has been sent or
//! dropped — records the counter and the duration histogram and writes the one access-log line.
//!
//! It is deliberately one layer rather than a stack of tower layers: each extra layer per route
//! costs a boxed clone per request, which showed up as several percent of throughput in
//! `benches/http_overhead.rs`. The files split it by job, not by layer: `handles` (labels and
//! cached metric handles), `timeout` (the handler's time limit), `render` (error bodies) and
//! `body` (the body wrapper that finishes a request).

mod body;
mod handles;
mod render;
mod timeout;

use std::{
    convert::Infallible,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{ConnectInfo, MatchedPath},
    http::{Request, Response, StatusCode, header},
    response::IntoResponse,
};
use futures_util::{FutureExt, future::BoxFuture};
use tower::{Layer, Service};

use self::{
    body::{Record, TelemetryBody},
    handles::{METHODS, PerRoute, method_index},
    timeout::{Elapsed, LazyTimeout},
};
pub use handles::method_label;

use crate::telemetry::{
    access_log::{AccessLog, UserSlot},
    client_ip::TrustedProxies,
    logging::unix_now,
    request_id::{RequestId, X_REQUEST_ID},
};
use crate::{
    accounts::rate_limiter::RateStatus,
    http::error::{ApiError, Outcome},
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
        Telemetry { inner, shared: self.shared, per_route: Arc::default() }
    }
}

#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    shared: &'static Shared,
    per_route: Arc<PerRoute>,
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
            shared: self.shared,
            start,
            ts,
            method,
            route,
            // Cheap clones (shared bytes): the strings are only materialised in the log line.
            raw_method: req.method().clone(),
            uri: req.uri().clone(),
            ip: self.shared.proxies.client_ip(peer, req.headers()),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            request_id: request_id.clone(),
            user: user.clone(),
            rate_limit: rate_limit.clone(),
            metrics,
        };
        let limits = self.shared.limits;
        req.extensions_mut().insert(RequestContext { request_id, user, limits, rate_limit });

        // A declared body over the limit is refused before any handler runs; a body without a
        // length is cut where it is read (`extract::AppJson`, the only reader of request bodies).
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

        let deadline = start + self.shared.request_timeout;
        Box::pin(async move {
            let mut pending = Pending(Some(record));
            let response = match inner_fut {
                None => ApiError::PayloadTooLarge.into_response(),
                Some(fut) => match LazyTimeout::new(AssertUnwindSafe(fut).catch_unwind(), deadline).await {
                    Ok(Ok(Ok(response))) => response,
                    // Time to the response head; a streaming body is not limited by this.
                    Err(Elapsed) => StatusCode::GATEWAY_TIMEOUT.into_response(),
                    Ok(Err(_panic)) => {
                        // The panic hook has already logged message and location.
                        let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
                        response.extensions_mut().insert(Outcome::Panic.info());
                        response
                    }
                },
            };
            Ok(respond(pending.0.take().expect("the record is taken once"), response))
        })
    }
}

/// The request's record until its response head exists. A future dropped before then (the
/// client went away while the handler ran) finishes it as 499, as nginx logs a client that
/// closed the connection: the in-flight gauge comes down and the request keeps its access-log
/// line and its count.
struct Pending(Option<Record>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.finish(StatusCode::from_u16(499).expect("499 is a status code"), 0);
        }
    }
}

/// The response as it leaves the middleware: the error body rendered, the request id and
/// rate-limit headers set, and the body wrapped so the request is finished when it is done.
fn respond(record: Record, response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let body = render::error_body(&mut parts, body, record.method, record.route, &record.request_id);
    parts.headers.insert(X_REQUEST_ID.clone(), record.request_id.header_value());
    if let Some(status) = record.rate_limit.0.get() {
        status.write_headers(&mut parts.headers);
    }
    let status = parts.status;
    Response::from_parts(parts, Body::new(TelemetryBody::new(body, record, status)))
}
