//! Weights kept in host memory and copied to the device a part at a time, for a model whose
//! weights do not fit the device's budget all at once (FLUX's transformer on a 24 GB card).
//!
//! [`HostWeights::load`] reads a checkpoint once, through the same lanes as a device load, into
//! one host buffer: page-locked (`cuMemHostAlloc`) when the device is a GPU, so that a part's
//! copy is a DMA at PCIe speed. [`HostWeights::upload`] starts copying a set of tensors to the
//! device on a copy stream of its own and returns at once; [`Upload::ready`] makes the compute
//! stream wait for that copy, so a caller uploads the next part while the current one computes.
//! The device memory is allocated on the compute stream, from its stream-ordered pool, after
//! whatever the caller freed before: a part dropped before the next upload is started lends it
//! its memory, and two parts are on the device at a time.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::header::Header;
use crate::{LoadOptions, LoadReport, WeightsError, pump};

/// One tensor of the host buffer.
#[derive(Debug, Clone)]
struct HostTensor {
    dtype: DType,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// The host buffer: page-locked for a GPU, ordinary memory otherwise.
enum Memory {
    Plain(Vec<u8>),
    #[cfg(feature = "cuda")]
    Pinned(crate::cuda::Pinned),
}

impl Memory {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Memory::Plain(v) => v.as_mut_ptr(),
            #[cfg(feature = "cuda")]
            Memory::Pinned(p) => p.ptr,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Memory::Plain(v) => v,
            // SAFETY: the allocation is `len` bytes, written whole by the load, then only read.
            #[cfg(feature = "cuda")]
            Memory::Pinned(p) => unsafe { std::slice::from_raw_parts(p.ptr, p.len) },
        }
    }
}

/// A checkpoint (one file or its shards) in host memory, for its tensors to be copied to
/// `device` a set at a time.
pub struct HostWeights {
    tensors: HashMap<String, HostTensor>,
    /// Dropped before the memory: its drop waits for the copies still reading it.
    #[cfg(feature = "cuda")]
    copier: Option<crate::cuda::Copier>,
    memory: Memory,
    device: Device,
}

// SAFETY: the buffer is written once by `load` and only read afterwards; the copy stream is
// used through `&self` by one upload at a time (callers hold `&mut`-free shared references, but
// CUDA streams accept work from any thread).
unsafe impl Send for HostWeights {}
unsafe impl Sync for HostWeights {}

/// Copies under way to the device: the tensors, usable once [`Upload::ready`] has ordered the
/// compute stream after the copies.
pub struct Upload {
    tensors: HashMap<String, Tensor>,
    #[cfg(feature = "cuda")]
    done: Option<(
        candle_core::CudaDevice,
        std::sync::Arc<crate::cuda::CopyDone>,
    )>,
    bytes: u64,
}

impl Upload {
    /// Bytes this upload moves.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The tensors, by name, in `dtype` (floats converted on the device): the device's compute
    /// stream waits for the copies before anything it runs next.
    pub fn ready(mut self, dtype: DType) -> Result<HashMap<String, Tensor>, WeightsError> {
        #[cfg(feature = "cuda")]
        if let Some((device, done)) = self.done.take() {
            done.order_after(&device)?;
        }
        let tensors = std::mem::take(&mut self.tensors);
        let mut out = HashMap::with_capacity(tensors.len());
        for (name, t) in tensors {
            let t = if t.dtype().is_float() && t.dtype() != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            out.insert(name, t);
        }
        Ok(out)
    }
}

impl Drop for Upload {
    /// Tensors dropped unread go back to the pool only after their copies: the compute stream
    /// waits for them first.
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some((device, done)) = self.done.take() {
            let _ = done.order_after(&device);
        }
    }
}

