//! `baton bench startup`: how long each program takes to start, do one small thing and exit,
//! as whole processes, the way a pipeline's stages and a user's shell pay it.
//!
//! The supervisor links no CUDA, so it should start in the same few milliseconds in every
//! build; the stage program of a `cuda` build pays the loader's work for cuBLAS, cuRAND and the
//! CUDA runtime at every start. Each command also runs with `LD_LIBRARY_PATH` removed: the
//! supervisor must start then too (a machine with only the NVIDIA driver installed); the stage
//! program of a `cuda` build starts only where the CUDA libraries are in the loader's default
//! path.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One command timed `repeat` times: (median, min, max) in ms, or why it failed.
fn time(
    program: &std::path::Path,
    args: &[&str],
    keep_path: bool,
    repeat: usize,
) -> Result<(f64, f64, f64), String> {
    let mut ms = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !keep_path {
            command.env_remove("LD_LIBRARY_PATH");
        }
        let started = Instant::now();
        let output = command.output().map_err(|e| format!("cannot start: {e}"))?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        if !output.status.success() {
            let err = String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "{}: {}",
                output.status,
                err.lines().next().unwrap_or("").trim()
            ));
        }
        ms.push(elapsed);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0], ms[ms.len() - 1]))
}

pub fn startup(repeat: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    if repeat == 0 {
        return Err(crate::BadInput("--repeat 0: use at least 1".into()).into());
    }
    let baton = std::env::current_exe()?;
    let stages = baton_content::stages_program();
    let rows: [(&std::path::Path, &[&str]); 3] = [
        (&baton, &["--version"]),
        (&baton, &["stats", "--json"]),
        (&stages, &["--version"]),
    ];
    writeln!(
        out,
        "whole-process start-up, median of {repeat} runs (min-max); LD_LIBRARY_PATH={}",
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    )?;
    writeln!(
        out,
        "{:<34} {:>22} {:>34}",
        "COMMAND", "AS GIVEN ms", "WITHOUT LD_LIBRARY_PATH ms"
    )?;
    for (program, args) in rows {
        let name = format!(
            "{} {}",
            program.file_name().map_or_else(
                || program.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            args.join(" ")
        );
        let cell = |r: Result<(f64, f64, f64), String>| match r {
            Ok((median, min, max)) => format!("{median:.1} ({min:.1}-{max:.1})"),
            Err(why) => format!("fails: {}", why.chars().take(60).collect::<String>()),
        };
        writeln!(
            out,
            "{name:<34} {:>22} {:>34}",
            cell(time(program, args, true, repeat)),
            cell(time(program, args, false, repeat))
        )?;
    }
    Ok(())
}
