//! The command line, declared once with clap; every value a user types is checked here, so a
//! bad one is refused before any work starts.

use std::path::PathBuf;
use std::time::Duration;

use baton_base::parse_size;
use baton_memory::{DeviceChoice, DeviceKind};
use clap::{Args, Parser, Subcommand};

/// Run multi-model generative pipelines on GPUs that cannot hold every model at once.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More of baton's log on stderr (-v: debug, -vv: trace); passed to the stages as BATON_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr (no log lines); passed to the stages as BATON_LOG.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline for a topic, every stage in its own process (default: the content pipeline).
    Run(RunArgs),
    /// Write the storyboard for a topic with an LLM: scenes with a title, narration and image
    /// prompt each (1_scripts/<topic>_scenes.json).
    Scenes(ScenesArgs),
    /// Narrate every scene of a storyboard into WAV files (2_audio/), and the whole narration.
    Voice(VoiceArgs),
    /// Draw a picture for every scene with a diffusion model (Stable Diffusion, SDXL, FLUX.1),
    /// one of its models on the device at a time, within a memory budget (3_images/).
    Images(ImagesArgs),
    /// Make the run's video: every scene's picture for its narration's length, the narration as
    /// the sound track, one subtitle per scene (4_video/, through ffmpeg).
    Video(VideoArgs),
    /// Models baton knows, and fetching them into its store.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The stages' settings `baton run` would use, and where each comes from.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Prometheus metrics of every device: once on stdout, or served over HTTP with --serve
    /// (DCGM exporter's names for device memory and utilisation, plus baton's per-process and
    /// per-stage memory).
    Metrics(MetricsArgs),
    /// A shell completion script on stdout: `baton completions bash > /etc/bash_completion.d/baton`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout, or with --dir one page per command in DIR
    /// (baton.1, baton-run.1, ...): `baton man | man -l -`.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Finish a run that stopped: keep stages whose files verify, run the rest.
    Resume(ResumeArgs),
    /// Run many topics at once (one per line of FILE) across every device.
    Batch(BatchArgs),
    /// Show every device's memory and the processes holding it, like nvidia-smi's memory part.
    Stats(StatsArgs),
    /// Watch every device's memory live (q or Ctrl-C quits).
    Watch(WatchArgs),
    /// Simulated GPUs, for building scenarios on machines without one.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Demonstrations that prove memory handling on this machine.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Internal: what the stage program can tell the supervisor about this machine.
    #[command(subcommand, hide = true)]
    Catalog(CatalogCommand),
    /// Internal, on a Slurm node (`--executor slurm`): run one stage attempt as the local runner
    /// does, and write its record into the run folder.
    #[command(hide = true)]
    StageExec {
        /// The attempt's plan, written by the submitting baton (slurm/STAGE-N.plan.json).
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
    },
}

/// Where stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExecutorChoice {
    /// On this machine, placed on its devices by baton.
    #[default]
    Local,
    /// As Slurm jobs (`sbatch`), placed by Slurm; the run folder must be on a filesystem the
    /// nodes share, and baton at the same path there. See docs/slurm.md.
    Slurm,
}

