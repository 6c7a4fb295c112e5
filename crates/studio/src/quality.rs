//! What makes a storyboard worth narrating, measured: scenes that do not repeat each other,
//! narration about the topic, image prompts that describe a picture instead of copying the
//! narration, and text without markup, paths or bracketed years.
//!
//! The scenes stage uses these checks to resample a scene that fails them, and `baton bench
//! scenes` reports them over a list of topics, so the figures in docs/scenes.md and the
//! generator's own judgement are the same code.

use std::collections::HashSet;

use crate::storyboard::{Scene, Storyboard};

/// Scenes whose narrations share this share of word trigrams (or more) repeat each other.
pub const MAX_OVERLAP: f64 = 0.5;

/// Words that say nothing of a topic.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "from", "into", "onto", "about", "over", "under", "after",
    "before", "that", "this", "these", "those", "its", "their", "his", "her", "our", "your",
    "last", "first", "what", "when", "where", "how", "why", "who", "was", "were", "are", "has",
    "have", "had", "but", "not", "all", "one", "two", "out", "off", "via", "per", "than", "then",
    "a", "an", "of", "in", "on", "at", "to", "by", "as", "or", "is", "it", "be",
];

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

fn trigrams(text: &str) -> HashSet<[String; 3]> {
    let w = words(text);
    w.windows(3)
        .map(|t| [t[0].clone(), t[1].clone(), t[2].clone()])
        .collect()
}

/// The share of word trigrams two texts have in common, over the smaller text's trigrams
/// (0 when either has none): 1.0 when one repeats the other.
pub fn trigram_overlap(a: &str, b: &str) -> f64 {
    let (a, b) = (trigrams(a), trigrams(b));
    let smaller = a.len().min(b.len());
    if smaller == 0 {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / smaller as f64
}

/// The highest trigram overlap between any two scenes' narrations.
pub fn max_overlap(scenes: &[Scene]) -> f64 {
    let mut worst = 0.0f64;
    for (i, a) in scenes.iter().enumerate() {
        for b in &scenes[i + 1..] {
            worst = worst.max(trigram_overlap(&a.narration, &b.narration));
        }
    }
    worst
}

/// The words of `topic` that say what it is about (no stopwords, at least three letters).
pub fn content_words(topic: &str) -> Vec<String> {
    words(topic)
        .into_iter()
        .filter(|w| is_content_word(w))
        .collect()
}

/// True when `word` (in lower case) is a content word: three letters or more, and none of the
/// [`STOPWORDS`].
pub fn is_content_word(word: &str) -> bool {
    word.chars().count() >= 3 && !STOPWORDS.contains(&word)
}

/// `word` and, when it is a plural, its singular; when it is a singular in -y, its plural in
/// -ies ([`plural_endings`] says which endings each may take). A narration may then say "a
/// volcano" for "How volcanoes form" and "butterflies" for "The life of a monarch butterfly",
/// where only "volcanoes" and "butterflys" were open to it (SmolLM2 named "form" instead).
pub fn number_forms(word: &str) -> Vec<String> {
    let mut forms = vec![word.to_string()];
    if let Some(stem) = word.strip_suffix("ies").filter(|s| s.len() >= 2) {
        forms.push(format!("{stem}y"));
    } else if let Some(stem) = ["oes", "ches", "shes", "xes", "sses"]
        .iter()
        .find(|end| word.ends_with(*end))
        .map(|_| &word[..word.len() - 2])
    {
        forms.push(stem.to_string());
    } else if let Some(stem) = word
        .strip_suffix('s')
        .filter(|s| s.len() >= 3 && !s.ends_with(['s', 'u', 'i']))
    {
        forms.push(stem.to_string());
    } else if let Some(stem) = word.strip_suffix('y').filter(|_| consonant_y(word)) {
        forms.push(format!("{stem}ies"));
    }
    forms
}

/// Whether `word` ends in a consonant and -y ("bakery", not "day"), whose plural is in -ies.
fn consonant_y(word: &str) -> bool {
    word.strip_suffix('y')
        .and_then(|stem| stem.chars().last())
        .is_some_and(|c| c.is_alphabetic() && !"aeiou".contains(c))
}

/// The plural's endings a form of a word ([`number_forms`]) may take, `|` between them: none
/// for one that ends in -s or in a consonant and -y (a plural, or a singular whose plural is
/// another form: "bakery", "bakeries"; SmolLM2 wrote "bakeriess" when any form took one), -es
/// after -ss, -x, -z, -ch and -sh, either after -o, else -s.
pub fn plural_endings(form: &str) -> &'static str {
    if ["ss", "x", "z", "ch", "sh"]
        .iter()
        .any(|e| form.ends_with(e))
    {
        "es"
    } else if form.ends_with('s') || consonant_y(form) {
        ""
    } else if form.ends_with('o') {
        "s|es"
    } else {
        "s"
    }
}

