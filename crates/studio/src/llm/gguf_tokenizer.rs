//! The tokenizer and chat template a GGUF file carries in its metadata, made usable without a
//! separate `tokenizer.json`.
//!
//! GGUF stores a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, used by SmolLM2,
//! Llama 3 and Qwen2) as its token list, merges and token types. This rebuilds it as a
//! `tokenizers::Tokenizer` with the GPT-2 byte-level pre-tokenizer, with control tokens as
//! special tokens. Other tokenizer kinds (SentencePiece `llama`) are refused with a message
//! that says to pass the model's `tokenizer.json` instead.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::llm::LlmError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// What the metadata says about text: the tokenizer and its special tokens.
pub struct GgufText {
    pub tokenizer: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub chat_template: Option<String>,
    /// Token strings by id, for rendering the chat template's bos/eos.
    pub tokens: Vec<String>,
}

fn strings(content: &Content, key: &str) -> Result<Vec<String>, LlmError> {
    match content.metadata.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| LlmError::BadModel(format!("{key}: {e}")))
            })
            .collect(),
        Some(_) => Err(LlmError::BadModel(format!(
            "{key} is not a list of strings"
        ))),
        None => Ok(Vec::new()),
    }
}

fn u32_of(content: &Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Rebuilds the tokenizer from a GGUF file's metadata.
pub fn from_gguf(content: &Content) -> Result<GgufText, LlmError> {
    let kind = content
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if kind != "gpt2" {
        return Err(LlmError::BadModel(format!(
            "its tokenizer is '{kind}', and only byte-level BPE ('gpt2': SmolLM2, Llama 3, Qwen2) is read from GGUF metadata; pass the model's tokenizer.json with --tokenizer"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(LlmError::BadModel("it has no tokenizer.ggml.tokens".into()));
    }
    let merges: Vec<(String, String)> = strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let vocab: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .build()
        .map_err(|e| LlmError::BadModel(format!("its BPE tokenizer cannot be built: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1)))
        .filter(|(_, t)| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    let eos = u32_of(content, "tokenizer.ggml.eos_token_id")
        .ok_or_else(|| LlmError::BadModel("it names no tokenizer.ggml.eos_token_id".into()))?;
    Ok(GgufText {
        tokenizer,
        bos: u32_of(content, "tokenizer.ggml.bos_token_id"),
        eos,
        chat_template: content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
        tokens,
    })
}

/// The byte-level alphabet: the 256 characters GPT-2's BPE writes bytes as.
pub fn byte_alphabet() -> Vec<String> {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    chars.into_iter().map(String::from).collect()
}
