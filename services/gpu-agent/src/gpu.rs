//! What the agent knows about GPUs: the reading types (the `/v1/gpus` wire format), the
//! [`GpuReader`] trait that hides NVML from the HTTP layer, and [`GpuSource`], which runs the
//! blocking reader off the async runtime, one call at a time, and reuses a reading for a short
//! while so that a burst of requests does not hammer the driver.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::Mutex, task::JoinHandle};

/// One GPU as NVML reports it. `None` (JSON `null`) means the GPU does not support that
/// reading (NVML answered `NotSupported`); the agent never fills in a value of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML enumeration index (PCI bus order, as `nvidia-smi` numbers GPUs).
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// Percent of the last sample period (1/6 s to 1 s, by product) during which a kernel ran.
    pub utilization_gpu_pct: Option<u32>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub temperature_c: Option<u32>,
    /// Board power draw in watts, milliwatt precision.
    pub power_w: Option<f64>,
}

/// The `GET /v1/gpus` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpusResponse {
    pub node_name: String,
    pub gpus: Vec<Gpu>,
}

/// Why no reading is available. The message is shown to the agent's clients (the API's poller,
/// an operator) and logged; it names GPUs by index only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("NVML reports no GPUs on this node")]
    NoGpus,
    #[error("{0}")]
    Nvml(String),
    #[error("NVML did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the GPU reader failed unexpectedly")]
    Panicked,
}

impl ReadError {
    /// Stable machine-readable code for JSON bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoGpus => "no_gpus",
            Self::Nvml(_) => "nvml_error",
            Self::Timeout(_) => "nvml_timeout",
            Self::Panicked => "internal_error",
        }
    }
}

/// Reads every GPU of the node. Implementations may block (NVML calls do): [`GpuSource`] only
/// calls `read` on a blocking thread. A reading is all GPUs or an error, never partial.
pub trait GpuReader: Send + Sync + 'static {
    fn read(&self) -> Result<Vec<Gpu>, ReadError>;
}

/// How long readings are reused and how long one read may take.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// A reading (or a failure) younger than this is served again instead of asking NVML.
    pub max_age: Duration,
    /// A read that takes longer is answered as [`ReadError::Timeout`]; the call itself keeps
    /// running on its thread and the next read waits for it rather than starting another.
    pub read_timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(1), read_timeout: Duration::from_secs(5) }
    }
}

type Reading = Result<Arc<[Gpu]>, ReadError>;

/// The cached, non-blocking front of a [`GpuReader`]. Cheap to clone.
#[derive(Clone)]
pub struct GpuSource {
    inner: Arc<Inner>,
}

struct Inner {
    reader: Arc<dyn GpuReader>,
    settings: CacheSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last: Option<(Instant, Reading)>,
    /// A read that timed out and is still running on its blocking thread.
    pending: Option<JoinHandle<Result<Vec<Gpu>, ReadError>>>,
}

impl GpuSource {
    pub fn new(reader: Arc<dyn GpuReader>, settings: CacheSettings) -> Self {
        Self { inner: Arc::new(Inner { reader, settings, state: Mutex::new(State::default()) }) }
    }

    /// The current reading: the cached one while it is younger than `max_age`, else a fresh
    /// one. Concurrent callers queue on one lock, so a burst causes at most one NVML read.
    /// A zero-GPU reading is reported as [`ReadError::NoGpus`].
    pub async fn read(&self) -> Reading {
        let inner = &*self.inner;
        let mut state = inner.state.lock().await;
        if let Some((at, reading)) = &state.last
            && at.elapsed() < inner.settings.max_age
        {
            return reading.clone();
        }
        // A read still stuck from an earlier timeout is waited for instead of starting a second
        // blocking call; one that has finished since then holds old figures and is dropped.
        let mut handle = match state.pending.take() {
            Some(stuck) if !stuck.is_finished() => stuck,
            _ => {
                let reader = Arc::clone(&inner.reader);
                tokio::task::spawn_blocking(move || reader.read())
            }
        };
        let reading = match tokio::time::timeout(inner.settings.read_timeout, &mut handle).await {
            Ok(Ok(Ok(gpus))) if gpus.is_empty() => Err(ReadError::NoGpus),
            Ok(Ok(Ok(gpus))) => Ok(Arc::from(gpus)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(join_error)) => {
                tracing::error!(error = %join_error, "GPU reader task failed");
                Err(ReadError::Panicked)
            }
            Err(_elapsed) => {
                state.pending = Some(handle);
                Err(ReadError::Timeout(inner.settings.read_timeout))
            }
        };
        log_transition(state.last.as_ref().map(|(_, r)| r), &reading);
        state.last = Some((Instant::now(), reading.clone()));
        reading
    }
}

/// Logs when reads start failing, change failure, or recover: not on every read.
fn log_transition(previous: Option<&Reading>, current: &Reading) {
    match (previous, current) {
        (Some(Err(before)), Err(now)) if before == now => {}
        (_, Err(e)) => tracing::warn!(code = e.code(), reason = %e, "GPU reading failed"),
        (Some(Err(_)), Ok(gpus)) => tracing::info!(gpus = gpus.len(), "GPU readings recovered"),
        (_, Ok(_)) => {}
    }
}
