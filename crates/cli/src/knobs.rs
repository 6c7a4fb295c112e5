//! The built-in stages' main settings, where a user of `baton run` and `batch` sets them: flags,
//! the environment, a config file (`baton.toml` in the working folder, or `--config FILE`), in
//! that order of precedence, else the stage's own default. Each setting lands in the
//! environment variable its stage reads (the stages inherit `BATON_SCENES*`, `BATON_IMAGES_*`,
//! `BATON_VOICE_*`, `BATON_VIDEO_*` and `BATON_SEED`), so the runner, the monolithic mode and a
//! stage run by hand see the same value. `baton config show` prints what resolves, and from where.

use std::path::{Path, PathBuf};

use clap::Args;

/// One setting: its flag, its key in `baton.toml`, the variable its stage reads, and how a value
/// is checked before any stage starts.
pub struct Knob {
    pub flag: &'static str,
    pub key: &'static str,
    pub env: &'static str,
    pub about: &'static str,
    check: fn(&str) -> Result<(), String>,
}

fn any(_: &str) -> Result<(), String> {
    Ok(())
}

fn count(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err("a whole number above 0".into()),
    }
}

fn seed(v: &str) -> Result<(), String> {
    v.parse::<u64>()
        .map(|_| ())
        .map_err(|_| "a whole number, 0 or more".into())
}

fn drafts(v: &str) -> Result<(), String> {
    v.parse::<crate::args::Drafts>()
        .map(|_| ())
        .map_err(|_| crate::args::Drafts::CHOICES.into())
}

fn speed(v: &str) -> Result<(), String> {
    match v.parse::<f32>() {
        Ok(s) if (0.25..=4.0).contains(&s) => Ok(()),
        _ => Err("a number from 0.25 to 4.0 (1.0 is normal)".into()),
    }
}

/// `WIDTHxHEIGHT` in pixels, as `baton images --size` takes it.
pub fn parse_size(v: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{v}' is not WIDTHxHEIGHT in pixels (e.g. 1280x720)");
    let (w, h) = v.split_once(['x', 'X']).ok_or_else(bad)?;
    match (w.trim().parse::<usize>(), h.trim().parse::<usize>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(bad()),
    }
}

fn size(v: &str) -> Result<(), String> {
    parse_size(v)
        .map(|_| ())
        .map_err(|_| "WIDTHxHEIGHT in pixels, e.g. 1280x720".into())
}

fn resolution(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(n) if (120..=2160).contains(&n) => Ok(()),
        _ => Err("the short side in pixels, 120 to 2160 (1080 for 1080p, 720 for 720p)".into()),
    }
}

fn aspect(v: &str) -> Result<(), String> {
    match v {
        "16:9" | "9:16" | "1:1" => Ok(()),
        _ => Err("16:9, 9:16 or 1:1".into()),
    }
}

fn engine(v: &str) -> Result<(), String> {
    match v {
        "auto" | "piper" | "espeak" | "parler" => Ok(()),
        _ => Err("auto, piper, espeak or parler".into()),
    }
}

/// Every setting `baton run` takes for the built-in stages.
pub const KNOBS: &[Knob] = &[
    Knob {
        flag: "--scenes",
        key: "scenes.count",
        env: "BATON_SCENES",
        about: "scenes in the storyboard",
        check: count,
    },
    Knob {
        flag: "--seed",
        key: "seed",
        env: "BATON_SEED",
        about: "the storyboard's and the pictures' seed (scene N's picture uses seed + N)",
        check: seed,
    },
    Knob {
        flag: "--llm",
        key: "scenes.model",
        env: "BATON_SCENES_MODEL",
        about: "the storyboard's model: a name from `baton models list`, auto, or a GGUF file",
        check: any,
    },
    Knob {
        flag: "--drafts",
        key: "scenes.drafts",
        env: "BATON_SCENES_DRAFTS",
        about: "drafts of the outline and of each scene, the least faulty and most fluent kept: 1 to 8, or auto (3 on a GPU or with a model under 1 GiB, else 1)",
        check: drafts,
    },
    Knob {
        flag: "--style",
        key: "scenes.style",
        env: "BATON_SCENES_STYLE",
        about: "the look every image prompt ends with",
        check: any,
    },
    Knob {
        flag: "--image-model",
        key: "images.model",
        env: "BATON_IMAGES_MODEL",
        about: "the picture model: a family (sd-turbo, flux-schnell, ...) or a model folder",
        check: any,
    },
    Knob {
        flag: "--image-family",
        key: "images.family",
        env: "BATON_IMAGES_FAMILY",
        about: "the family of an --image-model folder",
        check: any,
    },
    Knob {
        flag: "--size",
        key: "images.size",
        env: "BATON_IMAGES_SIZE",
        about: "the pictures' WIDTHxHEIGHT (default: the family's native size)",
        check: size,
    },
    Knob {
        flag: "--steps",
        key: "images.steps",
        env: "BATON_IMAGES_STEPS",
        about: "denoising steps (default: the family's)",
        check: count,
    },
    Knob {
        flag: "--voice-engine",
        key: "voice.engine",
        env: "BATON_VOICE_ENGINE",
        about: "auto, piper, espeak or parler",
        check: engine,
    },
    Knob {
        flag: "--voice",
        key: "voice.voice",
        env: "BATON_VOICE_NAME",
        about: "eSpeak NG's voice (en-us, en-gb, ...)",
        check: any,
    },
    Knob {
        flag: "--speed",
        key: "voice.speed",
        env: "BATON_VOICE_SPEED",
        about: "the narration's pace: 1.0 is normal",
        check: speed,
    },
    Knob {
        flag: "--aspect",
        key: "video.aspect",
        env: "BATON_VIDEO_ASPECT",
        about: "the video's frame: 16:9, 9:16 or 1:1",
        check: aspect,
    },
    Knob {
        flag: "--resolution",
        key: "video.resolution",
        env: "BATON_VIDEO_RESOLUTION",
        about: "the video's short side in pixels (1080, 720, ...)",
        check: resolution,
    },
];

