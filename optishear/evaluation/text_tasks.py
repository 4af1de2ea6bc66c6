"""Three offline downstream tasks built from plain text, reproducibly, for lm-eval.

The hub's tasks are out of reach offline, and a hand-written 100-item task cannot separate two
pruned models (its standard error is ~4 points). These are built from any text (by default the
bundled Wikipedia sample's evaluation articles, which no pruning ever reads) with a seed:

- `optishear_lastword`: a passage's last word, predicted greedily (LAMBADA's protocol): only
  words that occur earlier in the passage, so the context decides them; `acc` and perplexity.
- `optishear_wordchoice`: a word of a sentence among four of similar corpus frequency; the
  three others occur nowhere in the prompt; `acc`, `acc_norm`.
- `optishear_nextsentence`: the sentence that follows a passage, among four of similar length
  (the three others from other documents); `acc`, `acc_norm`.

`optishear_text` is the group of the three. Each task's items come from disjoint sentences of
its own, plus a few more as a few-shot split. The folder written holds lm-eval YAMLs and JSONL
files, and a manifest that names the text's digest: the same text and seed give the same items
(`text_task_files`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from optishear.core.errors import ConfigError, DataError

LASTWORD = "optishear_lastword"
WORDCHOICE = "optishear_wordchoice"
NEXTSENTENCE = "optishear_nextsentence"
GROUP = "optishear_text"
TASKS = (LASTWORD, WORDCHOICE, NEXTSENTENCE)
FORMAT = 1  # bump when the items a text and seed give change
FEWSHOT = 16  # items per task kept apart as worked examples
MIN_ITEMS = 50  # fewer gives a standard error that separates nothing

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"^[A-Za-z]+$")
_LOWER_WORD = re.compile(r"^[a-z]{4,}$")
# Function words carry syntax, not content: a choice among them tests grammar alone.
_STOPWORDS = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "also",
        "among",
        "another",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "from",
        "further",
        "have",
        "having",
        "here",
        "into",
        "itself",
        "just",
        "many",
        "more",
        "most",
        "much",
        "must",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "upon",
        "very",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "whom",
        "whose",
        "will",
        "with",
        "within",
        "without",
        "would",
        "your",
    ]
)


@dataclass(frozen=True, slots=True)
class TextTaskSpec:
    """Which text the tasks come from and how many items each task holds."""

    source: str = "wiki"  # as load_texts takes it; its evaluation split for 'wiki'
    items: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.items, int) or isinstance(self.items, bool):
            raise ConfigError(f"task items must be an integer, got {self.items!r}")
        if self.items < MIN_ITEMS:
            raise ConfigError(f"task items must be >= {MIN_ITEMS}, got {self.items}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"task seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True, slots=True)
class _Sentence:
    doc: int
    para: int
    index: int  # within its paragraph
    text: str


def split_sentences(docs: Sequence[str]) -> list[list[list[str]]]:
    """Per document, per paragraph, its sentences; lines without an ending (headings) dropped."""
    out = []
    for doc in docs:
        paras = []
        for line in doc.split("\n"):
            line = " ".join(line.split())
            if not line.endswith((".", "!", "?")):
                continue
            paras.append([s for s in _SENTENCE_END.split(line) if s])
        out.append(paras)
    return out


def _sentences(docs: list[list[list[str]]]) -> Iterator[_Sentence]:
    for d, paras in enumerate(docs):
        for p, sents in enumerate(paras):
            for i, s in enumerate(sents):
                yield _Sentence(d, p, i, s)


def _before(docs: list[list[list[str]]], s: _Sentence, max_words: int) -> list[str]:
    """The words of the sentences before `s` in its paragraph, the last `max_words` of them."""
    words = " ".join(docs[s.doc][s.para][: s.index]).split()
    return words[-max_words:]


def _strip(word: str) -> str:
    return word.strip(".,;:!?\"'()[]")


def _last_word(docs: list[list[list[str]]], s: _Sentence) -> dict[str, str] | None:
    words = s.text.split()
    if len(words) < 4 or not words[-1].endswith(".") or not _WORD.match(words[-1][:-1]):
        return None
    target = words[-1][:-1]
    if len(target) < 3:
        return None
    context = [*_before(docs, s, 120), *words[:-1]]
    if len(context) < 40 or target not in {_strip(w) for w in context}:
        return None
    return {"context": " ".join(context), "target": target}


class _Vocabulary:
    """Content words by corpus frequency: distractors come from a target's neighbours in rank."""

    def __init__(self, sentences: Sequence[_Sentence]) -> None:
        counts = Counter(
            w for s in sentences for w in map(_strip, s.text.split()) if _LOWER_WORD.match(w)
        )
        self.words = [w for w, _ in counts.most_common() if w not in _STOPWORDS]
        self.rank = {w: i for i, w in enumerate(self.words)}

    def distractors(
        self, target: str, avoid: set[str], k: int, rng: random.Random
    ) -> list[str] | None:
        r = self.rank[target]
        for width in (25, 100, 400):
            near = [w for w in self.words[max(0, r - width) : r + width + 1] if w not in avoid]
            if len(near) >= k:
                return rng.sample(near, k)
        return None


