//! The images stage: a picture for every scene from a diffusion model (Stable Diffusion 1.5, 2.1,
//! SD-Turbo, SDXL-Turbo, FLUX.1 schnell and dev), in three phases so that only one of its models
//! is on the device at a time.
//!
//! The key design decision: the phases follow the models, not the scenes. The text encoders
//! encode every scene's prompt, one encoder at a time, and are released; the denoiser (a UNet,
//! or Flux's transformer) denoises every scene and is released; the VAE decodes them all. Each phase runs inside a scope guard that proves its memory came
//! back, and records its peak, so the run's peak is the largest phase's, not the sum of the
//! three. Weights load through `baton-weights` (pinned lanes on a GPU). Nothing is written until
//! every image exists; then each PNG is written whole, with its prompt, seed, model and steps in
//! its text chunks, and `3_images/images.json` records the phases.
//!
//! Before anything loads, the plan sizes each phase against the budget (`--max-vram`, or the
//! runner's grant) and chooses how it holds its weights: FLUX's transformer resident, streamed
//! a block at a time from host memory, or quantized (a GGUF file); FLUX's autoencoder decoding
//! whole images or tiles. What fits no way is refused with the plan.

pub mod cards;
pub mod clip_text;
mod dump;
mod error;
pub mod family;
mod flux;
mod flux_net;
mod model;
mod noise;
mod phase;
mod plan;
mod png;
pub mod random;
mod record;
mod sd;
pub mod stage;
pub mod tokenize;
pub mod unet;

pub use crate::dump::Dump;
pub use dump::GivenLatents;

/// The largest absolute difference between two tensors of one shape, as f32: what the tests
/// compare baton's modules with their references by.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
pub use error::ImagesError;
pub use family::{Arch, Family};
pub use model::{EncoderFiles, ImageModel};
pub use noise::gaussian;
pub use png::{decode_png, encode_png};
pub use record::{ImageRecord, ImagesManifest, ImagesOptions, PhaseRecord, Progress, WeightsMode};

use std::path::Path;

use baton_base::format_bytes;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::compute::Compute;
use crate::storyboard::Storyboard;
use phase::{Job, phase, warm_up};
use plan::{choose, plan, render_plan};
use png::{save, scene_png};

