//! The `scenes` stage: an LLM writes the storyboard for a topic, as
//! `{run}/1_scripts/{slug}_scenes.json`, where the seed's `pipeline_manager.py` put it.
//!
//! The model lives inside a `MemoryScope`, with the seed's log points (after loading, after
//! generation), and its release is verified before the stage returns. Nothing is written until
//! the storyboard has been generated and validated; then the file appears whole (temp file,
//! rename), so a failure leaves no partial run folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use baton_base::atomic_file::write_atomic;
use baton_base::fault::{Classify, Fault};
use baton_memory::{MemoryScope, ScopeReport};

use crate::llm::{Generation, Llm, LlmError, Sampler, Steering, WrapUp};
use crate::storyboard::{Scene, Storyboard, StoryboardError};
use baton_base::run_dir::{TopicError, run_folder_name, slug};

pub use crate::compute::Compute;

/// Where the scenes file goes.
pub enum Destination {
    /// A new run folder under this output folder.
    NewRun(PathBuf),
    /// An existing run folder (a stage of `baton run`).
    RunDir(PathBuf),
}

pub struct ScenesRequest<'a> {
    pub topic: &'a str,
    pub scenes: usize,
    pub model: &'a Path,
    pub tokenizer: Option<&'a Path>,
    pub sampler: Sampler,
    /// Added to every image prompt (`, style`), for one look across the pictures.
    pub style: &'a str,
    pub compute: Compute,
    pub destination: Destination,
}

