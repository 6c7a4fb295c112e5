//! The images stage as one call, the same for `baton images`, the runner's built-in images
//! stage and the monolithic mode: the model found (or fetched, when the caller allows), the
//! device chosen, every scene drawn in three phases; or storyboard cards, asked for, or instead
//! of pictures when no image model is on this machine and the caller said that is acceptable
//! (what `baton run` does, loudly). Nothing here prints: the caller is told.

use std::path::Path;

use baton_memory::DeviceChoice;

use super::{
    ImageModel, ImagesError, ImagesManifest, ImagesOptions, Progress, family, write_cards,
    write_images,
};
use crate::compute::Compute;

/// Cards are drawn at this size unless the request gives one.
const CARD_SIDE: usize = 512;

/// What the images stage is asked to do.
pub struct ImagesRequest<'a> {
    /// The storyboard.
    pub input: &'a Path,
    /// The run folder `3_images/` is written into.
    pub run_dir: &'a Path,
    /// A family name (found in the Hugging Face cache) or a model folder.
    pub model: &'a str,
    /// The family of a model folder.
    pub family: Option<&'a str>,
    /// FLUX: a transformer used instead of the model's own: a known GGUF name, or a file (a
    /// GGUF, quantized, or a safetensors checkpoint).
    pub transformer: Option<&'a str>,
    pub options: ImagesOptions,
    pub compute: DeviceChoice,
    /// Storyboard cards instead of pictures.
    pub cards: bool,
    /// Cards instead of failing when no image model is on this machine.
    pub cards_if_no_model: bool,
}

/// What the stage says while it works.
pub enum ImagesEvent<'a> {
    /// A model was found: its family, its folder, and where it runs.
    Drawing {
        family: &'static str,
        dir: &'a Path,
        place: &'a str,
    },
    /// No image model is here: cards follow, and this is why.
    NoModel { why: &'a str },
    /// The drawing's own progress.
    Progress(Progress<'a>),
}

/// What the stage made.
pub enum ImagesOutcome {
    /// Pictures from a diffusion model.
    Drawn(ImagesManifest),
    /// Storyboard cards, not pictures: `why` says so in images.json too.
    Cards {
        manifest: ImagesManifest,
        why: String,
    },
}

/// Runs the images stage. `fetch` downloads a family's model when it is asked for by name and
/// is not in the cache, if the caller allows it (it shows the download its own way).
pub fn run_images(
    request: &ImagesRequest,
    fetch: Option<&mut dyn FnMut() -> Result<ImageModel, ImagesError>>,
    on: &mut dyn FnMut(ImagesEvent),
) -> Result<ImagesOutcome, ImagesError> {
    // Refuse a bad scenes file before looking for a model or loading anything.
    crate::storyboard::Storyboard::load(request.input)?;
    let cards = |why: &str| -> Result<ImagesOutcome, ImagesError> {
        let o = &request.options;
        let manifest = write_cards(
            request.input,
            request.run_dir,
            o.width.unwrap_or(CARD_SIDE),
            o.height.unwrap_or(CARD_SIDE),
            why,
        )?;
        Ok(ImagesOutcome::Cards {
            manifest,
            why: why.to_string(),
        })
    };
    if request.cards {
        return cards("--cards");
    }
    let is_family = family::FAMILIES.iter().any(|f| f.name == request.model);
    let model = match (ImageModel::resolve(request.model, request.family), fetch) {
        (Ok(model), _) => model,
        (Err(ImagesError::NoModel { .. }), Some(fetch)) if is_family => fetch()?,
        (Err(ImagesError::NoModel { why, .. }), _) if request.cards_if_no_model => {
            on(ImagesEvent::NoModel { why: &why });
            return cards(&why);
        }
        (Err(e), _) => return Err(e),
    };
    let model = match request.transformer {
        Some(file) => model.with_transformer(file)?,
        None => model,
    };
    let (compute, place) = Compute::choose(request.compute)?;
    on(ImagesEvent::Drawing {
        family: model.family.name,
        dir: &model.dir,
        place: &place,
    });
    draw(request, &model, &compute, on).map(ImagesOutcome::Drawn)
}

/// Draws every scene with `model` on `compute`, telling `on` how it goes.
pub fn draw(
    request: &ImagesRequest,
    model: &ImageModel,
    compute: &Compute,
    on: &mut dyn FnMut(ImagesEvent),
) -> Result<ImagesManifest, ImagesError> {
    write_images(
        request.input,
        request.run_dir,
        model,
        compute,
        &request.options,
        &mut |p| on(ImagesEvent::Progress(p)),
    )
}
