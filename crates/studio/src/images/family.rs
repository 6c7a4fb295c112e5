//! The diffusion families baton runs, with the real shapes of each (from their published
//! configs), and the tiny test families. A family says how its parts are laid out on disk, how
//! to build its models, and how to sample with them; `mod.rs` runs any of them in the same three
//! phases.

use std::sync::Arc;

use candle_core::DType;

use super::clip_text::{Act, ClipConfig};
use candle_transformers::models::flux;
use candle_transformers::models::stable_diffusion::{
    ddim, euler_ancestral_discrete, schedulers, unet_2d, vae,
};

/// A family: its name, defaults and architecture.
pub struct Family {
    pub name: &'static str,
    pub about: &'static str,
    /// The Hugging Face repository its weights come from.
    pub repo: &'static str,
    pub default_steps: usize,
    pub default_guidance: f64,
    /// The width and height it was trained at.
    pub native: usize,
    pub arch: Arch,
}

/// How a family's three phases are built.
pub enum Arch {
    /// Stable Diffusion: CLIP text encoder(s), a UNet, a KL VAE (diffusers layout).
    Sd(Sd),
    /// Flux: CLIP-L (pooled) and T5 text encoders, the Flux transformer, its autoencoder.
    Flux(Flux),
}

pub struct Sd {
    pub clip: ClipConfig,
    /// SDXL's second text encoder (OpenCLIP bigG); its hidden states are joined to the first's.
    pub clip2: Option<ClipConfig>,
    /// SDXL's conditioning: the text encoders' second-to-last layer (not their last, as SD 1.5
    /// and 2.x), and the second encoder's projected pooled vector with the size and crop ids
    /// added to the UNet's time embedding; no prompt means zeros (`force_zeros_for_empty_prompt`).
    pub xl: bool,
    pub unet: fn() -> unet_2d::UNet2DConditionModelConfig,
    pub vae: fn() -> vae::AutoEncoderKLConfig,
    pub scheduler: Sampler,
    pub latent_scale: f64,
}

pub struct Flux {
    /// CLIP-L's text model: its pooled output is Flux's `vec`.
    pub clip: ClipConfig,
    pub transformer: fn() -> flux::model::Config,
    pub autoencoder: fn() -> flux::autoencoder::Config,
    /// The transformer's file at the top of the model folder (the original layout).
    pub transformer_file: &'static str,
    /// T5's context: prompts are padded (and cut) to this many tokens.
    pub t5_tokens: usize,
    /// Flux dev shifts its schedule toward high noise for large images; schnell does not.
    pub shift: bool,
    /// The T5 encoder's config.json, for the random models baton writes (a real model folder
    /// has its own in text_encoder_2/).
    pub t5_config: &'static str,
}

