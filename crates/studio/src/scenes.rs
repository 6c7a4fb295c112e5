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
    /// Drafts of the outline and of each scene; the one the model itself finds most fluent
    /// ([`Generation::fluency`]) is kept.
    pub drafts: usize,
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
/// Tries a scene gets when every one of its first [`SCENE_TRIES`] repeated an earlier scene:
/// on an H200 three tries at the last scene of "The deep sea at midnight" all opened with the
/// whole topic, as its first scene had, and the least repetitive kept shared 50% of its
/// trigrams with it.
const LAST_SCENE_TRY: u64 = 6;
/// How far apart the outline drafts' seeds are (the first is the storyboard's own), away from
/// the scenes' (1000 per scene) and the retitles' (100 per scene, from 7000).
const OUTLINE_DRAFT_SEEDS: u64 = 97;
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

/// Words a topic has that say how or what kind rather than what it is about: held to name
/// one of the topic's words, SmolLM2 chose these and bent sentences around them ("The eruption
/// begins, form in a volcano", "an old man deeps himself with his lamp"), and pictures too
/// ("the king's life" for "The life of a monarch butterfly"). Not "day" or "night": "A
/// lighthouse keeper's last night" is about that night (the storyboard written with them
/// general read "Lighthouse keeper and lighthouse keeper").
const GENERAL_WORDS: &[&str] = &[
    "form", "forms", "make", "makes", "made", "become", "becomes", "became", "learn", "learning",
    "deep", "small", "big", "great", "little", "rainy", "last", "new", "old", "long", "short",
    "high", "low", "good", "best", "life", "history", "story",
];

/// The topic's words a narration or a line of the outline may name it by: its content words
/// but the [`GENERAL_WORDS`] ("volcanoes" for "How volcanoes form"), or all of them when
/// nothing else is left.
fn naming_words(topic: &str) -> Vec<String> {
    let all = crate::quality::content_words(topic);
    let named: Vec<String> = all
        .iter()
        .filter(|w| !GENERAL_WORDS.contains(&w.as_str()))
        .cloned()
        .collect();
    if named.is_empty() { all } else { named }
}

/// The topic's names: its runs of words written capitalised after its first word ("Tokyo",
/// "New York", "Roman"; not "Cyberpunk"), each word in lower case without a possessive's "'s".
fn topic_names(topic: &str) -> Vec<Vec<String>> {
    let mut names: Vec<Vec<String>> = Vec::new();
    let mut in_name = false;
    for written in topic.split_whitespace().skip(1) {
        let word = written.trim_matches(|c: char| !c.is_alphanumeric());
        if !word.chars().next().is_some_and(char::is_uppercase) {
            in_name = false;
            continue;
        }
        let word = bare_stem(word);
        match names.last_mut() {
            Some(name) if in_name => name.push(word),
            _ => names.push(vec![word]),
        }
        // A mark ends the name ("Harlem, Tokyo" are two).
        in_name = !written.ends_with(|c: char| c.is_ascii_punctuation() && c != '\'');
    }
    names
}

/// `text` with the topic's names ([`topic_names`]) capitalised where it wrote them in lower
/// case: the constraint holds only the word that names the topic to a name's capital, and
/// SmolLM2 wrote "the neon of cyberpunk tokyo". A name of several words is capitalised only
/// where all of them come together ("new york", not the "new" of "a new day").
fn with_names_capitalized(text: &str, topic: &str) -> String {
    let names = topic_names(topic);
    let mut words: Vec<String> = text.split(' ').map(str::to_string).collect();
    for i in 0..words.len() {
        for name in &names {
            let Some(run) = words.get(i..i + name.len()) else {
                continue;
            };
            if run.iter().zip(name).all(|(w, n)| bare_stem(w) == *n) {
                for w in &mut words[i..i + name.len()] {
                    let start = w.find(char::is_alphanumeric).unwrap_or(0);
                    let rest = w.split_off(start);
                    w.push_str(&capitalized(&rest));
                }
            }
        }
    }
    words.join(" ")
}

/// A pattern for one of `topic_words` (each as [`number_forms`](crate::quality::number_forms)
/// gives it, its first letter in either case but a name's, which is capitalised only), then
/// its plural's endings ([`plural_endings`](crate::quality::plural_endings); none for a name or
/// a modifier) or a possessive's; none when the topic has no word worth naming.
fn topic_word_pattern(topic: &str, topic_words: &[String]) -> Option<String> {
    // A name (a word capitalised inside the topic: Tokyo, Paris) is written capitalised only.
    let names = topic_names(topic);
    let is_name = |w: &str| names.iter().flatten().any(|n| n == w);
    let modifiers = topic_modifiers(topic);
    // Each form, with the plural's endings it may take ([`crate::quality::plural_endings`]).
    let mut forms = Vec::new();
    for word in topic_words
        .iter()
        .map(|w| w.trim_end_matches("'s"))
        .filter(|w| !w.is_empty() && w.chars().all(char::is_alphanumeric))
    {
        let takes_plural = !is_name(word) && !modifiers.iter().any(|m| m == word);
        for form in crate::quality::number_forms(word) {
            let mut c = form.chars();
            let first = c.next().expect("content words are not empty");
            let rest: String = c.collect();
            let pattern = if is_name(&form) {
                format!("{}{rest}", first.to_uppercase())
            } else {
                format!("[{}{}]{rest}", first.to_lowercase(), first.to_uppercase())
            };
            let endings = crate::quality::plural_endings(&form);
            forms.push(if takes_plural && !endings.is_empty() {
                format!("{pattern}(?:{endings})?")
            } else {
                pattern
            });
        }
    }
    (!forms.is_empty()).then(|| format!("(?:{})(?:'s)?", forms.join("|")))
}

/// The topic's words that modify the word after them ("Cyberpunk Tokyo", "monarch butterfly",
/// "moon landing", "volcanoes form"), in lower case: a narration may name the topic by them as
/// they are, but not with a plural's ending, which made SmolLM2's "she leans in and cyberpunks
/// one hand". A possessive ("keeper's last night") or a closing mark ends the phrase.
fn topic_modifiers(topic: &str) -> Vec<String> {
    let content = crate::quality::content_words(topic);
    let written: Vec<&str> = topic.split_whitespace().collect();
    written
        .windows(2)
        .filter(|pair| {
            !pair[0].ends_with(|c: char| !c.is_alphanumeric())
                && !pair[0].to_lowercase().ends_with("'s")
                && content.contains(&bare_word(pair[0]))
                && content.contains(&bare_word(pair[1]))
        })
        .map(|pair| bare_word(pair[0]))
        .collect()
}

/// How many words of a picture's subject may come before the topic's word: let it come last,
/// SmolLM2 wrote a subject of its own and then had the word tacked on ("the sky in the
/// morning colors moon", "two people looking at a person's moon").
const PHRASE_BEFORE: usize = 2;

/// A phrase's schema, as [`phrase_schema`], one of whose first [`PHRASE_BEFORE`] + 1 words is
/// a word of the topic, as a narration's is ([`naming_schema`]); any phrase when the topic has
/// none worth naming. A picture's subject is held to it: left free, SmolLM2 asked for "the old
/// man kissing, a yoyo beach" in "Cyberpunk Tokyo" and "the sky, a mountain" in "How volcanoes
/// form", pictures that belong to no topic at all (44 of 120 on the H100).
fn naming_phrase_schema(
    topic: &str,
    topic_words: &[String],
    words: std::ops::RangeInclusive<usize>,
) -> serde_json::Value {
    let Some(named) = topic_word_pattern(topic, topic_words) else {
        return phrase_schema(words);
    };
    let (min, max) = (*words.start(), *words.end());
    let branches: Vec<String> = (0..=PHRASE_BEFORE.min(max - 1))
        .map(|before| {
            let after_min = min.saturating_sub(before + 1);
            let after_max = max - before - 1;
            format!(
                "(?:{PHRASE_WORD} ){{{before}}}{named}(?: {PHRASE_WORD}){{{after_min},{after_max}}}"
            )
        })
        .collect();
    serde_json::json!({
        "type": "string",
        "pattern": format!("^(?:{})$", branches.join("|")),
    })
}

/// A schema for words, as [`words_schema`], one of which is a word of the topic (or an obvious
/// form of it: `bees`, `keeper's`, `Tokyo's`), at most `shape.before` words in, and whose last
/// word ends a sentence; any words when the topic has none worth naming. A narration is held to
/// it, so a small model cannot drift off the topic, and so is a line of the outline, which a
/// small model otherwise lets wander ("The life of a monarch butterfly" became a king named Auk).
fn naming_schema(topic: &str, topic_words: &[String], shape: &Naming) -> serde_json::Value {
    let Some(named) = topic_word_pattern(topic, topic_words) else {
        return words_schema(shape.words.clone());
    };
    // The topic's word, a plural or a possessive, then a closing mark.
    let topic = format!("{named}[.,;:!?]?");
    // One branch per count of words before the topic's, so the text may have its full count
    // of words wherever the topic's word comes (a later one does not cut it short, which the
    // wrap-up, counting to the field's limit, could not foresee: "…It is in fact the.").
    let branches: Vec<String> = (0..=shape.before)
        .map(|before| {
            let after_max = shape.words.end() - before - 2;
            format!(
                "(?:{WORD} ){{{before}}}{topic}(?: {WORD}){{{},{after_max}}}",
                shape.after_min
            )
        })
        .collect();
    serde_json::json!({
        "type": "string",
        // The last word ends the sentence: a narration is read aloud, and one cut off at a
        // comma by the word limit sounds broken.
        "pattern": format!("^(?:{}) {LAST_WORD}$", branches.join("|")),
    })
}

/// Where a [`naming_schema`] puts the topic's word: at most `before` words come before it, and
/// at least `after_min` words (then the sentence's last word) after it; the text has at most
/// `words.end()` words, and `words` is what it has when the topic has no word to name.
struct Naming {
    words: std::ops::RangeInclusive<usize>,
    before: usize,
    after_min: usize,
}

