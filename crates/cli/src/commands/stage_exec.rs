//! `baton stage-exec --plan FILE`: what a Slurm job runs on its node (`--executor slurm`). The
//! stage is supervised as the local runner supervises it, on the GPU Slurm gave, and its
//! attempt's record is written into the shared run folder for the submitting baton to read.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use baton_base::format_bytes;
use baton_runner::slurm::{NodePlan, exec_on_node};

pub fn stage_exec(plan_file: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let plan: NodePlan = std::fs::read(plan_file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            crate::BadInput(format!(
                "--plan '{}': {e}; give the plan a submitting baton wrote (slurm/STAGE-N.plan.json)",
                plan_file.display()
            ))
        })?;
    let backend: Arc<dyn baton_memory::MemoryBackend> = if plan.gpu {
        baton_memory::open(plan.device.parse()?)?.backend
    } else {
        Arc::new(baton_memory::host::HostBackend::new())
    };
    let record = exec_on_node(&plan, backend, std::env::current_exe()?)?;
    let a = &record.attempt;
    writeln!(
        out,
        "stage '{}' attempt {} on {}: {}; peak {}; reclaim {}",
        plan.stage,
        plan.number,
        a.device,
        a.failure.as_deref().unwrap_or("succeeded"),
        format_bytes(a.peak_bytes),
        a.reclaim.as_ref().map_or("-".into(), |r| format!(
            "{} in {:.0} ms",
            if r.verified {
                "verified"
            } else {
                "NOT verified"
            },
            r.ms
        ))
    )?;
    Ok(())
}
