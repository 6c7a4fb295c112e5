//! Stages as Slurm jobs (`--executor slurm`): for a user whose night of topics outgrows one
//! machine. Slurm places each stage on a node and a GPU (its GRES); on the node, `baton
//! stage-exec` supervises the stage exactly as the local runner does (process group,
//! parent-death signal, explicit environment, memory sampling, reclaim proof, orphans killed and
//! named) and writes the attempt's record into the run folder, which the submit host and the
//! nodes share. The scheduler on the submit host submits a stage when it is ready (`sbatch
//! --parsable`), follows its job (`squeue`, then `scontrol` for how it ended), and reads the
//! record into `run.json`.
//!
//! A job's id is in its attempt's record as soon as it is submitted, so `baton resume` after a
//! `kill -9` of baton follows the jobs still queued or running instead of submitting them
//! again, and reads the records of those that ended meanwhile.

use std::collections::BTreeMap;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RunnerError;
use crate::attempt::{AttemptOutcome, AttemptPlan, run_attempt};
use crate::events::{Event, Observer};
use crate::executor::Launch;
use crate::manifest::{Artifact, Attempt, unix_ms};

/// What a pipeline's `[slurm]` table says (all optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--time`, in Slurm's own form (`1:00:00`, `30`).
    pub time: Option<String>,
    /// Further `sbatch` arguments, as they are.
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// The GRES a GPU stage asks for when no request below matches (default `gpu:1`).
    pub gres: Option<String>,
    /// Memory needs to requests: the first whose `up_to` holds the stage's need gives its GRES
    /// (`[[slurm.request]]`, `up_to = "24GiB"`, `gres = "gpu:a10:1"`), so a learned peak picks
    /// the GPU type, or the number of shards, the cluster defines.
    #[serde(default, rename = "request")]
    pub requests: Vec<GresRequest>,
}

/// One line of the need-to-GRES mapping.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GresRequest {
    pub up_to: String,
    pub gres: String,
}

impl SlurmConfig {
    /// Checks the sizes of the mapping; `origin` names the file for the message.
    pub fn check(&self) -> Result<(), String> {
        for r in &self.requests {
            baton_base::units::parse_size(&r.up_to).map_err(|e| {
                format!(
                    "[[slurm.request]] up_to = \"{}\": {e}; give a size such as 24GiB",
                    r.up_to
                )
            })?;
            if r.gres.trim().is_empty() {
                return Err(format!(
                    "[[slurm.request]] up_to = \"{}\" has an empty gres; give one such as gpu:a100:1",
                    r.up_to
                ));
            }
        }
        Ok(())
    }

    /// The GRES for a GPU stage that needs `need` bytes, after `ooms` out-of-memory attempts:
    /// each one moves a step up the mapping (a larger GPU, more shards).
    pub fn gres_for(&self, need: u64, ooms: u32) -> String {
        let mut sized: Vec<(u64, &str)> = self
            .requests
            .iter()
            .filter_map(|r| {
                Some((
                    baton_base::units::parse_size(&r.up_to).ok()?,
                    r.gres.as_str(),
                ))
            })
            .collect();
        sized.sort_by_key(|(up_to, _)| *up_to);
        match sized.iter().position(|(up_to, _)| need <= *up_to) {
            Some(i) => sized[(i + ooms as usize).min(sized.len() - 1)]
                .1
                .to_string(),
            None => sized
                .last()
                .map(|(_, g)| g.to_string())
                .or_else(|| self.gres.clone())
                .unwrap_or_else(|| "gpu:1".into()),
        }
    }
}

/// The attempt as the node runs it: everything `baton stage-exec` needs, in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePlan {
    pub run_id: String,
    pub stage: String,
    pub number: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
    pub token: String,
    /// `gpu` or `cpu`: what the stage runs on.
    pub gpu: bool,
    /// The device choice baton was given (`sim`, `gpu`, `auto`), for the node's backend.
    pub device: String,
    pub granted: u64,
    pub timeout_ms: Option<u64>,
    pub reclaim_timeout_ms: u64,
    pub outputs: Vec<String>,
    /// Where the node writes the attempt's record.
    pub record: PathBuf,
}

