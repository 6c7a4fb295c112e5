//! `run.json`: the state of one run, rewritten whole (atomically) after every change, so that a
//! crash of baton at any moment leaves a manifest that `baton resume` can trust.
//!
//! It records, per stage, the state, every attempt (device, exit status, peak memory, timings,
//! reclaim, orphans, leaks, a memory timeline) and the artifacts with their sha256. The report
//! is drawn from manifests alone.

use std::path::{Path, PathBuf};

use baton_base::atomic_file::write_atomic;
pub use baton_base::checksum::sha256_file;
use serde::{Deserialize, Serialize};

use crate::RunnerError;

pub const MANIFEST_FILE: &str = "run.json";
pub const PIPELINE_FILE: &str = "pipeline.toml";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    /// Ready, but no device has room yet.
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Not run, because a stage it depends on failed.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    /// Stopped by Ctrl-C or SIGTERM; `baton resume` finishes it.
    Interrupted,
}

/// A process killed because it still held memory after its stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    pub pid: u32,
    pub name: String,
    pub bytes: u64,
}

/// What happened after a stage's process exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReclaimRecord {
    /// True when the memory came back within the timeout.
    pub verified: bool,
    /// Milliseconds from the stage's exit until its memory was back (or the timeout).
    pub ms: f64,
    pub orphans: Vec<Orphan>,
    /// Bytes still used on the device, held by no process, above the level before the stage.
    pub leaked_bytes: u64,
    /// Bytes the stage's processes still held at the timeout.
    pub still_held_bytes: u64,
}

/// One memory sample: time (ms since the Unix epoch), device used bytes, the stage's bytes.
pub type Sample = (u64, u64, u64);

/// One try at running a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    /// `gpu0`, `sim2`, `host0`.
    pub device: String,
    pub device_index: usize,
    /// The bytes placement granted (need plus context overhead).
    pub granted_bytes: u64,
    pub pid: Option<u32>,
    /// The `BATON_STAGE_TOKEN` every process of the attempt carries: how `baton resume` finds
    /// what an interrupted attempt left running. Unique to the baton process that started it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Peak bytes the stage's processes held on the device.
    pub peak_bytes: u64,
    pub reclaim: Option<ReclaimRecord>,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// True when it failed for lack of memory.
    pub out_of_memory: bool,
    pub timeline: Vec<Sample>,
    /// Weights the stage loaded, as it reported them (`baton:load` lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loads: Vec<LoadRecord>,
    /// What the stage asked the user to read (`baton:warn` lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A prestarted stage: when it said it was prepared (`baton:ready`), when the runner sent
    /// its go, and when it said it runs (`baton:running`), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_unix_ms: Option<u64>,
    /// Its Slurm job (`--executor slurm`), recorded once submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
}

/// One weights file a stage loaded: what, how much, how fast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadRecord {
    pub name: String,
    pub bytes: u64,
    pub seconds: f64,
    pub gb_per_second: f64,
}

impl Attempt {
    /// An attempt starting now.
    pub fn begin(number: u32, device: &str, device_index: usize, granted_bytes: u64) -> Attempt {
        Attempt {
            number,
            device: device.to_string(),
            device_index,
            granted_bytes,
            pid: None,
            token: String::new(),
            started_unix_ms: unix_ms(),
            ended_unix_ms: None,
            exit_code: None,
            signal: None,
            peak_bytes: 0,
            reclaim: None,
            failure: None,
            out_of_memory: false,
            timeline: Vec::new(),
            loads: Vec::new(),
            warnings: Vec::new(),
            ready_unix_ms: None,
            go_unix_ms: None,
            running_unix_ms: None,
            job_id: None,
        }
    }

    /// From its start (a prestarted stage's: its go) to its end.
    pub fn wall_ms(&self) -> Option<u64> {
        let from = self.go_unix_ms.unwrap_or(self.started_unix_ms);
        self.ended_unix_ms.map(|end| end.saturating_sub(from))
    }

    /// A prestarted stage given its go: how long it prepared before the go (start to ready,
    /// or to the go if that came first), and how long it took from the go to say it runs.
    pub fn prestart_ms(&self) -> Option<(u64, Option<u64>)> {
        let go = self.go_unix_ms?;
        let prepared = self.ready_unix_ms.unwrap_or(go).min(go);
        Some((
            prepared.saturating_sub(self.started_unix_ms),
            self.running_unix_ms.map(|r| r.saturating_sub(go)),
        ))
    }
}

