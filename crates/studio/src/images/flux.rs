//! FLUX.1's three phases (schnell, dev): CLIP-L for the pooled vector, then T5 for the context,
//! one after the other; the rectified-flow transformer stepping from noise along the family's
//! schedule (dev takes its guidance as an input, no doubled batch); the autoencoder.

use candle_core::{Device, Tensor};
use candle_transformers::models::{flux as cflux, t5};

use super::ImagesError;
use super::clip_text::ClipText;
use super::family::Flux;
use super::flux_net::{self, BlockSource, HEAD_PREFIXES, Head, Resident, Scene, Streamed, Weights};
use super::phase::{Conditioning, Job, Loads};
use super::plan::Residence;
use super::tokenize::{CLIP_TOKENS, clip_tokens, t5_tokens};
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
        let clip = ClipText::new(vb, &fx.clip)?;
        let pad = clip_files.tokenizer.pad_token();
        for (i, s) in board.scenes.iter().enumerate() {
            let t = clip_tokens(&tokenizer, &s.image_prompt, pad.as_deref())?;
            let ids = Tensor::new(t.ids.as_slice(), job.device)?.unsqueeze(0)?;
            let vector = clip.pooled(&clip.forward(&ids)?, &[t.eos_at])?;
            job.keep(s.index, "ids0", &ids)?;
            job.keep(s.index, "pooled", &vector)?;
            pooled.push(vector);
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
        let context = t5.forward(&ids)?;
        job.keep(s.index, "ids1", &ids)?;
        job.keep(s.index, "text1", &context)?;
        conditioning.push(Conditioning {
            context,
            pooled: Some(pooled),
        });
    }
    job.device.synchronize()?;
    Ok((conditioning, cut))
}

/// Every scene from noise through the transformer, all scenes through each block while it is
/// on the device (the blocks resident, or streamed from host memory when the plan says so).
/// Returns each scene's latents (unpacked to the autoencoder's 16 channels) and seconds (the
/// phase's denoising time shared evenly: the scenes step together), and the bytes streamed.
pub(super) fn denoise(
    job: &Job,
    fx: &Flux,
    board: &Storyboard,
    conditioning: &[Conditioning],
    loads: &mut Loads,
    step: &mut dyn FnMut(u32, usize, usize),
) -> Result<(Vec<(Tensor, f64)>, u64), ImagesError> {
    let cfg = (fx.transformer)();
    let denoiser = std::slice::from_ref(&job.model.denoiser);
    // Streamed: read into host memory in the order the step uses them (the parts outside the
    // blocks, then each block); the first step starts once the first block is in.
    let order = flux_net::BlockId::all(&cfg);
    let host = match job.residence {
        Residence::Resident | Residence::Quantized(_) | Residence::Tiled { .. } => None,
        Residence::Streamed { .. } => Some(baton_weights::HostWeights::load(
            denoiser,
            job.device,
            |name| {
                order
                    .iter()
                    .position(|id| name.starts_with(&id.prefix()))
                    .map_or(0, |i| i + 1)
            },
        )?),
    };
    let (head, mut blocks): (Head, Box<dyn BlockSource + '_>) = match &host {
        None => {
            let weights = if is_gguf(&job.model.denoiser) {
                let loaded = baton_weights::load_gguf(
                    &job.model.denoiser,
                    job.device,
                    &baton_weights::LoadOptions::default(),
                )?;
                loads.bytes += loaded.report.bytes;
                loads.seconds += loaded.report.seconds;
                Weights::quantized(loaded.tensors, job.dtype, job.device)
            } else {
                Weights::Dense(job.load(denoiser, loads)?)
            };
            (
                Head::new(&cfg, &weights)?,
                Box::new(Resident::new(&cfg, &weights)?),
            )
        }
        Some(host) => {
            let outside: Vec<&str> = host
                .names()
                .filter(|n| HEAD_PREFIXES.iter().any(|p| n.starts_with(p)))
                .collect();
            let tensors = host.upload(outside)?.ready(job.dtype)?;
            let vb = candle_nn::VarBuilder::from_tensors(tensors, job.dtype, job.device);
            (
                Head::new(&cfg, &Weights::Dense(vb))?,
                Box::new(Streamed::new(&cfg, host, job.dtype, job.device)),
            )
        }
    };
    let started = std::time::Instant::now();
    let (latent_h, latent_w) = (job.height / 16 * 2, job.width / 16 * 2);
    let guidance = Tensor::full(job.guidance as f32, 1, job.device)?;
    let mut scenes = Vec::with_capacity(board.scenes.len());
    for (position, (s, cond)) in board.scenes.iter().zip(conditioning).enumerate() {
        let cond = cond.to_device(job.device)?;
        let noise = job.start_noise(
            position,
            job.seed + s.index as u64,
            (16, latent_h, latent_w),
        )?;
        job.keep(s.index, "noise", &noise)?;
        let pooled = cond
            .pooled
            .as_ref()
            .expect("Flux conditioning has CLIP's vector");
        let state = cflux::sampling::State::new(&cond.context, pooled, &noise)?;
        scenes.push(Scene::new(
            &cfg,
            state.img,
            &state.img_ids,
            state.txt,
            &state.txt_ids,
            state.vec,
        )?);
    }
    let tokens = latent_h / 2 * (latent_w / 2);
    let timesteps =
        cflux::sampling::get_schedule(job.steps, fx.shift.then_some((tokens, 0.5, 1.15)));
    let ts: Vec<f32> = timesteps.iter().map(|t| *t as f32).collect();
    for s in &board.scenes {
        job.keep(
            s.index,
            "timesteps",
            &Tensor::new(ts.as_slice(), &Device::Cpu)?,
        )?;
    }
    let windows: Vec<_> = timesteps.windows(2).collect();
    for (i, w) in windows.iter().enumerate() {
        let t = Tensor::full(w[0] as f32, 1, job.device)?;
        let last = i + 1 == windows.len();
        for (scene, s) in scenes.iter().zip(&board.scenes) {
            job.keep(s.index, &format!("step{i}.input"), &scene.img)?;
        }
        let velocities =
            flux_net::step(&head, blocks.as_mut(), &scenes, &t, Some(&guidance), last)?;
        for ((scene, v), s) in scenes.iter_mut().zip(velocities).zip(&board.scenes) {
            job.keep(s.index, &format!("step{i}.pred"), &v)?;
            scene.img = (&scene.img + (v * (w[1] - w[0]))?)?;
            job.keep(s.index, &format!("step{i}.latents"), &scene.img)?;
        }
        for s in &board.scenes {
            step(s.index, i + 1, job.steps);
        }
    }
    let mut out = Vec::with_capacity(scenes.len());
    for (scene, s) in scenes.into_iter().zip(&board.scenes) {
        let latents = cflux::sampling::unpack(&scene.img, job.height, job.width)?;
        job.keep(s.index, "latents", &latents)?;
        out.push(latents);
    }
    job.device.synchronize()?;
    let each = started.elapsed().as_secs_f64() / out.len().max(1) as f64;
    let streamed = blocks.streamed_bytes();
    if let Some(host) = &host {
        // Into host memory while the first step ran: bytes, and the time to the last block.
        let report = host.wait_all()?;
        loads.bytes += report.bytes;
        loads.seconds += report.seconds;
    }
    Ok((out.into_iter().map(|l| (l, each)).collect(), streamed))
}

