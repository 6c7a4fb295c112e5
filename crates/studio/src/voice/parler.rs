//! The neural voice: Parler-TTS through candle. A T5 encoder reads a description of the voice
//! ("a clear, warm voice at a moderate pace..."), a decoder writes DAC audio codes for the
//! narration (several codebooks, each a step behind the last), and DAC's decoder turns the codes
//! into 44.1 kHz audio. Weights load through baton-weights (pinned lanes on a GPU, bf16 there,
//! f32 on a CPU), from a model folder or the Hugging Face cache (`crate::hub` fetches them).
//!
//! The sampling loop is baton's own rather than candle's `generate`: it keeps the codes a DAC
//! can decode (an id past the codebook would be an error, not a sound), and holds off the end
//! token until the clip has had a fair share of the time its words need, so a clip is never cut
//! to a syllable.
//!
//! For comparisons with parler-tts it can pick the most likely code instead of sampling
//! (`--greedy`), write a fixed number of frames (`--frames`), and dump each clip's token ids, T5
//! output, decoder inputs, logits and codes (`--dump DIR`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::parler_tts;

use super::{VoiceEngine, VoiceError, VoiceOptions};
use crate::wav::Audio;

/// The Parler-TTS checkpoints baton knows by name, and their repositories.
pub const MODELS: &[(&str, &str)] = &[
    ("parler-tts-mini-v1", "parler-tts/parler-tts-mini-v1"),
    ("parler-tts-large-v1", "parler-tts/parler-tts-large-v1"),
];

/// The model `baton voice` and the built-in pipeline look for when none is named.
pub const DEFAULT_MODEL: &str = "parler-tts-mini-v1";

/// The model this machine is set to use: `BATON_VOICE_MODEL`, else [`DEFAULT_MODEL`].
pub fn configured_model() -> String {
    std::env::var("BATON_VOICE_MODEL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_MODEL.into())
}

/// What a voice is described as when nothing else is said.
pub const DEFAULT_DESCRIPTION: &str = "A female speaker delivers clear, warm narration with a \
    moderate pitch. The recording is of very high quality, with the speaker's voice sounding \
    clear and very close up.";

/// A Parler-TTS model on disk.
#[derive(Debug, Clone)]
pub struct ParlerFiles {
    pub dir: PathBuf,
    /// model.safetensors, or the shards the index names.
    pub weights: Vec<PathBuf>,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
}

fn incomplete(dir: &Path, what: &str) -> VoiceError {
    VoiceError::Option(format!(
        "the voice model folder '{}' lacks {what}; a Parler-TTS folder has config.json, tokenizer.json and model.safetensors (or its shards)",
        dir.display()
    ))
}

impl ParlerFiles {
    pub fn in_dir(dir: &Path) -> Result<ParlerFiles, VoiceError> {
        let file = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(incomplete(dir, name))
            }
        };
        let single = dir.join("model.safetensors");
        let weights = if single.is_file() {
            vec![single]
        } else {
            let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|_| incomplete(dir, "model.safetensors"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "safetensors")
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("model-"))
                })
                .collect();
            shards.sort();
            if shards.is_empty() {
                return Err(incomplete(dir, "model.safetensors"));
            }
            shards
        };
        Ok(ParlerFiles {
            dir: dir.to_path_buf(),
            weights,
            config: file("config.json")?,
            tokenizer: file("tokenizer.json")?,
        })
    }

    /// `spec` is a folder or a name from [`MODELS`], found in the Hugging Face cache.
    pub fn resolve(spec: &str) -> Result<ParlerFiles, VoiceError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::in_dir(path);
        }
        let repo = repo_of(spec)?;
        let snapshots = crate::hub::repo_dir(&crate::hub::cache_dir(), repo).join("snapshots");
        let found = std::fs::read_dir(&snapshots).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join("config.json").is_file())
        });
        match found {
            Some(dir) => Self::in_dir(&dir),
            None => Err(VoiceError::NoModel(format!(
                "the voice model {spec} ({repo}) is not in the Hugging Face cache at {}; `baton models fetch {spec}` (or --fetch) downloads it",
                snapshots.display()
            ))),
        }
    }

    /// Downloads model `name`'s files into the Hugging Face cache (what is there is kept).
    pub fn fetch(
        name: &str,
        hub: &crate::hub::Hub,
        progress: &mut dyn FnMut(&str, u64, Option<u64>),
    ) -> Result<ParlerFiles, VoiceError> {
        use crate::hub::HubError;
        let repo = repo_of(name)?;
        let fail = VoiceError::Hub;
        let mut get = |path: &str| hub.fetch(repo, "main", path, &mut |d, t| progress(path, d, t));
        let config = get("config.json").map_err(fail)?;
        get("tokenizer.json").map_err(fail)?;
        match get("model.safetensors.index.json") {
            Ok(index) => {
                for s in crate::hub::shards_in_index(&index).map_err(VoiceError::Option)? {
                    get(&s).map_err(fail)?;
                }
            }
            Err(HubError::NotFound { .. }) => {
                get("model.safetensors").map_err(fail)?;
            }
            Err(e) => return Err(fail(e)),
        }
        Self::in_dir(config.parent().expect("a snapshot file has a folder"))
    }
}

