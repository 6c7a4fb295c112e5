//! One reading of a device: the seed's `get_vram_stats()`, as data every backend fills in.
//!
//! A snapshot is plain data (serde), so `baton stats --json`, `baton watch --jsonl` and the
//! run manifest all write the same shape, whatever backend produced it.

use serde::{Deserialize, Serialize};

use baton_base::format_bytes;

/// Which source a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// NVIDIA GPUs read through NVML.
    Nvml,
    /// System RAM read from `/proc`.
    Host,
    /// Simulated GPUs kept in a state file.
    Sim,
    /// The GPU this process holds a CUDA context on, read with `cuMemGetInfo` (`cuda` feature).
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Nvml => "nvml",
            BackendKind::Host => "host",
            BackendKind::Sim => "sim",
            BackendKind::Cuda => "cuda",
        }
    }

    /// The short prefix of a device label: `gpu0`, `host0`, `sim0`.
    pub fn device_prefix(self) -> &'static str {
        match self {
            BackendKind::Nvml => "gpu",
            BackendKind::Host => "host",
            BackendKind::Sim => "sim",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Memory one process holds on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub pid: u32,
    /// The process's short name (`/proc/PID/comm`), or `?` when it cannot be read.
    pub name: String,
    /// Bytes the process holds on this device; `None` when the driver will not say (as NVML
    /// does for other users' processes in some containers).
    pub bytes: Option<u64>,
}

/// One reading of one device.
/// A GPU's sensors as the driver reads them (NVML; the simulation makes them up from its load);
/// none for host memory. Each reading the driver refuses stays `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensors {
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
}

impl Sensors {
    /// `43°C · 145/400 W · SM 1980 MHz · mem 2619 MHz`, with what is known; empty if nothing.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = self.temperature_c {
            parts.push(format!("{t}°C"));
        }
        match (self.power_w, self.power_limit_w) {
            (Some(p), Some(l)) => parts.push(format!("{p:.0}/{l:.0} W")),
            (Some(p), None) => parts.push(format!("{p:.0} W")),
            _ => {}
        }
        if let Some(c) = self.sm_clock_mhz {
            parts.push(format!("SM {c} MHz"));
        }
        if let Some(c) = self.memory_clock_mhz {
            parts.push(format!("mem {c} MHz"));
        }
        parts.join(" · ")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub backend: BackendKind,
    /// Index among the backend's devices, from 0.
    pub index: usize,
    pub name: String,
    /// A stable identifier: the GPU's UUID, `host`, or `sim-N`.
    pub uuid: String,
    pub total: u64,
    pub used: u64,
    pub free: u64,
    /// Memory the driver sets aside and no process can use (NVML's "reserved").
    pub reserved: u64,
    /// Percent of time the device was busy over the driver's last sample period, when known.
    pub utilization: Option<u32>,
    /// Temperature, power and clocks, where the driver reads them.
    #[serde(default)]
    pub sensors: Sensors,
    /// Processes holding memory on the device, largest first.
    pub processes: Vec<ProcessMemory>,
}

impl DeviceSnapshot {
    /// `gpu0`, `host0`, `sim1`: how messages name this device.
    pub fn label(&self) -> String {
        format!("{}{}", self.backend.device_prefix(), self.index)
    }

    /// Bytes held by `pid` on this device (0 when it holds none or the driver will not say).
    pub fn held_by(&self, pid: u32) -> u64 {
        self.processes
            .iter()
            .filter(|p| p.pid == pid)
            .filter_map(|p| p.bytes)
            .sum()
    }

    /// Used memory as a percentage of the total.
    pub fn used_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.used as f64 * 100.0 / self.total as f64
        }
    }

    /// The largest holders, formatted for a message: `pid 4711 (python3) 2.0 GiB, …`.
    pub fn describe_holders(&self, limit: usize) -> String {
        self.processes
            .iter()
            .take(limit)
            .map(|p| {
                let bytes = p.bytes.map_or_else(|| "unknown".to_string(), format_bytes);
                format!("pid {} ({}) {bytes}", p.pid, p.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line for logs: `gpu0 NVIDIA H100: used 2.5 GiB of 79.6 GiB, 77.1 GiB free`.
    pub fn summary(&self) -> String {
        format!(
            "{} {}: used {} of {}, {} free",
            self.label(),
            self.name,
            format_bytes(self.used),
            format_bytes(self.total),
            format_bytes(self.free)
        )
    }
}

/// Sorts process rows largest first, unknown sizes last, then by PID so output is stable.
pub(crate) fn sort_processes(processes: &mut [ProcessMemory]) {
    processes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
}

/// Reads every device and logs one line per device under `label`. The seed's
/// `log_vram_stats`; returns the readings so the caller can keep them.
pub fn log_snapshot(
    backend: &dyn crate::MemoryBackend,
    label: &str,
) -> Result<Vec<DeviceSnapshot>, crate::MemoryError> {
    let devices = backend.snapshot()?;
    for device in &devices {
        tracing::info!("[{label}] {}", device.summary());
    }
    Ok(devices)
}
