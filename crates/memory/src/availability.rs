//! Will a need fit on a device, now or ever? The seed's `check_vram_availability`, made into a
//! verdict that carries its numbers.
//!
//! The rule, shared with the runner's placement: a need fits when the bytes plus the device's
//! context overhead are at most a usable fraction (default 80%) of the free memory. The margin
//! absorbs what a driver, a fragmentation or a late allocation costs beyond the estimate. A
//! need that would not fit even on the empty device can never fit, and waiting for it is futile.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{DeviceSnapshot, MemoryBackend, MemoryError};
use baton_base::format_bytes;

/// The share of free memory a need may take, by default.
pub const DEFAULT_USABLE_FRACTION: f64 = 0.8;

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It fits now.
    Fits,
    /// It does not fit now, but would on this device once others free memory.
    Wait,
    /// It would not fit even on the empty device.
    Never,
}

/// A verdict and the numbers it was drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// The device, as messages name it (`gpu0`, `sim1`, `host0`).
    pub device: String,
    pub verdict: Verdict,
    /// Bytes asked for.
    pub needed: u64,
    /// Bytes a new process pays on the device before its first allocation.
    pub context_overhead: u64,
    pub free: u64,
    pub total: u64,
    /// The share of free (or total) memory a need may take.
    pub usable_fraction: f64,
}

impl Availability {
    /// Judges a need against one reading of a device.
    pub fn judge(
        snapshot: &DeviceSnapshot,
        needed: u64,
        context_overhead: u64,
        usable_fraction: f64,
    ) -> Self {
        let required = needed.saturating_add(context_overhead) as f64;
        let verdict = if required <= snapshot.free as f64 * usable_fraction {
            Verdict::Fits
        } else if required <= snapshot.total as f64 * usable_fraction {
            Verdict::Wait
        } else {
            Verdict::Never
        };
        Availability {
            device: snapshot.label(),
            verdict,
            needed,
            context_overhead,
            free: snapshot.free,
            total: snapshot.total,
            usable_fraction,
        }
    }

    pub fn fits(&self) -> bool {
        self.verdict == Verdict::Fits
    }

    /// Bytes that must come free before the need fits (0 when it fits).
    pub fn short_by(&self) -> u64 {
        let required = self.needed.saturating_add(self.context_overhead) as f64;
        (required / self.usable_fraction - self.free as f64)
            .max(0.0)
            .ceil() as u64
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.verdict {
            Verdict::Fits => "fits on",
            Verdict::Wait | Verdict::Never => "not enough free memory on",
        };
        write!(
            f,
            "{state} {}: needs {} + {} context = {}, {} free of {} (at most {:.0}% of free memory is used)",
            self.device,
            format_bytes(self.needed),
            format_bytes(self.context_overhead),
            format_bytes(self.needed.saturating_add(self.context_overhead)),
            format_bytes(self.free),
            format_bytes(self.total),
            self.usable_fraction * 100.0
        )
    }
}

/// Checks whether `needed` bytes fit on device `index` now. The seed's
/// `check_vram_availability`.
pub fn check_available(
    backend: &dyn MemoryBackend,
    index: usize,
    needed: u64,
) -> Result<Availability, MemoryError> {
    let snapshot = backend.device(index)?;
    Ok(Availability::judge(
        &snapshot,
        needed,
        backend.context_overhead(),
        DEFAULT_USABLE_FRACTION,
    ))
}

/// How often [`wait_available`] reads the device.
pub const WAIT_POLL: Duration = Duration::from_millis(100);

/// Waits until `needed` bytes fit on device `index`, for at most `timeout`. Fails at once when
/// the need can never fit there; logs what it waits for, and who holds the memory, every 10 s.
pub fn wait_available(
    backend: &dyn MemoryBackend,
    index: usize,
    needed: u64,
    timeout: Duration,
) -> Result<Availability, MemoryError> {
    let started = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        let snapshot = backend.device(index)?;
        let availability = Availability::judge(
            &snapshot,
            needed,
            backend.context_overhead(),
            DEFAULT_USABLE_FRACTION,
        );
        match availability.verdict {
            Verdict::Fits => return Ok(availability),
            Verdict::Never => return Err(MemoryError::NeverFits(availability)),
            Verdict::Wait => {}
        }
        let waited = started.elapsed();
        let holders = snapshot.describe_holders(3);
        if waited >= timeout {
            return Err(MemoryError::WaitTimedOut {
                availability,
                waited,
                holders: if holders.is_empty() {
                    String::new()
                } else {
                    format!("; held by {holders}")
                },
            });
        }
        if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::info!(
                "{availability}; waiting up to {}s for {} more to come free (held by: {})",
                timeout.as_secs(),
                format_bytes(availability.short_by()),
                if holders.is_empty() {
                    "no process baton can see"
                } else {
                    &holders
                }
            );
            last_log = Some(Instant::now());
        }
        std::thread::sleep(WAIT_POLL.min(timeout.saturating_sub(waited)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendKind;

    fn device(total: u64, free: u64) -> DeviceSnapshot {
        DeviceSnapshot {
            backend: BackendKind::Sim,
            index: 1,
            name: "test".into(),
            uuid: "sim-1".into(),
            total,
            used: total - free,
            free,
            reserved: 0,
            utilization: None,
            sensors: Default::default(),
            processes: vec![],
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn verdicts_count_context_and_margin() {
        // 24 GiB card, 20 GiB free: 15 GiB + 0.5 GiB context = 15.5 <= 16 → fits.
        let fits = Availability::judge(&device(24 * GIB, 20 * GIB), 15 * GIB, GIB / 2, 0.8);
        assert_eq!(fits.verdict, Verdict::Fits);
        assert_eq!(fits.short_by(), 0);
        // 16 GiB + 0.5 context = 16.5 > 16 → wait, though 16 GiB is "free".
        let wait = Availability::judge(&device(24 * GIB, 20 * GIB), 16 * GIB, GIB / 2, 0.8);
        assert_eq!(wait.verdict, Verdict::Wait);
        assert!(wait.short_by() > 0);
        // 19 GiB + 0.5 > 0.8 * 24 = 19.2 → never.
        let never = Availability::judge(&device(24 * GIB, 24 * GIB), 19 * GIB, GIB / 2, 0.8);
        assert_eq!(never.verdict, Verdict::Never);
        let text = never.to_string();
        assert!(
            text.contains("sim1") && text.contains("19.0 GiB") && text.contains("19.5 GiB"),
            "{text}"
        );
    }
}
