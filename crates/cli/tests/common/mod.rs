//! Helpers for tests that drive the real `baton` binary and real child processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `baton` with a private simulation in `dir`.
pub fn baton(dir: &Path, gpus: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.env("BATON_SIM_DIR", dir)
        .env("BATON_SIM_GPUS", gpus)
        .env_remove("BATON_LOG");
    cmd
}

/// A child process killed (and reaped) when the test ends, pass or fail.
pub struct Holder {
    pub child: Child,
    pub first_line: String,
}

impl Holder {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `baton sim hold ARGS…` and waits for the line that says it holds the memory.
pub fn hold(dir: &Path, gpus: &str, args: &[&str]) -> Holder {
    let mut cmd = baton(dir, gpus);
    cmd.args(["sim", "hold"]).args(args);
    let holder = started(cmd);
    assert!(
        holder.first_line.contains("holds"),
        "unexpected first line: {:?}",
        holder.first_line
    );
    holder
}

/// Starts `cmd` and waits for the first line it prints; it is killed when the holder goes.
pub fn started(mut cmd: Command) -> Holder {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the command");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Holder {
        child,
        first_line: line,
    }
}

/// Polls `condition` every 10 ms for up to 10 s.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// Sends SIGKILL to a process that is not our child.
pub fn kill_pid(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

pub const GIB: u64 = 1 << 30;

/// Live processes started for the run folder `run` (every stage process has it in
/// `BATON_RUN_DIR`).
pub fn processes_of(run: &Path) -> Vec<u32> {
    processes_with(&format!("BATON_RUN_DIR={}", run.display()), |_| true)
}

/// Live processes whose environment holds the entry `entry` (`NAME=value`) and passes `also`
/// (given the whole environment).
pub fn processes_with(entry: &str, also: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let needle = entry.as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false);
            alive
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|&b| b == 0).any(|v| v == needle) && also(&env))
                    .unwrap_or(false)
        })
        .collect()
}

/// Memory held on the simulated GPUs of `dir`.
pub fn sim_used(dir: &Path) -> u64 {
    let out = baton(dir, "1x24GiB")
        .args(["stats", "--device", "sim", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["used"].as_u64().unwrap())
        .sum()
}
