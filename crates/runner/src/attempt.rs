//! One attempt at one stage: start it, watch its memory while it runs, and after it exits,
//! prove its memory came back (reclaim).
//!
//! Watching samples the placed device at 10 Hz and sums what the stage's processes hold
//! (group and token carriers, see [`crate::group`]), keeping the peak and a timeline. Reclaim
//! stops whatever of the stage is still alive (naming the ones that held memory: orphans),
//! then polls every 5 ms until the stage holds nothing and the device's unexplained use is
//! back to where it was before the stage, or the timeout passes and the record says what is
//! still held, by whom, or that it leaked.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
use baton_memory::{DeviceSnapshot, MemoryBackend};

use crate::events::{Event, Observer};
use crate::executor::{Executor, Launch, LineSink};
use crate::group::Membership;
use crate::manifest::{
    Artifact, Attempt, LoadRecord, Orphan, ReclaimRecord, Sample, collect_artifacts, unix_ms,
};

/// How often a running stage's memory is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often reclaim reads the device.
const RECLAIM_POLL: Duration = Duration::from_millis(5);
/// Memory on the device, owned by no process, above its level before the stage, that still
/// counts as noise rather than a leak.
pub const LEAK_TOLERANCE: u64 = 64 << 20;

/// What an attempt needs to know.
pub struct AttemptPlan {
    pub run_id: String,
    pub stage: String,
    pub number: u32,
    pub launch: Launch,
    pub token: String,
    pub backend: Arc<dyn MemoryBackend>,
    pub device_index: usize,
    pub device_label: String,
    pub granted: u64,
    pub timeout: Option<Duration>,
    pub reclaim_timeout: Duration,
    /// The stage's outputs, relative to the run folder, placeholders filled in.
    pub outputs: Vec<String>,
    /// For a prestarted stage: when its go was sent, and what it granted.
    pub go: Option<Arc<GoState>>,
}

/// A prestarted stage's go, as the scheduler's thread gives it and the attempt's thread reads it.
#[derive(Debug, Default)]
pub struct GoState {
    /// When the go was sent (Unix ms); 0 until then.
    pub at_unix_ms: AtomicU64,
    /// The bytes the go granted.
    pub granted: AtomicU64,
}

impl GoState {
    /// The go's time, once it was sent.
    pub fn sent(&self) -> Option<u64> {
        Some(self.at_unix_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }
}

/// An attempt's outcome, for the scheduler.
pub struct AttemptOutcome {
    pub attempt: Attempt,
    /// False when trying again cannot help (the program does not exist).
    pub retriable: bool,
    /// The outputs, hashed, when the attempt succeeded.
    pub artifacts: Vec<Artifact>,
}

/// Lines that mean the stage ran out of device memory.
pub fn is_oom_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    [
        "out of memory",
        "cuda_error_out_of_memory",
        "cudaerrormemoryallocation",
        "outofmemoryerror",
    ]
    .iter()
    .any(|p| l.contains(p))
}

/// A stage's `baton:load` line as the manifest keeps it.
fn load_record(bytes: u64, seconds: f64, name: String) -> LoadRecord {
    LoadRecord {
        gb_per_second: bytes as f64 / seconds / 1e9,
        name,
        bytes,
        seconds,
    }
}