/// Runs, before the first phase, the largest quantized products a GGUF transformer will run at
/// `tokens` tokens (text and image), once per block type of `path`: candle's quantized matrix
/// product keeps a workspace on the device that grows to the largest input it has seen and
/// stays for the process's life, so growing it inside the phase would read as that phase's
/// leak (an H200 run flagged +128 MiB). On a CPU there is nothing to warm.
pub(super) fn warm_quantized(
    path: &std::path::Path,
    fx: &Flux,
    tokens: usize,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<(), ImagesError> {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    if !device.is_cuda() {
        return Ok(());
    }
    let content = baton_weights::read_gguf(path)?;
    let mut types: Vec<GgmlDType> = Vec::new();
    for info in content.tensor_infos.values() {
        let t = info.ggml_dtype;
        if !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) && !types.contains(&t) {
            types.push(t);
        }
    }
    let cfg = (fx.transformer)();
    let (h, mlp) = (
        cfg.hidden_size,
        (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize,
    );
    // The single blocks' two products: the widest output, and the widest input.
    for kind in types {
        for (k, n) in [(h, 3 * h + mlp), (h + mlp, h)] {
            let w = candle_core::Tensor::zeros(
                (n, k),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?;
            let w = QMatMul::from_qtensor(QTensor::quantize_onto(&w, kind, device)?)?;
            let x = candle_core::Tensor::zeros((1, tokens, k), dtype, device)?;
            let _ = x.apply(&w)?;
        }
    }
    device.synchronize()?;
    Ok(())
}

/// A transformer in a GGUF file (quantized), rather than safetensors.
pub(super) fn is_gguf(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Every scene's latents through the autoencoder: images in [-1, 1]. With `job.decode_tile`,
/// each image is decoded in overlapping tiles of that side, blended linearly across the
/// overlaps on the host, so the phase holds one tile's activations, not a whole image's.
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
        .map(|(l, _)| {
            let l = l.to_device(job.device)?;
            Ok(match job.decode_tile {
                None => ae.decode(&l)?,
                Some(tile) => decode_tiled(&ae, &l, tile / 8)?,
            })
        })
        .collect()
}

/// Where tiles of `tile` start along a side of `side` (latent units) with `overlap` between
/// neighbours, the last ending at the side.
fn tile_starts(side: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if side <= tile {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..side - tile).step_by(tile - overlap).collect();
    starts.push(side - tile);
    starts.dedup();
    starts
}

/// The weight of each position of a tile of `len` along one side: rising over `ramp` where it
/// overlaps the tile before, falling where it overlaps the next.
fn ramp_weights(len: usize, ramp: usize, first: bool, last: bool) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let up = if first || i >= ramp {
                1.0
            } else {
                (i as f32 + 0.5) / ramp as f32
            };
            let down = if last || i + ramp < len {
                1.0
            } else {
                (len - i) as f32 / ramp as f32 - 0.5 / ramp as f32
            };
            up.min(down)
        })
        .collect()
}

