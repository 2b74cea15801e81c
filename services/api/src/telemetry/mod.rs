//! Telemetry: JSON logs (application and access log) through one non-blocking writer, the
//! Prometheus recorder and metric catalogue, the `/metrics` text (exposition), request ids and
//! client addresses. The HTTP middleware that records them per request is `http::middleware`.

pub mod access_log;
pub mod client_ip;
pub mod exposition;
pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod metrics_bind;
pub mod request_id;

pub use access_log::{AccessLog, UserSlot};
pub use log_writer::LogWriter;
pub use logging::{LogSink, Logging, init_logging};
pub use request_id::RequestId;
