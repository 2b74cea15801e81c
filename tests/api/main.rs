//! Integration tests of the API service: real Postgres (local image via testcontainers), the real
//! app on ephemeral loopback ports, real HTTP. One binary, one module per concern.

mod access_log;
mod billing;
mod conversations;
mod crash;
mod endpoints;
mod errors;
mod gateway;
mod gpu_nodes;
mod holds;
mod key_limits;
mod keys;
mod listeners;
mod metrics;
mod rate_limits;
mod readiness;
mod redirects;
mod request_id;
mod sdk;
mod shutdown;
