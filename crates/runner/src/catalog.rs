//! The stages a program builds into its pipelines: what `builtin = "NAME"` means.
//!
//! A key design decision: the runner knows only programs. It supervises argv, environment,
//! files and memory, and has no idea what an LLM or a voice is. A binary that embeds the runner
//! hands it a [`StageCatalog`] that turns a builtin's name into a command line and says which
//! weights files that command will load (so the runner can pull them into the page cache
//! while the stages before it run). baton's content pipeline is one such catalog; a pipeline
//! of plain commands needs none ([`NoBuiltins`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pipeline::DeviceKind;

/// What a builtin stage runs, as the catalog defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builtin {
    /// The builtin's name, as pipeline files write it (`builtin = "scenes"`).
    pub name: String,
    /// The program and its arguments; placeholders (`{topic}`, `{run_dir}`, …) allowed.
    pub argv: Vec<String>,
    /// Where the stage runs when the pipeline file does not say.
    pub device: DeviceKind,
}

/// The builtins one program offers its pipelines.
pub trait StageCatalog: Send + Sync {
    /// The builtin `name`, or `None` when there is no such builtin.
    fn builtin(&self, name: &str) -> Option<Builtin>;

    /// Every builtin's name, for the error that refuses an unknown one.
    fn names(&self) -> Vec<String>;

    /// The weights files the builtin `name` will load with the stage environment `env` (the
    /// pipeline's `[env]` for it), as they resolve on this machine now; empty when there are
    /// none or they are not here (nothing is downloaded). Called on a warming thread, never the
    /// scheduler's: resolving may read and check a model.
    fn weights(&self, name: &str, env: &BTreeMap<String, String>) -> Vec<PathBuf>;

    /// The model the builtin `name` will run with the stage environment `env` (layered over
    /// baton's own), for the key its learned memory need is kept under: `flux-schnell` and
    /// `sd-turbo` are different needs of one `images` stage. Called on the scheduler's thread:
    /// read settings, never files. `None` keys the need by the builtin's name alone.
    fn model(&self, _name: &str, _env: &BTreeMap<String, String>) -> Option<String> {
        None
    }

    /// HTML showing what the catalog's stages made in the run folder `run_dir` (a storyboard's
    /// scenes with their pictures and clips, say), for the run's `report/index.html`, which
    /// lies in `run_dir/report/`. `None`: the report shows the stages' files by their kind.
    fn report_html(&self, _run_dir: &Path) -> Option<String> {
        None
    }

    /// Prefixes of environment variables every stage inherits from baton, besides the runner's
    /// own list: the settings of the catalog's stages (`BATON_SCENES_MODEL`, …).
    fn inherited_prefixes(&self) -> &[&str] {
        &[]
    }
}

/// The catalog of a program with no builtins: every stage is a command.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBuiltins;

impl StageCatalog for NoBuiltins {
    fn builtin(&self, _name: &str) -> Option<Builtin> {
        None
    }

    fn names(&self) -> Vec<String> {
        Vec::new()
    }

    fn weights(&self, _name: &str, _env: &BTreeMap<String, String>) -> Vec<PathBuf> {
        Vec::new()
    }
}