pub struct ScenesOutcome {
    pub file: PathBuf,
    pub run_dir: PathBuf,
    pub storyboard: Storyboard,
    pub generation: Generation,
    pub load_seconds: f64,
    /// The device's memory after loading and after generating, for the log.
    pub after_load: String,
    pub after_generation: String,
    /// The proof the model's memory came back.
    pub reclaim: ScopeReport,
    pub device: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenesError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("bad --scenes {0}: use 1 to {max}", max = crate::storyboard::MAX_SCENES)]
    SceneCount(usize),
    #[error(
        "bad --style '{0}': use at most {MAX_STYLE} characters of words, such as \"watercolor, soft light\""
    )]
    Style(String),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("the model's storyboard cannot be used ({0}); try another --seed or a larger model")]
    Storyboard(#[from] StoryboardError),
    #[error(transparent)]
    Memory(#[from] baton_memory::MemoryError),
    #[error(transparent)]
    File(#[from] baton_base::FileError),
    #[error(transparent)]
    Compute(#[from] crate::compute::ComputeError),
    #[error("cannot create '{}': {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for ScenesError {
    /// The topic, the scene count and the model file are what the user passed.
    fn fault(&self) -> Fault {
        match self {
            ScenesError::Topic(_) | ScenesError::SceneCount(_) | ScenesError::Style(_) => {
                Fault::Input
            }
            ScenesError::Llm(e) => e.fault(),
            ScenesError::Memory(e) => e.fault(),
            ScenesError::File(e) => e.fault(),
            ScenesError::Compute(e) => e.fault(),
            ScenesError::Storyboard(_) | ScenesError::Create { .. } => Fault::Machine,
        }
    }
}

const SYSTEM: &str = "You write storyboards for short narrated videos. Answer with JSON only.";

/// The longest `--style`: with the longest image prompt the model may write, it stays within
/// the storyboard's limit.
const MAX_STYLE: usize = 56;

/// Tries a scene gets (new seed each) to come out unlike the scenes before it.
const SCENE_TRIES: u64 = 3;
/// Tries a part of the storyboard gets (new seed each) when it runs past the token limit.
const FINISH_TRIES: u64 = 3;

/// A string schema for words to be read or printed: a number of words, one space apart, each
/// letters or digits with at most one short apostrophe or hyphen part (`keeper's`, `x-ray`) and
/// one closing punctuation mark. So no markup, paths, quotes, brackets (which bracketed years
/// come in), ellipses or line breaks can be written. The floor keeps a small model from
/// stopping at a fragment ("The Last Night of Hope" as a narration); the ceiling bounds the
/// length (a regex and a length limit together are too costly for the constraint).
fn words_schema(words: std::ops::RangeInclusive<usize>) -> serde_json::Value {
    let (min, max) = (words.start().max(&1) - 1, words.end().max(&1) - 1);
    serde_json::json!({
        "type": "string",
        "pattern": format!("^{WORD}( {WORD}){{{min},{max}}}$"),
    })
}

/// A phrase's schema: words as [`words_schema`]'s but with no punctuation at all, so a small
/// model asked for a picture's subject, place or light writes a noun phrase, not the sentence
/// ("She is standing at attention. But") it writes when it may.
fn phrase_schema(words: std::ops::RangeInclusive<usize>) -> serde_json::Value {
    let (min, max) = (words.start().max(&1) - 1, words.end().max(&1) - 1);
    serde_json::json!({
        "type": "string",
        "pattern": format!("^{PHRASE_WORD}( {PHRASE_WORD}){{{min},{max}}}$"),
    })
}

/// The narration's schema: words, as [`words_schema`], one of which is a word of the topic (or
/// an obvious form of it: `bees`, `keeper's`, `Tokyo's`), so a small model cannot drift off
/// the topic; any words when the topic has none worth naming.
fn narration_schema(topic: &str, topic_words: &[String]) -> serde_json::Value {
    // A name (a word capitalised inside the topic: Tokyo, Paris) is written capitalised only.
    let is_name = |w: &str| {
        topic.split_whitespace().skip(1).any(|t| {
            let t = t.trim_matches(|c: char| !c.is_alphanumeric());
            t.to_lowercase().trim_end_matches("'s") == w
                && t.chars().next().is_some_and(char::is_uppercase)
        })
    };
    if topic_words.is_empty() {
        return words_schema(NARRATION_WORDS);
    }
    let forms: Vec<String> = topic_words
        .iter()
        .map(|w| w.trim_end_matches("'s"))
        .filter(|w| !w.is_empty() && w.chars().all(char::is_alphanumeric))
        .map(|w| {
            let mut c = w.chars();
            let first = c.next().expect("content words are not empty");
            let rest: String = c.collect();
            if is_name(w) {
                format!("{}{rest}", first.to_uppercase())
            } else {
                format!("[{}{}]{rest}", first.to_lowercase(), first.to_uppercase())
            }
        })
        .collect();
    if forms.is_empty() {
        return words_schema(NARRATION_WORDS);
    }
    // The topic's word, a plural or a possessive, then a closing mark.
    let topic = format!("(?:{})(?:s|es)?(?:'s)?[.,;:!?]?", forms.join("|"));
    // A few words before it, more after: at most NARRATION_WORDS' longest in all.
    let (before, after) = (NARRATION_TOPIC_BEFORE, NARRATION_TOPIC_AFTER);
    let (after_min, after_max) = (after.start(), after.end());
    serde_json::json!({
        "type": "string",
        // The last word ends the sentence: a narration is read aloud, and one cut off at a
        // comma by the word limit sounds broken.
        "pattern": format!("^(?:{WORD} ){{0,{before}}}{topic}(?: {WORD}){{{after_min},{after_max}}} {LAST_WORD}$"),
    })
}

/// At most this many words come before the topic's word in a narration, and this many after.
const NARRATION_TOPIC_BEFORE: usize = 6;
const NARRATION_TOPIC_AFTER: std::ops::RangeInclusive<usize> = 5..=10;
const _: () =
    assert!(NARRATION_TOPIC_BEFORE + *NARRATION_TOPIC_AFTER.end() + 2 <= *NARRATION_WORDS.end());

/// One word: at most `MAX_WORD` characters.
/// It starts with a letter: a small model left free to write digits writes lists of them
/// ("5, 1, 5, 1, 2, 3"), and numbers read better spelled out.
const WORD: &str = "\\p{L}[\\p{L}\\p{N}]{0,11}(['-]\\p{L}{1,6})?[.,;:!?]?";
const MAX_WORD: usize = 12 + 7 + 1;
/// A phrase's word: as [`WORD`], without the closing mark.
const PHRASE_WORD: &str = "\\p{L}[\\p{L}\\p{N}]{0,11}(['-]\\p{L}{1,6})?";
const MAX_PHRASE_WORD: usize = MAX_WORD - 1;
/// A sentence's last word: as [`WORD`], ending with a full stop, `!` or `?`.
const LAST_WORD: &str = "\\p{L}[\\p{L}\\p{N}]{0,11}(['-]\\p{L}{1,6})?[.!?]";

/// The longest text a words schema of `words` words admits.
const fn longest(words: usize) -> usize {
    words * (MAX_WORD + 1) - 1
}

// The longest fields the model may write fit the storyboard, the style included.
const _: () = {
    use crate::storyboard::limits;
    assert!(longest(*TITLE_WORDS.end()) <= limits::TITLE);
    assert!(longest(*TITLE_WORDS.end()) <= limits::SCENE_TITLE);
    assert!(longest(*NARRATION_WORDS.end()) <= limits::NARRATION);
    // A picture's three phrases, joined by ", " (one character more than a word's space),
    // then the style.
    let words = *SUBJECT_WORDS.end() + *PLACE_WORDS.end() + *LIGHT_WORDS.end();
    assert!(words * (MAX_PHRASE_WORD + 1) - 1 + 2 + ", ".len() + MAX_STYLE <= limits::IMAGE_PROMPT);
};

/// How many words each field has: titles short, a narration one or two sentences, an outline
/// line one sentence.
const TITLE_WORDS: std::ops::RangeInclusive<usize> = 2..=5;
const NARRATION_WORDS: std::ops::RangeInclusive<usize> = 10..=18;
/// A picture, as three phrases: who or what (doing what), where, and the light.
const SUBJECT_WORDS: std::ops::RangeInclusive<usize> = 2..=7;
const PLACE_WORDS: std::ops::RangeInclusive<usize> = 2..=4;
const LIGHT_WORDS: std::ops::RangeInclusive<usize> = 1..=2;
const OUTLINE_WORDS: std::ops::RangeInclusive<usize> = 6..=20;

/// The constraint of one generation: compact JSON, or a small model spends its budget on
/// whitespace.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    schema["x-guidance"] = serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": "
    });
    schema
}

