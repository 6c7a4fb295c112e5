//! `baton bench voice`: the neural voice over a Parler-TTS of real shapes with random weights.

use std::io::Write;

use baton_studio::compute::Compute;

use crate::commands::bench_board::{check_bench_scenes, write_bench_storyboard};

/// `baton bench voice`: a Parler-TTS with random weights (mini's shapes, or the tests' tiny
/// one), written first, then the voice stage's neural engine over `scenes` scenes.
pub fn bench_voice(
    size: &str,
    scenes: usize,
    dir: &std::path::Path,
    choice: baton_memory::DeviceChoice,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_studio::voice::parler::random;
    let config = match size {
        "mini" => random::mini_config(),
        "tiny" => random::tiny_config(3),
        other => {
            return Err(baton::BadInput(format!("--size '{other}': use mini or tiny")).into());
        }
    };
    check_bench_scenes(scenes)?;
    let (compute_kind, _) = Compute::choose(choice)?;
    let dtype = if matches!(compute_kind, baton_studio::scenes::Compute::Cuda(_)) {
        candle_core::DType::BF16
    } else {
        candle_core::DType::F32
    };
    let model_dir = dir.join(format!("parler-{size}-random"));
    let started = std::time::Instant::now();
    let done = model_dir.join("baton-random-model");
    let how = if done.is_file() {
        "reused"
    } else {
        random::write_random_parler(&model_dir, &config, dtype)?;
        std::fs::write(&done, b"")?;
        "written"
    };
    writeln!(
        out,
        "random Parler-TTS {size} ({dtype:?}) {how} at {} in {:.1}s",
        model_dir.display(),
        started.elapsed().as_secs_f64()
    )?;
    let lines = [
        "Neon light spills across the wet streets of Tokyo at night.",
        "A crowded market glows under a sky full of drones.",
        "Rain falls on the river and the city reflects in it.",
        "At dawn the towers fade into a pale and quiet sky.",
        "A lone rider crosses the bridge as the trains pass.",
        "The city never sleeps, and neither do its lights.",
    ];
    let input = write_bench_storyboard(
        &dir.join("run"),
        scenes,
        &|i| lines[i % lines.len()],
        &|_| "a city at night",
    )?;
    let args = baton::args::VoiceArgs {
        input,
        run_dir: Some(dir.join("run")),
        voice: "en-us".into(),
        speed: 1.0,
        sample_rate: 22050,
        engine: baton::args::VoiceEngineChoice::Parler,
        voice_model: model_dir.to_string_lossy().into_owned(),
        piper_voice: baton_studio::voice::piper::DEFAULT_VOICE.into(),
        describe: None,
        fetch: false,
        seed: 42,
        compute: choice,
        dump: None,
        greedy: false,
        frames: None,
        f32: false,
    };
    crate::commands::voice::voice(&args, out)
}
