//! The video stage: the storyboard's pictures (or cards) shown for exactly as long as their
//! narration lasts, with a slow pan or zoom and short crossfades, `narration.wav` as the sound
//! track, and one subtitle cue per scene: `4_video/{slug}.mp4` (H.264 + AAC) and `{slug}.srt`.
//!
//! Key design decisions. Timing comes from `2_audio/voice.json`, the clips' real durations, and
//! is laid out in whole frames (each crossfade centred on the silence between two clips), so
//! the picture ends within a frame of the sound. Encoding runs through the `ffmpeg` program on
//! the CPU, a child of this stage's process and so owned by its process group; when it is not
//! installed the stage says how to install it and is skipped loudly, like the storyboard cards.
//! Files appear whole: the mp4 is encoded under a temporary name and renamed, after ffprobe
//! has confirmed its length against the narration's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use baton_base::atomic_file::write_atomic;
use serde::{Deserialize, Serialize};

use crate::storyboard::{Storyboard, StoryboardError};

/// The folder of the run the video stage writes.
pub const VIDEO_DIR: &str = "4_video";

/// Why the video could not be made; messages name the file or value and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VideoError {
    #[error(transparent)]
    Storyboard(#[from] StoryboardError),
    #[error("{0}")]
    Option(String),
    #[error("'{}' is missing: {why}", .path.display())]
    MissingInput { path: PathBuf, why: String },
    #[error("'{}' cannot be read as the voice stage's record: {why}; run the voice stage again", .path.display())]
    BadVoice { path: PathBuf, why: String },
    #[error("ffmpeg failed ({status}): {log}")]
    Ffmpeg { status: String, log: String },
    #[error("cannot run '{}': {source}", .program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the encoded video lasts {video:.3}s but the narration {audio:.3}s; the two must agree within 0.1s"
    )]
    Duration { video: f64, audio: f64 },
    #[error("cannot write into '{}': {source}; pass a writable run folder with --run-dir", .path.display())]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] baton_base::FileError),
}

impl baton_base::fault::Classify for VideoError {
    /// The storyboard, the options and the run folder's files are the caller's input; an
    /// encoder that fails is the machine's.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            VideoError::Storyboard(_)
            | VideoError::Option(_)
            | VideoError::MissingInput { .. }
            | VideoError::BadVoice { .. }
            | VideoError::Unwritable { .. } => Fault::Input,
            VideoError::Write(e) => e.fault(),
            VideoError::Ffmpeg { .. } | VideoError::Spawn { .. } | VideoError::Duration { .. } => {
                Fault::Machine
            }
        }
    }
}

/// The frame's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Aspect {
    /// 16:9, landscape.
    Wide,
    /// 9:16, portrait (shorts, reels).
    Tall,
    /// 1:1.
    Square,
}

impl Aspect {
    pub fn parse(s: &str) -> Result<Aspect, VideoError> {
        match s {
            "16:9" => Ok(Aspect::Wide),
            "9:16" => Ok(Aspect::Tall),
            "1:1" => Ok(Aspect::Square),
            _ => Err(VideoError::Option(format!(
                "--aspect '{s}': use 16:9 (landscape), 9:16 (portrait) or 1:1 (square)"
            ))),
        }
    }

    /// Width and height for a frame whose short side is `short` pixels (1080 for 1080p).
    pub fn size(self, short: u32) -> (u32, u32) {
        let long = (short as u64 * 16 / 9) as u32 & !1;
        match self {
            Aspect::Wide => (long, short),
            Aspect::Tall => (short, long),
            Aspect::Square => (short, short),
        }
    }
}

/// How the video is made.
#[derive(Debug, Clone)]
pub struct VideoOptions {
    pub aspect: Aspect,
    /// The frame's short side in pixels: 1080 for 1080p.
    pub resolution: u32,
    pub fps: u32,
    /// Seconds each crossfade lasts (shortened where a clip is shorter).
    pub crossfade: f64,
    /// Draw the subtitles into the picture too (they are always a track of the mp4 and the
    /// `.srt` beside it).
    pub burn_subtitles: bool,
    /// x264's constant rate factor: lower is better and larger (18-28 is usual).
    pub crf: u32,
    /// x264's preset: ultrafast … veryslow.
    pub preset: String,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions {
            aspect: Aspect::Wide,
            resolution: 1080,
            fps: 30,
            crossfade: 0.5,
            burn_subtitles: false,
            crf: 20,
            preset: "veryfast".into(),
        }
    }
}

const PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];

impl VideoOptions {
    pub fn check(&self) -> Result<(), VideoError> {
        let bad = |s: String| Err(VideoError::Option(s));
        if !(120..=2160).contains(&self.resolution) {
            return bad(format!(
                "--resolution {}: use the short side in pixels, 120 to 2160 (1080 for 1080p, 720 for 720p)",
                self.resolution
            ));
        }
        if !(10..=60).contains(&self.fps) {
            return bad(format!("--fps {}: use 10 to 60 (30 is usual)", self.fps));
        }
        if !(0.0..=2.0).contains(&self.crossfade) {
            return bad(format!(
                "--crossfade {}: use 0 (cuts) to 2 seconds",
                self.crossfade
            ));
        }
        if self.crf > 51 {
            return bad(format!("--crf {}: use 0 to 51 (18-28 is usual)", self.crf));
        }
        if !PRESETS.contains(&self.preset.as_str()) {
            return bad(format!(
                "--preset '{}': use one of {}",
                self.preset,
                PRESETS.join(", ")
            ));
        }
        Ok(())
    }
}

/// What the voice stage recorded (`2_audio/voice.json`), as far as the video needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct VoiceRecord {
    pub clips: Vec<VoiceClip>,
    pub narration: String,
    pub narration_seconds: f64,
    pub gap_seconds: f64,
    #[serde(default)]
    pub engine: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VoiceClip {
    pub scene: u32,
    pub seconds: f64,
}

/// Where every scene sits in the video, in whole frames.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub fps: u32,
    /// Frames of the whole video.
    pub frames: u64,
    /// Frames each crossfade lasts (even; 0 for cuts).
    pub crossfade_frames: u64,
    /// Each scene's picture: frames it is encoded for (its slot plus the crossfades it
    /// takes part in).
    pub segment_frames: Vec<u64>,
    /// Frame at which each crossfade starts (one fewer than the scenes).
    pub crossfade_starts: Vec<u64>,
    /// Each scene's narration: start and end in seconds (the subtitle cues).
    pub cues: Vec<(f64, f64)>,
}

impl Timeline {
    /// Scene `i` is on screen from the end of the silence before its clip to the end of the
    /// silence after it; each crossfade is centred on the silence between two clips.
    pub fn new(clips: &[f64], gap: f64, fps: u32, crossfade: f64) -> Timeline {
        let n = clips.len();
        let fps_f = fps as f64;
        let mut cues = Vec::with_capacity(n);
        let mut t = 0.0;
        // Slot boundaries: the middle of each silence between clips.
        let mut boundaries = Vec::with_capacity(n + 1);
        boundaries.push(0u64);
        for (i, seconds) in clips.iter().enumerate() {
            cues.push((t, t + seconds));
            t += seconds;
            if i + 1 < n {
                boundaries.push(((t + gap / 2.0) * fps_f).round() as u64);
                t += gap;
            }
        }
        let frames = (t * fps_f).round().max(1.0) as u64;
        boundaries.push(frames);
        // The shortest slot bounds the crossfade: at most a third of it, and even, so that
        // half of it falls on either side of the boundary.
        let shortest = boundaries
            .windows(2)
            .map(|w| w[1] - w[0])
            .min()
            .unwrap_or(0);
        let half = ((crossfade * fps_f / 2.0).round() as u64).min(shortest / 6);
        let c = if n > 1 { 2 * half } else { 0 };
        let segment_frames = (0..n)
            .map(|i| {
                let slot = boundaries[i + 1] - boundaries[i];
                slot + if i > 0 { half } else { 0 } + if i + 1 < n { half } else { 0 }
            })
            .map(|f| if n > 1 { f } else { frames })
            .collect();
        let crossfade_starts = (1..n).map(|k| boundaries[k] - half).collect();
        Timeline {
            fps,
            frames,
            crossfade_frames: c,
            segment_frames,
            crossfade_starts,
            cues,
        }
    }

    pub fn seconds(&self) -> f64 {
        self.frames as f64 / self.fps as f64
    }
}

/// SubRip text: one cue per scene, its narration wrapped to two lines of about 42 characters.
pub fn srt(narrations: &[&str], cues: &[(f64, f64)]) -> String {
    let stamp = |t: f64| {
        let ms = (t * 1000.0).round() as u64;
        format!(
            "{:02}:{:02}:{:02},{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    };
    let mut out = String::new();
    for (i, (text, (start, end))) in narrations.iter().zip(cues).enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            stamp(*start),
            stamp(*end),
            wrap(text, 42)
        ));
    }
    out
}

