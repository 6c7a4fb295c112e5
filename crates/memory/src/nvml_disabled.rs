//! Stand-in for the NVML backend in builds without the `nvml` feature, so every caller still
//! compiles and a request for NVML says plainly that this build cannot do it.

use crate::{BackendKind, DeviceSnapshot, MemoryBackend, MemoryError};

/// What a process with a CUDA context costs on a current NVIDIA card before it allocates
/// anything: the context, its kernels, and (in a candle stage) the quantized matmul workspaces
/// the warm-up grows. Measured: 591.6 MiB for a prepared PyTorch process, 782.8 MiB for the
/// scenes stage's baseline (H100, docs/gpu/prestart-h100.md); rounded up.
pub const CUDA_CONTEXT_OVERHEAD: u64 = 800 << 20;

/// Never constructed: [`NvmlBackend::open`] always fails in this build.
pub struct NvmlBackend(());

impl NvmlBackend {
    pub fn open() -> Result<Self, MemoryError> {
        Err(MemoryError::NotCompiled {
            backend: "NVML",
            feature: "nvml",
        })
    }
}

impl MemoryBackend for NvmlBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nvml
    }

    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError> {
        unreachable!("NvmlBackend cannot be constructed without the nvml feature")
    }

    fn context_overhead(&self) -> u64 {
        CUDA_CONTEXT_OVERHEAD
    }
}
