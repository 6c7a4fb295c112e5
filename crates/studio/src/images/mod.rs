//! The images stage: a picture for every scene from a Stable Diffusion model, in three phases so
//! that only one of its models is on the device at a time.
//!
//! The key design decision: the phases follow the models, not the scenes. The text encoder
//! encodes every scene's prompt and is released; the UNet denoises every scene and is released;
//! the VAE decodes them all. Each phase runs inside a scope guard that proves its memory came
//! back, and records its peak, so the run's peak is the largest phase's, not the sum of the
//! three. Weights load through `baton-weights` (pinned lanes on a GPU). Nothing is written until
//! every image exists; then each PNG is written whole, with its prompt, seed, model and steps in
//! its text chunks, and `3_images/images.json` records the phases.

pub mod cards;
pub mod random;
pub mod sd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use baton_memory::atomic_file::write_atomic;
use baton_memory::peak::PeakWatch;
use baton_memory::{MemoryBackend, MemoryScope, format_bytes};
use baton_weights::{LoadOptions, load_safetensors};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_transformers::models::stable_diffusion::{clip, unet_2d, vae};
use serde::Serialize;

use crate::scenes::Compute;
use crate::storyboard::{Storyboard, StoryboardError};
pub use sd::Family;

/// Why the images stage could not run; messages name the value and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagesError {
    #[error(transparent)]
    Storyboard(#[from] StoryboardError),
    #[error(
        "unknown image model '{name}'; use a diffusers folder (--model DIR --family F) or one of: {known}"
    )]
    UnknownModel { name: String, known: String },
    #[error(
        "no image model: {why}. Pass --model DIR with a diffusers folder of a {family} model, or --cards for storyboard cards"
    )]
    NoModel { why: String, family: String },
    #[error("the model folder '{}' lacks {what}; a diffusers folder has text_encoder/, unet/, vae/ and tokenizer/", .dir.display())]
    Incomplete { dir: PathBuf, what: String },
    #[error("{what} {value} is not a multiple of {block} ({family}'s block size); use e.g. {near}")]
    Size {
        what: &'static str,
        value: usize,
        block: usize,
        family: String,
        near: usize,
    },
    #[error("scene {scene} has an empty image_prompt; write one in the scenes file")]
    EmptyPrompt { scene: u32 },
    #[error(
        "the phased plan needs {need} in its largest phase ({phase}) but --max-vram is {max}:\n{plan}"
    )]
    MaxVram {
        need: String,
        phase: String,
        max: String,
        plan: String,
    },
    #[error("{0}")]
    Option(String),
    #[error("cannot write into '{}': {source}", .path.display())]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Weights(#[from] baton_weights::WeightsError),
    #[error("the model failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Memory(#[from] baton_memory::MemoryError),
    #[error("cannot encode scene {scene}'s PNG: {why}")]
    Png { scene: u32, why: String },
}

impl ImagesError {
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImagesError::Storyboard(_)
                | ImagesError::UnknownModel { .. }
                | ImagesError::Incomplete { .. }
                | ImagesError::Size { .. }
                | ImagesError::EmptyPrompt { .. }
                | ImagesError::MaxVram { .. }
                | ImagesError::Option(_)
                | ImagesError::Unwritable { .. }
        )
    }
}

/// A model on disk: its family and the four parts of a diffusers folder.
#[derive(Debug, Clone)]
pub struct ImageModel {
    pub family: &'static Family,
    pub dir: PathBuf,
    pub text_encoder: PathBuf,
    pub unet: PathBuf,
    pub vae: PathBuf,
    pub tokenizer: PathBuf,
}

