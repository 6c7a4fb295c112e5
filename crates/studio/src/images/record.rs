//! What the images stage is asked (`ImagesOptions`), what it says while it works
//! (`Progress`), and what it records (`3_images/images.json`).

use serde::Serialize;

pub use super::plan::WeightsMode;

/// What to draw and how.
#[derive(Debug, Clone)]
pub struct ImagesOptions {
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub seed: u64,
    /// The budget: the plan streams what does not fit it, and refuses what does not fit even
    /// streamed.
    pub max_vram: Option<u64>,
    /// Whether the transformer's weights stay resident or stream (auto: stream only when
    /// resident does not fit `max_vram`).
    pub weights: WeightsMode,
    /// Debugging: every scene starts from this noise instead of its seed's (`--latents`).
    pub latents: Option<std::path::PathBuf>,
    /// Debugging: what every phase produced is written into this folder (`--dump`).
    pub dump: Option<std::path::PathBuf>,
}

/// One phase as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub name: String,
    pub weights_bytes: u64,
    pub load_seconds: f64,
    pub load_gb_per_second: f64,
    pub seconds: f64,
    /// This process's memory on the device when the phase began, and at its highest.
    pub baseline_bytes: u64,
    pub peak_bytes: u64,
    /// The planned need (weights + activations) that --max-vram is checked against.
    pub planned_bytes: u64,
    /// The scope guard's verdict on the memory coming back.
    pub reclaim: String,
    pub leaked: bool,
    /// How its weights were held: "resident", or streamed and what that costs.
    pub residence: String,
    /// Bytes copied from host memory while it ran (streamed weights).
    pub streamed_bytes: u64,
}

/// One image as written.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    pub scene: u32,
    pub file: String,
    pub seed: u64,
    /// "generated"; storyboard cards would say "card".
    pub kind: &'static str,
    pub prompt_truncated: bool,
    pub seconds: f64,
}

/// `3_images/images.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ImagesManifest {
    pub model: String,
    pub family: String,
    pub device: String,
    pub dtype: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub phases: Vec<PhaseRecord>,
    pub images: Vec<ImageRecord>,
    /// The highest of the phases' peaks, above the baseline of the first.
    pub peak_bytes: u64,
    pub warnings: Vec<String>,
}

/// What the stage reports while it works.
pub enum Progress<'a> {
    Phase(&'a str),
    Step {
        scene: u32,
        scenes: usize,
        step: usize,
        steps: usize,
    },
    Warning(&'a str),
    /// The plan: how each phase holds its weights, and what it needs.
    Plan(&'a str),
}
