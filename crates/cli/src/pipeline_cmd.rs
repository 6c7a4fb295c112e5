//! `baton run`, `baton resume` and `baton batch`: open the devices, plan the runs, hand them to
//! the runner's engine, and print where everything went.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use baton_base::format_bytes;
use baton_memory::DeviceChoice;
use baton_memory::host::HostBackend;
use baton_runner::report::{stage_table, write_report};
use baton_runner::{
    Engine, LearnedNeeds, LocalExecutor, Manifest, Pipeline, RunPlan, RunState, create_run,
    resume_run,
};

use crate::BadInput;
use crate::args::{BatchArgs, PipelineArgs, ResumeArgs, RunArgs};
use crate::progress::ProgressView;

fn load_pipeline(args: &PipelineArgs) -> anyhow::Result<Pipeline> {
    Ok(match &args.pipeline {
        Some(path) => Pipeline::load(path)?,
        None => Pipeline::content(),
    })
}

fn engine(choice: DeviceChoice, batch: bool) -> anyhow::Result<Engine> {
    let opened = baton_memory::open(choice)?;
    if let Some(reason) = &opened.fallback_reason {
        eprintln!("{reason}; GPU stages run on host memory");
    }
    Ok(Engine {
        gpu: opened.backend,
        host: Arc::new(HostBackend::new()),
        executor: Arc::new(LocalExecutor),
        observer: Arc::new(ProgressView::new(batch)),
        learned: Some(LearnedNeeds::from_env()),
    })
}

/// What a finished run says: its table, where its files and report are.
fn summarize(plan: &RunPlan, out: &mut dyn Write) -> anyhow::Result<()> {
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

fn outcome(plans: &[&RunPlan]) -> anyhow::Result<()> {
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
    if args.mode == crate::args::RunMode::Monolithic {
        return crate::monolithic::run(args, out);
    }
    baton_base::run_dir::slug(&args.topic).map_err(baton_runner::RunnerError::from)?;
    let pipeline = load_pipeline(&args.common)?;
    let engine = engine(args.common.device, false)?;
    let mut plans = vec![create_run(
        &args.common.output,
        &args.topic,
        &pipeline,
        engine.gpu.kind().name(),
    )?];
    writeln!(out, "run folder: {}", plans[0].dir.display())?;
    engine.execute(&mut plans)?;
    summarize(&plans[0], out)?;
    outcome(&[&plans[0]])
}

pub fn resume(args: &ResumeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Read and check before opening devices, so a bad folder fails fast and changes nothing.
    let recorded = Manifest::load(&args.run_dir)?;
    let choice = match args.device {
        Some(choice) => choice,
        None => recorded.backend.parse()?,
    };
    let engine = engine(choice, false)?;
    let (plan, decisions) = resume_run(&args.run_dir)?;
    for d in &decisions {
        writeln!(out, "{:<14} {}", d.stage, d.why)?;
    }
    let mut plans = vec![plan];
    engine.execute(&mut plans)?;
    summarize(&plans[0], out)?;
    outcome(&[&plans[0]])
}

pub fn batch(args: &BatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let topics = read_topics(&args.topics)?;
    let pipeline = load_pipeline(&args.common)?;
    let engine = engine(args.common.device, true)?;
    let started = Instant::now();
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    for topic in &topics {
        match create_run(
            &args.common.output,
            topic,
            &pipeline,
            engine.gpu.kind().name(),
        ) {
            Ok(plan) => plans.push(plan),
            Err(err) => refused.push((topic.clone(), err.to_string())),
        }
    }
    let devices = engine.gpu.snapshot()?.len();
    writeln!(
        out,
        "batch: {} topic(s) over {devices} device(s) ({})",
        topics.len(),
        engine.gpu.kind()
    )?;
    engine.execute(&mut plans)?;
    let wall = started.elapsed();

    writeln!(
        out,
        "\n{:<28} {:<10} {:>8} {:>9} {:>11}  RUN FOLDER / ERROR",
        "TOPIC", "STATE", "DEVICES", "WALL", "PEAK"
    )?;
    for plan in &plans {
        let m = &plan.manifest;
        let attempts: Vec<_> = m.stages.iter().flat_map(|s| s.attempts.iter()).collect();
        let mut used: Vec<&str> = attempts.iter().map(|a| a.device.as_str()).collect();
        used.sort();
        used.dedup();
        let end = attempts
            .iter()
            .filter_map(|a| a.ended_unix_ms)
            .max()
            .unwrap_or(m.created_unix_ms);
        writeln!(
            out,
            "{:<28} {:<10} {:>8} {:>8.2}s {:>11}  {}",
            truncate(&m.topic, 28),
            format!("{:?}", m.state).to_lowercase(),
            used.join(","),
            end.saturating_sub(m.created_unix_ms) as f64 / 1000.0,
            format_bytes(attempts.iter().map(|a| a.peak_bytes).max().unwrap_or(0)),
            m.error.as_deref().map_or_else(
                || plan.dir.display().to_string(),
                |e| format!("{}: {e}", plan.dir.display())
            )
        )?;
    }
    for (topic, err) in &refused {
        writeln!(
            out,
            "{:<28} {:<10} {:>8} {:>9} {:>11}  {err}",
            truncate(topic, 28),
            "refused",
            "-",
            "-",
            "-"
        )?;
    }
    let manifests: Vec<&Manifest> = plans.iter().map(|p| &p.manifest).collect();
    let report_dir = args.common.output.join(format!(
        "batch_{}",
        baton_base::run_dir::timestamp(std::time::SystemTime::now())
    ));
    write_report(&report_dir, "baton batch", &manifests)?;
    let ok = plans
        .iter()
        .filter(|p| p.manifest.state == RunState::Succeeded)
        .count();
    writeln!(
        out,
        "\n{ok} of {} topic(s) succeeded in {:.2}s; report: {}",
        topics.len(),
        wall.as_secs_f64(),
        report_dir.join("report/index.html").display()
    )?;
    if !refused.is_empty() {
        return Err(anyhow::anyhow!(
            "{} topic(s) were refused before running; see the table above",
            refused.len()
        ));
    }
    outcome(&plans.iter().collect::<Vec<_>>())
}

fn read_topics(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BadInput(format!(
            "cannot read topics file '{}': {e}; pass a text file with one topic per line",
            path.display()
        ))
    })?;
    let topics: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if topics.is_empty() {
        return Err(BadInput(format!(
            "topics file '{}' lists no topic; write one topic per line",
            path.display()
        ))
        .into());
    }
    Ok(topics)
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).chain(['…']).collect()
    }
}