/// Lines of at most about `width` characters, broken at spaces, balanced over as few lines as
/// needed.
fn wrap(text: &str, width: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let total: usize = words.iter().map(|w| w.chars().count() + 1).sum();
    let lines = total.div_ceil(width).max(1);
    let target = total.div_ceil(lines);
    let mut out = String::new();
    let mut len = 0;
    for w in words {
        let wl = w.chars().count();
        if len > 0 && len + wl > target {
            out.push('\n');
            len = 0;
        } else if len > 0 {
            out.push(' ');
            len += 1;
        }
        out.push_str(w);
        len += wl;
    }
    out
}

/// `BATON_FFMPEG` (which must be a file), else `ffmpeg` on the `PATH`, else None.
pub fn find_ffmpeg() -> Result<Option<PathBuf>, VideoError> {
    if let Some(p) = std::env::var_os("BATON_FFMPEG").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(VideoError::Option(format!(
                "BATON_FFMPEG='{}' is not a file; point it at the ffmpeg program, or unset it to use the one on the PATH",
                p.display()
            )));
        }
        return Ok(Some(p));
    }
    Ok(find_on_path("ffmpeg"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// How to get ffmpeg, for the message that says the video was skipped.
pub const INSTALL_FFMPEG: &str = "install ffmpeg (Debian/Ubuntu: `sudo apt-get install ffmpeg`; Fedora: `sudo dnf install ffmpeg`; macOS: `brew install ffmpeg`) or point BATON_FFMPEG at it";

/// What `4_video/video.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct VideoManifest {
    /// Relative to the run folder; None when the video was skipped.
    pub video: Option<String>,
    pub subtitles: Option<String>,
    /// Why there is no video, when there is none.
    pub skipped: Option<String>,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub seconds: f64,
    pub narration_seconds: f64,
    pub timeline: Option<Timeline>,
    pub encode_seconds: f64,
    pub ffmpeg: Option<String>,
}

/// What the stage says while it works.
pub enum VideoEvent<'a> {
    /// Encoding starts: the program and the frames to make.
    Encoding { ffmpeg: &'a Path, frames: u64 },
    /// Frames encoded so far.
    Frames { done: u64, total: u64 },
    /// ffmpeg is not there: the stage writes its record and nothing else.
    Skipped { why: String },
}

/// What the video stage is asked to do.
pub struct VideoRequest<'a> {
    pub input: &'a Path,
    pub run_dir: &'a Path,
    pub options: VideoOptions,
}

