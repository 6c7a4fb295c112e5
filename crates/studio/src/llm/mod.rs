//! A quantized LLM from a GGUF file (candle), and generation whose output is valid by
//! construction: at every step, llguidance masks every token the JSON Schema forbids.
//!
//! The key design decision: the constraint is applied to the logits, not checked afterwards, so
//! even a model with random weights writes JSON that parses and validates; a real model only
//! makes it sensible. Architectures: `llama` (SmolLM2, Llama 3.x), `qwen2` and `gemma3`. The
//! tokenizer and chat template come from the GGUF metadata, or from a `tokenizer.json` beside it.

pub mod gguf_tokenizer;
pub mod model;
/// Test models: a tiny random llama or qwen2 GGUF. Tests, here and in the crates that test
/// through the stage program, turn on the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod tiny;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use tokenizers::Tokenizer;

/// Errors from loading or running an LLM; messages name the file and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    #[error("model file '{}' does not exist; pass a GGUF file with --model, or fetch the default with `baton models fetch smollm2`", .0.display())]
    MissingModel(PathBuf),
    #[error("'{}' is not a readable GGUF file ({why}); it may be truncated or of another format: fetch it again", .path.display())]
    Unreadable { path: PathBuf, why: String },
    #[error("'{}' is a '{arch}' model, which baton cannot run; use a llama (SmolLM2, Llama 3.x), qwen2 or gemma3 GGUF", .path.display())]
    Unsupported { path: PathBuf, arch: String },
    #[error("the model cannot be used: {0}")]
    BadModel(String),
    #[error("generation failed: {0}")]
    Generation(String),
    /// The JSON was not finished within the token limit (or the context): what was written
    /// so far, for the log, and the limit.
    #[error(
        "the JSON was not finished after {tokens} tokens; raise the limit or ask for fewer scenes"
    )]
    Unfinished { tokens: usize, partial: String },
}

impl baton_base::fault::Classify for LlmError {
    /// A model file that is missing, unreadable or of an architecture baton cannot run is the
    /// one the user named; a generation that fails is the machine's or the model's.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            LlmError::MissingModel(_)
            | LlmError::Unsupported { .. }
            | LlmError::Unreadable { .. } => Fault::Input,
            LlmError::BadModel(_) | LlmError::Generation(_) | LlmError::Unfinished { .. } => {
                Fault::Machine
            }
        }
    }
}

impl From<candle_core::Error> for LlmError {
    fn from(e: candle_core::Error) -> Self {
        LlmError::Generation(e.to_string())
    }
}

/// A loaded model, its tokenizer and chat template.
pub struct Llm {
    weights: model::LlamaLike,
    pub tokenizer: Tokenizer,
    pub eos: u32,
    bos_text: String,
    eos_text: String,
    chat_template: Option<String>,
    pub arch: String,
    pub n_vocab: usize,
    pub device: Device,
    pub file_bytes: u64,
    /// How the weights came onto the device (baton's loader: bytes, seconds, GB/s).
    pub load: baton_weights::LoadReport,
    /// Per token id: true when the token is words (a letter, and none of JSON's structure:
    /// quotes, braces, brackets, colons). Only those are penalised for repeating, so the
    /// penalty can never break the JSON around them.
    free_text: Vec<bool>,
    /// Word tokens that end a sentence (their text ends with `.`, `!` or `?`).
    ends_sentence: Vec<bool>,
    /// Tokens that end a clause: a comma or a semicolon last.
    ends_clause: Vec<bool>,
    /// The tokens that end a sentence or a clause, with the word each carries, which decides
    /// whether it may end one now ([`WrapUp::holds`]).
    endings: Vec<(u32, Piece)>,
    /// Tokens that close a JSON string (their text starts with `"`).
    closes_string: Vec<bool>,
    /// Tokens whose text begins inside a word (a letter, a digit, `'` or `-`): what the model
    /// picks when the word it is writing is not finished.
    continues_word: Vec<bool>,
    /// Tokens that begin a new word: a space, then a letter.
    begins_word: Vec<bool>,
    /// The tokens whose letters could be part of a word no storyboard says
    /// ([`could_be_unsayable`](crate::quality::could_be_unsayable)): each with its leading
    /// letters in lower case, and whether it begins a word.
    unsayable_pieces: Vec<(u32, String, bool)>,
    /// The constraint engine over this model's tokenizer, built on the first constrained
    /// generation and kept: building it walks the whole vocabulary, which costs more than a
    /// scene's generation on a CPU, and a storyboard is written in many parts.
    constraints: std::sync::OnceLock<std::sync::Arc<ParserFactory>>,
    /// The tokens whose keys and values the model's cache holds, in order.
    cached: Vec<u32>,
}

impl Llm {
    /// Loads a GGUF model onto `device`; `tokenizer_json` overrides the tokenizer in the file.
    pub fn load(
        path: &Path,
        device: &Device,
        tokenizer_json: Option<&Path>,
    ) -> Result<Llm, LlmError> {
        if !path.is_file() {
            return Err(LlmError::MissingModel(path.to_path_buf()));
        }
        let unreadable = |why: String| LlmError::Unreadable {
            path: path.to_path_buf(),
            why,
        };
        let started = std::time::Instant::now();
        let content = baton_weights::read_gguf(path).map_err(|e| unreadable(e.to_string()))?;
        let arch = model::architecture(&content);
        if !model::ARCHITECTURES.contains(&arch.as_str()) {
            return Err(LlmError::Unsupported {
                path: path.to_path_buf(),
                arch,
            });
        }
        // Every tensor's bytes are checked against the file before any is loaded, so a
        // truncated download fails here, naming the tensor, not halfway through.
        let mut loaded =
            baton_weights::load_gguf_from(path, content, device, &Default::default(), started)
                .map_err(|e| unreadable(e.to_string()))?;
        let content = &loaded.content;
        let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let text = gguf_tokenizer::from_gguf(content);
        let text = match (text, tokenizer_json) {
            (Ok(text), None) => text,
            (text, Some(json)) => {
                let tokenizer = Tokenizer::from_file(json).map_err(|e| {
                    LlmError::BadModel(format!("tokenizer '{}': {e}", json.display()))
                })?;
                let gguf = text.ok();
                gguf_tokenizer::GgufText {
                    eos: gguf
                        .as_ref()
                        .map(|t| t.eos)
                        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
                        .ok_or_else(|| {
                            LlmError::BadModel(
                                "no end-of-text token in the GGUF or the tokenizer".into(),
                            )
                        })?,
                    bos: gguf.as_ref().and_then(|t| t.bos),
                    chat_template: gguf.as_ref().and_then(|t| t.chat_template.clone()),
                    tokens: gguf.map(|t| t.tokens).unwrap_or_default(),
                    tokenizer,
                }
            }
            (Err(e), None) => return Err(e),
        };
        let n_vocab = content
            .metadata
            .get(&format!("{arch}.vocab_size"))
            .and_then(|v| v.to_u32().ok())
            .map_or(text.tokens.len(), |n| n as usize)
            .max(text.tokenizer.get_vocab_size(true));
        let weights =
            model::LlamaLike::new(content, &mut loaded.tensors, device).map_err(|e| match e {
                LlmError::BadModel(why) => {
                    LlmError::BadModel(format!("'{}': {why}", path.display()))
                }
                other => other,
            })?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| text.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let free_text = (0..n_vocab as u32)
            .map(|id| {
                text.tokenizer.id_to_token(id).is_some_and(|t| {
                    t.chars().any(char::is_alphabetic)
                        && !t.contains(['"', '{', '}', '[', ']', ':', '<', '>'])
                })
            })
            .collect();
        // Tokens whose text ends with one of `marks`, or does where a quote closes the string
        // (`."`: SmolLM2 ended "…Tokyo has its own. Golden Stars." with it, past the hold on
        // a two-word sentence); none of the JSON's other structure.
        let ending_with = |marks: &[char]| -> Vec<bool> {
            (0..n_vocab as u32)
                .map(|id| {
                    text.tokenizer.id_to_token(id).is_some_and(|t| {
                        let words = before_quote(&t);
                        !words.contains(['{', '}', '[', ']', ':', '<', '>'])
                            && words.trim_end().ends_with(marks)
                    })
                })
                .collect()
        };
        let ends_sentence = ending_with(&['.', '!', '?']);
        let ends_clause = ending_with(&[',', ';']);
        let closes_string = (0..n_vocab as u32)
            .map(|id| {
                text.tokenizer
                    .decode(&[id], false)
                    .is_ok_and(|t| t.starts_with('"'))
            })
            .collect();
        // A token's text with its leading space, which a SentencePiece token decoded alone
        // loses ("▁word" reads "word"; its raw text says that it begins a word).
        let spaced = |id: u32| {
            let raw = text.tokenizer.id_to_token(id).unwrap_or_default();
            match raw.strip_prefix('\u{2581}') {
                Some(word) => format!(" {word}"),
                None => text.tokenizer.decode(&[id], false).unwrap_or_default(),
            }
        };
        let texts: Vec<String> = (0..n_vocab as u32).map(spaced).collect();
        let (continues_word, begins_word) = texts
            .iter()
            .map(|t| {
                let mut c = t.chars();
                let (first, second) = (c.next().unwrap_or('"'), c.next());
                (
                    first.is_alphanumeric() || first == '\'' || first == '-',
                    first == ' ' && second.is_some_and(char::is_alphabetic),
                )
            })
            .unzip();
        let unsayable_pieces = (0..n_vocab as u32)
            .zip(&texts)
            .filter_map(|(id, text)| {
                let begins = text.starts_with(' ');
                let letters: String = text
                    .trim_start_matches(' ')
                    .chars()
                    .take_while(|c| c.is_alphabetic())
                    .flat_map(char::to_lowercase)
                    .collect();
                crate::quality::could_be_unsayable(&letters).then_some((id, letters, begins))
            })
            .collect();
        let endings = (0..n_vocab as u32)
            .filter(|&id| ends_sentence[id as usize] || ends_clause[id as usize])
            .map(|id| (id, Piece::new(&texts[id as usize])))
            .collect();
        Ok(Llm {
            weights,
            free_text,
            ends_sentence,
            ends_clause,
            endings,
            closes_string,
            continues_word,
            begins_word,
            unsayable_pieces,
            bos_text: token_text(text.bos),
            eos_text: token_text(Some(text.eos)),
            tokenizer: text.tokenizer,
            eos: text.eos,
            chat_template: text.chat_template,
            arch,
            n_vocab,
            device: device.clone(),
            file_bytes,
            load: loaded.report,
            constraints: std::sync::OnceLock::new(),
            cached: Vec::new(),
        })
    }

