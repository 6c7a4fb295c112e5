//! `baton video` end to end: a run folder narrated by the embedded voice and drawn as cards,
//! made into an mp4 whose length is the narration's (checked with ffprobe), in every aspect;
//! without ffmpeg the stage is skipped loudly and writes only the subtitles and its record;
//! bad input is refused by name with nothing written.

mod common;

use common::said;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn baton(dir: &Path) -> Command {
    let exe = &common::baton_exe();
    let mut cmd = Command::new(exe);
    cmd.current_dir(dir)
        .env("BATON_ESPEAK", exe.with_file_name("baton-espeak"))
        .env("BATON_ESPEAK_DATA", dir.join("espeak-data"))
        .env("BATON_STATE_DIR", dir.join("state"))
        .env_remove("BATON_FFMPEG")
        .env_remove("BATON_VIDEO_RESOLUTION")
        .env_remove("BATON_VIDEO_ASPECT");
    cmd
}

/// `baton video ARGS --input INPUT`, with `configure` setting anything else first.
fn video(dir: &Path, input: &Path, args: &[&str], configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = baton(dir);
    configure(&mut cmd);
    cmd.arg("video")
        .args(args)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap()
}

/// The small, quick video the tests make: same filters and encoders as 1080p.
const SMALL: [&str; 4] = ["--resolution", "240", "--fps", "15"];

/// A run folder with a narrated, carded storyboard of `n` scenes; returns the scenes file.
fn narrated_run(dir: &Path, n: usize) -> PathBuf {
    let scripts = dir.join("run/1_scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let lines = [
        "Neon rain falls over Shinjuku, and the crowd moves like a river of light.",
        "At a noodle stand, an old cook watches drones drift past the signs.",
        "By dawn the towers fade to grey, and the city sleeps for an hour.",
    ];
    let scenes: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({"index": i + 1, "title": format!("Scene {}", i + 1),
                "narration": lines[i % 3], "image_prompt": "a neon street at night",
                "duration_seconds": 5})
        })
        .collect();
    let file = scripts.join("cyberpunk_tokyo_scenes.json");
    let board =
        serde_json::json!({"topic": "Cyberpunk Tokyo", "title": "Neon Nights", "scenes": scenes});
    std::fs::write(&file, serde_json::to_vec(&board).unwrap()).unwrap();
    for args in [
        vec!["voice", "--engine", "espeak"],
        vec!["images", "--cards", "--width", "256", "--height", "256"],
    ] {
        let out = baton(dir)
            .args(&args)
            .arg("--input")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", said(&out));
    }
    file
}

#[test]
fn the_video_lasts_as_long_as_the_narration_in_every_aspect() {
    let dir = tempfile::tempdir().unwrap();
    let input = narrated_run(dir.path(), 3);
    let run = dir.path().join("run");
    for (aspect, size) in [("16:9", "426x240"), ("9:16", "240x426"), ("1:1", "240x240")] {
        let out = video(
            dir.path(),
            &input,
            &[&SMALL[..], &["--aspect", aspect]].concat(),
            |_| {},
        );
        assert!(out.status.success(), "{}", said(&out));
        common::assert_video_matches_narration(&run, "cyberpunk_tokyo", 3);
        let mp4 = run.join("4_video/cyberpunk_tokyo.mp4");
        assert_eq!(
            common::ffprobe(&mp4, "stream=width,height", Some("v:0")).replace('\n', "x"),
            size
        );
        // Nothing but the run's files is left in 4_video/.
        let mut names: Vec<_> = std::fs::read_dir(run.join("4_video"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["cyberpunk_tokyo.mp4", "cyberpunk_tokyo.srt", "video.json"]
        );
    }
    // The record says where each scene sits.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("4_video/video.json")).unwrap()).unwrap();
    assert_eq!(record["timeline"]["cues"].as_array().unwrap().len(), 3);
    assert!(record["ffmpeg"].as_str().unwrap().starts_with("ffmpeg"));

    // Burned-in subtitles change the picture, not the timing.
    let plain = frame(&run, 1.0);
    let out = video(
        dir.path(),
        &input,
        &[&SMALL[..], &["--burn-subtitles"]].concat(),
        |_| {},
    );
    assert!(out.status.success(), "{}", said(&out));
    common::assert_video_matches_narration(&run, "cyberpunk_tokyo", 3);
    assert_ne!(plain, frame(&run, 1.0));
}

/// One decoded frame at `t` seconds, as raw grey pixels.
fn frame(run: &Path, t: f64) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &t.to_string(), "-i"])
        .arg(run.join("4_video/cyberpunk_tokyo.mp4"))
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn without_ffmpeg_the_video_is_skipped_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let input = narrated_run(dir.path(), 2);
    // A PATH with no ffmpeg on it.
    let out = video(dir.path(), &input, &[], |cmd| {
        cmd.env("PATH", dir.path().join("empty"));
    });
    let said = said(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("NO VIDEO") && said.contains("apt-get install ffmpeg"),
        "{said}"
    );
    let run = dir.path().join("run");
    assert!(!run.join("4_video/cyberpunk_tokyo.mp4").exists());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("4_video/video.json")).unwrap()).unwrap();
    assert!(record["skipped"].as_str().unwrap().contains("ffmpeg"));
    let srt = std::fs::read_to_string(run.join("4_video/cyberpunk_tokyo.srt")).unwrap();
    assert_eq!(srt.matches(" --> ").count(), 2);
}

#[test]
fn bad_input_is_refused_by_name_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = narrated_run(dir.path(), 1);
    let run = dir.path().join("run");
    let refused = |args: &[&str], needle: &str| {
        let out = video(dir.path(), &input, args, |_| {});
        let said = said(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert!(said.contains(needle), "{args:?}: {said}");
        assert!(!run.join("4_video").exists(), "{args:?}");
    };
    refused(&["--aspect", "4:3"], "'4:3'");
    refused(&["--resolution", "50"], "--resolution 50");
    refused(&["--preset", "quick"], "'quick'");
    std::fs::remove_file(run.join("3_images/scene_01.png")).unwrap();
    refused(&[], "scene_01.png");
    std::fs::remove_file(run.join("2_audio/voice.json")).unwrap();
    refused(&[], "voice.json");
}
