//! FLUX.1's transformer, built block by block so that its weights need not all be on the device
//! at once: the same computation as candle's `flux::model::Flux` (a test holds the two to the
//! same numbers), but its parts (the embedders and final layer, each double-stream block, each
//! single-stream block) are separate values, and the denoising loop runs every scene through a
//! block before it moves to the next. The blocks come resident (all loaded once) or streamed
//! from host memory a block at a time ([`BlockSource`]); either way the same code computes, so
//! a streamed run draws the same pictures as a resident one. Its weights are dense tensors (a
//! safetensors checkpoint) or quantized ones (a GGUF file: Q8_0, Q6_K, Q4_K and the other block
//! types candle's quantized matrix products take), through one [`Weights`] source.

use std::collections::HashMap;

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{LayerNorm, RmsNorm, VarBuilder};
use candle_transformers::models::flux::model::Config;

/// Where the transformer's weights come from, at a prefix of their names.
#[derive(Clone)]
pub(super) enum Weights {
    /// Dense tensors, in the dtype the model computes in.
    Dense(VarBuilder<'static>),
    /// A GGUF file's tensors: matrices stay quantized; vectors (biases, norms) are dequantized
    /// to `dtype`, the dtype the model computes in.
    Quantized {
        tensors: Arc<HashMap<String, Arc<QTensor>>>,
        prefix: String,
        dtype: DType,
        device: Device,
    },
}

impl Weights {
    /// GGUF tensors loaded on `device`, computed in `dtype`.
    pub(super) fn quantized(
        tensors: HashMap<String, QTensor>,
        dtype: DType,
        device: &Device,
    ) -> Weights {
        Weights::Quantized {
            tensors: Arc::new(tensors.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            prefix: String::new(),
            dtype,
            device: device.clone(),
        }
    }

    fn pp(&self, part: impl ToString) -> Weights {
        match self {
            Weights::Dense(vb) => Weights::Dense(vb.pp(part.to_string())),
            Weights::Quantized {
                tensors,
                prefix,
                dtype,
                device,
            } => Weights::Quantized {
                tensors: tensors.clone(),
                prefix: format!("{prefix}{}.", part.to_string()),
                dtype: *dtype,
                device: device.clone(),
            },
        }
    }

    fn dtype(&self) -> DType {
        match self {
            Weights::Dense(vb) => vb.dtype(),
            Weights::Quantized { dtype, .. } => *dtype,
        }
    }

    fn device(&self) -> &Device {
        match self {
            Weights::Dense(vb) => vb.device(),
            Weights::Quantized { device, .. } => device,
        }
    }

    fn quantized_tensor(&self, name: &str, dims: &[usize]) -> Result<Arc<QTensor>> {
        let Weights::Quantized {
            tensors, prefix, ..
        } = self
        else {
            unreachable!("only for quantized weights")
        };
        let full = format!("{prefix}{name}");
        let t = tensors
            .get(&full)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: full.clone() })?;
        if t.shape().dims() != dims {
            candle_core::bail!(
                "'{full}' has shape {:?}, the model expects {dims:?}",
                t.shape()
            )
        }
        Ok(t.clone())
    }

    /// A vector (a bias, a norm's scale), in the compute dtype.
    fn vector(&self, dim: usize, name: &str) -> Result<Tensor> {
        match self {
            Weights::Dense(vb) => vb.get(dim, name),
            Weights::Quantized { dtype, device, .. } => self
                .quantized_tensor(name, &[dim])?
                .dequantize(device)?
                .to_dtype(*dtype),
        }
    }

    /// A linear layer `in_dim` to `out_dim`, with a bias if `bias`.
    fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        match self {
            Weights::Dense(vb) => Ok(Linear::Dense(candle_nn::linear_b(
                in_dim,
                out_dim,
                bias,
                vb.clone(),
            )?)),
            Weights::Quantized { dtype, device, .. } => {
                use candle_core::quantized::GgmlDType;
                let weight = self.quantized_tensor("weight", &[out_dim, in_dim])?;
                let bias = match bias {
                    true => Some(self.vector(out_dim, "bias")?),
                    false => None,
                };
                match weight.dtype() {
                    // A matrix the file keeps in floats is a dense layer in the compute dtype.
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                        let w = weight.dequantize(device)?.to_dtype(*dtype)?;
                        Ok(Linear::Dense(candle_nn::Linear::new(w, bias)))
                    }
                    _ => Ok(Linear::Quantized(QMatMul::from_arc(weight)?, bias)),
                }
            }
        }
    }
}

