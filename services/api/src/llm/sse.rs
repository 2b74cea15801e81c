//! Reading usage out of an upstream's server-sent events, per endpoint: OpenAI chat and legacy
//! completions put it in a final chunk (asked for with `stream_options.include_usage`) before
//! `data: [DONE]`; the Responses API in its `response.completed` event (or `response.incomplete`
//! / `response.failed`); Anthropic's Messages API splits it between `message_start` (input and
//! cache counts) and `message_delta` (the final output count).

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::Value;

use super::endpoints::{Endpoint, anthropic_usage};
use crate::{
    billing::fmt_usd,
    llm::catalog::{Model, Usage},
};

/// What one stream has shown so far.
#[derive(Debug, Default)]
pub struct StreamMeter {
    /// The usage the upstream reported (complete), if it did.
    pub usage: Option<Usage>,
    /// Anthropic's `message_start` counts, until `message_delta` completes them.
    started: Option<Usage>,
    /// Characters of output text, for an estimate when no usage comes.
    pub output_chars: usize,
    /// Time from sending to the first output token.
    pub first_token: Option<Duration>,
}

impl StreamMeter {
    /// Records what one whole event says; returns the event to forward (the chat-style usage
    /// chunk gets `usage.cost_usd`, every other event passes unchanged) and whether it ends the
    /// stream.
    pub fn inspect(&mut self, endpoint: Endpoint, event: &Bytes, model: &Model, sent: Instant) -> (Bytes, bool) {
        let Some(data) = std::str::from_utf8(event).ok().and_then(event_data) else {
            return (event.clone(), false);
        };
        if data.trim_end() == "[DONE]" {
            return (event.clone(), true);
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(&data) else {
            return (event.clone(), false);
        };
        let kind = chunk.get("type").and_then(Value::as_str).unwrap_or("");
        let text = match endpoint {
            Endpoint::ChatCompletions | Endpoint::ConversationMessage => chunk.pointer("/choices/0/delta/content"),
            Endpoint::Completions => chunk.pointer("/choices/0/text"),
            Endpoint::Responses if kind == "response.output_text.delta" => chunk.get("delta"),
            Endpoint::Messages if kind == "content_block_delta" => {
                let delta = chunk.get("delta");
                ["text", "thinking", "partial_json"].iter().find_map(|k| delta.and_then(|d| d.get(*k)))
            }
            _ => None,
        };
        if let Some(text) = text.and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.first_token.get_or_insert_with(|| sent.elapsed());
            self.output_chars += text.len();
        }
        match endpoint {
            Endpoint::Responses => {
                if matches!(kind, "response.completed" | "response.incomplete" | "response.failed") {
                    let u = chunk.pointer("/response/usage");
                    let count = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64);
                    if let (Some(i), Some(o)) = (count("input_tokens"), count("output_tokens")) {
                        self.usage = Some(Usage::new(i, o));
                    }
                    return (event.clone(), true);
                }
            }
            Endpoint::Messages => match kind {
                "message_start" => self.started = chunk.pointer("/message/usage").and_then(anthropic_usage),
                "message_delta" => {
                    // The final output count; newer upstreams repeat the input counts here too.
                    let delta = chunk.get("usage");
                    let count = |k: &str| delta.and_then(|u| u.get(k)).and_then(Value::as_u64);
                    if let (Some(start), Some(output)) = (self.started, count("output_tokens")) {
                        self.usage = Some(Usage {
                            input: count("input_tokens").unwrap_or(start.input),
                            output,
                            cache_read: count("cache_read_input_tokens").unwrap_or(start.cache_read),
                            cache_creation: count("cache_creation_input_tokens").unwrap_or(start.cache_creation),
                        });
                    }
                }
                "message_stop" => return (event.clone(), true),
                _ => {}
            },
            _ => {
                let Some(usage) = endpoint.usage(&chunk) else { return (event.clone(), false) };
                self.usage = Some(usage);
                if let Some(u) = chunk.get_mut("usage").and_then(Value::as_object_mut) {
                    u.insert("cost_usd".into(), Value::String(fmt_usd(model.usage_cost(&usage))));
                }
                return (Bytes::from(format!("data: {chunk}\n\n")), false);
            }
        }
        (event.clone(), false)
    }

    /// An Anthropic stream cut after `message_start`: its input counts are known.
    pub fn partial_input(&self) -> Option<Usage> {
        self.started
    }
}

