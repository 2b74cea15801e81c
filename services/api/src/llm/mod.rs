//! The LLM call engine and its rules: one call's life (`call`), its non-streaming and streaming
//! paths (`answer`, `stream`), the endpoints and what differs between them, which request fields
//! may reach an upstream, the model catalog, how usage is read from streams, and how an upstream's
//! error answer becomes ours. `routes` is the LLM router; the engine reads only [`LlmState`].

mod answer;
pub mod call;
pub mod catalog;
pub mod endpoints;
pub mod families;
pub mod request_fields;
pub mod routes;
pub mod sse;
pub mod state;
mod stream;
#[cfg(test)]
mod tests;
pub mod upstream_errors;

pub use answer::complete;
pub use call::{CallResult, serve};
pub use endpoints::Endpoint;
pub use state::{CreditHold, Ledger, LlmState, UpstreamTimeouts};
pub use stream::require_stream_usage;
