"""Answerers that run here, without a provider: each takes the question and the screened sources as they
are (no prompt to render and parse back) and returns the answer text, citing sources by number.

- `extractive/…` (`ExtractiveAnswerer`) quotes the sentences that best support the question (fast,
  deterministic);
- `local-gguf/…` (`LocalGGUFAnswerer`) runs a small local generative model.

A small contract, like every component here: construct, `warm_up()` (load what answering needs), `run()`;
`stream()` yields the same answer in pieces. Any other model string goes to litellm (`rag_core.generation`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from rag_core.prompt import PromptSource


class Answerer(Protocol):
    def warm_up(self) -> None: ...

    def run(self, question: str, sources: Sequence[PromptSource]) -> str: ...

    def stream(self, question: str, sources: Sequence[PromptSource]) -> Iterator[str]: ...


LOCAL_PROVIDERS = ("extractive/", "local-gguf/")


def local_answerer(model: str, data_dir: Path | None) -> Answerer | None:
    """The answerer of a model that runs here (`extractive/…`, `local-gguf/…`), else None. `data_dir` is
    where the local generative model is converted and cached."""
    if model.startswith("extractive/"):
        from rag_core.answerers.extractive import ExtractiveAnswerer

        return ExtractiveAnswerer()
    if model.startswith("local-gguf/"):
        from rag_core.answerers.local_gguf import LocalGGUFAnswerer

        if data_dir is None:
            raise ValueError(
                f"{model} needs a data dir to convert and cache its model in — build the LLM config with "
                "LLMConfig.from_settings (RAG_DATA_DIR) or pass data_dir"
            )
        return LocalGGUFAnswerer(data_dir)
    return None
