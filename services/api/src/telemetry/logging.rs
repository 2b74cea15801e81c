//! Application logs as JSON lines: `{"ts", "level", "logger", "msg", ...fields}`. The access log
//! shares the same non-blocking writer (see `log_writer`), so lines never interleave and a slow
//! stdout never blocks a request; the writer is flushed when [`Logging`] is dropped.

use std::io::Write;

use serde_json::{Map, Value};

use super::log_writer::{LogGuard, LogWriter};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

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

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let mut map = Map::with_capacity(8);
        map.insert("ts".into(), Value::from((unix_now() * 1000.0).round() / 1000.0));
        map.insert("level".into(), Value::from(meta.level().as_str()));
        map.insert("logger".into(), Value::from(meta.target()));
        event.record(&mut Visitor(&mut map));
        let line = serde_json::to_string(&map).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = if field.name() == "message" { "msg" } else { field.name() };
        self.0.insert(name.to_owned(), value);
    }
}

impl tracing::field::Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}
