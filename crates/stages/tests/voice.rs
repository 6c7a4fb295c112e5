//! `baton voice` end to end with the embedded engine (the `baton-espeak` program built beside
//! baton): one valid WAV per scene that sounds like speech, durations that follow the text, and
//! every bad input refused with nothing written. Then the neural engine (Parler-TTS) on a tiny
//! random model the test writes: chosen by --engine, run inside a scope guard with the seed's
//! log points, its clips written the same way.

mod common;

use common::said as text;

use std::path::{Path, PathBuf};
use std::process::Command;

use baton_studio::wav::{self, Audio};

fn baton(dir: &Path) -> Command {
    let exe = &common::baton_exe();
    let mut cmd = Command::new(exe);
    cmd.current_dir(dir)
        .env("BATON_ESPEAK", exe.with_file_name("baton-espeak"))
        .env("BATON_ESPEAK_DATA", dir.join("espeak-data"))
        .env("BATON_STATE_DIR", dir.join("state"))
        // No neural voice model in reach unless a test gives one.
        .env("HF_HOME", dir.join("no-hub"))
        .env_remove("BATON_VOICE_MODEL")
        .env_remove("BATON_VOICE_ENGINE");
    cmd
}

const SHORT: &str = "Rain falls on Shinjuku.";
const LONG: &str = "Vendors call out over the hiss of grilling skewers, while delivery drones hum \
    overhead and the crowd moves through the market like a slow river of light.";

/// A run folder with a storyboard of the given narrations; returns the scenes file.
fn storyboard(dir: &Path, narrations: &[&str]) -> PathBuf {
    let scripts = dir.join("run/1_scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let scenes: Vec<_> = narrations
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({"index": i + 1, "title": format!("Scene {}", i + 1), "narration": n,
                "image_prompt": "a neon street at night", "duration_seconds": 5.0})
        })
        .collect();
    let file = scripts.join("cyberpunk_tokyo_scenes.json");
    let board =
        serde_json::json!({"topic": "Cyberpunk Tokyo", "title": "Neon Nights", "scenes": scenes});
    std::fs::write(&file, serde_json::to_vec(&board).unwrap()).unwrap();
    file
}

/// Speech, not silence, a tone or noise: its loud frames are mostly periodic at a voice's
/// pitch (70-400 Hz), their loudness varies (syllables), and it pauses.
fn assert_speech_like(audio: &Audio, what: &str) {
    let frame = audio.rate as usize / 25; // 40 ms
    let rms = |f: &[f32]| (f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32).sqrt();
    let frames: Vec<&[f32]> = audio.samples.chunks_exact(frame).collect();
    let loud: Vec<&[f32]> = frames.iter().copied().filter(|f| rms(f) > 0.02).collect();
    assert!(loud.len() >= 5, "{what}: only {} loud frames", loud.len());
    let quiet = frames.len() - loud.len();
    assert!(quiet >= 1, "{what}: never pauses");
    let voiced = loud
        .iter()
        .filter(|f| {
            let energy: f32 = f.iter().map(|s| s * s).sum();
            let best = (audio.rate as usize / 400..=audio.rate as usize / 70)
                .map(|lag| f.iter().zip(&f[lag..]).map(|(a, b)| a * b).sum::<f32>() / energy)
                .fold(f32::MIN, f32::max);
            best > 0.4
        })
        .count();
    assert!(
        voiced * 2 >= loud.len(),
        "{what}: {voiced} of {} loud frames are periodic at a voice's pitch",
        loud.len()
    );
    let levels: Vec<f32> = loud.iter().map(|f| rms(f)).collect();
    let mean = levels.iter().sum::<f32>() / levels.len() as f32;
    let sd = (levels.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / levels.len() as f32).sqrt();
    assert!(
        sd / mean > 0.15,
        "{what}: loudness is flat (cv {:.2}), not syllables",
        sd / mean
    );
}

