//! The LLM call engine and its rules: the endpoints and what differs between them, which request
//! fields may reach an upstream, the model catalog, how usage is read from streams, and how an
//! upstream's error answer becomes ours. `routes` is the LLM router; everything else is the engine.

pub mod call;
pub mod catalog;
pub mod endpoints;
pub mod families;
pub mod request_fields;
pub mod routes;
pub mod sse;
pub mod upstream_errors;

pub use call::{CallResult, UpstreamTimeouts, complete, serve};
pub use endpoints::Endpoint;