/// A linear layer over dense or quantized weights.
#[derive(Clone)]
enum Linear {
    Dense(candle_nn::Linear),
    Quantized(QMatMul, Option<Tensor>),
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(l) => l.forward(xs),
            Linear::Quantized(w, bias) => {
                // The quantized products read their input whole.
                let ys = xs.contiguous()?.apply(w)?;
                match bias {
                    Some(b) => ys.broadcast_add(b),
                    None => Ok(ys),
                }
            }
        }
    }
}

fn layer_norm(dim: usize, vb: &Weights) -> Result<LayerNorm> {
    let ones = Tensor::ones(dim, vb.dtype(), vb.device())?;
    Ok(LayerNorm::new_no_bias(ones, 1e-6))
}

fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let mut dims = q.dims().to_vec();
    dims.pop();
    dims.pop();
    let keep = dims.len() - 1;
    let (q, k, v) = (
        q.flatten_to(keep)?,
        k.flatten_to(keep)?,
        v.flatten_to(keep)?,
    );
    let weights = (q.matmul(&k.t()?)? * scale)?;
    let scores = candle_nn::ops::softmax_last_dim(&weights)?.matmul(&v)?;
    dims.push(scores.dim(D::Minus2)?);
    dims.push(scores.dim(D::Minus1)?);
    scores.reshape(dims)
}

fn rope(pos: &Tensor, dim: usize, theta: usize) -> Result<Tensor> {
    if dim % 2 == 1 {
        candle_core::bail!("rope dimension {dim} is odd")
    }
    let inv_freq: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / (theta as f64).powf(i as f64 / dim as f64) as f32)
        .collect();
    let n = inv_freq.len();
    let inv_freq = Tensor::from_vec(inv_freq, (1, 1, n), pos.device())?.to_dtype(pos.dtype())?;
    let freqs = pos.unsqueeze(2)?.broadcast_mul(&inv_freq)?;
    let (cos, sin) = (freqs.cos()?, freqs.sin()?);
    let out = Tensor::stack(&[&cos, &sin.neg()?, &sin, &cos], 3)?;
    let (b, n, d, _) = out.dims4()?;
    out.reshape((b, n, d, 2, 2))
}

fn apply_rope(x: &Tensor, freq_cis: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (b, heads, seq, embd) = x.dims4()?;
    let x = x.reshape((b, heads, seq, embd / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let fr0 = freq_cis.get_on_dim(D::Minus1, 0)?;
    let fr1 = freq_cis.get_on_dim(D::Minus1, 1)?;
    (fr0.broadcast_mul(&x0)? + fr1.broadcast_mul(&x1)?)?.reshape(dims.to_vec())
}

fn attention(q: &Tensor, k: &Tensor, v: &Tensor, pe: &Tensor) -> Result<Tensor> {
    let q = apply_rope(q, pe)?.contiguous()?;
    let k = apply_rope(k, pe)?.contiguous()?;
    scaled_dot_product_attention(&q, &k, v)?
        .transpose(1, 2)?
        .flatten_from(2)
}

/// The sinusoidal embedding of a timestep (or of the guidance), as FLUX.1's reference.
fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
    const TIME_FACTOR: f64 = 1000.;
    const MAX_PERIOD: f64 = 10000.;
    let half = dim / 2;
    let t = (t * TIME_FACTOR)?;
    let arange = Tensor::arange(0, half as u32, t.device())?.to_dtype(DType::F32)?;
    let freqs = (arange * (-MAX_PERIOD.ln() / half as f64))?.exp()?;
    let args = t
        .unsqueeze(1)?
        .to_dtype(DType::F32)?
        .broadcast_mul(&freqs.unsqueeze(0)?)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(dtype)
}

/// The position embedding of the text and image tokens' ids.
fn position_embedding(ids: &Tensor, cfg: &Config) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(cfg.axes_dim.len());
    for (i, dim) in cfg.axes_dim.iter().enumerate() {
        parts.push(rope(&ids.get_on_dim(D::Minus1, i)?, *dim, cfg.theta)?);
    }
    Tensor::cat(&parts, 2)?.unsqueeze(1)
}