fn outline_prompt(topic: &str, scenes: usize) -> String {
    format!(
        "Plan a narrated video of {scenes} scenes about: {topic}\n\
         Give the video a short title of its own, and for each scene a short title and one \
         sentence saying what happens in it. Every scene shows something \
         different about {topic}; together they tell one story, from its beginning to its end. \
         No two titles are alike."
    )
}

fn scene_prompt(topic: &str, title: &str, outline: &[Planned], k: usize) -> String {
    let plan: String = outline
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}. {}\n", i + 1, p.happens))
        .collect();
    format!(
        "A narrated video about {topic}, titled \"{title}\". Its scenes:\n{plan}\
         Write scene {k}: {}\n\
         Give: the narration, one or two full sentences to be read aloud, about {topic}, \
         saying something no other scene says; the picture shown during it, for an image \
         generator, as three short phrases in words of their own, not the narration's: its \
         subject (who or what, doing what), the place, and the light; and a duration in \
         seconds, from 4 to 8.",
        outline[k - 1].happens
    )
}

/// A worked example, shown to the model as an earlier turn of the conversation: small models
/// copy the shape of an answer far better than they follow a description of it. Its topic is
/// unlike any a user would ask for in the same breath, and a scene that copies its narration
/// is written again (it counts as an earlier scene).
mod example {
    pub const TOPIC: &str = "The first snow in a mountain village";
    pub const TITLE: &str = "When the Snow Came";
    /// Each scene's title, and what happens in it.
    pub const OUTLINE: [(&str, &str); 4] = [
        (
            "Clouds Over the Peaks",
            "An old shepherd watches grey clouds gather over the peaks at dusk.",
        ),
        (
            "A White Morning",
            "At dawn the village wakes under a thick white blanket.",
        ),
        (
            "A Snowman in the Square",
            "Children race out of school to build a snowman in the square.",
        ),
        (
            "Windows in the Storm",
            "At night the windows glow warm while the snow keeps falling.",
        ),
    ];
    /// Scene 3.
    pub const SCENE: usize = 3;
    /// 14 words, well inside the 18 a narration may have: a small model writes as long as the
    /// example's.
    pub const NARRATION: &str =
        "The bell rings and the children burst into the square to build a snowman.";
    pub const SUBJECT: &str = "children in red coats building a snowman";
    pub const PLACE: &str = "a snowy village square";
    pub const LIGHT: &str = "morning light";
    pub const DURATION: u32 = 6;

    pub fn outline() -> Vec<super::Planned> {
        OUTLINE
            .iter()
            .map(|(title, happens)| super::Planned {
                happens: happens.to_string(),
                title: title.to_string(),
            })
            .collect()
    }

    pub fn picture() -> super::Picture {
        super::Picture {
            subject: SUBJECT.into(),
            place: PLACE.into(),
            light: LIGHT.into(),
        }
    }
}

/// The conversation for one part: the system text, the worked example's question and answer,
/// then the real question.
fn with_example(
    example_user: String,
    example_answer: String,
    user: String,
) -> Vec<(String, String)> {
    vec![
        ("system".into(), SYSTEM.into()),
        ("user".into(), example_user),
        ("assistant".into(), example_answer),
        ("user".into(), user),
    ]
}

fn outline_turns(topic: &str, scenes: usize) -> Vec<(String, String)> {
    let answer = serde_json::json!({"title": example::TITLE, "outline": example::outline()});
    with_example(
        outline_prompt(example::TOPIC, example::OUTLINE.len()),
        compact_json(&answer),
        outline_prompt(topic, scenes),
    )
}

fn scene_turns(topic: &str, title: &str, outline: &[Planned], k: usize) -> Vec<(String, String)> {
    let picture = example::picture();
    let answer = serde_json::json!({
        "narration": example::NARRATION,
        "subject": picture.subject,
        "place": picture.place,
        "light": picture.light,
        "duration_seconds": example::DURATION,
    });
    with_example(
        scene_prompt(
            example::TOPIC,
            example::TITLE,
            &example::outline(),
            example::SCENE,
        ),
        compact_json(&answer),
        scene_prompt(topic, title, outline, k),
    )
}