/// The settings as `baton run`, `batch` and `config show` take them.
#[derive(Debug, Args, Default, Clone)]
pub struct RunKnobs {
    /// Scenes in the storyboard [env: BATON_SCENES; baton.toml: scenes.count].
    #[arg(long, value_name = "N")]
    pub scenes: Option<String>,
    /// The storyboard's and the pictures' seed [env: BATON_SEED; baton.toml: seed].
    #[arg(long, value_name = "N")]
    pub seed: Option<String>,
    /// The storyboard's model: a name from `baton models list`, auto, or a GGUF file
    /// [env: BATON_SCENES_MODEL; baton.toml: scenes.model].
    #[arg(long, value_name = "NAME|FILE")]
    pub llm: Option<String>,
    /// Drafts of the outline and of each scene, the least faulty and most fluent kept: 1 to 8,
    /// or auto (3 on a GPU or with a model under 1 GiB, else 1) [env: BATON_SCENES_DRAFTS;
    /// baton.toml: scenes.drafts].
    #[arg(long, value_name = "N|auto")]
    pub drafts: Option<String>,
    /// The look every image prompt ends with [env: BATON_SCENES_STYLE; baton.toml: scenes.style].
    #[arg(long, value_name = "TEXT")]
    pub style: Option<String>,
    /// The picture model: a family (sd-turbo, flux-schnell, ...) or a model folder
    /// [env: BATON_IMAGES_MODEL; baton.toml: images.model].
    #[arg(long, value_name = "NAME|DIR")]
    pub image_model: Option<String>,
    /// The family of an --image-model folder [env: BATON_IMAGES_FAMILY; baton.toml: images.family].
    #[arg(long, value_name = "FAMILY")]
    pub image_family: Option<String>,
    /// The pictures' size, e.g. 1280x720 (default: the family's native size)
    /// [env: BATON_IMAGES_SIZE; baton.toml: images.size].
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Denoising steps (default: the family's) [env: BATON_IMAGES_STEPS; baton.toml: images.steps].
    #[arg(long, value_name = "N")]
    pub steps: Option<String>,
    /// The voice engine: auto, piper, espeak or parler [env: BATON_VOICE_ENGINE; baton.toml:
    /// voice.engine].
    #[arg(long, value_name = "ENGINE")]
    pub voice_engine: Option<String>,
    /// eSpeak NG's voice: en-us, en-gb, ... (`baton voice --help` lists them)
    /// [env: BATON_VOICE_NAME; baton.toml: voice.voice].
    #[arg(long, value_name = "VOICE")]
    pub voice: Option<String>,
    /// The narration's pace: 1.0 is normal [env: BATON_VOICE_SPEED; baton.toml: voice.speed].
    #[arg(long, value_name = "X")]
    pub speed: Option<String>,
    /// The video's frame: 16:9, 9:16 or 1:1 [env: BATON_VIDEO_ASPECT; baton.toml: video.aspect].
    #[arg(long, value_name = "W:H")]
    pub aspect: Option<String>,
    /// The video's short side in pixels [env: BATON_VIDEO_RESOLUTION; baton.toml:
    /// video.resolution].
    #[arg(long, value_name = "PIXELS")]
    pub resolution: Option<String>,
    /// A config file (TOML) of these settings; default: ./baton.toml when there is one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl RunKnobs {
    /// The flag's value for `knob`, if given.
    fn flag(&self, knob: &Knob) -> Option<&String> {
        match knob.flag {
            "--scenes" => self.scenes.as_ref(),
            "--seed" => self.seed.as_ref(),
            "--llm" => self.llm.as_ref(),
            "--drafts" => self.drafts.as_ref(),
            "--style" => self.style.as_ref(),
            "--image-model" => self.image_model.as_ref(),
            "--image-family" => self.image_family.as_ref(),
            "--size" => self.size.as_ref(),
            "--steps" => self.steps.as_ref(),
            "--voice-engine" => self.voice_engine.as_ref(),
            "--voice" => self.voice.as_ref(),
            "--speed" => self.speed.as_ref(),
            "--aspect" => self.aspect.as_ref(),
            "--resolution" => self.resolution.as_ref(),
            other => unreachable!("no field for {other}"),
        }
    }
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Config(PathBuf),
    /// Not set: the stage's own default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env => f.write_str("environment"),
            Source::Config(path) => write!(f, "{}", path.display()),
            Source::Default => f.write_str("the stage's default"),
        }
    }
}

