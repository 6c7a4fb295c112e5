//! System RAM as a device, read from `/proc`: what stages running on the CPU are measured with.
//!
//! "Free" is `MemAvailable`, not `MemFree`: the kernel gives back page cache on demand, so
//! `MemFree` would make a machine with a warm cache look full. A process's memory is its
//! resident set (`VmRSS`), the closest thing the kernel has to a GPU's per-process bytes.

use baton_base::procfs;

use crate::backend::check_index;
use crate::snapshot::sort_processes;
use crate::{BackendKind, DeviceSnapshot, MemoryBackend, MemoryError, ProcessMemory};

/// Host memory, one device.
#[derive(Debug, Default)]
pub struct HostBackend;

impl HostBackend {
    pub fn new() -> Self {
        HostBackend
    }
}

impl MemoryBackend for HostBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn description(&self) -> String {
        "host (system RAM from /proc/meminfo, per-process resident memory)".to_string()
    }

    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError> {
        let procfs::MemInfo { total, available } = procfs::meminfo()?;
        // A process may exit between the listing and the read; it is skipped.
        let mut processes: Vec<ProcessMemory> = procfs::pids()
            .into_iter()
            .filter_map(|pid| {
                let status = procfs::status(pid)?;
                (status.rss_bytes > 0).then_some(ProcessMemory {
                    pid,
                    name: status.name,
                    bytes: Some(status.rss_bytes),
                })
            })
            .collect();
        sort_processes(&mut processes);
        Ok(vec![DeviceSnapshot {
            backend: BackendKind::Host,
            index: 0,
            name: "host RAM".to_string(),
            uuid: "host".to_string(),
            total,
            used: total.saturating_sub(available),
            free: available,
            reserved: 0,
            utilization: None,
            sensors: Default::default(),
            processes,
        }])
    }

    fn process_usage(&self, index: usize, pid: u32) -> Result<u64, MemoryError> {
        check_index(BackendKind::Host, index, 1)?;
        Ok(procfs::status(pid).map_or(0, |s| s.rss_bytes))
    }

    fn context_overhead(&self) -> u64 {
        0
    }

    fn attributes_all_memory(&self) -> bool {
        false
    }

    fn trim(&self) -> Result<(), MemoryError> {
        trim_heap();
        Ok(())
    }
}

/// Returns freed heap pages to the kernel, so the resident set shows what was really dropped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_seen_with_its_resident_set() {
        let host = HostBackend::new();
        let me = std::process::id();
        let snap = host.device(0).unwrap();
        assert!(snap.total > 0 && snap.used <= snap.total);
        assert_eq!(snap.used + snap.free, snap.total);
        let row = snap
            .processes
            .iter()
            .find(|p| p.pid == me)
            .expect("own pid listed");
        assert!(row.bytes.unwrap() > 0);
        assert!(host.process_usage(0, me).unwrap() > 0);
        assert!(host.process_usage(1, me).is_err());
    }
}
