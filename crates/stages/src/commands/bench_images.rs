//! `baton bench images`: the images stage over a model of a family's real shapes with random
//! weights; under a budget, each way of holding the weights side by side (time, peak, and the
//! pictures compared with the first way's).

use std::io::Write;

use baton_base::format_bytes;
use baton_studio::compute::Compute;
use baton_studio::images::{ImagesManifest, WeightsMode};

use crate::commands::bench_board::{check_bench_scenes, write_bench_storyboard};
use crate::commands::images::{DrawingView, print_manifest};

/// What `baton bench images` was asked.
pub struct BenchImages<'a> {
    pub family: &'a str,
    pub scenes: usize,
    pub size: usize,
    pub dir: &'a std::path::Path,
    pub choice: baton_memory::DeviceChoice,
    pub steps: Option<usize>,
    pub max_vram: Option<u64>,
    pub weights: &'a [String],
}

/// One way's run, for the table.
struct Ran {
    mode: String,
    budget: Option<u64>,
    manifest: ImagesManifest,
    pixels: Vec<Vec<u8>>,
}

/// `baton bench images`: a model with the family's real shapes and random weights, written
/// first, then the images stage over `scenes` scenes at `size` x `size`, once per way of
/// holding the weights.
pub fn bench_images(args: &BenchImages, out: &mut dyn Write) -> anyhow::Result<()> {
    use baton_studio::images::{
        ImageModel, ImagesOptions, family as families, random::write_random_model,
    };
    let family = args.family;
    let fam = families::find(family).ok_or_else(|| {
        baton::BadInput(format!(
            "--family '{family}': use one of {}",
            families::names()
        ))
    })?;
    check_bench_scenes(args.scenes)?;
    let modes: Vec<String> = match (args.weights.is_empty(), args.max_vram) {
        (false, _) => args.weights.to_vec(),
        (true, Some(_)) => vec!["resident".into(), "streamed".into()],
        (true, None) => vec!["auto".into()],
    };
    let (compute, where_) = Compute::choose(args.choice)?;
    let dtype = if matches!(compute, Compute::Cuda(_)) {
        fam.gpu_dtype()
    } else {
        candle_core::DType::F32
    };
    let model_dir = args
        .dir
        .join(format!("{family}-random-{dtype:?}").to_lowercase());
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
    let size = args.size;
    writeln!(
        out,
        "random {family} model ({dtype:?}) {how} at {} in {:.1}s; drawing {} scenes at {size}x{size} {where_}",
        model_dir.display(),
        started.elapsed().as_secs_f64(),
        args.scenes
    )?;
    let prompts = [
        "neon street in the rain at night",
        "a crowded night market with glowing lights",
        "drones over the city sky",
        "a wet street with neon reflections",
        "dawn over the river and the city",
        "a cinematic wide shot of tokyo",
    ];
    let mut ran: Vec<Ran> = Vec::new();
    for mode in &modes {
        let weights: WeightsMode = mode.parse().map_err(baton::BadInput)?;
        // The resident way is the reference: it runs without the budget (which it may exceed).
        let budget = args.max_vram.filter(|_| weights != WeightsMode::Resident);
        let run_dir = args.dir.join(format!("run-{mode}"));
        let input =
            write_bench_storyboard(&run_dir, args.scenes, &|_| "Benchmark narration.", &|i| {
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
                steps: args.steps,
                guidance: None,
                seed: 42,
                max_vram: budget,
                weights,
            },
            compute: args.choice,
            cards: false,
            cards_if_no_model: false,
        };
        writeln!(
            out,
            "\n== {mode}{} ==",
            budget.map_or(String::new(), |b| format!(" within {}", format_bytes(b)))
        )?;
        let mut view = DrawingView::new(&input, false);
        let drawn = baton_studio::images::stage::draw(&request, &model, &compute, &mut |e| {
            view.event(e, out)
        });
        view.finish(out)?;
        let manifest = drawn?;
        print_manifest(&manifest, &run_dir, false, out)?;
        let pixels = manifest
            .images
            .iter()
            .map(|i| baton_studio::images::decode_png(&run_dir.join(&i.file)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        ran.push(Ran {
            mode: mode.clone(),
            budget,
            manifest,
            pixels,
        });
    }
    if ran.len() > 1 {
        compare(&ran, out)?;
    }
    Ok(())
}

/// The table: each way's weights, time per image, the denoiser's peak, and its pictures
/// against the first way's.
fn compare(ran: &[Ran], out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "\n{:<10} {:>10} {:<10} {:>11} {:>8} {:>13} {:>13} {:>12}  PIXELS vs {}",
        "WEIGHTS",
        "BUDGET",
        "DENOISER",
        "s/IMAGE",
        "x FIRST",
        "DENOISE PEAK",
        "STAGE PEAK",
        "STREAMED",
        ran[0].mode
    )?;
    let per_image = |r: &Ran| {
        let p = &r.manifest.phases[1];
        p.seconds / r.manifest.images.len().max(1) as f64
    };
    for r in ran {
        let p = &r.manifest.phases[1];
        let stage_peak = r
            .manifest
            .phases
            .iter()
            .map(|p| p.peak_bytes)
            .max()
            .unwrap_or(0);
        let diff = r
            .pixels
            .iter()
            .zip(&ran[0].pixels)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)))
            .max()
            .unwrap_or(0);
        writeln!(
            out,
            "{:<10} {:>10} {:<10} {:>11.3} {:>8.2} {:>13} {:>13} {:>12}  {}",
            r.mode,
            r.budget.map_or("-".into(), format_bytes),
            r.manifest.phases[1]
                .residence
                .split(':')
                .next()
                .unwrap_or(""),
            per_image(r),
            per_image(r) / per_image(&ran[0]).max(1e-9),
            format_bytes(p.peak_bytes),
            format_bytes(stage_peak),
            format_bytes(p.streamed_bytes),
            if diff == 0 {
                "identical".to_string()
            } else {
                format!("max |difference| {diff}/255")
            }
        )?;
    }
    writeln!(
        out,
        "(peaks: this process's device memory at its highest, the CUDA context and kernels counted; s/image: the denoising phase, loading included, over the images)"
    )?;
    Ok(())
}
