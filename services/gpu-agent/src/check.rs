//! `privaterouter-gpu-agent --check`: reads NVML once in the foreground and prints what it
//! reports (driver, each GPU's figures, how long a read takes, and the exact `/v1/gpus` body),
//! so that someone on a GPU node can verify the agent and record real figures.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    gpu::{Gpu, GpuReader, GpusResponse, ReadError},
    nvml::{DriverInfo, NvmlReader},
};

/// Reads timed after the first one (which may include device set-up in the driver).
const TIMED_READS: usize = 5;

/// Runs the check; `Err` is one line for stderr.
pub fn run(config: &Config) -> Result<String, String> {
    let node_name = config.node_name()?;
    let reader = NvmlReader::open(config.nvml_lib())?;
    let info = reader.driver_info();
    let (first, first_reading) = timed(|| reader.read());
    let mut durations = Vec::with_capacity(TIMED_READS);
    let mut reading = first_reading;
    for _ in 0..TIMED_READS {
        let (took, r) = timed(|| reader.read());
        durations.push(took);
        reading = r;
    }
    let gpus = reading.map_err(|e| format!("reading the GPUs through NVML failed: {e}"))?;
    Ok(report(&node_name, &info, &gpus, first, &mut durations))
}

fn timed(f: impl FnOnce() -> Result<Vec<Gpu>, ReadError>) -> (Duration, Result<Vec<Gpu>, ReadError>) {
    let start = Instant::now();
    let result = f();
    (start.elapsed(), result)
}

fn report(node_name: &str, info: &DriverInfo, gpus: &[Gpu], first: Duration, durations: &mut [Duration]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node: {node_name}");
    let _ = writeln!(
        out,
        "driver {}, NVML {}, CUDA (driver) {}, {} GPU(s)",
        info.driver_version, info.nvml_version, info.cuda_version, info.gpu_count
    );
    for gpu in gpus {
        let _ = writeln!(out, "GPU {}: {} ({})", gpu.index, gpu.name, gpu.uuid);
        let _ = writeln!(
            out,
            "  utilization {}, memory {} / {} MiB, temperature {}, power {}",
            or_unsupported(gpu.utilization_gpu_pct.map(|v| format!("{v} %"))),
            gpu.memory_used_bytes / (1024 * 1024),
            gpu.memory_total_bytes / (1024 * 1024),
            or_unsupported(gpu.temperature_c.map(|v| format!("{v} °C"))),
            or_unsupported(gpu.power_w.map(|v| format!("{v:.3} W"))),
        );
    }
    durations.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let _ = writeln!(
        out,
        "read of all GPUs: first {:.3} ms; next {}: min {:.3} ms, median {:.3} ms, max {:.3} ms",
        ms(first),
        durations.len(),
        ms(durations[0]),
        ms(durations[durations.len() / 2]),
        ms(durations[durations.len() - 1]),
    );
    let body = GpusResponse { node_name: node_name.to_owned(), gpus: gpus.to_vec() };
    let _ = writeln!(out, "GET /v1/gpus would answer:");
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&body).expect("serialisable"));
    out
}

fn or_unsupported(value: Option<String>) -> String {
    value.unwrap_or_else(|| "not supported (null)".into())
}
