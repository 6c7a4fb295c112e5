//! The one error of this crate's file primitives: what was being done, to which path, and why
//! the operating system refused.

use std::path::PathBuf;

/// A file operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{action} '{}': {source}", .path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FileError {
            action,
            path: path.into(),
            source,
        }
    }

    /// A closure for `map_err`: `File::open(p).map_err(FileError::with("cannot open", p))`.
    pub fn with(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> FileError + use<> {
        let path = path.to_path_buf();
        move |source| FileError {
            action,
            path,
            source,
        }
    }
}