fn repo_of(name: &str) -> Result<&'static str, VoiceError> {
    MODELS
        .iter()
        .find(|(n, r)| *n == name || *r == name)
        .map(|(_, r)| *r)
        .ok_or_else(|| {
            VoiceError::Option(format!(
                "unknown voice model '{name}': use a Parler-TTS folder, or one of {}",
                MODELS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Debugging settings for a comparison with parler-tts (`baton voice --dump/--greedy/--frames`).
#[derive(Debug, Clone, Default)]
pub struct ParlerDebug {
    /// Where each clip's ids, T5 output, decoder inputs, logits and codes are written
    /// (`voice-{N}.safetensors`, N counting the clips from 1).
    pub dump: Option<PathBuf>,
    /// Always the most likely code instead of a sample.
    pub greedy: bool,
    /// Exactly this many frames a clip, the end token never drawn.
    pub frames: Option<usize>,
    /// f32 on a GPU too (bf16 otherwise), so a comparison is not drowned in bf16's rounding.
    pub f32: bool,
}

impl ParlerDebug {
    /// Whether any debugging setting is given.
    pub fn is_set(&self) -> bool {
        self.dump.is_some() || self.greedy || self.frames.is_some() || self.f32
    }
}

/// What one clip's generation computed, for the dump.
#[derive(Default)]
struct Trace {
    /// T5's output, projected to the decoder's width: (1, tokens, hidden).
    encoded: Option<Tensor>,
    /// Each step's decoder input, a token per codebook.
    inputs: Vec<Vec<u32>>,
    /// Each step's logits for every codebook: (books, vocab).
    logits: Vec<Tensor>,
}

/// A loaded Parler-TTS model: one utterance at a time.
pub struct Parler {
    model: Mutex<parler_tts::Model>,
    config: parler_tts::Config,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
    dtype: DType,
    name: String,
    seed: u64,
    load: Option<baton_weights::LoadReport>,
    debug: ParlerDebug,
    dump: Option<crate::dump::Dump>,
    /// Clips spoken so far (names the dump's files).
    clips: AtomicU32,
}

impl Parler {
    /// Loads the model in `files` onto `device` (bf16 on a GPU, f32 on a CPU).
    pub fn load(files: &ParlerFiles, device: &Device, seed: u64) -> Result<Parler, VoiceError> {
        Parler::load_debug(files, device, seed, &ParlerDebug::default())
    }

    /// [`Parler::load`] with the debugging settings `debug` (f32 on a GPU where it asks).
    pub fn load_debug(
        files: &ParlerFiles,
        device: &Device,
        seed: u64,
        debug: &ParlerDebug,
    ) -> Result<Parler, VoiceError> {
        let bad = |what: &Path, e: String| {
            VoiceError::Option(format!("the voice model's '{}': {e}", what.display()))
        };
        let config: parler_tts::Config = std::fs::read(&files.config)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| bad(&files.config, e))?;
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| bad(&files.tokenizer, e.to_string()))?;
        let dtype = if device.is_cuda() && !debug.f32 {
            DType::BF16
        } else {
            DType::F32
        };
        let options = baton_weights::LoadOptions {
            dtype: Some(dtype),
            ..baton_weights::LoadOptions::default()
        };
        let engine = |e: String| VoiceError::Engine { scene: 0, why: e };
        let loaded = baton_weights::load_safetensors_files(&files.weights, device, &options)
            .map_err(|e| engine(e.to_string()))?;
        let load = Some(loaded.report.clone());
        let vb = loaded.var_builder(dtype, device);
        let model = parler_tts::Model::new(&config, vb).map_err(|e| engine(e.to_string()))?;
        Parler {
            model: Mutex::new(model),
            config,
            tokenizer,
            device: device.clone(),
            dtype,
            name: format!("parler-tts ({})", files.dir.display()),
            seed,
            load,
            debug: ParlerDebug::default(),
            dump: None,
            clips: AtomicU32::new(0),
        }
        .with_debug(debug)
    }

    /// The same model with the debugging settings `debug`; `--frames` is checked against the
    /// decoder's positions.
    pub fn with_debug(mut self, debug: &ParlerDebug) -> Result<Parler, VoiceError> {
        let most = self
            .config
            .decoder
            .max_position_embeddings
            .saturating_sub(256);
        if let Some(frames) = debug.frames
            && !(1..=most).contains(&frames)
        {
            return Err(VoiceError::Option(format!(
                "--frames {frames}: this model writes 1 to {most} frames a clip ({} a second)",
                self.config.audio_encoder.frame_rate
            )));
        }
        self.dump = debug
            .dump
            .as_deref()
            .map(crate::dump::Dump::new)
            .transpose()?;
        if let Some(dump) = &self.dump {
            dump.note("dtype", &format!("{:?}", self.dtype).to_lowercase());
            dump.note("greedy", &debug.greedy.to_string());
        }
        self.debug = debug.clone();
        Ok(self)
    }

    /// How its weights came onto the device (none for the warm-up's zero-weight model).
    pub fn load_report(&self) -> Option<&baton_weights::LoadReport> {
        self.load.as_ref()
    }

    fn ids(&self, text: &str) -> Result<Tensor, String> {
        let mut ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| e.to_string())?
            .get_ids()
            .to_vec();
        // T5 inputs end with </s>; a tokenizer without a post-processor does not add it.
        if let Some(eos) = self.tokenizer.token_to_id("</s>")
            && ids.last() != Some(&eos)
        {
            ids.push(eos);
        }
        Tensor::new(ids.as_slice(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| e.to_string())
    }

    /// The audio codes for the prompt `prompt` (ids of `words` words) in the voice described by
    /// `description` (ids): (codebooks, frames), on the CPU. What it computed goes into `trace`
    /// when one is given.
    fn codes(
        &self,
        prompt: &Tensor,
        description: &Tensor,
        words: usize,
        speed: f32,
        mut trace: Option<&mut Trace>,
    ) -> candle_core::Result<Tensor> {
        let mut model = self.model.lock().expect("not poisoned");
        let model = &mut *model;
        let cfg = &self.config;
        let books = cfg.decoder.num_codebooks;
        let codebook = cfg.audio_encoder.codebook_size as u32;
        let (start, pad) = (cfg.decoder_start_token_id, cfg.pad_token_id);
        let eos = cfg.decoder.eos_token_id as u32;
        let frames_per_second = cfg.audio_encoder.frame_rate as f64;
        // About 2.5 words a second at speed 1; allow twice that before stopping it, and let it
        // end no earlier than a third of it.
        let expected = words.max(1) as f64 / (2.5 * speed as f64) * frames_per_second;
        let (max_steps, min_frames) = match self.debug.frames {
            // Every codebook gets `frames` codes (the last starts books - 1 steps late), and
            // none may end.
            Some(frames) => (frames + books - 1, usize::MAX),
            None => (
                ((expected * 2.0) as usize + books + 86)
                    .min(cfg.decoder.max_position_embeddings - 256),
                (expected / 3.0) as usize,
            ),
        };

        model.decoder.clear_kv_cache();
        model.text_encoder.clear_kv_cache();
        let encoded = model.text_encoder.forward(description)?;
        let encoded = match &model.enc_to_dec_proj {
            Some(proj) => encoded.apply(proj)?,
            None => encoded,
        };
        if let Some(trace) = trace.as_deref_mut() {
            trace.encoded = Some(encoded.clone());
        }
        let prompt_states = prompt.apply(&model.embed_prompts)?;
        let prompt_len = prompt_states.dim(1)?;
        // Only codebook ids and the end token may be drawn.
        let allowed: Vec<f32> = (0..cfg.decoder.vocab_size as u32)
            .map(|id| {
                if id < codebook || id == eos {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let no_end: Vec<f32> = (0..cfg.decoder.vocab_size as u32)
            .map(|id| {
                if id < codebook {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let temperature = (!self.debug.greedy).then_some(1.0);
        let mut lp = LogitsProcessor::new(self.seed, temperature, None);
        let mut tokens = vec![start; books];
        let mut codes: Vec<Vec<u32>> = vec![Vec::new(); books];
        for step in 0..max_steps {
            let input = Tensor::from_slice(tokens.as_slice(), (1, books, 1), &self.device)?;
            let (states, pos) = if step == 0 {
                (Some(&prompt_states), 0)
            } else {
                (None, step + prompt_len)
            };
            let (q, kv) = if pos == 0 {
                (prompt_len + 1, prompt_len + 1)
            } else {
                (1, pos + 1)
            };
            let mask = causal_mask(q, kv, &self.device)?.to_dtype(self.dtype)?;
            let logits = model
                .decoder
                .forward(&input, states, Some(&mask), &encoded, None, pos)?;
            if let Some(trace) = trace.as_deref_mut() {
                let rows = (0..books)
                    .map(|b| logits[b].i((0, logits[b].dim(1)? - 1)))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let rows = Tensor::stack(&rows, 0)?.to_dtype(DType::F32)?;
                trace.logits.push(rows.to_device(&Device::Cpu)?);
                trace.inputs.push(tokens.clone());
            }
            // The delay pattern: codebook k starts k steps after the first. The codebooks still
            // drawing come to the host in one copy, not one each.
            let drawing: Vec<usize> = (0..books.min(step + 1))
                .filter(|&b| tokens[b] != pad)
                .collect();
            if drawing.is_empty() {
                continue;
            }
            let last = drawing
                .iter()
                .map(|&b| logits[b].i((0, logits[b].dim(1)? - 1)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let rows: Vec<Vec<f32>> = Tensor::stack(&last, 0)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec2()?;
            // As parler-tts' logits processor has it, a codebook may end only once every
            // codebook before it has ended (fed padding since an earlier step).
            let ended: Vec<bool> = tokens.iter().map(|&t| t == pad).collect();
            for (&book, mut row) in drawing.iter().zip(rows) {
                let may_end = codes[book].len() >= min_frames && (book == 0 || ended[book - 1]);
                let mask = if !may_end { &no_end } else { &allowed };
                row.iter_mut().zip(mask).for_each(|(l, m)| *l += m);
                tokens[book] = lp.sample(&Tensor::new(row, &Device::Cpu)?)?;
                // A codebook with all its frames (`--frames`, or as many as the first codebook
                // wrote before it ended) is fed padding from then on, as the delay pattern's end
                // is: what it would draw past them no clip keeps.
                let frames = self.debug.frames.or(ended[0].then_some(codes[0].len()));
                let full = frames.is_some_and(|n| codes[book].len() >= n);
                if tokens[book] == eos || full {
                    tokens[book] = pad;
                }
            }
            if tokens.iter().all(|t| *t == pad) {
                break;
            }
            for (book, &t) in tokens.iter().enumerate() {
                if t != start && t != pad {
                    codes[book].push(t);
                }
            }
        }
        let frames = codes.iter().map(Vec::len).min().unwrap_or(0);
        for c in &mut codes {
            c.truncate(frames);
        }
        Tensor::new(codes, &Device::Cpu)
    }
}

impl Parler {
    /// DAC's decoder over `codes` (codebooks, frames): the samples, or `None` for no frames.
    fn decode(&self, codes: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
        if codes.dim(1)? == 0 {
            return Ok(None);
        }
        let model = self.model.lock().expect("not poisoned");
        let codes = codes
            .to_dtype(DType::I64)?
            .unsqueeze(0)?
            .to_device(&self.device)?;
        let pcm = model.audio_encoder.decode_codes(&codes)?.i((0, 0))?;
        Ok(Some(
            pcm.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec1()?,
        ))
    }
}

/// Loads, before the stage's scope guard begins, the GPU kernels (candle's, cuBLAS's) that
/// Parler-TTS uses in bf16: they stay loaded for the life of the process, and loading them
/// inside the scope would read as a leak. The tiny model (the real architecture, narrow, with
/// DAC's real widths) runs one short clip on zero weights, then products of mini's sizes run.
/// Nothing is kept; on a CPU there is nothing to load.
pub fn warm_up(device: &Device) -> Result<(), VoiceError> {
    if !device.is_cuda() {
        return Ok(());
    }
    let fail = |e: String| VoiceError::Engine { scene: 0, why: e };
    crate::llm::warm_up(device).map_err(|e| fail(e.to_string()))?;
    let run = || -> candle_core::Result<()> {
        let dtype = DType::BF16;
        let config: parler_tts::Config =
            serde_json::from_value(random::tiny_config(3)).map_err(candle_core::Error::wrap)?;
        let model = parler_tts::Model::new(&config, candle_nn::VarBuilder::zeros(dtype, device))?;
        let engine = Parler {
            model: Mutex::new(model),
            config,
            tokenizer: tokenizers::Tokenizer::new(
                tokenizers::models::wordlevel::WordLevel::default(),
            ),
            device: device.clone(),
            dtype,
            name: "warm-up".into(),
            seed: 0,
            load: None,
            debug: ParlerDebug::default(),
            dump: None,
            clips: AtomicU32::new(0),
        };
        let ids = Tensor::new(&[[3u32, 4, 5, 1]], device)?;
        let codes = engine.codes(&ids, &ids, 2, 1.0, None)?;
        engine.decode(&codes)?;
        for (m, k, n) in [
            (16, 768, 2048),
            (64, 768, 1024),
            (1, 1024, 1024),
            (1, 1024, 4096),
            (1, 4096, 1024),
            (1, 1024, 1088),
            (40, 1024, 1024),
            (40, 1024, 4096),
        ] {
            let a = Tensor::zeros((1, m, k), dtype, device)?;
            let b = Tensor::zeros((k, n), dtype, device)?;
            let _ = a.broadcast_matmul(&b)?;
        }
        device.synchronize()
    };
    run().map_err(|e| fail(e.to_string()))
}

/// Clip `clip`'s ids, T5 output, decoder inputs (steps, books), logits (steps, books, vocab) and
/// codes (books, frames), as `voice-{clip}.safetensors`.
fn write_trace(
    dump: &crate::dump::Dump,
    clip: u32,
    prompt: &Tensor,
    description: &Tensor,
    trace: Trace,
    codes: &Tensor,
) -> Result<(), VoiceError> {
    let keep = |what: &str, t: &Tensor| dump.keep(clip, what, t);
    keep("prompt_ids", prompt)?;
    keep("description_ids", description)?;
    if let Some(encoded) = &trace.encoded {
        keep("encoder", encoded)?;
    }
    let fail = |e: candle_core::Error| VoiceError::Engine {
        scene: clip,
        why: e.to_string(),
    };
    let inputs = Tensor::new(trace.inputs, &Device::Cpu).map_err(fail)?;
    keep("inputs", &inputs)?;
    keep("logits", &Tensor::stack(&trace.logits, 0).map_err(fail)?)?;
    keep("codes", codes)?;
    Ok(dump.write(&format!("voice-{clip}"))?)
}

fn causal_mask(q_len: usize, kv_len: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..q_len)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if i + kv_len < j + q_len {
                    f32::NEG_INFINITY
                } else {
                    0.
                }
            })
        })
        .collect();
    Tensor::from_slice(&mask, (q_len, kv_len), device)
}

/// The description the voice options amount to: `description`, or the default one, with the
/// pace `speed` asks for.
pub fn describe(options: &VoiceOptions) -> String {
    let base = options
        .description
        .clone()
        .unwrap_or_else(|| DEFAULT_DESCRIPTION.to_string());
    let pace = match options.speed {
        s if s < 0.85 => "The speaker talks slowly.",
        s if s > 1.2 => "The speaker talks quickly.",
        _ => "The speaker talks at a moderate speed.",
    };
    format!("{} {pace}", base.trim())
}

impl VoiceEngine for Parler {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn speak(&self, text: &str, options: &VoiceOptions) -> Result<Audio, String> {
        let prompt = self.ids(text)?;
        let description = self.ids(&describe(options))?;
        let words = text.split_whitespace().count();
        let clip = self.clips.fetch_add(1, Ordering::Relaxed) + 1;
        let mut trace = self.dump.as_ref().map(|_| Trace::default());
        let codes = self
            .codes(&prompt, &description, words, options.speed, trace.as_mut())
            .map_err(|e| e.to_string())?;
        if let (Some(dump), Some(trace)) = (&self.dump, trace) {
            dump.note(&format!("scene{clip}.prompt"), text);
            dump.note(&format!("scene{clip}.description"), &describe(options));
            write_trace(dump, clip, &prompt, &description, trace, &codes)
                .map_err(|e| e.to_string())?;
        }
        let pcm = self
            .decode(&codes)
            .map_err(|e| e.to_string())?
            .ok_or("the model ended the clip before its first sound")?;
        Ok(Audio {
            rate: self.config.audio_encoder.sampling_rate,
            samples: pcm
                .into_iter()
                .map(|s| {
                    if s.is_finite() {
                        s.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .collect(),
        })
    }
}

/// Parler-TTS models with random weights, in a model folder: the tiny one the tests load and run
/// (small T5 and decoder, codebooks of 64; DAC's fixed widths), and mini's shapes for the GPU
/// benchmark.
pub mod random {
    use super::*;

    /// A config of the real architecture, narrow: `books` codebooks of 64 codes.
    pub fn tiny_config(books: usize) -> serde_json::Value {
        serde_json::json!({
            "decoder_start_token_id": 65, "pad_token_id": 64, "vocab_size": 64,
            "decoder": {
                "vocab_size": 66, "max_position_embeddings": 4096, "num_hidden_layers": 2,
                "ffn_dim": 128, "num_attention_heads": 2, "num_key_value_heads": 2,
                "num_cross_attention_key_value_heads": 2, "activation_function": "gelu",
                "hidden_size": 64, "scale_embedding": false, "num_codebooks": books,
                "pad_token_id": 64, "bos_token_id": 65, "eos_token_id": 64,
                "tie_word_embeddings": false, "rope_embeddings": false, "rope_theta": 10000.0
            },
            "text_encoder": {
                "vocab_size": 64, "d_model": 48, "d_kv": 16, "d_ff": 96, "num_layers": 2,
                "num_heads": 3, "relative_attention_num_buckets": 8,
                "relative_attention_max_distance": 32, "dropout_rate": 0.0,
                "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
                "is_encoder_decoder": true, "pad_token_id": 0, "eos_token_id": 1,
                "decoder_start_token_id": 0
            },
            "audio_encoder": {
                "num_codebooks": books, "model_bitrate": 8, "codebook_size": 64,
                "latent_dim": 64, "frame_rate": 86, "sampling_rate": 44100
            }
        })
    }

    /// parler-tts-mini-v1's config as baton writes it for `bench voice --size mini`: a 24-layer,
    /// 1024-wide decoder over 9 codebooks of DAC (44.1 kHz), flan-t5-base as the description encoder.
    pub fn mini_config() -> serde_json::Value {
        serde_json::json!({
            "decoder_start_token_id": 1025, "pad_token_id": 1024, "vocab_size": 32128,
            "decoder": {
                "vocab_size": 1088, "max_position_embeddings": 4096, "num_hidden_layers": 24,
                "ffn_dim": 4096, "num_attention_heads": 16, "num_key_value_heads": 16,
                "num_cross_attention_key_value_heads": 16, "activation_function": "gelu",
                "hidden_size": 1024, "scale_embedding": false, "num_codebooks": 9,
                "pad_token_id": 1024, "bos_token_id": 1025, "eos_token_id": 1024,
                "tie_word_embeddings": false, "rope_embeddings": false, "rope_theta": 10000.0
            },
            "text_encoder": {
                "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12,
                "num_heads": 12, "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128, "dropout_rate": 0.1,
                "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
                "is_encoder_decoder": true, "pad_token_id": 0, "eos_token_id": 1,
                "decoder_start_token_id": 0
            },
            "audio_encoder": {
                "num_codebooks": 9, "model_bitrate": 8, "codebook_size": 1024, "latent_dim": 1024,
                "frame_rate": 86, "sampling_rate": 44100
            }
        })
    }

    /// Writes a Parler-TTS folder under `dir` for `config` with random weights in `dtype`.
    pub fn write_random_parler(
        dir: &Path,
        config: &serde_json::Value,
        dtype: DType,
    ) -> Result<ParlerFiles, VoiceError> {
        let fail = |e: crate::images::ImagesError| VoiceError::Option(e.to_string());
        let cfg: parler_tts::Config = serde_json::from_value(config.clone())
            .map_err(|e| VoiceError::Option(format!("the Parler config: {e}")))?;
        crate::images::random::write_part(dir, &["model.safetensors"], dtype, 7, &|vb| {
            parler_tts::Model::new(&cfg, vb).map(|_| ())
        })
        .map_err(fail)?;
        crate::images::random::write_file(
            &dir.join("config.json"),
            &serde_json::to_vec_pretty(config).expect("json"),
        )
        .map_err(fail)?;
        crate::images::random::write_t5_tokenizer(dir).map_err(fail)?;
        ParlerFiles::in_dir(dir)
    }
}
