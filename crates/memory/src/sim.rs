//! Simulated GPUs: a test double that real processes share, so placement, waiting, leaks and
//! orphans can be tested on machines without a GPU.
//!
//! The key design decision: the simulation lives in a state file (`state.json` in
//! `BATON_SIM_DIR`), not in memory, so any process (a test's children, `baton sim hold`, a
//! stage) allocates under its own PID, under a file lock. Like the NVIDIA driver, the
//! simulation frees a dead process's memory: an entry whose PID has exited (or is a zombie, or
//! was reused by a newer process) is dropped at the next reading. The devices are named by
//! `BATON_SIM_GPUS`, e.g. `4x24GiB` or `2x24GiB,1x80GiB`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::check_index;
use crate::snapshot::sort_processes;
use crate::{BackendKind, DeviceSnapshot, MemoryBackend, MemoryError, ProcessMemory};
use baton_base::atomic_file::replace_atomic;
use baton_base::procfs;
use baton_base::{format_bytes, parse_size};

/// The variable naming the simulated devices.
pub const SIM_GPUS_VAR: &str = "BATON_SIM_GPUS";
/// The variable naming the folder that holds the simulation's state.
pub const SIM_DIR_VAR: &str = "BATON_SIM_DIR";
/// The devices used when neither the variable nor an existing state names any: one 24 GiB card.
pub const DEFAULT_SIM_GPUS: &str = "1x24GiB";
/// What a CUDA context costs on a real card; the simulation charges placement the same.
pub const SIM_CONTEXT_OVERHEAD: u64 = 512 << 20;

/// A simulated GPU's sensors, made up from its load so tests can check what shows them: 30 °C
/// idle to 80 °C full, 60 W to 400 W of a 400 W limit, the SM clock at 345 MHz idle and 1980
/// MHz in use, the memory clock at 2619 MHz.
fn sim_sensors(used: u64, total: u64) -> crate::Sensors {
    let load = |span: u64| (span as u128 * used as u128 / total.max(1) as u128) as u64;
    crate::Sensors {
        temperature_c: Some(30 + load(50) as u32),
        power_w: Some((60 + load(340)) as f64),
        power_limit_w: Some(400.0),
        sm_clock_mhz: Some(if used > 0 { 1980 } else { 345 }),
        memory_clock_mhz: Some(2619),
    }
}

/// Parses `4x24GiB`, `24GiB` or `2x24GiB,1x80GiB` into device sizes.
pub fn parse_sim_spec(spec: &str) -> Result<Vec<u64>, MemoryError> {
    let bad = |why: String| MemoryError::BadSimSpec {
        value: spec.to_string(),
        why,
    };
    let mut devices = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (count, size) = match part.split_once(['x', 'X', '*']) {
            Some((count, size)) => {
                let count: usize = count
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("'{count}' is not a device count")))?;
                (count, size)
            }
            None => (1, part),
        };
        if count == 0 || count > 64 {
            return Err(bad(format!("{count} devices; use 1 to 64")));
        }
        let bytes = parse_size(size).map_err(|e| bad(e.to_string()))?;
        if bytes < (1 << 20) {
            return Err(bad(format!(
                "a device of {} is too small; use at least 1MiB",
                format_bytes(bytes)
            )));
        }
        devices.extend(std::iter::repeat_n(bytes, count));
    }
    if devices.len() > 64 {
        return Err(bad(format!(
            "{} devices in all; use at most 64",
            devices.len()
        )));
    }
    Ok(devices)
}

/// Describes device sizes the way the spec writes them: `2x24.0 GiB`.
fn describe_devices(devices: &[u64]) -> String {
    let mut parts: Vec<(usize, u64)> = Vec::new();
    for &size in devices {
        match parts.last_mut() {
            Some((count, last)) if *last == size => *count += 1,
            _ => parts.push((1, size)),
        }
    }
    parts
        .iter()
        .map(|(count, size)| format!("{count}x{}", format_bytes(*size)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The folder used when `BATON_SIM_DIR` is unset: the user's runtime folder, else their cache.
pub fn default_sim_dir() -> PathBuf {
    let from = |var: &str, tail: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(v).join(tail))
    };
    from("XDG_RUNTIME_DIR", "baton/sim")
        .or_else(|| from("XDG_CACHE_HOME", "baton/sim"))
        .or_else(|| from("HOME", ".cache/baton/sim"))
        .unwrap_or_else(|| {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("baton-sim-{uid}"))
        })
}

