//! Piper, the offline neural voice: a VITS model in ONNX, run through ONNX Runtime, reading the
//! eSpeak NG phonemes `baton-espeak --ipa` writes.
//!
//! Key design decisions. ONNX Runtime rather than a pure-Rust ONNX engine: Piper's graph draws
//! its noise with `RandomNormalLike` and sizes its output from predicted durations (data-
//! dependent shapes), which is what ONNX Runtime, the engine Piper itself ships with, runs
//! as trained. Its library is not linked: `ort` loads it at run time from the `onnxruntime`
//! wheel on the Python package index (fetched into the model store like SmolLM2, checked
//! against the wheel's RECORD), so the build downloads nothing and a machine without it still
//! runs every other engine. The phonemes come from `baton-espeak`, a program of its own
//! because eSpeak NG is GPL-3.0; ids come from the voice's own `phoneme_id_map`, the way
//! Piper's `phonemes_to_ids` makes them (BOS, pad after every phoneme, EOS).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use super::{Espeak, VoiceEngine, VoiceError, VoiceOptions};
use crate::model_store::ModelStore;
use crate::wav::Audio;

/// The Piper voice `baton voice` speaks with unless told otherwise (`baton models list`).
pub const DEFAULT_VOICE: &str = "piper-joe";
/// The ONNX Runtime library, as the model store knows it.
pub const RUNTIME: &str = "onnxruntime";

/// A voice's files: the model and the config beside it.
#[derive(Debug, Clone)]
pub struct PiperFiles {
    pub model: PathBuf,
    pub config: PathBuf,
    /// `libonnxruntime.so`.
    pub runtime: PathBuf,
}

impl PiperFiles {
    /// The voice `spec` names (a known name such as `piper-joe`, or a `.onnx` file with its
    /// `.onnx.json` beside it) and the runtime (`BATON_ONNXRUNTIME`, a library file, else the
    /// store's), fetching from the package index when `fetch` allows.
    pub fn resolve(spec: &str, store: &ModelStore, fetch: bool) -> Result<PiperFiles, VoiceError> {
        let known = crate::model_store::KNOWN
            .iter()
            .find(|k| k.name == spec)
            .filter(|k| k.spec.ends_with(".onnx"));
        let (model, config) = match known {
            Some(k) => (
                store.resolve(k.name, fetch)?,
                store.resolve(&format!("{}.json", k.spec), fetch)?,
            ),
            None => {
                let model = PathBuf::from(spec);
                if !model.is_file() || model.extension().is_none_or(|e| e != "onnx") {
                    return Err(VoiceError::NoModel(format!(
                        "Piper voice '{spec}' is neither a known voice (`baton models list`: {DEFAULT_VOICE}) nor a .onnx file"
                    )));
                }
                let config = PathBuf::from(format!("{spec}.json"));
                if !config.is_file() {
                    return Err(VoiceError::NoModel(format!(
                        "Piper voice '{spec}' has no config beside it: '{}' is missing (Piper voices come as FILE.onnx and FILE.onnx.json)",
                        config.display()
                    )));
                }
                (model, config)
            }
        };
        let runtime = match std::env::var_os("BATON_ONNXRUNTIME").filter(|v| !v.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(VoiceError::NoModel(format!(
                        "BATON_ONNXRUNTIME='{}' is not a file; point it at libonnxruntime.so, or unset it to use the store's",
                        path.display()
                    )));
                }
                path
            }
            None => store.resolve(RUNTIME, fetch)?,
        };
        Ok(PiperFiles {
            model,
            config,
            runtime,
        })
    }
}

/// The parts of a voice's `.onnx.json` that synthesis reads.
#[derive(Debug, Clone, Deserialize)]
pub struct PiperConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    pub inference: Inference,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    pub num_speakers: u32,
    #[serde(default)]
    pub dataset: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

/// The sampling scales the voice was tuned with.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Inference {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

/// A loaded Piper voice.
pub struct Piper {
    session: Mutex<Session>,
    pub config: PiperConfig,
    name: String,
    phonemizer: Espeak,
}