impl Command {
    /// True for the commands the stage program `baton-stages` runs (they load models, or
    /// compute on a GPU); `baton` hands those over to it.
    pub fn runs_in_stage_program(&self) -> bool {
        match self {
            Command::Scenes(_)
            | Command::Voice(_)
            | Command::Images(_)
            | Command::Video(_)
            | Command::Models(_)
            | Command::Demo(_)
            | Command::Catalog(_) => true,
            Command::Run(args) => args.mode == RunMode::Monolithic,
            Command::Bench(bench) => !matches!(
                bench,
                BenchCommand::Snapshot { .. }
                    | BenchCommand::Runner { .. }
                    | BenchCommand::Startup { .. }
            ),
            Command::Resume(_)
            | Command::Batch(_)
            | Command::Config(_)
            | Command::Completions { .. }
            | Command::Metrics(_)
            | Command::StageExec { .. }
            | Command::Man { .. }
            | Command::Stats(_)
            | Command::Watch(_)
            | Command::Sim(_) => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// `parler` when the neural voice's weights are on this machine, else `espeak`.
    VoiceEngine,
    /// The weights files the built-in stage STAGE would load now, one per line (nothing is
    /// downloaded); its settings come from the environment, as the stage's would.
    Weights { stage: String },
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// The seed's switch demo: a mock LLM, cleanup, a mock image model, memory proved free in
    /// between; in one process, in two, or both side by side.
    Switch(SwitchArgs),
    /// Internal: one mock model in this process, for `demo switch --mode processes`.
    #[command(hide = true)]
    Mock {
        #[arg(long, value_enum)]
        #[arg(value_parser = parse_device)]
        target: DeviceChoice,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        label: String,
    },
}

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// Size of each mock model: 4GiB, 512MiB.
    #[arg(long, default_value = "4GiB", value_parser = parse_model_size)]
    pub size: u64,
    /// in-process, processes, or both side by side.
    #[arg(long, value_enum, default_value = "both")]
    pub mode: SwitchMode,
    /// Where the mocks live: gpu (needs a cuda build of baton-stages), cpu (host RAM), sim, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Slack allowed between a baseline and the memory back after a release.
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    pub tolerance: u64,
    /// Never free the first mock (in-process mode), to see the verdict fail.
    #[arg(long)]
    pub inject_leak: bool,
}

/// Which way(s) the switch demo switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SwitchMode {
    InProcess,
    Processes,
    Both,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What the storyboard is about.
    #[arg(long)]
    pub topic: String,
    /// processes: every stage its own process (crash isolation, memory returned by the OS);
    /// monolithic: every stage in this process, one after another, its memory proved back
    /// before the next starts (faster to start; a crash takes the whole run).
    #[arg(long, value_enum, default_value = "processes")]
    pub mode: RunMode,
    #[command(flatten)]
    pub common: PipelineArgs,
    #[command(
        flatten,
        next_help_heading = "The stages' settings (flag > environment > baton.toml)"
    )]
    pub knobs: crate::knobs::RunKnobs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunMode {
    Processes,
    Monolithic,
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// A pipeline file (TOML, see docs/runner.md); default: the built-in content pipeline.
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Where run folders are made.
    #[arg(long, default_value = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Where GPU stages go: gpu (NVIDIA GPUs, read through NVML), sim (simulated GPUs), cpu
    /// (host RAM only), or auto (the GPUs when a driver answers, else host RAM).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// What placement keeps back from each device's free memory: a size (1GiB) or a share of
    /// it (20% hands out 80%, baton's earlier rule).
    #[arg(long, env = "BATON_GPU_RESERVE", default_value = "1GiB",
          value_parser = |s: &str| s.parse::<baton_runner::Reserve>())]
    pub gpu_reserve: baton_runner::Reserve,
    /// Where stages run: local (this machine) or slurm (each stage a Slurm job; see
    /// docs/slurm.md).
    #[arg(long, value_enum, env = "BATON_EXECUTOR", default_value = "local")]
    pub executor: ExecutorChoice,
    /// Print the final summary as JSON on stdout (progress stays on stderr) instead of the
    /// table.
    #[arg(long)]
    pub json: bool,
}

/// The storyboard writer's sampling temperature. SmolLM2-135M at 0.7 (the default until
/// session 44) made words up and wrote looser sentences; at 0.4 its drafts of a scene came out
/// word for word the same, which left the drafts nothing to choose from (docs/scenes.md,
/// "A cooler default").
pub const SCENES_TEMPERATURE: f64 = 0.5;

#[derive(Debug, Args)]
pub struct ScenesArgs {
    /// What the storyboard is about.
    #[arg(long)]
    pub topic: String,
    /// How many scenes.
    #[arg(long, env = "BATON_SCENES", default_value_t = 6)]
    pub scenes: usize,
    /// A GGUF file, a name from `baton models list`, pip:PACKAGE/FILE or hf:OWNER/REPO/FILE, or
    /// `auto`: the largest known model that fits the GPU this stage was given (the default on
    /// the CPU).
    #[arg(long, env = "BATON_SCENES_MODEL", default_value = "smollm2")]
    pub model: String,
    /// A tokenizer.json to use instead of the one in the GGUF file.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The same seed, model and topic write the same storyboard.
    #[arg(long, env = "BATON_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Sampling temperature; 0 always takes the most likely token. Lower writes plainer,
    /// likelier words; higher, more varied ones (and, from a small model, more made-up ones).
    #[arg(long, env = "BATON_SCENES_TEMPERATURE", default_value_t = SCENES_TEMPERATURE)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this much probability.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Give up when the JSON is not finished after this many tokens.
    #[arg(long, env = "BATON_SCENES_MAX_TOKENS", default_value_t = 3000)]
    pub max_tokens: usize,
    /// Makes recently written words less likely (1.0: off); small models repeat themselves. It
    /// applies to word tokens only, never the JSON's structure.
    #[arg(long, env = "BATON_SCENES_REPEAT_PENALTY", default_value_t = 1.15)]
    pub repeat_penalty: f32,
    /// Drafts of the outline and of each scene; the least faulty (lines or openings that
    /// repeat, filler clauses), then the one the model finds most fluent, is kept.
    /// auto: 3 on a GPU, or on the CPU with a model file under 1 GiB (SmolLM2: about 30 s a
    /// draft on 2 cores); 1 with a larger model on the CPU, where a draft costs minutes.
    #[arg(long, env = "BATON_SCENES_DRAFTS", default_value = "auto", value_parser = parse_drafts)]
    pub drafts: Drafts,
    /// Words added to every scene's image prompt, for one look across the pictures (empty:
    /// none). No light: each scene's prompt names its own.
    #[arg(
        long,
        env = "BATON_SCENES_STYLE",
        default_value = "cinematic, detailed"
    )]
    pub style: String,
    /// Where the run folder is made.
    #[arg(long, default_value = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Write into this existing run folder instead (as a stage of a pipeline: {run_dir}).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Where the LLM runs: gpu (a cuda build of baton-stages), cpu, or auto (the GPU
    /// when there is one and this build has CUDA).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub compute: DeviceChoice,
}

