//! `baton images`: a picture for every scene, or storyboard cards when there is no model.

use std::io::{IsTerminal, Write};

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
use baton_studio::compute::Compute;

use crate::fetch::from_hub;

pub fn images(args: &baton::args::ImagesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_studio::images::{ImageModel, ImagesError, ImagesOptions, write_cards};
    // Refuse a bad scenes file before looking for a model or loading anything.
    baton_studio::storyboard::Storyboard::load(&args.input).map_err(ImagesError::from)?;
    let run_dir = baton_studio::storyboard::run_dir_of(&args.input, args.run_dir.as_deref());
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
    let (compute, where_) = Compute::choose(args.compute)?;
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
pub(crate) fn draw(
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