/// A narration: one or two sentences, the topic's word at most six words in.
/// A short sentence may end it ("Tokyo never sleeps."): made to go on after the topic's word
/// came late, a small model wrote fragments ("…and Tokyo has its own. Golden. Stars. You know.").
const NARRATION: Naming = Naming {
    words: 10..=18,
    before: 6,
    after_min: 2,
};
/// A line of the outline: one sentence.
const OUTLINE_LINE: Naming = Naming {
    words: 6..=20,
    before: 6,
    after_min: 4,
};
const _: () = {
    // Every branch of a naming schema has room for its words after the topic's.
    assert!(NARRATION.before + NARRATION.after_min + 2 <= *NARRATION.words.end());
    assert!(OUTLINE_LINE.before + OUTLINE_LINE.after_min + 2 <= *OUTLINE_LINE.words.end());
};

/// A word's letters: a letter, then letters or digits, with at most one part of one or two
/// letters after an apostrophe (`keeper's`, `they're`, `we'll`) or a short part after a hyphen
/// (`x-ray`); or an elided word and the word it leans on (`o'clock`, `l'eau`, `qu'il`). An
/// apostrophe part of any letters let SmolLM2 glue two words together ("the city'sbegin
/// Tokyo", "the earths'bound landing"). Held to English endings only ('s 't 'd 'm 're 've 'll),
/// it glued them at hyphens instead ("the end-ofkyo Cyberpunk Tokyo", "sleeps-oneday"), and its
/// image prompts had more words in no dictionary (11% against 8%, 9 topics on the CPU).
macro_rules! word_letters {
    () => {
        "(?:\\p{L}[\\p{L}\\p{N}]{0,11}(?:'\\p{L}{1,2}|-\\p{L}{1,6})?|\\p{L}{1,2}'\\p{L}{1,10})"
    };
}

/// One word: at most `MAX_WORD` characters.
/// It starts with a letter: a small model left free to write digits writes lists of them
/// ("5, 1, 5, 1, 2, 3"), and numbers read better spelled out.
const WORD: &str = concat!(word_letters!(), "[.,;:!?]?");
const MAX_WORD: usize = 12 + 7 + 1;
/// A phrase's word: as [`WORD`], without the closing mark.
const PHRASE_WORD: &str = word_letters!();
const MAX_PHRASE_WORD: usize = MAX_WORD - 1;
/// A sentence's last word: as [`WORD`], ending with a full stop, `!` or `?`.
const LAST_WORD: &str = concat!(word_letters!(), "[.!?]");

/// The longest text a words schema of `words` words admits.
const fn longest(words: usize) -> usize {
    words * (MAX_WORD + 1) - 1
}

// The longest fields the model may write fit the storyboard, the style included.
const _: () = {
    use crate::storyboard::limits;
    assert!(longest(*TITLE_WORDS.end()) <= limits::TITLE);
    assert!(longest(*TITLE_WORDS.end()) <= limits::SCENE_TITLE);
    assert!(longest(*NARRATION.words.end()) <= limits::NARRATION);
    // A picture's three phrases, joined by ", " (one character more than a word's space),
    // then the style.
    let words = *SUBJECT_WORDS.end() + *PLACE_WORDS.end();
    let mut light = 0;
    let mut i = 0;
    while i < LIGHTS.len() {
        if LIGHTS[i].len() > light {
            light = LIGHTS[i].len();
        }
        i += 1;
    }
    assert!(
        words * (MAX_PHRASE_WORD + 1) - 1 + ", ".len() + light + ", ".len() + MAX_STYLE
            <= limits::IMAGE_PROMPT
    );
};

/// How many words each field has: titles short, a narration one or two sentences, an outline
/// line one sentence.
const TITLE_WORDS: std::ops::RangeInclusive<usize> = 2..=5;
/// A picture, as three phrases: who or what (doing what), where, and the light.
const SUBJECT_WORDS: std::ops::RangeInclusive<usize> = 2..=7;
const PLACE_WORDS: std::ops::RangeInclusive<usize> = 2..=4;
/// The lights a picture is shown in, one chosen per scene. Left to write its own, SmolLM2-135M
/// wrote "morning light" for 53 of 120 pictures (the worked example's), and for others
/// "electricity", "his smile" or, told to avoid "morning", "morale". Two words can say little
/// more than these do, and each reads well to an image generator.
const LIGHTS: &[&str] = &[
    "dawn light",
    "bright daylight",
    "harsh noon sun",
    "overcast daylight",
    "golden hour",
    "sunset glow",
    "blue dusk",
    "moonlight",
    "starlight",
    "candlelight",
    "firelight",
    "lamplight",
    "neon glow",
    "stormy light",
    "misty light",
    "underwater light",
    "dappled sunlight",
    "dim interior light",
];
/// In how many of a storyboard's pictures one light may be.
const SAME_LIGHT: usize = 2;

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

