"""Answers with numbered citations that map to the returned sources: the injection screen, an answerer, then
citation cleaning. Any failure degrades to the sources with the reason; nothing here raises.

Models that run here (`extractive/…`, `local-gguf/…`: `rag_core.answerers`) get the screened sources as
they are. Any other model string is a litellm model (`RAG_LLM_MODEL`, `RAG_LLM_API_BASE`,
`RAG_LLM_API_KEY`): it reads the chat prompt of `rag_core.prompt`, sent by `complete`, the one litellm call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from rag_core.answerers import Answerer, local_answerer
from rag_core.answerers.extractive import content_terms
from rag_core.prompt import PromptSource, Screened, Screening, build_messages, clean_citations, screen
from rag_core.retrieval import RetrievedChunk

# litellm otherwise fetches its model price map from the internet on import; use the bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

logger = logging.getLogger(__name__)
NOT_IN_DOCUMENTS = "The documents do not contain an answer to this question."


class LLMSettings(Protocol):
    llm_model: str
    llm_api_base: str
    llm_api_key: str
    llm_timeout_s: float
    llm_max_tokens: int
    injection_screen: str
    relevance_threshold: float

    @property
    def data_dir(self) -> Path | str: ...


@dataclass(frozen=True)
class LLMConfig:
    """Which model answers and how it is called. The defaults are the served ones: the settings take theirs
    from here, and `from_settings` is the one way a deployment's config is built."""

    model: str = "extractive/best-sentences"
    api_base: str = ""
    api_key: str = field(default="", repr=False)
    timeout_s: float = 30.0
    max_tokens: int = 400
    temperature: float = 0.0
    injection_screen: str = "drop"  # RAG_INJECTION_SCREEN: drop | flag | off
    data_dir: Path | None = None  # where a local model is converted and cached (RAG_DATA_DIR)
    # RAG_RELEVANCE_THRESHOLD: when no passage is at least this similar to the question (cosine) and none holds
    # all of its words, the answer is that the documents do not contain it. Chosen on SciFact train claims and
    # the bundled corpus (evals/bench_answers.py): it refuses every tuning off-topic question, 2 % of claims.
    relevance_threshold: float = 0.31

    @classmethod
    def from_settings(cls, settings: LLMSettings) -> LLMConfig:
        """From the settings object, or anything with the same LLM fields (a Dagster resource)."""
        return cls(
            model=settings.llm_model,
            api_base=settings.llm_api_base,
            api_key=settings.llm_api_key,
            timeout_s=settings.llm_timeout_s,
            max_tokens=settings.llm_max_tokens,
            injection_screen=settings.injection_screen,
            relevance_threshold=settings.relevance_threshold,
            data_dir=Path(settings.data_dir).resolve(),
        )

    def answerer(self) -> Answerer:
        return local_answerer(self.model, self.data_dir) or LiteLLMAnswerer(self)


def complete(config: LLMConfig, messages: list[dict[str, str]], max_tokens: int, stream: bool = False) -> Any:
    """The one litellm call: hosted answers and synthetic questions go through it."""
    import litellm

    return litellm.completion(
        model=config.model,
        messages=messages,
        api_base=config.api_base or None,
        api_key=config.api_key or None,
        timeout=config.timeout_s,
        max_tokens=max_tokens,
        temperature=config.temperature,
        stream=stream,
        num_retries=0,
    )


