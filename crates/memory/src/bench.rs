//! What one reading costs, per backend: `baton bench snapshot` and `cargo bench` print it.
//!
//! `baton watch` and the runner's sampler read devices many times a second, so a snapshot's
//! cost is a budget: at 10 Hz, 2 ms a reading is 2% of a core.

use std::time::{Duration, Instant};

use crate::{MemoryBackend, MemoryError};

/// Timings of repeated snapshots of one backend.
#[derive(Debug, Clone)]
pub struct SnapshotCost {
    /// `nvml`, `host` or `sim`.
    pub backend: &'static str,
    /// The backend's own description (driver version, device count).
    pub description: String,
    pub devices: usize,
    pub processes: usize,
    pub iterations: usize,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub max: Duration,
}

impl SnapshotCost {
    /// Share of one core spent reading at `hz` readings a second, in percent.
    pub fn core_percent_at(&self, hz: f64) -> f64 {
        self.median.as_secs_f64() * hz * 100.0
    }
}

/// Takes `iterations` full snapshots (every device, with process rows) after a few warm-ups.
pub fn measure_snapshot(
    backend: &dyn MemoryBackend,
    iterations: usize,
) -> Result<SnapshotCost, MemoryError> {
    let iterations = iterations.max(1);
    let mut last = Vec::new();
    for _ in 0..3 {
        last = backend.snapshot()?;
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        last = std::hint::black_box(backend.snapshot()?);
        times.push(start.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(SnapshotCost {
        backend: backend.kind().name(),
        description: backend.description(),
        devices: last.len(),
        processes: last.iter().map(|d| d.processes.len()).sum(),
        iterations,
        min: times[0],
        median: at(0.5),
        p90: at(0.9),
        max: times[times.len() - 1],
    })
}

/// Measures every backend this machine has: host RAM, four simulated GPUs with a process on
/// each (in a private folder, removed afterwards), and NVML when a driver answers. Returns the
/// costs and, for each backend left out, why.
pub fn measure_all(iterations: usize) -> Result<(Vec<SnapshotCost>, Vec<String>), MemoryError> {
    let mut costs = vec![measure_snapshot(
        &crate::host::HostBackend::new(),
        iterations,
    )?];
    let mut skipped = Vec::new();
    let dir = std::env::temp_dir().join(format!("baton-bench-sim-{}", std::process::id()));
    let sim_cost = (|| {
        let sim = crate::sim::SimBackend::open(&dir, Some("4x24GiB"))?;
        let _held = (0..4)
            .map(|d| sim.allocate(d, 1 << 30, "bench"))
            .collect::<Result<Vec<_>, _>>()?;
        measure_snapshot(&sim, iterations)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    costs.push(sim_cost?);
    match crate::nvml::NvmlBackend::open() {
        Ok(nvml) => costs.push(measure_snapshot(&nvml, iterations)?),
        Err(err) => skipped.push(format!("nvml: {err}")),
    }
    Ok((costs, skipped))
}

/// Renders costs as a table, with the share of a core `baton watch` would spend at 10 Hz.
pub fn render_table(costs: &[SnapshotCost]) -> String {
    let mut out = format!(
        "{:<8} {:>7} {:>9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>11}\n",
        "backend", "devices", "processes", "iters", "min", "median", "p90", "max", "core@10Hz"
    );
    for c in costs {
        out.push_str(&format!(
            "{:<8} {:>7} {:>9} {:>6} {:>10.3?} {:>10.3?} {:>10.3?} {:>10.3?} {:>10.2}%\n",
            c.backend,
            c.devices,
            c.processes,
            c.iterations,
            c.min,
            c.median,
            c.p90,
            c.max,
            c.core_percent_at(10.0)
        ));
    }
    for c in costs {
        out.push_str(&format!("{}: {}\n", c.backend, c.description));
    }
    out
}