#[derive(Clone)]
struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    fn new(in_sz: usize, h_sz: usize, vb: &Weights) -> Result<Self> {
        Ok(Self {
            in_layer: vb.pp("in_layer").linear(in_sz, h_sz, true)?,
            out_layer: vb.pp("out_layer").linear(h_sz, h_sz, true)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.in_layer)?.silu()?.apply(&self.out_layer)
    }
}

#[derive(Clone)]
struct QkNorm {
    query: RmsNorm,
    key: RmsNorm,
}

impl QkNorm {
    fn new(dim: usize, vb: &Weights) -> Result<Self> {
        Ok(Self {
            query: RmsNorm::new(vb.vector(dim, "query_norm.scale")?, 1e-6),
            key: RmsNorm::new(vb.vector(dim, "key_norm.scale")?, 1e-6),
        })
    }
}

struct Modulated {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl Modulated {
    fn scale_shift(&self, xs: &Tensor) -> Result<Tensor> {
        xs.broadcast_mul(&(&self.scale + 1.)?)?
            .broadcast_add(&self.shift)
    }

    fn gate(&self, xs: &Tensor) -> Result<Tensor> {
        self.gate.broadcast_mul(xs)
    }
}

/// `vec`'s modulation in `n` groups of shift, scale and gate.
fn modulation(lin: &Linear, vec_: &Tensor, n: usize) -> Result<Vec<Modulated>> {
    let ys = vec_
        .silu()?
        .apply(lin)?
        .unsqueeze(1)?
        .chunk(3 * n, D::Minus1)?;
    if ys.len() != 3 * n {
        candle_core::bail!("a modulation gave {} chunks, not {}", ys.len(), 3 * n)
    }
    Ok(ys
        .chunks(3)
        .map(|c| Modulated {
            shift: c[0].clone(),
            scale: c[1].clone(),
            gate: c[2].clone(),
        })
        .collect())
}

#[derive(Clone)]
struct SelfAttention {
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: &Weights) -> Result<Self> {
        let dim = cfg.hidden_size;
        Ok(Self {
            qkv: vb.pp("qkv").linear(dim, dim * 3, cfg.qkv_bias)?,
            norm: QkNorm::new(dim / cfg.num_heads, &vb.pp("norm"))?,
            proj: vb.pp("proj").linear(dim, dim, true)?,
            heads: cfg.num_heads,
        })
    }

    fn qkv(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let qkv = xs.apply(&self.qkv)?;
        let (b, l, _) = qkv.dims3()?;
        let qkv = qkv.reshape((b, l, 3, self.heads, ()))?;
        let q = qkv.i((.., .., 0))?.transpose(1, 2)?;
        let k = qkv.i((.., .., 1))?.transpose(1, 2)?;
        let v = qkv.i((.., .., 2))?.transpose(1, 2)?;
        Ok((q.apply(&self.norm.query)?, k.apply(&self.norm.key)?, v))
    }
}

#[derive(Clone)]
struct Mlp {
    lin1: Linear,
    lin2: Linear,
}

impl Mlp {
    fn new(cfg: &Config, vb: &Weights) -> Result<Self> {
        let (h, mlp) = (cfg.hidden_size, mlp_size(cfg));
        Ok(Self {
            lin1: vb.pp("0").linear(h, mlp, true)?,
            lin2: vb.pp("2").linear(mlp, h, true)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.lin1)?.gelu()?.apply(&self.lin2)
    }
}

fn mlp_size(cfg: &Config) -> usize {
    (cfg.hidden_size as f64 * cfg.mlp_ratio) as usize
}

/// One stream (image or text) of a double-stream block.
#[derive(Clone)]
struct Stream {
    modulation: Linear,
    norm1: LayerNorm,
    attn: SelfAttention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Stream {
    fn new(cfg: &Config, vb: &Weights, side: &str) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            modulation: vb.pp(format!("{side}_mod.lin")).linear(h, 6 * h, true)?,
            norm1: layer_norm(h, vb)?,
            attn: SelfAttention::new(cfg, &vb.pp(format!("{side}_attn")))?,
            norm2: layer_norm(h, vb)?,
            mlp: Mlp::new(cfg, &vb.pp(format!("{side}_mlp")))?,
        })
    }

    /// Modulation and the attention's inputs.
    fn before(&self, xs: &Tensor, vec_: &Tensor) -> Result<(Vec<Modulated>, [Tensor; 3])> {
        let m = modulation(&self.modulation, vec_, 2)?;
        let (q, k, v) = self.attn.qkv(&m[0].scale_shift(&xs.apply(&self.norm1)?)?)?;
        Ok((m, [q, k, v]))
    }

    /// The attention's output projected and gated in, then the MLP.
    fn after(&self, xs: &Tensor, m: &[Modulated], attn: &Tensor) -> Result<Tensor> {
        let xs = (xs + m[0].gate(&attn.apply(&self.attn.proj)?))?;
        let mlp = self
            .mlp
            .forward(&m[1].scale_shift(&xs.apply(&self.norm2)?)?)?;
        &xs + m[1].gate(&mlp)?
    }
}

