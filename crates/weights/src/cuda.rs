//! The GPU side of a load: each lane owns a CUDA stream and pinned staging buffers; a chunk read
//! into one buffer is copied to its tensors with `cuMemcpyHtoDAsync` (DMA at PCIe speed, because
//! the source is page-locked) while the lane reads the next chunk into its other buffer.
//!
//! Device memory is allocated uninitialised through candle's device (its stream-ordered pool)
//! and wrapped as candle storage, so the tensors are ordinary candle tensors. The lanes' streams
//! are synchronised before any tensor is handed out; on an error every buffer is dropped, so the
//! device memory returns to the pool and a scope guard's trim gives it back.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, result, sys,
};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, DType, Storage, Tensor};

use crate::WeightsError;
use crate::header::Header;
use crate::pump::{self, Chunk, PumpOptions, Sink, Source};

fn cuda_err(call: &'static str) -> impl Fn(result::DriverError) -> WeightsError {
    move |e| WeightsError::Cuda {
        call,
        message: format!("{e:?}"),
    }
}

/// A new stream in `device`'s context, made current on this thread first.
fn new_stream(device: &CudaDevice) -> Result<Arc<CudaStream>, WeightsError> {
    let context = device.cuda_stream().context().clone();
    context
        .bind_to_thread()
        .map_err(cuda_err("cuCtxSetCurrent"))?;
    context.new_stream().map_err(cuda_err("cuStreamCreate"))
}

/// Page-locked host memory from `cuMemHostAlloc`, freed on drop.
pub(crate) struct Pinned {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
}

// SAFETY: a plain allocation owned by one lane at a time.
unsafe impl Send for Pinned {}

