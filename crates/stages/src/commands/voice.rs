//! `baton voice`: narration for every scene.

use std::io::Write;

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
use baton_studio::compute::Compute;

use crate::fetch::from_hub;

pub fn voice(args: &baton::args::VoiceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton::args::VoiceEngineChoice;
    use baton_studio::voice::parler::{Parler, ParlerFiles};
    use baton_studio::voice::{Espeak, VoiceEngine, VoiceOptions};
    let options = VoiceOptions {
        voice: args.voice.clone(),
        speed: args.speed,
        sample_rate: args.sample_rate,
        description: args.describe.clone(),
    };
    options.check()?;
    // Refuse a bad scenes file before loading a model.
    baton_studio::storyboard::Storyboard::load(&args.input)
        .map_err(baton_studio::voice::VoiceError::from)?;
    let run_dir = baton_studio::storyboard::run_dir_of(&args.input, args.run_dir.as_deref());
    let stage = args.run_dir.is_some();
    let files = match args.engine {
        VoiceEngineChoice::Espeak => None,
        VoiceEngineChoice::Auto => ParlerFiles::resolve(&args.voice_model).ok(),
        VoiceEngineChoice::Parler => Some(match ParlerFiles::resolve(&args.voice_model) {
            Err(_) if args.fetch && !std::path::Path::new(&args.voice_model).is_dir() => {
                from_hub(&args.voice_model, out, |hub, progress| {
                    ParlerFiles::fetch(&args.voice_model, hub, progress)
                })??
            }
            other => other?,
        }),
    };
    let Some(files) = files else {
        let engine = Espeak::find()?;
        writeln!(
            out,
            "narrating {} with {} (voice {}, speed {}, {} Hz)",
            args.input.display(),
            engine.name(),
            options.voice,
            options.speed,
            options.sample_rate
        )?;
        return narrate(&args.input, &run_dir, &engine, &options, stage, out);
    };
    // The neural engine: loaded, run over every scene and released inside a scope guard, with
    // the seed's log points (before, after loading, after generation, after cleanup).
    let (compute, where_) = Compute::choose(args.compute)?;
    let (backend, device) = compute.open()?;
    let usage = || {
        backend
            .process_usage(0, std::process::id())
            .map(format_bytes)
            .unwrap_or_else(|e| e.to_string())
    };
    writeln!(
        out,
        "narrating {} with Parler-TTS ({}) {where_}; memory before: {}",
        args.input.display(),
        files.dir.display(),
        usage()
    )?;
    baton_studio::voice::parler::warm_up(&device)?;
    backend.trim()?;
    let scope =
        baton_memory::MemoryScope::new(backend.clone(), 0, "voice")?.with_tolerance(64 << 20);
    let watch = baton_memory::peak::PeakWatch::start(backend.clone(), 0);
    let result = (|| -> anyhow::Result<()> {
        let engine = Parler::load(&files, &device, args.seed)?;
        if let Some(load) = engine.load_report() {
            writeln!(out, "{load}; memory after loading: {}", usage())?;
            if stage {
                writeln!(out, "{}", load.stage_line())?;
            }
        }
        narrate(&args.input, &run_dir, &engine, &options, stage, out)?;
        writeln!(out, "memory after generation: {}", usage())?;
        Ok(())
    })();
    let peak = watch.finish(backend.process_usage(0, std::process::id()).unwrap_or(0));
    backend.trim()?;
    let report = scope.finish()?;
    writeln!(out, "peak: {}; {report}", format_bytes(peak))?;
    result
}

/// Runs the voice stage with `engine` and prints every clip.
fn narrate(
    input: &std::path::Path,
    run_dir: &std::path::Path,
    engine: &dyn baton_studio::voice::VoiceEngine,
    options: &baton_studio::voice::VoiceOptions,
    stage: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_studio::voice::write_voice;
    out.flush()?;
    let manifest = write_voice(input, run_dir, engine, options, &mut |done, total| {
        // As a stage, the runner turns these lines into its progress bar.
        if stage {
            let _ = writeln!(
                out,
                "{}",
                StageLine::progress(done as u64, total as u64, format!("narrated scene {done}"))
            );
            let _ = out.flush();
        }
    })?;
    for clip in &manifest.clips {
        writeln!(
            out,
            "  scene {:>2}: {:>5.1}s  speech {:.1} dBFS, peak {:.1} dBFS  {}",
            clip.scene,
            clip.seconds,
            clip.speech_rms_dbfs,
            clip.peak_dbfs,
            run_dir.join(&clip.file).display()
        )?;
    }
    writeln!(
        out,
        "narration: {:.1}s in {} ({} clips synthesised in {:.2}s); clip durations in {}",
        manifest.narration_seconds,
        run_dir.join(&manifest.narration).display(),
        manifest.clips.len(),
        manifest.synthesis_seconds,
        run_dir.join("2_audio/voice.json").display()
    )?;
    Ok(())
}