    /// The longest sequence the model's rotary tables cover.
    pub fn context(&self) -> usize {
        self.weights.config().context
    }

    /// The logits after `tokens` (a fresh sequence), on the host.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, LlmError> {
        Ok(self
            .forward(tokens, 0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?)
    }

    /// The logits after `input`, which follows the first `pos` tokens of the cache; at most
    /// [`PREFILL_CHUNK`] tokens a pass.
    fn forward(&mut self, input: &[u32], pos: usize) -> Result<Tensor, LlmError> {
        // What the cache holds past `pos` belongs to another sequence.
        if pos < self.cached.len() {
            self.weights.truncate_cache(pos)?;
        }
        self.cached.truncate(pos);
        let mut logits = None;
        for chunk in input.chunks(PREFILL_CHUNK) {
            let x = Tensor::new(chunk, &self.device)?.unsqueeze(0)?;
            logits = Some(self.weights.forward(&x, self.cached.len())?);
            self.cached.extend_from_slice(chunk);
        }
        let logits = logits.ok_or_else(|| LlmError::Generation("no tokens to compute".into()))?;
        Ok(logits.squeeze(0)?)
    }

    /// The logits after `prompt`, computing only what the cache does not already hold: the
    /// parts of a storyboard share their system text and worked example.
    ///
    /// On the CPU only: there a prompt of 700 tokens costs about 2 s on 2 cores, even
    /// multiplied densely (`model::DENSE_FROM`); on a GPU it costs milliseconds, and the
    /// whole prompt is computed as it always was, so the GPU path keeps the kernels and
    /// numbers measured on it.
    fn prefill(&mut self, prompt: &[u32]) -> Result<Tensor, LlmError> {
        if !self.device.is_cpu() {
            return self.forward(prompt, 0);
        }
        let shared = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            // The last prompt token is always computed: its logits are the answer's start.
            .min(prompt.len().saturating_sub(1));
        let started = Instant::now();
        let logits = self.forward(&prompt[shared..], shared)?;
        tracing::debug!(
            "prompt of {} tokens ({shared} from the cache) computed in {:.2?}",
            prompt.len(),
            started.elapsed()
        );
        Ok(logits)
    }

    /// Drops the cache: the next generation computes its whole prompt.
    pub fn forget(&mut self) -> Result<(), LlmError> {
        self.weights.truncate_cache(0)?;
        self.cached.clear();
        Ok(())
    }

    /// The prompt for a system and a user message, through the model's chat template (when
    /// the file has none: Gemma's turns for gemma3, which has no system role, else ChatML).
    pub fn chat_prompt(&self, system: &str, user: &str) -> Result<String, LlmError> {
        self.chat(&[("system", system), ("user", user)])
    }

