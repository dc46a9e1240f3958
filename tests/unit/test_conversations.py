"""Condensing a follow-up offline, and finding the sentences an answer cites in its sources."""

from datetime import UTC, datetime

from rag_core.conversations import Turn, cited_spans, condense, condense_offline, leans_on_history
from rag_core.generation import LLMConfig

FIRST = "How does the embedding cache work?"


def test_a_follow_up_carries_the_previous_querys_content_words():
    condensed = condense_offline("How does the embedding cache work?", "and what does it key on?")
    assert condensed == "embedding cache work: and what does it key on?"


def test_a_question_that_stands_alone_is_kept():
    question = "Which parser reads Word documents in the pipeline?"
    assert not leans_on_history(question)
    assert condense_offline("How does the embedding cache work?", question) == question


def test_words_the_follow_up_already_has_are_not_repeated():
    condensed = condense_offline("How is the embedding cache keyed?", "what about its cache size?")
    assert condensed == "embedding keyed: what about its cache size?"


def test_the_first_question_and_the_extractive_answerer_condense_without_a_model_call():
    offline = LLMConfig(model="extractive/best-sentences")
    assert condense([], "and what does it key on?", offline) == "and what does it key on?"
    earlier = Turn(FIRST, FIRST, "q1", {}, datetime.now(UTC))
    assert condense([earlier], "and what does it key on?", offline).startswith("embedding cache work:")


def test_an_unreachable_llm_falls_back_to_the_offline_condensation():
    unreachable = LLMConfig(model="openai/gpt-4o-mini", api_base="http://127.0.0.1:9", api_key="none", timeout_s=2)
    earlier = Turn(FIRST, FIRST, "q1", {}, datetime.now(UTC))
    assert condense([earlier], "and what does it key on?", unreachable) == (
        "embedding cache work: and what does it key on?"
    )


def test_a_quoted_sentence_is_found_across_line_breaks_and_a_paraphrase_by_its_words():
    sources = [
        "Intro line.\nThe embedding cache keys on the model\nversion and the text hash. Other text.",
        "Milvus Lite stores everything in one file. Nothing else here.",
    ]
    answer = (
        "The embedding cache keys on the model version and the text hash. [1] "
        "Everything lives in a single Milvus Lite file. [2]"
    )
    spans = cited_spans(answer, sources)
    start, end = spans[1][0]
    assert " ".join(sources[0][start:end].split()) == "The embedding cache keys on the model version and the text hash."
    start, end = spans[2][0]
    assert sources[1][start:end].strip() == "Milvus Lite stores everything in one file."


def test_a_citation_of_a_missing_source_is_ignored():
    assert cited_spans("Something true. [3]", ["only one source"]) == {}