impl Sd {
    /// SDXL: the size of the pooled vector the UNet's added conditioning takes.
    pub fn pooled(&self) -> Option<usize> {
        match self.xl {
            true => self.clip2.map(|c| c.projection.unwrap_or(c.width)),
            false => None,
        }
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Family {
    /// Width and height must be multiples of this. SD: the VAE's factor (8) times the UNet's
    /// downsampling (2 per block after the first). Flux: the VAE's 8 times its 2x2 patches.
    pub fn block(&self) -> usize {
        match &self.arch {
            Arch::Sd(sd) => 8 << ((sd.unet)().blocks.len() - 1),
            Arch::Flux(_) => 16,
        }
    }

    /// The dtype on a GPU: f16 for SD; bf16 for Flux (its activations overflow f16).
    pub fn gpu_dtype(&self) -> DType {
        match &self.arch {
            Arch::Sd(_) => DType::F16,
            Arch::Flux(_) => DType::BF16,
        }
    }

    /// The files of its repository the images stage reads, each as alternatives (the first the
    /// hub has is taken: the f16 variant before the f32 one). Flux's T5 shards are not listed:
    /// they are named by `text_encoder_2/model.safetensors.index.json`.
    pub fn hub_files(&self) -> Vec<Vec<String>> {
        let one = |p: &str| vec![p.to_string()];
        let variants = |dir: &str, stem: &str| {
            vec![
                format!("{dir}/{stem}.fp16.safetensors"),
                format!("{dir}/{stem}.safetensors"),
            ]
        };
        let clip = |suffix: &str| {
            vec![
                variants(&format!("text_encoder{suffix}"), "model"),
                one(&format!("tokenizer{suffix}/vocab.json")),
                one(&format!("tokenizer{suffix}/merges.txt")),
            ]
        };
        match &self.arch {
            Arch::Sd(sd) => {
                let mut files = clip("");
                if sd.clip2.is_some() {
                    files.extend(clip("_2"));
                }
                files.push(variants("unet", "diffusion_pytorch_model"));
                files.push(variants("vae", "diffusion_pytorch_model"));
                files
            }
            Arch::Flux(fx) => vec![
                one("text_encoder/model.safetensors"),
                one("tokenizer/vocab.json"),
                one("tokenizer/merges.txt"),
                one("text_encoder_2/config.json"),
                one("tokenizer_2/tokenizer.json"),
                one(fx.transformer_file),
                one("ae.safetensors"),
            ],
        }
    }

    /// The names of its three phases.
    pub fn phase_names(&self) -> [&'static str; 3] {
        match &self.arch {
            Arch::Sd(_) => ["text encoder", "unet", "vae"],
            Arch::Flux(_) => ["text encoder", "transformer", "autoencoder"],
        }
    }
}

fn bc(out_channels: usize, cross: Option<usize>, head: usize) -> unet_2d::BlockConfig {
    unet_2d::BlockConfig {
        out_channels,
        use_cross_attn: cross,
        attention_head_dim: head,
    }
}

fn unet(
    blocks: Vec<unet_2d::BlockConfig>,
    cross: usize,
    linear: bool,
) -> unet_2d::UNet2DConditionModelConfig {
    unet_2d::UNet2DConditionModelConfig {
        blocks,
        center_input_sample: false,
        cross_attention_dim: cross,
        downsample_padding: 1,
        flip_sin_to_cos: true,
        freq_shift: 0.,
        layers_per_block: 2,
        mid_block_scale_factor: 1.,
        norm_eps: 1e-5,
        norm_num_groups: 32,
        sliced_attention_size: None,
        use_linear_projection: linear,
    }
}

fn sd_vae() -> vae::AutoEncoderKLConfig {
    vae::AutoEncoderKLConfig {
        block_out_channels: vec![128, 256, 512, 512],
        layers_per_block: 2,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    }
}

fn sd2_unet() -> unet_2d::UNet2DConditionModelConfig {
    unet(
        vec![
            bc(320, Some(1), 5),
            bc(640, Some(1), 10),
            bc(1280, Some(1), 20),
            bc(1280, None, 20),
        ],
        1024,
        true,
    )
}

fn sd15_unet() -> unet_2d::UNet2DConditionModelConfig {
    unet(
        vec![
            bc(320, Some(1), 8),
            bc(640, Some(1), 8),
            bc(1280, Some(1), 8),
            bc(1280, None, 8),
        ],
        768,
        false,
    )
}

/// https://huggingface.co/stabilityai/sdxl-turbo/blob/main/unet/config.json
fn sdxl_unet() -> unet_2d::UNet2DConditionModelConfig {
    unet(
        vec![
            bc(320, None, 5),
            bc(640, Some(2), 10),
            bc(1280, Some(10), 20),
        ],
        2048,
        true,
    )
}

/// How an SD family steps from noise: candle's schedulers, configured as the family's
/// repository configures diffusers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// DDIM, "leading" timesteps; `v`: v-prediction (SD 2.1), else epsilon.
    Ddim { v: bool },
    /// Euler ancestral, "trailing" timesteps (the Turbo models).
    EulerAncestralTrailing,
}

impl Sampler {
    pub fn config(self) -> Arc<dyn schedulers::SchedulerConfig> {
        match self {
            Sampler::Ddim { v } => Arc::new(ddim::DDIMSchedulerConfig {
                prediction_type: match v {
                    true => schedulers::PredictionType::VPrediction,
                    false => schedulers::PredictionType::Epsilon,
                },
                ..Default::default()
            }),
            Sampler::EulerAncestralTrailing => Arc::new(
                euler_ancestral_discrete::EulerAncestralDiscreteSchedulerConfig {
                    timestep_spacing: schedulers::TimestepSpacing::Trailing,
                    ..Default::default()
                },
            ),
        }
    }

