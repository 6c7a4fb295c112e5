//! Prestart: a stage that opts in is started ahead of its turn, while the stages it waits for
//! run, holding only its context; it prepares, says `baton:ready`, and waits for a go on a pipe,
//! which the scheduler sends once those stages have succeeded (their reclaim proved) and its
//! need fits. Stopped, and not retried, when one of them fails.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::{Engine, Message, Readings, Running, Tries, device_loads, missing_input};
use crate::RunnerError;
use crate::attempt::GoState;
use crate::events::Event;
use crate::manifest::StageState;
use crate::outputs::set_aside;
use crate::pipeline::{StageSpec, fill};
use crate::placement::{Ask, Placement, place};
use crate::plan::RunPlan;

/// A prestarted stage waiting for its go.
pub(super) struct Prepared {
    /// The go pipe's write end; dropping it tells the stage no go will come.
    pub(super) pipe: Option<std::fs::File>,
    /// What the attempt's thread reads of the go.
    pub(super) go: Arc<GoState>,
    /// Set when it is stopped before its go: the state and note its stage then takes.
    pub(super) cancelled: Option<(StageState, String)>,
    /// The need its environment's budget promised: the go waits until all of it fits.
    pub(super) need: u64,
}

/// What a prestarted stage is started with.
pub(super) struct Go {
    /// The go pipe's read end, for the stage.
    pub(super) read: Arc<OwnedFd>,
    pub(super) state: Arc<GoState>,
    /// The budget it is expected to get (its need and context), in its environment until the
    /// go says what it got.
    pub(super) budget: u64,
}