/// The owner recorded for leaked memory: no process, as when a driver loses track of memory.
const LEAKED_PID: u32 = 0;

#[derive(Debug, Default, Serialize, Deserialize)]
struct SimState {
    devices: Vec<u64>,
    next_id: u64,
    allocations: Vec<SimEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimEntry {
    id: u64,
    device: usize,
    pid: u32,
    /// The process's start time in clock ticks since boot, so a reused PID is not mistaken for
    /// the process that allocated.
    start: u64,
    bytes: u64,
    label: String,
}

impl SimState {
    fn used(&self, device: usize) -> u64 {
        self.allocations
            .iter()
            .filter(|a| a.device == device)
            .map(|a| a.bytes)
            .sum()
    }

    /// Drops the entries of processes that no longer run, as the driver does. Leaked entries
    /// (PID 0) belong to no process and stay until a reset.
    fn prune_dead(&mut self) {
        self.allocations
            .retain(|a| a.pid == LEAKED_PID || process_start(a.pid) == Some(a.start));
    }
}

/// Simulated GPUs kept in a state file.
#[derive(Debug, Clone)]
pub struct SimBackend {
    dir: PathBuf,
    devices: Vec<u64>,
}

impl SimBackend {
    /// Opens the simulation that `BATON_SIM_DIR` and `BATON_SIM_GPUS` name.
    pub fn from_env() -> Result<Self, MemoryError> {
        let dir = std::env::var_os(SIM_DIR_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_sim_dir);
        let spec = std::env::var(SIM_GPUS_VAR)
            .ok()
            .filter(|s| !s.trim().is_empty());
        Self::open(&dir, spec.as_deref())
    }

    /// Opens (creating if needed) the simulation in `dir`. With `spec`, the devices are those;
    /// without, they are what the folder already holds, or [`DEFAULT_SIM_GPUS`].
    pub fn open(dir: &Path, spec: Option<&str>) -> Result<Self, MemoryError> {
        let requested = spec.map(parse_sim_spec).transpose()?;
        fs::create_dir_all(dir).map_err(|e| MemoryError::io("cannot create", dir, e))?;
        let mut sim = SimBackend {
            dir: dir.to_path_buf(),
            devices: Vec::new(),
        };
        sim.devices = sim.with_state(|state| {
            match requested {
                Some(requested) if requested != state.devices => {
                    if state.allocations.iter().any(|a| a.pid != LEAKED_PID) {
                        return Err(MemoryError::SimMismatch {
                            dir: dir.to_path_buf(),
                            existing: describe_devices(&state.devices),
                            requested: describe_devices(&requested),
                        });
                    }
                    state.allocations.clear();
                    state.devices = requested;
                }
                Some(_) => {}
                None if state.devices.is_empty() => {
                    state.devices = parse_sim_spec(DEFAULT_SIM_GPUS)?;
                }
                None => {}
            }
            Ok(state.devices.clone())
        })?;
        Ok(sim)
    }

    /// The folder holding the simulation's state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Allocates `bytes` on `device` under this process's PID. The memory is freed when the
    /// returned handle drops, or when this process dies.
    pub fn allocate(
        &self,
        device: usize,
        bytes: u64,
        label: &str,
    ) -> Result<SimAllocation, MemoryError> {
        let pid = std::process::id();
        let start = process_start(pid).ok_or_else(|| MemoryError::CorruptState {
            path: format!("/proc/{pid}/stat").into(),
            why: "this process's start time cannot be read".into(),
        })?;
        let id = self.add_entry(device, bytes, label, pid, start)?;
        Ok(SimAllocation {
            sim: self.clone(),
            id,
            device,
            bytes,
        })
    }

    /// Marks `bytes` on `device` as used by no process, the way a driver-level leak looks:
    /// the device's used memory grows, but no process row explains it. It stays until
    /// [`SimBackend::reset`].
    pub fn leak(&self, device: usize, bytes: u64, label: &str) -> Result<(), MemoryError> {
        self.add_entry(device, bytes, label, LEAKED_PID, 0)
            .map(|_| ())
    }

