//! Memory needs learned from earlier runs: the peak a stage reached last time, per stage and
//! model, kept in `learned.json` in baton's state folder (`BATON_STATE_DIR`, else
//! `~/.cache/baton`). A stage whose pipeline says `memory = "learn"` is placed with that peak
//! plus 10% headroom.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use baton_base::atomic_file::write_atomic;

use crate::RunnerError;

/// Headroom added to a learned peak.
const HEADROOM: f64 = 1.10;

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

    fn read(path: &Path) -> BTreeMap<String, u64> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The need to place `key` with: the learned peak plus headroom, if any was learned.
    pub fn need(&self, key: &str) -> Option<u64> {
        Self::read(&self.path())
            .get(key)
            .map(|&peak| (peak as f64 * HEADROOM) as u64)
    }

    /// Stores the peak of a successful attempt.
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
        all.insert(key.to_string(), peak);
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
        learned.record("images:flux", 8 << 30).unwrap();
        assert_eq!(
            learned.need("images:flux"),
            Some(((8u64 << 30) as f64 * 1.1) as u64)
        );
    }
}
