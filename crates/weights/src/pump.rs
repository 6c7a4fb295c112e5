//! The pump that moves a file's tensor bytes to their destinations: the data region is cut into
//! large chunks, a few lanes (threads) each `pread` a chunk into one of their staging buffers
//! and scatter it to the tensors it covers, while their previous chunk is still being copied.
//!
//! The key design decision: reads are `pread` into staging buffers. `pread` copies out of the
//! page cache at memory speed and several lanes read in parallel; copying out of a mapping of
//! the file ([`PumpOptions::mapped`]) measured the same on an H200 host, but a file cut short
//! under a mapping kills the process with SIGBUS where `pread` returns an error.
//!
//! The destination is a [`Sink`]: host buffers (the CPU, and the tests CI runs), or device
//! memory through pinned buffers and CUDA streams (`crate::cuda`). The chunking, the lanes and
//! the scatter are the same code for both.

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

/// Cuts the file into cells of `chunk_bytes` at fixed offsets (multiples of `chunk_bytes` from
/// the start of the file, not of the data region), and makes one chunk of the tensor bytes in
/// each cell. Cells never share a byte, so with `chunk_bytes` a multiple of the page size no two
/// chunks share a page either: the direct path pins each chunk's pages on its own. Cells with no
/// tensor bytes are skipped; a small gap between tensors inside a cell is read with them.
pub fn chunks(header: &Header, chunk_bytes: usize) -> Vec<Chunk> {
    let cell = chunk_bytes.max(1) as u64;
    let base = header.data_offset;
    let mut out: Vec<Chunk> = Vec::new();
    for (index, t) in header.tensors.iter().enumerate() {
        let mut at = t.start;
        while at < t.end {
            let cell_index = (base + at) / cell;
            let cell_end = (cell_index + 1) * cell - base;
            let take = (t.end.min(cell_end) - at) as usize;
            let same_cell = out
                .last()
                .is_some_and(|c| (base + c.start) / cell == cell_index);
            if !same_cell {
                out.push(Chunk {
                    start: at,
                    len: 0,
                    pieces: Vec::new(),
                });
            }
            let chunk = out.last_mut().expect("a chunk for this cell");
            let chunk_offset = (at - chunk.start) as usize;
            chunk.pieces.push(Piece {
                tensor: index,
                tensor_offset: at - t.start,
                chunk_offset,
                len: take,
            });
            chunk.len = chunk_offset + take;
            at += take as u64;
        }
    }
    out
}

/// The whole file mapped read-only, unmapped on drop (after every lane has drained).
pub(crate) struct Mapping {
    pub(crate) ptr: *const u8,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(file: &std::fs::File, header: &Header) -> Result<Mapping, WeightsError> {
        use std::os::fd::AsRawFd;
        let len = header.file_len as usize;
        // SAFETY: a read-only shared mapping of an open file; it is only read (by lanes' copies
        // or DMA) and is unmapped on drop, after every lane has drained.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(WeightsError::Read {
                path: header.path.clone(),
                offset: 0,
                source: std::io::Error::last_os_error(),
            });
        }
        // Read-ahead where the file is not cached yet (not MADV_SEQUENTIAL: on a shared file
        // mapping it lets reclaim drop the pages behind the reader, cold for the next load).
        // SAFETY: advice on the mapping just made; a failure only loses the hint.
        unsafe { libc::madvise(ptr, len.max(1), libc::MADV_WILLNEED) };
        Ok(Mapping {
            ptr: ptr as *const u8,
            len: len.max(1),
        })
    }

    /// The mapped file's bytes.
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

// SAFETY: a read-only mapping; lanes only read it.
unsafe impl Sync for Mapping {}
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut _, self.len) };
    }
}

/// The file a load reads.
pub struct Source<'a> {
    pub file: &'a File,
    pub header: &'a Header,
    /// Where chunks are copied from a mapping of the file instead of read with `pread`.
    mapped: Option<&'a Mapping>,
}

impl Source<'_> {
    /// Reads `chunk` into `buf`: one `pread`, or one copy out of the mapping.
    pub fn read(&self, chunk: &Chunk, buf: &mut [u8]) -> Result<(), WeightsError> {
        let offset = self.header.data_offset + chunk.start;
        if let Some(map) = self.mapped {
            // The header check put every tensor inside the file, so the range is mapped.
            let at = offset as usize;
            buf[..chunk.len].copy_from_slice(&map.bytes()[at..at + chunk.len]);
            return Ok(());
        }
        self.file
            .read_exact_at(&mut buf[..chunk.len], offset)
            .map_err(|source| WeightsError::Read {
                path: self.header.path.clone(),
                offset,
                source,
            })
    }
}

/// Where a lane's staged bytes go.
pub trait Sink: Sync {
    /// One lane's private state: its staging buffers (and, on a GPU, its stream).
    type Lane: Send;

    /// Makes a lane with `slots` staging buffers of `bytes` each.
    fn lane(&self, slots: usize, bytes: usize) -> Result<Self::Lane, WeightsError>;