/// One setting as resolved.
pub struct Resolved {
    pub knob: &'static Knob,
    pub value: Option<String>,
    pub source: Source,
}

/// The config file `knobs` names, or ./baton.toml when there is one.
fn config_path(knobs: &RunKnobs) -> Option<PathBuf> {
    match &knobs.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("baton.toml")).filter(|p| p.is_file()),
    }
}

/// The config file's settings by key ("images.steps"), every key checked against `KNOBS`.
fn read_config(path: &Path) -> Result<Vec<(String, String)>, crate::BadInput> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::BadInput(format!(
            "--config '{}': {e}; give a TOML file of settings (see docs/config.md)",
            path.display()
        ))
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        crate::BadInput(format!(
            "'{}' is not valid TOML: {}",
            path.display(),
            e.message()
        ))
    })?;
    let mut out = Vec::new();
    let mut add = |key: String, value: &toml::Value| -> Result<(), crate::BadInput> {
        if !KNOBS.iter().any(|k| k.key == key) {
            let keys: Vec<&str> = KNOBS.iter().map(|k| k.key).collect();
            let hint = baton_base::suggest::closest(&key, keys.iter().copied())
                .map(|k| format!("did you mean '{k}'? "))
                .unwrap_or_default();
            return Err(crate::BadInput(format!(
                "'{}': unknown setting '{key}'; {hint}the settings are: {}",
                path.display(),
                keys.join(", ")
            )));
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(crate::BadInput(format!(
                    "'{}': {key} = {other} is not a string or a number",
                    path.display()
                )));
            }
        };
        out.push((key, text));
        Ok(())
    };
    for (name, value) in &table {
        match value {
            toml::Value::Table(inner) => {
                for (k, v) in inner {
                    add(format!("{name}.{k}"), v)?;
                }
            }
            v => add(name.clone(), v)?,
        }
    }
    Ok(out)
}

/// Every setting resolved: the flag, else the environment, else the config file, else the
/// stage's default. A bad value is refused, naming where it came from.
pub fn resolve(knobs: &RunKnobs) -> Result<Vec<Resolved>, crate::BadInput> {
    let config = match config_path(knobs) {
        Some(path) => Some((read_config(&path)?, path)),
        None => None,
    };
    let mut out = Vec::new();
    for knob in KNOBS {
        let from_config = config.as_ref().and_then(|(values, path)| {
            values
                .iter()
                .find(|(k, _)| k == knob.key)
                .map(|(_, v)| (v.clone(), Source::Config(path.clone())))
        });
        let found = match knobs.flag(knob).cloned() {
            Some(v) => Some((v, Source::Flag)),
            None => match std::env::var(knob.env).ok().filter(|v| !v.is_empty()) {
                Some(v) => Some((v, Source::Env)),
                None => from_config,
            },
        };
        let (value, source) = match found {
            Some((v, s)) => (Some(v), s),
            None => (None, Source::Default),
        };
        if let Some(v) = &value {
            (knob.check)(v).map_err(|want| {
                let from = match &source {
                    Source::Flag => knob.flag.to_string(),
                    Source::Env => knob.env.to_string(),
                    Source::Config(p) => format!("{} in '{}'", knob.key, p.display()),
                    Source::Default => unreachable!("a default has no value"),
                };
                crate::BadInput(format!("{from} '{v}': use {want}"))
            })?;
        }
        out.push(Resolved {
            knob,
            value,
            source,
        });
    }
    Ok(out)
}