/// A double-stream block: image and text tokens with their own weights, attending jointly.
#[derive(Clone)]
pub(super) struct DoubleBlock {
    img: Stream,
    txt: Stream,
}

impl DoubleBlock {
    pub(super) fn new(cfg: &Config, vb: &Weights) -> Result<Self> {
        Ok(Self {
            img: Stream::new(cfg, vb, "img")?,
            txt: Stream::new(cfg, vb, "txt")?,
        })
    }

    fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec_: &Tensor,
        pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (img_m, [img_q, img_k, img_v]) = self.img.before(img, vec_)?;
        let (txt_m, [txt_q, txt_k, txt_v]) = self.txt.before(txt, vec_)?;
        let q = Tensor::cat(&[txt_q, img_q], 2)?;
        let k = Tensor::cat(&[txt_k, img_k], 2)?;
        let v = Tensor::cat(&[txt_v, img_v], 2)?;
        let attn = attention(&q, &k, &v, pe)?;
        let n_txt = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, n_txt)?;
        let img_attn = attn.narrow(1, n_txt, attn.dim(1)? - n_txt)?;
        Ok((
            self.img.after(img, &img_m, &img_attn)?,
            self.txt.after(txt, &txt_m, &txt_attn)?,
        ))
    }
}

/// A single-stream block: text and image tokens joined, one set of weights.
#[derive(Clone)]
pub(super) struct SingleBlock {
    linear1: Linear,
    linear2: Linear,
    norm: QkNorm,
    pre_norm: LayerNorm,
    modulation: Linear,
    hidden: usize,
    mlp: usize,
    heads: usize,
}

impl SingleBlock {
    pub(super) fn new(cfg: &Config, vb: &Weights) -> Result<Self> {
        let (h, mlp) = (cfg.hidden_size, mlp_size(cfg));
        Ok(Self {
            linear1: vb.pp("linear1").linear(h, h * 3 + mlp, true)?,
            linear2: vb.pp("linear2").linear(h + mlp, h, true)?,
            norm: QkNorm::new(h / cfg.num_heads, &vb.pp("norm"))?,
            pre_norm: layer_norm(h, vb)?,
            modulation: vb.pp("modulation.lin").linear(h, 3 * h, true)?,
            hidden: h,
            mlp,
            heads: cfg.num_heads,
        })
    }

    fn forward(&self, xs: &Tensor, vec_: &Tensor, pe: &Tensor) -> Result<Tensor> {
        let m = modulation(&self.modulation, vec_, 1)?.remove(0);
        let x_mod = m
            .scale_shift(&xs.apply(&self.pre_norm)?)?
            .apply(&self.linear1)?;
        let qkv = x_mod.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let (b, l, _) = qkv.dims3()?;
        let qkv = qkv.reshape((b, l, 3, self.heads, ()))?;
        let q = qkv.i((.., .., 0))?.transpose(1, 2)?;
        let k = qkv.i((.., .., 1))?.transpose(1, 2)?;
        let v = qkv.i((.., .., 2))?.transpose(1, 2)?;
        let mlp = x_mod.narrow(D::Minus1, 3 * self.hidden, self.mlp)?;
        let q = q.apply(&self.norm.query)?;
        let k = k.apply(&self.norm.key)?;
        let attn = attention(&q, &k, &v, pe)?;
        let out = Tensor::cat(&[attn, mlp.gelu()?], 2)?.apply(&self.linear2)?;
        xs + m.gate(&out)?
    }
}

/// Everything outside the blocks: the embedders in and the final layer out (a few hundred MB at
/// FLUX.1's size), resident for the whole phase.
pub(super) struct Head {
    cfg: Config,
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    final_norm: LayerNorm,
    final_linear: Linear,
    final_modulation: Linear,
}

/// The prefixes of the tensors outside the blocks.
pub(super) const HEAD_PREFIXES: [&str; 6] = [
    "img_in.",
    "txt_in.",
    "time_in.",
    "vector_in.",
    "guidance_in.",
    "final_layer.",
];