/// The ways `word` (the topic's) may be written: each of its [`number_forms`], as it is or with
/// its [`plural_endings`] (a possessive's "'s" left off), in lower case.
fn written_forms(word: &str) -> Vec<String> {
    let word = word.to_lowercase();
    number_forms(word.strip_suffix("'s").unwrap_or(&word))
        .into_iter()
        .flat_map(|f| {
            std::iter::once(String::new())
                .chain(
                    plural_endings(&f)
                        .split('|')
                        .filter(|e| !e.is_empty())
                        .map(str::to_string),
                )
                .map(move |end| format!("{f}{end}"))
        })
        .collect()
}

/// True when `written` (a word in lower case, without a possessive) is one of the ways `word`
/// may be written ([`written_forms`]: "volcano" for "volcanoes", "butterflies" for
/// "butterfly"), or, when `partial`, the beginning of one. Not a word glued on: "lifeofa" is
/// not "life".
pub fn is_form_of(written: &str, word: &str, partial: bool) -> bool {
    written_forms(word)
        .iter()
        .any(|f| f == written || (partial && f.starts_with(written)))
}

/// True when `text` uses `word` or an obvious form of it (`lighthouse`, `lighthouses`,
/// `keeper's`): a word of the text that starts with the word's first letters.
fn uses(text: &[String], word: &str) -> bool {
    let stem: String = word
        .chars()
        .take(word.chars().count().clamp(3, 6))
        .collect();
    text.iter().any(|w| w.starts_with(&stem))
}

/// True when the narration uses at least one of the topic's content words (any, when the
/// topic has none).
pub fn mentions_topic(board: &Storyboard) -> bool {
    let wanted = content_words(&board.topic);
    let said: Vec<String> = board
        .scenes
        .iter()
        .flat_map(|s| words(&s.narration))
        .collect();
    wanted.is_empty() || wanted.iter().any(|w| uses(&said, w))
}

/// True when a scene's image prompt is its narration, or a piece of it, instead of a picture.
pub fn prompt_copies_narration(scene: &Scene) -> bool {
    let norm = |t: &str| words(t).join(" ");
    let (prompt, narration) = (norm(&scene.image_prompt), norm(&scene.narration));
    !prompt.is_empty() && narration.contains(&prompt)
}

/// True when `text` has all of `phrase`'s words, in its order and one after another (letter
/// case and punctuation aside): "The end of the dream. The Tokyo Tower…" quotes "The End of the
/// Dream".
pub fn quotes(text: &str, phrase: &str) -> bool {
    let (text, phrase) = (words(text), words(phrase));
    !phrase.is_empty() && text.windows(phrase.len()).any(|w| w == phrase.as_slice())
}

/// `text`'s [`words`] without a leading article.
fn words_past_article(text: &str) -> Vec<String> {
    let mut w = words(text);
    if w.first()
        .is_some_and(|f| ["a", "an", "the"].contains(&f.as_str()))
    {
        w.remove(0);
    }
    w
}

/// True when two phrases are one (letter case, punctuation and a leading article aside): "a
/// floating metropolis" and "Floating Metropolis".
pub fn same_phrase(a: &str, b: &str) -> bool {
    let a = words_past_article(a);
    !a.is_empty() && a == words_past_article(b)
}

/// True when `title` is the topic's own words, as [`quotes`] tells, its leading article aside:
/// "The Street Food Market" for "A street food market in Bangkok". Such a title is named by
/// every narration that names the topic, not read out.
pub fn borrows(topic: &str, title: &str) -> bool {
    quotes(topic, &words_past_article(title).join(" "))
}

/// Words that make an image prompt a sentence told to someone, not a picture: a personal
/// pronoun has no one to point at in a picture ("I am in love with him, my fatherland").
const PRONOUNS: &[&str] = &[
    "i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "we", "us", "our", "they",
    "them", "their", "it's", "i'm", "you're", "they're", "he's", "she's", "we're",
];

