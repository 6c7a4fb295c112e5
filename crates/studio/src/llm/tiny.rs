//! A tiny llama (or qwen2, or gemma3) with random weights, written as a real GGUF file with its
//! tokenizer in the metadata (byte-level BPE and a ChatML template; for gemma3 SentencePiece
//! pieces and scores, and no template, as Gemma's files come): what tests (and anyone without a
//! model) load through the exact path a real model takes.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::llm::LlmError;
use crate::llm::gguf_tokenizer::byte_alphabet;

pub const DIM: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FF: usize = 128;
const LAYERS: usize = 2;

/// Writes a tiny random-weight llama GGUF to `path`; `seed` picks the weights.
pub fn write_tiny_llama(path: &Path, seed: u64) -> Result<(), LlmError> {
    write_tiny(path, seed, "llama")
}

/// Random weights from a seed: small values, and norms near one.
struct Random {
    state: u64,
}

impl Random {
    fn new(seed: u64) -> Random {
        Random {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                ((self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn tensor(&mut self, shape: &[usize]) -> Result<QTensor, LlmError> {
        let values = self.values(shape.iter().product());
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    }

    /// A norm's weights: one plus a little, so a test sees whether each norm is applied.
    fn norm(&mut self, n: usize) -> Result<QTensor, LlmError> {
        let values: Vec<f32> = self.values(n).into_iter().map(|v| 1.0 + v).collect();
        let t = Tensor::from_vec(values, n, &Device::Cpu)?;
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    }
}

fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<(), LlmError> {
    let mut file = std::fs::File::create(path)
        .map_err(|e| LlmError::BadModel(format!("cannot write '{}': {e}", path.display())))?;
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md, &ts)?;
    Ok(())
}

/// gemma3's tiny shape: heads wider than `DIM / HEADS` (as Gemma's are), three layers of which
/// the middle one is global and the others see a window of 4 tokens.
pub mod gemma3 {
    pub const HEAD_DIM: usize = 32;
    pub const LAYERS: usize = 3;
    pub const WINDOW: usize = 4;
    pub const PATTERN: usize = 2;
    pub const EPS: f32 = 1e-6;
    pub const ROPE_BASE: f32 = 1_000_000.0;
    pub const LOCAL_ROPE_BASE: f32 = 10_000.0;
}

/// A tiny random gemma3: SentencePiece pieces with scores (every byte as a `<0xNN>` token, a
/// few pieces to merge), Gemma's turn tokens, tied embeddings, and no chat template.
pub fn write_tiny_gemma3(path: &Path, seed: u64) -> Result<(), LlmError> {
    use gemma3::*;
    let key = |k: &str| format!("gemma3.{k}");
    let mut tokens: Vec<String> = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut types = vec![3; tokens.len()];
    tokens.push("\n".into());
    types.push(4);
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.resize(tokens.len(), 6);
    // Pieces and their merge order (higher score first): enough for JSON and a few words.
    let pieces = [
        "\u{2581}",
        "\"",
        "{",
        "}",
        ":",
        ",",
        "e",
        "t",
        "h",
        "a",
        "s",
        "c",
        "n",
        "i",
        "o",
        "l",
        "th",
        "he",
        "the",
        "\u{2581}t",
        "\u{2581}the",
        "\"\u{2581}",
        "\u{2581}\"",
        "{\"",
        "\":",
        "sc",
        "ce",
        "sce",
        "en",
        "ne",
        "ene",
        "scene",
        "ti",
        "tl",
        "le",
        "tle",
        "title",
    ];
    let first_piece = tokens.len();
    tokens.extend(pieces.iter().map(|p| p.to_string()));
    types.resize(tokens.len(), 1);
    let scores: Vec<Value> = (0..tokens.len())
        .map(|i| {
            Value::F32(if i >= first_piece {
                -((i - first_piece) as f32)
            } else {
                0.0
            })
        })
        .collect();
    let vocab = tokens.len();
    let q = HEADS * HEAD_DIM;
    let kv = KV_HEADS * HEAD_DIM;
    let metadata: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String("gemma3".into()),
        ),
        (
            "general.name".into(),
            Value::String("baton tiny random gemma3".into()),
        ),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("attention.key_length"), Value::U32(HEAD_DIM as u32)),
        (key("attention.value_length"), Value::U32(HEAD_DIM as u32)),
        (key("attention.sliding_window"), Value::U32(WINDOW as u32)),
        (
            key("attention.sliding_window_type"),
            Value::U32(PATTERN as u32),
        ),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("embedding_length"), Value::U32(DIM as u32)),
        (key("feed_forward_length"), Value::U32(FF as u32)),
        (key("context_length"), Value::U32(4096)),
        (key("rope.freq_base"), Value::F32(ROPE_BASE)),
        (key("rope.local_freq_base"), Value::F32(LOCAL_ROPE_BASE)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(EPS)),
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        ("tokenizer.ggml.scores".into(), Value::Array(scores)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
    ];
    let mut rng = Random::new(seed);
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), rng.tensor(&[vocab, DIM])?),
        ("output_norm.weight".into(), rng.norm(DIM)?),
    ];
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_q.weight"), rng.tensor(&[q, DIM])?));
        tensors.push((format!("{p}.attn_k.weight"), rng.tensor(&[kv, DIM])?));
        tensors.push((format!("{p}.attn_v.weight"), rng.tensor(&[kv, DIM])?));
        tensors.push((format!("{p}.attn_output.weight"), rng.tensor(&[DIM, q])?));
        tensors.push((format!("{p}.attn_q_norm.weight"), rng.norm(HEAD_DIM)?));
        tensors.push((format!("{p}.attn_k_norm.weight"), rng.norm(HEAD_DIM)?));
        tensors.push((format!("{p}.ffn_gate.weight"), rng.tensor(&[FF, DIM])?));
        tensors.push((format!("{p}.ffn_down.weight"), rng.tensor(&[DIM, FF])?));
        tensors.push((format!("{p}.ffn_up.weight"), rng.tensor(&[FF, DIM])?));
        for norm in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            tensors.push((format!("{p}.{norm}.weight"), rng.norm(DIM)?));
        }
    }
    write_gguf(path, &metadata, &tensors)
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.clone())).collect())
}