/// What the node writes when the attempt is over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub attempt: Attempt,
    pub retriable: bool,
    pub artifacts: Vec<Artifact>,
}

/// Where an attempt's plan and record live: `slurm/{stage}-{number}.{plan,record}.json`.
pub fn plan_paths(run_dir: &Path, stage: &str, number: u32) -> (PathBuf, PathBuf) {
    let dir = run_dir.join("slurm");
    (
        dir.join(format!("{stage}-{number}.plan.json")),
        dir.join(format!("{stage}-{number}.record.json")),
    )
}

/// Runs a Slurm command, its stdout on success, else what it said.
fn slurm(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}; is Slurm installed on this host?"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Submits the attempt `plan` (written to its plan file first) as one job; the job's id.
pub fn submit(
    plan: &NodePlan,
    plan_file: &Path,
    config: &SlurmConfig,
    gres: Option<&str>,
    baton: &Path,
) -> Result<u64, String> {
    let bytes = serde_json::to_vec_pretty(plan).expect("a plan serialises");
    if let Some(dir) = plan_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    baton_base::atomic_file::write_atomic(plan_file, &bytes).map_err(|e| e.to_string())?;
    let name = job_name(&plan.run_id, &plan.stage);
    let out = plan
        .cwd
        .join("slurm")
        .join(format!("{}-{}.job-%j.out", plan.stage, plan.number));
    let wrap = format!(
        "exec {} stage-exec --plan {}",
        shell_quote(&baton.display().to_string()),
        shell_quote(&plan_file.display().to_string())
    );
    let mut args: Vec<String> = vec![
        "--parsable".into(),
        format!("--job-name={name}"),
        format!("--chdir={}", plan.cwd.display()),
        format!("--output={}", out.display()),
        "--ntasks=1".into(),
    ];
    if let Some(gres) = gres {
        args.push(format!("--gres={gres}"));
    }
    if let Some(p) = &config.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(a) = &config.account {
        args.push(format!("--account={a}"));
    }
    if let Some(t) = &config.time {
        args.push(format!("--time={t}"));
    }
    args.extend(config.sbatch_args.iter().cloned());
    // For the built-in pipeline, which has no [slurm] table: `BATON_SLURM_ARGS`.
    if let Ok(more) = std::env::var("BATON_SLURM_ARGS") {
        args.extend(more.split_whitespace().map(String::from));
    }
    args.push(format!("--wrap={wrap}"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = slurm("sbatch", &refs)?;
    // `--parsable` prints "ID" or "ID;cluster".
    id.split(';')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .ok_or_else(|| format!("sbatch printed '{id}', not a job id"))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Where a job is: still in the queue or running, or ended (with how, as Slurm says it).
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Active(String),
    Ended {
        state: String,
        reason: String,
    },
    /// Slurm no longer knows it (purged after `MinJobAge`).
    Unknown,
}

/// Reads a job's state: `scontrol show job` (which also knows a job that ended lately).
pub fn job_state(id: u64) -> JobState {
    let Ok(out) = slurm("scontrol", &["show", "job", "-o", &id.to_string()]) else {
        return JobState::Unknown;
    };
    let field = |key: &str| {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or("")
            .to_string()
    };
    let state = field("JobState");
    match state.as_str() {
        "" => JobState::Unknown,
        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
        | "RESIZING" | "SIGNALING" | "STAGE_OUT" => JobState::Active(state),
        _ => JobState::Ended {
            reason: field("Reason"),
            state,
        },
    }
}

/// The name an attempt's job is submitted under.
pub fn job_name(run_id: &str, stage: &str) -> String {
    format!("baton:{run_id}:{stage}")
}

/// A queued or running job of this user named `name` (the newest), for a resume whose
/// `run.json` missed the id: a baton killed between `sbatch` and writing it.
pub fn active_job_named(name: &str) -> Option<u64> {
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    slurm(
        "squeue",
        &["-h", "-u", &user, &format!("--name={name}"), "-o", "%i"],
    )
    .ok()?
    .lines()
    .filter_map(|l| l.trim().parse::<u64>().ok())
    .max()
}

/// Whether this host can submit jobs: `sbatch` answers. Asked before a run folder is made, so
/// `--executor slurm` on a host without Slurm fails at once, saying so.
pub fn check_submit_host() -> Result<(), String> {
    slurm("sbatch", &["--version"]).map(|_| ()).map_err(|e| {
        format!("--executor slurm: {e}; run baton on a host that submits to your cluster (sbatch on PATH), or use --executor local")
    })
}

/// Cancels jobs (Ctrl-C on baton); what cannot be cancelled is logged.
pub fn cancel(ids: &[u64]) {
    if ids.is_empty() {
        return;
    }
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    if let Err(e) = slurm("scancel", &refs) {
        tracing::warn!("could not cancel Slurm jobs {}: {e}", ids.join(","));
    }
}

/// How often a job is polled.
const POLL: Duration = Duration::from_millis(250);

/// Follows job `id` of an attempt until it ends, handing the stage's progress lines (read from
/// its log as the node writes it) to `observer`; then the node's record, or a failed attempt
/// that says how Slurm ended the job.
pub fn follow(
    id: u64,
    run_id: &str,
    stage: &str,
    log: &Path,
    record: &Path,
    mut attempt: Attempt,
    observer: &dyn Observer,
) -> AttemptOutcome {
    let mut tail = LogTail::new(log);
    // A controller too busy to answer is not a job that is gone: only 5 s of not knowing it is.
    let mut unknown = 0;
    let ended = loop {
        tail.forward(run_id, stage, observer);
        match job_state(id) {
            JobState::Active(_) => unknown = 0,
            JobState::Unknown if unknown < 20 => unknown += 1,
            other => break other,
        }
        std::thread::sleep(POLL);
    };
    tail.forward(run_id, stage, observer);
    // The record is written before the job ends; on a shared filesystem it may show a moment
    // later.
    for _ in 0..20 {
        if record.is_file() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match std::fs::read(record)
        .ok()
        .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
    {
        Some(mut r) => {
            r.attempt.job_id = Some(id);
            if r.attempt.failure.is_none()
                && let JobState::Ended { state, reason } = &ended
                && state != "COMPLETED"
            {
                r.attempt.failure = Some(format!("Slurm job {id} ended {state} ({reason})"));
            }
            AttemptOutcome {
                attempt: r.attempt,
                retriable: r.retriable,
                artifacts: r.artifacts,
            }
        }
        None => {
            // What the job itself printed (baton stage-exec's own errors) is in Slurm's file.
            let job_out = record.with_file_name(
                record
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .replace(".record.json", &format!(".job-{id}.out"))
                    })
                    .unwrap_or_default(),
            );
            attempt.job_id = Some(id);
            attempt.ended_unix_ms = Some(unix_ms());
            attempt.failure = Some(match ended {
                JobState::Ended { state, reason } => format!(
                    "Slurm job {id} ended {state} ({reason}) before its attempt was recorded (job output: {}; stage log: {})",
                    job_out.display(),
                    log.display()
                ),
                _ => format!(
                    "Slurm job {id} is gone and left no attempt record (job output: {}; stage log: {})",
                    job_out.display(),
                    log.display()
                ),
            });
            AttemptOutcome {
                attempt,
                retriable: true,
                artifacts: Vec::new(),
            }
        }
    }
}

/// The new lines of a stage's log, read as the node appends them.
struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    /// From the log's end now: what earlier attempts wrote is not this one's.
    fn new(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: std::fs::metadata(path).map_or(0, |m| m.len()),
        }
    }

    fn forward(&mut self, run_id: &str, stage: &str, observer: &dyn Observer) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut reader = std::io::BufReader::new(file);
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if let Some(baton_base::protocol::StageLine::Progress {
                done,
                total,
                message,
            }) = baton_base::protocol::StageLine::parse(&line)
            {
                observer.event(&Event::Progress {
                    run: run_id,
                    stage,
                    done,
                    total,
                    message: &message,
                });
            }
            line.clear();
        }
    }
}