impl Engine {
    /// Gives prestarted stages their go once every stage they wait for has succeeded (which a
    /// stage does only after its reclaim is proved) and their need fits on the device they
    /// prepared on. Grants go one at a time, each counted before the next is placed, so two
    /// prepared stages never share memory that is free on paper. A prepared stage whose
    /// upstream failed is stopped, and so is one whose wait for memory outlasts `wait_timeout`.
    pub(super) fn grant_prepared(
        &self,
        runs: &mut [RunPlan],
        running: &mut [Running],
        tries: &mut HashMap<(usize, String), Tries>,
        readings: &mut Readings,
    ) -> Result<(), RunnerError> {
        for i in 0..running.len() {
            let waiting = running[i]
                .prepared
                .as_ref()
                .is_some_and(|p| p.cancelled.is_none() && p.pipe.is_some());
            if !waiting {
                continue;
            }
            let (run_index, stage) = (running[i].run, running[i].stage.clone());
            let run = &mut runs[run_index];
            let spec = run
                .pipeline
                .stage(&stage)
                .expect("stage of this pipeline")
                .clone();
            let state_of = |dep: &String| run.manifest.stage(dep).map(|r| r.state);
            if let Some(dep) = spec
                .after
                .iter()
                .find(|d| matches!(state_of(d), Some(StageState::Failed | StageState::Skipped)))
            {
                let why = format!("not run: stage '{dep}' did not succeed");
                cancel(&mut running[i], StageState::Skipped, why);
                continue;
            }
            if !spec
                .after
                .iter()
                .all(|d| state_of(d) == Some(StageState::Succeeded))
            {
                continue;
            }
            if let Some(missing) = missing_input(run, &spec) {
                let why = format!("its input '{}' is missing", missing.display());
                cancel(&mut running[i], StageState::Failed, why);
                continue;
            }
            let pool = self.pool(spec.device).clone();
            let devices = match self.devices(spec.device, readings) {
                Ok(devices) => devices,
                Err(err) => {
                    let why = format!("cannot read devices to place stage '{stage}': {err}");
                    cancel(&mut running[i], StageState::Failed, why);
                    continue;
                }
            };
            // Its own context is in the ask, not among what is held.
            let me = |r: &Running| r.run == run_index && r.stage == stage;
            let loads = device_loads(spec.device, devices, running, &me);
            let index = running[i].index;
            let others: Vec<usize> = loads
                .iter()
                .map(|l| l.snapshot.index)
                .filter(|&x| x != index)
                .collect();
            let context = pool.context_overhead();
            let promised = running[i].prepared.as_ref().map_or(0, |p| p.need);
            let ask = Ask {
                stage: &stage,
                need: promised,
                least: None,
                context,
            };
            let entry = tries.entry((run_index, stage.clone())).or_default();
            match place(ask, &loads, &others, self.reserve) {
                Placement::Place { need, .. } => {
                    entry.waiting_since = None;
                    entry.last_said = None;
                    let granted = need + context;
                    let r = &mut running[i];
                    let prepared = r.prepared.take().expect("prepared");
                    prepared.go.granted.store(granted, Ordering::Relaxed);
                    let at = crate::manifest::unix_ms();
                    prepared.go.at_unix_ms.store(at, Ordering::Relaxed);
                    r.granted = granted;
                    // A stage that died while it waited is seen when its attempt ends.
                    if let Some(mut pipe) = prepared.pipe
                        && let Err(e) = writeln!(pipe, "go {granted}")
                    {
                        tracing::debug!("stage '{stage}': its go was not read: {e}");
                    }
                    let record = run.manifest.stage_mut(&stage);
                    record.note = None;
                    if let Some(attempt) = record.attempts.last_mut() {
                        attempt.granted_bytes = granted;
                        attempt.go_unix_ms = Some(at);
                    }
                    self.save(run);
                }
                Placement::Wait { reason } => {
                    let since = *entry.waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= run.pipeline.wait_timeout {
                        let why = format!(
                            "prepared, then waited {}s for memory and gave up: {reason}",
                            run.pipeline.wait_timeout.as_secs()
                        );
                        cancel(&mut running[i], StageState::Failed, why);
                        continue;
                    }
                    let due = entry
                        .last_said
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
                    if due {
                        entry.last_said = Some(Instant::now());
                        let record = run.manifest.stage_mut(&stage);
                        record.note = Some(format!("prepared; waits for memory: {reason}"));
                        self.save(run);
                        self.observer.event(&Event::Waiting {
                            run: &run.manifest.run_id,
                            stage: &stage,
                            reason: &reason,
                            what: "memory",
                        });
                    }
                }
                Placement::Never { reason } => {
                    cancel(&mut running[i], StageState::Failed, reason);
                }
            }
        }
        Ok(())
    }

