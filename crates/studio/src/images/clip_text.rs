//! CLIP's text encoder as the diffusion pipelines use it, with what candle's two CLIP modules
//! lack: the activation a checkpoint names (OpenCLIP's exact GELU; candle's SD module runs the
//! tanh approximation for SD 2.x and SDXL's second encoder), the hidden states of the
//! second-to-last layer (what SDXL conditions on), and the projected pooled vector (SDXL's
//! `text_embeds`). Weight names are transformers' `CLIPTextModel[WithProjection]`'s.

use candle_core::{DType, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// The MLP's activation, as a checkpoint's `hidden_act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// OpenAI CLIP's `quick_gelu`: x * sigmoid(1.702 x).
    QuickGelu,
    /// OpenCLIP's `gelu`: the exact (erf) GELU.
    Gelu,
}

impl Act {
    /// Its name in a transformers config.
    pub fn hidden_act(self) -> &'static str {
        match self {
            Act::QuickGelu => "quick_gelu",
            Act::Gelu => "gelu",
        }
    }
}

/// One text encoder's shape.
#[derive(Debug, Clone, Copy)]
pub struct ClipConfig {
    pub vocab: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub act: Act,
    /// Positions (CLIP's context, 77).
    pub positions: usize,
    /// The pooled vector's projection (`text_projection`), for encoders whose pooled output is
    /// used projected (SDXL's second).
    pub projection: Option<usize>,
    /// The token that pads a prompt to the context when the tokenizer folder names none: the
    /// end token (None) or another ("!": OpenCLIP's).
    pub pad_with: Option<&'static str>,
}

impl ClipConfig {
    /// OpenAI's CLIP ViT-L/14 text model (SD 1.5, SDXL's first encoder, FLUX's pooled vector).
    pub const L: ClipConfig = ClipConfig {
        vocab: 49408,
        width: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
        act: Act::QuickGelu,
        positions: 77,
        projection: None,
        pad_with: None,
    };
    /// OpenCLIP ViT-H/14 as SD 2.x ships it: its last layer dropped (23 of 24).
    pub const H_SD2: ClipConfig = ClipConfig {
        vocab: 49408,
        width: 1024,
        layers: 23,
        heads: 16,
        intermediate: 4096,
        act: Act::Gelu,
        positions: 77,
        projection: None,
        pad_with: Some("!"),
    };
    /// OpenCLIP ViT-bigG/14 (SDXL's second encoder), with its projection.
    pub const BIG_G: ClipConfig = ClipConfig {
        vocab: 49408,
        width: 1280,
        layers: 32,
        heads: 20,
        intermediate: 5120,
        act: Act::Gelu,
        positions: 77,
        projection: Some(1280),
        pad_with: Some("!"),
    };

    /// Its transformers `config.json` (what a diffusers folder holds beside the weights).
    pub fn to_transformers_json(&self, eos_token_id: u32) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "architectures": [if self.projection.is_some() {
                "CLIPTextModelWithProjection"
            } else {
                "CLIPTextModel"
            }],
            "model_type": "clip_text_model",
            "vocab_size": self.vocab,
            "hidden_size": self.width,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "hidden_act": self.act.hidden_act(),
            "max_position_embeddings": self.positions,
            "layer_norm_eps": 1e-5,
            "bos_token_id": 0,
            "eos_token_id": eos_token_id,
            "pad_token_id": 1,
        });
        cfg["projection_dim"] = serde_json::json!(self.projection.unwrap_or(self.width));
        cfg
    }
}

struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// What one prompt (or a batch of them) encodes to.
pub struct Encoded {
    /// The last layer's hidden states after the final norm (SD 1.5, 2.x; FLUX's pooled source).
    pub last: Tensor,
    /// The second-to-last layer's hidden states, no final norm (SDXL's conditioning).
    pub penultimate: Tensor,
}

/// A CLIP text encoder with its weights.
pub struct ClipText {
    cfg: ClipConfig,
    token_embedding: candle_nn::Embedding,
    position_embedding: candle_nn::Embedding,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    projection: Option<Linear>,
}