/// True when an image prompt reads as a sentence rather than a picture: it has a sentence mark
/// or a personal pronoun (`scripts/scenes-words.py` counts the same).
pub fn reads_as_sentence(prompt: &str) -> bool {
    prompt.contains(['.', '!', '?', ';'])
        || words(prompt).iter().any(|w| PRONOUNS.contains(&w.as_str()))
}

/// Clauses of a narration that fill words instead of saying something: a clause of one word
/// after a comma ("Tokyo has its own. Golden, stars, a.") and, after a sentence's first
/// clause, the topic standing alone between commas ("The train was running, the lights,
/// Cyberpunk Tokyo, her eyes"): how a small model names the topic where it does not fit.
/// `scripts/scenes-words.py` counts the same.
pub fn filler_clauses(narration: &str, topic: &str) -> usize {
    let topic = content_words(topic);
    narration
        .split(['.', '!', '?'])
        .flat_map(|sentence| sentence.split([',', ';', ':']).skip(1))
        .map(words)
        .filter(|w| w.len() == 1 || (!w.is_empty() && w.iter().all(|w| topic.contains(w))))
        .count()
}

/// Words that may come twice around one other ("day by day", "face to face", "again and
/// again"): no [`stutters`].
const REPEATING_JOINS: &[&str] = &["by", "after", "to", "and", "upon"];

/// Places where a narration says the same word twice in a row, or twice around one other word
/// ("Tokyo's Tokyo's after dark", "Tokyo from Tokyo"), a possessive or a plural's ending
/// aside: how a small model held to name its topic early fills the words it did not have.
/// Words of the [`STOPWORDS`] ("the day the bees") and short words are not counted, nor a
/// word that begins the next sentence.
/// `scripts/scenes-words.py` counts the same.
pub fn stutters(narration: &str) -> usize {
    // Within a sentence: "Tokyo wakes. Tokyo sleeps." says it twice on purpose.
    narration
        .split(['.', '!', '?'])
        .map(|sentence| {
            let stems: Vec<String> = words(sentence)
                .into_iter()
                .map(|w| {
                    let w = w.strip_suffix("'s").unwrap_or(&w);
                    w.strip_suffix('s').unwrap_or(w).to_string()
                })
                .collect();
            (0..stems.len())
                .filter(|&i| {
                    let w = stems[i].as_str();
                    is_content_word(w)
                        && (stems.get(i + 1).is_some_and(|n| n == w)
                            || stems.get(i + 2).is_some_and(|n| n == w)
                                && !REPEATING_JOINS.contains(&stems[i + 1].as_str()))
                })
                .count()
        })
        .sum()
}

/// Words no storyboard says, in any word that holds them: slurs and profanity with no
/// innocent word around them. SmolLM2 titled a scene of "A jazz club in 1920s New York" with a
/// racial slur.
const UNSAYABLE_INSIDE: &[&str] = &[
    "fuck", "nigger", "nigga", "cunt", "shit", "faggot", "bitch", "whore", "asshole", "arsehole",
    "dickhead", "wanker",
];

/// Words no storyboard says as a whole word (or its plural): slurs and profanity that are
/// letters of innocent words ("coon" of "raccoon", "jap" of "Japan", "negro" of "Negroni").
const UNSAYABLE_WORDS: &[&str] = &[
    "negro",
    "negress",
    "chink",
    "spic",
    "spick",
    "kike",
    "gook",
    "wetback",
    "coon",
    "retard",
    "retarded",
    "tranny",
    "fag",
    "slut",
    "dyke",
    "beaner",
    "raghead",
    "towelhead",
    "jap",
    "paki",
    "twat",
    "bastard",
    "piss",
    "pissed",
    "bollocks",
];

/// True when a word (letters only, lower case) is one no storyboard says: it holds one of
/// [`UNSAYABLE_INSIDE`] ("motherfucker") or is one of [`UNSAYABLE_WORDS`] or its plural. Only
/// whole words: the beginning of one is often the beginning of an innocent word too ("moth",
/// "Dickens", "arsenal", "niggle").
pub fn unsayable(word: &str) -> bool {
    UNSAYABLE_INSIDE.iter().any(|u| word.contains(u))
        || UNSAYABLE_WORDS.iter().any(|u| {
            word.strip_prefix(u)
                .is_some_and(|rest| ["", "s", "es"].contains(&rest))
        })
}