impl ImageModel {
    /// `spec` is a diffusers folder (of `family`, default sd-turbo) or a family name, found in
    /// the Hugging Face cache.
    pub fn resolve(spec: &str, family: Option<&str>) -> Result<ImageModel, ImagesError> {
        let known = || {
            sd::FAMILIES
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let family_of = |name: &str| {
            sd::family(name).ok_or_else(|| ImagesError::UnknownModel {
                name: name.to_string(),
                known: known(),
            })
        };
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::in_dir(path, family_of(family.unwrap_or("sd-turbo"))?);
        }
        if spec.contains('/') || spec.starts_with('.') {
            return Err(ImagesError::NoModel {
                why: format!("'{spec}' is not a folder"),
                family: family.unwrap_or("sd-turbo").into(),
            });
        }
        let fam = family_of(spec)?;
        let hub = std::env::var_os("HF_HOME")
            .map(|h| PathBuf::from(h).join("hub"))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
            })
            .unwrap_or_default();
        let snapshots = hub
            .join(format!("models--{}", fam.repo.replace('/', "--")))
            .join("snapshots");
        let found = std::fs::read_dir(&snapshots).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("unet").is_dir())
        });
        match found {
            Some(dir) => Self::in_dir(&dir, fam),
            None => Err(ImagesError::NoModel {
                why: format!(
                    "{} ({}) is not in the Hugging Face cache at {}, and baton does not download it",
                    fam.name,
                    fam.repo,
                    snapshots.display()
                ),
                family: fam.name.into(),
            }),
        }
    }

    pub(crate) fn in_dir(dir: &Path, family: &'static Family) -> Result<ImageModel, ImagesError> {
        let pick = |what: &str, names: &[&str]| {
            names
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| ImagesError::Incomplete {
                    dir: dir.to_path_buf(),
                    what: format!("{what} ({})", names.join(" or ")),
                })
        };
        Ok(ImageModel {
            family,
            dir: dir.to_path_buf(),
            text_encoder: pick(
                "a text encoder",
                &[
                    "text_encoder/model.safetensors",
                    "text_encoder/model.fp16.safetensors",
                ],
            )?,
            unet: pick(
                "a UNet",
                &[
                    "unet/diffusion_pytorch_model.safetensors",
                    "unet/diffusion_pytorch_model.fp16.safetensors",
                ],
            )?,
            vae: pick(
                "a VAE",
                &[
                    "vae/diffusion_pytorch_model.safetensors",
                    "vae/diffusion_pytorch_model.fp16.safetensors",
                ],
            )?,
            tokenizer: pick("a tokenizer", &["tokenizer/tokenizer.json"])?,
        })
    }
}

/// What to draw and how.
#[derive(Debug, Clone)]
pub struct ImagesOptions {
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub seed: u64,
    /// Refuse a plan whose largest phase needs more than this many bytes.
    pub max_vram: Option<u64>,
}

/// One phase as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub name: String,
    pub weights_bytes: u64,
    pub load_seconds: f64,
    pub load_gb_per_second: f64,
    pub seconds: f64,
    /// This process's memory on the device when the phase began, and at its highest.
    pub baseline_bytes: u64,
    pub peak_bytes: u64,
    /// The planned need (weights + activations) that --max-vram is checked against.
    pub planned_bytes: u64,
    /// The scope guard's verdict on the memory coming back.
    pub reclaim: String,
    pub leaked: bool,
}

/// One image as written.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    pub scene: u32,
    pub file: String,
    pub seed: u64,
    /// "generated"; storyboard cards would say "card".
    pub kind: &'static str,
    pub prompt_truncated: bool,
    pub seconds: f64,
}

/// `3_images/images.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ImagesManifest {
    pub model: String,
    pub family: String,
    pub device: String,
    pub dtype: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub phases: Vec<PhaseRecord>,
    pub images: Vec<ImageRecord>,
    /// The highest of the phases' peaks, above the baseline of the first.
    pub peak_bytes: u64,
    pub warnings: Vec<String>,
}