    /// The prompt for a conversation of (role, content) turns, "system", "user" and
    /// "assistant", ready for the assistant's next turn: earlier assistant turns show a small
    /// model what an answer looks like.
    pub fn chat(&self, turns: &[(&str, &str)]) -> Result<String, LlmError> {
        let template = self.chat_template.clone().unwrap_or_else(|| {
            if self.arch == "gemma3" {
                GEMMA_TEMPLATE.into()
            } else {
                CHATML_TEMPLATE.into()
            }
        });
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &template)
            .map_err(|e| LlmError::BadModel(format!("its chat template does not parse: {e}")))?;
        let messages: Vec<minijinja::Value> = turns
            .iter()
            .map(|(role, content)| minijinja::context! { role => role, content => content })
            .collect();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => self.bos_text,
                    eos_token => self.eos_text,
                })
            })
            .map_err(|e| LlmError::BadModel(format!("its chat template fails: {e}")))
    }

    /// Generates text for `prompt` that matches `schema`, token by token.
    pub fn generate_json(
        &mut self,
        prompt: &str,
        schema: serde_json::Value,
        options: &Sampler,
        on_token: &mut dyn FnMut(usize),
    ) -> Result<Generation, LlmError> {
        self.generate_json_steered(prompt, schema, options, &Steering::default(), on_token)
    }

    /// The token ids of `text`'s longer words (four letters or more), for
    /// [`Llm::generate_json_steered`]: what an earlier scene said, so the next one says
    /// something else. Words in `keep` (the topic's) are left out: those should repeat.
    ///
    /// A word is taken both as it comes inside a text (after a space) and as it comes first
    /// in a string (after the JSON's quote, with no space): byte-level BPE makes two tokens of
    /// these, and a field's first word ("morning" of "morning light") is written the second way.
    pub fn word_tokens(&self, text: &str, keep: &[String]) -> Vec<u32> {
        let alone = text
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()));
        let mut ids: Vec<u32> = std::iter::once(text)
            .chain(alone)
            .filter_map(|piece| self.tokenizer.encode(piece, false).ok())
            .flat_map(|encoding| encoding.get_ids().to_vec())
            .filter(|&id| {
                self.tokenizer.decode(&[id], false).is_ok_and(|t| {
                    let t = t.trim().to_lowercase();
                    is_longer_word(&t)
                        && !keep.iter().any(|k| k.starts_with(&t) || t.starts_with(k))
                })
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The words of `text` the model's tokenizer splits into many pieces
    /// ([`quality::coined`](crate::quality::coined)), the words of `keep` (the topic's) aside:
    /// the tokenizer, built from what people write, serves as the model's dictionary.
    pub fn coined_words(&self, text: &str, keep: &[String]) -> Vec<String> {
        crate::quality::coined(text, keep, |word| self.pieces(word))
    }

    /// How many tokens the tokenizer makes of `word` after a space, as a word inside a text.
    fn pieces(&self, word: &str) -> usize {
        self.tokenizer
            .encode(format!(" {word}"), false)
            .map_or(0, |e| e.get_ids().len())
    }

    /// Whether the word `written` ends with, gone on with, would be coined
    /// ([`Steering::plain_words`]): it makes one piece fewer than
    /// [`COINED_PIECES`](crate::quality::COINED_PIECES) or more, is not capitalised, and is
    /// not one of the `keep` words, a form of one, or the beginning of either
    /// ([`is_form_of`](crate::quality::is_form_of)).
    fn coining(&self, written: &str, keep: &[String]) -> bool {
        let start = written
            .rfind(|c: char| !(c.is_alphanumeric() || c == '\''))
            .map_or(0, |i| {
                i + written[i..].chars().next().map_or(1, char::len_utf8)
            });
        let word = &written[start..];
        // A name may be made up ([`crate::quality::coined`]).
        if !word.chars().next().is_some_and(char::is_lowercase) {
            return false;
        }
        let lower = word.to_lowercase();
        let bare = lower.trim_end_matches("'s").trim_end_matches('\'');
        self.pieces(word) + 1 >= crate::quality::COINED_PIECES
            && !keep
                .iter()
                .any(|k| crate::quality::is_form_of(bare, k, true))
    }

    /// Makes every token that would write a word no storyboard says
    /// ([`unsayable`](crate::quality::unsayable)) after `written` impossible, but for the words
    /// of `keep` (the topic's, which a user may ask about) and where nothing else is allowed (the
    /// constraint's choice). Part of every constrained generation, not a steering to turn off.
    fn unsay(&self, values: &mut [f32], written: &str, keep: &[String]) {
        let partial: String = written
            .chars()
            .rev()
            .take_while(|c| c.is_alphabetic())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .flat_map(char::to_lowercase)
            .collect();
        let kept = |word: &str| {
            keep.iter().any(|k| {
                let k = k.to_lowercase();
                k.starts_with(word) || word.starts_with(&k)
            })
        };
        let unsaid: Vec<usize> = self
            .unsayable_pieces
            .iter()
            .filter(|(id, ..)| values[*id as usize].is_finite())
            .filter_map(|(id, letters, begins)| {
                let word = if *begins {
                    letters.clone()
                } else {
                    format!("{partial}{letters}")
                };
                (crate::quality::unsayable(&word) && !kept(&word)).then_some(*id as usize)
            })
            .collect();
        if unsaid.len() < values.iter().filter(|v| v.is_finite()).count() {
            for id in unsaid {
                values[id] = f32::NEG_INFINITY;
            }
        }
    }

    /// [`Llm::generate_json`], steered ([`Steering`]): the tokens in `avoid` made less likely,
    /// and a word-counted field brought to a sentence's end before its limit forces one.
    pub fn generate_json_steered(
        &mut self,
        prompt: &str,
        schema: serde_json::Value,
        options: &Sampler,
        steering: &Steering,
        on_token: &mut dyn FnMut(usize),
    ) -> Result<Generation, LlmError> {
        let (avoid, penalty) = (steering.avoid, steering.penalty);
        let built = Instant::now();
        let factory = match self.constraints.get() {
            Some(factory) => factory.clone(),
            None => {
                let tok_env =
                    toktrie_hf_tokenizers::ByteTokenizer::from_tokenizer(self.tokenizer.clone())
                        .and_then(|mut b| {
                            b.set_eos_token(self.eos);
                            b.into_tok_env(Some(self.n_vocab))
                        })
                        .map_err(|e| {
                            LlmError::BadModel(format!(
                                "its tokenizer cannot drive the JSON constraint: {e}"
                            ))
                        })?;
                let mut factory = ParserFactory::new_simple(&tok_env)
                    .map_err(|e| LlmError::Generation(e.to_string()))?;
                // A storyboard's word-counted fields are large regexes, and Gemma's vocabulary
                // is 262k tokens: the default budget (200k fuel a token) ran out on one step of
                // "A jazz club in 1920s New York". A heavy step now costs ~0.1 s instead.
                let limits = factory.limits_mut();
                limits.step_lexer_fuel = 5_000_000;
                limits.initial_lexer_fuel = 10_000_000;
                self.constraints
                    .get_or_init(|| std::sync::Arc::new(factory))
                    .clone()
            }
        };
        let mut matcher =
            Matcher::new(factory.create_parser(TopLevelGrammar::from_json_schema(schema)));
        tracing::debug!("constraint ready in {:.2?}", built.elapsed());
        if let Some(err) = matcher.get_error() {
            return Err(LlmError::Generation(format!(
                "the JSON constraint cannot be built: {err}"
            )));
        }
        let prompt_tokens = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| LlmError::Generation(e.to_string()))?
            .get_ids()
            .to_vec();
        let mut sampler = options.logits_processor(true);
        let start = Instant::now();
        let mut logits = self.prefill(&prompt_tokens)?;
        let prompt_time = start.elapsed();
        let mut out: Vec<u32> = Vec::new();
        // The words [`Steering::recall`] keeps less likely.
        let mut recalled: Vec<u32> = Vec::new();
        let decode_start = Instant::now();
        let (mut in_mask, mut in_forward) = (Duration::ZERO, Duration::ZERO);
        let (mut chosen_logprob, mut choices) = (0.0, 0);
        loop {
            if matcher.is_stopped() {
                break;
            }
            let context = self.context();
            if prompt_tokens.len() + out.len() + 1 >= context {
                return Err(LlmError::Generation(format!(
                    "the JSON was not finished within the model's {context}-token context; ask for fewer scenes"
                )));
            }
            if out.len() >= options.max_tokens {
                tracing::debug!(
                    "{} tokens: {in_mask:.2?} computing masks, {in_forward:.2?} in the model",
                    out.len()
                );
                return Err(LlmError::Unfinished {
                    tokens: out.len(),
                    partial: self.tokenizer.decode(&out, true).unwrap_or_default(),
                });
            }
            let t = Instant::now();
            let mask = matcher
                .compute_mask()
                .map_err(|e| LlmError::Generation(e.to_string()))?;
            in_mask += t.elapsed();
            let mut values: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
            values.resize(self.n_vocab.max(values.len()), f32::NEG_INFINITY);
            // What the model would write next with no constraint: whether it thinks its word is
            // finished.
            let unconstrained = values
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(id, _)| id);
            // The model's own distribution, before the constraint and the steering, for how
            // likely it finds what was chosen (`Generation::fluency`).
            let raw = values.clone();
            let mut new_word_allowed = false;
            let mut allowed = 0usize;
            for (id, v) in values.iter_mut().enumerate() {
                if !mask.is_allowed(id as u32) {
                    *v = f32::NEG_INFINITY;
                } else {
                    allowed += 1;
                    if self.begins_word.get(id) == Some(&true) {
                        new_word_allowed = true;
                    }
                }
            }
            let odds_before = odds_of_going_on(&values, &self.continues_word);
            penalize_repeats(
                &mut values,
                &out,
                &recalled,
                &self.free_text,
                options.repeat_penalty,
            );
            for &id in avoid {
                if self.free_text.get(id as usize) == Some(&true)
                    && let Some(v) = values.get_mut(id as usize)
                    && v.is_finite()
                {
                    *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
                }
            }
            keep_odds_of_going_on(&mut values, &self.continues_word, odds_before);
            let written = self.tokenizer.decode(&out, false).unwrap_or_default();
            // The model has finished its word and would begin another (or write what the
            // constraint refuses), but the constraint admits no other word in this string: the
            // field is at its word limit. End it here (close the string, or end the sentence
            // where it must end one) rather than let the constraint glue letters onto the word.
            if steering.end_at_word_limit
                && !new_word_allowed
                && let Some(top) = unconstrained
                && self.continues_word.get(top) == Some(&false)
                && values.get(top).is_some_and(|v| !v.is_finite())
                && inside_string(&written)
            {
                for (id, v) in values.iter_mut().enumerate() {
                    if self.continues_word.get(id) == Some(&false)
                        && (self.closes_string[id] || self.ends_sentence[id])
                        && v.is_finite()
                    {
                        *v += WORD_LIMIT_END;
                    }
                }
            }
            if let Some(keep) = steering.plain_words
                && inside_string(&written)
                && self.coining(&written, keep)
            {
                for (&goes_on, v) in self.continues_word.iter().zip(values.iter_mut()) {
                    if goes_on {
                        *v -= COINING;
                    }
                }
            }
            // A sentence ended too near the field's word limit for another: close the field
            // (where it may close).
            let tail = steering.wrap_up.as_ref().and_then(|w| w.tail(&written));
            if let (Some(wrap), Some(tail)) = (&steering.wrap_up, &tail)
                && wrap.no_room(tail)
                && self
                    .closes_string
                    .iter()
                    .zip(&values)
                    .any(|(&closes, v)| closes && v.is_finite())
            {
                for (&begins, v) in self.begins_word.iter().zip(values.iter_mut()) {
                    if begins {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            // A sentence too short to end, or on "a" or "the", or a clause of one word, counting
            // the word the ending token carries: no end here while another word may follow.
            if let (Some(wrap), Some(tail)) = (&steering.wrap_up, &tail)
                && new_word_allowed
            {
                for (id, piece) in &self.endings {
                    let id = *id as usize;
                    if values[id].is_finite() {
                        let hold = wrap.holds(tail, piece);
                        if (hold.sentence && self.ends_sentence[id])
                            || (hold.clause && self.ends_clause[id])
                        {
                            values[id] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            if let (Some(wrap), Some(tail)) = (&steering.wrap_up, &tail)
                && let Some(nudge) = wrap.nudge(tail)
            {
                let (tokens, bonus) = match nudge {
                    Nudge::EndSentence(b) => (&self.ends_sentence, b),
                    Nudge::Close(b) => (&self.closes_string, b),
                };
                for (id, v) in values.iter_mut().enumerate() {
                    if tokens[id] && v.is_finite() {
                        *v += bonus;
                    }
                }
            }
            self.unsay(
                &mut values,
                &written,
                steering.plain_words.unwrap_or_default(),
            );
            let masked = Tensor::new(values.as_slice(), &Device::Cpu)?;
            let next = sampler.sample(&masked)?;
            if allowed > 1 {
                chosen_logprob += f64::from(raw[next as usize] - log_sum_exp(&raw));
                choices += 1;
            }
            if next == self.eos {
                break;
            }
            matcher.consume_token(next).map_err(|e| {
                LlmError::Generation(format!("the constraint refused token {next}: {e}"))
            })?;
            out.push(next);
            if steering.recall
                && self.free_text.get(next as usize) == Some(&true)
                && steering.spared.binary_search(&next).is_err()
                && !recalled.contains(&next)
                && self
                    .tokenizer
                    .decode(&[next], false)
                    .is_ok_and(|t| is_longer_word(&t))
            {
                recalled.push(next);
            }
            on_token(out.len());
            if matcher.is_stopped() {
                break;
            }
            let t = Instant::now();
            logits = self.forward(&[next], prompt_tokens.len() + out.len() - 1)?;
            in_forward += t.elapsed();
        }
        tracing::debug!(
            "{} tokens: {in_mask:.2?} computing masks, {in_forward:.2?} in the model",
            out.len()
        );
        let text = self
            .tokenizer
            .decode(&out, true)
            .map_err(|e| LlmError::Generation(e.to_string()))?;
        Ok(Generation {
            text,
            prompt_tokens: prompt_tokens.len(),
            tokens: out.len(),
            prompt_time,
            decode_time: decode_start.elapsed(),
            chosen_logprob,
            choices,
        })
    }
}

impl Llm {
    /// Free text for `prompt`, without a constraint: the loop of candle's own quantized example
    /// (the prompt in one forward pass, then one token at a time, candle's repeat penalty over
    /// the last `repeat_last_n` tokens, stop at end-of-text or after `max_tokens`). The benchmark
    /// runs it beside that example, so the two can be compared token for token.
    pub fn generate_text(
        &mut self,
        prompt: &str,
        options: &Sampler,
        repeat_last_n: usize,
    ) -> Result<Generation, LlmError> {
        let prompt_tokens = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| LlmError::Generation(e.to_string()))?
            .get_ids()
            .to_vec();
        if prompt_tokens.is_empty() {
            return Err(LlmError::Generation("the prompt has no tokens".into()));
        }
        let context = self.context();
        if prompt_tokens.len() + options.max_tokens >= context {
            return Err(LlmError::Generation(format!(
                "{} prompt tokens + {} to generate do not fit the {context}-token context",
                prompt_tokens.len(),
                options.max_tokens
            )));
        }
        // candle's example samples from the whole distribution (no top-p).
        let mut sampler = options.logits_processor(false);
        let start = Instant::now();
        let logits = self.forward(&prompt_tokens, 0)?;
        let mut next = sampler.sample(&logits)?;
        let prompt_time = start.elapsed();
        let mut out = vec![next];
        let decode_start = Instant::now();
        let mut sampled = 0;
        for index in 0..options.max_tokens.saturating_sub(1) {
            let logits = self.forward(&[next], prompt_tokens.len() + index)?;
            let logits = if options.repeat_penalty == 1.0 {
                logits
            } else {
                let from = out.len().saturating_sub(repeat_last_n);
                candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    options.repeat_penalty,
                    &out[from..],
                )?
            };
            next = sampler.sample(&logits)?;
            out.push(next);
            sampled += 1;
            if next == self.eos {
                break;
            }
        }
        let decode_time = decode_start.elapsed();
        let text = self
            .tokenizer
            .decode(&out, true)
            .map_err(|e| LlmError::Generation(e.to_string()))?;
        Ok(Generation {
            text,
            prompt_tokens: prompt_tokens.len(),
            tokens: sampled,
            prompt_time,
            decode_time,
            chosen_logprob: 0.0,
            choices: 0,
        })
    }
}

/// The most tokens one forward pass computes; a longer prompt is computed in parts of this
/// size. It bounds the workspaces [`warm_up`] grows in advance.
pub const PREFILL_CHUNK: usize = 512;

/// The widest input a quantized matmul of a model baton runs may have: a feed-forward's inner
/// width (Llama-3.1-8B's is 14336, Qwen2.5-7B's 18944).
const WIDEST_INPUT: usize = 32768;

/// Runs each kind of kernel a forward pass uses once on `device` (a GPU), so the CUDA modules and
/// the cuBLAS workspace they load are part of the process's baseline, not charged to the model:
/// they stay with the CUDA context until the process exits, whatever the model does.
///
/// So do candle's quantized-matmul workspaces: one per GPU per process, grown to the largest
/// batch seen and never freed. They are grown here to what a forward pass can need
/// ([`PREFILL_CHUNK`] tokens of [`WIDEST_INPUT`]); grown by the scenes stage's first long
/// prompt instead, they were 17.1 MiB still allocated after the model was dropped, pinning
/// two chunks of the memory pool: monolithic mode's "+72 MiB" leak after the scenes stage.
pub fn warm_up(device: &Device) -> Result<(), LlmError> {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{DType, Module};
    if !device.is_cuda() {
        return Ok(());
    }
    let x = Tensor::randn(0f32, 1f32, (1, 4, 64), device)?;
    let w = Tensor::ones(64, DType::F32, device)?;
    let y = candle_nn::ops::rms_norm(&x, &w, 1e-5)?;
    let scores = y.matmul(&x.transpose(1, 2)?.contiguous()?)?;
    let probs = candle_nn::ops::softmax_last_dim(&((scores * 0.5)? + 1.0)?)?;
    let _ = candle_nn::ops::silu(&probs)?
        .to_dtype(DType::F16)?
        .to_dtype(DType::F32)?;
    let table = Tensor::ones((4, 32), DType::F32, device)?;
    let _ = candle_nn::rotary_emb::rope_i(&x.reshape((1, 1, 4, 64))?, &table, &table)?;
    let weights = Tensor::ones((64, 64), DType::F32, &Device::Cpu)?;
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let q = QTensor::quantize_onto(
            &Tensor::ones((64, 256), DType::F32, &Device::Cpu)?,
            dtype,
            device,
        )?;
        let _ = q.dequantize(device)?;
    }
    let qmm = QMatMul::from_qtensor(QTensor::quantize_onto(&weights, GgmlDType::Q4_1, device)?)?;
    let _ = qmm.forward(&x)?;
    // The workspaces: the few-token kernels' (decoding) and the many-token kernels' (a
    // prompt), at their widest.
    let wide = QMatMul::from_qtensor(QTensor::quantize_onto(
        &Tensor::zeros((128, WIDEST_INPUT), DType::F32, &Device::Cpu)?,
        GgmlDType::Q4_1,
        device,
    )?)?;
    for tokens in [8, PREFILL_CHUNK] {
        let _ = wide.forward(&Tensor::zeros(
            (1, tokens, WIDEST_INPUT),
            DType::F32,
            device,
        )?)?;
    }
    let rows = x
        .squeeze(0)?
        .index_select(&Tensor::new(&[0u32, 1], device)?, 0)?;
    let mask = Tensor::new(&[1u8, 0], device)?
        .reshape((2, 1))?
        .broadcast_as((2, 64))?;
    let _ = mask.where_cond(&rows, &rows.zeros_like()?)?;
    let _ = Tensor::cat(&[&rows, &rows], 1)?
        .narrow(1, 0, 8)?
        .argmax_keepdim(1)?;
    device.synchronize()?;
    Ok(())
}

/// candle's own quantized llama, qwen2 or qwen3 (`from_gguf`: it reads its tensors itself) on the same
/// file: the logits after `tokens` and the seconds its load took. What `baton bench llm` checks
/// baton's model against, on whatever device it runs. None for gemma3: candle's quantized gemma3
/// is not Gemma 3 (SiLU for GELU), so baton's is checked against candle's full-precision gemma3
/// in the tests instead.
pub fn candle_reference(
    path: &Path,
    device: &Device,
    tokens: &[u32],
) -> Result<Option<(Vec<f32>, f64)>, LlmError> {
    use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
    let unreadable = |why: String| LlmError::Unreadable {
        path: path.to_path_buf(),
        why,
    };
    let started = Instant::now();
    let mut file =
        std::fs::File::open(path).map_err(|_| LlmError::MissingModel(path.to_path_buf()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| unreadable(e.to_string()))?;
    let arch = model::architecture(&content);
    let x = Tensor::new(tokens, device)?.unsqueeze(0)?;
    let (logits, seconds) = match arch.as_str() {
        "llama" => {
            let mut m = quantized_llama::ModelWeights::from_gguf(content, &mut file, device)?;
            device.synchronize()?;
            let seconds = started.elapsed().as_secs_f64();
            (m.forward(&x, 0)?, seconds)
        }
        "qwen2" => {
            let mut m = quantized_qwen2::ModelWeights::from_gguf(content, &mut file, device)?;
            device.synchronize()?;
            let seconds = started.elapsed().as_secs_f64();
            (m.forward(&x, 0)?, seconds)
        }
        "qwen3" => {
            let mut m = quantized_qwen3::ModelWeights::from_gguf(content, &mut file, device)?;
            device.synchronize()?;
            let seconds = started.elapsed().as_secs_f64();
            (m.forward(&x, 0)?, seconds)
        }
        "gemma3" => return Ok(None),
        _ => {
            return Err(LlmError::Unsupported {
                path: path.to_path_buf(),
                arch,
            });
        }
    };
    let logits = logits
        .squeeze(0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(Some((logits, seconds)))
}

/// ChatML, for a model whose file carries no template.
const CHATML_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Gemma's turns (its files often carry no template): no system role, so the system text opens
/// the first user turn; the assistant is the "model".
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}<start_of_turn>user\n{{ m.content }}\n\n{% elif m.role == 'user' %}{% if not (loop.index0 == 1 and messages[0].role == 'system') %}<start_of_turn>user\n{% endif %}{{ m.content }}<end_of_turn>\n{% else %}<start_of_turn>model\n{{ m.content }}<end_of_turn>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// How many recent tokens the repeat penalty looks at.
const REPEAT_WINDOW: usize = 64;

/// How a constrained generation is steered beyond sampling: words to make less likely, and a
/// field to bring to a sentence's end in good time.
#[derive(Debug, Clone)]
pub struct Steering<'a> {
    /// Tokens made less likely: their logits divided by `penalty` (a positive one; multiplied,
    /// a negative one), on word tokens only, never the JSON's structure.
    pub avoid: &'a [u32],
    pub penalty: f32,
    pub wrap_up: Option<WrapUp>,
    /// A string at the most words its schema allows is ended where the model finishes its last
    /// word, instead of having letters glued on by the constraint.
    pub end_at_word_limit: bool,
    /// Recall: every longer word (four letters or more) written so far stays less likely, the
    /// repeat penalty applied once to each past its window, but for the `spared` tokens (the
    /// topic's words, which every line of an outline names). For text longer than the window:
    /// SmolLM2 wrote six outline lines in which the fifth and sixth copied the third and
    /// fourth, 70 tokens back.
    pub recall: bool,
    /// The tokens recall spares, sorted. The windowed penalty does not spare them: when it
    /// did too, SmolLM2 filled outlines with the topic ("Bees are like bees, bees can eat
    /// bees").
    pub spared: &'a [u32],
    /// Words held to the model's vocabulary: inside a string, once the word being written makes
    /// one piece fewer than [`COINED_PIECES`](crate::quality::COINED_PIECES) (taken after a
    /// space, as [`Llm::coined_words`] takes it), the tokens that would go on with it get
    /// [`COINING`] less logit, unless it is one of these (the topic's), a form of one or the
    /// beginning of either, or it is capitalised (a name). SmolLM2, its likelier words made
    /// less likely, glued and made up words ("citys'n", "attheubilee", "the old kokoro").
    pub plain_words: Option<&'a [String]>,
}

impl Default for Steering<'_> {
    /// Not steered.
    fn default() -> Self {
        Steering {
            avoid: &[],
            penalty: 1.0,
            wrap_up: None,
            end_at_word_limit: false,
            recall: false,
            spared: &[],
            plain_words: None,
        }
    }
}

/// Inside the JSON string `field`, once it holds `from_words` words, the tokens that end a
/// sentence get `per_word` more logit for each word from there, and once a sentence has ended
/// there, the tokens that close the string get `close` more: a small model then ends where it
/// reads well, rather than where the field's word limit forces a full stop onto whatever word
/// comes ("asin'lly."), and does not start a sentence it has no room to finish ("As she.").
/// A sentence is not pushed to end, nor let end, before it has `min_sentence` words (the field
/// `min_words`) or on one of the `dangling` words ("a", "the"), and a clause does not end (with
/// a comma or a semicolon) before it has `min_clause` words or on a dangling word: with many of
/// its words made less likely, a small model wrote fragments ("…in a. Golden. Stars. You know,
/// a. A. Day.") and lists of commas ("The jazz club, a place, where, he's, going to."). Either
/// is let end all the same where no other word may follow (the field's word limit).
#[derive(Debug, Clone)]
pub struct WrapUp {
    pub field: &'static str,
    pub from_words: usize,
    pub per_word: f32,
    pub close: f32,
    pub min_sentence: usize,
    pub min_clause: usize,
    /// No sentence ends before the field has this many words: SmolLM2 closed narrations of
    /// five ("The migration of the wildebeest.").
    pub min_words: usize,
    /// No sentence begins with fewer than `room` words left before the field's `max_words`:
    /// where the string may close there, it must. SmolLM2 began one all the same and was cut
    /// at the limit ("…and it just got here. It flies up to.").
    pub max_words: usize,
    pub room: usize,
    pub dangling: &'static [&'static str],
}

/// What [`WrapUp::holds`] keeps from ending yet.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Hold {
    pub sentence: bool,
    pub clause: bool,
}

