//! Integration tests of the GPU agent, built as one binary: the HTTP layer over a real socket
//! (port 0) with a fixed reader instead of NVML, the real binary over a stand-in NVML library,
//! and its start-up without NVML.

mod fake_nvml;
mod helpers;
mod http;
mod startup;
