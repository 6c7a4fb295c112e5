//! A model on disk: which family it is, where its text encoders, denoiser and decoder are, in a
//! diffusers folder, FLUX.1's repository layout or the Hugging Face cache; and fetching one.

use std::path::{Path, PathBuf};

use super::family::{Arch, Family};
use super::tokenize::TokenizerFiles;
use super::{ImagesError, family};

/// A text encoder on disk: its weights (one file, or a checkpoint's shards), its tokenizer and,
/// for T5, its config.json.
#[derive(Debug, Clone)]
pub struct EncoderFiles {
    pub weights: Vec<PathBuf>,
    pub tokenizer: TokenizerFiles,
    pub config: Option<PathBuf>,
}

/// A model on disk: its family, its text encoders, its denoiser and its decoder.
#[derive(Debug, Clone)]
pub struct ImageModel {
    pub family: &'static Family,
    pub dir: PathBuf,
    pub encoders: Vec<EncoderFiles>,
    pub denoiser: PathBuf,
    pub decoder: PathBuf,
}

const SD_LAYOUT: &str = "a diffusers folder has text_encoder/, tokenizer/ (and text_encoder_2/, \
    tokenizer_2/ for SDXL), unet/ and vae/";

const FLUX_LAYOUT: &str = "a FLUX.1 folder has flux1-*.safetensors, ae.safetensors, \
    text_encoder/ (CLIP-L), tokenizer/, text_encoder_2/ (T5, with config.json) and tokenizer_2/";