/// The same for `arch` "llama", "qwen2" (its metadata keys, and biases on q, k, v) or "gemma3"
/// (`write_tiny_gemma3`).
pub fn write_tiny(path: &Path, seed: u64, arch: &str) -> Result<(), LlmError> {
    if arch == "gemma3" {
        return write_tiny_gemma3(path, seed);
    }
    if !["llama", "qwen2", "qwen3"].contains(&arch) {
        return Err(LlmError::BadModel(format!(
            "no tiny writer for '{arch}'; use llama, qwen2, qwen3 or gemma3"
        )));
    }
    // qwen3's heads are wider than DIM / HEADS, as Qwen3-0.6B's are.
    let head = if arch == "qwen3" {
        2 * DIM / HEADS
    } else {
        DIM / HEADS
    };
    let key = |k: &str| format!("{arch}.{k}");
    let mut tokens = byte_alphabet();
    // A few merges, so the BPE has real work to do.
    let merges = ["{ \"", "\" :", "Ġ \""];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let first_special = tokens.len();
    tokens.extend(specials.iter().map(|s| s.to_string()));
    let vocab = tokens.len();
    let types: Vec<Value> = (0..vocab)
        .map(|i| Value::I32(if i >= first_special { 3 } else { 1 }))
        .collect();
    let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!("baton tiny random {arch}")),
        ),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("embedding_length"), Value::U32(DIM as u32)),
        (key("feed_forward_length"), Value::U32(FF as u32)),
        (key("context_length"), Value::U32(4096)),
        (key("rope.dimension_count"), Value::U32(head as u32)),
        (key("attention.key_length"), Value::U32(head as u32)),
        (key("attention.value_length"), Value::U32(head as u32)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("vocab_size"), Value::U32(vocab as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.merges".into(),
            strings(&merges.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(first_special as u32),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32((first_special + 2) as u32),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::String(chatml.into()),
        ),
    ];
    let device = Device::Cpu;
    let mut rng = Random::new(seed);
    let ones = |n: usize| -> Result<QTensor, LlmError> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &device)?,
            GgmlDType::F32,
        )?)
    };
    let kv = head * KV_HEADS;
    let q = head * HEADS;
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), rng.tensor(&[vocab, DIM])?),
        ("output_norm.weight".into(), ones(DIM)?),
        ("output.weight".into(), rng.tensor(&[vocab, DIM])?),
    ];
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_q.weight"), rng.tensor(&[q, DIM])?));
        tensors.push((format!("{p}.attn_k.weight"), rng.tensor(&[kv, DIM])?));
        tensors.push((format!("{p}.attn_v.weight"), rng.tensor(&[kv, DIM])?));
        tensors.push((format!("{p}.attn_output.weight"), rng.tensor(&[DIM, q])?));
        tensors.push((format!("{p}.ffn_gate.weight"), rng.tensor(&[FF, DIM])?));
        tensors.push((format!("{p}.ffn_down.weight"), rng.tensor(&[DIM, FF])?));
        tensors.push((format!("{p}.ffn_up.weight"), rng.tensor(&[FF, DIM])?));
        tensors.push((format!("{p}.attn_norm.weight"), ones(DIM)?));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(DIM)?));
        if arch == "qwen3" {
            tensors.push((format!("{p}.attn_q_norm.weight"), rng.norm(head)?));
            tensors.push((format!("{p}.attn_k_norm.weight"), rng.norm(head)?));
        }
        if arch == "qwen2" {
            tensors.push((format!("{p}.attn_q.bias"), rng.tensor(&[DIM])?));
            tensors.push((format!("{p}.attn_k.bias"), rng.tensor(&[kv])?));
            tensors.push((format!("{p}.attn_v.bias"), rng.tensor(&[kv])?));
        }
    }
    write_gguf(path, &metadata, &tensors)
}
