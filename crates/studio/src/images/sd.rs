//! Stable Diffusion's three phases (1.5, 2.1, SD-Turbo, SDXL-Turbo): CLIP text encoders one after
//! another, their hidden states joined; the UNet under the family's scheduler, with
//! classifier-free guidance when asked; the KL VAE.
//!
//! SDXL: the UNet is conditioned as diffusers conditions it: the encoders' second-to-last
//! layers joined, and the pooled vector with the size/crop ids added to its time embedding.

use candle_core::{D, DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::vae;

use super::clip_text::{ClipConfig, ClipText};
use super::unet::{Added, UNet, sdxl_time_ids};

use super::ImagesError;
use super::family::Sd;
use super::phase::{Conditioning, Job, Loads};
use super::tokenize::{CLIP_TOKENS, clip_tokens};
use crate::storyboard::Storyboard;

/// Every scene's prompt through each text encoder in turn (each released before the next
/// loads). Returns the conditioning per scene and, per scene, why its prompt was cut.
pub(super) fn encode(
    job: &Job,
    sd: &Sd,
    board: &Storyboard,
    loads: &mut Loads,
) -> Result<(Vec<Conditioning>, Vec<Option<String>>), ImagesError> {
    let guided = job.guidance > 1.0;
    let configs: Vec<ClipConfig> = std::iter::once(sd.clip).chain(sd.clip2).collect();
    let last_encoder = configs.len() - 1;
    let mut cut = vec![None; board.scenes.len()];
    let mut per_encoder: Vec<Vec<Tensor>> = Vec::new();
    let mut pooled: Vec<Option<Tensor>> = vec![None; board.scenes.len()];
    for (k, (files, cfg)) in job.model.encoders.iter().zip(&configs).enumerate() {
        let tokenizer = files.tokenizer.load()?;
        let pad = files
            .tokenizer
            .pad_token()
            .or(cfg.pad_with.map(String::from));
        let encoder = ClipText::new(job.load(&files.weights, loads)?, cfg)?;
        // A prompt's hidden states, and its pooled vector when the UNet takes one (SDXL's
        // second encoder).
        let encode = |prompt: &str| -> Result<(Tensor, Option<Tensor>, Tensor, bool), ImagesError> {
            let t = clip_tokens(&tokenizer, prompt, pad.as_deref())?;
            let ids = Tensor::new(t.ids.as_slice(), job.device)?.unsqueeze(0)?;
            let encoded = encoder.forward(&ids)?;
            let vector = match sd.pooled() {
                Some(_) if k == last_encoder => Some(encoder.pooled(&encoded, &[t.eos_at])?),
                _ => None,
            };
            let hidden = match sd.xl {
                true => encoded.penultimate,
                false => encoded.last,
            };
            Ok((hidden, vector, ids, t.truncated))
        };
        // The unconditional row: the empty prompt's encoding, or zeros for SDXL.
        let uncond = match (guided, sd.xl) {
            (false, _) => None,
            (true, false) => Some(encode("")?.0),
            (true, true) => None,
        };
        let mut rows = Vec::new();
        for (i, s) in board.scenes.iter().enumerate() {
            let (text, vector, ids, truncated) = encode(&s.image_prompt)?;
            job.keep(s.index, &format!("ids{k}"), &ids)?;
            job.keep(s.index, &format!("text{k}"), &text)?;
            if truncated {
                cut[i] = Some(format!("the text encoder's {CLIP_TOKENS} tokens"));
            }
            let two = |row: Tensor, uncond: Option<&Tensor>| -> Result<Tensor, ImagesError> {
                Ok(match (guided, uncond) {
                    (false, _) => row,
                    (true, Some(u)) => Tensor::cat(&[u, &row], 0)?,
                    (true, None) => Tensor::cat(&[&row.zeros_like()?, &row], 0)?,
                })
            };
            if let Some(v) = vector {
                job.keep(s.index, "pooled", &v)?;
                pooled[i] = Some(two(v, None)?);
            }
            rows.push(two(text, uncond.as_ref())?);
        }
        job.device.synchronize()?;
        per_encoder.push(rows);
    }
    let conditioning = (0..board.scenes.len())
        .map(|i| {
            let parts: Vec<&Tensor> = per_encoder.iter().map(|rows| &rows[i]).collect();
            Ok(Conditioning {
                context: Tensor::cat(&parts, D::Minus1)?,
                pooled: pooled[i].take(),
            })
        })
        .collect::<Result<Vec<_>, ImagesError>>()?;
    Ok((conditioning, cut))
}

/// Every scene denoised by the UNet (its conditioning brought over from wherever it waits).
/// Returns each scene's latents and seconds.
pub(super) fn denoise(
    job: &Job,
    sd: &Sd,
    board: &Storyboard,
    conditioning: &[Conditioning],
    loads: &mut Loads,
    step: &mut dyn FnMut(u32, usize, usize),
) -> Result<Vec<(Tensor, f64)>, ImagesError> {
    let guided = job.guidance > 1.0;
    let unet = UNet::new(
        job.load(std::slice::from_ref(&job.model.denoiser), loads)?,
        (sd.unet)(),
        sd.pooled(),
    )?;
    let batch = if guided { 2 } else { 1 };
    let time_ids =
        Tensor::new(&[sdxl_time_ids(job.width, job.height)], job.device)?.repeat((batch, 1))?;
    let (latent_h, latent_w) = (job.height / 8, job.width / 8);
    let mut out = Vec::new();
    for (position, (s, cond)) in board.scenes.iter().zip(conditioning).enumerate() {
        let started = std::time::Instant::now();
        let cond = cond.to_device(job.device)?;
        let seed = job.seed + s.index as u64;
        // The starting noise comes from baton's own seeded generator (or --latents), so it is
        // the same on every device; a GPU's generator is seeded too, for ancestral schedulers'
        // steps (candle cannot seed the CPU's, so those add unseeded noise there).
        let _ = job.device.set_seed(seed);
        let mut scheduler = sd.scheduler.config().build(job.steps)?;
        let noise = job.start_noise(position, seed, (4, latent_h, latent_w))?;
        job.keep(s.index, "noise", &noise)?;
        job.keep(s.index, "context", &cond.context)?;
        let mut latents =
            (noise.to_dtype(DType::F32)? * scheduler.init_noise_sigma())?.to_dtype(job.dtype)?;
        let timesteps = scheduler.timesteps().to_vec();
        let ts: Vec<f32> = timesteps.iter().map(|t| *t as f32).collect();
        job.keep(
            s.index,
            "timesteps",
            &Tensor::new(ts.as_slice(), &Device::Cpu)?,
        )?;
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(input, t)?;
            job.keep(s.index, &format!("step{i}.input"), &input)?;
            let added = cond.pooled.as_ref().map(|text_embeds| Added {
                text_embeds,
                time_ids: &time_ids,
            });
            let noise = unet.forward(&input, t as f64, &cond.context, added)?;
            let noise = if guided {
                let parts = noise.chunk(2, 0)?;
                (&parts[0] + ((&parts[1] - &parts[0])? * job.guidance)?)?
            } else {
                noise
            };
            job.keep(s.index, &format!("step{i}.pred"), &noise)?;
            latents = scheduler.step(&noise, t, &latents)?;
            job.keep(s.index, &format!("step{i}.latents"), &latents)?;
            step(s.index, i + 1, timesteps.len());
        }
        job.device.synchronize()?;
        out.push((latents, started.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// Every scene's latents through the VAE: images in [-1, 1].
pub(super) fn decode(
    job: &Job,
    sd: &Sd,
    latents: &[(Tensor, f64)],
    loads: &mut Loads,
) -> Result<Vec<Tensor>, ImagesError> {
    let vae = vae::AutoEncoderKL::new(
        job.load(std::slice::from_ref(&job.model.decoder), loads)?,
        3,
        3,
        (sd.vae)(),
    )?;
    latents
        .iter()
        .map(|(l, _)| Ok(vae.decode(&(l.to_device(job.device)? / sd.latent_scale)?)?))
        .collect()
}
