//! One phase of the stage: its models loaded, used and released inside a scope guard with its
//! peak watched; the conditioning handed from the encoders to the denoiser on the host; and the
//! warm-up that loads the family's kernels before the first phase, so that no phase's memory
//! counts kernels that stay for the process's life.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use baton_memory::peak::PeakWatch;
use baton_memory::{MemoryBackend, MemoryScope};
use baton_weights::LoadOptions;
use candle_core::{DType, Device, Tensor};

use super::clip_text::ClipText;
use super::family::{Arch, Family};
use super::unet::{Added, UNet, sdxl_time_ids};
use super::{ImageModel, ImagesError, PhaseRecord, family};

/// The weights a phase loaded: bytes and seconds, summed over its loads.
#[derive(Default, Clone, Copy)]
pub(super) struct Loads {
    pub(super) bytes: u64,
    pub(super) seconds: f64,
}

/// Runs `work` as one phase: scope guard, peak watch, weights load timing.
pub(super) fn phase<T>(
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
            residence: String::new(),
            streamed_bytes: 0,
        },
    ))
}

/// What the denoiser is conditioned on, for one scene.
pub(super) struct Conditioning {
    /// The text encoders' hidden states (SD: with the unconditional row first under guidance).
    pub(super) context: Tensor,
    /// Flux: CLIP's pooled output.
    pub(super) pooled: Option<Tensor>,
}

impl Conditioning {
    pub(super) fn to_device(&self, device: &Device) -> Result<Conditioning, ImagesError> {
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
pub(super) struct Job<'a> {
    pub(super) model: &'a ImageModel,
    pub(super) device: &'a Device,
    pub(super) dtype: DType,
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) steps: usize,
    pub(super) guidance: f64,
    pub(super) seed: u64,
    /// How the denoiser holds its weights (the plan's choice).
    pub(super) residence: super::plan::Residence,
    /// Flux: the autoencoder decodes in tiles of this side, in pixels (the plan's choice).
    pub(super) decode_tile: Option<usize>,
    /// `--latents`: the starting noise, instead of each scene's seed's.
    pub(super) given: Option<&'a super::GivenLatents>,
    /// `--dump`: where what the phases produce is gathered.
    pub(super) dump: Option<&'a super::Dump>,
}

