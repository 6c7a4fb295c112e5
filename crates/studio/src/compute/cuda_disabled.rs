//! Stand-in for the CUDA backend in builds without the `cuda` feature: every caller still
//! compiles, and asking for CUDA says plainly that this build cannot do it.

use baton_memory::{BackendKind, DeviceSnapshot, MemoryBackend, MemoryError};

/// False: this build has no CUDA support.
pub const COMPILED: bool = false;

/// Never constructed: [`CudaBackend::open`] always fails in this build.
pub struct CudaBackend(());

impl CudaBackend {
    pub fn open(_ordinal: usize) -> Result<Self, MemoryError> {
        Err(MemoryError::NotCompiled {
            backend: "CUDA",
            feature: "cuda",
        })
    }
}

impl MemoryBackend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError> {
        unreachable!("CudaBackend cannot be constructed without the cuda feature")
    }

    fn context_overhead(&self) -> u64 {
        baton_memory::nvml::CUDA_CONTEXT_OVERHEAD
    }
}

/// Never constructed in this build.
pub struct CudaBlock(());

impl CudaBackend {
    pub fn device(&self) -> &candle_core::Device {
        unreachable!("CudaBackend cannot be constructed without the cuda feature")
    }

    pub fn fill_random(&self, _bytes: u64) -> Result<CudaBlock, MemoryError> {
        unreachable!("CudaBackend cannot be constructed without the cuda feature")
    }
}
