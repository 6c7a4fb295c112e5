//! Making a run ready to execute: a new run folder for a topic, or an existing one to resume.
//!
//! Everything that can be refused is checked before the first byte is written: a new run folder
//! is only created once the pipeline and its inputs pass, and resume reads and checks the
//! manifest and pipeline before it changes anything, so bad input never damages a run.

use std::fs;
use std::path::{Path, PathBuf};

use baton_base::atomic_file::write_atomic;

use crate::RunnerError;
use crate::catalog::StageCatalog;
use crate::group::{processes_with_token, terminate};
use crate::lock::RunLock;
use crate::manifest::{
    MANIFEST_FILE, Manifest, PIPELINE_FILE, RunState, StageState, verify_artifacts,
};
use crate::pipeline::{Pipeline, Placeholders, fill};
use baton_base::run_dir::{run_folder_name, slug};

/// A run ready for the engine.
#[derive(Debug)]
pub struct RunPlan {
    pub dir: PathBuf,
    pub pipeline: Pipeline,
    pub manifest: Manifest,
    pub vars: Placeholders,
    /// This process's hold on the run folder, for as long as the plan lives.
    pub lock: RunLock,
    /// Set when the run's manifest could not be written: the run failed for that reason alone.
    pub write_error: Option<String>,
}

fn baton_exe() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "baton".into())
}

/// Checks a new run of `pipeline` for `topic` and creates its folder under `output`.
pub fn create_run(
    output: &Path,
    topic: &str,
    pipeline: &Pipeline,
    backend: &str,
) -> Result<RunPlan, RunnerError> {
    let slug = slug(topic)?;
    // Stages run in the run folder, so `{run_dir}` must be absolute.
    let output = &std::path::absolute(output).map_err(|e| RunnerError::Io {
        action: "cannot resolve output folder",
        path: output.to_path_buf(),
        source: e,
    })?;
    let name = run_folder_name(topic, std::time::SystemTime::now())?;
    // Inputs no stage produces must exist before the run starts.
    let produced: Vec<&str> = pipeline.produced().collect();
    let probe_vars = Placeholders {
        topic: topic.to_string(),
        slug: slug.clone(),
        run_dir: output.join(&name).display().to_string(),
        pipeline_dir: pipeline.dir.clone(),
        baton: baton_exe(),
    };
    check_paths(pipeline, &probe_vars, &output.join(&name))?;
    for spec in &pipeline.stages {
        for input in spec
            .inputs
            .iter()
            .filter(|i| !produced.contains(&i.as_str()))
        {
            let path = output.join(&name).join(fill(input, &probe_vars));
            if !path.exists() {
                return Err(RunnerError::MissingInput {
                    stage: spec.name.clone(),
                    path,
                });
            }
        }
    }
    fs::create_dir_all(output).map_err(|e| RunnerError::Io {
        action: "cannot create output folder",
        path: output.to_path_buf(),
        source: e,
    })?;
    // Two runs of one topic in the same second get distinct folders; none is reused.
    let mut n = 1;
    let (run_id, dir) = loop {
        let run_id = if n == 1 {
            name.clone()
        } else {
            format!("{name}_{n}")
        };
        let dir = output.join(&run_id);
        match fs::create_dir(&dir) {
            Ok(()) => break (run_id, dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => {
                return Err(RunnerError::Io {
                    action: "cannot create run folder",
                    path: dir,
                    source: e,
                });
            }
        }
    };
    // A run folder exists only once it is written: one that cannot be (a full disk) is taken
    // back, not left empty.
    let made = (|| {
        let lock = RunLock::acquire(&dir)?;
        write_atomic(&dir.join(PIPELINE_FILE), pipeline.source.as_bytes())
            .map_err(RunnerError::File)?;
        let manifest = Manifest::new(&run_id, topic, &slug, pipeline, backend);
        manifest.save(&dir)?;
        Ok::<_, RunnerError>((lock, manifest))
    })();
    let (lock, manifest) = match made {
        Ok(made) => made,
        Err(err) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(err);
        }
    };
    Ok(RunPlan {
        vars: Placeholders {
            topic: topic.to_string(),
            slug,
            run_dir: dir.display().to_string(),
            pipeline_dir: pipeline.dir.clone(),
            baton: baton_exe(),
        },
        dir,
        pipeline: pipeline.clone(),
        manifest,
        lock,
        write_error: None,
    })
}

