//! A tiny llama (or qwen2) with random weights, written as a real GGUF file with a byte-level
//! tokenizer and a ChatML template in its metadata: what tests (and anyone without a model) load
//! through the exact path a real model takes.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::llm::LlmError;
use crate::llm::gguf_tokenizer::byte_alphabet;

const DIM: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 128;
const LAYERS: usize = 2;

/// Writes a tiny random-weight llama GGUF to `path`; `seed` picks the weights.
pub fn write_tiny_llama(path: &Path, seed: u64) -> Result<(), LlmError> {
    write_tiny(path, seed, "llama")
}

/// The same for `arch` "llama" or "qwen2" (qwen2: its metadata keys, and biases on q, k, v).
pub fn write_tiny(path: &Path, seed: u64, arch: &str) -> Result<(), LlmError> {
    if arch != "llama" && arch != "qwen2" {
        return Err(LlmError::BadModel(format!(
            "no tiny writer for '{arch}'; use llama or qwen2"
        )));
    }
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
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
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
        (
            key("rope.dimension_count"),
            Value::U32((DIM / HEADS) as u32),
        ),
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
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut random = |shape: &[usize]| -> Result<QTensor, LlmError> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        let t = Tensor::from_vec(values, shape, &device)?;
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    };
    let ones = |n: usize| -> Result<QTensor, LlmError> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &device)?,
            GgmlDType::F32,
        )?)
    };
    let kv = DIM / HEADS * KV_HEADS;
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), random(&[vocab, DIM])?),
        ("output_norm.weight".into(), ones(DIM)?),
        ("output.weight".into(), random(&[vocab, DIM])?),
    ];
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_q.weight"), random(&[DIM, DIM])?));
        tensors.push((format!("{p}.attn_k.weight"), random(&[kv, DIM])?));
        tensors.push((format!("{p}.attn_v.weight"), random(&[kv, DIM])?));
        tensors.push((format!("{p}.attn_output.weight"), random(&[DIM, DIM])?));
        tensors.push((format!("{p}.ffn_gate.weight"), random(&[FF, DIM])?));
        tensors.push((format!("{p}.ffn_down.weight"), random(&[DIM, FF])?));
        tensors.push((format!("{p}.ffn_up.weight"), random(&[FF, DIM])?));
        tensors.push((format!("{p}.attn_norm.weight"), ones(DIM)?));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(DIM)?));
        if arch == "qwen2" {
            tensors.push((format!("{p}.attn_q.bias"), random(&[DIM])?));
            tensors.push((format!("{p}.attn_k.bias"), random(&[kv])?));
            tensors.push((format!("{p}.attn_v.bias"), random(&[kv])?));
        }
    }
    let mut file = std::fs::File::create(path)
        .map_err(|e| LlmError::BadModel(format!("cannot write '{}': {e}", path.display())))?;
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md, &ts)?;
    Ok(())
}