/// What [`WrapUp`] makes more likely now, and by how much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nudge {
    /// Tokens that end a sentence.
    EndSentence(f32),
    /// Tokens that close the string.
    Close(f32),
}

impl WrapUp {
    /// The nudge for the field's text as `tail` describes it, `None` before its count.
    pub fn nudge(&self, tail: &Tail) -> Option<Nudge> {
        if tail.words < self.from_words {
            return None;
        }
        if tail.ended {
            return Some(Nudge::Close(self.close));
        }
        (!self.holds(tail, &Piece::default()).sentence)
            .then(|| Nudge::EndSentence(self.per_word * (tail.words + 1 - self.from_words) as f32))
    }

    /// The sentence being written in the field, as far as ending it goes; `None` outside the
    /// field.
    pub fn tail(&self, written: &str) -> Option<Tail> {
        let inside = open_field(written, self.field)?;
        let sentence: Vec<&str> = inside
            .split_whitespace()
            .rev()
            .take_while(|w| !w.ends_with(['.', '!', '?']))
            .collect();
        let clause = sentence
            .iter()
            .take_while(|w| !w.ends_with([',', ';', ':']))
            .count();
        Some(Tail {
            ended: inside.trim_end().ends_with(['.', '!', '?']),
            words: inside.split_whitespace().count(),
            sentence: sentence.len(),
            clause,
            last: sentence
                .first()
                .map(|w| w.to_lowercase())
                .unwrap_or_default(),
            in_word: inside
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '\'' || c == '-'),
        })
    }

    /// Whether `piece`, a token that ends a sentence or a clause, may not be written next: the
    /// sentence (or clause) it would end has fewer words than it needs (`min_sentence`,
    /// `min_clause`), or its last word is one of the `dangling` ones. The token's own word
    /// counts: " as." after "It was" ends a sentence on "as", and " But." after a full stop
    /// is a sentence of one word (SmolLM2 wrote both while only the text before them was
    /// looked at).
    pub fn holds(&self, tail: &Tail, piece: &Piece) -> Hold {
        let (new, last) = if tail.in_word && !piece.begins_word {
            (0, format!("{}{}", tail.last, piece.word))
        } else if piece.word.is_empty() {
            (0, tail.last.clone())
        } else {
            (1, piece.word.clone())
        };
        let (sentence, clause) = (tail.sentence + new, tail.clause + new);
        let dangling = self.dangling.contains(&last.as_str());
        Hold {
            sentence: sentence < self.min_sentence || tail.words + new < self.min_words || dangling,
            clause: clause < self.min_clause || dangling,
        }
    }

    /// Whether the field must close rather than begin another sentence ([`WrapUp::room`]).
    pub fn no_room(&self, tail: &Tail) -> bool {
        tail.ended && tail.words + self.room > self.max_words
    }
}