#[test]
fn every_scene_gets_a_clip_that_sounds_like_speech_and_lasts_as_long_as_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &[SHORT, LONG, "Dawn."]);
    let out = baton(dir.path())
        .arg("voice")
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let audio_dir = dir.path().join("run/2_audio");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(audio_dir.join("voice.json")).unwrap()).unwrap();
    let mut clips = Vec::new();
    for n in 1..=3 {
        let path = audio_dir.join(format!("scene_{n:02}.wav"));
        let audio = wav::read(&path).unwrap();
        assert_eq!(audio.rate, 22050);
        let entry = &manifest["clips"][n - 1];
        assert_eq!(entry["file"], format!("2_audio/scene_{n:02}.wav"));
        assert!((entry["seconds"].as_f64().unwrap() - audio.seconds()).abs() < 1e-6);
        let peak = audio.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak > 0.05, "scene {n} is silent");
        clips.push(audio);
    }
    assert_speech_like(&clips[0], "scene 1");
    assert_speech_like(&clips[1], "scene 2");
    // More words, more seconds.
    assert!(clips[1].seconds() > clips[0].seconds() * 2.0);
    assert!(clips[0].seconds() > clips[2].seconds());
    // Loudness matched across scenes (speech RMS within 1 dB).
    let levels: Vec<f64> = (0..3)
        .map(|i| manifest["clips"][i]["speech_rms_dbfs"].as_f64().unwrap())
        .collect();
    assert!(
        levels.iter().all(|l| (l - levels[0]).abs() < 1.0),
        "{levels:?}"
    );
    // The narration is the clips in order, with the gaps between them.
    let narration = wav::read(&audio_dir.join("narration.wav")).unwrap();
    let gaps = 2.0 * manifest["gap_seconds"].as_f64().unwrap();
    let sum: f64 = clips.iter().map(Audio::seconds).sum();
    assert!((narration.seconds() - sum - gaps).abs() < 0.01);
    assert!((manifest["narration_seconds"].as_f64().unwrap() - narration.seconds()).abs() < 1e-6);
}

#[test]
fn options_change_the_pace_and_the_sample_rate() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &[LONG]);
    let seconds = |args: &[&str]| {
        let out = baton(dir.path())
            .arg("voice")
            .arg("--input")
            .arg(&input)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        wav::read(&dir.path().join("run/2_audio/scene_01.wav")).unwrap()
    };
    let normal = seconds(&[]);
    let fast = seconds(&["--speed", "2.0", "--sample-rate", "48000"]);
    assert_eq!(fast.rate, 48000);
    assert!(
        fast.seconds() < normal.seconds() * 0.75,
        "{} vs {}",
        fast.seconds(),
        normal.seconds()
    );
    assert_speech_like(&fast, "fast, resampled");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("run/1_scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let check = |name: &str, body: &str, expect: &[&str]| {
        let file = scripts.join(name);
        std::fs::write(&file, body).unwrap();
        let out = baton(dir.path())
            .arg("voice")
            .arg("--input")
            .arg(&file)
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {said}");
        for e in expect {
            assert!(said.contains(e), "{name}: expected '{e}' in: {said}");
        }
        assert!(
            !dir.path().join("run/2_audio").exists()
                || std::fs::read_dir(dir.path().join("run/2_audio"))
                    .unwrap()
                    .next()
                    .is_none(),
            "{name}: something was written"
        );
    };
    check(
        "a.json",
        "this is { not json",
        &["a.json", "is not a storyboard"],
    );
    let scene = |narration: &str| {
        format!(
            r#"{{"topic":"T","title":"T","scenes":[{{"index":1,"title":"x","narration":"{narration}","image_prompt":"y","duration_seconds":5}}]}}"#
        )
    };
    check("b.json", &scene("   "), &["scene 1 narration is empty"]);
    check(
        "c.json",
        r#"{"topic":"T","title":"T","scenes":[{"index":1,"title":"x","image_prompt":"y","duration_seconds":5}]}"#,
        &["c.json", "narration"],
    );
    check(
        "d.json",
        r#"{"topic":"T","title":"T","scenes":[]}"#,
        &["no scenes"],
    );

    // An output folder that cannot be made: its parent is a file.
    let input = storyboard(dir.path(), &[SHORT]);
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let out = baton(dir.path())
        .arg("voice")
        .arg("--input")
        .arg(&input)
        .arg("--run-dir")
        .arg(&blocker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot write into") && text(&out).contains("not-a-folder"));
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");

    for (flag, value) in [
        ("--speed", "9"),
        ("--sample-rate", "100"),
        ("--voice", "en;rm"),
    ] {
        let out = baton(dir.path())
            .arg("voice")
            .arg("--input")
            .arg(&input)
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(value), "{}", text(&out));
    }
}

