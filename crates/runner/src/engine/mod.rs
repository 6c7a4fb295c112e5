//! The scheduler: runs the stages of one or many runs, each as soon as its dependencies have
//! succeeded and a device has room, and records everything in each run's manifest.
//!
//! One coordinator thread owns every manifest and is the only writer; each attempt runs on a
//! thread of its own that lives exactly as long as the stage (the stage's parent-death signal
//! is tied to that thread). Placement counts what running stages were granted, so stages
//! started in the same instant never share memory that is only free on paper. Many runs
//! (`baton batch`) share the one scheduler, which is what keeps every GPU busy.
//!
//! Two ways past a plain start: a stage that opts in is started ahead of its turn and waits
//! for its go (prestart: [`prestart`]), and under `--executor slurm` a ready stage
//! is submitted as a job and followed instead of placed here ([`crate::slurm`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use baton_memory::{DeviceSnapshot, MemoryBackend};

mod cluster;
mod prestart;

pub use cluster::Cluster;
use prestart::{Go, Prepared};

use crate::RunnerError;
use crate::attempt::{AttemptOutcome, AttemptPlan, log_path, run_attempt};
use crate::catalog::StageCatalog;
use crate::events::{Event, Observer};
use crate::executor::{Executor, Launch};
use crate::group::TOKEN_VAR;
use crate::interrupt;
use crate::learned::LearnedNeeds;
use crate::manifest::{Attempt, RunState, StageState};
use crate::outputs::{STALE_DIR, set_aside};
use crate::pipeline::{DeviceKind, MemoryNeed, StageCommand, StageSpec, fill};
use crate::placement::{Ask, DeviceLoad, Placement, Reserve, place};
use crate::plan::RunPlan;

/// Environment variables a stage inherits from baton, besides its own `[env]` and `BATON_*`.
const PASSED_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TZ",
    "TMPDIR",
    "SHELL",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "BATON_STATE_DIR",
    "BATON_LOG",
    "BATON_MODELS_DIR",
    "BATON_ESPEAK",
    "BATON_ESPEAK_DATA",
];
/// Prefixes of variables a stage inherits: the GPU stack's settings (NCCL's NVLink multicast
/// switch among them) and the simulation's. The catalog adds its builtins' settings.
const PASSED_PREFIXES: &[&str] = &["NCCL_", "NVSHMEM_", "TORCH_", "CUDA_", "BATON_SIM_"];

/// What the scheduler runs stages with.
pub struct Engine {
    /// Where GPU stages go: NVML, simulated GPUs, or host RAM on a machine without a GPU.
    pub gpu: Arc<dyn MemoryBackend>,
    /// Where CPU stages go.
    pub host: Arc<dyn MemoryBackend>,
    pub executor: Arc<dyn Executor>,
    pub observer: Arc<dyn Observer>,
    /// What the pipelines' builtins are: their weights to warm, the settings they inherit.
    pub catalog: Arc<dyn StageCatalog>,
    pub learned: Option<LearnedNeeds>,
    /// What placement keeps back from each device.
    pub reserve: Reserve,
    /// Stages as Slurm jobs (`--executor slurm`): Slurm places them; none runs here.
    pub cluster: Option<Cluster>,
}

enum Message {
    /// A stage's job is in Slurm's queue.
    Submitted {
        run: usize,
        stage: String,
        job: u64,
    },
    Started {
        run: usize,
        stage: String,
        pid: u32,
    },
    Done {
        run: usize,
        stage: String,
        outcome: Box<AttemptOutcome>,
    },
}

struct Running {
    run: usize,
    stage: String,
    /// The stage's process group (its main process's PID), once it started.
    group: Option<u32>,
    pool: DeviceKind,
    index: usize,
    granted: u64,
    live: Arc<AtomicU64>,
    /// Cores it keeps busy on the host (0 on a GPU).
    threads: u32,
    /// A stage started ahead of its turn, until its go.
    prepared: Option<Prepared>,
    /// Its Slurm job, once submitted.
    job: Option<u64>,
}

/// Per-stage bookkeeping that does not belong in the manifest.
#[derive(Default)]
struct Tries {
    failures: u32,
    ooms: u32,
    excluded: Vec<usize>,
    waiting_since: Option<Instant>,
    /// When the wait was last reported.
    last_said: Option<Instant>,
}

