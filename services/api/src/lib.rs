//! PrivateRouter API: an OpenAI-compatible LLM gateway with a public listener and a separate
//! internal listener for Prometheus metrics. One folder per domain (`accounts`, `billing`,
//! `conversations`, `gpu`, `llm`), each owning its router, its SQL and a narrow state;
//! `http` merges the routers and `state::AppState` composes the domains' states.

pub mod accounts;
pub mod billing;
pub mod cli;
pub mod config;
pub mod conversations;
pub mod db;
pub mod gpu;
pub mod http;
pub mod llm;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
