"""The local generative answerer: Gemma 3 270M from the bundled GGUF, converted once into the data dir."""

import pytest

from rag_core.answerers.local_gguf import converted_dir
from rag_core.generation import LLMConfig, generate
from rag_core.retrieval import RetrievedChunk

pytestmark = pytest.mark.slow


def test_gemma_answers_from_its_sources_and_is_cached_converted(tmp_path):
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
    config = LLMConfig(model="local-gguf/gemma-3-270m", timeout_s=600, data_dir=tmp_path)
    answer = generate("Why do sea otters hold hands?", sources, config)
    assert not answer.degraded, answer.reason
    assert answer.text and answer.model == "local-gguf/gemma-3-270m"
    assert set(answer.citations) <= {1}
    assert (converted_dir(tmp_path) / "model.safetensors").exists()  # converted once, loaded from here next time