impl Engine {
    /// Runs every run to its end (success or failure). A failing run never stops the others.
    pub fn execute(&self, runs: &mut [RunPlan]) -> Result<(), RunnerError> {
        let (tx, rx) = mpsc::channel::<Message>();
        let mut running: Vec<Running> = Vec::new();
        let mut tries: HashMap<(usize, String), Tries> = HashMap::new();
        let mut finished: Vec<bool> = runs
            .iter()
            .map(|r| r.manifest.state != RunState::Running)
            .collect();
        // Set once a signal asks baton to stop: when the stages were sent SIGTERM.
        let mut stopping: Option<(Instant, bool)> = None;
        if self.cluster.is_some() {
            self.follow_resumed(runs, &mut running, &tx)?;
        }
        loop {
            while let Ok(message) = rx.try_recv() {
                self.handle(message, runs, &mut running, &mut tries)?;
            }
            match (interrupt::requested(), &mut stopping) {
                (None, _) => {
                    self.skip_blocked(runs)?;
                    // Start what can start before writing reports: a free GPU should not wait
                    // for another run's paperwork.
                    self.schedule(runs, &mut running, &mut tries, &tx)?;
                }
                (Some(signal), None) => {
                    for run in runs
                        .iter()
                        .filter(|r| r.manifest.state == RunState::Running)
                    {
                        self.observer.event(&Event::Notice {
                            run: &run.manifest.run_id,
                            message: &format!(
                                "{}: stopping every running stage (a second one stops baton at once)",
                                interrupt::name(signal)
                            ),
                        });
                    }
                    signal_groups(&running, libc::SIGTERM);
                    crate::slurm::cancel(&running.iter().filter_map(|r| r.job).collect::<Vec<_>>());
                    stopping = Some((Instant::now(), false));
                }
                (Some(_), Some((since, killed))) => {
                    if !*killed && since.elapsed() >= STOP_GRACE {
                        signal_groups(&running, libc::SIGKILL);
                        *killed = true;
                    }
                }
            }
            for (i, run) in runs.iter_mut().enumerate() {
                let over = run_is_over(run)
                    || run.write_error.is_some()
                    || (stopping.is_some() && run.manifest.state == RunState::Running);
                if !finished[i] && over && !running.iter().any(|r| r.run == i) {
                    finished[i] = true;
                    self.finish_run(run)?;
                }
            }
            if finished.iter().all(|&f| f) {
                return Ok(());
            }
            if let Ok(message) = rx.recv_timeout(Duration::from_millis(20)) {
                self.handle(message, runs, &mut running, &mut tries)?;
            }
        }
    }

    fn pool(&self, kind: DeviceKind) -> &Arc<dyn MemoryBackend> {
        match kind {
            DeviceKind::Gpu => &self.gpu,
            DeviceKind::Cpu => &self.host,
        }
    }

    /// The devices of `kind`, read once per scheduling pass (`readings`) for every stage
    /// placed, granted or prestarted in it.
    fn devices(
        &self,
        kind: DeviceKind,
        readings: &mut Readings,
    ) -> Result<Vec<DeviceSnapshot>, String> {
        readings
            .entry(kind)
            .or_insert_with(|| self.pool(kind).snapshot().map_err(|e| e.to_string()))
            .clone()
    }

    /// The bytes a stage is placed with.
    fn need_of(&self, spec: &StageSpec) -> u64 {
        match spec.memory {
            MemoryNeed::Declared(bytes) => bytes,
            MemoryNeed::Learned { initial } => self
                .learned
                .as_ref()
                .and_then(|l| l.need(&learned_key(spec, &*self.catalog)))
                .unwrap_or(initial),
        }
    }

