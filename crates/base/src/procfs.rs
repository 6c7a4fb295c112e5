//! The one reader of `/proc`: which processes exist, their state, group and start time, their
//! environment, name and resident memory, and the machine's RAM.
//!
//! Every reader here treats a process that vanished mid-read as absent (`None`), never as an
//! error: processes come and go between a listing and the read of one of them, and the
//! callers (reclaim, orphan hunting, the host backend, the simulation) all want "gone" then.

use std::fs;

use crate::FileError;

/// Every PID listed in `/proc` now (empty if `/proc` cannot be read).
pub fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of `/proc/PID/stat` baton uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// Start time in clock ticks since boot: with the PID, it names one process for good.
    pub start_ticks: u64,
}

impl Stat {
    /// A zombie or a dead process: it holds no memory and runs no code.
    pub fn is_gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Reads `/proc/PID/stat`, or `None` when the process does not exist.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses one `/proc/PID/stat` line. The name (field 2) is in parentheses and may itself hold
/// spaces or `)`, so the fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22 of the line, the 20th after the name.
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// True when `pid` no longer runs: absent, a zombie, or dead.
pub fn is_gone(pid: u32) -> bool {
    stat(pid).is_none_or(|s| s.is_gone())
}

/// True when `pid`'s environment holds exactly the entry `needle` (`NAME=value`). False for
/// a process that is gone or whose environment this process may not read.
pub fn environ_contains(pid: u32, needle: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|var| var == needle))
        .unwrap_or(false)
}

/// The values of `names` in `pid`'s environment, read once: each `None` where the process
/// has no such variable, is gone, or this process may not read its environment.
pub fn environ_vars<const N: usize>(pid: u32, names: [&str; N]) -> [Option<String>; N] {
    let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    names.map(|name| {
        env.split(|&b| b == 0)
            .find_map(|var| {
                var.strip_prefix(name.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b"="))
            })
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// The short name of a process, from `/proc/PID/comm`.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// A process's name and resident memory, from `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    /// `VmRSS` in bytes (0 for a kernel thread, which has none).
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/status`, or `None` when the process does not exist.
pub fn status(pid: u32) -> Option<Status> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

pub fn parse_status(text: &str) -> Option<Status> {
    let mut name = None;
    let mut rss_bytes = 0;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("Name:") {
            name = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("VmRSS:") {
            rss_bytes = parse_kib(value)?;
        }
    }
    Some(Status {
        name: name?,
        rss_bytes,
    })
}

/// The machine's RAM: `MemTotal` and `MemAvailable`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

/// Reads `/proc/meminfo`.
pub fn meminfo() -> Result<MemInfo, FileError> {
    let path = "/proc/meminfo";
    let text = fs::read_to_string(path).map_err(|e| FileError::new("cannot read", path, e))?;
    parse_meminfo(&text).ok_or_else(|| {
        FileError::new(
            "cannot read",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "MemTotal or MemAvailable is missing",
            ),
        )
    })
}

pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(parse_kib)
    };
    Some(MemInfo {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

/// `  16384 kB` → bytes.
fn parse_kib(value: &str) -> Option<u64> {
    let number = value.trim().strip_suffix("kB")?.trim();
    number.parse::<u64>().ok().map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names_parse() {
        let line =
            "4242 (my (weird) name) S 1 4240 4240 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 1";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 1,
                pgrp: 4240,
                start_ticks: 987654
            }
        );
        assert!(!s.is_gone());
        assert!(
            parse_stat("4242 (x) Z 1 2 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5")
                .unwrap()
                .is_gone()
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = std::process::id();
        assert!(pids().contains(&me));
        let s = stat(me).unwrap();
        assert!(!s.is_gone() && s.start_ticks > 0);
        assert!(!is_gone(me));
        let status = status(me).unwrap();
        assert!(status.rss_bytes > 0);
        assert_eq!(comm(me).unwrap(), status.name);
        // A variable this test sets in its own environment is not in /proc yet (environ is
        // the one the process started with), but PATH is.
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(environ_contains(me, format!("PATH={path}").as_bytes()));
        assert!(!environ_contains(me, b"BATON_NO_SUCH_VARIABLE=1"));
    }

    #[test]
    fn a_pid_that_does_not_exist_is_gone() {
        // PIDs never reach u32::MAX (the kernel's limit is 2^22).
        assert!(is_gone(u32::MAX - 1));
        assert_eq!(stat(u32::MAX - 1), None);
        assert_eq!(status(u32::MAX - 1), None);
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(MemInfo {
                total: 24_000_000 * 1024,
                available: 20_000_000 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn meminfo_and_status_text() {
        let m =
            parse_meminfo("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable: 500 kB\n").unwrap();
        assert_eq!((m.total, m.available), (1000 * 1024, 500 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        let live = meminfo().unwrap();
        assert!(live.total > 0 && live.available <= live.total);
        let s = parse_status("Name:\tsleep\nVmRSS:\t  2048 kB\n").unwrap();
        assert_eq!((s.name.as_str(), s.rss_bytes), ("sleep", 2 << 20));
        assert_eq!(parse_status("Name:\tkthreadd\n").unwrap().rss_bytes, 0);
    }
}
