//! `baton demo switch`: the seed's `vram_switch_demo.py`, for real: a "mock LLM" and then a
//! "mock image model" of `--size` each, with proof that the memory came back in between.
//!
//! Two ways, side by side. In-process: both mocks in this process, each inside a
//! `MemoryScope` (the seed's Approach A, with `cleanup()` doing what Rust needs: drop, sync the
//! stream, trim the pool). Processes: each mock in its own child process while this process
//! only reads (NVML on a GPU; it never creates a CUDA context), so the operating system frees
//! everything when the child exits (the seed's Approach B). The mocks live on the GPU (a `cuda`
//! build), in host RAM (no GPU, or a build without CUDA; the first line says which and why), or
//! on simulated GPUs (`--device sim`, for CI).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_base::format_bytes;
use baton_memory::host::HostBackend;
use baton_memory::sim::{SimAllocation, SimBackend};
use baton_memory::{DeviceChoice, MemoryBackend, MemoryScope};
use baton_studio::compute::{CudaBackend, CudaBlock};
use serde::Serialize;

use baton::BadInput;

/// Where the mock models live: what a [`DeviceChoice`] comes to once chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Cuda,
    Host,
    Sim,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Cuda => "cuda",
            Target::Host => "host",
            Target::Sim => "sim",
        }
    }
}

/// Picks where the mocks live, and says why in one line.
pub fn choose_target(choice: DeviceChoice) -> anyhow::Result<(Target, String)> {
    let gpu = || baton_memory::nvml::NvmlBackend::open().map(|n| n.description());
    Ok(match choice {
        DeviceChoice::Sim => (Target::Sim, "on simulated GPUs (--device sim)".to_string()),
        DeviceChoice::Cpu => (Target::Host, "on host memory (--device cpu)".to_string()),
        DeviceChoice::Gpu => {
            let found = gpu()?;
            if !baton_studio::compute::COMPILED {
                bail!(
                    "--device gpu needs CUDA to allocate the mock models, and this baton-stages was built without CUDA; rebuild it with --features cuda, or use --device cpu"
                );
            }
            (Target::Cuda, format!("on the GPU ({found})"))
        }
        DeviceChoice::Auto => match gpu() {
            Ok(found) if baton_studio::compute::COMPILED => {
                (Target::Cuda, format!("on the GPU ({found})"))
            }
            Ok(found) => (
                Target::Host,
                format!(
                    "on host memory: this baton was built without CUDA, though a GPU is here ({found}); rebuild with --features cuda"
                ),
            ),
            Err(why) => (Target::Host, format!("on host memory: {why}")),
        },
    })
}

