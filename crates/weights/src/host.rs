//! Weights kept in host memory and copied to the device a part at a time, for a model whose
//! weights do not fit the device's budget all at once (FLUX's transformer on a 24 GB card).
//!
//! [`HostWeights::load`] reads a checkpoint into host memory, a group of tensors at a time (a
//! transformer block, say) on a few threads, in the order the groups will be used, and returns
//! at once: the first groups can be used while the later ones still load.
//! [`HostWeights::upload`] waits for the groups it needs, copies them (on several threads) into
//! one of two page-locked staging buffers, starts the DMA from there to the device on a copy
//! stream of its own and returns; [`Upload::ready`] makes the compute stream wait for that copy,
//! so a caller uploads the next part while the current one computes. Page-locking the whole
//! checkpoint instead was measured on an H200 host: 22 GiB took the driver 10 s, during which
//! the compute stream's calls waited. The device
//! memory is allocated on the compute stream, from its stream-ordered pool, after whatever the
//! caller freed before: a part dropped before the next upload is started lends it its memory,
//! and two parts are on the device at a time.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::header::{Header, TensorEntry};
use crate::{LoadReport, WeightsError};

/// Threads reading groups into host memory at once.
const LOADERS: usize = 4;

/// One tensor of a group's memory.
#[derive(Debug, Clone)]
struct HostTensor {
    dtype: DType,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

/// Where one tensor lies on disk.
struct OnDisk {
    file: usize,
    entry: TensorEntry,
    data_offset: u64,
}

/// A group as its loader left it.
enum Slot {
    Loading,
    /// Its bytes in ordinary host memory (pinning them all would cost the driver seconds per
    /// 10 GiB, during which it holds every other thread's CUDA calls; a GPU's copies go through
    /// the copier's two pinned staging buffers instead) and its tensors in them.
    Ready(Vec<u8>, HashMap<String, HostTensor>),
    Failed(String),
}

/// What the loaders and the users share.
struct Shared {
    slots: Vec<Mutex<Slot>>,
    loaded: Condvar,
    /// Guards nothing but the condition variable's waits.
    gate: Mutex<()>,
    cancel: AtomicBool,
    next: AtomicUsize,
    finished: Mutex<Option<Instant>>,
}

/// A checkpoint (one file or its shards) in host memory, in groups of tensors, for them to be
/// copied to `device` a set at a time.
pub struct HostWeights {
    group_of: HashMap<String, usize>,
    /// Dropped before the groups' memory: its drop waits for the copies still reading it.
    #[cfg(feature = "cuda")]
    copier: Option<crate::cuda::Copier>,
    shared: Arc<Shared>,
    loaders: Vec<std::thread::JoinHandle<()>>,
    device: Device,
    started: Instant,
    total: u64,
    tensors: usize,
    path: PathBuf,
}

/// Copies under way to the device: the tensors, usable once [`Upload::ready`] has ordered the
/// compute stream after the copies.
pub struct Upload {
    tensors: HashMap<String, Tensor>,
    #[cfg(feature = "cuda")]
    done: Option<(candle_core::CudaDevice, Arc<crate::cuda::CopyDone>)>,
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
    /// Starts reading every tensor of `paths` into host memory (page-locked when `device` is a
    /// GPU), in groups: the tensors for which `group` gives the same key, the groups in
    /// ascending key order, on a few threads. Returns once the headers are checked;
    /// [`HostWeights::upload`] waits for the groups it needs.
    pub fn load(
        paths: &[PathBuf],
        device: &Device,
        group: impl Fn(&str) -> usize,
    ) -> Result<HostWeights, WeightsError> {
        let started = Instant::now();
        let headers = paths
            .iter()
            .map(|p| Header::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut on_disk: HashMap<String, OnDisk> = HashMap::new();
        for (file, header) in headers.iter().enumerate() {
            for entry in &header.tensors {
                if on_disk.contains_key(&entry.name) {
                    return Err(WeightsError::BadOffsets {
                        path: header.path.clone(),
                        tensor: entry.name.clone(),
                        why: "another shard holds a tensor of this name too".into(),
                    });
                }
                on_disk.insert(
                    entry.name.clone(),
                    OnDisk {
                        file,
                        entry: entry.clone(),
                        data_offset: header.data_offset,
                    },
                );
            }
        }
        // Groups in ascending key order; within a group, tensors in file order.
        let mut keys: Vec<(usize, &String)> = on_disk.keys().map(|n| (group(n), n)).collect();
        keys.sort_by_key(|(k, n)| (*k, on_disk[*n].file, on_disk[*n].entry.start));
        let mut group_of = HashMap::new();
        let mut plan: Vec<Vec<String>> = Vec::new();
        let mut last = None;
        for (k, name) in keys {
            if last != Some(k) {
                plan.push(Vec::new());
                last = Some(k);
            }
            group_of.insert(name.clone(), plan.len() - 1);
            plan.last_mut().expect("pushed above").push(name.clone());
        }
        let total = on_disk.values().map(|t| t.entry.bytes()).sum();
        let files = paths
            .iter()
            .map(|p| open(p))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &files {
            baton_base::page_cache::advise_sequential(f);
        }
        let shared = Arc::new(Shared {
            slots: plan.iter().map(|_| Mutex::new(Slot::Loading)).collect(),
            loaded: Condvar::new(),
            gate: Mutex::new(()),
            cancel: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            finished: Mutex::new(None),
        });
        let work = Arc::new((plan, on_disk, files, paths.to_vec()));
        let loaders = (0..LOADERS.min(work.0.len()))
            .map(|_| {
                let (shared, work) = (shared.clone(), work.clone());
                std::thread::spawn(move || {
                    let (plan, on_disk, files, paths) = &*work;
                    loop {
                        let g = shared.next.fetch_add(1, Ordering::Relaxed);
                        if g >= plan.len() || shared.cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        let slot = match load_group(&plan[g], on_disk, files, paths) {
                            Ok((memory, tensors)) => Slot::Ready(memory, tensors),
                            Err(e) => Slot::Failed(e.to_string()),
                        };
                        *shared.slots[g].lock().expect("a loader panicked") = slot;
                        if g + 1 == plan.len()
                            || shared.slots.iter().all(|s| {
                                !matches!(*s.lock().expect("a loader panicked"), Slot::Loading)
                            })
                        {
                            shared
                                .finished
                                .lock()
                                .expect("a loader panicked")
                                .get_or_insert_with(Instant::now);
                        }
                        let _gate = shared.gate.lock().expect("a loader panicked");
                        shared.loaded.notify_all();
                    }
                })
            })
            .collect();
        #[cfg(feature = "cuda")]
        let copier = match device {
            Device::Cuda(cuda) => Some(crate::cuda::Copier::new(cuda)?),
            _ => None,
        };
        Ok(HostWeights {
            tensors: group_of.len(),
            group_of,
            #[cfg(feature = "cuda")]
            copier,
            shared,
            loaders,
            device: device.clone(),
            started,
            total,
            path: paths.first().cloned().unwrap_or_default(),
        })
    }

    /// The names of its tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.group_of.keys().map(String::as_str)
    }

