//! Application logs as JSON lines, `{"ts", "level", "logger", "msg", ...fields}`, the same shape
//! as the API's. The agent logs a handful of lines (start, stop, failures and recoveries of GPU
//! reads, rejected tokens), so lines are written straight to the sink under a lock.

use std::{io::Write, sync::Mutex};

use privaterouter_common::JsonLines;
use tracing_subscriber::EnvFilter;

/// Where log lines go: stdout in production, a buffer in tests.
pub type LogSink = Box<dyn Write + Send + 'static>;

/// Installs the global subscriber writing to `sink` (once per process; later calls are no-ops).
pub fn init_logging(filter: &str, sink: LogSink) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("invalid PR_LOG filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(JsonLines)
        .with_writer(Mutex::new(sink))
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
}
