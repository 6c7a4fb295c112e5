//! A diffusion model with random weights, written in its family's real folder layout: what the
//! tests (the tiny families, on the CPU) and the GPU benchmark (real shapes, up to Flux's 12B)
//! load, through exactly the code that loads a real model.
//!
//! The models are never built in memory: each part is constructed once against a recording
//! backend that hands out zero-sized stand-ins and notes every tensor's name, shape and
//! initialisation, then the file is streamed tensor by tensor with values drawn the way candle's
//! own initialisers would draw them. A 24 GB transformer costs disk, not RAM. The tokenizers are
//! small: CLIP's as vocab.json and merges.txt (the diffusers layout), T5's as tokenizer.json.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_transformers::models::stable_diffusion::vae;
use candle_transformers::models::{flux, t5};

use super::clip_text::ClipText;
use super::family::{Arch, Family};
use super::unet::{TIME_ID_FEATURES, UNet};
use super::{ImageModel, ImagesError};

/// Words the test tokenizers know whole; CLIP's spells anything else letter by letter.
const WORDS: &str = "a an the of in on at with and night neon street city rain market light \
    tokyo cyberpunk crowd sky dawn river drone drones glowing wet reflections painting photo \
    cinematic wide shot close detailed";

/// Every tensor a model asks for, in order: name, shape, how candle would initialise it.
type Seen = std::sync::Arc<Mutex<Vec<(String, Vec<usize>, Init)>>>;

/// A VarBuilder backend that notes what is asked of it.
struct Recorder(Seen);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut seen = self.0.lock().expect("not poisoned");
        if !seen.iter().any(|(n, _, _)| n == name) {
            seen.push((name.to_string(), s.dims().to_vec(), h));
        }
        // A stand-in of the right shape that holds one element.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the recorder cannot guess the shape of '{name}'")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The tensors `build` asks for.
fn record(
    build: &dyn Fn(VarBuilder) -> candle_core::Result<()>,
) -> Result<Vec<(String, Vec<usize>, Init)>, ImagesError> {
    let seen = Seen::default();
    let vb = VarBuilder::from_backend(Box::new(Recorder(seen.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let seen = std::mem::take(&mut *seen.lock().expect("not poisoned"));
    Ok(seen)
}

/// Values for one tensor as candle's initialiser `init` would draw them (a normal or uniform of
/// the same spread), from `seed`. Big tensors repeat a block of 1M values: the shapes and the
/// bytes moved are what matter there.
fn values(init: &Init, shape: &[usize], seed: u64) -> (Vec<f32>, u64) {
    let n: u64 = shape.iter().map(|d| *d as u64).product();
    let block = n.min(1 << 20) as usize;
    let (normal, a, b) = match *init {
        Init::Const(c) => return (vec![c as f32; block.max(1)], n),
        Init::Randn { mean, stdev } => (true, mean, stdev),
        Init::Uniform { lo, up } => (false, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(&Shape::from_dims(shape)).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (true, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (false, -bound, bound)
                }
            }
        }
    };
    let out = if normal {
        super::gaussian(block, seed)
            .into_iter()
            .map(|g| (a + b * g as f64) as f32)
            .collect()
    } else {
        // Map normals to uniforms through their CDF's cheap stand-in: the fractional part.
        super::gaussian(block, seed)
            .into_iter()
            .map(|g| {
                let u = (g as f64 * 7.31).rem_euclid(1.0);
                (a + (b - a) * u) as f32
            })
            .collect()
    };
    (out, n)
}

/// Writes the tensors `build` asks for into safetensors `files` (the tensors dealt out in order,
/// each file about an equal share) in `dtype`. Returns the bytes written.
pub(crate) fn write_part(
    dir: &Path,
    files: &[&str],
    dtype: DType,
    seed: u64,
    build: &dyn Fn(VarBuilder) -> candle_core::Result<()>,
) -> Result<u64, ImagesError> {
    let tensors = record(build)?;
    let total: u64 = tensors
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>() as u64)
        .sum();
    let share = total.div_ceil(files.len() as u64).max(1);
    let mut written = 0u64;
    let mut at = 0usize;
    for (i, file) in files.iter().enumerate() {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ImagesError::Unwritable {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut elements = 0u64;
        let start = at;
        while at < tensors.len() && (elements < share || i + 1 == files.len()) {
            elements += tensors[at].1.iter().product::<usize>() as u64;
            at += 1;
        }
        let part = &tensors[start..at];
        let specs: Vec<_> = part
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone(), dtype))
            .collect();
        written += baton_weights::bench::write_streamed(&path, &specs, &mut |k, bytes, out| {
            let (name, shape, init) = &part[k];
            let name_seed = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            // Tensors read with plain `get` come with candle's default hint, zero. A
            // weight-normalised convolution's gain or a snake activation's alpha (DAC) start at
            // one, as trained ones sit near; a norm's gain near one; any other such tensor of
            // rank 2 or more is a weight, drawn at 1/sqrt(fan-in) (zero would silence the
            // model, or divide by zero).
            let plain = matches!(init, Init::Const(c) if *c == 0.0);
            let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
            let drawn;
            let gain = Init::Randn {
                mean: 1.0,
                stdev: 0.1,
            };
            let init = if plain && (name.ends_with("weight_g") || name.ends_with("alpha")) {
                &Init::Const(1.0)
            } else if plain
                && shape.len() == 1
                && (name.ends_with("weight") || name.ends_with("scale"))
            {
                // A norm's gain (T5's layer norms, FLUX's query/key norms): zero would silence
                // the model's text or flatten its attention; trained ones sit near one.
                &gain
            } else if plain && shape.len() >= 2 {
                drawn = Init::Randn {
                    mean: 0.0,
                    stdev: 1.0 / fan_in.sqrt(),
                };
                &drawn
            } else {
                init
            };
            let (block, _) = values(init, shape, name_seed);
            let encoded = encode(&block, dtype);
            let mut left = bytes;
            while left > 0 {
                let n = left.min(encoded.len() as u64) as usize;
                out.write_all(&encoded[..n])?;
                left -= n as u64;
            }
            Ok(())
        })?;
    }
    Ok(written)
}