/// The sentence being written, as [`WrapUp::holds`] needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    /// Whether the text ends a sentence.
    ended: bool,
    /// The field's words so far, the one being written included.
    words: usize,
    /// The sentence's words so far, the one being written included.
    sentence: usize,
    /// The words since its last comma, semicolon or colon.
    clause: usize,
    /// Its last word, lowercased.
    last: String,
    /// Whether the text ends inside a word, which a token without a leading space continues.
    in_word: bool,
}

/// A token that ends a sentence or a clause, as [`WrapUp::holds`] needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Piece {
    /// It begins a new word (a space, then a letter).
    pub begins_word: bool,
    /// Its letters, lowercased, without the leading space and the closing marks: "as" for
    /// " as.", "" for ".".
    pub word: String,
}

impl Piece {
    /// The piece a token's text (its leading space included) makes; what follows a quote
    /// (the string's end) is not its.
    pub fn new(text: &str) -> Piece {
        let text = before_quote(text);
        let word = text
            .trim()
            .trim_end_matches(['.', '!', '?', ',', ';', ':'])
            .to_lowercase();
        Piece {
            begins_word: text.starts_with(char::is_whitespace) && !word.is_empty(),
            word,
        }
    }
}

/// A token's text up to its first quote: what it writes inside a JSON string.
fn before_quote(text: &str) -> &str {
    text.split('"').next().unwrap_or_default()
}

