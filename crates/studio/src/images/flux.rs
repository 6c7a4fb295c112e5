//! FLUX.1's three phases (schnell, dev): CLIP-L for the pooled vector, then T5 for the context,
//! one after the other; the rectified-flow transformer stepping from noise along the family's
//! schedule (dev takes its guidance as an input, no doubled batch); the autoencoder.

use candle_core::{IndexOp, Tensor};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::flux::WithForward;
use candle_transformers::models::{flux as cflux, t5};

use super::family::Flux;
use super::phase::{Conditioning, Job, Loads};
use super::tokenize::{CLIP_TOKENS, clip_tokens, t5_tokens};
use super::{ImagesError, gaussian};
use crate::storyboard::Storyboard;

/// Every scene's prompt through CLIP-L (pooled), then through T5, each encoder released before
/// the next loads. Returns the conditioning per scene and, per scene, why its prompt was cut.
pub(super) fn encode(
    job: &Job,
    fx: &Flux,
    board: &Storyboard,
    loads: &mut Loads,
) -> Result<(Vec<Conditioning>, Vec<Option<String>>), ImagesError> {
    let [clip_files, t5_files] = &job.model.encoders[..] else {
        unreachable!("a Flux model has two text encoders")
    };
    let mut cut = vec![None; board.scenes.len()];
    let mut pooled = Vec::new();
    {
        let tokenizer = clip_files.tokenizer.load()?;
        let vb = job.load(&clip_files.weights, loads)?;
        let clip = ClipTextTransformer::new(vb.pp("text_model"), &(fx.clip)())?;
        for (i, s) in board.scenes.iter().enumerate() {
            let t = clip_tokens(&tokenizer, &s.image_prompt, None)?;
            let ids = Tensor::new(t.ids.as_slice(), job.device)?.unsqueeze(0)?;
            let hidden = clip.forward_with_mask(&ids, usize::MAX)?;
            pooled.push(hidden.i((.., t.eos_at))?);
            if t.truncated {
                cut[i] = Some(format!(
                    "CLIP's {CLIP_TOKENS} tokens (its pooled vector; T5 read up to {})",
                    fx.t5_tokens
                ));
            }
        }
        job.device.synchronize()?;
    }
    let config_path = t5_files.config.as_ref().expect("T5 has a config");
    let config: t5::Config = std::fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| ImagesError::Tokenizer(format!("T5's '{}': {e}", config_path.display())))?;
    let tokenizer = t5_files.tokenizer.load()?;
    let mut t5 = t5::T5EncoderModel::load(job.load(&t5_files.weights, loads)?, &config)?;
    let mut conditioning = Vec::new();
    for ((i, s), pooled) in board.scenes.iter().enumerate().zip(pooled) {
        let (ids, truncated) = t5_tokens(&tokenizer, &s.image_prompt, fx.t5_tokens)?;
        if truncated {
            cut[i] = Some(format!("T5's {} tokens", fx.t5_tokens));
        }
        let ids = Tensor::new(ids.as_slice(), job.device)?.unsqueeze(0)?;
        conditioning.push(Conditioning {
            context: t5.forward(&ids)?,
            pooled: Some(pooled),
        });
    }
    job.device.synchronize()?;
    Ok((conditioning, cut))
}

/// Every scene from noise through the transformer. Returns each scene's latents (unpacked to
/// the autoencoder's 16 channels) and seconds.
pub(super) fn denoise(
    job: &Job,
    fx: &Flux,
    board: &Storyboard,
    conditioning: &[Conditioning],
    loads: &mut Loads,
    step: &mut dyn FnMut(u32, usize, usize),
) -> Result<Vec<(Tensor, f64)>, ImagesError> {
    let model = cflux::model::Flux::new(
        &(fx.transformer)(),
        job.load(std::slice::from_ref(&job.model.denoiser), loads)?,
    )?;
    let (latent_h, latent_w) = (job.height / 16 * 2, job.width / 16 * 2);
    let guidance = Tensor::full(job.guidance as f32, 1, job.device)?;
    let mut out = Vec::new();
    for (s, cond) in board.scenes.iter().zip(conditioning) {
        let started = std::time::Instant::now();
        let cond = cond.to_device(job.device)?;
        let seed = job.seed + s.index as u64;
        let noise = Tensor::from_vec(
            gaussian(16 * latent_h * latent_w, seed),
            (1, 16, latent_h, latent_w),
            job.device,
        )?
        .to_dtype(job.dtype)?;
        let pooled = cond
            .pooled
            .as_ref()
            .expect("Flux conditioning has CLIP's vector");
        let state = cflux::sampling::State::new(&cond.context, pooled, &noise)?;
        let tokens = state.img.dim(1)?;
        let timesteps =
            cflux::sampling::get_schedule(job.steps, fx.shift.then_some((tokens, 0.5, 1.15)));
        let mut img = state.img.clone();
        for (i, w) in timesteps.windows(2).enumerate() {
            let t = Tensor::full(w[0] as f32, 1, job.device)?;
            let velocity = model.forward(
                &img,
                &state.img_ids,
                &state.txt,
                &state.txt_ids,
                &t,
                &state.vec,
                Some(&guidance),
            )?;
            img = (img + (velocity * (w[1] - w[0]))?)?;
            step(s.index, i + 1, job.steps);
        }
        let latents = cflux::sampling::unpack(&img, job.height, job.width)?;
        job.device.synchronize()?;
        out.push((latents, started.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// Every scene's latents through the autoencoder: images in [-1, 1].
pub(super) fn decode(
    job: &Job,
    fx: &Flux,
    latents: &[(Tensor, f64)],
    loads: &mut Loads,
) -> Result<Vec<Tensor>, ImagesError> {
    let ae = cflux::autoencoder::AutoEncoder::new(
        &(fx.autoencoder)(),
        job.load(std::slice::from_ref(&job.model.decoder), loads)?,
    )?;
    latents
        .iter()
        .map(|(l, _)| Ok(ae.decode(&l.to_device(job.device)?)?))
        .collect()
}