    fn schedule(
        &self,
        runs: &mut [RunPlan],
        running: &mut Vec<Running>,
        tries: &mut HashMap<(usize, String), Tries>,
        tx: &mpsc::Sender<Message>,
    ) -> Result<(), RunnerError> {
        let mut readings = Readings::new();
        self.grant_prepared(runs, running, tries, &mut readings)?;
        for (run_index, run) in runs.iter_mut().enumerate() {
            if run.manifest.state != RunState::Running {
                continue;
            }
            self.prestart(run_index, run, running, tries, &mut readings, tx)?;
            let ready: Vec<StageSpec> = run
                .pipeline
                .stages
                .iter()
                .filter(|spec| {
                    let record = run.manifest.stage(&spec.name).expect("stage recorded");
                    matches!(record.state, StageState::Pending | StageState::Waiting)
                        && spec.after.iter().all(|dep| {
                            run.manifest
                                .stage(dep)
                                .is_some_and(|d| d.state == StageState::Succeeded)
                        })
                })
                .cloned()
                .collect();
            for spec in ready {
                if let Some(missing) = missing_input(run, &spec) {
                    self.fail_stage(
                        run,
                        &spec.name,
                        format!("its input '{}' is missing", missing.display()),
                    )?;
                    continue;
                }
                if let Some(cluster) = &self.cluster {
                    // Slurm places it: submitted as soon as it is ready.
                    let ooms = tries
                        .get(&(run_index, spec.name.clone()))
                        .map_or(0, |t| t.ooms);
                    self.submit(run_index, run, &spec, cluster, ooms, running, tx)?;
                    continue;
                }
                let pool = self.pool(spec.device).clone();
                let devices = match self.devices(spec.device, &mut readings) {
                    Ok(devices) => devices,
                    Err(err) => {
                        let message =
                            format!("cannot read devices to place stage '{}': {err}", spec.name);
                        self.fail_stage(run, &spec.name, message)?;
                        continue;
                    }
                };
                let loads = device_loads(spec.device, devices, running, &|_| false);
                let need = self.need_of(&spec);
                let key = (run_index, spec.name.clone());
                let entry = tries.entry(key).or_default();
                // On the host, cores are placed as well as memory: stages that together would
                // want more cores than the machine has run one after the other.
                let on_host = pool.kind() == baton_memory::BackendKind::Host;
                let cores = host_cores();
                let threads = match (on_host, spec.threads) {
                    (true, Some(t)) => t.on(cores),
                    _ => 0,
                };
                let busy: Vec<&Running> = running.iter().filter(|r| r.threads > 0).collect();
                let busy_cores: u32 = busy.iter().map(|r| r.threads).sum();
                if threads > 0 && busy_cores > 0 && busy_cores + threads > cores {
                    let names: Vec<&str> = busy.iter().map(|r| r.stage.as_str()).collect();
                    let reason = format!(
                        "{busy_cores} of the host's {cores} cores are busy ({}); it needs {threads}",
                        names.join(", ")
                    );
                    self.say_waiting(run, &spec.name, entry, "cores", reason);
                    continue;
                }
                if entry.excluded.len() >= loads.len() {
                    entry.excluded.clear();
                }
                let ask = Ask {
                    stage: &spec.name,
                    need,
                    least: spec.memory_min,
                    context: pool.context_overhead(),
                };
                match place(ask, &loads, &entry.excluded, self.reserve) {
                    Placement::Place { index, need } => {
                        entry.waiting_since = None;
                        entry.last_said = None;
                        // Every attempt starts from nothing at its outputs.
                        let outputs: Vec<String> =
                            spec.outputs.iter().map(|o| fill(o, &run.vars)).collect();
                        match set_aside(&run.dir, &spec.name, &outputs) {
                            Ok(moved) if !moved.is_empty() => {
                                self.observer.event(&Event::Notice {
                                    run: &run.manifest.run_id,
                                    message: &format!(
                                        "stage '{}': moved what an earlier attempt left ({}) to {STALE_DIR}/{}/ before it starts again",
                                        spec.name,
                                        moved.join(", "),
                                        spec.name
                                    ),
                                });
                            }
                            Ok(_) => {}
                            Err(err) => {
                                self.fail_stage(run, &spec.name, err.to_string())?;
                                continue;
                            }
                        }
                        let snapshot = &loads
                            .iter()
                            .find(|l| l.snapshot.index == index)
                            .expect("placed on a listed device")
                            .snapshot;
                        let granted = need + pool.context_overhead();
                        let live = Arc::new(AtomicU64::new(0));
                        running.push(Running {
                            run: run_index,
                            stage: spec.name.clone(),
                            group: None,
                            pool: spec.device,
                            index,
                            granted,
                            live: live.clone(),
                            threads,
                            prepared: None,
                            job: None,
                        });
                        let starting = Instant::now();
                        self.start(
                            run_index,
                            run,
                            &spec,
                            pool,
                            snapshot,
                            granted,
                            live,
                            tx.clone(),
                            None,
                        )?;
                        tracing::debug!(
                            "stage '{}' of {}: start took {:.1?}",
                            spec.name,
                            run.manifest.run_id,
                            starting.elapsed()
                        );
                    }
                    Placement::Wait { reason } => {
                        let since = *entry.waiting_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= run.pipeline.wait_timeout {
                            let message = format!(
                                "waited {}s for memory and gave up: {reason}",
                                run.pipeline.wait_timeout.as_secs()
                            );
                            self.fail_stage(run, &spec.name, message)?;
                            continue;
                        }
                        self.say_waiting(run, &spec.name, entry, "memory", reason);
                    }
                    Placement::Never { reason } => self.fail_stage(run, &spec.name, reason)?,
                }
            }
        }
        Ok(())
    }

