//! `baton bench scenes`: storyboards for a list of topics, judged as a reader would judge them
//! (`baton_studio::quality`): scenes that repeat each other, narration that never mentions the
//! topic, image prompts that copy the narration, markup, paths or bracketed years; with tokens
//! per second and failures. The figures in docs/scenes.md come from here.

use std::io::Write;

use baton::BadInput;
use baton_studio::compute::Compute;
use baton_studio::llm::{Llm, Sampler};
use baton_studio::model_store::ModelStore;
use baton_studio::quality::{MAX_OVERLAP, Quality};
use baton_studio::scenes::generate_storyboard;

pub fn bench_scenes(
    args: &baton::args::BenchScenesArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if args.scenes == 0 || args.scenes > baton_studio::storyboard::MAX_SCENES {
        return Err(BadInput(format!(
            "--scenes {}: use 1 to {}",
            args.scenes,
            baton_studio::storyboard::MAX_SCENES
        ))
        .into());
    }
    let topics = baton::commands::batch::read_topics(&args.topics)?;
    let path = ModelStore::from_env().resolve(&args.model, true)?;
    let (compute, place) = Compute::choose(args.compute)?;
    let (_, device) = compute.open()?;
    baton_studio::llm::warm_up(&device)?;
    let mut llm = Llm::load(&path, &device, None)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    writeln!(
        out,
        "{} ({}) {place}: {} topics, {} scenes each, seed {}, temperature {}, repeat penalty {}",
        path.display(),
        llm.arch,
        topics.len(),
        args.scenes,
        args.seed,
        args.temperature,
        args.repeat_penalty
    )?;
    writeln!(
        out,
        "{:<36} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7} {:>8}",
        "TOPIC", "OVERLAP", "TOPIC?", "COPIED", "MARKUP", "TOKENS", "TOK/S", "SECONDS"
    )?;
    let sampler = Sampler {
        temperature: args.temperature,
        top_p: 0.9,
        seed: args.seed,
        max_tokens: args.max_tokens,
        repeat_penalty: args.repeat_penalty,
    };
    let (mut failures, mut distinct, mut on_topic, mut copied, mut markup) = (0, 0, 0, 0, 0);
    let (mut tokens, mut seconds) = (0usize, 0f64);
    for (i, topic) in topics.iter().enumerate() {
        let started = std::time::Instant::now();
        let name: String = topic.chars().take(36).collect();
        match generate_storyboard(&mut llm, topic, args.scenes, &sampler, &mut |_| {}) {
            Ok((board, g)) => {
                let q = Quality::of(&board);
                distinct += usize::from(q.max_overlap < MAX_OVERLAP);
                on_topic += usize::from(q.mentions_topic);
                copied += q.copied_prompts;
                markup += q.markup;
                tokens += g.tokens;
                seconds += g.decode_time.as_secs_f64();
                writeln!(
                    out,
                    "{name:<36} {:>7.0}% {:>7} {:>6} {:>7} {:>7} {:>7.1} {:>8.1}",
                    q.max_overlap * 100.0,
                    if q.mentions_topic { "yes" } else { "NO" },
                    q.copied_prompts,
                    q.markup,
                    g.tokens,
                    g.tokens_per_second(),
                    started.elapsed().as_secs_f64()
                )?;
                if let Some(dir) = &args.out {
                    baton_base::atomic_file::write_atomic(
                        &dir.join(format!("{:02}.json", i + 1)),
                        &serde_json::to_vec_pretty(&board)?,
                    )?;
                }
            }
            Err(e) => {
                failures += 1;
                writeln!(out, "{name:<36} FAILED: {e}")?;
            }
        }
        out.flush()?;
    }
    let n = topics.len();
    let share = |k: usize| k as f64 * 100.0 / n as f64;
    writeln!(
        out,
        "\n{failures} failure(s); {:.0}% with every pair of scenes under {:.0}% shared trigrams; {:.0}% naming the topic; {copied} copied image prompt(s); {markup} title(s) or narration(s) with markup; {:.1} tokens/s",
        share(distinct),
        MAX_OVERLAP * 100.0,
        share(on_topic),
        tokens as f64 / seconds.max(1e-9)
    )?;
    Ok(())
}
