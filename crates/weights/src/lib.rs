//! Weights at line rate: a safetensors or GGUF file streamed into candle tensors through a few
//! lanes of staging buffers, on the GPU through pinned memory and CUDA streams, at close to what
//! PCIe carries, instead of candle's default page-by-page pageable copy.
//!
//! In a pipeline where every model runs in its own process, every stage loads its weights
//! again; this is what makes that cheap. The tensors are candle's own, handed to models through
//! a [`candle_nn::VarBuilder`], so every candle model in baton loads through here. A dtype the
//! model wants instead (bf16 weights for an f16 model) is converted on the device, after the
//! copy. Every load reports bytes, seconds and GB/s ([`LoadReport`]).

pub mod bench;
pub mod gguf;
pub mod header;
pub mod host;
pub mod pump;

#[cfg(feature = "cuda")]
mod cuda;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

pub use gguf::{GgufLoaded, load_gguf, load_gguf_from, read_gguf};
pub use header::{Header, TensorEntry};
pub use host::{HostWeights, Upload};

/// Errors of a load; each names the file, and the tensor where one is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    #[error("cannot open '{}': {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{}' is not a usable safetensors file: {why}", .path.display())]
    BadHeader { path: PathBuf, why: String },
    #[error("'{}' is not a usable GGUF file: {why}; fetch or convert it again", .path.display())]
    BadGguf { path: PathBuf, why: String },
    #[error("'{}': tensor '{tensor}': {why}; fetch or convert the file again", .path.display())]
    BadOffsets {
        path: PathBuf,
        tensor: String,
        why: String,
    },
    #[error("'{}': tensor '{tensor}' has dtype {dtype}, which baton cannot load; convert the file to one of U8 U32 I16 I32 I64 BF16 F16 F32 F64", .path.display())]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("reading '{}' at byte {offset} failed: {source}", .path.display())]
    Read {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error(
        "the weights hold no tensor '{0}'; the checkpoint does not match the model it is loaded for"
    )]
    Missing(String),
    #[error("CUDA call {call} failed: {message}")]
    Cuda { call: &'static str, message: String },
    #[error("the load cannot target {0}; use the CPU or, in a cuda build, a CUDA device")]
    Device(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    File(#[from] baton_base::FileError),
}

impl baton_base::fault::Classify for WeightsError {
    /// A weights file that is missing, damaged or of a dtype baton cannot load is the file the
    /// user gave; a read, a CUDA call or a device that fails is the machine's.
    fn fault(&self) -> baton_base::fault::Fault {
        use baton_base::fault::Fault;
        match self {
            WeightsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Fault::Input
            }
            WeightsError::BadHeader { .. }
            | WeightsError::BadGguf { .. }
            | WeightsError::BadOffsets { .. }
            | WeightsError::UnsupportedDtype { .. }
            | WeightsError::Missing(_) => Fault::Input,
            _ => Fault::Machine,
        }
    }
}

/// How a load is cut up; the defaults suit a PCIe Gen5 GPU and a file in the page cache.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Threads reading the file in parallel, each with its own staging buffers (and stream).
    pub lanes: usize,
    /// Bytes read by one `pread` and copied as one batch.
    pub chunk_bytes: usize,
    /// Staging buffers per lane.
    pub slots: usize,
    /// Float tensors of another float dtype are converted to this one, on the device.
    pub dtype: Option<DType>,
    /// On a GPU: how many of the lanes pin the file's pages where they lie in the page cache
    /// and copy from there, instead of reading them into pinned staging buffers first (0: none;
    /// `lanes` or more: all). The two kinds spend different things (a CPU copy; the driver
    /// pinning pages); on an H200 host any direct lanes made the load slower (docs/weights.md).
    pub direct_lanes: usize,
    /// Copy chunks out of a memory mapping of the file (page faults, then a user-space copy)
    /// instead of `pread`ing them (a kernel copy per page). As fast as `pread` on an H200 host,
    /// but a file cut short under the mapping raises SIGBUS instead of an error.
    pub mapped: bool,
    /// On a GPU: staging buffers in write-combined pinned memory (the CPU's writes bypass its
    /// caches; the GPU's reads need not snoop them). No faster on an H200 host.
    pub write_combined: bool,
}

impl LoadOptions {
    /// The chunk size a load uses: whole pages when any lane pins pages in place (each chunk's
    /// pages are pinned on their own).
    pub fn effective_chunk_bytes(&self) -> usize {
        if self.direct_lanes > 0 {
            self.chunk_bytes
                .max(1)
                .next_multiple_of(baton_base::page_cache::page_size())
        } else {
            self.chunk_bytes
        }
    }

