//! The stage program's commands, one file each.

pub mod bench_board;
pub mod bench_images;
pub mod bench_llm;
pub mod bench_load;
pub mod bench_scenes;
pub mod bench_switch;
pub mod bench_voice;
pub mod catalog;
pub mod demo_switch;
pub mod images;
pub mod models;
pub mod monolithic;
pub mod scenes;
pub mod video;
pub mod voice;
