//! The `baton` command: the supervisor. It parses arguments, runs pipelines through the runner,
//! reads devices, and hands the commands that load models (`scenes`, `voice`, `images`,
//! `models`, `demo`, the compute benchmarks, `run --mode monolithic`) to the stage program
//! `baton-stages`, which links the tensor libraries and CUDA that this one never does.
//!
//! A key design decision: the whole command line is declared here once ([`args`]) and both
//! programs parse it, so `baton scenes --help` and a bad flag read the same whichever program
//! runs them, and `baton` refuses bad input before it starts anything. `baton-stages` reuses
//! [`run_main`] and [`dispatch`] for everything it does not do itself.
//!
//! Exit codes: 0 success; 1 the machine or the work failed; 2 the input was bad (an unknown
//! device, a malformed size or spec, a bad interval, an unwritable path), always with a single
//! line that names the bad value. The code comes from the error itself
//! ([`baton_base::fault`]): the first cause in its chain that knows whose fault it is. A
//! closed stdout (`baton stats | head`) is a clean exit.

pub mod args;
pub mod commands;
mod forward;
pub mod knobs;
pub mod progress;

use std::io::Write;
use std::process::ExitCode;

use baton_base::fault::{Classifier, Classify, Fault, classifier, classify};
use clap::Parser;

use crate::args::{BenchCommand, Cli, Command, SimCommand};

/// Bad input found outside clap: the message names the value and says what to do.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

impl Classify for BadInput {
    fn fault(&self) -> Fault {
        Fault::Input
    }
}

/// The error types this crate's commands can fail with, for the exit code.
pub const CLASSIFIERS: &[Classifier] = &[
    classifier::<BadInput>,
    classifier::<baton_memory::MemoryError>,
    classifier::<baton_runner::RunnerError>,
    classifier::<baton_base::FileError>,
    classifier::<baton_base::units::SizeError>,
    classifier::<baton_base::units::DurationError>,
    classifier::<baton_base::run_dir::TopicError>,
];

/// Runs `baton` with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    run_main(
        |command, out| {
            if command.runs_in_stage_program() {
                forward::to_stage_program()
            } else {
                dispatch(command, out)
            }
        },
        CLASSIFIERS,
    )
}

/// Parses the arguments, runs `run` on the command with stdout, and turns what it returns into
/// an exit code and a one-line message: the shared main of `baton` and `baton-stages`.
/// `classifiers` name the error types `run` can return, beyond [`CLASSIFIERS`].
pub fn run_main(
    run: impl FnOnce(&Command, &mut dyn Write) -> anyhow::Result<()>,
    classifiers: &[Classifier],
) -> ExitCode {
    // A stage's keeper: baton's own, before any parsing (see baton_runner::keeper).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(baton_runner::keeper::KEEP_ARG) {
        std::process::exit(baton_runner::keeper::run(&args[2..]));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(err),
    };
    init_logging(&cli);
    let mut stdout = std::io::stdout().lock();
    match run(&cli.command, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = stdout.flush();
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(exit_code(&err, classifiers))
        }
    }
}

/// Runs one of the supervisor's own commands. A command of the stage program's is an error
/// here (`baton` hands those over before calling this).
pub fn dispatch(command: &Command, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::commands::*;
    match command {
        Command::Run(args) if !command.runs_in_stage_program() => run::run(args, out),
        Command::Resume(args) => resume::resume(args, out),
        Command::Batch(args) => batch::batch(args, out),
        Command::Stats(args) => stats::stats(args, out),
        Command::Config(crate::args::ConfigCommand::Show(knobs)) => crate::knobs::show(knobs, out),
        Command::Metrics(args) => metrics::metrics(args, out),
        Command::Completions { shell } => {
            let mut cli = <crate::args::Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cli, "baton", out);
            Ok(())
        }
        Command::Man { dir } => man(dir.as_deref(), out),
        Command::Watch(args) => watch::watch(args),
        Command::Sim(SimCommand::Hold(args)) => sim::hold(args, out),
        Command::Sim(SimCommand::Reset) => sim::reset(out),
        Command::Sim(SimCommand::Work(args)) => sim::work(args, out),
        Command::StageExec { plan } => stage_exec::stage_exec(plan, out),
        Command::Bench(BenchCommand::Snapshot { iterations }) => {
            bench_snapshot::snapshot(*iterations, out)
        }
        Command::Bench(BenchCommand::Runner {
            stages,
            topics,
            stage_seconds,
        }) => bench_runner::runner(*stages, *topics, *stage_seconds, out),
        Command::Bench(BenchCommand::Startup { repeat }) => bench_startup::startup(*repeat, out),
        _ => anyhow::bail!("this command runs in {}", baton_content::STAGES_PROGRAM),
    }
}

/// 2 for bad input, 1 for everything else, from the first cause in the chain that knows.
fn exit_code(err: &anyhow::Error, classifiers: &[Classifier]) -> u8 {
    let all: Vec<Classifier> = classifiers.iter().chain(CLASSIFIERS).copied().collect();
    classify(err.chain(), &all).exit_code()
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

/// `-q` was given: progress lines are left out too.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

fn init_logging(cli: &Cli) {
    // -q and -v win over BATON_LOG, and reach the stages through it (the runner passes it on).
    let asked = match (cli.quiet, cli.verbose) {
        (true, _) => Some("error"),
        (false, 0) => None,
        (false, 1) => Some(
            "info,baton_memory=debug,baton_runner=debug,baton_studio=debug,baton=debug,baton_stages=debug",
        ),
        (false, _) => Some(
            "debug,baton_memory=trace,baton_runner=trace,baton_studio=trace,baton=trace,baton_stages=trace",
        ),
    };
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    if let Some(level) = asked {
        // SAFETY: the first thing main does after parsing, before any thread starts.
        unsafe { std::env::set_var("BATON_LOG", level) };
    }
    // Benchmarks repeat the seed's log points hundreds of times; they print tables instead.
    let default = match &cli.command {
        Command::Bench(_) => "warn",
        _ => {
            "warn,baton_memory=info,baton_runner=info,baton_studio=info,baton=info,baton_stages=info"
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// `baton man`: the manual page of baton on `out`, or one page per command in `dir`, each
/// written whole.
fn man(dir: Option<&std::path::Path>, out: &mut dyn Write) -> anyhow::Result<()> {
    let cli = <crate::args::Cli as clap::CommandFactory>::command();
    let render = |cmd: clap::Command| -> anyhow::Result<Vec<u8>> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        Ok(page)
    };
    let Some(dir) = dir else {
        out.write_all(&render(cli)?)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        BadInput(format!(
            "--dir '{}': {e}; give a folder baton may write",
            dir.display()
        ))
    })?;
    let mut pages = vec![("baton".to_string(), cli.clone())];
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("baton-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone().display_name(name.clone()).bin_name(name),
        ));
    }
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        baton_base::atomic_file::write_atomic(&path, &render(cmd)?)?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}