/// Little-endian bytes of `values` in `dtype` (f32, f16 or bf16).
fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Writes `family`'s models with random weights in `dtype`, and small tokenizers, under `dir`,
/// in the layout its real repository has.
pub fn write_random_model(
    dir: &Path,
    family: &'static Family,
    dtype: DType,
) -> Result<ImageModel, ImagesError> {
    match &family.arch {
        Arch::Sd(sd) => {
            let clips: Vec<_> = std::iter::once(sd.clip).chain(sd.clip2).collect();
            for (i, cfg) in clips.iter().enumerate() {
                let suffix = if i == 0 { "" } else { "_2" };
                write_part(
                    dir,
                    &[&format!("text_encoder{suffix}/model.safetensors")],
                    dtype,
                    i as u64,
                    &|vb| ClipText::new(vb, cfg).map(|_| ()),
                )?;
                write_clip_tokenizer(&dir.join(format!("tokenizer{suffix}")))?;
            }
            write_part(
                dir,
                &["unet/diffusion_pytorch_model.safetensors"],
                dtype,
                10,
                &|vb| UNet::new(vb, (sd.unet)(), sd.pooled()).map(|_| ()),
            )?;
            write_part(
                dir,
                &["vae/diffusion_pytorch_model.safetensors"],
                dtype,
                11,
                &|vb| vae::AutoEncoderKL::new(vb, 3, 3, (sd.vae)()).map(|_| ()),
            )?;
        }
        Arch::Flux(fx) => {
            write_part(dir, &["text_encoder/model.safetensors"], dtype, 0, &|vb| {
                ClipText::new(vb, &fx.clip).map(|_| ())
            })?;
            write_clip_tokenizer(&dir.join("tokenizer"))?;
            let t5_config: t5::Config = serde_json::from_str(fx.t5_config)
                .map_err(|e| ImagesError::Option(format!("the T5 config: {e}")))?;
            write_part(
                dir,
                &[
                    "text_encoder_2/model-00001-of-00002.safetensors",
                    "text_encoder_2/model-00002-of-00002.safetensors",
                ],
                dtype,
                1,
                &|vb| t5::T5EncoderModel::load(vb, &t5_config).map(|_| ()),
            )?;
            write_file(
                &dir.join("text_encoder_2/config.json"),
                fx.t5_config.as_bytes(),
            )?;
            write_t5_tokenizer(&dir.join("tokenizer_2"))?;
            write_part(dir, &[fx.transformer_file], dtype, 10, &|vb| {
                flux::model::Flux::new(&(fx.transformer)(), vb).map(|_| ())
            })?;
            write_part(dir, &["ae.safetensors"], dtype, 11, &|vb| {
                flux::autoencoder::AutoEncoder::new(&(fx.autoencoder)(), vb).map(|_| ())
            })?;
        }
    }
    write_configs(dir, family)?;
    ImageModel::in_dir(dir, family)
}

