//! Under `--executor slurm`: a ready stage is submitted as a job and followed, instead of placed
//! and started here ([`crate::slurm`] holds the Slurm side); a resumed run follows the jobs a
//! stopped baton left queued or running.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use baton_memory::DeviceSnapshot;

use super::{Engine, Message, Running, attempt_thread, attempt_token, stage_env};
use crate::RunnerError;
use crate::attempt::{AttemptOutcome, log_path};
use crate::events::Event;
use crate::manifest::{Attempt, StageState};
use crate::outputs::set_aside;
use crate::pipeline::{DeviceKind, StageSpec, fill};
use crate::plan::RunPlan;

/// How `--executor slurm` submits: what the nodes open as their GPUs, and the baton that runs
/// there (the same path on every node: the filesystem is shared).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `sim`, `gpu` or `auto`, as baton was given it.
    pub device: String,
    pub baton: std::path::PathBuf,
}

impl Engine {
    /// Submits a ready stage as a Slurm job and follows it on a thread of its own, as a local
    /// attempt's thread follows its process. The GRES comes from the stage's need (learned or
    /// declared) through the pipeline's `[slurm]` mapping, a step larger per out-of-memory
    /// attempt before it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit(
        &self,
        run_index: usize,
        run: &mut RunPlan,
        spec: &StageSpec,
        cluster: &Cluster,
        ooms: u32,
        running: &mut Vec<Running>,
        tx: &mpsc::Sender<Message>,
    ) -> Result<(), RunnerError> {
        let need = self.need_of(spec);
        let gpu = spec.device == DeviceKind::Gpu;
        let config = run.pipeline.slurm.clone();
        let gres = gpu.then(|| config.gres_for(need, ooms));
        let record = run.manifest.stage_mut(&spec.name);
        let number = record.attempts.len() as u32 + 1;
        let token = attempt_token(&run.dir, &spec.name, number);
        record.state = StageState::Running;
        record.note = None;
        let mut attempt = Attempt::begin(number, "slurm", 0, need);
        attempt.token = token.clone();
        record.attempts.push(attempt.clone());
        self.save(run);
        for dir in ["logs", "slurm"] {
            std::fs::create_dir_all(run.dir.join(dir)).map_err(|e| RunnerError::Io {
                action: "cannot create",
                path: run.dir.join(dir),
                source: e,
            })?;
        }
        let outputs: Vec<String> = spec.outputs.iter().map(|o| fill(o, &run.vars)).collect();
        if let Err(err) = set_aside(&run.dir, &spec.name, &outputs) {
            return self.fail_stage(run, &spec.name, err.to_string());
        }
        // The node sets the device's variables again for the GPU Slurm gives.
        let nowhere = DeviceSnapshot {
            backend: self.gpu.kind(),
            index: 0,
            name: "slurm".into(),
            uuid: String::new(),
            total: 0,
            used: 0,
            free: 0,
            reserved: 0,
            utilization: None,
            sensors: Default::default(),
            processes: Vec::new(),
        };
        let (plan_file, record_file) = crate::slurm::plan_paths(&run.dir, &spec.name, number);
        let plan = crate::slurm::NodePlan {
            run_id: run.manifest.run_id.clone(),
            stage: spec.name.clone(),
            number,
            argv: spec
                .command
                .argv()
                .iter()
                .map(|a| fill(a, &run.vars))
                .collect(),
            env: stage_env(
                run,
                spec,
                &*self.gpu,
                &nowhere,
                need,
                number,
                &token,
                self.catalog.inherited_prefixes(),
            ),
            cwd: run.dir.clone(),
            log: log_path(&run.dir, &spec.name),
            token,
            gpu,
            device: cluster.device.clone(),
            granted: need,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            reclaim_timeout_ms: run.pipeline.reclaim_timeout.as_millis() as u64,
            outputs,
            record: record_file,
        };
        running.push(Running {
            run: run_index,
            stage: spec.name.clone(),
            group: None,
            pool: spec.device,
            index: 0,
            granted: need,
            live: Arc::new(AtomicU64::new(0)),
            threads: 0,
            prepared: None,
            job: None,
        });
        let (observer, baton) = (self.observer.clone(), cluster.baton.clone());
        let (stage, sender) = (spec.name.clone(), tx.clone());
        attempt_thread(
            &format!("job-{stage}"),
            run_index,
            stage.clone(),
            &run.dir,
            tx.clone(),
            move || match crate::slurm::submit(&plan, &plan_file, &config, gres.as_deref(), &baton)
            {
                Ok(job) => {
                    let _ = sender.send(Message::Submitted {
                        run: run_index,
                        stage: stage.clone(),
                        job,
                    });
                    observer.event(&Event::Started {
                        run: &plan.run_id,
                        stage: &stage,
                        device: &format!("job {job}"),
                        attempt: number,
                    });
                    crate::slurm::follow(
                        job,
                        &plan.run_id,
                        &stage,
                        &plan.log,
                        &plan.record,
                        attempt,
                        &*observer,
                    )
                }
                Err(why) => {
                    attempt.ended_unix_ms = Some(crate::manifest::unix_ms());
                    attempt.failure = Some(format!("could not submit: {why}"));
                    AttemptOutcome {
                        attempt,
                        retriable: false,
                        artifacts: Vec::new(),
                    }
                }
            },
        )
    }

    /// After `baton resume`: follows the jobs an interrupted baton left queued or running
    /// (their stages are still running, their attempts unended, their job ids recorded)
    /// instead of submitting them again.
    pub(super) fn follow_resumed(
        &self,
        runs: &[RunPlan],
        running: &mut Vec<Running>,
        tx: &mpsc::Sender<Message>,
    ) -> Result<(), RunnerError> {
        for (run_index, run) in runs.iter().enumerate() {
            for record in &run.manifest.stages {
                let Some(attempt) = record.attempts.last() else {
                    continue;
                };
                let (Some(job), None) = (attempt.job_id, attempt.ended_unix_ms) else {
                    continue;
                };
                if record.state != StageState::Running
                    || running
                        .iter()
                        .any(|r| r.run == run_index && r.stage == record.name)
                {
                    continue;
                }
                let spec = run
                    .pipeline
                    .stage(&record.name)
                    .expect("stage of this pipeline");
                running.push(Running {
                    run: run_index,
                    stage: record.name.clone(),
                    group: None,
                    pool: spec.device,
                    index: 0,
                    granted: attempt.granted_bytes,
                    live: Arc::new(AtomicU64::new(0)),
                    threads: 0,
                    prepared: None,
                    job: Some(job),
                });
                let (_, record_file) =
                    crate::slurm::plan_paths(&run.dir, &record.name, attempt.number);
                let observer = self.observer.clone();
                let (stage, run_id) = (record.name.clone(), run.manifest.run_id.clone());
                let log = log_path(&run.dir, &record.name);
                let attempt = attempt.clone();
                let name = format!("job-{stage}");
                attempt_thread(
                    &name,
                    run_index,
                    stage.clone(),
                    &run.dir,
                    tx.clone(),
                    move || {
                        crate::slurm::follow(
                            job,
                            &run_id,
                            &stage,
                            &log,
                            &record_file,
                            attempt,
                            &*observer,
                        )
                    },
                )?;
            }
        }
        Ok(())
    }
}