/// Refuses, naming it, any output that leads outside `run_dir` once its placeholders are
/// filled and its links followed, and any input that does so without being written as a path
/// of its own (absolute, or under `{pipeline_dir}`): a topic `..` cannot steer a file out.
fn check_paths(
    pipeline: &Pipeline,
    vars: &Placeholders,
    run_dir: &Path,
) -> Result<(), RunnerError> {
    for spec in &pipeline.stages {
        let outside = |what: &str, why: String| RunnerError::BadPipeline {
            origin: format!("stage '{}'", spec.name),
            why: format!("its {what} {why}"),
        };
        for output in &spec.outputs {
            crate::outputs::inside(run_dir, &fill(output, vars))
                .map_err(|why| outside("output", why))?;
        }
        for input in &spec.inputs {
            if input.starts_with('/') || input.starts_with("{pipeline_dir}") {
                continue;
            }
            crate::outputs::inside(run_dir, &fill(input, vars))
                .map_err(|why| outside("input", why))?;
        }
    }
    Ok(())
}

/// The token of an attempt recorded by a baton that did not keep tokens in `run.json`.
fn legacy_token(run_dir: &Path, stage: &str, number: u32) -> String {
    format!("{}/{stage}/{number}", run_dir.display())
}

/// What resuming decided for each stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeDecision {
    pub stage: String,
    /// True when the stage's artifacts were verified and it will not run again.
    pub kept: bool,
    pub why: String,
}