    /// Starts ahead of its turn each stage of `run` that opted in (`prestart`) and waits only
    /// for stages that run now, on a GPU: placed where its need fits once those have freed
    /// what they hold, if its context fits there now beside what runs, and no other prepared
    /// stage waits on that device. It prepares while they run and waits for its go
    /// ([`Engine::grant_prepared`]). `BATON_PRESTART=0` turns this off (to measure it).
    pub(super) fn prestart(
        &self,
        run_index: usize,
        run: &mut RunPlan,
        running: &mut Vec<Running>,
        tries: &mut HashMap<(usize, String), Tries>,
        readings: &mut Readings,
        tx: &mpsc::Sender<Message>,
    ) -> Result<(), RunnerError> {
        if std::env::var("BATON_PRESTART").is_ok_and(|v| v == "0") || self.cluster.is_some() {
            return Ok(());
        }
        let runs_now = |stage: &str| {
            running
                .iter()
                .any(|r| r.run == run_index && r.stage == stage && r.prepared.is_none())
        };
        let early: Vec<StageSpec> = run
            .pipeline
            .stages
            .iter()
            .filter(|spec| {
                spec.prestart
                    && run
                        .manifest
                        .stage(&spec.name)
                        .is_some_and(|r| r.state == StageState::Pending)
                    && !running
                        .iter()
                        .any(|r| r.run == run_index && r.stage == spec.name)
                    && spec.after.iter().any(|d| runs_now(d))
                    && spec.after.iter().all(|d| {
                        runs_now(d)
                            || run
                                .manifest
                                .stage(d)
                                .is_some_and(|r| r.state == StageState::Succeeded)
                    })
            })
            .cloned()
            .collect();
        for spec in early {
            let pool = self.pool(spec.device).clone();
            if pool.kind() == baton_memory::BackendKind::Host {
                continue;
            }
            let Ok(devices) = self.devices(spec.device, readings) else {
                continue;
            };
            // Where it will run: placed as if the stages it waits for had ended.
            let upstream = |r: &Running| r.run == run_index && spec.after.contains(&r.stage);
            let mut after = device_loads(spec.device, devices.clone(), running, &upstream);
            for load in &mut after {
                let freed: u64 = running
                    .iter()
                    .filter(|r| upstream(r) && r.pool == spec.device)
                    .filter(|r| r.index == load.snapshot.index)
                    .map(|r| r.live.load(Ordering::Relaxed))
                    .sum();
                load.snapshot.free = (load.snapshot.free + freed).min(load.snapshot.total);
            }
            let need = self.need_of(&spec);
            let context = pool.context_overhead();
            let excluded = tries
                .get(&(run_index, spec.name.clone()))
                .map(|t| t.excluded.clone())
                .unwrap_or_default();
            let ask = Ask {
                stage: &spec.name,
                need,
                least: spec.memory_min,
                context,
            };
            let Placement::Place { index, need } = place(ask, &after, &excluded, self.reserve)
            else {
                continue;
            };
            if running
                .iter()
                .any(|r| r.pool == spec.device && r.index == index && r.prepared.is_some())
            {
                continue;
            }
            // Its context must fit now, beside what runs.
            let now = device_loads(spec.device, devices, running, &|_| false);
            let others: Vec<usize> = now
                .iter()
                .map(|l| l.snapshot.index)
                .filter(|&x| x != index)
                .collect();
            let context_ask = Ask {
                stage: &spec.name,
                need: 0,
                least: None,
                context,
            };
            if !matches!(
                place(context_ask, &now, &others, self.reserve),
                Placement::Place { .. }
            ) {
                continue;
            }
            let outputs: Vec<String> = spec.outputs.iter().map(|o| fill(o, &run.vars)).collect();
            if set_aside(&run.dir, &spec.name, &outputs).is_err() {
                // The start in its turn says why.
                continue;
            }
            let (read, write) = baton_base::protocol::go_pipe().map_err(|e| RunnerError::Io {
                action: "cannot make a go pipe for",
                path: run.dir.clone(),
                source: e,
            })?;
            let state = Arc::new(GoState::default());
            let live = Arc::new(AtomicU64::new(0));
            running.push(Running {
                run: run_index,
                stage: spec.name.clone(),
                group: None,
                pool: spec.device,
                index,
                granted: context,
                live: live.clone(),
                threads: 0,
                prepared: Some(Prepared {
                    pipe: Some(write),
                    go: state.clone(),
                    cancelled: None,
                    need,
                }),
                job: None,
            });
            let snapshot = now
                .iter()
                .find(|l| l.snapshot.index == index)
                .expect("placed on a listed device")
                .snapshot
                .clone();
            let go = Go {
                read: Arc::new(read),
                state,
                budget: need + context,
            };
            self.start(
                run_index,
                run,
                &spec,
                pool,
                &snapshot,
                context,
                live,
                tx.clone(),
                Some(go),
            )?;
        }
        Ok(())
    }
}

/// Stops a prepared stage before its go: no go will come (its pipe closes, which ends its
/// wait), its processes are asked to stop, and its stage takes `state` with `why`.
fn cancel(r: &mut Running, state: StageState, why: String) {
    if let Some(prepared) = r.prepared.as_mut() {
        prepared.pipe = None;
        prepared.cancelled = Some((state, why));
    }
    if let Some(group) = r.group {
        // SAFETY: kill has no memory-safety preconditions; a negative PID names the group.
        unsafe {
            libc::kill(-(group as i32), libc::SIGTERM);
        }
    }
}