#[derive(Debug, Args)]
pub struct VoiceArgs {
    /// The scenes file, e.g. output/…/1_scripts/cyberpunk_tokyo_scenes.json.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The run folder to write 2_audio/ into (default: the one the scenes file is in).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// The eSpeak NG voice: en-us, en-gb, en-gb-scotland, en-gb-x-rp, en-gb-x-gbclan,
    /// en-gb-x-gbcwmd, en-029, en-us-nyc or en-shaw (English only), a `+variant` such as
    /// `+f3` allowed.
    #[arg(long, env = "BATON_VOICE_NAME", default_value = "en-us")]
    pub voice: String,
    /// Pace: 1.0 is normal, 0.5 slow, 2.0 fast.
    #[arg(long, env = "BATON_VOICE_SPEED", default_value_t = 1.0)]
    pub speed: f32,
    /// Sample rate of the WAV files, in Hz.
    #[arg(long, default_value_t = 22050)]
    pub sample_rate: u32,
    /// The engine: piper (neural, CPU, fetched from the Python package index on first use),
    /// parler (Parler-TTS, neural: needs its weights), espeak (embedded, CPU, always there,
    /// robotic), or auto: parler when its weights are found, else piper, else espeak with a
    /// loud notice.
    #[arg(long, value_enum, env = "BATON_VOICE_ENGINE", default_value = "auto")]
    pub engine: VoiceEngineChoice,
    /// The Piper voice: piper-joe (the default, fetched on first use) or a FILE.onnx with its
    /// FILE.onnx.json beside it.
    #[arg(long, env = "BATON_VOICE_PIPER", default_value = baton_content::DEFAULT_PIPER_VOICE)]
    pub piper_voice: String,
    /// The Parler-TTS model: a folder (config.json, tokenizer.json, model.safetensors), or
    /// parler-tts-mini-v1 / parler-tts-large-v1 from the Hugging Face cache.
    #[arg(long, env = "BATON_VOICE_MODEL", default_value = baton_content::DEFAULT_VOICE_MODEL)]
    pub voice_model: String,
    /// How the neural voice should sound, in words, e.g. "A calm male voice, close up".
    #[arg(long, value_name = "TEXT")]
    pub describe: Option<String>,
    /// Download the Parler-TTS model from the hub when it is not in the cache.
    #[arg(long)]
    pub fetch: bool,
    /// The neural engine's sampling seed: the same seed says the same clip the same way.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the neural engine runs: gpu (a cuda build of baton-stages), cpu, or auto (the GPU
    /// when there is one and this build has CUDA).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub compute: DeviceChoice,
    /// For comparisons with parler-tts (with --engine parler): write each clip's token ids, T5
    /// output, decoder inputs, logits and codes into DIR as voice-N.safetensors. See
    /// docs/voice.md.
    #[arg(long, value_name = "DIR", help_heading = "Debugging")]
    pub dump: Option<PathBuf>,
    /// For comparisons (with --engine parler): always the most likely code, never a sample.
    #[arg(long, help_heading = "Debugging")]
    pub greedy: bool,
    /// For comparisons (with --engine parler): exactly N frames a clip (86 a second), the end
    /// never drawn.
    #[arg(long, value_name = "N", help_heading = "Debugging")]
    pub frames: Option<usize>,
    /// For comparisons (with --engine parler): compute in f32 on a GPU too, not bf16.
    #[arg(long, help_heading = "Debugging")]
    pub f32: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VoiceEngineChoice {
    Auto,
    Piper,
    Espeak,
    Parler,
}

#[derive(Debug, Args)]
pub struct VideoArgs {
    /// The scenes file, e.g. output/…/1_scripts/cyberpunk_tokyo_scenes.json; its run folder
    /// holds 2_audio/ (with voice.json) and 3_images/.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The run folder to write 4_video/ into (default: the one the scenes file is in).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// The frame's shape: 16:9 (landscape), 9:16 (portrait) or 1:1.
    #[arg(long, env = "BATON_VIDEO_ASPECT", default_value = "16:9")]
    pub aspect: String,
    /// The frame's short side in pixels: 1080 for 1080p, 720 for 720p.
    #[arg(long, env = "BATON_VIDEO_RESOLUTION", default_value_t = 1080)]
    pub resolution: u32,
    /// Frames per second.
    #[arg(long, env = "BATON_VIDEO_FPS", default_value_t = 30)]
    pub fps: u32,
    /// Seconds each crossfade between scenes lasts (0: cuts).
    #[arg(long, default_value_t = 0.5)]
    pub crossfade: f64,
    /// Draw the subtitles into the picture as well (they are always a track of the mp4 and an
    /// .srt beside it).
    #[arg(long, env = "BATON_VIDEO_BURN_SUBTITLES")]
    pub burn_subtitles: bool,
    /// x264's quality: lower is better and larger (18-28 is usual).
    #[arg(long, default_value_t = 20)]
    pub crf: u32,
    /// x264's speed: ultrafast … veryslow.
    #[arg(long, env = "BATON_VIDEO_PRESET", default_value = "veryfast")]
    pub preset: String,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// The scenes file, e.g. output/…/1_scripts/cyberpunk_tokyo_scenes.json.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The run folder to write 3_images/ into (default: the one the scenes file is in).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// A family name (sd-turbo, sdxl-turbo, flux-schnell, flux-dev, sd-2.1, sd-1.5: found in the
    /// Hugging Face cache) or a model folder (diffusers layout; FLUX.1's repository layout).
    #[arg(long, env = "BATON_IMAGES_MODEL", default_value = "sd-turbo")]
    pub model: String,
    /// The family of a --model folder.
    #[arg(long, env = "BATON_IMAGES_FAMILY")]
    pub family: Option<String>,
    /// FLUX: a transformer to draw with instead of the model's own: a GGUF known by name
    /// (flux-schnell-q8_0, ...; `baton models list`), or a file: a GGUF (Q8_0, Q6_K, Q4_K...,
    /// quantized, as the community publishes them) or a safetensors checkpoint.
    #[arg(long, env = "BATON_IMAGES_TRANSFORMER", value_name = "NAME|FILE")]
    pub transformer: Option<String>,
    /// Image width in pixels (default: the family's native size, e.g. 512 for SD-Turbo, 1024
    /// for FLUX.1); a multiple of the family's block size (64 for SD, 32 for SDXL, 16 for FLUX).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels; as --width.
    #[arg(long)]
    pub height: Option<usize>,
    /// Width and height at once, e.g. 1280x720; --width and --height win over it.
    #[arg(long, env = "BATON_IMAGES_SIZE", value_name = "WxH",
          value_parser = |s: &str| crate::knobs::parse_size(s))]
    pub size: Option<(usize, usize)>,
    /// Denoising steps (default: the family's).
    #[arg(long, env = "BATON_IMAGES_STEPS")]
    pub steps: Option<usize>,
    /// Classifier-free guidance (default: the family's; 0 or 1 turns it off).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Scene N uses seed + N: the same seed draws the same pictures.
    #[arg(long, env = "BATON_SEED", default_value_t = 42)]
    pub seed: u64,
    /// The device memory the stage may use, its CUDA context counted (default, as a stage of a
    /// run on a GPU: the budget the runner granted, BATON_MEMORY_BUDGET). FLUX's transformer
    /// streams its blocks from host memory when it does not fit; what does not fit even then is
    /// refused, with the plan, before anything loads.
    #[arg(long, value_parser = parse_size_arg)]
    pub max_vram: Option<u64>,
    /// How FLUX's transformer holds its weights: auto (resident if it fits --max-vram, else
    /// streamed a block at a time from pinned host memory), resident, or streamed.
    #[arg(long, env = "BATON_IMAGES_WEIGHTS", default_value = "auto",
          value_parser = ["auto", "resident", "streamed"])]
    pub weights: String,
    /// Where the model runs: gpu (a cuda build of baton-stages), cpu, or auto (the GPU
    /// when there is one and this build has CUDA).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub compute: DeviceChoice,
    /// Render storyboard cards (title and narration on a plain frame) instead of generated images.
    #[arg(long)]
    pub cards: bool,
    /// Render cards, and say so loudly, when no image model is available (what `baton run` does).
    #[arg(long)]
    pub cards_if_no_model: bool,
    /// Download a family's model from the Hugging Face hub into its cache when it is not there
    /// (HF_TOKEN for gated ones, such as FLUX.1 dev).
    #[arg(long)]
    pub fetch: bool,
    /// Debugging, for comparing with a reference implementation: start every scene from this
    /// noise instead of its seed's: a .safetensors or .npy file with one f32/f16 tensor
    /// (scenes or 1, channels, height/8, width/8), unscaled. See docs/images.md.
    #[arg(long, value_name = "FILE", help_heading = "Debugging")]
    pub latents: Option<PathBuf>,
    /// Debugging: write what every phase produced into DIR (text.safetensors with token ids and
    /// hidden states, denoise.safetensors with each step's input, prediction and latents,
    /// decode.safetensors with the pixels before the PNG). See docs/images.md.
    #[arg(long, value_name = "DIR", help_heading = "Debugging")]
    pub dump: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every setting, its value and where it came from (flag, environment, baton.toml, or the
    /// stage's default); takes the same flags as `baton run`.
    Show(crate::knobs::RunKnobs),
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The known models, and what the store holds.
    List {
        /// One JSON document instead of the table: every model, its kind, whether it is here.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a model into the store (or an image model into the Hugging Face cache) and check it.
    Fetch {
        /// A name from `baton models list` (an LLM, or an image family such as sd-turbo or
        /// flux-schnell), pip:PACKAGE/FILE or hf:OWNER/REPO/FILE.
        name: String,
    },
    /// Read a model (or any weights file) into the page cache, so that the stage that loads it
    /// next finds it in memory instead of on the disk.
    Warm {
        /// A name from `baton models list`, a file, or pip:PACKAGE/FILE.
        name: String,
    },
    /// Drop weights files from the page cache (no root needed), so that the next load reads
    /// the disk: for measuring cold loads.
    Evict {
        /// Files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run folder, e.g. output/20261127_101500_cyberpunk_tokyo.
    pub run_dir: PathBuf,
    /// Where GPU stages go (default: the backend the run started on).
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceChoice>,
    /// Run this stage again even though its files verify, and every stage after it that uses
    /// them (e.g. `--rerun images` after fetching an image model); repeatable. `--from` is the
    /// same.
    #[arg(long, visible_alias = "from", value_name = "STAGE")]
    pub rerun: Vec<String>,
    /// Where stages run: local, or slurm (jobs a stopped baton left queued or running are
    /// followed, not submitted again).
    #[arg(long, value_enum, env = "BATON_EXECUTOR", default_value = "local")]
    pub executor: ExecutorChoice,
    /// Print the final summary (and what was kept) as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// A text file with one topic per line; blank lines and lines starting with # are skipped.
    pub topics: PathBuf,
    #[command(flatten)]
    pub common: PipelineArgs,
    #[command(
        flatten,
        next_help_heading = "The stages' settings (flag > environment > baton.toml)"
    )]
    pub knobs: crate::knobs::RunKnobs,
}

