//! Prompts into token ids for the text encoders: CLIP's (from a tokenizer.json, or from the
//! vocab.json and merges.txt that diffusers repositories ship) and T5's, padded to their
//! contexts, with the cut said rather than hidden.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::ImagesError;

/// CLIP's context: prompts longer than this many tokens are cut.
pub const CLIP_TOKENS: usize = 77;

/// Where a tokenizer is on disk.
#[derive(Debug, Clone)]
pub enum TokenizerFiles {
    Json(PathBuf),
    /// A byte-level BPE with CLIP's normalisation and word-final `</w>`.
    ClipBpe {
        vocab: PathBuf,
        merges: PathBuf,
    },
}

impl TokenizerFiles {
    /// The tokenizer in `dir`: tokenizer.json, else vocab.json with merges.txt.
    pub fn find(dir: &Path) -> Option<TokenizerFiles> {
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if json.is_file() {
            Some(TokenizerFiles::Json(json))
        } else if vocab.is_file() && merges.is_file() {
            Some(TokenizerFiles::ClipBpe { vocab, merges })
        } else {
            None
        }
    }

    /// The pad token the folder's own tokenizer config names (`special_tokens_map.json`, else
    /// `tokenizer_config.json`), if any: real repositories say it there, and it differs
    /// between tokenizers of one family (SD 2.x and SDXL's OpenCLIP pad with "!").
    pub fn pad_token(&self) -> Option<String> {
        let dir = match self {
            TokenizerFiles::Json(path) => path.parent()?,
            TokenizerFiles::ClipBpe { vocab, .. } => vocab.parent()?,
        };
        ["special_tokens_map.json", "tokenizer_config.json"]
            .iter()
            .find_map(|file| {
                let bytes = std::fs::read(dir.join(file)).ok()?;
                let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                match &json["pad_token"] {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
                    _ => None,
                }
            })
    }

    pub fn load(&self) -> Result<Tokenizer, ImagesError> {
        match self {
            TokenizerFiles::Json(path) => Tokenizer::from_file(path)
                .map_err(|e| ImagesError::Tokenizer(format!("'{}': {e}", path.display()))),
            TokenizerFiles::ClipBpe { vocab, merges } => clip_bpe(vocab, merges)
                .map_err(|e| ImagesError::Tokenizer(format!("'{}': {e}", vocab.display()))),
        }
    }
}

/// CLIP's tokenizer as transformers builds it from vocab.json and merges.txt: NFC, runs of
/// whitespace to one space, lower case; split into letters runs, single digits and punctuation
/// runs; byte-level BPE with `</w>` ending each word.
fn clip_bpe(vocab: &Path, merges: &Path) -> tokenizers::Result<Tokenizer> {
    use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Norms};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence as Pres;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};
    let text = |p: &Path| {
        p.to_str()
            .map(String::from)
            .ok_or_else(|| format!("'{}' is not UTF-8", p.display()))
    };
    let model = tokenizers::models::bpe::BPE::from_file(&text(vocab)?, &text(merges)?)
        .unk_token("<|endoftext|>".into())
        .end_of_word_suffix("</w>".into())
        .build()?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(NormalizerWrapper::Sequence(Norms::new(vec![
        NormalizerWrapper::NFC(NFC),
        NormalizerWrapper::Replace(Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )?),
        NormalizerWrapper::Lowercase(Lowercase),
    ]))));
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Pres::new(vec![
        PreTokenizerWrapper::Split(Split::new(
            SplitPattern::Regex(
                r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
                    .into(),
            ),
            SplitDelimiterBehavior::Removed,
            true,
        )?),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]))));
    Ok(tokenizer)
}

/// A prompt's CLIP ids: start, the prompt (cut to fit), end, padding.
#[derive(Debug, Clone)]
pub struct ClipTokens {
    pub ids: Vec<u32>,
    /// Where the end token is: CLIP's pooled output is the hidden state there.
    pub eos_at: usize,
    pub truncated: bool,
}

/// `prompt` as CLIP ids, padded with `pad_with` (or the end token) to CLIP's 77.
pub fn clip_tokens(
    tokenizer: &Tokenizer,
    prompt: &str,
    pad_with: Option<&str>,
) -> Result<ClipTokens, ImagesError> {
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| ImagesError::Tokenizer(format!("it has no '{t}' token")))
    };
    let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
    let pad = match pad_with {
        Some(p) => id(p)?,
        None => eos,
    };
    let body = encode(tokenizer, prompt)?;
    let room = CLIP_TOKENS - 2;
    let truncated = body.len() > room;
    let mut ids = vec![bos];
    ids.extend(body.into_iter().take(room));
    ids.push(eos);
    let eos_at = ids.len() - 1;
    ids.resize(CLIP_TOKENS, pad);
    Ok(ClipTokens {
        ids,
        eos_at,
        truncated,
    })
}

/// `prompt` as T5 ids: the prompt (cut to fit), `</s>`, then `<pad>` to `context` tokens; and
/// whether it was cut.
pub fn t5_tokens(
    tokenizer: &Tokenizer,
    prompt: &str,
    context: usize,
) -> Result<(Vec<u32>, bool), ImagesError> {
    let eos = tokenizer
        .token_to_id("</s>")
        .ok_or_else(|| ImagesError::Tokenizer("the T5 tokenizer has no '</s>' token".into()))?;
    let pad = tokenizer.token_to_id("<pad>").unwrap_or(0);
    let body = encode(tokenizer, prompt)?;
    let truncated = body.len() > context - 1;
    let mut ids: Vec<u32> = body.into_iter().take(context - 1).collect();
    ids.push(eos);
    ids.resize(context, pad);
    Ok((ids, truncated))
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ImagesError> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| ImagesError::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_bpe_from_vocab_and_merges_normalises_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        super::super::random::write_clip_tokenizer(dir.path()).unwrap();
        let files = TokenizerFiles::find(dir.path()).unwrap();
        assert!(matches!(files, TokenizerFiles::ClipBpe { .. }));
        let tok = files.load().unwrap();
        let pieces = |text: &str| {
            tok.encode(text, false)
                .unwrap()
                .get_tokens()
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
        };
        // Lower case, whitespace runs, merges into whole words, unmerged letters, punctuation.
        assert_eq!(
            pieces("Neon \t CITY, rain"),
            ["neon</w>", "city</w>", ",</w>", "r", "a", "i", "n</w>"]
                .map(String::from)
                .to_vec()
        );
        let t = clip_tokens(&tok, "neon city", Some("!")).unwrap();
        assert_eq!(t.ids.len(), CLIP_TOKENS);
        assert_eq!(t.eos_at, 3);
        assert_eq!(t.ids[0], tok.token_to_id("<|startoftext|>").unwrap());
        assert_eq!(t.ids[3], tok.token_to_id("<|endoftext|>").unwrap());
        assert_eq!(t.ids[4], tok.token_to_id("!").unwrap());
        assert!(!t.truncated);
        let long = clip_tokens(&tok, &"neon ".repeat(100), None).unwrap();
        assert!(long.truncated);
        assert_eq!(long.eos_at, CLIP_TOKENS - 1);
    }
}