/// Position and length of the first event terminator (`\n\n` or `\r\n\r\n`).
pub fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The data of an SSE event: its `data:` lines (one optional space after the colon removed),
/// joined by newlines as the SSE spec says; `None` when it has none.
fn event_data(event: &str) -> Option<Cow<'_, str>> {
    let mut lines = event.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d));
    let first = lines.next()?;
    let Some(second) = lines.next() else { return Some(Cow::Borrowed(first)) };
    Some(Cow::Owned([first, second].into_iter().chain(lines).collect::<Vec<_>>().join("\n")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn model() -> std::sync::Arc<Model> {
        let toml = "[[models]]\nname = \"c\"\nupstream = \"http://u/v1\"\napi = \"anthropic\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\ncache_read_usd_per_mtok = 1\ncache_creation_usd_per_mtok = 1\n";
        crate::llm::catalog::Catalog::parse(toml, |_| None).unwrap().get("c").unwrap().clone()
    }

    fn feed(endpoint: Endpoint, events: &[Value]) -> (StreamMeter, bool) {
        let (model, mut meter, mut done) = (model(), StreamMeter::default(), false);
        for e in events {
            let event = Bytes::from(format!("event: x\ndata: {e}\n\n"));
            done = meter.inspect(endpoint, &event, &model, Instant::now()).1;
        }
        (meter, done)
    }

    #[test]
    fn finds_event_boundaries() {
        assert_eq!(find_event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: a\n"), None);
    }

    #[test]
    fn only_a_whole_data_line_ends_the_stream() {
        let (model, mut meter) = (model(), StreamMeter::default());
        let mut done =
            |e: &[u8]| meter.inspect(Endpoint::ChatCompletions, &Bytes::copy_from_slice(e), &model, Instant::now()).1;
        assert!(done(b"data: [DONE]\n\n"));
        assert!(done(b"data:[DONE]\r\n\r\n"));
        assert!(done(b": keep-alive\ndata: [DONE]\n\n"));
        assert!(!done(br#"data: {"choices":[{"delta":{"content":"say data: [DONE]"}}]}"#));
        assert!(!done(b"data: x\ndata: [DONE]\n\n"), "the event's data is two lines");
        assert!(!done(b"data: [DONE] and more\n\n"));
    }

    #[test]
    fn anthropic_usage_comes_from_start_and_delta() {
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1,
            "cache_read_input_tokens": 40, "cache_creation_input_tokens": 9}}});
        let text = json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}});
        let delta = json!({"type": "message_delta", "usage": {"output_tokens": 17}});
        let (meter, done) =
            feed(Endpoint::Messages, &[start.clone(), text.clone(), delta, json!({"type": "message_stop"})]);
        assert!(done);
        assert_eq!(meter.usage, Some(Usage { input: 5, output: 17, cache_read: 40, cache_creation: 9 }));
        assert_eq!(meter.output_chars, 2);
        assert!(meter.first_token.is_some());
        let (cut, done) = feed(Endpoint::Messages, &[start, text]);
        assert!(!done && cut.usage.is_none(), "no message_delta: no complete usage");
        assert_eq!(cut.partial_input().map(|u| u.cache_read), Some(40));
    }

    #[test]
    fn responses_usage_is_in_the_completed_event() {
        let delta = json!({"type": "response.output_text.delta", "delta": "Hello"});
        let completed =
            json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 8}}});
        let (meter, done) = feed(Endpoint::Responses, &[delta, completed]);
        assert!(done);
        assert_eq!(meter.usage, Some(Usage::new(3, 8)));
        assert_eq!(meter.output_chars, 5);
    }
}