impl ImageModel {
    /// `spec` is a model folder (of `family`, default sd-turbo) or a family name, found in the
    /// Hugging Face cache.
    pub fn resolve(spec: &str, family: Option<&str>) -> Result<ImageModel, ImagesError> {
        let family_of = |name: &str| {
            family::find(name).ok_or_else(|| ImagesError::UnknownModel {
                name: name.to_string(),
                known: family::names(),
            })
        };
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::in_dir(path, family_of(family.unwrap_or("sd-turbo"))?);
        }
        if spec.contains('/') || spec.starts_with('.') {
            return Err(ImagesError::NoModel {
                why: format!("'{spec}' is not a folder"),
                family: family.unwrap_or("sd-turbo").into(),
            });
        }
        let fam = family_of(spec)?;
        let snapshots = crate::hub::repo_dir(&crate::hub::cache_dir(), fam.repo).join("snapshots");
        let marker = match &fam.arch {
            Arch::Sd(_) => "unet",
            Arch::Flux(f) => f.transformer_file,
        };
        let found = std::fs::read_dir(&snapshots).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.join(marker).exists())
        });
        match found {
            Some(dir) => Self::in_dir(&dir, fam),
            None => Err(ImagesError::NoModel {
                why: format!(
                    "{} ({}) is not in the Hugging Face cache at {}; `baton models fetch {}` (or --fetch) downloads it",
                    fam.name,
                    fam.repo,
                    snapshots.display(),
                    fam.name
                ),
                family: fam.name.into(),
            }),
        }
    }

    /// Downloads family `name`'s files from the hub into its cache (what is there already is
    /// kept) and returns the model. `progress(file, done, total)` follows each download.
    pub fn fetch(
        name: &str,
        hub: &crate::hub::Hub,
        progress: &mut dyn FnMut(&str, u64, Option<u64>),
    ) -> Result<ImageModel, ImagesError> {
        use crate::hub::HubError;
        let fam = family::find(name)
            .filter(|f| !f.repo.is_empty())
            .ok_or_else(|| ImagesError::UnknownModel {
                name: name.to_string(),
                known: family::FAMILIES
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut get =
            |path: &str| hub.fetch(fam.repo, "main", path, &mut |d, t| progress(path, d, t));
        let mut snapshot = None;
        let mut files = fam.hub_files();
        if let Arch::Flux(_) = fam.arch {
            // T5's shards, as its index names them (or one file, for a repository without one).
            match get("text_encoder_2/model.safetensors.index.json") {
                Ok(index) => {
                    let shards =
                        crate::hub::shards_in_index(&index).map_err(ImagesError::Option)?;
                    files.extend(
                        shards
                            .into_iter()
                            .map(|s| vec![format!("text_encoder_2/{s}")]),
                    );
                }
                Err(HubError::NotFound { .. }) => {
                    files.push(vec!["text_encoder_2/model.safetensors".into()]);
                }
                Err(e) => return Err(e.into()),
            }
        }
        for alternatives in &files {
            let mut found = None;
            for (i, path) in alternatives.iter().enumerate() {
                match get(path) {
                    Ok(local) => {
                        found = Some((local, path));
                        break;
                    }
                    Err(HubError::NotFound { .. }) if i + 1 < alternatives.len() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let (local, path) = found.expect("the last alternative returns or errs");
            // The snapshot folder: the local file less the path it has in the repository.
            let mut dir = local.clone();
            for _ in path.split('/') {
                dir.pop();
            }
            snapshot = Some(dir);
        }
        Self::in_dir(&snapshot.expect("every family has files"), fam)
    }

    /// The same model with `spec` as its transformer (FLUX only): a GGUF transformer known by
    /// name (`flux-schnell-q8_0`, fetched into the Hugging Face cache), or a file: a GGUF of the
    /// transformer quantized (Q8_0, Q6_K, Q4_K, as the community publishes them for schnell and
    /// dev), or a safetensors checkpoint.
    pub fn with_transformer(self, spec: &str) -> Result<ImageModel, ImagesError> {
        self.with_transformer_in(spec, &crate::hub::cache_dir())
    }

    /// [`ImageModel::with_transformer`], known names looked up in the Hugging Face cache at
    /// `cache`.
    pub fn with_transformer_in(
        mut self,
        spec: &str,
        cache: &Path,
    ) -> Result<ImageModel, ImagesError> {
        if !matches!(self.family.arch, Arch::Flux(_)) {
            return Err(ImagesError::Option(format!(
                "--transformer '{spec}': only FLUX families take a transformer file; {} has a UNet",
                self.family.name
            )));
        }
        if let Some(known) = family::GgufTransformer::named(spec) {
            if known.family != self.family.name {
                return Err(ImagesError::Option(format!(
                    "--transformer {spec} is {}'s transformer, but the model is {}; use a {} model (--model {})",
                    known.family, self.family.name, known.family, known.family
                )));
            }
            self.denoiser = known.find_in(cache).ok_or_else(|| ImagesError::NoModel {
                why: format!(
                    "the transformer {spec} ({}/{}) is not in the Hugging Face cache at {}; `baton models fetch {spec}` downloads it",
                    known.repo,
                    known.file,
                    cache.display()
                ),
                family: self.family.name.into(),
            })?;
            return Ok(self);
        }
        let file = Path::new(spec);
        let gguf = super::flux::is_gguf(file);
        let safetensors = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        if !file.is_file() || !(gguf || safetensors) {
            let names: Vec<&str> = family::GGUF_TRANSFORMERS.iter().map(|g| g.name).collect();
            return Err(ImagesError::Option(format!(
                "--transformer '{spec}': {}; give a .gguf or .safetensors file of a FLUX transformer, or one of {}",
                if file.is_file() {
                    "not a .gguf or .safetensors file"
                } else {
                    "no such file, nor a known transformer"
                },
                names.join(", ")
            )));
        }
        self.denoiser = file.to_path_buf();
        Ok(self)
    }

    /// Downloads the GGUF transformer `name` into the Hugging Face cache (kept if there).
    pub fn fetch_transformer(
        name: &str,
        hub: &crate::hub::Hub,
        progress: &mut dyn FnMut(&str, u64, Option<u64>),
    ) -> Result<PathBuf, ImagesError> {
        let known = family::GgufTransformer::named(name).ok_or_else(|| {
            ImagesError::Option(format!("'{name}' is not a GGUF transformer baton knows"))
        })?;
        Ok(hub.fetch(known.repo, "main", known.file, &mut |d, t| {
            progress(known.file, d, t)
        })?)
    }

    pub(crate) fn in_dir(dir: &Path, family: &'static Family) -> Result<ImageModel, ImagesError> {
        let layout = match family.arch {
            Arch::Sd(_) => SD_LAYOUT,
            Arch::Flux(_) => FLUX_LAYOUT,
        };
        let missing = |what: String| ImagesError::Incomplete {
            dir: dir.to_path_buf(),
            what,
            layout,
        };
        let pick = |what: &str, names: &[&str]| {
            names
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| missing(format!("{what} ({})", names.join(" or "))))
        };
        let tokenizer = |sub: &str| {
            TokenizerFiles::find(&dir.join(sub)).ok_or_else(|| {
                missing(format!(
                    "a tokenizer ({sub}/tokenizer.json, or {sub}/vocab.json and {sub}/merges.txt)"
                ))
            })
        };
        let clip = |suffix: &str| -> Result<EncoderFiles, ImagesError> {
            let te = format!("text_encoder{suffix}");
            Ok(EncoderFiles {
                weights: vec![pick(
                    "a text encoder",
                    &[
                        &format!("{te}/model.safetensors"),
                        &format!("{te}/model.fp16.safetensors"),
                    ],
                )?],
                tokenizer: tokenizer(&format!("tokenizer{suffix}"))?,
                config: None,
            })
        };
        match &family.arch {
            Arch::Sd(sd) => {
                let mut encoders = vec![clip("")?];
                if sd.clip2.is_some() {
                    encoders.push(clip("_2")?);
                }
                Ok(ImageModel {
                    family,
                    dir: dir.to_path_buf(),
                    encoders,
                    denoiser: pick(
                        "a UNet",
                        &[
                            "unet/diffusion_pytorch_model.safetensors",
                            "unet/diffusion_pytorch_model.fp16.safetensors",
                        ],
                    )?,
                    decoder: pick(
                        "a VAE",
                        &[
                            "vae/diffusion_pytorch_model.safetensors",
                            "vae/diffusion_pytorch_model.fp16.safetensors",
                        ],
                    )?,
                })
            }
            Arch::Flux(fx) => {
                let t5_dir = dir.join("text_encoder_2");
                let mut shards: Vec<PathBuf> = std::fs::read_dir(&t5_dir)
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                            .collect()
                    })
                    .unwrap_or_default();
                shards.sort();
                if shards.is_empty() {
                    return Err(missing(
                        "T5's weights (text_encoder_2/*.safetensors)".into(),
                    ));
                }
                let t5 = EncoderFiles {
                    weights: shards,
                    tokenizer: tokenizer("tokenizer_2")?,
                    config: Some(pick("T5's config", &["text_encoder_2/config.json"])?),
                };
                Ok(ImageModel {
                    family,
                    dir: dir.to_path_buf(),
                    encoders: vec![clip("")?, t5],
                    denoiser: pick("the transformer", &[fx.transformer_file])?,
                    decoder: pick("the autoencoder", &["ae.safetensors"])?,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(family: &str) -> ImageModel {
        ImageModel {
            family: family::find(family).unwrap(),
            dir: PathBuf::from("/models/x"),
            encoders: Vec::new(),
            denoiser: PathBuf::from("/models/x/flux1-schnell.safetensors"),
            decoder: PathBuf::from("/models/x/ae.safetensors"),
        }
    }

    /// `--transformer NAME` finds a fetched GGUF in the Hugging Face cache's layout; one not
    /// fetched, one of another family, a UNet family and a file that is no transformer are each
    /// refused with what to do.
    #[test]
    fn a_transformer_by_name_or_file_and_every_refusal() {
        let cache = tempfile::tempdir().unwrap();
        let repo = crate::hub::repo_dir(cache.path(), "city96/FLUX.1-schnell-gguf");
        let snapshot = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        std::fs::write(snapshot.join("flux1-schnell-Q8_0.gguf"), b"GGUF").unwrap();

        let m = model("flux-schnell")
            .with_transformer_in("flux-schnell-q8_0", cache.path())
            .unwrap();
        assert_eq!(m.denoiser, snapshot.join("flux1-schnell-Q8_0.gguf"));

        let err = |r: Result<ImageModel, ImagesError>| r.err().unwrap().to_string();
        let e = err(model("flux-schnell").with_transformer_in("flux-schnell-q4_k_s", cache.path()));
        assert!(e.contains("baton models fetch flux-schnell-q4_k_s"), "{e}");
        let e = err(model("flux-dev").with_transformer_in("flux-schnell-q8_0", cache.path()));
        assert!(
            e.contains("flux-schnell's transformer, but the model is flux-dev"),
            "{e}"
        );
        let e = err(model("sd-turbo").with_transformer_in("flux-schnell-q8_0", cache.path()));
        assert!(e.contains("only FLUX families"), "{e}");
        let text = cache.path().join("notes.txt");
        std::fs::write(&text, "x").unwrap();
        let e =
            err(model("flux-schnell").with_transformer_in(&text.to_string_lossy(), cache.path()));
        assert!(e.contains("not a .gguf or .safetensors file"), "{e}");
        let e = err(model("flux-schnell").with_transformer_in("flux-typo", cache.path()));
        assert!(
            e.contains("no such file, nor a known transformer") && e.contains("flux-dev-q8_0"),
            "{e}"
        );
    }
}