    /// The pump's share of these options.
    pub(crate) fn pump(&self) -> pump::PumpOptions {
        pump::PumpOptions {
            lanes: self.lanes,
            chunk_bytes: self.effective_chunk_bytes(),
            slots: self.slots,
            mapped: self.mapped,
            write_combined: self.write_combined,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Measured on an H200 host (docs/gpu/load-h200.md): 8 to 12 lanes of 2 MiB chunks
        // read the page cache fastest; larger chunks lose more to pinning than they gain.
        LoadOptions {
            lanes: cores.clamp(2, 12),
            chunk_bytes: 2 << 20,
            slots: 2,
            dtype: None,
            direct_lanes: 0,
            mapped: false,
            write_combined: false,
        }
    }
}

/// What a load moved and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// From opening the file to the last tensor ready on the device (allocation included).
    pub seconds: f64,
    /// Of which: allocating the tensors' memory.
    pub alloc_seconds: f64,
    /// Of which: the slowest lane setting up its staging buffers (pinning them, on a GPU).
    pub staging_seconds: f64,
    /// Of which: converting dtypes on the device.
    pub convert_seconds: f64,
    /// Share of the file in the page cache when the load began (0..=1), if it could be seen.
    pub cached_before: Option<f64>,
    pub lanes: usize,
    pub chunk_bytes: usize,
}

impl LoadReport {
    pub fn gb_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e9
    }

    /// The line a stage prints so the runner records this load in the run's manifest.
    pub fn stage_line(&self) -> baton_base::protocol::StageLine {
        baton_base::protocol::StageLine::load(
            self.path.display().to_string(),
            self.bytes,
            self.seconds,
        )
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} tensors, {:.2} GB from {} in {:.3}s: {:.1} GB/s",
            self.tensors,
            self.bytes as f64 / 1e9,
            self.path.display(),
            self.seconds,
            self.gb_per_second()
        )?;
        if let Some(c) = self.cached_before {
            write!(f, " ({:.0}% in the page cache before)", c * 100.0)?;
        }
        Ok(())
    }
}

/// The tensors of a file, by name, and the report of their load.
pub struct Loaded {
    pub tensors: HashMap<String, Tensor>,
    pub report: LoadReport,
}

impl Loaded {
    /// A `VarBuilder` over the loaded tensors, for candle's model constructors.
    pub fn var_builder(self, dtype: DType, device: &Device) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_tensors(self.tensors, dtype, device)
    }
}

/// Loads every tensor of several safetensors files (one checkpoint in shards) onto `device`,
/// one after the other: one set of tensors, and one report that sums the shards' bytes and
/// times (named after the first file).
pub fn load_safetensors_files(
    paths: &[PathBuf],
    device: &Device,
    options: &LoadOptions,
) -> Result<Loaded, WeightsError> {
    let mut all: Option<Loaded> = None;
    for path in paths {
        let one = load_safetensors(path, device, options)?;
        match &mut all {
            None => all = Some(one),
            Some(all) => {
                let (r, o) = (&mut all.report, &one.report);
                r.tensors += o.tensors;
                r.bytes += o.bytes;
                r.seconds += o.seconds;
                r.alloc_seconds += o.alloc_seconds;
                r.staging_seconds += o.staging_seconds;
                r.convert_seconds += o.convert_seconds;
                r.cached_before = match (r.cached_before, o.cached_before) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
                all.tensors.extend(one.tensors);
            }
        }
    }
    all.ok_or_else(|| WeightsError::Device("no weights files were given".into()))
}

