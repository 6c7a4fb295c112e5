//! `baton bench llm`: tokens per second of a GGUF model, and its logits against candle's.

use std::io::Write;

use baton_studio::compute::Compute;

/// `baton bench llm`: tokens per second of a GGUF model, free text by the loop of candle's own
/// quantized example (same sampler, seed and repeat penalty, so the two can be run side by
/// side on one file: `bench/candle_quantized.sh`), then the constrained storyboard JSON that
/// `baton scenes` writes. The median of `repeat` runs of each.
pub fn llm(args: &baton::args::BenchLlmArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_studio::llm::{Generation, Llm, Sampler};
    use baton_studio::model_store::ModelStore;
    use baton_studio::scenes::generate_storyboard;

    if args.repeat == 0 || args.tokens < 2 {
        return Err(baton::BadInput(format!(
            "--repeat {} --tokens {}: need at least 1 run of at least 2 tokens",
            args.repeat, args.tokens
        ))
        .into());
    }
    let path = ModelStore::from_env().resolve(&args.model, true)?;
    let (compute, where_) = Compute::choose(args.compute)?;
    let (_, device) = compute.open()?;
    baton_studio::llm::warm_up(&device)?;
    let started = std::time::Instant::now();
    let mut llm = Llm::load(&path, &device, args.tokenizer.as_deref())?;
    writeln!(
        out,
        "model {} ({}, {:.1} MB) loaded in {:.2}s, {where_}; {} CPU threads",
        path.display(),
        llm.arch,
        llm.file_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    // The same file through candle's own model (its tensors read by candle, one pageable copy
    // each): how long that load takes, and whether baton's model computes the same logits.
    let probe: Vec<u32> = [1u32, 2, 3, 5, 8]
        .iter()
        .map(|t| t % llm.n_vocab as u32)
        .collect();
    let ours = llm.logits(&probe)?;
    match baton_studio::llm::candle_reference(&path, &device, &probe)? {
        Some((theirs, candle_seconds)) => {
            let max_diff = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            writeln!(
                out,
                "weights through baton's lanes: {:.3}s ({:.2} GB/s); candle's quantized_{} from_gguf: {:.3}s; logits after {} tokens, baton vs candle: {}",
                llm.load.seconds,
                llm.load.gb_per_second(),
                llm.arch,
                candle_seconds,
                probe.len(),
                if ours == theirs {
                    "identical".to_string()
                } else {
                    format!("max |difference| {max_diff:.3e} over {} logits", ours.len())
                }
            )?;
        }
        None => writeln!(
            out,
            "weights through baton's lanes: {:.3}s ({:.2} GB/s); no quantized {} in candle computes this model (the tests check it against candle's full-precision one)",
            llm.load.seconds,
            llm.load.gb_per_second(),
            llm.arch,
        )?,
    }
    if let Some(file) = &args.save_tokenizer {
        let json = llm
            .tokenizer
            .to_string(true)
            .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))?;
        baton_base::atomic_file::write_atomic(file, json.as_bytes())?;
        writeln!(out, "tokenizer written to {}", file.display())?;
    }

    let median = |mut runs: Vec<Generation>| -> Generation {
        runs.sort_by(|a, b| a.tokens_per_second().total_cmp(&b.tokens_per_second()));
        runs.swap_remove(runs.len() / 2)
    };
    let free = Sampler {
        temperature: args.temperature,
        top_p: 1.0,
        seed: args.seed,
        max_tokens: args.tokens,
        repeat_penalty: args.repeat_penalty,
    };
    let mut runs = Vec::new();
    for _ in 0..args.repeat {
        runs.push(llm.generate_text(&args.prompt, &free, 64)?);
    }
    if args.print_text {
        writeln!(out, "free text of run 1:\n{}\n", runs[0].text)?;
    }
    let text_median = median(runs);
    let mut rows = vec![("free text (candle example's loop)", text_median)];
    if args.scenes > 0 {
        let constrained = Sampler {
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
            max_tokens: 3000,
            repeat_penalty: 1.0,
        };
        let mut runs = Vec::new();
        for _ in 0..args.repeat {
            let (_, g) = generate_storyboard(
                &mut llm,
                "Cyberpunk Tokyo",
                args.scenes,
                1,
                &constrained,
                &mut |_| {},
            )?;
            runs.push(g);
        }
        rows.push(("storyboard JSON (baton scenes)", median(runs)));
    }
    writeln!(
        out,
        "{:<36} {:>8} {:>10} {:>12} {:>12}",
        "GENERATION", "PROMPT", "GENERATED", "PROMPT tok/s", "tokens/s"
    )?;
    for (name, g) in &rows {
        writeln!(
            out,
            "{:<36} {:>8} {:>10} {:>12.1} {:>12.2}",
            name,
            g.prompt_tokens,
            g.tokens,
            g.prompt_tokens as f64 / g.prompt_time.as_secs_f64().max(1e-9),
            g.tokens_per_second()
        )?;
    }
    writeln!(out, "(median of {} runs each)", args.repeat)?;
    Ok(())
}