impl HostWeights {
    /// Reads every tensor of `paths` into host memory (page-locked when `device` is a GPU).
    pub fn load(
        paths: &[PathBuf],
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(HostWeights, LoadReport), WeightsError> {
        let started = Instant::now();
        let headers = paths
            .iter()
            .map(|p| Header::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let total: u64 = headers.iter().map(Header::data_bytes).sum();
        let allocating = Instant::now();
        let mut memory = match device {
            Device::Cpu => Memory::Plain(vec![0u8; total as usize]),
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => {
                Memory::Pinned(crate::cuda::Pinned::for_device(cuda, total as usize)?)
            }
            #[allow(unreachable_patterns)]
            other => return Err(WeightsError::Device(format!("{:?}", other.location()))),
        };
        let alloc_seconds = allocating.elapsed().as_secs_f64();
        let base = memory.as_mut_ptr();
        let mut tensors = HashMap::new();
        let mut offset = 0usize;
        let mut cached_before: Option<f64> = None;
        let staging = Instant::now();
        for header in &headers {
            let file = open(&header.path)?;
            let cached = baton_base::page_cache::resident_share(&file).ok();
            cached_before = match (cached_before, cached) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            baton_base::page_cache::advise_sequential(&file);
            let mut targets = Vec::with_capacity(header.tensors.len());
            for t in &header.tensors {
                if tensors.contains_key(&t.name) {
                    return Err(WeightsError::BadOffsets {
                        path: header.path.clone(),
                        tensor: t.name.clone(),
                        why: "another shard holds a tensor of this name too".into(),
                    });
                }
                let len = t.bytes() as usize;
                // SAFETY: offset + len <= total, the buffer's length.
                targets.push(pump::SharedPtr(unsafe { base.add(offset) }));
                tensors.insert(
                    t.name.clone(),
                    HostTensor {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        offset,
                        len,
                    },
                );
                offset += len;
            }
            let pump_options = pump::PumpOptions {
                mapped: false,
                ..options.pump()
            };
            let chunks = pump::chunks(header, pump_options.chunk_bytes);
            pump::run(
                header,
                &file,
                &chunks,
                &pump::HostSink { targets },
                pump_options,
            )?;
        }
        #[cfg(feature = "cuda")]
        let copier = match device {
            Device::Cuda(cuda) => Some(crate::cuda::Copier::new(cuda)?),
            _ => None,
        };
        let report = LoadReport {
            path: paths.first().cloned().unwrap_or_default(),
            tensors: tensors.len(),
            bytes: total,
            seconds: started.elapsed().as_secs_f64(),
            alloc_seconds,
            staging_seconds: staging.elapsed().as_secs_f64(),
            convert_seconds: 0.0,
            cached_before,
            lanes: options.lanes,
            chunk_bytes: options.effective_chunk_bytes(),
        };
        tracing::info!("into host memory: {report}");
        Ok((
            HostWeights {
                tensors,
                memory,
                device: device.clone(),
                #[cfg(feature = "cuda")]
                copier,
            },
            report,
        ))
    }

    /// The names of its tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Bytes the named tensors hold (as stored); unknown names count nothing.
    pub fn bytes_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u64 {
        names
            .into_iter()
            .filter_map(|n| self.tensors.get(n))
            .map(|t| t.len as u64)
            .sum()
    }

    /// Bytes held in host memory.
    pub fn bytes(&self) -> u64 {
        self.memory.bytes().len() as u64
    }

    /// Starts copying the named tensors to the device (on a GPU, on the copy stream; on the CPU,
    /// at once). Fails naming the first name it does not hold.
    pub fn upload<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Upload, WeightsError> {
        let mut parts = Vec::new();
        for name in names {
            let t = self
                .tensors
                .get(name)
                .ok_or_else(|| WeightsError::Missing(name.to_string()))?;
            parts.push((name, t));
        }
        let bytes = parts.iter().map(|(_, t)| t.len as u64).sum();
        let all = self.memory.bytes();
        match &self.device {
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => {
                let copier = self
                    .copier
                    .as_ref()
                    .expect("a GPU's host weights have a copier");
                let (tensors, done) = copier.upload(
                    cuda,
                    parts.iter().map(|(_, t)| {
                        (
                            t.dtype,
                            t.shape.as_slice(),
                            &all[t.offset..t.offset + t.len],
                        )
                    }),
                )?;
                Ok(Upload {
                    tensors: parts
                        .iter()
                        .map(|(n, _)| n.to_string())
                        .zip(tensors)
                        .collect(),
                    done: Some((cuda.clone(), done)),
                    bytes,
                })
            }
            _ => {
                let mut tensors = HashMap::with_capacity(parts.len());
                for (name, t) in parts {
                    let raw = &all[t.offset..t.offset + t.len];
                    tensors.insert(
                        name.to_string(),
                        Tensor::from_raw_buffer(raw, t.dtype, &t.shape, &self.device)?,
                    );
                }
                Ok(Upload {
                    tensors,
                    #[cfg(feature = "cuda")]
                    done: None,
                    bytes,
                })
            }
        }
    }
}

fn open(path: &Path) -> Result<File, WeightsError> {
    File::open(path).map_err(|source| WeightsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two shards in host memory: every tensor comes back as written, in the dtype asked for,
    /// and a name neither holds is an error that names it.
    #[test]
    fn host_weights_give_back_each_tensor_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        let c = Tensor::new(&[7u32, 8, 9], &Device::Cpu).unwrap();
        let one = dir.path().join("one.safetensors");
        let two = dir.path().join("two.safetensors");
        candle_core::safetensors::save(
            &HashMap::from([
                ("x.a".to_string(), a.clone()),
                ("x.c".to_string(), c.clone()),
            ]),
            &one,
        )
        .unwrap();
        candle_core::safetensors::save(&HashMap::from([("y.b".to_string(), b.clone())]), &two)
            .unwrap();
        let (host, report) =
            HostWeights::load(&[one, two], &Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(report.tensors, 3);
        assert_eq!(host.bytes(), 48 + 8 + 12);
        assert_eq!(host.bytes_of(["x.a", "y.b"]), 56);
        let got = host
            .upload(["y.b", "x.a", "x.c"])
            .unwrap()
            .ready(DType::F16)
            .unwrap();
        assert_eq!(got["x.a"].dtype(), DType::F16);
        assert_eq!(
            got["x.a"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            a.to_vec2::<f32>().unwrap()
        );
        assert_eq!(
            got["y.b"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [1.5, -2.0]
        );
        assert_eq!(
            got["x.c"].to_vec1::<u32>().unwrap(),
            [7, 8, 9],
            "integers stay integers"
        );
        match host.upload(["x.a", "z.missing"]) {
            Err(e) => assert!(e.to_string().contains("z.missing"), "{e}"),
            Ok(_) => panic!("an unknown name was uploaded"),
        }
    }
}