/// What the string field `field` holds so far, while it is the one being written.
fn open_field<'a>(written: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\": \"");
    let inside = &written[written.rfind(&key)? + key.len()..];
    (!inside.contains('"')).then_some(inside)
}

/// Whether JSON written so far ends inside a string (an odd number of unescaped quotes).
fn inside_string(written: &str) -> bool {
    let mut inside = false;
    let mut escaped = false;
    for c in written.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => inside = !inside,
            _ => {}
        }
    }
    inside
}

/// How much less logit [`Steering::plain_words`] gives the tokens that would go on with a word
/// about to be coined: a word's third piece the model is sure of (95%) is still written nearly
/// nine times in ten at a temperature of 0.5 (four in five at 0.7), one it is not sure of
/// (50%) once in fifty (once in twenty at 0.7).
const COINING: f32 = 2.0;

/// Whether a token's text is a longer word, one of four letters or more: the words
/// [`Llm::word_tokens`] takes and [`Steering::recall`] keeps less likely. Shorter ones ("a",
/// "the", "of") every sentence needs.
fn is_longer_word(text: &str) -> bool {
    text.chars().filter(|c| c.is_alphabetic()).count() >= 4
}

/// Small models loop: the words among the last [`REPEAT_WINDOW`] tokens of `out` are made
/// less likely (llama.cpp's penalty: a positive logit divided by `penalty`, a negative one
/// multiplied, once for each time the token is there), but never the JSON's own structure,
/// which must repeat (`free_text` says which tokens are words). Each `recalled` token
/// ([`Steering::recall`]) written before the window is made less likely once: counted per
/// occurrence over a whole outline, the penalty crushed the words every sentence needs.
fn penalize_repeats(
    values: &mut [f32],
    out: &[u32],
    recalled: &[u32],
    free_text: &[bool],
    penalty: f32,
) {
    let window = out.len().saturating_sub(REPEAT_WINDOW);
    let before_window = recalled.iter().filter(|id| !out[window..].contains(id));
    for &id in out[window..].iter().chain(before_window) {
        if free_text.get(id as usize) == Some(&true)
            && let Some(v) = values.get_mut(id as usize)
            && v.is_finite()
        {
            *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
        }
    }
}

