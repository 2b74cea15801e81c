//! A redirecting server and a recorder, for tests that the API never follows a redirect: the
//! redirector answers every request with a redirect to the recorder, and the recorder notes
//! every request it receives (method, path, `Authorization` header).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::IntoResponse,
};

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Answers every request with `status` (a 3xx) and `Location: <location>`.
pub async fn redirector(status: u16, location: String) -> SocketAddr {
    let status = StatusCode::from_u16(status).unwrap();
    serve(Router::new().fallback(move || async move { (status, [(header::LOCATION, location)]) })).await
}

/// One request a [`Recorder`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// Notes every request and answers 404.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new().fallback(record).with_state(received.clone());
        Self { addr: serve(router).await, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(State(received): State<Arc<Mutex<Vec<Received>>>>, request: Request) -> impl IntoResponse {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    received.lock().unwrap().push(Received {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        authorization,
    });
    StatusCode::NOT_FOUND
}
