//! Why the images stage could not run, and whose fault that is.

use std::path::PathBuf;

use crate::storyboard::StoryboardError;

/// Why the images stage could not run; messages name the value and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagesError {
    #[error(transparent)]
    Storyboard(#[from] StoryboardError),
    #[error(
        "unknown image model '{name}'; use a diffusers folder (--model DIR --family F) or one of: {known}"
    )]
    UnknownModel { name: String, known: String },
    #[error(
        "no image model: {why}. Pass --model DIR with a diffusers folder of a {family} model, or --cards for storyboard cards"
    )]
    NoModel { why: String, family: String },
    #[error("the model folder '{}' lacks {what}; {layout}", .dir.display())]
    Incomplete {
        dir: PathBuf,
        what: String,
        layout: &'static str,
    },
    #[error("{what} {value} is not a multiple of {block} ({family}'s block size); use e.g. {near}")]
    Size {
        what: &'static str,
        value: usize,
        block: usize,
        family: String,
        near: usize,
    },
    #[error("scene {scene} has an empty image_prompt; write one in the scenes file")]
    EmptyPrompt { scene: u32 },
    #[error(
        "the phased plan needs {need} in its largest phase ({phase}) but --max-vram is {max}, even with FLUX's transformer streamed; give more, or draw smaller images:\n{plan}"
    )]
    MaxVram {
        /// The phase's need, and on a GPU "plus N for this process's CUDA context and kernels".
        need: String,
        phase: String,
        max: String,
        plan: String,
    },
    #[error("{0}")]
    Option(String),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error(transparent)]
    Compute(#[from] crate::compute::ComputeError),
    #[error("cannot write into '{}': {source}", .path.display())]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Weights(#[from] baton_weights::WeightsError),
    #[error("the model failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Memory(#[from] baton_memory::MemoryError),
    #[error(transparent)]
    File(#[from] baton_base::FileError),
    #[error(transparent)]
    Dump(#[from] crate::dump::DumpError),
    #[error("cannot encode scene {scene}'s PNG: {why}")]
    Png { scene: u32, why: String },
}

impl baton_base::fault::Classify for ImagesError {
    /// What the user named (the scenes file, the model, sizes, options, the output folder)
    /// is the input's; a model that is not on this machine, and what fails while drawing, the
    /// machine's.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            ImagesError::Storyboard(_)
            | ImagesError::UnknownModel { .. }
            | ImagesError::Incomplete { .. }
            | ImagesError::Size { .. }
            | ImagesError::EmptyPrompt { .. }
            | ImagesError::MaxVram { .. }
            | ImagesError::Option(_)
            | ImagesError::Unwritable { .. } => Fault::Input,
            ImagesError::Hub(e) => e.fault(),
            ImagesError::Compute(e) => e.fault(),
            ImagesError::Weights(e) => e.fault(),
            ImagesError::Memory(e) => e.fault(),
            ImagesError::File(e) => e.fault(),
            ImagesError::Dump(e) => e.fault(),
            ImagesError::NoModel { .. }
            | ImagesError::Tokenizer(_)
            | ImagesError::Candle(_)
            | ImagesError::Png { .. } => Fault::Machine,
        }
    }
}
