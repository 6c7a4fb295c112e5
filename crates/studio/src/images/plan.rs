//! The phased plan: each phase's weights (in the dtype they load as) and activations, checked
//! against `--max-vram` before anything loads.

use std::path::PathBuf;

use baton_base::format_bytes;
use candle_core::DType;

use super::family::Arch;
use super::{ImageModel, ImagesError};

/// Weights bytes of safetensors files once converted to `dtype`.
pub(super) fn weights_bytes(paths: &[PathBuf], dtype: DType) -> Result<u64, ImagesError> {
    Ok(bytes_by(paths, dtype, |_| ())?.into_values().sum())
}

/// A GGUF file's block types (the matrices': "Q8_0", "Q4_K and Q6_K") and its tensors' bytes.
pub(super) fn gguf_types(path: &std::path::Path) -> Result<(String, u64), ImagesError> {
    use candle_core::quantized::GgmlDType;
    let content = baton_weights::read_gguf(path)?;
    let mut types: Vec<String> = Vec::new();
    let mut bytes = 0;
    for info in content.tensor_infos.values() {
        let dims = info.shape.dims();
        bytes += baton_weights::bench::gguf_bytes(dims, info.ggml_dtype);
        if !matches!(
            info.ggml_dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            let name = format!("{:?}", info.ggml_dtype).to_uppercase();
            if !types.contains(&name) {
                types.push(name);
            }
        }
    }
    types.sort();
    Ok((types.join(" and "), bytes))
}

/// Weights bytes in `dtype` of the tensors of `paths`, summed by `key(name)`.
fn bytes_by<K: std::hash::Hash + Eq>(
    paths: &[PathBuf],
    dtype: DType,
    key: impl Fn(&str) -> K,
) -> Result<std::collections::HashMap<K, u64>, ImagesError> {
    let mut sums = std::collections::HashMap::new();
    for path in paths {
        let header = baton_weights::Header::read(path)?;
        for t in &header.tensors {
            let n: u64 = t.shape.iter().map(|d| *d as u64).product();
            let size = if t.dtype.is_float() {
                dtype.size_in_bytes()
            } else {
                t.dtype.size_in_bytes()
            } as u64;
            *sums.entry(key(&t.name)).or_insert(0) += n * size;
        }
    }
    Ok(sums)
}

/// How a phase holds its weights on the device.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Residence {
    /// All loaded at once.
    Resident,
    /// The transformer's blocks copied from host memory one ahead of their use: `largest` is
    /// the largest block, `per_step` what every denoising step copies.
    Streamed { largest: u64, per_step: u64 },
    /// All loaded at once, quantized (a GGUF transformer): its matrices' block types.
    Quantized(String),
    /// The autoencoder decoding each image in overlapping tiles of this side, in pixels.
    Tiled { tile: usize },
}

/// How the transformer's weights are held: `--weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightsMode {
    /// Resident when the phase fits the budget (or there is none), streamed when only that
    /// fits.
    #[default]
    Auto,
    Resident,
    Streamed,
}

impl std::str::FromStr for WeightsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WeightsMode::Auto),
            "resident" => Ok(WeightsMode::Resident),
            "streamed" => Ok(WeightsMode::Streamed),
            other => Err(format!(
                "'{other}': use auto (stream only what does not fit), resident or streamed"
            )),
        }
    }
}