/// The config files the family's real repository holds beside its weights (diffusers' and
/// transformers' `config.json`s, the scheduler's, the tokenizers' pad token), from the shapes
/// baton builds: what a reference implementation needs to load the same folder
/// (`scripts/gpu/parity.py`). baton itself reads only the tokenizers' and T5's.
fn write_configs(dir: &Path, family: &Family) -> Result<(), ImagesError> {
    use serde_json::json;
    let json_file = |path: &str, value: serde_json::Value| {
        write_file(
            &dir.join(path),
            &serde_json::to_vec_pretty(&value).expect("json serializes"),
        )
    };
    // The test tokenizers' end token (write_clip_tokenizer).
    const EOS: u32 = 1;
    let clip = |suffix: &str, cfg: &super::clip_text::ClipConfig| {
        json_file(
            &format!("text_encoder{suffix}/config.json"),
            cfg.to_transformers_json(EOS),
        )?;
        let pad = cfg.pad_with.unwrap_or("<|endoftext|>");
        json_file(
            &format!("tokenizer{suffix}/special_tokens_map.json"),
            json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": pad}),
        )
    };
    let vae = |block_out: Vec<usize>,
               layers: usize,
               latent: usize,
               scale: f64,
               shift: Option<f64>,
               quant: bool| {
        let n = block_out.len();
        json!({
            "_class_name": "AutoencoderKL",
            "in_channels": 3, "out_channels": 3,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "up_block_types": vec!["UpDecoderBlock2D"; n],
            "block_out_channels": block_out,
            "layers_per_block": layers,
            "latent_channels": latent,
            "norm_num_groups": 32,
            "act_fn": "silu",
            "scaling_factor": scale,
            "shift_factor": shift,
            "use_quant_conv": quant,
            "use_post_quant_conv": quant,
            "sample_size": family.native,
        })
    };
    match &family.arch {
        Arch::Sd(sd) => {
            clip("", &sd.clip)?;
            if let Some(c2) = &sd.clip2 {
                clip("_2", c2)?;
            }
            let u = (sd.unet)();
            let down: Vec<&str> = u
                .blocks
                .iter()
                .map(|b| match b.use_cross_attn {
                    Some(_) => "CrossAttnDownBlock2D",
                    None => "DownBlock2D",
                })
                .collect();
            let up: Vec<&str> = u
                .blocks
                .iter()
                .rev()
                .map(|b| match b.use_cross_attn {
                    Some(_) => "CrossAttnUpBlock2D",
                    None => "UpBlock2D",
                })
                .collect();
            json_file(
                "unet/config.json",
                json!({
                    "_class_name": "UNet2DConditionModel",
                    "sample_size": family.native / 8,
                    "in_channels": 4, "out_channels": 4,
                    "center_input_sample": u.center_input_sample,
                    "flip_sin_to_cos": u.flip_sin_to_cos,
                    "freq_shift": u.freq_shift as i64,
                    "down_block_types": down,
                    "up_block_types": up,
                    "mid_block_type": "UNetMidBlock2DCrossAttn",
                    "block_out_channels": u.blocks.iter().map(|b| b.out_channels).collect::<Vec<_>>(),
                    "layers_per_block": u.layers_per_block,
                    "downsample_padding": u.downsample_padding,
                    "mid_block_scale_factor": u.mid_block_scale_factor,
                    "act_fn": "silu",
                    "norm_num_groups": u.norm_num_groups,
                    "norm_eps": u.norm_eps,
                    "cross_attention_dim": u.cross_attention_dim,
                    "transformer_layers_per_block": u.blocks.iter().map(|b| b.use_cross_attn.unwrap_or(1)).collect::<Vec<_>>(),
                    "attention_head_dim": u.blocks.iter().map(|b| b.attention_head_dim).collect::<Vec<_>>(),
                    "use_linear_projection": u.use_linear_projection,
                    "upcast_attention": false,
                    "addition_embed_type": sd.pooled().map(|_| "text_time"),
                    "addition_time_embed_dim": sd.pooled().map(|_| TIME_ID_FEATURES),
                    "projection_class_embeddings_input_dim":
                        sd.pooled().map(|p| p + 6 * TIME_ID_FEATURES),
                }),
            )?;
            let v = (sd.vae)();
            json_file(
                "vae/config.json",
                vae(
                    v.block_out_channels.clone(),
                    v.layers_per_block,
                    v.latent_channels,
                    sd.latent_scale,
                    None,
                    v.use_quant_conv,
                ),
            )?;
            json_file(
                "scheduler/scheduler_config.json",
                sd.scheduler.diffusers_json(),
            )?;
        }
        Arch::Flux(fx) => {
            clip("", &fx.clip)?;
            let t = (fx.transformer)();
            json_file(
                "transformer/config.json",
                json!({
                    "_class_name": "FluxTransformer2DModel",
                    "patch_size": 1,
                    "in_channels": t.in_channels,
                    "num_layers": t.depth,
                    "num_single_layers": t.depth_single_blocks,
                    "attention_head_dim": t.hidden_size / t.num_heads,
                    "num_attention_heads": t.num_heads,
                    "joint_attention_dim": t.context_in_dim,
                    "pooled_projection_dim": t.vec_in_dim,
                    "guidance_embeds": t.guidance_embed,
                    "axes_dims_rope": t.axes_dim,
                }),
            )?;
            let a = (fx.autoencoder)();
            json_file(
                "vae/config.json",
                vae(
                    a.ch_mult.iter().map(|m| m * a.ch).collect(),
                    a.num_res_blocks,
                    a.z_channels,
                    a.scale_factor,
                    Some(a.shift_factor),
                    false,
                ),
            )?;
            json_file(
                "scheduler/scheduler_config.json",
                json!({
                    "_class_name": "FlowMatchEulerDiscreteScheduler",
                    "num_train_timesteps": 1000,
                    "shift": if fx.shift { 3.0 } else { 1.0 },
                    "use_dynamic_shifting": fx.shift,
                    "base_shift": 0.5, "max_shift": 1.15,
                    "base_image_seq_len": 256, "max_image_seq_len": 4096,
                }),
            )?;
        }
    }
    Ok(())
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ImagesError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ImagesError::Unwritable {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    baton_base::atomic_file::write_atomic(path, bytes).map_err(ImagesError::from)
}

/// A CLIP BPE tokenizer as diffusers ships it (vocab.json, merges.txt): CLIP's special tokens,
/// every letter alone and word-final, and the test words merged whole. Its ids stay under 64.
pub fn write_clip_tokenizer(dir: &Path) -> Result<(), ImagesError> {
    let mut vocab: Vec<String> = ["<|startoftext|>", "<|endoftext|>", "!"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in 'a'..='z' {
        vocab.push(c.to_string());
        vocab.push(format!("{c}</w>"));
    }
    // "neon" and "city" merge whole; the rest stay letters.
    let merges = [
        "o n</w>",
        "e on</w>",
        "n eon</w>",
        "c i",
        "ci t",
        "cit y</w>",
    ];
    for m in merges {
        vocab.push(m.replace(' ', ""));
    }
    vocab.push(",</w>".into());
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    write_file(
        &dir.join("vocab.json"),
        &serde_json::to_vec(&map).expect("a map serializes"),
    )?;
    let merges = format!("#version: 0.2\n{}\n", merges.join("\n"));
    write_file(&dir.join("merges.txt"), merges.as_bytes())
}

/// A word-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2) and the test words.
pub(crate) fn write_t5_tokenizer(dir: &Path) -> Result<(), ImagesError> {
    let vocab: HashMap<String, u32> = ["<pad>", "</s>", "<unk>"]
        .into_iter()
        .chain(WORDS.split_whitespace())
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| ImagesError::Tokenizer(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    let json = tokenizer
        .to_string(false)
        .map_err(|e| ImagesError::Tokenizer(e.to_string()))?;
    write_file(&dir.join("tokenizer.json"), json.as_bytes())
}

/// A FLUX transformer quantized for the benchmark: `src` (safetensors) written to `gguf` with
/// its matrices in `block` (those whose rows it divides; the rest, and every vector, in f32),
/// and the quantized values dequantized back to `src`'s dtype in `twin` (safetensors): the same
/// weights dense, for the quantized run's pictures to be compared with. `twin` may be `src`
/// (FLUX's three copies do not fit a 64 GiB disk): `src` is then removed once read, before the
/// twin is written over it. Each file is written whole. Tensors are quantized on every core.
pub fn write_quantized_transformer(
    src: &Path,
    gguf: &Path,
    twin: &Path,
    block: candle_core::quantized::GgmlDType,
) -> Result<(), ImagesError> {
    use candle_core::quantized::{GgmlDType, QTensor};
    use std::os::unix::fs::FileExt;
    let header = baton_weights::Header::read(src)?;
    let file = std::fs::File::open(src)
        .map_err(|e| ImagesError::Option(format!("'{}': {e}", src.display())))?;
    let quantize = |i: usize| -> Result<QTensor, ImagesError> {
        let t = &header.tensors[i];
        let mut raw = vec![0u8; t.bytes() as usize];
        file.read_exact_at(&mut raw, header.data_offset + t.start)
            .map_err(|e| ImagesError::Option(format!("'{}': {e}", src.display())))?;
        let dense =
            Tensor::from_raw_buffer(&raw, t.dtype, &t.shape, &Device::Cpu)?.to_dtype(DType::F32)?;
        let rows_divide = t.shape.last().is_some_and(|d| d % block.block_size() == 0);
        let kind = if t.shape.len() == 2 && rows_divide {
            block
        } else {
            GgmlDType::F32
        };
        Ok(QTensor::quantize(&dense, kind)?)
    };
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Mutex<Vec<Option<QTensor>>> =
        Mutex::new((0..header.tensors.len()).map(|_| None).collect());
    std::thread::scope(|scope| -> Result<(), ImagesError> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<(), ImagesError> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= header.tensors.len() {
                            return Ok(());
                        }
                        let q = quantize(i)?;
                        done.lock().expect("a worker panicked")[i] = Some(q);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a quantizing thread panicked")?;
        }
        Ok(())
    })?;
    let quantized: Vec<QTensor> = done
        .into_inner()
        .expect("a worker panicked")
        .into_iter()
        .map(|q| q.expect("every tensor quantized"))
        .collect();
    let named: Vec<(&str, &QTensor)> = header
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .zip(&quantized)
        .collect();
    let part = gguf.with_extension("gguf.part");
    {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&part)
                .map_err(|e| ImagesError::Option(format!("'{}': {e}", part.display())))?,
        );
        candle_core::quantized::gguf_file::write(&mut out, &[], &named)?;
        use std::io::Write;
        out.flush()
            .and_then(|()| out.get_ref().sync_all())
            .map_err(|e| ImagesError::Option(format!("'{}': {e}", part.display())))?;
    }
    std::fs::rename(&part, gguf)
        .map_err(|e| ImagesError::Option(format!("'{}': {e}", gguf.display())))?;
    if twin == src {
        drop(file);
        std::fs::remove_file(src)
            .map_err(|e| ImagesError::Option(format!("'{}': {e}", src.display())))?;
    }
    let shapes: Vec<(String, Vec<usize>, DType)> = header
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), t.dtype))
        .collect();
    baton_weights::bench::write_streamed(twin, &shapes, &mut |i, _, out| {
        let t = quantized[i]
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(header.tensors[i].dtype))
            .map_err(std::io::Error::other)?;
        let raw = baton_weights::bench::raw_bytes(&t).map_err(std::io::Error::other)?;
        out.write_all(&raw)
    })?;
    Ok(())
}
