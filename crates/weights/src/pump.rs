//! The pump that moves a file's tensor bytes to their destinations: the data region is cut into
//! large chunks, a few lanes (threads) each `pread` a chunk into one of their staging buffers
//! and scatter it to the tensors it covers, while their previous chunk is still being copied.
//!
//! The key design decision: reads are `pread` into staging buffers, not a walk over an mmap.
//! Touching a mapped file costs a page fault per 4 KiB page, which caps a single thread far
//! below PCIe speed; `pread` copies from the page cache at memory speed, and several lanes
//! read in parallel. The destination is a [`Sink`]: host buffers (the CPU, and the tests CI
//! runs), or device memory through pinned buffers and CUDA streams (`crate::cuda`). The chunking,
//! the lanes and the scatter are the same code for both.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::WeightsError;
use crate::header::Header;

/// A slice of one chunk that belongs to one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index into the header's tensors.
    pub tensor: usize,
    /// Where the bytes go inside the tensor.
    pub tensor_offset: u64,
    /// Where they are inside the chunk.
    pub chunk_offset: usize,
    pub len: usize,
}

/// A run of the data region read with one `pread`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the data region.
    pub start: u64,
    pub len: usize,
    pub pieces: Vec<Piece>,
}

/// Cuts the bytes the tensors occupy into chunks of at most `chunk_bytes`; gaps between tensors
/// are never read.
pub fn chunks(header: &Header, chunk_bytes: usize) -> Vec<Chunk> {
    let chunk_bytes = chunk_bytes.max(1) as u64;
    let mut out: Vec<Chunk> = Vec::new();
    for (index, t) in header.tensors.iter().enumerate() {
        let mut at = t.start;
        while at < t.end {
            // Extend the last chunk when this tensor continues right where it stopped.
            let open = out
                .last_mut()
                .filter(|c| c.start + c.len as u64 == at && (c.len as u64) < chunk_bytes);
            let chunk = match open {
                Some(chunk) => chunk,
                None => {
                    out.push(Chunk {
                        start: at,
                        len: 0,
                        pieces: Vec::new(),
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            let take = (t.end - at).min(chunk_bytes - chunk.len as u64) as usize;
            chunk.pieces.push(Piece {
                tensor: index,
                tensor_offset: at - t.start,
                chunk_offset: chunk.len,
                len: take,
            });
            chunk.len += take;
            at += take as u64;
        }
    }
    out
}

/// Where a lane's staged bytes go.
pub trait Sink: Sync {
    /// One lane's private state: its staging buffers (and, on a GPU, its stream).
    type Lane: Send;

    /// Makes a lane with `slots` staging buffers of `bytes` each.
    fn lane(&self, slots: usize, bytes: usize) -> Result<Self::Lane, WeightsError>;

    /// Staging buffer `slot`, once whatever was copied out of it last has left.
    fn staging<'a>(
        &self,
        lane: &'a mut Self::Lane,
        slot: usize,
    ) -> Result<&'a mut [u8], WeightsError>;

    /// Copies the pieces of `chunk`, now in staging buffer `slot`, to their tensors (it may only
    /// start the copies).
    fn scatter(
        &self,
        lane: &mut Self::Lane,
        slot: usize,
        chunk: &Chunk,
    ) -> Result<(), WeightsError>;

    /// Waits until every copy the lane started has finished.
    fn drain(&self, lane: Self::Lane) -> Result<(), WeightsError>;
}

/// How a load is cut up.
#[derive(Debug, Clone, Copy)]
pub struct PumpOptions {
    pub lanes: usize,
    pub chunk_bytes: usize,
    /// Staging buffers per lane: 2 lets a lane read its next chunk while the last is copied.
    pub slots: usize,
}

/// Moves every chunk through `sink` on `options.lanes` threads. The first error stops all lanes
/// and is returned; nothing is left running.
pub fn run<S: Sink>(
    header: &Header,
    file: &File,
    chunks: &[Chunk],
    sink: &S,
    options: PumpOptions,
) -> Result<(), WeightsError> {
    let lanes = options.lanes.clamp(1, chunks.len().max(1));
    let largest = chunks.iter().map(|c| c.len).max().unwrap_or(0);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<(), WeightsError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes)
            .map(|_| {
                scope.spawn(|| {
                    let outcome = lane_work(
                        header,
                        file,
                        chunks,
                        sink,
                        &next,
                        &failed,
                        options.slots.max(1),
                        largest,
                    );
                    if outcome.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    outcome
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a load lane panicked"))
            .collect()
    });
    results.into_iter().collect()
}

#[allow(clippy::too_many_arguments)]
fn lane_work<S: Sink>(
    header: &Header,
    file: &File,
    chunks: &[Chunk],
    sink: &S,
    next: &AtomicUsize,
    failed: &AtomicBool,
    slots: usize,
    buffer: usize,
) -> Result<(), WeightsError> {
    let mut lane = sink.lane(slots, buffer)?;
    let mut turn = 0usize;
    let mut outcome = Ok(());
    while !failed.load(Ordering::Relaxed) {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(chunk) = chunks.get(index) else {
            break;
        };
        let slot = turn % slots;
        turn += 1;
        let step = sink.staging(&mut lane, slot).and_then(|buf| {
            file.read_exact_at(&mut buf[..chunk.len], header.data_offset + chunk.start)
                .map_err(|source| WeightsError::Read {
                    path: header.path.clone(),
                    offset: header.data_offset + chunk.start,
                    source,
                })
        });
        if let Err(e) = step.and_then(|()| sink.scatter(&mut lane, slot, chunk)) {
            outcome = Err(e);
            break;
        }
    }
    // Drain even after an error: copies in flight must not outlive the buffers.
    let drained = sink.drain(lane);
    outcome.and(drained)
}

/// A destination pointer that lanes may share: every piece writes a disjoint range.
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr(pub *mut u8);
// SAFETY: lanes write disjoint ranges (the header refuses overlapping tensors) and the owner
// outlives the scoped lanes.
unsafe impl Send for SharedPtr {}
unsafe impl Sync for SharedPtr {}

/// Host memory as the destination: one buffer per tensor.
pub(crate) struct HostSink {
    pub targets: Vec<SharedPtr>,
}

impl Sink for HostSink {
    type Lane = Vec<Vec<u8>>;

    fn lane(&self, slots: usize, bytes: usize) -> Result<Self::Lane, WeightsError> {
        Ok((0..slots).map(|_| vec![0u8; bytes]).collect())
    }

    fn staging<'a>(
        &self,
        lane: &'a mut Self::Lane,
        slot: usize,
    ) -> Result<&'a mut [u8], WeightsError> {
        Ok(&mut lane[slot])
    }

    fn scatter(
        &self,
        lane: &mut Self::Lane,
        slot: usize,
        chunk: &Chunk,
    ) -> Result<(), WeightsError> {
        let staged = &lane[slot];
        for p in &chunk.pieces {
            let src = &staged[p.chunk_offset..p.chunk_offset + p.len];
            // SAFETY: the target holds the whole tensor; this piece is inside it and no other
            // piece writes the same bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    self.targets[p.tensor].0.add(p.tensor_offset as usize),
                    p.len,
                );
            }
        }
        Ok(())
    }

    fn drain(&self, _lane: Self::Lane) -> Result<(), WeightsError> {
        Ok(())
    }
}