def _word_choice(
    docs: list[list[list[str]]], s: _Sentence, vocab: _Vocabulary, rng: random.Random
) -> dict[str, object] | None:
    words = s.text.split()
    spots = [
        i
        for i in range(4, len(words) - 1)
        if words[i] == _strip(words[i]) and words[i] in vocab.rank
    ]
    if not spots:
        return None
    i = rng.choice(spots)
    prompt = [*_before(docs, s, 40), *words[:i]]
    avoid = {_strip(w).lower() for w in [*prompt, *words]}
    others = vocab.distractors(words[i], avoid, 3, rng)
    if others is None:
        return None
    return _shuffled(" ".join(prompt), words[i], others, rng)


def _shuffled(prompt: str, answer: str, others: list[str], rng: random.Random) -> dict[str, object]:
    choices = [answer, *others]
    rng.shuffle(choices)
    return {"prompt": prompt, "choices": choices, "answer": choices.index(answer)}


def _next_sentence(
    docs: list[list[list[str]]],
    s: _Sentence,
    by_length: dict[int, list[_Sentence]],
    rng: random.Random,
) -> dict[str, object] | None:
    n = len(s.text.split())
    context = _before(docs, s, 80)
    if s.index == 0 or not 8 <= n <= 40 or len(context) < 15:
        return None
    pool = [
        o.text
        for length in range(int(n * 0.8), int(n * 1.25) + 1)
        for o in by_length.get(length, ())
        if o.doc != s.doc
    ]
    others = sorted(set(pool) - {s.text})
    if len(others) < 3:
        return None
    return _shuffled(" ".join(context), s.text, rng.sample(others, 3), rng)


def build_items(
    docs: Sequence[str], spec: TextTaskSpec
) -> dict[str, tuple[list[dict[str, object]], list[dict[str, object]]]]:
    """Per task, its (test, few-shot) items; each sentence serves one task at most.

    Raises DataError when the text gives too few items for `spec.items` in some task.
    """
    split = split_sentences(docs)
    sentences = list(_sentences(split))
    rng = random.Random(spec.seed)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    vocab = _Vocabulary(sentences)
    by_length: dict[int, list[_Sentence]] = {}
    for s in sentences:
        by_length.setdefault(len(s.text.split()), []).append(s)
    makers: dict[str, Callable[[_Sentence], dict[str, object] | None]] = {
        LASTWORD: lambda s: _last_word(split, s),
        WORDCHOICE: lambda s: _word_choice(split, s, vocab, rng),
        NEXTSENTENCE: lambda s: _next_sentence(split, s, by_length, rng),
    }
    want = spec.items + FEWSHOT
    found: dict[str, list[tuple[int, dict[str, object]]]] = {t: [] for t in TASKS}
    for k in order:  # the scarcest task (the last word) picks first
        for task in TASKS:
            if len(found[task]) < want and (item := makers[task](sentences[k])) is not None:
                found[task].append((k, item))
                break
    short = {t: len(v) for t, v in found.items() if len(v) < want}
    if short:
        raise DataError(
            f"the text gives too few task items for {spec.items} per task (+{FEWSHOT} "
            f"worked examples): {', '.join(f'{t} {n}' for t, n in short.items())}; "
            "use a longer text or fewer items"
        )
    out = {}
    for task, rows in found.items():
        test = [item for _, item in sorted(rows[: spec.items], key=lambda r: r[0])]
        shots = [item for _, item in rows[spec.items :]]
        out[task] = ([{"id": i, **r} for i, r in enumerate(test)], shots)
    return out


def wants_text_tasks(names: Sequence[str]) -> bool:
    return any(n in (*TASKS, GROUP) for n in names)
