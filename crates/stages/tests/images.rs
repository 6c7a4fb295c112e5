//! `baton images` end to end on tiny random models the tests write themselves, in their real
//! folder layouts, at 64x64 on the CPU: Stable Diffusion (SD 1.5's text encoder, a small UNet and
//! VAE), SDXL (two text encoders joined) and Flux (CLIP-L pooled + T5 in two shards, the
//! transformer, the autoencoder). The real loading, encoding, sampling and decoding path, the
//! phases, the PNGs' metadata, and every bad input.

mod common;

use common::said as text;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// One tiny model of `family` for every test in this file, written once per test process (tiny-sd's
/// text encoder is 470 MB of f32; tiny-sdxl's two are written in f16 and read as f32).
///
/// A `TempDir` held in a static is never dropped, so each run used to leave about 1 GB in /tmp.
/// The models go instead under cargo's `CARGO_TARGET_TMPDIR`, in a folder named by this process,
/// and each process first removes the folders of processes that are gone.
fn model_of(family: &'static str) -> PathBuf {
    static DIRS: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
    let mut dirs = DIRS.get_or_init(Default::default).lock().unwrap();
    if dirs.is_empty() {
        remove_models_of_gone_processes();
    }
    dirs.entry(family)
        .or_insert_with(|| {
            let path = models_root()
                .join(std::process::id().to_string())
                .join(family);
            let _ = std::fs::remove_dir_all(&path);
            let dtype = if family == "tiny-sdxl" {
                candle_core::DType::F16
            } else {
                candle_core::DType::F32
            };
            baton_studio::images::random::write_random_model(
                &path,
                baton_studio::images::family::find(family).unwrap(),
                dtype,
            )
            .unwrap();
            path
        })
        .clone()
}

fn models_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("images-tests")
}

/// Removes `models_root()/PID` for every PID that no longer runs (a finished or killed run of
/// this file), so at most the models of the runs alive now are on disk.
fn remove_models_of_gone_processes() {
    let Ok(entries) = std::fs::read_dir(models_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let gone = match name.to_str().and_then(|n| n.parse::<u32>().ok()) {
            Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        };
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `baton images` with a tiny `family` model, on the CPU.
fn images_with(family: &'static str, dir: &Path, input: &Path, extra: &[&str]) -> Output {
    Command::new(common::baton_exe())
        .current_dir(dir)
        .env("HF_HOME", dir.join("no-hub"))
        .arg("images")
        .arg("--input")
        .arg(input)
        .arg("--model")
        .arg(model_of(family))
        .args(["--family", family, "--compute", "cpu"])
        .args(extra)
        .output()
        .unwrap()
}

fn storyboard(dir: &Path, prompts: &[&str]) -> PathBuf {
    let scripts = dir.join("run/1_scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let scenes: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({"index": i + 1, "title": "t", "narration": "n", "image_prompt": p,
                "duration_seconds": 5.0})
        })
        .collect();
    let file = scripts.join("x_scenes.json");
    let board = serde_json::json!({"topic": "T", "title": "T", "scenes": scenes});
    std::fs::write(&file, serde_json::to_vec(&board).unwrap()).unwrap();
    file
}

/// `baton images` with the tiny SD model at 2 steps.
fn images(dir: &Path, input: &Path, extra: &[&str]) -> Output {
    images_with("tiny-sd", dir, input, &[&["--steps", "2"], extra].concat())
}

/// Size and text chunks of a PNG, after decoding every pixel.
fn png_info(path: &Path) -> (u32, u32, Vec<(String, String)>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    let info = reader.info();
    let chunks = info
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (frame.width, frame.height, chunks)
}