#[derive(Debug, Clone, Args)]
pub struct DeviceArg {
    /// Which memory to read: gpu (NVIDIA GPUs, through NVML), cpu (host RAM), sim (simulated
    /// GPUs), or auto (the GPUs when a driver answers, else host RAM). nvml and host are the
    /// same as gpu and cpu.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Only these devices, by index (as nvidia-smi -i): `-i 0` or `-i 0,2`.
    #[arg(
        short = 'i',
        long = "id",
        value_name = "N[,N...]",
        value_delimiter = ','
    )]
    pub ids: Vec<usize>,
}

impl DeviceArg {
    /// The devices `-i` selects from a reading (all without it); an index the reading does
    /// not have is refused, naming those it has.
    pub fn select(
        &self,
        devices: Vec<baton_memory::DeviceSnapshot>,
    ) -> Result<Vec<baton_memory::DeviceSnapshot>, crate::BadInput> {
        if self.ids.is_empty() {
            return Ok(devices);
        }
        if let Some(missing) = self
            .ids
            .iter()
            .find(|i| !devices.iter().any(|d| d.index == **i))
        {
            let have: Vec<String> = devices.iter().map(|d| d.index.to_string()).collect();
            return Err(crate::BadInput(format!(
                "-i {missing}: there is no such device; this machine's are {}",
                have.join(", ")
            )));
        }
        Ok(devices
            .into_iter()
            .filter(|d| self.ids.contains(&d.index))
            .collect())
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Process rows shown per device in the table, largest first (0 shows all).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Serve the metrics at http://ADDR/metrics (e.g. 127.0.0.1:9400, DCGM exporter's port), a
    /// fresh reading per scrape, until stopped.
    #[arg(long, value_name = "HOST:PORT")]
    pub serve: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Time between readings: seconds (0.5) or with a unit (500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Append one JSON snapshot per reading to this file.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// Stop after this many readings (default: until q or Ctrl-C).
    #[arg(long)]
    pub ticks: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Hold simulated GPU memory under this process's PID until killed or --seconds pass.
    Hold(HoldArgs),
    /// Free leaked simulated memory (see `sim hold --leak`), as a driver reset would.
    Reset,
    /// A mock model for pipelines on simulated GPUs: hold memory, report progress, write files.
    Work(WorkArgs),
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Simulated memory to hold while working: 4GiB, 512MiB.
    #[arg(value_parser = parse_size_arg)]
    pub size: u64,
    /// Which simulated GPU (inside a baton stage: the one it was placed on).
    #[arg(long, env = "BATON_DEVICE_INDEX", default_value_t = 0)]
    pub device: usize,
    /// How long the work takes.
    #[arg(long, default_value_t = 0.0)]
    pub seconds: f64,
    /// Print this many `baton:progress` lines over the work.
    #[arg(long, default_value_t = 0)]
    pub steps: u64,
    /// Write a small JSON file here when done (repeatable; relative to the current folder).
    #[arg(long, value_name = "FILE")]
    pub write: Vec<PathBuf>,
    /// Wait until this file exists before allocating.
    #[arg(long, value_name = "FILE")]
    pub wait_for: Option<PathBuf>,
    /// Started ahead of its turn (`prestart = true`): seconds it takes to prepare, holding a
    /// CUDA context's 512 MiB, before it says `baton:ready` and waits for its go.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub prepare: f64,
    /// Crash (exit 1, nothing written) unless this file exists; create it first, so the next
    /// attempt succeeds.
    #[arg(long, value_name = "FILE")]
    pub fail_once: Option<PathBuf>,
    /// Exit with this status after the work.
    #[arg(long, default_value_t = 0)]
    pub exit: u8,
    /// Before exiting, leave a detached process holding this much on the same device.
    #[arg(long, value_parser = parse_size_arg)]
    pub orphan: Option<u64>,
    /// Before exiting, leak this much on the same device (held by no process).
    #[arg(long, value_parser = parse_size_arg)]
    pub leak: Option<u64>,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// How much to hold: 4GiB, 512MiB, 2GB.
    #[arg(value_parser = parse_size_arg)]
    pub size: u64,
    /// Which simulated GPU, from 0 (inside a baton stage: the one it was placed on).
    #[arg(long, env = "BATON_DEVICE_INDEX", default_value_t = 0)]
    pub device: usize,
    /// Let go after this many seconds (default: hold until killed).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Leave a detached child process holding the memory, and exit at once.
    #[arg(long)]
    pub orphan: bool,
    /// Leak the memory instead: used on the device but owned by no process, until `baton sim
    /// reset`. The command exits at once.
    #[arg(long, conflicts_with_all = ["orphan", "seconds"])]
    pub leak: bool,
    /// Name of the allocation, shown in the state file.
    #[arg(long, default_value = "sim hold")]
    pub label: String,
    /// Internal: this is the detached child of --orphan.
    #[arg(long, hide = true)]
    pub orphan_child: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The switch demo repeated: switch latency, memory left after release and peak, per mode.
    Switch {
        /// Repetitions of each mode.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Size of each mock model.
        #[arg(long, default_value = "4GiB", value_parser = parse_model_size)]
        size: u64,
        /// Where the mocks live: gpu, cpu, sim, or auto.
        #[arg(long, default_value = "auto", value_parser = parse_device)]
        device: DeviceChoice,
        /// Also write every run's numbers to this file as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The runner's own cost per stage, and a batch of topics over four simulated GPUs
    /// against the ideal time.
    Runner {
        /// Chained no-op stages timed for the per-stage cost.
        #[arg(long, default_value_t = 30)]
        stages: usize,
        /// Topics in the batch.
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// How long each batch stage works, in seconds.
        #[arg(long, default_value_t = 0.2)]
        stage_seconds: f64,
    },
    /// Tokens per second of an LLM: free text the way candle's quantized example makes it, and
    /// the constrained storyboard JSON of `baton scenes`.
    Llm(BenchLlmArgs),
    /// Weight loading: pinned host-to-device bandwidth, then baton's loader (page cache warm and
    /// cold), candle's default loader and PyTorch's load_file on files it writes itself.
    Load(BenchLoadArgs),
    /// The voice stage's neural engine (Parler-TTS) on a model with random weights, written
    /// first (mini: parler-tts-mini-v1's shapes; tiny: the tests'): load, memory, time per clip.
    Voice {
        /// mini or tiny.
        #[arg(long, default_value = "mini")]
        size: String,
        /// Scenes (clips) to narrate.
        #[arg(long, default_value_t = 6)]
        scenes: usize,
        /// Where the random model and the run folder go.
        #[arg(long, value_name = "DIR", default_value = "target/bench-voice")]
        dir: PathBuf,
        /// Where the model runs: gpu (a cuda build of baton-stages), cpu, or auto.
        #[arg(long, default_value = "auto", value_parser = parse_device)]
        compute: DeviceChoice,
    },
    /// The images stage on a model with a family's real shapes and random weights, written
    /// first: phases, peak memory and time per image.
    Images {
        /// The family whose shapes are used.
        #[arg(long, default_value = "sd-turbo")]
        family: String,
        /// Scenes (images) to draw.
        #[arg(long, default_value_t = 6)]
        scenes: usize,
        /// Width and height.
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Where the random model and the run folder go.
        #[arg(long, value_name = "DIR", default_value = "target/bench-images")]
        dir: PathBuf,
        /// Where the model runs: gpu (a cuda build of baton-stages), cpu, or auto.
        #[arg(long, default_value = "auto", value_parser = parse_device)]
        compute: DeviceChoice,
        /// Denoising steps (default: the family's).
        #[arg(long)]
        steps: Option<usize>,
        /// A budget: each way of holding the weights (--weights) runs under it, beside a
        /// resident run without it, and the table compares their time, peak and pixels.
        #[arg(long, value_parser = parse_size_arg)]
        max_vram: Option<u64>,
        /// The ways to run, in order (auto, resident, streamed); the first is the one the
        /// others' pictures are compared with. Default: resident, then streamed when
        /// --max-vram is given; auto otherwise.
        #[arg(long, value_delimiter = ',', value_parser = ["auto", "resident", "streamed"])]
        weights: Vec<String>,
        /// FLUX: also quantize the transformer to this GGUF block type (q8_0, q6k, q4k) and run
        /// it beside the same weights dequantized (resident), comparing their pictures.
        #[arg(long, value_parser = ["q8_0", "q6k", "q4k"])]
        quantize: Option<String>,
    },
    /// Storyboards for a list of topics, judged as a reader would: scenes that repeat each
    /// other, narration off the topic, image prompts that copy the narration, markup; with
    /// tokens per second and failures.
    Scenes(BenchScenesArgs),
    /// The cost of one snapshot on every backend this machine has.
    Snapshot {
        /// Timed snapshots per backend.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
    /// How long each program takes to start and answer: `baton --version`, `baton stats`,
    /// `baton-stages --version`, as whole processes (median of --repeat runs).
    Startup {
        /// Runs of each command.
        #[arg(long, default_value_t = 50)]
        repeat: usize,
    },
}

#[derive(Debug, Args)]
pub struct BenchScenesArgs {
    /// A text file with one topic per line (blank lines and # comments skipped).
    #[arg(long, value_name = "FILE", required_unless_present = "judge")]
    pub topics: Option<PathBuf>,
    /// Judge the storyboards already written under this folder (every `*.json` storyboard in
    /// it, at any depth: `baton scenes` output, another model's, an earlier version's)
    /// instead of writing new ones.
    #[arg(long, value_name = "DIR", conflicts_with = "topics")]
    pub judge: Option<PathBuf>,
    /// The model, as `baton scenes --model` takes it.
    #[arg(long, env = "BATON_SCENES_MODEL", default_value = "smollm2")]
    pub model: String,
    /// Scenes per storyboard.
    #[arg(long, default_value_t = 6)]
    pub scenes: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = SCENES_TEMPERATURE)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.15)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 3000)]
    pub max_tokens: usize,
    /// Drafts of the outline and of each scene, as `baton scenes --drafts`.
    #[arg(long, env = "BATON_SCENES_DRAFTS", default_value = "auto", value_parser = parse_drafts)]
    pub drafts: Drafts,
    /// Write every storyboard here, one JSON file per topic.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where the model runs: gpu (a cuda build of baton-stages), cpu, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub compute: DeviceChoice,
}

