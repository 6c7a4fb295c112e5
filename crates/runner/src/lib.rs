//! baton's stage runner: every stage of a run in its own process, placed where it fits,
//! watched, and verified to have handed its memory back.
//!
//! A key design decision: the runner is a scheduler over manifests. [`plan`] turns a topic (or
//! a run folder to resume) into a [`RunPlan`]; the [`Engine`] runs the plans' stages as their
//! dependencies finish and devices have room ([`placement`]), one attempt thread per stage
//! ([`attempt`]) that starts it through an [`Executor`], samples its memory and proves reclaim;
//! every change is written to the run's `run.json` at once ([`manifest`]). One engine runs one
//! run or a whole batch. It reads memory only through `baton_memory::MemoryBackend`, so CI
//! drives all of it on simulated GPUs with real processes.

pub mod attempt;
pub mod catalog;
pub mod engine;
pub mod events;
pub mod executor;
pub mod group;
pub mod interrupt;
pub mod keeper;
pub mod learned;
pub mod lock;
pub mod manifest;
pub mod outputs;
pub mod pipeline;
pub mod placement;
pub mod plan;
pub mod report;
pub mod slurm;

use std::path::PathBuf;

pub use catalog::{Builtin, NoBuiltins, StageCatalog};
pub use engine::{Cluster, Engine};
pub use events::{Event, Observer, Quiet};
pub use executor::{Executor, LocalExecutor};
pub use learned::LearnedNeeds;
pub use manifest::{LoadRecord, Manifest, RunState, StageState};
pub use pipeline::Pipeline;
pub use placement::Reserve;
pub use plan::{ResumeDecision, RunPlan, create_run, resume_run};

/// An error from the runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// A topic that cannot name a run.
    #[error("bad topic '{topic}': {why}")]
    BadTopic { topic: String, why: &'static str },

    /// A pipeline file that cannot be used.
    #[error("bad pipeline {origin}: {why}")]
    BadPipeline { origin: String, why: String },

    /// An input no stage produces and that does not exist.
    #[error("stage '{stage}' needs '{}', which does not exist and no stage makes; create it or fix the path", .path.display())]
    MissingInput { stage: String, path: PathBuf },

    /// A folder that baton did not make as a run folder.
    #[error("'{}' is not a baton run folder: it has no run.json; pass a folder that `baton run` made, under output/", .path.display())]
    NotARunFolder { path: PathBuf },

    /// A signal stopped the runs; they are written as interrupted and can be resumed.
    #[error("interrupted by {}: every running stage was stopped and its memory proved back; resume with: {resume}", crate::interrupt::name(*.signal))]
    Interrupted { signal: i32, resume: String },

    /// A run folder another baton is working on.
    #[error("run folder '{}' is in use by {}; wait for it to finish, or stop it first", .run_dir.display(), match .holder { Some(pid) => format!("baton pid {pid}"), None => "another baton".to_string() })]
    Locked {
        run_dir: PathBuf,
        holder: Option<u32>,
    },

    /// A `run.json` that cannot be trusted.
    #[error("run manifest '{}' is corrupt ({why}); nothing was changed. Restore it, or start a new run", .path.display())]
    CorruptManifest { path: PathBuf, why: String },

    /// A stage program that could not be started.
    #[error(
        "stage '{stage}': cannot start '{program}': {source}; check the command in the pipeline file"
    )]
    Spawn {
        stage: String,
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{action} '{}': {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file baton writes whole (the manifest, the report) that could not be written.
    #[error(transparent)]
    File(#[from] baton_base::FileError),

    #[error(transparent)]
    Memory(#[from] baton_memory::MemoryError),
}

impl From<baton_base::run_dir::TopicError> for RunnerError {
    fn from(e: baton_base::run_dir::TopicError) -> Self {
        RunnerError::BadTopic {
            topic: e.topic,
            why: e.why,
        }
    }
}

impl RunnerError {
    /// True when the error is about what the user wrote.
    pub fn is_bad_input(&self) -> bool {
        baton_base::fault::Classify::fault(self) == baton_base::fault::Fault::Input
    }
}

impl baton_base::fault::Classify for RunnerError {
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            RunnerError::BadTopic { .. }
            | RunnerError::BadPipeline { .. }
            | RunnerError::MissingInput { .. }
            | RunnerError::NotARunFolder { .. }
            | RunnerError::Locked { .. } => Fault::Input,
            RunnerError::Memory(e) => e.fault(),
            RunnerError::File(e) => e.fault(),
            RunnerError::Interrupted { signal, .. } => Fault::Interrupted(*signal),
            RunnerError::CorruptManifest { .. }
            | RunnerError::Spawn { .. }
            | RunnerError::Io { .. } => Fault::Machine,
        }
    }
}
