//! GPU-agent stand-ins on loopback ports (hardware is the other thing the standards allow a
//! double for). Each answers `GET /v1/gpus` in the agent's exact shape, with a behaviour the test
//! switches at run time: healthy at a given utilization, failing with 500, hanging past any
//! timeout, or gone (its listener closed, so connections are refused).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    Healthy(f64),
    Failing,
    Hanging,
}

pub struct Agent {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    server: Option<JoinHandle<()>>,
}

impl Agent {
    pub async fn start(behaviour: Behaviour) -> Self {
        let behaviour = Arc::new(Mutex::new(behaviour));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Some(serve(listener, behaviour.clone()));
        Self { addr, behaviour, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
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
        self.server = Some(serve(listener, self.behaviour.clone()));
    }
}

fn serve(listener: tokio::net::TcpListener, behaviour: Arc<Mutex<Behaviour>>) -> JoinHandle<()> {
    let app = Router::new().route("/v1/gpus", get(gpus)).with_state(behaviour);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn gpus(State(behaviour): State<Arc<Mutex<Behaviour>>>) -> axum::response::Response {
    let current = *behaviour.lock().unwrap();
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