    /// Bytes held in host memory once every group is loaded.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Waits for group `g`, then runs `f` on its memory and tensors.
    fn with_group<T>(
        &self,
        g: usize,
        f: impl FnOnce(&[u8], &HashMap<String, HostTensor>) -> Result<T, WeightsError>,
    ) -> Result<T, WeightsError> {
        loop {
            {
                let slot = self.shared.slots[g].lock().expect("a loader panicked");
                match &*slot {
                    Slot::Ready(memory, tensors) => return f(memory, tensors),
                    Slot::Failed(why) => {
                        return Err(WeightsError::Device(format!(
                            "loading '{}' into host memory: {why}",
                            self.path.display()
                        )));
                    }
                    Slot::Loading => {}
                }
            }
            let gate = self.shared.gate.lock().expect("a loader panicked");
            let still = matches!(
                *self.shared.slots[g].lock().expect("a loader panicked"),
                Slot::Loading
            );
            if still {
                let _ = self
                    .shared
                    .loaded
                    .wait_timeout(gate, std::time::Duration::from_millis(50));
            }
        }
    }

    /// Waits for every group: what the load moved, and how long it took to the last group.
    pub fn wait_all(&self) -> Result<LoadReport, WeightsError> {
        for g in 0..self.shared.slots.len() {
            self.with_group(g, |_, _| Ok(()))?;
        }
        let finished = self
            .shared
            .finished
            .lock()
            .expect("a loader panicked")
            .unwrap_or_else(Instant::now);
        Ok(LoadReport {
            path: self.path.clone(),
            tensors: self.tensors,
            bytes: self.total,
            seconds: finished.duration_since(self.started).as_secs_f64(),
            alloc_seconds: 0.0,
            staging_seconds: 0.0,
            convert_seconds: 0.0,
            cached_before: None,
            lanes: LOADERS,
            chunk_bytes: 0,
        })
    }

