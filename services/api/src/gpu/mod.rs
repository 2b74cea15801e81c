//! GPU nodes: the registry (`node_store` holds every `gpu_nodes` query, `registry` the admin
//! router), the health poller and the choice of a node for a pool (`fleet`), and what the API
//! may send to a node (`node_policy`).

pub mod fleet;
pub mod node_policy;
pub mod node_store;
pub mod registry;

use std::{sync::Arc, time::Duration};

use axum::extract::FromRef;
use sqlx::PgPool;

use self::fleet::Fleet;
use crate::state::AppState;

/// What the GPU registry router uses: the registry table, the fleet it updates, and the client
/// and time limit to poll a node right after it is registered or enabled.
#[derive(Clone)]
pub struct GpuState {
    pub db: PgPool,
    pub fleet: Arc<Fleet>,
    pub http: reqwest::Client,
    /// `PR_GPU_POLL_TIMEOUT_MS`.
    pub poll_timeout: Duration,
}

impl FromRef<AppState> for GpuState {
    fn from_ref(app: &AppState) -> Self {
        Self {
            db: app.db.clone(),
            fleet: app.fleet.clone(),
            http: app.http.clone(),
            poll_timeout: Duration::from_millis(app.config.gpu_poll_timeout_ms.max(1)),
        }
    }
}
