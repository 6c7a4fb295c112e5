//! A Stable Diffusion model with random weights, written in the diffusers layout: what the tests
//! (the tiny family, on the CPU) and the GPU benchmark (SD-Turbo's real shapes) load, through
//! exactly the code that loads a real model. The weights are whatever candle's layers initialise
//! themselves to; the tokenizer is a small word-level one with CLIP's special tokens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::{clip, unet_2d, vae};

use super::{Family, ImageModel, ImagesError};

/// Words the test tokenizer knows; anything else is `<unk>`.
const WORDS: &str = "a an the of in on at with and night neon street city rain market light \
    tokyo cyberpunk crowd sky dawn river drone drones glowing wet reflections painting photo \
    cinematic wide shot close detailed";

/// Writes `family`'s three models with random weights in `dtype`, and a tokenizer, under `dir`.
pub fn write_random_model(
    dir: &Path,
    family: &'static Family,
    dtype: DType,
) -> Result<ImageModel, ImagesError> {
    let save = |sub: &str,
                file: &str,
                build: &dyn Fn(VarBuilder) -> candle_core::Result<()>|
     -> Result<(), ImagesError> {
        let vm = VarMap::new();
        build(VarBuilder::from_varmap(&vm, dtype, &Device::Cpu))?;
        std::fs::create_dir_all(dir.join(sub)).map_err(|source| ImagesError::Unwritable {
            path: dir.join(sub),
            source,
        })?;
        vm.save(dir.join(sub).join(file))?;
        Ok(())
    };
    save("text_encoder", "model.safetensors", &|vb| {
        clip::ClipTextTransformer::new(vb, &(family.clip)()).map(|_| ())
    })?;
    save("unet", "diffusion_pytorch_model.safetensors", &|vb| {
        unet_2d::UNet2DConditionModel::new(vb, 4, 4, false, (family.unet)()).map(|_| ())
    })?;
    save("vae", "diffusion_pytorch_model.safetensors", &|vb| {
        vae::AutoEncoderKL::new(vb, 3, 3, (family.vae)()).map(|_| ())
    })?;
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, t) in ["<|startoftext|>", "<|endoftext|>", "!", "<unk>"]
        .into_iter()
        .chain(WORDS.split_whitespace())
        .enumerate()
    {
        vocab.insert(t.to_string(), i as u32);
    }
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| ImagesError::Tokenizer(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    std::fs::create_dir_all(dir.join("tokenizer")).map_err(|source| ImagesError::Unwritable {
        path: dir.join("tokenizer"),
        source,
    })?;
    tokenizer
        .save(dir.join("tokenizer/tokenizer.json"), false)
        .map_err(|e| ImagesError::Tokenizer(e.to_string()))?;
    ImageModel::in_dir(dir, family)
}
