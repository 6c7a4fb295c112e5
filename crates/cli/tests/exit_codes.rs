//! Exit codes come from the error, for every command that reads input: 2 when what the user
//! wrote is wrong (the message names it), 1 when the machine or the work failed, never the
//! other way round. Commands of the stage program run through `baton`, as a user runs them.

mod common;

use std::path::Path;
use std::process::Output;

/// `baton` with a private simulation, no hub and no models in reach.
fn baton(dir: &Path, args: &[&str]) -> Output {
    common::baton(dir, "1x24GiB")
        .current_dir(dir)
        .env("HF_HOME", dir.join("no-hub"))
        .env("HF_HUB_OFFLINE", "1")
        .env("BATON_MODELS_DIR", dir.join("models"))
        .env("BATON_STATE_DIR", dir.join("state"))
        .env_remove("BATON_VOICE_ENGINE")
        .env_remove("BATON_VOICE_MODEL")
        .env_remove("BATON_SCENES_MODEL")
        .env_remove("BATON_IMAGES_MODEL")
        .args(args)
        .output()
        .expect("run baton")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 2, and the error names `names`.
#[track_caller]
fn bad_input(out: Output, names: &str) {
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "expected bad input: {err}");
    assert!(err.contains(names), "{names:?} not named in: {err}");
}

/// Exit code 1, and the error says `says`.
#[track_caller]
fn machine_failure(out: Output, says: &str) {
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a machine failure: {err}"
    );
    assert!(err.contains(says), "{says:?} not in: {err}");
}

/// True when this machine has an NVIDIA driver (then "no GPU" cases cannot be tried).
fn has_gpu(dir: &Path) -> bool {
    baton(dir, &["stats", "--device", "gpu"]).status.success()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn run_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(
        baton(d, &["run", "--topic", "x", "--pipeline", "nope.toml"]),
        "nope.toml",
    );
    bad_input(
        baton(d, &["run", "--topic", "x", "--device", "tpu"]),
        "'tpu'",
    );
    let typo = write(
        d,
        "typo.toml",
        "[[stage]]\nname='a'\ncommand=['true']\nmemroy='1GiB'\n",
    );
    bad_input(
        baton(d, &["run", "--topic", "x", "--pipeline", &typo]),
        "memroy",
    );
    let failing = write(
        d,
        "fails.toml",
        "[[stage]]\nname='a'\ncommand=['false']\nretries=0\n",
    );
    machine_failure(
        baton(
            d,
            &[
                "run",
                "--topic",
                "x",
                "--device",
                "sim",
                "--pipeline",
                &failing,
            ],
        ),
        "1 of 1 run(s) failed",
    );
    bad_input(
        baton(
            d,
            &[
                "run",
                "--topic",
                "x",
                "--mode",
                "monolithic",
                "--pipeline",
                &failing,
            ],
        ),
        "--mode monolithic runs the built-in content pipeline",
    );
    if !has_gpu(d) {
        let fine = write(d, "fine.toml", "[[stage]]\nname='a'\ncommand=['true']\n");
        machine_failure(
            baton(
                d,
                &[
                    "run",
                    "--topic",
                    "x",
                    "--device",
                    "gpu",
                    "--pipeline",
                    &fine,
                ],
            ),
            "no NVIDIA driver found",
        );
    }
}

#[test]
fn resume_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(baton(d, &["resume", "nowhere"]), "nowhere");
    std::fs::create_dir(d.join("plain")).unwrap();
    bad_input(baton(d, &["resume", "plain"]), "is not a baton run folder");
    std::fs::create_dir(d.join("broken")).unwrap();
    write(d, "broken/run.json", "{ not json");
    machine_failure(baton(d, &["resume", "broken"]), "is corrupt");
}

#[test]
fn batch_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(baton(d, &["batch", "nope.txt"]), "nope.txt");
    let empty = write(d, "empty.txt", "# nothing\n\n");
    bad_input(baton(d, &["batch", &empty]), "empty.txt");
    let topics = write(d, "topics.txt", "one\n");
    bad_input(
        baton(d, &["batch", &topics, "--pipeline", "nope.toml"]),
        "nope.toml",
    );
}

#[test]
fn stats_watch_and_sim_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(baton(d, &["stats", "--device", "tpu"]), "'tpu'");
    bad_input(
        baton(d, &["watch", "--interval", "soon", "--ticks", "1"]),
        "'soon'",
    );
    bad_input(baton(d, &["sim", "hold", "lots"]), "'lots'");
    machine_failure(
        baton(d, &["sim", "hold", "100GiB", "--seconds", "0"]),
        "out of memory on sim0",
    );
    if !has_gpu(d) {
        machine_failure(
            baton(d, &["stats", "--device", "gpu"]),
            "no NVIDIA driver found",
        );
        machine_failure(
            baton(d, &["watch", "--device", "gpu", "--ticks", "1"]),
            "no NVIDIA driver found",
        );
    }
}

