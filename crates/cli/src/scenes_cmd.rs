//! `baton scenes`, `baton voice`, `baton images` and `baton models`: the content stages, and
//! the model store behind them.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
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
    baton_base::run_dir::slug(&args.topic).map_err(baton_studio::scenes::ScenesError::from)?;
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
            StageLine::load(model.display().to_string(), model_bytes, o.load_seconds)
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
        writeln!(out, "{name:<12} {state:<22} {about}")?;
    }
    writeln!(
        out,
        "image models (Hugging Face cache: {}):",
        baton_studio::hub::cache_dir().display()
    )?;
    for fam in baton_studio::images::family::FAMILIES {
        let state = match baton_studio::images::ImageModel::resolve(fam.name, None) {
            Ok(_) => "in the cache",
            Err(_) => "not fetched",
        };
        writeln!(
            out,
            "{:<12} {state:<22} {} ({})",
            fam.name, fam.about, fam.repo
        )?;
    }
    writeln!(out, "voice models (Hugging Face cache):")?;
    for (name, repo) in baton_studio::voice::parler::MODELS {
        let state = match baton_studio::voice::parler::ParlerFiles::resolve(name) {
            Ok(_) => "in the cache",
            Err(_) => "not fetched",
        };
        writeln!(
            out,
            "{name:<20} {state:<14} Parler-TTS ({repo}); `baton voice` uses it when here"
        )?;
    }
    Ok(())
}