/// `baton stage-exec --plan FILE`, on the node: the attempt run and supervised as the local
/// runner does, on the GPU Slurm gave the job (the first of `CUDA_VISIBLE_DEVICES`), its record
/// written whole into the run folder. `backend` is the node's view of its GPUs (NVML, or the
/// simulation); `keeper` is baton's own executable.
pub fn exec_on_node(
    plan: &NodePlan,
    backend: Arc<dyn baton_memory::MemoryBackend>,
    keeper: PathBuf,
) -> Result<NodeRecord, RunnerError> {
    let index = if plan.gpu {
        std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .and_then(|v| {
                v.split(',')
                    .next()
                    .and_then(|i| i.trim().parse::<usize>().ok())
            })
            .unwrap_or(0)
    } else {
        0
    };
    let device = backend.device(index).map_err(|e| RunnerError::Io {
        action: "cannot read the GPU Slurm gave",
        path: plan.cwd.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut env: BTreeMap<String, String> = plan.env.iter().cloned().collect();
    for (k, v) in crate::engine::device_env(backend.kind(), &device, plan.gpu) {
        env.insert(k, v);
    }
    let attempt_plan = AttemptPlan {
        run_id: plan.run_id.clone(),
        stage: plan.stage.clone(),
        number: plan.number,
        launch: Launch {
            stage: plan.stage.clone(),
            argv: plan.argv.clone(),
            env: env.into_iter().collect(),
            cwd: plan.cwd.clone(),
            log: plan.log.clone(),
            go: None,
        },
        token: plan.token.clone(),
        backend,
        device_index: device.index,
        device_label: device.label(),
        granted: plan.granted,
        timeout: plan.timeout_ms.map(Duration::from_millis),
        reclaim_timeout: Duration::from_millis(plan.reclaim_timeout_ms),
        outputs: plan.outputs.clone(),
        go: None,
    };
    let executor = crate::executor::LocalExecutor::kept(keeper);
    let live = std::sync::atomic::AtomicU64::new(0);
    let outcome = run_attempt(
        &attempt_plan,
        &executor,
        &crate::events::Quiet,
        &live,
        &|_| {},
    );
    let record = NodeRecord {
        attempt: outcome.attempt,
        retriable: outcome.retriable,
        artifacts: outcome.artifacts,
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("a record serialises");
    baton_base::atomic_file::write_atomic(&plan.record, &bytes).map_err(|e| RunnerError::Io {
        action: "cannot write the attempt record",
        path: plan.record.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_map_to_the_smallest_request_that_holds_them_and_ooms_step_up() {
        let config = SlurmConfig {
            gres: Some("gpu:1".into()),
            requests: vec![
                GresRequest {
                    up_to: "80GiB".into(),
                    gres: "gpu:a100:1".into(),
                },
                GresRequest {
                    up_to: "24GiB".into(),
                    gres: "gpu:a10:1".into(),
                },
            ],
            ..SlurmConfig::default()
        };
        config.check().unwrap();
        assert_eq!(config.gres_for(8 << 30, 0), "gpu:a10:1");
        assert_eq!(config.gres_for(30 << 30, 0), "gpu:a100:1");
        assert_eq!(
            config.gres_for(8 << 30, 1),
            "gpu:a100:1",
            "an OOM asks for more"
        );
        assert_eq!(config.gres_for(8 << 30, 5), "gpu:a100:1");
        assert_eq!(
            config.gres_for(200 << 30, 0),
            "gpu:a100:1",
            "the largest there is"
        );
        assert_eq!(SlurmConfig::default().gres_for(1, 0), "gpu:1");
        let bad = SlurmConfig {
            requests: vec![GresRequest {
                up_to: "lots".into(),
                gres: "gpu:1".into(),
            }],
            ..SlurmConfig::default()
        };
        assert!(bad.check().unwrap_err().contains("up_to = \"lots\""));
    }

    #[test]
    fn a_job_name_with_quotes_is_passed_whole_to_the_shell() {
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