#[derive(Debug, Args)]
pub struct BenchLlmArgs {
    /// A GGUF file, a name from `baton models list`, or pip:PACKAGE/FILE.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// A tokenizer.json to use instead of the one in the GGUF file.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The free-text prompt, given as is (no chat template), as candle's example does.
    #[arg(
        long,
        default_value = "Write a long story about a night market in Tokyo."
    )]
    pub prompt: String,
    /// Tokens of free text per run (fewer if the model ends its text).
    #[arg(long, default_value_t = 256)]
    pub tokens: usize,
    /// Runs of each kind; the table shows the median.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Seed of the free text (candle's example uses 299792458).
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// Temperature of the free text (candle's example: 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// candle's repeat penalty over the last 64 tokens (its example: 1.1).
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// Scenes in the constrained storyboard; 0 skips it.
    #[arg(long, default_value_t = 6)]
    pub scenes: usize,
    /// Where the LLM runs: gpu (a cuda build of baton-stages), cpu, or auto (the GPU
    /// when there is one and this build has CUDA).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub compute: DeviceChoice,
    /// Write the model's tokenizer as tokenizer.json here (for candle's example, which needs one).
    #[arg(long, value_name = "FILE")]
    pub save_tokenizer: Option<PathBuf>,
    /// Print the first run's free text, to compare with another program's.
    #[arg(long)]
    pub print_text: bool,
}