impl Job<'_> {
    /// The unscaled starting noise (1, C, H, W) of the scene at `position` (from 0) in the job's
    /// dtype on its device: `--latents`' row, or drawn from `seed` by baton's own generator, so
    /// that it is the same on every device.
    pub(super) fn start_noise(
        &self,
        position: usize,
        seed: u64,
        (c, h, w): (usize, usize, usize),
    ) -> Result<Tensor, ImagesError> {
        let noise = match self.given {
            Some(given) => given.scene(position, (c, h, w))?,
            None => Tensor::from_vec(super::gaussian(c * h * w, seed), (1, c, h, w), &Device::Cpu)?,
        };
        Ok(noise.to_device(self.device)?.to_dtype(self.dtype)?)
    }

    /// Keeps `t` as scene `scene`'s `what` when `--dump` asked for it.
    pub(super) fn keep(&self, scene: u32, what: &str, t: &Tensor) -> Result<(), ImagesError> {
        match self.dump {
            Some(dump) => Ok(dump.keep(scene, what, t)?),
            None => Ok(()),
        }
    }

    /// Loads `paths` (one file, or a checkpoint's shards) onto the job's device in its dtype,
    /// through baton-weights, and adds the load to `loads`.
    pub(super) fn load(
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

/// Loads, before the first phase, the GPU kernels (candle's and cuBLAS's) that `fam`'s models
/// use in `dtype`: they stay loaded for the life of the process, so loading them inside a phase
/// would read as that phase's leak. The family's text encoders run once on zero weights (they
/// are small), a tiny denoiser and decoder of its architecture run once, and matrix products of
/// the real models' sizes run once. Nothing is kept; on a CPU there is nothing to load.
pub(super) fn warm_up(fam: &Family, device: &Device, dtype: DType) -> Result<(), ImagesError> {
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
pub(super) fn narrow_unet(
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
pub(super) fn warm_up_parts(
    fam: &Family,
    device: &Device,
    dtype: DType,
) -> Result<(), ImagesError> {
    use candle_transformers::models::flux::WithForward;
    use candle_transformers::models::stable_diffusion::vae;
    use candle_transformers::models::{flux as cflux, t5};
    let zeros = || candle_nn::VarBuilder::zeros(dtype, device);
    let ids = Tensor::zeros((1, 77), DType::U32, device)?;
    match &fam.arch {
        Arch::Sd(sd) => {
            let mut context = Vec::new();
            for cfg in std::iter::once(sd.clip).chain(sd.clip2) {
                let clip = ClipText::new(zeros(), &cfg)?;
                let encoded = clip.forward(&ids)?;
                let _ = clip.pooled(&encoded, &[1])?;
                context.push(encoded.last);
            }
            let context = Tensor::cat(&context, candle_core::D::Minus1)?;
            let unet_cfg = narrow_unet((sd.unet)());
            let side = 8 << (unet_cfg.blocks.len() - 1);
            let unet = UNet::new(zeros(), unet_cfg, sd.pooled())?;
            let latents = Tensor::zeros((1, 4, side, side), dtype, device)?;
            let pooled = match sd.pooled() {
                Some(p) => Some(Tensor::zeros((1, p), dtype, device)?),
                None => None,
            };
            let ids = Tensor::new(&[sdxl_time_ids(64, 64)], device)?;
            let added = pooled.as_ref().map(|text_embeds| Added {
                text_embeds,
                time_ids: &ids,
            });
            let _ = unet.forward(&latents, 1.0, &context, added)?;
            let mut vae_cfg = (sd.vae)();
            vae_cfg.block_out_channels = vec![32; vae_cfg.block_out_channels.len()];
            vae_cfg.layers_per_block = 1;
            let _ = vae::AutoEncoderKL::new(zeros(), 3, 3, vae_cfg)?.decode(&latents)?;
        }
        Arch::Flux(_) => {
            let Some(Arch::Flux(t)) = family::find("tiny-flux").map(|f| &f.arch) else {
                unreachable!("tiny-flux is a Flux")
            };
            let clip = ClipText::new(zeros(), &t.clip)?;
            let pooled = clip.pooled(&clip.forward(&ids)?, &[0])?;
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

    /// Every real SD family's UNet (baton's, with SDXL's added conditioning) narrows to a model
    /// that builds and runs.
    #[test]
    fn every_sd_family_narrows_to_a_unet_that_runs() {
        for fam in family::FAMILIES {
            let Arch::Sd(sd) = &fam.arch else { continue };
            let cfg = narrow_unet((sd.unet)());
            let cross = cfg.cross_attention_dim;
            let side = 8 << (cfg.blocks.len() - 1);
            let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
            let unet = UNet::new(vb, cfg, sd.pooled()).unwrap();
            let latents = Tensor::zeros((1, 4, side, side), DType::F32, &Device::Cpu).unwrap();
            let context = Tensor::zeros((1, 77, cross), DType::F32, &Device::Cpu).unwrap();
            let pooled = sd
                .pooled()
                .map(|p| Tensor::zeros((1, p), DType::F32, &Device::Cpu).unwrap());
            let ids = Tensor::new(&[sdxl_time_ids(side * 8, side * 8)], &Device::Cpu).unwrap();
            let added = pooled.as_ref().map(|text_embeds| Added {
                text_embeds,
                time_ids: &ids,
            });
            let out = unet.forward(&latents, 1.0, &context, added).unwrap();
            assert_eq!(out.dims(), &[1, 4, side, side], "{}", fam.name);
        }
    }
}
