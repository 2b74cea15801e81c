//! Bind first, then serve: `Application::build` binds the listener (tests use port 0 and read the
//! real address), `run_until` serves until the shutdown future resolves, then drains.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use tokio::{net::TcpListener, sync::watch};

use crate::{config::Config, gpu::GpuSource, http};

/// In-flight requests get this long to finish after SIGTERM/Ctrl-C. Requests are short (one
/// NVML read, itself bounded by the read timeout), so this is rarely reached.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn build(config: Config, gpus: GpuSource) -> anyhow::Result<Self> {
        let node_name = config.node_name().map_err(anyhow::Error::msg)?;
        let token = config.token().cloned().map(Arc::new);
        if token.is_none() && !config.addr.ip().is_loopback() {
            tracing::warn!(addr = %config.addr, "PR_AGENT_TOKEN is not set and the agent listens on a non-loopback address: anyone who can reach it can read the GPU figures");
        }
        let listener = TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
        tracing::info!(addr = %listener.local_addr()?, node_name = %node_name, token_required = token.is_some(), "listening");
        let router = http::router(http::AppState { node_name: node_name.into(), token, gpus });
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting and waits up to
    /// [`SHUTDOWN_GRACE`] for in-flight requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut server = tokio::spawn(
            axum::serve(self.listener, self.router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                })
                .into_future(),
        );
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested; draining in-flight requests"),
            result = &mut server => return result.context("listener task")?.context("listener failed"),
        }
        let _ = stop_tx.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
            tracing::warn!("shutdown grace period elapsed with requests still in flight");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The agent's runtime: a daemon that answers a poll every few seconds needs two workers, not
/// one per core of a large GPU server; NVML reads run on (few) blocking threads.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("gpu-agent")
        .enable_all()
        .build()
}

pub use privaterouter_common::shutdown_signal;
