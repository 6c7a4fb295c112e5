//! The tokenizer and chat template a GGUF file carries in its metadata, made usable without a
//! separate `tokenizer.json`.
//!
//! GGUF stores a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, used by SmolLM2,
//! Llama 3 and Qwen2) as its token list, merges and token types, and names how text is split
//! before the merges in `tokenizer.ggml.pre`. This rebuilds it as a `tokenizers::Tokenizer` with
//! the pre-tokenizer the model's own `tokenizer.json` has (GPT-2's; SmolLM's digits one by one;
//! Llama 3's and Qwen2's splitting regexes), with control tokens as special tokens.
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
use tokenizers::normalizers::NFC;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

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

fn string_of(content: &Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn u32_of(content: &Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Rebuilds the tokenizer from a GGUF file's metadata.
pub fn from_gguf(content: &Content) -> Result<GgufText, LlmError> {
    let kind = string_of(content, "tokenizer.ggml.model").unwrap_or_default();
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
        chat_template: string_of(content, "tokenizer.chat_template"),
        tokens,
    })
}

/// Llama 3's split before the byte-level mapping (its tokenizer.json, and llama.cpp's
/// `llama-bpe`): numbers in runs of up to three digits, newlines apart.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's, with every digit apart.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a byte-level BPE model splits text before its merges, by `tokenizer.ggml.pre` (the names
/// llama.cpp gives them), as the model's own tokenizer.json does it; and the normalizer, for the
/// ones that have one. `None` for a name baton does not know.
fn pre_tokenizer(pre: &str) -> Option<(PreTokenizerWrapper, Option<NormalizerWrapper>)> {
    let gpt2 = || ByteLevel::new(false, true, true);
    let split = |regex: &str| -> PreTokenizerWrapper {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .expect("the split regexes compile")
        .into()
    };
    let bytes_only = |trim| PreTokenizerWrapper::from(ByteLevel::new(false, trim, false));
    Some(match pre {
        // GPT-2's regex, then bytes.
        "" | "default" | "gpt2" | "gpt-2" | "olmo" | "phi-2" | "mpt" => (gpt2().into(), None),
        // Every digit apart, then GPT-2's regex (SmolLM's tokenizer.json; llama.cpp gives
        // StarCoder, Refact, Command-R and CodeShell the same split).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => (
            Sequence::new(vec![Digits::new(true).into(), gpt2().into()]).into(),
            None,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" => (
            Sequence::new(vec![split(LLAMA3_SPLIT), bytes_only(true)]).into(),
            None,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            Sequence::new(vec![split(QWEN2_SPLIT), bytes_only(false)]).into(),
            Some(NFC.into()),
        ),
        _ => return None,
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
    let pre = string_of(content, "tokenizer.ggml.pre").unwrap_or_default();
    let (split, normalizer) = pre_tokenizer(&pre).unwrap_or_else(|| {
        tracing::warn!(
            "tokenizer.ggml.pre '{pre}' is not one baton knows (gpt2, smollm, llama-bpe, qwen2 and their aliases): text is split as GPT-2 splits it, which may differ from the model's own tokenizer; pass its tokenizer.json with --tokenizer to be sure"
        );
        pre_tokenizer("gpt2").expect("gpt2 is known")
    });
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(normalizer);
    tokenizer.with_pre_tokenizer(Some(split));
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

#[cfg(test)]
mod pre_tokenizer_tests {
    use super::*;

    /// The `pre_tokenizer` (and `normalizer`) sections of each model's own tokenizer.json, as
    /// published: SmolLM2, Llama 3, Qwen2, GPT-2.
    fn published(pre: &str) -> (&'static str, &'static str) {
        match pre {
            "smollm" => (
                r#"{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]}"#,
                "null",
            ),
            "llama-bpe" => (
                r#"{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}"#,
                "null",
            ),
            "qwen2" => (
                r#"{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}]}"#,
                r#"{"type":"NFC"}"#,
            ),
            _ => (
                r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#,
                "null",
            ),
        }
    }

    /// Prompts with unicode, digits, code, contractions and whitespace runs.
    const CORPUS: &[&str] = &[
        "In 1969, 600 million people watched Apollo 11 land; it's 2024 now.",
        "fn main() {\n    let x = 12345 + 678;\n\n\treturn x;\n}",
        "Café déjà vu — naïve coöperation, 東京 at 3:45am, ½ price!",
        "They'll say we've DON'T    stop\r\n\r\nthe  music   ",
        "e\u{301}tude vs \u{e9}tude (NFC) and 0.5% of $1,000,000",
        "    indented\n\n\nthree newlines, 007 and 42nd street's 99 bottles",
    ];

    /// A byte-level vocabulary with merges that make the splits observable: digit pairs and
    /// triples, runs of spaces and newlines, common words and a contraction.
    fn vocab_and_merges() -> (Vec<String>, Vec<String>) {
        let mut tokens = byte_alphabet();
        let merges = [
            "1 9",
            "19 6",
            "196 9",
            "2 0",
            "20 2",
            "202 4",
            "6 0",
            "60 0",
            "1 2",
            "12 3",
            "3 4",
            "34 5",
            "0 0",
            "00 7",
            "9 9",
            "4 2",
            "Ġ 1",
            "Ġ 2",
            "Ġ 6",
            "Ġ Ġ",
            "ĠĠ Ġ",
            "ĠĠ ĠĠ",
            "Ċ Ċ",
            "ĊĊ Ċ",
            "Ġ t",
            "Ġt h",
            "Ġth e",
            "' s",
            "l l",
            "' ll",
            "i n",
            "Ġ m",
            "Ġm i",
            "Ġ s",
            "o n",
            "Ã ©",
            "Ġ 0",
            "Ġ $",
            "Ġ 3",
        ];
        for m in merges {
            let joined = m.replace(' ', "");
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        tokens.push("<|endoftext|>".into());
        (tokens, merges.iter().map(|m| m.to_string()).collect())
    }

    fn content(pre: &str, tokens: &[String], merges: &[String]) -> Content {
        let strings =
            |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
        let types: Vec<Value> = (0..tokens.len())
            .map(|i| {
                Value::I32(if i + 1 == tokens.len() {
                    TOKEN_CONTROL
                } else {
                    TOKEN_NORMAL
                })
            })
            .collect();
        let metadata = HashMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
            ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
            ("tokenizer.ggml.merges".to_string(), strings(merges)),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
            (
                "tokenizer.ggml.eos_token_id".to_string(),
                Value::U32(tokens.len() as u32 - 1),
            ),
        ]);
        Content {
            magic: candle_core::quantized::gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    /// The model's own tokenizer.json, built from the same vocab and merges with its published
    /// pre-tokenizer.
    fn reference(pre: &str, tokens: &[String], merges: &[String]) -> Tokenizer {
        let (pre_tokenizer, normalizer) = published(pre);
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::json!(i)))
            .collect();
        let json = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{{"id":{},"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "normalizer":{normalizer},"pre_tokenizer":{pre_tokenizer},"post_processor":null,
            "decoder":{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}},
            "model":{{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{},"merges":{}}}}}"#,
            tokens.len() - 1,
            serde_json::Value::Object(vocab),
            serde_json::json!(merges)
        );
        json.parse().unwrap_or_else(|e| panic!("{pre}: {e}"))
    }

    /// For every pre-tokenizer baton knows by its published form, the ids from the GGUF
    /// metadata are the ids of the model's own tokenizer.json on every prompt; and the
    /// pre-tokenizers do split differently, so a tokenizer that ignored the key would fail.
    #[test]
    fn gguf_token_ids_equal_the_models_own_tokenizer_json() {
        let (tokens, merges) = vocab_and_merges();
        let mut by_pre = Vec::new();
        for pre in ["gpt2", "smollm", "llama-bpe", "qwen2"] {
            let ours = from_gguf(&content(pre, &tokens, &merges))
                .unwrap()
                .tokenizer;
            let theirs = reference(pre, &tokens, &merges);
            let mut all = Vec::new();
            for text in CORPUS {
                let a = ours.encode(*text, false).unwrap().get_ids().to_vec();
                let b = theirs.encode(*text, false).unwrap().get_ids().to_vec();
                assert_eq!(a, b, "{pre}: {text:?}");
                assert_eq!(
                    ours.decode(&a, false).unwrap(),
                    theirs.decode(&b, false).unwrap()
                );
                all.push(a);
            }
            by_pre.push((pre, all));
        }
        for i in 0..by_pre.len() {
            for j in i + 1..by_pre.len() {
                assert_ne!(
                    by_pre[i].1, by_pre[j].1,
                    "{} and {} split alike",
                    by_pre[i].0, by_pre[j].0
                );
            }
        }
    }

    /// An aliases' name gives its family's split; a name baton does not know falls back to
    /// GPT-2's (said in the log), as before.
    #[test]
    fn aliases_and_unknown_names() {
        let (tokens, merges) = vocab_and_merges();
        let ids = |pre: &str| {
            let t = from_gguf(&content(pre, &tokens, &merges))
                .unwrap()
                .tokenizer;
            t.encode(CORPUS[0], false).unwrap().get_ids().to_vec()
        };
        assert_eq!(ids("llama3"), ids("llama-bpe"));
        assert_eq!(ids("starcoder"), ids("smollm"));
        assert_eq!(ids("deepseek-r1-qwen"), ids("qwen2"));
        assert_eq!(ids("no-such-split"), ids("gpt2"));
    }
}