/// Runs one attempt to its end, reclaim included. `live` is kept at the bytes the stage holds
/// now, for placement of other stages; `on_start` gets the PID once the process runs.
pub fn run_attempt(
    plan: &AttemptPlan,
    executor: &dyn Executor,
    observer: &dyn Observer,
    live: &AtomicU64,
    on_start: &dyn Fn(u32),
) -> AttemptOutcome {
    let mut attempt = Attempt::begin(
        plan.number,
        &plan.device_label,
        plan.device_index,
        plan.granted,
    );
    attempt.token = plan.token.clone();
    let before = plan.backend.device(plan.device_index).ok();
    let unexplained_before = before.as_ref().map_or(0, unexplained);
    let mut accounting = Accounting::new(before.as_ref());
    write_header(&plan.launch.log, plan);

    let heard: Arc<Mutex<Heard>> = Arc::default();
    let sink: LineSink = {
        let heard = heard.clone();
        Arc::new(move |line: &str| {
            if let Ok(mut h) = heard.lock() {
                h.note(line);
            }
        })
    };
    let mut process = match executor.launch(&plan.launch, sink) {
        Ok(p) => p,
        Err(err) => {
            attempt.ended_unix_ms = Some(unix_ms());
            attempt.failure = Some(err.to_string());
            return AttemptOutcome {
                attempt,
                retriable: false,
                artifacts: Vec::new(),
            };
        }
    };
    attempt.pid = Some(process.pid());
    on_start(process.pid());
    observer.event(&Event::Started {
        run: &plan.run_id,
        stage: &plan.stage,
        device: &plan.device_label,
        attempt: plan.number,
    });

    let mut membership = Membership::new(process.group(), &plan.token);
    let started = Instant::now();
    let mut next_sample = Instant::now();
    let mut timed_out = false;
    let exit = loop {
        // Wake at the next sample, or at once when the process exits.
        let wait = next_sample
            .saturating_duration_since(Instant::now())
            .min(SAMPLE_EVERY);
        match process.wait_timeout(wait) {
            Ok(Some(exit)) => break Some(exit),
            Ok(None) => {}
            Err(err) => {
                attempt.failure = Some(err.to_string());
                break None;
            }
        }
        forward_progress(&heard, plan, observer);
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            if let Ok(snapshot) = plan.backend.device(plan.device_index) {
                let ours = accounting.held(&snapshot, &mut membership, plan, observer);
                attempt.peak_bytes = attempt.peak_bytes.max(ours);
                attempt.timeline.push((unix_ms(), snapshot.used, ours));
                live.store(ours, Ordering::Relaxed);
                observer.event(&Event::Memory {
                    run: &plan.run_id,
                    stage: &plan.stage,
                    bytes: ours,
                    peak: attempt.peak_bytes,
                });
            }
        }
        // A prestarted stage's time limit counts from its go: waiting is not working.
        let working = match &plan.go {
            None => Some(started.elapsed()),
            Some(go) => go
                .sent()
                .map(|at| Duration::from_millis(unix_ms().saturating_sub(at))),
        };
        if let Some(limit) = plan.timeout
            && working.is_some_and(|w| w >= limit)
        {
            timed_out = true;
            membership.stop(Duration::from_secs(2));
        }
    };
    attempt.ended_unix_ms = Some(unix_ms());
    if let Some(exit) = exit {
        attempt.exit_code = exit.code;
        attempt.signal = exit.signal;
    }

    let exited = Instant::now();
    let reclaim = reclaim(
        plan,
        &mut membership,
        &mut accounting,
        unexplained_before,
        &mut attempt.timeline,
        observer,
    );
    let reclaimed = exited.elapsed();
    process.finish_output(Duration::from_millis(500));
    tracing::debug!(
        "stage '{}' attempt {}: ran {:.1?}, reclaim took {:.1?}, output closed {:.1?} after exit",
        plan.stage,
        plan.number,
        exited - started,
        reclaimed,
        exited.elapsed()
    );
    forward_progress(&heard, plan, observer);
    live.store(0, Ordering::Relaxed);
    attempt.peak_bytes = attempt
        .peak_bytes
        .max(reclaim.orphans.iter().map(|o| o.bytes).sum());
    report_reclaim(plan, &reclaim, observer);
    attempt.reclaim = Some(reclaim);
    let (out_of_memory, tail) = heard
        .lock()
        .map(|h| (h.oom, h.tail.iter().cloned().collect::<Vec<_>>()))
        .unwrap_or_default();
    attempt.out_of_memory = out_of_memory;
    (attempt.loads, attempt.warnings) = heard
        .lock()
        .map(|mut h| {
            (
                std::mem::take(&mut h.loads),
                std::mem::take(&mut h.warnings),
            )
        })
        .unwrap_or_default();
    if let Some(go) = &plan.go {
        attempt.go_unix_ms = go.sent();
        if attempt.go_unix_ms.is_some() {
            attempt.granted_bytes = go.granted.load(Ordering::Relaxed);
        }
        (attempt.ready_unix_ms, attempt.running_unix_ms) = heard
            .lock()
            .map(|h| (h.ready_unix_ms, h.running_unix_ms))
            .unwrap_or_default();
    }
    // A peak read per device is an estimate: it is said in the manifest (and, being a
    // warning, teaches no learned need).
    attempt.warnings.extend(accounting.said.take());

    // Hashing runs here, not on the scheduler's thread: large outputs must not hold up the
    // placement of other stages.
    let mut artifacts = Vec::new();
    let failed = match exit {
        _ if timed_out => Some(format!(
            "timed out after {:.0?}",
            plan.timeout.unwrap_or_default()
        )),
        Some(exit) if exit.success() => match collect_artifacts(&plan.launch.cwd, &plan.outputs) {
            Ok(hashed) => {
                artifacts = hashed;
                None
            }
            Err(why) => Some(format!("exited 0, but {why}")),
        },
        Some(exit) => Some(exit.to_string()),
        None => attempt.failure.clone(),
    };
    if let Some(why) = failed {
        attempt.failure = Some(if tail.is_empty() {
            format!("{why} (log: {})", plan.launch.log.display())
        } else {
            format!(
                "{why}; last output: {} (log: {})",
                tail.join(" | "),
                plan.launch.log.display()
            )
        });
    }
    AttemptOutcome {
        attempt,
        retriable: true,
        artifacts,
    }
}

