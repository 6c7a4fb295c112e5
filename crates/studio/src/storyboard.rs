//! The storyboard: what the `scenes` stage writes and the `voice` and `images` stages read, as
//! Rust types, and the JSON Schema the LLM's decoding is constrained to.
//!
//! One definition serves all three stages: the schema is generated from the same limits the
//! types are checked against, and `schemas/scenes.schema.json` in the repository is that schema
//! for any number of scenes (a test keeps the two equal).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Scenes a storyboard may have.
pub const MAX_SCENES: usize = 50;
const MAX_TOPIC: usize = 500;
const MAX_TITLE: usize = limits::TITLE;
const MAX_SCENE_TITLE: usize = limits::SCENE_TITLE;
const MAX_NARRATION: usize = limits::NARRATION;
const MAX_IMAGE_PROMPT: usize = limits::IMAGE_PROMPT;

/// The longest text each field may hold, in characters (the scenes stage keeps what the model
/// writes within them).
pub mod limits {
    pub const TITLE: usize = 120;
    pub const SCENE_TITLE: usize = 120;
    pub const NARRATION: usize = 400;
    pub const IMAGE_PROMPT: usize = 320;
}
const MAX_DURATION: f64 = 60.0;

/// One scene: what is said over it and what is drawn for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    /// 1, 2, 3, … in order.
    pub index: u32,
    pub title: String,
    /// The words the voice stage speaks.
    pub narration: String,
    /// What the images stage draws.
    pub image_prompt: String,
    pub duration_seconds: f64,
}

/// A storyboard for one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storyboard {
    pub topic: String,
    pub title: String,
    pub scenes: Vec<Scene>,
}

/// Why a storyboard cannot be used; messages name the file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoryboardError {
    #[error("cannot read scenes file '{}': {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("scenes file '{}' is not a storyboard: {why}; make it with `baton scenes`", .path.display())]
    NotJson {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("storyboard is invalid: {0}")]
    Invalid(String),
}

