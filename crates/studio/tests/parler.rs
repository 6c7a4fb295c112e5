//! The neural voice engine (Parler-TTS) on a tiny random model the test writes itself: real
//! loading, description and prompt encoding, the sampling loop with its delay pattern, and DAC's
//! decoder, on the CPU. Random weights say nothing intelligible; what is checked is the
//! mechanics: clips of a length that follows the text, within the codebooks, reproducible.

use baton_studio::voice::parler::{Parler, ParlerFiles, random};
use baton_studio::voice::{VoiceEngine, VoiceOptions};
use candle_core::{DType, Device};

fn options() -> VoiceOptions {
    VoiceOptions {
        voice: "en-us".into(),
        speed: 1.0,
        sample_rate: 22050,
        description: Some("A calm voice, close up.".into()),
    }
}

#[test]
fn a_tiny_parler_speaks_clips_that_grow_with_the_text_and_repeat_with_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        random::write_random_parler(dir.path(), &random::tiny_config(3), DType::F32).unwrap();
    assert_eq!(files.weights.len(), 1);
    let engine = Parler::load(&files, &Device::Cpu, 7).unwrap();
    let load = engine.load_report().unwrap();
    assert!(load.bytes > 0 && load.tensors > 0);
    let short = engine.speak("neon rain", &options()).unwrap();
    let long = engine
        .speak("the neon city glows with rain at night", &options())
        .unwrap();
    assert_eq!(short.rate, 44_100);
    // DAC's decoder makes 512 samples a frame; the loop allows no end before a third of the
    // time the words need at 2.5 words a second (8 words: 91 frames; 2 words: 22).
    assert_eq!(short.samples.len() % 512, 0);
    assert!(short.samples.len() >= 512 * 22, "{}", short.samples.len());
    assert!(long.samples.len() >= 512 * 91, "{}", long.samples.len());
    assert!(long.samples.len() > short.samples.len());
    assert!(long.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
    // The same seed, the same clip.
    let again = Parler::load(&files, &Device::Cpu, 7).unwrap();
    assert_eq!(
        again.speak("neon rain", &options()).unwrap().samples,
        short.samples
    );
    assert!(engine.name().starts_with("parler-tts"));
}

#[test]
fn an_incomplete_folder_or_an_unknown_name_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = ParlerFiles::in_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("lacks model.safetensors") && err.contains("config.json"),
        "{err}"
    );
    let err = ParlerFiles::resolve("parler-9").unwrap_err().to_string();
    assert!(
        err.contains("unknown voice model 'parler-9'") && err.contains("parler-tts-mini-v1"),
        "{err}"
    );
}
