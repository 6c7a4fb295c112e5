//! `baton resume`: finish a run folder, keeping the stages whose files still match.

use std::io::Write;

use baton_runner::{Manifest, resume_run};

use crate::args::ResumeArgs;
use crate::commands::run::{engine, outcome, summarize};

pub fn resume(args: &ResumeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Read and check before opening devices, so a bad folder fails fast and changes nothing.
    let recorded = Manifest::load(&args.run_dir)?;
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
    let engine = engine(choice, false, reserve)?;
    let (plan, decisions) = resume_run(&args.run_dir, &baton_content::ContentCatalog::default())?;
    for d in &decisions {
        writeln!(out, "{:<14} {}", d.stage, d.why)?;
    }
    let mut plans = vec![plan];
    engine.execute(&mut plans)?;
    summarize(&plans[0], out)?;
    outcome(&[&plans[0]])
}
