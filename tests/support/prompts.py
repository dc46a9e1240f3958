"""The chat prompt read back the way a model reads it: which <source> blocks it holds and what the question
is. Tests use it to show that neither source text nor the question can forge a block."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

SOURCE_BLOCK = re.compile(r'<source id="(\d+)"(?: title="([^"]*)")?(?: flagged="([^"]*)")?>\n(.*?)\n</source>', re.S)


def parse_prompt(messages: Sequence[dict], include_flagged: bool = True) -> tuple[str, list[tuple[int, str, str]]]:
    """(question, [(number, title, text)]) from messages made by `rag_core.prompt.build_messages`."""
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    # every `</source>` in the prompt closes a real block: source text and the question are escaped
    blocks, _, tail = user.rpartition("</source>")
    question = tail.split("Question:", 1)[-1].rsplit("\nAnswer with citations:", 1)[0].strip()
    sources = [
        (int(number), html.unescape(title or ""), html.unescape(body))
        for number, title, flagged, body in SOURCE_BLOCK.findall(blocks + "</source>")
        if include_flagged or not flagged
    ]
    return html.unescape(question), sources
