//! The `scenes` stage: an LLM writes the storyboard for a topic, as
//! `{run}/1_scripts/{slug}_scenes.json`, where the seed's `pipeline_manager.py` put it.
//!
//! The model lives inside a `MemoryScope`, with the seed's log points (after loading, after
//! generation), and its release is verified before the stage returns. Nothing is written until
//! the storyboard has been generated and validated; then the file appears whole (temp file,
//! rename), so a failure leaves no partial run folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use baton_base::atomic_file::write_atomic;
use baton_base::fault::{Classify, Fault};
use baton_memory::{MemoryScope, ScopeReport};

use crate::llm::{Generation, Llm, LlmError, Sampler};
use crate::storyboard::{Storyboard, StoryboardError, schema};
use baton_base::run_dir::{TopicError, run_folder_name, slug};

pub use crate::compute::Compute;

/// Where the scenes file goes.
pub enum Destination {
    /// A new run folder under this output folder.
    NewRun(PathBuf),
    /// An existing run folder (a stage of `baton run`).
    RunDir(PathBuf),
}

pub struct ScenesRequest<'a> {
    pub topic: &'a str,
    pub scenes: usize,
    pub model: &'a Path,
    pub tokenizer: Option<&'a Path>,
    pub sampler: Sampler,
    pub compute: Compute,
    pub destination: Destination,
}

pub struct ScenesOutcome {
    pub file: PathBuf,
    pub run_dir: PathBuf,
    pub storyboard: Storyboard,
    pub generation: Generation,
    pub load_seconds: f64,
    /// The device's memory after loading and after generating, for the log.
    pub after_load: String,
    pub after_generation: String,
    /// The proof the model's memory came back.
    pub reclaim: ScopeReport,
    pub device: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenesError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("bad --scenes {0}: use 1 to {max}", max = crate::storyboard::MAX_SCENES)]
    SceneCount(usize),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("the model's storyboard cannot be used ({0}); try another --seed or a larger model")]
    Storyboard(#[from] StoryboardError),
    #[error(transparent)]
    Memory(#[from] baton_memory::MemoryError),
    #[error(transparent)]
    File(#[from] baton_base::FileError),
    #[error(transparent)]
    Compute(#[from] crate::compute::ComputeError),
    #[error("cannot create '{}': {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for ScenesError {
    /// The topic, the scene count and the model file are what the user passed.
    fn fault(&self) -> Fault {
        match self {
            ScenesError::Topic(_) | ScenesError::SceneCount(_) => Fault::Input,
            ScenesError::Llm(e) => e.fault(),
            ScenesError::Memory(e) => e.fault(),
            ScenesError::File(e) => e.fault(),
            ScenesError::Compute(e) => e.fault(),
            ScenesError::Storyboard(_) | ScenesError::Create { .. } => Fault::Machine,
        }
    }
}

const SYSTEM: &str = "You write storyboards for short narrated videos. Answer with JSON only.";

fn user_prompt(topic: &str, scenes: usize) -> String {
    format!(
        "Write a storyboard of {scenes} scenes about: {topic}\n\
         Give it a title. For each scene give: a short title; one or two sentences of narration \
         to be read aloud; an image prompt describing what to draw (subject, setting, light, \
         style); and a duration in seconds, between 4 and 8."
    )
}

/// The chat prompt that asks `llm` for a storyboard of `scenes` scenes about `topic`, and the
/// JSON Schema its output is constrained to.
pub fn storyboard_request(
    llm: &Llm,
    topic: &str,
    scenes: usize,
) -> Result<(String, serde_json::Value), LlmError> {
    let prompt = llm.chat_prompt(SYSTEM, &user_prompt(topic, scenes))?;
    // Compact JSON: with whitespace left free, a small model can spend its whole budget on it.
    let mut constraint = schema(Some(scenes));
    constraint["x-guidance"] = serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": "
    });
    Ok((prompt, constraint))
}

/// Generates, validates and writes a storyboard for `req.topic`.
pub fn write_scenes(
    req: ScenesRequest,
    on_token: &mut dyn FnMut(usize),
) -> Result<ScenesOutcome, ScenesError> {
    let slug = slug(req.topic)?;
    if req.scenes == 0 || req.scenes > crate::storyboard::MAX_SCENES {
        return Err(ScenesError::SceneCount(req.scenes));
    }
    let (backend, device) = req.compute.open()?;
    crate::llm::warm_up(&device)?;
    backend.trim()?;
    // 64 MiB of slack: allocator arenas on the host, and on a GPU a kernel module the warm-up
    // did not touch, stay with the process after the model is gone.
    let scope = MemoryScope::new(backend.clone(), 0, "scenes model")?.with_tolerance(64 << 20);
    let started = Instant::now();
    let mut llm = Llm::load(req.model, &device, req.tokenizer)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let after_load = baton_memory::log_snapshot(backend.as_ref(), "after LLM loading")?
        .first()
        .map(|d| d.summary())
        .unwrap_or_default();
    let (prompt, constraint) = storyboard_request(&llm, req.topic, req.scenes)?;
    let generation = llm.generate_json(&prompt, constraint, &req.sampler, on_token)?;
    let after_generation = baton_memory::log_snapshot(backend.as_ref(), "after scene generation")?
        .first()
        .map(|d| d.summary())
        .unwrap_or_default();
    let device_label = format!("{} ({})", backend.kind(), llm.arch);
    drop(llm);
    let reclaim = scope.finish()?;

    let mut storyboard: Storyboard = serde_json::from_str(&generation.text).map_err(|e| {
        StoryboardError::Invalid(format!("the model's output is not a storyboard: {e}"))
    })?;
    // The schema fixes the shape; the topic and the numbering are not the model's to choose.
    storyboard.topic = req.topic.trim().to_string();
    storyboard.title = storyboard.title.trim().to_string();
    for (i, s) in storyboard.scenes.iter_mut().enumerate() {
        s.index = i as u32 + 1;
        for text in [&mut s.title, &mut s.narration, &mut s.image_prompt] {
            *text = text.trim().to_string();
        }
    }
    storyboard.validate(Some(req.scenes))?;

    let run_dir = match req.destination {
        Destination::RunDir(dir) => dir,
        Destination::NewRun(root) => {
            let dir = root.join(run_folder_name(req.topic, std::time::SystemTime::now())?);
            std::fs::create_dir_all(&dir).map_err(|source| ScenesError::Create {
                path: dir.clone(),
                source,
            })?;
            dir
        }
    };
    let scripts = run_dir.join("1_scripts");
    std::fs::create_dir_all(&scripts).map_err(|source| ScenesError::Create {
        path: scripts.clone(),
        source,
    })?;
    let file = scripts.join(format!("{slug}_scenes.json"));
    let body = serde_json::to_vec_pretty(&storyboard).expect("a storyboard serializes");
    write_atomic(&file, &body)?;
    Ok(ScenesOutcome {
        file,
        run_dir,
        storyboard,
        generation,
        load_seconds,
        after_load,
        after_generation,
        reclaim,
        device: device_label,
    })
}
