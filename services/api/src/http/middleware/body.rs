//! The end of a request: the response body wrapper counts the bytes sent and, when the body ends
//! or is dropped, records the request counter and duration histogram, releases the in-flight
//! gauge and writes the one access-log line.

use std::{
    net::IpAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    http::{HeaderValue, Method, StatusCode, Uri},
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::{RateSlot, Shared, handles::RouteMetrics};
use crate::telemetry::{
    access_log::{self, AccessLine, UserSlot},
    request_id::RequestId,
};

/// Everything needed to finish a request once its body is done.
pub(super) struct Record {
    pub(super) shared: &'static Shared,
    pub(super) start: Instant,
    pub(super) ts: f64,
    pub(super) method: &'static str,
    pub(super) route: &'static str,
    pub(super) raw_method: Method,
    pub(super) uri: Uri,
    pub(super) ip: Option<IpAddr>,
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) request_id: RequestId,
    pub(super) user: UserSlot,
    pub(super) rate_limit: RateSlot,
    pub(super) metrics: &'static RouteMetrics,
}

impl Record {
    pub(super) fn finish(self, status: StatusCode, bytes: u64) {
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
pub(super) struct TelemetryBody {
    inner: Body,
    bytes: u64,
    done: Option<(Record, StatusCode)>,
}

impl TelemetryBody {
    pub(super) fn new(inner: Body, record: Record, status: StatusCode) -> Self {
        Self { inner, bytes: 0, done: Some((record, status)) }
    }

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
