//! The access log: one JSON line per public request with exactly the fields `ts`, `request_id`,
//! `method`, `route`, `raw_path`, `status`, `latency_ms`, `user_id`, `ip`, `user_agent`, `bytes`.
//! Written straight to the shared writer, not through `tracing`: no `level`, `logger` or `msg`
//! field, which is what tells these lines from application lines (the spec's "pr.access logger"
//! names this stream, not a field).

use std::{
    cell::RefCell,
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use serde::Serialize;

use super::log_writer::LogWriter;

/// Longest `raw_path` / `user_agent` kept in a log line; longer values are cut (on a char
/// boundary) so one request cannot write megabytes of log.
const MAX_FIELD_CHARS: usize = 1024;

#[derive(Clone)]
pub struct AccessLog {
    writer: LogWriter,
}

/// Filled by the authentication extractor so the access log can name the user of a request.
#[derive(Clone, Default, Debug)]
pub struct UserSlot(Arc<OnceLock<String>>);

impl UserSlot {
    pub fn set(&self, user_id: impl Into<String>) {
        let _ = self.0.set(user_id.into());
    }
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

#[derive(Serialize)]
pub struct AccessLine<'a> {
    pub ts: f64,
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub raw_path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub user_id: Option<&'a str>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    pub bytes: u64,
}

impl AccessLog {
    pub fn new(writer: LogWriter) -> Self {
        Self { writer }
    }

    pub fn write(&self, line: &AccessLine<'_>) {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            if serde_json::to_writer(&mut *buf, line).is_ok() {
                buf.push(b'\n');
                self.writer.write_line(buf);
            }
        });
    }
}

pub fn truncate(s: &str) -> &str {
    if s.len() <= MAX_FIELD_CHARS {
        return s;
    }
    let mut end = MAX_FIELD_CHARS;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
