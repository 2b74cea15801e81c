//! Runtime configuration: one clap struct, every field also readable from the environment.
//! `services/gpu-agent/README.md` and the root `.env.example` document each variable.

use std::{net::SocketAddr, path::Path};

use clap::Parser;

pub use privaterouter_common::Secret;

#[derive(Parser, Debug, Clone)]
pub struct Config {
    /// Listen address of the agent's HTTP server (`GET /v1/gpus`, `GET /healthz`).
    #[arg(long, env = "PR_AGENT_ADDR", default_value = "0.0.0.0:9400")]
    pub addr: SocketAddr,

    /// When set (non-empty), `GET /v1/gpus` requires `Authorization: Bearer <token>`.
    #[arg(long, env = "PR_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,

    /// Name this node reports in `/v1/gpus`. Default: the host name.
    #[arg(long, env = "PR_AGENT_NODE_NAME")]
    pub node_name: Option<String>,

    /// NVML library to load. Default: `libnvidia-ml.so.1` from the system library path.
    // A `String`, not a `PathBuf`: clap rejects an empty path, and `PR_AGENT_NVML_LIB=` (as in
    // `.env.example`) must mean "the default".
    #[arg(long, env = "PR_AGENT_NVML_LIB")]
    pub nvml_lib: Option<String>,

    /// Log filter (tracing `EnvFilter` syntax), for example `info` or `debug`.
    #[arg(long, env = "PR_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The token, treating an empty variable as unset.
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref().filter(|t| !t.expose().is_empty())
    }

    /// The NVML library path, treating an empty variable as unset.
    pub fn nvml_lib(&self) -> Option<&Path> {
        self.nvml_lib.as_deref().filter(|p| !p.trim().is_empty()).map(Path::new)
    }

    /// `PR_AGENT_NODE_NAME` when non-empty, else the host name.
    pub fn node_name(&self) -> Result<String, String> {
        if let Some(name) = self.node_name.as_deref().map(str::trim)
            && !name.is_empty()
        {
            return Ok(name.to_owned());
        }
        let host = gethostname::gethostname().to_string_lossy().trim().to_owned();
        if host.is_empty() {
            return Err("the host name is empty; set PR_AGENT_NODE_NAME".into());
        }
        Ok(host)
    }

    /// A configuration for tests: an ephemeral loopback port, no token, a fixed node name.
    pub fn for_tests() -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("valid address"),
            token: None,
            node_name: Some("test-node".into()),
            nvml_lib: None,
            log: "info".into(),
        }
    }
}
