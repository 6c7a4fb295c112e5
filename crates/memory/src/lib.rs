//! baton's memory layer: one trait for "a pool of memory I can measure", its backends, and the
//! seed's VRAM API on top of it.
//!
//! A key design decision: the runner, the stages and the CLI see only [`MemoryBackend`]. NVIDIA
//! GPUs ([`nvml`]), host RAM ([`host`]) and simulated GPUs ([`sim`]) each implement it once, so
//! every check and proof written against the trait works on all of them, and CI, which has no
//! GPU, exercises the same code with real processes on simulated devices.
//!
//! The seed's `gpu_manager.py`, in Rust terms:
//!
//! | seed | here |
//! | --- | --- |
//! | `get_vram_stats()` | [`MemoryBackend::snapshot`] |
//! | `log_vram_stats(label)` | [`log_snapshot`] |
//! | `check_vram_availability()` | [`check_available`] → [`Availability`] |
//! | (waiting by hand) | [`wait_available`] |
//! | `VRAMContext` | [`MemoryScope`] → [`ScopeReport`] |
//! | `@managed_execution` | [`managed`] |
//! | `force_cleanup()` / `cleanup_model()` | [`cleanup`] / [`cleanup_model`] → [`Freed`] |

mod availability;
mod backend;
pub mod bench;
pub mod cache_dir;
mod error;
pub mod host;
#[cfg(feature = "nvml")]
pub mod nvml;
#[cfg(not(feature = "nvml"))]
#[path = "nvml_disabled.rs"]
pub mod nvml;
pub mod peak;
mod scope;
pub mod sim;
mod snapshot;

pub use availability::{
    Availability, DEFAULT_USABLE_FRACTION, Verdict, WAIT_POLL, check_available, wait_available,
};
pub use backend::{DeviceChoice, DeviceKind, MemoryBackend, Opened, open};
pub use error::MemoryError;
pub use scope::{
    DEFAULT_SETTLE, DEFAULT_TOLERANCE, Freed, MemoryScope, ScopeReport, cleanup, cleanup_model,
    managed,
};
pub use snapshot::{BackendKind, DeviceSnapshot, ProcessMemory, Sensors, log_snapshot};
