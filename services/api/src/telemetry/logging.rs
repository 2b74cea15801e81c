//! Application logs as JSON lines `{"ts", "level", "logger", "msg", ...fields}` (`logger`: the
//! event's target). The access log shares their non-blocking writer but not this format (its
//! lines have no `logger`); a slow stdout never blocks a request. [`Logging`] flushes on drop.

use std::io::Write;

use super::log_writer::{LogGuard, LogWriter};
use privaterouter_common::JsonLines;
use tracing_subscriber::EnvFilter;

/// Where log lines go: stdout in production, a buffer in tests.
pub type LogSink = Box<dyn Write + Send + 'static>;

/// The shared writer and the guard that flushes it on drop.
pub struct Logging {
    pub writer: LogWriter,
    _guard: LogGuard,
}

/// Builds the writer over `sink` and installs the global subscriber (once per process; later
/// calls, as in tests, keep the first subscriber but still get their own writer).
pub fn init_logging(filter: &str, sink: LogSink) -> Logging {
    let (writer, guard) = LogWriter::new(sink);
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("invalid PR_LOG filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let subscriber =
        tracing_subscriber::fmt().with_env_filter(filter).event_format(JsonLines).with_writer(writer.clone()).finish();
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        install_panic_hook();
    }
    Logging { writer, _guard: guard }
}

/// Panics become one JSON log line (logger `pr.panic`) instead of free text on stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(target: "pr.panic", location = location.as_deref().unwrap_or("unknown"), "panic: {payload}");
    }));
}

pub(crate) use privaterouter_common::unix_now;