    /// A stage waits (for memory or cores): said when the wait begins, then every 10 s. The
    /// numbers change with every stage that comes and goes, and rewriting manifests for each
    /// change would cost more than the waiting saves.
    fn say_waiting(
        &self,
        run: &mut RunPlan,
        stage: &str,
        entry: &mut Tries,
        what: &'static str,
        reason: String,
    ) {
        let record = run.manifest.stage_mut(stage);
        let due = entry
            .last_said
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if record.state != StageState::Waiting || due {
            entry.last_said = Some(Instant::now());
            record.state = StageState::Waiting;
            record.note = Some(reason.clone());
            self.save(run);
            self.observer.event(&Event::Waiting {
                run: &run.manifest.run_id,
                stage,
                reason: &reason,
                what,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        run_index: usize,
        run: &mut RunPlan,
        spec: &StageSpec,
        pool: Arc<dyn MemoryBackend>,
        device: &DeviceSnapshot,
        granted: u64,
        live: Arc<AtomicU64>,
        tx: mpsc::Sender<Message>,
        go: Option<Go>,
    ) -> Result<(), RunnerError> {
        let record = run.manifest.stage_mut(&spec.name);
        let number = record.attempts.len() as u32 + 1;
        let token = attempt_token(&run.dir, &spec.name, number);
        record.state = StageState::Running;
        record.note = go.as_ref().map(|_| {
            format!(
                "prepared ahead while {} runs",
                spec.after
                    .iter()
                    .map(|d| format!("'{d}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        let mut attempt = Attempt::begin(number, &device.label(), device.index, granted);
        attempt.token = token.clone();
        record.attempts.push(attempt);
        self.save(run);
        std::fs::create_dir_all(run.dir.join("logs")).map_err(|e| RunnerError::Io {
            action: "cannot create",
            path: run.dir.join("logs"),
            source: e,
        })?;
        self.warm_next(run, spec);
        let argv = spec.command.argv();
        let env = stage_env(
            run,
            spec,
            &*pool,
            device,
            go.as_ref().map_or(granted, |g| g.budget),
            number,
            &token,
            self.catalog.inherited_prefixes(),
        );
        let plan = AttemptPlan {
            run_id: run.manifest.run_id.clone(),
            stage: spec.name.clone(),
            number,
            launch: Launch {
                stage: spec.name.clone(),
                argv: argv.iter().map(|a| fill(a, &run.vars)).collect(),
                env,
                cwd: run.dir.clone(),
                log: log_path(&run.dir, &spec.name),
                go: go.as_ref().map(|g| g.read.clone()),
            },
            token,
            backend: pool,
            device_index: device.index,
            device_label: device.label(),
            granted,
            timeout: spec.timeout,
            reclaim_timeout: run.pipeline.reclaim_timeout,
            outputs: spec.outputs.iter().map(|o| fill(o, &run.vars)).collect(),
            go: go.map(|g| g.state),
        };
        let executor = self.executor.clone();
        let observer = self.observer.clone();
        let stage = spec.name.clone();
        attempt_thread(
            &format!("stage-{stage}"),
            run_index,
            stage.clone(),
            &run.dir,
            tx.clone(),
            move || {
                let on_start = |pid| {
                    let _ = tx.send(Message::Started {
                        run: run_index,
                        stage: stage.clone(),
                        pid,
                    });
                };
                run_attempt(&plan, &*executor, &*observer, &live, &on_start)
            },
        )
    }

    /// Pulls the weights of the stages that wait for `spec` into the page cache, in the
    /// background, while `spec` runs: their loads then read memory, not the disk. A stage's
    /// `warm` files, and a built-in stage's own weights (its voice engine's, if it uses one).
    /// Failures only cost the head start; a listed file that is not there is said.
    /// `BATON_WARM_AHEAD=0` turns it off (to measure what it saves).
    fn warm_next(&self, run: &RunPlan, spec: &StageSpec) {
        if std::env::var("BATON_WARM_AHEAD").is_ok_and(|v| v == "0") {
            return;
        }
        for next in run.pipeline.stages.iter().filter(|n| {
            n.after.contains(&spec.name)
                && run
                    .manifest
                    .stage(&n.name)
                    .is_none_or(|r| r.state != StageState::Succeeded)
        }) {
            let mut files = Vec::new();
            for w in &next.warm {
                let path = std::path::PathBuf::from(fill(w, &run.vars));
                let path = if path.is_relative() && !run.pipeline.dir.is_empty() {
                    Path::new(&run.pipeline.dir).join(path)
                } else {
                    path
                };
                if path.is_file() {
                    files.push(path);
                } else {
                    self.observer.event(&Event::Notice {
                        run: &run.manifest.run_id,
                        message: &format!(
                            "cannot warm '{}' for stage '{}': no such file",
                            path.display(),
                            next.name
                        ),
                    });
                }
            }
            let builtin = match &next.command {
                StageCommand::Builtin(b) => Some(b.name.clone()),
                StageCommand::Argv(_) => None,
            };
            let (catalog, env) = (self.catalog.clone(), next.env.clone());
            let (observer, run_id) = (self.observer.clone(), run.manifest.run_id.clone());
            let (name, before) = (next.name.clone(), spec.name.clone());
            // Resolving a built-in stage's model may read and check it: not on this thread.
            let _ = std::thread::Builder::new()
                .name(format!("warm-{name}"))
                .spawn(move || {
                    if let Some(builtin) = builtin {
                        files.extend(catalog.weights(&builtin, &env));
                    }
                    if files.is_empty() {
                        return;
                    }
                    let bytes: u64 = files
                        .iter()
                        .filter_map(|f| std::fs::metadata(f).ok())
                        .map(|m| m.len())
                        .sum();
                    observer.event(&Event::Notice {
                        run: &run_id,
                        message: &format!(
                            "warming {} file(s), {}, for stage '{name}' while '{before}' runs",
                            files.len(),
                            baton_base::format_bytes(bytes),
                        ),
                    });
                    for f in files {
                        match baton_base::page_cache::warm(&f, 4) {
                            Ok(report) => tracing::info!("warmed for '{name}': {report}"),
                            Err(e) => tracing::warn!("could not warm for '{name}': {e}"),
                        }
                    }
                });
        }
    }

    fn handle(
        &self,
        message: Message,
        runs: &mut [RunPlan],
        running: &mut Vec<Running>,
        tries: &mut HashMap<(usize, String), Tries>,
    ) -> Result<(), RunnerError> {
        match message {
            Message::Submitted { run, stage, job } => {
                if let Some(r) = running
                    .iter_mut()
                    .find(|r| r.run == run && r.stage == stage)
                {
                    r.job = Some(job);
                }
                // Saved at once: a resume after `kill -9` follows the job instead of submitting
                // the stage again.
                let run = &mut runs[run];
                if let Some(attempt) = run.manifest.stage_mut(&stage).attempts.last_mut() {
                    attempt.job_id = Some(job);
                }
                self.save(run);
                Ok(())
            }
            Message::Started { run, stage, pid } => {
                if let Some(r) = running
                    .iter_mut()
                    .find(|r| r.run == run && r.stage == stage)
                {
                    r.group = Some(pid);
                }
                // Kept in memory until the attempt ends: resume finds an interrupted attempt's
                // processes by its token, so this costs no manifest write.
                let run = &mut runs[run];
                if let Some(attempt) = run.manifest.stage_mut(&stage).attempts.last_mut() {
                    attempt.pid = Some(pid);
                }
                Ok(())
            }
            Message::Done {
                run: run_index,
                stage,
                outcome,
            } => {
                let handled = Instant::now();
                let prepared = running
                    .iter()
                    .find(|r| r.run == run_index && r.stage == stage)
                    .and_then(|r| r.prepared.as_ref());
                let cancelled = prepared.and_then(|p| p.cancelled.clone());
                // A prestarted stage that ends well before its go did not wait for it: it ran
                // beside the stages it comes after, on memory it was not given.
                let jumped = prepared.is_some() && cancelled.is_none();
                running.retain(|r| !(r.run == run_index && r.stage == stage));
                let run = &mut runs[run_index];
                let spec = run
                    .pipeline
                    .stage(&stage)
                    .expect("stage of this pipeline")
                    .clone();
                let AttemptOutcome {
                    mut attempt,
                    mut retriable,
                    artifacts,
                } = *outcome;
                if jumped && attempt.failure.is_none() {
                    attempt.failure = Some(
                        "it ended before its go: a stage with prestart = true must print baton:ready and wait for the go on BATON_GO_FD (docs/runner.md, \"Prestart\"), or drop prestart".into(),
                    );
                    retriable = false;
                }
                let entry = tries.entry((run_index, stage.clone())).or_default();
                let (state, note) = match &attempt.failure {
                    // Stopped before its go: not a failure of its own, and not retried.
                    _ if cancelled.is_some() => {
                        let (state, why) = cancelled.expect("cancelled");
                        (state, Some(why))
                    }
                    None => {
                        let record = run.manifest.stage_mut(&stage);
                        record.artifacts = artifacts;
                        // Only an attempt that ran as planned teaches a need: one that warned
                        // (fell back to cards, say) peaked at what it did instead.
                        if let Some(learned) = &self.learned
                            && matches!(spec.memory, MemoryNeed::Learned { .. })
                            && attempt.peak_bytes > 0
                            && attempt.warnings.is_empty()
                            && let Err(err) = learned
                                .record(&learned_key(&spec, &*self.catalog), attempt.peak_bytes)
                        {
                            tracing::warn!(
                                "could not store the learned memory need of '{stage}': {err}"
                            );
                        }
                        // What the stage fell back to (cards, a plainer voice, no video) is
                        // its note: the final table and run.json show it.
                        let note =
                            (!attempt.warnings.is_empty()).then(|| attempt.warnings.join("; "));
                        (StageState::Succeeded, note)
                    }
                    Some(why) if interrupt::requested().is_some() => (
                        StageState::Failed,
                        Some(format!(
                            "interrupted by {}: {why}",
                            interrupt::name(interrupt::requested().unwrap_or_default())
                        )),
                    ),
                    Some(why) => {
                        if attempt.out_of_memory
                            && retriable
                            && entry.ooms < run.pipeline.oom_retries
                        {
                            entry.ooms += 1;
                            entry.excluded.push(attempt.device_index);
                            (
                                StageState::Pending,
                                Some(format!(
                                    "ran out of memory on {}; retrying elsewhere or when memory frees: {why}",
                                    attempt.device
                                )),
                            )
                        } else if !attempt.out_of_memory
                            && retriable
                            && entry.failures < spec.retries
                        {
                            entry.failures += 1;
                            (
                                StageState::Pending,
                                Some(format!(
                                    "attempt {} failed, retrying: {why}",
                                    attempt.number
                                )),
                            )
                        } else {
                            (
                                StageState::Failed,
                                Some(format!("failed after {} attempt(s): {why}", attempt.number)),
                            )
                        }
                    }
                };
                let record = run.manifest.stage_mut(&stage);
                record.state = state;
                record.note = note.clone();
                if let Some(last) = record.attempts.last_mut() {
                    *last = attempt;
                }
                if state == StageState::Failed {
                    run.manifest.error = Some(format!(
                        "stage '{stage}' {}",
                        note.clone().unwrap_or_default()
                    ));
                }
                self.save(run);
                if let Some(message) = note.as_deref() {
                    self.observer.event(&Event::Notice {
                        run: &run.manifest.run_id,
                        message: &format!("stage '{stage}' {message}"),
                    });
                }
                tracing::debug!(
                    "stage '{stage}' of {}: bookkeeping took {:.1?}",
                    run.manifest.run_id,
                    handled.elapsed()
                );
                let record = run.manifest.stage(&stage).expect("recorded");
                self.observer.event(&Event::Finished {
                    run: &run.manifest.run_id,
                    stage: &stage,
                    attempt: record.attempts.last().expect("an attempt ran"),
                    state,
                });
                Ok(())
            }
        }
    }

    /// Writes a run's manifest. A run whose manifest cannot be written fails on its own, with
    /// the reason kept in memory for the summary: it starts nothing more, and every other run
    /// of a batch goes on.
    fn save(&self, run: &mut RunPlan) {
        if run.write_error.is_some() {
            return;
        }
        if let Err(err) = run.manifest.save(&run.dir) {
            let why = format!("cannot write its manifest: {err}");
            self.observer.event(&Event::Notice {
                run: &run.manifest.run_id,
                message: &format!("run fails: {why}; other runs go on"),
            });
            run.manifest.state = RunState::Failed;
            run.manifest.error = Some(why.clone());
            run.write_error = Some(why);
        }
    }

    fn fail_stage(&self, run: &mut RunPlan, stage: &str, why: String) -> Result<(), RunnerError> {
        let record = run.manifest.stage_mut(stage);
        record.state = StageState::Failed;
        record.note = Some(why.clone());
        // Said once: a reason that already names the stage ("stage 'a' needs …") is not
        // prefixed with it again.
        let about = format!("stage '{stage}'");
        let (error, notice) = match why.strip_prefix(&about) {
            Some(_) => (why.clone(), format!("failed: {why}")),
            None => (format!("{about}: {why}"), format!("{about} failed: {why}")),
        };
        run.manifest.error = Some(error);
        self.save(run);
        self.observer.event(&Event::Notice {
            run: &run.manifest.run_id,
            message: &notice,
        });
        Ok(())
    }

    /// Stages whose dependency failed or was skipped are skipped, and say which.
    fn skip_blocked(&self, runs: &mut [RunPlan]) -> Result<(), RunnerError> {
        for run in runs.iter_mut() {
            loop {
                let blocked = run.pipeline.stages.iter().find_map(|spec| {
                    let state = run.manifest.stage(&spec.name)?.state;
                    if !matches!(state, StageState::Pending | StageState::Waiting) {
                        return None;
                    }
                    spec.after
                        .iter()
                        .find(|dep| {
                            run.manifest.stage(dep).is_some_and(|d| {
                                matches!(d.state, StageState::Failed | StageState::Skipped)
                            })
                        })
                        .map(|dep| (spec.name.clone(), dep.clone()))
                });
                let Some((stage, dep)) = blocked else { break };
                let record = run.manifest.stage_mut(&stage);
                record.state = StageState::Skipped;
                record.note = Some(format!("not run: stage '{dep}' did not succeed"));
                self.save(run);
            }
        }
        Ok(())
    }

    fn finish_run(&self, run: &mut RunPlan) -> Result<(), RunnerError> {
        let succeeded = run.write_error.is_none()
            && run
                .manifest
                .stages
                .iter()
                .all(|s| s.state == StageState::Succeeded);
        let interrupted =
            interrupt::requested().filter(|_| !succeeded && run.write_error.is_none());
        run.manifest.state = match (succeeded, interrupted) {
            (true, _) => RunState::Succeeded,
            (false, Some(_)) => RunState::Interrupted,
            (false, None) => RunState::Failed,
        };
        if succeeded {
            run.manifest.error = None;
        }
        if let Some(signal) = interrupted {
            run.manifest.error = Some(format!(
                "interrupted by {}; `baton resume {}` finishes it",
                interrupt::name(signal),
                run.dir.display()
            ));
        }
        self.save(run);
        let made = self.catalog.report_html(&run.dir);
        if let Err(err) = crate::report::write_run_report(&run.dir, &run.manifest, made) {
            tracing::warn!(
                "could not write the report of {}: {err}",
                run.manifest.run_id
            );
        }
        self.observer.event(&Event::RunFinished {
            run: &run.manifest.run_id,
            succeeded,
        });
        Ok(())
    }
}

/// How long stages get to end on SIGTERM, when baton is interrupted, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Sends `signal` to the process group of every running stage.
fn signal_groups(running: &[Running], signal: i32) {
    for group in running.iter().filter_map(|r| r.group) {
        // SAFETY: kill has no memory-safety preconditions; a negative PID names a group.
        unsafe {
            libc::kill(-(group as i32), signal);
        }
    }
}

/// Runs one attempt (`body`) on a thread of its own that lives as long as the attempt (a local
/// stage's parent-death signal is tied to it) and hands its outcome to the scheduler.
fn attempt_thread(
    name: &str,
    run: usize,
    stage: String,
    run_dir: &Path,
    tx: mpsc::Sender<Message>,
    body: impl FnOnce() -> AttemptOutcome + Send + 'static,
) -> Result<(), RunnerError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let outcome = body();
            let _ = tx.send(Message::Done {
                run,
                stage,
                outcome: Box::new(outcome),
            });
        })
        .map(|_| ())
        .map_err(|e| RunnerError::Io {
            action: "cannot start a thread for",
            path: run_dir.to_path_buf(),
            source: e,
        })
}

/// One reading of each device pool, taken once per scheduling pass.
type Readings = HashMap<DeviceKind, Result<Vec<DeviceSnapshot>, String>>;

/// The first of `spec`'s inputs that is not in `run`'s folder.
fn missing_input(run: &RunPlan, spec: &StageSpec) -> Option<std::path::PathBuf> {
    spec.inputs
        .iter()
        .map(|i| run.dir.join(fill(i, &run.vars)))
        .find(|p| !p.exists())
}

/// What each device of `kind` holds and owes: the stages baton runs there (granted, or held if
/// more) and the processes that are none of them.
fn device_loads(
    kind: DeviceKind,
    devices: Vec<DeviceSnapshot>,
    running: &[Running],
    skip: &dyn Fn(&Running) -> bool,
) -> Vec<DeviceLoad> {
    devices
        .into_iter()
        .map(|snapshot| {
            let here = || {
                running
                    .iter()
                    .filter(|r| r.pool == kind && r.index == snapshot.index && !skip(r))
            };
            let tracked = here()
                .map(|r| r.granted.max(r.live.load(Ordering::Relaxed)))
                .sum();
            let groups: Vec<u32> = here().filter_map(|r| r.group).collect();
            let outside = snapshot
                .processes
                .iter()
                .filter(|p| p.bytes.unwrap_or(0) > 0)
                .filter(|p| {
                    !baton_base::procfs::stat(p.pid).is_some_and(|s| groups.contains(&s.pgrp))
                })
                .cloned()
                .collect();
            DeviceLoad {
                snapshot,
                tracked,
                outside,
            }
        })
        .collect()
}

fn run_is_over(run: &RunPlan) -> bool {
    run.manifest.stages.iter().all(|s| {
        matches!(
            s.state,
            StageState::Succeeded | StageState::Failed | StageState::Skipped
        )
    })
}

/// The key a learned need is stored under: the stage's name and its model (the pipeline's
/// `model = …`, else the model the catalog says a builtin runs, else the program).
pub fn learned_key(spec: &StageSpec, catalog: &dyn StageCatalog) -> String {
    let model = spec.model.clone().unwrap_or_else(|| match &spec.command {
        StageCommand::Argv(argv) => Path::new(&argv[0])
            .file_name()
            .map_or_else(|| argv[0].clone(), |n| n.to_string_lossy().into_owned()),
        StageCommand::Builtin(builtin) => catalog
            .model(&builtin.name, &spec.env)
            .unwrap_or_else(|| builtin.name.clone()),
    });
    format!("{}:{model}", spec.name)
}

/// Marks every process of one attempt (see [`crate::group`]). It names the run by its folder,
/// resolved, not by its id (two batons that start runs of the same topic in the same second,
/// in different output folders, get the same run id), and the baton process that started it
/// (its PID and start time), so no other baton ever takes the attempt's processes for its own.
/// The manifest keeps it, for `baton resume` to find what an interrupted attempt left.
pub fn attempt_token(run_dir: &Path, stage: &str, number: u32) -> String {
    let run_dir = run_dir
        .canonicalize()
        .unwrap_or_else(|_| run_dir.to_path_buf());
    let me = std::process::id();
    let since = baton_base::procfs::stat(me).map_or(0, |s| s.start_ticks);
    format!("{}/{stage}/{number}@{me}.{since}", run_dir.display())
}

/// The complete environment of a stage: what it inherits, its `[env]`, then baton's.
#[allow(clippy::too_many_arguments)]
fn stage_env(
    run: &RunPlan,
    spec: &StageSpec,
    pool: &dyn MemoryBackend,
    device: &DeviceSnapshot,
    granted: u64,
    number: u32,
    token: &str,
    inherited: &[&str],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            PASSED_VARS.contains(&k.as_str())
                || PASSED_PREFIXES
                    .iter()
                    .chain(inherited)
                    .any(|p| k.starts_with(p))
        })
        .filter(|(k, _)| k != "CUDA_VISIBLE_DEVICES")
        .collect();
    env.extend(
        spec.env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v, &run.vars))),
    );
    let ours = [
        ("BATON_RUN_DIR", run.dir.display().to_string()),
        ("BATON_RUN_ID", run.manifest.run_id.clone()),
        ("BATON_TOPIC", run.manifest.topic.clone()),
        ("BATON_SLUG", run.manifest.slug.clone()),
        ("BATON_STAGE", spec.name.clone()),
        ("BATON_ATTEMPT", number.to_string()),
        ("BATON_MEMORY_BUDGET", granted.to_string()),
        (TOKEN_VAR, token.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(device_env(
        pool.kind(),
        device,
        spec.device == DeviceKind::Gpu,
    ))
    .collect::<Vec<_>>();
    env.retain(|(k, _)| !ours.iter().any(|(o, _)| o == k));
    env.extend(ours);
    env
}

/// The variables that name a stage's device: which GPU it may see (`CUDA_VISIBLE_DEVICES`:
/// the GPU's UUID, a simulated GPU's index, nothing for a CPU stage or host memory) and how
/// baton names it. `baton stage-exec` sets them again on a Slurm node, for the GPU Slurm gave.
pub fn device_env(
    kind: baton_memory::BackendKind,
    device: &DeviceSnapshot,
    gpu: bool,
) -> Vec<(String, String)> {
    let visible = match kind {
        _ if !gpu => String::new(),
        baton_memory::BackendKind::Host => String::new(),
        baton_memory::BackendKind::Nvml | baton_memory::BackendKind::Cuda => device.uuid.clone(),
        baton_memory::BackendKind::Sim => device.index.to_string(),
    };
    [
        ("CUDA_VISIBLE_DEVICES", visible),
        ("BATON_BACKEND", kind.name().to_string()),
        ("BATON_DEVICE", device.label()),
        ("BATON_DEVICE_INDEX", device.index.to_string()),
        ("BATON_DEVICE_UUID", device.uuid.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The host's cores for placement: `BATON_HOST_CORES` when set (tests, or a share of a shared
/// machine), else what the OS gives this process.
fn host_cores() -> u32 {
    std::env::var("BATON_HOST_CORES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}
