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

pub mod cards;
pub mod family;
mod flux;
pub mod random;
mod sd;
pub mod tokenize;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use baton_base::atomic_file::write_atomic;
use baton_base::format_bytes;
use baton_memory::peak::PeakWatch;
use baton_memory::{MemoryBackend, MemoryScope};
use baton_weights::LoadOptions;
use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Serialize;

use crate::scenes::Compute;
use crate::storyboard::{Storyboard, StoryboardError};
pub use family::{Arch, Family};
use tokenize::TokenizerFiles;

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
    #[error("the model folder '{}' lacks {what}; {layout}", .dir.display())]
    Incomplete {
        dir: PathBuf,
        what: String,
        layout: &'static str,
    },
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
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
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
    #[error(transparent)]
    File(#[from] baton_base::FileError),
    #[error("cannot encode scene {scene}'s PNG: {why}")]
    Png { scene: u32, why: String },
}

impl baton_base::fault::Classify for ImagesError {
    /// What the user named (the scenes file, the model, sizes, options, the output folder)
    /// is the input's; a model that is not on this machine, and what fails while drawing, the
    /// machine's.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            ImagesError::Storyboard(_)
            | ImagesError::UnknownModel { .. }
            | ImagesError::Incomplete { .. }
            | ImagesError::Size { .. }
            | ImagesError::EmptyPrompt { .. }
            | ImagesError::MaxVram { .. }
            | ImagesError::Option(_)
            | ImagesError::Unwritable { .. } => Fault::Input,
            ImagesError::Hub(e) => e.fault(),
            ImagesError::Weights(e) => e.fault(),
            ImagesError::Memory(e) => e.fault(),
            ImagesError::File(e) => e.fault(),
            ImagesError::NoModel { .. }
            | ImagesError::Tokenizer(_)
            | ImagesError::Candle(_)
            | ImagesError::Png { .. } => Fault::Machine,
        }
    }
}

/// A text encoder on disk: its weights (one file, or a checkpoint's shards), its tokenizer and,
/// for T5, its config.json.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub weights: Vec<PathBuf>,
    pub tokenizer: TokenizerFiles,
    pub config: Option<PathBuf>,
}

/// A model on disk: its family, its text encoders, its denoiser and its decoder.
#[derive(Debug, Clone)]
pub struct ImageModel {
    pub family: &'static Family,
    pub dir: PathBuf,
    pub encoders: Vec<EncoderFiles>,
    pub denoiser: PathBuf,
    pub decoder: PathBuf,
}

const SD_LAYOUT: &str = "a diffusers folder has text_encoder/, tokenizer/ (and text_encoder_2/, \
    tokenizer_2/ for SDXL), unet/ and vae/";
const FLUX_LAYOUT: &str = "a FLUX.1 folder has flux1-*.safetensors, ae.safetensors, \
    text_encoder/ (CLIP-L), tokenizer/, text_encoder_2/ (T5, with config.json) and tokenizer_2/";

impl ImageModel {
    /// `spec` is a model folder (of `family`, default sd-turbo) or a family name, found in the
    /// Hugging Face cache.
    pub fn resolve(spec: &str, family: Option<&str>) -> Result<ImageModel, ImagesError> {
        let family_of = |name: &str| {
            family::find(name).ok_or_else(|| ImagesError::UnknownModel {
                name: name.to_string(),
                known: family::names(),
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
        let snapshots = crate::hub::repo_dir(&crate::hub::cache_dir(), fam.repo).join("snapshots");
        let marker = match &fam.arch {
            Arch::Sd(_) => "unet",
            Arch::Flux(f) => f.transformer_file,
        };
        let found = std::fs::read_dir(&snapshots).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join(marker).exists())
        });
        match found {
            Some(dir) => Self::in_dir(&dir, fam),
            None => Err(ImagesError::NoModel {
                why: format!(
                    "{} ({}) is not in the Hugging Face cache at {}; `baton models fetch {}` (or --fetch) downloads it",
                    fam.name,
                    fam.repo,
                    snapshots.display(),
                    fam.name
                ),
                family: fam.name.into(),
            }),
        }
    }

