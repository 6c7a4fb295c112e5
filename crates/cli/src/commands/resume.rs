//! `baton resume`: finish a run folder, keeping the stages whose files still match.

use std::io::Write;

use baton_runner::{Manifest, resume_run};

use crate::args::ResumeArgs;
use crate::commands::run::{engine, outcome, summarize, summary_json};

pub fn resume(args: &ResumeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Read and check before opening devices, so a bad folder fails fast and changes nothing.
    let recorded = Manifest::load(&args.run_dir)?;
    let names: Vec<&str> = recorded.stages.iter().map(|s| s.name.as_str()).collect();
    for stage in &args.rerun {
        if !names.contains(&stage.as_str()) {
            let hint = baton_base::suggest::closest(stage, names.iter().copied())
                .map(|n| format!("did you mean '{n}'? "))
                .unwrap_or_default();
            return Err(crate::BadInput(format!(
                "--rerun '{stage}': the run has no such stage; {hint}its stages are {}",
                names.join(", ")
            ))
            .into());
        }
    }
    // The settings the run began with (`baton run --seed …`, baton.toml), where this
    // environment does not set them again.
    let restored = crate::knobs::restore(&args.run_dir)?;
    if !args.json {
        for (var, value) in &restored {
            writeln!(out, "setting {var}={value} (as the run began)")?;
        }
    }
    let choice = match args.device {
        Some(choice) => choice,
        None => recorded.backend.parse()?,
    };
    // The reserve of `baton run`: BATON_GPU_RESERVE, else 1 GiB.
    let reserve = match std::env::var("BATON_GPU_RESERVE") {
        Ok(r) => r
            .parse()
            .map_err(|e| crate::BadInput(format!("BATON_GPU_RESERVE {e}")))?,
        Err(_) => baton_runner::Reserve::default(),
    };
    let engine = engine(choice, false, reserve, args.executor)?;
    let (plan, decisions) = resume_run(
        &args.run_dir,
        &baton_content::ContentCatalog::default(),
        &args.rerun,
        args.executor == crate::args::ExecutorChoice::Slurm,
    )?;
    if !args.json {
        for d in &decisions {
            writeln!(out, "{:<14} {}", d.stage, d.why)?;
        }
    }
    let mut plans = vec![plan];
    engine.execute(&mut plans)?;
    if args.json {
        let mut summary = summary_json(&plans[0]);
        summary["resumed"] = decisions
            .iter()
            .map(|d| serde_json::json!({"stage": d.stage, "kept": d.kept, "why": d.why}))
            .collect();
        summary["settings_restored"] = restored
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        summarize(&plans[0], out)?;
    }
    outcome(&[&plans[0]])
}
