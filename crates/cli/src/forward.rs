//! Handing a command to the stage program: `baton scenes …` becomes `baton-stages scenes …`,
//! in the same process (`exec`), so its PID, process group, signals, standard streams and exit
//! code are the ones the caller started. The arguments were already parsed and checked here.

use std::os::unix::process::CommandExt;

/// Replaces this process with `baton-stages` and the same arguments; returns only on failure.
pub fn to_stage_program() -> anyhow::Result<()> {
    let program = baton_content::stages_program();
    let err = std::process::Command::new(&program)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(anyhow::anyhow!(
        "cannot run the stage program '{}': {err}; it is built with baton (`cargo build --release` builds both), or set BATON_STAGES to its path",
        program.display()
    ))
}