/// Resolves the settings and puts each set one in this process's environment, where the stages
/// (children, or the monolithic mode's parse of their arguments) read it. Call before any
/// thread starts.
pub fn apply(knobs: &RunKnobs) -> Result<Vec<Resolved>, crate::BadInput> {
    let resolved = resolve(knobs)?;
    for r in &resolved {
        if let (Some(v), false) = (&r.value, r.source == Source::Env) {
            // SAFETY: called at the start of `run`, `batch` and the monolithic mode, before
            // the engine, the interrupt handler or any stage thread exists: no other thread
            // reads the environment while it changes.
            unsafe { std::env::set_var(r.knob.env, v) };
        }
    }
    Ok(resolved)
}

/// The file in a run folder that keeps the settings the run began with, for `baton resume`.
pub const SETTINGS_FILE: &str = "settings.json";

/// Keeps the settings that had a value (by their variables) in `dir`'s settings file, whole or
/// not at all.
pub fn record(resolved: &[Resolved], dir: &Path) -> anyhow::Result<()> {
    let set: std::collections::BTreeMap<&str, &str> = resolved
        .iter()
        .filter_map(|r| r.value.as_deref().map(|v| (r.knob.env, v)))
        .collect();
    baton_base::atomic_file::write_atomic(
        &dir.join(SETTINGS_FILE),
        &serde_json::to_vec_pretty(&set)?,
    )?;
    Ok(())
}

/// Puts the settings a run began with back in this process's environment, each where the
/// environment does not set it already; returns those it set. A run folder without the file
/// (made before it existed) restores nothing. Call before any thread starts.
pub fn restore(dir: &Path) -> Result<Vec<(String, String)>, crate::BadInput> {
    let path = dir.join(SETTINGS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(crate::BadInput(format!(
                "cannot read '{}': {e}",
                path.display()
            )));
        }
    };
    let set: std::collections::BTreeMap<String, String> = serde_json::from_slice(&bytes)
        .map_err(|e| {
            crate::BadInput(format!(
                "'{}' is not the settings baton wrote ({e}); delete it to resume with this environment's",
                path.display()
            ))
        })?;
    let mut restored = Vec::new();
    for (var, value) in set {
        if !KNOBS.iter().any(|k| k.env == var) {
            continue;
        }
        if std::env::var_os(&var).is_none() {
            // SAFETY: called at the start of `resume`, before the engine or any thread exists.
            unsafe { std::env::set_var(&var, &value) };
            restored.push((var, value));
        }
    }
    Ok(restored)
}

/// `baton config show`: every setting, its value and where it came from.
pub fn show(knobs: &RunKnobs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let resolved = resolve(knobs)?;
    writeln!(
        out,
        "{:<15} {:<20} {:<32} FROM",
        "FLAG", "BATON.TOML", "VALUE"
    )?;
    for r in &resolved {
        writeln!(
            out,
            "{:<15} {:<20} {:<32} {}",
            r.knob.flag,
            r.knob.key,
            r.value.as_deref().unwrap_or("-"),
            match r.source {
                Source::Env => format!("environment ({})", r.knob.env),
                ref s => s.to_string(),
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_knob_has_a_flag_field_and_a_checked_env_prefix() {
        let inherited = [
            "BATON_SCENES",
            "BATON_IMAGES_",
            "BATON_VOICE_",
            "BATON_VIDEO_",
            "BATON_SEED",
        ];
        let knobs = RunKnobs::default();
        for k in KNOBS {
            assert!(knobs.flag(k).is_none(), "{}", k.flag);
            assert!(
                inherited.iter().any(|p| k.env.starts_with(p)),
                "{} is not passed to stages",
                k.env
            );
        }
    }

    #[test]
    fn drafts_are_checked_before_any_stage_starts() {
        assert_eq!(drafts("auto"), Ok(()));
        assert_eq!(drafts("3"), Ok(()));
        for bad in ["0", "9", "many"] {
            assert!(
                drafts(bad).unwrap_err().contains("1 to 8, or auto"),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes_parse_and_bad_ones_say_the_form() {
        assert_eq!(parse_size("1280x720"), Ok((1280, 720)));
        assert_eq!(parse_size("64X48"), Ok((64, 48)));
        for bad in ["1280", "x720", "0x10", "12x", "axb"] {
            assert!(
                parse_size(bad).unwrap_err().contains("WIDTHxHEIGHT"),
                "{bad}"
            );
        }
    }
}
