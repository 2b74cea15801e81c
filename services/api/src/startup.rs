//! Bind first, then serve: `Application::build` binds both listeners (so tests can use port 0 and
//! read the real addresses), `run_until` serves them and drains both on shutdown.

use std::{future::Future, net::SocketAddr};

use anyhow::Context;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::Config,
    db, http,
    state::AppState,
    telemetry::{AccessLog, LogWriter, metrics::install_recorder, metrics_bind::metrics_bind_addr},
};

pub struct Application {
    public: TcpListener,
    internal: TcpListener,
    public_router: Router,
    internal_router: Router,
    handle: PrometheusHandle,
    state: AppState,
}

impl Application {
    /// `log_writer` is the shared non-blocking writer from [`crate::telemetry::init_logging`].
    pub async fn build(config: Config, log_writer: LogWriter) -> anyhow::Result<Self> {
        let handle = install_recorder();
        let metrics_addr = metrics_bind_addr(config.metrics_addr, config.metrics_interface_net.as_ref())?;
        if config.metrics_token().is_none() && !metrics_addr.ip().is_loopback() {
            tracing::warn!(addr = %metrics_addr, "PR_METRICS_TOKEN is not set and the metrics listener is not on loopback");
        }
        let db = db::connect(&config).await?;
        let public = TcpListener::bind(config.public_addr)
            .await
            .with_context(|| format!("binding the public listener on {}", config.public_addr))?;
        let internal = TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("binding the metrics listener on {metrics_addr}"))?;
        let catalog = match &config.models_file {
            Some(path) => crate::llm::catalog::Catalog::load(path)?,
            None => crate::llm::catalog::Catalog::default(),
        };
        tracing::info!(models = catalog.models().len(), "model catalog loaded");
        // Each model's zero series carry the first endpoint it serves (one that can occur).
        let models: Vec<(&'static str, &'static str)> =
            catalog.models().iter().map(|m| (m.name, m.endpoints[0].as_str())).collect();
        crate::telemetry::metrics::zero_series(&models);
        let billing = crate::billing::Billing::start(db.clone(), config.billing()).await?;
        let state = AppState::new(config, db, catalog, billing)?;
        let internal_router = http::internal::router(
            handle.clone(),
            state.config.metrics_token().map(str::to_owned),
            log_writer.clone(),
            state.fleet.clone(),
        );
        let public_router = http::public_router(state.clone(), AccessLog::new(log_writer));
        Ok(Self { public, internal, public_router, internal_router, handle, state })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().expect("bound listener has an address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.internal.local_addr().expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves both listeners until `shutdown` resolves, then stops accepting, marks the app not
    /// ready and waits up to `PR_SHUTDOWN_GRACE_SECS` for in-flight requests on both.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { public, internal, public_router, internal_router, handle, state } = self;
        let grace = state.config.shutdown_grace();
        tracing::info!(public = %public.local_addr()?, metrics = %internal.local_addr()?, "listening");

        let upkeep = tokio::spawn(crate::telemetry::metrics::run_upkeep(handle.clone()));
        let poller = tokio::spawn(crate::gpu::fleet::run_poller(
            state.fleet.clone(),
            state.db.clone(),
            state.http.clone(),
            std::time::Duration::from_secs(state.config.gpu_poll_interval_secs.max(1)),
            std::time::Duration::from_millis(state.config.gpu_poll_timeout_ms.max(1)),
        ));
        let mut background = vec![tokio::spawn(state.limiter.clone().maintain())];
        if let Some(link) = &state.redis {
            background.push(tokio::spawn(crate::accounts::revocation::listen(link.clone(), state.keys.clone())));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut public_task = tokio::spawn(
            axum::serve(public, public_router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        );
        let mut internal_task = tokio::spawn(
            axum::serve(internal, internal_router.into_make_service())
                .with_graceful_shutdown(stopped(stop_rx))
                .into_future(),
        );

        tokio::select! {
            () = shutdown => tracing::info!(grace_secs = grace.as_secs(), "shutdown requested; draining in-flight requests"),
            result = &mut public_task => {
                upkeep.abort();
                poller.abort();
                background.iter().for_each(|t| t.abort());
                return result.context("public listener task")?.context("public listener failed");
            }
            result = &mut internal_task => {
                upkeep.abort();
                poller.abort();
                background.iter().for_each(|t| t.abort());
                return result.context("metrics listener task")?.context("metrics listener failed");
            }
        }
        state.begin_shutdown();
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        let drained = tokio::time::timeout_at(deadline, async {
            let (a, b) = tokio::join!(public_task, internal_task);
            a.ok();
            b.ok();
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period elapsed with requests still in flight; exiting anyway");
        }
        // Calls outlive their requests (a client that left mid-stream): let them finish and
        // settle within the same grace, then write their usage and return the leases.
        state.billing.shutdown(deadline).await;
        upkeep.abort();
        poller.abort();
        background.iter().for_each(|t| t.abort());
        state.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

pub use privaterouter_common::shutdown_signal;
