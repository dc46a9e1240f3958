"""Answer-level RAG evaluation with ragas 0.4.3: retrieval by ids, answers against references, and an LLM judge.

Three groups of metrics, each run only when its inputs exist:
- always: `id_based_context_precision` and `id_based_context_recall` (ragas `IDBasedContextPrecision` /
  `IDBasedContextRecall`) from the retrieved vs. relevant document ids. Both compare *sets* of ids: rank
  order and duplicates (several chunks of one document) do not count;
- with reference answers: `exact_match`, `string_present` and `semantic_similarity` (cosine of our local
  sentence-transformers embeddings), plus `bleu_score`, `chrf_score`, `rouge_score` and
  `non_llm_string_similarity` when their packages are installed. Citation marks like `[1]` are removed
  from the answer before it is compared with the reference;
- with a judge model (any litellm model string): `faithfulness` and `answer_relevancy` (ragas' response
  relevancy), the judge called through litellm via instructor (markdown-JSON mode, so any chat model works).

A metric that cannot run (no judge, no references, a missing package, a judge error or timeout) is listed
in `skipped` with the reason; it never fails the whole evaluation. ragas is imported only inside
`evaluate_answers` (the import takes seconds).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import re
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rag_core.embedding import Embedder
    from rag_core.evaluation import EvalDataset
    from rag_core.generation import LLMConfig
    from rag_core.retrieval import FusionConfig
    from rag_core.search.engines import Searcher

# ragas reports usage to its analytics endpoint unless told not to; litellm fetches its price map otherwise.
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

CITATION_MARK = re.compile(r"\s*\[\d+\]")
MAX_REASON_CHARS = 300
# metric name → (module it needs, the pip package that provides it)
OPTIONAL_REFERENCE_METRICS = {
    "bleu_score": ("sacrebleu", "sacrebleu"),
    "chrf_score": ("sacrebleu", "sacrebleu"),
    "rouge_score": ("rouge_score", "rouge-score"),
    "non_llm_string_similarity": ("rapidfuzz", "rapidfuzz"),
}
JUDGE_METRICS = ("faithfulness", "answer_relevancy")
T = TypeVar("T")


@dataclass
class RagSample:
    query_id: str
    question: str
    retrieved_ids: list[str]  # document ids of the retrieved sources, in rank order
    relevant_ids: list[str]  # the qrels' relevant document ids
    contexts: list[str]  # the retrieved texts the answer was generated from
    answer: str
    reference: str | None = None  # a reference answer, when the dataset has one


@dataclass
class AnswerEvalResult:
    means: dict[str, float]  # metric → mean over the samples it scored (NaN values left out)
    per_sample: list[dict[str, float | str]]  # one dict per sample: "query_id" plus a value per metric it got
    metrics: list[str]  # the metrics that produced a mean, in the order they ran
    skipped: dict[str, str]  # metric → why it did not run


@dataclass
class _Metric:
    name: str
    score: Callable[[RagSample], Awaitable[float]]
    applies: Callable[[RagSample], bool]
    needs: str  # what a sample must have; names the reason when no sample has it


def _plain_answer(answer: str) -> str:
    """The answer without citation marks, for comparison with a reference answer."""
    return CITATION_MARK.sub("", answer).strip()


def _has_reference(sample: RagSample) -> bool:
    return bool(sample.reference and sample.reference.strip() and sample.answer.strip())


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


# --------------------------------------------------------------------------- the ragas components


def _id_metrics() -> list[_Metric]:
    from ragas.dataset_schema import SingleTurnSample

    with warnings.catch_warnings():  # ragas marks ragas.metrics deprecated, but the id metrics live only there
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    def scorer(metric: Any) -> Callable[[RagSample], Awaitable[float]]:
        async def score(sample: RagSample) -> float:
            row = SingleTurnSample(
                user_input=sample.question,
                retrieved_context_ids=list(sample.retrieved_ids),
                reference_context_ids=list(sample.relevant_ids),
            )
            return await metric.single_turn_ascore(row)

        return score

    return [
        _Metric(metric.name, scorer(metric), lambda s: True, "")
        for metric in (IDBasedContextPrecision(), IDBasedContextRecall())
    ]


def _reference_scorer(metric: Any) -> Callable[[RagSample], Awaitable[float]]:
    async def score(sample: RagSample) -> float:
        result = await metric.ascore(reference=sample.reference or "", response=_plain_answer(sample.answer))
        return result.value

    return score


def _reference_metrics(embeddings: Any | None, no_embeddings: str) -> tuple[list[_Metric], dict[str, str]]:
    """The answer-vs-reference metrics that need no LLM, and the reasons for the ones that cannot run."""
    from ragas.metrics.collections import (
        BleuScore,
        CHRFScore,
        ExactMatch,
        NonLLMStringSimilarity,
        RougeScore,
        SemanticSimilarity,
        StringPresence,
    )

    needs = "a reference answer"
    metrics = [ExactMatch(), StringPresence()]
    skipped: dict[str, str] = {}
    if embeddings is None:
        skipped["semantic_similarity"] = no_embeddings
    else:
        metrics.append(SemanticSimilarity(embeddings=embeddings))
    optional = {
        "bleu_score": BleuScore,
        "chrf_score": CHRFScore,
        "rouge_score": RougeScore,
        "non_llm_string_similarity": NonLLMStringSimilarity,
    }
    for name, factory in optional.items():
        module, package = OPTIONAL_REFERENCE_METRICS[name]
        if importlib.util.find_spec(module) is None:
            skipped[name] = f"needs the {package} package, which is not installed"
        else:
            metrics.append(factory())
    return [_Metric(m.name, _reference_scorer(m), _has_reference, needs) for m in metrics], skipped


def _load_embeddings(model_dir: Path) -> Any:
    """ragas' HuggingFaceEmbeddings over a local sentence-transformers directory (never a hub download)."""
    from ragas.embeddings import HuggingFaceEmbeddings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a local sentence-transformers model directory")
    return HuggingFaceEmbeddings(model=str(model_dir), device="cpu", local_files_only=True)


