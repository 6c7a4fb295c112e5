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
    /// A GGUF block type to quantize FLUX's transformer to, and run beside its dequantized
    /// twin.
    pub quantize: Option<&'a str>,
}

/// One way's run, for the table.
struct Ran {
    mode: String,
    budget: Option<u64>,
    manifest: ImagesManifest,
    pixels: Vec<Vec<u8>>,
    /// The run its pictures are compared with.
    reference: usize,
}

/// One way to run: its name, how the transformer holds its weights, a transformer file instead
/// of the model's own, the run it is compared with.
struct Way {
    name: String,
    weights: WeightsMode,
    transformer: Option<std::path::PathBuf>,
    reference: usize,
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
    let modes: Vec<String> = match (args.weights.is_empty(), args.max_vram, args.quantize) {
        (false, _, _) => args.weights.to_vec(),
        (true, Some(_), _) => vec!["resident".into(), "streamed".into()],
        (true, None, Some(_)) => Vec::new(),
        (true, None, None) => vec!["auto".into()],
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
    let mut ways = Vec::new();
    for mode in &modes {
        ways.push(Way {
            name: mode.clone(),
            weights: mode.parse().map_err(baton::BadInput)?,
            transformer: None,
            reference: 0,
        });
    }
    if let Some(block) = args.quantize {
        if !matches!(fam.arch, baton_studio::images::Arch::Flux(_)) {
            return Err(baton::BadInput(format!(
                "--quantize {block}: only FLUX families have a transformer to quantize"
            ))
            .into());
        }
        let kind = match block {
            "q8_0" => candle_core::quantized::GgmlDType::Q8_0,
            "q6k" => candle_core::quantized::GgmlDType::Q6K,
            _ => candle_core::quantized::GgmlDType::Q4K,
        };
        // The random transformer is replaced by its dequantized twin (three 12B copies do not
        // fit a 64 GiB disk): the resident run below draws with the quantized weights, dense.
        let gguf = model_dir.join(format!("transformer-{block}.gguf"));
        let marker = model_dir.join(format!("transformer-is-{block}-dequantized"));
        if !(gguf.is_file() && marker.is_file()) {
            let started = std::time::Instant::now();
            baton_studio::images::random::write_quantized_transformer(
                &model.denoiser,
                &gguf,
                &model.denoiser,
                kind,
            )?;
            std::fs::write(&marker, b"")?;
            writeln!(
                out,
                "transformer quantized to {block}, and replaced by its weights dequantized, in {:.1}s",
                started.elapsed().as_secs_f64()
            )?;
        }
        let twin = model.denoiser.clone();
        let reference = ways.len();
        ways.push(Way {
            name: format!("{block}-dequantized"),
            weights: WeightsMode::Resident,
            transformer: Some(twin),
            reference,
        });
        ways.push(Way {
            name: block.to_string(),
            weights: WeightsMode::Auto,
            transformer: Some(gguf),
            reference,
        });
    }
    let mut ran: Vec<Ran> = Vec::new();
    for way in &ways {
        let (mode, weights) = (&way.name, way.weights);
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
            transformer: None,
            options: ImagesOptions {
                width: Some(size),
                height: Some(size),
                steps: args.steps,
                guidance: None,
                seed: 42,
                max_vram: budget,
                weights,
                latents: None,
                dump: None,
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
        let way_model = match &way.transformer {
            Some(file) => model.clone().with_transformer(&file.to_string_lossy())?,
            None => model.clone(),
        };
        let mut view = DrawingView::new(&input, false);
        let drawn = baton_studio::images::stage::draw(&request, &way_model, &compute, &mut |e| {
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
            reference: way.reference,
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
        "\n{:<16} {:>10} {:<10} {:>11} {:>8} {:>13} {:>13} {:>12}  PIXELS",
        "WEIGHTS",
        "BUDGET",
        "DENOISER",
        "s/IMAGE",
        "x REF",
        "DENOISE PEAK",
        "STAGE PEAK",
        "STREAMED"
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
        let reference = &ran[r.reference];
        let diff = r
            .pixels
            .iter()
            .zip(&reference.pixels)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)))
            .max()
            .unwrap_or(0);
        writeln!(
            out,
            "{:<16} {:>10} {:<10} {:>11.3} {:>8.2} {:>13} {:>13} {:>12}  {}",
            r.mode,
            r.budget.map_or("-".into(), format_bytes),
            match r.manifest.phases[1].residence.as_str() {
                x if x.starts_with("streamed") => "streamed",
                x if x.contains("quantized") => "quantized",
                _ => "resident",
            },
            per_image(r),
            per_image(r) / per_image(reference).max(1e-9),
            format_bytes(p.peak_bytes),
            format_bytes(stage_peak),
            format_bytes(p.streamed_bytes),
            match (diff, std::ptr::eq(r, reference)) {
                (_, true) => "(the reference)".to_string(),
                (0, false) => format!("identical to {}", reference.mode),
                (d, false) => format!("max |difference| {d}/255 against {}", reference.mode),
            }
        )?;
    }
    writeln!(
        out,
        "(peaks: this process's device memory at its highest, the CUDA context and kernels counted; s/image: the denoising phase, loading included, over the images)"
    )?;
    Ok(())
}
