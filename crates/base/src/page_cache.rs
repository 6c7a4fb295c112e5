//! The page cache around a load: how much of a file is already in memory, read-ahead hints,
//! pulling a file in ahead of the stage that needs it (`baton models warm`), and dropping it
//! (the benchmark's cold load).
//!
//! All of this is per file (`posix_fadvise`, `mincore`), so none of it needs root, unlike
//! writing to `/proc/sys/vm/drop_caches`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::FileError;

/// Tells the kernel the whole file will be read, in order, soon.
pub fn advise_sequential(file: &File) {
    let fd = file.as_raw_fd();
    // SAFETY: plain advice on an open descriptor; failures only lose the hint.
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_WILLNEED);
    }
}

/// The share of `file`'s pages that are in the page cache (0..=1), by `mincore` over a mapping
/// that is never touched.
pub fn resident_share(file: &File) -> std::io::Result<f64> {
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: a read-only private mapping of an open file, unmapped below; its pages are only
    // queried, never read.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let page = page_size();
    let mut flags = vec![0u8; len.div_ceil(page)];
    // SAFETY: `flags` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(addr, len, flags.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmaps exactly what was mapped above.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err);
    }
    let resident = flags.iter().filter(|f| *f & 1 == 1).count();
    Ok(resident as f64 / flags.len() as f64)
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

/// Asks the kernel to drop `path`'s clean pages from the page cache, so the next read comes from
/// the disk. Returns the share still cached afterwards (pages another process has mapped stay).
pub fn evict(path: &Path) -> Result<f64, FileError> {
    let file = open(path)?;
    // SAFETY: advice on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(FileError::new(
            "cannot evict from the page cache",
            path,
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    resident_share(&file).map_err(FileError::with("cannot read", path))
}

/// What pulling a file into the page cache did.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmReport {
    pub bytes: u64,
    pub seconds: f64,
    pub cached_before: f64,
    pub cached_after: f64,
}

impl std::fmt::Display for WarmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} GB in the page cache in {:.2}s ({:.1} GB/s); cached before {:.0}%, after {:.0}%",
            self.bytes as f64 / 1e9,
            self.seconds,
            self.bytes as f64 / self.seconds.max(1e-9) / 1e9,
            self.cached_before * 100.0,
            self.cached_after * 100.0
        )
    }
}

/// Reads the whole of `path` once, on `lanes` threads, so that a later load finds it in the page
/// cache (the runner can do this for the next stage while the current one runs).
pub fn warm(path: &Path, lanes: usize) -> Result<WarmReport, FileError> {
    let started = Instant::now();
    let file = open(path)?;
    let io = || FileError::with("cannot read", path);
    let cached_before = resident_share(&file).map_err(io())?;
    advise_sequential(&file);
    let len = file.metadata().map_err(io())?.len();
    const BLOCK: u64 = 8 << 20;
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..lanes.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<(), FileError> {
                    let mut buf = vec![0u8; BLOCK as usize];
                    loop {
                        let at = next.fetch_add(BLOCK, Ordering::Relaxed);
                        if at >= len {
                            return Ok(());
                        }
                        let n = (len - at).min(BLOCK) as usize;
                        file.read_exact_at(&mut buf[..n], at).map_err(io())?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a warm-up thread panicked"))
    })?;
    Ok(WarmReport {
        bytes: len,
        seconds: started.elapsed().as_secs_f64(),
        cached_before,
        cached_after: resident_share(&file).map_err(io())?,
    })
}

fn open(path: &Path) -> Result<File, FileError> {
    File::open(path).map_err(FileError::with("cannot open", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warming_reads_the_whole_file_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let bytes: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let report = warm(&path, 3).unwrap();
        assert_eq!(report.bytes, bytes.len() as u64);
        // Just read, and far smaller than this machine's memory.
        assert!(report.cached_after > 0.99, "{report}");
        assert!(report.to_string().contains("GB/s"), "{report}");
        let left = evict(&path).unwrap();
        assert!((0.0..=1.0).contains(&left));
        let missing = dir.path().join("nope.bin");
        let err = warm(&missing, 2).unwrap_err();
        assert!(err.to_string().contains("nope.bin"), "{err}");
        assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
    }
}