def _judge_llm(model: str, api_base: str, api_key: str, timeout_s: float) -> Any:
    """A ragas InstructorBaseRagasLLM (LiteLLMStructuredLLM) that calls `model` through litellm.acompletion."""
    import instructor
    import litellm
    from ragas.llms import llm_factory

    client = instructor.from_litellm(litellm.acompletion, mode=instructor.Mode.MD_JSON)
    call_args: dict[str, Any] = {"timeout": timeout_s}
    if api_base:
        call_args["api_base"] = api_base
    if api_key:
        call_args["api_key"] = api_key
    return llm_factory(model, provider="litellm", client=client, adapter="litellm", **call_args)


def _judge_metrics(llm: Any, embeddings: Any | None, no_embeddings: str) -> tuple[list[_Metric], dict[str, str]]:
    from ragas.metrics.collections import AnswerRelevancy, Faithfulness

    faithfulness = Faithfulness(llm=llm)

    async def faithful(sample: RagSample) -> float:
        result = await faithfulness.ascore(
            user_input=sample.question, response=sample.answer, retrieved_contexts=sample.contexts
        )
        return result.value

    metrics = [
        _Metric(
            faithfulness.name,
            faithful,
            lambda s: bool(s.question.strip() and s.answer.strip() and any(c.strip() for c in s.contexts)),
            "a question, an answer and retrieved contexts",
        )
    ]
    if embeddings is None:
        return metrics, {"answer_relevancy": no_embeddings}
    relevancy = AnswerRelevancy(llm=llm, embeddings=embeddings)

    async def relevant(sample: RagSample) -> float:
        result = await relevancy.ascore(user_input=sample.question, response=sample.answer)
        return result.value

    metrics.append(
        _Metric(
            relevancy.name,
            relevant,
            lambda s: bool(s.question.strip() and s.answer.strip()),
            "a question and an answer",
        )
    )
    return metrics, {}


# --------------------------------------------------------------------------- running


async def _score_metric(
    metric: _Metric, samples: Sequence[tuple[int, RagSample]], timeout_s: float, concurrency: int
) -> tuple[dict[int, float], str | None]:
    """{sample index: value}, or the first error; after an error no further sample is sent to the metric."""
    gate = asyncio.Semaphore(concurrency)
    values: dict[int, float] = {}
    errors: list[str] = []

    async def one(index: int, sample: RagSample) -> None:
        async with gate:
            if errors:
                return
            try:
                values[index] = float(await asyncio.wait_for(metric.score(sample), timeout_s))
            except TimeoutError:
                errors.append(f"timed out after {timeout_s:g} s on query {sample.query_id}")
            except Exception as exc:  # a judge or metric failure must not end the evaluation
                errors.append(f"failed on query {sample.query_id}: {_short(exc)}")

    await asyncio.gather(*(one(index, sample) for index, sample in samples))
    return values, (errors[0] if errors else None)


async def _evaluate(
    samples: list[RagSample], metrics: list[_Metric], timeout_s: float, concurrency: int, result: AnswerEvalResult
) -> None:
    for metric in metrics:
        todo = [(index, sample) for index, sample in enumerate(samples) if metric.applies(sample)]
        if not todo:
            result.skipped[metric.name] = f"no sample has {metric.needs}"
            continue
        values, error = await _score_metric(metric, todo, timeout_s, concurrency)
        if error:
            result.skipped[metric.name] = error
            continue
        finite = [value for value in values.values() if math.isfinite(value)]
        if not finite:
            result.skipped[metric.name] = "no sample could be scored (every value was NaN)"
            continue
        result.means[metric.name] = round(sum(finite) / len(finite), 4)
        result.metrics.append(metric.name)
        for index, value in values.items():
            result.per_sample[index][metric.name] = round(value, 4) if math.isfinite(value) else value


