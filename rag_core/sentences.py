"""Sentences of a passage, for answers that quote them: Wikimedia's sentencex segmenter over paragraphs.

Parsed text keeps the line breaks of its source: Markdown and plain text are hard-wrapped, a PDF breaks
every printed line. A line break is not a sentence boundary, so a paragraph goes to the segmenter whole and
each sentence comes back on one line. sentencex knows abbreviations ("e.g.", "Fig. 2", "U.S."), but not
every full stop glued to the next sentence ("…with CD33.These 2 proteins…", common in SciFact abstracts):
those get their space back first.
"""

from __future__ import annotations

import re

from sentencex import segment

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A full stop after a lower-case word, a number or a bracket, then a capitalised word: the end of a
# sentence. An upper-case letter before it ("U.S.Army", "E.Coli") is an abbreviation or initial, left as is.
GLUED_STOP = re.compile(r"(?<=[a-z0-9%)\]])\.(?=[A-Z][a-z])")
SENTENCE_END = ".!?:;,)"
# A short line without final punctuation before a line that starts with a capital is a heading (a PDF's
# title line, an HTML <h2>), not a wrapped sentence, unless it ends on a word a sentence goes on after.
HEADING_MAX_WORDS = 8
CONTINUES = frozenset("a an and as at by for from in into of on or the to with".split())


def _is_heading(line: str, next_line: str) -> bool:
    words = line.split()
    return (
        0 < len(words) <= HEADING_MAX_WORDS
        and line[0].isupper()
        and line[-1] not in SENTENCE_END
        and words[-1].lower() not in CONTINUES
        and next_line[:1].isupper()
    )


def _blocks(paragraph: str) -> list[str]:
    """The paragraph's lines joined into runs of prose, a heading line on its own."""
    lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
    blocks: list[list[str]] = []
    for index, line in enumerate(lines):
        after_heading = index > 0 and _is_heading(lines[index - 1], line)
        if not blocks or after_heading:
            blocks.append([])
        blocks[-1].append(line)
    return [" ".join(block) for block in blocks]


def split_sentences(text: str, language: str = "en") -> list[str]:
    """The sentences of `text` in order, each on one line with single spaces."""
    return [
        " ".join(sentence.split())
        for paragraph in PARAGRAPH_BREAK.split(text)
        for block in _blocks(paragraph)
        for sentence in segment(language, GLUED_STOP.sub(". ", block))
        if sentence.strip()
    ]
