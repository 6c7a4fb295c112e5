//! baton's content pipeline, the seed's storyboard → narration → pictures, as a client of the
//! generic runner: the stages it is made of, the pipeline file `baton run` uses when given none,
//! and the [`ContentCatalog`] that tells the runner what `builtin = "scenes"` runs.
//!
//! A key design decision: the stages run in `baton-stages`, a program of their own that links
//! the tensor libraries (and, in a `cuda` build, CUDA); the supervisor `baton` links neither,
//! so it starts in milliseconds and runs where only the NVIDIA driver is installed. What only
//! the stage program can tell (is a Parler-TTS model on this machine? which files will the
//! images stage load?) this crate asks it, as a child process, through `baton-stages catalog`.

pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use baton_runner::pipeline::DeviceKind;
use baton_runner::{Builtin, Pipeline, StageCatalog};

/// A stage of the built-in content pipeline, in the order a run executes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// An LLM writes the storyboard: `1_scripts/{slug}_scenes.json`.
    Scenes,
    /// A voice model narrates each scene: `2_audio/scene_NN.wav`.
    Voice,
    /// A diffusion model draws each scene: `3_images/scene_NN.png`.
    Images,
    /// ffmpeg makes the video: `4_video/{slug}.mp4` and `{slug}.srt`.
    Video,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Scenes, Stage::Voice, Stage::Images, Stage::Video];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Scenes => "scenes",
            Stage::Voice => "voice",
            Stage::Images => "images",
            Stage::Video => "video",
        }
    }

    /// The stage called `name`, if there is one.
    pub fn named(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The folder of the run that holds this stage's files.
    pub fn output_folder(self) -> &'static str {
        match self {
            Stage::Scenes => "1_scripts",
            Stage::Voice => "2_audio",
            Stage::Images => "3_images",
            Stage::Video => "4_video",
        }
    }

    /// The stage's arguments after the program: how the runner (and the monolithic mode)
    /// start it, placeholders not yet filled in.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Stage::Scenes => &["scenes", "--topic", "{topic}", "--run-dir", "{run_dir}"],
            Stage::Voice => &[
                "voice",
                "--input",
                "{run_dir}/1_scripts/{slug}_scenes.json",
                "--run-dir",
                "{run_dir}",
            ],
            Stage::Images => &[
                "images",
                "--input",
                "{run_dir}/1_scripts/{slug}_scenes.json",
                "--run-dir",
                "{run_dir}",
                "--cards-if-no-model",
            ],
            Stage::Video => &[
                "video",
                "--input",
                "{run_dir}/1_scripts/{slug}_scenes.json",
                "--run-dir",
                "{run_dir}",
            ],
        }
    }
}

/// The program that runs the content stages: `BATON_STAGES` when set, else `baton-stages`
/// beside the running executable, else `baton-stages` on the `PATH`.
pub fn stages_program() -> PathBuf {
    if let Some(path) = std::env::var_os("BATON_STAGES").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(STAGES_PROGRAM)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(STAGES_PROGRAM))
}

/// The Parler-TTS model the voice stage runs unless `BATON_VOICE_MODEL` says otherwise (the
/// stage program checks that its voice library agrees).
pub const DEFAULT_VOICE_MODEL: &str = "parler-tts-mini-v1";

/// The Piper voice the voice stage speaks with unless `BATON_VOICE_PIPER` says otherwise (the
/// stage program checks that its voice library agrees).
pub const DEFAULT_PIPER_VOICE: &str = "piper-joe";

/// The stage program's file name.
pub const STAGES_PROGRAM: &str = "baton-stages";

/// The content pipeline's file: what `baton run` runs without `--pipeline`. `{voice}` is
/// replaced by the voice stage's engine settings ([`pipeline`]).
const CONTENT_PIPELINE: &str = r#"name = "content"

[[stage]]
name = "scenes"
builtin = "scenes"
outputs = ["1_scripts/{slug}_scenes.json"]
memory = "learn"
memory_initial = "1GiB"
# On a machine without a GPU the LLM keeps every core busy: two at once would halve each.
threads = "all"

[[stage]]
name = "voice"
builtin = "voice"
after = ["scenes"]
inputs = ["1_scripts/{slug}_scenes.json"]
# Every file in 2_audio/ is the stage's: each scene's clip, the narration and voice.json.
outputs = ["2_audio/"]
{voice}

[[stage]]
name = "images"
builtin = "images"
after = ["scenes"]
inputs = ["1_scripts/{slug}_scenes.json"]
# Every file in 3_images/ is the stage's: each scene's picture and images.json.
outputs = ["3_images/"]
{images_memory}
threads = "all"

