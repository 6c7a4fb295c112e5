//! `baton demo switch`: the seed's `vram_switch_demo.py`, as tables and a verdict.

use std::io::Write;

/// `baton demo switch`: the tables of the chosen mode(s) and a verdict.
pub fn demo_switch(args: &baton::args::SwitchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::switch::{in_process, processes, render};
    use baton::args::SwitchMode as Mode;
    let (target, why) = crate::switch::choose_target(args.device)?;
    writeln!(
        out,
        "baton demo switch: two mock models of {} {why}",
        baton_base::format_bytes(args.size)
    )?;
    out.flush()?;
    let mut results = Vec::new();
    // Processes first: the in-process mode gives this process a CUDA context for good, and the
    // parent of the processes mode must hold none.
    if matches!(args.mode, Mode::Processes | Mode::Both) {
        results.push(processes(target, args.size, args.tolerance)?);
    }
    if matches!(args.mode, Mode::InProcess | Mode::Both) {
        results.push(in_process(
            target,
            args.size,
            args.tolerance,
            args.inject_leak,
        )?);
    }
    for r in &results {
        writeln!(out)?;
        out.write_all(render(r).as_bytes())?;
    }
    if let [p, i] = results.as_slice() {
        writeln!(
            out,
            "\nside by side: switch {:.1} ms in-process vs {:.1} ms with processes; left after release {} vs {}",
            i.switch_seconds * 1000.0,
            p.switch_seconds * 1000.0,
            baton_base::format_bytes(i.left_after_release),
            baton_base::format_bytes(p.left_after_release)
        )?;
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.verified)
        .map(|r| r.mode)
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "memory did not come back in mode {}: see the verdict above",
            failed.join(" and ")
        );
    }
    Ok(())
}