/// Bytes the stage's processes hold on the device.
fn held_by(snapshot: &DeviceSnapshot, membership: &mut Membership) -> u64 {
    snapshot
        .processes
        .iter()
        .filter(|p| membership.is_ours(p.pid))
        .filter_map(|p| p.bytes)
        .sum()
}

/// How a stage's memory is read off its device: by the PIDs of its processes, or, where the
/// device lists processes that this PID namespace cannot see (baton in a container, whose
/// NVML reports the host's PIDs), as the device's use above its level before the stage.
struct Accounting {
    before_used: u64,
    per_device: bool,
    /// What was said when the fallback began (once per attempt), for the manifest too.
    said: Option<String>,
}

impl Accounting {
    fn new(before: Option<&DeviceSnapshot>) -> Accounting {
        Accounting {
            before_used: before.map_or(0, |s| s.used),
            per_device: false,
            said: None,
        }
    }

    fn held(
        &mut self,
        snapshot: &DeviceSnapshot,
        membership: &mut Membership,
        plan: &AttemptPlan,
        observer: &dyn Observer,
    ) -> u64 {
        let by_pid = held_by(snapshot, membership);
        if !self.per_device
            && by_pid == 0
            && plan.backend.attributes_all_memory()
            && !snapshot.processes.is_empty()
            && snapshot
                .processes
                .iter()
                .all(|p| baton_base::procfs::stat(p.pid).is_none())
        {
            self.per_device = true;
        }
        if self.per_device && self.said.is_none() {
            let message = format!(
                "stage '{}': {} lists processes this PID namespace cannot see (is baton in a container?); the stage's memory is taken as {}'s use above its level before the stage, which counts any other stage placed there too",
                plan.stage, plan.device_label, plan.device_label
            );
            tracing::warn!("{message}");
            observer.event(&Event::Notice {
                run: &plan.run_id,
                message: &message,
            });
            self.said = Some(message);
        }
        if self.per_device {
            snapshot.used.saturating_sub(self.before_used)
        } else {
            by_pid
        }
    }
}

/// Used memory that no listed process explains.
fn unexplained(snapshot: &DeviceSnapshot) -> u64 {
    let listed: u64 = snapshot.processes.iter().filter_map(|p| p.bytes).sum();
    snapshot.used.saturating_sub(listed)
}

fn reclaim(
    plan: &AttemptPlan,
    membership: &mut Membership,
    accounting: &mut Accounting,
    unexplained_before: u64,
    timeline: &mut Vec<Sample>,
    observer: &dyn Observer,
) -> ReclaimRecord {
    let exited = Instant::now();
    let backend = plan.backend.as_ref();
    let mut orphans = Vec::new();
    let members = membership.live_members();
    if !members.is_empty() {
        if let Ok(snapshot) = backend.device(plan.device_index) {
            for p in &snapshot.processes {
                if membership.is_ours(p.pid) && p.bytes.unwrap_or(0) > 0 {
                    orphans.push(Orphan {
                        pid: p.pid,
                        name: p.name.clone(),
                        bytes: p.bytes.unwrap_or(0),
                    });
                }
            }
        }
        membership.stop(Duration::from_secs(1));
    }
    let check_unowned = backend.attributes_all_memory();
    loop {
        let snapshot = match backend.device(plan.device_index) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(
                    "reclaim of '{}' cannot read {}: {err}",
                    plan.stage,
                    plan.device_label
                );
                std::thread::sleep(RECLAIM_POLL);
                if exited.elapsed() >= plan.reclaim_timeout {
                    return ReclaimRecord {
                        verified: false,
                        ms: ms(exited.elapsed()),
                        orphans,
                        leaked_bytes: 0,
                        still_held_bytes: 0,
                    };
                }
                continue;
            }
        };
        let ours = accounting.held(&snapshot, membership, plan, observer);
        let extra = unexplained(&snapshot).saturating_sub(unexplained_before);
        timeline.push((unix_ms(), snapshot.used, ours));
        let leaked = if check_unowned && extra > LEAK_TOLERANCE {
            extra
        } else {
            0
        };
        let elapsed = exited.elapsed();
        if (ours == 0 && leaked == 0) || elapsed >= plan.reclaim_timeout {
            return ReclaimRecord {
                verified: ours == 0 && leaked == 0,
                ms: ms(elapsed),
                orphans,
                leaked_bytes: if ours == 0 { leaked } else { 0 },
                still_held_bytes: ours,
            };
        }
        std::thread::sleep(RECLAIM_POLL);
    }
}

