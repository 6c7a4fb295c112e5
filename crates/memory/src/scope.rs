//! Proving memory came back: the seed's `VRAMContext`, `@managed_execution`, `force_cleanup`
//! and `cleanup_model`.
//!
//! A [`MemoryScope`] reads what this process holds on a device when it starts, and when it ends
//! it cleans up (the backend's trim) and polls until the process is back to that baseline
//! within a tolerance, or a settle timeout passes. The verdict is a [`ScopeReport`] carrying
//! the numbers, logged either way, never a silent hope. It measures this process, not the whole
//! device, so another process's allocations cannot hide a leak or fake one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{MemoryBackend, MemoryError};
use baton_base::format_bytes;

/// Default slack between the baseline and what is held after cleanup.
pub const DEFAULT_TOLERANCE: u64 = 32 << 20;
/// Default time allowed for freed memory to show as free (a GPU driver takes milliseconds).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
const SETTLE_POLL: Duration = Duration::from_millis(5);

/// What a scope found when it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeReport {
    pub label: String,
    /// The device, as messages name it (`gpu0`, `sim1`, `host0`).
    pub device: String,
    pub pid: u32,
    /// Bytes this process held on the device when the scope began.
    pub baseline: u64,
    /// Bytes it held when the scope ended, before cleanup.
    pub at_end: u64,
    /// Bytes it held after cleanup and settling.
    pub after: u64,
    pub tolerance: u64,
    /// Device-wide used bytes at the start and after cleanup, for the log.
    pub device_used_before: u64,
    pub device_used_after: u64,
    /// How long the scope was open.
    pub held_for: Duration,
    /// How long cleanup and verification took.
    pub settled_in: Duration,
}

impl ScopeReport {
    /// Bytes still held above the baseline.
    pub fn excess(&self) -> u64 {
        self.after.saturating_sub(self.baseline)
    }

    /// True when more than the tolerance is still held.
    pub fn is_leak(&self) -> bool {
        self.excess() > self.tolerance
    }

    /// Bytes returned between the end of the scope and the verification.
    pub fn freed(&self) -> u64 {
        self.at_end.saturating_sub(self.after)
    }

    /// The report, or [`MemoryError::Leak`] when it is a leak.
    pub fn into_result(self) -> Result<ScopeReport, MemoryError> {
        if self.is_leak() {
            Err(MemoryError::Leak(Box::new(self)))
        } else {
            Ok(self)
        }
    }
}

impl std::fmt::Display for ScopeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_leak() {
            write!(
                f,
                "leak in '{}' on {}: pid {} held {} at the start and still holds {} after cleanup (+{}, tolerance {}, waited {:.0?}); find what keeps it alive, or drop it before the scope ends",
                self.label,
                self.device,
                self.pid,
                format_bytes(self.baseline),
                format_bytes(self.after),
                format_bytes(self.excess()),
                format_bytes(self.tolerance),
                self.settled_in,
            )
        } else {
            write!(
                f,
                "memory back after '{}' on {}: {} freed, pid {} holds {} (baseline {}), verified in {:.1?}",
                self.label,
                self.device,
                format_bytes(self.freed()),
                self.pid,
                format_bytes(self.after),
                format_bytes(self.baseline),
                self.settled_in,
            )
        }
    }
}

/// A region whose memory must be back when it ends. The seed's `VRAMContext`.
///
/// End it with [`MemoryScope::finish`] to get the verdict; dropping it unfinished verifies
/// too, and logs the verdict.
pub struct MemoryScope {
    backend: Arc<dyn MemoryBackend>,
    index: usize,
    device: String,
    label: String,
    pid: u32,
    baseline: u64,
    device_used_before: u64,
    tolerance: u64,
    settle: Duration,
    started: Instant,
    finished: bool,
}

impl MemoryScope {
    /// Opens a scope on device `index`, logging the device and taking this process's baseline.
    pub fn new(
        backend: Arc<dyn MemoryBackend>,
        index: usize,
        label: &str,
    ) -> Result<Self, MemoryError> {
        let pid = std::process::id();
        let snapshot = backend.device(index)?;
        let baseline = backend.process_usage(index, pid)?;
        tracing::info!(
            "[{label}] before: {}; this process holds {}",
            snapshot.summary(),
            format_bytes(baseline)
        );
        Ok(MemoryScope {
            device: snapshot.label(),
            device_used_before: snapshot.used,
            backend,
            index,
            label: label.to_string(),
            pid,
            baseline,
            tolerance: DEFAULT_TOLERANCE,
            settle: DEFAULT_SETTLE,
            started: Instant::now(),
            finished: false,
        })
    }