/// One phase of the plan: its name, the weights it holds at once, an estimate of its
/// activations.
pub(super) struct Planned {
    pub(super) name: &'static str,
    /// Weights on the device at once: all of them resident; streamed, the parts outside the
    /// blocks and two blocks.
    pub(super) weights: u64,
    pub(super) activations: u64,
    pub(super) residence: Residence,
    /// The phase's other way, when it has one (weights, activations, residence): Flux's
    /// transformer streamed; Flux's autoencoder decoding in tiles.
    pub(super) fallback: Option<(u64, u64, Residence)>,
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
    scenes: usize,
) -> Result<Vec<Planned>, ImagesError> {
    let pixels = (width * height) as u64;
    let scale = |at_512: u64| at_512 * pixels / (512 * 512) * dtype.size_in_bytes() as u64 / 2;
    let scale_tile = |at_512: u64, tile: usize| {
        at_512 * (tile * tile) as u64 / (512 * 512) * dtype.size_in_bytes() as u64 / 2
    };
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
    let denoiser = std::slice::from_ref(&model.denoiser);
    let decoder_bytes = weights_bytes(std::slice::from_ref(&model.decoder), dtype)?;
    // A GGUF transformer: its block types, and its bytes as they are (its header read once).
    let (quantized, denoiser_bytes) = match super::flux::is_gguf(&model.denoiser) {
        true => {
            let (types, bytes) = gguf_types(&model.denoiser)?;
            (Some(types), bytes)
        }
        false => (None, weights_bytes(denoiser, dtype)?),
    };
    let streamed = match model.family.arch {
        Arch::Sd(_) => None,
        // A GGUF transformer is resident (its blocks do not stream).
        Arch::Flux(_) if quantized.is_some() => None,
        Arch::Flux(_) => {
            // By block: "double_blocks.N" and "single_blocks.N"; the rest stays resident.
            let by_block = bytes_by(denoiser, dtype, |name| {
                match name.split('.').collect::<Vec<_>>()[..] {
                    [kind @ ("double_blocks" | "single_blocks"), n, ..] => format!("{kind}.{n}"),
                    _ => String::new(),
                }
            })?;
            let head = by_block.get("").copied().unwrap_or(0);
            let largest = by_block
                .iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(_, b)| *b)
                .max()
                .unwrap_or(0);
            let per_step = by_block.values().sum::<u64>() - head;
            Some((
                head + 2 * largest,
                denoise_act,
                Residence::Streamed { largest, per_step },
            ))
        }
    };
    // Flux steps every scene together: each scene's hidden state waits between blocks (its
    // tokens, joined, and the modulation): 128 MiB per scene at 1024x1024 covers it.
    let denoise_act = match model.family.arch {
        Arch::Sd(_) => denoise_act,
        Arch::Flux(_) => denoise_act + scenes as u64 * scale(32 << 20),
    };
    let streamed = streamed.map(|(w, a, r)| (w, a + scenes as u64 * scale(32 << 20), r));
    Ok(vec![
        Planned {
            name: t,
            weights: text,
            activations: text_act,
            residence: Residence::Resident,
            fallback: None,
        },
        Planned {
            name: d,
            weights: denoiser_bytes,
            activations: denoise_act,
            residence: quantized.map_or(Residence::Resident, Residence::Quantized),
            fallback: streamed,
        },
        Planned {
            name: v,
            weights: decoder_bytes,
            activations: decode_act,
            residence: Residence::Resident,
            fallback: match (&model.family.arch, decode_tile(width, height)) {
                (Arch::Flux(_), Some(tile)) => Some((
                    decoder_bytes,
                    scale_tile(2944 << 20, tile),
                    Residence::Tiled { tile },
                )),
                _ => None,
            },
        },
    ])
}

/// The side, in pixels, of the tiles the autoencoder decodes in when a whole image does not
/// fit: 512, or half the image's longer side when that is smaller; none for an image under 128
/// pixels a side.
pub(super) fn decode_tile(width: usize, height: usize) -> Option<usize> {
    let longer = width.max(height);
    (longer >= 128).then(|| (longer / 2 / 64 * 64).clamp(64, 512))
}

impl Planned {
    pub(super) fn need(&self) -> u64 {
        self.weights + self.activations
    }

    /// Runs this phase its other way (streamed, tiled).
    fn fall_back(&mut self) {
        let (weights, activations, residence) =
            self.fallback.clone().expect("a phase with another way");
        self.weights = weights;
        self.activations = activations;
        self.residence = residence;
    }
}

/// Chooses how each phase holds its weights: resident when it fits `max` (the whole process's
/// budget, of which `overhead` is taken before any phase: its CUDA context and kernels) or
/// there is no `max`, streamed when only that fits (or `mode` says so). Refuses, with the plan,
/// a phase that fits neither way, and `--weights streamed` for a family that cannot stream.
pub(super) fn choose(
    plan: &mut [Planned],
    max: Option<u64>,
    overhead: u64,
    mode: WeightsMode,
    family: &str,
) -> Result<(), ImagesError> {
    let streams = |p: &Planned| matches!(p.fallback, Some((_, _, Residence::Streamed { .. })));
    for p in plan.iter_mut() {
        let fits = max.is_none_or(|m| p.need() + overhead <= m);
        match (&p.fallback, mode) {
            (Some((_, _, Residence::Streamed { .. })), WeightsMode::Streamed) => p.fall_back(),
            (Some((_, _, Residence::Streamed { .. })), WeightsMode::Auto) if !fits => p.fall_back(),
            (Some((_, _, Residence::Tiled { .. })), _) if !fits => p.fall_back(),
            _ => {}
        }
    }
    if mode == WeightsMode::Streamed && !plan.iter().any(streams) {
        return Err(ImagesError::Option(format!(
            "--weights streamed: {family} cannot stream its weights (only FLUX.1's transformer \
             streams); use --weights auto or resident"
        )));
    }
    if let Some(max) = max {
        let big = plan.iter().max_by_key(|p| p.need()).expect("three phases");
        if big.need() + overhead > max {
            return Err(ImagesError::MaxVram {
                need: match overhead {
                    0 => format_bytes(big.need()),
                    o => format!(
                        "{} (plus {} for this process's CUDA context and kernels)",
                        format_bytes(big.need()),
                        format_bytes(o)
                    ),
                },
                phase: big.name.into(),
                max: format_bytes(max),
                plan: render_plan(plan),
            });
        }
    }
    Ok(())
}

impl Residence {
    /// How the log and images.json say it.
    pub(super) fn describe(&self) -> String {
        match self {
            Residence::Resident => "resident".into(),
            Residence::Quantized(types) => format!("resident, quantized ({types})"),
            Residence::Tiled { tile } => {
                format!("resident, decoding in overlapping {tile}x{tile} tiles")
            }
            Residence::Streamed { largest, per_step } => format!(
                "streamed: two blocks of up to {} on the device, {} copied from host memory per step",
                format_bytes(*largest),
                format_bytes(*per_step)
            ),
        }
    }
}

