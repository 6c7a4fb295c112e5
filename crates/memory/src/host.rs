//! System RAM as a device, read from `/proc`: what stages running on the CPU are measured with.
//!
//! "Free" is `MemAvailable`, not `MemFree`: the kernel gives back page cache on demand, so
//! `MemFree` would make a machine with a warm cache look full. A process's memory is its
//! resident set (`VmRSS`), the closest thing the kernel has to a GPU's per-process bytes.

use std::fs;

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
        let meminfo = fs::read_to_string("/proc/meminfo")
            .map_err(|e| MemoryError::io("cannot read", "/proc/meminfo", e))?;
        let (total, available) =
            parse_meminfo(&meminfo).ok_or_else(|| MemoryError::CorruptState {
                path: "/proc/meminfo".into(),
                why: "MemTotal or MemAvailable is missing".into(),
            })?;
        let mut processes = Vec::new();
        let entries =
            fs::read_dir("/proc").map_err(|e| MemoryError::io("cannot list", "/proc", e))?;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may exit between the listing and the read; skip it.
            if let Some((name, rss)) = read_status(pid)
                && rss > 0
            {
                processes.push(ProcessMemory {
                    pid,
                    name,
                    bytes: Some(rss),
                });
            }
        }
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
            processes,
        }])
    }

    fn process_usage(&self, index: usize, pid: u32) -> Result<u64, MemoryError> {
        check_index(BackendKind::Host, index, 1)?;
        Ok(read_status(pid).map_or(0, |(_, rss)| rss))
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

/// Returns (MemTotal, MemAvailable) in bytes.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(parse_kib)
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// Reads `/proc/PID/status` for the process name and resident bytes.
fn read_status(pid: u32) -> Option<(String, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut name = None;
    let mut rss = 0;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("Name:") {
            name = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("VmRSS:") {
            rss = parse_kib(value)?;
        }
    }
    Some((name?, rss))
}

/// `  16384 kB` → bytes.
fn parse_kib(value: &str) -> Option<u64> {
    let number = value.trim().strip_suffix("kB")?.trim();
    number.parse::<u64>().ok().map(|kib| kib * 1024)
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
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((24_000_000 * 1024, 20_000_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

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
