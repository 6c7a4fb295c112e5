//! `baton batch`: one run per topic, all of them on one scheduler across every device.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use baton_base::format_bytes;
use baton_runner::report::write_report;
use baton_runner::{Manifest, RunState, create_run};

use crate::BadInput;
use crate::args::BatchArgs;
use crate::commands::run::{engine, load_pipeline, outcome, summary_json};

pub fn batch(args: &BatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let settings = crate::knobs::apply(&args.knobs)?;
    let topics = read_topics(&args.topics)?;
    let pipeline = load_pipeline(&args.common)?;
    let engine = engine(
        args.common.device,
        true,
        args.common.gpu_reserve,
        args.common.executor,
    )?;
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
            Ok(plan) => {
                crate::knobs::record(&settings, &plan.dir)?;
                plans.push(plan)
            }
            Err(err) => refused.push((topic.clone(), err.to_string())),
        }
    }
    let devices = engine.gpu.snapshot()?.len();
    if !args.common.json {
        writeln!(
            out,
            "batch: {} topic(s) over {devices} device(s) ({})",
            topics.len(),
            engine.gpu.kind()
        )?;
    }
    engine.execute(&mut plans)?;
    let wall = started.elapsed();
    // With --json the table goes nowhere; the summary below takes its place.
    let mut sink = std::io::sink();
    let table: &mut dyn Write = if args.common.json { &mut sink } else { out };

    writeln!(
        table,
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
            table,
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
            table,
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
    write_report(&report_dir, "baton batch", &manifests, &[])?;
    let ok = plans
        .iter()
        .filter(|p| p.manifest.state == RunState::Succeeded)
        .count();
    if args.common.json {
        let summary = serde_json::json!({
            "topics": topics.len(),
            "succeeded": ok,
            "wall_seconds": wall.as_secs_f64(),
            "report": report_dir.join("report/index.html"),
            "runs": plans.iter().map(summary_json).collect::<Vec<_>>(),
            "refused": refused
                .iter()
                .map(|(topic, error)| serde_json::json!({"topic": topic, "error": error}))
                .collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(
            out,
            "\n{ok} of {} topic(s) succeeded in {:.2}s; report: {}",
            topics.len(),
            wall.as_secs_f64(),
            report_dir.join("report/index.html").display()
        )?;
    }
    if !refused.is_empty() {
        return Err(anyhow::anyhow!(
            "{} topic(s) were refused before running; see the table above",
            refused.len()
        ));
    }
    outcome(&plans.iter().collect::<Vec<_>>())
}

/// The topics of a topics file: one per line, blank lines and `#` comments skipped.
pub fn read_topics(path: &Path) -> anyhow::Result<Vec<String>> {
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
