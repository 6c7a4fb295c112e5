//! Memory needs learned from earlier runs: the peaks a stage reached in its last few successful
//! attempts, per stage and model, kept in `learned.json` in baton's state folder
//! (`BATON_STATE_DIR`, else `~/.cache/baton`). A stage whose pipeline says `memory = "learn"`
//! is placed with the highest of them plus 10% headroom.
//!
//! A key design decision: the key names the model, not only the stage (`images:flux-schnell`,
//! not `images:images`), and one small run never lowers the need below what a larger one just
//! took; the engine records only attempts that succeeded as planned (no fallback warnings).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use baton_base::atomic_file::write_atomic;

use crate::RunnerError;

/// Headroom added to a learned peak.
const HEADROOM: f64 = 1.10;
/// How many recent peaks are kept per key.
const KEPT: usize = 5;

/// What `learned.json` holds for a key: the recent peaks, oldest first. Files written before
/// the history was kept hold one number, read as a history of one.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum Peaks {
    One(u64),
    Recent(Vec<u64>),
}

impl Peaks {
    fn recent(self) -> Vec<u64> {
        match self {
            Peaks::One(peak) => vec![peak],
            Peaks::Recent(peaks) => peaks,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LearnedNeeds {
    dir: PathBuf,
}

impl LearnedNeeds {
    pub fn new(dir: PathBuf) -> Self {
        LearnedNeeds { dir }
    }

    /// The folder from `BATON_STATE_DIR`, else baton's cache (`~/.cache/baton`).
    pub fn from_env() -> Self {
        Self::new(baton_memory::cache_dir::baton_cache_dir(
            "BATON_STATE_DIR",
            "",
        ))
    }

    fn path(&self) -> PathBuf {
        self.dir.join("learned.json")
    }

    fn read(path: &Path) -> BTreeMap<String, Peaks> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The need to place `key` with: the highest recent peak plus headroom, if any was
    /// learned.
    pub fn need(&self, key: &str) -> Option<u64> {
        Self::read(&self.path())
            .remove(key)?
            .recent()
            .into_iter()
            .max()
            .map(|peak| (peak as f64 * HEADROOM) as u64)
    }

    /// Adds the peak of an attempt that succeeded as planned to `key`'s recent peaks.
    pub fn record(&self, key: &str, peak: u64) -> Result<(), RunnerError> {
        let io = |action, e| RunnerError::Io {
            action,
            path: self.dir.clone(),
            source: e,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io("cannot create", e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("learned.lock"))
            .map_err(|e| io("cannot open lock in", e))?;
        lock.lock().map_err(|e| io("cannot lock", e))?;
        let mut all = Self::read(&self.path());
        let mut recent = all.remove(key).map(Peaks::recent).unwrap_or_default();
        recent.push(peak);
        let drop = recent.len().saturating_sub(KEPT);
        recent.drain(..drop);
        all.insert(key.to_string(), Peaks::Recent(recent));
        let bytes = serde_json::to_vec_pretty(&all).expect("map serializes");
        write_atomic(&self.path(), &bytes).map_err(RunnerError::File)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_peak_comes_back_with_headroom() {
        let dir = tempfile::tempdir().unwrap();
        let learned = LearnedNeeds::new(dir.path().join("state"));
        assert_eq!(learned.need("images:flux"), None);
        learned.record("images:flux", 10 << 30).unwrap();
        learned.record("scenes:smollm2", 1 << 30).unwrap();
        assert_eq!(
            learned.need("images:flux"),
            Some(((10u64 << 30) as f64 * 1.1) as u64)
        );
        // A smaller run does not lower the need while the larger peak is recent.
        learned.record("images:flux", 8 << 30).unwrap();
        assert_eq!(
            learned.need("images:flux"),
            Some(((10u64 << 30) as f64 * 1.1) as u64)
        );
        // Once it is five runs old, it is forgotten.
        for _ in 0..4 {
            learned.record("images:flux", 8 << 30).unwrap();
        }
        assert_eq!(
            learned.need("images:flux"),
            Some(((8u64 << 30) as f64 * 1.1) as u64)
        );
        assert_eq!(
            learned.need("scenes:smollm2"),
            Some(((1u64 << 30) as f64 * 1.1) as u64)
        );
    }

    #[test]
    fn a_file_of_single_peaks_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("learned.json"),
            r#"{"images:images": 1000}"#,
        )
        .unwrap();
        let learned = LearnedNeeds::new(dir.path().to_path_buf());
        assert_eq!(learned.need("images:images"), Some(1100));
        learned.record("images:images", 500).unwrap();
        assert_eq!(learned.need("images:images"), Some(1100));
    }
}