    /// The same scheduler as diffusers' `scheduler_config.json` (candle's defaults: scaled
    /// linear betas 0.00085-0.012 over 1000 steps, offset 1).
    pub fn diffusers_json(self) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "steps_offset": 1,
        });
        let extra = match self {
            Sampler::Ddim { v } => serde_json::json!({
                "_class_name": "DDIMScheduler", "clip_sample": false, "set_alpha_to_one": false,
                "prediction_type": if v { "v_prediction" } else { "epsilon" },
                "timestep_spacing": "leading",
            }),
            Sampler::EulerAncestralTrailing => serde_json::json!({
                "_class_name": "EulerAncestralDiscreteScheduler",
                "prediction_type": "epsilon", "timestep_spacing": "trailing",
            }),
        };
        for (k, v) in extra.as_object().expect("an object") {
            cfg[k] = v.clone();
        }
        cfg
    }
}

const SD_LATENT_SCALE: f64 = 0.18215;

/// T5 v1.1 XXL's encoder, as FLUX.1's text_encoder_2/config.json has it.
const T5_XXL: &str = r#"{"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240,
 "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
 "relative_attention_max_distance": 128, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
 "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
 "is_encoder_decoder": true, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}"#;

/// The families `--model` and `--family` name.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "sd-turbo",
        about: "SD-Turbo (SD 2.1 distilled): 1-4 steps, no guidance, 512x512",
        repo: "stabilityai/sd-turbo",
        default_steps: 1,
        default_guidance: 0.0,
        native: 512,
        arch: Arch::Sd(Sd {
            clip: ClipConfig::H_SD2,
            clip2: None,
            xl: false,
            unet: sd2_unet,
            vae: sd_vae,
            scheduler: Sampler::EulerAncestralTrailing,
            latent_scale: SD_LATENT_SCALE,
        }),
    },
    Family {
        name: "sdxl-turbo",
        about: "SDXL-Turbo: two text encoders, 1-4 steps, no guidance, 512x512",
        repo: "stabilityai/sdxl-turbo",
        default_steps: 1,
        default_guidance: 0.0,
        native: 512,
        arch: Arch::Sd(Sd {
            // Padded with "!" as candle's SDXL config says; a model folder's own tokenizer
            // config wins where it names its pad token (`TokenizerFiles::pad_token`).
            clip: ClipConfig {
                pad_with: Some("!"),
                ..ClipConfig::L
            },
            clip2: Some(ClipConfig::BIG_G),
            xl: true,
            unet: sdxl_unet,
            vae: sd_vae,
            scheduler: Sampler::EulerAncestralTrailing,
            latent_scale: 0.13025,
        }),
    },
    Family {
        name: "flux-schnell",
        about: "FLUX.1 schnell: 12B transformer, T5-XXL + CLIP-L, 4 steps, 1024x1024, bf16",
        repo: "black-forest-labs/FLUX.1-schnell",
        default_steps: 4,
        default_guidance: 0.0,
        native: 1024,
        arch: Arch::Flux(Flux {
            clip: ClipConfig::L,
            transformer: flux::model::Config::schnell,
            autoencoder: flux::autoencoder::Config::schnell,
            transformer_file: "flux1-schnell.safetensors",
            t5_tokens: 256,
            shift: false,
            t5_config: T5_XXL,
        }),
    },
    Family {
        name: "flux-dev",
        about: "FLUX.1 dev: guidance-distilled, 50 steps at guidance 3.5, 1024x1024, bf16",
        repo: "black-forest-labs/FLUX.1-dev",
        default_steps: 50,
        default_guidance: 3.5,
        native: 1024,
        arch: Arch::Flux(Flux {
            clip: ClipConfig::L,
            transformer: flux::model::Config::dev,
            autoencoder: flux::autoencoder::Config::dev,
            transformer_file: "flux1-dev.safetensors",
            t5_tokens: 512,
            shift: true,
            t5_config: T5_XXL,
        }),
    },
    Family {
        name: "sd-2.1",
        about: "Stable Diffusion 2.1: v-prediction, 30 steps, guidance 7.5, 768x768",
        repo: "stabilityai/stable-diffusion-2-1",
        default_steps: 30,
        default_guidance: 7.5,
        native: 768,
        arch: Arch::Sd(Sd {
            clip: ClipConfig::H_SD2,
            clip2: None,
            xl: false,
            unet: sd2_unet,
            vae: sd_vae,
            scheduler: Sampler::Ddim { v: true },
            latent_scale: SD_LATENT_SCALE,
        }),
    },
    Family {
        name: "sd-1.5",
        about: "Stable Diffusion 1.5: 30 steps, guidance 7.5, 512x512",
        repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        default_steps: 30,
        default_guidance: 7.5,
        native: 512,
        arch: Arch::Sd(Sd {
            clip: ClipConfig::L,
            clip2: None,
            xl: false,
            unet: sd15_unet,
            vae: sd_vae,
            scheduler: Sampler::Ddim { v: false },
            latent_scale: SD_LATENT_SCALE,
        }),
    },
];

