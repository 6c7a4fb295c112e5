//! The tokenizer and chat template a GGUF file carries in its metadata, made usable without a
//! separate `tokenizer.json`.
//!
//! GGUF stores a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, used by SmolLM2,
//! Llama 3 and Qwen2) as its token list, merges and token types. This rebuilds it as a
//! `tokenizers::Tokenizer` with the GPT-2 byte-level pre-tokenizer, with control tokens as
//! special tokens.
//!
//! A SentencePiece BPE tokenizer (`tokenizer.ggml.model = "llama"`, used by Gemma) is stored as
//! tokens and scores, without merges: SentencePiece merges the pair whose joined piece scores
//! highest. That is a BPE whose merge ranks are the joined pieces' scores, which is how it is
//! rebuilt (the construction Hugging Face's converter uses), with `▁` for spaces and unknown
//! characters written as `<0xNN>` byte tokens. Other kinds are refused with a message that says
//! to pass the model's `tokenizer.json` instead.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer};

use crate::llm::LlmError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// SentencePiece's word boundary: a space.
const SPACE: &str = "\u{2581}";

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
    if kind != "gpt2" && kind != "llama" {
        return Err(LlmError::BadModel(format!(
            "its tokenizer is '{kind}', and only byte-level BPE ('gpt2': SmolLM2, Llama 3, Qwen2) and SentencePiece BPE ('llama': Gemma) are read from GGUF metadata; pass the model's tokenizer.json with --tokenizer"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(LlmError::BadModel("it has no tokenizer.ggml.tokens".into()));
    }
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let tokenizer = if kind == "llama" {
        sentencepiece(content, &tokens, &types)?
    } else {
        byte_level(content, &tokens, &types)?
    };
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

/// GPT-2's byte-level BPE from the file's tokens and merges.
fn byte_level(content: &Content, tokens: &[String], types: &[i32]) -> Result<Tokenizer, LlmError> {
    let merges: Vec<(String, String)> = strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
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
    Ok(tokenizer)
}

/// SentencePiece BPE from the file's tokens and scores: every way of splitting a normal piece
/// into two pieces of the vocabulary is a merge, ranked by the joined piece's score (highest
/// first, then by id). Control tokens are special; user-defined ones (Gemma's runs of
/// newlines and tabs) are matched whole and decode as text.
fn sentencepiece(
    content: &Content,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, LlmError> {
    let scores: Vec<f32> = match content.metadata.get("tokenizer.ggml.scores") {
        Some(Value::Array(items)) => items.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
        _ => {
            return Err(LlmError::BadModel(
                "its SentencePiece tokenizer has no tokenizer.ggml.scores".into(),
            ));
        }
    };
    let kind = |i: usize| types.get(i).copied().unwrap_or(TOKEN_NORMAL);
    let vocab: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut ranked: Vec<usize> = (0..tokens.len())
        .filter(|&i| kind(i) == TOKEN_NORMAL && tokens[i].chars().nth(1).is_some())
        .collect();
    ranked.sort_by(|&a, &b| {
        let score = |i: usize| scores.get(i).copied().unwrap_or(f32::NEG_INFINITY);
        score(b).total_cmp(&score(a)).then(a.cmp(&b))
    });
    let mut merges = Vec::new();
    for i in ranked {
        let piece = &tokens[i];
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) =
        u32_of(content, "tokenizer.ggml.unknown_token_id").and_then(|id| tokens.get(id as usize))
    {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(|e| {
        LlmError::BadModel(format!("its SentencePiece tokenizer cannot be built: {e}"))
    })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space = Replace::new(" ", SPACE)
        .map_err(|e| LlmError::BadModel(format!("the space normalizer: {e}")))?;
    let prefix = content
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let normalizer: NormalizerWrapper = if prefix {
        tokenizers::normalizers::Sequence::new(vec![
            Prepend::new(SPACE.into()).into(),
            space.into(),
        ])
        .into()
    } else {
        space.into()
    };
    tokenizer.with_normalizer(Some(normalizer));
    let mut decoders = vec![
        DecoderWrapper::Replace(
            Replace::new(SPACE, " ")
                .map_err(|e| LlmError::BadModel(format!("the space decoder: {e}")))?,
        ),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if prefix {
        // The space the normalizer put before the text is not the model's to return.
        decoders.push(DecoderWrapper::Strip(
            tokenizers::decoders::strip::Strip::new(' ', 1, 0),
        ));
    }
    let unspace = tokenizers::decoders::sequence::Sequence::new(decoders);
    tokenizer.with_decoder(Some(unspace));
    let added = |wanted: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| kind(*i) == wanted)
            .map(|(_, t)| AddedToken::from(t.clone(), special))
            .collect()
    };
    tokenizer.add_special_tokens(&added(TOKEN_CONTROL, true));
    tokenizer.add_tokens(&added(TOKEN_USER_DEFINED, false));
    Ok(tokenizer)
}

/// The byte-level alphabet: the 256 characters GPT-2's BPE writes bytes as.
pub fn byte_alphabet() -> Vec<String> {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    chars.into_iter().map(String::from).collect()
}
