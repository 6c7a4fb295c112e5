//! `baton run --mode monolithic`: the built-in content pipeline in this one process, each stage
//! between scope guards: the seed's Approach A ("manual cleanup"), kept to compare with the
//! process mode and for those who want it.
//!
//! Each stage runs exactly as its subcommand does (`baton scenes`, `voice`, `images`, with the
//! same arguments the runner gives its built-in stages), writing its output to `logs/`. Around
//! each, this process's memory on the device is sampled for the peak, and a scope guard proves it
//! back at its level before the next stage starts. There is no crash isolation: a stage that
//! crashes takes the run with it, which is what the process mode is for.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use baton_base::format_bytes;
use baton_memory::peak::PeakWatch;
use baton_memory::{MemoryBackend, MemoryScope};
use baton_runner::pipeline::{Placeholders, fill};
use clap::Parser;

use baton::args::{Cli, RunArgs};

/// What one stage did, for the summary and `monolithic.json`.
#[derive(serde::Serialize)]
struct StageRecord {
    name: String,
    seconds: f64,
    /// Above the process's level when the stage began.
    peak_bytes: u64,
    baseline_bytes: u64,
    reclaim: String,
    leaked: bool,
    log: String,
}

/// The device this process computes on, as the stages will find it.
fn backend() -> (Arc<dyn MemoryBackend>, String) {
    if baton_studio::compute::COMPILED
        && baton_memory::nvml::NvmlBackend::open().is_ok()
        && let Ok(cuda) = baton_studio::compute::CudaBackend::open(0)
    {
        // Kernel modules and the cuBLAS workspace, once loaded, stay with the context until the
        // process exits, whatever a stage frees: load them before the first stage, so that they
        // are part of the baseline (as each stage's own scope does) and not charged to scenes.
        // The stages compute on this same device (the process has one per GPU).
        if let Err(e) = baton_studio::llm::warm_up(cuda.device()) {
            tracing::warn!("CUDA warm-up failed: {e}");
        }
        return (Arc::new(cuda), "GPU 0 (CUDA, this process)".into());
    }
    (
        Arc::new(baton_memory::host::HostBackend::new()),
        "host memory (this process)".into(),
    )
}

pub fn run(args: &RunArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    baton::knobs::apply(&args.knobs)?;
    if args.common.pipeline.is_some() {
        return Err(baton::BadInput(
            "--mode monolithic runs the built-in content pipeline; drop --pipeline, or use --mode processes"
                .into(),
        )
        .into());
    }
    let slug =
        baton_base::run_dir::slug(&args.topic).map_err(baton_studio::scenes::ScenesError::from)?;
    let name = baton_base::run_dir::run_folder_name(&args.topic, std::time::SystemTime::now())
        .map_err(baton_studio::scenes::ScenesError::from)?;
    let run_dir = std::path::absolute(args.common.output.join(name))?;
    std::fs::create_dir_all(run_dir.join("logs"))?;
    let (backend, what) = backend();
    writeln!(
        out,
        "run folder: {} (monolithic: every stage in this process, memory measured on {what})",
        run_dir.display()
    )?;
    // This program is the stage program: the stages' argv name it, and the voice engine is
    // the one `baton voice` would choose here.
    let catalog = baton_content::ContentCatalog::new(std::env::current_exe()?);
    let engine = baton_content::VoiceEngine::from_env()
        .unwrap_or_else(crate::commands::catalog::local_voice_engine);
    let pipeline = baton_content::pipeline(engine, &catalog);
    // The placeholders the runner fills, for the built-in stages' arguments.
    let vars = Placeholders {
        topic: args.topic.clone(),
        slug,
        run_dir: run_dir.display().to_string(),
        pipeline_dir: run_dir.display().to_string(),
        baton: "baton".into(),
    };
    let started = Instant::now();
    let mut records = Vec::new();
    for spec in &pipeline.stages {
        let argv: Vec<String> = spec.command.argv().iter().map(|a| fill(a, &vars)).collect();
        let cli = Cli::try_parse_from(&argv)?;
        writeln!(out, "▶ {}", spec.name)?;
        out.flush()?;
        backend.trim()?;
        let pid = std::process::id();
        let baseline = backend.process_usage(0, pid).unwrap_or(0);
        let scope = MemoryScope::new(backend.clone(), 0, &spec.name)?.with_tolerance(64 << 20);
        let watch = PeakWatch::start(backend.clone(), 0);
        let log_path = run_dir.join("logs").join(format!("{}.log", spec.name));
        let mut log = std::fs::File::create(&log_path)?;
        let t = Instant::now();
        let outcome = crate::dispatch(&cli.command, &mut log);
        let seconds = t.elapsed().as_secs_f64();
        let peak = watch.finish(backend.process_usage(0, pid).unwrap_or(0));
        backend.trim()?;
        let report = scope.finish()?;
        if let Err(e) = outcome {
            writeln!(
                out,
                "✘ {} failed after {seconds:.2}s; see {}",
                spec.name,
                log_path.display()
            )?;
            return Err(e.context(format!("stage '{}' (monolithic mode)", spec.name)));
        }
        // The stage's own warnings (cards instead of pictures) are said here too.
        for line in std::fs::read_to_string(&log_path)?.lines() {
            if let Some(w) = line.strip_prefix("baton:warn ") {
                writeln!(out, "! {}: {w}", spec.name)?;
            }
        }
        writeln!(
            out,
            "✔ {} in {seconds:.2}s, peak +{}, {}",
            spec.name,
            format_bytes(peak.saturating_sub(baseline)),
            report
        )?;
        records.push(StageRecord {
            name: spec.name.clone(),
            seconds,
            peak_bytes: peak.saturating_sub(baseline),
            baseline_bytes: baseline,
            leaked: report.is_leak(),
            reclaim: report.to_string(),
            log: format!("logs/{}.log", spec.name),
        });
    }
    let total = started.elapsed().as_secs_f64();
    let kept = backend.process_usage(0, std::process::id()).unwrap_or(0);
    writeln!(
        out,
        "\n{:<10} {:>9} {:>12}  MEMORY BETWEEN STAGES",
        "STAGE", "WALL", "PEAK"
    )?;
    for r in &records {
        writeln!(
            out,
            "{:<10} {:>8.2}s {:>12}  {}",
            r.name,
            r.seconds,
            format_bytes(r.peak_bytes),
            if r.leaked {
                "LEAKED (see monolithic.json)"
            } else {
                "verified back"
            }
        )?;
    }
    writeln!(
        out,
        "total {total:.2}s; this process still holds {} on the device (its context and kernels) until it exits\nfiles: {}",
        format_bytes(kept),
        run_dir.display()
    )?;
    let json = serde_json::json!({"mode": "monolithic", "topic": args.topic, "total_seconds": total,
        "held_at_end_bytes": kept, "stages": records});
    baton_base::atomic_file::write_atomic(
        &run_dir.join("monolithic.json"),
        &serde_json::to_vec_pretty(&json)?,
    )?;
    if records.iter().any(|r| r.leaked) {
        anyhow::bail!(
            "memory did not come back between stages; see {}",
            run_dir.join("monolithic.json").display()
        );
    }
    Ok(())
}
