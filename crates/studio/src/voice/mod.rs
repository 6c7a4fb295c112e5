//! The voice stage: narration for every scene of a storyboard, as `2_audio/scene_NN.wav`, one
//! `narration.wav` of them all, and `voice.json` with every clip's real duration.
//!
//! The key design decision: every clip is synthesised, checked (not silent), loudness-matched
//! and resampled in memory first; files are written only once all of them exist, each whole
//! (temporary name, then rename). A failure part-way leaves the run folder as it was. The
//! engine is a trait, so the embedded eSpeak NG engine (a GPL-3.0 program of its own, run as a
//! child process) and a neural engine sit behind the same call.

pub mod parler;
pub mod piper;
pub mod stage;

use std::path::{Path, PathBuf};
use std::time::Instant;

use baton_base::atomic_file::write_atomic;
use serde::Serialize;

use crate::storyboard::{Storyboard, StoryboardError};
use crate::wav::{self, Audio, WavError};

/// Why the voice stage could not run; messages name the file or value and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoiceError {
    #[error(transparent)]
    Storyboard(#[from] StoryboardError),
    #[error("cannot write into '{}': {source}; pass a writable run folder with --run-dir", .path.display())]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the voice engine '{}' is not there; build it with `cargo build --release` (which builds baton and baton-espeak; `cargo run` alone builds only baton), or point BATON_ESPEAK at it", .0.display())]
    EngineMissing(PathBuf),
    #[error("the voice engine failed on scene {scene}: {why}")]
    Engine { scene: u32, why: String },
    #[error("the voice engine wrote a bad file for scene {scene}: {source}")]
    BadAudio { scene: u32, source: WavError },
    #[error(
        "scene {scene}'s narration came out silent; check the voice ('{voice}') speaks its language"
    )]
    Silent { scene: u32, voice: String },
    #[error("{0}")]
    Option(String),
    /// The neural voice's model asked for is not on this machine.
    #[error("{0}")]
    NoModel(String),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// A Piper voice or ONNX Runtime could not be had from the model store.
    #[error(transparent)]
    Store(#[from] crate::model_store::StoreError),
    #[error(transparent)]
    Compute(#[from] crate::compute::ComputeError),
    #[error(transparent)]
    Memory(#[from] baton_memory::MemoryError),
    #[error(transparent)]
    Write(#[from] baton_base::FileError),
    #[error(transparent)]
    Dump(#[from] crate::dump::DumpError),
}

impl baton_base::fault::Classify for VoiceError {
    /// The scenes file, the output folder, the options and a voice model asked for by name
    /// are the caller's input; an engine that is not there, or fails, and a download that
    /// cannot be made are the machine's state.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            VoiceError::Storyboard(_)
            | VoiceError::Unwritable { .. }
            | VoiceError::Option(_)
            | VoiceError::NoModel(_) => Fault::Input,
            VoiceError::Hub(e) => e.fault(),
            VoiceError::Store(e) => e.fault(),
            VoiceError::Compute(e) => e.fault(),
            VoiceError::Memory(e) => e.fault(),
            VoiceError::Write(e) => e.fault(),
            VoiceError::Dump(e) => e.fault(),
            VoiceError::EngineMissing(_)
            | VoiceError::Engine { .. }
            | VoiceError::BadAudio { .. }
            | VoiceError::Silent { .. } => Fault::Machine,
        }
    }
}

/// The English voices of the eSpeak NG data baton-espeak carries (`--voice`; a `+variant`
/// such as `en-us+f3` may follow).
pub const ENGLISH_VOICES: &[&str] = &[
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
    "en-shaw",
];

/// How the narration sounds.
#[derive(Debug, Clone)]
pub struct VoiceOptions {
    /// The engine's voice name, e.g. `en-us`, `en-gb`.
    pub voice: String,
    /// 1.0 is the engine's normal pace (175 words a minute); 0.5 to 2.5.
    pub speed: f32,
    /// Of the files written; the engine's own rate is resampled to it.
    pub sample_rate: u32,
    /// For a neural engine that takes the voice in words (Parler-TTS): how it should sound.
    pub description: Option<String>,
}

impl VoiceOptions {
    pub fn check(&self) -> Result<(), VoiceError> {
        if !(0.5..=2.5).contains(&self.speed) {
            return Err(VoiceError::Option(format!(
                "--speed {}: use 0.5 (slow) to 2.5 (fast); 1.0 is normal",
                self.speed
            )));
        }
        if !(8_000..=96_000).contains(&self.sample_rate) {
            return Err(VoiceError::Option(format!(
                "--sample-rate {}: use 8000 to 96000 Hz, e.g. 22050, 24000 or 48000",
                self.sample_rate
            )));
        }
        if let Some(d) = &self.description
            && (d.trim().is_empty() || d.len() > 600)
        {
            return Err(VoiceError::Option(format!(
                "--describe '{d}': describe the voice in a sentence or two (1 to 600 characters)"
            )));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '+';
        if self.voice.is_empty() || !self.voice.chars().all(ok) {
            return Err(VoiceError::Option(format!(
                "--voice '{}': use a voice name such as en-us or en-gb",
                self.voice
            )));
        }
        // baton-espeak carries English's dictionary only: another language would fail in the
        // middle of the first scene.
        let language = self.voice.split(['-', '+']).next().unwrap_or_default();
        if !language.eq_ignore_ascii_case("en") {
            return Err(VoiceError::Option(format!(
                "--voice '{}': baton's eSpeak NG speaks English only; use one of {}",
                self.voice,
                ENGLISH_VOICES.join(", ")
            )));
        }
        Ok(())
    }
}

/// A text-to-speech engine: one utterance in, mono audio out.
pub trait VoiceEngine {
    /// What to call it in logs and voice.json.
    fn name(&self) -> String;
    fn speak(&self, text: &str, options: &VoiceOptions) -> Result<Audio, String>;
}

/// eSpeak NG, through the `baton-espeak` program (GPL-3.0, so kept in its own binary).
#[derive(Debug, Clone)]
pub struct Espeak {
    pub program: PathBuf,
    /// Where it unpacks its voice data.
    pub data: PathBuf,
}

impl Espeak {
    /// `BATON_ESPEAK`, else `baton-espeak` beside the running executable.
    pub fn find() -> Result<Espeak, VoiceError> {
        let program = std::env::var_os("BATON_ESPEAK")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .map(|exe| exe.with_file_name("baton-espeak"))
            })
            .unwrap_or_else(|| PathBuf::from("baton-espeak"));
        if !program.is_file() {
            return Err(VoiceError::EngineMissing(program));
        }
        Ok(Espeak {
            program,
            data: baton_memory::cache_dir::baton_cache_dir("BATON_ESPEAK_DATA", "espeak-ng-data"),
        })
    }
}

impl Espeak {
    /// `text`'s phonemes in eSpeak NG's IPA, a sentence an item, as Piper's voices read them
    /// (`baton-espeak --ipa`).
    pub fn phonemes(&self, text: &str, voice: &str) -> Result<Vec<String>, String> {
        let stdout = self.run(&["--ipa", "--voice", voice], text)?;
        let sentences: Vec<String> = String::from_utf8_lossy(&stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if sentences.is_empty() {
            return Err(format!("no phonemes for '{text}'"));
        }
        Ok(sentences)
    }

    /// Runs `baton-espeak ARGS --data DIR` with `text` (years written out) on its standard
    /// input, and returns what it printed; its error output is the error.
    fn run(&self, args: &[&str], text: &str) -> Result<Vec<u8>, String> {
        use std::io::Write;
        let mut child = std::process::Command::new(&self.program)
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        // The text is short (a scene's narration): written whole before the output is read.
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(speakable_years(text).as_bytes())
            .map_err(|e| format!("cannot hand it the text: {e}"))?;
        let done = child.wait_with_output().map_err(|e| e.to_string())?;
        if !done.status.success() {
            return Err(String::from_utf8_lossy(&done.stderr).trim().to_string());
        }
        Ok(done.stdout)
    }
}

impl VoiceEngine for Espeak {
    fn name(&self) -> String {
        "espeak-ng (embedded)".into()
    }

    fn speak(&self, text: &str, options: &VoiceOptions) -> Result<Audio, String> {
        let dir = tempdir_in(&std::env::temp_dir()).map_err(|e| e.to_string())?;
        let out = dir.join("clip.wav");
        let rate = (175.0 * options.speed).round().clamp(80.0, 450.0) as u32;
        let result = (|| {
            let out_arg = out.display().to_string();
            let rate = rate.to_string();
            self.run(
                &[
                    "--out",
                    &out_arg,
                    "--voice",
                    &options.voice,
                    "--rate",
                    &rate,
                ],
                text,
            )?;
            wav::read(&out).map_err(|e| e.to_string())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// A private folder for one engine call.
fn tempdir_in(parent: &Path) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = parent.join(format!(
        "baton-voice-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One scene's clip as written.
#[derive(Debug, Clone, Serialize)]
pub struct Clip {
    pub scene: u32,
    /// Relative to the run folder.
    pub file: String,
    pub seconds: f64,
    pub samples: usize,
    /// Loudness of its speech (frames above the gate), after normalisation.
    pub speech_rms_dbfs: f64,
    pub peak_dbfs: f64,
}

/// What `voice.json` holds, and what the stage returns.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceManifest {
    pub engine: String,
    pub voice: String,
    pub speed: f32,
    pub sample_rate: u32,
    pub clips: Vec<Clip>,
    pub narration: String,
    pub narration_seconds: f64,
    /// Silence between scenes in narration.wav.
    pub gap_seconds: f64,
    pub synthesis_seconds: f64,
}

/// The loudness every clip's speech is brought to, and the ceiling for its peaks.
const TARGET_DBFS: f64 = -20.0;
const PEAK_CEILING: f32 = 0.89; // -1 dBFS
/// Frames quieter than this are pauses and do not count towards loudness.
const GATE_DBFS: f64 = -45.0;
const GAP_SECONDS: f64 = 0.4;

fn dbfs(x: f64) -> f64 {
    20.0 * x.max(1e-9).log10()
}

/// RMS of the 20 ms frames above the gate (the speech, not its pauses); `None` when no frame is.
pub fn speech_rms(audio: &Audio) -> Option<f64> {
    let frame = (audio.rate as usize / 50).max(1);
    let gate = 10f64.powf(GATE_DBFS / 20.0);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for chunk in audio.samples.chunks(frame) {
        let energy: f64 = chunk.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
        if (energy / chunk.len() as f64).sqrt() > gate {
            sum += energy;
            n += chunk.len();
        }
    }
    (n > 0).then(|| (sum / n as f64).sqrt())
}

/// Scales `audio` so its speech sits at the target loudness, then holds its peaks under
/// -1 dBFS with a look-ahead limiter, so a voice with sharp peaks (Piper's) is as loud as one
/// without: lowering the whole clip's gain for its highest peak left such clips 1-2 dB
/// quieter than their neighbours. Returns the speech RMS and peak after, in dBFS.
fn normalise(audio: &mut Audio, rms: f64) -> (f64, f64) {
    let gain = (10f64.powf(TARGET_DBFS / 20.0) / rms) as f32;
    for s in &mut audio.samples {
        *s *= gain;
    }
    limit(&mut audio.samples, audio.rate);
    let peak = audio.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    let after = speech_rms(audio).unwrap_or(rms * gain as f64);
    (dbfs(after), dbfs(peak as f64))
}

/// A look-ahead peak limiter: the gain each sample needs to stay under the ceiling, held as a
/// minimum over the next 2 ms, released over 50 ms, and smoothed over the look-ahead, so the
/// gain is already down when a peak arrives and changes without clicks.
fn limit(samples: &mut [f32], rate: u32) {
    let n = samples.len();
    if n == 0 {
        return;
    }
    let look = ((rate as f64 * 0.002) as usize).max(1);
    let needed: Vec<f32> = samples
        .iter()
        .map(|s| {
            let a = s.abs();
            if a > PEAK_CEILING {
                PEAK_CEILING / a
            } else {
                1.0
            }
        })
        .collect();
    if needed.iter().all(|&g| g >= 1.0) {
        return;
    }
    let release = 1.0 - (-1.0 / (0.05 * rate as f64)).exp() as f32;
    let mut envelope = vec![1.0f32; n];
    let mut level = 1.0f32;
    for i in 0..n {
        let ahead = needed[i..(i + look).min(n)]
            .iter()
            .fold(1.0f32, |m, &g| m.min(g));
        level = if ahead < level {
            ahead
        } else {
            level + (1.0 - level) * release
        };
        envelope[i] = level.min(ahead);
    }
    // A moving average over the look-ahead: it reaches the held minimum by the peak itself.
    let mut sum: f32 = 0.0;
    let mut smoothed = vec![1.0f32; n];
    for i in 0..n {
        sum += envelope[i];
        if i >= look {
            sum -= envelope[i - look];
        }
        let count = (i + 1).min(look) as f32;
        smoothed[i] = (sum / count).min(envelope[i].max(needed[i]));
    }
    for (s, g) in samples.iter_mut().zip(smoothed) {
        *s = (*s * g).clamp(-PEAK_CEILING, PEAK_CEILING);
    }
}

/// Band-limited resampling (windowed sinc, 16 zero crossings a side).
pub fn resample(audio: &Audio, rate: u32) -> Audio {
    if audio.rate == rate || audio.samples.is_empty() {
        return Audio {
            rate,
            samples: audio.samples.clone(),
        };
    }
    let ratio = rate as f64 / audio.rate as f64;
    let cutoff = ratio.min(1.0);
    const HALF: f64 = 16.0;
    let reach = (HALF / cutoff).ceil() as isize;
    let n_out = (audio.samples.len() as f64 * ratio).round() as usize;
    let src = &audio.samples;
    let samples = (0..n_out)
        .map(|i| {
            let t = i as f64 / ratio;
            let centre = t.floor() as isize;
            let mut acc = 0.0f64;
            for k in (centre - reach)..=(centre + reach) {
                if k < 0 || k as usize >= src.len() {
                    continue;
                }
                let x = (t - k as f64) * cutoff;
                if x.abs() >= HALF {
                    continue;
                }
                let sinc = if x == 0.0 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * x / HALF).cos();
                acc += src[k as usize] as f64 * sinc * window * cutoff;
            }
            acc as f32
        })
        .collect();
    Audio { rate, samples }
}

/// Narrates every scene of the storyboard at `input` into `run_dir/2_audio`.
/// `on_clip(done, total)` is called after each clip is synthesised.
pub fn write_voice(
    input: &Path,
    run_dir: &Path,
    engine: &dyn VoiceEngine,
    options: &VoiceOptions,
    on_clip: &mut dyn FnMut(usize, usize),
) -> Result<VoiceManifest, VoiceError> {
    options.check()?;
    let board = Storyboard::load(input)?;
    let audio_dir = run_dir.join("2_audio");
    // Find out now, before any work, whether the folder takes files.
    baton_base::run_dir::ensure_writable(&audio_dir).map_err(|source| VoiceError::Unwritable {
        path: audio_dir.clone(),
        source,
    })?;

    let started = Instant::now();
    let mut clips: Vec<(u32, Audio)> = Vec::with_capacity(board.scenes.len());
    for (i, scene) in board.scenes.iter().enumerate() {
        let audio = engine
            .speak(&scene.narration, options)
            .map_err(|why| VoiceError::Engine {
                scene: scene.index,
                why,
            })?;
        clips.push((scene.index, audio));
        on_clip(i + 1, board.scenes.len());
    }
    let synthesis_seconds = started.elapsed().as_secs_f64();

    let mut written = Vec::with_capacity(clips.len());
    let mut files = Vec::with_capacity(clips.len());
    for (scene, audio) in clips {
        let mut audio = resample(&audio, options.sample_rate);
        let rms = speech_rms(&audio).ok_or_else(|| VoiceError::Silent {
            scene,
            voice: options.voice.clone(),
        })?;
        let (speech_rms_dbfs, peak_dbfs) = normalise(&mut audio, rms);
        let name = format!("scene_{scene:02}.wav");
        written.push(Clip {
            scene,
            file: format!("2_audio/{name}"),
            seconds: audio.seconds(),
            samples: audio.samples.len(),
            speech_rms_dbfs,
            peak_dbfs,
        });
        files.push((audio_dir.join(name), audio));
    }
    let gap = vec![0f32; (GAP_SECONDS * options.sample_rate as f64) as usize];
    let mut all = Vec::new();
    for (i, (_, audio)) in files.iter().enumerate() {
        if i > 0 {
            all.extend_from_slice(&gap);
        }
        all.extend_from_slice(&audio.samples);
    }
    let narration = Audio {
        rate: options.sample_rate,
        samples: all,
    };
    let manifest = VoiceManifest {
        engine: engine.name(),
        voice: options.voice.clone(),
        speed: options.speed,
        sample_rate: options.sample_rate,
        clips: written,
        narration: "2_audio/narration.wav".into(),
        narration_seconds: narration.seconds(),
        gap_seconds: GAP_SECONDS,
        synthesis_seconds,
    };
    // Everything exists; now write, each file whole.
    for (path, audio) in &files {
        write_atomic(path, &wav::encode(audio))?;
    }
    write_atomic(&audio_dir.join("narration.wav"), &wav::encode(&narration))?;
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    write_atomic(&audio_dir.join("voice.json"), &json)?;
    Ok(manifest)
}

/// Years and decades as people read them aloud ("1969" → "nineteen sixty-nine", "1920s" →
/// "nineteen twenties"), for the eSpeak NG front end, which reads a four-digit number as a
/// quantity ("one thousand nine hundred and sixty-nine"). Only whole tokens of four digits
/// from 1100 to 1999 and 2010 to 2099 are years; other numbers are left to the engine.
pub fn speakable_years(text: &str) -> String {
    const ONES: [&str; 20] = [
        "oh",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    let two = |n: usize| -> String {
        match n {
            0..=19 => ONES[n].to_string(),
            _ if n.is_multiple_of(10) => TENS[n / 10].to_string(),
            _ => format!("{}-{}", TENS[n / 10], ONES[n % 10]),
        }
    };
    let plural = |word: String| -> String {
        match word.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{word}s"),
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = i == 0 || !chars[i - 1].is_alphanumeric();
        let digits = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(boundary_before && digits == 4) {
            // Copy a whole run of digits (or one other character) as it is.
            let step = digits.max(1);
            out.extend(&chars[i..i + step]);
            i += step;
            continue;
        }
        let year: usize = chars[i..i + 4]
            .iter()
            .collect::<String>()
            .parse()
            .expect("four digits");
        let rest = &chars[i + 4..];
        let decade = rest.first() == Some(&'s') && rest.get(1).is_none_or(|c| !c.is_alphanumeric());
        let after_ok = decade || rest.first().is_none_or(|c| !c.is_alphanumeric());
        let is_year = (1100..=1999).contains(&year) || (2010..=2099).contains(&year);
        if !(after_ok && is_year) {
            out.extend(&chars[i..i + 4]);
            i += 4;
            continue;
        }
        let (hi, lo) = (year / 100, year % 100);
        let words = match (lo, decade) {
            (0, false) => format!("{} hundred", two(hi)),
            (0, true) => format!("{} hundreds", two(hi)),
            (1..=9, false) => format!("{} oh {}", two(hi), ONES[lo]),
            (_, false) => format!("{} {}", two(hi), two(lo)),
            (_, true) => format!("{} {}", two(hi), plural(two(lo))),
        };
        out.push_str(&words);
        i += 4 + usize::from(decade);
    }
    out
}

#[cfg(test)]
mod loudness_tests {
    use super::*;

    #[test]
    fn sharp_peaks_are_limited_without_lowering_the_speech() {
        // A 200 Hz "voice" at -20 dBFS with a few sharp clicks far above it.
        let rate = 22050;
        let mut samples: Vec<f32> = (0..rate)
            .map(|i| 0.14 * (i as f32 * 200.0 * std::f32::consts::TAU / rate as f32).sin())
            .collect();
        for at in [3000, 9000, 15000] {
            samples[at] = 0.99;
        }
        let mut audio = Audio { rate, samples };
        let rms = speech_rms(&audio).unwrap();
        let (speech, peak) = normalise(&mut audio, rms);
        assert!(peak <= -0.99, "peak {peak} dBFS");
        assert!((speech - TARGET_DBFS).abs() < 0.3, "speech {speech} dBFS");
        // Before the first click (and its 2 ms look-ahead) the signal is untouched but for the
        // gain.
        let at = 2000;
        let g = audio.samples[at]
            / (0.14 * (at as f32 * 200.0 * std::f32::consts::TAU / rate as f32).sin());
        let want = (10f64.powf(TARGET_DBFS / 20.0) / rms) as f32;
        assert!((g - want).abs() < 1e-3, "gain {g}, wanted {want}");
    }
}

#[cfg(test)]
mod years_tests {
    use super::speakable_years;

    #[test]
    fn years_and_decades_are_read_as_people_read_them() {
        assert_eq!(
            speakable_years("In 1969, two men walked on the moon."),
            "In nineteen sixty-nine, two men walked on the moon."
        );
        assert_eq!(
            speakable_years("A jazz club in 1920s New York"),
            "A jazz club in nineteen twenties New York"
        );
        assert_eq!(
            speakable_years("1905 and 1800s and 2026."),
            "nineteen oh five and eighteen hundreds and twenty twenty-six."
        );
        // Not years: other lengths, quantities, codes.
        assert_eq!(
            speakable_years("12345 people, 2005, 3000 ships, 1969a, A1969, 19.69"),
            "12345 people, 2005, 3000 ships, 1969a, A1969, 19.69"
        );
    }
}

#[cfg(test)]
mod options_tests {
    use super::*;

    fn with_voice(voice: &str) -> Result<(), VoiceError> {
        VoiceOptions {
            voice: voice.into(),
            speed: 1.0,
            sample_rate: 22050,
            description: None,
        }
        .check()
    }

    /// English voices (and their variants) pass; another language is refused by name, with the
    /// voices that work, before any scene is spoken.
    #[test]
    fn only_english_voices_are_accepted_and_the_others_are_listed() {
        for ok in ["en-us", "en-gb-scotland", "en-us+f3", "EN-GB", "en"] {
            with_voice(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["fr", "de-de", "es+m1"] {
            let e = with_voice(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("--voice '{bad}'")), "{e}");
            assert!(
                e.contains("English only") && e.contains("en-gb-x-rp"),
                "{e}"
            );
        }
    }
}