/// The log-odds that the next token goes on with the word being written (a token whose
/// text begins inside a word) rather than anything else, over the finite `values`; `None` when
/// either side has no allowed token.
fn odds_of_going_on(values: &[f32], goes_on: &[bool]) -> Option<f32> {
    let side = |on: bool| -> Vec<f32> {
        values
            .iter()
            .zip(goes_on)
            .filter(|&(v, &g)| g == on && v.is_finite())
            .map(|(&v, _)| v)
            .collect()
    };
    let (on, off) = (log_sum_exp(&side(true)), log_sum_exp(&side(false)));
    (on.is_finite() && off.is_finite()).then_some(on - off)
}

/// The penalties choose the next word, not whether the word being written ends: where they
/// made the word's going on likelier than `before` (the odds [`odds_of_going_on`] gave before
/// them), the tokens that go on with it are made less likely by as much, so the odds are
/// back where the model had them, and which word comes next is left to the penalties. With
/// the words it would say next made less likely, SmolLM2 glued pieces onto the word it was
/// writing instead ("I willne", "I havekyo", "citys'n"): the mass the penalties took from the
/// next words went to the pieces.
fn keep_odds_of_going_on(values: &mut [f32], goes_on: &[bool], before: Option<f32>) {
    let (Some(before), Some(after)) = (before, odds_of_going_on(values, goes_on)) else {
        return;
    };
    let excess = after - before;
    if excess > 0.0 {
        for (v, &g) in values.iter_mut().zip(goes_on) {
            if g {
                *v -= excess;
            }
        }
    }
}

/// The logit added to the tokens that end a field at its word limit: enough to win over any
/// letter the model would glue on.
const WORD_LIMIT_END: f32 = 30.0;

/// How tokens are chosen.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// 0 picks the most likely allowed token every time.
    pub temperature: f64,
    pub top_p: f64,
    /// The same seed, model and prompt give the same text.
    pub seed: u64,
    pub max_tokens: usize,
    /// Divides the logits of tokens among the last 64 (1.0: off).
    pub repeat_penalty: f32,
}

