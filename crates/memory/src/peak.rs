//! The highest this process holds on a device while some work runs, sampled every 5 ms on a
//! thread of its own: what a phase or a stage reports as its peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::MemoryBackend;

/// A running sampler; [`PeakWatch::finish`] stops it and gives the peak.
pub struct PeakWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakWatch {
    /// Starts sampling this process's bytes on device `index` of `backend`.
    pub fn start(backend: Arc<dyn MemoryBackend>, index: usize) -> PeakWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let pid = std::process::id();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(bytes) = backend.process_usage(index, pid) {
                    p.fetch_max(bytes, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PeakWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak seen, or `last` if that was higher.
    pub fn finish(mut self, last: u64) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed).max(last)
    }
}

impl Drop for PeakWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_of_a_short_allocation_is_seen() {
        let backend: Arc<dyn MemoryBackend> = Arc::new(crate::host::HostBackend::new());
        let before = backend.process_usage(0, std::process::id()).unwrap();
        let watch = PeakWatch::start(backend.clone(), 0);
        let block = vec![1u8; 256 << 20];
        std::thread::sleep(Duration::from_millis(50));
        drop(std::hint::black_box(block));
        let after = backend.process_usage(0, std::process::id()).unwrap();
        let peak = watch.finish(after);
        assert!(peak >= before + (200 << 20), "peak {peak}, before {before}");
    }
}
