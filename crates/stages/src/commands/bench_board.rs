//! The storyboard a content benchmark draws or narrates: written by the benchmark, not an LLM.

/// Refuses a benchmark scene count the storyboard schema would refuse.
pub(crate) fn check_bench_scenes(scenes: usize) -> anyhow::Result<()> {
    if scenes == 0 || scenes > baton_studio::storyboard::MAX_SCENES {
        return Err(baton::BadInput(format!(
            "--scenes {scenes}: use 1 to {}",
            baton_studio::storyboard::MAX_SCENES
        ))
        .into());
    }
    Ok(())
}

/// A benchmark's storyboard, `run_dir/1_scripts/benchmark_scenes.json`: `scenes` scenes whose
/// narration and image prompt (scene index from 0) the benchmark chooses. Returns its path.
pub(crate) fn write_bench_storyboard(
    run_dir: &std::path::Path,
    scenes: usize,
    narration: &dyn Fn(usize) -> &'static str,
    prompt: &dyn Fn(usize) -> &'static str,
) -> anyhow::Result<std::path::PathBuf> {
    let scripts = run_dir.join("1_scripts");
    std::fs::create_dir_all(&scripts)?;
    let board = serde_json::json!({
        "topic": "Cyberpunk Tokyo", "title": "Benchmark",
        "scenes": (0..scenes).map(|i| serde_json::json!({
            "index": i + 1, "title": format!("Scene {}", i + 1), "narration": narration(i),
            "image_prompt": prompt(i), "duration_seconds": 5.0})).collect::<Vec<_>>()
    });
    let input = scripts.join("benchmark_scenes.json");
    std::fs::write(&input, serde_json::to_vec(&board)?)?;
    Ok(input)
}
