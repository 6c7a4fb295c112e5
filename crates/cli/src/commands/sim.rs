//! `baton sim hold` and `baton sim work`: processes that hold simulated GPU memory, to build
//! scenarios (a busy card, a leak, an orphan, a mock model in a pipeline) from scripts and tests.
//!
//! `--orphan` starts a detached copy of itself in a new session, waits until that copy reports
//! its allocation, and exits: the copy then holds the memory with no parent baton knows of,
//! which is exactly what a stage's forgotten grandchild looks like to the runner.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use baton_base::format_bytes;
use baton_memory::sim::SimBackend;

use crate::args::{HoldArgs, WorkArgs};

pub fn hold(args: &HoldArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(seconds) = args.seconds
        && !(0.0..=31_536_000.0).contains(&seconds)
    {
        return Err(crate::BadInput(format!(
            "bad --seconds '{seconds}': use a number of seconds from 0 to 31536000"
        ))
        .into());
    }
    if args.orphan {
        return spawn_orphan(args, out);
    }
    if args.leak {
        let sim = SimBackend::from_env()?;
        sim.leak(args.device, args.size, &args.label)?;
        writeln!(
            out,
            "leaked {} on sim{}: used, but owned by no process, until `baton sim reset`",
            format_bytes(args.size),
            args.device
        )?;
        return Ok(());
    }
    let allocated = SimBackend::from_env()
        .and_then(|sim| Ok((sim.allocate(args.device, args.size, &args.label)?, sim)));
    let (held, sim) = match allocated {
        Ok(held) => held,
        Err(err) => {
            if args.orphan_child {
                // The parent reads our stdout only; stderr goes nowhere.
                writeln!(out, "{err}")?;
            }
            return Err(err.into());
        }
    };
    let pid = std::process::id();
    if args.orphan_child {
        // Tell the parent we hold the memory, then let go of its pipe.
        writeln!(out, "ready {pid}")?;
        out.flush()?;
        detach_stdout();
    } else {
        writeln!(
            out,
            "pid {pid} holds {} on sim{} ({}), {}",
            format_bytes(held.bytes()),
            args.device,
            sim.dir().display(),
            match args.seconds {
                Some(s) => format!("for {s}s"),
                None => "until killed".to_string(),
            }
        )?;
        out.flush()?;
    }
    match args.seconds {
        Some(seconds) => std::thread::sleep(Duration::from_secs_f64(seconds)),
        None => loop {
            std::thread::park();
        },
    }
    drop(held);
    Ok(())
}

fn spawn_orphan(args: &HoldArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find baton's own executable")?;
    let mut command = Command::new(exe);
    command
        .args(["sim", "hold", &args.size.to_string(), "--orphan-child"])
        .args(["--device", &args.device.to_string(), "--label", &args.label])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(seconds) = args.seconds {
        command.args(["--seconds", &seconds.to_string()]);
    }
    // SAFETY: setsid is async-signal-safe; the child gets its own session, so neither a
    // terminal hang-up nor a signal to our process group reaches it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the orphan holder")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(pid) = line.trim().strip_prefix("ready ") else {
        let status = child.wait()?;
        if status.code() == Some(2) {
            return Err(crate::BadInput(line.trim().to_string()).into());
        }
        bail!(
            "the orphan holder failed ({status}){}",
            if line.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", line.trim())
            }
        );
    };
    writeln!(
        out,
        "orphan pid {pid} holds {} on sim{}, {}; its parent (this process) has exited",
        format_bytes(args.size),
        args.device,
        match args.seconds {
            Some(s) => format!("for {s}s"),
            None => format!("until killed (kill {pid})"),
        }
    )?;
    Ok(())
}

/// Points stdout at /dev/null, so the parent that read our "ready" line can close its end.
fn detach_stdout() {
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces stdout atomically; `null` stays open until then.
        unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}

/// `baton sim reset`: frees leaked simulated memory.
pub fn reset(out: &mut dyn Write) -> anyhow::Result<()> {
    let sim = SimBackend::from_env()?;
    let freed = sim.reset()?;
    writeln!(
        out,
        "freed {} of leaked memory in {}",
        format_bytes(freed),
        sim.dir().display()
    )?;
    Ok(())
}

/// `baton sim work`: the seed's mock model, as a stage program for pipelines on simulated GPUs.
pub fn work(args: &WorkArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(marker) = &args.fail_once
        && !marker.exists()
    {
        std::fs::write(marker, b"failed once\n")?;
        bail!(
            "crashing on purpose (--fail-once): '{}' did not exist; it does now",
            marker.display()
        );
    }
    if let Some(go) = &args.wait_for {
        while !go.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let sim = SimBackend::from_env()?;
    // Started ahead of its turn: a context is made, then the go awaited, as a real stage does.
    let mut granted = None;
    let _context = if std::env::var_os(baton_base::protocol::GO_FD_VAR).is_some() {
        let context = sim.allocate(
            args.device,
            baton_memory::sim::SIM_CONTEXT_OVERHEAD,
            "sim work context",
        )?;
        std::thread::sleep(Duration::from_secs_f64(args.prepare.max(0.0)));
        out.flush()?;
        granted = baton_base::protocol::await_go()?;
        Some(context)
    } else {
        None
    };
    let held = sim.allocate(args.device, args.size, "sim work")?;
    writeln!(
        out,
        "holding {} on sim{}",
        format_bytes(held.bytes()),
        args.device
    )?;
    out.flush()?;
    let steps = args.steps.max(1);
    for step in 1..=steps {
        std::thread::sleep(Duration::from_secs_f64(
            args.seconds.max(0.0) / steps as f64,
        ));
        if args.steps > 0 {
            writeln!(
                out,
                "{}",
                baton_base::protocol::StageLine::progress(step, steps, format!("step {step}"))
            )?;
            out.flush()?;
        }
    }
    for path in &args.write {
        let body = serde_json::json!({
            "stage": std::env::var("BATON_STAGE").ok(),
            "topic": std::env::var("BATON_TOPIC").ok(),
            "device": format!("sim{}", args.device),
            "bytes": args.size,
            "granted": granted,
        });
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        baton_base::atomic_file::write_atomic(
            path,
            serde_json::to_string_pretty(&body)?.as_bytes(),
        )?;
    }
    if let Some(bytes) = args.leak {
        sim.leak(args.device, bytes, "sim work --leak")?;
    }
    if let Some(bytes) = args.orphan {
        let hold = HoldArgs {
            size: bytes,
            device: args.device,
            seconds: None,
            orphan: true,
            leak: false,
            label: "sim work --orphan".into(),
            orphan_child: false,
        };
        spawn_orphan(&hold, out)?;
    }
    drop(held);
    if args.exit != 0 {
        eprintln!("exiting with status {} on purpose (--exit)", args.exit);
        std::process::exit(args.exit.into());
    }
    Ok(())
}