/// JSON as the constraint makes the model write it (`compact`'s separators).
fn compact_json(value: &serde_json::Value) -> String {
    let text = serde_json::to_string(value).expect("JSON serializes");
    // serde writes no spaces; the constraint writes ", " and ": " between items.
    let mut out = String::with_capacity(text.len() + 32);
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ',' || c == ':' {
            out.push(' ');
        }
    }
    out
}

/// The plan of a storyboard: its title, and per scene its title and what happens in it.
#[derive(serde::Deserialize)]
struct Outline {
    title: String,
    outline: Vec<Planned>,
}

/// One scene of the plan.
#[derive(serde::Deserialize, serde::Serialize)]
struct Planned {
    title: String,
    happens: String,
}

/// A picture as three phrases, joined into the image prompt.
#[derive(serde::Deserialize)]
struct Picture {
    subject: String,
    place: String,
    light: String,
}

impl Picture {
    /// The phrases' schema, as properties of the object the model writes.
    fn properties() -> serde_json::Map<String, serde_json::Value> {
        let mut p = serde_json::Map::new();
        p.insert("subject".into(), phrase_schema(SUBJECT_WORDS));
        p.insert("place".into(), phrase_schema(PLACE_WORDS));
        p.insert("light".into(), phrase_schema(LIGHT_WORDS));
        p
    }

    /// "subject, place, light".
    fn prompt(&self) -> String {
        [&self.subject, &self.place, &self.light]
            .map(|p| without_dangling_words(p))
            .join(", ")
    }
}

/// Words a phrase cannot end on: a small model at a phrase's word limit stops in the middle of
/// one ("the northernmost tip of", "A Christmas Eve at the").
const DANGLING: &[&str] = &[
    "a", "an", "the", "of", "on", "in", "at", "to", "for", "with", "and", "or", "from", "by",
    "into", "onto", "over", "under", "his", "her", "their", "its", "my", "your", "our", "is",
    "are", "was", "were", "that", "which", "who", "as", "but", "than",
];

/// `phrase` (a title, a picture's subject, place or light) without the words it was cut off
/// after: "a small cottage on" is "a small cottage". A phrase of nothing else is kept whole.
fn without_dangling_words(phrase: &str) -> String {
    let words: Vec<&str> = phrase.split_whitespace().collect();
    let kept = words
        .iter()
        .rposition(|w| !DANGLING.contains(&w.to_lowercase().as_str()))
        .map_or(words.len(), |last| last + 1);
    words[..kept].join(" ")
}

/// One scene as the model writes it (the index and the title are the plan's).
#[derive(serde::Deserialize)]
struct Written {
    narration: String,
    #[serde(flatten)]
    picture: Picture,
    duration_seconds: u32,
}

