//! PrivateRouter GPU agent: a small daemon on each GPU node that reads NVML and serves the
//! figures over HTTP (`GET /v1/gpus`, `GET /healthz`) for the API's node poller.

pub mod check;
pub mod config;
pub mod gpu;
pub mod http;
pub mod nvml;
pub mod startup;
pub mod telemetry;

pub use config::Config;
pub use gpu::{CacheSettings, Gpu, GpuReader, GpuSource, GpusResponse, ReadError};
pub use startup::Application;