[[stage]]
name = "video"
builtin = "video"
after = ["voice", "images"]
inputs = ["1_scripts/{slug}_scenes.json", "2_audio/", "3_images/"]
# The mp4, its subtitles and video.json. ffmpeg encodes on the CPU.
outputs = ["4_video/"]
device = "cpu"
memory = "learn"
memory_initial = "1GiB"
threads = "all"
"#;

const SD_IMAGES_MEMORY: &str = r#"# SD-Turbo in f16, phased: its largest phase (the UNet) is about 2.5 GiB.
memory = "learn"
memory_initial = "6GiB""#;

const FLUX_IMAGES_MEMORY: &str = r#"# FLUX.1 in bf16: resident, its transformer phase peaks near 26 GiB at 1024x1024. The stage
# streams the transformer's blocks to fit the budget it is granted, so it is placed with what
# a card can hold, down to 12 GiB (T5-XXL's phase, about 9.4 GiB, does not stream).
memory = "learn"
memory_initial = "26GiB"
memory_min = "12GiB""#;

const ESPEAK_VOICE: &str = r#"# The embedded engine (eSpeak NG) runs on the CPU.
device = "cpu"
memory = "learn"
memory_initial = "256MiB"
env = { BATON_VOICE_ENGINE = "espeak" }"#;

const PIPER_VOICE: &str = r#"# The offline neural engine (Piper, through ONNX Runtime) runs on the CPU; `auto` lets the
# stage fall back to eSpeak NG, loudly, when the voice cannot be fetched.
device = "cpu"
memory = "learn"
memory_initial = "768MiB"
env = { BATON_VOICE_ENGINE = "{engine}" }"#;

const PARLER_VOICE: &str = r#"# The neural engine (Parler-TTS mini, bf16) runs on the GPU.
memory = "learn"
memory_initial = "4GiB"
env = { BATON_VOICE_ENGINE = "parler" }"#;

/// The voice engines the pipeline knows how to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceEngine {
    /// eSpeak NG, embedded: on the CPU.
    Espeak,
    /// Piper, neural, fetched on first use: on the CPU.
    Piper,
    /// Parler-TTS, neural: on the GPU.
    Parler,
}

impl VoiceEngine {
    /// The engine `BATON_VOICE_ENGINE` names, if it names one (`auto` and unset name none).
    pub fn from_env() -> Option<VoiceEngine> {
        match std::env::var("BATON_VOICE_ENGINE").ok()?.as_str() {
            "parler" => Some(VoiceEngine::Parler),
            "piper" => Some(VoiceEngine::Piper),
            "espeak" => Some(VoiceEngine::Espeak),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VoiceEngine::Espeak => "espeak",
            VoiceEngine::Piper => "piper",
            VoiceEngine::Parler => "parler",
        }
    }
}

/// The built-in content pipeline with the voice stage set up for `engine`: Parler-TTS runs on
/// the GPU, so its stage is placed there like the others; Piper and eSpeak NG run on the CPU.
pub fn pipeline(engine: VoiceEngine, catalog: &ContentCatalog) -> Pipeline {
    // Piper asked for by name must speak or fail; Piper chosen here may fall back.
    let piper = if VoiceEngine::from_env() == Some(VoiceEngine::Piper) {
        PIPER_VOICE.replace("{engine}", "piper")
    } else {
        PIPER_VOICE.replace("{engine}", "auto")
    };
    let voice = match engine {
        VoiceEngine::Espeak => ESPEAK_VOICE,
        VoiceEngine::Piper => &piper,
        VoiceEngine::Parler => PARLER_VOICE,
    };
    // FLUX (a family of that name, or a folder said to be one) adapts to its budget.
    let images_family = ["BATON_IMAGES_FAMILY", "BATON_IMAGES_MODEL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let images_memory = match images_family {
        Some(f) if f.starts_with("flux") || f.starts_with("tiny-flux") => FLUX_IMAGES_MEMORY,
        _ => SD_IMAGES_MEMORY,
    };
    Pipeline::parse(
        &CONTENT_PIPELINE
            .replace("{voice}", voice)
            .replace("{images_memory}", images_memory),
        "(built-in content pipeline)",
        catalog,
    )
    .expect("the built-in pipeline is valid")
}

/// The catalog of the content stages, for the runner.
#[derive(Debug, Clone)]
pub struct ContentCatalog {
    program: PathBuf,
}