def _reference_metric_names() -> list[str]:
    return ["exact_match", "string_present", "semantic_similarity", *OPTIONAL_REFERENCE_METRICS]


def _try_embeddings(model_dir: Path | None) -> tuple[Any | None, str]:
    """(embeddings, "") or (None, why they could not be loaded)."""
    from rag_core.settings import bundled_model_dir

    try:
        return _load_embeddings(model_dir or bundled_model_dir()), ""
    except Exception as exc:
        return None, f"embedding model: {_short(exc)}"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from a thread that already runs an event loop (then in a worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def evaluate_answers(
    samples: list[RagSample],
    judge_model: str | None = None,
    judge_api_base: str = "",
    judge_api_key: str = "",
    embedding_model_dir: Path | None = None,
    timeout_s: float = 60.0,
    max_concurrency: int = 4,
) -> AnswerEvalResult:
    """Scores `samples` with every metric whose inputs exist; see the module docstring for the metrics.

    `timeout_s` limits one metric on one sample (all its judge calls) and each litellm call. Samples are
    scored `max_concurrency` at a time. The embedding model (for `semantic_similarity` and
    `answer_relevancy`) defaults to the bundled all-MiniLM-L6-v2 and is loaded only when one of them runs.
    """
    result = AnswerEvalResult(means={}, per_sample=[{"query_id": s.query_id} for s in samples], metrics=[], skipped={})
    if not samples:
        result.skipped = dict.fromkeys(
            ["id_based_context_precision", "id_based_context_recall", *_reference_metric_names(), *JUDGE_METRICS],
            "no samples",
        )
        return result
    with_references = any(_has_reference(sample) for sample in samples)
    embeddings, no_embeddings = (
        _try_embeddings(embedding_model_dir) if (with_references or judge_model) else (None, "not needed")
    )
    metrics = _id_metrics()
    if with_references:
        reference_metrics, reasons = _reference_metrics(embeddings, no_embeddings)
        metrics += reference_metrics
        result.skipped.update(reasons)
    else:
        result.skipped.update(dict.fromkeys(_reference_metric_names(), "no reference answers"))
    if judge_model:
        try:
            judge_metrics, reasons = _judge_metrics(
                _judge_llm(judge_model, judge_api_base, judge_api_key, timeout_s), embeddings, no_embeddings
            )
            metrics += judge_metrics
            result.skipped.update(reasons)
        except Exception as exc:
            result.skipped.update(dict.fromkeys(JUDGE_METRICS, f"judge setup: {_short(exc)}"))
    else:
        result.skipped.update(dict.fromkeys(JUDGE_METRICS, "no judge model configured"))
    _run(_evaluate(samples, metrics, timeout_s, max(1, max_concurrency), result))
    return result


# --------------------------------------------------------------------------- samples and report


def answer_samples(
    searcher: Searcher, embedder: Embedder, fusion: FusionConfig, llm: LLMConfig, dataset: EvalDataset, tenant: str
) -> list[RagSample]:
    """Every question of `dataset` (in id order) answered through the query engine the API serves with — its
    fusion, answerer, top_k and mode — as samples beside the relevant documents and reference answers."""
    from rag_core.evaluation import serving_engine
    from rag_core.query import Query
    from rag_core.retrieval import SearchFilter

    engine = serving_engine(searcher, embedder, fusion, llm)
    query_ids = sorted(dataset.queries)
    vectors = embedder.encode([dataset.queries[query_id] for query_id in query_ids])
    samples = []
    for query_id, vector in zip(query_ids, vectors, strict=True):
        question = dataset.queries[query_id]
        chunks = engine.retrieve(Query(question, search_filter=SearchFilter(tenant)), vector.tolist())
        samples.append(
            RagSample(
                query_id=query_id,
                question=question,
                retrieved_ids=list(dict.fromkeys(chunk.doc_id for chunk in chunks)),
                relevant_ids=sorted(dataset.qrels[query_id]),
                contexts=[chunk.text for chunk in chunks],
                answer=engine.answer(question, chunks).text,
                reference=dataset.answers.get(query_id),
            )
        )
    return samples


def write_answer_report(result: AnswerEvalResult, folder: Path, collection: str) -> str:
    """`rag_samples.jsonl` (every sample's scores) and `rag_report.md` (the means, and why a metric was
    skipped) in `folder`; returns the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rag_samples.jsonl").write_text(
        "\n".join(json.dumps(row, default=str) for row in result.per_sample) + "\n"
    )
    table = "\n".join(f"| {metric} | {value:.4f} |" for metric, value in result.means.items())
    skipped = "\n".join(f"- **{metric}**: {reason}" for metric, reason in result.skipped.items())
    markdown = f"# ragas on {collection}\n\n| metric | mean |\n|---|---|\n{table}\n\n## skipped\n{skipped or 'none'}\n"
    (folder / "rag_report.md").write_text(markdown)
    return markdown