    /// Downloads family `name`'s files from the hub into its cache (what is there already is
    /// kept) and returns the model. `progress(file, done, total)` follows each download.
    pub fn fetch(
        name: &str,
        hub: &crate::hub::Hub,
        progress: &mut dyn FnMut(&str, u64, Option<u64>),
    ) -> Result<ImageModel, ImagesError> {
        use crate::hub::HubError;
        let fam = family::find(name)
            .filter(|f| !f.repo.is_empty())
            .ok_or_else(|| ImagesError::UnknownModel {
                name: name.to_string(),
                known: family::FAMILIES
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut get =
            |path: &str| hub.fetch(fam.repo, "main", path, &mut |d, t| progress(path, d, t));
        let mut snapshot = None;
        let mut files = fam.hub_files();
        if let Arch::Flux(_) = fam.arch {
            // T5's shards, as its index names them (or one file, for a repository without one).
            match get("text_encoder_2/model.safetensors.index.json") {
                Ok(index) => {
                    let shards =
                        crate::hub::shards_in_index(&index).map_err(ImagesError::Option)?;
                    files.extend(
                        shards
                            .into_iter()
                            .map(|s| vec![format!("text_encoder_2/{s}")]),
                    );
                }
                Err(HubError::NotFound { .. }) => {
                    files.push(vec!["text_encoder_2/model.safetensors".into()]);
                }
                Err(e) => return Err(e.into()),
            }
        }
        for alternatives in &files {
            let mut found = None;
            for (i, path) in alternatives.iter().enumerate() {
                match get(path) {
                    Ok(local) => {
                        found = Some((local, path));
                        break;
                    }
                    Err(HubError::NotFound { .. }) if i + 1 < alternatives.len() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let (local, path) = found.expect("the last alternative returns or errs");
            // The snapshot folder: the local file less the path it has in the repository.
            let mut dir = local.clone();
            for _ in path.split('/') {
                dir.pop();
            }
            snapshot = Some(dir);
        }
        Self::in_dir(&snapshot.expect("every family has files"), fam)
    }

    pub(crate) fn in_dir(dir: &Path, family: &'static Family) -> Result<ImageModel, ImagesError> {
        let layout = match family.arch {
            Arch::Sd(_) => SD_LAYOUT,
            Arch::Flux(_) => FLUX_LAYOUT,
        };
        let missing = |what: String| ImagesError::Incomplete {
            dir: dir.to_path_buf(),
            what,
            layout,
        };
        let pick = |what: &str, names: &[&str]| {
            names
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| missing(format!("{what} ({})", names.join(" or "))))
        };
        let tokenizer = |sub: &str| {
            TokenizerFiles::find(&dir.join(sub)).ok_or_else(|| {
                missing(format!(
                    "a tokenizer ({sub}/tokenizer.json, or {sub}/vocab.json and {sub}/merges.txt)"
                ))
            })
        };
        let clip = |suffix: &str| -> Result<EncoderFiles, ImagesError> {
            let te = format!("text_encoder{suffix}");
            Ok(EncoderFiles {
                weights: vec![pick(
                    "a text encoder",
                    &[
                        &format!("{te}/model.safetensors"),
                        &format!("{te}/model.fp16.safetensors"),
                    ],
                )?],
                tokenizer: tokenizer(&format!("tokenizer{suffix}"))?,
                config: None,
            })
        };
        match &family.arch {
            Arch::Sd(sd) => {
                let mut encoders = vec![clip("")?];
                if sd.clip2.is_some() {
                    encoders.push(clip("_2")?);
                }
                Ok(ImageModel {
                    family,
                    dir: dir.to_path_buf(),
                    encoders,
                    denoiser: pick(
                        "a UNet",
                        &[
                            "unet/diffusion_pytorch_model.safetensors",
                            "unet/diffusion_pytorch_model.fp16.safetensors",
                        ],
                    )?,
                    decoder: pick(
                        "a VAE",
                        &[
                            "vae/diffusion_pytorch_model.safetensors",
                            "vae/diffusion_pytorch_model.fp16.safetensors",
                        ],
                    )?,
                })
            }
            Arch::Flux(fx) => {
                let t5_dir = dir.join("text_encoder_2");
                let mut shards: Vec<PathBuf> = std::fs::read_dir(&t5_dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                            .collect()
                    })
                    .unwrap_or_default();
                shards.sort();
                if shards.is_empty() {
                    return Err(missing(
                        "T5's weights (text_encoder_2/*.safetensors)".into(),
                    ));
                }
                let t5 = EncoderFiles {
                    weights: shards,
                    tokenizer: tokenizer("tokenizer_2")?,
                    config: Some(pick("T5's config", &["text_encoder_2/config.json"])?),
                };
                Ok(ImageModel {
                    family,
                    dir: dir.to_path_buf(),
                    encoders: vec![clip("")?, t5],
                    denoiser: pick("the transformer", &[fx.transformer_file])?,
                    decoder: pick("the autoencoder", &["ae.safetensors"])?,
                })
            }
        }
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

/// Weights bytes of safetensors files once converted to `dtype`.
fn weights_bytes(paths: &[PathBuf], dtype: DType) -> Result<u64, ImagesError> {
    let mut total = 0;
    for path in paths {
        let header = baton_weights::Header::read(path)?;
        total += header
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
            .sum::<u64>();
    }
    Ok(total)
}

/// One phase of the plan: its name, the weights it holds at once, an estimate of its
/// activations.
struct Planned {
    name: &'static str,
    weights: u64,
    activations: u64,
}

/// The plan: each phase's weights plus an estimate of its activations (measured on an H200 at
/// 512x512 in f16/bf16, scaled by pixels and dtype; see docs/images.md). Text encoders run one
/// after another, so the text phase holds the largest of them.
fn plan(
    model: &ImageModel,
    dtype: DType,
    width: usize,
    height: usize,
    batch: usize,
) -> Result<Vec<Planned>, ImagesError> {
    let pixels = (width * height) as u64;
    let scale = |at_512: u64| at_512 * pixels / (512 * 512) * dtype.size_in_bytes() as u64 / 2;
    let mut text = 0;
    for e in &model.encoders {
        text = text.max(weights_bytes(&e.weights, dtype)?);
    }
    let [t, d, v] = model.family.phase_names();
    let (text_act, denoise_act, decode_act) = match model.family.arch {
        Arch::Sd(_) => (
            64 << 20,
            scale(1024 << 20) * batch as u64,
            scale(2944 << 20),
        ),
        Arch::Flux(_) => (512 << 20, scale(1024 << 20), scale(2944 << 20)),
    };
    Ok(vec![
        Planned {
            name: t,
            weights: text,
            activations: text_act,
        },
        Planned {
            name: d,
            weights: weights_bytes(std::slice::from_ref(&model.denoiser), dtype)?,
            activations: denoise_act,
        },
        Planned {
            name: v,
            weights: weights_bytes(std::slice::from_ref(&model.decoder), dtype)?,
            activations: decode_act,
        },
    ])
}

impl Planned {
    fn need(&self) -> u64 {
        self.weights + self.activations
    }
}

fn render_plan(plan: &[Planned]) -> String {
    plan.iter()
        .map(|p| {
            format!(
                "  {:<13} weights {:>10} + activations ~{:>10} = {:>10}",
                p.name,
                format_bytes(p.weights),
                format_bytes(p.activations),
                format_bytes(p.need())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The weights a phase loaded: bytes and seconds, summed over its loads.
#[derive(Default, Clone, Copy)]
struct Loads {
    bytes: u64,
    seconds: f64,
}

/// Runs `work` as one phase: scope guard, peak watch, weights load timing.
fn phase<T>(
    name: &str,
    backend: &Arc<dyn MemoryBackend>,
    planned_bytes: u64,
    work: impl FnOnce(&mut Loads) -> Result<T, ImagesError>,
) -> Result<(T, PhaseRecord), ImagesError> {
    backend.trim()?;
    let baseline = backend.process_usage(0, std::process::id()).unwrap_or(0);
    let scope = MemoryScope::new(backend.clone(), 0, name)?.with_tolerance(64 << 20);
    let watch = PeakWatch::start(backend.clone(), 0);
    let started = Instant::now();
    let mut loads = Loads::default();
    let outcome = work(&mut loads);
    let seconds = started.elapsed().as_secs_f64();
    let last = backend.process_usage(0, std::process::id()).unwrap_or(0);
    let peak = watch.finish(last);
    backend.trim()?;
    let report = scope.finish()?;
    let value = outcome?;
    Ok((
        value,
        PhaseRecord {
            name: name.into(),
            weights_bytes: loads.bytes,
            load_seconds: loads.seconds,
            load_gb_per_second: loads.bytes as f64 / loads.seconds.max(1e-9) / 1e9,
            seconds,
            baseline_bytes: baseline,
            peak_bytes: peak,
            planned_bytes,
            leaked: report.is_leak(),
            reclaim: report.to_string(),
        },
    ))
}

/// What the denoiser is conditioned on, for one scene.
struct Conditioning {
    /// The text encoders' hidden states (SD: with the unconditional row first under guidance).
    context: Tensor,
    /// Flux: CLIP's pooled output.
    pooled: Option<Tensor>,
}

impl Conditioning {
    fn to_device(&self, device: &Device) -> Result<Conditioning, ImagesError> {
        Ok(Conditioning {
            context: self.context.to_device(device)?,
            pooled: match &self.pooled {
                Some(p) => Some(p.to_device(device)?),
                None => None,
            },
        })
    }
}

/// Everything the phases share.
struct Job<'a> {
    model: &'a ImageModel,
    device: &'a Device,
    dtype: DType,
    width: usize,
    height: usize,
    steps: usize,
    guidance: f64,
    seed: u64,
}

/// Loads, before the first phase, the GPU kernels (candle's and cuBLAS's) that `fam`'s models
/// use in `dtype`: they stay loaded for the life of the process, so loading them inside a phase
/// would read as that phase's leak. The family's text encoders run once on zero weights (they
/// are small), a tiny denoiser and decoder of its architecture run once, and matrix products of
/// the real models' sizes run once. Nothing is kept; on a CPU there is nothing to load.
fn warm_up(fam: &Family, device: &Device, dtype: DType) -> Result<(), ImagesError> {
    if !device.is_cuda() {
        return Ok(());
    }
    crate::llm::warm_up(device).map_err(|e| ImagesError::Option(e.to_string()))?;
    warm_up_parts(fam, device, dtype)?;
    // Products of the sizes the real models multiply (text encoders, UNet and Flux blocks).
    for (m, k, n) in [
        (77, 768, 3072),
        (77, 1280, 5120),
        (256, 4096, 10240),
        (1024, 1280, 5120),
        (4352, 3072, 12288),
    ] {
        let a = Tensor::zeros((m, k), dtype, device)?;
        let b = Tensor::zeros((k, n), dtype, device)?;
        let _ = a.matmul(&b)?;
        let _ = a
            .unsqueeze(0)?
            .repeat((2, 1, 1))?
            .matmul(&b.unsqueeze(0)?.repeat((2, 1, 1))?)?;
    }
    device.synchronize()?;
    Ok(())
}

/// `cfg` narrowed for a warm-up: as many blocks, the same heads and projections, 32 channels per
/// head (a multiple of the 32 norm groups), one cross-attention layer per block.
fn narrow_unet(
    mut cfg: candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig,
) -> candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig {
    for b in &mut cfg.blocks {
        b.out_channels = 32 * b.attention_head_dim;
        b.use_cross_attn = b.use_cross_attn.map(|_| 1);
    }
    cfg.layers_per_block = 1;
    cfg
}

/// The warm-up's model part: the family's text encoders on zero weights (SD's are small; Flux's
/// are the tiny family's), a narrowed denoiser and a tiny decoder of its architecture, once.
fn warm_up_parts(fam: &Family, device: &Device, dtype: DType) -> Result<(), ImagesError> {
    use candle_core::Module;
    use candle_transformers::models::flux::WithForward;
    use candle_transformers::models::stable_diffusion::{clip, unet_2d, vae};
    use candle_transformers::models::{flux as cflux, t5};
    let zeros = || candle_nn::VarBuilder::zeros(dtype, device);
    let ids = Tensor::zeros((1, 77), DType::U32, device)?;
    match &fam.arch {
        Arch::Sd(sd) => {
            let mut context = Vec::new();
            for cfg in std::iter::once(sd.clip).chain(sd.clip2) {
                context.push(clip::ClipTextTransformer::new(zeros(), &cfg())?.forward(&ids)?);
            }
            let context = Tensor::cat(&context, candle_core::D::Minus1)?;
            let unet_cfg = narrow_unet((sd.unet)());
            let side = 8 << (unet_cfg.blocks.len() - 1);
            let unet = unet_2d::UNet2DConditionModel::new(zeros(), 4, 4, false, unet_cfg)?;
            let latents = Tensor::zeros((1, 4, side, side), dtype, device)?;
            let _ = unet.forward(&latents, 1.0, &context)?;
            let mut vae_cfg = (sd.vae)();
            vae_cfg.block_out_channels = vec![32; vae_cfg.block_out_channels.len()];
            vae_cfg.layers_per_block = 1;
            let _ = vae::AutoEncoderKL::new(zeros(), 3, 3, vae_cfg)?.decode(&latents)?;
        }
        Arch::Flux(_) => {
            let Some(Arch::Flux(t)) = family::find("tiny-flux").map(|f| &f.arch) else {
                unreachable!("tiny-flux is a Flux")
            };
            let clip = candle_transformers::models::clip::text_model::ClipTextTransformer::new(
                zeros().pp("text_model"),
                &(t.clip)(),
            )?;
            let pooled = clip.forward_with_mask(&ids, usize::MAX)?.i((.., 0))?;
            let t5_cfg: t5::Config =
                serde_json::from_str(t.t5_config).expect("the tiny T5 config parses");
            let context = t5::T5EncoderModel::load(zeros(), &t5_cfg)?.forward(&ids)?;
            let model = cflux::model::Flux::new(&(t.transformer)(), zeros())?;
            let noise = Tensor::zeros((1, 16, 8, 8), dtype, device)?;
            let state = cflux::sampling::State::new(&context, &pooled, &noise)?;
            let one = Tensor::ones(1, DType::F32, device)?;
            let out = model.forward(
                &state.img,
                &state.img_ids,
                &state.txt,
                &state.txt_ids,
                &one,
                &state.vec,
                Some(&one),
            )?;
            let latents = cflux::sampling::unpack(&out, 64, 64)?;
            let ae = cflux::autoencoder::AutoEncoder::new(&(t.autoencoder)(), zeros())?;
            let _ = ae.decode(&latents)?;
        }
    }
    Ok(())
}

impl Job<'_> {
    /// Loads `paths` (one file, or a checkpoint's shards) onto the job's device in its dtype,
    /// through baton-weights, and adds the load to `loads`.
    fn load(
        &self,
        paths: &[PathBuf],
        loads: &mut Loads,
    ) -> Result<candle_nn::VarBuilder<'static>, ImagesError> {
        let options = LoadOptions {
            dtype: Some(self.dtype),
            ..LoadOptions::default()
        };
        let loaded = baton_weights::load_safetensors_files(paths, self.device, &options)?;
        loads.bytes += loaded.report.bytes;
        loads.seconds += loaded.report.seconds;
        Ok(loaded.var_builder(self.dtype, self.device))
    }
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
    let plan = plan(model, dtype, width, height, batch)?;
    if let Some(max) = options.max_vram {
        let big = plan.iter().max_by_key(|p| p.need()).expect("three phases");
        if big.need() > max {
            return Err(ImagesError::MaxVram {
                need: format_bytes(big.need()),
                phase: big.name.into(),
                max: format_bytes(max),
                plan: render_plan(&plan),
            });
        }
    }
    warm_up(fam, &device, dtype)?;
    let job = Job {
        model,
        device: &device,
        dtype,
        width,
        height,
        steps,
        guidance,
        seed: options.seed,
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
    let (latents, denoise_phase) = phase(plan[1].name, &backend, plan[1].need(), |loads| {
        let mut step = |scene: u32, step: usize, steps: usize| {
            progress(Progress::Step {
                scene,
                scenes: board.scenes.len(),
                step,
                steps,
            })
        };
        let latents = match &fam.arch {
            Arch::Sd(sd) => sd::denoise(&job, sd, &board, &conditioning, loads, &mut step)?,
            Arch::Flux(fx) => flux::denoise(&job, fx, &board, &conditioning, loads, &mut step)?,
        };
        latents
            .into_iter()
            .map(|(l, secs)| Ok((l.to_device(&Device::Cpu)?, secs)))
            .collect::<Result<Vec<_>, ImagesError>>()
    })?;
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
            .map(to_rgb)
            .collect::<Result<Vec<_>, _>>()
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
            prompt_truncated: cut.is_some(),
            seconds: *secs,
        });
    }
    let phases = vec![text_phase, denoise_phase, decode_phase];
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The warm-up runs for each tiny family on the CPU: the narrowed UNet of the SD and SDXL
    /// architectures, the tiny Flux.
    #[test]
    fn the_warm_up_models_run_for_each_architecture() {
        for name in ["tiny-sd", "tiny-sdxl", "tiny-flux"] {
            let fam = family::find(name).unwrap();
            warm_up_parts(fam, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// Every real SD family's UNet narrows to a model that builds and runs.
    #[test]
    fn every_sd_family_narrows_to_a_unet_that_runs() {
        use candle_transformers::models::stable_diffusion::unet_2d;
        for fam in family::FAMILIES {
            let Arch::Sd(sd) = &fam.arch else { continue };
            let cfg = narrow_unet((sd.unet)());
            let cross = cfg.cross_attention_dim;
            let side = 8 << (cfg.blocks.len() - 1);
            let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
            let unet = unet_2d::UNet2DConditionModel::new(vb, 4, 4, false, cfg).unwrap();
            let latents = Tensor::zeros((1, 4, side, side), DType::F32, &Device::Cpu).unwrap();
            let context = Tensor::zeros((1, 77, cross), DType::F32, &Device::Cpu).unwrap();
            let out = unet.forward(&latents, 1.0, &context).unwrap();
            assert_eq!(out.dims(), &[1, 4, side, side], "{}", fam.name);
        }
    }
}
