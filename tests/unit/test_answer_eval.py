"""rag_core.answer_eval against the real ragas 0.4.3; the judge is a litellm custom provider in this file.

`import ragas` alone takes several seconds, so every test that evaluates is marked slow.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_core.answer_eval import RagSample, evaluate_answers

NO_JUDGE = "no judge model configured"


def sample(query_id: str, retrieved: list[str], relevant: list[str], **fields) -> RagSample:
    values = {"question": f"question {query_id}?", "contexts": ["some context."], "answer": "An answer [1]."}
    values.update(fields)
    return RagSample(query_id=query_id, retrieved_ids=retrieved, relevant_ids=relevant, **values)


@pytest.mark.slow
def test_id_based_precision_and_recall_by_hand():
    samples = [
        sample("q1", ["a", "b", "c"], ["a"]),  # 1 of 3 retrieved is relevant; the 1 relevant is found
        sample("q2", ["a", "x"], ["a", "b", "c", "d"]),  # 1 of 2 retrieved is relevant; 1 of 4 relevant found
        sample("q3", ["a", "a", "b"], ["b", "a"]),  # ids are compared as sets: chunks of one document count once
        sample("q4", ["x", "y"], ["a"]),  # nothing relevant retrieved
    ]
    result = evaluate_answers(samples)
    per_query = {row["query_id"]: row for row in result.per_sample}
    precision = {q: per_query[q]["id_based_context_precision"] for q in per_query}
    recall = {q: per_query[q]["id_based_context_recall"] for q in per_query}
    assert precision == {"q1": 0.3333, "q2": 0.5, "q3": 1.0, "q4": 0.0}
    assert recall == {"q1": 1.0, "q2": 0.25, "q3": 1.0, "q4": 0.0}
    assert result.means == {
        "id_based_context_precision": round((1 / 3 + 0.5 + 1 + 0) / 4, 4),
        "id_based_context_recall": round((1 + 0.25 + 1 + 0) / 4, 4),
    }
    assert result.metrics == ["id_based_context_precision", "id_based_context_recall"]
    assert result.skipped["faithfulness"] == NO_JUDGE and result.skipped["answer_relevancy"] == NO_JUDGE
    for name in ("exact_match", "string_present", "semantic_similarity", "bleu_score", "rouge_score"):
        assert result.skipped[name] == "no reference answers"


@pytest.mark.slow
def test_empty_ids_give_nan_for_that_sample_only():
    result = evaluate_answers([sample("q1", [], ["a"]), sample("q2", ["a"], [])])
    q1, q2 = result.per_sample
    assert math.isnan(q1["id_based_context_precision"]) and q1["id_based_context_recall"] == 0.0
    assert q2["id_based_context_precision"] == 0.0 and math.isnan(q2["id_based_context_recall"])
    assert result.means == {"id_based_context_precision": 0.0, "id_based_context_recall": 0.0}


@pytest.mark.slow
def test_runs_inside_a_running_event_loop():
    async def from_async_code():
        return evaluate_answers([sample("q1", ["a", "b"], ["a"])])

    assert asyncio.run(from_async_code()).means["id_based_context_precision"] == 0.5


@pytest.mark.slow
def test_answer_metrics_against_references():
    samples = [
        # identical once the citation marks are removed
        sample(
            "q1",
            ["a"],
            ["a"],
            answer="Aspirin lowers the risk of stroke [1].",
            reference="Aspirin lowers the risk of stroke.",
        ),
        # the reference is contained in the answer, but the strings differ
        sample("q2", ["a"], ["a"], answer="It is Paris [2], the capital.", reference="Paris"),
        # unrelated
        sample(
            "q3", ["a"], ["a"], answer="Penguins live in Antarctica [1].", reference="Quantum tunnelling in diodes."
        ),
        # no reference: not scored by the answer metrics
        sample("q4", ["a"], ["a"], answer="Anything [1]."),
    ]
    result = evaluate_answers(samples)
    q1, q2, q3, q4 = result.per_sample
    assert (q1["exact_match"], q2["exact_match"], q3["exact_match"]) == (1.0, 0.0, 0.0)
    assert (q1["string_present"], q2["string_present"], q3["string_present"]) == (1.0, 1.0, 0.0)
    assert q1["semantic_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert -1.0 <= q3["semantic_similarity"] < 0.3 < q2["semantic_similarity"] < q1["semantic_similarity"]
    assert not {"exact_match", "string_present", "semantic_similarity"} & set(q4)
    assert result.means["exact_match"] == round(1 / 3, 4) and result.means["string_present"] == round(2 / 3, 4)
    assert {"exact_match", "string_present", "semantic_similarity"} <= set(result.metrics)
    # the lock installs none of the optional metrics' packages: each is skipped, naming the package it needs
    for name, package in (
        ("bleu_score", "sacrebleu"),
        ("chrf_score", "sacrebleu"),
        ("rouge_score", "rouge-score"),
        ("non_llm_string_similarity", "rapidfuzz"),
    ):
        assert name not in result.metrics
        assert result.skipped[name] == f"needs the {package} package, which is not installed"
    assert result.skipped["faithfulness"] == NO_JUDGE


# --------------------------------------------------------------------------- a judge behind litellm

PROMPT_INPUT = re.compile(r"\ninput: (\{.*\})\nOutput:", re.S)


def judge_reply(prompt: str) -> dict:
    """Answers ragas' three structured prompts deterministically from the JSON input they end with."""
    data = json.loads(PROMPT_INPUT.search(prompt).group(1))
    if "answer" in data:  # faithfulness step 1: split the answer into statements
        return {"statements": [s.strip() for s in re.split(r"(?<=\.)\s+", data["answer"]) if s.strip()]}
    if "statements" in data:  # faithfulness step 2: a statement is supported when the context contains it
        context = data["context"].lower()
        return {
            "statements": [
                {"statement": s, "reason": "substring test", "verdict": int(s.rstrip(".").lower() in context)}
                for s in data["statements"]
            ]
        }
    response = data["response"]  # response relevancy: a question the response answers
    noncommittal = int("don't know" in response)
    return {"question": f"What {response.rstrip('.').split(' ', 1)[-1]}?", "noncommittal": noncommittal}


