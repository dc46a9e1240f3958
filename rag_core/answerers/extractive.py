"""The extractive answerer: the sentences that share the most (IDF-weighted) terms with the question, each
cited with its source's number."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from rag_core.prompt import PromptSource
from rag_core.sentences import split_sentences

WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an and are as at be by can do does for from has have how in is it its of on or that the this to was
    were what when where which who why will with not no""".split()
)
NO_ANSWER = "The retrieved sources do not contain an answer to this question."


def stem(word: str) -> str:
    """A light suffix stripper so `keyed`, `keys` and `key` meet; enough for sentence matching."""
    for suffix in ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
    return word


def content_words(text: str) -> list[str]:
    """The words that carry meaning: lowercased, no stopwords, no single letters."""
    return [word for word in WORD.findall(text.lower()) if word not in STOPWORDS and len(word) > 1]


def content_terms(text: str) -> list[str]:
    """The content words, lightly stemmed."""
    return [stem(word) for word in content_words(text)]


def _is_statement(sentence: str) -> bool:
    """A sentence worth quoting: not a heading (short and without final punctuation)."""
    words = len(sentence.split())
    return words >= 4 and (sentence[-1] in ".!?;:)" or words >= 10)


def extractive_answer(question: str, sources: Sequence[PromptSource], max_sentences: int = 3) -> str:
    """The sentences that share the most (IDF-weighted) terms with the question, each cited. A flagged
    source is never quoted: this answerer cannot be told to distrust it."""
    candidates = [
        (source.number, sentence)
        for source in sources
        if not source.flags
        for sentence in split_sentences(source.chunk.text)
        if _is_statement(sentence)
    ]
    if not candidates:
        return NO_ANSWER
    document_frequency = Counter(term for _, sentence in candidates for term in set(content_terms(sentence)))
    question_terms = set(content_terms(question))

    def score(item: tuple[int, str]) -> float:
        terms = set(content_terms(item[1]))
        overlap = sum(math.log(1 + len(candidates) / document_frequency[t]) for t in terms & question_terms)
        # The retriever read whole passages and ranked them: a sentence of an earlier source is more likely the
        # answer than one sharing a word or two further down (1/√rank: chosen on SciFact train claims in
        # evals/bench_answers.py; word overlap alone quoted off-topic sentences first).
        return overlap / math.sqrt((len(terms) + 1) * item[0]) if overlap else 0.0

    ranked = sorted(enumerate(candidates), key=lambda pair: (-score(pair[1]), pair[0]))
    chosen = [index for index, item in ranked[:max_sentences] if score(item) > 0]
    if not chosen:
        return NO_ANSWER
    return " ".join(
        f"{candidates[i][1].rstrip()} [{candidates[i][0]}]" for i in sorted(chosen, key=lambda i: (candidates[i][0], i))
    )


def words(text: str) -> Iterator[str]:
    """`text` in word-sized pieces (each with its trailing space): how a local answer is streamed."""
    for match in re.finditer(r"\S+\s*", text):
        yield match.group(0)


class ExtractiveAnswerer:
    """`extractive/…`: nothing to load."""

    def warm_up(self) -> None:
        return None

    def run(self, question: str, sources: Sequence[PromptSource]) -> str:
        return extractive_answer(question, sources)

    def stream(self, question: str, sources: Sequence[PromptSource]) -> Iterator[str]:
        yield from words(self.run(question, sources))