/// Opens a run folder to finish it: stages whose artifacts are present and match their hashes
/// are kept, the rest (and everything downstream of them) run again; so do the stages named in
/// `rerun`, and everything downstream of them. Processes a killed baton left behind are stopped
/// first.
pub fn resume_run(
    dir: &Path,
    catalog: &dyn StageCatalog,
    rerun_asked: &[String],
    follow_jobs: bool,
) -> Result<(RunPlan, Vec<ResumeDecision>), RunnerError> {
    Manifest::load(dir)?;
    let dir = &dir.canonicalize().map_err(|e| RunnerError::Io {
        action: "cannot resolve",
        path: dir.to_path_buf(),
        source: e,
    })?;
    // Nothing changes before the folder is ours: a second resume of it is refused here.
    let lock = RunLock::acquire(dir)?;
    let mut manifest = Manifest::load(dir)?;
    let pipeline_path = dir.join(PIPELINE_FILE);
    let text = fs::read_to_string(&pipeline_path).map_err(|e| RunnerError::Io {
        action: "cannot read",
        path: pipeline_path.clone(),
        source: e,
    })?;
    let pipeline = Pipeline::parse(&text, &pipeline_path.display().to_string(), catalog)?;
    let vars = Placeholders {
        topic: manifest.topic.clone(),
        slug: manifest.slug.clone(),
        run_dir: dir.display().to_string(),
        pipeline_dir: manifest.pipeline_dir.clone(),
        baton: baton_exe(),
    };
    check_paths(&pipeline, &vars, dir)?;
    let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    let recorded: Vec<&str> = manifest.stages.iter().map(|s| s.name.as_str()).collect();
    if names != recorded {
        return Err(RunnerError::CorruptManifest {
            path: dir.join(MANIFEST_FILE),
            why: format!(
                "its stages ({}) are not the pipeline's ({})",
                recorded.join(", "),
                names.join(", ")
            ),
        });
    }
    // A Slurm job an interrupted baton left queued or running is followed, not run again
    // (`follow_jobs`: resumed with `--executor slurm`); one whose id baton was killed before
    // writing is found by its name.
    if follow_jobs {
        let run_id = manifest.run_id.clone();
        for record in manifest.stages.iter_mut() {
            if record.state == StageState::Running
                && let Some(attempt) = record.attempts.last_mut()
                && attempt.job_id.is_none()
                && attempt.ended_unix_ms.is_none()
            {
                attempt.job_id =
                    crate::slurm::active_job_named(&crate::slurm::job_name(&run_id, &record.name));
            }
        }
    }
    let followed = |record: &crate::manifest::StageRecord| {
        follow_jobs
            && record.state == StageState::Running
            && record
                .attempts
                .last()
                .is_some_and(|a| a.job_id.is_some() && a.ended_unix_ms.is_none())
    };
    // Stop what an interrupted attempt left: its processes carry the attempt's token.
    for record in &manifest.stages {
        if matches!(record.state, StageState::Running)
            && !followed(record)
            && let Some(attempt) = record.attempts.last()
        {
            // Attempts recorded before tokens were kept named their run folder, stage and
            // number alone.
            let token = if attempt.token.is_empty() {
                legacy_token(dir, &record.name, attempt.number)
            } else {
                attempt.token.clone()
            };
            let leftovers = processes_with_token(&token);
            if !leftovers.is_empty() {
                tracing::warn!(
                    "stage '{}' of {} left {} process(es) running when baton stopped; stopping them",
                    record.name,
                    manifest.run_id,
                    leftovers.len()
                );
                terminate(&leftovers, std::time::Duration::from_secs(2));
            }
        }
    }
    let mut decisions = Vec::new();
    let mut rerun: Vec<String> = Vec::new();
    // Upstream first, whatever the file's order: a stage whose upstream runs again (directly
    // or through another stage) runs again too.
    for spec in pipeline.in_dependency_order() {
        if followed(manifest.stage(&spec.name).expect("recorded")) {
            let record = manifest.stage(&spec.name).expect("recorded");
            let job = record.attempts.last().and_then(|a| a.job_id).unwrap_or(0);
            let why = format!("follows Slurm job {job}, queued or running when baton stopped");
            rerun.push(spec.name.clone());
            decisions.push(ResumeDecision {
                stage: spec.name.clone(),
                kept: false,
                why,
            });
            continue;
        }
        let record = manifest.stage_mut(&spec.name);
        let upstream = spec.after.iter().find(|d| rerun.contains(d));
        let asked = rerun_asked.contains(&spec.name);
        let (kept, why) = match (record.state, upstream) {
            (StageState::Succeeded, None) if asked => {
                (false, "runs again: asked for (--rerun)".to_string())
            }
            (StageState::Succeeded, None) => match verify_artifacts(dir, &record.artifacts) {
                Ok(()) => (
                    true,
                    format!(
                        "kept: {} artifact(s) verified by sha256",
                        record.artifacts.len()
                    ),
                ),
                Err(why) => (false, format!("runs again: {why}")),
            },
            (StageState::Succeeded, Some(dep)) => (
                false,
                format!("runs again: stage '{dep}' before it runs again"),
            ),
            (state, _) => (
                false,
                format!("runs again: it was {}", format!("{state:?}").to_lowercase()),
            ),
        };
        if !kept {
            if let Some(last) = record.attempts.last_mut()
                && last.ended_unix_ms.is_none()
            {
                last.failure = Some("interrupted: baton stopped while it ran".into());
            }
            record.state = StageState::Pending;
            record.note = Some(why.clone());
            rerun.push(spec.name.clone());
        }
        decisions.push(ResumeDecision {
            stage: spec.name.clone(),
            kept,
            why,
        });
    }
    manifest.state = RunState::Running;
    manifest.error = None;
    manifest.save(dir)?;
    Ok((
        RunPlan {
            dir: dir.to_path_buf(),
            pipeline,
            manifest,
            vars,
            lock,
            write_error: None,
        },
        decisions,
    ))
}