    /// Brings `chunk` into staging buffer `slot` (by reading it, or, on the direct path, by
    /// pinning its pages where they are), once whatever was copied out of that slot has left.
    fn fill(
        &self,
        lane: &mut Self::Lane,
        slot: usize,
        chunk: &Chunk,
        source: &Source,
    ) -> Result<(), WeightsError>;

    /// Copies the pieces of `chunk`, now in slot `slot`, to their tensors (it may only
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
    /// Copy chunks out of a memory mapping of the file instead of `pread`ing them.
    pub mapped: bool,
    /// On a GPU: staging buffers in write-combined pinned memory.
    pub write_combined: bool,
}

/// Moves every chunk through `sink` on `options.lanes` threads. The first error stops all lanes
/// and is returned; nothing is left running. Returns the longest time a lane took to set up its
/// staging buffers (pinning host memory is not free).
pub fn run<S: Sink>(
    header: &Header,
    file: &File,
    chunks: &[Chunk],
    sink: &S,
    options: PumpOptions,
) -> Result<f64, WeightsError> {
    let lanes = options.lanes.clamp(1, chunks.len().max(1));
    let map = if options.mapped {
        Some(Mapping::new(file, header)?)
    } else {
        None
    };
    let map = map.as_ref();
    let largest = chunks.iter().map(|c| c.len).max().unwrap_or(0);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<f64, WeightsError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes)
            .map(|_| {
                scope.spawn(|| {
                    let outcome = lane_work(
                        Source {
                            file,
                            header,
                            mapped: map,
                        },
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
    let setups: Vec<f64> = results.into_iter().collect::<Result<_, _>>()?;
    Ok(setups.into_iter().fold(0.0, f64::max))
}

#[allow(clippy::too_many_arguments)]
fn lane_work<S: Sink>(
    source: Source,
    chunks: &[Chunk],
    sink: &S,
    next: &AtomicUsize,
    failed: &AtomicBool,
    slots: usize,
    buffer: usize,
) -> Result<f64, WeightsError> {
    let started = std::time::Instant::now();
    let mut lane = sink.lane(slots, buffer)?;
    let setup = started.elapsed().as_secs_f64();
    let mut turn = 0usize;
    let mut outcome = Ok(());
    while !failed.load(Ordering::Relaxed) {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(chunk) = chunks.get(index) else {
            break;
        };
        let slot = turn % slots;
        turn += 1;
        let step = sink.fill(&mut lane, slot, chunk, &source);
        if let Err(e) = step.and_then(|()| sink.scatter(&mut lane, slot, chunk)) {
            outcome = Err(e);
            break;
        }
    }
    // Drain even after an error: copies in flight must not outlive the buffers.
    let drained = sink.drain(lane);
    outcome.and(drained).map(|()| setup)
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

    fn fill(
        &self,
        lane: &mut Self::Lane,
        slot: usize,
        chunk: &Chunk,
        source: &Source,
    ) -> Result<(), WeightsError> {
        source.read(chunk, &mut lane[slot])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::TensorEntry;
    use candle_core::DType;

    fn header(data_offset: u64, spans: &[(u64, u64)]) -> Header {
        Header {
            path: "x".into(),
            tensors: spans
                .iter()
                .enumerate()
                .map(|(i, &(start, end))| TensorEntry {
                    name: format!("t{i}"),
                    dtype: DType::U8,
                    shape: vec![(end - start) as usize],
                    start,
                    end,
                })
                .collect(),
            data_offset,
            file_len: data_offset + spans.last().map_or(0, |s| s.1),
        }
    }

    #[test]
    fn chunks_cover_every_tensor_byte_once_and_never_share_a_cell() {
        // A data region that starts mid-cell, a gap, an empty tensor, a tensor over many cells.
        let h = header(100, &[(0, 10), (10, 10), (16, 300), (300, 1000)]);
        let cell = 64u64;
        let chunks = chunks(&h, cell as usize);
        let mut covered = vec![0u32; 1000];
        let mut cells = std::collections::HashSet::new();
        for c in &chunks {
            let first = (h.data_offset + c.start) / cell;
            let last = (h.data_offset + c.start + c.len as u64 - 1) / cell;
            assert_eq!(first, last, "{c:?} spans two cells");
            assert!(cells.insert(first), "two chunks in cell {first}");
            for p in &c.pieces {
                let t = &h.tensors[p.tensor];
                let at = t.start + p.tensor_offset;
                // The piece sits in the chunk where the tensor's bytes are in the file.
                assert_eq!(c.start + p.chunk_offset as u64, at);
                assert!(p.chunk_offset + p.len <= c.len);
                for b in at..at + p.len as u64 {
                    covered[b as usize] += 1;
                }
            }
        }
        for (b, n) in covered.iter().enumerate() {
            let in_tensor = h
                .tensors
                .iter()
                .any(|t| (t.start..t.end).contains(&(b as u64)));
            assert_eq!(*n, u32::from(in_tensor), "byte {b}");
        }
        // The first cell holds only the 28 bytes before offset 128 of the file.
        assert_eq!((chunks[0].start, chunks[0].len), (0, 28));
    }
}
