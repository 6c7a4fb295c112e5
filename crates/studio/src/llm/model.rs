//! The llama-family transformer (llama, qwen2) over quantized tensors that baton's loader has
//! already put on the device: candle's quantized llama and qwen2 read their own tensors out of
//! the file (one pageable copy each), so they cannot take tensors that came through the lanes.
//!
//! The computation is candle's, op for op (its `quantized_llama` and `quantized_qwen2`): the
//! tests hold the logits equal, bit for bit, on the same file. The one difference between the
//! two architectures is data: qwen2 adds biases to q, k and v and rotates halves (NeoX), llama
//! rotates interleaved pairs.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

use super::LlmError;

/// What the GGUF metadata says about the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: String,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_layer: usize,
    pub embedding: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    /// Rotate halves (qwen2) instead of interleaved pairs (llama).
    pub rope_neox: bool,
    pub rms_eps: f64,
    /// Positions the rotary tables cover.
    pub context: usize,
}

/// The file's `general.architecture` ("unknown" when it has none).
pub fn architecture(content: &Content) -> String {
    content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

/// The longest sequence a llama's rotary tables cover (candle's `quantized_llama` too).
pub const LLAMA_CONTEXT: usize = 4096;

impl Config {
    /// Reads the network's shape for `arch` ("llama" or "qwen2") from `metadata`; a missing key
    /// is named.
    pub fn from_metadata(
        arch: &str,
        metadata: &HashMap<String, Value>,
    ) -> Result<Config, LlmError> {
        let get = |key: &str| {
            let full = format!("{arch}.{key}");
            metadata
                .get(&full)
                .ok_or_else(|| LlmError::BadModel(format!("its metadata has no '{full}'")))
        };
        let int = |key: &str| -> Result<usize, LlmError> {
            let v = get(key)?;
            v.to_u32()
                .map(|n| n as usize)
                .or_else(|_| v.to_u64().map(|n| n as usize))
                .map_err(|e| LlmError::BadModel(format!("'{arch}.{key}': {e}")))
        };
        let float = |key: &str| -> Result<f32, LlmError> {
            get(key)?
                .to_f32()
                .map_err(|e| LlmError::BadModel(format!("'{arch}.{key}': {e}")))
        };
        if arch == "llama" && get("expert_count").is_ok_and(|v| v.to_u32().is_ok_and(|n| n > 0)) {
            return Err(LlmError::BadModel(
                "it is a mixture-of-experts llama, which baton does not run; use a dense llama or qwen2 GGUF".into(),
            ));
        }
        let n_head = int("attention.head_count")?;
        let embedding = int("embedding_length")?;
        if n_head == 0 || embedding % n_head != 0 {
            return Err(LlmError::BadModel(format!(
                "its embedding length {embedding} is not a whole number of its {n_head} heads"
            )));
        }
        let n_kv_head = int("attention.head_count_kv")?;
        if n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(LlmError::BadModel(format!(
                "its {n_head} heads cannot share {n_kv_head} key/value heads"
            )));
        }
        let qwen2 = arch == "qwen2";
        Ok(Config {
            arch: arch.to_string(),
            n_head,
            n_kv_head,
            n_layer: int("block_count")?,
            embedding,
            rope_dim: if qwen2 {
                embedding / n_head
            } else {
                int("rope.dimension_count")?
            },
            rope_base: float("rope.freq_base").unwrap_or(10_000.0),
            rope_neox: qwen2,
            rms_eps: f64::from(float("attention.layer_norm_rms_epsilon")?),
            context: if qwen2 {
                int("context_length")?
            } else {
                LLAMA_CONTEXT
            },
        })
    }

    pub fn head_dim(&self) -> usize {
        self.embedding / self.n_head
    }
}

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    /// qwen2's biases on q, k and v.
    bias: Option<[Tensor; 3]>,
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    gate: QMatMul,
    down: QMatMul,
    up: QMatMul,
    kv_cache: Option<(Tensor, Tensor)>,
}

/// A loaded llama or qwen2, ready for `forward`.
pub struct LlamaLike {
    config: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    masks: HashMap<(usize, usize), Tensor>,
}

/// Takes tensors out of a loaded file by name, saying which one is missing.
struct Take<'a> {
    tensors: &'a mut HashMap<String, QTensor>,
}