#[test]
fn every_scene_is_drawn_in_three_phases_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(
        dir.path(),
        &[
            "neon street in the rain",
            "a night market with glowing lights",
        ],
    );
    let out = images(dir.path(), &input, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let run = dir.path().join("run");
    for n in 1..=2u32 {
        let (w, h, chunks) = png_info(&run.join(format!("3_images/scene_{n:02}.png")));
        assert_eq!((w, h), (64, 64));
        let get = |k: &str| {
            chunks
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("seed"), Some((42 + n).to_string()));
        assert_eq!(get("steps").as_deref(), Some("2"));
        assert!(get("model").unwrap().starts_with("tiny-sd"));
        assert!(
            get("prompt")
                .unwrap()
                .contains(if n == 1 { "neon" } else { "market" })
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("3_images/images.json")).unwrap()).unwrap();
    let phases = manifest["phases"].as_array().unwrap();
    let names: Vec<_> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text encoder", "unet", "vae"]);
    for p in phases {
        assert!(p["weights_bytes"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(p["leaked"], false, "{p}");
        assert!(p["peak_bytes"].as_u64().unwrap() >= p["baseline_bytes"].as_u64().unwrap());
    }
    // The text encoder (SD 1.5's, 123M parameters) is the largest phase of this model.
    assert!(phases[0]["weights_bytes"].as_u64().unwrap() > 400 << 20);
    assert_eq!(manifest["images"][0]["kind"], "generated");
    assert!(text(&out).contains("PHASE") && text(&out).contains("peak"));
}

#[test]
fn the_same_seed_draws_the_same_picture() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["drones over the city sky"]);
    let png = |seed: &str| {
        let out = images(dir.path(), &input, &["--seed", seed]);
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read(dir.path().join("run/3_images/scene_01.png")).unwrap()
    };
    let a = png("7");
    assert_eq!(a, png("7"));
    assert_ne!(a, png("8"));
}

