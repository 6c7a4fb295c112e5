//! `baton scenes`, `baton voice` and `baton models`: the storyboard writer, the narrator, and
//! the model store behind them.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use baton_memory::format_bytes;
use baton_studio::llm::Sampler;
use baton_studio::model_store::ModelStore;
use baton_studio::scenes::{Compute, Destination, ScenesRequest, write_scenes};

use crate::args::{ComputeChoice, ScenesArgs};

pub(crate) fn compute(choice: ComputeChoice) -> anyhow::Result<(Compute, String)> {
    let cuda = || baton_memory::cuda::CudaBackend::open(0).map(|c| Compute::Cuda(Arc::new(c)));
    Ok(match choice {
        ComputeChoice::Cpu => (Compute::Cpu, "on the CPU (--compute cpu)".into()),
        ComputeChoice::Cuda => (cuda()?, "on GPU 0".into()),
        ComputeChoice::Auto => match baton_memory::nvml::NvmlBackend::open() {
            Ok(_) if baton_memory::cuda::COMPILED => (cuda()?, "on GPU 0".into()),
            Ok(_) => (
                Compute::Cpu,
                "on the CPU: this baton was built without CUDA (rebuild with --features cuda)"
                    .into(),
            ),
            Err(why) => (Compute::Cpu, format!("on the CPU: {why}")),
        },
    })
}

pub fn scenes(args: &ScenesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Refuse a bad topic before fetching a model or loading anything.
    baton_studio::run_dir::slug(&args.topic).map_err(baton_studio::scenes::ScenesError::from)?;
    let store = ModelStore::from_env();
    let model = store.resolve(&args.model, true)?;
    let (compute, where_) = compute(args.compute)?;
    writeln!(
        out,
        "writing {} scenes about '{}' with {} {where_}",
        args.scenes,
        args.topic,
        model.display()
    )?;
    out.flush()?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} tokens {per_sec} {elapsed}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let mut on_token = |n: usize| {
        if let Some(bar) = &bar {
            bar.set_position(n as u64);
        }
    };
    let outcome = write_scenes(
        ScenesRequest {
            topic: &args.topic,
            scenes: args.scenes,
            model: &model,
            tokenizer: args.tokenizer.as_deref(),
            sampler: Sampler {
                temperature: args.temperature,
                top_p: args.top_p,
                seed: args.seed,
                max_tokens: args.max_tokens,
                repeat_penalty: args.repeat_penalty,
            },
            compute,
            destination: match &args.run_dir {
                Some(dir) => Destination::RunDir(dir.clone()),
                None => Destination::NewRun(args.output.clone()),
            },
        },
        &mut on_token,
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let o = outcome?;
    let g = &o.generation;
    writeln!(
        out,
        "storyboard: \"{}\", {} scenes",
        o.storyboard.title,
        o.storyboard.scenes.len()
    )?;
    for s in &o.storyboard.scenes {
        writeln!(
            out,
            "  {}. {} ({:.0}s): {}",
            s.index, s.title, s.duration_seconds, s.narration
        )?;
    }
    let model_bytes = std::fs::metadata(&model).map_or(0, |m| m.len());
    writeln!(
        out,
        "tokens: {} prompt + {} generated in {:.2}s: {:.1} tokens/s (model, {}, loaded in {:.2}s on {}: {:.2} GB/s)",
        g.prompt_tokens,
        g.tokens,
        g.decode_time.as_secs_f64(),
        g.tokens_per_second(),
        format_bytes(model_bytes),
        o.load_seconds,
        o.device,
        model_bytes as f64 / o.load_seconds.max(1e-9) / 1e9
    )?;
    if args.run_dir.is_some() {
        // As a stage: the runner keeps this load in run.json.
        writeln!(
            out,
            "{}",
            baton_weights::stage_line(&model.display().to_string(), model_bytes, o.load_seconds)
        )?;
    }
    writeln!(out, "memory after loading: {}", o.after_load)?;
    writeln!(out, "memory after generation: {}", o.after_generation)?;
    writeln!(out, "{}", o.reclaim)?;
    writeln!(out, "file: {}", o.file.display())?;
    Ok(())
}

pub fn models_list(out: &mut dyn Write) -> anyhow::Result<()> {
    let store = ModelStore::from_env();
    writeln!(out, "model store: {}", store.dir().display())?;
    for (name, about, bytes) in store.list() {
        let state = bytes.map_or("not fetched".to_string(), |b| {
            format!("fetched, {}", format_bytes(b))
        });
        writeln!(out, "{name:<10} {state:<22} {about}")?;
    }
    Ok(())
}

pub fn models_fetch(name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = ModelStore::from_env();
    let path = store.resolve(name, true)?;
    writeln!(out, "{name}: {} (checksum verified)", path.display())?;
    Ok(())
}

pub fn models_warm(name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    // Warming never downloads: a model that is not here yet has nothing to warm.
    let path = ModelStore::from_env().resolve(name, false)?;
    let report = baton_weights::page_cache::warm(&path, 8)?;
    writeln!(out, "{}: {report}", path.display())?;
    Ok(())
}

pub fn voice(args: &crate::args::VoiceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_studio::voice::{Espeak, VoiceEngine, VoiceOptions, write_voice};
    let options = VoiceOptions {
        voice: args.voice.clone(),
        speed: args.speed,
        sample_rate: args.sample_rate,
    };
    options.check()?;
    // The run folder the scenes file belongs to: output/RUN/1_scripts/x_scenes.json -> output/RUN.
    let run_dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => {
            let folder = args.input.parent().unwrap_or(std::path::Path::new("."));
            match folder.file_name() {
                Some(name) if name == "1_scripts" => {
                    folder.parent().unwrap_or(folder).to_path_buf()
                }
                _ => folder.to_path_buf(),
            }
        }
    };
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
    out.flush()?;
    let stage = args.run_dir.is_some();
    let manifest = write_voice(
        &args.input,
        &run_dir,
        &engine,
        &options,
        &mut |done, total| {
            // As a stage, the runner turns these lines into its progress bar.
            if stage {
                let _ = writeln!(out, "baton:progress {done}/{total} narrated scene {done}");
                let _ = out.flush();
            }
        },
    )?;
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