impl Head {
    pub(super) fn new(cfg: &Config, vb: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let fl = vb.pp("final_layer");
        Ok(Self {
            cfg: cfg.clone(),
            img_in: vb.pp("img_in").linear(cfg.in_channels, h, true)?,
            txt_in: vb.pp("txt_in").linear(cfg.context_in_dim, h, true)?,
            time_in: MlpEmbedder::new(256, h, &vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(cfg.vec_in_dim, h, &vb.pp("vector_in"))?,
            guidance_in: match cfg.guidance_embed {
                true => Some(MlpEmbedder::new(256, h, &vb.pp("guidance_in"))?),
                false => None,
            },
            final_norm: layer_norm(h, &fl)?,
            final_linear: fl.pp("linear").linear(h, cfg.in_channels, true)?,
            final_modulation: fl.pp("adaLN_modulation.1").linear(h, 2 * h, true)?,
        })
    }

    /// A scene's hidden state for timestep `t`: tokens embedded, the conditioning vector.
    pub(super) fn enter(
        &self,
        scene: &Scene,
        t: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Hidden> {
        let dtype = scene.img.dtype();
        let mut vec_ = self.time_in.forward(&timestep_embedding(t, 256, dtype)?)?;
        if let (Some(g_in), Some(g)) = (&self.guidance_in, guidance) {
            vec_ = (vec_ + g_in.forward(&timestep_embedding(g, 256, dtype)?)?)?;
        }
        let vec_ = (vec_ + self.vector_in.forward(&scene.y)?)?;
        Ok(Hidden {
            img: scene.img.apply(&self.img_in)?,
            txt: scene.txt.apply(&self.txt_in)?,
            joined: None,
            vec_,
        })
    }

    /// The velocity the transformer predicts, from a scene's hidden state after every block.
    pub(super) fn leave(&self, hidden: Hidden) -> Result<Tensor> {
        let n_txt = hidden.txt.dim(1)?;
        let joined = hidden.joined.expect("the single blocks ran");
        let img = joined.i((.., n_txt..))?;
        let chunks = hidden
            .vec_
            .silu()?
            .apply(&self.final_modulation)?
            .chunk(2, 1)?;
        let (shift, scale) = (&chunks[0], &chunks[1]);
        img.apply(&self.final_norm)?
            .broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
            .broadcast_add(&shift.unsqueeze(1)?)?
            .apply(&self.final_linear)
    }

    pub(super) fn config(&self) -> &Config {
        &self.cfg
    }
}

/// One scene's inputs to the transformer: packed latents, T5's context, CLIP's vector, and the
/// position embedding of its tokens (computed once).
pub(super) struct Scene {
    pub(super) img: Tensor,
    pub(super) txt: Tensor,
    pub(super) y: Tensor,
    pub(super) pe: Tensor,
}

impl Scene {
    /// `img` packed (1, tokens, 64), `txt` T5's (1, n, 4096), `y` CLIP's pooled (1, 768).
    pub(super) fn new(
        cfg: &Config,
        img: Tensor,
        img_ids: &Tensor,
        txt: Tensor,
        txt_ids: &Tensor,
        y: Tensor,
    ) -> Result<Scene> {
        let ids = Tensor::cat(&[txt_ids, img_ids], 1)?;
        Ok(Scene {
            pe: position_embedding(&ids, cfg)?,
            img,
            txt,
            y,
        })
    }
}

/// A scene's state between blocks.
pub(super) struct Hidden {
    img: Tensor,
    txt: Tensor,
    /// After the double blocks: text and image tokens joined.
    joined: Option<Tensor>,
    vec_: Tensor,
}

/// Which block, in the order a step runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BlockId {
    Double(usize),
    Single(usize),
}

impl BlockId {
    /// Every block of `cfg`, in order.
    pub(super) fn all(cfg: &Config) -> Vec<BlockId> {
        (0..cfg.depth)
            .map(BlockId::Double)
            .chain((0..cfg.depth_single_blocks).map(BlockId::Single))
            .collect()
    }

