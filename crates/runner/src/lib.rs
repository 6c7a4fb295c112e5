//! baton's stage runner: every stage of a run in its own process, placed where it fits,
//! watched, and verified to have handed its memory back.
//!
//! What is here so far is the run folder's naming ([`run_dir`]). Planning, placement, spawning,
//! watching, reclaim and resume land with the runner issue; until then [`run_pipeline`] checks
//! its input and says plainly that the pipeline is not built yet, writing nothing.

pub mod run_dir;

use baton_studio::Stage;

/// An error from the runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// A topic that cannot name a run.
    #[error("bad topic '{topic}': {why}")]
    BadTopic { topic: String, why: &'static str },

    /// A part of baton that later work completes.
    #[error(
        "{what} is not built yet; nothing was written. Until it is, `baton stats` and `baton watch` read memory, and `baton sim hold` builds scenarios"
    )]
    NotBuiltYet { what: String },
}

impl RunnerError {
    /// True when the error is about what the user wrote.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, RunnerError::BadTopic { .. })
    }
}

/// Runs the content pipeline (scenes, voice, images) for `topic`, each stage its own process.
pub fn run_pipeline(topic: &str) -> Result<(), RunnerError> {
    let slug = run_dir::slug(topic)?;
    let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
    Err(RunnerError::NotBuiltYet {
        what: format!(
            "`baton run` (the stages {} for run '{slug}')",
            stages.join(", ")
        ),
    })
}