/// One image (latents (1, 16, h, w)) decoded in tiles of `tile` latent units, a quarter of a
/// tile's side overlapping its neighbours.
fn decode_tiled(
    ae: &cflux::autoencoder::AutoEncoder,
    latents: &Tensor,
    tile: usize,
) -> Result<Tensor, ImagesError> {
    let (_, _, h, w) = latents.dims4()?;
    let overlap = (tile / 4).max(1);
    let (ys, xs) = (tile_starts(h, tile, overlap), tile_starts(w, tile, overlap));
    let (out_h, out_w) = (h * 8, w * 8);
    let mut sum = vec![0f32; 3 * out_h * out_w];
    let mut total = vec![0f32; out_h * out_w];
    for (yi, y) in ys.iter().enumerate() {
        for (xi, x) in xs.iter().enumerate() {
            let (th, tw) = (tile.min(h), tile.min(w));
            let part = latents.narrow(2, *y, th)?.narrow(3, *x, tw)?;
            let pixels = ae
                .decode(&part.contiguous()?)?
                .to_dtype(candle_core::DType::F32)?
                .to_device(&candle_core::Device::Cpu)?
                .squeeze(0)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let (ph, pw) = (th * 8, tw * 8);
            let wy = ramp_weights(ph, overlap * 8, yi == 0, yi + 1 == ys.len());
            let wx = ramp_weights(pw, overlap * 8, xi == 0, xi + 1 == xs.len());
            for (r, wr) in wy.iter().enumerate() {
                for (c, wc) in wx.iter().enumerate() {
                    let weight = wr * wc;
                    let at = (y * 8 + r) * out_w + x * 8 + c;
                    total[at] += weight;
                    for ch in 0..3 {
                        sum[ch * out_h * out_w + at] += weight * pixels[ch * ph * pw + r * pw + c];
                    }
                }
            }
        }
    }
    for ch in 0..3 {
        for (i, t) in total.iter().enumerate() {
            sum[ch * out_h * out_w + i] /= t.max(f32::EPSILON);
        }
    }
    Ok(Tensor::from_vec(
        sum,
        (1, 3, out_h, out_w),
        &candle_core::Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiles cover every position, the last ending at the side; across any overlap the weights
    /// of the two tiles add up to one, so a flat picture stays flat.
    #[test]
    fn tiles_cover_the_side_and_their_weights_sum_to_one() {
        assert_eq!(tile_starts(128, 64, 16), [0, 48, 64]);
        assert_eq!(tile_starts(64, 64, 16), [0]);
        assert_eq!(tile_starts(100, 64, 16), [0, 36]);
        let (side, tile, overlap) = (200usize, 64usize, 16usize);
        let starts = tile_starts(side, tile, overlap);
        let mut total = vec![0f32; side];
        for (i, s) in starts.iter().enumerate() {
            let w = ramp_weights(tile, overlap, i == 0, i + 1 == starts.len());
            for (k, v) in w.iter().enumerate() {
                total[s + k] += v;
            }
        }
        assert!(total.iter().all(|t| *t > 0.0), "{total:?}");
        // Where exactly two tiles overlap by the ramp's length, their weights sum to one.
        for (i, t) in total.iter().enumerate() {
            if (48..64).contains(&i) {
                assert!((t - 1.0).abs() < 1e-5, "{i}: {t}");
            }
        }
    }
}
