//! `baton bench scenes`: storyboards for a list of topics, judged as a reader would judge them
//! (`baton_studio::quality`): scenes that repeat each other, narration that never mentions the
//! topic, image prompts that copy the narration, markup, paths or bracketed years; with tokens
//! per second and failures. The figures in docs/scenes.md come from here.

use std::io::Write;

use baton::BadInput;
use baton_studio::compute::Compute;
use baton_studio::llm::{Llm, Sampler};
use baton_studio::quality::{MAX_OVERLAP, Quality};
use baton_studio::scenes::generate_storyboard;

/// The figures over all storyboards, and the table's rows.
#[derive(Default)]
struct Tally {
    boards: usize,
    failures: usize,
    distinct: usize,
    on_topic: usize,
    copied: usize,
    markup: usize,
    tokens: usize,
    seconds: f64,
}

const HEADER: [&str; 8] = [
    "TOPIC", "OVERLAP", "TOPIC?", "COPIED", "MARKUP", "TOKENS", "TOK/S", "SECONDS",
];

impl Tally {
    fn header(out: &mut dyn Write) -> std::io::Result<()> {
        let h = HEADER;
        writeln!(
            out,
            "{:<36} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7} {:>8}",
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
        )
    }

    /// Judges one storyboard and prints its row (`generated`: its tokens, tokens/s and seconds).
    fn add(
        &mut self,
        name: &str,
        board: &baton_studio::storyboard::Storyboard,
        generated: Option<(&baton_studio::llm::Generation, f64)>,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let q = Quality::of(board);
        self.boards += 1;
        self.distinct += usize::from(q.max_overlap < MAX_OVERLAP);
        self.on_topic += usize::from(q.mentions_topic);
        self.copied += q.copied_prompts;
        self.markup += q.markup;
        let name: String = name.chars().take(36).collect();
        write!(
            out,
            "{name:<36} {:>7.0}% {:>7} {:>6} {:>7}",
            q.max_overlap * 100.0,
            if q.mentions_topic { "yes" } else { "NO" },
            q.copied_prompts,
            q.markup,
        )?;
        match generated {
            Some((g, seconds)) => {
                self.tokens += g.tokens;
                self.seconds += g.decode_time.as_secs_f64();
                writeln!(
                    out,
                    " {:>7} {:>7.1} {:>8.1}",
                    g.tokens,
                    g.tokens_per_second(),
                    seconds
                )
            }
            None => writeln!(out),
        }
    }

    fn failed(
        &mut self,
        name: &str,
        why: &dyn std::fmt::Display,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        self.boards += 1;
        self.failures += 1;
        let name: String = name.chars().take(36).collect();
        writeln!(out, "{name:<36} FAILED: {why}")
    }

    fn summary(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let share = |k: usize| k as f64 * 100.0 / self.boards.max(1) as f64;
        write!(
            out,
            "\n{} storyboard(s), {} failure(s); {:.0}% with every pair of scenes under {:.0}% shared trigrams; {:.0}% naming the topic; {} copied image prompt(s); {} title(s) or narration(s) with markup",
            self.boards,
            self.failures,
            share(self.distinct),
            MAX_OVERLAP * 100.0,
            share(self.on_topic),
            self.copied,
            self.markup,
        )?;
        if self.seconds > 0.0 {
            write!(out, "; {:.1} tokens/s", self.tokens as f64 / self.seconds)?;
        }
        writeln!(out)
    }
}

/// `baton bench scenes --judge DIR`: the same figures for storyboards already on disk.
fn judge(dir: &std::path::Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| BadInput(format!("--judge '{}': {e}", d.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut tally = Tally::default();
    writeln!(out, "storyboards under {}:", dir.display())?;
    Tally::header(out)?;
    for file in &files {
        let board: baton_studio::storyboard::Storyboard = match std::fs::read(file)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(board) => board,
            // Other JSON (a manifest, images.json) is not a storyboard.
            Err(_) => continue,
        };
        tally.add(&board.topic, &board, None, out)?;
    }
    if tally.boards == 0 {
        return Err(BadInput(format!(
            "--judge '{}': no storyboard JSON under it",
            dir.display()
        ))
        .into());
    }
    tally.summary(out)?;
    Ok(())
}

pub fn bench_scenes(
    args: &baton::args::BenchScenesArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if let Some(dir) = &args.judge {
        return judge(dir, out);
    }
    let Some(topics) = &args.topics else {
        return Err(BadInput("give --topics FILE or --judge DIR".into()).into());
    };
    if args.scenes == 0 || args.scenes > baton_studio::storyboard::MAX_SCENES {
        return Err(BadInput(format!(
            "--scenes {}: use 1 to {}",
            args.scenes,
            baton_studio::storyboard::MAX_SCENES
        ))
        .into());
    }
    let topics = baton::commands::batch::read_topics(topics)?;
    let (compute, place) = Compute::choose(args.compute)?;
    let path = crate::commands::scenes::scenes_model(&args.model, &compute)?;
    let drafts = args
        .drafts
        .count(compute.kind(), crate::commands::scenes::file_bytes(&path));
    let (_, device) = compute.open()?;
    baton_studio::llm::warm_up(&device)?;
    let mut llm = Llm::load(&path, &device, None)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    writeln!(
        out,
        "{} ({}) {place}: {} topics, {} scenes each, {drafts} draft(s), seed {}, temperature {}, repeat penalty {}",
        path.display(),
        llm.arch,
        topics.len(),
        args.scenes,
        args.seed,
        args.temperature,
        args.repeat_penalty
    )?;
    Tally::header(out)?;
    let sampler = Sampler {
        temperature: args.temperature,
        top_p: 0.9,
        seed: args.seed,
        max_tokens: args.max_tokens,
        repeat_penalty: args.repeat_penalty,
    };
    let mut tally = Tally::default();
    for (i, topic) in topics.iter().enumerate() {
        let started = std::time::Instant::now();
        match generate_storyboard(&mut llm, topic, args.scenes, drafts, &sampler, &mut |_| {}) {
            Ok((board, g)) => {
                tally.add(
                    topic,
                    &board,
                    Some((&g, started.elapsed().as_secs_f64())),
                    out,
                )?;
                if let Some(dir) = &args.out {
                    baton_base::atomic_file::write_atomic(
                        &dir.join(format!("{:02}.json", i + 1)),
                        &serde_json::to_vec_pretty(&board)?,
                    )?;
                }
            }
            Err(e) => tally.failed(topic, &e, out)?,
        }
        out.flush()?;
    }
    tally.summary(out)?;
    Ok(())
}
