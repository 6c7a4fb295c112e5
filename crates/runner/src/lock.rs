//! One baton per run folder: an advisory lock (`flock`) on `.baton/lock` in the run folder,
//! held for as long as a run, a resume or a batch member is in this process's hands.
//!
//! The kernel drops a `flock` when its holder dies, however it dies, so a lock left by a
//! killed baton is simply taken over; a live holder is named by the PID it wrote into the file.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::RunnerError;

/// The lock file, inside the run folder.
pub const LOCK_FILE: &str = ".baton/lock";

/// A held lock on a run folder; dropping it releases the folder.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `run_dir` for this process, or says which live process holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock, RunnerError> {
        let path = run_dir.join(LOCK_FILE);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| RunnerError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create"))?;
        }
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("cannot open the lock"))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(RunnerError::Locked {
                    run_dir: run_dir.to_path_buf(),
                    holder: text.trim().parse().ok(),
                });
            }
            return Err(io("cannot lock")(err));
        }
        // Ours now: say who holds it, for the next baton that tries.
        file.set_len(0).map_err(io("cannot write the lock"))?;
        file.rewind().map_err(io("cannot write the lock"))?;
        write!(file, "{}", std::process::id()).map_err(io("cannot write the lock"))?;
        Ok(RunLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_a_released_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        // flock locks belong to open files: a second open in this process conflicts too.
        let err = RunLock::acquire(dir.path()).unwrap_err();
        assert!(err.is_bad_input());
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = RunLock::acquire(dir.path()).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".baton")).unwrap();
        // What a killed baton leaves: the file with its PID, and no lock (the kernel dropped
        // it with the process).
        let lock = dir.path().join(LOCK_FILE);
        std::fs::write(&lock, "999999").unwrap();
        let held = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap(),
            std::process::id().to_string()
        );
        drop(held);
    }
}