/// Makes the run's video from its storyboard, `2_audio/` and `3_images/`.
pub fn run_video(
    request: &VideoRequest,
    on: &mut dyn FnMut(VideoEvent),
) -> Result<VideoManifest, VideoError> {
    let o = &request.options;
    o.check()?;
    let board = Storyboard::load(request.input)?;
    let run = request.run_dir;
    let voice_path = run.join("2_audio/voice.json");
    let voice: VoiceRecord = std::fs::read(&voice_path)
        .map_err(|e| VideoError::MissingInput {
            path: voice_path.clone(),
            why: format!("{e}; run the voice stage first (`baton voice`)"),
        })
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| VideoError::BadVoice {
                path: voice_path.clone(),
                why: e.to_string(),
            })
        })?;
    let mut seconds = Vec::with_capacity(board.scenes.len());
    let mut pictures = Vec::with_capacity(board.scenes.len());
    for scene in &board.scenes {
        let clip = voice
            .clips
            .iter()
            .find(|c| c.scene == scene.index)
            .ok_or_else(|| VideoError::BadVoice {
                path: voice_path.clone(),
                why: format!(
                    "it has no clip for scene {}; the storyboard changed after narrating",
                    scene.index
                ),
            })?;
        seconds.push(clip.seconds);
        let picture = run.join(format!("3_images/scene_{:02}.png", scene.index));
        if !picture.is_file() {
            return Err(VideoError::MissingInput {
                path: picture,
                why: "run the images stage first (`baton images`)".into(),
            });
        }
        pictures.push(picture);
    }
    let narration = run.join(&voice.narration);
    if !narration.is_file() {
        return Err(VideoError::MissingInput {
            path: narration,
            why: "run the voice stage first (`baton voice`)".into(),
        });
    }
    let slug = baton_base::run_dir::slug(&board.topic).unwrap_or_else(|_| "video".into());
    let dir = run.join(VIDEO_DIR);
    baton_base::run_dir::ensure_writable(&dir).map_err(|source| VideoError::Unwritable {
        path: dir.clone(),
        source,
    })?;
    let (width, height) = o.aspect.size(o.resolution);
    let timeline = Timeline::new(&seconds, voice.gap_seconds, o.fps, o.crossfade);
    let narrations: Vec<&str> = board.scenes.iter().map(|s| s.narration.as_str()).collect();
    let subtitles = srt(&narrations, &timeline.cues);
    let mut manifest = VideoManifest {
        video: None,
        subtitles: Some(format!("{VIDEO_DIR}/{slug}.srt")),
        skipped: None,
        width,
        height,
        fps: o.fps,
        seconds: 0.0,
        narration_seconds: voice.narration_seconds,
        timeline: None,
        encode_seconds: 0.0,
        ffmpeg: None,
    };
    let Some(ffmpeg) = find_ffmpeg()? else {
        let why = format!("ffmpeg is not installed: {INSTALL_FFMPEG}");
        on(VideoEvent::Skipped { why: why.clone() });
        manifest.skipped = Some(why);
        write_atomic(&dir.join(format!("{slug}.srt")), subtitles.as_bytes())?;
        write_manifest(&dir, &manifest)?;
        return Ok(manifest);
    };
    manifest.ffmpeg = Some(ffmpeg_version(&ffmpeg));
    // Work files (the subtitles for burning in, the video being encoded) live in a private
    // folder, so a failure leaves nothing half-written under the run's names.
    let work = dir.join(format!(".work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|source| VideoError::Unwritable {
        path: work.clone(),
        source,
    })?;
    let result = (|| {
        let srt_path = work.join("subtitles.srt");
        std::fs::write(&srt_path, &subtitles).map_err(|source| VideoError::Unwritable {
            path: srt_path.clone(),
            source,
        })?;
        let out = work.join("video.mp4");
        let started = Instant::now();
        on(VideoEvent::Encoding {
            ffmpeg: &ffmpeg,
            frames: timeline.frames,
        });
        let args = ffmpeg_args(&pictures, &narration, &srt_path, &out, &timeline, o);
        encode(&ffmpeg, &args, timeline.frames, on)?;
        manifest.encode_seconds = started.elapsed().as_secs_f64();
        manifest.seconds = probe_seconds(&ffmpeg, &out).unwrap_or(timeline.seconds());
        if (manifest.seconds - voice.narration_seconds).abs() > 0.1 {
            return Err(VideoError::Duration {
                video: manifest.seconds,
                audio: voice.narration_seconds,
            });
        }
        let name = format!("{slug}.mp4");
        write_atomic(&dir.join(format!("{slug}.srt")), subtitles.as_bytes())?;
        std::fs::rename(&out, dir.join(&name)).map_err(|source| VideoError::Unwritable {
            path: dir.join(&name),
            source,
        })?;
        manifest.video = Some(format!("{VIDEO_DIR}/{name}"));
        manifest.timeline = Some(timeline.clone());
        write_manifest(&dir, &manifest)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| manifest)
}

fn write_manifest(dir: &Path, manifest: &VideoManifest) -> Result<(), VideoError> {
    let json = serde_json::to_vec_pretty(manifest).expect("the manifest serializes");
    write_atomic(&dir.join("video.json"), &json)?;
    Ok(())
}

/// The first line of `ffmpeg -version`.
fn ffmpeg_version(ffmpeg: &Path) -> String {
    Command::new(ffmpeg)
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(String::from)
        })
        .unwrap_or_else(|| ffmpeg.display().to_string())
}