/// https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json (text_config)
fn tiny_vae() -> vae::AutoEncoderKLConfig {
    vae::AutoEncoderKLConfig {
        block_out_channels: vec![32, 32, 32, 32],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    }
}

/// The tiny families: for tests and smoke runs, sampled at 64x64 on a CPU in seconds. Their
/// parts are the real architectures, only narrow and shallow.
pub const TINY: &[Family] = &[
    Family {
        name: "tiny-sd",
        about: "a tiny random SD for tests (SD 1.5 text encoder, 2-block UNet and VAE)",
        repo: "",
        default_steps: 2,
        default_guidance: 7.5,
        native: 64,
        arch: Arch::Sd(Sd {
            clip: ClipConfig::L,
            clip2: None,
            xl: false,
            unet: || unet(vec![bc(32, Some(1), 8), bc(64, Some(1), 8)], 768, false),
            vae: tiny_vae,
            scheduler: Sampler::Ddim { v: false },
            latent_scale: SD_LATENT_SCALE,
        }),
    },
    Family {
        name: "tiny-sdxl",
        about: "a tiny random SDXL for tests (two CLIP-L text encoders joined, 2-block UNet)",
        repo: "",
        default_steps: 1,
        default_guidance: 0.0,
        native: 64,
        arch: Arch::Sd(Sd {
            // candle's SD text encoders come only in their real sizes: SDXL's first (CLIP-L),
            // twice, stands in for the pair; the joining is what is tested.
            clip: ClipConfig {
                pad_with: Some("!"),
                ..ClipConfig::L
            },
            clip2: Some(ClipConfig {
                pad_with: Some("!"),
                projection: Some(768),
                ..ClipConfig::L
            }),
            xl: true,
            unet: || unet(vec![bc(32, None, 8), bc(64, Some(1), 8)], 1536, true),
            vae: tiny_vae,
            scheduler: Sampler::EulerAncestralTrailing,
            latent_scale: 0.13025,
        }),
    },
    Family {
        name: "tiny-flux",
        about: "a tiny random Flux dev for tests (small CLIP and T5, one double and one single block)",
        repo: "",
        default_steps: 2,
        default_guidance: 3.5,
        native: 64,
        arch: Arch::Flux(Flux {
            clip: ClipConfig {
                vocab: 64,
                width: 64,
                layers: 2,
                heads: 2,
                intermediate: 128,
                act: Act::QuickGelu,
                positions: 77,
                projection: None,
                pad_with: None,
            },
            transformer: || flux::model::Config {
                in_channels: 64,
                vec_in_dim: 64,
                context_in_dim: 64,
                hidden_size: 64,
                mlp_ratio: 4.0,
                num_heads: 2,
                depth: 1,
                depth_single_blocks: 1,
                axes_dim: vec![8, 12, 12],
                theta: 10_000,
                qkv_bias: true,
                guidance_embed: true,
            },
            autoencoder: || flux::autoencoder::Config {
                resolution: 64,
                in_channels: 3,
                ch: 32,
                out_ch: 3,
                ch_mult: vec![1, 1, 1, 1],
                num_res_blocks: 1,
                z_channels: 16,
                scale_factor: 0.3611,
                shift_factor: 0.1159,
            },
            transformer_file: "flux1-tiny.safetensors",
            t5_tokens: 32,
            shift: true,
            t5_config: r#"{"vocab_size": 64, "d_model": 64, "d_kv": 16, "d_ff": 128,
 "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
 "relative_attention_max_distance": 32, "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6,
 "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false,
 "is_encoder_decoder": true, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}"#,
        }),
    },
];