impl Default for ContentCatalog {
    fn default() -> Self {
        ContentCatalog::new(stages_program())
    }
}

impl ContentCatalog {
    /// The catalog whose stages run `program` (a `baton-stages`).
    pub fn new(program: PathBuf) -> ContentCatalog {
        ContentCatalog { program }
    }

    /// The voice engine the content pipeline places: `BATON_VOICE_ENGINE` when it names one,
    /// else Parler-TTS when its weights are on this machine (as `baton voice` would choose),
    /// else Piper (which falls back to eSpeak NG, loudly, when it cannot be fetched).
    pub fn voice_engine(&self) -> VoiceEngine {
        if let Some(engine) = VoiceEngine::from_env() {
            return engine;
        }
        match self.ask(&["catalog", "voice-engine"], &BTreeMap::new()) {
            Some(lines) if lines.first().map(String::as_str) == Some("parler") => {
                VoiceEngine::Parler
            }
            _ => VoiceEngine::Piper,
        }
    }

    /// The content pipeline as this machine would run it now.
    pub fn pipeline(&self) -> Pipeline {
        pipeline(self.voice_engine(), self)
    }

    /// Runs the stage program with `args` and the stage's `env`, and returns its output lines;
    /// `None` (said in the log) when it cannot run or fails: the question only ever costs a
    /// head start or picks the fallback, so it never stops a run.
    fn ask(&self, args: &[&str], env: &BTreeMap<String, String>) -> Option<Vec<String>> {
        let output = Command::new(&self.program)
            .args(args)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        match output {
            Ok(o) if o.status.success() => Some(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            Ok(o) => {
                tracing::debug!(
                    "{} {}: {}",
                    self.program.display(),
                    args.join(" "),
                    o.status
                );
                None
            }
            Err(e) => {
                tracing::debug!("cannot run {}: {e}", self.program.display());
                None
            }
        }
    }
}

impl StageCatalog for ContentCatalog {
    fn builtin(&self, name: &str) -> Option<Builtin> {
        let stage = Stage::named(name)?;
        Some(Builtin {
            name: stage.name().to_string(),
            argv: std::iter::once(self.program.display().to_string())
                .chain(stage.args().iter().map(|a| a.to_string()))
                .collect(),
            device: DeviceKind::Gpu,
        })
    }

    fn names(&self) -> Vec<String> {
        Stage::ALL.iter().map(|s| s.name().to_string()).collect()
    }

    fn weights(&self, name: &str, env: &BTreeMap<String, String>) -> Vec<PathBuf> {
        self.ask(&["catalog", "weights", name], env)
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect()
    }

    fn model(&self, name: &str, env: &BTreeMap<String, String>) -> Option<String> {
        // The stage's `[env]` over baton's own, as the stage will see them.
        let setting = |key: &str| {
            env.get(key)
                .cloned()
                .or_else(|| std::env::var(key).ok())
                .filter(|v| !v.is_empty())
        };
        // A path names its model by its last part: `/models/flux1-dev` → `flux1-dev`.
        let short = |spec: String| {
            std::path::Path::new(&spec)
                .file_name()
                .map_or(spec.clone(), |n| n.to_string_lossy().into_owned())
        };
        Some(match Stage::named(name)? {
            Stage::Scenes => {
                short(setting("BATON_SCENES_MODEL").unwrap_or_else(|| "smollm2".into()))
            }
            Stage::Images => {
                short(setting("BATON_IMAGES_MODEL").unwrap_or_else(|| "sd-turbo".into()))
            }
            Stage::Video => "ffmpeg".into(),
            Stage::Voice => match setting("BATON_VOICE_ENGINE").as_deref() {
                Some("espeak") => "espeak".into(),
                Some("parler") => short(
                    setting("BATON_VOICE_MODEL").unwrap_or_else(|| DEFAULT_VOICE_MODEL.into()),
                ),
                // Piper, asked for or as `auto` picks it in the content pipeline.
                _ => short(
                    setting("BATON_VOICE_PIPER").unwrap_or_else(|| DEFAULT_PIPER_VOICE.into()),
                ),
            },
        })
    }

    fn report_html(&self, run_dir: &Path) -> Option<String> {
        report::report_html(run_dir)
    }