/// Loads ONNX Runtime from `runtime` once per process; a second call with another file is
/// refused (one runtime per process).
fn load_runtime(runtime: &Path) -> Result<(), VoiceError> {
    check_runtime(runtime)?;
    static LOADED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let first = LOADED.get_or_init(|| runtime.to_path_buf());
    if first != runtime {
        return Err(VoiceError::NoModel(format!(
            "ONNX Runtime is already loaded from '{}'; one runtime per process",
            first.display()
        )));
    }
    ort::init_from(runtime.display().to_string())
        .with_name("baton")
        .commit()
        .map_err(|e| runtime_error(runtime, e))?;
    Ok(())
}

/// The oldest ONNX Runtime whose C API `ort` (2.0.0-rc.10) was written for.
const OLDEST_RUNTIME_MINOR: u32 = 22;

/// Opens the library, reads its version and checks it is 1.22 or newer: `ort` panics on a
/// library it cannot open or an older one, and a voice stage must fail (or fall back) with a
/// message instead.
fn check_runtime(runtime: &Path) -> Result<(), VoiceError> {
    #[repr(C)]
    struct ApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const std::ffi::c_char,
    }
    // SAFETY: loading runs the library's initialisers; it is ONNX Runtime's own library from
    // the store (checked against its wheel's RECORD) or the one BATON_ONNXRUNTIME names.
    let lib =
        unsafe { libloading::Library::new(runtime) }.map_err(|e| runtime_error(runtime, e))?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release, and returns
    // a pointer to a static struct whose first two members are these functions.
    let version = unsafe {
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ApiBase> = lib
            .get(b"OrtGetApiBase")
            .map_err(|e| runtime_error(runtime, e))?;
        let base = get_base();
        if base.is_null() {
            return Err(runtime_error(runtime, "OrtGetApiBase returned nothing"));
        }
        let text = ((*base).get_version_string)();
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    };
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if version.starts_with("1.") && m >= OLDEST_RUNTIME_MINOR => Ok(()),
        _ => Err(runtime_error(
            runtime,
            format!("it is version {version}, older than 1.{OLDEST_RUNTIME_MINOR}"),
        )),
    }
}

fn runtime_error(runtime: &Path, e: impl std::fmt::Display) -> VoiceError {
    VoiceError::NoModel(format!(
        "ONNX Runtime from '{}' cannot run Piper: {e}; fetch it again with `baton models fetch {RUNTIME}`, or point BATON_ONNXRUNTIME at a libonnxruntime.so of version 1.22 or newer",
        runtime.display()
    ))
}

impl Piper {
    pub fn load(files: &PiperFiles, phonemizer: Espeak) -> Result<Piper, VoiceError> {
        let bad = |why: String| {
            VoiceError::NoModel(format!(
                "Piper voice config '{}': {why}",
                files.config.display()
            ))
        };
        let text = std::fs::read_to_string(&files.config).map_err(|e| bad(e.to_string()))?;
        let config: PiperConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for symbol in ["^", "_", "$"] {
            if !config.phoneme_id_map.contains_key(symbol) {
                return Err(bad(format!("its phoneme_id_map has no '{symbol}'")));
            }
        }
        if config.num_speakers > 1 {
            return Err(bad(format!(
                "it has {} speakers; baton speaks with single-speaker Piper voices",
                config.num_speakers
            )));
        }
        load_runtime(&files.runtime)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let session = Session::builder()
            .and_then(|b| b.with_intra_threads(threads))
            .and_then(|b| b.commit_from_file(&files.model))
            .map_err(|e| {
                VoiceError::NoModel(format!(
                    "Piper voice '{}' cannot be loaded: {e}",
                    files.model.display()
                ))
            })?;
        let name = format!(
            "piper ({})",
            files
                .model
                .file_stem()
                .map_or_else(|| "voice".into(), |s| s.to_string_lossy().into_owned())
        );
        Ok(Piper {
            session: Mutex::new(session),
            config,
            name,
            phonemizer,
        })
    }