#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    /// Sizes of the bf16 safetensors files to write and load, comma-separated.
    #[arg(long, default_value = "4GiB,16GiB", value_delimiter = ',', value_parser = parse_model_size)]
    pub sizes: Vec<u64>,
    /// Sizes of the GGUF files (Q4_K/Q6_K blocks, Llama-3-8B shapes) to write and load,
    /// comma-separated; --gguf-sizes none skips them.
    #[arg(long, default_value = "4GiB", value_delimiter = ',', value_parser = parse_optional_model_size)]
    pub gguf_sizes: Vec<Option<u64>>,
    /// Where the files are written (they are removed afterwards unless --keep).
    #[arg(long, value_name = "DIR", default_value = "target/bench-load")]
    pub dir: PathBuf,
    /// Keep the written files.
    #[arg(long)]
    pub keep: bool,
    /// Loads of each kind per file; the table shows the best and the median.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Lanes (reading threads) to try, comma-separated; the first is the one reported as baton's.
    #[arg(long, value_delimiter = ',')]
    pub lanes: Vec<usize>,
    /// Chunk sizes to try, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_model_size)]
    pub chunk: Vec<u64>,
    /// Staging buffers per lane.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// How many of the lanes pin the page cache's pages in place instead of staging (no CPU
    /// copy; the driver pins each chunk's pages), comma-separated settings to try; 0 stages
    /// every chunk. On a GPU only.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub direct_lanes: Vec<usize>,
    /// How lanes read their chunks, comma-separated settings to try: pread (a kernel copy out
    /// of the page cache) or mmap (a copy out of a mapping of the file).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "pread")]
    pub read: Vec<ReadMode>,
    /// Staging memory, comma-separated settings to try: cached pinned memory, or
    /// write-combined (the CPU's writes bypass its caches). On a GPU only.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "cached")]
    pub staging: Vec<Staging>,
    /// The Python that runs PyTorch's load_file (skipped when it has no torch or safetensors).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Where the loads go: gpu (a cuda build of baton-stages), cpu, or auto.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub compute: DeviceChoice,
    /// Also write every measurement to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    text.parse()
        .map_err(|e: baton_memory::MemoryError| e.to_string())
}