    fn inherited_prefixes(&self) -> &[&str] {
        // The stages' settings: a user who sets BATON_SCENES_MODEL for `baton run` means it
        // for the scenes stage.
        &[
            "BATON_SCENES",
            "BATON_IMAGES_",
            "BATON_VOICE_",
            "BATON_VIDEO_",
            "BATON_FFMPEG",
            // `baton run --seed`: the storyboard's and the pictures'.
            "BATON_SEED",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> ContentCatalog {
        ContentCatalog::new("/opt/baton/baton-stages".into())
    }

    #[test]
    fn stages_run_in_folder_order() {
        let folders: Vec<_> = Stage::ALL.iter().map(|s| s.output_folder()).collect();
        let mut sorted = folders.clone();
        sorted.sort();
        assert_eq!(folders, sorted);
        assert_eq!(
            Stage::ALL.map(Stage::name),
            ["scenes", "voice", "images", "video"]
        );
    }

    #[test]
    fn the_content_pipeline_is_valid() {
        let p = pipeline(VoiceEngine::Espeak, &catalog());
        assert_eq!(
            p.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["scenes", "voice", "images", "video"]
        );
        // Every builtin runs the stage program, which reads the storyboard scenes wrote.
        assert_eq!(p.stages[0].command.argv()[0], "/opt/baton/baton-stages");
        assert_eq!(
            p.stages[1].command.argv()[1..3],
            ["voice", "--input"].map(String::from)
        );
        assert_eq!(p.stages[2].inputs, p.stages[0].outputs);
        // The video waits for the narration and the pictures, and reads both folders.
        assert_eq!(p.stages[3].after, ["voice", "images"]);
        assert_eq!(p.stages[3].device, DeviceKind::Cpu);
    }

    #[test]
    fn the_voice_stage_goes_where_its_engine_runs() {
        let voice = |p: Pipeline| p.stages.into_iter().find(|s| s.name == "voice").unwrap();
        let espeak = voice(pipeline(VoiceEngine::Espeak, &catalog()));
        assert_eq!(espeak.device, DeviceKind::Cpu);
        assert_eq!(
            espeak.env.get("BATON_VOICE_ENGINE").map(String::as_str),
            Some("espeak")
        );
        let parler = voice(pipeline(VoiceEngine::Parler, &catalog()));
        assert_eq!(parler.device, DeviceKind::Gpu);
        assert_eq!(
            parler.env.get("BATON_VOICE_ENGINE").map(String::as_str),
            Some("parler")
        );
    }

    #[test]
    fn each_model_has_its_own_learned_need() {
        let c = catalog();
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let flux = c.model("images", &env(&[("BATON_IMAGES_MODEL", "flux-schnell")]));
        let sd = c.model(
            "images",
            &env(&[("BATON_IMAGES_MODEL", "/models/sd-turbo")]),
        );
        assert_eq!(flux.as_deref(), Some("flux-schnell"));
        assert_eq!(sd.as_deref(), Some("sd-turbo"));
        assert_eq!(
            c.model("voice", &env(&[("BATON_VOICE_ENGINE", "espeak")]))
                .as_deref(),
            Some("espeak")
        );
        assert_eq!(
            c.model(
                "scenes",
                &env(&[("BATON_SCENES_MODEL", "/m/qwen2.5-3b.gguf")])
            )
            .as_deref(),
            Some("qwen2.5-3b.gguf")
        );
        assert_eq!(c.model("paint", &env(&[])), None);
    }

    #[test]
    fn a_stage_program_that_cannot_answer_costs_only_the_fallback() {
        let missing = ContentCatalog::new("/nonexistent/baton-stages".into());
        assert!(missing.weights("images", &BTreeMap::new()).is_empty());
        assert_eq!(
            missing.ask(&["catalog", "voice-engine"], &BTreeMap::new()),
            None
        );
    }

    #[test]
    fn answers_are_read_one_per_line_with_the_stage_environment() {
        // A stand-in stage program that needs no file of its own: `printenv A B C` prints the
        // values of the variables named by its arguments, one per line, so the stage
        // environment decides the answer.
        let catalog = ContentCatalog::new("printenv".into());
        let env = BTreeMap::from([
            ("catalog".to_string(), "/models/a.safetensors".to_string()),
            ("weights".to_string(), "/models/b.safetensors".to_string()),
            ("images".to_string(), "/models/c.safetensors".to_string()),
        ]);
        assert_eq!(
            catalog.weights("images", &env),
            [
                "/models/a.safetensors",
                "/models/b.safetensors",
                "/models/c.safetensors"
            ]
            .map(PathBuf::from)
        );
        // A program that fails (printenv of an unset name exits 1) answers nothing.
        assert!(catalog.weights("images", &BTreeMap::new()).is_empty());
    }
}