    /// The prefix of its tensors' names.
    pub(super) fn prefix(self) -> String {
        match self {
            BlockId::Double(i) => format!("double_blocks.{i}."),
            BlockId::Single(i) => format!("single_blocks.{i}."),
        }
    }
}

/// A block with its weights on the device.
#[derive(Clone)]
pub(super) enum Block {
    Double(Box<DoubleBlock>),
    Single(SingleBlock),
}

impl Block {
    /// Block `id` from a `VarBuilder` at the model's root.
    pub(super) fn new(cfg: &Config, id: BlockId, vb: &Weights) -> Result<Block> {
        Ok(match id {
            BlockId::Double(i) => Block::Double(Box::new(DoubleBlock::new(
                cfg,
                &vb.pp("double_blocks").pp(i),
            )?)),
            BlockId::Single(i) => {
                Block::Single(SingleBlock::new(cfg, &vb.pp("single_blocks").pp(i))?)
            }
        })
    }

    /// One scene through this block.
    pub(super) fn forward(&self, scene: &Scene, hidden: &mut Hidden) -> Result<()> {
        match self {
            Block::Double(b) => {
                (hidden.img, hidden.txt) =
                    b.forward(&hidden.img, &hidden.txt, &hidden.vec_, &scene.pe)?;
            }
            Block::Single(b) => {
                let joined = match hidden.joined.take() {
                    Some(j) => j,
                    None => Tensor::cat(&[&hidden.txt, &hidden.img], 1)?,
                };
                hidden.joined = Some(b.forward(&joined, &hidden.vec_, &scene.pe)?);
            }
        }
        Ok(())
    }
}

/// Where the blocks' weights are while the transformer runs.
pub(super) trait BlockSource {
    /// Block `id` ready on the device; `next` is the block that will be asked for after it,
    /// if any (a streamed source starts copying it now).
    fn block(&mut self, id: BlockId, next: Option<BlockId>) -> Result<Block>;

    /// Bytes copied to the device so far (nothing, for resident blocks).
    fn streamed_bytes(&self) -> u64 {
        0
    }
}

/// Every block loaded once.
pub(super) struct Resident(Vec<(BlockId, Block)>);

impl Resident {
    pub(super) fn new(cfg: &Config, vb: &Weights) -> Result<Resident> {
        BlockId::all(cfg)
            .into_iter()
            .map(|id| Ok((id, Block::new(cfg, id, vb)?)))
            .collect::<Result<_>>()
            .map(Resident)
    }
}

impl BlockSource for Resident {
    fn block(&mut self, id: BlockId, _next: Option<BlockId>) -> Result<Block> {
        let (_, block) = self
            .0
            .iter()
            .find(|(b, _)| *b == id)
            .expect("a block of the model");
        Ok(block.clone())
    }
}

/// Blocks copied from host memory to the device one ahead of their use, so that the copy of
/// the next overlaps the computation of this one; at most two blocks are on the device.
pub(super) struct Streamed<'a> {
    cfg: Config,
    host: &'a baton_weights::HostWeights,
    names: HashMap<String, Vec<String>>,
    dtype: DType,
    device: Device,
    pending: Option<(BlockId, baton_weights::Upload)>,
    /// Bytes copied so far.
    copied: u64,
}

impl<'a> Streamed<'a> {
    pub(super) fn new(
        cfg: &Config,
        host: &'a baton_weights::HostWeights,
        dtype: DType,
        device: &Device,
    ) -> Streamed<'a> {
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        for id in BlockId::all(cfg) {
            let prefix = id.prefix();
            names.insert(
                prefix.clone(),
                host.names()
                    .filter(|n| n.starts_with(&prefix))
                    .map(str::to_string)
                    .collect(),
            );
        }
        Streamed {
            cfg: cfg.clone(),
            host,
            names,
            dtype,
            device: device.clone(),
            pending: None,
            copied: 0,
        }
    }

    fn upload(&mut self, id: BlockId) -> Result<baton_weights::Upload> {
        let names = &self.names[&id.prefix()];
        let upload = self
            .host
            .upload(names.iter().map(String::as_str))
            .map_err(candle_core::Error::wrap)?;
        self.copied += upload.bytes();
        Ok(upload)
    }
}

impl BlockSource for Streamed<'_> {
    fn block(&mut self, id: BlockId, next: Option<BlockId>) -> Result<Block> {
        let upload = match self.pending.take() {
            Some((pending, upload)) if pending == id => upload,
            _ => self.upload(id)?,
        };
        if let Some(next) = next {
            self.pending = Some((next, self.upload(next)?));
        }
        let tensors = upload.ready(self.dtype).map_err(candle_core::Error::wrap)?;
        let vb = VarBuilder::from_tensors(tensors, self.dtype, &self.device);
        Block::new(&self.cfg, id, &Weights::Dense(vb))
    }

    fn streamed_bytes(&self) -> u64 {
        self.copied
    }
}