class LiteLLMAnswerer:
    """Any litellm model, told by the prompt to treat the sources as data and to cite them."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config

    def warm_up(self) -> None:
        import litellm  # noqa: F401 - importing litellm takes seconds: paid here, not by the first request

    def run(self, question: str, sources: Sequence[PromptSource]) -> str:
        response = complete(self.config, build_messages(question, sources), self.config.max_tokens)
        return response.choices[0].message.content or ""

    def stream(self, question: str, sources: Sequence[PromptSource]) -> Iterator[str]:
        messages = build_messages(question, sources)
        for chunk in complete(self.config, messages, self.config.max_tokens, stream=True):
            delta = chunk.choices[0].delta.content or ""
            if delta:
                yield delta


@dataclass
class Answer:
    text: str
    citations: list[int]
    model: str
    degraded: bool = False
    reason: str = ""
    screened: list[Screened] = field(default_factory=list)
    question_flags: tuple[str, ...] = ()


def _reported(screening: Screening, answer: Answer) -> Answer:
    return replace(answer, screened=screening.screened, question_flags=screening.question_flags)


def relevance(sources: Sequence[RetrievedChunk]) -> float | None:
    """How close the best passage is to the question: its cosine similarity. None when no passage carries one
    (BM25 retrieval): then nothing can be judged and the question is answered."""
    similarities = [source.dense_score for source in sources if source.dense_score is not None]
    return max(similarities) if similarities else None


def holds_every_word(question: str, sources: Sequence[RetrievedChunk]) -> bool:
    """Some passage holds every content word of the question. A short question about a long passage ("What
    does the sensor do?") is on topic though its similarity is low: the passage is mostly about other things."""
    words = set(content_terms(question))
    return bool(words) and any(words <= set(content_terms(f"{s.title} {s.text}")) for s in sources)


def _not_in_documents(question: str, sources: Sequence[PromptSource], config: LLMConfig) -> Answer | None:
    """The answer to a question no passage is about, without asking the answerer: any answerer quotes or
    paraphrases the nearest passages, and cited off-topic text reads as a confident wrong answer. Not degraded:
    nothing failed, the documents just do not hold it."""
    chunks = [source.chunk for source in sources]
    best = relevance(chunks)
    if best is None or best >= config.relevance_threshold or holds_every_word(question, chunks):
        return None
    reason = (
        f"the closest passage's similarity to the question ({best:.3f}) is below the relevance threshold "
        f"({config.relevance_threshold}, RAG_RELEVANCE_THRESHOLD) and no passage holds all of its words"
    )
    return Answer(NOT_IN_DOCUMENTS, [], config.model, reason=reason)


def _unanswerable(sources: Sequence[RetrievedChunk], model: str) -> Answer:
    if not sources:
        return Answer("No indexed passage matches this question.", [], model, True, "no sources retrieved")
    return Answer(
        "The retrieved passages were withheld: they read like instructions to the answerer, not information.",
        [],
        model,
        True,
        f"the injection screen dropped all {len(sources)} retrieved passages",
    )


def failure_reason(error: BaseException) -> str:
    """What a failed answer tells the caller: every exception in the chain litellm wrapped (outermost first)
    and the innermost one's first line. litellm's own messages carry a whole traceback with this server's
    paths; that stays in the server log, not in a response."""
    chain = [error]
    while len(chain) < 8:
        link = chain[-1]
        inner = getattr(link, "original_exception", None) or link.__cause__
        inner = inner or (None if link.__suppress_context__ else link.__context__)
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    names = " <- ".join(dict.fromkeys(type(link).__name__ for link in chain))
    logger.warning("the answer degraded to its sources", exc_info=error)
    lines = str(chain[-1]).strip().splitlines()
    return f"{names}: {lines[0]}" if lines else names


def _degraded(sources: Sequence[PromptSource], model: str, reason: str) -> Answer:
    listing = " ".join(f"[{source.number}] {source.chunk.title or source.chunk.source}" for source in sources)
    return Answer(
        f"The answer could not be generated; the most relevant sources are: {listing}",
        [source.number for source in sources],
        model,
        degraded=True,
        reason=reason[:500],
    )


def _answered(raw: str, sources: Sequence[PromptSource], model: str) -> Answer:
    """The tail of every answer, whole or streamed: only citations of given sources survive."""
    text, citations = clean_citations(raw, {source.number for source in sources})
    if not text:
        return _degraded(sources, model, "the model returned an empty answer")
    return Answer(text, citations, model)


def generate(question: str, sources: Sequence[RetrievedChunk], config: LLMConfig) -> Answer:
    """One answer from the sources that pass the injection screen."""
    screening = screen(question, sources, config.injection_screen)
    if not screening.sources:
        return _reported(screening, _unanswerable(sources, config.model))
    off_topic = _not_in_documents(question, screening.sources, config)
    if off_topic is not None:
        return _reported(screening, off_topic)
    try:
        raw = config.answerer().run(question, screening.sources)
    except Exception as error:  # litellm maps every provider failure to its own exception types
        return _reported(screening, _degraded(screening.sources, config.model, failure_reason(error)))
    return _reported(screening, _answered(raw, screening.sources, config.model))


def stream(question: str, sources: Sequence[RetrievedChunk], config: LLMConfig) -> Iterator[tuple[str, Answer | None]]:
    """Yields (text delta, None) while streaming and ('', final Answer) last; screens and degrades like
    `generate`."""
    screening = screen(question, sources, config.injection_screen)
    if not screening.sources:
        yield "", _reported(screening, _unanswerable(sources, config.model))
        return
    off_topic = _not_in_documents(question, screening.sources, config)
    if off_topic is not None:
        yield off_topic.text, None  # streamed like any answer, so a client that shows deltas shows it
        yield "", _reported(screening, off_topic)
        return
    pieces: list[str] = []
    try:
        for delta in config.answerer().stream(question, screening.sources):
            pieces.append(delta)
            yield delta, None
    except Exception as error:  # noqa: BLE001 - degrade, never fail the request
        yield "", _reported(screening, _degraded(screening.sources, config.model, failure_reason(error)))
        return
    yield "", _reported(screening, _answered("".join(pieces), screening.sources, config.model))


def warm_up(config: LLMConfig) -> Answer | None:
    """Pay the answerer's one-off costs before the first request: loading it (for a hosted model, importing
    litellm) and, for a model that runs here, one answer. A hosted model is not called: warming up must not
    spend tokens or wait on a provider."""
    answerer = config.answerer()
    answerer.warm_up()
    if isinstance(answerer, LiteLLMAnswerer):
        return None
    passage = RetrievedChunk(
        chunk_id="warm-up#0",
        doc_id="warm-up",
        title="Warm-up",
        text="The server answers this question once at startup, so that no user waits for the model to load.",
        source="warm-up",
        score=1.0,
        start_char=0,
        end_char=0,
        tenant="",
    )
    return generate("Why does the server answer a question at startup?", [passage], config)
