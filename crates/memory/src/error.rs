//! The memory layer's one error type.
//!
//! Every variant carries the value or the device it is about, and its message says what to do
//! next, because these messages reach the user as they are. [`MemoryError::is_bad_input`] tells
//! the CLI which errors are the user's input (exit code 2) rather than the machine's state.

use std::path::PathBuf;
use std::time::Duration;

use baton_base::format_bytes;

/// An error from the memory layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// `BATON_SIM_GPUS` (or another simulated-GPU spec) could not be read.
    #[error(
        "bad simulated GPU spec '{value}': {why}; write it as COUNTxSIZE, or a comma-separated list of those, e.g. BATON_SIM_GPUS=4x24GiB"
    )]
    BadSimSpec { value: String, why: String },

    /// A device name other than the known backends.
    #[error(
        "unknown device '{value}': use one of auto, gpu, cpu, sim (nvml and cuda mean gpu, host means cpu)"
    )]
    UnknownBackend { value: String },

    /// A device index past the end of a backend's devices.
    #[error("no device {index} on {backend}: it has {count} device(s), numbered from 0")]
    NoSuchDevice {
        backend: &'static str,
        index: usize,
        count: usize,
    },

    /// No NVIDIA driver answered: the library is missing or the kernel module is not loaded.
    #[error("no NVIDIA driver found: {reason}")]
    DriverNotFound { reason: String },

    /// This build has no support for a backend.
    #[error(
        "{backend} support is not compiled into this build of baton; rebuild with --features {feature}"
    )]
    NotCompiled {
        backend: &'static str,
        feature: &'static str,
    },

    /// A CUDA driver call failed.
    #[error("CUDA call {call} failed: {message}")]
    Cuda { call: &'static str, message: String },

    /// NVML answered with an error.
    #[error("NVML call {call} failed: {message}")]
    Nvml { call: &'static str, message: String },

    /// A simulated allocation larger than the device's free memory, as CUDA would refuse it.
    #[error(
        "out of memory on {device}: asked for {}, {} free",
        format_bytes(*.requested),
        format_bytes(*.free)
    )]
    OutOfMemory {
        device: String,
        requested: u64,
        free: u64,
    },

    /// The simulated GPUs on disk differ from the ones asked for, while processes still hold memory.
    #[error(
        "simulated GPUs in {dir} are {existing}, but {requested} was asked for while processes still hold memory there; stop them, or point BATON_SIM_DIR at another folder"
    )]
    SimMismatch {
        dir: PathBuf,
        existing: String,
        requested: String,
    },

    /// A need that cannot fit on the device even when it is empty.
    #[error("{0}; it can never fit there: use a larger device or a smaller model")]
    NeverFits(crate::Availability),

    /// Waiting for memory took longer than allowed.
    #[error("{availability}; waited {}s without it coming free{holders} (raise the timeout, or stop what holds it)", .waited.as_secs())]
    WaitTimedOut {
        availability: crate::Availability,
        waited: Duration,
        /// Who held the most memory when the wait gave up, already formatted.
        holders: String,
    },

    /// A scope ended with more memory held than at its start.
    #[error("{0}")]
    Leak(Box<crate::ScopeReport>),

    /// Reading or writing a file failed.
    #[error("{action} '{}': {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file written whole, or a `/proc` read, that failed.
    #[error(transparent)]
    File(#[from] baton_base::FileError),

    /// A state file that is not what baton wrote.
    #[error("state file '{}' is corrupt ({why}); delete it to start afresh", .path.display())]
    CorruptState { path: PathBuf, why: String },
}

impl MemoryError {
    /// True when the error is about what the user wrote (a size, a spec, a device name), not
    /// about the machine. The CLI exits with code 2 for these.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            MemoryError::BadSimSpec { .. }
                | MemoryError::UnknownBackend { .. }
                | MemoryError::NoSuchDevice { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        MemoryError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl baton_base::fault::Classify for MemoryError {
    fn fault(&self) -> baton_base::fault::Fault {
        match self {
            MemoryError::File(e) => e.fault(),
            e if e.is_bad_input() => baton_base::fault::Fault::Input,
            _ => baton_base::fault::Fault::Machine,
        }
    }
}
