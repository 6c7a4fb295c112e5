//! `baton images`: a picture for every scene, or storyboard cards when there is no model, shown
//! as the images stage says it: a progress bar per image on a terminal, protocol lines as a
//! stage of a run, then the phases' table.

use std::io::{IsTerminal, Write};

use baton_base::format_bytes;
use baton_base::protocol::StageLine;
use baton_studio::images::stage::{ImagesEvent, ImagesOutcome, ImagesRequest, run_images};
use baton_studio::images::{ImageModel, ImagesManifest, ImagesOptions, Progress};

use crate::fetch::{from_hub, unwritable};

pub fn images(args: &baton::args::ImagesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let run_dir = baton_studio::storyboard::run_dir_of(&args.input, args.run_dir.as_deref());
    let request = ImagesRequest {
        input: &args.input,
        run_dir: &run_dir,
        model: &args.model,
        family: args.family.as_deref(),
        transformer: args.transformer.as_deref(),
        options: ImagesOptions {
            width: args.width.or(args.size.map(|(w, _)| w)),
            height: args.height.or(args.size.map(|(_, h)| h)),
            steps: args.steps,
            guidance: args.guidance,
            seed: args.seed,
            max_vram: match (args.max_vram, args.compute) {
                (Some(max), _) => Some(max),
                // As a stage on a GPU: the budget the runner granted.
                (None, baton_memory::DeviceChoice::Cpu) => None,
                (None, _) => crate::commands::granted_budget()?,
            },
            weights: args.weights.parse().map_err(baton::BadInput)?,
            latents: args.latents.clone(),
            dump: args.dump.clone(),
        },
        compute: args.compute,
        cards: args.cards,
        cards_if_no_model: args.cards_if_no_model,
    };
    // As a stage of a run (a run folder given), the runner reads the protocol lines.
    let stage = args.run_dir.is_some();
    let out = std::cell::RefCell::new(out);
    let mut fetch = || {
        from_hub(&args.model, &mut **out.borrow_mut(), |hub, progress| {
            ImageModel::fetch(&args.model, hub, progress)
        })
        .map_err(|e| baton_studio::images::ImagesError::File(unwritable(e)))?
    };
    let mut view = DrawingView::new(&args.input, stage);
    let outcome = run_images(
        &request,
        args.fetch.then_some(&mut fetch as &mut dyn FnMut() -> _),
        &mut |event| view.event(event, &mut **out.borrow_mut()),
    );
    let out = out.into_inner();
    view.finish(out)?;
    match outcome? {
        ImagesOutcome::Drawn(manifest) => print_manifest(&manifest, &run_dir, stage, out),
        ImagesOutcome::Cards { manifest, .. } => {
            writeln!(
                out,
                "{} storyboard cards {}x{} in {} (cards, not generated images)",
                manifest.images.len(),
                manifest.width,
                manifest.height,
                run_dir.join("3_images").display()
            )?;
            Ok(())
        }
    }
}

/// What the images stage's events look like: a bar per image on a terminal, the stage's
/// protocol lines when it runs as a stage of a run.
pub(crate) struct DrawingView {
    input: String,
    bar: Option<indicatif::ProgressBar>,
    stage: bool,
    /// Protocol lines, written once drawing ends (the bar owns the terminal until then).
    lines: Vec<String>,
    failed: Option<std::io::Error>,
}

impl DrawingView {
    pub(crate) fn new(input: &std::path::Path, stage: bool) -> DrawingView {
        let bar = (!stage && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} steps {elapsed}",
                )
                .expect("valid template"),
            );
            bar
        });
        DrawingView {
            input: input.display().to_string(),
            bar,
            stage,
            lines: Vec::new(),
            failed: None,
        }
    }

    pub(crate) fn event(&mut self, event: ImagesEvent, out: &mut dyn Write) {
        let written = match event {
            ImagesEvent::Drawing { family, dir, place } => {
                writeln!(
                    out,
                    "drawing {} with {family} ({}) {place}",
                    self.input,
                    dir.display()
                )
            }
            ImagesEvent::NoModel { why } => {
                let banner = format!(
                    "!!! NO IMAGE MODEL: {why}.\n!!! Rendering STORYBOARD CARDS (title and narration on a plain frame), NOT generated images.\n!!! For pictures, run `baton models fetch sd-turbo` (or another family), or pass --model DIR."
                );
                eprintln!("{banner}");
                writeln!(out, "{banner}").and_then(|()| {
                    if self.stage {
                        // As a stage: the runner repeats this in its own output and keeps it
                        // in run.json.
                        writeln!(
                            out,
                            "{}",
                            StageLine::warn(format!(
                                "NO IMAGE MODEL ({why}): 3_images/ holds STORYBOARD CARDS, not generated images"
                            ))
                        )
                    } else {
                        Ok(())
                    }
                })
            }
            ImagesEvent::Progress(Progress::Plan(plan)) => {
                writeln!(out, "plan {plan}")
            }
            ImagesEvent::Progress(Progress::Phase(name)) => {
                self.lines.push(format!("phase: {name}"));
                Ok(())
            }
            ImagesEvent::Progress(Progress::Warning(w)) => {
                match &self.bar {
                    Some(bar) => bar.suspend(|| eprintln!("warning: {w}")),
                    None => eprintln!("warning: {w}"),
                }
                Ok(())
            }
            ImagesEvent::Progress(Progress::Step {
                scene,
                scenes,
                step,
                steps,
            }) => {
                if let Some(bar) = &self.bar {
                    bar.set_length(steps as u64);
                    bar.set_message(format!("scene {scene}"));
                    bar.set_position(step as u64);
                } else if self.stage && step == steps {
                    self.lines.push(
                        StageLine::progress(
                            scene as u64,
                            scenes as u64,
                            format!("drew scene {scene}"),
                        )
                        .to_string(),
                    );
                }
                Ok(())
            }
        };
        if let Err(e) = written {
            self.failed.get_or_insert(e);
        }
    }

    /// Clears the bar and writes the protocol lines gathered while drawing.
    pub(crate) fn finish(self, out: &mut dyn Write) -> anyhow::Result<()> {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        for line in self.lines.iter().filter(|l| l.starts_with("baton:")) {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

/// The phases' table and every image, from `images.json`'s record.
pub(crate) fn print_manifest(
    manifest: &ImagesManifest,
    run_dir: &std::path::Path,
    stage: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
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
