//! The `baton` command: parses arguments, calls the library crates, and maps their errors to
//! exit codes.
//!
//! Exit codes: 0 success; 1 the machine or the work failed; 2 the input was bad (an unknown
//! device, a malformed size or spec, a bad interval, an unwritable path), always with a single
//! line that names the bad value. A closed stdout (`baton stats | head`) is a clean exit.

pub mod args;
mod bench;
mod monolithic;
mod pipeline_cmd;
mod progress;
mod scenes_cmd;
mod sim_cmd;
mod stats;
pub mod switch;
mod watch;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{BenchCommand, Cli, Command, DemoCommand, ModelsCommand, SimCommand};

/// Bad input found outside clap: the message names the value and says what to do.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Runs baton with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(err),
    };
    init_logging(&cli.command);
    let mut stdout = std::io::stdout().lock();
    match dispatch(&cli.command, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = stdout.flush();
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

pub(crate) fn dispatch(command: &Command, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => pipeline_cmd::run(args, out),
        Command::Resume(args) => pipeline_cmd::resume(args, out),
        Command::Scenes(args) => scenes_cmd::scenes(args, out),
        Command::Voice(args) => scenes_cmd::voice(args, out),
        Command::Images(args) => scenes_cmd::images(args, out),
        Command::Models(ModelsCommand::List) => scenes_cmd::models_list(out),
        Command::Models(ModelsCommand::Fetch { name }) => scenes_cmd::models_fetch(name, out),
        Command::Models(ModelsCommand::Warm { name }) => scenes_cmd::models_warm(name, out),
        Command::Models(ModelsCommand::Evict { files }) => scenes_cmd::models_evict(files, out),
        Command::Batch(args) => pipeline_cmd::batch(args, out),
        Command::Stats(args) => stats::stats(args, out),
        Command::Watch(args) => watch::watch(args),
        Command::Sim(SimCommand::Hold(args)) => sim_cmd::hold(args, out),
        Command::Sim(SimCommand::Reset) => sim_cmd::reset(out),
        Command::Sim(SimCommand::Work(args)) => sim_cmd::work(args, out),
        Command::Demo(DemoCommand::Switch(args)) => bench::demo_switch(args, out),
        Command::Demo(DemoCommand::Mock {
            target,
            size,
            label,
        }) => switch::mock(*target, *size, label, out),
        Command::Bench(BenchCommand::Switch {
            repeat,
            size,
            device,
            json,
        }) => bench::switch(*repeat, *size, *device, json.as_deref(), out),
        Command::Bench(BenchCommand::Llm(args)) => bench::llm(args, out),
        Command::Bench(BenchCommand::Load(args)) => bench::load(args, out),
        Command::Bench(BenchCommand::Images {
            family,
            scenes,
            size,
            dir,
            compute,
        }) => scenes_cmd::bench_images(family, *scenes, *size, dir, *compute, out),
        Command::Bench(BenchCommand::Voice {
            size,
            scenes,
            dir,
            compute,
        }) => scenes_cmd::bench_voice(size, *scenes, dir, *compute, out),
        Command::Bench(BenchCommand::Snapshot { iterations }) => bench::snapshot(*iterations, out),
        Command::Bench(BenchCommand::Runner {
            stages,
            topics,
            stage_seconds,
        }) => bench::runner(*stages, *topics, *stage_seconds, out),
    }
}

/// 2 for bad input, 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.downcast_ref::<BadInput>().is_some()
        || err
            .downcast_ref::<baton_memory::MemoryError>()
            .is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<baton_runner::RunnerError>()
            .is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<baton_studio::scenes::ScenesError>()
            .is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<baton_studio::voice::VoiceError>()
            .is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<baton_studio::images::ImagesError>()
            .is_some_and(|e| e.is_bad_input())
        || err
            .downcast_ref::<baton_studio::model_store::StoreError>()
            .is_some_and(|e| {
                matches!(
                    e,
                    baton_studio::model_store::StoreError::BadSpec { .. }
                        | baton_studio::model_store::StoreError::Missing(_)
                )
            });
    if bad_input { 2 } else { 1 }
}

/// The error and its causes on one line, each cause once.
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == broken
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                == broken
    })
}

/// Help and version print as clap writes them; a usage error becomes one line and exit code 2.
fn clap_exit(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        );
    }
    let rendered = err.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("{line}; see baton --help");
    ExitCode::from(2)
}

fn init_logging(command: &Command) {
    // Benchmarks repeat the seed's log points hundreds of times; they print tables instead.
    let default = match command {
        Command::Bench(_) => "warn",
        _ => "warn,baton_memory=info,baton_runner=info,baton=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