/// `--dump` writes what each phase produced; the noise it holds, given back with `--latents`,
/// draws the seed's picture under another seed; latents of the wrong shape are refused before
/// anything loads.
#[test]
fn the_dump_holds_every_phase_and_given_latents_replace_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["neon street in the rain"]);
    let dump = dir.path().join("dump");
    let out = images(dir.path(), &input, &["--dump", dump.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let load = |phase: &str| {
        candle_core::safetensors::load(
            dump.join(format!("{phase}.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let text_phase = load("text");
    assert_eq!(text_phase["scene1.ids0"].dims(), &[1, 77]);
    assert_eq!(text_phase["scene1.text0"].dims(), &[1, 77, 768]);
    let denoise = load("denoise");
    for step in 0..2 {
        for what in ["input", "pred", "latents"] {
            let t = &denoise[&format!("scene1.step{step}.{what}")];
            // Guidance doubles the model's input (unconditional row first).
            let rows = if what == "input" { 2 } else { 1 };
            assert_eq!(t.dims(), &[rows, 4, 8, 8], "step {step} {what}");
        }
    }
    assert_eq!(denoise["scene1.context"].dims(), &[2, 77, 768]);
    assert_eq!(denoise["scene1.timesteps"].dims(), &[2]);
    let pixels = load("decode")["scene1.pixels"].clone();
    assert_eq!(pixels.dims(), &[1, 3, 64, 64]);

    let latents = dir.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("latents".to_string(), denoise["scene1.noise"].clone())]),
        &latents,
    )
    .unwrap();
    let out = images(
        dir.path(),
        &input,
        &[
            "--seed",
            "999",
            "--latents",
            latents.to_str().unwrap(),
            "--dump",
            dump.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let again = load("decode")["scene1.pixels"].clone();
    let same = pixels
        .eq(&again)
        .unwrap()
        .min_all()
        .unwrap()
        .to_scalar::<u8>()
        .unwrap();
    assert_eq!(
        same, 1,
        "the seed's noise given as --latents draws the seed's picture"
    );

    let wrong = dir.path().join("wrong.safetensors");
    let noise = candle_core::Tensor::zeros(
        (1, 16, 8, 8),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(&HashMap::from([("latents".to_string(), noise)]), &wrong)
        .unwrap();
    std::fs::remove_dir_all(dir.path().join("run/3_images")).unwrap();
    let out = images(dir.path(), &input, &["--latents", wrong.to_str().unwrap()]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("wrong.safetensors")
            && said.contains("(1, 16, 8, 8)")
            && said.contains("4, 8, 8"),
        "{said}"
    );
    assert!(
        !said.contains("phase: "),
        "refused before any phase: {said}"
    );
    assert!(!dir.path().join("run/3_images/scene_01.png").exists());
}

#[test]
fn a_prompt_longer_than_the_encoder_takes_is_cut_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // 90 words (180 characters, under the schema's 300) but 90 tokens, over the 75 that fit.
    let long = "a ".repeat(90);
    let input = storyboard(dir.path(), &[long.trim()]);
    let out = images(dir.path(), &input, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "warning: scene 1's image_prompt is longer than the text encoder's 77 tokens"
        )
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("run/3_images/images.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["images"][0]["prompt_truncated"], true);
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let nothing_written = || {
        let images = dir.path().join("run/3_images");
        !images.exists() || std::fs::read_dir(&images).unwrap().next().is_none()
    };
    let refuse = |out: Output, code: i32, expect: &[&str]| {
        let said = text(&out);
        assert_eq!(out.status.code(), Some(code), "{said}");
        for e in expect {
            assert!(said.contains(e), "expected '{e}' in: {said}");
        }
        assert!(nothing_written(), "{said}");
    };
    let empty = storyboard(dir.path(), &["a street", "  "]);
    // The storyboard check refuses an empty prompt before the model is touched.
    refuse(
        images(dir.path(), &empty, &[]),
        2,
        &["scene 2 image_prompt is empty"],
    );
    let input = storyboard(dir.path(), &["a street"]);
    refuse(
        images(dir.path(), &input, &["--width", "100"]),
        2,
        &["--width 100 is not a multiple of 16", "tiny-sd", "112"],
    );
    refuse(
        images(dir.path(), &input, &["--max-vram", "1MiB"]),
        2,
        &["--max-vram is 1.0 MiB", "text encoder", "unet", "vae"],
    );
    let unknown = Command::new(common::baton_exe())
        .current_dir(dir.path())
        .arg("images")
        .arg("--input")
        .arg(&input)
        .args(["--model", "sd-9"])
        .output()
        .unwrap();
    refuse(
        unknown,
        2,
        &[
            "unknown image model 'sd-9'",
            "sd-turbo, sdxl-turbo, flux-schnell, flux-dev, sd-2.1, sd-1.5",
        ],
    );
    let offline = Command::new(common::baton_exe())
        .current_dir(dir.path())
        .env("HF_HOME", dir.path().join("empty-hub"))
        .arg("images")
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    refuse(
        offline,
        1,
        &["no image model", "stabilityai/sd-turbo", "--cards"],
    );
    // --fetch goes to the hub, unless told not to connect.
    let no_network = Command::new(common::baton_exe())
        .current_dir(dir.path())
        .env("HF_HOME", dir.path().join("empty-hub"))
        .env("HF_HUB_OFFLINE", "1")
        .arg("images")
        .arg("--input")
        .arg(&input)
        .args(["--model", "sdxl-turbo", "--fetch"])
        .output()
        .unwrap();
    refuse(
        no_network,
        1,
        &[
            "fetching sdxl-turbo from the Hugging Face hub",
            "HF_HUB_OFFLINE is set",
            "text_encoder/model.fp16.safetensors",
        ],
    );
    let half = dir.path().join("half-model");
    std::fs::create_dir_all(half.join("unet")).unwrap();
    let incomplete = Command::new(common::baton_exe())
        .current_dir(dir.path())
        .arg("images")
        .arg("--input")
        .arg(&input)
        .arg("--model")
        .arg(&half)
        .output()
        .unwrap();
    refuse(incomplete, 2, &["half-model", "lacks a text encoder"]);
}

/// Bytes of tensor data in a safetensors file (its size less its header).
fn data_bytes(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes.len() as u64 - 8 - header
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("run/3_images/images.json")).unwrap()).unwrap()
}

#[test]
fn flux_draws_every_scene_through_clip_t5_the_transformer_and_the_autoencoder() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["neon city in the rain", "drones at dawn"]);
    let out = images_with("tiny-flux", dir.path(), &input, &[]);
    assert!(out.status.success(), "{}", text(&out));
    for n in 1..=2u32 {
        let (w, h, chunks) = png_info(&dir.path().join(format!("run/3_images/scene_{n:02}.png")));
        assert_eq!((w, h), (64, 64));
        assert!(
            chunks
                .iter()
                .any(|(k, v)| k == "model" && v.starts_with("tiny-flux"))
        );
        // The family's defaults: 2 steps, guidance 3.5 (dev-like: an input, not a second batch).
        assert!(chunks.iter().any(|(k, v)| k == "steps" && v == "2"));
        assert!(chunks.iter().any(|(k, v)| k == "guidance" && v == "3.5"));
    }
    let m = manifest(dir.path());
    let phases = m["phases"].as_array().unwrap();
    let names: Vec<_> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text encoder", "transformer", "autoencoder"]);
    for p in phases {
        assert_eq!(p["leaked"], false, "{p}");
    }
    // The text phase loaded CLIP and both of T5's shards; the others their one file each.
    let model = model_of("tiny-flux");
    let text_files = [
        "text_encoder/model.safetensors",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors",
    ];
    for f in &text_files {
        assert!(data_bytes(&model.join(f)) > 0, "{f} holds tensors");
    }
    let sum = |files: &[&str]| {
        files
            .iter()
            .map(|f| data_bytes(&model.join(f)))
            .sum::<u64>()
    };
    assert_eq!(phases[0]["weights_bytes"], sum(&text_files));
    assert_eq!(phases[1]["weights_bytes"], sum(&["flux1-tiny.safetensors"]));
    assert_eq!(phases[2]["weights_bytes"], sum(&["ae.safetensors"]));
    assert_eq!(m["dtype"], "f32");
}

#[test]
fn flux_is_reproducible_and_refuses_sizes_off_its_16_pixel_grid() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["a wet street with neon reflections"]);
    // Flux's sampler adds no noise after the first: the same seed draws the same bytes even on
    // the CPU, whose generator candle cannot seed.
    let png = |seed: &str| {
        let out = images_with("tiny-flux", dir.path(), &input, &["--seed", seed]);
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read(dir.path().join("run/3_images/scene_01.png")).unwrap()
    };
    let a = png("3");
    assert_eq!(a, png("3"));
    assert_ne!(a, png("4"));
    let out = images_with("tiny-flux", dir.path(), &input, &["--height", "72"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("--height 72 is not a multiple of 16 (tiny-flux's block size); use e.g. 80"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_prompt_longer_than_t5_takes_is_cut_with_a_warning_naming_t5() {
    let dir = tempfile::tempdir().unwrap();
    // 40 words: inside CLIP's 77, over tiny-flux's 32-token T5 context.
    let long = "neon ".repeat(40);
    let input = storyboard(dir.path(), &[long.trim()]);
    let out = images_with("tiny-flux", dir.path(), &input, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("scene 1's image_prompt is longer than T5's 32 tokens"),
        "{}",
        text(&out)
    );
    assert_eq!(manifest(dir.path())["images"][0]["prompt_truncated"], true);
}

#[test]
fn sdxl_joins_its_two_text_encoders_one_loaded_after_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["a cinematic wide shot of tokyo"]);
    let out = images_with("tiny-sdxl", dir.path(), &input, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (w, h, _) = png_info(&dir.path().join("run/3_images/scene_01.png"));
    assert_eq!((w, h), (64, 64));
    let m = manifest(dir.path());
    let model = model_of("tiny-sdxl");
    // Both encoders were loaded (the bytes read from their files).
    let both = data_bytes(&model.join("text_encoder/model.safetensors"))
        + data_bytes(&model.join("text_encoder_2/model.safetensors"));
    assert_eq!(m["phases"][0]["weights_bytes"].as_u64().unwrap(), both);
    // The UNet takes 1536-wide context (768 + 768): it ran, so the joining is right.
    assert_eq!(m["phases"][1]["name"], "unet");
    assert_eq!(m["phases"][1]["leaked"], false);
}

/// FLUX's transformer streamed from host memory a block at a time draws the same pictures as
/// resident, says so in its plan and images.json, and copies every block each step; streaming a
/// UNet is refused by name; a budget nothing fits is refused with the plan, before any file.
#[test]
fn flux_streamed_draws_what_resident_draws_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["neon city in the rain", "drones at dawn"]);
    let draw = |weights: &str| {
        let out = images_with("tiny-flux", dir.path(), &input, &["--weights", weights]);
        assert!(out.status.success(), "{}", text(&out));
        let pixels: Vec<Vec<u8>> = (1..=2)
            .map(|n| {
                baton_studio::images::decode_png(
                    &dir.path().join(format!("run/3_images/scene_{n:02}.png")),
                )
                .unwrap()
            })
            .collect();
        (text(&out), manifest(dir.path()), pixels)
    };
    let (_, resident, want) = draw("resident");
    let (said, streamed, got) = draw("streamed");
    assert_eq!(got, want, "streamed pictures differ from resident ones");
    assert!(said.contains("plan no budget given"), "{said}");
    assert!(said.contains("(streamed: two blocks of up to"), "{said}");
    assert_eq!(resident["phases"][1]["residence"], "resident");
    assert_eq!(resident["phases"][1]["streamed_bytes"], 0);
    let transformer = &streamed["phases"][1];
    assert!(
        transformer["residence"]
            .as_str()
            .unwrap()
            .starts_with("streamed"),
        "{transformer}"
    );
    assert_eq!(transformer["leaked"], false);
    // Every block, each of the family's 2 steps.
    let blocks: u64 =
        baton_weights::Header::read(&model_of("tiny-flux").join("flux1-tiny.safetensors"))
            .unwrap()
            .tensors
            .iter()
            .filter(|t| {
                t.name.starts_with("double_blocks.") || t.name.starts_with("single_blocks.")
            })
            .map(|t| t.bytes())
            .sum();
    assert!(blocks > 0);
    assert_eq!(transformer["streamed_bytes"].as_u64().unwrap(), 2 * blocks);

    let out = images(dir.path(), &input, &["--weights", "streamed"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("tiny-sd cannot stream its weights"),
        "{}",
        text(&out)
    );

    let fresh = tempfile::tempdir().unwrap();
    let input = storyboard(fresh.path(), &["neon city in the rain"]);
    let out = images_with("tiny-flux", fresh.path(), &input, &["--max-vram", "1MiB"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--max-vram is 1.0 MiB"),
        "{}",
        text(&out)
    );
    assert!(
        !fresh.path().join("run/3_images").exists()
            || std::fs::read_dir(fresh.path().join("run/3_images"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// A budget a whole image's decode does not fit, but a tile's does: FLUX's autoencoder decodes
/// in overlapping tiles (said in the plan and images.json), within its phase's plan, and the
/// picture is the whole-image decode's within a mean of 16/255 (each tile's group norms see only
/// the tile; the overlaps are blended).
#[test]
fn flux_decodes_in_tiles_when_a_whole_image_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let input = storyboard(dir.path(), &["neon city in the rain"]);
    let size = ["--width", "256", "--height", "256"];
    let draw = |extra: &[&str]| {
        let out = images_with(
            "tiny-flux",
            dir.path(),
            &input,
            &[&size[..], extra].concat(),
        );
        assert!(out.status.success(), "{}", text(&out));
        let png = baton_studio::images::decode_png(&dir.path().join("run/3_images/scene_01.png"));
        (text(&out), manifest(dir.path()), png.unwrap())
    };
    let (_, whole_m, whole) = draw(&[]);
    assert_eq!(whole_m["phases"][2]["residence"], "resident");
    let (said, tiled_m, tiled) = draw(&["--max-vram", "600MiB"]);
    assert!(
        said.contains("decoding in overlapping 128x128 tiles"),
        "{said}"
    );
    let decoder = &tiled_m["phases"][2];
    assert!(
        decoder["residence"].as_str().unwrap().contains("tiles"),
        "{decoder}"
    );
    assert!(decoder["planned_bytes"].as_u64().unwrap() < 600 << 20);
    assert!(
        decoder["peak_bytes"].as_u64().unwrap()
            < whole_m["phases"][2]["peak_bytes"].as_u64().unwrap(),
        "tiles hold less than a whole image: {decoder} against {}",
        whole_m["phases"][2]
    );
    assert_eq!(tiled.len(), whole.len());
    assert_ne!(tiled, whole);
    let mean = tiled
        .iter()
        .zip(&whole)
        .map(|(a, b)| a.abs_diff(*b) as f64)
        .sum::<f64>()
        / whole.len() as f64;
    assert!(mean < 16.0, "mean |difference| {mean}/255");
}

/// A GGUF transformer (the tiny FLUX's, quantized to Q8_0) given with --transformer draws
/// beside the model's other parts; the plan and images.json say it is quantized; its pictures
/// are its dequantized twin's within a few levels.
#[test]
fn flux_draws_with_a_gguf_transformer() {
    let dir = tempfile::tempdir().unwrap();
    let src = model_of("tiny-flux").join("flux1-tiny.safetensors");
    let gguf = dir.path().join("tiny-q8_0.gguf");
    let twin = dir.path().join("tiny-q8_0-dequantized.safetensors");
    baton_studio::images::random::write_quantized_transformer(
        &src,
        &gguf,
        &twin,
        candle_core::quantized::GgmlDType::Q8_0,
    )
    .unwrap();
    let input = storyboard(dir.path(), &["neon city in the rain"]);
    let mut pictures = Vec::new();
    for file in [&twin, &gguf] {
        let out = images_with(
            "tiny-flux",
            dir.path(),
            &input,
            &["--transformer", file.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", text(&out));
        pictures.push(
            baton_studio::images::decode_png(&dir.path().join("run/3_images/scene_01.png"))
                .unwrap(),
        );
    }
    let m = manifest(dir.path());
    assert_eq!(m["phases"][1]["residence"], "resident, quantized (Q8_0)");
    assert_eq!(m["phases"][1]["leaked"], false);
    let worst = pictures[0]
        .iter()
        .zip(&pictures[1])
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 32,
        "max |difference| {worst}/255 against the dequantized twin"
    );

    let out = images(
        dir.path(),
        &input,
        &["--transformer", gguf.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("only FLUX families"), "{}", text(&out));
}