    /// Sets the slack allowed above the baseline.
    pub fn with_tolerance(mut self, bytes: u64) -> Self {
        self.tolerance = bytes;
        self
    }

    /// Sets how long freed memory may take to show as free.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Bytes this process held when the scope began.
    pub fn baseline(&self) -> u64 {
        self.baseline
    }

    /// Ends the scope: cleans up, waits for memory to come back, and returns the verdict,
    /// logged at error level when it is a leak.
    pub fn finish(mut self) -> Result<ScopeReport, MemoryError> {
        self.finished = true;
        self.verify()
    }

    fn verify(&self) -> Result<ScopeReport, MemoryError> {
        let held_for = self.started.elapsed();
        let at_end = self.backend.process_usage(self.index, self.pid)?;
        let settle_start = Instant::now();
        self.backend.trim()?;
        let limit = self.baseline.saturating_add(self.tolerance);
        let mut after = self.backend.process_usage(self.index, self.pid)?;
        while after > limit && settle_start.elapsed() < self.settle {
            std::thread::sleep(SETTLE_POLL);
            after = self.backend.process_usage(self.index, self.pid)?;
        }
        let settled_in = settle_start.elapsed();
        let snapshot = self.backend.device(self.index)?;
        let report = ScopeReport {
            label: self.label.clone(),
            device: self.device.clone(),
            pid: self.pid,
            baseline: self.baseline,
            at_end,
            after,
            tolerance: self.tolerance,
            device_used_before: self.device_used_before,
            device_used_after: snapshot.used,
            held_for,
            settled_in,
        };
        if report.is_leak() {
            tracing::error!("[{}] {report}", self.label);
        } else {
            tracing::info!("[{}] after: {}; {report}", self.label, snapshot.summary());
        }
        Ok(report)
    }
}

impl Drop for MemoryScope {
    fn drop(&mut self) {
        if !self.finished
            && let Err(err) = self.verify()
        {
            tracing::error!(
                "[{}] could not verify memory on {}: {err}",
                self.label,
                self.device
            );
        }
    }
}

/// What a cleanup gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freed {
    /// Bytes this process held before.
    pub before: u64,
    /// Bytes it held after.
    pub after: u64,
}

impl Freed {
    pub fn bytes(&self) -> u64 {
        self.before.saturating_sub(self.after)
    }
}

/// Gives back what this process has freed but still caches, and reports how much came back.
/// The seed's `force_cleanup`.
pub fn cleanup(backend: &dyn MemoryBackend, index: usize) -> Result<Freed, MemoryError> {
    cleanup_model(backend, index, ())
}

/// Drops `model`, then cleans up; the report counts the model's memory. The seed's
/// `cleanup_model`: in Rust, freeing a model means dropping the last owner of it.
pub fn cleanup_model<T>(
    backend: &dyn MemoryBackend,
    index: usize,
    model: T,
) -> Result<Freed, MemoryError> {
    let pid = std::process::id();
    let before = backend.process_usage(index, pid)?;
    drop(model);
    backend.trim()?;
    let after = backend.process_usage(index, pid)?;
    let freed = Freed { before, after };
    tracing::info!(
        "cleanup on device {index}: {} freed, this process holds {}",
        format_bytes(freed.bytes()),
        format_bytes(after)
    );
    Ok(freed)
}

/// Runs `work` inside a [`MemoryScope`] and returns its value with the scope's verdict. The
/// seed's `@managed_execution`.
pub fn managed<T>(
    backend: Arc<dyn MemoryBackend>,
    index: usize,
    label: &str,
    work: impl FnOnce() -> T,
) -> Result<(T, ScopeReport), MemoryError> {
    let scope = MemoryScope::new(backend, index, label)?;
    let value = work();
    let report = scope.finish()?;
    Ok((value, report))
}
