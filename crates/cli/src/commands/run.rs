//! `baton run`: one topic through a pipeline, every stage its own process; and what `run`,
//! `resume` and `batch` share: the devices opened, the engine, the closing table.

use std::io::Write;
use std::sync::Arc;

use baton_memory::DeviceChoice;
use baton_memory::host::HostBackend;
use baton_runner::report::stage_table;
use baton_runner::{Engine, LearnedNeeds, LocalExecutor, Pipeline, RunPlan, RunState, create_run};

use crate::args::{PipelineArgs, RunArgs};
use crate::progress::ProgressView;

pub(crate) fn load_pipeline(args: &PipelineArgs) -> anyhow::Result<Pipeline> {
    Ok(match &args.pipeline {
        Some(path) => Pipeline::load(path, &baton_content::ContentCatalog::default())?,
        None => baton_content::ContentCatalog::default().pipeline(),
    })
}

/// The engine over the devices `choice` opens; placement keeps `reserve` back from each.
pub(crate) fn engine(
    choice: DeviceChoice,
    batch: bool,
    reserve: baton_runner::Reserve,
    executor: crate::args::ExecutorChoice,
) -> anyhow::Result<Engine> {
    if executor == crate::args::ExecutorChoice::Slurm {
        baton_runner::slurm::check_submit_host().map_err(crate::BadInput)?;
    }
    // From here on Ctrl-C and SIGTERM stop the stages cleanly and leave resumable runs.
    baton_runner::interrupt::install();
    let opened = baton_memory::open(choice)?;
    if let Some(reason) = &opened.fallback_reason {
        eprintln!("{reason}; GPU stages run on host memory");
    }
    Ok(Engine {
        gpu: opened.backend,
        host: Arc::new(HostBackend::new()),
        executor: Arc::new(LocalExecutor::kept(std::env::current_exe()?)),
        observer: Arc::new(ProgressView::new(batch)),
        learned: Some(LearnedNeeds::from_env()),
        catalog: Arc::new(baton_content::ContentCatalog::default()),
        reserve,
        cluster: match executor {
            crate::args::ExecutorChoice::Local => None,
            crate::args::ExecutorChoice::Slurm => Some(baton_runner::Cluster {
                device: match choice {
                    DeviceChoice::Auto => "auto",
                    DeviceChoice::Gpu => "gpu",
                    DeviceChoice::Cpu => "cpu",
                    DeviceChoice::Sim => "sim",
                }
                .into(),
                baton: std::env::current_exe()?,
            }),
        },
    })
}

/// A finished run as JSON: its state, folder, report, wall time and every stage's outcome.
pub(crate) fn summary_json(plan: &RunPlan) -> serde_json::Value {
    let m = &plan.manifest;
    let end = m
        .stages
        .iter()
        .flat_map(|s| s.attempts.iter())
        .filter_map(|a| a.ended_unix_ms)
        .max();
    let stages: Vec<serde_json::Value> = m
        .stages
        .iter()
        .map(|s| {
            let last = s.attempts.last();
            serde_json::json!({
                "name": s.name,
                "state": format!("{:?}", s.state).to_lowercase(),
                "device": last.map(|a| a.device.clone()),
                "attempts": s.attempts.len(),
                "wall_seconds": last.and_then(|a| a.wall_ms()).map(|ms| ms as f64 / 1000.0),
                "peak_bytes": s.attempts.iter().map(|a| a.peak_bytes).max(),
                "reclaim_ms": last.and_then(|a| a.reclaim.as_ref()).map(|r| r.ms),
                "memory_back": last.and_then(|a| a.reclaim.as_ref()).map(|r| r.verified),
                "note": s.note,
            })
        })
        .collect();
    serde_json::json!({
        "run_id": m.run_id,
        "topic": m.topic,
        "state": format!("{:?}", m.state).to_lowercase(),
        "dir": plan.dir,
        "report": plan.dir.join("report/index.html"),
        "wall_seconds": end.map(|e| e.saturating_sub(m.created_unix_ms) as f64 / 1000.0),
        "error": m.error,
        "stages": stages,
    })
}

/// What a finished run says: its table, where its files and report are.
pub(crate) fn summarize(plan: &RunPlan, out: &mut dyn Write) -> anyhow::Result<()> {
    let m = &plan.manifest;
    writeln!(
        out,
        "\nrun {} {}",
        m.run_id,
        format!("{:?}", m.state).to_lowercase()
    )?;
    out.write_all(stage_table(m).as_bytes())?;
    let wall = m
        .stages
        .iter()
        .flat_map(|s| s.attempts.iter())
        .filter_map(|a| a.ended_unix_ms)
        .max()
        .map(|end| end.saturating_sub(m.created_unix_ms));
    if let Some(ms) = wall {
        writeln!(out, "total {:.2}s", ms as f64 / 1000.0)?;
    }
    writeln!(out, "files:  {}", plan.dir.display())?;
    writeln!(
        out,
        "report: {}",
        plan.dir.join("report/index.html").display()
    )?;
    if let Some(error) = &m.error {
        writeln!(out, "error:  {error}")?;
    }
    Ok(())
}

pub(crate) fn outcome(plans: &[&RunPlan]) -> anyhow::Result<()> {
    let interrupted: Vec<String> = plans
        .iter()
        .filter(|p| p.manifest.state == RunState::Interrupted)
        .map(|p| format!("baton resume {}", p.dir.display()))
        .collect();
    if let (Some(signal), false) = (baton_runner::interrupt::requested(), interrupted.is_empty()) {
        return Err(baton_runner::RunnerError::Interrupted {
            signal,
            resume: interrupted.join("; "),
        }
        .into());
    }
    let failed = plans
        .iter()
        .filter(|p| p.manifest.state != RunState::Succeeded)
        .count();
    if failed == 0 {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{failed} of {} run(s) failed; see the table above and the logs in each run folder",
            plans.len()
        ))
    }
}

pub fn run(args: &RunArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let settings = crate::knobs::apply(&args.knobs)?;
    baton_base::run_dir::slug(&args.topic).map_err(baton_runner::RunnerError::from)?;
    let pipeline = load_pipeline(&args.common)?;
    let engine = engine(
        args.common.device,
        false,
        args.common.gpu_reserve,
        args.common.executor,
    )?;
    let mut plans = vec![create_run(
        &args.common.output,
        &args.topic,
        &pipeline,
        engine.gpu.kind().name(),
    )?];
    if !args.common.json {
        writeln!(out, "run folder: {}", plans[0].dir.display())?;
    }
    crate::knobs::record(&settings, &plans[0].dir)?;
    engine.execute(&mut plans)?;
    if args.common.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&summary_json(&plans[0]))?
        )?;
    } else {
        summarize(&plans[0], out)?;
    }
    outcome(&[&plans[0]])
}