/// A FLUX transformer quantized to GGUF, as the community publishes it (the tensor names of the
/// original checkpoint), known by name to `--transformer` and `baton models`.
#[derive(Debug)]
pub struct GgufTransformer {
    pub name: &'static str,
    /// The family whose transformer it is.
    pub family: &'static str,
    pub repo: &'static str,
    pub file: &'static str,
    pub about: &'static str,
}

/// The GGUF transformers baton knows by name.
pub const GGUF_TRANSFORMERS: &[GgufTransformer] = &[
    GgufTransformer {
        name: "flux-schnell-q8_0",
        family: "flux-schnell",
        repo: "city96/FLUX.1-schnell-gguf",
        file: "flux1-schnell-Q8_0.gguf",
        about: "FLUX.1 schnell's transformer in Q8_0 (12.7 GB): fits a 24 GB card resident",
    },
    GgufTransformer {
        name: "flux-schnell-q4_k_s",
        family: "flux-schnell",
        repo: "city96/FLUX.1-schnell-gguf",
        file: "flux1-schnell-Q4_K_S.gguf",
        about: "FLUX.1 schnell's transformer in Q4_K_S (6.8 GB)",
    },
    GgufTransformer {
        name: "flux-dev-q8_0",
        family: "flux-dev",
        repo: "city96/FLUX.1-dev-gguf",
        file: "flux1-dev-Q8_0.gguf",
        about: "FLUX.1 dev's transformer in Q8_0 (12.7 GB): fits a 24 GB card resident",
    },
    GgufTransformer {
        name: "flux-dev-q4_k_s",
        family: "flux-dev",
        repo: "city96/FLUX.1-dev-gguf",
        file: "flux1-dev-Q4_K_S.gguf",
        about: "FLUX.1 dev's transformer in Q4_K_S (6.8 GB)",
    },
];

impl GgufTransformer {
    /// The one called `name`.
    pub fn named(name: &str) -> Option<&'static GgufTransformer> {
        GGUF_TRANSFORMERS.iter().find(|g| g.name == name)
    }

    /// Its file in the Hugging Face cache at `cache`, if it was fetched.
    pub fn find_in(&self, cache: &std::path::Path) -> Option<std::path::PathBuf> {
        crate::hub::find_cached(cache, self.repo, self.file)
    }
}

/// The family called `name`, the tiny ones included.
pub fn find(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().chain(TINY).find(|f| f.name == name)
}

/// Every family's name, for error messages.
pub fn names() -> String {
    FAMILIES
        .iter()
        .chain(TINY)
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}
