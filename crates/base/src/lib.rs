//! baton's shared primitives: the few things every crate needs the same way, in one small leaf
//! crate that depends on nothing of baton's.
//!
//! A key design decision: each primitive exists once. Before this crate there were four
//! readers of `/proc`, two duration parsers, and the stage line protocol's writer and parser in
//! two crates that did not know of each other; a change to one side silently broke the other.
//! Here the writer and the parser of each format sit side by side and are tested against each
//! other.

pub mod atomic_file;
pub mod checksum;
mod error;
pub mod fault;
pub mod page_cache;
pub mod procfs;
pub mod protocol;
pub mod run_dir;
pub mod suggest;
pub mod units;

pub use error::FileError;
pub use units::{format_bytes, parse_duration, parse_size};