    /// Bytes the named tensors hold (as stored); unknown names count nothing.
    pub fn bytes_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> u64 {
        names
            .into_iter()
            .filter_map(|n| {
                let g = *self.group_of.get(n)?;
                self.with_group(g, |_, t| Ok(t[n].len as u64)).ok()
            })
            .sum()
    }

    /// Starts copying the named tensors to the device (on a GPU, on the copy stream; on the CPU,
    /// at once), once their groups are in host memory. Fails naming the first name it does not
    /// hold.
    pub fn upload<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Upload, WeightsError> {
        let mut by_group: Vec<(usize, Vec<&str>)> = Vec::new();
        for name in names {
            let g = *self
                .group_of
                .get(name)
                .ok_or_else(|| WeightsError::Missing(name.to_string()))?;
            match by_group.iter_mut().find(|(h, _)| *h == g) {
                Some((_, names)) => names.push(name),
                None => by_group.push((g, vec![name])),
            }
        }
        let mut upload = Upload {
            tensors: HashMap::new(),
            #[cfg(feature = "cuda")]
            done: None,
            bytes: 0,
        };
        for (g, names) in by_group {
            self.with_group(g, |memory, tensors| {
                let all = memory;
                let parts: Vec<(&str, &HostTensor)> =
                    names.iter().map(|n| (*n, &tensors[*n])).collect();
                upload.bytes += parts.iter().map(|(_, t)| t.len as u64).sum::<u64>();
                match &self.device {
                    #[cfg(feature = "cuda")]
                    Device::Cuda(cuda) => {
                        let copier = self
                            .copier
                            .as_ref()
                            .expect("a GPU's host weights have a copier");
                        let (made, done) = copier.upload(
                            cuda,
                            parts.iter().map(|(_, t)| {
                                (
                                    t.dtype,
                                    t.shape.as_slice(),
                                    &all[t.offset..t.offset + t.len],
                                )
                            }),
                        )?;
                        for ((n, _), t) in parts.iter().zip(made) {
                            upload.tensors.insert(n.to_string(), t);
                        }
                        // The last group's copies come after the earlier ones' on one stream.
                        upload.done = Some((cuda.clone(), done));
                    }
                    _ => {
                        for (n, t) in parts {
                            let raw = &all[t.offset..t.offset + t.len];
                            upload.tensors.insert(
                                n.to_string(),
                                Tensor::from_raw_buffer(raw, t.dtype, &t.shape, &self.device)?,
                            );
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(upload)
    }
}

impl Drop for HostWeights {
    fn drop(&mut self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
        for loader in self.loaders.drain(..) {
            let _ = loader.join();
        }
    }
}

/// Reads the tensors `names` into one new allocation, each after the other.
fn load_group(
    names: &[String],
    on_disk: &HashMap<String, OnDisk>,
    files: &[File],
    paths: &[PathBuf],
) -> Result<(Vec<u8>, HashMap<String, HostTensor>), WeightsError> {
    let len: u64 = names.iter().map(|n| on_disk[n].entry.bytes()).sum();
    let mut memory = vec![0u8; len as usize];
    let buf = &mut memory;
    let mut tensors = HashMap::with_capacity(names.len());
    let mut offset = 0usize;
    for name in names {
        let t = &on_disk[name];
        let n = t.entry.bytes() as usize;
        let at = t.data_offset + t.entry.start;
        files[t.file]
            .read_exact_at(&mut buf[offset..offset + n], at)
            .map_err(|source| WeightsError::Read {
                path: paths[t.file].clone(),
                offset: at,
                source,
            })?;
        tensors.insert(
            name.clone(),
            HostTensor {
                dtype: t.entry.dtype,
                shape: t.entry.shape.clone(),
                offset,
                len: n,
            },
        );
        offset += n;
    }
    Ok((memory, tensors))
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
        let group = |n: &str| match n {
            "y.b" => 0,
            "x.c" => 1,
            _ => 2,
        };
        let host = HostWeights::load(&[one, two], &Device::Cpu, group).unwrap();
        let report = host.wait_all().unwrap();
        assert_eq!(report.tensors, 3);
        assert_eq!(report.bytes, 48 + 8 + 12);
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