/// What the stage reports while it works.
pub enum Progress<'a> {
    Phase(&'a str),
    Step {
        scene: u32,
        scenes: usize,
        step: usize,
        steps: usize,
    },
    Warning(&'a str),
}

/// CLIP's context: prompts longer than this many tokens are cut.
const MAX_TOKENS: usize = 77;
/// SD's latent scale.
const LATENT_SCALE: f64 = 0.18215;

/// Weights bytes of a safetensors file once converted to `dtype`.
fn weights_bytes(path: &Path, dtype: DType) -> Result<u64, ImagesError> {
    let header = baton_weights::Header::read(path)?;
    Ok(header
        .tensors
        .iter()
        .map(|t| {
            let n: u64 = t.shape.iter().map(|d| *d as u64).product();
            n * if t.dtype.is_float() {
                dtype.size_in_bytes()
            } else {
                t.dtype.size_in_bytes()
            } as u64
        })
        .sum())
}

/// The plan: each phase's weights plus an estimate of its activations (measured on an H100
/// at 512x512 f16 and scaled by pixels; see docs/images.md).
fn plan(
    model: &ImageModel,
    dtype: DType,
    width: usize,
    height: usize,
    batch: usize,
) -> Result<Vec<(String, u64, u64)>, ImagesError> {
    let pixels = (width * height) as u64;
    let scale = |at_512: u64| at_512 * pixels / (512 * 512) * dtype.size_in_bytes() as u64 / 2;
    Ok(vec![
        (
            "text encoder".into(),
            weights_bytes(&model.text_encoder, dtype)?,
            64 << 20,
        ),
        (
            "unet".into(),
            weights_bytes(&model.unet, dtype)?,
            scale(768 << 20) * batch as u64,
        ),
        (
            "vae".into(),
            weights_bytes(&model.vae, dtype)?,
            scale(2560 << 20),
        ),
    ])
}

fn render_plan(plan: &[(String, u64, u64)]) -> String {
    plan.iter()
        .map(|(name, w, a)| {
            format!(
                "  {name:<13} weights {:>10} + activations ~{:>10} = {:>10}",
                format_bytes(*w),
                format_bytes(*a),
                format_bytes(w + a)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `work` as one phase: scope guard, peak watch, weights load timing.
fn phase<T>(
    name: &str,
    backend: &Arc<dyn MemoryBackend>,
    planned_bytes: u64,
    work: impl FnOnce() -> Result<(T, u64, f64), ImagesError>,
) -> Result<(T, PhaseRecord), ImagesError> {
    backend.trim()?;
    let baseline = backend.process_usage(0, std::process::id()).unwrap_or(0);
    let scope = MemoryScope::new(backend.clone(), 0, name)?.with_tolerance(64 << 20);
    let watch = PeakWatch::start(backend.clone(), 0);
    let started = Instant::now();
    let outcome = work();
    let seconds = started.elapsed().as_secs_f64();
    let last = backend.process_usage(0, std::process::id()).unwrap_or(0);
    let peak = watch.finish(last);
    backend.trim()?;
    let report = scope.finish()?;
    let (value, weights_bytes, load_seconds) = outcome?;
    Ok((
        value,
        PhaseRecord {
            name: name.into(),
            weights_bytes,
            load_seconds,
            load_gb_per_second: weights_bytes as f64 / load_seconds.max(1e-9) / 1e9,
            seconds,
            baseline_bytes: baseline,
            peak_bytes: peak,
            planned_bytes,
            leaked: report.is_leak(),
            reclaim: report.to_string(),
        },
    ))
}

fn load(
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(candle_nn::VarBuilder<'static>, u64, f64), ImagesError> {
    let options = LoadOptions {
        dtype: Some(dtype),
        ..LoadOptions::default()
    };
    let loaded = load_safetensors(path, device, &options)?;
    let (bytes, seconds) = (loaded.report.bytes, loaded.report.seconds);
    Ok((loaded.var_builder(dtype, device), bytes, seconds))
}

/// Token ids for a prompt: start, the prompt (cut to fit), end, padding; and whether it was cut.
fn tokens(
    tokenizer: &tokenizers::Tokenizer,
    prompt: &str,
    pad_with: Option<&str>,
) -> Result<(Vec<u32>, bool), ImagesError> {
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| ImagesError::Tokenizer(format!("it has no '{t}' token")))
    };
    let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
    let pad = match pad_with {
        Some(p) => id(p)?,
        None => eos,
    };
    let body = tokenizer
        .encode(prompt, false)
        .map_err(|e| ImagesError::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec();
    let room = MAX_TOKENS - 2;
    let truncated = body.len() > room;
    let mut ids = vec![bos];
    ids.extend(body.into_iter().take(room));
    ids.push(eos);
    ids.resize(MAX_TOKENS, pad);
    Ok((ids, truncated))
}

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
    let steps = options.steps.unwrap_or(fam.default_steps);
    if !(1..=200).contains(&steps) {
        return Err(ImagesError::Option(format!(
            "--steps {steps}: use 1 to 200"
        )));
    }
    let guidance = options.guidance.unwrap_or(fam.default_guidance);
    if !(0.0..=30.0).contains(&guidance) {
        return Err(ImagesError::Option(format!(
            "--guidance {guidance}: use 0 (off) to 30"
        )));
    }
    let board = Storyboard::load(input)?;
    if let Some(s) = board
        .scenes
        .iter()
        .find(|s| s.image_prompt.trim().is_empty())
    {
        return Err(ImagesError::EmptyPrompt { scene: s.index });
    }
    let out_dir = run_dir.join("3_images");
    let unwritable = |source| ImagesError::Unwritable {
        path: out_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&out_dir).map_err(unwritable)?;
    let probe = out_dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(unwritable)?;
    let _ = std::fs::remove_file(&probe);

    let (backend, device) = compute
        .open()
        .map_err(|e| ImagesError::Option(format!("cannot open the device: {e}")))?;
    let dtype = if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    };
    let cfg_on = guidance > 1.0;
    let batch = if cfg_on { 2 } else { 1 };
    let plan = plan(model, dtype, width, height, batch)?;
    if let Some(max) = options.max_vram {
        let (phase_name, w, a) = plan
            .iter()
            .max_by_key(|(_, w, a)| w + a)
            .expect("three phases");
        if w + a > max {
            return Err(ImagesError::MaxVram {
                need: format_bytes(w + a),
                phase: phase_name.clone(),
                max: format_bytes(max),
                plan: render_plan(&plan),
            });
        }
    }
    crate::llm::warm_up(&device).map_err(|e| ImagesError::Option(e.to_string()))?;
    let mut warnings = Vec::new();

    // Phase 1: every prompt through the text encoder, then the encoder goes.
    progress(Progress::Phase("text encoder"));
    let tokenizer = tokenizers::Tokenizer::from_file(&model.tokenizer)
        .map_err(|e| ImagesError::Tokenizer(format!("'{}': {e}", model.tokenizer.display())))?;
    let clip_cfg = (fam.clip)();
    let mut truncated = Vec::new();
    let mut token_rows = Vec::new();
    for s in &board.scenes {
        let (ids, cut) = tokens(&tokenizer, &s.image_prompt, clip_cfg.pad_with.as_deref())?;
        if cut {
            let w = format!(
                "scene {}'s image_prompt is longer than the text encoder's {MAX_TOKENS} tokens; the rest was cut",
                s.index
            );
            progress(Progress::Warning(&w));
            warnings.push(w);
        }
        truncated.push(cut);
        token_rows.push(ids);
    }
    let (uncond_ids, _) = tokens(&tokenizer, "", clip_cfg.pad_with.as_deref())?;
    let (embeddings, text_phase) = phase("text encoder", &backend, plan[0].1 + plan[0].2, || {
        let (vb, bytes, secs) = load(&model.text_encoder, &device, dtype)?;
        let encoder = clip::ClipTextTransformer::new(vb, &clip_cfg)?;
        let encode = |ids: &[u32]| -> Result<Tensor, ImagesError> {
            let t = Tensor::new(ids, &device)?.unsqueeze(0)?;
            Ok(encoder.forward(&t)?)
        };
        let uncond = if cfg_on {
            Some(encode(&uncond_ids)?)
        } else {
            None
        };
        let mut all = Vec::new();
        for ids in &token_rows {
            let text = encode(ids)?;
            all.push(match &uncond {
                Some(u) => Tensor::cat(&[u, &text], 0)?,
                None => text,
            });
        }
        device.synchronize()?;
        Ok((all, bytes, secs))
    })?;

    // Phase 2: every scene denoised by the UNet, then the UNet goes.
    progress(Progress::Phase("unet"));
    let (latent_h, latent_w) = (height / 8, width / 8);
    let (latents, unet_phase) = phase("unet", &backend, plan[1].1 + plan[1].2, || {
        let (vb, bytes, secs) = load(&model.unet, &device, dtype)?;
        let unet = unet_2d::UNet2DConditionModel::new(vb, 4, 4, false, (fam.unet)())?;
        let mut out = Vec::new();
        for (s, emb) in board.scenes.iter().zip(&embeddings) {
            let started = Instant::now();
            let seed = options.seed + s.index as u64;
            // The starting noise comes from baton's own seeded generator, so it is the same on
            // every device; a GPU's generator is seeded too, for ancestral schedulers' steps
            // (candle cannot seed the CPU's, so those add unseeded noise there).
            let _ = device.set_seed(seed);
            let mut scheduler = (fam.scheduler)().build(steps)?;
            let noise = gaussian(4 * latent_h * latent_w, seed);
            let mut latents = (Tensor::from_vec(noise, (1, 4, latent_h, latent_w), &device)?
                * scheduler.init_noise_sigma())?
            .to_dtype(dtype)?;
            let timesteps = scheduler.timesteps().to_vec();
            for (i, &t) in timesteps.iter().enumerate() {
                let input = if cfg_on {
                    Tensor::cat(&[&latents, &latents], 0)?
                } else {
                    latents.clone()
                };
                let input = scheduler.scale_model_input(input, t)?;
                let noise = unet.forward(&input, t as f64, emb)?;
                let noise = if cfg_on {
                    let parts = noise.chunk(2, 0)?;
                    (&parts[0] + ((&parts[1] - &parts[0])? * guidance)?)?
                } else {
                    noise
                };
                latents = scheduler.step(&noise, t, &latents)?;
                progress(Progress::Step {
                    scene: s.index,
                    scenes: board.scenes.len(),
                    step: i + 1,
                    steps: timesteps.len(),
                });
            }
            device.synchronize()?;
            out.push((latents, started.elapsed().as_secs_f64()));
        }
        Ok((out, bytes, secs))
    })?;
    drop(embeddings);

    // Phase 3: the VAE decodes them all.
    progress(Progress::Phase("vae"));
    let (pixels, vae_phase) = phase("vae", &backend, plan[2].1 + plan[2].2, || {
        let (vb, bytes, secs) = load(&model.vae, &device, dtype)?;
        let vae = vae::AutoEncoderKL::new(vb, 3, 3, (fam.vae)())?;
        let mut out = Vec::new();
        for (latents, _) in &latents {
            let image = vae.decode(&(latents / LATENT_SCALE)?)?;
            let image = ((image / 2.)? + 0.5)?.clamp(0f32, 1f32)?;
            let image = (image.to_dtype(DType::F32)? * 255.)?
                .round()?
                .to_dtype(DType::U8)?;
            let hwc = image.i(0)?.permute((1, 2, 0))?.to_device(&Device::Cpu)?;
            out.push(hwc.flatten_all()?.to_vec1::<u8>()?);
        }
        Ok((out, bytes, secs))
    })?;

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
            prompt_truncated: *cut,
            seconds: *secs,
        });
    }
    let phases = vec![text_phase, unet_phase, vae_phase];
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

/// Scene `scene`'s picture as a PNG: where it goes, its name in the run folder, its bytes.
fn scene_png(
    out_dir: &Path,
    scene: u32,
    rgb: &[u8],
    width: usize,
    height: usize,
    text: &[(&str, &str)],
) -> Result<(PathBuf, String, Vec<u8>), ImagesError> {
    let png =
        encode_png(rgb, width, height, text).map_err(|why| ImagesError::Png { scene, why })?;
    let name = format!("scene_{scene:02}.png");
    Ok((out_dir.join(&name), format!("3_images/{name}"), png))
}

/// Writes every image, each whole, then `images.json`.
fn save(
    out_dir: &Path,
    files: &[(PathBuf, Vec<u8>)],
    manifest: &ImagesManifest,
) -> Result<(), ImagesError> {
    for (path, bytes) in files {
        write_atomic(path, bytes)?;
    }
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serializes");
    write_atomic(&out_dir.join("images.json"), &json)?;
    Ok(())
}

/// `n` standard normal samples from `seed` (xorshift64* and Box-Muller): the same on any machine.
pub fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u, v) = (uniform(), uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let a = std::f64::consts::TAU * v;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// An 8-bit RGB PNG with `text` as iTXt chunks (prompts are any language).
pub fn encode_png(
    rgb: &[u8],
    width: usize,
    height: usize,
    text: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            encoder
                .add_itxt_chunk(key.to_string(), value.to_string())
                .map_err(|e| e.to_string())?;
        }
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
