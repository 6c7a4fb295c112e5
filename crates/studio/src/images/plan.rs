//! The phased plan: each phase's weights (in the dtype they load as) and activations, checked
//! against `--max-vram` before anything loads.

use std::path::PathBuf;

use baton_base::format_bytes;
use candle_core::DType;

use super::family::Arch;
use super::{ImageModel, ImagesError};

/// Weights bytes of safetensors files once converted to `dtype`.
pub(super) fn weights_bytes(paths: &[PathBuf], dtype: DType) -> Result<u64, ImagesError> {
    let mut total = 0;
    for path in paths {
        let header = baton_weights::Header::read(path)?;
        total += header
            .tensors
            .iter()
            .map(|t| {
                let n: u64 = t.shape.iter().map(|d| *d as u64).product();
                n * if t.dtype.is_float() {
                    dtype.size_in_bytes()
                } else {
                    t.dtype.size_in_bytes()
                } as u64
            })
            .sum::<u64>();
    }
    Ok(total)
}

/// One phase of the plan: its name, the weights it holds at once, an estimate of its
/// activations.
pub(super) struct Planned {
    pub(super) name: &'static str,
    pub(super) weights: u64,
    pub(super) activations: u64,
}

/// The plan: each phase's weights plus an estimate of its activations (measured on an H200 at
/// 512x512 in f16/bf16, scaled by pixels and dtype; see docs/images.md). Text encoders run one
/// after another, so the text phase holds the largest of them.
pub(super) fn plan(
    model: &ImageModel,
    dtype: DType,
    width: usize,
    height: usize,
    batch: usize,
) -> Result<Vec<Planned>, ImagesError> {
    let pixels = (width * height) as u64;
    let scale = |at_512: u64| at_512 * pixels / (512 * 512) * dtype.size_in_bytes() as u64 / 2;
    let mut text = 0;
    for e in &model.encoders {
        text = text.max(weights_bytes(&e.weights, dtype)?);
    }
    let [t, d, v] = model.family.phase_names();
    let (text_act, denoise_act, decode_act) = match model.family.arch {
        Arch::Sd(_) => (
            64 << 20,
            scale(1024 << 20) * batch as u64,
            scale(2944 << 20),
        ),
        Arch::Flux(_) => (512 << 20, scale(1024 << 20), scale(2944 << 20)),
    };
    Ok(vec![
        Planned {
            name: t,
            weights: text,
            activations: text_act,
        },
        Planned {
            name: d,
            weights: weights_bytes(std::slice::from_ref(&model.denoiser), dtype)?,
            activations: denoise_act,
        },
        Planned {
            name: v,
            weights: weights_bytes(std::slice::from_ref(&model.decoder), dtype)?,
            activations: decode_act,
        },
    ])
}

impl Planned {
    pub(super) fn need(&self) -> u64 {
        self.weights + self.activations
    }
}

pub(super) fn render_plan(plan: &[Planned]) -> String {
    plan.iter()
        .map(|p| {
            format!(
                "  {:<13} weights {:>10} + activations ~{:>10} = {:>10}",
                p.name,
                format_bytes(p.weights),
                format_bytes(p.activations),
                format_bytes(p.need())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