/// Whether a token's letters (`letters`, lower case) could be part of a word [`unsayable`]
/// tells: one of those words holds them, or they hold one.
pub fn could_be_unsayable(letters: &str) -> bool {
    !letters.is_empty()
        && UNSAYABLE_INSIDE
            .iter()
            .chain(UNSAYABLE_WORDS)
            .any(|u| u.contains(letters) || letters.contains(u))
}

/// Tokens a model's tokenizer splits a word into (after a space) from which the word counts as
/// [`coined`]: SmolLM2's 49k pieces make 98.6% of the dictionary words its storyboards used one
/// or two, and most of the words it invented three or more ("k|ok|oro", "life|of|a").
pub const COINED_PIECES: usize = 3;

/// The words of `text` that `pieces` (a tokenizer's count of a word's tokens after a space)
/// splits into [`COINED_PIECES`] or more: words a small model made up or glued together under
/// its penalties ("the old kokoro", "lifeofa", "beekeepers'l"), since its tokenizer was built
/// from the words people write. Each part between hyphens is a word; a possessive's "'s" or
/// "'" is left off; capitalised words (names: "Kaito", "Nexus", and every word of a title) and
/// the words of `keep` (the topic's, which may be rare: "wildebeest") in
/// their forms ([`is_form_of`]: "volcano" for "volcanoes") are not counted.
pub fn coined(text: &str, keep: &[String], pieces: impl Fn(&str) -> usize) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .flat_map(|w| w.split('-'))
        .map(|w| w.trim_matches('\''))
        .map(|w| w.strip_suffix("'s").unwrap_or(w))
        // A name may be made up: a story's people and places are.
        .filter(|w| w.chars().next().is_some_and(char::is_lowercase))
        .filter(|w| {
            let lower = w.to_lowercase();
            !keep.iter().any(|k| is_form_of(&lower, k, false))
        })
        .filter(|w| pieces(w) >= COINED_PIECES)
        .map(str::to_string)
        .collect()
}

/// Words nearly every English sentence has, and few in other languages written in the same
/// letters.
const ENGLISH_WORDS: &[&str] = &[
    "the", "and", "of", "is", "are", "was", "were", "with", "his", "her", "their", "its", "this",
    "that", "from", "into", "to", "at", "by", "it", "he", "she", "they", "we", "you", "in", "an",
    "for",
];

/// True when `text` has none of the words nearly every English sentence has. Asked for "A
/// rainy day in Paris", SmolLM2 planned one outline in French ("La Vie en Rose, la ville
/// dayes le marché dans un café, et les amis sont l'amour.").
pub fn not_english(text: &str) -> bool {
    !words(text)
        .iter()
        .any(|w| ENGLISH_WORDS.contains(&w.as_str()))
}

/// Characters that make text markup, a path or a placeholder rather than words to be read.
pub const MARKUP: &[char] = &[
    '<', '>', '[', ']', '{', '}', '/', '\\', '|', '#', '*', '_', '~', '`', '@', '^', '=',
];

/// True when `text` holds markup, a path, an HTML entity or a bracketed year: what no one
/// reads aloud or prints on a title card.
pub fn has_markup(text: &str) -> bool {
    if text.contains(MARKUP) || text.contains("&#") || text.contains("http") {
        return true;
    }
    // (2019), [1999]: a year in brackets the topic did not ask for.
    let chars: Vec<char> = text.chars().collect();
    chars.windows(6).any(|w| {
        matches!(w[0], '(' | '[')
            && w[1..5].iter().all(char::is_ascii_digit)
            && matches!(w[5], ')' | ']')
    })
}

/// The quality figures of one storyboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    /// The highest trigram overlap between two scenes' narrations.
    pub max_overlap: f64,
    pub mentions_topic: bool,
    /// Scenes whose image prompt copies their narration.
    pub copied_prompts: usize,
    /// Titles and narrations with markup, paths or bracketed years.
    pub markup: usize,
}