/// Draws every scene of the storyboard at `input` into `run_dir/3_images`.
pub fn write_images(
    input: &Path,
    run_dir: &Path,
    model: &ImageModel,
    compute: &Compute,
    options: &ImagesOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ImagesManifest, ImagesError> {
    let fam = model.family;
    let width = options.width.unwrap_or(fam.native);
    let height = options.height.unwrap_or(fam.native);
    for (what, value) in [("--width", width), ("--height", height)] {
        let block = fam.block();
        if value == 0 || value % block != 0 {
            return Err(ImagesError::Size {
                what,
                value,
                block,
                family: fam.name.into(),
                near: (value.div_ceil(block).max(1)) * block,
            });
        }
    }
    let given = options
        .latents
        .as_deref()
        .map(GivenLatents::read)
        .transpose()?;
    let dump = options.dump.as_deref().map(Dump::new).transpose()?;
    let steps = options.steps.unwrap_or(fam.default_steps);
    if !(1..=200).contains(&steps) {
        return Err(ImagesError::Option(format!(
            "--steps {steps}: use 1 to 200"
        )));
    }
    let mut guidance = options.guidance.unwrap_or(fam.default_guidance);
    if !(0.0..=30.0).contains(&guidance) {
        return Err(ImagesError::Option(format!(
            "--guidance {guidance}: use 0 (off) to 30"
        )));
    }
    let mut warnings = Vec::new();
    if let Arch::Flux(fx) = &fam.arch
        && !(fx.transformer)().guidance_embed
        && guidance != 0.0
    {
        let w = format!(
            "{} is distilled to draw without guidance: --guidance {guidance} is ignored",
            fam.name
        );
        progress(Progress::Warning(&w));
        warnings.push(w);
        guidance = 0.0;
    }
    let board = Storyboard::load(input)?;
    if let Some(s) = board
        .scenes
        .iter()
        .find(|s| s.image_prompt.trim().is_empty())
    {
        return Err(ImagesError::EmptyPrompt { scene: s.index });
    }
    if let Some(given) = &given {
        // Checked before anything loads: the latents' shape, and a row for every scene.
        let channels = match fam.arch {
            Arch::Sd(_) => 4,
            Arch::Flux(_) => 16,
        };
        given.scene(
            board.scenes.len().saturating_sub(1),
            (channels, height / 8, width / 8),
        )?;
    }
    let out_dir = run_dir.join("3_images");
    baton_base::run_dir::ensure_writable(&out_dir).map_err(|source| ImagesError::Unwritable {
        path: out_dir.clone(),
        source,
    })?;

    let (backend, device) = compute
        .open()
        .map_err(|e| ImagesError::Option(format!("cannot open the device: {e}")))?;
    let dtype = if device.is_cuda() {
        fam.gpu_dtype()
    } else {
        DType::F32
    };
    // Classifier-free guidance doubles SD's batch; Flux dev takes guidance as an input instead.
    let batch = match fam.arch {
        Arch::Sd(_) if guidance > 1.0 => 2,
        _ => 1,
    };
    let mut plan = plan(model, dtype, width, height, batch, board.scenes.len())?;
    // The budget is the whole process's: on a GPU its CUDA context (held now) and the kernels
    // the warm-up loads (about 256 MiB) come out of it before any phase.
    let overhead = match device.is_cuda() {
        true => backend.process_usage(0, std::process::id()).unwrap_or(0) + (256 << 20),
        false => 0,
    };
    choose(
        &mut plan,
        options.max_vram,
        overhead,
        options.weights,
        fam.name,
    )?;
    let budget = match options.max_vram {
        Some(max) if overhead > 0 => format!(
            "within {} ({} of it this process's CUDA context and kernels)",
            format_bytes(max),
            format_bytes(overhead)
        ),
        Some(max) => format!("within {}", format_bytes(max)),
        None => "no budget given".into(),
    };
    progress(Progress::Plan(&format!(
        "{budget}:\n{}",
        render_plan(&plan)
    )));
    warm_up(fam, &device, dtype)?;
    if let Arch::Flux(fx) = &fam.arch
        && flux::is_gguf(&model.denoiser)
    {
        let tokens = fx.t5_tokens + (width / 16) * (height / 16);
        flux::warm_quantized(&model.denoiser, fx, tokens, &device, dtype)?;
    }
    let job = Job {
        model,
        device: &device,
        dtype,
        width,
        height,
        steps,
        guidance,
        seed: options.seed,
        residence: plan[1].residence.clone(),
        decode_tile: match plan[2].residence {
            plan::Residence::Tiled { tile } => Some(tile),
            _ => None,
        },
        given: given.as_ref(),
        dump: dump.as_ref(),
    };

    // Phase 1: every prompt through each text encoder in turn, then the encoders go.
    progress(Progress::Phase(plan[0].name));
    // What a phase hands to the next waits on the host: a small tensor left on the device would
    // pin the memory pool's block around it, and the phase could not prove its memory back.
    let ((conditioning, truncated), text_phase) =
        phase(plan[0].name, &backend, plan[0].need(), |loads| {
            let (conditioning, cut) = match &fam.arch {
                Arch::Sd(sd) => sd::encode(&job, sd, &board, loads)?,
                Arch::Flux(fx) => flux::encode(&job, fx, &board, loads)?,
            };
            let on_host = conditioning
                .into_iter()
                .map(|c| c.to_device(&Device::Cpu))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((on_host, cut))
        })?;
    if let Some(dump) = &dump {
        dump.write("text")?;
    }
    for (s, cut) in board.scenes.iter().zip(&truncated) {
        if let Some(limit) = cut {
            let w = format!(
                "scene {}'s image_prompt is longer than {limit}; the rest was cut",
                s.index
            );
            progress(Progress::Warning(&w));
            warnings.push(w);
        }
    }

    // Phase 2: every scene denoised, then the denoiser goes.
    progress(Progress::Phase(plan[1].name));
    let ((latents, streamed), mut denoise_phase) =
        phase(plan[1].name, &backend, plan[1].need(), |loads| {
            let mut step = |scene: u32, step: usize, steps: usize| {
                progress(Progress::Step {
                    scene,
                    scenes: board.scenes.len(),
                    step,
                    steps,
                })
            };
            let (latents, streamed) = match &fam.arch {
                Arch::Sd(sd) => (
                    sd::denoise(&job, sd, &board, &conditioning, loads, &mut step)?,
                    0,
                ),
                Arch::Flux(fx) => flux::denoise(&job, fx, &board, &conditioning, loads, &mut step)?,
            };
            let on_host = latents
                .into_iter()
                .map(|(l, secs)| Ok((l.to_device(&Device::Cpu)?, secs)))
                .collect::<Result<Vec<_>, ImagesError>>()?;
            Ok((on_host, streamed))
        })?;
    denoise_phase.streamed_bytes = streamed;
    if let Some(dump) = &dump {
        dump.write("denoise")?;
    }
    drop(conditioning);

    // Phase 3: the VAE decodes them all.
    progress(Progress::Phase(plan[2].name));
    let (pixels, decode_phase) = phase(plan[2].name, &backend, plan[2].need(), |loads| {
        let to_rgb = |image: Tensor| -> Result<Vec<u8>, ImagesError> {
            // image: (1, 3, h, w) in [-1, 1].
            let image = ((image.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
                .round()?
                .to_dtype(DType::U8)?;
            let hwc = image
                .squeeze(0)?
                .permute((1, 2, 0))?
                .to_device(&Device::Cpu)?;
            Ok(hwc.flatten_all()?.to_vec1::<u8>()?)
        };
        let images = match &fam.arch {
            Arch::Sd(sd) => sd::decode(&job, sd, &latents, loads)?,
            Arch::Flux(fx) => flux::decode(&job, fx, &latents, loads)?,
        };
        images
            .into_iter()
            .zip(&board.scenes)
            .map(|(image, s)| {
                job.keep(s.index, "pixels", &image)?;
                to_rgb(image)
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    if let Some(dump) = &dump {
        dump.write("decode")?;
    }

    let model_name = format!("{} ({})", fam.name, model.dir.display());
    let mut images = Vec::new();
    let mut files = Vec::new();
    for ((s, rgb), ((_, secs), cut)) in board
        .scenes
        .iter()
        .zip(&pixels)
        .zip(latents.iter().zip(&truncated))
    {
        let seed = options.seed + s.index as u64;
        let (path, file, png) = scene_png(
            &out_dir,
            s.index,
            rgb,
            width,
            height,
            &[
                ("prompt", s.image_prompt.as_str()),
                ("seed", &seed.to_string()),
                ("model", &model_name),
                ("steps", &steps.to_string()),
                ("guidance", &guidance.to_string()),
                ("software", "baton"),
            ],
        )?;
        files.push((path, png));
        images.push(ImageRecord {
            scene: s.index,
            file,
            seed,
            kind: "generated",
            prompt_truncated: cut.is_some(),
            seconds: *secs,
        });
    }
    let mut phases = vec![text_phase, denoise_phase, decode_phase];
    for (record, planned) in phases.iter_mut().zip(&plan) {
        record.residence = planned.residence.describe();
    }
    let base = phases[0].baseline_bytes;
    let manifest = ImagesManifest {
        model: model_name,
        family: fam.name.into(),
        device: backend.kind().to_string(),
        dtype: format!("{dtype:?}").to_lowercase(),
        width,
        height,
        steps,
        guidance,
        seed: options.seed,
        peak_bytes: phases
            .iter()
            .map(|p| p.peak_bytes.saturating_sub(base))
            .max()
            .unwrap_or(0),
        phases,
        images,
        warnings,
    };
    save(&out_dir, &files, &manifest)?;
    Ok(manifest)
}

/// Storyboard cards for every scene, in place of generated images: `3_images/scene_NN.png`
/// (each saying it is a card, in its pixels and its text chunks) and `images.json` with every
/// image's kind "card".
pub fn write_cards(
    input: &Path,
    run_dir: &Path,
    width: usize,
    height: usize,
    why: &str,
) -> Result<ImagesManifest, ImagesError> {
    for (what, value) in [("--width", width), ("--height", height)] {
        if !(64..=4096).contains(&value) {
            return Err(ImagesError::Option(format!(
                "{what} {value}: cards are 64 to 4096 pixels"
            )));
        }
    }
    let board = Storyboard::load(input)?;
    let out_dir = run_dir.join("3_images");
    std::fs::create_dir_all(&out_dir).map_err(|source| ImagesError::Unwritable {
        path: out_dir.clone(),
        source,
    })?;
    let mut files = Vec::new();
    let mut images = Vec::new();
    for s in &board.scenes {
        let started = Instant::now();
        let rgb = cards::render(&board, s, width, height);
        let (path, file, png) = scene_png(
            &out_dir,
            s.index,
            &rgb,
            width,
            height,
            &[
                ("kind", "storyboard card, not a generated image"),
                ("title", s.title.as_str()),
                ("narration", s.narration.as_str()),
                ("prompt", s.image_prompt.as_str()),
                ("software", "baton"),
            ],
        )?;
        files.push((path, png));
        images.push(ImageRecord {
            scene: s.index,
            file,
            seed: 0,
            kind: "card",
            prompt_truncated: false,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let manifest = ImagesManifest {
        model: "none: storyboard cards".into(),
        family: String::new(),
        device: "cpu".into(),
        dtype: String::new(),
        width,
        height,
        steps: 0,
        guidance: 0.0,
        seed: 0,
        phases: Vec::new(),
        images,
        peak_bytes: 0,
        warnings: vec![format!(
            "no image model ({why}): storyboard cards were rendered instead"
        )],
    };
    save(&out_dir, &files, &manifest)?;
    Ok(manifest)
}
