//! The NVML implementation of [`GpuReader`], and the one-line explanations of why NVML could not
//! be started. Every call here blocks (it goes to the driver); callers run it off the runtime.

use std::{ffi::OsStr, path::Path};

use nvml_wrapper::{Nvml, enum_wrappers::device::TemperatureSensor, error::NvmlError};

use crate::gpu::{Gpu, GpuReader, ReadError};

/// The library NVML is loaded from unless `PR_AGENT_NVML_LIB` says otherwise.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

pub struct NvmlReader {
    nvml: Nvml,
}

/// Versions reported by the driver, logged at start and printed by `--check`.
#[derive(Debug, Clone)]
pub struct DriverInfo {
    pub driver_version: String,
    pub nvml_version: String,
    /// CUDA version the driver supports, as `12.4`.
    pub cuda_version: String,
    pub gpu_count: u32,
}

impl NvmlReader {
    /// Loads and initialises NVML and checks that it can count GPUs. The error is one line for
    /// the operator (see [`describe_init_error`]).
    pub fn open(lib: Option<&Path>) -> Result<Self, String> {
        let lib_name = lib.map_or(DEFAULT_LIB.into(), |p| p.display().to_string());
        let nvml = match lib {
            Some(path) => Nvml::builder().lib_path(OsStr::new(path)).init(),
            None => Nvml::init(),
        }
        .map_err(|e| describe_init_error(&lib_name, &e))?;
        nvml.device_count()
            .map_err(|e| format!("NVML is not available: NVML started but cannot count the GPUs: {e}"))?;
        Ok(Self { nvml })
    }

    pub fn driver_info(&self) -> DriverInfo {
        let cuda_version = self
            .nvml
            .sys_cuda_driver_version()
            .map_or_else(|e| format!("unknown ({e})"), |v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        DriverInfo {
            driver_version: self.nvml.sys_driver_version().unwrap_or_else(|e| format!("unknown ({e})")),
            nvml_version: self.nvml.sys_nvml_version().unwrap_or_else(|e| format!("unknown ({e})")),
            cuda_version,
            gpu_count: self.nvml.device_count().unwrap_or(0),
        }
    }

    fn read_device(&self, index: u32) -> Result<Gpu, ReadError> {
        let failed = |what: &'static str| {
            move |e: NvmlError| ReadError::Nvml(format!("GPU {index}: reading {what} failed: {e}"))
        };
        let device = self.nvml.device_by_index(index).map_err(failed("the device handle"))?;
        let uuid = device.uuid().map_err(failed("the UUID"))?;
        let name = device.name().map_err(failed("the name"))?;
        let memory = device.memory_info().map_err(failed("memory"))?;
        let utilization =
            unsupported_as_none(device.utilization_rates()).map_err(failed("utilization"))?.map(|u| u.gpu);
        let temperature =
            unsupported_as_none(device.temperature(TemperatureSensor::Gpu)).map_err(failed("temperature"))?;
        let power_mw = unsupported_as_none(device.power_usage()).map_err(failed("power"))?;
        Ok(Gpu {
            index,
            uuid,
            name,
            utilization_gpu_pct: utilization,
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            temperature_c: temperature,
            power_w: power_mw.map(|mw| f64::from(mw) / 1000.0),
        })
    }
}

impl GpuReader for NvmlReader {
    fn read(&self) -> Result<Vec<Gpu>, ReadError> {
        let count = self.nvml.device_count().map_err(|e| ReadError::Nvml(format!("counting GPUs failed: {e}")))?;
        (0..count).map(|i| self.read_device(i)).collect()
    }
}

/// A reading the GPU does not offer (`NotSupported`: power on some boards, utilization with MIG
/// enabled) becomes `None`; every other error fails the whole reading.
pub fn unsupported_as_none<T>(result: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One line saying why NVML could not be started and what to check.
pub fn describe_init_error(lib_name: &str, error: &NvmlError) -> String {
    let why = match error {
        NvmlError::LibloadingError(e) => format!(
            "{lib_name} could not be loaded (is the NVIDIA driver installed? in a container, run \
             with --gpus all): {e}"
        ),
        NvmlError::FailedToLoadSymbol(symbol) => format!(
            "{lib_name} was loaded but lacks a required function ({symbol}); is the NVIDIA \
             driver older than R510?"
        ),
        NvmlError::DriverNotLoaded => {
            "the NVIDIA kernel driver is not loaded (check `nvidia-smi` and `lsmod | grep nvidia`)".into()
        }
        NvmlError::NoPermission => {
            "no permission to talk to the NVIDIA driver (check access to /dev/nvidiactl and /dev/nvidia*)".into()
        }
        NvmlError::LibRmVersionMismatch => format!(
            "{lib_name} and the loaded NVIDIA kernel driver have different versions (reboot or \
             reload the driver after an upgrade)"
        ),
        other => format!("NVML initialisation failed: {other}"),
    };
    // The loader's message can in principle span lines; the operator gets exactly one.
    format!("NVML is not available: {}", why.replace(['\n', '\r'], " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_supported_becomes_none_other_errors_stay_errors() {
        assert_eq!(unsupported_as_none(Ok::<u32, _>(7)).unwrap(), Some(7));
        assert_eq!(unsupported_as_none::<u32>(Err(NvmlError::NotSupported)).unwrap(), None);
        assert!(matches!(unsupported_as_none::<u32>(Err(NvmlError::GpuLost)), Err(NvmlError::GpuLost)));
        assert!(matches!(unsupported_as_none::<u32>(Err(NvmlError::Unknown)), Err(NvmlError::Unknown)));
    }

    #[test]
    fn init_errors_are_one_clear_line() {
        let cases = [
            (NvmlError::DriverNotLoaded, "kernel driver is not loaded"),
            (NvmlError::NoPermission, "no permission"),
            (NvmlError::LibRmVersionMismatch, "different versions"),
            (NvmlError::FailedToLoadSymbol("nvmlInit_v2".into()), "lacks a required function (nvmlInit_v2)"),
            (NvmlError::Unknown, "NVML initialisation failed"),
        ];
        for (error, expected) in cases {
            let line = describe_init_error(DEFAULT_LIB, &error);
            assert!(line.starts_with("NVML is not available: "), "{line}");
            assert!(line.contains(expected), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