/// Runs one constrained generation, with another seed when it does not finish in time (the
/// unfinished text goes to the log), and adds its counts to `total`.
#[allow(clippy::too_many_arguments)]
fn generate_part<T: serde::de::DeserializeOwned>(
    llm: &mut Llm,
    what: &str,
    turns: &[(String, String)],
    schema: &serde_json::Value,
    sampler: &Sampler,
    avoid: (&[u32], f32),
    total: &mut Generation,
    on_token: &mut dyn FnMut(usize),
) -> Result<T, ScenesError> {
    let turns: Vec<(&str, &str)> = turns
        .iter()
        .map(|(r, c)| (r.as_str(), c.as_str()))
        .collect();
    let prompt = llm.chat(&turns)?;
    let mut last = None;
    for retry in 0..FINISH_TRIES {
        let seeded = Sampler {
            seed: sampler.seed.wrapping_add(retry * 7919),
            ..sampler.clone()
        };
        let before = total.tokens;
        // `BATON_SCENES_WRAP_UP=0` turns the wrap-up and the word limits' ends off, to measure
        // what they do.
        let wrap_up = std::env::var("BATON_SCENES_WRAP_UP").as_deref() != Ok("0");
        let steering = Steering {
            avoid: avoid.0,
            penalty: avoid.1,
            wrap_up: wrap_up.then_some(WRAP_UP),
            end_at_word_limit: wrap_up,
        };
        match llm.generate_json_steered(&prompt, schema.clone(), &seeded, &steering, &mut |n| {
            on_token(before + n)
        }) {
            Ok(g) => {
                total.prompt_tokens += g.prompt_tokens;
                total.tokens += g.tokens;
                total.prompt_time += g.prompt_time;
                total.decode_time += g.decode_time;
                return serde_json::from_str(&g.text).map_err(|e| {
                    StoryboardError::Invalid(format!("the model's {what} is not usable: {e}"))
                        .into()
                });
            }
            Err(LlmError::Unfinished { tokens, partial }) => {
                tracing::warn!(
                    "the {what} was not finished after {tokens} tokens (seed {}); trying another seed. What it wrote: {partial}",
                    seeded.seed
                );
                total.tokens += tokens;
                last = Some(LlmError::Unfinished { tokens, partial });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.expect("at least one try").into())
}

/// A narration is brought to its sentence's end from its 11th word on (its limit is 18), and
/// then closed, so a small model ends where it reads well instead of gluing the full stop the
/// limit forces onto whatever word comes. Closing has to be pushed hard: SmolLM2 starts another
/// sentence after a full stop even with the closing quote 55 times likelier than it thought.
const WRAP_UP: WrapUp = WrapUp {
    field: "narration",
    from_words: 11,
    per_word: 0.6,
    close: 10.0,
};

/// How much less likely a scene's words make the same words in the scenes after it (logits
/// divided by this, then by more at each rewrite): enough that a small model finds other
/// words for a scene it would otherwise copy, not so much that it writes nonsense to escape.
const AVOID_PENALTY: f32 = 1.4;

/// The picture for a scene whose image prompt only repeated its narration: asked on its own,
/// with the narration's words made less likely, so it names what the picture shows; after
/// two tries that still copy, the scene's title and the topic.
fn describe_picture(
    llm: &mut Llm,
    topic: &str,
    scene: &Scene,
    topic_words: &[String],
    sampler: &Sampler,
    total: &mut Generation,
    on_token: &mut dyn FnMut(usize),
) -> Result<String, ScenesError> {
    let properties = Picture::properties();
    let schema = compact(serde_json::json!({
        "type": "object",
        "required": properties.keys().collect::<Vec<_>>(),
        "properties": properties,
        "additionalProperties": false
    }));
    let ask = |narration: &str| {
        format!(
            "A scene of a narrated video about {topic}. Its narration: \"{narration}\"\n\
             Describe the picture shown during it for an image generator, as three short \
             phrases in words of your own, not the narration's: its subject (who or what, \
             doing what), the place, and the light."
        )
    };
    let example = example::picture();
    let turns = vec![
        ("system".to_string(), SYSTEM.to_string()),
        ("user".to_string(), ask(example::NARRATION)),
        (
            "assistant".to_string(),
            compact_json(&serde_json::json!({
                "subject": example.subject, "place": example.place, "light": example.light
            })),
        ),
        ("user".to_string(), ask(&scene.narration)),
    ];
    let avoid = llm.word_tokens(&scene.narration, topic_words);
    for attempt in 0..2u64 {
        let seeded = Sampler {
            seed: sampler
                .seed
                .wrapping_add(7 * scene.index as u64 + 5000 + attempt),
            ..sampler.clone()
        };
        let picture: Picture = generate_part(
            llm,
            &format!("picture of scene {}", scene.index),
            &turns,
            &schema,
            &seeded,
            (&avoid, 2.0 + attempt as f32),
            total,
            on_token,
        )?;
        let candidate = Scene {
            image_prompt: picture.prompt(),
            ..scene.clone()
        };
        if !crate::quality::prompt_copies_narration(&candidate) {
            return Ok(candidate.image_prompt);
        }
    }
    tracing::info!(
        "scene {}'s image prompt kept copying its narration; using its title and the topic",
        scene.index
    );
    Ok(format!(
        "{}, {topic}",
        scene.title.trim_end_matches(['.', ',', '!', '?'])
    ))
}

/// How many of the plan's scene titles an earlier scene of the plan, or the worked example,
/// already has (letter case aside).
fn repeated_titles(plan: &[Planned]) -> usize {
    let mut seen: Vec<String> = example::OUTLINE
        .iter()
        .map(|(t, _)| t.to_lowercase())
        .collect();
    let mut repeated = 0;
    for p in plan {
        let t = p
            .title
            .trim()
            .trim_end_matches(['.', ',', '!', '?', ';', ':'])
            .to_lowercase();
        if seen.contains(&t) {
            repeated += 1;
        } else {
            seen.push(t);
        }
    }
    repeated
}

/// Writes a storyboard of `scenes` scenes about `topic` the way small models do it well: a
/// title and an outline first (per scene, its title and what happens; written again with
/// another seed while scene titles repeat), then each scene on its own with the topic and the
/// outline in its prompt. A scene that repeats an earlier one (word trigrams) or whose image
/// prompt copies its narration is written again with another seed; the least repetitive of its
/// tries is kept. A picture is asked for as three phrases (subject, place, light), which a
/// small model writes as a picture rather than as another sentence. Titles and narrations are
/// words only, by construction (no markup, paths or brackets), and the repetition penalty
/// applies to words, never to the JSON.
pub fn generate_storyboard(
    llm: &mut Llm,
    topic: &str,
    scenes: usize,
    sampler: &Sampler,
    on_token: &mut dyn FnMut(usize),
) -> Result<(Storyboard, Generation), ScenesError> {
    // From an empty cache, so the same seed writes the same storyboard whatever ran before.
    llm.forget()?;
    let mut total = Generation {
        text: String::new(),
        prompt_tokens: 0,
        tokens: 0,
        prompt_time: std::time::Duration::ZERO,
        decode_time: std::time::Duration::ZERO,
    };
    let outline_schema = compact(serde_json::json!({
        "type": "object",
        "properties": {
            "title": phrase_schema(TITLE_WORDS),
            "outline": {"type": "array", "minItems": scenes, "maxItems": scenes, "items": {
                "type": "object",
                "properties": {
                    // A title is a phrase: with punctuation a small model writes the start of
                    // a sentence ("Males are large and black,").
                    "title": phrase_schema(TITLE_WORDS),
                    "happens": words_schema(OUTLINE_WORDS)
                },
                "required": ["title", "happens"],
                "additionalProperties": false
            }}
        },
        "required": ["title", "outline"],
        "additionalProperties": false
    }));
    let mut plan: Option<(usize, Outline)> = None;
    for attempt in 0..SCENE_TRIES {
        let seeded = Sampler {
            seed: sampler.seed.wrapping_add(attempt * 31),
            ..sampler.clone()
        };
        let mut outline: Outline = generate_part(
            llm,
            "outline",
            &outline_turns(topic, scenes),
            &outline_schema,
            &seeded,
            (&[], 1.0),
            &mut total,
            on_token,
        )?;
        outline.title = without_dangling_words(&outline.title);
        for p in &mut outline.outline {
            p.title = without_dangling_words(&p.title);
        }
        let repeated = repeated_titles(&outline.outline);
        if plan.as_ref().is_none_or(|(r, _)| repeated < *r) {
            plan = Some((repeated, outline));
        }
        if repeated == 0 {
            break;
        }
        tracing::info!("{repeated} of the outline's scene titles repeat; planning again");
    }
    let plan = plan.expect("at least one try").1;
    let topic_words = crate::quality::content_words(topic);
    // In the order the model writes them, every one required.
    let mut properties = serde_json::Map::new();
    properties.insert("narration".into(), narration_schema(topic, &topic_words));
    properties.extend(Picture::properties());
    // Whole seconds: a number with decimals lets a small model write digits forever.
    properties.insert(
        "duration_seconds".into(),
        serde_json::json!({"type": "integer", "minimum": 4, "maximum": 8}),
    );
    let scene_schema = compact(serde_json::json!({
        "type": "object",
        "required": properties.keys().collect::<Vec<_>>(),
        "properties": properties,
        "additionalProperties": false
    }));
    let mut written: Vec<Scene> = Vec::with_capacity(scenes);
    for k in 1..=scenes {
        let turns = scene_turns(topic, &plan.title, &plan.outline, k);
        // The words earlier scenes (and the worked example) used, but the topic's: this scene
        // should find its own.
        // The example's subject and place too: SmolLM2 put "a snowy village" in half its
        // pictures.
        let said: String = written
            .iter()
            .map(|s| s.narration.as_str())
            .chain([example::NARRATION, example::SUBJECT, example::PLACE])
            .collect::<Vec<_>>()
            .join(" ");
        let avoid = llm.word_tokens(&said, &topic_words);
        let mut best: Option<(f64, Scene)> = None;
        for attempt in 0..SCENE_TRIES {
            let seeded = Sampler {
                seed: sampler.seed.wrapping_add(1000 * k as u64 + attempt),
                ..sampler.clone()
            };
            let w: Written = generate_part(
                llm,
                &format!("scene {k}"),
                &turns,
                &scene_schema,
                &seeded,
                // Harder at each try: the last one found the earlier scenes' words again.
                (&avoid, AVOID_PENALTY + 0.4 * attempt as f32),
                &mut total,
                on_token,
            )?;
            let scene = Scene {
                index: k as u32,
                title: plan.outline[k - 1].title.clone(),
                narration: w.narration.trim().to_string(),
                image_prompt: w.picture.prompt(),
                duration_seconds: f64::from(w.duration_seconds),
            };
            let score = repeat_score(&scene, &written);
            if best.as_ref().is_none_or(|(b, _)| score < *b) {
                best = Some((score, scene));
            }
            if score < crate::quality::MAX_OVERLAP {
                break;
            }
            tracing::info!(
                "scene {k} repeats an earlier one ({:.0}% of its word trigrams); writing it again",
                score * 100.0
            );
        }
        let mut scene = best.expect("at least one try").1;
        if crate::quality::prompt_copies_narration(&scene) {
            scene.image_prompt = describe_picture(
                llm,
                topic,
                &scene,
                &topic_words,
                sampler,
                &mut total,
                on_token,
            )?;
        }
        written.push(scene);
    }
    let board = Storyboard {
        topic: topic.trim().to_string(),
        title: plan.title.clone(),
        scenes: written,
    };
    total.text = serde_json::to_string(&board).expect("a storyboard serializes");
    Ok((board, total))
}

/// How much `scene` repeats the scenes `written` before it or the worked example: the largest
/// share of narration word trigrams it has with one of them, or 1.0 when its image prompt copies
/// its narration or the example's. (Titles are the outline's: [`repeated_titles`].)
fn repeat_score(scene: &Scene, written: &[Scene]) -> f64 {
    let overlap = written
        .iter()
        .map(|s| s.narration.as_str())
        .chain([example::NARRATION])
        .map(|earlier| crate::quality::trigram_overlap(earlier, &scene.narration))
        .fold(0.0, f64::max);
    // A copied image prompt counts as a repeat: it is what draws the picture.
    let copied_example =
        crate::quality::trigram_overlap(&example::picture().prompt(), &scene.image_prompt)
            >= crate::quality::MAX_OVERLAP;
    if copied_example || crate::quality::prompt_copies_narration(scene) {
        overlap.max(1.0)
    } else {
        overlap
    }
}

/// Generates, validates and writes a storyboard for `req.topic`.
pub fn write_scenes(
    req: ScenesRequest,
    on_token: &mut dyn FnMut(usize),
) -> Result<ScenesOutcome, ScenesError> {
    let slug = slug(req.topic)?;
    if req.scenes == 0 || req.scenes > crate::storyboard::MAX_SCENES {
        return Err(ScenesError::SceneCount(req.scenes));
    }
    if req.style.chars().count() > MAX_STYLE || crate::quality::has_markup(req.style) {
        return Err(ScenesError::Style(req.style.to_string()));
    }
    let (backend, device) = req.compute.open()?;
    crate::llm::warm_up(&device)?;
    backend.trim()?;
    // 64 MiB of slack: allocator arenas on the host, and on a GPU a kernel module the warm-up
    // did not touch, stay with the process after the model is gone.
    let scope = MemoryScope::new(backend.clone(), 0, "scenes model")?.with_tolerance(64 << 20);
    let started = Instant::now();
    let mut llm = Llm::load(req.model, &device, req.tokenizer)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let after_load = baton_memory::log_snapshot(backend.as_ref(), "after LLM loading")?
        .first()
        .map(|d| d.summary())
        .unwrap_or_default();
    let (mut storyboard, generation) =
        generate_storyboard(&mut llm, req.topic, req.scenes, &req.sampler, on_token)?;
    let after_generation = baton_memory::log_snapshot(backend.as_ref(), "after scene generation")?
        .first()
        .map(|d| d.summary())
        .unwrap_or_default();
    let device_label = format!("{} ({})", backend.kind(), llm.arch);
    drop(llm);
    let reclaim = scope.finish()?;

    storyboard.topic = req.topic.trim().to_string();
    let style = req.style.trim();
    if !style.is_empty() {
        for s in &mut storyboard.scenes {
            s.image_prompt = format!("{}, {style}", s.image_prompt.trim_end_matches(['.', ',']));
        }
    }
    storyboard.validate(Some(req.scenes))?;

    let run_dir = match req.destination {
        Destination::RunDir(dir) => dir,
        Destination::NewRun(root) => {
            let dir = root.join(run_folder_name(req.topic, std::time::SystemTime::now())?);
            std::fs::create_dir_all(&dir).map_err(|source| ScenesError::Create {
                path: dir.clone(),
                source,
            })?;
            dir
        }
    };
    let scripts = run_dir.join("1_scripts");
    std::fs::create_dir_all(&scripts).map_err(|source| ScenesError::Create {
        path: scripts.clone(),
        source,
    })?;
    let file = scripts.join(format!("{slug}_scenes.json"));
    let body = serde_json::to_vec_pretty(&storyboard).expect("a storyboard serializes");
    write_atomic(&file, &body)?;
    Ok(ScenesOutcome {
        file,
        run_dir,
        storyboard,
        generation,
        load_seconds,
        after_load,
        after_generation,
        reclaim,
        device: device_label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scene_repeats_by_its_narration_or_its_prompt() {
        let scene = |title: &str, narration: &str, prompt: &str| Scene {
            index: 1,
            title: title.into(),
            narration: narration.into(),
            image_prompt: prompt.into(),
            duration_seconds: 5.0,
        };
        let first = scene(
            "Neon Rain",
            "Rain falls on the neon streets of Tokyo while the trains hum overhead.",
            "a wet street at night, neon signs, reflections, cinematic light",
        );
        let fresh = scene(
            "The Last Train",
            "A tired courier waits for the last train home, counting the stations.",
            "a lone courier waiting, an empty platform, fluorescent light",
        );
        assert!(repeat_score(&fresh, std::slice::from_ref(&first)) < crate::quality::MAX_OVERLAP);
        let retold = scene("Another Title", &first.narration, &fresh.image_prompt);
        assert!(repeat_score(&retold, std::slice::from_ref(&first)) >= crate::quality::MAX_OVERLAP);
        let example_picture = scene("A", &fresh.narration, &example::picture().prompt());
        assert_eq!(repeat_score(&example_picture, &[]), 1.0);
        let copied = scene("A", &fresh.narration, "waits for the last train home");
        assert_eq!(repeat_score(&copied, &[]), 1.0);
    }

    #[test]
    fn phrases_lose_the_words_they_were_cut_off_after() {
        assert_eq!(
            without_dangling_words("a small cottage on"),
            "a small cottage"
        );
        assert_eq!(
            without_dangling_words("A Christmas Eve at the"),
            "A Christmas Eve"
        );
        assert_eq!(
            without_dangling_words("The Queen Bee in A"),
            "The Queen Bee"
        );
        assert_eq!(without_dangling_words(" morning  light "), "morning light");
        // Nothing but such words: kept, not emptied.
        assert_eq!(without_dangling_words("in the"), "in the");
        let picture = Picture {
            subject: "a lighthouse keeper at".into(),
            place: "the northernmost tip of".into(),
            light: "morning light".into(),
        };
        assert_eq!(
            picture.prompt(),
            "a lighthouse keeper, the northernmost tip, morning light"
        );
    }

    #[test]
    fn a_plan_repeats_by_its_titles_letter_case_aside() {
        let plan = |titles: &[&str]| -> Vec<Planned> {
            titles
                .iter()
                .map(|t| Planned {
                    happens: "Something happens here at last.".into(),
                    title: t.to_string(),
                })
                .collect()
        };
        assert_eq!(repeated_titles(&plan(&["Neon Rain", "The Last Train"])), 0);
        assert_eq!(
            repeated_titles(&plan(&["Neon Rain", "The Last Train", "neon rain."])),
            1
        );
        // The worked example's titles are taken too.
        assert_eq!(repeated_titles(&plan(&["A White Morning"])), 1);
    }

    #[test]
    fn the_example_answers_are_written_as_the_constraint_writes_json() {
        let plan = example::outline();
        let turns = scene_turns("Cyberpunk Tokyo", "Neon", &plan, 1);
        let answer = &turns[2].1;
        assert!(answer.starts_with("{\"narration\": \"The bell"), "{answer}");
        assert!(answer.contains("\", \"subject\": \"children"), "{answer}");
        let parsed: serde_json::Value = serde_json::from_str(answer).unwrap();
        assert_eq!(parsed["duration_seconds"], 6);
        // The question says what happens in the scene (its title is the plan's alone: a
        // small model begins the narration with it when it is asked for).
        assert!(turns[3].1.contains("Write scene 1: An old shepherd"));
        assert!(!turns[3].1.contains("Clouds Over"));
        // The example's own fields obey the schemas the model is held to.
        let narration = regex_lite(&words_schema(NARRATION_WORDS));
        assert!(narration(example::NARRATION));
        let picture = Picture::properties();
        for (field, text) in [
            ("subject", example::SUBJECT),
            ("place", example::PLACE),
            ("light", example::LIGHT),
        ] {
            assert!(regex_lite(&picture[field])(text), "{field}: {text}");
        }
        for (title, happens) in example::OUTLINE {
            assert!(regex_lite(&words_schema(OUTLINE_WORDS))(happens));
            assert!(regex_lite(&phrase_schema(TITLE_WORDS))(title));
        }
        let outline = &outline_turns("Cyberpunk Tokyo", 3)[2].1;
        assert!(
            outline.contains("[{\"title\": \"Clouds Over the Peaks\", \"happens\": \"An old"),
            "{outline}"
        );
        // A phrase is no sentence: no full stop, no comma.
        assert!(!regex_lite(&picture["subject"])("she is standing. But"));
        assert!(!regex_lite(&picture["place"])("the street, the house"));
        assert!(!narration(
            "his...his and then some more words to pass the floor"
        ));
        assert!(!narration("The Last Hours of A','Thelax'','A"));
    }

    /// A matcher for a words schema's pattern, by the regex crate llguidance also builds on.
    fn regex_lite(schema: &serde_json::Value) -> impl Fn(&str) -> bool + use<> {
        let re = regex::RegexBuilder::new(schema["pattern"].as_str().unwrap())
            .size_limit(1 << 28)
            .build()
            .unwrap();
        move |s| re.is_match(s)
    }
}