/// Loads every tensor of the safetensors file at `path` onto `device`.
pub fn load_safetensors(
    path: &Path,
    device: &Device,
    options: &LoadOptions,
) -> Result<Loaded, WeightsError> {
    let started = Instant::now();
    let header = Header::read(path)?;
    let file = File::open(path).map_err(|source| WeightsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let cached_before = baton_base::page_cache::resident_share(&file).ok();
    baton_base::page_cache::advise_sequential(&file);
    let pump_options = options.pump();
    let chunks = pump::chunks(&header, pump_options.chunk_bytes);
    let (tensors, times) = match device {
        Device::Cpu => load_host(&header, &file, &chunks, pump_options)?,
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => cuda::load(
            &header,
            &file,
            &chunks,
            pump_options,
            cuda,
            options.direct_lanes,
        )?,
        #[allow(unreachable_patterns)]
        other => return Err(WeightsError::Device(format!("{:?}", other.location()))),
    };
    let converting = Instant::now();
    let mut named = HashMap::with_capacity(tensors.len());
    for (entry, tensor) in header.tensors.iter().zip(tensors) {
        let tensor = match options.dtype {
            Some(want) if want.is_float() && entry.dtype.is_float() && entry.dtype != want => {
                tensor.to_dtype(want)?
            }
            _ => tensor,
        };
        named.insert(entry.name.clone(), tensor);
    }
    device.synchronize()?;
    let report = LoadReport {
        path: path.to_path_buf(),
        tensors: header.tensors.len(),
        bytes: header.data_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        alloc_seconds: times.alloc_seconds,
        staging_seconds: times.staging_seconds,
        convert_seconds: converting.elapsed().as_secs_f64(),
        cached_before,
        lanes: options.lanes,
        chunk_bytes: options.effective_chunk_bytes(),
    };
    tracing::info!("{report}");
    Ok(Loaded {
        tensors: named,
        report,
    })
}

/// Host-to-device bandwidth in bytes per second from pinned (or pageable) host memory, `bytes`
/// at a time; `None` when `device` is not a GPU.
pub fn h2d_bandwidth(
    device: &Device,
    bytes: usize,
    pinned: bool,
    repeat: usize,
) -> Result<Option<f64>, WeightsError> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => cuda::h2d_bandwidth(cuda, bytes, pinned, repeat).map(Some),
        _ => {
            let _ = (bytes, pinned, repeat);
            Ok(None)
        }
    }
}

/// What pinning ordinary host memory in place costs, and what it then carries.
#[derive(Debug, Clone, Copy)]
pub struct RegisteredProbe {
    /// `cuMemHostRegister` of the whole buffer.
    pub register_seconds: f64,
    /// Host-to-device bytes per second from it, once registered.
    pub copy_rate: f64,
}

/// Anonymous host memory of `bytes` (backed by huge pages where `huge` and the kernel allows),
/// touched, then registered with the driver in one call and copied to the device `repeat`
/// times: what a resident host cache of weights, pinned once per stage, would cost and carry.
/// `None` when `device` is not a GPU.
pub fn registered_h2d(
    device: &Device,
    bytes: usize,
    huge: bool,
    repeat: usize,
) -> Result<Option<RegisteredProbe>, WeightsError> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => cuda::registered_h2d(cuda, bytes, huge, repeat).map(Some),
        _ => {
            let _ = (bytes, huge, repeat);
            Ok(None)
        }
    }
}

/// Where a device path's time went.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathTimes {
    pub alloc_seconds: f64,
    pub staging_seconds: f64,
}

/// The host path: one buffer per tensor, filled by the pump.
pub(crate) fn fill_host(
    header: &Header,
    file: &File,
    chunks: &[pump::Chunk],
    options: pump::PumpOptions,
) -> Result<(Vec<Vec<u8>>, PathTimes), WeightsError> {
    let allocating = Instant::now();
    let mut buffers: Vec<Vec<u8>> = header
        .tensors
        .iter()
        .map(|t| vec![0u8; t.bytes() as usize])
        .collect();
    let sink = pump::HostSink {
        targets: buffers
            .iter_mut()
            .map(|b| pump::SharedPtr(b.as_mut_ptr()))
            .collect(),
    };
    let alloc_seconds = allocating.elapsed().as_secs_f64();
    let staging_seconds = pump::run(header, file, chunks, &sink, options)?;
    Ok((
        buffers,
        PathTimes {
            alloc_seconds,
            staging_seconds,
        },
    ))
}

/// The host path for safetensors: the filled buffers handed to candle as tensors.
fn load_host(
    header: &Header,
    file: &File,
    chunks: &[pump::Chunk],
    options: pump::PumpOptions,
) -> Result<(Vec<Tensor>, PathTimes), WeightsError> {
    let (buffers, times) = fill_host(header, file, chunks, options)?;
    let tensors = header
        .tensors
        .iter()
        .zip(&buffers)
        .map(|(t, bytes)| {
            Ok(Tensor::from_raw_buffer(
                bytes,
                t.dtype,
                &t.shape,
                &Device::Cpu,
            )?)
        })
        .collect::<Result<_, WeightsError>>()?;
    Ok((tensors, times))
}
