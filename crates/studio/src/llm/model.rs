//! The llama-family transformer (llama, qwen2, gemma3) over quantized tensors that baton's
//! loader has already put on the device: candle's quantized models read their own tensors out
//! of the file (one pageable copy each), so they cannot take tensors that came through the lanes.
//!
//! The computation is candle's, op for op (its `quantized_llama` and `quantized_qwen2`): the
//! tests hold the logits equal, bit for bit, on the same file. One exception, for speed: a
//! prompt on the CPU is multiplied by dequantized weights (`DENSE_FROM`), which a test holds
//! equal to the dequantized model and close to candle's token-at-a-time rounding.
//!
//! The differences between the architectures are data: qwen2 adds biases to q, k and v and
//! rotates halves (NeoX), llama rotates interleaved pairs. gemma3 adds norms on q and k and
//! after attention and the MLP, scales the embeddings, uses GELU, and lets five of every six
//! layers see only a sliding window of recent tokens (with their own rotary base). Its
//! reference is candle's full-precision `gemma3` (HF semantics), not candle's
//! `quantized_gemma3`, whose MLP uses SiLU where the model was trained with GELU, and whose
//! decoding ignores the sliding window.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

use super::LlmError;

/// The architectures baton runs, as `general.architecture` names them.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

/// What the GGUF metadata says about the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: String,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_layer: usize,
    pub embedding: usize,
    /// Width of one attention head (gemma3's is not `embedding / n_head`).
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    /// Rotate halves (qwen2, gemma3) instead of interleaved pairs (llama).
    pub rope_neox: bool,
    pub rms_eps: f64,
    /// Positions the rotary tables cover.
    pub context: usize,
    /// gemma3: how far back the sliding-window layers see, which layers those are (all but
    /// every `sliding_pattern`-th), and their rotary base.
    pub sliding: Option<Sliding>,
}

/// gemma3's local attention layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sliding {
    pub window: usize,
    pub pattern: usize,
    pub rope_base: f32,
}

impl Config {
    fn gemma(&self) -> bool {
        self.arch == "gemma3"
    }