    /// Records an allocation, refusing one larger than the device's free memory as CUDA
    /// would; returns its id.
    fn add_entry(
        &self,
        device: usize,
        bytes: u64,
        label: &str,
        pid: u32,
        start: u64,
    ) -> Result<u64, MemoryError> {
        check_index(BackendKind::Sim, device, self.devices.len())?;
        self.with_state(|state| {
            let free = state.devices[device].saturating_sub(state.used(device));
            if bytes > free {
                return Err(MemoryError::OutOfMemory {
                    device: format!("sim{device}"),
                    requested: bytes,
                    free,
                });
            }
            let id = state.next_id;
            state.next_id += 1;
            state.allocations.push(SimEntry {
                id,
                device,
                pid,
                start,
                bytes,
                label: label.to_string(),
            });
            Ok(id)
        })
    }

    /// Frees leaked memory, as a driver reset would; returns the bytes freed. Memory held by
    /// live processes stays theirs.
    pub fn reset(&self) -> Result<u64, MemoryError> {
        self.with_state(|state| {
            let leaked = state
                .allocations
                .iter()
                .filter(|a| a.pid == LEAKED_PID)
                .map(|a| a.bytes)
                .sum();
            state.allocations.retain(|a| a.pid != LEAKED_PID);
            Ok(leaked)
        })
    }

    fn free(&self, id: u64) -> Result<(), MemoryError> {
        self.with_state(|state| {
            state.allocations.retain(|a| a.id != id);
            Ok(())
        })
    }

    /// Runs `f` on the state under the lock, after dropping dead processes' entries, and
    /// writes the state back (atomically) when it changed.
    fn with_state<R>(
        &self,
        f: impl FnOnce(&mut SimState) -> Result<R, MemoryError>,
    ) -> Result<R, MemoryError> {
        let lock_path = self.dir.join("state.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| MemoryError::io("cannot open", &lock_path, e))?;
        lock.lock()
            .map_err(|e| MemoryError::io("cannot lock", &lock_path, e))?;
        let state_path = self.dir.join("state.json");
        let original = match fs::read(&state_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(MemoryError::io("cannot read", &state_path, e)),
        };
        let mut state: SimState = if original.is_empty() {
            SimState::default()
        } else {
            serde_json::from_slice(&original).map_err(|e| MemoryError::CorruptState {
                path: state_path.clone(),
                why: e.to_string(),
            })?
        };
        state.prune_dead();
        let result = f(&mut state)?;
        let updated = serde_json::to_vec_pretty(&state).expect("sim state serializes");
        if updated != original {
            replace_atomic(&state_path, &updated)?;
        }
        drop(lock);
        Ok(result)
    }
}

impl MemoryBackend for SimBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }

    fn description(&self) -> String {
        format!(
            "sim ({} simulated GPU(s), {}, state in {})",
            self.devices.len(),
            describe_devices(&self.devices),
            self.dir.display()
        )
    }

    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError> {
        self.with_state(|state| {
            Ok(state
                .devices
                .iter()
                .enumerate()
                .map(|(index, &total)| {
                    let mut processes: Vec<ProcessMemory> = Vec::new();
                    let owned = state
                        .allocations
                        .iter()
                        .filter(|a| a.device == index && a.pid != LEAKED_PID);
                    for entry in owned {
                        match processes.iter_mut().find(|p| p.pid == entry.pid) {
                            Some(row) => row.bytes = Some(row.bytes.unwrap_or(0) + entry.bytes),
                            None => processes.push(ProcessMemory {
                                pid: entry.pid,
                                name: procfs::comm(entry.pid).unwrap_or_else(|| "?".into()),
                                bytes: Some(entry.bytes),
                            }),
                        }
                    }
                    sort_processes(&mut processes);
                    let used = state.used(index).min(total);
                    DeviceSnapshot {
                        backend: BackendKind::Sim,
                        index,
                        name: format!("Simulated GPU {}", format_bytes(total)),
                        uuid: format!("sim-{index}"),
                        total,
                        used,
                        free: total - used,
                        reserved: 0,
                        utilization: None,
                        sensors: sim_sensors(used, total),
                        processes,
                    }
                })
                .collect())
        })
    }

    fn context_overhead(&self) -> u64 {
        SIM_CONTEXT_OVERHEAD
    }
}

/// Simulated device memory held by this process; freed on drop.
#[derive(Debug)]
pub struct SimAllocation {
    sim: SimBackend,
    id: u64,
    device: usize,
    bytes: u64,
}

impl SimAllocation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn device(&self) -> usize {
        self.device
    }
}

impl Drop for SimAllocation {
    fn drop(&mut self) {
        if let Err(err) = self.sim.free(self.id) {
            tracing::warn!("could not free simulated allocation {}: {err}", self.id);
        }
    }
}

