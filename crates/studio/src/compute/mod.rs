//! Where a stage computes, opened: the CPU, or a GPU through this process's own CUDA context,
//! each with the memory backend that measures it.
//!
//! A key design decision: CUDA lives here, in the stage program's crates, and nowhere the
//! supervisor links. Cargo unifies features across everything one build compiles, so a `cuda`
//! feature on a crate the supervisor shares (the memory layer) would link CUDA into it too;
//! this module is its only home. Builds without the `cuda` feature get a stand-in
//! (`cuda_disabled.rs`) whose backend cannot be opened and says why.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_disabled.rs"]
pub mod cuda;

use std::sync::Arc;

use baton_memory::{DeviceChoice, DeviceKind, MemoryBackend, MemoryError};

pub use cuda::{COMPILED, CudaBackend, CudaBlock};

/// Where a stage computes, opened.
pub enum Compute {
    Cpu,
    /// A GPU, through this process's CUDA context (a `cuda` build).
    Cuda(Arc<CudaBackend>),
}

impl Compute {
    pub fn kind(&self) -> DeviceKind {
        match self {
            Compute::Cpu => DeviceKind::Cpu,
            Compute::Cuda(_) => DeviceKind::Gpu,
        }
    }

    /// The memory backend that measures this compute, and candle's device for it.
    pub fn open(&self) -> Result<(Arc<dyn MemoryBackend>, candle_core::Device), ComputeError> {
        Ok(match self {
            Compute::Cpu => (
                Arc::new(baton_memory::host::HostBackend::new()),
                candle_core::Device::Cpu,
            ),
            // The backend's own device: the process has one per GPU (`cuda::shared_device`), so
            // the kernels a warm-up loaded serve the stage, and a trim syncs the stage's stream.
            Compute::Cuda(cuda) => (cuda.clone(), cuda.device().clone()),
        })
    }

    /// Opens the compute `choice` names (`--compute`), and says where that is, for the
    /// stage's first line: `auto` is GPU 0 when a driver answers and this build has CUDA, else
    /// the CPU, with the reason. A GPU that was asked for and cannot be opened is an error
    /// (the machine's, not the input's); `sim` is refused, since simulated GPUs hold no
    /// tensors.
    pub fn choose(choice: DeviceChoice) -> Result<(Compute, String), ComputeError> {
        let cuda = || CudaBackend::open(0).map(|c| Compute::Cuda(Arc::new(c)));
        Ok(match choice {
            DeviceChoice::Cpu => (Compute::Cpu, "on the CPU (--compute cpu)".into()),
            DeviceChoice::Gpu => (cuda()?, "on GPU 0".into()),
            DeviceChoice::Sim => return Err(ComputeError::Simulated),
            DeviceChoice::Auto => match baton_memory::nvml::NvmlBackend::open() {
                Ok(_) if COMPILED => (cuda()?, "on GPU 0".into()),
                Ok(_) => (
                    Compute::Cpu,
                    "on the CPU: this baton was built without CUDA (rebuild with --features cuda)"
                        .into(),
                ),
                Err(why) => (Compute::Cpu, format!("on the CPU: {why}")),
            },
        })
    }
}

/// Why a compute device could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    #[error(
        "--compute sim: simulated GPUs only hold memory, they compute nothing; use gpu, cpu or auto"
    )]
    Simulated,
    // Boxed: the stages' error enums carry this one, and stay small.
    #[error(transparent)]
    Memory(Box<MemoryError>),
    #[error("cannot open the GPU for computing: {0}")]
    Device(Box<candle_core::Error>),
}

impl From<MemoryError> for ComputeError {
    fn from(e: MemoryError) -> Self {
        ComputeError::Memory(Box::new(e))
    }
}

impl baton_base::fault::Classify for ComputeError {
    fn fault(&self) -> baton_base::fault::Fault {
        match self {
            ComputeError::Simulated => baton_base::fault::Fault::Input,
            // A GPU that will not open is the machine's, never the input's.
            ComputeError::Memory(_) | ComputeError::Device(_) => baton_base::fault::Fault::Machine,
        }
    }
}
