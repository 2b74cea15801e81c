//! Label values and cached metric handles of the HTTP families. Labels come from closed sets
//! (method verbs, the router's route templates, status codes), and each per-route service keeps
//! its handles so the recorder's own lookup does not run on every request.

use std::sync::{Arc, OnceLock};

use axum::{
    extract::MatchedPath,
    http::{Method, StatusCode},
};
use metrics::{Counter, Gauge, Histogram, Label, SharedString, counter, gauge, histogram};

use super::{Shared, UNMATCHED_ROUTE};
use crate::telemetry::metrics::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT, HTTP_REQUESTS_TOTAL};

/// `Router::layer` creates one service per route (and one for the fallback), so each instance
/// keeps its route's handles, per method, registered by the first request: the hot path clones
/// one `Arc` instead of building label vectors and looking them up in the recorder three times.
pub(super) struct PerRoute {
    shared: Arc<Shared>,
    by_method: [OnceLock<Arc<RouteMetrics>>; METHODS.len()],
}

impl PerRoute {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared, by_method: Default::default() }
    }

    /// The layer's configuration and access log.
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The handles of this request's (method, route). A service reached under another template
    /// than the one it cached (a router nested twice) gets fresh handles rather than a wrong label.
    pub(super) fn metrics(&self, method: &Method, matched: Option<&MatchedPath>) -> Arc<RouteMetrics> {
        let method = method_index(method);
        let route = matched.map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let cached = self.by_method[method].get_or_init(|| Arc::new(RouteMetrics::new(METHODS[method], route)));
        if cached.route() == route { cached.clone() } else { Arc::new(RouteMetrics::new(METHODS[method], route)) }
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

/// Metric handles of one (method, route) pair, registered once and reused.
pub(super) struct RouteMetrics {
    method: &'static str,
    route: SharedString,
    in_flight: Gauge,
    /// Handles per status code, filled once each and read without any lock or shared write.
    by_status: [OnceLock<(StatusCode, Counter, Histogram)>; STATUS_SLOTS],
}

/// Distinct statuses per (method, route) served from the lock-free slots; more fall back to the
/// recorder's own lookup.
const STATUS_SLOTS: usize = 12;

impl RouteMetrics {
    fn new(method: &'static str, route: &str) -> Self {
        let route = SharedString::from(Arc::<str>::from(route));
        let in_flight = gauge!(HTTP_REQUESTS_IN_FLIGHT, "method" => method, "route" => route.clone());
        Self { method, route, in_flight, by_status: Default::default() }
    }

    pub(super) fn method(&self) -> &'static str {
        self.method
    }

    pub(super) fn route(&self) -> &str {
        &self.route
    }

    /// The route label, for a series that is not cached here (the exceptions counter).
    pub(super) fn route_label(&self) -> SharedString {
        self.route.clone()
    }

    pub(super) fn start(&self) {
        self.in_flight.increment(1.0);
    }

    pub(super) fn finish(&self, status: StatusCode, seconds: f64) {
        self.in_flight.decrement(1.0);
        for slot in &self.by_status {
            let (s, requests, duration) = slot.get_or_init(|| {
                let labels = self.labels(status);
                (
                    status,
                    counter!(HTTP_REQUESTS_TOTAL, labels.iter()),
                    histogram!(HTTP_REQUEST_DURATION_SECONDS, labels.iter()),
                )
            });
            if *s == status {
                requests.increment(1);
                duration.record(seconds);
                return;
            }
        }
        let labels = self.labels(status);
        counter!(HTTP_REQUESTS_TOTAL, labels.iter()).increment(1);
        histogram!(HTTP_REQUEST_DURATION_SECONDS, labels.iter()).record(seconds);
    }

    fn labels(&self, status: StatusCode) -> [Label; 3] {
        [
            Label::from_static_parts("method", self.method),
            Label::new("route", self.route.clone()),
            Label::new("status", status.as_u16().to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_closed_set() {
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
    }
}
