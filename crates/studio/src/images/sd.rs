//! The Stable Diffusion families baton runs, with the real shapes of each (from their published
//! configs), and the test family: SD 1.5's text encoder with a tiny UNet and VAE.

use std::sync::Arc;

use candle_transformers::models::stable_diffusion::{
    clip, ddim, euler_ancestral_discrete, schedulers, unet_2d, vae,
};

/// A family: how to build its three models and sample with them.
#[derive(Clone)]
pub struct Family {
    pub name: &'static str,
    pub about: &'static str,
    /// The Hugging Face repository its weights come from (diffusers layout).
    pub repo: &'static str,
    pub clip: fn() -> clip::Config,
    pub unet: fn() -> unet_2d::UNet2DConditionModelConfig,
    pub vae: fn() -> vae::AutoEncoderKLConfig,
    pub scheduler: fn() -> Arc<dyn schedulers::SchedulerConfig>,
    pub default_steps: usize,
    pub default_guidance: f64,
    pub native: usize,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Family {
    /// Width and height must be multiples of this: the VAE's factor (8) times the UNet's
    /// downsampling (2 per block after the first).
    pub fn block(&self) -> usize {
        8 << ((self.unet)().blocks.len() - 1)
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

fn ddim(prediction_type: schedulers::PredictionType) -> Arc<dyn schedulers::SchedulerConfig> {
    Arc::new(ddim::DDIMSchedulerConfig {
        prediction_type,
        ..Default::default()
    })
}

/// The families `--model` and `--family` name.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "sd-turbo",
        about: "SD-Turbo (SD 2.1 distilled): 1-4 steps, no guidance, 512x512",
        repo: "stabilityai/sd-turbo",
        clip: clip::Config::v2_1,
        unet: sd2_unet,
        vae: sd_vae,
        scheduler: || {
            Arc::new(
                euler_ancestral_discrete::EulerAncestralDiscreteSchedulerConfig {
                    timestep_spacing: schedulers::TimestepSpacing::Trailing,
                    ..Default::default()
                },
            )
        },
        default_steps: 1,
        default_guidance: 0.0,
        native: 512,
    },
    Family {
        name: "sd-2.1",
        about: "Stable Diffusion 2.1: v-prediction, 30 steps, guidance 7.5, 768x768",
        repo: "stabilityai/stable-diffusion-2-1",
        clip: clip::Config::v2_1,
        unet: sd2_unet,
        vae: sd_vae,
        scheduler: || ddim(schedulers::PredictionType::VPrediction),
        default_steps: 30,
        default_guidance: 7.5,
        native: 768,
    },
    Family {
        name: "sd-1.5",
        about: "Stable Diffusion 1.5: 30 steps, guidance 7.5, 512x512",
        repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        clip: clip::Config::v1_5,
        unet: sd15_unet,
        vae: sd_vae,
        scheduler: || ddim(schedulers::PredictionType::Epsilon),
        default_steps: 30,
        default_guidance: 7.5,
        native: 512,
    },
];

/// For tests and smoke runs: SD 1.5's text encoder (its real shape, random weights are cheap
/// enough) with a two-block UNet and a 32-channel VAE (four blocks: the real 8x latent factor),
/// sampling 64x64 images.
pub const TINY: Family = Family {
    name: "tiny-sd",
    about: "a tiny random SD for tests (SD 1.5 text encoder, 2-block UNet and VAE)",
    repo: "",
    clip: clip::Config::v1_5,
    unet: || unet(vec![bc(32, Some(1), 8), bc(64, Some(1), 8)], 768, false),
    vae: || vae::AutoEncoderKLConfig {
        block_out_channels: vec![32, 32, 32, 32],
        layers_per_block: 1,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    },
    scheduler: || ddim(schedulers::PredictionType::Epsilon),
    default_steps: 2,
    default_guidance: 7.5,
    native: 64,
};

/// The family called `name`, the test family included.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .chain(std::iter::once(&TINY))
        .find(|f| f.name == name)
}
