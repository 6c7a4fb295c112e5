//! The README's main job, `baton run --topic`, end to end and offline: the built-in content
//! pipeline with a tiny random LLM (the test writes it), the embedded voice, and storyboard
//! cards because no image model is available, every stage in its own process.

use std::path::Path;
use std::process::Command;

use baton_studio::llm::tiny::write_tiny_llama;

#[test]
fn run_topic_makes_a_complete_run_folder_with_cards_said_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_baton"));
    let out = Command::new(exe)
        .current_dir(dir.path())
        .env("BATON_SIM_DIR", dir.path().join("sim"))
        .env("BATON_SIM_GPUS", "1x24GiB")
        .env("BATON_STATE_DIR", dir.path().join("state"))
        .env("BATON_MODELS_DIR", dir.path().join("models"))
        .env("BATON_ESPEAK", exe.with_file_name("baton-espeak"))
        .env("BATON_ESPEAK_DATA", dir.path().join("espeak"))
        .env("HF_HOME", dir.path().join("no-hub"))
        .env("BATON_SCENES_MODEL", &model)
        .env("BATON_SCENES", "2")
        .env("BATON_SCENES_MAX_TOKENS", "20000")
        .args(["run", "--device", "sim", "--topic", "Cyberpunk Tokyo"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("NO IMAGE MODEL") && said.contains("STORYBOARD CARDS"),
        "{said}"
    );
    let run = std::fs::read_dir(dir.path().join("output"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let board = baton_studio::storyboard::Storyboard::load(
        &run.join("1_scripts/cyberpunk_tokyo_scenes.json"),
    )
    .unwrap();
    assert_eq!(board.scenes.len(), 2);
    for n in 1..=2 {
        baton_studio::wav::read(&run.join(format!("2_audio/scene_{n:02}.wav"))).unwrap();
        let png = std::fs::read(run.join(format!("3_images/scene_{n:02}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
    let images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("3_images/images.json")).unwrap()).unwrap();
    assert!(
        images["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "card")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    let stages = manifest["stages"].as_array().unwrap();
    let names: Vec<_> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["scenes", "voice", "images"]);
    assert!(
        stages.iter().all(|s| s["state"] == "succeeded"),
        "{manifest}"
    );
    let images_attempt = &stages[2]["attempts"][0];
    assert!(
        images_attempt["warnings"][0]
            .as_str()
            .unwrap()
            .contains("STORYBOARD CARDS"),
        "{images_attempt}"
    );
    assert!(run.join("report/index.html").is_file());
}
