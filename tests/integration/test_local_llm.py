"""The local generative answerer: Gemma 3 270M from the bundled GGUF, through litellm.completion."""

import pytest

from rag_core.generation import LLMConfig, generate
from rag_core.local_llm import converted_dir
from rag_core.retrieval import RetrievedChunk
from rag_core.settings import get_settings

pytestmark = pytest.mark.slow


def test_gemma_answers_through_litellm_and_is_cached_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        sources = [
            RetrievedChunk(
                "c1",
                "d1",
                "Otters",
                "Sea otters hold hands while they sleep so they do not drift apart.",
                "otters.md",
                1.0,
                0,
                60,
                "default",
            ),
        ]
        answer = generate(
            "Why do sea otters hold hands?", sources, LLMConfig(model="local-gguf/gemma-3-270m", timeout_s=600)
        )
        assert not answer.degraded, answer.reason
        assert answer.text and answer.model == "local-gguf/gemma-3-270m"
        assert set(answer.citations) <= {1}
        assert (converted_dir(tmp_path) / "model.safetensors").exists()  # converted once, loaded from here next time
    finally:
        get_settings.cache_clear()
