//! `baton metrics`: the devices baton reads as Prometheus text, once or served over HTTP. Device
//! memory, utilisation, temperature, power and clocks under DCGM exporter's names
//! (`DCGM_FI_DEV_FB_USED`, `…_FB_FREE`, `…_GPU_UTIL`, `…_GPU_TEMP`, `…_POWER_USAGE`,
//! `…_SM_CLOCK`, `…_MEM_CLOCK`, in its units), so existing dashboards work; and what DCGM cannot say: each
//! process's memory, and each running baton stage's (the processes whose environment names its
//! run and stage, as the runner starts them). The HTTP side is a few lines over std's
//! `TcpListener`: the supervisor links no HTTP stack.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use baton_memory::{BackendKind, DeviceSnapshot, MemoryBackend};

use crate::BadInput;
use crate::args::MetricsArgs;

pub fn metrics(args: &MetricsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let opened = baton_memory::open(args.device.device)?;
    let backend = opened.backend;
    let Some(addr) = &args.serve else {
        out.write_all(exposition(&*backend, &args.device)?.as_bytes())?;
        return Ok(());
    };
    let listener = TcpListener::bind(addr).map_err(|e| {
        BadInput(format!(
            "--serve {addr}: {e}; give a free HOST:PORT, e.g. 127.0.0.1:9400"
        ))
    })?;
    writeln!(
        out,
        "serving Prometheus metrics of {} at http://{}/metrics (Ctrl-C stops)",
        backend.kind().name(),
        listener.local_addr()?
    )?;
    out.flush()?;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, &*backend, &args.device) {
                    tracing::warn!("a metrics request failed: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot accept a metrics connection: {e}"),
        }
    }
    Ok(())
}

/// One HTTP request: `GET /metrics` gets a fresh reading, anything else 404 or 405.
fn answer(
    mut stream: TcpStream,
    backend: &dyn MemoryBackend,
    select: &crate::args::DeviceArg,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match exposition(backend, select) {
            Ok(text) => ("200 OK", text),
            Err(e) => ("500 Internal Server Error", format!("{e}\n")),
        },
        ("GET", _) => ("404 Not Found", "baton serves /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its help, type and samples (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// The text of one reading of every device.
pub fn exposition(
    backend: &dyn MemoryBackend,
    select: &crate::args::DeviceArg,
) -> anyhow::Result<String> {
    let devices = select.select(backend.snapshot()?)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mib = |b: u64| (b / (1 << 20)) as f64;
    let mut families = [
        Family {
            name: "DCGM_FI_DEV_FB_USED",
            help: "Framebuffer memory used (in MiB).",
            samples: Vec::new(),
        },
        Family {
            name: "DCGM_FI_DEV_FB_FREE",
            help: "Framebuffer memory free (in MiB).",
            samples: Vec::new(),
        },
        Family {
            name: "DCGM_FI_DEV_GPU_UTIL",
            help: "GPU utilization (in %).",
            samples: Vec::new(),
        },
        Family {
            name: "DCGM_FI_DEV_GPU_TEMP",
            help: "GPU temperature (in C).",
            samples: Vec::new(),
        },
        Family {
            name: "DCGM_FI_DEV_POWER_USAGE",
            help: "Power draw (in W).",
            samples: Vec::new(),
        },
        Family {
            name: "DCGM_FI_DEV_SM_CLOCK",
            help: "SM clock frequency (in MHz).",
            samples: Vec::new(),
        },
        Family {
            name: "DCGM_FI_DEV_MEM_CLOCK",
            help: "Memory clock frequency (in MHz).",
            samples: Vec::new(),
        },
        Family {
            name: "baton_device_memory_total_bytes",
            help: "The device's memory, in bytes.",
            samples: Vec::new(),
        },
        Family {
            name: "baton_process_memory_bytes",
            help: "Memory a process holds on the device, in bytes (run and stage: the baton stage it belongs to, if any).",
            samples: Vec::new(),
        },
        Family {
            name: "baton_stage_memory_bytes",
            help: "Memory a running baton stage's processes hold on the device, in bytes.",
            samples: Vec::new(),
        },
    ];
    for d in &devices {
        let device_labels = device_labels(d, &host);
        families[0]
            .samples
            .push((device_labels.clone(), mib(d.used)));
        families[1]
            .samples
            .push((device_labels.clone(), mib(d.free)));
        if let Some(u) = d.utilization {
            families[2].samples.push((device_labels.clone(), u as f64));
        }
        let sensors = [
            d.sensors.temperature_c.map(f64::from),
            d.sensors.power_w,
            d.sensors.sm_clock_mhz.map(f64::from),
            d.sensors.memory_clock_mhz.map(f64::from),
        ];
        for (family, value) in families[3..7].iter_mut().zip(sensors) {
            if let Some(v) = value {
                family.samples.push((device_labels.clone(), v));
            }
        }
        families[7]
            .samples
            .push((device_labels.clone(), d.total as f64));
        let mut stages: Vec<((String, String), u64)> = Vec::new();
        for p in &d.processes {
            let Some(bytes) = p.bytes else { continue };
            let [run, stage] =
                baton_base::procfs::environ_vars(p.pid, ["BATON_RUN_ID", "BATON_STAGE"])
                    .map(Option::unwrap_or_default);
            families[8].samples.push((
                format!(
                    "gpu=\"{}\",uuid=\"{}\",pid=\"{}\",name=\"{}\",run=\"{}\",stage=\"{}\"",
                    d.index,
                    escape(&d.uuid),
                    p.pid,
                    escape(&p.name),
                    escape(&run),
                    escape(&stage)
                ),
                bytes as f64,
            ));
            if !stage.is_empty() {
                match stages.iter_mut().find(|(k, _)| k.0 == run && k.1 == stage) {
                    Some((_, total)) => *total += bytes,
                    None => stages.push(((run, stage), bytes)),
                }
            }
        }
        for ((run, stage), bytes) in stages {
            families[9].samples.push((
                format!(
                    "gpu=\"{}\",uuid=\"{}\",run=\"{}\",stage=\"{}\"",
                    d.index,
                    escape(&d.uuid),
                    escape(&run),
                    escape(&stage)
                ),
                bytes as f64,
            ));
        }
    }
    let mut text = String::new();
    for f in &families {
        let _ = writeln!(text, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(text, "# TYPE {} gauge", f.name);
        for (labels, value) in &f.samples {
            let _ = writeln!(text, "{}{{{labels}}} {value}", f.name);
        }
    }
    Ok(text)
}

/// DCGM exporter's labels for a device, in snake case (DCGM writes `UUID`, `modelName` and
/// `Hostname`, which `promtool check metrics` refuses; a relabel rule maps them back): its
/// index, UUID, `nvidiaN` device name, model name and host; and baton's backend (nvml, sim,
/// host, cuda).
fn device_labels(d: &DeviceSnapshot, host: &str) -> String {
    let device = match d.backend {
        BackendKind::Nvml | BackendKind::Cuda => format!("nvidia{}", d.index),
        other => format!("{}{}", other.name(), d.index),
    };
    format!(
        "gpu=\"{}\",uuid=\"{}\",device=\"{}\",model_name=\"{}\",hostname=\"{}\",backend=\"{}\"",
        d.index,
        escape(&d.uuid),
        escape(&device),
        escape(&d.name),
        escape(host),
        d.backend.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a "b" \c"#), r#"a \"b\" \\c"#);
        assert_eq!(escape("two\nlines"), "two\\nlines");
    }
}