/// The container's duration by `ffprobe` beside `ffmpeg` (or on the PATH).
pub fn probe_seconds(ffmpeg: &Path, file: &Path) -> Option<f64> {
    let beside = ffmpeg.with_file_name("ffprobe");
    let ffprobe = if beside.is_file() {
        beside
    } else {
        find_on_path("ffprobe")?
    };
    let out = Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The motion of scene `i`: zoom in, pan across, zoom out, in turn, so neighbours differ.
fn motion(i: usize, frames: u64) -> String {
    let f = frames.max(1);
    let (z, x, y) = match i % 3 {
        0 => (
            format!("1+0.12*on/{f}"),
            "iw/2-iw/zoom/2".to_string(),
            "ih/2-ih/zoom/2".to_string(),
        ),
        1 => (
            "1.12".to_string(),
            format!("(iw-iw/zoom)*on/{f}"),
            "ih/2-ih/zoom/2".to_string(),
        ),
        _ => (
            format!("1.12-0.12*on/{f}"),
            "iw/2-iw/zoom/2".to_string(),
            "ih/2-ih/zoom/2".to_string(),
        ),
    };
    format!("zoompan=z='{z}':x='{x}':y='{y}'")
}

/// ffmpeg's arguments: one still input per scene, each fitted into the frame over a blurred
/// copy of itself (nothing of a picture or a card's text is cut off), moved, crossfaded into
/// the next; the narration as the sound track; the subtitles as a track (and burned in when
/// asked).
fn ffmpeg_args(
    pictures: &[PathBuf],
    narration: &Path,
    subtitles: &Path,
    out: &Path,
    timeline: &Timeline,
    o: &VideoOptions,
) -> Vec<std::ffi::OsString> {
    let (w, h) = o.aspect.size(o.resolution);
    // The motion is sampled from a frame half as large again, so its whole-pixel steps are
    // finer than the output's.
    let (w2, h2) = ((w * 3 / 2) & !1, (h * 3 / 2) & !1);
    let fps = o.fps;
    let mut args: Vec<std::ffi::OsString> = ["-hide_banner", "-nostdin", "-y"]
        .iter()
        .map(Into::into)
        .collect();
    for p in pictures {
        args.extend(["-i".into(), p.as_os_str().to_owned()]);
    }
    args.extend(["-i".into(), narration.as_os_str().to_owned()]);
    args.extend(["-i".into(), subtitles.as_os_str().to_owned()]);
    let n = pictures.len();
    let mut graph = String::new();
    for (i, frames) in timeline.segment_frames.iter().enumerate() {
        graph.push_str(&format!(
            "[{i}:v]split[a{i}][b{i}];\
             [a{i}]scale={w2}:{h2}:force_original_aspect_ratio=increase,crop={w2}:{h2},boxblur=24:2,eq=brightness=-0.12[bg{i}];\
             [b{i}]scale={w2}:{h2}:force_original_aspect_ratio=decrease[fg{i}];\
             [bg{i}][fg{i}]overlay=(W-w)/2:(H-h)/2,{motion}:d={frames}:s={w}x{h}:fps={fps},setsar=1,format=yuv420p[v{i}];",
            motion = motion(i, *frames),
        ));
    }
    let mut last = "v0".to_string();
    let c = timeline.crossfade_frames;
    for k in 1..n {
        let next = format!("x{k}");
        if c > 0 {
            graph.push_str(&format!(
                "[{last}][v{k}]xfade=transition=fade:duration={}:offset={}[{next}];",
                c as f64 / fps as f64,
                timeline.crossfade_starts[k - 1] as f64 / fps as f64
            ));
        } else {
            graph.push_str(&format!("[{last}][v{k}]concat=n=2:v=1:a=0[{next}];"));
        }
        last = next;
    }
    if o.burn_subtitles {
        let size = (h as f64 / 1080.0 * 16.0).round().max(8.0);
        graph.push_str(&format!(
            "[{last}]subtitles={}:force_style='FontSize={size},Outline=2,MarginV=40'[vout]",
            escape_filter_path(subtitles)
        ));
    } else {
        graph.push_str(&format!("[{last}]null[vout]"));
    }
    args.extend(["-filter_complex".into(), graph.into()]);
    for a in [
        "-map".to_string(),
        "[vout]".into(),
        "-map".into(),
        format!("{n}:a"),
        "-map".into(),
        format!("{}:s", n + 1),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        o.preset.clone(),
        "-crf".into(),
        o.crf.to_string(),
        "-pix_fmt".into(),
        "yuv420p".into(),
        "-r".into(),
        fps.to_string(),
        "-c:a".into(),
        "aac".into(),
        "-b:a".into(),
        "160k".into(),
        "-c:s".into(),
        "mov_text".into(),
        "-metadata:s:s:0".into(),
        "language=eng".into(),
        "-movflags".into(),
        "+faststart".into(),
        "-progress".into(),
        "pipe:1".into(),
        "-nostats".into(),
        "-loglevel".into(),
        "error".into(),
    ] {
        args.push(a.into());
    }
    args.push(out.as_os_str().to_owned());
    args
}

/// A path as a filter argument: `\`, `'`, `:` and `,` escaped.
fn escape_filter_path(p: &Path) -> String {
    let mut s = String::new();
    for c in p.display().to_string().chars() {
        if matches!(c, '\\' | '\'' | ':' | ',' | '[' | ']' | ';') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Runs ffmpeg, turning its `-progress` lines into frame counts; its errors are kept for the
/// message.
fn encode(
    ffmpeg: &Path,
    args: &[std::ffi::OsString],
    total: u64,
    on: &mut dyn FnMut(VideoEvent),
) -> Result<(), VideoError> {
    let mut child = Command::new(ffmpeg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VideoError::Spawn {
            program: ffmpeg.to_path_buf(),
            source,
        })?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let stdout = child.stdout.take().expect("piped");
    let mut shown = 0;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(done) = line
            .strip_prefix("frame=")
            .and_then(|v| v.trim().parse::<u64>().ok())
            && done > shown
        {
            shown = done;
            on(VideoEvent::Frames { done, total });
        }
    }
    let status = child.wait().map_err(|source| VideoError::Spawn {
        program: ffmpeg.to_path_buf(),
        source,
    })?;
    let log = errors.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        return Err(VideoError::Ffmpeg {
            status: status.to_string(),
            log: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_lasts_exactly_as_long_as_the_sound() {
        let clips = [3.21, 4.02, 2.5, 5.777];
        let gap = 0.4;
        let t = Timeline::new(&clips, gap, 30, 0.5);
        let audio: f64 = clips.iter().sum::<f64>() + gap * 3.0;
        assert!((t.seconds() - audio).abs() <= 0.5 / 30.0, "{t:?}");
        // Segments minus the overlaps are the whole video.
        let sum: u64 = t.segment_frames.iter().sum();
        assert_eq!(sum - 3 * t.crossfade_frames, t.frames);
        assert_eq!(t.crossfade_frames, 16);
        // Each crossfade is centred in the silence between two clips.
        for (k, start) in t.crossfade_starts.iter().enumerate() {
            let middle = (*start + t.crossfade_frames / 2) as f64 / 30.0;
            let silence = (t.cues[k].1 + t.cues[k + 1].0) / 2.0;
            assert!(
                (middle - silence).abs() < 1.0 / 30.0,
                "{middle} vs {silence}"
            );
        }
        // Crossfade k starts where the video made so far, less the overlap, ends.
        let mut made = t.segment_frames[0];
        for (k, start) in t.crossfade_starts.iter().enumerate() {
            assert_eq!(*start, made - t.crossfade_frames);
            made = made + t.segment_frames[k + 1] - t.crossfade_frames;
        }
        assert_eq!(t.cues[1], (3.21 + 0.4, 3.21 + 0.4 + 4.02));
    }

    #[test]
    fn short_clips_get_short_crossfades_and_one_scene_none() {
        let t = Timeline::new(&[0.3, 0.3], 0.0, 30, 1.0);
        assert!(t.crossfade_frames <= 2, "{t:?}");
        let one = Timeline::new(&[2.0], 0.4, 25, 0.5);
        assert_eq!(one.crossfade_frames, 0);
        assert_eq!(one.segment_frames, vec![50]);
        assert_eq!(one.frames, 50);
    }

    #[test]
    fn subtitles_are_one_cue_per_scene() {
        let s = srt(
            &[
                "Neon rain falls over the quiet streets of Shinjuku tonight.",
                "Hi.",
            ],
            &[(0.0, 3.5), (3.9, 3723.0456)],
        );
        assert_eq!(
            s,
            "1\n00:00:00,000 --> 00:00:03,500\nNeon rain falls over the quiet\nstreets of Shinjuku tonight.\n\n\
             2\n00:00:03,900 --> 01:02:03,046\nHi.\n\n"
        );
    }

    #[test]
    fn bad_options_name_the_value() {
        let o = VideoOptions {
            preset: "quick".into(),
            ..VideoOptions::default()
        };
        assert!(o.check().unwrap_err().to_string().contains("'quick'"));
        assert!(
            Aspect::parse("4:3")
                .unwrap_err()
                .to_string()
                .contains("4:3")
        );
        assert_eq!(Aspect::Tall.size(1080), (1080, 1920));
        assert_eq!(Aspect::Wide.size(720), (1280, 720));
    }
}
