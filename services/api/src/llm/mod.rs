//! The LLM call path's rules: the endpoints and what differs between them, which request fields
//! may reach an upstream, how usage is read from streams, and how an upstream's error answer
//! becomes ours.

pub mod endpoints;
pub mod families;
pub mod request_fields;
pub mod sse;
pub mod upstream_errors;
