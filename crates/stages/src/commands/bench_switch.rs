//! `baton bench switch`: the demo's two modes, repeated, as a table.

use std::io::Write;

/// `baton bench switch`: each mode `repeat` times; median and spread of the switch latency,
/// the memory left after release, and the peak.
pub fn switch(
    repeat: usize,
    size: u64,
    device: baton_memory::DeviceChoice,
    json: Option<&std::path::Path>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::switch::{ModeResult, in_process, processes};
    let (target, why) = crate::switch::choose_target(device)?;
    let repeat = repeat.max(1);
    let mut modes: Vec<(&str, Vec<ModeResult>)> =
        vec![("processes", Vec::new()), ("in-process", Vec::new())];
    for _ in 0..repeat {
        modes[0].1.push(processes(target, size, 64 << 20)?);
    }
    for _ in 0..repeat {
        modes[1].1.push(in_process(target, size, 64 << 20, false)?);
    }
    let column = |runs: &[ModeResult], f: fn(&ModeResult) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    if let Some(path) = json {
        let body: serde_json::Map<String, serde_json::Value> = modes
            .iter()
            .map(|(name, runs)| {
                (
                    name.to_string(),
                    serde_json::json!({
                        "switch_seconds": column(runs, |r| r.switch_seconds),
                        "left_after_release": column(runs, |r| r.left_after_release as f64),
                        "peak": column(runs, |r| r.peak as f64),
                        "baseline": column(runs, |r| r.baseline as f64),
                        // The process makes its CUDA context once (the first in-process run)
                        // and keeps it: later runs find it made and measure nothing.
                        "context": runs.iter().filter_map(|r| r.context).max(),
                        "verified": runs.iter().all(|r| r.verified),
                    }),
                )
            })
            .collect();
        let doc = serde_json::json!({"tool": "baton", "target": target, "size": size, "repeat": repeat, "modes": body});
        baton_base::atomic_file::write_atomic(
            path,
            serde_json::to_string_pretty(&doc)?.as_bytes(),
        )?;
    }
    writeln!(
        out,
        "baton bench switch: {} mock models {why}, {repeat} run(s) per mode",
        baton_base::format_bytes(size)
    )?;
    writeln!(
        out,
        "{:<11} {:>24} {:>30} {:>22}",
        "MODE", "SWITCH ms median (range)", "LEFT AFTER RELEASE median", "PEAK median"
    )?;
    for (name, runs) in &modes {
        let switch = column(runs, |r| r.switch_seconds * 1000.0);
        let left = column(runs, |r| r.left_after_release as f64);
        let peak = column(runs, |r| r.peak as f64);
        let mid = |v: &[f64]| v[v.len() / 2];
        writeln!(
            out,
            "{:<11} {:>24} {:>30} {:>22}",
            name,
            format!(
                "{:.1} ({:.1}–{:.1})",
                mid(&switch),
                switch[0],
                switch[switch.len() - 1]
            ),
            baton_base::format_bytes(mid(&left) as u64),
            baton_base::format_bytes(mid(&peak) as u64)
        )?;
    }
    Ok(())
}