    /// Whether layer `i` sees only the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding
            .is_some_and(|s| !(i + 1).is_multiple_of(s.pattern))
    }
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
    /// Reads the network's shape for `arch` (one of `ARCHITECTURES`) from `metadata`; a missing key
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
        // qwen3 is qwen2 with per-head q/k norms and no q/k/v biases; its heads may be wider
        // than embedding / heads (Qwen3-0.6B: 16 heads of 128 in 1024).
        let qwen2 = arch == "qwen2" || arch == "qwen3";
        let gemma = arch == "gemma3";
        let head_dim = if gemma {
            int("attention.key_length")?
        } else if arch == "qwen3" {
            int("attention.key_length").unwrap_or(embedding / n_head)
        } else {
            embedding / n_head
        };
        let sliding = if gemma {
            let pattern = int("attention.sliding_window_type").unwrap_or(GEMMA_SLIDING_PATTERN);
            if pattern == 0 {
                return Err(LlmError::BadModel(
                    "'gemma3.attention.sliding_window_type' is 0".into(),
                ));
            }
            Some(Sliding {
                window: int("attention.sliding_window")?.max(1),
                pattern,
                rope_base: float("rope.local_freq_base").unwrap_or(10_000.0),
            })
        } else {
            None
        };
        Ok(Config {
            arch: arch.to_string(),
            n_head,
            n_kv_head,
            n_layer: int("block_count")?,
            embedding,
            head_dim,
            rope_dim: if qwen2 || gemma {
                head_dim
            } else {
                int("rope.dimension_count")?
            },
            rope_base: float("rope.freq_base").unwrap_or(if gemma {
                1_000_000.0
            } else {
                10_000.0
            }),
            rope_neox: qwen2 || gemma,
            rms_eps: f64::from(float("attention.layer_norm_rms_epsilon")?),
            context: if qwen2 || gemma {
                int("context_length")?.min(MAX_CONTEXT)
            } else {
                LLAMA_CONTEXT
            },
            sliding,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// gemma3: every sixth layer attends to everything, when the file does not say otherwise.
const GEMMA_SLIDING_PATTERN: usize = 6;

/// The rotary tables are built for at most this many positions (a storyboard needs a few
/// thousand; a 128k table would hold gigabytes).
const MAX_CONTEXT: usize = 32_768;

/// On the CPU a forward pass of this many tokens or more (a prompt) multiplies by dequantized
/// f32 copies of the weights, made one matrix at a time and dropped after use: candle's quantized
/// matmul computes one token at a time, about as slowly as decoding, where a dense matrix
/// product takes a whole prompt at once (SmolLM2 on 2 cores: 322 tokens in 0.6 s instead of
/// 8.3 s). Decoding, one token at a time, keeps the quantized weights: it is bound by reading
/// them, and f32 copies are four to eight times the bytes.
const DENSE_FROM: usize = 16;

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    /// qwen2's biases on q, k and v.
    bias: Option<[Tensor; 3]>,
    /// gemma3's and qwen3's norms on q and k per head; gemma3's after attention and after the
    /// MLP.
    qk_norm: Option<[RmsNorm; 2]>,
    post_norm: Option<[RmsNorm; 2]>,
    /// Sees only the last `window` tokens (gemma3's local layers).
    window: Option<usize>,
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    gate: QMatMul,
    down: QMatMul,
    up: QMatMul,
    kv_cache: Option<(Tensor, Tensor)>,
}

/// A loaded llama, qwen2, qwen3 or gemma3, ready for `forward`.
pub struct LlamaLike {
    config: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    /// Rotary tables: the global ones, and the sliding layers' (gemma3).
    rope: Rotary,
    local_rope: Option<Rotary>,
    neg_inf: Tensor,
    /// (new tokens, all tokens, window) → mask.
    masks: HashMap<(usize, usize, Option<usize>), Tensor>,
    /// Prompts on the CPU are multiplied densely (`DENSE_FROM`).
    dense_prompts: bool,
}

struct Rotary {
    cos: Tensor,
    sin: Tensor,
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
            let (qk_norm, post_norm) = if config.arch == "qwen3" {
                (
                    Some([
                        take.norm(&format!("{p}.attn_q_norm.weight"), eps)?,
                        take.norm(&format!("{p}.attn_k_norm.weight"), eps)?,
                    ]),
                    None,
                )
            } else if config.gemma() {
                (
                    Some([
                        take.norm(&format!("{p}.attn_q_norm.weight"), eps)?,
                        take.norm(&format!("{p}.attn_k_norm.weight"), eps)?,
                    ]),
                    Some([
                        take.norm(&format!("{p}.post_attention_norm.weight"), eps)?,
                        take.norm(&format!("{p}.post_ffw_norm.weight"), eps)?,
                    ]),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                qk_norm,
                post_norm,
                window: config
                    .sliding
                    .filter(|_| config.is_sliding(i))
                    .map(|s| s.window),
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
        // gemma3's reference computes the angles' base in f64, the llama family's in f32.
        let wide = config.gemma();
        // Llama 3.1's long-context scaling: llama.cpp's files carry per-frequency divisors.
        let factors = match take.q("rope_freqs.weight") {
            Ok(q) => Some(q.dequantize(&Device::Cpu)?.to_vec1::<f32>()?),
            Err(_) => None,
        };
        let rope = rotary_tables(
            config.rope_dim,
            config.rope_base,
            config.context,
            wide,
            factors.as_deref(),
            device,
        )?;
        let local_rope = match config.sliding {
            Some(s) => Some(rotary_tables(
                config.rope_dim,
                s.rope_base,
                config.context,
                wide,
                None,
                device,
            )?),
            None => None,
        };
        Ok(LlamaLike {
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            config,
            embed,
            layers,
            norm,
            output,
            rope,
            local_rope,
            masks: HashMap::new(),
            dense_prompts: true,
        })
    }

    /// Whether prompts on the CPU are multiplied by dequantized weights (the default) or, as
    /// candle's quantized models do, one token at a time (a test compares the two).
    pub fn set_dense_prompts(&mut self, on: bool) {
        self.dense_prompts = on;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The logits of the last position of `x` (batch, sequence of token ids), whose first token
    /// sits at `index_pos`; the key/value cache keeps what came before.
    /// Keeps the first `len` positions of every layer's key/value cache and drops the rest, so
    /// the next `forward` can start at `len`: a prompt that shares its beginning with the
    /// last one computes only what differs.
    pub fn truncate_cache(&mut self, len: usize) -> candle_core::Result<()> {
        for layer in &mut self.layers {
            layer.kv_cache = match layer.kv_cache.take() {
                Some((k, v)) if len > 0 && k.dim(2)? >= len => {
                    Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?))
                }
                _ => None,
            };
        }
        Ok(())
    }

    pub fn forward(&mut self, x: &Tensor, index_pos: usize) -> candle_core::Result<Tensor> {
        let (_batch, seq_len) = x.dims2()?;
        let dense = self.dense_prompts && seq_len >= DENSE_FROM && x.device().is_cpu();
        let gemma = self.config.gemma();
        let mut h = self.embed.forward(x)?;
        if gemma {
            h = (h * (self.config.embedding as f64).sqrt())?;
        }
        for i in 0..self.layers.len() {
            let mask = if seq_len == 1 {
                None
            } else {
                Some(self.mask(seq_len, index_pos, self.layers[i].window, x.device())?)
            };
            let residual = h.clone();
            let normed = self.layers[i].attn_norm.forward(&h)?;
            let mut attn = self.attention(i, &normed, mask.as_ref(), index_pos, dense)?;
            let layer = &self.layers[i];
            if let Some([after_attention, _]) = &layer.post_norm {
                attn = after_attention.forward(&attn)?;
            }
            let h1 = (attn + residual)?;
            let normed = layer.ffn_norm.forward(&h1)?;
            let gate = multiply(&layer.gate, &normed, dense)?;
            let up = multiply(&layer.up, &normed, dense)?;
            // gemma3 was trained with GELU (tanh form), the llama family with SiLU.
            let act = if gemma {
                gate.gelu()?
            } else {
                candle_nn::ops::silu(&gate)?
            };
            let mut mlp = multiply(&layer.down, &(act * up)?, dense)?;
            if let Some([_, after_mlp]) = &layer.post_norm {
                mlp = after_mlp.forward(&mlp)?;
            }
            h = (mlp + h1)?;
        }
        let h = self.norm.forward(&h)?;
        let last = h.i((.., seq_len - 1, ..))?;
        self.output.forward(&last)
    }

    /// The mask for `seq_len` new tokens after `index_pos` cached ones: a token sees itself and
    /// those before it, and in a sliding layer only the last `window` of them (HF's rule).
    fn mask(
        &mut self,
        seq_len: usize,
        index_pos: usize,
        window: Option<usize>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let key = (seq_len, index_pos + seq_len, window);
        if let Some(mask) = self.masks.get(&key) {
            return Ok(mask.clone());
        }
        let mask = match window {
            None => build_causal_mask(seq_len, index_pos, device)?,
            Some(window) => {
                let kv_len = index_pos + seq_len;
                let values: Vec<u8> = (0..seq_len)
                    .flat_map(|i| {
                        let at = index_pos + i;
                        (0..kv_len).map(move |j| u8::from(j > at || at - j >= window))
                    })
                    .collect();
                Tensor::from_slice(&values, (seq_len, kv_len), device)?
            }
        };
        self.masks.insert(key, mask.clone());
        Ok(mask)
    }

    fn rotate(&self, x: &Tensor, index_pos: usize, local: bool) -> candle_core::Result<Tensor> {
        let (_b, _h, seq_len, _d) = x.dims4()?;
        let table = match (&self.local_rope, local) {
            (Some(local), true) => local,
            _ => &self.rope,
        };
        let cos = table.cos.narrow(0, index_pos, seq_len)?;
        let sin = table.sin.narrow(0, index_pos, seq_len)?;
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
        dense: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, seq_len, _) = x.dims3()?;
        let (n_head, n_kv, head_dim) = (
            self.config.n_head,
            self.config.n_kv_head,
            self.config.head_dim(),
        );
        let layer = &self.layers[i];
        let mut q = multiply(&layer.wq, x, dense)?;
        let mut k = multiply(&layer.wk, x, dense)?;
        let mut v = multiply(&layer.wv, x, dense)?;
        if let Some([bq, bk, bv]) = &layer.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let mut q = q.reshape((b, seq_len, n_head, head_dim))?.transpose(1, 2)?;
        let mut k = k.reshape((b, seq_len, n_kv, head_dim))?.transpose(1, 2)?;
        let v = v
            .reshape((b, seq_len, n_kv, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        if let Some([q_norm, k_norm]) = &layer.qk_norm {
            q = q_norm.forward(&q.contiguous()?)?;
            k = k_norm.forward(&k.contiguous()?)?;
        }
        let window = layer.window;
        let q = self.rotate(&q, index_pos, window.is_some())?;
        let k = self.rotate(&k, index_pos, window.is_some())?;
        let layer = &mut self.layers[i];
        let (k, v) = match &layer.kv_cache {
            Some((k_cache, v_cache)) if index_pos > 0 => (
                Tensor::cat(&[k_cache, &k], 2)?,
                Tensor::cat(&[v_cache, &v], 2)?,
            ),
            _ => (k, v),
        };
        layer.kv_cache = Some((k.clone(), v.clone()));
        // One new token in a sliding layer sees only the window's last keys (the mask does this
        // for several).
        let (k, v) = match window {
            Some(w) if seq_len == 1 && k.dim(2)? > w => {
                let from = k.dim(2)? - w;
                (k.narrow(2, from, w)?, v.narrow(2, from, w)?)
            }
            _ => (k, v),
        };
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
        let y = y
            .transpose(1, 2)?
            .reshape((b, seq_len, n_head * head_dim))?;
        multiply(&layer.wo, &y, dense)
    }
}

/// `x` times the weight `w`: through a dequantized copy when `dense` (`DENSE_FROM`), else as
/// the weight is stored.
fn multiply(w: &QMatMul, x: &Tensor, dense: bool) -> candle_core::Result<Tensor> {
    match w {
        QMatMul::QTensor(q) if dense => QMatMul::Tensor(q.dequantize(x.device())?).forward(x),
        _ => w.forward(x),
    }
}

/// cos and sin of every position's rotation angles, as candle computes them (its gemma3 raises
/// the base in f64: `wide`), each frequency divided by its factor when the file gives them
/// (llama.cpp's `rope_freqs`).
fn rotary_tables(
    dim: usize,
    base: f32,
    positions: usize,
    wide: bool,
    factors: Option<&[f32]>,
    device: &Device,
) -> candle_core::Result<Rotary> {
    let theta: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| {
            let theta = if wide {
                1f32 / f64::from(base).powf(i as f64 / dim as f64) as f32
            } else {
                1f32 / base.powf(i as f32 / dim as f32)
            };
            match factors.and_then(|f| f.get(i / 2)) {
                Some(factor) if *factor > 0.0 => theta / factor,
                _ => theta,
            }
        })
        .collect();
    let n = theta.len();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&theta.reshape((1, n))?)?;
    Ok(Rotary {
        cos: angles.cos()?,
        sin: angles.sin()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};

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
            "qwen3" => {
                let mut m =
                    quantized_qwen3::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
                        .unwrap();
                logits(|x, pos| {
                    // candle's qwen3 returns every position's logits for a prompt; the last
                    // is what the others return.
                    let out = m.forward(x, pos).unwrap();
                    match out.rank() {
                        3 => out.i((.., out.dim(1).unwrap() - 1, ..)).unwrap(),
                        _ => out,
                    }
                })
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
        if arch == "qwen3" {
            // candle's qwen3 attends through its CPU flash-attention kernel (another order of
            // summation): equal to rounding, not to the bit.
            let worst = max_difference(&mine, &theirs);
            assert!(
                worst < 1e-3,
                "qwen3: logits differ from candle's by {worst}"
            );
        } else {
            assert_eq!(mine, theirs, "{arch}: logits differ from candle's model");
        }
    }

    #[test]
    fn llama_logits_equal_candles_bit_for_bit() {
        same_logits_as_candle("llama");
    }

    #[test]
    fn qwen2_logits_equal_candles_bit_for_bit() {
        same_logits_as_candle("qwen2");
    }

    /// qwen3 (per-head q/k norms, heads wider than embedding / heads) against candle's
    /// quantized qwen3.
    #[test]
    fn qwen3_logits_equal_candles() {
        same_logits_as_candle("qwen3");
    }

    /// candle's full-precision gemma3 (Hugging Face's names and norms, which store weight - 1)
    /// on the same tiny file's tensors.
    fn candle_gemma3(path: &std::path::Path) -> candle_transformers::models::gemma3::Model {
        use crate::llm::tiny::{self, gemma3 as g};
        let mut file = std::fs::File::open(path).unwrap();
        let content = Content::read(&mut file).unwrap();
        let mut hf = HashMap::new();
        for name in content.tensor_infos.keys() {
            let t = content
                .tensor(&mut file, name, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let (to, norm) = match name.as_str() {
                "token_embd.weight" => ("model.embed_tokens.weight".to_string(), false),
                "output_norm.weight" => ("model.norm.weight".to_string(), true),
                _ => {
                    let rest = name.strip_prefix("blk.").unwrap();
                    let (layer, what) = rest.split_once('.').unwrap();
                    let (part, norm) = match what {
                        "attn_q.weight" => ("self_attn.q_proj", false),
                        "attn_k.weight" => ("self_attn.k_proj", false),
                        "attn_v.weight" => ("self_attn.v_proj", false),
                        "attn_output.weight" => ("self_attn.o_proj", false),
                        "attn_q_norm.weight" => ("self_attn.q_norm", true),
                        "attn_k_norm.weight" => ("self_attn.k_norm", true),
                        "attn_norm.weight" => ("input_layernorm", true),
                        "post_attention_norm.weight" => ("post_attention_layernorm", true),
                        "ffn_norm.weight" => ("pre_feedforward_layernorm", true),
                        "post_ffw_norm.weight" => ("post_feedforward_layernorm", true),
                        "ffn_gate.weight" => ("mlp.gate_proj", false),
                        "ffn_up.weight" => ("mlp.up_proj", false),
                        "ffn_down.weight" => ("mlp.down_proj", false),
                        other => panic!("unexpected tensor {other}"),
                    };
                    (format!("model.layers.{layer}.{part}.weight"), norm)
                }
            };
            hf.insert(to, if norm { (t - 1.0).unwrap() } else { t });
        }
        let vocab = hf["model.embed_tokens.weight"].dim(0).unwrap();
        let config: candle_transformers::models::gemma3::Config =
            serde_json::from_value(serde_json::json!({
                "attention_bias": false,
                "head_dim": g::HEAD_DIM,
                "hidden_activation": "gelu_pytorch_tanh",
                "hidden_size": tiny::DIM,
                "intermediate_size": tiny::FF,
                "num_attention_heads": tiny::HEADS,
                "num_hidden_layers": g::LAYERS,
                "num_key_value_heads": tiny::KV_HEADS,
                "rms_norm_eps": g::EPS,
                "rope_theta": g::ROPE_BASE,
                "rope_local_base_freq": g::LOCAL_ROPE_BASE,
                "vocab_size": vocab,
                "final_logit_softcapping": null,
                "attn_logit_softcapping": null,
                "query_pre_attn_scalar": g::HEAD_DIM,
                "sliding_window": g::WINDOW,
                "sliding_window_pattern": g::PATTERN,
                "max_position_embeddings": 4096
            }))
            .unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(hf, DType::F32, &Device::Cpu);
        candle_transformers::models::gemma3::Model::new(false, &config, vb).unwrap()
    }

    fn tiny_gemma3(dir: &tempfile::TempDir) -> LlamaLike {
        let path = dir.path().join("gemma3.gguf");
        crate::llm::tiny::write_tiny_gemma3(&path, 5).unwrap();
        let mut loaded =
            baton_weights::load_gguf(&path, &Device::Cpu, &Default::default()).unwrap();
        LlamaLike::new(&loaded.content, &mut loaded.tensors, &Device::Cpu).unwrap()
    }

    fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A 3-token prompt, then six tokens one by one: the local layers' window (4) is passed, so
    /// what they forget is checked too.
    fn gemma_steps(mut step: impl FnMut(&Tensor, usize) -> Tensor) -> Vec<Vec<f32>> {
        let prompt = Tensor::new(&[[2u32, 40, 41]], &Device::Cpu).unwrap();
        let mut out = vec![step(&prompt, 0)];
        for (pos, id) in [(3usize, 12u32), (4, 77), (5, 9), (6, 200), (7, 31), (8, 64)] {
            let x = Tensor::new(&[[id]], &Device::Cpu).unwrap();
            out.push(step(&x, pos));
        }
        out.iter()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn gemma3_logits_equal_candles_full_precision_gemma3() {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = tiny_gemma3(&dir);
        assert_eq!(ours.config().head_dim, crate::llm::tiny::gemma3::HEAD_DIM);
        assert!(ours.config().is_sliding(0) && !ours.config().is_sliding(1));
        let mine = gemma_steps(|x, pos| ours.forward(x, pos).unwrap());
        let mut theirs_model = candle_gemma3(&dir.path().join("gemma3.gguf"));
        // candle's gemma3 cannot take several tokens at once (its cache refuses the transposed
        // values), so it reads the prompt one token at a time: the same computation.
        let theirs = gemma_steps(|x, pos| {
            let ids = x.flatten_all().unwrap().to_vec1::<u32>().unwrap();
            let mut logits = None;
            for (k, id) in ids.into_iter().enumerate() {
                let one = Tensor::new(&[[id]], &Device::Cpu).unwrap();
                logits = Some(theirs_model.forward(&one, pos + k).unwrap());
            }
            logits.unwrap()
        });
        assert!(mine.iter().flatten().all(|x| x.is_finite()));
        assert_ne!(mine[5], mine[6]);
        // candle's gemma3 normalises in separate ops where baton uses the fused RMS norm, so
        // the last bits differ; a wrong norm, activation, window or rotation is off by far more.
        let diff = max_difference(&mine, &theirs);
        let scale = theirs.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "max |difference| {diff} (logits up to {scale})"
        );
    }

    #[test]
    fn gemma3_sees_the_same_window_whether_tokens_come_at_once_or_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let ids = [2u32, 40, 41, 12, 77, 9, 200, 31, 64];
        let mut model = tiny_gemma3(&dir);
        let all = model
            .forward(&Tensor::new(&[ids], &Device::Cpu).unwrap(), 0)
            .unwrap();
        // Three at once after six: the mask's window, with cached tokens before it.
        model
            .forward(
                &Tensor::new(&ids[..6], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                0,
            )
            .unwrap();
        let chunked = model
            .forward(
                &Tensor::new(&ids[6..], &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                6,
            )
            .unwrap();
        let mut last = None;
        for (pos, &id) in ids.iter().enumerate() {
            last = Some(
                model
                    .forward(&Tensor::new(&[[id]], &Device::Cpu).unwrap(), pos)
                    .unwrap(),
            );
        }
        let v = |t: &Tensor| vec![t.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
        assert!(max_difference(&v(&all), &v(&last.unwrap())) < 1e-4);
        assert!(max_difference(&v(&all), &v(&chunked)) < 1e-4);
        // And the window matters: without it the last logits are different.
        let mut wide = tiny_gemma3(&dir);
        for layer in &mut wide.layers {
            layer.window = None;
        }
        let unwindowed = wide
            .forward(&Tensor::new(&[ids], &Device::Cpu).unwrap(), 0)
            .unwrap();
        assert!(max_difference(&v(&all), &v(&unwindowed)) > 1e-3);
    }

    /// A tiny model of `arch` whose layers' matrices are stored as Q4_1, as real files store
    /// them (the tiny files hold f32, which candle multiplies densely anyway); and the same
    /// model holding those Q4_1 matrices dequantized.
    fn tiny_q4(arch: &str, dir: &tempfile::TempDir) -> (LlamaLike, LlamaLike) {
        let path = dir.path().join(format!("{arch}.gguf"));
        match arch {
            "gemma3" => crate::llm::tiny::write_tiny_gemma3(&path, 5).unwrap(),
            _ => crate::llm::tiny::write_tiny(&path, 7, arch).unwrap(),
        }
        let load = || {
            let mut loaded =
                baton_weights::load_gguf(&path, &Device::Cpu, &Default::default()).unwrap();
            LlamaLike::new(&loaded.content, &mut loaded.tensors, &Device::Cpu).unwrap()
        };
        let (mut quantized, mut dequantized) = (load(), load());
        for (q, d) in quantized.layers.iter_mut().zip(&mut dequantized.layers) {
            for (wq, wd) in [
                (&mut q.wq, &mut d.wq),
                (&mut q.wk, &mut d.wk),
                (&mut q.wv, &mut d.wv),
                (&mut q.wo, &mut d.wo),
                (&mut q.gate, &mut d.gate),
                (&mut q.up, &mut d.up),
                (&mut q.down, &mut d.down),
            ] {
                let QMatMul::Tensor(w) = &*wq else {
                    panic!("the tiny files hold f32 matrices")
                };
                let w4 = QTensor::quantize(w, candle_core::quantized::GgmlDType::Q4_1).unwrap();
                *wd = QMatMul::Tensor(w4.dequantize(&Device::Cpu).unwrap());
                *wq = QMatMul::from_qtensor(w4).unwrap();
            }
        }
        (quantized, dequantized)
    }

    #[test]
    fn a_long_prompt_on_the_cpu_is_multiplied_by_dequantized_weights() {
        let ids: Vec<u32> = (0..DENSE_FROM as u32 + 8)
            .map(|i| 3 + (i * 37) % 80)
            .collect();
        let prompt = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let next = Tensor::new(&[[12u32]], &Device::Cpu).unwrap();
        let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for arch in ARCHITECTURES {
            let dir = tempfile::tempdir().unwrap();
            let (mut dense, mut reference) = tiny_q4(arch, &dir);
            let (mut per_token, _) = tiny_q4(arch, &dir);
            per_token.set_dense_prompts(false);
            let run = |m: &mut LlamaLike| {
                vec![
                    v(m.forward(&prompt, 0).unwrap()),
                    v(m.forward(&next, ids.len()).unwrap()),
                ]
            };
            let (dense, reference, per_token) =
                (run(&mut dense), run(&mut reference), run(&mut per_token));
            // The prompt is the dequantized model's computation, bit for bit, and the token
            // after it (quantized again) sees the keys and values it cached.
            assert_eq!(dense[0], reference[0], "{arch}: the prompt's logits");
            assert!(
                max_difference(&dense[1..], &reference[1..]) < 0.05,
                "{arch}"
            );
            // One token at a time rounds the activations to 8 bits: close, and not the same.
            let scale = per_token[0].iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let worst = max_difference(&dense, &per_token);
            assert!(worst > 0.0, "{arch}: the dense path was not taken");
            assert!(
                worst < 0.05 * scale,
                "{arch}: dense and quantized prompts differ by {worst} (logits up to {scale})"
            );
        }
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
