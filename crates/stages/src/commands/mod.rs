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

/// The device memory the runner granted this stage (`BATON_MEMORY_BUDGET`), when it runs as a
/// stage of a run on a GPU.
pub(crate) fn granted_budget() -> anyhow::Result<Option<u64>> {
    // A prestarted stage's go says what it got.
    if let Some(granted) = baton_base::protocol::granted_budget() {
        return Ok(Some(granted));
    }
    match std::env::var("BATON_MEMORY_BUDGET") {
        Ok(budget) => Ok(Some(baton_base::units::parse_size(&budget).map_err(
            |e| baton::BadInput(format!("BATON_MEMORY_BUDGET '{budget}': {e}")),
        )?)),
        Err(_) => Ok(None),
    }
}
