//! Files that are whole or absent: write a temporary file in the same folder, fsync it, rename
//! it over the target, fsync the folder.
//!
//! A crash at any point leaves either the old file or the new one, never half of either. The
//! temporary file is `tempfile`'s (a unique name, removed if anything fails before the rename);
//! the folder fsync, which `tempfile` does not do, is what makes the rename itself survive a
//! power cut.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::FileError;

/// Replaces `path` with `bytes`, atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_replacing(path, true, |file| file.write_all(bytes))
}

/// Replaces `path` with `bytes`, atomically for every reader, but without waiting for the disk:
/// for state that means nothing after a reboot (the simulation's allocations belong to
/// processes, which a reboot ends anyway).
pub fn replace_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_replacing(path, false, |file| file.write_all(bytes))
}

/// Writes `path` whole or not at all, durably, with whatever `fill` writes into the temporary
/// file: for outputs produced in pieces rather than held as one buffer.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), FileError> {
    write_replacing(path, true, fill)
}

fn write_replacing(
    path: &Path,
    durable: bool,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), FileError> {
    let dir = folder_of(path);
    let result = (|| {
        // Files baton writes are ordinary files, readable by others as the umask allows, not
        // the 0600 of a temporary file.
        let mut tmp = tempfile::Builder::new()
            .prefix(".baton-")
            .suffix(".tmp")
            .permissions(Permissions::from_mode(0o666))
            .tempfile_in(dir)?;
        fill(tmp.as_file_mut())?;
        if durable {
            tmp.as_file().sync_all()?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(FileError::with("cannot write", path))
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        replace_atomic(&path, b"third").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"third");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn files_are_ordinary_files_not_private_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scene.png");
        write_atomic(&path, b"x").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // Whatever the umask takes away, the owner reads and writes and the group is not
        // shut out the way tempfile's 0600 would.
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
        assert_ne!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-folder").join("state.json");
        let err = write_atomic(&path, b"x").unwrap_err().to_string();
        assert!(err.contains("missing-folder"), "{err}");
    }
}
