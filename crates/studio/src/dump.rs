//! What a stage computed, written out for a comparison with a reference implementation
//! (`--dump DIR` on the images and voice stages; `scripts/gpu/parity.py` reads it).
//!
//! Tensors are kept in host memory while a phase runs and written, as one safetensors file per
//! phase, when the phase ends: whole or not at all. Every tensor is f32 (ids and codes stay u32);
//! names are `scene{N}.{what}`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

/// Why a dump could not be kept or written.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot make the dump folder '{}': {source}; pass a writable --dump DIR", .path.display())]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot copy a tensor for the dump: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("cannot serialise the dump: {0}")]
    Serialise(String),
    #[error(transparent)]
    File(#[from] baton_base::FileError),
}

impl baton_base::fault::Classify for DumpError {
    /// The folder is the user's; the rest is the machine's.
    fn fault(&self) -> baton_base::fault::Fault {
        match self {
            DumpError::Unwritable { .. } => baton_base::fault::Fault::Input,
            DumpError::File(e) => e.fault(),
            DumpError::Tensor(_) | DumpError::Serialise(_) => baton_base::fault::Fault::Machine,
        }
    }
}

/// What the phases produced, gathered for `--dump DIR`.
pub struct Dump {
    dir: PathBuf,
    gathered: Mutex<Vec<(String, Tensor)>>,
    /// Text every file carries in its header's metadata (the run's dtype, the texts spoken).
    notes: Mutex<std::collections::HashMap<String, String>>,
}

impl Dump {
    /// A dump into `dir` (made if missing).
    pub fn new(dir: &Path) -> Result<Dump, DumpError> {
        std::fs::create_dir_all(dir).map_err(|source| DumpError::Unwritable {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Dump {
            dir: dir.to_path_buf(),
            gathered: Mutex::new(Vec::new()),
            notes: Mutex::default(),
        })
    }

    /// Notes `text` as `key` in the metadata of every file written from now on.
    pub fn note(&self, key: &str, text: &str) {
        self.notes
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), text.to_string());
    }

    /// Keeps a host copy of `t` (f32, or u32 for ids) as `scene{scene}.{what}`.
    pub fn keep(&self, scene: u32, what: &str, t: &Tensor) -> Result<(), DumpError> {
        let t = match t.dtype() {
            DType::U32 | DType::F32 => t.to_device(&Device::Cpu)?,
            _ => t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
        };
        self.gathered
            .lock()
            .expect("not poisoned")
            .push((format!("scene{scene}.{what}"), t));
        Ok(())
    }

    /// Writes what was kept since the last call as `{phase}.safetensors`, whole or not at all.
    pub fn write(&self, phase: &str) -> Result<(), DumpError> {
        let gathered = std::mem::take(&mut *self.gathered.lock().expect("not poisoned"));
        let path = self.dir.join(format!("{phase}.safetensors"));
        let tensors: std::collections::HashMap<String, Tensor> = gathered.into_iter().collect();
        let notes = self.notes.lock().expect("not poisoned").clone();
        let notes = (!notes.is_empty()).then_some(notes);
        let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), notes)
            .map_err(|e| DumpError::Serialise(e.to_string()))?;
        baton_base::atomic_file::write_atomic(&path, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_writes_each_phase_whole_and_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let dump = Dump::new(&dir.path().join("d")).unwrap();
        let t = Tensor::ones((2, 3), DType::F16, &Device::Cpu).unwrap();
        dump.keep(1, "text0", &t).unwrap();
        dump.write("text").unwrap();
        dump.note("dtype", "f16");
        dump.keep(1, "step1.pred", &t).unwrap();
        dump.write("denoise").unwrap();
        let text =
            candle_core::safetensors::load(dir.path().join("d/text.safetensors"), &Device::Cpu)
                .unwrap();
        assert_eq!(text.keys().collect::<Vec<_>>(), ["scene1.text0"]);
        assert_eq!(text["scene1.text0"].dtype(), DType::F32);
        let denoise =
            candle_core::safetensors::load(dir.path().join("d/denoise.safetensors"), &Device::Cpu)
                .unwrap();
        assert_eq!(denoise.keys().collect::<Vec<_>>(), ["scene1.step1.pred"]);
        let bytes = std::fs::read(dir.path().join("d/denoise.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let notes = header.metadata().as_ref().unwrap();
        assert_eq!(notes["dtype"], "f16");
    }
}
