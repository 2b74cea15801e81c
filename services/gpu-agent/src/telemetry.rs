//! Application logs as JSON lines, `{"ts", "level", "logger", "msg", ...fields}`, the same shape
//! as the API's. The agent logs a handful of lines (start, stop, failures and recoveries of GPU
//! reads, rejected tokens), so lines are written straight to the sink under a lock.

use std::{
    io::Write,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

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

struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut map = Map::with_capacity(8);
        map.insert("ts".into(), Value::from((ts * 1000.0).round() / 1000.0));
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
        let name = match field.name() {
            "message" => "msg",
            other => other,
        };
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
