//! `baton scenes` end to end with a tiny random llama the test writes itself, and every bad
//! input refused before anything is written.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use baton_studio::llm::tiny::write_tiny_llama;
use baton_studio::storyboard::Storyboard;

fn scenes(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::baton_exe())
        .current_dir(dir)
        .env("BATON_MODELS_DIR", dir.join("store"))
        .args(["scenes", "--compute", "cpu", "--output", "out"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_tiny_model_writes_a_valid_storyboard_where_the_seed_puts_it() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(&dir.path().join("tiny.gguf"), 3).unwrap();
    let out = scenes(
        dir.path(),
        &[
            "--topic",
            "Cyberpunk Tokyo",
            "--model",
            "tiny.gguf",
            "--scenes",
            "2",
            "--max-tokens",
            "20000",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tokens/s") && stdout.contains("memory back after 'scenes model'"),
        "{stdout}"
    );
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1);
    let name = runs[0].file_name().to_string_lossy().into_owned();
    assert!(
        name.ends_with("_cyberpunk_tokyo") && name.len() == "20261127_101500_cyberpunk_tokyo".len(),
        "{name}"
    );
    let board =
        Storyboard::load(&runs[0].path().join("1_scripts/cyberpunk_tokyo_scenes.json")).unwrap();
    assert_eq!(board.topic, "Cyberpunk Tokyo");
    assert_eq!(
        board.scenes.iter().map(|s| s.index).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn bad_topics_and_models_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_llama(&d.join("tiny.gguf"), 1).unwrap();
    let bytes = std::fs::read(d.join("tiny.gguf")).unwrap();
    std::fs::write(d.join("cut.gguf"), &bytes[..bytes.len() / 2]).unwrap();
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    let mut gemma = bytes.clone();
    gemma[at..at + 5].copy_from_slice(b"gemma");
    std::fs::write(d.join("gemma.gguf"), &gemma).unwrap();
    let long = "x".repeat(10_000);
    for (topic, model, needle) in [
        ("", "tiny.gguf", "it is empty"),
        (long.as_str(), "tiny.gguf", "longer than 500"),
        ("../../etc", "tiny.gguf", "path separator"),
        ("Tokyo\u{1b}[2J", "tiny.gguf", "control character"),
        ("Tokyo", "missing.gguf", "'missing.gguf' does not exist"),
        ("Tokyo", "gemma.gguf", "'gemma' model"),
        ("Tokyo", "cut.gguf", "truncated"),
    ] {
        let out = scenes(d, &["--topic", topic, "--model", model]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{topic:.20} {model}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(
            !d.join("out").exists(),
            "nothing may be written for {topic:.20} {model}"
        );
    }
}

#[test]
fn as_a_stage_its_model_load_goes_into_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"[[stage]]
name = "scenes"
command = ["{{baton}}", "scenes", "--topic", "{{topic}}", "--model", "{}", "--compute", "cpu", "--scenes", "2", "--max-tokens", "20000", "--run-dir", "{{run_dir}}"]
outputs = ["1_scripts/{{slug}}_scenes.json"]
memory = "0"
device = "cpu"
"#,
            model.display()
        ),
    )
    .unwrap();
    let out = Command::new(common::baton_exe())
        .current_dir(dir.path())
        .env("BATON_STATE_DIR", dir.path().join("state"))
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
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    let loads = &manifest["stages"][0]["attempts"][0]["loads"];
    assert_eq!(loads.as_array().map(Vec::len), Some(1), "{manifest}");
    assert_eq!(loads[0]["name"], model.display().to_string());
    assert_eq!(loads[0]["bytes"], std::fs::metadata(&model).unwrap().len());
    assert!(loads[0]["seconds"].as_f64().unwrap() > 0.0);
    assert!(loads[0]["gb_per_second"].as_f64().unwrap() > 0.0);
}

/// `models list --json`: every model baton knows by name, its kind, and whether it is here.
#[test]
fn models_list_as_json_names_every_known_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::baton_exe())
        .env("BATON_MODELS_DIR", dir.path().join("store"))
        .env("HF_HOME", dir.path().join("hub"))
        .args(["models", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::said(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let models = doc["models"].as_array().unwrap();
    let find = |name: &str| {
        models
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {doc}"))
    };
    assert_eq!(find("smollm2")["kind"], "store");
    assert_eq!(
        find("qwen3-8b")["here"],
        false,
        "an empty store holds nothing"
    );
    assert_eq!(find("sd-turbo")["kind"], "image");
    assert_eq!(find("flux-schnell-q8_0")["kind"], "flux-transformer");
    assert!(doc["store"].as_str().unwrap().ends_with("store"));
}