/// A mock model's memory, wherever it lives. It is only ever held, never read: dropping it
/// frees it.
pub enum Mock {
    Host(#[allow(dead_code)] Vec<u8>),
    Sim(#[allow(dead_code)] SimAllocation),
    Cuda(#[allow(dead_code)] CudaBlock),
}

/// Fills `bytes` of host memory with pseudo-random data, touching every page.
fn random_host(bytes: u64) -> Vec<u8> {
    let mut data = vec![0u8; bytes as usize];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ bytes;
    for chunk in data.chunks_mut(8) {
        // xorshift64: cheap, and not zeros, so the kernel cannot share pages.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    data
}

/// The memory a demo reads and allocates in.
struct Place {
    target: Target,
    /// What in-process scopes and the table read.
    backend: Arc<dyn MemoryBackend>,
    cuda: Option<Arc<CudaBackend>>,
    sim: Option<SimBackend>,
}

impl Place {
    /// For the in-process mode: on a GPU, this creates this process's CUDA context.
    fn in_process(target: Target) -> anyhow::Result<Place> {
        Ok(match target {
            Target::Cuda => {
                let cuda = Arc::new(CudaBackend::open(0)?);
                Place {
                    target,
                    backend: cuda.clone(),
                    cuda: Some(cuda),
                    sim: None,
                }
            }
            Target::Host => Place {
                target,
                backend: Arc::new(HostBackend::new()),
                cuda: None,
                sim: None,
            },
            Target::Sim => {
                let sim = SimBackend::from_env()?;
                Place {
                    target,
                    backend: Arc::new(sim.clone()),
                    cuda: None,
                    sim: Some(sim),
                }
            }
        })
    }

    /// For the parent of the processes mode: reading only (NVML on a GPU, no CUDA context).
    fn reader(target: Target) -> anyhow::Result<Place> {
        Ok(Place {
            target,
            backend: match target {
                Target::Cuda => Arc::new(baton_memory::nvml::NvmlBackend::open()?),
                Target::Host => Arc::new(HostBackend::new()),
                Target::Sim => Arc::new(SimBackend::from_env()?),
            },
            cuda: None,
            sim: None,
        })
    }

    fn allocate(&self, bytes: u64, label: &str) -> anyhow::Result<Mock> {
        Ok(match self.target {
            Target::Host => Mock::Host(random_host(bytes)),
            Target::Sim => Mock::Sim(
                self.sim
                    .as_ref()
                    .expect("sim place")
                    .allocate(0, bytes, label)?,
            ),
            Target::Cuda => Mock::Cuda(self.cuda.as_ref().expect("cuda place").fill_random(bytes)?),
        })
    }

    /// Device used bytes, where the device's use is all explained by processes; otherwise
    /// (host RAM) the bytes `pids` hold.
    fn used(&self, pids: &[u32]) -> anyhow::Result<u64> {
        let device = self.backend.device(0)?;
        Ok(if self.backend.attributes_all_memory() {
            device.used
        } else {
            pids.iter().map(|&p| device.held_by(p)).sum()
        })
    }

    /// Waits until process `pid`, which held `resident` with its model, holds at most
    /// `tolerance` more than that less the model's `size` (its model wholly freed, as the device
    /// reports it), and `size` is free on the device.
    fn wait_for_room(
        &self,
        pid: u32,
        size: u64,
        resident: u64,
        tolerance: u64,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let device = self.backend.device(0)?;
            let held = device.held_by(pid);
            if held + size <= resident + tolerance && device.free >= size {
                return Ok(());
            }
            if start.elapsed() >= limit {
                bail!(
                    "{:.1?} after a mock said it freed its model, its process still holds {} and {} is free on {}; the next model needs {}",
                    limit,
                    format_bytes(held),
                    format_bytes(device.free),
                    device.label(),
                    format_bytes(size)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Refuses a size that cannot fit before anything is allocated.
    fn check_fits(&self, size: u64) -> anyhow::Result<()> {
        let device = self.backend.device(0)?;
        if size > device.free {
            return Err(BadInput(format!(
                "--size {} is more than the {} free on {} ({}); choose a smaller --size",
                format_bytes(size),
                format_bytes(device.free),
                device.label(),
                device.name
            ))
            .into());
        }
        Ok(())
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub used_before: u64,
    pub used_after: u64,
    pub seconds: f64,
}

/// What one mode found.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    pub target: Target,
    pub size: u64,
    pub steps: Vec<Step>,
    /// From the first model's release to the second model resident.
    pub switch_seconds: f64,
    /// Bytes still used after the last release, above the baseline (for in-process mode: the
    /// process's use with its CUDA context, before the first model).
    pub left_after_release: u64,
    /// The baseline the leftovers are measured from.
    pub baseline: u64,
    pub peak: u64,
    /// What this process's CUDA context costs (in-process mode on a GPU): what it took when
    /// made, so 0 for a run after the first, which finds it made (one context per process).
    pub context: Option<u64>,
    pub verified: bool,
    pub verdict: String,
}

const LABELS: [&str; 2] = ["mock LLM", "mock image model"];

/// Both mocks in this process, each inside a scope guard.
pub fn in_process(
    target: Target,
    size: u64,
    tolerance: u64,
    inject_leak: bool,
) -> anyhow::Result<ModeResult> {
    // What the CUDA context itself costs, read through NVML around its creation.
    let gpu_used = || -> Option<u64> {
        let nvml = baton_memory::nvml::NvmlBackend::open().ok()?;
        Some(nvml.device(0).ok()?.used)
    };
    let before_context = (target == Target::Cuda).then(gpu_used).flatten();
    let place = Place::in_process(target)?;
    let context = before_context.and_then(|before| Some(gpu_used()?.saturating_sub(before)));
    place.check_fits(size)?;
    let me = [std::process::id()];
    let baseline = place.used(&me)?;
    let mut steps = Vec::new();
    let mut peak = baseline;
    let mut released_at = None;
    let mut switch_seconds = 0.0;
    let mut verified = true;
    let mut problems = Vec::new();
    for label in LABELS {
        let scope = MemoryScope::new(place.backend.clone(), 0, label)?
            .with_tolerance(tolerance)
            .with_settle(Duration::from_secs(2));
        let before = place.used(&me)?;
        let start = Instant::now();
        let mock = place.allocate(size, label)?;
        let resident = Instant::now();
        if let Some(released) = released_at {
            switch_seconds = resident.duration_since(released).as_secs_f64();
        }
        let after = place.used(&me)?;
        peak = peak.max(after);
        baton_memory::log_snapshot(
            place.backend.as_ref(),
            &format!("after allocating the {label}"),
        )?;
        steps.push(Step {
            step: format!("allocate {label}"),
            used_before: before,
            used_after: after,
            seconds: start.elapsed().as_secs_f64(),
        });
        let start = Instant::now();
        released_at = Some(start);
        if inject_leak && label == LABELS[0] {
            // The bug the scope guard exists to catch: a model that is never freed.
            std::mem::forget(mock);
        } else {
            drop(mock);
        }
        let report = scope.finish()?;
        steps.push(Step {
            step: format!("release {label}"),
            used_before: after,
            used_after: report.after,
            seconds: start.elapsed().as_secs_f64(),
        });
        if report.is_leak() {
            verified = false;
            problems.push(report.to_string());
        }
    }
    let last = steps.last().map_or(baseline, |s| s.used_after);
    let left = last.saturating_sub(baseline);
    if left > tolerance && verified {
        verified = false;
        problems.push(format!(
            "{} still used above the baseline",
            format_bytes(left)
        ));
    }
    Ok(ModeResult {
        mode: "in-process",
        target,
        size,
        verdict: verdict(&steps, verified, &problems),
        steps,
        switch_seconds,
        left_after_release: left,
        baseline,
        peak,
        context,
        verified,
    })
}

/// Each mock in its own child process; this process only reads.
pub fn processes(target: Target, size: u64, tolerance: u64) -> anyhow::Result<ModeResult> {
    let place = Place::reader(target)?;
    place.check_fits(size)?;
    let baseline = place.used(&[])?;
    let mut steps = Vec::new();
    let mut peak = baseline;
    let mut released_at: Option<Instant> = None;
    let mut switch_seconds = 0.0;
    let mut verified = true;
    let mut problems = Vec::new();
    // The next model's process, started ahead (as the runner prestarts a stage) and given its
    // go as soon as the model before it was freed, while that process was still exiting: the
    // device's use before its go, the go's time, and a thread that reads its output until it
    // says resident, and when.
    let mut early: Option<(u64, Instant, Resident)> = None;
    for (i, label) in LABELS.iter().enumerate() {
        let (mut child, before, start, resident, after) = match early.take() {
            Some((before, go, reading)) => {
                let (child, resident) = reading.join().map_err(|_| {
                    anyhow::anyhow!("the thread reading the {label} process failed")
                })??;
                let after = place.used(&[child.id()])?;
                (child, before, go, resident, after)
            }
            None => {
                let before = place.used(&[])?;
                let start = Instant::now();
                let child = spawn_mock(target, size, label, false)?.resident(label)?;
                let resident = Instant::now();
                let after = place.used(&[child.id()])?;
                (child, before, start, resident, after)
            }
        };
        if let Some(released) = released_at {
            switch_seconds = resident.duration_since(released).as_secs_f64();
        }
        let pid = child.id();
        // What it holds with its model: the go for the next waits until that is down by the
        // model's size.
        let held_resident = place.backend.device(0)?.held_by(pid);
        peak = peak.max(after);
        steps.push(Step {
            step: format!("start {label} process"),
            used_before: before,
            used_after: after,
            seconds: resident.duration_since(start).as_secs_f64(),
        });
        // `BATON_PRESTART=0`: the next process starts only after this one is gone, as before
        // prestart (to measure what it saves).
        let ahead = std::env::var("BATON_PRESTART").as_deref() != Ok("0");
        let mut prepared = None;
        if let Some(next) = LABELS.get(i + 1).filter(|_| ahead) {
            let start = Instant::now();
            let next = spawn_mock(target, size, next, true)?.ready(next)?;
            let used = place.used(&[pid, next.id()])?;
            peak = peak.max(used);
            steps.push(Step {
                step: "prepare the next process".into(),
                used_before: after,
                used_after: used,
                seconds: start.elapsed().as_secs_f64(),
            });
            prepared = Some(next);
        }
        let next_pid = prepared.as_ref().map(|p| p.id());
        let start = Instant::now();
        released_at = Some(start);
        drop(child.child.stdin.take());
        // A prepared next process gets its go as soon as this one has freed its model (it says
        // `released`, and the device shows the room), while this one's context is still being
        // torn down: that teardown (about 0.1 s on an H200) is then off the switch's path. The
        // whole reclaim is still proved below, once this process has exited.
        if let Some(next) = prepared.take() {
            child.until("released", label)?;
            place.wait_for_room(pid, size, held_resident, tolerance, Duration::from_secs(5))?;
            let before = place.used(&[])?;
            let go = Instant::now();
            let next = next.send_go(size)?;
            let next_label = LABELS[i + 1];
            let reading = std::thread::spawn(move || {
                next.resident(next_label)
                    .map(|resident| (resident, Instant::now()))
            });
            early = Some((before, go, reading));
        }
        let status = child.child.wait()?;
        if !status.success() {
            bail!("the {label} process failed ({status})");
        }
        // Back means: the child holds nothing, and the device is at its level before the demo
        // (beside the next process's context).
        let settled = loop {
            let device = place.backend.device(0)?;
            let held = device.held_by(pid);
            let waiting = next_pid.map_or(0, |p| device.held_by(p));
            let used = place.used(&[pid])?.saturating_sub(waiting);
            let back = held == 0
                && (!place.backend.attributes_all_memory() || used <= baseline + tolerance);
            if back || start.elapsed() >= Duration::from_secs(5) {
                break (back, used);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        steps.push(Step {
            step: format!("{label} process exits"),
            used_before: after,
            used_after: settled.1,
            seconds: start.elapsed().as_secs_f64(),
        });
        if !settled.0 {
            verified = false;
            problems.push(format!(
                "after the {label} process exited, {} was still used ({} before the demo)",
                format_bytes(settled.1),
                format_bytes(baseline)
            ));
        }
    }
    let last = steps.last().map_or(baseline, |s| s.used_after);
    Ok(ModeResult {
        mode: "processes",
        target,
        size,
        verdict: verdict(&steps, verified, &problems),
        steps,
        switch_seconds,
        left_after_release: last.saturating_sub(baseline),
        baseline,
        peak,
        context: None,
        verified,
    })
}

/// A thread that waits until a mock process says its model is resident, and when it did.
type Resident = std::thread::JoinHandle<anyhow::Result<(MockProcess, Instant)>>;

/// A `baton demo mock` process and its output.
struct MockProcess {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    /// The go pipe's write end, for one started ahead.
    go: Option<std::fs::File>,
}

impl MockProcess {
    fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reads its lines until `want` (the protocol's own lines pass by).
    fn until(&mut self, want: &str, label: &str) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line)? == 0 {
                let status = self.child.wait()?;
                bail!("the {label} process ended before it said '{want}' ({status})");
            }
            if line.trim() == want {
                return Ok(());
            }
        }
    }

    /// Waits until its model is resident.
    fn resident(mut self, label: &str) -> anyhow::Result<MockProcess> {
        self.until("resident", label)
            .with_context(|| format!("the {label} process did not get its memory"))?;
        Ok(self)
    }

    /// Waits until, started ahead, it has prepared.
    fn ready(mut self, label: &str) -> anyhow::Result<MockProcess> {
        self.until(&baton_base::protocol::StageLine::Ready.to_string(), label)?;
        Ok(self)
    }

    /// Gives it its go (`bytes` granted).
    fn send_go(mut self, bytes: u64) -> anyhow::Result<MockProcess> {
        let mut pipe = self
            .go
            .take()
            .context("a mock started in its turn has no go")?;
        writeln!(pipe, "go {bytes}")?;
        drop(pipe);
        Ok(self)
    }
}

fn verdict(steps: &[Step], verified: bool, problems: &[String]) -> String {
    let freed: u64 = steps
        .iter()
        .filter(|s| !s.step.starts_with("allocate") && !s.step.starts_with("start"))
        .map(|s| s.used_before.saturating_sub(s.used_after))
        .max()
        .unwrap_or(0);
    if verified {
        format!(
            "PASS: {} freed between the models; memory back to its baseline after each",
            format_bytes(freed)
        )
    } else {
        format!("FAIL: {}", problems.join("; "))
    }
}

/// Starts `baton demo mock`; `ahead`: with a go pipe, to make its context and wait for its go.
fn spawn_mock(target: Target, size: u64, label: &str, ahead: bool) -> anyhow::Result<MockProcess> {
    let exe = std::env::current_exe().context("cannot find baton's own executable")?;
    let mut command = Command::new(exe);
    command
        .args([
            "demo",
            "mock",
            "--target",
            target.name(),
            "--size",
            &size.to_string(),
            "--label",
            label,
        ])
        .env_remove(baton_base::protocol::GO_FD_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let pipe = if ahead {
        let (read, write) = baton_base::protocol::go_pipe()?;
        baton_base::protocol::pass_go_fd(&mut command, std::os::fd::AsRawFd::as_raw_fd(&read));
        Some((read, write))
    } else {
        None
    };
    let mut child = command
        .spawn()
        .context("cannot start a mock model process")?;
    // The read end is the child's now.
    let go = pipe.map(|(_, write)| write);
    let out = BufReader::new(child.stdout.take().expect("piped"));
    Ok(MockProcess { child, out, go })
}

/// `baton demo mock`: one mock model in this process; says `resident` once it is, and when its
/// standard input closes, frees it (back to the device, not a pool), says `released` and exits.
/// Started with a go pipe (`BATON_GO_FD`), it makes its context, says `baton:ready`, and
/// allocates only after its go.
pub fn mock(
    target: DeviceChoice,
    size: u64,
    label: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let target = match target {
        DeviceChoice::Gpu => Target::Cuda,
        DeviceChoice::Sim => Target::Sim,
        DeviceChoice::Cpu | DeviceChoice::Auto => Target::Host,
    };
    let place = Place::in_process(target)?;
    // Started ahead: the context is made; the model waits for the go.
    baton_base::protocol::await_go()?;
    let model = place.allocate(size, label)?;
    writeln!(out, "resident")?;
    out.flush()?;
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    drop(model);
    // A dropped CUDA block goes back to this process's memory pool, not to the device, until
    // the stream has run past the free and the pool is trimmed: `released` is true only after
    // both (the in-process mode's scope does the same), so the supervisor's go, which waits for
    // the device to show the whole model back, is not held up until this process's exit.
    place.backend.trim()?;
    // The supervisor may start the next model now; this process's context goes with its exit.
    writeln!(out, "released")?;
    out.flush()?;
    Ok(())
}

/// The table of one mode.
pub fn render(result: &ModeResult) -> String {
    let mut s = format!(
        "mode {}: two mock models of {} each\n{:<30} {:>12} {:>12} {:>11} {:>10}\n",
        result.mode,
        format_bytes(result.size),
        "STEP",
        "USED BEFORE",
        "USED AFTER",
        "CHANGE",
        "TIME"
    );
    for step in &result.steps {
        let change = if step.used_after >= step.used_before {
            format!("+{}", format_bytes(step.used_after - step.used_before))
        } else {
            format!("-{}", format_bytes(step.used_before - step.used_after))
        };
        s.push_str(&format!(
            "{:<30} {:>12} {:>12} {:>11} {:>8.1}ms\n",
            step.step,
            format_bytes(step.used_before),
            format_bytes(step.used_after),
            change,
            step.seconds * 1000.0
        ));
    }
    s.push_str(&format!(
        "switch {:.1} ms (first model released → second resident); peak {}; left after release {} above the baseline of {}\n",
        result.switch_seconds * 1000.0,
        format_bytes(result.peak),
        format_bytes(result.left_after_release),
        format_bytes(result.baseline)
    ));
    if let Some(context) = result.context {
        s.push_str(&format!(
            "this process's CUDA context: {}\n",
            format_bytes(context)
        ));
    }
    s.push_str(&format!("verdict: {}\n", result.verdict));
    s
}
