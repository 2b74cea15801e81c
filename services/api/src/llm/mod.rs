//! The LLM call path's rules: which request fields may reach an upstream, and how an upstream's
//! error answer becomes ours.

pub mod request_fields;
pub mod upstream_errors;
