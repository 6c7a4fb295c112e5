//! NVIDIA GPUs read through NVML: every GPU's memory, utilisation and per-process bytes.
//!
//! The supervisor must never hold a CUDA context (that alone costs ~0.5 GiB per GPU), so this
//! backend only reads, through `libnvidia-ml.so.1`, which `nvml-wrapper` loads at run time: a
//! machine without the driver gets [`MemoryError::DriverNotFound`], not a crash. NVML is
//! initialised once per process and the outcome, error included, is kept.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use crate::snapshot::sort_processes;
use crate::{BackendKind, DeviceSnapshot, MemoryBackend, MemoryError, ProcessMemory, Sensors};
use baton_base::procfs;

/// What a process with a CUDA context costs on a current NVIDIA card before it allocates
/// anything: the context, its kernels, and (in a candle stage) the quantized matmul workspaces
/// the warm-up grows. Measured: 591.6 MiB for a prepared PyTorch process, 782.8 MiB for the
/// scenes stage's baseline (H100, docs/gpu/prestart-h100.md); rounded up.
pub const CUDA_CONTEXT_OVERHEAD: u64 = 800 << 20;

static NVML: OnceLock<Result<Nvml, (bool, String)>> = OnceLock::new();

/// Every NVIDIA GPU on the machine.
pub struct NvmlBackend {
    nvml: &'static Nvml,
    count: usize,
}

impl NvmlBackend {
    /// Loads NVML (once per process) and counts the GPUs.
    pub fn open() -> Result<Self, MemoryError> {
        let nvml = NVML
            .get_or_init(|| Nvml::init().map_err(|e| (is_driver_missing(&e), describe(&e))))
            .as_ref()
            .map_err(|(missing, message)| {
                if *missing {
                    MemoryError::DriverNotFound {
                        reason: message.clone(),
                    }
                } else {
                    MemoryError::Nvml {
                        call: "nvmlInit",
                        message: message.clone(),
                    }
                }
            })?;
        let count = nvml.device_count().map_err(call("nvmlDeviceGetCount"))? as usize;
        if count == 0 {
            return Err(MemoryError::Nvml {
                call: "nvmlDeviceGetCount",
                message: "the driver answers but lists no GPUs".into(),
            });
        }
        Ok(NvmlBackend { nvml, count })
    }

    fn read(&self, index: usize) -> Result<DeviceSnapshot, MemoryError> {
        crate::backend::check_index(BackendKind::Nvml, index, self.count)?;
        let device = self
            .nvml
            .device_by_index(index as u32)
            .map_err(call("nvmlDeviceGetHandleByIndex"))?;
        let memory = device
            .memory_info()
            .map_err(call("nvmlDeviceGetMemoryInfo_v2"))?;
        let mut processes: Vec<ProcessMemory> = Vec::new();
        // Some containers refuse the process lists; the device totals still stand.
        let compute = device.running_compute_processes().unwrap_or_default();
        let graphics = device.running_graphics_processes().unwrap_or_default();
        for info in compute.into_iter().chain(graphics) {
            let bytes = match info.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            };
            // A process in both lists holds one set of memory, reported twice.
            match processes.iter_mut().find(|p| p.pid == info.pid) {
                Some(row) => row.bytes = row.bytes.max(bytes),
                None => processes.push(ProcessMemory {
                    pid: info.pid,
                    name: procfs::comm(info.pid)
                        .or_else(|| self.nvml.sys_process_name(info.pid, 64).ok())
                        .unwrap_or_else(|| "?".into()),
                    bytes,
                }),
            }
        }
        sort_processes(&mut processes);
        Ok(DeviceSnapshot {
            backend: BackendKind::Nvml,
            index,
            name: device.name().map_err(call("nvmlDeviceGetName"))?,
            uuid: device.uuid().map_err(call("nvmlDeviceGetUUID"))?,
            total: memory.total,
            used: memory.used,
            free: memory.free,
            reserved: memory.reserved,
            utilization: device.utilization_rates().ok().map(|u| u.gpu),
            sensors: Sensors {
                temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                power_w: device.power_usage().ok().map(|mw| mw as f64 / 1000.0),
                power_limit_w: device
                    .enforced_power_limit()
                    .ok()
                    .map(|mw| mw as f64 / 1000.0),
                sm_clock_mhz: device.clock_info(Clock::SM).ok(),
                memory_clock_mhz: device.clock_info(Clock::Memory).ok(),
            },
            processes,
        })
    }
}

impl MemoryBackend for NvmlBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nvml
    }

    fn description(&self) -> String {
        match self.nvml.sys_driver_version() {
            Ok(version) => format!("nvml (NVIDIA driver {version}, {} GPU(s))", self.count),
            Err(_) => format!("nvml ({} GPU(s))", self.count),
        }
    }

    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError> {
        (0..self.count).map(|index| self.read(index)).collect()
    }

    fn device(&self, index: usize) -> Result<DeviceSnapshot, MemoryError> {
        self.read(index)
    }

    fn context_overhead(&self) -> u64 {
        CUDA_CONTEXT_OVERHEAD
    }
}

fn call(name: &'static str) -> impl Fn(NvmlError) -> MemoryError {
    move |e| MemoryError::Nvml {
        call: name,
        message: describe(&e),
    }
}

/// True when the error means "no driver here" rather than "the driver failed".
fn is_driver_missing(err: &NvmlError) -> bool {
    matches!(
        err,
        NvmlError::LibloadingError(_) | NvmlError::DriverNotLoaded | NvmlError::LibraryNotFound
    )
}

fn describe(err: &NvmlError) -> String {
    match err {
        NvmlError::LibloadingError(e) => format!("libnvidia-ml.so.1 could not be loaded ({e})"),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_string(),
        other => other.to_string(),
    }
}