impl Storyboard {
    /// Reads and checks a scenes file.
    pub fn load(path: &Path) -> Result<Storyboard, StoryboardError> {
        let bytes = std::fs::read(path).map_err(|source| StoryboardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let board: Storyboard =
            serde_json::from_slice(&bytes).map_err(|e| StoryboardError::NotJson {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        board.validate(None)?;
        Ok(board)
    }

    /// Checks every limit of the schema; with `scenes`, also the number of scenes.
    pub fn validate(&self, scenes: Option<usize>) -> Result<(), StoryboardError> {
        let bad = |why: String| Err(StoryboardError::Invalid(why));
        let text = |field: &str, value: &str, max: usize| {
            if value.trim().is_empty() {
                Err(StoryboardError::Invalid(format!("{field} is empty")))
            } else if value.chars().count() > max {
                Err(StoryboardError::Invalid(format!(
                    "{field} is longer than {max} characters"
                )))
            } else {
                Ok(())
            }
        };
        text("topic", &self.topic, MAX_TOPIC)?;
        text("title", &self.title, MAX_TITLE)?;
        if self.scenes.is_empty() {
            return bad("it has no scenes".into());
        }
        if self.scenes.len() > MAX_SCENES {
            return bad(format!(
                "it has {} scenes; at most {MAX_SCENES}",
                self.scenes.len()
            ));
        }
        if let Some(n) = scenes
            && self.scenes.len() != n
        {
            return bad(format!(
                "it has {} scenes, not the {n} asked for",
                self.scenes.len()
            ));
        }
        for (i, s) in self.scenes.iter().enumerate() {
            let at = |field: &str| format!("scene {} {field}", i + 1);
            if s.index as usize != i + 1 {
                return bad(format!(
                    "scene {} has index {}; scenes are numbered 1, 2, 3, …",
                    i + 1,
                    s.index
                ));
            }
            text(&at("title"), &s.title, MAX_SCENE_TITLE)?;
            text(&at("narration"), &s.narration, MAX_NARRATION)?;
            text(&at("image_prompt"), &s.image_prompt, MAX_IMAGE_PROMPT)?;
            if !(s.duration_seconds >= 1.0 && s.duration_seconds <= MAX_DURATION) {
                return bad(format!(
                    "{} is {}; use 1 to {MAX_DURATION}",
                    at("duration_seconds"),
                    s.duration_seconds
                ));
            }
        }
        Ok(())
    }
}

/// The JSON Schema of a storyboard: with `scenes`, exactly that many; without, 1 to 50.
pub fn schema(scenes: Option<usize>) -> Value {
    let (min, max) = scenes.map_or((1, MAX_SCENES), |n| (n, n));
    // Text that starts and ends with a visible character: never blank.
    let string = |max: usize| json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "^\\S(.*\\S)?$"});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "baton storyboard",
        "description": "What `baton scenes` writes to 1_scripts/{slug}_scenes.json, and `baton voice` and `baton images` read.",
        "type": "object",
        "properties": {
            "topic": string(MAX_TOPIC),
            "title": string(MAX_TITLE),
            "scenes": {
                "type": "array",
                "minItems": min,
                "maxItems": max,
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer", "minimum": 1, "maximum": max},
                        "title": string(MAX_SCENE_TITLE),
                        "narration": string(MAX_NARRATION),
                        "image_prompt": string(MAX_IMAGE_PROMPT),
                        "duration_seconds": {"type": "number", "minimum": 1, "maximum": MAX_DURATION}
                    },
                    "required": ["index", "title", "narration", "image_prompt", "duration_seconds"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["topic", "title", "scenes"],
        "additionalProperties": false
    })
}

/// The run folder a scenes file belongs to, unless `given`:
/// `output/RUN/1_scripts/x_scenes.json` → `output/RUN`; a file elsewhere → its folder.
pub fn run_dir_of(input: &std::path::Path, given: Option<&std::path::Path>) -> std::path::PathBuf {
    if let Some(dir) = given {
        return dir.to_path_buf();
    }
    let folder = input.parent().unwrap_or(std::path::Path::new("."));
    match folder.file_name() {
        Some(name) if name == "1_scripts" => folder.parent().unwrap_or(folder).to_path_buf(),
        _ => folder.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(n: usize) -> Storyboard {
        Storyboard {
            topic: "Cyberpunk Tokyo".into(),
            title: "Neon Rain".into(),
            scenes: (1..=n)
                .map(|i| Scene {
                    index: i as u32,
                    title: format!("Scene {i}"),
                    narration: "Rain falls on neon streets.".into(),
                    image_prompt: "neon street at night, rain".into(),
                    duration_seconds: 5.0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_repository_schema_is_the_generated_one() {
        let file: Value =
            serde_json::from_str(include_str!("../../../schemas/scenes.schema.json")).unwrap();
        assert_eq!(
            file,
            schema(None),
            "regenerate schemas/scenes.schema.json from storyboard::schema(None)"
        );
    }

    #[test]
    fn valid_boards_pass_and_each_limit_is_checked() {
        board(6).validate(Some(6)).unwrap();
        let err = |b: Storyboard, n: Option<usize>| b.validate(n).unwrap_err().to_string();
        assert!(err(board(6), Some(4)).contains("6 scenes, not the 4"));
        assert!(err(board(0), None).contains("no scenes"));
        let mut b = board(2);
        b.scenes[1].narration = " ".into();
        assert!(err(b, None).contains("scene 2 narration is empty"));
        let mut b = board(2);
        b.scenes[1].index = 5;
        assert!(err(b, None).contains("index 5"));
        let mut b = board(1);
        b.scenes[0].duration_seconds = 0.0;
        assert!(err(b, None).contains("duration_seconds"));
    }

    #[test]
    fn loading_names_the_file_and_refuses_what_is_not_a_storyboard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x_scenes.json");
        std::fs::write(&path, b"not json").unwrap();
        let e = Storyboard::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("x_scenes.json") && e.contains("not a storyboard"),
            "{e}"
        );
        std::fs::write(&path, serde_json::to_vec(&board(3)).unwrap()).unwrap();
        assert_eq!(Storyboard::load(&path).unwrap(), board(3));
    }
}
