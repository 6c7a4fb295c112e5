//! The SD UNet's outer layer, built from candle's down, mid and up blocks, with two things
//! candle's `UNet2DConditionModel` gets wrong against diffusers: the timestep embedding is
//! computed in f32 (candle computes it in the model's dtype: in f16, t x frequency rounds by up
//! to half a radian at t = 999, and the sine/cosine features are noise), and SDXL's added
//! conditioning (the pooled text vector and the size/crop ids, `addition_embed_type =
//! "text_time"`), without which SDXL's weights are run on a time embedding they were not
//! trained with. Weight names are diffusers'.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::*;

/// SDXL's added conditioning: each size/crop id embedded in this many sinusoidal features.
pub const TIME_ID_FEATURES: usize = 256;

enum Down {
    Basic(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

enum Up {
    Basic(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
}

/// What SDXL adds to the time embedding, per batch row.
pub struct Added<'a> {
    /// The second text encoder's projected pooled vector (batch, pooled).
    pub text_embeds: &'a Tensor,
    /// Original size, crop top-left and target size: (batch, 6).
    pub time_ids: &'a Tensor,
}

pub struct UNet {
    cfg: UNet2DConditionModelConfig,
    conv_in: candle_nn::Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    added: Option<(Timesteps, TimestepEmbedding)>,
    down: Vec<Down>,
    mid: UNetMidBlock2DCrossAttn,
    up: Vec<Up>,
    norm_out: candle_nn::GroupNorm,
    conv_out: candle_nn::Conv2d,
}

impl UNet {
    /// A UNet of `cfg` (4 latent channels in and out); `pooled`: SDXL's added conditioning
    /// with a pooled text vector of this size.
    pub fn new(
        vs: VarBuilder,
        cfg: UNet2DConditionModelConfig,
        pooled: Option<usize>,
    ) -> candle_core::Result<UNet> {
        let n = cfg.blocks.len();
        let first = cfg.blocks[0].out_channels;
        let last = cfg.blocks[n - 1];
        let temb = first * 4;
        let conv3 = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = candle_nn::conv2d(4, first, 3, conv3, vs.pp("conv_in"))?;
        let time_proj = Timesteps::new(first, cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_embedding = TimestepEmbedding::new(vs.pp("time_embedding"), first, temb)?;
        let added = match pooled {
            Some(p) => Some((
                Timesteps::new(TIME_ID_FEATURES, cfg.flip_sin_to_cos, cfg.freq_shift),
                TimestepEmbedding::new(vs.pp("add_embedding"), p + 6 * TIME_ID_FEATURES, temb)?,
            )),
            None => None,
        };
        let vd = vs.pp("down_blocks");
        let mut down = Vec::with_capacity(n);
        for (i, b) in cfg.blocks.iter().enumerate() {
            let input = if i > 0 {
                cfg.blocks[i - 1].out_channels
            } else {
                first
            };
            let basic = DownBlock2DConfig {
                num_layers: cfg.layers_per_block,
                resnet_eps: cfg.norm_eps,
                resnet_groups: cfg.norm_num_groups,
                add_downsample: i < n - 1,
                downsample_padding: cfg.downsample_padding,
                ..Default::default()
            };
            down.push(match b.use_cross_attn {
                Some(layers) => Down::CrossAttn(CrossAttnDownBlock2D::new(
                    vd.pp(i.to_string()),
                    input,
                    b.out_channels,
                    Some(temb),
                    false,
                    CrossAttnDownBlock2DConfig {
                        downblock: basic,
                        attn_num_head_channels: b.attention_head_dim,
                        cross_attention_dim: cfg.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: cfg.use_linear_projection,
                        transformer_layers_per_block: layers,
                    },
                )?),
                None => Down::Basic(DownBlock2D::new(
                    vd.pp(i.to_string()),
                    input,
                    b.out_channels,
                    Some(temb),
                    basic,
                )?),
            });
        }
        let mid = UNetMidBlock2DCrossAttn::new(
            vs.pp("mid_block"),
            last.out_channels,
            Some(temb),
            false,
            UNetMidBlock2DCrossAttnConfig {
                resnet_eps: cfg.norm_eps,
                output_scale_factor: cfg.mid_block_scale_factor,
                cross_attn_dim: cfg.cross_attention_dim,
                attn_num_head_channels: last.attention_head_dim,
                resnet_groups: Some(cfg.norm_num_groups),
                use_linear_projection: cfg.use_linear_projection,
                transformer_layers_per_block: last.use_cross_attn.unwrap_or(1),
                ..Default::default()
            },
        )?;
        let vu = vs.pp("up_blocks");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let b = cfg.blocks[n - 1 - i];
            let prev = if i > 0 {
                cfg.blocks[n - i].out_channels
            } else {
                last.out_channels
            };
            let input = cfg.blocks[if i == n - 1 { 0 } else { n - i - 2 }].out_channels;
            let basic = UpBlock2DConfig {
                num_layers: cfg.layers_per_block + 1,
                resnet_eps: cfg.norm_eps,
                resnet_groups: cfg.norm_num_groups,
                add_upsample: i < n - 1,
                ..Default::default()
            };
            up.push(match b.use_cross_attn {
                Some(layers) => Up::CrossAttn(CrossAttnUpBlock2D::new(
                    vu.pp(i.to_string()),
                    input,
                    prev,
                    b.out_channels,
                    Some(temb),
                    false,
                    CrossAttnUpBlock2DConfig {
                        upblock: basic,
                        attn_num_head_channels: b.attention_head_dim,
                        cross_attention_dim: cfg.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: cfg.use_linear_projection,
                        transformer_layers_per_block: layers,
                    },
                )?),
                None => Up::Basic(UpBlock2D::new(
                    vu.pp(i.to_string()),
                    input,
                    prev,
                    b.out_channels,
                    Some(temb),
                    basic,
                )?),
            });
        }
        Ok(UNet {
            norm_out: candle_nn::group_norm(
                cfg.norm_num_groups,
                first,
                cfg.norm_eps,
                vs.pp("conv_norm_out"),
            )?,
            conv_out: candle_nn::conv2d(first, 4, 3, conv3, vs.pp("conv_out"))?,
            cfg,
            conv_in,
            time_proj,
            time_embedding,
            added,
            down,
            mid,
            up,
        })
    }

    /// The prediction for latents `xs` (batch, 4, h, w) at `timestep` under `context`.
    pub fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<Added>,
    ) -> candle_core::Result<Tensor> {
        let (batch, _, h, w) = xs.dims4()?;
        let dtype = xs.dtype();
        let device = xs.device();
        let n = self.cfg.blocks.len();
        let factor = 1usize << (n - 1);
        let odd_size = h % factor != 0 || w % factor != 0;
        // The sinusoidal features in f32, as diffusers computes them.
        let t = (Tensor::ones(batch, DType::F32, device)? * timestep)?;
        let mut emb = self
            .time_embedding
            .forward(&self.time_proj.forward(&t)?.to_dtype(dtype)?)?;
        match (&self.added, added) {
            (Some((proj, embedding)), Some(a)) => {
                let ids = self
                    .time_proj_ids(proj, a.time_ids)?
                    .reshape((batch, 6 * TIME_ID_FEATURES))?;
                let joined =
                    Tensor::cat(&[&a.text_embeds.to_dtype(dtype)?, &ids.to_dtype(dtype)?], 1)?;
                emb = (emb + embedding.forward(&joined)?)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                candle_core::bail!(
                    "this UNet takes added conditioning (SDXL's pooled text and size ids)"
                )
            }
            (None, Some(_)) => candle_core::bail!("this UNet takes no added conditioning"),
        }
        let xs = if self.cfg.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        let mut xs = self.conv_in.forward(&xs)?;
        let mut residuals = vec![xs.clone()];
        for block in &self.down {
            let (out, res) = match block {
                Down::Basic(b) => b.forward(&xs, Some(&emb))?,
                Down::CrossAttn(b) => b.forward(&xs, Some(&emb), Some(context))?,
            };
            residuals.extend(res);
            xs = out;
        }
        xs = self.mid.forward(&xs, Some(&emb), Some(context))?;
        for (i, block) in self.up.iter().enumerate() {
            let count = match block {
                Up::Basic(b) => b.resnets.len(),
                Up::CrossAttn(b) => b.upblock.resnets.len(),
            };
            let res = residuals.split_off(residuals.len() - count);
            let size = match (i < n - 1 && odd_size, residuals.last()) {
                (true, Some(r)) => {
                    let (_, _, h, w) = r.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            xs = match block {
                Up::Basic(b) => b.forward(&xs, &res, Some(&emb), size)?,
                Up::CrossAttn(b) => b.forward(&xs, &res, Some(&emb), size, Some(context))?,
            };
        }
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }

    /// Each of the (batch, 6) ids through the sinusoidal features, in f32.
    fn time_proj_ids(&self, proj: &Timesteps, ids: &Tensor) -> candle_core::Result<Tensor> {
        proj.forward(&ids.to_dtype(DType::F32)?.flatten_all()?)
    }
}

/// SDXL's size and crop ids for a `width` x `height` picture drawn whole: original size,
/// crop top-left (0, 0), target size, as diffusers' pipeline passes them.
pub fn sdxl_time_ids(width: usize, height: usize) -> [f32; 6] {
    [
        height as f32,
        width as f32,
        0.0,
        0.0,
        height as f32,
        width as f32,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tiny() -> UNet2DConditionModelConfig {
        use candle_transformers::models::stable_diffusion::unet_2d::BlockConfig;
        UNet2DConditionModelConfig {
            blocks: vec![
                BlockConfig {
                    out_channels: 32,
                    use_cross_attn: None,
                    attention_head_dim: 8,
                },
                BlockConfig {
                    out_channels: 64,
                    use_cross_attn: Some(1),
                    attention_head_dim: 8,
                },
            ],
            cross_attention_dim: 48,
            use_linear_projection: true,
            ..Default::default()
        }
    }

    /// In f32, without added conditioning, the UNet is candle's: the same weights give the
    /// same prediction (the blocks are candle's; only the outer layer is baton's).
    #[test]
    fn without_added_conditioning_in_f32_it_is_candles_unet() {
        use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let ours = UNet::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            tiny(),
            None,
        )
        .unwrap();
        let tensors: std::collections::HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let theirs = UNet2DConditionModel::new(
            VarBuilder::from_tensors(tensors, DType::F32, &dev),
            4,
            4,
            false,
            tiny(),
        )
        .unwrap();
        let xs = Tensor::randn(0f32, 1.0, (1, 4, 16, 16), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (1, 7, 48), &dev).unwrap();
        let a = ours.forward(&xs, 999.0, &ctx, None).unwrap();
        let b = theirs.forward(&xs, 999.0, &ctx).unwrap();
        assert!(crate::images::max_abs_diff(&a, &b) < 1e-5);
    }

    /// With added conditioning, the pooled vector and the size ids change the prediction, and
    /// a UNet built for them refuses to run without them.
    #[test]
    fn added_conditioning_is_used_and_required() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let unet = UNet::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            tiny(),
            Some(12),
        )
        .unwrap();
        assert!(
            varmap
                .data()
                .lock()
                .unwrap()
                .contains_key("add_embedding.linear_1.weight")
        );
        let xs = Tensor::randn(0f32, 1.0, (1, 4, 16, 16), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (1, 7, 48), &dev).unwrap();
        let pooled = Tensor::randn(0f32, 1.0, (1, 12), &dev).unwrap();
        let run = |ids: [f32; 6]| {
            let ids = Tensor::new(&[ids], &dev).unwrap();
            let added = Added {
                text_embeds: &pooled,
                time_ids: &ids,
            };
            unet.forward(&xs, 500.0, &ctx, Some(added)).unwrap()
        };
        let a = run(sdxl_time_ids(512, 512));
        let b = run(sdxl_time_ids(1024, 1024));
        assert!(crate::images::max_abs_diff(&a, &b) > 1e-4);
        assert!(unet.forward(&xs, 500.0, &ctx, None).is_err());
    }

    /// The f16 timestep features are the f32 ones rounded once, not computed in f16: at
    /// t = 999 the highest frequency's phase is off by far less than the half radian that
    /// computing in f16 loses.
    #[test]
    fn timestep_features_are_computed_in_f32() {
        let dev = Device::Cpu;
        let proj = Timesteps::new(320, true, 0.0);
        let t = Tensor::new(&[999f32], &dev).unwrap();
        let exact = proj.forward(&t).unwrap();
        let in_f16 = proj.forward(&t.to_dtype(DType::F16).unwrap()).unwrap();
        let ours = exact
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let err = |x: &Tensor| crate::images::max_abs_diff(x, &exact);
        assert!(err(&ours) < 1e-3, "{}", err(&ours));
        assert!(err(&in_f16) > 0.05, "{}", err(&in_f16));
    }
}
