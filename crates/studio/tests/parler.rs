//! The neural voice engine (Parler-TTS) on a tiny random model the test writes itself: real
//! loading, description and prompt encoding, the sampling loop with its delay pattern, and DAC's
//! decoder, on the CPU. Random weights say nothing intelligible; what is checked is the
//! mechanics: clips of a length that follows the text, within the codebooks, reproducible.

use baton_studio::voice::parler::{Parler, ParlerDebug, ParlerFiles, random};
use baton_studio::voice::stage::{EngineChoice, VoiceRequest, run_voice};
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

/// The dump of clip `n` in `dir`: its tensors, and its header's notes.
fn dump_of(
    dir: &std::path::Path,
    n: u32,
) -> (
    std::collections::HashMap<String, candle_core::Tensor>,
    std::collections::HashMap<String, String>,
) {
    let path = dir.join(format!("voice-{n}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let notes = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let prefix = format!("scene{n}.");
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(&prefix).unwrap().to_string(), v))
        .collect();
    (tensors, notes)
}

#[test]
fn greedy_with_fixed_frames_dumps_what_the_decoder_computed_and_draws_its_most_likely_codes() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        random::write_random_parler(&dir.path().join("m"), &random::tiny_config(3), DType::F32)
            .unwrap();
    let debug = ParlerDebug {
        dump: Some(dir.path().join("dump")),
        greedy: true,
        frames: Some(40),
        f32: false,
    };
    let engine = Parler::load(&files, &Device::Cpu, 7)
        .unwrap()
        .with_debug(&debug)
        .unwrap();
    let clip = engine.speak("neon rain", &options()).unwrap();
    // DAC makes 512 samples a frame: exactly the frames asked for.
    assert_eq!(clip.samples.len(), 40 * 512);
    engine.speak("the second clip", &options()).unwrap();

    let (t, notes) = dump_of(&dir.path().join("dump"), 1);
    assert_eq!(notes["dtype"], "f32");
    assert_eq!(notes["greedy"], "true");
    assert_eq!(notes["scene1.prompt"], "neon rain");
    assert!(notes["scene1.description"].starts_with("A calm voice, close up."));
    let (books, start, pad, codebook) = (3, 65u32, 64u32, 64);
    // Every codebook gets its 40 frames; the last starts two steps late.
    let steps = 40 + books - 1;
    let inputs: Vec<Vec<u32>> = t["inputs"].to_vec2().unwrap();
    let logits: Vec<Vec<Vec<f32>>> = t["logits"].to_vec3().unwrap();
    let codes: Vec<Vec<u32>> = t["codes"].to_vec2().unwrap();
    assert_eq!((inputs.len(), inputs[0].len()), (steps, books));
    assert_eq!(t["logits"].dims(), [steps, books, 66]);
    assert_eq!(t["codes"].dims(), [books, 40]);
    let (_, tokens, width) = t["encoder"].dims3().unwrap();
    assert_eq!(t["description_ids"].dims(), [1, tokens]);
    assert_eq!(width, 64, "T5's output projected to the decoder's width");
    for (step, row) in inputs.iter().enumerate() {
        for (book, &token) in row.iter().enumerate() {
            let expected = if book >= step {
                // The delay pattern: codebook k starts k steps after the first.
                start
            } else if step - book > 40 {
                // A codebook with all its frames is fed padding.
                pad
            } else {
                // Each step's input is the code drawn at the step before it...
                codes[book][step - book - 1]
            };
            assert_eq!(token, expected, "step {step}, codebook {book}");
        }
    }
    // ...and each code the most likely one among the codes a DAC can decode.
    for (book, frames) in codes.iter().enumerate() {
        for (frame, &code) in frames.iter().enumerate() {
            let row = &logits[book + frame][book][..codebook];
            let best = (0..codebook)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            assert_eq!(code as usize, best, "codebook {book}, frame {frame}");
        }
    }
    assert!(dir.path().join("dump/voice-2.safetensors").is_file());

    // Greedy drawing does not depend on the seed.
    let other = Parler::load(&files, &Device::Cpu, 8)
        .unwrap()
        .with_debug(&ParlerDebug {
            dump: None,
            ..debug.clone()
        });
    assert_eq!(
        other
            .unwrap()
            .speak("neon rain", &options())
            .unwrap()
            .samples,
        clip.samples
    );
}

#[test]
fn a_codebook_ends_only_after_the_one_before_it_as_the_delay_pattern_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        random::write_random_parler(&dir.path().join("m"), &random::tiny_config(3), DType::F32)
            .unwrap();
    let debug = ParlerDebug {
        dump: Some(dir.path().join("dump")),
        ..ParlerDebug::default()
    };
    let engine = Parler::load(&files, &Device::Cpu, 7)
        .unwrap()
        .with_debug(&debug)
        .unwrap();
    engine.speak("neon rain", &options()).unwrap();
    let (t, notes) = dump_of(&dir.path().join("dump"), 1);
    assert_eq!(notes["greedy"], "false");
    let inputs: Vec<Vec<u32>> = t["inputs"].to_vec2().unwrap();
    let first_pad = |book: usize| inputs.iter().position(|row| row[book] == 64);
    let ended = first_pad(0).expect("the first codebook ends within the step limit at this seed");
    // Each later codebook ends one step after the one before it: never earlier, and never
    // drawing past the first codebook's frames. The last one's end ends the loop.
    assert_eq!(first_pad(1), Some(ended + 1));
    assert_eq!(first_pad(2), None);
    assert_eq!(inputs.len(), ended + 2);
    let codes = t["codes"].dims2().unwrap();
    assert_eq!(codes, (3, ended - 1));
}

#[test]
fn bad_debugging_settings_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        random::write_random_parler(dir.path(), &random::tiny_config(3), DType::F32).unwrap();
    for frames in [0, 1_000_000] {
        let err = Parler::load(&files, &Device::Cpu, 7)
            .unwrap()
            .with_debug(&ParlerDebug {
                frames: Some(frames),
                ..ParlerDebug::default()
            })
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("--frames {frames}")) && err.contains("1 to 3840"),
            "{err}"
        );
    }
    let request = VoiceRequest {
        input: &dir.path().join("missing.json"),
        run_dir: dir.path(),
        options: options(),
        engine: EngineChoice::Piper,
        voice_model: "",
        piper_voice: "",
        fetch_piper: false,
        seed: 1,
        compute: baton_memory::DeviceChoice::Cpu,
        parler_debug: ParlerDebug {
            greedy: true,
            ..ParlerDebug::default()
        },
    };
    let err = run_voice(&request, None, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("--greedy") && err.contains("--engine parler"),
        "{err}"
    );
}