/// One denoising step for every scene: each block in turn, every scene through it while it is
/// on the device; returns each scene's predicted velocity. `last` says no step follows (a
/// streamed source then copies nothing ahead past the final block).
pub(super) fn step(
    head: &Head,
    blocks: &mut dyn BlockSource,
    scenes: &[Scene],
    t: &Tensor,
    guidance: Option<&Tensor>,
    last: bool,
) -> Result<Vec<Tensor>> {
    let mut hidden = scenes
        .iter()
        .map(|s| head.enter(s, t, guidance))
        .collect::<Result<Vec<_>>>()?;
    let ids = BlockId::all(head.config());
    for (i, id) in ids.iter().enumerate() {
        let next = match ids.get(i + 1) {
            Some(n) => Some(*n),
            None if !last => ids.first().copied(),
            None => None,
        };
        let block = blocks.block(*id, next)?;
        for (scene, h) in scenes.iter().zip(hidden.iter_mut()) {
            block.forward(scene, h)?;
        }
    }
    hidden.into_iter().map(|h| head.leave(h)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::flux::WithForward;

    /// The tiny Flux's config with two blocks of each kind (so that streaming has a block to copy
    /// ahead) and random weights for every tensor candle's model asks for.
    fn tiny() -> (Config, candle_nn::VarMap) {
        let Some(super::super::Arch::Flux(fx)) =
            super::super::family::find("tiny-flux").map(|f| &f.arch)
        else {
            unreachable!("tiny-flux is a Flux")
        };
        let mut cfg = (fx.transformer)();
        cfg.depth = 2;
        cfg.depth_single_blocks = 2;
        let map = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        candle_transformers::models::flux::model::Flux::new(&cfg, vb).unwrap();
        let data = map.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let var = &data[name];
            let t = var.as_tensor();
            let noise = crate::images::gaussian(t.elem_count(), 7 + i as u64);
            let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
            var.set(&(noise * 0.2).unwrap()).unwrap();
        }
        drop(data);
        (cfg, map)
    }

    /// A scene's inputs: packed latents, T5 context, CLIP vector, and their ids.
    fn inputs(cfg: &Config) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        let dev = &Device::Cpu;
        let noise =
            Tensor::from_vec(crate::images::gaussian(16 * 8 * 8, 1), (1, 16, 8, 8), dev).unwrap();
        let context = Tensor::from_vec(
            crate::images::gaussian(5 * cfg.context_in_dim, 2),
            (1, 5, cfg.context_in_dim),
            dev,
        )
        .unwrap();
        let pooled = Tensor::from_vec(
            crate::images::gaussian(cfg.vec_in_dim, 3),
            (1, cfg.vec_in_dim),
            dev,
        )
        .unwrap();
        let s = candle_transformers::models::flux::sampling::State::new(&context, &pooled, &noise)
            .unwrap();
        (s.img, s.img_ids, s.txt, s.txt_ids, s.vec)
    }

    fn one_step(cfg: &Config, head: &Head, blocks: &mut dyn BlockSource, last: bool) -> Vec<f32> {
        let (img, img_ids, txt, txt_ids, y) = inputs(cfg);
        let scenes = [Scene::new(cfg, img, &img_ids, txt, &txt_ids, y).unwrap()];
        let t = Tensor::full(0.7f32, 1, &Device::Cpu).unwrap();
        let g = Tensor::full(3.5f32, 1, &Device::Cpu).unwrap();
        step(head, blocks, &scenes, &t, Some(&g), last).unwrap()[0]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// baton's block-by-block transformer computes what candle's Flux computes, to the bit.
    #[test]
    fn the_block_by_block_transformer_is_candles_flux() {
        let (cfg, map) = tiny();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let reference =
            candle_transformers::models::flux::model::Flux::new(&cfg, vb.clone()).unwrap();
        let (img, img_ids, txt, txt_ids, y) = inputs(&cfg);
        let t = Tensor::full(0.7f32, 1, &Device::Cpu).unwrap();
        let g = Tensor::full(3.5f32, 1, &Device::Cpu).unwrap();
        let want: Vec<f32> = reference
            .forward(&img, &img_ids, &txt, &txt_ids, &t, &y, Some(&g))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let weights = Weights::Dense(vb);
        let head = Head::new(&cfg, &weights).unwrap();
        let got = one_step(
            &cfg,
            &head,
            &mut Resident::new(&cfg, &weights).unwrap(),
            true,
        );
        assert_eq!(got.len(), want.len());
        assert!(
            want.iter().any(|v| v.abs() > 1e-3),
            "the velocity is not trivially zero"
        );
        assert_eq!(got, want, "baton's Flux differs from candle's");
    }

    /// Blocks streamed from host memory (copied one ahead) give the velocity resident blocks
    /// give, over two steps (the second starts from the block copied ahead at the end of the
    /// first), and copy every block's bytes each step.
    #[test]
    fn streamed_blocks_compute_what_resident_blocks_compute() {
        let (cfg, map) = tiny();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flux.safetensors");
        map.save(&file).unwrap();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let weights = Weights::Dense(vb);
        let head = Head::new(&cfg, &weights).unwrap();
        let mut resident = Resident::new(&cfg, &weights).unwrap();
        let want = one_step(&cfg, &head, &mut resident, true);

        // Two groups, the single blocks last: the step waits for them while they load.
        let host = baton_weights::HostWeights::load(&[file], &Device::Cpu, |n| {
            usize::from(n.starts_with("single_blocks."))
        })
        .unwrap();
        let mut streamed = Streamed::new(&cfg, &host, DType::F32, &Device::Cpu);
        let first = one_step(&cfg, &head, &mut streamed, false);
        let second = one_step(&cfg, &head, &mut streamed, true);
        assert_eq!(first, want);
        assert_eq!(second, want);
        let blocks: u64 = host.bytes_of(
            host.names()
                .filter(|n| n.starts_with("double_blocks.") || n.starts_with("single_blocks.")),
        );
        assert!(blocks > 0);
        assert_eq!(
            streamed.streamed_bytes(),
            2 * blocks,
            "each step copies every block once"
        );
    }

    /// A GGUF transformer: the matrices quantized (Q8_0), the vectors kept in f32. Read through
    /// the quantized path with f32 "blocks" it is the dense model to the bit; in Q8_0 its
    /// velocity is that of the same weights dequantized and run dense, within the error of the
    /// quantized product (which quantizes the activations to 8 bits too): 3% RMS.
    #[test]
    fn a_q8_0_transformer_computes_what_its_dequantized_weights_compute() {
        use candle_core::quantized::GgmlDType;
        let (cfg, map) = tiny();
        let run = |matrices: GgmlDType| {
            let mut quantized = HashMap::new();
            let mut dequantized = HashMap::new();
            for (name, var) in map.data().lock().unwrap().iter() {
                let t = var.as_tensor();
                let block = if t.rank() == 2 {
                    matrices
                } else {
                    GgmlDType::F32
                };
                let q = QTensor::quantize(t, block).unwrap();
                dequantized.insert(name.clone(), q.dequantize(&Device::Cpu).unwrap());
                quantized.insert(name.clone(), q);
            }
            let dense = Weights::Dense(VarBuilder::from_tensors(
                dequantized,
                DType::F32,
                &Device::Cpu,
            ));
            let want = one_step(
                &cfg,
                &Head::new(&cfg, &dense).unwrap(),
                &mut Resident::new(&cfg, &dense).unwrap(),
                true,
            );
            let q = Weights::quantized(quantized, DType::F32, &Device::Cpu);
            let got = one_step(
                &cfg,
                &Head::new(&cfg, &q).unwrap(),
                &mut Resident::new(&cfg, &q).unwrap(),
                true,
            );
            (got, want)
        };
        let (got, want) = run(GgmlDType::F32);
        assert_eq!(
            got, want,
            "the quantized path with f32 blocks is the dense model"
        );
        let (got, want) = run(GgmlDType::Q8_0);
        let rms = |v: &mut dyn Iterator<Item = f32>| {
            let (sum, n) = v.fold((0f64, 0usize), |(s, n), x| (s + (x as f64).powi(2), n + 1));
            (sum / n as f64).sqrt()
        };
        let error = rms(&mut got.iter().zip(&want).map(|(a, b)| a - b));
        let size = rms(&mut want.iter().copied());
        eprintln!("Q8_0: RMS error {error} against an RMS velocity of {size}");
        assert!(got != want, "the Q8_0 product is not the dense one");
        assert!(
            error <= 0.03 * size,
            "RMS error {error} against an RMS velocity of {size}"
        );
    }
}
