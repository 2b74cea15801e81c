//! Label values and cached metric handles of the HTTP families. Labels come from closed sets
//! (method verbs, the router's route templates, status codes), and each per-route service keeps
//! its handles so the recorder's own lookup does not run on every request.

use std::{
    collections::HashMap,
    sync::{LazyLock, OnceLock, RwLock},
};

use axum::{
    extract::MatchedPath,
    http::{Method, StatusCode},
};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use super::UNMATCHED_ROUTE;
use crate::telemetry::metrics::{HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_IN_FLIGHT, HTTP_REQUESTS_TOTAL};

/// `Router::layer` creates one service per route (and one for the fallback), so each instance
/// caches its route label and metric handles: no lock or hash lookup on the hot path. The
/// cache is keyed by the `MatchedPath` it was filled from, so a mismatch falls back to the
/// global tables instead of mislabelling.
#[derive(Default)]
pub(super) struct PerRoute {
    route: OnceLock<(usize, &'static str)>,
    metrics: [OnceLock<&'static RouteMetrics>; METHODS.len()],
}

impl PerRoute {
    pub(super) fn route(&self, matched: Option<&MatchedPath>) -> (&'static str, bool) {
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

    pub(super) fn metrics(&self, method: usize, route: &'static str, cacheable: bool) -> &'static RouteMetrics {
        if cacheable {
            self.metrics[method].get_or_init(|| RouteMetrics::get(METHODS[method], route))
        } else {
            RouteMetrics::get(METHODS[method], route)
        }
    }
}

/// Method label values: the standard verbs and `OTHER` for anything else.
pub const METHODS: [&str; 10] =
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER"];

pub(super) fn method_index(method: &Method) -> usize {
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
pub(super) struct RouteMetrics {
    method: &'static str,
    route: &'static str,
    pub(super) in_flight: Gauge,
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

    pub(super) fn record(&self, status: StatusCode, seconds: f64) {
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