fn report_reclaim(plan: &AttemptPlan, r: &ReclaimRecord, observer: &dyn Observer) {
    let say = |message: String| {
        tracing::debug!("{message}");
        observer.event(&Event::Notice {
            run: &plan.run_id,
            message: &message,
        });
    };
    for o in &r.orphans {
        say(format!(
            "stage '{}' left orphan pid {} ({}) holding {} on {} after it exited; killed it",
            plan.stage,
            o.pid,
            o.name,
            format_bytes(o.bytes),
            plan.device_label
        ));
    }
    if r.still_held_bytes > 0 {
        say(format!(
            "stage '{}': its processes still hold {} on {} {:.0} ms after it exited",
            plan.stage,
            format_bytes(r.still_held_bytes),
            plan.device_label,
            r.ms
        ));
    }
    if r.leaked_bytes > 0 {
        say(format!(
            "leak after stage '{}' on {}: {} is still used there, held by no process, {:.0} ms after the stage exited",
            plan.stage,
            plan.device_label,
            format_bytes(r.leaked_bytes),
            r.ms
        ));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn write_header(log: &Path, plan: &AttemptPlan) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::options().create(true).append(true).open(log) {
        let _ = writeln!(
            f,
            "=== baton: stage '{}' attempt {} on {} ({} granted): {}",
            plan.stage,
            plan.number,
            plan.device_label,
            format_bytes(plan.granted),
            plan.launch.argv.join(" ")
        );
    }
}

/// What a stage's output has said so far, gathered on its output threads.
#[derive(Default)]
struct Heard {
    /// A line said it ran out of device memory.
    oom: bool,
    /// The last lines, for the failure message.
    tail: VecDeque<String>,
    /// Progress not yet handed to the observer.
    progress: Vec<(u64, u64, String)>,
    /// Weights loads the stage reported.
    loads: Vec<LoadRecord>,
    /// Warnings not yet handed to the observer, and all of them for the manifest.
    warnings_pending: Vec<String>,
    warnings: Vec<String>,
    /// When a prestarted stage said it was ready, and that it runs after its go.
    ready_unix_ms: Option<u64>,
    running_unix_ms: Option<u64>,
}

impl Heard {
    fn note(&mut self, line: &str) {
        self.oom |= is_oom_line(line);
        if self.tail.len() == 3 {
            self.tail.pop_front();
        }
        self.tail.push_back(line.chars().take(300).collect());
        match StageLine::parse(line) {
            Some(StageLine::Progress {
                done,
                total,
                message,
            }) => self.progress.push((done, total, message)),
            Some(StageLine::Load {
                bytes,
                seconds,
                name,
            }) => self.loads.push(load_record(bytes, seconds, name)),
            Some(StageLine::Warn(warning)) => {
                self.warnings_pending.push(warning.clone());
                self.warnings.push(warning);
            }
            Some(StageLine::Ready) => self.ready_unix_ms = Some(unix_ms()),
            Some(StageLine::Running) => self.running_unix_ms = Some(unix_ms()),
            None => {}
        }
    }
}

/// Hands progress heard on the output threads to the observer, from the attempt's thread.
fn forward_progress(heard: &Mutex<Heard>, plan: &AttemptPlan, observer: &dyn Observer) {
    let (pending, warnings) = heard
        .lock()
        .map(|mut h| {
            (
                std::mem::take(&mut h.progress),
                std::mem::take(&mut h.warnings_pending),
            )
        })
        .unwrap_or_default();
    for warning in warnings {
        observer.event(&Event::Notice {
            run: &plan.run_id,
            message: &format!("{}: {warning}", plan.stage),
        });
    }
    for (done, total, message) in pending {
        observer.event(&Event::Progress {
            run: &plan.run_id,
            stage: &plan.stage,
            done,
            total,
            message: &message,
        });
    }
}

/// The log file of a stage in a run folder.
pub fn log_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("logs").join(format!("{stage}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_lines_and_oom_lines_are_recognised() {
        let mut heard = Heard::default();
        for line in [
            "baton:progress 3/6 drawing scene 3",
            "baton:load 4000000000 0.5 /models/flux dev.safetensors",
            "baton:warn  no model here ",
            "baton:load 12 0 x",
            "plain output",
        ] {
            heard.note(line);
        }
        assert_eq!(heard.progress, vec![(3, 6, "drawing scene 3".to_string())]);
        assert_eq!(heard.loads.len(), 1);
        let load = &heard.loads[0];
        assert_eq!(load.name, "/models/flux dev.safetensors");
        assert_eq!(load.bytes, 4_000_000_000);
        assert!((load.gb_per_second - 8.0).abs() < 1e-9);
        assert_eq!(heard.warnings, ["no model here"]);
        assert_eq!(heard.tail.len(), 3);
        assert!(!heard.oom);
        assert!(is_oom_line(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(is_oom_line(
            "error: out of memory on sim0: asked for 8.0 GiB, 4.0 GiB free"
        ));
        assert!(is_oom_line("CUDA_ERROR_OUT_OF_MEMORY"));
        assert!(!is_oom_line("memory freed"));
    }

    /// A GPU as NVML shows it from inside a container: its processes have the host's PIDs,
    /// which this namespace has no process for. The stage holds 3 GiB while its flag file
    /// exists.
    struct ForeignPids {
        flag: std::path::PathBuf,
    }

    impl baton_memory::MemoryBackend for ForeignPids {
        fn kind(&self) -> baton_memory::BackendKind {
            baton_memory::BackendKind::Nvml
        }

        fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, baton_memory::MemoryError> {
            let held = if self.flag.exists() { 3u64 << 30 } else { 0 };
            Ok(vec![DeviceSnapshot {
                backend: baton_memory::BackendKind::Nvml,
                index: 0,
                name: "GPU in a container".into(),
                uuid: "GPU-x".into(),
                total: 24 << 30,
                used: (1 << 30) + held,
                free: (23 << 30) - held,
                reserved: 0,
                utilization: None,
                sensors: Default::default(),
                // A host PID: no process of this namespace has it (PIDs stop below 2^22).
                processes: vec![baton_memory::ProcessMemory {
                    pid: 4_000_000,
                    name: "python3".into(),
                    bytes: Some(held + (1 << 30)),
                }],
            }])
        }

        fn context_overhead(&self) -> u64 {
            0
        }
    }

    #[test]
    fn where_the_device_lists_pids_this_namespace_cannot_see_memory_is_read_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("holding");
        let plan = AttemptPlan {
            run_id: "r".into(),
            stage: "train".into(),
            number: 1,
            launch: Launch {
                stage: "train".into(),
                argv: ["sh", "-c", "touch holding; sleep 0.5; rm holding"]
                    .map(String::from)
                    .to_vec(),
                env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
                cwd: dir.path().to_path_buf(),
                log: dir.path().join("train.log"),
                go: None,
            },
            token: format!("test-{}", std::process::id()),
            backend: Arc::new(ForeignPids { flag }),
            device_index: 0,
            device_label: "gpu0".into(),
            granted: 4 << 30,
            go: None,
            timeout: None,
            reclaim_timeout: Duration::from_secs(2),
            outputs: Vec::new(),
        };
        let outcome = run_attempt(
            &plan,
            &crate::executor::LocalExecutor::default(),
            &crate::events::Quiet,
            &AtomicU64::new(0),
            &|_| {},
        );
        let a = &outcome.attempt;
        assert_eq!(a.failure, None, "{a:?}");
        // The device's use above its level before the stage, not the 0 a PID match gives.
        assert_eq!(a.peak_bytes, 3 << 30, "{a:?}");
        assert!(a.reclaim.as_ref().unwrap().verified);
        assert_eq!(a.warnings.len(), 1, "said once: {:?}", a.warnings);
        assert!(a.warnings[0].contains("cannot see"), "{:?}", a.warnings);
    }
}