impl Take<'_> {
    fn q(&mut self, name: &str) -> Result<QTensor, LlmError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| LlmError::BadModel(format!("it has no tensor '{name}'")))
    }

    fn matmul(&mut self, name: &str) -> Result<QMatMul, LlmError> {
        Ok(QMatMul::from_qtensor(self.q(name)?)?)
    }

    fn dense(&mut self, name: &str, device: &Device) -> Result<Tensor, LlmError> {
        Ok(self.q(name)?.dequantize(device)?)
    }

    fn norm(&mut self, name: &str, eps: f64) -> Result<RmsNorm, LlmError> {
        Ok(RmsNorm::from_qtensor(self.q(name)?, eps)?)
    }
}

impl LlamaLike {
    /// Builds the network from `content`'s metadata and the tensors baton's loader brought to
    /// `device` (taken out of `tensors`).
    pub fn new(
        content: &Content,
        tensors: &mut HashMap<String, QTensor>,
        device: &Device,
    ) -> Result<LlamaLike, LlmError> {
        let config = Config::from_metadata(&architecture(content), &content.metadata)?;
        let mut take = Take { tensors };
        let eps = config.rms_eps;
        let embed_q = take.q("token_embd.weight")?;
        let embed = Embedding::new(embed_q.dequantize(device)?, config.embedding);
        let output = match take.q("output.weight") {
            Ok(q) => QMatMul::from_qtensor(q)?,
            // Tied embeddings: the output projection is the embedding matrix.
            Err(_) => QMatMul::from_qtensor(embed_q)?,
        };
        let norm = take.norm("output_norm.weight", eps)?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("blk.{i}");
            let bias = if config.arch == "qwen2" {
                Some([
                    take.dense(&format!("{p}.attn_q.bias"), device)?,
                    take.dense(&format!("{p}.attn_k.bias"), device)?,
                    take.dense(&format!("{p}.attn_v.bias"), device)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                wq: take.matmul(&format!("{p}.attn_q.weight"))?,
                wk: take.matmul(&format!("{p}.attn_k.weight"))?,
                wv: take.matmul(&format!("{p}.attn_v.weight"))?,
                wo: take.matmul(&format!("{p}.attn_output.weight"))?,
                bias,
                attn_norm: take.norm(&format!("{p}.attn_norm.weight"), eps)?,
                ffn_norm: take.norm(&format!("{p}.ffn_norm.weight"), eps)?,
                gate: take.matmul(&format!("{p}.ffn_gate.weight"))?,
                down: take.matmul(&format!("{p}.ffn_down.weight"))?,
                up: take.matmul(&format!("{p}.ffn_up.weight"))?,
                kv_cache: None,
            });
        }
        let (cos, sin) = rotary_tables(config.rope_dim, config.rope_base, config.context, device)?;
        Ok(LlamaLike {
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            config,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            masks: HashMap::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The logits of the last position of `x` (batch, sequence of token ids), whose first token
    /// sits at `index_pos`; the key/value cache keeps what came before.
    pub fn forward(&mut self, x: &Tensor, index_pos: usize) -> candle_core::Result<Tensor> {
        let (_batch, seq_len) = x.dims2()?;
        let mask = if seq_len == 1 {
            None
        } else {
            let key = (seq_len, index_pos + seq_len);
            let mask = match self.masks.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                std::collections::hash_map::Entry::Vacant(e) => e
                    .insert(build_causal_mask(seq_len, index_pos, x.device())?)
                    .clone(),
            };
            Some(mask)
        };
        let mut h = self.embed.forward(x)?;
        for i in 0..self.layers.len() {
            let residual = h.clone();
            let normed = self.layers[i].attn_norm.forward(&h)?;
            let attn = self.attention(i, &normed, mask.as_ref(), index_pos)?;
            let h1 = (attn + residual)?;
            let layer = &self.layers[i];
            let normed = layer.ffn_norm.forward(&h1)?;
            let gate = layer.gate.forward(&normed)?;
            let up = layer.up.forward(&normed)?;
            let mlp = layer.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
            h = (mlp + h1)?;
        }
        let h = self.norm.forward(&h)?;
        let last = h.i((.., seq_len - 1, ..))?;
        self.output.forward(&last)
    }

    fn rotate(&self, x: &Tensor, index_pos: usize) -> candle_core::Result<Tensor> {
        let (_b, _h, seq_len, _d) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        let x = x.contiguous()?;
        if self.config.rope_neox {
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)
        }
    }

    fn attention(
        &mut self,
        i: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        index_pos: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, seq_len, n_embd) = x.dims3()?;
        let (n_head, n_kv, head_dim) = (
            self.config.n_head,
            self.config.n_kv_head,
            self.config.head_dim(),
        );
        let layer = &self.layers[i];
        let mut q = layer.wq.forward(x)?;
        let mut k = layer.wk.forward(x)?;
        let mut v = layer.wv.forward(x)?;
        if let Some([bq, bk, bv]) = &layer.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let q = q.reshape((b, seq_len, n_head, head_dim))?.transpose(1, 2)?;
        let k = k.reshape((b, seq_len, n_kv, head_dim))?.transpose(1, 2)?;
        let v = v
            .reshape((b, seq_len, n_kv, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.rotate(&q, index_pos)?;
        let k = self.rotate(&k, index_pos)?;
        let layer = &mut self.layers[i];
        let (k, v) = match &layer.kv_cache {
            Some((k_cache, v_cache)) if index_pos > 0 => (
                Tensor::cat(&[k_cache, &k], 2)?,
                Tensor::cat(&[v_cache, &v], 2)?,
            ),
            _ => (k, v),
        };
        layer.kv_cache = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, n_head / n_kv)?;
        let v = repeat_kv(v, n_head / n_kv)?;
        let att = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let att = match mask {
            None => att,
            Some(mask) => {
                let mask = mask.broadcast_as(att.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(mask.shape().dims())?, &att)?
            }
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, seq_len, n_embd))?;
        layer.wo.forward(&y)
    }
}