/// `schema` with its words' letters and digits (`\p{L}`, `\p{N}`) those of `topic`'s alphabet:
/// for a topic in the Latin alphabet without letters beyond Latin-1 (English, French, German,
/// Spanish…), those letters and 0-9. Free to write any letter, SmolLM2 put Arabic, Persian and
/// fullwidth words in narrations about the printing press ("In Ｎﾒ, اسم بازرکتب, دولة من,
/// invention of the printing press."). A topic in another alphabet keeps every letter.
fn in_topic_letters(mut schema: serde_json::Value, topic: &str) -> serde_json::Value {
    let latin_1 = |c: char| c.is_ascii_alphabetic() || ('\u{c0}'..='\u{ff}').contains(&c);
    // (× and ÷, in Latin-1's range, are not alphabetic.)
    if !topic.chars().filter(|c| c.is_alphabetic()).all(latin_1) {
        return schema;
    }
    fn rewrite(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match v {
                        serde_json::Value::String(pattern) if key == "pattern" => {
                            *pattern = pattern
                                .replace(
                                    "\\p{L}",
                                    "[A-Za-z\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{ff}]",
                                )
                                .replace("\\p{N}", "[0-9]");
                        }
                        _ => rewrite(v),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    rewrite(&mut schema);
    schema
}

/// The compact constraint of an object that has exactly `properties`, every one required.
fn object_schema(properties: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    compact(serde_json::json!({
        "type": "object",
        "required": properties.keys().collect::<Vec<_>>(),
        "properties": properties,
        "additionalProperties": false
    }))
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
         subject (who or what, doing what), the place, and the light ({}); and a duration \
         in seconds, from 4 to 8.",
        outline[k - 1].happens,
        light_choices()
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
            "An old shepherd watches snow clouds gather over the mountain at dusk.",
        ),
        (
            "A White Morning",
            "At dawn the village wakes under a thick white blanket.",
        ),
        (
            "A Snowman in the Square",
            "Village children race out of school to build a snowman in the square.",
        ),
        (
            "Windows in the Storm",
            "At night the village windows glow warm while the snow keeps falling.",
        ),
    ];
    /// Scene 3.
    pub const SCENE: usize = 3;
    /// 14 words, well inside the 18 a narration may have: a small model writes as long as the
    /// example's. Like every line of the plan, it names a word of its topic early, as the
    /// model's own must.
    pub const NARRATION: &str =
        "The school bell rings and the village children burst out to build a snowman.";
    /// Named by a word of its topic, as the model's own picture must be.
    pub const SUBJECT: &str = "village children building a snowman";
    pub const PLACE: &str = "a snowy village square";
    /// After school, in winter: low sun.
    pub const LIGHT: &str = "golden hour";
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

/// The lights a picture may have, as the question lists them.
fn light_choices() -> String {
    format!("one of: {}", LIGHTS.join(", "))
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

/// How many faults an outline draft titled with the topic's own words counts for that
/// ([`quality::borrows`](crate::quality::borrows)). Until session 44 such a draft was kept only
/// when every draft was one, however faulty the others: "A lighthouse keeper's last night"
/// chose an outline of seven faults ("Lightskeelen's last night", "stands by his lonesome" three
/// times) over "The Last Night" with one.
const BORROWED_TITLE_FAULTS: usize = 2;

/// The plan of a storyboard: its title, and per scene its title and what happens in it.
#[derive(serde::Deserialize)]
struct Outline {
    title: String,
    outline: Vec<Planned>,
}

impl Outline {
    /// Every word it writes, for [`Llm::coined_words`], its titles in lower case: every word of
    /// a title is capitalised, and a capitalised word is a name, which is never coined; so
    /// SmolLM2's titles kept their made-up words ("Lightskeelen's Last Night", "A Lone
    /// Starlitke"). A name in a title counts too (rarely: most are one or two pieces).
    fn words(&self) -> String {
        std::iter::once(self.title.to_lowercase())
            .chain(
                self.outline
                    .iter()
                    .flat_map(|p| [p.title.to_lowercase(), p.happens.clone()]),
            )
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Its lines that repeat an earlier line (half of their word trigrams, as scenes repeat
    /// each other), hold a filler clause ([`filler_clauses`](crate::quality::filler_clauses)),
    /// or are not in English ([`not_english`](crate::quality::not_english)) when the topic is
    /// written in ASCII (the questions are English; a topic in other letters is let have its
    /// own language). A scene is written from its line: SmolLM2 planned "This is a ghost, it's
    /// in Tokyo." for scenes 3 and 5, ", cyberpunk tokyo," wedged into three lines, and "A
    /// rainy day in Paris" in French, and the scenes written from them did the same.
    fn faults(&self, topic: &str) -> usize {
        use crate::quality::{MAX_OVERLAP, filler_clauses, not_english, trigram_overlap};
        let english = topic.is_ascii();
        self.outline
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                filler_clauses(&p.happens, topic) > 0
                    || (english && not_english(&p.happens))
                    || self.outline[..*i]
                        .iter()
                        .any(|e| trigram_overlap(&e.happens, &p.happens) >= MAX_OVERLAP)
            })
            .count()
    }
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
    /// The phrases' schema, as properties of the object the model writes: the subject names
    /// one of `topic_words` ([`naming_phrase_schema`]), and the light is one of `lights`.
    fn properties(
        topic: &str,
        topic_words: &[String],
        lights: &[&str],
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut p = serde_json::Map::new();
        p.insert(
            "subject".into(),
            naming_phrase_schema(topic, topic_words, SUBJECT_WORDS),
        );
        p.insert("place".into(), phrase_schema(PLACE_WORDS));
        p.insert("light".into(), serde_json::json!({"enum": lights}));
        p
    }

    /// "subject, place, light".
    fn prompt(&self) -> String {
        let phrases = [&self.subject, &self.place, &self.light].map(|p| without_dangling_words(p));
        without_doubled_words(&phrases.join(", "))
    }
}

/// Words a phrase cannot end on: a small model at a phrase's word limit stops in the middle of
/// one ("the northernmost tip of", "A Christmas Eve at the"), and a narration's sentence
/// neither ("…but it has a very.", "…where nothing can.", "…she can't decide whether.").
const DANGLING: &[&str] = &[
    "a", "an", "the", "of", "on", "in", "at", "to", "for", "with", "and", "or", "from", "by",
    "into", "onto", "over", "under", "his", "her", "their", "its", "my", "your", "our", "is",
    "are", "was", "were", "that", "which", "who", "as", "but", "than", "very", "just", "can",
    "could", "will", "would", "should", "must", "has", "have", "had", "whether", "if", "because",
    "until", "unless", "although",
    // English ends no clause on a contracted verb ("…her eyes, they're.").
    "it's", "they're", "we're", "you're", "he's", "she's", "i'm", "that's", "there's", "who's",
    "what's", "let's",
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

/// A word as the checks on words compare it: lowercase, without the marks around it
/// ("Keeper," is "keeper").
fn bare_word(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// [`bare_word`] without a possessive's "'s": the word a name or a doubled word is compared by
/// ("Tokyo's" and "tokyo" are one).
fn bare_stem(word: &str) -> String {
    bare_word(word).trim_end_matches("'s").to_string()
}

/// `text` without the first of two words in a row that are one content word, a possessive and
/// letter case aside: held to name its topic early, SmolLM2 said it twice ("The world has
/// changed, Tokyo's tokyo's after dark.", "Japan's Tokyo's Tokyo Metro"), in three drafts of
/// three. A word that ends in a mark ("Tokyo, Tokyo") is left, and a sentence's capital stays.
fn without_doubled_words(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut kept: Vec<String> = Vec::with_capacity(words.len());
    let mut capital = false;
    for (i, word) in words.iter().enumerate() {
        let doubled = words.get(i + 1).is_some_and(|next| {
            let own = bare_stem(word);
            crate::quality::is_content_word(&own)
                && own == bare_stem(next)
                && word.ends_with(|c: char| c.is_alphanumeric() || c == '\'')
        });
        if doubled {
            let opens = kept.last().is_none_or(|w| w.ends_with(['.', '!', '?']));
            capital |= opens && word.starts_with(char::is_uppercase);
            continue;
        }
        kept.push(if std::mem::take(&mut capital) {
            capitalized(word)
        } else {
            word.to_string()
        });
    }
    kept.join(" ")
}

/// The most words after a narration's last comma that [`mend_cut_ending`] drops: a sentence
/// the limit cut off was begun there ("…takes over the city, and he is said to be."); a
/// longer clause was the sentence itself, and is kept.
const CUT_CLAUSE: usize = 7;

/// `narration` with its last sentence mended where it was cut off: when the word limit closed
/// it (every one of its words used) or it ends on a word a sentence cannot end on ("…at the
/// edge of the island, and."), it ends at its last comma instead, if at most [`CUT_CLAUSE`]
/// words come after that comma; otherwise it loses its dangling words. It keeps at least
/// `NARRATION.before + 1` words, so the topic's word stays, and 3 in its last sentence; a
/// narration that cannot keep them is returned as it was.
fn mend_cut_ending(narration: &str) -> String {
    let words: Vec<&str> = narration.split_whitespace().collect();
    let Some(end) = words
        .last()
        .and_then(|w| w.chars().last())
        .filter(|c| matches!(c, '.' | '!' | '?'))
    else {
        return narration.to_string();
    };
    let dangles = |w: &str| DANGLING.contains(&bare_word(w).as_str());
    let last = words.len() - 1;
    let at_limit = words.len() >= *NARRATION.words.end();
    if !at_limit && !dangles(words[last]) {
        return narration.to_string();
    }
    let sentence = words[..last]
        .iter()
        .rposition(|w| w.ends_with(['.', '!', '?']))
        .map_or(0, |i| i + 1);
    let least = (NARRATION.before + 1).max(sentence + WRAP_UP.min_sentence);
    // Where the kept text ends (its last word's index): the last comma's word, if the clause
    // after it is short enough to have been the cut one, else the last word.
    let comma = words[sentence..last]
        .iter()
        .rposition(|w| w.ends_with([',', ';', ':']))
        .map(|i| sentence + i)
        .filter(|&c| last - c <= CUT_CLAUSE && c + 1 >= least);
    let mut keep = comma.unwrap_or(last);
    while keep >= least && dangles(words[keep]) {
        keep -= 1;
    }
    if keep == last || dangles(words[keep]) {
        return narration.to_string();
    }
    let mut kept = words[..=keep].join(" ");
    kept.truncate(kept.trim_end_matches(|c: char| !c.is_alphanumeric()).len());
    kept.push(end);
    kept
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
/// unfinished text goes to the log), and adds its counts to `total`. Returns what it wrote,
/// and how fluent the model found it ([`Generation::fluency`]).
#[allow(clippy::too_many_arguments)]
fn generate_part<T: serde::de::DeserializeOwned>(
    llm: &mut Llm,
    what: &str,
    turns: &[(String, String)],
    schema: &serde_json::Value,
    sampler: &Sampler,
    steering: Steering,
    total: &mut Generation,
    on_token: &mut dyn FnMut(usize),
) -> Result<(T, Option<f64>), ScenesError> {
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
            wrap_up: steering.wrap_up.clone().filter(|_| wrap_up),
            end_at_word_limit: steering.end_at_word_limit && wrap_up,
            ..steering.clone()
        };
        match llm.generate_json_steered(&prompt, schema.clone(), &seeded, &steering, &mut |n| {
            on_token(before + n)
        }) {
            Ok(g) => {
                total.prompt_tokens += g.prompt_tokens;
                total.tokens += g.tokens;
                total.prompt_time += g.prompt_time;
                total.decode_time += g.decode_time;
                total.chosen_logprob += g.chosen_logprob;
                total.choices += g.choices;
                return serde_json::from_str(&g.text)
                    .map(|part| (part, g.fluency()))
                    .map_err(|e| {
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
    min_sentence: 3,
    min_clause: 2,
    min_words: 8,
    max_words: *NARRATION.words.end(),
    room: 6,
    dangling: DANGLING,
};

/// How a scene (or a part of one) is steered: the `avoid` tokens' logits divided by `penalty`,
/// and its narration wrapped up ([`WRAP_UP`]).
fn narration_steering(avoid: &[u32], penalty: f32) -> Steering<'_> {
    Steering {
        avoid,
        penalty,
        wrap_up: Some(WRAP_UP),
        end_at_word_limit: true,
        ..Steering::default()
    }
}

/// A line of the outline is steered as a narration is: SmolLM2 left free wrote "A light falls
/// on everything. The. Tokyo. Tower. Over. A. Rock." and scenes are written from the lines.
const OUTLINE_WRAP_UP: WrapUp = WrapUp {
    field: "happens",
    min_words: *OUTLINE_LINE.words.start(),
    max_words: *OUTLINE_LINE.words.end(),
    from_words: 12,
    ..WRAP_UP
};

/// How much less likely a scene's words make the same words in the scenes after it (logits
/// divided by this, then by more at each rewrite): enough that a small model finds other
/// words for a scene it would otherwise copy, not so much that it writes nonsense to escape.
const AVOID_PENALTY: f32 = 1.4;

/// The picture for a scene whose image prompt only repeated its narration: asked on its own,
/// with the narration's words made less likely, so it names what the picture shows; after
/// two tries that still copy, the scene's title and the topic. Its light is one of `lights`
/// (those the storyboard has not used up), and is returned with the prompt (none for the title).
#[allow(clippy::too_many_arguments)]
fn describe_picture(
    llm: &mut Llm,
    topic: &str,
    scene: &Scene,
    topic_words: &[String],
    lights: &[&str],
    sampler: &Sampler,
    total: &mut Generation,
    on_token: &mut dyn FnMut(usize),
) -> Result<(String, Option<String>), ScenesError> {
    let schema = in_topic_letters(
        object_schema(Picture::properties(topic, &naming_words(topic), lights)),
        topic,
    );
    let ask = |narration: &str| {
        format!(
            "A scene of a narrated video about {topic}. Its narration: \"{narration}\"\n\
             Describe the picture shown during it for an image generator, as three short \
             phrases in words of your own, not the narration's: its subject (who or what, \
             doing what), the place, and the light ({}).",
            light_choices()
        )
    };
    let example = example::picture();
    let turns = with_example(
        ask(example::NARRATION),
        compact_json(&serde_json::json!({
            "subject": example.subject, "place": example.place, "light": example.light
        })),
        ask(&scene.narration),
    );
    let avoid = llm.word_tokens(&scene.narration, topic_words);
    let described = ask_until(
        llm,
        &format!("picture of scene {}", scene.index),
        (&turns, &schema),
        sampler,
        (7 * scene.index as u64 + 5000, 2),
        &avoid,
        total,
        on_token,
        |picture: Picture| {
            let candidate = Scene {
                image_prompt: picture.prompt(),
                ..scene.clone()
            };
            (!crate::quality::prompt_copies_narration(&candidate))
                .then_some((candidate.image_prompt, Some(picture.light)))
        },
    )?;
    if let Some(described) = described {
        return Ok(described);
    }
    tracing::info!(
        "scene {}'s image prompt kept copying its narration; using its title and the topic",
        scene.index
    );
    let prompt = format!(
        "{}, {topic}",
        scene.title.trim_end_matches(['.', ',', '!', '?'])
    );
    Ok((prompt, None))
}

/// A title as [`repeated_titles`] compares it: its words without letter case, marks, articles
/// or a plural's "s" (SmolLM2 titled scenes "A Woman" and "The Woman", and "The End of the
/// Dreams" under a video called "The End of the Dream").
fn title_key(title: &str) -> String {
    title
        .split_whitespace()
        .map(bare_word)
        .filter(|w| !matches!(w.as_str(), "" | "a" | "an" | "the"))
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem.to_string(),
            _ => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scenes (0-based) whose title the video's `title`, an earlier scene of the plan, or the
/// worked example already has ([`title_key`]: letter case, articles and plurals aside).
fn repeated_titles(title: &str, plan: &[Planned]) -> Vec<usize> {
    let mut seen: Vec<String> = example::OUTLINE
        .iter()
        .map(|(t, _)| title_key(t))
        .chain([title_key(title)])
        .collect();
    let mut repeated = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let t = title_key(&p.title);
        if seen.contains(&t) {
            repeated.push(i);
        } else {
            seen.push(t);
        }
    }
    repeated
}

/// Whether `title`, given to scene `i` (0-based) of `plan`, repeats the video's title, another
/// scene's or the worked example's ([`title_key`]).
fn is_repeat(title: &str, plan: &Outline, i: usize) -> bool {
    let key = title_key(title);
    plan.outline
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, p)| p.title.as_str())
        .chain([plan.title.as_str()])
        .chain(example::OUTLINE.iter().map(|(t, _)| *t))
        .any(|t| title_key(t) == key)
}

/// A title made of the start of a scene's line of the outline, for when the model cannot
/// give one of its own: up to its first clause's end and at most the titles' most words, less
/// the words a phrase cannot end on, in title case ("The sun rises over Tokyo's towers, and…"
/// is "The Sun Rises over Tokyo's"). `None` when fewer than two words are left.
fn title_from_line(happens: &str) -> Option<String> {
    const SMALL: &[&str] = &[
        "a", "an", "the", "of", "in", "on", "at", "to", "for", "and", "or", "over", "with", "by",
    ];
    let mut words = Vec::new();
    for w in happens.split_whitespace().take(*TITLE_WORDS.end()) {
        let bare = w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
        if !bare.is_empty() {
            words.push(bare);
        }
        if w.ends_with([',', ';', ':', '.', '!', '?']) {
            break;
        }
    }
    let kept = without_dangling_words(&words.join(" "));
    let kept: Vec<String> = kept
        .split_whitespace()
        .enumerate()
        .map(|(n, w)| {
            if n > 0 && SMALL.contains(&w.to_lowercase().as_str()) {
                w.to_lowercase()
            } else {
                capitalized(w)
            }
        })
        .collect();
    (kept.len() >= *TITLE_WORDS.start()
        && !DANGLING.contains(&kept[kept.len() - 1].to_lowercase().as_str()))
    .then(|| kept.join(" "))
}

/// `word` with its first letter in upper case.
fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The question that asks scene `k` of a plan for a title of its own.
fn retitle_prompt(topic: &str, title: &str, outline: &[Planned], k: usize) -> String {
    let plan: String = outline
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}. {}: {}\n", i + 1, p.title, p.happens))
        .collect();
    format!(
        "A narrated video about {topic}, titled \"{title}\". Its scenes:\n{plan}\
         Scene {k}'s title repeats another one. Give scene {k} a short title of its own, unlike \
         every title above, for what happens in it: {}",
        outline[k - 1].happens
    )
}

/// A title of its own for scene `k` (1-based) of `plan`, whose title another one has: asked for
/// on its own, with the plan's other titles' words made less likely (the topic's too: "A
/// Northern Lights" came three times in one plan). `None` when [`SCENE_TRIES`] tries all
/// repeat one.
#[allow(clippy::too_many_arguments)]
fn retitle(
    llm: &mut Llm,
    topic: &str,
    plan: &Outline,
    k: usize,
    sampler: &Sampler,
    total: &mut Generation,
    on_token: &mut dyn FnMut(usize),
) -> Result<Option<String>, ScenesError> {
    // The worked example, its scene 2 given scene 1's title.
    let mut example_plan = example::outline();
    example_plan[1].title = example_plan[0].title.clone();
    let turns = with_example(
        retitle_prompt(example::TOPIC, example::TITLE, &example_plan, 2),
        compact_json(&serde_json::json!({"title": example::OUTLINE[1].0})),
        retitle_prompt(topic, &plan.title, &plan.outline, k),
    );
    let mut properties = serde_json::Map::new();
    properties.insert("title".into(), phrase_schema(TITLE_WORDS));
    let schema = in_topic_letters(object_schema(properties), topic);
    let others: Vec<&str> = plan
        .outline
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != k - 1)
        .map(|(_, p)| p.title.as_str())
        .chain([plan.title.as_str()])
        .collect();
    let avoid = llm.word_tokens(&others.join(" "), &[]);
    #[derive(serde::Deserialize)]
    struct Titled {
        title: String,
    }
    ask_until(
        llm,
        &format!("title of scene {k}"),
        (&turns, &schema),
        sampler,
        (100 * k as u64 + 7000, SCENE_TRIES),
        &avoid,
        total,
        on_token,
        |titled: Titled| {
            let title = without_dangling_words(&titled.title);
            if is_repeat(&title, plan, k - 1) {
                tracing::debug!("scene {k}: the title \"{title}\" is taken too");
                return None;
            }
            Some(title)
        },
    )
}

/// Asks for a part (`ask`: the conversation and the constraint) up to `tries.1` times, each
/// with the next seed from the sampler's plus `tries.0` and the `avoid` tokens made less likely
/// by one more each time (from 2), until `accept` takes what came; `None` when it took none.
#[allow(clippy::too_many_arguments)]
fn ask_until<T: serde::de::DeserializeOwned, R>(
    llm: &mut Llm,
    what: &str,
    ask: (&[(String, String)], &serde_json::Value),
    sampler: &Sampler,
    tries: (u64, u64),
    avoid: &[u32],
    total: &mut Generation,
    on_token: &mut dyn FnMut(usize),
    mut accept: impl FnMut(T) -> Option<R>,
) -> Result<Option<R>, ScenesError> {
    let (seed_offset, tries) = tries;
    for attempt in 0..tries {
        let seeded = Sampler {
            seed: sampler.seed.wrapping_add(seed_offset + attempt),
            ..sampler.clone()
        };
        let (part, _): (T, _) = generate_part(
            llm,
            what,
            ask.0,
            ask.1,
            &seeded,
            narration_steering(avoid, 2.0 + attempt as f32),
            total,
            on_token,
        )?;
        if let Some(taken) = accept(part) {
            return Ok(Some(taken));
        }
    }
    Ok(None)
}

/// Writes a storyboard of `scenes` scenes about `topic` the way small models do it well: a
/// title and an outline first (per scene, its title and what happens; a scene whose title
/// repeats another is given one of its own, [`retitle`]), then each scene on its own with the
/// topic and the outline in its prompt. A scene that repeats an earlier one (word trigrams) or
/// whose image prompt copies its narration is written again with another seed; the least
/// repetitive of its tries is kept. With `drafts` above 1, that many outlines and that many
/// drafts of each scene (unlike the scenes before it) are written, and the one the model finds
/// most fluent is kept ([`Generation::fluency`]). A picture is asked for as three phrases
/// (subject, place, light), which a small model writes as a picture rather than as another
/// sentence. Titles and narrations are
/// words only, by construction (no markup, paths or brackets), and the repetition penalty
/// applies to words, never to the JSON.
pub fn generate_storyboard(
    llm: &mut Llm,
    topic: &str,
    scenes: usize,
    drafts: usize,
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
        chosen_logprob: 0.0,
        choices: 0,
    };
    let topic_words = crate::quality::content_words(topic);
    let naming = naming_words(topic);
    let outline_schema = in_topic_letters(
        compact(serde_json::json!({
            "type": "object",
            "properties": {
                "title": phrase_schema(TITLE_WORDS),
                "outline": {"type": "array", "minItems": scenes, "maxItems": scenes, "items": {
                    "type": "object",
                    "properties": {
                        // A title is a phrase: with punctuation a small model writes the start of
                        // a sentence ("Males are large and black,").
                        "title": phrase_schema(TITLE_WORDS),
                        "happens": naming_schema(topic, &naming, &OUTLINE_LINE)
                    },
                    "required": ["title", "happens"],
                    "additionalProperties": false
                }}
            },
            "required": ["title", "outline"],
            "additionalProperties": false
        })),
        topic,
    );
    // Of `drafts` outlines (the outline holds the storyboard together), the one with the
    // fewest faults ([`Outline::faults`] and its coined words), a title of the topic's own
    // words counting [`BORROWED_TITLE_FAULTS`] (with the topic and such a title both in every
    // scene's question, SmolLM2 began narration after narration with them: "The life of a
    // monarch butterfly…" under "The Life of a Monarch", six of six); then the most fluent.
    type OutlineRank = (std::cmp::Reverse<usize>, f64);
    // Spared by the outline's recall, in either case: every line names the topic. A space
    // first, so the first word is taken after one too ([`Llm::word_tokens`]).
    let topic_tokens = {
        let cased: Vec<String> = naming
            .iter()
            .flat_map(|w| [w.clone(), capitalized(w)])
            .collect();
        llm.word_tokens(&format!(" {}", cased.join(" ")), &[])
    };
    let mut plan: Option<(OutlineRank, Outline)> = None;
    for draft in 0..drafts.max(1) as u64 {
        let seeded = Sampler {
            seed: sampler.seed.wrapping_add(OUTLINE_DRAFT_SEEDS * draft),
            ..sampler.clone()
        };
        let (outline, fluency): (Outline, _) = generate_part(
            llm,
            "outline",
            &outline_turns(topic, scenes),
            &outline_schema,
            &seeded,
            Steering {
                wrap_up: Some(OUTLINE_WRAP_UP),
                end_at_word_limit: true,
                recall: true,
                spared: &topic_tokens,
                plain_words: Some(&topic_words),
                ..Steering::default()
            },
            &mut total,
            on_token,
        )?;
        let fluency = fluency.unwrap_or(f64::NEG_INFINITY);
        let borrowed = crate::quality::borrows(topic, &outline.title);
        // A word the model coined counts as a fault too: a scene's title is the outline's.
        let coined = llm.coined_words(&outline.words(), &topic_words);
        let faults = outline.faults(topic) + coined.len();
        tracing::debug!(
            "outline, draft {}: \"{}\", fluency {fluency:.3}, {faults} faults (coined: {coined:?}){}",
            draft + 1,
            outline.title,
            if borrowed {
                ", titled with the topic's words"
            } else {
                ""
            }
        );
        for (i, p) in outline.outline.iter().enumerate() {
            tracing::debug!("  {}. {}: {}", i + 1, p.title, p.happens);
        }
        let rank = std::cmp::Reverse(faults + BORROWED_TITLE_FAULTS * usize::from(borrowed));
        let better = |(r, f): &OutlineRank| rank.cmp(r).then(fluency.total_cmp(f)).is_gt();
        if plan.as_ref().is_none_or(|(best, _)| better(best)) {
            plan = Some(((rank, fluency), outline));
        }
    }
    let (_, mut plan) = plan.expect("at least one draft");
    plan.title = without_dangling_words(&plan.title);
    for p in &mut plan.outline {
        p.title = without_dangling_words(&p.title);
    }
    // A scene whose title another has (or the video's) is given one of its own; a repeat
    // found later in the plan is checked against the titles given before it.
    for i in repeated_titles(&plan.title, &plan.outline) {
        if !repeated_titles(&plan.title, &plan.outline).contains(&i) {
            continue;
        }
        let was = plan.outline[i].title.clone();
        match retitle(llm, topic, &plan, i + 1, sampler, &mut total, on_token)? {
            Some(title) => {
                tracing::info!(
                    "scene {}'s title \"{was}\" repeated another; now \"{title}\"",
                    i + 1
                );
                plan.outline[i].title = title;
            }
            None => match title_from_line(&plan.outline[i].happens)
                .filter(|t| !is_repeat(t, &plan, i))
            {
                // SmolLM2 asked for another title copies the last one it was shown.
                Some(title) => {
                    tracing::info!(
                        "scene {}'s title \"{was}\" repeated another; now \"{title}\", from its line of the outline",
                        i + 1
                    );
                    plan.outline[i].title = title;
                }
                None => {
                    tracing::info!("scene {}'s title \"{was}\" still repeats another", i + 1)
                }
            },
        }
    }
    // A scene's schema, with the lights its picture may still have (`left`).
    let scene_schema = |left: &[&str]| {
        // In the order the model writes them, every one required.
        let mut properties = serde_json::Map::new();
        properties.insert(
            "narration".into(),
            naming_schema(topic, &naming, &NARRATION),
        );
        properties.extend(Picture::properties(topic, &naming, left));
        // Whole seconds: a number with decimals lets a small model write digits forever.
        properties.insert(
            "duration_seconds".into(),
            serde_json::json!({"type": "integer", "minimum": 4, "maximum": 8}),
        );
        in_topic_letters(object_schema(properties), topic)
    };
    let mut written: Vec<Scene> = Vec::with_capacity(scenes);
    let mut lights: Vec<String> = Vec::with_capacity(scenes);
    // The phrases a picture should not be ([`picture_repeats`]): the titles, then each chosen
    // picture's subject and place.
    let mut phrases: Vec<String> = std::iter::once(&plan.title)
        .chain(plan.outline.iter().map(|p| &p.title))
        .cloned()
        .collect();
    for k in 1..=scenes {
        // Each light is in at most `SAME_LIGHT` of a storyboard's pictures (SmolLM2 gave four
        // of six "sunset glow").
        let left: Vec<&str> = LIGHTS
            .iter()
            .copied()
            .filter(|l| lights.iter().filter(|u| u == l).count() < SAME_LIGHT)
            .collect();
        let schema = scene_schema(&left);
        let turns = scene_turns(topic, &plan.title, &plan.outline, k);
        // The words earlier scenes (and the worked example) used, but the topic's: this scene
        // should find its own. The example's picture too (SmolLM2 put its "a snowy village" in
        // half its pictures). Not the video's title: kept from its words, SmolLM2 misspelled
        // them instead ("The Bigest Street Food Scene"); a narration that reads the title out
        // is written again ([`repeat_score`]). Not the earlier pictures' words: with those too,
        // so many words were made less likely that commas won ("The Roman aqueducts, ancient,
        // it is, one, he met a team").
        let said: String = written
            .iter()
            .map(|s| s.narration.as_str())
            .chain([
                example::NARRATION,
                example::SUBJECT,
                example::PLACE,
                example::LIGHT,
            ])
            .collect::<Vec<_>>()
            .join(" ");
        let avoid = llm.word_tokens(&said, &topic_words);
        // Tries until `drafts` scenes unlike the earlier ones are written (the best is kept),
        // or `SCENE_TRIES` tries repeated them and at least one did not, or `LAST_SCENE_TRY`
        // all did (the least repetitive is kept). Each ranked by whether it opens unlike the
        // scenes before it, then by how little filler it has and how few words it coined
        // ([`Rank::filler`]), then by its fluency.
        let mut unlike: Vec<(Rank, Scene, Picture)> = Vec::new();
        let mut least_repetitive: Option<(f64, Scene, Picture)> = None;
        let mut repeats = 0;
        for attempt in 0.. {
            let seeded = Sampler {
                seed: sampler.seed.wrapping_add(1000 * k as u64 + attempt),
                ..sampler.clone()
            };
            let (w, fluency): (Written, _) = generate_part(
                llm,
                &format!("scene {k}"),
                &turns,
                &schema,
                &seeded,
                // Harder after each repeat: the try found the earlier scenes' words again.
                // The tries past SCENE_TRIES only with new seeds: steered harder still, a
                // small model writes nonsense to escape.
                Steering {
                    plain_words: Some(&topic_words),
                    ..narration_steering(
                        &avoid,
                        AVOID_PENALTY + 0.4 * repeats.min(SCENE_TRIES - 1) as f32,
                    )
                },
                &mut total,
                on_token,
            )?;
            let scene = Scene {
                index: k as u32,
                title: plan.outline[k - 1].title.clone(),
                narration: without_doubled_words(&mend_cut_ending(w.narration.trim())),
                image_prompt: w.picture.prompt(),
                duration_seconds: f64::from(w.duration_seconds),
            };
            let (score, why) = repeat_score(&scene, &written, topic, &plan.title);
            if score < crate::quality::MAX_OVERLAP {
                let fluency = fluency.unwrap_or(f64::NEG_INFINITY);
                tracing::debug!(
                    "scene {k}, try {}: fluency {fluency:.3}: {}",
                    attempt + 1,
                    scene.narration
                );
                let coined = llm.coined_words(
                    &[&scene.narration, &w.picture.subject, &w.picture.place]
                        .map(|t| t.as_str())
                        .join(" "),
                    &topic_words,
                );
                if !coined.is_empty() {
                    tracing::debug!("scene {k}, try {}: coined {coined:?}", attempt + 1);
                }
                let rank = Rank {
                    fresh: !opens_like(&scene.narration, &written),
                    filler: scene_filler(&scene.narration, &w.picture.subject, topic, &written)
                        + coined.len()
                        + picture_repeats(&w.picture, &phrases),
                    fluency,
                };
                unlike.push((rank, scene, w.picture));
                if unlike.len() >= drafts.max(1) {
                    break;
                }
                continue;
            }
            tracing::info!("scene {k} {why}; writing it again");
            tracing::debug!("scene {k}, try {}: {}", attempt + 1, scene.narration);
            repeats += 1;
            if least_repetitive.as_ref().is_none_or(|(b, ..)| score < *b) {
                least_repetitive = Some((score, scene, w.picture));
            }
            // Drafts unlike the earlier scenes were found, or none after every try.
            if repeats >= SCENE_TRIES && (!unlike.is_empty() || repeats >= LAST_SCENE_TRY) {
                break;
            }
        }
        // The most fluent draft, but one that opens as an earlier scene did only when all do
        // (fluency alone kept "The lighthouse keeper leans in and…" for five scenes of six),
        // and one with filler ([`scene_filler`]) only when all have as much.
        let best = unlike
            .into_iter()
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(rank, scene, picture)| (rank.fluency, scene, picture))
            .or(least_repetitive);
        let (_, mut scene, picture) = best.expect("at least one try");
        let mut light = Some(picture.light);
        phrases.extend([picture.subject, picture.place]);
        if crate::quality::prompt_copies_narration(&scene) {
            (scene.image_prompt, light) = describe_picture(
                llm,
                topic,
                &scene,
                &topic_words,
                &left,
                sampler,
                &mut total,
                on_token,
            )?;
        }
        lights.extend(light);
        written.push(scene);
    }
    for scene in &mut written {
        for text in [
            &mut scene.title,
            &mut scene.narration,
            &mut scene.image_prompt,
        ] {
            *text = with_names_capitalized(text, topic);
        }
    }
    let board = Storyboard {
        topic: topic.trim().to_string(),
        title: with_names_capitalized(&plan.title, topic),
        scenes: written,
    };
    total.text = serde_json::to_string(&board).expect("a storyboard serializes");
    Ok((board, total))
}

/// How a scene draft compares with the others written for its place: greater is better.
#[derive(Debug, Clone, Copy)]
struct Rank {
    /// It opens unlike every earlier scene ([`opens_like`]).
    fresh: bool,
    /// Its [`scene_filler`], the words it coined ([`Llm::coined_words`]: "the old kokoro"),
    /// and its picture's phrases that repeat a title or an earlier picture's
    /// ([`picture_repeats`]).
    filler: usize,
    /// [`Generation::fluency`].
    fluency: f64,
}

impl Rank {
    fn cmp(&self, other: &Rank) -> std::cmp::Ordering {
        self.fresh
            .cmp(&other.fresh)
            .then(other.filler.cmp(&self.filler))
            .then(self.fluency.total_cmp(&other.fluency))
    }
}

/// How many of a picture's subject and place are one of `phrases`
/// ([`same_phrase`](crate::quality::same_phrase)): a title (the video's or a scene's) or an
/// earlier picture's subject or place. SmolLM2 asked for four of six pictures of "Cyberpunk
/// Tokyo" in "a floating metropolis", and for one in "A Crystal Ball Shakes", the video's title.
fn picture_repeats(picture: &Picture, phrases: &[String]) -> usize {
    [&picture.subject, &picture.place]
        .iter()
        .filter(|p| phrases.iter().any(|q| crate::quality::same_phrase(p, q)))
        .count()
}

/// A scene draft's filler ([`Rank::filler`]): its narration's
/// [`filler_clauses`](crate::quality::filler_clauses), [`stutters`](crate::quality::stutters)
/// ("The world has changed, Tokyo's Tokyo's after dark.") and sentences an earlier scene said
/// ([`said_before`]), and one more when its picture's subject is the whole topic (of three
/// words or more). SmolLM2 asked for four of six pictures of "The life of a monarch butterfly"
/// as "the life of a monarch butterfly", which tells the image model nothing the topic did not.
fn scene_filler(narration: &str, subject: &str, topic: &str, written: &[Scene]) -> usize {
    let topic_subject =
        topic.split_whitespace().count() >= 3 && crate::quality::quotes(subject, topic);
    crate::quality::filler_clauses(narration, topic)
        + crate::quality::stutters(narration)
        + said_before(narration, written)
        + usize::from(topic_subject)
}

/// The sentences of `narration` that an earlier scene's narration has word for word (letter
/// case and marks aside): SmolLM2 ended three narrations of "Ancient Roman aqueducts" with
/// "You see it.", which the trigram overlap of scenes of 12-18 words does not catch.
fn said_before(narration: &str, written: &[Scene]) -> usize {
    let sentences = |text: &str| -> Vec<Vec<String>> {
        text.split_inclusive(['.', '!', '?'])
            .map(|s| s.split_whitespace().map(bare_word).collect::<Vec<_>>())
            .filter(|words| words.len() >= 2)
            .collect()
    };
    let earlier: Vec<Vec<String>> = written
        .iter()
        .flat_map(|s| sentences(&s.narration))
        .collect();
    sentences(narration)
        .iter()
        .filter(|s| earlier.contains(s))
        .count()
}

/// How many first words of two narrations make them open alike.
const OPENING_WORDS: usize = 4;

/// Whether `narration` opens with the same [`OPENING_WORDS`] words (letter case and
/// punctuation aside) as one of the narrations `written` before it.
fn opens_like(narration: &str, written: &[Scene]) -> bool {
    let opening = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .take(OPENING_WORDS)
            .map(bare_word)
            .collect()
    };
    let own = opening(narration);
    own.len() == OPENING_WORDS && written.iter().any(|s| opening(&s.narration) == own)
}

