//! `baton stats`: every device's memory and the processes holding it, as a table or JSON.

use std::io::Write;

use baton_base::format_bytes;
use baton_memory::{DeviceSnapshot, Opened};
use serde::Serialize;

use crate::args::StatsArgs;

/// What `--json` prints: the readings and where they came from.
#[derive(Debug, Serialize)]
pub struct StatsReport<'a> {
    /// When the readings were taken, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub backend: &'static str,
    pub description: String,
    /// Why `auto` did not use NVML, when it did not.
    pub fallback_reason: Option<&'a str>,
    pub devices: &'a [DeviceSnapshot],
}

pub fn stats(args: &StatsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let opened = baton_memory::open(args.device.device)?;
    let devices = args.device.select(opened.backend.snapshot()?)?;
    if args.json {
        let report = StatsReport {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            backend: opened.backend.kind().name(),
            description: opened.backend.description(),
            fallback_reason: opened.fallback_reason.as_deref(),
            devices: &devices,
        };
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&opened, &devices, args.top).as_bytes())?;
    }
    Ok(())
}

/// The header line: which backend, and why when `auto` fell back.
pub fn header(opened: &Opened) -> String {
    match &opened.fallback_reason {
        Some(reason) => format!(
            "{reason}; showing {} instead. Pass --device host to skip the check, or --device sim for simulated GPUs",
            opened.backend.description()
        ),
        None => format!("backend: {}", opened.backend.description()),
    }
}

/// The table: one row per device, then one per process.
pub fn render(opened: &Opened, devices: &[DeviceSnapshot], top: usize) -> String {
    let mut s = header(opened);
    s.push('\n');
    s.push_str(&format!(
        "{:<7} {:<28} {:>23} {:>5} {:>11} {:>11} {:>5}\n",
        "DEVICE", "NAME", "USED / TOTAL", "USED", "FREE", "RESERVED", "UTIL"
    ));
    for d in devices {
        s.push_str(&format!(
            "{:<7} {:<28} {:>23} {:>4.0}% {:>11} {:>11} {:>5}\n",
            d.label(),
            truncate(&d.name, 28),
            format!("{} / {}", format_bytes(d.used), format_bytes(d.total)),
            d.used_percent(),
            format_bytes(d.free),
            format_bytes(d.reserved),
            d.utilization.map_or("-".to_string(), |u| format!("{u}%")),
        ));
        s.push_str(&format!("        {}\n", d.uuid));
    }
    s.push_str(&format!(
        "\n{:<7} {:>8} {:<24} {:>11}\n",
        "DEVICE", "PID", "PROCESS", "MEMORY"
    ));
    let mut any = false;
    for d in devices {
        let shown = if top == 0 {
            d.processes.len()
        } else {
            top.min(d.processes.len())
        };
        for p in &d.processes[..shown] {
            any = true;
            s.push_str(&format!(
                "{:<7} {:>8} {:<24} {:>11}\n",
                d.label(),
                p.pid,
                truncate(&p.name, 24),
                p.bytes.map_or("unknown".to_string(), format_bytes)
            ));
        }
        if shown < d.processes.len() {
            s.push_str(&format!(
                "{:<7} … {} more (--top 0 lists all)\n",
                d.label(),
                d.processes.len() - shown
            ));
        }
    }
    if !any {
        s.push_str("        no process holds memory\n");
    }
    s
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).chain(['…']).collect()
    }
}