/// cos and sin of every position's rotation angles, as candle computes them.
fn rotary_tables(
    dim: usize,
    base: f32,
    positions: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / dim as f32))
        .collect();
    let n = theta.len();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&theta.reshape((1, n))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::{quantized_llama, quantized_qwen2};

    /// Logits for a 5-token prompt, then two single tokens through the cache.
    fn logits(mut step: impl FnMut(&Tensor, usize) -> Tensor) -> Vec<Vec<f32>> {
        let prompt = Tensor::new(&[[3u32, 40, 41, 7, 90]], &Device::Cpu).unwrap();
        let mut out = vec![step(&prompt, 0)];
        for (pos, id) in [(5usize, 12u32), (6, 77)] {
            let x = Tensor::new(&[[id]], &Device::Cpu).unwrap();
            out.push(step(&x, pos));
        }
        out.iter()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn same_logits_as_candle(arch: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        crate::llm::tiny::write_tiny(&path, 11, arch).unwrap();
        let options = baton_weights::LoadOptions {
            lanes: 3,
            chunk_bytes: 4099,
            ..Default::default()
        };
        let mut loaded = baton_weights::load_gguf(&path, &Device::Cpu, &options).unwrap();
        let mut ours = LlamaLike::new(&loaded.content, &mut loaded.tensors, &Device::Cpu).unwrap();
        assert_eq!(ours.config().arch, arch);
        let mine = logits(|x, pos| ours.forward(x, pos).unwrap());

        let mut file = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut file).unwrap();
        let theirs = match arch {
            "llama" => {
                let mut m =
                    quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
                        .unwrap();
                logits(|x, pos| m.forward(x, pos).unwrap())
            }
            _ => {
                let mut m =
                    quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
                        .unwrap();
                logits(|x, pos| m.forward(x, pos).unwrap())
            }
        };
        assert_eq!(mine.len(), 3);
        assert!(mine[0].len() > 100, "one logit per vocabulary entry");
        assert!(mine.iter().flatten().all(|x| x.is_finite()));
        // Different steps give different logits: the cache and positions are in play.
        assert_ne!(mine[1], mine[2]);
        assert_eq!(mine, theirs, "{arch}: logits differ from candle's model");
    }

    #[test]
    fn llama_logits_equal_candles_bit_for_bit() {
        same_logits_as_candle("llama");
    }

    #[test]
    fn qwen2_logits_equal_candles_bit_for_bit() {
        same_logits_as_candle("qwen2");
    }

    #[test]
    fn a_missing_tensor_and_a_missing_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        crate::llm::tiny::write_tiny(&path, 1, "llama").unwrap();
        let mut loaded =
            baton_weights::load_gguf(&path, &Device::Cpu, &Default::default()).unwrap();
        loaded.tensors.remove("blk.1.ffn_up.weight");
        let err = LlamaLike::new(&loaded.content, &mut loaded.tensors, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("'blk.1.ffn_up.weight'"), "{err}");
        let mut metadata = loaded.content.metadata.clone();
        metadata.remove("llama.block_count");
        let err = Config::from_metadata("llama", &metadata)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'llama.block_count'"), "{err}");
    }
}
