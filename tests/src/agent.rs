//! GPU-agent stand-ins on loopback ports (hardware is the other thing the standards allow a
//! double for). Each answers `GET /v1/gpus` in the agent's exact shape, with a behaviour the test
//! switches at run time: healthy at a given utilization, failing with 500, hanging past any
//! timeout, or gone (its listener closed, so connections are refused). It notes the
//! `Authorization` header of every request it receives.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::json;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    Healthy(f64),
    Failing,
    Hanging,
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    /// The `Authorization` header of each request received (None: there was none).
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
}

pub struct Agent {
    pub addr: SocketAddr,
    shared: Shared,
    server: Option<JoinHandle<()>>,
}

impl Agent {
    pub async fn start(behaviour: Behaviour) -> Self {
        let shared = Shared { behaviour: Arc::new(Mutex::new(behaviour)), authorizations: Arc::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Some(serve(listener, shared.clone()));
        Self { addr, shared, server }
    }

    /// The `Authorization` header of every request received so far, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.authorizations.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Closes the listener: connections are refused from now on.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(serve(listener, self.shared.clone()));
    }
}

fn serve(listener: tokio::net::TcpListener, shared: Shared) -> JoinHandle<()> {
    let app = Router::new().route("/v1/gpus", get(gpus)).with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn gpus(State(shared): State<Shared>, headers: HeaderMap) -> axum::response::Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    shared.authorizations.lock().unwrap().push(authorization);
    let current = *shared.behaviour.lock().unwrap();
    match current {
        Behaviour::Healthy(util) => Json(json!({
            "node_name": "stand-in",
            "gpus": [
                {"index": 0, "uuid": "GPU-0", "name": "Stand-in GPU", "utilization_gpu_pct": util,
                 "memory_used_bytes": 1, "memory_total_bytes": 2, "temperature_c": 40, "power_w": 100.5},
                {"index": 1, "uuid": "GPU-1", "name": "Stand-in GPU", "utilization_gpu_pct": util,
                 "memory_used_bytes": 1, "memory_total_bytes": 2, "temperature_c": null, "power_w": null}
            ]
        }))
        .into_response(),
        Behaviour::Failing => (StatusCode::INTERNAL_SERVER_ERROR, "nvml exploded").into_response(),
        Behaviour::Hanging => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}