/// How many drafts of the outline and of each scene are written; the least faulty, then the
/// one the model itself finds most fluent (its mean log-probability of what it chose), is
/// kept. A small model's drafts differ a lot ("The fire in the room, where lighthouses, has
/// died." against "The sun sets, and a lighthouse keeper is on his way home."), and its own
/// likelihood tells the better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drafts {
    /// [`Drafts::AUTO`] on a GPU, where drafts cost seconds, and on the CPU with a model file
    /// under [`Drafts::SMALL_MODEL`]; 1 with a larger model on the CPU, where each draft costs
    /// minutes.
    Auto,
    Count(usize),
}

impl Drafts {
    pub const AUTO: usize = 3;
    pub const MAX: usize = 8;
    /// A model file this small writes a draft in about 30 s on 2 CPU cores (SmolLM2-135M,
    /// 94 MB; Gemma 3 270M, 253 MB).
    pub const SMALL_MODEL: u64 = 1 << 30;
    /// What `--drafts` takes, in words.
    pub const CHOICES: &str =
        "a count from 1 to 8, or auto (3 on a GPU or with a model under 1 GiB, else 1)";

    /// The count for a model file of `model_bytes` on a device of `kind`.
    pub fn count(self, kind: DeviceKind, model_bytes: u64) -> usize {
        match (self, kind) {
            (Drafts::Count(n), _) => n,
            (Drafts::Auto, DeviceKind::Gpu) => Self::AUTO,
            (Drafts::Auto, _) if model_bytes < Self::SMALL_MODEL => Self::AUTO,
            (Drafts::Auto, _) => 1,
        }
    }
}