impl Pinned {
    /// `write_combined`: the CPU's writes bypass its caches and the GPU reads the memory
    /// without snooping them (`CU_MEMHOSTALLOC_WRITECOMBINED`); otherwise ordinary cached
    /// pinned memory.
    fn new(len: usize, write_combined: bool) -> Result<Pinned, WeightsError> {
        let flags = if write_combined {
            sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: the context is current on this thread.
        let ptr = unsafe { result::malloc_host(len.max(1), flags) }
            .map_err(cuda_err("cuMemHostAlloc"))?;
        Ok(Pinned {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

impl Pinned {
    /// `len` bytes of ordinary (cached) page-locked memory for copies to `device`, allocated
    /// with its context current on this thread.
    pub(crate) fn for_device(device: &CudaDevice, len: usize) -> Result<Pinned, WeightsError> {
        device
            .cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(cuda_err("cuCtxSetCurrent"))?;
        Pinned::new(len, false)
    }
}

// SAFETY: after the load writes it, the memory is only read (by copies and by `bytes`).
unsafe impl Sync for Pinned {}

/// A stream that copies host weights to the device beside the compute stream, through two
/// page-locked staging buffers used in turn: one fills (a CPU copy) while the other's DMA runs.
pub(crate) struct Copier {
    stream: Arc<CudaStream>,
    slots: std::sync::Mutex<[Staging; 2]>,
    turn: std::sync::atomic::AtomicUsize,
}

/// A staging buffer and the event after the last DMA out of it.
#[derive(Default)]
struct Staging {
    pinned: Option<Pinned>,
    done: Option<Arc<CopyDone>>,
}

/// The event after an upload's copies; dropping it is safe at any time (CUDA keeps an event's
/// pending work).
pub(crate) struct CopyDone(CudaEvent);

// SAFETY: an event may be waited on from any thread.
unsafe impl Send for CopyDone {}
unsafe impl Sync for CopyDone {}

impl CopyDone {
    /// Orders everything `device`'s compute stream runs from now on after the copies.
    pub(crate) fn order_after(&self, device: &CudaDevice) -> Result<(), WeightsError> {
        device
            .cuda_stream()
            .wait(&self.0)
            .map_err(cuda_err("cuStreamWaitEvent"))
    }
}

/// Threads copying into a staging buffer at once.
const COPY_THREADS: usize = 8;

/// Copies each `(source, offset)` into `target` at its offset, on a few threads.
fn copy_parallel(parts: &[(&[u8], usize)], target: &mut [u8]) {
    const PIECE: usize = 16 << 20;
    let mut pieces: Vec<(&[u8], usize)> = Vec::new();
    for (src, at) in parts {
        for (i, chunk) in src.chunks(PIECE).enumerate() {
            pieces.push((chunk, at + i * PIECE));
        }
    }
    let base = crate::pump::SharedPtr(target.as_mut_ptr());
    let len = target.len();
    std::thread::scope(|scope| {
        for t in 0..COPY_THREADS.min(pieces.len()) {
            let pieces = &pieces;
            scope.spawn(move || {
                let base = base;
                for (src, at) in pieces.iter().skip(t).step_by(COPY_THREADS) {
                    assert!(
                        at + src.len() <= len,
                        "a piece lies inside the staging buffer"
                    );
                    // SAFETY: pieces cover disjoint ranges of the target (the parts are laid
                    // out one after another), each inside it (checked above).
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), base.0.add(*at), src.len())
                    };
                }
            });
        }
    });
}

impl Copier {
    pub(crate) fn new(device: &CudaDevice) -> Result<Copier, WeightsError> {
        let stream = new_stream(device)?;
        Ok(Copier {
            stream,
            slots: Default::default(),
            turn: Default::default(),
        })
    }

    /// Copies the parts into a staging buffer (once the DMA from it two uploads ago is done),
    /// allocates each on the compute stream (after what it freed before) and copies it there on
    /// the copy stream, once the compute stream has reached the allocation. Returns the tensors
    /// (not to be read before [`CopyDone::order_after`]) and the event after the copies.
    pub(crate) fn upload<'a>(
        &self,
        device: &CudaDevice,
        parts: impl Iterator<Item = (DType, &'a [usize], &'a [u8])>,
    ) -> Result<(Vec<Tensor>, Arc<CopyDone>), WeightsError> {
        let parts: Vec<_> = parts.collect();
        let total: usize = parts.iter().map(|(_, _, b)| b.len()).sum();
        let mut slots = self.slots.lock().expect("an upload panicked");
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2;
        let slot = &mut slots[turn];
        if let Some(done) = slot.done.take() {
            done.0
                .synchronize()
                .map_err(cuda_err("cuEventSynchronize"))?;
        }
        if slot.pinned.as_ref().is_none_or(|p| p.len < total) {
            slot.pinned = None;
            slot.pinned = Some(Pinned::for_device(device, total)?);
        }
        let pinned = slot.pinned.as_mut().expect("allocated above");
        // SAFETY: the buffer is `len` bytes and no DMA reads it (its last one is done, above).
        let staged = unsafe { std::slice::from_raw_parts_mut(pinned.ptr, pinned.len) };
        let mut at = 0;
        let mut layout = Vec::with_capacity(parts.len());
        for (_, _, bytes) in &parts {
            layout.push((*bytes, at));
            at += bytes.len();
        }
        copy_parallel(&layout, staged);
        let compute = device.cuda_stream();
        let mut tensors = Vec::new();
        let mut copies = Vec::new();
        for ((dtype, shape, bytes), (_, at)) in parts.iter().zip(&layout) {
            let count = shape.iter().product::<usize>();
            let (storage, ptr) = alloc_dtype(device, *dtype, count)?;
            tensors.push(Tensor::from_storage(
                Storage::Cuda(storage),
                shape.to_vec(),
                BackpropOp::none(),
                false,
            ));
            copies.push((ptr, &staged[*at..*at + bytes.len()]));
        }
        let allocated = compute
            .record_event(None)
            .map_err(cuda_err("cuEventRecord"))?;
        self.stream
            .wait(&allocated)
            .map_err(cuda_err("cuStreamWaitEvent"))?;
        let stream = self.stream.cu_stream();
        for (ptr, bytes) in copies {
            // SAFETY: the destination was allocated for exactly these bytes; the source is the
            // staging buffer, page-locked, untouched until the event recorded below has fired
            // (the next upload into it waits for that), and freed only after the copy stream is
            // synchronised (the copier's drop).
            unsafe { result::memcpy_htod_async(ptr, bytes, stream) }
                .map_err(cuda_err("cuMemcpyHtoDAsync"))?;
        }
        let done = Arc::new(CopyDone(
            self.stream
                .record_event(None)
                .map_err(cuda_err("cuEventRecord"))?,
        ));
        slot.done = Some(done.clone());
        Ok((tensors, done))
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        // No copy may still read the staging buffers once they are freed.
        let _ = self.stream.synchronize();
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc above and no copy reads it any more (lanes drain
        // before they drop their buffers).
        unsafe {
            let _ = result::free_host(self.ptr as _);
        }
    }
}

/// One lane: a stream, its staging buffers, and the event after each buffer's last copies.
/// Only the first buffer is pinned before the lane starts; the others when first used, while the
/// first one's copies run (pinning is slow, and the driver does it one call at a time).
pub(crate) struct Lane {
    stream: Arc<CudaStream>,
    buffers: Vec<Option<Pinned>>,
    bytes: usize,
    done: Vec<Option<CudaEvent>>,
}

struct DeviceSink {
    device: CudaDevice,
    targets: Vec<sys::CUdeviceptr>,
    write_combined: bool,
}

impl Sink for DeviceSink {
    type Lane = Lane;

    fn lane(&self, slots: usize, bytes: usize) -> Result<Lane, WeightsError> {
        let stream = new_stream(&self.device)?;
        let mut buffers: Vec<Option<Pinned>> = (0..slots).map(|_| None).collect();
        buffers[0] = Some(Pinned::new(bytes, self.write_combined)?);
        Ok(Lane {
            stream,
            done: (0..slots).map(|_| None).collect(),
            buffers,
            bytes,
        })
    }

    fn fill(
        &self,
        lane: &mut Lane,
        slot: usize,
        chunk: &Chunk,
        source: &Source,
    ) -> Result<(), WeightsError> {
        if let Some(event) = &lane.done[slot] {
            event
                .synchronize()
                .map_err(cuda_err("cuEventSynchronize"))?;
        }
        if lane.buffers[slot].is_none() {
            lane.buffers[slot] = Some(Pinned::new(lane.bytes, self.write_combined)?);
        }
        let buffer = lane.buffers[slot].as_mut().expect("pinned above");
        // SAFETY: the buffer's last copies have finished (above); this lane alone uses it.
        let buf = unsafe { std::slice::from_raw_parts_mut(buffer.ptr, buffer.len) };
        source.read(chunk, buf)
    }

    fn scatter(&self, lane: &mut Lane, slot: usize, chunk: &Chunk) -> Result<(), WeightsError> {
        let buffer = lane.buffers[slot]
            .as_ref()
            .expect("filled before scattered");
        // SAFETY: the chunk was just read into this buffer, which stays untouched until the
        // event recorded below has fired.
        let staged = unsafe { std::slice::from_raw_parts(buffer.ptr, chunk.len) };
        let stream = lane.stream.cu_stream();
        for p in &chunk.pieces {
            let src = &staged[p.chunk_offset..p.chunk_offset + p.len];
            // SAFETY: the destination holds the whole tensor and this piece lies inside it; no
            // other piece writes these bytes; the source is pinned and outlives the copy.
            unsafe {
                result::memcpy_htod_async(self.targets[p.tensor] + p.tensor_offset, src, stream)
            }
            .map_err(cuda_err("cuMemcpyHtoDAsync"))?;
        }
        let event = match lane.done[slot].take() {
            Some(event) => event,
            None => lane
                .stream
                .context()
                .new_event(None)
                .map_err(cuda_err("cuEventCreate"))?,
        };
        event
            .record(&lane.stream)
            .map_err(cuda_err("cuEventRecord"))?;
        lane.done[slot] = Some(event);
        Ok(())
    }

    fn drain(&self, lane: Lane) -> Result<(), WeightsError> {
        lane.stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    }
}

/// One direct lane: a stream, and per slot the pinned page range and the event after its copies.
pub(crate) struct DirectLane {
    stream: Arc<CudaStream>,
    pinned: Vec<Option<(*mut std::ffi::c_void, CudaEvent)>>,
}

// SAFETY: the raw pointers name pinned ranges of a mapping the load owns; one lane uses them.
unsafe impl Send for DirectLane {}

/// The direct path: no staging copy. Each chunk's pages are pinned where they lie in the page
/// cache (`cuMemHostRegister`, read-only) and DMA'd from there; unpinned once copied.
struct MappedSink {
    device: CudaDevice,
    targets: Vec<sys::CUdeviceptr>,
    base: *const u8,
    data_offset: u64,
    page: u64,
}

// SAFETY: `base` is a read-only mapping that outlives the lanes; lanes pin disjoint pages.
unsafe impl Sync for MappedSink {}

impl MappedSink {
    fn unpin(entry: Option<(*mut std::ffi::c_void, CudaEvent)>) -> Result<(), WeightsError> {
        if let Some((ptr, event)) = entry {
            event
                .synchronize()
                .map_err(cuda_err("cuEventSynchronize"))?;
            // SAFETY: registered by `fill` and no copy from it is pending (event above).
            unsafe { sys::cuMemHostUnregister(ptr) }
                .result()
                .map_err(cuda_err("cuMemHostUnregister"))?;
        }
        Ok(())
    }
}

impl Sink for MappedSink {
    type Lane = DirectLane;

    fn lane(&self, slots: usize, _bytes: usize) -> Result<DirectLane, WeightsError> {
        let stream = new_stream(&self.device)?;
        Ok(DirectLane {
            stream,
            pinned: (0..slots).map(|_| None).collect(),
        })
    }

    fn fill(
        &self,
        lane: &mut DirectLane,
        slot: usize,
        chunk: &Chunk,
        _source: &Source,
    ) -> Result<(), WeightsError> {
        Self::unpin(lane.pinned[slot].take())?;
        let start = self.data_offset + chunk.start;
        let first = start / self.page * self.page;
        let end = (start + chunk.len as u64).div_ceil(self.page) * self.page;
        // SAFETY: the range lies in the mapping (whole pages of it; the mapping's last page is
        // whole too); chunks never share a page, so no range is registered twice.
        let ptr = unsafe { self.base.add(first as usize) } as *mut std::ffi::c_void;
        unsafe {
            sys::cuMemHostRegister_v2(
                ptr,
                (end - first) as usize,
                sys::CU_MEMHOSTREGISTER_READ_ONLY,
            )
        }
        .result()
        .map_err(cuda_err("cuMemHostRegister"))?;
        let event = lane
            .stream
            .context()
            .new_event(None)
            .map_err(cuda_err("cuEventCreate"))?;
        lane.pinned[slot] = Some((ptr, event));
        Ok(())
    }

    fn scatter(
        &self,
        lane: &mut DirectLane,
        slot: usize,
        chunk: &Chunk,
    ) -> Result<(), WeightsError> {
        let start = (self.data_offset + chunk.start) as usize;
        // SAFETY: the chunk lies inside the mapping and its pages are pinned (fill).
        let mapped = unsafe { std::slice::from_raw_parts(self.base.add(start), chunk.len) };
        let stream = lane.stream.cu_stream();
        for p in &chunk.pieces {
            let src = &mapped[p.chunk_offset..p.chunk_offset + p.len];
            // SAFETY: as in the staged path; the source pages stay pinned until the event fires.
            unsafe {
                result::memcpy_htod_async(self.targets[p.tensor] + p.tensor_offset, src, stream)
            }
            .map_err(cuda_err("cuMemcpyHtoDAsync"))?;
        }
        if let Some((_, event)) = &lane.pinned[slot] {
            event
                .record(&lane.stream)
                .map_err(cuda_err("cuEventRecord"))?;
        }
        Ok(())
    }

    fn drain(&self, mut lane: DirectLane) -> Result<(), WeightsError> {
        let synced = lane
            .stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"));
        let mut unpinned = Ok(());
        for entry in lane.pinned.iter_mut() {
            unpinned = unpinned.and(Self::unpin(entry.take()));
        }
        synced.and(unpinned)
    }
}

/// A lane of either kind.
pub(crate) enum AnyLane {
    Staged(Lane),
    Direct(DirectLane),
}

/// Lanes of both kinds over one load: the first `direct_lanes` lanes made pin the page cache's
/// pages in place, the others read into staging buffers. Every lane takes the next chunk when it
/// is free, so the faster kind simply moves more of the file.
struct MixedSink {
    staged: DeviceSink,
    direct: Option<MappedSink>,
    direct_lanes: usize,
    made: std::sync::atomic::AtomicUsize,
}

impl Sink for MixedSink {
    type Lane = AnyLane;

    fn lane(&self, slots: usize, bytes: usize) -> Result<AnyLane, WeightsError> {
        let index = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.direct {
            Some(direct) if index < self.direct_lanes => {
                direct.lane(slots, bytes).map(AnyLane::Direct)
            }
            _ => self.staged.lane(slots, bytes).map(AnyLane::Staged),
        }
    }

    fn fill(
        &self,
        lane: &mut AnyLane,
        slot: usize,
        chunk: &Chunk,
        source: &Source,
    ) -> Result<(), WeightsError> {
        match (lane, &self.direct) {
            (AnyLane::Staged(l), _) => self.staged.fill(l, slot, chunk, source),
            (AnyLane::Direct(l), Some(d)) => d.fill(l, slot, chunk, source),
            (AnyLane::Direct(_), None) => unreachable!("direct lanes need the mapping"),
        }
    }

    fn scatter(&self, lane: &mut AnyLane, slot: usize, chunk: &Chunk) -> Result<(), WeightsError> {
        match (lane, &self.direct) {
            (AnyLane::Staged(l), _) => self.staged.scatter(l, slot, chunk),
            (AnyLane::Direct(l), Some(d)) => d.scatter(l, slot, chunk),
            (AnyLane::Direct(_), None) => unreachable!("direct lanes need the mapping"),
        }
    }

    fn drain(&self, lane: AnyLane) -> Result<(), WeightsError> {
        match (lane, &self.direct) {
            (AnyLane::Staged(l), _) => self.staged.drain(l),
            (AnyLane::Direct(l), Some(d)) => d.drain(l),
            (AnyLane::Direct(_), None) => unreachable!("direct lanes need the mapping"),
        }
    }
}

/// Allocates an uninitialised device buffer of `count` elements as candle storage, and its
/// address.
fn alloc<T: CudaDType + DeviceRepr>(
    device: &CudaDevice,
    count: usize,
) -> Result<(CudaStorage, sys::CUdeviceptr), WeightsError> {
    // SAFETY: every byte is written by the load before the tensor is handed out.
    let mut slice: CudaSlice<T> = unsafe { device.alloc::<T>(count) }?;
    let stream = device.cuda_stream();
    let (ptr, record) = slice.device_ptr_mut(&stream);
    drop(record);
    Ok((CudaStorage::wrap_cuda_slice(slice, device.clone()), ptr))
}

fn alloc_dtype(
    device: &CudaDevice,
    dtype: DType,
    count: usize,
) -> Result<(CudaStorage, sys::CUdeviceptr), WeightsError> {
    match dtype {
        DType::U8 => alloc::<u8>(device, count),
        DType::U32 => alloc::<u32>(device, count),
        DType::I16 => alloc::<i16>(device, count),
        DType::I32 => alloc::<i32>(device, count),
        DType::I64 => alloc::<i64>(device, count),
        DType::BF16 => alloc::<half::bf16>(device, count),
        DType::F16 => alloc::<half::f16>(device, count),
        DType::F32 => alloc::<f32>(device, count),
        DType::F64 => alloc::<f64>(device, count),
        other => Err(WeightsError::Device(format!(
            "a {other:?} tensor (the header check should have refused it)"
        ))),
    }
}

/// Runs the pump into device memory at `targets` (one address per tensor of `header`), staged
/// through pinned buffers, and on `direct_lanes` of the lanes from the page cache's own pages;
/// returns the lanes' longest setup.
fn pump_to(
    header: &Header,
    file: &std::fs::File,
    chunks: &[Chunk],
    options: PumpOptions,
    device: &CudaDevice,
    targets: Vec<sys::CUdeviceptr>,
    direct_lanes: usize,
) -> Result<f64, WeightsError> {
    // The allocations are ordered on candle's stream; the lanes copy on their own.
    device
        .cuda_stream()
        .synchronize()
        .map_err(cuda_err("cuStreamSynchronize"))?;
    // The mapping outlives the sink (declared first, dropped last): lanes drain before it goes.
    let map = match direct_lanes {
        0 => None,
        _ => Some(crate::pump::Mapping::new(file, header)?),
    };
    let sink = MixedSink {
        staged: DeviceSink {
            device: device.clone(),
            targets: targets.clone(),
            write_combined: options.write_combined,
        },
        direct: map.as_ref().map(|map| MappedSink {
            device: device.clone(),
            targets,
            base: map.ptr,
            data_offset: header.data_offset,
            page: baton_base::page_cache::page_size() as u64,
        }),
        direct_lanes,
        made: std::sync::atomic::AtomicUsize::new(0),
    };
    pump::run(header, file, chunks, &sink, options)
}

/// Loads every quantized tensor of a GGUF file (laid out in `header`, block types in `quant`)
/// onto `device`: each into the zero-padded buffer candle's quantized kernels read, its blocks
/// copied as they are.
pub(crate) fn load_quantized(
    header: &Header,
    file: &std::fs::File,
    chunks: &[Chunk],
    options: PumpOptions,
    device: &CudaDevice,
    quant: &[crate::gguf::QuantInfo],
    direct_lanes: usize,
) -> Result<(Vec<candle_core::quantized::QTensor>, crate::PathTimes), WeightsError> {
    use candle_core::quantized::cuda::QCudaStorage;
    use candle_core::quantized::{QStorage, QTensor};
    let allocating = std::time::Instant::now();
    let mut storages = Vec::with_capacity(quant.len());
    let mut targets = Vec::with_capacity(quant.len());
    for q in quant {
        let elems = q.dims.iter().product::<usize>();
        let storage = QCudaStorage::zeros(device, elems, q.dtype)?;
        targets.push(storage.device_ptr()? as sys::CUdeviceptr);
        storages.push(storage);
    }
    let alloc_seconds = allocating.elapsed().as_secs_f64();
    let staging_seconds = pump_to(header, file, chunks, options, device, targets, direct_lanes)?;
    let tensors = storages
        .into_iter()
        .zip(quant)
        .map(|(s, q)| QTensor::new(QStorage::Cuda(s), q.dims.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        tensors,
        crate::PathTimes {
            alloc_seconds,
            staging_seconds,
        },
    ))
}

/// Loads every tensor of `header` onto `device` through pinned lanes.
pub(crate) fn load(
    header: &Header,
    file: &std::fs::File,
    chunks: &[Chunk],
    options: PumpOptions,
    device: &CudaDevice,
    direct_lanes: usize,
) -> Result<(Vec<Tensor>, crate::PathTimes), WeightsError> {
    let allocating = std::time::Instant::now();
    let mut storages = Vec::with_capacity(header.tensors.len());
    let mut targets = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        let count = t.shape.iter().product::<usize>();
        let (storage, ptr) = alloc_dtype(device, t.dtype, count)?;
        storages.push(storage);
        targets.push(ptr);
    }
    let alloc_seconds = allocating.elapsed().as_secs_f64();
    let staging_seconds = pump_to(header, file, chunks, options, device, targets, direct_lanes)?;
    let tensors = header
        .tensors
        .iter()
        .zip(storages)
        .map(|(t, storage)| {
            Tensor::from_storage(
                Storage::Cuda(storage),
                t.shape.clone(),
                BackpropOp::none(),
                false,
            )
        })
        .collect();
    Ok((
        tensors,
        crate::PathTimes {
            alloc_seconds,
            staging_seconds,
        },
    ))
}

/// Host-to-device copy bandwidth in bytes per second: `bytes` copied `repeat` times from pinned
/// (or ordinary, pageable) host memory, after one untimed copy.
pub(crate) fn h2d_bandwidth(
    device: &CudaDevice,
    bytes: usize,
    pinned: bool,
    repeat: usize,
) -> Result<f64, WeightsError> {
    let stream = device.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(cuda_err("cuCtxSetCurrent"))?;
    // Kept alive (not `_`) until the copies are done.
    let (_target, ptr) = alloc::<u8>(device, bytes)?;
    stream
        .synchronize()
        .map_err(cuda_err("cuStreamSynchronize"))?;
    let pinned_buf;
    let pageable;
    let src: &[u8] = if pinned {
        pinned_buf = Pinned::new(bytes, false)?;
        // SAFETY: freshly allocated, `bytes` long; written once before use.
        let s = unsafe { std::slice::from_raw_parts_mut(pinned_buf.ptr, bytes) };
        s.fill(1);
        s
    } else {
        pageable = vec![1u8; bytes];
        &pageable
    };
    let copy = || -> Result<(), WeightsError> {
        // SAFETY: `ptr` is a live allocation of `bytes` bytes; `src` outlives the copy, which is
        // synchronised before returning.
        unsafe { result::memcpy_htod_async(ptr, src, stream.cu_stream()) }
            .map_err(cuda_err("cuMemcpyHtoDAsync"))?;
        stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    };
    copy()?;
    let started = std::time::Instant::now();
    for _ in 0..repeat.max(1) {
        copy()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((bytes * repeat.max(1)) as f64 / seconds)
}

/// See `crate::registered_h2d`.
pub(crate) fn registered_h2d(
    device: &CudaDevice,
    bytes: usize,
    huge: bool,
    repeat: usize,
) -> Result<crate::RegisteredProbe, WeightsError> {
    let stream = device.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(cuda_err("cuCtxSetCurrent"))?;
    let io = |source: std::io::Error| WeightsError::Read {
        path: "anonymous memory".into(),
        offset: 0,
        source,
    };
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io(std::io::Error::last_os_error()));
    }
    struct Unmap(*mut std::ffi::c_void, usize);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made above, after its last use.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }
    let _unmap = Unmap(ptr, bytes);
    if huge {
        // SAFETY: advice on the mapping just made; without THP it is only ignored.
        unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
    }
    // SAFETY: the mapping is `bytes` long and writable.
    unsafe { std::ptr::write_bytes(ptr as *mut u8, 1, bytes) };
    let (_target, dst) = alloc::<u8>(device, bytes)?;
    stream
        .synchronize()
        .map_err(cuda_err("cuStreamSynchronize"))?;
    let started = std::time::Instant::now();
    // SAFETY: the range is a live mapping; it is unregistered below before it is unmapped.
    unsafe { sys::cuMemHostRegister_v2(ptr, bytes, 0) }
        .result()
        .map_err(cuda_err("cuMemHostRegister"))?;
    let register_seconds = started.elapsed().as_secs_f64();
    // SAFETY: the mapping is registered and outlives the copies, synchronised below.
    let src = unsafe { std::slice::from_raw_parts(ptr as *const u8, bytes) };
    let copy = || -> Result<(), WeightsError> {
        // SAFETY: `dst` holds `bytes`; `src` is registered and outlives the copy.
        unsafe { result::memcpy_htod_async(dst, src, stream.cu_stream()) }
            .map_err(cuda_err("cuMemcpyHtoDAsync"))?;
        stream
            .synchronize()
            .map_err(cuda_err("cuStreamSynchronize"))
    };
    let copied = (|| {
        copy()?;
        let started = std::time::Instant::now();
        for _ in 0..repeat.max(1) {
            copy()?;
        }
        Ok::<f64, WeightsError>(started.elapsed().as_secs_f64())
    })();
    // SAFETY: registered above; no copy from it is pending (each copy is synchronised).
    let unregistered = unsafe { sys::cuMemHostUnregister(ptr) }
        .result()
        .map_err(cuda_err("cuMemHostUnregister"));
    let seconds = copied?;
    unregistered?;
    Ok(crate::RegisteredProbe {
        register_seconds,
        copy_rate: (bytes * repeat.max(1)) as f64 / seconds,
    })
}
