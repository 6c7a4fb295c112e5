//! The one line drawn between "a pool of memory baton can measure" and where the numbers come
//! from.
//!
//! Everything above this layer (the seed's API, the runner, the stages, the CLI) sees only
//! [`MemoryBackend`]. Each source implements it once: [`crate::nvml`] for NVIDIA GPUs,
//! [`crate::host`] for system RAM, [`crate::sim`] for simulated GPUs in tests. Choosing one is
//! [`open`]; `auto` asks NVML first and says why it fell back when it does.

use std::sync::Arc;

use crate::{BackendKind, DeviceSnapshot, MemoryError};

/// A source of memory readings for one or more devices.
pub trait MemoryBackend: Send + Sync {
    /// Which source this is.
    fn kind(&self) -> BackendKind;

    /// Says what this source is, for headers and logs: `nvml (NVIDIA driver 580.159.04)`.
    fn description(&self) -> String {
        self.kind().name().to_string()
    }

    /// Reads every device, processes included.
    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError>;

    /// Reads one device. The default reads all and picks one; backends that can read a single
    /// device more cheaply override it.
    fn device(&self, index: usize) -> Result<DeviceSnapshot, MemoryError> {
        let mut all = self.snapshot()?;
        check_index(self.kind(), index, all.len())?;
        Ok(all.swap_remove(index))
    }

    /// Bytes the process `pid` holds on device `index`.
    fn process_usage(&self, index: usize, pid: u32) -> Result<u64, MemoryError> {
        Ok(self.device(index)?.held_by(pid))
    }

    /// Memory a process pays on this device before it allocates anything: a CUDA context on a
    /// GPU (about 0.5 GiB on an H100/H200, see `shared/gpu/README.md`), nothing on the host.
    fn context_overhead(&self) -> u64;

    /// True when the device's used memory is the sum of its processes' memory plus a steady
    /// remainder, so used memory that no process explains is a leak (true for a GPU). Host
    /// RAM is not like that: the kernel's own use moves all the time.
    fn attributes_all_memory(&self) -> bool {
        true
    }

    /// Gives memory this process has freed but still caches back to the device: `malloc_trim`
    /// on the host, a pool trim inside a CUDA stage. Reading backends that hold no memory of
    /// their own (NVML, sim) have nothing to trim.
    fn trim(&self) -> Result<(), MemoryError> {
        Ok(())
    }
}

/// Fails with [`MemoryError::NoSuchDevice`] unless `index < count`.
pub(crate) fn check_index(
    kind: BackendKind,
    index: usize,
    count: usize,
) -> Result<(), MemoryError> {
    if index < count {
        Ok(())
    } else {
        Err(MemoryError::NoSuchDevice {
            backend: kind.name(),
            index,
            count,
        })
    }
}

/// Where work runs: on a GPU, or on the CPU in host RAM. The one word for it that pipeline
/// files (`device = "gpu"`), flags (`--device`, `--compute`) and the stages all use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A GPU: read through NVML by the supervisor, computed on through CUDA by a stage.
    Gpu,
    /// The CPU and host RAM, measured through `/proc`.
    Cpu,
}

/// A device as a flag names it: a [`DeviceKind`], simulated GPUs in place of real ones, or
/// `auto` (a GPU when a driver answers, otherwise the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Gpu,
    Cpu,
    /// Simulated GPUs (`BATON_SIM_GPUS`): memory that test processes "allocate".
    Sim,
}

impl std::str::FromStr for DeviceChoice {
    type Err = MemoryError;

    /// `auto`, `gpu`, `cpu` or `sim`; `nvml` and `cuda` (how a GPU is read and computed on)
    /// mean `gpu`, `host` means `cpu`, as earlier versions of baton spelled them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "gpu" | "nvml" | "cuda" => Ok(DeviceChoice::Gpu),
            "cpu" | "host" => Ok(DeviceChoice::Cpu),
            "sim" => Ok(DeviceChoice::Sim),
            _ => Err(MemoryError::UnknownBackend {
                value: s.to_string(),
            }),
        }
    }
}

/// An opened backend, and why it was the one chosen.
pub struct Opened {
    pub backend: Arc<dyn MemoryBackend>,
    /// Set when `auto` fell back from NVML: the reason NVML was not used.
    pub fallback_reason: Option<String>,
}

/// Opens the backend `choice` names.
pub fn open(choice: DeviceChoice) -> Result<Opened, MemoryError> {
    let chosen = |backend: Arc<dyn MemoryBackend>| Opened {
        backend,
        fallback_reason: None,
    };
    match choice {
        DeviceChoice::Gpu => Ok(chosen(Arc::new(crate::nvml::NvmlBackend::open()?))),
        DeviceChoice::Cpu => Ok(chosen(Arc::new(crate::host::HostBackend::new()))),
        DeviceChoice::Sim => Ok(chosen(Arc::new(crate::sim::SimBackend::from_env()?))),
        DeviceChoice::Auto => match crate::nvml::NvmlBackend::open() {
            Ok(nvml) => Ok(chosen(Arc::new(nvml))),
            Err(err) => Ok(Opened {
                backend: Arc::new(crate::host::HostBackend::new()),
                fallback_reason: Some(err.to_string()),
            }),
        },
    }
}
