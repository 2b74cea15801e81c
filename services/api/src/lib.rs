//! PrivateRouter API: an OpenAI-compatible LLM gateway with a public listener and a separate
//! internal listener for Prometheus metrics.

pub mod accounts;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod fleet;
pub mod gpu;
pub mod llm;
pub mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod users;

pub use config::Config;
pub use startup::Application;