impl std::str::FromStr for Drafts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(Drafts::Auto);
        }
        match text.trim().parse::<usize>() {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Drafts::Count(n)),
            _ => Err(format!(
                "--drafts {text}: give {} (each one more costs the storyboard's time again)",
                Self::CHOICES
            )),
        }
    }
}

fn parse_drafts(text: &str) -> Result<Drafts, String> {
    text.parse()
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn parse_model_size(text: &str) -> Result<u64, String> {
    match parse_size(text).map_err(|e| e.to_string())? {
        0 => Err("a model of 0 bytes proves nothing; use e.g. 4GiB".to_string()),
        bytes => Ok(bytes),
    }
}

/// How `baton bench load`'s lanes read their chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadMode {
    Pread,
    Mmap,
}

/// The staging memory `baton bench load` tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Staging {
    Cached,
    WriteCombined,
}

/// A model size, or `none`.
fn parse_optional_model_size(text: &str) -> Result<Option<u64>, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        parse_model_size(text).map(Some)
    }
}

/// `1`, `0.5`, `500ms`, `2s`, `1m`: any duration baton reads, from 10ms to a day.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = baton_base::parse_duration(text).map_err(|e| e.to_string())?;
    if interval.is_zero() {
        return Err("it must be more than 0".to_string());
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(86_400)).contains(&interval) {
        return Err("use 10ms to 24h".to_string());
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        for bad in ["0", "0s", "-1", "abc", "NaN", "1ms", "2d"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn drafts_are_a_count_or_auto_which_depends_on_the_device() {
        // What the error says is what the parser takes.
        assert!(Drafts::CHOICES.contains(&format!("1 to {}", Drafts::MAX)));
        assert!(Drafts::CHOICES.contains(&format!("{} on a GPU", Drafts::AUTO)));
        assert!(Drafts::CHOICES.contains("under 1 GiB") && Drafts::SMALL_MODEL == 1 << 30);
        assert_eq!(parse_drafts("auto").unwrap(), Drafts::Auto);
        let (small, large) = (94_000_000, 4_700_000_000);
        assert_eq!(
            parse_drafts("AUTO").unwrap().count(DeviceKind::Gpu, large),
            Drafts::AUTO
        );
        let auto = parse_drafts("auto").unwrap();
        assert_eq!(auto.count(DeviceKind::Cpu, small), Drafts::AUTO);
        assert_eq!(auto.count(DeviceKind::Cpu, large), 1);
        assert_eq!(parse_drafts("2").unwrap().count(DeviceKind::Cpu, large), 2);
        assert_eq!(
            parse_drafts(" 8 ").unwrap().count(DeviceKind::Gpu, small),
            8
        );
        for bad in ["0", "9", "-1", "three", ""] {
            let err = parse_drafts(bad).unwrap_err();
            assert!(
                err.contains(&format!("--drafts {bad}")) && err.contains("1 to 8"),
                "{err}"
            );
        }
    }

    #[test]
    fn declaration_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