impl Sampler {
    /// candle's sampler for these settings: greedy at temperature 0, else by temperature, over
    /// the nucleus of `top_p` when `nucleus` is set.
    fn logits_processor(&self, nucleus: bool) -> LogitsProcessor {
        let sampling = match (self.temperature <= 0.0, nucleus) {
            (true, _) => Sampling::ArgMax,
            (false, true) => Sampling::TopP {
                p: self.top_p,
                temperature: self.temperature,
            },
            (false, false) => Sampling::All {
                temperature: self.temperature,
            },
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

/// What a generation produced, and how fast.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    /// The natural log of how likely the model itself (before the constraint and any
    /// steering) found the tokens chosen where the constraint left a choice, summed; and how
    /// many such tokens there were. A constrained generation only.
    pub chosen_logprob: f64,
    pub choices: usize,
}

impl Generation {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }

    /// The mean log-probability of the chosen tokens under the model's own distribution: how
    /// fluent the model finds what was written (higher reads better; a word the constraint
    /// forced, or one made up where the model would have stopped, costs). `None` with no choice.
    pub fn fluency(&self) -> Option<f64> {
        (self.choices > 0).then(|| self.chosen_logprob / self.choices as f64)
    }
}

/// `ln(sum(exp(v)))` over the finite values, computed without overflow.
fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f32 = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| (v - max).exp())
        .sum();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::{
        Nudge, Piece, REPEAT_WINDOW, WrapUp, inside_string, keep_odds_of_going_on, log_sum_exp,
        odds_of_going_on, penalize_repeats,
    };

    /// The tiny random llama ([`write_tiny_llama`](crate::llm::tiny::write_tiny_llama)),
    /// loaded on the CPU. Its tokenizer merges no letters.
    fn tiny_llama() -> super::Llm {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        crate::llm::tiny::write_tiny_llama(&path, 1).unwrap();
        super::Llm::load(&path, &candle_core::Device::Cpu, None).unwrap()
    }

    #[test]
    fn a_word_one_piece_short_of_coined_is_held_unless_it_is_the_topics() {
        // The tiny tokenizer merges no letters: " a" is two pieces ("Ġ", "a"), " ab" three.
        let llm = tiny_llama();
        let keep = ["abc".to_string()];
        // The word the text ends with: after a space, a quote, a hyphen, or at the start.
        assert!(llm.coining("{\"narration\": \"The a", &[]));
        assert!(llm.coining("{\"narration\": \"a", &[]));
        assert!(llm.coining("end-of", &[]));
        assert!(llm.coining("a", &[]));
        // A word that ended, or none begun.
        assert!(!llm.coining("{\"narration\": \"The a ", &[]));
        assert!(!llm.coining("The a,", &[]));
        assert!(!llm.coining("", &[]));
        // The beginning of a topic's word, or a form of one.
        assert!(!llm.coining("The ab", &keep));
        assert!(!llm.coining("The abcs", &keep));
        assert!(!llm.coining("The abc's", &keep));
        // Not a word glued onto one.
        assert!(llm.coining("The abcof", &keep));
        assert!(llm.coining("The b", &keep));
        // A name.
        assert!(!llm.coining("The Ab", &[]));
    }

    #[test]
    fn a_word_no_storyboard_says_cannot_be_written_unless_it_is_the_topics() {
        // The tiny tokenizer merges no letters: a word is written a letter at a time.
        let llm = tiny_llama();
        let id = |letter: &str| llm.tokenizer.token_to_id(letter).unwrap() as usize;
        let after = |written: &str, keep: &[String]| {
            let mut values = vec![0.0_f32; llm.n_vocab];
            llm.unsay(&mut values, written, keep);
            values
        };
        // The last letter of a slur, and of a profanity, are refused; another is not.
        let values = after("{\"narration\": \"The nigge", &[]);
        assert_eq!(values[id("r")], f32::NEG_INFINITY);
        assert_eq!(values[id("d")], 0.0);
        assert_eq!(after("The fuc", &[])[id("k")], f32::NEG_INFINITY);
        // Innocent words that hold their letters are written: "niggle", "raccoon", "Negroni",
        // "mother" (of "motherfucker").
        assert_eq!(after("A nigg", &[])[id("l")], 0.0);
        assert_eq!(after("A racco", &[])[id("n")], 0.0);
        assert_eq!(after("A mothe", &[])[id("r")], 0.0);
        assert_eq!(after("A negron", &[])[id("i")], 0.0);
        assert_eq!(after("The coo", &[])[id("n")], f32::NEG_INFINITY);
        // A topic's word is the user's to ask about.
        let keep = ["negro".to_string()];
        assert_eq!(after("The negr", &[])[id("o")], f32::NEG_INFINITY);
        assert_eq!(after("The negr", &keep)[id("o")], 0.0);
        // Where the constraint allows nothing else, it is its choice.
        let mut only = vec![f32::NEG_INFINITY; llm.n_vocab];
        only[id("k")] = 0.0;
        llm.unsay(&mut only, "The fuc", &[]);
        assert_eq!(only[id("k")], 0.0);
    }

    #[test]
    fn repeats_in_the_window_count_each_time_and_recalled_words_before_it_once() {
        // Tokens 0-2 are words, 3 is the JSON's structure; 9 fills the window.
        let free_text = [
            true, true, true, false, false, false, false, false, false, true,
        ];
        let penalize = |out: &[u32], recalled: &[u32]| {
            let mut values = vec![4.0, 4.0, -4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
            penalize_repeats(&mut values, out, recalled, &free_text, 2.0);
            values
        };
        // In the window: a word once per time it is there; the structure never.
        let v = penalize(&[0, 0, 2, 3, 3], &[]);
        assert_eq!(&v[..4], [1.0, 4.0, -8.0, 4.0]);
        // Out of the window, a word is forgotten, unless recalled: then once, however often
        // it was written.
        let mut out = vec![0, 0, 0, 1];
        out.extend(std::iter::repeat_n(9, REPEAT_WINDOW));
        let v = penalize(&out, &[]);
        assert_eq!(&v[..2], [4.0, 4.0]);
        let v = penalize(&out, &[0, 1]);
        assert_eq!(&v[..2], [2.0, 2.0]);
        // A recalled word written again inside the window counts as the window counts it.
        out.push(0);
        let v = penalize(&out, &[0]);
        assert_eq!(v[0], 2.0);
    }

    #[test]
    fn log_sum_exp_skips_masked_values_and_does_not_overflow() {
        let naive = |v: &[f32]| v.iter().map(|x| x.exp()).sum::<f32>().ln();
        let small = [0.5_f32, -1.0, 2.0];
        assert!((log_sum_exp(&small) - naive(&small)).abs() < 1e-5);
        // Masked tokens (-inf) add nothing.
        let masked = [0.5_f32, f32::NEG_INFINITY, -1.0, 2.0];
        assert!((log_sum_exp(&masked) - naive(&small)).abs() < 1e-5);
        // exp(1000) overflows f32; the shifted sum does not: 1000 + ln 2.
        let large = [1000.0_f32, 1000.0];
        assert!((log_sum_exp(&large) - (1000.0 + 2f32.ln())).abs() < 1e-3);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY]), f32::NEG_INFINITY);
    }

    #[test]
    fn penalties_leave_the_odds_of_a_word_going_on_where_the_model_had_them() {
        // Tokens: two next words (" will", " be"), two pieces that go on with the word ("ne",
        // "kyo"), and one the constraint refused.
        let goes_on = [false, false, true, true, false];
        let model = [3.0_f32, 2.5, 1.0, 0.5, f32::NEG_INFINITY];
        let before = odds_of_going_on(&model, &goes_on);
        let softmax = |v: &[f32]| {
            let z = log_sum_exp(v);
            v.iter().map(|x| (x - z).exp()).collect::<Vec<f32>>()
        };
        let going_on = |v: &[f32]| softmax(v)[2] + softmax(v)[3];
        // Both next words penalised hard: the pieces would take most of the mass.
        let mut penalised = [3.0_f32 / 4.0, 2.5 / 4.0, 1.0, 0.5, f32::NEG_INFINITY];
        assert!(going_on(&penalised) > 0.5);
        keep_odds_of_going_on(&mut penalised, &goes_on, before);
        assert!((going_on(&penalised) - going_on(&model)).abs() < 1e-5);
        // Which next word comes is still the penalties' choice, and which piece the model's.
        assert_eq!(penalised[0], 0.75);
        assert_eq!(penalised[1], 0.625);
        assert!((penalised[2] - penalised[3] - 0.5).abs() < 1e-6);
        assert_eq!(penalised[4], f32::NEG_INFINITY);
        // A penalty on the pieces themselves is left alone: the word may end sooner.
        let mut pieces_penalised = [3.0_f32, 2.5, 0.25, 0.5, f32::NEG_INFINITY];
        keep_odds_of_going_on(&mut pieces_penalised, &goes_on, before);
        assert_eq!(
            pieces_penalised,
            [3.0_f32, 2.5, 0.25, 0.5, f32::NEG_INFINITY]
        );
        // With no piece allowed there are no odds to keep.
        assert_eq!(
            odds_of_going_on(&[1.0, 2.0, f32::NEG_INFINITY], &[false, false, true]),
            None
        );
    }

    #[test]
    fn inside_a_string_is_told_by_unescaped_quotes() {
        assert!(!inside_string(""));
        assert!(inside_string(r#"{"title": "One two"#));
        assert!(!inside_string(r#"{"title": "One two""#));
        assert!(inside_string(r#"{"title": "One \"two"#), "an escaped quote");
        assert!(
            !inside_string(r#"{"title": "One \\""#),
            "an escaped backslash"
        );
        assert!(inside_string(r#"{"a": ["x", "y"#));
    }

    #[test]
    fn the_wrap_up_nudges_to_end_the_sentence_then_to_close_its_field_only() {
        let wrap = WrapUp {
            field: "narration",
            from_words: 3,
            per_word: 0.5,
            close: 4.0,
            min_sentence: 2,
            min_clause: 2,
            min_words: 3,
            max_words: 12,
            room: 4,
            dangling: &["the"],
        };
        let before = r#"{"title": "A b c d e", "narration": "#;
        let nudge = |written: &str| wrap.tail(written).and_then(|t| wrap.nudge(&t));
        assert_eq!(nudge(r#"{"title": "A b c d e"#), None, "another field");
        assert_eq!(nudge(&format!("{before}\"One two")), None, "two words");
        assert_eq!(
            nudge(&format!("{before}\"One two thr")),
            Some(Nudge::EndSentence(0.5))
        );
        assert_eq!(
            nudge(&format!("{before}\"One two three four")),
            Some(Nudge::EndSentence(1.0))
        );
        assert_eq!(
            nudge(&format!("{before}\"One two three four.")),
            Some(Nudge::Close(4.0)),
            "a sentence ended: close the string rather than begin another"
        );
        assert_eq!(
            nudge(&format!("{before}\"One two three four. Five")),
            None,
            "a sentence begun all the same is not cut to one word"
        );
        assert_eq!(
            nudge(&format!("{before}\"One two three four. Five six")),
            Some(Nudge::EndSentence(2.0))
        );
        // Nor let end: on a word alone, or on "the"; a clause neither. The ending token's own
        // word counts.
        let holds = |text: &str, token: &str| {
            let tail = wrap
                .tail(&format!("{before}\"{text}"))
                .expect("in the field");
            let h = wrap.holds(&tail, &Piece::new(token));
            (h.sentence, h.clause)
        };
        assert_eq!(holds("One two three four. Five", "."), (true, true));
        assert_eq!(holds("One two three, the", "."), (true, true));
        assert_eq!(holds("One two three", "."), (false, false));
        assert_eq!(
            holds("One two thr", "ee."),
            (false, false),
            "a word finished"
        );
        assert_eq!(
            holds("One two three, four", ","),
            (false, true),
            "a clause of one word"
        );
        assert_eq!(holds("One two three, four five", ","), (false, false));
        assert_eq!(
            holds("One two", " three."),
            (false, false),
            "its word makes 3"
        );
        assert_eq!(holds("One two three", " the."), (true, true), "ends on the");
        assert_eq!(
            holds("One two three four.", " Five."),
            (true, true),
            "a sentence of one word in one token"
        );
        assert_eq!(
            holds("One", " two,"),
            (true, false),
            "its word makes a clause of 2, but the field needs 3 before a sentence ends"
        );
        assert_eq!(
            holds("One two. Three", " four."),
            (false, false),
            "3 in all"
        );
        assert_eq!(holds("One two. Three", ","), (true, true), "one word");
        assert_eq!(holds("", "One."), (true, true), "the field's first word");
        assert_eq!(
            holds("One two three four. Five", ".\""),
            (true, true),
            "a full stop that closes the string ends a sentence too"
        );
        assert_eq!(
            holds("One two three four. Five six", " seven.\","),
            (false, false)
        );
        assert_eq!(wrap.tail(r#"{"title": "A b c d e"#), None, "another field");
        // A sentence ended 4 words (the room) or fewer before the 12-word limit: close.
        let no_room = |text: &str| wrap.no_room(&wrap.tail(&format!("{before}\"{text}")).unwrap());
        assert!(
            !no_room("One two three four five six seven eight."),
            "8 + 4 fit in 12"
        );
        assert!(no_room("One two three four five six seven eight nine."));
        assert!(
            !no_room("One two three four five six seven eight nine"),
            "not ended"
        );
        assert_eq!(
            nudge(&format!("{before}\"One two three four the")),
            None,
            "no push to end on a dangling word"
        );
        assert_eq!(
            nudge(&format!(
                "{before}\"One two three four.\", \"image_prompt\": \"x y z w"
            )),
            None,
            "the field is closed"
        );
    }
}