#[test]
fn the_built_in_voice_stage_runs_in_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = storyboard(dir.path(), &[SHORT, LONG]);
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[[stage]]
name = "scenes"
command = ["sh", "-c", "mkdir -p {{run_dir}}/1_scripts && cp {} {{run_dir}}/1_scripts/{{slug}}_scenes.json"]
outputs = ["1_scripts/{{slug}}_scenes.json"]
memory = "0"
device = "cpu"

[[stage]]
name = "voice"
builtin = "voice"
after = ["scenes"]
outputs = ["2_audio/narration.wav", "2_audio/voice.json"]
memory = "0"
device = "cpu"
"#,
            fixture.display()
        ),
    )
    .unwrap();
    let out = baton(dir.path())
        .args([
            "run",
            "--device",
            "host",
            "--output",
            "out",
            "--topic",
            "Cyberpunk Tokyo",
            "--pipeline",
        ])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    for n in 1..=2 {
        wav::read(&run.join(format!("2_audio/scene_{n:02}.wav"))).unwrap();
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(manifest["stages"][1]["state"], "succeeded", "{manifest}");
}

#[test]
fn the_speech_check_tells_speech_from_noise_tones_and_silence() {
    let rate = 22050;
    let mut x = 12345u32;
    let mut noise = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32 - 0.5) * 0.3
    };
    // Bursts of noise with pauses: loud, varying, but never periodic.
    let bursts: Vec<f32> = (0..rate * 2)
        .map(|i| if (i / 4000) % 2 == 0 { noise() } else { 0.0 })
        .collect();
    // A steady 150 Hz tone with a pause: periodic, but flat, no syllables.
    let tone: Vec<f32> = (0..rate * 2)
        .map(|i| {
            if i < rate * 3 / 2 {
                (i as f32 * 150.0 * std::f32::consts::TAU / rate as f32).sin() * 0.3
            } else {
                0.0
            }
        })
        .collect();
    for (name, samples) in [
        ("noise", bursts),
        ("tone", tone),
        ("silence", vec![0.0; rate * 2]),
    ] {
        let audio = Audio {
            rate: rate as u32,
            samples,
        };
        let judged = std::panic::catch_unwind(|| assert_speech_like(&audio, name));
        assert!(judged.is_err(), "{name} passed for speech");
    }
}

#[test]
fn the_neural_engine_narrates_inside_a_scope_guard_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("parler-tiny");
    baton_studio::voice::parler::random::write_random_parler(
        &model,
        &baton_studio::voice::parler::random::tiny_config(2),
        candle_core::DType::F32,
    )
    .unwrap();
    let input = storyboard(dir.path(), &["Neon rain.", "The city glows at night."]);
    let out = baton(dir.path())
        .arg("voice")
        .arg("--input")
        .arg(&input)
        .args([
            "--engine",
            "parler",
            "--compute",
            "cpu",
            "--describe",
            "A calm voice.",
        ])
        .arg("--voice-model")
        .arg(&model)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // The seed's log points: before, after loading, after generation, after cleanup.
    for expected in [
        "with Parler-TTS",
        "memory before:",
        "memory after loading:",
        "memory after generation:",
        "memory back after 'voice'",
    ] {
        assert!(said.contains(expected), "expected '{expected}' in: {said}");
    }
    let audio = dir.path().join("run/2_audio");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(audio.join("voice.json")).unwrap()).unwrap();
    assert!(
        manifest["engine"]
            .as_str()
            .unwrap()
            .starts_with("parler-tts"),
        "{manifest}"
    );
    for n in 1..=2 {
        let clip = wav::read(&audio.join(format!("scene_{n:02}.wav"))).unwrap();
        assert_eq!(clip.rate, 22_050);
        assert!(clip.seconds() > 0.1, "scene {n}: {}", clip.seconds());
    }
    // Asked for by name and not there: a clear error, nothing written.
    let missing = baton(dir.path())
        .arg("voice")
        .arg("--input")
        .arg(&input)
        .args(["--engine", "parler", "--run-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains("parler-tts-mini-v1")
            && text(&missing).contains("baton models fetch parler-tts-mini-v1"),
        "{}",
        text(&missing)
    );
    assert!(!dir.path().join("other/2_audio/voice.json").exists());
}
