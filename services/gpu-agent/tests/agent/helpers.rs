//! A [`GpuReader`] with fixed, switchable answers, and the real application served on an
//! ephemeral loopback port.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use privaterouter_gpu_agent::{
    Application, CacheSettings, Config, Gpu, GpuReader, GpuSource, ReadError, config::Secret,
};
use tokio::{sync::oneshot, task::JoinHandle};

pub struct FixedReader {
    reading: Mutex<Result<Vec<Gpu>, ReadError>>,
    delay: Mutex<Duration>,
    calls: AtomicUsize,
}

impl FixedReader {
    pub fn new(reading: Result<Vec<Gpu>, ReadError>) -> Arc<Self> {
        Arc::new(Self { reading: Mutex::new(reading), delay: Mutex::new(Duration::ZERO), calls: AtomicUsize::new(0) })
    }
    pub fn set(&self, reading: Result<Vec<Gpu>, ReadError>) {
        *self.reading.lock().unwrap() = reading;
    }
    /// Later calls block this long (as a slow or stuck driver would).
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl GpuReader for FixedReader {
    fn read(&self) -> Result<Vec<Gpu>, ReadError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        std::thread::sleep(delay);
        self.reading.lock().unwrap().clone()
    }
}

/// Two GPUs: one reporting everything, one whose board supports neither temperature, power nor
/// utilization readings.
pub fn sample_gpus() -> Vec<Gpu> {
    vec![
        Gpu {
            index: 0,
            uuid: "GPU-0b5c7f6e-1d2a-4c3b-9e8f-000000000001".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            utilization_gpu_pct: Some(87),
            memory_used_bytes: 61_203_283_968,
            memory_total_bytes: 85_520_809_984,
            temperature_c: Some(64),
            power_w: Some(512.345),
        },
        Gpu {
            index: 1,
            uuid: "GPU-0b5c7f6e-1d2a-4c3b-9e8f-000000000002".into(),
            name: "NVIDIA A100-SXM4-40GB".into(),
            utilization_gpu_pct: None,
            memory_used_bytes: 0,
            memory_total_bytes: 42_949_672_960,
            temperature_c: None,
            power_w: None,
        },
    ]
}

pub const FAST: CacheSettings =
    CacheSettings { max_age: Duration::from_millis(100), read_timeout: Duration::from_secs(5) };

pub struct TestAgent {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestAgent {
    pub async fn spawn(reader: Arc<FixedReader>, token: Option<&str>, settings: CacheSettings) -> Self {
        let config = Config { token: token.map(Secret::new), ..Config::for_tests() };
        let app = Application::build(config, GpuSource::new(reader, settings)).await.expect("agent starts");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap();
        Self { addr, client, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_with_token(&self, path: &str, authorization: &str) -> reqwest::Response {
        self.client.get(self.url(path)).header("authorization", authorization).send().await.unwrap()
    }

    /// Triggers the graceful shutdown and waits for `run_until` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

/// Status and parsed JSON body (asserting a JSON content type).
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(content_type, "application/json", "status {status}");
    let body = response.json().await.unwrap();
    (status, body)
}