pub(super) fn render_plan(plan: &[Planned]) -> String {
    plan.iter()
        .map(|p| {
            let mut line = format!(
                "  {:<13} weights {:>10} + activations ~{:>10} = {:>10}",
                p.name,
                format_bytes(p.weights),
                format_bytes(p.activations),
                format_bytes(p.need())
            );
            match (&p.residence, &p.fallback) {
                (
                    Residence::Streamed { .. } | Residence::Quantized(_) | Residence::Tiled { .. },
                    _,
                ) => line.push_str(&format!(" ({})", p.residence.describe())),
                (Residence::Resident, Some((w, a, r))) => line.push_str(&format!(
                    " (resident; {} it would need {})",
                    match r {
                        Residence::Tiled { .. } => "in tiles",
                        _ => "streamed",
                    },
                    format_bytes(w + a)
                )),
                _ => {}
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// FLUX.1 schnell's plan at 1024x1024 in bf16 with six scenes, as the H200 measured it.
    fn flux_schnell() -> Vec<Planned> {
        let block = 680 << 20;
        let streamed = Residence::Streamed {
            largest: block,
            per_step: 22 * GIB,
        };
        vec![
            Planned {
                name: "text encoder",
                weights: 8_900 << 20,
                activations: 512 << 20,
                residence: Residence::Resident,
                fallback: None,
            },
            Planned {
                name: "transformer",
                weights: 22_630 << 20,
                activations: 4_864 << 20,
                residence: Residence::Resident,
                fallback: Some(((200 << 20) + 2 * block, 4_864 << 20, streamed)),
            },
            Planned {
                name: "autoencoder",
                weights: 160 << 20,
                activations: 11_776 << 20,
                residence: Residence::Resident,
                fallback: Some((160 << 20, 2_944 << 20, Residence::Tiled { tile: 512 })),
            },
        ]
    }

    /// Under a 24 GB card's budget the transformer streams and the rest stays resident; with no
    /// budget everything is resident; asked to stay resident, the plan is refused with its
    /// numbers; under 12 GiB the autoencoder decodes in tiles too; a budget below T5's phase is
    /// refused.
    #[test]
    fn the_plan_streams_only_what_does_not_fit() {
        let mut plan = flux_schnell();
        choose(
            &mut plan,
            Some(23 * GIB),
            GIB,
            WeightsMode::Auto,
            "flux-schnell",
        )
        .unwrap();
        assert_eq!(plan[0].residence, Residence::Resident);
        assert!(matches!(plan[1].residence, Residence::Streamed { .. }));
        assert_eq!(plan[2].residence, Residence::Resident);
        assert!(plan.iter().all(|p| p.need() <= 22 * GIB));
        assert!(render_plan(&plan).contains("streamed: two blocks of up to 680.0 MiB"));

        let mut plan = flux_schnell();
        choose(&mut plan, None, GIB, WeightsMode::Auto, "flux-schnell").unwrap();
        assert!(plan.iter().all(|p| p.residence == Residence::Resident));

        let mut plan = flux_schnell();
        match choose(
            &mut plan,
            Some(23 * GIB),
            GIB,
            WeightsMode::Resident,
            "flux-schnell",
        ) {
            Err(ImagesError::MaxVram {
                phase, plan, need, ..
            }) => {
                assert_eq!(phase, "transformer");
                assert!(
                    need.contains("plus 1.0 GiB for this process's CUDA context"),
                    "{need}"
                );
                assert!(plan.contains("streamed it would need"), "{plan}");
            }
            other => panic!("{:?}", other.err()),
        }

        // 12 GiB: the transformer streams and the autoencoder decodes in tiles.
        let mut plan = flux_schnell();
        choose(
            &mut plan,
            Some(12 * GIB),
            GIB,
            WeightsMode::Auto,
            "flux-schnell",
        )
        .unwrap();
        assert!(matches!(plan[1].residence, Residence::Streamed { .. }));
        assert_eq!(plan[2].residence, Residence::Tiled { tile: 512 });
        assert!(plan.iter().all(|p| p.need() + GIB <= 12 * GIB));

        // 10 GiB: T5-XXL's phase fits neither way.
        let mut plan = flux_schnell();
        match choose(
            &mut plan,
            Some(10 * GIB),
            GIB,
            WeightsMode::Auto,
            "flux-schnell",
        ) {
            Err(ImagesError::MaxVram { phase, .. }) => assert_eq!(phase, "text encoder"),
            other => panic!("{:?}", other.err()),
        }
    }

    /// A family that cannot stream is told so when streaming is asked for.
    #[test]
    fn streaming_a_unet_is_refused_by_name() {
        let mut plan = flux_schnell();
        for p in &mut plan {
            p.fallback = None;
        }
        let err = choose(&mut plan, None, 0, WeightsMode::Streamed, "sd-turbo").unwrap_err();
        assert!(err.to_string().contains("sd-turbo cannot stream"), "{err}");
    }
}