/// Runs `fetch` against the hub from the environment, saying what is fetched where, with a
/// progress bar per file on a terminal (a log line every few seconds otherwise).
fn from_hub<T>(
    what: &str,
    out: &mut dyn Write,
    fetch: impl FnOnce(&baton_studio::hub::Hub, &mut dyn FnMut(&str, u64, Option<u64>)) -> T,
) -> anyhow::Result<T> {
    let hub = baton_studio::hub::Hub::from_env();
    writeln!(
        out,
        "fetching {what} from the Hugging Face hub into {}",
        hub.cache().display()
    )?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut lines: Option<(String, baton_studio::hub::ProgressLine)> = None;
    let fetched = fetch(&hub, &mut |file, done, total| {
        if let Some(bar) = &bar {
            bar.set_message(file.to_string());
            bar.set_length(total.unwrap_or(done));
            bar.set_position(done);
        } else {
            if lines.as_ref().is_none_or(|(f, _)| f != file) {
                lines = Some((file.to_string(), baton_studio::hub::ProgressLine::new(file)));
            }
            if let Some((_, line)) = &mut lines {
                line.show(done, total);
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(fetched)
}

pub fn models_fetch(name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    if baton_studio::images::family::FAMILIES
        .iter()
        .any(|f| f.name == name)
    {
        let model = from_hub(name, out, |hub, progress| {
            baton_studio::images::ImageModel::fetch(name, hub, progress)
        })??;
        writeln!(out, "{name}: {} (every file checked)", model.dir.display())?;
        return Ok(());
    }
    if let Some((voice, repo)) = baton_studio::voice::parler::MODELS
        .iter()
        .find(|(n, _)| *n == name)
    {
        let files = from_hub(&format!("{voice} ({repo})"), out, |hub, progress| {
            baton_studio::voice::parler::ParlerFiles::fetch(voice, hub, progress)
        })??;
        writeln!(out, "{name}: {} (every file checked)", files.dir.display())?;
        return Ok(());
    }
    let store = ModelStore::from_env();
    let path = store.resolve(name, true)?;
    writeln!(out, "{name}: {} (checksum verified)", path.display())?;
    Ok(())
}

pub fn models_warm(name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    // Warming never downloads: a model that is not here yet has nothing to warm.
    let path = ModelStore::from_env().resolve(name, false)?;
    let report = baton_base::page_cache::warm(&path, 8)?;
    writeln!(out, "{}: {report}", path.display())?;
    Ok(())
}

pub fn models_evict(files: &[std::path::PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    for f in files {
        let left = baton_base::page_cache::evict(f)?;
        writeln!(
            out,
            "{}: {:.0}% still in the page cache",
            f.display(),
            left * 100.0
        )?;
    }
    Ok(())
}

pub fn voice(args: &crate::args::VoiceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::args::VoiceEngineChoice;
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
    let run_dir = run_dir_of(&args.input, args.run_dir.as_deref());
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
    let (compute, where_) = compute(args.compute)?;
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

/// The run folder a scenes file belongs to: output/RUN/1_scripts/x_scenes.json -> output/RUN.
fn run_dir_of(input: &std::path::Path, given: Option<&std::path::Path>) -> std::path::PathBuf {
    if let Some(dir) = given {
        return dir.to_path_buf();
    }
    let folder = input.parent().unwrap_or(std::path::Path::new("."));
    match folder.file_name() {
        Some(name) if name == "1_scripts" => folder.parent().unwrap_or(folder).to_path_buf(),
        _ => folder.to_path_buf(),
    }
}

pub fn images(args: &crate::args::ImagesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_studio::images::{ImageModel, ImagesError, ImagesOptions, write_cards};
    let run_dir = run_dir_of(&args.input, args.run_dir.as_deref());
    let cards = |why: &str, out: &mut dyn Write| -> anyhow::Result<()> {
        let (w, h) = (args.width.unwrap_or(512), args.height.unwrap_or(512));
        let manifest = write_cards(&args.input, &run_dir, w, h, why)?;
        writeln!(
            out,
            "{} storyboard cards {w}x{h} in {} (cards, not generated images)",
            manifest.images.len(),
            run_dir.join("3_images").display()
        )?;
        Ok(())
    };
    if args.cards {
        return cards("--cards", out);
    }
    let model = match ImageModel::resolve(&args.model, args.family.as_deref()) {
        Ok(model) => model,
        Err(ImagesError::NoModel { .. })
            if args.fetch
                && baton_studio::images::family::FAMILIES
                    .iter()
                    .any(|f| f.name == args.model) =>
        {
            from_hub(&args.model, out, |hub, progress| {
                ImageModel::fetch(&args.model, hub, progress)
            })??
        }
        Err(ImagesError::NoModel { why, .. }) if args.cards_if_no_model => {
            let banner = format!(
                "!!! NO IMAGE MODEL: {why}.\n!!! Rendering STORYBOARD CARDS (title and narration on a plain frame), NOT generated images.\n!!! For pictures, run `baton models fetch sd-turbo` (or another family), or pass --model DIR."
            );
            eprintln!("{banner}");
            writeln!(out, "{banner}")?;
            if args.run_dir.is_some() {
                // As a stage: the runner repeats this in its own output and keeps it in run.json.
                writeln!(
                    out,
                    "{}",
                    StageLine::warn(format!(
                        "NO IMAGE MODEL ({why}): 3_images/ holds STORYBOARD CARDS, not generated images"
                    ))
                )?;
            }
            return cards(&why, out);
        }
        Err(e) => return Err(e.into()),
    };
    let (compute, where_) = compute(args.compute)?;
    writeln!(
        out,
        "drawing {} with {} ({}) {where_}",
        args.input.display(),
        model.family.name,
        model.dir.display()
    )?;
    let options = ImagesOptions {
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance: args.guidance,
        seed: args.seed,
        max_vram: args.max_vram,
    };
    draw(
        &args.input,
        &run_dir,
        &model,
        &compute,
        &options,
        args.run_dir.is_some(),
        out,
    )
}

/// Runs the images stage with a progress bar per image, then prints its phases.
fn draw(
    input: &std::path::Path,
    run_dir: &std::path::Path,
    model: &baton_studio::images::ImageModel,
    compute: &baton_studio::scenes::Compute,
    options: &baton_studio::images::ImagesOptions,
    stage: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_studio::images::{Progress, write_images};
    let bar = (!stage && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {elapsed}")
                .expect("valid template"),
        );
        bar
    });
    let mut lines: Vec<String> = Vec::new();
    let manifest = write_images(input, run_dir, model, compute, options, &mut |p| match p {
        Progress::Phase(name) => lines.push(format!("phase: {name}")),
        Progress::Warning(w) => {
            if let Some(bar) = &bar {
                bar.suspend(|| eprintln!("warning: {w}"));
            } else {
                eprintln!("warning: {w}");
            }
        }
        Progress::Step {
            scene,
            scenes,
            step,
            steps,
        } => {
            if let Some(bar) = &bar {
                bar.set_length(steps as u64);
                bar.set_message(format!("scene {scene}"));
                bar.set_position(step as u64);
            } else if stage && step == steps {
                lines.push(
                    StageLine::progress(scene as u64, scenes as u64, format!("drew scene {scene}"))
                        .to_string(),
                );
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let manifest = manifest?;
    for line in lines.iter().filter(|l| l.starts_with("baton:")) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "{:<13} {:>10} {:>8} {:>9} {:>8} {:>12} {:>12}  RECLAIM",
        "PHASE", "WEIGHTS", "LOAD s", "LOAD GB/s", "TOTAL s", "PEAK", "PLANNED"
    )?;
    let base = manifest.phases.first().map_or(0, |p| p.baseline_bytes);
    for p in &manifest.phases {
        writeln!(
            out,
            "{:<13} {:>10} {:>8.3} {:>9.2} {:>8.2} {:>12} {:>12}  {}",
            p.name,
            format_bytes(p.weights_bytes),
            p.load_seconds,
            p.load_gb_per_second,
            p.seconds,
            format_bytes(p.peak_bytes.saturating_sub(base)),
            format_bytes(p.planned_bytes),
            p.reclaim
        )?;
        if stage {
            writeln!(
                out,
                "{}",
                StageLine::load(&p.name, p.weights_bytes, p.load_seconds)
            )?;
        }
    }
    for image in &manifest.images {
        writeln!(
            out,
            "  scene {:>2}: {} ({:.2}s, seed {}{})",
            image.scene,
            run_dir.join(&image.file).display(),
            image.seconds,
            image.seed,
            if image.prompt_truncated {
                ", prompt cut"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        out,
        "{} images {}x{}, {} steps, {} on {}; peak {} above the start (largest phase); {}",
        manifest.images.len(),
        manifest.width,
        manifest.height,
        manifest.steps,
        manifest.dtype,
        manifest.device,
        format_bytes(manifest.peak_bytes),
        run_dir.join("3_images/images.json").display()
    )?;
    Ok(())
}

/// Refuses a benchmark scene count the storyboard schema would refuse.
fn check_bench_scenes(scenes: usize) -> anyhow::Result<()> {
    if scenes == 0 || scenes > baton_studio::storyboard::MAX_SCENES {
        return Err(crate::BadInput(format!(
            "--scenes {scenes}: use 1 to {}",
            baton_studio::storyboard::MAX_SCENES
        ))
        .into());
    }
    Ok(())
}

/// A benchmark's storyboard, `run_dir/1_scripts/benchmark_scenes.json`: `scenes` scenes whose
/// narration and image prompt (scene index from 0) the benchmark chooses. Returns its path.
fn write_bench_storyboard(
    run_dir: &std::path::Path,
    scenes: usize,
    narration: &dyn Fn(usize) -> &'static str,
    prompt: &dyn Fn(usize) -> &'static str,
) -> anyhow::Result<std::path::PathBuf> {
    let scripts = run_dir.join("1_scripts");
    std::fs::create_dir_all(&scripts)?;
    let board = serde_json::json!({
        "topic": "Cyberpunk Tokyo", "title": "Benchmark",
        "scenes": (0..scenes).map(|i| serde_json::json!({
            "index": i + 1, "title": format!("Scene {}", i + 1), "narration": narration(i),
            "image_prompt": prompt(i), "duration_seconds": 5.0})).collect::<Vec<_>>()
    });
    let input = scripts.join("benchmark_scenes.json");
    std::fs::write(&input, serde_json::to_vec(&board)?)?;
    Ok(input)
}

/// `baton bench images`: a model with `family`'s real shapes and random weights, written
/// first, then the images stage over `scenes` scenes at `size` x `size`.
pub fn bench_images(
    family: &str,
    scenes: usize,
    size: usize,
    dir: &std::path::Path,
    choice: ComputeChoice,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_studio::images::{
        ImageModel, ImagesOptions, family as families, random::write_random_model,
    };
    let fam = families::find(family).ok_or_else(|| {
        crate::BadInput(format!(
            "--family '{family}': use one of {}",
            families::names()
        ))
    })?;
    check_bench_scenes(scenes)?;
    let (compute, where_) = compute(choice)?;
    let dtype = if matches!(compute, baton_studio::scenes::Compute::Cuda(_)) {
        fam.gpu_dtype()
    } else {
        candle_core::DType::F32
    };
    let model_dir = dir.join(format!("{family}-random-{dtype:?}").to_lowercase());
    let started = std::time::Instant::now();
    // A folder this command finished writing before is used again (Flux's is 34 GB).
    let done = model_dir.join("baton-random-model");
    let (model, how) = match ImageModel::resolve(&model_dir.to_string_lossy(), Some(family)) {
        Ok(model) if done.is_file() => (model, "reused"),
        _ => {
            let model = write_random_model(&model_dir, fam, dtype)?;
            std::fs::write(&done, b"")?;
            (model, "written")
        }
    };
    writeln!(
        out,
        "random {family} model ({dtype:?}) {how} at {} in {:.1}s; drawing {scenes} scenes at {size}x{size} {where_}",
        model_dir.display(),
        started.elapsed().as_secs_f64()
    )?;
    let run_dir = dir.join("run");
    let prompts = [
        "neon street in the rain at night",
        "a crowded night market with glowing lights",
        "drones over the city sky",
        "a wet street with neon reflections",
        "dawn over the river and the city",
        "a cinematic wide shot of tokyo",
    ];
    let input = write_bench_storyboard(&run_dir, scenes, &|_| "Benchmark narration.", &|i| {
        prompts[i % prompts.len()]
    })?;
    let options = ImagesOptions {
        width: Some(size),
        height: Some(size),
        steps: None,
        guidance: None,
        seed: 42,
        max_vram: None,
    };
    draw(&input, &run_dir, &model, &compute, &options, false, out)
}

/// `baton bench voice`: a Parler-TTS with random weights (mini's shapes, or the tests' tiny
/// one), written first, then the voice stage's neural engine over `scenes` scenes.
pub fn bench_voice(
    size: &str,
    scenes: usize,
    dir: &std::path::Path,
    choice: ComputeChoice,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_studio::voice::parler::random;
    let config = match size {
        "mini" => random::mini_config(),
        "tiny" => random::tiny_config(3),
        other => {
            return Err(crate::BadInput(format!("--size '{other}': use mini or tiny")).into());
        }
    };
    check_bench_scenes(scenes)?;
    let (compute_kind, _) = compute(choice)?;
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
    let args = crate::args::VoiceArgs {
        input,
        run_dir: Some(dir.join("run")),
        voice: "en-us".into(),
        speed: 1.0,
        sample_rate: 22050,
        engine: crate::args::VoiceEngineChoice::Parler,
        voice_model: model_dir.to_string_lossy().into_owned(),
        describe: None,
        fetch: false,
        seed: 42,
        compute: choice,
    };
    voice(&args, out)
}
