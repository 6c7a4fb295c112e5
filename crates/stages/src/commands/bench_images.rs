//! `baton bench images`: the images stage over a model of a family's real shapes with random
//! weights.

use std::io::Write;

use baton_studio::compute::Compute;

use crate::commands::images::{DrawingView, print_manifest};

use crate::commands::bench_board::{check_bench_scenes, write_bench_storyboard};

/// `baton bench images`: a model with `family`'s real shapes and random weights, written
/// first, then the images stage over `scenes` scenes at `size` x `size`.
pub fn bench_images(
    family: &str,
    scenes: usize,
    size: usize,
    dir: &std::path::Path,
    choice: baton_memory::DeviceChoice,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use baton_studio::images::{
        ImageModel, ImagesOptions, family as families, random::write_random_model,
    };
    let fam = families::find(family).ok_or_else(|| {
        baton::BadInput(format!(
            "--family '{family}': use one of {}",
            families::names()
        ))
    })?;
    check_bench_scenes(scenes)?;
    let (compute, where_) = Compute::choose(choice)?;
    let dtype = if matches!(compute, Compute::Cuda(_)) {
        fam.gpu_dtype()
    } else {
        candle_core::DType::F32
    };
    let model_dir = dir.join(format!("{family}-random-{dtype:?}").to_lowercase());
    let started = std::time::Instant::now();
    // A folder this command finished writing before is used again (Flux's is 34 GB).
    let done = model_dir.join("baton-random-model");
    let (model, how) = match ImageModel::resolve(&model_dir.to_string_lossy(), Some(family)) {
        Ok(model) if done.is_file() => (model, "reused"),
        _ => {
            let model = write_random_model(&model_dir, fam, dtype)?;
            std::fs::write(&done, b"")?;
            (model, "written")
        }
    };
    writeln!(
        out,
        "random {family} model ({dtype:?}) {how} at {} in {:.1}s; drawing {scenes} scenes at {size}x{size} {where_}",
        model_dir.display(),
        started.elapsed().as_secs_f64()
    )?;
    let run_dir = dir.join("run");
    let prompts = [
        "neon street in the rain at night",
        "a crowded night market with glowing lights",
        "drones over the city sky",
        "a wet street with neon reflections",
        "dawn over the river and the city",
        "a cinematic wide shot of tokyo",
    ];
    let input = write_bench_storyboard(&run_dir, scenes, &|_| "Benchmark narration.", &|i| {
        prompts[i % prompts.len()]
    })?;
    let request = baton_studio::images::stage::ImagesRequest {
        input: &input,
        run_dir: &run_dir,
        model: &model.dir.to_string_lossy(),
        family: Some(family),
        options: ImagesOptions {
            width: Some(size),
            height: Some(size),
            steps: None,
            guidance: None,
            seed: 42,
            max_vram: None,
        },
        compute: choice,
        cards: false,
        cards_if_no_model: false,
    };
    let mut view = DrawingView::new(&input, false);
    let drawn =
        baton_studio::images::stage::draw(&request, &model, &compute, &mut |e| view.event(e, out));
    view.finish(out)?;
    print_manifest(&drawn?, &run_dir, false, out)
}