/// How much `scene` repeats the scenes `written` before it or the worked example, and why: the
/// largest share of narration word trigrams it has with one of them; 1.0 when its image prompt
/// copies its narration or the example's, or its narration reads out the video's `title` (one
/// that is not the topic's own words);
/// [`MAX_OVERLAP`](crate::quality::MAX_OVERLAP), so that it is written again, when its
/// narration quotes the whole `topic` after an earlier scene already did ("The deep sea at
/// midnight, …" five times), or its picture is told as a sentence ("I am in love with him").
/// (Titles are the outline's: [`repeated_titles`].)
fn repeat_score(scene: &Scene, written: &[Scene], topic: &str, title: &str) -> (f64, String) {
    use crate::quality::{MAX_OVERLAP, quotes, reads_as_sentence, trigram_overlap};
    let overlap = written
        .iter()
        .map(|s| s.narration.as_str())
        .chain([example::NARRATION])
        .map(|earlier| trigram_overlap(earlier, &scene.narration))
        .fold(0.0, f64::max);
    let repeats = format!(
        "repeats an earlier one ({:.0}% of its word trigrams)",
        overlap * 100.0
    );
    // A copied image prompt counts as a repeat: it is what draws the picture.
    let copied_example =
        trigram_overlap(&example::picture().prompt(), &scene.image_prompt) >= MAX_OVERLAP;
    let faults = [
        (
            copied_example || crate::quality::prompt_copies_narration(scene),
            1.0,
            "copies a picture",
        ),
        (
            title.split_whitespace().count() >= 2
                && quotes(&scene.narration, title)
                // A title that is the topic's own words ("The Great Barrier Reef", "The Street
                // Food Market") is named, not read out.
                && !crate::quality::borrows(topic, title),
            1.0,
            "reads out the video's title",
        ),
        (
            topic.split_whitespace().count() >= 3
                && quotes(&scene.narration, topic)
                && written.iter().any(|s| quotes(&s.narration, topic)),
            MAX_OVERLAP,
            "quotes the topic again",
        ),
        (
            reads_as_sentence(&scene.image_prompt),
            MAX_OVERLAP,
            "tells its picture as a sentence",
        ),
    ];
    faults
        .into_iter()
        .filter(|&(found, score, _)| found && score > overlap)
        .map(|(_, score, why)| (score, why.to_string()))
        .next()
        .unwrap_or((overlap, repeats))
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
    let (mut storyboard, generation) = generate_storyboard(
        &mut llm,
        req.topic,
        req.scenes,
        req.drafts,
        &req.sampler,
        on_token,
    )?;
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
        let score = |scene: &Scene, written: &[Scene]| {
            repeat_score(scene, written, "Cyberpunk Tokyo", "Neon Nights").0
        };
        let max = crate::quality::MAX_OVERLAP;
        assert!(score(&fresh, std::slice::from_ref(&first)) < max);
        let retold = scene("Another Title", &first.narration, &fresh.image_prompt);
        assert!(score(&retold, std::slice::from_ref(&first)) >= max);
        let example_picture = scene("A", &fresh.narration, &example::picture().prompt());
        assert_eq!(score(&example_picture, &[]), 1.0);
        let copied = scene("A", &fresh.narration, "waits for the last train home");
        assert_eq!(score(&copied, &[]), 1.0);
        // A narration that reads out the video's title.
        let title_read = scene(
            "A",
            "Neon nights. A tired courier waits for the last train home.",
            &fresh.image_prompt,
        );
        let (s, why) = repeat_score(&title_read, &[], "Cyberpunk Tokyo", "Neon Nights");
        assert_eq!((s, why.as_str()), (1.0, "reads out the video's title"));
        // Unless the title is the topic's own words: then it names the topic.
        let reef = scene(
            "A",
            "Under the waves the Great Barrier Reef wakes in a storm of colour.",
            &fresh.image_prompt,
        );
        let topic = "The Great Barrier Reef";
        assert!(repeat_score(&reef, &[], topic, "The Great Barrier Reef").0 < max);
        assert!(repeat_score(&reef, &[], topic, "Great Barrier Reef").0 < max);
        assert!(repeat_score(&reef, &[], "Coral seas", "The Great Barrier Reef").0 >= 1.0);
        // A picture told as a sentence.
        let told = scene(
            "A",
            &fresh.narration,
            "I am in love with him, my fatherland",
        );
        assert_eq!(score(&told, &[]), max);
        // The whole topic, quoted a second time (a quote in one scene is fine).
        let topic = "The deep sea at midnight";
        let deep = |narration: &str| scene("A", narration, "a lantern fish, the abyss, blue glow");
        let once = deep("The deep sea at midnight hides creatures no diver has seen.");
        let twice = deep("The deep sea at midnight glows where the anglerfish hunts alone.");
        assert!(repeat_score(&once, &[], topic, "Night Water").0 < max);
        let (s, why) = repeat_score(&twice, std::slice::from_ref(&once), topic, "Night Water");
        assert_eq!((s, why.as_str()), (max, "quotes the topic again"));
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
    fn a_draft_is_kept_for_its_opening_then_its_filler_then_its_fluency() {
        let rank = |fresh, filler, fluency| Rank {
            fresh,
            filler,
            fluency,
        };
        let mut drafts = [
            rank(false, 0, -0.1),
            rank(true, 2, -0.2),
            rank(true, 0, -1.5),
            rank(true, 0, -0.9),
            rank(true, 1, -0.3),
        ];
        drafts.sort_by(|a, b| b.cmp(a));
        let order: Vec<(bool, usize, f64)> = drafts
            .iter()
            .map(|r| (r.fresh, r.filler, r.fluency))
            .collect();
        assert_eq!(
            order,
            [
                (true, 0, -0.9),
                (true, 0, -1.5),
                (true, 1, -0.3),
                (true, 2, -0.2),
                (false, 0, -0.1)
            ]
        );
    }

    #[test]
    fn a_picture_of_the_whole_topic_counts_as_filler() {
        let topic = "The life of a monarch butterfly";
        let narration = "The sun rises, and the monarchs begin to fly.";
        assert_eq!(
            scene_filler(narration, "a monarch on milkweed", topic, &[]),
            0
        );
        assert_eq!(
            scene_filler(narration, "the life of a monarch butterfly", topic, &[]),
            1
        );
        assert_eq!(
            scene_filler(
                "The sun rises, butterflies.",
                "The Life of a Monarch Butterfly",
                topic,
                &[]
            ),
            2
        );
        // A topic of two words is a fine subject: "Cyberpunk Tokyo".
        assert_eq!(
            scene_filler(narration, "cyberpunk Tokyo", "Cyberpunk Tokyo", &[]),
            0
        );
    }

    #[test]
    fn an_outlines_titles_are_checked_for_coined_words_in_lower_case() {
        let outline = Outline {
            title: "A Lone Starlitke".into(),
            outline: vec![Planned {
                title: "LIGHTNESSKEL Enters".into(),
                happens: "Kaito walks to the lighthouse.".into(),
            }],
        };
        // The titles lose their capitals (a made-up word there is not a name); the lines keep
        // theirs (Kaito is).
        assert_eq!(
            outline.words(),
            "a lone starlitke lightnesskel enters Kaito walks to the lighthouse."
        );
    }

    #[test]
    fn a_picture_phrase_that_is_a_title_or_an_earlier_pictures_counts_as_filler() {
        let phrases = [
            "A Crystal Ball Shakes".to_string(),
            "a floating metropolis".to_string(),
        ];
        let picture = |subject: &str, place: &str| Picture {
            subject: subject.into(),
            place: place.into(),
            light: "dawn light".into(),
        };
        assert_eq!(
            picture_repeats(&picture("Tokyo street vendors", "a night market"), &phrases),
            0
        );
        assert_eq!(
            picture_repeats(
                &picture("Tokyo street vendors", "Floating Metropolis"),
                &phrases
            ),
            1
        );
        assert_eq!(
            picture_repeats(
                &picture("a crystal ball shakes", "the floating metropolis"),
                &phrases
            ),
            2
        );
        // A phrase that holds one is its own.
        assert_eq!(
            picture_repeats(
                &picture("Tokyo street vendors", "a floating metropolis at sea"),
                &phrases
            ),
            0
        );
    }

    #[test]
    fn a_sentence_an_earlier_scene_said_counts_as_filler() {
        let earlier = |narration: &str| Scene {
            index: 1,
            title: "Rome".into(),
            narration: narration.into(),
            image_prompt: "the Roman aqueducts, a valley, dawn light".into(),
            duration_seconds: 5.0,
        };
        let written = [earlier(
            "Rome is a city that has ancient Romans at its heart. You see it.",
        )];
        let topic = "Ancient Roman aqueducts";
        let subject = "a Roman aqueduct";
        let narration = "The Roman Empire has ancient Romans at its center. You see it!";
        assert_eq!(scene_filler(narration, subject, topic, &written), 1);
        assert_eq!(scene_filler(narration, subject, topic, &[]), 0);
        // A sentence of one word, and one that only begins alike, are not said before.
        let written = [earlier("Rome. You see it all from the hill.")];
        assert_eq!(
            scene_filler("Rome. You see it, the old city.", subject, topic, &written),
            0
        );
    }

    #[test]
    fn a_narration_opens_like_an_earlier_one_by_its_first_four_words() {
        let earlier = |narration: &str| Scene {
            index: 1,
            title: "A".into(),
            narration: narration.into(),
            image_prompt: "a keeper, a tower, dusk".into(),
            duration_seconds: 5.0,
        };
        let written = [earlier(
            "The lighthouse keeper leans in and tells the story.",
        )];
        assert!(opens_like(
            "The Lighthouse keeper, leans out to sea.",
            &written
        ));
        assert!(!opens_like(
            "The lighthouse keeper stands atop the hill.",
            &written
        ));
        assert!(
            !opens_like("The lighthouse keeper", &written),
            "fewer than four words"
        );
        assert!(!opens_like("The lighthouse keeper leans in.", &[]));
    }

    #[test]
    fn a_narration_cut_off_by_its_limit_ends_at_its_last_comma() {
        // SmolLM2's on an H100, at the 18-word limit or ending on a dangling word.
        for (written, mended) in [
            (
                "When a robot, a digital voice, Cyberpunk Tokyo, takes over the city, and he is said to be.",
                "When a robot, a digital voice, Cyberpunk Tokyo, takes over the city.",
            ),
            (
                "The last day, when the neon-lit Tokyo lights of Hanaoka, where I grew up, all fade away, leaving.",
                "The last day, when the neon-lit Tokyo lights of Hanaoka, where I grew up, all fade away.",
            ),
            (
                "As night fell, a lone lighthouse keeper lay beside his family at the edge of the island, and.",
                "As night fell, a lone lighthouse keeper lay beside his family at the edge of the island.",
            ),
            // A contracted verb ends no clause (SmolLM2's on the CPU).
            (
                "The train was running, the lights, Cyberpunk Tokyo, her eyes, they're.",
                "The train was running, the lights, Cyberpunk Tokyo, her eyes.",
            ),
            // The clause after the comma is too long to drop: the dangling word goes.
            (
                "The woman walks into a bar, Tokyo's neon lights illuminate her face and she can't decide whether.",
                "The woman walks into a bar, Tokyo's neon lights illuminate her face and she can't decide.",
            ),
            // No comma to end at: the dangling words go.
            (
                "The bees make honey in the hive all summer long and.",
                "The bees make honey in the hive all summer long.",
            ),
            // The clause after the comma is long enough to be the sentence itself: kept.
            (
                "As the sun set, the streets of Paris filled with people who carried umbrellas and laughed together again.",
                "As the sun set, the streets of Paris filled with people who carried umbrellas and laughed together again.",
            ),
        ] {
            assert_eq!(mend_cut_ending(written), mended, "{written}");
        }
        // Sentences that ended where they should are not touched, nor a short one that would
        // lose the topic's word.
        for kept in [
            "The train leaves, and a fire, Cyberpunks Tokyo, Echo of Tomorrow, begins.",
            "The bees make honey by making a bee-song.",
            "Tokyo, and the.",
        ] {
            assert_eq!(mend_cut_ending(kept), kept);
        }
    }

    #[test]
    fn a_plan_repeats_by_its_titles_articles_plurals_and_letter_case_aside() {
        let plan = |titles: &[&str]| -> Vec<Planned> {
            titles
                .iter()
                .map(|t| Planned {
                    happens: "Something happens here at last.".into(),
                    title: t.to_string(),
                })
                .collect()
        };
        let none: Vec<usize> = Vec::new();
        assert_eq!(
            repeated_titles("Neon", &plan(&["Neon Rain", "The Last Train"])),
            none
        );
        assert_eq!(
            repeated_titles(
                "Neon",
                &plan(&["Neon Rain", "The Last Train", "neon rain.", "Neon Rain"])
            ),
            vec![2, 3]
        );
        // The worked example's titles are taken too, and the video's.
        assert_eq!(
            repeated_titles("Neon", &plan(&["A White Morning", "Rain", "NEON"])),
            vec![0, 2]
        );
        // SmolLM2's "A Woman" then "The Woman", and "The End of the Dreams" under the video's
        // "The End of the Dream"; "Glass" is not "Glas", nor "Bus" "Bu".
        assert_eq!(
            repeated_titles(
                "The End of the Dream",
                &plan(&[
                    "A Woman",
                    "The Woman",
                    "The End of the Dreams",
                    "Glass",
                    "Bus"
                ])
            ),
            vec![1, 2]
        );
    }

    #[test]
    fn an_outline_line_is_faulty_when_it_repeats_an_earlier_one_or_holds_filler() {
        let outline = |lines: &[&str]| Outline {
            title: "The City of the Dead".into(),
            outline: lines
                .iter()
                .enumerate()
                .map(|(i, happens)| Planned {
                    title: format!("Scene {i}"),
                    happens: happens.to_string(),
                })
                .collect(),
        };
        let topic = "Cyberpunk Tokyo";
        // SmolLM2's, seed 42: lines 3 and 4 come back as 5 and 6, and the topic is wedged
        // between commas in 2, 4 and 6.
        let looped = outline(&[
            "On a night in mid-moran, at cyberpunk Tokyo, there's an abandoned crate.",
            "The abandoned crate slowly gets dragged, cyberpunk tokyo, and begins its journey.",
            "This is a ghost, it's in Tokyo. It was brought here, from another city.",
            "The ghosts, they are all trapped, cyberpunk tokyo, and begin their final journey.",
            "This is a ghost, it's in Tokyo. It was brought here, from another city. The next day.",
            "The ghosts, they are all trapped, cyberpunk tokyo, and begin their final journey.",
        ]);
        assert_eq!(looped.faults(topic), 4);
        let told = outline(&[
            "Rain falls on the neon streets of Tokyo as the night market opens.",
            "A courier on a motorbike weaves through the traffic of Tokyo.",
            "In a ramen bar, an old hacker watches the Tokyo news.",
        ]);
        assert_eq!(told.faults(topic), 0);
        let french = outline(&[
            "La Vie en Rose, la ville le marché dans un café, et les amis sont l'amour.",
            "The fog rolls in over the Paris sky, and the cafés fill.",
        ]);
        assert_eq!(french.faults("A rainy day in Paris"), 1);
        assert_eq!(french.faults("Un jour de pluie à Paris"), 0);
    }

    #[test]
    fn a_title_can_be_made_of_the_start_of_a_line_of_the_outline() {
        assert_eq!(
            title_from_line("The sun rises over Tokyo's towers, and the city wakes.").as_deref(),
            Some("The Sun Rises over Tokyo's")
        );
        assert_eq!(
            title_from_line("At dawn, the village wakes.").as_deref(),
            Some("At Dawn")
        );
        // Its last word is not one a phrase cannot end on.
        assert_eq!(
            title_from_line("An old shepherd watches the snow.").as_deref(),
            Some("An Old Shepherd Watches")
        );
        // Fewer than two words: none.
        assert_eq!(title_from_line("Tokyo, at night."), None);
    }

    #[test]
    fn the_example_answers_are_written_as_the_constraint_writes_json() {
        let plan = example::outline();
        let turns = scene_turns("Cyberpunk Tokyo", "Neon", &plan, 1);
        let answer = &turns[2].1;
        assert!(
            answer.starts_with("{\"narration\": \"The school bell"),
            "{answer}"
        );
        assert!(
            answer.contains("\", \"subject\": \"village children"),
            "{answer}"
        );
        let parsed: serde_json::Value = serde_json::from_str(answer).unwrap();
        assert_eq!(parsed["duration_seconds"], 6);
        // The question says what happens in the scene (its title is the plan's alone: a
        // small model begins the narration with it when it is asked for).
        assert!(turns[3].1.contains("Write scene 1: An old shepherd"));
        assert!(!turns[3].1.contains("Clouds Over"));
        // The example's own fields obey the schemas the model is held to.
        let example_words = crate::quality::content_words(example::TOPIC);
        let narration = regex_lite(&naming_schema(example::TOPIC, &example_words, &NARRATION));
        assert!(narration(example::NARRATION));
        let picture = Picture::properties(example::TOPIC, &naming_words(example::TOPIC), LIGHTS);
        for (field, text) in [("subject", example::SUBJECT), ("place", example::PLACE)] {
            assert!(regex_lite(&picture[field])(text), "{field}: {text}");
        }
        // The light is one of the list, which the question gives.
        assert_eq!(
            picture["light"]["enum"].as_array().unwrap().len(),
            LIGHTS.len()
        );
        assert!(LIGHTS.contains(&example::LIGHT));
        assert!(
            turns[3]
                .1
                .contains("the light (one of: dawn light, bright daylight,")
        );
        for (title, happens) in example::OUTLINE {
            let line = naming_schema(example::TOPIC, &example_words, &OUTLINE_LINE);
            assert!(regex_lite(&line)(happens), "{happens}");
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
        let words = regex_lite(&words_schema(NARRATION.words.clone()));
        assert!(!words(
            "his...his and then some more words to pass the floor"
        ));
        assert!(!words("The Last Hours of A','Thelax'','A"));
        // Contractions, elisions and hyphens, but no two words glued at an apostrophe.
        assert!(words(
            "At ten o'clock the keeper's x-ray says they're fine, and l'eau we'll drink."
        ));
        assert!(!words(
            "The lights of the city'sbegin to glow over the bay."
        ));
        assert!(words(
            "We can't go, they'd say, and I'm sure we've seen it."
        ));
        assert!(!regex_lite(&picture["subject"])("the earths'bound landing"));
        // Words, but none of the topic's: no narration, and no line of the plan.
        let off_topic = "The bell rings and the children burst into the square to build a snowman.";
        assert!(words(off_topic));
        assert!(!narration(off_topic));
        assert!(!regex_lite(&naming_schema(
            example::TOPIC,
            &example_words,
            &OUTLINE_LINE
        ))(off_topic));
    }

    #[test]
    fn a_topic_is_named_by_its_nouns_in_either_number() {
        assert_eq!(naming_words("How volcanoes form"), ["volcanoes"]);
        assert_eq!(naming_words("A small bakery at dawn"), ["bakery", "dawn"]);
        assert_eq!(naming_words("The Great Barrier Reef"), ["barrier", "reef"]);
        // Nor by the frame it is told in.
        assert_eq!(
            naming_words("The life of a monarch butterfly"),
            ["monarch", "butterfly"]
        );
        assert_eq!(naming_words("A rainy day in Paris"), ["day", "paris"]);
        assert_eq!(naming_words("The history of the bicycle"), ["bicycle"]);
        // Nothing but general words: they are all there is.
        assert_eq!(naming_words("Deep learning"), ["deep", "learning"]);
        for (word, forms) in [
            ("volcanoes", vec!["volcanoes", "volcano"]),
            ("aqueducts", vec!["aqueducts", "aqueduct"]),
            ("bees", vec!["bees", "bee"]),
            ("butterflies", vec!["butterflies", "butterfly"]),
            ("butterfly", vec!["butterfly", "butterflies"]),
            ("beaches", vec!["beaches", "beach"]),
            ("paris", vec!["paris"]),
            ("press", vec!["press"]),
            ("honey", vec!["honey"]),
            ("tokyo", vec!["tokyo"]),
        ] {
            assert_eq!(crate::quality::number_forms(word), forms, "{word}");
        }
        let narration =
            |topic: &str| regex_lite(&naming_schema(topic, &naming_words(topic), &NARRATION));
        let volcanoes = narration("How volcanoes form");
        assert!(volcanoes(
            "A volcano wakes under the island, and the sky turns red."
        ));
        assert!(volcanoes(
            "The old volcanoes sleep under the ice of the north."
        ));
        assert!(!volcanoes(
            "The ground shakes and the lava will form a new island tonight."
        ));
        let butterfly = narration("The life of a monarch butterfly");
        assert!(butterfly(
            "A cloud of butterflies rises over the field at noon."
        ));
        assert!(butterfly("A monarch butterfly rests on a leaf at noon."));
        // A plural takes no second ending.
        assert!(!butterfly(
            "A cloud of butterfliess rises over the field at noon."
        ));
        assert!(!butterfly(
            "A cloud of butterflys rises over the field at noon."
        ));
        let bakery = narration("A small bakery at dawn");
        assert!(bakery("The bakeries of the old town open their doors."));
        assert!(!bakery("The bakeriess of the old town open their doors."));
        assert!(!volcanoes(
            "The old volcanoeses sleep under the ice of the north."
        ));
        for (form, endings) in [
            ("volcano", "s|es"),
            ("bakery", ""),
            ("bakeries", ""),
            ("day", "s"),
            ("beach", "es"),
            ("press", "es"),
            ("reef", "s"),
        ] {
            assert_eq!(crate::quality::plural_endings(form), endings, "{form}");
        }
        let tokyo = narration("Cyberpunk Tokyo");
        assert!(tokyo("Her cyberpunk hand goes still in the rain at dawn."));
        assert!(tokyo("The rain of Tokyo's night falls on the street."));
        // A word that modifies the next, and a name, take no plural's ending.
        assert!(!tokyo("She leans in and cyberpunks one hand at dawn."));
        assert!(!tokyo("The rain of Tokyos falls on the street."));
        assert_eq!(
            topic_modifiers("A lighthouse keeper's last night, the moon landing"),
            ["lighthouse", "moon"]
        );
        assert_eq!(topic_modifiers("How volcanoes form"), ["volcanoes"]);
    }

    #[test]
    fn a_word_written_twice_in_a_row_is_written_once() {
        for (text, mended) in [
            (
                "The world has changed, Tokyo's tokyo's after dark.",
                "The world has changed, tokyo's after dark.",
            ),
            (
                "The old kokoro, Tokyo's tokyo, is on a ship.",
                "The old kokoro, tokyo, is on a ship.",
            ),
            (
                "Japan's Tokyo's Tokyo Metro, naval base, blue dusk",
                "Japan's Tokyo Metro, naval base, blue dusk",
            ),
            (
                "It ends. Lanterns lanterns glow.",
                "It ends. Lanterns glow.",
            ),
            ("Tokyo, Tokyo, the city.", "Tokyo, Tokyo, the city."),
            ("that that is is.", "that that is is."),
            ("Bees make honey.", "Bees make honey."),
        ] {
            assert_eq!(without_doubled_words(text), mended, "{text}");
        }
    }

    #[test]
    fn the_topics_names_are_capitalised_where_they_were_written_in_lower_case() {
        assert_eq!(
            topic_names("A jazz club in 1920s New York's Harlem, Tokyo and paris"),
            [vec!["new", "york", "harlem"], vec!["tokyo"]]
        );
        assert!(topic_names("Cyberpunk Tokyo")[0] == ["tokyo"]);
        let tokyo = |t: &str| with_names_capitalized(t, "Cyberpunk Tokyo");
        assert_eq!(
            tokyo("The neon of cyberpunk tokyo glows. tokyo's rain, \"tokyo\"!"),
            "The neon of cyberpunk Tokyo glows. Tokyo's rain, \"Tokyo\"!"
        );
        // A word that only contains the name is left alone.
        assert_eq!(tokyo("tokyoites"), "tokyoites");
        let york = |t: &str| with_names_capitalized(t, "A jazz club in 1920s New York");
        assert_eq!(
            york("a new day in new york, and york alone"),
            "a new day in New York, and york alone"
        );
        assert_eq!(york("the club in new"), "the club in new");
    }

    #[test]
    fn a_pictures_subject_names_a_word_of_the_topic() {
        let subject = |topic: &str| {
            regex_lite(&naming_phrase_schema(
                topic,
                &naming_words(topic),
                SUBJECT_WORDS,
            ))
        };
        let tokyo = subject("Cyberpunk Tokyo");
        assert!(tokyo("Tokyo street vendors"));
        assert!(tokyo("Tokyo's neon towers"));
        assert!(tokyo("cyberpunk riders racing through rain"));
        // The word early, in two words to seven.
        assert!(tokyo("the Tokyo skyline at night"));
        assert!(tokyo("a neon Tokyo street with night vendors"));
        assert!(!tokyo("a neon Tokyo street with many night vendors"));
        assert!(!tokyo("a girl crossing Tokyo"));
        assert!(!tokyo("Tokyo"));
        // None of the topic's words; a name in lower case; a sentence.
        assert!(!tokyo("the old man kissing"));
        assert!(!tokyo("a street vendor in tokyo"));
        assert!(!tokyo("Tokyo wakes. The rain"));
        let volcanoes = subject("How volcanoes form");
        assert!(volcanoes("a volcano erupting at night"));
        assert!(volcanoes("Volcanoes of the north"));
        assert!(!volcanoes("the sky"));
        // "form" is a general word: it names nothing.
        assert!(!volcanoes("a form of rock"));
        let bees = subject("How bees make honey");
        assert!(bees("bees in flight"));
        assert!(bees("a honey jar"));
        // A topic with no word worth naming holds a subject to nothing more than a phrase.
        assert_eq!(
            naming_phrase_schema("it is so", &naming_words("it is so"), SUBJECT_WORDS),
            phrase_schema(SUBJECT_WORDS)
        );
    }

    /// A matcher for a words schema's pattern, by the regex crate llguidance also builds on.
    #[test]
    fn a_latin_topic_is_written_in_latin_letters_and_any_other_in_its_own() {
        let topic_words = crate::quality::content_words("Paris in the rain");
        let narration = |topic: &str| {
            in_topic_letters(
                naming_schema("Paris in the rain", &topic_words, &NARRATION),
                topic,
            )
        };
        let latin = regex_lite(&narration("Paris in the rain"));
        assert!(latin("In Paris the café owner waits for the rain to stop."));
        assert!(latin(
            "In Paris the B52 café waits, naïve and Zoë, for the rain."
        ));
        assert!(!latin(
            "In Paris, اسم بازرکتب, the rain falls on the river."
        ));
        assert!(!latin("In Paris the Ｎﾒ sign glows over the wet street."));
        assert!(!latin("In Paris the ǧİbakır shop waits for the rain."));
        // A topic in another alphabet keeps every letter.
        let other = regex_lite(&narration("東京の雨 Paris"));
        assert!(other("In Paris, اسم بازرکتب, the rain falls on the river."));
        // Every field of a nested constraint is rewritten.
        let nested = in_topic_letters(
            object_schema(Picture::properties(
                "Paris",
                &["paris".into()],
                &["dawn light"],
            )),
            "Paris",
        );
        assert!(!nested.to_string().contains("\\p{L}"), "{nested}");
    }

    fn regex_lite(schema: &serde_json::Value) -> impl Fn(&str) -> bool + use<> {
        let re = regex::RegexBuilder::new(schema["pattern"].as_str().unwrap())
            .size_limit(1 << 28)
            .build()
            .unwrap();
        move |s| re.is_match(s)
    }
}