#[test]
fn scenes_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(baton(d, &["scenes", "--topic", "  "]), "bad topic");
    bad_input(
        baton(
            d,
            &["scenes", "--topic", "x", "--model", "/nope/model.gguf"],
        ),
        "/nope/model.gguf",
    );
    bad_input(
        baton(d, &["scenes", "--topic", "x", "--model", "pip:"]),
        "bad model spec 'pip:'",
    );
    // A model file that is there (the device is opened before it is read).
    let model = write(d, "model.gguf", "not really a model");
    bad_input(
        baton(
            d,
            &[
                "scenes",
                "--topic",
                "x",
                "--model",
                &model,
                "--compute",
                "sim",
            ],
        ),
        "--compute sim",
    );
    bad_input(
        baton(
            d,
            &[
                "scenes",
                "--topic",
                "x",
                "--model",
                &model,
                "--style",
                "<b>bold</b>",
            ],
        ),
        "bad --style '<b>bold</b>'",
    );
    if !has_gpu(d) {
        // A GPU asked for that this machine (or this build) cannot open is never bad input.
        let out = baton(
            d,
            &[
                "scenes",
                "--topic",
                "x",
                "--model",
                &model,
                "--compute",
                "gpu",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    }
}

#[test]
fn voice_and_images_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(baton(d, &["voice", "--input", "nope.json"]), "nope.json");
    bad_input(baton(d, &["images", "--input", "nope.json"]), "nope.json");
    let board = write(
        d,
        "board.json",
        r#"{"topic": "t", "title": "T", "scenes": [{"index": 1, "title": "A", "narration": "Words here.", "image_prompt": "a cat", "duration_seconds": 3.0}]}"#,
    );
    bad_input(
        baton(d, &["voice", "--input", &board, "--speed", "9"]),
        "--speed 9",
    );
    bad_input(
        baton(
            d,
            &[
                "voice",
                "--input",
                &board,
                "--engine",
                "parler",
                "--voice-model",
                "nobody",
            ],
        ),
        "unknown voice model 'nobody'",
    );
    bad_input(
        baton(d, &["images", "--input", &board, "--model", "sd-trubo"]),
        "unknown image model 'sd-trubo'",
    );
    // A known family that is not on this machine is the machine's state, not a typo.
    machine_failure(
        baton(d, &["images", "--input", &board, "--model", "sd-turbo"]),
        "no image model",
    );
}

#[test]
fn models_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(
        baton(d, &["models", "fetch", "pip:"]),
        "bad model spec 'pip:'",
    );
    bad_input(
        baton(d, &["models", "warm", "/nope/model.gguf"]),
        "/nope/model.gguf",
    );
    bad_input(
        baton(d, &["models", "evict", "/nope/model.gguf"]),
        "/nope/model.gguf",
    );
    // A typo is answered with the name it was probably meant to be; nonsense with the list.
    bad_input(
        baton(d, &["models", "fetch", "sd-trubo"]),
        "'sd-trubo' is not a model baton knows; did you mean 'sd-turbo'?",
    );
    bad_input(
        baton(d, &["models", "fetch", "flux-schnel-q8_0"]),
        "did you mean 'flux-schnell-q8_0'?",
    );
    bad_input(
        baton(d, &["models", "fetch", "stable-cascade"]),
        "`baton models list` shows them all",
    );
    // Offline, the same for every kind of model: the machine cannot reach the hub.
    machine_failure(baton(d, &["models", "fetch", "sd-turbo"]), "HF_HUB_OFFLINE");
    machine_failure(
        baton(d, &["models", "fetch", "flux-schnell-q8_0"]),
        "HF_HUB_OFFLINE",
    );
    machine_failure(
        baton(d, &["models", "fetch", "parler-tts-mini-v1"]),
        "HF_HUB_OFFLINE",
    );
}

#[test]
fn demo_and_bench_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    bad_input(baton(d, &["demo", "switch", "--size", "lots"]), "'lots'");
    bad_input(
        baton(d, &["bench", "startup", "--repeat", "0"]),
        "--repeat 0",
    );
    bad_input(
        baton(d, &["bench", "images", "--family", "nope"]),
        "--family 'nope'",
    );
    bad_input(
        baton(d, &["bench", "voice", "--size", "huge"]),
        "--size 'huge'",
    );
    bad_input(
        baton(
            d,
            &["bench", "llm", "--repeat", "0", "--model", "/nope.gguf"],
        ),
        "--repeat 0",
    );
    if !has_gpu(d) {
        machine_failure(
            baton(d, &["demo", "switch", "--device", "gpu", "--size", "64MiB"]),
            "no NVIDIA driver found",
        );
    }
}