/// A file a stage wrote, as it was when the stage succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the run folder.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub state: StageState,
    pub attempts: Vec<Attempt>,
    pub artifacts: Vec<Artifact>,
    /// Why it is failed, skipped or waiting.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub run_id: String,
    pub topic: String,
    pub slug: String,
    pub pipeline: String,
    /// The folder of the pipeline file the run started from (`{pipeline_dir}`).
    #[serde(default)]
    pub pipeline_dir: String,
    /// `nvml`, `host` or `sim`: where the GPU stages were placed.
    pub backend: String,
    pub created_unix_ms: u64,
    pub state: RunState,
    pub error: Option<String>,
    pub stages: Vec<StageRecord>,
}

impl Manifest {
    pub fn new(
        run_id: &str,
        topic: &str,
        slug: &str,
        pipeline: &crate::Pipeline,
        backend: &str,
    ) -> Manifest {
        Manifest {
            version: VERSION,
            run_id: run_id.to_string(),
            topic: topic.to_string(),
            slug: slug.to_string(),
            pipeline: pipeline.name.clone(),
            pipeline_dir: pipeline.dir.clone(),
            backend: backend.to_string(),
            created_unix_ms: unix_ms(),
            state: RunState::Running,
            error: None,
            stages: pipeline
                .stages
                .iter()
                .map(|s| StageRecord {
                    name: s.name.clone(),
                    state: StageState::Pending,
                    attempts: Vec::new(),
                    artifacts: Vec::new(),
                    note: None,
                })
                .collect(),
        }
    }

    /// Reads `run.json` from a run folder; a folder without one is not a run folder.
    pub fn load(run_dir: &Path) -> Result<Manifest, RunnerError> {
        let path = run_dir.join(MANIFEST_FILE);
        if !run_dir.is_dir() || !path.is_file() {
            return Err(RunnerError::NotARunFolder {
                path: run_dir.to_path_buf(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| RunnerError::Io {
            action: "cannot read",
            path: path.clone(),
            source: e,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| RunnerError::CorruptManifest {
                path: path.clone(),
                why: e.to_string(),
            })?;
        if manifest.version != VERSION {
            return Err(RunnerError::CorruptManifest {
                path,
                why: format!(
                    "version {} is not the {VERSION} this baton reads",
                    manifest.version
                ),
            });
        }
        Ok(manifest)
    }

    /// Writes `run.json` whole, atomically.
    pub fn save(&self, run_dir: &Path) -> Result<(), RunnerError> {
        let bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        write_atomic(&run_dir.join(MANIFEST_FILE), &bytes).map_err(RunnerError::File)
    }

    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn stage_mut(&mut self, name: &str) -> &mut StageRecord {
        self.stages
            .iter_mut()
            .find(|s| s.name == name)
            .expect("stage names come from the same pipeline")
    }
}

/// Records the artifacts `outputs` (relative paths; a folder output stands for every file in
/// it) of a run folder; a missing one is an error that names it.
pub fn collect_artifacts(run_dir: &Path, outputs: &[String]) -> Result<Vec<Artifact>, String> {
    let mut files = Vec::new();
    for output in outputs {
        if crate::outputs::is_folder(output) {
            files.extend(crate::outputs::files_in(run_dir, output)?);
        } else {
            files.push(output.clone());
        }
    }
    files
        .iter()
        .map(|rel| {
            let path: PathBuf = run_dir.join(rel);
            let (bytes, sha256) = sha256_file(&path)
                .map_err(|e| format!("its output '{rel}' cannot be read ({e})"))?;
            Ok(Artifact {
                path: rel.clone(),
                bytes,
                sha256,
            })
        })
        .collect()
}

/// Checks that recorded artifacts are still present and unchanged; says which is not.
pub fn verify_artifacts(run_dir: &Path, artifacts: &[Artifact]) -> Result<(), String> {
    for a in artifacts {
        match sha256_file(&run_dir.join(&a.path)) {
            Ok((_, sha)) if sha == a.sha256 => {}
            Ok(_) => return Err(format!("'{}' changed since the stage wrote it", a.path)),
            Err(e) => return Err(format!("'{}' is gone ({e})", a.path)),
        }
    }
    Ok(())
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_verified_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1_scripts")).unwrap();
        std::fs::write(dir.path().join("1_scripts/x.json"), b"{}").unwrap();
        let outputs = vec!["1_scripts/x.json".to_string()];
        let artifacts = collect_artifacts(dir.path(), &outputs).unwrap();
        verify_artifacts(dir.path(), &artifacts).unwrap();
        std::fs::write(dir.path().join("1_scripts/x.json"), b"{ }").unwrap();
        assert!(
            verify_artifacts(dir.path(), &artifacts)
                .unwrap_err()
                .contains("changed")
        );
        std::fs::remove_file(dir.path().join("1_scripts/x.json")).unwrap();
        assert!(
            verify_artifacts(dir.path(), &artifacts)
                .unwrap_err()
                .contains("gone")
        );
        assert!(
            collect_artifacts(dir.path(), &outputs)
                .unwrap_err()
                .contains("1_scripts/x.json")
        );
    }
}