/// A live process's start time (clock ticks since boot), or `None` for one that has exited or
/// is a zombie: a zombie holds no memory, on a GPU or here.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    procfs::stat(pid)
        .filter(|s| !s.is_gone())
        .map(|s| s.start_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_forms() {
        assert_eq!(parse_sim_spec("2x24GiB").unwrap(), vec![24 << 30; 2]);
        assert_eq!(parse_sim_spec("80GiB").unwrap(), vec![80 << 30]);
        assert_eq!(
            parse_sim_spec("2x24GiB, 1x80GiB").unwrap(),
            vec![24 << 30, 24 << 30, 80 << 30]
        );
        assert_eq!(
            describe_devices(&parse_sim_spec("2x24GiB,80GiB").unwrap()),
            "2x24.0 GiB,1x80.0 GiB"
        );
    }

    #[test]
    fn bad_specs_name_the_value() {
        for bad in [
            "",
            "0x24GiB",
            "twox24GiB",
            "2x",
            "2xlots",
            "100x1GiB",
            "2x1KiB",
        ] {
            let err = parse_sim_spec(bad).unwrap_err();
            assert!(err.is_bad_input());
            let text = err.to_string();
            assert!(text.contains(&format!("'{bad}'")), "{text}");
        }
    }

    #[test]
    fn own_start_time_is_read_and_dead_pids_have_none() {
        assert!(process_start(std::process::id()).is_some());
        assert_eq!(process_start(u32::MAX - 1), None);
    }

    #[test]
    fn allocations_show_under_own_pid_and_vanish_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::open(dir.path(), Some("2x1GiB")).unwrap();
        let me = std::process::id();
        let a = sim.allocate(1, 256 << 20, "a").unwrap();
        let b = sim.allocate(1, 256 << 20, "b").unwrap();
        let snap = sim.snapshot().unwrap();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].used, 0);
        assert_eq!(snap[1].used, 512 << 20);
        assert_eq!(snap[1].free, 512 << 20);
        assert_eq!(snap[1].held_by(me), 512 << 20);
        assert_eq!(snap[1].processes.len(), 1, "one row per process");
        drop(a);
        assert_eq!(sim.process_usage(1, me).unwrap(), 256 << 20);
        drop(b);
        assert_eq!(sim.device(1).unwrap().used, 0);
    }

    #[test]
    fn over_allocation_is_refused_like_cuda_oom() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::open(dir.path(), Some("1x1GiB")).unwrap();
        let _held = sim.allocate(0, 768 << 20, "held").unwrap();
        let err = sim.allocate(0, 512 << 20, "more").unwrap_err().to_string();
        assert!(err.contains("out of memory on sim0"), "{err}");
        assert!(err.contains("256.0 MiB free"), "{err}");
        assert!(sim.allocate(2, 1, "x").unwrap_err().is_bad_input());
    }

    #[test]
    fn devices_persist_and_cannot_change_under_live_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::open(dir.path(), Some("2x24GiB")).unwrap();
        let again = SimBackend::open(dir.path(), None).unwrap();
        assert_eq!(again.snapshot().unwrap().len(), 2);
        let held = sim.allocate(0, 1 << 30, "held").unwrap();
        let err = SimBackend::open(dir.path(), Some("4x24GiB"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2x24.0 GiB") && err.contains("4x24.0 GiB"),
            "{err}"
        );
        drop(held);
        let four = SimBackend::open(dir.path(), Some("4x24GiB")).unwrap();
        assert_eq!(four.snapshot().unwrap().len(), 4);
    }

    #[test]
    fn leaked_memory_is_used_but_owned_by_no_process_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBackend::open(dir.path(), Some("1x24GiB")).unwrap();
        let held = sim.allocate(0, 1 << 30, "held").unwrap();
        sim.leak(0, 2 << 30, "lost").unwrap();
        let snap = sim.device(0).unwrap();
        assert_eq!(snap.used, 3 << 30);
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].bytes, Some(1 << 30));
        drop(held);
        assert_eq!(sim.device(0).unwrap().used, 2 << 30);
        assert_eq!(sim.reset().unwrap(), 2 << 30);
        assert_eq!(sim.device(0).unwrap().used, 0);
    }

    #[test]
    fn corrupt_state_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let err = SimBackend::open(dir.path(), Some("1x24GiB"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corrupt") && err.contains("state.json"),
            "{err}"
        );
        assert_eq!(
            fs::read(dir.path().join("state.json")).unwrap(),
            b"{not json"
        );
    }
}
