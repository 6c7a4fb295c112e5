//! `baton-stages`: the stage program. It runs the commands that load models or compute on a
//! GPU (`scenes`, `voice`, `images`, `video`, `models`, `demo`, `run --mode monolithic` and the compute
//! benchmarks), as the runner's built-in stages and when `baton` hands a user's command over.
//!
//! A key design decision: this is the only program that links the tensor libraries, and in a
//! `cuda` build cuBLAS, cuRAND and the CUDA runtime, whose loading costs every start tens of
//! milliseconds and which a machine with only the NVIDIA driver does not have. The supervisor
//! `baton` links none of it. The command line is `baton`'s own ([`baton::args`]); the
//! supervisor's commands run here too, through [`baton::dispatch`], so this one program can
//! stand in for both.

mod commands;
mod fetch;
mod switch;

use std::io::Write;
use std::process::ExitCode;

use baton::args::{BenchCommand, CatalogCommand, Command, DemoCommand, ModelsCommand};
use baton_base::fault::{Classifier, classifier};

/// The error types of the stage libraries, for the exit code.
const CLASSIFIERS: &[Classifier] = &[
    classifier::<baton_studio::scenes::ScenesError>,
    classifier::<baton_studio::voice::VoiceError>,
    classifier::<baton_studio::video::VideoError>,
    classifier::<baton_studio::images::ImagesError>,
    classifier::<baton_studio::model_store::StoreError>,
    classifier::<baton_studio::compute::ComputeError>,
    classifier::<baton_studio::llm::LlmError>,
    classifier::<baton_studio::hub::HubError>,
    classifier::<baton_weights::WeightsError>,
];

/// Runs `baton-stages` with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    baton::run_main(dispatch, CLASSIFIERS)
}

/// A built-in stage the runner started ahead of its turn (`BATON_GO_FD` set): it prepares what
/// takes no device memory to speak of (on a GPU, the CUDA context and the kernels every model
/// of baton uses), says `baton:ready`, and waits for its go before it reads its inputs or loads
/// anything; the go's budget then stands for `BATON_MEMORY_BUDGET`. The context and its kernels
/// stay for the stage, which computes on the same device. Without the variable, nothing happens.
fn prepare_and_await_go(compute: Option<baton_memory::DeviceChoice>) -> anyhow::Result<()> {
    use baton_base::protocol::{GO_FD_VAR, await_go};
    if std::env::var_os(GO_FD_VAR).is_none() {
        return Ok(());
    }
    if let Some(choice) = compute {
        let (compute, _) = baton_studio::compute::Compute::choose(choice)?;
        if matches!(compute, baton_studio::compute::Compute::Cuda(_)) {
            // The process has one candle device per GPU, kept until it exits: the stage will
            // compute on this one, with the kernels loaded here.
            let (_, device) = compute.open()?;
            baton_studio::llm::warm_up(&device)?;
        }
    }
    await_go().map_err(|e| anyhow::anyhow!("waiting for the runner's go: {e}"))?;
    Ok(())
}

/// Runs any command: the stage program's own here, the supervisor's through `baton`.
pub fn dispatch(command: &Command, out: &mut dyn Write) -> anyhow::Result<()> {
    use commands::*;
    match command {
        Command::Run(args) if command.runs_in_stage_program() => monolithic::run(args, out),
        Command::Scenes(args) => {
            prepare_and_await_go(Some(args.compute))?;
            scenes::scenes(args, out)
        }
        Command::Voice(args) => {
            prepare_and_await_go(Some(args.compute))?;
            voice::voice(args, out)
        }
        Command::Images(args) => {
            prepare_and_await_go(Some(args.compute))?;
            images::images(args, out)
        }
        Command::Video(args) => {
            prepare_and_await_go(None)?;
            video::video(args, out)
        }
        Command::Models(ModelsCommand::List { json }) => models::models_list(*json, out),
        Command::Models(ModelsCommand::Fetch { name }) => models::models_fetch(name, out),
        Command::Models(ModelsCommand::Warm { name }) => models::models_warm(name, out),
        Command::Models(ModelsCommand::Evict { files }) => models::models_evict(files, out),
        Command::Catalog(CatalogCommand::VoiceEngine) => catalog::voice_engine(out),
        Command::Catalog(CatalogCommand::Weights { stage }) => catalog::weights(stage, out),
        Command::Demo(DemoCommand::Switch(args)) => demo_switch::demo_switch(args, out),
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
        }) => bench_switch::switch(*repeat, *size, *device, json.as_deref(), out),
        Command::Bench(BenchCommand::Llm(args)) => bench_llm::llm(args, out),
        Command::Bench(BenchCommand::Load(args)) => bench_load::load(args, out),
        Command::Bench(BenchCommand::Scenes(args)) => bench_scenes::bench_scenes(args, out),
        Command::Bench(BenchCommand::Images {
            family,
            scenes,
            size,
            dir,
            compute,
            steps,
            max_vram,
            weights,
            quantize,
        }) => bench_images::bench_images(
            &bench_images::BenchImages {
                family,
                scenes: *scenes,
                size: *size,
                dir,
                choice: *compute,
                steps: *steps,
                max_vram: *max_vram,
                weights,
                quantize: quantize.as_deref(),
            },
            out,
        ),
        Command::Bench(BenchCommand::Voice {
            size,
            scenes,
            dir,
            compute,
        }) => bench_voice::bench_voice(size, *scenes, dir, *compute, out),
        other => baton::dispatch(other, out),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_and_the_voice_library_agree_on_the_default_voice() {
        assert_eq!(
            baton_content::DEFAULT_VOICE_MODEL,
            baton_studio::voice::parler::DEFAULT_MODEL
        );
        assert_eq!(
            baton_content::DEFAULT_PIPER_VOICE,
            baton_studio::voice::piper::DEFAULT_VOICE
        );
    }
}