impl Quality {
    pub fn of(board: &Storyboard) -> Quality {
        Quality {
            max_overlap: max_overlap(&board.scenes),
            mentions_topic: mentions_topic(board),
            copied_prompts: board
                .scenes
                .iter()
                .filter(|s| prompt_copies_narration(s))
                .count(),
            markup: std::iter::once(&board.title)
                .chain(board.scenes.iter().flat_map(|s| [&s.title, &s.narration]))
                .filter(|t| has_markup(t))
                .count(),
        }
    }

    /// True when the storyboard passes every check.
    pub fn good(&self) -> bool {
        self.max_overlap < MAX_OVERLAP
            && self.mentions_topic
            && self.copied_prompts == 0
            && self.markup == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene(narration: &str, prompt: &str) -> Scene {
        Scene {
            index: 1,
            title: "A".into(),
            narration: narration.into(),
            image_prompt: prompt.into(),
            duration_seconds: 5.0,
        }
    }

    #[test]
    fn repeated_narration_is_caught_and_different_narration_is_not() {
        let a = "The lighthouses are a beacon of light and light is a beacon of light.";
        assert!(trigram_overlap(a, a) > 0.99);
        let b = "The lighthouses are a beacon of light and light is a beacon of hope tonight.";
        assert!(trigram_overlap(a, b) >= MAX_OVERLAP);
        let c = "At dawn the keeper climbs the stairs one last time and puts out the lamp.";
        assert!(trigram_overlap(a, c) < 0.1);
        assert_eq!(trigram_overlap("two words", a), 0.0);
    }

    #[test]
    fn the_topic_is_found_in_its_obvious_forms() {
        let board = |narration: &str| Storyboard {
            topic: "A lighthouse keeper's last night".into(),
            title: "T".into(),
            scenes: vec![scene(narration, "a lamp")],
        };
        assert_eq!(
            content_words("A lighthouse keeper's last night"),
            ["lighthouse", "keeper's", "night"]
        );
        assert!(mentions_topic(&board("The lighthouses stand dark.")));
        assert!(mentions_topic(&board("Old keepers never sleep.")));
        assert!(!mentions_topic(&board("The city of the dead awaits.")));
    }

    #[test]
    fn quotes_and_pictures_told_as_sentences_are_caught() {
        let title = "The End of the Dream";
        assert!(quotes(
            "The end of the dream. The Tokyo Tower is a shadow.",
            title
        ));
        // All the words, but not one after another.
        assert!(!quotes("The dream of the end came at last.", title));
        assert!(!quotes("Anything at all.", ""));
        assert!(reads_as_sentence("I am in love with him, my fatherland"));
        assert!(reads_as_sentence("They're happy, but when"));
        assert!(reads_as_sentence("a lamp. The end"));
        assert!(!reads_as_sentence(
            "a lighthouse keeper climbing the stairs, a stone tower, lamplight"
        ));
        // A word that only starts like a pronoun is no pronoun.
        assert!(!reads_as_sentence(
            "heron in the shallows, a theme park, usual light"
        ));
    }

    #[test]
    fn one_word_clauses_and_the_topic_between_commas_are_filler() {
        let topic = "Cyberpunk Tokyo";
        for (narration, filler) in [
            ("The neon rain falls on Tokyo, and the city wakes.", 0),
            (
                "Cyberpunk Tokyo, a city that never sleeps, glows in the rain.",
                0,
            ),
            ("Tokyo, the capital of Japan, stands before it.", 0),
            (
                "The train was running, the lights, Cyberpunk Tokyo, her eyes.",
                1,
            ),
            (
                "The crate gets dragged, cyberpunk tokyo, and begins its journey.",
                1,
            ),
            ("Tokyo has its own. Golden, stars, a.", 2),
            ("It is late, Tokyo. The end.", 1),
        ] {
            assert_eq!(filler_clauses(narration, topic), filler, "{narration}");
        }
    }

    #[test]
    fn a_word_said_twice_in_a_row_or_around_one_other_stutters() {
        for (narration, count) in [
            ("The world has changed, Tokyo's Tokyo's after dark.", 1),
            ("The old woman, Tokyo from Tokyo, speaks to us.", 1),
            ("Lanterns, lantern light and lanterns again.", 1),
            ("Day by day and face to face, again and again.", 0),
            ("The day the bees make honey, and the bees rest.", 0),
            ("Tokyo wakes. Tokyo sleeps. Tokyo dreams.", 0),
        ] {
            assert_eq!(stutters(narration), count, "{narration}");
        }
    }

    #[test]
    fn phrases_are_one_whatever_their_case_marks_and_article() {
        assert!(super::same_phrase(
            "a floating metropolis",
            "Floating Metropolis"
        ));
        assert!(super::same_phrase("The Tokyo skyline.", "tokyo skyline"));
        assert!(!super::same_phrase(
            "a floating metropolis",
            "a floating city"
        ));
        assert!(!super::same_phrase("the", "a"));
        assert!(!super::same_phrase("", ""));
    }

    #[test]
    fn slurs_and_profanity_are_unsayable_but_the_words_that_hold_their_letters_are_not() {
        use super::{could_be_unsayable, unsayable};
        for word in [
            "nigger",
            "niggers",
            "fucking",
            "motherfucker",
            "negro",
            "negroes",
            "coon",
        ] {
            assert!(unsayable(word), "{word}");
        }
        for word in [
            "negroni",
            "raccoon",
            "japan",
            "japanese",
            "spice",
            "scoundrel",
            "dyked",
            "mother",
            "moth",
            "dickens",
            "arsenal",
            "niggle",
        ] {
            assert!(!unsayable(word), "{word}");
        }
        assert!(could_be_unsayable("igger"));
        assert!(could_be_unsayable("fucking"));
        assert!(!could_be_unsayable("tokyo"));
        assert!(!could_be_unsayable(""));
    }

    #[test]
    fn a_title_borrows_the_topics_words_whatever_its_article() {
        let topic = "A street food market in Bangkok";
        assert!(super::borrows(topic, "The Street Food Market"));
        assert!(super::borrows(topic, "A Street Food Market in"));
        assert!(super::borrows(topic, "Bangkok"));
        assert!(!super::borrows(topic, "The Market at Dawn"));
        assert!(!super::borrows(topic, "The"));
    }

    #[test]
    fn a_word_split_into_three_pieces_or_more_is_coined_unless_it_is_the_topics() {
        // A stand-in tokenizer: a piece for every four letters.
        let pieces = |w: &str| w.chars().count().div_ceil(4);
        let keep = vec![
            "wildebeests".to_string(),
            "volcanoes".to_string(),
            "butterfly".to_string(),
        ];
        // The topic's words in their forms are not counted, a word glued onto one is.
        assert_eq!(
            coined(
                "The old kokorosanda's lifeofagoodday, the wildebeest's volcano, butterflies, \
                 wildebeestsherds at sunrise.",
                &keep,
                pieces
            ),
            vec!["kokorosanda", "lifeofagoodday", "wildebeestsherds"]
        );
        // Hyphens part words; a possessive's ending and quote marks are left off.
        assert_eq!(
            coined("an end-ofkyotownsx 'sunrises' people's'", &keep, pieces),
            vec!["ofkyotownsx"]
        );
        assert!(coined("", &keep, pieces).is_empty());
        assert!(coined("A quiet street at dawn.", &keep, pieces).is_empty());
        // Names are not counted.
        assert!(coined("Akakurasandai met Kaitoyamadashi.", &keep, pieces).is_empty());
    }

    #[test]
    fn a_line_without_the_words_english_cannot_do_without_is_not_english() {
        assert!(not_english(
            "La Vie en Rose, la ville dayes le marché dans un café, et les amis sont l'amour."
        ));
        assert!(not_english("Bienvenue au Louvre, voici le café."));
        assert!(!not_english("The fog rolls in over the Paris sky."));
        assert!(!not_english("Rain falls on Paris as it wakes."));
    }

    #[test]
    fn prompts_that_copy_the_narration_and_markup_are_caught() {
        assert!(prompt_copies_narration(&scene(
            "Rain falls on neon streets at night.",
            "neon streets"
        )));
        assert!(!prompt_copies_narration(&scene(
            "Rain falls on neon streets at night.",
            "a wet street, neon signs, night, cinematic"
        )));
        for bad in [
            "Lighthouse keeper at dawn (2019)",
            "]",
            "/lighthouse.jpg",
            "<img src=",
            "&#39;s",
            "**bold**",
        ] {
            assert!(has_markup(bad), "{bad}");
        }
        for fine in [
            "Dawn at the lighthouse",
            "Tom & Jerry's last night",
            "It's 1999, and rain falls.",
        ] {
            assert!(!has_markup(fine), "{fine}");
        }
    }
}