impl ClipText {
    /// Built from `vb` holding a transformers CLIP text model (`text_model.*`, and
    /// `text_projection.weight` when the config has a projection).
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<ClipText> {
        let tm = vb.pp("text_model");
        let w = cfg.width;
        let emb = tm.pp("embeddings");
        let enc = tm.pp("encoder.layers");
        let layers = (0..cfg.layers)
            .map(|i| {
                let l = enc.pp(i.to_string());
                let a = l.pp("self_attn");
                Ok(Layer {
                    norm1: candle_nn::layer_norm(w, 1e-5, l.pp("layer_norm1"))?,
                    q: candle_nn::linear(w, w, a.pp("q_proj"))?,
                    k: candle_nn::linear(w, w, a.pp("k_proj"))?,
                    v: candle_nn::linear(w, w, a.pp("v_proj"))?,
                    out: candle_nn::linear(w, w, a.pp("out_proj"))?,
                    norm2: candle_nn::layer_norm(w, 1e-5, l.pp("layer_norm2"))?,
                    fc1: candle_nn::linear(w, cfg.intermediate, l.pp("mlp.fc1"))?,
                    fc2: candle_nn::linear(cfg.intermediate, w, l.pp("mlp.fc2"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ClipText {
            cfg: *cfg,
            token_embedding: candle_nn::embedding(cfg.vocab, w, emb.pp("token_embedding"))?,
            position_embedding: candle_nn::embedding(
                cfg.positions,
                w,
                emb.pp("position_embedding"),
            )?,
            layers,
            final_norm: candle_nn::layer_norm(w, 1e-5, tm.pp("final_layer_norm"))?,
            projection: match cfg.projection {
                Some(p) => Some(candle_nn::linear_no_bias(w, p, vb.pp("text_projection"))?),
                None => None,
            },
        })
    }

    /// `ids` (batch, seq) through the encoder under CLIP's causal mask.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Encoded> {
        let (batch, seq) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, seq as u32, device)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask: Vec<f32> = (0..seq)
            .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (seq, seq), device)?;
        let heads = self.cfg.heads;
        let head_dim = self.cfg.width / heads;
        let scale = (head_dim as f64).powf(-0.5);
        let mut penultimate = xs.clone();
        let last_index = self.layers.len().saturating_sub(2);
        for (i, l) in self.layers.iter().enumerate() {
            let h = l.norm1.forward(&xs)?;
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((batch, seq, heads, head_dim))?
                    .transpose(1, 2)?
                    .to_dtype(DType::F32)?
                    .contiguous()
            };
            let q = split((l.q.forward(&h)? * scale)?)?;
            let k = split(l.k.forward(&h)?)?;
            let v = split(l.v.forward(&h)?)?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let attn = attn
                .transpose(1, 2)?
                .reshape((batch, seq, self.cfg.width))?
                .to_dtype(xs.dtype())?;
            xs = (xs + l.out.forward(&attn)?)?;
            let h = l.fc1.forward(&l.norm2.forward(&xs)?)?;
            let h = match self.cfg.act {
                Act::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
                Act::Gelu => h.gelu_erf()?,
            };
            xs = (xs + l.fc2.forward(&h)?)?;
            if i == last_index {
                penultimate = xs.clone();
            }
        }
        Ok(Encoded {
            last: self.final_norm.forward(&xs)?,
            penultimate,
        })
    }

    /// The pooled vector: the last hidden state (after the final norm) at the end token of
    /// each row, projected when the encoder has a projection. `eos_at`: the end token's
    /// position in each row.
    pub fn pooled(&self, encoded: &Encoded, eos_at: &[usize]) -> candle_core::Result<Tensor> {
        let rows = eos_at
            .iter()
            .enumerate()
            .map(|(b, at)| encoded.last.i((b, *at)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&rows, 0)?;
        match &self.projection {
            Some(p) => p.forward(&pooled),
            None => Ok(pooled),
        }
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// With quick GELU, the last hidden states equal candle's CLIP text model's (the same
    /// weights), and the penultimate layer is what candle's `forward_until_encoder_layer`
    /// returns for -2: the structure, names and mask are transformers'.
    #[test]
    fn equals_candles_clip_where_candle_has_the_same_activation() {
        use candle_transformers::models::clip::text_model::{
            Activation, ClipTextConfig, ClipTextTransformer,
        };
        let dev = Device::Cpu;
        let cfg = ClipConfig {
            vocab: 64,
            width: 32,
            layers: 3,
            heads: 4,
            intermediate: 64,
            act: Act::QuickGelu,
            positions: 16,
            projection: None,
            pad_with: None,
        };
        let mut tensors = std::collections::HashMap::new();
        // Random weights for every name the module asks for.
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let ours = ClipText::new(vb, &cfg).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            // Layer norms start at ones and zeros; give them spread too.
            let t = var.as_tensor();
            let noise = Tensor::randn(0f32, 0.2, t.shape(), &dev).unwrap();
            var.set(&(t + noise).unwrap()).unwrap();
            tensors.insert(name.clone(), var.as_tensor().clone());
        }
        let theirs = ClipTextTransformer::new(
            VarBuilder::from_tensors(tensors, DType::F32, &dev).pp("text_model"),
            &ClipTextConfig {
                vocab_size: 64,
                embed_dim: 32,
                activation: Activation::QuickGelu,
                intermediate_size: 64,
                max_position_embeddings: 16,
                pad_with: None,
                num_hidden_layers: 3,
                num_attention_heads: 4,
                projection_dim: 32,
            },
        )
        .unwrap();
        let ids = Tensor::new(&[[0u32, 5, 9, 33, 1, 1, 1, 1]], &dev).unwrap();
        let encoded = ours.forward(&ids).unwrap();
        let reference = theirs.forward_with_mask(&ids, usize::MAX).unwrap();
        let diff = crate::images::max_abs_diff(&encoded.last, &reference);
        assert!(diff < 1e-5, "last hidden states differ by {diff}");
        let pooled = ours.pooled(&encoded, &[4]).unwrap();
        assert_eq!(pooled.dims(), &[1, 32]);
        let at_eos = reference.i((0, 4)).unwrap().unsqueeze(0).unwrap();
        assert!(crate::images::max_abs_diff(&pooled, &at_eos) < 1e-5);
        // The penultimate layer differs from the last (a layer ran after it).
        assert!(crate::images::max_abs_diff(&encoded.penultimate, &encoded.last) > 1e-3);
    }

    /// The exact GELU is not the tanh approximation: the two differ where it matters.
    #[test]
    fn openclips_gelu_is_the_exact_one() {
        let x = Tensor::new(&[-3f32, -1.5, -0.7, 0.3, 2.2], &Device::Cpu).unwrap();
        let exact = x.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let tanh = x.gelu().unwrap().to_vec1::<f32>().unwrap();
        // GELU(-3) = -3 * Phi(-3) = -0.0040496.
        assert!((exact[0] + 0.0040496).abs() < 1e-6, "{exact:?}");
        assert!(exact.iter().zip(&tanh).any(|(a, b)| (a - b).abs() > 1e-4));
    }
}
