//! `baton scenes`: the storyboard, from an LLM.

use std::io::{IsTerminal, Write};

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
use baton_studio::compute::Compute;
use baton_studio::llm::Sampler;
use baton_studio::model_store::ModelStore;
use baton_studio::scenes::{Destination, ScenesRequest, write_scenes};

use baton::args::ScenesArgs;

pub fn scenes(args: &ScenesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Refuse a bad topic before fetching a model or loading anything.
    baton_base::run_dir::slug(&args.topic).map_err(baton_studio::scenes::ScenesError::from)?;
    let (compute, where_) = Compute::choose(args.compute)?;
    let model = scenes_model(&args.model, &compute)?;
    let drafts = args.drafts.count(compute.kind(), file_bytes(&model));
    writeln!(
        out,
        "writing {} scenes about '{}' with {} {where_}, seed {}, {}",
        args.scenes,
        args.topic,
        model.display(),
        attempt_seed(args),
        match drafts {
            1 => "1 draft each (--drafts 3 writes three and keeps the best)".to_string(),
            n => format!(
                "{n} drafts of the outline and of each scene, the least faulty and most fluent kept"
            ),
        }
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
                seed: attempt_seed(args),
                max_tokens: args.max_tokens,
                repeat_penalty: args.repeat_penalty,
            },
            style: &args.style,
            drafts,
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

/// The file for `--model`: a spec as the store takes it, or `auto`: the largest known model
/// that fits the room this stage has on its GPU (its granted budget, `BATON_MEMORY_BUDGET`, as
/// a stage; else the GPU's free memory), the offline default on the CPU.
pub(crate) fn scenes_model(spec: &str, compute: &Compute) -> anyhow::Result<std::path::PathBuf> {
    let store = ModelStore::from_env();
    if spec != "auto" {
        return Ok(store.resolve(spec, true)?);
    }
    let room = match compute {
        Compute::Cpu => None,
        Compute::Cuda(_) => match super::granted_budget()? {
            Some(budget) => Some(budget),
            None => Some(compute.open()?.0.device(0)?.free),
        },
    };
    let (known, path) = baton_studio::model_store::choose_auto(&store, room, true);
    tracing::info!(
        "--model auto: {} ({}), for {}",
        known.name,
        format_bytes(known.bytes),
        room.map_or("the CPU".to_string(), |r| format!(
            "{} of room",
            format_bytes(r)
        ))
    );
    Ok(path)
}

/// The size of the model file at `path`, for `--drafts auto`; 0 when it cannot be read (the
/// load that follows says why).
pub(crate) fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The seed of this attempt: as a stage of a run that retries it, attempt N samples with seed +
/// N - 1, so a retry does not write the same failing text again, and stays reproducible.
fn attempt_seed(args: &ScenesArgs) -> u64 {
    let attempt = std::env::var("BATON_ATTEMPT")
        .ok()
        .and_then(|a| a.parse::<u64>().ok())
        .filter(|_| args.run_dir.is_some())
        .unwrap_or(1);
    args.seed.wrapping_add(attempt.saturating_sub(1))
}
