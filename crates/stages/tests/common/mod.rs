//! What the stage program's tests share: the `baton` a user runs, which hands these commands
//! to the `baton-stages` built beside it.
#![allow(dead_code)]

use std::path::PathBuf;

/// `baton`, from the same build as the `baton-stages` under test (`cargo test --workspace`
/// builds both; the supervisor's own tests build it).
pub fn baton_exe() -> PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_baton-stages")).with_file_name("baton");
    assert!(
        exe.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        exe.display()
    );
    exe
}
