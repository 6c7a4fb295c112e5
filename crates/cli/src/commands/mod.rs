//! The supervisor's commands, one file each.

pub mod batch;
pub mod bench_runner;
pub mod bench_snapshot;
pub mod bench_startup;
pub mod metrics;
pub mod resume;
pub mod run;
pub mod sim;
pub mod stage_exec;
pub mod stats;
pub mod watch;
