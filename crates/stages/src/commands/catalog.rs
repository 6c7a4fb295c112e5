//! `baton-stages catalog`: what only the stage program can tell the supervisor about this
//! machine, one answer per line, for `baton_content::ContentCatalog`. Nothing is downloaded
//! and nothing is loaded; the settings come from the environment, as the stage's would.

use std::io::Write;
use std::path::PathBuf;

use baton_content::{Stage, VoiceEngine};
use baton_studio::images::ImageModel;
use baton_studio::model_store::ModelStore;
use baton_studio::voice::parler::{ParlerFiles, configured_model};

/// `parler` when Parler-TTS's weights are on this machine, else `piper`: what
/// `baton voice --engine auto` would try first.
pub fn voice_engine(out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "{}", local_voice_engine().name())?;
    Ok(())
}

/// Parler-TTS when its weights are on this machine, else Piper (which the stage fetches on
/// first use, or replaces with eSpeak NG, loudly).
pub fn local_voice_engine() -> VoiceEngine {
    if ParlerFiles::resolve(&configured_model()).is_ok() {
        VoiceEngine::Parler
    } else {
        VoiceEngine::Piper
    }
}

/// The weights files the built-in stage `stage` would load now, one per line.
pub fn weights(stage: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(stage) = Stage::named(stage) else {
        return Err(baton::BadInput(format!(
            "unknown stage '{stage}': use one of scenes, voice, images, video"
        ))
        .into());
    };
    for file in stage_weights(stage) {
        writeln!(out, "{}", file.display())?;
    }
    Ok(())
}

fn stage_weights(stage: Stage) -> Vec<PathBuf> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    match stage {
        // ffmpeg loads no weights.
        Stage::Video => Vec::new(),
        Stage::Scenes => ModelStore::from_env()
            .resolve(
                &var("BATON_SCENES_MODEL").unwrap_or_else(|| "smollm2".into()),
                false,
            )
            .ok()
            .into_iter()
            .collect(),
        // eSpeak NG loads no weights: only the neural engine has any.
        Stage::Voice if var("BATON_VOICE_ENGINE").as_deref() == Some("espeak") => Vec::new(),
        Stage::Voice if var("BATON_VOICE_ENGINE").as_deref() == Some("parler") => {
            ParlerFiles::resolve(&configured_model())
                .map(|f| f.weights)
                .unwrap_or_default()
        }
        // Piper's voice, when it is in the store (nothing is fetched here).
        Stage::Voice => baton_studio::voice::piper::PiperFiles::resolve(
            &var("BATON_VOICE_PIPER").unwrap_or_else(|| baton_content::DEFAULT_PIPER_VOICE.into()),
            &ModelStore::from_env(),
            false,
        )
        .map(|f| vec![f.model])
        .unwrap_or_default(),
        Stage::Images => ImageModel::resolve(
            &var("BATON_IMAGES_MODEL").unwrap_or_else(|| "sd-turbo".into()),
            var("BATON_IMAGES_FAMILY").as_deref(),
        )
        .map(|m| {
            m.encoders
                .into_iter()
                .flat_map(|e| e.weights)
                .chain([m.denoiser, m.decoder])
                .collect()
        })
        .unwrap_or_default(),
    }
}