@pytest.fixture
def judge_provider() -> Iterator[str]:
    """Registers `ragas-test-judge/<mode>`: mode `ok` answers, `fail` raises, `slow` never answers in time."""
    import litellm
    from litellm import CustomLLM

    class Judge(CustomLLM):
        def completion(self, model: str, messages: list, *args, **kwargs):
            mode = model.split("/")[-1]
            if mode == "fail":
                raise RuntimeError("judge service unavailable")
            model_response = kwargs.get("model_response") or args[3]
            reply = judge_reply(messages[-1]["content"])
            model_response.choices[0].message.content = f"```json\n{json.dumps(reply)}\n```"
            model_response.model = model
            return model_response

        async def acompletion(self, model: str, messages: list, *args, **kwargs):
            if model.endswith("slow"):
                await asyncio.sleep(30)
            return self.completion(model, messages, *args, **kwargs)

    previous = litellm.custom_provider_map
    litellm.custom_provider_map = [*previous, {"provider": "ragas-test-judge", "custom_handler": Judge()}]
    yield "ragas-test-judge"
    litellm.custom_provider_map = previous


@pytest.mark.slow
def test_judge_metrics_through_litellm(judge_provider):
    samples = [
        sample(
            "q1",
            ["a"],
            ["a"],
            question="What does aspirin lower?",
            contexts=["Aspirin lowers the risk of stroke. It is cheap."],
            answer="Aspirin lowers the risk of stroke. Aspirin cures baldness.",
        ),
        sample("q2", ["a"], ["a"], question="Who discovered X?", contexts=["Unrelated text."], answer="I don't know."),
    ]
    result = evaluate_answers(samples, judge_model=f"{judge_provider}/ok", judge_api_key="unused", timeout_s=30)
    q1, q2 = result.per_sample
    assert q1["faithfulness"] == 0.5  # one of the two statements is in the context
    assert q2["faithfulness"] == 0.0
    assert 0.0 < q1["answer_relevancy"] <= 1.0
    assert q2["answer_relevancy"] == 0.0  # a noncommittal answer scores 0
    assert 0.0 <= result.means["answer_relevancy"] <= 1.0 and result.means["faithfulness"] == 0.25
    assert {"faithfulness", "answer_relevancy"} <= set(result.metrics)
    assert "faithfulness" not in result.skipped and "answer_relevancy" not in result.skipped


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "reason"), [("fail", "judge service unavailable"), ("slow", "timed out after 0.5 s on query q1")]
)
def test_judge_error_or_timeout_skips_the_metric_only(judge_provider, mode, reason, tmp_path: Path):
    samples = [sample("q1", ["a", "b"], ["a"])]
    # a missing model directory: response relevancy cannot run either, and says why
    result = evaluate_answers(
        samples, judge_model=f"{judge_provider}/{mode}", embedding_model_dir=tmp_path / "missing", timeout_s=0.5
    )
    assert reason in result.skipped["faithfulness"]
    assert result.skipped["answer_relevancy"].startswith("embedding model: FileNotFoundError")
    assert result.metrics == ["id_based_context_precision", "id_based_context_recall"]
    assert result.means["id_based_context_precision"] == 0.5