    /// The ids of one sentence's phonemes, as Piper's `phonemes_to_ids` makes them: `^`, then
    /// every phoneme (a code point of the NFD form) followed by the pad `_`, then `$`.
    /// Phonemes the voice does not know are left out and returned.
    pub fn ids(&self, phonemes: &str) -> (Vec<i64>, Vec<char>) {
        let map = &self.config.phoneme_id_map;
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        let mut missing = Vec::new();
        ids.extend(&map["^"]);
        ids.extend(&map["_"]);
        for c in nfd(phonemes) {
            match map.get(c.encode_utf8(&mut [0; 4]) as &str) {
                Some(v) => {
                    ids.extend(v);
                    ids.extend(&map["_"]);
                }
                None => missing.push(c),
            }
        }
        ids.extend(&map["$"]);
        (ids, missing)
    }

    /// The program that turns text into this voice's phonemes.
    pub fn phonemizer(&self) -> &Espeak {
        &self.phonemizer
    }

    /// Samples for one sentence's ids, with `[noise_scale, length_scale, noise_w]`.
    pub fn synthesize_ids(&self, ids: &[i64], scales: [f32; 3]) -> Result<Vec<f32>, String> {
        let n = ids.len();
        let run = || -> ort::Result<Vec<f32>> {
            let input = Tensor::from_array(([1usize, n], ids.to_vec()))?;
            let lengths = Tensor::from_array(([1usize], vec![n as i64]))?;
            let scales = Tensor::from_array(([3usize], scales.to_vec()))?;
            let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            let outputs = session.run(ort::inputs![
                "input" => input,
                "input_lengths" => lengths,
                "scales" => scales,
            ])?;
            let (_, samples) = outputs[0].try_extract_tensor::<f32>()?;
            Ok(samples.to_vec())
        };
        run().map_err(|e| format!("ONNX Runtime: {e}"))
    }

    /// The voice's scales with the pace asked for (a faster pace shortens every phoneme).
    pub fn scales(&self, speed: f32) -> [f32; 3] {
        let i = self.config.inference;
        [i.noise_scale, i.length_scale / speed, i.noise_w]
    }
}

/// Canonical decomposition of the few composed letters eSpeak NG's IPA can hold (Piper splits
/// accents into their own code points with `unicodedata.normalize("NFD")`).
fn nfd(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(|c| {
        let pair: Option<[char; 2]> = match c {
            'ç' => Some(['c', '\u{327}']),
            'é' => Some(['e', '\u{301}']),
            'è' => Some(['e', '\u{300}']),
            'ã' => Some(['a', '\u{303}']),
            'õ' => Some(['o', '\u{303}']),
            'ĩ' => Some(['i', '\u{303}']),
            'ũ' => Some(['u', '\u{303}']),
            'ẽ' => Some(['e', '\u{303}']),
            'ñ' => Some(['n', '\u{303}']),
            _ => None,
        };
        match pair {
            Some([a, b]) => vec![a, b],
            None => vec![c],
        }
    })
}

impl VoiceEngine for Piper {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn speak(&self, text: &str, options: &VoiceOptions) -> Result<Audio, String> {
        let sentences = self.phonemizer.phonemes(text, &self.config.espeak.voice)?;
        let scales = self.scales(options.speed);
        let mut samples = Vec::new();
        for sentence in &sentences {
            let (ids, missing) = self.ids(sentence);
            if !missing.is_empty() {
                tracing::warn!(
                    "the Piper voice has no id for {missing:?} (in '{sentence}'); left out"
                );
            }
            samples.extend(self.synthesize_ids(&ids, scales)?);
        }
        Ok(Audio {
            rate: self.config.audio.sample_rate,
            samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_are_split_as_piper_splits_them() {
        assert_eq!(nfd("çaː").collect::<String>(), "c\u{327}aː");
        assert_eq!(nfd("hˈɛloʊ").collect::<String>(), "hˈɛloʊ");
    }
}
